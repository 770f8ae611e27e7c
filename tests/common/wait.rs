//! Waiting for a condition with a deadline, in tests over real sockets.

use std::time::Duration;

use tokio::time::{sleep, Instant};

/// Polls `done` every 20 ms until it holds or `limit` passes; returns the time it took.
pub async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Some(start.elapsed());
        }
        sleep(Duration::from_millis(20)).await;
    }
    done().then(|| start.elapsed())
}

//! The reader: follows the hub's stream with blocking reads, and hands every entry to the
//! manager in order. Each read waits at most the block time, so a read that does not come
//! back in time means the connection stalled: it is replaced, and reading resumes after
//! the last entry received. Numbers that skip tell what was lost; an epoch that changes
//! tells that Redis lost its data. Either way the manager sends the gap event: never a
//! silent hole.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::codec::{decode, Entry};
use super::link::Link;
use super::Shared;
use crate::manager::broker::Sink;

/// Entries per read.
const COUNT: usize = 1024;

/// Where the reader stands in the stream.
#[derive(Debug, Clone)]
pub(super) struct Position {
    /// The last stream id read (`0-0`: from the start).
    pub(super) last_id: String,
    pub(super) epoch: Option<String>,
    /// The number of the last entry read in `epoch`.
    pub(super) last_n: u64,
}

impl Position {
    /// Takes one entry: tells the sink about a new epoch or a hole first. Returns the
    /// operation to apply, if the entry is new.
    pub(super) fn take(&mut self, entry: &Entry, sink: &dyn Sink) -> bool {
        let Some(n) = entry.n else {
            // Not one of ours: step over it.
            self.last_id.clone_from(&entry.id);
            return false;
        };
        if entry.epoch != self.epoch {
            if let Some(epoch) = &entry.epoch {
                sink.epoch(epoch, n);
            }
            self.epoch.clone_from(&entry.epoch);
            self.last_n = n.saturating_sub(1);
        }
        self.last_id.clone_from(&entry.id);
        if n <= self.last_n {
            return false;
        }
        if n > self.last_n + 1 {
            // Trimmed before this instance read them.
            sink.lost(n - 1);
        }
        self.last_n = n;
        true
    }
}

/// The entries of an XREAD reply for one stream.
fn entries(reply: Value) -> Vec<Entry> {
    // [[stream, [[id, fields], ...]]], or nil after the block time.
    let Value::Array(streams) = reply else {
        return Vec::new();
    };
    streams
        .into_iter()
        .filter_map(|s| match s {
            Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
            _ => None,
        })
        .flat_map(|list| match list {
            Value::Array(items) => items,
            _ => Vec::new(),
        })
        .filter_map(|e| decode(&e))
        .collect()
}

/// Runs until the manager or the engine goes away.
pub(super) async fn run(
    shared: Arc<Shared>,
    mut link: Link,
    sink: Arc<dyn Sink>,
    mut at: Position,
) {
    let block = shared.settings.block;
    let mut backoff = Duration::from_millis(50);
    loop {
        if shared.shutdown.is_cancelled() {
            return;
        }
        let mut read = redis::cmd("XREAD");
        read.arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("COUNT")
            .arg(COUNT)
            .arg("STREAMS")
            .arg(&shared.keys.stream)
            .arg(&at.last_id);
        let reply = tokio::select! {
            r = tokio::time::timeout(block + Duration::from_secs(2), read.query_async::<Value>(&mut link)) => r,
            _ = shared.shutdown.cancelled() => return,
        };
        match reply {
            Ok(Ok(reply)) => {
                shared.set_up();
                backoff = Duration::from_millis(50);
                for entry in entries(reply) {
                    if at.take(&entry, &*sink) {
                        if let (Some(op), Some(n)) = (entry.op, entry.n) {
                            sink.apply(n, entry.origin, op);
                        }
                    }
                }
            }
            // An error, or no answer in time (a stalled connection): start over with a new
            // connection, after the last entry taken.
            Ok(Err(_)) | Err(_) => {
                shared.set_down();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shared.shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                let Ok(fresh) = Link::open(&shared.servers, block + Duration::from_secs(2)).await
                else {
                    continue;
                };
                link = fresh;
                // Redis may have restarted empty: its new stream's ids need not follow ours.
                let epoch: redis::RedisResult<Option<String>> = redis::cmd("HGET")
                    .arg(&shared.keys.meta)
                    .arg("epoch")
                    .query_async(&mut link)
                    .await;
                match epoch {
                    Ok(current) if current != at.epoch => at.last_id = "0-0".to_owned(),
                    Ok(_) => {}
                    Err(_) => continue,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::broker::Op;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Sink for Recorder {
        fn epoch(&self, tag: &str, first: u64) {
            self.0.lock().unwrap().push(format!("epoch {tag} {first}"));
        }
        fn apply(&self, n: u64, _origin: u32, _op: Op) {
            self.0.lock().unwrap().push(format!("apply {n}"));
        }
        fn lost(&self, n: u64) {
            self.0.lock().unwrap().push(format!("lost through {n}"));
        }
    }

    fn entry(id: &str, epoch: &str, n: u64) -> Entry {
        Entry {
            id: id.to_owned(),
            epoch: Some(epoch.to_owned()),
            n: Some(n),
            origin: 1,
            op: None,
        }
    }

    #[test]
    fn holes_epochs_and_repeats_are_told_apart() {
        let sink = Recorder::default();
        let mut at = Position {
            last_id: "0-0".into(),
            epoch: Some("a".into()),
            last_n: 4,
        };
        let mut taken = Vec::new();
        for e in [
            entry("1-0", "a", 4), // already read
            entry("2-0", "a", 5),
            entry("3-0", "a", 8), // 6 and 7 were trimmed
            entry("4-0", "b", 1), // Redis lost its data
            entry("5-0", "b", 2),
        ] {
            if at.take(&e, &sink) {
                taken.push(e.n.unwrap());
                sink.apply(
                    e.n.unwrap(),
                    1,
                    Op::Evict {
                        target: crate::manager::broker::Target::Key("k".into()),
                    },
                );
            }
        }
        assert_eq!(taken, [5, 8, 1, 2]);
        assert_eq!(
            *sink.0.lock().unwrap(),
            [
                "apply 5",
                "lost through 7",
                "apply 8",
                "epoch b 1",
                "apply 1",
                "apply 2"
            ]
        );
        assert_eq!(at.last_id, "5-0");
    }
}

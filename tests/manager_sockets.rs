//! `ConnectionManager` behind `SseLayer` in a real axum server on 127.0.0.1: thousands of
//! clients connect, receive a published event and leave (politely or with a TCP reset),
//! and afterwards nothing is left: no registered connection, no live `Connection`, no grown
//! memory. Then a graceful shutdown ends the streams still open.
//!
//! Every wait is bounded by a timeout and every loop by a count; the test stops by itself.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use futures_util::{stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tower_sse::manager::{CloseReason, Connect, ConnectionManager, ManagerBuilder};
use tower_sse::{Event, SseContext, SseLayer};

/// Each connection's metadata is a clone of one `Arc<()>`, so its strong count tells how many
/// `Connection`s are alive, whether or not they are still registered.
type Manager = ConnectionManager<Arc<()>>;

#[derive(Clone)]
struct App {
    manager: Manager,
    alive: Arc<()>,
}

const WARM_UP: usize = 300;
const CYCLES: usize = 3_000;
const AT_ONCE: usize = 50;
const STILL_OPEN: usize = 10;
/// Far more than a cycle needs (a few ms), even on a loaded machine.
const CYCLE_LIMIT: Duration = Duration::from_secs(20);
/// Generous: the point is that growth does not scale with the number of connections served
/// (3,000 leaked connections with their queues, tasks and sockets would exceed it).
const MAX_RSS_GROWTH: u64 = 8 * 1024 * 1024;

const REQUEST: &[u8] =
    b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n";
const TICK: &[u8] = b"data: tick\n\n";

fn farewell() -> Event {
    Event::builder()
        .event("bye")
        .data("later")
        .retry(Duration::from_secs(2))
        .build()
        .unwrap()
}

async fn events(State(app): State<App>, Extension(ctx): Extension<SseContext>) -> Response {
    let options = Connect::with_meta(app.alive.clone()).context(&ctx);
    match app.manager.connect(options) {
        Ok((_handle, body)) => body.into_response().map(Body::new),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// How a client leaves once it has what it came for.
#[derive(Debug, Clone, Copy)]
enum Leave {
    /// Waits for an event, then closes: FIN.
    Close,
    /// Waits for an event, then drops the socket with a TCP reset (RST).
    Reset,
    /// Resets as soon as the response headers arrive, before (or while) the first event.
    ResetEarly,
}

fn leave_for(i: usize) -> Leave {
    match i % 4 {
        0 | 1 => Leave::Close,
        2 => Leave::Reset,
        _ => Leave::ResetEarly,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One connect / receive / disconnect cycle over a raw HTTP/1.1 socket. Returns whether an
/// event was received.
async fn cycle(addr: SocketAddr, leave: Leave) -> Result<bool, String> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.write_all(REQUEST)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let got_event = loop {
        let n = tcp
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "stream ended before an event: {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(head_end) = find(&buf, b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") || !head.contains("content-type: text/event-stream") {
            return Err(format!("unexpected response head: {head:?}"));
        }
        let body = &buf[head_end + 4..];
        let got_event = find(body, TICK).is_some();
        if got_event || matches!(leave, Leave::ResetEarly) {
            break got_event;
        }
    };
    match leave {
        Leave::Close => {
            let _ = tcp.shutdown().await;
            drop(tcp);
        }
        Leave::Reset | Leave::ResetEarly => {
            // Zero linger: the close sends RST at once and never blocks.
            #[allow(deprecated)]
            tcp.set_linger(Some(Duration::ZERO))
                .map_err(|e| format!("linger: {e}"))?;
            drop(tcp);
        }
    }
    Ok(got_event)
}

/// Runs `count` cycles, `AT_ONCE` at a time, each on its own task and bounded by
/// `CYCLE_LIMIT`.
/// Returns how many received an event; panics on the first failed cycle.
async fn churn(addr: SocketAddr, first: usize, count: usize) -> usize {
    let results: Vec<_> = stream::iter(first..first + count)
        .map(|i| {
            let leave = leave_for(i);
            let task = tokio::spawn(timeout(CYCLE_LIMIT, cycle(addr, leave)));
            async move { (i, leave, task.await) }
        })
        .buffer_unordered(AT_ONCE)
        .collect()
        .await;
    let mut events = 0;
    for (i, leave, result) in results {
        match result {
            Ok(Ok(Ok(got))) => {
                if !matches!(leave, Leave::ResetEarly) {
                    assert!(got, "cycle {i} ({leave:?}) left without an event");
                }
                events += usize::from(got);
            }
            Ok(Ok(Err(e))) => panic!("cycle {i} ({leave:?}): {e}"),
            Ok(Err(_)) => panic!("cycle {i} ({leave:?}) took more than {CYCLE_LIMIT:?}"),
            Err(e) => panic!("cycle {i} ({leave:?}) panicked: {e}"),
        }
    }
    events
}

/// Polls `done` every 10 ms for at most `limit`.
async fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        sleep(Duration::from_millis(10)).await;
    }
    done()
}

/// Resident set size of this process, from `/proc/self/statm` (Linux only).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size()?)
}

/// The page size, from the auxiliary vector (`AT_PAGESZ`), so no libc is needed.
fn page_size() -> Option<u64> {
    const AT_PAGESZ: usize = 6;
    const WORD: usize = std::mem::size_of::<usize>();
    let auxv = std::fs::read("/proc/self/auxv").ok()?;
    auxv.chunks_exact(2 * WORD).find_map(|pair| {
        let key = usize::from_ne_bytes(pair[..WORD].try_into().ok()?);
        let value = usize::from_ne_bytes(pair[WORD..].try_into().ok()?);
        (key == AT_PAGESZ).then_some(value as u64)
    })
}

/// Opens a stream and reads it to the end; reports once the response head arrived.
async fn read_to_end(
    addr: SocketAddr,
    opened: tokio::sync::mpsc::UnboundedSender<()>,
) -> Result<Vec<u8>, String> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.write_all(REQUEST)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut announced = false;
    loop {
        let n = tcp
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Ok(all);
        }
        all.extend_from_slice(&chunk[..n]);
        if !announced && find(&all, b"\r\n\r\n").is_some() {
            announced = true;
            let _ = opened.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn churn_over_real_sockets_leaves_nothing_behind() {
    // Room for 20 s of ticks per connection: on a starved machine a server task may not run
    // for a while, and this test is about clients leaving, not about slow consumers (every
    // close must be `ClientGone`).
    let manager: Manager = ManagerBuilder::new()
        .queue_capacity(10_000)
        .replay(64, None)
        .build();
    let alive = Arc::new(());
    let shutdown = CancellationToken::new();
    let layer = SseLayer::new()
        .shutdown_token(shutdown.clone())
        .farewell(farewell());
    let app = Router::new()
        .route("/events", get(events))
        .layer(layer)
        .with_state(App {
            manager: manager.clone(),
            alive: alive.clone(),
        });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );

    // A tick every 2 ms for whoever is connected.
    let stop_publishing = CancellationToken::new();
    let publisher = {
        let (manager, stop) = (manager.clone(), stop_publishing.clone());
        tokio::spawn(async move {
            let mut published = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Bounded: at most ten minutes' worth of ticks, though the test stops it long before.
            for _ in 0..300_000 {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if manager.publish(Event::message("tick")).is_err() {
                    break;
                }
                published += 1;
            }
            published
        })
    };

    // Warm up: allocator pools, runtime, socket buffers reach their steady size.
    let warm_events = churn(addr, 0, WARM_UP).await;
    assert!(warm_events >= WARM_UP / 2);
    assert!(
        wait_for(Duration::from_secs(20), || manager.is_empty()).await,
        "after warm-up {} connections are still registered",
        manager.len()
    );
    let baseline_alive = Arc::strong_count(&alive);
    let baseline_rss = rss_bytes();

    let events = churn(addr, WARM_UP, CYCLES).await;
    assert!(
        events >= CYCLES * 3 / 4,
        "{events} events in {CYCLES} cycles"
    );

    // The server notices every departure (the publisher's next write fails at the latest).
    assert!(
        wait_for(Duration::from_secs(20), || manager.is_empty()).await,
        "after the churn {} connections are still registered",
        manager.len()
    );
    // Give tasks finishing their connection a moment to free what they hold.
    assert!(
        wait_for(Duration::from_secs(5), || Arc::strong_count(&alive)
            == baseline_alive)
        .await,
        "{} Connection(s) still alive after closing",
        Arc::strong_count(&alive) - baseline_alive
    );
    let stats = manager.stats();
    let total = (WARM_UP + CYCLES) as u64;
    assert_eq!(stats.open, 0);
    assert_eq!(stats.connected, total, "{stats:?}");
    assert_eq!(stats.closed.values().sum::<u64>(), total, "{stats:?}");
    assert_eq!(
        stats.closed.get(&CloseReason::ClientGone).copied(),
        Some(total),
        "{stats:?}"
    );
    if let (Some(before), Some(after)) = (baseline_rss, rss_bytes()) {
        let growth = after.saturating_sub(before);
        eprintln!(
            "{events} events over {CYCLES} cycles; RSS {} KiB -> {} KiB",
            before / 1024,
            after / 1024
        );
        assert!(
            growth < MAX_RSS_GROWTH,
            "RSS grew by {} KiB over {CYCLES} connections ({} KiB -> {} KiB)",
            growth / 1024,
            before / 1024,
            after / 1024
        );
    }

    // Graceful shutdown with streams still open: each gets the farewell and ends, and the
    // server stops.
    let (opened_tx, mut opened) = tokio::sync::mpsc::unbounded_channel();
    let open: Vec<_> = (0..STILL_OPEN)
        .map(|_| tokio::spawn(read_to_end(addr, opened_tx.clone())))
        .collect();
    for _ in 0..STILL_OPEN {
        timeout(Duration::from_secs(20), opened.recv())
            .await
            .expect("a stream opened within 20 s")
            .expect("client alive");
    }
    assert!(wait_for(Duration::from_secs(20), || manager.len() == STILL_OPEN).await);
    stop_publishing.cancel();
    let published = timeout(Duration::from_secs(5), publisher)
        .await
        .unwrap()
        .unwrap();
    assert!(published > 0);
    shutdown.cancel();
    for client in open {
        let wire = timeout(Duration::from_secs(20), client)
            .await
            .expect("stream ended within 20 s")
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            find(&wire, farewell().as_bytes()).is_some(),
            "no farewell in {:?}",
            String::from_utf8_lossy(&wire)
        );
        assert!(
            wire.ends_with(b"0\r\n\r\n"),
            "stream not terminated cleanly"
        );
    }
    timeout(Duration::from_secs(20), server)
        .await
        .expect("server stopped within 20 s of shutdown")
        .unwrap()
        .unwrap();

    assert!(wait_for(Duration::from_secs(5), || manager.is_empty()).await);
    let stats = manager.stats();
    let total = total + STILL_OPEN as u64;
    assert_eq!(stats.open, 0);
    assert_eq!(stats.connected, total);
    assert_eq!(stats.closed.values().sum::<u64>(), total, "{stats:?}");
    assert_eq!(
        stats.closed.get(&CloseReason::Shutdown).copied(),
        Some(STILL_OPEN as u64),
        "{stats:?}"
    );
    // The server is gone, and with it every clone of `alive` but ours.
    assert!(
        wait_for(Duration::from_secs(5), || Arc::strong_count(&alive) == 1).await,
        "{} references to connection metadata remain",
        Arc::strong_count(&alive) - 1
    );
}

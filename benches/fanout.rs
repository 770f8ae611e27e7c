//! In-process fan-out to 1k, 10k and 100k streams: tower-sse's `ConnectionManager` against a
//! raw `tokio::sync::broadcast` channel, in the same run.
//!
//! Run with `cargo bench --bench fanout -- --warm-up-time 1 --measurement-time 5`.
//!
//! # What is measured
//!
//! Everything runs on one multi-threaded tokio runtime with 2 worker threads. The publisher
//! is itself a task on that runtime (not criterion's thread), so publisher and receivers share
//! the same two workers.
//!
//! - `fanout`: one iteration publishes a burst of [`BURST`] events and waits until every one of
//!   the N receivers has got all of them. Throughput is `N * BURST` deliveries.
//!   - `broadcast`: a `broadcast::channel(1024)` with N receivers, one task each, looping on
//!     `recv()`. The payload is the encoded event's `Bytes`.
//!   - `manager`: a `ConnectionManager` with its default settings (queue of 256, replay
//!     history on, automatic ids) and N connections, one task each, looping on
//!     `ConnectionBody::frame()`. The manager may hand several queued events over as one
//!     frame.
//!   - `manager_topic`: the same, with every connection subscribed to one topic and the
//!     events sent with `publish_topic`.
//!
//!   Receivers on both sides do the same work: count the events in what they got (its length
//!   divided by the event's length) and, once they have a whole burst, decrement one shared
//!   counter; the receiver that brings it to zero wakes the publisher through a `Notify`.
//!   Connections and receivers are set up once per N, outside the timing
//!   (`iter_custom`), and at the end every receiver must have counted every event.
//! - `publish_only`: the sender's cost alone, with no receiver polling. One iteration is one
//!   `publish` (or one `broadcast::Sender::send`) to N idle receivers; throughput is N.
//!   The manager's queues are emptied every [`PUBLISH_CHUNK`] publishes, outside the timing,
//!   without ever registering a waker, so no wake-up is measured. A broadcast sender does
//!   not touch its receivers at all when none is waiting, so nothing needs draining there:
//!   its cost does not depend on N. The difference between the two groups is the cost of
//!   waking and polling.

// `criterion_group!` generates a `pub fn` that cannot carry a doc comment.
#![allow(missing_docs)]

#[path = "support/telemetry.rs"]
mod telemetry;

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::FutureExt as _;
use http_body_util::BodyExt as _;
use tokio::runtime::Runtime;
use tokio::sync::{broadcast, Notify};
use tokio::task::JoinHandle;
use tower_sse::manager::{Connect, ConnectionBody, ConnectionHandle, ConnectionManager};
use tower_sse::Event;

/// Numbers of receivers.
const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

/// Events published per iteration of the `fanout` group.
const BURST: usize = 16;

/// The topic every connection of the `manager_topic` side subscribes to.
const TOPIC: &str = "prices";

/// Slots of the broadcast channel: far more than one burst, so no receiver ever lags.
const BROADCAST_CAPACITY: usize = 1024;

/// Publishes between two drains in the `publish_only` group: queues stay as short as in the
/// `fanout` group (a queue's buffer is written by every publish, so a deeper one would measure
/// cache misses on buffers a live connection never grows to).
const PUBLISH_CHUNK: u64 = BURST as u64;

/// A typical small event: 81 bytes of JSON, 89 on the wire (plus an `id:` line from the manager).
fn payload() -> Event {
    Event::message(
        r#"{"symbol":"EUR/USD","venue":"XAMS","bid":1.084215,"ask":1.084298,"seq":987654321}"#,
    )
}

/// Events in `data`, a whole number of events of `event_len` bytes each.
///
/// Every event of a run has the same length, so this is one division: counting the work done
/// costs next to nothing on either side, and what is measured is the transport. (Scanning for
/// the `\n\n` that ends each event took a quarter of the broadcast side's time.)
fn count_events(data: &[u8], event_len: usize) -> usize {
    assert_eq!(data.len() % event_len, 0, "a frame cut an event");
    data.len() / event_len
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Where receivers report a whole burst.
struct Sink {
    pending: AtomicUsize,
    notify: Notify,
}

impl Sink {
    fn new() -> Self {
        Sink {
            pending: AtomicUsize::new(0),
            notify: Notify::new(),
        }
    }

    fn arm(&self, receivers: usize) {
        self.pending.store(receivers, Ordering::Release);
    }

    fn arrive(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Stores a permit if the publisher is not waiting yet.
            self.notify.notify_one();
        }
    }
}

#[derive(Clone, Copy)]
enum Side {
    Broadcast,
    Manager,
    /// Every connection subscribed to one topic, published to with `publish_topic`.
    ManagerTopic,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Broadcast => "broadcast",
            Side::Manager => "manager",
            Side::ManagerTopic => "manager_topic",
        }
    }
}

enum Publisher {
    Broadcast {
        tx: broadcast::Sender<Bytes>,
        bytes: Bytes,
    },
    Manager {
        manager: ConnectionManager,
        event: Event,
        topic: Option<&'static str>,
    },
}

impl Publisher {
    fn publish(&self) {
        match self {
            Publisher::Broadcast { tx, bytes } => {
                tx.send(bytes.clone()).expect("receivers are alive");
            }
            Publisher::Manager {
                manager,
                event,
                topic: None,
            } => {
                manager.publish(event.clone()).expect("manager is open");
            }
            Publisher::Manager {
                manager,
                event,
                topic: Some(topic),
            } => {
                manager
                    .publish_topic(topic, event.clone())
                    .expect("manager is open");
            }
        }
    }
}

struct Fanout {
    receivers: usize,
    publisher: Publisher,
    /// Shared with the receivers, which hold nothing else: dropping the `Fanout` drops the
    /// broadcast sender.
    sink: Arc<Sink>,
    /// Bursts published so far, to check the receivers' counts at the end.
    bursts: AtomicU64,
}

struct Running {
    fanout: Arc<Fanout>,
    tasks: Vec<JoinHandle<usize>>,
}

async fn recv_broadcast(
    mut rx: broadcast::Receiver<Bytes>,
    sink: Arc<Sink>,
    event_len: usize,
) -> usize {
    let mut events = 0;
    loop {
        match rx.recv().await {
            Ok(bytes) => {
                events += count_events(&bytes, event_len);
                if events % BURST == 0 {
                    sink.arrive();
                }
            }
            Err(broadcast::error::RecvError::Closed) => return events,
            Err(broadcast::error::RecvError::Lagged(n)) => panic!("a receiver lagged by {n}"),
        }
    }
}

async fn drain_body(mut body: ConnectionBody, sink: Arc<Sink>, event_len: usize) -> usize {
    let mut events = 0;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(aborted) => panic!("a receiver was aborted: {aborted}"),
        };
        if let Ok(data) = frame.into_data() {
            let n = count_events(&data, event_len);
            events += n;
            // A burst never shares a frame with the next one: the publisher waits in between.
            if n > 0 && events % BURST == 0 {
                sink.arrive();
            }
        }
    }
    events
}

/// The length of `event` as the manager writes it: with automatic ids (the default) it gains an
/// `id:` line, of the same length for every event of a run.
fn wire_len(manager: &ConnectionManager, event: &Event) -> usize {
    let (_handle, mut body) = manager.connect(Connect::new()).expect("connect");
    manager.publish(event.clone()).expect("manager is open");
    let frame = body
        .frame()
        .now_or_never()
        .expect("an event is queued")
        .expect("the stream is open");
    let data = match frame {
        Ok(frame) => frame.into_data().expect("a data frame"),
        Err(aborted) => panic!("the stream was aborted: {aborted}"),
    };
    data.len()
}

fn setup(rt: &Runtime, side: Side, receivers: usize) -> Running {
    let event = payload();
    match side {
        Side::Broadcast => {
            let event_len = event.len();
            let (tx, rx) = broadcast::channel(BROADCAST_CAPACITY);
            let rxs: Vec<_> = (0..receivers).map(|_| tx.subscribe()).collect();
            drop(rx);
            let fanout = Arc::new(Fanout {
                receivers,
                publisher: Publisher::Broadcast {
                    tx,
                    bytes: event.into_bytes(),
                },
                sink: Arc::new(Sink::new()),
                bursts: AtomicU64::new(0),
            });
            let tasks = rxs
                .into_iter()
                .map(|rx| rt.spawn(recv_broadcast(rx, fanout.sink.clone(), event_len)))
                .collect();
            Running { fanout, tasks }
        }
        Side::Manager | Side::ManagerTopic => {
            let manager = ConnectionManager::new();
            let event_len = wire_len(&manager, &event);
            let topic = matches!(side, Side::ManagerTopic).then_some(TOPIC);
            let bodies: Vec<_> = (0..receivers)
                .map(|_| {
                    let options = match topic {
                        Some(t) => Connect::new().topic(t),
                        None => Connect::new(),
                    };
                    manager.connect(options).expect("connect").1
                })
                .collect();
            let fanout = Arc::new(Fanout {
                receivers,
                publisher: Publisher::Manager {
                    manager,
                    event,
                    topic,
                },
                sink: Arc::new(Sink::new()),
                bursts: AtomicU64::new(0),
            });
            let tasks = bodies
                .into_iter()
                .map(|body| rt.spawn(drain_body(body, fanout.sink.clone(), event_len)))
                .collect();
            Running { fanout, tasks }
        }
    }
}

/// Ends every receiver and checks that each counted every event published.
fn teardown(rt: &Runtime, running: Running) {
    let Running { fanout, tasks } = running;
    let expected = fanout.bursts.load(Ordering::Relaxed) as usize * BURST;
    // Dropping the sender (or shutting the manager down) ends every receiver's loop.
    match &fanout.publisher {
        Publisher::Broadcast { .. } => {}
        Publisher::Manager { manager, .. } => {
            manager.shutdown();
        }
    }
    // The last reference: the publisher tasks have ended, the receivers hold only the sink.
    let fanout = Arc::try_unwrap(fanout).unwrap_or_else(|_| panic!("a publisher is still running"));
    drop(fanout);
    rt.block_on(async {
        for task in tasks {
            let got = task.await.expect("a receiver task panicked");
            assert_eq!(got, expected, "a receiver missed events");
        }
    });
}

/// The timed loop: `iters` bursts, each waited for in full.
async fn bursts(fanout: Arc<Fanout>, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        fanout.sink.arm(fanout.receivers);
        for _ in 0..BURST {
            fanout.publisher.publish();
        }
        // A receiver that panicked would never report: fail loudly instead of hanging.
        tokio::time::timeout(Duration::from_secs(120), fanout.sink.notify.notified())
            .await
            .expect("every receiver got the burst within 2 minutes");
    }
    let elapsed = start.elapsed();
    fanout.bursts.fetch_add(iters, Ordering::Relaxed);
    elapsed
}

fn fanout(c: &mut Criterion) {
    eprintln!("telemetry: {}", telemetry::install());
    let rt = runtime();
    let mut group = c.benchmark_group("fanout");
    group.sample_size(10);
    for n in SIZES {
        group.throughput(Throughput::Elements((n * BURST) as u64));
        for side in [Side::Broadcast, Side::Manager, Side::ManagerTopic] {
            // Set up on first use, so a filtered-out benchmark costs nothing.
            let mut running: Option<Running> = None;
            group.bench_function(BenchmarkId::new(side.name(), n), |b| {
                let fanout = running
                    .get_or_insert_with(|| setup(&rt, side, n))
                    .fanout
                    .clone();
                b.iter_custom(|iters| {
                    // The publisher runs on a worker, like every receiver.
                    rt.block_on(rt.spawn(bursts(fanout.clone(), iters)))
                        .expect("the publisher task panicked")
                });
            });
            if let Some(running) = running {
                teardown(&rt, running);
            }
        }
    }
    group.finish();
}

fn publish_only(c: &mut Criterion) {
    telemetry::install();
    let mut group = c.benchmark_group("publish_only");
    group.sample_size(10);
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));

        let mut idle: Option<(broadcast::Sender<Bytes>, Vec<broadcast::Receiver<Bytes>>)> = None;
        group.bench_function(BenchmarkId::new("broadcast", n), |b| {
            let (tx, _rxs) = idle.get_or_insert_with(|| {
                let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
                let rxs = (0..n).map(|_| tx.subscribe()).collect();
                (tx, rxs)
            });
            let bytes = payload().into_bytes();
            b.iter(|| black_box(tx.send(bytes.clone())));
        });
        drop(idle);

        type Conns = Vec<(ConnectionHandle, ConnectionBody)>;
        let mut idle: Option<(ConnectionManager, Conns)> = None;
        group.bench_function(BenchmarkId::new("manager", n), |b| {
            let (manager, conns) = idle.get_or_insert_with(|| {
                let manager = ConnectionManager::builder()
                    .queue_capacity(2 * PUBLISH_CHUNK as usize)
                    .build();
                let conns = (0..n)
                    .map(|_| manager.connect(Connect::new()).expect("connect"))
                    .collect();
                (manager, conns)
            });
            let event = payload();
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let chunk = left.min(PUBLISH_CHUNK);
                    let start = Instant::now();
                    for _ in 0..chunk {
                        black_box(manager.publish(event.clone()).expect("manager is open"));
                    }
                    timed += start.elapsed();
                    left -= chunk;
                    // Empty every queue without registering a waker: a later publish has
                    // nobody to wake, as in the broadcast case.
                    for (handle, body) in conns.iter_mut() {
                        while handle.queued() > 0 {
                            let _ = body.frame().now_or_never();
                        }
                    }
                }
                timed
            });
        });
        drop(idle);
    }
    group.finish();
}

criterion_group!(benches, fanout, publish_only);
criterion_main!(benches);

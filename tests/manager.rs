//! `ConnectionManager` in process: every way to send, every way to close, caps, shutdown,
//! slow consumers, coalescing, replay by `Last-Event-ID`, and the counters.
//!
//! Bodies are polled by hand (`frame().now_or_never()`), so "nothing arrived" is checked at an
//! exact moment. Timed tests run on tokio's paused clock and move it only with
//! `tokio::time::advance`; every wait on another task is bounded by a timeout.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::whatwg::{decode, Decoded};
use futures_util::FutureExt;
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::time::{advance, timeout};
use tokio_util::sync::CancellationToken;
use tower::{service_fn, Layer, ServiceExt};
use tower_sse::layer::ResponseBody;
use tower_sse::manager::{
    CloseReason, Connect, ConnectError, ConnectionBody, ConnectionHandle, ConnectionId,
    ConnectionManager, ManagerBuilder, Replay, SendError, SlowConsumerPolicy,
};
use tower_sse::{Event, LastEventId, SseContext, SseLayer};

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Every close the `on_close` hook saw, in order.
type Closes = Arc<Mutex<Vec<(ConnectionId, CloseReason)>>>;

/// Builds the manager with an `on_close` hook that records every close.
fn recording<M: Send + Sync + 'static>(
    builder: ManagerBuilder<M>,
) -> (ConnectionManager<M>, Closes) {
    let closes = Closes::default();
    let seen = closes.clone();
    let manager = builder
        .on_close(move |conn, reason| seen.lock().unwrap().push((conn.id(), reason)))
        .build();
    (manager, closes)
}

fn closes_of(closes: &Closes) -> Vec<(ConnectionId, CloseReason)> {
    closes.lock().unwrap().clone()
}

/// What a body has for us right now.
#[derive(Debug, PartialEq)]
enum Next {
    Pending,
    Data(Bytes),
    End,
    /// The body ended with an error: the server drops the connection without ending the
    /// response (a slow consumer).
    Aborted,
}

/// Lets the runtime fire due timers and wake tasks, without moving a paused clock.
async fn settle() {
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
}

/// Polls `body` once, at this instant.
fn poll_now<B>(body: &mut B) -> Next
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    match body.frame().now_or_never() {
        None => Next::Pending,
        Some(None) => Next::End,
        Some(Some(Err(_))) => Next::Aborted,
        Some(Some(Ok(frame))) => match frame.into_data() {
            Ok(data) => Next::Data(data),
            Err(_) => panic!("a manager body sends data frames only"),
        },
    }
}

/// Polls `body` at this instant, letting due timers fire (for bodies behind `SseLayer`).
async fn next<B>(body: &mut B) -> Next
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    for _ in 0..4 {
        match poll_now(body) {
            Next::Pending => settle().await,
            ready => return ready,
        }
    }
    Next::Pending
}

/// The next frame, which must be ready now.
#[track_caller]
fn frame<B>(body: &mut B) -> Bytes
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    match poll_now(body) {
        Next::Data(data) => data,
        other => panic!("expected a frame, got {other:?}"),
    }
}

/// Everything a body has ready now.
#[derive(Debug, Default)]
struct Drained {
    frames: Vec<Bytes>,
    /// The stream is over, cleanly or aborted.
    ended: bool,
    /// It ended with an error.
    aborted: bool,
}

impl Drained {
    fn bytes(&self) -> Vec<u8> {
        self.frames.concat()
    }

    fn events(&self) -> Vec<Decoded> {
        decode(&self.bytes()).events
    }

    fn data(&self) -> Vec<String> {
        self.events().into_iter().map(|e| e.data).collect()
    }
}

/// Takes every frame that is ready now, until the body is pending or ends.
fn drain_now<B>(body: &mut B) -> Drained
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut out = Drained::default();
    for _ in 0..100_000 {
        match poll_now(body) {
            Next::Data(d) => out.frames.push(d),
            Next::Pending => return out,
            Next::End => {
                out.ended = true;
                return out;
            }
            Next::Aborted => {
                out.ended = true;
                out.aborted = true;
                return out;
            }
        }
    }
    panic!("body kept producing frames");
}

/// The data of every event in `bytes`, as a spec-following client decodes them.
fn data_of(bytes: &[u8]) -> Vec<String> {
    decode(bytes).events.into_iter().map(|e| e.data).collect()
}

/// The values of the `id: ` lines in `bytes`.
fn ids_of(bytes: &[u8]) -> Vec<String> {
    std::str::from_utf8(bytes)
        .expect("utf-8")
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(str::to_owned)
        .collect()
}

fn last_id(id: &str) -> Option<LastEventId> {
    Some(
        LastEventId::parse(id)
            .expect("valid id")
            .expect("non-empty id"),
    )
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The key every connection made by [`open_layered`] is registered under.
const LAYERED_KEY: &str = "layered";

/// An `SseLayer`-wrapped service whose handler connects to `manager` with the request's
/// `SseContext`, and the body of the stream it answers one request with.
async fn open_layered(
    manager: &ConnectionManager,
    layer: SseLayer,
) -> ResponseBody<ConnectionBody> {
    let m = manager.clone();
    let svc = layer.layer(service_fn(move |req: Request<()>| {
        let m = m.clone();
        async move {
            let ctx = req
                .extensions()
                .get::<SseContext>()
                .expect("set by SseLayer")
                .clone();
            let (_handle, body) = m
                .connect(Connect::new().key(LAYERED_KEY).context(&ctx))
                .expect("connect");
            Ok::<_, Infallible>(body.into_response())
        }
    }));
    let res: Response<ResponseBody<ConnectionBody>> = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let body = res.into_body();
    assert!(body.is_event_stream());
    body
}

fn bye() -> Event {
    Event::builder().event("bye").data("later").build().unwrap()
}

/// Asserts the manager holds nothing any more.
#[track_caller]
fn assert_empty<M: Send + Sync + 'static>(manager: &ConnectionManager<M>) {
    assert_eq!(manager.len(), 0);
    assert!(manager.is_empty());
    let stats = manager.stats();
    assert_eq!(stats.open, 0);
    assert!(stats.open_per_topic.is_empty(), "{stats:?}");
    let closed: u64 = stats.closed.values().sum();
    assert_eq!(
        closed, stats.connected,
        "every connection closed once: {stats:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Sending.

#[tokio::test]
async fn publish_reaches_everyone_from_one_buffer_with_increasing_ids() {
    let (m, closes) = recording(ConnectionManager::builder());
    let mut conns: Vec<_> = (0..3).map(|_| m.connect(Connect::new()).unwrap()).collect();

    let first = m.publish(Event::message("hello")).unwrap();
    assert_eq!((first.delivered, first.disconnected), (3, 0));
    let id: u64 = first.id.as_deref().expect("auto id").parse().unwrap();
    let frames: Vec<Bytes> = conns.iter_mut().map(|(_, b)| frame(b)).collect();
    for f in &frames {
        assert_eq!(&f[..], format!("id: {id}\ndata: hello\n\n").as_bytes());
        // Encoded once: every connection holds the same buffer.
        assert_eq!(f.as_ptr(), frames[0].as_ptr());
        assert_eq!(f.len(), frames[0].len());
    }
    for (_, b) in &mut conns {
        assert_eq!(poll_now(b), Next::Pending);
    }

    // Without an id, the next number; with one, the id is kept as it is.
    let second = m.publish(Event::message("again")).unwrap();
    let id2: u64 = second.id.as_deref().unwrap().parse().unwrap();
    assert!(id2 > id, "{id2} after {id}");
    let own = Event::builder().id("mine").data("x").build().unwrap();
    let kept = m.publish(own).unwrap();
    assert_eq!(kept.id.as_deref(), Some("mine"));
    let third = m.publish_topic("none", Event::message("nobody")).unwrap();
    assert_eq!(third.delivered, 0);
    let id3: u64 = third.id.as_deref().unwrap().parse().unwrap();
    assert!(id3 > id2, "{id3} after {id2}");
    let fourth = m.publish(Event::message("last")).unwrap();
    let id4: u64 = fourth.id.as_deref().unwrap().parse().unwrap();
    assert!(id4 > id3, "{id4} after {id3}");

    for (_, b) in &mut conns {
        let got = drain_now(b);
        assert!(!got.ended);
        // Queued together, handed over together.
        assert_eq!(got.frames.len(), 1);
        assert_eq!(
            ids_of(&got.bytes()),
            [id2.to_string(), "mine".to_owned(), id4.to_string()]
        );
        assert_eq!(got.data(), ["again", "x", "last"]);
    }

    drop(conns);
    assert_eq!(closes_of(&closes).len(), 3);
    assert!(closes_of(&closes)
        .iter()
        .all(|(_, r)| *r == CloseReason::ClientGone));
    assert_empty(&m);
}

#[tokio::test]
async fn every_target_reaches_exactly_its_recipients() {
    let (m, closes) = recording(ManagerBuilder::<u32>::new());
    let (a, mut a_body) = m
        .connect(Connect::with_meta(1).key("alice").topic("news"))
        .unwrap();
    let (b, mut b_body) = m.connect(Connect::with_meta(2).key("alice")).unwrap();
    let (c, mut c_body) = m
        .connect(
            Connect::with_meta(3)
                .key("bob")
                .topic("news")
                .topic("sport"),
        )
        .unwrap();
    let (d, mut d_body) = m.connect(Connect::with_meta(4)).unwrap();
    assert_eq!(a.key(), Some("alice"));
    assert!(c.has_topic("sport") && !a.has_topic("sport"));
    assert_eq!(
        c.topics().iter().map(|t| &**t).collect::<Vec<_>>(),
        ["news", "sport"]
    );
    assert_eq!(*d.meta(), 4);
    assert_eq!(m.len(), 4);
    assert_eq!(m.handles_for_key("alice").len(), 2);
    assert!(m.handles_for_key("nobody").is_empty());

    // To a key: both of alice's connections, one shared buffer.
    let to_alice = m.send_to_key("alice", Event::message("k")).unwrap();
    assert_eq!((to_alice.delivered, to_alice.disconnected), (2, 0));
    // Personal sends are not recorded, so they get no id.
    assert_eq!(to_alice.id, None);
    let fa = frame(&mut a_body);
    let fb = frame(&mut b_body);
    assert_eq!(&fa[..], b"data: k\n\n");
    assert_eq!(fa.as_ptr(), fb.as_ptr());
    assert_eq!(poll_now(&mut c_body), Next::Pending);
    assert_eq!(poll_now(&mut d_body), Next::Pending);
    assert_eq!(
        m.send_to_key("nobody", Event::message("lost"))
            .unwrap()
            .delivered,
        0
    );

    // To a topic.
    assert_eq!(
        m.publish_topic("news", Event::message("n"))
            .unwrap()
            .delivered,
        2
    );
    assert_eq!(
        m.publish_topic("sport", Event::message("s"))
            .unwrap()
            .delivered,
        1
    );
    // Through a filter on metadata.
    let even = m
        .send_filter(|c| *c.meta() % 2 == 0, Event::message("even"))
        .unwrap();
    assert_eq!(even.delivered, 2);
    let none = m.send_filter(|_| false, Event::message("x")).unwrap();
    assert_eq!(none.delivered, 0);
    // To one connection, by id and by handle.
    m.send_to(c.id(), Event::message("to c")).unwrap();
    d.send(Event::message("to d")).unwrap();
    assert_eq!(m.handle(b.id()).map(|h| h.id()), Some(b.id()));
    m.handle(b.id())
        .unwrap()
        .send(Event::message("to b"))
        .unwrap();
    // To everyone.
    assert_eq!(m.publish(Event::message("all")).unwrap().delivered, 4);

    assert_eq!(drain_now(&mut a_body).data(), ["n", "all"]);
    assert_eq!(drain_now(&mut b_body).data(), ["even", "to b", "all"]);
    assert_eq!(drain_now(&mut c_body).data(), ["n", "s", "to c", "all"]);
    assert_eq!(drain_now(&mut d_body).data(), ["even", "to d", "all"]);

    let stats = m.stats();
    assert_eq!(stats.open, 4);
    assert_eq!(stats.open_per_topic.len(), 2);
    assert_eq!(stats.open_per_topic["news"], 2);
    assert_eq!(stats.open_per_topic["sport"], 1);

    drop((a_body, b_body, c_body, d_body));
    assert_eq!(closes_of(&closes).len(), 4);
    assert_empty(&m);
}

#[tokio::test]
async fn queued_events_leave_as_one_frame() {
    let m: ConnectionManager = ConnectionManager::new();
    let (_h, mut body) = m.connect(Connect::new()).unwrap();
    for i in 0..10 {
        m.publish(Event::message(i.to_string())).unwrap();
    }
    assert_eq!(body.size_hint().exact(), None);
    assert!(!body.is_end_stream());
    let one = frame(&mut body);
    let expected: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(data_of(&one), expected);
    assert_eq!(ids_of(&one).len(), 10);
    assert_eq!(poll_now(&mut body), Next::Pending);
    drop(body);
    assert_empty(&m);
}

// ---------------------------------------------------------------------------------------------
// Operations on closed connections, caps, shutdown.

#[tokio::test]
async fn operations_on_closed_connections_say_why() {
    let (m, closes) = recording(ConnectionManager::builder());
    let (a, mut a_body) = m.connect(Connect::new()).unwrap();
    let (b, mut b_body) = m.connect(Connect::new()).unwrap();
    let (c, c_body) = m.connect(Connect::new()).unwrap();
    let (d, mut d_body) = m.connect(Connect::new()).unwrap();

    // Evicted.
    assert!(a.evict());
    assert!(a.is_closed());
    assert!(!a.evict());
    assert!(!a.complete());
    assert!(!a.complete_with(Event::message("x")));
    assert!(!a.complete_with_error(Event::message("x")));
    assert_eq!(
        a.send(Event::message("x")),
        Err(SendError::Closed(CloseReason::Evicted))
    );
    assert_eq!(
        m.send_to(a.id(), Event::message("x")),
        Err(SendError::NotFound)
    );
    assert!(m.handle(a.id()).is_none());
    assert_eq!(poll_now(&mut a_body), Next::End);
    assert!(a_body.is_end_stream());
    assert_eq!(poll_now(&mut a_body), Next::End);

    // Completing: closed to new events at once, even before the body ends.
    assert!(b.complete());
    assert!(b.is_closed());
    assert!(!b.complete());
    assert!(!b.evict());
    assert_eq!(
        b.send(Event::message("x")),
        Err(SendError::Closed(CloseReason::Completed))
    );
    assert_eq!(
        m.send_to(b.id(), Event::message("x")),
        Err(SendError::NotFound)
    );
    assert_eq!(poll_now(&mut b_body), Next::End);

    // The client went away.
    drop(c_body);
    assert!(c.is_closed());
    assert_eq!(
        c.send(Event::message("x")),
        Err(SendError::Closed(CloseReason::ClientGone))
    );
    assert!(!c.complete());
    assert!(!c.evict());

    // A broadcast skips them all without complaint.
    assert_eq!(m.publish(Event::message("left")).unwrap().delivered, 1);
    assert_eq!(drain_now(&mut d_body).data(), ["left"]);
    assert_eq!(m.len(), 1);
    assert!(d.evict());

    // Dropping the ended bodies closes nothing twice.
    drop((a_body, b_body, d_body));
    assert_eq!(
        closes_of(&closes),
        [
            (a.id(), CloseReason::Evicted),
            (b.id(), CloseReason::Completed),
            (c.id(), CloseReason::ClientGone),
            (d.id(), CloseReason::Evicted),
        ]
    );
    assert_empty(&m);
}

#[tokio::test]
async fn shutdown_delivers_queued_events_then_the_farewell_and_refuses_everything_after() {
    let (m, closes) = recording(ConnectionManager::builder());
    let (a, mut a_body) = m.connect(Connect::new().key("k").topic("t")).unwrap();
    let (b, mut b_body) = m.connect(Connect::new()).unwrap();
    m.publish(Event::message("1")).unwrap();
    m.publish(Event::message("2")).unwrap();

    assert!(!m.is_shutting_down());
    assert_eq!(m.shutdown_with(bye()), 2);
    assert!(m.is_shutting_down());
    assert_eq!(m.len(), 0);

    for body in [&mut a_body, &mut b_body] {
        let got = drain_now(body);
        assert!(got.ended);
        let events = got.events();
        assert_eq!(events.len(), 3);
        assert_eq!(
            (events[0].data.as_str(), events[1].data.as_str()),
            ("1", "2")
        );
        assert_eq!(
            events[2],
            Decoded::new("bye", "later", &events[1].last_event_id)
        );
    }

    let refused = Err(SendError::ShutDown);
    assert_eq!(m.publish(Event::message("x")), refused);
    assert_eq!(m.publish_topic("t", Event::message("x")), refused);
    assert_eq!(m.send_to_key("k", Event::message("x")), refused);
    assert_eq!(m.send_filter(|_| true, Event::message("x")), refused);
    assert_eq!(a.send(Event::message("x")), Err(SendError::ShutDown));
    assert_eq!(
        m.send_to(a.id(), Event::message("x")),
        Err(SendError::NotFound)
    );
    assert!(!a.complete());
    assert!(!b.evict());
    assert_eq!(
        m.connect(Connect::new()).map(|_| ()),
        Err(ConnectError::ShutDown)
    );
    assert_eq!(m.shutdown(), 0);

    drop((a_body, b_body));
    assert_eq!(
        closes_of(&closes),
        [
            (a.id(), CloseReason::Shutdown),
            (b.id(), CloseReason::Shutdown)
        ]
    );
    assert_empty(&m);
    assert_eq!(m.stats().closed[&CloseReason::Shutdown], 2);
}

#[tokio::test]
async fn shutdown_on_a_token() {
    let m: ConnectionManager = ConnectionManager::new();
    let (_h, mut body) = m.connect(Connect::new()).unwrap();
    let token = CancellationToken::new();
    let task = tokio::spawn(m.clone().shutdown_on(token.clone()));
    settle().await;
    assert!(!m.is_shutting_down());
    assert_eq!(poll_now(&mut body), Next::Pending);
    token.cancel();
    timeout(secs(5), task).await.unwrap().unwrap();
    assert!(m.is_shutting_down());
    assert_eq!(poll_now(&mut body), Next::End);
    drop(body);
    assert_empty(&m);
}

#[tokio::test]
async fn caps_refuse_with_typed_errors_and_harm_nothing() {
    let connects = Arc::new(Mutex::new(0usize));
    let seen = connects.clone();
    let (m, closes) = recording(
        ConnectionManager::builder()
            .max_connections(3)
            .max_per_key(2)
            .on_connect(move |_| *seen.lock().unwrap() += 1),
    );
    let (_a, mut a_body) = m.connect(Connect::new().key("k")).unwrap();
    let (_b, mut b_body) = m.connect(Connect::new().key("k")).unwrap();
    let err = m.connect(Connect::new().key("k")).map(|_| ()).unwrap_err();
    assert_eq!(err, ConnectError::TooManyForKey { limit: 2 });
    assert!(err.to_string().contains('2'));
    let (_c, mut c_body) = m.connect(Connect::new().key("other")).unwrap();
    let err = m.connect(Connect::new()).map(|_| ()).unwrap_err();
    assert_eq!(err, ConnectError::TooManyConnections { limit: 3 });
    assert!(err.to_string().contains('3'));

    // The refused ones left no trace, and the others still work.
    assert_eq!(m.len(), 3);
    assert_eq!(*connects.lock().unwrap(), 3);
    assert_eq!(m.stats().connected, 3);
    assert_eq!(m.handles_for_key("k").len(), 2);
    assert_eq!(m.publish(Event::message("still")).unwrap().delivered, 3);
    for body in [&mut a_body, &mut b_body, &mut c_body] {
        assert_eq!(drain_now(body).data(), ["still"]);
    }
    assert!(closes_of(&closes).is_empty());

    // Room again once one leaves.
    drop(a_body);
    let (_d, d_body) = m.connect(Connect::new().key("k")).unwrap();
    assert_eq!(m.len(), 3);
    drop((b_body, c_body, d_body));
    assert_eq!(closes_of(&closes).len(), 4);
    assert_empty(&m);
}

// ---------------------------------------------------------------------------------------------
// Close reasons, one by one.

#[tokio::test]
async fn completed_delivers_queued_events_then_the_last_one_then_ends() {
    let (m, closes) = recording(ConnectionManager::builder());
    let (h, mut body) = m.connect(Connect::new()).unwrap();
    h.send(Event::message("1")).unwrap();
    h.send(Event::message("2")).unwrap();
    assert!(h.complete_with(Event::builder().event("end").data("").build().unwrap()));
    assert_eq!(m.len(), 0);
    let got = drain_now(&mut body);
    assert!(got.ended);
    assert_eq!(
        got.events(),
        [
            Decoded::new("message", "1", ""),
            Decoded::new("message", "2", ""),
            Decoded::new("end", "", ""),
        ]
    );
    assert_eq!(poll_now(&mut body), Next::End);
    drop(body);
    assert_eq!(closes_of(&closes), [(h.id(), CloseReason::Completed)]);
    assert_empty(&m);
}

#[tokio::test]
async fn completed_with_error_delivers_queued_events_then_the_error_then_ends() {
    let (m, closes) = recording(ConnectionManager::builder());
    let (h, mut body) = m.connect(Connect::new()).unwrap();
    m.publish(Event::builder().id("1").data("one").build().unwrap())
        .unwrap();
    h.send(Event::message("two")).unwrap();
    let error = Event::builder()
        .event("error")
        .data("it broke")
        .build()
        .unwrap();
    assert!(h.complete_with_error(error));
    assert!(!h.complete());
    assert_eq!(
        h.send(Event::message("x")),
        Err(SendError::Closed(CloseReason::CompletedWithError))
    );
    let got = drain_now(&mut body);
    assert!(got.ended);
    assert_eq!(
        got.events(),
        [
            Decoded::new("message", "one", "1"),
            Decoded::new("message", "two", "1"),
            Decoded::new("error", "it broke", "1"),
        ]
    );
    drop(body);
    assert_eq!(
        closes_of(&closes),
        [(h.id(), CloseReason::CompletedWithError)]
    );
    assert_empty(&m);
}

#[tokio::test]
async fn complete_and_evict_by_key() {
    let (m, closes) = recording(ConnectionManager::builder());
    let (k1, mut k1_body) = m.connect(Connect::new().key("k")).unwrap();
    let (k2, mut k2_body) = m.connect(Connect::new().key("k")).unwrap();
    let (j1, mut j1_body) = m.connect(Connect::new().key("j")).unwrap();
    let (o, mut o_body) = m.connect(Connect::new().key("o")).unwrap();
    m.publish(Event::message("queued")).unwrap();

    assert_eq!(m.complete_key("k", Some(bye())), Ok(2));
    assert_eq!(m.complete_key("k", None), Ok(0));
    assert_eq!(m.evict_key("k"), Ok(0));
    for body in [&mut k1_body, &mut k2_body] {
        let got = drain_now(body);
        assert!(got.ended);
        assert_eq!(got.data(), ["queued", "later"]);
    }
    assert_eq!(m.evict_key("j"), Ok(1));
    let got = drain_now(&mut j1_body);
    assert!(got.ended);
    assert!(got.frames.is_empty(), "evicted: queued events are dropped");
    assert_eq!(m.evict_key("nobody"), Ok(0));
    assert_eq!(drain_now(&mut o_body).data(), ["queued"]);
    assert_eq!(m.len(), 1);

    drop((k1_body, k2_body, j1_body, o_body));
    let recorded = closes_of(&closes);
    assert_eq!(recorded.len(), 4);
    assert_eq!(recorded[0].1, CloseReason::Completed);
    assert_eq!(recorded[1].1, CloseReason::Completed);
    let completed: Vec<_> = recorded[..2].iter().map(|(id, _)| *id).collect();
    assert!(completed.contains(&k1.id()) && completed.contains(&k2.id()));
    assert_eq!(recorded[2], (j1.id(), CloseReason::Evicted));
    assert_eq!(recorded[3], (o.id(), CloseReason::ClientGone));
    assert_eq!(m.stats().dropped, 1, "j1's queued event");
    assert_empty(&m);
}

#[tokio::test(start_paused = true)]
async fn evict_idle_closes_only_connections_with_nothing_written() {
    let (m, closes) = recording(ConnectionManager::builder());
    let (busy, mut busy_body) = m.connect(Connect::new()).unwrap();
    let (idle, mut idle_body) = m.connect(Connect::new()).unwrap();
    let (stuck, mut stuck_body) = m.connect(Connect::new()).unwrap();

    advance(secs(6)).await;
    assert_eq!(m.evict_idle(secs(10)), 0);
    // Written at t=6 to `busy`; queued but never taken by `stuck`'s server.
    busy.send(Event::message("fresh")).unwrap();
    stuck.send(Event::message("never read")).unwrap();
    assert_eq!(drain_now(&mut busy_body).data(), ["fresh"]);

    advance(secs(5)).await;
    // t=11: `idle` and `stuck` had nothing written for 11 s, `busy` for 5 s.
    assert_eq!(m.evict_idle(secs(10)), 2);
    assert!(!busy.is_closed());
    assert!(idle.is_closed() && stuck.is_closed());
    assert_eq!(
        idle.send(Event::message("x")),
        Err(SendError::Closed(CloseReason::IdleTimeout))
    );
    assert!(drain_now(&mut idle_body).ended);
    assert!(drain_now(&mut stuck_body).ended);
    assert_eq!(m.evict_idle(secs(10)), 0);
    assert_eq!(m.evict_idle(secs(1)), 1);
    assert!(busy.is_closed());

    drop((busy_body, idle_body, stuck_body));
    let mut recorded = closes_of(&closes);
    recorded.sort_by_key(|(id, _)| *id);
    assert_eq!(
        recorded,
        [
            (busy.id(), CloseReason::IdleTimeout),
            (idle.id(), CloseReason::IdleTimeout),
            (stuck.id(), CloseReason::IdleTimeout),
        ]
    );
    assert_eq!(m.stats().dropped, 1, "stuck's queued event");
    assert_empty(&m);
}

#[tokio::test(start_paused = true)]
async fn layer_idle_timeout_closes_with_idle_timeout() {
    let (m, closes) = recording(ConnectionManager::builder());
    let layer = SseLayer::new().disable_heartbeat().idle_timeout(secs(30));
    let mut body = open_layered(&m, layer).await;
    assert_eq!(m.len(), 1);
    assert_eq!(next(&mut body).await, Next::Pending);
    advance(secs(20)).await;
    m.publish(Event::message("alive")).unwrap();
    match next(&mut body).await {
        Next::Data(d) => assert_eq!(data_of(&d), ["alive"]),
        other => panic!("{other:?}"),
    }
    advance(secs(29)).await;
    assert_eq!(next(&mut body).await, Next::Pending);
    advance(secs(2)).await;
    assert_eq!(next(&mut body).await, Next::End);
    // The manager learns why when the server drops the body.
    drop(body);
    assert_eq!(closes_of(&closes).len(), 1);
    assert_eq!(closes_of(&closes)[0].1, CloseReason::IdleTimeout);
    assert_empty(&m);
    assert_eq!(m.stats().closed[&CloseReason::IdleTimeout], 1);
}

#[tokio::test(start_paused = true)]
async fn layer_max_lifetime_closes_with_lifetime() {
    let (m, closes) = recording(ConnectionManager::builder());
    let layer = SseLayer::new().disable_heartbeat().max_lifetime(secs(60));
    let mut body = open_layered(&m, layer).await;
    assert_eq!(next(&mut body).await, Next::Pending);
    advance(secs(30)).await;
    m.publish(Event::message("mid-life")).unwrap();
    assert!(matches!(next(&mut body).await, Next::Data(_)));
    advance(secs(29)).await;
    assert_eq!(next(&mut body).await, Next::Pending);
    advance(secs(2)).await;
    assert_eq!(next(&mut body).await, Next::End);
    drop(body);
    assert_eq!(closes_of(&closes).len(), 1);
    assert_eq!(closes_of(&closes)[0].1, CloseReason::Lifetime);
    assert_empty(&m);
}

#[tokio::test(start_paused = true)]
async fn layer_shutdown_token_closes_with_shutdown_after_the_farewell() {
    let (m, closes) = recording(ConnectionManager::builder());
    let token = CancellationToken::new();
    let layer = SseLayer::new()
        .disable_heartbeat()
        .shutdown_token(token.clone())
        .farewell(bye());
    let mut one = open_layered(&m, layer.clone()).await;
    let mut two = open_layered(&m, layer).await;
    m.publish(Event::message("before")).unwrap();
    for body in [&mut one, &mut two] {
        match next(body).await {
            Next::Data(d) => assert_eq!(data_of(&d), ["before"]),
            other => panic!("{other:?}"),
        }
    }
    token.cancel();
    for body in [&mut one, &mut two] {
        match next(body).await {
            Next::Data(d) => assert_eq!(&d[..], bye().as_bytes()),
            other => panic!("expected the farewell, got {other:?}"),
        }
        assert_eq!(next(body).await, Next::End);
    }
    drop((one, two));
    let recorded = closes_of(&closes);
    assert_eq!(recorded.len(), 2);
    assert!(recorded.iter().all(|(_, r)| *r == CloseReason::Shutdown));
    // The layer shut the streams, not the manager: it still accepts connections.
    assert!(!m.is_shutting_down());
    assert_empty(&m);
}

#[tokio::test]
async fn layer_body_passes_manager_closes_through() {
    let (m, closes) = recording(ConnectionManager::builder());
    let mut body = open_layered(&m, SseLayer::new()).await;
    m.publish(Event::message("queued")).unwrap();
    let handles = m.handles_for_key(LAYERED_KEY);
    assert_eq!(handles.len(), 1);
    // Evicted through the manager: the layer's body ends at once, queued events dropped,
    // and dropping the body closes nothing twice.
    assert!(handles[0].evict());
    assert_eq!(next(&mut body).await, Next::End);
    drop(body);
    assert_eq!(
        closes_of(&closes),
        [(handles[0].id(), CloseReason::Evicted)]
    );
    assert_empty(&m);
}

// ---------------------------------------------------------------------------------------------
// Slow consumers.

const SLOW_CAPACITY: usize = 8;
const FAST: usize = 19;
const SLOW_EVENTS: usize = 400;

/// Reads `body` until it has seen `want` events or ends; returns the data of each event.
async fn drain_until(mut body: ConnectionBody, want: usize) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.len() < want {
        match timeout(secs(10), body.frame()).await {
            Err(_) => panic!("a fast reader waited 10 s for a frame"),
            Ok(None) => break,
            Ok(Some(frame)) => seen.extend(data_of(&frame.unwrap().into_data().unwrap())),
        }
    }
    seen
}

/// Twenty connections, one never read; 400 events published while the nineteen others are
/// read by their own tasks. Returns the manager, the slow connection, its body, and what
/// the fast ones received, after checking each publish's `Delivery`.
async fn slow_consumer_run(
    policy: SlowConsumerPolicy,
) -> (
    ConnectionManager,
    Closes,
    ConnectionHandle,
    ConnectionBody,
    Vec<Vec<String>>,
) {
    let (m, closes) = recording(
        ConnectionManager::builder()
            .queue_capacity(SLOW_CAPACITY)
            .slow_consumer(policy),
    );
    let (slow, slow_body) = m.connect(Connect::new()).unwrap();
    let readers: Vec<_> = (0..FAST)
        .map(|_| {
            let (_h, body) = m.connect(Connect::new()).unwrap();
            tokio::spawn(drain_until(body, SLOW_EVENTS))
        })
        .collect();
    let mut max_queued = 0;
    for i in 0..SLOW_EVENTS {
        let d = m.publish(Event::message(i.to_string())).unwrap();
        max_queued = max_queued.max(slow.queued());
        match policy {
            SlowConsumerPolicy::Disconnect if i < SLOW_CAPACITY => {
                assert_eq!((d.delivered, d.disconnected), (FAST + 1, 0), "event {i}");
            }
            SlowConsumerPolicy::Disconnect if i == SLOW_CAPACITY => {
                assert_eq!((d.delivered, d.disconnected), (FAST, 1), "event {i}");
            }
            SlowConsumerPolicy::Disconnect => {
                assert_eq!((d.delivered, d.disconnected), (FAST, 0), "event {i}");
            }
            _ => assert_eq!((d.delivered, d.disconnected), (FAST + 1, 0), "event {i}"),
        }
        // Let the readers catch up now and then, as a server's writers would.
        tokio::task::yield_now().await;
    }
    // Memory stays bounded: the slow connection never holds more than its capacity.
    assert!(max_queued <= SLOW_CAPACITY, "queued {max_queued}");
    let mut fast = Vec::new();
    for r in readers {
        fast.push(timeout(secs(20), r).await.unwrap().unwrap());
    }
    (m, closes, slow, slow_body, fast)
}

#[tokio::test]
async fn slow_consumer_is_disconnected_and_the_others_get_everything() {
    let (m, closes, slow, mut slow_body, fast) =
        slow_consumer_run(SlowConsumerPolicy::Disconnect).await;
    let expected: Vec<String> = (0..SLOW_EVENTS).map(|i| i.to_string()).collect();
    for got in &fast {
        assert_eq!(got, &expected);
    }
    assert!(slow.is_closed());
    assert_eq!(slow.queued(), 0, "the slow connection's queue was freed");
    assert_eq!(
        slow.send(Event::message("x")),
        Err(SendError::Closed(CloseReason::SlowConsumer))
    );
    // Aborted, not ended: the server drops a client that does not read instead of waiting
    // to write the end of the response to it.
    assert_eq!(poll_now(&mut slow_body), Next::Aborted);
    assert_eq!(poll_now(&mut slow_body), Next::End);
    drop(slow_body);
    let recorded = closes_of(&closes);
    let slow_closes: Vec<_> = recorded.iter().filter(|(id, _)| *id == slow.id()).collect();
    assert_eq!(slow_closes, [&(slow.id(), CloseReason::SlowConsumer)]);
    let stats = m.stats();
    assert_eq!(stats.closed[&CloseReason::SlowConsumer], 1);
    assert_eq!(stats.dropped, SLOW_CAPACITY as u64);
    assert_eq!(stats.lagged, 0);
    assert_eq!(
        stats.deliveries,
        (FAST * SLOW_EVENTS + SLOW_CAPACITY) as u64
    );
    assert_eq!(
        m.len(),
        0,
        "every fast reader finished and dropped its body"
    );
    assert_empty(&m);
}

#[tokio::test]
async fn slow_consumer_lags_and_keeps_only_the_newest_events() {
    let (m, closes, slow, mut slow_body, fast) =
        slow_consumer_run(SlowConsumerPolicy::DropOldest).await;
    let expected: Vec<String> = (0..SLOW_EVENTS).map(|i| i.to_string()).collect();
    for got in &fast {
        assert_eq!(got, &expected);
    }
    let lagged = (SLOW_EVENTS - SLOW_CAPACITY) as u64;
    assert!(!slow.is_closed());
    assert_eq!(slow.queued(), SLOW_CAPACITY);
    assert_eq!(slow.lagged(), lagged);
    let got = drain_now(&mut slow_body);
    assert!(!got.ended);
    assert_eq!(got.frames.len(), 1);
    assert_eq!(got.data(), expected[SLOW_EVENTS - SLOW_CAPACITY..]);
    let stats = m.stats();
    assert_eq!(stats.lagged, lagged);
    assert_eq!(stats.dropped, lagged);
    assert_eq!(stats.deliveries, ((FAST + 1) * SLOW_EVENTS) as u64);
    assert!(!stats.closed.contains_key(&CloseReason::SlowConsumer));
    drop(slow_body);
    assert_eq!(
        closes_of(&closes).last(),
        Some(&(slow.id(), CloseReason::ClientGone))
    );
    assert_empty(&m);
}

#[tokio::test]
async fn a_full_queue_disconnects_on_a_single_send_too() {
    let (m, closes) = recording(ConnectionManager::builder().queue_capacity(2));
    let (h, body) = m.connect(Connect::new()).unwrap();
    h.send(Event::message("1")).unwrap();
    m.send_to(h.id(), Event::message("2")).unwrap();
    assert_eq!(h.queued(), 2);
    assert_eq!(h.send(Event::message("3")), Err(SendError::SlowConsumer));
    assert_eq!(h.queued(), 0);
    assert_eq!(
        m.send_to(h.id(), Event::message("4")),
        Err(SendError::NotFound)
    );
    drop(body);
    assert_eq!(closes_of(&closes), [(h.id(), CloseReason::SlowConsumer)]);
    assert_eq!(m.stats().dropped, 2);
    assert_empty(&m);
}

/// Replayed events may exceed the queue's capacity at connect time, but once they have been
/// handed over, the live queue must be bounded by `queue_capacity` again: otherwise every
/// reconnect with a long replay leaves a connection that can hold that many more events.
#[tokio::test]
async fn replayed_events_do_not_raise_the_live_queue_bound() {
    const CAP: usize = 4;
    let (m, closes) = recording(ConnectionManager::builder().queue_capacity(CAP));
    let first = m.publish(Event::message("0")).unwrap().id.unwrap();
    for i in 1..50 {
        m.publish(Event::message(i.to_string())).unwrap();
    }
    let (h, mut body) = m
        .connect(Connect::new().last_event_id(last_id(&first)))
        .unwrap();
    assert_eq!(h.replay(), Replay::Resumed(49));
    assert_eq!(
        h.queued(),
        49,
        "the whole replay is queued, beyond the capacity"
    );
    let got = drain_now(&mut body);
    assert_eq!(got.data().len(), 49);
    assert_eq!(h.queued(), 0);

    // Live events from now on: the bound is the configured capacity.
    let mut max_queued = 0;
    for i in 0..20 {
        let _ = m.publish(Event::message(format!("live {i}")));
        max_queued = max_queued.max(h.queued());
    }
    assert!(
        max_queued <= CAP,
        "a drained connection held {max_queued} live events with queue_capacity {CAP}"
    );
    assert!(h.is_closed(), "the slow consumer policy never applied");
    drop(body);
    assert_eq!(closes_of(&closes), [(h.id(), CloseReason::SlowConsumer)]);
    assert_empty(&m);
}

// ---------------------------------------------------------------------------------------------
// Replay.

#[tokio::test]
async fn resumed_replays_exactly_what_was_missed_then_live_events() {
    let m: ConnectionManager = ConnectionManager::new();
    let ids: Vec<Arc<str>> = (0..5)
        .map(|i| {
            m.publish(Event::message(i.to_string()))
                .unwrap()
                .id
                .unwrap()
        })
        .collect();
    assert_eq!(m.history_len(), 5);
    let (h, mut body) = m
        .connect(Connect::new().last_event_id(last_id(&ids[1])))
        .unwrap();
    assert_eq!(h.replay(), Replay::Resumed(3));
    m.publish(Event::message("live")).unwrap();
    let got = drain_now(&mut body);
    assert_eq!(got.frames.len(), 1);
    assert_eq!(got.data(), ["2", "3", "4", "live"]);
    let events = got.events();
    assert_eq!(events[0].last_event_id, &*ids[2]);
    assert_eq!(events[2].last_event_id, &*ids[4]);

    // Up to date: nothing to replay.
    let (h2, mut body2) = m
        .connect(Connect::new().last_event_id(last_id(&ids[4])))
        .unwrap();
    // The newest id is now "live", so ids[4] is one behind.
    assert_eq!(h2.replay(), Replay::Resumed(1));
    assert_eq!(drain_now(&mut body2).data(), ["live"]);

    // No Last-Event-ID: fresh, nothing replayed.
    let (h3, mut body3) = m.connect(Connect::new()).unwrap();
    assert_eq!(h3.replay(), Replay::Fresh);
    assert_eq!(poll_now(&mut body3), Next::Pending);

    // Ids given by the publisher work as well.
    m.publish(Event::builder().id("own-7").data("own").build().unwrap())
        .unwrap();
    m.publish(Event::message("after own")).unwrap();
    let (h4, mut body4) = m
        .connect(Connect::new().last_event_id(last_id("own-7")))
        .unwrap();
    assert_eq!(h4.replay(), Replay::Resumed(1));
    assert_eq!(drain_now(&mut body4).data(), ["after own"]);

    drop((body, body2, body3, body4));
    assert_empty(&m);
}

#[tokio::test]
async fn unknown_id_gets_the_gap_event_then_live_events_by_default() {
    let m = ConnectionManager::new();
    for i in 0..3 {
        m.publish(Event::message(i.to_string())).unwrap();
    }
    let (h, mut body) = m
        .connect(Connect::new().last_event_id(last_id("nope")))
        .unwrap();
    assert_eq!(h.replay(), Replay::Gap(0));
    m.publish(Event::message("live")).unwrap();
    let events = drain_now(&mut body).events();
    let got: Vec<_> = events
        .iter()
        .map(|e| (e.event_type.as_str(), e.data.as_str()))
        .collect();
    assert_eq!(got, [("gap", ""), ("message", "live")]);
    drop(body);
    assert_eq!(m.stats().gaps, 1);
    assert_empty(&m);
}

#[tokio::test]
async fn unknown_id_gets_the_gap_event_first_then_the_history() {
    let m: ConnectionManager = ConnectionManager::builder().replay_after_gap(100).build();
    for i in 0..3 {
        m.publish(Event::message(i.to_string())).unwrap();
    }
    let (h, mut body) = m
        .connect(Connect::new().last_event_id(last_id("nope")))
        .unwrap();
    assert!(matches!(h.replay(), Replay::Gap(_)), "{:?}", h.replay());
    let events = drain_now(&mut body).events();
    assert_eq!(events.len(), 4);
    assert_eq!(
        (events[0].event_type.as_str(), events[0].data.as_str()),
        ("gap", "")
    );
    let data: Vec<_> = events[1..].iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data, ["0", "1", "2"]);

    // A custom gap event, or none.
    let custom = Event::builder()
        .event("reload")
        .data("all")
        .build()
        .unwrap();
    let m2: ConnectionManager = ConnectionManager::builder()
        .gap_event(Some(custom))
        .replay_after_gap(100)
        .build();
    m2.publish(Event::message("x")).unwrap();
    let (_h, mut b2) = m2
        .connect(Connect::new().last_event_id(last_id("nope")))
        .unwrap();
    let events = drain_now(&mut b2).events();
    assert_eq!(events[0].event_type, "reload");
    assert_eq!(events.len(), 2);

    let m3: ConnectionManager = ConnectionManager::builder()
        .gap_event(None)
        .replay_after_gap(100)
        .build();
    m3.publish(Event::message("x")).unwrap();
    let (h3, mut b3) = m3
        .connect(Connect::new().last_event_id(last_id("nope")))
        .unwrap();
    assert_eq!(h3.replay(), Replay::Gap(1));
    assert_eq!(drain_now(&mut b3).data(), ["x"]);

    drop((body, b2, b3));
    assert_empty(&m);
    assert_empty(&m2);
    assert_empty(&m3);
}

/// `Replay::Gap(n)` is documented as "the gap event was sent, then this many of the newest
/// events": `n` counts history events, not the gap event.
#[tokio::test]
async fn gap_counts_the_replayed_history_not_the_gap_event() {
    let m: ConnectionManager = ConnectionManager::builder().replay_after_gap(100).build();
    for i in 0..3 {
        m.publish(Event::message(i.to_string())).unwrap();
    }
    let (h, mut body) = m
        .connect(Connect::new().last_event_id(last_id("nope")))
        .unwrap();
    let replayed = drain_now(&mut body).events().len() - 1;
    assert_eq!(replayed, 3);
    assert_eq!(h.replay(), Replay::Gap(3));
}

/// The history forgets events older than its age bound. A client that missed one of them
/// gets the gap event, then what is left; a client whose own last event expired but that
/// missed nothing expired is resumed exactly: its id is a position in the publish order.
#[tokio::test(start_paused = true)]
async fn expired_id_gets_the_gap_event() {
    let m: ConnectionManager = ConnectionManager::builder()
        .replay(100, Some(secs(60)))
        .replay_after_gap(100)
        .build();
    let before = m.publish(Event::message("before")).unwrap().id.unwrap();
    let old = m.publish(Event::message("old")).unwrap().id.unwrap();
    advance(secs(30)).await;
    let newer = m.publish(Event::message("newer")).unwrap().id.unwrap();
    advance(secs(31)).await;

    // `old` is 61 s old: forgotten. A client that missed it is told, then gets what is left.
    let (h, mut body) = m
        .connect(Connect::new().last_event_id(last_id(&before)))
        .unwrap();
    assert!(matches!(h.replay(), Replay::Gap(_)), "{:?}", h.replay());
    let events = drain_now(&mut body).events();
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["gap", "message"]);
    assert_eq!(events[1].data, "newer");
    assert_eq!(m.history_len(), 1);

    // A client that saw `old` missed only `newer`, which is still held.
    let (h1, mut body1) = m
        .connect(Connect::new().last_event_id(last_id(&old)))
        .unwrap();
    assert_eq!(h1.replay(), Replay::Resumed(1));
    assert_eq!(drain_now(&mut body1).data(), ["newer"]);

    // `newer` is 31 s old: still known.
    let (h2, mut body2) = m
        .connect(Connect::new().last_event_id(last_id(&newer)))
        .unwrap();
    assert_eq!(h2.replay(), Replay::Resumed(0));
    assert_eq!(poll_now(&mut body2), Next::Pending);

    advance(secs(30)).await;
    let (h3, mut body3) = m
        .connect(Connect::new().last_event_id(last_id(&old)))
        .unwrap();
    assert!(matches!(h3.replay(), Replay::Gap(_)), "{:?}", h3.replay());
    let events = drain_now(&mut body3).events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "gap");
    assert_eq!(m.history_len(), 0);

    drop((body, body1, body2, body3));
    assert_empty(&m);
}

#[tokio::test]
async fn replay_keeps_to_the_connection_topics() {
    let m: ConnectionManager = ConnectionManager::new();
    let start = m.publish(Event::message("all-0")).unwrap().id.unwrap();
    m.publish_topic("a", Event::message("a-1")).unwrap();
    let b_id = m
        .publish_topic("b", Event::message("b-1"))
        .unwrap()
        .id
        .unwrap();
    m.publish_topic("a", Event::message("a-2")).unwrap();
    m.publish(Event::message("all-3")).unwrap();

    let cases: [(Connect, Replay, &[&str]); 5] = [
        (
            Connect::new().topic("a").last_event_id(last_id(&start)),
            Replay::Resumed(3),
            &["a-1", "a-2", "all-3"],
        ),
        (
            Connect::new().topic("b").last_event_id(last_id(&start)),
            Replay::Resumed(2),
            &["b-1", "all-3"],
        ),
        (
            Connect::new()
                .topic("a")
                .topic("b")
                .last_event_id(last_id(&start)),
            Replay::Resumed(4),
            &["a-1", "b-1", "a-2", "all-3"],
        ),
        (
            Connect::new().last_event_id(last_id(&start)),
            Replay::Resumed(1),
            &["all-3"],
        ),
        // The id of an event on another topic still marks the position.
        (
            Connect::new().topic("a").last_event_id(last_id(&b_id)),
            Replay::Resumed(2),
            &["a-2", "all-3"],
        ),
    ];
    for (options, replay, expected) in cases {
        let (h, mut body) = m.connect(options).unwrap();
        assert_eq!(h.replay(), replay);
        assert_eq!(drain_now(&mut body).data(), expected);
    }
    assert_empty(&m);
}

#[tokio::test]
async fn replay_off_ignores_the_last_event_id() {
    let m: ConnectionManager = ConnectionManager::builder().replay(0, None).build();
    let id = m.publish(Event::message("x")).unwrap().id.unwrap();
    assert_eq!(m.history_len(), 0);
    let (h, mut body) = m
        .connect(Connect::new().last_event_id(last_id(&id)))
        .unwrap();
    assert_eq!(h.replay(), Replay::Fresh);
    assert_eq!(poll_now(&mut body), Next::Pending);
    drop(body);

    // Automatic ids can be turned off: events go out as they are.
    let m2: ConnectionManager = ConnectionManager::builder().auto_ids(false).build();
    let (_h, mut body) = m2.connect(Connect::new()).unwrap();
    assert_eq!(m2.publish(Event::message("plain")).unwrap().id, None);
    assert_eq!(&frame(&mut body)[..], b"data: plain\n\n");
    drop(body);
    assert_empty(&m);
    assert_empty(&m2);
}

/// A publisher publishes 5,000 events without pause while clients read a little, drop their
/// body, and reconnect with the last id they saw. Each client must see every event exactly
/// once, in order, across all its connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_clients_see_every_event_exactly_once() {
    const EVENTS: usize = 5_000;
    const CLIENTS: usize = 4;
    let m: ConnectionManager = ConnectionManager::builder()
        .replay(2 * EVENTS, None)
        .queue_capacity(64)
        .build();

    // Everyone is connected before the first event, so everyone must see all of them. The
    // `origin` event gives each client an id to resume from even if it is disconnected (as a
    // slow consumer) before it reads anything.
    let firsts: Vec<_> = (0..CLIENTS)
        .map(|_| m.connect(Connect::new()).unwrap())
        .collect();
    let origin: u64 = m
        .publish(Event::message("origin"))
        .unwrap()
        .id
        .unwrap()
        .parse()
        .unwrap();
    let clients: Vec<_> = firsts
        .into_iter()
        .enumerate()
        .map(|(n, (handle, body))| {
            let m = m.clone();
            tokio::spawn(async move {
                let mut received: Vec<(u64, usize)> = Vec::new();
                let mut last_seen = origin;
                let mut sessions = 1usize;
                let mut slow_disconnects = 0usize;
                let (mut handle, mut body) = (handle, body);
                'sessions: loop {
                    let frames = 1 + (sessions * 7 + n) % 5;
                    for _ in 0..frames {
                        let frame = match timeout(secs(20), body.frame()).await {
                            Err(_) => panic!("client {n} waited 20 s for a frame"),
                            // Disconnected as a slow consumer (the body aborts), or ended:
                            // reconnect and catch up.
                            Ok(None) | Ok(Some(Err(_))) => {
                                slow_disconnects += 1;
                                break;
                            }
                            Ok(Some(Ok(frame))) => frame.into_data().unwrap(),
                        };
                        for event in decode(&frame).events {
                            let id = event.last_event_id.parse().expect("numeric auto id");
                            last_seen = id;
                            if event.data == "origin" {
                                continue;
                            }
                            let data = event.data.parse().expect("numeric data");
                            received.push((id, data));
                            if data == EVENTS - 1 {
                                break 'sessions;
                            }
                        }
                    }
                    drop(body);
                    assert!(handle.is_closed());
                    let options = Connect::new().last_event_id(last_id(&last_seen.to_string()));
                    (handle, body) = m.connect(options).expect("reconnect");
                    assert!(
                        matches!(handle.replay(), Replay::Resumed(_)),
                        "{:?}",
                        handle.replay()
                    );
                    sessions += 1;
                }
                drop(body);
                (received, sessions, slow_disconnects)
            })
        })
        .collect();

    let publisher = {
        let m = m.clone();
        tokio::spawn(async move {
            for i in 0..EVENTS {
                m.publish(Event::message(i.to_string())).unwrap();
                if i % 8 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    timeout(secs(30), publisher).await.unwrap().unwrap();
    for (n, client) in clients.into_iter().enumerate() {
        let (received, sessions, slow) = timeout(secs(30), client).await.unwrap().unwrap();
        eprintln!("client {n}: {sessions} connections, {slow} ended as slow consumers");
        assert!(sessions > 1, "client {n} never reconnected");
        assert_eq!(received.first().map(|r| r.0), Some(origin + 1));
        let data: Vec<usize> = received.iter().map(|(_, d)| *d).collect();
        let expected: Vec<usize> = (0..EVENTS).collect();
        if data != expected {
            let first_bad = data
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(data.len().min(expected.len()));
            panic!(
                "client {n}: {} events, first difference at {first_bad}: {:?}",
                data.len(),
                &data[first_bad.saturating_sub(2)..(first_bad + 3).min(data.len())]
            );
        }
        for pair in received.windows(2) {
            assert_eq!(pair[1].0, pair[0].0 + 1, "client {n}: ids not consecutive");
        }
    }
    assert_empty(&m);
}

// ---------------------------------------------------------------------------------------------
// Counters, and every close reason once.

#[tokio::test(start_paused = true)]
async fn stats_after_a_scripted_sequence_with_every_close_reason() {
    let (m, closes) = recording(ConnectionManager::builder().queue_capacity(2));
    let connect = |c: Connect| m.connect(c).unwrap();
    let (a, mut a_body) = connect(Connect::new().topic("t"));
    let (b, mut b_body) = connect(Connect::new().topic("t"));
    let (c, c_body) = connect(Connect::new());
    let (d, mut d_body) = connect(Connect::new());
    let (f, mut f_body) = connect(Connect::new());
    let (g, mut g_body) = connect(Connect::new().key("slow"));
    let (h, mut h_body) = connect(Connect::new());
    let layer = SseLayer::new().disable_heartbeat().max_lifetime(secs(30));
    let mut e_body = open_layered(&m, layer).await;

    let stats = m.stats();
    assert_eq!((stats.open, stats.connected), (8, 8));
    assert_eq!(stats.open_per_topic, HashMap::from([("t".to_owned(), 2)]));
    assert_eq!((stats.events, stats.deliveries, stats.dropped), (0, 0, 0));
    assert!(stats.closed.is_empty());

    // 1 event, 8 deliveries; everyone but g reads it.
    assert_eq!(m.publish(Event::message("e1")).unwrap().delivered, 8);
    for body in [
        &mut a_body,
        &mut b_body,
        &mut d_body,
        &mut f_body,
        &mut h_body,
    ] {
        assert_eq!(drain_now(body).data(), ["e1"]);
    }
    assert!(matches!(next(&mut e_body).await, Next::Data(_)));
    // 2 events, 10 deliveries.
    assert_eq!(
        m.publish_topic("t", Event::message("e2"))
            .unwrap()
            .delivered,
        2
    );
    // 3 events, 11 deliveries: g's queue is full (2).
    g.send(Event::message("g")).unwrap();
    // Refused, so not an event: 3 events, 11 deliveries, 2 dropped: SlowConsumer.
    assert_eq!(g.send(Event::message("g2")), Err(SendError::SlowConsumer));
    let g_end = drain_now(&mut g_body);
    assert!(g_end.ended && g_end.aborted);
    // Completed and CompletedWithError deliver what they hold.
    assert!(a.complete_with(Event::message("done")));
    assert!(b.complete_with_error(Event::message("failed")));
    assert_eq!(drain_now(&mut a_body).data(), ["e2", "done"]);
    assert_eq!(drain_now(&mut b_body).data(), ["e2", "failed"]);
    // 4 events, 12 deliveries, then Evicted drops it: 3 dropped.
    m.send_to(f.id(), Event::message("f")).unwrap();
    assert!(f.evict());
    assert!(drain_now(&mut f_body).ended);
    // ClientGone, with e1 still queued: 4 dropped.
    drop(c_body);

    // t=10: 5 events, 15 deliveries (d, e, h); d leaves it unread: IdleTimeout, 5 dropped.
    advance(secs(10)).await;
    assert_eq!(m.publish(Event::message("e3")).unwrap().delivered, 3);
    assert_eq!(drain_now(&mut h_body).data(), ["e3"]);
    assert!(matches!(next(&mut e_body).await, Next::Data(_)));
    assert_eq!(m.evict_idle(secs(5)), 1);
    assert!(d.is_closed());
    assert!(drain_now(&mut d_body).ended);

    // t=31: the layer ends e's stream: Lifetime.
    advance(secs(21)).await;
    assert_eq!(next(&mut e_body).await, Next::End);
    drop(e_body);

    // 6 events, 16 deliveries; Shutdown delivers it and the farewell.
    assert_eq!(m.publish(Event::message("e4")).unwrap().delivered, 1);
    assert_eq!(m.shutdown_with(bye()), 1);
    let got = drain_now(&mut h_body);
    assert!(got.ended);
    assert_eq!(got.data(), ["e4", "later"]);

    drop((a_body, b_body, d_body, f_body, g_body, h_body));
    let stats = m.stats();
    assert_eq!(stats.open, 0);
    assert!(stats.open_per_topic.is_empty());
    assert_eq!(stats.connected, 8);
    assert_eq!(stats.events, 6);
    assert_eq!(stats.deliveries, 16);
    assert_eq!(stats.dropped, 5);
    assert_eq!(stats.lagged, 0);
    let every: HashMap<CloseReason, u64> = [
        CloseReason::Completed,
        CloseReason::CompletedWithError,
        CloseReason::ClientGone,
        CloseReason::IdleTimeout,
        CloseReason::Lifetime,
        CloseReason::Evicted,
        CloseReason::SlowConsumer,
        CloseReason::Shutdown,
    ]
    .into_iter()
    .map(|r| (r, 1))
    .collect();
    assert_eq!(stats.closed, every);

    // The hook saw each connection close exactly once, with the right reason.
    let recorded = closes_of(&closes);
    assert_eq!(recorded.len(), 8);
    let by_id: HashMap<ConnectionId, CloseReason> = recorded.iter().copied().collect();
    assert_eq!(by_id.len(), 8, "a connection closed twice: {recorded:?}");
    for (handle, reason) in [
        (&a, CloseReason::Completed),
        (&b, CloseReason::CompletedWithError),
        (&c, CloseReason::ClientGone),
        (&d, CloseReason::IdleTimeout),
        (&f, CloseReason::Evicted),
        (&g, CloseReason::SlowConsumer),
        (&h, CloseReason::Shutdown),
    ] {
        assert_eq!(by_id[&handle.id()], reason);
    }
    assert_eq!(
        recorded
            .iter()
            .filter(|(_, r)| *r == CloseReason::Lifetime)
            .count(),
        1
    );
    assert_empty(&m);
}

#[tokio::test]
async fn closed_connections_are_freed_not_just_unregistered() {
    // Each connection's metadata holds a clone of `alive`: when every `Connection` is freed,
    // the count is back to one.
    let alive = Arc::new(());
    let m: ConnectionManager<Arc<()>> = ManagerBuilder::new().queue_capacity(4).build();
    let mut kept = Vec::new();
    for i in 0..200 {
        let (h, mut body) = m
            .connect(Connect::with_meta(alive.clone()).key(format!("k{}", i % 7)))
            .unwrap();
        m.publish(Event::message("x")).unwrap();
        match i % 5 {
            0 => drop(body),
            1 => {
                h.evict();
                drop(body);
            }
            2 => {
                h.complete();
                drain_now(&mut body);
                drop(body);
            }
            3 => kept.push(body),
            _ => {
                // Never read: a slow consumer, eventually.
                kept.push(body);
            }
        }
    }
    let open_k3 = m.handles_for_key("k3").len();
    assert!(open_k3 > 0);
    assert_eq!(m.evict_key("k3"), Ok(open_k3));
    assert!(m.handles_for_key("k3").is_empty());
    m.shutdown();
    drop(kept);
    assert_empty(&m);
    assert_eq!(
        Arc::strong_count(&alive),
        1,
        "a Connection outlived its close"
    );
    assert_eq!(m.stats().connected, 200);
}

/// A connection completing when its client leaves still holds queued events. They will never
/// be delivered: they must be freed at once (a handle may live on in the application) and
/// counted as dropped, like the queue of a connection that is evicted or goes away.
#[tokio::test]
async fn a_completing_connection_whose_client_left_frees_and_counts_its_queue() {
    let (m, closes) = recording(ConnectionManager::builder());
    let (h, body) = m.connect(Connect::new()).unwrap();
    for i in 0..3 {
        h.send(Event::message(i.to_string())).unwrap();
    }
    assert!(h.complete_with(bye()));
    drop(body);
    assert_eq!(closes_of(&closes), [(h.id(), CloseReason::Completed)]);
    assert_empty(&m);
    assert_eq!(
        h.queued(),
        0,
        "undeliverable events kept alive by the handle"
    );
    assert_eq!(m.stats().dropped, 3);
}

/// `shutdown` must leave no stream open, even when a `connect` runs at the same moment on
/// another thread: a connection registered after `shutdown` looked would never end, and
/// would keep the server's graceful shutdown waiting.
#[test]
fn connect_racing_shutdown_never_leaves_a_stream_open() {
    use std::sync::Barrier;

    let mut leaked = 0;
    for _ in 0..200 {
        let m: ConnectionManager = ConnectionManager::new();
        let barrier = Arc::new(Barrier::new(2));
        let connector = {
            let (m, barrier) = (m.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut bodies = Vec::new();
                while bodies.len() < 100_000 {
                    match m.connect(Connect::new()) {
                        Ok((_h, body)) => bodies.push(body),
                        Err(e) => {
                            assert_eq!(e, ConnectError::ShutDown);
                            break;
                        }
                    }
                }
                bodies
            })
        };
        barrier.wait();
        std::thread::yield_now();
        m.shutdown();
        let mut bodies = connector.join().unwrap();
        // Every stream that got through must be ending: pending means open forever.
        let open = bodies
            .iter_mut()
            .map(|b| drain_now(b).ended)
            .filter(|ended| !ended)
            .count();
        if open > 0 || !m.is_empty() {
            leaked += 1;
        }
        drop(bodies);
        assert_empty(&m);
    }
    assert_eq!(
        leaked, 0,
        "of 200 runs, {leaked} left a stream open after shutdown"
    );
}

// ---------------------------------------------------------------------------------------------
// Published events travel through the shared ring, the rest through each connection's queue:
// one connection still sees one order.

#[tokio::test]
async fn personal_sends_and_publishes_keep_their_order() {
    let m = ConnectionManager::new();
    let (h, mut body) = m.connect(Connect::new().key("k").topic("t")).unwrap();
    h.send(Event::message("a")).unwrap();
    m.publish(Event::message("b")).unwrap();
    m.send_to_key("k", Event::message("c")).unwrap();
    m.publish(Event::message("d")).unwrap();
    m.publish_topic("t", Event::message("e")).unwrap();
    m.publish(Event::message("f")).unwrap();
    let got = drain_now(&mut body);
    assert_eq!(got.data(), ["a", "b", "c", "d", "e", "f"]);
    assert_eq!(got.frames.len(), 1, "one frame for the whole backlog");
    drop(body);
    assert_empty(&m);
}

#[tokio::test]
async fn completion_delivers_what_was_published_before_it_and_nothing_after() {
    let m = ConnectionManager::new();
    let (h, mut body) = m.connect(Connect::new()).unwrap();
    let (_other, mut other_body) = m.connect(Connect::new()).unwrap();
    m.publish(Event::message("before")).unwrap();
    assert!(h.complete_with(Event::message("last")));
    m.publish(Event::message("after")).unwrap();
    let got = drain_now(&mut body);
    assert!(got.ended);
    assert_eq!(got.data(), ["before", "last"]);
    assert_eq!(drain_now(&mut other_body).data(), ["before", "after"]);
    drop((body, other_body));
    assert_empty(&m);
}

#[tokio::test]
async fn evicting_counts_unsent_published_events_as_dropped() {
    let m = ConnectionManager::new();
    let (h, mut body) = m.connect(Connect::new()).unwrap();
    for i in 0..5 {
        m.publish(Event::message(i.to_string())).unwrap();
    }
    assert_eq!(h.queued(), 5);
    assert!(h.evict());
    assert_eq!(h.queued(), 0);
    assert_eq!(m.stats().dropped, 5);
    assert!(drain_now(&mut body).ended);
}

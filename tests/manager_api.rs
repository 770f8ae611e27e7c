//! The manager's API as a whole: user code (filters, hooks, wakers) may call back into it,
//! every operation exists by id, key, topic and filter, a connection's end can be awaited,
//! and refusals convert into responses.
//!
//! Tests that could deadlock run on their own thread with a deadline, so a regression fails
//! instead of hanging the suite.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http_body::Body;
use http_body_util::BodyExt;
use tower_sse::manager::{
    CloseReason, Completion, Connect, ConnectError, ConnectionBody, ConnectionManager, SendError,
};
use tower_sse::Event;

/// Runs `f` on a thread and fails if it does not return within five seconds.
fn within_deadline<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(value) => value,
        // The thread panicked: report its panic, not a deadlock.
        Err(mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the thread sent nothing and did not panic"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("deadlock: the call did not return within 5 s")
        }
    }
}

fn data(body: &mut ConnectionBody) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(Some(Ok(frame))) = body.frame().now_or_never() {
        let bytes: Bytes = frame.into_data().expect("data frame");
        let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
        out.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .map(str::to_owned),
        );
    }
    out
}

#[test]
fn filters_may_call_back_into_the_manager() {
    within_deadline(|| {
        let m = ConnectionManager::new();
        let conns: Vec<_> = (0..4)
            .map(|_| m.connect(Connect::new().key("k")).unwrap())
            .collect();

        // Reads, sends and even registrations from inside a filter.
        let inner = m.clone();
        let late = Mutex::new(Vec::new());
        let d = m
            .send_filter(
                |_| {
                    let _ = inner.len();
                    let _ = inner.stats();
                    let conn = inner.connect(Connect::new().key("late"));
                    let ok = conn.is_ok();
                    late.lock().unwrap().extend(conn);
                    ok
                },
                Event::message("x"),
            )
            .unwrap();
        assert_eq!(
            d.delivered, 4,
            "the snapshot is taken before the filter runs"
        );
        assert_eq!(m.len(), 8);

        // A filter that evicts the very connection it is asked about.
        let inner = m.clone();
        let evicted = m.evict_filter(|c| {
            if c.key() == Some("late") {
                inner.handle(c.id()).map(|h| h.evict());
            }
            false
        });
        assert_eq!(evicted, Ok(0));
        assert_eq!(m.len(), 4);

        // Completing from a filter that sends to a key meanwhile.
        let inner = m.clone();
        let completed = m.complete_filter(
            |c| inner.send_to_key("k", Event::message("y")).is_ok() && c.key() == Some("k"),
            Completion::new(),
        );
        assert_eq!(completed, Ok(4));
        drop((conns, late));
        assert!(m.is_empty());
    });
}

#[test]
fn hooks_may_call_back_into_the_manager() {
    within_deadline(|| {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let slot: Arc<Mutex<Option<ConnectionManager>>> = Arc::default();
        let (s1, s2, s3, s4) = (slot.clone(), slot.clone(), slot.clone(), seen.clone());
        let m = ConnectionManager::builder()
            .on_connect(move |_| {
                if let Some(m) = &*s1.lock().unwrap() {
                    let _ = m.publish(Event::message("someone came"));
                }
            })
            .on_subscribe(move |c, topic| {
                if let Some(m) = &*s2.lock().unwrap() {
                    let _ = m.send_to(c.id(), Event::message(format!("welcome to {topic}")));
                }
            })
            .on_close(move |_, reason| {
                if let Some(m) = &*s3.lock().unwrap() {
                    s4.lock().unwrap().push((reason, m.len()));
                    let _ = m.publish(Event::message("someone left"));
                }
            })
            .build();
        *slot.lock().unwrap() = Some(m.clone());
        let (a, mut a_body) = m.connect(Connect::new()).unwrap();
        let (b, b_body) = m.connect(Connect::new()).unwrap();
        a.subscribe("room").unwrap();
        assert!(b.evict());
        drop(b_body);
        // a's own connect and b's, a's subscription, b's close.
        assert_eq!(
            data(&mut a_body),
            [
                "someone came",
                "someone came",
                "welcome to room",
                "someone left"
            ]
        );
        drop(a_body);
        assert_eq!(
            *seen.lock().unwrap(),
            [(CloseReason::Evicted, 1), (CloseReason::ClientGone, 0)]
        );
        *slot.lock().unwrap() = None;
    });
}

/// A waker that publishes, connects and reads the stats when it is woken: if the manager
/// woke tasks while holding one of its locks, this would deadlock.
struct Reentrant {
    manager: ConnectionManager,
    woken: AtomicUsize,
}

impl Wake for Reentrant {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.woken.fetch_add(1, Ordering::SeqCst) < 8 {
            let _ = self
                .manager
                .publish_topic("t", Event::message("from a waker"));
            let _ = self.manager.connect(Connect::new().topic("t"));
            let _ = self.manager.stats();
        }
    }
}

#[test]
fn wakers_run_with_no_lock_of_the_manager_held() {
    within_deadline(|| {
        let m = ConnectionManager::new();
        let waker = Arc::new(Reentrant {
            manager: m.clone(),
            woken: AtomicUsize::new(0),
        });
        let (_t, mut topic_body) = m.connect(Connect::new().topic("t")).unwrap();
        let (h, mut own_body) = m.connect(Connect::new().key("k")).unwrap();
        let w = Waker::from(waker.clone());
        let mut cx = Context::from_waker(&w);
        // Both bodies park with the re-entrant waker.
        assert!(std::pin::Pin::new(&mut topic_body)
            .poll_frame(&mut cx)
            .is_pending());
        assert!(std::pin::Pin::new(&mut own_body)
            .poll_frame(&mut cx)
            .is_pending());
        // A topic publish wakes the first (after the log's lock), a personal send the second
        // (after the connection's lock); each wake publishes and connects again.
        m.publish_topic("t", Event::message("1")).unwrap();
        h.send(Event::message("2")).unwrap();
        assert_eq!(waker.woken.load(Ordering::SeqCst), 2);
        assert_eq!(data(&mut topic_body), ["1", "from a waker", "from a waker"]);
        assert!(h.complete());
    });
}

#[tokio::test]
async fn every_operation_by_id_key_topic_and_filter() {
    let m = ConnectionManager::new();
    let (a, mut a_body) = m.connect(Connect::new().key("u").topic("t")).unwrap();
    let (b, _b_body) = m.connect(Connect::new().key("u")).unwrap();
    let (c, _c_body) = m.connect(Connect::new().topic("t")).unwrap();
    let (d, _d_body) = m.connect(Connect::new()).unwrap();

    let ids = |hs: Vec<tower_sse::ConnectionHandle>| {
        let mut v: Vec<_> = hs.iter().map(|h| h.id()).collect();
        v.sort();
        v
    };
    assert_eq!(m.handle(a.id()).map(|h| h.id()), Some(a.id()));
    assert_eq!(ids(m.handles_for_key("u")), [a.id(), b.id()]);
    assert_eq!(ids(m.handles_for_topic("t")), [a.id(), c.id()]);
    assert_eq!(
        ids(m.handles_filter(|x| x.key().is_none())),
        [c.id(), d.id()]
    );

    // Complete by id with a last event; by topic; evict by id and by key.
    assert_eq!(m.complete(a.id(), Event::message("bye a")), Ok(true));
    assert_eq!(
        m.complete(a.id(), Completion::new()),
        Ok(false),
        "only once"
    );
    assert_eq!(data(&mut a_body), ["bye a"]);
    assert_eq!(
        m.complete_topic("t", Completion::new()),
        Ok(1),
        "c; a is closed"
    );
    assert_eq!(m.evict(d.id()), Ok(true));
    assert_eq!(m.evict(d.id()), Ok(false));
    assert_eq!(m.evict_key("u"), Ok(1), "b");
    assert_eq!(m.evict_topic("t"), Ok(0));
    for (h, reason) in [
        (&a, CloseReason::Completed),
        (&b, CloseReason::Evicted),
        (&c, CloseReason::Completed),
        (&d, CloseReason::Evicted),
    ] {
        assert_eq!(h.close_reason(), Some(reason));
        assert_eq!(h.send(Event::message("x")), Err(SendError::Closed(reason)));
    }
    assert!(m.is_empty());
    // The old shape still reads naturally.
    assert_eq!(m.complete_key("u", None), Ok(0));
    assert_eq!(m.complete_key("u", Some(Event::message("x"))), Ok(0));
}

#[tokio::test]
async fn a_handle_can_await_its_connection_end() {
    let m = ConnectionManager::new();
    let (a, a_body) = m.connect(Connect::new()).unwrap();
    let (b, b_body) = m.connect(Connect::new()).unwrap();
    let (c, _c_body) = m.connect(Connect::new()).unwrap();
    let waits = [a.closed(), b.closed(), c.closed()].map(tokio::spawn);
    tokio::task::yield_now().await;
    drop(a_body);
    assert!(b.complete_with_error(Event::message("failed")));
    drop(b_body);
    assert!(c.evict());
    let mut got = Vec::new();
    for w in waits {
        got.push(
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(
        got,
        [
            CloseReason::ClientGone,
            CloseReason::CompletedWithError,
            CloseReason::Evicted
        ]
    );
    // After the close, it resolves at once.
    assert_eq!(c.closed().now_or_never(), Some(CloseReason::Evicted));
}

#[tokio::test]
async fn too_many_topics_is_refused_with_a_typed_error() {
    let m = ConnectionManager::builder().max_topics(2).build();
    assert_eq!(
        m.connect(Connect::new().topics(["a", "b", "c"])).err(),
        Some(ConnectError::TooManyTopics { limit: 2 })
    );
    let (h, _body) = m.connect(Connect::new().topics(["a", "b"])).unwrap();
    assert_eq!(
        h.subscribe("c"),
        Err(tower_sse::SubscribeError::TooManyTopics { limit: 2 })
    );
    assert_eq!(h.subscribe("a"), Ok(false), "already subscribed");
    assert!(h.unsubscribe("a"));
    assert_eq!(h.subscribe("c"), Ok(true));
    let mut topics: Vec<String> = h.topics().iter().map(|t| t.to_string()).collect();
    topics.sort();
    assert_eq!(topics, ["b", "c"]);
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn refusals_and_bodies_are_axum_responses() {
    use axum::response::IntoResponse;

    let full = ConnectError::TooManyConnections { limit: 1 }.into_response();
    assert_eq!(full.status(), 503);
    assert_eq!(full.headers()["retry-after"], "1");
    let text = full.into_body().collect().await.unwrap().to_bytes();
    assert!(std::str::from_utf8(&text)
        .unwrap()
        .contains("1 connections"));
    assert_eq!(ConnectError::ShutDown.into_response().status(), 503);
    assert_eq!(
        ConnectError::TooManyTopics { limit: 1 }
            .into_response()
            .status(),
        400
    );

    let m = ConnectionManager::new();
    let (h, body) = m.connect(Connect::new()).unwrap();
    let response = body.into_response();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    h.complete_with(Event::message("done"));
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&bytes[..], b"data: done\n\n");
}

/// The layer and the manager both wired to one shutdown token: the layer owns how a stream
/// ends on the wire, so every client gets exactly one farewell, the layer's, after what was
/// published; the manager refuses new connections and records `Shutdown`.
#[tokio::test]
async fn layer_and_manager_on_one_shutdown_token_send_one_farewell() {
    use std::convert::Infallible;
    use tower::{service_fn, Layer, ServiceExt};
    use tower_sse::{CancellationToken, SseContext, SseLayer};

    let closes = Arc::new(Mutex::new(Vec::new()));
    let seen = closes.clone();
    let m = ConnectionManager::builder()
        .on_close(move |_, reason| seen.lock().unwrap().push(reason))
        .build();
    let token = CancellationToken::new();
    let watcher = tokio::spawn(m.clone().shutdown_on(token.clone()));
    let farewell = Event::builder().event("bye").data("layer").build().unwrap();
    let layer = SseLayer::new()
        .shutdown_token(token.clone())
        .farewell(farewell.clone());
    let manager = m.clone();
    let svc = layer.layer(service_fn(move |req: http::Request<()>| {
        let m = manager.clone();
        async move {
            let ctx = req.extensions().get::<SseContext>().cloned().unwrap();
            let (_h, body) = m.connect(Connect::new().context(&ctx)).unwrap();
            Ok::<_, Infallible>(body.into_response())
        }
    }));
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let res = svc.clone().oneshot(http::Request::new(())).await.unwrap();
        bodies.push(res.into_body());
    }
    // Written before the token fires, as a server writes what is ready. (What the layer has
    // not written when it fires is not: published events are replayed on reconnect.)
    m.publish(Event::message("before")).unwrap();
    let mut written = Vec::new();
    for body in &mut bodies {
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        written.push(String::from_utf8(frame.to_vec()).unwrap());
    }
    token.cancel();
    watcher.await.unwrap();
    assert!(m.is_shutting_down());
    assert_eq!(
        m.connect(Connect::new()).err(),
        Some(ConnectError::ShutDown)
    );
    for (body, before) in bodies.into_iter().zip(written) {
        let bytes = tokio::time::timeout(Duration::from_secs(5), body.collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        let wire = before + std::str::from_utf8(&bytes).unwrap();
        assert_eq!(wire.matches("event: bye").count(), 1, "{wire:?}");
        assert!(wire.ends_with("event: bye\ndata: layer\n\n"), "{wire:?}");
        assert!(wire.contains("data: before\n\n"), "{wire:?}");
    }
    assert_eq!(*closes.lock().unwrap(), [CloseReason::Shutdown; 3]);
}

/// A malformed `Last-Event-ID` on an event-stream request is never refused (a browser's
/// `EventSource` would never reconnect after a 4xx): the client gets 200, the gap event,
/// then live events.
#[tokio::test]
async fn an_invalid_last_event_id_gets_200_and_the_gap_event() {
    use std::convert::Infallible;
    use tower::{service_fn, Layer, ServiceExt};
    use tower_sse::{Replay, SseContext, SseLayer};

    let m = ConnectionManager::new();
    m.publish(Event::message("history")).unwrap();
    let replays = Arc::new(Mutex::new(Vec::new()));
    let manager = m.clone();
    let seen = replays.clone();
    let svc = SseLayer::new().layer(service_fn(move |req: http::Request<()>| {
        let m = manager.clone();
        let seen = seen.clone();
        async move {
            let ctx = req.extensions().get::<SseContext>().cloned().unwrap();
            assert!(ctx.last_event_id().is_err(), "the layer saw it invalid");
            let (h, body) = m.connect(Connect::new().context(&ctx)).unwrap();
            seen.lock().unwrap().push(h.replay());
            h.complete_with(Event::message("live"));
            Ok::<_, Infallible>(body.into_response())
        }
    }));
    let long = "9".repeat(300);
    // Too long, a control character (a tab: the only one a header may carry), not UTF-8.
    let bad: [&[u8]; 3] = [long.as_bytes(), b"1\t2", b"\xff"];
    for value in bad {
        let req = http::Request::builder()
            .header(
                "last-event-id",
                http::HeaderValue::from_bytes(value).unwrap(),
            )
            .header("accept", "text/event-stream")
            .body(())
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"event: gap\ndata: \n\ndata: live\n\n");
    }
    assert_eq!(*replays.lock().unwrap(), [Replay::Gap(0); 3]);
}

/// A managed stream finished for good: its last event carries the layer's finished id, and
/// a reconnect with it is told to stop (`204 No Content`), without the handler running.
#[tokio::test]
async fn a_finished_stream_is_not_streamed_again() {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::{service_fn, Layer, ServiceExt};
    use tower_sse::{SseContext, SseLayer};

    let m = ConnectionManager::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let (manager, counted) = (m.clone(), calls.clone());
    let svc = SseLayer::new().layer(service_fn(move |req: http::Request<()>| {
        let m = manager.clone();
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            let ctx = req.extensions().get::<SseContext>().cloned().unwrap();
            let (h, body) = m.connect(Connect::new().context(&ctx)).unwrap();
            h.send(Event::message("the answer")).unwrap();
            assert!(h.finish(Event::builder().event("end").data("").build().unwrap()));
            Ok::<_, Infallible>(body.into_response())
        }
    }));
    let res = svc.clone().oneshot(http::Request::new(())).await.unwrap();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let wire = std::str::from_utf8(&bytes).unwrap();
    assert_eq!(
        wire,
        "data: the answer\n\nid: tower-sse:finished:\nevent: end\ndata: \n\n"
    );
    let again = http::Request::builder()
        .header("last-event-id", "tower-sse:finished:")
        .header("accept", "text/event-stream")
        .body(())
        .unwrap();
    let res = svc.oneshot(again).await.unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the handler did not run again"
    );
}

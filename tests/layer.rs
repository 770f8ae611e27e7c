//! `SseLayer` end to end through tower: headers, pass-through, heartbeats, idle timeout,
//! lifetime, cancellation, initial event, `SseContext` and `Last-Event-ID`.
//!
//! Timed tests run on tokio's paused clock and move it only with `tokio::time::advance`. The
//! body is polled with `now_or_never` after a few `yield_now`s: a yield lets the runtime run
//! its timer driver (firing timers that are due) without letting the paused clock jump ahead,
//! so "nothing yet" and "now" are checked at exact instants.

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::whatwg::{decode, Decoded};
use futures_util::FutureExt;
use http::header::{CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;
use tokio::time::advance;
use tokio_util::sync::CancellationToken;
use tower::{service_fn, Layer, ServiceExt};
use tower_sse::layer::ResponseBody;
use tower_sse::{Event, InvalidLastEventId, SseContext, SseLayer, KEEP_ALIVE};

// ---------------------------------------------------------------------------------------------
// A body the test controls, frame by frame.

/// Yields whatever the test sends through its [`Feed`]; pending while nothing is queued;
/// ends when the feed is dropped.
#[derive(Debug)]
struct TestBody {
    rx: mpsc::UnboundedReceiver<Frame<Bytes>>,
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

#[derive(Debug, Clone)]
struct Feed(mpsc::UnboundedSender<Frame<Bytes>>);

impl Feed {
    fn send(&self, data: &'static str) {
        self.0
            .send(Frame::data(Bytes::from_static(data.as_bytes())))
            .expect("body alive");
    }

    fn trailers(&self, trailers: HeaderMap) {
        self.0.send(Frame::trailers(trailers)).expect("body alive");
    }
}

fn test_body() -> (Feed, TestBody) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Feed(tx), TestBody { rx })
}

/// A response with `Content-Type: text/event-stream` and the given body.
fn event_stream<B>(body: B) -> Response<B> {
    Response::builder()
        .header(CONTENT_TYPE, "text/event-stream")
        .body(body)
        .unwrap()
}

/// Runs `res` through `layer` as the answer to `req`; returns the layered response and the
/// `SseContext` the handler saw.
async fn serve<B>(
    layer: &SseLayer,
    req: Request<()>,
    res: Response<B>,
) -> (Response<ResponseBody<B>>, SseContext)
where
    B: Body,
{
    let res = Arc::new(Mutex::new(Some(res)));
    let seen = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    let svc = layer.layer(service_fn(move |req: Request<()>| {
        let ctx = req.extensions().get::<SseContext>().cloned();
        *seen2.lock().unwrap() = ctx;
        let res = res.lock().unwrap().take().expect("called once");
        async move { Ok::<_, Infallible>(res) }
    }));
    let res = svc.oneshot(req).await.unwrap();
    let ctx = seen
        .lock()
        .unwrap()
        .take()
        .expect("SseLayer inserts SseContext");
    (res, ctx)
}

/// An event stream through `layer`, fed by the returned [`Feed`].
async fn open(layer: &SseLayer) -> (Feed, ResponseBody<TestBody>, SseContext) {
    let (feed, body) = test_body();
    let (res, ctx) = serve(layer, Request::new(()), event_stream(body)).await;
    assert!(res.body().is_event_stream());
    (feed, res.into_body(), ctx)
}

// ---------------------------------------------------------------------------------------------
// Polling at an exact instant.

/// What the body has for us right now.
#[derive(Debug, PartialEq)]
enum Next {
    Pending,
    Data(Bytes),
    Trailers(HeaderMap),
    End,
}

fn data(bytes: &'static [u8]) -> Next {
    Next::Data(Bytes::from_static(bytes))
}

/// Lets the runtime fire due timers and wake tasks, without moving the paused clock.
async fn settle() {
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
}

/// Polls `body` at the current instant. A timer the poll itself armed for a deadline already
/// past fires only once the driver runs, so poll again after settling before calling it
/// pending.
async fn next<B>(body: &mut B) -> Next
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    for _ in 0..4 {
        if let Some(frame) = body.frame().now_or_never() {
            return match frame {
                None => Next::End,
                Some(frame) => {
                    let frame = frame.expect("body error");
                    match frame.into_data() {
                        Ok(data) => Next::Data(data),
                        Err(frame) => Next::Trailers(frame.into_trailers().expect("trailers")),
                    }
                }
            };
        }
        settle().await;
    }
    Next::Pending
}

/// Takes every frame that is ready now, until the body is pending or ends.
async fn drain_now<B>(body: &mut B, out: &mut Vec<u8>) -> bool
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    for _ in 0..1000 {
        match next(body).await {
            Next::Data(d) => out.extend_from_slice(&d),
            Next::Trailers(_) => {}
            Next::Pending => return false,
            Next::End => return true,
        }
    }
    panic!("body kept producing frames");
}

const MS: Duration = Duration::from_millis(1);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

// ---------------------------------------------------------------------------------------------
// Headers.

#[tokio::test]
async fn http11_stream_headers() {
    let res = Response::builder()
        .header(CONTENT_TYPE, "text/event-stream")
        .header(CONTENT_LENGTH, "17")
        .body(Full::new(Bytes::from_static(b"data: finite\n\n")))
        .unwrap();
    let req = Request::builder()
        .version(Version::HTTP_11)
        .body(())
        .unwrap();
    let (res, _) = serve(&SseLayer::new(), req, res).await;
    let h = res.headers();
    assert_eq!(h[CONTENT_TYPE], "text/event-stream");
    assert_eq!(h[CACHE_CONTROL], "no-cache");
    assert_eq!(h[CONNECTION], "keep-alive");
    assert_eq!(h["x-accel-buffering"], "no");
    assert!(
        h.get(CONTENT_LENGTH).is_none(),
        "a handler's Content-Length must not reach the client of an event stream"
    );
    // The body does not claim a length either: heartbeats and farewells would break it.
    assert_eq!(res.body().size_hint().exact(), None);
    assert!(res.body().is_event_stream());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"data: finite\n\n");
}

#[tokio::test]
async fn http10_gets_keep_alive_too() {
    let req = Request::builder()
        .version(Version::HTTP_10)
        .body(())
        .unwrap();
    let (res, _) = serve(&SseLayer::new(), req, event_stream(Full::new(Bytes::new()))).await;
    assert_eq!(res.headers()[CONNECTION], "keep-alive");
}

#[tokio::test]
async fn http2_stream_has_no_connection_headers() {
    for version in [Version::HTTP_2, Version::HTTP_3] {
        let res = Response::builder()
            .header(CONTENT_TYPE, "text/event-stream")
            .header(CONNECTION, "keep-alive")
            .header("keep-alive", "timeout=5")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let req = Request::builder().version(version).body(()).unwrap();
        let (res, _) = serve(&SseLayer::new(), req, res).await;
        let h = res.headers();
        assert!(h.get(CONNECTION).is_none(), "{version:?}: {h:?}");
        assert!(h.get("keep-alive").is_none(), "{version:?}: {h:?}");
        assert_eq!(h[CACHE_CONTROL], "no-cache");
        assert_eq!(h["x-accel-buffering"], "no");
    }
}

#[tokio::test]
async fn handler_cache_control_is_kept() {
    let res = Response::builder()
        .header(CONTENT_TYPE, "text/event-stream")
        .header(CACHE_CONTROL, "no-store, private")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let layer = SseLayer::new().cache_control(HeaderValue::from_static("no-transform"));
    let (res, _) = serve(&layer, Request::new(()), res).await;
    let values: Vec<_> = res.headers().get_all(CACHE_CONTROL).iter().collect();
    assert_eq!(values, ["no-store, private"]);

    // Without one from the handler, the layer's configured value is used.
    let (res, _) = serve(
        &layer,
        Request::new(()),
        event_stream(Full::new(Bytes::new())),
    )
    .await;
    assert_eq!(res.headers()[CACHE_CONTROL], "no-transform");
}

#[tokio::test]
async fn x_accel_buffering_can_be_turned_off() {
    let layer = SseLayer::new().x_accel_buffering(false);
    let (res, _) = serve(
        &layer,
        Request::new(()),
        event_stream(Full::new(Bytes::new())),
    )
    .await;
    assert!(res.headers().get("x-accel-buffering").is_none());
    assert_eq!(res.headers()[CACHE_CONTROL], "no-cache");

    // A handler's own value is never overwritten.
    let res = Response::builder()
        .header(CONTENT_TYPE, "text/event-stream")
        .header("x-accel-buffering", "yes")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (res, _) = serve(&SseLayer::new(), Request::new(()), res).await;
    assert_eq!(res.headers()["x-accel-buffering"], "yes");
}

#[tokio::test]
async fn content_type_with_parameters_and_case_is_detected() {
    for ct in [
        "text/event-stream",
        "Text/Event-Stream",
        "TEXT/EVENT-STREAM;charset=utf-8",
        "text/event-stream; charset=UTF-8",
    ] {
        let res = Response::builder()
            .header(CONTENT_TYPE, ct)
            .header(CONTENT_LENGTH, "0")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (res, _) = serve(&SseLayer::new(), Request::new(()), res).await;
        assert!(res.body().is_event_stream(), "{ct}");
        assert_eq!(res.headers()[CACHE_CONTROL], "no-cache", "{ct}");
        assert!(res.headers().get(CONTENT_LENGTH).is_none(), "{ct}");
        assert_eq!(res.headers()[CONTENT_TYPE], ct, "content type untouched");
    }
    for ct in [
        "text/event-streams",
        "text/plain",
        "application/event-stream",
    ] {
        let res = Response::builder()
            .header(CONTENT_TYPE, ct)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (res, _) = serve(&SseLayer::new(), Request::new(()), res).await;
        assert!(!res.body().is_event_stream(), "{ct}");
        assert!(res.headers().get(CACHE_CONTROL).is_none(), "{ct}");
    }
}

// ---------------------------------------------------------------------------------------------
// Pass-through.

#[tokio::test]
async fn json_response_passes_through_untouched() {
    let json = br#"{"ok":true,"items":[1,2,3]}"#;
    let original = Response::builder()
        .status(StatusCode::CREATED)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, json.len().to_string())
        .header(CONNECTION, "close")
        .header("x-custom", "1")
        .body(Full::new(Bytes::from_static(json)))
        .unwrap();
    let expected_headers = original.headers().clone();
    // Even on HTTP/2 a pass-through response is not touched (that is the server's business).
    let req = Request::builder()
        .version(Version::HTTP_2)
        .body(())
        .unwrap();
    let (res, _) = serve(&SseLayer::new(), req, original).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers(), &expected_headers);
    assert!(!res.body().is_event_stream());
    assert_eq!(res.body().size_hint().exact(), Some(json.len() as u64));
    assert!(!res.body().is_end_stream());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], json);
}

#[tokio::test]
async fn pass_through_forwards_frames_and_trailers() {
    let (feed, body) = test_body();
    let original = Response::builder()
        .header(CONTENT_TYPE, "text/plain")
        .body(body)
        .unwrap();
    let expected_headers = original.headers().clone();
    let (res, _) = serve(&SseLayer::new(), Request::new(()), original).await;
    assert_eq!(res.headers(), &expected_headers);
    let mut body = res.into_body();
    feed.send("line one\n");
    feed.send("half");
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    feed.trailers(trailers.clone());
    drop(feed);
    assert_eq!(next(&mut body).await, data(b"line one\n"));
    assert_eq!(next(&mut body).await, data(b"half"));
    assert_eq!(next(&mut body).await, Next::Trailers(trailers));
    assert_eq!(next(&mut body).await, Next::End);
}

#[tokio::test(start_paused = true)]
async fn pass_through_gets_no_heartbeats_or_timeouts() {
    let (feed, body) = test_body();
    let original = Response::builder()
        .header(CONTENT_TYPE, "application/x-ndjson")
        .body(body)
        .unwrap();
    let layer = SseLayer::new()
        .heartbeat_interval(secs(1))
        .idle_timeout(secs(2))
        .max_lifetime(secs(3));
    let (res, _) = serve(&layer, Request::new(()), original).await;
    let mut body = res.into_body();
    for _ in 0..10 {
        assert_eq!(next(&mut body).await, Next::Pending);
        advance(secs(1)).await;
    }
    feed.send("{}\n");
    assert_eq!(next(&mut body).await, data(b"{}\n"));
}

// ---------------------------------------------------------------------------------------------
// Heartbeats.

#[tokio::test(start_paused = true)]
async fn heartbeat_after_quiet_interval_and_not_before() {
    let layer = SseLayer::new().heartbeat_interval(secs(10));
    let (_feed, mut body, _ctx) = open(&layer).await;
    assert_eq!(next(&mut body).await, Next::Pending);
    advance(secs(10) - MS).await;
    assert_eq!(next(&mut body).await, Next::Pending);
    advance(MS).await;
    assert_eq!(next(&mut body).await, Next::Data(KEEP_ALIVE.into_bytes()));
    assert_eq!(next(&mut body).await, Next::Pending);
    // The next one is a full interval after the previous heartbeat.
    advance(secs(10) - MS).await;
    assert_eq!(next(&mut body).await, Next::Pending);
    advance(MS).await;
    assert_eq!(next(&mut body).await, data(b":\n\n"));
}

#[tokio::test(start_paused = true)]
async fn default_heartbeat_is_fifteen_seconds() {
    let (_feed, mut body, _ctx) = open(&SseLayer::new()).await;
    advance(secs(15) - MS).await;
    assert_eq!(next(&mut body).await, Next::Pending);
    advance(MS).await;
    assert_eq!(next(&mut body).await, data(b":\n\n"));
}

#[tokio::test(start_paused = true)]
async fn heartbeat_timer_restarts_after_each_frame() {
    let layer = SseLayer::new().heartbeat_interval(secs(10));
    let (feed, mut body, _ctx) = open(&layer).await;
    for _ in 0..3 {
        advance(secs(7)).await;
        feed.send("data: tick\n\n");
        assert_eq!(next(&mut body).await, data(b"data: tick\n\n"));
    }
    // 21 s since the stream opened, but only now is the stream quiet for 10 s.
    advance(secs(10) - MS).await;
    assert_eq!(next(&mut body).await, Next::Pending);
    advance(MS).await;
    assert_eq!(next(&mut body).await, data(b":\n\n"));
}

#[tokio::test(start_paused = true)]
async fn disabled_heartbeat_sends_nothing() {
    let (_feed, mut body, _ctx) = open(&SseLayer::new().disable_heartbeat()).await;
    for _ in 0..10 {
        advance(secs(60)).await;
        assert_eq!(next(&mut body).await, Next::Pending);
    }
}

#[tokio::test(start_paused = true)]
async fn custom_heartbeat_comment() {
    let layer = SseLayer::new()
        .heartbeat_interval(secs(5))
        .heartbeat_event(Event::comment("still here"));
    let (feed, mut body, _ctx) = open(&layer).await;
    advance(secs(5)).await;
    assert_eq!(next(&mut body).await, data(b": still here\n\n"));
    feed.send("data: x\n\n");
    assert_eq!(next(&mut body).await, data(b"data: x\n\n"));
    advance(secs(5)).await;
    assert_eq!(next(&mut body).await, data(b": still here\n\n"));

    // A client sees only the real event.
    let wire = b": still here\n\ndata: x\n\n: still here\n\n";
    assert_eq!(decode(wire).events, [Decoded::new("message", "x", "")]);
}

#[tokio::test(start_paused = true)]
async fn named_heartbeat_event_is_visible_to_the_page() {
    let ping = Event::builder().event("ping").data("").build().unwrap();
    let layer = SseLayer::new()
        .heartbeat_interval(secs(5))
        .heartbeat_event(ping.clone());
    let (_feed, mut body, _ctx) = open(&layer).await;
    let mut wire = Vec::new();
    for _ in 0..3 {
        advance(secs(5)).await;
        match next(&mut body).await {
            Next::Data(d) => {
                assert_eq!(&d, ping.as_bytes());
                wire.extend_from_slice(&d);
            }
            other => panic!("expected the ping, got {other:?}"),
        }
    }
    assert_eq!(decode(&wire).events, vec![Decoded::new("ping", "", ""); 3]);
}

#[tokio::test(start_paused = true)]
async fn heartbeat_never_splits_an_event() {
    let layer = SseLayer::new().heartbeat_interval(secs(10));
    let (feed, mut body, _ctx) = open(&layer).await;
    let mut wire = Vec::new();
    feed.send("data: half");
    assert_eq!(next(&mut body).await, data(b"data: half"));
    wire.extend_from_slice(b"data: half");
    // Stalled mid-line for ten intervals: no heartbeat may be spliced in.
    for _ in 0..100 {
        advance(secs(1)).await;
        assert_eq!(next(&mut body).await, Next::Pending);
    }
    feed.send(" and the rest\n");
    assert_eq!(next(&mut body).await, data(b" and the rest\n"));
    wire.extend_from_slice(b" and the rest\n");
    // A complete line is still not the end of the event.
    for _ in 0..30 {
        advance(secs(1)).await;
        assert_eq!(next(&mut body).await, Next::Pending);
    }
    feed.send("\n");
    assert_eq!(next(&mut body).await, data(b"\n"));
    wire.extend_from_slice(b"\n");
    // Now between events: a heartbeat a full interval after that last frame.
    advance(secs(10) - MS).await;
    assert_eq!(next(&mut body).await, Next::Pending);
    advance(MS).await;
    let Next::Data(hb) = next(&mut body).await else {
        panic!("expected a heartbeat")
    };
    wire.extend_from_slice(&hb);
    assert_eq!(
        decode(&wire).events,
        [Decoded::new("message", "half and the rest", "")]
    );
}

#[tokio::test(start_paused = true)]
async fn heartbeat_waits_when_crlf_straddles_frames() {
    let layer = SseLayer::new().heartbeat_interval(secs(10));
    let (feed, mut body, _ctx) = open(&layer).await;
    // "\r" then "\n" is one line terminator, not an empty line.
    feed.send("data: a\r");
    feed.send("\n");
    let mut wire = Vec::new();
    assert!(!drain_now(&mut body, &mut wire).await);
    for _ in 0..5 {
        advance(secs(10)).await;
        assert_eq!(next(&mut body).await, Next::Pending);
    }
    feed.send("data: b\r\n\r\n");
    assert!(!drain_now(&mut body, &mut wire).await);
    advance(secs(10)).await;
    assert_eq!(next(&mut body).await, data(b":\n\n"));
    wire.extend_from_slice(b":\n\n");
    assert_eq!(decode(&wire).events, [Decoded::new("message", "a\nb", "")]);
}

// ---------------------------------------------------------------------------------------------
// Idle timeout.

#[tokio::test(start_paused = true)]
async fn idle_timeout_ends_stream_despite_heartbeats() {
    let layer = SseLayer::new()
        .heartbeat_interval(secs(10))
        .idle_timeout(secs(35));
    let (_feed, mut body, ctx) = open(&layer).await;
    for _ in 0..3 {
        advance(secs(10)).await;
        assert_eq!(next(&mut body).await, data(b":\n\n"));
    }
    advance(secs(5) - MS).await;
    assert_eq!(next(&mut body).await, Next::Pending);
    advance(MS).await;
    assert_eq!(next(&mut body).await, Next::End);
    assert!(body.is_end_stream());
    assert_eq!(next(&mut body).await, Next::End);
    drop(body);
    assert!(ctx.cancellation_token().is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_is_reset_by_data() {
    let layer = SseLayer::new().disable_heartbeat().idle_timeout(secs(30));
    let (feed, mut body, _ctx) = open(&layer).await;
    advance(secs(20)).await;
    feed.send("data: 1\n\n");
    assert_eq!(next(&mut body).await, data(b"data: 1\n\n"));
    advance(secs(30) - MS).await;
    assert_eq!(next(&mut body).await, Next::Pending);
    advance(MS).await;
    assert_eq!(next(&mut body).await, Next::End);
}

// ---------------------------------------------------------------------------------------------
// Maximum lifetime.

#[tokio::test(start_paused = true)]
async fn lifetime_without_jitter_is_exact() {
    let layer = SseLayer::new()
        .heartbeat_interval(secs(7))
        .max_lifetime(secs(20));
    let (_feed, mut body, _ctx) = open(&layer).await;
    advance(secs(7)).await;
    assert_eq!(next(&mut body).await, data(b":\n\n"));
    advance(secs(7)).await;
    assert_eq!(next(&mut body).await, data(b":\n\n"));
    advance(secs(6) - MS).await;
    assert_eq!(next(&mut body).await, Next::Pending);
    advance(MS).await;
    assert_eq!(next(&mut body).await, Next::End);
}

#[tokio::test(start_paused = true)]
async fn lifetime_with_jitter_spreads_streams_within_bounds() {
    const STREAMS: usize = 40;
    let max = secs(60);
    let jitter = secs(20);
    let step = Duration::from_millis(100);
    let layer = SseLayer::new()
        .disable_heartbeat()
        .max_lifetime(max)
        .lifetime_jitter(jitter);
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        streams.push(open(&layer).await);
    }
    // Up to 1 ms before the shortest possible lifetime, every stream is open.
    advance(max - jitter - MS).await;
    for (_, body, _) in &mut streams {
        assert_eq!(next(body).await, Next::Pending);
    }
    advance(MS).await;
    let mut elapsed = max - jitter;
    let mut ended_at: Vec<Option<Duration>> = vec![None; STREAMS];
    loop {
        for (i, (_, body, _)) in streams.iter_mut().enumerate() {
            if ended_at[i].is_none() {
                match next(body).await {
                    Next::Pending => {}
                    Next::End => ended_at[i] = Some(elapsed),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        if elapsed >= max {
            break;
        }
        advance(step).await;
        elapsed += step;
    }
    let ended_at: Vec<Duration> = ended_at
        .into_iter()
        .map(|e| e.expect("every stream ends by max_lifetime"))
        .collect();
    assert!(ended_at.iter().all(|&e| e >= max - jitter && e <= max));
    let mut distinct = ended_at.clone();
    distinct.sort();
    distinct.dedup();
    assert!(
        distinct.len() >= STREAMS / 4,
        "lifetimes are not spread: {ended_at:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn lifetime_mid_event_waits_for_the_boundary() {
    // The timer is armed for the lifetime (8 s) before the event starts, and stays armed
    // for the idle timeout: it does fire at 8 s, mid-event, and must not end the stream.
    let layer = SseLayer::new()
        .heartbeat_interval(secs(10))
        .idle_timeout(secs(100))
        .max_lifetime(secs(8));
    let (feed, mut body, _ctx) = open(&layer).await;
    assert_eq!(next(&mut body).await, Next::Pending);
    advance(secs(5)).await;
    feed.send("data: long");
    assert_eq!(next(&mut body).await, data(b"data: long"));
    // Far past the lifetime and the heartbeat interval, but the event is unfinished.
    for _ in 0..20 {
        advance(secs(1)).await;
        assert_eq!(next(&mut body).await, Next::Pending);
    }
    feed.send(" event\n\n");
    assert_eq!(next(&mut body).await, data(b" event\n\n"));
    assert_eq!(next(&mut body).await, Next::End);
}

/// An inner body that always has the next event ready, like a backlog drained by a slow
/// client or a replay: it is never `Pending`.
#[derive(Debug, Default)]
struct Endless {
    sent: u64,
}

impl Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.sent += 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"data: x\n\n")))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// The lifetime ends the stream "at the first event boundary after it has been open for
/// `lifetime`" (`SseLayer::max_lifetime`), whether or not the inner body ever pauses.
#[tokio::test(start_paused = true)]
async fn lifetime_ends_a_stream_whose_inner_body_is_never_pending() {
    let layer = SseLayer::new().max_lifetime(secs(10));
    let (res, _ctx) = serve(&layer, Request::new(()), event_stream(Endless::default())).await;
    let mut body = res.into_body();
    for _ in 0..10 {
        assert_eq!(next(&mut body).await, data(b"data: x\n\n"));
    }
    advance(secs(11)).await;
    // Every frame ends at a boundary, so the stream should end now; allow a few frames of
    // slack, but not an endless stream.
    let mut after_lifetime = 0;
    loop {
        match next(&mut body).await {
            Next::End => break,
            Next::Data(_) => after_lifetime += 1,
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            after_lifetime <= 10,
            "max_lifetime passed 1 s ago and the stream is still writing events: \
             the lifetime is only checked when the inner body is Pending"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Cancellation.

fn farewell() -> Event {
    Event::builder()
        .event("bye")
        .data("")
        .retry(secs(5))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn shutdown_sends_farewell_with_retry_then_ends() {
    let shutdown = CancellationToken::new();
    let layer = SseLayer::new()
        .shutdown_token(shutdown.clone())
        .farewell(farewell());
    let (feed, mut body, ctx) = open(&layer).await;
    let mut wire = Vec::new();
    feed.send("id: 1\ndata: hello\n\n");
    assert!(!drain_now(&mut body, &mut wire).await);
    assert!(!ctx.cancellation_token().is_cancelled());
    shutdown.cancel();
    assert!(ctx.cancellation_token().is_cancelled());
    assert!(drain_now(&mut body, &mut wire).await, "stream must end");
    assert!(body.is_end_stream());
    // The inner body still had nothing more; the farewell is the last thing written.
    assert!(wire.ends_with(farewell().as_bytes()), "{wire:?}");
    let out = decode(&wire);
    assert_eq!(
        out.events,
        [
            Decoded::new("message", "hello", "1"),
            Decoded::new("bye", "", "1")
        ]
    );
    assert_eq!(out.retry, Some(5000));
}

#[tokio::test(start_paused = true)]
async fn shutdown_wakes_a_waiting_body() {
    let shutdown = CancellationToken::new();
    let layer = SseLayer::new()
        .heartbeat_interval(secs(3600))
        .shutdown_token(shutdown.clone())
        .farewell(farewell());
    let (_feed, body, _ctx) = open(&layer).await;
    let task = tokio::spawn(async move { body.collect().await.unwrap().to_bytes() });
    settle().await;
    assert!(!task.is_finished());
    shutdown.cancel();
    // Bounded: if the body is never woken this times out (long before the 1 h heartbeat).
    let wire = tokio::time::timeout(secs(1), task)
        .await
        .expect("the cancelled stream must be woken and end")
        .unwrap();
    assert_eq!(&wire[..], farewell().as_bytes());
}

#[tokio::test(start_paused = true)]
async fn shutdown_without_farewell_just_ends() {
    let shutdown = CancellationToken::new();
    let layer = SseLayer::new().shutdown_token(shutdown.clone());
    let (_feed, mut body, _ctx) = open(&layer).await;
    assert_eq!(next(&mut body).await, Next::Pending);
    shutdown.cancel();
    assert_eq!(next(&mut body).await, Next::End);
}

#[tokio::test(start_paused = true)]
async fn cancellation_mid_event_ends_without_farewell() {
    let shutdown = CancellationToken::new();
    let layer = SseLayer::new()
        .shutdown_token(shutdown.clone())
        .farewell(farewell());
    let (feed, mut body, _ctx) = open(&layer).await;
    let mut wire = Vec::new();
    feed.send("data: complete\n\n");
    feed.send("event: partial\ndata: cut");
    assert!(!drain_now(&mut body, &mut wire).await);
    shutdown.cancel();
    assert!(drain_now(&mut body, &mut wire).await);
    assert_eq!(&wire[..], b"data: complete\n\nevent: partial\ndata: cut");
    // The client discards the partial event and never sees a farewell glued onto it.
    let out = decode(&wire);
    assert_eq!(out.events, [Decoded::new("message", "complete", "")]);
    assert_eq!(out.retry, None);
}

#[tokio::test(start_paused = true)]
async fn cancellation_discards_a_due_heartbeat_for_the_farewell() {
    let shutdown = CancellationToken::new();
    let layer = SseLayer::new()
        .heartbeat_interval(secs(10))
        .shutdown_token(shutdown.clone())
        .farewell(farewell());
    let (_feed, mut body, _ctx) = open(&layer).await;
    advance(secs(10)).await;
    assert_eq!(next(&mut body).await, data(b":\n\n"));
    shutdown.cancel();
    let mut wire = Vec::new();
    assert!(drain_now(&mut body, &mut wire).await);
    assert_eq!(&wire[..], farewell().as_bytes());
}

#[tokio::test(start_paused = true)]
async fn per_stream_token_is_cancelled_when_the_body_is_dropped() {
    let shutdown = CancellationToken::new();
    let layer = SseLayer::new().shutdown_token(shutdown.clone());
    let (feed, mut body, ctx) = open(&layer).await;
    let token = ctx.cancellation_token();
    feed.send("data: 1\n\n");
    assert_eq!(next(&mut body).await, data(b"data: 1\n\n"));
    advance(secs(3600)).await;
    assert!(!token.is_cancelled(), "alive while the body is");
    drop(body);
    assert!(token.is_cancelled(), "the client went away");
    assert!(!shutdown.is_cancelled(), "only this stream's token");

    // Also when the response is dropped before its body was ever polled.
    let (_feed, body, ctx) = open(&layer).await;
    let token = ctx.cancellation_token();
    assert!(!token.is_cancelled());
    drop(body);
    assert!(token.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn per_stream_token_is_cancelled_when_the_body_is_dropped_without_shutdown_token() {
    let (_feed, body, ctx) = open(&SseLayer::new()).await;
    let token = ctx.cancellation_token();
    let waiter = tokio::spawn(token.clone().cancelled_owned());
    settle().await;
    assert!(!waiter.is_finished());
    drop(body);
    tokio::time::timeout(secs(1), waiter)
        .await
        .expect("a task waiting on the token is woken")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_per_stream_token_ends_only_that_stream() {
    let shutdown = CancellationToken::new();
    let layer = SseLayer::new()
        .shutdown_token(shutdown.clone())
        .farewell(farewell());
    let (feed1, mut body1, ctx1) = open(&layer).await;
    let (feed2, mut body2, ctx2) = open(&layer).await;
    assert_eq!(next(&mut body1).await, Next::Pending);
    assert_eq!(next(&mut body2).await, Next::Pending);

    ctx1.cancellation_token().cancel();
    let mut wire = Vec::new();
    assert!(drain_now(&mut body1, &mut wire).await);
    assert_eq!(&wire[..], farewell().as_bytes());
    drop(feed1);

    assert!(!shutdown.is_cancelled());
    assert!(!ctx2.cancellation_token().is_cancelled());
    assert_eq!(next(&mut body2).await, Next::Pending);
    feed2.send("data: still here\n\n");
    assert_eq!(next(&mut body2).await, data(b"data: still here\n\n"));

    // A stream opened later is unaffected too.
    let (_feed3, mut body3, ctx3) = open(&layer).await;
    assert!(!ctx3.cancellation_token().is_cancelled());
    assert_eq!(next(&mut body3).await, Next::Pending);
}

#[tokio::test(start_paused = true)]
async fn a_token_taken_by_the_handler_wakes_a_waiting_body_when_cancelled() {
    let (feed, body) = test_body();
    let body = Mutex::new(Some(body));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let svc = SseLayer::new()
        .disable_heartbeat()
        .layer(service_fn(move |req: Request<()>| {
            let ctx = req.extensions().get::<SseContext>().cloned().unwrap();
            tx.send(ctx.cancellation_token()).unwrap();
            let body = body.lock().unwrap().take().unwrap();
            async move { Ok::<_, Infallible>(event_stream(body)) }
        }));
    let mut body = svc.oneshot(Request::new(())).await.unwrap().into_body();
    let token = rx.recv().await.unwrap();
    let reader = tokio::spawn(async move { body.frame().await.is_none() });
    settle().await;
    assert!(
        !reader.is_finished(),
        "nothing to write, no heartbeats, no timers"
    );
    token.cancel();
    settle().await;
    assert!(reader.is_finished(), "woken by the cancellation itself");
    assert!(reader.await.unwrap(), "ended without a frame");
    drop(feed);
}

#[tokio::test(start_paused = true)]
async fn a_token_first_taken_while_streaming_ends_the_stream_by_the_next_heartbeat() {
    // The handler did not take the token; a task holding the context takes and cancels it
    // while the body waits. The stream ends when the body is next polled (here the
    // heartbeat timer), without writing the heartbeat.
    let layer = SseLayer::new().heartbeat_interval(secs(10));
    let (feed, mut body, ctx) = open(&layer).await;
    feed.send("data: 1\n\n");
    assert_eq!(next(&mut body).await, data(b"data: 1\n\n"));
    let reader = tokio::spawn(async move {
        let mut wire = Vec::new();
        while let Some(frame) = body.frame().await {
            wire.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        wire
    });
    settle().await;
    ctx.cancellation_token().cancel();
    advance(secs(10)).await;
    let wire = tokio::time::timeout(secs(1), reader)
        .await
        .expect("ended by the heartbeat's wake-up")
        .unwrap();
    assert!(
        wire.is_empty(),
        "no heartbeat after the cancellation: {wire:?}"
    );
    drop(feed);
}

#[tokio::test(start_paused = true)]
async fn a_token_taken_after_the_stream_is_gone_is_born_cancelled() {
    let (_feed, body, ctx) = open(&SseLayer::new()).await;
    drop(body);
    assert!(ctx.cancellation_token().is_cancelled());

    let (feed, mut body, ctx) = open(&SseLayer::new()).await;
    drop(feed);
    assert_eq!(next(&mut body).await, Next::End);
    assert!(
        ctx.cancellation_token().is_cancelled(),
        "ended, body still held"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_opened_after_shutdown_ends_at_once() {
    let shutdown = CancellationToken::new();
    let layer = SseLayer::new()
        .shutdown_token(shutdown.clone())
        .farewell(farewell());
    shutdown.cancel();
    let (feed, mut body, ctx) = open(&layer).await;
    assert!(ctx.cancellation_token().is_cancelled());
    feed.send("data: too late\n\n");
    let mut wire = Vec::new();
    assert!(drain_now(&mut body, &mut wire).await);
    assert_eq!(&wire[..], farewell().as_bytes());
}

// ---------------------------------------------------------------------------------------------
// Initial event, inner errors and end.

#[tokio::test(start_paused = true)]
async fn initial_event_is_written_first() {
    let layer = SseLayer::new()
        .heartbeat_interval(secs(10))
        .initial_event(Event::builder().retry(secs(2)).build().unwrap());
    let (feed, mut body, _ctx) = open(&layer).await;
    // The inner body already has an event ready; the initial frame still comes first.
    feed.send("data: first real\n\n");
    assert_eq!(next(&mut body).await, data(b"retry: 2000\n\n"));
    assert_eq!(next(&mut body).await, data(b"data: first real\n\n"));
    assert_eq!(next(&mut body).await, Next::Pending);

    // With nothing from the inner body, it is there at once.
    let layer = SseLayer::new().initial_event(Event::comment("ok"));
    let (_feed, mut body, _ctx) = open(&layer).await;
    assert_eq!(next(&mut body).await, data(b": ok\n\n"));
    assert_eq!(next(&mut body).await, Next::Pending);
}

#[tokio::test(start_paused = true)]
async fn inner_end_and_trailers_are_forwarded() {
    let (feed, mut body, _ctx) = open(&SseLayer::new().heartbeat_interval(secs(1))).await;
    feed.send("data: last\n\n");
    let mut trailers = HeaderMap::new();
    trailers.insert("x-end", HeaderValue::from_static("ok"));
    feed.trailers(trailers.clone());
    drop(feed);
    assert_eq!(next(&mut body).await, data(b"data: last\n\n"));
    assert_eq!(next(&mut body).await, Next::Trailers(trailers));
    assert_eq!(next(&mut body).await, Next::End);
    assert!(body.is_end_stream());
    // Ended: no heartbeats afterwards.
    advance(secs(10)).await;
    assert_eq!(next(&mut body).await, Next::End);
}

#[tokio::test(start_paused = true)]
async fn inner_error_is_forwarded_and_ends_the_stream() {
    let events =
        futures_util::stream::iter([Ok(Event::message("a")), Err(std::io::Error::other("boom"))]);
    let (res, _ctx) = serve(
        &SseLayer::new(),
        Request::new(()),
        tower_sse::response(events),
    )
    .await;
    let mut body = res.into_body();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "data: a\n\n");
    let err = body.frame().await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "boom");
    assert!(body.frame().await.is_none());
}

// ---------------------------------------------------------------------------------------------
// Last-Event-ID through SseContext.

async fn context_for(layer: &SseLayer, values: &[&[u8]]) -> SseContext {
    let mut req = Request::new(());
    for v in values {
        req.headers_mut()
            .append("last-event-id", HeaderValue::from_bytes(v).unwrap());
    }
    serve(layer, req, event_stream(Full::new(Bytes::new())))
        .await
        .1
}

#[tokio::test]
async fn last_event_id_reaches_the_handler() {
    let layer = SseLayer::new();
    let ctx = context_for(&layer, &[b"41"]).await;
    assert_eq!(ctx.last_event_id().unwrap().unwrap().as_str(), "41");
    let ctx = context_for(&layer, &["é-7".as_bytes()]).await;
    assert_eq!(ctx.last_event_id().unwrap().unwrap().as_str(), "é-7");
    assert_eq!(context_for(&layer, &[]).await.last_event_id(), Ok(None));
    assert_eq!(context_for(&layer, &[b""]).await.last_event_id(), Ok(None));
}

#[tokio::test]
async fn invalid_last_event_id_gives_typed_error() {
    let layer = SseLayer::new();
    let long = vec![b'7'; 257];
    assert_eq!(
        context_for(&layer, &[&long]).await.last_event_id(),
        Err(InvalidLastEventId::TooLong { len: 257, max: 256 })
    );
    assert!(context_for(&layer, &[&long[..256]])
        .await
        .last_event_id()
        .is_ok());
    // Tab is the only C0 control a header value may carry; U+0085 is a C1 control.
    for bad in [&b"a\tb"[..], "x\u{85}y".as_bytes()] {
        assert_eq!(
            context_for(&layer, &[bad]).await.last_event_id(),
            Err(InvalidLastEventId::ControlCharacter),
            "{bad:?}"
        );
    }
    assert_eq!(
        context_for(&layer, &[b"\xff\xfe"]).await.last_event_id(),
        Err(InvalidLastEventId::NotUtf8)
    );
    assert_eq!(
        context_for(&layer, &[b"1", b"2"]).await.last_event_id(),
        Err(InvalidLastEventId::Repeated)
    );

    let strict = SseLayer::new().max_last_event_id_len(8);
    assert_eq!(
        context_for(&strict, &[b"123456789"]).await.last_event_id(),
        Err(InvalidLastEventId::TooLong { len: 9, max: 8 })
    );
    assert!(context_for(&strict, &[b"12345678"])
        .await
        .last_event_id()
        .is_ok());
}

// ---------------------------------------------------------------------------------------------
// The stream's token when there is no stream.

#[tokio::test]
async fn token_taken_for_a_response_that_is_not_a_stream_is_cancelled() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let svc = SseLayer::new().layer(tower::service_fn(move |req: Request<()>| {
        let ctx = req.extensions().get::<SseContext>().cloned().unwrap();
        if let Some(tx) = tx.lock().unwrap().take() {
            let _ = tx.send(ctx.cancellation_token());
        }
        async move {
            // The handler started something for a stream, then answered with an error.
            Ok::<_, Infallible>(
                Response::builder()
                    .status(500)
                    .body(Full::new(Bytes::from_static(b"oops")))
                    .unwrap(),
            )
        }
    }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), 500);
    let token = rx.await.unwrap();
    assert!(token.is_cancelled());
}

#[tokio::test]
async fn token_of_an_abandoned_request_is_cancelled() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let mut svc = SseLayer::new().layer(tower::service_fn(move |req: Request<()>| {
        let ctx = req.extensions().get::<SseContext>().cloned().unwrap();
        if let Some(tx) = tx.lock().unwrap().take() {
            let _ = tx.send(ctx.cancellation_token());
        }
        // Never answers: the client leaves first.
        std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>()
    }));
    let future = tower::Service::call(&mut svc, Request::new(()));
    let token = rx.await.unwrap();
    assert!(!token.is_cancelled());
    drop(future);
    assert!(token.is_cancelled());
}

#[tokio::test]
async fn requests_that_never_take_the_token_create_none() {
    // Nothing to cancel, nothing allocated for it: the pass-through path stays cheap.
    let svc = SseLayer::new().layer(tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"plain"))))
    }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"plain");
}

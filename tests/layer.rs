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

/// The default heartbeat: a bare comment line with no blank line after it, so that no client
/// (not even those that turn every blank-line block into a message) sees anything.
const HEARTBEAT: &[u8] = b":\n";

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
    assert_eq!(next(&mut body).await, data(HEARTBEAT));
    assert_eq!(next(&mut body).await, Next::Pending);
    // The next one is a full interval after the previous heartbeat.
    advance(secs(10) - MS).await;
    assert_eq!(next(&mut body).await, Next::Pending);
    advance(MS).await;
    assert_eq!(next(&mut body).await, data(HEARTBEAT));
}

#[tokio::test(start_paused = true)]
async fn default_heartbeat_is_fifteen_seconds() {
    let (_feed, mut body, _ctx) = open(&SseLayer::new()).await;
    advance(secs(15) - MS).await;
    assert_eq!(next(&mut body).await, Next::Pending);
    advance(MS).await;
    assert_eq!(next(&mut body).await, data(HEARTBEAT));
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
    assert_eq!(next(&mut body).await, data(HEARTBEAT));
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
    assert_eq!(next(&mut body).await, data(HEARTBEAT));
    wire.extend_from_slice(HEARTBEAT);
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
        assert_eq!(next(&mut body).await, data(HEARTBEAT));
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
    assert_eq!(next(&mut body).await, data(HEARTBEAT));
    advance(secs(7)).await;
    assert_eq!(next(&mut body).await, data(HEARTBEAT));
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
    assert_eq!(next(&mut body).await, data(HEARTBEAT));
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

    // The bound is the one ids are built with (not configurable: a larger one would
    // accept ids no event can carry, a smaller one would refuse ids events do carry).
    let long = vec![b'7'; 257];
    assert_eq!(
        context_for(&layer, &[&long]).await.last_event_id(),
        Err(InvalidLastEventId::TooLong { len: 257, max: 256 })
    );
    assert!(context_for(&layer, &[&long[..256]])
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

// ---------------------------------------------------------------------------------------------
// How a stream ended: `SseContext::end_reason` and `SseContext::closed`.

/// Opens a stream through `layer`, lets `act` end it, and returns the context.
async fn ended_by<F, Fut>(layer: &SseLayer, act: F) -> SseContext
where
    F: FnOnce(Feed, ResponseBody<TestBody>, SseContext) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (feed, body, ctx) = open(layer).await;
    assert_eq!(ctx.end_reason(), None, "running");
    act(feed, body, ctx.clone()).await;
    ctx
}

#[tokio::test(start_paused = true)]
async fn end_reason_names_each_way_a_stream_ends() {
    use tower_sse::StreamEnd;
    let shutdown = CancellationToken::new();
    let layer = SseLayer::new()
        .heartbeat_interval(secs(5))
        .idle_timeout(secs(60))
        .max_lifetime(secs(120))
        .shutdown_token(shutdown.clone());

    let ctx = ended_by(&layer, |feed, mut body, _| async move {
        feed.send("data: 1\n\n");
        drop(feed);
        let mut wire = Vec::new();
        assert!(drain_now(&mut body, &mut wire).await);
    })
    .await;
    assert_eq!(ctx.end_reason(), Some(StreamEnd::Completed));

    let ctx = ended_by(&layer, |feed, mut body, ctx| async move {
        let _feed = feed;
        ctx.cancellation_token().cancel();
        assert_eq!(next(&mut body).await, Next::End);
    })
    .await;
    assert_eq!(ctx.end_reason(), Some(StreamEnd::Cancelled));

    let ctx = ended_by(&layer, |feed, mut body, _| async move {
        let _feed = feed;
        advance(secs(60)).await;
        let mut wire = Vec::new();
        assert!(drain_now(&mut body, &mut wire).await);
    })
    .await;
    assert_eq!(ctx.end_reason(), Some(StreamEnd::IdleTimeout));

    let ctx = ended_by(&layer, |feed, mut body, _| async move {
        for _ in 0..12 {
            advance(secs(10)).await;
            feed.send("data: busy\n\n");
            let mut wire = Vec::new();
            drain_now(&mut body, &mut wire).await;
        }
        assert_eq!(next(&mut body).await, Next::End);
    })
    .await;
    assert_eq!(ctx.end_reason(), Some(StreamEnd::Lifetime));

    let ctx = ended_by(&layer, |feed, body, _| async move {
        let _feed = feed;
        drop(body)
    })
    .await;
    assert_eq!(ctx.end_reason(), Some(StreamEnd::ClientGone));

    // The first reason wins: the client leaving after the stream ended changes nothing.
    let ctx = ended_by(&layer, |feed, mut body, ctx| async move {
        let _feed = feed;
        ctx.cancellation_token().cancel();
        assert_eq!(next(&mut body).await, Next::End);
        drop(body);
    })
    .await;
    assert_eq!(ctx.end_reason(), Some(StreamEnd::Cancelled));

    // Shutdown last: it ends every stream of the layer.
    let (_feed, mut body, own) = open(&layer).await;
    let _token = own.cancellation_token();
    let (_feed2, mut body2, ctx) = open(&layer).await;
    shutdown.cancel();
    assert_eq!(next(&mut body).await, Next::End);
    assert_eq!(next(&mut body2).await, Next::End);
    assert_eq!(ctx.end_reason(), Some(StreamEnd::Shutdown));
    assert_eq!(
        own.end_reason(),
        Some(StreamEnd::Shutdown),
        "a handler's own token is a child of the shutdown token, yet this is a shutdown"
    );
}

#[tokio::test]
async fn end_reason_of_requests_that_never_became_streams() {
    use tower_sse::StreamEnd;
    let events =
        futures_util::stream::iter([Ok(Event::message("a")), Err(std::io::Error::other("boom"))]);
    let (res, ctx) = serve(
        &SseLayer::new(),
        Request::new(()),
        tower_sse::response(events),
    )
    .await;
    assert_eq!(ctx.end_reason(), None);
    let mut body = res.into_body();
    assert!(body.frame().await.unwrap().is_ok());
    assert!(body.frame().await.unwrap().is_err());
    assert_eq!(ctx.end_reason(), Some(StreamEnd::Error));

    let json = Response::new(Full::new(Bytes::from_static(b"{}")));
    let (_res, ctx) = serve(&SseLayer::new(), Request::new(()), json).await;
    assert_eq!(ctx.end_reason(), Some(StreamEnd::NotAStream));

    // The inner service failed: there is no response at all.
    let (tx, rx) = std::sync::mpsc::channel();
    let svc = SseLayer::new().layer(service_fn(move |req: Request<()>| {
        tx.send(req.extensions().get::<SseContext>().cloned().unwrap())
            .unwrap();
        async { Err::<Response<Full<Bytes>>, _>(std::io::Error::other("down")) }
    }));
    assert!(svc.oneshot(Request::new(())).await.is_err());
    assert_eq!(rx.recv().unwrap().end_reason(), Some(StreamEnd::Error));

    // Abandoned before the handler answered.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut svc = SseLayer::new().layer(service_fn(move |req: Request<()>| {
        tx.send(req.extensions().get::<SseContext>().cloned().unwrap())
            .unwrap();
        std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>()
    }));
    let future = tower::Service::call(&mut svc, Request::new(()));
    let ctx = rx.recv().unwrap();
    assert_eq!(ctx.end_reason(), None);
    drop(future);
    assert_eq!(ctx.end_reason(), Some(StreamEnd::ClientGone));
}

#[test]
fn stream_end_names() {
    use tower_sse::StreamEnd;
    let all = [
        (StreamEnd::Completed, "completed"),
        (StreamEnd::Cancelled, "cancelled"),
        (StreamEnd::Shutdown, "shutdown"),
        (StreamEnd::IdleTimeout, "idle_timeout"),
        (StreamEnd::Lifetime, "lifetime"),
        (StreamEnd::ClientGone, "client_gone"),
        (StreamEnd::Error, "error"),
        (StreamEnd::NotAStream, "not_a_stream"),
    ];
    for (end, name) in all {
        assert_eq!(end.as_str(), name);
        assert_eq!(end.to_string(), name);
    }
}

/// An inner body that records, in its `Drop`, the end reason its context shows then: what
/// the connection manager's body reads.
#[derive(Debug)]
struct RecordsEndOnDrop {
    inner: TestBody,
    ctx: SseContext,
    seen: Arc<Mutex<Option<Option<tower_sse::StreamEnd>>>>,
}

impl Body for RecordsEndOnDrop {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
}

impl Drop for RecordsEndOnDrop {
    fn drop(&mut self) {
        *self.seen.lock().unwrap() = Some(self.ctx.end_reason());
    }
}

type SeenAtDrop = Arc<Mutex<Option<Option<tower_sse::StreamEnd>>>>;

/// A stream whose inner body is a [`RecordsEndOnDrop`].
async fn open_recording(
    layer: &SseLayer,
) -> (Feed, ResponseBody<RecordsEndOnDrop>, SseContext, SeenAtDrop) {
    let (feed, body) = test_body();
    let body = Mutex::new(Some(body));
    let seen: SeenAtDrop = Arc::default();
    let seen2 = seen.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let svc = layer.layer(service_fn(move |req: Request<()>| {
        let ctx = req.extensions().get::<SseContext>().cloned().unwrap();
        tx.send(ctx.clone()).unwrap();
        let inner = body.lock().unwrap().take().unwrap();
        let seen = seen2.clone();
        async move { Ok::<_, Infallible>(event_stream(RecordsEndOnDrop { inner, ctx, seen })) }
    }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    (feed, res.into_body(), rx.recv().unwrap(), seen)
}

#[tokio::test(start_paused = true)]
async fn the_inner_body_reads_the_layers_reason_when_it_is_dropped() {
    use tower_sse::StreamEnd;
    let shutdown = CancellationToken::new();
    let layer = SseLayer::new()
        .disable_heartbeat()
        .idle_timeout(secs(30))
        .shutdown_token(shutdown.clone())
        .farewell(farewell());

    // The layer ended it: the reason is there when the inner body goes.
    let (_feed, mut body, _ctx, seen) = open_recording(&layer).await;
    advance(secs(30)).await;
    assert_eq!(next(&mut body).await, Next::End);
    drop(body);
    assert_eq!(*seen.lock().unwrap(), Some(Some(StreamEnd::IdleTimeout)));

    // Cancelled with a farewell, dropped as soon as the farewell was written.
    let (_feed, mut body, ctx, seen) = open_recording(&layer).await;
    ctx.cancellation_token().cancel();
    assert_eq!(next(&mut body).await, Next::Data(farewell().into_bytes()));
    drop(body);
    assert_eq!(*seen.lock().unwrap(), Some(Some(StreamEnd::Cancelled)));

    // The client went away: nothing yet when the inner body goes, `ClientGone` right after.
    let (feed, mut body, ctx, seen) = open_recording(&layer).await;
    feed.send("data: 1\n\n");
    assert_eq!(next(&mut body).await, data(b"data: 1\n\n"));
    drop(body);
    assert_eq!(*seen.lock().unwrap(), Some(None));
    assert_eq!(ctx.end_reason(), Some(StreamEnd::ClientGone));

    // Shut down, and the client left before the body was polled again: the layer never
    // ended this stream, the client's leaving did.
    let (_feed, mut body, ctx, seen) = open_recording(&layer).await;
    assert_eq!(next(&mut body).await, Next::Pending);
    shutdown.cancel();
    settle().await;
    drop(body);
    assert_eq!(*seen.lock().unwrap(), Some(None));
    assert_eq!(ctx.end_reason(), Some(StreamEnd::ClientGone));
    // Polled after the shutdown: its farewell, and its reason, before the inner body goes.
    let (_feed, mut body, _ctx, seen) = open_recording(&layer).await;
    assert_eq!(next(&mut body).await, Next::Data(farewell().into_bytes()));
    drop(body);
    assert_eq!(*seen.lock().unwrap(), Some(Some(StreamEnd::Shutdown)));
}

#[tokio::test(start_paused = true)]
async fn closed_resolves_once_the_stream_is_over() {
    use tower_sse::StreamEnd;
    let layer = SseLayer::new().disable_heartbeat().idle_timeout(secs(30));
    let (feed, mut body, ctx) = open(&layer).await;
    let first = tokio::spawn(ctx.closed());
    let second = tokio::spawn(ctx.closed());
    settle().await;
    assert!(!first.is_finished() && !second.is_finished());
    feed.send("data: 1\n\n");
    assert_eq!(next(&mut body).await, data(b"data: 1\n\n"));
    settle().await;
    assert!(!first.is_finished(), "data does not end it");
    advance(secs(30)).await;
    assert_eq!(next(&mut body).await, Next::End);
    assert_eq!(first.await.unwrap(), StreamEnd::IdleTimeout);
    assert_eq!(second.await.unwrap(), StreamEnd::IdleTimeout);
    // Asked after the end: at once.
    assert_eq!(ctx.closed().await, StreamEnd::IdleTimeout);

    // The client goes away while a task waits.
    let (_feed, body, ctx) = open(&layer).await;
    let waiter = tokio::spawn(ctx.closed());
    settle().await;
    drop(body);
    let end = tokio::time::timeout(secs(1), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end, StreamEnd::ClientGone);

    // Never a stream.
    let json = Response::new(Full::new(Bytes::from_static(b"{}")));
    let (_res, ctx) = serve(&layer, Request::new(()), json).await;
    assert_eq!(ctx.closed().await, StreamEnd::NotAStream);
}

// ---------------------------------------------------------------------------------------------
// A farewell per ending.

fn bye(text: &str) -> Event {
    Event::builder().event("bye").data(text).build().unwrap()
}

#[tokio::test(start_paused = true)]
async fn farewell_per_ending() {
    use tower_sse::StreamEnd;
    let shutdown = CancellationToken::new();
    let layer = SseLayer::new()
        .disable_heartbeat()
        .idle_timeout(secs(30))
        .max_lifetime(secs(100))
        .shutdown_token(shutdown.clone())
        .farewell_on(StreamEnd::Cancelled, bye("cancelled"))
        .farewell_on(StreamEnd::IdleTimeout, bye("idle"))
        .farewell_on(StreamEnd::Lifetime, bye("lifetime"))
        .farewell_on(StreamEnd::Shutdown, bye("shutdown"))
        // Not the layer's to write: no effect.
        .farewell_on(StreamEnd::Completed, bye("completed"))
        .farewell_on(StreamEnd::ClientGone, bye("gone"));

    let (_feed, mut body, _ctx) = open(&layer).await;
    advance(secs(30)).await;
    let mut wire = Vec::new();
    assert!(drain_now(&mut body, &mut wire).await);
    assert_eq!(&wire[..], bye("idle").as_bytes());
    assert!(body.is_end_stream());

    let (feed, mut body, _ctx) = open(&layer).await;
    for _ in 0..5 {
        advance(secs(20)).await;
        feed.send("data: busy\n\n");
    }
    let mut wire = Vec::new();
    assert!(drain_now(&mut body, &mut wire).await);
    assert!(wire.ends_with(bye("lifetime").as_bytes()), "{wire:?}");

    let (_feed, mut body, ctx) = open(&layer).await;
    ctx.cancellation_token().cancel();
    let mut wire = Vec::new();
    assert!(drain_now(&mut body, &mut wire).await);
    assert_eq!(&wire[..], bye("cancelled").as_bytes());

    let (feed, mut body, _ctx) = open(&layer).await;
    feed.send("data: last\n\n");
    drop(feed);
    let mut wire = Vec::new();
    assert!(drain_now(&mut body, &mut wire).await);
    assert_eq!(
        &wire[..],
        b"data: last\n\n",
        "the inner body ended: no farewell"
    );

    let (_feed, mut body, _ctx) = open(&layer).await;
    shutdown.cancel();
    let mut wire = Vec::new();
    assert!(drain_now(&mut body, &mut wire).await);
    assert_eq!(&wire[..], bye("shutdown").as_bytes());
}

#[tokio::test(start_paused = true)]
async fn an_idle_timeout_mid_event_ends_without_its_farewell() {
    use tower_sse::StreamEnd;
    let layer = SseLayer::new()
        .disable_heartbeat()
        .idle_timeout(secs(30))
        .farewell_on(StreamEnd::IdleTimeout, bye("idle"));
    let (feed, mut body, ctx) = open(&layer).await;
    feed.send("data: never fin");
    assert_eq!(next(&mut body).await, data(b"data: never fin"));
    advance(secs(30)).await;
    assert_eq!(next(&mut body).await, Next::End);
    assert_eq!(ctx.end_reason(), Some(StreamEnd::IdleTimeout));
}

// ---------------------------------------------------------------------------------------------
// The reconnection delay, on the first real event and on the farewell.

fn retry_layer() -> SseLayer {
    SseLayer::new()
        .disable_heartbeat()
        .retry(Duration::from_millis(2500))
}

#[tokio::test(start_paused = true)]
async fn retry_goes_on_the_first_event_with_data() {
    let shutdown = CancellationToken::new();
    let layer = retry_layer()
        .shutdown_token(shutdown.clone())
        .farewell(bye("later"));
    let (feed, mut body, _ctx) = open(&layer).await;
    // A comment-only block and an id-only block come first: neither gets the retry.
    feed.send(": hello\n\n");
    feed.send("id: 7\n\n");
    feed.send("event: first\ndata: one\n\n");
    feed.send("data: two\n\n");
    let mut wire = Vec::new();
    assert!(!drain_now(&mut body, &mut wire).await);
    assert_eq!(
        String::from_utf8_lossy(&wire),
        ": hello\n\nid: 7\n\nevent: first\nretry: 2500\ndata: one\n\ndata: two\n\n"
    );
    shutdown.cancel();
    let mut farewell_wire = Vec::new();
    assert!(drain_now(&mut body, &mut farewell_wire).await);
    assert_eq!(
        String::from_utf8_lossy(&farewell_wire),
        "retry: 2500\nevent: bye\ndata: later\n\n"
    );
    let out = decode(&[wire, farewell_wire].concat());
    assert_eq!(out.retry, Some(2500));
    assert_eq!(out.events.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_farewells_own_retry_wins() {
    let shutdown = CancellationToken::new();
    let layer = retry_layer()
        .shutdown_token(shutdown.clone())
        .farewell(farewell());
    let (_feed, mut body, _ctx) = open(&layer).await;
    shutdown.cancel();
    let mut wire = Vec::new();
    assert!(drain_now(&mut body, &mut wire).await);
    assert_eq!(decode(&wire).retry, Some(5000), "{wire:?}");
}

/// Streams an inner body might write, in whole events or cut anywhere.
const RETRY_CORPUS: &[&str] = &[
    "data: a\n\n",
    ": c\n\nid: 1\n\ndata: a\ndata: b\n\n",
    "event: e\r\nid: 9\r\ndata: crlf\r\n\r\ndata: next\r\n\r\n",
    "id: 1\rdata: cr\r\rdata: more\r\r",
    "data\n\n",
    "database: not data\n\ndata: yes\n\n",
    ": only comments\n\n: and more\n\n",
    // The stream's own retry, later on: it takes over from the layer's.
    "data: first\n\nretry: 100\ndata: own retry later\n\n",
];

/// Feeds `frames` through a retry layer; returns the wire.
async fn through_retry_layer(frames: &[&[u8]]) -> Vec<u8> {
    let (feed, mut body, _ctx) = open(&retry_layer()).await;
    for frame in frames {
        feed.0
            .send(Frame::data(Bytes::copy_from_slice(frame)))
            .unwrap();
    }
    drop(feed);
    let mut wire = Vec::new();
    assert!(drain_now(&mut body, &mut wire).await);
    wire
}

#[tokio::test(start_paused = true)]
async fn retry_is_known_to_the_client_when_the_first_event_is_dispatched_wherever_frames_split() {
    for stream in RETRY_CORPUS {
        let bytes = stream.as_bytes();
        let expected = decode(bytes);
        for a in 0..=bytes.len() {
            for b in a..=bytes.len() {
                let frames = common::whatwg::split_at_cuts(bytes, &[a, b]);
                let wire = through_retry_layer(&frames).await;
                let out = decode(&wire);
                // The same events, and the retry: ours unless the stream sets its own later.
                assert_eq!(out.events, expected.events, "{stream:?} cut at {a},{b}");
                assert_eq!(
                    out.retry,
                    expected.retry.or(expected.events.first().map(|_| 2500)),
                    "{stream:?} cut at {a},{b}: {:?}",
                    String::from_utf8_lossy(&wire)
                );
                // Exactly one line added, and never a block of its own: by the time the
                // first event is dispatched, the client already has our retry.
                let added = wire.len() - bytes.len();
                if expected.events.is_empty() {
                    assert_eq!(added, 0, "{stream:?}: no data, no retry");
                    continue;
                }
                assert_eq!(added, b"retry: 2500\n".len(), "{stream:?} cut at {a},{b}");
                let mut decoder = common::whatwg::Decoder::new();
                for byte in &wire {
                    decoder.feed(std::slice::from_ref(byte));
                    if !decoder.take_events().is_empty() {
                        break;
                    }
                }
                let first_retry = decoder.retry();
                assert!(
                    first_retry == Some(2500) || first_retry == expected.retry,
                    "{stream:?} cut at {a},{b}: retry {first_retry:?} at the first dispatch"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Comments as heartbeats and as the first frame.

#[tokio::test(start_paused = true)]
async fn comment_heartbeats_and_initial_comments_are_lines_not_blocks() {
    let layer = SseLayer::new()
        .heartbeat_interval(secs(5))
        .heartbeat_comment("still here")
        .initial_comment("welcome");
    let (feed, mut body, _ctx) = open(&layer).await;
    let mut wire = Vec::new();
    assert_eq!(next(&mut body).await, data(b": welcome\n"));
    wire.extend_from_slice(b": welcome\n");
    advance(secs(5)).await;
    assert_eq!(next(&mut body).await, data(b": still here\n"));
    wire.extend_from_slice(b": still here\n");
    feed.send("data: x\n\n");
    assert_eq!(next(&mut body).await, data(b"data: x\n\n"));
    wire.extend_from_slice(b"data: x\n\n");
    // No blank line anywhere but the event's own: not even a client that makes a message of
    // every blank-line block sees more than the one event.
    assert_eq!(wire.windows(2).filter(|w| w == b"\n\n").count(), 1);
    assert_eq!(decode(&wire).events, [Decoded::new("message", "x", "")]);

    // The old keep-alive block is still there for whoever asks for it.
    let layer = SseLayer::new()
        .heartbeat_interval(secs(5))
        .heartbeat_event(KEEP_ALIVE);
    let (_feed, mut body, _ctx) = open(&layer).await;
    advance(secs(5)).await;
    assert_eq!(next(&mut body).await, data(b":\n\n"));
}

// ---------------------------------------------------------------------------------------------
// Finished streams: a reconnect with the finished mark gets `204 No Content`.

/// The body of [`counting_stream_service`]'s streams.
type OneEvent =
    tower_sse::EventStreamBody<futures_util::stream::Iter<std::array::IntoIter<Event, 1>>>;

/// A service that counts its calls and answers every one with a one-event stream.
fn counting_stream_service(
    layer: &SseLayer,
) -> (
    impl tower::Service<Request<()>, Response = Response<ResponseBody<OneEvent>>, Error = Infallible>
        + Clone,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let svc = layer.layer(service_fn(move |req: Request<()>| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let ctx = req.extensions().get::<SseContext>().cloned().unwrap();
        let last = ctx.finish(Event::builder().event("end").data("").build().unwrap());
        async move { Ok::<_, Infallible>(tower_sse::response(futures_util::stream::iter([last]))) }
    }));
    (svc, calls)
}

fn reconnect(last_event_id: &str, accept: Option<&str>) -> Request<()> {
    let mut req = Request::builder().header("last-event-id", last_event_id);
    if let Some(accept) = accept {
        req = req.header("accept", accept);
    }
    req.body(()).unwrap()
}

#[tokio::test]
async fn a_reconnect_to_a_finished_stream_gets_no_content_without_calling_the_service() {
    use std::sync::atomic::Ordering;
    let (svc, calls) = counting_stream_service(&SseLayer::new());
    let res = svc.clone().oneshot(Request::new(())).await.unwrap();
    let wire = res.into_body().collect().await.unwrap().to_bytes();
    let out = decode(&wire);
    assert_eq!(out.last_event_id, "tower-sse:finished:");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // What the browser sends next.
    let res = svc
        .clone()
        .oneshot(reconnect(&out.last_event_id, Some("text/event-stream")))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(!res.body().is_event_stream());
    assert!(res.body().is_end_stream());
    assert_eq!(res.body().size_hint().exact(), Some(0));
    assert!(res.headers().get(CONTENT_TYPE).is_none());
    assert!(res
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .is_empty());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the service was not called"
    );

    // Any id that starts with the prefix, and any Accept that lists event streams.
    for (id, accept) in [
        ("tower-sse:finished:42", "text/event-stream"),
        (
            "tower-sse:finished:",
            "application/json, Text/Event-Stream;q=0.5",
        ),
    ] {
        let res = svc
            .clone()
            .oneshot(reconnect(id, Some(accept)))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT, "{id} {accept}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Everything else reaches the service.
    for (id, accept) in [
        ("tower-sse:finished:", None), // not asking for a stream
        ("tower-sse:finished:", Some("application/json")), // a JSON route
        ("42", Some("text/event-stream")), // an ordinary reconnect
        ("tower-sse:finishe", Some("text/event-stream")), // not the whole prefix
        ("x tower-sse:finished:", Some("text/event-stream")), // not at the start
    ] {
        let before = calls.load(Ordering::SeqCst);
        let res = svc.clone().oneshot(reconnect(id, accept)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{id} {accept:?}");
        assert_eq!(calls.load(Ordering::SeqCst), before + 1, "{id} {accept:?}");
    }
    // A malformed Last-Event-ID is the handler's to refuse, never a 204.
    let mut req = reconnect("tower-sse:finished:", Some("text/event-stream"));
    req.headers_mut()
        .append("last-event-id", HeaderValue::from_static("2"));
    assert_eq!(
        svc.clone().oneshot(req).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_finished_prefix_is_configurable_and_can_be_turned_off() {
    let prefix = tower_sse::FinishedPrefix::new("done.").unwrap();
    let (svc, calls) = counting_stream_service(&SseLayer::new().finished_prefix(prefix));
    let res = svc.clone().oneshot(Request::new(())).await.unwrap();
    let wire = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(decode(&wire).last_event_id, "done.");
    let res = svc
        .clone()
        .oneshot(reconnect("done.", Some("text/event-stream")))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = svc
        .clone()
        .oneshot(reconnect("tower-sse:finished:", Some("text/event-stream")))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "only the configured prefix");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);

    let (svc, calls) = counting_stream_service(&SseLayer::new().disable_finished());
    let res = svc
        .clone()
        .oneshot(reconnect("tower-sse:finished:", Some("text/event-stream")))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn finishing_marks_the_id_and_keeps_the_rest() {
    let p = tower_sse::DEFAULT_FINISHED_PREFIX;
    let e = Event::builder()
        .event("end")
        .id("17")
        .retry(secs(1))
        .data("a\nb")
        .build()
        .unwrap();
    let f = e.finishing(p);
    assert_eq!(f.id(), Some("tower-sse:finished:17"));
    let out = decode(f.as_bytes());
    assert_eq!(
        out.events,
        [Decoded::new("end", "a\nb", "tower-sse:finished:17")]
    );
    assert_eq!(out.retry, Some(1000));
    // Without an id, the prefix is the id.
    let f = Event::message("x").finishing(p);
    assert_eq!(f.id(), Some("tower-sse:finished:"));
    assert_eq!(
        decode(f.as_bytes()).events,
        [Decoded::new("message", "x", "tower-sse:finished:")]
    );
    // Marking twice marks twice: harmless, still recognised.
    assert!(f.finishing(p).id().unwrap().starts_with(p.as_str()));
    // What the connection manager writes, with or without a layer's context.
    let ctx: Option<&SseContext> = None;
    let marked = Event::message("x").finishing(ctx.map_or(p, |c| c.finished_prefix()));
    assert_eq!(marked.id(), Some("tower-sse:finished:"));
}

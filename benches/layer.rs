//! The cost of `SseLayer` per frame and per stream, against the same inner body without the
//! layer, in the same run.
//!
//! Run with `cargo bench --bench layer -- --warm-up-time 1 --measurement-time 3`.
//!
//! # What is measured
//!
//! One current-thread tokio runtime with time enabled (the layer's timers need it). The inner
//! body yields [`FRAMES`] clones of one pre-encoded ~90-byte event, then ends. Each iteration
//! calls the service with `oneshot` and drains the whole body with `BodyExt::frame`:
//!
//! - `drain/raw`: the inner service, no layer.
//! - `drain/layer`: the same service wrapped in `SseLayer::new()` (heartbeats on, every 15 s).
//! - `ready` inner bodies have every frame ready at once (a backlog). `pending` inner bodies
//!   return `Pending` (waking themselves) before every frame, like a live stream whose
//!   producer is slower than the client: the layer then also consults its timer on every
//!   poll.
//! - `open/raw` and `open/layer`: the call alone (response future to response, body dropped
//!   unpolled), the per-stream setup: `SseContext`, the stream's `CancellationToken`, the
//!   boxed stream state.
//!
//! Per-frame overhead is `(drain/layer - drain/raw) / FRAMES`, which includes the per-stream
//! setup spread over the frames.
//!
//! Before the timings the bench prints, once, the sizes of the types involved and the heap
//! each stream costs. The crate forbids `unsafe`, even in benches, so there is no counting
//! global allocator: the heap is estimated from the process's resident memory (Linux
//! `/proc/self/statm`) while [`LEAKED`] responses are created and leaked, with and without the
//! layer. That includes malloc's own per-allocation overhead, which is what a server pays.

// `criterion_group!` generates a `pub fn` that cannot carry a doc comment.
#![allow(missing_docs)]

#[path = "support/telemetry.rs"]
mod telemetry;

use std::convert::Infallible;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service, ServiceExt};
use tower_sse::layer::ResponseBody;
use tower_sse::{Event, SseContext, SseLayer};

/// Frames drained per iteration.
const FRAMES: usize = 1000;

/// Responses created (and leaked) per heap estimate.
const LEAKED: usize = 50_000;

/// A typical small event: about 90 bytes of JSON.
fn payload() -> Bytes {
    Event::message(
        r#"{"symbol":"EUR/USD","venue":"XAMS","bid":1.084215,"ask":1.084298,"seq":987654321}"#,
    )
    .into_bytes()
}

/// Yields `left` clones of `frame`, either all ready, or each after one self-woken `Pending`.
#[derive(Debug)]
struct Frames {
    frame: Bytes,
    left: usize,
    pause: bool,
    paused: bool,
}

impl Frames {
    fn new(frame: Bytes, left: usize, pause: bool) -> Self {
        Frames {
            frame,
            left,
            pause,
            paused: false,
        }
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        if self.pause && !self.paused {
            self.paused = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.paused = false;
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(self.frame.clone()))))
    }
}

/// The inner service: every call answers with an event stream of `frames` frames.
#[derive(Debug, Clone)]
struct Inner {
    frame: Bytes,
    frames: usize,
    pause: bool,
}

impl Service<Request<()>> for Inner {
    type Response = Response<Frames>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Frames>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<()>) -> Self::Future {
        let mut res = Response::new(Frames::new(self.frame.clone(), self.frames, self.pause));
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        std::future::ready(Ok(res))
    }
}

fn inner(frames: usize, pause: bool) -> Inner {
    Inner {
        frame: payload(),
        frames,
        pause,
    }
}

/// One call on a clone of a shared service, as a server makes per request.
async fn call<S, B>(svc: &S) -> Response<B>
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible> + Clone,
{
    match svc.clone().oneshot(Request::new(())).await {
        Ok(res) => res,
        Err(never) => match never {},
    }
}

async fn drain<B>(mut body: B) -> usize
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut frames = 0;
    while let Some(frame) = body.frame().await {
        black_box(frame.unwrap());
        frames += 1;
    }
    frames
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime")
}

fn drain_group(c: &mut Criterion) {
    eprintln!("telemetry: {}", telemetry::install());
    print_memory_once();
    let rt = runtime();
    let mut group = c.benchmark_group("drain");
    group.throughput(Throughput::Elements(FRAMES as u64));
    for (name, pause) in [("ready", false), ("pending", true)] {
        let raw = inner(FRAMES, pause);
        let layered = SseLayer::new().layer(inner(FRAMES, pause));
        group.bench_function(BenchmarkId::new("raw", name), |b| {
            b.to_async(&rt).iter(|| async {
                let res = call(&raw).await;
                assert_eq!(drain(res.into_body()).await, FRAMES);
            })
        });
        group.bench_function(BenchmarkId::new("layer", name), |b| {
            b.to_async(&rt).iter(|| async {
                let res = call(&layered).await;
                assert!(res.body().is_event_stream());
                assert_eq!(drain(res.into_body()).await, FRAMES);
            })
        });
    }
    group.finish();
}

fn open_group(c: &mut Criterion) {
    telemetry::install();
    let rt = runtime();
    let mut group = c.benchmark_group("open");
    let raw = inner(FRAMES, false);
    let layered = SseLayer::new().layer(inner(FRAMES, false));
    group.bench_function("raw", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(call(&raw).await) })
    });
    group.bench_function("layer", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(call(&layered).await) })
    });
    group.finish();
}

/// Resident memory of this process, in bytes, if the platform tells.
fn resident_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    // 4 KiB pages on every Linux this runs on; a larger page only coarsens the estimate.
    Some(pages * 4096)
}

/// Heap bytes per response of `svc`, from the growth of resident memory over [`LEAKED`]
/// responses that are created and leaked (never dropped, never freed).
fn heap_per_response<S, B>(rt: &Runtime, svc: &S) -> Option<f64>
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible> + Clone,
{
    // Warm up: the runtime, the allocator's arenas, lazily made statics.
    for _ in 0..1000 {
        std::mem::forget(rt.block_on(call(svc)));
    }
    let before = resident_bytes()?;
    rt.block_on(async {
        for _ in 0..LEAKED {
            std::mem::forget(call(svc).await);
        }
    });
    let after = resident_bytes()?;
    Some(after.saturating_sub(before) as f64 / LEAKED as f64)
}

fn print_memory_once() {
    use std::mem::size_of;
    eprintln!("--- tower-sse layer: sizes (bytes) ---");
    eprintln!("inner body Frames                 {}", size_of::<Frames>());
    eprintln!(
        "ResponseBody<Frames>              {}",
        size_of::<ResponseBody<Frames>>()
    );
    eprintln!(
        "Response<Frames>                  {}",
        size_of::<Response<Frames>>()
    );
    eprintln!(
        "Response<ResponseBody<Frames>>    {}",
        size_of::<Response<ResponseBody<Frames>>>()
    );
    eprintln!(
        "SseContext (an Arc)               {}",
        size_of::<SseContext>()
    );
    eprintln!(
        "SseLayer (an Arc)                 {}",
        size_of::<SseLayer>()
    );
    let raw = inner(1, false);
    let layered = SseLayer::new().layer(inner(1, false));
    eprintln!(
        "response future raw / layered     {} / {}",
        std::mem::size_of_val(&raw.clone().oneshot(Request::new(()))),
        std::mem::size_of_val(&layered.clone().oneshot(Request::new(()))),
    );

    let rt = runtime();
    let with_shutdown = SseLayer::new()
        .shutdown_token(CancellationToken::new())
        .layer(inner(1, false));
    let measured = (|| {
        let raw = heap_per_response(&rt, &raw)?;
        let layered = heap_per_response(&rt, &layered)?;
        let with_shutdown = heap_per_response(&rt, &with_shutdown)?;
        Some((raw, layered, with_shutdown))
    })();
    match measured {
        Some((raw, layered, with_shutdown)) => {
            eprintln!("--- heap per stream, from resident memory over {LEAKED} streams ---");
            eprintln!("unwrapped response                {raw:.0}");
            eprintln!("through SseLayer                  {layered:.0}");
            eprintln!("through SseLayer + shutdown token {with_shutdown:.0}");
            eprintln!(
                "layer's own heap per stream       {:.0} (with a shutdown token {:.0})",
                layered - raw,
                with_shutdown - raw
            );
        }
        None => eprintln!("heap per stream: no /proc/self/statm on this platform"),
    }
    eprintln!("---");
}

/// One clock read, which the layer makes per frame of a timed stream: it puts the per-frame
/// overhead in proportion on the machine at hand (virtual machines often have slow clocks).
fn clock_group(c: &mut Criterion) {
    let rt = runtime();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("clock");
    group.bench_function("tokio_instant_now", |b| b.iter(tokio::time::Instant::now));
    group.bench_function("std_instant_now", |b| b.iter(std::time::Instant::now));
    group.finish();
}

criterion_group!(benches, drain_group, open_group, clock_group);
criterion_main!(benches);

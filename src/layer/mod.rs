//! [`SseLayer`]: the tower middleware that makes any event stream production-grade.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response};
//! use http_body_util::BodyExt;
//! use tokio_util::sync::CancellationToken;
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_sse::{Event, SseLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let shutdown = CancellationToken::new();
//! let layer = SseLayer::new()
//!     .heartbeat_interval(Duration::from_secs(15))
//!     .idle_timeout(Duration::from_secs(300))
//!     .shutdown_token(shutdown.clone())
//!     .farewell(Event::builder().event("bye").data("").retry(Duration::from_secs(5)).build()?);
//!
//! // Any service whose responses are `http::Response<impl http_body::Body>`.
//! let svc = layer.layer(service_fn(|_req: Request<()>| async {
//!     let events = futures_util::stream::iter([Event::message("hello")]);
//!     Ok::<_, std::convert::Infallible>(tower_sse::response(events))
//! }));
//!
//! let res = svc.oneshot(Request::new(())).await?;
//! assert_eq!(res.headers()["cache-control"], "no-cache");
//! assert_eq!(res.headers()["connection"], "keep-alive"); // HTTP/1.1 only
//! assert_eq!(res.headers()["x-accel-buffering"], "no");
//! let body = res.into_body().collect().await?.to_bytes();
//! assert_eq!(&body[..], b"data: hello\n\n");
//! # Ok(())
//! # }
//! ```
//!
//! # What it does to an event stream
//!
//! A response is an event stream when its `Content-Type` is `text/event-stream` (case and
//! parameters aside). Every other response passes through with its headers and bytes
//! untouched, so the layer can sit on a whole router or a gRPC stack.
//!
//! - **Headers**: `Cache-Control: no-cache` unless the handler set one, `Connection:
//!   keep-alive` for HTTP/1.x only (it is forbidden in HTTP/2 and removed there),
//!   `X-Accel-Buffering: no` (configurable), no `Content-Length`.
//! - **Heartbeats** after a quiet interval, only ever between two events: the layer tracks
//!   event boundaries in the inner body's bytes, whatever its framing.
//! - **Idle timeout** on real data (heartbeats do not count), **maximum lifetime** with
//!   jitter, and **cancellation** through a [`CancellationToken`] with an optional farewell.
//!   One timer per stream at most; no task is spawned.
//! - **Cleanup**: when the body is dropped (the client went away), the stream's token is
//!   cancelled, so a task producing its events stops at once.
//!
//! The handler finds the stream's token and the client's validated `Last-Event-ID` in the
//! [`SseContext`] request extension.
//!
//! Timers use tokio's clock, so event streams must be polled inside a tokio runtime with
//! time enabled (every tokio-based server does this).
//!
//! # Graceful shutdown
//!
//! The shutdown token ends *event streams*. Other endless responses the layer passes
//! through, such as a gRPC server stream (tonic health's `Watch`), still hold a graceful
//! shutdown open: give the server a grace timeout for those.
//!
//! # Bare hyper
//!
//! hyper's own `service_fn` is not a tower service. Build the handler with
//! `tower::service_fn`, wrap it with the layer, and hand it to hyper through
//! `hyper_util::service::TowerToHyperService` (see `examples/hyper.rs`). Routes that return
//! both streams and plain bodies can box them: `tower_sse::response(s).map(BodyExt::boxed)`.
//!
//! # Memory per stream
//!
//! The layer adds one allocation per event stream (its timer, boundary tracker and
//! timestamps) and a small shared [`SseContext`]; a cancellation token and its waiter only
//! when a shutdown token is set or the handler takes the stream's token. Most of an idle
//! stream's memory is the server's: hyper's plain HTTP/1.1 builder holds about 11 KB per
//! connection, `axum::serve` about 21 KB (a larger read buffer in hyper-util's HTTP/1-or-2
//! builder and a router clone per connection). The README shows an axum router served on
//! the plain builder; BENCHMARKS.md has the measurements.
//!
//! [`CancellationToken`]: tokio_util::sync::CancellationToken

mod body;
mod boundary;
mod context;
mod future;
#[allow(clippy::module_inception)]
mod layer;
mod service;

pub use body::ResponseBody;
#[cfg(feature = "axum")]
pub use context::MissingSseLayer;
pub use context::SseContext;
pub use future::ResponseFuture;
pub use layer::{SseLayer, DEFAULT_HEARTBEAT_INTERVAL};
pub use service::Sse;

pub(crate) use context::StreamEnd;
pub(crate) use layer::Config;

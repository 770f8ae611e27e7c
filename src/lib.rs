//! Production-grade [Server-Sent Events] for any [tower] server: axum, tonic, hyper, or your own.
//!
//! # Example
//!
//! ```
//! use tower_sse::Event;
//!
//! # fn main() -> Result<(), tower_sse::EventError> {
//! let event = Event::builder().event("greeting").id("1").data("hello\nworld").build()?;
//! assert_eq!(
//!     event.as_bytes(),
//!     &b"event: greeting\nid: 1\ndata: hello\ndata: world\n\n"[..]
//! );
//! # Ok(())
//! # }
//! ```
//!
//! - [`event`]: [`Event`], encoded once into the exact bytes a spec-following client decodes.
//! - [`layer`]: [`SseLayer`], headers, heartbeats, timeouts and shutdown for every event
//!   stream a service returns.
//! - [`manager`]: [`ConnectionManager`], every open stream tracked: send to one, a key, a
//!   topic or all; complete, evict, replay by `Last-Event-ID`.
//! - [`stream`]: [`response`], any `Stream` of events as an `http::Response`.
//! - [`last_event_id`]: the reconnecting client's `Last-Event-ID`, validated.
//! - [`backplane`]: several managers as one hub (Redis, with the `redis` feature).
//! - `listener` (feature `listener`): `GuardedListener`, a TCP listener that aborts
//!   connections whose writes stall and refuses connections past a cap with `503`.
//!
//! [Server-Sent Events]: https://html.spec.whatwg.org/multipage/server-sent-events.html
//! [tower]: https://docs.rs/tower
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backplane;
pub mod event;
pub mod last_event_id;
pub mod layer;
#[cfg(feature = "listener")]
#[cfg_attr(docsrs, doc(cfg(feature = "listener")))]
pub mod listener;
pub mod manager;
pub mod stream;
pub mod telemetry;

pub use event::{Event, EventBuilder, EventError, EventType, Field, KEEP_ALIVE};
pub use last_event_id::{InvalidLastEventId, LastEventId};
pub use layer::{
    FinishedPrefix, InvalidFinishedPrefix, Sse, SseContext, SseLayer, StreamEnd,
    DEFAULT_FINISHED_PREFIX,
};
pub use manager::{
    CloseReason, Completion, Connect, ConnectError, Connection, ConnectionBody, ConnectionHandle,
    ConnectionId, ConnectionManager, Delivery, ManagerBuilder, Replay, SendError,
    SlowConsumerPolicy, Stats, StreamAborted, SubscribeError,
};
pub use stream::{response, EventStreamBody, IntoEvent};

/// The token that ends streams on shutdown ([`SseLayer::shutdown_token`]) and that a
/// stream's producer watches ([`SseContext::cancellation_token`]), re-exported from
/// `tokio-util`.
pub use tokio_util::sync::CancellationToken;

/// A type-erased error, as body errors are.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The README's examples, compiled as doc tests so they stay correct.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

use std::sync::atomic::{fence, AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

use crate::{InvalidLastEventId, LastEventId};

/// What [`SseLayer`](super::SseLayer) tells the handler about the stream it may answer with,
/// as a request extension.
///
/// ```
/// use http::{Request, Response};
/// use tower::{service_fn, ServiceExt, Layer};
/// use tower_sse::{Event, SseContext, SseLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let svc = SseLayer::new().layer(service_fn(|req: Request<()>| async move {
///     let ctx = req.extensions().get::<SseContext>().cloned().expect("set by SseLayer");
///     // Resume after the client's last id, or refuse a malformed one.
///     let start = match ctx.last_event_id() {
///         Ok(Some(id)) => id.as_str().parse::<u64>().unwrap_or(0) + 1,
///         Ok(None) => 0,
///         Err(_invalid) => 0,
///     };
///     // The token is cancelled when the stream ends for any reason, client gone included.
///     let token = ctx.cancellation_token();
///     let events = futures_util::stream::iter((start..start + 2).map(|i| {
///         Event::builder().id(i.to_string()).data("tick").build()
///     }));
///     # let _ = token;
///     Ok::<_, std::convert::Infallible>(tower_sse::response(events))
/// }));
/// let req = Request::builder().header("last-event-id", "41").body(())?;
/// let res = svc.oneshot(req).await?;
/// # use http_body_util::BodyExt;
/// let body = res.into_body().collect().await?.to_bytes();
/// assert_eq!(&body[..], b"id: 42\ndata: tick\n\nid: 43\ndata: tick\n\n");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct SseContext {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: Option<CancellationToken>,
    /// Made on first use: requests that never become streams pay nothing for it.
    token: OnceLock<CancellationToken>,
    last_event_id: Result<Option<LastEventId>, InvalidLastEventId>,
    /// Why the layer ended the stream, if it did (a [`StreamEnd`] as `u8`).
    end: AtomicU8,
    /// The stream is over (or never started): a token made from now on is born cancelled.
    closed: AtomicBool,
}

/// Why the layer ended a stream; read by the connection manager to name a close reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum StreamEnd {
    /// The layer did not end it: the inner body ended, or the client went away.
    NotByLayer = 0,
    IdleTimeout = 1,
    Lifetime = 2,
    Cancelled = 3,
}

impl SseContext {
    pub(crate) fn new(
        root: Option<CancellationToken>,
        last_event_id: Result<Option<LastEventId>, InvalidLastEventId>,
    ) -> Self {
        SseContext {
            inner: Arc::new(Inner {
                root,
                token: OnceLock::new(),
                last_event_id,
                end: AtomicU8::new(StreamEnd::NotByLayer as u8),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// The stream's own token: a child of the layer's
    /// [shutdown token](super::SseLayer::shutdown_token), if one was given.
    ///
    /// It is cancelled when the stream ends for any reason (completed, timed out, shut down,
    /// or the client went away), so a task producing events can stop at once. Cancelling it
    /// ends this stream only, after the farewell event if one is configured.
    ///
    /// The token is made on first call, and a stream whose handler never asks for one
    /// carries none. Take it before returning the response: cancelling a token first taken
    /// once the stream is running still ends the stream, but only when the body is next
    /// polled (the next event or heartbeat). A token taken after the stream ended is
    /// already cancelled.
    pub fn cancellation_token(&self) -> CancellationToken {
        let token = self
            .inner
            .token
            .get_or_init(|| match &self.inner.root {
                Some(root) => root.child_token(),
                None => CancellationToken::new(),
            })
            .clone();
        // Pairs with the fence in `close`: either it sees this token, or this sees `closed`.
        fence(Ordering::SeqCst);
        if self.inner.closed.load(Ordering::Relaxed) {
            token.cancel();
        }
        token
    }

    /// The stream's token if a handler took it.
    pub(crate) fn token_if_created(&self) -> Option<&CancellationToken> {
        self.inner.token.get()
    }

    /// The layer's shutdown token, if it has one.
    pub(crate) fn shutdown_token(&self) -> Option<&CancellationToken> {
        self.inner.root.as_ref()
    }

    /// The `Last-Event-ID` the client sent, validated.
    ///
    /// # Errors
    ///
    /// The header was present but malformed: too long, not UTF-8, a control character, or
    /// repeated. The value itself is never exposed.
    pub fn last_event_id(&self) -> Result<Option<&LastEventId>, InvalidLastEventId> {
        match &self.inner.last_event_id {
            Ok(id) => Ok(id.as_ref()),
            Err(e) => Err(*e),
        }
    }

    /// The stream is over, or will never start (the response was not a stream, or the
    /// request was abandoned): cancels the stream's token if a handler took it, and any
    /// token taken later.
    /// Only the first call does anything.
    pub(crate) fn close(&self) {
        if self.inner.closed.swap(true, Ordering::Relaxed) {
            // Already closed: the token that existed then was cancelled, and one made
            // since saw `closed` and was born cancelled.
            return;
        }
        // Pairs with the fence in `cancellation_token`.
        fence(Ordering::SeqCst);
        if let Some(token) = self.inner.token.get() {
            token.cancel();
        }
    }

    pub(crate) fn set_end(&self, end: StreamEnd) {
        self.inner.end.store(end as u8, Ordering::Relaxed);
    }

    pub(crate) fn end(&self) -> StreamEnd {
        match self.inner.end.load(Ordering::Relaxed) {
            1 => StreamEnd::IdleTimeout,
            2 => StreamEnd::Lifetime,
            3 => StreamEnd::Cancelled,
            _ => StreamEnd::NotByLayer,
        }
    }
}

/// Refusal of the [`SseContext`] extractor: the route is not behind an [`SseLayer`](super::SseLayer).
///
/// Answers `500 Internal Server Error`: it is a wiring mistake, not the client's.
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[derive(Debug, Clone, Copy)]
pub struct MissingSseLayer(());

#[cfg(feature = "axum")]
impl std::fmt::Display for MissingSseLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SseContext missing: put SseLayer around this route")
    }
}

#[cfg(feature = "axum")]
impl std::error::Error for MissingSseLayer {}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for MissingSseLayer {
    fn into_response(self) -> axum_core::response::Response {
        let mut response =
            axum_core::response::Response::new(axum_core::body::Body::from(self.to_string()));
        *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        response
    }
}

/// With the `axum` feature, a handler takes `ctx: SseContext` directly.
///
/// ```
/// # #[cfg(feature = "axum")] {
/// use axum::{routing::get, Router};
/// use tower_sse::{SseContext, SseLayer};
///
/// async fn events(ctx: SseContext) -> String {
///     format!("{:?}", ctx.last_event_id())
/// }
/// let app: Router = Router::new().route("/events", get(events)).layer(SseLayer::new());
/// # let _ = app;
/// # }
/// ```
#[cfg(feature = "axum")]
impl<S: Send + Sync> axum_core::extract::FromRequestParts<S> for SseContext {
    type Rejection = MissingSseLayer;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<SseContext>()
            .cloned()
            .ok_or(MissingSseLayer(()))
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum_core::extract::OptionalFromRequestParts<S> for SseContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<SseContext>().cloned())
    }
}

use std::fmt;
use std::future::Future;
use std::sync::atomic::{fence, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

use super::{Config, FinishedPrefix};
use crate::{Event, InvalidLastEventId, LastEventId};

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
    /// The layer's configuration: its shutdown token and finished prefix.
    config: Arc<Config>,
    /// Made on first use: requests that never become streams pay nothing for it.
    token: OnceLock<CancellationToken>,
    last_event_id: Result<Option<LastEventId>, InvalidLastEventId>,
    /// How the stream ended: 0 while it runs, else a [`StreamEnd`] as `u8`. Set once; a token
    /// made after it is set is born cancelled.
    end: AtomicU8,
    /// Made by the first [`SseContext::closed`], cancelled once `end` is set (or born
    /// cancelled after): the same handshake as `token`, and nothing for streams nobody
    /// asks about.
    ended: OnceLock<CancellationToken>,
}

/// How an event stream ended, as [`SseContext::end_reason`] and [`SseContext::closed`] tell.
///
/// The first reason wins: a stream cancelled by its own token, whose client then leaves
/// while the farewell is being written, ended as [`Cancelled`](StreamEnd::Cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum StreamEnd {
    /// The inner body ended by itself (the handler's stream ran out, or the connection
    /// manager completed or evicted the connection).
    Completed = 1,
    /// This stream's own [token](SseContext::cancellation_token) was cancelled.
    Cancelled = 2,
    /// The layer's [shutdown token](super::SseLayer::shutdown_token) was cancelled.
    Shutdown = 3,
    /// No data for the layer's [idle timeout](super::SseLayer::idle_timeout).
    IdleTimeout = 4,
    /// The layer's [maximum lifetime](super::SseLayer::max_lifetime) was reached.
    Lifetime = 5,
    /// The body was dropped before it ended: the client went away, or the server gave up on
    /// the response (a request abandoned before the handler answered ends this way too).
    ClientGone = 6,
    /// The inner body returned an error (or the inner service did, so no stream started).
    Error = 7,
    /// The handler answered with a response that is not an event stream: none ever started.
    NotAStream = 8,
}

impl StreamEnd {
    pub(crate) const ALL: [StreamEnd; 8] = [
        StreamEnd::Completed,
        StreamEnd::Cancelled,
        StreamEnd::Shutdown,
        StreamEnd::IdleTimeout,
        StreamEnd::Lifetime,
        StreamEnd::ClientGone,
        StreamEnd::Error,
        StreamEnd::NotAStream,
    ];

    /// A short lowercase name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamEnd::Completed => "completed",
            StreamEnd::Cancelled => "cancelled",
            StreamEnd::Shutdown => "shutdown",
            StreamEnd::IdleTimeout => "idle_timeout",
            StreamEnd::Lifetime => "lifetime",
            StreamEnd::ClientGone => "client_gone",
            StreamEnd::Error => "error",
            StreamEnd::NotAStream => "not_a_stream",
        }
    }

    fn from_u8(n: u8) -> Option<StreamEnd> {
        StreamEnd::ALL.into_iter().find(|e| *e as u8 == n)
    }
}

impl fmt::Display for StreamEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SseContext {
    pub(crate) fn new(
        config: Arc<Config>,
        last_event_id: Result<Option<LastEventId>, InvalidLastEventId>,
    ) -> Self {
        SseContext {
            inner: Arc::new(Inner {
                config,
                token: OnceLock::new(),
                last_event_id,
                end: AtomicU8::new(0),
                ended: OnceLock::new(),
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
            .get_or_init(|| match &self.inner.config.shutdown {
                Some(root) => root.child_token(),
                None => CancellationToken::new(),
            })
            .clone();
        // Pairs with the fence in `close`: either it sees this token, or this sees `end`.
        fence(Ordering::SeqCst);
        if self.inner.end.load(Ordering::Relaxed) != 0 {
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
        self.inner.config.shutdown.as_ref()
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

    /// How the stream ended, or `None` while it runs.
    ///
    /// Set as soon as the end is decided: when the layer ends the stream (shutdown, its own
    /// token, idle timeout, lifetime) the reason is set before the farewell is written and
    /// before the inner body is dropped. So an inner body that reads it in its `Drop` sees
    /// the layer's reason, and `None` there means the client went away (the layer records
    /// [`StreamEnd::ClientGone`] right after the inner body is dropped).
    pub fn end_reason(&self) -> Option<StreamEnd> {
        StreamEnd::from_u8(self.inner.end.load(Ordering::Acquire))
    }

    /// Resolves with the stream's [end reason](Self::end_reason) once it is over, for any
    /// reason: the client went away, the layer ended it, its inner body ended or failed, or
    /// it never became a stream (the handler answered with something else).
    ///
    /// Like [`tokio::sync::mpsc::Sender::closed`], it lets a handler that answers with
    /// [`response(stream)`](crate::response) learn how its stream ended without watching
    /// it:
    ///
    /// ```
    /// use http::Request;
    /// use tower::{service_fn, Layer, ServiceExt};
    /// use tower_sse::{Event, SseContext, SseLayer, StreamEnd};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let (tx, rx) = tokio::sync::oneshot::channel();
    /// let tx = std::sync::Mutex::new(Some(tx));
    /// let svc = SseLayer::new().layer(service_fn(move |req: Request<()>| {
    ///     let ctx = req.extensions().get::<SseContext>().cloned().expect("set by SseLayer");
    ///     let tx = tx.lock().unwrap().take();
    ///     tokio::spawn(async move {
    ///         let end = ctx.closed().await;
    ///         // Stop a ticker, count a metric, log...
    ///         if let Some(tx) = tx { let _ = tx.send(end); }
    ///     });
    ///     async {
    ///         let events = futures_util::stream::iter([Event::message("only one")]);
    ///         Ok::<_, std::convert::Infallible>(tower_sse::response(events))
    ///     }
    /// }));
    /// let res = svc.oneshot(Request::new(())).await?;
    /// # use http_body_util::BodyExt;
    /// res.into_body().collect().await?;
    /// assert_eq!(rx.await?, StreamEnd::Completed);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Cancellation safety
    ///
    /// Dropping the future is harmless; a new one resolves the same way.
    pub fn closed(&self) -> impl Future<Output = StreamEnd> + Send + 'static {
        let inner = self.inner.clone();
        let ended = inner.ended.get_or_init(CancellationToken::new).clone();
        // Pairs with the fence in `close`: either it sees `ended`, or this sees `end`.
        fence(Ordering::SeqCst);
        if inner.end.load(Ordering::Relaxed) != 0 {
            ended.cancel();
        }
        async move {
            ended.cancelled().await;
            // `end` is set before `ended` is cancelled.
            StreamEnd::from_u8(inner.end.load(Ordering::Acquire)).unwrap_or(StreamEnd::ClientGone)
        }
    }

    /// The id prefix the layer recognises as the mark of a finished stream (see
    /// [`SseLayer::finished_prefix`](super::SseLayer::finished_prefix)). With finished
    /// streams turned off, the [default](super::DEFAULT_FINISHED_PREFIX): marking an event
    /// with it is harmless, it just is not recognised.
    pub fn finished_prefix(&self) -> &FinishedPrefix {
        self.inner
            .config
            .finished
            .as_ref()
            .unwrap_or(super::DEFAULT_FINISHED_PREFIX)
    }

    /// `event`, marked as the stream's last: its id gets the layer's
    /// [finished prefix](Self::finished_prefix) (see [`Event::finishing`]). Yield it as the
    /// last item of the stream, then end the stream: a client that reconnects with it as
    /// `Last-Event-ID` gets `204 No Content` and stops.
    ///
    /// ```
    /// use futures_util::StreamExt;
    /// use http::Request;
    /// use tower::{service_fn, Layer, ServiceExt};
    /// use tower_sse::{Event, SseContext, SseLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let svc = SseLayer::new().layer(service_fn(|req: Request<()>| async move {
    ///     let ctx = req.extensions().get::<SseContext>().cloned().expect("set by SseLayer");
    ///     let answer = futures_util::stream::iter([Event::message("The answer is 42.")]);
    ///     let end = ctx.finish(Event::builder().event("end").data("").build()?);
    ///     let events = answer.chain(futures_util::stream::once(async { end }));
    ///     Ok::<_, tower_sse::EventError>(tower_sse::response(events))
    /// }));
    ///
    /// let res = svc.clone().oneshot(Request::new(())).await?;
    /// # use http_body_util::BodyExt;
    /// let body = res.into_body().collect().await?.to_bytes();
    /// assert!(body.ends_with(b"id: tower-sse:finished:\nevent: end\ndata: \n\n"));
    ///
    /// // The browser comes back with that id: told to stop, the handler is not called.
    /// let again = Request::builder()
    ///     .header("accept", "text/event-stream")
    ///     .header("last-event-id", "tower-sse:finished:")
    ///     .body(())?;
    /// assert_eq!(svc.oneshot(again).await?.status(), 204);
    /// # Ok(())
    /// # }
    /// ```
    pub fn finish(&self, event: Event) -> Event {
        event.finishing(self.finished_prefix())
    }

    /// The stream is over, or will never start: records why (the first reason wins),
    /// cancels the stream's token if a handler took it (and any token taken later), and
    /// wakes [`closed`](Self::closed) futures. Only the first call does anything.
    pub(crate) fn close(&self, why: StreamEnd) {
        if self
            .inner
            .end
            .compare_exchange(0, why as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Already closed: the token that existed then was cancelled, and one made
            // since saw `end` and was born cancelled.
            return;
        }
        // Pairs with the fences in `cancellation_token` and `closed`.
        fence(Ordering::SeqCst);
        if let Some(token) = self.inner.token.get() {
            token.cancel();
        }
        if let Some(ended) = self.inner.ended.get() {
            ended.cancel();
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

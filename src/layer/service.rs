use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::finished::accepts_event_stream;
use super::{Config, ResponseFuture, SseContext, SseLayer};
use crate::LastEventId;

/// The middleware made by [`SseLayer`]. See the [module example](crate::layer).
#[derive(Debug, Clone)]
pub struct Sse<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Sse<S> {
    /// Wraps `inner` with the default configuration; see [`SseLayer`] for the options.
    pub fn new(inner: S) -> Self {
        Self::from_parts(inner, Arc::default())
    }

    pub(crate) fn from_parts(inner: S, config: Arc<Config>) -> Self {
        Sse { inner, config }
    }

    /// A layer that wraps services with `Sse`.
    pub fn layer() -> SseLayer {
        SseLayer::new()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Sse<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: http_body::Body,
{
    type Response = Response<super::ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        // The one rule for ids: exactly those `Event` accepts come back valid.
        let last_event_id = LastEventId::from_headers(req.headers());
        if let (Ok(Some(id)), Some(prefix)) = (&last_event_id, &self.config.finished) {
            // The client comes back after the stream's last event: tell it to stop.
            if prefix.marks(id.as_str()) && accepts_event_stream(req.headers()) {
                return ResponseFuture::finished();
            }
        }
        let context = SseContext::new(self.config.clone(), last_event_id);
        req.extensions_mut().insert(context.clone());
        let version = req.version();
        ResponseFuture::new(self.inner.call(req), self.config.clone(), context, version)
    }
}

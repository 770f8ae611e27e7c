use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::{CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Version};
use pin_project_lite::pin_project;

use super::{Config, ResponseBody, SseContext, StreamEnd};

const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");
const KEEP_ALIVE_HEADER: HeaderName = HeaderName::from_static("keep-alive");

pin_project! {
    /// Response future of [`Sse`](super::Sse).
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
        // Taken when the response arrives; still here on drop means the request was
        // abandoned, and whatever the handler started for the stream must stop.
        context: Option<SseContext>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            close(this.project().context, StreamEnd::ClientGone);
        }
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        // The inner service was called.
        Call {
            #[pin]
            inner: F,
            config: Arc<Config>,
            version: Version,
        },
        // A reconnect to a finished stream: `204 No Content`, the inner service not called.
        Finished,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        inner: F,
        config: Arc<Config>,
        context: SseContext,
        version: Version,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Call {
                inner,
                config,
                version,
            },
            context: Some(context),
        }
    }

    pub(crate) fn finished() -> Self {
        ResponseFuture {
            kind: Kind::Finished,
            context: None,
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("ResponseFuture");
        match &self.kind {
            Kind::Call { version, .. } => d
                .field("inner", &std::any::type_name::<F>())
                .field("version", version),
            Kind::Finished => d.field("finished", &true),
        };
        d.finish()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let (inner, config, version) = match this.kind.project() {
            KindProj::Call {
                inner,
                config,
                version,
            } => (inner, config, *version),
            KindProj::Finished => {
                let mut response = Response::new(ResponseBody::empty());
                *response.status_mut() = StatusCode::NO_CONTENT;
                return Poll::Ready(Ok(response));
            }
        };
        let response = match ready!(inner.poll(cx)) {
            Ok(response) => response,
            Err(e) => {
                close(this.context, StreamEnd::Error);
                return Poll::Ready(Err(e));
            }
        };
        if !is_event_stream(response.headers()) {
            // Not a stream after all: a token the handler took has nothing left to watch.
            close(this.context, StreamEnd::NotAStream);
            return Poll::Ready(Ok(response.map(ResponseBody::pass_through)));
        }
        let (mut parts, body) = response.into_parts();
        set_stream_headers(&mut parts.headers, config, version);
        let context = match this.context.take() {
            Some(context) => context,
            // Polled again after completion: not reachable through a well-behaved caller.
            None => SseContext::new(config.clone(), Ok(None)),
        };
        let body = ResponseBody::stream(body, config.clone(), context);
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}

/// No stream will come of this request: closes its context (if not handed on already).
fn close(context: &mut Option<SseContext>, why: StreamEnd) {
    if let Some(context) = context.take() {
        context.close(why);
    }
}

/// `Content-Type: text/event-stream`, ignoring case and parameters.
fn is_event_stream(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return false;
    };
    let essence = value
        .as_bytes()
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default();
    essence
        .trim_ascii()
        .eq_ignore_ascii_case(b"text/event-stream")
}

fn set_stream_headers(headers: &mut HeaderMap, config: &Config, version: Version) {
    // The length of an endless stream is unknown; a stale one would truncate it.
    headers.remove(CONTENT_LENGTH);
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, config.cache_control.clone());
    }
    if version <= Version::HTTP_11 {
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
    } else {
        // Connection-specific headers are forbidden in HTTP/2 and HTTP/3 (RFC 9113 §8.2.2);
        // some clients (Safari) drop a stream that carries them.
        headers.remove(CONNECTION);
        headers.remove(KEEP_ALIVE_HEADER);
    }
    if config.x_accel_buffering && !headers.contains_key(X_ACCEL_BUFFERING) {
        headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_detection() {
        let mut h = HeaderMap::new();
        assert!(!is_event_stream(&h));
        for (v, expect) in [
            ("text/event-stream", true),
            ("Text/Event-Stream", true),
            ("text/event-stream; charset=utf-8", true),
            (" text/event-stream ;x=y", true),
            ("text/event-streams", false),
            ("application/json", false),
            ("text/plain", false),
        ] {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(v));
            assert_eq!(is_event_stream(&h), expect, "{v}");
        }
    }
}

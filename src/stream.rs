//! Turn any `Stream` of events into an `http::Response`, in any framework or none.
//!
//! # Example
//!
//! ```
//! use futures_util::stream;
//! use http_body_util::BodyExt;
//! use tower_sse::Event;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let events = stream::iter([Event::message("one"), Event::message("two")]);
//! let response = tower_sse::response(events);
//! assert_eq!(response.headers()["content-type"], "text/event-stream");
//!
//! let bytes = response.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(&bytes[..], b"data: one\n\ndata: two\n\n");
//! # }
//! ```
//!
//! The stream may yield [`Event`]s or `Result<Event, E>`; an `Err` ends the body with that
//! error, which servers answer by closing the connection (the client then reconnects).
//! Events that are ready together are written as one frame, so a burst costs one write.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::{BoxError, Event};

/// Most bytes merged into one frame from events that are ready at once.
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// An item of an event stream: an [`Event`] or a `Result` of one.
pub trait IntoEvent {
    /// Converts the item, or gives the error that ends the stream.
    ///
    /// # Errors
    ///
    /// Whatever error the item carried.
    fn into_event(self) -> Result<Event, BoxError>;
}

impl IntoEvent for Event {
    #[inline]
    fn into_event(self) -> Result<Event, BoxError> {
        Ok(self)
    }
}

impl<E: Into<BoxError>> IntoEvent for Result<Event, E> {
    #[inline]
    fn into_event(self) -> Result<Event, BoxError> {
        self.map_err(Into::into)
    }
}

pin_project! {
    /// An [`http_body::Body`] that writes the events of a `Stream`.
    ///
    /// Made by [`response`] or [`EventStreamBody::new`]; see the [module example](crate::stream).
    pub struct EventStreamBody<S> {
        #[pin]
        stream: S,
        // An error met while merging a batch, returned on the next poll.
        error: Option<BoxError>,
        done: bool,
    }
}

impl<S> EventStreamBody<S> {
    /// Wraps a stream of [`Event`]s or `Result<Event, E>`s.
    pub fn new(stream: S) -> Self {
        EventStreamBody {
            stream,
            error: None,
            done: false,
        }
    }
}

impl<S> fmt::Debug for EventStreamBody<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStreamBody")
            .field("stream", &std::any::type_name::<S>())
            .field("done", &self.done)
            .finish()
    }
}

impl<S> Body for EventStreamBody<S>
where
    S: Stream,
    S::Item: IntoEvent,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Some(e) = this.error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if *this.done {
            return Poll::Ready(None);
        }
        let first = match this.stream.as_mut().poll_next(cx) {
            Poll::Ready(Some(item)) => match item.into_event() {
                Ok(event) => event,
                Err(e) => {
                    *this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            },
            Poll::Ready(None) => {
                *this.done = true;
                return Poll::Ready(None);
            }
            Poll::Pending => return Poll::Pending,
        };
        // Merge whatever else is ready now into one frame. A lone event is not copied.
        let mut batch: Option<BytesMut> = None;
        loop {
            let len = batch.as_ref().map_or(first.len(), BytesMut::len);
            if len >= MAX_BATCH_BYTES {
                break;
            }
            match this.stream.as_mut().poll_next(cx) {
                Poll::Ready(Some(item)) => match item.into_event() {
                    Ok(next) => {
                        let buf = batch.get_or_insert_with(|| {
                            let mut b = BytesMut::with_capacity(first.len() * 4 + next.len());
                            b.extend_from_slice(first.as_bytes());
                            b
                        });
                        buf.extend_from_slice(next.as_bytes());
                    }
                    Err(e) => {
                        // Deliver what came before the error; the error follows next poll.
                        *this.done = true;
                        *this.error = Some(e);
                        break;
                    }
                },
                Poll::Ready(None) => {
                    *this.done = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        let data = match batch {
            Some(buf) => buf.freeze(),
            None => first.into_bytes(),
        };
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.error.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A `200 OK` response with `Content-Type: text/event-stream` and `Cache-Control: no-cache`
/// whose body writes the events of `stream`.
///
/// Works with any server that takes an `http::Response<B: http_body::Body>`. Put
/// [`SseLayer`](crate::SseLayer) around the service for heartbeats, timeouts and shutdown.
/// See the [module example](crate::stream).
pub fn response<S>(stream: S) -> http::Response<EventStreamBody<S>>
where
    S: Stream,
    S::Item: IntoEvent,
{
    event_stream_response(EventStreamBody::new(stream))
}

/// A `200 OK` response with the event-stream headers around any body.
pub(crate) fn event_stream_response<B>(body: B) -> http::Response<B> {
    let mut response = http::Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

//! [`ConnectionBody`]: the response body of one managed connection.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::connection::{Connection, Next};
use super::error::StreamAborted;
use super::hub::Hub;
use super::types::{CloseReason, ConnectionId};
use crate::Event;
use crate::{SseContext, StreamEnd, DEFAULT_FINISHED_PREFIX};

/// The response body of one managed connection: an [`http_body::Body`] of the events sent
/// to it.
///
/// Events waiting together are handed to the server as one frame. Dropping the body (the
/// server does so when the client goes away) removes the connection from the manager at
/// once. A connection closed as a [slow consumer](CloseReason::SlowConsumer) ends with a
/// [`StreamAborted`] error, so the server drops the connection rather than wait to write the
/// end of the response to a client that does not read. Wrap the service in
/// [`SseLayer`](crate::SseLayer) for heartbeats and timeouts.
pub struct ConnectionBody<M: Send + Sync + 'static = ()> {
    conn: Arc<Connection<M>>,
    hub: Arc<Hub<M>>,
    context: Option<SseContext>,
    done: bool,
}

impl<M: Send + Sync + 'static> ConnectionBody<M> {
    pub(crate) fn new(
        conn: Arc<Connection<M>>,
        hub: Arc<Hub<M>>,
        context: Option<SseContext>,
    ) -> Self {
        ConnectionBody {
            conn,
            hub,
            context,
            done: false,
        }
    }

    /// A `200 OK` response with the event-stream headers and this body.
    pub fn into_response(self) -> http::Response<Self> {
        crate::stream::event_stream_response(self)
    }

    /// The connection's id.
    pub fn id(&self) -> ConnectionId {
        self.conn.id()
    }

    /// Why the stream ended, as far as the manager can tell when the body goes away: the
    /// layer's reason if it ended it (the layer records it before it drops this body),
    /// else the client left.
    fn end_reason(&self) -> CloseReason {
        match self.context.as_ref().and_then(SseContext::end_reason) {
            Some(StreamEnd::IdleTimeout) => CloseReason::IdleTimeout,
            Some(StreamEnd::Lifetime) => CloseReason::Lifetime,
            Some(StreamEnd::Shutdown) => CloseReason::Shutdown,
            Some(StreamEnd::Cancelled) => CloseReason::Cancelled,
            _ => CloseReason::ClientGone,
        }
    }

    /// `last` with the id that tells the client the stream is finished for good: a
    /// reconnect with it is answered `204 No Content` by the layer.
    fn finishing(&self, last: Event) -> Event {
        let prefix = self
            .context
            .as_ref()
            .map_or(DEFAULT_FINISHED_PREFIX, SseContext::finished_prefix);
        last.finishing(prefix)
    }
}

impl<M: Send + Sync + 'static> fmt::Debug for ConnectionBody<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionBody")
            .field("id", &self.conn.id())
            .field("done", &self.done)
            .finish()
    }
}

impl<M: Send + Sync + 'static> Body for ConnectionBody<M> {
    type Data = Bytes;
    type Error = StreamAborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamAborted>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.conn.next(cx) {
                Next::Frame(bytes) => {
                    this.conn.set_last_write_ms(this.hub.write_clock());
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Next::Last { event, finished } => {
                    this.done = true;
                    let event = if finished {
                        this.finishing(event)
                    } else {
                        event
                    };
                    return Poll::Ready(Some(Ok(Frame::data(event.into_bytes()))));
                }
                Next::End => this.done = true,
                Next::Abort(reason) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(StreamAborted { reason })));
                }
                Next::Skipped(n) => this.hub.counters.lagged(n),
                Next::Behind => {
                    this.hub.close(
                        &this.conn,
                        CloseReason::SlowConsumer,
                        super::connection::Ending::Now { abort: true },
                    );
                }
                Next::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl<M: Send + Sync + 'static> Drop for ConnectionBody<M> {
    fn drop(&mut self) {
        self.conn.unpark();
        // The stream is over for whatever reason: the manager forgets it now. If it was
        // completing when the client left, this frees what it still held.
        let reason = self.end_reason();
        self.hub.close_or_discard(&self.conn, reason);
    }
}

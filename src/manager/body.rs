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
    tally: Tally,
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

/// What a body has written, for the counters (and the close log).
#[derive(Debug, Default)]
struct Tally {
    writes: u32,
    /// Bytes not yet added to the manager's counters.
    unreported: u64,
    #[cfg(feature = "tracing")]
    events: u64,
    #[cfg(feature = "tracing")]
    bytes: u64,
}

impl<M: Send + Sync + 'static> ConnectionBody<M> {
    pub(crate) fn new(
        conn: Arc<Connection<M>>,
        hub: Arc<Hub<M>>,
        context: Option<SseContext>,
    ) -> Self {
        #[cfg(feature = "tracing")]
        let span = {
            let topics: Vec<_> = conn.topics();
            let span = tracing::debug_span!(
                "sse_stream",
                id = %conn.id(),
                key = conn.key().unwrap_or(""),
                topics = ?topics,
            );
            tracing::debug!(parent: &span, replay = ?conn.replay(), "stream opened");
            span
        };
        ConnectionBody {
            conn,
            hub,
            context,
            done: false,
            tally: Tally::default(),
            #[cfg(feature = "tracing")]
            span,
        }
    }

    /// Counts one write; reports the bytes (and, with metrics, a sample) every
    /// `SAMPLE_EVERY` writes.
    fn tally(&mut self, bytes: usize, events: u32, published_ms: Option<u64>) {
        let t = &mut self.tally;
        t.writes = t.writes.wrapping_add(1);
        #[cfg(feature = "tracing")]
        {
            t.events += u64::from(events);
            t.bytes += bytes as u64;
        }
        let _ = events;
        t.unreported += bytes as u64;
        if t.writes % crate::telemetry::SAMPLE_EVERY == 0 {
            self.hub.counters.written(std::mem::take(&mut t.unreported));
            #[cfg(feature = "metrics")]
            {
                let delay =
                    published_ms.map(|at| self.hub.now_ms().saturating_sub(at) as f64 / 1000.0);
                self.hub.counters.sample(self.conn.queued(), delay);
            }
        }
        let _ = published_ms;
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
                Next::Frame {
                    bytes,
                    events,
                    published_ms,
                } => {
                    this.conn.set_last_write_ms(this.hub.write_clock());
                    this.tally(bytes.len(), events, published_ms);
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Next::Last { event, finished } => {
                    this.done = true;
                    let event = if finished {
                        this.finishing(event)
                    } else {
                        event
                    };
                    this.tally(event.len(), 1, None);
                    return Poll::Ready(Some(Ok(Frame::data(event.into_bytes()))));
                }
                Next::End => this.done = true,
                Next::Abort(reason) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(StreamAborted { reason })));
                }
                Next::Skipped(n) => {
                    this.hub.counters.lagged(n);
                    #[cfg(feature = "tracing")]
                    if let Some(left_out) = this.hub.lag_warnings.allow() {
                        tracing::warn!(
                            parent: &this.span,
                            skipped = n,
                            similar_warnings_left_out = left_out,
                            "slow consumer skipped events"
                        );
                    }
                }
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
        self.hub.counters.written(self.tally.unreported);
        #[cfg(feature = "tracing")]
        tracing::debug!(
            parent: &self.span,
            reason = %self.conn.close_reason().unwrap_or(reason),
            lifetime_ms = self.conn.connected_at().elapsed().as_millis() as u64,
            events = self.tally.events,
            bytes = self.tally.bytes,
            "stream closed"
        );
    }
}

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use super::core::Shared;
use super::ring::Broadcast;
use super::types::{CloseReason, ConnectionId, Replay, SendError, SlowConsumerPolicy};
use crate::layer::StreamEnd;
use crate::{Event, SseContext};

/// Most bytes merged into one frame when several events are queued.
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// One open (or just closed) connection, as hooks and filters see it.
pub struct Connection<M = ()> {
    pub(crate) id: ConnectionId,
    pub(crate) key: Option<Arc<str>>,
    pub(crate) topics: Box<[Arc<str>]>,
    pub(crate) meta: M,
    pub(crate) connected_at: Instant,
    pub(crate) replay: Replay,
    /// Milliseconds since the manager's epoch when an event was last handed to the server.
    pub(crate) last_write_ms: AtomicU64,
    pub(crate) lagged: AtomicU64,
    /// Position in the broadcast ring: the next published event this connection will send.
    pub(crate) cursor: AtomicU64,
    pub(crate) broadcast: Arc<Broadcast>,
    pub(crate) queue: Mutex<Queue>,
}

#[derive(Debug)]
pub(crate) struct Queue {
    /// Events sent to this connection alone (or to its key, topic or a filter), each
    /// stamped with the broadcast ring's end when it was sent: ring events numbered below
    /// the stamp go out before it, so the connection sees one order.
    pub(crate) events: VecDeque<(u64, Bytes)>,
    /// Replayed events still queued: they do not count against the queue's capacity.
    pub(crate) replay_allowance: usize,
    waker: Option<Waker>,
    pub(crate) state: State,
    pub(crate) reason: Option<CloseReason>,
    /// While draining: ring events numbered below this were published before the close and
    /// are still delivered.
    pub(crate) drain_until: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum State {
    Open,
    /// Deliver what is queued, then the final event, then end.
    Draining(Option<Bytes>),
    /// End at once; the queue was discarded.
    Ended,
}

/// Result of offering an event to one connection's queue.
pub(crate) enum Offer {
    Queued,
    /// Queued after dropping the oldest event.
    Lagged,
    /// The queue is full and the policy is to disconnect: the caller closes the connection.
    Full,
    Closed(Option<CloseReason>),
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of our locks cannot leave the data half-updated in a way
    // that matters more than losing the connection; never propagate poisoning.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<M> Connection<M> {
    /// The connection's unique id.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// The key it was registered under, if any.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The topics it is subscribed to.
    pub fn topics(&self) -> impl Iterator<Item = &str> + '_ {
        self.topics.iter().map(|t| &**t)
    }

    /// Whether it is subscribed to `topic`.
    pub fn has_topic(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| &**t == topic)
    }

    /// The metadata given at connect time.
    pub fn meta(&self) -> &M {
        &self.meta
    }

    /// When it connected.
    pub fn connected_at(&self) -> Instant {
        self.connected_at
    }

    /// How the connection started, as far as replay goes.
    pub fn replay(&self) -> Replay {
        self.replay
    }

    /// Events dropped for this connection under [`SlowConsumerPolicy::DropOldest`],
    /// including published events it has fallen too far behind to send.
    pub fn lagged(&self) -> u64 {
        let start = self.broadcast.start_at(self.broadcast.end());
        let deficit = start.saturating_sub(self.cursor.load(Ordering::Relaxed));
        self.lagged.load(Ordering::Relaxed) + deficit
    }

    /// Events queued and not yet handed to the server.
    pub fn queued(&self) -> usize {
        let q = lock(&self.queue);
        q.events.len() + self.ring_backlog(&q) as usize
    }

    /// Published events still to send: from the cursor (or the oldest still held) to the
    /// ring's end, or to where a draining connection stops.
    fn ring_backlog(&self, q: &Queue) -> u64 {
        let limit = match q.state {
            State::Open => u64::MAX,
            State::Draining(_) => q.drain_until,
            State::Ended => return 0,
        };
        let end = self.broadcast.end();
        let from = self
            .cursor
            .load(Ordering::Relaxed)
            .max(self.broadcast.start_at(end));
        end.min(limit).saturating_sub(from)
    }

    pub(crate) fn new(
        id: ConnectionId,
        key: Option<Arc<str>>,
        topics: Box<[Arc<str>]>,
        meta: M,
        connected_at: Instant,
        now_ms: u64,
        broadcast: Arc<Broadcast>,
    ) -> Self {
        // Made under the manager's history lock: live published events start here, earlier
        // ones come from the replay.
        let cursor = broadcast.end();
        Connection {
            id,
            key,
            topics,
            meta,
            connected_at,
            replay: Replay::Fresh,
            last_write_ms: AtomicU64::new(now_ms),
            lagged: AtomicU64::new(0),
            cursor: AtomicU64::new(cursor),
            broadcast,
            queue: Mutex::new(Queue {
                events: VecDeque::new(),
                replay_allowance: 0,
                waker: None,
                state: State::Open,
                reason: None,
                drain_until: 0,
            }),
        }
    }

    /// Offers `bytes` to the queue, never waiting. `stamp` is the broadcast ring's end now;
    /// `capacity` and `policy` are the manager's.
    pub(crate) fn offer(
        &self,
        bytes: &Bytes,
        stamp: u64,
        capacity: usize,
        policy: SlowConsumerPolicy,
    ) -> Offer {
        let mut q = lock(&self.queue);
        if q.state != State::Open {
            return Offer::Closed(q.reason);
        }
        let mut offer = Offer::Queued;
        let bound = capacity + q.replay_allowance;
        match policy {
            // The bound covers the whole backlog: this queue and the published events not
            // yet sent.
            SlowConsumerPolicy::Disconnect
                if q.events.len() + self.ring_backlog(&q) as usize >= bound =>
            {
                return Offer::Full;
            }
            // Dropping makes room in this queue only; the ring drops its own oldest.
            SlowConsumerPolicy::DropOldest if q.events.len() >= bound => {
                q.events.pop_front();
                self.lagged.fetch_add(1, Ordering::Relaxed);
                offer = Offer::Lagged;
            }
            _ => {}
        }
        q.events.push_back((stamp, bytes.clone()));
        let waker = q.waker.take();
        drop(q);
        if let Some(w) = waker {
            w.wake();
        }
        offer
    }

    /// Ends the queue whatever its state and frees it. Returns how many events it held.
    pub(crate) fn discard(&self) -> usize {
        let mut q = lock(&self.queue);
        let unsent = q.events.len() + self.ring_backlog(&q) as usize;
        q.state = State::Ended;
        q.replay_allowance = 0;
        q.events = VecDeque::new();
        unsent
    }

    /// Moves the queue out of `Open`. Returns how many queued events were discarded, or
    /// `None` if it was not open.
    pub(crate) fn end(&self, state: State, reason: CloseReason, ring_end: u64) -> Option<usize> {
        let mut q = lock(&self.queue);
        if q.state != State::Open {
            return None;
        }
        q.reason = Some(reason);
        q.drain_until = ring_end;
        let discarded = if state == State::Ended {
            let n = q.events.len() + self.ring_backlog(&q) as usize;
            q.events = VecDeque::new();
            n
        } else {
            0
        };
        q.state = state;
        let waker = q.waker.take();
        drop(q);
        if let Some(w) = waker {
            w.wake();
        }
        Some(discarded)
    }
}

impl<M> fmt::Debug for Connection<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("topics", &self.topics)
            .field("replay", &self.replay)
            .finish_non_exhaustive()
    }
}

/// A handle to one connection: send to it, complete it, evict it, from anywhere.
///
/// Cloning is cheap. Holding a handle does not keep the connection open: when the client
/// goes away, operations return [`SendError::Closed`] or `false`.
pub struct ConnectionHandle<M = ()> {
    pub(crate) conn: Arc<Connection<M>>,
    pub(crate) shared: Arc<Shared<M>>,
}

impl<M> Clone for ConnectionHandle<M> {
    fn clone(&self) -> Self {
        ConnectionHandle {
            conn: self.conn.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<M> fmt::Debug for ConnectionHandle<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ConnectionHandle").field(&self.conn).finish()
    }
}

impl<M> std::ops::Deref for ConnectionHandle<M> {
    type Target = Connection<M>;

    fn deref(&self) -> &Connection<M> {
        &self.conn
    }
}

impl<M: Send + Sync + 'static> ConnectionHandle<M> {
    /// Queues `event` for this connection only. Not recorded in the replay history.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] if the connection closed or is completing,
    /// [`SendError::SlowConsumer`] if its queue was full and the policy disconnected it.
    pub fn send(&self, event: Event) -> Result<(), SendError> {
        self.shared.send_to_conn(&self.conn, event.as_bytes())
    }

    /// Delivers what is queued, then ends the stream. Returns `false` if it had already
    /// closed or was completing.
    pub fn complete(&self) -> bool {
        self.shared
            .close(&self.conn, State::Draining(None), CloseReason::Completed)
    }

    /// Delivers what is queued, then `last`, then ends the stream.
    pub fn complete_with(&self, last: Event) -> bool {
        self.shared.close(
            &self.conn,
            State::Draining(Some(last.into_bytes())),
            CloseReason::Completed,
        )
    }

    /// Delivers what is queued, then the error event `error`, then ends the stream.
    pub fn complete_with_error(&self, error: Event) -> bool {
        self.shared.close(
            &self.conn,
            State::Draining(Some(error.into_bytes())),
            CloseReason::CompletedWithError,
        )
    }

    /// Ends the stream at once, discarding what is queued.
    pub fn evict(&self) -> bool {
        self.shared
            .close(&self.conn, State::Ended, CloseReason::Evicted)
    }

    /// Whether the connection has closed (or is completing).
    pub fn is_closed(&self) -> bool {
        lock(&self.conn.queue).state != State::Open
    }
}

/// The response body of one managed connection: an [`http_body::Body`] of the events
/// queued for it.
///
/// Several queued events are handed to the server as one frame. Dropping the body (the
/// server does so when the client goes away) removes the connection from the manager at
/// once. Wrap the service in [`SseLayer`](crate::SseLayer) for heartbeats and timeouts.
pub struct ConnectionBody<M: Send + Sync + 'static = ()> {
    conn: Arc<Connection<M>>,
    shared: Arc<Shared<M>>,
    context: Option<SseContext>,
    done: bool,
}

impl<M: Send + Sync + 'static> ConnectionBody<M> {
    pub(crate) fn new(
        conn: Arc<Connection<M>>,
        shared: Arc<Shared<M>>,
        context: Option<SseContext>,
    ) -> Self {
        ConnectionBody {
            conn,
            shared,
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
        self.conn.id
    }
}

impl<M: Send + Sync + 'static> fmt::Debug for ConnectionBody<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionBody")
            .field("id", &self.conn.id)
            .field("done", &self.done)
            .finish()
    }
}

impl<M: Send + Sync + 'static> Body for ConnectionBody<M> {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let mut q = lock(&this.conn.queue);
            let limit = match q.state {
                State::Open => u64::MAX,
                State::Draining(_) => q.drain_until,
                State::Ended => {
                    this.done = true;
                    return Poll::Ready(None);
                }
            };
            let mut cursor = this.conn.cursor.load(Ordering::Relaxed);
            let mut batch = Batch::Empty;
            let mut own = 0;
            {
                let ring = this.conn.broadcast.read();
                let start = ring.start().min(limit);
                if cursor < start {
                    // Published events this connection never sent are gone from the ring.
                    let missed = start - cursor;
                    drop(ring);
                    drop(q);
                    if this.shared.lagged(&this.conn, missed) {
                        this.conn.cursor.store(cursor + missed, Ordering::Relaxed);
                        continue;
                    }
                    this.done = true;
                    return Poll::Ready(None);
                }
                let ring_end = ring.end().min(limit);
                // Merge the two sources in the order they were sent, up to one batch.
                while batch.len() < MAX_BATCH_BYTES {
                    let stamp = q.events.front().map(|(stamp, _)| *stamp);
                    if cursor < ring_end && stamp.map_or(true, |s| cursor < s) {
                        if let Some(bytes) = ring.get(cursor) {
                            batch.push(bytes);
                        }
                        cursor += 1;
                    } else if let Some((_, bytes)) = q.events.pop_front() {
                        batch.push(&bytes);
                        own += 1;
                    } else {
                        break;
                    }
                }
            }
            this.conn.cursor.store(cursor, Ordering::Relaxed);
            if let Some(data) = batch.finish() {
                q.replay_allowance = q.replay_allowance.saturating_sub(own);
                drop(q);
                this.conn.last_write_ms.store(
                    this.shared.clock_ms.load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            // Still under the lock that saw it `Open` or `Draining` above.
            if let State::Draining(last) = &mut q.state {
                let last = last.take();
                q.state = State::Ended;
                drop(q);
                return match last {
                    Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                    None => {
                        this.done = true;
                        Poll::Ready(None)
                    }
                };
            }
            if !q.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                q.waker = Some(cx.waker().clone());
            }
            drop(q);
            // Parked on the ring too; read again if a publish slipped in meanwhile.
            if this.conn.broadcast.park(this.conn.id.0, cursor, cx.waker()) {
                continue;
            }
            return Poll::Pending;
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
        self.conn.broadcast.unpark(self.conn.id.0);
        // The stream is over for whatever reason: make sure the manager forgets it now.
        let reason = match self.context.as_ref().map(SseContext::end) {
            Some(StreamEnd::IdleTimeout) => CloseReason::IdleTimeout,
            Some(StreamEnd::Lifetime) => CloseReason::Lifetime,
            Some(StreamEnd::Cancelled) => CloseReason::Shutdown,
            _ => CloseReason::ClientGone,
        };
        // If it was completing when the client left, this frees what it still held.
        self.shared.close_or_discard(&self.conn, reason);
    }
}

/// The events of one frame: a lone event is handed on as it is, several are copied into
/// one buffer.
enum Batch {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Batch {
    fn len(&self) -> usize {
        match self {
            Batch::Empty => 0,
            Batch::One(b) => b.len(),
            Batch::Many(b) => b.len(),
        }
    }

    fn push(&mut self, bytes: &Bytes) {
        match self {
            Batch::Empty => *self = Batch::One(bytes.clone()),
            Batch::One(first) => {
                let mut buf = BytesMut::with_capacity((first.len() + bytes.len()) * 4);
                buf.extend_from_slice(first);
                buf.extend_from_slice(bytes);
                *self = Batch::Many(buf);
            }
            Batch::Many(buf) => buf.extend_from_slice(bytes),
        }
    }

    fn finish(self) -> Option<Bytes> {
        match self {
            Batch::Empty => None,
            Batch::One(b) => Some(b),
            Batch::Many(b) => Some(b.freeze()),
        }
    }
}

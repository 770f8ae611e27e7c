//! One connection: what hooks and filters see of it, and its lifecycle, all behind its own
//! lock. It reads the logs it is subscribed to at its own positions, plus a queue of events
//! sent to it alone, and merges them in the order they were sent.
//!
//! Lifecycle: `Open` → `Draining` (completed: what was sent before is still delivered, then
//! the last event) → `Ended`; or `Open` → `Ended` at once (evicted, gone, too slow).

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Waker};

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::error::SubscribeError;
use super::log::{Cursor, Entries, Log};
use super::sync::{AtomicU64, Mutex, Ordering, RwLockReadGuard};
use super::types::{CloseReason, ConnectionId, Replay, SlowConsumerPolicy};
use crate::Event;

/// Most bytes merged into one frame when several events are waiting.
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// One open (or just closed) connection, as hooks and filters see it.
pub struct Connection<M = ()> {
    id: ConnectionId,
    bound: Bound,
    key: Option<Arc<str>>,
    meta: M,
    connected_at: Instant,
    replay: Replay,
    /// Milliseconds of the manager's clock when an event was last handed to the server.
    last_write_ms: AtomicU64,
    /// Events skipped under [`SlowConsumerPolicy::DropOldest`].
    lagged: AtomicU64,
    state: Mutex<State>,
    /// Made by the first [`closed`](super::ConnectionHandle::closed) call; cancelled when the
    /// connection closes.
    closed: OnceLock<CancellationToken>,
}

#[derive(Debug)]
struct State {
    /// Position in the log of events published to everyone.
    all: Cursor,
    /// Positions in the logs of its topics.
    topics: Vec<Cursor>,
    /// Events sent to this connection alone (or to its key or a filter), each stamped with
    /// the publish number at the time: published events numbered below the stamp go out
    /// before it, so the connection sees one order.
    queue: VecDeque<(u64, Bytes)>,
    /// The body's task, for events queued here and for the close.
    waker: Option<Waker>,
    phase: Phase,
    /// Log entries up to this seq are skipped: the client saw them on another instance,
    /// ahead of this one (0: none).
    skip_through: u64,
}

#[derive(Debug)]
enum Phase {
    Open,
    /// Deliver queued events and published events numbered below `until`, then `last`,
    /// then end.
    Draining(Box<Drain>),
    Ended {
        reason: CloseReason,
        /// End the body with an error, so the server drops the connection.
        abort: bool,
    },
}

#[derive(Debug)]
struct Drain {
    reason: CloseReason,
    until: u64,
    last: Option<Event>,
    finished: bool,
}

impl Phase {
    fn reason(&self) -> Option<CloseReason> {
        match self {
            Phase::Open => None,
            Phase::Draining(d) => Some(d.reason),
            Phase::Ended { reason, .. } => Some(*reason),
        }
    }
}

/// The backlog bound and what happens past it, as the manager is configured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bound {
    pub(crate) capacity: u64,
    pub(crate) policy: SlowConsumerPolicy,
}

/// How a connection is closed.
#[derive(Debug)]
pub(crate) enum Ending {
    /// Deliver what was sent before, then `last` (marked finished if `finished`), then end.
    Drain { last: Option<Event>, finished: bool },
    /// End at once, discarding what is queued; with an error if `abort`.
    Now { abort: bool },
}

/// The outcome of offering an event to one connection.
#[derive(Debug)]
pub(crate) enum Offer {
    Queued,
    /// Queued after dropping the oldest queued event.
    Lagged,
    /// The backlog is full and the policy is to disconnect: the caller closes it.
    Full,
    Closed(CloseReason),
}

/// What the body should do next.
#[derive(Debug)]
pub(crate) enum Next {
    /// Write these bytes: `events` events, the first published at `published_ms` (manager
    /// clock) if it came from a log.
    Frame {
        bytes: Bytes,
        events: u32,
        published_ms: Option<u64>,
    },
    /// Write the last event (marked finished for good if `finished`), then end.
    Last {
        event: Event,
        finished: bool,
    },
    End,
    /// End with an error.
    Abort(CloseReason),
    /// Events skipped under `DropOldest`, already applied: count them and poll again.
    Skipped(u64),
    /// Too far behind under `Disconnect`: the caller closes it, then polls again.
    Behind,
    /// Nothing now; the task is registered for the next event.
    Pending,
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

    /// The topics it is subscribed to now.
    pub fn topics(&self) -> Vec<Arc<str>> {
        let state = self.state.lock();
        state
            .topics
            .iter()
            .filter_map(|s| s.log.name().cloned())
            .collect()
    }

    /// Whether it is subscribed to `topic` now.
    pub fn has_topic(&self, topic: &str) -> bool {
        self.state.lock().position(topic).is_some()
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

    /// Events it will never send because it lagged: skipped under
    /// [`SlowConsumerPolicy::DropOldest`], and published events that left the history before
    /// it sent them.
    pub fn lagged(&self) -> u64 {
        let state = self.state.lock();
        let will_skip: u64 = match (&state.phase, self.bound.policy) {
            (Phase::Open, SlowConsumerPolicy::DropOldest) => state
                .subs()
                .map(|c| c.bounded_next(self.bound.capacity) - c.next)
                .sum(),
            _ => state.subs().map(Cursor::deficit).sum(),
        };
        self.lagged.load(Ordering::Relaxed) + will_skip
    }

    /// Events waiting to be handed to the server: its own queue, and published events it has
    /// not sent yet: what is left of its replay, and live events up to the backlog bound
    /// (those past it will not be sent: it is disconnected, or skips them).
    pub fn queued(&self) -> usize {
        let state = self.state.lock();
        state.unsent(self.bound.capacity) as usize
    }

    /// Why it closed, once it has (or is completing).
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.state.lock().phase.reason()
    }

    /// Whether it has closed, or is completing.
    pub fn is_closed(&self) -> bool {
        self.close_reason().is_some()
    }

    pub(crate) fn last_write_ms(&self) -> u64 {
        self.last_write_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn set_last_write_ms(&self, ms: u64) {
        self.last_write_ms.store(ms, Ordering::Relaxed);
    }

    /// A new connection reading the log to all and its topics' logs from the given
    /// cursors. A `gap` event, if any, is sent before everything else.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: ConnectionId,
        bound: Bound,
        key: Option<Arc<str>>,
        meta: M,
        connected_at: Instant,
        now_ms: u64,
        replay: Replay,
        (all, topics, skip_through): (Cursor, Vec<Cursor>, u64),
        gap: Option<Bytes>,
    ) -> Self {
        let mut queue = VecDeque::new();
        if let Some(gap) = gap {
            queue.push_back((0, gap));
        }
        Connection {
            id,
            bound,
            key,
            meta,
            connected_at,
            replay,
            last_write_ms: AtomicU64::new(now_ms),
            lagged: AtomicU64::new(0),
            state: Mutex::new(State {
                all,
                topics,
                queue,
                waker: None,
                phase: Phase::Open,
                skip_through,
            }),
            closed: OnceLock::new(),
        }
    }

    /// Queues `bytes` for this connection, never waiting, and wakes its body. `stamp` is the
    /// publish number now. Call with no lock of the manager held.
    pub(crate) fn offer(&self, bytes: &Bytes, stamp: u64) -> Offer {
        let mut state = self.state.lock();
        if let Some(reason) = state.phase.reason() {
            return Offer::Closed(reason);
        }
        let mut offer = Offer::Queued;
        let capacity = self.bound.capacity;
        match self.bound.policy {
            SlowConsumerPolicy::Disconnect if state.live_backlog() >= capacity => {
                return Offer::Full;
            }
            SlowConsumerPolicy::DropOldest if state.queue.len() as u64 >= capacity => {
                state.queue.pop_front();
                self.lagged.fetch_add(1, Ordering::Relaxed);
                offer = Offer::Lagged;
            }
            _ => {}
        }
        state.queue.push_back((stamp, bytes.clone()));
        let waker = state.waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
        offer
    }

    /// Moves the connection out of `Open`, `until` being the publish number now. Returns
    /// how many unsent events were discarded, or `None` if it was not open.
    pub(crate) fn close(&self, reason: CloseReason, ending: Ending, until: u64) -> Option<u64> {
        let mut state = self.state.lock();
        if state.phase.reason().is_some() {
            return None;
        }
        let discarded = match ending {
            Ending::Drain { last, finished } => {
                state.phase = Phase::Draining(Box::new(Drain {
                    reason,
                    until,
                    last,
                    finished,
                }));
                0
            }
            Ending::Now { abort } => {
                let unsent = state.unsent(self.bound.capacity);
                state.queue = VecDeque::new();
                state.phase = Phase::Ended { reason, abort };
                unsent
            }
        };
        let waker = state.waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
        Some(discarded)
    }

    /// Ends a connection whatever its phase (its body went away while it was completing)
    /// and frees its queue. Returns how many events it never sent.
    pub(crate) fn discard(&self) -> u64 {
        let mut state = self.state.lock();
        let unsent = state.unsent(self.bound.capacity);
        let reason = state.phase.reason().unwrap_or(CloseReason::ClientGone);
        state.queue = VecDeque::new();
        state.phase = Phase::Ended {
            reason,
            abort: false,
        };
        unsent
    }

    /// Cancels the token [`closed`](super::ConnectionHandle::closed) waits on, if any.
    pub(crate) fn notify_closed(&self) {
        if let Some(token) = self.closed.get() {
            token.cancel();
        }
    }

    /// The token cancelled when the connection closes, made on first use. Cancelled at
    /// once if it has closed already.
    pub(crate) fn closed_token(&self) -> CancellationToken {
        let token = self.closed.get_or_init(CancellationToken::new).clone();
        // Under the lock the close takes: either the close sees the token, or this sees the
        // close.
        if self.close_reason().is_some() {
            token.cancel();
        }
        token
    }

    /// Whether it is open and further behind than the bound allows, or behind the oldest
    /// entry a log still holds. For sweeps that catch clients which stopped reading (their
    /// body is never polled to notice).
    pub(crate) fn is_behind(&self) -> bool {
        let state = self.state.lock();
        matches!(state.phase, Phase::Open)
            && (state.live_backlog() > self.bound.capacity || state.subs().any(|c| c.deficit() > 0))
    }

    /// The logs it reads.
    pub(crate) fn logs(&self) -> Vec<Arc<Log>> {
        let state = self.state.lock();
        state.subs().map(|s| s.log.clone()).collect()
    }

    /// Starts reading `log` (a topic's) at `cursor`. Everything published to it from there
    /// on is sent. Returns `false` if it was subscribed already.
    pub(crate) fn subscribe(
        &self,
        log: Arc<Log>,
        cursor: u64,
        limit: usize,
    ) -> Result<bool, SubscribeError> {
        let mut state = self.state.lock();
        if let Some(reason) = state.phase.reason() {
            return Err(SubscribeError::Closed(reason));
        }
        let Some(name) = log.name() else {
            return Ok(false);
        };
        if state.position(name).is_some() {
            return Ok(false);
        }
        if state.topics.len() >= limit {
            return Err(SubscribeError::TooManyTopics { limit });
        }
        state.topics.push(Cursor::new(log, cursor, cursor));
        // The body parks on the logs it reads: wake it to park on this one too.
        let waker = state.waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(true)
    }

    /// Stops reading `topic` at once: what was published to it and not yet sent is not
    /// sent. Returns its log, if it was subscribed.
    /// Does nothing once it has closed: the close releases every log it reads.
    pub(crate) fn unsubscribe(&self, topic: &str) -> Option<Arc<Log>> {
        let mut state = self.state.lock();
        if state.phase.reason().is_some() {
            return None;
        }
        let i = state.position(topic)?;
        let mut cursor = state.topics.swap_remove(i);
        drop(state);
        cursor.unpark(self.id.as_u64());
        Some(cursor.log)
    }

    /// Forgets the body's task everywhere it is parked (the body went away).
    pub(crate) fn unpark(&self) {
        let mut state = self.state.lock();
        for cursor in state.subs_mut() {
            cursor.unpark(self.id.as_u64());
        }
    }

    /// The body's poll: the next batch of events in the order they were sent, or what to do
    /// instead. Applies the backlog bound under `policy`.
    pub(crate) fn next(&self, cx: &mut Context<'_>) -> Next {
        loop {
            let mut guard = self.state.lock();
            let state = &mut *guard;
            let until = match &state.phase {
                Phase::Open => {
                    if let Some(next) = self.bound(state) {
                        return next;
                    }
                    u64::MAX
                }
                Phase::Draining(drain) => drain.until,
                Phase::Ended {
                    reason,
                    abort: true,
                } => return Next::Abort(*reason),
                Phase::Ended { .. } => return Next::End,
            };
            let batch = state.read_batch(until);
            let (events, published_ms) = (batch.count, batch.published_ms);
            if let Some(bytes) = batch.finish() {
                return Next::Frame {
                    bytes,
                    events,
                    published_ms,
                };
            }
            if let Phase::Draining(drain) = &mut state.phase {
                let (reason, last, finished) = (drain.reason, drain.last.take(), drain.finished);
                state.phase = Phase::Ended {
                    reason,
                    abort: false,
                };
                return last.map_or(Next::End, |event| Next::Last { event, finished });
            }
            // Nothing to send: wait for a send or a close, and for a publish to any log.
            let same_waker = state
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()));
            if !same_waker {
                state.waker = Some(cx.waker().clone());
            }
            let id = self.id.as_u64();
            // Parking takes each log's own lock, which nothing holds while taking ours, unless
            // the reader is still registered there with this waker. Every log, not just until
            // one has news: each must hold the waker.
            let mut missed = false;
            for c in state.subs_mut() {
                missed |= c.park(id, cx.waker(), same_waker);
            }
            if !missed {
                return Next::Pending;
            }
        }
    }

    /// The backlog bound, for an open connection: `Some` if the body must act first.
    fn bound(&self, state: &mut State) -> Option<Next> {
        let capacity = self.bound.capacity;
        match self.bound.policy {
            SlowConsumerPolicy::Disconnect => {
                let fell_off = state.subs().any(|c| c.deficit() > 0);
                (fell_off || state.live_backlog() > capacity).then_some(Next::Behind)
            }
            SlowConsumerPolicy::DropOldest => {
                // Each log keeps to the bound on its own (the queue is bounded by `offer`).
                // A reader still replaying that falls that far behind loses the rest of its
                // replay with the live events it skips.
                let mut skipped = 0;
                for c in state.subs_mut() {
                    let to = c.bounded_next(capacity);
                    skipped += to - c.next;
                    c.next = to;
                }
                if skipped == 0 {
                    return None;
                }
                self.lagged.fetch_add(skipped, Ordering::Relaxed);
                Some(Next::Skipped(skipped))
            }
        }
    }
}

impl State {
    fn subs(&self) -> impl Iterator<Item = &Cursor> {
        std::iter::once(&self.all).chain(self.topics.iter())
    }

    fn subs_mut(&mut self) -> impl Iterator<Item = &mut Cursor> {
        std::iter::once(&mut self.all).chain(self.topics.iter_mut())
    }

    fn position(&self, topic: &str) -> Option<usize> {
        self.topics
            .iter()
            .position(|c| c.log.name().is_some_and(|n| &**n == topic))
    }

    /// The backlog the bound counts: the queue, and published events since it started
    /// reading each log.
    fn live_backlog(&self) -> u64 {
        self.queue.len() as u64 + self.subs().map(Cursor::live_backlog).sum::<u64>()
    }

    /// Everything it can still send, replay included, under the backlog bound.
    fn unsent(&self, capacity: u64) -> u64 {
        let logs: u64 = match &self.phase {
            Phase::Open => self.subs().map(|c| c.backlog(capacity)).sum(),
            Phase::Draining(drain) => self.subs().map(|c| c.backlog_until(drain.until)).sum(),
            Phase::Ended { .. } => return 0,
        };
        self.queue.len() as u64 + logs
    }

    /// Merges the logs and the queue in the order they were sent, up to one batch, taking
    /// from the logs only entries numbered below `until`. Holds the read lock of every log
    /// with news at once (see [`lock_with_news`]): a publish is only visible with every
    /// earlier one.
    fn read_batch(&mut self, until: u64) -> Batch {
        let mut batch = Batch::default();
        let State {
            all,
            topics,
            queue,
            skip_through,
            ..
        } = self;
        let skip = *skip_through;
        // No allocation per read for the usual shapes: everything, or everything and one
        // or two topics.
        match topics.as_mut_slice() {
            [] => {
                let mut sources = [Source::new(all)];
                lock_with_news(&mut sources, skip);
                merge(&mut sources, queue, until, &mut batch);
            }
            [a] => {
                let mut sources = [Source::new(all), Source::new(a)];
                lock_with_news(&mut sources, skip);
                merge(&mut sources, queue, until, &mut batch);
            }
            [a, b] => {
                let mut sources = [Source::new(all), Source::new(a), Source::new(b)];
                lock_with_news(&mut sources, skip);
                merge(&mut sources, queue, until, &mut batch);
            }
            _ => {
                let mut sources: Vec<Source<'_>> = std::iter::once(all)
                    .chain(topics.iter_mut())
                    .map(Source::new)
                    .collect();
                lock_with_news(&mut sources, skip);
                merge(&mut sources, queue, until, &mut batch);
            }
        }
        batch
    }
}

/// One log being read, under its read lock once it has news, and the reader's position in
/// it.
struct Source<'a> {
    log: &'a Log,
    entries: Option<RwLockReadGuard<'a, Entries>>,
    next: &'a mut u64,
}

impl<'a> Source<'a> {
    fn new(cursor: &'a mut Cursor) -> Self {
        let Cursor { log, next, .. } = cursor;
        Source {
            log,
            entries: None,
            next,
        }
    }

    /// Whether the log has entries past the reader, and is not locked yet.
    fn has_news(&self) -> bool {
        self.entries.is_none() && self.log.end() > *self.next
    }

    fn lock(&mut self, skip_through: u64) {
        let entries = self.log.read();
        // Entries the log dropped before they were read are accounted for by the bound.
        *self.next = (*self.next).max(entries.start());
        // Entries the client saw elsewhere (only ever just after it connected).
        while entries
            .get(*self.next)
            .is_some_and(|e| e.seq <= skip_through)
        {
            *self.next += 1;
        }
        self.entries = Some(entries);
    }

    /// The seq of the next entry, if it is numbered below `until`.
    fn head(&self, until: u64) -> Option<u64> {
        self.entries
            .as_ref()?
            .get(*self.next)
            .map(|e| e.seq)
            .filter(|&seq| seq < until)
    }
}

/// Takes the read lock of each log with entries past its reader, and leaves the others
/// alone: a reader of several logs mostly has news in one, and the others' locks are shared
/// by every reader. A log passed over must not hold an entry published before one that is
/// read now: publishes are pushed one at a time in seq order (`Store::publish`), so an
/// entry older than one visible under a lock taken here is visible in its own log's end
/// once that lock is held. Hence the logs passed over are looked at again after every lock
/// taken, until a round takes none.
fn lock_with_news(sources: &mut [Source<'_>], skip_through: u64) {
    loop {
        let mut locked = false;
        for source in sources.iter_mut() {
            if source.has_news() {
                source.lock(skip_through);
                locked = true;
            }
        }
        if !locked {
            return;
        }
    }
}

fn merge(
    sources: &mut [Source<'_>],
    queue: &mut VecDeque<(u64, Bytes)>,
    until: u64,
    batch: &mut Batch,
) {
    while batch.len() < MAX_BATCH_BYTES {
        let next_log = sources
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.head(until).map(|seq| (seq, i)))
            .min();
        let stamp = queue.front().map(|(stamp, _)| *stamp);
        match next_log {
            Some((seq, i)) if stamp.map_or(true, |stamp| seq < stamp) => {
                let source = &mut sources[i];
                if let Some(entry) = source.entries.as_ref().and_then(|e| e.get(*source.next)) {
                    batch.published_ms.get_or_insert(entry.at_ms);
                    batch.push(entry.event.as_bytes());
                }
                *source.next += 1;
            }
            _ => match queue.pop_front() {
                Some((_, bytes)) => batch.push(&bytes),
                None => return,
            },
        }
    }
}

impl<M> fmt::Debug for Connection<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("replay", &self.replay)
            .finish_non_exhaustive()
    }
}

/// The events of one frame: a lone event is handed on as it is, several are copied into
/// one buffer.
#[derive(Default)]
struct Batch {
    bytes: Buffer,
    count: u32,
    /// When the first event that came from a log was published.
    published_ms: Option<u64>,
}

#[derive(Default)]
enum Buffer {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Batch {
    fn len(&self) -> usize {
        match &self.bytes {
            Buffer::Empty => 0,
            Buffer::One(b) => b.len(),
            Buffer::Many(b) => b.len(),
        }
    }

    fn push(&mut self, bytes: &Bytes) {
        self.count += 1;
        match &mut self.bytes {
            Buffer::Empty => self.bytes = Buffer::One(bytes.clone()),
            Buffer::One(first) => {
                let mut buf = BytesMut::with_capacity((first.len() + bytes.len()) * 4);
                buf.extend_from_slice(first);
                buf.extend_from_slice(bytes);
                self.bytes = Buffer::Many(buf);
            }
            Buffer::Many(buf) => buf.extend_from_slice(bytes),
        }
    }

    fn finish(self) -> Option<Bytes> {
        match self.bytes {
            Buffer::Empty => None,
            Buffer::One(b) => Some(b),
            Buffer::Many(b) => Some(b.freeze()),
        }
    }
}

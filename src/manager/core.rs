use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::connection::{lock, Connection, ConnectionBody, ConnectionHandle, Offer, State};
use super::history::{History, Position};
use super::ring::Broadcast;
use super::types::{
    CloseReason, Connect, ConnectError, ConnectionId, Delivery, Replay, SendError,
    SlowConsumerPolicy, Stats,
};
use crate::Event;

type Hook<M> = Arc<dyn Fn(&Connection<M>) + Send + Sync>;
type CloseHook<M> = Arc<dyn Fn(&Connection<M>, CloseReason) + Send + Sync>;

/// Connection ids are already unique counters: hash them with one multiplication.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

struct Registry<M> {
    conns: IdMap<Arc<Connection<M>>>,
    by_key: HashMap<Arc<str>, Vec<Arc<Connection<M>>>>,
    by_topic: HashMap<Arc<str>, IdMap<Arc<Connection<M>>>>,
}

impl<M> Registry<M> {
    fn remove(&mut self, conn: &Connection<M>) -> bool {
        if self.conns.remove(&conn.id.0).is_none() {
            return false;
        }
        if let Some(key) = &conn.key {
            if let Some(list) = self.by_key.get_mut(key) {
                list.retain(|c| c.id != conn.id);
                if list.is_empty() {
                    self.by_key.remove(key);
                }
            }
        }
        for topic in conn.topics.iter() {
            if let Some(set) = self.by_topic.get_mut(topic) {
                set.remove(&conn.id.0);
                if set.is_empty() {
                    self.by_topic.remove(topic);
                }
            }
        }
        true
    }
}

#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    events: AtomicU64,
    deliveries: AtomicU64,
    dropped: AtomicU64,
    lagged: AtomicU64,
    closed: [AtomicU64; CloseReason::ALL.len()],
}

impl Counters {
    /// `n` events a connection will never send because it lagged: counted as both.
    fn lag(&self, n: u64) {
        self.lagged.fetch_add(n, Ordering::Relaxed);
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

struct Config<M> {
    queue_capacity: usize,
    policy: SlowConsumerPolicy,
    max_connections: Option<usize>,
    max_per_key: Option<usize>,
    auto_ids: bool,
    gap_event: Option<Event>,
    farewell: Option<Event>,
    on_connect: Option<Hook<M>>,
    on_close: Option<CloseHook<M>>,
}

/// Everything behind the manager's one `Arc`.
pub(crate) struct Shared<M> {
    config: Config<M>,
    registry: RwLock<Registry<M>>,
    /// Serialises publishing with registration, so replay and live events meet with no gap
    /// and no duplicate. Lock order: history, then registry, then a connection's queue.
    history: Mutex<History>,
    /// Events published to everyone, read by each connection at its own position.
    broadcast: Arc<Broadcast>,
    next_id: AtomicU64,
    shutting_down: AtomicBool,
    epoch: Instant,
    /// Milliseconds since `epoch` at the latest connect or send. A body records this as the
    /// time of its latest write, so writing costs no clock read; it is never later than the
    /// write itself.
    pub(crate) clock_ms: AtomicU64,
    counters: Counters,
}

/// Who an event goes to. Every send takes this one path, so a cross-instance backplane can
/// be put in front of it without touching the rest.
pub(crate) enum Target<'a, M> {
    All,
    Topic(&'a str),
    Key(&'a str),
    Filter(&'a (dyn Fn(&Connection<M>) -> bool + 'a)),
}

impl<M> Shared<M> {
    fn read(&self) -> RwLockReadGuard<'_, Registry<M>> {
        self.registry.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Registry<M>> {
        self.registry.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    fn ms_at(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Moves [`clock_ms`](Self::clock_ms) to `now` (never back); returns `now` in ms.
    fn tick(&self, now: Instant) -> u64 {
        let ms = self.ms_at(now);
        self.clock_ms.fetch_max(ms, Ordering::Relaxed);
        ms
    }

    /// Closes `conn` once: moves its queue to `state`, removes it from every index, counts
    /// it and calls the close hook. Returns `false` if it had already closed.
    pub(crate) fn close(&self, conn: &Connection<M>, state: State, reason: CloseReason) -> bool {
        let Some(discarded) = conn.end(state, reason, self.broadcast.end()) else {
            return false;
        };
        self.write().remove(conn);
        let c = &self.counters;
        c.dropped.fetch_add(discarded as u64, Ordering::Relaxed);
        c.closed[reason.index()].fetch_add(1, Ordering::Relaxed);
        if let Some(hook) = &self.config.on_close {
            hook(conn, reason);
        }
        true
    }

    /// Ends `conn` at once for `reason`; if it had closed already (it was completing),
    /// frees its queue instead.
    pub(crate) fn close_or_discard(&self, conn: &Connection<M>, reason: CloseReason) {
        if !self.close(conn, State::Ended, reason) {
            self.discard(conn);
        }
    }

    /// Closes the connections `pick` chooses under the read lock, once it is released
    /// (closing takes the write lock). Returns how many this call closed.
    fn close_picked(
        &self,
        pick: impl FnOnce(&Registry<M>) -> Vec<Arc<Connection<M>>>,
        state: State,
        reason: CloseReason,
    ) -> usize {
        let conns = pick(&self.read());
        conns
            .iter()
            .filter(|c| self.close(c, state.clone(), reason))
            .count()
    }

    /// Assigns the next id if `event` has none and automatic ids are on, and records it for
    /// replay. Under the history lock, so ids and the replay keep the publish order.
    fn record(
        &self,
        history: &mut History,
        event: Event,
        topic: Option<Arc<str>>,
        now: Instant,
    ) -> Event {
        let event = if self.config.auto_ids && !event.has_id() {
            let seq = history.next_seq();
            event.with_validated_id(crate::event::decimal(seq.into(), &mut [0; 40]))
        } else {
            event
        };
        history.push(event.clone(), topic, now);
        event
    }

    /// Frees the queue of a connection that closed earlier (it was completing) and whose
    /// body is now gone, counting what was never delivered.
    fn discard(&self, conn: &Connection<M>) {
        let discarded = conn.discard();
        if discarded > 0 {
            self.counters
                .dropped
                .fetch_add(discarded as u64, Ordering::Relaxed);
        }
    }

    pub(crate) fn send_to_conn(
        &self,
        conn: &Connection<M>,
        bytes: &Bytes,
    ) -> Result<(), SendError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(SendError::ShutDown);
        }
        self.tick(Instant::now());
        let (capacity, policy) = (self.config.queue_capacity, self.config.policy);
        match conn.offer(bytes, self.broadcast.end(), capacity, policy) {
            offer @ (Offer::Queued | Offer::Lagged) => {
                self.counters.events.fetch_add(1, Ordering::Relaxed);
                self.counters.deliveries.fetch_add(1, Ordering::Relaxed);
                if let Offer::Lagged = offer {
                    self.counters.lag(1);
                }
                Ok(())
            }
            Offer::Full => {
                self.close(conn, State::Ended, CloseReason::SlowConsumer);
                Err(SendError::SlowConsumer)
            }
            Offer::Closed(reason) => Err(SendError::Closed { reason }),
        }
    }

    /// A connection found that published events it never sent have left the ring. Applies
    /// the policy: returns `true` if it may go on (the loss counted as lag), `false` if it
    /// was closed.
    pub(crate) fn lagged(&self, conn: &Connection<M>, missed: u64) -> bool {
        match self.config.policy {
            SlowConsumerPolicy::DropOldest => {
                conn.lagged.fetch_add(missed, Ordering::Relaxed);
                self.counters.lag(missed);
                true
            }
            SlowConsumerPolicy::Disconnect => {
                // Already completing, it cannot deliver what it promised: end it anyway.
                self.close_or_discard(conn, CloseReason::SlowConsumer);
                false
            }
        }
    }

    /// Closes the connections that fell behind the ring's start. Run once per ring wrap,
    /// so it costs a fraction of a connection per publish and also catches clients that
    /// stopped reading altogether (their body is never polled to notice).
    fn sweep_lagging(&self, start: u64) -> usize {
        self.close_picked(
            |r| {
                let behind = |c: &&Arc<Connection<M>>| c.cursor.load(Ordering::Relaxed) < start;
                r.conns.values().filter(behind).cloned().collect()
            },
            State::Ended,
            CloseReason::SlowConsumer,
        )
    }

    /// Publishes to everyone through the ring: one push, whatever the number of connections.
    fn publish_all(&self, event: Event) -> Delivery {
        let (event, start) = {
            let mut history = lock(&self.history);
            let now = Instant::now();
            self.tick(now);
            let event = self.record(&mut history, event, None, now);
            // Under the history lock, like `connect` reading the ring's end: a client that
            // registers gets every event either from the replay or from the ring, never both.
            let start = self.broadcast.push(event.as_bytes().clone());
            (event, start)
        };
        // Outside the history lock: connecting and topic publishing need not wait for every
        // parked reader to be woken.
        self.broadcast.wake_parked();
        let capacity = self.config.queue_capacity as u64;
        let disconnected = match self.config.policy {
            // On the first overflow, then once per wrap: a client that stopped reading is
            // disconnected on the very publish it could no longer hold.
            SlowConsumerPolicy::Disconnect if start > 0 && (start - 1) % capacity == 0 => {
                self.sweep_lagging(start)
            }
            _ => 0,
        };
        // Everyone still open after the sweep will send it.
        let delivered = self.read().conns.len();
        let c = &self.counters;
        c.events.fetch_add(1, Ordering::Relaxed);
        c.deliveries.fetch_add(delivered as u64, Ordering::Relaxed);
        Delivery {
            id: event.id().map(Arc::from),
            delivered,
            disconnected,
        }
    }

    /// The one path every multi-recipient send takes.
    pub(crate) fn dispatch(
        &self,
        target: Target<'_, M>,
        event: Event,
    ) -> Result<Delivery, SendError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(SendError::ShutDown);
        }
        if let Target::All = target {
            return Ok(self.publish_all(event));
        }
        let now = Instant::now();
        self.tick(now);
        // Topic events are recorded for replay and published under the history lock: one
        // order for everyone. Lock order: history, then registry.
        let mut history = matches!(target, Target::Topic(_)).then(|| lock(&self.history));
        let registry = self.read();
        let subscribers = match target {
            Target::Topic(t) => registry.by_topic.get_key_value(t),
            _ => None,
        };
        let event = match (history.as_mut(), &target) {
            (Some(h), Target::Topic(t)) => {
                // The index's own name when someone subscribes: no copy per publish.
                let topic = subscribers.map_or_else(|| Arc::from(*t), |(name, _)| name.clone());
                self.record(h, event, Some(topic), now)
            }
            _ => event,
        };
        let bytes = event.as_bytes();
        let (capacity, policy) = (self.config.queue_capacity, self.config.policy);
        let stamp = self.broadcast.end();
        let (mut delivered, mut lagged) = (0usize, 0u64);
        let mut full: Vec<Arc<Connection<M>>> = Vec::new();
        let mut offer = |conn: &Arc<Connection<M>>| match conn.offer(bytes, stamp, capacity, policy)
        {
            Offer::Queued => delivered += 1,
            Offer::Lagged => {
                delivered += 1;
                lagged += 1;
            }
            Offer::Full => full.push(conn.clone()),
            Offer::Closed(_) => {}
        };
        match target {
            // Published through the ring above.
            Target::All => {}
            Target::Topic(_) => {
                if let Some((_, set)) = subscribers {
                    set.values().for_each(&mut offer);
                }
            }
            Target::Key(key) => {
                if let Some(list) = registry.by_key.get(key) {
                    list.iter().for_each(&mut offer);
                }
            }
            Target::Filter(filter) => registry
                .conns
                .values()
                .filter(|c| filter(c))
                .for_each(&mut offer),
        }
        // Closing takes the write lock.
        drop(registry);
        drop(history);
        for conn in &full {
            self.close(conn, State::Ended, CloseReason::SlowConsumer);
        }
        let c = &self.counters;
        c.events.fetch_add(1, Ordering::Relaxed);
        c.deliveries.fetch_add(delivered as u64, Ordering::Relaxed);
        if lagged > 0 {
            c.lag(lagged);
        }
        Ok(Delivery {
            id: event.id().map(Arc::from),
            delivered,
            disconnected: full.len(),
        })
    }
}

/// Tracks every open stream; sends to one, to a key, to a topic, to all; completes and
/// evicts; replays by `Last-Event-ID`. See the [module example](crate::manager).
///
/// Cloning is cheap and shares the same connections (one `Arc` inside).
pub struct ConnectionManager<M = ()> {
    shared: Arc<Shared<M>>,
}

impl<M> Clone for ConnectionManager<M> {
    fn clone(&self) -> Self {
        ConnectionManager {
            shared: self.shared.clone(),
        }
    }
}

impl<M> fmt::Debug for ConnectionManager<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionManager")
            .field("open", &self.shared.read().conns.len())
            .field(
                "shutting_down",
                &self.shared.shutting_down.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

impl<M: Send + Sync + 'static> Default for ConnectionManager<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Send + Sync + 'static> ConnectionManager<M> {
    /// A manager with the default settings (see [`ManagerBuilder`]).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Starts configuring a manager.
    pub fn builder() -> ManagerBuilder<M> {
        ManagerBuilder::default()
    }

    /// Registers a client and returns its handle and its response body.
    ///
    /// If `options` carry a `Last-Event-ID`, the events the client missed are queued first,
    /// then live events follow with no gap and no duplicate. An unknown or expired id is
    /// answered with the gap event, then everything the history holds.
    ///
    /// # Errors
    ///
    /// [`ConnectError`] if the manager is shutting down or a connection limit is reached.
    pub fn connect(
        &self,
        options: Connect<M>,
    ) -> Result<(ConnectionHandle<M>, ConnectionBody<M>), ConnectError> {
        let shared = &self.shared;
        if shared.shutting_down.load(Ordering::Acquire) {
            return Err(ConnectError::ShutDown);
        }
        let Connect {
            key,
            topics,
            meta,
            last_event_id,
            context,
        } = options;
        let id = ConnectionId(shared.next_id.fetch_add(1, Ordering::Relaxed));
        let now = Instant::now();
        let now_ms = shared.tick(now);
        let mut history = lock(&shared.history);
        // Under the history lock: the connection reads live events from the ring's end now.
        let mut conn = Connection::new(
            id,
            key,
            topics.into_boxed_slice(),
            meta,
            now,
            now_ms,
            shared.broadcast.clone(),
        );
        if let (Some(last), true) = (&last_event_id, history.enabled()) {
            let wants = |topic: Option<&str>| topic.map_or(true, |t| conn.has_topic(t));
            let (replay, events) = match history.since(last.as_str(), wants, Instant::now()) {
                Position::After(events) => (Replay::Resumed(events.len()), events),
                Position::Unknown(mut events) => {
                    let replayed = events.len();
                    if let Some(gap) = &shared.config.gap_event {
                        events.insert(0, gap.as_bytes().clone());
                    }
                    (Replay::Gap(replayed), events)
                }
            };
            conn.replay = replay;
            let q = conn.queue.get_mut().unwrap_or_else(|e| e.into_inner());
            // Replayed events never count against the live queue's capacity; the allowance
            // shrinks as the body hands them out.
            q.replay_allowance = events.len();
            q.events.extend(events.into_iter().map(|bytes| (0, bytes)));
        }
        let conn = Arc::new(conn);
        {
            let mut registry = shared.write();
            // Checked again under the lock: `shutdown` collects the connections under it, so
            // a connection registered after that could otherwise never be ended.
            if shared.shutting_down.load(Ordering::Acquire) {
                return Err(ConnectError::ShutDown);
            }
            if let Some(limit) = shared.config.max_connections {
                if registry.conns.len() >= limit {
                    return Err(ConnectError::TooManyConnections { limit });
                }
            }
            if let (Some(limit), Some(key)) = (shared.config.max_per_key, &conn.key) {
                if registry.by_key.get(key).map_or(0, Vec::len) >= limit {
                    return Err(ConnectError::TooManyForKey { limit });
                }
            }
            registry.conns.insert(id.0, conn.clone());
            if let Some(key) = &conn.key {
                registry
                    .by_key
                    .entry(key.clone())
                    .or_default()
                    .push(conn.clone());
            }
            for topic in conn.topics.iter() {
                registry
                    .by_topic
                    .entry(topic.clone())
                    .or_default()
                    .insert(id.0, conn.clone());
            }
        }
        drop(history);
        shared.counters.connected.fetch_add(1, Ordering::Relaxed);
        if let Some(hook) = &shared.config.on_connect {
            hook(&conn);
        }
        let handle = ConnectionHandle {
            conn: conn.clone(),
            shared: shared.clone(),
        };
        Ok((handle, ConnectionBody::new(conn, shared.clone(), context)))
    }

    /// Publishes `event` to every connection, and records it for replay. If the event has
    /// no id and automatic ids are on, the next id is assigned.
    ///
    /// # Errors
    ///
    /// [`SendError::ShutDown`] once the manager is shutting down.
    pub fn publish(&self, event: Event) -> Result<Delivery, SendError> {
        self.shared.dispatch(Target::All, event)
    }

    /// Publishes `event` to the connections subscribed to `topic`, and records it for replay
    /// to them.
    ///
    /// # Errors
    ///
    /// [`SendError::ShutDown`] once the manager is shutting down.
    pub fn publish_topic(&self, topic: &str, event: Event) -> Result<Delivery, SendError> {
        self.shared.dispatch(Target::Topic(topic), event)
    }

    /// Sends `event` to every connection of `key` (not recorded for replay). A key with no
    /// connection gives `delivered: 0`.
    ///
    /// # Errors
    ///
    /// [`SendError::ShutDown`] once the manager is shutting down.
    pub fn send_to_key(&self, key: &str, event: Event) -> Result<Delivery, SendError> {
        self.shared.dispatch(Target::Key(key), event)
    }

    /// Sends `event` to every connection `filter` accepts (not recorded for replay). The
    /// filter runs under the registry's read lock: keep it quick, and do not call the
    /// manager from it.
    ///
    /// # Errors
    ///
    /// [`SendError::ShutDown`] once the manager is shutting down.
    pub fn send_filter(
        &self,
        filter: impl Fn(&Connection<M>) -> bool,
        event: Event,
    ) -> Result<Delivery, SendError> {
        self.shared.dispatch(Target::Filter(&filter), event)
    }

    /// Sends `event` to one connection (not recorded for replay).
    ///
    /// # Errors
    ///
    /// [`SendError::NotFound`] if no such connection is open, or what
    /// [`ConnectionHandle::send`] returns.
    pub fn send_to(&self, id: ConnectionId, event: Event) -> Result<(), SendError> {
        let conn = self.get(id).ok_or(SendError::NotFound)?;
        self.shared.send_to_conn(&conn, event.as_bytes())
    }

    fn get(&self, id: ConnectionId) -> Option<Arc<Connection<M>>> {
        self.shared.read().conns.get(&id.0).cloned()
    }

    /// A handle to an open connection.
    pub fn handle(&self, id: ConnectionId) -> Option<ConnectionHandle<M>> {
        self.get(id).map(|conn| ConnectionHandle {
            conn,
            shared: self.shared.clone(),
        })
    }

    /// Handles to every open connection of `key`.
    pub fn handles_for_key(&self, key: &str) -> Vec<ConnectionHandle<M>> {
        let registry = self.shared.read();
        registry.by_key.get(key).map_or_else(Vec::new, |list| {
            list.iter()
                .map(|conn| ConnectionHandle {
                    conn: conn.clone(),
                    shared: self.shared.clone(),
                })
                .collect()
        })
    }

    /// Completes every connection of `key`: queued events, then `last` if given, then the
    /// end. Returns how many were completed.
    pub fn complete_key(&self, key: &str, last: Option<Event>) -> usize {
        self.shared.close_picked(
            |r| r.by_key.get(key).cloned().unwrap_or_default(),
            State::Draining(last.map(Event::into_bytes)),
            CloseReason::Completed,
        )
    }

    /// Evicts every connection of `key` at once. Returns how many were evicted.
    pub fn evict_key(&self, key: &str) -> usize {
        self.shared.close_picked(
            |r| r.by_key.get(key).cloned().unwrap_or_default(),
            State::Ended,
            CloseReason::Evicted,
        )
    }

    /// Completes every connection `filter` accepts: queued events, then `last` if given,
    /// then the end. Returns how many were completed.
    pub fn complete_filter(
        &self,
        filter: impl Fn(&Connection<M>) -> bool,
        last: Option<Event>,
    ) -> usize {
        self.shared.close_picked(
            |r| r.conns.values().filter(|c| filter(c)).cloned().collect(),
            State::Draining(last.map(Event::into_bytes)),
            CloseReason::Completed,
        )
    }

    /// Evicts every connection `filter` accepts at once. Returns how many were evicted.
    pub fn evict_filter(&self, filter: impl Fn(&Connection<M>) -> bool) -> usize {
        self.shared.close_picked(
            |r| r.conns.values().filter(|c| filter(c)).cloned().collect(),
            State::Ended,
            CloseReason::Evicted,
        )
    }

    /// Closes connections that have had nothing written for longer than `idle`
    /// ([`CloseReason::IdleTimeout`]). Returns how many were closed.
    ///
    /// A write is dated by the manager's latest connect or send at that moment (no clock
    /// read per write), so it counts as no later than it happened: a connection that
    /// writes an old backlog long after the last send may be seen as idle a little early.
    /// Heartbeats from [`SseLayer`](crate::SseLayer) are not writes here.
    pub fn evict_idle(&self, idle: Duration) -> usize {
        let now = self.shared.now_ms();
        let idle_ms = idle.as_millis() as u64;
        let stale = |c: &&Arc<Connection<M>>| {
            now.saturating_sub(c.last_write_ms.load(Ordering::Relaxed)) > idle_ms
        };
        self.shared.close_picked(
            |r| r.conns.values().filter(stale).cloned().collect(),
            State::Ended,
            CloseReason::IdleTimeout,
        )
    }

    /// Stops accepting connections and sends, then ends every stream: queued events, then
    /// the farewell event if one is configured ([`CloseReason::Shutdown`]). Returns how many
    /// streams were ended.
    pub fn shutdown(&self) -> usize {
        self.shared.shutting_down.store(true, Ordering::Release);
        let farewell = self.shared.config.farewell.clone().map(Event::into_bytes);
        self.shared.close_picked(
            |r| r.conns.values().cloned().collect(),
            State::Draining(farewell),
            CloseReason::Shutdown,
        )
    }

    /// Waits for `token`, then [shuts down](Self::shutdown). Spawn it beside the server,
    /// with the same token the [`SseLayer`](crate::SseLayer) and the server's graceful
    /// shutdown use.
    pub async fn shutdown_on(self, token: CancellationToken) {
        token.cancelled().await;
        self.shutdown();
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutting_down.load(Ordering::Acquire)
    }

    /// Open connections now.
    pub fn len(&self) -> usize {
        self.shared.read().conns.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let (open, open_per_topic) = {
            let registry = self.shared.read();
            let per_topic = registry
                .by_topic
                .iter()
                .map(|(t, set)| (t.to_string(), set.len()))
                .collect();
            (registry.conns.len(), per_topic)
        };
        let c = &self.shared.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            open,
            open_per_topic,
            connected: load(&c.connected),
            events: load(&c.events),
            deliveries: load(&c.deliveries),
            dropped: load(&c.dropped),
            lagged: load(&c.lagged),
            closed: CloseReason::ALL
                .iter()
                .map(|r| (*r, load(&c.closed[r.index()])))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }

    /// Events held for replay now.
    pub fn history_len(&self) -> usize {
        lock(&self.shared.history).len()
    }
}

/// Configures a [`ConnectionManager`].
///
/// ```
/// use std::time::Duration;
/// use tower_sse::manager::{ConnectionManager, SlowConsumerPolicy};
///
/// let manager: ConnectionManager = ConnectionManager::builder()
///     .queue_capacity(64)
///     .slow_consumer(SlowConsumerPolicy::Disconnect)
///     .replay(1000, Some(Duration::from_secs(300)))
///     .max_connections(10_000)
///     .max_per_key(8)
///     .on_close(|conn, reason| println!("{} closed: {reason}", conn.id()))
///     .build();
/// # let _ = manager;
/// ```
#[must_use]
pub struct ManagerBuilder<M = ()> {
    config: Config<M>,
    replay_len: usize,
    replay_age: Option<Duration>,
}

impl<M> Default for ManagerBuilder<M> {
    fn default() -> Self {
        ManagerBuilder {
            config: Config {
                queue_capacity: 256,
                policy: SlowConsumerPolicy::default(),
                max_connections: None,
                max_per_key: None,
                auto_ids: true,
                gap_event: Event::builder().event("gap").data("").build().ok(),
                farewell: None,
                on_connect: None,
                on_close: None,
            },
            replay_len: 1024,
            replay_age: Some(Duration::from_secs(300)),
        }
    }
}

impl<M> fmt::Debug for ManagerBuilder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerBuilder")
            .field("queue_capacity", &self.config.queue_capacity)
            .field("policy", &self.config.policy)
            .field("replay_len", &self.replay_len)
            .field("replay_age", &self.replay_age)
            .finish_non_exhaustive()
    }
}

impl<M: Send + Sync + 'static> ManagerBuilder<M> {
    /// Events a connection may have queued before the slow-consumer policy applies
    /// (default 256). At least 1.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.config.queue_capacity = capacity.max(1);
        self
    }

    /// What to do with a connection whose queue is full (default: disconnect it).
    pub fn slow_consumer(mut self, policy: SlowConsumerPolicy) -> Self {
        self.config.policy = policy;
        self
    }

    /// Refuses connections beyond `limit` in total.
    pub fn max_connections(mut self, limit: usize) -> Self {
        self.config.max_connections = Some(limit);
        self
    }

    /// Refuses connections beyond `limit` for one key.
    pub fn max_per_key(mut self, limit: usize) -> Self {
        self.config.max_per_key = Some(limit);
        self
    }

    /// Keeps the last `count` published events, none older than `max_age`, for replay by
    /// `Last-Event-ID` (default: 1024 events, 5 minutes). `count` 0 turns replay off.
    pub fn replay(mut self, count: usize, max_age: Option<Duration>) -> Self {
        self.replay_len = count;
        self.replay_age = max_age;
        self
    }

    /// Whether published events without an id get the next number (default on). Numbers
    /// start from the manager's creation time in microseconds since the Unix epoch, so ids
    /// from an earlier process are never mistaken for new ones.
    pub fn auto_ids(mut self, enabled: bool) -> Self {
        self.config.auto_ids = enabled;
        self
    }

    /// The event sent to a reconnecting client whose last id is unknown or too old, before
    /// the history (default: an event of type `gap` with empty data). `None` sends nothing.
    pub fn gap_event(mut self, event: Option<Event>) -> Self {
        self.config.gap_event = event;
        self
    }

    /// The last event of every stream when the manager shuts down.
    pub fn farewell(mut self, event: Event) -> Self {
        self.config.farewell = Some(event);
        self
    }

    /// Called after a connection registers (outside the manager's locks).
    pub fn on_connect(mut self, hook: impl Fn(&Connection<M>) + Send + Sync + 'static) -> Self {
        self.config.on_connect = Some(Arc::new(hook));
        self
    }

    /// Called once when a connection closes, with the reason (outside the manager's locks).
    pub fn on_close(
        mut self,
        hook: impl Fn(&Connection<M>, CloseReason) + Send + Sync + 'static,
    ) -> Self {
        self.config.on_close = Some(Arc::new(hook));
        self
    }

    /// Builds the manager.
    pub fn build(self) -> ConnectionManager<M> {
        let first_seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        let ring_capacity = self.config.queue_capacity;
        ConnectionManager {
            shared: Arc::new(Shared {
                config: self.config,
                registry: RwLock::new(Registry {
                    conns: IdMap::default(),
                    by_key: HashMap::new(),
                    by_topic: HashMap::new(),
                }),
                history: Mutex::new(History::new(self.replay_len, self.replay_age, first_seq)),
                broadcast: Arc::new(Broadcast::new(ring_capacity)),
                next_id: AtomicU64::new(1),
                shutting_down: AtomicBool::new(false),
                epoch: Instant::now(),
                clock_ms: AtomicU64::new(0),
                counters: Counters::default(),
            }),
        }
    }
}

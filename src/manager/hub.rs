//! The engine behind the manager's one `Arc`: every connect, send, close and subscription
//! goes through here, so each has one path. Hooks run after the change they report, with no
//! lock held.
//!
//! Lock order, where locks nest: registry, then a connection's state, then a log's lock (or
//! its parked set); the store's publishing lock, then its topic map, then a log's lock.
//! Nothing takes the registry or the publishing lock while holding a connection's or a log's.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use tokio::time::Instant;

use super::broker::{Engine, Op, Sink, Target};
use super::config::Config;
use super::connect::{Connect, Resume};
use super::connection::{Bound, Connection, Ending, Offer};
use super::error::{ConnectError, SendError, SubscribeError};
use super::log::Log;
use super::registry::Registry;
use super::stats::Counters;
use super::store::{Ids, ResumeFrom, Store};
use super::sync::{AtomicBool, AtomicU64, Ordering};
use super::types::{CloseReason, Completion, ConnectionId, Delivery, Replay, SlowConsumerPolicy};
use crate::Event;

pub(crate) struct Hub<M> {
    pub(crate) config: Config<M>,
    /// This manager's number among those joined by a backplane (0 without one).
    instance: u32,
    pub(crate) registry: Registry<M>,
    pub(crate) store: Store,
    pub(crate) counters: Counters,
    next_id: AtomicU64,
    closing: AtomicBool,
    epoch: Instant,
    /// Milliseconds since `epoch` at the latest connect or send. A body dates its writes
    /// with this, so writing costs no clock read; it is never later than the write itself.
    clock_ms: AtomicU64,
    #[cfg(feature = "tracing")]
    pub(crate) lag_warnings: crate::telemetry::RateLimit,
    #[cfg(feature = "tracing")]
    slow_warnings: crate::telemetry::RateLimit,
    #[cfg(feature = "metrics")]
    topic_meters: super::sync::Mutex<TopicMeters>,
}

/// Subscribers per topic, for at most `cap` topics; the others are counted together.
#[cfg(feature = "metrics")]
#[derive(Debug)]
struct TopicMeters {
    cap: usize,
    gauges: std::collections::HashMap<Arc<str>, metrics::Gauge>,
    other: Option<metrics::Gauge>,
}

impl<M> Hub<M> {
    pub(crate) fn new(config: Config<M>) -> Self {
        // Automatic ids start from the creation time in microseconds since the Unix epoch,
        // so ids from an earlier process are never mistaken for new ones.
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let (ids, instance) = match &config.backplane {
            Some(engine) => (Ids::Broker, engine.instance()),
            None => (Ids::Local { base }, 0),
        };
        let store = Store::new(config.limits(), ids);
        Hub {
            instance,
            registry: Registry::default(),
            store,
            counters: Counters::default(),
            next_id: AtomicU64::new(1),
            closing: AtomicBool::new(false),
            epoch: Instant::now(),
            clock_ms: AtomicU64::new(0),
            #[cfg(feature = "tracing")]
            lag_warnings: Default::default(),
            #[cfg(feature = "tracing")]
            slow_warnings: Default::default(),
            #[cfg(feature = "metrics")]
            topic_meters: super::sync::Mutex::new(TopicMeters {
                cap: config.topic_metrics,
                gauges: Default::default(),
                other: None,
            }),
            config,
        }
    }

    /// One subscriber more (`delta` 1) or fewer (-1) on `topic`, if per-topic metrics are on.
    #[cfg(feature = "metrics")]
    pub(crate) fn topic_metric(&self, topic: &Arc<str>, delta: f64) {
        let mut m = self.topic_meters.lock();
        if m.cap == 0 {
            return;
        }
        let gauge = match m.gauges.get(topic) {
            Some(g) => g.clone(),
            None if m.gauges.len() < m.cap => {
                let g = metrics::gauge!(crate::telemetry::TOPIC_SUBSCRIBERS, "topic" => topic.to_string());
                m.gauges.insert(topic.clone(), g.clone());
                g
            }
            None => m
                .other
                .get_or_insert_with(
                    || metrics::gauge!(crate::telemetry::TOPIC_SUBSCRIBERS, "topic" => "_other"),
                )
                .clone(),
        };
        drop(m);
        gauge.increment(delta);
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    pub(crate) fn start_closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    fn ms_at(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Moves the write clock to `now` (never back); returns `now` in ms.
    fn tick(&self, now: Instant) -> u64 {
        let ms = self.ms_at(now);
        self.clock_ms.fetch_max(ms, Ordering::Relaxed);
        ms
    }

    /// The time a body records for a write (see [`clock_ms`](Self::clock_ms)).
    pub(crate) fn write_clock(&self) -> u64 {
        self.clock_ms.load(Ordering::Relaxed)
    }

    /// Registers a connection: positions in its logs (resuming after its last id), then the
    /// registry, then the hook.
    pub(crate) fn connect(&self, options: Connect<M>) -> Result<Arc<Connection<M>>, ConnectError> {
        if self.is_closing() {
            return Err(ConnectError::ShutDown);
        }
        let Connect {
            key,
            topics,
            meta,
            resume,
            context: _,
        } = options;
        if topics.len() > self.config.max_topics {
            return Err(ConnectError::TooManyTopics {
                limit: self.config.max_topics,
            });
        }
        let id = ConnectionId::new(self.instance, self.next_id.fetch_add(1, Ordering::Relaxed));
        let now = Instant::now();
        let now_ms = self.tick(now);
        let from = match &resume {
            Resume::Fresh => ResumeFrom::Fresh,
            Resume::After(id) => ResumeFrom::Id(id.as_str()),
            Resume::Unknown => ResumeFrom::Unknown,
        };
        let start = self.store.resume(&topics, from, now_ms);
        let replay = start.replay;
        let gap = match replay {
            Replay::Gap(_) => self.config.gap_event.as_ref().map(|e| e.as_bytes().clone()),
            _ => None,
        };
        let bound = Bound {
            capacity: self.config.queue_capacity as u64,
            policy: self.config.policy,
        };
        let conn = Arc::new(Connection::new(
            id,
            bound,
            key,
            meta,
            now,
            now_ms,
            replay,
            (start.all, start.topics, start.skip_through),
            gap,
        ));
        // The names as the logs hold them: shared, not copied.
        let names = conn.topics();
        if let Err(e) = self
            .registry
            .insert(&conn, &names, self.config.caps, &self.closing)
        {
            self.release(&conn);
            return Err(e);
        }
        self.counters.connected();
        #[cfg(feature = "metrics")]
        for topic in &names {
            self.topic_metric(topic, 1.0);
        }
        if let Some(engine) = self.engine() {
            engine.report(self.registry.len(), conn.key().map(|k| (k, 1)));
        }
        match replay {
            Replay::Resumed(_) => self.counters.resumed(),
            Replay::Gap(_) => self.counters.gap(),
            Replay::Fresh => {}
        }
        if let Some(hook) = &self.config.hooks.on_connect {
            hook(&conn);
        }
        Ok(conn)
    }

    /// Unsubscribes a closed (or refused) connection from every log it reads.
    fn release(&self, conn: &Connection<M>) {
        for log in conn.logs() {
            self.store.unsubscribe(&log);
        }
    }

    /// Publishes `event` to everyone (`None`) or to a topic's subscribers, through the
    /// topic's log: one push, whatever the number of readers. With a backplane, hands it to
    /// the broker instead: every instance records it when it comes back.
    pub(crate) fn publish(&self, topic: Option<&str>, event: Event) -> Result<Delivery, SendError> {
        if self.is_closing() {
            return Err(SendError::ShutDown);
        }
        if let Some(engine) = self.engine() {
            let op = Op::Publish {
                topic: topic.map(Arc::from),
                event: event.without_id(),
            };
            engine.send(op, None)?;
            return Ok(Delivery::handed_over());
        }
        let now_ms = self.tick(Instant::now());
        let recorded = self
            .store
            .publish(topic, event, self.config.auto_ids, now_ms);
        Ok(self.fan_out(recorded))
    }

    /// As [`publish`](Self::publish), but with a backplane resolves once the broker has
    /// recorded the event, with the id it gave it.
    pub(crate) fn publish_confirmed(
        &self,
        topic: Option<&str>,
        event: Event,
    ) -> impl std::future::Future<Output = Result<Delivery, SendError>> + Send + 'static {
        let sent = match self.engine() {
            None => Err(self.publish(topic, event)),
            Some(_) if self.is_closing() => Err(Err(SendError::ShutDown)),
            Some(engine) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let op = Op::Publish {
                    topic: topic.map(Arc::from),
                    event: event.without_id(),
                };
                match engine.send(op, Some(tx)) {
                    Ok(()) => Ok(rx),
                    Err(e) => Err(Err(SendError::from(e))),
                }
            }
        };
        async move {
            match sent {
                Err(done) => done,
                Ok(rx) => {
                    let id = rx
                        .await
                        .unwrap_or(Err(super::broker::BackplaneError::Unconfirmed))?;
                    Ok(Delivery {
                        id: Some(Arc::from(id)),
                        ..Delivery::handed_over()
                    })
                }
            }
        }
    }

    /// Wakes the readers of a log an event was just recorded in, and sweeps it if due.
    fn fan_out(&self, recorded: Option<(Event, Arc<Log>)>) -> Delivery {
        let Some((event, log)) = recorded else {
            // A topic nobody reads, with replay off: nobody will ever see it.
            self.counters.sent(0);
            return Delivery {
                id: None,
                delivered: 0,
                disconnected: 0,
            };
        };
        log.wake();
        let disconnected = match self.config.policy {
            // Once per `capacity` publishes to this log: a reader that stopped reading is
            // found without its body ever being polled.
            SlowConsumerPolicy::Disconnect if self.sweep_due(&log) => self.sweep(&log),
            _ => 0,
        };
        let delivered = log.subscribers();
        self.counters.sent(delivered);
        Delivery {
            id: event_id(event.id()),
            delivered,
            disconnected,
        }
    }

    /// On the first publish a reader that has read nothing could not hold, then once every
    /// `capacity` publishes: a client that stopped reading is disconnected on the very
    /// publish it could no longer hold, and sweeping costs a fraction of a reader per
    /// publish.
    fn sweep_due(&self, log: &Log) -> bool {
        let (end, capacity) = (log.end(), self.config.queue_capacity as u64);
        end > capacity && (end - 1) % capacity == 0
    }

    /// Closes the readers of `log` that are too far behind.
    fn sweep(&self, log: &Log) -> usize {
        let behind = self
            .registry
            .select(log.name().map(|n| &**n), Connection::is_behind);
        behind
            .iter()
            .filter(|c| self.close(c, CloseReason::SlowConsumer, Ending::Now { abort: true }))
            .count()
    }

    /// Sends `event` to each of `conns` alone (not recorded for replay).
    pub(crate) fn send(
        &self,
        conns: &[Arc<Connection<M>>],
        event: &Event,
    ) -> Result<Delivery, SendError> {
        if self.is_closing() {
            return Err(SendError::ShutDown);
        }
        self.tick(Instant::now());
        let stamp = self.store.published();
        let (mut delivered, mut disconnected) = (0, 0);
        for conn in conns {
            match self.offer(conn, event.as_bytes(), stamp) {
                Ok(()) => delivered += 1,
                Err(SendError::SlowConsumer) => disconnected += 1,
                Err(_) => {}
            }
        }
        self.counters.sent(delivered);
        Ok(Delivery {
            id: event_id(event.id()),
            delivered,
            disconnected,
        })
    }

    /// Sends `event` to one connection alone.
    pub(crate) fn send_one(&self, conn: &Connection<M>, event: &Event) -> Result<(), SendError> {
        if self.is_closing() {
            return Err(SendError::ShutDown);
        }
        self.tick(Instant::now());
        self.offer(conn, event.as_bytes(), self.store.published())?;
        self.counters.sent(1);
        Ok(())
    }

    fn offer(&self, conn: &Connection<M>, bytes: &Bytes, stamp: u64) -> Result<(), SendError> {
        match conn.offer(bytes, stamp) {
            Offer::Queued => Ok(()),
            Offer::Lagged => {
                self.counters.lagged(1);
                Ok(())
            }
            Offer::Full => {
                self.close(conn, CloseReason::SlowConsumer, Ending::Now { abort: true });
                Err(SendError::SlowConsumer)
            }
            Offer::Closed(reason) => Err(SendError::Closed(reason)),
        }
    }

    /// Closes `conn` once: ends its stream as `ending` says, removes it from every index,
    /// counts it, calls the close hook and wakes whoever waits for the close. Returns
    /// `false` if it had closed already.
    pub(crate) fn close(&self, conn: &Connection<M>, reason: CloseReason, ending: Ending) -> bool {
        let now = matches!(ending, Ending::Now { .. });
        let Some(discarded) = conn.close(reason, ending, self.store.published()) else {
            return false;
        };
        if now {
            // Its body will not read again: no publish needs to wake it.
            conn.unpark();
        }
        let names = conn.topics();
        self.registry.remove(conn, &names);
        self.release(conn);
        if let Some(engine) = self.engine() {
            engine.report(self.registry.len(), conn.key().map(|k| (k, -1)));
        }
        self.counters.dropped(discarded);
        self.counters.closed(reason);
        #[cfg(feature = "metrics")]
        for topic in &names {
            self.topic_metric(topic, -1.0);
        }
        #[cfg(feature = "tracing")]
        if reason == CloseReason::SlowConsumer {
            if let Some(left_out) = self.slow_warnings.allow() {
                tracing::warn!(
                    id = %conn.id(),
                    similar_warnings_left_out = left_out,
                    "slow consumer disconnected"
                );
            }
        }
        if let Some(hook) = &self.config.hooks.on_close {
            hook(conn, reason);
        }
        conn.notify_closed();
        true
    }

    /// Completes `conn`: what was sent before is delivered, then the completion's last
    /// event, then the end.
    pub(crate) fn complete(&self, conn: &Connection<M>, completion: Completion) -> bool {
        let reason = completion.close_reason();
        self.close(
            conn,
            reason,
            Ending::Drain {
                last: completion.last,
                finished: completion.finished,
            },
        )
    }

    /// Ends `conn` at once for `reason`; if it had closed already (it was completing), frees
    /// what it still held.
    pub(crate) fn close_or_discard(&self, conn: &Connection<M>, reason: CloseReason) {
        if !self.close(conn, reason, Ending::Now { abort: false }) {
            self.counters.dropped(conn.discard());
        }
    }

    /// Subscribes `conn` to `topic`: everything published to it after this call is sent.
    /// Returns `false` if it was subscribed already.
    pub(crate) fn subscribe(
        &self,
        conn: &Arc<Connection<M>>,
        topic: &str,
    ) -> Result<bool, SubscribeError> {
        if self.is_closing() {
            return Err(SubscribeError::ShutDown);
        }
        if conn.has_topic(topic) {
            return Ok(false);
        }
        let (log, cursor) = self.store.subscribe(topic);
        match conn.subscribe(log.clone(), cursor, self.config.max_topics) {
            Ok(true) => {}
            other => {
                self.store.unsubscribe(&log);
                return other;
            }
        }
        if let Some(name) = log.name() {
            // If it closed meanwhile, the close released this log with the others.
            self.registry.add_topic(conn, name);
            #[cfg(feature = "metrics")]
            self.topic_metric(name, 1.0);
        }
        if let Some(hook) = &self.config.hooks.on_subscribe {
            hook(conn, topic);
        }
        Ok(true)
    }

    /// Unsubscribes `conn` from `topic` at once. Returns `false` if it was not subscribed
    /// (or has closed).
    pub(crate) fn unsubscribe(&self, conn: &Connection<M>, topic: &str) -> bool {
        let Some(log) = conn.unsubscribe(topic) else {
            return false;
        };
        self.registry.remove_topic(conn, topic);
        self.store.unsubscribe(&log);
        #[cfg(feature = "metrics")]
        if let Some(name) = log.name() {
            self.topic_metric(name, -1.0);
        }
        if let Some(hook) = &self.config.hooks.on_unsubscribe {
            hook(conn, topic);
        }
        true
    }

    /// Closes each of `conns` that is still open. Returns how many this call closed.
    pub(crate) fn close_each(
        &self,
        conns: &[Arc<Connection<M>>],
        reason: CloseReason,
        ending: impl Fn() -> Ending,
    ) -> usize {
        conns
            .iter()
            .filter(|c| self.close(c, reason, ending()))
            .count()
    }
}

/// With a backplane: operations go to the broker, and come back to every instance.
impl<M> Hub<M> {
    pub(crate) fn engine(&self) -> Option<&Arc<dyn Engine>> {
        self.config.backplane.as_ref()
    }

    pub(crate) fn instance(&self) -> u32 {
        self.instance
    }

    /// Hands `op` to the broker, if there is one: `Ok(false)` if there is none and the
    /// caller applies it here.
    pub(crate) fn route(&self, op: impl FnOnce() -> Op) -> Result<bool, SendError> {
        let Some(engine) = self.engine() else {
            return Ok(false);
        };
        if self.is_closing() {
            return Err(SendError::ShutDown);
        }
        engine.send(op(), None)?;
        Ok(true)
    }

    /// Whether a connection id names a connection of another instance.
    pub(crate) fn is_remote(&self, id: ConnectionId) -> bool {
        self.engine().is_some() && id.instance() != self.instance
    }

    /// The connections of this instance an operation is for.
    pub(crate) fn local(&self, target: &Target) -> Vec<Arc<Connection<M>>> {
        match target {
            Target::Key(key) => self.registry.key(key),
            Target::Topic(topic) => self.registry.topic(topic),
            Target::Conn(id) if id.instance() == self.instance => {
                self.registry.get(id.as_u64()).into_iter().collect()
            }
            Target::Conn(_) => Vec::new(),
        }
    }

    /// Applies an operation the broker delivered.
    fn apply(&self, n: u64, op: Op) {
        match op {
            Op::Publish { topic, event } => {
                let Some(id) = self.store.broker_id(n) else {
                    return;
                };
                let now_ms = self.tick(Instant::now());
                let event = event.with_validated_id(&id);
                let recorded = self.store.publish_at(topic.as_deref(), event, n, now_ms);
                self.fan_out(recorded);
            }
            Op::Send { target, event } => {
                let _ = self.send(&self.local(&target), &event);
            }
            Op::Complete { target, completion } => {
                let reason = completion.close_reason();
                self.close_each(&self.local(&target), reason, || Ending::Drain {
                    last: completion.last.clone(),
                    finished: completion.finished,
                });
            }
            Op::Evict { target } => {
                self.close_each(&self.local(&target), CloseReason::Evicted, || Ending::Now {
                    abort: false,
                });
            }
            Op::Subscribe { key, topic } => {
                for conn in self.registry.key(&key) {
                    let _ = self.subscribe(&conn, &topic);
                }
            }
            Op::Unsubscribe { key, topic } => {
                for conn in self.registry.key(&key) {
                    self.unsubscribe(&conn, &topic);
                }
            }
        }
    }

    /// Every connection here is told that it may have missed events.
    fn gap_everywhere(&self) {
        if let Some(gap) = &self.config.gap_event {
            let _ = self.send(&self.registry.all(), gap);
        }
    }
}

impl<M: Send + Sync + 'static> Hub<M> {
    /// Starts receiving from the broker, if there is one.
    pub(crate) fn start(self: &Arc<Self>) {
        if let Some(engine) = self.engine() {
            engine.start(Arc::new(HubSink {
                hub: Arc::downgrade(self),
                started: AtomicBool::new(false),
            }));
        }
    }
}

/// What the broker delivers, applied to a hub while it lives (the engine holds no strong
/// reference, so dropping the manager stops it).
struct HubSink<M> {
    hub: Weak<Hub<M>>,
    started: AtomicBool,
}

impl<M: Send + Sync + 'static> Sink for HubSink<M> {
    fn epoch(&self, tag: &str, first: u64) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        hub.store.begin_epoch(tag, first);
        // A new epoch after the first: the broker's history was lost.
        if self.started.swap(true, Ordering::AcqRel) {
            hub.gap_everywhere();
        }
    }

    fn apply(&self, n: u64, _origin: u32, op: Op) {
        if let Some(hub) = self.hub.upgrade() {
            hub.apply(n, op);
        }
    }

    fn lost(&self, n: u64) {
        if let Some(hub) = self.hub.upgrade() {
            hub.store.lost(n);
            hub.gap_everywhere();
        }
    }
}

fn event_id(id: Option<&str>) -> Option<Arc<str>> {
    id.map(Arc::from)
}

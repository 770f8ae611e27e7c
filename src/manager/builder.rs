//! [`ManagerBuilder`]: a manager's settings and hooks.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::broker::Backplane;
use super::config::Config;
use super::connection::Connection;
use super::types::{CloseReason, SlowConsumerPolicy};
use crate::Event;

/// Configures a [`ConnectionManager`](super::ConnectionManager).
///
/// ```
/// use std::time::Duration;
/// use tower_sse::manager::{ConnectionManager, SlowConsumerPolicy};
///
/// let manager = ConnectionManager::builder()
///     .queue_capacity(64)
///     .slow_consumer(SlowConsumerPolicy::Disconnect)
///     .replay(1000, Some(Duration::from_secs(300)))
///     .history_bytes(16 * 1024 * 1024)
///     .max_connections(10_000)
///     .max_per_key(8)
///     .on_close(|conn, reason| println!("{} closed: {reason}", conn.id()))
///     .build();
/// # let _ = manager;
/// ```
///
/// For connections that carry metadata, name its type once:
/// `ManagerBuilder::<Session>::new()`.
#[must_use]
pub struct ManagerBuilder<M = ()> {
    pub(crate) config: Config<M>,
}

impl<M> Default for ManagerBuilder<M> {
    fn default() -> Self {
        ManagerBuilder {
            config: Config::default(),
        }
    }
}

impl<M> fmt::Debug for ManagerBuilder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerBuilder")
            .field("config", &self.config)
            .finish()
    }
}

impl<M: Send + Sync + 'static> ManagerBuilder<M> {
    /// A builder with the default settings, for connections carrying metadata of type `M`
    /// ([`Connect::with_meta`](super::Connect::with_meta)).
    pub fn new() -> Self {
        Self::default()
    }

    /// The backlog bound: events a connection may have waiting (sent to it alone, or
    /// published and not yet sent) before the slow-consumer policy applies (default 256).
    /// At least 1. Replayed events are not counted (the history bounds them).
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.config.queue_capacity = capacity.max(1);
        self
    }

    /// What to do with a connection past its backlog bound (default: disconnect it).
    pub fn slow_consumer(mut self, policy: SlowConsumerPolicy) -> Self {
        self.config.policy = policy;
        self
    }

    /// Refuses connections beyond `limit` in total.
    pub fn max_connections(mut self, limit: usize) -> Self {
        self.config.caps.max_connections = Some(limit);
        self
    }

    /// Refuses connections beyond `limit` for one key.
    pub fn max_per_key(mut self, limit: usize) -> Self {
        self.config.caps.max_per_key = Some(limit);
        self
    }

    /// The most topics one connection may subscribe to (default 64).
    pub fn max_topics(mut self, limit: usize) -> Self {
        self.config.max_topics = limit;
        self
    }

    /// Keeps the last `count` events of each topic and of the events published to all,
    /// none older than `max_age`, for replay by `Last-Event-ID` (default: 1024 events, 5
    /// minutes). `count` 0 turns replay off. See also
    /// [`history_bytes`](Self::history_bytes).
    pub fn replay(mut self, count: usize, max_age: Option<Duration>) -> Self {
        self.config.history.count = count;
        self.config.history.max_age = max_age;
        self
    }

    /// The most bytes the history holds across every topic, each event's bookkeeping
    /// included (default 64 MiB). Past it the oldest events go first, whatever their topic;
    /// a reader that had not sent them yet has lagged.
    pub fn history_bytes(mut self, max: usize) -> Self {
        self.config.history.max_bytes = max;
        self
    }

    /// How many of the newest events a client gets after the [gap event](Self::gap_event)
    /// when its last id is unknown, invalid or too old (default 0: the gap event, then live
    /// events). Never more than the replay count.
    pub fn replay_after_gap(mut self, count: usize) -> Self {
        self.config.history.after_gap = count;
        self
    }

    /// Whether published events without an id get the next number (default on). Numbers
    /// start from the manager's creation time in microseconds since the Unix epoch, so ids
    /// from an earlier process are never mistaken for new ones.
    pub fn auto_ids(mut self, enabled: bool) -> Self {
        self.config.auto_ids = enabled;
        self
    }

    /// The event sent first to a reconnecting client whose last id is unknown, invalid or
    /// too old (default: an event of type `gap` with empty data). `None` sends nothing.
    pub fn gap_event(mut self, event: Option<Event>) -> Self {
        self.config.gap_event = event;
        self
    }

    /// Joins this manager to every other manager on the same backplane, so that they
    /// behave as one hub: publishes, sends and completions by key, topic or connection id
    /// reach every instance, and ids and history are shared. See the `backplane` module.
    pub fn backplane(mut self, backplane: impl Into<Backplane>) -> Self {
        self.config.backplane = Some(backplane.into().engine);
        self
    }

    /// Reports subscribers per topic ([`TOPIC_SUBSCRIBERS`](crate::telemetry::TOPIC_SUBSCRIBERS),
    /// label `topic`) for the first `cap` topics seen; later ones are counted together under
    /// `_other`, so the number of label values stays bounded. Off (0) by default. Has an
    /// effect with the `metrics` feature only.
    pub fn topic_metrics(mut self, cap: usize) -> Self {
        self.config.topic_metrics = cap;
        self
    }

    /// Called after a connection registers.
    pub fn on_connect(mut self, hook: impl Fn(&Connection<M>) + Send + Sync + 'static) -> Self {
        self.config.hooks.on_connect = Some(Arc::new(hook));
        self
    }

    /// Called once when a connection closes, with the reason.
    pub fn on_close(
        mut self,
        hook: impl Fn(&Connection<M>, CloseReason) + Send + Sync + 'static,
    ) -> Self {
        self.config.hooks.on_close = Some(Arc::new(hook));
        self
    }

    /// Called after a connection subscribed to a topic while open.
    pub fn on_subscribe(
        mut self,
        hook: impl Fn(&Connection<M>, &str) + Send + Sync + 'static,
    ) -> Self {
        self.config.hooks.on_subscribe = Some(Arc::new(hook));
        self
    }

    /// Called after a connection unsubscribed from a topic while open.
    pub fn on_unsubscribe(
        mut self,
        hook: impl Fn(&Connection<M>, &str) + Send + Sync + 'static,
    ) -> Self {
        self.config.hooks.on_unsubscribe = Some(Arc::new(hook));
        self
    }
}

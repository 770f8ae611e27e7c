//! What a [`ManagerBuilder`](super::ManagerBuilder) sets: the manager's settings and hooks.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::broker::Engine;
use super::connection::Connection;
use super::registry::Caps;
use super::store::Limits;
use super::types::{CloseReason, SlowConsumerPolicy};
use crate::Event;

pub(crate) type Hook<M> = Arc<dyn Fn(&Connection<M>) + Send + Sync>;
pub(crate) type CloseHook<M> = Arc<dyn Fn(&Connection<M>, CloseReason) + Send + Sync>;
pub(crate) type TopicHook<M> = Arc<dyn Fn(&Connection<M>, &str) + Send + Sync>;

/// Called outside every lock of the crate, after the change they report.
pub(crate) struct Hooks<M> {
    pub(crate) on_connect: Option<Hook<M>>,
    pub(crate) on_close: Option<CloseHook<M>>,
    pub(crate) on_subscribe: Option<TopicHook<M>>,
    pub(crate) on_unsubscribe: Option<TopicHook<M>>,
}

impl<M> Default for Hooks<M> {
    fn default() -> Self {
        Hooks {
            on_connect: None,
            on_close: None,
            on_subscribe: None,
            on_unsubscribe: None,
        }
    }
}

impl<M> fmt::Debug for Hooks<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("on_connect", &self.on_connect.is_some())
            .field("on_close", &self.on_close.is_some())
            .field("on_subscribe", &self.on_subscribe.is_some())
            .field("on_unsubscribe", &self.on_unsubscribe.is_some())
            .finish()
    }
}

/// The replay history's bounds, as the builder takes them.
#[derive(Debug, Clone)]
pub(crate) struct History {
    pub(crate) count: usize,
    pub(crate) max_bytes: usize,
    pub(crate) max_age: Option<Duration>,
    pub(crate) after_gap: usize,
}

impl Default for History {
    fn default() -> Self {
        History {
            count: 1024,
            max_bytes: 64 * 1024 * 1024,
            max_age: Some(Duration::from_secs(300)),
            after_gap: 0,
        }
    }
}

pub(crate) struct Config<M> {
    pub(crate) queue_capacity: usize,
    pub(crate) policy: SlowConsumerPolicy,
    pub(crate) caps: Caps,
    pub(crate) max_topics: usize,
    pub(crate) auto_ids: bool,
    pub(crate) gap_event: Option<Event>,
    pub(crate) history: History,
    pub(crate) hooks: Hooks<M>,
    /// Joins this manager to others through a broker.
    pub(crate) backplane: Option<Arc<dyn Engine>>,
    /// Topics with their own subscriber gauge (0: none).
    pub(crate) topic_metrics: usize,
}

impl<M> Default for Config<M> {
    fn default() -> Self {
        Config {
            queue_capacity: 256,
            policy: SlowConsumerPolicy::default(),
            caps: Caps::default(),
            max_topics: 64,
            auto_ids: true,
            gap_event: Event::builder().event("gap").data("").build().ok(),
            history: History::default(),
            hooks: Hooks::default(),
            backplane: None,
            topic_metrics: 0,
        }
    }
}

impl<M> fmt::Debug for Config<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("queue_capacity", &self.queue_capacity)
            .field("policy", &self.policy)
            .field("caps", &self.caps)
            .field("max_topics", &self.max_topics)
            .field("auto_ids", &self.auto_ids)
            .field("history", &self.history)
            .field("hooks", &self.hooks)
            .field("backplane", &self.backplane)
            .finish_non_exhaustive()
    }
}

impl<M> Config<M> {
    /// The bounds of the logs: each holds the replay count, and never less than a live
    /// reader's backlog bound.
    pub(crate) fn limits(&self) -> Limits {
        let h = &self.history;
        Limits {
            per_log: h.count.max(self.queue_capacity),
            max_bytes: h.max_bytes,
            max_age: h.max_age,
            replay: h.count > 0,
            after_gap: h.after_gap.min(h.count),
        }
    }
}

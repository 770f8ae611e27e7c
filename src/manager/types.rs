use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::{LastEventId, SseContext};

/// A connection's unique id within its manager. Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub(crate) u64);

impl ConnectionId {
    /// The id as a number.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Why a connection closed. Every connection closes exactly once, with one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// Completed by [`complete`](super::ConnectionHandle::complete): queued events and the
    /// final event were delivered, then the stream ended.
    Completed,
    /// Completed by [`complete_with_error`](super::ConnectionHandle::complete_with_error).
    CompletedWithError,
    /// The client went away (the server dropped the body).
    ClientGone,
    /// Idle too long: [`evict_idle`](super::ConnectionManager::evict_idle), or the
    /// [`SseLayer`](crate::SseLayer)'s idle timeout.
    IdleTimeout,
    /// The [`SseLayer`](crate::SseLayer)'s maximum lifetime was reached.
    Lifetime,
    /// Ended at once by [`evict`](super::ConnectionHandle::evict).
    Evicted,
    /// Its queue was full and the policy is [`SlowConsumerPolicy::Disconnect`].
    SlowConsumer,
    /// The manager, or the layer's shutdown token, shut it down.
    Shutdown,
}

impl CloseReason {
    pub(crate) const ALL: [CloseReason; 8] = [
        CloseReason::Completed,
        CloseReason::CompletedWithError,
        CloseReason::ClientGone,
        CloseReason::IdleTimeout,
        CloseReason::Lifetime,
        CloseReason::Evicted,
        CloseReason::SlowConsumer,
        CloseReason::Shutdown,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// A short lowercase name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Completed => "completed",
            CloseReason::CompletedWithError => "completed_with_error",
            CloseReason::ClientGone => "client_gone",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Lifetime => "lifetime",
            CloseReason::Evicted => "evicted",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do when a connection's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlowConsumerPolicy {
    /// Close the connection ([`CloseReason::SlowConsumer`]). The client reconnects and
    /// catches up by `Last-Event-ID` from the replay history. The default.
    #[default]
    Disconnect,
    /// Drop the connection's oldest queued event to make room, and count it as lagged
    /// ([`Connection::lagged`](super::Connection::lagged), [`Stats::lagged`]).
    DropOldest,
}

/// How a new connection was started, as far as replay goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replay {
    /// The client sent no `Last-Event-ID`.
    Fresh,
    /// The client's last id was found: this many missed events were queued first.
    Resumed(usize),
    /// The client's last id is unknown or older than the history: the gap event was sent,
    /// then this many events (the gap event not counted), everything the history holds.
    Gap(usize),
}

/// Options for [`ConnectionManager::connect`](super::ConnectionManager::connect).
///
/// ```
/// use tower_sse::manager::Connect;
///
/// let options = Connect::new().key("user-7").topic("prices").topic("news");
/// # let _ = options;
/// ```
#[must_use]
pub struct Connect<M = ()> {
    pub(crate) key: Option<Arc<str>>,
    pub(crate) topics: Vec<Arc<str>>,
    pub(crate) meta: M,
    pub(crate) last_event_id: Option<LastEventId>,
    pub(crate) context: Option<SseContext>,
}

impl Connect<()> {
    /// A connection with no key, no topic and no metadata. For a manager with metadata,
    /// start from [`with_meta`](Self::with_meta).
    pub fn new() -> Self {
        Self::with_meta(())
    }
}

impl<M: Default> Default for Connect<M> {
    fn default() -> Self {
        Self::with_meta(M::default())
    }
}

impl<M> Connect<M> {
    /// A connection carrying `meta`, which filters can read
    /// ([`ConnectionManager::send_filter`](super::ConnectionManager::send_filter)).
    pub fn with_meta(meta: M) -> Self {
        Connect {
            key: None,
            topics: Vec::new(),
            meta,
            last_event_id: None,
            context: None,
        }
    }

    /// Groups the connection under `key` (a user, a session, a token). A key may have
    /// several connections, such as browser tabs.
    pub fn key(mut self, key: impl Into<Arc<str>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Subscribes the connection to `topic`.
    pub fn topic(mut self, topic: impl Into<Arc<str>>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// Replays what the client missed after `id` (see the manager's replay settings).
    pub fn last_event_id(mut self, id: Option<LastEventId>) -> Self {
        self.last_event_id = id;
        self
    }

    /// Takes the `Last-Event-ID` and the stream's fate from the [`SseLayer`](crate::SseLayer)'s
    /// request extension, so the close reason names the layer's idle timeout, lifetime or
    /// shutdown. An invalid `Last-Event-ID` counts as none.
    pub fn context(mut self, context: &SseContext) -> Self {
        if let Ok(Some(id)) = context.last_event_id() {
            self.last_event_id = Some(id.clone());
        }
        self.context = Some(context.clone());
        self
    }
}

impl<M> fmt::Debug for Connect<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connect")
            .field("key", &self.key)
            .field("topics", &self.topics)
            .field("last_event_id", &self.last_event_id)
            .finish_non_exhaustive()
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectError {
    /// The manager is shutting down.
    ShutDown,
    /// The manager holds its maximum number of connections.
    TooManyConnections {
        /// The limit.
        limit: usize,
    },
    /// The key holds its maximum number of connections.
    TooManyForKey {
        /// The limit.
        limit: usize,
    },
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::ShutDown => f.write_str("the connection manager is shutting down"),
            ConnectError::TooManyConnections { limit } => {
                write!(
                    f,
                    "the connection manager already holds {limit} connections"
                )
            }
            ConnectError::TooManyForKey { limit } => {
                write!(f, "this key already holds {limit} connections")
            }
        }
    }
}

impl std::error::Error for ConnectError {}

/// Why an event was not sent to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closed, or closing after `complete`; nothing was queued.
    Closed {
        /// Why it closed, if it has.
        reason: Option<CloseReason>,
    },
    /// No connection with that id is open.
    NotFound,
    /// The queue was full and the policy disconnected the client.
    SlowConsumer,
    /// The manager is shutting down.
    ShutDown,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed { reason: Some(r) } => write!(f, "connection is closed ({r})"),
            SendError::Closed { reason: None } => f.write_str("connection is closing"),
            SendError::NotFound => f.write_str("no such open connection"),
            SendError::SlowConsumer => {
                f.write_str("connection's queue was full; it was disconnected")
            }
            SendError::ShutDown => f.write_str("the connection manager is shutting down"),
        }
    }
}

impl std::error::Error for SendError {}

/// The outcome of a send to several connections.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// The event's id: the one it carried, or the one the manager assigned.
    pub id: Option<Arc<str>>,
    /// How many connections the event was queued for.
    pub delivered: usize,
    /// How many were disconnected as slow consumers instead.
    pub disconnected: usize,
}

/// A snapshot of the manager's counters. See
/// [`ConnectionManager::stats`](super::ConnectionManager::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections open now.
    pub open: usize,
    /// Connections open now per topic.
    pub open_per_topic: HashMap<String, usize>,
    /// Connections opened since the start.
    pub connected: u64,
    /// Events sent through the manager: each publish counts once, and each send to one
    /// connection that was queued. Refused sends do not count.
    pub events: u64,
    /// Events queued for a connection (one event sent to 1,000 connections counts 1,000).
    pub deliveries: u64,
    /// Queued events discarded: dropped for lag, or still queued when a connection was
    /// evicted or went away.
    pub dropped: u64,
    /// Events dropped under [`SlowConsumerPolicy::DropOldest`].
    pub lagged: u64,
    /// Connections closed, per reason.
    pub closed: HashMap<CloseReason, u64>,
}

//! The manager's vocabulary: who a connection is, how it ends, and what a send did.

use std::fmt;
use std::sync::Arc;

use crate::Event;

/// A connection's id: unique within its manager, never reused.
///
/// When several managers form one hub, the id also names the instance that holds the
/// connection, so a send to it can be routed there instead of broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId {
    instance: u32,
    seq: u64,
}

impl ConnectionId {
    pub(crate) fn new(instance: u32, seq: u64) -> Self {
        ConnectionId { instance, seq }
    }

    /// The connection's number within its instance.
    pub fn as_u64(self) -> u64 {
        self.seq
    }

    /// The instance that holds the connection: 0 for a manager without a backplane.
    pub fn instance(self) -> u32 {
        self.instance
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.instance {
            0 => fmt::Display::fmt(&self.seq, f),
            i => write!(f, "{i:08x}-{}", self.seq),
        }
    }
}

/// Why a connection closed. Every connection closes exactly once, with one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// Completed ([`Completion::new`], [`Completion::with`], [`Completion::finish`]): queued
    /// events and the last event were delivered, then the stream ended.
    Completed,
    /// Completed with an error event ([`Completion::error`]).
    CompletedWithError,
    /// The client went away (the server dropped the body).
    ClientGone,
    /// Idle too long: [`evict_idle`](super::ConnectionManager::evict_idle), or the
    /// [`SseLayer`](crate::SseLayer)'s idle timeout.
    IdleTimeout,
    /// The [`SseLayer`](crate::SseLayer)'s maximum lifetime was reached.
    Lifetime,
    /// Ended at once by an `evict` call.
    Evicted,
    /// Too far behind: its backlog exceeded the queue capacity and the policy is
    /// [`SlowConsumerPolicy::Disconnect`]. The body ends with an error, so the server aborts
    /// the connection instead of waiting to write to a client that does not read.
    SlowConsumer,
    /// The manager, or the layer's shutdown token, shut it down.
    Shutdown,
    /// The handler cancelled the stream's own token
    /// ([`SseContext::cancellation_token`](crate::SseContext::cancellation_token)).
    Cancelled,
}

impl CloseReason {
    /// Every reason, in declaration order.
    pub const ALL: [CloseReason; 9] = [
        CloseReason::Completed,
        CloseReason::CompletedWithError,
        CloseReason::ClientGone,
        CloseReason::IdleTimeout,
        CloseReason::Lifetime,
        CloseReason::Evicted,
        CloseReason::SlowConsumer,
        CloseReason::Shutdown,
        CloseReason::Cancelled,
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
            CloseReason::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with a connection that falls too far behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlowConsumerPolicy {
    /// Close the connection ([`CloseReason::SlowConsumer`]). The client reconnects and
    /// catches up by `Last-Event-ID` from the replay history. The default.
    #[default]
    Disconnect,
    /// Skip the connection's oldest events to make room, and count them as lagged
    /// ([`Connection::lagged`](super::Connection::lagged), [`Stats::lagged`](super::Stats)).
    DropOldest,
}

/// How a new connection was started, as far as replay goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replay {
    /// The client sent no `Last-Event-ID`.
    Fresh,
    /// The client's last id was found: this many missed events are sent first.
    Resumed(usize),
    /// The client's last id is unknown, invalid or too old, or events it missed are no
    /// longer held: the gap event is sent first, then this many of the newest events
    /// ([`ManagerBuilder::replay_after_gap`](super::ManagerBuilder::replay_after_gap); the
    /// gap event not counted), then the live stream.
    Gap(usize),
}

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

impl Delivery {
    /// A send handed to a broker: every instance delivers it when it comes back.
    pub(crate) fn handed_over() -> Self {
        Delivery {
            id: None,
            delivered: 0,
            disconnected: 0,
        }
    }
}

/// How a completed stream ends: what is queued is delivered, then the last event if there is
/// one, then the end.
///
/// Every `complete` call of the manager and of [`ConnectionHandle`](super::ConnectionHandle)
/// takes one, or anything that converts into one: an [`Event`] (the last event), or an
/// `Option<Event>`.
///
/// ```
/// use tower_sse::manager::Completion;
/// use tower_sse::Event;
///
/// let plain = Completion::new();
/// let with_last = Completion::with(Event::message("bye"));
/// let failed = Completion::error(Event::builder().event("error").data("db down").build()?);
/// # let _ = (plain, with_last, failed);
/// # Ok::<(), tower_sse::EventError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct Completion {
    pub(crate) last: Option<Event>,
    pub(crate) reason: Completed,
    /// The last event tells the client not to come back.
    pub(crate) finished: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Completed {
    #[default]
    Ok,
    Error,
}

impl Completion {
    /// Queued events, then the end ([`CloseReason::Completed`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Queued events, then `last`, then the end ([`CloseReason::Completed`]).
    pub fn with(last: Event) -> Self {
        Completion {
            last: Some(last),
            reason: Completed::Ok,
            finished: false,
        }
    }

    /// Queued events, then `last`, then the end, for good: `last` carries the id that
    /// marks a finished stream, and a client that reconnects with it is answered
    /// `204 No Content` by the [`SseLayer`](crate::SseLayer), which tells it to stop (the
    /// prefix is the layer's, see [`SseLayer::finished_prefix`](crate::SseLayer::finished_prefix)).
    /// For an LLM answer, a job's result: anything a client must not stream again.
    pub fn finish(last: Event) -> Self {
        Completion {
            last: Some(last),
            reason: Completed::Ok,
            finished: true,
        }
    }

    /// Queued events, then the error event `event`, then the end
    /// ([`CloseReason::CompletedWithError`]).
    pub fn error(event: Event) -> Self {
        Completion {
            last: Some(event),
            reason: Completed::Error,
            finished: false,
        }
    }

    pub(crate) fn close_reason(&self) -> CloseReason {
        match self.reason {
            Completed::Ok => CloseReason::Completed,
            Completed::Error => CloseReason::CompletedWithError,
        }
    }
}

impl From<Event> for Completion {
    fn from(last: Event) -> Self {
        Completion::with(last)
    }
}

impl From<Option<Event>> for Completion {
    fn from(last: Option<Event>) -> Self {
        Completion {
            last,
            reason: Completed::Ok,
            finished: false,
        }
    }
}

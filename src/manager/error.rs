//! Why an operation of the manager did not happen. Every error says what was wrong; none of
//! them harms any other connection.

use std::fmt;

use super::broker::BackplaneError;
use super::types::CloseReason;

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
    /// More topics than a connection may have.
    TooManyTopics {
        /// The limit.
        limit: usize,
    },
}

impl ConnectError {
    /// Whether the refusal is temporary: the limits are full now, and a retry later may
    /// succeed. Answered `503` with a `Retry-After` by the `axum` integration.
    pub fn is_capacity(&self) -> bool {
        matches!(
            self,
            ConnectError::TooManyConnections { .. } | ConnectError::TooManyForKey { .. }
        )
    }
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
            ConnectError::TooManyTopics { limit } => {
                write!(f, "a connection may subscribe to at most {limit} topics")
            }
        }
    }
}

impl std::error::Error for ConnectError {}

/// Why an event was not sent to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The connection has closed, or is completing; nothing was queued.
    Closed(CloseReason),
    /// No connection with that id is open.
    NotFound,
    /// Its backlog was full and the policy disconnected it.
    SlowConsumer,
    /// The manager is shutting down.
    ShutDown,
    /// The backplane did not take the event; nothing was sent anywhere.
    Backplane(BackplaneError),
}

impl From<BackplaneError> for SendError {
    fn from(e: BackplaneError) -> Self {
        SendError::Backplane(e)
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed(reason) => write!(f, "connection is closed ({reason})"),
            SendError::NotFound => f.write_str("no such open connection"),
            SendError::SlowConsumer => {
                f.write_str("connection's backlog was full; it was disconnected")
            }
            SendError::ShutDown => f.write_str("the connection manager is shutting down"),
            SendError::Backplane(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Backplane(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a subscription was not changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The connection has closed, or is completing.
    Closed(CloseReason),
    /// The connection already has the most topics it may have.
    TooManyTopics {
        /// The limit ([`ManagerBuilder::max_topics`](super::ManagerBuilder::max_topics)).
        limit: usize,
    },
    /// The manager is shutting down.
    ShutDown,
    /// The backplane did not take the change.
    Backplane(BackplaneError),
}

impl From<SendError> for SubscribeError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Backplane(e) => SubscribeError::Backplane(e),
            SendError::Closed(reason) => SubscribeError::Closed(reason),
            _ => SubscribeError::ShutDown,
        }
    }
}

impl fmt::Display for SubscribeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubscribeError::Closed(reason) => write!(f, "connection is closed ({reason})"),
            SubscribeError::TooManyTopics { limit } => {
                write!(f, "a connection may subscribe to at most {limit} topics")
            }
            SubscribeError::ShutDown => f.write_str("the connection manager is shutting down"),
            SubscribeError::Backplane(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl std::error::Error for SubscribeError {}

/// The error a [`ConnectionBody`](super::ConnectionBody) ends with when the manager aborts
/// the stream instead of ending it cleanly: a slow consumer, which may never read the end of
/// the response. The server then drops the connection and its buffers at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamAborted {
    pub(crate) reason: CloseReason,
}

impl StreamAborted {
    /// Why the stream was aborted.
    pub fn reason(&self) -> CloseReason {
        self.reason
    }
}

impl fmt::Display for StreamAborted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event stream aborted by the connection manager ({})",
            self.reason
        )
    }
}

impl std::error::Error for StreamAborted {}

//! The seam between the manager and a broker that joins several managers into one hub: the
//! operations an instance hands to it, what every instance gets back in the broker's one
//! order, and the id format every engine shares. An engine (Redis today) implements
//! [`Engine`]; the manager implements [`Sink`].

// Without an engine compiled in (feature `redis`), nothing reads what the seam carries.
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use std::fmt;
use std::sync::Arc;

use super::types::{Completion, ConnectionId};
use crate::Event;

/// Who an operation is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Key(Arc<str>),
    Topic(Arc<str>),
    Conn(ConnectionId),
}

/// An operation every instance applies, in the broker's order.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Recorded for replay; to all (`None`) or to a topic. The event carries no id: the
    /// broker's position is its id.
    Publish {
        topic: Option<Arc<str>>,
        event: Event,
    },
    Send {
        target: Target,
        event: Event,
    },
    Complete {
        target: Target,
        completion: Completion,
    },
    Evict {
        target: Target,
    },
    Subscribe {
        key: Arc<str>,
        topic: Arc<str>,
    },
    Unsubscribe {
        key: Arc<str>,
        topic: Arc<str>,
    },
}

/// Why a broker did not take an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackplaneError {
    /// The broker is unreachable now; nothing was sent. Open streams stay open.
    Unavailable,
    /// Operations are queued for the broker faster than it takes them; nothing was sent.
    Overloaded,
    /// The broker did not confirm the operation (the connection failed while it was on its
    /// way); it may or may not have been recorded.
    Unconfirmed,
}

impl fmt::Display for BackplaneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackplaneError::Unavailable => "the backplane's broker is unreachable",
            BackplaneError::Overloaded => "too many operations are waiting for the backplane",
            BackplaneError::Unconfirmed => "the backplane's broker did not confirm the operation",
        })
    }
}

impl std::error::Error for BackplaneError {}

/// A broker that joins several managers into one hub, for
/// [`ManagerBuilder::backplane`](super::ManagerBuilder::backplane). Made from an engine such
/// as `RedisBackplane` (feature `redis`).
#[derive(Debug, Clone)]
pub struct Backplane {
    pub(crate) engine: Arc<dyn Engine>,
}

impl Backplane {
    pub(crate) fn new(engine: Arc<dyn Engine>) -> Self {
        Backplane { engine }
    }
}

/// Resolves with the id the broker gave a publish, once it has recorded it.
pub(crate) type Ack = tokio::sync::oneshot::Sender<Result<String, BackplaneError>>;

/// A broker engine, as the manager uses it.
pub(crate) trait Engine: Send + Sync + fmt::Debug + 'static {
    /// This instance's number, carried by its connection ids. Never 0.
    fn instance(&self) -> u32;

    /// Queues `op` for every instance, this one included, never waiting.
    fn send(&self, op: Op, ack: Option<Ack>) -> Result<(), BackplaneError>;

    /// Starts delivering every instance's operations, in the broker's order, to `sink`.
    /// Called once, from inside a tokio runtime.
    fn start(&self, sink: Arc<dyn Sink>);

    /// This instance's open connections and keys, for the cluster view.
    fn report(&self, open: usize, key: Option<(&str, isize)>);
}

/// The manager's side: what an engine delivers.
pub(crate) trait Sink: Send + Sync + 'static {
    /// The broker's history starts (or starts over) with epoch `tag`; its entries numbered
    /// `first` and later follow. Nothing before `first` is known to this instance.
    fn epoch(&self, tag: &str, first: u64);

    /// Entry `n` of the current epoch, recorded by instance `origin`.
    fn apply(&self, n: u64, origin: u32, op: Op);

    /// Entries up to `n` that this instance never received are lost to it.
    fn lost(&self, n: u64);
}

/// The id of entry `n` of epoch `epoch`, as clients see it: `EPOCH-N`.
pub(crate) fn format_id(epoch: &str, n: u64) -> String {
    let mut digits = itoa::Buffer::new();
    let mut id = String::with_capacity(epoch.len() + 21);
    id.push_str(epoch);
    id.push('-');
    id.push_str(digits.format(n));
    id
}

/// The epoch and number of an id made by [`format_id`].
pub(crate) fn parse_id(id: &str) -> Option<(&str, u64)> {
    let (epoch, n) = id.rsplit_once('-')?;
    Some((epoch, n.parse().ok()?))
}

#[cfg(all(test, not(tower_sse_loom)))]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let id = format_id("5f3a9c01", 1042);
        assert_eq!(id, "5f3a9c01-1042");
        assert_eq!(parse_id(&id), Some(("5f3a9c01", 1042)));
        assert_eq!(parse_id("1042"), None);
        assert_eq!(parse_id("x-y"), None);
    }
}

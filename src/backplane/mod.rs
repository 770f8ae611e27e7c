//! Many instances, one hub: a backplane joins the [`ConnectionManager`]s of several
//! processes (replicas behind a load balancer, a rolling deploy) so that they behave as one.
//!
//! # Example
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use tower_sse::backplane::RedisBackplane;
//! use tower_sse::{ConnectionManager, Event};
//!
//! let redis = RedisBackplane::builder("redis://127.0.0.1:6379")
//!     .hub("chat")
//!     .connect()
//!     .await?;
//! let manager = ConnectionManager::builder().backplane(redis.clone()).build();
//!
//! // Reaches the connections of every instance of the hub.
//! manager.publish(Event::message("hello, everyone"))?;
//! manager.send_to_key("user-7", Event::message("wherever you are"))?;
//! manager.complete_key("ticker-42", Event::builder().event("end").data("").build()?)?;
//! println!("{} streams open across the hub", redis.cluster_stats().await?.open);
//! # Ok(())
//! # }
//! ```
//!
//! # What holds across instances
//!
//! - **Publish anywhere, deliver everywhere.** [`publish`](crate::ConnectionManager::publish) and
//!   [`publish_topic`](crate::ConnectionManager::publish_topic) hand the event to the broker;
//!   every instance, this one included, gets it back in the broker's one order and sends it
//!   to its connections. Each connection gets each event once, in the order its publisher
//!   sent them, merged with everything else it is sent.
//! - **Targeted operations reach the connection wherever it lives.** Sends, completions
//!   and evictions by key, by topic and by [`ConnectionId`](crate::ConnectionId) (whose
//!   [`instance`](crate::ConnectionId::instance) names its instance), and
//!   [`subscribe_key`](crate::ConnectionManager::subscribe_key). They are applied by each
//!   instance when the broker delivers them, in order with publishes, so the methods return
//!   counts of 0: the work happens everywhere, later. Filters, handles and
//!   [`ConnectionHandle::subscribe`](crate::ConnectionHandle::subscribe) stay local.
//! - **One id space, one history.** Event ids come from the broker (`EPOCH-N`), so a client
//!   that reconnects to any instance with `Last-Event-ID` gets exactly what it missed for the
//!   topics it is on now: every instance holds the hub's history, read from the broker. An
//!   id the history no longer covers, an id of an older epoch (the broker lost its data), or
//!   one after which this instance missed something, gets the gap event: never a silent
//!   hole. An event's own id is replaced by the broker's.
//! - **Broker faults.** While the broker is unreachable, publishes and routed operations
//!   fail at once with [`BackplaneError::Unavailable`], and open streams stay open (the
//!   layer's heartbeats go on). When it is back, each instance reads what it missed; what it
//!   can no longer read is signalled by the gap event.
//!
//! A publish returns once the event is queued for the broker, without its id
//! ([`publish_confirmed`](crate::ConnectionManager::publish_confirmed) waits for it).
//!
//! # Ids
//!
//! An id `EPOCH-N` is a position in the hub's one order: every operation takes a number, so
//! the ids one client sees skip those of operations that were not for it. What tells a client
//! it missed something is the gap event. It is sent when the history no longer covers the
//! client's id, when Redis lost its data (its next append starts a new epoch), when an
//! instance finds numbers it never received (trimmed before it read them), and when the
//! numbers go back within an epoch (a failover to a replica that had not received the newest
//! entries): every instance meets the same first such entry, derives the same new tag from
//! it, and retires the epoch in Redis. A client that comes back to an instance that has not
//! yet received its last id resumes there all the same: what it has seen is skipped as it
//! arrives.
//!
//! [`ConnectionManager`]: crate::ConnectionManager

pub use crate::manager::{Backplane, BackplaneError};

#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{ClusterStats, InstanceStats, RedisBackplane, RedisBackplaneBuilder};

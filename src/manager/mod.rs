//! [`ConnectionManager`]: track every open stream, send to one, a key, a topic or all,
//! complete and evict, change topics at runtime, replay by `Last-Event-ID`, in any
//! framework.
//!
//! # Example
//!
//! ```
//! use http_body_util::BodyExt;
//! use tower_sse::manager::{CloseReason, Connect, ConnectionManager, SendError};
//! use tower_sse::Event;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let manager = ConnectionManager::new();
//!
//! // In a handler: register the client and answer with its body.
//! let (handle, body) = manager.connect(Connect::new().key("user-7").topic("prices"))?;
//! let response = body.into_response(); // any framework takes an http::Response
//!
//! // Anywhere else: send to everyone, a topic, a key, or one connection.
//! manager.publish(Event::message("to everyone"))?;
//! manager.publish_topic("prices", Event::message("EUR 1.08"))?;
//! manager.send_to_key("user-7", Event::message("just for you"))?;
//!
//! // Topics change while the stream is open.
//! handle.subscribe("news")?;
//! manager.publish_topic("news", Event::message("extra"))?;
//!
//! // Complete it from anywhere: what was sent is delivered, then the last event, then the end.
//! handle.complete_with(Event::builder().event("end").data("").build()?);
//! assert_eq!(
//!     handle.send(Event::message("too late")),
//!     Err(SendError::Closed(CloseReason::Completed))
//! );
//!
//! let bytes = response.into_body().collect().await?.to_bytes();
//! let text = String::from_utf8(bytes.to_vec())?;
//! assert!(text.contains("data: to everyone\n\n"));
//! assert!(text.ends_with("data: extra\n\nevent: end\ndata: \n\n"));
//! assert!(manager.is_empty());
//! # Ok(())
//! # }
//! ```
//!
//! # How it behaves
//!
//! - **Never waits on a client.** [`publish`](ConnectionManager::publish) and
//!   [`publish_topic`](ConnectionManager::publish_topic) put the event once into a bounded
//!   log (one for everything published to all, one per topic) that every subscribed
//!   connection reads at its own position, as `tokio::sync::broadcast` does: their cost does
//!   not grow with the number of readers. Sends to a key, a filter or one connection go to
//!   that connection's own queue, stamped so that each connection still sends everything in
//!   the order it was sent, across all its topics.
//! - **Bounded memory per client.** A connection's backlog (its queue plus the published
//!   events it has not sent) is bounded by the queue capacity. Past it the
//!   [`SlowConsumerPolicy`] applies: disconnect (the default; the stream ends with an error
//!   so the server drops a client that stopped reading, and the client catches up by replay
//!   when it comes back) or skip the oldest events and count the lag.
//! - **Replay is a position, not a copy.** A client that reconnects with `Last-Event-ID`
//!   starts reading the same logs further back: replay costs a connection nothing beyond its
//!   positions, and the logs are bounded by count per topic and by bytes and age across all
//!   of them ([`ManagerBuilder::replay`], [`ManagerBuilder::history_bytes`]). It gets exactly
//!   what it missed on the topics it is on now, then the live stream, with no gap and no
//!   duplicate. An unknown, invalid or expired id, or one after which something was
//!   dropped, gets an explicit gap event, then live events.
//! - **Topics at runtime.** [`ConnectionHandle::subscribe`] and
//!   [`unsubscribe`](ConnectionHandle::unsubscribe) (or by key,
//!   [`ConnectionManager::subscribe_key`]) take effect at once: events published to the
//!   topic after the call are sent, none from before; after an unsubscribe nothing more of
//!   the topic is sent, even what was published before but not yet written. A topic's state
//!   is freed when its last subscriber has left and its history has gone (dropped by the
//!   bounds, checked on publishes and on [`evict_idle`](ConnectionManager::evict_idle)).
//! - **Encoded once.** One event sent to 100,000 connections is one buffer.
//! - **Coalesced writes.** Events waiting together leave the body as one frame.
//! - **Cleaned up at once.** When the server drops a [`ConnectionBody`] (the client went
//!   away), the connection leaves every index and its hook fires; no sweeper is needed.
//! - **One close, one reason.** Every connection closes exactly once with a
//!   [`CloseReason`], seen by the `on_close` hook and by [`ConnectionHandle::closed`], and
//!   every operation on a closed connection returns a result that says so. Nothing panics.
//! - **No user code under a lock.** Hooks and filters run with no lock of the crate held,
//!   so they may call the manager; wake-ups happen after the locks are released.
//!
//! # Replay across topic changes
//!
//! A client's `Last-Event-ID` is a position in one order of every publish. A client that
//! reconnects with the topics it is on now (for example in its URL) gets every event of
//! those topics, and of everything published to all, published after that id and still in
//! the history: also for topics it was not on before. If any such event has been dropped
//! meanwhile, it gets the gap event instead of a silent hole.

mod body;
pub(crate) mod broker;
mod builder;
mod config;
mod connect;
mod connection;
mod error;
mod handle;
mod hub;
mod log;
#[allow(clippy::module_inception)]
mod manager;
mod registry;
mod stats;
mod store;
mod sync;
mod types;

#[cfg(feature = "axum")]
mod axum;

pub use self::body::ConnectionBody;
pub use self::broker::{Backplane, BackplaneError};
pub use self::builder::ManagerBuilder;
pub use self::connect::Connect;
pub use self::connection::Connection;
pub use self::error::{ConnectError, SendError, StreamAborted, SubscribeError};
pub use self::handle::ConnectionHandle;
pub use self::manager::ConnectionManager;
pub use self::stats::Stats;
pub use self::types::{
    CloseReason, Completion, ConnectionId, Delivery, Replay, SlowConsumerPolicy,
};

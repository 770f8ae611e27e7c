//! [`ConnectionManager`]: track every open stream, send to one, a key, a topic or all,
//! complete and evict, replay by `Last-Event-ID`, in any framework.
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
//! let manager: ConnectionManager = ConnectionManager::new();
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
//! // Complete it from anywhere: queued events are delivered, then the last one, then the end.
//! handle.complete_with(Event::builder().event("end").data("").build()?);
//! assert_eq!(
//!     handle.send(Event::message("too late")),
//!     Err(SendError::Closed { reason: Some(CloseReason::Completed) })
//! );
//!
//! let bytes = response.into_body().collect().await?.to_bytes();
//! let text = String::from_utf8(bytes.to_vec())?;
//! assert!(text.contains("data: to everyone\n\n"));
//! assert!(text.ends_with("data: just for you\n\nevent: end\ndata: \n\n"));
//! assert!(manager.is_empty());
//! # Ok(())
//! # }
//! ```
//!
//! # How it behaves
//!
//! - **Never waits on a client.** [`publish`](ConnectionManager::publish) puts the event once
//!   into a bounded ring that every connection reads at its own position (as
//!   `tokio::sync::broadcast` does): its cost does not grow with the number of connections.
//!   Sends to a key, a topic, a filter or one connection go to that connection's own queue,
//!   stamped so that each connection still sends everything in the order it was sent.
//! - **Bounded memory per client.** A connection's backlog (its queue plus the published
//!   events it has not sent) is bounded by the queue capacity. When it is exceeded the
//!   [`SlowConsumerPolicy`] applies: disconnect (the default: the client reconnects and
//!   catches up by replay; a client that stopped reading is found on the publish it can no
//!   longer hold) or drop the oldest events and count the lag.
//! - **Encoded once.** One event sent to 100,000 connections is one buffer.
//! - **Coalesced writes.** Events waiting together leave the body as one frame.
//! - **Cleaned up at once.** When the server drops a [`ConnectionBody`] (the client went
//!   away), the connection leaves every index and its hook fires; no sweeper is needed.
//! - **Replay without a seam.** Publishing and registration take the same lock, so a client
//!   that reconnects with `Last-Event-ID` gets exactly what it missed, then the live
//!   stream, with no gap and no duplicate. An unknown or expired id gets an explicit gap
//!   event. Only [`publish`](ConnectionManager::publish) and
//!   [`publish_topic`](ConnectionManager::publish_topic) are recorded; sends to a key, a
//!   filter or one connection are personal and are not replayed.
//! - **One close, one reason.** Every connection closes exactly once with a
//!   [`CloseReason`], and every operation on a closed connection returns a result that says
//!   so. Nothing panics.

mod connection;
mod core;
mod history;
mod ring;
mod types;

pub use self::connection::{Connection, ConnectionBody, ConnectionHandle};
pub use self::core::{ConnectionManager, ManagerBuilder};
pub use self::types::{
    CloseReason, Connect, ConnectError, ConnectionId, Delivery, Replay, SendError,
    SlowConsumerPolicy, Stats,
};

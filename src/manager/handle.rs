//! [`ConnectionHandle`]: one connection, reachable from anywhere.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use super::connection::{Connection, Ending};
use super::error::{SendError, SubscribeError};
use super::hub::Hub;
use super::types::{CloseReason, Completion};
use crate::Event;

/// A handle to one connection: send to it, complete it, evict it, change its topics, or wait
/// for its end, from anywhere.
///
/// Cloning is cheap. Holding a handle does not keep the connection open: once it has closed,
/// operations return [`SendError::Closed`] or `false`.
pub struct ConnectionHandle<M = ()> {
    conn: Arc<Connection<M>>,
    hub: Arc<Hub<M>>,
}

impl<M> ConnectionHandle<M> {
    pub(crate) fn new(conn: Arc<Connection<M>>, hub: Arc<Hub<M>>) -> Self {
        ConnectionHandle { conn, hub }
    }
}

impl<M> Clone for ConnectionHandle<M> {
    fn clone(&self) -> Self {
        ConnectionHandle {
            conn: self.conn.clone(),
            hub: self.hub.clone(),
        }
    }
}

impl<M> fmt::Debug for ConnectionHandle<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ConnectionHandle").field(&self.conn).finish()
    }
}

impl<M> std::ops::Deref for ConnectionHandle<M> {
    type Target = Connection<M>;

    fn deref(&self) -> &Connection<M> {
        &self.conn
    }
}

impl<M: Send + Sync + 'static> ConnectionHandle<M> {
    /// Queues `event` for this connection only. Not recorded in the replay history.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] if the connection closed or is completing,
    /// [`SendError::SlowConsumer`] if its backlog was full and the policy disconnected it,
    /// [`SendError::ShutDown`] once the manager is shutting down.
    pub fn send(&self, event: Event) -> Result<(), SendError> {
        self.hub.send_one(&self.conn, &event)
    }

    /// Delivers what was sent before, then ends the stream. Returns `false` if it had
    /// closed already or was completing.
    pub fn complete(&self) -> bool {
        self.complete_with(Completion::new())
    }

    /// Delivers what was sent before, then the completion's last event (an [`Event`]
    /// converts into one), then ends the stream. Returns `false` if it had closed already.
    pub fn complete_with(&self, completion: impl Into<Completion>) -> bool {
        self.hub.complete(&self.conn, completion.into())
    }

    /// Delivers what was sent before, then the error event `error`, then ends the stream
    /// ([`CloseReason::CompletedWithError`]).
    pub fn complete_with_error(&self, error: Event) -> bool {
        self.complete_with(Completion::error(error))
    }

    /// Delivers what was sent before, then `last`, then ends the stream for good: a client
    /// that reconnects with `last`'s id is told to stop ([`Completion::finish`]).
    pub fn finish(&self, last: Event) -> bool {
        self.complete_with(Completion::finish(last))
    }

    /// Ends the stream at once, discarding what is queued.
    pub fn evict(&self) -> bool {
        self.hub.close(
            &self.conn,
            CloseReason::Evicted,
            Ending::Now { abort: false },
        )
    }

    /// Resolves when the connection closes, with the reason, whoever closed it: a
    /// completion, the client leaving, a timeout, a shutdown. Resolves at once if it has
    /// closed already. The model is `tokio::sync::mpsc::Sender::closed`.
    ///
    /// ```
    /// use tower_sse::manager::{CloseReason, Connect, ConnectionManager};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let manager = ConnectionManager::new();
    /// let (handle, body) = manager.connect(Connect::new()).unwrap();
    /// // For example, stop a ticker when its stream ends.
    /// let ended = tokio::spawn(handle.closed());
    /// drop(body); // the client went away
    /// assert_eq!(ended.await.unwrap(), CloseReason::ClientGone);
    /// # }
    /// ```
    ///
    /// # Cancellation safety
    ///
    /// Dropping the future does nothing to the connection.
    pub fn closed(&self) -> impl Future<Output = CloseReason> + Send + 'static {
        let token = self.conn.closed_token();
        let conn = self.conn.clone();
        async move {
            token.cancelled().await;
            conn.close_reason().unwrap_or(CloseReason::ClientGone)
        }
    }

    /// Subscribes the connection to `topic`: every event published to it after this call
    /// is sent, in order with everything else; nothing published before. Returns `false`
    /// if it was subscribed already.
    ///
    /// # Errors
    ///
    /// [`SubscribeError::TooManyTopics`] past
    /// [`ManagerBuilder::max_topics`](super::ManagerBuilder::max_topics),
    /// [`SubscribeError::Closed`] once it has closed.
    pub fn subscribe(&self, topic: &str) -> Result<bool, SubscribeError> {
        self.hub.subscribe(&self.conn, topic)
    }

    /// Unsubscribes the connection from `topic`, at once: events published to it and not
    /// yet handed to the server are not sent (a frame the server holds already still is).
    /// Returns `false` if it was not subscribed.
    pub fn unsubscribe(&self, topic: &str) -> bool {
        self.hub.unsubscribe(&self.conn, topic)
    }
}

//! [`ConnectionManager`]: the façade. Every method is one call into the hub.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::body::ConnectionBody;
use super::broker::{Op, Target};
use super::builder::ManagerBuilder;
use super::connect::Connect;
use super::connection::{Connection, Ending};
use super::error::{ConnectError, SendError, SubscribeError};
use super::handle::ConnectionHandle;
use super::hub::Hub;
use super::stats::Stats;
use super::types::{CloseReason, Completion, ConnectionId, Delivery};
use crate::Event;

/// Tracks every open stream: sends to one, a key, a topic, a filter or all; completes and
/// evicts them; changes their topics; replays by `Last-Event-ID`. See the
/// [module example](crate::manager).
///
/// Every operation comes in the same four shapes, by [`ConnectionId`], by key, by topic and
/// by filter:
///
/// | | one (id) | key | topic | filter |
/// |---|---|---|---|---|
/// | send | [`send_to`](Self::send_to) | [`send_to_key`](Self::send_to_key) | [`publish_topic`](Self::publish_topic) | [`send_filter`](Self::send_filter) |
/// | complete | [`complete`](Self::complete) | [`complete_key`](Self::complete_key) | [`complete_topic`](Self::complete_topic) | [`complete_filter`](Self::complete_filter) |
/// | evict | [`evict`](Self::evict) | [`evict_key`](Self::evict_key) | [`evict_topic`](Self::evict_topic) | [`evict_filter`](Self::evict_filter) |
/// | handles | [`handle`](Self::handle) | [`handles_for_key`](Self::handles_for_key) | [`handles_for_topic`](Self::handles_for_topic) | [`handles_filter`](Self::handles_filter) |
///
/// and [`publish`](Self::publish) sends to everyone. Only `publish` and `publish_topic` are
/// recorded for replay: the other sends are personal.
///
/// Filters and hooks run outside every lock of the crate, so they may call the manager.
/// Cloning is cheap and shares the same connections (one `Arc` inside).
pub struct ConnectionManager<M = ()> {
    hub: Arc<Hub<M>>,
}

impl<M> Clone for ConnectionManager<M> {
    fn clone(&self) -> Self {
        ConnectionManager {
            hub: self.hub.clone(),
        }
    }
}

impl<M> fmt::Debug for ConnectionManager<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionManager")
            .field("open", &self.hub.registry.len())
            .field("shutting_down", &self.hub.is_closing())
            .finish_non_exhaustive()
    }
}

impl ConnectionManager {
    /// A manager with the default settings (see [`ManagerBuilder`]), for connections without
    /// metadata. With metadata: `ManagerBuilder::<M>::new().build()`.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Starts configuring a manager for connections without metadata. With metadata:
    /// [`ManagerBuilder::<M>::new`](ManagerBuilder::new).
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder::new()
    }
}

impl<M: Send + Sync + 'static> Default for ConnectionManager<M> {
    fn default() -> Self {
        ManagerBuilder::default().build()
    }
}

impl<M: Send + Sync + 'static> ManagerBuilder<M> {
    /// Builds the manager.
    ///
    /// With a [backplane](Self::backplane), call it inside a tokio runtime: it starts the
    /// task that receives from the broker.
    pub fn build(self) -> ConnectionManager<M> {
        let hub = Arc::new(Hub::new(self.config));
        hub.start();
        ConnectionManager { hub }
    }
}

impl<M: Send + Sync + 'static> ConnectionManager<M> {
    fn handle_of(&self, conn: Arc<Connection<M>>) -> ConnectionHandle<M> {
        ConnectionHandle::new(conn, self.hub.clone())
    }

    fn handles(&self, conns: Vec<Arc<Connection<M>>>) -> Vec<ConnectionHandle<M>> {
        conns.into_iter().map(|c| self.handle_of(c)).collect()
    }

    /// Every connection `filter` accepts, asked with no lock held.
    fn filtered(&self, filter: impl Fn(&Connection<M>) -> bool) -> Vec<Arc<Connection<M>>> {
        let mut conns = self.hub.registry.all();
        conns.retain(|c| filter(c));
        conns
    }

    /// Registers a client and returns its handle and its response body.
    ///
    /// If `options` carry a `Last-Event-ID`, the events the client missed are sent first
    /// (read from the history in place, not copied), then live events, with no gap and no
    /// duplicate. An unknown, invalid or expired id gets the gap event, then live events.
    ///
    /// # Errors
    ///
    /// [`ConnectError`] if the manager is shutting down or a limit is reached.
    pub fn connect(
        &self,
        options: Connect<M>,
    ) -> Result<(ConnectionHandle<M>, ConnectionBody<M>), ConnectError> {
        let context = options.context.clone();
        let conn = self.hub.connect(options)?;
        let body = ConnectionBody::new(conn.clone(), self.hub.clone(), context);
        Ok((self.handle_of(conn), body))
    }

    /// Publishes `event` to every connection, and records it for replay. If the event has
    /// no id and automatic ids are on, the next id is assigned. Costs one push, whatever the
    /// number of connections.
    ///
    /// # Errors
    ///
    /// [`SendError::ShutDown`] once the manager is shutting down.
    pub fn publish(&self, event: Event) -> Result<Delivery, SendError> {
        self.hub.publish(None, event)
    }

    /// Publishes `event` to the connections subscribed to `topic`, and records it for replay
    /// to them. Costs one push, whatever the number of subscribers.
    ///
    /// # Errors
    ///
    /// [`SendError::ShutDown`] once the manager is shutting down.
    pub fn publish_topic(&self, topic: &str, event: Event) -> Result<Delivery, SendError> {
        self.hub.publish(Some(topic), event)
    }

    /// [`publish`](Self::publish), waiting, with a backplane, until the broker has recorded
    /// the event: the [`Delivery`] then carries the id the broker gave it (and counts 0
    /// deliveries: every instance delivers it as it arrives). Without a backplane it is
    /// ready at once.
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish); [`BackplaneError::Unconfirmed`](super::BackplaneError)
    /// if the connection to the broker failed before it confirmed.
    pub fn publish_confirmed(
        &self,
        event: Event,
    ) -> impl std::future::Future<Output = Result<Delivery, SendError>> + Send + 'static {
        self.hub.publish_confirmed(None, event)
    }

    /// [`publish_topic`](Self::publish_topic), waiting as
    /// [`publish_confirmed`](Self::publish_confirmed) does.
    ///
    /// # Errors
    ///
    /// As [`publish_confirmed`](Self::publish_confirmed).
    pub fn publish_topic_confirmed(
        &self,
        topic: &str,
        event: Event,
    ) -> impl std::future::Future<Output = Result<Delivery, SendError>> + Send + 'static {
        self.hub.publish_confirmed(Some(topic), event)
    }

    /// Sends `event` to one connection (not recorded for replay). With a backplane, a
    /// connection of another instance is reached through the broker.
    ///
    /// # Errors
    ///
    /// [`SendError::NotFound`] if no such connection is open here, or what
    /// [`ConnectionHandle::send`] returns, or [`SendError::Backplane`].
    pub fn send_to(&self, id: ConnectionId, event: Event) -> Result<(), SendError> {
        if self.hub.is_remote(id) {
            let target = Target::Conn(id);
            self.hub.route(|| Op::Send { target, event })?;
            return Ok(());
        }
        let conn = self.get(id).ok_or(SendError::NotFound)?;
        self.hub.send_one(&conn, &event)
    }

    /// Sends `event` to every connection of `key` (not recorded for replay). A key with no
    /// connection gives `delivered: 0`. With a backplane, every instance sends it to its
    /// connections of `key` when the broker delivers it, and this returns `delivered: 0`.
    ///
    /// # Errors
    ///
    /// [`SendError::ShutDown`] once the manager is shutting down, [`SendError::Backplane`].
    pub fn send_to_key(&self, key: &str, event: Event) -> Result<Delivery, SendError> {
        let routed = self.hub.route(|| Op::Send {
            target: Target::Key(key.into()),
            event: event.clone(),
        })?;
        if routed {
            return Ok(Delivery::handed_over());
        }
        self.hub.send(&self.hub.registry.key(key), &event)
    }

    /// Sends `event` to every connection `filter` accepts (not recorded for replay). The
    /// filter runs with no lock held; it may call the manager. Filters see this instance's
    /// connections only, also with a backplane.
    ///
    /// # Errors
    ///
    /// [`SendError::ShutDown`] once the manager is shutting down.
    pub fn send_filter(
        &self,
        filter: impl Fn(&Connection<M>) -> bool,
        event: Event,
    ) -> Result<Delivery, SendError> {
        if self.hub.is_closing() {
            return Err(SendError::ShutDown);
        }
        self.hub.send(&self.filtered(filter), &event)
    }

    fn get(&self, id: ConnectionId) -> Option<Arc<Connection<M>>> {
        if id.instance() != self.hub.instance() {
            return None;
        }
        self.hub.registry.get(id.as_u64())
    }

    /// Completes one connection: what was sent before is delivered, then the completion's
    /// last event, then the end. Returns `false` if it is not open here; `true` for a
    /// connection of another instance, which the broker reaches.
    ///
    /// # Errors
    ///
    /// [`SendError::Backplane`] if the broker did not take it.
    pub fn complete(
        &self,
        id: ConnectionId,
        completion: impl Into<Completion>,
    ) -> Result<bool, SendError> {
        let completion = completion.into();
        if self.hub.is_remote(id) {
            let target = Target::Conn(id);
            self.hub.route(|| Op::Complete { target, completion })?;
            return Ok(true);
        }
        Ok(self
            .get(id)
            .is_some_and(|c| self.hub.complete(&c, completion)))
    }

    /// Completes every connection of `key` (see [`complete`](Self::complete)). An
    /// [`Event`], or an `Option<Event>`, converts into a [`Completion`]. Returns how many
    /// were completed; with a backplane every instance completes its own when the broker
    /// delivers it, and this returns 0.
    ///
    /// # Errors
    ///
    /// [`SendError::Backplane`] if the broker did not take it.
    pub fn complete_key(
        &self,
        key: &str,
        completion: impl Into<Completion>,
    ) -> Result<usize, SendError> {
        self.complete_target(Target::Key(key.into()), completion.into())
    }

    /// Completes every connection subscribed to `topic`, as
    /// [`complete_key`](Self::complete_key) does.
    ///
    /// # Errors
    ///
    /// [`SendError::Backplane`] if the broker did not take it.
    pub fn complete_topic(
        &self,
        topic: &str,
        completion: impl Into<Completion>,
    ) -> Result<usize, SendError> {
        self.complete_target(Target::Topic(topic.into()), completion.into())
    }

    fn complete_target(&self, target: Target, completion: Completion) -> Result<usize, SendError> {
        let routed = self.hub.route(|| Op::Complete {
            target: target.clone(),
            completion: completion.clone(),
        })?;
        if routed {
            return Ok(0);
        }
        Ok(self.complete_each(&self.hub.local(&target), completion))
    }

    /// Completes every connection of this instance that `filter` accepts. Returns how many
    /// were completed.
    ///
    /// # Errors
    ///
    /// None: filters are applied here, whatever the backplane. The `Result` keeps the shape
    /// of the other `complete` methods.
    pub fn complete_filter(
        &self,
        filter: impl Fn(&Connection<M>) -> bool,
        completion: impl Into<Completion>,
    ) -> Result<usize, SendError> {
        Ok(self.complete_each(&self.filtered(filter), completion.into()))
    }

    fn complete_each(&self, conns: &[Arc<Connection<M>>], completion: Completion) -> usize {
        let reason = completion.close_reason();
        self.hub.close_each(conns, reason, || Ending::Drain {
            last: completion.last.clone(),
            finished: completion.finished,
        })
    }

    /// Evicts one connection: its stream ends at once, what is queued is discarded.
    /// Returns `false` if it is not open here; `true` for a connection of another instance,
    /// which the broker reaches.
    ///
    /// # Errors
    ///
    /// [`SendError::Backplane`] if the broker did not take it.
    pub fn evict(&self, id: ConnectionId) -> Result<bool, SendError> {
        if self.hub.is_remote(id) {
            let target = Target::Conn(id);
            self.hub.route(|| Op::Evict { target })?;
            return Ok(true);
        }
        Ok(self.get(id).is_some_and(|c| {
            self.hub
                .close(&c, CloseReason::Evicted, Ending::Now { abort: false })
        }))
    }

    /// Evicts every connection of `key`. Returns how many were evicted; with a backplane,
    /// every instance evicts its own when the broker delivers it, and this returns 0.
    ///
    /// # Errors
    ///
    /// [`SendError::Backplane`] if the broker did not take it.
    pub fn evict_key(&self, key: &str) -> Result<usize, SendError> {
        self.evict_target(Target::Key(key.into()))
    }

    /// Evicts every connection subscribed to `topic`, as [`evict_key`](Self::evict_key)
    /// does.
    ///
    /// # Errors
    ///
    /// [`SendError::Backplane`] if the broker did not take it.
    pub fn evict_topic(&self, topic: &str) -> Result<usize, SendError> {
        self.evict_target(Target::Topic(topic.into()))
    }

    fn evict_target(&self, target: Target) -> Result<usize, SendError> {
        let routed = self.hub.route(|| Op::Evict {
            target: target.clone(),
        })?;
        if routed {
            return Ok(0);
        }
        Ok(self.evict_each(&self.hub.local(&target)))
    }

    /// Evicts every connection of this instance that `filter` accepts. Returns how many
    /// were evicted.
    ///
    /// # Errors
    ///
    /// None, as for [`complete_filter`](Self::complete_filter).
    pub fn evict_filter(
        &self,
        filter: impl Fn(&Connection<M>) -> bool,
    ) -> Result<usize, SendError> {
        Ok(self.evict_each(&self.filtered(filter)))
    }

    fn evict_each(&self, conns: &[Arc<Connection<M>>]) -> usize {
        self.hub
            .close_each(conns, CloseReason::Evicted, || Ending::Now { abort: false })
    }

    /// A handle to an open connection of this instance.
    pub fn handle(&self, id: ConnectionId) -> Option<ConnectionHandle<M>> {
        self.get(id).map(|c| self.handle_of(c))
    }

    /// Handles to every open connection of `key` on this instance.
    pub fn handles_for_key(&self, key: &str) -> Vec<ConnectionHandle<M>> {
        self.handles(self.hub.registry.key(key))
    }

    /// Handles to every open connection subscribed to `topic` on this instance.
    pub fn handles_for_topic(&self, topic: &str) -> Vec<ConnectionHandle<M>> {
        self.handles(self.hub.registry.topic(topic))
    }

    /// Handles to every open connection of this instance that `filter` accepts.
    pub fn handles_filter(
        &self,
        filter: impl Fn(&Connection<M>) -> bool,
    ) -> Vec<ConnectionHandle<M>> {
        self.handles(self.filtered(filter))
    }

    /// Subscribes every connection of `key` to `topic`, for example from a
    /// `POST /subscribe` of the same user (see [`ConnectionHandle::subscribe`]). Returns
    /// how many were subscribed by this call; with a backplane, every instance subscribes
    /// its own when the broker delivers it, and this returns 0.
    ///
    /// # Errors
    ///
    /// [`SubscribeError::TooManyTopics`] if a connection of the key is at its topic limit
    /// (the others are subscribed all the same), [`SubscribeError::ShutDown`] once the
    /// manager is shutting down, [`SubscribeError::Backplane`].
    pub fn subscribe_key(&self, key: &str, topic: &str) -> Result<usize, SubscribeError> {
        let routed = self
            .hub
            .route(|| Op::Subscribe {
                key: key.into(),
                topic: topic.into(),
            })
            .map_err(SubscribeError::from)?;
        if routed {
            return Ok(0);
        }
        let mut subscribed = 0;
        let mut refused = None;
        for conn in self.hub.registry.key(key) {
            match self.hub.subscribe(&conn, topic) {
                Ok(true) => subscribed += 1,
                Ok(false) | Err(SubscribeError::Closed(_)) => {}
                Err(e) => refused = Some(e),
            }
        }
        refused.map_or(Ok(subscribed), Err)
    }

    /// Unsubscribes every connection of `key` from `topic`, at once. Returns how many were
    /// unsubscribed (0 with a backplane, as for [`subscribe_key`](Self::subscribe_key)).
    ///
    /// # Errors
    ///
    /// [`SubscribeError::ShutDown`], [`SubscribeError::Backplane`].
    pub fn unsubscribe_key(&self, key: &str, topic: &str) -> Result<usize, SubscribeError> {
        let routed = self
            .hub
            .route(|| Op::Unsubscribe {
                key: key.into(),
                topic: topic.into(),
            })
            .map_err(SubscribeError::from)?;
        if routed {
            return Ok(0);
        }
        Ok(self
            .hub
            .registry
            .key(key)
            .iter()
            .filter(|c| self.hub.unsubscribe(c, topic))
            .count())
    }

    /// Closes connections that have had nothing written for longer than `idle`
    /// ([`CloseReason::IdleTimeout`]), and drops history older than the replay age. Returns
    /// how many connections were closed.
    ///
    /// A write is dated by the manager's latest connect or send at that moment (no clock
    /// read per write), so it counts as no later than it happened: a connection that
    /// writes an old backlog long after the last send may be seen as idle a little early.
    /// Heartbeats from [`SseLayer`](crate::SseLayer) are not writes here; prefer the layer's
    /// own [idle timeout](crate::SseLayer::idle_timeout) where the layer is in use.
    pub fn evict_idle(&self, idle: Duration) -> usize {
        let now = self.hub.now_ms();
        self.hub.store.expire(now);
        let idle_ms = idle.as_millis() as u64;
        let stale = self
            .hub
            .registry
            .select(None, |c| now.saturating_sub(c.last_write_ms()) > idle_ms);
        self.evict_each_as(&stale, CloseReason::IdleTimeout)
    }

    fn evict_each_as(&self, conns: &[Arc<Connection<M>>], reason: CloseReason) -> usize {
        self.hub
            .close_each(conns, reason, || Ending::Now { abort: false })
    }

    /// Stops accepting connections and sends, then completes every stream: what is queued
    /// is delivered, then the end ([`CloseReason::Shutdown`]). Returns how many streams were
    /// ended.
    ///
    /// Behind an [`SseLayer`](crate::SseLayer) with a shutdown token, the layer owns how a
    /// stream ends on the wire: when the token fires it ends every stream itself, with its
    /// own [farewell](crate::SseLayer::farewell), and that is what clients see.
    pub fn shutdown(&self) -> usize {
        self.shutdown_with(Completion::new())
    }

    /// [`shutdown`](Self::shutdown), with `completion`'s last event as every stream's last
    /// event: the farewell of a server without [`SseLayer`](crate::SseLayer). Streams a
    /// layer's shutdown token has already ended do not get it.
    pub fn shutdown_with(&self, completion: impl Into<Completion>) -> usize {
        self.hub.start_closing();
        let completion = completion.into();
        self.hub
            .close_each(&self.hub.registry.all(), CloseReason::Shutdown, || {
                Ending::Drain {
                    last: completion.last.clone(),
                    finished: completion.finished,
                }
            })
    }

    /// Waits for `token`, then [shuts down](Self::shutdown). Spawn it beside the server,
    /// with the same token the [`SseLayer`](crate::SseLayer) and the server's graceful
    /// shutdown use.
    pub async fn shutdown_on(self, token: CancellationToken) {
        token.cancelled().await;
        self.shutdown();
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.hub.is_closing()
    }

    /// Open connections now.
    pub fn len(&self) -> usize {
        self.hub.registry.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.hub
            .counters
            .snapshot(self.hub.registry.len(), self.hub.registry.per_topic())
    }

    /// Events held for replay now, across every topic.
    pub fn history_len(&self) -> usize {
        self.hub.store.len()
    }

    /// Bytes the replay history holds now, across every topic, bookkeeping included.
    pub fn history_bytes(&self) -> usize {
        self.hub.store.bytes()
    }

    /// Topics the manager holds state for now: subscribed to, or with history.
    pub fn topic_count(&self) -> usize {
        self.hub.store.topic_count()
    }
}

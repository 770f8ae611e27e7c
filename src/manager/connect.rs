//! [`Connect`]: the options a connection registers with.

use std::fmt;
use std::sync::Arc;

use crate::{LastEventId, SseContext};

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
    pub(crate) resume: Resume,
    pub(crate) context: Option<SseContext>,
}

/// Where a connection starts, from the client's `Last-Event-ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resume {
    /// No id: live events only.
    Fresh,
    /// Replay what was missed after this id.
    After(LastEventId),
    /// The client sent an id that cannot be ours (invalid or oversized): the gap event,
    /// then live events. Never a refusal: a browser's `EventSource` treats any status but
    /// 200 as fatal and would never reconnect.
    Unknown,
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
    /// A connection carrying `meta`, which hooks and filters can read
    /// ([`Connection::meta`](super::Connection::meta)).
    pub fn with_meta(meta: M) -> Self {
        Connect {
            key: None,
            topics: Vec::new(),
            meta,
            resume: Resume::Fresh,
            context: None,
        }
    }

    /// Groups the connection under `key` (a user, a session, a token). A key may have
    /// several connections, such as browser tabs.
    pub fn key(mut self, key: impl Into<Arc<str>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Subscribes the connection to `topic`. Topics can also change while it is open
    /// ([`ConnectionHandle::subscribe`](super::ConnectionHandle::subscribe)).
    pub fn topic(mut self, topic: impl Into<Arc<str>>) -> Self {
        let topic = topic.into();
        if !self.topics.contains(&topic) {
            self.topics.push(topic);
        }
        self
    }

    /// Subscribes the connection to every topic of `topics`.
    pub fn topics<T: Into<Arc<str>>>(self, topics: impl IntoIterator<Item = T>) -> Self {
        topics.into_iter().fold(self, Connect::topic)
    }

    /// Replays what the client missed after `id` (see the manager's replay settings).
    /// `None` starts with live events.
    pub fn last_event_id(mut self, id: Option<LastEventId>) -> Self {
        self.resume = id.map_or(Resume::Fresh, Resume::After);
        self
    }

    /// Reads the `Last-Event-ID` header of a request. A malformed one (too long, not
    /// UTF-8, a control character, repeated) is answered with the gap event and then live
    /// events, never with an error, which a browser would take as final.
    pub fn last_event_id_from(mut self, headers: &http::HeaderMap) -> Self {
        self.resume = match LastEventId::from_headers(headers) {
            Ok(Some(id)) => Resume::After(id),
            Ok(None) => Resume::Fresh,
            Err(_) => Resume::Unknown,
        };
        self
    }

    /// Takes the `Last-Event-ID` and the stream's fate from the [`SseLayer`](crate::SseLayer)'s
    /// [`SseContext`], so the close reason names the layer's idle timeout, lifetime,
    /// shutdown or the handler's cancellation. A malformed `Last-Event-ID` gets the gap event,
    /// then live events.
    pub fn context(mut self, context: &SseContext) -> Self {
        match context.last_event_id() {
            Ok(Some(id)) => self.resume = Resume::After(id.clone()),
            Ok(None) => {}
            Err(_) => self.resume = Resume::Unknown,
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
            .field("resume", &self.resume)
            .finish_non_exhaustive()
    }
}

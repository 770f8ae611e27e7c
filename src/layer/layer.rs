use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use tokio_util::sync::CancellationToken;
use tower_layer::Layer;

use super::{FinishedPrefix, Sse, StreamEnd, DEFAULT_FINISHED_PREFIX};
use crate::Event;

/// The default quiet interval after which a heartbeat is sent: 15 seconds, which keeps
/// common proxies (30 s to 60 s idle limits) from closing the stream.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);

/// The default heartbeat: one bare comment line, without the blank line that would end a
/// block. Every client ignores a comment line, and with no blank line there is no block for
/// the clients that turn every blank-line block into a message (`@microsoft/fetch-event-source`,
/// `httpx-sse` once an id was seen) to surface as an empty message. Written only between
/// events, it starts no event: the next event's lines simply follow it.
const HEARTBEAT_LINE: &[u8] = b":\n";

/// The endings a farewell can be set for, in the order of [`Config::farewells`].
const FAREWELL_ENDS: [StreamEnd; 4] = [
    StreamEnd::Cancelled,
    StreamEnd::Shutdown,
    StreamEnd::IdleTimeout,
    StreamEnd::Lifetime,
];

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) heartbeat_interval: Option<Duration>,
    pub(crate) heartbeat: Bytes,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) lifetime_jitter: Duration,
    pub(crate) shutdown: Option<CancellationToken>,
    /// The farewell events as given, per [`FAREWELL_ENDS`].
    farewell_events: [Option<Bytes>; 4],
    /// The reconnection delay written as `retry:` on the first data event and the farewells.
    retry: Option<Duration>,
    /// Derived by [`Config::derive`]: `retry: N\n`.
    pub(crate) retry_line: Option<Bytes>,
    /// Derived by [`Config::derive`]: each farewell with the retry line in front.
    farewells: [Option<Bytes>; 4],
    pub(crate) initial: Option<Bytes>,
    pub(crate) cache_control: HeaderValue,
    pub(crate) x_accel_buffering: bool,
    pub(crate) finished: Option<FinishedPrefix>,
    #[cfg(feature = "metrics")]
    pub(crate) meters: LayerMeters,
}

/// The layer's metric handles, registered when the layer is made.
#[cfg(feature = "metrics")]
#[derive(Debug, Clone)]
pub(crate) struct LayerMeters {
    pub(crate) streams: metrics::Counter,
    pub(crate) heartbeats: metrics::Counter,
    ended: [metrics::Counter; StreamEnd::ALL.len()],
}

#[cfg(feature = "metrics")]
impl LayerMeters {
    fn new() -> Self {
        use crate::telemetry as names;
        LayerMeters {
            streams: metrics::counter!(names::LAYER_STREAMS),
            heartbeats: metrics::counter!(names::HEARTBEATS),
            ended: StreamEnd::ALL
                .map(|e| metrics::counter!(names::LAYER_ENDED, "reason" => e.as_str())),
        }
    }

    pub(crate) fn ended(&self, why: StreamEnd) {
        if let Some(i) = StreamEnd::ALL.iter().position(|e| *e == why) {
            self.ended[i].increment(1);
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat_interval: Some(DEFAULT_HEARTBEAT_INTERVAL),
            heartbeat: Bytes::from_static(HEARTBEAT_LINE),
            idle_timeout: None,
            max_lifetime: None,
            lifetime_jitter: Duration::ZERO,
            shutdown: None,
            farewell_events: Default::default(),
            retry: None,
            retry_line: None,
            farewells: Default::default(),
            initial: None,
            cache_control: HeaderValue::from_static("no-cache"),
            x_accel_buffering: true,
            finished: Some(DEFAULT_FINISHED_PREFIX.clone()),
            #[cfg(feature = "metrics")]
            meters: LayerMeters::new(),
        }
    }
}

impl Config {
    /// The last frame to write when the layer ends a stream for `why`, if one is set.
    pub(crate) fn farewell(&self, why: StreamEnd) -> Option<&Bytes> {
        let i = FAREWELL_ENDS.iter().position(|e| *e == why)?;
        self.farewells[i].as_ref()
    }

    /// Recomputes what streams read ready-made, so that no stream formats anything.
    fn derive(&mut self) {
        self.retry_line = self.retry.map(|retry| {
            let mut line = BytesMut::new();
            crate::event::write_retry(&mut line, retry);
            line.freeze()
        });
        for (derived, event) in self.farewells.iter_mut().zip(&self.farewell_events) {
            *derived = event.as_ref().map(|event| match &self.retry_line {
                // The event's own `retry`, if it has one, comes later and wins.
                Some(line) => [&line[..], &event[..]].concat().into(),
                None => event.clone(),
            });
        }
    }
}

/// Makes every `text/event-stream` response of the wrapped service production-grade:
/// headers, heartbeats, idle timeout, lifetime and shutdown, the reconnection delay, farewells
/// and finished streams. Other responses pass untouched.
///
/// Cloning the layer shares its configuration and its shutdown token. See the
/// [module example](crate::layer).
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct SseLayer {
    config: Arc<Config>,
}

impl SseLayer {
    /// A layer with heartbeats every 15 s, no timeouts, no shutdown token, finished streams
    /// recognised by the [default prefix](DEFAULT_FINISHED_PREFIX).
    pub fn new() -> Self {
        Self::default()
    }

    fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        let config = Arc::make_mut(&mut self.config);
        f(config);
        config.derive();
        self
    }

    /// Sends a heartbeat after `interval` without any frame (default 15 s). The interval
    /// restarts after every frame, so a busy stream sends none. Intervals under 1 ms are
    /// raised to 1 ms, so a zero cannot turn a stream into an endless run of heartbeats.
    pub fn heartbeat_interval(self, interval: Duration) -> Self {
        self.with(|c| c.heartbeat_interval = Some(interval.max(Duration::from_millis(1))))
    }

    /// Sends no heartbeats.
    pub fn disable_heartbeat(self) -> Self {
        self.with(|c| c.heartbeat_interval = None)
    }

    /// Heartbeats as comment lines with this text (`: text\n`; multi-line text becomes
    /// several lines). The default is a bare `:\n`.
    ///
    /// Like the default, they end with no blank line, so no client sees them: the clients
    /// that hand the application an empty message for every blank-line block
    /// (`@microsoft/fetch-event-source`, `httpx-sse` once an id was seen) have no block to
    /// hand on.
    pub fn heartbeat_comment(self, text: impl AsRef<str>) -> Self {
        let comment = Event::comment(text).into_bytes();
        // `Event::comment` ends the block with a blank line; a heartbeat needs only the lines.
        let lines = comment.slice(..comment.len() - 1);
        self.with(|c| c.heartbeat = lines)
    }

    /// What a heartbeat writes, as a whole event: for a page that watches the connection's
    /// health with `addEventListener("ping", ...)`, for example
    /// `Event::builder().event("ping").data("").build()?`.
    ///
    /// A named event is visible to every client, not only to the page that listens for it:
    /// most non-browser clients hand each one to the application. A comment-only event (such
    /// as [`KEEP_ALIVE`](crate::KEEP_ALIVE), `:\n\n`) is surfaced as an empty message by some
    /// clients (see the README's client table); prefer
    /// [`heartbeat_comment`](Self::heartbeat_comment) for invisible heartbeats.
    pub fn heartbeat_event(self, event: Event) -> Self {
        self.with(|c| c.heartbeat = event.into_bytes())
    }

    /// Ends a stream after its inner body produced no data for `timeout`. Heartbeats do not
    /// count as data. Off by default.
    pub fn idle_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.idle_timeout = Some(timeout))
    }

    /// Ends a stream at the first event boundary after it has been open for `lifetime`
    /// (less the jitter). Off by default. The client reconnects, which spreads long-lived
    /// connections over a fleet after a deploy.
    pub fn max_lifetime(self, lifetime: Duration) -> Self {
        self.with(|c| c.max_lifetime = Some(lifetime))
    }

    /// Shortens each stream's lifetime by a random amount up to `jitter`, so clients that
    /// connected together do not all reconnect at the same instant. Each stream's lifetime
    /// lies in `[max_lifetime - jitter, max_lifetime]`.
    pub fn lifetime_jitter(self, jitter: Duration) -> Self {
        self.with(|c| c.lifetime_jitter = jitter)
    }

    /// Ends every stream when `token` is cancelled, after the [farewell](Self::farewell)
    /// event if one is set. A stream's own token, made when a handler asks for it, is a
    /// child of this one (see
    /// [`SseContext::cancellation_token`](super::SseContext::cancellation_token)).
    ///
    /// Give the same token to the server's graceful shutdown, and open streams no longer
    /// keep it waiting forever.
    pub fn shutdown_token(self, token: CancellationToken) -> Self {
        self.with(|c| c.shutdown = Some(token))
    }

    /// The client's reconnection delay, written as a `retry:` field on the first event of
    /// each stream that carries data, and on every farewell. Not set by default (clients
    /// then wait their own default, about 3 s for browsers).
    ///
    /// The layer puts the field into an event that has a `data` line, never into a block of
    /// its own: several popular clients ignore a `retry` that arrives in a block without
    /// data, or hand the application an empty message for it.
    pub fn retry(self, delay: Duration) -> Self {
        self.with(|c| c.retry = Some(delay))
    }

    /// The last event written when the stream is cancelled, by the shutdown token or by its
    /// own token: the same as [`farewell_on`](Self::farewell_on) for
    /// [`StreamEnd::Shutdown`] and [`StreamEnd::Cancelled`].
    pub fn farewell(self, event: Event) -> Self {
        self.farewell_on(StreamEnd::Shutdown, event.clone())
            .farewell_on(StreamEnd::Cancelled, event)
    }

    /// The last event written when the layer ends a stream for `end`: one of
    /// [`StreamEnd::Shutdown`], [`StreamEnd::Cancelled`], [`StreamEnd::IdleTimeout`] or
    /// [`StreamEnd::Lifetime`]. Other endings are not the layer's to write to (the inner body
    /// ended or failed, or the client is gone), and setting one for them has no effect.
    ///
    /// It is written only at an event boundary: a stream ended in the middle of an event (a
    /// cancellation, or an idle timeout while an event was unfinished) ends without it, and
    /// clients discard the partial event. With [`retry`](Self::retry) set, the farewell
    /// carries it too; give the event a `retry` of its own to tell clients something else.
    /// Give it data: a farewell without a `data` line is a block some clients surface as an
    /// empty message, and others never dispatch.
    pub fn farewell_on(self, end: StreamEnd, event: Event) -> Self {
        self.with(|c| {
            if let Some(i) = FAREWELL_ENDS.iter().position(|e| *e == end) {
                c.farewell_events[i] = Some(event.into_bytes());
            }
        })
    }

    /// A first frame written as soon as the response starts, before the inner body has
    /// anything, so headers pass proxies at once. Prefer
    /// [`initial_comment`](Self::initial_comment): a whole event here is a block on its
    /// own, and a comment-only block is surfaced as an empty message by some clients
    /// (`@microsoft/fetch-event-source`). For the reconnection delay use
    /// [`retry`](Self::retry), which puts it on a real event.
    pub fn initial_event(self, event: Event) -> Self {
        self.with(|c| c.initial = Some(event.into_bytes()))
    }

    /// A comment line written as soon as the response starts (`: text\n`), so headers pass
    /// proxies at once. Like heartbeats, it ends with no blank line, so no client sees it.
    pub fn initial_comment(self, text: impl AsRef<str>) -> Self {
        let comment = Event::comment(text).into_bytes();
        let lines = comment.slice(..comment.len() - 1);
        self.with(|c| c.initial = Some(lines))
    }

    /// The `Cache-Control` set when the handler set none. Default `no-cache`.
    pub fn cache_control(self, value: HeaderValue) -> Self {
        self.with(|c| c.cache_control = value)
    }

    /// Whether to set `X-Accel-Buffering: no`, which stops nginx from buffering the stream.
    /// On by default.
    pub fn x_accel_buffering(self, enabled: bool) -> Self {
        self.with(|c| c.x_accel_buffering = enabled)
    }

    /// The id prefix that marks a finished stream (default
    /// [`DEFAULT_FINISHED_PREFIX`]).
    ///
    /// A request that asks for an event stream (`Accept: text/event-stream`, which
    /// `EventSource` always sends) and carries a valid `Last-Event-ID` starting with it is
    /// answered `204 No Content` at once, without calling the inner service: a
    /// spec-following client stops reconnecting. Mark a stream's last event with
    /// [`SseContext::finish`](super::SseContext::finish) or
    /// [`Event::finishing`](crate::Event::finishing). Requests without that `Accept`, such
    /// as a `fetch` to a JSON route, always reach the service.
    pub fn finished_prefix(self, prefix: FinishedPrefix) -> Self {
        self.with(|c| c.finished = Some(prefix))
    }

    /// Recognises no finished streams: every request reaches the inner service, whatever
    /// its `Last-Event-ID`.
    pub fn disable_finished(self) -> Self {
        self.with(|c| c.finished = None)
    }
}

impl<S> Layer<S> for SseLayer {
    type Service = Sse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Sse::from_parts(inner, self.config.clone())
    }
}

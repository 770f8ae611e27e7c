use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use tokio_util::sync::CancellationToken;
use tower_layer::Layer;

use super::Sse;
use crate::{Event, KEEP_ALIVE};

/// The default quiet interval after which a heartbeat is sent: 15 seconds, which keeps
/// common proxies (30 s to 60 s idle limits) from closing the stream.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) heartbeat_interval: Option<Duration>,
    pub(crate) heartbeat: Bytes,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) lifetime_jitter: Duration,
    pub(crate) shutdown: Option<CancellationToken>,
    pub(crate) farewell: Option<Bytes>,
    pub(crate) initial: Option<Bytes>,
    pub(crate) cache_control: HeaderValue,
    pub(crate) x_accel_buffering: bool,
    pub(crate) max_last_event_id_len: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat_interval: Some(DEFAULT_HEARTBEAT_INTERVAL),
            heartbeat: KEEP_ALIVE.into_bytes(),
            idle_timeout: None,
            max_lifetime: None,
            lifetime_jitter: Duration::ZERO,
            shutdown: None,
            farewell: None,
            initial: None,
            cache_control: HeaderValue::from_static("no-cache"),
            x_accel_buffering: true,
            max_last_event_id_len: crate::last_event_id::DEFAULT_MAX_LEN,
        }
    }
}

/// Makes every `text/event-stream` response of the wrapped service production-grade:
/// headers, heartbeats, idle timeout, lifetime and shutdown. Other responses pass untouched.
///
/// Cloning the layer shares its configuration and its shutdown token. See the
/// [module example](crate::layer).
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct SseLayer {
    config: Arc<Config>,
}

impl SseLayer {
    /// A layer with heartbeats every 15 s, no timeouts, no shutdown token.
    pub fn new() -> Self {
        Self::default()
    }

    fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
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

    /// What a heartbeat writes. Default: [`KEEP_ALIVE`] (`:\n\n`), a comment the page never
    /// sees. Use [`Event::comment`] for other text, or a named event (for example
    /// `Event::builder().event("ping").data("").build()?`) for a page that wants to watch
    /// the connection's health with `addEventListener("ping", ...)`.
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

    /// The last event written when a stream is cancelled (by the shutdown token or its own
    /// token). Add a `retry` to it to tell clients when to come back. It is written only at
    /// an event boundary; a stream cancelled in the middle of an event ends without it, and
    /// clients discard the partial event.
    pub fn farewell(self, event: Event) -> Self {
        self.with(|c| c.farewell = Some(event.into_bytes()))
    }

    /// A first frame written as soon as the response starts, before the inner body has
    /// anything, so headers pass proxies at once (for example `Event::comment("ok")`, or an
    /// event with only a `retry`).
    pub fn initial_event(self, event: Event) -> Self {
        self.with(|c| c.initial = Some(event.into_bytes()))
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

    /// The longest `Last-Event-ID` accepted, in bytes (default 256). Longer values are
    /// reported as invalid in [`SseContext`](super::SseContext).
    pub fn max_last_event_id_len(self, len: usize) -> Self {
        self.with(|c| c.max_last_event_id_len = len)
    }
}

impl<S> Layer<S> for SseLayer {
    type Service = Sse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Sse::from_parts(inner, self.config.clone())
    }
}

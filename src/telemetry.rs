//! What the crate reports when its `metrics` and `tracing` features are on: the metric
//! names, and the log events. Both cost nothing when the features are off.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "metrics")] {
//! use metrics_util::debugging::DebuggingRecorder;
//! use tower_sse::{telemetry, Connect, ConnectionManager};
//!
//! // Install the recorder (Prometheus, StatsD, OpenTelemetry...) before building the
//! // manager and the layer: they register their metrics once, when built.
//! let recorder = DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! let manager = metrics::with_local_recorder(&recorder, ConnectionManager::new);
//! let (_handle, _body) = manager.connect(Connect::new())?;
//!
//! let open = snapshotter
//!     .snapshot()
//!     .into_vec()
//!     .into_iter()
//!     .find(|(key, ..)| key.key().name() == telemetry::STREAMS_OPEN);
//! assert!(open.is_some());
//! # }
//! # Ok::<(), tower_sse::ConnectError>(())
//! ```
//!
//! # Metrics (feature `metrics`)
//!
//! Through the [`metrics`](https://docs.rs/metrics) facade: install the recorder of your
//! choice (for example `metrics-exporter-prometheus`) first. Labels are bounded: a reason, a
//! kind, and a topic only when [`ManagerBuilder::topic_metrics`](crate::ManagerBuilder::topic_metrics)
//! turns it on, for at most the number of topics it allows. Never a key or a connection.
//!
//! | name | type | what |
//! |---|---|---|
//! | [`STREAMS_OPEN`] | gauge | managed streams open now |
//! | [`STREAMS_OPENED`] | counter | managed streams opened |
//! | [`STREAMS_CLOSED`] | counter | managed streams closed, label `reason` ([`CloseReason::as_str`](crate::CloseReason::as_str)) |
//! | [`EVENTS`] | counter | events sent through a manager (each publish once) |
//! | [`DELIVERIES`] | counter | events queued for a connection |
//! | [`WRITTEN_BYTES`] | counter | bytes handed to the server by managed streams |
//! | [`DROPPED`] | counter | events a connection will never send |
//! | [`LAGGED`] | counter | events skipped under `DropOldest` |
//! | [`RESUMED`] | counter | reconnects served from the history |
//! | [`GAPS`] | counter | gap events sent |
//! | [`QUEUE_DEPTH`] | histogram | a connection's backlog when it writes (one write in [`SAMPLE_EVERY`]) |
//! | [`DELIVERY_DELAY`] | histogram | seconds from publish to write (one write in [`SAMPLE_EVERY`]) |
//! | [`TOPIC_SUBSCRIBERS`] | gauge | subscribers per topic, label `topic` (opt-in, capped) |
//! | [`LAYER_STREAMS`] | counter | event streams the layer served |
//! | [`LAYER_ENDED`] | counter | event streams the layer saw end, label `reason` ([`StreamEnd::as_str`](crate::StreamEnd::as_str)): idle timeouts, lifetimes, shutdown drains... |
//! | [`HEARTBEATS`] | counter | heartbeats the layer wrote |
//!
//! [`Stats`](crate::Stats) and these metrics are counted at the same places, so they agree;
//! bytes are added up per connection and reported every [`SAMPLE_EVERY`] writes and when it
//! closes.
//!
//! # Logs (feature `tracing`)
//!
//! - A span per managed stream, `sse_stream`, with its connection id, key and topics; its
//!   parent is the span current when it connected (the request's, under tower-http's
//!   `TraceLayer`).
//! - `debug` when a stream opens (with how it started, as far as replay goes) and when it
//!   closes (with its reason, lifetime, events and bytes written); `debug` when the layer
//!   ends an event stream, with the reason.
//! - `warn` when a slow consumer is disconnected or skips events, at most once a second
//!   with the count of those not logged.
//! - `trace` for each heartbeat. Nothing per event above `trace`.

/// Gauge: managed streams open now.
pub const STREAMS_OPEN: &str = "sse_streams_open";
/// Counter: managed streams opened.
pub const STREAMS_OPENED: &str = "sse_streams_opened_total";
/// Counter: managed streams closed, label `reason`.
pub const STREAMS_CLOSED: &str = "sse_streams_closed_total";
/// Counter: events sent through a manager.
pub const EVENTS: &str = "sse_events_total";
/// Counter: events queued for a connection.
pub const DELIVERIES: &str = "sse_deliveries_total";
/// Counter: bytes handed to the server by managed streams.
pub const WRITTEN_BYTES: &str = "sse_written_bytes_total";
/// Counter: events a connection will never send.
pub const DROPPED: &str = "sse_dropped_events_total";
/// Counter: events skipped under `DropOldest`.
pub const LAGGED: &str = "sse_lagged_events_total";
/// Counter: reconnects served from the history.
pub const RESUMED: &str = "sse_replays_total";
/// Counter: gap events sent.
pub const GAPS: &str = "sse_gaps_total";
/// Histogram: a connection's backlog when it writes, sampled.
pub const QUEUE_DEPTH: &str = "sse_queue_depth";
/// Histogram: seconds from publish to write, sampled.
pub const DELIVERY_DELAY: &str = "sse_delivery_delay_seconds";
/// Gauge: subscribers per topic, label `topic` (opt-in, capped).
pub const TOPIC_SUBSCRIBERS: &str = "sse_topic_subscribers";
/// Counter: event streams the layer served.
pub const LAYER_STREAMS: &str = "sse_layer_streams_total";
/// Counter: event streams the layer saw end, label `reason`.
pub const LAYER_ENDED: &str = "sse_layer_streams_ended_total";
/// Counter: heartbeats the layer wrote.
pub const HEARTBEATS: &str = "sse_heartbeats_total";

/// One write in this many is measured for the histograms, and a connection's byte count is
/// reported this often.
pub const SAMPLE_EVERY: u32 = 64;

/// The span a stream logs under: `tracing`'s, or nothing without the feature.
#[cfg(feature = "tracing")]
pub(crate) type Span = tracing::Span;
/// The span a stream logs under: `tracing`'s, or nothing without the feature.
#[cfg(not(feature = "tracing"))]
pub(crate) type Span = ();

/// The span current now (the request's, under a trace layer).
pub(crate) fn current_span() -> Span {
    #[cfg(feature = "tracing")]
    return tracing::Span::current();
    #[cfg(not(feature = "tracing"))]
    ()
}

/// At most one log line a second for one kind of warning, with the count of those left out.
#[cfg(feature = "tracing")]
#[derive(Debug, Default)]
pub(crate) struct RateLimit {
    last_ms: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
}

#[cfg(feature = "tracing")]
impl RateLimit {
    /// `Some(left out since the last one)` if a line may be logged now.
    pub(crate) fn allow(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(all(test, feature = "tracing"))]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_then_the_count_of_the_rest() {
        let limit = RateLimit::default();
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), None);
        assert_eq!(limit.allow(), None);
        limit.last_ms.store(0, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(limit.allow(), Some(2));
    }
}

//! The manager's counters: one set of atomics, read as a [`Stats`] snapshot.

use std::collections::HashMap;

use super::sync::{AtomicU64, Ordering};
use super::types::CloseReason;

/// A snapshot of the manager's counters. See
/// [`ConnectionManager::stats`](super::ConnectionManager::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections open now.
    pub open: usize,
    /// Connections open now per topic.
    pub open_per_topic: HashMap<String, usize>,
    /// Connections opened since the start.
    pub connected: u64,
    /// Events sent through the manager: each publish counts once, and each send to one
    /// connection that was queued. Refused sends do not count.
    pub events: u64,
    /// Events queued for a connection (one event sent to 1,000 connections counts 1,000).
    pub deliveries: u64,
    /// Events a connection will never send: skipped for lag, or still unsent when it was
    /// evicted, disconnected or went away.
    pub dropped: u64,
    /// Events skipped under [`SlowConsumerPolicy::DropOldest`](super::SlowConsumerPolicy).
    pub lagged: u64,
    /// Connections that resumed from their `Last-Event-ID`.
    pub resumed: u64,
    /// Gap events sent: a reconnecting client's last id was unknown, invalid or too old.
    pub gaps: u64,
    /// Bytes handed to the server by the connections' bodies (reported by each body every
    /// [`SAMPLE_EVERY`](crate::telemetry::SAMPLE_EVERY) writes and when it closes).
    pub bytes_written: u64,
    /// Connections closed, per reason.
    pub closed: HashMap<CloseReason, u64>,
}

/// The counters behind [`Stats`], and behind the metrics when the `metrics` feature is on:
/// each is counted once, here, for both.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    connected: AtomicU64,
    events: AtomicU64,
    deliveries: AtomicU64,
    dropped: AtomicU64,
    lagged: AtomicU64,
    resumed: AtomicU64,
    gaps: AtomicU64,
    bytes_written: AtomicU64,
    closed: [AtomicU64; CloseReason::ALL.len()],
    #[cfg(feature = "metrics")]
    meters: meters::Meters,
}

fn add(counter: &AtomicU64, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl Counters {
    pub(crate) fn connected(&self) {
        add(&self.connected, 1);
        #[cfg(feature = "metrics")]
        {
            self.meters.opened.increment(1);
            self.meters.open.increment(1.0);
        }
    }

    /// One event sent, queued for `deliveries` connections.
    pub(crate) fn sent(&self, deliveries: usize) {
        add(&self.events, 1);
        add(&self.deliveries, deliveries as u64);
        #[cfg(feature = "metrics")]
        {
            self.meters.events.increment(1);
            self.meters.deliveries.increment(deliveries as u64);
        }
    }

    /// `n` events a connection will never send because it lagged: counted as both.
    pub(crate) fn lagged(&self, n: u64) {
        add(&self.lagged, n);
        add(&self.dropped, n);
        #[cfg(feature = "metrics")]
        {
            self.meters.lagged.increment(n);
            self.meters.dropped.increment(n);
        }
    }

    pub(crate) fn dropped(&self, n: u64) {
        add(&self.dropped, n);
        #[cfg(feature = "metrics")]
        self.meters.dropped.increment(n);
    }

    pub(crate) fn resumed(&self) {
        add(&self.resumed, 1);
        #[cfg(feature = "metrics")]
        self.meters.resumed.increment(1);
    }

    pub(crate) fn gap(&self) {
        add(&self.gaps, 1);
        #[cfg(feature = "metrics")]
        self.meters.gaps.increment(1);
    }

    pub(crate) fn closed(&self, reason: CloseReason) {
        add(&self.closed[reason.index()], 1);
        #[cfg(feature = "metrics")]
        {
            self.meters.closed[reason.index()].increment(1);
            self.meters.open.decrement(1.0);
        }
    }

    /// Bytes a body handed to the server since it last reported.
    pub(crate) fn written(&self, bytes: u64) {
        add(&self.bytes_written, bytes);
        #[cfg(feature = "metrics")]
        self.meters.written.increment(bytes);
    }

    /// One sampled write: the connection's backlog then, and the seconds since the first
    /// event of the write was published (if it was).
    #[cfg(feature = "metrics")]
    pub(crate) fn sample(&self, depth: usize, delay: Option<f64>) {
        self.meters.queue_depth.record(depth as f64);
        if let Some(delay) = delay {
            self.meters.delay.record(delay);
        }
    }

    /// The counters, with the open connections counted by the caller.
    pub(crate) fn snapshot(&self, open: usize, open_per_topic: HashMap<String, usize>) -> Stats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            open,
            open_per_topic,
            connected: load(&self.connected),
            events: load(&self.events),
            deliveries: load(&self.deliveries),
            dropped: load(&self.dropped),
            lagged: load(&self.lagged),
            resumed: load(&self.resumed),
            gaps: load(&self.gaps),
            bytes_written: load(&self.bytes_written),
            closed: CloseReason::ALL
                .iter()
                .map(|r| (*r, load(&self.closed[r.index()])))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}

#[cfg(feature = "metrics")]
mod meters {
    use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

    use crate::manager::types::CloseReason;
    use crate::telemetry as names;

    /// The manager's metric handles, registered once, with the recorder installed when the
    /// manager is built.
    #[derive(Debug)]
    pub(super) struct Meters {
        pub(super) open: Gauge,
        pub(super) opened: Counter,
        pub(super) closed: [Counter; CloseReason::ALL.len()],
        pub(super) events: Counter,
        pub(super) deliveries: Counter,
        pub(super) written: Counter,
        pub(super) dropped: Counter,
        pub(super) lagged: Counter,
        pub(super) resumed: Counter,
        pub(super) gaps: Counter,
        pub(super) queue_depth: Histogram,
        pub(super) delay: Histogram,
    }

    impl Default for Meters {
        fn default() -> Self {
            Meters {
                open: gauge!(names::STREAMS_OPEN),
                opened: counter!(names::STREAMS_OPENED),
                closed: CloseReason::ALL
                    .map(|r| counter!(names::STREAMS_CLOSED, "reason" => r.as_str())),
                events: counter!(names::EVENTS),
                deliveries: counter!(names::DELIVERIES),
                written: counter!(names::WRITTEN_BYTES),
                dropped: counter!(names::DROPPED),
                lagged: counter!(names::LAGGED),
                resumed: counter!(names::RESUMED),
                gaps: counter!(names::GAPS),
                queue_depth: histogram!(names::QUEUE_DEPTH),
                delay: histogram!(names::DELIVERY_DELAY),
            }
        }
    }
}

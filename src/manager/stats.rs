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
    /// Connections closed, per reason.
    pub closed: HashMap<CloseReason, u64>,
}

/// The counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    connected: AtomicU64,
    events: AtomicU64,
    deliveries: AtomicU64,
    dropped: AtomicU64,
    lagged: AtomicU64,
    resumed: AtomicU64,
    gaps: AtomicU64,
    closed: [AtomicU64; CloseReason::ALL.len()],
}

fn add(counter: &AtomicU64, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl Counters {
    pub(crate) fn connected(&self) {
        add(&self.connected, 1);
    }

    /// One event sent, queued for `deliveries` connections.
    pub(crate) fn sent(&self, deliveries: usize) {
        add(&self.events, 1);
        add(&self.deliveries, deliveries as u64);
    }

    /// `n` events a connection will never send because it lagged: counted as both.
    pub(crate) fn lagged(&self, n: u64) {
        add(&self.lagged, n);
        add(&self.dropped, n);
    }

    pub(crate) fn dropped(&self, n: u64) {
        add(&self.dropped, n);
    }

    pub(crate) fn resumed(&self) {
        add(&self.resumed, 1);
    }

    pub(crate) fn gap(&self) {
        add(&self.gaps, 1);
    }

    pub(crate) fn closed(&self, reason: CloseReason) {
        add(&self.closed[reason.index()], 1);
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
            closed: CloseReason::ALL
                .iter()
                .map(|r| (*r, load(&self.closed[r.index()])))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}

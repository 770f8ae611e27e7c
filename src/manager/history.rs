use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::Event;

/// A bounded record of published events, for replay by `Last-Event-ID`.
#[derive(Debug)]
pub(crate) struct History {
    entries: VecDeque<Entry>,
    max_len: usize,
    max_age: Option<Duration>,
    next_seq: u64,
}

#[derive(Debug)]
struct Entry {
    event: Event,
    topic: Option<Arc<str>>,
    at: Instant,
}

/// Where a client's last id falls in the history.
pub(crate) enum Position {
    /// Found: replay everything after it.
    After(Vec<Bytes>),
    /// Not found: signal a gap, then replay all that is left.
    Unknown(Vec<Bytes>),
}

impl History {
    pub(crate) fn new(max_len: usize, max_age: Option<Duration>, first_seq: u64) -> Self {
        History {
            entries: VecDeque::new(),
            max_len,
            max_age,
            next_seq: first_seq,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.max_len > 0
    }

    pub(crate) fn next_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    pub(crate) fn push(&mut self, event: Event, topic: Option<Arc<str>>, now: Instant) {
        if !self.enabled() {
            return;
        }
        if self.entries.len() >= self.max_len {
            self.entries.pop_front();
        }
        self.entries.push_back(Entry {
            event,
            topic,
            at: now,
        });
        self.expire(now);
    }

    fn expire(&mut self, now: Instant) {
        if let Some(max_age) = self.max_age {
            while self
                .entries
                .front()
                .is_some_and(|e| now.saturating_duration_since(e.at) > max_age)
            {
                self.entries.pop_front();
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The events a client that last saw `last_id` missed, for the given topics.
    pub(crate) fn since(
        &mut self,
        last_id: &str,
        wants: impl Fn(Option<&str>) -> bool,
        now: Instant,
    ) -> Position {
        self.expire(now);
        let found = self
            .entries
            .iter()
            .rposition(|e| e.event.id_bytes() == Some(last_id.as_bytes()));
        let start = found.map_or(0, |i| i + 1);
        let events = self
            .entries
            .iter()
            .skip(start)
            .filter(|e| wants(e.topic.as_deref()))
            .map(|e| e.event.as_bytes().clone())
            .collect();
        match found {
            Some(_) => Position::After(events),
            None => Position::Unknown(events),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str) -> Event {
        Event::builder().id(id).data(id).build().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_by_count_and_age() {
        let mut h = History::new(3, Some(Duration::from_secs(10)), 1);
        let t0 = Instant::now();
        for i in 1..=5 {
            h.push(ev(&i.to_string()), None, t0);
        }
        assert_eq!(h.len(), 3);
        assert!(matches!(h.since("4", |_| true, t0), Position::After(v) if v.len() == 1));
        assert!(matches!(h.since("1", |_| true, t0), Position::Unknown(v) if v.len() == 3));
        h.push(ev("6"), None, t0 + Duration::from_secs(11));
        assert_eq!(h.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn topic_filter() {
        let mut h = History::new(10, None, 1);
        let now = Instant::now();
        h.push(ev("1"), None, now);
        h.push(ev("2"), Some("a".into()), now);
        h.push(ev("3"), Some("b".into()), now);
        let Position::After(v) = h.since("1", |t| t.map_or(true, |t| t == "b"), now) else {
            panic!("id 1 is in the history");
        };
        assert_eq!(v.len(), 1);
        assert!(v[0].starts_with(b"id: 3\n"));
    }
}

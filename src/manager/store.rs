//! Every published event, in one log per scope: one for events published to everyone, one
//! per topic. Publishing numbers events in one order across all logs, bounds what they hold
//! (count per log, bytes and age across all of them), frees a topic's log once nobody reads
//! it and its history has gone, and finds where a reconnecting client resumes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::log::{Cursor, Entry, Log};
use super::sync::{AtomicU64, Mutex, Ordering, RwLock};
use super::types::Replay;
use crate::Event;

/// What the logs may hold.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Entries per log: the replay count, and never less than the backlog bound, which live
    /// readers need.
    pub(crate) per_log: usize,
    /// Bytes across every log, entry overhead included.
    pub(crate) max_bytes: usize,
    /// Entries older than this are dropped.
    pub(crate) max_age: Option<Duration>,
    /// Whether a `Last-Event-ID` is looked up at all.
    pub(crate) replay: bool,
    /// Events replayed after a gap event (the newest ones).
    pub(crate) after_gap: usize,
}

/// Where a reconnecting client starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ResumeFrom<'a> {
    /// No `Last-Event-ID`: at the end of every log.
    Fresh,
    /// After this id.
    Id(&'a str),
    /// The client sent an id that cannot be ours (invalid, oversized): a gap.
    Unknown,
}

/// Positions in a set of logs, in the order given, and what they mean for replay.
#[derive(Debug)]
struct Resumed {
    cursors: Vec<u64>,
    replay: Replay,
}

/// Where a new connection reads: the log to all, each topic's log, and how it started.
#[derive(Debug)]
pub(crate) struct Start {
    pub(crate) all: Cursor,
    pub(crate) topics: Vec<Cursor>,
    pub(crate) replay: Replay,
    /// With a broker: the client has seen up to this seq, which has not arrived here yet;
    /// entries up to it are skipped as they arrive (0: none).
    pub(crate) skip_through: u64,
}

/// How far a client's id may be ahead of what this manager received from its broker (in
/// entries) and still be resumed from, rather than count as unknown.
const MAX_AHEAD: u64 = 100_000;

/// Who numbers published events, and so how a client's id maps to a position.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ids {
    /// This manager: the automatic id of seq `s` is `base + s`.
    Local { base: u64 },
    /// A broker: entry `N` of epoch `E` has the id `E-N` (see `broker::format_id`).
    Broker,
}

/// The broker's current epoch: its entry `N` is seq `offset + N` here.
#[derive(Debug)]
struct Epoch {
    tag: Arc<str>,
    offset: u64,
}

#[derive(Debug, Default)]
struct Publishing {
    next_seq: u64,
    /// With a broker: the current epoch, once it is known.
    epoch: Option<Epoch>,
    /// Seqs up to this one may have been published without this manager holding them (a
    /// broker's entries it never received): a client that last saw an earlier one gets a gap.
    lost_through: u64,
    /// Every entry pushed, oldest first, with its time, for the byte and age bounds across
    /// logs. Records of entries a log dropped by itself are skipped when met, and swept out
    /// when they outnumber the live ones.
    fifo: VecDeque<(Arc<Log>, u64, u64)>,
    /// Bytes held by the entries of every log.
    bytes: usize,
    /// Entries held across every log.
    live: usize,
}

#[derive(Debug)]
pub(crate) struct Store {
    all: Arc<Log>,
    topics: RwLock<HashMap<Arc<str>, Arc<Log>>>,
    /// Publishing, subscribing and resuming take this lock: one order of publishes, and
    /// positions that no publish slips between.
    publishing: Mutex<Publishing>,
    /// One past the seq of the newest entry visible in its log.
    published: AtomicU64,
    ids: Ids,
    limits: Limits,
}

impl Store {
    pub(crate) fn new(limits: Limits, ids: Ids) -> Self {
        Store {
            all: Arc::new(Log::new(None)),
            topics: RwLock::new(HashMap::new()),
            publishing: Mutex::new(Publishing {
                next_seq: 1,
                ..Publishing::default()
            }),
            published: AtomicU64::new(1),
            ids,
            limits,
        }
    }

    /// One past the newest published seq: a send stamped with it goes after every event
    /// published so far.
    pub(crate) fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    pub(crate) fn topic(&self, name: &str) -> Option<Arc<Log>> {
        self.topics.read().get(name).cloned()
    }

    /// Entries held for replay across every log: none when replay is off (the logs then
    /// hold only what live readers have not sent yet).
    pub(crate) fn len(&self) -> usize {
        if !self.limits.replay {
            return 0;
        }
        self.publishing.lock().live
    }

    /// Bytes held across every log.
    pub(crate) fn bytes(&self) -> usize {
        self.publishing.lock().bytes
    }

    /// Number of topic logs.
    pub(crate) fn topic_count(&self) -> usize {
        self.topics.read().len()
    }

    /// Records `event` in its log, with the next automatic id if `auto_id` and it has none.
    /// Returns the event as recorded and its log, which the caller
    /// [wakes](Log::wake) once it holds no lock. `None` if nobody could ever read it: a
    /// topic with no subscriber while replay is off.
    pub(crate) fn publish(
        &self,
        topic: Option<&str>,
        event: Event,
        auto_id: bool,
        now_ms: u64,
    ) -> Option<(Event, Arc<Log>)> {
        let mut p = self.publishing.lock();
        let log = self.log_for(topic)?;
        let seq = p.next_seq;
        p.next_seq += 1;
        let event = match self.ids {
            Ids::Local { base } if auto_id && !event.has_id() => {
                let mut digits = itoa::Buffer::new();
                event.with_validated_id(digits.format(base + seq))
            }
            _ => event,
        };
        self.record(&mut p, log, seq, event, now_ms)
    }

    /// Records entry `n` of the broker's current epoch, `event` carrying its id. Entries
    /// come in the broker's order; one already recorded is ignored (`None`), as is a topic
    /// nobody could ever read.
    pub(crate) fn publish_at(
        &self,
        topic: Option<&str>,
        event: Event,
        n: u64,
        now_ms: u64,
    ) -> Option<(Event, Arc<Log>)> {
        let mut p = self.publishing.lock();
        let seq = p.epoch.as_ref()?.offset + n;
        if seq < p.next_seq {
            return None;
        }
        let log = self.log_for(topic)?;
        p.next_seq = seq + 1;
        self.record(&mut p, log, seq, event, now_ms)
    }

    /// The log a publish to `topic` (`None`: to all) goes into, made if it is worth
    /// keeping: `None` for a topic nobody reads while replay is off. Call under the
    /// publishing lock.
    fn log_for(&self, topic: Option<&str>) -> Option<Arc<Log>> {
        match topic {
            None => Some(self.all.clone()),
            Some(name) if self.limits.replay => Some(self.topic_or_insert(name, false)),
            Some(name) => self.topic(name),
        }
    }

    /// The broker starts (or starts over) with epoch `tag` at its entry `first`: what came
    /// before is unknown here, and ids of other epochs are unknown ids.
    pub(crate) fn begin_epoch(&self, tag: &str, first: u64) {
        let mut p = self.publishing.lock();
        let offset = p.next_seq;
        p.lost_through = p.lost_through.max((offset + first).saturating_sub(1));
        p.epoch = Some(Epoch {
            tag: Arc::from(tag),
            offset,
        });
    }

    /// The broker's entries up to `n` that never arrived are lost here.
    pub(crate) fn lost(&self, n: u64) {
        let mut p = self.publishing.lock();
        if let Some(offset) = p.epoch.as_ref().map(|e| e.offset) {
            p.lost_through = p.lost_through.max(offset + n);
        }
    }

    /// The id the broker's entry `n` has in the current epoch.
    pub(crate) fn broker_id(&self, n: u64) -> Option<String> {
        let p = self.publishing.lock();
        p.epoch
            .as_ref()
            .map(|e| super::broker::format_id(&e.tag, n))
    }

    fn record(
        &self,
        p: &mut Publishing,
        log: Arc<Log>,
        seq: u64,
        event: Event,
        now_ms: u64,
    ) -> Option<(Event, Arc<Log>)> {
        let entry = Entry {
            seq,
            at_ms: now_ms,
            event: event.clone(),
        };
        p.bytes += entry.size();
        p.live += 1;
        let (dropped_bytes, dropped) = log.push(entry, self.limits.per_log, &self.published);
        p.bytes -= dropped_bytes;
        p.live -= dropped;
        p.fifo.push_back((log.clone(), seq, now_ms));
        self.trim(p, now_ms);
        Some((event, log))
    }

    /// Drops what the age bound no longer allows, and frees topics left empty. Publishing
    /// does this too; call it where time passes without publishes.
    pub(crate) fn expire(&self, now_ms: u64) {
        let mut p = self.publishing.lock();
        self.trim(&mut p, now_ms);
    }

    fn trim(&self, p: &mut Publishing, now_ms: u64) {
        let max_age_ms = self.limits.max_age.map(|a| a.as_millis() as u64);
        // The oldest record decides, without a lock: most publishes stop here.
        while let Some(&(_, _, at_ms)) = p.fifo.front() {
            let over_bytes = p.bytes > self.limits.max_bytes;
            let expired = max_age_ms.is_some_and(|age| now_ms.saturating_sub(at_ms) > age);
            if !(over_bytes || expired) {
                break;
            }
            let Some((log, seq, _)) = p.fifo.pop_front() else {
                break;
            };
            // `None`: the log had dropped it already (its count bound).
            if let Some(size) = log.pop_front_if(seq) {
                p.bytes -= size;
                p.live -= 1;
                self.free_if_unused(&log);
            }
        }
        // Records of entries their log dropped by itself (the count bound): swept out once
        // they outnumber the live ones, so the record list stays within twice the entries.
        if p.fifo.len() > 2 * p.live + 64 {
            p.fifo.retain(|(log, seq, _)| log.holds(*seq));
        }
    }

    /// The topic's log, made if missing; with a subscriber added under the lock that
    /// [`free_if_unused`](Self::free_if_unused) takes, so a log is never freed while
    /// someone is about to read it. Call under the publishing lock.
    fn topic_or_insert(&self, name: &str, subscribe: bool) -> Arc<Log> {
        {
            let topics = self.topics.read();
            if let Some(log) = topics.get(name) {
                if subscribe {
                    log.add_subscriber();
                }
                return log.clone();
            }
        }
        let mut topics = self.topics.write();
        let log = topics
            .entry(Arc::from(name))
            .or_insert_with_key(|name| Arc::new(Log::new(Some(name.clone()))))
            .clone();
        if subscribe {
            log.add_subscriber();
        }
        log
    }

    /// Subscribes to `topic`: its log, and the index from which this subscriber reads.
    /// Everything published after this call is read; nothing published before it is.
    pub(crate) fn subscribe(&self, topic: &str) -> (Arc<Log>, u64) {
        let _p = self.publishing.lock();
        let log = self.topic_or_insert(topic, true);
        let cursor = log.end();
        (log, cursor)
    }

    /// One subscriber left `log`: frees it if it was the last and nothing is held for
    /// replay (without replay, what it holds could only have been read by its subscribers).
    pub(crate) fn unsubscribe(&self, log: &Arc<Log>) {
        if log.remove_subscriber() > 0 || log.name().is_none() {
            return;
        }
        if !self.limits.replay {
            let mut p = self.publishing.lock();
            if log.subscribers() == 0 {
                let (bytes, count) = log.clear();
                p.bytes -= bytes;
                p.live -= count;
            }
            self.free_if_unused(log);
        } else if log.is_empty() {
            let _p = self.publishing.lock();
            self.free_if_unused(log);
        }
    }

    /// Removes a topic's log nobody reads any more and that holds nothing. Call under the
    /// publishing lock, so no publish is writing into it meanwhile.
    fn free_if_unused(&self, log: &Arc<Log>) {
        let Some(name) = log.name() else {
            return;
        };
        if log.subscribers() > 0 || !log.is_empty() {
            return;
        }
        let mut topics = self.topics.write();
        // Checked again under the lock subscribers are added under.
        if log.subscribers() == 0 && topics.get(name).is_some_and(|l| Arc::ptr_eq(l, log)) {
            topics.remove(name);
            if topics.capacity() > 64 && topics.len() * 4 < topics.capacity() {
                let len = topics.len();
                topics.shrink_to(len * 2);
            }
        }
    }

    /// Subscribes to `topics` (besides everything published to all) and finds where a
    /// client that last saw `from` resumes in each log. Under the publishing lock: no
    /// publish falls between the positions, and everything published after them is read.
    pub(crate) fn resume(&self, topics: &[Arc<str>], from: ResumeFrom<'_>, now_ms: u64) -> Start {
        let mut p = self.publishing.lock();
        self.trim(&mut p, now_ms);
        let mut logs = Vec::with_capacity(1 + topics.len());
        self.all.add_subscriber();
        logs.push(self.all.clone());
        for topic in topics {
            logs.push(self.topic_or_insert(topic, true));
        }
        let from = if self.limits.replay {
            from
        } else {
            ResumeFrom::Fresh
        };
        // A client of another instance may be ahead of this one: it resumes where it is,
        // and what it has seen is skipped as it arrives here.
        let mut skip_through = 0;
        let Resumed { cursors, replay } = match from {
            ResumeFrom::Fresh => Resumed {
                cursors: logs.iter().map(|l| l.end()).collect(),
                replay: Replay::Fresh,
            },
            ResumeFrom::Id(id) => match self.seq_of(&p, id, &logs) {
                Some(seq) if seq >= p.lost_through => {
                    if seq >= p.next_seq {
                        skip_through = seq;
                    }
                    self.after(seq, &logs)
                }
                _ => self.newest(&logs),
            },
            ResumeFrom::Unknown => self.newest(&logs),
        };
        // Live events start at the ends now; what lies before is replay.
        let ends: Vec<u64> = logs.iter().map(|l| l.end()).collect();
        drop(p);
        let mut cursors = logs
            .into_iter()
            .zip(cursors.into_iter().zip(ends))
            .map(|(log, (next, live_from))| Cursor::new(log, next, live_from));
        // `logs` starts with the log to all, so the fallback is never taken.
        let all = cursors
            .next()
            .unwrap_or_else(|| Cursor::new(self.all.clone(), self.all.end(), self.all.end()));
        Start {
            all,
            topics: cursors.collect(),
            replay,
            skip_through,
        }
    }

    /// The seq of the event whose id is `id`: read from an automatic or a broker's id, else
    /// searched for.
    fn seq_of(&self, p: &Publishing, id: &str, logs: &[Arc<Log>]) -> Option<u64> {
        match self.ids {
            Ids::Local { base } => {
                if let Ok(n) = id.parse::<u64>() {
                    if n > base && n - base < p.next_seq {
                        return Some(n - base);
                    }
                }
                logs.iter()
                    .filter_map(|log| log.read().find_id(id.as_bytes()))
                    .max()
            }
            Ids::Broker => {
                let (tag, n) = super::broker::parse_id(id)?;
                let epoch = p.epoch.as_ref().filter(|e| &*e.tag == tag)?;
                let seq = epoch.offset.checked_add(n)?;
                // Seen on an instance ahead of this one, within what this one may still
                // receive: beyond that, an id of this epoch is not one the broker gave.
                let ahead = (self.limits.per_log as u64).max(MAX_AHEAD);
                (seq < p.next_seq + ahead).then_some(seq)
            }
        }
    }

    /// Everything after `seq`, or a gap if a log dropped something the client missed.
    fn after(&self, seq: u64, logs: &[Arc<Log>]) -> Resumed {
        let mut cursors = Vec::with_capacity(logs.len());
        let mut missed = 0;
        for log in logs {
            let entries = log.read();
            if entries.trimmed_seq() > seq {
                drop(entries);
                return self.newest(logs);
            }
            let cursor = entries.index_after(seq);
            missed += (entries.end() - cursor) as usize;
            cursors.push(cursor);
        }
        Resumed {
            cursors,
            replay: Replay::Resumed(missed),
        }
    }

    /// A gap: the newest [`after_gap`](Limits::after_gap) events across `logs`, then live.
    fn newest(&self, logs: &[Arc<Log>]) -> Resumed {
        let n = self.limits.after_gap;
        let threshold = if n == 0 {
            u64::MAX
        } else {
            let mut seqs: Vec<u64> = logs
                .iter()
                .flat_map(|log| log.read().seqs_from_back().take(n).collect::<Vec<_>>())
                .collect();
            seqs.sort_unstable_by(|a, b| b.cmp(a));
            seqs.get(n - 1).or(seqs.last()).copied().unwrap_or(u64::MAX)
        };
        let mut replayed = 0;
        let cursors = logs
            .iter()
            .map(|log| {
                let entries = log.read();
                let cursor = entries.index_after(threshold.saturating_sub(1));
                replayed += (entries.end() - cursor) as usize;
                cursor
            })
            .collect();
        Resumed {
            cursors,
            replay: Replay::Gap(replayed),
        }
    }
}

#[cfg(all(test, not(tower_sse_loom)))]
mod tests {
    use super::*;

    fn limits(per_log: usize, max_bytes: usize) -> Limits {
        Limits {
            per_log,
            max_bytes,
            max_age: Some(Duration::from_secs(10)),
            replay: true,
            after_gap: 0,
        }
    }

    fn nexts(start: &Start) -> Vec<u64> {
        std::iter::once(&start.all)
            .chain(&start.topics)
            .map(|c| c.next)
            .collect()
    }

    fn publish(store: &Store, topic: Option<&str>, data: &str, now_ms: u64) -> String {
        let (event, log) = store
            .publish(topic, Event::message(data), true, now_ms)
            .expect("recorded");
        log.wake();
        event.id().expect("auto id").to_owned()
    }

    #[test]
    fn bounded_in_bytes_across_logs_oldest_first() {
        let one = Entry {
            seq: 1,
            at_ms: 0,
            event: Event::message("x").with_validated_id("1001"),
        }
        .size();
        let store = Store::new(limits(100, 3 * one), Ids::Local { base: 1000 });
        publish(&store, Some("a"), "x", 0);
        publish(&store, None, "x", 0);
        publish(&store, Some("b"), "x", 0);
        assert_eq!((store.len(), store.bytes()), (3, 3 * one));
        publish(&store, None, "x", 0);
        assert_eq!((store.len(), store.bytes()), (3, 3 * one));
        // The oldest was topic a's only event: with no subscriber, its log is freed.
        assert!(store.topic("a").is_none());
        assert!(store.topic("b").is_some());
    }

    #[test]
    fn records_of_entries_dropped_by_count_do_not_pile_up() {
        let store = Store::new(limits(2, usize::MAX), Ids::Local { base: 1000 });
        publish(&store, Some("old"), "x", 0);
        for _ in 0..10_000 {
            publish(&store, None, "x", 0);
        }
        let p = store.publishing.lock();
        assert_eq!(p.live, 3);
        assert!(p.fifo.len() <= 2 * p.live + 64, "{}", p.fifo.len());
    }

    #[test]
    fn age_bound_frees_an_unread_topic_without_a_publish_to_it() {
        let store = Store::new(limits(100, usize::MAX), Ids::Local { base: 1000 });
        publish(&store, Some("t"), "x", 0);
        store.expire(5_000);
        assert!(store.topic("t").is_some());
        store.expire(10_001);
        assert!(store.topic("t").is_none());
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn resume_after_an_auto_id_and_a_gap_when_something_was_dropped() {
        let store = Store::new(limits(3, usize::MAX), Ids::Local { base: 1000 });
        let first = publish(&store, None, "1", 0);
        let second = publish(&store, Some("t"), "2", 0);
        publish(&store, None, "3", 0);
        publish(&store, Some("u"), "4", 0);
        let topics: Vec<Arc<str>> = vec!["t".into()];
        let r = store.resume(&topics, ResumeFrom::Id(&first), 0);
        assert_eq!(r.replay, Replay::Resumed(2), "events 2 and 3, not u's 4");
        assert_eq!(nexts(&r), vec![1, 0]);
        // Unknown ids, foreign numbers and invalid ids: a gap, then live.
        for from in [
            ResumeFrom::Id("nope"),
            ResumeFrom::Id("5"),
            ResumeFrom::Unknown,
        ] {
            let r = store.resume(&topics, from, 0);
            assert_eq!(r.replay, Replay::Gap(0));
        }
        // Two more publishes to all drop event 1 (count bound 3): resuming after it is fine
        // (nothing missed was dropped), but not from before it.
        publish(&store, None, "5", 0);
        publish(&store, None, "6", 0);
        let r = store.resume(&topics, ResumeFrom::Id(&second), 0);
        assert_eq!(r.replay, Replay::Resumed(3));
        let r = store.resume(&topics, ResumeFrom::Id("1000"), 0);
        assert!(matches!(r.replay, Replay::Gap(_)), "{:?}", r.replay);
    }

    #[test]
    fn a_client_ahead_of_this_instance_resumes_and_skips_what_it_saw() {
        let store = Store::new(limits(10, usize::MAX), Ids::Broker);
        store.begin_epoch("ep", 1);
        for n in 1..=3 {
            let event = Event::message("x").with_validated_id(&format!("ep-{n}"));
            store.publish_at(None, event, n, 0).expect("recorded");
        }
        // Seen up to 5 on another instance: nothing to replay yet, and 4 and 5 are skipped
        // when they arrive.
        let r = store.resume(&[], ResumeFrom::Id("ep-5"), 0);
        assert_eq!(r.replay, Replay::Resumed(0));
        assert_eq!(r.skip_through, 5 + 1, "the seq of entry 5 (offset 1)");
        // Behind this instance: a plain resume.
        let r = store.resume(&[], ResumeFrom::Id("ep-2"), 0);
        assert_eq!((r.replay, r.skip_through), (Replay::Resumed(1), 0));
        // Another epoch, or far beyond anything the broker could have given: unknown.
        for id in ["old-2", "ep-9999999"] {
            let r = store.resume(&[], ResumeFrom::Id(id), 0);
            assert_eq!(r.replay, Replay::Gap(0), "{id}");
        }
    }

    #[test]
    fn after_a_gap_the_newest_events_across_logs() {
        let mut l = limits(10, usize::MAX);
        l.after_gap = 2;
        let store = Store::new(l, Ids::Local { base: 1000 });
        publish(&store, None, "1", 0);
        publish(&store, Some("t"), "2", 0);
        publish(&store, None, "3", 0);
        let topics: Vec<Arc<str>> = vec!["t".into()];
        let r = store.resume(&topics, ResumeFrom::Unknown, 0);
        assert_eq!(r.replay, Replay::Gap(2));
        assert_eq!(nexts(&r), vec![1, 0], "events 2 and 3");
    }
}

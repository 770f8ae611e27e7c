//! One scope's published events (everything published to all, or to one topic), kept once in
//! a bounded log that every subscribed connection reads at its own position, as
//! `tokio::sync::broadcast` does. The log is the live fan-out and the replay history at
//! once: a reconnecting client is just a reader that starts further back.
//!
//! Entries are numbered twice: by their *index* in this log (positions of readers, counts of
//! a backlog) and by their *seq*, one number per publish across every log of the manager (the
//! order a connection on several logs sends them in).

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Waker;

use super::sync::{AtomicU64, AtomicUsize, Ordering, Parked, RwLock, RwLockReadGuard};
use crate::Event;

/// One published event.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The publish's number across every log; never 0.
    pub(crate) seq: u64,
    /// When it was published, in milliseconds of the manager's clock.
    pub(crate) at_ms: u64,
    pub(crate) event: Event,
}

/// What an entry costs besides its bytes; counted against the history's byte bound so that
/// tiny events cannot hide their real size.
pub(crate) const ENTRY_OVERHEAD: usize = std::mem::size_of::<Entry>();

impl Entry {
    /// The bytes this entry holds, as counted against the byte bound.
    pub(crate) fn size(&self) -> usize {
        self.event.len() + ENTRY_OVERHEAD
    }
}

/// The entries of a log, read under its lock.
#[derive(Debug, Default)]
pub(crate) struct Entries {
    events: VecDeque<Entry>,
    /// Index of `events[0]`.
    start: u64,
    /// The highest seq dropped from the front so far (0: none). A reader that last saw an
    /// older seq has missed something this log no longer holds.
    trimmed_seq: u64,
}

impl Entries {
    /// Index of the oldest entry held.
    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    /// Index the next entry will get.
    pub(crate) fn end(&self) -> u64 {
        self.start + self.events.len() as u64
    }

    /// The entry at `index`, if still held.
    pub(crate) fn get(&self, index: u64) -> Option<&Entry> {
        let offset = usize::try_from(index.checked_sub(self.start)?).ok()?;
        self.events.get(offset)
    }

    /// Index of the first entry published after `seq` (the end if none is).
    pub(crate) fn index_after(&self, seq: u64) -> u64 {
        self.start + self.events.partition_point(|e| e.seq <= seq) as u64
    }

    /// The seq of the newest entry whose id is `id`.
    pub(crate) fn find_id(&self, id: &[u8]) -> Option<u64> {
        self.events
            .iter()
            .rev()
            .find(|e| e.event.id_bytes() == Some(id))
            .map(|e| e.seq)
    }

    /// The highest seq dropped from this log so far (0: none).
    pub(crate) fn trimmed_seq(&self) -> u64 {
        self.trimmed_seq
    }

    /// Seqs of every entry held, newest first.
    pub(crate) fn seqs_from_back(&self) -> impl Iterator<Item = u64> + '_ {
        self.events.iter().rev().map(|e| e.seq)
    }

    fn pop_front(&mut self) -> Option<Entry> {
        let entry = self.events.pop_front()?;
        self.start += 1;
        self.trimmed_seq = entry.seq;
        Some(entry)
    }
}

/// A reader's position in one log.
#[derive(Debug)]
pub(crate) struct Cursor {
    pub(crate) log: Arc<Log>,
    /// The index of the next entry to send.
    pub(crate) next: u64,
    /// The log's end when the reader started reading it: entries before it are replay,
    /// which the backlog bound does not count.
    pub(crate) live_from: u64,
    /// The generation of the log's parked set the reader's waker was registered in
    /// ([`NOT_PARKED`] if it is not).
    parked_in: u64,
}

/// [`Cursor::parked_in`] of a reader not registered in its log's parked set.
const NOT_PARKED: u64 = u64::MAX;

impl Cursor {
    pub(crate) fn new(log: Arc<Log>, next: u64, live_from: u64) -> Self {
        Cursor {
            log,
            next,
            live_from,
            parked_in: NOT_PARKED,
        }
    }

    /// Registers the reader's `waker` for the log's next publish. With `same_waker` (the
    /// waker it parked with last), a reader still registered takes no lock: a reader of
    /// several logs parks on each of them, and most have no news. Returns `true` if an
    /// entry came in past the cursor meanwhile: read again instead of waiting.
    pub(crate) fn park(&mut self, id: u64, waker: &Waker, same_waker: bool) -> bool {
        if !same_waker || self.parked_in != self.log.parked.generation() {
            self.parked_in = self.log.parked.park(id, waker);
        }
        self.log.end() > self.next
    }

    /// Takes the reader out of the log's parked set.
    pub(crate) fn unpark(&mut self, id: u64) {
        self.parked_in = NOT_PARKED;
        self.log.unpark(id);
    }

    /// Entries published since the reader started, not yet sent.
    pub(crate) fn live_backlog(&self) -> u64 {
        self.log.end().saturating_sub(self.next.max(self.live_from))
    }

    /// Entries it can still send under the backlog bound.
    pub(crate) fn backlog(&self, capacity: u64) -> u64 {
        self.log.end().saturating_sub(self.bounded_next(capacity))
    }

    /// Entries numbered below `until` still to send.
    pub(crate) fn backlog_until(&self, until: u64) -> u64 {
        let entries = self.log.read();
        let end = entries.index_after(until.saturating_sub(1));
        end.saturating_sub(self.next.max(entries.start()))
    }

    /// Entries dropped from the log before the reader sent them.
    pub(crate) fn deficit(&self) -> u64 {
        self.log.start().saturating_sub(self.next)
    }

    /// Where the reader stands once the backlog bound is applied: past what the log has
    /// dropped, and no more than `capacity` live entries behind the end. Entries before it
    /// will never be sent.
    pub(crate) fn bounded_next(&self, capacity: u64) -> u64 {
        let end = self.log.end();
        let mut next = self.next.max(self.log.start());
        if end.saturating_sub(self.next.max(self.live_from)) > capacity {
            next = next.max(end - capacity);
        }
        next
    }
}

/// A log and the readers parked on it.
#[derive(Debug)]
pub(crate) struct Log {
    entries: RwLock<Entries>,
    /// `entries.end()`, readable without the lock.
    end: AtomicU64,
    /// `entries.start()`, readable without the lock.
    start: AtomicU64,
    /// Readers that found nothing new.
    parked: Parked,
    /// Connections reading this log.
    subscribers: AtomicUsize,
    /// The topic; `None` for the log of events published to everyone.
    name: Option<Arc<str>>,
}

impl Log {
    pub(crate) fn new(name: Option<Arc<str>>) -> Self {
        Log {
            entries: RwLock::new(Entries::default()),
            end: AtomicU64::new(0),
            start: AtomicU64::new(0),
            parked: Parked::default(),
            subscribers: AtomicUsize::new(0),
            name,
        }
    }

    pub(crate) fn name(&self) -> Option<&Arc<str>> {
        self.name.as_ref()
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Entries> {
        self.entries.read()
    }

    /// Index the next entry will get.
    pub(crate) fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    /// Index of the oldest entry held.
    pub(crate) fn start(&self) -> u64 {
        self.start.load(Ordering::Acquire)
    }

    /// Appends `entry`, dropping the oldest beyond `max_len`, and stores `entry.seq + 1` in
    /// `published` before the lock is released: a reader holding the lock of every log it
    /// reads never sees a publish without every earlier one. Returns the bytes and the
    /// number of entries dropped. Call [`wake`](Self::wake) after releasing every other lock.
    pub(crate) fn push(
        &self,
        entry: Entry,
        max_len: usize,
        published: &AtomicU64,
    ) -> (usize, usize) {
        let mut entries = self.entries.write();
        let seq = entry.seq;
        entries.events.push_back(entry);
        let (mut bytes, mut count) = (0, 0);
        while entries.events.len() > max_len.max(1) {
            if let Some(e) = entries.pop_front() {
                bytes += e.size();
                count += 1;
            }
        }
        self.start.store(entries.start(), Ordering::Release);
        self.end.store(entries.end(), Ordering::Release);
        published.store(seq + 1, Ordering::Release);
        (bytes, count)
    }

    /// Drops the oldest entry if its seq is `seq`. Returns the bytes dropped.
    pub(crate) fn pop_front_if(&self, seq: u64) -> Option<usize> {
        let mut entries = self.entries.write();
        if entries.events.front()?.seq != seq {
            return None;
        }
        let size = entries.pop_front().map(|e| e.size());
        self.start.store(entries.start(), Ordering::Release);
        size
    }

    /// Drops every entry. Returns the bytes and the number of entries dropped.
    pub(crate) fn clear(&self) -> (usize, usize) {
        let mut entries = self.entries.write();
        let (mut bytes, mut count) = (0, 0);
        while let Some(e) = entries.pop_front() {
            bytes += e.size();
            count += 1;
        }
        self.start.store(entries.start(), Ordering::Release);
        (bytes, count)
    }

    /// Whether the entry `seq`, pushed to this log, is still held (entries only ever leave
    /// from the front).
    pub(crate) fn holds(&self, seq: u64) -> bool {
        let entries = self.entries.read();
        entries.events.front().is_some_and(|front| front.seq <= seq)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.end() == self.start()
    }

    /// Registers `waker` for the next publish. Returns `true` if an entry came in past
    /// `cursor` meanwhile: the caller must read again instead of waiting. (Readers park
    /// through [`Cursor::park`].)
    #[cfg(test)]
    pub(crate) fn park(&self, id: u64, cursor: u64, waker: &Waker) -> bool {
        let _generation = self.parked.park(id, waker);
        self.end() > cursor
    }

    pub(crate) fn unpark(&self, id: u64) {
        self.parked.unpark(id);
    }

    /// Wakes every parked reader; after a [`push`](Self::push), with no lock held.
    pub(crate) fn wake(&self) {
        self.parked.wake_all();
    }

    pub(crate) fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    pub(crate) fn add_subscriber(&self) {
        self.subscribers.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns the number of subscribers left.
    pub(crate) fn remove_subscriber(&self) -> usize {
        self.subscribers.fetch_sub(1, Ordering::Relaxed) - 1
    }
}

#[cfg(all(test, not(tower_sse_loom)))]
mod tests {
    use super::*;

    fn entry(seq: u64, at_ms: u64) -> Entry {
        Entry {
            seq,
            at_ms,
            event: Event::builder()
                .id(seq.to_string())
                .data("x")
                .build()
                .expect("valid event"),
        }
    }

    #[test]
    fn bounded_numbered_and_searchable() {
        let log = Log::new(None);
        let published = AtomicU64::new(0);
        let mut dropped = 0;
        for seq in [3, 5, 8, 9, 12] {
            dropped += log.push(entry(seq, 0), 3, &published).0;
        }
        assert_eq!(dropped, entry(3, 0).size() + entry(5, 0).size());
        assert_eq!(published.load(Ordering::Relaxed), 13);
        assert_eq!((log.start(), log.end()), (2, 5));
        let entries = log.read();
        assert_eq!(entries.trimmed_seq(), 5);
        assert_eq!(entries.get(1).map(|e| e.seq), None);
        assert_eq!(entries.get(2).map(|e| e.seq), Some(8));
        assert_eq!(entries.get(4).map(|e| e.seq), Some(12));
        assert_eq!(entries.get(5).map(|e| e.seq), None);
        assert_eq!(entries.index_after(0), 2);
        assert_eq!(entries.index_after(8), 3);
        assert_eq!(entries.index_after(10), 4);
        assert_eq!(entries.index_after(12), 5);
        assert_eq!(entries.find_id(b"9"), Some(9));
        assert_eq!(entries.find_id(b"5"), None);
        drop(entries);
        assert!(log.holds(9) && !log.holds(5));
        assert_eq!(log.pop_front_if(9), None, "not the oldest");
        assert!(log.pop_front_if(8).is_some());
        assert_eq!(log.read().get(log.start()).map(|e| e.seq), Some(9));
    }

    #[test]
    fn a_reader_parked_behind_the_end_reads_again() {
        let log = Log::new(None);
        let published = AtomicU64::new(0);
        log.push(entry(1, 0), 8, &published);
        let waker = futures_util::task::noop_waker_ref();
        assert!(log.park(7, 0, waker), "an entry past the cursor");
        assert!(!log.park(7, 1, waker), "nothing past the cursor");
    }

    #[test]
    fn a_reader_still_parked_with_the_same_waker_parks_again_without_the_lock() {
        let log = Arc::new(Log::new(None));
        let published = AtomicU64::new(0);
        let waker = futures_util::task::noop_waker_ref();
        let mut cursor = Cursor::new(log.clone(), 0, 0);
        assert!(!cursor.park(7, waker, false));
        let registered = cursor.parked_in;
        assert_eq!(registered, log.parked.generation());
        // Still registered: parking again changes nothing, and still sees new entries.
        log.push(entry(1, 0), 8, &published);
        assert!(cursor.park(7, waker, true), "an entry past the cursor");
        assert_eq!(cursor.parked_in, registered);
        // Woken: the set was swapped out, so it registers again, in the next generation.
        log.wake();
        cursor.next = 1;
        assert!(!cursor.park(7, waker, true));
        assert_eq!(cursor.parked_in, registered + 1);
        assert_eq!(log.parked.len(), 1, "registered once");
        cursor.unpark(7);
        assert_eq!(log.parked.len(), 0);
        assert_eq!(cursor.parked_in, NOT_PARKED);
    }
}

/// The park/wake handshake under every interleaving loom finds: a reader that checks for
/// entries, parks and checks again is either woken by the publish or sees its entry.
#[cfg(all(test, tower_sse_loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicBool;
    use loom::thread;
    use std::task::Wake;

    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_publish_is_never_missed() {
        loom::model(|| {
            let log = Arc::new(Log::new(None));
            let published = Arc::new(AtomicU64::new(0));
            let publisher = {
                let (log, published) = (log.clone(), published.clone());
                thread::spawn(move || {
                    let event = Event::message("x");
                    log.push(
                        Entry {
                            seq: 1,
                            at_ms: 0,
                            event,
                        },
                        4,
                        &published,
                    );
                    log.wake();
                })
            };
            let flag = std::sync::Arc::new(Flag(AtomicBool::new(false)));
            let waker = Waker::from(flag.clone());
            // The reader's poll: look, park, look again.
            let saw = log.read().end() > 0 || log.park(1, 0, &waker);
            publisher.join().expect("publisher");
            assert!(
                saw || flag.0.load(Ordering::SeqCst),
                "the reader neither saw the entry nor was woken"
            );
        });
    }

    /// A reader parks, then parks again with the same waker and skips the lock if it is still
    /// registered, while a publish comes in: it sees the entry or is woken.
    #[test]
    fn a_publish_is_never_missed_by_a_reader_that_skips_parking() {
        loom::model(|| {
            let log = Arc::new(Log::new(None));
            let published = Arc::new(AtomicU64::new(0));
            let flag = std::sync::Arc::new(Flag(AtomicBool::new(false)));
            let waker = Waker::from(flag.clone());
            let mut cursor = Cursor::new(log.clone(), 0, 0);
            let mut saw = cursor.park(1, &waker, false);
            let publisher = {
                let (log, published) = (log.clone(), published.clone());
                thread::spawn(move || {
                    log.push(
                        Entry {
                            seq: 1,
                            at_ms: 0,
                            event: Event::message("x"),
                        },
                        4,
                        &published,
                    );
                    log.wake();
                })
            };
            // The poll after a wake that was not this log's: park again, same waker.
            saw |= cursor.park(1, &waker, true);
            publisher.join().expect("publisher");
            assert!(
                saw || flag.0.load(Ordering::SeqCst),
                "the reader neither saw the entry nor was woken"
            );
        });
    }
}

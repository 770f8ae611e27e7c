//! Events published to every connection, kept once in a bounded ring that each connection
//! reads at its own position, as `tokio::sync::broadcast` does. A publish is one push and
//! one wake per parked reader, whatever the number of connections.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::task::Waker;

use bytes::Bytes;

use super::connection::lock;
use super::core::IdMap;

#[derive(Debug)]
pub(crate) struct Ring {
    events: VecDeque<Bytes>,
    /// Sequence number of `events[0]`.
    start: u64,
}

impl Ring {
    /// Sequence number of the oldest event still held.
    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    /// Sequence number the next event will get.
    pub(crate) fn end(&self) -> u64 {
        self.start + self.events.len() as u64
    }

    /// The event numbered `seq`, if still held.
    pub(crate) fn get(&self, seq: u64) -> Option<&Bytes> {
        let index = usize::try_from(seq.checked_sub(self.start)?).ok()?;
        self.events.get(index)
    }
}

#[derive(Debug)]
pub(crate) struct Broadcast {
    ring: RwLock<Ring>,
    /// `ring.end()`, readable without the lock.
    end: AtomicU64,
    /// The ring holds the last `capacity` events, so its start is always
    /// `end.saturating_sub(capacity)`.
    capacity: u64,
    /// Readers that found nothing new, by connection id; each publish takes and wakes them.
    parked: Mutex<IdMap<Waker>>,
}

impl Broadcast {
    pub(crate) fn new(capacity: usize) -> Self {
        Broadcast {
            ring: RwLock::new(Ring {
                events: VecDeque::with_capacity(capacity.min(4096)),
                start: 0,
            }),
            end: AtomicU64::new(0),
            capacity: capacity.max(1) as u64,
            parked: Mutex::new(IdMap::default()),
        }
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Ring> {
        self.ring.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    /// The ring's start when its end is `end`, without taking its lock.
    pub(crate) fn start_at(&self, end: u64) -> u64 {
        end.saturating_sub(self.capacity)
    }

    /// Appends an event, dropping the oldest when full; [`wake_parked`](Self::wake_parked)
    /// then tells the readers. Returns the ring's start after the push: readers behind it have lagged.
    pub(crate) fn push(&self, bytes: Bytes) -> u64 {
        let start = {
            let mut ring = self.ring.write().unwrap_or_else(|e| e.into_inner());
            if ring.events.len() as u64 >= self.capacity {
                ring.events.pop_front();
                ring.start += 1;
            }
            ring.events.push_back(bytes);
            self.end.store(ring.end(), Ordering::Release);
            ring.start
        };
        debug_assert_eq!(start, self.start_at(self.end()));
        start
    }

    /// Wakes every parked reader, after a [`push`](Self::push).
    pub(crate) fn wake_parked(&self) {
        // Drained, not taken: the map keeps its capacity, so the readers that park again
        // after this publish do not regrow it under the lock.
        let wakers: Vec<Waker> = lock(&self.parked).drain().map(|(_, w)| w).collect();
        for waker in wakers {
            waker.wake();
        }
    }

    /// Registers `waker` for the next publish. Returns `true` if an event came in
    /// meanwhile, so the caller must read again instead of waiting.
    pub(crate) fn park(&self, id: u64, cursor: u64, waker: &Waker) -> bool {
        {
            let mut parked = lock(&self.parked);
            match parked.get(&id) {
                Some(w) if w.will_wake(waker) => {}
                _ => {
                    parked.insert(id, waker.clone());
                }
            }
        }
        self.end() > cursor
    }

    /// Forgets a reader that went away, so its task is not kept alive by a stale waker.
    pub(crate) fn unpark(&self, id: u64) {
        lock(&self.parked).remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn wakes_parked_readers_once_and_forgets_dropped_ones() {
        let count = std::sync::Arc::new(Count(Default::default()));
        let waker = Waker::from(count.clone());
        let b = Broadcast::new(2);
        assert!(!b.park(1, 0, &waker));
        assert!(!b.park(1, 0, &waker), "parking twice keeps one entry");
        assert!(!b.park(2, 0, &waker));
        b.unpark(2);
        b.push(Bytes::from_static(b"x"));
        b.wake_parked();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        b.push(Bytes::from_static(b"y"));
        b.wake_parked();
        assert_eq!(
            count.0.load(Ordering::Relaxed),
            1,
            "woken readers are forgotten"
        );
        // A reader that parks behind the end is told to read again at once.
        assert!(b.park(1, 0, &waker));
        assert!(lock(&b.parked).len() == 1);
    }

    #[test]
    fn bounded_and_numbered() {
        let b = Broadcast::new(2);
        for i in 0..5u8 {
            b.push(Bytes::from(vec![i]));
        }
        let ring = b.read();
        assert_eq!((ring.start(), ring.end()), (3, 5));
        assert_eq!(ring.get(2), None);
        assert_eq!(ring.get(3).map(|b| b[0]), Some(3));
        assert_eq!(ring.get(4).map(|b| b[0]), Some(4));
        assert_eq!(ring.get(5), None);
    }
}

//! The manager's synchronisation, in one place: poison-free locks, the map keyed by
//! connection id, and the set of parked readers, woken with no lock held.
//!
//! Every other file of the manager takes its locks and atomics from here, so that the
//! lock-free handshakes can be model-checked with `loom`: the `loom/` workspace member
//! compiles this file and `log.rs` with `--cfg tower_sse_loom` (a cfg of our own, since tokio
//! reads `loom`), which swaps these for loom's.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::task::Waker;

#[cfg(tower_sse_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(tower_sse_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

#[cfg(tower_sse_loom)]
use loom::sync as imp;
#[cfg(not(tower_sse_loom))]
use std::sync as imp;

pub(crate) use imp::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};

/// A mutex whose poisoning is ignored: a panic while holding one of the manager's locks
/// cannot leave its data half-updated in a way that matters more than losing the
/// connections, so it is never propagated (tokio's `loom/std/mutex.rs` does the same).
#[derive(Debug, Default)]
pub(crate) struct Mutex<T>(imp::Mutex<T>);

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Mutex(imp::Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A read-write lock whose poisoning is ignored, as [`Mutex`].
#[derive(Debug, Default)]
pub(crate) struct RwLock<T>(imp::RwLock<T>);

impl<T> RwLock<T> {
    pub(crate) fn new(value: T) -> Self {
        RwLock(imp::RwLock::new(value))
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, T> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, T> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Connection ids are unique counters already: hash them with one multiplication.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by connection id.
pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Sets of parked wakers at least this large are kept between wakes, so a busy log does not
/// reallocate its set on every publish; smaller ones are cheaper to allocate than to keep.
const KEEP_SPARE: usize = 32;

/// Readers waiting for something new, by connection id.
///
/// [`wake_all`](Parked::wake_all) swaps the whole set out under the lock (one pointer
/// swap), then wakes every reader with no lock held, so readers can park again at once and a
/// publisher never holds a lock while tokio schedules thousands of tasks. The emptied set is
/// kept as the next spare, so a publish allocates nothing that grows with the number of
/// readers.
#[derive(Debug, Default)]
pub(crate) struct Parked {
    inner: Mutex<ParkedSets>,
    /// How many times the set was swapped out: a reader that parked at generation `g` is
    /// still in the set while this reads `g` (only [`wake_all`](Parked::wake_all) takes
    /// readers out, and it wakes each one it takes), so it need not take the lock to park
    /// again with the same waker.
    generation: AtomicU64,
}

#[derive(Debug, Default)]
struct ParkedSets {
    waiting: IdMap<Waker>,
    spare: Option<IdMap<Waker>>,
}

impl Parked {
    /// Registers `waker` for the next [`wake_all`](Self::wake_all). Returns the generation
    /// it is registered in (see [`generation`](Self::generation)).
    pub(crate) fn park(&self, id: u64, waker: &Waker) -> u64 {
        let mut sets = self.inner.lock();
        match sets.waiting.get(&id) {
            Some(w) if w.will_wake(waker) => {}
            _ => {
                sets.waiting.insert(id, waker.clone());
            }
        }
        self.generation.load(Ordering::Relaxed)
    }

    /// The current generation. A reader that parked in generation `g` and reads `g` here is
    /// still registered, or is being woken by a `wake_all` it did not see yet: either way
    /// it will be woken, so it may skip [`park`](Self::park) if its waker is unchanged.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Forgets a reader that went away, so its task is not kept alive by a stale waker.
    pub(crate) fn unpark(&self, id: u64) {
        let mut sets = self.inner.lock();
        sets.waiting.remove(&id);
        // After a flood has gone, give the memory back.
        let (len, cap) = (sets.waiting.len(), sets.waiting.capacity());
        if cap > 1024 && len * 8 < cap {
            sets.waiting.shrink_to(len * 2);
        }
    }

    /// Wakes every parked reader, with no lock held while waking.
    pub(crate) fn wake_all(&self) {
        let mut taken = {
            let mut sets = self.inner.lock();
            if sets.waiting.is_empty() {
                return;
            }
            let spare = sets.spare.take().unwrap_or_default();
            self.generation.fetch_add(1, Ordering::Release);
            std::mem::replace(&mut sets.waiting, spare)
        };
        let woken = taken.len();
        for (_, waker) in taken.drain() {
            waker.wake();
        }
        if taken.capacity() >= KEEP_SPARE {
            if taken.capacity() > 4 * woken.max(KEEP_SPARE) {
                taken.shrink_to(2 * woken);
            }
            let mut sets = self.inner.lock();
            if sets.spare.is_none() {
                sets.spare = Some(taken);
            }
        }
    }

    /// Readers parked now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().waiting.len()
    }
}

#[cfg(all(test, not(tower_sse_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn counting() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(Default::default()));
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn wakes_each_parked_reader_once_and_forgets_dropped_ones() {
        let (count, waker) = counting();
        let parked = Parked::default();
        parked.park(1, &waker);
        parked.park(1, &waker);
        parked.park(2, &waker);
        assert_eq!(parked.len(), 2, "parking twice keeps one entry");
        parked.unpark(2);
        parked.wake_all();
        assert_eq!(count.0.load(std::sync::atomic::Ordering::Relaxed), 1);
        parked.wake_all();
        assert_eq!(
            count.0.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "woken readers are forgotten"
        );
    }

    #[test]
    fn a_large_set_is_reused_not_reallocated() {
        let (_count, waker) = counting();
        let parked = Parked::default();
        for round in 0..3 {
            for id in 0..1000 {
                parked.park(id, &waker);
            }
            parked.wake_all();
            let sets = parked.inner.lock();
            assert!(sets.waiting.is_empty());
            let spare = sets.spare.as_ref().expect("the emptied set is kept");
            assert!(spare.capacity() >= 1000, "round {round}");
        }
    }
}

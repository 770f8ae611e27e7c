//! Model checks of tower-sse's lock-free handshakes under [loom](https://docs.rs/loom): every
//! interleaving of the threads of a test, within loom's bounds.
//!
//! ```sh
//! RUSTFLAGS="--cfg tower_sse_loom" cargo test -p tower-sse-loom
//! ```
//!
//! - The readers' park/wake handshake of the manager's logs: the real `src/manager/sync.rs`
//!   and `src/manager/log.rs`, compiled here by path against loom's locks and atomics (their
//!   own `loom_tests` module holds the model).
//! - The fence pair of `SseContext` (a token made on demand is cancelled whether it is made
//!   before or after the stream closes): a model of its protocol, in `context_model` below.
//!
//! A separate crate so the check builds only what these files need, not the whole crate's
//! dev-dependencies under another `--cfg`.
#![cfg(tower_sse_loom)]
#![allow(dead_code, unreachable_pub)]

// The manager's files under test, as siblings (`log` uses `super::sync`).
#[allow(unused_imports)]
#[path = "../../src/manager/sync.rs"]
mod sync;

#[path = "../../src/manager/log.rs"]
mod log;

/// The part of `tower_sse::Event` a log touches: its bytes, length and id.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    bytes: bytes::Bytes,
}

impl Event {
    pub(crate) fn message(data: &str) -> Event {
        Event {
            bytes: bytes::Bytes::from(format!("data: {data}\n\n")),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn as_bytes(&self) -> &bytes::Bytes {
        &self.bytes
    }

    pub(crate) fn id_bytes(&self) -> Option<&[u8]> {
        None
    }
}

/// The handshake of `SseContext::cancellation_token` and `SseContext::close`
/// (src/layer/context.rs): the token is made on first use (`OnceLock`: a release store, an
/// acquire load), then a `SeqCst` fence, then the closed flag is read; closing sets the flag,
/// then the fence, then looks for a token. Whichever runs second sees the other, so a token
/// made around the close is always cancelled.
#[cfg(test)]
mod context_model {
    use loom::sync::atomic::{fence, AtomicBool, AtomicU8, Ordering};
    use loom::sync::Arc;
    use loom::thread;

    struct Context {
        /// `OnceLock<CancellationToken>`'s state: the token exists.
        made: AtomicBool,
        /// The token's own flag.
        cancelled: AtomicBool,
        /// `end`: 0 while the stream runs.
        end: AtomicU8,
    }

    impl Context {
        fn cancellation_token(&self) {
            self.made.store(true, Ordering::Release);
            fence(Ordering::SeqCst);
            if self.end.load(Ordering::Relaxed) != 0 {
                self.cancelled.store(true, Ordering::Relaxed);
            }
        }

        fn close(&self) {
            if self
                .end
                .compare_exchange(0, 6, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return;
            }
            fence(Ordering::SeqCst);
            if self.made.load(Ordering::Acquire) {
                self.cancelled.store(true, Ordering::Relaxed);
            }
        }
    }

    #[test]
    fn a_token_made_around_the_close_is_cancelled() {
        loom::model(|| {
            let ctx = Arc::new(Context {
                made: AtomicBool::new(false),
                cancelled: AtomicBool::new(false),
                end: AtomicU8::new(0),
            });
            let closer = {
                let ctx = ctx.clone();
                thread::spawn(move || ctx.close())
            };
            ctx.cancellation_token();
            closer.join().unwrap();
            assert!(
                ctx.cancelled.load(Ordering::Relaxed),
                "a live token after close"
            );
        });
    }
}

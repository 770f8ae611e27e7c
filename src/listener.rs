//! A TCP listener that makes sockets go away: a write-stall guard and a connection cap.
//!
//! An event stream whose client stops reading cannot end by itself: the manager may close it
//! as a slow consumer, but the end of the response can never be written, so hyper keeps the
//! connection, its socket and its write buffer (up to about 400 KiB) for as long as the client
//! stays. [`GuardedListener`] wraps each accepted connection's IO in a [`GuardedStream`] that
//! returns an error once a write has made no progress for the [stall
//! timeout](GuardedListener::stall_timeout) (Mercure's `write_timeout`): hyper then drops the
//! connection and everything it holds. Idle streams are not affected: the clock runs only
//! while a write is pending.
//!
//! Past the [connection cap](GuardedListener::max_connections), a new connection is answered
//! `503 Service Unavailable` with `Retry-After` and closed, so the process never reaches its
//! descriptor limit and stays reachable.
//!
//! It works with `axum::serve` (with the `axum` feature it implements axum's
//! `serve::Listener`) and with hyper-util (call [`GuardedListener::accept`] in your loop and
//! wrap the stream in `TokioIo`).
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "axum")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use std::time::Duration;
//!
//! use axum::{routing::get, Router};
//! use tower_sse::listener::GuardedListener;
//! use tower_sse::{Event, SseLayer};
//!
//! async fn events() -> impl axum::response::IntoResponse {
//!     tower_sse::response(futures_util::stream::iter([Event::message("hello")]))
//! }
//!
//! let app = Router::new().route("/events", get(events)).layer(SseLayer::new());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let listener = GuardedListener::new(listener)
//!     // A connection whose writes make no progress for 30 s is aborted.
//!     .stall_timeout(Duration::from_secs(30))
//!     // Keep this well below `ulimit -n`: each connection is a file descriptor.
//!     .max_connections(10_000);
//! # let shutdown = async {};
//! axum::serve(listener, app)
//!     .with_graceful_shutdown(shutdown)
//!     .await?;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "axum"))]
//! # fn main() {}
//! ```
//!
//! With hyper-util, the accept loop is yours (`examples/production.rs` has the whole setup):
//!
//! ```no_run
//! # async fn run(app: axum::Router) -> std::io::Result<()> {
//! use hyper_util::rt::{TokioExecutor, TokioIo};
//! use hyper_util::service::TowerToHyperService;
//! use tower_sse::listener::GuardedListener;
//!
//! let listener = GuardedListener::bind("127.0.0.1:3000").await?.max_connections(10_000);
//! loop {
//!     let (stream, _peer) = match listener.accept().await {
//!         Ok(accepted) => accepted,
//!         Err(_) => continue, // see `accept` for what may fail
//!     };
//!     let service = TowerToHyperService::new(app.clone());
//!     tokio::spawn(async move {
//!         let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
//!         let _ = builder.serve_connection(TokioIo::new(stream), service).await;
//!     });
//! }
//! # }
//! ```
//!
//! # Choosing the cap
//!
//! The cap counts every connection, whatever its route. When event streams are also capped
//! elsewhere (by the manager), set the listener's cap above that one, so that at the stream
//! cap other routes (`/stats`, `/publish`) still answer. The listener's cap is the last bound
//! before the descriptor limit: a refused connection holds its descriptor for at most one
//! second, and at most 64 are held at once; past that, new connections are closed unanswered.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::time::{Instant, Sleep};

/// The default [stall timeout](GuardedListener::stall_timeout): 30 seconds.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The default [`Retry-After`](GuardedListener::retry_after) of a refusal: 5 seconds.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// How many refused connections may be answered at once; past that they are closed at once.
const MAX_REFUSING: usize = 64;

/// How long a refused connection is kept to deliver its `503` before it is closed.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// A TCP listener whose connections are aborted when their writes stall, and which refuses
/// connections past a cap with `503`. See the [module docs](crate::listener).
///
/// One listener owns the socket. The counts it reports are shared with the
/// [`GuardedStream`]s it returned, which give their place back when dropped.
#[must_use = "a GuardedListener does nothing until it accepts connections"]
pub struct GuardedListener {
    listener: TcpListener,
    config: Config,
    counts: Arc<Counts>,
}

#[derive(Debug, Clone, Copy)]
struct Config {
    stall_timeout: Option<Duration>,
    max_connections: usize,
    retry_after: Duration,
    nodelay: bool,
}

/// What the listener shares with its streams and refusal tasks.
#[derive(Debug, Default)]
struct Counts {
    open: AtomicUsize,
    refusing: AtomicUsize,
    refused: AtomicU64,
    stalled: AtomicU64,
}

impl GuardedListener {
    /// Wraps a bound listener, with the [default stall timeout](DEFAULT_STALL_TIMEOUT) and
    /// no connection cap.
    pub fn new(listener: TcpListener) -> Self {
        GuardedListener {
            listener,
            config: Config {
                stall_timeout: Some(DEFAULT_STALL_TIMEOUT),
                max_connections: usize::MAX,
                retry_after: DEFAULT_RETRY_AFTER,
                nodelay: false,
            },
            counts: Arc::default(),
        }
    }

    /// Binds a TCP listener to `addr` and wraps it, as [`new`](Self::new) does.
    ///
    /// # Errors
    ///
    /// Those of [`TcpListener::bind`].
    pub async fn bind(addr: impl ToSocketAddrs) -> io::Result<Self> {
        Ok(Self::new(TcpListener::bind(addr).await?))
    }

    /// Aborts a connection once one of its writes has been pending (the client reads nothing)
    /// for `timeout`: the stream's `poll_write` or `poll_flush` then returns an error of kind
    /// [`io::ErrorKind::TimedOut`], and hyper drops the connection with its buffers. Any
    /// progress (a single byte written) restarts the clock. Default: 30 s. Applies to
    /// connections accepted afterwards.
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.config.stall_timeout = Some(timeout);
        self
    }

    /// Never aborts a stalled connection (the stall guard off; the cap still applies).
    pub fn disable_stall_timeout(mut self) -> Self {
        self.config.stall_timeout = None;
        self
    }

    /// Refuses connections past `max` open ones: each is answered
    /// `503 Service Unavailable` with [`Retry-After`](Self::retry_after) and closed. A
    /// connection counts until its [`GuardedStream`] is dropped. Default: no cap.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.config.max_connections = max;
        self
    }

    /// The `Retry-After` of a refusal, in whole seconds (at least 1). Default: 5 s.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.config.retry_after = after;
        self
    }

    /// Sets `TCP_NODELAY` on every accepted connection, so small events are sent at once
    /// instead of waiting for the previous segment's acknowledgement. Default: off, as for
    /// [`TcpStream`].
    pub fn tcp_nodelay(mut self, nodelay: bool) -> Self {
        self.config.nodelay = nodelay;
        self
    }

    /// Accepts the next connection under the cap, wrapped in the stall guard. Connections
    /// past the cap are refused here (answered `503` by a short-lived task, closed) and never
    /// returned.
    ///
    /// # Errors
    ///
    /// Those of [`TcpListener::accept`]. `EMFILE`/`ENFILE` (out of file descriptors) is the
    /// one to expect under load without a cap: wait a little before accepting again.
    /// Errors of a refused connection are not reported.
    ///
    /// # Cancellation safety
    ///
    /// Cancel-safe, like [`TcpListener::accept`]: if the future is dropped, no connection is
    /// lost.
    pub async fn accept(&self) -> io::Result<(GuardedStream, SocketAddr)> {
        loop {
            let (stream, peer) = self.listener.accept().await?;
            if let Some(slot) = Slot::take(&self.counts, self.config.max_connections) {
                if self.config.nodelay {
                    // Best effort: the connection works without it.
                    let _ = stream.set_nodelay(true);
                }
                let stream = GuardedStream::with_io(stream, slot, self.config.stall_timeout);
                return Ok((stream, peer));
            }
            self.refuse(stream);
        }
    }

    /// Answers a connection past the cap with `503` and closes it, without waiting.
    fn refuse(&self, stream: TcpStream) {
        let counts = &self.counts;
        counts.refused.fetch_add(1, Ordering::Relaxed);
        if counts.refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
            counts.refusing.fetch_sub(1, Ordering::AcqRel);
            return; // dropped: closed unanswered
        }
        let counts = Arc::clone(counts);
        let retry_after = self.config.retry_after;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REFUSAL_LINGER, answer_503(stream, retry_after)).await;
            counts.refusing.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// The local address the listener is bound to.
    ///
    /// # Errors
    ///
    /// Those of [`TcpListener::local_addr`].
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The listener's counts, readable after the listener has moved into a server loop
    /// (`axum::serve` takes it by value), for a `/stats` route or a metrics exporter.
    pub fn stats(&self) -> ListenerStats {
        ListenerStats(Arc::clone(&self.counts))
    }

    /// The wrapped listener.
    pub fn get_ref(&self) -> &TcpListener {
        &self.listener
    }
}

impl fmt::Debug for GuardedListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedListener")
            .field("listener", &self.listener)
            .field("stall_timeout", &self.config.stall_timeout)
            .field("max_connections", &self.config.max_connections)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// A [`GuardedListener`]'s counts, shared with it: cloning is cheap and every clone reads the
/// same live figures.
#[derive(Clone)]
pub struct ListenerStats(Arc<Counts>);

impl ListenerStats {
    /// Connections accepted and not yet dropped.
    pub fn open(&self) -> usize {
        self.0.open.load(Ordering::Relaxed)
    }

    /// Connections refused past the cap so far.
    pub fn refused(&self) -> u64 {
        self.0.refused.load(Ordering::Relaxed)
    }

    /// Connections whose writes stalled past the timeout so far (each was aborted).
    pub fn stalled(&self) -> u64 {
        self.0.stalled.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for ListenerStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerStats")
            .field("open", &self.open())
            .field("refused", &self.refused())
            .field("stalled", &self.stalled())
            .finish()
    }
}

/// Writes the refusal, then reads (and discards) what the client sends until it closes, so
/// that closing does not reset the connection before the client has read the answer.
async fn answer_503(mut stream: TcpStream, retry_after: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let body = "connection limit reached, retry later\n";
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         retry-after: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        retry_after.as_secs().max(1),
        body.len()
    );
    if stream.write_all(response.as_bytes()).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    // Bounded by the caller's timeout; at most 64 KiB read.
    for _ in 0..64 {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// One open connection's place under the cap, given back on drop.
#[derive(Debug)]
struct Slot(Arc<Counts>);

impl Slot {
    /// Takes a place under the cap of `max`, if one is free.
    fn take(counts: &Arc<Counts>, max: usize) -> Option<Slot> {
        counts
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()?;
        Some(Slot(Arc::clone(counts)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection accepted by a [`GuardedListener`]: the TCP stream, whose writes fail with
/// [`io::ErrorKind::TimedOut`] once they have made no progress for the stall timeout.
/// Dropping it frees its place under the cap.
///
/// It implements tokio's [`AsyncRead`] and [`AsyncWrite`]; wrap it in hyper-util's `TokioIo`
/// for hyper.
pub struct GuardedStream<S = TcpStream> {
    io: S,
    stall: Stall,
    _slot: Slot,
}

impl GuardedStream {
    /// The peer's address.
    ///
    /// # Errors
    ///
    /// Those of [`TcpStream::peer_addr`].
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.io.peer_addr()
    }
}

impl<S> GuardedStream<S> {
    fn with_io(io: S, slot: Slot, stall_timeout: Option<Duration>) -> Self {
        GuardedStream {
            io,
            stall: Stall {
                timeout: stall_timeout,
                sleep: None,
                armed: false,
                expired: false,
            },
            _slot: slot,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The wrapped stream. Writing to it directly bypasses the stall guard.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }
}

impl<S: fmt::Debug> fmt::Debug for GuardedStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedStream")
            .field("io", &self.io)
            .field("stall_timeout", &self.stall.timeout)
            .field("stalled", &self.stall.armed)
            .finish()
    }
}

/// The stall clock: armed by the first pending write, disarmed by any progress.
struct Stall {
    timeout: Option<Duration>,
    /// Allocated on the first stall only, then reset: a connection that never stalls pays
    /// nothing for the guard but this pointer.
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// The clock ran out (the stall is counted once).
    expired: bool,
}

impl Stall {
    fn progress(&mut self) {
        // The sleep stays registered; should it fire, it wakes the task once for nothing.
        self.armed = false;
        self.expired = false;
    }

    /// A write is pending: start the clock if it is not running, and fail once it ran out.
    fn pending(&mut self, cx: &mut Context<'_>, stalled: &AtomicU64) -> Poll<io::Error> {
        let Some(timeout) = self.timeout else {
            return Poll::Pending;
        };
        if !self.armed {
            self.armed = true;
            let deadline = Instant::now() + timeout;
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let Some(sleep) = &mut self.sleep else {
            return Poll::Pending;
        };
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                // The clock stays run out, so later polls fail the same way; counted once.
                if !self.expired {
                    self.expired = true;
                    stalled.fetch_add(1, Ordering::Relaxed);
                }
                Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("write made no progress for {timeout:?}: connection aborted"),
                ))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S> GuardedStream<S> {
    /// Runs one write-side poll under the stall clock.
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut S, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match poll(&mut self.io, cx) {
            Poll::Ready(result) => {
                self.stall.progress();
                Poll::Ready(result)
            }
            Poll::Pending => self.stall.pending(cx, &self._slot.0.stalled).map(Err),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .guard(cx, |io, cx| Pin::new(io).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .guard(cx, |io, cx| Pin::new(io).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .guard(cx, |io, cx| Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .guard(cx, |io, cx| Pin::new(io).poll_shutdown(cx))
    }
}

/// `axum::serve` accepts through this: connections past the cap are refused, and accept
/// errors are retried (connection errors at once, others after a second, as axum does for
/// a plain `TcpListener`).
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum::serve::Listener for GuardedListener {
    type Io = GuardedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match GuardedListener::accept(self).await {
                Ok(accepted) => return accepted,
                Err(e) if is_connection_error(&e) => {}
                // Out of descriptors, most likely: give connections time to close.
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        GuardedListener::local_addr(self)
    }
}

#[cfg(feature = "axum")]
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A guarded end of an in-memory pipe with a 64-byte buffer, and the other end.
    fn pipe(
        stall: Option<Duration>,
    ) -> (
        GuardedStream<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        Arc<Counts>,
    ) {
        let counts = Arc::<Counts>::default();
        let (ours, theirs) = tokio::io::duplex(64);
        let slot = Slot::take(&counts, 8).unwrap();
        (GuardedStream::with_io(ours, slot, stall), theirs, counts)
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_stalls_fails_after_the_timeout() {
        let (mut guarded, _reader, shared) = pipe(Some(Duration::from_secs(5)));
        let start = Instant::now();
        let err = loop {
            if let Err(e) = guarded.write_all(&[b'x'; 64]).await {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(shared.stalled.load(Ordering::Relaxed), 1);
        // It stays failed, and is counted once.
        assert!(guarded.write(b"x").await.is_err());
        assert!(guarded.flush().await.is_ok()); // a pipe's flush never pends
        assert_eq!(shared.stalled.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_restarts_the_clock() {
        let (mut guarded, mut reader, _shared) = pipe(Some(Duration::from_secs(5)));
        let drain = tokio::spawn(async move {
            // A slow reader: 16 bytes every 3 s, always within the 5 s timeout.
            let mut buf = [0u8; 16];
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                if reader.read_exact(&mut buf).await.is_err() {
                    break;
                }
            }
            reader
        });
        // 640 bytes through a 64-byte pipe at 16 bytes per 3 s: two minutes of stalls.
        for _ in 0..10 {
            guarded.write_all(&[b'x'; 64]).await.unwrap();
        }
        drop(guarded);
        let _ = drain.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn no_timeout_never_fails() {
        let (mut guarded, _reader, _shared) = pipe(None);
        guarded.write_all(&[b'x'; 64]).await.unwrap();
        let write = tokio::time::timeout(Duration::from_secs(3600), guarded.write_all(b"x"));
        assert!(write.await.is_err(), "the write must still be pending");
    }

    #[test]
    fn slots_count_and_cap() {
        let counts = Arc::<Counts>::default();
        let a = Slot::take(&counts, 2).unwrap();
        let b = Slot::take(&counts, 2).unwrap();
        assert!(Slot::take(&counts, 2).is_none());
        assert_eq!(counts.open.load(Ordering::Relaxed), 2);
        drop(a);
        let c = Slot::take(&counts, 2).unwrap();
        drop((b, c));
        assert_eq!(counts.open.load(Ordering::Relaxed), 0);
    }
}

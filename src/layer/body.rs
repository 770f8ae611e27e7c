use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::boundary::BoundaryTracker;
use super::retry::RetryPlacement;
use super::{Config, SseContext, StreamEnd};

pin_project! {
    /// Response body of [`Sse`](super::Sse): the inner body untouched, or, for an event
    /// stream, the inner body with heartbeats, timeouts and cancellation.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        // Not an event stream: frames are forwarded as they are.
        PassThrough {
            #[pin]
            inner: B,
        },
        // Fields drop in order: the inner body first, then the state, whose drop records
        // `ClientGone` if nothing ended the stream before. So an inner body reading the end
        // reason in its own `Drop` sees the layer's reason, or none if the client left.
        Stream {
            #[pin]
            inner: B,
            // Boxed so that pass-through bodies stay small.
            state: Pin<Box<StreamState>>,
        },
        // The `204 No Content` for a reconnect to a finished stream.
        Empty,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn pass_through(inner: B) -> Self {
        ResponseBody {
            kind: Kind::PassThrough { inner },
        }
    }

    pub(crate) fn stream(inner: B, config: Arc<Config>, context: SseContext) -> Self {
        ResponseBody {
            kind: Kind::Stream {
                inner,
                state: Box::pin(StreamState::new(config, context)),
            },
        }
    }

    pub(crate) fn empty() -> Self {
        ResponseBody { kind: Kind::Empty }
    }

    /// Whether the response was recognised as an event stream.
    pub fn is_event_stream(&self) -> bool {
        matches!(self.kind, Kind::Stream { .. })
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ResponseBody");
        d.field("inner", &std::any::type_name::<B>());
        match &self.kind {
            Kind::Stream { state, .. } => d.field("phase", &state.phase),
            Kind::Empty => d.field("empty", &true),
            Kind::PassThrough { .. } => &mut d,
        };
        d.finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// Ended: write the `next` frame (the farewell), then end.
    Closing,
    Done,
}

pin_project! {
    #[project = TimerProj]
    enum Timer {
        Off,
        On { #[pin] sleep: Sleep },
    }
}

pin_project! {
    /// A token an event stream watches, and the future that wakes the stream when it is
    /// cancelled.
    struct Watch {
        #[pin]
        cancelled: WaitForCancellationFutureOwned,
        // Checked directly while frames flow; `cancelled` registers the waker only when the
        // stream is about to wait. Never shared between streams: checking it takes its lock.
        token: CancellationToken,
        // The stream's own token (else a child of the layer's shutdown token).
        own: bool,
    }
}

impl Watch {
    fn new(token: CancellationToken, own: bool) -> Pin<Box<Self>> {
        Box::pin(Watch {
            cancelled: token.clone().cancelled_owned(),
            token,
            own,
        })
    }

    /// What a stream watches from the start: its own token if the handler took it, else a
    /// child of the layer's shutdown token (the shutdown token itself is shared by every
    /// stream, and checking it per frame would contend on its lock).
    fn for_context(context: &SseContext) -> Option<Pin<Box<Self>>> {
        match context.token_if_created() {
            Some(own) => Some(Watch::new(own.clone(), true)),
            None => context
                .shutdown_token()
                .map(|root| Watch::new(root.child_token(), false)),
        }
    }
}

pin_project! {
    /// Everything an event stream needs besides its inner body, in one allocation.
    pub(crate) struct StreamState {
        config: Arc<Config>,
        #[pin]
        timer: Timer,
        // Only when there is a token to watch: the handler took the stream's own, or the
        // layer has a shutdown token. Most streams without either carry nothing.
        watch: Option<Pin<Box<Watch>>>,
        // Closed when the stream ends, which cancels the stream's token if a handler took
        // it, so whatever produces its events learns at once that nobody listens.
        context: SseContext,
        boundary: BoundaryTracker,
        // Where the `retry:` line goes, while it has not gone yet (only with `retry` set).
        retry: Option<RetryPlacement>,
        phase: Phase,
        // The one frame to write before anything else: the initial event, a heartbeat, or
        // (while `Closing`) the farewell.
        next: Option<Bytes>,
        // Read from the clock at each data frame (one `Instant::now()`, about 25-85 ns), so
        // heartbeats and the idle timeout count from the frame itself, whoever polls the body.
        last_frame: Instant,
        last_data: Instant,
        end_at: Option<Instant>,
        // The span current when the stream started (the request's, under a trace layer);
        // nothing without the `tracing` feature.
        span: crate::telemetry::Span,
    }

    impl PinnedDrop for StreamState {
        fn drop(this: Pin<&mut Self>) {
            // A no-op if the stream ended before: the first reason wins.
            this.context.close(StreamEnd::ClientGone);
            #[cfg(any(feature = "metrics", feature = "tracing"))]
            this.report_end();
        }
    }
}

/// What the stream does next, before it asks the inner body.
enum Control {
    Write(Bytes),
    End,
    PollInner,
}

impl StreamState {
    fn new(config: Arc<Config>, context: SseContext) -> Self {
        let now = Instant::now();
        let end_at = config
            .max_lifetime
            .map(|lifetime| now + lifetime.saturating_sub(jitter(config.lifetime_jitter)));
        let mut state = StreamState {
            next: config.initial.clone(),
            retry: config
                .retry_line
                .as_ref()
                .map(|_| RetryPlacement::default()),
            timer: Timer::Off,
            watch: Watch::for_context(&context),
            context,
            boundary: BoundaryTracker::default(),
            phase: Phase::Open,
            last_frame: now,
            last_data: now,
            end_at,
            span: crate::telemetry::current_span(),
            config,
        };
        #[cfg(feature = "metrics")]
        state.config.meters.streams.increment(1);
        // Set to the first deadline; frames only move deadlines later, and the timer is
        // re-armed when it fires early.
        if let Some(deadline) = state.next_deadline() {
            state.timer = Timer::On {
                sleep: tokio::time::sleep_until(deadline),
            };
        }
        state
    }

    /// The earliest instant at which the timer has something to do.
    fn next_deadline(&self) -> Option<Instant> {
        let at_boundary = self.boundary.at_boundary();
        let heartbeat = self
            .config
            .heartbeat_interval
            .filter(|_| at_boundary)
            .map(|i| self.last_frame + i);
        let idle = self.config.idle_timeout.map(|t| self.last_data + t);
        // The lifetime ends only at a boundary; mid-event it waits for the event to finish.
        let lifetime = self.end_at.filter(|_| at_boundary);
        [heartbeat, idle, lifetime].into_iter().flatten().min()
    }
}

/// A random duration in `[0, max]`, from a per-process random seed and a counter.
fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    if max.is_zero() {
        return Duration::ZERO;
    }
    static SEED: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = SEED.get_or_init(Default::default).build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = max.as_nanos().min(u64::MAX as u128) as u64;
    Duration::from_nanos(hasher.finish() % (nanos.saturating_add(1)).max(1))
}

fn into_bytes<D: Buf>(mut data: D) -> Bytes {
    // Zero-copy for `Bytes`, one copy for other buffers.
    data.copy_to_bytes(data.remaining())
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::PassThrough { inner } => inner
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map(|frame| frame.map_data(into_bytes)))),
            KindProj::Stream { inner, state } => poll_stream(inner, state.as_mut(), cx),
            KindProj::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::PassThrough { inner } => inner.is_end_stream(),
            Kind::Stream { state, .. } => state.phase == Phase::Done,
            Kind::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::PassThrough { inner } => inner.size_hint(),
            // Heartbeats and farewells make the length unknowable.
            Kind::Stream { .. } => SizeHint::default(),
            Kind::Empty => SizeHint::with_exact(0),
        }
    }
}

/// An event stream's frames: what the layer has to write first, else the inner body's next
/// frame, else a wait on the inner body, the watched token and the timer together.
fn poll_stream<B: Body>(
    mut inner: Pin<&mut B>,
    mut state: Pin<&mut StreamState>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
    loop {
        match state.as_mut().control() {
            Control::Write(bytes) => return Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Control::End => return Poll::Ready(None),
            Control::PollInner => {}
        }
        if let Poll::Ready(frame) = poll_inner(inner.as_mut(), state.as_mut(), cx) {
            return Poll::Ready(frame);
        }
        // The inner body is waiting: so is the stream, unless the token or the timer has
        // something for it now.
        ready!(state.as_mut().poll_wake(cx));
    }
}

/// The inner body's next frame, noted by the state; the stream's end when it ends or fails.
fn poll_inner<B: Body>(
    inner: Pin<&mut B>,
    mut state: Pin<&mut StreamState>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
    let frame = match ready!(inner.poll_frame(cx)) {
        Some(Ok(frame)) => frame.map_data(into_bytes),
        Some(Err(e)) => {
            state.as_mut().end(StreamEnd::Error);
            return Poll::Ready(Some(Err(e)));
        }
        None => {
            state.as_mut().end(StreamEnd::Completed);
            return Poll::Ready(None);
        }
    };
    match frame.into_data() {
        Ok(data) => Poll::Ready(Some(Ok(Frame::data(state.on_data(data))))),
        Err(frame) => Poll::Ready(Some(Ok(frame))),
    }
}

impl StreamState {
    /// The layer's own next step: a queued frame, the end, or the end decided now because the
    /// watched token was cancelled.
    fn control(mut self: Pin<&mut Self>) -> Control {
        loop {
            let this = self.as_mut().project();
            match *this.phase {
                Phase::Done => return Control::End,
                Phase::Closing => {
                    *this.phase = Phase::Done;
                    return this.next.take().map_or(Control::End, Control::Write);
                }
                Phase::Open => {}
            }
            if let Some(bytes) = this.next.take() {
                return Control::Write(bytes);
            }
            self.as_mut().watch_own_token();
            match self.cancelled() {
                Some(why) => self.as_mut().end(why),
                None => return Control::PollInner,
            }
        }
    }

    /// Registers the stream's wake-ups (the watched token, the timer) and handles what is due
    /// now: `Ready` when something changed, `Pending` when there is nothing to do but wait.
    fn poll_wake(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.as_mut().project();
        if let Some(watch) = this.watch {
            if watch.as_mut().project().cancelled.poll(cx).is_ready() {
                // `control` sees it and ends the stream.
                return Poll::Ready(());
            }
        }
        let Some(deadline) = self.next_deadline() else {
            return Poll::Pending;
        };
        let this = self.as_mut().project();
        let TimerProj::On { mut sleep } = this.timer.project() else {
            return Poll::Pending;
        };
        // Frames only move deadlines later, so the timer is re-armed lazily: when it fired
        // early, or when something needs it sooner. A frame costs a clock read, not a reset.
        if deadline < sleep.deadline() || sleep.is_elapsed() {
            sleep.as_mut().reset(deadline);
        }
        ready!(sleep.poll(cx));
        self.on_timer(Instant::now());
        // A heartbeat queued, the stream ended, or only re-arm: `control` and the next
        // `poll_wake` tell.
        Poll::Ready(())
    }

    /// The timer fired at `now`: end the stream or queue a heartbeat, whichever is due.
    fn on_timer(self: Pin<&mut Self>, now: Instant) {
        let at_boundary = self.boundary.at_boundary();
        let config = &self.config;
        if config
            .idle_timeout
            .is_some_and(|t| self.last_data + t <= now)
        {
            return self.end(StreamEnd::IdleTimeout);
        }
        if at_boundary && self.end_at.is_some_and(|end| end <= now) {
            return self.end(StreamEnd::Lifetime);
        }
        let heartbeat_due = config
            .heartbeat_interval
            .is_some_and(|i| self.last_frame + i <= now);
        if heartbeat_due && at_boundary {
            let this = self.project();
            *this.last_frame = now;
            *this.next = Some(this.config.heartbeat.clone());
            #[cfg(feature = "metrics")]
            this.config.meters.heartbeats.increment(1);
            #[cfg(feature = "tracing")]
            tracing::trace!(parent: &*this.span, "heartbeat");
        }
    }

    /// The stream is over: counts how it ended, and logs it.
    #[cfg(any(feature = "metrics", feature = "tracing"))]
    fn report_end(&self) {
        let Some(why) = self.context.end_reason() else {
            return;
        };
        #[cfg(feature = "metrics")]
        self.config.meters.ended(why);
        #[cfg(feature = "tracing")]
        tracing::debug!(parent: &self.span, reason = %why, "event stream ended");
    }

    /// Ends the stream for `why`: records it at once (so producers stop, and an inner body
    /// dropped from now on reads it), then writes the farewell set for it, if there is one
    /// and we are between events.
    fn end(self: Pin<&mut Self>, why: StreamEnd) {
        let this = self.project();
        this.context.close(why);
        *this.next = this
            .config
            .farewell(why)
            .filter(|_| this.boundary.at_boundary())
            .cloned();
        *this.phase = match this.next {
            Some(_) => Phase::Closing,
            None => Phase::Done,
        };
    }

    /// Starts watching the stream's own token if a handler took it since the stream started
    /// (one atomic load when none did).
    fn watch_own_token(self: Pin<&mut Self>) {
        let this = self.project();
        if !this.watch.as_ref().is_some_and(|w| w.own) {
            if let Some(token) = this.context.token_if_created() {
                *this.watch = Some(Watch::new(token.clone(), true));
            }
        }
    }

    /// Why the watched token ends the stream, if it is cancelled.
    fn cancelled(&self) -> Option<StreamEnd> {
        let watch = self.watch.as_ref().filter(|w| w.token.is_cancelled())?;
        // The stream's own token is a child of the shutdown token: tell the two apart.
        let shutdown = !watch.own
            || self
                .context
                .shutdown_token()
                .is_some_and(|t| t.is_cancelled());
        Some(if shutdown {
            StreamEnd::Shutdown
        } else {
            StreamEnd::Cancelled
        })
    }

    /// Notes a data frame from the inner body (where it leaves us, and when it came), and
    /// hands it on, with the `retry:` line in it if this is where that goes.
    fn on_data(mut self: Pin<&mut Self>, data: Bytes) -> Bytes {
        if data.is_empty() {
            return data;
        }
        let this = self.as_mut().project();
        let data = match this.retry {
            Some(placement) => match (placement.feed(&data), &this.config.retry_line) {
                (Some(at), Some(line)) => {
                    *this.retry = None;
                    with_line_at(&data, at, line)
                }
                _ => data,
            },
            None => data,
        };
        this.boundary.update(&data);
        // No timer: no heartbeat, idle timeout or lifetime to count from this frame.
        if matches!(*this.timer, Timer::Off) {
            return data;
        }
        let now = Instant::now();
        *this.last_frame = now;
        *this.last_data = now;
        // A busy body may never be pending, so the timer alone cannot end its lifetime:
        // check it here too, and end after this frame if it closes an event.
        if this.boundary.at_boundary() && this.end_at.is_some_and(|end| end <= now) {
            self.end(StreamEnd::Lifetime);
        }
        data
    }
}

/// `data` with `line` put in at offset `at`: one copy, once per stream.
fn with_line_at(data: &Bytes, at: usize, line: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + line.len());
    out.extend_from_slice(&data[..at]);
    out.extend_from_slice(line);
    out.extend_from_slice(&data[at..]);
    out.freeze()
}

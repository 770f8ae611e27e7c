use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::boundary::BoundaryTracker;
use super::context::StreamEnd;
use super::{Config, SseContext};

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
        Stream {
            #[pin]
            inner: B,
            // Boxed so that pass-through bodies stay small.
            state: Pin<Box<StreamState>>,
        },
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

    /// Whether the response was recognised as an event stream.
    pub fn is_event_stream(&self) -> bool {
        matches!(self.kind, Kind::Stream { .. })
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ResponseBody");
        d.field("inner", &std::any::type_name::<B>());
        if let Kind::Stream { state, .. } = &self.kind {
            d.field("phase", &state.phase);
        }
        d.finish()
    }
}

#[derive(Debug)]
enum Phase {
    Open,
    /// Write this farewell, then end.
    Closing(Bytes),
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
        // Closed when the state goes away, which cancels the stream's token if a handler
        // took it, so whatever produces its events learns at once that nobody listens.
        context: SseContext,
        boundary: BoundaryTracker,
        phase: Phase,
        // A frame to write before anything else: the initial event, a heartbeat, a farewell.
        queued: Option<Bytes>,
        // Read from the clock at each data frame (one `Instant::now()`, about 25-85 ns), so
        // heartbeats and the idle timeout count from the frame itself, whoever polls the body.
        last_frame: Instant,
        last_data: Instant,
        end_at: Option<Instant>,
    }

    impl PinnedDrop for StreamState {
        fn drop(this: Pin<&mut Self>) {
            this.context.close();
        }
    }
}

impl StreamState {
    fn new(config: Arc<Config>, context: SseContext) -> Self {
        let now = Instant::now();
        let end_at = config
            .max_lifetime
            .map(|lifetime| now + lifetime.saturating_sub(jitter(config.lifetime_jitter)));
        let mut state = StreamState {
            queued: config.initial.clone(),
            timer: Timer::Off,
            watch: Watch::for_context(&context),
            context,
            boundary: BoundaryTracker::default(),
            phase: Phase::Open,
            last_frame: now,
            last_data: now,
            end_at,
            config,
        };
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::PassThrough { inner } => inner.is_end_stream(),
            Kind::Stream { state, .. } => matches!(state.phase, Phase::Done),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::PassThrough { inner } => inner.size_hint(),
            // Heartbeats and farewells make the length unknowable.
            Kind::Stream { .. } => SizeHint::default(),
        }
    }
}

fn poll_stream<B: Body>(
    mut inner: Pin<&mut B>,
    mut state: Pin<&mut StreamState>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
    loop {
        let this = state.as_mut().project();
        match this.phase {
            Phase::Done => return Poll::Ready(None),
            Phase::Closing(farewell) => {
                let farewell = std::mem::take(farewell);
                state.as_mut().finish(None);
                return Poll::Ready(Some(Ok(Frame::data(farewell))));
            }
            Phase::Open => {}
        }
        if let Some(bytes) = this.queued.take() {
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        if state.as_mut().is_cancelled() {
            state.as_mut().cancel();
            continue;
        }
        match inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = frame.map_data(into_bytes);
                if let Some(data) = frame.data_ref() {
                    state.as_mut().record(data);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => {
                state.as_mut().finish(None);
                return Poll::Ready(Some(Err(e)));
            }
            Poll::Ready(None) => {
                state.as_mut().finish(None);
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        // About to wait: register every other wake-up source.
        let this = state.as_mut().project();
        if let Some(watch) = this.watch {
            if watch.as_mut().project().cancelled.poll(cx).is_ready() {
                state.as_mut().cancel();
                continue;
            }
        }
        let Some(deadline) = state.as_ref().get_ref().next_deadline() else {
            return Poll::Pending;
        };
        let this = state.as_mut().project();
        let TimerProj::On { mut sleep } = this.timer.project() else {
            return Poll::Pending;
        };
        // Frames only move deadlines later, so the timer is re-armed lazily: when it fired
        // early, or when something needs it sooner. A frame costs a clock read, not a reset.
        if deadline < sleep.deadline() || sleep.is_elapsed() {
            sleep.as_mut().reset(deadline);
        }
        if sleep.poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Something is due now.
        let st = state.as_mut().project();
        let now = Instant::now();
        let at_boundary = st.boundary.at_boundary();
        if st
            .config
            .idle_timeout
            .is_some_and(|t| *st.last_data + t <= now)
        {
            state.as_mut().finish(Some(StreamEnd::IdleTimeout));
            return Poll::Ready(None);
        }
        if at_boundary && st.end_at.is_some_and(|end| end <= now) {
            state.as_mut().finish(Some(StreamEnd::Lifetime));
            return Poll::Ready(None);
        }
        let heartbeat_due = st
            .config
            .heartbeat_interval
            .is_some_and(|i| *st.last_frame + i <= now);
        if heartbeat_due && at_boundary {
            *st.last_frame = now;
            *st.queued = Some(st.config.heartbeat.clone());
        }
        // Loop: write the heartbeat, or re-arm the timer for the next deadline.
    }
}

impl StreamState {
    /// Ends the stream: records why (for the connection manager) and cancels the stream's
    /// token at once, so producers stop even before the server drops the body.
    fn finish(self: Pin<&mut Self>, why: Option<StreamEnd>) {
        let this = self.project();
        if let Some(why) = why {
            this.context.set_end(why);
        }
        *this.phase = Phase::Done;
        *this.queued = None;
        this.context.close();
    }

    /// Whether the watched token is cancelled. Starts watching the stream's own token first
    /// if a handler took it since the stream started (one atomic load when none did).
    fn is_cancelled(self: Pin<&mut Self>) -> bool {
        let this = self.project();
        if !this.watch.as_ref().is_some_and(|w| w.own) {
            if let Some(token) = this.context.token_if_created() {
                *this.watch = Some(Watch::new(token.clone(), true));
            }
        }
        this.watch.as_ref().is_some_and(|w| w.token.is_cancelled())
    }

    /// Cancelled: the farewell if one is set and we are between events, then the end.
    fn cancel(mut self: Pin<&mut Self>) {
        let this = self.as_mut().project();
        this.context.set_end(StreamEnd::Cancelled);
        match &this.config.farewell {
            Some(bytes) if this.boundary.at_boundary() => {
                *this.queued = None;
                *this.phase = Phase::Closing(bytes.clone());
            }
            _ => self.finish(None),
        }
    }

    /// Notes a frame from the inner body: where it leaves us, and when it came.
    fn record(mut self: Pin<&mut Self>, data: &[u8]) {
        let this = self.as_mut().project();
        if data.is_empty() {
            return;
        }
        this.boundary.update(data);
        // No timer: no heartbeat, idle timeout or lifetime to count from this frame.
        if matches!(*this.timer, Timer::Off) {
            return;
        }
        let now = Instant::now();
        *this.last_frame = now;
        *this.last_data = now;
        // A busy body may never be pending, so the timer alone cannot end its lifetime:
        // check it here too, and end after this frame if it closes an event.
        if this.boundary.at_boundary() && this.end_at.is_some_and(|end| end <= now) {
            self.finish(Some(StreamEnd::Lifetime));
        }
    }
}

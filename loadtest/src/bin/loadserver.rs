//! The server side of the load test: one `GET /events` endpoint in one of four stacks, so
//! `loadgen` (`loadtest/src/bin/loadgen.rs`) can compare them in the same run.
//!
//! Run with `cargo run --release -p loadtest --bin loadserver -- --mode tower-sse --addr 127.0.0.1:3001`
//! (normally `loadgen` starts it for you; see `scripts/bench.sh` and `BENCHMARKS.md`).
//!
//! Modes:
//!
//! - `tower-sse`: an axum 0.8 router under [`SseLayer`] (heartbeats), `/events` registers with
//!   a [`ConnectionManager`] (replay history on, bounded queue) and answers with its body.
//! - `axum-broadcast`: the usual hand-written recipe, axum's `Sse` with `KeepAlive` over a
//!   `tokio::sync::broadcast` receiver (`BroadcastStream`), each event built per receiver.
//! - `hyper-bare`: bare hyper 1.x (HTTP/1.1 builder), a minimal body forwarding pre-encoded
//!   `Bytes` from a broadcast receiver, no heartbeats: the memory floor.
//! - `tower-sse-hyper`: the crate's [`SseLayer`] and [`ConnectionManager`] served by the same
//!   bare hyper loop as `hyper-bare`, to tell the crate's cost from axum's.
//! - `tokio-raw`: no HTTP library at all: a task per socket parses the request line and
//!   writes chunks framed once at publish time, one `write` per event. The kernel's floor.
//!
//! Endpoints, the same in every mode:
//!
//! - `GET /events` (`?hello=1`: one event at once, for connect-receive-close cycles).
//! - `POST /publish?n=K&bytes=B&seq=S`: publishes `K` events with sequence numbers `S..S+K`.
//!   Each event's data is `"{seq} {unix_nanos} "` padded with `x` to `B` bytes, the
//!   timestamp taken just before that event is published.
//! - `GET /stats`: `{"mode", "open", "tasks"}` as JSON: open event streams (the manager's
//!   count, or the broadcast channel's receivers) and tokio's alive tasks.
//!
//! Options: `--heartbeat-ms` (default 15000, 0 = none), `--queue` (the manager's per-connection
//! queue and the broadcast channel's capacity, default 256), `--workers` (default 2),
//! `--serve hyper` (serve the axum router of `tower-sse` or `axum-broadcast` with the bare
//! hyper HTTP/1.1 loop instead of `axum::serve`, to measure what `axum::serve` itself costs).
//!
//! `--stall-ms N` (N > 0) serves through `tower_sse::listener::GuardedListener` with a stall
//! timeout of N ms (with `axum::serve`: modes `tower-sse` and `axum-broadcast`), and
//! `--history N` keeps N events of replay history in the manager (modes `tower-sse*`).
//!
//! `--redis URL` (or the `REDIS_URL` environment variable) joins the manager (modes
//! `tower-sse*`) to the hub `--hub NAME` (default `loadtest`) on that Redis through
//! `tower_sse::backplane::RedisBackplane`: several load servers on one Redis then behave as
//! one hub, and a publish on any of them reaches the clients of all. `/stats` then also
//! gives the instance's number. With it or without it, `POST /publish-burst?n=N&inflight=K`
//! (modes `tower-sse*`) measures the publish rate inside the server: `N` publishes of one
//! event from one task, with `publish` in a tight loop (`K` = 0: each returns once the event
//! is queued for the broker; the last one is awaited with `publish_confirmed`, so the time
//! covers every append) or with `publish_confirmed` and `K` in flight. It answers
//! `{"n", "secs", "per_s", "overloaded"}` (`overloaded`: publishes refused because the
//! broker's queue was full, and retried).
//!
//! The global allocator is chosen at build time: glibc's by default, `--features jemalloc`
//! (tikv-jemallocator) or `--features mimalloc`. `/stats` and the start line name it.
//!
//! The process prints `listening on ADDR` once it accepts connections, and exits when its
//! standard input closes, so a crashed load generator leaves no server behind.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{RawQuery, State};
use axum::response::sse::{Event as AxumEvent, KeepAlive, Sse as AxumSse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, Method, Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tower::{Layer, ServiceExt};
use tower_sse::backplane::{BackplaneError, RedisBackplane};
use tower_sse::listener::GuardedListener;
use tower_sse::manager::{Connect, ConnectionBody, ConnectionManager, SendError};
use tower_sse::{Event, SseContext, SseLayer};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start (the environment's `_RJEM_MALLOC_CONF` overrides
/// them): a background thread returns freed pages to the kernel after a second, also while
/// the server is idle. Without it, jemalloc purges only when it is called, so a server that
/// went quiet after a flood keeps what the flood used (BENCHMARKS.md, "Memory that comes
/// back").
#[cfg(feature = "jemalloc")]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &u8 = &b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0];

#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The global allocator this binary was built with.
const ALLOCATOR: &str = if cfg!(feature = "jemalloc") {
    "jemalloc"
} else if cfg!(feature = "mimalloc") {
    "mimalloc"
} else {
    "glibc"
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    TowerSse,
    AxumBroadcast,
    HyperBare,
    TowerSseHyper,
    TokioRaw,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "tower-sse" => Mode::TowerSse,
            "axum-broadcast" => Mode::AxumBroadcast,
            "hyper-bare" => Mode::HyperBare,
            "tower-sse-hyper" => Mode::TowerSseHyper,
            "tokio-raw" => Mode::TokioRaw,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Mode::TowerSse => "tower-sse",
            Mode::AxumBroadcast => "axum-broadcast",
            Mode::HyperBare => "hyper-bare",
            Mode::TowerSseHyper => "tower-sse-hyper",
            Mode::TokioRaw => "tokio-raw",
        }
    }
}

#[derive(Debug)]
struct Args {
    mode: Mode,
    addr: SocketAddr,
    heartbeat: Option<Duration>,
    queue: usize,
    workers: usize,
    /// Serve the axum router with the bare hyper loop instead of `axum::serve`.
    hyper_serve: bool,
    /// Serve through a `GuardedListener` with this stall timeout.
    stall: Option<Duration>,
    /// Replay history kept by the manager, in events.
    history: usize,
    /// Join the manager to a hub on this Redis.
    redis: Option<String>,
    /// The hub's name on Redis.
    hub: String,
}

const USAGE: &str =
    "usage: loadserver --mode tower-sse|axum-broadcast|hyper-bare|tower-sse-hyper|tokio-raw \
[--addr 127.0.0.1:0] [--heartbeat-ms 15000] [--queue 256] [--workers 2] [--serve axum|hyper] \
[--stall-ms 0] [--history 0] [--redis redis://127.0.0.1:6379 (or REDIS_URL)] [--hub loadtest]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        mode: Mode::TowerSse,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        heartbeat: Some(Duration::from_secs(15)),
        queue: 256,
        workers: 2,
        hyper_serve: false,
        stall: None,
        history: 0,
        redis: std::env::var("REDIS_URL")
            .ok()
            .filter(|url| !url.is_empty()),
        hub: "loadtest".to_owned(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |_| format!("bad value for {flag}: {value}");
        match flag.as_str() {
            "--mode" => args.mode = Mode::parse(&value).ok_or_else(|| bad(()))?,
            "--addr" => args.addr = value.parse().map_err(|_| bad(()))?,
            "--heartbeat-ms" => {
                let ms: u64 = value.parse().map_err(|_| bad(()))?;
                args.heartbeat = (ms > 0).then(|| Duration::from_millis(ms));
            }
            "--queue" => args.queue = value.parse::<usize>().map_err(|_| bad(()))?.max(1),
            "--workers" => args.workers = value.parse::<usize>().map_err(|_| bad(()))?.max(1),
            "--stall-ms" => {
                let ms: u64 = value.parse().map_err(|_| bad(()))?;
                args.stall = (ms > 0).then(|| Duration::from_millis(ms));
            }
            "--history" => args.history = value.parse().map_err(|_| bad(()))?,
            "--redis" => args.redis = Some(value).filter(|url| !url.is_empty()),
            "--hub" => args.hub = value,
            "--serve" => {
                args.hyper_serve = match value.as_str() {
                    "axum" => false,
                    "hyper" => true,
                    _ => return Err(bad(())),
                }
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    // Exit when the parent goes away (it holds our stdin).
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("loadserver: {e}");
        std::process::exit(1);
    }
}

/// A listener with a deep accept backlog: thousands of clients connect at once.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn run(args: Args) -> std::io::Result<()> {
    let listener = listen(args.addr)?;
    let addr = listener.local_addr()?;
    // The load generator waits for this line.
    println!("listening on {addr}");
    eprintln!(
        "loadserver: {} on {addr}, allocator {ALLOCATOR}",
        args.mode.name()
    );
    let serve = Serve {
        hyper: args.hyper_serve,
        stall: args.stall,
    };
    match args.mode {
        Mode::TowerSse | Mode::TowerSseHyper => {
            let mut manager = ConnectionManager::builder().queue_capacity(args.queue);
            if args.history > 0 {
                manager = manager.replay(args.history, None);
            }
            let mut backplane = None;
            if let Some(url) = &args.redis {
                let bp = RedisBackplane::builder(url.as_str())
                    .hub(args.hub.as_str())
                    .connect()
                    .await
                    .map_err(|e| std::io::Error::other(format!("redis {url}: {e}")))?;
                eprintln!(
                    "loadserver: instance {} of hub {:?} on {url}",
                    bp.instance(),
                    args.hub
                );
                manager = manager.backplane(bp.clone());
                backplane = Some(bp);
            }
            let manager = manager.build();
            let layer = match args.heartbeat {
                Some(interval) => SseLayer::new().heartbeat_interval(interval),
                None => SseLayer::new().disable_heartbeat(),
            };
            let state = TowerSseState { manager, backplane };
            if args.mode == Mode::TowerSse {
                let app = Router::new()
                    .route("/events", get(ts_events))
                    .route("/publish", post(ts_publish))
                    .route("/publish-burst", post(ts_burst))
                    .route("/stats", get(ts_stats))
                    .layer(layer)
                    .with_state(state);
                serve_router(listener, app, serve).await
            } else {
                let svc = layer.layer(tower::service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    // hyper keeps one slot the size of this future per connection for as
                    // long as it is open: the burst's large future is boxed, so the event
                    // streams' memory is what it was before `/publish-burst` existed.
                    if req.method() == Method::POST && req.uri().path() == "/publish-burst" {
                        let query = req.uri().query().map(str::to_owned);
                        let burst = async move {
                            let body = burst(&state.manager, query.as_deref()).await;
                            Ok::<_, Infallible>(json_response(body).map(Either::Right))
                        };
                        futures_util::future::Either::Right(Box::pin(burst))
                    } else {
                        futures_util::future::Either::Left(async move {
                            Ok::<_, Infallible>(ts_hyper(state, req))
                        })
                    }
                }));
                serve_hyper(listener, move |req| svc.clone().oneshot(req)).await
            }
        }
        Mode::AxumBroadcast => {
            let (tx, _) = broadcast::channel(args.queue);
            let state = AxumState {
                tx,
                heartbeat: args.heartbeat,
            };
            let app = Router::new()
                .route("/events", get(ab_events))
                .route("/publish", post(ab_publish))
                .route("/stats", get(ab_stats))
                .with_state(state);
            serve_router(listener, app, serve).await
        }
        Mode::TokioRaw => {
            let (tx, _) = broadcast::channel::<Bytes>(args.queue);
            serve_raw(listener, tx).await
        }
        Mode::HyperBare => {
            let (tx, _) = broadcast::channel::<Bytes>(args.queue);
            serve_hyper(listener, move |req| {
                std::future::ready(Ok::<_, Infallible>(bare(&tx, req)))
            })
            .await
        }
    }
}

/// How an axum router is served.
#[derive(Debug, Clone, Copy)]
struct Serve {
    /// The bare hyper loop instead of `axum::serve`.
    hyper: bool,
    /// `axum::serve` over a `GuardedListener` with this stall timeout.
    stall: Option<Duration>,
}

/// axum's own server (hyper-util's auto builder), with `TCP_NODELAY` like every mode here;
/// or, with `--serve hyper`, the same router on the bare hyper loop, to tell the cost of
/// `axum::serve` from the cost of the router; or, with `--stall-ms`, `axum::serve` over the
/// crate's `GuardedListener`.
async fn serve_router(listener: TcpListener, app: Router, serve: Serve) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    if serve.hyper {
        return serve_hyper(listener, move |req| app.clone().oneshot(req)).await;
    }
    if let Some(stall) = serve.stall {
        let listener = GuardedListener::new(listener)
            .stall_timeout(stall)
            .tcp_nodelay(true);
        return axum::serve(listener, app).await;
    }
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await
}

/// A bare hyper HTTP/1.1 accept loop: one task per connection, nothing else.
async fn serve_hyper<F, Fut, B>(listener: TcpListener, handler: F) -> std::io::Result<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<http::Response<B>, Infallible>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let stream = accept(&listener).await;
        let service = hyper::service::service_fn(handler.clone());
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Shared bits

/// The next connection, with `TCP_NODELAY`. An accept error (out of file descriptors, for
/// example) is waited out, as `axum::serve` does.
async fn accept(listener: &TcpListener) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `"{seq} {unix_nanos} "` padded with `x` to `bytes` bytes.
fn payload(seq: u64, bytes: usize) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.max(48));
    let _ = write!(s, "{seq} {} ", unix_nanos());
    while s.len() < bytes {
        s.push('x');
    }
    s
}

/// One `key=value` from a query string, as a number.
fn query_u64(query: Option<&str>, key: &str) -> Option<u64> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

#[derive(Debug, Clone, Copy)]
struct Publish {
    n: u64,
    bytes: usize,
    seq: u64,
}

impl Publish {
    fn from_query(query: Option<&str>) -> Publish {
        Publish {
            n: query_u64(query, "n").unwrap_or(1).min(1_000_000),
            bytes: query_u64(query, "bytes").unwrap_or(64).min(1 << 20) as usize,
            seq: query_u64(query, "seq").unwrap_or(0),
        }
    }
}

fn wants_hello(query: Option<&str>) -> bool {
    query_u64(query, "hello") == Some(1)
}

fn stats_json(mode: Mode, open: usize) -> String {
    stats_json_with(mode, open, None)
}

/// As [`stats_json`], with the backplane instance's number when there is one.
fn stats_json_with(mode: Mode, open: usize, instance: Option<u32>) -> String {
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let instance = instance.map_or(String::new(), |i| format!(",\"instance\":{i}"));
    format!(
        "{{\"mode\":\"{}\",\"open\":{open},\"tasks\":{tasks},\"allocator\":\"{ALLOCATOR}\"{instance}}}",
        mode.name()
    )
}

fn json_response(body: String) -> http::Response<Full<Bytes>> {
    let mut res = http::Response::new(Full::new(Bytes::from(body)));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    res
}

fn status(code: StatusCode) -> http::Response<Full<Bytes>> {
    let mut res = http::Response::new(Full::new(Bytes::new()));
    *res.status_mut() = code;
    res
}

// ---------------------------------------------------------------------------------------------
// tower-sse: ConnectionManager under SseLayer

#[derive(Clone)]
struct TowerSseState {
    manager: ConnectionManager,
    backplane: Option<RedisBackplane>,
}

impl TowerSseState {
    fn stats(&self, mode: Mode) -> String {
        stats_json_with(
            mode,
            self.manager.len(),
            self.backplane.as_ref().map(RedisBackplane::instance),
        )
    }
}

fn ts_publish_all(manager: &ConnectionManager, p: Publish) -> usize {
    let mut delivered = 0;
    for seq in p.seq..p.seq + p.n {
        if let Ok(d) = manager.publish(Event::message(payload(seq, p.bytes))) {
            delivered += d.delivered;
        }
    }
    delivered
}

async fn ts_events(
    State(state): State<TowerSseState>,
    Extension(ctx): Extension<SseContext>,
    RawQuery(query): RawQuery,
) -> Response {
    match state.manager.connect(Connect::new().context(&ctx)) {
        Ok((handle, body)) => {
            if wants_hello(query.as_deref()) {
                let _ = handle.send(Event::message(payload(0, 64)));
            }
            body.into_response().map(axum::body::Body::new)
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn ts_publish(State(state): State<TowerSseState>, RawQuery(query): RawQuery) -> Response {
    let delivered = ts_publish_all(&state.manager, Publish::from_query(query.as_deref()));
    format!("{{\"delivered\":{delivered}}}").into_response()
}

async fn ts_stats(State(state): State<TowerSseState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.stats(Mode::TowerSse),
    )
        .into_response()
}

async fn ts_burst(State(state): State<TowerSseState>, RawQuery(query): RawQuery) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        burst(&state.manager, query.as_deref()).await,
    )
        .into_response()
}

/// `POST /publish-burst?n=N&inflight=K&bytes=B`: the publish rate from one task (see the
/// module docs).
async fn burst(manager: &ConnectionManager, query: Option<&str>) -> String {
    use futures_util::stream::FuturesUnordered;
    let n = query_u64(query, "n")
        .unwrap_or(100_000)
        .clamp(1, 10_000_000);
    let inflight = query_u64(query, "inflight").unwrap_or(0).min(65_536) as usize;
    let bytes = query_u64(query, "bytes").unwrap_or(128).min(1 << 20) as usize;
    let event = Event::message(payload(0, bytes));
    let overloaded = |e: &SendError| matches!(e, SendError::Backplane(BackplaneError::Overloaded));
    let mut refused = 0u64;
    let mut error = None::<String>;
    let start = std::time::Instant::now();
    if inflight == 0 {
        let mut sent = 0;
        while sent + 1 < n {
            match manager.publish(event.clone()) {
                Ok(_) => sent += 1,
                // The broker's queue is full: let the writer drain it, and retry.
                Err(e) if overloaded(&e) => {
                    refused += 1;
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        // One writer appends in order: once the last is confirmed, every one is.
        if error.is_none() {
            loop {
                match manager.publish_confirmed(event.clone()).await {
                    Ok(_) => break,
                    Err(e) if overloaded(&e) => {
                        refused += 1;
                        tokio::task::yield_now().await;
                    }
                    Err(e) => {
                        error = Some(e.to_string());
                        break;
                    }
                }
            }
        }
    } else {
        let mut pending = FuturesUnordered::new();
        let mut started = 0;
        let mut done = 0;
        while done < n {
            while started < n && pending.len() < inflight {
                pending.push(manager.publish_confirmed(event.clone()));
                started += 1;
            }
            match pending.next().await {
                Some(Ok(_)) => done += 1,
                Some(Err(e)) if overloaded(&e) => {
                    refused += 1;
                    started -= 1;
                    tokio::task::yield_now().await;
                }
                Some(Err(e)) => {
                    error = Some(e.to_string());
                    break;
                }
                None => break,
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let error = error.map_or("null".to_owned(), |e| format!("{e:?}"));
    format!(
        "{{\"n\":{n},\"inflight\":{inflight},\"secs\":{secs:.6},\"per_s\":{:.0},\"overloaded\":{refused},\"error\":{error}}}",
        n as f64 / secs
    )
}

/// The same routes without axum, for `tower-sse-hyper` (and `POST /publish-burst`, served
/// by the caller).
fn ts_hyper(
    state: TowerSseState,
    req: Request<Incoming>,
) -> http::Response<Either<ConnectionBody, Full<Bytes>>> {
    let query = req.uri().query();
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/events") => {
            let mut options = Connect::new();
            if let Some(ctx) = req.extensions().get::<SseContext>() {
                options = options.context(ctx);
            }
            match state.manager.connect(options) {
                Ok((handle, body)) => {
                    if wants_hello(query) {
                        let _ = handle.send(Event::message(payload(0, 64)));
                    }
                    body.into_response().map(Either::Left)
                }
                Err(_) => status(StatusCode::SERVICE_UNAVAILABLE).map(Either::Right),
            }
        }
        (&Method::POST, "/publish") => {
            let delivered = ts_publish_all(&state.manager, Publish::from_query(query));
            json_response(format!("{{\"delivered\":{delivered}}}")).map(Either::Right)
        }
        (&Method::GET, "/stats") => {
            json_response(state.stats(Mode::TowerSseHyper)).map(Either::Right)
        }
        _ => status(StatusCode::NOT_FOUND).map(Either::Right),
    }
}

// ---------------------------------------------------------------------------------------------
// axum-broadcast: axum's Sse + KeepAlive over tokio::sync::broadcast

#[derive(Clone)]
struct AxumState {
    tx: broadcast::Sender<Arc<str>>,
    heartbeat: Option<Duration>,
}

async fn ab_events(State(state): State<AxumState>, RawQuery(query): RawQuery) -> Response {
    let hello = wants_hello(query.as_deref()).then(|| Arc::<str>::from(payload(0, 64)));
    let live = BroadcastStream::new(state.tx.subscribe())
        // A lagged receiver skips what it missed, as the usual recipe does.
        .filter_map(|msg| std::future::ready(msg.ok()));
    let stream = futures_util::stream::iter(hello)
        .chain(live)
        .map(|data| Ok::<_, Infallible>(AxumEvent::default().data(&*data)));
    let sse = AxumSse::new(stream);
    match state.heartbeat {
        Some(interval) => sse
            .keep_alive(KeepAlive::new().interval(interval))
            .into_response(),
        None => sse.into_response(),
    }
}

async fn ab_publish(State(state): State<AxumState>, RawQuery(query): RawQuery) -> Response {
    let p = Publish::from_query(query.as_deref());
    let mut delivered = 0;
    for seq in p.seq..p.seq + p.n {
        delivered += state.tx.send(payload(seq, p.bytes).into()).unwrap_or(0);
    }
    format!("{{\"delivered\":{delivered}}}").into_response()
}

async fn ab_stats(State(state): State<AxumState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        stats_json(Mode::AxumBroadcast, state.tx.receiver_count()),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// hyper-bare: the floor

/// Forwards pre-encoded events from a broadcast receiver; skips what it lagged behind on.
struct BareBody {
    first: Option<Bytes>,
    rx: BroadcastStream<Bytes>,
}

impl Body for BareBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        loop {
            match ready!(self.rx.poll_next_unpin(cx)) {
                Some(Ok(bytes)) => return Poll::Ready(Some(Ok(Frame::data(bytes)))),
                Some(Err(_lagged)) => continue,
                None => return Poll::Ready(None),
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn encode(data: &str) -> Bytes {
    let mut buf = Vec::with_capacity(data.len() + 8);
    buf.extend_from_slice(b"data: ");
    buf.extend_from_slice(data.as_bytes());
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

fn bare(
    tx: &broadcast::Sender<Bytes>,
    req: Request<Incoming>,
) -> http::Response<Either<BareBody, Full<Bytes>>> {
    let query = req.uri().query();
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/events") => {
            let body = BareBody {
                first: wants_hello(query).then(|| encode(&payload(0, 64))),
                rx: BroadcastStream::new(tx.subscribe()),
            };
            let mut res = http::Response::new(Either::Left(body));
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/event-stream"),
            );
            res
        }
        (&Method::POST, "/publish") => {
            let p = Publish::from_query(query);
            let mut delivered = 0;
            for seq in p.seq..p.seq + p.n {
                delivered += tx.send(encode(&payload(seq, p.bytes))).unwrap_or(0);
            }
            json_response(format!("{{\"delivered\":{delivered}}}")).map(Either::Right)
        }
        (&Method::GET, "/stats") => {
            json_response(stats_json(Mode::HyperBare, tx.receiver_count())).map(Either::Right)
        }
        _ => status(StatusCode::NOT_FOUND).map(Either::Right),
    }
}

// ---------------------------------------------------------------------------------------------
// tokio-raw: no HTTP library, one write per event; what the kernel alone costs

async fn serve_raw(listener: TcpListener, tx: broadcast::Sender<Bytes>) -> std::io::Result<()> {
    loop {
        let stream = accept(&listener).await;
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = raw_connection(stream, tx).await;
        });
    }
}

/// Serves requests on one connection until it closes or becomes an event stream.
async fn raw_connection(
    mut stream: TcpStream,
    tx: broadcast::Sender<Bytes>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::with_capacity(1024);
    loop {
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await?;
            if n == 0 || buf.len() > 16 * 1024 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let target = head.split(' ').nth(1).unwrap_or("/");
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let body = match path {
            "/events" => {
                let mut rx = tx.subscribe();
                let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                    transfer-encoding: chunked\r\n\r\n"
                    .to_vec();
                if wants_hello(query) {
                    out.extend_from_slice(&raw_chunk(&payload(0, 64)));
                }
                stream.write_all(&out).await?;
                drop(out);
                drop(buf);
                loop {
                    match rx.recv().await {
                        Ok(chunk) => stream.write_all(&chunk).await?,
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    }
                }
            }
            "/publish" => {
                let p = Publish::from_query(query);
                let mut delivered = 0;
                for seq in p.seq..p.seq + p.n {
                    delivered += tx.send(raw_chunk(&payload(seq, p.bytes))).unwrap_or(0);
                }
                format!("{{\"delivered\":{delivered}}}")
            }
            "/stats" => stats_json(Mode::TokioRaw, tx.receiver_count()),
            _ => String::new(),
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(response.as_bytes()).await?;
    }
}

/// One SSE event as one HTTP/1.1 chunk, framed once for every receiver.
fn raw_chunk(data: &str) -> Bytes {
    let event = encode(data);
    let mut out = format!("{:x}\r\n", event.len()).into_bytes();
    out.extend_from_slice(&event);
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

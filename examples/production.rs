//! The production server setup from the README ("Running it in production"): every resource
//! a client can make the server hold is bounded in time, and the number of connections is
//! capped below the descriptor limit.
//!
//! Run with `cargo run --example production --features listener`, then
//! `curl -N http://127.0.0.1:3000/events` and
//! `curl -d 'hello' http://127.0.0.1:3000/publish`. Ctrl-C ends every stream with a farewell
//! and exits.
//!
//! - hyper-util's server builder with a timer, so hyper's header-read timeout applies
//!   (`axum::serve` runs hyper without a timer: a client that sends its request one byte a
//!   second holds its connection forever);
//! - a `GuardedListener`: a connection whose writes make no progress for the stall timeout is
//!   aborted (a client that stopped reading no longer holds its socket and hyper's buffer),
//!   and past the cap new connections get `503` with `Retry-After`;
//! - a request-body timeout and a body size limit (tower-http);
//! - `SseLayer` with heartbeats and a shutdown token; graceful shutdown on Ctrl-C.
//!
//! Environment: `ADDR` (default `127.0.0.1:3000`), `HEADER_TIMEOUT_MS` (5000),
//! `STALL_TIMEOUT_MS` (15000), `BODY_TIMEOUT_MS` (10000), `MAX_CONNECTIONS` (10000; keep it
//! below `ulimit -n`).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use futures_util::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_sse::listener::{GuardedListener, GuardedStream};
use tower_sse::{Event, EventType, SseLayer};

const NOTE: EventType = EventType::from_static("note");
const BYE: EventType = EventType::from_static("bye");

/// How long open connections get to finish after Ctrl-C.
const GRACE: Duration = Duration::from_secs(5);

/// The server's bounds, from the environment.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) addr: String,
    /// A request's headers must arrive within this time of the connection (or of the end of
    /// the previous request on a kept-alive connection).
    pub(crate) header_timeout: Duration,
    /// A connection whose writes make no progress for this long is aborted.
    pub(crate) stall_timeout: Duration,
    /// A request body must arrive within this time.
    pub(crate) body_timeout: Duration,
    /// Open connections past this are answered `503` and closed.
    pub(crate) max_connections: usize,
}

impl Settings {
    pub(crate) fn from_env() -> Result<Settings, String> {
        fn millis(name: &str, default: u64) -> Result<Duration, String> {
            let ms = match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .map_err(|_| format!("{name}={v:?} is not a number"))?,
                Err(_) => default,
            };
            Ok(Duration::from_millis(ms))
        }
        let max_connections = match std::env::var("MAX_CONNECTIONS") {
            Ok(v) => v
                .parse()
                .map_err(|_| format!("MAX_CONNECTIONS={v:?} is not a number"))?,
            Err(_) => 10_000,
        };
        Ok(Settings {
            addr: std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into()),
            header_timeout: millis("HEADER_TIMEOUT_MS", 5_000)?,
            stall_timeout: millis("STALL_TIMEOUT_MS", 15_000)?,
            body_timeout: millis("BODY_TIMEOUT_MS", 10_000)?,
            max_connections,
        })
    }

    /// The listener with the stall guard and the cap.
    pub(crate) async fn bind(&self) -> std::io::Result<GuardedListener> {
        Ok(GuardedListener::bind(&self.addr)
            .await?
            .stall_timeout(self.stall_timeout)
            .max_connections(self.max_connections)
            .tcp_nodelay(true))
    }
}

/// `GET /events`: everything published. `POST /publish`: the body (at most 64 KiB, within
/// the body timeout) becomes a `note` event on every stream.
pub(crate) fn app(settings: &Settings, shutdown: CancellationToken) -> Router {
    let (notes, _) = broadcast::channel::<Event>(256);
    Router::new()
        .route("/events", get(events))
        .route("/publish", post(publish))
        .with_state(notes)
        .layer(RequestBodyLimitLayer::new(64 * 1024))
        .layer(RequestBodyTimeoutLayer::new(settings.body_timeout))
        .layer(
            SseLayer::new()
                .heartbeat_interval(Duration::from_secs(15))
                .shutdown_token(shutdown)
                .farewell(Event::named(BYE, "server going away")),
        )
}

async fn events(State(notes): State<broadcast::Sender<Event>>) -> impl IntoResponse {
    // A reader that falls behind the channel skips what it missed.
    let events = BroadcastStream::new(notes.subscribe()).filter_map(|note| async { note.ok() });
    tower_sse::response(events.map(Ok::<_, Infallible>))
}

async fn publish(State(notes): State<broadcast::Sender<Event>>, body: Bytes) -> impl IntoResponse {
    match std::str::from_utf8(&body) {
        Ok(text) => {
            let delivered = notes.send(Event::named(NOTE, text)).unwrap_or(0);
            (StatusCode::OK, format!("delivered to {delivered}\n"))
        }
        Err(_) => (StatusCode::BAD_REQUEST, "the body is not UTF-8\n".into()),
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then gives open connections
/// [`GRACE`] to finish.
pub(crate) async fn serve(
    listener: GuardedListener,
    app: Router,
    settings: &Settings,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Without a free descriptor nothing can be accepted; let connections close.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let builder = builder.clone();
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        let header_timeout = settings.header_timeout;
        tokio::spawn(async move {
            if !protocol_known(&stream, header_timeout).await {
                return; // nothing useful arrived in time: close
            }
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(GRACE) => {}
    }
}

/// Waits, at most `within`, until the first bytes tell HTTP/1 from HTTP/2.
///
/// hyper-util's builder reads them before handing the connection to hyper, and hyper's
/// header-read timer starts only then: a client that connects and sends nothing, or sends
/// the HTTP/2 preface a byte at a time, would otherwise hold its connection forever.
async fn protocol_known(stream: &GuardedStream, within: Duration) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let known = async {
        let mut first = [0u8; 24];
        loop {
            match stream.get_ref().peek(&mut first).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if n == PREFACE.len() || first[..n] != PREFACE[..n] => return true,
                // A prefix of the preface so far: look again shortly (peek does not wait for
                // more bytes than it already has).
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    };
    tokio::time::timeout(within, known).await.unwrap_or(false)
}

#[tokio::main]
async fn main() {
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let listener = match settings.bind().await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", settings.addr);
            std::process::exit(1);
        }
    };
    if let Ok(addr) = listener.local_addr() {
        println!("listening on http://{addr} ({settings:?})");
    }
    let shutdown = CancellationToken::new();
    let on_ctrl_c = shutdown.clone();
    tokio::spawn(async move {
        match tokio::signal::ctrl_c().await {
            Ok(()) => {
                println!("Ctrl-C: ending open streams");
                on_ctrl_c.cancel();
            }
            Err(e) => eprintln!("cannot listen for Ctrl-C: {e}"),
        }
    });
    serve(
        listener,
        app(&settings, shutdown.clone()),
        &settings,
        shutdown,
    )
    .await;
    println!("server stopped");
}

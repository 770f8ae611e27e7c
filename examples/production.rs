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
//! The server loop and its settings are in `shared/server.rs`, which the demo hub shares.
//! Environment: `ADDR` (default `127.0.0.1:3000`), `HEADER_TIMEOUT_MS` (5000),
//! `STALL_TIMEOUT_MS` (15000), `BODY_TIMEOUT_MS` (10000), `MAX_CONNECTIONS` (four fifths of
//! `ulimit -n`, at most 10000).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_sse::listener::GuardedListener;
use tower_sse::{Event, EventType, SseLayer};

const NOTE: EventType = EventType::from_static("note");
const BYE: EventType = EventType::from_static("bye");

/// How long open connections get to finish after Ctrl-C.
const GRACE: Duration = Duration::from_secs(5);

#[path = "shared/server.rs"]
mod server;

pub(crate) use server::Settings;

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
/// [`GRACE`] to finish (the shared setup in `shared/server.rs`).
pub(crate) async fn serve(
    listener: GuardedListener,
    app: Router,
    settings: &Settings,
    shutdown: CancellationToken,
) {
    server::serve(listener, app, settings, shutdown, GRACE).await;
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

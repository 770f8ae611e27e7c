//! [`SseLayer`] on a whole axum `Router`: event streams get heartbeats, cleanup and a clean
//! shutdown, and every other response passes through untouched.
//!
//! Run with `cargo run --example axum`, then try:
//!
//! ```text
//! curl -N http://127.0.0.1:3001/ticker                         # one tick a second, with ids
//! curl -N -H 'Last-Event-ID: 41' http://127.0.0.1:3001/ticker  # resumes at 42
//! curl -N http://127.0.0.1:3001/feed   # stop this curl: the server logs that its producer stopped
//! curl -i http://127.0.0.1:3001/json   # not an event stream: no SSE headers added
//! curl -i http://127.0.0.1:3001/text
//! ```
//!
//! or open <http://127.0.0.1:3001/> in a browser: its `EventSource` reconnects by itself and
//! sends `Last-Event-ID`, so the ticker carries on where it stopped.
//!
//! Press Ctrl-C: open streams end at once with a `shutdown` event, then the server exits.
//! Set `ADDR` to listen elsewhere, e.g. `ADDR=127.0.0.1:8080 cargo run --example axum`.

use std::time::Duration;

use axum::extract::Extension;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{IntervalStream, ReceiverStream};
use tokio_util::sync::CancellationToken;
use tower_sse::{BoxError, Event, SseContext, SseLayer};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // One token for the whole server: the layer ends every stream with it, and axum's
    // graceful shutdown waits on it.
    let shutdown = CancellationToken::new();
    let sse = SseLayer::new()
        .heartbeat_interval(Duration::from_secs(10))
        .shutdown_token(shutdown.clone())
        .farewell(
            Event::builder()
                .event("shutdown")
                .data("server going away")
                .retry(Duration::from_secs(5))
                .build()?,
        );

    let app = Router::new()
        .route("/", get(page))
        .route("/ticker", get(ticker))
        .route("/feed", get(feed))
        .route("/json", get(json))
        .route(
            "/text",
            get(|| async { "plain text, passed through untouched\n" }),
        )
        .layer(sse);

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3001".to_owned());
    let listener = TcpListener::bind(&addr)
        .await
        .expect("cannot listen on ADDR (default 127.0.0.1:3001)");
    println!("listening on http://{}", listener.local_addr()?);

    cancel_on_ctrl_c(shutdown.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    println!("server stopped");
    Ok(())
}

/// Cancels `token` on Ctrl-C.
fn cancel_on_ctrl_c(token: CancellationToken) {
    tokio::spawn(async move {
        match tokio::signal::ctrl_c().await {
            Ok(()) => {
                println!("Ctrl-C: ending open streams");
                token.cancel();
            }
            Err(e) => eprintln!("cannot listen for Ctrl-C: {e}"),
        }
    });
}

/// One `tick` a second, numbered by its id. A reconnecting client sends the last id it saw,
/// and the count resumes after it.
async fn ticker(
    Extension(ctx): Extension<SseContext>,
) -> Result<impl IntoResponse, (StatusCode, String)> {
    let start = match ctx.last_event_id() {
        // An id this server never issued starts the count again.
        Ok(Some(id)) => id
            .as_str()
            .parse::<u64>()
            .map_or(0, |n| n.saturating_add(1)),
        Ok(None) => 0,
        // The header is untrusted input: say what was wrong instead of guessing.
        Err(invalid) => return Err((StatusCode::BAD_REQUEST, format!("{invalid}\n"))),
    };
    let ticks = IntervalStream::new(tokio::time::interval(Duration::from_secs(1)))
        .enumerate()
        .map(move |(i, _)| {
            let n = start.saturating_add(i as u64);
            Event::builder()
                .event("tick")
                .id(n.to_string())
                .data(format!("tick {n}"))
                .build()
        });
    Ok(tower_sse::response(ticks))
}

/// Events made by a spawned task. The stream's cancellation token stops the task as soon as
/// the client leaves (or the server shuts down), even while it is waiting between events.
async fn feed(Extension(ctx): Extension<SseContext>) -> impl IntoResponse {
    let token = ctx.cancellation_token();
    let (tx, rx) = mpsc::channel::<Event>(16);
    tokio::spawn(async move {
        println!("feed: producer started");
        let mut interval = tokio::time::interval(Duration::from_millis(500));
        let mut seq = 0u64;
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                _ = interval.tick() => {
                    seq = seq.wrapping_add(1);
                    let reading = serde_json::json!({ "seq": seq, "load": (seq % 7) as f64 / 7.0 });
                    let event = Event::builder().event("reading").data(reading.to_string());
                    let Ok(event) = event.build() else { break };
                    if tx.send(event).await.is_err() {
                        break;
                    }
                }
            }
        }
        println!("feed: producer stopped after {seq} events (client left or shutdown)");
    });
    tower_sse::response(ReceiverStream::new(rx))
}

#[derive(serde::Serialize)]
struct Status {
    name: &'static str,
    streams: [&'static str; 2],
}

/// Not an event stream: the layer leaves it alone.
async fn json() -> Json<Status> {
    Json(Status {
        name: "tower-sse axum example",
        streams: ["/ticker", "/feed"],
    })
}

async fn page() -> Html<&'static str> {
    Html(
        r#"<!doctype html>
<meta charset="utf-8">
<title>tower-sse + axum</title>
<h1>tower-sse + axum</h1>
<pre id="log"></pre>
<script>
  const log = (line) => { document.getElementById("log").textContent += line + "\n"; };
  const source = new EventSource("/ticker");
  source.onopen = () => log("(connected)");
  source.addEventListener("tick", (e) => log(`id ${e.lastEventId}: ${e.data}`));
  source.addEventListener("shutdown", (e) => log(`server: ${e.data}`));
  source.onerror = () => log("(disconnected, the browser will reconnect)");
</script>
"#,
    )
}

//! [`SseLayer`] on a bare hyper 1.x server, no framework: one handler function, HTTP/1.1
//! and HTTP/2 (h2c) on the same port, and hyper-util's graceful shutdown.
//!
//! Run with `cargo run --example hyper`, then try:
//!
//! ```text
//! curl -N http://127.0.0.1:3002/events                            # HTTP/1.1
//! curl -N --http2-prior-knowledge http://127.0.0.1:3002/events    # HTTP/2 over cleartext
//! curl -i http://127.0.0.1:3002/                                  # not an event stream
//! ```
//!
//! With `curl -i` you can see the layer set `Connection: keep-alive` for HTTP/1.1 only: the
//! header is forbidden in HTTP/2. Browsers speak HTTP/1.1 to a plain `http://` address, so
//! `new EventSource("http://127.0.0.1:3002/events")` works from any page on that origin.
//!
//! Press Ctrl-C: open streams end at once with a `shutdown` event, then the server exits.
//! Set `ADDR` to listen elsewhere, e.g. `ADDR=127.0.0.1:8080 cargo run --example hyper`.
//!
//! `SseLayer` is a tower layer, so the handler is made a tower service with
//! `tower::service_fn` (hyper's own `service_fn` makes a `hyper::service::Service`, a
//! different trait), and `TowerToHyperService` hands the layered service back to hyper.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_stream::wrappers::IntervalStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_sse::{BoxError, Event, SseLayer};

/// How long shutdown waits for requests that are not event streams.
const GRACE: Duration = Duration::from_secs(10);

/// One body type for every route: an event stream or a fixed text.
type Body = BoxBody<Bytes, BoxError>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let shutdown = CancellationToken::new();
    let svc = ServiceBuilder::new()
        .layer(
            SseLayer::new()
                .heartbeat_interval(Duration::from_secs(10))
                .shutdown_token(shutdown.clone())
                .farewell(
                    Event::builder()
                        .event("shutdown")
                        .data("server going away")
                        .retry(Duration::from_secs(5))
                        .build()?,
                ),
        )
        .service_fn(handle);

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3002".to_owned());
    let listener = TcpListener::bind(&addr)
        .await
        .expect("cannot listen on ADDR (default 127.0.0.1:3002)");
    println!("listening on http://{}", listener.local_addr()?);
    cancel_on_ctrl_c(shutdown.clone());

    // HTTP/1.1, or HTTP/2 when the client opens with the HTTP/2 preface.
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: let some connections close.
                    eprintln!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let conn =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc.clone()));
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            // A client leaving an endless event stream ends its connection mid-response, so
            // this is ordinary for SSE; log it for the demo.
            if let Err(e) = conn.await {
                eprintln!("connection ended early: {e}");
            }
        });
    }

    // Stop accepting, then wait for open connections. Event streams have already been told
    // to end by the shutdown token; other requests get `GRACE` to finish.
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => println!("server stopped"),
        () = tokio::time::sleep(GRACE) => eprintln!("server stopped, some connections cut short"),
    }
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

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/events") => {
            // The first event says which protocol the client got; then a clock.
            let hello = Event::builder()
                .event("hello")
                .data(format!("{:?}", req.version()))
                .build();
            let ticks = IntervalStream::new(tokio::time::interval(Duration::from_secs(1)))
                .enumerate()
                .map(|(n, _)| {
                    Event::builder()
                        .event("uptime")
                        .data(format!("{n} s"))
                        .build()
                });
            let events = futures_util::stream::once(async { hello }).chain(ticks);
            tower_sse::response(events).map(BodyExt::boxed)
        }
        (&Method::GET, "/") => text(
            StatusCode::OK,
            "GET /events for an event stream; this text passes through the layer untouched\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(response)
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

//! [`SseLayer`] around a hand-written tower `Service`: a tiny chat room that routes by path,
//! served with hyper-util. The layer needs nothing from a framework, only
//! `http::Request` in and `http::Response` out.
//!
//! Run with `cargo run --example custom`, then in one terminal listen:
//!
//! ```text
//! curl -N http://127.0.0.1:3004/events
//! ```
//!
//! and in another one post messages, which every listener receives:
//!
//! ```text
//! curl -d 'hello, room' http://127.0.0.1:3004/send
//! ```
//!
//! A page can listen too, with `new EventSource("http://127.0.0.1:3004/events")` and
//! `addEventListener("message", ...)` (same origin).
//!
//! Press Ctrl-C: open streams end at once with a `shutdown` event, then the server exits.
//! Set `ADDR` to listen elsewhere, e.g. `ADDR=127.0.0.1:8080 cargo run --example custom`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};
use tower_sse::{BoxError, Event, SseLayer};

/// How long shutdown waits for requests that are not event streams.
const GRACE: Duration = Duration::from_secs(10);
/// The longest message accepted, in bytes.
const MAX_MESSAGE: usize = 4096;

type Body = BoxBody<Bytes, BoxError>;

/// The whole application: a router over a broadcast channel.
#[derive(Clone, Debug)]
struct Chat {
    // Each message is encoded once, and each listener gets a cheap clone of its bytes.
    room: broadcast::Sender<Event>,
}

impl Service<Request<Incoming>> for Chat {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let response = match (req.method(), req.uri().path()) {
            (&Method::GET, "/events") => self.listen(),
            (&Method::POST, "/send") => {
                let room = self.room.clone();
                return Box::pin(async move { Ok(send(room, req).await) });
            }
            (&Method::GET, "/") => text(
                StatusCode::OK,
                "GET /events to listen, POST /send to speak\n".to_owned(),
            ),
            (_, "/events" | "/send" | "/") => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".to_owned(),
            ),
            _ => text(StatusCode::NOT_FOUND, "not found\n".to_owned()),
        };
        Box::pin(std::future::ready(Ok(response)))
    }
}

impl Chat {
    /// An event stream of the room's messages. The layer recognises it by its content type
    /// and adds heartbeats and shutdown.
    fn listen(&self) -> Response<Body> {
        let messages = BroadcastStream::new(self.room.subscribe()).map(|received| match received {
            Ok(event) => Ok(event),
            // This listener fell behind and the channel dropped messages for it; say so
            // rather than skip them silently.
            Err(BroadcastStreamRecvError::Lagged(missed)) => Event::builder()
                .event("lagged")
                .data(format!("missed {missed} messages"))
                .build(),
        });
        tower_sse::response(messages).map(BodyExt::boxed)
    }
}

/// Reads a message and sends it to every listener.
async fn send(room: broadcast::Sender<Event>, req: Request<Incoming>) -> Response<Body> {
    let bytes = match Limited::new(req.into_body(), MAX_MESSAGE).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("messages are at most {MAX_MESSAGE} bytes\n"),
            )
        }
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("cannot read the message: {e}\n"),
            )
        }
    };
    let Ok(message) = std::str::from_utf8(&bytes) else {
        return text(
            StatusCode::BAD_REQUEST,
            "the message is not UTF-8\n".to_owned(),
        );
    };
    // `data` splits the text on line breaks, so a message cannot inject fields.
    let event = match Event::builder().event("message").data(message).build() {
        Ok(event) => event,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    // `send` fails only when nobody listens.
    let listeners = room.send(event).unwrap_or(0);
    text(StatusCode::OK, format!("sent to {listeners} listeners\n"))
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let shutdown = CancellationToken::new();
    let layer = SseLayer::new()
        .heartbeat_interval(Duration::from_secs(10))
        .shutdown_token(shutdown.clone())
        .farewell(
            Event::builder()
                .event("shutdown")
                .data("server going away")
                .retry(Duration::from_secs(5))
                .build()?,
        );
    let (room, _) = broadcast::channel(64);
    let svc = layer.layer(Chat { room });

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3004".to_owned());
    let listener = TcpListener::bind(&addr)
        .await
        .expect("cannot listen on ADDR (default 127.0.0.1:3004)");
    println!("listening on http://{}", listener.local_addr()?);
    cancel_on_ctrl_c(shutdown.clone());

    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
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
            // Ordinary for SSE: a listener leaving ends its connection mid-response.
            if let Err(e) = conn.await {
                eprintln!("connection ended early: {e}");
            }
        });
    }

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

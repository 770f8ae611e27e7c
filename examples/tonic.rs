//! [`SseLayer`] in a tonic gRPC server's stack, with an event stream served beside the gRPC
//! services on the same port. gRPC responses (`application/grpc`) pass through untouched.
//!
//! tonic routes with axum, so the gRPC services are turned into an axum `Router`
//! (`Routes::into_axum_router`), the SSE route is added to it, and tonic serves the whole
//! thing with the layer around it. `accept_http1(true)` lets browsers and curl reach the
//! event stream over HTTP/1.1; gRPC clients keep using HTTP/2.
//!
//! Run with `cargo run --example tonic`, then try:
//!
//! ```text
//! curl -N http://127.0.0.1:3003/events
//! curl -N --http2-prior-knowledge http://127.0.0.1:3003/events
//! ```
//!
//! or `new EventSource("http://127.0.0.1:3003/events")` from a page on that origin. To check
//! gRPC (optional, needs one of these tools): `grpc_health_probe -addr=127.0.0.1:3003`, or
//! grpcurl with the service definition, since this server has no reflection service
//! (`health.proto` is in the gRPC repository, `src/proto/grpc/health/v1/health.proto`):
//!
//! ```text
//! grpcurl -plaintext -import-path . -proto health.proto 127.0.0.1:3003 grpc.health.v1.Health/Check
//! ```
//!
//! or plain curl: an empty `HealthCheckRequest` asks for the whole server, and the reply
//! `00 00000002 0801` is a two-byte message saying `SERVING`:
//!
//! ```text
//! printf '\0\0\0\0\0' | curl -s --http2-prior-knowledge -H 'content-type: application/grpc' \
//!     -H 'te: trailers' --data-binary @- http://127.0.0.1:3003/grpc.health.v1.Health/Check | xxd
//! ```
//!
//! Press Ctrl-C: the health status turns `NOT_SERVING`, open event streams end at once with a
//! `shutdown` event, and the server exits once its connections have closed (gRPC `Watch`
//! calls never end by themselves, so they get a grace period). Set `ADDR` to listen
//! elsewhere, e.g. `ADDR=127.0.0.1:8080 cargo run --example tonic`.

use std::time::Duration;

use axum::routing::get;
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio_stream::wrappers::IntervalStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tower_sse::{BoxError, Event, SseLayer};

/// How long shutdown waits for connections that do not close by themselves.
const GRACE: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
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

    // The gRPC health service (`grpc.health.v1.Health`), plus an SSE route beside it.
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let router = Routes::new(health_service)
        .into_axum_router()
        .route("/events", get(events));

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3003".to_owned());
    let listener = TcpListener::bind(&addr)
        .await
        .expect("cannot listen on ADDR (default 127.0.0.1:3003)");
    println!("listening on http://{}", listener.local_addr()?);
    // Small event frames should leave at once.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    on_ctrl_c(health_reporter, shutdown.clone());

    let server = Server::builder()
        .accept_http1(true)
        .layer(sse)
        .add_routes(Routes::from(router))
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    tokio::select! {
        served = server => {
            served?;
            println!("server stopped");
        }
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(GRACE).await;
        } => eprintln!("server stopped, some connections cut short"),
    }
    Ok(())
}

/// On Ctrl-C, tells health checkers the server is going away, then cancels `token`.
fn on_ctrl_c(health: HealthReporter, token: CancellationToken) {
    tokio::spawn(async move {
        match tokio::signal::ctrl_c().await {
            Ok(()) => {
                println!("Ctrl-C: ending open streams");
                health
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
                token.cancel();
            }
            Err(e) => eprintln!("cannot listen for Ctrl-C: {e}"),
        }
    });
}

/// An event stream served by the same server as the gRPC services: the seconds since the
/// client connected.
async fn events() -> impl axum::response::IntoResponse {
    let ticks = IntervalStream::new(tokio::time::interval(Duration::from_secs(1)))
        .enumerate()
        .map(|(n, _)| {
            Event::builder()
                .event("uptime")
                .data(format!("{n} s"))
                .build()
        });
    tower_sse::response(ticks)
}

//! `SseLayer` in a real axum server over 127.0.0.1: graceful shutdown with open streams, and
//! cleanup when a client drops its connection. Every wait is bounded by a timeout, and every
//! task ends by itself.

mod common;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::{Extension, Router};
use bytes::Bytes;
use common::whatwg::{Decoded, Decoder};
use futures_util::{stream, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tower_sse::{Event, SseContext, SseLayer};

const CLIENTS: usize = 50;

fn farewell() -> Event {
    Event::builder()
        .event("bye")
        .data("see you")
        .retry(Duration::from_secs(3))
        .build()
        .unwrap()
}

/// A handler whose stream says hello, then waits forever: only the layer can end it. It
/// hands each stream's `SseContext` to the test.
fn app(layer: SseLayer, contexts: mpsc::UnboundedSender<SseContext>) -> Router {
    let handler = move |Extension(ctx): Extension<SseContext>| {
        let contexts = contexts.clone();
        async move {
            let _ = contexts.send(ctx);
            let events = stream::iter([Event::message("hello")]).chain(stream::pending());
            tower_sse::response(events).map(Body::new)
        }
    };
    Router::new().route("/events", get(handler)).layer(layer)
}

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// An HTTP/1.1 client (hyper) that opens the stream, reports once the first event arrived,
/// and returns every byte of the body until it ends, and whether it ended cleanly.
async fn client(addr: SocketAddr, opened: mpsc::UnboundedSender<()>) -> (Vec<u8>, bool) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("/events")
        .header("host", "localhost")
        .header("accept", "text/event-stream")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert_eq!(res.headers()["cache-control"], "no-cache");
    assert_eq!(res.headers()["x-accel-buffering"], "no");
    let mut body = res.into_body();
    let mut wire = Vec::new();
    let mut decoder = Decoder::new();
    let mut announced = false;
    let clean = loop {
        match body.frame().await {
            None => break true,
            Some(Err(_)) => break false,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    decoder.feed(&data);
                    wire.extend_from_slice(&data);
                }
            }
        }
        if !announced && !decoder.take_events().is_empty() {
            announced = true;
            let _ = opened.send(());
        }
    };
    drop(sender);
    let _ = timeout(Duration::from_secs(1), conn).await;
    (wire, clean)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_ends_every_open_stream_with_the_farewell() {
    let shutdown = CancellationToken::new();
    let layer = SseLayer::new()
        .shutdown_token(shutdown.clone())
        .farewell(farewell());
    let (contexts_tx, mut contexts) = mpsc::unbounded_channel();
    let (listener, addr) = bind().await;
    let server = tokio::spawn(
        axum::serve(listener, app(layer, contexts_tx))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );

    let (opened_tx, mut opened) = mpsc::unbounded_channel();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(client(addr, opened_tx.clone())))
        .collect();
    drop(opened_tx);
    for i in 0..CLIENTS {
        timeout(Duration::from_secs(10), opened.recv())
            .await
            .unwrap_or_else(|_| panic!("only {i} of {CLIENTS} streams opened"))
            .expect("a client failed before its stream opened");
    }
    let mut tokens = Vec::new();
    while let Ok(ctx) = contexts.try_recv() {
        tokens.push(ctx.cancellation_token());
    }
    assert_eq!(tokens.len(), CLIENTS);
    assert!(
        !server.is_finished(),
        "open streams keep the server running"
    );

    shutdown.cancel();
    timeout(Duration::from_secs(1), server)
        .await
        .expect("server still running 1 s after shutdown: open streams blocked it")
        .unwrap()
        .unwrap();

    assert!(tokens.iter().all(CancellationToken::is_cancelled));
    for (i, client) in clients.into_iter().enumerate() {
        let (wire, clean) = timeout(Duration::from_secs(5), client)
            .await
            .unwrap_or_else(|_| panic!("client {i} never saw its stream end"))
            .unwrap();
        assert!(clean, "client {i}: body ended with an error: {wire:?}");
        assert!(
            wire.ends_with(farewell().as_bytes()),
            "client {i}: {wire:?}"
        );
        let mut decoder = Decoder::new();
        decoder.feed(&wire);
        let out = decoder.finish();
        assert_eq!(
            out.events,
            [
                Decoded::new("message", "hello", ""),
                Decoded::new("bye", "see you", "")
            ],
            "client {i}"
        );
        assert_eq!(out.retry, Some(3000), "client {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_drops_the_body_and_cancels_its_token() {
    let shutdown = CancellationToken::new();
    // Long heartbeats: the server must notice the closed connection without writing to it.
    let layer = SseLayer::new()
        .heartbeat_interval(Duration::from_secs(3600))
        .shutdown_token(shutdown.clone());
    let (contexts_tx, mut contexts) = mpsc::unbounded_channel();
    let (listener, addr) = bind().await;
    let server = tokio::spawn(
        axum::serve(listener, app(layer, contexts_tx))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    timeout(Duration::from_secs(5), async {
        while !received.windows(11).any(|w| w == b"data: hello") {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "server closed early: {received:?}");
            received.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("stream opened");
    let head = String::from_utf8_lossy(&received).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: keep-alive"), "{head}");
    assert!(!head.contains("content-length"), "{head}");

    let ctx = timeout(Duration::from_secs(1), contexts.recv())
        .await
        .unwrap()
        .unwrap();
    let token = ctx.cancellation_token();
    assert!(!token.is_cancelled());

    // A second, untouched stream on another connection: the disconnect must not affect it.
    let mut other = TcpStream::connect(addr).await.unwrap();
    other
        .write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let other_ctx = timeout(Duration::from_secs(5), contexts.recv())
        .await
        .unwrap()
        .unwrap();

    drop(tcp);
    timeout(Duration::from_secs(2), token.cancelled())
        .await
        .expect("the body of a disconnected client was not dropped within 2 s");
    assert!(!other_ctx.cancellation_token().is_cancelled());
    assert!(!shutdown.is_cancelled());

    shutdown.cancel();
    timeout(Duration::from_secs(1), server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
    assert!(other_ctx.cancellation_token().is_cancelled());
    drop(other);
}

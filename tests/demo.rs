//! The demo's request bodies over real sockets (127.0.0.1): the 1 MiB limit, the `413` an
//! oversized body gets even when the client sends it all, a malformed chunked body's `400`,
//! and `Expect: 100-continue`. Raw TCP, so every byte the server writes is seen. Every wait
//! is bounded, and every task ends by itself.

#[path = "../examples/demo/app.rs"]
mod app;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const LIMIT: usize = 1024 * 1024;

async fn serve(settings: app::Settings) -> (SocketAddr, tokio_util::sync::DropGuard) {
    let hub = app::Hub::new(app::manager_builder().build(), settings);
    let shutdown = CancellationToken::new();
    let router = app::router(hub, shutdown.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    (addr, shutdown.drop_guard())
}

async fn demo() -> (SocketAddr, tokio_util::sync::DropGuard) {
    serve(app::Settings::default()).await
}

/// Everything the server writes until it closes the connection, or an error if the
/// connection was reset. Bounded by 10 s.
async fn read_to_close(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("the server answers and closes within 10 s")?;
    Ok(out)
}

/// The status code and the JSON body of one HTTP/1.1 response (Content-Length framed).
fn parse(response: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn head(path: &str, extra: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: demo\r\n{extra}\r\n")
}

#[tokio::test]
async fn a_body_at_the_limit_is_published() {
    let (addr, _guard) = demo().await;
    let data = "x".repeat(LIMIT);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = head(
        "/publish",
        &format!("Content-Length: {}\r\nConnection: close\r\n", data.len()),
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(data.as_bytes()).await.unwrap();
    let (status, json) = parse(&read_to_close(&mut stream).await.unwrap());
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["delivered"], 0);
}

/// The client sends the whole oversized body without waiting, as `curl --data-binary` does
/// without `Expect`, and only then reads: it must get the `413`, not a reset.
async fn oversized_then_read(addr: SocketAddr, chunked: bool) -> std::io::Result<Vec<u8>> {
    // More than loopback socket buffers hold, so the server must really read it.
    let len = LIMIT + 6 * 1024 * 1024;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let framing = if chunked {
        "Transfer-Encoding: chunked\r\n".to_owned()
    } else {
        format!("Content-Length: {len}\r\n")
    };
    stream
        .write_all(head("/publish", &framing).as_bytes())
        .await?;
    let chunk = vec![b'y'; 64 * 1024];
    for _ in 0..len / chunk.len() {
        if chunked {
            stream
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            stream.write_all(&chunk).await?;
            stream.write_all(b"\r\n").await?;
        } else {
            stream.write_all(&chunk).await?;
        }
    }
    if chunked {
        stream.write_all(b"0\r\n\r\n").await?;
    }
    read_to_close(&mut stream).await
}

#[tokio::test]
async fn an_oversized_body_sent_in_full_gets_its_413_not_a_reset() {
    let (addr, _guard) = demo().await;
    for chunked in [false, true] {
        let response = oversized_then_read(addr, chunked)
            .await
            .unwrap_or_else(|e| panic!("chunked {chunked}: the connection failed: {e}"));
        let (status, json) = parse(&response);
        assert_eq!(status, 413, "chunked {chunked}");
        assert_eq!(json["error"], format!("body is larger than {LIMIT} bytes"));
        let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
        assert!(text.contains("connection: close"), "{text}");
    }
}

#[tokio::test]
async fn lingering_is_bounded_in_bytes_and_in_time() {
    let settings = app::Settings {
        body: app::body::Limits {
            max: 1024,
            linger_bytes: 256 * 1024,
            linger_time: Duration::from_millis(500),
            ..app::body::Limits::default()
        },
        ..app::Settings::default()
    };
    let (addr, _guard) = serve(settings).await;

    // Bytes: a client that would send 1 GiB is read for 256 KiB past the limit, then cut
    // off; it cannot make the server read forever.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = head("/publish", "Content-Length: 1073741824\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let chunk = vec![b'z'; 64 * 1024];
    let mut sent = 0usize;
    let cut = timeout(Duration::from_secs(10), async {
        loop {
            match stream.write_all(&chunk).await {
                Ok(()) => sent += chunk.len(),
                Err(_) => return,
            }
        }
    })
    .await;
    assert!(cut.is_ok(), "the server stopped reading and closed");
    // Socket buffers on both sides hold a few MiB at most.
    assert!(sent < 64 * 1024 * 1024, "sent {sent} bytes before the cut");

    // Time: a client that announces a big body and then stalls gets its answer once the
    // lingering time is up.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = head("/publish", "Content-Length: 100000\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(&[b'a'; 2000]).await.unwrap();
    let started = Instant::now();
    let response = read_to_close(&mut stream).await.unwrap();
    assert_eq!(parse(&response).0, 413);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
}

#[tokio::test]
async fn a_malformed_chunked_body_gets_400() {
    let (addr, _guard) = demo().await;
    for path in ["/publish", "/v1/chat/completions"] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = head(path, "Transfer-Encoding: chunked\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        stream.write_all(b"5\r\nhello\r\nzz\r\n\r\n").await.unwrap();
        let (status, json) = parse(&read_to_close(&mut stream).await.unwrap());
        assert_eq!(status, 400, "{path}: {json}");
        assert_eq!(json["error"], "malformed request body", "{path}");
    }
}

#[tokio::test]
async fn expect_continue_over_the_limit_gets_413_without_100_continue() {
    let (addr, _guard) = demo().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = head(
        "/publish",
        &format!("Content-Length: {}\r\nExpect: 100-continue\r\n", LIMIT + 1),
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // The client waits for `100 Continue` before sending the body; it must get the refusal.
    let response = read_to_close(&mut stream).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");

    // Within the limit, the client is told to go on, and the body is published.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = head(
        "/publish",
        "Content-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n",
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut first = [0u8; 25];
    timeout(Duration::from_secs(10), stream.read_exact(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").await.unwrap();
    let (status, _) = parse(&read_to_close(&mut stream).await.unwrap());
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408_even_while_bytes_trickle_in() {
    let settings = app::Settings {
        body: app::body::Limits {
            time: Duration::from_millis(500),
            ..app::body::Limits::default()
        },
        ..app::Settings::default()
    };
    let (addr, _guard) = serve(settings).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = head("/publish", "Content-Length: 1000\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    // A byte every 50 ms: a timeout between reads would never fire; the body's deadline does.
    // Drip until the answer starts, then read it to the close.
    let started = Instant::now();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..200 {
        if stream.write_all(b"a").await.is_err() {
            break;
        }
        match timeout(Duration::from_millis(50), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                response.extend_from_slice(&buf[..n]);
                break;
            }
            Err(_) => {}
        }
    }
    let waited = started.elapsed();
    let mut rest = Vec::new();
    let _ = timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    response.extend_from_slice(&rest);
    let (status, json) = parse(&response);
    assert_eq!(status, 408, "{json}");
    assert_eq!(json["error"], "the body did not arrive within 500 ms");
    let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
    assert!(text.contains("connection: close"), "{text}");
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

//! The demo hub in a real browser: headless Chromium (Debian's `chromium`, which
//! `scripts/test.sh` installs) loads a test page that drives the demo and reports what the
//! browser's own `EventSource` received. Every assertion is made here.
//!
//! The browser reaches the demo through a TCP proxy that closes connections idle for one
//! second, as nginx's `proxy_read_timeout` does, so the heartbeat check proves that
//! heartbeats keep a quiet stream alive.

#[path = "../examples/demo/app.rs"]
mod app;
mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower_sse::manager::Replay;

const TEST_PAGE: &str = include_str!("browser/test.html");
const PROXY_IDLE: Duration = Duration::from_millis(1000);
const HEARTBEAT: Duration = Duration::from_millis(300);

/// Forwards connections to `upstream`, closing any that carry no byte for `idle`.
async fn idle_closing_proxy(upstream: SocketAddr, idle: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut a, mut b) = ([0u8; 16384], [0u8; 16384]);
                loop {
                    tokio::select! {
                        n = client.read(&mut a) => match n {
                            Ok(0) | Err(_) => return,
                            Ok(n) => if server.write_all(&a[..n]).await.is_err() { return },
                        },
                        n = server.read(&mut b) => match n {
                            Ok(0) | Err(_) => return,
                            Ok(n) => if client.write_all(&b[..n]).await.is_err() { return },
                        },
                        _ = tokio::time::sleep(idle) => return,
                    }
                }
            });
        }
    });
    addr
}

/// A request's `Last-Event-ID` and the status it got.
type Answered = (Option<String>, u16);

struct Server {
    addr: SocketAddr,
    replays: Arc<Mutex<Vec<Replay>>>,
    /// Every `/typewriter` request the server answered: its `Last-Event-ID` and status.
    typewriter_requests: Arc<Mutex<Vec<Answered>>>,
    reports: mpsc::Receiver<String>,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn start_demo(heartbeat: Duration) -> Server {
    let replays = Arc::new(Mutex::new(Vec::new()));
    let seen = replays.clone();
    let manager = app::manager_builder()
        .on_connect(move |conn| seen.lock().unwrap().push(conn.replay()))
        .build();
    let settings = app::Settings {
        heartbeat,
        retry: Duration::from_millis(1500),
        token_delay: Duration::from_millis(10),
        // Only count changes: the quiet stream below must be quiet.
        liveness: Duration::from_secs(3600),
        ..app::Settings::default()
    };
    let hub = app::Hub::new(manager, settings);
    let shutdown = CancellationToken::new();
    app::spawn_connection_counter(hub.clone(), shutdown.clone());
    let (tx, reports) = mpsc::channel(1);
    let test_routes = Router::new()
        .route("/__test", get(|| async { axum::response::Html(TEST_PAGE) }))
        .route(
            "/__report",
            post(move |body: String| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(body).await;
                }
            }),
        );
    let typewriter_requests = Arc::new(Mutex::new(Vec::new()));
    let seen = typewriter_requests.clone();
    let router =
        app::router(hub, shutdown.clone())
            .merge(test_routes)
            .layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let seen = seen.clone();
                    async move {
                        let typewriter = req.uri().path() == "/typewriter";
                        let id = req
                            .headers()
                            .get("last-event-id")
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                        let res = next.run(req).await;
                        if typewriter {
                            seen.lock().unwrap().push((id, res.status().as_u16()));
                        }
                        res
                    }
                },
            ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    Server {
        addr,
        replays,
        typewriter_requests,
        reports,
        _shutdown: shutdown.drop_guard(),
    }
}

/// What the spec's client receives for `data`: every line terminator becomes LF.
fn as_received(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_in_headless_chromium() {
    // Fails before the demo starts if there is no browser.
    let _ = common::chromium::path();
    let mut server = start_demo(HEARTBEAT).await;
    let proxy = idle_closing_proxy(server.addr, PROXY_IDLE).await;
    let (mut browser, profile) = common::chromium::open(
        "tower-sse-chromium",
        &format!("http://{proxy}/__test?quiet=3000"),
    );
    let report = tokio::time::timeout(Duration::from_secs(120), server.reports.recv()).await;
    let _ = browser.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
    let report = report
        .expect("the browser reported within 120 s")
        .expect("report channel open");
    let report: Value = serde_json::from_str(&report).expect("report is JSON");
    if let Some(error) = report.get("error") {
        panic!(
            "browser test page failed: {}",
            error.as_str().unwrap_or_default()
        );
    }

    // Every published event arrives exactly as published, line terminators as LF.
    let exact = &report["exact"];
    let sent = exact["sent"].as_array().unwrap();
    let received = exact["received"].as_array().unwrap();
    assert_eq!(received.len(), sent.len(), "{received:#?}");
    for (s, r) in sent.iter().zip(received) {
        let data = s["data"].as_str().unwrap();
        assert_eq!(
            r["data"].as_str().unwrap(),
            as_received(data),
            "payload {data:?}"
        );
        assert_eq!(r["type"], s["type"], "payload {data:?}");
        assert_eq!(r["lastEventId"], s["id"], "payload {data:?}");
        assert!(s["delivered"].as_u64().unwrap() >= 1);
    }

    // After the server ends the stream, the browser comes back with its last id and gets
    // exactly what was published meanwhile: no gap, no duplicate.
    let resume = &report["resume"];
    assert!(resume["completed"].as_u64().unwrap() >= 1);
    let missed: Vec<&str> = resume["missed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    let got: Vec<(&str, &str)> = resume["received"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["lastEventId"].as_str().unwrap(),
                r["data"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (missed[0], "missed 0"),
            (missed[1], "missed 1"),
            (missed[2], "missed 2")
        ]
    );
    assert!(
        server.replays.lock().unwrap().contains(&Replay::Resumed(3)),
        "the reconnect was served from the replay history: {:?}",
        server.replays.lock().unwrap()
    );

    // The typewriter streams the whole answer and ends as finished: the browser comes back
    // once with the finished id, gets 204 and closes the EventSource by itself, without any
    // page code. The handler ran once: the answer was not replayed.
    let tw = &report["typewriter"];
    assert_eq!(tw["joined"], tw["text"]);
    assert!(tw["tokens"].as_u64().unwrap() > 5);
    assert_eq!(tw["opens"], 1);
    assert_eq!(tw["endId"], tower_sse::DEFAULT_FINISHED_PREFIX.as_str());
    assert_eq!(tw["readyState"], 2, "CLOSED");
    assert_eq!(tw["streams"], 1, "one /typewriter stream, no replay");
    let requests = server.typewriter_requests.lock().unwrap().clone();
    let finished = Some(tower_sse::DEFAULT_FINISHED_PREFIX.as_str().to_owned());
    assert_eq!(
        requests[..2],
        [(None, 200), (finished.clone(), 204)],
        "{requests:?}"
    );

    // Through a proxy that cuts connections idle for 1 s, heartbeats every 300 ms keep a
    // stream open through 3 s without a single event. They are comments: the page sees none.
    let hb = &report["heartbeat"];
    assert_eq!(hb["events"], 0, "{hb}");
    assert_eq!(hb["opens"], 1, "{hb}");
    assert_eq!(hb["errors"], 0, "{hb}");
    assert_eq!(hb["readyState"], 1, "{hb}");

    // The demo page itself: its feed shows what was published, its typewriter completes
    // without a reconnect.
    let page = &report["page"];
    assert_eq!(page["shown"], "from the page test\n  indented line");
    assert_ne!(page["connections"], "?");
    assert_eq!(page["answer"], "typed by the page");
    assert_eq!(page["typewriterRequests"], 1);
    // Its live chart drew points from /stats as they came: the page's own stream as the one
    // open connection, and the burst of publishes as events per second; both lines have ink.
    let chart = &page["chart"];
    eprintln!("the page's chart: {chart}");
    assert!(
        chart["pointsAfter"].as_u64().unwrap() >= chart["pointsBefore"].as_u64().unwrap() + 2,
        "{chart}"
    );
    assert_eq!(chart["lastOpen"], 1, "{chart}");
    assert_eq!(chart["legendOpen"], "1", "{chart}");
    assert!(chart["maxRate"].as_f64().unwrap() >= 30.0, "{chart}");
    assert!(chart["openInk"].as_u64().unwrap() > 50, "{chart}");
    assert!(chart["rateInk"].as_u64().unwrap() > 50, "{chart}");
    // The page's typewriter also ended by the 204 alone: its reconnect, and nothing after.
    let requests = server.typewriter_requests.lock().unwrap().clone();
    assert_eq!(
        requests[2..],
        [(None, 200), (finished, 204)],
        "{requests:?}"
    );
}

/// The control for the heartbeat check: without heartbeats, the same proxy cuts a quiet
/// stream, so the check above is not vacuous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_heartbeats_the_proxy_cuts_a_quiet_stream() {
    let server = start_demo(Duration::from_secs(3600)).await;
    let proxy = idle_closing_proxy(server.addr, PROXY_IDLE).await;
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(b"GET /events HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the proxy closed the quiet stream");
}

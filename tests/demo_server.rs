//! The demo hub served as `examples/demo/main.rs` serves it: its router (`examples/demo/app.rs`)
//! on the production setup it shares with `examples/production.rs`
//! (`examples/shared/server.rs`: hyper with a header-read timeout, a `GuardedListener` with a
//! stall guard and a connection cap), over real sockets on 127.0.0.1 (issues 12 and 14):
//!
//! - slowloris connections are closed within the header timeout;
//! - with event streams at the manager's cap, `/stats` and `/publish` still answer and a new
//!   `/events` gets `503` with `Retry-After`; the same for streamed answers at theirs; past
//!   the listener's cap, `503` from the listener;
//! - `GET /metrics` is the Prometheus text of the crate's metrics, and agrees with `/stats`;
//! - a typewriter answer holds its text, not a list of tokens.
//!
//! Server sockets are counted in `/proc/net/tcp` (by both ends' addresses); the tests run one at a time (the counts are
//! process-wide, and so is the allocator's). The process holds both ends of every
//! connection: 2 x 2,100 descriptors at most, well under the 20,000 limit. Every wait is
//! bounded by a deadline, every loop by a count.
#![cfg(target_os = "linux")]

#[path = "../examples/demo/app.rs"]
mod app;
#[allow(dead_code)]
#[path = "../examples/shared/server.rs"]
mod server;

use std::alloc::System;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::Value;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

mod common;
use common::wait::wait_until;
use tokio_util::sync::CancellationToken;
use tower_sse::listener::ListenerStats;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// One test at a time (held across awaits; each test has its own runtime).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WAIT: Duration = Duration::from_secs(10);

// ---- The demo on the production setup ------------------------------------------------------

struct Demo {
    addr: SocketAddr,
    listener: ListenerStats,
    shutdown: CancellationToken,
    server: JoinHandle<bool>,
}

impl Demo {
    /// Ends the server: every stream gets its farewell, and `serve` returns.
    async fn stop(self) {
        self.shutdown.cancel();
        let drained = timeout(WAIT, self.server).await.expect("serve returned");
        assert!(
            drained.unwrap(),
            "every connection finished within the grace"
        );
    }
}

fn server_settings(header_timeout: Duration, caps: app::Caps) -> server::Settings {
    server::Settings {
        addr: "127.0.0.1:0".into(),
        header_timeout,
        stall_timeout: Duration::from_secs(2),
        body_timeout: Duration::from_secs(1),
        max_connections: caps.connections,
    }
}

/// The demo's hub and router with `settings`, served as `main.rs` serves them; with a
/// Prometheus recorder installed for the manager and the layer when `metrics` is set.
async fn start(header_timeout: Duration, settings: app::Settings, metrics: bool) -> Demo {
    settings
        .caps
        .check()
        .expect("caps leave room for other requests");
    let server_settings = server_settings(header_timeout, settings.caps);
    let listener = server_settings.bind().await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = listener.stats();
    let shutdown = CancellationToken::new();
    let build = || {
        let manager = app::manager_builder_for(&settings).build();
        (manager, settings.clone())
    };
    let (router, hub) = if metrics {
        // Local to this test: the manager and the layer register their metrics when built.
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let (manager, settings) = build();
            let extras = app::Extras {
                metrics: Some(handle),
                listener: Some(listener.stats()),
                ..app::Extras::default()
            };
            let hub = app::Hub::with(manager, settings, extras);
            (app::router(hub.clone(), shutdown.clone()), hub)
        })
    } else {
        let (manager, settings) = build();
        let extras = app::Extras {
            listener: Some(listener.stats()),
            ..app::Extras::default()
        };
        let hub = app::Hub::with(manager, settings, extras);
        (app::router(hub.clone(), shutdown.clone()), hub)
    };
    tokio::spawn(hub.manager.clone().shutdown_on(shutdown.clone()));
    let server = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            server::serve(
                listener,
                router,
                &server_settings,
                shutdown,
                Duration::from_secs(2),
            )
            .await
        })
    };
    Demo {
        addr,
        listener: stats,
        shutdown,
        server,
    }
}

// ---- Clients ---------------------------------------------------------------------------------

/// The server's sockets in state ESTABLISHED: local address 127.0.0.1:`port`, remote port
/// one of `peers` (our clients'). Both matter: `/proc/net/tcp` lists every socket of the
/// machine, and another process's client socket may have `port` as its own local port.
fn established(port: u16, peers: &HashSet<u16>) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(l), Some(remote), Some(state)) =
                (fields.get(1), fields.get(2), fields.get(3))
            else {
                return false;
            };
            let remote_port = remote
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            *l == local && *state == "01" && remote_port.is_some_and(|p| peers.contains(&p))
        })
        .count()
}

/// Sends `method path` with `body` on a new connection (kept alive).
async fn send(addr: SocketAddr, method: &str, path: &str, body: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: demo\r\naccept: text/event-stream\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// Reads until the response head is complete (or the connection ends); returns it.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
    };
    timeout(WAIT, read).await.expect("a response head in time");
    String::from_utf8_lossy(&head).into_owned()
}

fn status(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn has_header(head: &str, name: &str, value: &str) -> bool {
    head.lines().any(|line| {
        line.split_once(':').is_some_and(|(n, v)| {
            n.trim().eq_ignore_ascii_case(name) && v.trim().eq_ignore_ascii_case(value)
        })
    })
}

/// A request on its own connection, answered in full and closed: the status, the head and
/// the body.
async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: demo\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .expect("answered and closed in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status(head), head.to_owned(), body.to_owned())
}

/// `GET /stats` as JSON.
async fn stats(addr: SocketAddr) -> Value {
    let (status, _, body) = request(addr, "GET", "/stats", "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

// ---- Slowloris -------------------------------------------------------------------------------

const SLOWLORIS: usize = 2_000;
const SILENT: usize = 100;
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// A slowloris client: one more byte of `GET /events HTTP/1.1` every second (with `drip`),
/// until the server closes the connection (or `limit` passes). Returns how long after
/// `connected` the close was seen, or `None`.
async fn drip_until_closed(
    mut stream: TcpStream,
    connected: Instant,
    drip: bool,
    limit: Duration,
) -> Option<Duration> {
    let line = b"ET /events HTTP/1.1\r\n";
    let mut buf = [0u8; 1024];
    let mut next = connected + Duration::from_secs(1);
    for round in 0.. {
        if connected.elapsed() > limit {
            return None;
        }
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(connected.elapsed()),
                // An answer to an incomplete request can only be an error (a `408`, if
                // hyper sends one before it closes): read on to the close.
                Ok(_) => {}
            },
            () = tokio::time::sleep_until(next) => {
                next += Duration::from_secs(1);
                if drip && stream.write_all(&[line[round % line.len()]]).await.is_err() {
                    return Some(connected.elapsed());
                }
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_within_the_header_timeout() {
    let _serial = SERIAL.lock().await;
    let demo = start(HEADER_TIMEOUT, app::Settings::default(), false).await;
    let port = demo.addr.port();

    // Each sends the first byte of a request line, then one more a second; a few send
    // nothing at all. Each client's own task sees its connection end.
    let limit = HEADER_TIMEOUT + Duration::from_secs(5);
    let first = Instant::now();
    let mut clients = Vec::with_capacity(SLOWLORIS + SILENT);
    let mut peers = HashSet::new();
    for i in 0..SLOWLORIS + SILENT {
        let mut stream = TcpStream::connect(demo.addr).await.unwrap();
        let connected = Instant::now();
        peers.insert(stream.local_addr().unwrap().port());
        let slowloris = i < SLOWLORIS;
        if slowloris {
            stream.write_all(b"G").await.unwrap();
        }
        clients.push(tokio::spawn(drip_until_closed(
            stream, connected, slowloris, limit,
        )));
    }
    let spread = first.elapsed();
    let up = established(port, &peers);
    let mut closed_after = Vec::with_capacity(clients.len());
    for client in clients {
        closed_after.push(client.await.unwrap());
    }
    let left = wait_until(Duration::from_secs(2), || established(port, &peers) == 0).await;
    let mut closed: Vec<Duration> = closed_after.iter().flatten().copied().collect();
    closed.sort();
    let (min, median, max) = (
        closed.first().copied().unwrap_or_default(),
        closed.get(closed.len() / 2).copied().unwrap_or_default(),
        closed.last().copied().unwrap_or_default(),
    );
    eprintln!(
        "demo setup: {SLOWLORIS} slowloris and {SILENT} silent connections (connected over \
         {spread:?}, {up} ESTABLISHED): {} closed by the server, each between {min:?} and \
         {max:?} (median {median:?}) after it connected; header timeout {HEADER_TIMEOUT:?}",
        closed.len()
    );
    assert_eq!(
        up,
        SLOWLORIS + SILENT,
        "every connection was accepted first"
    );
    assert_eq!(
        closed.len(),
        SLOWLORIS + SILENT,
        "every one was closed within {limit:?}"
    );
    // Not before the header timeout (it is what closes them), and within it plus the time a
    // loaded 2-core machine takes to run 2,100 timers and closes.
    assert!(min >= HEADER_TIMEOUT, "one was closed after {min:?}");
    assert!(
        max <= HEADER_TIMEOUT + Duration::from_secs(1),
        "one was closed only after {max:?}"
    );
    assert!(
        left.is_some(),
        "{} server sockets left",
        established(port, &peers)
    );
    assert_eq!(demo.listener.open(), 0, "every slot was given back");

    // A well-behaved client is served at once.
    let s = stats(demo.addr).await;
    assert_eq!(s["open"], 0);
    demo.stop().await;
}

// ---- Caps ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_every_cap_the_demo_refuses_with_503_and_stats_and_publish_still_answer() {
    let _serial = SERIAL.lock().await;
    let caps = app::Caps {
        connections: 60,
        streams: 40,
        answers: 10,
    };
    assert_eq!(caps.check(), Ok(10));
    let settings = app::Settings {
        caps,
        // Answers that take long enough to hold them.
        token_delay: Duration::from_millis(500),
        liveness: Duration::from_secs(3600),
        ..app::Settings::default()
    };
    let demo = start(Duration::from_secs(30), settings, false).await;
    let addr = demo.addr;

    // Event streams up to the manager's cap: /events and /ticker count alike.
    let mut streams = Vec::new();
    for i in 0..caps.streams {
        let path = if i % 4 == 0 {
            format!("/ticker?key=t{i}&interval_ms=60000")
        } else {
            format!("/events?key=k{i}")
        };
        let mut stream = send(addr, "GET", &path, "").await;
        let head = read_head(&mut stream).await;
        assert_eq!(status(&head), 200, "{path}: {head}");
        streams.push(stream);
    }
    for path in ["/events", "/ticker?key=one-more"] {
        let mut refused = send(addr, "GET", path, "").await;
        let head = read_head(&mut refused).await;
        assert_eq!(status(&head), 503, "{path}: {head}");
        assert!(has_header(&head, "retry-after", "1"), "{head}");
    }
    // Other routes still answer, on connections the listener still has.
    let s = stats(addr).await;
    assert_eq!(s["open"], caps.streams);
    assert_eq!(s["caps"]["streams"], caps.streams);
    let (status_code, _, body) = request(addr, "POST", "/publish", "to every stream").await;
    assert_eq!(status_code, 200, "{body}");
    let published: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(published["delivered"], caps.streams);

    // Streamed answers up to theirs: the typewriter and the chat route count alike.
    let chat = r#"{"model":"demo","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let mut answers = Vec::new();
    for i in 0..caps.answers {
        let mut stream = if i % 2 == 0 {
            send(addr, "GET", "/typewriter", "").await
        } else {
            send(addr, "POST", "/v1/chat/completions", chat).await
        };
        let head = read_head(&mut stream).await;
        assert_eq!(status(&head), 200, "answer {i}: {head}");
        answers.push(stream);
    }
    let (code, head, body) = request(addr, "GET", "/typewriter", "").await;
    assert_eq!(code, 503, "{body}");
    assert!(has_header(&head, "retry-after", "1"), "{head}");
    let (code, head, body) = request(addr, "POST", "/v1/chat/completions", chat).await;
    assert_eq!(code, 503, "{body}");
    assert!(has_header(&head, "retry-after", "1"), "{head}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        error["error"]["type"], "server_error",
        "OpenAI's error shape"
    );
    let s = stats(addr).await;
    assert_eq!(s["answers_open"], caps.answers);

    // A client that leaves gives its answer's place back.
    drop(answers.pop());
    let mut freed = false;
    for _ in 0..100 {
        if stats(addr).await["answers_open"] == caps.answers - 1 {
            freed = true;
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "the place of a gone client came back");
    let mut again = send(addr, "GET", "/typewriter", "").await;
    assert_eq!(status(&read_head(&mut again).await), 200);
    answers.push(again);

    // The listener's cap counts every connection: fill what is left with idle kept-alive
    // connections (each answered once), then the next one is refused before any request.
    let held = streams.len() + answers.len();
    let mut idle = Vec::new();
    for _ in held..caps.connections {
        let mut stream = send(addr, "GET", "/stats", "").await;
        let head = read_head(&mut stream).await;
        assert_eq!(status(&head), 200, "{head}");
        idle.push(stream);
    }
    assert_eq!(demo.listener.open(), caps.connections);
    let (code, head, _) = request(addr, "GET", "/stats", "").await;
    assert_eq!(code, 503, "{head}");
    assert!(has_header(&head, "retry-after", "5"), "{head}");
    assert_eq!(demo.listener.refused(), 1);

    // One connection fewer, and /stats answers again.
    drop(idle.pop());
    let back = wait_until(WAIT, || demo.listener.open() < caps.connections).await;
    assert!(back.is_some(), "the closed connection still counts");
    let s = stats(addr).await;
    assert_eq!(s["listener"]["refused"], 1);
    eprintln!(
        "caps: {} streams, {} answers and {} connections held; /events, /typewriter and chat \
         got 503 + Retry-After: 1 while /stats and /publish answered; the listener refused \
         one past {} with 503 + Retry-After: 5",
        caps.streams, caps.answers, caps.connections, caps.connections
    );

    drop((streams, answers, idle));
    demo.stop().await;
}

// ---- /metrics ------------------------------------------------------------------------------

/// The value of the sample `name` (with its labels, as rendered) in a Prometheus text.
#[cfg(feature = "metrics")]
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
}

// The crate emits metrics only with its `metrics` feature.
#[cfg(feature = "metrics")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_the_prometheus_text_of_the_crates_counters_and_agree_with_stats() {
    let _serial = SERIAL.lock().await;
    let demo = start(HEADER_TIMEOUT, app::Settings::default(), true).await;
    let addr = demo.addr;

    // Three streams, 100 events each of them reads, then they leave.
    const STREAMS: usize = 3;
    const EVENTS: usize = 100;
    let mut clients = Vec::new();
    for _ in 0..STREAMS {
        let mut stream = send(addr, "GET", "/events", "").await;
        assert_eq!(status(&read_head(&mut stream).await), 200);
        clients.push(stream);
    }
    for i in 0..EVENTS {
        let (code, _, body) = request(addr, "POST", "/publish", &format!("event {i}")).await;
        assert_eq!(code, 200, "{body}");
    }
    for client in &mut clients {
        let mut seen = Vec::new();
        let mut buf = [0u8; 16384];
        let last = format!("data: event {}\n", EVENTS - 1);
        let read = async {
            while !String::from_utf8_lossy(&seen).contains(&last) {
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
        };
        timeout(WAIT, read).await.expect("every event in time");
    }
    drop(clients);
    let mut closed = false;
    for _ in 0..200 {
        if stats(addr).await["open"] == 0 {
            closed = true;
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "the streams closed");

    let (code, head, text) = request(addr, "GET", "/metrics", "").await;
    assert_eq!(code, 200, "{text}");
    assert!(
        has_header(
            &head,
            "content-type",
            "text/plain; version=0.0.4; charset=utf-8"
        ),
        "{head}"
    );
    let s = stats(addr).await;
    let get = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}:\n{text}"));
    assert_eq!(get(tower_sse::telemetry::STREAMS_OPEN), 0.0);
    assert_eq!(get(tower_sse::telemetry::STREAMS_OPENED), STREAMS as f64);
    let closed = format!(
        "{}{{reason=\"client_gone\"}}",
        tower_sse::telemetry::STREAMS_CLOSED
    );
    assert_eq!(get(&closed), STREAMS as f64);
    let layer_ended = format!(
        "{}{{reason=\"client_gone\"}}",
        tower_sse::telemetry::LAYER_ENDED
    );
    assert_eq!(get(&layer_ended), STREAMS as f64);
    assert_eq!(get(tower_sse::telemetry::LAYER_STREAMS), STREAMS as f64);
    // One source of counters, two views.
    assert_eq!(
        get(tower_sse::telemetry::EVENTS),
        s["events"].as_f64().unwrap()
    );
    assert_eq!(
        get(tower_sse::telemetry::DELIVERIES),
        s["deliveries"].as_f64().unwrap()
    );
    assert!(get(tower_sse::telemetry::DELIVERIES) >= (STREAMS * EVENTS) as f64);
    assert!(get(tower_sse::telemetry::WRITTEN_BYTES) > (STREAMS * EVENTS * 10) as f64);
    // Every metric of the crate but the opt-in topic gauge is there, with its type.
    for (name, kind) in [
        (tower_sse::telemetry::STREAMS_OPEN, "gauge"),
        (tower_sse::telemetry::STREAMS_OPENED, "counter"),
        (tower_sse::telemetry::STREAMS_CLOSED, "counter"),
        (tower_sse::telemetry::EVENTS, "counter"),
        (tower_sse::telemetry::DELIVERIES, "counter"),
        (tower_sse::telemetry::WRITTEN_BYTES, "counter"),
        (tower_sse::telemetry::DROPPED, "counter"),
        (tower_sse::telemetry::LAGGED, "counter"),
        (tower_sse::telemetry::RESUMED, "counter"),
        (tower_sse::telemetry::GAPS, "counter"),
        (tower_sse::telemetry::QUEUE_DEPTH, "summary"),
        (tower_sse::telemetry::DELIVERY_DELAY, "summary"),
        (tower_sse::telemetry::LAYER_STREAMS, "counter"),
        (tower_sse::telemetry::LAYER_ENDED, "counter"),
        (tower_sse::telemetry::HEARTBEATS, "counter"),
    ] {
        let declared = format!("# TYPE {name} {kind}");
        assert!(text.contains(&declared), "{declared}:\n{text}");
    }
    eprintln!(
        "/metrics after {STREAMS} streams and {EVENTS} events: {} lines, {} bytes",
        text.lines().count(),
        text.len()
    );
    demo.stop().await;
}

#[test]
fn the_default_caps_leave_a_tenth_of_the_connections_to_other_requests() {
    let caps = app::Caps::for_connections(10_000);
    assert_eq!((caps.streams, caps.answers), (8_500, 500));
    assert_eq!(caps.check(), Ok(1_000));
    let small = app::Caps::for_connections(100);
    assert_eq!((small.streams, small.answers), (85, 5));
    let huge = app::Caps::for_connections(usize::MAX);
    assert!(huge.check().is_ok());
    let full = app::Caps {
        connections: 60,
        streams: 40,
        answers: 20,
    };
    let refused = full.check().unwrap_err();
    assert!(
        refused.contains("MAX_STREAMS (40) + MAX_ANSWERS (20)"),
        "{refused}"
    );
}

// ---- The typewriter's memory -------------------------------------------------------------

/// Bytes allocated and not freed, process-wide.
fn live() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

#[test]
fn a_typewriter_answer_holds_its_text_not_a_list_of_tokens() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let _serial = SERIAL.blocking_lock();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let hub = app::Hub::new(app::manager_builder().build(), app::Settings::default());
        let router = app::router(hub, CancellationToken::new());
        // The longest text, in one-letter tokens: 8,192 of them.
        let text = "a ".repeat(app::MAX_TYPEWRITER_BYTES / 2);
        let uri = format!("/typewriter?text={}", text.replace(' ', "+"));
        const ANSWERS: usize = 20;
        let before = live();
        let mut bodies = Vec::new();
        for _ in 0..ANSWERS {
            let request = http::Request::get(&uri)
                .body(axum::body::Body::empty())
                .unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), 200);
            let mut body = response.into_body();
            // The first token is out: the stream runs.
            let frame = timeout(WAIT, body.frame()).await.unwrap().unwrap().unwrap();
            assert!(frame.is_data());
            bodies.push(body);
        }
        let per_answer = (live() - before) / ANSWERS as i64;
        eprintln!(
            "typewriter: {per_answer} B held per answer of {} bytes ({} tokens)",
            text.len(),
            text.len() / 2
        );
        // The text itself, the stream and its layer: about 1.2 times the text, not 24 bytes
        // and more per token on top.
        assert!(
            per_answer < 2 * text.len() as i64,
            "an answer of {} bytes holds {per_answer} B",
            text.len()
        );
        drop(bodies);
    });
}

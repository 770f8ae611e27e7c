//! The client compatibility suite: real, independently written SSE clients against the demo,
//! each installed pinned by `scripts/compat-clients.sh` (run by `scripts/test.sh`), none ever
//! skipped. A missing client fails the suite.
//!
//! | client | how it runs |
//! |---|---|
//! | Chromium's `EventSource` | headless Debian `chromium`, `tests/compat/chromium.html` |
//! | npm `eventsource` 4 and 5, `@microsoft/fetch-event-source`, `eventsource-parser` | `node tests/compat/node/client.mjs` |
//! | PyPI `httpx-sse`, `sseclient-py`, `openai` | `python tests/compat/python/client.py` |
//! | crates `reqwest-eventsource`, `eventsource-client` | in this process |
//!
//! Every client reports what it hands the application, one JSON line per item; every
//! assertion is made here. Each client gets its own demo server (127.0.0.1, port 0) and runs
//! these scenarios at once:
//!
//! - **events**: a payload set is published (empty, LF/CR/CRLF, leading spaces, trailing
//!   newlines, lines that look like fields or comments, tabs, astral characters, U+2028, a
//!   512 KiB JSON document) and must arrive exactly, with no spurious message, while comment
//!   heartbeats run every 100 ms. Then the server ends the stream, publishes two more events,
//!   and a reconnecting client must come back with the last id as `Last-Event-ID`, after the
//!   `retry` the server gave, and get exactly the two it missed.
//! - **typewriter**: an answer that ends as finished. A client that honours `204 No Content`
//!   reconnects once, gets it, and stops.
//! - **blocks**: a test route sends blocks without data (a comment block, an id-only and a
//!   retry-only block), which the crate itself never sends unless asked, to measure which
//!   clients surface them as empty messages or lose the id.
//! - **chat**: the demo's OpenAI-compatible route, through the official `openai` client and
//!   `eventsource-parser`.
//!
//! Known client bugs are asserted deviations: the suite fails if a client's behaviour
//! changes either way. The README's "Client compatibility" table is generated from the
//! measurements: the suite writes it to `target/compat/compat-table.md` and fails if the
//! README's copy differs (`TOWER_SSE_UPDATE_README=1` rewrites the README's copy).

#[path = "../examples/demo/app.rs"]
mod app;
mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower_sse::{Event, DEFAULT_FINISHED_PREFIX};

/// The reconnection delay the demo gives clients. Far from the clients' own defaults (300 ms,
/// 1 s, 3 s), so a client that ignores it is seen to.
const RETRY: Duration = Duration::from_millis(2000);
/// Heartbeats every 25 ms, and 40 ms between two tokens of an answer: the clients see
/// heartbeats everywhere, between events and inside every answer.
const HEARTBEAT: Duration = Duration::from_millis(25);
const TOKEN_DELAY: Duration = Duration::from_millis(40);
const TYPEWRITER_TEXT: &str = "Tokens stream in,  then an end that marks the answer finished. é 😀";
const README_START: &str = "<!-- compat-table:start -->";
const README_END: &str = "<!-- compat-table:end -->";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where `scripts/compat-clients.sh` installed the npm and PyPI clients.
fn clients_dir() -> PathBuf {
    match std::env::var_os("TOWER_SSE_COMPAT_CLIENTS") {
        Some(dir) => PathBuf::from(dir),
        None => manifest_dir().join("target/compat-clients"),
    }
}

// ---------------------------------------------------------------------------------------------
// The clients.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Client {
    Chromium,
    EventSource4,
    EventSource5,
    FetchEventSource,
    EventSourceParser,
    HttpxSse,
    SseclientPy,
    OpenAi,
    ReqwestEventSource,
    LaunchDarkly,
}

impl Client {
    const ALL: [Client; 10] = [
        Client::Chromium,
        Client::EventSource4,
        Client::EventSource5,
        Client::FetchEventSource,
        Client::EventSourceParser,
        Client::HttpxSse,
        Client::SseclientPy,
        Client::OpenAi,
        Client::ReqwestEventSource,
        Client::LaunchDarkly,
    ];

    /// The name the driver scripts take.
    fn id(self) -> &'static str {
        match self {
            Client::Chromium => "chromium",
            Client::EventSource4 => "eventsource4",
            Client::EventSource5 => "eventsource5",
            Client::FetchEventSource => "fetch-event-source",
            Client::EventSourceParser => "eventsource-parser",
            Client::HttpxSse => "httpx-sse",
            Client::SseclientPy => "sseclient-py",
            Client::OpenAi => "openai",
            Client::ReqwestEventSource => "reqwest-eventsource",
            Client::LaunchDarkly => "eventsource-client",
        }
    }

    /// How the README names it.
    fn title(self) -> &'static str {
        match self {
            Client::Chromium => "Chromium `EventSource`",
            Client::EventSource4 => "npm `eventsource`",
            Client::EventSource5 => "npm `eventsource`",
            Client::FetchEventSource => "npm `@microsoft/fetch-event-source`",
            Client::EventSourceParser => "npm `eventsource-parser` (Vercel AI SDK)",
            Client::HttpxSse => "PyPI `httpx-sse`",
            Client::SseclientPy => "PyPI `sseclient-py`",
            Client::OpenAi => "PyPI `openai` (chat completions)",
            Client::ReqwestEventSource => "crate `reqwest-eventsource`",
            Client::LaunchDarkly => "crate `eventsource-client` (LaunchDarkly)",
        }
    }

    fn scenarios(self) -> &'static [Scenario] {
        use Scenario::*;
        match self {
            Client::OpenAi => &[Chat],
            Client::EventSourceParser => &[Events, Typewriter, Blocks, Chat],
            _ => &[Events, Typewriter, Blocks],
        }
    }

    /// What this suite expects, known bugs included. A change either way fails the suite.
    fn expected(self) -> Expected {
        let spec = Expected {
            data_deviations: &[],
            block_empty_messages: 0,
            id_only_kept: true,
            reconnects: true,
            honours_204: true,
            exposes_retry: false,
            comments_to_app: false,
        };
        match self {
            Client::Chromium | Client::EventSource5 => spec,
            Client::EventSource4 => Expected {
                id_only_kept: false,
                ..spec
            },
            Client::FetchEventSource => Expected {
                data_deviations: &["leading empty lines", "only a newline"],
                block_empty_messages: 3,
                id_only_kept: false,
                honours_204: false,
                exposes_retry: true,
                ..spec
            },
            Client::EventSourceParser => Expected {
                id_only_kept: false,
                reconnects: false,
                honours_204: false,
                exposes_retry: true,
                comments_to_app: true,
                ..spec
            },
            Client::HttpxSse => Expected {
                block_empty_messages: 2,
                reconnects: false,
                honours_204: false,
                exposes_retry: true,
                ..spec
            },
            Client::SseclientPy => Expected {
                id_only_kept: false,
                reconnects: false,
                honours_204: false,
                exposes_retry: true,
                ..spec
            },
            Client::OpenAi => spec,
            Client::ReqwestEventSource => Expected {
                exposes_retry: true,
                ..spec
            },
            Client::LaunchDarkly => Expected {
                honours_204: false,
                exposes_retry: true,
                comments_to_app: true,
                ..spec
            },
        }
    }

    /// The installed version, read from the installed package (or the lock file).
    fn version(self) -> String {
        let node = |package: &str| {
            let path = clients_dir()
                .join("node/node_modules")
                .join(package)
                .join("package.json");
            std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| serde_json::from_str::<Value>(&s).ok())
                .and_then(|v| v["version"].as_str().map(str::to_owned))
                .unwrap_or_else(|| {
                    panic!(
                        "{} is not installed: run `bash scripts/compat-clients.sh`",
                        path.display()
                    )
                })
        };
        let python = |package: &str| {
            let freeze =
                std::fs::read_to_string(manifest_dir().join("tests/compat/requirements.txt"))
                    .unwrap();
            freeze
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{package}==")).map(str::to_owned))
                .unwrap_or_else(|| {
                    panic!("{package} is not pinned in tests/compat/requirements.txt")
                })
        };
        let cargo = |package: &str| {
            let lock = std::fs::read_to_string(manifest_dir().join("Cargo.lock")).unwrap();
            let at = lock
                .find(&format!("name = \"{package}\"\nversion = \""))
                .expect("in Cargo.lock");
            let rest = &lock[at..];
            let v = rest.split('"').nth(3).unwrap_or_default();
            v.to_owned()
        };
        match self {
            Client::Chromium => chromium_version(),
            Client::EventSource4 => node("eventsource4"),
            Client::EventSource5 => node("eventsource5"),
            Client::FetchEventSource => node("@microsoft/fetch-event-source"),
            Client::EventSourceParser => node("eventsource-parser"),
            Client::HttpxSse => python("httpx-sse"),
            Client::SseclientPy => python("sseclient-py"),
            Client::OpenAi => python("openai"),
            Client::ReqwestEventSource => cargo("reqwest-eventsource"),
            Client::LaunchDarkly => cargo("eventsource-client"),
        }
    }

    /// The README's version cell: pinned versions as they are; Chromium comes from the
    /// distribution, so the table names it without a number that would churn.
    fn version_cell(self) -> String {
        match self {
            Client::Chromium => "Debian `chromium`".to_owned(),
            _ => self.version(),
        }
    }
}

/// What a client is expected to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Expected {
    /// Payloads (by name) whose data the client hands on differently from the spec.
    data_deviations: &'static [&'static str],
    /// Empty messages surfaced for the blocks scenario's three blocks without data.
    block_empty_messages: usize,
    /// The id of an id-only block is kept for the next event.
    id_only_kept: bool,
    /// Reconnects by itself after the stream ends.
    reconnects: bool,
    /// Stops after a reconnect answered `204`.
    honours_204: bool,
    /// Hands the application each event's `retry` (or the field itself).
    exposes_retry: bool,
    /// Hands comments to the application as items of their own (not as messages).
    comments_to_app: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scenario {
    Events,
    Typewriter,
    Blocks,
    Chat,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Events => "events",
            Scenario::Typewriter => "typewriter",
            Scenario::Blocks => "blocks",
            Scenario::Chat => "chat",
        }
    }

    fn path(self) -> String {
        match self {
            Scenario::Events => "/events".to_owned(),
            Scenario::Typewriter => format!("/typewriter?text={}", urlencode(TYPEWRITER_TEXT)),
            Scenario::Blocks => "/__compat/blocks".to_owned(),
            Scenario::Chat => "/v1/chat/completions".to_owned(),
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn chromium_version() -> String {
    let out = std::process::Command::new(common::chromium::path())
        .arg("--version")
        .output()
        .expect("chromium --version");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .unwrap_or("unknown")
        .to_owned()
}

// ---------------------------------------------------------------------------------------------
// The payload set.

/// A JSON document of at least `size` bytes, with escapes, non-ASCII text and nesting.
fn json_items(size: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut len = 2;
    let mut i = 0u64;
    while len < size {
        let item = json!({
            "i": i,
            "text": format!("line {i}\nwith \"quotes\", a tab\tand é ✓ 😀 \u{2028}"),
            "nested": { "ok": i % 2 == 0, "values": [i, i * 2, i * 3] },
        });
        len += item.to_string().len() + 1;
        items.push(item);
        i += 1;
    }
    items
}

fn payloads() -> Vec<(&'static str, String)> {
    [
        ("plain", "plain"),
        ("empty", ""),
        ("LF lines", "two\nlines"),
        ("CR lines", "lone\rcarriage return"),
        ("CRLF lines", "crlf\r\nline"),
        ("mixed terminators", "a\n\rb\r\n\r\nc\r"),
        ("leading empty lines", "\n\nleading empty lines"),
        ("only a newline", "\n"),
        ("trailing newline", "trailing newline\n"),
        ("two trailing newlines", "two trailing\n\n"),
        ("two leading spaces", "  two leading spaces"),
        ("one leading space", " one leading space"),
        (
            "looks like fields",
            "data: injected\n\nevent: evil\nid: 666\nretry: 1",
        ),
        ("looks like a comment", ": not a comment"),
        ("a colon", ":"),
        ("tabs", "\ttab\tseparated\t"),
        ("astral characters", "😀 𝄞 🇪🇺"),
        (
            "line separators",
            "U+2028 \u{2028} U+2029 \u{2029} U+0085 \u{85}",
        ),
    ]
    .into_iter()
    .map(|(name, data)| (name, data.to_owned()))
    // A big document on one line, as `serde_json::to_string` and `JSON.stringify` write it,
    // and a pretty-printed one on many lines. (sseclient-py joins an event's lines in
    // quadratic time: a 512 KiB pretty-printed document, 40,000 lines, takes it 37 s.)
    .chain([
        (
            "512 KiB JSON",
            serde_json::to_string(&json_items(512 * 1024)).unwrap(),
        ),
        (
            "pretty-printed JSON",
            serde_json::to_string_pretty(&json_items(32 * 1024)).unwrap(),
        ),
    ])
    .collect()
}

/// What the spec's algorithm hands the application for `data`: every terminator as LF.
fn as_received(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

// ---------------------------------------------------------------------------------------------
// The demo, with routes for the suite and a log of every request.

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    last_event_id: Option<String>,
    status: u16,
    at: Instant,
}

struct Demo {
    base: String,
    hub: Arc<app::Hub>,
    requests: Arc<Mutex<Vec<Seen>>>,
    reports: Mutex<Option<mpsc::UnboundedReceiver<Value>>>,
    http: reqwest::Client,
    _shutdown: tokio_util::sync::DropGuard,
}

/// The blocks scenario's stream: three blocks without data, then events that show what the
/// client made of them, then nothing (the stream stays open).
fn blocks_stream() -> impl futures_util::Stream<Item = Event> + Send {
    let built = |b: tower_sse::EventBuilder| b.build().expect("constant event");
    let events = vec![
        Event::comment("a comment block"),
        built(Event::builder().id("block-7")),
        built(Event::builder().retry(RETRY)),
        Event::message("after"),
        Event::message("tail"),
    ];
    futures_util::stream::iter(events).chain(futures_util::stream::pending())
}

impl Demo {
    async fn start() -> Demo {
        let settings = app::Settings {
            heartbeat: HEARTBEAT,
            retry: RETRY,
            token_delay: TOKEN_DELAY,
            // `connections` only when the count changes.
            liveness: Duration::from_secs(3600),
            ..app::Settings::default()
        };
        let hub = app::Hub::new(app::manager_builder().build(), settings);
        let shutdown = CancellationToken::new();
        let (tx, reports) = mpsc::unbounded_channel();
        let suite_routes = Router::new()
            .route(
                "/__compat/blocks",
                get(|| async { tower_sse::response(blocks_stream()) }),
            )
            .route(
                "/__compat/chromium",
                get(|| async { axum::response::Html(include_str!("compat/chromium.html")) }),
            )
            .route(
                "/__compat/report",
                post(move |body: String| {
                    let tx = tx.clone();
                    async move {
                        if let Ok(line) = serde_json::from_str::<Value>(&body) {
                            let _ = tx.send(line);
                        }
                    }
                }),
            )
            .layer(
                tower_sse::SseLayer::new()
                    .heartbeat_interval(HEARTBEAT)
                    .retry(RETRY),
            );
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let router = app::router(hub.clone(), shutdown.clone())
            .merge(suite_routes)
            .layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let log = log.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let last_event_id = req
                            .headers()
                            .get("last-event-id")
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                        let res = next.run(req).await;
                        if !path.starts_with("/__compat/report") {
                            log.lock().unwrap().push(Seen {
                                path,
                                last_event_id,
                                status: res.status().as_u16(),
                                at: Instant::now(),
                            });
                        }
                        res
                    }
                },
            ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
        Demo {
            base: format!("http://{addr}"),
            hub,
            requests,
            reports: Mutex::new(Some(reports)),
            http: reqwest::Client::new(),
            _shutdown: shutdown.drop_guard(),
        }
    }

    fn url(&self, scenario: Scenario) -> String {
        format!("{}{}", self.base, scenario.path())
    }

    /// Publishes `data` as an event of type `ty`; returns its id.
    async fn publish(&self, data: &str, ty: &str) -> Result<String, String> {
        let mut url = format!("{}/publish", self.base);
        if ty != "message" {
            url.push_str(&format!("?event={ty}"));
        }
        let res = self
            .http
            .post(url)
            .body(data.to_owned())
            .send()
            .await
            .map_err(|e| format!("publish: {e}"))?;
        let json: Value = res.json_value().await?;
        json["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("publish answered {json}"))
    }

    async fn disconnect(&self) -> Result<u64, String> {
        let res = self
            .http
            .post(format!("{}/disconnect", self.base))
            .send()
            .await
            .map_err(|e| format!("disconnect: {e}"))?;
        let json = res.json_value().await?;
        Ok(json["completed"].as_u64().unwrap_or(0))
    }

    /// Every request to `path` so far.
    fn requests_to(&self, path: &str) -> Vec<Seen> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }
}

trait JsonValue {
    async fn json_value(self) -> Result<Value, String>;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Result<Value, String> {
        let bytes = self.bytes().await.map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes)
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&bytes)))
    }
}

// ---------------------------------------------------------------------------------------------
// Running a client, and what it reported.

/// What one client reported in one scenario, as it came.
struct Observer {
    label: String,
    rx: mpsc::UnboundedReceiver<Value>,
    lines: Vec<Value>,
    /// Whatever keeps the client running: a child process, a task, a browser.
    _running: Box<dyn std::any::Any + Send>,
    stderr: Arc<Mutex<String>>,
}

/// One event as the application got it.
#[derive(Debug, Clone, PartialEq)]
struct Got {
    ty: String,
    data: String,
    id: Option<String>,
    retry: Option<u64>,
}

impl Observer {
    fn new(
        label: String,
        running: Box<dyn std::any::Any + Send>,
    ) -> (Observer, mpsc::UnboundedSender<Value>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let observer = Observer {
            label,
            rx,
            lines: Vec::new(),
            _running: running,
            stderr: Arc::default(),
        };
        (observer, tx)
    }

    /// Takes lines until `done` holds for all of them, or fails after `limit`.
    async fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        done: impl Fn(&Observer) -> bool,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + limit;
        while !done(self) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(line)) => self.lines.push(line),
                Ok(None) | Err(_) => {
                    if done(self) {
                        break;
                    }
                    return Err(format!(
                        "{}: no {what} within {limit:?}; it reported {:#?}\nstderr: {}",
                        self.label,
                        self.tail(),
                        self.stderr.lock().unwrap()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Takes the lines that arrive within `time`.
    async fn settle(&mut self, time: Duration) {
        let deadline = tokio::time::Instant::now() + time;
        while let Ok(Some(line)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            self.lines.push(line);
        }
    }

    fn tail(&self) -> Vec<String> {
        let skip = self.lines.len().saturating_sub(12);
        self.lines[skip..]
            .iter()
            .map(|l| {
                let s = l.to_string();
                if s.len() > 200 {
                    format!("{}...", s.chars().take(200).collect::<String>())
                } else {
                    s
                }
            })
            .collect()
    }

    fn has(&self, kind: &str) -> bool {
        self.lines.iter().any(|l| l["kind"] == kind)
    }

    fn events(&self) -> Vec<Got> {
        self.lines
            .iter()
            .filter(|l| l["kind"] == "event")
            .map(|l| Got {
                ty: l["type"].as_str().unwrap_or("message").to_owned(),
                data: l["data"].as_str().unwrap_or_default().to_owned(),
                id: l["id"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
                // sseclient-py hands `retry` on as the field's text.
                retry: l["retry"]
                    .as_u64()
                    .or_else(|| l["retry"].as_str().and_then(|r| r.parse().ok())),
            })
            .collect()
    }
}

/// Starts a driver process whose stdout carries the JSON lines.
fn spawn_process(label: String, mut command: tokio::process::Command) -> Observer {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{label}: cannot start {command:?}: {e}"));
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let (mut observer, tx) = Observer::new(label, Box::new(child));
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Value>(&line) {
                Ok(value) => {
                    let _ = tx.send(value);
                }
                Err(_) => {
                    let _ = tx.send(json!({ "kind": "garbage", "text": line }));
                }
            }
        }
    });
    let err = observer.stderr.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut err = err.lock().unwrap();
            if err.len() < 8192 {
                err.push_str(&line);
                err.push('\n');
            }
        }
    });
    observer.label.push_str(" (process)");
    observer
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn report_line(tx: &mpsc::UnboundedSender<Value>, line: Value) {
    let _ = tx.send(line);
}

async fn run_reqwest_eventsource(url: String, tx: mpsc::UnboundedSender<Value>) {
    use reqwest_eventsource::{Event as RE, EventSource};
    let mut source = EventSource::get(url);
    while let Some(item) = source.next().await {
        match item {
            Ok(RE::Open) => report_line(&tx, json!({ "kind": "open" })),
            Ok(RE::Message(m)) => report_line(
                &tx,
                json!({
                    "kind": "event", "type": m.event, "data": m.data, "id": m.id,
                    "retry": m.retry.map(|r| r.as_millis() as u64),
                }),
            ),
            Err(e) => report_line(&tx, json!({ "kind": "error", "message": e.to_string() })),
        }
    }
    report_line(&tx, json!({ "kind": "closed" }));
}

async fn run_eventsource_client(url: String, tx: mpsc::UnboundedSender<Value>) {
    use eventsource_client::{Client as _, ClientBuilder, ReconnectOptions, SSE};
    let transport = match launchdarkly_sdk_transport::HyperTransport::new() {
        Ok(t) => t,
        Err(e) => return report_line(&tx, json!({ "kind": "error", "message": e.to_string() })),
    };
    let builder = match ClientBuilder::for_url(&url) {
        Ok(b) => b,
        Err(e) => return report_line(&tx, json!({ "kind": "error", "message": format!("{e:?}") })),
    };
    // A default delay far from the server's `retry`, so that honouring it shows.
    let client = builder
        .reconnect(
            ReconnectOptions::reconnect(true)
                .delay(Duration::from_secs(10))
                .build(),
        )
        .build_with_transport(transport);
    let mut stream = client.stream();
    while let Some(item) = stream.next().await {
        match item {
            Ok(SSE::Connected(_)) => report_line(&tx, json!({ "kind": "open" })),
            Ok(SSE::Event(e)) => report_line(
                &tx,
                json!({ "kind": "event", "type": e.event_type, "data": e.data, "id": e.id, "retry": e.retry }),
            ),
            Ok(SSE::Comment(text)) => report_line(&tx, json!({ "kind": "comment", "text": text })),
            Err(e) => report_line(&tx, json!({ "kind": "error", "message": format!("{e:?}") })),
        }
    }
    report_line(&tx, json!({ "kind": "closed" }));
}

/// Starts `client` on every one of its scenarios against `demo`.
async fn start_client(client: Client, demo: &Demo) -> HashMap<Scenario, Observer> {
    let mut observers = HashMap::new();
    let label = |s: Scenario| format!("{} {}", client.id(), s.name());
    match client {
        Client::Chromium => {
            let mut reports = demo
                .reports
                .lock()
                .unwrap()
                .take()
                .expect("one browser per demo");
            let query: Vec<String> = client
                .scenarios()
                .iter()
                .map(|s| format!("{}={}", s.name(), urlencode(&s.path())))
                .collect();
            let (browser, profile) = common::chromium::open(
                "tower-sse-compat",
                &format!("{}/__compat/chromium?{}", demo.base, query.join("&")),
            );
            // One browser, its reports sorted out by scenario.
            let mut senders = HashMap::new();
            let mut first = Some((Box::new(browser) as Box<dyn std::any::Any + Send>, profile));
            for &s in client.scenarios() {
                let running: Box<dyn std::any::Any + Send> = match first.take() {
                    Some((browser, profile)) => Box::new((browser, RemoveDirOnDrop(profile))),
                    None => Box::new(()),
                };
                let (observer, tx) = Observer::new(label(s), running);
                senders.insert(s.name().to_owned(), tx);
                observers.insert(s, observer);
            }
            tokio::spawn(async move {
                while let Some(line) = reports.recv().await {
                    if let Some(tx) = line["scenario"].as_str().and_then(|s| senders.get(s)) {
                        let _ = tx.send(line);
                    }
                }
            });
        }
        Client::EventSource4
        | Client::EventSource5
        | Client::FetchEventSource
        | Client::EventSourceParser => {
            for &s in client.scenarios() {
                let mut command = tokio::process::Command::new("node");
                command
                    .arg(manifest_dir().join("tests/compat/node/client.mjs"))
                    .arg(clients_dir().join("node/node_modules"))
                    .arg(client.id())
                    .arg(s.name())
                    .arg(demo.url(s));
                observers.insert(s, spawn_process(label(s), command));
            }
        }
        Client::HttpxSse | Client::SseclientPy | Client::OpenAi => {
            let python = clients_dir().join("venv/bin/python");
            assert!(
                python.exists(),
                "{} is missing: run `bash scripts/compat-clients.sh`",
                python.display()
            );
            for &s in client.scenarios() {
                let url = match s {
                    Scenario::Chat => format!("{}/v1", demo.base),
                    _ => demo.url(s),
                };
                let mut command = tokio::process::Command::new(&python);
                command
                    .arg(manifest_dir().join("tests/compat/python/client.py"))
                    .arg(client.id())
                    .arg(s.name())
                    .arg(url);
                observers.insert(s, spawn_process(label(s), command));
            }
        }
        Client::ReqwestEventSource | Client::LaunchDarkly => {
            for &s in client.scenarios() {
                let url = demo.url(s);
                let (mut observer, tx) = Observer::new(label(s), Box::new(()));
                let task = tokio::spawn(async move {
                    if client == Client::ReqwestEventSource {
                        run_reqwest_eventsource(url, tx).await
                    } else {
                        run_eventsource_client(url, tx).await
                    }
                });
                observer._running = Box::new(AbortOnDrop(task));
                observers.insert(s, observer);
            }
        }
    }
    observers
}

struct RemoveDirOnDrop(PathBuf);

impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// The scenarios: each measures, and returns what it saw.

#[derive(Debug, Default, Clone)]
struct Measured {
    /// Payloads (by name) that arrived with other data, and what arrived.
    data_deviations: Vec<(String, String)>,
    payloads_exact: usize,
    payloads_total: usize,
    /// Messages beyond the payloads (heartbeats surfaced, duplicates).
    spurious: Vec<Got>,
    /// Every payload event carried its id.
    ids_exposed: bool,
    /// The first payload's `retry`, as the client handed it on.
    retry_exposed: Option<u64>,
    /// After the server ended the stream: (Last-Event-ID sent, delay, what was replayed).
    reconnect: Option<Reconnect>,
    /// After the finished typewriter stream: the requests that followed the first.
    after_finished: Vec<(Option<String>, u16)>,
    typewriter_exact: bool,
    /// Empty messages for the blocks scenario's blocks without data.
    block_empty_messages: usize,
    id_only_kept: bool,
    comments_to_app: bool,
    chat_exact: Option<bool>,
}

#[derive(Debug, Clone)]
struct Reconnect {
    last_event_id: Option<String>,
    expected_id: String,
    delay: Duration,
    replayed: Vec<String>,
}

const PAYLOAD_TYPES: [&str; 2] = ["message", "custom"];

async fn events(client: Client, demo: &Demo, obs: &mut Observer) -> Result<Measured, String> {
    let mut m = Measured::default();
    let limit = Duration::from_secs(30);
    obs.wait_for("open", limit, |o| o.has("open")).await?;
    // The server side is open too (the manager has the connection).
    let deadline = Instant::now() + limit;
    while demo.hub.manager.is_empty() {
        if Instant::now() > deadline {
            return Err(format!("{}: the demo never saw the stream", obs.label));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut sent = Vec::new();
    for (i, (name, data)) in payloads().into_iter().enumerate() {
        let ty = PAYLOAD_TYPES[usize::from(i % 3 == 2)];
        let id = demo.publish(&data, ty).await?;
        sent.push((name, data, ty, id));
    }
    let last_id = sent.last().map(|s| s.3.clone()).unwrap_or_default();
    obs.wait_for("every payload", limit, |o| {
        o.events()
            .iter()
            .any(|g| g.id.as_deref() == Some(last_id.as_str()) && g.ty != "connections")
    })
    .await?;
    // Heartbeats keep coming meanwhile: anything they made visible shows up now.
    obs.settle(HEARTBEAT * 5).await;
    let got: Vec<Got> = obs
        .events()
        .into_iter()
        .filter(|g| g.ty != "connections")
        .collect();
    let mut matched = vec![false; got.len()];
    m.payloads_total = sent.len();
    m.ids_exposed = true;
    for (name, data, ty, id) in &sent {
        let found = got
            .iter()
            .enumerate()
            .find(|(i, g)| !matched[*i] && g.id.as_deref() == Some(id.as_str()) && g.ty == *ty);
        match found {
            Some((i, g)) => {
                matched[i] = true;
                if g.data == as_received(data) {
                    m.payloads_exact += 1;
                } else {
                    m.data_deviations.push((name.to_string(), g.data.clone()));
                }
            }
            None => {
                m.ids_exposed = false;
                m.data_deviations
                    .push((name.to_string(), "<missing>".to_owned()));
            }
        }
    }
    m.spurious = got
        .iter()
        .zip(&matched)
        .filter(|(_, matched)| !**matched)
        .map(|(g, _)| g.clone())
        .collect();
    // The server's `retry` rides on the stream's first event that has data (whatever its
    // type); a parser hands it on by itself.
    m.retry_exposed = obs.events().iter().find_map(|g| g.retry);
    if m.retry_exposed.is_none() {
        m.retry_exposed = obs
            .lines
            .iter()
            .find(|l| l["kind"] == "retry")
            .and_then(|l| l["ms"].as_u64());
    }

    // The server ends the stream; two events are published while the client is away.
    let before = demo.requests_to("/events").len();
    let seen_before = obs.lines.len();
    if demo.disconnect().await? < 1 {
        return Err(format!("{}: /disconnect completed no stream", obs.label));
    }
    let ended_at = Instant::now();
    let mut missed = Vec::new();
    for i in 0..2 {
        missed.push(demo.publish(&format!("missed {i}"), "message").await?);
    }
    if !client.expected().reconnects {
        obs.wait_for("the end of the stream", limit, |o| {
            o.lines[seen_before..].iter().any(|l| l["kind"] == "end")
        })
        .await?;
        return Ok(m);
    }
    let deadline = Instant::now() + RETRY * 5;
    let again = loop {
        if let Some(seen) = demo.requests_to("/events").get(before) {
            break seen.clone();
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{}: no reconnect within {:?}",
                obs.label,
                RETRY * 5
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let last_missed = missed[1].clone();
    obs.wait_for("the missed events", limit, |o| {
        o.events()
            .iter()
            .any(|g| g.id.as_deref() == Some(last_missed.as_str()))
    })
    .await?;
    obs.settle(HEARTBEAT * 5).await;
    let replayed = obs.lines[seen_before..]
        .iter()
        .filter(|l| l["kind"] == "event" && l["type"] != "connections")
        .map(|l| l["data"].as_str().unwrap_or_default().to_owned())
        .collect();
    m.reconnect = Some(Reconnect {
        last_event_id: again.last_event_id,
        expected_id: last_id,
        delay: again.at.saturating_duration_since(ended_at),
        replayed,
    });
    Ok(m)
}

async fn typewriter(demo: &Demo, obs: &mut Observer) -> Result<Measured, String> {
    let mut m = Measured::default();
    obs.wait_for("the typewriter's end", Duration::from_secs(30), |o| {
        o.events().iter().any(|g| g.ty == "end")
    })
    .await?;
    let events = obs.events();
    let tokens: String = events
        .iter()
        .filter(|g| g.ty == "token")
        .map(|g| g.data.as_str())
        .collect();
    let end = events.iter().find(|g| g.ty == "end");
    m.typewriter_exact = tokens == TYPEWRITER_TEXT
        && end.and_then(|e| e.id.as_deref()) == Some(DEFAULT_FINISHED_PREFIX.as_str());
    // Long enough for a client that ignores the 204 to come back at least once more.
    obs.settle(RETRY * 3).await;
    m.after_finished = demo
        .requests_to("/typewriter")
        .into_iter()
        .skip(1)
        .map(|s| (s.last_event_id, s.status))
        .collect();
    Ok(m)
}

async fn blocks(obs: &mut Observer) -> Result<Measured, String> {
    let mut m = Measured::default();
    obs.wait_for("the tail event", Duration::from_secs(30), |o| {
        o.events().iter().any(|g| g.data == "tail")
    })
    .await?;
    obs.settle(HEARTBEAT * 5).await;
    let events = obs.events();
    let after = events.iter().position(|g| g.data == "after").unwrap_or(0);
    m.block_empty_messages = events[..after].iter().filter(|g| g.data.is_empty()).count();
    m.id_only_kept = events[after].id.as_deref() == Some("block-7");
    m.comments_to_app = obs.has("comment");
    Ok(m)
}

async fn chat(client: Client, obs: &mut Observer) -> Result<Measured, String> {
    let mut m = Measured::default();
    obs.wait_for("the end of the answer", Duration::from_secs(60), |o| {
        o.has("end") || o.has("error")
    })
    .await?;
    let exact = match client {
        Client::OpenAi => obs.lines.iter().any(|l| {
            l["kind"] == "chat" && l["content"] == app::DEFAULT_ANSWER && l["finish"] == "stop"
        }),
        _ => {
            let events = obs.events();
            let done = events.last().is_some_and(|g| g.data == "[DONE]");
            let chunks: Vec<Value> = events[..events.len().saturating_sub(1)]
                .iter()
                .filter_map(|g| serde_json::from_str(&g.data).ok())
                .collect();
            let all_chunks = chunks.len() + 1 == events.len()
                && chunks
                    .iter()
                    .all(|c| c["object"] == "chat.completion.chunk");
            let content: String = chunks
                .iter()
                .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
                .collect();
            done && all_chunks && content == app::DEFAULT_ANSWER
        }
    };
    if !exact {
        return Err(format!(
            "{}: the chat answer is not exact: {:#?}",
            obs.label,
            obs.tail()
        ));
    }
    m.chat_exact = Some(exact);
    Ok(m)
}

async fn run(client: Client) -> Result<Measured, String> {
    let demo = Demo::start().await;
    let mut observers = start_client(client, &demo).await;
    // Every observer lives until all scenarios are done: one browser serves them all.
    let mut take = |s: Scenario| observers.remove(&s);
    let (mut e, mut t, mut b, mut c) = (
        take(Scenario::Events),
        take(Scenario::Typewriter),
        take(Scenario::Blocks),
        take(Scenario::Chat),
    );
    let (events, typewriter, blocks, chat) = tokio::join!(
        optional(e.as_mut().map(|o| events(client, &demo, o))),
        optional(t.as_mut().map(|o| typewriter(&demo, o))),
        optional(b.as_mut().map(blocks)),
        optional(c.as_mut().map(|o| chat(client, o))),
    );
    let (events, typewriter, blocks, chat) = (events?, typewriter?, blocks?, chat?);
    Ok(Measured {
        after_finished: typewriter.after_finished,
        typewriter_exact: typewriter.typewriter_exact,
        block_empty_messages: blocks.block_empty_messages,
        id_only_kept: blocks.id_only_kept,
        comments_to_app: blocks.comments_to_app,
        chat_exact: chat.chat_exact,
        ..events
    })
}

/// Runs a scenario the client has; one it has not measures nothing.
async fn optional(
    scenario: Option<impl std::future::Future<Output = Result<Measured, String>>>,
) -> Result<Measured, String> {
    match scenario {
        Some(scenario) => scenario.await,
        None => Ok(Measured::default()),
    }
}

// ---------------------------------------------------------------------------------------------
// Checking the measurements against what is expected, and the README's table.

/// The reconnect delay honours `retry`: from 0.9x (0.45x for a client that adds jitter below
/// it) to 1.4x, which excludes every client's own default (300 ms, 1 s, 3 s; 10 s set for
/// eventsource-client).
fn honours_retry(client: Client, delay: Duration) -> bool {
    let low = if client == Client::LaunchDarkly {
        0.45
    } else {
        0.9
    };
    delay >= RETRY.mul_f64(low) && delay <= RETRY.mul_f64(1.4)
}

fn check(client: Client, m: &Measured) -> Vec<String> {
    let x = client.expected();
    let mut problems = Vec::new();
    let mut expect = |ok: bool, what: String| {
        if !ok {
            problems.push(format!("{}: {what}", client.id()));
        }
    };
    if client.scenarios().contains(&Scenario::Events) {
        let deviating: Vec<&str> = m.data_deviations.iter().map(|(n, _)| n.as_str()).collect();
        expect(
            deviating == x.data_deviations,
            format!(
                "data deviations {:?}, expected {:?}",
                m.data_deviations, x.data_deviations
            ),
        );
        expect(
            m.spurious.is_empty(),
            format!("spurious messages {:?}", m.spurious),
        );
        expect(
            m.ids_exposed,
            "an id missing from a payload event".to_owned(),
        );
        let retry_ok = m.retry_exposed == Some(RETRY.as_millis() as u64);
        expect(
            retry_ok == x.exposes_retry,
            format!(
                "retry exposed {:?}, expected it exposed: {}",
                m.retry_exposed, x.exposes_retry
            ),
        );
        match (&m.reconnect, x.reconnects) {
            (Some(r), true) => {
                expect(
                    r.last_event_id.as_deref() == Some(r.expected_id.as_str()),
                    format!(
                        "reconnected with Last-Event-ID {:?}, expected {:?}",
                        r.last_event_id, r.expected_id
                    ),
                );
                expect(
                    honours_retry(client, r.delay),
                    format!("reconnected after {:?}, retry was {RETRY:?}", r.delay),
                );
                expect(
                    r.replayed == ["missed 0", "missed 1"],
                    format!("replayed {:?}", r.replayed),
                );
            }
            (None, false) => {}
            (r, _) => expect(
                false,
                format!("reconnect {r:?}, expected a reconnect: {}", x.reconnects),
            ),
        }
        expect(
            m.typewriter_exact,
            "the typewriter's tokens or its finished id".to_owned(),
        );
        let finished = Some(DEFAULT_FINISHED_PREFIX.as_str().to_owned());
        let stopped = m.after_finished == [(finished.clone(), 204)];
        match (x.reconnects, x.honours_204) {
            (true, true) => expect(
                stopped,
                format!("after the finished stream: {:?}", m.after_finished),
            ),
            (true, false) => expect(
                m.after_finished.len() >= 2
                    && m.after_finished
                        .iter()
                        .all(|r| *r == (finished.clone(), 204)),
                format!(
                    "expected repeated reconnects, each answered 204: {:?}",
                    m.after_finished
                ),
            ),
            (false, _) => expect(
                m.after_finished.is_empty(),
                format!("no reconnect expected: {:?}", m.after_finished),
            ),
        }
        expect(
            m.block_empty_messages == x.block_empty_messages,
            format!(
                "{} empty messages for blocks without data, expected {}",
                m.block_empty_messages, x.block_empty_messages
            ),
        );
        expect(
            m.id_only_kept == x.id_only_kept,
            format!(
                "id of an id-only block kept: {}, expected {}",
                m.id_only_kept, x.id_only_kept
            ),
        );
        expect(
            m.comments_to_app == x.comments_to_app,
            format!(
                "comments handed to the application: {}, expected {}",
                m.comments_to_app, x.comments_to_app
            ),
        );
    }
    if client.scenarios().contains(&Scenario::Chat) {
        expect(m.chat_exact == Some(true), "the chat answer".to_owned());
    }
    problems
}

/// One row of the README's table, from the measurements.
fn row(client: Client, m: &Measured) -> String {
    let mut right = Vec::new();
    let mut deviates = Vec::new();
    let mut advice = Vec::new();
    if client.scenarios().contains(&Scenario::Events) {
        right.push(format!(
            "{}/{} payloads exact",
            m.payloads_exact, m.payloads_total
        ));
        if m.spurious.is_empty() {
            right.push("no spurious message (comment heartbeats)".to_owned());
        }
        if m.ids_exposed {
            right.push("every event's id".to_owned());
        }
        for (name, got) in &m.data_deviations {
            deviates.push(format!("{name} arrives as {got:?}"));
        }
        if !m.data_deviations.is_empty() {
            advice.push("send JSON (`json_data`) when exact bytes matter".to_owned());
        }
        match &m.reconnect {
            Some(r) => {
                if r.last_event_id.as_deref() == Some(r.expected_id.as_str())
                    && r.replayed == ["missed 0", "missed 1"]
                {
                    right.push("resumes by `Last-Event-ID`".to_owned());
                }
                if honours_retry(client, r.delay) {
                    right.push("honours `retry`".to_owned());
                }
            }
            None => {
                deviates.push("no reconnection of its own".to_owned());
                advice.push(if m.retry_exposed.is_some() {
                    "reconnect in app code with the last id as `Last-Event-ID`, after the `retry` it exposes".to_owned()
                } else {
                    "reconnect in app code with the last id as `Last-Event-ID`".to_owned()
                });
            }
        }
        let finished = Some(DEFAULT_FINISHED_PREFIX.as_str().to_owned());
        if m.after_finished == [(finished, 204)] {
            right.push("stops on 204 (finished streams)".to_owned());
        } else if !m.after_finished.is_empty() {
            deviates.push("keeps reconnecting to a finished stream, each time told 204".to_owned());
            advice.push(match client {
                Client::FetchEventSource => {
                    "in `onopen`, treat a 204 as the end: throw a fatal error".to_owned()
                }
                _ => "stop when an event's id starts with the finished prefix".to_owned(),
            });
        }
        if m.block_empty_messages == 0 {
            right.push("ignores blocks without data".to_owned());
        }
        if m.block_empty_messages > 0 {
            deviates.push(format!(
                "an empty message for each block without data ({} of 3)",
                m.block_empty_messages
            ));
            advice.push(match client {
                Client::FetchEventSource => "drop messages with `!data && !event`".to_owned(),
                _ => "drop messages with empty data and the default type".to_owned(),
            });
        }
        if !m.id_only_kept {
            deviates.push("an id-only block's id does not reach the next message".to_owned());
        }
        if m.comments_to_app {
            right.push("comments as items apart from messages".to_owned());
        }
    }
    if m.chat_exact == Some(true) {
        right.push("OpenAI-style chat stream exact".to_owned());
    }
    let cell = |items: Vec<String>| {
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join("; ")
        }
    };
    if advice.is_empty() {
        advice.push("none needed".to_owned());
    }
    format!(
        "| {} | {} | {} | {} | {} |",
        client.title(),
        client.version_cell(),
        cell(right),
        cell(deviates),
        cell(advice)
    )
}

fn table(results: &[(Client, Measured)]) -> String {
    let mut out = String::new();
    out.push_str("| Client | Version | Gets right | Deviates | Advice |\n|---|---|---|---|---|\n");
    for (client, m) in results {
        writeln!(out, "{}", row(*client, m)).unwrap();
    }
    out
}

/// Compares the README's table with `generated`, or rewrites it when asked to.
fn check_readme(generated: &str) -> Result<(), String> {
    let path = manifest_dir().join("README.md");
    let readme = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
    let start = readme
        .find(README_START)
        .ok_or("README.md has no compat-table:start marker")?;
    let end = readme
        .find(README_END)
        .ok_or("README.md has no compat-table:end marker")?;
    let current = readme[start + README_START.len()..end].trim();
    if current == generated.trim() {
        return Ok(());
    }
    if std::env::var_os("TOWER_SSE_UPDATE_README").is_some() {
        let updated = format!(
            "{}{README_START}\n{}\n{}",
            &readme[..start],
            generated.trim(),
            &readme[end..]
        );
        std::fs::write(&path, updated).map_err(|e| e.to_string())?;
        return Ok(());
    }
    Err(format!(
        "README.md's client table differs from the suite's results (target/compat/compat-table.md). \
         Rerun with TOWER_SSE_UPDATE_README=1 to rewrite it.\n--- README\n{current}\n--- measured\n{}",
        generated.trim()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_see_exactly_what_was_sent() {
    let started = Instant::now();
    // Every client must be installed: no skipping.
    for client in Client::ALL {
        let _ = client.version();
    }
    let runs = Client::ALL.map(|client| async move { (client, run(client).await) });
    let outcomes = futures_util::future::join_all(runs).await;
    let mut problems = Vec::new();
    let mut results = Vec::new();
    for (client, outcome) in outcomes {
        match outcome {
            Ok(m) => {
                problems.extend(check(client, &m));
                eprintln!("{}: {m:?}", client.id());
                results.push((client, m));
            }
            Err(e) => problems.push(e),
        }
    }
    let generated = table(&results);
    let dir = manifest_dir().join("target/compat");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("compat-table.md"), &generated).unwrap();
    eprintln!(
        "Chromium {}\n{generated}\ncompat suite: {:?}",
        chromium_version(),
        started.elapsed()
    );
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    check_readme(&generated).unwrap();
}

//! Black box: two demo processes (`examples/demo`, built by this test with the features it
//! was built with) on one `redis-server`, driven over HTTP by real clients only:
//!
//! - an independent parser: reqwest's byte stream decoded by `tests/common/whatwg.rs`;
//! - the browser test's headless Chromium, whose page is served by a load balancer (a TCP
//!   proxy, `tests/common/proxy.rs`) in front of demo A and later demo B, so the browser's
//!   own EventSource reconnects to the *other* instance, as behind a real load balancer.
//!
//! Real processes rather than two routers in process: it is the demo as users run it
//! (`REDIS_URL`, `ADDR`), with nothing shared but Redis. Both check cross-instance delivery,
//! the reconnect to the other instance with replay (no gap, no duplicate), and the ticker
//! (started on A, stopped by `POST /complete` on B, ending with `event: end`).
//!
//! Every wait is bounded; the processes are killed when the test ends, however it ends.
// The demo asks for `metrics` and `tracing` (Cargo.toml, `required-features`).
#![cfg(all(feature = "redis", feature = "metrics", feature = "tracing"))]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::routing;
use axum::Router;
use common::proxy::Proxy;
use common::redis::RedisServer;
use common::sequence;
use common::sse::{eventually, read, Ended, Received};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(15);
const PAGE: &str = include_str!("browser/backplane.html");

/// The demo binary, built now with this test's features and profile (a no-op when
/// `cargo test` has built the examples already, as it does unless told which targets).
fn demo_binary() -> PathBuf {
    let features: Vec<&str> = [
        ("json", cfg!(feature = "json")),
        ("axum", cfg!(feature = "axum")),
        ("redis", cfg!(feature = "redis")),
        ("metrics", cfg!(feature = "metrics")),
        ("tracing", cfg!(feature = "tracing")),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .map(|(name, _)| *name)
    .collect();
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--quiet", "--example", "demo"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if !features.is_empty() {
        build.args(["--features", &features.join(",")]);
    }
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo");
    assert!(status.success(), "cargo build --example demo failed");
    // This test runs from target/<profile>/deps/; examples are in target/<profile>/examples/.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let demo = profile_dir.join("examples").join("demo");
    assert!(demo.exists(), "{} was not built", demo.display());
    demo
}

/// A demo process, killed on drop.
struct Demo {
    addr: SocketAddr,
    child: Child,
}

impl Demo {
    fn spawn(binary: &PathBuf, redis: &RedisServer) -> Demo {
        let mut child = Command::new(binary)
            .env("REDIS_URL", redis.url())
            .env("REDIS_HUB", "black-box")
            .env("ADDR", "127.0.0.1:0")
            .env("HEARTBEAT_MS", "1000")
            .env("RETRY_MS", "300")
            .env("LIVENESS_MS", "3600000")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the demo");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the address it printed, then drains its output so it never blocks.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(addr) = line.strip_prefix("tower-sse demo on http://") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.to_owned());
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(WAIT)
            .expect("the demo printed its address")
            .parse()
            .unwrap();
        Demo { addr, child }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

async fn json(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let body = res.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn post(url: &str, body: &str) -> (u16, Value) {
    json(http().post(url).body(body.to_owned()).send().await.unwrap()).await
}

async fn get_json(url: &str) -> Value {
    json(http().get(url).send().await.unwrap()).await.1
}

/// An SSE client: a streaming GET (no timeout on the body), decoded as it arrives.
async fn sse(url: &str, last_event_id: Option<&str>) -> (Received, JoinHandle<()>) {
    let mut req = reqwest::Client::new()
        .get(url)
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let res = tokio::time::timeout(WAIT, req.send())
        .await
        .expect("response headers in time")
        .unwrap();
    assert_eq!(res.status(), 200, "{url}");
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    read(reqwest::Body::from(res))
}

/// The published events (and gap events) a client received, for the sequence checker.
fn published(r: &Received) -> Vec<(String, String)> {
    r.events()
        .into_iter()
        .filter(|e| e.event_type == "message" || e.event_type == sequence::GAP)
        .map(|e| (e.last_event_id, e.event_type))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_demo_processes_behave_as_one_hub() {
    let binary = demo_binary();
    let redis = RedisServer::start();
    let a = Demo::spawn(&binary, &redis);
    let b = Demo::spawn(&binary, &redis);
    let (ia, ib) = (
        get_json(&a.url("/stats")).await["instance"].clone(),
        get_json(&b.url("/stats")).await["instance"].clone(),
    );
    assert_ne!(ia, ib, "two instances");

    parser_client(&a, &b, &redis).await;
    chromium_client(&a, &b, &ia, &ib).await;
}

/// The independent parser's half.
async fn parser_client(a: &Demo, b: &Demo, _redis: &RedisServer) {
    // Cross-instance delivery, to all and to a key.
    let u1 = sse(&a.url("/events?key=u1"), None).await;
    let u2 = sse(&b.url("/events?key=u2"), None).await;
    let (status, sent) = post(&b.url("/publish"), "hello from B").await;
    assert_eq!(status, 200, "{sent}");
    let id = sent["id"].as_str().expect("the broker's id").to_owned();
    for (r, _) in [&u1, &u2] {
        eventually("B's publish", WAIT, || r.has_data("hello from B")).await;
    }
    assert_eq!(published(&u1.0), [(id.clone(), "message".to_owned())]);
    let (status, sent) = post(&b.url("/publish?key=u1"), "only u1").await;
    assert_eq!((status, &sent["id"]), (200, &Value::Null), "not recorded");
    post(&a.url("/publish"), "marker").await;
    for (r, _) in [&u1, &u2] {
        eventually("the marker", WAIT, || r.has_data("marker")).await;
    }
    assert_eq!(
        u1.0.data_of("message"),
        ["hello from B", "only u1", "marker"]
    );
    assert_eq!(u2.0.data_of("message"), ["hello from B", "marker"]);

    // The cluster view from either instance.
    eventually_json(&b.url("/stats"), |s| {
        s["cluster"]["open"] == 2 && s["cluster"]["instances"].as_array().unwrap().len() == 2
    })
    .await;

    // Reconnect to the other instance with Last-Event-ID: exactly what was missed.
    let u3 = sse(&a.url("/events?key=u3"), None).await;
    let mut before = Vec::new();
    for i in 0..3 {
        before.push(post(&a.url("/publish"), &format!("seen {i}")).await.1["id"].clone());
    }
    eventually("three events", WAIT, || u3.0.data_of("message").len() == 3).await;
    let last = u3.0.events().last().unwrap().last_event_id.clone();
    u3.1.abort();
    let first_session = u3.0;
    let mut missed = Vec::new();
    for i in 0..3 {
        missed.push(post(&a.url("/publish"), &format!("missed {i}")).await.1["id"].clone());
    }
    let u3b = sse(&b.url("/events?key=u3"), Some(&last)).await;
    post(&b.url("/publish"), "live").await;
    eventually("the live event on B", WAIT, || u3b.0.has_data("live")).await;
    assert_eq!(
        u3b.0.data_of("message"),
        ["missed 0", "missed 1", "missed 2", "live"]
    );
    let ids: Vec<Value> = published(&u3b.0)[..3]
        .iter()
        .map(|(id, _)| Value::from(id.as_str()))
        .collect();
    assert_eq!(ids, missed);
    let mut both = published(&first_session);
    both.extend(published(&u3b.0));
    let summary = sequence::check(&both).unwrap();
    assert_eq!((summary.events, summary.gaps), (7, 0));
    assert_eq!(get_json(&b.url("/stats")).await["resumed"], 1);

    // Runtime topics across instances: subscribe on B, publish on B (one writer, so the
    // broker keeps their order), unsubscribe on B.
    let (status, answer) = post(&b.url("/subscribe?key=u1&topic=red"), "").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["subscribed"], true);
    post(&b.url("/publish?topic=red"), "red 1").await;
    eventually("the topic's event on A", WAIT, || u1.0.has_data("red 1")).await;
    let (status, answer) = post(&b.url("/unsubscribe?key=u1&topic=red"), "").await;
    assert_eq!((status, &answer["subscribed"]), (200, &Value::from(false)));
    post(&b.url("/publish?topic=red"), "red 2").await;
    post(&b.url("/publish"), "marker 2").await;
    eventually("the second marker", WAIT, || u1.0.has_data("marker 2")).await;
    assert!(!u1.0.has_data("red 2"));
    let (status, _) = post(&b.url("/subscribe?key=u1"), "").await;
    assert_eq!(status, 400, "a topic is required");

    // The ticker: started on A, stopped on B.
    let ticker = sse(&a.url("/ticker?key=tok-1&interval_ms=50"), None).await;
    eventually("three ticks", WAIT, || ticker.0.data_of("tick").len() >= 3).await;
    let (status, answer) = post(&b.url("/complete?key=tok-1"), "stopped on B").await;
    assert_eq!(status, 200, "{answer}");
    eventually("the ticker ends", WAIT, || ticker.0.ended().is_some()).await;
    assert_eq!(ticker.0.ended(), Some(Ended::Clean));
    let events = ticker.0.events();
    let end = events.last().unwrap();
    assert_eq!(
        (end.event_type.as_str(), end.data.as_str()),
        ("end", "stopped on B")
    );
    let ticks = ticker.0.data_of("tick");
    let expected: Vec<String> = (1..=ticks.len()).map(|n| n.to_string()).collect();
    assert_eq!(ticks, expected);
    assert!(end
        .last_event_id
        .starts_with(tower_sse::DEFAULT_FINISHED_PREFIX.as_str()));
    // Finished for good: a reconnect with the end's id is told 204, on either instance.
    for demo in [a, b] {
        let res = http()
            .get(demo.url("/ticker?key=tok-1"))
            .header("accept", "text/event-stream")
            .header("last-event-id", &end.last_event_id)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204);
    }
    let _ = (u1, u2, u3b);
}

async fn eventually_json(url: &str, cond: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = get_json(url).await;
        if cond(&v) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{url}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The browser's half: the page reports to this server; one step ("switch") needs the test
/// to move the load balancer.
async fn chromium_client(a: &Demo, b: &Demo, ia: &Value, ib: &Value) {
    let (steps_tx, mut steps) = mpsc::channel::<Value>(4);
    let (report_tx, mut reports) = mpsc::channel::<Value>(1);
    let routes = Router::new()
        .route(
            "/step",
            routing::post(move |body: String| {
                let tx = steps_tx.clone();
                async move {
                    let _ = tx
                        .send(serde_json::from_str(&body).unwrap_or_default())
                        .await;
                }
            }),
        )
        .route(
            "/report",
            routing::post(move |body: String| {
                let tx = report_tx.clone();
                async move {
                    let _ = tx
                        .send(serde_json::from_str(&body).unwrap_or_default())
                        .await;
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let test_addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, routes).await });
    let lb = Proxy::with_page(a.addr, "/__backplane_test", PAGE).await;

    let page = format!(
        "http://{}/__backplane_test?a=http://{}&b=http://{}&test=http://{test_addr}",
        lb.addr, a.addr, b.addr
    );
    let (mut browser, profile) = common::chromium::open("tower-sse-chromium-backplane", &page);

    let run = async {
        // The switch: every new connection goes to B, the browser's stream is cut, and events
        // are published on A while it is away. The reconnect is held back until B has read
        // them, so the replay (not the live stream) must deliver them.
        let step = steps.recv().await.expect("the page's switch step");
        assert_eq!(step["step"], "switch", "{step}");
        lb.set_upstream(b.addr);
        lb.pause();
        lb.cut();
        let mut missed = Vec::new();
        for i in 0..3 {
            missed.push(post(&a.url("/publish"), &format!("missed {i}")).await.1["id"].clone());
        }
        let probe = sse(&b.url("/events"), step["lastSeen"].as_str()).await;
        eventually("B has read them", WAIT, || probe.0.has_data("missed 2")).await;
        lb.resume();
        let report = reports.recv().await.expect("the page's report");
        (step, missed, report)
    };
    let outcome = tokio::time::timeout(Duration::from_secs(60), run).await;
    let _ = browser.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
    server.abort();
    let (step, missed, report) = outcome.expect("the browser reported within 60 s");
    if let Some(error) = report.get("error") {
        panic!(
            "browser test page failed: {}",
            error.as_str().unwrap_or_default()
        );
    }

    // Published on B, received by the browser's stream on A; the key send too, with no id.
    let cross = &report["cross"];
    assert_eq!(
        &cross["first"], ia,
        "the load balancer sent the browser to A first"
    );
    let messages = cross["messages"].as_array().unwrap();
    let data: Vec<&str> = messages
        .iter()
        .map(|m| m["data"].as_str().unwrap())
        .collect();
    assert_eq!(data, ["from B 0", "from B 1", "from B 2"]);
    assert_eq!(cross["keyed"]["lastEventId"], messages[2]["lastEventId"]);

    // The ticker started on A, completed by B: its ticks, then `end` with the body, finished
    // (the browser's reconnect was told 204: it closed by itself, after one open).
    let ticker = &report["ticker"];
    let events = ticker["events"].as_array().unwrap();
    let end = events.last().unwrap();
    assert_eq!(
        (&end["type"], &end["data"]),
        (&"end".into(), &"stopped on B".into())
    );
    assert!(end["lastEventId"]
        .as_str()
        .unwrap()
        .starts_with(tower_sse::DEFAULT_FINISHED_PREFIX.as_str()));
    let ticks: Vec<&str> = events[..events.len() - 1]
        .iter()
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert!(ticks.len() >= 3);
    assert!(ticks
        .iter()
        .enumerate()
        .all(|(i, t)| *t == (i + 1).to_string()));
    assert_eq!(
        (&ticker["opens"], &ticker["readyState"]),
        (&1.into(), &2.into())
    );

    // Reconnected through the load balancer to B: exactly the three it missed, with their
    // ids, then nothing more. No gap, no duplicate.
    let other = &report["other"];
    assert_eq!(other["lastSeen"], step["lastSeen"]);
    assert_eq!(&other["instance"], ib, "now on B");
    assert_eq!(other["opens"], 2);
    let after = other["after"].as_array().unwrap();
    let got: Vec<(&Value, &Value)> = after
        .iter()
        .map(|e| (&e["lastEventId"], &e["data"]))
        .collect();
    let want: Vec<(&Value, Value)> = missed
        .iter()
        .enumerate()
        .map(|(i, id)| (id, Value::from(format!("missed {i}"))))
        .collect();
    assert_eq!(got.len(), 3, "{after:?}");
    for ((gid, gdata), (wid, wdata)) in got.iter().zip(&want) {
        assert_eq!((*gid, *gdata), (*wid, wdata));
    }

    // The demo page, loaded through the load balancer (now to B): it names its instance,
    // shows the hub's totals, and its topic switcher works across instances.
    eprintln!("browser report: {report}");
    let page = &report["page"];
    let ib = ib.as_str().unwrap();
    assert!(page["instance"].as_str().unwrap().starts_with(ib), "{page}");
    assert!(
        page["hub"].as_str().unwrap().contains("2 instance(s)"),
        "{page}"
    );
    assert_eq!(page["watching"], "red");
    assert_eq!(page["shown"], true, "{page}");
}

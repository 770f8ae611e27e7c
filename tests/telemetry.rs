//! The `metrics` feature: counters and gauges move exactly as streams open, send and close
//! for every reason, and agree with `Stats`. (The `tracing` feature: `telemetry_tracing.rs`.)
#![cfg(feature = "metrics")]

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use futures_util::FutureExt;
use http::{Request, Response};
use http_body_util::BodyExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::time::advance;
use tokio_util::sync::CancellationToken;
use tower::{service_fn, Layer, ServiceExt};
use tower_sse::layer::ResponseBody;
use tower_sse::{
    telemetry, CloseReason, Completion, Connect, ConnectionBody, ConnectionManager, Event,
    LastEventId, SseContext, SseLayer,
};

/// Every counter and gauge so far, by name and labels (`name{label=value}`). The debugging
/// recorder hands out what changed since its last snapshot (it swaps values to 0), so the
/// changes are added up here.
struct Totals {
    snapshotter: Snapshotter,
    sums: HashMap<String, f64>,
}

impl Totals {
    fn now(&mut self) -> HashMap<String, f64> {
        for (name, delta) in values(&self.snapshotter) {
            *self.sums.entry(name).or_default() += delta;
        }
        self.sums.clone()
    }
}

/// What changed since the last snapshot, by name and labels.
fn values(snapshotter: &Snapshotter) -> HashMap<String, f64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let key = key.key();
            let mut name = key.name().to_owned();
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            if !labels.is_empty() {
                name = format!("{name}{{{}}}", labels.join(","));
            }
            match value {
                DebugValue::Counter(n) => Some((name, n as f64)),
                DebugValue::Gauge(g) => Some((name, g.into_inner())),
                DebugValue::Histogram(_) => None,
            }
        })
        .collect()
}

fn closed(reason: &str) -> String {
    format!("{}{{reason={reason}}}", telemetry::STREAMS_CLOSED)
}

/// A layered service whose handler connects to `manager`, and one stream from it.
async fn layered(
    manager: &ConnectionManager,
    layer: &SseLayer,
    cancel_own_token: bool,
) -> ResponseBody<ConnectionBody> {
    let m = manager.clone();
    let svc = layer.layer(service_fn(move |req: Request<()>| {
        let m = m.clone();
        async move {
            let ctx = req.extensions().get::<SseContext>().cloned().unwrap();
            if cancel_own_token {
                ctx.cancellation_token().cancel();
            }
            let (_h, body) = m.connect(Connect::new().context(&ctx)).unwrap();
            Ok::<_, Infallible>(body.into_response())
        }
    }));
    let res: Response<_> = svc.oneshot(Request::new(())).await.unwrap();
    res.into_body()
}

fn poll(body: &mut (impl http_body::Body<Data = bytes::Bytes> + Unpin)) {
    while let Some(Some(Ok(_))) = body.frame().now_or_never() {}
}

#[tokio::test(start_paused = true)]
async fn metrics_move_exactly_for_every_close_reason_and_agree_with_stats() {
    // The process's recorder, as a server installs one at start (the only metrics test of
    // this binary): per-topic gauges are registered as topics appear.
    let recorder = DebuggingRecorder::new();
    let mut totals = Totals {
        snapshotter: recorder.snapshotter(),
        sums: HashMap::new(),
    };
    recorder.install().expect("the only recorder");
    let shutdown = CancellationToken::new();
    let m = ConnectionManager::builder()
        .queue_capacity(2)
        .topic_metrics(1)
        .build();
    let layer = SseLayer::new()
        .heartbeat_interval(Duration::from_secs(1))
        .shutdown_token(shutdown.clone());
    let timed = SseLayer::new()
        .disable_heartbeat()
        .max_lifetime(Duration::from_secs(30));

    // Completed, CompletedWithError, ClientGone, Evicted, SlowConsumer, IdleTimeout.
    let (a, mut a_body) = m.connect(Connect::new().topic("t")).unwrap();
    let (b, mut b_body) = m.connect(Connect::new().topic("u")).unwrap();
    let (_c, c_body) = m.connect(Connect::new()).unwrap();
    let (d, _d_body) = m.connect(Connect::new()).unwrap();
    let (e, mut e_body) = m.connect(Connect::new()).unwrap();
    let (_f, _f_body) = m.connect(Connect::new()).unwrap();
    let v = totals.now();
    assert_eq!(v[telemetry::STREAMS_OPEN], 6.0);
    assert_eq!(v[telemetry::STREAMS_OPENED], 6.0);
    assert_eq!(
        v[&format!("{}{{topic=t}}", telemetry::TOPIC_SUBSCRIBERS)],
        1.0
    );
    assert_eq!(
        v[&format!("{}{{topic=_other}}", telemetry::TOPIC_SUBSCRIBERS)],
        1.0,
        "past the cap of one topic"
    );

    m.publish(Event::message("1")).unwrap();
    for body in [&mut a_body, &mut b_body, &mut e_body] {
        poll(body);
    }
    assert!(a.complete_with(Completion::with(Event::message("bye"))));
    assert!(b.complete_with_error(Event::message("failed")));
    poll(&mut a_body);
    poll(&mut b_body);
    drop(c_body);
    assert!(d.evict());
    e.send(Event::message("x")).unwrap();
    assert!(e.send(Event::message("y")).is_ok());
    assert!(
        e.send(Event::message("z")).is_err(),
        "past the capacity of 2"
    );
    poll(&mut e_body);
    advance(Duration::from_secs(10)).await;
    assert_eq!(m.evict_idle(Duration::from_secs(5)), 1, "f");

    // Lifetime, Shutdown and Cancelled, through the layer.
    let mut g = layered(&m, &timed, false).await;
    let mut h = layered(&m, &layer, false).await;
    let mut i = layered(&m, &layer, true).await;
    // A heartbeat on h, then the lifetime ends g.
    advance(Duration::from_millis(1500)).await;
    poll(&mut h);
    advance(Duration::from_secs(30)).await;
    poll(&mut g);
    poll(&mut i);
    shutdown.cancel();
    poll(&mut h);
    drop((g, h, i, a_body, b_body, e_body));
    m.publish(Event::message("2")).unwrap();
    let (_r, r_body) = m
        .connect(Connect::new().last_event_id(LastEventId::parse("nope").unwrap()))
        .unwrap();
    drop(r_body);

    let v = totals.now();
    let stats = m.stats();
    for reason in CloseReason::ALL {
        let n = stats.closed.get(&reason).copied().unwrap_or(0);
        // The reconnect with a garbage id left too.
        let expected = if reason == CloseReason::ClientGone {
            2
        } else {
            1
        };
        assert_eq!(n, expected, "{reason}: {stats:?}");
        assert_eq!(v[&closed(reason.as_str())], n as f64, "{reason}");
    }
    assert_eq!(v[telemetry::STREAMS_OPEN], 0.0);
    assert_eq!(v[telemetry::STREAMS_OPENED], stats.connected as f64);
    assert_eq!(v[telemetry::EVENTS], stats.events as f64);
    assert_eq!(v[telemetry::DELIVERIES], stats.deliveries as f64);
    assert_eq!(v[telemetry::DROPPED], stats.dropped as f64);
    assert_eq!(v[telemetry::GAPS], 1.0);
    assert_eq!(v[telemetry::GAPS], stats.gaps as f64);
    assert_eq!(v[telemetry::WRITTEN_BYTES], stats.bytes_written as f64);
    assert!(stats.bytes_written > 0);
    assert_eq!(
        v[&format!("{}{{topic=t}}", telemetry::TOPIC_SUBSCRIBERS)],
        0.0
    );
    // The layer's side.
    assert_eq!(v[telemetry::LAYER_STREAMS], 3.0);
    assert_eq!(v[telemetry::HEARTBEATS], 1.0);
    for (reason, n) in [("lifetime", 1.0), ("shutdown", 1.0), ("cancelled", 1.0)] {
        assert_eq!(
            v[&format!("{}{{reason={reason}}}", telemetry::LAYER_ENDED)],
            n,
            "{reason}"
        );
    }
}

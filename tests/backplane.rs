//! Several `ConnectionManager`s joined by the Redis backplane, in one process, on a real
//! `redis-server` (each test starts its own on a free loopback port: `tests/common/redis.rs`).
//! Three managers stand for three replicas behind a load balancer: what one is asked to do
//! must reach the connections of all of them, and a client must be able to resume on any.
//!
//! The timings are real (a real Redis cannot run on tokio's paused clock), so they are
//! short and every wait is bounded: [`eventually`] gives up after a limit and fails the test.
//! Fault injection (SIGSTOP, killed connections, a restart) is checked by one checker over
//! the ids every client received (`tests/common/sequence.rs`): one contiguous run of broker
//! numbers, or an explicit gap event at each break. Never a hole, never a duplicate.
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use common::redis::RedisServer;
use common::sequence::{self, GAP};
use common::sse::{eventually, read, Received};
use tokio::task::JoinHandle;
use tower_sse::backplane::{RedisBackplane, RedisBackplaneBuilder};
use tower_sse::manager::{Connect, ConnectionManager};
use tower_sse::{Event, LastEventId};

/// Long enough for anything that works (a round trip through Redis takes well under a
/// millisecond on loopback), short enough that a failure is quick.
const WAIT: Duration = Duration::from_secs(10);

/// One replica: a manager and its backplane.
struct Instance {
    manager: ConnectionManager,
    redis: RedisBackplane,
}

fn fast(builder: RedisBackplaneBuilder) -> RedisBackplaneBuilder {
    builder
        .block_time(Duration::from_millis(200))
        .presence_interval(Duration::from_millis(100))
}

async fn instance_with(
    url: &str,
    hub: &str,
    tune: impl FnOnce(RedisBackplaneBuilder) -> RedisBackplaneBuilder,
) -> Instance {
    let redis = tune(fast(RedisBackplane::builder(url).hub(hub)))
        .connect()
        .await
        .expect("connect to redis");
    let manager = ConnectionManager::builder()
        .backplane(redis.clone())
        .build();
    Instance { manager, redis }
}

async fn instance(url: &str, hub: &str) -> Instance {
    instance_with(url, hub, |b| b).await
}

async fn three(url: &str, hub: &str) -> [Instance; 3] {
    [
        instance(url, hub).await,
        instance(url, hub).await,
        instance(url, hub).await,
    ]
}

/// A client of `manager`, read on a task.
fn client(manager: &ConnectionManager, options: Connect) -> (Received, JoinHandle<()>) {
    let (_handle, body) = manager.connect(options).expect("connect");
    read(body)
}

fn msg(data: &str) -> Event {
    Event::message(data)
}

/// Publishes through `manager` and waits for the broker's id.
async fn publish(manager: &ConnectionManager, data: &str) -> String {
    let d = manager
        .publish_confirmed(msg(data))
        .await
        .expect("published");
    d.id.expect("a broker id").to_string()
}

// ---------------------------------------------------------------------------------------------
// The checker itself: it must fail on a hole and on a duplicate, or its passes mean nothing.

fn seq(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(id, t)| (id.to_string(), t.to_string()))
        .collect()
}

#[test]
fn the_checker_takes_contiguous_runs_and_gaps_at_breaks() {
    let ok = sequence::check(&seq(&[
        ("a-1", "message"),
        ("a-2", "message"),
        ("a-3", "message"),
        ("a-3", GAP),
        ("a-9", "message"),
        ("a-10", "message"),
        ("a-10", GAP),
        ("b-1", "message"),
        ("b-2", "message"),
    ]))
    .unwrap();
    assert_eq!(ok.events, 7);
    assert_eq!(ok.gaps, 2);
    assert_eq!(ok.epochs, ["a", "b"]);
    assert_eq!(ok.first, Some(("a".into(), 1)));
    assert_eq!(ok.last, Some(("b".into(), 2)));
    // A gap first (a client resuming from an id nobody holds) is fine too.
    assert!(sequence::check(&seq(&[("", GAP), ("a-5", "message")])).is_ok());
}

#[test]
fn the_checker_finds_a_hole() {
    let err = sequence::check(&seq(&[
        ("a-1", "message"),
        ("a-2", "message"),
        ("a-4", "message"),
    ]))
    .unwrap_err();
    assert!(err.contains("hole between a-2 and a-4"), "{err}");
}

#[test]
fn the_checker_finds_a_duplicate() {
    let err = sequence::check(&seq(&[
        ("a-1", "message"),
        ("a-2", "message"),
        ("a-2", GAP),
        ("a-2", "message"),
    ]))
    .unwrap_err();
    assert!(err.contains("duplicate a-2"), "{err}");
}

#[test]
fn the_checker_finds_the_other_wrong_sequences() {
    let wrong = [
        // A new epoch with no gap event.
        &[("a-1", "message"), ("b-1", "message")][..],
        // Backwards, even after a gap.
        &[("a-5", "message"), ("a-5", GAP), ("a-3", "message")],
        // An epoch that comes back.
        &[("a-1", "message"), ("", GAP), ("b-1", "message"), ("", GAP), ("a-2", "message")],
        // An event without a broker id.
        &[("a-1", "message"), ("7", "message")],
    ];
    for items in wrong {
        assert!(sequence::check(&seq(items)).is_err(), "{items:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Publish anywhere, deliver everywhere; targeted operations wherever the connection lives.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_any_instance_reaches_every_instance_once_in_order() {
    let redis = RedisServer::start();
    let [a, b, c] = three(&redis.url(), "publish").await;
    let clients: Vec<(Received, JoinHandle<()>)> = [&a, &b, &c]
        .iter()
        .flat_map(|i| [client(&i.manager, Connect::new()), client(&i.manager, Connect::new())])
        .collect();
    // Each instance publishes its own run; they interleave in the broker.
    let mut publishers = Vec::new();
    for (name, inst) in [("a", &a), ("b", &b), ("c", &c)] {
        let m = inst.manager.clone();
        publishers.push(tokio::spawn(async move {
            for i in 0..20 {
                m.publish(msg(&format!("{name}{i}"))).unwrap();
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    for (r, _) in &clients {
        eventually("60 events", WAIT, || r.events().len() == 60).await;
    }
    let first = clients[0].0.events();
    for (r, _) in &clients {
        let events = r.events();
        // Exactly once each, every instance's run in its own order...
        for name in ["a", "b", "c"] {
            let run: Vec<String> = events
                .iter()
                .map(|e| e.data.clone())
                .filter(|d| d.starts_with(name))
                .collect();
            let sent: Vec<String> = (0..20).map(|i| format!("{name}{i}")).collect();
            assert_eq!(run, sent);
        }
        // ...and the same one order, with the same broker ids, on every instance.
        assert_eq!(events, first);
        let summary = sequence::check(&r.ids()).unwrap();
        assert_eq!((summary.events, summary.gaps), (60, 0));
    }
    // Nothing more arrives: no duplicate from another instance.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(clients.iter().all(|(r, _)| r.events().len() == 60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_and_key_sends_reach_their_connections_on_every_instance() {
    let redis = RedisServer::start();
    let [a, b, c] = three(&redis.url(), "targeted").await;
    let prices_b = client(&b.manager, Connect::new().topic("prices"));
    let prices_c = client(&c.manager, Connect::new().topic("prices"));
    let other_a = client(&a.manager, Connect::new().topic("news"));
    let user_b = client(&b.manager, Connect::new().key("user-7"));
    let user_c = client(&c.manager, Connect::new().key("user-7"));
    let nobody_c = client(&c.manager, Connect::new().key("user-8"));

    a.manager
        .publish_topic("prices", msg("EUR 1.08"))
        .expect("handed to the broker");
    let sent = a.manager.send_to_key("user-7", msg("just for you")).unwrap();
    assert_eq!(sent.delivered, 0, "counted where it is delivered, not here");
    // Marks the end: once it arrives, everything before it has.
    a.manager.publish(msg("end")).unwrap();
    for (r, _) in [&prices_b, &prices_c, &other_a, &user_b, &user_c, &nobody_c] {
        eventually("the end marker", WAIT, || r.has_data("end")).await;
    }
    for (r, _) in [&prices_b, &prices_c] {
        assert_eq!(r.data_of("message"), ["EUR 1.08", "end"]);
    }
    for (r, _) in [&user_b, &user_c] {
        assert_eq!(r.data_of("message"), ["just for you", "end"]);
    }
    for (r, _) in [&other_a, &nobody_c] {
        assert_eq!(r.data_of("message"), ["end"]);
    }
    // The topic publish is recorded with a broker id; the key send is not (no id: it is not
    // replayed), so the client keeps the id it had.
    let ids = prices_b.0.ids();
    assert!(ids[0].0.ends_with("-1"), "{ids:?}");
    let ids = user_b.0.ids();
    assert_eq!(ids[0].0, "", "a key send carries no id: {ids:?}");
}

//! What the manager holds, counted by an instrumented allocator: bytes per idle connection,
//! per topic, per reconnect with a garbage `Last-Event-ID`, and nothing left once
//! everything has gone.
//!
//! One test function, run in steps: the allocator counts the whole process, so nothing else
//! may allocate meanwhile. The figures are printed (`cargo test --test memory -- --nocapture`)
//! and each is held to a bound.

use std::alloc::System;

use futures_util::FutureExt;
use http_body_util::BodyExt;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use tower_sse::manager::{Connect, ConnectionBody, ConnectionHandle, ConnectionManager, Replay};
use tower_sse::{Event, LastEventId};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not freed, process-wide (`stats_alloc` counts a reallocation's growth
/// in `bytes_allocated` and its shrinking in `bytes_deallocated`).
fn live() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

fn per(bytes: i64, n: usize) -> i64 {
    bytes / n as i64
}

type Conns = Vec<(ConnectionHandle, ConnectionBody)>;

/// Polls every body once, as a server would after writing: each parks.
fn park_all(conns: &mut Conns) {
    for (_, body) in conns.iter_mut() {
        while let Some(Some(_)) = body.frame().now_or_never() {}
    }
}

#[test]
fn memory_per_connection_topic_and_replay_and_nothing_left_behind() {
    const N: usize = 10_000;
    const TOPICS: usize = 100_000;
    let start = live();
    let m = ConnectionManager::builder()
        .replay(10_000, None)
        .queue_capacity(1024)
        .build();

    // Idle connections, parked as a server leaves them.
    let before = live();
    let mut conns: Conns = (0..N).map(|_| m.connect(Connect::new()).unwrap()).collect();
    park_all(&mut conns);
    let idle = per(live() - before, N);
    println!("idle connection: {idle} B (the handle and the body included)");
    assert!(idle <= 600, "an idle connection costs {idle} B");

    // Topics with one subscriber each.
    let (h, mut body) = m.connect(Connect::new()).unwrap();
    let before = live();
    let topics: Vec<String> = (0..TOPICS).map(|i| format!("topic-{i:06}")).collect();
    let names = live() - before;
    let mut subscribers: Conns = Vec::with_capacity(TOPICS);
    let before = live();
    for t in &topics {
        subscribers.push(m.connect(Connect::new().topic(t.as_str())).unwrap());
    }
    let with_topic = per(live() - before, TOPICS);
    println!(
        "connection with its own topic: {with_topic} B, of which the topic about {} B \
         (names {} B each, not counted)",
        with_topic - idle,
        per(names, TOPICS)
    );
    assert!(
        with_topic - idle <= 500,
        "a topic with one subscriber costs {} B",
        with_topic - idle
    );
    drop(subscribers);
    assert_eq!(
        m.topic_count(),
        0,
        "unused topics without history are freed"
    );
    drop((h, body.frame().now_or_never(), body));

    // 10,000 events of history; 1,000 reconnects with a garbage id cost what fresh
    // connections cost: replay is a position, and an unknown id starts at the end.
    for i in 0..10_000 {
        m.publish(Event::message(format!("event {i} {}", "x".repeat(64))))
            .unwrap();
    }
    park_all(&mut conns);
    let mut fresh: Conns = Vec::with_capacity(1000);
    let before = live();
    for _ in 0..1000 {
        fresh.push(m.connect(Connect::new()).unwrap());
    }
    let fresh_cost = per(live() - before, 1000);
    let garbage = LastEventId::parse("garbage-id").unwrap();
    let mut gap: Conns = Vec::with_capacity(1000);
    let before = live();
    for _ in 0..1000 {
        gap.push(
            m.connect(Connect::new().last_event_id(garbage.clone()))
                .unwrap(),
        );
    }
    let gap_cost = per(live() - before, 1000);
    assert_eq!(gap[0].0.replay(), Replay::Gap(0));
    println!("reconnect with a garbage id: {gap_cost} B, fresh: {fresh_cost} B");
    assert!(gap_cost <= fresh_cost + 1024);
    // Even resuming from the oldest event, 9,999 missed events cost no copy.
    let oldest = m.publish(Event::message("mark")).unwrap().id.unwrap();
    for i in 0..5_000 {
        m.publish(Event::message(format!("after {i}"))).unwrap();
    }
    let before = live();
    let (r, r_body) = m
        .connect(Connect::new().last_event_id(LastEventId::parse(&oldest).unwrap()))
        .unwrap();
    let resumed = live() - before;
    assert_eq!(r.replay(), Replay::Resumed(5_000));
    println!("resuming 5,000 missed events: {resumed} B");
    assert!(resumed <= fresh_cost + 1024);

    drop((conns, fresh, gap, r, r_body, topics));
    assert_eq!(m.len(), 0);
    println!(
        "with the manager still alive: {} B (history {} B)",
        live() - start,
        m.history_bytes()
    );
    drop(m);
    let left = live() - start;
    println!("left after everything was dropped: {left} B");
    assert!(left.abs() < 64 * 1024, "{left} B still held");
}

//! Topics at runtime: subscribe and unsubscribe while events flow, the effect point of each,
//! order across topics, limits, hooks, replay after a topic change, and state freed when a
//! topic is no longer used.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::whatwg::decode;
use futures_util::FutureExt;
use http_body_util::BodyExt;
use tower_sse::manager::{Connect, ConnectionBody, ConnectionManager, Replay};
use tower_sse::{Event, LastEventId};

/// The data of every event a body has ready now.
fn ready(body: &mut ConnectionBody) -> Vec<String> {
    let mut bytes = Vec::new();
    while let Some(Some(frame)) = body.frame().now_or_never() {
        let data: Bytes = frame.expect("no abort").into_data().expect("data frame");
        bytes.extend_from_slice(&data);
    }
    decode(&bytes).events.into_iter().map(|e| e.data).collect()
}

fn id(s: &str) -> Option<LastEventId> {
    LastEventId::parse(s).unwrap()
}

#[tokio::test]
async fn subscribe_then_publish_is_delivered_publish_then_subscribe_is_not() {
    let m = ConnectionManager::new();
    let (h, mut body) = m.connect(Connect::new()).unwrap();
    m.publish_topic("news", Event::message("before")).unwrap();
    assert_eq!(h.subscribe("news"), Ok(true));
    assert!(h.has_topic("news"));
    let d = m.publish_topic("news", Event::message("after")).unwrap();
    assert_eq!(d.delivered, 1);
    m.publish(Event::message("to all")).unwrap();
    assert_eq!(ready(&mut body), ["after", "to all"]);
    assert_eq!(m.stats().open_per_topic.get("news"), Some(&1));
}

#[tokio::test]
async fn unsubscribe_drops_what_was_published_and_not_yet_sent() {
    let m = ConnectionManager::new();
    let (h, mut body) = m.connect(Connect::new().topic("a").topic("b")).unwrap();
    m.publish_topic("a", Event::message("a1")).unwrap();
    m.publish_topic("b", Event::message("b1")).unwrap();
    m.publish(Event::message("all1")).unwrap();
    m.publish_topic("b", Event::message("b2")).unwrap();
    h.send(Event::message("own")).unwrap();
    assert_eq!(h.queued(), 5);
    // Nothing of b was written yet: none of it is sent.
    assert!(h.unsubscribe("b"));
    assert!(!h.unsubscribe("b"), "only once");
    assert_eq!(h.queued(), 3);
    m.publish_topic("b", Event::message("b3")).unwrap();
    assert_eq!(ready(&mut body), ["a1", "all1", "own"]);
    assert_eq!(m.stats().open_per_topic.get("b"), None);
}

#[tokio::test]
async fn several_topics_are_sent_in_publish_order_replay_included() {
    let m = ConnectionManager::new();
    let start = m.publish(Event::message("0")).unwrap().id.unwrap();
    let order = [
        (Some("x"), "1"),
        (None, "2"),
        (Some("y"), "3"),
        (Some("z"), "4"),
        (Some("x"), "5"),
        (Some("y"), "6"),
    ];
    let publish = |m: &ConnectionManager, topic: Option<&str>, data: &str| match topic {
        Some(t) => m.publish_topic(t, Event::message(data)).unwrap(),
        None => m.publish(Event::message(data)).unwrap(),
    };
    for (topic, data) in order {
        publish(&m, topic, data);
    }
    let (h, mut body) = m
        .connect(Connect::new().topics(["y", "x"]).last_event_id(id(&start)))
        .unwrap();
    assert_eq!(h.replay(), Replay::Resumed(5));
    for (topic, data) in order {
        publish(&m, topic, &format!("live {data}"));
    }
    assert_eq!(
        ready(&mut body),
        ["1", "2", "3", "5", "6", "live 1", "live 2", "live 3", "live 5", "live 6"]
    );
}

/// A publisher numbers its events while another task subscribes and unsubscribes the
/// connection to one topic over and over. What arrives must be in publish order with no
/// event twice; every event of the topic it never leaves; of the other, only events
/// published while it was on (an unsubscribe drops the unsent ones), and every one published
/// after its last subscribe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_changed_while_events_flow_are_exactly_once_and_in_order() {
    const EVENTS: u64 = 4_000;
    const TAIL: u64 = 200;
    let m = ConnectionManager::builder()
        .queue_capacity(2 * EVENTS as usize)
        .build();
    let (h, body) = m.connect(Connect::new().topic("steady")).unwrap();
    // Whether "flip" is on, changed under the same lock the publisher holds while it
    // publishes a flip event: the ground truth of what may arrive.
    let on = Arc::new(Mutex::new(false));
    let reader = tokio::spawn(async move {
        let mut body = body;
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            bytes.extend_from_slice(&frame.expect("no abort").into_data().unwrap());
            if bytes.ends_with(b"data: done\n\n") {
                break;
            }
        }
        decode(&bytes)
            .events
            .into_iter()
            .map(|e| e.data)
            .collect::<Vec<_>>()
    });
    let switcher = {
        let (h, on) = (h.clone(), on.clone());
        tokio::spawn(async move {
            // Ends subscribed.
            for i in 0..=400 {
                {
                    let mut on = on.lock().unwrap();
                    if i % 2 == 0 {
                        assert_eq!(h.subscribe("flip"), Ok(true));
                    } else {
                        assert!(h.unsubscribe("flip"));
                    }
                    *on = i % 2 == 0;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut allowed = Vec::new();
    let publish = |seq: u64, allowed: &mut Vec<u64>| {
        if seq % 2 == 0 {
            m.publish_topic("steady", Event::message(format!("s {seq}")))
                .unwrap();
        } else {
            let on = on.lock().unwrap();
            m.publish_topic("flip", Event::message(format!("f {seq}")))
                .unwrap();
            if *on {
                allowed.push(seq);
            }
        }
    };
    for seq in 0..EVENTS {
        publish(seq, &mut allowed);
        if seq % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    switcher.await.unwrap();
    for seq in EVENTS..EVENTS + TAIL {
        publish(seq, &mut allowed);
    }
    m.publish_topic("steady", Event::message("done")).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the reader got everything")
        .unwrap();
    let mut seqs = Vec::new();
    let mut flips = Vec::new();
    for data in &got[..got.len() - 1] {
        let (kind, n) = data.split_once(' ').unwrap();
        let n: u64 = n.parse().unwrap();
        seqs.push(n);
        if kind == "f" {
            flips.push(n);
        }
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "out of order or twice"
    );
    let steady = seqs.iter().filter(|n| *n % 2 == 0).count() as u64;
    assert_eq!(
        steady,
        (EVENTS + TAIL) / 2,
        "every event of the steady topic"
    );
    assert!(
        flips.iter().all(|f| allowed.binary_search(f).is_ok()),
        "a flip published while off arrived"
    );
    let tail: Vec<u64> = (EVENTS..EVENTS + TAIL).filter(|n| n % 2 == 1).collect();
    assert!(
        flips.ends_with(&tail),
        "every flip after the last subscribe"
    );
}

#[tokio::test]
async fn hooks_see_subscription_changes_by_handle_and_by_key() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (on, off) = (log.clone(), log.clone());
    let m = ConnectionManager::builder()
        .on_subscribe(move |c, t| on.lock().unwrap().push(format!("+{t} {:?}", c.key())))
        .on_unsubscribe(move |c, t| off.lock().unwrap().push(format!("-{t} {:?}", c.key())))
        .build();
    let (a, mut a_body) = m.connect(Connect::new().key("u")).unwrap();
    let (_b, mut b_body) = m.connect(Connect::new().key("u")).unwrap();
    let (_c, mut c_body) = m.connect(Connect::new().key("v")).unwrap();
    assert_eq!(m.subscribe_key("u", "room"), Ok(2));
    assert_eq!(m.subscribe_key("u", "room"), Ok(0), "already on it");
    m.publish_topic("room", Event::message("hi")).unwrap();
    assert_eq!(ready(&mut a_body), ["hi"]);
    assert_eq!(ready(&mut b_body), ["hi"]);
    assert!(ready(&mut c_body).is_empty());
    assert!(a.unsubscribe("room"));
    assert_eq!(m.unsubscribe_key("u", "room"), Ok(1));
    assert_eq!(
        *log.lock().unwrap(),
        [
            "+room Some(\"u\")",
            "+room Some(\"u\")",
            "-room Some(\"u\")",
            "-room Some(\"u\")"
        ]
    );
}

/// A client reconnects with the topics it is on now: the replay covers exactly those.
#[tokio::test]
async fn last_event_id_across_a_topic_change() {
    let m = ConnectionManager::new();
    let (h, mut body) = m.connect(Connect::new().topic("a")).unwrap();
    m.publish_topic("a", Event::message("a1")).unwrap();
    assert_eq!(ready(&mut body), ["a1"]);
    let seen = m
        .publish_topic("a", Event::message("a2"))
        .unwrap()
        .id
        .unwrap();
    assert_eq!(ready(&mut body), ["a2"]);
    // It switches from a to b, then goes away before reading anything more.
    assert!(h.unsubscribe("a"));
    h.subscribe("b").unwrap();
    m.publish_topic("a", Event::message("a3")).unwrap();
    m.publish_topic("b", Event::message("b1")).unwrap();
    m.publish(Event::message("all")).unwrap();
    drop(body);
    // Back with its last id and its current topics.
    let (h2, mut body2) = m
        .connect(Connect::new().topic("b").last_event_id(id(&seen)))
        .unwrap();
    assert_eq!(h2.replay(), Replay::Resumed(2));
    assert_eq!(ready(&mut body2), ["b1", "all"]);
}

#[tokio::test(start_paused = true)]
async fn a_topic_is_freed_when_unused_and_its_history_is_gone() {
    // Replay off: a topic is freed with its last subscriber, unsent events and all.
    let m = ConnectionManager::builder().replay(0, None).build();
    let (_h, body) = m.connect(Connect::new().topic("t")).unwrap();
    m.publish_topic("t", Event::message("x")).unwrap();
    assert_eq!(m.topic_count(), 1);
    drop(body);
    assert_eq!(m.topic_count(), 0);
    let (h, _body) = m.connect(Connect::new()).unwrap();
    h.subscribe("u").unwrap();
    assert_eq!(m.topic_count(), 1);
    assert!(h.unsubscribe("u"));
    assert_eq!(m.topic_count(), 0);
    // Publishing to a topic nobody reads, with replay off, keeps nothing.
    assert_eq!(
        m.publish_topic("nobody", Event::message("x"))
            .unwrap()
            .delivered,
        0
    );
    assert_eq!(m.topic_count(), 0);

    // With replay on, a topic nobody reads keeps its history until the age bound.
    let m = ConnectionManager::builder()
        .replay(10, Some(Duration::from_secs(60)))
        .build();
    let (h, body) = m.connect(Connect::new().topic("t")).unwrap();
    m.publish_topic("t", Event::message("x")).unwrap();
    drop((h, body));
    assert_eq!((m.topic_count(), m.history_len()), (1, 1));
    tokio::time::advance(Duration::from_secs(61)).await;
    m.evict_idle(Duration::from_secs(3600));
    assert_eq!(
        (m.topic_count(), m.history_len(), m.history_bytes()),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn history_is_bounded_in_bytes_across_topics() {
    let payload = "x".repeat(10_000);
    let m = ConnectionManager::builder()
        .replay(1_000, None)
        .history_bytes(100_000)
        .build();
    let first = m
        .publish_topic("t0", Event::message(&payload))
        .unwrap()
        .id
        .unwrap();
    for i in 1..100 {
        m.publish_topic(&format!("t{}", i % 7), Event::message(&payload))
            .unwrap();
        assert!(m.history_bytes() <= 100_000, "{}", m.history_bytes());
    }
    // Only the newest nine fit (each event and its bookkeeping is a little over 10 KB).
    assert_eq!(m.history_len(), 9);
    // A client that missed what was dropped is told.
    let (h, mut body) = m
        .connect(Connect::new().topic("t0").last_event_id(id(&first)))
        .unwrap();
    assert!(matches!(h.replay(), Replay::Gap(_)));
    assert_eq!(ready(&mut body), [""], "the gap event");
    // The topics whose history is gone are freed.
    assert!(m.topic_count() <= 7);
}

#[tokio::test]
async fn a_switch_drops_the_unsent_events_of_the_old_topic() {
    let m = ConnectionManager::new();
    let (h, body) = m.connect(Connect::new().key("page")).unwrap();
    let response = body.into_response();
    m.subscribe_key("page", "eur").unwrap();
    m.publish_topic("eur", Event::message("1.08")).unwrap();
    m.unsubscribe_key("page", "eur").unwrap();
    m.subscribe_key("page", "usd").unwrap();
    m.publish_topic("eur", Event::message("1.09")).unwrap();
    m.publish_topic("usd", Event::message("0.92")).unwrap();
    h.complete();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let data: Vec<_> = decode(&bytes).events.into_iter().map(|e| e.data).collect();
    // The switch came before the page read "1.08": it is not sent after leaving eur.
    assert_eq!(data, ["0.92"]);
}

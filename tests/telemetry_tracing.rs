//! The `tracing` feature: one span per managed stream, under the request's span, with open
//! and close events that carry the reason; rate-limited warnings. Its own test binary: a
//! subscriber set for one thread must not race other tests for tracing's callsite cache.
#![cfg(feature = "tracing")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use http_body_util::BodyExt;
use tower_sse::{Connect, ConnectionManager, Event};

fn poll(body: &mut (impl http_body::Body<Data = bytes::Bytes> + Unpin)) {
    while let Some(Some(Ok(_))) = body.frame().now_or_never() {}
}

/// What a capturing subscriber saw: spans by id with their name, fields and parent, and
/// events with their level, message, fields and span.
#[derive(Debug, Default)]
struct Captured {
    spans: HashMap<u64, SpanSeen>,
    events: Vec<EventSeen>,
}

type FieldValues = HashMap<String, String>;
/// A span's name, fields and parent.
type SpanSeen = (String, FieldValues, Option<u64>);
/// An event's level, message, fields and span.
type EventSeen = (tracing::Level, String, FieldValues, Option<u64>);

struct Capture(Arc<Mutex<Captured>>);

#[derive(Default)]
struct Fields(HashMap<String, String>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S> tracing_subscriber::Layer<S> for Capture
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .map(|p| p.id().into_u64());
        self.0.lock().unwrap().spans.insert(
            id.into_u64(),
            (attrs.metadata().name().to_owned(), fields.0, parent),
        );
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let message = fields.0.remove("message").unwrap_or_default();
        let span = ctx.event_span(event).map(|s| s.id().into_u64());
        self.0
            .lock()
            .unwrap()
            .events
            .push((*event.metadata().level(), message, fields.0, span));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn one_span_per_stream_under_the_request_with_open_and_close_events() {
    use tracing_subscriber::layer::SubscriberExt;
    let captured = Arc::new(Mutex::new(Captured::default()));
    let subscriber = tracing_subscriber::registry()
        .with(Capture(captured.clone()))
        .with(tracing_subscriber::filter::LevelFilter::TRACE);
    let _guard = tracing::subscriber::set_default(subscriber);

    let m = ConnectionManager::builder().queue_capacity(1).build();
    let request = tracing::info_span!("request", path = "/events");
    let request_id = request.id().map(|id| id.into_u64());
    let (h, mut body) = request.in_scope(|| {
        m.connect(Connect::new().key("user-7").topic("news"))
            .unwrap()
    });
    m.publish(Event::message("hi")).unwrap();
    poll(&mut body);
    assert!(h.complete_with(Event::message("bye")));
    poll(&mut body);
    drop(body);
    // Two slow consumers in a row: one warning, the second left out (rate limit).
    for _ in 0..2 {
        let (s, _s_body) = m.connect(Connect::new()).unwrap();
        s.send(Event::message("1")).unwrap();
        assert!(s.send(Event::message("2")).is_err());
    }

    let c = captured.lock().unwrap();
    let streams: Vec<_> = c
        .spans
        .iter()
        .filter(|(_, (name, ..))| name == "sse_stream")
        .collect();
    assert_eq!(streams.len(), 3, "one span per stream: {:?}", c.spans);
    let (first_id, (_, fields, parent)) = streams
        .iter()
        .find(|(_, (_, f, _))| f.get("key").map(String::as_str) == Some("user-7"))
        .map(|(id, v)| (**id, v))
        .unwrap();
    assert_eq!(*parent, request_id, "under the request's span");
    assert_eq!(fields["id"], h.id().to_string());
    assert!(fields["topics"].contains("news"), "{fields:?}");
    let of_first: Vec<_> = c
        .events
        .iter()
        .filter(|(.., span)| *span == Some(first_id))
        .collect();
    let messages: Vec<&str> = of_first.iter().map(|(_, m, ..)| m.as_str()).collect();
    assert_eq!(messages, ["stream opened", "stream closed"], "{of_first:?}");
    let (level, _, fields, _) = of_first[1];
    assert_eq!(*level, tracing::Level::DEBUG);
    assert_eq!(fields["reason"], "completed");
    assert_eq!(fields["events"], "2");
    assert!(fields["bytes"].parse::<u64>().unwrap() > 0);
    assert!(fields.contains_key("lifetime_ms"));
    let warnings: Vec<_> = c
        .events
        .iter()
        .filter(|(level, ..)| *level == tracing::Level::WARN)
        .collect();
    assert_eq!(warnings.len(), 1, "rate-limited: {warnings:?}");
    assert_eq!(warnings[0].1, "slow consumer disconnected");
    // Nothing per event above trace.
    assert!(c
        .events
        .iter()
        .filter(|(level, ..)| *level < tracing::Level::TRACE)
        .all(|(_, m, ..)| !m.contains("event sent")));
}

//! The demo hub's HTTP interface, shared by `examples/demo/main.rs` and `tests/browser.rs`.
//!
//! - `GET /`: the page (HTML and JS ship in this folder, no build step).
//! - `GET /events[?key=K][&topic=T][&lastEventId=ID]`: everything published (and topic `T`),
//!   replaying what a reconnecting client missed (`Last-Event-ID` header, or the query for a
//!   first load). The stream is registered under key `K`. Its `connections` events (JSON:
//!   `open`, `instance`, `label`) say how many streams this instance holds and which it is.
//! - `POST /publish[?event=E][&id=I][&topic=T]`: the body, byte for byte, is the event's data.
//!   With `key=K` instead of a topic it goes to the streams of `K` only, and is not recorded.
//! - `POST /complete?key=K`: completes every stream of `K`, on every instance, with a last
//!   `event: end` whose data is the body; the stream is finished (a reconnect gets `204`).
//! - `POST /subscribe?key=K&topic=T`, `POST /unsubscribe?key=K&topic=T`: change the topics
//!   of the streams of `K`, wherever they are.
//! - `GET /ticker?key=K[&interval_ms=N]`: a `tick` event every `N` ms (default 1000) until
//!   the stream of `K` is completed, for example by `POST /complete?key=K` on another
//!   instance.
//! - `GET /typewriter?text=...`: an LLM-style answer, token by token, then an `end` event
//!   that marks the stream as finished: a client that reconnects gets `204` and stops.
//! - `POST /v1/chat/completions`: the same kind of answer in OpenAI's streaming format.
//! - `GET /stats`: the manager's counters as JSON, with the `instance` that answered and the
//!   `cluster`-wide totals.
//! - `POST /disconnect`: completes every open `/events` stream of this instance, to watch
//!   clients resume.
//!
//! With a backplane ([`Hub::with_backplane`]), several demo processes behave as one hub.
// Shared by several crates (the example and tests), each using a different part of it.
#![allow(dead_code, unreachable_pub)]

#[path = "body.rs"]
pub mod body;
#[path = "chat.rs"]
pub mod chat;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tower_sse::backplane::RedisBackplane;
use tower_sse::manager::{Completion, ConnectError, ConnectionManager, SendError, SubscribeError};
use tower_sse::{Connect, Event, LastEventId, SseContext, SseLayer};

/// Largest accepted `text` for `/typewriter`, in bytes.
pub const MAX_TYPEWRITER_BYTES: usize = 16 * 1024;

const INDEX_HTML: &str = include_str!("index.html");

/// The demo's canned answer, for `/typewriter` without `text` and for `/v1/chat/completions`.
pub const DEFAULT_ANSWER: &str = "Server-Sent Events are a plain HTTP response that never ends. \
The server writes one event after another; the browser's EventSource parses them and \
reconnects on its own when the connection drops, sending the last id it saw so the server \
can replay what was missed. That is why an answer streamed this way ends with an event \
whose id marks the stream as finished: when the browser comes back with that id, the server \
answers 204 No Content, and the browser stops instead of replaying the whole answer again.";

/// Timings and limits, settable from the environment for the demo and shortened by tests.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Quiet time after which a heartbeat (a comment line) is written.
    pub heartbeat: Duration,
    /// The reconnection delay given to clients (`retry:` on the first event).
    pub retry: Duration,
    /// Time between two tokens of the typewriter and the chat route.
    pub token_delay: Duration,
    /// The `connections` event goes out when the count changes, and at least this often: the
    /// page's sign of life, since heartbeats are invisible comments.
    pub liveness: Duration,
    /// Request bodies (`POST /publish`, `POST /v1/chat/completions`): the limit, and how
    /// much of an oversized one is read before the `413`.
    pub body: body::Limits,
    /// How this instance is named to clients besides its number, such as its address.
    pub label: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat: Duration::from_secs(15),
            retry: Duration::from_secs(2),
            token_delay: Duration::from_millis(40),
            liveness: Duration::from_secs(10),
            body: body::Limits::default(),
            label: String::new(),
        }
    }
}

/// What the handlers share.
#[derive(Debug)]
pub struct Hub {
    pub manager: ConnectionManager,
    pub settings: Settings,
    /// The backplane the manager was built with, for the cluster view.
    pub backplane: Option<RedisBackplane>,
    pub typewriter_streams: AtomicU64,
    pub chat_completions: AtomicU64,
}

impl Hub {
    /// A hub on its own.
    pub fn new(manager: ConnectionManager, settings: Settings) -> Arc<Hub> {
        Self::make(manager, settings, None)
    }

    /// A hub joined to others by `backplane`, which `manager` was built with.
    pub fn with_backplane(
        manager: ConnectionManager,
        settings: Settings,
        backplane: RedisBackplane,
    ) -> Arc<Hub> {
        Self::make(manager, settings, Some(backplane))
    }

    fn make(
        manager: ConnectionManager,
        settings: Settings,
        backplane: Option<RedisBackplane>,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            manager,
            settings,
            backplane,
            typewriter_streams: AtomicU64::new(0),
            chat_completions: AtomicU64::new(0),
        })
    }

    /// This instance's name: its number as connection ids show it, `local` without a
    /// backplane.
    pub fn instance(&self) -> String {
        match &self.backplane {
            Some(b) => format!("{:08x}", b.instance()),
            None => "local".to_owned(),
        }
    }

    /// The cluster-wide totals: every instance's open streams, as the backplane last heard
    /// (a presence interval old at most), or this instance alone.
    async fn cluster(&self) -> serde_json::Value {
        let Some(backplane) = &self.backplane else {
            let open = self.manager.len();
            return json!({
                "open": open,
                "instances": [{ "instance": self.instance(), "open": open }],
            });
        };
        match backplane.cluster_stats().await {
            Ok(stats) => json!({
                "open": stats.open,
                "instances": stats.instances.iter().map(|i| json!({
                    "instance": format!("{:08x}", i.instance),
                    "open": i.open,
                })).collect::<Vec<_>>(),
            }),
            Err(e) => json!({ "error": e.to_string() }),
        }
    }
}

/// The manager the demo uses, with its farewell and replay bounds.
pub fn manager_builder() -> tower_sse::manager::ManagerBuilder {
    ConnectionManager::builder()
        .replay(10_000, Some(Duration::from_secs(600)))
        .queue_capacity(1024)
}

/// The whole app: routes, with the `SseLayer` over all of them (non-SSE routes pass through).
pub fn router(hub: Arc<Hub>, shutdown: CancellationToken) -> Router {
    let s = &hub.settings;
    // Built from constants: `build` cannot fail for them.
    let farewell = Event::builder()
        .event("bye")
        .data("server shutting down")
        .retry(Duration::from_secs(5))
        .build()
        .expect("constant event");
    // Heartbeats stay the default: comment lines no client shows to the application.
    let layer = SseLayer::new()
        .heartbeat_interval(s.heartbeat)
        .retry(s.retry)
        .initial_comment("tower-sse demo")
        .farewell(farewell)
        .shutdown_token(shutdown);
    Router::new()
        .route("/", get(index))
        .route("/events", get(events))
        .route("/publish", post(publish))
        .route("/complete", post(complete))
        .route("/subscribe", post(subscribe))
        .route("/unsubscribe", post(unsubscribe))
        .route("/ticker", get(ticker))
        .route("/typewriter", get(typewriter))
        .route("/v1/chat/completions", post(chat::completions))
        .route("/stats", get(stats))
        .route("/disconnect", post(disconnect))
        .layer(layer)
        .with_state(hub)
}

/// Pushes the open-connection count to every page when it changes (twice a second at most),
/// and at least every `liveness` interval, which tells pages the stream is alive. Sent with
/// `send_filter`, so it is not recorded for replay.
pub fn spawn_connection_counter(hub: Arc<Hub>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut last = usize::MAX;
        let mut sent_at = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let open = hub.manager.len();
            if open != last || sent_at.elapsed() >= hub.settings.liveness {
                last = open;
                sent_at = tokio::time::Instant::now();
                if let Some(event) = connections_event(&hub, open) {
                    let _ = hub.manager.send_filter(|_| true, event);
                }
            }
        }
    });
}

/// The `connections` event: this instance's open streams, and which instance it is (so the
/// page can show where it is connected). JSON data.
fn connections_event(hub: &Hub, open: usize) -> Option<Event> {
    let data = json!({ "open": open, "instance": hub.instance(), "label": hub.settings.label });
    Event::builder()
        .event("connections")
        .data(data.to_string())
        .build()
        .ok()
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

/// A query parameter, if it is there and not empty.
fn nonempty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

fn missing(name: &str) -> Response {
    error(StatusCode::BAD_REQUEST, format!("`{name}` is required"))
}

fn send_error(e: SendError) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, e)
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    key: Option<String>,
    topic: Option<String>,
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
}

async fn events(
    State(hub): State<Arc<Hub>>,
    Extension(ctx): Extension<SseContext>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "malformed query string");
    };
    let mut options = Connect::new().context(&ctx);
    match ctx.last_event_id() {
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
        // The header wins; the query is for a page's first request, which cannot set it.
        Ok(Some(_)) => {}
        Ok(None) => match query.last_event_id.as_deref().map(LastEventId::parse) {
            Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e),
            Some(Ok(id)) => options = options.last_event_id(id),
            None => {}
        },
    }
    if let Some(topic) = query.topic.filter(|t| !t.is_empty()) {
        options = options.topic(topic);
    }
    if let Some(key) = query.key.filter(|k| !k.is_empty()) {
        options = options.key(key);
    }
    match hub.manager.connect(options) {
        Ok((handle, body)) => {
            // The counter task only broadcasts changes; a new page needs the count now.
            if let Some(event) = connections_event(&hub, hub.manager.len()) {
                let _ = handle.send(event);
            }
            body.into_response().map(Body::new)
        }
        Err(e @ ConnectError::ShutDown) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => error(StatusCode::TOO_MANY_REQUESTS, e),
    }
}

#[derive(Debug, Deserialize)]
pub struct PublishQuery {
    event: Option<String>,
    id: Option<String>,
    topic: Option<String>,
    key: Option<String>,
}

async fn publish(
    State(hub): State<Arc<Hub>>,
    query: Result<Query<PublishQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "malformed query string");
    };
    let bytes = match body::read(&headers, body, hub.settings.body).await {
        Ok(bytes) => bytes,
        Err(refused) => return refused.into_response(),
    };
    let Ok(data) = std::str::from_utf8(&bytes) else {
        return error(StatusCode::BAD_REQUEST, "body is not valid UTF-8");
    };
    let mut builder = Event::builder().data(data);
    if let Some(event) = &query.event {
        builder = builder.event(event);
    }
    if let Some(id) = &query.id {
        builder = builder.id(id);
    }
    let event = match builder.build() {
        Ok(event) => event,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let topic = query.topic.as_deref().filter(|t| !t.is_empty());
    let key = query.key.as_deref().filter(|k| !k.is_empty());
    // With a backplane, a publish is confirmed by the broker, which gives it its id.
    let sent = match (key, topic) {
        (Some(_), Some(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "`key` and `topic` exclude each other",
            )
        }
        (Some(key), None) => hub.manager.send_to_key(key, event),
        (None, Some(topic)) => hub.manager.publish_topic_confirmed(topic, event).await,
        (None, None) => hub.manager.publish_confirmed(event).await,
    };
    match sent {
        Ok(delivery) => Json(json!({
            "id": delivery.id.as_deref(),
            "delivered": delivery.delivered,
        }))
        .into_response(),
        Err(e) => send_error(e),
    }
}

#[derive(Debug, Deserialize)]
pub struct KeyQuery {
    key: Option<String>,
    topic: Option<String>,
}

/// `POST /complete?key=K`: every stream of `K`, wherever it is, ends with `event: end` and
/// the body as its data, finished for good.
async fn complete(
    State(hub): State<Arc<Hub>>,
    query: Result<Query<KeyQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "malformed query string");
    };
    let Some(key) = nonempty(&query.key) else {
        return missing("key");
    };
    let bytes = match body::read(&headers, body, hub.settings.body).await {
        Ok(bytes) => bytes,
        Err(refused) => return refused.into_response(),
    };
    let Ok(data) = std::str::from_utf8(&bytes) else {
        return error(StatusCode::BAD_REQUEST, "body is not valid UTF-8");
    };
    let end = match Event::builder().event("end").data(data).build() {
        Ok(end) => end,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match hub.manager.complete_key(key, Completion::finish(end)) {
        // With a backplane every instance completes its own, later: the count is 0 here.
        Ok(n) => {
            Json(json!({ "completed": n, "everywhere": hub.backplane.is_some() })).into_response()
        }
        Err(e) => send_error(e),
    }
}

/// `POST /subscribe?key=K&topic=T` and `/unsubscribe`: the streams of `K` change topics.
async fn change_topics(
    hub: &Hub,
    query: Result<Query<KeyQuery>, axum::extract::rejection::QueryRejection>,
    subscribe: bool,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "malformed query string");
    };
    let Some(key) = nonempty(&query.key) else {
        return missing("key");
    };
    let Some(topic) = nonempty(&query.topic) else {
        return missing("topic");
    };
    let changed = if subscribe {
        hub.manager.subscribe_key(key, topic)
    } else {
        hub.manager.unsubscribe_key(key, topic)
    };
    match changed {
        Ok(n) => Json(json!({
            "key": key,
            "topic": topic,
            "subscribed": subscribe,
            // With a backplane every instance changes its own, later: the count is 0 here.
            "changed": n,
            "everywhere": hub.backplane.is_some(),
        }))
        .into_response(),
        Err(e @ SubscribeError::TooManyTopics { .. }) => error(StatusCode::CONFLICT, e),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn subscribe(
    State(hub): State<Arc<Hub>>,
    query: Result<Query<KeyQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    change_topics(&hub, query, true).await
}

async fn unsubscribe(
    State(hub): State<Arc<Hub>>,
    query: Result<Query<KeyQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    change_topics(&hub, query, false).await
}

/// Shortest and longest `/ticker` intervals.
pub const TICKER_INTERVALS_MS: (u64, u64) = (10, 60_000);

#[derive(Debug, Deserialize)]
pub struct TickerQuery {
    key: Option<String>,
    interval_ms: Option<u64>,
}

/// `GET /ticker?key=K`: the Spring scenario. A request starts a ticker under a token; another
/// request, on any instance, stops it with `POST /complete?key=K`.
async fn ticker(
    State(hub): State<Arc<Hub>>,
    Extension(ctx): Extension<SseContext>,
    query: Result<Query<TickerQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "malformed query string");
    };
    let Some(key) = nonempty(&query.key).map(str::to_owned) else {
        return missing("key");
    };
    let (min, max) = TICKER_INTERVALS_MS;
    let interval_ms = query.interval_ms.unwrap_or(1000);
    if !(min..=max).contains(&interval_ms) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`interval_ms` must be between {min} and {max}"),
        );
    }
    let (handle, body) = match hub.manager.connect(Connect::new().key(key).context(&ctx)) {
        Ok(opened) => opened,
        Err(e @ ConnectError::ShutDown) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => return error(StatusCode::TOO_MANY_REQUESTS, e),
    };
    // The ticker lives as long as its stream: it stops when the stream closes, whoever
    // closed it (a completion, the client leaving, shutdown).
    let closed = handle.closed();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
        tick.tick().await;
        tokio::pin!(closed);
        for n in 1u64.. {
            tokio::select! {
                _ = &mut closed => return,
                _ = tick.tick() => {}
            }
            let Ok(event) = Event::builder().event("tick").data(n.to_string()).build() else {
                return;
            };
            if handle.send(event).is_err() {
                return;
            }
        }
    });
    body.into_response().map(Body::new)
}

#[derive(Debug, Deserialize)]
pub struct TypewriterQuery {
    text: Option<String>,
}

async fn typewriter(
    State(hub): State<Arc<Hub>>,
    Extension(ctx): Extension<SseContext>,
    query: Result<Query<TypewriterQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "malformed query string");
    };
    let text = query.text.unwrap_or_else(|| DEFAULT_ANSWER.to_owned());
    if text.len() > MAX_TYPEWRITER_BYTES {
        return error(
            StatusCode::BAD_REQUEST,
            format!("text is longer than {MAX_TYPEWRITER_BYTES} bytes"),
        );
    }
    hub.typewriter_streams.fetch_add(1, Ordering::Relaxed);
    let delay = hub.settings.token_delay;
    // Tokens keep their trailing whitespace, so joining them gives back the text exactly.
    let tokens: Vec<String> = text.split_inclusive(' ').map(str::to_owned).collect();
    let tokens = futures_util::stream::iter(tokens).then(move |token| async move {
        tokio::time::sleep(delay).await;
        Event::builder().event("token").data(token).build()
    });
    // The end, marked as finished: the browser reconnects once, gets 204, and stops. No page
    // code has to close the EventSource, and a generic client does not replay the answer.
    let end = Event::builder()
        .event("end")
        .data("")
        .build()
        .map(|end| ctx.finish(end));
    let end = futures_util::stream::once(async move { end });
    tower_sse::response(tokens.chain(end))
        .map(Body::new)
        .into_response()
}

async fn stats(State(hub): State<Arc<Hub>>) -> Response {
    let cluster = hub.cluster().await;
    let s = hub.manager.stats();
    let closed: serde_json::Map<String, serde_json::Value> = s
        .closed
        .iter()
        .map(|(reason, n)| (reason.as_str().to_owned(), json!(n)))
        .collect();
    Json(json!({
        "instance": hub.instance(),
        "label": hub.settings.label,
        "cluster": cluster,
        "open": s.open,
        "open_per_topic": s.open_per_topic,
        "connected": s.connected,
        "events": s.events,
        "deliveries": s.deliveries,
        "dropped": s.dropped,
        "lagged": s.lagged,
        "resumed": s.resumed,
        "gaps": s.gaps,
        "closed": closed,
        "history": hub.manager.history_len(),
        "typewriter_streams": hub.typewriter_streams.load(Ordering::Relaxed),
        "chat_completions": hub.chat_completions.load(Ordering::Relaxed),
    }))
    .into_response()
}

async fn disconnect(State(hub): State<Arc<Hub>>) -> Response {
    let n = hub.manager.complete_filter(|_| true, None).unwrap_or(0);
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "completed": n })),
    )
        .into_response()
}

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
//! - `GET /stats`: the manager's counters as JSON, with the `instance` that answered, the
//!   `cluster`-wide totals, the caps and the listener's counts.
//! - `GET /metrics`: the crate's metrics (and the demo's) in Prometheus text format, through
//!   `metrics-exporter-prometheus`, when the hub was given its handle.
//! - `POST /disconnect`: completes every open `/events` stream of this instance, to watch
//!   clients resume.
//!
//! With a backplane ([`Hub::with_backplane`]), several demo processes behave as one hub.
//!
//! Every kind of connection is capped ([`Caps`]): event streams (`/events`, `/ticker`) by the
//! manager, generated answers (`/typewriter`, streamed `/v1/chat/completions`) by a
//! semaphore, both answered `503` with `Retry-After` when full, and all connections by the
//! listener, above the sum of the two, so that `/stats` and `/publish` still answer when the
//! streams are at their cap.
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
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;
use tower_sse::backplane::RedisBackplane;
use tower_sse::listener::ListenerStats;
use tower_sse::manager::{Completion, ConnectionManager, SendError, SubscribeError};
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

/// How many connections of each kind the demo holds at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Every connection, whatever its route: the listener's cap (`MAX_CONNECTIONS`). Past it,
    /// a new connection gets `503` from the listener before any request is read.
    pub connections: usize,
    /// Event streams, `/events` and `/ticker` (`MAX_STREAMS`): the manager's cap. Past it,
    /// `503` with `Retry-After`.
    pub streams: usize,
    /// Generated answers being streamed, `/typewriter` and `/v1/chat/completions`
    /// (`MAX_ANSWERS`). Past it, `503` with `Retry-After`.
    pub answers: usize,
}

impl Caps {
    /// For a listener cap of `connections`: 85 % of it for event streams, 5 % for answers,
    /// and the 10 % left for every other request.
    pub fn for_connections(connections: usize) -> Caps {
        // In twentieths, without overflow for any `usize`.
        let share = |n: usize| connections / 20 * n + connections % 20 * n / 20;
        Caps {
            connections,
            streams: share(17),
            answers: share(1),
        }
    }

    /// The connections left for other requests (`/stats`, `/publish`...) when streams and
    /// answers are at their caps; an error when there are none.
    pub fn check(&self) -> Result<usize, String> {
        let held = self.streams.saturating_add(self.answers);
        match self.connections.checked_sub(held) {
            Some(left) if left > 0 => Ok(left),
            _ => Err(format!(
                "MAX_STREAMS ({}) + MAX_ANSWERS ({}) must stay below MAX_CONNECTIONS ({}), \
                 or nothing is left for /stats and /publish when they are full",
                self.streams, self.answers, self.connections
            )),
        }
    }
}

impl Default for Caps {
    fn default() -> Self {
        Caps::for_connections(10_000)
    }
}

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
    /// The caps; the manager's is set by [`manager_builder_for`].
    pub caps: Caps,
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
            caps: Caps::default(),
        }
    }
}

/// What a hub may be given besides its manager and settings.
#[derive(Debug, Default)]
pub struct Extras {
    /// The backplane the manager was built with, for the cluster view.
    pub backplane: Option<RedisBackplane>,
    /// The Prometheus recorder's handle, for `GET /metrics`; installed before the manager
    /// and the layer were built.
    pub metrics: Option<PrometheusHandle>,
    /// The listener's counts, for `/stats`.
    pub listener: Option<ListenerStats>,
}

/// What the handlers share.
#[derive(Debug)]
pub struct Hub {
    pub manager: ConnectionManager,
    pub settings: Settings,
    /// The backplane the manager was built with, for the cluster view.
    pub backplane: Option<RedisBackplane>,
    pub metrics: Option<PrometheusHandle>,
    pub listener: Option<ListenerStats>,
    /// One permit per generated answer being streamed ([`Caps::answers`]).
    pub answers: Arc<Semaphore>,
    pub typewriter_streams: AtomicU64,
    pub chat_completions: AtomicU64,
}

impl Hub {
    /// A hub on its own.
    pub fn new(manager: ConnectionManager, settings: Settings) -> Arc<Hub> {
        Self::with(manager, settings, Extras::default())
    }

    /// A hub joined to others by `backplane`, which `manager` was built with.
    pub fn with_backplane(
        manager: ConnectionManager,
        settings: Settings,
        backplane: RedisBackplane,
    ) -> Arc<Hub> {
        let extras = Extras {
            backplane: Some(backplane),
            ..Extras::default()
        };
        Self::with(manager, settings, extras)
    }

    /// A hub with everything it was given.
    pub fn with(manager: ConnectionManager, settings: Settings, extras: Extras) -> Arc<Hub> {
        Arc::new(Hub {
            manager,
            answers: Arc::new(Semaphore::new(settings.caps.answers)),
            settings,
            backplane: extras.backplane,
            metrics: extras.metrics,
            listener: extras.listener,
            typewriter_streams: AtomicU64::new(0),
            chat_completions: AtomicU64::new(0),
        })
    }

    /// Generated answers being streamed now.
    pub fn answers_open(&self) -> usize {
        self.settings
            .caps
            .answers
            .saturating_sub(self.answers.available_permits())
    }

    /// A place for one more generated answer, held until it is dropped; `None` when all
    /// [`Caps::answers`] are taken.
    pub fn answer_permit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.answers).try_acquire_owned().ok()
    }

    /// Why an answer was refused, for a `503`.
    pub fn answers_full(&self) -> String {
        let limit = self.settings.caps.answers;
        format!("{limit} answers are being streamed already; try again shortly")
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

/// The manager the demo uses, with its replay bounds (and no stream cap).
pub fn manager_builder() -> tower_sse::manager::ManagerBuilder {
    ConnectionManager::builder()
        .replay(10_000, Some(Duration::from_secs(600)))
        .queue_capacity(1024)
}

/// [`manager_builder`] with the stream cap of `settings` ([`Caps::streams`]).
pub fn manager_builder_for(settings: &Settings) -> tower_sse::manager::ManagerBuilder {
    manager_builder().max_connections(settings.caps.streams)
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
        .route("/metrics", get(metrics))
        .route("/disconnect", post(disconnect))
        .layer(layer)
        // A span per request (at `debug`), which a stream's own span has as its parent.
        .layer(TraceLayer::new_for_http())
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

/// `response` with `Retry-After: 1`: the refusal is a matter of capacity.
pub fn retry_later(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
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
        // Full or shutting down: 503 with Retry-After (too many topics: 400).
        Err(e) => e.into_response(),
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
        Err(e) => return e.into_response(),
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
    let Some(permit) = hub.answer_permit() else {
        return retry_later(error(StatusCode::SERVICE_UNAVAILABLE, hub.answers_full()));
    };
    hub.typewriter_streams.fetch_add(1, Ordering::Relaxed);
    let delay = hub.settings.token_delay;
    // One token at a time, cut from the text as it is sent: the stream holds the text and a
    // position, never a list of tokens.
    let tokens = futures_util::stream::unfold((text, 0), move |(text, at)| async move {
        let len = next_token(&text[at..])?;
        tokio::time::sleep(delay).await;
        let event = Event::builder()
            .event("token")
            .data(&text[at..at + len])
            .build();
        Some((event, (text, at + len)))
    });
    // The end, marked as finished: the browser reconnects once, gets 204, and stops. No page
    // code has to close the EventSource, and a generic client does not replay the answer.
    let end = Event::builder()
        .event("end")
        .data("")
        .build()
        .map(|end| ctx.finish(end));
    let end = futures_util::stream::once(async move { end });
    // The permit goes with the stream: its place is given back when the stream ends or the
    // client leaves.
    let events = tokens.chain(end).map(move |event| {
        let _held = &permit;
        event
    });
    tower_sse::response(events).map(Body::new).into_response()
}

/// The length of the next token of `rest`: up to and with the next space, or all of it.
/// Tokens keep their trailing whitespace, so joining them gives back the text exactly (as
/// `str::split_inclusive(' ')` cuts it). `None` at the end.
pub fn next_token(rest: &str) -> Option<usize> {
    if rest.is_empty() {
        return None;
    }
    Some(rest.find(' ').map_or(rest.len(), |space| space + 1))
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
        "answers_open": hub.answers_open(),
        "caps": {
            "connections": hub.settings.caps.connections,
            "streams": hub.settings.caps.streams,
            "answers": hub.settings.caps.answers,
        },
        "listener": hub.listener.as_ref().map(|l| json!({
            "open": l.open(),
            "refused": l.refused(),
            "stalled": l.stalled(),
        })),
    }))
    .into_response()
}

/// `GET /metrics`: the Prometheus text exposition of everything recorded, rendered by the
/// exporter.
async fn metrics(State(hub): State<Arc<Hub>>) -> Response {
    match &hub.metrics {
        Some(handle) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            handle.render(),
        )
            .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "this hub was started without metrics",
        ),
    }
}

async fn disconnect(State(hub): State<Arc<Hub>>) -> Response {
    let n = hub.manager.complete_filter(|_| true, None).unwrap_or(0);
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "completed": n })),
    )
        .into_response()
}

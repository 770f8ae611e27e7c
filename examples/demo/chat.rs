//! `POST /v1/chat/completions`: the OpenAI chat completions wire contract, so that OpenAI's
//! SDKs and the Vercel AI SDK (`eventsource-parser`) can stream from the demo. The "model" is
//! the demo's canned answer, streamed token by token.
//!
//! With `"stream": true` the answer is `data: {chunk JSON}` events (an
//! `object: "chat.completion.chunk"` each: the role first, then one per token, then an empty
//! delta with `finish_reason: "stop"`) and a final `data: [DONE]`. Without it, one
//! `chat.completion` JSON document.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tower_sse::Event;

use super::{body, retry_later, Hub, DEFAULT_ANSWER};

/// The part of a chat completions request the demo reads; other fields are ignored.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    model: String,
    messages: Vec<Message>,
    #[serde(default)]
    stream: bool,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    #[allow(dead_code)]
    role: String,
    #[allow(dead_code)]
    #[serde(default)]
    content: Value,
}

/// An error in OpenAI's shape: `{"error": {"message", "type"}}`.
fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    let body =
        json!({ "error": { "message": message.to_string(), "type": "invalid_request_error" } });
    (status, Json(body)).into_response()
}

pub async fn completions(State(hub): State<Arc<Hub>>, headers: HeaderMap, body: Body) -> Response {
    let bytes = match body::read(&headers, body, hub.settings.body).await {
        Ok(bytes) => bytes,
        Err(refused) => return refused.into_response(),
    };
    let request: ChatRequest = match serde_json::from_slice(&bytes) {
        Ok(request) => request,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid request: {e}")),
    };
    if request.messages.is_empty() {
        return error(StatusCode::BAD_REQUEST, "`messages` must not be empty");
    }
    let n = hub.chat_completions.fetch_add(1, Ordering::Relaxed) + 1;
    let id = format!("chatcmpl-demo-{n}");
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let model = request.model;
    if !request.stream {
        let tokens = DEFAULT_ANSWER.split_inclusive(' ').count();
        return Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": DEFAULT_ANSWER },
                "finish_reason": "stop",
            }],
            "usage": { "prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens },
        }))
        .into_response();
    }
    // The answer is streamed: it takes one of the answers' places until it ends.
    let Some(permit) = hub.answer_permit() else {
        let body = json!({ "error": { "message": hub.answers_full(), "type": "server_error" } });
        return retry_later((StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response());
    };
    let chunk = move |delta: Value, finish: Option<&str>| {
        let chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        });
        Event::message(chunk.to_string())
    };
    let delay = hub.settings.token_delay;
    // Each event is made when its turn comes: the role, a chunk per token, the stop, [DONE].
    let steps = std::iter::once(Step::Role)
        .chain(DEFAULT_ANSWER.split_inclusive(' ').map(Step::Token))
        .chain([Step::Stop, Step::Done]);
    let stream = futures_util::stream::iter(steps).then(move |step| {
        let event = match step {
            Step::Role => chunk(json!({ "role": "assistant", "content": "" }), None),
            Step::Token(t) => chunk(json!({ "content": t }), None),
            Step::Stop => chunk(json!({}), Some("stop")),
            Step::Done => Event::message("[DONE]"),
        };
        // The permit goes with the stream, and its place back when the stream is dropped.
        let _held = &permit;
        async move {
            tokio::time::sleep(delay).await;
            event
        }
    });
    tower_sse::response(stream).map(Body::new)
}

/// One event of a streamed answer, in order.
enum Step {
    Role,
    Token(&'static str),
    Stop,
    Done,
}

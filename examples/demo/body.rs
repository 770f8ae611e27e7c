//! Reading a request body with a size limit, the way a client can rely on:
//!
//! - Over the limit: `413` with a JSON error, also when the client streams its whole body
//!   without `Expect: 100-continue`. The rest of the body is read and thrown away first, up
//!   to [`Limits::linger_bytes`] and [`Limits::linger_time`] (as nginx's lingering close
//!   does), so the client reads the answer instead of a connection reset; then the connection
//!   is closed.
//! - `Expect: 100-continue` with a `Content-Length` already over the limit: `413` at once.
//!   The body is never polled, so hyper never sends `100 Continue`, and the client never
//!   sends the body.
//! - A body the server cannot parse (a malformed chunked encoding): `400`.
//! - A body that has not arrived in full within [`Limits::time`] of the first read: `408`,
//!   and the connection is closed. A deadline for the whole body, not for each read:
//!   tower-http's `RequestBodyTimeoutLayer` restarts its clock at every frame, so a client
//!   sending a byte just under the timeout apart would hold the request for as long as it
//!   likes.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use serde_json::json;

/// How much of a request body the demo accepts, and how much it reads to refuse the rest.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted body. Default 1 MiB: room for an LLM answer or a JSON document.
    pub max: usize,
    /// Most bytes read and discarded past the limit before giving up on the client. Default
    /// 8 MiB.
    pub linger_bytes: usize,
    /// Longest time spent discarding them. Default 3 s.
    pub linger_time: Duration,
    /// The whole body must arrive within this time. Default 10 s (`BODY_TIMEOUT_MS`).
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max: 1024 * 1024,
            linger_bytes: 8 * 1024 * 1024,
            linger_time: Duration::from_secs(3),
            time: Duration::from_secs(10),
        }
    }
}

/// Why a body was refused, as the response the client gets.
#[derive(Debug)]
pub enum Refused {
    /// Over the limit (`413`).
    TooLarge { limit: usize },
    /// Not a well-formed body (`400`).
    Malformed,
    /// Not all there within the body timeout (`408`).
    TimedOut { after: Duration },
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::TooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                // The client may still be sending: this connection is done either way.
                [(header::CONNECTION, "close")],
                Json(json!({ "error": format!("body is larger than {limit} bytes") })),
            )
                .into_response(),
            Refused::Malformed => (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": "malformed request body" })),
            )
                .into_response(),
            Refused::TimedOut { after } => (
                StatusCode::REQUEST_TIMEOUT,
                // The rest of the body may still come: this connection is done.
                [(header::CONNECTION, "close")],
                Json(json!({
                    "error": format!("the body did not arrive within {} ms", after.as_millis())
                })),
            )
                .into_response(),
        }
    }
}

/// The whole body, at most `limits.max` bytes, arrived within `limits.time`.
pub async fn read(headers: &HeaderMap, body: Body, limits: Limits) -> Result<Bytes, Refused> {
    let limit = limits.max;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        let expects_continue = headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if !expects_continue {
            discard(body, limits).await;
        }
        return Err(Refused::TooLarge { limit });
    }
    let mut body = body;
    let mut buf = BytesMut::new();
    let deadline = tokio::time::Instant::now() + limits.time;
    loop {
        let Ok(frame) = tokio::time::timeout_at(deadline, body.frame()).await else {
            return Err(Refused::TimedOut { after: limits.time });
        };
        let Some(frame) = frame else { break };
        let Ok(frame) = frame else {
            return Err(Refused::Malformed);
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if buf.len() + data.len() > limit {
            discard(body, limits).await;
            return Err(Refused::TooLarge { limit });
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

/// Reads and drops what is left of `body`, within the limits' lingering bounds.
async fn discard(mut body: Body, limits: Limits) {
    let deadline = tokio::time::Instant::now() + limits.linger_time;
    let mut discarded = 0;
    while discarded < limits.linger_bytes {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                discarded += frame.data_ref().map_or(0, Bytes::len);
            }
            // The end, a broken body, or out of time: stop.
            _ => return,
        }
    }
}

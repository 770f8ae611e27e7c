//! With the `axum` feature: a manager's refusals and bodies are axum responses as they are.

use axum_core::body::Body;
use axum_core::response::{IntoResponse, Response};
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, StatusCode};

use super::body::ConnectionBody;
use super::error::ConnectError;

/// `200 OK` with the event-stream headers (see [`ConnectionBody::into_response`]).
impl<M: Send + Sync + 'static> IntoResponse for ConnectionBody<M> {
    fn into_response(self) -> Response {
        ConnectionBody::into_response(self).map(Body::new)
    }
}

/// `503 Service Unavailable` with `Retry-After: 1` when the manager is full or shutting down
/// (another replica, or this one a moment later, may take the client), `400 Bad Request`
/// for too many topics. The body is the error's message.
impl IntoResponse for ConnectError {
    fn into_response(self) -> Response {
        let status = match self {
            ConnectError::TooManyTopics { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut response = Response::new(Body::from(self.to_string()));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

//! One error type for every failure, rendered in OpenAI's JSON shape:
//! `{"error": {"message", "type", "param", "code"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
}

impl ApiError {
    #[must_use]
    pub fn bad_request(message: &str, param: Option<&'static str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.to_string(),
            param,
        }
    }
    #[must_use]
    pub fn not_found(message: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            message: message.to_string(),
            param: None,
        }
    }
    fn with(status: StatusCode, kind: &'static str, message: &str) -> Self {
        Self {
            status,
            kind,
            message: message.to_string(),
            param: None,
        }
    }
    /// 429: the queue is full; `Retry-After` says when to come back.
    #[must_use]
    pub fn busy() -> Self {
        Self::with(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "the server is at capacity (the request queue is full): retry after a second",
        )
    }
    /// 503: the server is shutting down.
    #[must_use]
    pub fn unavailable() -> Self {
        Self::with(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the server is shutting down and takes no new requests",
        )
    }
    #[must_use]
    pub fn unauthorized(message: &str) -> Self {
        Self::with(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
    }
    #[must_use]
    pub fn forbidden(message: &str) -> Self {
        Self::with(StatusCode::FORBIDDEN, "permission_error", message)
    }
    #[must_use]
    pub fn too_large(limit: usize) -> Self {
        Self::with(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            &format!("the request body is larger than the server's limit of {limit} bytes"),
        )
    }
    /// 413 for one part of the body (an image) over its limit.
    #[must_use]
    pub fn part_too_large(message: &str) -> Self {
        Self::with(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            message,
        )
    }
    #[must_use]
    pub fn method_not_allowed() -> Self {
        Self::with(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "this route does not take that method (generation routes take POST, listings GET)",
        )
    }
    #[must_use]
    pub fn internal(message: &str) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            message: message.to_string(),
            param: None,
        }
    }
}

impl From<crate::ServeError> for ApiError {
    fn from(e: crate::ServeError) -> Self {
        match e {
            crate::ServeError::Store(strata_store::StoreError::NotFound { .. }) => Self {
                status: StatusCode::NOT_FOUND,
                kind: "invalid_request_error",
                message: e.to_string(),
                param: Some("model"),
            },
            crate::ServeError::Store(strata_store::StoreError::Chain(m)) => Self {
                status: StatusCode::CONFLICT,
                kind: "invalid_request_error",
                message: m,
                param: Some("model"),
            },
            crate::ServeError::BadRequest(m) => Self::bad_request(&m, None),
            crate::ServeError::NotFound(m) => Self::not_found(&m),
            crate::ServeError::Image(m) => Self::bad_request(&m, Some("messages")),
            other => Self::internal(&other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = match self.status {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::UNAUTHORIZED => "invalid_api_key",
            StatusCode::FORBIDDEN => "model_not_allowed",
            StatusCode::TOO_MANY_REQUESTS => "queue_full",
            _ => self.kind,
        };
        let body = serde_json::json!({
            "error": { "message": self.message, "type": self.kind, "param": self.param, "code": code }
        });
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS
            || self.status == StatusCode::SERVICE_UNAVAILABLE
        {
            r.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        r
    }
}

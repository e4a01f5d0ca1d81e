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
            crate::ServeError::BadRequest(m) => Self::bad_request(&m, None),
            other => Self::internal(&other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = if self.status == StatusCode::NOT_FOUND {
            "not_found"
        } else {
            self.kind
        };
        let body = serde_json::json!({
            "error": { "message": self.message, "type": self.kind, "param": self.param, "code": code }
        });
        (self.status, Json(body)).into_response()
    }
}

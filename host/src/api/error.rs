//! The one place errors become HTTP responses: a status and a stable, documented code.
//!
//! Body: `{"error": {"code": "snake_case_code", "message": "what happened and what to do"}}`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::engine::registry::ResolveError;
use crate::jobs::JobError;

/// An API error: status + stable code + message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for `Retry-After` (a 429 or 503 without one says 1).
    pub retry_after_s: Option<u64>,
}

/// The JSON shape of every error response.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `unknown_agent`, `invalid_lease`.
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after_s: None }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let retry_after = self.retry_after_s.unwrap_or(1);
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_string(), message: self.message } };
        let mut response = (self.status, Json(body)).into_response();
        // Every 429 and 503 says when to come back.
        if self.status == StatusCode::TOO_MANY_REQUESTS || self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(retry_after));
        }
        response
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        let message = e.to_string();
        let (status, code) = match &e {
            JobError::Resolve(ResolveError::UnknownAgent(_)) => (StatusCode::NOT_FOUND, "unknown_agent"),
            JobError::Resolve(ResolveError::UnknownVersion { .. }) => (StatusCode::NOT_FOUND, "unknown_version"),
            JobError::Resolve(ResolveError::Invalid(_)) => (StatusCode::BAD_REQUEST, "invalid_agent_reference"),
            JobError::Lease(_) => (StatusCode::BAD_REQUEST, "invalid_lease"),
            JobError::IdempotencyConflict(_) => (StatusCode::CONFLICT, "idempotency_conflict"),
            JobError::NotFound(_) => (StatusCode::NOT_FOUND, "job_not_found"),
            JobError::AlreadyFinished { .. } => (StatusCode::CONFLICT, "job_finished"),
            JobError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            JobError::Overloaded(_) => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
            JobError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            JobError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable"),
        };
        let retry_after_s = match &e {
            // Whole seconds, rounded up: coming back earlier would be refused again.
            JobError::RateLimited(wait) => Some(wait.as_millis().div_ceil(1000).max(1).try_into().unwrap_or(u64::MAX)),
            _ => None,
        };
        Self { retry_after_s, ..Self::new(status, code, message) }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let detail = rejection.body_text();
        match &rejection {
            JsonRejection::JsonSyntaxError(_) => {
                Self::bad_request("invalid_json", format!("request body is not valid JSON: {detail}"))
            }
            JsonRejection::JsonDataError(_) => Self::bad_request("invalid_request", detail),
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body is too large: {detail}"),
            ),
            _ => Self::new(rejection.status(), "invalid_request", detail),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request("invalid_query", rejection.body_text())
    }
}

//! The ASP endpoint (`https://host:port/swarm`): `POST /swarm/message`, `POST /swarm/join`,
//! `GET /swarm/info`, `GET /swarm/health`, as the reference serves them. Handlers are thin:
//! bound the body, parse, call [`Federation`] (which rate-limits a sender by its own bucket
//! once it is known to be a member, everyone else by one shared bucket), answer.
//!
//! Every refusal is `{"error": {"code", "message"}}` with a 4xx (`Retry-After` on 429) and
//! an audit row (`scope = swarm.receive` or `swarm.join`, principal `peer:<sender>`), and
//! changes nothing else.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::config::peer_principal;
use super::federation::{Federation, JoinRequest, STRANGERS, timestamp};
use super::{AspError, Message, PROTOCOL_VERSION};
use crate::store::{AuditRecord, Decision, now_ms};

/// The ASP routes.
pub fn router(federation: Arc<Federation>) -> Router {
    Router::new()
        .route("/swarm/message", post(message))
        .route("/swarm/join", post(join))
        .route("/swarm/info", get(info))
        .route("/swarm/health", get(health))
        .with_state(federation)
}

/// A refusal on the wire.
fn refusal(error: &AspError) -> Response {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = serde_json::json!({"error": {"code": error.code(), "message": error.to_string()}});
    let mut response = (status, axum::Json(body)).into_response();
    if let AspError::RateLimited(seconds) = error
        && let Ok(value) = header::HeaderValue::from_str(&seconds.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Reads the body up to the configured limit.
async fn bounded(federation: &Federation, body: Body) -> Result<Bytes, AspError> {
    let limit = federation.config().max_body_bytes;
    axum::body::to_bytes(body, limit).await.map_err(|_| AspError::TooLarge(limit))
}

/// Records a refusal (fire and forget: the answer does not wait for the fsync).
fn audit(federation: &Federation, scope: &str, sender: &str, subject: &str, target: &str, error: &AspError) {
    tracing::info!(scope, sender, target, code = error.code(), error = %error, "ASP request refused");
    let record = AuditRecord {
        id: None,
        job_id: format!("asp:{subject}"),
        principal: peer_principal(if sender.is_empty() { "unknown" } else { sender }),
        scope: scope.to_owned(),
        target: target.to_owned(),
        decision: Decision::Deny,
        reason: Some(format!("{}: {error}", error.code())),
        at: now_ms(),
    };
    drop(federation.store().record_audit(record));
}

async fn message(State(federation): State<Arc<Federation>>, body: Body) -> Response {
    let bytes = match bounded(&federation, body).await {
        Ok(bytes) => bytes,
        Err(e) => {
            audit(&federation, "swarm.receive", "", "message", "", &e);
            return refusal(&e);
        }
    };
    let parsed: Result<Message, _> = serde_json::from_slice(&bytes);
    let message = match parsed {
        Ok(message) => message,
        Err(e) => {
            let error = AspError::Malformed { what: "message", detail: e.to_string() };
            if let Err(limited) = federation.check_rate(STRANGERS) {
                return refusal(&limited);
            }
            audit(&federation, "swarm.receive", "", "message", "", &error);
            return refusal(&error);
        }
    };
    let wire = String::from_utf8_lossy(&bytes).into_owned();
    match federation.receive(&message, wire).await {
        Ok(()) => axum::Json(serde_json::json!({"status": "queued", "message_id": message.message_id})).into_response(),
        Err(e) => {
            audit(&federation, "swarm.receive", &message.sender.agent_id, &message.message_id, &message.swarm_id, &e);
            refusal(&e)
        }
    }
}

async fn join(State(federation): State<Arc<Federation>>, body: Body) -> Response {
    let bytes = match bounded(&federation, body).await {
        Ok(bytes) => bytes,
        Err(e) => return refusal(&e),
    };
    let request: JoinRequest = match serde_json::from_slice(&bytes) {
        Ok(request) => request,
        Err(e) => {
            let error = AspError::Malformed { what: "join request", detail: e.to_string() };
            audit(&federation, "swarm.join", "", "join", "", &error);
            return refusal(&error);
        }
    };
    let sender = request.sender.agent_id.clone();
    if let Err(limited) = federation.check_rate(STRANGERS) {
        return refusal(&limited);
    }
    match federation.admit(request).await {
        Ok(accepted) => axum::Json(accepted).into_response(),
        Err(e) => {
            audit(&federation, "swarm.join", &sender, "join", "", &e);
            refusal(&e)
        }
    }
}

async fn info(State(federation): State<Arc<Federation>>) -> Response {
    axum::Json(federation.info()).into_response()
}

async fn health(State(federation): State<Arc<Federation>>) -> Response {
    axum::Json(serde_json::json!({
        "status": "healthy",
        "agent_id": federation.agent_id(),
        "protocol_version": PROTOCOL_VERSION,
        "timestamp": timestamp(now_ms()),
    }))
    .into_response()
}

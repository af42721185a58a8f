//! `/v1/messages` and `/v1/external-agents`: the HTTP front door of the message plane — a codec
//! over [`crate::messages::MessagePlane`], nothing more. A message is visible to the principal
//! that produced it and to the principal that registered the external agent it is routed to;
//! to anyone else it is `404 message_not_found`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{ApiError, ErrorBody};
use super::{AppState, Principal};
use crate::lease::Scope;
use crate::messages::external::RegistryError;
use crate::messages::{
    AckStage, DeliveryOptions, Envelope, ErrorCode, ExternalAgent, MessageType, Outgoing, Producer, Recipient, Release,
    SendError,
};
use crate::store::{MessageFilter, MessageRecord, RecipientKind, StageRecord};

/// `POST /v1/messages` body: an envelope from an external producer.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    /// `{"agent": "greeter"}` (a name, `name@version` or an external agent id) or
    /// `{"topic": "greetings"}`.
    pub recipient: Recipient,
    /// Default `DATA`.
    #[serde(default)]
    pub message_type: Option<MessageType>,
    /// Default `application/json` for a JSON `payload`, `application/octet-stream` for
    /// `payload_base64`.
    #[serde(default)]
    pub content_type: Option<String>,
    /// The payload as JSON (sent as its compact encoding)...
    #[serde(default)]
    pub payload: Option<Value>,
    /// ...or as bytes, base64 (standard, padded).
    #[serde(default)]
    pub payload_base64: Option<String>,
    /// If given, must equal the payload's length in bytes.
    #[serde(default)]
    pub content_length: Option<u64>,
    /// Default: the principal's name. A registered external agent's id routes ACKs to it.
    #[serde(default)]
    pub producer_id: Option<String>,
    #[serde(default)]
    pub message_id: Option<String>,
    #[serde(default)]
    pub correlation_id: Option<String>,
    #[serde(default)]
    pub parent_correlation_id: Option<String>,
    /// Stable across retries of the same logical message (dedupe).
    #[serde(default)]
    pub idempotency_token: Option<String>,
    /// Monotonic per producer; dedupes when no token is given.
    #[serde(default)]
    pub sequence_number: Option<u64>,
    #[serde(default)]
    pub hlc_timestamp: Option<String>,
    #[serde(default)]
    pub delivery: DeliveryOptions,
}

/// A message as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageView {
    pub id: String,
    pub stage: AckStage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<ErrorCode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub recipient_kind: RecipientKind,
    pub envelope: Envelope,
    /// The payload as JSON, when its content type is JSON and it parses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    pub payload_base64: String,
    pub delivery: Value,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Every stage with its time (only when reading one message).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<StageView>>,
}

/// One stage of a message's history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StageView {
    pub stage: AckStage,
    pub retry_count: u32,
    /// The attempt's `message_id`.
    pub attempt_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<ErrorCode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub at: String,
}

impl From<StageRecord> for StageView {
    fn from(s: StageRecord) -> Self {
        StageView {
            stage: s.stage,
            retry_count: s.retry_count,
            attempt_id: s.attempt_id,
            error_code: s.error_code,
            note: s.note,
            at: crate::rfc3339(s.at),
        }
    }
}

impl MessageView {
    fn new(m: MessageRecord, history: Option<Vec<StageRecord>>) -> Self {
        let json =
            m.envelope.content_type.starts_with("application/json") || m.envelope.content_type.ends_with("+json");
        let payload = json.then(|| serde_json::from_slice(&m.payload).ok()).flatten();
        MessageView {
            id: m.id,
            stage: m.stage,
            error_code: m.error_code,
            note: m.note,
            recipient_kind: m.kind,
            payload,
            payload_base64: base64::engine::general_purpose::STANDARD.encode(&m.payload),
            delivery: serde_json::to_value(m.delivery).unwrap_or(Value::Null),
            envelope: m.envelope,
            created_at: crate::rfc3339(m.created_at),
            updated_at: crate::rfc3339(m.updated_at),
            finished_at: m.finished_at.map(crate::rfc3339),
            history: history.map(|h| h.into_iter().map(StageView::from).collect()),
        }
    }
}

/// What `POST /v1/messages` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Sent {
    /// One per recipient copy (a topic fans out), each committed.
    pub messages: Vec<MessageView>,
    /// `DUPLICATE_DETECTED` or `ALREADY_IN_PROGRESS` when these copies were accepted before
    /// with the same idempotency token (or sequence number).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<ErrorCode>,
}

/// The one mapping of a routing refusal to HTTP.
fn refused(e: SendError) -> ApiError {
    match e {
        SendError::Refused { code, reason, recorded } => {
            let (status, name) = match code {
                ErrorCode::NoRoute => (StatusCode::NOT_FOUND, "no_route"),
                ErrorCode::BufferFull => (StatusCode::TOO_MANY_REQUESTS, "buffer_full"),
                ErrorCode::AgentUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "agent_unavailable"),
                ErrorCode::OversizePayload => (StatusCode::PAYLOAD_TOO_LARGE, "oversize_payload"),
                ErrorCode::ValidationError => (StatusCode::BAD_REQUEST, "validation_error"),
                _ => (StatusCode::BAD_REQUEST, "message_refused"),
            };
            let suffix = if recorded.is_empty() {
                String::new()
            } else {
                format!(" (recorded as REJECTED: {})", recorded.join(", "))
            };
            ApiError::new(status, name, format!("{code}: {reason}{suffix}"))
        }
        SendError::Store(e) => ApiError::from(crate::jobs::JobError::from(e)),
    }
}

/// Send a message as an external producer: answered once every copy is committed (RECEIVED).
#[utoipa::path(post, path = "/v1/messages", tag = "messages", operation_id = "send_message", request_body = SendBody,
    responses(
        (status = 202, description = "Accepted: committed to the recipients' inboxes", body = Sent),
        (status = 200, description = "A duplicate of a message accepted before (see `duplicate`)", body = Sent),
        (status = 400, description = "validation_error", body = ErrorBody),
        (status = 403, description = "denied: the principal's ceiling has no agent.send / topic.publish for it", body = ErrorBody),
        (status = 404, description = "no_route", body = ErrorBody),
        (status = 413, description = "oversize_payload", body = ErrorBody),
        (status = 429, description = "buffer_full (Retry-After)", body = ErrorBody),
        (status = 503, description = "agent_unavailable", body = ErrorBody),
    ))]
pub async fn send(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Result<Json<SendBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let plane = Arc::clone(state.manager.messages());
    let (scope, target) = match &body.recipient {
        Recipient::Agent(a) => (Scope::AgentSend, a.as_str()),
        Recipient::Topic(t) => (Scope::TopicPublish, t.as_str()),
    };
    let ceiling = state.manager.policy().ceiling_for(&principal.0, None);
    if let Err(reason) = ceiling.grants.decide(scope, target) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "denied", format!("{scope} denied for '{target}': {reason}")));
    }
    let (producer_id, out) = body.into_outgoing()?;
    let producer_id = producer_id.unwrap_or_else(|| principal.0.clone());
    let reply_to = plane.externals_of(&principal.0).into_iter().find(|id| *id == producer_id);
    let producer = Producer { principal: principal.0.clone(), id: producer_id, reply_to };
    let accepted = plane.send(&producer, out).await.map_err(|e| {
        let retry = matches!(&e, SendError::Refused { code: ErrorCode::BufferFull, .. });
        (refused(e), retry)
    });
    let accepted = match accepted {
        Ok(a) => a,
        Err((error, retry)) => {
            let mut response = error.into_response();
            if retry {
                response.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
            }
            return Ok(response);
        }
    };
    let status = if accepted.duplicate.is_some() { StatusCode::OK } else { StatusCode::ACCEPTED };
    let messages = accepted.messages.into_iter().map(|m| MessageView::new(m, None)).collect();
    Ok((status, Json(Sent { messages, duplicate: accepted.duplicate })).into_response())
}

impl SendBody {
    /// The message this body asks to send, and the producer id it names (if any). Checks only
    /// the body's own shape; routing, leases and limits are the message plane's.
    pub fn into_outgoing(self) -> Result<(Option<String>, Outgoing), ApiError> {
        let (payload, default_type) = match (self.payload, self.payload_base64) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request("validation_error", "give payload or payload_base64, not both"));
            }
            (Some(v), None) => (v.to_string().into_bytes(), "application/json"),
            (None, Some(b)) => (
                base64::engine::general_purpose::STANDARD.decode(b.as_bytes()).map_err(|e| {
                    ApiError::bad_request("validation_error", format!("payload_base64 is not base64: {e}"))
                })?,
                "application/octet-stream",
            ),
            (None, None) => (Vec::new(), "application/octet-stream"),
        };
        let mut out = Outgoing::new(
            self.recipient,
            self.message_type.unwrap_or(MessageType::Data),
            self.content_type.as_deref().unwrap_or(default_type),
            payload,
        );
        out.content_length = self.content_length;
        out.message_id = self.message_id;
        out.correlation_id = self.correlation_id;
        out.parent_correlation_id = self.parent_correlation_id;
        out.idempotency_token = self.idempotency_token.filter(|t| !t.is_empty());
        out.sequence_number = self.sequence_number;
        out.hlc_timestamp = self.hlc_timestamp;
        out.delivery = self.delivery;
        Ok((self.producer_id, out))
    }
}

/// Read a message with its full stage history.
#[utoipa::path(get, path = "/v1/messages/{id}", tag = "messages", operation_id = "get_message",
    responses((status = 200, body = MessageView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, ApiError> {
    let store_error = |e| ApiError::from(crate::jobs::JobError::from(e));
    let plane = state.manager.messages();
    let message = plane.get(&principal.0, &id).await.map_err(store_error)?.ok_or_else(|| not_found(&id))?;
    let history = state.manager.store().message_stages(&id).await.map_err(store_error)?;
    Ok(Json(MessageView::new(message, Some(history))))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "message_not_found", format!("message '{id}' not found"))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub producer: Option<String>,
    pub recipient: Option<String>,
    /// RECEIVED, READ, FULFILLED, REJECTED, FAILED or TIMED_OUT.
    pub stage: Option<String>,
    /// Page size, 1..=1000 (default 50).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageList {
    pub messages: Vec<MessageView>,
    pub next_cursor: Option<String>,
}

/// List the messages visible to the caller, newest first.
#[utoipa::path(get, path = "/v1/messages", tag = "messages", operation_id = "list_messages", params(ListQuery),
    responses((status = 200, body = MessageList), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<MessageList>, ApiError> {
    let Query(q) = query?;
    let stage = match q.stage.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(AckStage::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("unknown stage '{s}' (RECEIVED, READ, FULFILLED, REJECTED, FAILED, TIMED_OUT)"),
            )
        })?),
    };
    let filter = MessageFilter {
        principal: principal.0.clone(),
        external_agents: state.manager.messages().externals_of(&principal.0),
        producer: q.producer.filter(|p| !p.is_empty()),
        recipient: q.recipient.filter(|r| !r.is_empty()),
        stage,
        limit: q.limit.unwrap_or(50),
        cursor: q.cursor.filter(|c| !c.is_empty()),
    };
    let (messages, next_cursor) = state
        .manager
        .store()
        .list_messages(filter)
        .await
        .map_err(|e| ApiError::from(crate::jobs::JobError::from(e)))?;
    Ok(Json(MessageList { messages: messages.into_iter().map(|m| MessageView::new(m, None)).collect(), next_cursor }))
}

/// A registered external agent and whether it is available now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExternalAgentView {
    pub agent: ExternalAgent,
    /// A stream is open, or it heartbeated within `messages.heartbeat_timeout_ms`.
    pub available: bool,
}

fn registry_error(e: RegistryError) -> ApiError {
    let message = e.to_string();
    match e {
        RegistryError::Invalid(_) => ApiError::bad_request("invalid_agent", message),
        RegistryError::Taken(_) => ApiError::new(StatusCode::CONFLICT, "agent_id_taken", message),
        RegistryError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "external_agent_not_found", message),
        RegistryError::Store(e) => ApiError::from(crate::jobs::JobError::from(e)),
    }
}

/// Register (or re-register) an external agent owned by the caller; it is available at once.
#[utoipa::path(post, path = "/v1/external-agents", tag = "external agents", operation_id = "register_external_agent", request_body = ExternalAgent,
    responses((status = 201, body = ExternalAgentView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn register(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Result<Json<ExternalAgent>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(agent) = body?;
    state.manager.messages().register(&principal.0, agent.clone()).await.map_err(registry_error)?;
    Ok((StatusCode::CREATED, Json(ExternalAgentView { agent, available: true })).into_response())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Done {
    pub ok: bool,
}

/// Heartbeat: the agent stays available for `messages.heartbeat_timeout_ms`.
#[utoipa::path(post, path = "/v1/external-agents/{id}/heartbeat", tag = "external agents", operation_id = "heartbeat_external_agent",
    responses((status = 200, body = Done), (status = 404, body = ErrorBody)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Done>, ApiError> {
    state.manager.messages().heartbeat(&principal.0, &id).map_err(registry_error)?;
    Ok(Json(Done { ok: true }))
}

/// Deregister; messages queued for it stay in the store.
#[utoipa::path(delete, path = "/v1/external-agents/{id}", tag = "external agents", operation_id = "deregister_external_agent",
    responses((status = 200, body = Done), (status = 404, body = ErrorBody)))]
pub async fn deregister(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Done>, ApiError> {
    state.manager.messages().deregister(&principal.0, &id).await.map_err(registry_error)?;
    Ok(Json(Done { ok: true }))
}

/// The agent's deliveries as Server-Sent Events: `event: message`, `id: <seq>`, data = the
/// message. Each stays in flight until released (`POST .../inbox/{seq}/ack`); unreleased ones
/// come back after their ack timeout, or when the stream closes and a new one opens.
#[utoipa::path(get, path = "/v1/external-agents/{id}/inbox", tag = "external agents", operation_id = "external_agent_inbox",
    responses((status = 200, description = "text/event-stream of MessageView"), (status = 404, body = ErrorBody)))]
pub async fn inbox(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let stream = state.manager.messages().stream(&principal.0, &id).map_err(registry_error)?;
    let events = futures::stream::unfold(stream, |mut stream| async move {
        let item = stream.next().await?;
        let data = serde_json::to_string(&MessageView::new(item.message, None)).unwrap_or_default();
        Some((Ok(Event::default().event("message").id(item.seq.to_string()).data(data)), stream))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15))))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Released {
    /// `false`: no such delivery in flight for this agent (already released, or its lease
    /// lapsed and it went back to the inbox) — nothing changed.
    pub recorded: bool,
}

/// Release a streamed message with its outcome (`{"outcome": "fulfilled"}`, `{"outcome":
/// "rejected", "code": "VALIDATION_ERROR", "note": "..."}` or `{"outcome": "failed", "note":
/// "..."}`). Only the recipient's owner can release it.
#[utoipa::path(post, path = "/v1/external-agents/{id}/inbox/{seq}/ack", tag = "external agents", operation_id = "release_delivery", request_body = Release,
    responses((status = 200, body = Released), (status = 404, body = ErrorBody)))]
pub async fn release(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, seq)): Path<(String, i64)>,
    body: Result<Json<Release>, JsonRejection>,
) -> Result<Json<Released>, ApiError> {
    let Json(outcome) = body?;
    let plane = Arc::clone(state.manager.messages());
    let recorded = plane.release(&principal.0, &id, seq, outcome).await.map_err(registry_error)?;
    Ok(Json(Released { recorded }))
}

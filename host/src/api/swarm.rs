//! `/v1/swarms` and `/v1/swarm/…`: the operator's surface for federation (what `corral swarm`
//! calls). Thin: authenticate as an operator, parse, call [`Federation`], map its errors.
//! Without `[swarm] listen` the host is in no swarm and every route answers `409 swarm_off`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::messages::Done;
use super::{AppState, Principal};
use crate::asp::AspError;
use crate::asp::federation::{Federation, Info, InviteView, SwarmView};

fn federation(state: &AppState, principal: &Principal) -> Result<Arc<Federation>, ApiError> {
    if !state.manager.policy().is_operator(&principal.0) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "operator_only",
            "swarms are managed by operators (policy: operator = true)",
        ));
    }
    state.manager.federation().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "swarm_off",
            "this host serves no swarm endpoint: set [swarm] listen in the policy",
        )
    })
}

fn asp_error(e: AspError) -> ApiError {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    ApiError::new(status, e.code(), e.to_string())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SwarmList {
    pub swarms: Vec<SwarmView>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    pub name: String,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct InviteBody {
    /// Lifetime of the invite (`[swarm] invite_ttl_ms` when absent).
    pub ttl_ms: Option<u64>,
    /// Joins it admits at most (unlimited when absent).
    pub max_uses: Option<u64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinBody {
    /// The invite token, or its `swarm://…?token=…` URL.
    pub invite: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberBody {
    pub agent_id: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MuteBody {
    /// One member; the whole swarm when absent.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// `false` unmutes.
    #[serde(default = "yes")]
    pub muted: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendSwarmBody {
    /// A member's agent id, or `broadcast` for every other member.
    pub recipient: String,
    pub content: String,
    /// `message` (default) or `notification`.
    #[serde(default = "message_type", rename = "type")]
    pub kind: String,
}

fn message_type() -> String {
    "message".into()
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Queued {
    pub status: &'static str,
    pub message_id: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InboxQuery {
    pub swarm: Option<String>,
    /// Only messages after this `seq`.
    #[serde(default)]
    pub after: i64,
    pub limit: Option<u32>,
    /// Include messages from muted swarms and members.
    #[serde(default)]
    pub muted: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InboxMessage {
    pub seq: i64,
    pub message_id: String,
    pub swarm_id: String,
    pub sender: String,
    pub recipient: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub content: String,
    pub muted: bool,
    pub received_at: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Inbox {
    pub messages: Vec<InboxMessage>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OutboxEntry {
    pub message_id: String,
    pub peer: String,
    pub endpoint: String,
    pub attempts: u32,
    pub next_at: i64,
    pub last_error: Option<String>,
    pub dead: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Outbox {
    pub entries: Vec<OutboxEntry>,
}

/// This host's ASP identity: agent id, endpoint, public key, signature schemes.
#[utoipa::path(get, path = "/v1/swarm/identity", tag = "swarm", operation_id = "swarm_identity",
    responses((status = 200, description = "as GET /swarm/info"), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn identity(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
) -> Result<Json<Info>, ApiError> {
    Ok(Json(federation(&state, &principal)?.info()))
}

/// The swarms this host is in, with their members.
#[utoipa::path(get, path = "/v1/swarms", tag = "swarm", operation_id = "list_swarms",
    responses((status = 200, body = SwarmList), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
) -> Result<Json<SwarmList>, ApiError> {
    let swarms = federation(&state, &principal)?.swarms().await.map_err(asp_error)?;
    Ok(Json(SwarmList { swarms }))
}

/// Creates a swarm with this host as master.
#[utoipa::path(post, path = "/v1/swarms", tag = "swarm", operation_id = "create_swarm", request_body = CreateBody,
    responses((status = 200, body = SwarmView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Json(body): Json<CreateBody>,
) -> Result<Json<SwarmView>, ApiError> {
    let view = federation(&state, &principal)?.create(&body.name).await.map_err(asp_error)?;
    tracing::info!(principal = %principal.0, swarm = %view.swarm_id, "swarm created");
    Ok(Json(view))
}

/// One swarm and its members.
#[utoipa::path(get, path = "/v1/swarms/{id}", tag = "swarm", operation_id = "get_swarm",
    responses((status = 200, body = SwarmView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<SwarmView>, ApiError> {
    Ok(Json(federation(&state, &principal)?.view(&id).await.map_err(asp_error)?))
}

/// Issues an invite (master only).
#[utoipa::path(post, path = "/v1/swarms/{id}/invites", tag = "swarm", operation_id = "invite_to_swarm", request_body = InviteBody,
    responses((status = 200, body = InviteView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn invite(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
    Json(body): Json<InviteBody>,
) -> Result<Json<InviteView>, ApiError> {
    let view = federation(&state, &principal)?.invite(&id, body.ttl_ms, body.max_uses).await.map_err(asp_error)?;
    Ok(Json(view))
}

/// Joins a swarm by invite: verifies the invite against its master's key, then asks the master.
#[utoipa::path(post, path = "/v1/swarms/join", tag = "swarm", operation_id = "join_swarm", request_body = JoinBody,
    responses((status = 200, body = SwarmView), (status = 401, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn join(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Json(body): Json<JoinBody>,
) -> Result<Json<SwarmView>, ApiError> {
    let view = federation(&state, &principal)?.join(&body.invite).await.map_err(asp_error)?;
    tracing::info!(principal = %principal.0, swarm = %view.swarm_id, "joined a swarm");
    Ok(Json(view))
}

/// Leaves a swarm (the master transfers its role first).
#[utoipa::path(post, path = "/v1/swarms/{id}/leave", tag = "swarm", operation_id = "leave_swarm",
    responses((status = 200, body = Done), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn leave(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Done>, ApiError> {
    federation(&state, &principal)?.leave(&id).await.map_err(asp_error)?;
    Ok(Json(Done { ok: true }))
}

/// Removes a member (master only).
#[utoipa::path(post, path = "/v1/swarms/{id}/kick", tag = "swarm", operation_id = "kick_member", request_body = MemberBody,
    responses((status = 200, body = Done), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn kick(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
    Json(body): Json<MemberBody>,
) -> Result<Json<Done>, ApiError> {
    federation(&state, &principal)?.kick(&id, &body.agent_id).await.map_err(asp_error)?;
    Ok(Json(Done { ok: true }))
}

/// Hands the master role to a member (master only).
#[utoipa::path(post, path = "/v1/swarms/{id}/transfer", tag = "swarm", operation_id = "transfer_master", request_body = MemberBody,
    responses((status = 200, body = Done), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn transfer(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
    Json(body): Json<MemberBody>,
) -> Result<Json<Done>, ApiError> {
    federation(&state, &principal)?.transfer(&id, &body.agent_id).await.map_err(asp_error)?;
    Ok(Json(Done { ok: true }))
}

/// Mutes or unmutes a swarm or one member, on this host.
#[utoipa::path(post, path = "/v1/swarms/{id}/mute", tag = "swarm", operation_id = "mute_swarm", request_body = MuteBody,
    responses((status = 200, body = Done), (status = 404, body = ErrorBody)))]
pub async fn mute(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
    Json(body): Json<MuteBody>,
) -> Result<Json<Done>, ApiError> {
    federation(&state, &principal)?.mute(&id, body.agent_id.as_deref(), body.muted).await.map_err(asp_error)?;
    Ok(Json(Done { ok: true }))
}

/// Sends a message to a member or to every other member; durable on return, then delivered by
/// the outbox.
#[utoipa::path(post, path = "/v1/swarms/{id}/messages", tag = "swarm", operation_id = "send_to_swarm", request_body = SendSwarmBody,
    responses((status = 200, body = Queued), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn send(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
    Json(body): Json<SendSwarmBody>,
) -> Result<Json<Queued>, ApiError> {
    let message_id = federation(&state, &principal)?
        .send(&id, &body.recipient, &body.kind, body.content)
        .await
        .map_err(asp_error)?;
    Ok(Json(Queued { status: "queued", message_id }))
}

/// Messages received from swarms, oldest first.
#[utoipa::path(get, path = "/v1/swarm/inbox", tag = "swarm", operation_id = "swarm_inbox", params(InboxQuery),
    responses((status = 200, body = Inbox), (status = 403, body = ErrorBody)))]
pub async fn inbox(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Query(query): Query<InboxQuery>,
) -> Result<Json<Inbox>, ApiError> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let rows =
        federation(&state, &principal)?.inbox(query.swarm, query.after, limit, query.muted).await.map_err(asp_error)?;
    let messages = rows
        .into_iter()
        .map(|r| InboxMessage {
            seq: r.seq,
            message_id: r.message_id,
            swarm_id: r.swarm_id,
            sender: r.sender,
            recipient: r.recipient,
            kind: r.kind,
            content: r.content,
            muted: r.muted,
            received_at: r.received_at,
        })
        .collect();
    Ok(Json(Inbox { messages }))
}

/// Messages waiting for delivery, and dead ones with their last error.
#[utoipa::path(get, path = "/v1/swarm/outbox", tag = "swarm", operation_id = "swarm_outbox",
    responses((status = 200, body = Outbox), (status = 403, body = ErrorBody)))]
pub async fn outbox(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
) -> Result<Json<Outbox>, ApiError> {
    let rows = federation(&state, &principal)?.outbox(1000).await.map_err(asp_error)?;
    let entries = rows
        .into_iter()
        .map(|r| OutboxEntry {
            message_id: r.message_id,
            peer: r.peer,
            endpoint: r.endpoint,
            attempts: r.attempts,
            next_at: r.next_at,
            last_error: r.last_error,
            dead: r.dead,
        })
        .collect();
    Ok(Json(Outbox { entries }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SentMessage {
    pub message_id: String,
    /// The stage reports its recipient sent back (oldest first), and FAILED/UNDELIVERED if the
    /// outbox gave up on it.
    pub stages: Vec<crate::asp::remote::StageReport>,
}

/// What became of a message this host sent to an agent on another host.
#[utoipa::path(get, path = "/v1/swarm/messages/{id}", tag = "swarm", operation_id = "swarm_message_stages",
    responses((status = 200, body = SentMessage), (status = 403, body = ErrorBody)))]
pub async fn stages(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<SentMessage>, ApiError> {
    let stages = federation(&state, &principal)?.stages(&id).await.map_err(asp_error)?;
    Ok(Json(SentMessage { message_id: id, stages }))
}

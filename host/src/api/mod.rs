//! The HTTP front door (axum). Handlers are thin: they authenticate, parse, call into
//! [`crate::jobs::JobManager`], and map errors once (in `error.rs`).
//!
//! Access: when the policy names principals, every `/v1` request needs
//! `Authorization: Bearer <token>`; the token picks the principal. Without principals
//! every request is the `local` principal — allowed only while listening on loopback
//! (enforced at startup by `serve`).

pub mod error;
pub mod events;
pub mod jobs;
pub mod messages;
pub mod secrets;
pub mod swarm;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use utoipa::OpenApi;

use crate::engine::registry::{AgentSummary, AgentVersionSummary, LoadFailure};
use crate::jobs::JobManager;
use error::ApiError;

/// Shared state of every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    pub manager: Arc<JobManager>,
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal(pub String);

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "corral", description = "Run sandboxed WebAssembly agents under leases."),
    paths(
        jobs::submit, jobs::get, jobs::list, jobs::cancel, events::stream, agents, healthz, readyz,
        messages::send, messages::get, messages::list,
        messages::register, messages::heartbeat, messages::deregister, messages::inbox, messages::release,
        secrets::list, secrets::set, secrets::remove,
        swarm::identity, swarm::list, swarm::create, swarm::get, swarm::invite, swarm::join, swarm::leave,
        swarm::kick, swarm::transfer, swarm::mute, swarm::send, swarm::inbox, swarm::outbox, swarm::stages
    ),
    components(schemas(
        jobs::SubmitBody, jobs::JobView, jobs::JobList, error::ErrorBody, error::ErrorDetail,
        AgentList, AgentSummary, AgentVersionSummary, LoadFailure, Health, Readiness,
        messages::SendBody, messages::MessageView, messages::StageView, messages::Sent, messages::MessageList,
        messages::ExternalAgentView, messages::Done, messages::Released,
        crate::messages::Recipient, crate::messages::Envelope, crate::messages::DeliveryOptions,
        crate::messages::ExternalAgent, crate::messages::Release, crate::messages::MessageType,
        crate::messages::AckStage, crate::messages::ErrorCode, crate::messages::CommClass,
        crate::store::RecipientKind,
        secrets::SetSecretBody, secrets::SecretList, crate::secrets::SecretView, crate::secrets::Injection,
        swarm::SwarmList, swarm::CreateBody, swarm::InviteBody, swarm::JoinBody, swarm::MemberBody, swarm::MuteBody,
        swarm::SendSwarmBody, swarm::Queued, swarm::Inbox, swarm::InboxMessage, swarm::Outbox, swarm::OutboxEntry, swarm::SentMessage, crate::asp::remote::StageReport,
        crate::asp::federation::SwarmView, crate::asp::federation::MemberView, crate::asp::federation::InviteView
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Builds the router.
pub fn router(manager: Arc<JobManager>) -> Router {
    let max_body = manager.policy().server.max_body_bytes;
    let state = AppState { manager };
    let v1 = Router::new()
        .route("/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/events", get(events::stream))
        .route("/v1/agents", get(agents))
        .route("/v1/messages", post(messages::send).get(messages::list))
        .route("/v1/messages/{id}", get(messages::get))
        .route("/v1/external-agents", post(messages::register))
        .route("/v1/external-agents/{id}", axum::routing::delete(messages::deregister))
        .route("/v1/external-agents/{id}/heartbeat", post(messages::heartbeat))
        .route("/v1/external-agents/{id}/inbox", get(messages::inbox))
        .route("/v1/external-agents/{id}/inbox/{seq}/ack", post(messages::release))
        .route("/v1/secrets", get(secrets::list))
        .route("/v1/secrets/{name}", axum::routing::put(secrets::set).delete(secrets::remove))
        .route("/v1/swarms", get(swarm::list).post(swarm::create))
        .route("/v1/swarms/join", post(swarm::join))
        .route("/v1/swarms/{id}", get(swarm::get))
        .route("/v1/swarms/{id}/invites", post(swarm::invite))
        .route("/v1/swarms/{id}/leave", post(swarm::leave))
        .route("/v1/swarms/{id}/kick", post(swarm::kick))
        .route("/v1/swarms/{id}/transfer", post(swarm::transfer))
        .route("/v1/swarms/{id}/mute", post(swarm::mute))
        .route("/v1/swarms/{id}/messages", post(swarm::send))
        .route("/v1/swarm/identity", get(swarm::identity))
        .route("/v1/swarm/inbox", get(swarm::inbox))
        .route("/v1/swarm/outbox", get(swarm::outbox))
        .route("/v1/swarm/messages/{id}", get(swarm::stages))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .merge(v1)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Result<Response, ApiError> {
    let header = request.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let principal = state.manager.policy().authenticate(header).map_err(ApiError::unauthorized)?;
    request.extensions_mut().insert(Principal(principal));
    Ok(next.run(request).await)
}

async fn not_found() -> ApiError {
    ApiError::new(axum::http::StatusCode::NOT_FOUND, "not_found", "no such route — see GET /openapi.json")
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AgentList {
    pub agents: Vec<AgentSummary>,
    /// Registered external agents (processes outside the host that receive messages).
    pub external: Vec<messages::ExternalAgentView>,
    /// Files in the agents folder that were rejected, with why.
    pub errors: Vec<LoadFailure>,
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AgentsQuery {
    /// Only agents (loaded and external) that declare this capability.
    pub capability: Option<String>,
}

/// The agents this host can run, and the external agents registered with it. Load errors name
/// files by path only for operators; other principals see the file name, with the host's paths
/// taken out of the message.
#[utoipa::path(get, path = "/v1/agents", tag = "agents", operation_id = "list_agents", params(AgentsQuery), responses((status = 200, body = AgentList)))]
pub async fn agents(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    query: Result<axum::extract::Query<AgentsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AgentList>, ApiError> {
    let axum::extract::Query(query) = query?;
    let capability = query.capability.filter(|c| !c.is_empty());
    let (mut agents, mut errors) = state.manager.registry().list();
    if let Some(c) = &capability {
        agents.retain(|a| a.capabilities.iter().any(|x| x == c));
    }
    if !state.manager.policy().is_operator(&principal.0) {
        errors.iter_mut().for_each(LoadFailure::hide_paths);
    }
    let external = state
        .manager
        .messages()
        .external_agents(capability.as_deref())
        .into_iter()
        .map(|(agent, available)| messages::ExternalAgentView { agent, available })
        .collect();
    Ok(Json(AgentList { agents, external, errors }))
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: String,
}

/// Liveness: `ok`, or `shutting_down` while draining.
#[utoipa::path(get, path = "/healthz", tag = "health", operation_id = "healthz", responses((status = 200, body = Health)))]
pub async fn healthz(State(state): State<AppState>) -> Json<Health> {
    let status = if state.manager.is_shutting_down() { "shutting_down" } else { "ok" };
    Json(Health { status: status.into() })
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// Whether this host should be sent traffic: the store takes writes, at least one agent is
    /// loaded, and it is not shutting down.
    pub ready: bool,
    pub store_writable: bool,
    pub agents_loaded: usize,
    pub shutting_down: bool,
    /// Why it is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Readiness: `200` once the store's writer commits a transaction and an agent is loaded,
/// else `503` with the reason (liveness is `/healthz`).
#[utoipa::path(get, path = "/readyz", tag = "health", operation_id = "readyz",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let shutting_down = state.manager.is_shutting_down();
    let store = state.manager.store().check_writable().await;
    let agents_loaded = state.manager.registry().list().0.len();
    let problem = match (&store, agents_loaded, shutting_down) {
        (_, _, true) => Some("shutting down".to_owned()),
        (Err(e), _, _) => Some(format!("the store does not take writes: {e}")),
        (Ok(()), 0, _) => Some("no agent is loaded (see GET /v1/agents for load errors)".to_owned()),
        _ => None,
    };
    let readiness =
        Readiness { ready: problem.is_none(), store_writable: store.is_ok(), agents_loaded, shutting_down, problem };
    let status = if readiness.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(readiness))
}

/// Prometheus metrics (text exposition format). Operators only: without tokens that is the
/// local principal; with tokens, a scraper sends an operator's bearer token.
async fn metrics(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    if !state.manager.policy().is_operator(&principal.0) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "operator_only",
            "metrics are for operators (policy: operator = true)",
        ));
    }
    let Some(metrics) = crate::metrics::recording() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "metrics_off",
            "metrics are off (policy: server.metrics = false)",
        ));
    };
    let manager = &state.manager;
    let snapshot = crate::metrics::Snapshot {
        jobs_running: manager.running_jobs(),
        jobs_queued: manager.queued_jobs(),
        agents_loaded: manager.registry().list().0.len(),
        store_bytes: manager.store().size_on_disk(),
    };
    let text = metrics.render(snapshot);
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(([(axum::http::header::CONTENT_TYPE, content_type)], text).into_response())
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

//! `/v1/secrets`: the operator's surface for secrets (see `crate::secrets`). Only principals
//! the policy marks `operator = true` (or `local` without tokens) may call it; everyone else
//! gets `403 operator_only`, whether or not the secret exists.
//!
//! A value goes in (`PUT`) and never comes out: responses, error messages and log lines carry
//! names, destinations and rotation times only. A malformed body is refused with its position,
//! not serde's usual excerpt of the offending text, which could be the value.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::messages::Done;
use super::{AppState, Principal};
use crate::secrets::{Injection, SecretError, SecretSpec, SecretValue, SecretView};

/// The body of `PUT /v1/secrets/{name}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSecretBody {
    /// The secret (for `basic`: `user:password`). Stored sealed; never returned.
    pub value: String,
    /// URL patterns it may be sent to (the `net.fetch` syntax), e.g. `https://api.example.com/v1/**`.
    pub allow: Vec<String>,
    /// `"bearer"`, `"basic"`, or `{"header": "X-Api-Key"}`.
    pub inject: Injection,
    /// Agents that may use it (`name` or `name@version`); empty: any whose lease grants `secret.use`.
    #[serde(default)]
    pub agents: Vec<String>,
    /// Principals whose jobs may use it; empty: any.
    #[serde(default)]
    pub principals: Vec<String>,
}

impl std::fmt::Debug for SetSecretBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetSecretBody")
            .field("allow", &self.allow)
            .field("inject", &self.inject)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SecretList {
    pub secrets: Vec<SecretView>,
}

fn operator_only(state: &AppState, principal: &Principal) -> Result<(), ApiError> {
    if state.manager.policy().is_operator(&principal.0) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "operator_only",
        "secrets are managed by operators (policy: operator = true)",
    ))
}

fn secret_error(e: SecretError) -> ApiError {
    let message = e.to_string();
    match e {
        SecretError::NoKey => ApiError::new(StatusCode::CONFLICT, "secrets_disabled", message),
        SecretError::BadKey(_) | SecretError::Unsealable { .. } | SecretError::Io { .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "secrets_unavailable", message)
        }
        SecretError::Invalid(_) => ApiError::bad_request("invalid_secret", message),
        SecretError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "secret_not_found", message),
    }
}

/// Sealing writes and fsyncs a file: off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SecretError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("secret update panicked: {e}"))
        })?
        .map_err(secret_error)
}

/// Every secret: name, destinations, injection, who may use it, when it was last set. No values.
#[utoipa::path(get, path = "/v1/secrets", tag = "secrets", operation_id = "list_secrets",
    responses((status = 200, body = SecretList), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
) -> Result<Json<SecretList>, ApiError> {
    operator_only(&state, &principal)?;
    Ok(Json(SecretList { secrets: state.manager.secrets().list() }))
}

/// Sets or rotates a secret. Durable on return; the next fetch that names it uses the new value.
#[utoipa::path(put, path = "/v1/secrets/{name}", tag = "secrets", operation_id = "set_secret", request_body = SetSecretBody,
    responses((status = 200, body = SecretView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "the host has no secrets key", body = ErrorBody)))]
pub async fn set(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<SecretView>, ApiError> {
    operator_only(&state, &principal)?;
    let body: SetSecretBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_secret",
            format!(
                "the body is not a secret ({:?} error at line {} column {}); expected {{\"value\": string, \"allow\": [URL patterns], \"inject\": \"bearer\" | \"basic\" | {{\"header\": name}}, \"agents\"?: [..], \"principals\"?: [..]}}",
                e.classify(),
                e.line(),
                e.column()
            ),
        )
    })?;
    let spec = SecretSpec { allow: body.allow, inject: body.inject, agents: body.agents, principals: body.principals };
    let manager = std::sync::Arc::clone(&state.manager);
    let shown = name.clone();
    let view = blocking(move || manager.secrets().set(&name, SecretValue::new(body.value), spec)).await?;
    tracing::info!(principal = %principal.0, secret = %shown, "secret set");
    Ok(Json(view))
}

/// Removes a secret; fetches that name it are denied from then on.
#[utoipa::path(delete, path = "/v1/secrets/{name}", tag = "secrets", operation_id = "remove_secret",
    responses((status = 200, body = Done), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<Done>, ApiError> {
    operator_only(&state, &principal)?;
    let manager = std::sync::Arc::clone(&state.manager);
    let shown = name.clone();
    let removed = blocking(move || manager.secrets().remove(&name)).await?;
    if !removed {
        return Err(secret_error(SecretError::NotFound(shown)));
    }
    tracing::info!(principal = %principal.0, secret = %shown, "secret removed");
    Ok(Json(Done { ok: true }))
}

//! `/v1/jobs`: submit, read, list, cancel. A job exists only for the principal that
//! submitted it: to anyone else it is `404 job_not_found`, never `403` (no probing ids).

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::error::{ApiError, ErrorBody};
use super::{AppState, Principal};
use crate::jobs::SubmitRequest;
use crate::store::{JobFilter, JobRecord, JobStatus};
use crate::telemetry::TraceParent;

/// Longest `?wait=` honoured, in milliseconds.
pub const MAX_WAIT_MS: u64 = 60_000;

/// `POST /v1/jobs` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    /// `name` (newest version) or `name@version`.
    pub agent: String,
    /// The job's input, any JSON (default `null`).
    #[serde(default)]
    pub input: Value,
    /// The lease asked for: `{"grants": {"kv.read": ["counter/*"]}, "ttl_ms": 60000, "limits": {"deadline_ms": 5000}}`.
    #[serde(default)]
    pub lease: Option<Value>,
    /// Same key + same request → the same job; same key + different request → 409.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SubmitQuery {
    /// Wait up to this many milliseconds for the job to finish (max 60000).
    pub wait: Option<u64>,
}

/// A job as the API shows it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: String,
    /// The agent's name (the version it runs is `agent_version`).
    pub agent: String,
    pub agent_version: String,
    /// queued | running | completed | failed | cancelled | timed_out
    pub status: String,
    pub input: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    /// The effective lease the job runs under.
    pub lease: Value,
    pub parent_id: Option<String>,
    pub attempt: u32,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The W3C trace the job belongs to (from the submit's `traceparent`, or its parent's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

impl From<JobRecord> for JobView {
    fn from(j: JobRecord) -> Self {
        Self {
            id: j.id,
            agent: j.agent_name,
            agent_version: j.agent_version,
            status: j.status.as_str().to_string(),
            input: j.input,
            output: j.output,
            error: j.error,
            lease: j.lease,
            parent_id: j.parent_id,
            attempt: j.attempt,
            created_at: crate::rfc3339(j.created_at),
            started_at: j.started_at.map(crate::rfc3339),
            finished_at: j.finished_at.map(crate::rfc3339),
            trace_id: j.trace_parent.map(|t| t.trace_id()),
        }
    }
}

/// Submit a job.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", operation_id = "submit_job", request_body = SubmitBody, params(SubmitQuery),
    responses(
        (status = 202, description = "Accepted (durably recorded)", body = JobView),
        (status = 200, description = "Finished within `wait`, or an idempotent replay of a finished job", body = JobView),
        (status = 400, description = "Malformed JSON, invalid lease or reference", body = ErrorBody),
        (status = 404, description = "Unknown agent or version", body = ErrorBody),
        (status = 409, description = "Idempotency key reused for another request", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 429, description = "overloaded: server.max_queued_jobs jobs already wait for a slot (Retry-After)", body = ErrorBody),
        (status = 503, description = "Shutting down or storage unavailable (Retry-After)", body = ErrorBody),
    ))]
pub async fn submit(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: axum::http::HeaderMap,
    query: Result<Query<SubmitQuery>, QueryRejection>,
    body: Result<Json<SubmitBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let Json(body) = body?;
    if query.wait.is_some_and(|w| w > MAX_WAIT_MS) {
        return Err(ApiError::bad_request("invalid_query", format!("wait must be at most {MAX_WAIT_MS} ms")));
    }
    // A W3C `traceparent` makes the job part of the caller's trace; a malformed one is ignored.
    let caller = headers.get("traceparent").and_then(|v| v.to_str().ok()).and_then(TraceParent::parse);
    let mut span = crate::telemetry::start("POST /v1/jobs", caller.as_ref(), Vec::new);
    span.set("corral.agent", || body.agent.clone());
    let req = SubmitRequest {
        agent: body.agent,
        input: body.input,
        lease: body.lease,
        idempotency_key: body.idempotency_key,
        trace_parent: span.context().copied(),
    };
    let (job, replayed) = match query.wait.filter(|w| *w > 0) {
        Some(wait) => state.manager.submit_and_wait(&principal.0, req, Duration::from_millis(wait)).await?,
        None => state.manager.submit(&principal.0, req).await?,
    };
    span.set("corral.job_id", || job.id.clone());
    let status = if job.status.is_terminal() { StatusCode::OK } else { StatusCode::ACCEPTED };
    let mut response = (status, Json(JobView::from(job))).into_response();
    if replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Read a job.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", operation_id = "get_job",
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(state.manager.get(&principal.0, &id).await?.into()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub status: Option<String>,
    pub agent: Option<String>,
    /// Page size, 1..=1000 (default 50).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    pub next_cursor: Option<String>,
}

/// List the caller's jobs, newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", operation_id = "list_jobs", params(ListQuery),
    responses((status = 200, body = JobList), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let Query(q) = query?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("unknown status '{s}' (queued, running, completed, failed, cancelled, timed_out)"),
            )
        })?),
    };
    let filter = JobFilter {
        principal: principal.0.clone(),
        statuses: status.into_iter().collect(),
        agent: q.agent.filter(|a| !a.is_empty()),
        limit: q.limit.unwrap_or(50),
        cursor: q.cursor.filter(|c| !c.is_empty()),
        ..JobFilter::default()
    };
    let (jobs, next_cursor) = state.manager.store().list_jobs(filter).await.map_err(crate::jobs::JobError::from)?;
    Ok(Json(JobList { jobs: jobs.into_iter().map(JobView::from).collect(), next_cursor }))
}

/// Cancel a job.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", operation_id = "cancel_job",
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody), (status = 409, description = "Already finished", body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(state.manager.cancel(&principal.0, &id).await?.into()))
}

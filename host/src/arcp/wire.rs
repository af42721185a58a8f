//! Envelopes out, and corral's errors as ARCP error codes.
//!
//! ARCP's ids carry a type prefix (`job_`, `sess_`, `msg_`); corral's job ids are UUIDs, so an
//! ARCP job id is `job_<uuid>` and [`job_id`] / [`corral_job_id`] convert both ways.

use arcp_core::Envelope;
use arcp_core::ErrorCode;
use arcp_core::ids::{JobId, MessageId, SessionId};
use arcp_core::messages::{JobFailedPayload, MessageType, NackPayload};

use crate::engine::registry::ResolveError;
use crate::jobs::JobError;
use crate::lease::LeaseError;

/// An outgoing envelope with this payload, correlated to the request `to` (if any).
pub fn reply(payload: MessageType, to: Option<&MessageId>) -> Envelope {
    let mut envelope = Envelope::new(payload);
    envelope.correlation_id = to.cloned();
    envelope
}

/// An envelope about job `job` (corral id), correlated to the `tool.invoke` that started it.
pub fn job_event(payload: MessageType, job: &str, invoke: &MessageId) -> Envelope {
    let mut envelope = reply(payload, Some(invoke));
    envelope.job_id = Some(job_id(job));
    envelope
}

/// `nack{code, message}` correlated to `to`.
pub fn nack(code: ErrorCode, message: impl Into<String>, to: Option<&MessageId>) -> Envelope {
    reply(MessageType::Nack(NackPayload { code, message: message.into(), details: None }), to)
}

/// A `job.failed` for an invoke that never became a job (no `job_id`).
pub fn invoke_failed(code: ErrorCode, message: impl Into<String>, invoke: &MessageId) -> Envelope {
    let payload = JobFailedPayload { code, retryable: Some(code.retryable()), message: message.into(), details: None };
    reply(MessageType::JobFailed(payload), Some(invoke))
}

/// The ARCP id of corral job `id`.
pub fn job_id(id: &str) -> JobId {
    // The prefix is right by construction and `id` (a UUID) is never empty, so parsing cannot
    // fail; the fallback keeps this total anyway.
    format!("job_{id}").parse().unwrap_or_default()
}

/// The corral id behind an ARCP job id (`job_<uuid>`), or `None` for anything else.
pub fn corral_job_id(arcp: &str) -> Option<&str> {
    arcp.strip_prefix("job_").filter(|rest| !rest.is_empty())
}

pub fn new_session_id() -> SessionId {
    SessionId::new()
}

/// The ARCP code of a submission error.
pub fn submit_error_code(e: &JobError) -> ErrorCode {
    match e {
        JobError::Resolve(ResolveError::UnknownAgent(_)) => ErrorCode::NotFound,
        JobError::Resolve(ResolveError::UnknownVersion { .. }) => ErrorCode::AgentVersionNotAvailable,
        JobError::Resolve(ResolveError::Invalid(_)) => ErrorCode::InvalidArgument,
        JobError::Lease(LeaseError::WiderThanParent { .. }) => ErrorCode::LeaseSubsetViolation,
        JobError::Lease(LeaseError::ParentExpired { .. }) => ErrorCode::LeaseExpired,
        JobError::Lease(_) => ErrorCode::InvalidArgument,
        JobError::IdempotencyConflict(_) => ErrorCode::FailedPrecondition,
        JobError::NotFound(_) => ErrorCode::NotFound,
        JobError::AlreadyFinished { .. } => ErrorCode::FailedPrecondition,
        JobError::ShuttingDown | JobError::Store(_) => ErrorCode::Unavailable,
        JobError::Overloaded(_) | JobError::RateLimited(_) => ErrorCode::ResourceExhausted,
    }
}

/// The ARCP code of a failed job's corral error (`error.code`, and `error.limit` of a
/// `limit_exceeded`). The metered budgets a `cost_budget` can set (fuel, host calls) are
/// `BUDGET_EXHAUSTED`; other limits (memory, event bytes) are `RESOURCE_EXHAUSTED`.
pub fn job_error_code(code: &str, limit: Option<&str>) -> ErrorCode {
    match code {
        "denied" => ErrorCode::PermissionDenied,
        "limit_exceeded" if limit.is_some_and(|l| super::budget::METERED.iter().any(|m| m.limit == l)) => {
            ErrorCode::BudgetExhausted
        }
        "limit_exceeded" => ErrorCode::ResourceExhausted,
        "invalid_input" | "invalid" => ErrorCode::InvalidArgument,
        "interrupted" | "parent_interrupted" | "parent_finished" => ErrorCode::Aborted,
        "timed_out" | "deadline_exceeded" => ErrorCode::DeadlineExceeded,
        "lease_expired" => ErrorCode::LeaseExpired,
        "unavailable" => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_convert_both_ways_and_refuse_other_prefixes() {
        let id = "01a233ee-7740-71ac-b90a-f0ad5e9af18a";
        assert_eq!(job_id(id).as_str(), format!("job_{id}"));
        assert_eq!(corral_job_id(job_id(id).as_str()), Some(id));
        assert_eq!(corral_job_id("msg_x"), None);
        assert_eq!(corral_job_id("job_"), None);
    }

    #[test]
    fn an_invoke_failure_is_correlated_and_has_no_job() {
        let invoke = MessageId::new();
        let envelope = invoke_failed(ErrorCode::NotFound, "no agent", &invoke);
        let json = serde_json::to_value(&envelope).unwrap();
        assert_eq!(json["type"], "job.failed");
        assert_eq!(json["correlation_id"], invoke.as_str());
        assert_eq!(json["payload"]["code"], "NOT_FOUND");
        assert!(json.get("job_id").is_none());
    }
}

//! Scopes `swarm.delegate` and `swarm.send`; target of both: `<swarm id>/<host agent id>/<agent>`.
//!
//! A job may run an agent on another host of a swarm this host is in, through the same
//! `jobs.delegate` import as a local child — a reference with slashes names a remote agent —
//! and send one a message through `messaging.send` (the message enters the remote host's
//! message plane; its stages come back as reports, see `crate::asp::remote`).
//! The check here is this host's (the job's lease); the remote host then applies its own
//! policy for this host (`[[swarm.peers]]`), and a refusal there comes back as a denial of
//! this scope, recorded here too. The call counts against `limits.max_children` like a local
//! child and waits at most until the job's deadline. What the remote job uses is the remote
//! host's to bound: it is not charged to this job's budgets. See `crate::asp::remote`.

use std::time::Instant;

use super::JobState;
use crate::asp::remote::RemoteOutcome;
use crate::bindings::HostError;
use crate::lease::Scope;

/// Runs `target` on its host; what `jobs.delegate` does for a remote reference.
pub async fn delegate(
    state: &mut JobState,
    target: String,
    input: String,
    lease: Option<String>,
) -> wasmtime::Result<Result<String, HostError>> {
    let scope = Scope::SwarmDelegate;
    if let Err(denied) = state.ctx.authorize(scope, &target)? {
        return Ok(Err(denied));
    }
    let depth = state.ctx.lease.limits.delegation_depth;
    if depth == 0 {
        let reason = "delegation depth exhausted (limits.delegation_depth is 0 for this job)".to_string();
        return Ok(Err(state.ctx.deny(scope, &target, reason)?));
    }
    if let Err(reason) = state.delegation.take_child() {
        return Ok(Err(state.ctx.deny(scope, &target, reason)?));
    }
    let input = match serde_json::from_str(&input) {
        Ok(v) => v,
        Err(e) => return Ok(Err(HostError::Invalid(format!("delegation input is not JSON: {e}")))),
    };
    let lease = match lease.as_deref().map(serde_json::from_str::<serde_json::Value>).transpose() {
        Ok(lease) => lease,
        Err(e) => return Ok(Err(HostError::Invalid(format!("delegation lease is not JSON: {e}")))),
    };
    let Some(federation) = state.ctx.manager.federation().cloned() else {
        let reason = "this host is in no swarm (no [swarm] listen in its policy)".to_owned();
        return Ok(Err(HostError::Failed(reason)));
    };
    state.ctx.before_effect().await?;
    state.ctx.emit("delegated", serde_json::json!({ "remote": target }));
    let remaining = state.ctx.deadline.saturating_duration_since(Instant::now());
    Ok(match federation.delegate(&target, input, lease, remaining, depth - 1).await {
        Ok(RemoteOutcome::Completed(output)) => Ok(output.to_string()),
        Ok(RemoteOutcome::Denied(reason)) => {
            Err(state.ctx.deny(scope, &target, format!("refused by the remote host: {reason}"))?)
        }
        Ok(RemoteOutcome::Failed(reason)) => Err(HostError::Failed(format!("remote job {target}: {reason}"))),
        Err(e) => Err(HostError::Failed(format!("cannot reach {target}: {e}"))),
    })
}

/// Sends a message to `target`'s agent on its host; what `messaging.send` does for a remote
/// recipient. Returns the ASP message id once the message is in this host's outbox.
pub async fn send(
    state: &mut JobState,
    target: String,
    content_type: String,
    payload: Vec<u8>,
) -> wasmtime::Result<Result<String, HostError>> {
    if let Err(denied) = state.ctx.authorize(Scope::SwarmSend, &target)? {
        return Ok(Err(denied));
    }
    let Some(federation) = state.ctx.manager.federation().cloned() else {
        return Ok(Err(HostError::Failed("this host is in no swarm (no [swarm] listen in its policy)".to_owned())));
    };
    let Ok(text) = String::from_utf8(payload) else {
        return Ok(Err(HostError::Invalid("a message to another host carries text (ASP content is a string)".into())));
    };
    state.ctx.before_effect().await?;
    Ok(match federation.send_to_agent(&target, &content_type, text).await {
        Ok(id) => Ok(id),
        Err(crate::asp::AspError::Malformed { detail, .. }) => Err(HostError::Invalid(detail)),
        Err(e) => Err(HostError::Failed(format!("cannot send to {target}: {e}"))),
    })
}

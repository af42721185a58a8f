//! Scope `agent.delegate`; target: the agent reference (`name` or `name@version`).
//!
//! A job may run another agent as a child job and await its result. The child's lease is
//! computed like any lease (the child agent's declared needs ∩ policy ∩ what the parent
//! asks for) and additionally ∩ the parent's *remaining* lease: a parent can never hand a
//! child more than it holds. A request wider than the parent's lease is refused with a
//! denial naming what is not covered. Depth (`limits.delegation_depth`) and fan-out
//! (`limits.max_children`) are capped by the parent's limits, and a child never outlives
//! its parent's deadline. A reference with slashes (`<swarm>/<host>/<agent>`) names an agent
//! on another host: that is scope `swarm.delegate`, served by `capabilities::swarm`.

use std::time::Instant;

use wasmtime::component::{HasSelf, Linker};

use super::JobState;
use crate::bindings::HostError;
use crate::bindings::corral::agent::jobs as wit;
use crate::jobs::JobError;
use crate::lease::{Lease, LeaseError, Limits, Scope};
use crate::store::JobStatus;

pub fn add_to_linker(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    wit::add_to_linker::<JobState, HasSelf<JobState>>(linker, |s| s)
}

/// Per-job delegation state: how many children were started (the children themselves are
/// registered with the job manager, which cancels them when this job ends).
#[derive(Debug)]
pub struct DelegationState {
    max_children: u32,
    started: u32,
}

impl DelegationState {
    pub fn new(lease: &Lease) -> Self {
        Self { max_children: lease.limits.max_children, started: 0 }
    }

    /// Counts one more child (local or remote), or says why the fan-out limit refuses it.
    pub fn take_child(&mut self) -> Result<(), String> {
        if self.started >= self.max_children {
            return Err(format!(
                "fan-out limit reached: this job may start {} children (limits.max_children)",
                self.max_children
            ));
        }
        self.started += 1;
        Ok(())
    }
}

impl wit::Host for JobState {
    async fn delegate(
        &mut self,
        agent: String,
        input: String,
        lease: Option<String>,
    ) -> wasmtime::Result<Result<String, HostError>> {
        // `<swarm>/<host>/<agent>`: an agent on another host (scope `swarm.delegate`).
        if agent.contains('/') {
            return super::swarm::delegate(self, agent, input, lease).await;
        }
        if let Err(denied) = self.ctx.authorize(Scope::AgentDelegate, &agent)? {
            return Ok(Err(denied));
        }
        if self.ctx.lease.limits.delegation_depth == 0 {
            let reason = "delegation depth exhausted (limits.delegation_depth is 0 for this job)".to_string();
            return Ok(Err(self.ctx.deny(Scope::AgentDelegate, &agent, reason)?));
        }
        if self.delegation.started >= self.delegation.max_children {
            let reason = format!(
                "fan-out limit reached: this job may start {} children (limits.max_children)",
                self.delegation.max_children
            );
            return Ok(Err(self.ctx.deny(Scope::AgentDelegate, &agent, reason)?));
        }
        let input = match serde_json::from_str(&input) {
            Ok(v) => v,
            Err(e) => return Ok(Err(HostError::Invalid(format!("delegation input is not JSON: {e}")))),
        };
        self.ctx.before_effect().await?;
        let attributes = || vec![opentelemetry::KeyValue::new("corral.scope", "agent.delegate")];
        let mut call = crate::telemetry::start("agent.delegate", self.ctx.trace.as_ref(), attributes);
        let manager = std::sync::Arc::clone(&self.ctx.manager);
        let limits = &self.ctx.lease.limits;
        let remaining = Limits {
            max_host_calls: limits.max_host_calls.saturating_sub(self.ctx.host_calls()),
            net_bytes: self.http.bytes_left(),
            kv_bytes: self.kv.bytes_left(),
            ..*limits
        };
        // The lease text is bounded (MAX_REQUEST_JSON_BYTES, REQUEST_CAP) before any pattern is
        // compiled, and parsed off the async workers when large.
        let child = match manager
            .submit_child(&self.ctx, remaining, &agent, input, lease, call.context().copied())
            .await
        {
            Ok(child) => child,
            Err(JobError::Lease(e @ (LeaseError::WiderThanParent { .. } | LeaseError::DelegationDepthExhausted))) => {
                let reason = format!("delegation refused: {e}");
                return Ok(Err(self.ctx.deny(Scope::AgentDelegate, &agent, reason)?));
            }
            Err(JobError::Lease(LeaseError::Invalid(e))) => {
                return Ok(Err(HostError::Invalid(format!("delegation lease: {e}"))));
            }
            Err(JobError::Resolve(e)) => return Ok(Err(HostError::Invalid(e.to_string()))),
            Err(e) => return Ok(Err(HostError::Failed(format!("cannot start child job: {e}")))),
        };
        self.delegation.started += 1;
        call.set("corral.child_id", || child.id.clone());
        self.ctx.emit("delegated", serde_json::json!({ "child_id": child.id, "agent": agent }));
        let remaining = self.ctx.deadline.saturating_duration_since(Instant::now());
        let finished = manager.wait_finished(&child.id, remaining).await;
        // Whatever the child used comes out of this job's budgets: siblings and grandchildren
        // share the parent's remainder instead of each getting a fresh copy.
        let used = manager.take_usage(&child.id);
        self.ctx.charge_host_calls(used.host_calls);
        self.http.charge(used.net_bytes);
        self.kv.charge_child(used.kv_bytes);
        let finished = match finished {
            Ok(Some(job)) => job,
            Ok(None) => return Ok(Err(HostError::Failed(format!("child job {} vanished", child.id)))),
            Err(e) => return Ok(Err(HostError::Failed(format!("waiting for child job {}: {e}", child.id)))),
        };
        Ok(match finished.status {
            JobStatus::Completed => Ok(finished.output.unwrap_or(serde_json::Value::Null).to_string()),
            status => {
                let message = finished.error_message();
                Err(HostError::Failed(format!("child job {} ({agent}) ended {status}: {message}", child.id)))
            }
        })
    }
}

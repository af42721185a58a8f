//! What happens to unfinished jobs when the host starts again (after a crash, `kill -9`,
//! or a shutdown whose grace period ran out). The policy, also in the README:
//!
//! | found as | what happens |
//! |---|---|
//! | `queued` | scheduled again, as if just submitted |
//! | `running`, attempts < `recovery.max_attempts` | back to `queued` (a `state` event says why), then run again: agents should be idempotent, as with any at-least-once runtime |
//! | `running`, attempts exhausted | `failed` with code `interrupted` |
//! | a delegated child (queued or running) | `failed` with code `parent_interrupted`: its parent is re-run (or failed) and delegates again |
//! | agent version no longer loaded | `failed` with code `agent_unavailable` |
//!
//! A re-run job keeps its stored lease, narrowed by the principal's *current* policy
//! ceiling. Every accepted job therefore ends in a terminal state with its events intact.

use std::sync::Arc;

use super::{JobError, JobManager, error_json};
use crate::lease::Lease;
use crate::store::{JobRecord, JobStatus, Transition};

/// Counts of what recovery did.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct RecoveryReport {
    pub requeued: usize,
    pub failed: usize,
}

pub(super) async fn recover(manager: &JobManager) -> Result<RecoveryReport, JobError> {
    let mut report = RecoveryReport::default();
    for job in manager.store().unfinished_jobs().await? {
        match recover_one(manager, &job).await {
            Ok(true) => report.requeued += 1,
            Ok(false) => report.failed += 1,
            Err(e) => tracing::error!(job = %job.id, error = %e, "cannot recover job"),
        }
    }
    if report.requeued + report.failed > 0 {
        tracing::info!(requeued = report.requeued, failed = report.failed, "recovered unfinished jobs");
    }
    Ok(report)
}

/// Returns whether the job was re-queued (true) or failed (false).
async fn recover_one(manager: &JobManager, job: &JobRecord) -> Result<bool, JobError> {
    let max_attempts = manager.policy().recovery.max_attempts;
    let now = crate::now_ms();
    let from = [JobStatus::Queued, JobStatus::Running];
    let fail = |code: &str, message: String| {
        Transition::new(&from, JobStatus::Failed, now).finished_at(now).error(error_json(code, &message))
    };
    if job.parent_id.is_some() {
        let t = fail(
            "parent_interrupted",
            "the host restarted while this delegated job was unfinished; its parent delegates again".into(),
        );
        manager.store().transition_job(&job.id, t).await?;
        return Ok(false);
    }
    if job.status == JobStatus::Running && job.attempt >= max_attempts {
        let t = fail(
            "interrupted",
            format!(
                "the host stopped while the job was running, on attempt {} of {max_attempts} (recovery.max_attempts)",
                job.attempt
            ),
        );
        manager.store().transition_job(&job.id, t).await?;
        return Ok(false);
    }
    let reference = format!("{}@{}", job.agent_name, job.agent_version);
    let agent = match manager.registry().resolve(&reference) {
        Ok(agent) => agent,
        Err(e) => {
            manager.store().transition_job(&job.id, fail("agent_unavailable", e.to_string())).await?;
            return Ok(false);
        }
    };
    let lease: Lease = match serde_json::from_value::<Lease>(job.lease.clone()) {
        // The policy may have changed while the host was down: the re-run gets no more than
        // the principal's current ceiling allows.
        Ok(lease) => lease.narrowed_by_ceiling(&manager.policy().ceiling_for(&job.principal, Some(&job.agent_name))),
        Err(e) => {
            manager.store().transition_job(&job.id, fail("internal", format!("stored lease unreadable: {e}"))).await?;
            return Ok(false);
        }
    };
    let mut job = job.clone();
    if job.status == JobStatus::Running {
        let t = Transition::new(&[JobStatus::Running], JobStatus::Queued, now).reason(format!(
            "the host restarted while this job was running; running it again (attempt {})",
            job.attempt + 1
        ));
        match manager.store().transition_job(&job.id, t).await? {
            Some((updated, _)) => job = updated,
            None => return Ok(false),
        }
    }
    let needs_permit = true;
    manager.schedule(job, Arc::clone(&agent), lease, super::Start::Queued { needs_permit, slot: None });
    Ok(true)
}

//! Agents across hosts: a job on host A runs an agent on host B of a swarm they share.
//!
//! The wire is two ordinary signed ASP messages (type `message`), so every check of
//! `federation` applies to them — membership, signature, replay, skew:
//!
//! - A → B, recipient `<B>/<agent>`: `{"corral": "job.request", "agent", "input", "lease"?,
//!   "timeout_ms"}`;
//! - B → A, recipient `<A>`: `{"corral": "job.result", "request": <the request's message id>,
//!   "status": "completed" | "failed" | "denied", "output"?, "error"?}`.
//!
//! Authority is checked on both sides. On A the calling job's lease must grant
//! `swarm.delegate` for `<swarm>/<B>/<agent>` (`capabilities::swarm`). On B the peer is the
//! principal `peer:<A>`: its `[[swarm.peers]]` entry must list the agent, and the job runs
//! under that entry's ceiling (a peer without one runs nothing). A refusal on B is audited on
//! B and comes back to A's guest as a typed denial, audited on A too. The job on B is an
//! ordinary job of B's engine (submitted with the request's id as its idempotency key, so a
//! redelivered request never runs twice).
//!
//! Messages to agents: A's guest `messaging.send("<swarm>/<B>/<agent>", …)` (scope `swarm.send`
//! on A) becomes a signed `message` to `<B>/<agent>` whose content is the payload text. B takes
//! it only if A's `[[swarm.peers]]` entry lists the agent (else `403 NOT_AUTHORIZED`, and A's
//! outbox keeps it as dead with that error), then hands it to its message plane as producer
//! `<A>` under principal `peer:<A>` (idempotency token = the ASP message id), and reports each
//! stage back: `{"corral": "message.stage", "message": <id>, "stage", "code"?, "note"?}` —
//! RECEIVED when the plane took it, then its outcome. A keeps the reports (its inbox) and
//! serves them per message (`GET /v1/swarm/messages/{id}`).
//!
//! Across restarts: a request or message B accepted is in B's swarm inbox, and B's restart
//! hands the last hour's over again ([`Federation::resume`]; the engine and the plane dedupe,
//! so nothing runs or is delivered twice). A's waiter lives in memory: a result arriving after
//! A restarted is kept in A's inbox, and A's job is recovered like any other.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AspError;
use super::config::peer_principal;
use super::federation::Federation;
use crate::jobs::SubmitRequest;
use crate::store::{AuditRecord, Decision, JobStatus, MemberRecord, now_ms};

/// `content` of a request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRequest {
    pub corral: String,
    pub agent: String,
    #[serde(default)]
    pub input: Value,
    #[serde(default)]
    pub lease: Option<Value>,
    pub timeout_ms: u64,
    /// How many more levels of delegation the caller's lease allows below this job.
    #[serde(default)]
    pub depth_left: Option<u32>,
}

/// `content` of an answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobResult {
    pub corral: String,
    pub request: String,
    pub status: String,
    #[serde(default)]
    pub output: Option<Value>,
    #[serde(default)]
    pub error: Option<String>,
}

const REQUEST: &str = "job.request";
const RESULT: &str = "job.result";
const STAGE: &str = "message.stage";

/// `content` of a stage report.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StageReport {
    pub corral: String,
    /// The ASP message id of the message reported on.
    pub message: String,
    /// RECEIVED, READ, FULFILLED, REJECTED, FAILED or TIMED_OUT (SW4RM's names).
    pub stage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The `corral` tag of a content, if it is one of corral's own (job request, result, report).
fn corral_kind(content: &str) -> Option<String> {
    let value: Value = serde_json::from_str(content).ok()?;
    value.get("corral").and_then(Value::as_str).map(str::to_owned)
}

/// Longest a message's outcome is waited for, to report it.
const STAGE_WATCH: Duration = Duration::from_secs(600);

/// How a remote call ended, as the calling job sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum RemoteOutcome {
    Completed(Value),
    /// Refused by the remote host's policy (nothing ran there).
    Denied(String),
    Failed(String),
}

/// Removes a remote call's waiter when the call ends, however it ends.
struct ForgetWaiter<'a> {
    federation: &'a Federation,
    request: &'a str,
}

impl Drop for ForgetWaiter<'_> {
    fn drop(&mut self) {
        self.federation.forget_waiter(self.request);
    }
}

/// Stage watchers running at once (each polls one message's record until its outcome); beyond
/// it a message's outcome is not reported, only RECEIVED (the record on this host has it).
const MAX_STAGE_WATCHERS: usize = 1024;

static STAGE_WATCHERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_STAGE_WATCHERS);

/// Accepted job requests and agent messages a restart hands over again at most (the oldest).
const RESUME_LIMIT: u32 = 10_000;

/// A parsed `swarm.delegate` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    pub swarm: &'a str,
    pub host: &'a str,
    pub agent: &'a str,
}

/// Parses `<swarm>/<host>/<agent>`.
pub fn parse_target(target: &str) -> Result<Target<'_>, String> {
    let mut parts = target.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(swarm), Some(host), Some(agent))
            if !swarm.is_empty() && !host.is_empty() && !agent.is_empty() && !agent.contains('/') =>
        {
            Ok(Target { swarm, host, agent })
        }
        _ => Err(format!("'{target}' is not a remote agent reference: expected <swarm id>/<host agent id>/<agent>")),
    }
}

impl Federation {
    /// Runs `target`'s agent on its host and waits (at most `timeout`) for the result.
    pub async fn delegate(
        &self,
        target: &str,
        input: Value,
        lease: Option<Value>,
        timeout: Duration,
        depth_left: u32,
    ) -> Result<RemoteOutcome, AspError> {
        let parsed = parse_target(target).map_err(|detail| AspError::Malformed { what: "target", detail })?;
        if parsed.host == self.agent_id() {
            return Err(AspError::NotAllowed("a remote delegation to this host itself; delegate locally".into()));
        }
        let content = serde_json::to_string(&JobRequest {
            corral: REQUEST.into(),
            agent: parsed.agent.to_owned(),
            input,
            lease,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            depth_left: Some(depth_left),
        })
        .map_err(|e| AspError::Internal(e.to_string()))?;
        let recipient = format!("{}/{}", parsed.host, parsed.agent);
        let (message_id, answer) = self.send_awaiting(parsed.swarm, &recipient, content, parsed.host).await?;
        // However this call ends (answer, timeout, or the calling job dropped), the waiter goes.
        let _forget = ForgetWaiter { federation: self, request: &message_id };
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(_)) => Ok(RemoteOutcome::Failed("the host stopped waiting for the answer".into())),
            Err(_) => {
                Ok(RemoteOutcome::Failed(format!("no answer from {} within {} ms", parsed.host, timeout.as_millis())))
            }
        }
    }

    /// A guest's message to an agent on another host: queued for it, signed; returns its id.
    pub async fn send_to_agent(&self, target: &str, content_type: &str, text: String) -> Result<String, AspError> {
        let parsed = parse_target(target).map_err(|detail| AspError::Malformed { what: "recipient", detail })?;
        if corral_kind(&text).is_some() {
            return Err(AspError::Malformed {
                what: "payload",
                detail: "a top-level \"corral\" key is reserved for corral's own messages".into(),
            });
        }
        tracing::debug!(recipient = target, content_type, "message to an agent on another host");
        self.send(parsed.swarm, &format!("{}/{}", parsed.host, parsed.agent), "message", text).await
    }

    /// Before a message to one of this host's agents is accepted: the sender's
    /// `[[swarm.peers]]` entry must list the agent. (Job requests are answered instead.)
    pub(super) fn admit_agent_message(
        &self,
        sender: &MemberRecord,
        recipient: &str,
        content: &str,
    ) -> Result<(), AspError> {
        let Some(agent) = recipient.split_once('/').map(|(_, agent)| agent) else { return Ok(()) };
        if corral_kind(content).is_some() {
            return Ok(());
        }
        let allowed = self.manager().is_some_and(|m| {
            m.policy().swarm.trusted_peer(&sender.agent_id, &sender.public_key).is_some_and(|peer| peer.may_run(agent))
        });
        let sender = &sender.agent_id;
        if allowed {
            Ok(())
        } else {
            Err(AspError::NotAllowed(format!(
                "peer '{sender}' may not message '{agent}' on {} (not in its [[swarm.peers]] agents)",
                self.agent_id()
            )))
        }
    }

    /// After a restart: hands the job requests and agent messages that were accepted but not
    /// handled to the end (answered, or delivered and reported) to the engine and the message
    /// plane again. Both dedupe (the job by its idempotency key, the message by its token), so
    /// what was handed over before is not run or delivered twice — only answered or reported.
    /// Returns how many it handed over.
    pub async fn resume(&self) -> Result<usize, AspError> {
        let rows = self.store().swarm_unhandled(RESUME_LIMIT).await?;
        for row in &rows {
            let member = match self.store().swarm(&row.swarm_id).await? {
                Some((_, members)) => members.into_iter().find(|m| m.agent_id == row.sender),
                None => None,
            };
            match member {
                Some(member) => {
                    self.after_accept(row.seq, &row.swarm_id, &member, &row.message_id, &row.recipient, &row.content);
                }
                // The sender left: nobody to answer.
                None => drop(self.store().swarm_handled(row.seq)),
            }
        }
        Ok(rows.len())
    }

    /// After a message was accepted: a job request for a local agent is run; a job result
    /// wakes the job waiting for it; a message to a local agent enters the message plane.
    /// Anything else just stays in the inbox.
    pub(super) fn after_accept(
        &self,
        seq: i64,
        swarm_id: &str,
        from: &MemberRecord,
        message_id: &str,
        recipient: &str,
        content: &str,
    ) {
        let sender = from.agent_id.as_str();
        let value = serde_json::from_str::<Value>(content).unwrap_or(Value::Null);
        match value.get("corral").and_then(Value::as_str) {
            Some(REQUEST) => {
                let Ok(request) = serde_json::from_value::<JobRequest>(value) else { return };
                let Some(me) = self.me() else { return };
                let (swarm, from, id) = (swarm_id.to_owned(), from.clone(), message_id.to_owned());
                tokio::spawn(async move {
                    me.serve_job(swarm, from, id, request).await;
                    drop(me.store().swarm_handled(seq));
                });
            }
            Some(RESULT) => {
                let Ok(result) = serde_json::from_value::<JobResult>(value) else { return };
                let outcome = match result.status.as_str() {
                    "completed" => RemoteOutcome::Completed(result.output.unwrap_or(Value::Null)),
                    "denied" => RemoteOutcome::Denied(result.error.unwrap_or_default()),
                    _ => RemoteOutcome::Failed(result.error.unwrap_or_default()),
                };
                self.answer_waiter(&result.request, sender, outcome);
            }
            Some(_) => {}
            None => {
                let Some((_, agent)) = recipient.split_once('/') else { return };
                let Some(me) = self.me() else { return };
                let (swarm, sender, id, agent, text) = (
                    swarm_id.to_owned(),
                    sender.to_owned(),
                    message_id.to_owned(),
                    agent.to_owned(),
                    content.to_owned(),
                );
                tokio::spawn(async move {
                    me.deliver_to_plane(swarm, sender, id, agent, text).await;
                    drop(me.store().swarm_handled(seq));
                });
            }
        }
    }

    /// Hands a peer's message to the local message plane and reports its stages back.
    async fn deliver_to_plane(&self, swarm_id: String, sender: String, asp_id: String, agent: String, text: String) {
        use crate::messages::{MessageType, Outgoing, Producer, Recipient, SendError};
        let Some(manager) = self.manager() else { return };
        let plane = std::sync::Arc::clone(manager.messages());
        let principal = peer_principal(&sender);
        let producer = Producer { principal: principal.clone(), id: sender.clone(), reply_to: None };
        let content_type = if serde_json::from_str::<Value>(&text).is_ok() { "application/json" } else { "text/plain" };
        let mut out = Outgoing::new(Recipient::Agent(agent), MessageType::Data, content_type, text.into_bytes());
        out.idempotency_token = Some(asp_id.clone());
        let report = |stage: &str, code: Option<String>, note: Option<String>| StageReport {
            corral: STAGE.into(),
            message: asp_id.clone(),
            stage: stage.into(),
            code,
            note,
        };
        let local = match plane.send(&producer, out).await {
            Ok(accepted) => match accepted.messages.into_iter().next() {
                Some(first) => first.id,
                None => return,
            },
            Err(SendError::Refused { code, reason, .. }) => {
                let rejected = report("REJECTED", Some(code.as_str().to_owned()), Some(reason));
                return self.report_stage(&swarm_id, &sender, rejected).await;
            }
            Err(SendError::Store(e)) => {
                let failed = report("FAILED", None, Some(format!("could not be stored: {e}")));
                return self.report_stage(&swarm_id, &sender, failed).await;
            }
        };
        self.report_stage(&swarm_id, &sender, report("RECEIVED", None, None)).await;
        let Ok(_watching) = STAGE_WATCHERS.try_acquire() else {
            tracing::warn!(message = %asp_id, "too many stage watchers; the outcome will not be reported");
            return;
        };
        let mut pause = Duration::from_millis(50);
        let started = tokio::time::Instant::now();
        while started.elapsed() < STAGE_WATCH {
            match plane.get(&principal, &local).await {
                Ok(Some(m)) if m.stage.is_outcome() => {
                    let done = report(m.stage.as_str(), m.error_code.map(|c| c.as_str().to_owned()), m.note);
                    return self.report_stage(&swarm_id, &sender, done).await;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    async fn report_stage(&self, swarm_id: &str, to: &str, report: StageReport) {
        let Ok(content) = serde_json::to_string(&report) else { return };
        if let Err(e) = self.send(swarm_id, to, "message", content).await {
            tracing::warn!(peer = %to, message = %report.message, error = %e, "cannot report a message's stage");
        }
    }

    /// What this host knows about a message it sent: the stage reports its recipient sent back,
    /// oldest first, and — while it is still in the outbox — its delivery state (a refusal by
    /// the peer shows as FAILED with the peer's answer).
    pub async fn stages(&self, message_id: &str) -> Result<Vec<StageReport>, AspError> {
        let mut reports: Vec<StageReport> = self
            .store()
            .swarm_reports(message_id.to_owned())
            .await?
            .iter()
            .filter_map(|content| serde_json::from_str::<StageReport>(content).ok())
            .filter(|r| r.corral == STAGE && r.message == message_id)
            .collect();
        // A restart of the recipient may report again what it reported before.
        let mut seen = std::collections::HashSet::new();
        reports.retain(|r| seen.insert((r.stage.clone(), r.code.clone())));
        for row in self.store().outbox_of(message_id.to_owned()).await? {
            if row.dead {
                reports.push(StageReport {
                    corral: STAGE.into(),
                    message: message_id.to_owned(),
                    stage: "FAILED".into(),
                    code: Some("UNDELIVERED".into()),
                    note: row.last_error,
                });
            }
        }
        Ok(reports)
    }

    /// Runs a peer's job request and sends the answer back.
    async fn serve_job(&self, swarm_id: String, from: MemberRecord, request_id: String, request: JobRequest) {
        let outcome = self.run_for_peer(&from, &request_id, request).await;
        let sender = from.agent_id;
        let (status, output, error) = match outcome {
            RemoteOutcome::Completed(output) => ("completed", Some(output), None),
            RemoteOutcome::Denied(reason) => ("denied", None, Some(reason)),
            RemoteOutcome::Failed(reason) => ("failed", None, Some(reason)),
        };
        let result =
            JobResult { corral: RESULT.into(), request: request_id.clone(), status: status.into(), output, error };
        let content = match serde_json::to_string(&result) {
            Ok(content) => content,
            Err(e) => return tracing::warn!(error = %e, "cannot encode a job result"),
        };
        if let Err(e) = self.send(&swarm_id, &sender, "message", content).await {
            tracing::warn!(peer = %sender, request = %request_id, error = %e, "cannot answer a peer's job request");
        }
    }

    async fn run_for_peer(&self, from: &MemberRecord, request_id: &str, request: JobRequest) -> RemoteOutcome {
        let Some(manager) = self.manager() else {
            return RemoteOutcome::Failed("the host is shutting down".into());
        };
        let peer = from.agent_id.as_str();
        let refusal = match manager.policy().swarm.trusted_peer(peer, &from.public_key) {
            None => Some(format!(
                "peer '{peer}' has no [[swarm.peers]] entry on {}: it may run nothing here",
                self.agent_id()
            )),
            Some(policy) if !policy.may_run(&request.agent) => Some(format!(
                "peer '{peer}' may not run '{}' on {} (not in its [[swarm.peers]] agents)",
                request.agent,
                self.agent_id()
            )),
            Some(_) => None,
        };
        if let Some(reason) = refusal {
            let record = AuditRecord {
                id: None,
                job_id: format!("asp:{request_id}"),
                principal: peer_principal(peer),
                scope: crate::lease::Scope::SwarmDelegate.as_str().to_owned(),
                target: request.agent.clone(),
                decision: Decision::Deny,
                reason: Some(reason.clone()),
                at: now_ms(),
            };
            drop(self.store().record_audit(record));
            return RemoteOutcome::Denied(reason);
        }
        // The caller's remaining delegation depth caps this job's (a chain across hosts ends
        // where a local one would).
        let lease = match (request.lease, request.depth_left) {
            (lease, None) => lease,
            (None, Some(depth)) => Some(serde_json::json!({ "limits": { "delegation_depth": depth } })),
            (Some(Value::Object(mut lease)), Some(depth)) => {
                let limits = lease.entry("limits").or_insert_with(|| serde_json::json!({}));
                if let Some(limits) = limits.as_object_mut() {
                    let asked = limits.get("delegation_depth").and_then(Value::as_u64).unwrap_or(u64::MAX);
                    limits.insert("delegation_depth".into(), Value::from(asked.min(u64::from(depth))));
                }
                Some(Value::Object(lease))
            }
            (Some(other), Some(_)) => Some(other),
        };
        let submit = SubmitRequest {
            agent: request.agent.clone(),
            input: request.input,
            lease,
            trace_parent: None,
            idempotency_key: Some(format!("asp:{request_id}")),
        };
        let principal = peer_principal(peer);
        let job = match manager.submit(&principal, submit).await {
            Ok((job, _)) => job,
            Err(e) => return RemoteOutcome::Failed(format!("cannot start '{}': {e}", request.agent)),
        };
        let timeout = Duration::from_millis(request.timeout_ms.min(24 * 3_600_000));
        match manager.wait_finished(&job.id, timeout).await {
            Ok(Some(done)) if done.status == JobStatus::Completed => {
                RemoteOutcome::Completed(done.output.unwrap_or(Value::Null))
            }
            Ok(Some(done)) if !matches!(done.status, JobStatus::Queued | JobStatus::Running) => {
                let message = done.error_message();
                RemoteOutcome::Failed(format!("job {} ({}) ended {}: {message}", done.id, request.agent, done.status))
            }
            Ok(_) => RemoteOutcome::Failed(format!("job {} did not finish in time", job.id)),
            Err(e) => RemoteOutcome::Failed(format!("waiting for job {}: {e}", job.id)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn a_target_names_a_swarm_a_host_and_one_agent() {
        let t = parse_target("660e8400-e29b-41d4-a716-446655440001/corral-ab/echo@0.1.0").unwrap();
        assert_eq!((t.swarm, t.host, t.agent), ("660e8400-e29b-41d4-a716-446655440001", "corral-ab", "echo@0.1.0"));
        for bad in ["echo", "s/h", "s//echo", "/h/echo", "s/h/", "s/h/a/b"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }
}

//! `tool.invoke` → a corral job, and that job's stored events → `job.*` envelopes.
//!
//! Validation comes first and answers with a single `job.failed` (correlated, no `job_id`): a
//! bad agent reference (`INVALID_ARGUMENT`), an unknown agent (`NOT_FOUND`) or version
//! (`AGENT_VERSION_NOT_AVAILABLE`), a lease request corral cannot honour, an expired lease
//! (`LEASE_EXPIRED`), a reused idempotency key with a different request (`FAILED_PRECONDITION`).
//! Only a submitted job gets `job.accepted`. A resent invoke with the same idempotency key gets
//! the original job, and its events replayed from the store.
//!
//! Event mapping (corral event → ARCP): `state running` → `job.started`; `log` → `log`;
//! `progress` → `job.progress`; `chunk` → `job.result_chunk` (when `streaming` was negotiated);
//! `capability`, `delegated` → `event.emit` (`corral.capability`, `corral.delegated`); the
//! terminal `state` → a `metric` (`job.duration`), the terminal result chunk (if any), then
//! exactly one of `job.completed`, `job.failed`, `job.cancelled`.

use std::sync::{Arc, OnceLock};
use std::sync::atomic::{AtomicUsize, Ordering};

use arcp_core::ErrorCode;
use arcp_core::ids::MessageId;
use arcp_core::messages::{
    AgentRef, EventEmitPayload, JobAcceptedPayload, JobCancelledPayload, JobCompletedPayload, JobFailedPayload,
    JobProgressPayload, JobResultChunkPayload, JobStartedPayload, LogLevel, LogPayload, MessageType, MetricPayload,
    ResultChunkEncoding, ToolInvokePayload,
};
use serde_json::Value;
use tokio::sync::mpsc;

use super::wire::{invoke_failed, job_event, submit_error_code};
use crate::jobs::follow::EventFollower;
use crate::jobs::{JobManager, SubmitRequest};
use crate::store::EventRecord;

/// What a session hands to the jobs it starts.
#[derive(Debug, Clone)]
pub struct SessionContext {
    pub manager: Arc<JobManager>,
    pub principal: String,
    pub session_id: String,
    pub outbound: mpsc::Sender<arcp_core::Envelope>,
    /// `streaming` was negotiated: result chunks are sent.
    pub streaming: bool,
    /// Jobs this session is following now.
    pub following: Arc<AtomicUsize>,
    pub max_following: usize,
}

/// A job a session follows: its id (set once the job is committed; an invoke's job is not
/// known before) and the task that streams it.
pub type Followed = (Arc<OnceLock<String>>, tokio::task::JoinHandle<()>);

/// Handles one `tool.invoke` (envelope `id`, optional `idempotency_key`): what can be refused
/// at once is refused here; the submission and the job's events go on in a task of their own,
/// so one session can have many invokes in flight. Returns that task.
///
/// The job is submitted held (see `JobManager::submit_held`): `job.accepted` is sent once the
/// job is committed, which for a job that ends within the defer window is the one commit that
/// also holds its events and outcome — so `job.accepted` never names a job a crash could lose.
pub async fn invoke(
    session: &SessionContext,
    id: &MessageId,
    idempotency_key: Option<String>,
    invoke: ToolInvokePayload,
) -> Option<Followed> {
    let refuse = |code, message: String| invoke_failed(code, message, id);
    if let Err(e) = AgentRef::parse(&invoke.tool) {
        let _ = session.outbound.send(refuse(ErrorCode::InvalidArgument, format!("tool: {e}"))).await;
        return None;
    }
    let lease = match super::budget::lease_request(invoke.lease_request, invoke.cost_budget) {
        Ok(lease) => lease,
        Err((code, message)) => {
            let _ = session.outbound.send(refuse(code, message)).await;
            return None;
        }
    };
    let Some(following) = Following::try_take(&session.following, session.max_following) else {
        let message = format!(
            "this session already follows {} jobs (arcp.max_jobs_per_session); wait for one to end",
            session.max_following
        );
        let _ = session.outbound.send(refuse(ErrorCode::ResourceExhausted, message)).await;
        return None;
    };
    let request =
        SubmitRequest { agent: invoke.tool, input: invoke.arguments, lease, idempotency_key, trace_parent: None };
    let known = Arc::new(OnceLock::new());
    let (session, id, job_id) = (session.clone(), id.clone(), Arc::clone(&known));
    let task = tokio::spawn(async move {
        let (job, events) = match session.manager.submit_held(&session.principal, request).await {
            Ok((job, _replayed, events)) => (job, events),
            Err(e) => {
                let _ = session.outbound.send(invoke_failed(submit_error_code(&e), e.to_string(), &id)).await;
                return;
            }
        };
        let _ = job_id.set(job.id.clone());
        let accepted = MessageType::JobAccepted(JobAcceptedPayload {
            job_id: super::wire::job_id(&job.id),
            credentials: Vec::new(),
            lease: None,
        });
        if session.outbound.send(job_event(accepted, &job.id, &id)).await.is_err() {
            return;
        }
        follower(&session, &job, id, Resume::From(0), following, events).run().await;
    });
    Some((known, task))
}

/// Where a follower starts in a job's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// After this event seq.
    From(u64),
    /// After envelope `k` made from event `seq` (a `resume` names an envelope, and one event
    /// can make several).
    AfterEnvelope { seq: u64, k: usize },
}

/// Follows `job` for this session: recorded (so a later session can `resume` it), then its
/// events from `start` are sent correlated to `request`. Returns the follower's task.
pub fn follow(session: &SessionContext, job: &crate::store::JobRecord, request: MessageId, start: Resume) -> Followed {
    let following = Following::take(&session.following);
    let events = EventFollower::new(session.manager.store(), &job.id, 0);
    let task = tokio::spawn(follower(session, job, request, start, following, events).run());
    (Arc::new(OnceLock::from(job.id.clone())), task)
}

/// A follower of `job` (its `events` from the first) for this session, recorded so a later
/// session can `resume` it.
fn follower(
    session: &SessionContext,
    job: &crate::store::JobRecord,
    request: MessageId,
    start: Resume,
    following: Following,
    events: EventFollower,
) -> Follower {
    // Recorded beside the job's own writes rather than before its first event: the record only
    // serves a later `resume`, so the job's events need not wait for its commit.
    let store = session.manager.store().clone();
    let (session_id, job_id, principal) = (session.session_id.clone(), job.id.clone(), session.principal.clone());
    let request_id = request.as_str().to_owned();
    tokio::spawn(async move {
        if let Err(e) = store.record_followed(&session_id, &job_id, &principal, &request_id).await {
            tracing::warn!(job = %job_id, error = %e, "cannot record the session's job; a resume will not find it");
        }
    });
    let agent = format!("{}@{}", job.agent_name, job.agent_version);
    Follower::new(session, &job.id, request, agent, start, following, events)
}

/// The stable id of envelope `k` made from event `seq` of `job`: the same in every session
/// that sends it, so a client that resumes can drop what it already has.
pub fn event_message_id(job: &str, seq: u64, k: usize) -> MessageId {
    // The prefix is right by construction, so parsing cannot fail; the fallback keeps it total.
    format!("msg_{job}.{seq}.{k}").parse().unwrap_or_default()
}

/// `(job, seq, k)` of an id made by [`event_message_id`].
pub fn parse_event_message_id(id: &str) -> Option<(&str, u64, usize)> {
    let rest = id.strip_prefix("msg_")?;
    let (rest, k) = rest.rsplit_once('.')?;
    let (job, seq) = rest.rsplit_once('.')?;
    Some((job, seq.parse().ok()?, k.parse().ok()?))
}

/// Counts a session's followers: taken when one starts, given back when it ends or is aborted.
struct Following(Arc<AtomicUsize>);

impl Following {
    fn take(counter: &Arc<AtomicUsize>) -> Following {
        counter.fetch_add(1, Ordering::SeqCst);
        Following(Arc::clone(counter))
    }

    /// Takes one if fewer than `max` are taken.
    fn try_take(counter: &Arc<AtomicUsize>, max: usize) -> Option<Following> {
        counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1)).ok()?;
        Some(Following(Arc::clone(counter)))
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Follows one job's events and sends them as envelopes.
struct Follower {
    session: SessionContext,
    job: String,
    invoke: MessageId,
    agent: String,
    events: EventFollower,
    /// Envelopes up to this `(event seq, k)` were delivered already and are not sent.
    sent_up_to: (u64, usize),
    _following: Following,
    /// Chunks sent so far (the next `chunk_seq`) and their bytes.
    chunks: u64,
    chunk_bytes: u64,
    started_at: Option<i64>,
}

impl Follower {
    fn new(
        session: &SessionContext,
        job: &str,
        invoke: MessageId,
        agent: String,
        start: Resume,
        following: Following,
        events: EventFollower,
    ) -> Follower {
        // Every event is read from the start, even when only later ones are sent: chunk
        // numbering and the job's timings are rebuilt from all of them, so a replay sends the
        // very envelopes the first delivery did.
        let sent_up_to = match start {
            Resume::From(seq) => (seq, usize::MAX),
            Resume::AfterEnvelope { seq, k } => (seq, k),
        };
        Follower {
            events,
            sent_up_to,
            _following: following,
            session: session.clone(),
            job: job.to_owned(),
            invoke,
            agent,
            chunks: 0,
            chunk_bytes: 0,
            started_at: None,
        }
    }

    async fn run(mut self) {
        while let Some(next) = self.events.next().await {
            let record = match next {
                Ok(record) => record,
                Err(e) => {
                    let failed = JobFailedPayload {
                        code: ErrorCode::Unavailable,
                        retryable: Some(true),
                        message: format!("cannot read the job's events: {e}; subscribe again to resume"),
                        details: None,
                    };
                    let mut envelope = job_event(MessageType::JobFailed(failed), &self.job, &self.invoke);
                    envelope.id = MessageId::new();
                    let _ = self.session.outbound.send(envelope).await;
                    break;
                }
            };
            let payloads = self.map(&record);
            for (k, payload) in payloads.into_iter().enumerate() {
                if (record.seq, k) <= self.sent_up_to {
                    continue;
                }
                if !self.send(payload, record.seq, k).await {
                    return; // the connection is gone; the job runs on
                }
            }
        }
    }

    async fn send(&self, payload: MessageType, seq: u64, k: usize) -> bool {
        let mut envelope = job_event(payload, &self.job, &self.invoke);
        envelope.id = event_message_id(&self.job, seq, k);
        envelope.extensions = Some(serde_json::json!({ "job_event_seq": seq }));
        self.session.outbound.send(envelope).await.is_ok()
    }

    fn map(&mut self, record: &EventRecord) -> Vec<MessageType> {
        let data = &record.data;
        let text = |key: &str| data.get(key).and_then(Value::as_str).map(str::to_owned);
        match record.kind.as_str() {
            "state" => self.state(record),
            "log" => vec![MessageType::Log(LogPayload {
                level: level(text("level").as_deref()),
                message: text("message").unwrap_or_default(),
                attributes: None,
            })],
            "progress" => {
                let done = data.get("done").and_then(Value::as_u64).unwrap_or(0);
                let total = data.get("total").and_then(Value::as_u64).unwrap_or(0);
                #[allow(clippy::cast_precision_loss)]
                let percent = (total > 0).then(|| (done.min(total) as f64) * 100.0 / total as f64);
                vec![MessageType::JobProgress(JobProgressPayload {
                    percent,
                    message: text("message").filter(|m| !m.is_empty()),
                })]
            }
            "chunk" if self.session.streaming => {
                let data = text("data").unwrap_or_default();
                self.chunk_bytes += data.len() as u64;
                let chunk = self.chunk(data, true);
                vec![chunk]
            }
            "capability" | "delegated" => vec![MessageType::EventEmit(EventEmitPayload {
                name: format!("corral.{}", record.kind),
                data: Some(data.clone()),
            })],
            _ => Vec::new(),
        }
    }

    fn chunk(&mut self, data: String, more: bool) -> MessageType {
        let chunk_seq = self.chunks;
        self.chunks += 1;
        MessageType::JobResultChunk(JobResultChunkPayload {
            result_id: self.result_id(),
            chunk_seq,
            data,
            encoding: ResultChunkEncoding::Utf8,
            more,
        })
    }

    fn result_id(&self) -> String {
        format!("res_{}", self.job)
    }

    fn state(&mut self, record: &EventRecord) -> Vec<MessageType> {
        let status = record.data.get("status").and_then(Value::as_str).unwrap_or_default();
        let error = record.data.get("error");
        let error_text =
            |key: &str| error.and_then(|e| e.get(key)).and_then(Value::as_str).unwrap_or_default().to_owned();
        let mut out = Vec::new();
        if status == "running" {
            self.started_at = Some(record.at);
            out.push(MessageType::JobStarted(JobStartedPayload {
                description: Some(format!("running {}", self.agent)),
            }));
            return out;
        }
        if !matches!(status, "completed" | "failed" | "cancelled" | "timed_out") {
            return out;
        }
        if let Some(started) = self.started_at {
            #[allow(clippy::cast_precision_loss)]
            let ms = (record.at - started).max(0) as f64;
            out.push(MessageType::Metric(MetricPayload {
                name: "job.duration".into(),
                value: ms,
                unit: "ms".into(),
                dims: Some(serde_json::json!({ "agent": self.agent, "status": status })),
            }));
        }
        let streamed = self.chunks > 0;
        match status {
            "completed" => {
                if streamed {
                    out.push(self.chunk(String::new(), false));
                }
                out.push(MessageType::JobCompleted(JobCompletedPayload {
                    value: record.data.get("output").cloned(),
                    result_ref: None,
                    result_id: streamed.then(|| self.result_id()),
                    result_size: streamed.then_some(self.chunk_bytes),
                    summary: None,
                }));
            }
            "cancelled" => out.push(MessageType::JobCancelled(JobCancelledPayload {
                reason: Some(error_text("message")).filter(|m| !m.is_empty()),
            })),
            _ => {
                let code = if status == "timed_out" {
                    ErrorCode::DeadlineExceeded
                } else {
                    super::wire::job_error_code(
                        &error_text("code"),
                        error.and_then(|e| e.get("limit")).and_then(Value::as_str),
                    )
                };
                out.push(MessageType::JobFailed(JobFailedPayload {
                    code,
                    retryable: Some(code.retryable()),
                    message: error_text("message"),
                    details: error.cloned(),
                }));
            }
        }
        out
    }
}

fn level(name: Option<&str>) -> LogLevel {
    match name {
        Some("trace") => LogLevel::Trace,
        Some("debug") => LogLevel::Debug,
        Some("warn") => LogLevel::Warn,
        Some("error") => LogLevel::Error,
        _ => LogLevel::Info,
    }
}

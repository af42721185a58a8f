//! Runs one job in a fresh sandbox and records how it ended.
//!
//! A new `Store` and instance per job (from the agent's cached `InstancePre`), so nothing
//! leaks between jobs. The guest runs as a future raced against the job's deadline and its
//! cancel signal; the store yields at every epoch tick, so even a guest spinning in a tight
//! loop gives the race a chance to fire within one tick. Dropping the guest future tears
//! the instance down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{oneshot, watch};

use super::journal::{DEFER_WINDOW, Journal};
use super::{JobError, JobManager, error_json};
use crate::bindings::consumer::exports::corral::agent::consumer::AckOutcome;
use crate::bindings::corral::agent::messaging::Envelope;
use crate::bindings::{Agent, HostError};
use crate::capabilities::{JobContext, JobState, LimitExceeded};
use crate::engine::registry::LoadedAgent;
use crate::lease::Lease;
use crate::messages::ErrorCode;
use crate::store::{JobRecord, JobStatus, StoreError, Transition};

/// Longest deadline honoured (a year): larger values, e.g. `u64::MAX` for "none", are clamped.
const MAX_DEADLINE_MS: u64 = 365 * 24 * 3600 * 1000;

/// How a run ended.
enum Outcome {
    Completed(Value),
    Failed(Value),
    TimedOut,
    Cancelled,
}

impl Outcome {
    fn name(&self) -> &'static str {
        match self {
            Outcome::Completed(_) => "completed",
            Outcome::Failed(_) => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// The span of one run of `job`, under the trace context its record carries.
fn job_span(job: &JobRecord, agent: &LoadedAgent) -> crate::telemetry::Span {
    if !crate::telemetry::enabled() {
        // Records nothing; hands the record's trace context on to host calls and children.
        return crate::telemetry::start("job", job.trace_parent.as_ref(), Vec::new);
    }
    let attributes = || {
        vec![
            opentelemetry::KeyValue::new("corral.job_id", job.id.clone()),
            opentelemetry::KeyValue::new("corral.agent", agent.reference()),
            opentelemetry::KeyValue::new("corral.attempt", i64::from(job.attempt)),
        ]
    };
    crate::telemetry::start(format!("job {}", agent.manifest.name), job.trace_parent.as_ref(), attributes)
}

/// Where a waiting client is told how its job ended: the job as committed, `None` if the
/// outcome did not apply (e.g. a cancel won the race; read the job back), or the write error.
pub(super) type Reply = oneshot::Sender<Result<Option<JobRecord>, JobError>>;

/// One job to run.
pub(super) struct Run {
    pub job: JobRecord,
    pub agent: Arc<LoadedAgent>,
    pub lease: Lease,
    /// Recorded as `queued` (mark it running first), or already `running`.
    pub queued: bool,
    pub journal: Arc<Journal>,
    pub reply: Option<Reply>,
}

pub(super) async fn run(manager: &Arc<JobManager>, run: Run, mut cancelled: watch::Receiver<bool>) {
    let Run { mut job, agent, lease, queued, journal, reply } = run;
    // Counted before the shutdown check, so shutdown never misses a job that is starting.
    let _running = manager.running_guard();
    if queued {
        if manager.is_shutting_down() {
            return; // stays queued; recovered at the next start
        }
        let now = crate::now_ms();
        let attempt = job.attempt.saturating_add(1);
        let start = Transition::new(&[JobStatus::Queued], JobStatus::Running, now).started_at(now).attempt(attempt);
        match manager.store().transition_job(&job.id, start).await {
            Ok(Some((running, _))) => job = running,
            Ok(None) => return, // cancelled while queued
            Err(e) => {
                tracing::error!(job = %job.id, error = %e, "cannot mark job running; leaving it queued for recovery");
                return;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_millis(lease.limits.deadline_ms.min(MAX_DEADLINE_MS));
    let lease = Arc::new(lease);
    let identity =
        crate::capabilities::RunIdentity { id: job.id.clone(), principal: job.principal.clone(), depth: job.depth };
    let mut ctx = JobContext::for_run(
        identity,
        agent.reference(),
        Arc::clone(&lease),
        deadline,
        Arc::clone(manager),
        Arc::clone(&journal),
    );
    let mut span = job_span(&job, &agent);
    ctx.trace = span.context().copied();
    let (outcome, host_calls, net_bytes, kv_bytes) = match sandbox(&manager.engine, ctx, &lease) {
        Ok(mut store) => {
            let call = Call::Handle(job.input.to_string());
            let outcome = match execute(&mut store, &agent, call, deadline, &mut cancelled, &journal).await {
                Ok(Ok(Returned::Handled(result))) => classify(Ok(result), &store.data().ctx),
                Ok(Ok(Returned::Acked(_))) => Outcome::Failed(error_json("internal", "the handler returned an ack")),
                Ok(Err(trap)) => classify(Err(trap), &store.data().ctx),
                Err(stopped) => stopped,
            };
            let state = store.data();
            let net_bytes = lease.limits.net_bytes.saturating_sub(state.http.bytes_left());
            (outcome, state.ctx.host_calls(), net_bytes, state.kv.bytes_used())
        }
        Err(e) => (Outcome::Failed(error_json("internal", &format!("cannot set up the sandbox: {e}"))), 0, 0, 0),
    };
    // The guest is gone: no child can be registered any more, and one still being inserted
    // will find its parent ended and cancel itself.
    let children = manager.close_family(&job.id);
    if job.parent_id.is_some() {
        manager.record_usage(&job.id, super::Usage { host_calls, net_bytes, kv_bytes });
    }
    span.set("corral.outcome", || outcome.name());
    if !matches!(outcome, Outcome::Completed(_)) {
        span.fail(outcome.name());
    }
    let finished = finish(&journal, &job, outcome, &lease, host_calls).await;
    drop(span);
    if let Some(reply) = reply {
        let _ = reply.send(finished.map_err(JobError::from));
    }
    cancel_children(manager, children).await;
}

/// Children die with their parent (a job or a delivery): a finished parent can no longer use
/// their results.
async fn cancel_children(manager: &Arc<JobManager>, children: Vec<String>) {
    let cancels = children.iter().map(|child| async move {
        if let Err(e) = manager.cancel_by_id(child).await {
            tracing::debug!(child, error = %e, "child already gone");
        }
        manager.take_usage(child);
    });
    futures::future::join_all(cancels).await;
}

/// A job's sandbox: a fresh store with the job's memory cap, fuel and epoch-yield deadline,
/// ready for a fresh instance.
pub(crate) fn sandbox(
    engine: &wasmtime::Engine,
    ctx: JobContext,
    lease: &Lease,
) -> wasmtime::Result<wasmtime::Store<JobState>> {
    let mut store = wasmtime::Store::new(engine, JobState::new(ctx));
    store.limiter(|state| &mut state.limiter);
    store.set_fuel(lease.limits.fuel)?;
    store.epoch_deadline_async_yield_and_update(1);
    Ok(store)
}

/// What a sandbox is asked to run: a job's handler, or a consumer's `on-message`.
pub(crate) enum Call<'a> {
    Handle(String),
    OnMessage(&'a crate::bindings::consumer::exports::corral::agent::consumer::GuestIndices, Box<Envelope>),
}

/// What the guest returned.
pub(crate) enum Returned {
    Handled(Result<String, HostError>),
    Acked(AckOutcome),
}

/// Instantiates the agent in `store` and runs `call`, raced against the deadline and the
/// cancel signal; records a held job once it has run for [`DEFER_WINDOW`]. `Err` is how the
/// race ended when the guest did not return.
async fn execute(
    store: &mut wasmtime::Store<JobState>,
    agent: &LoadedAgent,
    call: Call<'_>,
    deadline: Instant,
    cancelled: &mut watch::Receiver<bool>,
    journal: &Journal,
) -> Result<wasmtime::Result<Returned>, Outcome> {
    // The guest future borrows the store; it lives only inside this function.
    let guest = async {
        match call {
            Call::Handle(input) => {
                let instance: Agent = agent.pre.instantiate_async(&mut *store).await?;
                instance.corral_agent_handler().call_handle(&mut *store, &input).await.map(Returned::Handled)
            }
            Call::OnMessage(indices, envelope) => {
                let instance = agent.pre.instance_pre().instantiate_async(&mut *store).await?;
                let consumer = indices.load(&mut *store, &instance)?;
                consumer.call_on_message(&mut *store, &envelope).await.map(Returned::Acked)
            }
        }
    };
    tokio::pin!(guest);
    let timeout = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
    tokio::pin!(timeout);
    let record_by = tokio::time::sleep(DEFER_WINDOW);
    tokio::pin!(record_by);
    let mut held = journal.is_held();
    loop {
        tokio::select! {
            result = &mut guest => break Ok(result),
            () = &mut timeout => break Err(Outcome::TimedOut),
            _ = cancelled.wait_for(|c| *c) => break Err(Outcome::Cancelled),
            () = &mut record_by, if held => {
                held = false;
                // Queued now; the job's later writes and its finish are ordered after it.
                drop(journal.record_now());
            }
        }
    }
}

/// How a delivery to a consumer ended.
#[derive(Debug)]
pub(crate) enum DeliveryOutcome {
    Fulfilled,
    Rejected(ErrorCode, String),
    Failed(String),
    /// No outcome within the ack timeout.
    TimedOut,
    /// The host stopped it (shutdown).
    Interrupted,
}

/// A finished delivery: its outcome and what must be written with it.
#[derive(Debug)]
pub(crate) struct DeliveryRun {
    pub outcome: DeliveryOutcome,
    pub held: HeldWrites,
}

/// Writes a delivery held back for its outcome's op.
#[derive(Debug, Default)]
pub(crate) struct HeldWrites {
    pub read_pending: bool,
    pub read_at: i64,
    pub audit: Vec<crate::store::AuditRecord>,
    pub kv: crate::store::HeldKv,
}

/// Runs one delivery of `message` to `agent` (a consumer) in a fresh sandbox under `lease`
/// (deadline = the message's ack timeout, already folded into the lease's limits).
pub(crate) async fn run_delivery(
    manager: &Arc<JobManager>,
    agent: &LoadedAgent,
    lease: Lease,
    message: &crate::store::MessageRecord,
) -> DeliveryRun {
    let Some(indices) = agent.consumer.as_ref() else {
        return DeliveryRun {
            outcome: DeliveryOutcome::Rejected(ErrorCode::NoRoute, "not a consumer".into()),
            held: HeldWrites::default(),
        };
    };
    let _running = manager.running_guard();
    let deadline = Instant::now() + Duration::from_millis(lease.limits.deadline_ms.min(MAX_DEADLINE_MS));
    let journal = Journal::delivery(manager.store().clone(), &message.id, &message.envelope.message_id);
    let lease = Arc::new(lease);
    let identity =
        crate::capabilities::RunIdentity { id: message.id.clone(), principal: message.principal.clone(), depth: 0 };
    let ctx = JobContext::for_run(
        identity,
        agent.reference(),
        Arc::clone(&lease),
        deadline,
        Arc::clone(manager),
        Arc::clone(&journal),
    );
    let (_never, mut cancelled) = watch::channel(false);
    let (outcome, kv) = match sandbox(&manager.engine, ctx, &lease) {
        Ok(mut store) => {
            store.data_mut().kv.hold_writes();
            let envelope = Box::new(crate::capabilities::messaging::to_wit_envelope(message));
            let ended =
                execute(&mut store, agent, Call::OnMessage(indices, envelope), deadline, &mut cancelled, &journal)
                    .await;
            let outcome = match ended {
                Ok(Ok(Returned::Acked(AckOutcome::Fulfilled))) => DeliveryOutcome::Fulfilled,
                Ok(Ok(Returned::Acked(AckOutcome::Rejected(r)))) => {
                    DeliveryOutcome::Rejected(crate::capabilities::messaging::from_wit_code(r.code), r.reason)
                }
                Ok(Ok(Returned::Acked(AckOutcome::Failed(reason)))) => DeliveryOutcome::Failed(reason),
                Ok(Ok(Returned::Handled(_))) => DeliveryOutcome::Failed("the consumer returned a job result".into()),
                Ok(Err(trap)) => DeliveryOutcome::Failed(trap_message(&trap)),
                Err(Outcome::TimedOut) => DeliveryOutcome::TimedOut,
                Err(_) => DeliveryOutcome::Interrupted,
            };
            (outcome, store.data_mut().kv.take_held())
        }
        Err(e) => (DeliveryOutcome::Failed(format!("cannot set up the sandbox: {e}")), crate::store::HeldKv::default()),
    };
    cancel_children(manager, manager.close_family(&message.id)).await;
    let record = journal.take_delivery();
    DeliveryRun {
        outcome,
        held: HeldWrites { read_pending: record.read_pending, read_at: record.read_at, audit: record.audit, kv },
    }
}

/// A trap as a stage note: the limit it hit, or the trap itself.
fn trap_message(trap: &wasmtime::Error) -> String {
    if let Some(limit) = trap.downcast_ref::<LimitExceeded>() {
        return format!("limit exceeded: {limit}");
    }
    if let Some(wasmtime::Trap::OutOfFuel) = trap.downcast_ref::<wasmtime::Trap>() {
        return "limit exceeded: fuel exhausted (limits.fuel)".to_owned();
    }
    format!("the consumer trapped: {trap:#}")
}

fn classify(result: wasmtime::Result<Result<String, HostError>>, ctx: &JobContext) -> Outcome {
    match result {
        Ok(Ok(output)) if output.len() as u64 > ctx.lease.limits.max_output_bytes => Outcome::Failed(limit_exceeded(
            "max_output_bytes",
            &format!(
                "the agent's result is {} bytes, over the job's {} (limits.max_output_bytes); nothing was stored",
                output.len(),
                ctx.lease.limits.max_output_bytes
            ),
        )),
        Ok(Ok(output)) => match serde_json::from_str(&output) {
            Ok(value) => Outcome::Completed(value),
            Err(e) => Outcome::Failed(error_json("invalid_output", &format!("the agent returned invalid JSON: {e}"))),
        },
        // A denial the host issued to this job and the agent passed on is `denied`; one the
        // agent made up is its own failure and must not look like a host decision.
        Ok(Err(HostError::Denied(d))) if !ctx.was_denied(&d.scope, &d.target) => Outcome::Failed(serde_json::json!({
            "code": "agent_failed",
            "message": format!("the agent reported a denial the host never issued ({} for {}): {}", d.scope, d.target, d.reason),
        })),
        Ok(Err(HostError::Denied(d))) => Outcome::Failed(serde_json::json!({
            "code": "denied",
            "message": format!("{} denied for {}: {}", d.scope, d.target, d.reason),
            "scope": d.scope,
            "target": d.target,
        })),
        Ok(Err(HostError::Invalid(m))) => Outcome::Failed(error_json("invalid_input", &m)),
        Ok(Err(HostError::Failed(m))) => Outcome::Failed(error_json("agent_failed", &m)),
        Err(trap) => {
            if let Some(limit) = trap.downcast_ref::<LimitExceeded>() {
                return Outcome::Failed(limit_exceeded(limit.limit(), &limit.to_string()));
            }
            if let Some(wasmtime::Trap::OutOfFuel) = trap.downcast_ref::<wasmtime::Trap>() {
                return Outcome::Failed(limit_exceeded(
                    "fuel",
                    "fuel exhausted: the job used its whole CPU budget (limits.fuel)",
                ));
            }
            Outcome::Failed(error_json("trap", &format!("the agent trapped: {trap:#}")))
        }
    }
}

/// A `limit_exceeded` error naming the lease limit that was hit (`error.limit`).
fn limit_exceeded(limit: &str, message: &str) -> serde_json::Value {
    serde_json::json!({ "code": "limit_exceeded", "message": message, "limit": limit })
}

async fn finish(
    journal: &Journal,
    job: &JobRecord,
    outcome: Outcome,
    lease: &Lease,
    host_calls: u64,
) -> Result<Option<JobRecord>, StoreError> {
    let now = crate::now_ms();
    let t = Transition::new(&[JobStatus::Running], JobStatus::Running, now).finished_at(now);
    let t = match outcome {
        Outcome::Completed(output) => Transition { to: JobStatus::Completed, ..t.output(output) },
        Outcome::Failed(error) => Transition { to: JobStatus::Failed, ..t.error(error) },
        Outcome::TimedOut => Transition {
            to: JobStatus::TimedOut,
            ..t.error(error_json(
                "timed_out",
                &format!("the job ran past its {} ms deadline (limits.deadline_ms)", lease.limits.deadline_ms),
            ))
        },
        Outcome::Cancelled => {
            Transition { to: JobStatus::Cancelled, ..t.error(error_json("cancelled", "cancelled while running")) }
        }
    };
    let status = t.to;
    let finished = journal.finish(&job.id, t).await;
    match &finished {
        Ok(_) => {
            let elapsed = std::time::Duration::from_millis(u64::try_from(now - job.created_at).unwrap_or(0));
            if let Some(m) = crate::metrics::recording() {
                m.job_finished(&job.agent_name, status.as_str(), elapsed);
            }
            tracing::debug!(job = %job.id, agent = %job.agent_name, %status, host_calls, "job finished");
        }
        Err(e) => {
            tracing::error!(job = %job.id, error = %e, "cannot record job outcome; it will be recovered at restart")
        }
    }
    finished
}

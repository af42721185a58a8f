//! Host imports, one module per lease-scope family, all with the same shape:
//!
//! - a module doc naming the scopes it serves and the *target* of each check;
//! - `add_to_linker`, called once at startup;
//! - a per-job state struct built from the job's effective lease (where the scope needs
//!   state beyond the shared [`JobContext`]);
//! - the generated `Host` trait implemented on [`JobState`], where **every** function first
//!   calls [`JobContext::authorize`] and returns a typed denial before any effect.
//!
//! `authorize` is also where every decision is counted against the host-call budget and
//! recorded (audit table + a `capability` job event).

pub mod events;
pub mod http;
pub mod jobs;
pub mod kv;
pub mod limits;
pub mod log;
pub mod messaging;
pub mod swarm;

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::{Denial, HostError};
use crate::jobs::{JobManager, Journal};
use crate::lease::{Lease, Scope};
use crate::store::{AuditRecord, Decision};

pub use limits::{JobLimiter, LimitExceeded};

/// Everything a running job's host calls can see. One per job, owned by its `Store`.
pub struct JobState {
    pub ctx: JobContext,
    pub http: http::HttpState,
    pub delegation: jobs::DelegationState,
    pub kv: kv::KvState,
    pub limiter: JobLimiter,
}

impl std::fmt::Debug for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobState").field("job_id", &self.ctx.job_id).finish_non_exhaustive()
    }
}

impl JobState {
    pub fn new(ctx: JobContext) -> Self {
        let http = http::HttpState::new(&ctx.lease);
        let delegation = jobs::DelegationState::new(&ctx.lease);
        let limiter = JobLimiter::new(ctx.lease.limits.memory_bytes);
        let agent_name = ctx.agent.split_once('@').map_or(ctx.agent.as_str(), |(name, _)| name);
        let owner = ctx.manager.policy().kv_owner(&ctx.principal, agent_name);
        let kv = kv::KvState::new(ctx.lease.limits.kv_bytes, owner);
        Self { ctx, http, delegation, kv, limiter }
    }
}

/// Who a run is: a job, or a delivery of a routed message (whose id is then the message's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunIdentity {
    pub id: String,
    pub principal: String,
    pub depth: u32,
}

/// The identity and lease of the running job (or delivery), shared by every capability.
#[derive(Debug)]
pub struct JobContext {
    /// The job's id, or the message's for a delivery (audit rows are keyed by it).
    pub job_id: String,
    pub principal: String,
    /// `name@version` of the running agent.
    pub agent: String,
    pub lease: Arc<Lease>,
    /// How deep in a delegation chain this job is (0 = submitted by a client).
    pub depth: u32,
    /// When the job's deadline passes.
    pub deadline: Instant,
    pub manager: Arc<JobManager>,
    /// Where this job's events and audit rows go (see `jobs::journal`).
    pub journal: Arc<Journal>,
    host_calls: u64,
    /// Bytes of log messages, progress and chunks this job has emitted.
    event_bytes: u64,
    /// The (scope, target) of the first denials issued to this job, so a denial the agent
    /// returns can be told apart from one it made up.
    denials: Vec<(Scope, String)>,
    /// The job's trace context: its span (parent of its host calls' spans) when traces are
    /// exported, else the context it was submitted with; `None` for a delivery or untraced job.
    pub trace: Option<crate::telemetry::TraceParent>,
}

/// How many issued denials a job remembers.
const REMEMBERED_DENIALS: usize = 32;

/// Longest target kept in an audit row, a `capability` event or a log line (cut with `…`).
pub const MAX_RECORDED_TARGET: usize = 512;

/// Longest denial reason kept anywhere (reasons quote targets and grants).
pub const MAX_RECORDED_REASON: usize = 2048;

/// Bytes charged per recorded decision on top of its target and reason (row and event framing).
const RECORD_OVERHEAD: usize = 64;

/// Most bytes of logs, progress messages and chunks one job may emit. Events are queued for
/// the store's writer without waiting for it, so this is what bounds the memory a single
/// chatty (or hostile) job can make the host hold; exceeding it ends the job as a limit.
pub const MAX_EVENT_BYTES: u64 = 16 << 20;

impl JobContext {
    pub fn for_run(
        run: RunIdentity,
        agent: String,
        lease: Arc<Lease>,
        deadline: Instant,
        manager: Arc<JobManager>,
        journal: Arc<Journal>,
    ) -> Self {
        Self {
            job_id: run.id,
            principal: run.principal,
            agent,
            lease,
            depth: run.depth,
            deadline,
            manager,
            journal,
            host_calls: 0,
            event_bytes: 0,
            denials: Vec::new(),
            trace: None,
        }
    }

    /// Makes sure the job is recorded before an effect that leaves it (a kv write, an HTTP
    /// request, a delegated job): no such effect may exist without the job and the audit row
    /// that allowed it. A no-op once the job is recorded. Traps if the job cannot be recorded.
    pub async fn before_effect(&self) -> wasmtime::Result<()> {
        self.journal
            .record_now()
            .await
            .map_err(|e| wasmtime::Error::msg(format!("cannot record the job before its first effect: {e}")))
    }

    /// Host calls made so far.
    pub fn host_calls(&self) -> u64 {
        self.host_calls
    }

    /// Counts one host call against the job's budget; traps when it is exhausted. Every host
    /// function calls this (directly or through [`Self::authorize`]) *first*, before it looks
    /// at its arguments, so no call — refused, malformed or allowed — is free.
    pub fn count_call(&mut self) -> wasmtime::Result<()> {
        self.host_calls += 1;
        if self.host_calls > self.lease.limits.max_host_calls {
            return Err(LimitExceeded::HostCalls(self.lease.limits.max_host_calls).into());
        }
        Ok(())
    }

    /// Counts the call ([`Self::count_call`]), checks `scope` × `target` against the lease, and
    /// records the decision.
    ///
    /// `Err` (a trap) only when a budget is exhausted: a guest that floods the host is stopped
    /// by the host. A denial is `Ok(Err(HostError::Denied))`.
    pub fn authorize(&mut self, scope: Scope, target: &str) -> wasmtime::Result<Result<(), HostError>> {
        self.count_call()?;
        self.check(scope, target)
    }

    /// [`Self::authorize`] without counting: for a call that already counted itself (one that
    /// validated its arguments first, or checks several scopes).
    pub fn check(&mut self, scope: Scope, target: &str) -> wasmtime::Result<Result<(), HostError>> {
        let decision = self.lease.check(scope, target, time::OffsetDateTime::now_utc());
        self.decided(scope, target, decision.map_err(|d| d.reason))
    }

    /// [`Self::authorize`] for `net.fetch`: counts the call, parses `raw` strictly (a target the
    /// parser refuses is denied and recorded like any denial) and checks the URL exactly as it
    /// will be fetched.
    pub fn authorize_fetch(&mut self, raw: &str) -> wasmtime::Result<Result<url::Url, HostError>> {
        self.count_call()?;
        let url = match crate::lease::parse_fetch_target(raw) {
            Ok(url) => url,
            Err(e) => return Ok(Err(self.deny(Scope::NetFetch, raw, format!("refused URL: {e}"))?)),
        };
        let decision = self.lease.check_url(&url, time::OffsetDateTime::now_utc());
        Ok(self.decided(Scope::NetFetch, url.as_str(), decision.map_err(|d| d.reason))?.map(|()| url))
    }

    /// Counts `n` bytes of guest-supplied event data; traps past [`MAX_EVENT_BYTES`].
    pub fn charge_event_bytes(&mut self, n: usize) -> wasmtime::Result<()> {
        self.event_bytes = self.event_bytes.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        if self.event_bytes > MAX_EVENT_BYTES {
            return Err(LimitExceeded::EventBytes(MAX_EVENT_BYTES).into());
        }
        Ok(())
    }

    /// Adds host calls made on this job's behalf (by a delegated child).
    pub fn charge_host_calls(&mut self, n: u64) {
        self.host_calls = self.host_calls.saturating_add(n);
    }

    /// Records a decision and turns a denial into the typed error the guest receives.
    fn decided(
        &mut self,
        scope: Scope,
        target: &str,
        decision: Result<(), String>,
    ) -> wasmtime::Result<Result<(), HostError>> {
        match decision {
            Ok(()) => {
                self.record(scope, target, None)?;
                Ok(Ok(()))
            }
            Err(reason) => Ok(Err(self.deny(scope, target, reason)?)),
        }
    }

    /// Denies a call the lease allowed but a limit or a later check refused (fan-out,
    /// depth, a private address behind a name); recorded like any other denial. Traps only
    /// when recording it would exceed the job's event budget.
    pub fn deny(&mut self, scope: Scope, target: &str, reason: String) -> wasmtime::Result<HostError> {
        // What the guest gets back is capped like everything else it made the host hold.
        let target = clip(target, crate::lease::MAX_TARGET_BYTES).into_owned();
        let reason = clip(&reason, MAX_RECORDED_REASON).into_owned();
        self.record(scope, &target, Some(&reason))?;
        if self.denials.len() < REMEMBERED_DENIALS {
            self.denials.push((scope, target.clone()));
        }
        Ok(HostError::Denied(Denial { scope: scope.as_str().to_string(), target, reason }))
    }

    /// Whether the host denied `scope` for `target` to this job.
    pub fn was_denied(&self, scope: &str, target: &str) -> bool {
        self.denials.iter().any(|(s, t)| s.as_str() == scope && t == target)
    }

    /// Writes the decision to the audit trail and the job's event stream. Both copies are
    /// charged to the job's event budget, with the target cut to [`MAX_RECORDED_TARGET`]
    /// bytes: a guest looping on refused calls fills neither memory nor disk.
    fn record(&mut self, scope: Scope, target: &str, denial: Option<&str>) -> wasmtime::Result<()> {
        let target = clip(target, MAX_RECORDED_TARGET);
        let size = RECORD_OVERHEAD + target.len() + denial.map_or(0, str::len);
        self.charge_event_bytes(2 * size)?;
        if let Some(m) = crate::metrics::recording() {
            m.lease_decision(scope.as_str(), denial.is_none());
        }
        // A span per decided host call. An allowed delegation gets its own span instead, one
        // that lasts until the child ends and is the child job's parent (`capabilities::jobs`).
        if self.trace.is_some() && (scope != Scope::AgentDelegate || denial.is_some()) {
            let attributes = || {
                vec![
                    opentelemetry::KeyValue::new("corral.scope", scope.as_str()),
                    opentelemetry::KeyValue::new("corral.decision", if denial.is_some() { "deny" } else { "allow" }),
                ]
            };
            drop(crate::telemetry::start(scope.as_str(), self.trace.as_ref(), attributes));
        }
        let decision = match denial {
            Some(_) => {
                tracing::info!(job = %self.job_id, agent = %self.agent, scope = scope.as_str(), target = %target, "capability denied");
                Decision::Deny
            }
            None => Decision::Allow,
        };
        // Queued at call time (or held with the unrecorded job); not awaited.
        self.journal.audit(AuditRecord {
            id: None,
            job_id: self.job_id.clone(),
            principal: self.principal.clone(),
            scope: scope.as_str().to_string(),
            target: target.to_string(),
            decision,
            reason: denial.map(str::to_owned),
            at: crate::now_ms(),
        });
        let mut data = serde_json::json!({ "scope": scope.as_str(), "target": target, "decision": decision.as_str() });
        if let (Some(reason), Some(map)) = (denial, data.as_object_mut()) {
            map.insert("reason".into(), reason.into());
        }
        self.emit("capability", data);
        Ok(())
    }

    /// Appends an event to this job's stream (ordered; durable with the next group commit).
    pub fn emit(&self, kind: &str, data: serde_json::Value) {
        self.journal.emit(&self.job_id, kind, data);
    }
}

/// Adds every corral interface to the linker. Called once per engine.
pub fn add_to_linker(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    crate::bindings::corral::agent::types::add_to_linker::<JobState, HasSelf<JobState>>(linker, |s| s)?;
    log::add_to_linker(linker)?;
    kv::add_to_linker(linker)?;
    http::add_to_linker(linker)?;
    jobs::add_to_linker(linker)?;
    events::add_to_linker(linker)?;
    messaging::add_to_linker(linker)?;
    Ok(())
}

impl crate::bindings::corral::agent::types::Host for JobState {}

/// Cuts a guest-supplied string to at most `max` bytes on a char boundary.
pub(crate) fn truncate(s: String, max: usize) -> String {
    match clip(&s, max) {
        std::borrow::Cow::Borrowed(_) => s,
        std::borrow::Cow::Owned(cut) => cut,
    }
}

/// `s` cut to at most `max` bytes on a char boundary, with `…` appended when cut.
pub(crate) fn clip(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut cut = s.get(..end).unwrap_or_default().to_owned();
    cut.push('…');
    std::borrow::Cow::Owned(cut)
}

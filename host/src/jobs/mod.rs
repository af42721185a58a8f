//! Job lifecycle: submit → queued → running → completed | failed | cancelled | timed_out.
//!
//! A job is written to the store (durably, with its first `state` event) *before* the
//! client hears about it, then handed to the scheduler. [`JobManager`] owns the in-memory
//! side: which jobs are running, how to cancel them, and how to wait for one to finish.
//! The store is the source of truth: every state change is a conditional transition, so a
//! cancel racing a completion resolves to exactly one terminal state.

pub mod follow;
pub mod journal;
pub mod probe;
mod rate;
mod recovery;
pub(crate) mod runner;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};

use crate::config::Policy;
use crate::engine::registry::{LoadedAgent, Registry, ResolveError};
use crate::lease::{Lease, LeaseError, LeaseRequest, Limits, OwnAddresses};
use crate::store::{InsertOutcome, JobCommits, JobRecord, JobStatus, Store, StoreError, Transition};

pub use journal::Journal;
pub use rate::RateLimit;
pub use recovery::RecoveryReport;

/// What a client asks for.
#[derive(Debug, Clone)]
pub struct SubmitRequest {
    /// `name` or `name@version`.
    pub agent: String,
    pub input: Value,
    /// The lease the submitter asks for, as sent (kept verbatim for idempotency).
    pub lease: Option<Value>,
    /// The trace the job continues (not part of the request's identity: a retry with another
    /// `traceparent` is the same request).
    pub trace_parent: Option<crate::telemetry::TraceParent>,
    pub idempotency_key: Option<String>,
}

/// When a submission is answered.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// Once the job is committed.
    Committed,
    /// Once it ended (or this long passed); it may run held meanwhile.
    Finished(Duration),
    /// Once its single write commits, if it can run held; else once it is committed.
    Held,
}

impl Wait {
    /// How long a job that runs held is waited for before it is recorded anyway.
    fn held_for(self) -> Option<Duration> {
        match self {
            Wait::Committed => None,
            Wait::Finished(wait) => Some(wait),
            Wait::Held => Some(journal::DEFER_WINDOW),
        }
    }
}

/// Why a job could not be submitted or acted on. Mapped to HTTP statuses in `api/`.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("invalid lease: {0}")]
    Lease(#[from] LeaseError),
    #[error(
        "idempotency key '{0}' was already used for a different request — use a new key, or resend the exact same request"
    )]
    IdempotencyConflict(String),
    #[error("job '{0}' not found")]
    NotFound(String),
    #[error("job '{id}' already finished as {status}")]
    AlreadyFinished { id: String, status: JobStatus },
    #[error("the host is shutting down and accepts no new jobs — retry against another host or after restart")]
    ShuttingDown,
    #[error(
        "the host is overloaded: {0} jobs are already waiting for a slot (server.max_queued_jobs) — retry after a second"
    )]
    Overloaded(usize),
    #[error("rate limit reached for this principal (rate_limit in the policy) — retry in {} ms", .0.as_millis())]
    RateLimited(Duration),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// In-memory handles of a job this process is running (or about to).
struct Handle {
    cancel: watch::Sender<bool>,
    /// Flipped (and dropped) when the run ends; waiters subscribe to it.
    done: watch::Sender<bool>,
}

/// Submits, runs, cancels and awaits jobs.
pub struct JobManager {
    store: Store,
    registry: Arc<Registry>,
    policy: Arc<Policy>,
    engine: wasmtime::Engine,
    permits: Arc<Semaphore>,
    /// One per client job waiting for a slot (`server.max_queued_jobs`).
    queue_slots: Arc<Semaphore>,
    /// Submissions per principal (`[rate_limit]`).
    rate_limits: rate::RateLimits,
    handles: Mutex<HashMap<String, Handle>>,
    shutting_down: std::sync::atomic::AtomicBool,
    /// What finished children used, until their parent collects it.
    usage: Mutex<HashMap<String, Usage>>,
    /// Jobs whose guest is running in this process right now.
    running: Arc<AtomicUsize>,
    /// Outbound HTTP clients shared by every job's `net.fetch`.
    http_clients: crate::capabilities::http::Clients,
    /// Operator-managed secrets, injected into fetches by `secret.use`.
    secrets: crate::secrets::SecretStore,
    /// The children of each running parent, registered *before* they are written: a parent
    /// that ends cancels all of them, including one whose insert is still in flight (which
    /// then finds its parent gone and cancels itself instead of running orphaned).
    families: Mutex<HashMap<String, Vec<String>>>,
    /// This host's listen addresses, which `net.fetch` may not reach unless named.
    own_addresses: std::sync::RwLock<OwnAddresses>,
    /// The message plane (its deliveries run through this manager's runner).
    messages: Arc<crate::messages::MessagePlane>,
    /// Federation over ASP, when `[swarm] listen` is set (installed once by `serve`).
    federation: std::sync::OnceLock<Arc<crate::asp::federation::Federation>>,
    /// A weak self-reference so `&self` methods can hand `Arc`s to spawned jobs.
    me: Weak<JobManager>,
}

impl std::fmt::Debug for JobManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobManager").finish_non_exhaustive()
    }
}

impl JobManager {
    pub fn new(
        store: Store,
        registry: Arc<Registry>,
        policy: Arc<Policy>,
        secrets: crate::secrets::SecretStore,
    ) -> Result<Arc<Self>, String> {
        let engine = registry.engine().clone();
        let http_clients = crate::capabilities::http::Clients::new()?;
        let permits = Arc::new(Semaphore::new(policy.server.max_concurrent_jobs.max(1)));
        let queue_slots = Arc::new(Semaphore::new(policy.server.max_queued_jobs));
        let rate_limits = rate::RateLimits::from_policy(&policy);
        let (store_for_plane, registry_for_plane, policy_for_plane) =
            (store.clone(), Arc::clone(&registry), Arc::clone(&policy));
        Ok(Arc::new_cyclic(|me| Self {
            store,
            registry,
            policy,
            engine,
            permits,
            queue_slots,
            rate_limits,
            handles: Mutex::new(HashMap::new()),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            running: Arc::new(AtomicUsize::new(0)),
            usage: Mutex::new(HashMap::new()),
            families: Mutex::new(HashMap::new()),
            http_clients,
            secrets,
            own_addresses: std::sync::RwLock::new(OwnAddresses::new(interface_addresses())),
            messages: Arc::new(crate::messages::MessagePlane::new(
                store_for_plane,
                registry_for_plane,
                policy_for_plane,
                me.clone(),
            )),
            federation: std::sync::OnceLock::new(),
            me: me.clone(),
        }))
    }

    pub(crate) fn http_clients(&self) -> &crate::capabilities::http::Clients {
        &self.http_clients
    }

    /// The host's secrets (values never leave it except as injected headers).
    pub fn secrets(&self) -> &crate::secrets::SecretStore {
        &self.secrets
    }

    /// Registers an address this host listens on (after binding, with its real port): no
    /// agent's `net.fetch` reaches it unless the operator names exactly that address.
    pub fn add_listener(&self, addr: std::net::SocketAddr) {
        self.own_addresses.write().unwrap_or_else(PoisonError::into_inner).add_listener(addr);
    }

    /// The addresses this host listens on.
    pub(crate) fn own_addresses(&self) -> std::sync::RwLockReadGuard<'_, OwnAddresses> {
        self.own_addresses.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The message plane.
    pub fn messages(&self) -> &Arc<crate::messages::MessagePlane> {
        &self.messages
    }

    /// Installs the host's federation (once; a second call is ignored).
    pub fn set_federation(&self, federation: Arc<crate::asp::federation::Federation>) {
        let _ = self.federation.set(federation);
    }

    /// The host's federation, if ASP is served.
    pub fn federation(&self) -> Option<&Arc<crate::asp::federation::Federation>> {
        self.federation.get()
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Accepts a job from a client: resolves the agent, computes the effective lease,
    /// records the job durably and schedules it. Returns the job and whether it is an
    /// idempotent replay of an earlier submission.
    pub async fn submit(&self, principal: &str, req: SubmitRequest) -> Result<(JobRecord, bool), JobError> {
        self.submit_inner(principal, req, Wait::Committed, None).await
    }

    /// [`Self::submit`] for a client that is answered once and then follows the job's events
    /// (ARCP): a job that can start at once and has nothing to deduplicate runs before it is
    /// written, and the answer comes when its single write commits — with its outcome if it
    /// ended within [`journal::DEFER_WINDOW`], else as `running` at the end of that window
    /// (or earlier, at its first effect). Any other job is answered once it is committed, as
    /// by [`Self::submit`].
    ///
    /// Returns the job, whether it is a replay, and a follower of its events from the first,
    /// made before anything was written: the writer hands it the committed events, so a job
    /// that ended is streamed without reading its events back from the store.
    pub async fn submit_held(
        &self,
        principal: &str,
        req: SubmitRequest,
    ) -> Result<(JobRecord, bool, follow::EventFollower), JobError> {
        let mut watched = None;
        let (job, replayed) = self.submit_inner(principal, req, Wait::Held, Some(&mut watched)).await?;
        let events = match watched {
            Some(commits) if commits.job() == job.id => follow::EventFollower::watching(&self.store, commits, 0),
            _ => follow::EventFollower::new(&self.store, &job.id, 0),
        };
        Ok((job, replayed, events))
    }

    /// [`Self::submit`], then waits up to `wait` for the job to finish; returns it as it is
    /// then. A job the client waits for may run before it is written (see [`journal`]): what
    /// this returns is always committed.
    pub async fn submit_and_wait(
        &self,
        principal: &str,
        req: SubmitRequest,
        wait: Duration,
    ) -> Result<(JobRecord, bool), JobError> {
        self.submit_inner(principal, req, Wait::Finished(wait), None).await
    }

    /// `watched`: where to put a watch of the new job's commits, made before it is written.
    async fn submit_inner(
        &self,
        principal: &str,
        req: SubmitRequest,
        wait: Wait,
        watched: Option<&mut Option<JobCommits>>,
    ) -> Result<(JobRecord, bool), JobError> {
        if self.is_shutting_down() {
            return Err(JobError::ShuttingDown);
        }
        self.rate_limits.check(principal).map_err(JobError::RateLimited)?;
        // Only a keyed request can be replayed, so only a keyed request needs its hash.
        let request_hash = req.idempotency_key.as_ref().map(|_| request_hash(&req));
        // An idempotent replay must return the original job even if the agent is gone now.
        if let (Some(key), Some(hash)) = (&req.idempotency_key, &request_hash)
            && let Some(existing) = self.store.job_by_idempotency_key(principal, key).await?
        {
            let replayed = replay(existing, hash, key)?;
            return self.wait_for(replayed, wait).await;
        }
        let size = req.lease.as_ref().map_or(0, text_bytes);
        let sent = req.lease.clone();
        let lease_request = off_workers_if_large(size, move || match sent {
            Some(v) => LeaseRequest::deserialize(&v).map_err(|e| LeaseError::Invalid(e.to_string())),
            None => Ok(LeaseRequest::default()),
        })
        .await??;
        let agent = self.registry.resolve(&req.agent)?;
        let (declared, policy, who) = (Arc::clone(&agent), Arc::clone(&self.policy), principal.to_owned());
        let lease = off_workers_if_large(size, move || {
            let ceiling = policy.ceiling_for(&who, Some(&declared.manifest.name));
            Lease::effective(&declared.declared, &ceiling, &lease_request, None, time::OffsetDateTime::now_utc())
        })
        .await??;
        let record = new_record(principal, &req, &agent, &lease, request_hash.clone(), None, 0)?;
        if let Some(watched) = watched {
            *watched = Some(self.store.watch_job(&record.id));
        }
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok();
        // A waiting client with a free slot and nothing to deduplicate: run first, write once.
        let permit = match (wait.held_for(), permit) {
            (Some(wait), Some(permit)) if req.idempotency_key.is_none() => {
                return Ok((self.run_held(record, agent, lease, permit, wait).await?, false));
            }
            (_, permit) => permit,
        };
        let start = match permit {
            Some(permit) => Start::Running(Some(permit)),
            None => {
                // No slot: the job would wait in the queue, which is bounded. (A replay of an
                // idempotency key is refused too while overloaded; the client retries.)
                let slot = Arc::clone(&self.queue_slots)
                    .try_acquire_owned()
                    .map_err(|_| JobError::Overloaded(self.policy.server.max_queued_jobs))?;
                Start::Queued { needs_permit: true, slot: Some(slot) }
            }
        };
        let outcome = self.insert_and_schedule(record, agent, lease, start).await?;
        let submitted = match outcome {
            InsertOutcome::Created(job) => (job, false),
            InsertOutcome::Existing(existing) => {
                let key = req.idempotency_key.unwrap_or_default();
                replay(existing, request_hash.as_deref().unwrap_or_default(), &key)?
            }
        };
        self.wait_for(submitted, wait).await
    }

    /// Waits (if asked to) for a submitted, committed job. The job is accepted: a failure while
    /// waiting must not turn into an error (the client would resubmit a duplicate), so it
    /// answers with the job as submitted instead.
    async fn wait_for(&self, (job, replayed): (JobRecord, bool), wait: Wait) -> Result<(JobRecord, bool), JobError> {
        let Wait::Finished(wait) = wait else { return Ok((job, replayed)) };
        match self.wait_finished(&job.id, wait).await {
            Ok(Some(done)) => Ok((done, replayed)),
            Ok(None) => Ok((job, replayed)),
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "waiting for the job failed; answering with it as submitted");
                Ok((job, replayed))
            }
        }
    }

    /// Runs a job a client waits for before writing it (see [`journal`]), and answers with it
    /// as committed: finished if it finished within `wait`, else recorded as running.
    async fn run_held(
        &self,
        mut record: JobRecord,
        agent: Arc<LoadedAgent>,
        lease: Lease,
        permit: OwnedSemaphorePermit,
        wait: Duration,
    ) -> Result<JobRecord, JobError> {
        let now = crate::now_ms();
        record.status = JobStatus::Running;
        record.started_at = Some(now);
        record.attempt = 1;
        let journal = Journal::held(self.store.clone(), record.clone());
        let (reply, finished) = oneshot::channel();
        let id = record.id.clone();
        self.spawn_run(record, agent, lease, Start::Running(Some(permit)), Arc::clone(&journal), Some(reply));
        let done = match tokio::time::timeout(wait, finished).await {
            Ok(Ok(done)) => done?,
            // Still running (or its runner is gone): acknowledge only what is committed.
            Ok(Err(_)) | Err(_) => {
                journal.record_now().await?;
                None
            }
        };
        match done {
            Some(job) => Ok(job),
            None => self.store.get_job(&id).await?.ok_or(JobError::NotFound(id)),
        }
    }

    /// Starts a child job on behalf of a running parent (delegation). The child's lease is
    /// the parent's remaining lease narrowed by what the parent asks for; asking for more
    /// than the parent holds is `LeaseError::WiderThanParent`.
    ///
    /// `remaining` is what is left of the parent's budgets (host calls, network bytes); a
    /// child can never outlive its parent's deadline either. `lease_request` is the guest's JSON
    /// text (bounded by `MAX_REQUEST_JSON_BYTES` and `REQUEST_CAP` before anything is compiled).
    pub async fn submit_child(
        &self,
        parent: &crate::capabilities::JobContext,
        remaining: Limits,
        agent_ref: &str,
        input: Value,
        lease_request: Option<String>,
        trace_parent: Option<crate::telemetry::TraceParent>,
    ) -> Result<JobRecord, JobError> {
        let agent = self.registry.resolve(agent_ref)?;
        let mut parent_lease = (*parent.lease).clone();
        let time_left = parent.deadline.saturating_duration_since(Instant::now());
        let time_left_ms = u64::try_from(time_left.as_millis()).unwrap_or(u64::MAX);
        parent_lease.limits = parent_lease.limits.intersect(&Limits { deadline_ms: time_left_ms, ..remaining });
        let size = lease_request.as_ref().map_or(0, String::len);
        let (child, policy, who) = (Arc::clone(&agent), Arc::clone(&self.policy), parent.principal.clone());
        let lease = off_workers_if_large(size, move || {
            let request = match lease_request {
                Some(text) => LeaseRequest::parse_json(&text)?,
                None => LeaseRequest::default(),
            };
            let ceiling = policy.ceiling_for(&who, Some(&child.manifest.name));
            Lease::effective(&child.declared, &ceiling, &request, Some(&parent_lease), time::OffsetDateTime::now_utc())
        })
        .await??;
        let req =
            SubmitRequest { agent: agent_ref.to_string(), input, lease: None, idempotency_key: None, trace_parent };
        let record = new_record(
            &parent.principal,
            &req,
            &agent,
            &lease,
            None,
            Some(parent.job_id.clone()),
            parent.depth.saturating_add(1),
        )?;
        self.lock_families().entry(parent.job_id.clone()).or_default().push(record.id.clone());
        // Children bypass the concurrency limit: their parent already holds a slot and
        // waits for them, so making them queue behind other parents could deadlock.
        Ok(self.insert_and_schedule(record, agent, lease, Start::Running(None)).await?.job().clone())
    }

    fn lock_families(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<String>>> {
        // Every change is a single insert or remove: the map is valid after any panic.
        self.families.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends `parent`'s family: returns its children for cancelling; children registered
    /// later cannot exist (the parent's guest is gone), and one still being inserted cancels
    /// itself (see [`Self::insert_and_schedule`]).
    pub(crate) fn close_family(&self, parent: &str) -> Vec<String> {
        self.lock_families().remove(parent).unwrap_or_default()
    }

    /// Records a new job and schedules it, in a task of its own: the insert is committed even
    /// if the caller goes away mid-request (a client disconnect, a parent hitting its
    /// deadline), so scheduling must not depend on the caller staying. A job that can start
    /// at once is written as `running` straight away (one commit fewer than queued → running).
    async fn insert_and_schedule(
        &self,
        mut record: JobRecord,
        agent: Arc<LoadedAgent>,
        lease: Lease,
        start: Start,
    ) -> Result<InsertOutcome, JobError> {
        let Some(me) = self.me.upgrade() else { return Err(JobError::ShuttingDown) };
        if let Start::Running(_) = start {
            record.status = JobStatus::Running;
            record.started_at = Some(crate::now_ms());
            record.attempt = 1;
        }
        let task = tokio::spawn(async move {
            let outcome = me.store.insert_job(record).await?;
            if let InsertOutcome::Created(job) = &outcome {
                // Decided under the families lock, so a parent cannot end between the check
                // and the child's handle being registered (which `schedule` does at once).
                let orphan = {
                    let families = me.lock_families();
                    let orphan = job
                        .parent_id
                        .as_ref()
                        .is_some_and(|parent| !families.get(parent).is_some_and(|children| children.contains(&job.id)));
                    if !orphan {
                        me.schedule(job.clone(), agent, lease, start);
                    }
                    orphan
                };
                if orphan {
                    me.cancel_orphan(&job.id).await?;
                }
            }
            Ok::<_, JobError>(outcome)
        });
        task.await.map_err(|e| JobError::Store(StoreError::Task(e.to_string())))?
    }

    /// Cancels a delegated child whose parent ended before the child could be scheduled.
    async fn cancel_orphan(&self, id: &str) -> Result<(), JobError> {
        let now = crate::now_ms();
        let t = Transition::new(&[JobStatus::Queued, JobStatus::Running], JobStatus::Cancelled, now)
            .finished_at(now)
            .error(error_json("parent_finished", "the parent job ended before this delegated job could start"));
        self.store.transition_job(id, t).await?;
        Ok(())
    }

    /// Hands a recorded job to a worker task.
    fn schedule(&self, job: JobRecord, agent: Arc<LoadedAgent>, lease: Lease, start: Start) {
        self.spawn_run(job, agent, lease, start, Journal::recorded(self.store.clone()), None);
    }

    /// Starts a job's worker task; `reply` gets the job as committed when it ends.
    fn spawn_run(
        &self,
        job: JobRecord,
        agent: Arc<LoadedAgent>,
        lease: Lease,
        start: Start,
        journal: Arc<Journal>,
        reply: Option<runner::Reply>,
    ) {
        let Some(me) = self.me.upgrade() else { return };
        let (cancel, cancelled) = watch::channel(false);
        let (done, _) = watch::channel(false);
        if let Ok(mut handles) = self.handles.lock() {
            handles.insert(job.id.clone(), Handle { cancel, done });
        }
        let permits = Arc::clone(&self.permits);
        tokio::spawn(async move {
            // Forgets the job's handles however the run ends, even by panic.
            let _forget = ForgetOnDrop(Arc::clone(&me), job.id.clone());
            let (_permit, queued) = match start {
                Start::Running(permit) => (permit, false),
                Start::Queued { needs_permit: true, slot } => {
                    let permit = permits.acquire_owned().await.ok();
                    drop(slot); // no longer waiting
                    (permit, true)
                }
                Start::Queued { needs_permit: false, .. } => (None, true),
            };
            let run = runner::Run { job, agent, lease, queued, journal, reply };
            runner::run(&me, run, cancelled).await;
        });
    }

    fn forget(&self, id: &str) {
        if let Ok(mut handles) = self.handles.lock()
            && let Some(handle) = handles.remove(id)
        {
            let _ = handle.done.send(true);
        }
    }

    /// A job of `principal` (other principals' jobs do not exist for them).
    pub async fn get(&self, principal: &str, id: &str) -> Result<JobRecord, JobError> {
        match self.store.get_job(id).await? {
            Some(job) if job.principal == principal => Ok(job),
            _ => Err(JobError::NotFound(id.to_string())),
        }
    }

    /// Cancels a job: a queued job is cancelled at once, a running one is interrupted at its
    /// next epoch tick (or host-call return) and ends as `cancelled`.
    pub async fn cancel(&self, principal: &str, id: &str) -> Result<JobRecord, JobError> {
        let job = self.get(principal, id).await?;
        if job.status.is_terminal() {
            return Err(JobError::AlreadyFinished { id: job.id, status: job.status });
        }
        self.cancel_by_id(&job.id).await?;
        self.get(principal, id).await
    }

    /// [`Self::cancel`] without waiting for the outcome: the job is cancelled (queued) or told
    /// to stop (running) when this returns; its terminal state follows in its events.
    pub async fn request_cancel(&self, principal: &str, id: &str) -> Result<(), JobError> {
        let job = self.get(principal, id).await?;
        if job.status.is_terminal() {
            return Err(JobError::AlreadyFinished { id: job.id, status: job.status });
        }
        self.signal_cancel(&job.id).await
    }

    /// Cancels without an ownership check (used for the children of a finished parent).
    pub(crate) async fn cancel_by_id(&self, id: &str) -> Result<(), JobError> {
        self.signal_cancel(id).await?;
        // Wait for the runner to record the outcome, so the caller sees the final state.
        self.wait_finished(id, Duration::from_secs(5)).await?;
        Ok(())
    }

    /// Cancels a queued job, or signals a running one's runner (which records the outcome).
    async fn signal_cancel(&self, id: &str) -> Result<(), JobError> {
        let now = crate::now_ms();
        let t = Transition::new(&[JobStatus::Queued], JobStatus::Cancelled, now)
            .finished_at(now)
            .error(error_json("cancelled", "cancelled before it started"));
        if self.store.transition_job(id, t).await?.is_none() {
            // Running (or just finished): signal the runner, which records the outcome.
            if let Ok(handles) = self.handles.lock()
                && let Some(h) = handles.get(id)
            {
                let _ = h.cancel.send(true);
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for a job to reach a terminal state; returns it as it is then.
    pub async fn wait_finished(&self, id: &str, timeout: Duration) -> Result<Option<JobRecord>, JobError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut done = self.handles.lock().ok().and_then(|h| h.get(id).map(|h| h.done.subscribe()));
        let mut commits = self.store.watch_job(id);
        loop {
            commits.mark_seen();
            let job = self.store.get_job(id).await?;
            match &job {
                None => return Ok(None),
                Some(j) if j.status.is_terminal() => return Ok(job),
                Some(_) => {}
            }
            // Wake on the runner's "finished" signal, any new event of this job (state
            // changes are events), or the deadline.
            let woke = tokio::time::timeout_at(deadline, async {
                match done.as_mut() {
                    Some(rx) => {
                        let _ = rx.changed().await;
                    }
                    None => commits.next().await,
                }
            })
            .await;
            if woke.is_err() {
                return Ok(job);
            }
            done = None;
        }
    }

    /// Remembers what a finished child used, for its parent to charge.
    pub(crate) fn record_usage(&self, id: &str, usage: Usage) {
        if let Ok(mut map) = self.usage.lock() {
            map.insert(id.to_string(), usage);
        }
    }

    /// Takes what a finished child used (zero if unknown).
    pub(crate) fn take_usage(&self, id: &str) -> Usage {
        self.usage.lock().ok().and_then(|mut map| map.remove(id)).unwrap_or_default()
    }

    /// Counts a job as running until the guard is dropped.
    pub(crate) fn running_guard(&self) -> RunningGuard {
        self.running.fetch_add(1, Ordering::SeqCst);
        RunningGuard(Arc::clone(&self.running))
    }

    /// Client jobs waiting for a slot now.
    pub fn queued_jobs(&self) -> usize {
        self.policy.server.max_queued_jobs.saturating_sub(self.queue_slots.available_permits())
    }

    /// Jobs running now.
    pub fn running_jobs(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Stops accepting jobs and waits up to `grace` for running ones. Queued jobs are not
    /// started any more; they and jobs still running after the grace period stay in the
    /// store as they are and are recovered at the next start.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.shutting_down.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + grace.min(Duration::from_secs(24 * 3600));
        loop {
            let running = self.running.load(Ordering::SeqCst);
            if running == 0 || tokio::time::Instant::now() >= deadline {
                return running;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Re-queues or fails the jobs a previous process left unfinished (see `recovery`).
    pub async fn recover(&self) -> Result<RecoveryReport, JobError> {
        recovery::recover(self).await
    }
}

/// How a scheduled job starts.
pub(crate) enum Start {
    /// Recorded as `queued`: the runner marks it running once it has a slot (if it needs one).
    /// A client's job holds a place in the bounded queue (`slot`) until then.
    Queued { needs_permit: bool, slot: Option<OwnedSemaphorePermit> },
    /// Recorded (or held) as `running`, holding its slot if it needs one.
    Running(Option<OwnedSemaphorePermit>),
}

struct ForgetOnDrop(Arc<JobManager>, String);

impl Drop for ForgetOnDrop {
    fn drop(&mut self) {
        self.0.forget(&self.1);
    }
}

/// Resource use of a finished child job, charged to its parent when the parent collects it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub host_calls: u64,
    pub net_bytes: u64,
    pub kv_bytes: u64,
}

/// Decrements the running-jobs count when a run ends, however it ends.
pub(crate) struct RunningGuard(Arc<AtomicUsize>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn replay(existing: JobRecord, request_hash: &str, key: &str) -> Result<(JobRecord, bool), JobError> {
    if existing.request_hash.as_deref() == Some(request_hash) {
        Ok((existing, true))
    } else {
        Err(JobError::IdempotencyConflict(key.to_string()))
    }
}

/// A stable hash of what the client sent, so "same key, same request" can be told apart
/// from "same key, different request".
fn request_hash(req: &SubmitRequest) -> String {
    let canonical = serde_json::json!({ "agent": req.agent, "input": req.input, "lease": req.lease });
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

fn new_record(
    principal: &str,
    req: &SubmitRequest,
    agent: &LoadedAgent,
    lease: &Lease,
    request_hash: Option<String>,
    parent_id: Option<String>,
    depth: u32,
) -> Result<JobRecord, JobError> {
    let lease = serde_json::to_value(lease).map_err(|e| LeaseError::Invalid(format!("cannot serialize lease: {e}")))?;
    Ok(JobRecord {
        id: crate::store::new_job_id(),
        principal: principal.to_string(),
        agent: req.agent.clone(),
        agent_name: agent.manifest.name.clone(),
        agent_version: agent.manifest.version.clone(),
        input: req.input.clone(),
        lease,
        status: JobStatus::Queued,
        output: None,
        error: None,
        idempotency_key: req.idempotency_key.clone(),
        request_hash,
        parent_id,
        depth,
        attempt: 0,
        created_at: crate::now_ms(),
        started_at: None,
        finished_at: None,
        trace_parent: req.trace_parent,
    })
}

/// Lease requests with more than this many bytes of text are parsed and combined on the
/// blocking pool: pruning their layers is quadratic in their size (about 2 ms at the caps, see
/// docs/benchmarks.md), too long to hold an async worker; typical requests take a few µs.
const INLINE_LEASE_BYTES: usize = 512;

/// Runs `f` here if `size` is small, else on the blocking pool.
async fn off_workers_if_large<T: Send + 'static>(
    size: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, JobError> {
    if size <= INLINE_LEASE_BYTES {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f).await.map_err(|e| JobError::Store(StoreError::Task(e.to_string())))
}

/// Bytes of text (strings and keys) in a JSON value, without serializing it.
fn text_bytes(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(text_bytes).sum(),
        Value::Object(map) => map.iter().map(|(k, v)| k.len() + text_bytes(v)).sum(),
        Value::Null | Value::Bool(_) | Value::Number(_) => 8,
    }
}

/// The machine's interface addresses (for listeners bound to `0.0.0.0` / `::`); empty if
/// they cannot be read, in which case loopback and unspecified targets are still refused.
fn interface_addresses() -> Vec<std::net::IpAddr> {
    match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces.into_iter().map(|i| i.ip()).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list network interfaces; only loopback counts as this host's own");
            Vec::new()
        }
    }
}

/// The `error` JSON of a job: a stable code and a message for humans.
pub fn error_json(code: &str, message: &str) -> Value {
    serde_json::json!({ "code": code, "message": message })
}

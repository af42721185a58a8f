//! Where a running job's writes go: straight to the store, or — while the job is not recorded
//! yet — held in memory and written with its row in one commit.
//!
//! Why: a client that submits with `?wait` gets no answer until the job ends, so until then
//! nothing about the job has been acknowledged and nothing can be lost. Such a job starts
//! *before* it is written; if it ends quickly, its row, its events, its audit trail and its
//! outcome go to the store as one op — one commit instead of three on the latency path
//! (insert, running, finished), and a fraction of the write ops under load.
//!
//! A held job is written ("recorded") as soon as any of these happens, and from then on every
//! write goes straight to the store, as for any other job:
//! - it is about to cause an effect outside its own record (a kv write, an HTTP request, a
//!   delegated job): [`Journal::record_now`] is awaited *before* the effect, so no effect ever
//!   exists without the job and the audit row of the decision that allowed it;
//! - it has run for [`DEFER_WINDOW`], so a longer job is visible (list, cancel, events) early;
//! - the waiting client gives up waiting (its wait elapsed): it is answered `202`, which is
//!   an acknowledgement, so the job is committed first.
//!
//! If the host dies while a job is held, the job is gone — and so is the client's connection,
//! which never got an answer: the client retries, exactly as for a request that never arrived.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use serde_json::Value;

use crate::store::{AuditRecord, JobRecord, NewEvent, Store, StoreError, Transition};

/// How long a waited-for job may run before it is recorded anyway.
pub const DEFER_WINDOW: Duration = Duration::from_millis(10);

/// The commit of a job's row, awaitable by every host call that needs the job to exist.
type Commit = Shared<BoxFuture<'static, Result<(), StoreError>>>;

/// One job's write path. Shared by the runner and the job's host calls.
pub struct Journal {
    store: Store,
    state: Mutex<State>,
}

enum State {
    /// Not written yet; everything the job writes is held here.
    Held(Box<Held>),
    /// Written, or queued to be: `commit` resolves once the row is durable (`None`: it already
    /// was when this journal was made).
    Recorded { commit: Option<Commit> },
    /// A delivery of a routed message to a consumer (see `messages::deliver`): no event
    /// stream; its READ stage and audit rows wait for the outcome, or for the first effect.
    Delivery(Box<HeldDelivery>),
}

/// What a delivery holds until its outcome (or its first effect) is written.
struct HeldDelivery {
    message_id: String,
    attempt_id: String,
    read_at: i64,
    audit: Vec<AuditRecord>,
    /// The READ stage (and the audit rows so far) were written: later rows go straight.
    written: Option<Commit>,
}

/// What a delivery's journal hands over at the end, for the outcome's op.
#[derive(Debug, Default)]
pub struct DeliveryRecord {
    /// READ is not written yet: write it (at `read_at`) with the outcome.
    pub read_pending: bool,
    pub read_at: i64,
    pub audit: Vec<AuditRecord>,
}

struct Held {
    job: JobRecord,
    events: Vec<NewEvent>,
    audit: Vec<AuditRecord>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("held", &self.is_held()).finish_non_exhaustive()
    }
}

impl Journal {
    /// The journal of a job whose row is already committed.
    pub fn recorded(store: Store) -> Arc<Journal> {
        Arc::new(Journal { store, state: Mutex::new(State::Recorded { commit: None }) })
    }

    /// The journal of a delivery of message `message_id` (attempt `attempt_id`), READ now.
    pub fn delivery(store: Store, message_id: &str, attempt_id: &str) -> Arc<Journal> {
        let held = HeldDelivery {
            message_id: message_id.to_owned(),
            attempt_id: attempt_id.to_owned(),
            read_at: crate::now_ms(),
            audit: Vec::new(),
            written: None,
        };
        Arc::new(Journal { store, state: Mutex::new(State::Delivery(Box::new(held))) })
    }

    /// Ends a delivery's journal: what its outcome's op must write. Empty for other journals.
    pub fn take_delivery(&self) -> DeliveryRecord {
        let mut state = self.lock();
        match &mut *state {
            State::Delivery(held) => DeliveryRecord {
                read_pending: held.written.is_none(),
                read_at: held.read_at,
                audit: std::mem::take(&mut held.audit),
            },
            State::Held(_) | State::Recorded { .. } => DeliveryRecord::default(),
        }
    }

    /// The journal of a job that starts before it is written; `job` is its row as it is now
    /// (`running`).
    pub fn held(store: Store, job: JobRecord) -> Arc<Journal> {
        let held = Held { job, events: Vec::new(), audit: Vec::new() };
        Arc::new(Journal { store, state: Mutex::new(State::Held(Box::new(held))) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is valid after any panic of a holder: every change is a single assignment.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the job is still unwritten.
    pub fn is_held(&self) -> bool {
        matches!(*self.lock(), State::Held(_))
    }

    /// Appends an event to the job's stream (ordered; durable with the next group commit, or
    /// with the job's row).
    pub fn emit(&self, job_id: &str, kind: &str, data: Value) {
        let mut state = self.lock();
        match &mut *state {
            State::Held(held) => held.events.push(NewEvent { kind: kind.to_owned(), data, at: crate::now_ms() }),
            // Queued now, under the lock, so it is ordered after the row; not awaited.
            State::Recorded { .. } => drop(self.store.append_event(job_id, kind, data)),
            // A delivery has no event stream: its record is the message's stage history.
            State::Delivery(_) => {}
        }
    }

    /// Records a lease decision in the audit trail.
    pub fn audit(&self, record: AuditRecord) {
        let mut state = self.lock();
        match &mut *state {
            State::Held(held) => held.audit.push(record),
            State::Delivery(held) if held.written.is_none() => held.audit.push(record),
            State::Recorded { .. } | State::Delivery(_) => drop(self.store.record_audit(record)),
        }
    }

    /// Writes the job (as it is now, with everything held) if it is not written yet, and
    /// resolves once its row is durable. Cheap once the job is recorded.
    pub fn record_now(&self) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let mut state = self.lock();
        if let State::Delivery(held) = &mut *state {
            let commit = held.written.get_or_insert_with(|| {
                let audit = std::mem::take(&mut held.audit);
                self.store.record_read(&held.message_id, &held.attempt_id, held.read_at, audit).boxed().shared()
            });
            let commit = commit.clone();
            return commit.boxed();
        }
        let commit = match std::mem::replace(&mut *state, State::Recorded { commit: None }) {
            State::Recorded { commit } => commit,
            State::Held(held) => {
                let Held { job, events, audit } = *held;
                Some(self.store.insert_job_with(job, events, audit).map(|r| r.map(|_| ())).boxed().shared())
            }
            State::Delivery(_) => None,
        };
        *state = State::Recorded { commit: commit.clone() };
        async move {
            match commit {
                Some(commit) => commit.await,
                None => Ok(()),
            }
        }
        .boxed()
    }

    /// Applies the job's final transition: to the store if the job is recorded, else by writing
    /// the whole job in its final state in one op. Resolves to the job as committed, or `None`
    /// if the transition did not apply (e.g. the job was cancelled meanwhile).
    pub fn finish(
        &self,
        job_id: &str,
        t: Transition,
    ) -> impl Future<Output = Result<Option<JobRecord>, StoreError>> + Send + 'static {
        let mut state = self.lock();
        match std::mem::replace(&mut *state, State::Recorded { commit: None }) {
            State::Recorded { commit } => {
                *state = State::Recorded { commit };
                self.store.transition_job(job_id, t).map(|r| r.map(|done| done.map(|(job, _)| job))).boxed()
            }
            State::Delivery(held) => {
                *state = State::Delivery(held);
                futures::future::ready(Ok(None)).boxed()
            }
            State::Held(held) if !t.from.contains(&held.job.status) => {
                *state = State::Held(held);
                futures::future::ready(Ok(None)).boxed()
            }
            State::Held(held) => {
                let Held { mut job, events, audit } = *held;
                job.status = t.to;
                job.started_at = t.started_at.or(job.started_at);
                job.finished_at = t.finished_at.or(job.finished_at);
                job.output = t.output.or(job.output);
                job.error = t.error.or(job.error);
                job.attempt = t.attempt.unwrap_or(job.attempt);
                let insert = self.store.insert_job_with(job, events, audit).boxed().shared();
                *state = State::Recorded { commit: Some(insert.clone().map(|r| r.map(|_| ())).boxed().shared()) };
                insert.map(|r| r.map(|outcome| Some(outcome.job().clone()))).boxed()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::{Decision, JobStatus};

    fn running_job(id: &str) -> JobRecord {
        JobRecord {
            id: id.to_owned(),
            principal: "local".into(),
            agent: "echo".into(),
            agent_name: "echo".into(),
            agent_version: "0.1.0".into(),
            input: json!({"n": 1}),
            lease: json!({}),
            status: JobStatus::Running,
            output: None,
            error: None,
            idempotency_key: None,
            request_hash: None,
            parent_id: None,
            depth: 0,
            attempt: 1,
            created_at: 1_000,
            started_at: Some(1_001),
            finished_at: None,
            trace_parent: None,
        }
    }

    fn allow(job_id: &str, target: &str) -> AuditRecord {
        AuditRecord {
            id: None,
            job_id: job_id.to_owned(),
            principal: "local".into(),
            scope: "log".into(),
            target: target.into(),
            decision: Decision::Allow,
            reason: None,
            at: 1_002,
        }
    }

    fn completed() -> Transition {
        Transition::new(&[JobStatus::Running], JobStatus::Completed, 1_005).finished_at(1_005).output(json!("done"))
    }

    async fn kinds(store: &Store, id: &str) -> Vec<(u64, String, Value)> {
        let events = store.events_after(id, 0, 100).await.unwrap();
        events.into_iter().map(|e| (e.seq, e.kind, e.data)).collect()
    }

    #[tokio::test]
    async fn a_held_job_touches_the_store_only_when_it_finishes_and_then_all_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = crate::store::new_job_id();
        let journal = Journal::held(store.clone(), running_job(&id));
        journal.audit(allow(&id, "info"));
        journal.emit(&id, "log", json!({"message": "hi"}));
        // A write of another job commits, so anything this job had queued would be visible now.
        store.insert_job(JobRecord { id: "other".into(), ..running_job("other") }).await.unwrap();
        assert!(store.get_job(&id).await.unwrap().is_none(), "a held job must not be written yet");

        let job = journal.finish(&id, completed()).await.unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Completed);
        assert_eq!(store.get_job(&id).await.unwrap(), Some(job));
        let events = kinds(&store, &id).await;
        let seqs: Vec<u64> = events.iter().map(|e| e.0).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        let states: Vec<&str> = events.iter().map(|e| e.2["status"].as_str().unwrap_or(e.1.as_str())).collect();
        assert_eq!(states, ["queued", "running", "log", "completed"]);
        assert_eq!(events[3].2["output"], json!("done"));
        assert_eq!(store.audit_for_job(&id).await.unwrap().len(), 1);
        assert!(!journal.is_held());
    }

    #[tokio::test]
    async fn recording_a_held_job_commits_it_and_later_writes_go_straight_to_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = crate::store::new_job_id();
        let journal = Journal::held(store.clone(), running_job(&id));
        journal.emit(&id, "progress", json!({"done": 1}));

        journal.record_now().await.unwrap();
        let stored = store.get_job(&id).await.unwrap().unwrap();
        assert_eq!(stored.status, JobStatus::Running);
        assert_eq!(kinds(&store, &id).await.len(), 3, "queued, running, progress");
        // Recording again is a no-op; writes from now on are appended in order.
        journal.record_now().await.unwrap();
        journal.emit(&id, "log", json!({"message": "after"}));
        let job = journal.finish(&id, completed()).await.unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Completed);
        let events = kinds(&store, &id).await;
        let kinds: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
        assert_eq!(kinds, ["state", "state", "progress", "log", "state"]);
        assert_eq!(events.iter().map(|e| e.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn a_transition_that_does_not_apply_leaves_a_held_job_held() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = crate::store::new_job_id();
        let journal = Journal::held(store.clone(), running_job(&id));
        let from_queued = Transition::new(&[JobStatus::Queued], JobStatus::Cancelled, 1_002);
        assert_eq!(journal.finish(&id, from_queued).await.unwrap(), None);
        assert!(journal.is_held());
        assert!(store.get_job(&id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_recorded_journal_writes_through_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = crate::store::new_job_id();
        store.insert_job(running_job(&id)).await.unwrap();
        let journal = Journal::recorded(store.clone());
        journal.emit(&id, "log", json!({"message": "now"}));
        journal.audit(allow(&id, "info"));
        journal.record_now().await.unwrap();
        // The emit was queued before this read's barrier write, so it has committed.
        store.insert_job(JobRecord { id: "barrier".into(), ..running_job("barrier") }).await.unwrap();
        assert_eq!(kinds(&store, &id).await.len(), 3, "queued, running, log");
        assert_eq!(store.audit_for_job(&id).await.unwrap().len(), 1);
    }
}

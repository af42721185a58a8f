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
        }
    }

    /// Records a lease decision in the audit trail.
    pub fn audit(&self, record: AuditRecord) {
        let mut state = self.lock();
        match &mut *state {
            State::Held(held) => held.audit.push(record),
            State::Recorded { .. } => drop(self.store.record_audit(record)),
        }
    }

    /// Writes the job (as it is now, with everything held) if it is not written yet, and
    /// resolves once its row is durable. Cheap once the job is recorded.
    pub fn record_now(&self) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let mut state = self.lock();
        let commit = match std::mem::replace(&mut *state, State::Recorded { commit: None }) {
            State::Recorded { commit } => commit,
            State::Held(held) => {
                let Held { job, events, audit } = *held;
                Some(self.store.insert_job_with(job, events, audit).map(|r| r.map(|_| ())).boxed().shared())
            }
        };
        *state = State::Recorded { commit: commit.clone() };
        async move {
            match commit {
                Some(commit) => commit.await,
                None => Ok(()),
            }
        }
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

//! The single writer thread and its group commit.
//!
//! Why one thread: SQLite allows one writer at a time anyway, and a thread that owns the write
//! connection can batch. It blocks for the first queued op, drains whatever else is queued (up to
//! [`MAX_BATCH`]), runs the batch in one `BEGIN IMMEDIATE … COMMIT` with each op inside its own
//! `SAVEPOINT`, and only then replies. One fsync per batch instead of per row is what makes
//! "ack only after commit" affordable (~100k rows/s vs ~6.5k with a commit per row).
//!
//! Invariants this file must keep:
//! - a reply carrying `Ok` is sent only after `COMMIT` returned `Ok`;
//! - a failing op rolls back to its savepoint, so it never takes its neighbours with it; if the
//!   whole transaction is lost (SQLite rolled it back, or `COMMIT` failed) every op of the batch
//!   gets the error;
//! - the thread never panics and keeps serving after errors (e.g. disk full);
//! - it exits once every sender is dropped and the queue is drained.
//!
//! It also owns the per-job next-seq cache for events (see `events.rs`): seqs are assigned
//! here, in commit order, which is what makes them gapless for readers.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use super::StoreError;
use super::commits::Commits;

/// Most ops committed in one transaction. Bounds the latency one batch adds to the first op.
pub const MAX_BATCH: usize = 512;

/// Next-seq cache entries kept across batches before the cache is reset.
const SEQ_CACHE_MAX: usize = 4096;

pub(super) type BoxedOp = Box<dyn WriteOp>;

/// What an op sees while it runs: the open transaction and the writer's bookkeeping.
#[derive(Debug)]
pub(crate) struct WriteCtx<'a> {
    tx: &'a Transaction<'a>,
    seqs: &'a mut HashMap<String, u64>,
    /// Jobs that got events from this op (notified after commit; seq-cache invalidated if the
    /// op fails).
    touched: Vec<String>,
    /// Jobs this op moved to a terminal status (their seq-cache entry is evicted after commit).
    terminal: Vec<String>,
    /// Records of the events this op wrote for watched jobs (handed to their followers after
    /// commit; dropped if the op fails).
    events: Vec<super::EventRecord>,
    commits: &'a Commits,
    #[cfg_attr(not(test), allow(dead_code))]
    batch: u64,
    dir: &'a Path,
}

impl<'a> WriteCtx<'a> {
    pub(crate) fn tx(&self) -> &'a Transaction<'a> {
        self.tx
    }

    /// Number of the batch (transaction) this op runs in; ops with the same number commit or
    /// fail together. Used by tests to check batching.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn batch(&self) -> u64 {
        self.batch
    }

    /// Claims the next event seq for `job_id` (1 for a job's first event). Loads `max(seq)` on
    /// first use; fails with [`StoreError::UnknownJob`] if there is no such job.
    pub(super) fn next_seq(&mut self, job_id: &str) -> Result<u64, StoreError> {
        self.touched.push(job_id.to_owned());
        let next = match self.seqs.get(job_id) {
            Some(next) => *next,
            None => {
                let max: Option<Option<i64>> = self
                    .tx
                    .prepare_cached("SELECT (SELECT MAX(seq) FROM events WHERE job_id = ?1) FROM jobs WHERE id = ?1")?
                    .query_row([job_id], |r| r.get(0))
                    .optional()?;
                let Some(max) = max else {
                    return Err(StoreError::UnknownJob(job_id.to_owned()));
                };
                u64::try_from(max.unwrap_or(0)).unwrap_or(0) + 1
            }
        };
        self.seqs.insert(job_id.to_owned(), next + 1);
        Ok(next)
    }

    /// Keeps the record of an event just written, if its job is followed (see `commits`).
    pub(super) fn note_event(
        &mut self,
        job_id: &str,
        seq: u64,
        kind: &str,
        text_len: usize,
        at: i64,
        data: impl FnOnce() -> serde_json::Value,
    ) {
        if text_len <= super::commits::RECENT_BYTES && self.commits.is_watched(job_id) {
            let record =
                super::EventRecord { job_id: job_id.to_owned(), seq, kind: kind.to_owned(), data: data(), at };
            self.events.push(record);
        }
    }

    /// Starts the seq of a job inserted by this op at 1, without a lookup.
    pub(super) fn new_job(&mut self, job_id: &str) {
        self.touched.push(job_id.to_owned());
        self.seqs.insert(job_id.to_owned(), 1);
    }

    /// Records that `job_id` reached a terminal status in this op.
    pub(super) fn job_finished(&mut self, job_id: &str) {
        self.terminal.push(job_id.to_owned());
    }
}

/// A queued write: run once inside the batch's transaction, then completed with the batch's
/// commit outcome (or completed without running if the batch could not start).
pub(super) trait WriteOp: Send {
    /// Runs the op; returns a copy of its error if it failed (its savepoint is then rolled back).
    fn run(&mut self, ctx: &mut WriteCtx<'_>) -> Option<StoreError>;
    /// Sends the reply. `commit` is the batch's outcome; an op's own error wins over it.
    fn complete(self: Box<Self>, commit: Result<(), &StoreError>);
}

struct Op<T, F> {
    f: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

pub(super) fn op<T, F>(f: F, reply: oneshot::Sender<Result<T, StoreError>>) -> BoxedOp
where
    T: Send + 'static,
    F: FnOnce(&mut WriteCtx<'_>) -> Result<T, StoreError> + Send + 'static,
{
    Box::new(Op { f: Some(f), result: None, reply })
}

impl<T, F> WriteOp for Op<T, F>
where
    T: Send,
    F: FnOnce(&mut WriteCtx<'_>) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, ctx: &mut WriteCtx<'_>) -> Option<StoreError> {
        let f = self.f.take()?;
        let dir = ctx.dir;
        let result = f(ctx).map_err(|e| e.in_dir(dir));
        let failed = result.as_ref().err().cloned();
        self.result = Some(result);
        failed
    }

    fn complete(self: Box<Self>, commit: Result<(), &StoreError>) {
        let out = match (self.result, commit) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(v)), Ok(())) => Ok(v),
            (_, Err(e)) => Err(e.clone()),
            (None, Ok(())) => Err(StoreError::Task("write op completed without running".into())),
        };
        // The caller may have dropped the future (fire-and-forget); that is fine.
        let _ = self.reply.send(out);
    }
}

/// Runs a statement without bindings from the connection's statement cache (the per-op
/// savepoint statements run for every op; parsing them each time showed in profiles).
fn run_cached(tx: &Transaction<'_>, sql: &str) -> Result<(), rusqlite::Error> {
    tx.prepare_cached(sql)?.execute([]).map(|_| ())
}

struct Writer {
    conn: Connection,
    dir: PathBuf,
    commits: Arc<Commits>,
    seqs: HashMap<String, u64>,
    batches: u64,
}

pub(super) fn spawn(
    conn: Connection,
    rx: Receiver<BoxedOp>,
    dir: PathBuf,
    commits: Arc<Commits>,
) -> Result<JoinHandle<()>, StoreError> {
    let mut writer = Writer { conn, dir: dir.clone(), commits, seqs: HashMap::new(), batches: 0 };
    std::thread::Builder::new()
        .name("corral-store-writer".into())
        .spawn(move || writer.serve(&rx))
        .map_err(|e| StoreError::DataDir { path: dir, source: std::sync::Arc::new(e) })
}

impl Writer {
    fn serve(&mut self, rx: &Receiver<BoxedOp>) {
        // `recv` fails only once every sender is gone and the queue is empty.
        while let Ok(first) = rx.recv() {
            let mut batch = Vec::with_capacity(16);
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.run_batch(batch);
        }
        tracing::debug!(dir = %self.dir.display(), "store writer stopped");
    }

    fn run_batch(&mut self, ops: Vec<BoxedOp>) {
        let started = std::time::Instant::now();
        let op_count = ops.len();
        self.batches += 1;
        let batch_no = self.batches;
        let dir = self.dir.clone();
        let tx = match self.conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                let err = StoreError::from(e).in_dir(&dir);
                tracing::error!(error = %err, "store: cannot begin transaction");
                for op in ops {
                    op.complete(Err(&err));
                }
                return;
            }
        };

        let mut ran: Vec<BoxedOp> = Vec::with_capacity(ops.len());
        let mut touched: HashSet<String> = HashSet::new();
        let mut terminal: Vec<String> = Vec::new();
        let mut events: Vec<super::EventRecord> = Vec::new();
        let mut broken: Option<StoreError> = None;
        let mut pending = ops.into_iter();

        for mut op in pending.by_ref() {
            if let Err(e) = run_cached(&tx, "SAVEPOINT op") {
                broken = Some(StoreError::from(e).in_dir(&dir));
                ran.push(op);
                break;
            }
            let mut ctx = WriteCtx {
                tx: &tx,
                seqs: &mut self.seqs,
                touched: Vec::new(),
                terminal: Vec::new(),
                events: Vec::new(),
                commits: &self.commits,
                batch: batch_no,
                dir: &dir,
            };
            let failed = op.run(&mut ctx);
            let (op_touched, op_terminal, op_events) = (ctx.touched, ctx.terminal, ctx.events);
            ran.push(op);
            match failed {
                None => {
                    if let Err(e) = run_cached(&tx, "RELEASE op") {
                        broken = Some(StoreError::from(e).in_dir(&dir));
                        break;
                    }
                    touched.extend(op_touched);
                    terminal.extend(op_terminal);
                    events.extend(op_events);
                }
                Some(op_err) => {
                    // Seqs this op claimed are void; reload them from the (rolled back) state.
                    for job in &op_touched {
                        self.seqs.remove(job);
                    }
                    if tx.is_autocommit() {
                        // SQLite itself rolled back the whole transaction (e.g. disk full).
                        broken = Some(op_err);
                        break;
                    }
                    if let Err(e) = run_cached(&tx, "ROLLBACK TO op").and_then(|()| run_cached(&tx, "RELEASE op")) {
                        broken = Some(StoreError::from(e).in_dir(&dir));
                        break;
                    }
                }
            }
        }

        let outcome = match broken {
            Some(err) => {
                // `tx` is dropped (rolled back) below; nothing of this batch is durable.
                drop(tx);
                Err(err)
            }
            None => tx.commit().map_err(|e| StoreError::from(e).in_dir(&dir)),
        };

        match &outcome {
            Ok(()) => {
                if let Some(m) = crate::metrics::recording() {
                    m.store_commit(op_count, started.elapsed());
                }
                for job in &terminal {
                    self.seqs.remove(job);
                }
                if self.seqs.len() > SEQ_CACHE_MAX {
                    self.seqs.clear();
                }
            }
            Err(err) => {
                tracing::error!(error = %err, ops = ran.len(), "store: batch failed, rolled back");
                self.seqs.clear();
            }
        }
        // Notify before replying, so a caller that subscribes after its ack never receives a
        // stale notification for its own, already committed, batch.
        if outcome.is_ok() {
            self.commits.committed(&touched, events);
        }
        let commit = outcome.as_ref().map(|_| ());
        for op in ran {
            op.complete(commit);
        }
        for op in pending {
            // Not run because the transaction broke before reaching them.
            op.complete(commit);
        }
    }
}

//! Durable host state in one SQLite database (`<data dir>/corral.db`, WAL mode).
//!
//! Why it is shaped like this:
//!
//! - **Nothing is acknowledged before it is committed.** Every write goes to a single writer
//!   thread that owns the only write connection (`synchronous=FULL`), and a write's future
//!   resolves only after the `COMMIT` that contains it returned. A client that got a 2xx / ACK
//!   can rely on the row surviving a crash or `kill -9`.
//! - **Group commit keeps that cheap.** The writer takes whatever is queued (up to
//!   [`MAX_BATCH`] ops), runs it in one transaction with one savepoint per op, and pays one
//!   fsync for the lot. One failing op rolls back only its own savepoint.
//! - **Readers never block the writer.** Reads run on a small pool of read-only connections
//!   inside `spawn_blocking`; WAL lets them read the last committed state while the writer works.
//! - **Per-job event `seq` is assigned by the writer**, so it is gapless and commits in order:
//!   a reader never sees seq n+1 before seq n. See [`events`].
//!
//! Writes are *queued when the method is called*, not when its future is first polled: two calls
//! made one after the other are applied in that order, and a caller that does not need the
//! durable ack (e.g. a progress event) may drop the future and the write still happens. The
//! queue is bounded ([`WRITE_QUEUE`]): when it is full the calling thread waits for the writer,
//! so overload slows producers down instead of piling writes up in memory.
//!
//! This module must never panic on bad input or a full disk: every failure is a [`StoreError`]
//! that says what to do, and the writer thread keeps serving after one.

mod agents;
mod audit;
mod commits;
mod events;
mod followed;
mod jobs;
mod kv;
mod messages;
mod retention;
mod schema;
mod swarm;
mod writer;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Semaphore, oneshot};

pub use agents::AgentRecord;
pub use audit::{AuditRecord, Decision};
pub use commits::JobCommits;
pub use events::{EventRecord, NewEvent};
pub use followed::FollowedJob;
pub use jobs::{InsertOutcome, JobFilter, JobRecord, JobStatus, Transition};
pub use kv::{HeldKv, KvOp, KvOwner, KvQuota, KvUsage, OwnerKind};
pub use messages::{
    ExternalAgentRecord, FinishDelivery, Inserted, MessageFilter, MessageRecord, MessageState, MessageTransition,
    RecipientKind, StageRecord,
};
pub use retention::PruneRound;
pub use swarm::{
    Admission, InboundRecord, MemberRecord, MembershipChange, NewOutbox, OutboxFailure, OutboxRecord, SwarmRecord,
};
pub use writer::MAX_BATCH;
pub(crate) use writer::WriteCtx;

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "corral.db";

/// How long a connection waits for a lock held by another connection before failing with
/// [`StoreError::Busy`]. Only a second process on the same data dir (or a checkpoint) contends.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Read connections kept open at most; more readers than this wait for a free one.
const MAX_READERS: usize = 4;

/// Ops the writer's queue holds at most. A producer that finds it full waits (its thread
/// blocks) until the writer has taken a batch: a flood of writes slows its producers instead
/// of growing memory. Under normal load the writer drains it every commit (≤ [`MAX_BATCH`] ops).
pub const WRITE_QUEUE: usize = 8 * MAX_BATCH;

/// Everything that can go wrong in the store. Cloneable, because one failed `COMMIT` is the
/// answer to every op of its batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create or open data dir {path}: {source} — check the path and its permissions")]
    DataDir {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("database write failed: disk full (data dir {dir}) — free space and retry")]
    DiskFull { dir: PathBuf },
    #[error("database in data dir {dir} is locked by another connection — run only one corral per data dir")]
    Busy { dir: PathBuf },
    #[error("database in data dir {dir} is read-only — check file permissions and the filesystem")]
    ReadOnly { dir: PathBuf },
    #[error(
        "database in data dir {dir} is corrupt or not a corral database: {detail} — restore it from a backup or move it aside"
    )]
    Corrupt { dir: PathBuf, detail: String },
    #[error(
        "database {path} has schema version {found}, newer than this corral knows ({known}) — upgrade corral or use another data dir"
    )]
    SchemaTooNew { path: PathBuf, found: i64, known: i64 },
    #[error("database error: {0}")]
    Sqlite(#[source] Arc<rusqlite::Error>),
    #[error("stored {what} is not valid JSON: {source}")]
    Json {
        what: String,
        #[source]
        source: Arc<serde_json::Error>,
    },
    #[error("stored job {job_id} has unknown status '{status}' — was it written by a newer corral?")]
    UnknownStatus { job_id: String, status: String },
    #[error("no job with id {0}")]
    UnknownJob(String),
    #[error(
        "kv value {namespace}/{key} is not a decimal integer — cannot increment it; set it to an integer or delete it first"
    )]
    KvNotInteger { namespace: String, key: String },
    #[error(
        "kv quota exceeded: {kind} '{owner}' keeps {used} {what} of its {limit} — delete keys it no longer needs, or ask the operator to raise kv_quota"
    )]
    KvQuota { kind: &'static str, owner: String, what: &'static str, used: u64, limit: u64 },
    #[error("kv increment of {namespace}/{key} by {delta} overflows a 64-bit integer")]
    KvOverflow { namespace: String, key: String, delta: i64 },
    #[error("the store is closed — no more writes are accepted (is corral shutting down?)")]
    Closed,
    #[error("store background task failed: {0}")]
    Task(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(Arc::new(e))
    }
}

impl StoreError {
    /// Turns a raw SQLite failure into the variant that tells the operator what to do. Applied
    /// once where an error leaves the store (op replies, commit, reads), so inner code can use `?`.
    fn in_dir(self, dir: &Path) -> StoreError {
        use rusqlite::ErrorCode as C;
        let StoreError::Sqlite(e) = &self else {
            return self;
        };
        let dir = dir.to_path_buf();
        match e.sqlite_error_code() {
            Some(C::DiskFull) => StoreError::DiskFull { dir },
            Some(C::DatabaseBusy | C::DatabaseLocked) => StoreError::Busy { dir },
            Some(C::ReadOnly) => StoreError::ReadOnly { dir },
            Some(C::DatabaseCorrupt | C::NotADatabase) => StoreError::Corrupt { dir, detail: e.to_string() },
            _ => self,
        }
    }

    fn json(what: impl Into<String>, source: serde_json::Error) -> StoreError {
        StoreError::Json { what: what.into(), source: Arc::new(source) }
    }
}

/// Current time as unix milliseconds (the unit of every timestamp in the store).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A fresh job id: UUIDv7, so ids sort in creation order (listing relies on it).
pub fn new_job_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Handle to the store. Cheap to clone; all clones share the writer thread and reader pool.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    db_path: PathBuf,
    /// `None` after [`Store::close`]; the writer thread ends when every sender is gone.
    ops: Mutex<Option<std::sync::mpsc::SyncSender<writer::BoxedOp>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
    read_permits: Arc<Semaphore>,
    commits: Arc<commits::Commits>,
}

impl Store {
    /// Opens (creating if needed) `data_dir/corral.db`, applies pending migrations and starts
    /// the writer thread. Blocking: call it at startup, before serving.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::DataDir { path: data_dir.to_path_buf(), source: Arc::new(e) })?;
        let db_path = data_dir.join(DB_FILE);
        let conn = open_writer(&db_path).map_err(|e| e.in_dir(data_dir))?;
        let commits = commits::Commits::new();
        let (tx, rx) = std::sync::mpsc::sync_channel(WRITE_QUEUE);
        let thread = writer::spawn(conn, rx, data_dir.to_path_buf(), Arc::clone(&commits))?;
        tracing::debug!(db = %db_path.display(), "store opened");
        Ok(Store {
            inner: Arc::new(Inner {
                dir: data_dir.to_path_buf(),
                db_path,
                ops: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
                readers: Mutex::new(Vec::new()),
                read_permits: Arc::new(Semaphore::new(MAX_READERS)),
                commits,
            }),
        })
    }

    /// The data dir this store lives in.
    pub fn data_dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Stops accepting writes (later writes on any clone fail with [`StoreError::Closed`]),
    /// lets the writer drain and commit everything already queued, and waits for it to exit.
    pub async fn close(self) -> Result<(), StoreError> {
        let sender = self.inner.ops.lock().unwrap_or_else(PoisonError::into_inner).take();
        drop(sender);
        let handle = self.inner.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(handle) = handle {
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?
                .map_err(|_| StoreError::Task("store writer thread panicked".into()))?;
        }
        Ok(())
    }

    /// Bytes of the database and its write-ahead log on disk.
    pub fn size_on_disk(&self) -> u64 {
        let size = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
        let wal = self.inner.db_path.with_extension("db-wal");
        size(&self.inner.db_path) + size(&wal)
    }

    /// Whether the writer is alive and commits a (write) transaction: what `/readyz` asks.
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        self.write(|ctx| {
            ctx.tx().execute_batch("PRAGMA user_version")?;
            Ok(())
        })
        .await
    }

    /// Commits of `job`'s events from now on, waking only for that job (what a follower of one
    /// job wants; see `jobs::follow`).
    pub fn watch_job(&self, job: &str) -> JobCommits {
        self.inner.commits.watch(job)
    }

    /// Queues `f` for the writer thread and returns a future of its result, resolved only after
    /// the transaction containing it committed. `f` runs inside its own savepoint: if it returns
    /// `Err`, everything it wrote is rolled back and its neighbours in the batch are unaffected.
    /// The op runs even if the returned future is dropped.
    pub(crate) fn write<T, F>(&self, f: F) -> impl Future<Output = Result<T, StoreError>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let op = writer::op(f, reply);
        let queued = {
            let guard = self.inner.ops.lock().unwrap_or_else(PoisonError::into_inner);
            match guard.as_ref() {
                Some(sender) => sender.send(op).is_ok(),
                None => false,
            }
        };
        async move {
            if !queued {
                return Err(StoreError::Closed);
            }
            rx.await.unwrap_or(Err(StoreError::Closed))
        }
    }

    /// Runs `f` on a pooled read-only connection on the blocking thread pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = Arc::clone(&self.inner.read_permits).acquire_owned().await.map_err(|_| StoreError::Closed)?;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = inner.checkout().map_err(|e| e.in_dir(&inner.dir))?;
            let result = f(&conn).map_err(|e| e.in_dir(&inner.dir));
            inner.checkin(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

impl Inner {
    fn checkout(&self) -> Result<Connection, StoreError> {
        let pooled = self.readers.lock().unwrap_or_else(PoisonError::into_inner).pop();
        match pooled {
            Some(conn) => Ok(conn),
            None => open_reader(&self.db_path),
        }
    }

    fn checkin(&self, conn: Connection) {
        let mut pool = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < MAX_READERS {
            pool.push(conn);
        }
    }
}

fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    incremental_vacuum(&conn, path)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt {
            dir: path.parent().unwrap_or(path).to_path_buf(),
            detail: format!("cannot switch journal mode to WAL (got '{mode}')"),
        });
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    // After a checkpoint the WAL file is cut back to this size instead of staying at its peak.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    schema::migrate(&mut conn, path)?;
    Ok(conn)
}

/// Puts the database in `auto_vacuum = INCREMENTAL` (see `store::retention`). A new database
/// takes the setting before its first table; one made by an older corral is rebuilt once by
/// `VACUUM`, which takes a while for a large file and is logged.
fn incremental_vacuum(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    const INCREMENTAL: i64 = 2;
    let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    if mode == INCREMENTAL {
        return Ok(());
    }
    conn.pragma_update(None, "auto_vacuum", INCREMENTAL)?;
    let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    if mode != INCREMENTAL {
        tracing::info!(db = %path.display(), "switching the database to incremental vacuum (one-time VACUUM)");
        conn.execute_batch("VACUUM")?;
    }
    Ok(())
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

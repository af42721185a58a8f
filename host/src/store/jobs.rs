//! The `jobs` table: one row per submitted job, its lifecycle status, and its result.
//!
//! Why status changes go through [`Transition`]: a job's status is raced by the worker
//! (running → completed), a cancel request (→ cancelled) and the deadline (→ timed_out). Each
//! transition names the statuses it may start from, and the writer thread applies it only if the
//! row is currently in one of them — whichever commits first wins, the others get `None`. The
//! status change and its `state` event are written in the same transaction, so a subscriber
//! never sees one without the other.
//!
//! Idempotency: `(principal, idempotency_key)` is unique. Inserting a job whose key is taken
//! returns the existing row untouched; the caller compares `request_hash` to decide between
//! "same request, here is your job" and 409.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{AuditRecord, NewEvent, Store, StoreError, audit, events};

/// Lifecycle status of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
    TimedOut,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
        JobStatus::TimedOut,
    ];

    /// The name stored in the database and used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::TimedOut => "timed_out",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Completed, failed, cancelled and timed out jobs never change again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl JobRecord {
    /// The message of the job's error, or a placeholder when it has none.
    pub fn error_message(&self) -> &str {
        self.error.as_ref().and_then(|e| e.get("message")).and_then(Value::as_str).unwrap_or("no error message")
    }
}

/// One row of `jobs`. JSON columns are held as [`Value`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub principal: String,
    /// The agent reference as requested (e.g. `fetch` or `fetch@1.2.0`).
    pub agent: String,
    /// The agent it resolved to.
    pub agent_name: String,
    pub agent_version: String,
    pub input: Value,
    /// The effective lease the job runs under.
    pub lease: Value,
    pub status: JobStatus,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub idempotency_key: Option<String>,
    pub request_hash: Option<String>,
    pub parent_id: Option<String>,
    pub depth: u32,
    pub attempt: u32,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// The W3C trace context the job's span continues (the request's, or the parent's
    /// delegation call's); see `telemetry`.
    pub trace_parent: Option<crate::telemetry::TraceParent>,
}

/// Result of [`Store::insert_job`].
#[derive(Debug, Clone, PartialEq)]
pub enum InsertOutcome {
    /// The job was inserted (together with its first `state` event).
    Created(JobRecord),
    /// A job with the same `(principal, idempotency_key)` already exists; it is returned as is.
    Existing(JobRecord),
}

impl InsertOutcome {
    pub fn job(&self) -> &JobRecord {
        match self {
            InsertOutcome::Created(j) | InsertOutcome::Existing(j) => j,
        }
    }
}

/// Filter for [`Store::list_jobs`]. Results are newest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobFilter {
    pub principal: String,
    /// Jobs in any of these states (empty: any state).
    pub statuses: Vec<JobStatus>,
    /// Matches `agent_name`.
    pub agent: Option<String>,
    /// Created strictly after / before (Unix ms).
    pub created_after: Option<i64>,
    pub created_before: Option<i64>,
    /// Page size, clamped to `1..=1000`.
    pub limit: u32,
    /// The `next_cursor` of the previous page (the last id it returned).
    pub cursor: Option<String>,
}

/// A conditional status change; see the module doc. Fields left `None` keep their value.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// Applies only if the job's current status is one of these.
    pub from: Vec<JobStatus>,
    pub to: JobStatus,
    /// Timestamp of the `state` event.
    pub at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub attempt: Option<u32>,
    /// Why the change happened, recorded in the `state` event only (e.g. recovery).
    pub reason: Option<String>,
}

impl Transition {
    pub fn new(from: &[JobStatus], to: JobStatus, at: i64) -> Transition {
        Transition {
            from: from.to_vec(),
            to,
            at,
            started_at: None,
            finished_at: None,
            output: None,
            error: None,
            attempt: None,
            reason: None,
        }
    }
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
    pub fn started_at(mut self, at: i64) -> Self {
        self.started_at = Some(at);
        self
    }
    pub fn finished_at(mut self, at: i64) -> Self {
        self.finished_at = Some(at);
        self
    }
    pub fn output(mut self, output: Value) -> Self {
        self.output = Some(output);
        self
    }
    pub fn error(mut self, error: Value) -> Self {
        self.error = Some(error);
        self
    }
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = Some(attempt);
        self
    }
}

const JOB_COLUMNS: &str = "id, principal, agent, agent_name, agent_version, input, lease, status, \
     output, error, idempotency_key, request_hash, parent_id, depth, attempt, created_at, \
     started_at, finished_at, trace_parent";

fn parse_json(text: &str, what: &str, id: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::json(format!("{what} of job {id}"), e))
}

fn to_text(v: &Value) -> String {
    // Serializing a `Value` cannot fail (its map keys are strings).
    v.to_string()
}

fn job_from_row(row: &Row<'_>) -> Result<JobRecord, StoreError> {
    let id: String = row.get(0)?;
    let status: String = row.get(7)?;
    let status = JobStatus::parse(&status).ok_or_else(|| StoreError::UnknownStatus { job_id: id.clone(), status })?;
    let opt_json = |idx: usize, what: &str| -> Result<Option<Value>, StoreError> {
        let text: Option<String> = row.get(idx)?;
        text.map(|t| parse_json(&t, what, &id)).transpose()
    };
    let input: String = row.get(5)?;
    let lease: String = row.get(6)?;
    Ok(JobRecord {
        principal: row.get(1)?,
        agent: row.get(2)?,
        agent_name: row.get(3)?,
        agent_version: row.get(4)?,
        input: parse_json(&input, "input", &id)?,
        lease: parse_json(&lease, "lease", &id)?,
        status,
        output: opt_json(8, "output")?,
        error: opt_json(9, "error")?,
        idempotency_key: row.get(10)?,
        request_hash: row.get(11)?,
        parent_id: row.get(12)?,
        depth: row.get(13)?,
        attempt: row.get(14)?,
        created_at: row.get(15)?,
        started_at: row.get(16)?,
        finished_at: row.get(17)?,
        trace_parent: row.get::<_, Option<String>>(18)?.as_deref().and_then(crate::telemetry::TraceParent::parse),
        id,
    })
}

fn query_jobs(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<JobRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(job_from_row(row)?);
    }
    Ok(out)
}

fn get_job(conn: &Connection, id: &str) -> Result<Option<JobRecord>, StoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
    Ok(query_jobs(conn, &sql, [id])?.into_iter().next())
}

fn find_by_key(conn: &Connection, principal: &str, key: &str) -> Result<Option<JobRecord>, StoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE principal = ?1 AND idempotency_key = ?2");
    Ok(query_jobs(conn, &sql, [principal, key])?.into_iter().next())
}

/// A job row's JSON and text columns, serialized.
struct RowTexts {
    input: String,
    lease: String,
    output: Option<String>,
    error: Option<String>,
    trace_parent: Option<String>,
}

impl RowTexts {
    fn of(job: &JobRecord) -> RowTexts {
        RowTexts {
            input: to_text(&job.input),
            lease: to_text(&job.lease),
            output: job.output.as_ref().map(to_text),
            error: job.error.as_ref().map(to_text),
            trace_parent: job.trace_parent.map(|t| t.to_string()),
        }
    }
}

/// The events of a job inserted as it is now: `state queued` (naming its trace, for whoever
/// reads only the stream), `state running` if it started, the `events` it emitted meanwhile,
/// and its terminal `state` if it ended.
fn state_stream(job: &JobRecord, events: Vec<NewEvent>) -> Vec<events::Serialized> {
    let mut stream = Vec::with_capacity(events.len() + 3);
    let mut queued = state_event(JobStatus::Queued, None, None);
    if let (Some(trace), Some(map)) = (&job.trace_parent, queued.as_object_mut()) {
        map.insert("trace_id".into(), Value::String(trace.trace_id()));
    }
    stream.push(events::Serialized::new("state", queued, job.created_at));
    if let (Some(started), true) = (job.started_at, job.status != JobStatus::Queued) {
        stream.push(events::Serialized::new("state", state_event(JobStatus::Running, None, None), started));
    }
    stream.extend(events.into_iter().map(|e| events::Serialized::new(&e.kind, e.data, e.at)));
    if job.status.is_terminal() {
        let data = state_event(job.status, job.output.as_ref(), job.error.as_ref());
        stream.push(events::Serialized::new("state", data, job.finished_at.unwrap_or(job.created_at)));
    }
    stream
}

fn state_event(status: JobStatus, output: Option<&Value>, error: Option<&Value>) -> Value {
    let mut data = json!({ "status": status.as_str() });
    if let Some(map) = data.as_object_mut() {
        if let Some(o) = output {
            map.insert("output".into(), o.clone());
        }
        if let Some(e) = error {
            map.insert("error".into(), e.clone());
        }
    }
    data
}

impl Store {
    /// Inserts a job and its first `state` event in one transaction, or returns the existing job
    /// with the same `(principal, idempotency_key)` untouched.
    pub fn insert_job(
        &self,
        job: JobRecord,
    ) -> impl Future<Output = Result<InsertOutcome, StoreError>> + Send + 'static {
        self.insert_job_with(job, Vec::new(), Vec::new())
    }

    /// Inserts a job in whatever status it has reached, with the `state` events that lead there
    /// (`queued`, then `running` if it started, then its terminal status if it ended) around the
    /// `events` it emitted meanwhile, and the `audit` rows of the decisions it got — all in one
    /// op, so one commit. This is how a job that was run before being recorded is written (see
    /// `jobs::journal`). Returns the existing job untouched on an idempotency-key match.
    pub fn insert_job_with(
        &self,
        job: JobRecord,
        events: Vec<NewEvent>,
        audit: Vec<AuditRecord>,
    ) -> impl Future<Output = Result<InsertOutcome, StoreError>> + Send + 'static {
        // Serialized here, on the caller's thread: the writer, which every write waits for,
        // only binds text.
        let texts = RowTexts::of(&job);
        let stream = state_stream(&job, events);
        self.write(move |ctx| {
            let tx = ctx.tx();
            if let Some(key) = &job.idempotency_key
                && let Some(existing) = find_by_key(tx, &job.principal, key)?
            {
                return Ok(InsertOutcome::Existing(existing));
            }
            let sql = format!(
                "INSERT INTO jobs ({JOB_COLUMNS}) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"
            );
            tx.prepare_cached(&sql)?.execute(params![
                job.id,
                job.principal,
                job.agent,
                job.agent_name,
                job.agent_version,
                texts.input,
                texts.lease,
                job.status.as_str(),
                texts.output,
                texts.error,
                job.idempotency_key,
                job.request_hash,
                job.parent_id,
                job.depth,
                job.attempt,
                job.created_at,
                job.started_at,
                job.finished_at,
                texts.trace_parent,
            ])?;
            ctx.new_job(&job.id);
            for event in stream {
                events::append_serialized(ctx, &job.id, event)?;
            }
            for record in &audit {
                audit::insert(ctx.tx(), record)?;
            }
            if job.status.is_terminal() {
                ctx.job_finished(&job.id);
            }
            Ok(InsertOutcome::Created(job))
        })
    }

    /// The job a principal submitted with an idempotency key, if any.
    pub async fn job_by_idempotency_key(&self, principal: &str, key: &str) -> Result<Option<JobRecord>, StoreError> {
        let (principal, key) = (principal.to_owned(), key.to_owned());
        self.read(move |conn| find_by_key(conn, &principal, &key)).await
    }

    pub async fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| get_job(conn, &id)).await
    }

    /// One page of a principal's jobs, newest first, and the cursor for the next page (`None`
    /// when this is the last page).
    pub async fn list_jobs(&self, filter: JobFilter) -> Result<(Vec<JobRecord>, Option<String>), StoreError> {
        self.read(move |conn| {
            let limit = filter.limit.clamp(1, 1000);
            // Status names are the enum's constants, never caller text.
            let statuses = if filter.statuses.is_empty() {
                String::new()
            } else {
                let names: Vec<String> = filter.statuses.iter().map(|s| format!("'{}'", s.as_str())).collect();
                format!("AND status IN ({}) ", names.join(", "))
            };
            let sql = format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE principal = ?1 {statuses}\
                 AND (?2 IS NULL OR agent_name = ?2) AND (?3 IS NULL OR id < ?3) \
                 AND (?4 IS NULL OR created_at > ?4) AND (?5 IS NULL OR created_at < ?5) \
                 ORDER BY id DESC LIMIT ?6"
            );
            let mut jobs = query_jobs(
                conn,
                &sql,
                params![
                    filter.principal,
                    filter.agent,
                    filter.cursor,
                    filter.created_after,
                    filter.created_before,
                    i64::from(limit) + 1,
                ],
            )?;
            let more = jobs.len() > limit as usize;
            jobs.truncate(limit as usize);
            let next = if more { jobs.last().map(|j| j.id.clone()) } else { None };
            Ok((jobs, next))
        })
        .await
    }

    /// Applies `t` if the job's status is one of `t.from`, appending its `state` event in the
    /// same transaction. Returns the updated job and the event's seq, `None` if the status did
    /// not allow it, or [`StoreError::UnknownJob`].
    pub fn transition_job(
        &self,
        id: &str,
        t: Transition,
    ) -> impl Future<Output = Result<Option<(JobRecord, u64)>, StoreError>> + Send + 'static {
        let id = id.to_owned();
        self.write(move |ctx| {
            let tx = ctx.tx();
            let current: Option<String> = tx
                .prepare_cached("SELECT status FROM jobs WHERE id = ?1")?
                .query_row([&id], |r| r.get(0))
                .optional()?;
            let Some(current) = current else {
                return Err(StoreError::UnknownJob(id));
            };
            if !t.from.iter().any(|s| s.as_str() == current) {
                return Ok(None);
            }
            tx.prepare_cached(
                "UPDATE jobs SET status = ?2, started_at = COALESCE(?3, started_at), \
                 finished_at = COALESCE(?4, finished_at), output = COALESCE(?5, output), \
                 error = COALESCE(?6, error), attempt = COALESCE(?7, attempt) WHERE id = ?1",
            )?
            .execute(params![
                id,
                t.to.as_str(),
                t.started_at,
                t.finished_at,
                t.output.as_ref().map(to_text),
                t.error.as_ref().map(to_text),
                t.attempt,
            ])?;
            let mut data = state_event(t.to, t.output.as_ref(), t.error.as_ref());
            if let (Some(reason), Some(map)) = (&t.reason, data.as_object_mut()) {
                map.insert("reason".into(), reason.clone().into());
            }
            let seq = events::append(ctx, &id, "state", &data, t.at)?;
            if t.to.is_terminal() {
                ctx.job_finished(&id);
            }
            let job = get_job(ctx.tx(), &id)?.ok_or_else(|| StoreError::UnknownJob(id.clone()))?;
            Ok(Some((job, seq)))
        })
    }

    /// Jobs that were queued or running, oldest first: what a restarting host must recover.
    pub async fn unfinished_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.read(|conn| {
            let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE status IN ('queued', 'running') ORDER BY id");
            query_jobs(conn, &sql, [])
        })
        .await
    }
}

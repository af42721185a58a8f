//! The `events` table: each job's append-only log (state changes, logs, progress, chunks).
//!
//! Why seqs are assigned in the writer thread: SSE/WS subscribers resume with "give me
//! everything after seq n". That only works if seqs are gapless per job and become visible in
//! order. Assigning `max(seq) + 1` on the caller's side would race; assigning it in the single
//! writer thread (with a per-job next-seq cache, see `writer.rs`) means seq n+1 can never commit
//! before seq n, and a rolled-back op gives its seq back.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Store, StoreError, WriteCtx, now_ms};

/// One row of `events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub job_id: String,
    /// 1-based, gapless per job.
    pub seq: u64,
    pub kind: String,
    pub data: Value,
    /// Unix milliseconds.
    pub at: i64,
}

/// An event not written yet: held by a job that is not recorded yet, written with its row.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: String,
    pub data: Value,
    /// Unix milliseconds.
    pub at: i64,
}

/// An event serialized before its op is queued: the writer thread, which every write waits
/// for, only binds the text (and hands the value to the job's followers).
#[derive(Debug)]
pub(super) struct Serialized {
    pub kind: String,
    pub data: Value,
    pub text: String,
    pub at: i64,
}

impl Serialized {
    pub(super) fn new(kind: &str, data: Value, at: i64) -> Serialized {
        let text = data.to_string();
        Serialized { kind: kind.to_owned(), data, text, at }
    }
}

/// Appends an event inside a running write op; returns its seq.
pub(super) fn append(
    ctx: &mut WriteCtx<'_>,
    job_id: &str,
    kind: &str,
    data: &Value,
    at: i64,
) -> Result<u64, StoreError> {
    let text = data.to_string();
    let seq = insert(ctx, job_id, kind, &text, at)?;
    ctx.note_event(job_id, seq, kind, text.len(), at, || data.clone());
    Ok(seq)
}

/// [`append`] of an event serialized already.
pub(super) fn append_serialized(ctx: &mut WriteCtx<'_>, job_id: &str, event: Serialized) -> Result<u64, StoreError> {
    let seq = insert(ctx, job_id, &event.kind, &event.text, event.at)?;
    let Serialized { kind, data, text, at } = event;
    ctx.note_event(job_id, seq, &kind, text.len(), at, || data);
    Ok(seq)
}

fn insert(ctx: &mut WriteCtx<'_>, job_id: &str, kind: &str, text: &str, at: i64) -> Result<u64, StoreError> {
    let seq = ctx.next_seq(job_id)?;
    ctx.tx()
        .prepare_cached("INSERT INTO events (job_id, seq, kind, data, at) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(rusqlite::params![job_id, i64::try_from(seq).unwrap_or(i64::MAX), kind, text, at])?;
    Ok(seq)
}

impl Store {
    /// Appends an event to `job_id`'s log, timestamped now. The write is queued immediately:
    /// await the future for the durable ack and the seq, or drop it (fire-and-forget) and the
    /// event is still written. Fails with [`StoreError::UnknownJob`] if the job does not exist.
    pub fn append_event(
        &self,
        job_id: &str,
        kind: &str,
        data: Value,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send + 'static {
        let (job_id, kind, at) = (job_id.to_owned(), kind.to_owned(), now_ms());
        self.write(move |ctx| append(ctx, &job_id, &kind, &data, at))
    }

    /// The seq of `job_id`'s last event (0 if it has none).
    pub async fn last_event_seq(&self, job_id: &str) -> Result<u64, StoreError> {
        let job_id = job_id.to_owned();
        self.read(move |conn| {
            let seq: Option<i64> = conn
                .prepare_cached("SELECT max(seq) FROM events WHERE job_id = ?1")?
                .query_row([&job_id], |row| row.get(0))?;
            Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
        })
        .await
    }

    /// The last event seq of each of `job_ids` (one query; a job with no events is absent).
    pub async fn last_event_seqs(
        &self,
        job_ids: Vec<String>,
    ) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        if job_ids.is_empty() {
            return Ok(std::collections::HashMap::new());
        }
        self.read(move |conn| {
            let marks = vec!["?"; job_ids.len()].join(",");
            let sql = format!("SELECT job_id, max(seq) FROM events WHERE job_id IN ({marks}) GROUP BY job_id");
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(job_ids.iter()), |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })?;
            let mut seqs = std::collections::HashMap::new();
            for row in rows {
                let (job, seq) = row?;
                seqs.insert(job, u64::try_from(seq).unwrap_or(0));
            }
            Ok(seqs)
        })
        .await
    }

    /// Up to `limit` events of `job_id` with seq > `after_seq`, in seq order.
    pub async fn events_after(&self, job_id: &str, after_seq: u64, limit: u32) -> Result<Vec<EventRecord>, StoreError> {
        let job_id = job_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, kind, data, at FROM events WHERE job_id = ?1 AND seq > ?2 \
                 ORDER BY seq LIMIT ?3",
            )?;
            let mut rows =
                stmt.query(rusqlite::params![job_id, i64::try_from(after_seq).unwrap_or(i64::MAX), limit])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let seq: i64 = row.get(0)?;
                let seq = u64::try_from(seq).unwrap_or(0);
                let data: String = row.get(2)?;
                let data = serde_json::from_str(&data)
                    .map_err(|e| StoreError::json(format!("data of event {seq} of job {job_id}"), e))?;
                out.push(EventRecord { job_id: job_id.clone(), seq, kind: row.get(1)?, data, at: row.get(3)? });
            }
            Ok(out)
        })
        .await
    }
}

//! The `messages` and `message_stages` tables: routed messages and their ACK history.
//!
//! One row per message *copy*: a topic publish writes one row per subscriber, each with its own
//! lifecycle. `stage` is the current stage; every change appends a `message_stages` row with its
//! time, attempt and error code, so the full history survives restarts. Changes are conditional
//! ([`MessageTransition`]): a stage change names the stages and the attempt it applies to, and
//! the writer applies it only if the row still matches — a late ACK for an attempt that already
//! timed out changes nothing, whichever commits first wins.
//!
//! Deduplication happens inside the insert op (the writer serializes ops, so check-then-insert
//! is atomic): by `(principal, producer_id, idempotency_token)` within the dedupe window, else by
//! `(principal, producer_id, sequence_number)` when the producer numbers its messages.

use rusqlite::{Connection, Row, params};
use serde::Serialize;

use super::{Store, StoreError};
use crate::messages::envelope::{AckStage, Delivery, Envelope, ErrorCode};

/// Whether a recipient is a loaded Wasm agent or an external agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecipientKind {
    Agent,
    External,
}

impl RecipientKind {
    fn as_str(self) -> &'static str {
        match self {
            RecipientKind::Agent => "agent",
            RecipientKind::External => "external",
        }
    }

    fn parse(s: &str) -> RecipientKind {
        if s == "external" { RecipientKind::External } else { RecipientKind::Agent }
    }
}

/// One row of `messages`.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageRecord {
    /// corral's id for this copy: the first attempt's `message_id`.
    pub id: String,
    /// The principal that produced it (its ceiling bounds every delivery's lease).
    pub principal: String,
    pub kind: RecipientKind,
    /// Where ACK envelopes and replies for the producer go (a consumer agent's name or an
    /// external agent's id); `None` when the producer cannot receive messages.
    pub reply_to: Option<String>,
    /// The envelope of the current attempt (its `message_id`, `retry_count`).
    pub envelope: Envelope,
    pub payload: Vec<u8>,
    pub delivery: Delivery,
    pub stage: AckStage,
    pub error_code: Option<ErrorCode>,
    pub note: Option<String>,
    /// Attempts that timed out (what `retry_attempts` bounds; restarts do not count).
    pub timeouts: u32,
    pub created_at: i64,
    pub updated_at: i64,
    /// Not to be delivered before this time (a retry's backoff).
    pub not_before: Option<i64>,
    /// TTL: FAILED with TTL_EXPIRED if still without an outcome at this time.
    pub expires_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// The parts of a message a stage change touches: what transitions return, without reading
/// (or rewriting) the envelope and payload.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageState {
    pub stage: AckStage,
    /// `message_id` and `retry_count` of the current attempt.
    pub attempt_id: String,
    pub retry_count: u32,
    pub timeouts: u32,
    pub error_code: Option<ErrorCode>,
    pub note: Option<String>,
    pub updated_at: i64,
    pub not_before: Option<i64>,
    pub finished_at: Option<i64>,
    /// Stage rows so far (the next one gets `stages + 1`).
    stages: u32,
}

impl MessageRecord {
    /// This message as it is after a stage change.
    #[must_use]
    pub fn with_state(mut self, s: &MessageState) -> MessageRecord {
        self.stage = s.stage;
        self.envelope.message_id = s.attempt_id.clone();
        self.envelope.retry_count = s.retry_count;
        self.timeouts = s.timeouts;
        self.error_code = s.error_code;
        self.note = s.note.clone();
        self.updated_at = s.updated_at;
        self.not_before = s.not_before;
        self.finished_at = s.finished_at;
        self
    }
}

/// One row of `message_stages`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StageRecord {
    pub stage: AckStage,
    /// The attempt's `retry_count` and `message_id`.
    pub retry_count: u32,
    pub attempt_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<ErrorCode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Unix milliseconds.
    pub at: i64,
}

/// What inserting a message did.
#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    Created(MessageRecord),
    /// The same logical message was already accepted (dedupe); returned as it is now.
    Duplicate(MessageRecord),
}

/// A conditional change of a message's stage (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct MessageTransition {
    pub from: Vec<AckStage>,
    /// Applies only to this attempt (`message_id` of the attempt); `None` = any.
    pub attempt_id: Option<String>,
    pub to: AckStage,
    pub code: Option<ErrorCode>,
    pub note: Option<String>,
    pub at: i64,
    /// Starts a new attempt (retry): its `message_id` and when it may be delivered.
    pub retry: Option<(String, i64)>,
}

impl MessageTransition {
    pub fn new(from: &[AckStage], to: AckStage, at: i64) -> Self {
        MessageTransition { from: from.to_vec(), attempt_id: None, to, code: None, note: None, at, retry: None }
    }

    pub fn attempt(mut self, attempt_id: &str) -> Self {
        self.attempt_id = Some(attempt_id.to_owned());
        self
    }

    pub fn code(mut self, code: ErrorCode) -> Self {
        self.code = Some(code);
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// Everything that ends a Wasm delivery, written in one op ([`Store::finish_delivery`]).
#[derive(Debug, Clone)]
pub struct FinishDelivery {
    pub id: String,
    /// When the consumer got the message, if READ is not written yet.
    pub read_at: Option<i64>,
    pub audit: Vec<super::AuditRecord>,
    pub kv: super::HeldKv,
    pub transition: MessageTransition,
}

/// Applies `t` inside a write op (see [`Store::transition_message`]).
fn transition(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    t: &MessageTransition,
) -> Result<Option<MessageState>, StoreError> {
    let Some(mut st) = state(tx, id)? else { return Ok(None) };
    let attempt_matches = t.attempt_id.as_ref().is_none_or(|a| *a == st.attempt_id);
    if !t.from.contains(&st.stage) || !attempt_matches {
        return Ok(None);
    }
    apply(tx, id, &mut st, t)?;
    save(tx, id, &st)?;
    Ok(Some(st))
}

/// Appends the stage rows of `t` and changes `st` accordingly (not saved yet).
fn apply(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    st: &mut MessageState,
    t: &MessageTransition,
) -> Result<(), StoreError> {
    if t.to == AckStage::TimedOut {
        st.timeouts = st.timeouts.saturating_add(1);
    }
    st.error_code = t.code;
    st.note = t.note.clone();
    st.updated_at = t.at;
    if let Some((attempt_id, not_before)) = &t.retry {
        // A new attempt: its predecessor's end (unless the new attempt is all there is to say,
        // as after a restart), then RECEIVED again, waiting in the inbox.
        if t.to != AckStage::Received {
            st.stages += 1;
            insert_stage(tx, id, st.stages, t.to, (&st.attempt_id, st.retry_count), t.code, t.note.as_deref(), t.at)?;
        }
        st.attempt_id = attempt_id.clone();
        st.retry_count = st.retry_count.saturating_add(1);
        st.stage = AckStage::Received;
        st.not_before = Some(*not_before);
        st.stages += 1;
        let note = if t.to == AckStage::Received { t.note.as_deref() } else { Some("retry") };
        insert_stage(tx, id, st.stages, AckStage::Received, (&st.attempt_id, st.retry_count), None, note, t.at)?;
    } else {
        st.stages += 1;
        insert_stage(tx, id, st.stages, t.to, (&st.attempt_id, st.retry_count), t.code, t.note.as_deref(), t.at)?;
        st.stage = t.to;
        if t.to.is_outcome() {
            st.finished_at = Some(t.at);
        }
    }
    Ok(())
}

fn save(tx: &rusqlite::Transaction<'_>, id: &str, st: &MessageState) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE messages SET stage = ?2, attempt_id = ?3, retry_count = ?4, timeouts = ?5, error_code = ?6, \
         note = ?7, updated_at = ?8, not_before = ?9, finished_at = ?10, stages = ?11 WHERE id = ?1",
    )?
    .execute(params![
        id,
        st.stage.as_str(),
        st.attempt_id,
        st.retry_count,
        st.timeouts,
        st.error_code.map(ErrorCode::as_str),
        st.note,
        st.updated_at,
        st.not_before,
        st.finished_at,
        st.stages
    ])?;
    Ok(())
}

/// Filter for [`Store::list_messages`]; newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageFilter {
    /// Messages this principal produced, or that were routed to external agents it registered.
    pub principal: String,
    pub external_agents: Vec<String>,
    pub producer: Option<String>,
    pub recipient: Option<String>,
    pub stage: Option<AckStage>,
    pub limit: u32,
    pub cursor: Option<String>,
}

const COLUMNS: &str = "id, principal, recipient_kind, envelope, payload, delivery, stage, error_code, note, \
     created_at, updated_at, not_before, expires_at, finished_at, reply_to, timeouts, attempt_id, retry_count";

fn json_err(what: &str, id: &str, e: serde_json::Error) -> StoreError {
    StoreError::json(format!("{what} of message {id}"), e)
}

fn from_row(row: &Row<'_>) -> Result<MessageRecord, StoreError> {
    let id: String = row.get(0)?;
    let envelope: String = row.get(3)?;
    let delivery: String = row.get(5)?;
    let stage: String = row.get(6)?;
    let code: Option<String> = row.get(7)?;
    Ok(MessageRecord {
        principal: row.get(1)?,
        kind: RecipientKind::parse(&row.get::<_, String>(2)?),
        envelope: {
            // The stored envelope is the first attempt's; the current attempt is in columns.
            let mut e: Envelope = serde_json::from_str(&envelope).map_err(|e| json_err("envelope", &id, e))?;
            e.message_id = row.get(16)?;
            e.retry_count = row.get(17)?;
            e
        },
        payload: row.get(4)?,
        delivery: serde_json::from_str(&delivery).map_err(|e| json_err("delivery", &id, e))?,
        stage: AckStage::parse(&stage)
            .ok_or_else(|| StoreError::UnknownStatus { job_id: id.clone(), status: stage.clone() })?,
        error_code: code.as_deref().and_then(ErrorCode::parse),
        note: row.get(8)?,
        created_at: row.get(9)?,
        updated_at: row.get(10)?,
        not_before: row.get(11)?,
        expires_at: row.get(12)?,
        finished_at: row.get(13)?,
        reply_to: row.get(14)?,
        timeouts: row.get(15)?,
        id,
    })
}

fn query(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<MessageRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(from_row(row)?);
    }
    Ok(out)
}

fn get(conn: &Connection, id: &str) -> Result<Option<MessageRecord>, StoreError> {
    Ok(query(conn, &format!("SELECT {COLUMNS} FROM messages WHERE id = ?1"), [id])?.into_iter().next())
}

fn to_json<T: Serialize>(value: &T) -> String {
    // The stored types serialize to JSON without failing (plain structs and strings).
    serde_json::to_string(value).unwrap_or_default()
}

/// Appends stage row number `seq` of message `id`, for the attempt `(attempt_id, retry_count)`.
#[allow(clippy::too_many_arguments)]
fn insert_stage(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    seq: u32,
    stage: AckStage,
    (attempt_id, retry_count): (&str, u32),
    code: Option<ErrorCode>,
    note: Option<&str>,
    at: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO message_stages (message_id, seq, stage, retry_count, attempt_id, error_code, note, at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![id, seq, stage.as_str(), retry_count, attempt_id, code.map(ErrorCode::as_str), note, at])?;
    Ok(())
}

fn state(tx: &rusqlite::Transaction<'_>, id: &str) -> Result<Option<MessageState>, StoreError> {
    let row = tx
        .prepare_cached(
            "SELECT stage, attempt_id, retry_count, timeouts, error_code, note, updated_at, not_before, finished_at, stages \
             FROM messages WHERE id = ?1",
        )?
        .query_row([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                MessageState {
                    stage: AckStage::Received,
                    attempt_id: r.get(1)?,
                    retry_count: r.get(2)?,
                    timeouts: r.get(3)?,
                    error_code: r.get::<_, Option<String>>(4)?.as_deref().and_then(ErrorCode::parse),
                    note: r.get(5)?,
                    updated_at: r.get(6)?,
                    not_before: r.get(7)?,
                    finished_at: r.get(8)?,
                    stages: r.get(9)?,
                },
            ))
        });
    match row {
        Ok((stage, mut st)) => {
            st.stage = AckStage::parse(&stage)
                .ok_or_else(|| StoreError::UnknownStatus { job_id: id.to_owned(), status: stage.clone() })?;
            Ok(Some(st))
        }
        Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Copies recorded only to say they were refused (BUFFER_FULL, AGENT_UNAVAILABLE): a resend
/// of the same logical message is a new try, not a duplicate.
const REFUSED_AT_ACCEPT: &str = "(stage = 'REJECTED' AND error_code IN ('BUFFER_FULL', 'AGENT_UNAVAILABLE'))";

/// The existing copy of the same logical message, if the producer sent it before.
fn find_duplicate(
    tx: &rusqlite::Transaction<'_>,
    record: &MessageRecord,
    since: i64,
) -> Result<Option<MessageRecord>, StoreError> {
    let e = &record.envelope;
    if !e.idempotency_token.is_empty() {
        let sql = format!(
            "SELECT {COLUMNS} FROM messages WHERE principal = ?1 AND producer_id = ?2 AND idempotency_token = ?3 \
             AND recipient = ?4 AND created_at >= ?5 AND NOT {REFUSED_AT_ACCEPT} LIMIT 1"
        );
        return Ok(query(tx, &sql, params![record.principal, e.producer_id, e.idempotency_token, e.recipient, since])?
            .into_iter()
            .next());
    }
    if e.sequence_number > 0 {
        let sql = format!(
            "SELECT {COLUMNS} FROM messages WHERE principal = ?1 AND producer_id = ?2 AND idempotency_token IS NULL \
             AND sequence_number = ?3 AND recipient = ?4 AND created_at >= ?5 AND NOT {REFUSED_AT_ACCEPT} LIMIT 1"
        );
        let seq = i64::try_from(e.sequence_number).unwrap_or(i64::MAX);
        return Ok(query(tx, &sql, params![record.principal, e.producer_id, seq, e.recipient, since])?
            .into_iter()
            .next());
    }
    Ok(None)
}

fn insert_one(tx: &rusqlite::Transaction<'_>, m: &MessageRecord) -> Result<(), StoreError> {
    let e = &m.envelope;
    tx.prepare_cached(
        "INSERT INTO messages (id, principal, producer_id, recipient, recipient_kind, topic, envelope, payload, \
         delivery, idempotency_token, sequence_number, stage, error_code, note, created_at, updated_at, \
         not_before, expires_at, finished_at, reply_to, timeouts, attempt_id, retry_count, stages) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, 1)",
    )?
    .execute(params![
        m.id,
        m.principal,
        e.producer_id,
        e.recipient,
        m.kind.as_str(),
        e.topic,
        to_json(e),
        m.payload,
        to_json(&m.delivery),
        (!e.idempotency_token.is_empty()).then_some(&e.idempotency_token),
        i64::try_from(e.sequence_number).unwrap_or(i64::MAX),
        m.stage.as_str(),
        m.error_code.map(ErrorCode::as_str),
        m.note,
        m.created_at,
        m.updated_at,
        m.not_before,
        m.expires_at,
        m.finished_at,
        m.reply_to,
        m.timeouts,
        e.message_id,
        e.retry_count,
    ])?;
    let attempt = (e.message_id.as_str(), e.retry_count);
    insert_stage(tx, &m.id, 1, m.stage, attempt, m.error_code, m.note.as_deref(), m.created_at)
}

impl Store {
    /// Inserts message copies (with their first stage) in one op, deduplicating each against
    /// messages created at or after `dedupe_since`. Resolves after the commit.
    pub fn insert_messages(
        &self,
        records: Vec<MessageRecord>,
        dedupe_since: i64,
    ) -> impl Future<Output = Result<Vec<Inserted>, StoreError>> + Send + 'static {
        self.write(move |ctx| {
            let tx = ctx.tx();
            let mut out = Vec::with_capacity(records.len());
            for record in records {
                if let Some(existing) = find_duplicate(tx, &record, dedupe_since)? {
                    out.push(Inserted::Duplicate(existing));
                    continue;
                }
                insert_one(tx, &record)?;
                out.push(Inserted::Created(record));
            }
            Ok(out)
        })
    }

    /// Applies `t` if the message still matches it; returns the message as changed, or `None`.
    pub fn transition_message(
        &self,
        id: &str,
        t: MessageTransition,
    ) -> impl Future<Output = Result<Option<MessageState>, StoreError>> + Send + 'static {
        let id = id.to_owned();
        self.write(move |ctx| transition(ctx.tx(), &id, &t))
    }

    /// Ends a Wasm delivery in one op: the READ stage (if it was not written yet), the audit
    /// rows of its decisions, its held kv writes and the outcome — the kv writes only if the
    /// outcome applies to the attempt (a delivery whose attempt was closed meanwhile, e.g. by
    /// its TTL, writes nothing but its audit trail).
    pub fn finish_delivery(
        &self,
        op: FinishDelivery,
    ) -> impl Future<Output = Result<Option<MessageState>, StoreError>> + Send + 'static {
        self.write(move |ctx| {
            let tx = ctx.tx();
            for record in &op.audit {
                super::audit::insert(tx, record)?;
            }
            let Some(mut st) = state(tx, &op.id)? else { return Ok(None) };
            let t = &op.transition;
            let from_read = op.read_at.is_some() && st.stage == AckStage::Received;
            let current_stage = if from_read { AckStage::Read } else { st.stage };
            let applies = t.from.contains(&current_stage) && t.attempt_id.as_ref().is_none_or(|a| *a == st.attempt_id);
            if !applies || (op.read_at.is_some() && !from_read && st.stage != AckStage::Read) {
                return Ok(None);
            }
            if let (true, Some(at)) = (from_read, op.read_at) {
                let read = MessageTransition {
                    from: vec![AckStage::Received],
                    to: AckStage::Read,
                    at,
                    code: None,
                    note: None,
                    retry: None,
                    attempt_id: None,
                };
                apply(tx, &op.id, &mut st, &read)?;
            }
            let mut outcome = op.transition.clone();
            if !op.kv.ops.is_empty() {
                // The kv writes and the outcome commit together or not at all; a write that
                // cannot apply (e.g. incrementing a non-integer) fails the delivery instead.
                tx.execute_batch("SAVEPOINT delivery_kv")?;
                match super::kv::apply_all(tx, &op.kv) {
                    Ok(()) => tx.execute_batch("RELEASE delivery_kv")?,
                    Err(e) => {
                        tx.execute_batch("ROLLBACK TO delivery_kv; RELEASE delivery_kv")?;
                        outcome = MessageTransition {
                            to: AckStage::Failed,
                            code: Some(ErrorCode::InternalError),
                            note: Some(format!("the delivery's kv writes could not be applied: {e}")),
                            retry: None,
                            ..outcome
                        };
                    }
                }
            }
            apply(tx, &op.id, &mut st, &outcome)?;
            save(tx, &op.id, &st)?;
            Ok(Some(st))
        })
    }

    /// Writes a delivery's READ stage (attempt-conditional) with the audit rows it held so far.
    pub fn record_read(
        &self,
        id: &str,
        attempt_id: &str,
        at: i64,
        audit: Vec<super::AuditRecord>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let (id, attempt_id) = (id.to_owned(), attempt_id.to_owned());
        self.write(move |ctx| {
            let tx = ctx.tx();
            for record in &audit {
                super::audit::insert(tx, record)?;
            }
            let read = MessageTransition::new(&[AckStage::Received], AckStage::Read, at).attempt(&attempt_id);
            transition(tx, &id, &read)?;
            Ok(())
        })
    }

    /// The message whose id, or whose current attempt's `message_id`, is `id` (what an
    /// ACKNOWLEDGEMENT envelope names).
    pub async fn find_message(&self, id: &str) -> Result<Option<MessageRecord>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| {
            let sql = format!("SELECT {COLUMNS} FROM messages WHERE id = ?1 OR attempt_id = ?1 LIMIT 1");
            Ok(query(conn, &sql, [&id])?.into_iter().next())
        })
        .await
    }

    pub async fn get_message(&self, id: &str) -> Result<Option<MessageRecord>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| get(conn, &id)).await
    }

    /// The stage history of a message, oldest first.
    pub async fn message_stages(&self, id: &str) -> Result<Vec<StageRecord>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT stage, retry_count, attempt_id, error_code, note, at FROM message_stages \
                 WHERE message_id = ?1 ORDER BY seq",
            )?;
            let rows = stmt.query_map([&id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (stage, retry_count, attempt_id, code, note, at) = row?;
                let stage = AckStage::parse(&stage)
                    .ok_or_else(|| StoreError::UnknownStatus { job_id: id.clone(), status: stage.clone() })?;
                out.push(StageRecord {
                    stage,
                    retry_count,
                    attempt_id,
                    error_code: code.as_deref().and_then(ErrorCode::parse),
                    note,
                    at,
                });
            }
            Ok(out)
        })
        .await
    }

    /// One page of messages visible to a principal, newest first, and the next cursor.
    pub async fn list_messages(
        &self,
        filter: MessageFilter,
    ) -> Result<(Vec<MessageRecord>, Option<String>), StoreError> {
        self.read(move |conn| {
            let limit = filter.limit.clamp(1, 1000);
            let externals = serde_json::to_string(&filter.external_agents).unwrap_or_else(|_| "[]".into());
            let sql = format!(
                "SELECT {COLUMNS} FROM messages WHERE \
                 (principal = ?1 OR (recipient_kind = 'external' AND recipient IN (SELECT value FROM json_each(?2)))) \
                 AND (?3 IS NULL OR producer_id = ?3) AND (?4 IS NULL OR recipient = ?4) \
                 AND (?5 IS NULL OR stage = ?5) AND (?6 IS NULL OR id < ?6) ORDER BY id DESC LIMIT ?7"
            );
            let page = query(
                conn,
                &sql,
                params![
                    filter.principal,
                    externals,
                    filter.producer,
                    filter.recipient,
                    filter.stage.map(AckStage::as_str),
                    filter.cursor,
                    i64::from(limit) + 1
                ],
            )?;
            let more = page.len() > limit as usize;
            let page: Vec<MessageRecord> = page.into_iter().take(limit as usize).collect();
            let next = if more { page.last().map(|m| m.id.clone()) } else { None };
            Ok((page, next))
        })
        .await
    }

    /// Every message without an outcome (RECEIVED or READ), oldest first: what the plane
    /// must deliver (again) after a restart.
    pub async fn pending_messages(&self) -> Result<Vec<MessageRecord>, StoreError> {
        self.read(move |conn| {
            query(conn, &format!("SELECT {COLUMNS} FROM messages WHERE stage IN ('RECEIVED', 'READ') ORDER BY id"), [])
        })
        .await
    }

    /// Deletes up to `limit` messages that finished before `before`, with their history and
    /// their deliveries' audit rows.
    /// Returns how many were deleted (call again while it returns `limit`).
    pub fn prune_messages(
        &self,
        before: i64,
        limit: u32,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send + 'static {
        self.write(move |ctx| {
            let tx = ctx.tx();
            let ids: Vec<String> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT id FROM messages WHERE finished_at IS NOT NULL AND finished_at < ?1 LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![before, limit], |r| r.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            for id in &ids {
                tx.prepare_cached("DELETE FROM message_stages WHERE message_id = ?1")?.execute([id])?;
                // A delivery's audit rows are keyed by its message's id.
                tx.prepare_cached("DELETE FROM audit WHERE job_id = ?1")?.execute([id])?;
                tx.prepare_cached("DELETE FROM messages WHERE id = ?1")?.execute([id])?;
            }
            Ok(ids.len())
        })
    }

    /// Records (or replaces) an external agent's registration.
    pub fn upsert_external_agent(
        &self,
        agent: ExternalAgentRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        self.write(move |ctx| {
            ctx.tx()
                .prepare_cached(
                    "INSERT INTO external_agents (id, principal, descriptor, registered_at) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT(id) DO UPDATE SET principal = ?2, descriptor = ?3, registered_at = ?4",
                )?
                .execute(params![agent.id, agent.principal, agent.descriptor.to_string(), agent.registered_at])?;
            Ok(())
        })
    }

    /// Forgets an external agent; `true` if it was registered. Its queued messages stay.
    pub fn remove_external_agent(&self, id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        let id = id.to_owned();
        self.write(move |ctx| {
            Ok(ctx.tx().prepare_cached("DELETE FROM external_agents WHERE id = ?1")?.execute([&id])? > 0)
        })
    }

    pub async fn external_agents(&self) -> Result<Vec<ExternalAgentRecord>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT id, principal, descriptor, registered_at FROM external_agents ORDER BY id")?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, principal, descriptor, registered_at) = row?;
                let descriptor = serde_json::from_str(&descriptor).map_err(|e| json_err("descriptor", &id, e))?;
                out.push(ExternalAgentRecord { id, principal, descriptor, registered_at });
            }
            Ok(out)
        })
        .await
    }
}

/// One row of `external_agents`: a registration (the descriptor is the registry's JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalAgentRecord {
    pub id: String,
    pub principal: String,
    pub descriptor: serde_json::Value,
    pub registered_at: i64,
}

/// Schema of the message plane (migration 3).
pub(super) const MIGRATION: &str = r#"
    CREATE TABLE messages (
        id                TEXT PRIMARY KEY NOT NULL,
        attempt_id        TEXT NOT NULL,
        retry_count       INTEGER NOT NULL,
        stages            INTEGER NOT NULL,
        principal         TEXT NOT NULL,
        producer_id       TEXT NOT NULL,
        recipient         TEXT NOT NULL,
        recipient_kind    TEXT NOT NULL,
        topic             TEXT,
        envelope          TEXT NOT NULL,
        payload           BLOB NOT NULL,
        delivery          TEXT NOT NULL,
        idempotency_token TEXT,
        sequence_number   INTEGER NOT NULL,
        stage             TEXT NOT NULL,
        error_code        TEXT,
        note              TEXT,
        created_at        INTEGER NOT NULL,
        updated_at        INTEGER NOT NULL,
        not_before        INTEGER,
        expires_at        INTEGER,
        finished_at       INTEGER,
        reply_to          TEXT,
        timeouts          INTEGER NOT NULL
    );
    CREATE INDEX messages_by_principal ON messages(principal, id);
    CREATE INDEX messages_pending ON messages(stage) WHERE stage IN ('RECEIVED', 'READ');
    CREATE INDEX messages_by_token ON messages(principal, producer_id, idempotency_token)
        WHERE idempotency_token IS NOT NULL;
    CREATE INDEX messages_by_sequence ON messages(principal, producer_id, sequence_number)
        WHERE idempotency_token IS NULL AND sequence_number > 0;
    CREATE INDEX messages_finished ON messages(finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX messages_by_attempt ON messages(attempt_id);

    CREATE TABLE message_stages (
        message_id  TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        stage       TEXT NOT NULL,
        retry_count INTEGER NOT NULL,
        attempt_id  TEXT NOT NULL,
        error_code  TEXT,
        note        TEXT,
        at          INTEGER NOT NULL,
        PRIMARY KEY (message_id, seq)
    ) WITHOUT ROWID;

    CREATE TABLE external_agents (
        id            TEXT PRIMARY KEY NOT NULL,
        principal     TEXT NOT NULL,
        descriptor    TEXT NOT NULL,
        registered_at INTEGER NOT NULL
    );
"#;

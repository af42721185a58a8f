//! The `audit` table: every lease decision (allow or deny) taken for a job.
//!
//! Why it is in the store: "who let this agent reach that host?" must be answerable after the
//! fact and after a restart. Recording is fire-and-forget friendly — the capability that made
//! the decision may drop the future instead of waiting for the fsync; the row is still written
//! with the next batch. Rows are never updated or deleted by corral.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// The outcome of one lease check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// One row of `audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Assigned by the store; ignored by [`Store::record_audit`].
    pub id: Option<i64>,
    pub job_id: String,
    pub principal: String,
    /// Lease scope checked, e.g. `net.fetch`.
    pub scope: String,
    /// What the check was about, e.g. a URL or a kv key.
    pub target: String,
    pub decision: Decision,
    pub reason: Option<String>,
    /// Unix milliseconds.
    pub at: i64,
}

/// Inserts one audit row inside a running write op; returns its id.
pub(super) fn insert(tx: &rusqlite::Transaction<'_>, record: &AuditRecord) -> Result<i64, StoreError> {
    tx.prepare_cached(
        "INSERT INTO audit (job_id, principal, scope, target, decision, reason, at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(rusqlite::params![
        record.job_id,
        record.principal,
        record.scope,
        record.target,
        record.decision.as_str(),
        record.reason,
        record.at,
    ])?;
    Ok(tx.last_insert_rowid())
}

impl Store {
    /// Appends an audit row; resolves to its id once committed. The write happens even if the
    /// future is dropped.
    pub fn record_audit(&self, record: AuditRecord) -> impl Future<Output = Result<i64, StoreError>> + Send + 'static {
        self.write(move |ctx| insert(ctx.tx(), &record))
    }

    /// A job's audit trail in the order it was recorded.
    pub async fn audit_for_job(&self, job_id: &str) -> Result<Vec<AuditRecord>, StoreError> {
        let job_id = job_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, job_id, principal, scope, target, decision, reason, at FROM audit \
                 WHERE job_id = ?1 ORDER BY id",
            )?;
            let mut rows = stmt.query([&job_id])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let decision: String = row.get(5)?;
                out.push(AuditRecord {
                    id: row.get(0)?,
                    job_id: row.get(1)?,
                    principal: row.get(2)?,
                    scope: row.get(3)?,
                    target: row.get(4)?,
                    // The CHECK constraint admits only these two.
                    decision: if decision == "allow" { Decision::Allow } else { Decision::Deny },
                    reason: row.get(6)?,
                    at: row.get(7)?,
                });
            }
            Ok(out)
        })
        .await
    }
}

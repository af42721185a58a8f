//! The `followed_jobs` table: which jobs a streaming session followed, and the request that
//! started each, so a later session of the same principal can pick the stream up (ARCP's
//! `resume`) with every envelope correlated as before.
//!
//! Why a table rather than memory: a session may end with the host (a restart or `kill -9`),
//! and the client resumes on the next one. Events themselves are not copied: they are the job's
//! own log (`events`), read again from the named point.

use rusqlite::params;

use super::{Store, StoreError, now_ms};

pub(super) const MIGRATION: &str = r#"
    CREATE TABLE followed_jobs (
        session_id TEXT NOT NULL,
        job_id     TEXT NOT NULL,
        principal  TEXT NOT NULL,
        request_id TEXT NOT NULL,
        at         INTEGER NOT NULL,
        PRIMARY KEY (session_id, job_id)
    ) WITHOUT ROWID;
    CREATE INDEX followed_jobs_by_job ON followed_jobs(job_id, at);
"#;

/// A job a session followed and the request it answers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowedJob {
    pub job_id: String,
    pub request_id: String,
}

impl Store {
    /// Records that `session_id` (of `principal`) follows `job_id` for request `request_id`.
    pub async fn record_followed(
        &self,
        session_id: &str,
        job_id: &str,
        principal: &str,
        request_id: &str,
    ) -> Result<(), StoreError> {
        let (session, job, principal, request) =
            (session_id.to_owned(), job_id.to_owned(), principal.to_owned(), request_id.to_owned());
        self.write(move |ctx| {
            ctx.tx()
                .prepare_cached(
                    "INSERT OR REPLACE INTO followed_jobs (session_id, job_id, principal, request_id, at) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![session, job, principal, request, now_ms()])?;
            Ok(())
        })
        .await
    }

    /// The session of `principal` that most recently followed `job_id`.
    pub async fn follower_of(&self, principal: &str, job_id: &str) -> Result<Option<String>, StoreError> {
        let (principal, job) = (principal.to_owned(), job_id.to_owned());
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT session_id FROM followed_jobs WHERE job_id = ?1 AND principal = ?2 ORDER BY at DESC LIMIT 1",
            )?;
            let mut rows = stmt.query(params![job, principal])?;
            Ok(match rows.next()? {
                Some(row) => Some(row.get(0)?),
                None => None,
            })
        })
        .await
    }

    /// The jobs `session_id` of `principal` followed, in the order it started following them.
    pub async fn followed_by(&self, principal: &str, session_id: &str) -> Result<Vec<FollowedJob>, StoreError> {
        let (principal, session) = (principal.to_owned(), session_id.to_owned());
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT job_id, request_id FROM followed_jobs WHERE session_id = ?1 AND principal = ?2 ORDER BY at, job_id",
            )?;
            let rows = stmt.query_map(params![session, principal], |row| {
                Ok(FollowedJob { job_id: row.get(0)?, request_id: row.get(1)? })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

//! Versioned schema migrations, tracked in `PRAGMA user_version`.
//!
//! Why: the database outlives the binary. Each entry of [`MIGRATIONS`] moves the schema from
//! version `i` to `i + 1` and is applied exactly once, in its own transaction, at open.
//! Migrations are append-only: never edit one that has shipped, add a new one. A database whose
//! version is higher than the code knows was written by a newer corral; we refuse to touch it
//! rather than guess.

use std::path::Path;

use rusqlite::Connection;

use super::StoreError;

/// `MIGRATIONS[i]` upgrades a database at `user_version = i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: jobs, events, kv, audit, agents.
    r#"
    CREATE TABLE jobs (
        id              TEXT PRIMARY KEY NOT NULL,
        principal       TEXT NOT NULL,
        agent           TEXT NOT NULL,
        agent_name      TEXT NOT NULL,
        agent_version   TEXT NOT NULL,
        input           TEXT NOT NULL,
        lease           TEXT NOT NULL,
        status          TEXT NOT NULL,
        output          TEXT,
        error           TEXT,
        idempotency_key TEXT,
        request_hash    TEXT,
        parent_id       TEXT,
        depth           INTEGER NOT NULL,
        attempt         INTEGER NOT NULL,
        created_at      INTEGER NOT NULL,
        started_at      INTEGER,
        finished_at     INTEGER
    );
    CREATE UNIQUE INDEX jobs_idempotency ON jobs(principal, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX jobs_by_principal ON jobs(principal, id);
    CREATE INDEX jobs_by_status ON jobs(status);

    CREATE TABLE events (
        job_id TEXT NOT NULL,
        seq    INTEGER NOT NULL,
        kind   TEXT NOT NULL,
        data   TEXT NOT NULL,
        at     INTEGER NOT NULL,
        PRIMARY KEY (job_id, seq)
    ) WITHOUT ROWID;

    CREATE TABLE kv (
        namespace  TEXT NOT NULL,
        key        TEXT NOT NULL,
        value      BLOB NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, key)
    ) WITHOUT ROWID;

    CREATE TABLE audit (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id    TEXT NOT NULL,
        principal TEXT NOT NULL,
        scope     TEXT NOT NULL,
        target    TEXT NOT NULL,
        decision  TEXT NOT NULL CHECK (decision IN ('allow', 'deny')),
        reason    TEXT,
        at        INTEGER NOT NULL
    );
    CREATE INDEX audit_by_job ON audit(job_id, id);

    CREATE TABLE agents (
        name        TEXT NOT NULL,
        version     TEXT NOT NULL,
        sha256      TEXT NOT NULL,
        description TEXT NOT NULL,
        scopes      TEXT NOT NULL,
        path        TEXT NOT NULL,
        loaded_at   INTEGER NOT NULL,
        PRIMARY KEY (name, version)
    ) WITHOUT ROWID;
    "#,
    // 2: fewer b-tree writes per job (measured: the writer thread was a third of the host's
    // CPU under load). Only unfinished jobs are indexed by status — recovery's query; finished
    // jobs are never looked up by status alone — and audit ids drop AUTOINCREMENT, whose
    // `sqlite_sequence` row was rewritten by every audit insert (rows are never deleted, so
    // ids stay increasing either way).
    r#"
    DROP INDEX jobs_by_status;
    CREATE INDEX jobs_unfinished ON jobs(status) WHERE status IN ('queued', 'running');

    CREATE TABLE audit_v2 (
        id        INTEGER PRIMARY KEY,
        job_id    TEXT NOT NULL,
        principal TEXT NOT NULL,
        scope     TEXT NOT NULL,
        target    TEXT NOT NULL,
        decision  TEXT NOT NULL CHECK (decision IN ('allow', 'deny')),
        reason    TEXT,
        at        INTEGER NOT NULL
    );
    INSERT INTO audit_v2 (id, job_id, principal, scope, target, decision, reason, at)
        SELECT id, job_id, principal, scope, target, decision, reason, at FROM audit;
    DROP TABLE audit;
    ALTER TABLE audit_v2 RENAME TO audit;
    CREATE INDEX audit_by_job ON audit(job_id, id);
    "#,
    // 3: the message plane (messages, their stage history, external agents).
    super::messages::MIGRATION,
    // 4: the jobs each streaming session followed (ARCP resume).
    super::followed::MIGRATION,
    // 5: who owns each kv row, and every owner's totals (kv quotas).
    super::kv::MIGRATION,
    // 6: the trace context a job's span continues.
    "ALTER TABLE jobs ADD COLUMN trace_parent TEXT;",
    // 7: federation (swarms, members, invites, seen ids, inbox, outbox).
    super::swarm::MIGRATION,
];

/// The schema version this code writes.
pub(super) fn known_version() -> i64 {
    i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX)
}

/// Brings the database at `path` up to [`known_version`], or refuses if it is newer.
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = known_version();
    if found > known {
        return Err(StoreError::SchemaTooNew { path: path.to_path_buf(), found, known });
    }
    for (version, sql) in (1_i64..).zip(MIGRATIONS.iter()).skip_while(|(v, _)| *v <= found) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(db = %path.display(), version, "applied store migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrating_from_version_1_keeps_audit_rows_and_their_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        let mut conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO audit (job_id, principal, scope, target, decision, reason, at) \
             VALUES ('j1', 'local', 'log', 'info', 'allow', NULL, 1)",
            [],
        )
        .unwrap();

        migrate(&mut conn, &path).unwrap();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, known_version());
        let (id, target): (i64, String) = conn
            .query_row("SELECT id, target FROM audit WHERE job_id = 'j1'", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!((id, target.as_str()), (1, "info"));
        conn.execute(
            "INSERT INTO audit (job_id, principal, scope, target, decision, reason, at) \
             VALUES ('j1', 'local', 'log', 'warn', 'allow', NULL, 2)",
            [],
        )
        .unwrap();
        assert_eq!(conn.last_insert_rowid(), 2, "ids keep increasing");
        let unfinished_index: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = 'jobs_unfinished'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(unfinished_index, 1);
    }
}

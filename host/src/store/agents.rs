//! The `agents` table: which agent versions this host has loaded, and from where.
//!
//! Why persist it when the drop folder is the source of truth: jobs reference
//! `(agent_name, agent_version)`, and after a restart (or once the file is replaced) the host
//! and operators still need to know what that version was — its hash, declared scopes and path.
//! Upserting on `(name, version)` keeps a reload of the same version idempotent.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Store, StoreError};

/// One row of `agents`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub name: String,
    pub version: String,
    /// Hex sha256 of the component bytes.
    pub sha256: String,
    pub description: String,
    /// The scopes the agent declares it needs (JSON as in its manifest).
    pub scopes: Value,
    pub path: String,
    /// Unix milliseconds.
    pub loaded_at: i64,
}

impl Store {
    /// Inserts the agent version, or replaces the row for the same `(name, version)`.
    pub fn upsert_agent(&self, agent: AgentRecord) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        self.write(move |ctx| {
            ctx.tx()
                .prepare_cached(
                    "INSERT INTO agents (name, version, sha256, description, scopes, path, loaded_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT (name, version) DO UPDATE SET sha256 = excluded.sha256, \
                     description = excluded.description, scopes = excluded.scopes, \
                     path = excluded.path, loaded_at = excluded.loaded_at",
                )?
                .execute(rusqlite::params![
                    agent.name,
                    agent.version,
                    agent.sha256,
                    agent.description,
                    agent.scopes.to_string(),
                    agent.path,
                    agent.loaded_at,
                ])?;
            Ok(())
        })
    }

    /// Every known agent version, by name then version (text order).
    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT name, version, sha256, description, scopes, path, loaded_at FROM agents \
                 ORDER BY name, version",
            )?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let name: String = row.get(0)?;
                let scopes: String = row.get(4)?;
                let scopes = serde_json::from_str(&scopes)
                    .map_err(|e| StoreError::json(format!("scopes of agent {name}"), e))?;
                out.push(AgentRecord {
                    name,
                    version: row.get(1)?,
                    sha256: row.get(2)?,
                    description: row.get(3)?,
                    scopes,
                    path: row.get(5)?,
                    loaded_at: row.get(6)?,
                });
            }
            Ok(out)
        })
        .await
    }
}

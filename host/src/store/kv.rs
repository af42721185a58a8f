//! The `kv` table: agents' durable key-value state, one namespace per agent (or lease grant).
//!
//! Values are opaque bytes. [`Store::kv_increment`] is the one operation that interprets them:
//! it reads and writes decimal text (so `kv_get` of a counter returns e.g. `b"42"`), and it runs
//! as a single op in the writer thread, so concurrent increments never lose an update.
//!
//! **Quotas.** Each row remembers who wrote it last (agent and principal, its *owner*), and
//! `kv_usage` keeps every owner's total (bytes of namespace, key and value; keys), updated in
//! the same op as the write. A write that would take its owner over a quota is refused in the
//! writer, atomically, before anything changes ([`StoreError::KvQuota`]); a write that shrinks
//! or moves a row is always allowed, so an owner over its quota can clean up. Rows written
//! before quotas existed have no owner and count against no one until rewritten.

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, now_ms};

/// Schema of kv ownership and usage (migration 5).
pub(super) const MIGRATION: &str = r#"
    ALTER TABLE kv ADD COLUMN agent TEXT NOT NULL DEFAULT '';
    ALTER TABLE kv ADD COLUMN principal TEXT NOT NULL DEFAULT '';
    CREATE TABLE kv_usage (
        kind  TEXT NOT NULL CHECK (kind IN ('agent', 'principal')),
        owner TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        keys  INTEGER NOT NULL,
        PRIMARY KEY (kind, owner)
    ) WITHOUT ROWID;
"#;

/// The most one owner may keep stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvQuota {
    pub bytes: u64,
    pub keys: u64,
}

impl KvQuota {
    pub const UNLIMITED: KvQuota = KvQuota { bytes: u64::MAX, keys: u64::MAX };
}

/// Who a write is charged to, and how much each of them may keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvOwner {
    /// The agent's name (without version).
    pub agent: String,
    pub principal: String,
    pub agent_quota: KvQuota,
    pub principal_quota: KvQuota,
}

impl KvOwner {
    /// An owner without quotas (tools and tests).
    pub fn unlimited(agent: &str, principal: &str) -> KvOwner {
        KvOwner {
            agent: agent.to_owned(),
            principal: principal.to_owned(),
            agent_quota: KvQuota::UNLIMITED,
            principal_quota: KvQuota::UNLIMITED,
        }
    }
}

/// An owner's stored total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KvUsage {
    pub bytes: u64,
    pub keys: u64,
}

impl Store {
    pub async fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (ns, key) = (namespace.to_owned(), key.to_owned());
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT value FROM kv WHERE namespace = ?1 AND key = ?2")?
                .query_row([&ns, &key], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    pub fn kv_set(
        &self,
        owner: &KvOwner,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let (ns, key, at, owner) = (namespace.to_owned(), key.to_owned(), now_ms(), owner.clone());
        self.write(move |ctx| put(ctx.tx(), &owner, &ns, &key, &value, at))
    }

    /// What `owner` (an agent or principal name) keeps stored.
    pub async fn kv_usage(&self, kind: OwnerKind, owner: &str) -> Result<KvUsage, StoreError> {
        let owner = owner.to_owned();
        self.read(move |conn| usage(conn, kind, &owner)).await
    }

    /// Deletes a key; `true` if it existed.
    pub fn kv_delete(
        &self,
        namespace: &str,
        key: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        let (ns, key) = (namespace.to_owned(), key.to_owned());
        self.write(move |ctx| delete(ctx.tx(), &ns, &key))
    }

    /// Adds `delta` to the integer stored at `key` (a missing key counts as 0) and returns the
    /// new value. Fails with [`StoreError::KvNotInteger`] or [`StoreError::KvOverflow`], leaving
    /// the value unchanged.
    pub fn kv_increment(
        &self,
        owner: &KvOwner,
        namespace: &str,
        key: &str,
        delta: i64,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send + 'static {
        let (ns, key, at, owner) = (namespace.to_owned(), key.to_owned(), now_ms(), owner.clone());
        self.write(move |ctx| increment(ctx.tx(), &owner, &ns, &key, delta, at))
    }
}

/// A kv write held by a delivery and applied with its outcome (see `Store::finish_delivery`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    Set { namespace: String, key: String, value: Vec<u8> },
    Delete { namespace: String, key: String },
    Increment { namespace: String, key: String, delta: i64 },
}

impl KvOp {
    /// Bytes this op makes the host hold until it is applied.
    pub fn size(&self) -> usize {
        match self {
            KvOp::Set { namespace, key, value } => namespace.len() + key.len() + value.len(),
            KvOp::Delete { namespace, key } | KvOp::Increment { namespace, key, .. } => namespace.len() + key.len() + 8,
        }
    }
}

/// A delivery's held writes and who they are charged to.
#[derive(Debug, Clone, Default)]
pub struct HeldKv {
    pub owner: Option<KvOwner>,
    pub ops: Vec<KvOp>,
}

/// Applies held writes in order inside a running write op.
pub(super) fn apply_all(tx: &rusqlite::Transaction<'_>, held: &HeldKv) -> Result<(), StoreError> {
    let at = now_ms();
    let unowned = KvOwner::unlimited("", "");
    let owner = held.owner.as_ref().unwrap_or(&unowned);
    for op in &held.ops {
        match op {
            KvOp::Set { namespace, key, value } => put(tx, owner, namespace, key, value, at)?,
            KvOp::Delete { namespace, key } => {
                delete(tx, namespace, key)?;
            }
            KvOp::Increment { namespace, key, delta } => {
                increment(tx, owner, namespace, key, *delta, at)?;
            }
        }
    }
    Ok(())
}

/// Which total a quota is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerKind {
    Agent,
    Principal,
}

impl OwnerKind {
    fn as_str(self) -> &'static str {
        match self {
            OwnerKind::Agent => "agent",
            OwnerKind::Principal => "principal",
        }
    }
}

/// Bytes a row counts for: its namespace, a separator, its key and its value.
fn row_size(ns: &str, key: &str, value_len: usize) -> i64 {
    i64::try_from(ns.len() + 1 + key.len() + value_len).unwrap_or(i64::MAX)
}

fn usage(conn: &rusqlite::Connection, kind: OwnerKind, owner: &str) -> Result<KvUsage, StoreError> {
    let found: Option<(i64, i64)> = conn
        .prepare_cached("SELECT bytes, keys FROM kv_usage WHERE kind = ?1 AND owner = ?2")?
        .query_row(params![kind.as_str(), owner], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (bytes, keys) = found.unwrap_or_default();
    Ok(KvUsage { bytes: u64::try_from(bytes).unwrap_or(0), keys: u64::try_from(keys).unwrap_or(0) })
}

/// Adds to an owner's totals and returns them (an empty owner — rows from before quotas — is
/// not tracked).
fn add_usage(
    tx: &rusqlite::Transaction<'_>,
    kind: OwnerKind,
    owner: &str,
    bytes: i64,
    keys: i64,
) -> Result<KvUsage, StoreError> {
    if owner.is_empty() {
        return Ok(KvUsage::default());
    }
    let (bytes, keys): (i64, i64) = tx
        .prepare_cached(
            "INSERT INTO kv_usage (kind, owner, bytes, keys) VALUES (?1, ?2, MAX(?3, 0), MAX(?4, 0)) \
             ON CONFLICT (kind, owner) DO UPDATE SET bytes = MAX(bytes + ?3, 0), keys = MAX(keys + ?4, 0) \
             RETURNING bytes, keys",
        )?
        .query_row(params![kind.as_str(), owner, bytes, keys], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(KvUsage { bytes: u64::try_from(bytes).unwrap_or(0), keys: u64::try_from(keys).unwrap_or(0) })
}

/// The row at (`ns`, `key`), as usage sees it: its size and owners.
struct Stored {
    size: i64,
    agent: String,
    principal: String,
}

fn stored(tx: &rusqlite::Transaction<'_>, ns: &str, key: &str) -> Result<Option<Stored>, StoreError> {
    Ok(tx
        .prepare_cached("SELECT length(value), agent, principal FROM kv WHERE namespace = ?1 AND key = ?2")?
        .query_row([ns, key], |r| {
            let value_len: i64 = r.get(0)?;
            Ok(Stored { size: row_size(ns, key, 0).saturating_add(value_len), agent: r.get(1)?, principal: r.get(2)? })
        })
        .optional()?)
}

fn delete(tx: &rusqlite::Transaction<'_>, ns: &str, key: &str) -> Result<bool, StoreError> {
    let Some(old) = stored(tx, ns, key)? else { return Ok(false) };
    tx.prepare_cached("DELETE FROM kv WHERE namespace = ?1 AND key = ?2")?.execute([ns, key])?;
    add_usage(tx, OwnerKind::Agent, &old.agent, -old.size, -1)?;
    add_usage(tx, OwnerKind::Principal, &old.principal, -old.size, -1)?;
    Ok(true)
}

/// Moves a row's usage from its old owners to `owner`, refusing growth past a quota.
fn charge(tx: &rusqlite::Transaction<'_>, owner: &KvOwner, old: Option<&Stored>, size: i64) -> Result<(), StoreError> {
    for (kind, name, quota) in [
        (OwnerKind::Agent, &owner.agent, owner.agent_quota),
        (OwnerKind::Principal, &owner.principal, owner.principal_quota),
    ] {
        let previous = old.map(|o| (o.size, if kind == OwnerKind::Agent { &o.agent } else { &o.principal }));
        let (bytes, keys) = match previous {
            Some((old_size, old_owner)) if old_owner == name => (size - old_size, 0),
            Some((old_size, old_owner)) => {
                add_usage(tx, kind, old_owner, -old_size, -1)?;
                (size, 1)
            }
            None => (size, 1),
        };
        // Added first, checked after: a refusal is an `Err`, which rolls the op back whole
        // (its savepoint), usage included.
        let after = add_usage(tx, kind, name, bytes, keys)?;
        let over_bytes = bytes > 0 && after.bytes > quota.bytes;
        let over_keys = keys > 0 && after.keys > quota.keys;
        if over_bytes || over_keys {
            return Err(StoreError::KvQuota {
                kind: kind.as_str(),
                owner: name.clone(),
                what: if over_keys { "keys" } else { "bytes" },
                used: if over_keys {
                    after.keys.saturating_sub(1)
                } else {
                    after.bytes.saturating_sub(bytes.unsigned_abs())
                },
                limit: if over_keys { quota.keys } else { quota.bytes },
            });
        }
    }
    Ok(())
}

fn increment(
    tx: &rusqlite::Transaction<'_>,
    owner: &KvOwner,
    ns: &str,
    key: &str,
    delta: i64,
    at: i64,
) -> Result<i64, StoreError> {
    let current: Option<Vec<u8>> = tx
        .prepare_cached("SELECT value FROM kv WHERE namespace = ?1 AND key = ?2")?
        .query_row([ns, key], |r| r.get(0))
        .optional()?;
    let current = match current {
        None => 0,
        Some(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| StoreError::KvNotInteger { namespace: ns.to_owned(), key: key.to_owned() })?,
    };
    let new = current.checked_add(delta).ok_or_else(|| StoreError::KvOverflow {
        namespace: ns.to_owned(),
        key: key.to_owned(),
        delta,
    })?;
    put(tx, owner, ns, key, new.to_string().as_bytes(), at)?;
    Ok(new)
}

fn put(
    tx: &rusqlite::Transaction<'_>,
    owner: &KvOwner,
    ns: &str,
    key: &str,
    value: &[u8],
    at: i64,
) -> Result<(), StoreError> {
    let old = stored(tx, ns, key)?;
    charge(tx, owner, old.as_ref(), row_size(ns, key, value.len()))?;
    tx.prepare_cached(
        "INSERT INTO kv (namespace, key, value, updated_at, agent, principal) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, \
         updated_at = excluded.updated_at, agent = excluded.agent, principal = excluded.principal",
    )?
    .execute(params![ns, key, value, at, owner.agent, owner.principal])?;
    Ok(())
}

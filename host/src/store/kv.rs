//! The `kv` table: agents' durable key-value state, one namespace per agent (or lease grant).
//!
//! Values are opaque bytes. [`Store::kv_increment`] is the one operation that interprets them:
//! it reads and writes decimal text (so `kv_get` of a counter returns e.g. `b"42"`), and it runs
//! as a single op in the writer thread, so concurrent increments never lose an update.

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, now_ms};

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
        namespace: &str,
        key: &str,
        value: Vec<u8>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let (ns, key, at) = (namespace.to_owned(), key.to_owned(), now_ms());
        self.write(move |ctx| {
            put(ctx.tx(), &ns, &key, &value, at)?;
            Ok(())
        })
    }

    /// Deletes a key; `true` if it existed.
    pub fn kv_delete(
        &self,
        namespace: &str,
        key: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        let (ns, key) = (namespace.to_owned(), key.to_owned());
        self.write(move |ctx| {
            let n =
                ctx.tx().prepare_cached("DELETE FROM kv WHERE namespace = ?1 AND key = ?2")?.execute([&ns, &key])?;
            Ok(n > 0)
        })
    }

    /// Adds `delta` to the integer stored at `key` (a missing key counts as 0) and returns the
    /// new value. Fails with [`StoreError::KvNotInteger`] or [`StoreError::KvOverflow`], leaving
    /// the value unchanged.
    pub fn kv_increment(
        &self,
        namespace: &str,
        key: &str,
        delta: i64,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send + 'static {
        let (ns, key, at) = (namespace.to_owned(), key.to_owned(), now_ms());
        self.write(move |ctx| increment(ctx.tx(), &ns, &key, delta, at))
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

/// Applies held writes in order inside a running write op.
pub(super) fn apply_all(tx: &rusqlite::Transaction<'_>, ops: &[KvOp]) -> Result<(), StoreError> {
    let at = now_ms();
    for op in ops {
        match op {
            KvOp::Set { namespace, key, value } => put(tx, namespace, key, value, at)?,
            KvOp::Delete { namespace, key } => {
                tx.prepare_cached("DELETE FROM kv WHERE namespace = ?1 AND key = ?2")?.execute([namespace, key])?;
            }
            KvOp::Increment { namespace, key, delta } => {
                increment(tx, namespace, key, *delta, at)?;
            }
        }
    }
    Ok(())
}

fn increment(tx: &rusqlite::Transaction<'_>, ns: &str, key: &str, delta: i64, at: i64) -> Result<i64, StoreError> {
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
    put(tx, ns, key, new.to_string().as_bytes(), at)?;
    Ok(new)
}

fn put(tx: &rusqlite::Transaction<'_>, ns: &str, key: &str, value: &[u8], at: i64) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO kv (namespace, key, value, updated_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, \
         updated_at = excluded.updated_at",
    )?
    .execute(params![ns, key, value, at])?;
    Ok(())
}

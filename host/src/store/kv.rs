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
        self.write(move |ctx| {
            let tx = ctx.tx();
            let current: Option<Vec<u8>> = tx
                .prepare_cached("SELECT value FROM kv WHERE namespace = ?1 AND key = ?2")?
                .query_row([&ns, &key], |r| r.get(0))
                .optional()?;
            let current = match current {
                None => 0,
                Some(bytes) => std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or_else(|| StoreError::KvNotInteger { namespace: ns.clone(), key: key.clone() })?,
            };
            let new = current.checked_add(delta).ok_or_else(|| StoreError::KvOverflow {
                namespace: ns.clone(),
                key: key.clone(),
                delta,
            })?;
            put(tx, &ns, &key, new.to_string().as_bytes(), at)?;
            Ok(new)
        })
    }
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

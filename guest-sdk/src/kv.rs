//! Durable key-value state shared between jobs. Scopes `kv.read` and `kv.write`; the target of
//! the check is `<namespace>/<key>`.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::bindings::corral::agent::kv as wit;

/// Reads a value (`kv.read`). `None` when the key does not exist.
pub fn get(namespace: &str, key: &str) -> Result<Option<Vec<u8>>, Error> {
    wit::get(namespace, key).map_err(Error::from)
}

/// Writes a value (`kv.write`). Durable when it returns.
pub fn set(namespace: &str, key: &str, value: &[u8]) -> Result<(), Error> {
    wit::set(namespace, key, value).map_err(Error::from)
}

/// Deletes a key (`kv.write`). Returns whether it existed.
pub fn delete(namespace: &str, key: &str) -> Result<bool, Error> {
    wit::delete(namespace, key).map_err(Error::from)
}

/// Atomically adds `delta` to the integer at the key (missing = 0) and returns the new value
/// (`kv.read` and `kv.write`). Durable when it returns.
pub fn increment(namespace: &str, key: &str, delta: i64) -> Result<i64, Error> {
    wit::increment(namespace, key, delta).map_err(Error::from)
}

/// Reads a value stored as JSON (`kv.read`). A stored value that is not valid JSON for `T` is
/// [`Error::Invalid`].
pub fn get_json<T: DeserializeOwned>(namespace: &str, key: &str) -> Result<Option<T>, Error> {
    match get(namespace, key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| Error::invalid(format!("value at {namespace}/{key} is not the expected JSON: {err}"))),
    }
}

/// Writes a value as JSON (`kv.write`).
pub fn set_json<T: Serialize + ?Sized>(namespace: &str, key: &str, value: &T) -> Result<(), Error> {
    let bytes = serde_json::to_vec(value)
        .map_err(|err| Error::invalid(format!("cannot serialize value for {namespace}/{key}: {err}")))?;
    set(namespace, key, &bytes)
}

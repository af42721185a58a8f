//! Progress reports and streamed result chunks of the current job, stored as its events and
//! pushed to subscribers. Scope `events`; the target of the check is `progress` or `chunk`.

use crate::bindings::corral::agent::events as wit;
use crate::{Error, Value};

/// Reports progress: `done` of `total` steps, with a short message.
pub fn progress(done: u64, total: u64, message: &str) -> Result<(), Error> {
    wit::progress(done, total, message).map_err(Error::from)
}

/// Appends one chunk of the job's streamed result.
pub fn chunk(data: &str) -> Result<(), Error> {
    wit::chunk(data).map_err(Error::from)
}

/// Appends one chunk holding this JSON value.
pub fn chunk_json(value: &Value) -> Result<(), Error> {
    let data = serde_json::to_string(value).map_err(|err| Error::invalid(format!("cannot serialize chunk: {err}")))?;
    chunk(&data)
}

//! `counter`: atomically adds `by` (default 1) to the integer at `counter/<key>` in the host's
//! key-value store and returns the new value.
//!
//! Input `{"key": "hits", "by": 1}`, output `{"key": "hits", "value": 42}`. Scopes: `log`,
//! `kv.read`, `kv.write` (target `counter/<key>`). Under a lease without the kv scopes the
//! increment is denied: the agent logs a warning and fails the job with the denial.

use corral_guest::{Agent, Error, Value, json, kv, log};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    key: String,
    #[serde(default = "one")]
    by: i64,
}

fn one() -> i64 {
    1
}

struct Counter;

impl Agent for Counter {
    fn handle(input: Value) -> Result<Value, Error> {
        let Input { key, by } = corral_guest::serde_json::from_value(input)?;
        match kv::increment("counter", &key, by) {
            Ok(value) => {
                let _ = log::info(&format!("counter/{key} is now {value}"));
                Ok(json!({ "key": key, "value": value }))
            }
            Err(err) => {
                let _ = log::warn(&format!("cannot increment counter/{key}: {err}"));
                Err(err)
            }
        }
    }
}

corral_guest::export_agent!(Counter, scopes = ["log", "kv.read", "kv.write"]);

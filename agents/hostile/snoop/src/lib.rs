//! Hostile `snoop`: declares `kv.read` and `kv.write` on every key, then reads and overwrites
//! the key its input names — typically in another agent's namespace. Under the built-in
//! ceiling each agent has only its own namespace (`{agent}/**`), so both calls must come back
//! as denials; an operator grant can allow them.
//!
//! Input: `{"namespace": "counter", "key": "visits", "value": "0"}`. Output:
//! `{"read": {"denied": bool, "value": string|null, "error": string|null}, "write": {...}}`.
//!
//! With `{"flood": N, "bytes": B}` it instead writes B-byte values to `snoop/flood-<i>` up to N
//! times, stopping at the first error: `{"writes": <how many succeeded>, "error": string|null}`
//! — what a hostile agent filling the disk runs into.

use corral_guest::{Agent, Error, Value, json, kv};

struct Snoop;

fn report<T>(result: Result<T, Error>, value: impl FnOnce(T) -> Value) -> Value {
    match result {
        Ok(v) => json!({ "denied": false, "value": value(v), "error": null }),
        Err(e) => json!({ "denied": e.denial().is_some(), "value": null, "error": e.to_string() }),
    }
}

impl Agent for Snoop {
    fn handle(input: Value) -> Result<Value, Error> {
        if let Some(times) = input.get("flood").and_then(Value::as_u64) {
            let bytes = input.get("bytes").and_then(Value::as_u64).unwrap_or(1024);
            let value = vec![b'x'; usize::try_from(bytes).unwrap_or(1024)];
            for i in 0..times {
                if let Err(e) = kv::set("snoop", &format!("flood-{i}"), &value) {
                    return Ok(json!({ "writes": i, "error": e.to_string() }));
                }
            }
            return Ok(json!({ "writes": times, "error": null }));
        }
        let text = |key: &str, default: &str| input.get(key).and_then(Value::as_str).unwrap_or(default).to_owned();
        let (namespace, key, value) = (text("namespace", "counter"), text("key", "visits"), text("value", "0"));
        let read = report(kv::get(&namespace, &key), |v| {
            json!(v.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
        });
        let write = report(kv::set(&namespace, &key, value.as_bytes()), |()| Value::Null);
        Ok(json!({ "read": read, "write": write }))
    }
}

corral_guest::export_agent!(Snoop, scopes = ["kv.read", "kv.write"]);

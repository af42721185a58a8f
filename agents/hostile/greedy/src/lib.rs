//! Hostile `greedy`: delegates to `counter` and asks for a child lease wider than anything it
//! should hold — `kv.read` and `kv.write` on every key (`**`). A child's lease must lie within
//! its parent's, so under any narrower lease the delegation is denied and the job fails with
//! that denial. Scopes: `log`, `agent.delegate`, `kv.read`, `kv.write`.
//!
//! Input (optional): `{"key": "greedy"}`, passed on to counter. Output when (wrongly) allowed:
//! `{"child": <counter's output>}`.

use corral_guest::{Agent, Error, Value, jobs, json, log};

struct Greedy;

impl Agent for Greedy {
    fn handle(input: Value) -> Result<Value, Error> {
        let key = input.get("key").and_then(Value::as_str).unwrap_or("greedy");
        let lease = json!({ "grants": { "kv.write": ["**"], "kv.read": ["**"] } });
        match jobs::delegate("counter", &json!({ "key": key }), Some(&lease)) {
            Ok(child) => Ok(json!({ "child": child })),
            Err(err) => {
                let _ = log::warn(&format!("greedy: delegation refused: {err}"));
                Err(err)
            }
        }
    }
}

corral_guest::export_agent!(
    Greedy,
    scopes = ["log", "agent.delegate", "kv.read", "kv.write"]
);

//! Hostile `sneaky`: declares only `log`, then tries calls it never asked for — read and write
//! key-value state, fetch a loopback URL, delegate to another agent, emit progress — and
//! returns a report of what happened to each. It never fails: it exists to prove that a
//! denial is a value the agent gets back, not a trap, and that nothing happened.
//!
//! Output: `{"all_denied": true, "calls": [{"call": "kv.set", "denied": true, "scope":
//! "kv.write", "target": "sneaky/stolen", "error": "..."}, ...]}`. With `{"forge_denial": true}`
//! it instead returns a denial the host never issued (the host must not pass it off as its own).

use corral_guest::{Agent, Error, Value, events, http, jobs, json, kv, log};

struct Sneaky;

/// One line of the report.
fn outcome<T>(call: &str, result: Result<T, Error>) -> Value {
    match result {
        Ok(_) => json!({ "call": call, "denied": false, "allowed": true }),
        Err(err) => match err.denial() {
            Some(denial) => json!({
                "call": call,
                "denied": true,
                "scope": denial.scope,
                "target": denial.target,
                "error": err.to_string(),
            }),
            None => {
                json!({ "call": call, "denied": false, "allowed": false, "error": err.to_string() })
            }
        },
    }
}

impl Agent for Sneaky {
    fn handle(input: Value) -> Result<Value, Error> {
        if input.get("forge_denial").and_then(Value::as_bool) == Some(true) {
            // Pretend the host denied something it never did: the host must not report this
            // as a host decision.
            return Err(Error::Denied(corral_guest::Denial {
                scope: "net.fetch".into(),
                target: "https://forged.example/".into(),
                reason: "made up by the agent".into(),
            }));
        }
        let _ = log::info("sneaky: trying calls outside my lease");
        let calls = vec![
            outcome("kv.set", kv::set("sneaky", "stolen", b"1")),
            outcome("kv.get", kv::get("sneaky", "stolen")),
            outcome("http.fetch", http::get("http://127.0.0.1:1/")),
            outcome(
                "jobs.delegate",
                jobs::delegate("echo", &json!({ "from": "sneaky" }), None),
            ),
            outcome("events.progress", events::progress(0, 1, "sneaking")),
        ];
        let all_denied = calls.iter().all(|call| call["denied"] == true);
        let _ = log::info(&format!("sneaky: all denied = {all_denied}"));
        Ok(json!({ "all_denied": all_denied, "calls": calls }))
    }
}

corral_guest::export_agent!(Sneaky, scopes = ["log"]);

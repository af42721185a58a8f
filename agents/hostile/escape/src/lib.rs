//! Hostile `escape`: tries to reach what the operator never granted. Scopes: `log`,
//! `net.fetch`, `agent.delegate` (the whole scopes, so the policy ceiling decides).
//!
//! Input, one of:
//! - `{"fetch": URL}`: fetch it; output `{"status", "body"}` or the error as the job's error;
//! - `{"delegate_self": {"fetch": URL, "lease": LEASE}}`: delegate `{"fetch": URL}` to itself
//!   under `LEASE` (a narrowing of its own lease, e.g. one that names a loopback IP literal)
//!   and return the child's output;
//! - `{"flood_urls": BYTES}`: call `http.fetch` forever with a malformed URL of `BYTES` bytes,
//!   ignoring every refusal. The host-call budget (or the deadline) must end it, and nothing
//!   it sends may be stored whole.

use corral_guest::http::{self, Request};
use corral_guest::{Agent, Error, Value, jobs, json};

struct Escape;

fn fetch(url: &str) -> Result<Value, Error> {
    let response = http::get(url)?;
    Ok(json!({ "status": response.status, "body": response.text() }))
}

impl Agent for Escape {
    fn handle(input: Value) -> Result<Value, Error> {
        if let Some(url) = input.get("fetch").and_then(Value::as_str) {
            return fetch(url);
        }
        if let Some(spec) = input.get("delegate_self") {
            let url = spec.get("fetch").cloned().unwrap_or(Value::Null);
            return jobs::delegate("escape", &json!({ "fetch": url }), spec.get("lease"));
        }
        if let Some(bytes) = input.get("flood_urls").and_then(Value::as_u64) {
            let len = usize::try_from(bytes).unwrap_or(usize::MAX).min(64 << 20);
            // Not a URL (no scheme), so it fails parsing: the cheapest refusal to provoke.
            let junk = "x".repeat(len);
            let request = Request::get(junk);
            loop {
                let _ = http::fetch(&request);
            }
        }
        Err(Error::invalid("give one of fetch, delegate_self, flood_urls"))
    }
}

corral_guest::export_agent!(Escape, scopes = ["log", "net.fetch", "agent.delegate"]);

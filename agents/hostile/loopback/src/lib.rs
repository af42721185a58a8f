//! Hostile `loopback`: its manifest declares `net.fetch` for a loopback IP literal, as if an
//! agent could name the addresses it may reach. Only the operator can: under a ceiling with
//! wildcard hosts, the fetch must be denied. Input `{"fetch": URL}`; output `{"status", "body"}`.

use corral_guest::{Agent, Error, Value, http, json};

struct Loopback;

impl Agent for Loopback {
    fn handle(input: Value) -> Result<Value, Error> {
        let url = input.get("fetch").and_then(Value::as_str).ok_or_else(|| Error::invalid("give fetch: URL"))?;
        let response = http::get(url)?;
        Ok(json!({ "status": response.status, "body": response.text() }))
    }
}

corral_guest::export_agent!(Loopback, scopes = ["log", "net.fetch:http://127.0.0.1:*/**"]);

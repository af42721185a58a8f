//! `fetch`: performs one HTTP request through the host and returns what came back.
//!
//! Input `{"url": "https://example.com/", "method": "GET"}` (method optional; `headers`, an
//! object of strings, and `body`, a string, are optional too). Output
//! `{"status": 200, "headers": {...}, "body": "...", "truncated": false}`: the body is decoded
//! as UTF-8 (invalid bytes replaced) and cut at 64 KiB; repeated headers are joined with
//! `", "`. Scopes: `log`, `net.fetch` (target: the URL).
//!
//! With `"secrets": ["github"]` the host injects those operator-managed secrets into the
//! request (scope `secret.use`, target: each name); the agent names them and never sees their
//! values — a response that echoes one shows `[redacted]`. This is how an agent calls an
//! authenticated API: `corral secret set github --allow 'https://api.github.com/**' --bearer`,
//! then `{"url": "https://api.github.com/user", "secrets": ["github"]}`.

use std::collections::BTreeMap;

use corral_guest::http::{self, Request};
use corral_guest::{Agent, Error, Value, json, log};
use serde::Deserialize;

/// The most body bytes returned in the output.
const MAX_BODY: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    url: String,
    #[serde(default = "get")]
    method: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
    /// Secrets for the host to inject (by name).
    #[serde(default)]
    secrets: Vec<String>,
}

fn get() -> String {
    "GET".to_owned()
}

struct Fetch;

impl Agent for Fetch {
    fn handle(input: Value) -> Result<Value, Error> {
        let input: Input = corral_guest::serde_json::from_value(input)?;
        let mut request = Request::new(input.method.to_ascii_uppercase(), input.url);
        for (name, value) in input.headers {
            request = request.with_header(name, value);
        }
        if let Some(body) = input.body {
            request = request.with_body(body);
        }
        let _ = log::info(&format!("fetch: {} {}", request.method, request.url));
        let response = if input.secrets.is_empty() {
            http::fetch(&request)?
        } else {
            let names: Vec<&str> = input.secrets.iter().map(String::as_str).collect();
            http::fetch_with_secrets(&request, &names)?
        };

        let mut headers = BTreeMap::<String, String>::new();
        for (name, value) in &response.headers {
            headers
                .entry(name.to_ascii_lowercase())
                .and_modify(|joined| {
                    joined.push_str(", ");
                    joined.push_str(value);
                })
                .or_insert_with(|| value.clone());
        }
        let truncated = response.body.len() > MAX_BODY;
        let shown = response.body.get(..MAX_BODY).unwrap_or(&response.body);
        Ok(json!({
            "status": response.status,
            "headers": headers,
            "body": String::from_utf8_lossy(shown),
            "truncated": truncated,
        }))
    }
}

corral_guest::export_agent!(Fetch, scopes = ["log", "net.fetch", "secret.use"]);

//! A small corral API client: submit a job, follow its events, print its result.
//!
//! ```sh
//! cargo run -p corral-example-client -- counter '{"key": "visits"}'
//! CORRAL=http://127.0.0.1:7070 CORRAL_TOKEN=... cargo run -p corral-example-client
//! ```
//!
//! Arguments: the agent (default `echo`) and its input as JSON (default `{"hello": "corral"}`).
//! It submits `POST /v1/jobs`, reads `GET /v1/jobs/{id}/events` (Server-Sent Events, parsed
//! by hand below: `data:` lines, a blank line ends a message) until the job's final `state`
//! event, and reconnects with `Last-Event-ID` if the stream breaks. Exit status: 0 when the job
//! completed, 1 when it failed (or was cancelled or timed out), 2 when the host refused it or
//! could not be reached.

#![allow(clippy::print_stdout, reason = "printing is this program's job")]
#![allow(clippy::indexing_slicing, reason = "`value[\"key\"]` on serde_json::Value yields Null, never panics")]

use std::process::ExitCode;

use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    run().await.unwrap_or_else(|error| {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message = format!("{message}: {cause}");
            source = cause.source();
        }
        eprintln!("error: {message}");
        ExitCode::from(2)
    })
}

async fn run() -> Result<ExitCode, BoxError> {
    let mut args = std::env::args().skip(1);
    let agent = args.next().unwrap_or_else(|| "echo".to_owned());
    let input: Value = match args.next() {
        Some(text) => serde_json::from_str(&text).map_err(|e| format!("the input is not JSON: {e}"))?,
        None => json!({ "hello": "corral" }),
    };
    let base = std::env::var("CORRAL").unwrap_or_else(|_| "http://127.0.0.1:7070".to_owned());
    let api = Api { http: reqwest::Client::new(), base: base.trim_end_matches('/').to_owned() };

    let answer = api.request(Method::POST, "/v1/jobs").json(&json!({ "agent": agent, "input": input })).send().await?;
    let status = answer.status();
    let job: Value = answer.json().await?;
    if !status.is_success() {
        // Errors are {"error": {"code", "message"}} with stable codes.
        eprintln!("refused ({status}): {} — {}", text(&job["error"]["code"]), text(&job["error"]["message"]));
        return Ok(ExitCode::from(2));
    }
    let id = job["id"].as_str().ok_or("the answer has no job id")?.to_owned();
    println!("job {id} ({agent}) submitted");

    // Follow the events; if the stream breaks, resume after the last event seen.
    let mut last_seq = 0;
    let end = loop {
        if let Some(end) = api.follow(&id, &mut last_seq).await? {
            break end;
        }
        eprintln!("event stream ended early; resuming after event {last_seq}");
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    };
    // The final `state` event carries the job's output or error.
    if end["status"] == "completed" {
        println!("output: {}", serde_json::to_string_pretty(&end["output"])?);
        Ok(ExitCode::SUCCESS)
    } else {
        println!("job {}: {}", text(&end["status"]), end["error"]);
        Ok(ExitCode::FAILURE)
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    /// A request to the host, with the bearer token when `CORRAL_TOKEN` is set.
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match std::env::var("CORRAL_TOKEN") {
            Ok(token) if !token.is_empty() => request.bearer_auth(token),
            _ => request,
        }
    }

    /// Prints the job's events after `last_seq`; the final `state` event's data once it came.
    async fn follow(&self, id: &str, last_seq: &mut u64) -> Result<Option<Value>, BoxError> {
        let request = self.request(Method::GET, &format!("/v1/jobs/{id}/events"));
        let answer = request.header("last-event-id", last_seq.to_string()).send().await?;
        let mut body = answer.error_for_status()?.bytes_stream();
        let (mut pending, mut data) = (Vec::new(), String::new());
        while let Some(bytes) = body.next().await {
            pending.extend_from_slice(&bytes?);
            // Handle each complete line; a partial one waits for the next chunk.
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\r', '\n']);
                if let Some(payload) = line.strip_prefix("data:") {
                    data.push_str(payload.trim_start());
                } else if line.is_empty() && !data.is_empty() {
                    // A blank line ends the message. (`id:`, `event:` and `:` keep-alive
                    // lines carry nothing this client needs: the data repeats seq and kind.)
                    let event: Value = serde_json::from_str(&std::mem::take(&mut data))?;
                    *last_seq = event["seq"].as_u64().unwrap_or(*last_seq);
                    print_event(&event);
                    let status = text(&event["data"]["status"]);
                    if event["kind"] == "state" && !matches!(status, "queued" | "running") {
                        return Ok(Some(event["data"].clone()));
                    }
                }
            }
        }
        Ok(None)
    }
}

/// Prints one `{seq, kind, at, data}` event on one line.
fn print_event(event: &Value) {
    let d = &event["data"];
    let line = match text(&event["kind"]) {
        "state" => format!("→ {}", text(&d["status"])),
        "log" => format!("{}: {}", text(&d["level"]), text(&d["message"])),
        "progress" => format!("{}/{} {}", d["done"], d["total"], text(&d["message"])),
        "capability" => {
            [&d["decision"], &d["scope"], &d["target"], &d["reason"]].map(text).join(" ").trim_end().to_owned()
        }
        "chunk" => text(&d["data"]).to_owned(),
        "delegated" => format!("{} as job {}", text(&d["agent"]), text(&d["child_id"])),
        _ => d.to_string(), // kinds added later
    };
    let seq = event["seq"].as_u64().unwrap_or(0);
    println!("[{seq:>3}] {:<10} {line}", text(&event["kind"]));
}

/// A JSON string's text ("" for anything else).
fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("")
}

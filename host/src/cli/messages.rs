//! The message subcommands: `send`, `message`, `messages`, `inbox`. Thin: build the request,
//! print the answer (a table, or JSON with `--json`).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::client::Client;
use super::commands::{Done, Failure, stdout_line, stdout_text};
use super::render;

/// What `corral send` was asked to send.
pub(super) struct Send {
    pub recipient: String,
    pub topic: bool,
    pub payload: Option<Value>,
    pub message_type: Option<String>,
    pub idempotency_token: Option<String>,
    pub ack_timeout_ms: Option<u64>,
    pub ttl_ms: Option<u64>,
}

pub(super) async fn send(client: &Client, s: Send, json: bool) -> Result<Done, Failure> {
    let recipient = if s.topic { json!({ "topic": s.recipient }) } else { json!({ "agent": s.recipient }) };
    let mut body = json!({ "recipient": recipient, "payload": s.payload.unwrap_or(Value::Null) });
    let mut delivery = serde_json::Map::new();
    if let Some(ms) = s.ack_timeout_ms {
        delivery.insert("ack_timeout_ms".into(), ms.into());
    }
    if let Some(ms) = s.ttl_ms {
        delivery.insert("ttl_ms".into(), ms.into());
    }
    if let Some(map) = body.as_object_mut() {
        if let Some(t) = s.message_type {
            map.insert("message_type".into(), t.into());
        }
        if let Some(t) = s.idempotency_token {
            map.insert("idempotency_token".into(), t.into());
        }
        map.insert("delivery".into(), Value::Object(delivery));
    }
    let answer = client.send_message(&body).await?;
    if json {
        stdout_line(&render::pretty(&answer))?;
        return Ok(Done::Success);
    }
    let messages = answer.get("messages").and_then(Value::as_array).cloned().unwrap_or_default();
    if let Some(dup) = answer.get("duplicate").and_then(Value::as_str) {
        eprintln_quiet(&format!("{dup}: these were accepted before"));
    }
    for m in &messages {
        stdout_line(&format!("{} {} → {}", text(m, "id"), text(m, "stage"), field(m, "recipient")))?;
    }
    Ok(Done::Success)
}

pub(super) async fn show(client: &Client, id: &str) -> Result<Done, Failure> {
    stdout_line(&render::pretty(&client.message(id).await?))?;
    Ok(Done::Success)
}

/// `corral messages` filters.
pub(super) struct Query {
    pub producer: Option<String>,
    pub recipient: Option<String>,
    pub stage: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

impl Query {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        let fields = [
            ("producer", &self.producer),
            ("recipient", &self.recipient),
            ("stage", &self.stage),
            ("cursor", &self.cursor),
        ];
        for (name, value) in fields {
            if let Some(v) = value {
                pairs.push((name, v.clone()));
            }
        }
        if let Some(l) = self.limit {
            pairs.push(("limit", l.to_string()));
        }
        pairs
    }
}

pub(super) async fn list(client: &Client, query: &Query, json: bool) -> Result<Done, Failure> {
    let page = client.messages(&query.pairs()).await?;
    if json {
        stdout_line(&render::pretty(&page))?;
        return Ok(Done::Success);
    }
    let messages = page.get("messages").and_then(Value::as_array).cloned().unwrap_or_default();
    if messages.is_empty() {
        eprintln_quiet("no messages found");
    } else {
        stdout_text(&table(&messages))?;
    }
    if let Some(cursor) = page.get("next_cursor").and_then(Value::as_str) {
        eprintln_quiet(&format!("more: corral messages --cursor {cursor}"));
    }
    Ok(Done::Success)
}

/// The messages routed to `agent`; with `follow`, polls every second and prints each new
/// message and each stage change once.
pub(super) async fn inbox(client: &Client, agent: &str, follow: bool, json: bool) -> Result<Done, Failure> {
    let query =
        Query { producer: None, recipient: Some(agent.to_owned()), stage: None, limit: Some(1000), cursor: None };
    let mut seen: HashMap<String, String> = HashMap::new();
    loop {
        let page = client.messages(&query.pairs()).await?;
        let mut messages = page.get("messages").and_then(Value::as_array).cloned().unwrap_or_default();
        messages.reverse(); // oldest first
        for m in messages {
            let (id, stage) = (text(&m, "id"), text(&m, "stage"));
            if seen.get(&id) == Some(&stage) {
                continue;
            }
            seen.insert(id.clone(), stage.clone());
            if json {
                stdout_line(&render::compact(&m))?;
            } else {
                let payload = m.get("payload").map_or_else(|| text(&m, "payload_base64"), render::compact);
                stdout_line(&format!("{id} {stage:<9} from {} {payload}", field(&m, "producer_id")))?;
            }
        }
        if !follow {
            return Ok(Done::Success);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn table(messages: &[Value]) -> String {
    let rows: Vec<Vec<String>> = messages
        .iter()
        .map(|m| {
            vec![
                text(m, "id"),
                text(m, "stage"),
                field(m, "producer_id"),
                field(m, "recipient"),
                field(m, "message_type"),
                text(m, "created_at"),
            ]
        })
        .collect();
    render::table(&["ID", "STAGE", "PRODUCER", "RECIPIENT", "TYPE", "CREATED"], &rows)
}

/// A field of the message's envelope.
fn field(m: &Value, key: &str) -> String {
    m.get("envelope").map(|e| text(e, key)).unwrap_or_default()
}

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn eprintln_quiet(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

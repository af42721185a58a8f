//! `corral arcp invoke`: the CLI as an ARCP v1.1 client, against corral or any other ARCP
//! runtime. It opens a session (bearer token or anonymous), sends one `tool.invoke`, prints the
//! job's logs and progress to stderr as they arrive, reassembles `job.result_chunk`s, and
//! prints the result to stdout. Ctrl-C sends `cancel` and waits for the job to end.
//!
//! Outgoing envelopes are `arcp-core`'s typed ones; incoming frames are read as plain JSON, so
//! a type this client does not know (another runtime's extension) is skipped, not fatal.

use std::collections::BTreeMap;

use arcp_core::Envelope;
use arcp_core::ids::{IdempotencyKey, JobId, MessageId, SessionId};
use arcp_core::messages::{
    AuthScheme, CancelPayload, CancelTargetKind, Capabilities, ClientIdentity, CostBudget, Credentials, LeaseRequest,
    MessageType, SessionOpenPayload, ToolInvokePayload,
};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::commands::{Done, Failure, stderr_line, stdout_line};
use super::render;

/// What to run, and where.
#[derive(Debug)]
pub(super) struct Invoke {
    pub url: String,
    pub token: Option<String>,
    pub agent: String,
    pub input: Value,
    pub lease: Option<Value>,
    pub cost_budget: Vec<String>,
    pub idempotency_key: Option<String>,
    pub json: bool,
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn remote(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::Remote(format!("{what}: {e}"))
}

pub(super) async fn invoke(args: Invoke) -> Result<Done, Failure> {
    let open = open_envelope(args.token.clone());
    let invoke = invoke_envelope(&args)?;
    let (mut socket, _) = tokio_tungstenite::connect_async(args.url.as_str())
        .await
        .map_err(|e| remote(&format!("cannot connect to {}", args.url), e))?;
    send(&mut socket, &open).await?;
    let session = handshake(&mut socket, &open.id, args.json).await?;

    let mut invoke = invoke;
    invoke.session_id = Some(session.clone());
    send(&mut socket, &invoke).await?;
    let mut job = JobView { json: args.json, ..JobView::default() };
    let mut cancel_sent = false;
    loop {
        let frame = tokio::select! {
            frame = socket.next() => frame,
            _ = tokio::signal::ctrl_c(), if !cancel_sent => {
                cancel_sent = true;
                match job.id.clone() {
                    Some(id) => {
                        stderr_line("cancelling the job…");
                        let payload = CancelPayload {
                            target: CancelTargetKind::Job,
                            target_id: id.as_str().to_owned(),
                            reason: Some("ctrl-c".into()),
                            deadline_ms: None,
                        };
                        let mut cancel = Envelope::new(MessageType::Cancel(payload));
                        cancel.session_id = Some(session.clone());
                        send(&mut socket, &cancel).await?;
                    }
                    None => return Ok(Done::JobUnsuccessful),
                }
                continue;
            }
        };
        let Some(frame) = frame else {
            return Err(Failure::Remote("the runtime closed the connection before the job ended".into()));
        };
        let text = match frame.map_err(|e| remote("connection lost", e))? {
            Message::Text(text) => text,
            Message::Close(frame) => {
                let why = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                return Err(Failure::Remote(format!("the runtime closed the connection before the job ended {why}")));
            }
            _ => continue,
        };
        let Ok(envelope) = serde_json::from_str::<Value>(text.as_str()) else {
            stderr_line("skipping a frame that is not JSON");
            continue;
        };
        if envelope.get("correlation_id").and_then(Value::as_str) != Some(invoke.id.as_str()) {
            if let Some(evicted) = evicted(&envelope) {
                return Err(Failure::Remote(evicted));
            }
            continue;
        }
        if let Some(done) = job.on(&envelope)? {
            return Ok(done);
        }
    }
}

fn open_envelope(token: Option<String>) -> Envelope {
    let (auth, anonymous) = match token {
        Some(token) => (Credentials { scheme: AuthScheme::Bearer, token: Some(token) }, None),
        None => (Credentials { scheme: AuthScheme::None, token: None }, Some(true)),
    };
    let capabilities = Capabilities { streaming: Some(true), anonymous, ..Capabilities::default() };
    let client = ClientIdentity {
        kind: "corral-cli".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        fingerprint: None,
        principal: None,
    };
    Envelope::new(MessageType::SessionOpen(SessionOpenPayload { auth, client, capabilities }))
}

fn invoke_envelope(args: &Invoke) -> Result<Envelope, Failure> {
    let lease_request = match &args.lease {
        None => None,
        Some(lease) => Some(
            serde_json::from_value::<LeaseRequest>(lease.clone())
                .map_err(|e| Failure::Usage(format!("--lease is not an ARCP lease request: {e}")))?,
        ),
    };
    let cost_budget = if args.cost_budget.is_empty() {
        None
    } else {
        let amounts = Value::from(args.cost_budget.clone());
        Some(
            serde_json::from_value::<CostBudget>(amounts)
                .map_err(|e| Failure::Usage(format!("--cost-budget takes CURRENCY:AMOUNT, e.g. fuel:1000000 ({e})")))?,
        )
    };
    let payload =
        ToolInvokePayload { tool: args.agent.clone(), arguments: args.input.clone(), cost_budget, lease_request };
    let mut envelope = Envelope::new(MessageType::ToolInvoke(payload));
    if let Some(key) = &args.idempotency_key {
        envelope.idempotency_key =
            Some(IdempotencyKey::new(key.clone()).map_err(|e| Failure::Usage(format!("--idempotency-key: {e}")))?);
    }
    Ok(envelope)
}

async fn send(socket: &mut Socket, envelope: &Envelope) -> Result<(), Failure> {
    let text = serde_json::to_string(envelope).map_err(|e| remote("cannot encode an envelope", e))?;
    socket.send(Message::Text(text.into())).await.map_err(|e| remote("cannot send", e))
}

/// Waits for the answer to `session.open`; the session id on acceptance.
async fn handshake(socket: &mut Socket, open: &MessageId, json: bool) -> Result<SessionId, Failure> {
    while let Some(frame) = socket.next().await {
        let Message::Text(text) = frame.map_err(|e| remote("connection lost during the handshake", e))? else {
            continue;
        };
        let Ok(envelope) = serde_json::from_str::<Value>(text.as_str()) else { continue };
        if envelope.get("correlation_id").and_then(Value::as_str) != Some(open.as_str()) {
            continue;
        }
        if json {
            stdout_line(&render::compact(&envelope))?;
        }
        let payload = payload_of(&envelope);
        match envelope.get("type").and_then(Value::as_str) {
            Some("session.accepted") => {
                let id = payload.get("session_id").or_else(|| envelope.get("session_id")).cloned().unwrap_or_default();
                return serde_json::from_value(id).map_err(|e| remote("session.accepted without a session id", e));
            }
            Some("session.rejected") => {
                let code = payload.get("code").and_then(Value::as_str).unwrap_or("UNKNOWN");
                let message = payload.get("message").and_then(Value::as_str).unwrap_or_default();
                let hint = if code == "UNAUTHENTICATED" { " (pass --token or set CORRAL_TOKEN)" } else { "" };
                return Err(Failure::Remote(format!("session rejected: {code}: {message}{hint}")));
            }
            _ => continue,
        }
    }
    Err(Failure::Remote("the runtime closed the connection during the handshake".into()))
}

/// An envelope's `payload` (`null` when it has none).
fn payload_of(envelope: &Value) -> &Value {
    const NULL: &Value = &Value::Null;
    envelope.get("payload").unwrap_or(NULL)
}

fn evicted(envelope: &Value) -> Option<String> {
    (envelope.get("type").and_then(Value::as_str) == Some("session.evicted")).then(|| {
        let payload = payload_of(envelope);
        format!(
            "session evicted: {}: {}",
            payload.get("code").and_then(Value::as_str).unwrap_or("UNKNOWN"),
            payload.get("reason").and_then(Value::as_str).unwrap_or_default()
        )
    })
}

/// One job's envelopes as they arrive: printed, chunks collected, and the end recognised.
#[derive(Debug, Default)]
struct JobView {
    json: bool,
    id: Option<JobId>,
    /// Result chunks by `chunk_seq`, so out-of-order arrival still reassembles.
    chunks: BTreeMap<u64, String>,
}

impl JobView {
    /// Handles one envelope correlated to the invoke; `Some` once the job has ended.
    fn on(&mut self, envelope: &Value) -> Result<Option<Done>, Failure> {
        let kind = envelope.get("type").and_then(Value::as_str).unwrap_or_default();
        let payload = payload_of(envelope);
        let text = |key: &str| payload.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
        if self.json {
            stdout_line(&render::compact(envelope))?;
        }
        match kind {
            "job.accepted" => {
                self.id = serde_json::from_value(payload.get("job_id").cloned().unwrap_or_default()).ok();
                if !self.json {
                    stderr_line(&format!("job {}", text("job_id")));
                }
            }
            "log" if !self.json => stderr_line(&format!("[{}] {}", text("level"), text("message"))),
            "job.progress" if !self.json => {
                let percent =
                    payload.get("percent").and_then(Value::as_f64).map(|p| format!("{p:.0}% ")).unwrap_or_default();
                stderr_line(&format!("progress {percent}{}", text("message")));
            }
            "job.result_chunk" => {
                let seq = payload.get("chunk_seq").and_then(Value::as_u64).unwrap_or(self.chunks.len() as u64);
                self.chunks.insert(seq, text("data"));
            }
            "job.completed" => {
                if !self.json {
                    let value = match payload.get("value") {
                        Some(value) if !value.is_null() => render::pretty(value),
                        _ => self.chunks.values().map(String::as_str).collect(),
                    };
                    stdout_line(&value)?;
                }
                return Ok(Some(Done::Success));
            }
            "job.failed" | "job.cancelled" => {
                if !self.json {
                    let code = payload.get("code").and_then(Value::as_str).unwrap_or("CANCELLED");
                    let message = text("message");
                    let reason = text("reason");
                    stderr_line(&format!("{kind}: {code}: {message}{reason}"));
                }
                return Ok(Some(Done::JobUnsuccessful));
            }
            "nack" => {
                return Err(Failure::Remote(format!(
                    "the runtime refused the invoke: {}: {}",
                    text("code"),
                    text("message")
                )));
            }
            _ => {}
        }
        Ok(None)
    }
}

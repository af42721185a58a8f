//! `relay`: sends messages for its jobs and records what comes back.
//!
//! As a job:
//! - `{"send": {"to": "greeter", "payload": {...}, "count": 1, "require_ack": true,
//!   "token": "..."}}` sends `count` DATA messages (the token, if given, gets `-<i>` appended
//!   when `count` > 1) and returns `{"ids": [...]}` (`null` for a message that was accepted
//!   before with the same token, as when a job is run again after a restart);
//! - `{"publish": {"topic": "greetings", "payload": {...}}}` returns `{"ids": [...]}`;
//! - `{"ask": {"to": "greeter", "name": "ada", "timeout_ms": 5000}}` sends a request and
//!   returns the reply's payload.
//!
//! As a consumer: every ACKNOWLEDGEMENT it receives is stored at
//! `relay/ack/<message id>` (the ack's stage), so a test can see what the producer saw; other
//! messages are forwarded to `greeter`. Scopes: `log`, `agent.send`, `topic.publish`,
//! `swarm.send` (a `to` of the form `<swarm>/<host>/<agent>`: an agent on another host), kv on
//! `relay/**`.

use corral_guest::messaging::{self, Ack, Consumer, Envelope, ErrorCode, Message, MessageType};
use corral_guest::{Agent, Error, Value, json, kv};

struct Relay;

/// An ACK's stage as SW4RM's name: corral's ACKs carry names, SW4RM's SDK sends numbers (its
/// 0.6.0 constants say 10 for FAILED).
fn stage_name(stage: Option<&Value>) -> &str {
    match stage {
        Some(Value::String(name)) => name,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(1) => "RECEIVED",
            Some(2) => "READ",
            Some(3) => "FULFILLED",
            Some(4) => "REJECTED",
            Some(5 | 10) => "FAILED",
            Some(6) => "TIMED_OUT",
            _ => "",
        },
        _ => "",
    }
}

fn send(spec: &Value) -> Result<Value, Error> {
    let to = spec.get("to").and_then(Value::as_str).ok_or_else(|| Error::invalid("send needs \"to\""))?;
    let payload = spec.get("payload").cloned().unwrap_or(Value::Null);
    let count = spec.get("count").and_then(Value::as_u64).unwrap_or(1);
    let mut ids = Vec::new();
    for i in 0..count {
        let mut msg = Message::json(&payload)?;
        if spec.get("require_ack").and_then(Value::as_bool) == Some(true) {
            msg = msg.require_ack();
        }
        if let Some(token) = spec.get("token").and_then(Value::as_str) {
            msg = msg.with_token(if count > 1 { format!("{token}-{i}") } else { token.to_owned() });
        }
        match messaging::send(to, &msg) {
            Ok(id) => ids.push(Value::from(id)),
            // A re-run job sending the same logical message again: already accepted, not an error.
            Err(Error::Refused { code: ErrorCode::DuplicateDetected | ErrorCode::AlreadyInProgress, .. }) => {
                ids.push(Value::Null);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(json!({ "ids": ids }))
}

impl Agent for Relay {
    fn handle(input: Value) -> Result<Value, Error> {
        if let Some(spec) = input.get("send") {
            return send(spec);
        }
        if let Some(spec) = input.get("publish") {
            let topic = spec.get("topic").and_then(Value::as_str).ok_or_else(|| Error::invalid("publish needs \"topic\""))?;
            let msg = Message::json(&spec.get("payload").cloned().unwrap_or(Value::Null))?;
            return Ok(json!({ "ids": messaging::publish(topic, &msg)? }));
        }
        if let Some(spec) = input.get("ask") {
            let to = spec.get("to").and_then(Value::as_str).ok_or_else(|| Error::invalid("ask needs \"to\""))?;
            let name = spec.get("name").and_then(Value::as_str).unwrap_or("world");
            let timeout = spec.get("timeout_ms").and_then(Value::as_u64).unwrap_or(5_000);
            let msg = Message::json(&json!({ "name": name, "reply": true }))?;
            let reply = messaging::request(to, &msg, u32::try_from(timeout).unwrap_or(u32::MAX))?;
            return Ok(json!({ "reply": reply.json::<Value>()?, "from": reply.producer_id }));
        }
        Err(Error::invalid("give one of send, publish, ask"))
    }
}

impl Consumer for Relay {
    fn on_message(msg: Envelope) -> Ack {
        if msg.message_type == MessageType::Acknowledgement {
            let Ok(ack) = msg.json::<Value>() else { return Ack::Failed("unreadable acknowledgement".into()) };
            // corral's ACKs name the message (`message`); SW4RM's SDK names the attempt.
            let id = ack.get("message").or_else(|| ack.get("ack_for_message_id")).and_then(Value::as_str).unwrap_or_default();
            let stage = stage_name(ack.get("ack_stage"));
            return match kv::set("relay", &format!("ack/{id}"), stage.as_bytes()) {
                Ok(()) => Ack::Fulfilled,
                Err(e) => Ack::Failed(e.to_string()),
            };
        }
        let forwarded = Message::bytes(msg.content_type.clone(), msg.payload.clone());
        match messaging::send("greeter", &forwarded) {
            Ok(_) => Ack::Fulfilled,
            Err(e) => Ack::Failed(format!("cannot forward to greeter: {e}")),
        }
    }
}

corral_guest::export_consumer!(
    Relay,
    scopes = ["log", "agent.send", "topic.publish", "swarm.send", "kv.read:relay/**", "kv.write:relay/**"],
    capabilities = ["relay"],
);

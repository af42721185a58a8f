//! `greeter`: a message consumer. Each message `{"name": "ada", "reply": true}` it receives is
//! greeted: it counts the greeting in `greeter/greeted`, counts the message's idempotency token
//! in `greeter/seen/<token>` (a redelivered message never counts twice: a delivery's kv writes
//! commit with its outcome), and, when `reply` is true, answers the producer with
//! `{"greeting": "hello, ada"}` (what `relay`'s `ask` waits for). Subscribes to `greetings`.
//!
//! As a job, `{"name": "ada"}` returns the greeting directly. Scopes: `log`, `agent.send`
//! (replies), kv on `greeter/**`.

use corral_guest::messaging::{self, Ack, Consumer, Envelope, ErrorCode, Message};
use corral_guest::{Agent, Error, Value, json, kv, log};

struct Greeter;

fn greeting(name: &str) -> String {
    format!("hello, {name}")
}

impl Agent for Greeter {
    fn handle(input: Value) -> Result<Value, Error> {
        let name = input.get("name").and_then(Value::as_str).unwrap_or("world");
        Ok(json!({ "greeting": greeting(name) }))
    }
}

impl Consumer for Greeter {
    fn on_message(msg: Envelope) -> Ack {
        let Ok(body) = msg.json::<Value>() else {
            return Ack::rejected(ErrorCode::ValidationError, "expected a JSON payload like {\"name\": \"ada\"}");
        };
        let name = body.get("name").and_then(Value::as_str).unwrap_or("world");
        if let Err(e) = kv::increment("greeter", "greeted", 1) {
            return Ack::Failed(format!("cannot count the greeting: {e}"));
        }
        if !msg.idempotency_token.is_empty()
            && let Err(e) = kv::increment("greeter", &format!("seen/{}", msg.idempotency_token), 1)
        {
            return Ack::Failed(format!("cannot count the token: {e}"));
        }
        let _ = log::info(&format!("greeting {name} (from {})", msg.producer_id));
        if body.get("reply").and_then(Value::as_bool) == Some(true) {
            let answer = match Message::json(&json!({ "greeting": greeting(name) })) {
                Ok(m) => m,
                Err(e) => return Ack::Failed(e.to_string()),
            };
            if let Err(e) = messaging::reply(&msg, &answer) {
                return Ack::Failed(format!("cannot reply to {}: {e}", msg.producer_id));
            }
        }
        Ack::Fulfilled
    }
}

corral_guest::export_consumer!(
    Greeter,
    scopes = ["log", "agent.send", "kv.read:greeter/**", "kv.write:greeter/**"],
    topics = ["greetings"],
    capabilities = ["greeting"],
);

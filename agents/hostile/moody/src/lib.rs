//! Hostile `moody`: a message consumer that misbehaves as each message's JSON payload asks:
//! `{"trap": true}` panics (a trap: the delivery FAILS), `{"spin": true}` loops forever (the
//! ack timeout ends it: TIMED_OUT, then retries), `{"reject": "why"}` rejects with
//! VALIDATION_ERROR, `{"kv": true}` increments `moody/writes` (denied unless the producer's
//! principal may write kv) and fails the delivery if that is refused; anything else is
//! FULFILLED. Scopes: `log`, kv on `moody/**`.

use corral_guest::messaging::{Ack, Consumer, Envelope, ErrorCode};
use corral_guest::{Agent, Error, Value, kv};

struct Moody;

impl Agent for Moody {
    fn handle(input: Value) -> Result<Value, Error> {
        Ok(input)
    }
}

impl Consumer for Moody {
    fn on_message(msg: Envelope) -> Ack {
        let body: Value = msg.json().unwrap_or(Value::Null);
        if body.get("trap").and_then(Value::as_bool) == Some(true) {
            #[allow(clippy::panic)]
            {
                panic!("moody was asked to trap");
            }
        }
        if body.get("spin").and_then(Value::as_bool) == Some(true) {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if let Some(why) = body.get("reject").and_then(Value::as_str) {
            return Ack::rejected(ErrorCode::ValidationError, why);
        }
        if body.get("kv").and_then(Value::as_bool) == Some(true)
            && let Err(e) = kv::increment("moody", "writes", 1)
        {
            return Ack::Failed(format!("kv write refused: {e}"));
        }
        Ack::Fulfilled
    }
}

corral_guest::export_consumer!(Moody, scopes = ["log", "kv.read:moody/**", "kv.write:moody/**"]);

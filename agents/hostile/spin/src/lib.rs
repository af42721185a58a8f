//! Hostile `spin`: burns CPU without ever calling the host, so only the engine (epoch
//! deadline, cancellation, fuel) can stop it. Declares no scopes.
//!
//! Input `{"iterations": N}` makes it finite (it then returns `{"iterations": N}`), which the
//! tests use for a job that is busy for a while and then completes; any other input loops
//! forever.

use corral_guest::{Agent, Error, Value, json};

struct Spin;

impl Agent for Spin {
    fn handle(input: Value) -> Result<Value, Error> {
        let limit = input.get("iterations").and_then(Value::as_u64);
        let mut n: u64 = 0;
        loop {
            // `black_box` keeps the optimizer from proving the loop pointless.
            n = core::hint::black_box(n.wrapping_add(1));
            if limit.is_some_and(|l| n >= l) {
                return Ok(json!({ "iterations": n }));
            }
        }
    }
}

corral_guest::export_agent!(Spin, scopes = []);

//! Hostile `flood`: writes log lines in an endless loop and ignores every error (denials,
//! budget refusals). The host's event budget, host-call budget or deadline must stop it
//! without flooding the store. Scope: `log`.

use corral_guest::{Agent, Error, Value, log};

struct Flood;

impl Agent for Flood {
    fn handle(_input: Value) -> Result<Value, Error> {
        let mut n: u64 = 0;
        loop {
            let _ = log::info(&format!("flood {n}"));
            n = n.wrapping_add(1);
        }
    }
}

corral_guest::export_agent!(Flood, scopes = ["log"]);

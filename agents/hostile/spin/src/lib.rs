//! Hostile `spin`: never returns. It makes no host calls, so only the engine's deadline
//! (epoch interruption) can stop it. Declares no scopes.

use corral_guest::{Agent, Error, Value};

struct Spin;

impl Agent for Spin {
    fn handle(_input: Value) -> Result<Value, Error> {
        let mut n: u64 = 0;
        loop {
            // `black_box` keeps the optimizer from proving the loop pointless.
            n = core::hint::black_box(n.wrapping_add(1));
        }
    }
}

corral_guest::export_agent!(Spin, scopes = []);

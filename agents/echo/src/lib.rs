//! `echo`: returns its input, wrapped as `{"echo": input}`. The smallest useful agent, used to
//! check the whole path from request to result. Scope: `log`.

use corral_guest::{Agent, Error, Value, json, log};

struct Echo;

impl Agent for Echo {
    fn handle(input: Value) -> Result<Value, Error> {
        // Logging is best effort: echo works even under a lease without `log`.
        let _ = log::info("echo: returning the input");
        Ok(json!({ "echo": input }))
    }
}

corral_guest::export_agent!(Echo, scopes = ["log"]);

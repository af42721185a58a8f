//! `orchestrator`: runs a list of tasks as child jobs, one after the other.
//!
//! Input `{"tasks": [{"agent": "echo", "input": {...}, "lease": {...}}, ...]}` (`lease`
//! optional; without `tasks`, two echo tasks). Before task `i` of `n` it reports progress
//! `(i, n, "delegating to <agent>")`; each child's output is streamed as one result chunk (its
//! JSON text); a final progress `(n, n, "done")` closes the run. Output `{"results": [...]}`,
//! the children's outputs in order. The first delegation error fails the job with that error.
//! Scopes: `log`, `events`, `agent.delegate` (target: the agent reference), and
//! `swarm.delegate` for a task whose agent is on another host (`<swarm>/<host>/<agent>`).

use corral_guest::{Agent, Error, Value, events, jobs, json, log};

struct Orchestrator;

impl Agent for Orchestrator {
    fn handle(input: Value) -> Result<Value, Error> {
        let tasks = match input.get("tasks") {
            None | Some(Value::Null) => vec![
                json!({ "agent": "echo", "input": { "task": 1 } }),
                json!({ "agent": "echo", "input": { "task": 2 } }),
            ],
            Some(Value::Array(tasks)) => tasks.clone(),
            Some(_) => {
                return Err(Error::invalid(
                    "\"tasks\" must be an array of {agent, input, lease?}",
                ));
            }
        };
        let total = tasks.len() as u64;
        let mut results = Vec::with_capacity(tasks.len());
        for (i, task) in tasks.iter().enumerate() {
            let agent = task
                .get("agent")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::invalid(format!("task {i} has no \"agent\" string")))?;
            let child_input = task.get("input").cloned().unwrap_or(Value::Null);
            let lease = task.get("lease").filter(|lease| !lease.is_null());

            events::progress(i as u64, total, &format!("delegating to {agent}"))?;
            let output = jobs::delegate(agent, &child_input, lease).inspect_err(|err| {
                let _ = log::warn(&format!("task {i} ({agent}) failed: {err}"));
            })?;
            events::chunk_json(&output)?;
            results.push(output);
        }
        events::progress(total, total, "done")?;
        Ok(json!({ "results": results }))
    }
}

corral_guest::export_agent!(Orchestrator, scopes = ["log", "events", "agent.delegate", "swarm.delegate"]);

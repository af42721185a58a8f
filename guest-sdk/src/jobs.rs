//! Delegation: run another agent as a child job and wait for its result. Scope
//! `agent.delegate`; the target of the check is the agent reference (`name` or
//! `name@version`).

use crate::bindings::corral::agent::jobs as wit;
use crate::{Error, Value};

/// Runs `agent` (`name` or `name@version`) as a child job with this input and returns its
/// output.
///
/// `lease` is an optional lease request, in the same shape as the HTTP API's `lease` (e.g.
/// `{"grants": {"kv.read": ["counter/*"]}}`). It must lie within this job's own lease or the
/// call is denied; without it the child gets what this job holds. The child's failure comes
/// back as this call's error.
pub fn delegate(agent: &str, input: &Value, lease: Option<&Value>) -> Result<Value, Error> {
    let input = serde_json::to_string(input)
        .map_err(|err| Error::invalid(format!("cannot serialize input for {agent}: {err}")))?;
    let lease = lease
        .map(serde_json::to_string)
        .transpose()
        .map_err(|err| Error::invalid(format!("cannot serialize lease for {agent}: {err}")))?;
    let output = wit::delegate(agent, &input, lease.as_deref())?;
    serde_json::from_str(&output)
        .map_err(|err| Error::failed(format!("agent {agent} returned output that is not JSON: {err}")))
}

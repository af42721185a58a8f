//! An ARCP `lease_request` (and `cost_budget`) as corral's lease request.
//!
//! The extra keys of ARCP's lease request are corral's own (`grants`, `limits`, `ttl_ms`);
//! `expires_at` is honoured (already past → `LEASE_EXPIRED`). A **cost budget** is spent in
//! what corral's engine meters itself, so it is enforced by the engine rather than by trusting
//! the agent to report its costs: `fuel:N` (Wasm instructions, roughly), `host_calls:N` and
//! `net_bytes:N`. Each amount can only lower the matching lease limit, so a budget never grants
//! more than the ceiling; a job that runs out fails `BUDGET_EXHAUSTED` (fuel, host calls) or
//! has its next fetch refused (net bytes, a typed error the agent handles). corral has no
//! price list, so a money currency (`USD:…`) is refused rather than silently ignored, and so is
//! `model_use`: corral makes no model calls of its own that it could check against it.

use arcp_core::ErrorCode;
use arcp_core::messages::{CostBudget, LeaseRequest};
use serde_json::{Map, Value};

/// A currency corral meters, and the lease limit it lowers.
#[derive(Debug)]
pub struct Metered {
    pub currency: &'static str,
    pub limit: &'static str,
}

/// The currencies a cost budget may use.
pub const METERED: [Metered; 3] = [
    Metered { currency: "fuel", limit: "fuel" },
    Metered { currency: "host_calls", limit: "max_host_calls" },
    Metered { currency: "net_bytes", limit: "net_bytes" },
];

/// The largest amount that converts exactly from the wire's `f64`.
const MAX_AMOUNT: f64 = 9_007_199_254_740_992.0; // 2^53

type Refusal = (ErrorCode, String);

/// corral's lease request (JSON, for the job engine) from an invoke's `lease_request` and
/// top-level `cost_budget`; the lease request's own budget takes precedence, as in ARCP.
pub fn lease_request(request: Option<LeaseRequest>, top_level: Option<CostBudget>) -> Result<Option<Value>, Refusal> {
    let request = request.unwrap_or_default();
    if request.model_use.is_some() {
        let message =
            "lease_request.model_use is not supported: corral makes no model calls it could check (docs/arcp.md)";
        return Err((ErrorCode::Unimplemented, message.to_owned()));
    }
    let mut lease: Map<String, Value> = request.extra.into_iter().collect();
    if let Some(at) = request.expires_at {
        if at <= chrono::Utc::now() {
            return Err((ErrorCode::LeaseExpired, format!("lease_request.expires_at {at} has passed")));
        }
        lease.insert("expires_at".into(), Value::String(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)));
    }
    if let Some(budget) = request.cost_budget.or(top_level) {
        apply_budget(&mut lease, &budget)?;
    }
    Ok(if lease.is_empty() { None } else { Some(Value::Object(lease)) })
}

/// Lowers `lease.limits` to the budget's amounts.
fn apply_budget(lease: &mut Map<String, Value>, budget: &CostBudget) -> Result<(), Refusal> {
    let invalid = |message: String| (ErrorCode::InvalidArgument, message);
    let limits = lease.entry("limits").or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(limits) = limits else {
        return Err(invalid("lease_request.limits must be an object".into()));
    };
    for amount in &budget.amounts {
        let Some(metered) = METERED.iter().find(|m| m.currency == amount.currency) else {
            let known: Vec<&str> = METERED.iter().map(|m| m.currency).collect();
            return Err(invalid(format!(
                "cost_budget currency `{}` is not metered by corral; use {}",
                amount.currency,
                known.join(", ")
            )));
        };
        if amount.amount.fract() != 0.0 || !(0.0..=MAX_AMOUNT).contains(&amount.amount) {
            return Err(invalid(format!("cost_budget {}:{} must be a whole number", amount.currency, amount.amount)));
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // whole, 0 ≤ amount ≤ 2^53: exact
        let amount = amount.amount as u64;
        let lowered = match limits.get(metered.limit).and_then(Value::as_u64) {
            Some(asked) => asked.min(amount),
            None => amount,
        };
        limits.insert(metered.limit.into(), Value::from(lowered));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use serde_json::json;

    fn budget(amounts: &[&str]) -> CostBudget {
        serde_json::from_value(json!(amounts)).unwrap()
    }

    fn request(value: Value) -> LeaseRequest {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_budget_lowers_the_matching_limits_and_never_raises_them() {
        let asked = request(json!({"limits": {"fuel": 500, "deadline_ms": 100}}));
        let lease = lease_request(Some(asked), Some(budget(&["fuel:1000", "host_calls:3"]))).unwrap().unwrap();
        assert_eq!(lease["limits"], json!({"fuel": 500, "deadline_ms": 100, "max_host_calls": 3}));
        let lease = lease_request(None, Some(budget(&["net_bytes:4096"]))).unwrap().unwrap();
        assert_eq!(lease, json!({"limits": {"net_bytes": 4096}}));
    }

    #[test]
    fn the_lease_requests_own_budget_wins_over_the_top_level_one() {
        let asked = request(json!({"cost_budget": ["fuel:10"]}));
        let lease = lease_request(Some(asked), Some(budget(&["fuel:99"]))).unwrap().unwrap();
        assert_eq!(lease["limits"]["fuel"], 10);
    }

    #[test]
    fn money_fractions_and_model_use_are_refused_not_ignored() {
        let (code, message) = lease_request(None, Some(budget(&["USD:5.00"]))).unwrap_err();
        assert_eq!(code, ErrorCode::InvalidArgument);
        assert!(message.contains("USD"), "{message}");
        let (code, _) = lease_request(None, Some(budget(&["fuel:1.5"]))).unwrap_err();
        assert_eq!(code, ErrorCode::InvalidArgument);
        let (code, _) = lease_request(Some(request(json!({"model_use": ["gpt-*"]}))), None).unwrap_err();
        assert_eq!(code, ErrorCode::Unimplemented);
        let (code, _) = lease_request(Some(request(json!({"limits": 3}))), Some(budget(&["fuel:1"]))).unwrap_err();
        assert_eq!(code, ErrorCode::InvalidArgument);
    }

    #[test]
    fn a_past_expiry_is_lease_expired() {
        let (code, _) = lease_request(Some(request(json!({"expires_at": "2020-01-01T00:00:00Z"}))), None).unwrap_err();
        assert_eq!(code, ErrorCode::LeaseExpired);
    }
}

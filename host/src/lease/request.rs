//! What a submitter asks for ([`LeaseRequest`]), what an operator allows ([`LeaseCeiling`]), and
//! how the effective lease of a job is computed from them ([`Lease::effective`]).
//!
//! A request can only *narrow*: grants are intersected, limits take the minimum, expiry the
//! earliest. Against the operator's ceiling, asking for more is silently clamped (the ceiling is
//! policy the submitter may not know). Against a parent job it is an error instead: a delegating
//! agent that asks for more than it holds has a bug, and silently shrinking its child's lease
//! would turn that bug into confusing denials later.

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use super::{Grants, LEASE_CAP, Lease, LeaseError, Limits, LimitsRequest, NamedAddresses, REQUEST_CAP, rfc3339};

/// Longest lease request accepted as JSON text (a delegating guest's `lease` argument), checked
/// before it is parsed.
pub const MAX_REQUEST_JSON_BYTES: usize = 64 * 1024;

/// A submitter's lease request, e.g.
/// `{"grants": {"kv.read": ["counter/*"]}, "ttl_ms": 60000, "limits": {"deadline_ms": 5000}}`.
/// Every field is optional; an absent field narrows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RequestRepr")]
pub struct LeaseRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grants: Option<Grants>,
    /// An absolute expiry. Mutually exclusive with `ttl_ms`.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "rfc3339::serialize_option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Expiry relative to submission, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    #[serde(skip_serializing_if = "LimitsRequest::is_empty")]
    pub limits: LimitsRequest,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestRepr {
    #[serde(default)]
    grants: Option<Grants>,
    #[serde(default, deserialize_with = "rfc3339::deserialize_option")]
    expires_at: Option<OffsetDateTime>,
    #[serde(default)]
    ttl_ms: Option<u64>,
    #[serde(default)]
    limits: LimitsRequest,
}

impl TryFrom<RequestRepr> for LeaseRequest {
    type Error = LeaseError;

    fn try_from(repr: RequestRepr) -> Result<Self, Self::Error> {
        let request =
            LeaseRequest { grants: repr.grants, expires_at: repr.expires_at, ttl_ms: repr.ttl_ms, limits: repr.limits };
        request.validate()?;
        Ok(request)
    }
}

impl LeaseRequest {
    /// Parse and validate a JSON request; every problem becomes [`LeaseError::Invalid`].
    pub fn parse_json(json: &str) -> Result<LeaseRequest, LeaseError> {
        if json.len() > MAX_REQUEST_JSON_BYTES {
            return Err(LeaseError::Invalid(format!(
                "the lease request is {} bytes; at most {MAX_REQUEST_JSON_BYTES} are accepted",
                json.len()
            )));
        }
        serde_json::from_str(json).map_err(|e| LeaseError::Invalid(format!("invalid lease request: {e}")))
    }

    /// Checks that do not depend on the current time.
    pub fn validate(&self) -> Result<(), LeaseError> {
        if self.expires_at.is_some() && self.ttl_ms.is_some() {
            return Err(LeaseError::Invalid("give either expires_at or ttl_ms, not both".to_owned()));
        }
        if self.ttl_ms == Some(0) {
            return Err(LeaseError::Invalid("ttl_ms must be at least 1 (omit it for the policy's maximum)".to_owned()));
        }
        if let Some(grants) = &self.grants {
            grants.size().check(REQUEST_CAP, "the requested grants").map_err(LeaseError::Invalid)?;
        }
        Ok(())
    }
}

/// The operator's policy for one principal: the most any of its jobs may get.
/// Deserializes from TOML or JSON, with grants in the flat user form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseCeiling {
    pub grants: Grants,
    pub limits: Limits,
    /// Longest lease lifetime this principal may get, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl_ms: Option<u64>,
}

fn add_ms(now: OffsetDateTime, ms: u64) -> Option<OffsetDateTime> {
    let ms = i64::try_from(ms).ok()?;
    now.checked_add(Duration::milliseconds(ms))
}

impl Lease {
    /// The lease a job runs under: `declared ∩ ceiling ∩ request ∩ parent`.
    ///
    /// - grants: intersection of all four (the request's only if it gave grants);
    /// - limits: field-wise minimum; a child's `delegation_depth` is its parent's minus one;
    /// - `expires_at`: the earliest of the request's (`expires_at`, or `now + ttl_ms`), the
    ///   ceiling's `now + max_ttl_ms` and the parent's.
    ///
    /// For a delegated job (`parent` given), `parent` should be the parent's *remaining* lease
    /// (budgets already spent subtracted). Requested grants or limits beyond it are refused with
    /// [`LeaseError::WiderThanParent`]; an expired parent or one with `delegation_depth` 0 cannot
    /// delegate. Counting how many children a parent has started (`max_children`) is the
    /// scheduler's job; this only bounds the child's own limits.
    pub fn effective(
        declared: &Grants,
        ceiling: &LeaseCeiling,
        request: &LeaseRequest,
        parent: Option<&Lease>,
        now: OffsetDateTime,
    ) -> Result<Lease, LeaseError> {
        request.validate()?;
        let mut grants = declared.intersect(&ceiling.grants);
        if let Some(requested) = &request.grants {
            grants = grants.intersect(requested);
        }
        let mut limits = ceiling.limits.narrowed_by(&request.limits);
        // Addresses are named by the operator alone: never by the manifest or the request.
        let mut named_addresses = NamedAddresses::from_ceiling(&ceiling.grants);

        let mut expiries = Vec::with_capacity(3);
        if let Some(at) = request.expires_at {
            if at <= now {
                return Err(LeaseError::Invalid(format!(
                    "expires_at {} is not in the future; give a later time or use ttl_ms",
                    rfc3339::display(at)
                )));
            }
            expiries.push(at);
        }
        if let Some(ttl) = request.ttl_ms {
            let at = add_ms(now, ttl)
                .ok_or_else(|| LeaseError::Invalid(format!("ttl_ms {ttl} is too large; give a smaller value")))?;
            expiries.push(at);
        }
        // A bound too far in the future to represent is no bound.
        if let Some(at) = ceiling.max_ttl_ms.and_then(|max| add_ms(now, max)) {
            expiries.push(at);
        }

        if let Some(parent) = parent {
            if let Some(at) = parent.expires_at.filter(|_| parent.is_expired(now)) {
                return Err(LeaseError::ParentExpired { at: rfc3339::display(at) });
            }
            let depth = parent.limits.delegation_depth.checked_sub(1).ok_or(LeaseError::DelegationDepthExhausted)?;
            let room = Limits { delegation_depth: depth, ..parent.limits };
            if let Some(requested) = &request.grants {
                requested
                    .is_within(&parent.grants)
                    .map_err(|e| LeaseError::WiderThanParent { detail: e.to_string() })?;
            }
            let excess = request.limits.excess_over(&room);
            if !excess.is_empty() {
                return Err(LeaseError::WiderThanParent {
                    detail: format!("limits exceed the parent's ({})", excess.join(", ")),
                });
            }
            grants = grants.intersect(&parent.grants);
            named_addresses = named_addresses.intersect(&parent.named_addresses);
            limits = limits.intersect(&room);
            expiries.extend(parent.expires_at);
        }

        grants
            .size()
            .check(LEASE_CAP, "the effective lease's grants (manifest ∩ policy ∩ request ∩ parent)")
            .map_err(|e| LeaseError::Invalid(format!("{e}; request fewer or broader patterns")))?;
        Ok(Lease { grants, named_addresses, expires_at: expiries.into_iter().min(), limits })
    }

    /// This lease narrowed by a (possibly changed) policy ceiling, e.g. for a job re-run after
    /// a restart: it never gets more than the principal's current ceiling allows.
    pub fn narrowed_by_ceiling(&self, ceiling: &LeaseCeiling) -> Lease {
        Lease {
            grants: self.grants.intersect(&ceiling.grants),
            named_addresses: self.named_addresses.intersect(&NamedAddresses::from_ceiling(&ceiling.grants)),
            limits: self.limits.intersect(&ceiling.limits),
            expires_at: self.expires_at,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::lease::Scope;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-21 09:00 UTC);

    fn grants(json: &str) -> Grants {
        serde_json::from_str(json).unwrap()
    }

    fn ceiling() -> LeaseCeiling {
        LeaseCeiling {
            grants: grants(
                r#"{"log": ["**"], "kv.read": ["counter/**"], "kv.write": ["counter/**"],
                    "net.fetch": ["http://127.0.0.1:8080/**"], "agent.delegate": ["**"]}"#,
            ),
            limits: Limits {
                deadline_ms: 10_000,
                memory_bytes: 64 << 20,
                fuel: 1_000_000,
                max_host_calls: 1_000,
                net_bytes: 1 << 20,
                delegation_depth: 2,
                max_children: 4,
                kv_bytes: 1 << 20,
                max_output_bytes: 1 << 20,
            },
            max_ttl_ms: Some(3_600_000),
        }
    }

    fn declared() -> Grants {
        Grants::from_declared(&[
            "log".to_owned(),
            "kv.read".to_owned(),
            "kv.write:counter/*".to_owned(),
            "net.fetch".to_owned(),
            "agent.delegate".to_owned(),
            "events".to_owned(),
        ])
        .unwrap()
    }

    fn root(request: &str) -> Lease {
        let request = LeaseRequest::parse_json(request).unwrap();
        Lease::effective(&declared(), &ceiling(), &request, None, NOW).unwrap()
    }

    #[test]
    fn effective_grants_are_the_intersection_of_all_sources() {
        let lease = root(r#"{"grants": {"kv.read": ["counter/a", "other"], "log": ["**"]}}"#);
        let allowed = |scope, target| lease.check(scope, target, NOW).is_ok();
        assert!(allowed(Scope::KvRead, "counter/a"));
        assert!(!allowed(Scope::KvRead, "other")); // not in the ceiling
        assert!(!allowed(Scope::KvRead, "counter/b")); // not requested
        assert!(!allowed(Scope::KvWrite, "counter/a")); // not requested
        assert!(!allowed(Scope::Events, "progress")); // not in the ceiling
        assert!(allowed(Scope::Log, "info"));
    }

    #[test]
    fn request_without_grants_narrows_nothing() {
        let lease = root("{}");
        assert!(lease.check(Scope::KvWrite, "counter/a", NOW).is_ok());
        assert!(lease.check(Scope::KvWrite, "counter/a/b", NOW).is_err()); // declared `counter/*`
        assert!(lease.check(Scope::NetFetch, "http://127.0.0.1:8080/x", NOW).is_ok());
        assert!(lease.check(Scope::NetFetch, "http://127.0.0.1:9/x", NOW).is_err());
        assert_eq!(lease.limits, ceiling().limits);
        assert_eq!(lease.expires_at, Some(datetime!(2026-11-21 10:00 UTC)));
    }

    #[test]
    fn limits_take_the_minimum_and_ceiling_clamps_silently() {
        let lease = root(r#"{"limits": {"deadline_ms": 5000, "fuel": 99999999999}}"#);
        assert_eq!(lease.limits.deadline_ms, 5_000);
        assert_eq!(lease.limits.fuel, 1_000_000);
    }

    #[test]
    fn expiry_is_the_earliest_of_request_and_ceiling() {
        assert_eq!(root(r#"{"ttl_ms": 60000}"#).expires_at, Some(datetime!(2026-11-21 09:01 UTC)));
        assert_eq!(root(r#"{"expires_at": "2026-11-22T00:00:00Z"}"#).expires_at, Some(datetime!(2026-11-21 10:00 UTC)));
        assert_eq!(
            root(r#"{"expires_at": "2026-11-21T09:30:00+00:00"}"#).expires_at,
            Some(datetime!(2026-11-21 09:30 UTC))
        );
        let no_bound = LeaseCeiling { max_ttl_ms: None, ..ceiling() };
        let lease = Lease::effective(&declared(), &no_bound, &LeaseRequest::default(), None, NOW);
        assert_eq!(lease.unwrap().expires_at, None);
        let huge = LeaseRequest { ttl_ms: Some(u64::MAX), ..LeaseRequest::default() };
        let err = Lease::effective(&declared(), &no_bound, &huge, None, NOW).unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");
    }

    #[test]
    fn past_expiry_is_refused() {
        let request = LeaseRequest::parse_json(r#"{"expires_at": "2026-11-21T08:00:00Z"}"#).unwrap();
        let err = Lease::effective(&declared(), &ceiling(), &request, None, NOW).unwrap_err();
        assert!(err.to_string().contains("is not in the future"), "{err}");
    }

    #[test]
    fn request_validation_errors_say_what_is_wrong() {
        let err = LeaseRequest::parse_json(r#"{"grants": {"kv.wrte": ["x"]}}"#).unwrap_err();
        assert!(matches!(err, LeaseError::Invalid(_)));
        assert!(err.to_string().contains("unknown scope 'kv.wrte' (known: log, kv.read,"), "{err}");
        let err = LeaseRequest::parse_json(r#"{"grants": {"kv.read": ["a***"]}}"#).unwrap_err();
        assert!(err.to_string().contains("invalid pattern 'a***' for kv.read"), "{err}");
        let err = LeaseRequest::parse_json(r#"{"ttl_ms": 5, "expires_at": "2026-11-21T10:00:00Z"}"#).unwrap_err();
        assert!(err.to_string().contains("either expires_at or ttl_ms"), "{err}");
        let err = LeaseRequest::parse_json(r#"{"ttl": 5}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `ttl`"), "{err}");
        let err = LeaseRequest::parse_json(r#"{"limits": {"deadline": 5}}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `deadline`"), "{err}");
        let err = LeaseRequest::parse_json(r#"{"expires_at": "tomorrow"}"#).unwrap_err();
        assert!(err.to_string().contains("not an RFC 3339 time"), "{err}");
        let err = LeaseRequest::parse_json(r#"{"ttl_ms": 0}"#).unwrap_err();
        assert!(err.to_string().contains("at least 1"), "{err}");
        let err = LeaseRequest::parse_json(r#"{"grants": {"net.fetch": ["http://h:99999/"]}}"#).unwrap_err();
        assert!(err.to_string().contains("invalid pattern 'http://h:99999/' for net.fetch"), "{err}");
    }

    #[test]
    fn request_round_trips_through_json() {
        let request = LeaseRequest::parse_json(
            r#"{"grants": {"kv.read": ["counter/*"]}, "expires_at": "2026-11-21T10:00:00Z",
                "limits": {"deadline_ms": 5000}}"#,
        )
        .unwrap();
        let json = serde_json::to_string(&request).unwrap();
        assert_eq!(
            json,
            r#"{"grants":{"kv.read":["counter/*"]},"expires_at":"2026-11-21T10:00:00Z","limits":{"deadline_ms":5000}}"#
        );
        assert_eq!(LeaseRequest::parse_json(&json).unwrap(), request);
        assert_eq!(serde_json::to_string(&LeaseRequest::default()).unwrap(), "{}");
    }

    #[test]
    fn ceiling_reads_from_toml() {
        let ceiling: LeaseCeiling = toml::from_str(
            r#"
            max_ttl_ms = 60000
            [grants]
            "kv.read" = ["counter/*"]
            "net.fetch" = ["http://127.0.0.1:9/**"]
            [limits]
            deadline_ms = 5000
            memory_bytes = 67108864
            fuel = 1000000
            max_host_calls = 100
            net_bytes = 1048576
            delegation_depth = 1
            max_children = 2
            "#,
        )
        .unwrap();
        assert!(ceiling.grants.allows(Scope::NetFetch, "http://127.0.0.1:9/x"));
        assert_eq!(ceiling.limits.delegation_depth, 1);
        let json = serde_json::to_string(&ceiling).unwrap();
        assert_eq!(serde_json::from_str::<LeaseCeiling>(&json).unwrap(), ceiling);
    }

    #[test]
    fn child_gets_parent_depth_minus_one_and_parent_bounds() {
        let parent = root(r#"{"ttl_ms": 600000}"#);
        let child = Lease::effective(&declared(), &ceiling(), &LeaseRequest::default(), Some(&parent), NOW).unwrap();
        assert_eq!(child.limits.delegation_depth, 1);
        assert_eq!(child.expires_at, parent.expires_at);
        assert!(child.grants.is_within(&parent.grants).is_ok());
        let grandchild =
            Lease::effective(&declared(), &ceiling(), &LeaseRequest::default(), Some(&child), NOW).unwrap();
        assert_eq!(grandchild.limits.delegation_depth, 0);
        let err =
            Lease::effective(&declared(), &ceiling(), &LeaseRequest::default(), Some(&grandchild), NOW).unwrap_err();
        assert_eq!(err, LeaseError::DelegationDepthExhausted);
        assert!(err.to_string().contains("delegation depth exhausted"));
    }

    #[test]
    fn child_request_narrower_than_parent_is_granted() {
        let parent = root(r#"{"grants": {"kv.read": ["counter/**"], "agent.delegate": ["**"]}}"#);
        let request =
            LeaseRequest::parse_json(r#"{"grants": {"kv.read": ["counter/x/*"]}, "limits": {"fuel": 10}}"#).unwrap();
        let child = Lease::effective(&declared(), &ceiling(), &request, Some(&parent), NOW).unwrap();
        assert!(child.check(Scope::KvRead, "counter/x/1", NOW).is_ok());
        assert!(child.check(Scope::KvRead, "counter/y", NOW).is_err());
        assert!(child.check(Scope::AgentDelegate, "helper", NOW).is_err());
        assert_eq!(child.limits.fuel, 10);
    }

    #[test]
    fn child_request_wider_than_parent_is_refused() {
        let parent = root(r#"{"grants": {"kv.read": ["counter/a"]}, "limits": {"fuel": 100}}"#);
        let wider = LeaseRequest::parse_json(r#"{"grants": {"kv.read": ["counter/*"]}}"#).unwrap();
        let err = Lease::effective(&declared(), &ceiling(), &wider, Some(&parent), NOW).unwrap_err();
        assert!(matches!(err, LeaseError::WiderThanParent { .. }));
        assert!(err.to_string().contains("kv.read pattern 'counter/*' is not within counter/a"), "{err}");
        let other_scope = LeaseRequest::parse_json(r#"{"grants": {"log": ["**"]}}"#).unwrap();
        let err = Lease::effective(&declared(), &ceiling(), &other_scope, Some(&parent), NOW).unwrap_err();
        assert!(err.to_string().contains("log is not granted at all"), "{err}");
        let more_fuel = LeaseRequest::parse_json(r#"{"limits": {"fuel": 101}}"#).unwrap();
        let err = Lease::effective(&declared(), &ceiling(), &more_fuel, Some(&parent), NOW).unwrap_err();
        assert!(err.to_string().contains("fuel 101 > 100"), "{err}");
        let deeper = LeaseRequest::parse_json(r#"{"limits": {"delegation_depth": 2}}"#).unwrap();
        let err = Lease::effective(&declared(), &ceiling(), &deeper, Some(&parent), NOW).unwrap_err();
        assert!(err.to_string().contains("delegation_depth 2 > 1"), "{err}");
    }

    #[test]
    fn expired_parent_cannot_delegate() {
        let parent = root(r#"{"ttl_ms": 1000}"#);
        let later = NOW + Duration::seconds(2);
        let err =
            Lease::effective(&declared(), &ceiling(), &LeaseRequest::default(), Some(&parent), later).unwrap_err();
        assert!(matches!(err, LeaseError::ParentExpired { .. }));
        assert!(err.to_string().contains("2026-11-21T09:00:01Z"), "{err}");
    }
}

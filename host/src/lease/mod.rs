//! Leases: the authority a job runs under. Deny by default.
//!
//! Every host call a sandboxed agent makes is checked against its job's lease before any effect
//! happens, and a refusal is a value ([`Denial`]) the guest receives, never a trap. A lease is
//! computed once, when a job is submitted ([`Lease::effective`]: the agent's declared needs ∩ the
//! operator's ceiling ∩ the submitter's request ∩ the parent's lease for a delegated job), is
//! persisted as JSON with the job, and is then only *read*: each check ([`Lease::check`]) is a
//! cheap in-memory decision (a glob check allocates nothing when it allows).
//!
//! Safety rests on three properties, each tested against brute force or generated cases:
//! - leases are **monotone**: for every lease `L` and every narrowing `L'` of it (intersection,
//!   request, child lease), every target and every address `L'` allows, `L` allows. Whether a
//!   non-public address is reachable depends only on what the *operator* named (see
//!   `addresses`), never on a layer a manifest, request or delegation added;
//! - subset tests are **sound** (a "yes" from [`Pattern::is_subset_of`],
//!   [`UrlPattern::is_subset_of`] or [`Grants::is_within`] is never wrong), so a delegated child
//!   can never get more than its parent;
//! - intersection is **exact** ([`Grants`] keep constraint layers), so combining sources never
//!   widens anything.
//!
//! Public API:
//! - [`Scope`]: `ALL`, `as_str`, `FromStr`, serde as its name.
//! - [`Pattern`]: `parse`, `any`, `any_path`, `as_str`, `matches(&str)`, `is_subset_of`.
//! - [`UrlPattern`]: `parse`, `any`, `as_str`, `matches(&Url)`, `is_subset_of`,
//!   `host_is_ip_literal`; [`parse_fetch_target`] (strict target parsing, [`FetchTargetError`]).
//! - [`TargetPattern`] (`Glob` | `Url`): `parse(scope, text)`, `any(scope)`, `as_str`,
//!   `is_subset_of`.
//! - [`Grants`]: `new`, `from_declared`, `with`, `narrow`, `scopes`, `has_scope`, `allows`,
//!   `intersect`, `is_within -> Result<(), NotWithin>`.
//! - [`Limits`] (`UNLIMITED`, `intersect`, `is_within`, `narrowed_by`) and [`LimitsRequest`]
//!   (`is_empty`, `excess_over`).
//! - [`Lease`]: `check`, `check_url`, `check_address`, `is_expired`, `effective`,
//!   `narrowed_by_ceiling`; [`Denial`]; [`NamedAddresses`], [`OwnAddresses`], [`Egress`],
//!   [`is_public`] (which addresses a fetch may connect to).
//! - Size caps: [`MAX_TARGET_BYTES`], [`REQUEST_CAP`], [`LEASE_CAP`] ([`SizeCap`], [`GrantSize`]).
//! - [`LeaseRequest`] (`parse_json`, `validate`), [`LeaseCeiling`], [`LeaseError`].

mod addresses;
mod grants;
mod limits;
mod pattern;
mod request;
mod rfc3339;
mod scope;
mod templates;
mod url_pattern;

#[cfg(test)]
mod brute_force_tests;
#[cfg(test)]
mod monotonicity_tests;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use url::Url;

pub use addresses::{Egress, NamedAddresses, OwnAddresses, is_public};
pub use grants::{GrantSize, Grants, LEASE_CAP, NotWithin, REQUEST_CAP, SizeCap, TargetPattern};
pub use limits::{Limits, LimitsRequest};
pub use pattern::{MAX_PATTERN_TOKENS, Pattern, PatternError};
pub use request::{LeaseCeiling, LeaseRequest, MAX_REQUEST_JSON_BYTES};
pub use scope::Scope;
pub use templates::TemplateValues;
pub use url_pattern::{FetchTargetError, UrlPattern, parse_fetch_target};

/// Longest target any check accepts, in bytes (URLs included). Matching is linear in the
/// target, so this bounds the work of a single check; longer targets are refused unmatched.
pub const MAX_TARGET_BYTES: usize = 4096;

/// The authority one job runs under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    pub grants: Grants,
    /// The non-public IP literals the operator's policy names for `net.fetch` (only the
    /// operator can name addresses; see [`Lease::check_address`]).
    #[serde(default, skip_serializing_if = "NamedAddresses::is_none")]
    pub named_addresses: NamedAddresses,
    /// After this instant every check is denied. `None` = no expiry beyond the limits.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "rfc3339::serialize_option",
        deserialize_with = "rfc3339::deserialize_option"
    )]
    pub expires_at: Option<OffsetDateTime>,
    pub limits: Limits,
}

/// A refused host call: what was asked, and why it was refused (phrased for the person who can
/// fix the lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{scope} denied for '{target}': {reason}")]
pub struct Denial {
    pub scope: Scope,
    pub target: String,
    pub reason: String,
}

/// Why a lease could not be built or parsed. Messages say what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// Malformed input: unknown scope, bad pattern, conflicting fields, bad JSON.
    #[error("{0}")]
    Invalid(String),
    /// A delegated job asked for more than its parent holds.
    #[error(
        "the requested lease is wider than the parent job's: {detail}; \
         request only what the parent's lease allows"
    )]
    WiderThanParent { detail: String },
    /// The parent's `delegation_depth` is 0.
    #[error(
        "delegation depth exhausted: the parent job may not start children \
         (raise delegation_depth in the parent's lease or the policy file)"
    )]
    DelegationDepthExhausted,
    /// The parent's lease has already expired.
    #[error("the parent job's lease expired at {at}; a child job cannot outlive its parent")]
    ParentExpired { at: String },
}

impl Lease {
    /// Has the lease expired at `now`?
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// May the job call `scope` on `target` at `now`? `net.fetch` targets are parsed strictly
    /// (see [`parse_fetch_target`]); prefer [`Lease::check_url`] when the caller will fetch, so
    /// the URL checked is the URL fetched.
    pub fn check(&self, scope: Scope, target: &str, now: OffsetDateTime) -> Result<(), Denial> {
        let decision = if target.len() > MAX_TARGET_BYTES {
            Err(format!("the target is {} bytes long; targets may be at most {MAX_TARGET_BYTES} bytes", target.len()))
        } else {
            self.check_expiry(now).and_then(|()| self.grants.decide(scope, target))
        };
        decision.map_err(|reason| Denial { scope, target: target.to_owned(), reason })
    }

    /// [`Lease::check`] for a `net.fetch` target already parsed by [`parse_fetch_target`].
    pub fn check_url(&self, url: &Url, now: OffsetDateTime) -> Result<(), Denial> {
        self.check_expiry(now).and_then(|()| self.grants.decide_url(url)).map_err(|reason| Denial {
            scope: Scope::NetFetch,
            target: url.as_str().to_owned(),
            reason,
        })
    }

    fn check_expiry(&self, now: OffsetDateTime) -> Result<(), String> {
        match self.expires_at {
            Some(at) if now >= at => Err(format!(
                "lease expired at {}; submit the job again with a longer ttl_ms or expires_at",
                rfc3339::display(at)
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn lease() -> Lease {
        Lease {
            grants: serde_json::from_str(
                r#"{"kv.read": ["counter/*"], "net.fetch": ["http://127.0.0.1:8080/allowed/**"]}"#,
            )
            .unwrap(),
            named_addresses: NamedAddresses::none(),
            expires_at: Some(datetime!(2026-11-21 10:00 UTC)),
            limits: Limits::UNLIMITED,
        }
    }

    const BEFORE: OffsetDateTime = datetime!(2026-11-21 09:00 UTC);

    #[test]
    fn granted_target_is_allowed() {
        let lease = lease();
        assert!(lease.check(Scope::KvRead, "counter/a", BEFORE).is_ok());
        assert!(lease.check(Scope::NetFetch, "http://127.0.0.1:8080/allowed/x?y=1", BEFORE).is_ok());
        let url = parse_fetch_target("http://127.0.0.1:8080/allowed/x").unwrap();
        assert!(lease.check_url(&url, BEFORE).is_ok());
    }

    #[test]
    fn kv_write_without_grant_is_denied_with_a_fix() {
        let denial = lease().check(Scope::KvWrite, "counter/a", BEFORE).unwrap_err();
        assert_eq!(denial.scope, Scope::KvWrite);
        assert_eq!(denial.target, "counter/a");
        assert_eq!(denial.reason, "the lease has no kv.write grant — add it to the job's lease or the policy file");
    }

    #[test]
    fn expired_lease_denies_everything() {
        let lease = lease();
        let at = datetime!(2026-11-21 10:00 UTC);
        let denial = lease.check(Scope::KvRead, "counter/a", at).unwrap_err();
        assert!(denial.reason.starts_with("lease expired at 2026-11-21T10:00:00Z"), "{}", denial.reason);
        assert!(lease.is_expired(at));
        assert!(!lease.is_expired(BEFORE));
    }

    #[test]
    fn net_fetch_denial_names_the_target_and_the_grants() {
        let denial = lease().check(Scope::NetFetch, "http://10.0.0.1/", BEFORE).unwrap_err();
        assert_eq!(
            denial.reason,
            "no net.fetch grant matches http://10.0.0.1/ (granted: http://127.0.0.1:8080/allowed/**)"
        );
        let unparsable = lease().check(Scope::NetFetch, "not a url", BEFORE).unwrap_err();
        assert!(unparsable.reason.contains("is not a valid URL"), "{}", unparsable.reason);
        let traversal = lease().check(Scope::NetFetch, "http://127.0.0.1:8080/allowed/../secret", BEFORE).unwrap_err();
        assert!(traversal.reason.contains("'..'"), "{}", traversal.reason);
        assert!(denial.to_string().starts_with("net.fetch denied for 'http://10.0.0.1/': "));
    }

    #[test]
    fn lease_round_trips_through_json() {
        let mut lease = lease();
        lease.grants = lease
            .grants
            .intersect(&serde_json::from_str(r#"{"kv.read": ["*/a", "x"], "net.fetch": ["*://*:*/**"]}"#).unwrap());
        let json = serde_json::to_string(&lease).unwrap();
        assert!(json.contains(r#""expires_at":"2026-11-21T10:00:00Z""#), "{json}");
        assert!(json.contains(r#""kv.read":[["counter/*"],["*/a","x"]]"#), "{json}");
        let back: Lease = serde_json::from_str(&json).unwrap();
        assert_eq!(back, lease);
        let no_expiry = Lease { expires_at: None, ..lease };
        let json = serde_json::to_string(&no_expiry).unwrap();
        assert!(!json.contains("expires_at"));
        assert_eq!(serde_json::from_str::<Lease>(&json).unwrap(), no_expiry);
    }

    #[test]
    fn glob_check_matches_deep_targets_against_several_patterns() {
        // Its speed is measured by the lease benchmark (docs/benchmarks.md), not asserted here.
        let lease = Lease {
            grants: serde_json::from_str(r#"{"kv.read": ["tenants/*/counters/**", "config/*.json", "**/shared/*"]}"#)
                .unwrap(),
            named_addresses: NamedAddresses::none(),
            expires_at: None,
            limits: Limits::UNLIMITED,
        };
        for allowed in ["tenants/acme-corporation/counters/daily/2026/11/21/x", "config/app.json", "a/b/shared/c"] {
            assert!(lease.check(Scope::KvRead, allowed, BEFORE).is_ok(), "{allowed}");
        }
        for denied in ["tenants/acme/other/x", "config/sub/app.json", "config/app.toml", "a/shared/b/c"] {
            assert!(lease.check(Scope::KvRead, denied, BEFORE).is_err(), "{denied}");
        }
    }
}

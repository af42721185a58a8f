//! Per-principal rate limits on submissions: a token bucket (GCRA, `governor`) per principal.
//!
//! Why here: every front door (HTTP, ARCP, SW4RM) submits through `JobManager`, so one check
//! at submission limits a principal whatever protocol it speaks, with one answer
//! ([`super::JobError::RateLimited`], a 429 with `Retry-After` over HTTP). Off unless the
//! policy sets `[rate_limit]` or a principal's `rate_limit`.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Deserialize;

use crate::config::{LOCAL_PRINCIPAL, Policy};

/// A token bucket: `per_s` submissions a second on average, bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_s: u32,
    pub burst: u32,
}

impl RateLimit {
    /// The bucket's quota; `None` when `per_s` is 0 (no limit).
    pub(crate) fn quota(self) -> Option<Quota> {
        let per_s = NonZeroU32::new(self.per_s)?;
        let burst = NonZeroU32::new(self.burst).unwrap_or(per_s);
        Some(Quota::per_second(per_s).allow_burst(burst))
    }
}

/// One bucket per principal the policy names (and `local`); principals are a fixed set, so
/// this never grows.
#[derive(Debug, Default)]
pub struct RateLimits {
    buckets: HashMap<String, DefaultDirectRateLimiter>,
}

impl RateLimits {
    pub fn from_policy(policy: &Policy) -> RateLimits {
        let names = policy.principals.iter().map(|p| (p.name.as_str(), p.rate_limit)).chain([(LOCAL_PRINCIPAL, None)]);
        let buckets = names
            .filter_map(|(name, own)| {
                let quota = own.or(policy.rate_limit)?.quota()?;
                Some((name.to_owned(), RateLimiter::direct(quota)))
            })
            .collect();
        RateLimits { buckets }
    }

    /// Takes a token for `principal`, or says how long until one is free.
    pub fn check(&self, principal: &str) -> Result<(), Duration> {
        let Some(bucket) = self.buckets.get(principal) else { return Ok(()) };
        bucket.check().map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refuses_with_the_wait_and_other_principals_are_unaffected() {
        let policy = Policy::parse(
            "[rate_limit]\nper_s = 1\nburst = 3\n[[principals]]\nname = \"bulk\"\ntoken = \"b\"\nrate_limit = { per_s = 100, burst = 100 }\n[[principals]]\nname = \"alice\"\ntoken = \"a\"\n",
            "test",
        )
        .unwrap();
        let limits = RateLimits::from_policy(&policy);
        for _ in 0..3 {
            assert!(limits.check("alice").is_ok());
        }
        let wait = limits.check("alice").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        for _ in 0..50 {
            assert!(limits.check("bulk").is_ok(), "bulk has its own, larger bucket");
        }
        assert!(limits.check("nobody-configured").is_ok(), "unknown names are refused by auth, not here");
    }

    #[test]
    fn without_a_rate_limit_nothing_is_limited() {
        let limits = RateLimits::from_policy(&Policy::builtin().unwrap());
        for _ in 0..10_000 {
            assert!(limits.check(LOCAL_PRINCIPAL).is_ok());
        }
    }
}

//! Limits and budgets a lease carries: how long, how much memory, fuel, host calls, network
//! and kv bytes a job may use, how large its result may be, and how far it may delegate.
//!
//! Every limit is an upper bound, so combining two leases is a field-wise minimum and "within"
//! is a field-wise `<=`. A lease request names only the limits it wants lower
//! ([`LimitsRequest`]); the operator's ceiling always gives all of them ([`Limits`]). This module
//! only computes bounds; enforcing them (epoch deadlines, `StoreLimits`, fuel, counting children
//! actually started) belongs to the engine and the job scheduler.

use serde::{Deserialize, Serialize};

/// A complete set of limits (every field is an upper bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock time for the whole job, in milliseconds.
    pub deadline_ms: u64,
    /// Linear memory the guest may grow to, in bytes.
    pub memory_bytes: u64,
    /// Wasm fuel (roughly, instructions executed).
    pub fuel: u64,
    /// Host calls of any scope the job may make.
    pub max_host_calls: u64,
    /// Bytes sent plus received over `net.fetch`.
    pub net_bytes: u64,
    /// How many levels of children may exist below this job (0 = may not delegate).
    pub delegation_depth: u32,
    /// How many children this job may start (fan-out).
    pub max_children: u32,
    /// Bytes of kv writes (keys plus values) the job and its children may make.
    /// Absent in leases stored before it existed: those read as unlimited.
    #[serde(default = "unlimited")]
    pub kv_bytes: u64,
    /// Largest result (output JSON) the job may return, in bytes.
    #[serde(default = "unlimited")]
    pub max_output_bytes: u64,
}

fn unlimited() -> u64 {
    u64::MAX
}

/// The limits a submitter asks for; each given field can only lower the effective limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_host_calls: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation_depth: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_children: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
}

impl Limits {
    /// No limit at all (every field at its maximum). Useful as a neutral element and in tests;
    /// an operator policy should set real numbers.
    pub const UNLIMITED: Limits = Limits {
        deadline_ms: u64::MAX,
        memory_bytes: u64::MAX,
        fuel: u64::MAX,
        max_host_calls: u64::MAX,
        net_bytes: u64::MAX,
        delegation_depth: u32::MAX,
        max_children: u32::MAX,
        kv_bytes: u64::MAX,
        max_output_bytes: u64::MAX,
    };

    /// Field-wise minimum.
    pub fn intersect(&self, other: &Limits) -> Limits {
        Limits {
            deadline_ms: self.deadline_ms.min(other.deadline_ms),
            memory_bytes: self.memory_bytes.min(other.memory_bytes),
            fuel: self.fuel.min(other.fuel),
            max_host_calls: self.max_host_calls.min(other.max_host_calls),
            net_bytes: self.net_bytes.min(other.net_bytes),
            delegation_depth: self.delegation_depth.min(other.delegation_depth),
            max_children: self.max_children.min(other.max_children),
            kv_bytes: self.kv_bytes.min(other.kv_bytes),
            max_output_bytes: self.max_output_bytes.min(other.max_output_bytes),
        }
    }

    /// Field-wise `<=`.
    pub fn is_within(&self, other: &Limits) -> bool {
        self.intersect(other) == *self
    }

    /// Lower each field the request gives; fields it omits stay as they are.
    pub fn narrowed_by(&self, request: &LimitsRequest) -> Limits {
        let r = request;
        Limits {
            deadline_ms: r.deadline_ms.map_or(self.deadline_ms, |v| v.min(self.deadline_ms)),
            memory_bytes: r.memory_bytes.map_or(self.memory_bytes, |v| v.min(self.memory_bytes)),
            fuel: r.fuel.map_or(self.fuel, |v| v.min(self.fuel)),
            max_host_calls: r.max_host_calls.map_or(self.max_host_calls, |v| v.min(self.max_host_calls)),
            net_bytes: r.net_bytes.map_or(self.net_bytes, |v| v.min(self.net_bytes)),
            delegation_depth: r.delegation_depth.map_or(self.delegation_depth, |v| v.min(self.delegation_depth)),
            max_children: r.max_children.map_or(self.max_children, |v| v.min(self.max_children)),
            kv_bytes: r.kv_bytes.map_or(self.kv_bytes, |v| v.min(self.kv_bytes)),
            max_output_bytes: r.max_output_bytes.map_or(self.max_output_bytes, |v| v.min(self.max_output_bytes)),
        }
    }
}

impl LimitsRequest {
    /// Did the request give no limits at all?
    pub fn is_empty(&self) -> bool {
        *self == LimitsRequest::default()
    }

    /// The requested fields larger than `bound`, as `"name requested > allowed"` texts.
    pub fn excess_over(&self, bound: &Limits) -> Vec<String> {
        let pairs: [(&str, Option<u64>, u64); 9] = [
            ("deadline_ms", self.deadline_ms, bound.deadline_ms),
            ("memory_bytes", self.memory_bytes, bound.memory_bytes),
            ("fuel", self.fuel, bound.fuel),
            ("max_host_calls", self.max_host_calls, bound.max_host_calls),
            ("net_bytes", self.net_bytes, bound.net_bytes),
            ("delegation_depth", self.delegation_depth.map(u64::from), u64::from(bound.delegation_depth)),
            ("max_children", self.max_children.map(u64::from), u64::from(bound.max_children)),
            ("kv_bytes", self.kv_bytes, bound.kv_bytes),
            ("max_output_bytes", self.max_output_bytes, bound.max_output_bytes),
        ];
        pairs
            .into_iter()
            .filter_map(|(name, asked, allowed)| {
                asked.filter(|asked| *asked > allowed).map(|asked| format!("{name} {asked} > {allowed}"))
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const SMALL: Limits = Limits {
        deadline_ms: 1_000,
        memory_bytes: 1 << 20,
        fuel: 10,
        max_host_calls: 5,
        net_bytes: 100,
        delegation_depth: 1,
        max_children: 2,
        kv_bytes: 1_000,
        max_output_bytes: 500,
    };

    #[test]
    fn intersection_is_the_fieldwise_minimum() {
        let other = Limits { fuel: 3, max_children: 9, ..Limits::UNLIMITED };
        let both = SMALL.intersect(&other);
        assert_eq!(both, Limits { fuel: 3, ..SMALL });
        assert!(both.is_within(&SMALL));
        assert!(both.is_within(&other));
        assert!(!Limits::UNLIMITED.is_within(&SMALL));
    }

    #[test]
    fn request_only_lowers_the_fields_it_names() {
        let request = LimitsRequest { deadline_ms: Some(500), fuel: Some(1_000), ..LimitsRequest::default() };
        let narrowed = SMALL.narrowed_by(&request);
        assert_eq!(narrowed, Limits { deadline_ms: 500, ..SMALL });
        assert_eq!(request.excess_over(&SMALL), vec!["fuel 1000 > 10".to_owned()]);
        assert!(LimitsRequest::default().is_empty());
    }

    #[test]
    fn limits_reject_unknown_and_missing_fields() {
        let json = serde_json::to_string(&SMALL).unwrap();
        assert_eq!(serde_json::from_str::<Limits>(&json).unwrap(), SMALL);
        assert!(serde_json::from_str::<Limits>(r#"{"deadline_ms": 1}"#).is_err());
        // A lease stored before kv_bytes / max_output_bytes existed reads them as unlimited.
        let mut old = serde_json::to_value(SMALL).unwrap();
        old.as_object_mut().unwrap().retain(|k, _| k != "kv_bytes" && k != "max_output_bytes");
        let read: Limits = serde_json::from_value(old).unwrap();
        assert_eq!(read, Limits { kv_bytes: u64::MAX, max_output_bytes: u64::MAX, ..SMALL });
        let err = serde_json::from_str::<LimitsRequest>(r#"{"deadline": 1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `deadline`"), "{err}");
    }
}

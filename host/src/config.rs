//! The operator's policy file (TOML): who may call the API, the most any job may be
//! granted, and how the host is sized. Deny by default: without a file, the built-in
//! [`DEFAULT_POLICY`] applies — local logs, events, kv and delegation, and **no** network.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:7070"
//!
//! [ceiling.grants]            # the most any job of the default principal may hold
//! "kv.read" = ["{agent}/**", "shared/**"]   # {agent}: the job's agent (templates)
//! "net.fetch" = ["https://api.example.com/**"]
//! [ceiling.limits]
//! deadline_ms = 30000
//!
//! [[principals]]              # with principals, every request needs a bearer token
//! name = "alice"
//! token_sha256 = "…"          # sha256 hex of the token (or `token = "…"` in tests)
//! [principals.ceiling.grants]
//! "log" = ["**"]
//! ```

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::engine::EngineConfig;
use crate::lease::{LeaseCeiling, TemplateValues};
use crate::store::{KvOwner, KvQuota};

/// The built-in policy, used when no policy file is given (and as the base of one).
pub const DEFAULT_POLICY: &str = r#"
[ceiling.grants]
"log" = ["**"]
"events" = ["**"]
# Each agent its own kv namespace (`{agent}` is the job's agent name); sharing state across
# agents is an explicit grant in a policy file, e.g. "kv.read" = ["{agent}/**", "shared/**"].
"kv.read" = ["{agent}/**"]
"kv.write" = ["{agent}/**"]
"agent.delegate" = ["**"]
"agent.send" = ["**"]
"topic.publish" = ["**"]

[ceiling.limits]
deadline_ms = 30000
memory_bytes = 67108864
# Fuel is a CPU budget (~ instructions); generous, so the deadline is what usually ends a busy job.
fuel = 1000000000000
max_host_calls = 10000
net_bytes = 10485760
delegation_depth = 4
max_children = 16
# kv writes (keys + values) one job and its children may make, and the largest result a job
# may return: a laptop survives a hostile agent that loops on kv.set or returns huge outputs.
kv_bytes = 67108864
max_output_bytes = 4194304
"#;

/// The principal of every request when no tokens are configured.
pub const LOCAL_PRINCIPAL: &str = "local";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub server: ServerConfig,
    /// The lease ceiling of principals that have none of their own (and of `local`).
    pub ceiling: LeaseCeiling,
    #[serde(default)]
    pub principals: Vec<Principal>,
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub recovery: RecoveryConfig,
    #[serde(default)]
    pub egress: EgressConfig,
    #[serde(default)]
    pub messages: crate::messages::MessagesConfig,
    #[serde(default)]
    pub arcp: crate::arcp::ArcpConfig,
    #[serde(default)]
    pub retention: crate::retention::RetentionConfig,
    #[serde(default)]
    pub kv_quota: KvQuotaConfig,
    #[serde(default)]
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// Submissions per principal (a token bucket each; off when absent).
    pub rate_limit: Option<crate::jobs::RateLimit>,
    /// Federation over ASP (`crate::asp::config`).
    #[serde(default)]
    pub swarm: crate::asp::config::SwarmConfig,
    /// Whether `ceiling` uses templates; found once when the policy loads.
    #[serde(skip)]
    ceiling_templated: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Jobs running at once (delegated children do not count).
    pub max_concurrent_jobs: usize,
    /// Client jobs waiting for a slot at once; beyond it a submit is refused with
    /// `429 overloaded` (and `Retry-After`) instead of growing the queue without bound.
    pub max_queued_jobs: usize,
    /// On SIGTERM, how long running jobs may take to finish.
    pub shutdown_grace_ms: u64,
    /// A request's headers must arrive within this; it also closes a keep-alive connection
    /// idle for as long (see `connections`).
    pub header_timeout_ms: u64,
    /// Open HTTP connections at most; beyond it new ones wait to be accepted.
    pub max_connections: usize,
    /// Record Prometheus metrics and serve `/metrics`.
    pub metrics: bool,
    /// Serve SW4RM over gRPC on this address (off when absent; `--grpc-listen` overrides).
    pub grpc_listen: Option<SocketAddr>,
    /// PEM certificate chain and private key for gRPC over TLS (both, or neither).
    pub grpc_tls_cert: Option<std::path::PathBuf>,
    pub grpc_tls_key: Option<std::path::PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            max_body_bytes: 1 << 20,
            max_concurrent_jobs: 64,
            max_queued_jobs: 10_000,
            shutdown_grace_ms: 10_000,
            header_timeout_ms: 15_000,
            max_connections: 4_096,
            metrics: true,
            grpc_listen: None,
            grpc_tls_cert: None,
            grpc_tls_key: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecoveryConfig {
    /// A job found `running` after a restart is re-run while it has had fewer attempts.
    pub max_attempts: u32,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self { max_attempts: 2 }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// Let DNS names reach private and loopback addresses (off: DNS-rebinding protection).
    pub allow_private: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    pub name: String,
    /// The bearer token in clear (convenient for tests; prefer `token_sha256`).
    pub token: Option<String>,
    /// sha256 (hex) of the bearer token.
    pub token_sha256: Option<String>,
    /// This principal's ceiling; the policy's `[ceiling]` when absent.
    pub ceiling: Option<LeaseCeiling>,
    /// An operator sees host details other principals do not (e.g. agent files' paths in
    /// load errors). The `local` principal (no tokens configured, loopback only) is one.
    #[serde(default)]
    pub operator: bool,
    /// What this principal's agents may keep in kv altogether; `[kv_quota]`'s
    /// `principal_bytes`/`principal_keys` when absent.
    pub kv_quota: Option<KvQuota>,
    /// This principal's submission rate; `[rate_limit]` when absent.
    pub rate_limit: Option<crate::jobs::RateLimit>,
    /// Whether `ceiling` uses templates; found once when the policy loads.
    #[serde(skip)]
    ceiling_templated: bool,
}

/// The policy file's `[kv_quota]`: what each agent and each principal may keep stored in kv
/// (bytes of namespace + key + value, and keys), checked by the store before every write.
///
/// ```toml
/// [kv_quota]
/// agent_bytes = 268435456
/// [kv_quota.agents.counter]   # one agent's own quota
/// bytes = 1048576
/// keys = 1000
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KvQuotaConfig {
    pub agent_bytes: u64,
    pub agent_keys: u64,
    pub principal_bytes: u64,
    pub principal_keys: u64,
    /// Per-agent overrides, by agent name.
    pub agents: std::collections::BTreeMap<String, KvQuota>,
}

impl Default for KvQuotaConfig {
    fn default() -> Self {
        Self {
            agent_bytes: 256 << 20,
            agent_keys: 100_000,
            principal_bytes: 1 << 30,
            principal_keys: 1_000_000,
            agents: std::collections::BTreeMap::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read policy file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid policy file {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Policy {
    /// The built-in policy.
    pub fn builtin() -> Result<Self, ConfigError> {
        Self::parse(DEFAULT_POLICY, "<built-in>")
    }

    /// Reads a policy file. Keys it omits take the built-in defaults; a `grants` table it
    /// gives replaces the default grants as a whole (grants are never merged: what the file
    /// lists is exactly what is granted).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        Self::parse(&text, &shown)
    }

    /// Parses policy text over the built-in defaults.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { path: origin.to_string(), message };
        let mut base: toml::Table = toml::from_str(DEFAULT_POLICY).map_err(|e| invalid(e.to_string()))?;
        let overlay: toml::Table = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        merge(&mut base, overlay);
        inherit_limits(&mut base);
        let mut policy: Policy =
            toml::Value::Table(base).try_into().map_err(|e: toml::de::Error| invalid(e.to_string()))?;
        for p in &policy.principals {
            if p.name.starts_with(crate::asp::config::PEER_PREFIX) {
                return Err(invalid(format!(
                    "principal '{}': names starting with '{}' are peer hosts; give their ceilings in [[swarm.peers]]",
                    p.name,
                    crate::asp::config::PEER_PREFIX
                )));
            }
            if p.token.is_none() && p.token_sha256.is_none() {
                return Err(invalid(format!("principal '{}' has neither `token` nor `token_sha256`", p.name)));
            }
        }
        policy.ceiling_templated = policy.ceiling.grants.uses_templates().map_err(invalid)?;
        for p in &mut policy.principals {
            if let Some(ceiling) = &p.ceiling {
                p.ceiling_templated = ceiling.grants.uses_templates().map_err(invalid)?;
            }
        }
        Ok(policy)
    }

    /// Whether API requests must carry a bearer token.
    pub fn requires_tokens(&self) -> bool {
        !self.principals.is_empty()
    }

    /// The principal an `Authorization` header value stands for, as every front door decides it:
    /// with principals configured, `Bearer <token>` must name one; without, everyone is
    /// [`LOCAL_PRINCIPAL`]. `Err` says what is wrong, for the caller's 401.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<String, &'static str> {
        if !self.requires_tokens() {
            return Ok(LOCAL_PRINCIPAL.to_owned());
        }
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .ok_or("missing bearer token: send `Authorization: Bearer <token>`")?;
        self.principal_for_token(token.trim()).map(|p| p.name.clone()).ok_or("invalid bearer token")
    }

    /// The principal a bearer token belongs to.
    pub fn principal_for_token(&self, token: &str) -> Option<&Principal> {
        let digest = hex::encode(Sha256::digest(token.as_bytes()));
        self.principals.iter().find(|p| {
            let expected = match (&p.token_sha256, &p.token) {
                (Some(hash), _) => hash.to_ascii_lowercase(),
                (None, Some(token)) => hex::encode(Sha256::digest(token.as_bytes())),
                (None, None) => return false,
            };
            constant_time_eq(expected.as_bytes(), digest.as_bytes())
        })
    }

    /// Whether `principal` may see operator details (see [`Principal::operator`]).
    pub fn is_operator(&self, principal: &str) -> bool {
        match self.principals.iter().find(|p| p.name == principal) {
            Some(p) => p.operator,
            None => !self.requires_tokens() && principal == LOCAL_PRINCIPAL,
        }
    }

    /// Who a kv write by `agent` (its name) under `principal` is charged to, with their quotas.
    pub fn kv_owner(&self, principal: &str, agent: &str) -> KvOwner {
        let q = &self.kv_quota;
        let agent_quota = q.agents.get(agent).copied().unwrap_or(KvQuota { bytes: q.agent_bytes, keys: q.agent_keys });
        let principal_quota = self
            .principals
            .iter()
            .find(|p| p.name == principal)
            .and_then(|p| p.kv_quota)
            .unwrap_or(KvQuota { bytes: q.principal_bytes, keys: q.principal_keys });
        KvOwner { agent: agent.to_owned(), principal: principal.to_owned(), agent_quota, principal_quota }
    }

    /// The lease ceiling of a principal for a job of `agent` (`None`: a check outside any
    /// agent, e.g. what a principal may send to), with its templates (`{agent}`,
    /// `{principal}`) expanded. Borrowed when the ceiling has none.
    pub fn ceiling_for(&self, principal: &str, agent: Option<&str>) -> Cow<'_, LeaseCeiling> {
        if let Some(peer) = principal.strip_prefix(crate::asp::config::PEER_PREFIX) {
            // A peer host: its own ceiling, or nothing granted (deny by default).
            return match self.swarm.peer_ceiling(peer) {
                Some(ceiling) => Cow::Borrowed(ceiling),
                None => Cow::Owned(LeaseCeiling {
                    grants: crate::lease::Grants::default(),
                    limits: self.ceiling.limits,
                    max_ttl_ms: None,
                }),
            };
        }
        let own = self.principals.iter().find(|p| p.name == principal);
        let (ceiling, templated) = match own.and_then(|p| p.ceiling.as_ref().map(|c| (c, p.ceiling_templated))) {
            Some(own) => own,
            None => (&self.ceiling, self.ceiling_templated),
        };
        if !templated {
            return Cow::Borrowed(ceiling);
        }
        let values = TemplateValues { agent, principal };
        Cow::Owned(LeaseCeiling { grants: ceiling.grants.expand_templates(values), ..ceiling.clone() })
    }
}

/// A principal's own `[principals.ceiling]` takes any limit it does not set from the
/// policy-wide `[ceiling.limits]`.
fn inherit_limits(policy: &mut toml::Table) {
    let Some(toml::Value::Table(defaults)) = policy.get("ceiling").and_then(|c| c.get("limits")).cloned() else {
        return;
    };
    let principals = match policy.get_mut("principals") {
        Some(toml::Value::Array(principals)) => std::mem::take(principals),
        _ => Vec::new(),
    };
    let peers = match policy.get_mut("swarm").and_then(|s| s.get_mut("peers")) {
        Some(toml::Value::Array(peers)) => std::mem::take(peers),
        _ => Vec::new(),
    };
    let inherit = |mut entries: Vec<toml::Value>| {
        for entry in &mut entries {
            if let Some(toml::Value::Table(ceiling)) = entry.get_mut("ceiling") {
                let mut limits = defaults.clone();
                if let Some(toml::Value::Table(own)) = ceiling.remove("limits") {
                    merge(&mut limits, own);
                }
                ceiling.insert("limits".into(), toml::Value::Table(limits));
            }
        }
        entries
    };
    if !principals.is_empty() {
        policy.insert("principals".into(), toml::Value::Array(inherit(principals)));
    }
    if !peers.is_empty()
        && let Some(toml::Value::Table(swarm)) = policy.get_mut("swarm")
    {
        swarm.insert("peers".into(), toml::Value::Array(inherit(peers)));
    }
}

/// Overlays `overlay` on `base`: tables merge key by key, except `grants`, which replace.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(mine)), toml::Value::Table(theirs)) if key != "grants" => merge(mine, theirs),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::Scope;

    #[test]
    fn builtin_policy_parses_and_grants_no_network() {
        let policy = Policy::builtin().unwrap();
        assert!(!policy.requires_tokens());
        let lease_json = serde_json::to_value(&policy.ceiling.grants).unwrap();
        assert!(lease_json.get("net.fetch").is_none());
    }

    #[test]
    fn tokens_map_to_principals_by_hash() {
        let policy = Policy::parse(
            "[[principals]]\nname = \"alice\"\ntoken = \"s3cret\"\n[[principals]]\nname = \"bob\"\ntoken_sha256 = \"2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b\"\n",
            "test",
        )
        .unwrap();
        assert!(policy.requires_tokens());
        assert_eq!(policy.principal_for_token("s3cret").map(|p| p.name.as_str()), Some("alice"));
        assert_eq!(policy.principal_for_token("secret").map(|p| p.name.as_str()), Some("bob"));
        assert!(policy.principal_for_token("nope").is_none());
    }

    #[test]
    fn policy_file_replaces_grants_but_keeps_default_limits() {
        let policy =
            Policy::parse("[ceiling.grants]\n\"log\" = [\"**\"]\n[ceiling.limits]\ndeadline_ms = 5000\n", "test")
                .unwrap();
        let grants = serde_json::to_value(&policy.ceiling.grants).unwrap();
        assert_eq!(grants, serde_json::json!({"log": ["**"]}));
        assert_eq!(policy.ceiling.limits.deadline_ms, 5000);
        assert_eq!(policy.ceiling.limits.max_host_calls, 10_000, "unspecified limits keep their defaults");
    }

    #[test]
    fn principal_ceiling_inherits_limits_it_does_not_set() {
        let policy = Policy::parse(
            "[[principals]]\nname = \"ci\"\ntoken = \"t\"\n[principals.ceiling.grants]\n\"log\" = [\"**\"]\n[principals.ceiling.limits]\nmax_host_calls = 7\n",
            "test",
        )
        .unwrap();
        let ceiling = policy.ceiling_for("ci", None);
        assert_eq!(ceiling.limits.max_host_calls, 7);
        assert_eq!(ceiling.limits.deadline_ms, 30_000);
    }

    #[test]
    fn the_example_policy_parses_and_marks_its_operator() {
        let policy = Policy::parse(include_str!("../../examples/policy.toml"), "examples/policy.toml").unwrap();
        assert!(policy.is_operator("alice"));
        assert!(!policy.is_operator("ci"));
        assert!(!policy.is_operator(LOCAL_PRINCIPAL), "with tokens configured, local is nobody");
        assert!(Policy::builtin().unwrap().is_operator(LOCAL_PRINCIPAL));
        assert_eq!(policy.kv_owner("ci", "echo").principal_quota, KvQuota { bytes: 10_485_760, keys: 10_000 });
        assert_eq!(policy.kv_owner("alice", "echo").principal_quota.bytes, 1 << 30, "[kv_quota] default");
        assert_eq!(policy.retention.jobs_ms, 7 * 24 * 3_600_000);
        assert_eq!(policy.server.header_timeout_ms, 15_000);
    }

    #[test]
    fn ceiling_templates_expand_per_agent_and_unknown_ones_are_refused() {
        let policy = Policy::builtin().unwrap();
        let counter = policy.ceiling_for(LOCAL_PRINCIPAL, Some("counter"));
        assert!(counter.grants.allows(Scope::KvWrite, "counter/hits"));
        assert!(!counter.grants.allows(Scope::KvWrite, "greeter/hits"));
        assert!(!counter.grants.allows(Scope::KvWrite, "{agent}/hits"), "a template never matches as text");
        let nobody = policy.ceiling_for(LOCAL_PRINCIPAL, None);
        assert!(!nobody.grants.allows(Scope::KvRead, "counter/hits"), "no agent, no namespace");
        assert!(nobody.grants.allows(Scope::Log, "anything"), "patterns without templates are kept");

        let err = Policy::parse("[ceiling.grants]\n\"kv.read\" = [\"{agnet}/**\"]\n", "test").unwrap_err();
        assert!(err.to_string().contains("unknown template"), "{err}");
        let principal =
            "[[principals]]\nname = \"p\"\ntoken = \"t\"\n[principals.ceiling.grants]\n\"log\" = [\"{x}\"]\n";
        assert!(Policy::parse(principal, "test").is_err(), "principal ceilings are checked too");
    }

    #[test]
    fn principal_without_token_is_rejected() {
        let err = Policy::parse("[[principals]]\nname = \"x\"\n", "test").unwrap_err();
        assert!(err.to_string().contains("neither"));
    }
}

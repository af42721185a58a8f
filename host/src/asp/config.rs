//! The policy file's `[swarm]` table: where the ASP endpoint listens, its TLS identity, which
//! peers' certificates are trusted, the ingress bounds, and what each peer may run here.
//!
//! ```toml
//! [swarm]
//! listen = "0.0.0.0:7443"                       # off when absent
//! endpoint = "https://corral-a.example.com:7443/swarm"   # what peers are told to call
//! tls_cert = "/etc/corral/swarm.pem"            # else a self-signed one in the data dir
//! tls_key = "/etc/corral/swarm.key"
//! peer_ca = ["/etc/corral/peers-ca.pem"]        # trusted besides the public web roots
//!
//! [[swarm.peers]]                               # deny by default: a peer not listed may
//! agent_id = "corral-0123456789abcdef"          # message this host but run nothing here
//! agents = ["echo"]                             # the agents it may run (`*`: any)
//! # public_key = "…"                            # required for a non-corral id: pins its key
//! [swarm.peers.ceiling.grants]
//! "log" = ["**"]
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::jobs::RateLimit;
use crate::lease::LeaseCeiling;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwarmConfig {
    /// Serve ASP over HTTPS on this address (off when absent).
    pub listen: Option<SocketAddr>,
    /// The endpoint advertised to peers (ASP's `sender.endpoint`); `https://<listen>/swarm`
    /// when absent.
    pub endpoint: Option<String>,
    /// PEM certificate chain and key of the ASP listener (both, or neither: then a
    /// self-signed certificate is made at first start in `<data>/swarm-tls/`).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM files of certificate authorities trusted for peers, besides the public web roots.
    pub peer_ca: Vec<PathBuf>,
    /// How far a message's timestamp may be from this host's clock, either way.
    pub max_skew_ms: u64,
    /// How long a received message id is remembered (at least `max_skew_ms`), and so how long
    /// the outbox keeps retrying a message (re-stamping it) before it gives up.
    pub dedupe_window_ms: u64,
    /// Largest request body accepted on the ASP endpoint.
    pub max_body_bytes: usize,
    /// Requests per member, and for all strangers together (`per_s = 0`: no limit).
    pub rate_limit: RateLimit,
    /// How often the outbox looks for messages due.
    pub outbox_interval_ms: u64,
    /// Delivery attempts of one outbox message before it is given up (and kept as dead).
    pub outbox_max_attempts: u32,
    /// The longest wait between two attempts (backoff doubles up to it).
    pub outbox_max_backoff_ms: u64,
    /// Timeout of one request to a peer.
    pub request_timeout_ms: u64,
    /// An invite's lifetime when `corral swarm invite` gives none.
    pub invite_ttl_ms: u64,
    /// What each peer host may run here; a peer not listed may run nothing.
    pub peers: Vec<PeerPolicy>,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        Self {
            listen: None,
            endpoint: None,
            tls_cert: None,
            tls_key: None,
            peer_ca: Vec::new(),
            max_skew_ms: 5 * 60_000,
            dedupe_window_ms: 24 * 3_600_000,
            max_body_bytes: 256 << 10,
            rate_limit: RateLimit { per_s: 50, burst: 200 },
            outbox_interval_ms: 250,
            outbox_max_attempts: 30,
            outbox_max_backoff_ms: 5 * 60_000,
            request_timeout_ms: 10_000,
            invite_ttl_ms: 24 * 3_600_000,
            peers: Vec::new(),
        }
    }
}

/// What one peer host may run here: which agents, and at most which lease.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerPolicy {
    pub agent_id: String,
    /// The peer's key (base64, as `/swarm/info` gives it). Required for an id that is not a
    /// `corral-…` one (those are derived from their key): without it any host in any swarm
    /// could call itself this peer.
    #[serde(default)]
    pub public_key: Option<String>,
    /// Agent names it may run (`*` for any); none when empty.
    #[serde(default)]
    pub agents: Vec<String>,
    pub ceiling: LeaseCeiling,
}

impl PeerPolicy {
    /// Whether this peer may run `agent` (`name` or `name@version`).
    pub fn may_run(&self, agent: &str) -> bool {
        let name = agent.split_once('@').map_or(agent, |(name, _)| name);
        self.agents.iter().any(|a| a == "*" || a == name || a == agent)
    }
}

/// The principal a peer host acts as on this host.
pub fn peer_principal(agent_id: &str) -> String {
    format!("{PEER_PREFIX}{agent_id}")
}

/// Principals named so are peer hosts (never a configured API principal: see `Policy::parse`).
pub const PEER_PREFIX: &str = "peer:";

impl SwarmConfig {
    /// The ceiling of a peer principal: its own, or nothing at all.
    pub fn peer_ceiling(&self, agent_id: &str) -> Option<&LeaseCeiling> {
        self.peer(agent_id).map(|p| &p.ceiling)
    }

    /// A peer's policy, if the operator gave one.
    pub fn peer(&self, agent_id: &str) -> Option<&PeerPolicy> {
        self.peers.iter().find(|p| p.agent_id == agent_id)
    }

    /// The policy for a member known by `agent_id` with key `public_key`: its entry, if the
    /// key is the one the entry pins (or the id is a `corral-…` one, which only its key can
    /// have — checked wherever a key is learned).
    pub fn trusted_peer(&self, agent_id: &str, public_key: &str) -> Option<&PeerPolicy> {
        self.peer(agent_id).filter(|p| match &p.public_key {
            Some(pinned) => pinned.trim() == public_key,
            None => agent_id.starts_with("corral-"),
        })
    }
}

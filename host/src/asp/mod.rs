//! Agent Swarm Protocol (ASP 0.1.0): Ed25519-signed messages between hosts.
//!
//! This is the protocol's core vocabulary, shared by every later part of federation
//! (endpoints, membership, outbox): the wire message ([`Message`]), how it is signed and
//! verified ([`signing`]), invite tokens ([`invite`]) and the host's own key ([`identity`]).
//! Nothing here trusts its input: every check returns a typed [`AspError`] with a stable code.

pub mod config;
pub mod federation;
pub mod http;
pub mod identity;
pub mod invite;
pub mod outbox;
pub mod remote;
pub mod signing;
pub mod tls;
pub mod verify;

use serde::{Deserialize, Serialize};

/// The protocol version corral speaks with ASP peers.
pub const PROTOCOL_VERSION: &str = "0.1.0";

/// Who sent a message: the sending host's agent id and its ASP endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    pub agent_id: String,
    pub endpoint: String,
}

/// One ASP message as it travels (`POST /swarm/message`). Fields the code does not know are
/// kept, so a message relayed or stored is not silently narrowed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub protocol_version: String,
    pub message_id: String,
    pub timestamp: String,
    pub sender: Sender,
    pub recipient: String,
    pub swarm_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub content: String,
    #[serde(default)]
    pub signature: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Why an ASP input or operation was refused. `code()` is stable (it goes on the wire and in
/// the audit); the codes the reference defines (`INVALID_FORMAT`, `INVALID_SIGNATURE`,
/// `NOT_AUTHORIZED`, `SWARM_NOT_FOUND`, `INVALID_TOKEN`, `RATE_LIMITED`, `INTERNAL_ERROR`) are
/// used where they fit; the others say more than the reference can.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AspError {
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("the signature does not verify against the key held for '{signer}'")]
    BadSignature { signer: String },
    #[error("the invite expired at {0}")]
    InviteExpired(String),
    #[error("the invite has been used {0} times, its limit")]
    InviteExhausted(u64),
    #[error("invalid invite: {0}")]
    InvalidToken(String),
    #[error("this host is not in swarm '{0}'")]
    UnknownSwarm(String),
    #[error("'{agent}' is not a member of swarm '{swarm}'")]
    NotMember { swarm: String, agent: String },
    #[error("not allowed: {0}")]
    NotAllowed(String),
    #[error("'{0}' is already a member of this swarm")]
    AlreadyMember(String),
    #[error("message {0} was already received")]
    Replay(String),
    #[error("timestamp {timestamp} is {off_ms} ms away from this host's clock; at most {max_ms} ms are accepted")]
    Stale { timestamp: String, off_ms: i64, max_ms: u64 },
    #[error("the message expired at {0}")]
    Expired(String),
    #[error("the body is over the limit of {0} bytes")]
    TooLarge(usize),
    #[error("too many requests; retry in {0} s")]
    RateLimited(u64),
    #[error("peer {endpoint} refused or failed: {detail}")]
    Peer { endpoint: String, detail: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl AspError {
    pub fn code(&self) -> &'static str {
        match self {
            AspError::Malformed { .. } => "INVALID_FORMAT",
            AspError::BadSignature { .. } => "INVALID_SIGNATURE",
            AspError::InviteExpired(_) => "INVITE_EXPIRED",
            AspError::InviteExhausted(_) => "INVITE_EXHAUSTED",
            AspError::InvalidToken(_) => "INVALID_TOKEN",
            AspError::UnknownSwarm(_) => "SWARM_NOT_FOUND",
            AspError::NotMember { .. } => "NOT_MEMBER",
            AspError::NotAllowed(_) => "NOT_AUTHORIZED",
            AspError::AlreadyMember(_) => "ALREADY_MEMBER",
            AspError::Replay(_) => "DUPLICATE_MESSAGE",
            AspError::Stale { .. } => "STALE_MESSAGE",
            AspError::Expired(_) => "MESSAGE_EXPIRED",
            AspError::TooLarge(_) => "PAYLOAD_TOO_LARGE",
            AspError::RateLimited(_) => "RATE_LIMITED",
            AspError::Peer { .. } => "PEER_FAILED",
            AspError::Internal(_) => "INTERNAL_ERROR",
        }
    }

    /// The HTTP status this refusal is answered with.
    pub fn status(&self) -> u16 {
        match self {
            AspError::Malformed { .. } | AspError::Stale { .. } | AspError::Expired(_) => 400,
            AspError::BadSignature { .. } | AspError::InviteExpired(_) | AspError::InvalidToken(_) => 401,
            AspError::NotMember { .. } | AspError::NotAllowed(_) | AspError::InviteExhausted(_) => 403,
            AspError::UnknownSwarm(_) => 404,
            AspError::AlreadyMember(_) | AspError::Replay(_) => 409,
            AspError::TooLarge(_) => 413,
            AspError::RateLimited(_) => 429,
            AspError::Peer { .. } => 502,
            AspError::Internal(_) => 500,
        }
    }

    fn malformed(what: &'static str, detail: impl std::fmt::Display) -> AspError {
        AspError::Malformed { what, detail: detail.to_string() }
    }
}

impl From<crate::store::StoreError> for AspError {
    fn from(e: crate::store::StoreError) -> Self {
        AspError::Internal(e.to_string())
    }
}

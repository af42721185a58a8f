//! Agent Swarm Protocol (ASP 0.1.0): Ed25519-signed messages between hosts.
//!
//! This is the protocol's core vocabulary, shared by every later part of federation
//! (endpoints, membership, outbox): the wire message ([`Message`]), how it is signed and
//! verified ([`signing`]), invite tokens ([`invite`]) and the host's own key ([`identity`]).
//! Nothing here trusts its input: every check returns a typed [`AspError`] with a stable code.

pub mod identity;
pub mod invite;
pub mod signing;

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

/// Why an ASP input was refused. `code()` is stable (it goes on the wire and in the audit).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AspError {
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("the signature does not verify against the key held for '{signer}'")]
    BadSignature { signer: String },
    #[error("the invite expired at {0}")]
    InviteExpired(String),
}

impl AspError {
    pub fn code(&self) -> &'static str {
        match self {
            AspError::Malformed { .. } => "MALFORMED",
            AspError::BadSignature { .. } => "INVALID_SIGNATURE",
            AspError::InviteExpired(_) => "INVITE_EXPIRED",
        }
    }

    fn malformed(what: &'static str, detail: impl std::fmt::Display) -> AspError {
        AspError::Malformed { what, detail: detail.to_string() }
    }
}

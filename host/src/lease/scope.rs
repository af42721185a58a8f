//! Lease scopes: the names of the host-call families a lease can grant.
//!
//! A scope is the unit of authority a guest asks for and an operator grants. The names follow
//! ARCP's dotted style and map 1:1 to WIT interfaces, so an unknown name is always a mistake (a
//! typo in a lease request or a policy file) and is rejected with the list of names that exist.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::LeaseError;

/// One family of host calls a lease can grant. Deny by default: a scope missing from a lease
/// allows nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// `log` — write log lines; the target is the log level (`info`, `warn`, ...).
    Log,
    /// `kv.read` — read the job's key-value store; the target is the key.
    KvRead,
    /// `kv.write` — write the key-value store; the target is the key.
    KvWrite,
    /// `net.fetch` — outbound HTTP; the target is the full URL, matched by a [`super::UrlPattern`].
    NetFetch,
    /// `agent.delegate` — start a child job; the target is the agent name.
    AgentDelegate,
    /// `events` — emit progress and result chunks; the target is the event kind.
    Events,
    /// `agent.send` — send a routed message; the target is the recipient (an agent reference or
    /// an external agent id).
    AgentSend,
    /// `topic.publish` — publish a routed message to a topic's subscribers; the target is the
    /// topic.
    TopicPublish,
    /// `secret.use` — have the host inject a named secret into an outbound request; the target
    /// is the secret's name. The value never reaches the guest (see `crate::secrets`).
    SecretUse,
    /// `swarm.delegate` — run an agent on another host of a swarm this host is in; the target
    /// is `<swarm id>/<host agent id>/<agent>` (see `crate::asp::remote`).
    SwarmDelegate,
    /// `swarm.send` — send a message to an agent on another host of a swarm this host is in;
    /// the target is `<swarm id>/<host agent id>/<agent>`.
    SwarmSend,
}

impl Scope {
    /// Every scope, in a stable order (also the order of error messages and serialization).
    pub const ALL: [Scope; 11] = [
        Scope::Log,
        Scope::KvRead,
        Scope::KvWrite,
        Scope::NetFetch,
        Scope::AgentDelegate,
        Scope::Events,
        Scope::AgentSend,
        Scope::TopicPublish,
        Scope::SecretUse,
        Scope::SwarmDelegate,
        Scope::SwarmSend,
    ];

    /// The wire name, e.g. `"kv.read"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Log => "log",
            Scope::KvRead => "kv.read",
            Scope::KvWrite => "kv.write",
            Scope::NetFetch => "net.fetch",
            Scope::AgentDelegate => "agent.delegate",
            Scope::Events => "events",
            Scope::AgentSend => "agent.send",
            Scope::TopicPublish => "topic.publish",
            Scope::SecretUse => "secret.use",
            Scope::SwarmDelegate => "swarm.delegate",
            Scope::SwarmSend => "swarm.send",
        }
    }

    /// The known scope names joined for error messages: `log, kv.read, ...`.
    pub(crate) fn known_list() -> String {
        Scope::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = LeaseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .iter()
            .copied()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| LeaseError::Invalid(format!("unknown scope '{s}' (known: {})", Scope::known_list())))
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn every_scope_round_trips_through_its_name() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>().unwrap(), scope);
            let json = serde_json::to_string(&scope).unwrap();
            assert_eq!(json, format!("\"{}\"", scope.as_str()));
            assert_eq!(serde_json::from_str::<Scope>(&json).unwrap(), scope);
        }
    }

    #[test]
    fn unknown_scope_error_names_the_known_scopes() {
        let err = "kv.wrte".parse::<Scope>().unwrap_err().to_string();
        assert!(err.contains("unknown scope 'kv.wrte'"), "{err}");
        assert!(
            err.contains(
                "log, kv.read, kv.write, net.fetch, agent.delegate, events, agent.send, topic.publish, secret.use, swarm.delegate, swarm.send"
            ),
            "{err}"
        );
    }
}

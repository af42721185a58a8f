//! Routed messages between agents (SW4RM envelopes with staged ACKs). Scopes `agent.send`
//! (target: the recipient) and `topic.publish` (target: the topic).
//!
//! Send with [`send`], [`publish`], [`request`] (send and wait for the reply) or [`reply`].
//! To *consume* messages, implement [`Consumer`] and export the agent with
//! [`export_consumer!`](crate::export_consumer); each delivery runs in a fresh instance under
//! the lease: your declared scopes ∩ the policy ceiling of whoever produced the message.
//!
//! ```ignore
//! use corral_guest::messaging::{self, Ack, Consumer, Envelope, Message};
//!
//! let id = messaging::send("greeter", &Message::json(&json!({"name": "ada"}))?)?;
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::bindings::corral::agent::messaging as wit;
use crate::{Denial, Error};

pub use wit::{CommunicationClass as Class, Envelope, ErrorCode, MessageType};

/// A message to send: its type, content type and payload, and how to deliver it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub message_type: MessageType,
    pub content_type: String,
    pub payload: Vec<u8>,
    pub correlation_id: Option<String>,
    pub idempotency_token: Option<String>,
    pub require_ack: bool,
    pub ack_timeout_ms: Option<u64>,
    pub retry_attempts: Option<u32>,
    pub retry_delay_ms: Option<u64>,
    pub retry_backoff_factor: Option<f64>,
    pub ttl_ms: Option<u64>,
    pub class: Class,
}

impl Message {
    /// A DATA message with these bytes.
    pub fn bytes(content_type: impl Into<String>, payload: impl Into<Vec<u8>>) -> Message {
        Message {
            message_type: MessageType::Data,
            content_type: content_type.into(),
            payload: payload.into(),
            correlation_id: None,
            idempotency_token: None,
            require_ack: false,
            ack_timeout_ms: None,
            retry_attempts: None,
            retry_delay_ms: None,
            retry_backoff_factor: None,
            ttl_ms: None,
            class: Class::Standard,
        }
    }

    /// A DATA message whose payload is `value` as JSON (`application/json`).
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Message, Error> {
        let payload =
            serde_json::to_vec(value).map_err(|e| Error::invalid(format!("cannot serialize payload: {e}")))?;
        Ok(Message::bytes("application/json", payload))
    }

    #[must_use]
    pub fn with_type(mut self, message_type: MessageType) -> Self {
        self.message_type = message_type;
        self
    }

    /// Names the logical message: the host deduplicates sends with the same token.
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.idempotency_token = Some(token.into());
        self
    }

    #[must_use]
    pub fn with_correlation(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    /// Ask for an ACKNOWLEDGEMENT envelope when the message reaches its outcome (delivered to
    /// this agent's `on-message` if it is a consumer).
    #[must_use]
    pub fn require_ack(mut self) -> Self {
        self.require_ack = true;
        self
    }

    #[must_use]
    pub fn ack_timeout_ms(mut self, ms: u64) -> Self {
        self.ack_timeout_ms = Some(ms);
        self
    }

    /// Retries after timed-out attempts, the first after `delay_ms`, each next one
    /// `factor` times longer (with jitter).
    #[must_use]
    pub fn retries(mut self, attempts: u32, delay_ms: u64, factor: f64) -> Self {
        self.retry_attempts = Some(attempts);
        self.retry_delay_ms = Some(delay_ms);
        self.retry_backoff_factor = Some(factor);
        self
    }

    #[must_use]
    pub fn ttl_ms(mut self, ms: u64) -> Self {
        self.ttl_ms = Some(ms);
        self
    }

    #[must_use]
    pub fn class(mut self, class: Class) -> Self {
        self.class = class;
        self
    }

    fn to_wit(&self) -> wit::Message {
        wit::Message {
            message_type: self.message_type,
            content_type: self.content_type.clone(),
            payload: self.payload.clone(),
            correlation_id: self.correlation_id.clone(),
            idempotency_token: self.idempotency_token.clone(),
            delivery: wit::Delivery {
                require_ack: self.require_ack,
                ack_timeout_ms: self.ack_timeout_ms,
                retry_attempts: self.retry_attempts,
                retry_delay_ms: self.retry_delay_ms,
                retry_backoff_factor: self.retry_backoff_factor,
                ttl_ms: self.ttl_ms,
                class: self.class,
            },
        }
    }
}

impl Envelope {
    /// The payload parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| Error::invalid(format!("payload is not the expected JSON: {e}")))
    }

    /// The payload as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

impl From<wit::SendError> for Error {
    fn from(err: wit::SendError) -> Self {
        match err {
            wit::SendError::Denied(d) => Error::Denied(Denial { scope: d.scope, target: d.target, reason: d.reason }),
            wit::SendError::Refused(r) => Error::Refused { code: r.code, reason: r.reason },
            wit::SendError::Invalid(m) => Error::Invalid(m),
            wit::SendError::Failed(m) => Error::Failed(m),
        }
    }
}

/// Sends `msg` to `recipient` (`name`, `name@version`, or an external agent id); returns the
/// message's id once it is committed to the recipient's inbox.
pub fn send(recipient: &str, msg: &Message) -> Result<String, Error> {
    Ok(wit::send(recipient, &msg.to_wit())?)
}

/// Publishes `msg` to every subscriber of `topic`; returns one id per subscriber.
pub fn publish(topic: &str, msg: &Message) -> Result<Vec<String>, Error> {
    Ok(wit::publish(topic, &msg.to_wit())?)
}

/// Sends `msg` and waits up to `timeout_ms` for the reply (see [`reply`]).
pub fn request(recipient: &str, msg: &Message, timeout_ms: u32) -> Result<Envelope, Error> {
    Ok(wit::request(recipient, &msg.to_wit(), timeout_ms)?)
}

/// Answers `to`: sends `msg` to its producer with its correlation id.
pub fn reply(to: &Envelope, msg: &Message) -> Result<String, Error> {
    Ok(wit::reply(to, &msg.to_wit())?)
}

/// SW4RM's idempotency token for one logical operation: `producer:operation:` + the first 16
/// hex characters of `sha256(producer ‖ "\n" ‖ operation ‖ "\n" ‖ canonical)`. The caller owns
/// the canonical bytes (e.g. a stable JSON encoding). A line feed in `producer` or `operation`
/// is refused.
pub fn token(producer: &str, operation: &str, canonical: &[u8]) -> Result<String, Error> {
    if producer.contains('\n') || operation.contains('\n') {
        return Err(Error::invalid("idempotency token: producer and operation may not contain a line feed"));
    }
    let mut hash = Sha256::new();
    hash.update(producer.as_bytes());
    hash.update(b"\n");
    hash.update(operation.as_bytes());
    hash.update(b"\n");
    hash.update(canonical);
    let digest = hash.finalize();
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Ok(format!("{producer}:{operation}:{hex}"))
}

/// SW4RM's name of an error code, e.g. `NO_ROUTE`.
pub fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BufferFull => "BUFFER_FULL",
        ErrorCode::NoRoute => "NO_ROUTE",
        ErrorCode::AckTimeout => "ACK_TIMEOUT",
        ErrorCode::AgentUnavailable => "AGENT_UNAVAILABLE",
        ErrorCode::AgentShutdown => "AGENT_SHUTDOWN",
        ErrorCode::ValidationError => "VALIDATION_ERROR",
        ErrorCode::PermissionDenied => "PERMISSION_DENIED",
        ErrorCode::UnsupportedMessageType => "UNSUPPORTED_MESSAGE_TYPE",
        ErrorCode::OversizePayload => "OVERSIZE_PAYLOAD",
        ErrorCode::ToolTimeout => "TOOL_TIMEOUT",
        ErrorCode::ForcedPreemption => "FORCED_PREEMPTION",
        ErrorCode::TtlExpired => "TTL_EXPIRED",
        ErrorCode::DuplicateDetected => "DUPLICATE_DETECTED",
        ErrorCode::AlreadyInProgress => "ALREADY_IN_PROGRESS",
        ErrorCode::Overloaded => "OVERLOADED",
        ErrorCode::InternalError => "INTERNAL_ERROR",
    }
}

/// How a consumer ends a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Ack {
    /// Done. The delivery's kv writes commit with this outcome.
    Fulfilled,
    /// Not processed (kv writes are discarded), e.g. `ErrorCode::ValidationError`.
    Rejected { code: ErrorCode, reason: String },
    /// Tried and failed (kv writes are discarded).
    Failed(String),
}

impl Ack {
    pub fn rejected(code: ErrorCode, reason: impl Into<String>) -> Ack {
        Ack::Rejected { code, reason: reason.into() }
    }
}

/// An agent that consumes routed messages. Export it with
/// [`export_consumer!`](crate::export_consumer) (it must be an [`Agent`](crate::Agent) too).
pub trait Consumer {
    /// Handles one delivered message.
    fn on_message(msg: Envelope) -> Ack;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_the_sw4rm_reference() {
        assert_eq!(token("agent", "work", b"").ok().as_deref(), Some("agent:work:e09d48d3d73fad94"));
        assert_eq!(token("agent", "work", br#"{"a":1,"b":2}"#).ok().as_deref(), Some("agent:work:f65efee16e55e693"));
        assert!(token("agent\nx", "work", b"").is_err());
    }
}

//! The message plane's vocabulary: SW4RM's envelope, message types, ACK stages and error
//! codes, with their wire numbers (`sw4rm/protos/common.proto`) and names, plus what corral adds:
//! an explicit recipient and per-message delivery options.
//!
//! Names are SW4RM's upper-case names on every wire corral speaks (HTTP JSON, and later gRPC
//! by number); parsing accepts the name in any case or the number, so a front door can pass
//! through whatever its client sends.

use serde::{Deserialize, Serialize};

/// Declares an enum whose variants carry SW4RM's wire number and name.
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $num:literal, $text:literal;)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The SW4RM name, e.g. `FULFILLED`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The protobuf enum number.
            pub fn number(self) -> i32 {
                match self {
                    $($name::$variant => $num,)+
                }
            }

            pub fn from_number(n: i64) -> Option<$name> {
                $name::ALL.iter().copied().find(|v| i64::from(v.number()) == n)
            }

            /// The name in any case, or the number as text.
            pub fn parse(text: &str) -> Option<$name> {
                if let Ok(n) = text.parse::<i64>() {
                    return $name::from_number(n);
                }
                $name::ALL.iter().copied().find(|v| v.as_str().eq_ignore_ascii_case(text))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = serde_json::Value::deserialize(deserializer)?;
                let parsed = match &value {
                    serde_json::Value::String(s) => $name::parse(s),
                    serde_json::Value::Number(n) => n.as_i64().and_then($name::from_number),
                    _ => None,
                };
                parsed.ok_or_else(|| {
                    let known: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                    serde::de::Error::custom(format!(
                        "unknown {} {value} (known: {})",
                        stringify!($name),
                        known.join(", ")
                    ))
                })
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                let names: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some(names))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

wire_enum! {
    /// SW4RM `MessageType`.
    MessageType {
        Control = 1, "CONTROL";
        Data = 2, "DATA";
        Heartbeat = 3, "HEARTBEAT";
        Notification = 4, "NOTIFICATION";
        Acknowledgement = 5, "ACKNOWLEDGEMENT";
        HitlInvocation = 6, "HITL_INVOCATION";
        WorktreeControl = 7, "WORKTREE_CONTROL";
        Negotiation = 8, "NEGOTIATION";
        ToolCall = 9, "TOOL_CALL";
        ToolResult = 10, "TOOL_RESULT";
        ToolError = 11, "TOOL_ERROR";
    }
}

wire_enum! {
    /// SW4RM `AckStage`: where a message is in its lifecycle.
    AckStage {
        Received = 1, "RECEIVED";
        Read = 2, "READ";
        Fulfilled = 3, "FULFILLED";
        Rejected = 4, "REJECTED";
        Failed = 5, "FAILED";
        TimedOut = 6, "TIMED_OUT";
    }
}

wire_enum! {
    /// SW4RM `ErrorCode`.
    ErrorCode {
        BufferFull = 1, "BUFFER_FULL";
        NoRoute = 2, "NO_ROUTE";
        AckTimeout = 3, "ACK_TIMEOUT";
        AgentUnavailable = 4, "AGENT_UNAVAILABLE";
        AgentShutdown = 5, "AGENT_SHUTDOWN";
        ValidationError = 6, "VALIDATION_ERROR";
        PermissionDenied = 7, "PERMISSION_DENIED";
        UnsupportedMessageType = 8, "UNSUPPORTED_MESSAGE_TYPE";
        OversizePayload = 9, "OVERSIZE_PAYLOAD";
        ToolTimeout = 10, "TOOL_TIMEOUT";
        ForcedPreemption = 12, "FORCED_PREEMPTION";
        TtlExpired = 13, "TTL_EXPIRED";
        DuplicateDetected = 14, "DUPLICATE_DETECTED";
        AlreadyInProgress = 15, "ALREADY_IN_PROGRESS";
        Overloaded = 16, "OVERLOADED";
        InternalError = 99, "INTERNAL_ERROR";
    }
}

wire_enum! {
    /// SW4RM `CommunicationClass`: the delivery lane (STANDARD unless given).
    #[derive(Default)]
    CommClass {
        Privileged = 1, "PRIVILEGED";
        #[default]
        Standard = 2, "STANDARD";
        Bulk = 3, "BULK";
    }
}

impl AckStage {
    /// FULFILLED, REJECTED, FAILED and (once retries are exhausted) TIMED_OUT end a message.
    /// A TIMED_OUT *attempt* may be followed by a retry; see [`crate::messages`].
    pub fn is_outcome(self) -> bool {
        !matches!(self, AckStage::Received | AckStage::Read)
    }
}

/// Where a message goes. Exactly one recipient per message row; a topic fans out to one row
/// per subscriber. Nothing is broadcast.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Recipient {
    /// `name`, `name@version`, or a registered external agent's id.
    Agent(String),
    /// Every consumer subscribed to the topic.
    Topic(String),
}

impl Recipient {
    pub fn as_target(&self) -> &str {
        match self {
            Recipient::Agent(a) | Recipient::Topic(a) => a,
        }
    }
}

/// Per-message delivery options (`None` = the host's default, see [`Defaults`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryOptions {
    /// Send ACKNOWLEDGEMENT envelopes to the producer at READ and at the outcome.
    #[serde(default)]
    pub require_ack: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff_factor: Option<f64>,
    /// 0 or absent: no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    #[serde(default)]
    pub class: CommClass,
}

/// The options of a message with every default filled in, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub require_ack: bool,
    pub ack_timeout_ms: u64,
    pub retry_attempts: u32,
    pub retry_delay_ms: u64,
    pub retry_backoff_factor: f64,
    /// 0 = no expiry.
    pub ttl_ms: u64,
    pub class: CommClass,
}

/// Host-wide defaults and bounds for delivery options (policy `[messages]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Defaults {
    pub ack_timeout_ms: u64,
    pub max_ack_timeout_ms: u64,
    pub retry_attempts: u32,
    pub max_retry_attempts: u32,
    pub retry_delay_ms: u64,
    pub retry_backoff_factor: f64,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            ack_timeout_ms: 30_000,
            max_ack_timeout_ms: 3_600_000,
            retry_attempts: 3,
            max_retry_attempts: 20,
            retry_delay_ms: 1_000,
            retry_backoff_factor: 2.0,
        }
    }
}

impl DeliveryOptions {
    /// Fills in defaults and clamps to the host's bounds; `Err` names a value that is invalid.
    pub fn resolve(&self, d: &Defaults) -> Result<Delivery, String> {
        let factor = self.retry_backoff_factor.unwrap_or(d.retry_backoff_factor);
        if !factor.is_finite() || !(1.0..=10.0).contains(&factor) {
            return Err(format!("retry_backoff_factor {factor} must be between 1 and 10"));
        }
        let ack_timeout_ms = self.ack_timeout_ms.unwrap_or(d.ack_timeout_ms);
        if ack_timeout_ms == 0 {
            return Err("ack_timeout_ms must be at least 1".to_owned());
        }
        Ok(Delivery {
            require_ack: self.require_ack,
            ack_timeout_ms: ack_timeout_ms.min(d.max_ack_timeout_ms),
            retry_attempts: self.retry_attempts.unwrap_or(d.retry_attempts).min(d.max_retry_attempts),
            retry_delay_ms: self.retry_delay_ms.unwrap_or(d.retry_delay_ms).min(d.max_ack_timeout_ms),
            retry_backoff_factor: factor,
            ttl_ms: self.ttl_ms.unwrap_or(0),
            class: self.class,
        })
    }
}

impl Delivery {
    /// Delay before retry number `retry` (1-based): `delay × factor^(retry-1)`, capped at an
    /// hour, with ±20 % jitter from `jitter` ∈ [0, 1).
    pub fn backoff_ms(&self, retry: u32, jitter: f64) -> u64 {
        let exp = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX).min(64);
        let base = (self.retry_delay_ms as f64) * self.retry_backoff_factor.powi(exp);
        let jittered = base * (0.8 + 0.4 * jitter.clamp(0.0, 1.0));
        jittered.clamp(0.0, 3_600_000.0) as u64
    }
}

/// An envelope as it is stored and delivered: SW4RM's fields, plus the recipient it was
/// routed to. `message_id` and `retry_count` are those of the current attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Envelope {
    pub message_id: String,
    #[serde(default)]
    pub idempotency_token: String,
    pub producer_id: String,
    pub correlation_id: String,
    #[serde(default)]
    pub parent_correlation_id: String,
    pub sequence_number: u64,
    pub retry_count: u32,
    pub message_type: MessageType,
    pub content_type: String,
    pub content_length: u64,
    #[serde(default)]
    pub ttl_ms: u64,
    #[serde(default)]
    pub hlc_timestamp: String,
    /// Unix milliseconds when the producer sent it.
    pub timestamp_ms: i64,
    /// The agent or external agent this copy is routed to.
    pub recipient: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// Longest id, token, producer or content type accepted in an envelope.
pub const MAX_FIELD_BYTES: usize = 256;

/// Checks the text fields a producer controls: bounded and printable.
pub fn check_field(name: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_FIELD_BYTES {
        return Err(format!("{name} is {} bytes; at most {MAX_FIELD_BYTES}", value.len()));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{name} contains control characters"));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn wire_enums_use_sw4rm_numbers_and_names() {
        assert_eq!(MessageType::Acknowledgement.number(), 5);
        assert_eq!(AckStage::TimedOut.number(), 6);
        assert_eq!(ErrorCode::TtlExpired.number(), 13);
        assert_eq!(ErrorCode::InternalError.number(), 99);
        assert_eq!(AckStage::parse("fulfilled"), Some(AckStage::Fulfilled));
        assert_eq!(AckStage::parse("3"), Some(AckStage::Fulfilled));
        assert_eq!(serde_json::from_str::<AckStage>("2").unwrap(), AckStage::Read);
        assert_eq!(serde_json::to_string(&ErrorCode::NoRoute).unwrap(), "\"NO_ROUTE\"");
        let err = serde_json::from_str::<MessageType>("\"DATUM\"").unwrap_err().to_string();
        assert!(err.contains("known: CONTROL, DATA"), "{err}");
    }

    #[test]
    fn delivery_defaults_fill_in_and_bounds_clamp() {
        let d = Defaults::default();
        let resolved = DeliveryOptions::default().resolve(&d).unwrap();
        assert_eq!((resolved.ack_timeout_ms, resolved.retry_attempts, resolved.ttl_ms), (30_000, 3, 0));
        let huge = DeliveryOptions { retry_attempts: Some(1_000), ..DeliveryOptions::default() };
        assert_eq!(huge.resolve(&d).unwrap().retry_attempts, 20);
        let bad = DeliveryOptions { retry_backoff_factor: Some(f64::NAN), ..DeliveryOptions::default() };
        assert!(bad.resolve(&d).is_err());
        assert!(DeliveryOptions { ack_timeout_ms: Some(0), ..DeliveryOptions::default() }.resolve(&d).is_err());
    }

    #[test]
    fn backoff_grows_exponentially_with_bounded_jitter() {
        let delivery = DeliveryOptions::default().resolve(&Defaults::default()).unwrap();
        assert_eq!(delivery.backoff_ms(1, 0.5), 1_000);
        assert_eq!(delivery.backoff_ms(3, 0.5), 4_000);
        assert!((800..=1_200).contains(&delivery.backoff_ms(1, 0.99)));
        assert_eq!(delivery.backoff_ms(100, 0.5), 3_600_000);
    }
}

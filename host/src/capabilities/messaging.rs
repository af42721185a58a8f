//! Scopes `agent.send` (target: the recipient — an agent reference or an external agent id)
//! and `topic.publish` (target: the topic). A recipient `<swarm>/<host>/<agent>` is an agent on
//! another host: `send` then checks `swarm.send` instead and hands the message to
//! `capabilities::swarm`.
//!
//! A guest's side of the message plane: `send`, `publish`, `request` (send and wait for the
//! correlated reply) and `reply`. Every call is checked against the lease before anything is
//! enqueued, and goes through the same [`crate::messages::MessagePlane::send`] as every front
//! door. The producer is the running agent (its name is the envelope's `producer_id`); the
//! principal that submitted the job is the message's principal, whose ceiling bounds what the
//! consumer may do with it. Sending is an effect that leaves the run, so a held job (or a
//! delivery's READ stage) is recorded first.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};

use super::JobState;
use crate::bindings::HostError;
use crate::bindings::corral::agent::messaging::{
    self as wit, CommunicationClass, Envelope, ErrorCode as WitCode, Message, MessageType as WitType, Refusal,
    SendError,
};
use crate::lease::Scope;
use crate::messages::{self, CommClass, DeliveryOptions, ErrorCode, MessageType, Outgoing, Producer, Recipient};
use crate::store::MessageRecord;

pub fn add_to_linker(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    wit::add_to_linker::<JobState, HasSelf<JobState>>(linker, |s| s)
}

/// Longest a guest's `request` may wait (its job's deadline bounds it too).
const MAX_REQUEST_WAIT_MS: u32 = 300_000;

fn from_host_error(e: HostError) -> SendError {
    match e {
        HostError::Denied(d) => SendError::Denied(d),
        HostError::Invalid(m) => SendError::Invalid(m),
        HostError::Failed(m) => SendError::Failed(m),
    }
}

fn from_plane_error(e: messages::SendError) -> SendError {
    match e {
        messages::SendError::Refused { code, reason, .. } => {
            SendError::Refused(Refusal { code: to_wit_code(code), reason })
        }
        messages::SendError::Store(e) => SendError::Failed(format!("the message could not be stored: {e}")),
    }
}

impl JobState {
    /// The running agent as a producer.
    fn producer(&self) -> Producer {
        let name = self.ctx.agent.split_once('@').map_or(self.ctx.agent.as_str(), |(name, _)| name).to_owned();
        Producer { principal: self.ctx.principal.clone(), id: name.clone(), reply_to: Some(name) }
    }

    /// Counts and checks the call, then records the run before the message leaves it.
    async fn authorize_send(&mut self, scope: Scope, target: &str) -> wasmtime::Result<Result<(), SendError>> {
        if let Err(e) = self.ctx.authorize(scope, target)? {
            return Ok(Err(from_host_error(e)));
        }
        self.ctx.before_effect().await?;
        Ok(Ok(()))
    }

    fn outgoing(&self, recipient: Recipient, msg: Message) -> Outgoing {
        let d = msg.delivery;
        let mut out = Outgoing::new(recipient, from_wit_type(msg.message_type), &msg.content_type, msg.payload);
        out.correlation_id = msg.correlation_id;
        out.idempotency_token = msg.idempotency_token;
        out.sequence_number = Some(self.ctx.manager.messages().next_sequence());
        out.delivery = DeliveryOptions {
            require_ack: d.require_ack,
            ack_timeout_ms: d.ack_timeout_ms,
            retry_attempts: d.retry_attempts,
            retry_delay_ms: d.retry_delay_ms,
            retry_backoff_factor: d.retry_backoff_factor,
            ttl_ms: d.ttl_ms,
            class: from_wit_class(d.class),
        };
        out
    }

    async fn send_one(&mut self, out: Outgoing) -> Result<Vec<MessageRecord>, SendError> {
        let plane = Arc::clone(self.ctx.manager.messages());
        let accepted = plane.send(&self.producer(), out).await.map_err(from_plane_error)?;
        if let (Some(code), Some(first)) = (accepted.duplicate, accepted.messages.first()) {
            let reason = format!("already accepted as {} (stage {})", first.id, first.stage);
            return Err(SendError::Refused(Refusal { code: to_wit_code(code), reason }));
        }
        Ok(accepted.messages)
    }
}

impl wit::Host for JobState {
    async fn send(&mut self, recipient: String, msg: Message) -> wasmtime::Result<Result<String, SendError>> {
        // `<swarm>/<host>/<agent>`: an agent on another host (scope `swarm.send`).
        if recipient.contains('/') {
            return match super::swarm::send(self, recipient, msg.content_type, msg.payload).await? {
                Ok(id) => Ok(Ok(id)),
                Err(e) => Ok(Err(from_host_error(e))),
            };
        }
        if let Err(e) = self.authorize_send(Scope::AgentSend, &recipient).await? {
            return Ok(Err(e));
        }
        let out = self.outgoing(Recipient::Agent(recipient), msg);
        Ok(self.send_one(out).await.map(|sent| sent.into_iter().next().map(|m| m.id).unwrap_or_default()))
    }

    async fn publish(&mut self, topic: String, msg: Message) -> wasmtime::Result<Result<Vec<String>, SendError>> {
        if let Err(e) = self.authorize_send(Scope::TopicPublish, &topic).await? {
            return Ok(Err(e));
        }
        let out = self.outgoing(Recipient::Topic(topic), msg);
        Ok(self.send_one(out).await.map(|sent| sent.into_iter().map(|m| m.id).collect()))
    }

    async fn request(
        &mut self,
        recipient: String,
        msg: Message,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<Envelope, SendError>> {
        if let Err(e) = self.authorize_send(Scope::AgentSend, &recipient).await? {
            return Ok(Err(e));
        }
        let left = self.ctx.deadline.saturating_duration_since(std::time::Instant::now());
        let wait = Duration::from_millis(u64::from(timeout_ms.min(MAX_REQUEST_WAIT_MS))).min(left);
        let out = self.outgoing(Recipient::Agent(recipient.clone()), msg);
        let plane = Arc::clone(self.ctx.manager.messages());
        Ok(match plane.request(&self.producer(), out, wait).await {
            Ok(Some(reply)) => Ok(to_wit_envelope(&reply)),
            Ok(None) => Err(SendError::Refused(Refusal {
                code: WitCode::AckTimeout,
                reason: format!("no reply from {recipient} within {} ms", wait.as_millis()),
            })),
            Err(e) => Err(from_plane_error(e)),
        })
    }

    async fn reply(&mut self, to: Envelope, msg: Message) -> wasmtime::Result<Result<String, SendError>> {
        if let Err(e) = self.authorize_send(Scope::AgentSend, &to.producer_id).await? {
            return Ok(Err(e));
        }
        let mut out = self.outgoing(Recipient::Agent(to.producer_id.clone()), msg);
        out.correlation_id = Some(to.correlation_id);
        Ok(self.send_one(out).await.map(|sent| sent.into_iter().next().map(|m| m.id).unwrap_or_default()))
    }
}

/// A stored message as the consumer's `on-message` (or a `request`) receives it.
pub fn to_wit_envelope(m: &MessageRecord) -> Envelope {
    let e = &m.envelope;
    Envelope {
        message_id: e.message_id.clone(),
        idempotency_token: e.idempotency_token.clone(),
        producer_id: e.producer_id.clone(),
        correlation_id: e.correlation_id.clone(),
        parent_correlation_id: e.parent_correlation_id.clone(),
        sequence_number: e.sequence_number,
        retry_count: e.retry_count,
        message_type: to_wit_type(e.message_type),
        content_type: e.content_type.clone(),
        content_length: e.content_length,
        payload: m.payload.clone(),
        ttl_ms: e.ttl_ms,
        hlc_timestamp: e.hlc_timestamp.clone(),
        timestamp_ms: u64::try_from(e.timestamp_ms).unwrap_or(0),
        recipient: e.recipient.clone(),
        topic: e.topic.clone(),
    }
}

/// Declares the two-way mapping between a core wire enum and its WIT twin.
macro_rules! map_enum {
    ($to:ident, $from:ident, $core:ident, $wit:ident { $($variant:ident),+ $(,)? }) => {
        pub fn $to(v: $core) -> $wit {
            match v {
                $($core::$variant => $wit::$variant,)+
            }
        }

        pub fn $from(v: $wit) -> $core {
            match v {
                $($wit::$variant => $core::$variant,)+
            }
        }
    };
}

map_enum!(
    to_wit_type,
    from_wit_type,
    MessageType,
    WitType {
        Control,
        Data,
        Heartbeat,
        Notification,
        Acknowledgement,
        HitlInvocation,
        WorktreeControl,
        Negotiation,
        ToolCall,
        ToolResult,
        ToolError,
    }
);

map_enum!(to_wit_class, from_wit_class, CommClass, CommunicationClass { Privileged, Standard, Bulk });

map_enum!(
    to_wit_code,
    from_wit_code,
    ErrorCode,
    WitCode {
        BufferFull,
        NoRoute,
        AckTimeout,
        AgentUnavailable,
        AgentShutdown,
        ValidationError,
        PermissionDenied,
        UnsupportedMessageType,
        OversizePayload,
        ToolTimeout,
        ForcedPreemption,
        TtlExpired,
        DuplicateDetected,
        AlreadyInProgress,
        Overloaded,
        InternalError,
    }
);

//! ACKNOWLEDGEMENT envelopes from external agents: SW4RM's SDK acknowledges a message it got by
//! *sending* an envelope of type ACKNOWLEDGEMENT whose JSON payload names it —
//! `{"ack_for_message_id", "ack_stage", "error_code", "note"}`, stages as integers (the SDK) or
//! names. Such an envelope updates the named message's stage history — only the message's own
//! recipient may — and is then forwarded to that message's producer, like the ACKs corral makes
//! for Wasm consumers.
//!
//! A terminal ACK (FULFILLED, REJECTED, FAILED) also releases the message's delivery, so a
//! client that never calls the explicit release (sw4rm-sdk 0.6.0 has no `AckDelivery`) does not
//! get it again; RECEIVED is recorded nowhere (the message already is), READ marks it READ.

use std::sync::Arc;

use serde_json::Value;

use super::MessagePlane;
use super::envelope::{AckStage, ErrorCode, MessageType, Recipient};
use super::route::{Accepted, Outgoing, Producer, SendError};
use crate::store::{MessageTransition, RecipientKind};

/// A parsed ACKNOWLEDGEMENT payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckPayload {
    pub ack_for_message_id: String,
    pub stage: AckStage,
    pub error_code: Option<ErrorCode>,
    pub note: String,
}

impl AckPayload {
    /// `None` if the payload is not an ACK (not JSON, or no `ack_for_message_id`/`ack_stage`);
    /// `Some(Err)` if it is one with a stage that means nothing.
    pub fn parse(payload: &[u8]) -> Option<Result<AckPayload, String>> {
        let value: Value = serde_json::from_slice(payload).ok()?;
        let id = value.get("ack_for_message_id")?.as_str()?.to_owned();
        let raw = value.get("ack_stage")?;
        let stage = match raw {
            // sw4rm-sdk 0.6.0's constants module defines FAILED = 10 (AgentState's
            // FAILED_STATE shadows AckStage's FAILED = 5), so 10 arrives meaning FAILED.
            Value::Number(n) if n.as_i64() == Some(10) => Some(AckStage::Failed),
            Value::Number(n) => n.as_i64().and_then(AckStage::from_number),
            Value::String(s) => AckStage::parse(s),
            _ => None,
        };
        let Some(stage) = stage else { return Some(Err(format!("ack_stage {raw} is not an ACK stage"))) };
        let error_code = match value.get("error_code") {
            Some(Value::Number(n)) => n.as_i64().and_then(ErrorCode::from_number),
            Some(Value::String(s)) => ErrorCode::parse(s),
            _ => None,
        };
        let note = value.get("note").and_then(Value::as_str).unwrap_or_default().to_owned();
        Some(Ok(AckPayload { ack_for_message_id: id, stage, error_code, note }))
    }
}

impl MessagePlane {
    /// Applies an ACKNOWLEDGEMENT from `producer` (see the module docs) and forwards it to the
    /// acknowledged message's producer. Refused with PERMISSION_DENIED unless `producer` is the
    /// external agent the message was routed to, owned by the same principal.
    pub(super) async fn acknowledge(
        self: &Arc<Self>,
        producer: &Producer,
        out: Outgoing,
        ack: AckPayload,
    ) -> Result<Accepted, SendError> {
        let refuse = |code, reason: String| SendError::Refused { code, reason, recorded: Vec::new() };
        let Some(message) = self.store.find_message(&ack.ack_for_message_id).await? else {
            return Err(refuse(ErrorCode::NoRoute, format!("no message {} to acknowledge", ack.ack_for_message_id)));
        };
        let own = message.kind == RecipientKind::External
            && message.envelope.recipient == producer.id
            && self.lock().externals.owner(&producer.id) == Some(producer.principal.as_str());
        if !own {
            return Err(refuse(
                ErrorCode::PermissionDenied,
                format!("only the recipient of message {} may acknowledge it", ack.ack_for_message_id),
            ));
        }
        let now = crate::now_ms();
        let attempt = message.envelope.message_id.clone();
        let named_current = ack.ack_for_message_id == attempt
            || (ack.ack_for_message_id == message.id && message.envelope.retry_count == 0);
        if named_current && ack.stage != AckStage::Received {
            let from: &[AckStage] =
                if ack.stage == AckStage::Read { &[AckStage::Received] } else { &[AckStage::Received, AckStage::Read] };
            let mut t = MessageTransition::new(from, ack.stage, now).attempt(&attempt);
            if let Some(code) = ack.error_code {
                t = t.code(code);
            }
            if !ack.note.is_empty() {
                t = t.note(ack.note.clone());
            }
            if self.store.transition_message(&message.id, t).await?.is_some() && ack.stage.is_outcome() {
                self.release_acknowledged(&producer.id, &message.id);
            }
        }
        // Forwarded as the ACK it is, to whoever can receive it for the producer.
        let Some(reply_to) = message.reply_to.clone() else {
            return Ok(Accepted { messages: Vec::new(), duplicate: None });
        };
        let mut forward = out;
        forward.recipient = Recipient::Agent(reply_to);
        forward.message_type = MessageType::Acknowledgement;
        forward.correlation_id = forward.correlation_id.or_else(|| Some(message.envelope.correlation_id.clone()));
        let forwarder = Producer { principal: message.principal.clone(), id: producer.id.clone(), reply_to: None };
        match self.route(&forwarder, forward).await {
            Ok(accepted) => Ok(accepted),
            // The stage is recorded; a producer that cannot take the ACK just does not get it.
            Err(SendError::Refused { code: ErrorCode::NoRoute | ErrorCode::AgentUnavailable, .. }) => {
                Ok(Accepted { messages: Vec::new(), duplicate: None })
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn sdk_acks_parse_with_integer_or_named_stages() {
        let sdk = br#"{"ack_for_message_id": "m1", "ack_stage": 3, "error_code": 0, "note": ""}"#;
        let ack = AckPayload::parse(sdk).unwrap().unwrap();
        assert_eq!((ack.ack_for_message_id.as_str(), ack.stage, ack.error_code), ("m1", AckStage::Fulfilled, None));
        let named =
            br#"{"ack_for_message_id": "m1", "ack_stage": "REJECTED", "error_code": "VALIDATION_ERROR", "note": "no"}"#;
        let ack = AckPayload::parse(named).unwrap().unwrap();
        assert_eq!(
            (ack.stage, ack.error_code, ack.note.as_str()),
            (AckStage::Rejected, Some(ErrorCode::ValidationError), "no")
        );
        let quirk = br#"{"ack_for_message_id": "m1", "ack_stage": 10}"#;
        assert_eq!(AckPayload::parse(quirk).unwrap().unwrap().stage, AckStage::Failed);
        assert!(AckPayload::parse(br#"{"ack_for_message_id": "m1", "ack_stage": 42}"#).unwrap().is_err());
        assert!(AckPayload::parse(b"not json").is_none());
        assert!(AckPayload::parse(br#"{"hello": 1}"#).is_none());
    }
}

//! SW4RM protobuf ↔ the message plane's types, and the one table of what becomes which answer.

use prost_types::Timestamp;
use tonic::metadata::MetadataMap;

use super::proto::common::Envelope as WireEnvelope;
use crate::messages::{AckStage, DeliveryOptions, ErrorCode, MessageType, Outgoing, Recipient, SendError};
use crate::store::{MessageRecord, StoreError};

/// Metadata key a client may set to name the recipient.
pub const RECIPIENT_METADATA: &str = "x-corral-recipient";

/// Metadata key of the SW4RM error code (its number) on a refused or duplicate send.
pub const ERROR_CODE_METADATA: &str = "x-sw4rm-error-code";

/// A refusal as the codec reports it: SW4RM's code and a reason for humans.
pub type Refusal = (ErrorCode, String);

/// Where an envelope goes: corral's field 200, else `x-corral-recipient` metadata, else the JSON
/// payload's top-level `"recipient"` or `"to"`. `topic:<name>` names a topic.
pub fn recipient(envelope: &WireEnvelope, metadata: &MetadataMap) -> Option<Recipient> {
    let from_payload = || {
        let value: serde_json::Value = serde_json::from_slice(&envelope.payload).ok()?;
        ["recipient", "to"].iter().find_map(|k| value.get(*k).and_then(|v| v.as_str()).map(str::to_owned))
    };
    let named = Some(envelope.recipient.clone())
        .filter(|r| !r.is_empty())
        .or_else(|| metadata.get(RECIPIENT_METADATA).and_then(|v| v.to_str().ok()).map(str::to_owned))
        .or_else(from_payload)?;
    Some(match named.strip_prefix("topic:") {
        Some(topic) => Recipient::Topic(topic.to_owned()),
        None => Recipient::Agent(named),
    })
}

/// An envelope from a client as the plane's [`Outgoing`], and the `producer_id` it claims
/// (empty if none). ACKNOWLEDGEMENT envelopes need no recipient (they name the message they
/// acknowledge).
pub fn outgoing(envelope: WireEnvelope, metadata: &MetadataMap) -> Result<(Outgoing, String), Refusal> {
    let message_type = MessageType::from_number(i64::from(envelope.message_type)).ok_or_else(|| {
        (ErrorCode::ValidationError, format!("message_type {} is not a SW4RM message type", envelope.message_type))
    })?;
    let recipient = match recipient(&envelope, metadata) {
        Some(r) => r,
        None if message_type == MessageType::Acknowledgement => Recipient::Agent(String::new()),
        None => {
            return Err((
                ErrorCode::NoRoute,
                "the envelope names no recipient: set corral's Envelope.recipient (field 200), the \
                 x-corral-recipient metadata, or a top-level \"to\" in a JSON payload"
                    .to_owned(),
            ));
        }
    };
    let producer_id = envelope.producer_id.clone();
    let content_type =
        if envelope.content_type.is_empty() { "application/octet-stream".to_owned() } else { envelope.content_type };
    let mut out = Outgoing::new(recipient, message_type, &content_type, envelope.payload);
    // proto3 cannot tell "0" from "unset": 0 with a payload means the client did not say.
    out.content_length = (envelope.content_length != 0 || out.payload.is_empty()).then_some(envelope.content_length);
    let given = |s: String| Some(s).filter(|s| !s.is_empty());
    out.message_id = given(envelope.message_id);
    out.correlation_id = given(envelope.correlation_id);
    out.parent_correlation_id = given(envelope.parent_correlation_id);
    out.idempotency_token = given(envelope.idempotency_token);
    out.hlc_timestamp = given(envelope.hlc_timestamp);
    // sw4rm-sdk 0.6.0 sends `sequence_number or 1`: 0 and 1 mean "not numbered" (else every
    // second message of such a client would be a duplicate of its first).
    out.sequence_number = (envelope.sequence_number > 1).then_some(envelope.sequence_number);
    out.timestamp_ms =
        envelope.timestamp.map(|t| t.seconds.saturating_mul(1000).saturating_add(i64::from(t.nanos / 1_000_000)));
    out.delivery =
        DeliveryOptions { ttl_ms: (envelope.ttl_ms > 0).then_some(envelope.ttl_ms), ..DeliveryOptions::default() };
    Ok((out, producer_id))
}

/// A stored message as the envelope a recipient's stream carries.
pub fn to_wire(m: &MessageRecord) -> WireEnvelope {
    let e = &m.envelope;
    WireEnvelope {
        message_id: e.message_id.clone(),
        idempotency_token: e.idempotency_token.clone(),
        producer_id: e.producer_id.clone(),
        correlation_id: e.correlation_id.clone(),
        sequence_number: e.sequence_number,
        retry_count: e.retry_count,
        message_type: e.message_type.number(),
        content_type: e.content_type.clone(),
        content_length: e.content_length,
        repo_id: String::new(),
        worktree_id: String::new(),
        hlc_timestamp: e.hlc_timestamp.clone(),
        ttl_ms: e.ttl_ms,
        timestamp: Some(Timestamp {
            seconds: e.timestamp_ms.div_euclid(1000),
            nanos: i32::try_from(e.timestamp_ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
        }),
        payload: m.payload.clone(),
        state: envelope_state(m.stage),
        parent_correlation_id: e.parent_correlation_id.clone(),
        recipient: e.recipient.clone(),
    }
}

/// SW4RM's `EnvelopeState` number of a stage.
fn envelope_state(stage: AckStage) -> i32 {
    match stage {
        AckStage::Received => 2,
        AckStage::Read => 3,
        AckStage::Fulfilled => 4,
        AckStage::Rejected => 5,
        AckStage::Failed => 6,
        AckStage::TimedOut => 7,
    }
}

/// What a plane error becomes: a routing refusal is an answer (`accepted = false`, the code in
/// the reason and in metadata); a storage failure is `UNAVAILABLE`.
pub fn refusal(e: SendError) -> Result<Refusal, tonic::Status> {
    match e {
        SendError::Refused { code, reason, .. } => Ok((code, reason)),
        SendError::Store(e) => Err(unavailable(&e)),
    }
}

pub fn unavailable(e: &StoreError) -> tonic::Status {
    tonic::Status::unavailable(format!("storage unavailable: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn envelope(payload: &str) -> WireEnvelope {
        WireEnvelope { message_type: 2, payload: payload.as_bytes().to_vec(), ..WireEnvelope::default() }
    }

    #[test]
    fn the_recipient_comes_from_the_field_then_metadata_then_the_payload() {
        let mut metadata = MetadataMap::new();
        assert_eq!(recipient(&envelope(r#"{"to": "b"}"#), &metadata), Some(Recipient::Agent("b".into())));
        assert_eq!(
            recipient(&envelope(r#"{"recipient": "topic:news"}"#), &metadata),
            Some(Recipient::Topic("news".into()))
        );
        metadata.insert(RECIPIENT_METADATA, "c".parse().unwrap());
        assert_eq!(recipient(&envelope(r#"{"to": "b"}"#), &metadata), Some(Recipient::Agent("c".into())));
        let mut named = envelope(r#"{"to": "b"}"#);
        named.recipient = "d@1.0.0".into();
        assert_eq!(recipient(&named, &metadata), Some(Recipient::Agent("d@1.0.0".into())));
        assert_eq!(recipient(&envelope("not json"), &MetadataMap::new()), None);
    }

    #[test]
    fn envelopes_map_field_by_field_and_the_sdk_default_sequence_is_unnumbered() {
        let mut e = envelope(r#"{"to": "b"}"#);
        e.message_id = "m1".into();
        e.sequence_number = 1;
        e.content_length = 11;
        e.ttl_ms = 500;
        let (out, _) = outgoing(e, &MetadataMap::new()).unwrap();
        assert_eq!(out.message_id.as_deref(), Some("m1"));
        assert_eq!(out.sequence_number, None);
        assert_eq!(out.content_length, Some(11));
        assert_eq!(out.delivery.ttl_ms, Some(500));
        let bad = WireEnvelope { message_type: 99, ..envelope("{}") };
        assert_eq!(outgoing(bad, &MetadataMap::new()).unwrap_err().0, ErrorCode::ValidationError);
        assert_eq!(outgoing(envelope("x"), &MetadataMap::new()).unwrap_err().0, ErrorCode::NoRoute);
    }
}

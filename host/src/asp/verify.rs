//! The checks of an inbound message that need no stored state: its shape, its clock, and its
//! signature against a member's key under the member's scheme. `federation` runs them in this
//! order, after finding the member and before anything is written:
//!
//! 1. [`shape`]: the fields ASP requires, in the forms it requires (UUIDs, `X.Y.Z`, an HTTPS
//!    endpoint, a known type), within size bounds;
//! 2. [`signature`]: the member's key, under the scheme the member advertised — a peer that
//!    advertised `corral-lp/1` never gets a 0.1.0 signature accepted (no downgrade);
//! 3. [`clock`]: the timestamp within `max_skew_ms` of this host's clock (either way) and
//!    `expires_at`, if given, not passed. Replays within the window are caught by the seen-id
//!    table (`store::swarm`), so an id only has to be remembered until its timestamp is stale.

use super::signing::{self, Scheme};
use super::{AspError, Message};
use crate::store::MemberRecord;

/// Longest id, type, recipient or sender field accepted (content is bounded by the body limit).
const MAX_FIELD: usize = 512;

/// The message types ASP defines.
pub const TYPES: [&str; 3] = ["message", "system", "notification"];

fn malformed(what: &'static str, detail: impl std::fmt::Display) -> AspError {
    AspError::Malformed { what, detail: detail.to_string() }
}

/// Whether `text` is a UUID in the lower- or upper-case hyphenated form ASP uses.
pub fn is_uuid(text: &str) -> bool {
    text.len() == 36 && uuid::Uuid::try_parse(text).is_ok() && text.chars().filter(|c| *c == '-').count() == 4
}

/// Checks the message's fields (see the module docs).
pub fn shape(message: &Message) -> Result<(), AspError> {
    let version_ok = {
        let parts: Vec<&str> = message.protocol_version.split('.').collect();
        parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    if !version_ok {
        return Err(malformed("protocol_version", "must be X.Y.Z"));
    }
    if !is_uuid(&message.message_id) {
        return Err(malformed("message_id", "must be a UUID"));
    }
    if !is_uuid(&message.swarm_id) {
        return Err(malformed("swarm_id", "must be a UUID"));
    }
    if !TYPES.contains(&message.kind.as_str()) {
        return Err(malformed("type", "must be message, system or notification"));
    }
    if !message.sender.endpoint.starts_with("https://") {
        return Err(malformed("sender.endpoint", "must use HTTPS"));
    }
    for (name, value) in [
        ("sender.agent_id", &message.sender.agent_id),
        ("sender.endpoint", &message.sender.endpoint),
        ("recipient", &message.recipient),
    ] {
        if value.is_empty() || value.len() > MAX_FIELD || value.chars().any(char::is_control) {
            return Err(malformed(name, format!("must be 1 to {MAX_FIELD} characters, no control characters")));
        }
    }
    signing::instant(&message.timestamp)?;
    Ok(())
}

/// The scheme a member's messages are verified with (and messages to it signed with).
pub fn scheme_of(member: &MemberRecord) -> Scheme {
    if member.scheme == Scheme::CorralLp1.name() { Scheme::CorralLp1 } else { Scheme::Asp010 }
}

/// Checks the signature against the member's key under its scheme.
pub fn signature(message: &Message, member: &MemberRecord) -> Result<(), AspError> {
    let key = signing::public_key(&member.public_key)?;
    signing::verify(scheme_of(member), &key, message)
}

/// Checks the timestamp and `expires_at` at `now_ms`; returns until when the message id has to
/// be remembered (the moment its timestamp leaves the window).
pub fn clock(message: &Message, now_ms: i64, max_skew_ms: u64) -> Result<i64, AspError> {
    let at = signing::instant(&message.timestamp)?;
    let skew = i64::try_from(max_skew_ms).unwrap_or(i64::MAX);
    let off = now_ms.saturating_sub(at);
    if off.saturating_abs() > skew {
        return Err(AspError::Stale { timestamp: message.timestamp.clone(), off_ms: off, max_ms: max_skew_ms });
    }
    if let Some(expires) = message.extra.get("expires_at").and_then(serde_json::Value::as_str) {
        if signing::instant(expires)? <= now_ms {
            return Err(AspError::Expired(expires.to_owned()));
        }
    } else if message.extra.get("expires_at").is_some_and(|v| !v.is_null()) {
        return Err(malformed("expires_at", "must be a timestamp"));
    }
    Ok(at.saturating_add(skew))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn vector_message(i: usize) -> Message {
        let v = super::super::signing::tests::vectors();
        serde_json::from_value(v["messages"][i]["wire"].clone()).unwrap()
    }

    fn member(scheme: Scheme) -> MemberRecord {
        let v = super::super::signing::tests::vectors();
        MemberRecord {
            swarm_id: "660e8400-e29b-41d4-a716-446655440001".into(),
            agent_id: "agent-sender-123".into(),
            endpoint: "https://sender.example.com/swarm".into(),
            public_key: v["public_key_b64"].as_str().unwrap().into(),
            scheme: scheme.name().into(),
            muted: false,
            joined_at: 0,
        }
    }

    #[test]
    fn every_vector_message_has_a_valid_shape_and_verifies_for_a_0_1_0_member() {
        for i in 0..3 {
            let m = vector_message(i);
            shape(&m).unwrap();
            signature(&m, &member(Scheme::Asp010)).unwrap();
        }
    }

    #[test]
    fn a_member_that_advertised_corral_lp1_never_gets_a_0_1_0_signature_accepted() {
        let err = signature(&vector_message(0), &member(Scheme::CorralLp1)).unwrap_err();
        assert_eq!(err.code(), "INVALID_SIGNATURE");
    }

    #[test]
    fn an_all_zero_signature_is_refused() {
        let mut m = vector_message(0);
        m.signature = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0u8; 64]);
        assert_eq!(signature(&m, &member(Scheme::Asp010)).unwrap_err().code(), "INVALID_SIGNATURE");
    }

    #[test]
    fn shape_refuses_non_uuid_ids_unknown_types_plain_http_and_control_characters() {
        type Breaker = fn(&mut Message);
        let cases: [(&str, Breaker); 5] = [
            ("message_id", |m| m.message_id = "not-a-uuid".into()),
            ("swarm_id", |m| m.swarm_id = "1".into()),
            ("type", |m| m.kind = "exec".into()),
            ("sender.endpoint", |m| m.sender.endpoint = "http://x/swarm".into()),
            ("recipient", |m| m.recipient = "a\nb".into()),
        ];
        for (what, break_it) in cases {
            let mut m = vector_message(0);
            break_it(&mut m);
            let err = shape(&m).unwrap_err();
            assert_eq!(err.code(), "INVALID_FORMAT", "{what}");
            assert!(err.to_string().contains(what), "{what}: {err}");
        }
    }

    #[test]
    fn clock_refuses_stale_and_future_timestamps_and_passed_expiry_and_says_until_when_to_remember() {
        let m = vector_message(0);
        let at = signing::instant(&m.timestamp).unwrap();
        assert_eq!(clock(&m, at + 1_000, 60_000).unwrap(), at + 60_000);
        assert_eq!(clock(&m, at + 60_001, 60_000).unwrap_err().code(), "STALE_MESSAGE");
        assert_eq!(clock(&m, at - 60_001, 60_000).unwrap_err().code(), "STALE_MESSAGE");
        let mut expiring = m.clone();
        expiring.extra.insert("expires_at".into(), "2026-02-05T14:30:01.000Z".into());
        assert!(clock(&expiring, at + 500, 60_000).is_ok());
        assert_eq!(clock(&expiring, at + 1_000, 60_000).unwrap_err().code(), "MESSAGE_EXPIRED");
    }
}

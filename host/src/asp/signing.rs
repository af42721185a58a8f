//! How ASP messages are signed, in the two schemes corral knows.
//!
//! - **ASP 0.1.0** (what every ASP peer speaks): Ed25519 over SHA-256 of
//!   `message_id ‖ timestamp ‖ swarm_id ‖ recipient ‖ type ‖ content`, concatenated without
//!   separators, the timestamp as the reference renders it (`YYYY-MM-DDTHH:MM:SS.mmmZ`),
//!   signature in base64 with padding. The payload is **ambiguous**: `recipient = "a",
//!   content = "messagefoo"` and `recipient = "amessage", content = "foo"` sign the same bytes
//!   (see the vectors), and the sender is not covered at all.
//! - **corral-lp/1**, between corral hosts: Ed25519 over a domain tag and every field — the
//!   sender's id and endpoint, the protocol version and `expires_at` too — each prefixed with
//!   its length (u32, big-endian). No two different messages have the same payload.
//!
//! Which scheme a peer gets is negotiated elsewhere; this module only makes and checks them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::{AspError, Message};

/// A signing scheme (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Asp010,
    CorralLp1,
}

impl Scheme {
    /// The name advertised in `/swarm/info`.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Asp010 => "asp-0.1.0",
            Scheme::CorralLp1 => "corral-lp/1",
        }
    }
}

/// Domain tag of the corral-lp/1 payload: a signature made for it is never one of 0.1.0's.
const LP1_TAG: &[u8] = b"corral-asp-signature/lp1\0";

/// Renders a timestamp the way the ASP 0.1.0 reference does before signing: to millisecond
/// precision (truncated) with a `Z` — and, as the reference does, the clock reading of an
/// offset timestamp kept as it is (`16:30+02:00` signs as `16:30Z`). That is a quirk of the
/// reference, reproduced only so its signatures verify; the instant is [`instant`].
pub fn asp010_timestamp(text: &str) -> Result<String, AspError> {
    let parsed = chrono::DateTime::parse_from_rfc3339(text).map_err(|e| AspError::malformed("timestamp", e))?;
    Ok(parsed.naive_local().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
}

/// The instant a timestamp names, in ms since the epoch (for skew and expiry checks).
pub fn instant(text: &str) -> Result<i64, AspError> {
    let parsed = chrono::DateTime::parse_from_rfc3339(text).map_err(|e| AspError::malformed("timestamp", e))?;
    Ok(parsed.timestamp_millis())
}

/// The bytes a scheme signs for `message` (its `signature` field is not part of them).
pub fn payload(scheme: Scheme, message: &Message) -> Result<Vec<u8>, AspError> {
    Ok(match scheme {
        Scheme::Asp010 => {
            let timestamp = asp010_timestamp(&message.timestamp)?;
            let fields = [
                &message.message_id,
                &timestamp,
                &message.swarm_id,
                &message.recipient,
                &message.kind,
                &message.content,
            ];
            let joined: String = fields.iter().map(|f| f.as_str()).collect();
            Sha256::digest(joined.as_bytes()).to_vec()
        }
        Scheme::CorralLp1 => {
            // `expires_at` changes what a message means, so it is signed too (empty if absent).
            let expires_at = match message.extra.get("expires_at") {
                None | Some(serde_json::Value::Null) => String::new(),
                Some(serde_json::Value::String(at)) => at.clone(),
                Some(other) => other.to_string(),
            };
            let fields = [
                &message.protocol_version,
                &message.message_id,
                &message.timestamp,
                &message.sender.agent_id,
                &message.sender.endpoint,
                &message.swarm_id,
                &message.recipient,
                &message.kind,
                &message.content,
                &expires_at,
            ];
            let mut out = LP1_TAG.to_vec();
            for field in fields {
                let len =
                    u32::try_from(field.len()).map_err(|_| AspError::malformed("message", "a field over 4 GiB"))?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(field.as_bytes());
            }
            out
        }
    })
}

/// Signs `message` with `key` under `scheme`; returns the base64 signature.
pub fn sign(scheme: Scheme, key: &SigningKey, message: &Message) -> Result<String, AspError> {
    Ok(STANDARD.encode(key.sign(&payload(scheme, message)?).to_bytes()))
}

/// Checks `message.signature` against `key` under `scheme`. Strict verification: no
/// malleable or small-order encodings.
pub fn verify(scheme: Scheme, key: &VerifyingKey, message: &Message) -> Result<(), AspError> {
    let bad = || AspError::BadSignature { signer: message.sender.agent_id.clone() };
    let bytes = STANDARD.decode(message.signature.as_bytes()).map_err(|_| bad())?;
    let signature = Signature::from_slice(&bytes).map_err(|_| bad())?;
    key.verify_strict(&payload(scheme, message)?, &signature).map_err(|_| bad())
}

/// A public key from ASP's wire form: base64 of the raw 32 bytes.
pub fn public_key(b64: &str) -> Result<VerifyingKey, AspError> {
    let bytes = STANDARD.decode(b64.trim().as_bytes()).map_err(|e| AspError::malformed("public key", e))?;
    let raw: [u8; 32] = bytes.try_into().map_err(|_| AspError::malformed("public key", "not 32 bytes"))?;
    VerifyingKey::from_bytes(&raw).map_err(|e| AspError::malformed("public key", e))
}

/// A public key in ASP's wire form.
pub fn public_key_b64(key: &VerifyingKey) -> String {
    STANDARD.encode(key.as_bytes())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
pub(crate) mod tests {
    use serde_json::Value;

    use super::*;

    pub(crate) fn vectors() -> Value {
        let text = include_str!("../../../tests/vectors/asp_vectors.json");
        serde_json::from_str(text).unwrap()
    }

    pub(crate) fn vector_key(v: &Value) -> SigningKey {
        let seed: [u8; 32] = hex::decode(v["seed_hex"].as_str().unwrap()).unwrap().try_into().unwrap();
        SigningKey::from_bytes(&seed)
    }

    #[test]
    fn every_vector_message_is_signed_byte_for_byte_and_verifies() {
        let v = vectors();
        let key = vector_key(&v);
        assert_eq!(public_key_b64(&key.verifying_key()), v["public_key_b64"].as_str().unwrap());
        assert_eq!(hex::encode(key.verifying_key().as_bytes()), v["public_key_hex"].as_str().unwrap());
        let public = public_key(v["public_key_b64"].as_str().unwrap()).unwrap();
        let messages = v["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3);
        for case in messages {
            let name = case["name"].as_str().unwrap();
            let message: Message = serde_json::from_value(case["wire"].clone()).unwrap();
            let digest = payload(Scheme::Asp010, &message).unwrap();
            let joined = case["signing_payload_utf8"].as_str().unwrap();
            assert_eq!(hex::encode(Sha256::digest(joined.as_bytes())), case["sha256_hex"].as_str().unwrap(), "{name}");
            assert_eq!(hex::encode(&digest), case["sha256_hex"].as_str().unwrap(), "{name}: payload");
            assert_eq!(
                sign(Scheme::Asp010, &key, &message).unwrap(),
                case["signature_b64"].as_str().unwrap(),
                "{name}"
            );
            verify(Scheme::Asp010, &public, &message).unwrap();
            // The wire form round-trips without losing a field.
            assert_eq!(serde_json::to_value(&message).unwrap(), case["wire"], "{name}");
        }
    }

    #[test]
    fn a_changed_field_or_a_forged_signature_does_not_verify() {
        let v = vectors();
        let public = public_key(v["public_key_b64"].as_str().unwrap()).unwrap();
        let original: Message = serde_json::from_value(v["messages"][0]["wire"].clone()).unwrap();
        let mut tampered = original.clone();
        tampered.content.push('!');
        assert_eq!(verify(Scheme::Asp010, &public, &tampered).unwrap_err().code(), "INVALID_SIGNATURE");
        let other = SigningKey::from_bytes(&[7; 32]);
        let mut forged = original.clone();
        forged.signature = sign(Scheme::Asp010, &other, &original).unwrap();
        assert!(verify(Scheme::Asp010, &public, &forged).is_err(), "signed by someone else");
        let mut garbage = original;
        garbage.signature = "not base64!".into();
        assert!(verify(Scheme::Asp010, &public, &garbage).is_err());
    }

    #[test]
    fn timestamps_are_normalised_as_the_reference_does() {
        let v = vectors();
        for (given, expected) in v["timestamp_normalisation_by_repo_Message_model"].as_object().unwrap() {
            assert_eq!(asp010_timestamp(given).unwrap(), expected.as_str().unwrap(), "{given}");
        }
        assert_eq!(instant("2026-02-05T16:30:00.000+02:00").unwrap(), instant("2026-02-05T14:30:00Z").unwrap());
        assert_eq!(asp010_timestamp("yesterday").unwrap_err().code(), "INVALID_FORMAT");
    }

    #[test]
    fn the_010_payload_is_ambiguous_and_corral_lp1_is_not() {
        let v = vectors();
        let key = vector_key(&v);
        let base: Message = serde_json::from_value(v["messages"][0]["wire"].clone()).unwrap();
        let one = Message { recipient: "a".into(), content: "messagefoo".into(), ..base.clone() };
        let two = Message { recipient: "amessage".into(), content: "foo".into(), ..base };
        let demo = &v["ambiguity_demo"];
        let sig_one = sign(Scheme::Asp010, &key, &one).unwrap();
        assert_eq!(sig_one, demo["recipient=a,content=messagefoo"].as_str().unwrap());
        assert_eq!(sign(Scheme::Asp010, &key, &two).unwrap(), demo["recipient=amessage,content=foo"].as_str().unwrap());
        assert_eq!(sign(Scheme::Asp010, &key, &two).unwrap(), sig_one, "0.1.0: two different messages, one signature");
        assert_ne!(sign(Scheme::CorralLp1, &key, &one).unwrap(), sign(Scheme::CorralLp1, &key, &two).unwrap());

        // corral-lp/1 covers the sender, which 0.1.0 does not.
        let signed = Message { signature: sign(Scheme::CorralLp1, &key, &one).unwrap(), ..one.clone() };
        let renamed = Message {
            sender: super::super::Sender { agent_id: "mallory".into(), ..one.sender.clone() },
            ..signed.clone()
        };
        assert!(verify(Scheme::CorralLp1, &key.verifying_key(), &signed).is_ok());
        assert!(verify(Scheme::CorralLp1, &key.verifying_key(), &renamed).is_err());
        let old = Message { signature: sig_one, ..renamed };
        assert!(verify(Scheme::Asp010, &key.verifying_key(), &old).is_ok(), "0.1.0 cannot tell who sent it");
    }
}

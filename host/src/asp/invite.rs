//! Invite tokens: compact JWS (`{"alg":"EdDSA","typ":"JWT"}`), claims `swarm_id, master,
//! endpoint, iat[, expires_at][, max_uses]`, Ed25519 over the raw `header.payload`, base64url
//! without padding.
//!
//! Why not a JWT crate: the header and claims must be the reference's exact bytes for its
//! tokens to be reproduced and for ours to read the same (a general crate orders the header
//! `typ, alg`), and only one algorithm is ever accepted — the header is checked to be exactly
//! EdDSA, never used to pick a verifier, so there is no algorithm confusion to defend against.
//! The joiner verifies a token against the key of the master it names *before* it trusts the
//! endpoint inside it; `expires_at` is checked here, `max_uses` by the issuer (durably).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::AspError;

/// The only header corral writes or accepts.
const HEADER: &str = r#"{"alg":"EdDSA","typ":"JWT"}"#;

/// An invite's claims, in the reference's field order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteClaims {
    pub swarm_id: String,
    pub master: String,
    pub endpoint: String,
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u64>,
}

/// Makes a token for `claims`, signed by `key`.
pub fn issue(key: &SigningKey, claims: &InviteClaims) -> Result<String, AspError> {
    let payload = serde_json::to_string(claims).map_err(|e| AspError::malformed("invite claims", e))?;
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(HEADER), URL_SAFE_NO_PAD.encode(payload));
    let signature = URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes()).to_bytes());
    Ok(format!("{input}.{signature}"))
}

/// Reads a token's claims *without* trusting them: what a joiner needs to learn which master
/// (and so which key) to verify the token against.
pub fn unverified_claims(token: &str) -> Result<InviteClaims, AspError> {
    let (_, payload, _) = split(token)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).map_err(|e| AspError::malformed("invite", e))?;
    serde_json::from_slice(&bytes).map_err(|e| AspError::malformed("invite claims", e))
}

/// Verifies `token` against the master's key and its expiry (at `now_ms`); returns its claims.
pub fn verify(token: &str, master: &VerifyingKey, now_ms: i64) -> Result<InviteClaims, AspError> {
    let (header_b64, payload_b64, signature) = split(token)?;
    let header = URL_SAFE_NO_PAD.decode(header_b64).map_err(|e| AspError::malformed("invite header", e))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| AspError::malformed("invite header", e))?;
    if header.get("alg").and_then(serde_json::Value::as_str) != Some("EdDSA") {
        return Err(AspError::malformed("invite header", "alg must be EdDSA"));
    }
    let claims = unverified_claims(token)?;
    let bad = || AspError::BadSignature { signer: claims.master.clone() };
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| bad())?;
    let signature = Signature::from_slice(&signature).map_err(|_| bad())?;
    let signed = format!("{header_b64}.{payload_b64}");
    master.verify_strict(signed.as_bytes(), &signature).map_err(|_| bad())?;
    if let Some(expires) = &claims.expires_at
        && super::signing::instant(expires)? <= now_ms
    {
        return Err(AspError::InviteExpired(expires.clone()));
    }
    Ok(claims)
}

fn split(token: &str) -> Result<(&str, &str, &str), AspError> {
    let mut parts = token.trim().split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) if !h.is_empty() && !p.is_empty() && !s.is_empty() => Ok((h, p, s)),
        _ => Err(AspError::malformed("invite", "not a compact JWS (header.payload.signature)")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::asp::signing::tests::{vector_key, vectors};

    #[test]
    fn the_vector_invite_is_reproduced_byte_for_byte_and_verifies() {
        let v = vectors();
        let key = vector_key(&v);
        let jwt = &v["jwt"];
        let claims: InviteClaims = serde_json::from_value(jwt["claims_parsed"].clone()).unwrap();
        assert_eq!(serde_json::to_string(&claims).unwrap(), jwt["payload_json"].as_str().unwrap());
        let token = issue(&key, &claims).unwrap();
        assert_eq!(token, jwt["jwt"].as_str().unwrap());
        assert!(token.starts_with(jwt["signing_input"].as_str().unwrap()));
        assert!(jwt["invite_url"].as_str().unwrap().ends_with(&format!("token={token}")));
        let now = crate::asp::signing::instant("2026-02-05T14:30:00Z").unwrap();
        assert_eq!(verify(&token, &key.verifying_key(), now).unwrap(), claims);
    }

    #[test]
    fn forged_tampered_expired_and_foreign_alg_invites_are_refused() {
        let v = vectors();
        let key = vector_key(&v);
        let now = crate::asp::signing::instant("2026-02-05T14:30:00Z").unwrap();
        let claims: InviteClaims = serde_json::from_value(v["jwt"]["claims_parsed"].clone()).unwrap();
        let token = issue(&key, &claims).unwrap();

        let mallory = SigningKey::from_bytes(&[9; 32]);
        assert_eq!(verify(&token, &mallory.verifying_key(), now).unwrap_err().code(), "INVALID_SIGNATURE");
        // An attacker's endpoint in a token the master signed with other claims.
        let evil = InviteClaims { endpoint: "https://evil.example/swarm".into(), ..claims.clone() };
        let (head, _) = token.split_once('.').unwrap();
        let signature = token.rsplit('.').next().unwrap();
        let spliced = format!("{head}.{}.{signature}", URL_SAFE_NO_PAD.encode(serde_json::to_string(&evil).unwrap()));
        assert_eq!(unverified_claims(&spliced).unwrap().endpoint, "https://evil.example/swarm");
        assert!(verify(&spliced, &key.verifying_key(), now).is_err(), "the endpoint is trusted only once verified");

        let expired =
            issue(&key, &InviteClaims { expires_at: Some("2026-01-01T00:00:00.000Z".into()), ..claims.clone() })
                .unwrap();
        assert_eq!(verify(&expired, &key.verifying_key(), now).unwrap_err().code(), "INVITE_EXPIRED");

        let none_alg = format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#), token.split('.').nth(1).unwrap());
        assert!(verify(&none_alg, &key.verifying_key(), now).is_err());
        for junk in ["", "a.b", "a.b.c.d", "...", "x.y.z"] {
            assert!(verify(junk, &key.verifying_key(), now).is_err(), "{junk:?}");
        }
    }
}

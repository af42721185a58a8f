//! SW4RM idempotency tokens: how a producer names one logical message across retries.
//!
//! Token = `producer:operation:` + the first 16 hex characters of
//! `sha256(producer ‖ "\n" ‖ operation ‖ "\n" ‖ canonical bytes)`. The LF separators make the
//! hash input unambiguous, which is why a producer or operation containing LF is refused.
//! The canonical bytes are the caller's: two JSON encodings of the same object with different
//! key orders are different messages (the vectors include that case).

use sha2::{Digest, Sha256};

/// Derives the token, or refuses a producer or operation that contains LF.
pub fn derive_token(producer: &str, operation: &str, canonical: &[u8]) -> Result<String, String> {
    if producer.contains('\n') || operation.contains('\n') {
        return Err("idempotency token: producer and operation may not contain a line feed".to_owned());
    }
    let mut hash = Sha256::new();
    hash.update(producer.as_bytes());
    hash.update(b"\n");
    hash.update(operation.as_bytes());
    hash.update(b"\n");
    hash.update(canonical);
    let digest = hex::encode(hash.finalize());
    Ok(format!("{producer}:{operation}:{}", digest.get(..16).unwrap_or(&digest)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// Every vector of `tests/vectors/sw4rm_idempotency_vectors.json` (made with SW4RM's
    /// reference code): accepted ones give the exact token, rejected ones are refused.
    #[test]
    fn every_sw4rm_idempotency_vector_passes() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/vectors/sw4rm_idempotency_vectors.json");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let file: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(file["profile"], "sw4rm-idempotency-bytes-v1");
        let vectors = file["vectors"].as_array().unwrap();
        assert!(vectors.len() >= 10, "{} vectors", vectors.len());
        for v in vectors {
            let id = v["id"].as_str().unwrap();
            let producer = v["producer_id"].as_str().unwrap();
            let operation = v["operation"].as_str().unwrap();
            let canonical = hex::decode(v["canonical_hex"].as_str().unwrap()).unwrap();
            let derived = derive_token(producer, operation, &canonical);
            if v["rejected"].as_bool() == Some(true) {
                assert!(derived.is_err(), "{id}: must be refused, got {derived:?}");
            } else {
                assert_eq!(derived.unwrap(), v["token"].as_str().unwrap(), "{id}");
            }
        }
    }
}

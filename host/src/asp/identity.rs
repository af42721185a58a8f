//! The host's ASP identity: an Ed25519 key made on first start and kept in the data dir.
//!
//! `<data dir>/identity.key` holds the 32-byte seed in hex, created with mode 0600 (and refused
//! if it is readable by others), never logged and never in an API answer: only the public key
//! and the agent id leave the host. The agent id is derived from the public key
//! (`corral-<first 16 hex of sha256(public key)>`), so it cannot be claimed without the key.

use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// File name of the key inside the data dir.
pub const KEY_FILE: &str = "identity.key";

/// This host's key and what it is known by.
pub struct Identity {
    key: SigningKey,
    pub agent_id: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Identity").field("agent_id", &self.agent_id).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read or create the host key {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("host key {0} is not 64 hex characters — restore it from a backup or move it aside to make a new identity")]
    Corrupt(PathBuf),
    #[error("host key {0} is readable by other users — `chmod 600` it")]
    TooOpen(PathBuf),
    #[error("cannot get randomness for a new host key: {0}")]
    Random(String),
}

impl Identity {
    /// Loads the key from `data_dir`, creating it on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Identity, IdentityError> {
        let path = data_dir.join(KEY_FILE);
        let io = |source| IdentityError::Io { path: path.clone(), source };
        let seed = match std::fs::read_to_string(&path) {
            Ok(text) => {
                check_private(&path)?;
                let bytes = hex::decode(text.trim()).map_err(|_| IdentityError::Corrupt(path.clone()))?;
                <[u8; 32]>::try_from(bytes).map_err(|_| IdentityError::Corrupt(path.clone()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir).map_err(io)?;
                let mut seed = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
                    .map_err(|e| IdentityError::Random(e.to_string()))?;
                write_private(&path, &hex::encode(seed)).map_err(io)?;
                tracing::info!(path = %path.display(), "created the host's ASP identity key");
                seed
            }
            Err(e) => return Err(io(e)),
        };
        let key = SigningKey::from_bytes(&seed);
        let agent_id = agent_id(&key.verifying_key());
        Ok(Identity { key, agent_id })
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Signs `message` as this host (the key itself never leaves this type).
    pub fn sign(&self, scheme: super::signing::Scheme, message: &super::Message) -> Result<String, super::AspError> {
        super::signing::sign(scheme, &self.key, message)
    }

    /// Issues an invite token signed as this host.
    pub fn issue_invite(&self, claims: &super::invite::InviteClaims) -> Result<String, super::AspError> {
        super::invite::issue(&self.key, claims)
    }
}

/// The agent id a public key is known by.
pub fn agent_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("corral-{}", hex::encode(digest.get(..8).unwrap_or_default()))
}

/// Writes a new file only its owner can read (never over an existing one).
#[cfg(unix)]
pub(super) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    // create_new: two hosts racing on one data dir never overwrite each other's key.
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(not(unix))]
pub(super) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .map_err(|source| IdentityError::Io { path: path.to_path_buf(), source })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(IdentityError::TooOpen(path.to_path_buf()));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path) -> Result<(), IdentityError> {
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_private_and_kept_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(dir.path()).unwrap();
        let again = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(first.public_key(), again.public_key());
        assert_eq!(first.agent_id, again.agent_id);
        assert!(first.agent_id.starts_with("corral-") && first.agent_id.len() == 7 + 16);
        let seed = std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap();
        assert!(!format!("{first:?}").contains(seed.trim()), "Debug never shows the key");
        let message: crate::asp::Message =
            serde_json::from_value(crate::asp::signing::tests::vectors()["messages"][0]["wire"].clone()).unwrap();
        let signed = crate::asp::Message {
            signature: first.sign(crate::asp::signing::Scheme::CorralLp1, &message).unwrap(),
            ..message
        };
        crate::asp::signing::verify(crate::asp::signing::Scheme::CorralLp1, &again.public_key(), &signed).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let path = dir.path().join(KEY_FILE);
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(Identity::load_or_create(dir.path()), Err(IdentityError::TooOpen(_))));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::fs::write(&path, "not hex").unwrap();
            assert!(matches!(Identity::load_or_create(dir.path()), Err(IdentityError::Corrupt(_))));
        }
    }
}

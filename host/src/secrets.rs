//! Secrets as handles: operator-managed named values an agent can have *injected* into an
//! outbound request, and can never read.
//!
//! What a secret is: a value, the destinations it may be sent to (URL patterns, the `net.fetch`
//! matcher), how it is injected (a bearer token, basic auth, or a named header), and optionally
//! which agents and principals may use it. A job names a secret in `http.fetch-with-secrets`;
//! the host checks `secret.use` on the name (the usual lease path), that the final URL matches
//! both the job's `net.fetch` grant and the secret's destinations (after parsing and after
//! address resolution, as any fetch), injects the header, and redacts the value (and its base64
//! forms) from the response before the guest sees it.
//!
//! Where values live: never in the main database, a log line, an event, an audit row, a job row,
//! an error message or `Debug` output ([`SecretValue`] prints `<redacted>`). At rest they are in
//! `<data>/secrets.enc`, sealed with ChaCha20-Poly1305 (ring's, already the TLS stack's
//! crypto here) under a 32-byte key the operator supplies
//! (`CORRAL_SECRETS_KEY`, 64 hex characters, or `--secrets-key-file`); without a key there are no
//! secrets. Why encrypted rather than a plain file beside the data: the data dir is what gets
//! copied (backups, bug reports, a disk image), and a sealed file there reveals nothing without a
//! key the operator keeps elsewhere (an env var from a secret manager, a key file on another
//! mount). Rotation replaces the value in memory and on disk; the next job uses it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use base64::Engine as _;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::lease::UrlPattern;

/// File (in the data dir) holding the sealed secrets.
pub const SECRETS_FILE: &str = "secrets.enc";

/// Longest secret value accepted.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;

/// A secret's value. Never printed, serialized only into the sealed file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretValue(String);

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl SecretValue {
    pub fn new(value: String) -> SecretValue {
        SecretValue(value)
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

/// How a secret goes into a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Injection {
    /// `Authorization: Bearer <value>`.
    Bearer,
    /// `Authorization: Basic base64(<value>)`, the value being `user:password`.
    Basic,
    /// `<header>: <value>`.
    Header(String),
}

impl Injection {
    /// The header this injection sets, lower-case.
    pub fn header_name(&self) -> String {
        match self {
            Injection::Bearer | Injection::Basic => "authorization".to_owned(),
            Injection::Header(h) => h.to_ascii_lowercase(),
        }
    }

    fn header_value(&self, value: &str) -> String {
        match self {
            Injection::Bearer => format!("Bearer {value}"),
            Injection::Basic => format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(value)),
            Injection::Header(_) => value.to_owned(),
        }
    }
}

/// One secret, as stored (sealed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Secret {
    name: String,
    value: SecretValue,
    allow: Vec<String>,
    inject: Injection,
    #[serde(default)]
    agents: Vec<String>,
    #[serde(default)]
    principals: Vec<String>,
    rotated_at: i64,
}

/// What the operator sets (the value comes separately, never as an argument).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretSpec {
    /// URL patterns the secret may be sent to (the `net.fetch` pattern syntax).
    pub allow: Vec<String>,
    pub inject: Injection,
    /// Agent names that may use it (empty: any agent whose lease grants `secret.use`).
    #[serde(default)]
    pub agents: Vec<String>,
    /// Principals whose jobs may use it (empty: any).
    #[serde(default)]
    pub principals: Vec<String>,
}

/// A secret as listings show it: everything but the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SecretView {
    pub name: String,
    pub allow: Vec<String>,
    pub inject: Injection,
    pub agents: Vec<String>,
    pub principals: Vec<String>,
    pub rotated_at: String,
}

/// Why a secret operation failed. Messages never contain a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("no secrets key is configured: set CORRAL_SECRETS_KEY (64 hex characters) or --secrets-key-file")]
    NoKey,
    #[error("invalid secrets key: {0}")]
    BadKey(String),
    #[error("invalid secret: {0}")]
    Invalid(String),
    #[error("no secret named '{0}'")]
    NotFound(String),
    #[error("the secrets file {path} cannot be read with this key (wrong key, or the file is damaged)")]
    Unsealable { path: PathBuf },
    #[error("cannot {action} the secrets file {path}: {reason}")]
    Io { action: &'static str, path: PathBuf, reason: String },
}

/// The host's secrets: in memory, sealed on disk.
pub struct SecretStore {
    key: Option<Key>,
    path: PathBuf,
    secrets: RwLock<BTreeMap<String, Secret>>,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore").field("path", &self.path).finish_non_exhaustive()
    }
}

/// Bound into every seal, so a file sealed for something else under the same key does not open.
const AAD: &[u8] = b"corral secrets v1";

#[derive(Serialize, Deserialize)]
struct Sealed {
    version: u32,
    nonce: String,
    ciphertext: String,
}

/// The 32-byte key the secrets file is sealed with.
#[derive(Clone, Copy)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl Key {
    fn aead(&self) -> Result<LessSafeKey, SecretError> {
        UnboundKey::new(&CHACHA20_POLY1305, &self.0)
            .map(LessSafeKey::new)
            .map_err(|_| SecretError::BadKey("not a ChaCha20-Poly1305 key".into()))
    }
}

/// A key from 64 hex characters (an env var) or a file holding them (or 32 raw bytes).
pub fn parse_key(text: &[u8]) -> Result<Key, SecretError> {
    let trimmed = std::str::from_utf8(text).map(str::trim).unwrap_or_default();
    let bytes = match hex::decode(trimmed) {
        Ok(bytes) => bytes,
        Err(_) if text.len() == 32 => text.to_vec(),
        Err(_) => return Err(SecretError::BadKey("expected 64 hex characters (32 bytes)".into())),
    };
    let key: [u8; 32] =
        bytes.try_into().map_err(|b: Vec<u8>| SecretError::BadKey(format!("{} bytes; a key is 32", b.len())))?;
    Ok(Key(key))
}

impl SecretStore {
    /// Opens `<data_dir>/secrets.enc` with `key` (none: a store that holds nothing).
    pub fn open(data_dir: &Path, key: Option<Key>) -> Result<SecretStore, SecretError> {
        let path = data_dir.join(SECRETS_FILE);
        let store = SecretStore { key, path, secrets: RwLock::new(BTreeMap::new()) };
        let Some(key) = store.key.as_ref() else {
            if store.path.is_file() {
                tracing::warn!(path = %store.path.display(), "a secrets file exists but no key is configured: no secret can be used (set CORRAL_SECRETS_KEY or --secrets-key-file)");
            }
            return Ok(store);
        };
        if !store.path.is_file() {
            return Ok(store);
        }
        let io =
            |action, e: std::io::Error| SecretError::Io { action, path: store.path.clone(), reason: e.to_string() };
        let text = std::fs::read(&store.path).map_err(|e| io("read", e))?;
        let unsealable = || SecretError::Unsealable { path: store.path.clone() };
        let sealed: Sealed = serde_json::from_slice(&text).map_err(|_| unsealable())?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let nonce = b64.decode(sealed.nonce).map_err(|_| unsealable())?;
        let ciphertext = b64.decode(sealed.ciphertext).map_err(|_| unsealable())?;
        let nonce = Nonce::try_assume_unique_for_key(&nonce).map_err(|_| unsealable())?;
        let mut sealed_bytes = ciphertext;
        let plain = key.aead()?.open_in_place(nonce, Aad::from(AAD), &mut sealed_bytes).map_err(|_| unsealable())?;
        let list: Vec<Secret> = serde_json::from_slice(plain).map_err(|_| unsealable())?;
        *store.write() = list.into_iter().map(|s| (s.name.clone(), s)).collect();
        Ok(store)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Secret>> {
        self.secrets.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Secret>> {
        self.secrets.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets (or rotates) a secret; durable (sealed, fsynced, renamed into place) on return.
    pub fn set(&self, name: &str, value: SecretValue, spec: SecretSpec) -> Result<SecretView, SecretError> {
        let key = self.key.ok_or(SecretError::NoKey)?;
        if !(1..=64).contains(&name.len()) || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(SecretError::Invalid("a name is 1-64 characters of [A-Za-z0-9._-]".into()));
        }
        if value.expose().is_empty() || value.expose().len() > MAX_VALUE_BYTES || value.expose().contains(['\r', '\n'])
        {
            return Err(SecretError::Invalid(format!("a value is 1-{MAX_VALUE_BYTES} bytes without line breaks")));
        }
        if spec.allow.is_empty() {
            return Err(SecretError::Invalid("give at least one destination (allow)".into()));
        }
        for pattern in &spec.allow {
            UrlPattern::parse(pattern).map_err(|e| SecretError::Invalid(format!("destination '{pattern}': {e}")))?;
        }
        if let Injection::Header(h) = &spec.inject
            && (h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err(SecretError::Invalid(format!("header name '{h}' is not a token of [A-Za-z0-9-]")));
        }
        let secret = Secret {
            name: name.to_owned(),
            value,
            allow: spec.allow,
            inject: spec.inject,
            agents: spec.agents,
            principals: spec.principals,
            rotated_at: crate::now_ms(),
        };
        let view = view(&secret);
        let mut secrets = self.write();
        let previous = secrets.insert(name.to_owned(), secret);
        if let Err(e) = self.seal(&key, &secrets) {
            match previous {
                Some(p) => secrets.insert(name.to_owned(), p),
                None => secrets.remove(name),
            };
            return Err(e);
        }
        Ok(view)
    }

    /// Removes a secret; `false` if there was none.
    pub fn remove(&self, name: &str) -> Result<bool, SecretError> {
        let key = self.key.ok_or(SecretError::NoKey)?;
        let mut secrets = self.write();
        let Some(previous) = secrets.remove(name) else { return Ok(false) };
        if let Err(e) = self.seal(&key, &secrets) {
            secrets.insert(name.to_owned(), previous);
            return Err(e);
        }
        Ok(true)
    }

    /// Every secret, without values.
    pub fn list(&self) -> Vec<SecretView> {
        self.read().values().map(view).collect()
    }

    fn seal(&self, key: &Key, secrets: &BTreeMap<String, Secret>) -> Result<(), SecretError> {
        let io = |action, e: std::io::Error| SecretError::Io { action, path: self.path.clone(), reason: e.to_string() };
        let plain = serde_json::to_vec(&secrets.values().collect::<Vec<_>>())
            .map_err(|e| SecretError::Invalid(format!("cannot encode: {e}")))?;
        // A fresh random nonce per seal: the key is long-lived and seals many times.
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| io("seal", std::io::Error::other("no system randomness")))?;
        let mut ciphertext = plain;
        key.aead()?
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(AAD), &mut ciphertext)
            .map_err(|_| io("seal", std::io::Error::other("encryption failed")))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let sealed = Sealed { version: 1, nonce: b64.encode(nonce), ciphertext: b64.encode(ciphertext) };
        let text = serde_json::to_vec(&sealed).map_err(|e| SecretError::Invalid(e.to_string()))?;
        let tmp = self.path.with_extension("enc.tmp");
        {
            use std::io::Write as _;
            let mut options = std::fs::OpenOptions::new();
            options.create(true).write(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&tmp).map_err(|e| io("write", e))?;
            file.write_all(&text).map_err(|e| io("write", e))?;
            file.sync_all().map_err(|e| io("sync", e))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| io("replace", e))
    }

    /// The headers to inject for `names` into a request to `url` by `agent` (`name@version`;
    /// a secret's `agents` may list either form) of
    /// `principal`, and the byte strings to redact from the response; or why not, as a reason
    /// that names the secret and the destination (never its value).
    pub fn injections(
        &self,
        names: &[String],
        url: &Url,
        agent: &str,
        principal: &str,
    ) -> Result<Injected, (String, String)> {
        let secrets = self.read();
        let mut injected = Injected::default();
        for name in names {
            let refuse = |reason: String| (name.clone(), reason);
            let Some(secret) = secrets.get(name) else {
                return Err(refuse(format!("no secret named '{name}' is set on this host")));
            };
            let agent_name = agent.split_once('@').map_or(agent, |(name, _)| name);
            if !secret.agents.is_empty() && !secret.agents.iter().any(|a| a == agent || a == agent_name) {
                return Err(refuse(format!("secret '{name}' may not be used by agent '{agent}'")));
            }
            if !secret.principals.is_empty() && !secret.principals.iter().any(|p| p == principal) {
                return Err(refuse(format!("secret '{name}' may not be used by principal '{principal}'")));
            }
            let allowed = secret.allow.iter().filter_map(|p| UrlPattern::parse(p).ok()).any(|p| p.matches(url));
            if !allowed {
                return Err(refuse(format!(
                    "secret '{name}' may not be sent to {url} (its destinations: {})",
                    secret.allow.join(", ")
                )));
            }
            let value = secret.value.expose();
            let header = secret.inject.header_name();
            if injected.headers.iter().any(|(h, _)| *h == header) {
                return Err(refuse(format!("two secrets would set header '{header}'")));
            }
            injected.headers.push((header, secret.inject.header_value(value)));
            for form in redaction_forms(value) {
                if !injected.redact.contains(&form) {
                    injected.redact.push(form);
                }
            }
        }
        Ok(injected)
    }
}

/// What a fetch with secrets sends and must hide.
#[derive(Default)]
pub struct Injected {
    /// `(lower-case header name, value)`.
    pub headers: Vec<(String, String)>,
    /// Byte strings replaced in the response before the guest sees it.
    pub redact: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(h, _)| h.as_str()).collect();
        f.debug_struct("Injected").field("headers", &names).finish_non_exhaustive()
    }
}

/// The forms a value can come back in: as is, base64 (standard and URL-safe, padded or not).
fn redaction_forms(value: &str) -> Vec<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut forms = vec![value.as_bytes().to_vec()];
    for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
        forms.push(engine.encode(value).into_bytes());
    }
    forms
}

/// The marker a redacted value is replaced with.
pub const REDACTED: &[u8] = b"[redacted]";

/// Replaces every occurrence of each of `needles` in `bytes`. Longest first, so a value's
/// base64 form is not left half-redacted by a shorter needle.
pub fn redact(bytes: &[u8], needles: &[Vec<u8>]) -> Vec<u8> {
    let mut needles: Vec<&Vec<u8>> = needles.iter().filter(|n| !n.is_empty()).collect();
    needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut out = bytes.to_vec();
    for needle in needles {
        if memchr::memmem::find(&out, needle).is_none() {
            continue;
        }
        let mut replaced = Vec::with_capacity(out.len());
        let mut rest = out.as_slice();
        while let Some(at) = memchr::memmem::find(rest, needle) {
            replaced.extend_from_slice(rest.get(..at).unwrap_or_default());
            replaced.extend_from_slice(REDACTED);
            rest = rest.get(at + needle.len()..).unwrap_or_default();
        }
        replaced.extend_from_slice(rest);
        out = replaced;
    }
    out
}

fn view(s: &Secret) -> SecretView {
    SecretView {
        name: s.name.clone(),
        allow: s.allow.clone(),
        inject: s.inject.clone(),
        agents: s.agents.clone(),
        principals: s.principals.clone(),
        rotated_at: crate::rfc3339(s.rotated_at),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn key() -> Key {
        parse_key("11".repeat(32).as_bytes()).unwrap()
    }

    fn spec(inject: Injection) -> SecretSpec {
        SecretSpec { allow: vec!["https://api.example.com/**".into()], inject, agents: vec![], principals: vec![] }
    }

    #[test]
    fn secrets_are_sealed_on_disk_and_reopen_with_the_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = SecretStore::open(dir.path(), Some(key())).unwrap();
        store.set("api", SecretValue::new("s3cr3t-value".into()), spec(Injection::Bearer)).unwrap();
        let on_disk = std::fs::read(dir.path().join(SECRETS_FILE)).unwrap();
        assert!(memchr::memmem::find(&on_disk, b"s3cr3t-value").is_none(), "sealed");
        let again = SecretStore::open(dir.path(), Some(key())).unwrap();
        assert_eq!(again.list().len(), 1);
        let wrong = parse_key("22".repeat(32).as_bytes()).unwrap();
        assert!(matches!(SecretStore::open(dir.path(), Some(wrong)), Err(SecretError::Unsealable { .. })));
        assert!(format!("{:?}", again.read().get("api").unwrap()).contains("<redacted>"));
        assert!(!format!("{:?}", again.read().get("api").unwrap()).contains("s3cr3t"));
    }

    #[test]
    fn injection_needs_an_allowed_destination_and_redacts_every_form() {
        let dir = tempfile::tempdir().unwrap();
        let store = SecretStore::open(dir.path(), Some(key())).unwrap();
        store.set("basic", SecretValue::new("user:pw".into()), spec(Injection::Basic)).unwrap();
        store.set("hdr", SecretValue::new("k-123".into()), spec(Injection::Header("X-Api-Key".into()))).unwrap();
        let url = Url::parse("https://api.example.com/v1/x").unwrap();
        let injected = store.injections(&["basic".into(), "hdr".into()], &url, "a", "p").unwrap();
        assert_eq!(injected.headers[0], ("authorization".into(), "Basic dXNlcjpwdw==".into()));
        assert_eq!(injected.headers[1], ("x-api-key".into(), "k-123".into()));
        let echoed = b"auth=Basic dXNlcjpwdw== key=k-123 raw=user:pw url=dXNlcjpwdw";
        let clean = redact(echoed, &injected.redact);
        let text = String::from_utf8(clean).unwrap();
        assert!(!text.contains("dXNlcjpwdw") && !text.contains("k-123") && !text.contains("user:pw"), "{text}");
        let elsewhere = Url::parse("https://evil.example.net/").unwrap();
        let (name, reason) = store.injections(&["hdr".into()], &elsewhere, "a", "p").unwrap_err();
        assert_eq!(name, "hdr");
        assert!(
            reason.contains("may not be sent to https://evil.example.net/") && !reason.contains("k-123"),
            "{reason}"
        );
    }

    #[test]
    fn without_a_key_there_are_no_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let store = SecretStore::open(dir.path(), None).unwrap();
        assert!(matches!(
            store.set("a", SecretValue::new("v".into()), spec(Injection::Bearer)),
            Err(SecretError::NoKey)
        ));
        assert!(store.list().is_empty());
    }
}

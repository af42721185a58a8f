//! TLS for federation: the ASP listener's identity, and which peers' certificates this host
//! trusts when it calls them.
//!
//! TLS protects the transport (and tells a joiner it reached the host its invite names); who
//! sent a message is decided by its Ed25519 signature, never by the connection. Without a
//! configured certificate the host makes a self-signed one at first start
//! (`<data>/swarm-tls/cert.pem`, key 0600), for development: a peer trusts it by listing that
//! file in its `peer_ca`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::config::SwarmConfig;

/// Folder of the self-signed identity inside the data dir.
pub const SELF_SIGNED_DIR: &str = "swarm-tls";

/// The listener's TLS configuration: the configured PEM files, or the self-signed pair
/// (made now if missing).
pub fn server_config(
    config: &SwarmConfig,
    data_dir: &Path,
    listen: SocketAddr,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let (cert_path, key_path) = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        (None, None) => self_signed(data_dir, listen)?,
        _ => return Err("give both swarm.tls_cert and swarm.tls_key, or neither".into()),
    };
    let read = |path: &PathBuf| std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()));
    let certs = CertificateDer::pem_slice_iter(&read(&cert_path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} holds no valid PEM certificate: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", cert_path.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&key_path)?)
        .map_err(|e| format!("{} holds no valid PEM private key: {e}", key_path.display()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the swarm certificate and key do not fit together: {e}"))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

/// `<data>/swarm-tls/{cert,key}.pem`, made on first use for `localhost`, the loopback
/// addresses and the listen address.
fn self_signed(data_dir: &Path, listen: SocketAddr) -> Result<(PathBuf, PathBuf), String> {
    let dir = data_dir.join(SELF_SIGNED_DIR);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // Half a pair (a start that died between the two writes) is made again as a whole.
    match std::fs::remove_file(&key) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("cannot replace the incomplete {}: {e}", key.display()));
        }
        _ => {}
    }
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    let made = rcgen::generate_simple_self_signed(names).map_err(|e| format!("cannot make a certificate: {e}"))?;
    super::identity::write_private(&key, &made.signing_key.serialize_pem())
        .map_err(|e| format!("cannot write {}: {e}", key.display()))?;
    std::fs::write(&cert, made.cert.pem()).map_err(|e| format!("cannot write {}: {e}", cert.display()))?;
    tracing::info!(cert = %cert.display(), "made a self-signed certificate for the swarm endpoint (development only)");
    Ok((cert, key))
}

/// The client this host calls peers with: HTTPS only, the public web roots plus `peer_ca`.
pub fn client(config: &SwarmConfig) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .https_only(true)
        .timeout(Duration::from_millis(config.request_timeout_ms.max(100)))
        .connect_timeout(Duration::from_millis(config.request_timeout_ms.clamp(100, 5_000)))
        .redirect(reqwest::redirect::Policy::none());
    for path in &config.peer_ca {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read swarm.peer_ca {}: {e}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("swarm.peer_ca {} holds no valid PEM certificate: {e}", path.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| format!("cannot build the peer client: {e}"))
}

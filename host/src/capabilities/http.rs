//! Scope `net.fetch`; target: the request URL.
//!
//! The host performs the request; the agent never gets a socket. Checks, in order, all
//! before any byte leaves the host:
//! 1. the lease's `net.fetch` patterns (scheme, host, port and path compared separately);
//! 2. DNS: a *name* must resolve only to public addresses (a name that resolves to
//!    loopback, private, link-local or metadata ranges is denied — DNS rebinding), and the
//!    connection is pinned to the address that was checked. A non-public IP *literal* is
//!    reachable only through a grant whose host is that literal (the operator or submitter
//!    named the address); wildcard hosts reach public addresses only;
//! 3. the job's `net_bytes` budget (request body + response body).
//!
//! Redirects are returned to the agent, not followed: following one would skip the check.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures::StreamExt;
use wasmtime::component::{HasSelf, Linker};

use super::JobState;
use crate::bindings::HostError;
use crate::bindings::corral::agent::http::{self as wit, Request, Response};
use crate::lease::{Lease, Scope, parse_fetch_target};

pub fn add_to_linker(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    wit::add_to_linker::<JobState, HasSelf<JobState>>(linker, |s| s)
}

/// Headers an agent may not set: `host` would send the request to another virtual host
/// than the one the lease was checked for; the others are connection framing.
const FORBIDDEN_HEADERS: &[&str] =
    &["host", "connection", "content-length", "transfer-encoding", "te", "upgrade", "keep-alive"];

/// Outbound HTTP clients, shared by every job of the host.
///
/// Why shared: building a client loads the TLS roots and sets up a connection pool (about a
/// millisecond and tens of KB each); once per job that dominated a fetch and the memory of a
/// job parked in one. A request to an IP literal goes through one shared client; a request to
/// a name goes through a client pinned (`resolve`) to the address that was checked for it,
/// cached per (name, address) so connections to the same origin are reused.
#[derive(Debug)]
pub struct Clients {
    literal: reqwest::Client,
    pinned: std::sync::Mutex<std::collections::HashMap<(String, SocketAddr), reqwest::Client>>,
}

/// Pinned clients kept at most; the cache starts over when full (a rebuild is cheap).
const MAX_PINNED_CLIENTS: usize = 256;

/// Idle keep-alive connections kept per origin.
const MAX_IDLE_PER_ORIGIN: usize = 32;

impl Clients {
    pub fn new() -> Result<Clients, String> {
        let literal = client_builder().build().map_err(|e| format!("cannot build HTTP client: {e}"))?;
        Ok(Clients { literal, pinned: std::sync::Mutex::new(std::collections::HashMap::new()) })
    }

    /// The client for a request to `host`, which was checked to connect to `addr`.
    fn for_target(&self, host: &url::Host<&str>, addr: SocketAddr) -> Result<reqwest::Client, HostError> {
        let url::Host::Domain(name) = host else { return Ok(self.literal.clone()) };
        let key = ((*name).to_owned(), addr);
        let mut pinned = self.pinned.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = pinned.get(&key) {
            return Ok(client.clone());
        }
        let client = client_builder()
            .resolve(name, addr)
            .build()
            .map_err(|e| HostError::Failed(format!("cannot build HTTP client: {e}")))?;
        if pinned.len() >= MAX_PINNED_CLIENTS {
            pinned.clear();
        }
        pinned.insert(key, client.clone());
        Ok(client)
    }
}

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_max_idle_per_host(MAX_IDLE_PER_ORIGIN)
}

/// Per-job network state: what is left of the byte budget.
#[derive(Debug)]
pub struct HttpState {
    bytes_left: u64,
}

impl HttpState {
    pub fn new(lease: &Lease) -> Self {
        Self { bytes_left: lease.limits.net_bytes }
    }

    /// Network bytes this job may still move.
    pub fn bytes_left(&self) -> u64 {
        self.bytes_left
    }

    /// Takes bytes moved on this job's behalf (by a delegated child) off the budget.
    pub fn charge(&mut self, n: u64) {
        self.bytes_left = self.bytes_left.saturating_sub(n);
    }

    fn spend(&mut self, n: u64) -> Result<(), HostError> {
        if n > self.bytes_left {
            self.bytes_left = 0;
            return Err(HostError::Failed("the job's net_bytes budget is exhausted (limits.net_bytes)".into()));
        }
        self.bytes_left -= n;
        Ok(())
    }
}

/// Whether an address is one an agent may reach through a DNS name.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64/10 carrier-grade NAT
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18/15 benchmarking
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0/24 protocol assignments
                || o[0] >= 240) // 240/4 reserved
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            // Forms that embed an IPv4 address: IPv4-compatible (::a.b.c.d), NAT64
            // (64:ff9b::/96), 6to4 (2002::/16) — judge the embedded address.
            let embedded = |hi: u16, lo: u16| std::net::Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
            if seg[..6] == [0, 0, 0, 0, 0, 0] && !v6.is_loopback() && !v6.is_unspecified() {
                return is_public(IpAddr::V4(embedded(seg[6], seg[7])));
            }
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public(IpAddr::V4(embedded(seg[6], seg[7])));
            }
            if seg[0] == 0x2002 {
                return is_public(IpAddr::V4(embedded(seg[1], seg[2])));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local
                || (seg[0] & 0xffc0) == 0xfe80 // link local
                || (seg[0] & 0xffc0) == 0xfec0 // site local (deprecated)
                || (seg[0] == 0x2001 && seg[1] == 0) // Teredo
                || (seg[0] == 0x2001 && seg[1] == 0x0db8)) // documentation
        }
    }
}

fn invalid(msg: impl Into<String>) -> HostError {
    HostError::Invalid(msg.into())
}

impl wit::Host for JobState {
    async fn fetch(&mut self, req: Request) -> wasmtime::Result<Result<Response, HostError>> {
        let url = match parse_fetch_target(&req.url) {
            Ok(u) => u,
            Err(e) => {
                // Malformed or tricky (`..`, encoded slashes, userinfo): refused, and audited.
                let reason = format!("refused URL: {e}");
                return Ok(Err(self.ctx.deny(Scope::NetFetch, &req.url, reason)));
            }
        };
        if let Err(denied) = self.ctx.authorize_url(&url)? {
            return Ok(Err(denied));
        }
        self.ctx.before_effect().await?;
        Ok(self.perform(url, req).await)
    }
}

impl JobState {
    async fn perform(&mut self, url: url::Url, req: Request) -> Result<Response, HostError> {
        let method = reqwest::Method::from_bytes(req.method.as_bytes())
            .map_err(|_| invalid(format!("invalid HTTP method '{}'", req.method)))?;
        let port = url.port_or_known_default().ok_or_else(|| invalid("URL has no port"))?;
        let addr = self.resolve_checked(&url, port).await?;
        self.http.spend(req.body.as_ref().map_or(0, |b| b.len() as u64))?;

        let remaining = self.ctx.deadline.saturating_duration_since(Instant::now());
        let host = url.host().ok_or_else(|| invalid("URL has no host"))?;
        let client = self.ctx.manager.http_clients().for_target(&host, addr)?;
        let mut builder = client.request(method, url.clone()).timeout(remaining.max(Duration::from_millis(1)));
        for (name, value) in req.headers {
            if FORBIDDEN_HEADERS.iter().any(|f| name.eq_ignore_ascii_case(f))
                || name.to_ascii_lowercase().starts_with("proxy-")
            {
                return Err(invalid(format!(
                    "header '{name}' is set by the host, not the agent (the lease was checked for the URL's host)"
                )));
            }
            builder = builder.header(name, value);
        }
        if let Some(body) = req.body {
            builder = builder.body(body);
        }
        let response = builder.send().await.map_err(|e| HostError::Failed(format!("request to {url} failed: {e}")))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| HostError::Failed(format!("reading the response from {url} failed: {e}")))?;
            self.http.spend(chunk.len() as u64)?;
            body.extend_from_slice(&chunk);
        }
        Ok(Response { status, headers, body })
    }

    /// Resolves the URL's host and applies the address rules from the module doc.
    async fn resolve_checked(&mut self, url: &url::Url, port: u16) -> Result<SocketAddr, HostError> {
        let target = url.as_str().to_string();
        let (host, literal) = match url.host().ok_or_else(|| invalid("URL has no host"))? {
            url::Host::Domain(name) => (name.to_string(), None),
            url::Host::Ipv4(ip) => (ip.to_string(), Some(IpAddr::V4(ip))),
            url::Host::Ipv6(ip) => (format!("[{ip}]"), Some(IpAddr::V6(ip))),
        };
        let allow_private = self.ctx.manager.policy().egress.allow_private;
        if let Some(ip) = literal {
            if !is_public(ip) && !allow_private && !self.ctx.lease.grants.names_ip_literal(url) {
                let reason = format!(
                    "{ip} is a non-public address and no net.fetch grant names it as an IP literal \
                     (wildcard hosts only reach public addresses) — grant e.g. http://{host}:{port}/** explicitly"
                );
                return Err(self.ctx.deny(Scope::NetFetch, &target, reason));
            }
            return Ok(SocketAddr::new(ip, port));
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| HostError::Failed(format!("cannot resolve {host}: {e}")))?
            .collect();
        if allow_private {
            return addrs.first().copied().ok_or_else(|| HostError::Failed(format!("{host} has no addresses")));
        }
        if let Some(private) = addrs.iter().find(|a| !is_public(a.ip())) {
            let reason = format!(
                "{host} resolves to {}, a non-public address; names may only reach public addresses — \
                 grant the IP literally (e.g. http://{}:{port}/**) to reach it",
                private.ip(),
                private.ip()
            );
            return Err(self.ctx.deny(Scope::NetFetch, &target, reason));
        }
        addrs.first().copied().ok_or_else(|| HostError::Failed(format!("{host} has no addresses")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_metadata_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.4",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "0.0.0.0",
            "::10.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2001::1",
            "240.0.0.1",
            "192.0.0.8",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} must not be public");
        }
        for ip in ["1.1.1.1", "93.184.216.34", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
    }
}

//! Scope `net.fetch`; target: the request URL.
//!
//! The host performs the request; the agent never gets a socket. Checks, in order, all
//! before any byte leaves the host:
//! 1. the lease's `net.fetch` patterns (scheme, host, port and path compared separately);
//! 2. the address: every address the host resolves to is checked by
//!    [`Lease::check_address`] and the connection is pinned to the address checked (DNS
//!    rebinding). A name reaches only public addresses; a non-public IP literal only when the
//!    *operator's* policy names it; the host's own listen addresses only when the policy names
//!    that exact address (see `lease::addresses`);
//! 3. the job's `net_bytes` budget: request line, headers and body, response headers and body;
//!    the response body is also bounded by the job's memory limit (the host holds it until it
//!    is copied into the guest).
//!
//! Headers the agent sets may not change where the request goes (`Host`, framing, proxy and
//! routing-override headers such as `X-Original-URL`, `X-Forwarded-*`, `Forwarded`).
//!
//! Redirects are returned to the agent, not followed: following one would skip the check.
//!
//! `fetch-with-secrets` adds scope `secret.use` (target: each secret's name): after the checks
//! above pass for the URL, the secret's own destinations, agents and principals are checked
//! (`crate::secrets::SecretStore::injections`), the host adds the headers, and the value (and
//! its base64 forms) is redacted from everything the guest gets back. The agent may not set an
//! injected header, `Accept-Encoding` or `Range` on such a request (see `docs/secrets.md`).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures::StreamExt;
use wasmtime::component::{HasSelf, Linker};

use super::JobState;
use crate::bindings::HostError;
use crate::bindings::corral::agent::http::{self as wit, Request, Response};
use crate::lease::{Egress, Lease, Scope};

pub fn add_to_linker(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    wit::add_to_linker::<JobState, HasSelf<JobState>>(linker, |s| s)
}

/// Headers an agent may not set: `host` would send the request to another virtual host
/// than the one the lease was checked for; the others are connection framing.
const FORBIDDEN_HEADERS: &[&str] =
    &["host", "connection", "content-length", "transfer-encoding", "te", "upgrade", "keep-alive"];

/// Routing overrides that reverse proxies and frameworks honour (besides every `x-forwarded-*`).
const ROUTING_HEADERS: &[&str] = &[
    "forwarded",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
    "x-host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-real-ip",
    "x-client-ip",
];

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

fn invalid(msg: impl Into<String>) -> HostError {
    HostError::Invalid(msg.into())
}

/// Whether an agent may set header `name`: not framing, not `Host`, not proxy headers, and not
/// the routing overrides some servers and gateways honour (`X-Original-URL`, `X-Forwarded-*`,
/// `Forwarded`, method overrides), which would send the request somewhere the lease never saw.
fn header_allowed(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !(FORBIDDEN_HEADERS.contains(&lower.as_str())
        || ROUTING_HEADERS.contains(&lower.as_str())
        || lower.starts_with("proxy-")
        || lower.starts_with("x-forwarded-"))
}

/// Bytes a header line takes on the wire (`name: value\r\n`).
fn header_bytes(name: &str, value: &str) -> u64 {
    (name.len() + value.len() + 4) as u64
}

impl wit::Host for JobState {
    async fn fetch(&mut self, req: Request) -> wasmtime::Result<Result<Response, HostError>> {
        let url = match self.ctx.authorize_fetch(&req.url)? {
            Ok(url) => url,
            Err(denied) => return Ok(Err(denied)),
        };
        let method = match validate(&req, &[]) {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        let addr = match self.resolve_checked(&url).await? {
            Ok(addr) => addr,
            Err(e) => return Ok(Err(e)),
        };
        self.ctx.before_effect().await?;
        Ok(self.perform(url, method, addr, req).await)
    }

    async fn fetch_with_secrets(
        &mut self,
        mut req: Request,
        secrets: Vec<String>,
    ) -> wasmtime::Result<Result<Response, HostError>> {
        let url = match self.ctx.authorize_fetch(&req.url)? {
            Ok(url) => url,
            Err(denied) => return Ok(Err(denied)),
        };
        if secrets.is_empty() || secrets.len() > MAX_SECRETS_PER_REQUEST {
            return Ok(Err(invalid(format!("name 1 to {MAX_SECRETS_PER_REQUEST} secrets"))));
        }
        for name in &secrets {
            if let Err(denied) = self.ctx.check(Scope::SecretUse, name)? {
                return Ok(Err(denied));
            }
        }
        let injected = match self.ctx.manager.secrets().injections(&secrets, &url, &self.ctx.agent, &self.ctx.principal)
        {
            Ok(injected) => injected,
            Err((name, reason)) => return Ok(Err(self.ctx.deny(Scope::SecretUse, &name, reason)?)),
        };
        let reserved: Vec<&str> =
            injected.headers.iter().map(|(h, _)| h.as_str()).chain(SECRET_REQUEST_HEADERS.iter().copied()).collect();
        let method = match validate(&req, &reserved) {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        let addr = match self.resolve_checked(&url).await? {
            Ok(addr) => addr,
            Err(e) => return Ok(Err(e)),
        };
        self.ctx.before_effect().await?;
        // Identity encoding: a compressed echo of the request would carry the value past the
        // redaction below.
        req.headers.push(("accept-encoding".to_owned(), "identity".to_owned()));
        req.headers.extend(injected.headers.iter().cloned());
        let response = self.perform(url, method, addr, req).await;
        Ok(response
            .map(|r| Response {
                status: r.status,
                headers: r
                    .headers
                    .into_iter()
                    .map(|(name, value)| (name, redact_text(&value, &injected.redact)))
                    .collect(),
                body: crate::secrets::redact(&r.body, &injected.redact),
            })
            .map_err(|e| redact_error(e, &injected.redact)))
    }
}

/// Most secrets one request may name.
const MAX_SECRETS_PER_REQUEST: usize = 8;

/// Headers a request with secrets may not set: the host asks for an uncompressed response (so
/// an echo can be redacted), and a byte range of an echo could return a value in pieces.
const SECRET_REQUEST_HEADERS: &[&str] = &["accept-encoding", "range", "if-range"];

/// Checks the parts of a request the lease does not: the method, and that no header is one the
/// host sets (framing, routing, or one of `reserved`, lower-case). Returns the method.
fn validate(req: &Request, reserved: &[&str]) -> Result<reqwest::Method, HostError> {
    let method = reqwest::Method::from_bytes(req.method.as_bytes())
        .map_err(|_| invalid(format!("invalid HTTP method '{}'", super::clip(&req.method, 32))))?;
    let refused = |name: &str| !header_allowed(name) || reserved.iter().any(|r| name.eq_ignore_ascii_case(r));
    if let Some((name, _)) = req.headers.iter().find(|(name, _)| refused(name)) {
        return Err(invalid(format!(
            "header '{}' is set by the host, not the agent (the lease was checked for the request as given)",
            super::clip(name, 64)
        )));
    }
    Ok(method)
}

fn redact_text(text: &str, needles: &[Vec<u8>]) -> String {
    String::from_utf8_lossy(&crate::secrets::redact(text.as_bytes(), needles)).into_owned()
}

/// An error's message goes to the guest too.
fn redact_error(e: HostError, needles: &[Vec<u8>]) -> HostError {
    match e {
        HostError::Failed(m) => HostError::Failed(redact_text(&m, needles)),
        HostError::Invalid(m) => HostError::Invalid(redact_text(&m, needles)),
        other => other,
    }
}

impl JobState {
    async fn perform(
        &mut self,
        url: url::Url,
        method: reqwest::Method,
        addr: SocketAddr,
        req: Request,
    ) -> Result<Response, HostError> {
        // Everything the request puts on the wire counts: request line, headers and body.
        let sent = (method.as_str().len() + url.as_str().len() + 12) as u64
            + req.headers.iter().map(|(n, v)| header_bytes(n, v)).sum::<u64>()
            + req.body.as_ref().map_or(0, |b| b.len() as u64);
        self.http.spend(sent)?;

        let remaining = self.ctx.deadline.saturating_duration_since(Instant::now());
        let host = url.host().ok_or_else(|| invalid("URL has no host"))?;
        let client = self.ctx.manager.http_clients().for_target(&host, addr)?;
        let mut builder = client.request(method, url.clone()).timeout(remaining.max(Duration::from_millis(1)));
        for (name, value) in req.headers {
            builder = builder.header(name, value);
        }
        if let Some(body) = req.body {
            builder = builder.body(body);
        }
        let response = builder.send().await.map_err(|e| HostError::Failed(format!("request to {url} failed: {e}")))?;
        let status = response.status().as_u16();
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        self.http.spend(16 + headers.iter().map(|(n, v)| header_bytes(n, v)).sum::<u64>())?;
        // The body is held by the host until it is copied into the guest, whose memory it must
        // fit in: bound it by the job's memory limit as well as by its byte budget.
        let max_body = self.ctx.lease.limits.memory_bytes;
        if response.content_length().is_some_and(|n| n > max_body) {
            return Err(body_too_large(&url, max_body));
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| HostError::Failed(format!("reading the response from {url} failed: {e}")))?;
            if (body.len() + chunk.len()) as u64 > max_body {
                return Err(body_too_large(&url, max_body));
            }
            self.http.spend(chunk.len() as u64)?;
            body.extend_from_slice(&chunk);
        }
        Ok(Response { status, headers, body })
    }

    /// Resolves the URL's host and checks every address it may connect to
    /// ([`crate::lease::Lease::check_address`]); returns the one to pin the connection to.
    async fn resolve_checked(&mut self, url: &url::Url) -> wasmtime::Result<Result<SocketAddr, HostError>> {
        let Some(port) = url.port_or_known_default() else { return Ok(Err(invalid("URL has no port"))) };
        let addrs: Vec<SocketAddr> = match url.host() {
            Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
            Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
            Some(url::Host::Domain(name)) => match tokio::net::lookup_host((name, port)).await {
                Ok(found) => found.collect(),
                Err(e) => return Ok(Err(HostError::Failed(format!("cannot resolve {name}: {e}")))),
            },
            None => return Ok(Err(invalid("URL has no host"))),
        };
        let refusal = {
            let own = self.ctx.manager.own_addresses();
            let egress = Egress { allow_private: self.ctx.manager.policy().egress.allow_private, own: &own };
            addrs.iter().find_map(|addr| self.ctx.lease.check_address(url, *addr, egress).err())
        };
        if let Some(reason) = refusal {
            return Ok(Err(self.ctx.deny(Scope::NetFetch, url.as_str(), reason)?));
        }
        Ok(addrs
            .first()
            .copied()
            .ok_or_else(|| HostError::Failed(format!("{} has no addresses", url.host_str().unwrap_or_default()))))
    }
}

fn body_too_large(url: &url::Url, max: u64) -> HostError {
    HostError::Failed(format!(
        "the response from {url} is larger than the job's memory limit ({max} bytes, limits.memory_bytes)"
    ))
}

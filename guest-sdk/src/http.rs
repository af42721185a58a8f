//! Outbound HTTP, performed by the host. Scope `net.fetch`; the target of the check is the URL
//! (and the host also checks the address it resolves to). Redirects are returned, not
//! followed; request and response bytes count against the job's network budget.
//! [`fetch_with_secrets`] has the host add operator-managed credentials the agent cannot read.

use serde::de::DeserializeOwned;

use crate::Error;
use crate::bindings::corral::agent::http as wit;

/// An HTTP request. Build one with [`Request::new`] / [`Request::get`] and the `with_*` methods.
pub use wit::Request;
/// An HTTP response: status, headers (in order, names as sent) and the whole body.
pub use wit::Response;

impl Request {
    /// A request with this method (`GET`, `POST`, ...) and absolute `http(s)://` URL.
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        Self { method: method.into(), url: url.into(), headers: Vec::new(), body: None }
    }

    /// A `GET` request.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }

    /// A `POST` request with this body.
    pub fn post(url: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        Self::new("POST", url).with_body(body)
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    #[must_use]
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first header with this name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text; invalid UTF-8 is replaced with U+FFFD.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON. A body that is not valid JSON for `T` is [`Error::Invalid`].
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|err| Error::invalid(format!("response body is not the expected JSON: {err}")))
    }
}

/// Performs a request (`net.fetch`, target: the URL).
pub fn fetch(request: &Request) -> Result<Response, Error> {
    wit::fetch(request).map_err(Error::from)
}

/// Performs a request with the named secrets injected by the host (`net.fetch` on the URL,
/// `secret.use` on each name). The agent names a secret; it never holds its value: the host
/// adds the header the operator configured for it, only if the URL is one of the secret's
/// destinations, and replaces the value with `[redacted]` anywhere in the response.
///
/// ```ignore
/// let response = http::fetch_with_secrets(&Request::get("https://api.example.com/v1/me"), &["example-api"])?;
/// ```
pub fn fetch_with_secrets(request: &Request, secrets: &[&str]) -> Result<Response, Error> {
    let names: Vec<String> = secrets.iter().map(|s| (*s).to_owned()).collect();
    wit::fetch_with_secrets(request, &names).map_err(Error::from)
}

/// Performs a `GET` request (`net.fetch`, target: the URL).
pub fn get(url: &str) -> Result<Response, Error> {
    fetch(&Request::get(url))
}

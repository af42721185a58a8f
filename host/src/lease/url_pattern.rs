//! URL patterns for the `net.fetch` scope, and the strict parsing of fetch targets.
//!
//! A URL is not a flat string for authorization purposes: `https://api.example.com.evil.net/`
//! starts with `https://api.example.com` and a glob over the whole text would let it through.
//! So scheme, host, port and path are parsed apart and compared one by one:
//!
//! | part   | pattern forms                                   | matches                                        |
//! |--------|-------------------------------------------------|------------------------------------------------|
//! | scheme | `http`, `https`, `*`                            | exactly (`*` = http or https; nothing else)    |
//! | host   | `api.example.com`, `127.0.0.1`, `[::1]`         | exactly, case-insensitively                    |
//! |        | `*.example.com`                                 | any subdomain (one or more labels), not itself |
//! |        | `*`                                             | any host                                       |
//! | port   | `:8080`, `:*`, omitted                          | that port, any port, the scheme's default      |
//! | path   | a [`Pattern`] starting with `/`; omitted = `/**` | the raw (not percent-decoded) path            |
//!
//! Examples: `http://127.0.0.1:8080/allowed/**`, `https://*.example.com/**`,
//! `https://api.example.com/v1/*`, `*://*:*/**` (everything).
//!
//! Targets are parsed with the `url` crate (WHATWG rules, the same a browser applies) and the
//! caller should fetch exactly the [`Url`] that was checked, so no second parser can disagree.
//! The query string and fragment are ignored. Targets that try to confuse path matching are
//! refused outright with a reason: `..` segments (also percent-encoded), encoded slashes or
//! backslashes (`%2F`, `%5C`) that a server might decode into a separator, and userinfo
//! (`user:pass@host`), which hides credentials in the URL and makes hosts easy to misread.
//!
//! What this module does not do: resolve DNS. Egress must also be checked against the resolved
//! IP (DNS rebinding) where the connection is made.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::net::IpAddr;

use url::{Host, Url};

use super::MAX_TARGET_BYTES;
use super::pattern::{Pattern, PatternError};

/// A compiled `net.fetch` pattern, `scheme://host[:port][/path-glob]`.
#[derive(Clone)]
pub struct UrlPattern {
    source: String,
    scheme: SchemePat,
    host: HostPat,
    port: PortPat,
    path: Pattern,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SchemePat {
    Http,
    Https,
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPat {
    Any,
    /// `*.suffix`: the suffix, normalized, without the leading dot.
    Subdomain(String),
    /// As the `url` crate serializes it (lowercase, punycode, canonical IP, `[v6]`), and the
    /// address when the host is an IP literal.
    Exact {
        host: String,
        ip: Option<IpAddr>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPat {
    /// Omitted: 80 for http, 443 for https.
    Default,
    Exact(u16),
    Any,
}

/// The ports one pattern allows for one scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortSet {
    One(u16),
    All,
}

/// Why a `net.fetch` target was refused before any pattern was consulted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FetchTargetError(String);

const SCHEMES_HTTP: &[&str] = &["http"];
const SCHEMES_HTTPS: &[&str] = &["https"];
const SCHEMES_ANY: &[&str] = &["http", "https"];

fn url_err(msg: impl Into<String>) -> PatternError {
    PatternError::Url(msg.into())
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl UrlPattern {
    /// Compile a pattern such as `https://*.example.com:8443/api/**`.
    pub fn parse(source: &str) -> Result<UrlPattern, PatternError> {
        let (scheme_text, rest) = source
            .split_once("://")
            .ok_or_else(|| url_err("expected scheme://host[:port]/path, e.g. https://api.example.com/v1/**"))?;
        let scheme = match scheme_text.to_ascii_lowercase().as_str() {
            "http" => SchemePat::Http,
            "https" => SchemePat::Https,
            "*" => SchemePat::Any,
            other => {
                return Err(url_err(format!("scheme '{other}' is not fetchable; use http, https or *")));
            }
        };
        if rest.contains(['?', '#']) {
            return Err(url_err(
                "patterns match scheme, host, port and path only; remove the '?' or '#' part \
                 (query strings are ignored when matching)",
            ));
        }
        let (authority, path_text) = match rest.find('/') {
            Some(i) => rest.split_at_checked(i).unwrap_or((rest, "")),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(url_err("user@ is not allowed in a URL pattern; match the host only"));
        }
        let (host_text, port_text) = split_host_port(authority)?;
        let host = parse_host(host_text)?;
        let mut port = match port_text {
            None => PortPat::Default,
            Some("*") => PortPat::Any,
            Some(text) => match text.parse::<u16>() {
                Ok(n) if n > 0 => PortPat::Exact(n),
                _ => {
                    return Err(url_err(format!("port '{text}' is not a number from 1 to 65535 or `*`")));
                }
            },
        };
        // `http://h:80/` and `http://h/` are the same set; normalize so they compare equal.
        let specific = match scheme {
            SchemePat::Http => default_port("http"),
            SchemePat::Https => default_port("https"),
            SchemePat::Any => None,
        };
        if let (PortPat::Exact(n), Some(d)) = (port, specific)
            && n == d
        {
            port = PortPat::Default;
        }
        let path = if path_text.is_empty() { Pattern::any_path() } else { Pattern::parse(path_text)? };
        Ok(UrlPattern { source: source.to_owned(), scheme, host, port, path })
    }

    /// The pattern that allows every fetchable URL: `*://*:*/**`.
    pub fn any() -> UrlPattern {
        UrlPattern {
            source: "*://*:*/**".to_owned(),
            scheme: SchemePat::Any,
            host: HostPat::Any,
            port: PortPat::Any,
            path: Pattern::any_path(),
        }
    }

    /// The text this pattern was compiled from.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Is the host an IP literal (`127.0.0.1`, `[::1]`) rather than a name or wildcard?
    pub fn host_is_ip_literal(&self) -> bool {
        self.host_ip().is_some()
    }

    /// The host's address, when the pattern names one literally.
    pub fn host_ip(&self) -> Option<IpAddr> {
        match self.host {
            HostPat::Exact { ip, .. } => ip,
            HostPat::Any | HostPat::Subdomain(_) => None,
        }
    }

    /// Does the pattern name exactly `port` for `scheme` (written, or the scheme's default —
    /// not `:*`)?
    pub fn names_port(&self, scheme: &str, port: u16) -> bool {
        self.schemes().contains(&scheme) && self.ports_for(scheme) == Some(PortSet::One(port))
    }

    /// Does `url` match? Non-http(s) URLs, userinfo and unsafe paths never match.
    pub fn matches(&self, url: &Url) -> bool {
        let scheme = url.scheme();
        if !self.schemes().contains(&scheme) || check_parsed_target(url).is_err() {
            return false;
        }
        let host_ok = match (&self.host, url.host()) {
            (HostPat::Any, Some(_)) => true,
            (HostPat::Subdomain(suffix), Some(Host::Domain(domain))) => is_subdomain_of(domain, suffix),
            (HostPat::Exact { host, .. }, Some(_)) => url.host_str() == Some(host.as_str()),
            _ => false,
        };
        let port_ok = match (self.ports_for(scheme), url.port_or_known_default()) {
            (Some(PortSet::All), Some(_)) => true,
            (Some(PortSet::One(want)), Some(got)) => want == got,
            _ => false,
        };
        host_ok && port_ok && self.path.matches(url.path())
    }

    /// Sound subset test: `true` guarantees every URL `self` matches, `other` matches too.
    pub fn is_subset_of(&self, other: &UrlPattern) -> bool {
        let ports_ok = self.schemes().iter().all(|scheme| {
            other.schemes().contains(scheme)
                && match (self.ports_for(scheme), other.ports_for(scheme)) {
                    (Some(_), Some(PortSet::All)) => true,
                    (Some(PortSet::One(a)), Some(PortSet::One(b))) => a == b,
                    _ => false,
                }
        });
        ports_ok && host_is_subset(&self.host, &other.host) && self.path.is_subset_of(&other.path)
    }

    fn schemes(&self) -> &'static [&'static str] {
        match self.scheme {
            SchemePat::Http => SCHEMES_HTTP,
            SchemePat::Https => SCHEMES_HTTPS,
            SchemePat::Any => SCHEMES_ANY,
        }
    }

    fn ports_for(&self, scheme: &str) -> Option<PortSet> {
        match self.port {
            PortPat::Default => default_port(scheme).map(PortSet::One),
            PortPat::Exact(n) => Some(PortSet::One(n)),
            PortPat::Any => Some(PortSet::All),
        }
    }
}

fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), PatternError> {
    if authority.starts_with('[') {
        let end = authority.find(']').ok_or_else(|| url_err("an IPv6 host needs a closing ']'"))?;
        let (host, after) = authority.split_at_checked(end + 1).unwrap_or((authority, ""));
        return match after {
            "" => Ok((host, None)),
            _ => after
                .strip_prefix(':')
                .map(|port| (host, Some(port)))
                .ok_or_else(|| url_err(format!("unexpected '{after}' after the IPv6 host"))),
        };
    }
    Ok(match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    })
}

fn parse_host(text: &str) -> Result<HostPat, PatternError> {
    if text.is_empty() {
        return Err(url_err("the pattern has no host; use `*` for any host"));
    }
    if text == "*" {
        return Ok(HostPat::Any);
    }
    if let Some(suffix) = text.strip_prefix("*.") {
        return match normalize_host(suffix)? {
            (Host::Domain(domain), _) if !suffix.contains('*') => Ok(HostPat::Subdomain(domain)),
            _ => Err(url_err(format!("'*.{suffix}' needs a domain name after '*.', not an IP address or wildcard"))),
        };
    }
    if text.contains('*') {
        return Err(url_err(format!("host '{text}': a wildcard must be the whole host (`*`) or a leading `*.`")));
    }
    let (host, serialized) = normalize_host(text)?;
    let ip = match host {
        Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        Host::Domain(_) => None,
    };
    Ok(HostPat::Exact { host: serialized, ip })
}

/// Normalize a host the way target URLs will be normalized, by letting the `url` crate parse it.
fn normalize_host(text: &str) -> Result<(Host<String>, String), PatternError> {
    let bad = || url_err(format!("'{text}' is not a valid host name or IP address"));
    if text.contains(['\\', '%', '/', '?', '#', '@']) || text.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    let parsed = Url::parse(&format!("http://{text}/")).map_err(|_| bad())?;
    if parsed.port().is_some() || parsed.path() != "/" {
        return Err(bad());
    }
    match (parsed.host(), parsed.host_str()) {
        (Some(host), Some(serialized)) if !serialized.is_empty() => Ok((host.to_owned(), serialized.to_owned())),
        _ => Err(bad()),
    }
}

fn is_subdomain_of(domain: &str, suffix: &str) -> bool {
    domain.strip_suffix(suffix).and_then(|labels| labels.strip_suffix('.')).is_some_and(|labels| !labels.is_empty())
}

fn host_is_subset(sub: &HostPat, sup: &HostPat) -> bool {
    match (sub, sup) {
        (_, HostPat::Any) => true,
        (HostPat::Exact { host: a, .. }, HostPat::Exact { host: b, .. }) => a == b,
        (HostPat::Exact { host, ip: None }, HostPat::Subdomain(suffix)) => is_subdomain_of(host, suffix),
        (HostPat::Subdomain(a), HostPat::Subdomain(b)) => a == b || is_subdomain_of(a, b),
        _ => false,
    }
}

/// Parse a `net.fetch` target strictly. The returned [`Url`] is what should be checked *and*
/// fetched; the error says why the target was refused and what to send instead.
pub fn parse_fetch_target(raw: &str) -> Result<Url, FetchTargetError> {
    if raw.len() > MAX_TARGET_BYTES {
        return Err(FetchTargetError(format!(
            "the URL is {} bytes long; net.fetch targets may be at most {MAX_TARGET_BYTES} bytes",
            raw.len()
        )));
    }
    check_raw_path(raw)?;
    let url = Url::parse(raw).map_err(|e| {
        FetchTargetError(format!("'{raw}' is not a valid URL ({e}); net.fetch targets look like https://host/path"))
    })?;
    check_parsed_target(&url)?;
    Ok(url)
}

/// Checks on the raw text, before the `url` crate silently resolves `..` away. Only extra
/// defence: the authoritative check is [`check_parsed_path`], on the segments as they will be
/// sent (the parser strips tabs and newlines and accepts `http:/h/…`, which text checks miss).
fn check_raw_path(raw: &str) -> Result<(), FetchTargetError> {
    let after_scheme = raw.split_once("://").map_or(raw, |(_, rest)| rest);
    let Some(start) = after_scheme.find(['/', '\\', '?', '#']) else {
        return Ok(());
    };
    let from_path = after_scheme.get(start..).unwrap_or("");
    let path = from_path.split(['?', '#']).next().unwrap_or("");
    check_segments(path.split(['/', '\\']))?;
    check_encoded_separators(path)
}

/// Refuses any segment a server could read as `..`: plain, percent-encoded in any case
/// (`.%2e`, `%2E%2e`), or followed by path parameters (`..;x`, which servlet containers
/// treat as `..`).
fn check_segments<'a>(segments: impl Iterator<Item = &'a str>) -> Result<(), FetchTargetError> {
    for segment in segments {
        let segment = segment.split(';').next().unwrap_or(segment);
        if ["..", ".%2e", "%2e.", "%2e%2e"].iter().any(|dots| segment.eq_ignore_ascii_case(dots)) {
            return Err(FetchTargetError(
                "the path contains a '..' segment (possibly percent-encoded or followed by ';'); \
                 request the resolved path instead"
                    .to_owned(),
            ));
        }
    }
    Ok(())
}

fn check_encoded_separators(path: &str) -> Result<(), FetchTargetError> {
    let encoded_separator =
        path.as_bytes().windows(3).any(|w| w.eq_ignore_ascii_case(b"%2f") || w.eq_ignore_ascii_case(b"%5c"));
    if encoded_separator {
        return Err(FetchTargetError(
            "the path contains an encoded slash or backslash (%2F / %5C), which a server may \
             treat as a separator the lease never saw; request the path with plain '/' instead"
                .to_owned(),
        ));
    }
    Ok(())
}

/// Checks on the parsed URL (also applied by [`UrlPattern::matches`], as defense in depth).
fn check_parsed_target(url: &Url) -> Result<(), FetchTargetError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchTargetError(format!(
            "scheme '{}' cannot be fetched; only http and https URLs can",
            url.scheme()
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FetchTargetError(
            "URLs with user:password@ are refused; send credentials in a header instead".to_owned(),
        ));
    }
    if url.host().is_none() {
        return Err(FetchTargetError("the URL has no host".to_owned()));
    }
    check_parsed_path(url)
}

/// The path checks on the path exactly as it will be sent.
fn check_parsed_path(url: &Url) -> Result<(), FetchTargetError> {
    check_segments(url.path().split('/'))?;
    check_encoded_separators(url.path())
}

impl fmt::Debug for UrlPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UrlPattern({:?})", self.source)
    }
}

impl fmt::Display for UrlPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl PartialEq for UrlPattern {
    fn eq(&self, other: &Self) -> bool {
        self.scheme == other.scheme && self.host == other.host && self.port == other.port && self.path == other.path
    }
}

impl Eq for UrlPattern {}

impl FromStr for UrlPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UrlPattern::parse(s)
    }
}

impl Serialize for UrlPattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for UrlPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        UrlPattern::parse(&source).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn p(s: &str) -> UrlPattern {
        UrlPattern::parse(s).unwrap()
    }

    fn u(s: &str) -> Url {
        parse_fetch_target(s).unwrap()
    }

    #[test]
    fn url_pattern_matches_scheme_host_port_and_path() {
        let pattern = p("http://127.0.0.1:8080/allowed/**");
        assert!(pattern.matches(&u("http://127.0.0.1:8080/allowed/x/y")));
        assert!(pattern.matches(&u("http://127.0.0.1:8080/allowed/")));
        assert!(!pattern.matches(&u("http://127.0.0.1:8080/other")));
        assert!(!pattern.matches(&u("https://127.0.0.1:8080/allowed/x")));
        assert!(!pattern.matches(&u("http://127.0.0.2:8080/allowed/x")));
    }

    #[test]
    fn url_pattern_denies_other_port() {
        let pattern = p("http://127.0.0.1:8080/**");
        assert!(!pattern.matches(&u("http://127.0.0.1:8081/")));
        assert!(!pattern.matches(&u("http://127.0.0.1/")));
    }

    #[test]
    fn omitted_port_means_the_scheme_default() {
        let pattern = p("https://api.example.com/v1/*");
        assert!(pattern.matches(&u("https://api.example.com/v1/users")));
        assert!(pattern.matches(&u("https://api.example.com:443/v1/users")));
        assert!(!pattern.matches(&u("https://api.example.com:8443/v1/users")));
        assert!(!pattern.matches(&u("https://api.example.com/v1/users/1")));
        assert_eq!(p("http://h:80/**"), p("http://h/**"));
        let any_scheme = p("*://h/**");
        assert!(any_scheme.matches(&u("http://h/")));
        assert!(any_scheme.matches(&u("https://h/")));
        assert!(!any_scheme.matches(&u("http://h:443/")));
    }

    #[test]
    fn wildcard_port_allows_any_port() {
        let pattern = p("http://localhost:*/**");
        assert!(pattern.matches(&u("http://localhost:1/")));
        assert!(pattern.matches(&u("http://localhost/")));
    }

    #[test]
    fn host_comparison_is_case_insensitive_and_canonical() {
        let pattern = p("https://API.Example.com/**");
        assert!(pattern.matches(&u("https://api.EXAMPLE.com/x")));
        assert!(p("http://127.0.0.1/**").matches(&u("http://127.1/")));
        assert!(p("http://[0:0::1]/**").matches(&u("http://[::1]/")));
    }

    #[test]
    fn subdomain_wildcard_needs_at_least_one_label() {
        let pattern = p("https://*.example.com/**");
        assert!(pattern.matches(&u("https://a.example.com/")));
        assert!(pattern.matches(&u("https://a.b.example.com/x")));
        assert!(!pattern.matches(&u("https://example.com/")));
        assert!(!pattern.matches(&u("https://badexample.com/")));
        assert!(!pattern.matches(&u("https://example.com.evil.net/")));
    }

    #[test]
    fn query_and_fragment_are_ignored() {
        let pattern = p("https://h/search");
        assert!(pattern.matches(&u("https://h/search?q=1#top")));
    }

    #[test]
    fn path_is_matched_raw_without_percent_decoding() {
        let pattern = p("https://h/a b/*");
        // The url crate encodes the space; the pattern's literal space no longer matches.
        assert!(!pattern.matches(&u("https://h/a b/x")));
        assert!(p("https://h/a%20b/*").matches(&u("https://h/a b/x")));
    }

    #[test]
    fn traversal_targets_are_refused_with_a_reason() {
        for target in [
            "http://h/allowed/../secret",
            "http://h/allowed/%2e%2e/secret",
            "http://h/allowed/.%2E/secret",
            "http://h/allowed\\..\\secret",
        ] {
            let err = parse_fetch_target(target).unwrap_err().to_string();
            assert!(err.contains("'..'"), "{target}: {err}");
        }
        for target in ["http://h/allowed%2Fsecret", "http://h/a%5cb", "http://h/a%2fb"] {
            let err = parse_fetch_target(target).unwrap_err().to_string();
            assert!(err.contains("%2F"), "{target}: {err}");
        }
        // Dots in the query are not path traversal.
        assert!(parse_fetch_target("http://h/ok?x=../y").is_ok());
    }

    #[test]
    fn userinfo_in_target_is_refused() {
        let err = parse_fetch_target("http://user:pw@h/").unwrap_err().to_string();
        assert!(err.contains("user:password@"), "{err}");
        let url = Url::parse("http://user@h/").unwrap();
        assert!(!p("*://*:*/**").matches(&url));
    }

    #[test]
    fn non_http_targets_are_refused() {
        assert!(parse_fetch_target("file:///etc/passwd").is_err());
        assert!(parse_fetch_target("ftp://h/").is_err());
        assert!(parse_fetch_target("not a url").is_err());
        assert!(!p("*://*:*/**").matches(&Url::parse("ftp://h/").unwrap()));
    }

    #[test]
    fn invalid_url_patterns_are_rejected() {
        for bad in [
            "127.0.0.1/**",
            "ftp://h/**",
            "http://*h/**",
            "http://a.*.com/**",
            "http://*.1.2.3.4/**",
            "http://h:99999/**",
            "http://h:0/",
            "http://u@h/**",
            "http://h/a?x=1",
            "http:///**",
            "http://h/***",
            "http://[::1/**",
        ] {
            assert!(UrlPattern::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn omitted_path_means_every_path() {
        let pattern = p("https://h");
        assert!(pattern.matches(&u("https://h/a/b")));
        assert!(p("https://h/x/**").is_subset_of(&pattern));
    }

    #[test]
    fn host_is_ip_literal_only_for_ip_hosts() {
        assert!(p("http://127.0.0.1/").host_is_ip_literal());
        assert!(p("http://[::1]:8080/").host_is_ip_literal());
        assert!(!p("http://localhost/").host_is_ip_literal());
        assert!(!p("http://*/").host_is_ip_literal());
    }

    #[test]
    fn url_subset_compares_each_part() {
        let wide = p("https://*.example.com/**");
        assert!(p("https://api.example.com/v1/*").is_subset_of(&wide));
        assert!(p("https://*.api.example.com/**").is_subset_of(&wide));
        assert!(!p("https://example.com/**").is_subset_of(&wide));
        assert!(!p("http://api.example.com/**").is_subset_of(&wide));
        assert!(!p("https://api.example.com:8443/**").is_subset_of(&wide));
        assert!(!wide.is_subset_of(&p("https://api.example.com/**")));
        assert!(p("http://h/**").is_subset_of(&p("*://h/**")));
        assert!(!p("*://h/**").is_subset_of(&p("http://h/**")));
        assert!(!p("*://h/**").is_subset_of(&p("http://h:*/**")));
        assert!(p("https://h:443/**").is_subset_of(&p("*://h/**")));
        assert!(!p("http://h:443/**").is_subset_of(&p("*://h/**")));
        assert!(p("http://h:*/a").is_subset_of(&UrlPattern::any()));
        assert!(!p("http://127.0.0.1/**").is_subset_of(&p("http://*.example.com/**")));
        assert!(!p("http://h/a/**").is_subset_of(&p("http://h/a/*")));
    }

    #[test]
    fn url_pattern_serializes_as_its_source_text() {
        let pattern = p("https://*.example.com/**");
        let json = serde_json::to_string(&pattern).unwrap();
        assert_eq!(json, r#""https://*.example.com/**""#);
        assert_eq!(serde_json::from_str::<UrlPattern>(&json).unwrap(), pattern);
    }

    #[test]
    fn traversal_hidden_from_the_raw_text_is_refused_on_the_parsed_path() {
        // The parser strips tab, CR and LF, and `http:/h` has no `://` for a text check to
        // split at: both used to pass an `http://h/allowed/**` grant with a `..;` segment.
        for target in [
            "http://h/allowed/..\t;/admin",
            "http://h/allowed/.\n.;/admin",
            "http://h/allowed/..\r;x/admin",
            "http:/h/allowed/..;/admin?a=://",
            "http:h/allowed/..;/admin",
            "HTTP://h/allowed/%2E%2e;/admin",
        ] {
            let err = parse_fetch_target(target).unwrap_err().to_string();
            assert!(err.contains("'..'"), "{target:?}: {err}");
        }
        let grant = p("http://h/allowed/**");
        let parsed = Url::parse("http:/h/allowed/..;/admin").unwrap();
        assert!(!grant.matches(&parsed), "matching refuses it too");
    }

    #[test]
    fn overlong_targets_are_refused_before_parsing() {
        let long = format!("http://h/{}", "a".repeat(MAX_TARGET_BYTES));
        let err = parse_fetch_target(&long).unwrap_err().to_string();
        assert!(err.contains("at most 4096 bytes"), "{err}");
        assert!(err.len() < 200, "the message does not echo the target");
    }

    #[test]
    fn a_pattern_knows_its_literal_address_and_exact_port() {
        assert_eq!(p("http://127.0.0.1:8080/").host_ip(), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(p("http://[::1]/").host_ip(), Some("::1".parse().unwrap()));
        assert_eq!(p("http://h/").host_ip(), None);
        assert!(p("http://127.0.0.1:8080/").names_port("http", 8080));
        assert!(p("http://127.0.0.1/").names_port("http", 80));
        assert!(!p("http://127.0.0.1:*/").names_port("http", 8080));
        assert!(!p("https://127.0.0.1:8080/").names_port("http", 8080));
    }

    #[test]
    fn fetch_target_with_servlet_dot_dot_parameter_is_refused() {
        assert!(parse_fetch_target("http://h/allowed/..;/admin").is_err());
        assert!(parse_fetch_target("http://h/allowed/%2e%2e;x=1/admin").is_err());
        assert!(parse_fetch_target("http://h/allowed/a;b/c").is_ok());
    }
}

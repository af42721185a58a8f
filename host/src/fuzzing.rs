//! Fuzz targets for the parsers that read untrusted input: lease requests, glob and URL
//! patterns, agent manifests and the HTTP JSON bodies of `POST /v1/jobs` and `POST /v1/messages`.
//!
//! Every byte these parsers see comes from a client, a guest or a file dropped into the agents
//! folder, so none of them may panic, whatever the input. Each target here takes arbitrary
//! bytes, runs them through the same public functions the host uses, and exercises what
//! follows a successful parse (effective leases, checks, subset tests). Where a documented
//! invariant is cheap to state it is asserted too (a pattern is within itself; a subset never
//! allows more than its superset; a narrowed lease allows nothing its sources deny), so a panic
//! means a bug: a parser that panics, or a broken guarantee.
//!
//! The same functions are driven two ways (see `docs/fuzzing.md`): by the bounded property
//! tests below, which `cargo test` runs, and by cargo-fuzz (`fuzz/`, nightly) for long runs.
//! Every file under `fuzz/corpus/<target>/` is replayed by the tests, so a crash found by a
//! long run becomes a regression test by dropping its input there.

use std::net::SocketAddr;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::macros::datetime;

use crate::api::jobs::SubmitBody;
use crate::api::messages::SendBody;
use crate::config::{LOCAL_PRINCIPAL, Policy};
use crate::engine::manifest;
use crate::lease::{
    Egress, Grants, Lease, LeaseCeiling, LeaseRequest, Limits, OwnAddresses, Pattern, Scope, UrlPattern,
    parse_fetch_target,
};
use crate::messages::Recipient;
use crate::messages::envelope::check_field;

/// A fuzz target: takes any bytes, never panics.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/` spell it.
pub const TARGETS: &[(&str, Target)] = &[
    ("lease_request", lease_request),
    ("glob_pattern", glob_pattern),
    ("url_pattern", url_pattern),
    ("manifest", manifest),
    ("submit_body", submit_body),
    ("message_body", message_body),
];

/// The instant leases are computed at, fixed so a run is reproducible.
const NOW: OffsetDateTime = datetime!(2026-11-21 09:00 UTC);

/// The agent the built-in ceiling's `{agent}` templates expand to.
const AGENT: &str = "fuzz";

/// Targets every lease is checked against, besides the strings found in the input.
const FIXED_TARGETS: &[&str] = &[
    "fuzz/x",
    "other/x",
    "info",
    "https://a.x/b",
    "http://127.0.0.1:8080/allowed/x",
    "http://[::1]/",
    "https://x/%2e%2e/y",
];

/// Addresses a fetch allowed by the grants is checked against (public, private, loopback).
const ADDRESSES: &[&str] = &["93.184.216.34:443", "10.0.0.5:80", "127.0.0.1:8080", "[::1]:80"];

/// At most this many strings of an input become targets, so one check round stays cheap.
const MAX_INPUT_TARGETS: usize = 16;

/// A lease request as JSON (a client's `lease` field, a guest's delegation argument): parsed
/// both ways the host reads one, then its effective lease against the built-in ceiling (for
/// agent `fuzz`) and against a ceiling of its own grants, the lease of a child delegated with
/// the same request, and checks of every scope on targets taken from the input.
pub fn lease_request(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = LeaseRequest::parse_json(text);
    }
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    let Ok(request) = LeaseRequest::deserialize(&value) else { return };
    exercise_request(&request, AGENT, &strings_in(&[&value]));
}

/// A glob pattern, a target and optionally a second pattern, one per line
/// (`pattern\ntarget[\nother]`): parse, match, and the subset relation's guarantees.
pub fn glob_pattern(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(3, '\n');
    let (source, target, other) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""), lines.next());
    let Ok(pattern) = Pattern::parse(source) else { return };
    let matched = pattern.matches(target);
    assert!(pattern.is_subset_of(&pattern), "{source:?} is not within itself");
    assert!(pattern.is_subset_of(&Pattern::any()), "{source:?} is not within **");
    assert_eq!(Pattern::parse(pattern.as_str()).ok().as_ref(), Some(&pattern), "{source:?} does not reparse");
    // Matching is defined as: the target's characters, as literals, are a subset of the pattern.
    if let Ok(literal) = Pattern::parse(&escaped(target)) {
        assert!(literal.matches(target), "the escaped target {target:?} does not match itself");
        assert_eq!(literal.is_subset_of(&pattern), matched, "{source:?} on {target:?}: match and subset disagree");
    }
    if let Some(Ok(wider)) = other.map(Pattern::parse)
        && matched
        && pattern.is_subset_of(&wider)
    {
        assert!(wider.matches(target), "{source:?} ⊆ {wider:?} but only the first matches {target:?}");
    }
}

/// A `net.fetch` URL pattern, a URL and optionally a second pattern, one per line: parse,
/// match (a strictly parsed target and a leniently parsed URL), subset guarantees, and the
/// same decision through a grant set.
pub fn url_pattern(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(3, '\n');
    let (source, target, other) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""), lines.next());
    if let Ok(url) = url::Url::parse(target) {
        let _ = parse_fetch_target(url.as_str());
    }
    let Ok(pattern) = UrlPattern::parse(source) else { return };
    let _ = (pattern.host_is_ip_literal(), pattern.names_port("http", 80), pattern.names_port("https", 8443));
    assert!(pattern.is_subset_of(&pattern), "{source:?} is not within itself");
    assert!(pattern.is_subset_of(&UrlPattern::any()), "{source:?} is not within *://*:*/**");
    assert_eq!(UrlPattern::parse(pattern.as_str()).ok().as_ref(), Some(&pattern), "{source:?} does not reparse");
    if let Ok(lenient) = url::Url::parse(target) {
        let _ = pattern.matches(&lenient);
    }
    let strict = parse_fetch_target(target).ok();
    let matched = strict.as_ref().is_some_and(|url| pattern.matches(url));
    if let Ok(grants) = Grants::new().with(Scope::NetFetch, &[source]) {
        assert_eq!(
            grants.allows(Scope::NetFetch, target),
            matched,
            "{source:?} on {target:?}: grant and pattern disagree"
        );
    }
    if let Some(Ok(wider)) = other.map(UrlPattern::parse)
        && let Some(url) = strict.as_ref().filter(|_| matched && pattern.is_subset_of(&wider))
    {
        assert!(wider.matches(url), "{source:?} ⊆ {wider:?} but only the first matches {target:?}");
    }
}

/// An agent manifest: as the JSON of the `corral:manifest` section, the same JSON embedded in
/// a minimal component (the two readings must agree), and the bytes as a whole component.
pub fn manifest(data: &[u8]) {
    let _ = (manifest::is_component(data), manifest::read_manifest(data), manifest::component_imports(data));
    let parsed = manifest::parse_manifest(data).ok();
    let embedded = manifest::read_manifest(&component_with_manifest(data)).ok();
    assert_eq!(parsed, embedded, "the manifest reads differently from JSON and from a component");
    let Some(agent) = parsed else { return };
    let _ = Grants::from_declared(&agent.scopes);
    let version = agent.parsed_version().ok();
    assert!(version.is_some(), "accepted manifest has an invalid version {:?}", agent.version);
    assert_eq!(manifest::version_key(&agent.version), version, "version_key disagrees with parsed_version");
    if let Some(version) = version {
        assert_eq!(version.to_string().parse::<manifest::Version>().ok(), Some(version), "version does not round-trip");
    }
}

/// A `POST /v1/jobs` body as axum reads it, then what submit does before the store: the
/// reference's name, the lease request, and the effective lease under the built-in policy.
pub fn submit_body(data: &[u8]) {
    let Ok(body) = serde_json::from_slice::<SubmitBody>(data) else { return };
    // What an idempotency key's request hash is computed over.
    let _ = serde_json::json!({ "agent": body.agent, "input": body.input, "lease": body.lease }).to_string();
    let request = match &body.lease {
        Some(lease) => LeaseRequest::deserialize(lease),
        None => Ok(LeaseRequest::default()),
    };
    let Ok(request) = request else { return };
    let name = match body.agent.split_once('@') {
        Some((name, version)) if !version.is_empty() => name,
        Some(_) => return,
        None => body.agent.as_str(),
    };
    if manifest::is_valid_name(name) {
        let lease = body.lease.as_ref().unwrap_or(&Value::Null);
        exercise_request(&request, name, &strings_in(&[lease, &body.input]));
    }
}

/// A `POST /v1/messages` body as axum reads it, then the checks the handler and the message
/// plane make before anything is routed or stored: the principal's send/publish ceiling, the
/// payload (JSON or base64), `content_length`, and every text field.
pub fn message_body(data: &[u8]) {
    let Ok(body) = serde_json::from_slice::<SendBody>(data) else { return };
    let (scope, target) = match &body.recipient {
        Recipient::Agent(agent) => (Scope::AgentSend, agent.as_str()),
        Recipient::Topic(topic) => (Scope::TopicPublish, topic.as_str()),
    };
    if let Some(policy) = builtin_policy() {
        let _ = policy.ceiling_for(LOCAL_PRINCIPAL, None).grants.decide(scope, target);
    }
    let Ok((producer, out)) = body.into_outgoing() else { return };
    let _ = out.content_length.is_some_and(|n| n != out.payload.len() as u64);
    let producer = producer.unwrap_or_else(|| LOCAL_PRINCIPAL.to_owned());
    let fields = [
        Some(producer.as_str()),
        Some(out.content_type.as_str()),
        out.message_id.as_deref(),
        out.correlation_id.as_deref(),
        out.parent_correlation_id.as_deref(),
        out.idempotency_token.as_deref(),
        out.hlc_timestamp.as_deref(),
        Some(out.recipient.as_target()),
    ];
    for value in fields.into_iter().flatten() {
        let _ = check_field("field", value);
    }
}

/// Effective leases for `request` (against the built-in ceiling for `agent`, and against a
/// ceiling made of the request's own grants so `net.fetch` is reachable), each checked.
fn exercise_request(request: &LeaseRequest, agent: &str, found: &[&str]) {
    let targets: Vec<&str> = FIXED_TARGETS.iter().copied().chain(found.iter().copied()).collect();
    let own = LeaseCeiling {
        grants: request.grants.clone().unwrap_or_default(),
        limits: Limits::UNLIMITED,
        max_ttl_ms: None,
    };
    let builtin = builtin_policy().map(|policy| policy.ceiling_for(LOCAL_PRINCIPAL, Some(agent)).into_owned());
    for ceiling in builtin.iter().chain([&own]) {
        exercise_lease(request, ceiling, &targets);
    }
}

/// One effective lease and the delegated child of it: each allows nothing its sources deny,
/// and survives the JSON round trip jobs are stored with.
fn exercise_lease(request: &LeaseRequest, ceiling: &LeaseCeiling, targets: &[&str]) {
    let declared = declared();
    let Ok(lease) = Lease::effective(declared, ceiling, request, None, NOW) else { return };
    let mut sources = vec![declared, &ceiling.grants];
    sources.extend(request.grants.as_ref());
    assert_narrower(&lease, &sources, targets);
    if let Ok(json) = serde_json::to_string(&lease) {
        // Reading it back may prune layers differently, but must decide the same.
        let stored = serde_json::from_str::<Lease>(&json);
        assert!(stored.is_ok(), "the stored lease does not read back: {json}");
        if let Ok(stored) = stored {
            assert_eq!(stored.expires_at, lease.expires_at, "the stored lease expires differently: {json}");
            assert_narrower(&stored, &[&lease.grants], targets);
            assert_narrower(&lease, &[&stored.grants], targets);
        }
    }
    assert_narrower(&lease.narrowed_by_ceiling(ceiling), &[&lease.grants], targets);
    if let Ok(child) = Lease::effective(declared, ceiling, request, Some(&lease), NOW) {
        assert_narrower(&child, &[&lease.grants], targets);
        assert_addresses_narrower(&child, &lease, targets);
    }
}

/// Every target `narrow` allows, in any scope, each of `sources` allows too; `check` and
/// `check_url` agree on fetch targets.
fn assert_narrower(narrow: &Lease, sources: &[&Grants], targets: &[&str]) {
    for scope in Scope::ALL {
        for target in targets {
            let allowed = narrow.check(scope, target, NOW).is_ok();
            if scope == Scope::NetFetch
                && let Ok(url) = parse_fetch_target(target)
            {
                assert_eq!(narrow.check_url(&url, NOW).is_ok(), allowed, "check and check_url disagree on {target:?}");
            }
            if allowed {
                let widened = sources.iter().any(|source| !source.allows(scope, target));
                assert!(!widened, "{scope} '{target}' is allowed by the lease but not by all of its sources");
            }
        }
    }
}

/// Every address the child may connect to for an allowed fetch, its parent may connect to.
fn assert_addresses_narrower(child: &Lease, parent: &Lease, targets: &[&str]) {
    let own = own_addresses();
    let egress = Egress { allow_private: false, own };
    for url in targets.iter().filter_map(|t| parse_fetch_target(t).ok()) {
        if child.check_url(&url, NOW).is_err() {
            continue;
        }
        for addr in ADDRESSES.iter().filter_map(|a| a.parse::<SocketAddr>().ok()) {
            if child.check_address(&url, addr, egress).is_ok() {
                assert!(
                    parent.check_address(&url, addr, egress).is_ok(),
                    "child may reach {addr} for {url}, parent not"
                );
            }
        }
    }
}

/// The built-in policy, parsed once.
fn builtin_policy() -> Option<&'static Policy> {
    static POLICY: OnceLock<Option<Policy>> = OnceLock::new();
    POLICY.get_or_init(|| Policy::builtin().ok()).as_ref()
}

/// An agent's declared scopes when it declares every scope for every target.
fn declared() -> &'static Grants {
    static DECLARED: OnceLock<Grants> = OnceLock::new();
    DECLARED.get_or_init(|| {
        let every: Vec<String> = Scope::ALL.iter().map(|scope| scope.as_str().to_owned()).collect();
        Grants::from_declared(&every).unwrap_or_default()
    })
}

/// A host listening on 127.0.0.1:8080, so fetches to itself are refused unless named.
fn own_addresses() -> &'static OwnAddresses {
    static OWN: OnceLock<OwnAddresses> = OnceLock::new();
    OWN.get_or_init(|| {
        let mut own = OwnAddresses::new(Vec::new());
        own.add_listener(SocketAddr::from(([127, 0, 0, 1], 8080)));
        own
    })
}

/// The first [`MAX_INPUT_TARGETS`] strings (keys and values) anywhere in `values`.
fn strings_in<'a>(values: &[&'a Value]) -> Vec<&'a str> {
    let mut found = Vec::new();
    let mut stack: Vec<&Value> = values.to_vec();
    while let Some(value) = stack.pop() {
        if found.len() >= MAX_INPUT_TARGETS {
            break;
        }
        match value {
            Value::String(text) => found.push(text.as_str()),
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                found.extend(map.keys().map(String::as_str));
                stack.extend(map.values());
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    found.truncate(MAX_INPUT_TARGETS);
    found
}

/// `text` as a glob that matches exactly `text` (every character escaped).
fn escaped(text: &str) -> String {
    text.chars().flat_map(|c| ['\\', c]).collect()
}

/// A component holding nothing but a `corral:manifest` custom section with `json`.
fn component_with_manifest(json: &[u8]) -> Vec<u8> {
    let name = manifest::MANIFEST_SECTION.as_bytes();
    let mut section = leb128(name.len());
    section.extend_from_slice(name);
    section.extend_from_slice(json);
    // The header of a component (component-model version 0x0d, layer 1), then the section.
    let mut bytes = b"\0asm\x0d\x00\x01\x00".to_vec();
    bytes.push(0);
    bytes.extend(leb128(section.len()));
    bytes.extend(section);
    bytes
}

/// Unsigned LEB128, as WebAssembly encodes sizes.
fn leb128(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use std::path::PathBuf;

    use proptest::prelude::*;

    use super::*;

    /// Pieces inputs are glued from: JSON syntax, field names the parsers know, scopes, glob
    /// and URL syntax, path tricks, and characters that are awkward in UTF-8 or JSON.
    const FRAGMENTS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "\\",
        "\\\"",
        "\\u0000",
        "\\ud800",
        "null",
        "true",
        "0",
        "-1",
        "1e999",
        "18446744073709551616",
        "\"grants\"",
        "\"limits\"",
        "\"ttl_ms\"",
        "\"expires_at\"",
        "\"deadline_ms\"",
        "\"fuel\"",
        "\"delegation_depth\"",
        "\"net.fetch\"",
        "\"kv.read\"",
        "\"kv.write\"",
        "\"log\"",
        "\"agent.delegate\"",
        "\"agent\"",
        "\"input\"",
        "\"lease\"",
        "\"idempotency_key\"",
        "\"recipient\"",
        "\"topic\"",
        "\"payload\"",
        "\"payload_base64\"",
        "\"content_length\"",
        "\"delivery\"",
        "\"name\"",
        "\"version\"",
        "\"scopes\"",
        "\"capabilities\"",
        "\"topics\"",
        "\"1.0.0-rc.1+b\"",
        "\"2026-11-21T10:00:00Z\"",
        "*",
        "**",
        "***",
        "/",
        "a",
        "é",
        "\u{0}",
        "\u{7f}",
        "\n",
        "%2e%2e",
        "%2F",
        "..",
        "{agent}",
        "{principal}",
        "\\{",
        "https://",
        "http://",
        "*://",
        "*.x",
        "[::1]",
        "127.0.0.1",
        ":8080",
        ":*",
        ":0",
        "@",
        "?q#f",
        "kv.read:counter/*",
        "net.fetch:https://*.x/**",
    ];

    /// Patterns and targets glued from the same vocabulary, so they collide.
    const PIECES: &[&str] = &[
        "*",
        "**",
        "a",
        "b",
        "/",
        "\\",
        "\\*",
        ".",
        "..",
        "%2e",
        "%2E%2e",
        "%2F",
        "%5C",
        ";",
        "{agent}",
        "fuzz",
        "x",
        "é",
        "\u{0}",
        " ",
        "https://",
        "http://",
        "*://",
        "*.",
        "x.",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "127.0.0.1",
        "0x7f.1",
        ":8080",
        ":443",
        ":*",
        ":",
        "@",
        "?",
        "#",
    ];

    const SCOPES: &[&str] = &["log", "kv.read", "kv.write", "net.fetch", "agent.delegate", "events", "kv.wrte"];

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..512)
    }

    /// JSON-looking text glued from [`FRAGMENTS`].
    fn json_ish() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(proptest::sample::select(FRAGMENTS), 0..40)
            .prop_map(|parts| parts.concat().into_bytes())
    }

    /// A string glued from [`PIECES`].
    fn piece_text() -> impl Strategy<Value = String> {
        proptest::collection::vec(proptest::sample::select(PIECES), 1..10).prop_map(|parts| parts.concat())
    }

    /// A long run of one piece (past the pattern and target caps) or deeply nested brackets.
    fn extreme() -> impl Strategy<Value = String> {
        prop_oneof![
            (proptest::sample::select(PIECES), 500..3000usize).prop_map(|(piece, n)| piece.repeat(n)),
            (0..600usize).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
            (0..300usize).prop_map(|n| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n))),
        ]
    }

    /// What a wildcard of a generated pattern stands for in its target.
    const FILLS: &[&str] = &["", "a", "ab", "a/b", "/", ".", "é", "%2e%2e", ".."];

    /// A glob from [`PIECES`] and a target made from it by filling its wildcards, so targets
    /// often match (and sometimes, through escapes, do not).
    fn glob_and_target() -> impl Strategy<Value = (String, String)> {
        let part = (proptest::sample::select(PIECES), proptest::sample::select(FILLS));
        proptest::collection::vec(part, 1..10).prop_map(|parts| {
            let pattern = parts.iter().map(|(piece, _)| *piece).collect();
            let target =
                parts.iter().map(|(piece, fill)| if piece.starts_with('*') { *fill } else { *piece }).collect();
            (pattern, target)
        })
    }

    /// A third line: a pattern that may or may not contain the first.
    fn wider(pattern: &str, kind: u8, other: &str) -> String {
        match kind {
            0 => format!("{pattern}**"),
            1 => format!("**{other}"),
            2 => pattern.replacen('a', "*", 1),
            _ => other.to_owned(),
        }
    }

    /// `pattern\ntarget\nother` for [`glob_pattern`].
    fn glob_lines() -> impl Strategy<Value = Vec<u8>> {
        (glob_and_target(), 0..4u8, piece_text()).prop_map(|((pattern, target), kind, other)| {
            format!("{pattern}\n{target}\n{}", wider(&pattern, kind, &other)).into_bytes()
        })
    }

    /// `(pattern part, target part)` pairs for the scheme, host and port of a URL.
    const SCHEMES: &[(&str, &str)] = &[("https://", "https://"), ("http://", "http://"), ("*://", "https://")];
    const HOSTS: &[(&str, &str)] = &[
        ("*", "a.x"),
        ("*.x", "b.a.x"),
        ("*.x", "x"),
        ("a.x", "A.X"),
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]", "[::1]"),
        ("0x7f.1", "127.0.0.1"),
    ];
    const PORTS: &[(&str, &str)] = &[("", ""), (":*", ":8080"), (":8080", ":8080"), (":443", ":443"), ("", ":80")];

    /// A URL pattern and a URL made to fit it part by part (often matching, not always).
    fn url_and_target() -> impl Strategy<Value = (String, String)> {
        let authority =
            (proptest::sample::select(SCHEMES), proptest::sample::select(HOSTS), proptest::sample::select(PORTS));
        (authority, glob_and_target()).prop_map(|(((scheme, tscheme), (host, thost), (port, tport)), (path, tpath))| {
            (format!("{scheme}{host}{port}/{path}"), format!("{tscheme}{thost}{tport}/{tpath}"))
        })
    }

    /// `pattern\nurl\nother` for [`url_pattern`].
    fn url_lines() -> impl Strategy<Value = Vec<u8>> {
        (url_and_target(), 0..4u8, piece_text()).prop_map(|((pattern, target), kind, other)| {
            let (scheme, rest) = pattern.split_once("://").unwrap_or(("*", ""));
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let other = match kind {
                0 => "*://*:*/**".to_owned(),
                1 => format!("{scheme}://*.x/**"),
                2 => format!("{scheme}://{authority}/{}", wider(path, 0, &other)),
                _ => format!("{scheme}://{authority}/{other}"),
            };
            format!("{pattern}\n{target}\n{other}").into_bytes()
        })
    }

    /// Well-formed lease request JSON with generated grants, so parsing succeeds and the lease
    /// logic runs, and targets made to fit its patterns.
    fn lease_json() -> impl Strategy<Value = (Value, Vec<String>)> {
        let pattern = (glob_and_target(), url_and_target(), any::<bool>());
        let grant = (proptest::sample::select(SCOPES), proptest::collection::vec(pattern, 0..4));
        (
            proptest::collection::vec(grant, 0..4),
            proptest::option::of(1..10_000_000u64),
            proptest::option::of(0..10u32),
            any::<bool>(),
        )
            .prop_map(|(grants, ttl, depth, layered)| {
                let (mut map, mut targets) = (serde_json::Map::new(), Vec::new());
                for (scope, generated) in grants {
                    let mut patterns = Vec::new();
                    for ((glob, text), (url, address), prefixed) in generated {
                        let (pattern, target) = match (scope, prefixed) {
                            ("net.fetch", _) => (url, address),
                            (_, true) => (format!("fuzz/{glob}"), format!("fuzz/{text}")),
                            (_, false) => (glob, text),
                        };
                        patterns.push(pattern);
                        targets.push(target);
                    }
                    let patterns =
                        if layered { serde_json::json!([patterns, ["**"]]) } else { serde_json::json!(patterns) };
                    map.insert(scope.to_owned(), patterns);
                }
                let mut request = serde_json::json!({ "grants": map });
                if let Some(ttl) = ttl {
                    request["ttl_ms"] = ttl.into();
                }
                if let Some(depth) = depth {
                    request["limits"] = serde_json::json!({ "delegation_depth": depth });
                }
                (request, targets)
            })
    }

    /// Feeds every file of `fuzz/corpus/<target>/` to the target; the seeds must exist.
    fn replay_corpus(name: &str) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no seed inputs in {}", dir.display());
        let target = TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f).unwrap();
        for file in files {
            let input = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&input));
            assert!(outcome.is_ok(), "{name} panicked on {}", file.display());
        }
    }

    #[test]
    fn every_target_has_a_fuzz_target_file_and_a_seed_corpus() {
        let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        for (name, _) in TARGETS {
            let source = std::fs::read_to_string(fuzz.join("fuzz_targets").join(format!("{name}.rs"))).unwrap();
            assert!(source.contains(&format!("corral::fuzzing::{name}(data)")), "{name}.rs calls another target");
            assert!(fuzz.join("corpus").join(name).is_dir(), "no corpus for {name}");
        }
    }

    #[test]
    fn seed_corpus_inputs_never_panic() {
        for (name, _) in TARGETS {
            replay_corpus(name);
        }
    }

    #[test]
    fn the_embedded_manifest_reads_like_its_json() {
        let json = br#"{"name": "fuzz", "version": "1.2.3", "scopes": ["log", "kv.read:counter/*"]}"#;
        let read = manifest::read_manifest(&component_with_manifest(json)).unwrap();
        assert_eq!(read, manifest::parse_manifest(json).unwrap());
        assert_eq!(read.name, "fuzz");
        assert_eq!(leb128(624_485), vec![0xe5, 0x8e, 0x26]);
    }

    #[test]
    fn input_strings_become_targets_up_to_the_cap() {
        let value = serde_json::json!({ "grants": { "kv.read": ["a", "b"] }, "n": 1 });
        let mut found = strings_in(&[&value]);
        found.sort_unstable();
        assert_eq!(found, ["a", "b", "grants", "kv.read", "n"]);
        let many = Value::Array((0..100).map(|i| Value::String(i.to_string())).collect());
        assert_eq!(strings_in(&[&many]).len(), MAX_INPUT_TARGETS);
    }

    proptest! {
        #![proptest_config(config(512))]

        #[test]
        fn lease_requests_never_panic_on_arbitrary_bytes(data in bytes()) {
            lease_request(&data);
        }

        #[test]
        fn lease_requests_never_panic_on_json_fragments(data in json_ish()) {
            lease_request(&data);
        }

        #[test]
        fn well_formed_lease_requests_never_widen_their_sources((request, targets) in lease_json()) {
            lease_request(request.to_string().as_bytes());
            let body = serde_json::json!({ "agent": "fuzz@1.0.0", "input": targets, "lease": request });
            submit_body(body.to_string().as_bytes());
        }

        #[test]
        fn glob_patterns_never_panic_on_arbitrary_bytes(data in bytes()) {
            glob_pattern(&data);
        }

        #[test]
        fn glob_patterns_keep_their_subset_guarantees(data in glob_lines()) {
            glob_pattern(&data);
        }

        #[test]
        fn url_patterns_never_panic_on_arbitrary_bytes(data in bytes()) {
            url_pattern(&data);
        }

        #[test]
        fn url_patterns_keep_their_subset_guarantees(data in url_lines()) {
            url_pattern(&data);
        }

        #[test]
        fn manifests_never_panic_on_arbitrary_bytes(data in bytes()) {
            manifest(&data);
        }

        #[test]
        fn manifests_never_panic_on_json_fragments(data in json_ish()) {
            manifest(&data);
        }

        #[test]
        fn manifests_with_generated_fields_read_the_same_embedded(
            name in piece_text(), version in piece_text(), scopes in proptest::collection::vec(piece_text(), 0..4),
        ) {
            let version = format!("1.0.{version}");
            for name in [name.as_str(), "fuzz"] {
                let json = serde_json::json!({ "name": name, "version": version, "scopes": scopes, "topics": scopes });
                manifest(json.to_string().as_bytes());
            }
        }

        #[test]
        fn submit_bodies_never_panic_on_arbitrary_bytes(data in bytes()) {
            submit_body(&data);
        }

        #[test]
        fn submit_bodies_never_panic_on_json_fragments(data in json_ish()) {
            submit_body(&data);
        }

        #[test]
        fn message_bodies_never_panic_on_arbitrary_bytes(data in bytes()) {
            message_body(&data);
        }

        #[test]
        fn message_bodies_never_panic_on_json_fragments(data in json_ish()) {
            message_body(&data);
        }

        #[test]
        fn message_bodies_with_generated_fields_never_panic(
            recipient in piece_text(), payload in piece_text(), topic in any::<bool>(), length in 0..64u64,
        ) {
            let to = if topic { serde_json::json!({ "topic": recipient }) } else { serde_json::json!({ "agent": recipient }) };
            for body in [
                serde_json::json!({ "recipient": to, "payload_base64": payload, "content_length": length }),
                serde_json::json!({ "recipient": to, "payload": payload, "message_id": recipient, "message_type": "DATA" }),
            ] {
                message_body(body.to_string().as_bytes());
            }
        }
    }

    proptest! {
        #![proptest_config(config(64))]

        #[test]
        fn every_target_survives_very_long_and_deeply_nested_inputs(text in extreme()) {
            let lease = serde_json::json!({ "grants": { "kv.read": [text], "net.fetch": [format!("https://x/{text}")] } });
            for (_, target) in TARGETS {
                target(text.as_bytes());
                target(format!("{text}\n{text}\n{text}").as_bytes());
                target(lease.to_string().as_bytes());
            }
        }
    }
}

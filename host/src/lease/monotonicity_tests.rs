//! Property tests of the lease invariant: for every lease `L` and every narrowing `L'` of it
//! (a request, a child lease, an intersection, a narrower ceiling at recovery), every target and
//! every address `L'` allows, `L` allows. Leases, patterns, URLs and addresses are generated
//! from vocabularies chosen to collide: IP literals the host listens on, private and public
//! addresses, wildcard and exact hosts and ports, nested paths.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::net::SocketAddr;

use proptest::prelude::*;
use time::OffsetDateTime;
use url::Url;

use super::{Egress, Grants, Lease, LeaseCeiling, LeaseRequest, Limits, OwnAddresses, Scope, parse_fetch_target};

const SCHEMES: &[&str] = &["http", "https", "*"];
const HOSTS: &[&str] =
    &["*", "127.0.0.1", "10.0.0.5", "169.254.169.254", "[::1]", "1.1.1.1", "api.example.com", "*.example.com"];
const PORTS: &[&str] = &["", ":*", ":8080", ":7070"];
const PATHS: &[&str] = &["", "/**", "/a/**", "/a/*", "/a/b", "/b/**"];

const URL_HOSTS: &[&str] = &[
    "127.0.0.1",
    "127.0.0.2",
    "10.0.0.5",
    "169.254.169.254",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "0.0.0.0",
    "1.1.1.1",
    "api.example.com",
    "x.api.example.com",
    "localhost",
];
const URL_PORTS: &[&str] = &["", ":8080", ":7070", ":443"];
const URL_PATHS: &[&str] = &["/", "/a/b", "/a/c/d", "/b/x", "/c"];
/// What a DNS name may resolve to.
const RESOLVED: &[&str] = &["93.184.216.34", "127.0.0.1", "10.0.0.5", "::1", "1.1.1.1"];

const GLOBS: &[&str] = &["**", "counter/*", "counter/**", "*/a", "counter/a", "a*", "*b"];
const KEYS: &[&str] = &["counter/a", "counter/b/c", "x/a", "ab", "b"];

fn url_pattern() -> impl Strategy<Value = String> {
    (0..SCHEMES.len(), 0..HOSTS.len(), 0..PORTS.len(), 0..PATHS.len())
        .prop_map(|(s, h, p, q)| format!("{}://{}{}{}", SCHEMES[s], HOSTS[h], PORTS[p], PATHS[q]))
}

fn glob() -> impl Strategy<Value = String> {
    (0..GLOBS.len()).prop_map(|i| GLOBS[i].to_owned())
}

/// A grant set of one or two layers per scope, for `net.fetch` and `kv.read`. Half of them
/// also allow every URL in each `net.fetch` layer (as an operator's "public internet" ceiling
/// does), so that narrower layers are often what decides.
fn grants() -> impl Strategy<Value = Grants> {
    let layers = |inner: BoxedStrategy<String>| prop::collection::vec(prop::collection::vec(inner, 1..4), 1..3);
    (layers(url_pattern().boxed()), layers(glob().boxed()), any::<bool>(), any::<bool>()).prop_map(
        |(net, kv, with_kv, wide)| {
            let mut g = Grants::new();
            for layer in &net {
                let mut refs: Vec<&str> = layer.iter().map(String::as_str).collect();
                if wide {
                    refs.push("*://*:*/**");
                }
                g = g.with(Scope::NetFetch, &refs).unwrap();
            }
            if with_kv {
                for layer in &kv {
                    let refs: Vec<&str> = layer.iter().map(String::as_str).collect();
                    g = g.with(Scope::KvRead, &refs).unwrap();
                }
            }
            g
        },
    )
}

/// A manifest's declared scopes: whole scopes or single patterns.
fn declared() -> impl Strategy<Value = Grants> {
    (prop::option::of(url_pattern()), prop::option::of(glob())).prop_map(|(net, kv)| {
        let entries = vec![
            net.map_or_else(|| "net.fetch".to_owned(), |p| format!("net.fetch:{p}")),
            kv.map_or_else(|| "kv.read".to_owned(), |p| format!("kv.read:{p}")),
        ];
        Grants::from_declared(&entries).unwrap()
    })
}

fn ceiling(grants: Grants) -> LeaseCeiling {
    LeaseCeiling { grants, limits: Limits::UNLIMITED, max_ttl_ms: None }
}

fn request(grants: Option<Grants>) -> LeaseRequest {
    LeaseRequest { grants, ..LeaseRequest::default() }
}

/// A fetch target with the address it connects to (its IP literal, or a resolution of its name).
fn target() -> impl Strategy<Value = (Url, SocketAddr)> {
    (0..URL_HOSTS.len(), 0..URL_PORTS.len(), 0..URL_PATHS.len(), any::<bool>(), 0..RESOLVED.len()).prop_map(
        |(h, p, q, tls, r)| {
            let scheme = if tls { "https" } else { "http" };
            let url =
                parse_fetch_target(&format!("{scheme}://{}{}{}", URL_HOSTS[h], URL_PORTS[p], URL_PATHS[q])).unwrap();
            let port = url.port_or_known_default().unwrap();
            let ip = match url.host().unwrap() {
                url::Host::Ipv4(v4) => v4.into(),
                url::Host::Ipv6(v6) => v6.into(),
                url::Host::Domain(_) => RESOLVED[r].parse().unwrap(),
            };
            (url, SocketAddr::new(ip, port))
        },
    )
}

fn own() -> OwnAddresses {
    let mut own = OwnAddresses::new(Vec::new());
    own.add_listener("127.0.0.1:7070".parse().unwrap());
    own
}

/// Everything a fetch of `url` connecting to `addr` needs from the lease.
fn reaches(lease: &Lease, url: &Url, addr: SocketAddr, allow_private: bool) -> bool {
    let own = own();
    let now = OffsetDateTime::now_utc();
    lease.check_url(url, now).is_ok() && lease.check_address(url, addr, Egress { allow_private, own: &own }).is_ok()
}

/// The invariant, checked for one pair over the sampled targets and keys.
fn assert_no_widening(wide: &Lease, narrow: &Lease, targets: &[(Url, SocketAddr)], what: &str) {
    let now = OffsetDateTime::now_utc();
    for (url, addr) in targets {
        for allow_private in [false, true] {
            if reaches(narrow, url, *addr, allow_private) {
                assert!(
                    reaches(wide, url, *addr, allow_private),
                    "{what}: the narrowing reaches {url} at {addr} (allow_private {allow_private}) but the lease \
                     does not\nwide: {wide:?}\nnarrow: {narrow:?}"
                );
            }
        }
    }
    for key in KEYS {
        if narrow.check(Scope::KvRead, key, now).is_ok() {
            assert!(wide.check(Scope::KvRead, key, now).is_ok(), "{what}: kv.read {key}\n{wide:?}\n{narrow:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_narrowing_reaches_a_target_or_address_its_lease_refuses(
        declared in declared(),
        child_declared in declared(),
        policy in grants(),
        narrower_policy in grants(),
        asked in grants(),
        child_asked in grants(),
        extra in grants(),
        targets in prop::collection::vec(target(), 32),
    ) {
        let now = OffsetDateTime::now_utc();
        let ceiling = ceiling(policy);
        let whole = Lease::effective(&declared, &ceiling, &LeaseRequest::default(), None, now).unwrap();

        // A request narrows the lease the agent would get without one.
        let requested = Lease::effective(&declared, &ceiling, &request(Some(asked)), None, now).unwrap();
        assert_no_widening(&whole, &requested, &targets, "request");

        // A child asking for a subset of its parent's grants (the self-delegation escape).
        let wanted = child_asked.intersect(&requested.grants);
        if let Ok(child) = Lease::effective(&child_declared, &ceiling, &request(Some(wanted)), Some(&requested), now) {
            assert_no_widening(&requested, &child, &targets, "child");
        }
        // …and one asking for nothing, which gets what the parent holds.
        if let Ok(child) = Lease::effective(&declared, &ceiling, &LeaseRequest::default(), Some(&requested), now) {
            assert_no_widening(&requested, &child, &targets, "child without a request");
        }

        // A plain intersection of the grants.
        let intersected = Lease { grants: requested.grants.intersect(&extra), ..requested.clone() };
        assert_no_widening(&requested, &intersected, &targets, "intersection");

        // Recovery under a changed policy.
        let recovered = requested.narrowed_by_ceiling(&self::ceiling(narrower_policy));
        assert_no_widening(&requested, &recovered, &targets, "narrower ceiling");
    }
}

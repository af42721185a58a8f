//! Which *addresses* a `net.fetch` may connect to, on top of which URLs its grants allow.
//!
//! A URL grant says nothing safe about where a connection ends up: `*://*:*/**` must reach
//! `api.example.com`, but not `127.0.0.1` (the host's own API), `169.254.169.254` (cloud
//! credentials) or `10.0.0.0/8`. So every fetch is also checked on the address it will connect
//! to (after DNS resolution, pinned), by [`Lease::check_address`]:
//!
//! | address | reachable when |
//! |---|---|
//! | one of the host's own listen addresses ([`OwnAddresses`]) | the operator's ceiling names that IP literal **and** that exact port |
//! | any other non-public address, as an IP literal in the URL | the operator's ceiling names the IP literal (or `egress.allow_private`) |
//! | any other non-public address, behind a DNS name | only with `egress.allow_private` |
//! | a public address | always (the URL grants decide) |
//!
//! **Only the operator names addresses.** The names come from the policy ceiling alone
//! ([`NamedAddresses::from_ceiling`]) and are carried in the lease, intersected down a
//! delegation chain; a manifest, a request or a delegation can never add one. That makes the
//! decision monotone: for every lease `L` and every narrowing `L'` of it (intersection, request,
//! child lease), every URL and every address `L'` allows, `L` allows. (An earlier version asked
//! whether every *remaining* grant layer named the IP; a narrower request layer then replaced the
//! operator's wildcard and so widened what was reachable.)

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

use super::grants::{Layer, TargetPattern, layer_within, merge_pruned, push_pruned};
use super::{Grants, Lease, Scope, UrlPattern};

/// The non-public IP literals the operator's ceiling grants for `net.fetch`, as layers (an
/// address is named iff every layer has a pattern that names it and matches the URL). An
/// empty layer names nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedAddresses {
    layers: Vec<Layer>,
}

impl NamedAddresses {
    /// Names nothing: only public addresses are reachable.
    pub fn none() -> NamedAddresses {
        NamedAddresses { layers: vec![Vec::new()] }
    }

    /// Whether this names nothing at all.
    pub fn is_none(&self) -> bool {
        self.layers.is_empty() || self.layers.iter().any(Vec::is_empty)
    }

    /// The IP-literal `net.fetch` patterns of an operator's ceiling.
    pub fn from_ceiling(ceiling: &Grants) -> NamedAddresses {
        let layers: Vec<Layer> = ceiling
            .layers_of(Scope::NetFetch)
            .iter()
            .map(|layer| layer.iter().filter(|p| ip_literal(p).is_some()).cloned().collect())
            .collect();
        if layers.is_empty() { NamedAddresses::none() } else { NamedAddresses::pruned(layers) }
    }

    /// What both name.
    pub fn intersect(&self, other: &NamedAddresses) -> NamedAddresses {
        if self.is_none() || other.is_none() {
            return NamedAddresses::none();
        }
        NamedAddresses { layers: merge_pruned(&self.layers, &other.layers) }
    }

    fn pruned(layers: Vec<Layer>) -> NamedAddresses {
        if layers.iter().any(Vec::is_empty) {
            return NamedAddresses::none();
        }
        let mut kept = Vec::new();
        for layer in layers {
            push_pruned(&mut kept, layer);
        }
        NamedAddresses { layers: kept }
    }

    /// Is `url` (whose host is an IP literal) named by every layer?
    pub fn names(&self, url: &Url) -> bool {
        !self.is_none() && self.layers.iter().all(|layer| layer.iter().any(|p| p.matches_url(url)))
    }

    /// Is `url` named by every layer with exactly the address `addr` (IP and port)?
    pub fn names_exactly(&self, url: &Url, addr: SocketAddr) -> bool {
        let wanted = canonical(addr.ip());
        !self.is_none()
            && self.layers.iter().all(|layer| {
                layer.iter().any(|p| {
                    ip_literal(p).is_some_and(|u| {
                        u.host_ip().map(canonical) == Some(wanted) && u.names_port(url.scheme(), addr.port())
                    }) && p.matches_url(url)
                })
            })
    }

    /// Sound subset test (used by the property tests): everything `self` names, `other` names.
    pub fn is_within(&self, other: &NamedAddresses) -> bool {
        self.is_none() || other.layers.iter().all(|bound| self.layers.iter().any(|layer| layer_within(layer, bound)))
    }
}

impl Default for NamedAddresses {
    fn default() -> Self {
        NamedAddresses::none()
    }
}

fn ip_literal(p: &TargetPattern) -> Option<&UrlPattern> {
    match p {
        TargetPattern::Url(u) if u.host_is_ip_literal() => Some(u),
        _ => None,
    }
}

impl Serialize for NamedAddresses {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.layers.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for NamedAddresses {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let texts = Vec::<Vec<String>>::deserialize(deserializer)?;
        let patterns: usize = texts.iter().map(Vec::len).sum();
        if patterns > super::LEASE_CAP.patterns {
            return Err(serde::de::Error::custom(format!(
                "named_addresses: at most {} patterns",
                super::LEASE_CAP.patterns
            )));
        }
        let mut layers = Vec::with_capacity(texts.len());
        for layer in texts {
            let mut parsed = Vec::with_capacity(layer.len());
            for text in layer {
                let pattern = TargetPattern::parse(Scope::NetFetch, &text).map_err(serde::de::Error::custom)?;
                if ip_literal(&pattern).is_none() {
                    return Err(serde::de::Error::custom(format!(
                        "named_addresses: '{text}' does not name an IP literal"
                    )));
                }
                parsed.push(pattern);
            }
            layers.push(parsed);
        }
        Ok(if layers.is_empty() { NamedAddresses::none() } else { NamedAddresses::pruned(layers) })
    }
}

/// The addresses this host itself listens on (HTTP API and any other listener), which no
/// `net.fetch` may reach unless the operator names the exact address.
#[derive(Debug, Clone, Default)]
pub struct OwnAddresses {
    listeners: Vec<SocketAddr>,
    /// The machine's interface addresses, for listeners bound to `0.0.0.0` / `::`.
    interfaces: Vec<IpAddr>,
}

impl OwnAddresses {
    pub fn new(interfaces: Vec<IpAddr>) -> OwnAddresses {
        OwnAddresses { listeners: Vec::new(), interfaces: interfaces.into_iter().map(canonical).collect() }
    }

    /// Adds a bound listener (with its real port, after binding port 0).
    pub fn add_listener(&mut self, addr: SocketAddr) {
        self.listeners.push(addr);
    }

    /// Would a connection to `addr` reach one of this host's listeners?
    pub fn contains(&self, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        self.listeners.iter().filter(|l| l.port() == addr.port()).any(|listener| {
            let bound = canonical(listener.ip());
            // Connecting to 0.0.0.0 or :: reaches the local host on Linux.
            ip.is_unspecified()
                || ip == bound
                || (bound.is_unspecified() && (ip.is_loopback() || self.interfaces.contains(&ip)))
        })
    }
}

/// How a fetch's connection address is judged beyond the lease: the operator's switches and
/// the host's own addresses.
#[derive(Debug, Clone, Copy)]
pub struct Egress<'a> {
    /// `egress.allow_private`: non-public addresses are reachable without being named.
    pub allow_private: bool,
    pub own: &'a OwnAddresses,
}

impl Lease {
    /// May a fetch of `url` (already allowed by the grants) connect to `addr`? `addr` is the
    /// URL's IP literal, or what its DNS name resolved to. See the module docs for the rules.
    pub fn check_address(&self, url: &Url, addr: SocketAddr, egress: Egress<'_>) -> Result<(), String> {
        let ip = canonical(addr.ip());
        let literal = matches!(url.host(), Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)));
        if egress.own.contains(addr) {
            if literal && self.named_addresses.names_exactly(url, addr) {
                return Ok(());
            }
            return Err(format!(
                "{addr} is this host's own address; agents may not reach the host unless the operator's \
                 policy names exactly that address (e.g. net.fetch = [\"http://{addr}/**\"])"
            ));
        }
        if is_public(ip) || egress.allow_private {
            return Ok(());
        }
        if !literal {
            let host = url.host_str().unwrap_or_default();
            return Err(format!(
                "{host} resolves to {ip}, a non-public address; names may only reach public addresses — \
                 the operator can grant the IP literally (e.g. http://{addr}/**) in the policy"
            ));
        }
        if self.named_addresses.names(url) {
            return Ok(());
        }
        Err(format!(
            "{ip} is a non-public address that the operator's policy does not name (wildcard hosts reach \
             only public addresses, and a lease request or manifest cannot name addresses) — the operator \
             can grant e.g. http://{addr}/** in the policy ceiling"
        ))
    }
}

/// IPv4-mapped and IPv4-translated IPv6 addresses as the IPv4 address they reach.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(v6);
    let low = Ipv4Addr::from(u32::try_from(bits & 0xffff_ffff).unwrap_or(0));
    // ::ffff:a.b.c.d (mapped) and ::ffff:0:a.b.c.d (translated, RFC 2765).
    let mapped = bits >> 32 == 0xffff || bits >> 32 == 0xffff_0000;
    mapped.then_some(low)
}

/// Non-public IPv4 ranges (IANA special-purpose registry, plus multicast and reserved).
const V4_NON_PUBLIC: &[(u32, u32)] = &[
    (0x0000_0000, 8),  // 0.0.0.0/8 "this network"
    (0x0a00_0000, 8),  // 10/8 private
    (0x6440_0000, 10), // 100.64/10 carrier-grade NAT
    (0x7f00_0000, 8),  // 127/8 loopback
    (0xa9fe_0000, 16), // 169.254/16 link local (cloud metadata)
    (0xac10_0000, 12), // 172.16/12 private
    (0xc000_0000, 24), // 192.0.0/24 protocol assignments
    (0xc000_0200, 24), // 192.0.2/24 documentation
    (0xc058_6300, 24), // 192.88.99/24 6to4 relay (deprecated)
    (0xc0a8_0000, 16), // 192.168/16 private
    (0xc612_0000, 15), // 198.18/15 benchmarking
    (0xc633_6400, 24), // 198.51.100/24 documentation
    (0xcb00_7100, 24), // 203.0.113/24 documentation
    (0xe000_0000, 4),  // 224/4 multicast
    (0xf000_0000, 4),  // 240/4 reserved, broadcast
];

/// Non-public IPv6 ranges. Forms that embed an IPv4 address are judged by it (below).
const V6_NON_PUBLIC: &[(u128, u32)] = &[
    (0, 128),                     // :: unspecified
    (1, 128),                     // ::1 loopback
    (0x0064_ff9b_0001 << 80, 48), // 64:ff9b:1::/48 local-use NAT64
    (0x0100 << 112, 64),          // 100::/64 discard only
    (0x2001 << 112, 23), // 2001::/23 IETF protocol assignments (Teredo, benchmarking 2001:2::/48, ORCHID 2001:10::/28, …)
    (0x2001_0db8 << 96, 32), // 2001:db8::/32 documentation
    (0x3fff << 112, 20), // 3fff::/20 documentation
    (0x5f00 << 112, 16), // 5f00::/16 segment routing SIDs
    (0xfc00 << 112, 7),  // fc00::/7 unique local
    (0xfe80 << 112, 10), // fe80::/10 link local
    (0xfec0 << 112, 10), // fec0::/10 site local (deprecated)
    (0xff00 << 112, 8),  // ff00::/8 multicast
];

/// Whether an address is public: reachable by any agent whose URL grants allow it.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            !V4_NON_PUBLIC
                .iter()
                .any(|&(net, len)| bits.checked_shr(32 - len).unwrap_or(0) == net.checked_shr(32 - len).unwrap_or(0))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let low = Ipv4Addr::from(u32::try_from(bits & 0xffff_ffff).unwrap_or(0));
            // Forms that embed an IPv4 address: mapped and translated (::ffff:0:0/96), the
            // deprecated IPv4-compatible ::/96, and well-known NAT64 64:ff9b::/96.
            if embedded_v4(v6).is_some()
                || (bits >> 32 == 0 && bits > 1)
                || bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000
            {
                return is_public(IpAddr::V4(low));
            }
            // 6to4 (2002::/16) embeds its IPv4 address in bits 16..48.
            if bits >> 112 == 0x2002 {
                let v4 = Ipv4Addr::from(u32::try_from((bits >> 80) & 0xffff_ffff).unwrap_or(0));
                return is_public(IpAddr::V4(v4));
            }
            !V6_NON_PUBLIC
                .iter()
                .any(|&(net, len)| bits.checked_shr(128 - len).unwrap_or(0) == net.checked_shr(128 - len).unwrap_or(0))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::lease::{LeaseCeiling, LeaseRequest, Limits, parse_fetch_target};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_reserved_and_metadata_addresses_are_not_public() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.4",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "240.0.0.1",
            "255.255.255.255",
            "192.0.0.8",
            "198.18.0.1",
            "224.0.0.1",
            "::",
            "::1",
            "fd00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "::ffff:0:7f00:1",
            "::ffff:0:a9fe:a9fe",
            "::10.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::",
            "2001::1",
            "2001:2::1",
            "2001:10::1",
            "2001:db8::1",
            "3fff::1",
            "100::1",
            "5f00::1",
        ] {
            assert!(!is_public(ip(a)), "{a} must not be public");
        }
        for a in ["1.1.1.1", "93.184.216.34", "2606:4700::1111", "64:ff9b::101:101", "::ffff:1.1.1.1", "2002:101:101::"]
        {
            assert!(is_public(ip(a)), "{a} is public");
        }
    }

    fn lease(ceiling_net: &[&str], request_net: Option<&[&str]>) -> Lease {
        let ceiling = LeaseCeiling {
            grants: Grants::new().with(Scope::NetFetch, ceiling_net).unwrap(),
            limits: Limits::UNLIMITED,
            max_ttl_ms: None,
        };
        let request = LeaseRequest {
            grants: request_net.map(|r| Grants::new().with(Scope::NetFetch, r).unwrap()),
            ..LeaseRequest::default()
        };
        let declared = Grants::from_declared(&["net.fetch".to_owned()]).unwrap();
        Lease::effective(&declared, &ceiling, &request, None, time::OffsetDateTime::now_utc()).unwrap()
    }

    fn reach(lease: &Lease, url: &str, addr: &str, own: &OwnAddresses) -> Result<(), String> {
        let url = parse_fetch_target(url).unwrap();
        lease.check_url(&url, time::OffsetDateTime::now_utc()).map_err(|d| d.reason)?;
        lease.check_address(&url, addr.parse().unwrap(), Egress { allow_private: false, own })
    }

    #[test]
    fn a_request_naming_an_ip_literal_does_not_reach_it_under_a_wildcard_ceiling() {
        let own = OwnAddresses::default();
        let wide = lease(&["*://*:*/**"], None);
        assert!(reach(&wide, "http://127.0.0.1:9/x", "127.0.0.1:9", &own).is_err());
        let narrowed = lease(&["*://*:*/**"], Some(&["http://127.0.0.1:*/**"]));
        let err = reach(&narrowed, "http://127.0.0.1:9/x", "127.0.0.1:9", &own).unwrap_err();
        assert!(err.contains("does not name"), "{err}");
        assert!(reach(&narrowed, "http://169.254.169.254/x", "169.254.169.254:80", &own).is_err());
        assert!(reach(&wide, "http://93.184.216.34/x", "93.184.216.34:80", &own).is_ok());
    }

    #[test]
    fn the_operator_naming_an_ip_literal_reaches_it() {
        let own = OwnAddresses::default();
        let named = lease(&["*://*:*/**", "http://127.0.0.1:*/**"], None);
        assert!(reach(&named, "http://127.0.0.1:9/x", "127.0.0.1:9", &own).is_ok());
        assert!(reach(&named, "http://127.0.0.2:9/x", "127.0.0.2:9", &own).is_err());
        // A DNS name that resolves to a private address is never named.
        assert!(reach(&named, "http://localhost:9/x", "127.0.0.1:9", &own).is_err());
    }

    #[test]
    fn the_hosts_own_address_needs_its_exact_port_named() {
        let mut own = OwnAddresses::new(vec![ip("192.168.1.5")]);
        own.add_listener("127.0.0.1:7070".parse().unwrap());
        let any_port = lease(&["http://127.0.0.1:*/**"], None);
        let err = reach(&any_port, "http://127.0.0.1:7070/v1/jobs", "127.0.0.1:7070", &own).unwrap_err();
        assert!(err.contains("own address"), "{err}");
        assert!(reach(&any_port, "http://127.0.0.1:7071/", "127.0.0.1:7071", &own).is_ok());
        assert!(reach(&any_port, "http://0.0.0.0:7070/", "0.0.0.0:7070", &own).is_err());
        assert!(reach(&any_port, "http://[::ffff:127.0.0.1]:7070/", "[::ffff:127.0.0.1]:7070", &own).is_err());
        let exact = lease(&["http://127.0.0.1:7070/healthz"], None);
        assert!(reach(&exact, "http://127.0.0.1:7070/healthz", "127.0.0.1:7070", &own).is_ok());

        let mut wildcard = OwnAddresses::new(vec![ip("192.168.1.5")]);
        wildcard.add_listener("0.0.0.0:7070".parse().unwrap());
        let lan = lease(&["http://192.168.1.5:*/**", "http://127.0.0.9:*/**"], None);
        assert!(reach(&lan, "http://192.168.1.5:7070/", "192.168.1.5:7070", &wildcard).is_err());
        assert!(reach(&lan, "http://127.0.0.9:7070/", "127.0.0.9:7070", &wildcard).is_err());
        assert!(reach(&lan, "http://192.168.1.5:8080/", "192.168.1.5:8080", &wildcard).is_ok());
    }

    #[test]
    fn named_addresses_come_from_the_ceiling_and_narrow_down_a_chain() {
        let ceiling = Grants::new().with(Scope::NetFetch, &["*://*:*/**", "http://10.0.0.5:8080/**"]).unwrap();
        let named = NamedAddresses::from_ceiling(&ceiling);
        assert!(named.names(&parse_fetch_target("http://10.0.0.5:8080/a").unwrap()));
        assert!(!named.names(&parse_fetch_target("http://10.0.0.6:8080/a").unwrap()));
        let narrower =
            NamedAddresses::from_ceiling(&Grants::new().with(Scope::NetFetch, &["http://10.0.0.5:8080/a/**"]).unwrap());
        let both = named.intersect(&narrower);
        assert!(both.is_within(&named) && both.is_within(&narrower));
        assert!(!both.names(&parse_fetch_target("http://10.0.0.5:8080/b").unwrap()));
        assert!(NamedAddresses::from_ceiling(&Grants::new()).is_none());
        assert!(named.intersect(&NamedAddresses::none()).is_none());
        let json = serde_json::to_string(&both).unwrap();
        assert_eq!(serde_json::from_str::<NamedAddresses>(&json).unwrap(), both);
        assert!(serde_json::from_str::<NamedAddresses>(r#"[["http://h/**"]]"#).is_err());
    }
}

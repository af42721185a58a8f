//! Grants: which targets each scope may reach, kept as layers so intersection stays exact.
//!
//! A user writes one list of patterns per scope (`{"kv.read": ["counter/*"]}`); a target is
//! allowed if any pattern matches. An *effective* lease is the intersection of several such
//! grant sets (agent manifest ∩ operator policy ∩ request ∩ parent), and the intersection of two
//! unions of globs is not, in general, a union of globs. Instead of approximating it (and risking
//! an unsound widening), each scope keeps a list of **layers**: a target is allowed iff in
//! *every* layer *some* pattern matches. Intersecting is then just concatenating layers — exact
//! and cheap. Layers implied by another layer are dropped, so a delegated child's lease does not
//! grow with the depth of the delegation chain.
//!
//! Invariant: a scope present in the map has at least one layer (zero layers would vacuously
//! allow everything); a scope absent from the map allows nothing.
//!
//! Serialized form: one layer is a flat list, several layers are a list of lists:
//! `{"kv.read": ["counter/*"]}` and `{"kv.read": [["counter/*"], ["**"]]}`. Both are accepted.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

use super::LeaseError;
use super::pattern::Pattern;
use super::scope::Scope;
use super::url_pattern::{UrlPattern, parse_fetch_target};

/// A pattern for one scope: a URL pattern for `net.fetch`, a glob for every other scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPattern {
    Glob(Pattern),
    Url(UrlPattern),
}

/// A target as seen by a check: text for glob scopes, an already-parsed URL for `net.fetch`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    Text(&'a str),
    Url(&'a Url),
}

impl TargetPattern {
    /// Parse `source` in the grammar `scope` uses.
    pub fn parse(scope: Scope, source: &str) -> Result<TargetPattern, LeaseError> {
        let parsed = match scope {
            Scope::NetFetch => UrlPattern::parse(source).map(TargetPattern::Url),
            _ => Pattern::parse(source).map(TargetPattern::Glob),
        };
        parsed.map_err(|e| LeaseError::Invalid(format!("invalid pattern '{source}' for {scope}: {e}")))
    }

    /// The pattern allowing every target of `scope`: `**`, or `*://*:*/**` for `net.fetch`.
    pub fn any(scope: Scope) -> TargetPattern {
        match scope {
            Scope::NetFetch => TargetPattern::Url(UrlPattern::any()),
            _ => TargetPattern::Glob(Pattern::any()),
        }
    }

    /// The text this pattern was parsed from.
    pub fn as_str(&self) -> &str {
        match self {
            TargetPattern::Glob(p) => p.as_str(),
            TargetPattern::Url(p) => p.as_str(),
        }
    }

    /// Sound subset test; patterns of different kinds are never subsets of each other.
    pub fn is_subset_of(&self, other: &TargetPattern) -> bool {
        match (self, other) {
            (TargetPattern::Glob(a), TargetPattern::Glob(b)) => a.is_subset_of(b),
            (TargetPattern::Url(a), TargetPattern::Url(b)) => a.is_subset_of(b),
            _ => false,
        }
    }

    /// Does this (`net.fetch`) pattern match `url`?
    pub(crate) fn matches_url(&self, url: &Url) -> bool {
        self.matches(Target::Url(url))
    }

    pub(crate) fn matches(&self, target: Target<'_>) -> bool {
        match (self, target) {
            (TargetPattern::Glob(p), Target::Text(text)) => p.matches(text),
            (TargetPattern::Url(p), Target::Url(url)) => p.matches(url),
            _ => false,
        }
    }
}

impl fmt::Display for TargetPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for TargetPattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

pub(super) type Layer = Vec<TargetPattern>;

/// How big a grant set may be. Every lease operation (parse, intersect, subset, check) costs
/// at most O(patterns × pattern tokens / 64), and grant sets arrive from clients, manifests and
/// guests, so both the count and the text size are capped — before anything is compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeCap {
    /// Patterns across all scopes and layers.
    pub patterns: usize,
    /// Bytes of pattern text across all scopes and layers.
    pub bytes: usize,
}

/// What a lease request, a delegation request or an agent manifest may hold. Real leases use
/// a handful of patterns.
pub const REQUEST_CAP: SizeCap = SizeCap { patterns: 64, bytes: 4096 };

/// What any grant set may hold: a policy ceiling, a stored or an effective lease (which
/// combines up to four sources, so it gets four requests' worth). An effective lease over it
/// is refused when it is computed, so every stored lease can be read back.
pub const LEASE_CAP: SizeCap = SizeCap { patterns: 4 * REQUEST_CAP.patterns, bytes: 4 * REQUEST_CAP.bytes };

/// The size of a grant set, as counted against a [`SizeCap`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrantSize {
    pub patterns: usize,
    pub bytes: usize,
}

impl GrantSize {
    fn add(&mut self, pattern_bytes: usize) {
        self.patterns += 1;
        self.bytes += pattern_bytes;
    }

    /// `Err` naming the limit when over `cap`; `what` says whose grants these are.
    pub fn check(self, cap: SizeCap, what: &str) -> Result<(), String> {
        if self.patterns > cap.patterns {
            return Err(format!("{what} hold {} patterns; at most {} are allowed", self.patterns, cap.patterns));
        }
        if self.bytes > cap.bytes {
            return Err(format!("{what} hold {} bytes of patterns; at most {} are allowed", self.bytes, cap.bytes));
        }
        Ok(())
    }
}

/// Scope → constraint layers. See the module docs for the semantics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    scopes: BTreeMap<Scope, Vec<Layer>>,
}

/// Why one grant set is not within another: the first scope or pattern not covered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct NotWithin {
    pub scope: Scope,
    /// The uncovered pattern, or `None` when the whole scope is missing from the wider side.
    pub pattern: Option<String>,
    pub detail: String,
}

impl Grants {
    /// No grants: every check is denied.
    pub fn new() -> Grants {
        Grants::default()
    }

    /// An agent's declared needs: each entry is `"scope"` (every target) or `"scope:pattern"`,
    /// e.g. `"kv.read:counter/*"`, `"net.fetch:https://api.example.com/**"`, `"log"`.
    pub fn from_declared(entries: &[String]) -> Result<Grants, LeaseError> {
        let mut size = GrantSize::default();
        entries.iter().for_each(|e| size.add(e.len()));
        size.check(REQUEST_CAP, "the declared scopes").map_err(LeaseError::Invalid)?;
        let mut layers: BTreeMap<Scope, Layer> = BTreeMap::new();
        for entry in entries {
            let (scope_text, pattern) = match entry.split_once(':') {
                Some((scope, pattern)) => (scope, Some(pattern)),
                None => (entry.as_str(), None),
            };
            let scope: Scope = scope_text.parse()?;
            let pattern = match pattern {
                Some(text) => TargetPattern::parse(scope, text)?,
                None => TargetPattern::any(scope),
            };
            layers.entry(scope).or_default().push(pattern);
        }
        let mut grants = Grants::new();
        for (scope, layer) in layers {
            grants.narrow(scope, layer);
        }
        Ok(grants)
    }

    /// Builder: parse `patterns` as one more layer for `scope` (a first layer grants the scope;
    /// a further layer narrows it).
    pub fn with(mut self, scope: Scope, patterns: &[&str]) -> Result<Grants, LeaseError> {
        let layer = patterns.iter().map(|p| TargetPattern::parse(scope, p)).collect::<Result<Layer, _>>()?;
        self.narrow(scope, layer);
        Ok(self)
    }

    /// Add `layer` to `scope`: grants the scope if absent, otherwise intersects with it.
    pub fn narrow(&mut self, scope: Scope, layer: Vec<TargetPattern>) {
        push_pruned(self.scopes.entry(scope).or_default(), layer);
    }

    /// The scopes this grant set mentions (each allows at least the targets its layers agree on).
    pub fn scopes(&self) -> impl Iterator<Item = Scope> + '_ {
        self.scopes.keys().copied()
    }

    /// Whether any glob pattern uses a template (`{agent}`, `{principal}`); `Err` names an
    /// unknown one. Only the operator's ceilings may (see `templates`).
    pub fn uses_templates(&self) -> Result<bool, String> {
        let mut used = false;
        for pattern in self.scopes.values().flatten().flatten() {
            if let TargetPattern::Glob(glob) = pattern {
                used |= super::templates::uses_templates(glob.as_str())?;
            }
        }
        Ok(used)
    }

    /// These grants with their templates expanded for one lease. A pattern that cannot be
    /// expanded (`{agent}` with no agent) is dropped, which only narrows.
    pub fn expand_templates(&self, values: super::TemplateValues<'_>) -> Grants {
        let mut expanded = Grants::new();
        for (scope, layers) in &self.scopes {
            for layer in layers {
                let layer: Layer = layer
                    .iter()
                    .filter_map(|pattern| match pattern {
                        TargetPattern::Glob(glob) if glob.as_str().contains('{') => {
                            let text = super::templates::expand(glob.as_str(), values)?;
                            Pattern::parse(&text).ok().map(TargetPattern::Glob)
                        }
                        other => Some(other.clone()),
                    })
                    .collect();
                // An emptied layer stays: it allows nothing, as it must.
                expanded.scopes.entry(*scope).or_default().push(layer);
            }
        }
        expanded
    }

    /// Does this grant set mention `scope` at all?
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains_key(&scope)
    }

    /// How many patterns, and how many bytes of pattern text, this grant set holds.
    pub fn size(&self) -> GrantSize {
        let mut size = GrantSize::default();
        self.scopes.values().flatten().flatten().for_each(|p| size.add(p.as_str().len()));
        size
    }

    /// Is `target` allowed for `scope`? (`net.fetch` targets are parsed strictly as URLs.)
    pub fn allows(&self, scope: Scope, target: &str) -> bool {
        self.decide(scope, target).is_ok()
    }

    /// Exact intersection: a target is allowed by the result iff both sides allow it.
    pub fn intersect(&self, other: &Grants) -> Grants {
        let mut scopes = BTreeMap::new();
        for (scope, mine) in &self.scopes {
            let Some(theirs) = other.scopes.get(scope) else {
                continue;
            };
            scopes.insert(*scope, merge_pruned(mine, theirs));
        }
        Grants { scopes }
    }

    /// Sound subset test: `Ok` guarantees every target `self` allows, `other` allows too.
    /// For each layer of `other`, some layer of `self` must fit inside it pattern by pattern.
    pub fn is_within(&self, other: &Grants) -> Result<(), NotWithin> {
        for (scope, mine) in &self.scopes {
            let Some(theirs) = other.scopes.get(scope) else {
                return Err(NotWithin {
                    scope: *scope,
                    pattern: None,
                    detail: format!("{scope} is not granted at all"),
                });
            };
            for bound in theirs {
                if mine.iter().any(|layer| layer_within(layer, bound)) {
                    continue;
                }
                let uncovered = mine
                    .first()
                    .and_then(|layer| layer.iter().find(|p| !bound.iter().any(|q| p.is_subset_of(q))))
                    .map(|p| p.as_str().to_owned());
                let detail = match &uncovered {
                    Some(p) => format!("{scope} pattern '{p}' is not within {}", list(bound)),
                    None => format!("{scope} is not within {}", list(bound)),
                };
                return Err(NotWithin { scope: *scope, pattern: uncovered, detail });
            }
        }
        Ok(())
    }

    /// The decision, with an actionable reason when denied. `raw` is the target as the guest
    /// sent it (parsed here for `net.fetch`).
    pub(crate) fn decide(&self, scope: Scope, raw: &str) -> Result<(), String> {
        let layers = self.layers(scope)?;
        match scope {
            Scope::NetFetch => {
                let url = parse_fetch_target(raw).map_err(|e| e.to_string())?;
                decide_layers(scope, layers, Target::Url(&url), raw)
            }
            _ => decide_layers(scope, layers, Target::Text(raw), raw),
        }
    }

    /// [`Grants::decide`] for an already-parsed `net.fetch` URL.
    pub(crate) fn decide_url(&self, url: &Url) -> Result<(), String> {
        let layers = self.layers(Scope::NetFetch)?;
        decide_layers(Scope::NetFetch, layers, Target::Url(url), url.as_str())
    }

    /// The constraint layers of `scope` (none if the scope is not granted).
    pub(super) fn layers_of(&self, scope: Scope) -> &[Layer] {
        self.scopes.get(&scope).map_or(&[], Vec::as_slice)
    }

    fn layers(&self, scope: Scope) -> Result<&[Layer], String> {
        self.scopes
            .get(&scope)
            .map(Vec::as_slice)
            .ok_or_else(|| format!("the lease has no {scope} grant — add it to the job's lease or the policy file"))
    }
}

fn decide_layers(scope: Scope, layers: &[Layer], target: Target<'_>, shown: &str) -> Result<(), String> {
    match layers.iter().find(|layer| !layer.iter().any(|p| p.matches(target))) {
        None => Ok(()),
        Some(layer) if layer.is_empty() => {
            Err(format!("no {scope} grant matches {shown} (the {scope} grant is empty, so every target is denied)"))
        }
        Some(layer) if layers.len() == 1 => Err(format!("no {scope} grant matches {shown} (granted: {})", list(layer))),
        Some(layer) => Err(format!(
            "no {scope} grant matches {shown} (one of the lease's {} constraints for {scope} allows only: {})",
            layers.len(),
            list(layer)
        )),
    }
}

fn list(layer: &[TargetPattern]) -> String {
    layer.iter().map(TargetPattern::as_str).collect::<Vec<_>>().join(", ")
}

/// Every pattern of `sub` fits in some pattern of `sup`, so `sub` allows nothing `sup` denies.
pub(super) fn layer_within(sub: &[TargetPattern], sup: &[TargetPattern]) -> bool {
    sub.iter().all(|p| sup.iter().any(|q| p.is_subset_of(q)))
}

/// The conjunction of two layer lists that are each already pruned: only layers from
/// different sides are compared (|a| × |b| subset tests instead of (|a| + |b|)²), which keeps
/// intersecting a large request with a small ceiling linear in the request.
///
/// Sound for the same reason as [`push_pruned`]: a layer is dropped only for a layer that
/// implies it and is still kept (a `b` layer is never dropped once kept; an `a` layer that
/// justified dropping a `b` layer is dropped only for a kept `b` layer that implies it).
pub(super) fn merge_pruned(a: &[Layer], b: &[Layer]) -> Vec<Layer> {
    let mut from_a: Vec<&Layer> = a.iter().collect();
    let mut from_b: Vec<&Layer> = Vec::with_capacity(b.len());
    for y in b {
        if from_a.iter().any(|x| layer_within(x, y)) {
            continue;
        }
        from_a.retain(|x| !layer_within(y, x));
        from_b.push(y);
    }
    from_a.into_iter().chain(from_b).cloned().collect()
}

/// Add `candidate` to a conjunction of layers, dropping layers another layer already implies.
pub(super) fn push_pruned(kept: &mut Vec<Layer>, candidate: Layer) {
    if kept.iter().any(|layer| layer_within(layer, &candidate)) {
        return;
    }
    kept.retain(|layer| !layer_within(&candidate, layer));
    kept.push(candidate);
}

impl Serialize for Grants {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Repr<'a> {
            Flat(&'a Layer),
            Layered(&'a Vec<Layer>),
        }
        serializer.collect_map(self.scopes.iter().map(|(scope, layers)| {
            let repr = match layers.as_slice() {
                [single] => Repr::Flat(single),
                _ => Repr::Layered(layers),
            };
            (scope, repr)
        }))
    }
}

/// One element of a scope's list: a pattern (flat form) or a list of patterns (layered form).
enum Entry {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntryVisitor;
        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = Entry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a pattern string or a list of pattern strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Entry, E> {
                Ok(Entry::One(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Entry, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(Entry::Many(items))
            }
        }
        deserializer.deserialize_any(EntryVisitor)
    }
}

impl<'de> Deserialize<'de> for Grants {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = BTreeMap::<String, Vec<Entry>>::deserialize(deserializer)?;
        // Counted on the raw text, before any pattern is compiled or compared.
        let mut size = GrantSize::default();
        for entries in raw.values() {
            for entry in entries {
                match entry {
                    Entry::One(text) => size.add(text.len()),
                    Entry::Many(texts) => texts.iter().for_each(|t| size.add(t.len())),
                }
            }
        }
        size.check(LEASE_CAP, "the grants").map_err(de::Error::custom)?;
        let mut scopes = BTreeMap::new();
        for (name, entries) in raw {
            let scope: Scope = name.parse().map_err(de::Error::custom)?;
            let parse = |texts: Vec<String>| -> Result<Layer, D::Error> {
                let mut layer: Layer = Vec::with_capacity(texts.len());
                for text in &texts {
                    let pattern = TargetPattern::parse(scope, text).map_err(de::Error::custom)?;
                    if !layer.contains(&pattern) {
                        layer.push(pattern);
                    }
                }
                Ok(layer)
            };
            let layers = if entries.iter().all(|e| matches!(e, Entry::One(_))) {
                let flat = entries
                    .into_iter()
                    .filter_map(|e| match e {
                        Entry::One(t) => Some(t),
                        Entry::Many(_) => None,
                    })
                    .collect();
                vec![parse(flat)?]
            } else {
                let mut layers = Vec::new();
                for entry in entries {
                    match entry {
                        Entry::Many(texts) => layers.push(parse(texts)?),
                        Entry::One(_) => {
                            return Err(de::Error::custom(format!(
                                "{scope}: use either a list of patterns or a list of pattern \
                                 lists (layers), not a mix"
                            )));
                        }
                    }
                }
                layers
            };
            let mut kept = Vec::new();
            for layer in layers {
                push_pruned(&mut kept, layer);
            }
            scopes.insert(scope, kept);
        }
        Ok(Grants { scopes })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn grants(json: &str) -> Grants {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn scope_without_grant_is_denied() {
        let g = grants(r#"{"kv.read": ["counter/*"]}"#);
        assert!(g.allows(Scope::KvRead, "counter/a"));
        assert!(!g.allows(Scope::KvWrite, "counter/a"));
        assert!(!Grants::new().allows(Scope::Log, "info"));
        let reason = g.decide(Scope::KvWrite, "x").unwrap_err();
        assert!(reason.contains("no kv.write grant"), "{reason}");
    }

    #[test]
    fn empty_pattern_list_denies_every_target() {
        let g = grants(r#"{"kv.read": []}"#);
        assert!(g.has_scope(Scope::KvRead));
        assert!(!g.allows(Scope::KvRead, ""));
        assert!(!g.allows(Scope::KvRead, "a"));
        let json = serde_json::to_string(&g).unwrap();
        assert_eq!(json, r#"{"kv.read":[]}"#);
        assert_eq!(grants(&json), g);
    }

    #[test]
    fn declared_entries_grant_whole_scopes_or_patterns() {
        let g = Grants::from_declared(&[
            "log".to_owned(),
            "kv.read:counter/*".to_owned(),
            "kv.read:config".to_owned(),
            "net.fetch:https://api.example.com/**".to_owned(),
            "agent.delegate".to_owned(),
        ])
        .unwrap();
        assert!(g.allows(Scope::Log, "anything/at/all"));
        assert!(g.allows(Scope::KvRead, "counter/a"));
        assert!(g.allows(Scope::KvRead, "config"));
        assert!(!g.allows(Scope::KvRead, "other"));
        assert!(g.allows(Scope::NetFetch, "https://api.example.com/x"));
        assert!(!g.allows(Scope::NetFetch, "https://evil.example.com/x"));
        let all_net = Grants::from_declared(&["net.fetch".to_owned()]).unwrap();
        assert!(all_net.allows(Scope::NetFetch, "http://10.0.0.1:9999/x"));
        let err = Grants::from_declared(&["kv.wrte:x".to_owned()]).unwrap_err();
        assert!(err.to_string().contains("unknown scope 'kv.wrte'"));
        let err = Grants::from_declared(&["kv.read:a***".to_owned()]).unwrap_err();
        assert!(err.to_string().contains("invalid pattern 'a***' for kv.read"), "{err}");
    }

    #[test]
    fn intersection_is_exact_for_layered_grants() {
        let a = grants(r#"{"kv.read": ["counter/*", "config/**"], "log": ["**"]}"#);
        let b = grants(r#"{"kv.read": ["*/a", "config/x/**"], "kv.write": ["**"]}"#);
        let both = a.intersect(&b);
        assert!(!both.has_scope(Scope::Log));
        assert!(!both.has_scope(Scope::KvWrite));
        let targets =
            ["counter/a", "counter/b", "config/a", "config/x/a", "config/x", "x/a", "counter/a/b", "config/x/y/a", ""];
        for t in targets {
            assert_eq!(both.allows(Scope::KvRead, t), a.allows(Scope::KvRead, t) && b.allows(Scope::KvRead, t), "{t}");
        }
        let json = serde_json::to_string(&both).unwrap();
        assert_eq!(json, r#"{"kv.read":[["counter/*","config/**"],["*/a","config/x/**"]]}"#);
        assert_eq!(grants(&json), both);
    }

    #[test]
    fn intersection_drops_layers_implied_by_narrower_ones() {
        let parent = grants(r#"{"kv.read": ["counter/**"]}"#);
        let child = grants(r#"{"kv.read": ["counter/a/*"]}"#);
        let both = parent.intersect(&child);
        assert_eq!(both, child);
        // Repeated delegation does not grow the lease.
        assert_eq!(both.intersect(&parent).intersect(&child), child);
    }

    #[test]
    fn layered_and_flat_forms_are_both_accepted() {
        let layered = grants(r#"{"kv.read": [["counter/*"], ["**"]]}"#);
        // `**` is implied by `counter/*`, so it is dropped.
        assert_eq!(layered, grants(r#"{"kv.read": ["counter/*"]}"#));
        let two = grants(r#"{"kv.read": [["a*"], ["*b"]]}"#);
        assert!(two.allows(Scope::KvRead, "ab"));
        assert!(!two.allows(Scope::KvRead, "a"));
        let mixed = serde_json::from_str::<Grants>(r#"{"kv.read": ["a", ["b"]]}"#);
        assert!(mixed.unwrap_err().to_string().contains("not a mix"));
        let bad = serde_json::from_str::<Grants>(r#"{"kv.read": [1]}"#);
        assert!(bad.unwrap_err().to_string().contains("a pattern string or a list"));
        let unknown = serde_json::from_str::<Grants>(r#"{"kv.wrte": ["a"]}"#);
        assert!(unknown.unwrap_err().to_string().contains("unknown scope 'kv.wrte'"));
    }

    #[test]
    fn within_accepts_narrower_and_names_what_is_not_covered() {
        let parent = grants(r#"{"kv.read": ["counter/*"], "net.fetch": ["http://127.0.0.1:8080/**"]}"#);
        let ok = grants(r#"{"kv.read": ["counter/a"], "net.fetch": ["http://127.0.0.1:8080/x/*"]}"#);
        assert!(ok.is_within(&parent).is_ok());
        assert!(Grants::new().is_within(&parent).is_ok());

        let wide = grants(r#"{"kv.read": ["counter/**"]}"#);
        let err = wide.is_within(&parent).unwrap_err();
        assert_eq!(err.scope, Scope::KvRead);
        assert_eq!(err.pattern.as_deref(), Some("counter/**"));
        assert!(err.detail.contains("'counter/**' is not within counter/*"), "{}", err.detail);

        let other_scope = grants(r#"{"kv.write": ["counter/a"]}"#);
        let err = other_scope.is_within(&parent).unwrap_err();
        assert_eq!(err.detail, "kv.write is not granted at all");
    }

    #[test]
    fn within_handles_layers_on_both_sides() {
        let parent = grants(r#"{"kv.read": [["a/**"], ["**/z"]]}"#);
        assert!(grants(r#"{"kv.read": ["a/z"]}"#).is_within(&parent).is_ok());
        assert!(grants(r#"{"kv.read": [["a/*"], ["*/z"]]}"#).is_within(&parent).is_ok());
        assert!(grants(r#"{"kv.read": ["a/*"]}"#).is_within(&parent).is_err());
        // A layered set is within each of its own layers.
        let layered = grants(r#"{"kv.read": [["a*"], ["*b"]]}"#);
        assert!(layered.is_within(&grants(r#"{"kv.read": ["a*"]}"#)).is_ok());
        assert!(layered.is_within(&grants(r#"{"kv.read": ["*b"]}"#)).is_ok());
        assert!(layered.is_within(&grants(r#"{"kv.read": ["a"]}"#)).is_err());
    }

    #[test]
    fn denial_reason_lists_the_granted_patterns() {
        let g = grants(r#"{"net.fetch": ["http://127.0.0.1:8080/allowed/**"]}"#);
        let reason = g.decide(Scope::NetFetch, "http://10.0.0.1/").unwrap_err();
        assert_eq!(reason, "no net.fetch grant matches http://10.0.0.1/ (granted: http://127.0.0.1:8080/allowed/**)");
        let layered = grants(r#"{"kv.read": [["a*"], ["*b"]]}"#);
        let reason = layered.decide(Scope::KvRead, "ax").unwrap_err();
        assert!(reason.contains("allows only: *b"), "{reason}");
    }

    #[test]
    fn glob_and_url_patterns_never_cross_match() {
        let glob = TargetPattern::Glob(Pattern::any());
        let url = TargetPattern::any(Scope::NetFetch);
        assert!(!glob.is_subset_of(&url));
        assert!(!url.is_subset_of(&glob));
        let parsed = Url::parse("http://h/").unwrap();
        assert!(!glob.matches(Target::Url(&parsed)));
        assert!(!url.matches(Target::Text("http://h/")));
    }
}

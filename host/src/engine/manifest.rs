//! Reading an agent's manifest out of its component, without running it.
//!
//! Every agent built with `corral-guest`'s `export_agent!` macro carries a custom section named
//! `corral:manifest` in its core module: UTF-8 JSON
//! `{"name": ..., "version": ..., "description": ..., "scopes": [...]}`. The host reads it at
//! load time to learn the agent's identity (the file name does not matter) and the lease scopes
//! it declares; those scopes are the upper bound of every lease its jobs get.
//!
//! This module only *parses*: it never compiles or instantiates the component, so it is safe on
//! any bytes and cheap enough to run on every file the drop folder sees. Whether the component
//! is valid and imports only what corral provides is decided by the engine; [`component_imports`]
//! lists the imports so it can say which one is wrong.
//!
//! | Field         | Rule                                                        |
//! |---------------|-------------------------------------------------------------|
//! | `name`        | 1–64 characters of `[a-z0-9-_]`                              |
//! | `version`     | `MAJOR.MINOR.PATCH`, optionally `-pre` and/or `+build`      |
//! | `description` | any string (may be empty or absent)                         |
//! | `scopes`      | strings (may be empty or absent); parsed by the lease layer  |
//! | `capabilities`| names for discovery, 1–128 printable characters (optional)  |
//! | `topics`      | topics a consumer subscribes to, same rule (optional)        |

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use wasmparser::{Parser, Payload};

/// The name of the custom section holding the manifest JSON.
pub const MANIFEST_SECTION: &str = "corral:manifest";

/// The longest accepted agent name.
pub const MAX_NAME_LEN: usize = 64;

/// What an agent says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentManifest {
    /// The agent's identity: `[a-z0-9-_]{1,64}`.
    pub name: String,
    /// `MAJOR.MINOR.PATCH[-pre][+build]`; see [`Version`] for ordering.
    pub version: String,
    /// One line for humans; may be empty.
    #[serde(default)]
    pub description: String,
    /// The lease scopes the agent declares it needs, e.g. `kv.write` or `kv.write:counter/*`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// What the agent can do, for discovery (`GET /v1/agents?capability=`), e.g. `greeting`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Topics whose messages it consumes (a consumer agent only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
}

impl AgentManifest {
    /// The parsed version (always valid for a manifest returned by [`read_manifest`]).
    pub fn parsed_version(&self) -> Result<Version, ManifestError> {
        self.version.parse()
    }
}

/// Why a file is not a loadable agent.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not WebAssembly at all.
    #[error("not a WebAssembly file (no \\0asm header)")]
    NotWasm,
    /// A core module: agents must be components.
    #[error(
        "this is a core WebAssembly module, not a component — build the agent with `corral build` \
         (or turn it into a component with wit-component / `wasm-tools component new`)"
    )]
    CoreModule,
    /// The bytes do not parse as a component.
    #[error("malformed component: {0}")]
    Malformed(String),
    /// No `corral:manifest` section anywhere in the component.
    #[error("no corral:manifest section — build the agent with corral-guest's export_agent! macro")]
    Missing,
    /// More than one `corral:manifest` section (e.g. two agents composed into one component).
    #[error("{0} corral:manifest sections — a component must hold exactly one agent")]
    Duplicate(usize),
    /// The section is not the expected JSON.
    #[error("the corral:manifest section is not valid manifest JSON: {0}")]
    Json(String),
    /// The name breaks the naming rule.
    #[error("agent name {0:?} is invalid: use 1-{MAX_NAME_LEN} characters of [a-z0-9-_]")]
    InvalidName(String),
    /// The version is not `MAJOR.MINOR.PATCH`.
    #[error("agent version {0:?} is invalid: use MAJOR.MINOR.PATCH (optionally -pre / +build)")]
    InvalidVersion(String),
    /// A declared scope is empty or contains whitespace / control characters.
    #[error("declared scope {0:?} is invalid: scopes are non-empty and contain no whitespace")]
    InvalidScope(String),
}

/// Whether `bytes` start with the component-model header (as opposed to a core module's).
/// Looks at the first 8 bytes only.
pub fn is_component(bytes: &[u8]) -> bool {
    Parser::is_component(bytes)
}

/// Reads and validates the manifest embedded in a component.
///
/// Walks every payload of the component, including those of nested core modules and
/// components, and expects exactly one `corral:manifest` custom section.
pub fn read_manifest(component_bytes: &[u8]) -> Result<AgentManifest, ManifestError> {
    check_header(component_bytes)?;
    let mut found: Option<&[u8]> = None;
    let mut count = 0usize;
    for payload in Parser::new(0).parse_all(component_bytes) {
        let payload = payload.map_err(|err| ManifestError::Malformed(err.to_string()))?;
        if let Payload::CustomSection(section) = payload
            && section.name() == MANIFEST_SECTION
        {
            count += 1;
            found = Some(section.data());
        }
    }
    match (found, count) {
        (None, _) => Err(ManifestError::Missing),
        (Some(data), 1) => parse_manifest(data),
        (Some(_), n) => Err(ManifestError::Duplicate(n)),
    }
}

/// Parses and validates manifest JSON (the content of the `corral:manifest` section).
pub fn parse_manifest(json: &[u8]) -> Result<AgentManifest, ManifestError> {
    let manifest: AgentManifest = serde_json::from_slice(json).map_err(|err| ManifestError::Json(err.to_string()))?;
    if !is_valid_name(&manifest.name) {
        return Err(ManifestError::InvalidName(manifest.name));
    }
    if manifest.version.parse::<Version>().is_err() {
        return Err(ManifestError::InvalidVersion(manifest.version));
    }
    if let Some(bad) = manifest
        .scopes
        .iter()
        .find(|scope| scope.is_empty() || scope.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(ManifestError::InvalidScope(bad.clone()));
    }
    for name in manifest.capabilities.iter().chain(&manifest.topics) {
        if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ManifestError::InvalidScope(name.clone()));
        }
    }
    Ok(manifest)
}

/// Whether `name` is a valid agent name: 1–64 characters of `[a-z0-9-_]`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The names of the component's own (top-level) imports, e.g. `corral:agent/kv@0.1.0`.
///
/// Imports of nested core modules and components are satisfied inside the component and are
/// not listed. The engine compares this list against the interfaces corral provides.
pub fn component_imports(component_bytes: &[u8]) -> Result<Vec<String>, ManifestError> {
    check_header(component_bytes)?;
    let mut imports = Vec::new();
    // parse_all flattens nested modules and components; track how deep we are so only the
    // outer component's imports count.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(component_bytes) {
        let payload = payload.map_err(|err| ManifestError::Malformed(err.to_string()))?;
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    let import = import.map_err(|err| ManifestError::Malformed(err.to_string()))?;
                    imports.push(import.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok(imports)
}

fn check_header(bytes: &[u8]) -> Result<(), ManifestError> {
    if is_component(bytes) {
        Ok(())
    } else if Parser::is_core_wasm(bytes) {
        Err(ManifestError::CoreModule)
    } else if bytes.starts_with(b"\0asm") {
        Err(ManifestError::Malformed(
            "unknown WebAssembly version or layer (built for another component-model version?)".to_owned(),
        ))
    } else {
        Err(ManifestError::NotWasm)
    }
}

/// A parsed agent version, ordered by semver precedence: numbers compare numerically, a
/// pre-release sorts before its release (`1.0.0-rc.1 < 1.0.0`), pre-release identifiers compare
/// numerically when both are numbers and as text otherwise (numbers first). Build metadata does
/// not affect precedence; it only breaks ties so the order stays total and consistent with `Eq`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    /// Incompatible changes.
    pub major: u64,
    /// Compatible additions.
    pub minor: u64,
    /// Fixes.
    pub patch: u64,
    /// The pre-release part after `-`, empty for a release.
    pub pre: String,
    /// The build metadata after `+`, empty when absent.
    pub build: String,
}

impl FromStr for Version {
    type Err = ManifestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || ManifestError::InvalidVersion(text.to_owned());
        let (rest, build) = match text.split_once('+') {
            Some((rest, build)) => (rest, Some(build)),
            None => (text, None),
        };
        let (core, pre) = match rest.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (rest, None),
        };
        let mut numbers = core.split('.').map(|part| {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) { None } else { part.parse::<u64>().ok() }
        });
        let (Some(Some(major)), Some(Some(minor)), Some(Some(patch)), None) =
            (numbers.next(), numbers.next(), numbers.next(), numbers.next())
        else {
            return Err(invalid());
        };
        let suffix_ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
        if pre.is_some_and(|p| !suffix_ok(p)) || build.is_some_and(|b| !suffix_ok(b)) {
            return Err(invalid());
        }
        Ok(Self {
            major,
            minor,
            patch,
            pre: pre.unwrap_or_default().to_owned(),
            build: build.unwrap_or_default().to_owned(),
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if !self.pre.is_empty() {
            write!(f, "-{}", self.pre)?;
        }
        if !self.build.is_empty() {
            write!(f, "+{}", self.build)?;
        }
        Ok(())
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| compare_pre(&self.pre, &other.pre))
            .then_with(|| self.build.cmp(&other.build))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Semver pre-release precedence; an empty pre-release (a release) is the greatest.
fn compare_pre(a: &str, b: &str) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        (false, false) => {}
    }
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    (Ok(_), Err(_)) => Ordering::Less,
                    (Err(_), Ok(_)) => Ordering::Greater,
                    (Err(_), Err(_)) => x.cmp(y),
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

/// The key agents' versions are sorted and looked up by: the parsed [`Version`], or `None` for
/// a string that is not one (sorts first; cannot happen for a manifest from [`read_manifest`]).
pub type VersionKey = Option<Version>;

/// The [`VersionKey`] of a version string. `versions.sort_by_key(|v| version_key(v))` puts the
/// newest last; a `BTreeMap<VersionKey, _>`'s last entry is the newest version.
pub fn version_key(version: &str) -> VersionKey {
    version.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn manifest_json(name: &str, version: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "name": name, "version": version, "description": "d", "scopes": ["log"]
        }))
        .unwrap()
    }

    #[test]
    fn valid_manifest_json_parses() {
        let m = parse_manifest(&manifest_json("echo", "0.1.0")).unwrap();
        assert_eq!(m.name, "echo");
        assert_eq!(m.scopes, vec!["log".to_owned()]);
    }

    #[test]
    fn description_and_scopes_may_be_absent() {
        let m = parse_manifest(br#"{"name":"a","version":"1.0.0"}"#).unwrap();
        assert!(m.description.is_empty() && m.scopes.is_empty());
    }

    #[test]
    fn bad_names_versions_and_scopes_are_rejected() {
        assert!(matches!(parse_manifest(&manifest_json("Echo", "0.1.0")), Err(ManifestError::InvalidName(_))));
        assert!(matches!(parse_manifest(&manifest_json("", "0.1.0")), Err(ManifestError::InvalidName(_))));
        assert!(matches!(parse_manifest(&manifest_json(&"a".repeat(65), "0.1.0")), Err(ManifestError::InvalidName(_))));
        assert!(matches!(parse_manifest(&manifest_json("a", "1.0")), Err(ManifestError::InvalidVersion(_))));
        assert!(matches!(
            parse_manifest(br#"{"name":"a","version":"1.0.0","scopes":["kv read"]}"#),
            Err(ManifestError::InvalidScope(_))
        ));
        assert!(matches!(parse_manifest(b"{"), Err(ManifestError::Json(_))));
    }

    #[test]
    fn core_modules_and_garbage_are_told_apart_from_components() {
        let core = b"\0asm\x01\0\0\0";
        let component = b"\0asm\x0d\0\x01\0";
        assert!(!is_component(core));
        assert!(is_component(component));
        assert!(matches!(read_manifest(core), Err(ManifestError::CoreModule)));
        assert!(matches!(read_manifest(b"hello"), Err(ManifestError::NotWasm)));
        assert!(matches!(read_manifest(component), Err(ManifestError::Missing)));
    }

    #[test]
    fn versions_sort_by_semver_precedence() {
        let mut versions = vec!["1.10.0", "1.2.0", "1.2.0-rc.10", "1.2.0-rc.2", "1.2.0-alpha", "0.9.9", "junk"];
        versions.sort_by_key(|v| version_key(v));
        assert_eq!(versions, vec!["junk", "0.9.9", "1.2.0-alpha", "1.2.0-rc.2", "1.2.0-rc.10", "1.2.0", "1.10.0"]);
    }

    #[test]
    fn version_round_trips_through_display() {
        for text in ["0.1.0", "1.2.3-rc.1", "1.2.3+build.7", "1.2.3-x+y"] {
            assert_eq!(text.parse::<Version>().unwrap().to_string(), text);
        }
        for bad in ["1.2", "1.2.3.4", "01.x.3", "1.2.3-", "1.2.3+", "a.b.c", "1..3"] {
            assert!(bad.parse::<Version>().is_err(), "{bad}");
        }
    }
}

//! The agents this host can run, mirrored from the agents folder.
//!
//! An agent's identity comes from the manifest embedded in its component (name, version,
//! declared scopes), never from the file name. `name@version` resolves exactly; a bare
//! `name` resolves to the newest version. A file is fully validated — a component, a
//! readable manifest, parseable scopes, only `corral:agent` imports, the handler export,
//! compiled and pre-instantiated — *before* it is swapped in, so a bad file never replaces
//! a good one. Jobs hold an `Arc<LoadedAgent>`, so a job keeps running on the version it
//! started with even after that version is replaced or removed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Linker;

use super::EngineError;
use super::cache::CodeCache;
use super::manifest::{self, AgentManifest};
use crate::bindings::AgentPre;
use crate::bindings::consumer::exports::corral::agent::consumer::GuestIndices as ConsumerIndices;
use crate::capabilities::JobState;
use crate::lease::Grants;
use crate::store::{AgentRecord, Store};

/// The interfaces corral provides to agents. Anything else an agent imports is refused.
pub const PROVIDED_INTERFACES: &[&str] = &[
    "corral:agent/types@0.1.0",
    "corral:agent/log@0.1.0",
    "corral:agent/kv@0.1.0",
    "corral:agent/http@0.1.0",
    "corral:agent/jobs@0.1.0",
    "corral:agent/events@0.1.0",
    "corral:agent/messaging@0.1.0",
];
const HANDLER_EXPORT: &str = "corral:agent/handler@0.1.0";
const CONSUMER_EXPORT: &str = "corral:agent/consumer@0.1.0";

/// One validated, compiled, ready-to-instantiate agent version.
pub struct LoadedAgent {
    pub manifest: AgentManifest,
    /// The scopes the agent declared it needs, as grants (the first term of every lease).
    pub declared: Grants,
    pub sha256: String,
    pub path: PathBuf,
    pub pre: AgentPre<JobState>,
    /// Set when the agent consumes routed messages (exports `consumer`): where its
    /// `on-message` is in an instance made from `pre`.
    pub consumer: Option<ConsumerIndices>,
    /// Whether its compiled code came from the on-disk cache.
    pub from_cache: bool,
}

impl std::fmt::Debug for LoadedAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedAgent")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl LoadedAgent {
    /// `name@version`.
    pub fn reference(&self) -> String {
        format!("{}@{}", self.manifest.name, self.manifest.version)
    }
}

/// Why an agent reference did not resolve.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("unknown agent '{0}' — see GET /v1/agents for the agents this host has loaded")]
    UnknownAgent(String),
    #[error("agent '{name}' has no version {version} (loaded: {loaded})")]
    UnknownVersion { name: String, version: String, loaded: String },
    #[error("invalid agent reference '{0}': expected NAME or NAME@VERSION")]
    Invalid(String),
}

/// A summary of one agent for listings.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AgentSummary {
    pub name: String,
    pub description: String,
    /// The version a bare name resolves to.
    pub latest: String,
    /// Whether (the latest version) consumes routed messages.
    pub consumer: bool,
    /// For discovery (`?capability=`), from the manifest.
    pub capabilities: Vec<String>,
    /// Topics it subscribes to.
    pub topics: Vec<String>,
    pub versions: Vec<AgentVersionSummary>,
}

/// One version of an agent.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AgentVersionSummary {
    pub version: String,
    pub sha256: String,
    pub scopes: Vec<String>,
    pub file: String,
}

/// A file in the agents folder that could not be loaded.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct LoadFailure {
    pub file: String,
    pub error: String,
}

impl LoadFailure {
    /// Keeps only the file name: the path (and the folder it is in) is taken out of both
    /// fields, so a non-operator learns nothing about the host's filesystem.
    pub fn hide_paths(&mut self) {
        let path = std::path::Path::new(&self.file);
        let name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let mut error = self.error.replace(&self.file, &name);
        if let Some(dir) = path.parent().map(|d| d.display().to_string()).filter(|d| !d.is_empty()) {
            error = error.replace(&dir, "<agents>");
        }
        self.error = error;
        self.file = name;
    }
}

type Versions = BTreeMap<manifest::VersionKey, Arc<LoadedAgent>>;

#[derive(Default)]
struct Inner {
    agents: HashMap<String, Versions>,
    /// Which (name, version) each file currently provides.
    files: HashMap<PathBuf, (String, String)>,
    failures: BTreeMap<PathBuf, String>,
}

/// The host's agents. Cheap to share (`Arc` it).
pub struct Registry {
    engine: Engine,
    linker: Linker<JobState>,
    cache: CodeCache,
    /// Where every loaded version is recorded (the `agents` table), for audit.
    store: Option<Store>,
    inner: RwLock<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    pub fn new(engine: Engine, linker: Linker<JobState>, cache: CodeCache, store: Option<Store>) -> Self {
        Self { engine, linker, cache, store, inner: RwLock::new(Inner::default()) }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Validates and compiles `path` without touching the registry.
    pub fn prepare(&self, path: &Path) -> Result<LoadedAgent, EngineError> {
        let shown = path.display().to_string();
        let invalid = |reason: String| EngineError::Invalid { path: shown.clone(), reason };
        let bytes = std::fs::read(path).map_err(|source| EngineError::Read { path: shown.clone(), source })?;
        if !manifest::is_component(&bytes) {
            return Err(invalid(
                "not a WebAssembly component (a core module or another file) — build agents with `corral build`".into(),
            ));
        }
        let manifest = manifest::read_manifest(&bytes).map_err(|e| invalid(e.to_string()))?;
        let declared = Grants::from_declared(&manifest.scopes)
            .map_err(|e| invalid(format!("agent '{}' declares invalid scopes: {e}", manifest.name)))?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let (component, from_cache) = self
            .cache
            .load_or_compile(&self.engine, &sha256, &bytes)
            .map_err(|e| invalid(format!("does not compile: {e:#}")))?;
        let ty = component.component_type();
        for (name, _) in ty.imports(&self.engine) {
            if !PROVIDED_INTERFACES.contains(&name) {
                return Err(invalid(format!(
                    "imports '{name}', which corral does not provide (agents get no ambient WASI: \
                     build for wasm32-unknown-unknown with `corral build`; provided: {})",
                    PROVIDED_INTERFACES.join(", ")
                )));
            }
        }
        let exports_handler = ty.exports(&self.engine).any(|(name, _)| name == HANDLER_EXPORT);
        if !exports_handler {
            return Err(invalid(format!(
                "does not export '{HANDLER_EXPORT}' — use corral-guest's export_agent! macro"
            )));
        }
        let instance_pre =
            self.linker.instantiate_pre(&component).map_err(|e| invalid(format!("cannot be linked: {e:#}")))?;
        let consumer = match ty.exports(&self.engine).any(|(name, _)| name == CONSUMER_EXPORT) {
            true => Some(
                ConsumerIndices::new(&instance_pre)
                    .map_err(|e| invalid(format!("has the wrong on-message signature: {e:#}")))?,
            ),
            false if !manifest.topics.is_empty() => {
                return Err(invalid(format!(
                    "subscribes to topics but does not export '{CONSUMER_EXPORT}' — use corral-guest's consumer support"
                )));
            }
            false => None,
        };
        let pre =
            AgentPre::new(instance_pre).map_err(|e| invalid(format!("has the wrong handler signature: {e:#}")))?;
        Ok(LoadedAgent { manifest, declared, sha256, path: path.to_path_buf(), pre, consumer, from_cache })
    }

    /// Loads `path` and swaps it in (and logs the outcome). On error the previous good
    /// version stays and the failure is remembered for listings.
    pub fn load_file(&self, path: &Path) -> Result<Arc<LoadedAgent>, EngineError> {
        match self.prepare(path) {
            Ok(agent) => {
                let agent = self.insert(agent);
                tracing::info!(agent = %agent.reference(), file = %path.display(), cached = agent.from_cache, "agent loaded");
                Ok(agent)
            }
            Err(e) => {
                tracing::error!(error = %e, "agent file rejected; any previous version stays");
                if let Ok(mut inner) = self.inner.write() {
                    inner.failures.insert(path.to_path_buf(), e.to_string());
                }
                Err(e)
            }
        }
    }

    fn insert(&self, agent: LoadedAgent) -> Arc<LoadedAgent> {
        let agent = Arc::new(agent);
        if let Some(store) = &self.store {
            // Queued now, committed with the next batch; a failure only loses history.
            drop(store.upsert_agent(AgentRecord {
                name: agent.manifest.name.clone(),
                version: agent.manifest.version.clone(),
                sha256: agent.sha256.clone(),
                description: agent.manifest.description.clone(),
                scopes: serde_json::json!(agent.manifest.scopes),
                path: agent.path.display().to_string(),
                loaded_at: crate::now_ms(),
            }));
        }
        let Ok(mut inner) = self.inner.write() else { return agent };
        let name = agent.manifest.name.clone();
        let version = agent.manifest.version.clone();
        // The file now provides this version only: forget what it provided before.
        if let Some(previous) = inner.files.remove(&agent.path)
            && previous != (name.clone(), version.clone())
        {
            remove_version(&mut inner, &previous);
        }
        inner.failures.remove(&agent.path);
        // Another file that provided the same name@version no longer does.
        inner.files.retain(|_, provided| *provided != (name.clone(), version.clone()));
        inner.files.insert(agent.path.clone(), (name.clone(), version.clone()));
        inner.agents.entry(name).or_default().insert(manifest::version_key(&version), Arc::clone(&agent));
        agent
    }

    /// The file is gone: its version is no longer offered. Running jobs are unaffected.
    pub fn remove_file(&self, path: &Path) {
        let Ok(mut inner) = self.inner.write() else { return };
        inner.failures.remove(path);
        if let Some(provided) = inner.files.remove(path) {
            remove_version(&mut inner, &provided);
        }
    }

    /// Loads every `*.wasm` in `dir`; returns the failures (also kept for listings).
    pub fn load_dir(&self, dir: &Path) -> Vec<EngineError> {
        wasm_files(dir).iter().filter_map(|path| self.load_file(path).err()).collect()
    }

    /// Resolves `name` (newest version) or `name@version`.
    pub fn resolve(&self, reference: &str) -> Result<Arc<LoadedAgent>, ResolveError> {
        let (name, version) = match reference.split_once('@') {
            Some((n, v)) if !n.is_empty() && !v.is_empty() => (n, Some(v)),
            Some(_) => return Err(ResolveError::Invalid(reference.to_string())),
            None if !reference.is_empty() => (reference, None),
            None => return Err(ResolveError::Invalid(reference.to_string())),
        };
        let inner = self.inner.read().map_err(|_| ResolveError::UnknownAgent(name.to_string()))?;
        let versions = inner.agents.get(name).ok_or_else(|| ResolveError::UnknownAgent(name.to_string()))?;
        let found = match version {
            None => versions.values().next_back(),
            Some(v) => versions.values().find(|a| a.manifest.version == v),
        };
        found.cloned().ok_or_else(|| ResolveError::UnknownVersion {
            name: name.to_string(),
            version: version.unwrap_or_default().to_string(),
            loaded: versions.values().map(|a| a.manifest.version.as_str()).collect::<Vec<_>>().join(", "),
        })
    }

    /// The consumer agents whose newest version subscribes to `topic`, by name.
    pub fn subscribers(&self, topic: &str) -> Vec<String> {
        let Ok(inner) = self.inner.read() else { return Vec::new() };
        let mut names: Vec<String> = inner
            .agents
            .iter()
            .filter_map(|(name, versions)| {
                let latest = versions.values().next_back()?;
                (latest.consumer.is_some() && latest.manifest.topics.iter().any(|t| t == topic)).then(|| name.clone())
            })
            .collect();
        names.sort();
        names
    }

    /// Every agent with its versions, sorted by name.
    pub fn list(&self) -> (Vec<AgentSummary>, Vec<LoadFailure>) {
        let Ok(inner) = self.inner.read() else { return (Vec::new(), Vec::new()) };
        let mut agents: Vec<AgentSummary> = inner
            .agents
            .iter()
            .filter_map(|(name, versions)| {
                let latest = versions.values().next_back()?;
                Some(AgentSummary {
                    name: name.clone(),
                    description: latest.manifest.description.clone(),
                    latest: latest.manifest.version.clone(),
                    consumer: latest.consumer.is_some(),
                    capabilities: latest.manifest.capabilities.clone(),
                    topics: latest.manifest.topics.clone(),
                    versions: versions
                        .values()
                        .map(|a| AgentVersionSummary {
                            version: a.manifest.version.clone(),
                            sha256: a.sha256.clone(),
                            scopes: a.manifest.scopes.clone(),
                            file: a.path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
                        })
                        .collect(),
                })
            })
            .collect();
        agents.sort_by(|a, b| a.name.cmp(&b.name));
        let failures = inner
            .failures
            .iter()
            .map(|(path, error)| LoadFailure { file: path.display().to_string(), error: error.clone() })
            .collect();
        (agents, failures)
    }
}

fn remove_version(inner: &mut Inner, (name, version): &(String, String)) {
    if let Some(versions) = inner.agents.get_mut(name) {
        versions.remove(&manifest::version_key(version));
        if versions.is_empty() {
            inner.agents.remove(name);
        }
    }
}

/// The `*.wasm` files directly in `dir`, sorted (hidden temp files are skipped).
pub fn wasm_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> =
        entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_agent_file(p)).collect();
    files.sort();
    files
}

/// Whether a path looks like an agent component: `*.wasm`, not hidden.
pub fn is_agent_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "wasm")
        && path.file_name().is_some_and(|n| !n.to_string_lossy().starts_with('.'))
}

//! Precompiled code on disk, so a restart does not recompile every agent.
//!
//! Entries are keyed by `sha256(component bytes)` and the engine's compatibility hash (which
//! changes with the wasmtime version and every codegen setting), so a stale or foreign
//! entry is never loaded. Loading precompiled code skips validation, so the cache is
//! *trusted input*: it lives in the host's own data dir and only files this host wrote
//! are loaded. A corrupt or unreadable entry is discarded and recompiled.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// The on-disk compiled-code cache of one engine.
#[derive(Debug, Clone)]
pub struct CodeCache {
    dir: PathBuf,
    engine_key: String,
}

impl CodeCache {
    /// A cache in `dir` (created if missing) for code compiled by `engine`.
    pub fn new(engine: &Engine, dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self { dir: dir.to_path_buf(), engine_key: format!("{:016x}", hasher.finish()) })
    }

    fn entry(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// The component for `bytes` (whose hash is `sha256`): from the cache when present,
    /// else compiled and written to the cache. Returns whether the cache was hit.
    pub fn load_or_compile(&self, engine: &Engine, sha256: &str, bytes: &[u8]) -> wasmtime::Result<(Component, bool)> {
        let entry = self.entry(sha256);
        if entry.is_file() {
            match deserialize_trusted(engine, &entry) {
                Ok(component) => return Ok((component, true)),
                Err(e) => {
                    tracing::warn!(path = %entry.display(), error = %e, "discarding unreadable compiled-code cache entry");
                    let _ = std::fs::remove_file(&entry);
                }
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Err(e) = self.store(&entry, &component) {
            tracing::warn!(path = %entry.display(), error = %e, "cannot write compiled-code cache entry; continuing without it");
        }
        Ok((component, false))
    }

    fn store(&self, entry: &Path, component: &Component) -> wasmtime::Result<()> {
        let code = component.serialize()?;
        let tmp = tempfile_in(&self.dir)?;
        std::fs::write(&tmp, code)?;
        std::fs::rename(&tmp, entry)?;
        Ok(())
    }
}

fn tempfile_in(dir: &Path) -> std::io::Result<PathBuf> {
    let name = format!(".tmp-{}-{}", std::process::id(), uuid::Uuid::now_v7());
    Ok(dir.join(name))
}

/// Loads precompiled code written by [`CodeCache::store`].
#[allow(unsafe_code)]
fn deserialize_trusted(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: `deserialize_file` trusts its input to be code wasmtime produced. The only
    // files read here are in the host's own data dir, named by the sha256 of the source
    // component and this engine's compatibility hash, and written by `CodeCache::store`
    // through an atomic rename — never a file a user dropped into `agents/`. wasmtime
    // also checks the header and engine compatibility before using it.
    unsafe { Component::deserialize_file(engine, path) }
}

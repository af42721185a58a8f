//! `corral build`: compile agent crates and turn them into components the host will load.
//!
//! Agents are compiled for `wasm32-unknown-unknown`, not a WASI target: such a module imports
//! nothing but the `corral:agent/*` interfaces it actually calls, so an agent has no ambient
//! authority to begin with (a `wasm32-wasip2` build imports a dozen WASI interfaces through
//! `std` even when it does no I/O). Each core module is then wrapped into a component with
//! `wit-component`, using the WIT world `wit-bindgen` embedded in it, and its manifest is read
//! back to check it before the file is written.
//!
//! Files are written atomically (a temporary file in the output folder, then a rename), so the
//! drop-folder watcher never sees half a component. Temporary files start with `.` and do not
//! end in `.wasm`.

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::engine::manifest::{AgentManifest, ManifestError, read_manifest};

/// The target agents are compiled for.
pub const AGENT_TARGET: &str = "wasm32-unknown-unknown";

/// One agent written by [`build_agents`].
#[derive(Debug, Clone)]
pub struct BuiltAgent {
    /// The crate's library target name (`-` replaced by `_`), as cargo reports it.
    pub crate_name: String,
    /// The manifest embedded in the component (its `name` is the agent's identity).
    pub manifest: AgentManifest,
    /// Where the component was written: `<out_dir>/<manifest.name>.wasm`.
    pub path: PathBuf,
    /// The component's size in bytes.
    pub size: u64,
}

/// Why `corral build` failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// cargo could not be started.
    #[error("could not run {cargo}: {source} — is a Rust toolchain installed (https://rustup.rs)?")]
    CargoSpawn {
        /// The program that was run.
        cargo: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The wasm target's standard library is not installed.
    #[error("the {AGENT_TARGET} target is not installed — run `rustup target add {AGENT_TARGET}`")]
    TargetMissing,
    /// cargo ran and failed; its diagnostics went to stderr.
    #[error("cargo build failed ({status}) — see the compiler output above")]
    CargoFailed {
        /// cargo's exit status.
        status: String,
    },
    /// cargo's output could not be read.
    #[error("could not read cargo's output: {0}")]
    CargoOutput(std::io::Error),
    /// The workspace built, but no `cdylib` came out of it.
    #[error("cargo built no agent from {manifest} — an agent crate needs `[lib] crate-type = [\"cdylib\"]`")]
    NoAgents {
        /// The manifest that was built.
        manifest: PathBuf,
    },
    /// A file could not be read.
    #[error("could not read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("could not write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// wit-component refused the core module.
    #[error("could not turn the module into a component: {0}")]
    Componentize(String),
    /// One agent crate failed to componentize or has a bad manifest.
    #[error("agent crate '{crate_name}': {source}")]
    Agent {
        /// The crate's library target name.
        crate_name: String,
        /// What went wrong.
        source: Box<BuildError>,
    },
    /// The component's manifest is missing or invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// Builds every `cdylib` crate of the cargo workspace or package at `manifest_path` for
/// `wasm32-unknown-unknown`, turns each into a component and writes it to
/// `<out_dir>/<agent name>.wasm` (creating `out_dir` if needed).
///
/// cargo's progress and diagnostics go to this process's stderr. Runs `$CARGO` if set (so it
/// works under `cargo run`), else `cargo` from `PATH`.
/// Bytes of heap reserved in an agent's initial memory (`wasm-ld --initial-heap`).
pub const INITIAL_HEAP: u32 = 1 << 20;

pub fn build_agents(manifest_path: &Path, out_dir: &Path, release: bool) -> Result<Vec<BuiltAgent>, BuildError> {
    if target_missing(manifest_path) == Some(true) {
        return Err(BuildError::TargetMissing);
    }

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = Command::new(&cargo);
    command
        .arg("build")
        .arg("--manifest-path")
        .arg(manifest_path)
        .arg("--target")
        .arg(AGENT_TARGET)
        // Reserve a heap in the initial memory, which the SDK's allocator uses before it grows
        // memory (see corral-guest's allocator): small jobs then never call memory.grow.
        .arg("--config")
        .arg(format!("target.{AGENT_TARGET}.rustflags=[\"-C\", \"link-arg=--initial-heap={INITIAL_HEAP}\"]"))
        .arg("--message-format=json-render-diagnostics");
    if release {
        command.arg("--release");
    }
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let spawn_error = |source| BuildError::CargoSpawn { cargo: cargo.to_string_lossy().into_owned(), source };
    let mut child = command.spawn().map_err(spawn_error)?;

    let mut artifacts = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.map_err(BuildError::CargoOutput)?;
            artifacts.extend(cdylib_wasm_artifacts(&line));
        }
    }
    let status = child.wait().map_err(BuildError::CargoOutput)?;
    if !status.success() {
        return Err(BuildError::CargoFailed { status: status.to_string() });
    }
    if artifacts.is_empty() {
        return Err(BuildError::NoAgents { manifest: manifest_path.to_path_buf() });
    }

    fs::create_dir_all(out_dir).map_err(|source| BuildError::Write { path: out_dir.to_path_buf(), source })?;
    let mut built = Vec::with_capacity(artifacts.len());
    for (crate_name, wasm) in artifacts {
        let in_agent =
            |source: BuildError| BuildError::Agent { crate_name: crate_name.clone(), source: Box::new(source) };
        let module = fs::read(&wasm).map_err(|source| BuildError::Read { path: wasm.clone(), source })?;
        let component = componentize(&module).map_err(in_agent)?;
        let manifest = read_manifest(&component).map_err(|err| in_agent(err.into()))?;
        let path = out_dir.join(format!("{}.wasm", manifest.name));
        write_atomically(&path, &component)?;
        built.push(BuiltAgent { crate_name, manifest, size: component.len() as u64, path });
    }
    Ok(built)
}

/// Turns a core module built with `corral-guest` (which embeds its WIT world) into a component.
pub fn componentize(core_module: &[u8]) -> Result<Vec<u8>, BuildError> {
    // wit-component reports errors as anyhow chains; keep the whole chain, as text.
    wit_component::ComponentEncoder::default()
        .validate(true)
        .module(core_module)
        .and_then(|encoder| encoder.encode())
        .map_err(|err| BuildError::Componentize(format!("{err:#}")))
}

/// The `(crate name, .wasm path)` pairs of a cargo JSON message, if it reports a built `cdylib`.
fn cdylib_wasm_artifacts(line: &str) -> Vec<(String, PathBuf)> {
    let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
        return Vec::new();
    };
    if message.get("reason").and_then(|r| r.as_str()) != Some("compiler-artifact") {
        return Vec::new();
    }
    let is_cdylib = message
        .pointer("/target/kind")
        .and_then(|kind| kind.as_array())
        .is_some_and(|kinds| kinds.iter().any(|kind| kind == "cdylib"));
    let Some(name) = message.pointer("/target/name").and_then(|name| name.as_str()).filter(|_| is_cdylib) else {
        return Vec::new();
    };
    message
        .get("filenames")
        .and_then(|files| files.as_array())
        .into_iter()
        .flatten()
        .filter_map(|file| file.as_str())
        .filter(|file| file.ends_with(".wasm"))
        .map(|file| (name.replace('-', "_"), PathBuf::from(file)))
        .collect()
}

/// Whether the toolchain cargo will use for `manifest_path` lacks the wasm target's standard
/// library: `Some(true)` missing, `Some(false)` present, `None` unknown.
fn target_missing(manifest_path: &Path) -> Option<bool> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    // Run from the manifest's folder so a rust-toolchain.toml there picks the same toolchain.
    let dir = manifest_path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let output = Command::new(rustc)
        .args(["--print", "sysroot"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let sysroot = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    Some(!sysroot.join("lib").join("rustlib").join(AGENT_TARGET).join("lib").is_dir())
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let write_error = |source| BuildError::Write { path: path.to_path_buf(), source };
    let result = (|| {
        let mut file = fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(write_error)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn only_cdylib_wasm_artifacts_are_collected() {
        let cdylib = r#"{"reason":"compiler-artifact","target":{"kind":["cdylib"],"name":"my-agent"},
            "filenames":["/t/wasm32-unknown-unknown/release/my_agent.wasm"]}"#
            .replace('\n', "");
        let lib = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"serde"},"filenames":["/t/libserde.rlib"]}"#;
        assert_eq!(
            cdylib_wasm_artifacts(&cdylib),
            vec![("my_agent".to_owned(), PathBuf::from("/t/wasm32-unknown-unknown/release/my_agent.wasm"))]
        );
        assert!(cdylib_wasm_artifacts(lib).is_empty());
        assert!(cdylib_wasm_artifacts("not json").is_empty());
        assert!(cdylib_wasm_artifacts(r#"{"reason":"build-finished","success":true}"#).is_empty());
    }

    #[test]
    fn a_module_importing_outside_the_world_is_refused_with_a_message() {
        // (module (import "env" "f" (func))): what a stray extern or a WASI call looks like.
        let module = b"\0asm\x01\0\0\0\x01\x04\x01\x60\0\0\x02\x09\x01\x03env\x01f\0\0";
        let err = componentize(module).unwrap_err();
        assert!(matches!(&err, BuildError::Componentize(m) if m.contains("env")), "{err}");
        assert!(componentize(b"\0asm\x01\0\0\0\xff").is_err());
    }

    #[test]
    fn atomic_write_leaves_only_the_final_file() {
        let dir = std::env::temp_dir().join(format!("corral-build-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.wasm");
        write_atomically(&path, b"abc").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"abc");
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.wasm")]);
        fs::remove_dir_all(&dir).unwrap();
    }
}

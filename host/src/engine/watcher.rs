//! Watches the agents folder so a dropped-in `.wasm` becomes invocable without a restart.
//!
//! Events are debounced (a copy arrives as several writes) and then each changed path is
//! re-validated through [`Registry::load_file`]: a good file is swapped in, a bad one is
//! reported and the last good version stays; a deleted file stops being offered. Uses the
//! `notify` crate (inotify on Linux, with fallbacks elsewhere) rather than polling.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};

use super::registry::{Registry, is_agent_file};

/// Keeps the watch alive; dropping it stops watching.
pub struct FolderWatch {
    _debouncer: Debouncer<notify::RecommendedWatcher>,
}

impl std::fmt::Debug for FolderWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FolderWatch").finish_non_exhaustive()
    }
}

/// Starts watching `dir` (not recursive) and applying changes to `registry`.
pub fn watch(dir: &Path, registry: Arc<Registry>) -> Result<FolderWatch, notify::Error> {
    let mut debouncer = new_debouncer(Duration::from_millis(150), move |result: DebounceEventResult| {
        let events = match result {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "agents folder watch error");
                return;
            }
        };
        for event in events {
            let path = event.path;
            if !is_agent_file(&path) {
                continue;
            }
            if path.is_file() {
                // Logs its own outcome; a rejected file leaves the last good version in place.
                let _ = registry.load_file(&path);
            } else {
                registry.remove_file(&path);
                tracing::info!(file = %path.display(), "agent file removed");
            }
        }
    })?;
    debouncer.watcher().watch(dir, RecursiveMode::NonRecursive)?;
    Ok(FolderWatch { _debouncer: debouncer })
}

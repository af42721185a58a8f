//! Scopes `kv.read` and `kv.write`; target `<namespace>/<key>`.
//!
//! Durable key-value state in the host's SQLite database, shared between jobs and agents
//! and partitioned only by the lease: an agent granted `kv.write: ["counter/*"]` can write
//! `counter/hits` and nothing else. Writes return only after they are committed.
//! Namespaces may not contain `/` (so the target splits unambiguously); keys may.

use wasmtime::component::{HasSelf, Linker};

use super::JobState;
use crate::bindings::HostError;
use crate::bindings::corral::agent::kv as wit;
use crate::lease::Scope;

/// Largest key and value accepted.
pub const MAX_KEY: usize = 512;
pub const MAX_VALUE: usize = 1 << 20;

pub fn add_to_linker(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    wit::add_to_linker::<JobState, HasSelf<JobState>>(linker, |s| s)
}

fn target(namespace: &str, key: &str) -> Result<String, HostError> {
    if namespace.is_empty() || namespace.contains('/') || namespace.len() > MAX_KEY {
        let shown = super::clip(namespace, 64);
        return Err(HostError::Invalid(format!(
            "invalid kv namespace '{shown}': non-empty, no '/', at most {MAX_KEY} bytes"
        )));
    }
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(HostError::Invalid(format!("invalid kv key: non-empty, at most {MAX_KEY} bytes")));
    }
    Ok(format!("{namespace}/{key}"))
}

fn failed(e: impl std::fmt::Display) -> HostError {
    HostError::Failed(e.to_string())
}

impl JobState {
    /// Counts the call, validates the target and checks every scope in `scopes`.
    fn kv_authorize(
        &mut self,
        scopes: &[Scope],
        namespace: &str,
        key: &str,
    ) -> wasmtime::Result<Result<(), HostError>> {
        self.ctx.count_call()?;
        let target = match target(namespace, key) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        for scope in scopes {
            if let Err(denied) = self.ctx.check(*scope, &target)? {
                return Ok(Err(denied));
            }
        }
        Ok(Ok(()))
    }
}

impl wit::Host for JobState {
    async fn get(&mut self, namespace: String, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, HostError>> {
        if let Err(e) = self.kv_authorize(&[Scope::KvRead], &namespace, &key)? {
            return Ok(Err(e));
        }
        Ok(self.ctx.manager.store().kv_get(&namespace, &key).await.map_err(failed))
    }

    async fn set(&mut self, namespace: String, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), HostError>> {
        if let Err(e) = self.kv_authorize(&[Scope::KvWrite], &namespace, &key)? {
            return Ok(Err(e));
        }
        if value.len() > MAX_VALUE {
            return Ok(Err(HostError::Invalid(format!(
                "kv value of {} bytes exceeds the {MAX_VALUE}-byte limit",
                value.len()
            ))));
        }
        self.ctx.before_effect().await?;
        Ok(self.ctx.manager.store().kv_set(&namespace, &key, value).await.map_err(failed))
    }

    async fn delete(&mut self, namespace: String, key: String) -> wasmtime::Result<Result<bool, HostError>> {
        if let Err(e) = self.kv_authorize(&[Scope::KvWrite], &namespace, &key)? {
            return Ok(Err(e));
        }
        self.ctx.before_effect().await?;
        Ok(self.ctx.manager.store().kv_delete(&namespace, &key).await.map_err(failed))
    }

    async fn increment(
        &mut self,
        namespace: String,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, HostError>> {
        if let Err(e) = self.kv_authorize(&[Scope::KvRead, Scope::KvWrite], &namespace, &key)? {
            return Ok(Err(e));
        }
        self.ctx.before_effect().await?;
        Ok(self.ctx.manager.store().kv_increment(&namespace, &key, delta).await.map_err(failed))
    }
}

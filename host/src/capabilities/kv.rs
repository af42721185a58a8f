//! Scopes `kv.read` and `kv.write`; target `<namespace>/<key>`.
//!
//! Durable key-value state in the host's SQLite database, shared between jobs and agents
//! and partitioned only by the lease: an agent granted `kv.write: ["counter/*"]` can write
//! `counter/hits` and nothing else. A job's writes return only after they are committed; a
//! delivery's writes are held and committed with its outcome ([`KvState`]).
//! Namespaces may not contain `/` (so the target splits unambiguously); keys may.
//!
//! Every write is charged to the job's `kv_bytes` budget (target + value; a delete or an
//! increment its target + 8) before it happens, children's writes included: a job that runs
//! out gets a `failed` error naming the budget and nothing is written. What an agent and a
//! principal may keep stored altogether (`[kv_quota]`) is checked by the store in the same op
//! as the write (a `failed` error naming the quota).

use wasmtime::component::{HasSelf, Linker};

use super::JobState;
use crate::bindings::HostError;
use crate::bindings::corral::agent::kv as wit;
use crate::lease::Scope;
use crate::store::{HeldKv, KvOp, KvOwner};

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

/// What a write costs the `kv_bytes` budget: its target and its value.
fn write_size(namespace: &str, key: &str, value: usize) -> u64 {
    (namespace.len() + 1 + key.len() + value) as u64
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

/// Per-run kv state. A job writes straight through; a delivery *holds* its writes (in order)
/// and the message plane commits them with the delivery's outcome, so a redelivered message
/// never applies them twice. Reads see the run's own held writes.
#[derive(Debug)]
pub struct KvState {
    /// Who this run's writes are charged to (see `store::kv` quotas).
    owner: KvOwner,
    held: Option<Vec<KvOp>>,
    held_bytes: usize,
    /// What is left of the lease's `kv_bytes`.
    bytes_left: u64,
    budget: u64,
}

/// Most bytes of kv writes one delivery may hold until its outcome.
pub const MAX_HELD_BYTES: usize = 8 << 20;

impl KvState {
    /// A run with `budget` bytes of kv writes (the lease's `kv_bytes`), charged to `owner`.
    pub fn new(budget: u64, owner: KvOwner) -> KvState {
        KvState { owner, held: None, held_bytes: 0, bytes_left: budget, budget }
    }

    /// What is left of the budget (a child gets at most this).
    pub fn bytes_left(&self) -> u64 {
        self.bytes_left
    }

    /// What this run has written (children's writes included once charged).
    pub fn bytes_used(&self) -> u64 {
        self.budget.saturating_sub(self.bytes_left)
    }

    /// Takes `n` bytes out of the budget, or refuses the write whole.
    pub fn charge(&mut self, n: u64) -> Result<(), HostError> {
        if n > self.bytes_left {
            return Err(HostError::Failed(format!(
                "kv_bytes budget exhausted: this write needs {n} bytes, {} of the job's {} are left (limits.kv_bytes)",
                self.bytes_left, self.budget
            )));
        }
        self.bytes_left -= n;
        Ok(())
    }

    /// Charges what a child used (already within what it was given).
    pub fn charge_child(&mut self, n: u64) {
        self.bytes_left = self.bytes_left.saturating_sub(n);
    }

    /// From now on, writes are held (see the type's docs).
    pub fn hold_writes(&mut self) {
        self.held = Some(Vec::new());
    }

    /// The held writes, in order (none for a job), with who they are charged to.
    pub fn take_held(&mut self) -> HeldKv {
        self.held_bytes = 0;
        HeldKv { owner: Some(self.owner.clone()), ops: self.held.as_mut().map(std::mem::take).unwrap_or_default() }
    }

    fn hold(&mut self, op: KvOp) -> Result<(), HostError> {
        let size = op.size();
        if self.held_bytes.saturating_add(size) > MAX_HELD_BYTES {
            return Err(HostError::Failed(format!(
                "this delivery's kv writes would exceed {MAX_HELD_BYTES} bytes (held until its outcome)"
            )));
        }
        self.held_bytes += size;
        if let Some(held) = &mut self.held {
            held.push(op);
        }
        Ok(())
    }

    /// What the held writes make of `stored` (the committed value): the last set or delete,
    /// then any increments after it.
    fn view(&self, namespace: &str, key: &str, stored: Option<Vec<u8>>) -> Result<Option<Vec<u8>>, HostError> {
        let Some(held) = &self.held else { return Ok(stored) };
        let mine = |ns: &str, k: &str| ns == namespace && k == key;
        let mut value = stored;
        let mut added: Option<i64> = None;
        for op in held {
            match op {
                KvOp::Set { namespace: ns, key: k, value: v } if mine(ns, k) => {
                    value = Some(v.clone());
                    added = None;
                }
                KvOp::Delete { namespace: ns, key: k } if mine(ns, k) => {
                    value = None;
                    added = None;
                }
                KvOp::Increment { namespace: ns, key: k, delta } if mine(ns, k) => {
                    added = Some(added.unwrap_or(0).saturating_add(*delta));
                }
                _ => {}
            }
        }
        let Some(delta) = added else { return Ok(value) };
        let base = integer(namespace, key, value.as_deref())?;
        Ok(Some(base.saturating_add(delta).to_string().into_bytes()))
    }

    fn holding(&self) -> bool {
        self.held.is_some()
    }
}

fn integer(namespace: &str, key: &str, value: Option<&[u8]>) -> Result<i64, HostError> {
    match value {
        None => Ok(0),
        Some(bytes) => std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok()).ok_or_else(|| {
            HostError::Failed(format!("kv value {namespace}/{key} is not a decimal integer — cannot increment it"))
        }),
    }
}

impl JobState {
    /// The value as this run sees it: committed, with its own held writes applied.
    async fn kv_read(&mut self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        let stored = self.ctx.manager.store().kv_get(namespace, key).await.map_err(failed)?;
        self.kv.view(namespace, key, stored)
    }
}

impl wit::Host for JobState {
    async fn get(&mut self, namespace: String, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, HostError>> {
        if let Err(e) = self.kv_authorize(&[Scope::KvRead], &namespace, &key)? {
            return Ok(Err(e));
        }
        Ok(self.kv_read(&namespace, &key).await)
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
        if let Err(e) = self.kv.charge(write_size(&namespace, &key, value.len())) {
            return Ok(Err(e));
        }
        if self.kv.holding() {
            return Ok(self.kv.hold(KvOp::Set { namespace, key, value }));
        }
        self.ctx.before_effect().await?;
        Ok(self.ctx.manager.store().kv_set(&self.kv.owner, &namespace, &key, value).await.map_err(failed))
    }

    async fn delete(&mut self, namespace: String, key: String) -> wasmtime::Result<Result<bool, HostError>> {
        if let Err(e) = self.kv_authorize(&[Scope::KvWrite], &namespace, &key)? {
            return Ok(Err(e));
        }
        if let Err(e) = self.kv.charge(write_size(&namespace, &key, 8)) {
            return Ok(Err(e));
        }
        if self.kv.holding() {
            let existed = match self.kv_read(&namespace, &key).await {
                Ok(v) => v.is_some(),
                Err(e) => return Ok(Err(e)),
            };
            return Ok(self.kv.hold(KvOp::Delete { namespace, key }).map(|()| existed));
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
        if let Err(e) = self.kv.charge(write_size(&namespace, &key, 8)) {
            return Ok(Err(e));
        }
        if self.kv.holding() {
            // The value this delivery sees; applied as an increment at commit, so concurrent
            // deliveries' increments add up.
            let current = match self.kv_read(&namespace, &key).await {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            let new = match integer(&namespace, &key, current.as_deref()).and_then(|n| {
                n.checked_add(delta)
                    .ok_or_else(|| HostError::Failed(format!("kv increment of {namespace}/{key} overflows")))
            }) {
                Ok(n) => n,
                Err(e) => return Ok(Err(e)),
            };
            return Ok(self.kv.hold(KvOp::Increment { namespace, key, delta }).map(|()| new));
        }
        self.ctx.before_effect().await?;
        Ok(self.ctx.manager.store().kv_increment(&self.kv.owner, &namespace, &key, delta).await.map_err(failed))
    }
}

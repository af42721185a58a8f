//! The sandbox: one wasmtime [`Engine`] for the whole host, the agents it has compiled,
//! and the folder they come from.
//!
//! Why one engine: compiled code, the pooling allocator's slots and the epoch counter are
//! all per engine, so every job shares them. Isolation between jobs comes from a fresh
//! `Store` and instance per job, never from separate engines.
//!
//! Limits are enforced here, by the engine, never by trusting the guest:
//! - **deadline / cancellation**: epoch interruption. A ticker thread bumps the epoch every
//!   [`EngineConfig::epoch_tick`]; each job's store yields back to the scheduler at every
//!   tick, so the job's `select!` on its deadline and cancel signal fires even while the
//!   guest spins in a loop.
//! - **memory**: a per-job `ResourceLimiter` ([`crate::capabilities::JobLimiter`]) capping
//!   the job's memories in total (from its lease), under the pooling allocator's per-slot
//!   maximum.
//! - **fuel**: a per-job instruction budget.

pub mod cache;
pub mod manifest;
pub mod registry;
pub mod watcher;

use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Core-instance (and table) slots reserved per component instance.
const CORE_INSTANCES_PER_COMPONENT: u32 = 4;

/// How the engine is sized. Comes from the policy file's `[engine]` table.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Instances (jobs) that may be alive at once; the pooling allocator reserves slots.
    pub max_instances: u32,
    /// Largest linear memory any job may be granted, in bytes.
    pub max_memory_bytes: u64,
    /// Epoch tick: the granularity of deadlines and cancellation, in milliseconds.
    pub epoch_tick_ms: u64,
    /// Use the pooling allocator (fast instantiation). Off = on-demand allocation.
    pub pooling: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { max_instances: 1000, max_memory_bytes: 256 << 20, epoch_tick_ms: 5, pooling: true }
    }
}

impl EngineConfig {
    /// The epoch tick as a duration.
    pub fn epoch_tick(&self) -> Duration {
        Duration::from_millis(self.epoch_tick_ms.max(1))
    }
}

/// Errors building the engine or loading a component.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot configure the wasm engine: {0}")]
    Config(String),
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// Builds the host's one engine.
pub fn new_engine(cfg: &EngineConfig) -> Result<Engine, EngineError> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.consume_fuel(true);
    if cfg.pooling {
        let mut pool = PoolingAllocationConfig::default();
        let n = cfg.max_instances.max(1);
        pool.total_component_instances(n);
        // A component instantiates several core modules (the agent, plus the adapter and
        // shim modules `wit-component` adds: 3 for an agent that imports `corral:agent/http`).
        // Memories, not core instances, bound what is resident; core-instance slots are cheap.
        pool.total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_COMPONENT));
        pool.total_memories(n);
        pool.total_tables(n.saturating_mul(CORE_INSTANCES_PER_COMPONENT));
        pool.total_stacks(n);
        pool.max_memory_size(usize::try_from(cfg.max_memory_bytes).unwrap_or(usize::MAX));
        // Keep the first pages of each slot resident: resetting them with memset is cheaper
        // than madvise + page faults on the next instantiation. With PAGEMAP_SCAN (Linux 6.7+)
        // only the pages a job actually dirtied are reset, so most jobs need no syscall at all.
        pool.linear_memory_keep_resident(1 << 20);
        pool.table_keep_resident(1 << 16);
        pool.pagemap_scan(Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    Engine::new(&config).map_err(|e| EngineError::Config(format!("{e:#}")))
}

/// Starts the thread that advances the epoch. It stops when the engine is dropped.
pub fn start_epoch_ticker(engine: &Engine, tick: Duration) -> std::io::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new().name("corral-epoch".into()).spawn(move || {
        while let Some(engine) = weak.upgrade() {
            engine.increment_epoch();
            drop(engine);
            std::thread::sleep(tick);
        }
    })?;
    Ok(())
}

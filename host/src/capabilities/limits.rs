//! Memory, table and instance caps for one job, enforced by wasmtime through
//! [`wasmtime::ResourceLimiter`]. Exceeding a cap *traps* the guest (a limit, not a
//! denial) and the job fails with `limit_exceeded` naming the limit.

/// A limit the engine enforced; carried inside the trap so the job can say which.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LimitExceeded {
    #[error(
        "memory limit exceeded: the job's memories would total {desired} bytes, its lease allows {limit} (limits.memory_bytes)"
    )]
    Memory { desired: u64, limit: u64 },
    #[error("host-call budget exhausted: the job made more than {0} host calls (limits.max_host_calls)")]
    HostCalls(u64),
    #[error("event budget exhausted: the job emitted more than {0} bytes of logs, progress and chunks")]
    EventBytes(u64),
    #[error("table limit exceeded: {0} elements")]
    Table(usize),
}

impl LimitExceeded {
    /// The lease limit that was hit, as the lease names it (a failed job's `error.limit`).
    pub fn limit(&self) -> &'static str {
        match self {
            LimitExceeded::Memory { .. } => "memory_bytes",
            LimitExceeded::HostCalls(_) => "max_host_calls",
            LimitExceeded::EventBytes(_) => "event_bytes",
            LimitExceeded::Table(_) => "table_elements",
        }
    }
}

/// The per-job resource limiter.
#[derive(Debug)]
pub struct JobLimiter {
    memory_bytes: u64,
    /// Bytes of linear memory across all of the job's memories (a component may have several).
    memory_in_use: u64,
}

const MAX_TABLE_ELEMENTS: usize = 100_000;

impl JobLimiter {
    pub fn new(memory_bytes: u64) -> Self {
        Self { memory_bytes, memory_in_use: 0 }
    }
}

impl wasmtime::ResourceLimiter for JobLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let growth = u64::try_from(desired.saturating_sub(current)).unwrap_or(u64::MAX);
        let total = self.memory_in_use.saturating_add(growth);
        if total > self.memory_bytes {
            return Err(LimitExceeded::Memory { desired: total, limit: self.memory_bytes }.into());
        }
        self.memory_in_use = total;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Err(LimitExceeded::Table(desired).into());
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        16
    }

    fn tables(&self) -> usize {
        16
    }

    fn memories(&self) -> usize {
        4
    }
}

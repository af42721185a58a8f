//! Memory, table and instance caps for one job, enforced by wasmtime through
//! [`wasmtime::ResourceLimiter`]. Exceeding a cap *traps* the guest (a limit, not a
//! denial) and the job fails with `limit_exceeded` naming the limit.

/// A limit the engine enforced; carried inside the trap so the job can say which.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LimitExceeded {
    #[error("memory limit exceeded: the job asked for {desired} bytes, its lease allows {limit} (limits.memory_bytes)")]
    Memory { desired: usize, limit: u64 },
    #[error("host-call budget exhausted: the job made more than {0} host calls (limits.max_host_calls)")]
    HostCalls(u64),
    #[error("table limit exceeded: {0} elements")]
    Table(usize),
}

/// The per-job resource limiter.
#[derive(Debug)]
pub struct JobLimiter {
    memory_bytes: u64,
}

const MAX_TABLE_ELEMENTS: usize = 100_000;

impl JobLimiter {
    pub fn new(memory_bytes: u64) -> Self {
        Self { memory_bytes }
    }
}

impl wasmtime::ResourceLimiter for JobLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if u64::try_from(desired).unwrap_or(u64::MAX) > self.memory_bytes {
            return Err(LimitExceeded::Memory { desired, limit: self.memory_bytes }.into());
        }
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

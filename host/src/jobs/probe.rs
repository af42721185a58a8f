//! One agent call in a fresh sandbox, in process, without HTTP or the store's writer: what the
//! benchmark's instantiate + call figure measures.
//!
//! The sandbox is built exactly as a job's ([`runner::sandbox`]: fresh store, memory cap, fuel,
//! epoch deadline) and the job context carries a held journal, so host calls are authorized and
//! recorded as they would be for a job a client waits for — in memory, never written.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::journal::Journal;
use super::{JobError, JobManager, runner};
use crate::bindings::{Agent, HostError};
use crate::capabilities::JobContext;
use crate::engine::registry::LoadedAgent;
use crate::lease::{Lease, LeaseRequest};
use crate::store::{JobRecord, JobStatus};

/// A resolved agent and the lease a default client job of it would get.
#[derive(Debug)]
pub struct Probe {
    manager: Arc<JobManager>,
    agent: Arc<LoadedAgent>,
    lease: Arc<Lease>,
    job: JobRecord,
}

impl Probe {
    pub fn new(manager: &Arc<JobManager>, agent_ref: &str) -> Result<Probe, JobError> {
        let agent = manager.registry().resolve(agent_ref)?;
        let ceiling = manager.policy().ceiling_for(crate::config::LOCAL_PRINCIPAL, Some(&agent.manifest.name));
        let now = time::OffsetDateTime::now_utc();
        let lease = Lease::effective(&agent.declared, &ceiling, &LeaseRequest::default(), None, now)?;
        let req = super::SubmitRequest {
            agent: agent_ref.to_owned(),
            input: serde_json::Value::Null,
            lease: None,
            idempotency_key: None,
            trace_parent: None,
        };
        let mut job = super::new_record(crate::config::LOCAL_PRINCIPAL, &req, &agent, &lease, None, None, 0)?;
        job.status = JobStatus::Running;
        Ok(Probe { manager: Arc::clone(manager), agent, lease: Arc::new(lease), job })
    }

    fn store(&self) -> wasmtime::Result<wasmtime::Store<crate::capabilities::JobState>> {
        let journal = Journal::held(self.manager.store().clone(), self.job.clone());
        let deadline = Instant::now() + Duration::from_millis(self.lease.limits.deadline_ms.min(60_000));
        let identity = crate::capabilities::RunIdentity {
            id: self.job.id.clone(),
            principal: self.job.principal.clone(),
            depth: self.job.depth,
        };
        let ctx = JobContext::for_run(
            identity,
            self.agent.reference(),
            Arc::clone(&self.lease),
            deadline,
            Arc::clone(&self.manager),
            journal,
        );
        runner::sandbox(&self.manager.engine, ctx, &self.lease)
    }

    /// A fresh store and instance, one call: what every job gets.
    pub async fn call_fresh(&self, input: &str) -> wasmtime::Result<Result<String, HostError>> {
        let mut store = self.store()?;
        let instance: Agent = self.agent.pre.instantiate_async(&mut store).await?;
        instance.corral_agent_handler().call_handle(&mut store, input).await
    }

    /// One store and instance, called `n` times, timing each call: the cost without
    /// instantiation. Jobs never do this (state would leak between them); it is a baseline.
    pub async fn call_reused(&self, input: &str, n: usize) -> wasmtime::Result<Vec<Duration>> {
        let mut store = self.store()?;
        let instance: Agent = self.agent.pre.instantiate_async(&mut store).await?;
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            instance.corral_agent_handler().call_handle(&mut store, input).await?.map_err(wasmtime::Error::msg)?;
            times.push(start.elapsed());
        }
        Ok(times)
    }
}

//! The retention task: finished jobs (with their events, audit rows and followed-stream rows)
//! are deleted `retention.jobs_ms` after they finished, finished messages (with their stage
//! history) `messages.retention_ms` after — and so are federation's received messages (once
//! handled), dead outbox rows and the audit rows of refused ASP requests — and freed pages beyond a reserve are handed back to
//! the file system a bounded number at a time. One task for all of it, so pruning is paced in
//! one place.
//!
//! Why a background task of small rounds: pruning shares the one writer with every client
//! write, so each round is one bounded op (`retention.chunk` jobs looked at) and the task
//! yields between rounds; a backlog (say, retention switched on for an old database) drains
//! over many rounds without a pause anyone notices. See `store::retention` for what is kept.

use std::time::Duration;

use serde::Deserialize;

use crate::store::{Store, StoreError};

/// The policy file's `[retention]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Age after finishing at which a job and everything recorded about it is deleted; also
    /// the replay window of an idempotency key. `0` keeps jobs forever.
    pub jobs_ms: u64,
    /// Pause between pruning passes.
    pub interval_ms: u64,
    /// Jobs looked at per writer op.
    pub chunk: u32,
    /// Free pages (4 KiB each) returned to the file system per pass.
    pub reclaim_pages: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { jobs_ms: 7 * 24 * 3_600_000, interval_ms: 60_000, chunk: 500, reclaim_pages: 2_048 }
    }
}

/// Starts the retention task (it ends when the store closes): finished jobs per `config`, and
/// finished messages `messages_ms` after they finished (`[messages] retention_ms`).
pub fn spawn(store: Store, config: RetentionConfig, messages_ms: u64) {
    if config.jobs_ms == 0 {
        tracing::info!("retention.jobs_ms = 0: finished jobs are kept forever");
    }
    tokio::spawn(async move {
        loop {
            match pass(&store, &config, messages_ms).await {
                Ok(()) => {}
                Err(StoreError::Closed) => return,
                Err(e) => tracing::warn!(error = %e, "pruning failed; retrying at the next pass"),
            }
            tokio::time::sleep(Duration::from_millis(config.interval_ms.max(1))).await;
        }
    });
}

/// One pass: jobs, then messages, past their retention; then free pages beyond the reserve.
async fn pass(store: &Store, config: &RetentionConfig, messages_ms: u64) -> Result<(), StoreError> {
    if config.jobs_ms > 0 {
        prune_jobs(store, config).await?;
    }
    let before = cutoff(messages_ms);
    while store.prune_messages(before, config.chunk.max(1)).await? == config.chunk.max(1) as usize {
        tokio::task::yield_now().await;
    }
    // Federation's received messages, dead outbox rows and refusal audit rows: as messages.
    while store.prune_swarm(before, config.chunk.max(1)).await? > 0 {
        tokio::task::yield_now().await;
    }
    store.reclaim_free_pages(config.reclaim_pages).await?;
    Ok(())
}

/// `age_ms` before now, in ms since the epoch.
fn cutoff(age_ms: u64) -> i64 {
    crate::now_ms().saturating_sub(i64::try_from(age_ms).unwrap_or(i64::MAX))
}

/// Every job that finished more than `jobs_ms` ago and that nothing live refers to.
async fn prune_jobs(store: &Store, config: &RetentionConfig) -> Result<(), StoreError> {
    let before = cutoff(config.jobs_ms);
    let (mut cursor, mut jobs, mut events) = (0, 0, 0);
    loop {
        let round = store.prune_jobs(before, cursor, config.chunk.max(1)).await?;
        (cursor, jobs, events) = (round.cursor, jobs + round.jobs, events + round.events);
        if let Some(m) = crate::metrics::recording() {
            m.jobs_pruned(round.jobs);
        }
        if round.done {
            break;
        }
        tokio::task::yield_now().await;
    }
    if jobs > 0 {
        tracing::info!(jobs, events, "pruned finished jobs past retention");
    }
    Ok(())
}

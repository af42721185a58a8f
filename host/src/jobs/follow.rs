//! Following a job's events: everything after a seq, from the store (the source of truth),
//! then each new event as the store commits it, until the job's terminal `state` event.
//!
//! Every front door that streams a job (SSE on HTTP, ARCP over WebSocket) follows it through
//! this one type, so they share its guarantees: gapless (seqs are assigned in the store's writer
//! and read back in order), resumable from any seq, and bounded (one page of events buffered).
//! A follower that is caught up takes the next events from the records the writer handed over
//! after their commit (`JobCommits::recent_after`, only when they continue its seq exactly);
//! otherwise it reads the store.

use std::collections::VecDeque;
use std::time::Duration;

use super::JobError;
use crate::store::{EventRecord, JobCommits, JobStatus, Store};

/// Events read per store query: with chunks of up to 256 KiB, this bounds a follower's buffer.
const PAGE: u32 = 32;

/// A job's events after a seq, then as they are committed.
#[derive(Debug)]
pub struct EventFollower {
    store: Store,
    job_id: String,
    after: u64,
    pending: VecDeque<EventRecord>,
    commits: JobCommits,
    finished: bool,
}

impl EventFollower {
    /// Follows `job_id` from the event after `after`. Watches the job's commits first, and marks
    /// them seen before each read, so no commit can slip between a read and the wait after it. The caller checks the job exists
    /// and may be seen by whoever asks.
    pub fn new(store: &Store, job_id: &str, after: u64) -> EventFollower {
        EventFollower::watching(store, store.watch_job(job_id), after)
    }

    /// [`Self::new`] with a watch made earlier (e.g. before the job was written).
    pub fn watching(store: &Store, commits: JobCommits, after: u64) -> EventFollower {
        EventFollower {
            job_id: commits.job().to_owned(),
            commits,
            store: store.clone(),
            after,
            pending: VecDeque::new(),
            finished: false,
        }
    }

    /// The seq of the last event returned (or the starting point).
    pub fn last_seq(&self) -> u64 {
        self.after
    }

    /// The next event; `None` after the terminal `state` event. `Err` if the store cannot be
    /// read (the follower is then finished).
    pub async fn next(&mut self) -> Option<Result<EventRecord, JobError>> {
        loop {
            if let Some(record) = self.pending.pop_front() {
                self.after = record.seq;
                if is_terminal_state(&record) {
                    self.finished = true;
                }
                return Some(Ok(record));
            }
            if self.finished {
                return None;
            }
            self.commits.mark_seen();
            // Caught up with what was just committed: the next events are in memory.
            let recent = self.commits.recent_after(self.after);
            if !recent.is_empty() {
                self.pending.extend(recent);
                continue;
            }
            match self.store.events_after(&self.job_id, self.after, PAGE).await {
                Ok(batch) if !batch.is_empty() => {
                    self.pending.extend(batch);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    self.finished = true;
                    return Some(Err(JobError::from(e)));
                }
            }
            self.wait_for_commit().await;
        }
    }

    /// Sleeps until the store commits an event of this job (or a safety re-check is due).
    async fn wait_for_commit(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.commits.next()).await;
    }
}

/// Whether `record` is the `state` event that ends its job.
pub fn is_terminal_state(record: &EventRecord) -> bool {
    record.kind == "state"
        && record
            .data
            .get("status")
            .and_then(|s| s.as_str())
            .and_then(JobStatus::parse)
            .is_some_and(JobStatus::is_terminal)
}

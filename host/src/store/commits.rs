//! Telling readers that a job's events were committed — and handing them the events.
//!
//! After each `COMMIT` the writer names every job that got new events, and whoever watches
//! that job (an SSE stream, an ARCP session, `wait_finished`) wakes — and nobody else: with
//! 64 jobs followed at once, one broadcast of every job id woke all 64 followers for every
//! commit of any of them.
//!
//! For a watched job the writer also hands over the committed event records themselves (the
//! last [`RECENT`] of them, each up to [`RECENT_BYTES`] of data): a follower that is caught up
//! takes the next events from here instead of reading them back from SQLite (a read-pool
//! query per wake-up, 3–4 per job — what made an ARCP stream cost more than an HTTP wait).
//! The store stays the source of truth: a follower that is behind, or finds a gap, reads it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use std::collections::VecDeque;

use tokio::sync::watch;

use super::EventRecord;

/// Committed events kept per watched job.
pub(super) const RECENT: usize = 64;

/// Events with more data than this (serialized) are not kept: their followers read them.
pub(super) const RECENT_BYTES: usize = 16 * 1024;

#[derive(Debug, Default)]
pub(super) struct Commits {
    /// Per followed job: a version counter bumped on each commit of its events, and its
    /// latest committed events.
    jobs: Mutex<HashMap<String, Watched>>,
}

#[derive(Debug)]
struct Watched {
    version: watch::Sender<u64>,
    recent: VecDeque<EventRecord>,
}

impl Commits {
    pub(super) fn new() -> Arc<Commits> {
        Arc::new(Commits::default())
    }

    /// Whether someone follows `job` (the writer keeps its events' records only then).
    pub(super) fn is_watched(&self, job: &str) -> bool {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner).contains_key(job)
    }

    /// Called by the writer after a commit that gave these jobs new events; `events` are the
    /// committed records of watched jobs, in commit order.
    pub(super) fn committed<'a>(&self, jobs: impl IntoIterator<Item = &'a String>, events: Vec<EventRecord>) {
        let mut watched = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        for event in events {
            if let Some(entry) = watched.get_mut(&event.job_id) {
                if entry.recent.len() == RECENT {
                    entry.recent.pop_front();
                }
                entry.recent.push_back(event);
            }
        }
        for job in jobs {
            if let Some(entry) = watched.get(job) {
                entry.version.send_modify(|version| *version = version.wrapping_add(1));
            }
        }
    }

    pub(super) fn watch(self: &Arc<Self>, job: &str) -> JobCommits {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let receiver = match jobs.get(job) {
            Some(entry) => entry.version.subscribe(),
            None => {
                let (version, receiver) = watch::channel(0);
                jobs.insert(job.to_owned(), Watched { version, recent: VecDeque::new() });
                receiver
            }
        };
        JobCommits { receiver, job: job.to_owned(), commits: Arc::clone(self) }
    }
}

/// Commits of one job's events, from when it was made. The job's entry goes when its last
/// watcher does.
#[derive(Debug)]
pub struct JobCommits {
    receiver: watch::Receiver<u64>,
    job: String,
    commits: Arc<Commits>,
}

impl JobCommits {
    /// The job watched.
    pub fn job(&self) -> &str {
        &self.job
    }

    /// Marks every commit so far as seen: call it before reading, then [`Self::next`] waits
    /// only for commits after that read began.
    pub fn mark_seen(&mut self) {
        self.receiver.borrow_and_update();
    }

    /// The committed events right after seq `after`, from memory: those kept that continue
    /// exactly at `after + 1`, without a gap (none: the caller reads the store instead).
    pub fn recent_after(&self, after: u64) -> Vec<EventRecord> {
        let jobs = self.commits.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = jobs.get(&self.job) else { return Vec::new() };
        entry
            .recent
            .iter()
            .skip_while(|e| e.seq <= after)
            .zip(after + 1..)
            .take_while(|(event, expected)| event.seq == *expected)
            .map(|(event, _)| event.clone())
            .collect()
    }

    /// Waits for a commit not yet marked seen (at once if one happened already).
    pub async fn next(&mut self) {
        // The sender lives in the map while this receiver exists, so this cannot fail; if it
        // ever did, returning makes the caller re-read, which is always safe.
        let _ = self.receiver.changed().await;
    }
}

impl Drop for JobCommits {
    fn drop(&mut self) {
        let mut jobs = self.commits.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        // This receiver still counts: the last one out removes the entry.
        if jobs.get(&self.job).is_some_and(|entry| entry.version.receiver_count() <= 1) {
            jobs.remove(&self.job);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watch_wakes_for_its_own_job_only_and_never_misses_a_commit_after_mark_seen() {
        let commits = Commits::new();
        let mut a = commits.watch("a");
        a.mark_seen();
        commits.committed(&["b".to_owned()], Vec::new());
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), a.next()).await;
        assert!(early.is_err(), "another job's commit does not wake it");
        commits.committed(&["a".to_owned()], Vec::new()); // before anyone waits
        tokio::time::timeout(std::time::Duration::from_secs(5), a.next()).await.expect("the commit is not missed");
    }

    #[test]
    fn the_last_watcher_removes_its_jobs_entry() {
        let commits = Commits::new();
        let first = commits.watch("a");
        let second = commits.watch("a");
        drop(first);
        assert!(commits.jobs.lock().unwrap().contains_key("a"));
        drop(second);
        assert!(commits.jobs.lock().unwrap().is_empty());
    }

    fn event(job: &str, seq: u64) -> EventRecord {
        EventRecord { job_id: job.into(), seq, kind: "log".into(), data: serde_json::json!({}), at: 0 }
    }

    #[test]
    fn committed_events_are_handed_over_only_when_they_continue_the_followers_seq() {
        let commits = Commits::new();
        let a = commits.watch("a");
        commits.committed(&["a".to_owned()], vec![event("a", 3), event("a", 4), event("b", 1)]);
        let seqs = |after| a.recent_after(after).iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(2), [3, 4], "caught up: the next events from memory");
        assert_eq!(seqs(3), [4]);
        assert!(seqs(1).is_empty(), "behind (seq 2 is not kept): read the store");
        assert!(seqs(4).is_empty(), "nothing newer");
        // Only the last RECENT are kept.
        let many: Vec<EventRecord> = (5..5 + RECENT as u64 + 10).map(|s| event("a", s)).collect();
        commits.committed(&["a".to_owned()], many);
        assert!(seqs(4).is_empty(), "the oldest kept one no longer continues seq 4");
        assert_eq!(seqs(5 + RECENT as u64 + 8), [5 + RECENT as u64 + 9]);
    }
}

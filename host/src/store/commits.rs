//! Telling readers that a job's events were committed.
//!
//! After each `COMMIT` the writer names every job that got new events. Two kinds of listener:
//! a broadcast of every job id (for the few that want all of them), and a per-job watch for
//! the many that follow one job (SSE streams, ARCP sessions): with 64 jobs followed at once, a
//! broadcast would wake all 64 followers for every commit of any of them; a watch wakes only
//! the job's own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{broadcast, watch};

/// Buffered job ids per broadcast subscriber.
const NOTIFY_CAPACITY: usize = 1024;

#[derive(Debug)]
pub(super) struct Commits {
    all: broadcast::Sender<String>,
    /// A version counter per followed job, bumped on each commit of its events.
    jobs: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Commits {
    pub(super) fn new() -> Arc<Commits> {
        let (all, _) = broadcast::channel(NOTIFY_CAPACITY);
        Arc::new(Commits { all, jobs: Mutex::new(HashMap::new()) })
    }

    /// Called by the writer after a commit that gave `job` new events.
    pub(super) fn committed(&self, job: String) {
        if let Some(watch) = self.jobs.lock().unwrap_or_else(PoisonError::into_inner).get(&job) {
            watch.send_modify(|version| *version = version.wrapping_add(1));
        }
        let _ = self.all.send(job);
    }

    pub(super) fn all(&self) -> &broadcast::Sender<String> {
        &self.all
    }

    pub(super) fn watch(self: &Arc<Self>, job: &str) -> JobCommits {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let receiver = match jobs.get(job) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = watch::channel(0);
                jobs.insert(job.to_owned(), sender);
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
    /// Marks every commit so far as seen: call it before reading, then [`Self::next`] waits
    /// only for commits after that read began.
    pub fn mark_seen(&mut self) {
        self.receiver.borrow_and_update();
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
        if jobs.get(&self.job).is_some_and(|sender| sender.receiver_count() <= 1) {
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
        commits.committed("b".into());
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), a.next()).await;
        assert!(early.is_err(), "another job's commit does not wake it");
        commits.committed("a".into()); // before anyone waits
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
}

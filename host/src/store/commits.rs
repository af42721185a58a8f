//! Telling readers that a job's events were committed.
//!
//! After each `COMMIT` the writer names every job that got new events, and whoever watches
//! that job (an SSE stream, an ARCP session, `wait_finished`) wakes — and nobody else: with
//! 64 jobs followed at once, one broadcast of every job id woke all 64 followers for every
//! commit of any of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

#[derive(Debug, Default)]
pub(super) struct Commits {
    /// A version counter per followed job, bumped on each commit of its events.
    jobs: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Commits {
    pub(super) fn new() -> Arc<Commits> {
        Arc::new(Commits::default())
    }

    /// Called by the writer after a commit that gave these jobs new events.
    pub(super) fn committed<'a>(&self, jobs: impl IntoIterator<Item = &'a String>) {
        let watched = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        for job in jobs {
            if let Some(watch) = watched.get(job) {
                watch.send_modify(|version| *version = version.wrapping_add(1));
            }
        }
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
        commits.committed(&["b".to_owned()]);
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), a.next()).await;
        assert!(early.is_err(), "another job's commit does not wake it");
        commits.committed(&["a".to_owned()]); // before anyone waits
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

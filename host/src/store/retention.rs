//! Pruning what is past retention, and giving the space back.
//!
//! Why it is shaped like this: a runtime that runs for months must not grow its database
//! forever, and pruning must never stall the writer that acknowledges clients. So a round
//! deletes a bounded chunk of finished jobs (with their events, audit rows and followed-stream
//! rows) in one writer op, walking the `jobs` table in rowid order — insertion order, so the
//! oldest first — and stops at the first job created after the cutoff (a job cannot finish
//! before it was created). No extra index is written per job for this.
//!
//! A job is kept while anything live refers to it: a finished child of a parent that is still
//! queued or running, and a finished parent with a child still queued or running. Its
//! idempotency key goes with it, so the replay window of a key is the retention age.
//!
//! The database uses `auto_vacuum = INCREMENTAL` (set at open): deleted pages go to the free
//! list, are reused by later writes (so the file stops growing under a steady load), and
//! [`Store::reclaim_free_pages`] hands back, a bounded number per pass, what is free beyond a
//! quarter of the file (after a backlog was pruned, say).

use rusqlite::{Transaction, params};

use super::{Store, StoreError};

/// What one [`Store::prune_jobs`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PruneRound {
    /// Jobs deleted (with their events, audit rows and followed-stream rows).
    pub jobs: usize,
    /// Event rows deleted.
    pub events: usize,
    /// The rowid the walk reached: pass it as `after` to continue.
    pub cursor: i64,
    /// Whether the walk reached jobs created after the cutoff (nothing older is left to look at).
    pub done: bool,
}

impl Store {
    /// Looks at up to `limit` jobs after rowid `after` (oldest first) and deletes those that
    /// finished before `before` (ms since the epoch) and that no live job refers to.
    pub fn prune_jobs(
        &self,
        before: i64,
        after: i64,
        limit: u32,
    ) -> impl Future<Output = Result<PruneRound, StoreError>> + Send + 'static {
        self.write(move |ctx| prune_chunk(ctx.tx(), before, after, limit))
    }

    /// Returns free pages to the file system (`PRAGMA incremental_vacuum`), at most `pages`,
    /// and only those beyond a quarter of the file: under a steady load the freed pages are
    /// what the next writes reuse, and handing them back only to grow the file again would move
    /// pages for nothing. Returns how many pages were free before.
    pub fn reclaim_free_pages(&self, pages: u32) -> impl Future<Output = Result<u64, StoreError>> + Send + 'static {
        self.write(move |ctx| {
            let tx = ctx.tx();
            let free: i64 = tx.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
            let total: i64 = tx.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            // Free pages may stay up to a quarter of the file: free ≤ used / 3.
            let excess = free.saturating_sub(total.saturating_sub(free) / 3).min(i64::from(pages));
            if excess > 0 {
                // Frees one page per step (rusqlite's `execute*` step once): step it to the end.
                let mut stmt = tx.prepare(&format!("PRAGMA incremental_vacuum({excess})"))?;
                let mut rows = stmt.query([])?;
                while rows.next()?.is_some() {}
            }
            Ok(u64::try_from(free).unwrap_or(0))
        })
    }
}

/// A job row as the walk sees it.
struct Candidate {
    rowid: i64,
    id: String,
    parent: Option<String>,
    finished_at: Option<i64>,
    created_at: i64,
}

fn prune_chunk(tx: &Transaction<'_>, before: i64, after: i64, limit: u32) -> Result<PruneRound, StoreError> {
    let candidates: Vec<Candidate> = {
        let mut stmt = tx.prepare_cached(
            "SELECT rowid, id, parent_id, finished_at, created_at FROM jobs WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after, limit], |r| {
            Ok(Candidate {
                rowid: r.get(0)?,
                id: r.get(1)?,
                parent: r.get(2)?,
                finished_at: r.get(3)?,
                created_at: r.get(4)?,
            })
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let mut round = PruneRound { cursor: after, done: candidates.len() < limit as usize, ..PruneRound::default() };
    let live = live_jobs(tx)?;
    for Candidate { rowid, id, parent, finished_at, created_at } in candidates {
        if created_at >= before {
            round.done = true;
            break;
        }
        round.cursor = rowid;
        let finished_long_ago = finished_at.is_some_and(|at| at < before);
        let referenced = parent.as_deref().is_some_and(|p| live.ids.contains(p)) || live.parents.contains(&id);
        if !finished_long_ago || referenced {
            continue;
        }
        round.events += tx.prepare_cached("DELETE FROM events WHERE job_id = ?1")?.execute([&id])?;
        tx.prepare_cached("DELETE FROM audit WHERE job_id = ?1")?.execute([&id])?;
        tx.prepare_cached("DELETE FROM followed_jobs WHERE job_id = ?1")?.execute([&id])?;
        tx.prepare_cached("DELETE FROM jobs WHERE rowid = ?1")?.execute([rowid])?;
        round.jobs += 1;
    }
    Ok(round)
}

/// The queued and running jobs, and the parents they name: what a pruned job may not be.
/// Read once per chunk from the small `jobs_unfinished` index (a round runs in one writer op,
/// so nothing changes under it).
struct Live {
    ids: std::collections::HashSet<String>,
    parents: std::collections::HashSet<String>,
}

fn live_jobs(tx: &Transaction<'_>) -> Result<Live, StoreError> {
    let mut stmt = tx.prepare_cached("SELECT id, parent_id FROM jobs WHERE status IN ('queued', 'running')")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)))?;
    let mut live = Live { ids: Default::default(), parents: Default::default() };
    for row in rows {
        let (id, parent) = row?;
        live.ids.insert(id);
        live.parents.extend(parent);
    }
    Ok(live)
}

//! Delivering queued ASP messages: at-least-once, with retries and backoff, across restarts.
//!
//! Every message this host sends is a `swarm_outbox` row first (committed before the operation
//! that made it answers), and leaves the outbox only when the peer took it: a 2xx, or
//! `409 DUPLICATE_MESSAGE` (the peer already has it — a retry whose first attempt landed but
//! whose answer was lost). The receiver dedupes by `message_id`, so a message is applied once
//! however often it is delivered.
//!
//! A failed attempt is retried after `500 ms × 2^attempts` (with jitter, capped at
//! `outbox_max_backoff_ms`) when it may succeed later (network errors, timeouts, 429, 5xx, and
//! `NOT_MEMBER`/`SWARM_NOT_FOUND` — the receiver may not have the master's `member_joined`
//! yet); a refusal that will not change (any other 4xx: bad signature, not allowed…) ends it
//! at once. A retry is sent with a fresh timestamp, signed again (same id). After
//! `outbox_max_attempts`, or once older than `dedupe_window_ms` (receivers remember ids that
//! long), a row is kept as dead, with its last error, for the operator (`corral swarm outbox`).

use std::sync::Arc;
use std::time::Duration;

use super::federation::Federation;
use crate::store::{OutboxFailure, OutboxRecord, now_ms};

/// Rows taken (and attempted concurrently) per pass.
const BATCH: u32 = 256;

/// How often seen ids past their window are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// What one attempt came to.
enum Attempt {
    Delivered,
    Retry(String),
    Refused(String),
}

/// Runs the outbox until the process ends.
pub fn spawn(federation: Arc<Federation>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let interval = Duration::from_millis(federation.config().outbox_interval_ms.max(10));
        let mut last_prune = tokio::time::Instant::now();
        loop {
            match pass(&federation).await {
                Ok(n) if n >= BATCH as usize => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "outbox pass failed"),
            }
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = tokio::time::Instant::now();
                federation.tidy_rate_limits();
                if let Err(e) = federation.store().swarm_prune_seen(now_ms()).await {
                    tracing::warn!(error = %e, "forgetting old message ids failed");
                }
            }
            tokio::select! {
                () = federation.wake.notified() => {}
                () = tokio::time::sleep(interval) => {}
            }
        }
    })
}

/// Delivers what is due now; returns how many rows it tried.
///
/// Order per peer is kept where it matters: a peer's rows go in the order they were queued,
/// plain messages in concurrent runs, each system message (membership) alone after everything
/// before it; the first failure stops that peer's rows for this pass, and a peer whose oldest
/// row waits for a retry gets nothing newer (`Store::outbox_due`). So a `member_kicked` never
/// overtakes the `member_joined` before it.
async fn pass(federation: &Federation) -> Result<usize, crate::store::StoreError> {
    let due = federation.store().outbox_due(now_ms(), BATCH).await?;
    let n = due.len();
    let mut by_peer: Vec<(String, Vec<OutboxRecord>)> = Vec::new();
    for row in due {
        match by_peer.iter_mut().find(|(peer, _)| *peer == row.peer) {
            Some((_, rows)) => rows.push(row),
            None => by_peer.push((row.peer.clone(), vec![row])),
        }
    }
    let peers = by_peer.into_iter().map(|(_, rows)| deliver_in_order(federation, rows));
    let (mut delivered, mut failed) = (Vec::new(), Vec::new());
    for (ok, bad) in futures::future::join_all(peers).await {
        delivered.extend(ok);
        failed.extend(bad);
    }
    // One write (one fsync) for the whole pass.
    federation.store().outbox_settle(delivered, failed).await?;
    Ok(n)
}

/// One peer's due rows, in queue order (see [`pass`]): the delivered ids and the failures.
async fn deliver_in_order(federation: &Federation, rows: Vec<OutboxRecord>) -> (Vec<i64>, Vec<OutboxFailure>) {
    let (mut delivered, mut failed) = (Vec::new(), Vec::new());
    let mut rest = rows.as_slice();
    while !rest.is_empty() {
        // A run: one system message, or the plain messages up to the next one.
        let len = if rest.first().is_some_and(|r| r.system) {
            1
        } else {
            rest.iter().position(|r| r.system).unwrap_or(rest.len())
        };
        let (run, after) = rest.split_at(len);
        rest = after;
        let outcomes = futures::future::join_all(run.iter().map(|row| attempt(federation, row))).await;
        let mut all_delivered = true;
        for (row, outcome) in run.iter().zip(outcomes) {
            match settle(federation, row, outcome) {
                None => delivered.push(row.id),
                Some(failure) => {
                    all_delivered = false;
                    failed.push(failure);
                }
            }
        }
        if !all_delivered {
            break;
        }
    }
    (delivered, failed)
}

/// What an attempt's outcome does to its row: `None` when delivered.
fn settle(federation: &Federation, row: &OutboxRecord, outcome: Attempt) -> Option<OutboxFailure> {
    let config = federation.config();
    match outcome {
        Attempt::Delivered => None,
        Attempt::Refused(error) => {
            tracing::warn!(peer = %row.peer, message_id = %row.message_id, %error, "peer refused a message; not retrying");
            Some(OutboxFailure { id: row.id, error, next_at: row.next_at, dead: true })
        }
        Attempt::Retry(error) => {
            let age = u64::try_from(now_ms().saturating_sub(row.created_at)).unwrap_or(0);
            let dead = row.attempts.saturating_add(1) >= config.outbox_max_attempts || age > config.dedupe_window_ms;
            if dead {
                tracing::warn!(peer = %row.peer, message_id = %row.message_id, %error, "giving up on a message");
            }
            let next_at = now_ms().saturating_add(backoff_ms(row.attempts, config.outbox_max_backoff_ms));
            Some(OutboxFailure { id: row.id, error, next_at, dead })
        }
    }
}

/// Wait before the attempt after `attempts` failed ones: doubling from 500 ms, capped, ±25 %.
pub fn backoff_ms(attempts: u32, cap_ms: u64) -> i64 {
    let base = 500u64.saturating_mul(1u64 << attempts.min(30)).min(cap_ms.max(1));
    let jitter = rand_fraction();
    let ms = (base as f64 * (0.75 + 0.5 * jitter)) as u64;
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn rand_fraction() -> f64 {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX)
}

/// Largest part of a refusal's body read (and kept as the row's last error).
const MAX_REFUSAL_BODY: usize = 4096;

async fn attempt(federation: &Federation, row: &OutboxRecord) -> Attempt {
    let url = format!("{}/message", row.endpoint.trim_end_matches('/'));
    // A retry long after the message was made would be refused as stale: it goes out with a
    // fresh timestamp, signed again (same id, so the receiver still dedupes it).
    let body = match federation.restamp(&row.body, &row.scheme) {
        Ok(body) => body,
        Err(e) => return Attempt::Refused(format!("cannot sign the message again: {e}")),
    };
    let sent = federation
        .client()
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Agent-ID", federation.agent_id())
        .header("X-Swarm-Protocol", super::PROTOCOL_VERSION)
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) => return Attempt::Retry(format!("POST {url}: {e}")),
    };
    let status = response.status();
    if status.is_success() {
        return Attempt::Delivered;
    }
    let body = match super::federation::read_capped(response, MAX_REFUSAL_BODY).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => e,
    };
    let code = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.pointer("/error/code").and_then(|c| c.as_str()).map(str::to_owned))
        .unwrap_or_default();
    let detail = format!("{status} {code}: {}", body.chars().take(300).collect::<String>());
    match status.as_u16() {
        409 if code == "DUPLICATE_MESSAGE" => Attempt::Delivered,
        408 | 425 | 429 | 500..=599 => Attempt::Retry(detail),
        // The receiver may not have processed the master's member_joined yet.
        403 | 404 if code == "NOT_MEMBER" || code == "SWARM_NOT_FOUND" => Attempt::Retry(detail),
        _ => Attempt::Refused(detail),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_within_a_quarter_and_stops_at_the_cap() {
        for (attempts, base) in [(0u32, 500i64), (1, 1_000), (3, 4_000)] {
            let ms = backoff_ms(attempts, 60_000);
            assert!(ms >= base * 3 / 4 && ms <= base * 5 / 4, "{attempts}: {ms}");
        }
        assert!(backoff_ms(40, 60_000) <= 75_000);
    }
}

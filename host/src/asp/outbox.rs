//! Delivering queued ASP messages: at-least-once, with retries and backoff, across restarts.
//!
//! Every message this host sends is a `swarm_outbox` row first (committed before the operation
//! that made it answers), and leaves the outbox only when the peer took it: a 2xx, or
//! `409 DUPLICATE_MESSAGE` (the peer already has it — a retry whose first attempt landed but
//! whose answer was lost). The receiver dedupes by `message_id`, so a message is applied once
//! however often it is delivered.
//!
//! A failed attempt is retried after `500 ms × 2^attempts` (with jitter, capped at
//! `outbox_max_backoff_ms`) when it may succeed later (network errors, timeouts, 429, 5xx);
//! a refusal that will not change (any other 4xx: bad signature, not a member…) ends it at
//! once. After `outbox_max_attempts` a row is kept as dead, with its last error, for the
//! operator (`corral swarm outbox`).

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
async fn pass(federation: &Federation) -> Result<usize, crate::store::StoreError> {
    let due = federation.store().outbox_due(now_ms(), BATCH).await?;
    let n = due.len();
    let attempts = due.into_iter().map(|row| async move {
        let outcome = attempt(federation, &row).await;
        (row, outcome)
    });
    let (mut delivered, mut failed) = (Vec::new(), Vec::new());
    let config = federation.config();
    for (row, outcome) in futures::future::join_all(attempts).await {
        match outcome {
            Attempt::Delivered => delivered.push(row.id),
            Attempt::Refused(error) => {
                tracing::warn!(peer = %row.peer, message_id = %row.message_id, %error, "peer refused a message; not retrying");
                failed.push(OutboxFailure { id: row.id, error, next_at: row.next_at, dead: true });
            }
            Attempt::Retry(error) => {
                let dead = row.attempts.saturating_add(1) >= config.outbox_max_attempts;
                if dead {
                    tracing::warn!(peer = %row.peer, message_id = %row.message_id, %error, "giving up on a message");
                }
                let next_at = now_ms().saturating_add(backoff_ms(row.attempts, config.outbox_max_backoff_ms));
                failed.push(OutboxFailure { id: row.id, error, next_at, dead });
            }
        }
    }
    // One write (one fsync) for the whole pass.
    federation.store().outbox_settle(delivered, failed).await?;
    Ok(n)
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

async fn attempt(federation: &Federation, row: &OutboxRecord) -> Attempt {
    let url = format!("{}/message", row.endpoint.trim_end_matches('/'));
    let sent = federation
        .client()
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Agent-ID", federation.agent_id())
        .header("X-Swarm-Protocol", super::PROTOCOL_VERSION)
        .body(row.body.clone())
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
    let body = response.text().await.unwrap_or_default();
    let code = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.pointer("/error/code").and_then(|c| c.as_str()).map(str::to_owned))
        .unwrap_or_default();
    let detail = format!("{status} {code}: {}", body.chars().take(300).collect::<String>());
    match status.as_u16() {
        409 if code == "DUPLICATE_MESSAGE" => Attempt::Delivered,
        408 | 425 | 429 | 500..=599 => Attempt::Retry(detail),
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

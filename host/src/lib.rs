//! corral: a host that runs agents as sandboxed WebAssembly components, every effect of
//! which is a host import gated by the lease of the job it runs under.
//!
//! A request travels through the modules in this order:
//!
//! - [`api`] — axum routes: authenticate the principal, parse, map errors to HTTP once;
//! - [`jobs`] — submit (effective lease, durable record, idempotency), schedule, run,
//!   cancel, recover after a restart;
//! - [`messages`] — the message plane: routed envelopes, ACK stages, inboxes, redelivery,
//!   dedupe, external agents; deliveries run through the job runner;
//! - [`lease`] — scopes, patterns, the sound subset test, intersection, budgets/limits;
//! - [`engine`] — the wasmtime engine, compiled-code cache, agent registry, folder watch;
//! - [`capabilities`] — one module per scope family: the host side of each WIT interface,
//!   each call authorized against the lease before any effect;
//! - [`store`] — SQLite (WAL) behind one group-committing writer thread;
//! - [`sw4rm`] — the SW4RM gRPC front door (router, registry, health): a codec over `messages`.
//!
//! [`server`] wires them together for `corral serve`; [`build`] is `corral build` (agent
//! crates → components); [`cli`] is the client half of the `corral` command.

pub mod api;
pub mod arcp;
pub mod asp;
pub mod bindings;
pub mod build;
pub mod capabilities;
pub mod cli;
pub mod config;
pub mod connections;
pub mod engine;
pub mod fuzzing;
pub mod jobs;
pub mod lease;
pub mod messages;
pub mod metrics;
pub mod retention;
pub mod secrets;
pub mod server;
pub mod store;
pub mod sw4rm;
pub mod telemetry;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    store::now_ms()
}

/// Unix milliseconds as RFC 3339 in UTC with exactly three fractional digits
/// (`2026-12-02T02:02:05.670Z`), so timestamps sort as text: the well-known format trims
/// trailing zeros (`05.67Z`), and `05.67Z` sorts after `05.671Z`.
pub fn rfc3339(ms: i64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    #[test]
    fn timestamps_have_fixed_width_millis_and_sort_as_text() {
        let at = 1_796_176_925_670; // 2026-12-02T02:02:05.670Z
        assert_eq!(super::rfc3339(at), "2026-12-02T02:02:05.670Z");
        assert_eq!(super::rfc3339(at - 670), "2026-12-02T02:02:05.000Z");
        let times: Vec<String> = [at - 2, at, at + 1].iter().map(|ms| super::rfc3339(*ms)).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    }
}

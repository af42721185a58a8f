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
pub mod bindings;
pub mod build;
pub mod capabilities;
pub mod cli;
pub mod config;
pub mod engine;
pub mod jobs;
pub mod lease;
pub mod messages;
pub mod metrics;
pub mod secrets;
pub mod server;
pub mod store;
pub mod sw4rm;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    store::now_ms()
}

/// Unix milliseconds as RFC 3339 (UTC, millisecond precision).
pub fn rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

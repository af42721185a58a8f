//! End-to-end tests: each starts a real `corral serve` on a free loopback port with its own
//! agents and data folders, and drives it over HTTP and the `corral` CLI, like a user.
//!
//! The agent components must be built first (`./dev test` does it): the examples into
//! `agents/`, the hostile ones into `target/test-agents/`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    missing_debug_implementations
)]

mod harness;

mod agents_folder;
mod api_errors;
mod arcp;
mod cli;
mod durability;
mod federation;
mod lease_escapes;
mod leases;
mod limits;
mod messages;
mod openapi;
mod operations;
mod secrets;
mod sw4rm;
mod traces;
mod waited_jobs;

//! Host-side bindings generated from `wit/agent.wit`.
//!
//! Every import is `async` (host calls may await the database, the network or a child
//! job) and `trappable` (a host call may end the guest when a *limit* is hit — the
//! host-call budget — while lease denials stay ordinary `host-error` values).
#![allow(missing_docs, missing_debug_implementations)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "agent",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use self::corral::agent::types::{Denial, HostError};

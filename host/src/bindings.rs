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

/// The `consumer-agent` world: the same imports (the modules above), plus the `consumer`
/// export. Only its export side is used: a consumer is instantiated from the same
/// `InstancePre` as any agent, and its `on-message` looked up with `GuestIndices`.
pub mod consumer {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "consumer-agent",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "corral:agent/types": super::corral::agent::types,
            "corral:agent/log": super::corral::agent::log,
            "corral:agent/kv": super::corral::agent::kv,
            "corral:agent/http": super::corral::agent::http,
            "corral:agent/jobs": super::corral::agent::jobs,
            "corral:agent/events": super::corral::agent::events,
            "corral:agent/messaging": super::corral::agent::messaging,
        },
    });
}

//! Write corral agents in Rust.
//!
//! A corral agent is a WebAssembly component that can do nothing on its own: every effect —
//! logging, key-value state, outbound HTTP, delegating to another agent, streaming progress —
//! is a call into the host, and the host checks each call against the *lease* of the job it
//! runs under. A call the lease does not allow returns [`Error::Denied`] before anything
//! happens: a denial is a value your agent may handle, never a crash.
//!
//! This crate wraps the `corral:agent@0.1.0` WIT contract (generated with `wit-bindgen`) in a
//! small typed API, and gives you one macro, [`export_agent!`], that turns a type implementing
//! [`Agent`] into the component's job handler and embeds the agent's manifest (name, version,
//! description and the lease scopes it needs) into the module, where the host reads it
//! without running the agent.
//!
//! | Module     | Host calls                                   | Lease scope(s)          |
//! |------------|----------------------------------------------|-------------------------|
//! | [`log`]    | `trace`, `debug`, `info`, `warn`, `error`    | `log`                   |
//! | [`kv`]     | `get`, `set`, `delete`, `increment`, JSON    | `kv.read`, `kv.write`   |
//! | [`http`]   | `fetch`, `get`, `fetch_with_secrets`         | `net.fetch`, `secret.use` |
//! | [`jobs`]   | `delegate`                                   | `agent.delegate`        |
//! | [`events`] | `progress`, `chunk`                          | `events`                |
//! | [`messaging`] | `send`, `publish`, `request`, `reply`     | `agent.send`, `topic.publish` |
//!
//! An agent that also *consumes* routed messages implements [`messaging::Consumer`] and is
//! exported with [`export_consumer!`] instead.
//!
//! # Example
//!
//! A complete agent crate (`Cargo.toml` with `crate-type = ["cdylib"]` and a dependency on
//! `corral-guest`), built with `corral build` (or `cargo build --target
//! wasm32-unknown-unknown` followed by componentization):
//!
//! ```
//! use corral_guest::{Agent, Error, Value, json, kv, log};
//!
//! /// Counts visits per key.
//! struct Visits;
//!
//! impl Agent for Visits {
//!     fn handle(input: Value) -> Result<Value, Error> {
//!         let key = input
//!             .get("key")
//!             .and_then(Value::as_str)
//!             .ok_or_else(|| Error::invalid("expected {\"key\": \"...\"}"))?;
//!         match kv::increment("visits", key, 1) {
//!             Ok(value) => {
//!                 log::info(&format!("{key} is now {value}"))?;
//!                 Ok(json!({ "key": key, "value": value }))
//!             }
//!             Err(err) if err.is_denied() => {
//!                 // A denial is a value: degrade gracefully, or return it to fail the job.
//!                 let _ = log::warn(&format!("not allowed to count: {err}"));
//!                 Err(err)
//!             }
//!             Err(err) => Err(err),
//!         }
//!     }
//! }
//!
//! corral_guest::export_agent!(Visits, scopes = ["log", "kv.read:visits/*", "kv.write:visits/*"]);
//! # fn main() {}
//! ```
//!
//! # The manifest
//!
//! [`export_agent!`] stores this JSON in a custom section named `corral:manifest` of the core
//! module, which survives componentization:
//!
//! ```json
//! {"name":"visits","version":"0.1.0","description":"...","scopes":["log","kv.read:visits/*"]}
//! ```
//!
//! `name`, `version` and `description` default to the agent crate's `CARGO_PKG_NAME`,
//! `CARGO_PKG_VERSION` and `CARGO_PKG_DESCRIPTION`; override them with `name = "..."`,
//! `version = "..."`, `description = "..."` after `scopes` (in that order). The name must be
//! 1–64 characters of `[a-z0-9-_]` and the version `MAJOR.MINOR.PATCH[-pre][+build]`; both
//! are checked at compile time.
//!
//! # Target
//!
//! Build agents for `wasm32-unknown-unknown`: the module then imports nothing but the
//! `corral:agent/*` interfaces (no WASI, so no ambient authority), and the host refuses any
//! component that imports anything else. On other targets the crate compiles (so `cargo
//! check` and doc tests work) but every host call traps.

extern crate self as corral_guest;

mod error;
pub mod events;

/// The agent's allocator: dlmalloc, as in std, but a release (0.2.12+) that takes its first
/// chunk from the heap the linker reserved in the module's initial memory (`corral build`
/// reserves 1 MiB with `--initial-heap`) instead of growing memory. Why it matters: every
/// `memory.grow` costs the host an `mprotect`, and reusing the slot for the next job another,
/// with a TLB shootdown across cores — about a third of instantiating a small agent. A job
/// that fits in the reserved heap never grows memory; a bigger one grows as before.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;
pub mod http;
pub mod jobs;
pub mod kv;
pub mod log;
mod manifest;
pub mod messaging;

pub use error::{Denial, Error};
pub use serde_json::{self, Value, json};

/// The bindings `wit-bindgen` generates for the `agent` world of `../wit`.
///
/// Use the typed wrappers in this crate's modules instead; this module is public only so that
/// [`export_agent!`] can refer to it from the agent crate.
#[doc(hidden)]
// The generated code is the canonical-ABI glue between the component and the host: raw
// pointers into linear memory and `export_name` functions. It is unsafe by nature; the
// generator is `wit-bindgen`, not hand-written code.
#[allow(unsafe_code, missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "agent",
        additional_derives: [PartialEq],
        pub_export_macro: true,
        export_macro_name: "__export",
        default_bindings_module: "corral_guest::bindings",
        runtime_path: "corral_guest::__private::wit_bindgen::rt",
    });
}

/// The bindings of the `consumer-export` world: the `consumer` export, with the types it uses
/// from [`bindings`] (reused, not generated twice). A component exporting both is a
/// `consumer-agent`. Public only for [`export_consumer!`].
#[doc(hidden)]
#[allow(unsafe_code, missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod consumer_bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "consumer-export",
        with: {
            "corral:agent/types@0.1.0": crate::bindings::corral::agent::types,
            "corral:agent/messaging@0.1.0": crate::bindings::corral::agent::messaging,
        },
        pub_export_macro: true,
        export_macro_name: "__export_consumer",
        default_bindings_module: "corral_guest::consumer_bindings",
        runtime_path: "corral_guest::__private::wit_bindgen::rt",
    });
}

/// A corral agent: one function from the job's JSON input to its JSON output.
///
/// The input is parsed before `handle` is called (input that is not JSON fails the job with
/// [`Error::Invalid`] without calling it), and the output is serialized after. Returning an
/// `Err` fails the job with that error; returning a host call's denial as-is makes the job
/// fail with the denial, so the caller sees which scope was missing.
pub trait Agent {
    /// Runs one job.
    fn handle(input: Value) -> Result<Value, Error>;
}

/// Exports a type implementing [`Agent`] as the component's job handler and embeds the agent's
/// manifest.
///
/// ```ignore
/// corral_guest::export_agent!(MyAgent, scopes = ["log", "kv.read", "kv.write:counter/*"]);
/// corral_guest::export_agent!(
///     MyAgent,
///     scopes = ["log"],
///     name = "my-agent",
///     version = "1.2.3",
///     description = "Does one thing well",
/// );
/// ```
///
/// Use it exactly once, in the agent's `cdylib` crate. `scopes` are the lease scopes the agent
/// declares it needs (optionally with a target pattern after `:`); the host grants at most
/// these, intersected with its policy and the job's request.
///
/// The expansion carries `#[allow(unsafe_code)]` (for the `export_name` / `link_section`
/// attributes it needs), so an agent crate may `deny(unsafe_code)` but not `forbid` it.
#[macro_export]
macro_rules! export_agent {
    (
        $agent:ty,
        scopes = [$($scope:expr),* $(,)?]
        $(, capabilities = [$($capability:expr),* $(,)?])?
        $(, name = $name:expr)?
        $(, version = $version:expr)?
        $(, description = $description:expr)?
        $(,)?
    ) => {
        // The `export_name` functions and the `link_section` static below are what make this
        // module a corral agent; they are the only "unsafe" attributes an agent needs.
        #[allow(unsafe_code)]
        const _: () = {
            struct __CorralAgent;

            impl $crate::bindings::exports::corral::agent::handler::Guest for __CorralAgent {
                fn handle(
                    input: ::std::string::String,
                ) -> ::core::result::Result<
                    ::std::string::String,
                    $crate::bindings::corral::agent::types::HostError,
                > {
                    $crate::__private::handle::<$agent>(input)
                }
            }

            $crate::bindings::__export!(__CorralAgent with_types_in $crate::bindings);

            $crate::__manifest!(
                scopes = [$($scope),*],
                capabilities = [$($($capability),*)?],
                topics = [],
                name = [$($name)?],
                version = [$($version)?],
                description = [$($description)?]
            );
        };
    };
}

/// Exports a type implementing both [`Agent`] and [`messaging::Consumer`]: the component's
/// job handler and its `on-message` handler for routed messages, with its manifest.
///
/// ```ignore
/// corral_guest::export_consumer!(
///     Greeter,
///     scopes = ["log", "agent.send"],
///     topics = ["greetings"],
///     capabilities = ["greeting"],
/// );
/// ```
///
/// `topics` are the topics it subscribes to; `capabilities` are names for discovery
/// (`GET /v1/agents?capability=`). `name`, `version` and `description` work as in
/// [`export_agent!`].
#[macro_export]
macro_rules! export_consumer {
    (
        $agent:ty,
        scopes = [$($scope:expr),* $(,)?]
        $(, topics = [$($topic:expr),* $(,)?])?
        $(, capabilities = [$($capability:expr),* $(,)?])?
        $(, name = $name:expr)?
        $(, version = $version:expr)?
        $(, description = $description:expr)?
        $(,)?
    ) => {
        #[allow(unsafe_code)]
        const _: () = {
            struct __CorralAgent;

            impl $crate::bindings::exports::corral::agent::handler::Guest for __CorralAgent {
                fn handle(
                    input: ::std::string::String,
                ) -> ::core::result::Result<
                    ::std::string::String,
                    $crate::bindings::corral::agent::types::HostError,
                > {
                    $crate::__private::handle::<$agent>(input)
                }
            }

            impl $crate::consumer_bindings::exports::corral::agent::consumer::Guest for __CorralAgent {
                fn on_message(
                    msg: $crate::messaging::Envelope,
                ) -> $crate::consumer_bindings::exports::corral::agent::consumer::AckOutcome {
                    $crate::__private::on_message::<$agent>(msg)
                }
            }

            $crate::bindings::__export!(__CorralAgent with_types_in $crate::bindings);
            $crate::consumer_bindings::__export_consumer!(__CorralAgent with_types_in $crate::consumer_bindings);

            $crate::__manifest!(
                scopes = [$($scope),*],
                capabilities = [$($($capability),*)?],
                topics = [$($($topic),*)?],
                name = [$($name)?],
                version = [$($version)?],
                description = [$($description)?]
            );
        };
    };
}

/// The `corral:manifest` section both export macros embed; not part of the API.
#[doc(hidden)]
#[macro_export]
macro_rules! __manifest {
    (
        scopes = [$($scope:expr),*],
        capabilities = [$($capability:expr),*],
        topics = [$($topic:expr),*],
        name = [$($name:expr)?],
        version = [$($version:expr)?],
        description = [$($description:expr)?]
    ) => {
        const __NAME: &str = {
            let name = ::core::env!("CARGO_PKG_NAME");
            $(let name = $name;)?
            name
        };
        const __VERSION: &str = {
            let version = ::core::env!("CARGO_PKG_VERSION");
            $(let version = $version;)?
            version
        };
        const __DESCRIPTION: &str = {
            let description = ::core::env!("CARGO_PKG_DESCRIPTION");
            $(let description = $description;)?
            description
        };
        const __FIELDS: $crate::__private::Fields<'static> = $crate::__private::Fields {
            name: __NAME,
            version: __VERSION,
            description: __DESCRIPTION,
            scopes: &[$($scope),*],
            capabilities: &[$($capability),*],
            topics: &[$($topic),*],
        };

        ::core::assert!(
            $crate::__private::valid_name(__NAME),
            "corral agent name must be 1-64 characters of [a-z0-9-_]: rename the crate or pass name = \"...\" to the export macro"
        );
        ::core::assert!(
            $crate::__private::valid_version(__VERSION),
            "corral agent version must be MAJOR.MINOR.PATCH (optionally -pre / +build)"
        );
        ::core::assert!(
            $crate::__private::valid_scopes(__FIELDS.scopes)
                && $crate::__private::valid_scopes(__FIELDS.capabilities)
                && $crate::__private::valid_scopes(__FIELDS.topics),
            "corral agent scopes, capabilities and topics must be non-empty and contain no whitespace or control characters"
        );

        const __LEN: usize = $crate::__private::manifest_len(__FIELDS);

        #[used]
        #[cfg_attr(target_family = "wasm", unsafe(link_section = "corral:manifest"))]
        static __CORRAL_MANIFEST: [u8; __LEN] = $crate::__private::manifest::<__LEN>(__FIELDS);
    };
}

/// Support for [`export_agent!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::manifest::{Fields, manifest, manifest_len, valid_name, valid_scopes, valid_version};
    pub use wit_bindgen;

    use crate::bindings::corral::agent::types::HostError;
    use crate::consumer_bindings::exports::corral::agent::consumer::AckOutcome;
    use crate::messaging::{Ack, Consumer, Envelope};
    use crate::{Agent, Error, Value};

    /// Runs the consumer on one delivered message.
    pub fn on_message<C: Consumer>(msg: Envelope) -> AckOutcome {
        match C::on_message(msg) {
            Ack::Fulfilled => AckOutcome::Fulfilled,
            Ack::Rejected { code, reason } => {
                AckOutcome::Rejected(crate::bindings::corral::agent::messaging::Refusal { code, reason })
            }
            Ack::Failed(reason) => AckOutcome::Failed(reason),
        }
    }

    /// Parses the job input, runs the agent, serializes its output.
    pub fn handle<A: Agent>(input: String) -> Result<String, HostError> {
        let value: Value = if input.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&input)
                .map_err(|err| HostError::Invalid(format!("job input is not valid JSON: {err}")))?
        };
        let output = A::handle(value).map_err(HostError::from)?;
        serde_json::to_string(&output)
            .map_err(|err| HostError::from(Error::failed(format!("cannot serialize output: {err}"))))
    }
}

//! Scope `log`; target: the level name (`trace` … `error`).
//!
//! Agent logs become `log` events of the job (so clients see them on the event stream)
//! and host `tracing` records at debug level. Messages are capped at [`MAX_MESSAGE`] bytes
//! so one call cannot flood the event table.

use wasmtime::component::{HasSelf, Linker};

use super::JobState;
use crate::bindings::HostError;
use crate::bindings::corral::agent::log::{self as wit, Level};
use crate::lease::Scope;

/// Longest message stored; longer ones are truncated.
pub const MAX_MESSAGE: usize = 16 * 1024;

pub fn add_to_linker(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    wit::add_to_linker::<JobState, HasSelf<JobState>>(linker, |s| s)
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

impl wit::Host for JobState {
    async fn write(&mut self, level: Level, message: String) -> wasmtime::Result<Result<(), HostError>> {
        let level = level_name(level);
        if let Err(denied) = self.ctx.authorize(Scope::Log, level)? {
            return Ok(Err(denied));
        }
        let message = super::truncate(message, MAX_MESSAGE);
        self.ctx.charge_event_bytes(message.len())?;
        tracing::debug!(job = %self.ctx.job_id, agent = %self.ctx.agent, level, "{message}");
        self.ctx.emit("log", serde_json::json!({ "level": level, "message": message }));
        Ok(Ok(()))
    }
}

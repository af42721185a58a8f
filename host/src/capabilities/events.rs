//! Scope `events`; target `progress` or `chunk`.
//!
//! Progress reports and streamed result chunks of the current job, appended to its ordered
//! event stream (clients follow them over SSE). A chunk is capped at [`MAX_CHUNK`] bytes:
//! larger results belong in the job's output.

use wasmtime::component::{HasSelf, Linker};

use super::JobState;
use crate::bindings::HostError;
use crate::bindings::corral::agent::events as wit;
use crate::lease::Scope;

/// Largest chunk accepted.
pub const MAX_CHUNK: usize = 256 * 1024;

pub fn add_to_linker(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    wit::add_to_linker::<JobState, HasSelf<JobState>>(linker, |s| s)
}

impl wit::Host for JobState {
    async fn progress(&mut self, done: u64, total: u64, message: String) -> wasmtime::Result<Result<(), HostError>> {
        if let Err(denied) = self.ctx.authorize(Scope::Events, "progress")? {
            return Ok(Err(denied));
        }
        let message = super::truncate(message, super::log::MAX_MESSAGE);
        self.ctx.charge_event_bytes(message.len())?;
        self.ctx.emit("progress", serde_json::json!({ "done": done, "total": total, "message": message }));
        Ok(Ok(()))
    }

    async fn chunk(&mut self, data: String) -> wasmtime::Result<Result<(), HostError>> {
        if let Err(denied) = self.ctx.authorize(Scope::Events, "chunk")? {
            return Ok(Err(denied));
        }
        if data.len() > MAX_CHUNK {
            return Ok(Err(HostError::Invalid(format!(
                "chunk of {} bytes is larger than the {MAX_CHUNK}-byte limit; return large results as the job's output",
                data.len()
            ))));
        }
        self.ctx.charge_event_bytes(data.len())?;
        self.ctx.emit("chunk", serde_json::json!({ "data": data }));
        Ok(Ok(()))
    }
}

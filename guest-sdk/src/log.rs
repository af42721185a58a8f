//! Structured logs, stored as events of the current job. Scope `log`; the target of the check
//! is the level name, so a lease may allow `log:warn` and `log:error` only.

use crate::Error;
use crate::bindings::corral::agent::log as wit;

/// A log level.
pub use wit::Level;

/// Writes one log line at `level`.
pub fn write(level: Level, message: &str) -> Result<(), Error> {
    wit::write(level, message).map_err(Error::from)
}

/// Writes one `trace` line.
pub fn trace(message: &str) -> Result<(), Error> {
    write(Level::Trace, message)
}

/// Writes one `debug` line.
pub fn debug(message: &str) -> Result<(), Error> {
    write(Level::Debug, message)
}

/// Writes one `info` line.
pub fn info(message: &str) -> Result<(), Error> {
    write(Level::Info, message)
}

/// Writes one `warn` line.
pub fn warn(message: &str) -> Result<(), Error> {
    write(Level::Warn, message)
}

/// Writes one `error` line.
pub fn error(message: &str) -> Result<(), Error> {
    write(Level::Error, message)
}

//! The one error type of every host call and of an agent's handler.

use core::fmt;

use crate::bindings::corral::agent::types::HostError;

/// Why the host refused a call: the scope it needs, the target it was checked against
/// (e.g. `counter/hits` for `kv.write`), and what to do about it.
pub use crate::bindings::corral::agent::types::Denial;

/// What went wrong in a host call or in the agent itself.
///
/// Mirrors the WIT `host-error` variant, with a readable [`Display`](fmt::Display) and helpers.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The job's lease does not allow the call. Nothing happened.
    Denied(Denial),
    /// The arguments (or the job's input) are malformed. Nothing happened.
    Invalid(String),
    /// The effect was attempted and failed (network error, child job failed, ...).
    Failed(String),
    /// The message plane did not accept a message (NO_ROUTE, BUFFER_FULL, ...). Nothing new
    /// was enqueued.
    Refused { code: crate::messaging::ErrorCode, reason: String },
}

impl Error {
    /// An [`Error::Invalid`] with this message: the input or an argument is malformed.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    /// An [`Error::Failed`] with this message: something was tried and did not work.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }

    /// Whether the host refused the call because the job's lease does not allow it.
    pub fn is_denied(&self) -> bool {
        matches!(self, Self::Denied(_))
    }

    /// The denial, if the host refused the call.
    pub fn denial(&self) -> Option<&Denial> {
        match self {
            Self::Denied(denial) => Some(denial),
            Self::Invalid(_) | Self::Failed(_) | Self::Refused { .. } => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Denied(d) => {
                write!(f, "denied: {} on '{}'", d.scope, d.target)?;
                if !d.reason.is_empty() {
                    write!(f, ": {}", d.reason)?;
                }
                Ok(())
            }
            Self::Invalid(message) => write!(f, "invalid: {message}"),
            Self::Failed(message) => write!(f, "failed: {message}"),
            Self::Refused { code, reason } => write!(f, "refused ({}): {reason}", crate::messaging::code_name(*code)),
        }
    }
}

impl std::error::Error for Error {}

impl From<HostError> for Error {
    fn from(err: HostError) -> Self {
        match err {
            HostError::Denied(denial) => Self::Denied(denial),
            HostError::Invalid(message) => Self::Invalid(message),
            HostError::Failed(message) => Self::Failed(message),
        }
    }
}

impl From<Error> for HostError {
    fn from(err: Error) -> Self {
        match err {
            Error::Denied(denial) => Self::Denied(denial),
            Error::Invalid(message) => Self::Invalid(message),
            Error::Failed(message) => Self::Failed(message),
            Error::Refused { code, reason } => {
                Self::Failed(format!("refused ({}): {reason}", crate::messaging::code_name(code)))
            }
        }
    }
}

/// JSON that does not parse or does not have the expected shape is invalid input, so `?` on
/// `serde_json::from_value::<MyInput>(input)` fails the job with [`Error::Invalid`].
impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Self::Invalid(err.to_string())
    }
}

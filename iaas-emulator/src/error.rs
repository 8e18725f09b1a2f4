//! Errors: [`ApiError`] is what a request answers with (a `ret_code` and a
//! message); [`EmuError`] is what starting or running the emulator fails with.

use iaas_client::codes;
use iaas_client::params::ParamError;

/// An API failure rendered as `{"ret_code":N,"message":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ret_code {code}: {message}")]
pub struct ApiError {
    /// QingCloud ret_code.
    pub code: i32,
    /// Human message naming the parameter or resource.
    pub message: String,
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// Any code with a message.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// 1100 for an invalid parameter.
    pub fn invalid(name: &str, reason: impl std::fmt::Display) -> Self {
        Self::param(ParamError::invalid(name, reason))
    }

    /// 1100 from a parameter error.
    pub fn param(e: ParamError) -> Self {
        Self::new(codes::MALFORMED, e.to_string())
    }

    /// 1100 for a malformed request that is not about one parameter.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(codes::MALFORMED, message)
    }

    /// 2100 naming the resource.
    pub fn not_found(kind: &str, id: &str) -> Self {
        Self::new(
            codes::NOT_FOUND,
            format!("resource [{id}] not found (no such {kind})"),
        )
    }

    /// 1400: the resource is not in a state that allows the action.
    pub fn bad_state(kind: &str, id: &str, state: &str, expected: &str) -> Self {
        Self::new(
            codes::PERMISSION_DENIED,
            format!("{kind} [{id}] is {state}, expected {expected}"),
        )
    }

    /// 1400: the resource has a job running on it.
    pub fn busy(kind: &str, id: &str, transition: &str) -> Self {
        Self::new(
            codes::PERMISSION_DENIED,
            format!("{kind} [{id}] is busy ({transition}), please try later"),
        )
    }

    /// 2110 naming the existing resource.
    pub fn exists(message: impl Into<String>) -> Self {
        Self::new(codes::ALREADY_EXISTS, message)
    }

    /// 5400 naming the dependent.
    pub fn in_use(kind: &str, id: &str, by: &str) -> Self {
        Self::new(
            codes::DEPENDENCY_EXISTS,
            format!("{kind} [{id}] is still in use by [{by}]"),
        )
    }

    /// 5200.
    pub fn insufficient(message: impl Into<String>) -> Self {
        Self::new(codes::INSUFFICIENT_RESOURCES, message)
    }

    /// 5000.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(codes::INTERNAL, message)
    }
}

impl From<ParamError> for ApiError {
    fn from(e: ParamError) -> Self {
        ApiError::param(e)
    }
}

/// Failure to start, persist or serve.
#[derive(Debug, thiserror::Error)]
pub enum EmuError {
    /// Filesystem error with context.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
    /// Bad configuration.
    #[error("config: {0}")]
    Config(String),
    /// TLS setup failed.
    #[error("tls: {0}")]
    Tls(String),
}

impl EmuError {
    /// Wraps an I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        EmuError::Io {
            context: context.into(),
            source,
        }
    }

    /// Wraps any store error.
    pub fn store(e: impl std::fmt::Display) -> Self {
        EmuError::Store(e.to_string())
    }
}

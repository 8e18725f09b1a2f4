//! The driver's one error type and the one place it becomes a gRPC status.
//!
//! Services return [`Error`]; `From<Error> for tonic::Status` picks the code
//! the CSI spec expects, so no handler chooses codes on its own.

use iaas_client::codes;
use tonic::{Code, Status};

/// Everything a CSI call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is missing or malformed; names the field.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The request field, as named in the CSI spec (`volume_capabilities`).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The volume, snapshot or node does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A resource with this name exists with incompatible parameters, or a
    /// path is already staged/published differently.
    #[error("{0}")]
    AlreadyExists(String),
    /// The resource is in a state that forbids the call (in use, not staged).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The cloud or the node ran out of something (attach limit, quota).
    #[error("{0}")]
    ResourceExhausted(String),
    /// Another operation on the same volume is in flight.
    #[error("an operation on {0} is already in progress")]
    Aborted(String),
    /// The requested capacity is outside what the disk type supports.
    #[error("{0}")]
    OutOfRange(String),
    /// The cloud is unreachable or busy; the caller should retry.
    #[error("{0}")]
    Unavailable(String),
    /// The call did not finish in time (a job or a device wait).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The call is not supported by this driver.
    #[error("{0}")]
    Unimplemented(String),
    /// A cloud API call failed.
    #[error("cloud: {0}")]
    Cloud(#[from] iaas_client::Error),
    /// A node operation (command, file, mount) failed.
    #[error("{0}")]
    Internal(String),
}

/// Result of a driver operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A missing or malformed request field.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    /// Internal error with context.
    pub fn internal(context: impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        Error::Internal(format!("{context}: {err}"))
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Aborted(_) => Code::Aborted,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::Unavailable(_) => Code::Unavailable,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Internal(_) => Code::Internal,
            Error::Cloud(e) => cloud_code(e),
        }
    }
}

/// The gRPC code for a cloud error: what the CO should do about it.
fn cloud_code(e: &iaas_client::Error) -> Code {
    use iaas_client::Error as E;
    match e.code() {
        Some(codes::NOT_FOUND) => Code::NotFound,
        Some(codes::INSUFFICIENT_RESOURCES)
        | Some(codes::QUOTA_EXCEEDED)
        | Some(codes::INSUFFICIENT_BALANCE) => Code::ResourceExhausted,
        Some(codes::PERMISSION_DENIED) if e.retry_class() == codes::RetryClass::Transient => {
            Code::Unavailable
        }
        Some(codes::PERMISSION_DENIED) | Some(codes::DEPENDENCY_EXISTS) => Code::FailedPrecondition,
        Some(codes::MALFORMED) => Code::InvalidArgument,
        Some(codes::ALREADY_EXISTS) => Code::AlreadyExists,
        Some(codes::AUTH_FAILED) | Some(codes::EXPIRED) => Code::Unauthenticated,
        Some(codes::SERVER_BUSY) | Some(codes::UPDATING) => Code::Unavailable,
        Some(_) => Code::Internal,
        None => match e {
            E::Transport { .. } | E::Status { .. } | E::RetriesExhausted { .. } => {
                Code::Unavailable
            }
            E::JobTimeout { .. } | E::WaitTimeout { .. } => Code::DeadlineExceeded,
            _ => Code::Internal,
        },
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = e.code();
        // Expected outcomes (a CO probing for idempotency) are not failures
        // worth a warning; everything else is logged once, here.
        match code {
            Code::NotFound | Code::AlreadyExists | Code::Aborted | Code::InvalidArgument => {
                tracing::debug!(code = ?code, error = %e, "request refused")
            }
            _ => tracing::warn!(code = ?code, error = %e, "request failed"),
        }
        Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: i32) -> Error {
        Error::Cloud(iaas_client::Error::Api {
            action: "AttachVolumes".into(),
            code,
            message: "m".into(),
        })
    }

    #[test]
    fn maps_cloud_codes() {
        assert_eq!(api(2100).code(), Code::NotFound);
        assert_eq!(api(5200).code(), Code::ResourceExhausted);
        assert_eq!(api(1400).code(), Code::FailedPrecondition);
        assert_eq!(api(5400).code(), Code::FailedPrecondition);
        assert_eq!(api(5100).code(), Code::Unavailable);
        assert_eq!(api(5000).code(), Code::Internal);
    }

    #[test]
    fn invalid_argument_names_the_field() {
        let s: Status = Error::invalid("volume_id", "must not be empty").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("volume_id"), "{}", s.message());
    }
}

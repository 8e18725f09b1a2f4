//! The one error type at the library boundary.

use std::time::Duration;

use iaas_client::codes::RetryClass;

use crate::model::ModelError;

/// Why an `ensure` or `delete` did not complete.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The desired model is invalid; the message names the field. Fix the object.
    #[error("{0}")]
    InvalidSpec(#[from] ModelError),
    /// A resource the desired state names does not exist (a reused LB id, an EIP).
    #[error("{field}: {kind} {id} does not exist")]
    ReferenceNotFound {
        /// The desired-model field naming it.
        field: String,
        /// `load balancer`, `eip`, ...
        kind: &'static str,
        /// The id or address given.
        id: String,
    },
    /// The desired state collides with something we do not own (a port taken
    /// by a foreign listener, an EIP bound elsewhere).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A resource stayed in a transition (creating, updating, deleting) past the wait bound.
    #[error("{what} still busy after waiting {waited:?}")]
    Busy {
        /// What was awaited, with its id and state.
        what: String,
        /// How long we waited.
        waited: Duration,
    },
    /// An IaaS call or job failed.
    #[error("{step}: {source}")]
    Iaas {
        /// What the reconciler was doing (for example `create load balancer`).
        step: String,
        /// The client's error.
        #[source]
        source: iaas_client::Error,
    },
}

impl Error {
    /// Wraps a client error with the step it failed in.
    pub fn iaas(step: impl Into<String>, source: iaas_client::Error) -> Self {
        Error::Iaas {
            step: step.into(),
            source,
        }
    }

    /// A short stable label for metrics and Event reasons.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "invalid_spec",
            Error::ReferenceNotFound { .. } => "reference_not_found",
            Error::Conflict(_) => "conflict",
            Error::Busy { .. } => "busy",
            Error::Iaas { source, .. } => match source {
                iaas_client::Error::JobFailed { .. } => "job_failed",
                other => other.metric_label(),
            },
        }
    }

    /// Whether trying again later (with backoff) can succeed without the
    /// object changing. Failed jobs count as retryable: the cloud rolled them
    /// back and the next reconcile re-derives everything from the cloud.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::InvalidSpec(_) | Error::ReferenceNotFound { .. } | Error::Conflict(_) => false,
            Error::Busy { .. } => true,
            Error::Iaas { source, .. } => match source {
                iaas_client::Error::JobFailed { .. } => true,
                other => other.retry_class() != RetryClass::Permanent,
            },
        }
    }

    /// The IaaS ret_code behind this error, if any.
    pub fn code(&self) -> Option<i32> {
        match self {
            Error::Iaas { source, .. } => source.code(),
            _ => None,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_retry() {
        let e = Error::from(ModelError::new("listeners[0].port", "must be 1..65535"));
        assert_eq!(e.metric_label(), "invalid_spec");
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("listeners[0].port"));
        let busy = Error::Busy {
            what: "loadbalancer lb-1 (deleting)".into(),
            waited: Duration::from_secs(1),
        };
        assert!(busy.is_retryable());
        assert_eq!(busy.metric_label(), "busy");
        let api = Error::iaas(
            "delete security group",
            iaas_client::Error::Api {
                action: "DeleteSecurityGroups".into(),
                code: 5400,
                message: "in use".into(),
            },
        );
        assert_eq!(api.code(), Some(5400));
        assert_eq!(api.metric_label(), "dependency_exists");
        assert!(!api.is_retryable());
        let busy_api = Error::iaas(
            "x",
            iaas_client::Error::Api {
                action: "X".into(),
                code: 5100,
                message: "busy".into(),
            },
        );
        assert!(busy_api.is_retryable());
        let job = Error::iaas(
            "create",
            iaas_client::Error::JobFailed {
                job_id: "j-1".into(),
                action: "CreateLoadBalancer".into(),
                code: 5000,
                message: "boom".into(),
            },
        );
        assert!(job.is_retryable());
        assert_eq!(job.metric_label(), "job_failed");
        let c = Error::ReferenceNotFound {
            field: "reuse_existing".into(),
            kind: "load balancer",
            id: "lb-x".into(),
        };
        assert_eq!(c.metric_label(), "reference_not_found");
        assert!(c.to_string().contains("reuse_existing"));
    }
}

//! The one error type at the crate boundary.
//!
//! Every failure a caller can see is an [`Error`]; each variant knows its
//! retry class and a short metric label, so controllers can map it to a
//! requeue policy or a gRPC code in one place.

use std::error::Error as StdError;
use std::time::Duration;

use crate::codes::{self, RetryClass};

/// A failed IaaS call, job wait or client setup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint answered with a non-zero `ret_code`.
    #[error("{action}: ret_code {code} ({label}): {message}", label = codes::label(*code))]
    Api {
        /// The action that failed.
        action: String,
        /// QingCloud `ret_code`.
        code: i32,
        /// The endpoint's message, verbatim.
        message: String,
    },
    /// The request did not complete: connection refused, TLS failure, timeout.
    #[error("{action}: transport error: {}", chain(source))]
    Transport {
        /// The action being sent.
        action: String,
        /// The underlying HTTP error.
        #[source]
        source: reqwest::Error,
    },
    /// The endpoint answered something that is not a valid response envelope.
    #[error("{action}: cannot decode response: {detail}")]
    Decode {
        /// The action whose response failed to decode.
        action: String,
        /// What was wrong (HTTP status, parse error, a short body excerpt).
        detail: String,
    },
    /// The endpoint answered a non-2xx HTTP status without a JSON envelope
    /// (a proxy or load balancer in front of the API, typically).
    #[error("{action}: HTTP status {status}: {detail}")]
    Status {
        /// The action being sent.
        action: String,
        /// HTTP status code.
        status: u16,
        /// A short excerpt of the body.
        detail: String,
    },
    /// An asynchronous job ended in `failed`.
    #[error("job {job_id} ({action}) failed: ret_code {code}: {message}")]
    JobFailed {
        /// `j-xxxx`.
        job_id: String,
        /// The action that created the job.
        action: String,
        /// The job's `error_code`.
        code: i32,
        /// The job's `error_message`.
        message: String,
    },
    /// A job was still pending or working when the wait deadline passed.
    #[error("job {job_id} not finished after waiting {waited:?}")]
    JobTimeout {
        /// `j-xxxx`.
        job_id: String,
        /// How long the client waited.
        waited: Duration,
    },
    /// A resource did not reach the awaited state before the deadline.
    #[error("timed out after {waited:?} waiting for {what}")]
    WaitTimeout {
        /// What was awaited (for example `volume vol-x to be available`).
        what: String,
        /// How long the client waited.
        waited: Duration,
    },
    /// Every attempt failed with a retryable error and the retry deadline passed.
    #[error(
        "{action}: gave up after {attempts} attempts (retry deadline passed); last error: {last}"
    )]
    RetriesExhausted {
        /// The action being retried.
        action: String,
        /// Attempts made, including the first.
        attempts: u32,
        /// The error of the last attempt.
        last: Box<Error>,
    },
    /// Invalid or missing configuration; the message names the field, variable or file.
    #[error("configuration: {0}")]
    Config(String),
    /// The request could not be turned into parameters.
    #[error("cannot build request: {0}")]
    Request(String),
}

impl Error {
    /// The IaaS `ret_code` behind this error, if any (looks through retries;
    /// a failed job reports its `error_code`).
    pub fn code(&self) -> Option<i32> {
        match self {
            Error::Api { code, .. } | Error::JobFailed { code, .. } => Some(*code),
            Error::RetriesExhausted { last, .. } => last.code(),
            _ => None,
        }
    }

    /// Whether the resource named in the request does not exist (ret_code 2100).
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(codes::NOT_FOUND)
    }

    /// How a caller should treat this error if it wants to try again later.
    ///
    /// Transport failures and job timeouts are transient; configuration and
    /// request-building errors never heal by themselves.
    pub fn retry_class(&self) -> RetryClass {
        match self {
            Error::Api { code, message, .. } => codes::retry_class(*code, message),
            Error::Transport { .. } | Error::JobTimeout { .. } | Error::WaitTimeout { .. } => {
                RetryClass::Transient
            }
            Error::Status { status, .. } if *status == 429 => RetryClass::Throttled,
            Error::Status { status, .. } if *status >= 500 => RetryClass::Transient,
            Error::Status { .. } => RetryClass::Permanent,
            Error::RetriesExhausted { last, .. } => last.retry_class(),
            Error::Decode { .. }
            | Error::JobFailed { .. }
            | Error::Config(_)
            | Error::Request(_) => RetryClass::Permanent,
        }
    }

    /// A short stable label for metrics (`result` label of call counters).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Api { code, .. } => codes::label(*code),
            Error::Transport { .. } => "transport",
            Error::Decode { .. } => "decode",
            Error::Status { .. } => "http_status",
            Error::WaitTimeout { .. } => "wait_timeout",
            Error::JobFailed { .. } => "job_failed",
            Error::JobTimeout { .. } => "job_timeout",
            Error::RetriesExhausted { last, .. } => last.metric_label(),
            Error::Config(_) => "config",
            Error::Request(_) => "request",
        }
    }

    /// Whether this is a TLS failure (certificate rejected, handshake refused)
    /// rather than a network problem; retrying does not help.
    pub fn is_tls_failure(&self) -> bool {
        match self {
            Error::Transport { source, .. } => causes(source).any(|e| e.is::<rustls::Error>()),
            Error::RetriesExhausted { last, .. } => last.is_tls_failure(),
            _ => false,
        }
    }

    /// The action this error concerns, when there is one.
    pub fn action(&self) -> Option<&str> {
        match self {
            Error::Api { action, .. }
            | Error::Transport { action, .. }
            | Error::Decode { action, .. }
            | Error::Status { action, .. }
            | Error::JobFailed { action, .. }
            | Error::RetriesExhausted { action, .. } => Some(action),
            _ => None,
        }
    }
}

/// Walks an error's causes, looking inside `io::Error` wrappers too (their
/// `source()` skips the wrapped error, which is where rustls puts its own).
fn causes<'a>(
    e: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(e), |&cur: &&'a (dyn StdError + 'static)| {
        if let Some(inner) = cur
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            return Some(inner as &(dyn StdError + 'static));
        }
        cur.source()
    })
}

/// `outer: cause: root cause`, skipping levels that repeat their child's text.
fn chain(e: &reqwest::Error) -> String {
    let texts: Vec<String> = causes(e).map(|c| c.to_string()).collect();
    let mut out = String::new();
    for (i, t) in texts.iter().enumerate() {
        if texts.get(i + 1).is_some_and(|next| next == t) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(t);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: i32, message: &str) -> Error {
        Error::Api {
            action: "DescribeVolumes".into(),
            code,
            message: message.into(),
        }
    }

    #[test]
    fn code_looks_through_retries() {
        let e = Error::RetriesExhausted {
            action: "DescribeVolumes".into(),
            attempts: 4,
            last: Box::new(api(5100, "busy")),
        };
        assert_eq!(e.code(), Some(5100));
        assert_eq!(e.retry_class(), RetryClass::Transient);
        assert_eq!(e.metric_label(), "server_busy");
        let text = e.to_string();
        assert!(text.contains("gave up after 4 attempts"), "{text}");
        assert!(text.contains("retry deadline passed"), "{text}");
        assert!(text.contains("5100"), "{text}");
    }

    #[test]
    fn classes_and_labels() {
        assert!(api(2100, "resource [vol-x] not found").is_not_found());
        assert!(!api(1100, "x").is_not_found());
        assert_eq!(api(2500, "quota").retry_class(), RetryClass::Throttled);
        assert_eq!(
            api(1400, "please try later").retry_class(),
            RetryClass::Transient
        );
        assert_eq!(api(1100, "bad").retry_class(), RetryClass::Permanent);
        assert_eq!(api(1100, "bad").metric_label(), "malformed");
        let d = Error::Decode {
            action: "X".into(),
            detail: "d".into(),
        };
        assert_eq!(d.retry_class(), RetryClass::Permanent);
        assert_eq!(d.metric_label(), "decode");
        assert_eq!(d.code(), None);
        let j = Error::JobFailed {
            job_id: "j-1".into(),
            action: "AttachVolumes".into(),
            code: 5200,
            message: "limit".into(),
        };
        assert_eq!(j.code(), Some(5200));
        assert_eq!(j.action(), Some("AttachVolumes"));
        assert!(Error::Config("zone".into()).to_string().contains("zone"));
    }

    #[test]
    fn api_display_names_action_code_and_label() {
        let s = api(2100, "resource [vol-x] not found").to_string();
        assert_eq!(
            s,
            "DescribeVolumes: ret_code 2100 (not_found): resource [vol-x] not found"
        );
    }
}

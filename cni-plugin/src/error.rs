//! The one error type of the plugin and its mapping to CNI error codes.

use serde::Serialize;

/// CNI error codes (spec 1.1.0, "Error" section); 100 and above are this
/// plugin's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    /// 1: incompatible CNI version.
    IncompatibleVersion = 1,
    /// 2: unsupported field in the network configuration.
    UnsupportedField = 2,
    /// 3: container unknown or does not exist.
    UnknownContainer = 3,
    /// 4: invalid necessary environment variables.
    InvalidEnv = 4,
    /// 5: I/O failure.
    Io = 5,
    /// 6: failed to decode content.
    Decode = 6,
    /// 7: invalid network configuration.
    InvalidConfig = 7,
    /// 11: try again later.
    TryAgain = 11,
    /// 50: the plugin is not available (cannot service ADD).
    NotAvailable = 50,
    /// 100: the pod address range has no free address.
    RangeExhausted = 100,
    /// 101: CHECK found the container's network differs from prevResult.
    CheckFailed = 101,
    /// 102: a kernel (netlink) operation failed.
    Netlink = 102,
}

/// A plugin failure: a code, a one-line message and optional details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if .details.is_empty() { String::new() } else { format!(": {}", .details) })]
pub struct CniError {
    /// The CNI code.
    pub code: Code,
    /// Short message.
    pub msg: String,
    /// Longer explanation (may be empty).
    pub details: String,
}

impl CniError {
    /// An error with a code and message.
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error JSON the spec asks for on stdout, for `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_string(&Wire {
            cni_version,
            code: self.code as u32,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|_| {
            format!(
                "{{\"cniVersion\":\"{cni_version}\",\"code\":5,\"msg\":\"error encoding failed\"}}"
            )
        })
    }
}

/// Result of a plugin step.
pub type CniResult<T> = Result<T, CniError>;

/// Maps an I/O error with context.
pub fn io_err(context: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(Code::Io, context.to_string()).with_details(e.to_string())
}

/// Maps a netlink error with context.
pub fn nl_err(context: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(Code::Netlink, context.to_string()).with_details(e.to_string())
}

//! QingCloud `ret_code` values and how a client should treat them.

/// Success.
pub const OK: i32 = 0;
/// Malformed request, missing or invalid parameter.
pub const MALFORMED: i32 = 1100;
/// Authentication failed (unknown key, bad signature).
pub const AUTH_FAILED: i32 = 1200;
/// Request expired (time_stamp too old or in the future).
pub const EXPIRED: i32 = 1300;
/// Permission denied: not the owner, wrong resource state, or "lease info not ready yet".
pub const PERMISSION_DENIED: i32 = 1400;
/// Resource not found.
pub const NOT_FOUND: i32 = 2100;
/// Resource already exists.
pub const ALREADY_EXISTS: i32 = 2110;
/// Insufficient balance.
pub const INSUFFICIENT_BALANCE: i32 = 2400;
/// Quota exceeded, including the API request quota (QingCloud's throttling).
pub const QUOTA_EXCEEDED: i32 = 2500;
/// Internal error.
pub const INTERNAL: i32 = 5000;
/// Server busy.
pub const SERVER_BUSY: i32 = 5100;
/// Insufficient resources.
pub const INSUFFICIENT_RESOURCES: i32 = 5200;
/// Service updating.
pub const UPDATING: i32 = 5300;
/// A dependent resource still exists.
pub const DEPENDENCY_EXISTS: i32 = 5400;

/// How a failed call should be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    /// Do not retry: the request itself is wrong or the state forbids it.
    Permanent,
    /// Retry with the normal backoff.
    Transient,
    /// Retry with a longer backoff (quota and throttling).
    Throttled,
}

/// Classifies a ret_code; `message` is consulted for the 1400 "try later" case.
pub fn retry_class(code: i32, message: &str) -> RetryClass {
    match code {
        INTERNAL | SERVER_BUSY | UPDATING => RetryClass::Transient,
        QUOTA_EXCEEDED => RetryClass::Throttled,
        PERMISSION_DENIED if is_try_later(message) => RetryClass::Transient,
        _ => RetryClass::Permanent,
    }
}

/// QingCloud answers 1400 with "lease info not ready yet, please try later"
/// for a resource still being billed in; that is transient.
fn is_try_later(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("try later") || m.contains("not ready yet")
}

/// A short stable label for metrics and logs.
pub fn label(code: i32) -> &'static str {
    match code {
        OK => "ok",
        MALFORMED => "malformed",
        AUTH_FAILED => "auth_failed",
        EXPIRED => "expired",
        PERMISSION_DENIED => "permission_denied",
        NOT_FOUND => "not_found",
        ALREADY_EXISTS => "already_exists",
        INSUFFICIENT_BALANCE => "insufficient_balance",
        QUOTA_EXCEEDED => "quota_exceeded",
        INTERNAL => "internal",
        SERVER_BUSY => "server_busy",
        INSUFFICIENT_RESOURCES => "insufficient_resources",
        UPDATING => "updating",
        DEPENDENCY_EXISTS => "dependency_exists",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(retry_class(5100, ""), RetryClass::Transient);
        assert_eq!(retry_class(5000, ""), RetryClass::Transient);
        assert_eq!(retry_class(5300, ""), RetryClass::Transient);
        assert_eq!(retry_class(2500, ""), RetryClass::Throttled);
        assert_eq!(
            retry_class(1400, "lease info not ready yet, please try later"),
            RetryClass::Transient
        );
        assert_eq!(
            retry_class(1400, "resource [vol-x] is in use"),
            RetryClass::Permanent
        );
        assert_eq!(retry_class(2100, ""), RetryClass::Permanent);
        assert_eq!(retry_class(1100, ""), RetryClass::Permanent);
    }
}

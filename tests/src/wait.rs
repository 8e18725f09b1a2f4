//! Polling for a condition in tests against a real control plane.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `f` every 200 ms until it yields a value; panics naming `what`
/// once `timeout` has passed.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

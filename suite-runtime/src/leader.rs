//! Leader election on a `coordination.k8s.io/v1` Lease (through
//! `kube-lease-manager`, which writes the Lease with server-side apply so two
//! replicas can never both hold it).
//!
//! [`run_while_leader`] runs the work only while this replica holds the
//! Lease: it starts the work when the Lease is acquired and aborts it the
//! moment the Lease is lost, then contends again. On shutdown the work is
//! given a grace period to finish and the Lease is released, so a standby
//! takes over without waiting for expiry.

use std::future::Future;
use std::time::Duration;

use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseParams};

use crate::http::Health;
use crate::shutdown::Shutdown;

/// How long the work may take to stop after shutdown before it is aborted.
pub const STOP_GRACE: Duration = Duration::from_secs(20);

/// Lease settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderConfig {
    /// Lease name.
    pub lease_name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity (the pod name, unique among replicas).
    pub identity: String,
    /// Seconds a lock stays valid after its last renewal.
    pub lease_duration_secs: u64,
    /// Seconds before expiry at which the holder renews (also the tolerated clock skew).
    pub renew_grace_secs: u64,
}

impl LeaderConfig {
    /// A 15 s lease renewed 5 s before expiry.
    pub fn new(lease_name: &str, namespace: &str, identity: &str) -> Self {
        LeaderConfig {
            lease_name: lease_name.to_string(),
            namespace: namespace.to_string(),
            identity: identity.to_string(),
            lease_duration_secs: 15,
            renew_grace_secs: 5,
        }
    }

    fn validate(&self) -> Result<(), LeaderError> {
        let bad = |field: &str, msg: &str| Err(LeaderError::Config(format!("{field}: {msg}")));
        if self.lease_name.is_empty() {
            return bad("lease_name", "empty");
        }
        if self.namespace.is_empty() {
            return bad("namespace", "empty");
        }
        if self.identity.is_empty() {
            return bad("identity", "empty");
        }
        if self.renew_grace_secs == 0 || self.renew_grace_secs >= self.lease_duration_secs {
            return bad(
                "renew_grace_secs",
                "must be at least 1 and less than lease_duration_secs",
            );
        }
        Ok(())
    }
}

/// Leader election failed to start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// Invalid [`LeaderConfig`]; names the field.
    #[error("leader election config: {0}")]
    Config(String),
    /// The Lease could not be created or read.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
}

/// Runs `work()` whenever this replica holds the Lease, until `shutdown`.
///
/// `work` is called anew each time the Lease is (re)acquired; the future it
/// returns is aborted when the Lease is lost. It should also watch
/// `shutdown` itself so it can stop cleanly within [`STOP_GRACE`].
/// `health`'s leader flag follows the Lease.
pub async fn run_while_leader<F, Fut>(
    client: kube::Client,
    config: LeaderConfig,
    health: Health,
    shutdown: Shutdown,
    mut work: F,
) -> Result<(), LeaderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    config.validate()?;
    let params = LeaseParams::new(
        config.identity.clone(),
        config.lease_duration_secs,
        config.renew_grace_secs,
    );
    let manager = LeaseManager::new(
        client,
        config.lease_name.clone(),
        config.namespace.clone(),
        params,
        LeaseCreateMode::AutoCreate,
    )
    .await?;
    let (mut leading, watcher) = manager.watch().await;
    tracing::info!(lease = %config.lease_name, identity = %config.identity, "contending for leadership");

    'outer: loop {
        // Wait to become leader (or to be told to stop).
        tokio::select! {
            r = leading.wait_for(|l| *l) => if r.is_err() {
                tracing::error!("leader election watcher stopped");
                break 'outer;
            },
            _ = shutdown.wait() => break 'outer,
        }
        tracing::info!(identity = %config.identity, "acquired leadership; starting work");
        health.set_leader(true);
        let mut task = tokio::spawn(work());
        let lost = tokio::select! {
            r = leading.wait_for(|l| !*l) => {
                if r.is_err() {
                    tracing::error!("leader election watcher stopped");
                }
                true
            }
            _ = shutdown.wait() => false,
            _ = &mut task => {
                tracing::info!("work finished while leading");
                health.set_leader(false);
                break 'outer;
            }
        };
        health.set_leader(false);
        if lost {
            // Another replica may already act: stop at once, never overlap.
            tracing::warn!(identity = %config.identity, "lost leadership; stopping work");
            task.abort();
            let _ = task.await;
            if leading.has_changed().is_err() {
                break 'outer;
            }
        } else {
            if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
                tracing::warn!("work did not stop within the grace period; aborting it");
                task.abort();
                let _ = task.await;
            }
            break 'outer;
        }
    }
    // Dropping the receiver makes the watcher release the Lease and exit.
    drop(leading);
    match tokio::time::timeout(Duration::from_secs(5), watcher).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "releasing the lease failed"),
        Ok(_) => tracing::info!("lease released"),
        Err(_) => tracing::warn!("lease release timed out; it expires by itself"),
    }
    health.set_leader(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_field() {
        let mut c = LeaderConfig::new("ccm", "kube-system", "a");
        assert!(c.validate().is_ok());
        c.renew_grace_secs = 15;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("renew_grace_secs")
        );
        let c = LeaderConfig::new("ccm", "kube-system", "");
        assert!(c.validate().unwrap_err().to_string().contains("identity"));
    }
}

//! What every controller shares: clients, configuration, Events, metrics,
//! a short-lived instance cache (to batch DescribeInstances when many nodes
//! join at once) and per-object retry backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iaas_client::actions::DescribeInstances;
use iaas_client::model::Instance;
use suite_runtime::events::EventRecorder;
use suite_runtime::metrics::ReconcileMetrics;

use crate::config::CloudConfig;

/// Name under which Events are reported.
pub const REPORTER: &str = "cloud-controller-manager";

/// Shared state of the controllers.
#[derive(Clone)]
pub struct Context {
    /// Kubernetes client.
    pub kube: kube::Client,
    /// IaaS client.
    pub cloud: iaas_client::Client,
    /// Load balancer reconciler (owns LBs by the cluster id).
    pub lbs: lb_controller::Reconciler,
    /// Validated configuration.
    pub config: Arc<CloudConfig>,
    /// Event recorder.
    pub events: EventRecorder,
    /// Reconcile counters.
    pub metrics: ReconcileMetrics,
    /// Recently listed instances.
    pub instances: Arc<InstanceCache>,
    /// Per-object failure counts for backoff.
    pub backoff: Arc<Backoff>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("cloud", &self.cloud)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// Builds the context.
    pub fn new(
        kube: kube::Client,
        cloud: iaas_client::Client,
        config: CloudConfig,
        metrics: ReconcileMetrics,
        identity: Option<String>,
    ) -> Self {
        let lbs = lb_controller::Reconciler::new(cloud.clone(), config.cluster_id.clone());
        Context {
            events: EventRecorder::new(kube.clone(), REPORTER, identity),
            kube,
            cloud,
            lbs,
            config: Arc::new(config),
            metrics,
            instances: Arc::new(InstanceCache::new(Duration::from_secs(5))),
            backoff: Arc::new(Backoff::default()),
        }
    }
}

/// The errors of the controllers; each maps to a metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An IaaS call failed (the message is the cloud's).
    #[error("{0}")]
    Cloud(#[from] iaas_client::Error),
    /// The load balancer reconciler failed.
    #[error("{0}")]
    Lb(#[from] lb_controller::Error),
    /// No instance matched a node.
    #[error("{0}")]
    NoInstance(String),
    /// A Service cannot be translated (the message names the field or annotation).
    #[error("{0}")]
    InvalidService(String),
}

impl Error {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Cloud(_) => "cloud",
            Error::Lb(_) => "loadbalancer",
            Error::NoInstance(_) => "no_instance",
            Error::InvalidService(_) => "invalid_service",
        }
    }
}

/// A cached full instance listing. Many nodes joining together need one
/// DescribeInstances walk, not one each.
#[derive(Debug)]
pub struct InstanceCache {
    ttl: Duration,
    inner: tokio::sync::Mutex<Option<(Instant, Arc<Vec<Instance>>)>>,
}

impl InstanceCache {
    /// A cache whose listing lives `ttl`.
    pub fn new(ttl: Duration) -> Self {
        InstanceCache {
            ttl,
            inner: tokio::sync::Mutex::new(None),
        }
    }

    /// Every instance of the zone (served from the cache when fresh).
    pub async fn all(
        &self,
        cloud: &iaas_client::Client,
    ) -> Result<Arc<Vec<Instance>>, iaas_client::Error> {
        let mut guard = self.inner.lock().await;
        if let Some((at, list)) = guard.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(list.clone());
        }
        let list = Arc::new(
            cloud
                .describe_instances_all(&DescribeInstances {
                    verbose: true,
                    ..Default::default()
                })
                .await?,
        );
        *guard = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    /// Drops the cached listing (after a miss, so a retry sees new instances).
    pub async fn invalidate(&self) {
        *self.inner.lock().await = None;
    }
}

/// Exponential per-object backoff for the work queues: 2 s doubling to 5 min.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// First retry delay.
    pub const BASE: Duration = Duration::from_secs(2);
    /// Longest retry delay.
    pub const MAX: Duration = Duration::from_secs(300);

    /// Records a failure of `key` and returns how long to wait before retrying.
    pub fn next(&self, key: &str) -> Duration {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.to_string()).or_insert(0);
        let delay = Self::BASE
            .saturating_mul(1u32 << (*n).min(16))
            .min(Self::MAX);
        *n = n.saturating_add(1);
        delay
    }

    /// Forgets `key`'s failures (after a success).
    pub fn reset(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// Describes instances by id in batches of 100 ids per call (the API's page
/// size), so a resync of N nodes costs ceil(N/100) calls.
pub async fn describe_instances_by_id(
    cloud: &iaas_client::Client,
    ids: &[String],
) -> Result<Vec<Instance>, iaas_client::Error> {
    let mut out = Vec::new();
    for chunk in ids.chunks(100) {
        out.extend(
            cloud
                .describe_instances_all(&DescribeInstances {
                    instances: chunk.to_vec(),
                    verbose: true,
                    ..Default::default()
                })
                .await?,
        );
    }
    Ok(out)
}

/// RFC 3339 "now" for condition timestamps.
pub fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_resets() {
        let b = Backoff::default();
        assert_eq!(b.next("a"), Duration::from_secs(2));
        assert_eq!(b.next("a"), Duration::from_secs(4));
        assert_eq!(b.next("b"), Duration::from_secs(2));
        for _ in 0..20 {
            b.next("a");
        }
        assert_eq!(b.next("a"), Backoff::MAX);
        b.reset("a");
        assert_eq!(b.next("a"), Duration::from_secs(2));
    }
}

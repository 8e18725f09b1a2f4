//! Call metrics: Prometheus families plus a cheap in-process view.
//!
//! - `iaas_client_calls_total{action,result}`: one per call (not per
//!   attempt); `result` is `ok` or the error's [`crate::Error::metric_label`].
//! - `iaas_client_call_duration_seconds{action}`: wall time of a call,
//!   retries and rate-limit waits included.
//! - `iaas_client_retries_total{action}`: attempts after the first.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Per-action counters as seen by this process (see [`crate::Client::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Calls made (each counts once however many attempts it took).
    pub calls: u64,
    /// Calls that ended in an error.
    pub errors: u64,
    /// Retry attempts (attempts after the first).
    pub retries: u64,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    action: String,
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: String,
}

type HistogramCtor = fn() -> Histogram;

fn new_histogram() -> Histogram {
    // 5 ms .. ~82 s: covers loopback calls up to calls that retried for a minute.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// The metric families of one client (shared by its clones).
#[derive(Debug)]
pub(crate) struct Metrics {
    calls: Family<CallLabels, Counter>,
    duration: Family<ActionLabels, Histogram, HistogramCtor>,
    retries: Family<ActionLabels, Counter>,
    stats: Mutex<BTreeMap<String, CallStats>>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Metrics {
            calls: Family::default(),
            duration: Family::new_with_constructor(new_histogram as HistogramCtor),
            retries: Family::default(),
            stats: Mutex::new(BTreeMap::new()),
        }
    }

    /// Registers the families; they are shared handles, so every clone of
    /// the client keeps feeding the registry.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "iaas_client_calls",
            "IaaS API calls by action and result (ok or error label)",
            self.calls.clone(),
        );
        registry.register_with_unit(
            "iaas_client_call_duration",
            "Wall time of IaaS API calls including retries and rate-limit waits",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register(
            "iaas_client_retries",
            "Retry attempts of IaaS API calls",
            self.retries.clone(),
        );
    }

    pub(crate) fn record_call(&self, action: &str, result: &'static str, elapsed: Duration) {
        self.calls
            .get_or_create(&CallLabels {
                action: action.to_string(),
                result: result.to_string(),
            })
            .inc();
        self.duration
            .get_or_create(&ActionLabels {
                action: action.to_string(),
            })
            .observe(elapsed.as_secs_f64());
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let entry = stats.entry(action.to_string()).or_default();
        entry.calls += 1;
        if result != "ok" {
            entry.errors += 1;
        }
    }

    pub(crate) fn record_retry(&self, action: &str) {
        self.retries
            .get_or_create(&ActionLabels {
                action: action.to_string(),
            })
            .inc();
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.entry(action.to_string()).or_default().retries += 1;
    }

    pub(crate) fn snapshot(&self) -> BTreeMap<String, CallStats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_encodes() {
        let m = Metrics::new();
        m.record_call("DescribeVolumes", "ok", Duration::from_millis(3));
        m.record_retry("DescribeVolumes");
        m.record_call("DescribeVolumes", "server_busy", Duration::from_millis(300));
        let s = m.snapshot();
        assert_eq!(
            s["DescribeVolumes"],
            CallStats {
                calls: 2,
                errors: 1,
                retries: 1
            }
        );
        let mut reg = Registry::default();
        m.register(&mut reg);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(
            out.contains(r#"iaas_client_calls_total{action="DescribeVolumes",result="ok"} 1"#),
            "{out}"
        );
        assert!(
            out.contains(r#"iaas_client_retries_total{action="DescribeVolumes"} 1"#),
            "{out}"
        );
        assert!(
            out.contains("iaas_client_call_duration_seconds_count"),
            "{out}"
        );
    }
}

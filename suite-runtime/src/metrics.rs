//! Reconcile counters shared by controllers, labelled by controller and
//! outcome (`ok` or an error's metric label).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Counters every controller records into.
#[derive(Debug, Clone, Default)]
pub struct ReconcileMetrics {
    reconciles: Family<Labels, Counter>,
    leader: Gauge,
}

impl ReconcileMetrics {
    /// Creates the metrics and registers them (`<prefix>_reconciles_total`, `<prefix>_leader`).
    pub fn register(registry: &mut Registry, prefix: &str) -> Self {
        let m = ReconcileMetrics::default();
        registry.register(
            format!("{prefix}_reconciles"),
            "Reconciliations by controller and result (ok or an error label)",
            m.reconciles.clone(),
        );
        registry.register(
            format!("{prefix}_leader"),
            "1 while this replica holds the leader lease",
            m.leader.clone(),
        );
        m
    }

    /// Counts one reconciliation of `controller` ending in `result`.
    pub fn record(&self, controller: &str, result: &str) {
        self.reconciles
            .get_or_create(&vec![
                ("controller".to_string(), controller.to_string()),
                ("result".to_string(), result.to_string()),
            ])
            .inc();
    }

    /// How many reconciliations of `controller` ended in `result` (for tests and benchmarks).
    pub fn count(&self, controller: &str, result: &str) -> u64 {
        self.reconciles
            .get_or_create(&vec![
                ("controller".to_string(), controller.to_string()),
                ("result".to_string(), result.to_string()),
            ])
            .get()
    }

    /// Sets the leader gauge.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }
}

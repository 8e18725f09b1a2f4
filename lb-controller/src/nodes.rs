//! Which Kubernetes Nodes may receive load balancer traffic. The one rule
//! shared by the Service controller (cloud-controller-manager) and the
//! Ingress controller, so both send traffic to the same set of instances.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::runtime::watcher;

/// Taint the cloud-controller-manager puts on nodes whose instance is stopped.
pub const TAINT_SHUTDOWN: &str = "node.cloudprovider.kubernetes.io/shutdown";
/// Taint kubelet (`--cloud-provider=external`) puts on nodes not yet initialised.
pub const TAINT_UNINITIALIZED: &str = "node.cloudprovider.kubernetes.io/uninitialized";
/// Standard label excluding a node from external load balancers.
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// Parses a providerID of `provider` (`<provider>://<zone>/<instance>`, or
/// the AWS-style `<provider>:///<zone>/<instance>`) into `(zone, instance
/// id)`; `None` for another provider's id or a malformed one.
pub fn parse_provider_id(provider: &str, id: &str) -> Option<(String, String)> {
    let rest = id.strip_prefix(provider)?.strip_prefix("://")?;
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let (zone, instance) = rest.split_once('/')?;
    if instance.is_empty() || instance.contains('/') {
        return None;
    }
    Some((zone.to_string(), instance.to_string()))
}

fn ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

fn tainted(n: &Node) -> bool {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| {
            t.iter()
                .any(|t| t.key == TAINT_SHUTDOWN || t.key == TAINT_UNINITIALIZED)
        })
}

/// Instance ids of the nodes that may receive LB traffic, keyed by node
/// name: Ready, not being deleted, not tainted shutdown or uninitialised
/// (traffic would be dropped), not excluded by [`EXCLUDE_LABEL`], and with
/// a providerID of `provider_name` (another provider's node is no instance
/// of ours and cannot be a backend).
pub fn eligible_nodes<N: std::borrow::Borrow<Node>>(
    nodes: &[N],
    provider_name: &str,
) -> BTreeMap<String, String> {
    nodes
        .iter()
        .filter_map(|n| {
            let n = n.borrow();
            Some((n.name_any(), eligible_instance(n, provider_name)?))
        })
        .collect()
}

/// The instance id of one node if it may receive LB traffic (the test of
/// [`eligible_nodes`] for one node, for callers that track nodes one event
/// at a time).
pub fn eligible_instance(n: &Node, provider_name: &str) -> Option<String> {
    if n.metadata.deletion_timestamp.is_some()
        || !ready(n)
        || tainted(n)
        || n.labels().contains_key(EXCLUDE_LABEL)
    {
        return None;
    }
    let pid = n.spec.as_ref()?.provider_id.as_deref()?;
    let (_zone, id) = parse_provider_id(provider_name, pid)?;
    Some(id)
}

/// A value derived from each Node (its eligible instance id, its routing
/// inputs), kept up to date from a Node watch one event at a time, so a
/// controller learns whether the derived set changed without rescanning
/// (or copying) every Node on every event. Nodes whose value is `None`
/// are not kept.
///
/// A re-list (the watch restarted) is compared as a whole when it ends: a
/// change missed while the watch was down counts, an unchanged re-list
/// does not.
#[derive(Debug)]
pub struct PerNode<T> {
    current: HashMap<String, T>,
    relist: Option<HashMap<String, T>>,
}

impl<T> Default for PerNode<T> {
    fn default() -> Self {
        PerNode {
            current: HashMap::new(),
            relist: None,
        }
    }
}

impl<T: PartialEq> PerNode<T> {
    /// Applies one watch event with `derive`; true when the derived set
    /// changed (always false in the middle of a re-list).
    pub fn on_event(
        &mut self,
        ev: &watcher::Event<Node>,
        derive: impl Fn(&Node) -> Option<T>,
    ) -> bool {
        match ev {
            watcher::Event::Init => {
                self.relist = Some(HashMap::new());
                false
            }
            watcher::Event::InitApply(n) => {
                if let Some(v) = derive(n) {
                    self.relist
                        .get_or_insert_with(HashMap::new)
                        .insert(n.name_any(), v);
                }
                false
            }
            watcher::Event::InitDone => {
                let new = self.relist.take().unwrap_or_default();
                let changed = new != self.current;
                self.current = new;
                changed
            }
            watcher::Event::Apply(n) => {
                let name = n.name_any();
                match derive(n) {
                    Some(v) => {
                        let changed = self.current.get(&name) != Some(&v);
                        self.current.insert(name, v);
                        changed
                    }
                    None => self.current.remove(&name).is_some(),
                }
            }
            watcher::Event::Delete(n) => self.current.remove(&n.name_any()).is_some(),
        }
    }

    /// The current values by node name.
    pub fn values(&self) -> &HashMap<String, T> {
        &self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, pid: Option<&str>, ready: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"providerID": pid},
            "status": {"conditions": [{"type": "Ready", "status": ready}]},
        }))
        .unwrap()
    }

    #[test]
    fn provider_ids() {
        let p = |s| parse_provider_id("cloudsuite", s);
        assert_eq!(
            p("cloudsuite://emu1/i-1"),
            Some(("emu1".into(), "i-1".into()))
        );
        assert_eq!(
            p("cloudsuite:///emu1/i-1"),
            Some(("emu1".into(), "i-1".into()))
        );
        for bad in [
            "aws:///emu1/i-1",
            "cloudsuitex://emu1/i-1",
            "cloudsuite://emu1",
            "cloudsuite://emu1/",
            "cloudsuite://emu1/a/b",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_ready_untainted_unexcluded_nodes_of_ours() {
        let mut shutdown = node("shut", Some("cloudsuite://z/i-3"), "True");
        shutdown.spec.as_mut().unwrap().taints = Some(vec![
            serde_json::from_value(json!({"key": TAINT_SHUTDOWN, "effect": "NoSchedule"})).unwrap(),
        ]);
        let mut uninit = node("uninit", Some("cloudsuite://z/i-4"), "True");
        uninit.spec.as_mut().unwrap().taints = Some(vec![
            serde_json::from_value(json!({"key": TAINT_UNINITIALIZED, "effect": "NoSchedule"}))
                .unwrap(),
        ]);
        let mut excluded = node("excl", Some("cloudsuite://z/i-5"), "True");
        excluded
            .metadata
            .labels
            .get_or_insert_default()
            .insert(EXCLUDE_LABEL.into(), String::new());
        let mut going = node("going", Some("cloudsuite://z/i-6"), "True");
        going.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2024-01-01T00:00:00Z".parse().unwrap(),
            ));
        let nodes = vec![
            node("a", Some("cloudsuite://z/i-1"), "True"),
            node("b", Some("cloudsuite:///z/i-2"), "True"),
            node("notready", Some("cloudsuite://z/i-7"), "False"),
            node("unknown", Some("cloudsuite://z/i-8"), "Unknown"),
            node("foreign", Some("aws:///z/i-9"), "True"),
            node("nopid", None, "True"),
            shutdown,
            uninit,
            excluded,
            going,
        ];
        let e = eligible_nodes(&nodes, "cloudsuite");
        assert_eq!(
            e.into_iter().collect::<Vec<_>>(),
            vec![
                ("a".to_string(), "i-1".to_string()),
                ("b".to_string(), "i-2".to_string())
            ]
        );
    }

    #[test]
    fn per_node_reports_only_changes_of_the_derived_set() {
        let mut t = PerNode::default();
        let f = |n: &Node| eligible_instance(n, "cloudsuite");
        let a = node("a", Some("cloudsuite://z1/i-a"), "True");
        let b = node("b", Some("cloudsuite://z1/i-b"), "False");
        assert!(!t.on_event(&watcher::Event::Init, f));
        assert!(!t.on_event(&watcher::Event::InitApply(a.clone()), f));
        assert!(!t.on_event(&watcher::Event::InitApply(b.clone()), f));
        assert!(t.on_event(&watcher::Event::InitDone, f), "first listing");
        assert!(
            !t.on_event(&watcher::Event::Apply(a.clone()), f),
            "heartbeat"
        );
        assert!(
            !t.on_event(&watcher::Event::Apply(b.clone()), f),
            "still not ready"
        );
        let b_ready = node("b", Some("cloudsuite://z1/i-b"), "True");
        assert!(t.on_event(&watcher::Event::Apply(b_ready.clone()), f));
        assert!(
            t.on_event(&watcher::Event::Apply(b.clone()), f),
            "not ready again"
        );
        assert!(
            !t.on_event(&watcher::Event::Delete(b.clone()), f),
            "was not eligible"
        );
        // Re-lists: unchanged fires nothing; one missing `a` fires.
        for ev in [watcher::Event::Init, watcher::Event::InitApply(a.clone())] {
            t.on_event(&ev, f);
        }
        assert!(!t.on_event(&watcher::Event::InitDone, f));
        t.on_event(&watcher::Event::Init, f);
        assert!(t.on_event(&watcher::Event::InitDone, f));
        assert!(t.values().is_empty());
    }
}

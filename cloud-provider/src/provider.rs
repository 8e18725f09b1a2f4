//! Matching Nodes to instances, providerIDs, node addresses and labels:
//! the pure part of node initialisation.
//!
//! providerID form: `<provider>://<zone>/<instance-id>` (default provider
//! `cloudsuite`, e.g. `cloudsuite://pek3a/i-abc123`). The AWS-style
//! `<provider>:///<zone>/<instance-id>` is accepted on input too.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use iaas_client::model::Instance;
use k8s_openapi::api::core::v1::{Node, NodeAddress, Taint};

/// The taints kubelet (`--cloud-provider=external`) puts on new nodes and
/// the CCM on nodes whose instance is stopped (defined once, with the rule
/// of which nodes may be LB backends).
pub use lb_controller::nodes::{TAINT_SHUTDOWN, TAINT_UNINITIALIZED};
/// Label: instance type.
pub const LABEL_INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";
/// Label: zone.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// Label: region.
pub const LABEL_REGION: &str = "topology.kubernetes.io/region";
/// Optional node label naming the instance id (for nodes named otherwise).
pub const LABEL_INSTANCE_ID: &str = "cloudsuite.io/instance-id";
/// Annotation kubelet sets from `--node-ip` when the cloud provider is external.
pub const ANNOTATION_PROVIDED_IP: &str = "alpha.kubernetes.io/provided-node-ip";

/// Instance states in which the machine no longer exists.
pub fn is_gone(status: &str) -> bool {
    matches!(status, "terminated" | "ceased")
}

/// Instance states in which the machine exists but is not running.
pub fn is_shut_down(status: &str) -> bool {
    matches!(status, "stopped" | "suspended")
}

/// Formats a providerID.
pub fn provider_id(provider: &str, zone: &str, instance_id: &str) -> String {
    format!("{provider}://{zone}/{instance_id}")
}

/// Parses a providerID of `provider`: returns `(zone, instance id)`; `None`
/// when it belongs to another provider or is malformed. (The one parser,
/// shared with the Ingress controller.)
pub use lb_controller::nodes::parse_provider_id;

/// A way to find a Node's instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MatchKey {
    /// `spec.providerID` (`<provider>://<zone>/<id>`).
    ProviderId,
    /// Instance id: the `cloudsuite.io/instance-id` label, else the node name.
    InstanceId,
    /// Node name equals the instance name.
    NodeName,
    /// A `Hostname` address (or its first label) equals the instance name.
    Hostname,
    /// An `InternalIP` address (or kubelet's provided node IP) equals an instance private IP.
    InternalIp,
}

impl MatchKey {
    /// The default order: the most specific first.
    pub const DEFAULT_ORDER: [MatchKey; 5] = [
        MatchKey::ProviderId,
        MatchKey::InstanceId,
        MatchKey::NodeName,
        MatchKey::Hostname,
        MatchKey::InternalIp,
    ];

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchKey::ProviderId => "provider-id",
            MatchKey::InstanceId => "instance-id",
            MatchKey::NodeName => "node-name",
            MatchKey::Hostname => "hostname",
            MatchKey::InternalIp => "internal-ip",
        }
    }
}

impl fmt::Display for MatchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MatchKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(
            match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
                "provider-id" | "providerid" => MatchKey::ProviderId,
                "instance-id" => MatchKey::InstanceId,
                "node-name" | "name" => MatchKey::NodeName,
                "hostname" => MatchKey::Hostname,
                "internal-ip" | "ip" | "private-ip" => MatchKey::InternalIp,
                other => {
                    return Err(format!(
                        "unknown match key {other:?} (known: provider-id, instance-id, node-name, hostname, internal-ip)"
                    ));
                }
            },
        )
    }
}

fn addresses_of<'a>(node: &'a Node, kind: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    node.status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter(move |a| a.type_ == kind)
        .map(|a| a.address.as_str())
}

/// The values a node offers for `key` (empty when it has none).
pub fn node_values(node: &Node, key: MatchKey, provider: &str) -> Vec<String> {
    let name = node.metadata.name.clone().unwrap_or_default();
    match key {
        MatchKey::ProviderId => node
            .spec
            .as_ref()
            .and_then(|s| s.provider_id.as_deref())
            .and_then(|p| parse_provider_id(provider, p))
            .map(|(_, id)| vec![id])
            .unwrap_or_default(),
        MatchKey::InstanceId => {
            let label = node
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_INSTANCE_ID))
                .cloned();
            vec![label.unwrap_or(name)]
        }
        MatchKey::NodeName => vec![name],
        MatchKey::Hostname => {
            let mut v: Vec<String> = Vec::new();
            for h in addresses_of(node, "Hostname") {
                for cand in [h, h.split('.').next().unwrap_or(h)] {
                    if !cand.is_empty() && !v.iter().any(|x| x == cand) {
                        v.push(cand.to_string());
                    }
                }
            }
            v
        }
        MatchKey::InternalIp => {
            let mut v: Vec<String> = addresses_of(node, "InternalIP")
                .map(str::to_string)
                .collect();
            if let Some(ip) = node
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_PROVIDED_IP))
            {
                for ip in ip.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    if !v.iter().any(|x| x == ip) {
                        v.push(ip.to_string());
                    }
                }
            }
            v
        }
    }
}

fn instance_matches(inst: &Instance, key: MatchKey, value: &str) -> bool {
    match key {
        MatchKey::ProviderId | MatchKey::InstanceId => inst.instance_id == value,
        MatchKey::NodeName | MatchKey::Hostname => {
            !is_gone(&inst.status) && inst.instance_name.eq_ignore_ascii_case(value)
        }
        MatchKey::InternalIp => {
            !is_gone(&inst.status) && inst.vxnets.iter().any(|v| v.private_ip == value)
        }
    }
}

/// Why no instance was chosen for a node: one line per key tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoMatch {
    /// `(key, what happened)` in the order tried.
    pub tried: Vec<(MatchKey, String)>,
}

impl fmt::Display for NoMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no instance matches; tried ")?;
        for (i, (k, what)) in self.tried.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k} ({what})")?;
        }
        Ok(())
    }
}

/// Finds the node's instance, trying `order` key by key. A key matching
/// several instances is ambiguous and skipped (never guess). Gone
/// (terminated/ceased) instances only match by id, since names and
/// addresses are reused.
pub fn find_instance<'a>(
    node: &Node,
    instances: &'a [Instance],
    order: &[MatchKey],
    provider: &str,
) -> Result<(&'a Instance, MatchKey), NoMatch> {
    let mut tried = Vec::new();
    for &key in order {
        let values = node_values(node, key, provider);
        if values.is_empty() {
            tried.push((key, "node has no value".to_string()));
            continue;
        }
        let mut hits: Vec<&Instance> = Vec::new();
        for v in &values {
            for inst in instances.iter().filter(|i| instance_matches(i, key, v)) {
                if !hits.iter().any(|h| h.instance_id == inst.instance_id) {
                    hits.push(inst);
                }
            }
        }
        match hits.as_slice() {
            [one] => return Ok((one, key)),
            [] => tried.push((key, format!("{} matched nothing", values.join("|")))),
            many => tried.push((
                key,
                format!(
                    "{} is ambiguous: {}",
                    values.join("|"),
                    many.iter()
                        .map(|i| i.instance_id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }
    Err(NoMatch { tried })
}

/// The addresses a node should report: InternalIP per NIC (the cluster's
/// vxnet first), ExternalIP from the EIP, and Hostname (kubelet's, else the
/// instance name).
pub fn node_addresses(node: &Node, inst: &Instance, vxnet: Option<&str>) -> Vec<NodeAddress> {
    let mut out: Vec<NodeAddress> = Vec::new();
    let mut push = |type_: &str, address: &str| {
        if !address.is_empty() && !out.iter().any(|a| a.type_ == type_ && a.address == address) {
            out.push(NodeAddress {
                type_: type_.to_string(),
                address: address.to_string(),
            });
        }
    };
    let mut nics: Vec<_> = inst.vxnets.iter().collect();
    nics.sort_by_key(|n| Some(n.vxnet_id.as_str()) != vxnet);
    for nic in nics {
        push("InternalIP", &nic.private_ip);
    }
    if let Some(eip) = &inst.eip {
        push("ExternalIP", &eip.eip_addr);
    }
    let hostnames: Vec<&str> = addresses_of(node, "Hostname").collect();
    if hostnames.is_empty() {
        push("Hostname", &inst.instance_name);
    } else {
        for h in hostnames {
            push("Hostname", h);
        }
    }
    out
}

/// Labels initialisation sets.
pub fn node_labels(inst: &Instance, zone: &str, region: &str) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    if !inst.instance_type.is_empty() {
        l.insert(LABEL_INSTANCE_TYPE.to_string(), inst.instance_type.clone());
    }
    let z = if inst.zone_id.is_empty() {
        zone
    } else {
        &inst.zone_id
    };
    l.insert(LABEL_ZONE.to_string(), z.to_string());
    l.insert(LABEL_REGION.to_string(), region.to_string());
    l
}

/// The node's taints.
pub fn taints(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[])
}

/// Whether the node carries taint `key`.
pub fn has_taint(node: &Node, key: &str) -> bool {
    taints(node).iter().any(|t| t.key == key)
}

/// The node's `Ready` condition status (`True`, `False`, `Unknown`), if reported.
pub fn ready_status(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

/// The node's current addresses.
pub fn current_addresses(node: &Node) -> &[NodeAddress] {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or(&[])
}

/// The node's first InternalIP.
pub fn internal_ip(node: &Node) -> Option<&str> {
    addresses_of(node, "InternalIP").next()
}

/// The plan for an uninitialised node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInit {
    /// The instance matched.
    pub instance_id: String,
    /// The key that matched.
    pub matched_by: MatchKey,
    /// providerID to set (`None`: already set; it is immutable once set).
    pub provider_id: Option<String>,
    /// Addresses to write (`None`: already right).
    pub addresses: Option<Vec<NodeAddress>>,
    /// Labels to add or correct (empty: already right).
    pub labels: BTreeMap<String, String>,
    /// Taints to keep after initialisation (`None`: no change).
    pub taints: Option<Vec<Taint>>,
}

/// Plans node initialisation (pure). The uninitialised taint is removed
/// only by this plan, after everything else is set.
pub fn plan_node_init(
    node: &Node,
    instances: &[Instance],
    cfg: &crate::config::CloudConfig,
) -> Result<NodeInit, NoMatch> {
    let (inst, matched_by) =
        find_instance(node, instances, &cfg.node_match_order, &cfg.provider_name)?;
    let zone = if inst.zone_id.is_empty() {
        &cfg.zone
    } else {
        &inst.zone_id
    };
    let want_pid = provider_id(&cfg.provider_name, zone, &inst.instance_id);
    let current_pid = node.spec.as_ref().and_then(|s| s.provider_id.as_deref());
    let provider_id = match current_pid {
        None | Some("") => Some(want_pid),
        Some(_) => None,
    };
    let want_addrs = node_addresses(node, inst, cfg.vxnet_id.as_deref());
    let addresses = (current_addresses(node) != want_addrs.as_slice()).then_some(want_addrs);
    let current_labels = node.metadata.labels.clone().unwrap_or_default();
    let labels = node_labels(inst, &cfg.zone, &cfg.region)
        .into_iter()
        .filter(|(k, v)| current_labels.get(k) != Some(v))
        .collect();
    let taints = has_taint(node, TAINT_UNINITIALIZED).then(|| {
        taints(node)
            .iter()
            .filter(|t| t.key != TAINT_UNINITIALIZED)
            .cloned()
            .collect()
    });
    Ok(NodeInit {
        instance_id: inst.instance_id.clone(),
        matched_by,
        provider_id,
        addresses,
        labels,
        taints,
    })
}

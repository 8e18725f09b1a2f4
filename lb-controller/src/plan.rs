//! Pure planning: desired model + observed cloud state -> the minimal ordered
//! list of operations. No I/O here; every decision is unit-tested.
//!
//! Operations refer to resources created earlier in the same plan by key
//! (certificate fingerprint, policy key, listener port) rather than by id;
//! the executor resolves them, starting from [`Plan::refs`]. An unchanged
//! load balancer yields an empty plan.

use std::collections::{BTreeMap, BTreeSet};

use iaas_client::model::{LoadBalancer, LoadBalancerBackend, LoadBalancerListener};

use crate::error::{Error, Result};
use crate::model::{
    DEFAULT_HEALTH_CHECK, DesiredBackend, DesiredLb, DesiredListener, EipSource, HealthCheckMethod,
    LbNetwork, LbOwner, Protocol,
};
use crate::observe::{ObservedLb, has_tag, is_gone};

/// A private key inside a plan: compared and cloned, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Taggable resource types (the API's `resource_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceType {
    /// `loadbalancer`.
    LoadBalancer,
    /// `eip`.
    Eip,
    /// `security_group`.
    SecurityGroup,
    /// `server_certificate`.
    ServerCertificate,
}

impl ResourceType {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::LoadBalancer => "loadbalancer",
            ResourceType::Eip => "eip",
            ResourceType::SecurityGroup => "security_group",
            ResourceType::ServerCertificate => "server_certificate",
        }
    }
}

/// An EIP in a plan: known, or the one allocated earlier in the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EipRef {
    /// An existing EIP.
    Id(String),
    /// The EIP the plan's `AllocateEip` produces.
    Allocated,
}

/// A load balancer in a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LbRef {
    /// The owner's current LB (observed, or created earlier in the plan).
    Current,
    /// A specific LB (a stale one being torn down).
    Id(String),
}

/// A listener in a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerRef {
    /// An existing listener.
    Id(String),
    /// The listener added earlier in the plan on this port and transport.
    New {
        /// Port.
        port: u16,
        /// `tcp` or `udp`.
        transport: &'static str,
    },
}

/// Listener attributes exactly as the cloud stores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerAttrs {
    /// Listener name.
    pub name: String,
    /// Backend protocol.
    pub backend_protocol: String,
    /// Balance mode.
    pub balance_mode: String,
    /// `tcp`, `udp` or `http|/path`.
    pub healthy_check_method: String,
    /// `interval|timeout|unhealthy|healthy`.
    pub healthy_check_option: String,
    /// Stickiness spec (empty: off).
    pub session_sticky: String,
    /// 1 = X-Forwarded-For.
    pub forwardfor: i32,
    /// Certificate fingerprints, in order.
    pub certificates: Vec<String>,
}

/// A listener to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerAdd {
    /// Port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Attributes.
    pub attrs: ListenerAttrs,
}

/// Changed listener attributes (`None`: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerChange {
    /// New backend protocol.
    pub backend_protocol: Option<String>,
    /// New balance mode.
    pub balance_mode: Option<String>,
    /// New health check method.
    pub healthy_check_method: Option<String>,
    /// New health check option.
    pub healthy_check_option: Option<String>,
    /// New stickiness (empty string turns it off).
    pub session_sticky: Option<String>,
    /// New header flags.
    pub forwardfor: Option<i32>,
    /// New certificates (fingerprints).
    pub certificates: Option<Vec<String>>,
    /// New name.
    pub name: Option<String>,
}

/// A backend to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendAdd {
    /// Instance id or address.
    pub resource_id: String,
    /// Port.
    pub port: u16,
    /// Weight.
    pub weight: u32,
    /// Policy key (L7 rule), `None` for default backends.
    pub policy: Option<String>,
    /// Name.
    pub name: String,
}

/// A security group rule to add (ingress accept from a CIDR, all ports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SgRule {
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Canonical source CIDR.
    pub cidr: String,
    /// Rule name.
    pub name: String,
}

/// One step of a plan; the executor performs them in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create the ownership tag.
    CreateTag {
        /// Tag name.
        name: String,
    },
    /// Tag a resource found by name (created before a crash, never tagged).
    AttachTag {
        /// Resource type.
        resource_type: ResourceType,
        /// Resource id.
        resource_id: String,
    },
    /// Untag a reused LB we no longer use.
    DetachTag {
        /// Resource type.
        resource_type: ResourceType,
        /// Resource id.
        resource_id: String,
    },
    /// Create (and tag) the LB's security group.
    CreateSecurityGroup {
        /// Name.
        name: String,
    },
    /// Add rules to our security group.
    AddSecurityGroupRules {
        /// Rules.
        rules: Vec<SgRule>,
    },
    /// Delete rules of our security group.
    DeleteSecurityGroupRules {
        /// Rule ids.
        ids: Vec<String>,
    },
    /// Put our security group's rules in force.
    ApplySecurityGroup,
    /// Allocate (and tag) an EIP.
    AllocateEip {
        /// Name.
        name: String,
        /// Mbps.
        bandwidth: u32,
    },
    /// Create (and tag) the LB with our security group; waits for the job.
    CreateLoadBalancer {
        /// Name.
        name: String,
        /// EIPs (public).
        eips: Vec<EipRef>,
        /// Vxnet (internal).
        vxnet: Option<String>,
        /// Fixed private address (internal).
        private_ip: Option<String>,
        /// Size class.
        loadbalancer_type: i32,
    },
    /// Associate EIPs with the current LB.
    AssociateEips {
        /// EIPs.
        eips: Vec<EipRef>,
    },
    /// Dissociate EIPs from an LB.
    DissociateEips {
        /// LB.
        lb: LbRef,
        /// EIP ids.
        ids: Vec<String>,
    },
    /// Upload (and tag) a certificate.
    UploadCertificate {
        /// Content fingerprint (its key in the plan).
        fingerprint: String,
        /// Name.
        name: String,
        /// PEM chain.
        pem_chain: String,
        /// PEM key (redacted in `Debug`).
        pem_key: Secret,
    },
    /// Create an L7 policy with its rules.
    CreatePolicy {
        /// Rule key (its key in the plan).
        key: String,
        /// Name.
        name: String,
        /// `(rule_type, val)` pairs, all of which must match (`and`).
        rules: Vec<(String, String)>,
    },
    /// Delete backends.
    DeleteBackends {
        /// Backend ids.
        ids: Vec<String>,
    },
    /// Delete listeners.
    DeleteListeners {
        /// Listener ids.
        ids: Vec<String>,
    },
    /// Add listeners to the current LB.
    AddListeners {
        /// Listeners.
        listeners: Vec<ListenerAdd>,
    },
    /// Change a listener's attributes in place.
    ModifyListener {
        /// Listener id.
        id: String,
        /// Changes.
        change: ListenerChange,
    },
    /// Change a backend's port or weight in place.
    ModifyBackend {
        /// Backend id.
        id: String,
        /// New port.
        port: Option<u16>,
        /// New weight.
        weight: Option<u32>,
    },
    /// Add backends to a listener.
    AddBackends {
        /// Listener.
        listener: ListenerRef,
        /// Backends.
        backends: Vec<BackendAdd>,
    },
    /// Apply pending listener/backend/policy changes; waits for the job.
    UpdateLoadBalancer {
        /// LB.
        lb: LbRef,
    },
    /// Delete L7 policies.
    DeletePolicies {
        /// Policy ids.
        ids: Vec<String>,
    },
    /// Delete an LB; waits for the job.
    DeleteLoadBalancer {
        /// LB id.
        id: String,
    },
    /// Release EIPs we allocated.
    ReleaseEips {
        /// EIP ids.
        ids: Vec<String>,
    },
    /// Delete a security group.
    DeleteSecurityGroup {
        /// Group id.
        id: String,
    },
    /// Delete certificates.
    DeleteCertificates {
        /// Certificate ids.
        ids: Vec<String>,
    },
    /// Delete the ownership tag (its bindings go too).
    DeleteTag {
        /// Tag id.
        id: String,
    },
}

impl Op {
    /// Short name for logs and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::CreateTag { .. } => "CreateTag",
            Op::AttachTag { .. } => "AttachTag",
            Op::DetachTag { .. } => "DetachTag",
            Op::CreateSecurityGroup { .. } => "CreateSecurityGroup",
            Op::AddSecurityGroupRules { .. } => "AddSecurityGroupRules",
            Op::DeleteSecurityGroupRules { .. } => "DeleteSecurityGroupRules",
            Op::ApplySecurityGroup => "ApplySecurityGroup",
            Op::AllocateEip { .. } => "AllocateEip",
            Op::CreateLoadBalancer { .. } => "CreateLoadBalancer",
            Op::AssociateEips { .. } => "AssociateEips",
            Op::DissociateEips { .. } => "DissociateEips",
            Op::UploadCertificate { .. } => "UploadCertificate",
            Op::CreatePolicy { .. } => "CreatePolicy",
            Op::DeleteBackends { .. } => "DeleteBackends",
            Op::DeleteListeners { .. } => "DeleteListeners",
            Op::AddListeners { .. } => "AddListeners",
            Op::ModifyListener { .. } => "ModifyListener",
            Op::ModifyBackend { .. } => "ModifyBackend",
            Op::AddBackends { .. } => "AddBackends",
            Op::UpdateLoadBalancer { .. } => "UpdateLoadBalancer",
            Op::DeletePolicies { .. } => "DeletePolicies",
            Op::DeleteLoadBalancer { .. } => "DeleteLoadBalancer",
            Op::ReleaseEips { .. } => "ReleaseEips",
            Op::DeleteSecurityGroup { .. } => "DeleteSecurityGroup",
            Op::DeleteCertificates { .. } => "DeleteCertificates",
            Op::DeleteTag { .. } => "DeleteTag",
        }
    }
}

/// Ids known before the plan runs, keyed the way ops refer to them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refs {
    /// Ownership tag id.
    pub tag: Option<String>,
    /// The current LB (`None`: the plan creates it).
    pub lb: Option<String>,
    /// Our security group.
    pub security_group: Option<String>,
    /// Certificate id by fingerprint.
    pub certificates: BTreeMap<String, String>,
    /// Policy id by key.
    pub policies: BTreeMap<String, String>,
}

/// An ordered list of operations plus the ids they start from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Starting ids.
    pub refs: Refs,
    /// Operations, in order.
    pub ops: Vec<Op>,
}

impl Plan {
    /// Whether nothing needs to change.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Operation kinds in order (for logs and tests).
    pub fn kinds(&self) -> Vec<&'static str> {
        self.ops.iter().map(Op::kind).collect()
    }
}

/// Whether a listener of `lb` belongs to `owner`: every listener of an LB we
/// created, only the ones named with our prefix on a reused LB.
pub fn listener_is_ours(owner: &LbOwner, lb: &LoadBalancer, l: &LoadBalancerListener) -> bool {
    lb.loadbalancer_name == owner.lb_name()
        || l.loadbalancer_listener_name
            .starts_with(&owner.child_prefix())
}

/// The cloud's representation of a desired listener's attributes.
pub fn listener_attrs(owner: &LbOwner, l: &DesiredListener) -> ListenerAttrs {
    let hc_method = match l.health_check.as_ref().map(|h| &h.method) {
        Some(HealthCheckMethod::Http { path }) => format!("http|{path}"),
        _ if l.protocol == Protocol::Udp => "udp".to_string(),
        _ => "tcp".to_string(),
    };
    let t = l
        .health_check
        .as_ref()
        .map(|h| h.timing)
        .unwrap_or(DEFAULT_HEALTH_CHECK);
    ListenerAttrs {
        name: owner.listener_name(l.port, l.protocol),
        backend_protocol: l
            .backend_protocol
            .unwrap_or(l.protocol.default_backend())
            .as_str()
            .to_string(),
        balance_mode: l.balance_mode.as_str().to_string(),
        healthy_check_method: hc_method,
        healthy_check_option: format!(
            "{}|{}|{}|{}",
            t.interval_secs, t.timeout_secs, t.unhealthy_threshold, t.healthy_threshold
        ),
        session_sticky: l.session_sticky.clone().unwrap_or_default(),
        forwardfor: i32::from(l.forwardfor),
        certificates: l.certificates.iter().map(|c| c.fingerprint()).collect(),
    }
}

/// `(rule_type, val)` pairs of a rule's policy.
fn policy_rules(host: Option<&str>, path: Option<&str>) -> Vec<(String, String)> {
    let mut v = Vec::new();
    if let Some(h) = host {
        v.push(("domain".to_string(), h.to_string()));
    }
    if let Some(p) = path {
        v.push(("url".to_string(), p.to_string()));
    }
    v
}

/// Where the desired backends of one listener go: `(policy key, backend)`.
fn desired_backends(l: &DesiredListener) -> Vec<(Option<String>, &DesiredBackend)> {
    let mut v: Vec<(Option<String>, &DesiredBackend)> =
        l.default_backends.iter().map(|b| (None, b)).collect();
    for r in &l.rules {
        let key = r.policy_key();
        v.extend(r.backends.iter().map(|b| (Some(key.clone()), b)));
    }
    v
}

/// Accumulates ops by phase so the final order is fixed whatever the
/// order in which decisions are made.
#[derive(Default)]
struct Phases {
    tag: Vec<Op>,
    adopt: Vec<Op>,
    stale: Vec<Op>,
    sg: Vec<Op>,
    eip_alloc: Vec<Op>,
    create_lb: Vec<Op>,
    eip_assoc: Vec<Op>,
    certs: Vec<Op>,
    policies: Vec<Op>,
    del_backends: Vec<String>,
    del_listeners: Vec<String>,
    add_listeners: Vec<ListenerAdd>,
    modify: Vec<Op>,
    add_backends: Vec<Op>,
    update: Vec<Op>,
    release: Vec<String>,
    del_policies: Vec<String>,
    del_certs: Vec<String>,
    del_sgs: Vec<Op>,
}

impl Phases {
    fn listener_changes(&self) -> bool {
        !self.del_backends.is_empty()
            || !self.del_listeners.is_empty()
            || !self.add_listeners.is_empty()
            || !self.modify.is_empty()
            || !self.add_backends.is_empty()
    }

    fn finish(self) -> Vec<Op> {
        let mut ops = Vec::new();
        ops.extend(self.tag);
        ops.extend(self.adopt);
        ops.extend(self.stale);
        ops.extend(self.sg);
        ops.extend(self.eip_alloc);
        ops.extend(self.create_lb);
        ops.extend(self.eip_assoc);
        ops.extend(self.certs);
        ops.extend(self.policies);
        if !self.del_backends.is_empty() {
            ops.push(Op::DeleteBackends {
                ids: self.del_backends,
            });
        }
        if !self.del_listeners.is_empty() {
            ops.push(Op::DeleteListeners {
                ids: self.del_listeners,
            });
        }
        if !self.add_listeners.is_empty() {
            ops.push(Op::AddListeners {
                listeners: self.add_listeners,
            });
        }
        ops.extend(self.modify);
        ops.extend(self.add_backends);
        ops.extend(self.update);
        if !self.release.is_empty() {
            ops.push(Op::ReleaseEips { ids: self.release });
        }
        if !self.del_policies.is_empty() {
            ops.push(Op::DeletePolicies {
                ids: self.del_policies,
            });
        }
        if !self.del_certs.is_empty() {
            ops.push(Op::DeleteCertificates {
                ids: self.del_certs,
            });
        }
        ops.extend(self.del_sgs);
        ops
    }
}

/// Whether an owned LB must be re-created for the desired network.
fn network_mismatch(lb: &LoadBalancer, network: &LbNetwork) -> bool {
    match network {
        LbNetwork::Public { .. } => !lb.vxnet_id.is_empty(),
        LbNetwork::Internal { vxnet, private_ip } => {
            &lb.vxnet_id != vxnet
                || private_ip.is_some_and(|ip| !lb.private_ips.contains(&ip.to_string()))
        }
    }
}

/// Tears down what `owner` has on a stale LB: ours entirely (backends,
/// listeners, update, EIPs, delete), a reused one down to our listeners.
fn teardown_stale(owner: &LbOwner, lb: &LoadBalancer, tag_bound: bool, out: &mut Vec<Op>) {
    let ours = lb.loadbalancer_name == owner.lb_name();
    let active = lb.status == "active";
    if ours && !active {
        // Listener calls and UpdateLoadBalancers need an active LB; deleting
        // it directly also removes everything it holds.
        out.push(Op::DeleteLoadBalancer {
            id: lb.loadbalancer_id.clone(),
        });
        return;
    }
    let listeners: Vec<&LoadBalancerListener> = lb
        .listeners
        .iter()
        .filter(|l| listener_is_ours(owner, lb, l))
        .collect();
    let backends: Vec<String> = listeners
        .iter()
        .flat_map(|l| l.backends.iter())
        .map(|b| b.loadbalancer_backend_id.clone())
        .collect();
    if !backends.is_empty() {
        out.push(Op::DeleteBackends { ids: backends });
    }
    if !listeners.is_empty() {
        out.push(Op::DeleteListeners {
            ids: listeners
                .iter()
                .map(|l| l.loadbalancer_listener_id.clone())
                .collect(),
        });
        if active {
            out.push(Op::UpdateLoadBalancer {
                lb: LbRef::Id(lb.loadbalancer_id.clone()),
            });
        }
    }
    if ours {
        if !lb.eips.is_empty() {
            out.push(Op::DissociateEips {
                lb: LbRef::Id(lb.loadbalancer_id.clone()),
                ids: lb.eips.iter().map(|e| e.eip_id.clone()).collect(),
            });
        }
        out.push(Op::DeleteLoadBalancer {
            id: lb.loadbalancer_id.clone(),
        });
    } else if tag_bound {
        out.push(Op::DetachTag {
            resource_type: ResourceType::LoadBalancer,
            resource_id: lb.loadbalancer_id.clone(),
        });
    }
}

/// Certificate fingerprint from one of our certificate names.
fn cert_fp(owner: &LbOwner, name: &str) -> Option<String> {
    name.strip_prefix(&format!("{}c_", owner.child_prefix()))
        .map(str::to_string)
}

/// Policy key from one of our policy names.
fn policy_key(owner: &LbOwner, name: &str) -> Option<String> {
    name.strip_prefix(&format!("{}p_", owner.child_prefix()))
        .map(str::to_string)
}

/// Plans the changes that make the cloud match `desired`. Call with a
/// validated model ([`DesiredLb::validate`]).
pub fn plan(desired: &DesiredLb, obs: &ObservedLb) -> Result<Plan> {
    let owner = &desired.owner;
    let tag = obs.tag.as_ref();
    let mut ph = Phases::default();
    let mut refs = Refs {
        tag: tag.map(|t| t.tag_id.clone()),
        ..Default::default()
    };
    if tag.is_none() {
        ph.tag.push(Op::CreateTag {
            name: owner.tag_name(),
        });
    }
    let adopt =
        |ph: &mut Phases, rt: ResourceType, id: &str, tags: &[iaas_client::model::TagRef]| {
            if !has_tag(tags, tag) {
                ph.adopt.push(Op::AttachTag {
                    resource_type: rt,
                    resource_id: id.to_string(),
                });
            }
        };
    let reuse = desired.reuse_existing.as_deref();

    // ---- which LB
    let mut current: Option<&LoadBalancer> = obs.lb.as_ref().filter(|lb| !is_gone(&lb.status));
    let mut stale: Vec<&LoadBalancer> = obs.stale_lbs.iter().collect();
    match reuse {
        Some(id) => {
            if current.is_none_or(|lb| lb.loadbalancer_id != id) {
                return Err(Error::ReferenceNotFound {
                    field: "reuse_existing".into(),
                    kind: "load balancer",
                    id: id.to_string(),
                });
            }
        }
        None => {
            if let Some(lb) = current
                && (lb.loadbalancer_name != owner.lb_name()
                    || network_mismatch(lb, &desired.network))
            {
                stale.push(lb);
                current = None;
            }
        }
    }
    if let Some(lb) = current {
        adopt(
            &mut ph,
            ResourceType::LoadBalancer,
            &lb.loadbalancer_id,
            &lb.tags,
        );
        refs.lb = Some(lb.loadbalancer_id.clone());
    }
    for lb in &stale {
        teardown_stale(owner, lb, has_tag(&lb.tags, tag), &mut ph.stale);
    }
    let stale_ids: BTreeSet<&str> = stale.iter().map(|lb| lb.loadbalancer_id.as_str()).collect();

    // ---- security group (never for a reused LB: it has its owner's)
    let transports: BTreeSet<&'static str> = desired
        .listeners
        .iter()
        .map(|l| l.protocol.transport())
        .collect();
    if reuse.is_none() {
        let want: BTreeSet<(String, String)> = desired
            .canonical_source_ranges()
            .into_iter()
            .flat_map(|c| transports.iter().map(move |t| (t.to_string(), c.clone())))
            .collect();
        let to_add = |have: &BTreeSet<(String, String)>| -> Vec<SgRule> {
            want.iter()
                .filter(|w| !have.contains(*w))
                .map(|(p, c)| SgRule {
                    protocol: p.clone(),
                    cidr: c.clone(),
                    name: format!("{}r_{p}_{c}", owner.child_prefix()),
                })
                .collect()
        };
        match &obs.security_group {
            Some(sg) => {
                adopt(
                    &mut ph,
                    ResourceType::SecurityGroup,
                    &sg.security_group_id,
                    &sg.tags,
                );
                refs.security_group = Some(sg.security_group_id.clone());
                let mut have = BTreeSet::new();
                let mut delete = Vec::new();
                for r in &obs.sg_rules {
                    let k = (r.protocol.clone(), r.val3.clone());
                    let plain = r.direction == 0
                        && r.action == "accept"
                        && r.disabled == 0
                        && r.val1.is_empty()
                        && r.val2.is_empty();
                    if plain && want.contains(&k) && have.insert(k) {
                        continue;
                    }
                    delete.push(r.security_group_rule_id.clone());
                }
                let add = to_add(&have);
                let changed = !add.is_empty() || !delete.is_empty();
                if !add.is_empty() {
                    ph.sg.push(Op::AddSecurityGroupRules { rules: add });
                }
                if !delete.is_empty() {
                    ph.sg.push(Op::DeleteSecurityGroupRules { ids: delete });
                }
                if changed || sg.is_applied == 0 {
                    ph.sg.push(Op::ApplySecurityGroup);
                }
            }
            None => {
                ph.sg.push(Op::CreateSecurityGroup {
                    name: owner.security_group_name(),
                });
                let add = to_add(&BTreeSet::new());
                if !add.is_empty() {
                    ph.sg.push(Op::AddSecurityGroupRules { rules: add });
                    ph.sg.push(Op::ApplySecurityGroup);
                }
            }
        }
    } else if let Some(sg) = &obs.security_group {
        ph.del_sgs.push(Op::DeleteSecurityGroup {
            id: sg.security_group_id.clone(),
        });
    }
    for sg in &obs.extra_security_groups {
        // Tagged leftovers of a crash; only deletable once no LB uses them.
        let used_by_live_lb =
            current.is_some_and(|lb| lb.security_group_id == sg.security_group_id);
        if !used_by_live_lb {
            ph.del_sgs.push(Op::DeleteSecurityGroup {
                id: sg.security_group_id.clone(),
            });
        }
    }

    // ---- EIPs
    let lb_eips: Vec<String> = current
        .map(|lb| lb.eips.iter().map(|e| e.eip_id.clone()).collect())
        .unwrap_or_default();
    let mut want_eips: Vec<EipRef> = Vec::new();
    if reuse.is_none()
        && let LbNetwork::Public { eip } = &desired.network
    {
        match eip {
            EipSource::Allocate { bandwidth } => {
                let usable = |e: &&iaas_client::model::Eip| match &e.resource {
                    None => e.status == "available",
                    Some(r) => {
                        Some(r.resource_id.as_str()) == current.map(|l| l.loadbalancer_id.as_str())
                            || stale_ids.contains(r.resource_id.as_str())
                    }
                };
                let on_lb = obs.eips.iter().find(|e| lb_eips.contains(&e.eip_id));
                match on_lb.or_else(|| obs.eips.iter().find(usable)) {
                    Some(e) => want_eips.push(EipRef::Id(e.eip_id.clone())),
                    None => {
                        ph.eip_alloc.push(Op::AllocateEip {
                            name: owner.eip_name(),
                            bandwidth: *bandwidth,
                        });
                        want_eips.push(EipRef::Allocated);
                    }
                }
            }
            EipSource::Existing(ids) => {
                for (i, id) in ids.iter().enumerate() {
                    let e = obs
                        .wanted_eips
                        .iter()
                        .find(|e| &e.eip_id == id)
                        .ok_or_else(|| Error::ReferenceNotFound {
                            field: format!("network.eip.ids[{i}]"),
                            kind: "eip",
                            id: id.clone(),
                        })?;
                    check_eip_free(e, current, &stale_ids)?;
                    want_eips.push(EipRef::Id(id.clone()));
                }
            }
            EipSource::ByAddress(ip) => {
                let e = obs
                    .wanted_eips
                    .iter()
                    .find(|e| e.eip_addr == ip.to_string())
                    .ok_or_else(|| Error::ReferenceNotFound {
                        field: "network.eip.address".into(),
                        kind: "eip",
                        id: ip.to_string(),
                    })?;
                check_eip_free(e, current, &stale_ids)?;
                want_eips.push(EipRef::Id(e.eip_id.clone()));
            }
        }
    }
    let kept: BTreeSet<String> = want_eips
        .iter()
        .filter_map(|r| match r {
            EipRef::Id(id) => Some(id.clone()),
            EipRef::Allocated => None,
        })
        .collect();
    for e in &obs.eips {
        if kept.contains(&e.eip_id) {
            adopt(&mut ph, ResourceType::Eip, &e.eip_id, &e.tags);
            continue;
        }
        // Release ours unless bound to something we do not manage.
        let bound_elsewhere = e.resource.as_ref().is_some_and(|r| {
            Some(r.resource_id.as_str()) != current.map(|l| l.loadbalancer_id.as_str())
                && !stale_ids.contains(r.resource_id.as_str())
        });
        if !bound_elsewhere {
            ph.release.push(e.eip_id.clone());
        }
    }

    // ---- the LB itself
    if current.is_none() && reuse.is_none() {
        let (vxnet, private_ip) = match &desired.network {
            LbNetwork::Internal { vxnet, private_ip } => {
                (Some(vxnet.clone()), private_ip.map(|ip| ip.to_string()))
            }
            LbNetwork::Public { .. } => (None, None),
        };
        ph.create_lb.push(Op::CreateLoadBalancer {
            name: owner.lb_name(),
            eips: want_eips.clone(),
            vxnet,
            private_ip,
            loadbalancer_type: desired.loadbalancer_type,
        });
    } else if current.is_some() && reuse.is_none() {
        let assoc: Vec<EipRef> = want_eips
            .iter()
            .filter(|r| match r {
                EipRef::Id(id) => !lb_eips.contains(id),
                EipRef::Allocated => true,
            })
            .cloned()
            .collect();
        let dissoc: Vec<String> = lb_eips
            .iter()
            .filter(|id| !kept.contains(*id))
            .cloned()
            .collect();
        if !assoc.is_empty() {
            ph.eip_assoc.push(Op::AssociateEips { eips: assoc });
        }
        if !dissoc.is_empty() {
            ph.eip_assoc.push(Op::DissociateEips {
                lb: LbRef::Current,
                ids: dissoc,
            });
        }
    }

    // ---- certificates (content-addressed)
    let mut want_fps: BTreeMap<String, &crate::model::DesiredCert> = BTreeMap::new();
    for l in &desired.listeners {
        for c in &l.certificates {
            want_fps.entry(c.fingerprint()).or_insert(c);
        }
    }
    let mut cert_fp_of: BTreeMap<String, String> = BTreeMap::new();
    for c in &obs.certificates {
        let fp = cert_fp(owner, &c.server_certificate_name);
        match fp {
            Some(fp) if want_fps.contains_key(&fp) && !refs.certificates.contains_key(&fp) => {
                adopt(
                    &mut ph,
                    ResourceType::ServerCertificate,
                    &c.server_certificate_id,
                    &c.tags,
                );
                refs.certificates
                    .insert(fp.clone(), c.server_certificate_id.clone());
                cert_fp_of.insert(c.server_certificate_id.clone(), fp);
            }
            _ => ph.del_certs.push(c.server_certificate_id.clone()),
        }
    }
    for (fp, c) in &want_fps {
        if !refs.certificates.contains_key(fp) {
            ph.certs.push(Op::UploadCertificate {
                fingerprint: fp.clone(),
                name: owner.certificate_name(fp),
                pem_chain: c.pem_chain.clone(),
                pem_key: Secret(c.pem_key.clone()),
            });
        }
    }

    // ---- policies (content-addressed by host+path; rules must match exactly)
    let mut want_policies: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for l in &desired.listeners {
        for r in &l.rules {
            if !r.backends.is_empty() {
                want_policies.insert(
                    r.policy_key(),
                    policy_rules(r.host.as_deref(), r.url_rule().as_deref()),
                );
            }
        }
    }
    let mut policy_key_of: BTreeMap<String, String> = BTreeMap::new();
    for p in &obs.policies {
        let key = policy_key(owner, &p.loadbalancer_policy_name);
        let mut rules: Vec<(String, String)> = p
            .rules
            .iter()
            .map(|r| (r.rule_type.clone(), r.val.clone()))
            .collect();
        rules.sort();
        let good = key.as_ref().and_then(|k| {
            let mut w = want_policies.get(k)?.clone();
            w.sort();
            (w == rules && p.operator == "and" && !refs.policies.contains_key(k)).then_some(k)
        });
        match good {
            Some(k) => {
                refs.policies
                    .insert(k.clone(), p.loadbalancer_policy_id.clone());
                policy_key_of.insert(p.loadbalancer_policy_id.clone(), k.clone());
            }
            None if key.is_some() => ph.del_policies.push(p.loadbalancer_policy_id.clone()),
            // Someone else's policy our backends used: those backends go, the policy stays.
            None => {}
        }
    }
    for (key, rules) in &want_policies {
        if !refs.policies.contains_key(key) {
            ph.policies.push(Op::CreatePolicy {
                key: key.clone(),
                name: owner.policy_name(key),
                rules: rules.clone(),
            });
        }
    }

    // ---- listeners and backends
    let lb_for_listeners = current;
    let mut observed: BTreeMap<(u16, &'static str), &LoadBalancerListener> = BTreeMap::new();
    let mut foreign: BTreeMap<(u16, &'static str), &LoadBalancerListener> = BTreeMap::new();
    let mut unmatched: Vec<&LoadBalancerListener> = Vec::new();
    if let Some(lb) = lb_for_listeners {
        for l in &lb.listeners {
            let t = Protocol::parse(&l.listener_protocol)
                .map(Protocol::transport)
                .unwrap_or("tcp");
            if listener_is_ours(owner, lb, l) {
                if observed.insert((l.listener_port, t), l).is_some() {
                    unmatched.push(l);
                }
            } else {
                foreign.insert((l.listener_port, t), l);
            }
        }
    }
    let mut matched: BTreeSet<String> = BTreeSet::new();
    for (i, dl) in desired.listeners.iter().enumerate() {
        let key = (dl.port, dl.protocol.transport());
        if let Some(f) = foreign.get(&key) {
            return Err(Error::Conflict(format!(
                "listeners[{i}].port: {}/{} is taken by listener {} ({:?}) of load balancer {}, which is not ours",
                dl.port,
                key.1,
                f.loadbalancer_listener_id,
                f.loadbalancer_listener_name,
                f.loadbalancer_id
            )));
        }
        let want = listener_attrs(owner, dl);
        let backends = desired_backends(dl);
        match observed.get(&key) {
            Some(o) if o.listener_protocol == dl.protocol.as_str() => {
                matched.insert(o.loadbalancer_listener_id.clone());
                let change = listener_change(o, &want, &refs.certificates);
                if change != ListenerChange::default() {
                    ph.modify.push(Op::ModifyListener {
                        id: o.loadbalancer_listener_id.clone(),
                        change,
                    });
                }
                diff_backends(
                    owner,
                    &o.loadbalancer_listener_id,
                    &o.backends,
                    &backends,
                    &policy_key_of,
                    &mut ph,
                );
            }
            other => {
                // Absent, or the protocol changed: the port and protocol of a
                // listener are fixed, so delete it and add a new one.
                if let Some(o) = other {
                    matched.insert(o.loadbalancer_listener_id.clone());
                    ph.del_backends
                        .extend(o.backends.iter().map(|b| b.loadbalancer_backend_id.clone()));
                    ph.del_listeners.push(o.loadbalancer_listener_id.clone());
                }
                ph.add_listeners.push(ListenerAdd {
                    port: dl.port,
                    protocol: dl.protocol,
                    attrs: want,
                });
                if !backends.is_empty() {
                    ph.add_backends.push(Op::AddBackends {
                        listener: ListenerRef::New {
                            port: dl.port,
                            transport: key.1,
                        },
                        backends: backends
                            .iter()
                            .map(|(k, b)| backend_add(owner, k.clone(), b))
                            .collect(),
                    });
                }
            }
        }
    }
    for l in observed.values().chain(unmatched.iter()) {
        if !matched.contains(&l.loadbalancer_listener_id) {
            ph.del_backends
                .extend(l.backends.iter().map(|b| b.loadbalancer_backend_id.clone()));
            ph.del_listeners.push(l.loadbalancer_listener_id.clone());
            matched.insert(l.loadbalancer_listener_id.clone());
        }
    }
    let changed = ph.listener_changes();
    let unapplied = lb_for_listeners.is_some_and(|lb| lb.is_applied == 0);
    if changed || unapplied {
        ph.update
            .push(Op::UpdateLoadBalancer { lb: LbRef::Current });
    }
    Ok(Plan {
        refs,
        ops: ph.finish(),
    })
}

/// A user-given EIP must be free or already ours.
fn check_eip_free(
    e: &iaas_client::model::Eip,
    current: Option<&LoadBalancer>,
    stale: &BTreeSet<&str>,
) -> Result<()> {
    if let Some(r) = &e.resource
        && Some(r.resource_id.as_str()) != current.map(|l| l.loadbalancer_id.as_str())
        && !stale.contains(r.resource_id.as_str())
    {
        return Err(Error::Conflict(format!(
            "eip {} ({}) is associated with {} {}",
            e.eip_id, e.eip_addr, r.resource_type, r.resource_id
        )));
    }
    Ok(())
}

fn backend_add(owner: &LbOwner, policy: Option<String>, b: &DesiredBackend) -> BackendAdd {
    BackendAdd {
        resource_id: b.target.resource_id(),
        port: b.port,
        weight: b.weight,
        policy,
        name: owner.backend_name(),
    }
}

/// What differs between an observed listener and the wanted attributes.
fn listener_change(
    o: &LoadBalancerListener,
    want: &ListenerAttrs,
    certs: &BTreeMap<String, String>,
) -> ListenerChange {
    let diff = |have: &str, want: &str| (have != want).then(|| want.to_string());
    // Certificates compare by id: every wanted fingerprint must already be
    // uploaded and bound in the same order.
    let cert_ids: Option<Vec<&String>> = want.certificates.iter().map(|fp| certs.get(fp)).collect();
    let certs_equal = cert_ids.is_some_and(|ids| {
        ids.len() == o.server_certificate_id.len()
            && ids
                .iter()
                .zip(&o.server_certificate_id)
                .all(|(a, b)| *a == b)
    });
    ListenerChange {
        backend_protocol: diff(&o.backend_protocol, &want.backend_protocol),
        balance_mode: diff(&o.balance_mode, &want.balance_mode),
        healthy_check_method: diff(&o.healthy_check_method, &want.healthy_check_method),
        healthy_check_option: diff(&o.healthy_check_option, &want.healthy_check_option),
        session_sticky: diff(&o.session_sticky, &want.session_sticky),
        forwardfor: (o.forwardfor != want.forwardfor).then_some(want.forwardfor),
        certificates: (!certs_equal && !want.certificates.is_empty())
            .then(|| want.certificates.clone()),
        name: diff(&o.loadbalancer_listener_name, &want.name),
    }
}

/// Diffs one listener's backends: exact matches keep (weight fixed in
/// place), same target with another port is modified in place, the rest
/// is deleted or added.
fn diff_backends(
    owner: &LbOwner,
    listener_id: &str,
    observed: &[LoadBalancerBackend],
    desired: &[(Option<String>, &DesiredBackend)],
    policy_key_of: &BTreeMap<String, String>,
    ph: &mut Phases,
) {
    // Observed key: known policy -> its key; unknown policy -> never matches.
    let okey = |b: &LoadBalancerBackend| -> Option<Option<String>> {
        if b.loadbalancer_policy_id.is_empty() {
            Some(None)
        } else {
            policy_key_of
                .get(&b.loadbalancer_policy_id)
                .cloned()
                .map(Some)
        }
    };
    let mut left_obs: Vec<&LoadBalancerBackend> = Vec::new();
    let mut left_want: Vec<&(Option<String>, &DesiredBackend)> = desired.iter().collect();
    for b in observed {
        let Some(k) = okey(b) else {
            ph.del_backends.push(b.loadbalancer_backend_id.clone());
            continue;
        };
        match left_want.iter().position(|(wk, w)| {
            *wk == k && w.target.resource_id() == b.resource_id && w.port == b.port
        }) {
            Some(pos) => {
                let (_, w) = left_want.remove(pos);
                if w.weight != b.weight {
                    ph.modify.push(Op::ModifyBackend {
                        id: b.loadbalancer_backend_id.clone(),
                        port: None,
                        weight: Some(w.weight),
                    });
                }
            }
            None => left_obs.push(b),
        }
    }
    let mut adds = Vec::new();
    for w in left_want {
        let (wk, wb) = w;
        let pos = left_obs
            .iter()
            .position(|b| okey(b).as_ref() == Some(wk) && b.resource_id == wb.target.resource_id());
        match pos {
            Some(p) => {
                let b = left_obs.remove(p);
                ph.modify.push(Op::ModifyBackend {
                    id: b.loadbalancer_backend_id.clone(),
                    port: Some(wb.port),
                    weight: (wb.weight != b.weight).then_some(wb.weight),
                });
            }
            None => adds.push(backend_add(owner, wk.clone(), wb)),
        }
    }
    ph.del_backends
        .extend(left_obs.iter().map(|b| b.loadbalancer_backend_id.clone()));
    if !adds.is_empty() {
        ph.add_backends.push(Op::AddBackends {
            listener: ListenerRef::Id(listener_id.to_string()),
            backends: adds,
        });
    }
}

/// Plans the removal of everything `owner` has, in the order that never hits
/// "still in use": backends, listeners, policies, UpdateLoadBalancers,
/// EIP dissociation, LB deletion, release of EIPs we allocated, security
/// group, certificates, and the ownership tag last (so a crash at any
/// point leaves the rest findable). A reused LB only loses our listeners.
pub fn plan_delete(owner: &LbOwner, obs: &ObservedLb) -> Plan {
    let tag = obs.tag.as_ref();
    let mut refs = Refs {
        tag: tag.map(|t| t.tag_id.clone()),
        ..Default::default()
    };
    let lbs: Vec<&LoadBalancer> = obs
        .lb
        .iter()
        .chain(obs.stale_lbs.iter())
        .filter(|lb| !is_gone(&lb.status))
        .collect();
    refs.lb = None;
    let mut backends = Vec::new();
    let mut listeners = Vec::new();
    let mut updates = Vec::new();
    let mut dissoc = Vec::new();
    let mut deletes = Vec::new();
    for lb in &lbs {
        let ours = lb.loadbalancer_name == owner.lb_name();
        let active = lb.status == "active";
        if ours && !active {
            deletes.push(Op::DeleteLoadBalancer {
                id: lb.loadbalancer_id.clone(),
            });
            continue;
        }
        let mine: Vec<&LoadBalancerListener> = lb
            .listeners
            .iter()
            .filter(|l| listener_is_ours(owner, lb, l))
            .collect();
        backends.extend(
            mine.iter()
                .flat_map(|l| l.backends.iter())
                .map(|b| b.loadbalancer_backend_id.clone()),
        );
        listeners.extend(mine.iter().map(|l| l.loadbalancer_listener_id.clone()));
        if !mine.is_empty() && active {
            updates.push(Op::UpdateLoadBalancer {
                lb: LbRef::Id(lb.loadbalancer_id.clone()),
            });
        }
        if ours {
            if !lb.eips.is_empty() {
                dissoc.push(Op::DissociateEips {
                    lb: LbRef::Id(lb.loadbalancer_id.clone()),
                    ids: lb.eips.iter().map(|e| e.eip_id.clone()).collect(),
                });
            }
            deletes.push(Op::DeleteLoadBalancer {
                id: lb.loadbalancer_id.clone(),
            });
        }
    }
    let mut ops = Vec::new();
    if !backends.is_empty() {
        ops.push(Op::DeleteBackends { ids: backends });
    }
    if !listeners.is_empty() {
        ops.push(Op::DeleteListeners { ids: listeners });
    }
    let policies: Vec<String> = obs
        .policies
        .iter()
        .filter(|p| policy_key(owner, &p.loadbalancer_policy_name).is_some())
        .map(|p| p.loadbalancer_policy_id.clone())
        .collect();
    if !policies.is_empty() {
        ops.push(Op::DeletePolicies { ids: policies });
    }
    ops.extend(updates);
    ops.extend(dissoc);
    ops.extend(deletes);
    let lb_ids: BTreeSet<&str> = lbs.iter().map(|lb| lb.loadbalancer_id.as_str()).collect();
    let release: Vec<String> = obs
        .eips
        .iter()
        .filter(|e| {
            e.resource
                .as_ref()
                .is_none_or(|r| lb_ids.contains(r.resource_id.as_str()))
        })
        .map(|e| e.eip_id.clone())
        .collect();
    if !release.is_empty() {
        ops.push(Op::ReleaseEips { ids: release });
    }
    for sg in obs
        .security_group
        .iter()
        .chain(obs.extra_security_groups.iter())
    {
        ops.push(Op::DeleteSecurityGroup {
            id: sg.security_group_id.clone(),
        });
    }
    let certs: Vec<String> = obs
        .certificates
        .iter()
        .map(|c| c.server_certificate_id.clone())
        .collect();
    if !certs.is_empty() {
        ops.push(Op::DeleteCertificates { ids: certs });
    }
    if let Some(t) = tag {
        ops.push(Op::DeleteTag {
            id: t.tag_id.clone(),
        });
    }
    Plan { refs, ops }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use iaas_client::model::{
        Eip, EipRef as CloudEipRef, EipResource, LoadBalancerPolicy, LoadBalancerPolicyRule,
        SecurityGroup, SecurityGroupRule, ServerCertificate, Tag, TagRef,
    };

    const TAG: &str = "tag-own";

    fn owner() -> LbOwner {
        LbOwner {
            cluster_id: "c1".into(),
            kind: OwnerKind::Service,
            namespace: "default".into(),
            name: "web".into(),
            uid: "0a1b2c3d-1111-2222-3333-444455556666".into(),
        }
    }

    fn be(target: &str, port: u16, weight: u32) -> DesiredBackend {
        DesiredBackend {
            target: BackendTarget::Instance(target.into()),
            port,
            weight,
        }
    }

    fn cert(n: &str) -> DesiredCert {
        DesiredCert {
            name: n.into(),
            pem_chain: format!("-----BEGIN CERTIFICATE-----\n{n}\n-----END CERTIFICATE-----"),
            pem_key: format!("-----BEGIN PRIVATE KEY-----\n{n}\n-----END PRIVATE KEY-----"),
        }
    }

    fn l4() -> DesiredLb {
        DesiredLb {
            owner: owner(),
            network: LbNetwork::Public {
                eip: EipSource::Allocate { bandwidth: 10 },
            },
            reuse_existing: None,
            loadbalancer_type: 0,
            source_ranges: vec![],
            listeners: vec![DesiredListener::l4(
                80,
                Protocol::Tcp,
                vec![be("i-1", 30080, 1), be("i-2", 30080, 1)],
            )],
        }
    }

    fn l7() -> DesiredLb {
        let mut d = l4();
        d.owner.kind = OwnerKind::Ingress;
        let mut http = DesiredListener::l4(80, Protocol::Http, vec![be("i-1", 30000, 1)]);
        http.forwardfor = true;
        http.rules = vec![
            DesiredRule {
                host: Some("a.example.com".into()),
                path_prefix: Some("/api".into()),
                path_match: PathMatch::Prefix,
                backends: vec![be("i-1", 30001, 1)],
            },
            DesiredRule {
                host: Some("*.example.com".into()),
                path_prefix: None,
                path_match: PathMatch::StringPrefix,
                backends: vec![be("i-2", 30002, 1)],
            },
        ];
        let mut https = http.clone();
        https.port = 443;
        https.protocol = Protocol::Https;
        https.certificates = vec![cert("A")];
        d.listeners = vec![http, https];
        d
    }

    fn tagref() -> Vec<TagRef> {
        vec![TagRef {
            tag_id: TAG.into(),
            tag_name: owner().tag_name(),
        }]
    }

    /// The observed state of a cloud that already matches `d` exactly.
    fn converged(d: &DesiredLb) -> ObservedLb {
        let o = &d.owner;
        let lb_id = "lb-1".to_string();
        let mut obs = ObservedLb {
            tag: Some(Tag {
                tag_id: TAG.into(),
                tag_name: o.tag_name(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut policies: BTreeMap<String, String> = BTreeMap::new();
        for l in &d.listeners {
            for r in &l.rules {
                let key = r.policy_key();
                if policies.contains_key(&key) {
                    continue;
                }
                let id = format!("lbp-{}", policies.len());
                policies.insert(key.clone(), id.clone());
                obs.policies.push(LoadBalancerPolicy {
                    loadbalancer_policy_id: id.clone(),
                    loadbalancer_policy_name: o.policy_name(&key),
                    operator: "and".into(),
                    is_applied: 1,
                    rules: policy_rules(r.host.as_deref(), r.url_rule().as_deref())
                        .into_iter()
                        .map(|(t, v)| LoadBalancerPolicyRule {
                            loadbalancer_policy_id: id.clone(),
                            rule_type: t,
                            val: v,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                });
            }
        }
        let mut certs: BTreeMap<String, String> = BTreeMap::new();
        for c in d.listeners.iter().flat_map(|l| &l.certificates) {
            let fp = c.fingerprint();
            if certs.contains_key(&fp) {
                continue;
            }
            let id = format!("sc-{}", certs.len());
            certs.insert(fp.clone(), id.clone());
            obs.certificates.push(ServerCertificate {
                server_certificate_id: id,
                server_certificate_name: o.certificate_name(&fp),
                tags: tagref(),
                ..Default::default()
            });
        }
        let mut n = 0;
        let listeners = d
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let a = listener_attrs(o, l);
                let lid = format!("lbl-{i}");
                let backends = desired_backends(l)
                    .into_iter()
                    .map(|(k, b)| {
                        n += 1;
                        LoadBalancerBackend {
                            loadbalancer_backend_id: format!("lbb-{n}"),
                            loadbalancer_listener_id: lid.clone(),
                            loadbalancer_id: lb_id.clone(),
                            resource_id: b.target.resource_id(),
                            port: b.port,
                            weight: b.weight,
                            loadbalancer_policy_id: k
                                .map(|k| policies[&k].clone())
                                .unwrap_or_default(),
                            ..Default::default()
                        }
                    })
                    .collect();
                LoadBalancerListener {
                    loadbalancer_listener_id: lid,
                    loadbalancer_listener_name: a.name,
                    loadbalancer_id: lb_id.clone(),
                    listener_port: l.port,
                    listener_protocol: l.protocol.as_str().into(),
                    backend_protocol: a.backend_protocol,
                    balance_mode: a.balance_mode,
                    healthy_check_method: a.healthy_check_method,
                    healthy_check_option: a.healthy_check_option,
                    session_sticky: a.session_sticky,
                    forwardfor: a.forwardfor,
                    server_certificate_id: a
                        .certificates
                        .iter()
                        .map(|fp| certs[fp].clone())
                        .collect(),
                    backends,
                    ..Default::default()
                }
            })
            .collect();
        let mut lb = LoadBalancer {
            loadbalancer_id: lb_id.clone(),
            loadbalancer_name: o.lb_name(),
            status: "active".into(),
            is_applied: 1,
            security_group_id: "sg-1".into(),
            listeners,
            tags: tagref(),
            ..Default::default()
        };
        match &d.network {
            LbNetwork::Public { eip } => {
                let (id, addr, ours) = match eip {
                    EipSource::Allocate { .. } => ("eip-own", "1.1.1.1", true),
                    EipSource::Existing(ids) => (ids[0].as_str(), "2.2.2.2", false),
                    EipSource::ByAddress(_) => ("eip-addr", "3.3.3.3", false),
                };
                lb.eips.push(CloudEipRef {
                    eip_id: id.into(),
                    eip_addr: addr.into(),
                    ..Default::default()
                });
                let rec = Eip {
                    eip_id: id.into(),
                    eip_addr: addr.into(),
                    eip_name: o.eip_name(),
                    status: "associated".into(),
                    resource: Some(EipResource {
                        resource_id: lb_id.clone(),
                        resource_type: "loadbalancer".into(),
                        ..Default::default()
                    }),
                    tags: if ours { tagref() } else { vec![] },
                    ..Default::default()
                };
                if ours {
                    obs.eips.push(rec);
                } else {
                    obs.wanted_eips.push(rec);
                }
            }
            LbNetwork::Internal { vxnet, private_ip } => {
                lb.vxnet_id = vxnet.clone();
                lb.private_ips = vec![
                    private_ip
                        .map(|i| i.to_string())
                        .unwrap_or_else(|| "172.30.1.9".into()),
                ];
            }
        }
        obs.security_group = Some(SecurityGroup {
            security_group_id: "sg-1".into(),
            security_group_name: o.security_group_name(),
            is_applied: 1,
            tags: tagref(),
            ..Default::default()
        });
        let transports: BTreeSet<&str> =
            d.listeners.iter().map(|l| l.protocol.transport()).collect();
        for (i, c) in d.canonical_source_ranges().iter().enumerate() {
            for (j, t) in transports.iter().enumerate() {
                obs.sg_rules.push(SecurityGroupRule {
                    security_group_rule_id: format!("sgr-{i}-{j}"),
                    security_group_id: "sg-1".into(),
                    protocol: t.to_string(),
                    action: "accept".into(),
                    val3: c.clone(),
                    ..Default::default()
                });
            }
        }
        obs.lb = Some(lb);
        obs
    }

    fn lb_mut(obs: &mut ObservedLb) -> &mut LoadBalancer {
        obs.lb.as_mut().unwrap()
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            desired: DesiredLb,
            observed: ObservedLb,
            want: Vec<&'static str>,
        }
        let mut cases = vec![
            Case {
                name: "create from nothing",
                desired: l4(),
                observed: ObservedLb::default(),
                want: vec![
                    "CreateTag",
                    "CreateSecurityGroup",
                    "AllocateEip",
                    "CreateLoadBalancer",
                    "AddListeners",
                    "AddBackends",
                    "UpdateLoadBalancer",
                ],
            },
            Case {
                name: "no-op L4",
                desired: l4(),
                observed: converged(&l4()),
                want: vec![],
            },
            Case {
                name: "no-op L7 with certificates and rules",
                desired: l7(),
                observed: converged(&l7()),
                want: vec![],
            },
        ];
        // add a port
        let mut d = l4();
        d.listeners.push(DesiredListener::l4(
            53,
            Protocol::Udp,
            vec![be("i-1", 30053, 1)],
        ));
        cases.push(Case {
            name: "add port",
            desired: d,
            observed: converged(&l4()),
            want: vec!["AddListeners", "AddBackends", "UpdateLoadBalancer"],
        });
        // backend weight
        let mut d = l4();
        d.listeners[0].default_backends[1].weight = 50;
        cases.push(Case {
            name: "change backend weight",
            desired: d,
            observed: converged(&l4()),
            want: vec!["ModifyBackend", "UpdateLoadBalancer"],
        });
        // backend set change: one removed, one added
        let mut d = l4();
        d.listeners[0].default_backends[1] = be("i-3", 30080, 1);
        cases.push(Case {
            name: "replace a backend",
            desired: d,
            observed: converged(&l4()),
            want: vec!["DeleteBackends", "AddBackends", "UpdateLoadBalancer"],
        });
        // protocol change on the same port
        let mut d = l4();
        d.listeners[0].protocol = Protocol::Http;
        cases.push(Case {
            name: "change protocol",
            desired: d,
            observed: converged(&l4()),
            want: vec![
                "DeleteBackends",
                "DeleteListeners",
                "AddListeners",
                "AddBackends",
                "UpdateLoadBalancer",
            ],
        });
        // attribute change only
        let mut d = l4();
        d.listeners[0].balance_mode = BalanceMode::Source;
        cases.push(Case {
            name: "change balance mode in place",
            desired: d,
            observed: converged(&l4()),
            want: vec!["ModifyListener", "UpdateLoadBalancer"],
        });
        // rotate a certificate
        let mut d = l7();
        d.listeners[1].certificates = vec![cert("B")];
        cases.push(Case {
            name: "rotate certificate",
            desired: d,
            observed: converged(&l7()),
            want: vec![
                "UploadCertificate",
                "ModifyListener",
                "UpdateLoadBalancer",
                "DeleteCertificates",
            ],
        });
        // source ranges
        let mut d = l4();
        d.source_ranges = vec!["10.0.0.0/8".into()];
        cases.push(Case {
            name: "add source range",
            desired: d.clone(),
            observed: converged(&l4()),
            want: vec!["AddSecurityGroupRules", "ApplySecurityGroup"],
        });
        let mut d2 = d.clone();
        d2.source_ranges = vec!["192.168.0.0/16".into()];
        cases.push(Case {
            name: "replace source range",
            desired: d2,
            observed: converged(&d),
            want: vec![
                "AddSecurityGroupRules",
                "DeleteSecurityGroupRules",
                "ApplySecurityGroup",
            ],
        });
        cases.push(Case {
            name: "remove source ranges",
            desired: l4(),
            observed: converged(&d),
            want: vec!["DeleteSecurityGroupRules", "ApplySecurityGroup"],
        });
        // switch from an allocated EIP to a user's EIP
        let mut d = l4();
        d.network = LbNetwork::Public {
            eip: EipSource::Existing(vec!["eip-user".into()]),
        };
        let mut obs = converged(&l4());
        obs.wanted_eips.push(Eip {
            eip_id: "eip-user".into(),
            eip_addr: "2.2.2.2".into(),
            status: "available".into(),
            ..Default::default()
        });
        cases.push(Case {
            name: "switch EIP",
            desired: d,
            observed: obs,
            want: vec!["AssociateEips", "DissociateEips", "ReleaseEips"],
        });
        // crash leftovers
        let mut obs = converged(&l4());
        lb_mut(&mut obs).is_applied = 0;
        cases.push(Case {
            name: "unapplied changes from a crashed run",
            desired: l4(),
            observed: obs,
            want: vec!["UpdateLoadBalancer"],
        });
        let mut obs = converged(&l4());
        lb_mut(&mut obs).tags.clear();
        obs.security_group.as_mut().unwrap().is_applied = 0;
        cases.push(Case {
            name: "untagged LB and unapplied SG",
            desired: l4(),
            observed: obs,
            want: vec!["AttachTag", "ApplySecurityGroup"],
        });
        let mut obs = converged(&l4());
        obs.tag = None;
        cases.push(Case {
            name: "tag lost: recreated and re-attached",
            desired: l4(),
            observed: obs,
            want: vec!["CreateTag", "AttachTag", "AttachTag", "AttachTag"],
        });
        let mut obs = converged(&l4());
        let mut dup = obs.lb.clone().unwrap();
        dup.loadbalancer_id = "lb-dup".into();
        dup.listeners.clear();
        dup.eips.clear();
        obs.stale_lbs.push(dup);
        cases.push(Case {
            name: "duplicate LB from a crash is deleted",
            desired: l4(),
            observed: obs,
            want: vec!["DeleteLoadBalancer"],
        });
        // public -> internal re-creates the LB
        let mut d = l4();
        d.network = LbNetwork::Internal {
            vxnet: "vxnet-1".into(),
            private_ip: None,
        };
        cases.push(Case {
            name: "public to internal",
            desired: d,
            observed: converged(&l4()),
            want: vec![
                "DeleteBackends",
                "DeleteListeners",
                "UpdateLoadBalancer",
                "DissociateEips",
                "DeleteLoadBalancer",
                "CreateLoadBalancer",
                "AddListeners",
                "AddBackends",
                "UpdateLoadBalancer",
                "ReleaseEips",
            ],
        });
        // L7: change a rule's path -> new policy, old one deleted
        let mut d = l7();
        d.listeners[0].rules[0].path_prefix = Some("/v2".into());
        cases.push(Case {
            name: "change rule path on one listener keeps the shared policy",
            desired: d.clone(),
            observed: converged(&l7()),
            want: vec![
                "CreatePolicy",
                "DeleteBackends",
                "AddBackends",
                "UpdateLoadBalancer",
            ],
        });
        d.listeners[1].rules[0].path_prefix = Some("/v2".into());
        cases.push(Case {
            name: "change rule path everywhere deletes the old policy",
            desired: d,
            observed: converged(&l7()),
            want: vec![
                "CreatePolicy",
                "DeleteBackends",
                "AddBackends",
                "AddBackends",
                "UpdateLoadBalancer",
                "DeletePolicies",
            ],
        });
        // L7: a policy without rules (crash between create and add rules)
        let mut obs = converged(&l7());
        obs.policies[0].rules.clear();
        cases.push(Case {
            name: "policy missing rules is replaced",
            desired: l7(),
            observed: obs,
            want: vec![
                "CreatePolicy",
                "DeleteBackends",
                "AddBackends",
                "AddBackends",
                "UpdateLoadBalancer",
                "DeletePolicies",
            ],
        });
        for c in cases {
            let p = plan(&c.desired, &c.observed).unwrap_or_else(|e| panic!("{}: {e}", c.name));
            assert_eq!(p.kinds(), c.want, "case {:?}: {:#?}", c.name, p.ops);
        }
    }

    #[test]
    fn create_from_nothing_details() {
        let mut d = l4();
        d.source_ranges = vec!["10.1.2.3/8".into()];
        let p = plan(&d, &ObservedLb::default()).unwrap();
        assert_eq!(p.refs, Refs::default());
        assert!(p.ops.contains(&Op::AddSecurityGroupRules {
            rules: vec![SgRule {
                protocol: "tcp".into(),
                cidr: "10.0.0.0/8".into(),
                name: format!("{}r_tcp_10.0.0.0/8", owner().child_prefix()),
            }]
        }));
        let create = p
            .ops
            .iter()
            .find(|o| matches!(o, Op::CreateLoadBalancer { .. }))
            .unwrap();
        assert_eq!(
            create,
            &Op::CreateLoadBalancer {
                name: "k8s_lb_c1_default_web_0a1b2c3d".into(),
                eips: vec![EipRef::Allocated],
                vxnet: None,
                private_ip: None,
                loadbalancer_type: 0,
            }
        );
        let Some(Op::AddListeners { listeners }) =
            p.ops.iter().find(|o| matches!(o, Op::AddListeners { .. }))
        else {
            panic!()
        };
        assert_eq!(listeners[0].attrs.healthy_check_method, "tcp");
        assert_eq!(listeners[0].attrs.healthy_check_option, "10|5|2|5");
        assert!(p.ops.contains(&Op::AddBackends {
            listener: ListenerRef::New {
                port: 80,
                transport: "tcp"
            },
            backends: vec![
                backend_add(&owner(), None, &be("i-1", 30080, 1)),
                backend_add(&owner(), None, &be("i-2", 30080, 1)),
            ],
        }));
    }

    #[test]
    fn in_place_changes_carry_the_right_values() {
        let mut d = l4();
        d.listeners[0].default_backends[0].port = 31000;
        d.listeners[0].default_backends[1].weight = 7;
        let p = plan(&d, &converged(&l4())).unwrap();
        assert_eq!(
            p.ops,
            vec![
                Op::ModifyBackend {
                    id: "lbb-2".into(),
                    port: None,
                    weight: Some(7)
                },
                Op::ModifyBackend {
                    id: "lbb-1".into(),
                    port: Some(31000),
                    weight: None
                },
                Op::UpdateLoadBalancer { lb: LbRef::Current },
            ]
        );
        let mut d = l4();
        d.listeners[0].health_check = Some(HealthCheck {
            method: HealthCheckMethod::Http {
                path: "/healthz".into(),
            },
            timing: HealthCheckTiming {
                interval_secs: 3,
                timeout_secs: 2,
                unhealthy_threshold: 3,
                healthy_threshold: 2,
            },
        });
        let p = plan(&d, &converged(&l4())).unwrap();
        assert_eq!(
            p.ops[0],
            Op::ModifyListener {
                id: "lbl-0".into(),
                change: ListenerChange {
                    healthy_check_method: Some("http|/healthz".into()),
                    healthy_check_option: Some("3|2|3|2".into()),
                    ..Default::default()
                }
            }
        );
    }

    #[test]
    fn rotation_binds_new_cert_then_deletes_old() {
        let mut d = l7();
        d.listeners[1].certificates = vec![cert("B")];
        let p = plan(&d, &converged(&l7())).unwrap();
        assert!(
            !format!("{p:?}").contains("PRIVATE KEY"),
            "keys must not be printed"
        );
        let fp = cert("B").fingerprint();
        assert!(
            matches!(&p.ops[0], Op::UploadCertificate { fingerprint, .. } if *fingerprint == fp)
        );
        assert_eq!(
            p.ops[1],
            Op::ModifyListener {
                id: "lbl-1".into(),
                change: ListenerChange {
                    certificates: Some(vec![fp]),
                    ..Default::default()
                }
            }
        );
        assert_eq!(
            p.ops.last().unwrap(),
            &Op::DeleteCertificates {
                ids: vec!["sc-0".into()]
            }
        );
    }

    #[test]
    fn delete_order() {
        let p = plan_delete(&l7().owner, &converged(&l7()));
        assert_eq!(
            p.kinds(),
            vec![
                "DeleteBackends",
                "DeleteListeners",
                "DeletePolicies",
                "UpdateLoadBalancer",
                "DissociateEips",
                "DeleteLoadBalancer",
                "ReleaseEips",
                "DeleteSecurityGroup",
                "DeleteCertificates",
                "DeleteTag",
            ]
        );
        // Nothing there: nothing to do.
        assert!(plan_delete(&owner(), &ObservedLb::default()).is_empty());
        // An LB in an error state is deleted directly.
        let mut obs = converged(&l4());
        lb_mut(&mut obs).status = "suspended".into();
        assert_eq!(
            plan_delete(&owner(), &obs).kinds(),
            vec![
                "DeleteLoadBalancer",
                "ReleaseEips",
                "DeleteSecurityGroup",
                "DeleteTag"
            ]
        );
        // A user's EIP is never released.
        let mut d = l4();
        d.network = LbNetwork::Public {
            eip: EipSource::Existing(vec!["eip-user".into()]),
        };
        let p = plan_delete(&owner(), &converged(&d));
        assert!(!p.kinds().contains(&"ReleaseEips"), "{:?}", p.kinds());
        assert!(p.kinds().contains(&"DissociateEips"));
    }

    fn reused_obs(d: &DesiredLb) -> ObservedLb {
        // The user's LB: its own name, a foreign listener on 443, our listener on 80.
        let mut obs = converged(d);
        obs.security_group = None;
        obs.sg_rules.clear();
        obs.eips.clear();
        let lb = lb_mut(&mut obs);
        lb.loadbalancer_name = "users-lb".into();
        lb.loadbalancer_id = "lb-user".into();
        lb.listeners.push(LoadBalancerListener {
            loadbalancer_listener_id: "lbl-foreign".into(),
            loadbalancer_listener_name: "theirs".into(),
            listener_port: 443,
            listener_protocol: "tcp".into(),
            ..Default::default()
        });
        obs
    }

    #[test]
    fn reuse_existing_lb() {
        let mut d = l4();
        d.reuse_existing = Some("lb-user".into());
        let obs = reused_obs(&d);
        assert!(plan(&d, &obs).unwrap().is_empty());
        // Untagged at first: adopted by tag, nothing else, no SG or EIP.
        let mut fresh = obs.clone();
        lb_mut(&mut fresh).tags.clear();
        lb_mut(&mut fresh)
            .listeners
            .retain(|l| l.listener_port == 443);
        let p = plan(&d, &fresh).unwrap();
        assert_eq!(
            p.kinds(),
            vec![
                "AttachTag",
                "AddListeners",
                "AddBackends",
                "UpdateLoadBalancer"
            ]
        );
        // A port taken by the user's listener is a conflict.
        let mut d2 = d.clone();
        d2.listeners[0].port = 443;
        let e = plan(&d2, &fresh).unwrap_err();
        assert!(matches!(e, Error::Conflict(_)), "{e}");
        assert!(e.to_string().contains("listeners[0].port"), "{e}");
        // Deletion removes only our listener and never the LB.
        let p = plan_delete(&owner(), &obs);
        assert_eq!(
            p.kinds(),
            vec![
                "DeleteBackends",
                "DeleteListeners",
                "UpdateLoadBalancer",
                "DeleteTag"
            ]
        );
        assert_eq!(
            p.ops[1],
            Op::DeleteListeners {
                ids: vec!["lbl-0".into()]
            }
        );
        // A reused LB that does not exist.
        let e = plan(&d, &ObservedLb::default()).unwrap_err();
        assert!(matches!(e, Error::ReferenceNotFound { .. }), "{e}");
    }

    #[test]
    fn stale_lb_and_user_eip_errors() {
        // The LB of the tag was deleted out of band: a new one is created,
        // the tagged EIP (now available) is reused.
        let mut obs = converged(&l4());
        obs.lb = None;
        obs.eips[0].status = "available".into();
        obs.eips[0].resource = None;
        let p = plan(&l4(), &obs).unwrap();
        assert_eq!(
            p.kinds(),
            vec![
                "CreateLoadBalancer",
                "AddListeners",
                "AddBackends",
                "UpdateLoadBalancer"
            ]
        );
        assert!(
            matches!(&p.ops[0], Op::CreateLoadBalancer { eips, .. } if eips == &vec![EipRef::Id("eip-own".into())])
        );
        // A user's EIP bound to someone else.
        let mut d = l4();
        d.network = LbNetwork::Public {
            eip: EipSource::Existing(vec!["eip-x".into()]),
        };
        let mut obs = converged(&l4());
        obs.wanted_eips.push(Eip {
            eip_id: "eip-x".into(),
            status: "associated".into(),
            resource: Some(EipResource {
                resource_id: "i-9".into(),
                resource_type: "instance".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(matches!(plan(&d, &obs), Err(Error::Conflict(_))));
        obs.wanted_eips.clear();
        let e = plan(&d, &obs).unwrap_err();
        assert!(e.to_string().contains("network.eip.ids[0]"), "{e}");
    }
}

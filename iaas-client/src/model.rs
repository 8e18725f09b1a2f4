//! Resource records as the API returns them (QingCloud field names).
//!
//! The same types are what the emulator stores and serves, so a field the
//! client reads is a field the emulator writes. Every field defaults when
//! absent: real endpoints omit fields freely.

use serde::{Deserialize, Serialize};

/// Tag reference carried by tagged resources.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TagRef {
    /// `tag-xxxx`.
    pub tag_id: String,
    /// Tag name.
    pub tag_name: String,
}

/// A NIC of an instance on a vxnet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceVxnet {
    /// `vxnet-xxxx`.
    pub vxnet_id: String,
    /// Vxnet name.
    pub vxnet_name: String,
    /// Private address on that vxnet.
    pub private_ip: String,
    /// NIC id (MAC-like).
    pub nic_id: String,
}

/// An EIP as referenced from an instance or a load balancer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EipRef {
    /// `eip-xxxx`.
    pub eip_id: String,
    /// The public address.
    pub eip_addr: String,
    /// Name.
    pub eip_name: String,
}

/// A virtual machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Instance {
    /// `i-xxxx`.
    pub instance_id: String,
    /// Name (usually the hostname).
    pub instance_name: String,
    /// Type, for example `small_b` or `c1m2`.
    pub instance_type: String,
    /// pending, running, stopped, suspended, terminated, ceased.
    pub status: String,
    /// starting, stopping, ... or empty.
    pub transition_status: String,
    /// NICs.
    pub vxnets: Vec<InstanceVxnet>,
    /// Associated EIP, if any.
    pub eip: Option<EipRef>,
    /// Zone id.
    #[serde(alias = "zone")]
    pub zone_id: String,
    /// RFC 3339 creation time.
    pub create_time: String,
    /// Tags.
    pub tags: Vec<TagRef>,
    /// An existing host the emulator adopted (a real node of a local
    /// cluster): it has no data plane of its own. Absent on real clouds.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
}

/// The router a vxnet is attached to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VxnetRouter {
    /// `rtr-xxxx`.
    pub router_id: String,
    /// Router name.
    pub router_name: String,
    /// The vxnet's CIDR.
    pub ip_network: String,
    /// The router's address on the vxnet (the gateway).
    pub manager_ip: String,
}

/// A private network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Vxnet {
    /// `vxnet-xxxx`.
    pub vxnet_id: String,
    /// Name.
    pub vxnet_name: String,
    /// 1 = managed (VPC), 0 = unmanaged.
    pub vxnet_type: i32,
    /// The VPC router, for managed vxnets.
    pub router: Option<VxnetRouter>,
    /// Instances on it (verbose only).
    pub instance_ids: Vec<String>,
    /// Creation time.
    pub create_time: String,
    /// Zone id.
    pub zone_id: String,
    /// Tags.
    pub tags: Vec<TagRef>,
}

/// Where a volume is attached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VolumeInstance {
    /// Instance id; empty when not attached.
    pub instance_id: String,
    /// Instance name.
    pub instance_name: String,
    /// Device path on the instance, e.g. `/dev/vdc` (or a loop device in the emulator).
    pub device: String,
}

/// A block disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Volume {
    /// `vol-xxxx`.
    pub volume_id: String,
    /// Name.
    pub volume_name: String,
    /// Size in GB.
    pub size: u64,
    /// Disk type (0 performance, 2 capacity, 3 super performance, 5 neonsan, ...).
    pub volume_type: i32,
    /// pending, available, in-use, suspended, deleted, ceased.
    pub status: String,
    /// creating, attaching, detaching, deleting, resizing, or empty.
    pub transition_status: String,
    /// Attachment, when in use.
    pub instance: Option<VolumeInstance>,
    /// Zone id.
    pub zone_id: String,
    /// Creation time.
    pub create_time: String,
    /// Tags.
    pub tags: Vec<TagRef>,
}

/// What a snapshot was taken of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SnapshotResource {
    /// Source volume id.
    pub resource_id: String,
    /// `volume` or `instance`.
    pub resource_type: String,
    /// Source name.
    pub resource_name: String,
}

/// A point-in-time copy of a volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Snapshot {
    /// `ss-xxxx`.
    pub snapshot_id: String,
    /// Name.
    pub snapshot_name: String,
    /// pending, available, suspended, deleted, ceased.
    pub status: String,
    /// creating, deleting, or empty.
    pub transition_status: String,
    /// Size in GB (of the source at snapshot time).
    pub size: u64,
    /// 1 full, 0 incremental.
    pub is_full: i32,
    /// Source.
    pub resource: Option<SnapshotResource>,
    /// Creation time.
    pub create_time: String,
    /// Tags.
    pub tags: Vec<TagRef>,
}

/// An asynchronous job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Job {
    /// `j-xxxx`.
    pub job_id: String,
    /// The action that created it.
    pub job_action: String,
    /// pending, working, successful, failed.
    pub status: String,
    /// Comma-separated ids of the resources the job acts on.
    pub resource_ids: String,
    /// Error code when failed (0 otherwise).
    pub error_code: i32,
    /// Error message when failed.
    pub error_message: String,
    /// Creation time.
    pub create_time: String,
    /// Time of the last status change.
    pub status_time: String,
}

/// A backend of a listener.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoadBalancerBackend {
    /// `lbb-xxxx`.
    pub loadbalancer_backend_id: String,
    /// Name.
    pub loadbalancer_backend_name: String,
    /// Owning listener.
    pub loadbalancer_listener_id: String,
    /// Owning load balancer.
    pub loadbalancer_id: String,
    /// Instance id, or an IP address for direct (pod) backends.
    pub resource_id: String,
    /// Backend port.
    pub port: u16,
    /// Weight 1..100.
    pub weight: u32,
    /// L7 policy this backend serves, if any.
    pub loadbalancer_policy_id: String,
    /// up, down, abnormal (health).
    pub status: String,
    /// Creation time.
    pub create_time: String,
}

/// A listener of a load balancer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoadBalancerListener {
    /// `lbl-xxxx`.
    pub loadbalancer_listener_id: String,
    /// Name.
    pub loadbalancer_listener_name: String,
    /// Owning load balancer.
    pub loadbalancer_id: String,
    /// Port the listener binds.
    pub listener_port: u16,
    /// tcp, udp, http, https.
    pub listener_protocol: String,
    /// tcp, udp, http.
    pub backend_protocol: String,
    /// roundrobin, leastconn, source.
    pub balance_mode: String,
    /// `tcp` or `http|/path`.
    pub healthy_check_method: String,
    /// `interval|timeout|unhealthy|healthy`.
    pub healthy_check_option: String,
    /// Session stickiness spec (empty: off).
    pub session_sticky: String,
    /// Bit flags for headers added (1 = X-Forwarded-For).
    pub forwardfor: i32,
    /// Server certificates for https listeners.
    pub server_certificate_id: Vec<String>,
    /// Backends (verbose).
    pub backends: Vec<LoadBalancerBackend>,
    /// Creation time.
    pub create_time: String,
}

/// A load balancer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoadBalancer {
    /// `lb-xxxx`.
    pub loadbalancer_id: String,
    /// Name.
    pub loadbalancer_name: String,
    /// Size class (0..5).
    pub loadbalancer_type: i32,
    /// pending, active, stopped, suspended, deleted, ceased.
    pub status: String,
    /// creating, updating, deleting, or empty.
    pub transition_status: String,
    /// 1 when every change has been applied with UpdateLoadBalancers.
    pub is_applied: i32,
    /// Public addresses (public LBs).
    pub eips: Vec<EipRef>,
    /// Vxnet of an internal LB.
    pub vxnet_id: String,
    /// Private addresses.
    pub private_ips: Vec<String>,
    /// Security group applied to the LB.
    pub security_group_id: String,
    /// Listeners (verbose).
    pub listeners: Vec<LoadBalancerListener>,
    /// Creation time.
    pub create_time: String,
    /// Tags.
    pub tags: Vec<TagRef>,
}

/// A rule of an L7 policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoadBalancerPolicyRule {
    /// `lbpr-xxxx`.
    pub loadbalancer_policy_rule_id: String,
    /// Name.
    pub loadbalancer_policy_rule_name: String,
    /// Owning policy.
    pub loadbalancer_policy_id: String,
    /// domain or url.
    pub rule_type: String,
    /// The host or path pattern.
    pub val: String,
}

/// An L7 forwarding policy (a set of domain/url rules).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoadBalancerPolicy {
    /// `lbp-xxxx`.
    pub loadbalancer_policy_id: String,
    /// Name.
    pub loadbalancer_policy_name: String,
    /// `and` or `or` between rules.
    pub operator: String,
    /// 1 when applied.
    pub is_applied: i32,
    /// Rules.
    pub rules: Vec<LoadBalancerPolicyRule>,
    /// Creation time.
    pub create_time: String,
}

/// An uploaded TLS certificate (the private key is never returned).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerCertificate {
    /// `sc-xxxx`.
    pub server_certificate_id: String,
    /// Name.
    pub server_certificate_name: String,
    /// PEM chain.
    pub certificate_content: String,
    /// Creation time.
    pub create_time: String,
    /// Tags.
    pub tags: Vec<TagRef>,
}

/// What an EIP is bound to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EipResource {
    /// Instance or load balancer id.
    pub resource_id: String,
    /// `instance` or `loadbalancer`.
    pub resource_type: String,
    /// Its name.
    pub resource_name: String,
}

/// A public address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Eip {
    /// `eip-xxxx`.
    pub eip_id: String,
    /// Name.
    pub eip_name: String,
    /// The address.
    pub eip_addr: String,
    /// pending, available, associated, released.
    pub status: String,
    /// associating, dissociating, releasing, or empty.
    pub transition_status: String,
    /// Mbps.
    pub bandwidth: u32,
    /// Binding, when associated.
    pub resource: Option<EipResource>,
    /// Creation time.
    pub create_time: String,
    /// Tags.
    pub tags: Vec<TagRef>,
}

/// A VPC router.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Router {
    /// `rtr-xxxx`.
    pub router_id: String,
    /// Name.
    pub router_name: String,
    /// pending, active, poweroffed, suspended, deleted, ceased.
    pub status: String,
    /// Transition, or empty.
    pub transition_status: String,
    /// 1 when statics are applied.
    pub is_applied: i32,
    /// The VPC address range.
    pub vpc_network: String,
    /// Vxnets attached.
    pub vxnets: Vec<String>,
    /// Creation time.
    pub create_time: String,
    /// Tags.
    pub tags: Vec<TagRef>,
}

/// Static type of a VPC route entry (`val1` destination CIDR, `val2` next-hop IP).
///
/// QingCloud numbers 1..8 for port forwarding, VPN, DHCP, tunnels, filters and
/// DNS; routes for pod CIDRs use this suite's documented value 9.
pub const STATIC_TYPE_ROUTE: i32 = 9;

/// A router rule (port forward, route, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouterStatic {
    /// `rtrs-xxxx`.
    pub router_static_id: String,
    /// Name.
    pub router_static_name: String,
    /// Owning router.
    pub router_id: String,
    /// Vxnet the rule applies to (may be empty).
    pub vxnet_id: String,
    /// Rule type (see [`STATIC_TYPE_ROUTE`]).
    pub static_type: i32,
    /// Rule value 1.
    pub val1: String,
    /// Rule value 2.
    pub val2: String,
    /// Rule value 3.
    pub val3: String,
    /// Rule value 4.
    pub val4: String,
    /// Rule value 5.
    pub val5: String,
    /// Rule value 6.
    pub val6: String,
    /// 1 when disabled.
    pub disabled: i32,
    /// 1 when the rule is in force (after UpdateRouters).
    pub is_applied: i32,
    /// Creation time.
    pub create_time: String,
}

/// A firewall.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecurityGroup {
    /// `sg-xxxx`.
    pub security_group_id: String,
    /// Name.
    pub security_group_name: String,
    /// 1 when rules are applied.
    pub is_applied: i32,
    /// 1 for the zone's default group.
    pub is_default: i32,
    /// Resources it is applied to.
    pub resources: Vec<EipResource>,
    /// Creation time.
    pub create_time: String,
    /// Tags.
    pub tags: Vec<TagRef>,
}

/// A firewall rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecurityGroupRule {
    /// `sgr-xxxx`.
    pub security_group_rule_id: String,
    /// Name.
    pub security_group_rule_name: String,
    /// Owning group.
    pub security_group_id: String,
    /// tcp, udp, icmp, ...
    pub protocol: String,
    /// 0 (highest) .. 100.
    pub priority: i32,
    /// accept or drop.
    pub action: String,
    /// 0 ingress, 1 egress.
    pub direction: i32,
    /// Port range start (tcp/udp).
    pub val1: String,
    /// Port range end (tcp/udp).
    pub val2: String,
    /// Source CIDR.
    pub val3: String,
    /// 1 when disabled.
    pub disabled: i32,
}

/// A tag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tag {
    /// `tag-xxxx`.
    pub tag_id: String,
    /// Name (unique per owner).
    pub tag_name: String,
    /// Description.
    pub description: String,
    /// Number of resources carrying it.
    pub resource_count: u32,
    /// The bindings (verbose).
    pub resource_tag_pairs: Vec<ResourceTagPair>,
    /// Creation time.
    pub create_time: String,
}

/// A binding of a tag to a resource.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResourceTagPair {
    /// Tag id.
    pub tag_id: String,
    /// instance, volume, snapshot, loadbalancer, eip, security_group, server_certificate, router, vxnet.
    pub resource_type: String,
    /// Resource id.
    pub resource_id: String,
}

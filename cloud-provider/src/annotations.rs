//! Service annotations (documented in docs/ANNOTATIONS.md). QingCloud's
//! names where QingCloud has the feature; `cloudsuite.io/...` otherwise.

/// Comma-separated EIP ids to bind (public LBs).
pub const EIP_IDS: &str = "service.beta.kubernetes.io/qingcloud-load-balancer-eip-ids";
/// `allocate` (default: a new EIP owned by the Service) or `manual` (requires `EIP_IDS`).
pub const EIP_SOURCE: &str = "service.beta.kubernetes.io/qingcloud-load-balancer-eip-source";
/// Bandwidth (Mbps) of an allocated EIP.
pub const EIP_BANDWIDTH: &str = "service.beta.kubernetes.io/qingcloud-load-balancer-eip-bandwidth";
/// `public` (default) or `internal`.
pub const NETWORK_TYPE: &str = "service.beta.kubernetes.io/qingcloud-load-balancer-network-type";
/// Vxnet of an internal LB (default: the cloud config's `vxnet_id`).
pub const VXNET_ID: &str = "service.beta.kubernetes.io/qingcloud-load-balancer-vxnet-id";
/// Reuse this existing LB (`lb-xxxx`) instead of creating one; only our listeners are managed.
pub const LB_ID: &str = "service.beta.kubernetes.io/qingcloud-load-balancer-id";
/// LB size class 0..5.
pub const LB_TYPE: &str = "service.beta.kubernetes.io/qingcloud-load-balancer-type";
/// Health check per port: `80:tcp,8080:http|/healthz` (or one value for all ports).
pub const HEALTH_METHOD: &str =
    "service.beta.kubernetes.io/qingcloud-lb-listener-healthycheckmethod";
/// Health check timing per port: `80:10|5|2|5` = interval|timeout|unhealthy|healthy.
pub const HEALTH_OPTION: &str =
    "service.beta.kubernetes.io/qingcloud-lb-listener-healthycheckoption";
/// Balance mode per port: `roundrobin`, `leastconn`, `source`.
pub const BALANCE_MODE: &str = "service.beta.kubernetes.io/qingcloud-lb-listener-balancemode";
/// Listener protocol per port: `80:http,443:https` (default: the port's TCP/UDP).
pub const LISTENER_PROTOCOL: &str = "service.beta.kubernetes.io/qingcloud-lb-listener-protocol";
/// Certificate per HTTPS port: `443:<tls Secret name in the Service's namespace>`.
pub const LISTENER_CERT: &str = "service.beta.kubernetes.io/qingcloud-lb-listener-cert";
/// `node` (default: node ports) or `pod` (pod IPs directly; VPC-routable pods).
pub const BACKEND_TYPE: &str = "cloudsuite.io/load-balancer-backend-type";
/// Comma-separated allowed client CIDRs (same as spec.loadBalancerSourceRanges, which wins).
pub const SOURCE_RANGES: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";
/// Node label excluding a node from LB backends (Kubernetes standard).
pub const EXCLUDE_NODE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// Every annotation this controller reads.
pub const ALL: &[&str] = &[
    EIP_IDS,
    EIP_SOURCE,
    EIP_BANDWIDTH,
    NETWORK_TYPE,
    VXNET_ID,
    LB_ID,
    LB_TYPE,
    HEALTH_METHOD,
    HEALTH_OPTION,
    BALANCE_MODE,
    LISTENER_PROTOCOL,
    LISTENER_CERT,
    BACKEND_TYPE,
    SOURCE_RANGES,
];

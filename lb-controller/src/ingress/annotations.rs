//! Ingress and IngressClass annotations (documented in docs/ANNOTATIONS.md,
//! section "Ingress"). Ours live under `ingress.cloudsuite.io/`; the two
//! Kubernetes-standard ones keep their standard names.

/// Our IngressClass `spec.controller`.
pub const CONTROLLER_NAME: &str = "cloudsuite.io/ingress-controller";
/// Legacy class selection on the Ingress (before `spec.ingressClassName`).
pub const LEGACY_CLASS: &str = "kubernetes.io/ingress.class";
/// IngressClass annotation marking the cluster's default class.
pub const DEFAULT_CLASS: &str = "ingressclass.kubernetes.io/is-default-class";

/// Share one LB with every Ingress naming the same group.
pub const GROUP_NAME: &str = "ingress.cloudsuite.io/group.name";
/// Precedence inside a group: lower first (-1000..1000, default 0).
pub const GROUP_ORDER: &str = "ingress.cloudsuite.io/group.order";
/// `node` (default: Service node ports on ready nodes) or `pod` (EndpointSlice addresses).
pub const BACKEND_TYPE: &str = "ingress.cloudsuite.io/backend-type";
/// `public` (default) or `internal`.
pub const NETWORK_TYPE: &str = "ingress.cloudsuite.io/network-type";
/// Vxnet of an internal LB (default: the controller's `--vxnet-id`).
pub const VXNET_ID: &str = "ingress.cloudsuite.io/vxnet-id";
/// Private address of an internal LB (default: any free address).
pub const PRIVATE_IP: &str = "ingress.cloudsuite.io/private-ip";
/// Comma-separated existing EIP ids to bind (never released by the controller).
pub const EIP_IDS: &str = "ingress.cloudsuite.io/eip-ids";
/// Bandwidth (Mbps, 1..1000) of the EIP allocated when no `eip-ids` are given.
pub const EIP_BANDWIDTH: &str = "ingress.cloudsuite.io/eip-bandwidth";
/// Comma-separated client CIDRs allowed to connect (default: everyone).
pub const SOURCE_RANGES: &str = "ingress.cloudsuite.io/source-ranges";
/// `true`: TLS hosts are served over HTTPS only (see docs/ANNOTATIONS.md).
pub const SSL_REDIRECT: &str = "ingress.cloudsuite.io/ssl-redirect";
/// LB size class 0..5.
pub const LB_TYPE: &str = "ingress.cloudsuite.io/lb-type";
/// Written by the controller: which LB the Ingress's rules were applied to
/// (`ingress` or `group:<name>`), so a moved Ingress is removed from the old one.
pub const APPLIED_LB: &str = "ingress.cloudsuite.io/applied-lb";

/// The finalizer guarding cloud cleanup.
pub const FINALIZER: &str = "ingress.cloudsuite.io/lb-cleanup";

/// Every annotation a user may set on an Ingress.
pub const ALL: &[&str] = &[
    GROUP_NAME,
    GROUP_ORDER,
    BACKEND_TYPE,
    NETWORK_TYPE,
    VXNET_ID,
    PRIVATE_IP,
    EIP_IDS,
    EIP_BANDWIDTH,
    SOURCE_RANGES,
    SSL_REDIRECT,
    LB_TYPE,
];

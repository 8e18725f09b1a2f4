//! The desired state of one cloud load balancer, independent of Kubernetes.
//!
//! Controllers translate a Service or an Ingress into a [`DesiredLb`]; the
//! reconciler makes the cloud match it. Everything the cloud calls a name is
//! derived deterministically from the [`LbOwner`], so a restarted controller
//! finds its resources again from names and the ownership tag alone.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Longest name this crate gives a cloud resource (QingCloud accepts more;
/// 128 keeps names readable in consoles and well inside every limit).
pub const NAME_MAX: usize = 128;
/// Longest tag name the API accepts.
pub const TAG_NAME_MAX: usize = 255;
/// Prefix of every ownership tag this crate creates.
pub const TAG_PREFIX: &str = "k8s.lb/";
/// Default health check: `interval|timeout|unhealthy|healthy` seconds/counts.
pub const DEFAULT_HEALTH_CHECK: HealthCheckTiming = HealthCheckTiming {
    interval_secs: 10,
    timeout_secs: 5,
    unhealthy_threshold: 2,
    healthy_threshold: 5,
};

/// An invalid field of the desired model; `field` is a path such as
/// `listeners[1].certificates[0].pem_key`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct ModelError {
    /// Path of the offending field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ModelError {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ModelError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What kind of Kubernetes object owns a load balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum OwnerKind {
    /// A Service of type LoadBalancer (L4).
    Service,
    /// One Ingress with its own LB (L7).
    Ingress,
    /// Several Ingresses sharing one LB through a group name.
    IngressGroup,
}

impl OwnerKind {
    /// Short stable token used in names and tags.
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerKind::Service => "svc",
            OwnerKind::Ingress => "ing",
            OwnerKind::IngressGroup => "ingg",
        }
    }
}

/// Who owns a load balancer: the identity every cloud name and the
/// ownership tag are derived from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LbOwner {
    /// The cluster id (from the cloud config); separates clusters sharing an account.
    pub cluster_id: String,
    /// Service, Ingress or IngressGroup.
    pub kind: OwnerKind,
    /// Namespace (may be empty only for an IngressGroup).
    pub namespace: String,
    /// Object name (the group name for an IngressGroup).
    pub name: String,
    /// Object UID: a re-created object with the same name gets new resources.
    pub uid: String,
}

/// Characters allowed in cloud resource names; everything else becomes `_`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// First `n` hex characters of SHA-256 over `parts` joined by NUL.
pub(crate) fn short_hash(parts: &[&str], n: usize) -> String {
    let mut h = Sha256::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update([0u8]);
        }
        h.update(p.as_bytes());
    }
    let mut s = hex::encode(h.finalize());
    s.truncate(n);
    s
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl LbOwner {
    /// Checks that every field can be encoded in names and tags.
    pub fn validate(&self) -> Result<(), ModelError> {
        if !is_token(&self.cluster_id) || self.cluster_id.len() > 63 {
            return Err(ModelError::new(
                "owner.cluster_id",
                format!(
                    "{:?} must be 1..63 characters of A-Z a-z 0-9 - _ .",
                    self.cluster_id
                ),
            ));
        }
        if self.namespace.is_empty() {
            if self.kind != OwnerKind::IngressGroup {
                return Err(ModelError::new("owner.namespace", "must not be empty"));
            }
        } else if !is_token(&self.namespace) {
            return Err(ModelError::new(
                "owner.namespace",
                format!("{:?} is not a Kubernetes namespace name", self.namespace),
            ));
        }
        if !is_token(&self.name) {
            return Err(ModelError::new(
                "owner.name",
                format!("{:?} is not a Kubernetes object name", self.name),
            ));
        }
        if !is_token(&self.uid) || self.uid.len() > 64 {
            return Err(ModelError::new(
                "owner.uid",
                format!("{:?} is not an object UID", self.uid),
            ));
        }
        Ok(())
    }

    /// The first 8 characters of the UID without dashes.
    pub fn uid8(&self) -> String {
        self.uid.chars().filter(|c| *c != '-').take(8).collect()
    }

    /// A 12-hex-digit digest of the whole identity; prefixes the names of
    /// listeners, certificates and policies, which carry no tags.
    pub fn owner_hash(&self) -> String {
        short_hash(
            &[
                &self.cluster_id,
                self.kind.as_str(),
                &self.namespace,
                &self.name,
                &self.uid,
            ],
            12,
        )
    }

    /// The load balancer's name: `k8s_lb_<cluster>_<ns>_<name>_<uid8>`
    /// (`k8s_ing_…` for Ingresses), sanitised and at most [`NAME_MAX`]
    /// characters; when too long, the middle is cut and a digest keeps it unique.
    pub fn lb_name(&self) -> String {
        let kind = match self.kind {
            OwnerKind::Service => "lb",
            OwnerKind::Ingress => "ing",
            OwnerKind::IngressGroup => "ingg",
        };
        let full = sanitize(&format!(
            "k8s_{kind}_{}_{}_{}_{}",
            self.cluster_id,
            self.namespace,
            self.name,
            self.uid8()
        ));
        if full.len() <= NAME_MAX {
            return full;
        }
        let tail = format!("_{}_{}", self.owner_hash(), sanitize(&self.uid8()));
        let mut head = full;
        head.truncate(NAME_MAX - tail.len());
        head + &tail
    }

    /// The security group's name (same as the LB's: one SG per LB).
    pub fn security_group_name(&self) -> String {
        self.lb_name()
    }

    /// The name given to EIPs allocated for this LB.
    pub fn eip_name(&self) -> String {
        self.lb_name()
    }

    /// The ownership tag's name, unique per owner:
    /// `k8s.lb/<cluster>/<kind>/<ns>/<name>/<uid>`. Over-long identities
    /// keep their prefix and end in a digest so the name stays unique.
    pub fn tag_name(&self) -> String {
        let full = format!(
            "{}{}/{}/{}/{}",
            Self::tag_prefix(&self.cluster_id),
            self.kind.as_str(),
            self.namespace,
            self.name,
            self.uid
        );
        if full.len() <= TAG_NAME_MAX {
            return full;
        }
        let tail = format!("~{}", self.owner_hash());
        let mut head = full;
        head.truncate(TAG_NAME_MAX - tail.len());
        head + &tail
    }

    /// Prefix shared by the ownership tags of one cluster (for batch lookups).
    pub fn tag_prefix(cluster_id: &str) -> String {
        format!("{TAG_PREFIX}{cluster_id}/")
    }

    /// Prefix of listener, certificate and policy names of this owner.
    pub fn child_prefix(&self) -> String {
        format!("k8s_{}_", self.owner_hash())
    }

    /// Name of this owner's listener on `port`/`protocol`.
    pub fn listener_name(&self, port: u16, protocol: Protocol) -> String {
        format!("{}{}_{port}", self.child_prefix(), protocol.as_str())
    }

    /// Name of an uploaded certificate with content fingerprint `fp`.
    pub fn certificate_name(&self, fp: &str) -> String {
        format!("{}c_{fp}", self.child_prefix())
    }

    /// Name of the L7 policy with rule key `key`.
    pub fn policy_name(&self, key: &str) -> String {
        format!("{}p_{key}", self.child_prefix())
    }

    /// Name of backends this owner adds.
    pub fn backend_name(&self) -> String {
        format!("{}b", self.child_prefix())
    }
}

impl fmt::Display for LbOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.kind.as_str(),
            self.namespace,
            self.name,
            self.uid
        )
    }
}

/// Where a public LB's address comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EipSource {
    /// Allocate one EIP for this LB (released when the LB is deleted).
    Allocate {
        /// Bandwidth in Mbps (1..1000).
        bandwidth: u32,
    },
    /// Use these existing EIPs (never released by us).
    Existing(Vec<String>),
    /// Use the existing EIP with this address (never released by us).
    ByAddress(IpAddr),
}

/// Public (EIP) or internal (VPC address) load balancer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LbNetwork {
    /// Reachable on EIPs.
    Public {
        /// Where the EIP comes from.
        eip: EipSource,
    },
    /// Reachable on a private address of a vxnet.
    Internal {
        /// `vxnet-xxxx`.
        vxnet: String,
        /// A fixed private address; the cloud picks one when `None`.
        private_ip: Option<Ipv4Addr>,
    },
}

/// Listener (and backend) protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// HTTP (L7).
    Http,
    /// HTTPS, terminated at the LB with uploaded certificates.
    Https,
}

impl Protocol {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Http => "http",
            Protocol::Https => "https",
        }
    }

    /// Parses the API's spelling.
    pub fn parse(s: &str) -> Option<Protocol> {
        Some(match s {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "http" => Protocol::Http,
            "https" => Protocol::Https,
            _ => return None,
        })
    }

    /// The port space a listener occupies: UDP has its own, the rest share TCP's.
    pub fn transport(self) -> &'static str {
        if self == Protocol::Udp { "udp" } else { "tcp" }
    }

    /// Whether this is an L7 protocol (policies, certificates, forwardfor).
    pub fn is_l7(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Https)
    }

    /// The backend protocol the cloud uses when none is given.
    pub fn default_backend(self) -> Protocol {
        match self {
            Protocol::Tcp => Protocol::Tcp,
            Protocol::Udp => Protocol::Udp,
            Protocol::Http | Protocol::Https => Protocol::Http,
        }
    }
}

/// How a listener spreads connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum BalanceMode {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// Fewest active connections.
    LeastConn,
    /// Hash of the client address (session affinity ClientIP).
    Source,
}

impl BalanceMode {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BalanceMode::RoundRobin => "roundrobin",
            BalanceMode::LeastConn => "leastconn",
            BalanceMode::Source => "source",
        }
    }
}

/// How backends are probed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthCheckMethod {
    /// Connect (TCP listeners) or datagram probe (UDP listeners).
    Tcp,
    /// `GET path` expecting 2xx/3xx.
    Http {
        /// Request path, starting with `/`.
        path: String,
    },
}

/// Probe timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheckTiming {
    /// Seconds between probes.
    pub interval_secs: u32,
    /// Seconds before a probe counts as failed.
    pub timeout_secs: u32,
    /// Failed probes before a backend is taken out.
    pub unhealthy_threshold: u32,
    /// Good probes before a backend is put back.
    pub healthy_threshold: u32,
}

/// A listener's health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// Probe kind.
    pub method: HealthCheckMethod,
    /// Probe timing.
    pub timing: HealthCheckTiming,
}

/// A TLS certificate and key for an HTTPS listener. Uploaded under a name
/// derived from the content fingerprint, so a rotated Secret becomes a new
/// certificate (bound, then the old one deleted). `Debug` hides the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredCert {
    /// Human label (for example the Secret's `namespace/name`); not part of identity.
    pub name: String,
    /// PEM certificate chain.
    pub pem_chain: String,
    /// PEM private key.
    pub pem_key: String,
}

impl DesiredCert {
    /// 16 hex digits of SHA-256 over chain and key: the certificate's identity.
    pub fn fingerprint(&self) -> String {
        short_hash(&[self.pem_chain.trim(), self.pem_key.trim()], 16)
    }
}

impl fmt::Debug for DesiredCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DesiredCert")
            .field("name", &self.name)
            .field("fingerprint", &self.fingerprint())
            .field("pem_key", &"<redacted>")
            .finish()
    }
}

/// What a backend points at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BackendTarget {
    /// An instance (`i-xxxx`), dialled on its private address.
    Instance(String),
    /// An address directly (a pod IP routable in the VPC).
    Ip(IpAddr),
}

impl BackendTarget {
    /// The API's `resource_id`.
    pub fn resource_id(&self) -> String {
        match self {
            BackendTarget::Instance(id) => id.clone(),
            BackendTarget::Ip(ip) => ip.to_string(),
        }
    }
}

/// One backend of a listener or rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredBackend {
    /// Instance or address.
    pub target: BackendTarget,
    /// Port on the target (a node port, or the pod's port).
    pub port: u16,
    /// Weight 1..100.
    pub weight: u32,
}

/// How a rule's path matches a request path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PathMatch {
    /// Plain string prefix (`/api` also matches `/apis`); Kubernetes
    /// `ImplementationSpecific`. Sent as the bare path.
    #[default]
    StringPrefix,
    /// Kubernetes `Prefix`: element-wise (`/api` matches `/api` and
    /// `/api/x`, not `/apis`). Sent as `~/path`.
    Prefix,
    /// Kubernetes `Exact`. Sent as `=/path`.
    Exact,
}

impl PathMatch {
    /// The policy rule value (`url` rule) for `path`.
    pub fn url_value(self, path: &str) -> String {
        match self {
            PathMatch::StringPrefix => path.to_string(),
            PathMatch::Prefix => format!("~{path}"),
            PathMatch::Exact => format!("={path}"),
        }
    }
}

/// An L7 routing rule: requests matching host and path go to `backends`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredRule {
    /// Exact host (`a.example.com`) or wildcard (`*.example.com`); `None` matches any host.
    pub host: Option<String>,
    /// Path starting with `/` (a prefix unless `path_match` is `Exact`);
    /// `None` matches any path.
    pub path_prefix: Option<String>,
    /// How `path_prefix` matches (the data plane picks the most specific
    /// matching rule: exact host over wildcard, longer path, exact over prefix).
    #[serde(default)]
    pub path_match: PathMatch,
    /// Where matching requests go.
    pub backends: Vec<DesiredBackend>,
}

impl DesiredRule {
    /// The `url` rule value, when the rule has a path.
    pub fn url_rule(&self) -> Option<String> {
        self.path_prefix
            .as_deref()
            .map(|p| self.path_match.url_value(p))
    }

    /// Identity of the rule's cloud policy: a digest of host and path rule.
    pub fn policy_key(&self) -> String {
        short_hash(
            &[
                self.host.as_deref().unwrap_or(""),
                self.url_rule().as_deref().unwrap_or(""),
            ],
            12,
        )
    }
}

/// One listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredListener {
    /// Port on the LB address.
    pub port: u16,
    /// Listener protocol.
    pub protocol: Protocol,
    /// Protocol towards backends; the listener's default when `None`.
    pub backend_protocol: Option<Protocol>,
    /// Balancing.
    pub balance_mode: BalanceMode,
    /// Health check; TCP (UDP for UDP listeners) with [`DEFAULT_HEALTH_CHECK`] when `None`.
    pub health_check: Option<HealthCheck>,
    /// Session stickiness spec for L7 listeners (cloud syntax); off when `None`.
    pub session_sticky: Option<String>,
    /// Add `X-Forwarded-For` (L7 listeners).
    pub forwardfor: bool,
    /// Certificates (HTTPS only; the first is the default, the rest by SNI).
    pub certificates: Vec<DesiredCert>,
    /// L7 rules (HTTP/HTTPS only).
    pub rules: Vec<DesiredRule>,
    /// Backends for traffic no rule matches (all traffic for L4 listeners).
    pub default_backends: Vec<DesiredBackend>,
}

impl DesiredListener {
    /// A TCP/UDP listener with defaults.
    pub fn l4(port: u16, protocol: Protocol, backends: Vec<DesiredBackend>) -> Self {
        DesiredListener {
            port,
            protocol,
            backend_protocol: None,
            balance_mode: BalanceMode::RoundRobin,
            health_check: None,
            session_sticky: None,
            forwardfor: false,
            certificates: Vec::new(),
            rules: Vec::new(),
            default_backends: backends,
        }
    }
}

/// The desired state of one load balancer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredLb {
    /// Who owns it.
    pub owner: LbOwner,
    /// Public or internal (ignored for a reused LB, whose network is its owner's).
    pub network: LbNetwork,
    /// Adopt this user-given LB instead of creating one: only our listeners
    /// are managed and removed, the LB itself is never deleted.
    pub reuse_existing: Option<String>,
    /// Size class 0..5 (fixed at creation).
    pub loadbalancer_type: i32,
    /// Allowed client CIDRs (IPv4); empty allows everyone. Enforced by a
    /// security group owned by the LB.
    pub source_ranges: Vec<String>,
    /// Listeners.
    pub listeners: Vec<DesiredListener>,
}

/// Parses an IPv4 CIDR (a bare address means /32) into its canonical
/// network form (`10.1.2.3/8` becomes `10.0.0.0/8`).
pub fn canonical_cidr(s: &str) -> Result<String, String> {
    let (addr, len) = match s.trim().split_once('/') {
        Some((a, l)) => (a, l),
        None => (s.trim(), "32"),
    };
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 CIDR (a.b.c.d/n)"))?;
    let prefix: u32 = len
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| format!("{s:?}: prefix length {len:?} is not 0..32"))?;
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    Ok(format!(
        "{}/{prefix}",
        Ipv4Addr::from(u32::from(addr) & mask)
    ))
}

fn valid_host(h: &str) -> bool {
    let body = h.strip_prefix("*.").unwrap_or(h);
    !body.is_empty()
        && h.len() <= 253
        && body.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn validate_backends(field: &str, backends: &[DesiredBackend]) -> Result<(), ModelError> {
    let mut seen = BTreeSet::new();
    for (i, b) in backends.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if let BackendTarget::Instance(id) = &b.target
            && !is_token(id)
        {
            return Err(ModelError::new(
                format!("{f}.target"),
                format!("{id:?} is not an instance id"),
            ));
        }
        if b.port == 0 {
            return Err(ModelError::new(format!("{f}.port"), "must be 1..65535"));
        }
        if !(1..=100).contains(&b.weight) {
            return Err(ModelError::new(
                format!("{f}.weight"),
                format!("{} is not within 1..100", b.weight),
            ));
        }
        if !seen.insert((b.target.resource_id(), b.port)) {
            return Err(ModelError::new(
                format!("{f}.target"),
                format!("{}:{} is listed twice", b.target.resource_id(), b.port),
            ));
        }
    }
    Ok(())
}

fn validate_timing(field: &str, t: &HealthCheckTiming) -> Result<(), ModelError> {
    for (name, v) in [
        ("interval_secs", t.interval_secs),
        ("timeout_secs", t.timeout_secs),
        ("unhealthy_threshold", t.unhealthy_threshold),
        ("healthy_threshold", t.healthy_threshold),
    ] {
        if !(1..=3600).contains(&v) {
            return Err(ModelError::new(
                format!("{field}.{name}"),
                format!("{v} is not within 1..3600"),
            ));
        }
    }
    Ok(())
}

impl DesiredListener {
    fn validate(&self, f: &str) -> Result<(), ModelError> {
        if self.port == 0 {
            return Err(ModelError::new(format!("{f}.port"), "must be 1..65535"));
        }
        if let Some(bp) = self.backend_protocol {
            let ok = match self.protocol {
                Protocol::Tcp => bp == Protocol::Tcp,
                Protocol::Udp => bp == Protocol::Udp,
                Protocol::Http | Protocol::Https => bp == Protocol::Http,
            };
            if !ok {
                return Err(ModelError::new(
                    format!("{f}.backend_protocol"),
                    format!(
                        "{} cannot serve a {} listener",
                        bp.as_str(),
                        self.protocol.as_str()
                    ),
                ));
            }
        }
        if let Some(hc) = &self.health_check {
            if let HealthCheckMethod::Http { path } = &hc.method
                && (!path.starts_with('/') || path.contains(['|', ' ', '\n']))
            {
                return Err(ModelError::new(
                    format!("{f}.health_check.method.path"),
                    format!("{path:?} must start with / and contain no spaces or |"),
                ));
            }
            validate_timing(&format!("{f}.health_check.timing"), &hc.timing)?;
        }
        if let Some(s) = &self.session_sticky
            && !self.protocol.is_l7()
        {
            return Err(ModelError::new(
                format!("{f}.session_sticky"),
                format!(
                    "{s:?}: stickiness needs an http or https listener; use balance_mode source"
                ),
            ));
        }
        if self.forwardfor && !self.protocol.is_l7() {
            return Err(ModelError::new(
                format!("{f}.forwardfor"),
                "X-Forwarded-For needs an http or https listener",
            ));
        }
        if self.protocol == Protocol::Https && self.certificates.is_empty() {
            return Err(ModelError::new(
                format!("{f}.certificates"),
                "an https listener needs at least one certificate",
            ));
        }
        if self.protocol != Protocol::Https && !self.certificates.is_empty() {
            return Err(ModelError::new(
                format!("{f}.certificates"),
                format!("a {} listener takes no certificate", self.protocol.as_str()),
            ));
        }
        let mut fps = BTreeSet::new();
        for (i, c) in self.certificates.iter().enumerate() {
            let cf = format!("{f}.certificates[{i}]");
            if !c.pem_chain.contains("-----BEGIN CERTIFICATE-----") {
                return Err(ModelError::new(
                    format!("{cf}.pem_chain"),
                    "not a PEM certificate chain",
                ));
            }
            if !c.pem_key.contains("PRIVATE KEY-----") {
                return Err(ModelError::new(
                    format!("{cf}.pem_key"),
                    "not a PEM private key",
                ));
            }
            if !fps.insert(c.fingerprint()) {
                return Err(ModelError::new(cf, "the same certificate is listed twice"));
            }
        }
        if !self.protocol.is_l7() && !self.rules.is_empty() {
            return Err(ModelError::new(
                format!("{f}.rules"),
                format!(
                    "host/path rules need an http or https listener, not {}",
                    self.protocol.as_str()
                ),
            ));
        }
        let mut keys = BTreeSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let rf = format!("{f}.rules[{i}]");
            if let Some(h) = &r.host
                && !valid_host(h)
            {
                return Err(ModelError::new(
                    format!("{rf}.host"),
                    format!("{h:?} is not a lower-case host name or *.wildcard"),
                ));
            }
            if let Some(p) = &r.path_prefix
                && (!p.starts_with('/') || p.contains([' ', '\n', '\t']))
            {
                return Err(ModelError::new(
                    format!("{rf}.path_prefix"),
                    format!("{p:?} must start with / and contain no whitespace"),
                ));
            }
            if r.path_prefix.is_none() && r.path_match != PathMatch::StringPrefix {
                return Err(ModelError::new(
                    format!("{rf}.path_match"),
                    "an Exact or Prefix match needs a path",
                ));
            }
            if r.host.is_none() && r.path_prefix.is_none() {
                return Err(ModelError::new(
                    rf,
                    "a rule needs a host or a path; use default_backends for everything else",
                ));
            }
            if !keys.insert((r.host.clone(), r.url_rule())) {
                return Err(ModelError::new(
                    rf,
                    "another rule of this listener has the same host and path",
                ));
            }
            validate_backends(&format!("{rf}.backends"), &r.backends)?;
        }
        validate_backends(&format!("{f}.default_backends"), &self.default_backends)
    }
}

impl DesiredLb {
    /// Checks the whole model; the error names the first offending field.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.owner.validate()?;
        if !(0..=5).contains(&self.loadbalancer_type) {
            return Err(ModelError::new(
                "loadbalancer_type",
                format!("{} is not within 0..5", self.loadbalancer_type),
            ));
        }
        if let Some(id) = &self.reuse_existing {
            if !is_token(id) {
                return Err(ModelError::new(
                    "reuse_existing",
                    format!("{id:?} is not a load balancer id"),
                ));
            }
            if !self.source_ranges.is_empty() {
                return Err(ModelError::new(
                    "source_ranges",
                    "cannot be enforced on a reused load balancer: its security group belongs to its owner",
                ));
            }
        }
        match &self.network {
            LbNetwork::Public { eip } => match eip {
                EipSource::Allocate { bandwidth } => {
                    if !(1..=1000).contains(bandwidth) {
                        return Err(ModelError::new(
                            "network.eip.bandwidth",
                            format!("{bandwidth} Mbps is not within 1..1000"),
                        ));
                    }
                }
                EipSource::Existing(ids) => {
                    if ids.is_empty() {
                        return Err(ModelError::new("network.eip.ids", "must not be empty"));
                    }
                    let mut seen = BTreeSet::new();
                    for (i, id) in ids.iter().enumerate() {
                        if !is_token(id) {
                            return Err(ModelError::new(
                                format!("network.eip.ids[{i}]"),
                                format!("{id:?} is not an EIP id"),
                            ));
                        }
                        if !seen.insert(id) {
                            return Err(ModelError::new(
                                format!("network.eip.ids[{i}]"),
                                format!("{id} is listed twice"),
                            ));
                        }
                    }
                }
                EipSource::ByAddress(_) => {}
            },
            LbNetwork::Internal { vxnet, .. } => {
                if !is_token(vxnet) {
                    return Err(ModelError::new(
                        "network.vxnet",
                        format!("{vxnet:?} is not a vxnet id"),
                    ));
                }
            }
        }
        for (i, c) in self.source_ranges.iter().enumerate() {
            canonical_cidr(c).map_err(|m| ModelError::new(format!("source_ranges[{i}]"), m))?;
        }
        let mut ports = BTreeSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let f = format!("listeners[{i}]");
            l.validate(&f)?;
            if !ports.insert((l.port, l.protocol.transport())) {
                return Err(ModelError::new(
                    format!("{f}.port"),
                    format!(
                        "port {}/{} is used by another listener",
                        l.port,
                        l.protocol.transport()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Source ranges in canonical form, sorted and deduplicated.
    /// Call after [`DesiredLb::validate`]; invalid entries are skipped.
    pub fn canonical_source_ranges(&self) -> Vec<String> {
        let set: BTreeSet<String> = self
            .source_ranges
            .iter()
            .filter_map(|c| canonical_cidr(c).ok())
            .collect();
        set.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> LbOwner {
        LbOwner {
            cluster_id: "c1".into(),
            kind: OwnerKind::Service,
            namespace: "default".into(),
            name: "web".into(),
            uid: "0a1b2c3d-1111-2222-3333-444455556666".into(),
        }
    }

    fn backend(port: u16) -> DesiredBackend {
        DesiredBackend {
            target: BackendTarget::Instance("i-1".into()),
            port,
            weight: 1,
        }
    }

    fn lb() -> DesiredLb {
        DesiredLb {
            owner: owner(),
            network: LbNetwork::Public {
                eip: EipSource::Allocate { bandwidth: 10 },
            },
            reuse_existing: None,
            loadbalancer_type: 0,
            source_ranges: vec![],
            listeners: vec![DesiredListener::l4(80, Protocol::Tcp, vec![backend(30080)])],
        }
    }

    #[test]
    fn names_are_deterministic_and_sanitised() {
        let o = owner();
        assert_eq!(o.lb_name(), "k8s_lb_c1_default_web_0a1b2c3d");
        assert_eq!(o.lb_name(), owner().lb_name());
        assert_eq!(
            o.tag_name(),
            "k8s.lb/c1/svc/default/web/0a1b2c3d-1111-2222-3333-444455556666"
        );
        assert!(o.tag_name().starts_with(&LbOwner::tag_prefix("c1")));
        let mut long = owner();
        long.name = "n".repeat(250);
        let n = long.lb_name();
        assert!(n.len() <= NAME_MAX, "{n}");
        assert!(n.ends_with("_0a1b2c3d"), "{n}");
        assert!(long.tag_name().len() <= TAG_NAME_MAX);
        let mut other = long.clone();
        other.uid = "ffff".into();
        assert_ne!(other.tag_name(), long.tag_name());
        assert_ne!(o.owner_hash(), other.owner_hash());
        assert!(
            o.listener_name(80, Protocol::Tcp)
                .starts_with(&o.child_prefix())
        );
    }

    #[test]
    fn owner_validation_names_fields() {
        let mut o = owner();
        o.cluster_id = "a/b".into();
        assert_eq!(o.validate().unwrap_err().field, "owner.cluster_id");
        let mut o = owner();
        o.namespace.clear();
        assert_eq!(o.validate().unwrap_err().field, "owner.namespace");
        o.kind = OwnerKind::IngressGroup;
        assert!(o.validate().is_ok());
        let mut o = owner();
        o.uid.clear();
        assert_eq!(o.validate().unwrap_err().field, "owner.uid");
    }

    #[test]
    fn cidrs_are_canonical() {
        assert_eq!(canonical_cidr("10.1.2.3/8").unwrap(), "10.0.0.0/8");
        assert_eq!(canonical_cidr("1.2.3.4").unwrap(), "1.2.3.4/32");
        assert_eq!(canonical_cidr("0.0.0.0/0").unwrap(), "0.0.0.0/0");
        assert!(canonical_cidr("10.0.0.0/33").is_err());
        assert!(canonical_cidr("fe80::/10").is_err());
    }

    #[test]
    fn validation_names_the_field() {
        assert!(lb().validate().is_ok());
        type Mutation = Box<dyn Fn(&mut DesiredLb)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|d| d.listeners[0].port = 0), "listeners[0].port"),
            (
                Box::new(|d| {
                    let l = d.listeners[0].clone();
                    d.listeners.push(l)
                }),
                "listeners[1].port",
            ),
            (
                Box::new(|d| d.listeners[0].protocol = Protocol::Https),
                "listeners[0].certificates",
            ),
            (
                Box::new(|d| d.source_ranges = vec!["10.0.0.0/8".into(), "nope".into()]),
                "source_ranges[1]",
            ),
            (
                Box::new(|d| d.listeners[0].default_backends[0].weight = 0),
                "listeners[0].default_backends[0].weight",
            ),
            (
                Box::new(|d| d.listeners[0].default_backends[0].port = 0),
                "listeners[0].default_backends[0].port",
            ),
            (
                Box::new(|d| {
                    d.listeners[0].rules.push(DesiredRule {
                        host: Some("a.example.com".into()),
                        path_prefix: None,
                        path_match: PathMatch::StringPrefix,
                        backends: vec![],
                    })
                }),
                "listeners[0].rules",
            ),
            (Box::new(|d| d.loadbalancer_type = 9), "loadbalancer_type"),
            (
                Box::new(|d| {
                    d.network = LbNetwork::Public {
                        eip: EipSource::Allocate { bandwidth: 0 },
                    }
                }),
                "network.eip.bandwidth",
            ),
            (
                Box::new(|d| {
                    d.network = LbNetwork::Public {
                        eip: EipSource::Existing(vec![]),
                    }
                }),
                "network.eip.ids",
            ),
            (
                Box::new(|d| {
                    d.reuse_existing = Some("lb-1".into());
                    d.source_ranges = vec!["10.0.0.0/8".into()];
                }),
                "source_ranges",
            ),
            (
                Box::new(|d| d.listeners[0].backend_protocol = Some(Protocol::Udp)),
                "listeners[0].backend_protocol",
            ),
        ];
        for (mutate, field) in cases {
            let mut d = lb();
            mutate(&mut d);
            let e = d.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().contains(field));
        }
    }

    #[test]
    fn udp_and_tcp_may_share_a_port_and_l7_rules_validate() {
        let mut d = lb();
        d.listeners
            .push(DesiredListener::l4(80, Protocol::Udp, vec![backend(30081)]));
        assert!(d.validate().is_ok());
        let mut l = DesiredListener::l4(8080, Protocol::Http, vec![]);
        l.rules.push(DesiredRule {
            host: Some("*.example.com".into()),
            path_prefix: Some("/api".into()),
            path_match: PathMatch::Prefix,
            backends: vec![backend(1)],
        });
        l.rules.push(DesiredRule {
            host: Some("Bad Host".into()),
            path_prefix: None,
            path_match: PathMatch::StringPrefix,
            backends: vec![],
        });
        d.listeners.push(l);
        assert_eq!(
            d.validate().unwrap_err().field,
            "listeners[2].rules[1].host"
        );
    }

    #[test]
    fn path_match_values_and_keys() {
        let mut r = DesiredRule {
            host: None,
            path_prefix: Some("/a".into()),
            path_match: PathMatch::StringPrefix,
            backends: vec![],
        };
        assert_eq!(r.url_rule().as_deref(), Some("/a"));
        let k1 = r.policy_key();
        r.path_match = PathMatch::Prefix;
        assert_eq!(r.url_rule().as_deref(), Some("~/a"));
        let k2 = r.policy_key();
        r.path_match = PathMatch::Exact;
        assert_eq!(r.url_rule().as_deref(), Some("=/a"));
        assert!(k1 != k2 && k2 != r.policy_key());
        // Exact and Prefix on the same path are different rules.
        let mut d = lb();
        d.listeners[0].protocol = Protocol::Http;
        let mut exact = r.clone();
        exact.backends = vec![backend(1)];
        let mut prefix = exact.clone();
        prefix.path_match = PathMatch::Prefix;
        d.listeners[0].rules = vec![exact.clone(), prefix];
        assert!(d.validate().is_ok());
        d.listeners[0].rules = vec![exact.clone(), exact];
        assert_eq!(d.validate().unwrap_err().field, "listeners[0].rules[1]");
        let mut d = lb();
        d.listeners[0].protocol = Protocol::Http;
        d.listeners[0].rules = vec![DesiredRule {
            host: Some("a.b".into()),
            path_prefix: None,
            path_match: PathMatch::Exact,
            backends: vec![],
        }];
        assert_eq!(
            d.validate().unwrap_err().field,
            "listeners[0].rules[0].path_match"
        );
    }

    #[test]
    fn cert_debug_hides_key_and_fingerprint_tracks_content() {
        let c = DesiredCert {
            name: "ns/secret".into(),
            pem_chain: "-----BEGIN CERTIFICATE-----\nA".into(),
            pem_key: "-----BEGIN PRIVATE KEY-----\nSECRET".into(),
        };
        assert!(!format!("{c:?}").contains("SECRET"));
        let mut d = c.clone();
        d.name = "other".into();
        assert_eq!(c.fingerprint(), d.fingerprint());
        d.pem_key.push('x');
        assert_ne!(c.fingerprint(), d.fingerprint());
    }
}

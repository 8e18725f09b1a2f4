//! Ingresses to a [`DesiredLb`], as pure functions over snapshots of the
//! cluster: class selection, grouping and precedence, host/path/pathType
//! rules, backends, TLS and annotations. Nothing here talks to an API, so
//! every case is a unit test.
//!
//! pathType mapping (the data plane's url rule forms):
//!
//! | pathType | rule | matches `/foo` rule | does not match |
//! |---|---|---|---|
//! | `Exact` | `=/foo` | `/foo` | `/foo/`, `/foo/bar` |
//! | `Prefix` | `~/foo` (element-wise; a trailing `/` is ignored) | `/foo`, `/foo/`, `/foo/bar` | `/foobar` |
//! | `ImplementationSpecific` | `/foo` (plain string prefix) | `/foo`, `/foobar`, `/foo/bar` | `/fo` |
//!
//! The data plane picks the most specific matching rule: exact host over
//! `*.wildcard` over no host, then the longest path, Exact over Prefix of
//! the same length, which is the Kubernetes precedence.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use kube::ResourceExt;

use super::annotations as ann;
use crate::model::{
    BackendTarget, DesiredBackend, DesiredCert, DesiredLb, DesiredListener, DesiredRule, EipSource,
    LbNetwork, LbOwner, OwnerKind, PathMatch, Protocol,
};

/// Plain HTTP listener port.
pub const HTTP_PORT: u16 = 80;
/// HTTPS listener port (opened when at least one TLS certificate is usable).
pub const HTTPS_PORT: u16 = 443;

/// An Ingress field or annotation that cannot be used; names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {message}")]
pub struct TranslateError {
    /// `namespace/name` of the Ingress at fault.
    pub object: String,
    /// The annotation name or spec path (`spec.rules[0].http.paths[1].path`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn terr(ing: &Ingress, field: impl Into<String>, message: impl Into<String>) -> TranslateError {
    TranslateError {
        object: key_of(ing),
        field: field.into(),
        message: message.into(),
    }
}

/// `namespace/name` of an Ingress.
pub fn key_of(ing: &Ingress) -> String {
    format!("{}/{}", ing.namespace().unwrap_or_default(), ing.name_any())
}

/// Why an Ingress got a Warning (not fatal: the LB is still ensured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// `namespace/name` of the Ingress the Event goes on.
    pub object: String,
    /// Event reason (`RuleConflict`, `BackendNotFound`, `SecretNotFound`, ...).
    pub reason: &'static str,
    /// Human message, naming the field.
    pub message: String,
}

/// Controller-wide settings the translation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Cluster id (owns LBs, part of names and tags).
    pub cluster_id: String,
    /// Scheme of node providerIDs (`<provider>://<zone>/<instance>`).
    pub provider_name: String,
    /// Bandwidth of an allocated EIP when the Ingress does not say.
    pub default_eip_bandwidth: u32,
    /// Vxnet for internal LBs when the Ingress does not say.
    pub vxnet_id: Option<String>,
    /// The IngressClass `spec.controller` value we serve.
    pub controller_name: String,
}

impl Settings {
    /// Defaults for `cluster_id`: provider `cloudsuite`, 10 Mbps, no vxnet.
    pub fn new(cluster_id: impl Into<String>) -> Self {
        Settings {
            cluster_id: cluster_id.into(),
            provider_name: "cloudsuite".into(),
            default_eip_bandwidth: 10,
            vxnet_id: None,
            controller_name: ann::CONTROLLER_NAME.into(),
        }
    }
}

/// The cluster objects a translation reads (snapshots of the reflectors).
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot<'a> {
    /// Services (all namespaces).
    pub services: &'a [Arc<Service>],
    /// EndpointSlices (all namespaces).
    pub slices: &'a [Arc<EndpointSlice>],
    /// Nodes.
    pub nodes: &'a [Arc<Node>],
    /// TLS Secrets (all namespaces).
    pub secrets: &'a [Arc<Secret>],
}

fn annotation<'a>(ing: &'a Ingress, name: &str) -> Option<&'a str> {
    ing.metadata
        .annotations
        .as_ref()?
        .get(name)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
}

// ---------------------------------------------------------------- classes

fn class_is_default(c: &IngressClass) -> bool {
    c.annotations()
        .get(ann::DEFAULT_CLASS)
        .is_some_and(|v| v.trim() == "true")
}

fn class_is_ours(c: &IngressClass, controller: &str) -> bool {
    c.spec
        .as_ref()
        .and_then(|s| s.controller.as_deref())
        .is_some_and(|ctl| ctl == controller)
}

/// Whether `ing` is served by this controller: `spec.ingressClassName`
/// naming one of our IngressClasses; else the legacy annotation naming one
/// of our classes (or the bare controller name); else, with neither set,
/// when a class marked default is ours. Several default classes is the
/// cluster's ambiguity, not ours: we then take the Ingress only if every
/// default class is ours.
pub fn is_ours(ing: &Ingress, classes: &[IngressClass], controller: &str) -> bool {
    let named = |name: &str| {
        classes
            .iter()
            .any(|c| c.name_any() == name && class_is_ours(c, controller))
    };
    if let Some(name) = ing
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
    {
        return named(name);
    }
    if let Some(name) = annotation(ing, ann::LEGACY_CLASS) {
        return name == controller || named(name);
    }
    let defaults: Vec<&IngressClass> = classes.iter().filter(|c| class_is_default(c)).collect();
    !defaults.is_empty() && defaults.iter().all(|c| class_is_ours(c, controller))
}

// ---------------------------------------------------------------- groups

/// Which load balancer an Ingress's rules live on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LbKey {
    /// Its own LB (owned by the Ingress's UID).
    Single {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// UID.
        uid: String,
    },
    /// A group's shared LB.
    Group(String),
}

impl LbKey {
    /// The value recorded in [`ann::APPLIED_LB`].
    pub fn applied_value(&self) -> String {
        match self {
            LbKey::Single { .. } => "ingress".into(),
            LbKey::Group(g) => format!("group:{g}"),
        }
    }

    /// Reads a recorded [`ann::APPLIED_LB`] value back for `ing`.
    pub fn from_applied(ing: &Ingress, value: &str) -> Option<LbKey> {
        match value {
            "ingress" => Some(single_key(ing)),
            v => v
                .strip_prefix("group:")
                .filter(|g| valid_group(g))
                .map(|g| LbKey::Group(g.to_string())),
        }
    }

    /// The LB's owner identity. A group's "UID" is a digest of cluster and
    /// group name: stable across controller restarts and member changes.
    pub fn owner(&self, cluster_id: &str) -> LbOwner {
        match self {
            LbKey::Single {
                namespace,
                name,
                uid,
            } => LbOwner {
                cluster_id: cluster_id.into(),
                kind: OwnerKind::Ingress,
                namespace: namespace.clone(),
                name: name.clone(),
                uid: uid.clone(),
            },
            LbKey::Group(g) => LbOwner {
                cluster_id: cluster_id.into(),
                kind: OwnerKind::IngressGroup,
                namespace: String::new(),
                name: g.clone(),
                uid: format!("g{}", crate::model::short_hash(&[cluster_id, g], 20)),
            },
        }
    }
}

fn single_key(ing: &Ingress) -> LbKey {
    LbKey::Single {
        namespace: ing.namespace().unwrap_or_default(),
        name: ing.name_any(),
        uid: ing.uid().unwrap_or_default(),
    }
}

fn valid_group(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= 63
        && g.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !g.starts_with(['-', '.'])
        && !g.ends_with(['-', '.'])
}

/// The LB an Ingress belongs on, from [`ann::GROUP_NAME`].
pub fn lb_key(ing: &Ingress) -> Result<LbKey, TranslateError> {
    match annotation(ing, ann::GROUP_NAME) {
        None => Ok(single_key(ing)),
        Some(g) if valid_group(g) => Ok(LbKey::Group(g.to_string())),
        Some(g) => Err(terr(
            ing,
            ann::GROUP_NAME,
            format!("{g:?}: expected 1..63 lower-case letters, digits, '-' or '.'"),
        )),
    }
}

/// The group order of an Ingress (default 0).
pub fn group_order(ing: &Ingress) -> Result<i32, TranslateError> {
    match annotation(ing, ann::GROUP_ORDER) {
        None => Ok(0),
        Some(v) => v
            .parse::<i32>()
            .ok()
            .filter(|o| (-1000..=1000).contains(o))
            .ok_or_else(|| {
                terr(
                    ing,
                    ann::GROUP_ORDER,
                    format!("{v:?}: expected -1000..1000"),
                )
            }),
    }
}

/// Sorts group members by precedence: group order, then creation
/// timestamp (older first), then namespace/name. Earlier members win conflicts.
pub fn sort_by_precedence(members: &mut [Ingress]) -> Result<(), TranslateError> {
    let mut keyed = Vec::with_capacity(members.len());
    for m in members.iter() {
        let ts = m
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(i64::MAX);
        keyed.push((group_order(m)?, ts, key_of(m)));
    }
    let mut idx: Vec<usize> = (0..members.len()).collect();
    idx.sort_by(|a, b| keyed[*a].cmp(&keyed[*b]));
    let sorted: Vec<Ingress> = idx.iter().map(|i| members[*i].clone()).collect();
    members.clone_from_slice(&sorted);
    Ok(())
}

// ---------------------------------------------------------------- nodes

/// The node eligibility rule shared with the Service controller.
pub use crate::nodes::eligible_nodes;

// ---------------------------------------------------------------- backends

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackendMode {
    Node,
    Pod,
}

/// Resolves one Ingress backend to cloud backends. A Service (or port)
/// that does not exist yields no backends and a notice, not an error: the
/// rule then answers 503 like other controllers, and deleting a Service
/// never blocks anything.
fn resolve_backend(
    ing: &Ingress,
    field: &str,
    b: &IngressBackend,
    mode: BackendMode,
    snap: &Snapshot<'_>,
    instances: &BTreeSet<String>,
    notices: &mut Vec<Notice>,
) -> Result<Vec<DesiredBackend>, TranslateError> {
    if b.resource.is_some() {
        return Err(terr(
            ing,
            format!("{field}.resource"),
            "resource backends are not supported; use a Service backend",
        ));
    }
    let sb = b
        .service
        .as_ref()
        .ok_or_else(|| terr(ing, format!("{field}.service"), "missing"))?;
    let ns = ing.namespace().unwrap_or_default();
    let port_ref = sb
        .port
        .as_ref()
        .ok_or_else(|| terr(ing, format!("{field}.service.port"), "missing"))?;
    if port_ref.number.is_none() && port_ref.name.as_deref().is_none_or(str::is_empty) {
        return Err(terr(
            ing,
            format!("{field}.service.port"),
            "needs a number or a name",
        ));
    }
    let mut missing = |msg: String| {
        notices.push(Notice {
            object: key_of(ing),
            reason: "BackendNotFound",
            message: format!("{field}: {msg}; requests routed here get 503"),
        });
        Ok(Vec::new())
    };
    let Some(svc) = snap
        .services
        .iter()
        .find(|s| s.namespace().as_deref() == Some(ns.as_str()) && s.name_any() == sb.name)
    else {
        return missing(format!("Service {ns}/{} not found", sb.name));
    };
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or(&[]);
    let Some(sp) = ports
        .iter()
        .find(|p| match (&port_ref.number, &port_ref.name) {
            (Some(n), _) => p.port == *n,
            (None, Some(name)) => p.name.as_deref() == Some(name.as_str()),
            _ => false,
        })
    else {
        return missing(format!(
            "Service {ns}/{} has no port {}",
            sb.name,
            port_ref
                .number
                .map(|n| n.to_string())
                .or(port_ref.name.clone())
                .unwrap_or_default()
        ));
    };
    if sp.protocol.as_deref().unwrap_or("TCP") != "TCP" {
        return Err(terr(
            ing,
            format!("{field}.service.port"),
            format!("Service {ns}/{} port {} is not TCP", sb.name, sp.port),
        ));
    }
    match mode {
        BackendMode::Node => {
            let ty = svc
                .spec
                .as_ref()
                .and_then(|s| s.type_.as_deref())
                .unwrap_or("ClusterIP");
            let Some(node_port) = sp
                .node_port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
            else {
                return missing(format!(
                    "Service {ns}/{} (type {ty}) has no node port on port {}: use type NodePort or LoadBalancer, or set {} to pod",
                    sb.name,
                    sp.port,
                    ann::BACKEND_TYPE
                ));
            };
            Ok(instances
                .iter()
                .map(|id| DesiredBackend {
                    target: BackendTarget::Instance(id.clone()),
                    port: node_port,
                    weight: 1,
                })
                .collect())
        }
        BackendMode::Pod => {
            let mut set = BTreeSet::new();
            for s in snap.slices.iter().filter(|s| {
                s.namespace().as_deref() == Some(ns.as_str())
                    && s.labels().get("kubernetes.io/service-name") == Some(&sb.name)
                    && s.address_type != "FQDN"
            }) {
                let Some(target) = s
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| {
                        p.name.as_deref().unwrap_or("") == sp.name.as_deref().unwrap_or("")
                            && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
                    })
                    .and_then(|p| p.port)
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p > 0)
                else {
                    continue;
                };
                for e in &s.endpoints {
                    // Unknown readiness counts as ready (the API's own rule).
                    if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                        continue;
                    }
                    for a in &e.addresses {
                        if let Ok(ip) = a.parse::<IpAddr>() {
                            set.insert((ip, target));
                        }
                    }
                }
            }
            Ok(set
                .into_iter()
                .map(|(ip, port)| DesiredBackend {
                    target: BackendTarget::Ip(ip),
                    port,
                    weight: 1,
                })
                .collect())
        }
    }
}

// ---------------------------------------------------------------- paths

/// Maps an Ingress path and pathType to the rule's path and match kind;
/// `field` names the path in errors.
pub fn path_rule(
    ing: &Ingress,
    field: &str,
    path: Option<&str>,
    path_type: &str,
) -> Result<(String, PathMatch), TranslateError> {
    let p = path.unwrap_or("");
    let check = |p: &str| -> Result<(), TranslateError> {
        if !p.starts_with('/') {
            return Err(terr(
                ing,
                format!("{field}.path"),
                format!("{p:?} must start with /"),
            ));
        }
        if p.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(terr(
                ing,
                format!("{field}.path"),
                format!("{p:?} contains whitespace"),
            ));
        }
        Ok(())
    };
    match path_type {
        "Exact" => {
            check(p)?;
            Ok((p.to_string(), PathMatch::Exact))
        }
        "Prefix" => {
            check(p)?;
            // Kubernetes ignores a trailing slash of a Prefix path: `/foo/`
            // matches `/foo` too. Element-wise `~/foo` does exactly that.
            let trimmed = p.trim_end_matches('/');
            let p = if trimmed.is_empty() { "/" } else { trimmed };
            Ok((p.to_string(), PathMatch::Prefix))
        }
        "ImplementationSpecific" => {
            // Documented as a plain string prefix; an empty path is everything.
            let p = if p.is_empty() { "/" } else { p };
            check(p)?;
            Ok((p.to_string(), PathMatch::StringPrefix))
        }
        other => Err(terr(
            ing,
            format!("{field}.pathType"),
            format!("{other:?}: expected Exact, Prefix or ImplementationSpecific"),
        )),
    }
}

fn host_rule(
    ing: &Ingress,
    field: &str,
    host: Option<&str>,
) -> Result<Option<String>, TranslateError> {
    let Some(h) = host.map(str::trim).filter(|h| !h.is_empty()) else {
        return Ok(None);
    };
    let body = h.strip_prefix("*.").unwrap_or(h);
    let ok = !body.is_empty()
        && h.len() <= 253
        && body.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if !ok {
        return Err(terr(
            ing,
            format!("{field}.host"),
            format!("{h:?} is not a lower-case DNS name or *.wildcard (one leading label)"),
        ));
    }
    Ok(Some(h.to_string()))
}

// ---------------------------------------------------------------- TLS

/// Reads a `kubernetes.io/tls` Secret into a certificate; `field` names the
/// referencing `spec.tls[i].secretName`.
pub fn cert_from_secret(
    ing: &Ingress,
    field: &str,
    secret: &Secret,
) -> Result<DesiredCert, TranslateError> {
    let name = format!(
        "{}/{}",
        secret.namespace().unwrap_or_default(),
        secret.name_any()
    );
    if let Some(t) = secret.type_.as_deref()
        && t != "kubernetes.io/tls"
    {
        return Err(terr(
            ing,
            field,
            format!("Secret {name} has type {t}, expected kubernetes.io/tls"),
        ));
    }
    let get = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| terr(ing, field, format!("Secret {name} has no {k}")))
    };
    let cert = DesiredCert {
        name: name.clone(),
        pem_chain: get("tls.crt")?,
        pem_key: get("tls.key")?,
    };
    if !cert.pem_chain.contains("-----BEGIN CERTIFICATE-----") {
        return Err(terr(
            ing,
            field,
            format!("Secret {name}: tls.crt is not a PEM certificate"),
        ));
    }
    if !cert.pem_key.contains("PRIVATE KEY-----") {
        return Err(terr(
            ing,
            field,
            format!("Secret {name}: tls.key is not a PEM private key"),
        ));
    }
    Ok(cert)
}

// ---------------------------------------------------------------- LB settings

fn parse_bool(ing: &Ingress, name: &str) -> Result<bool, TranslateError> {
    match annotation(ing, name) {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some(v) => Err(terr(ing, name, format!("{v:?}: expected true or false"))),
    }
}

fn backend_mode(ing: &Ingress) -> Result<BackendMode, TranslateError> {
    match annotation(ing, ann::BACKEND_TYPE) {
        None | Some("node") => Ok(BackendMode::Node),
        Some("pod") => Ok(BackendMode::Pod),
        Some(v) => Err(terr(
            ing,
            ann::BACKEND_TYPE,
            format!("{v:?}: expected node or pod"),
        )),
    }
}

fn comma_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// LB-wide settings read from one Ingress's annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LbSettings {
    network: LbNetwork,
    source_ranges: Vec<String>,
    lb_type: i32,
}

fn lb_settings(ing: &Ingress, s: &Settings) -> Result<LbSettings, TranslateError> {
    let network = match annotation(ing, ann::NETWORK_TYPE) {
        None | Some("public") => {
            let ids = annotation(ing, ann::EIP_IDS)
                .map(comma_list)
                .unwrap_or_default();
            if !ids.is_empty() {
                if annotation(ing, ann::EIP_BANDWIDTH).is_some() {
                    return Err(terr(
                        ing,
                        ann::EIP_BANDWIDTH,
                        format!(
                            "only applies to an allocated EIP, not with {}",
                            ann::EIP_IDS
                        ),
                    ));
                }
                for id in &ids {
                    if !id.starts_with("eip-") || id.contains([' ', '/']) {
                        return Err(terr(
                            ing,
                            ann::EIP_IDS,
                            format!("{id:?} is not an EIP id (eip-xxxx)"),
                        ));
                    }
                }
                LbNetwork::Public {
                    eip: EipSource::Existing(ids),
                }
            } else {
                let bandwidth = match annotation(ing, ann::EIP_BANDWIDTH) {
                    None => s.default_eip_bandwidth,
                    Some(b) => b
                        .parse::<u32>()
                        .ok()
                        .filter(|b| (1..=1000).contains(b))
                        .ok_or_else(|| {
                            terr(
                                ing,
                                ann::EIP_BANDWIDTH,
                                format!("{b:?}: expected 1..1000 Mbps"),
                            )
                        })?,
                };
                LbNetwork::Public {
                    eip: EipSource::Allocate { bandwidth },
                }
            }
        }
        Some("internal") => {
            for a in [ann::EIP_IDS, ann::EIP_BANDWIDTH] {
                if annotation(ing, a).is_some() {
                    return Err(terr(ing, a, "does not apply to an internal load balancer"));
                }
            }
            let vxnet = annotation(ing, ann::VXNET_ID)
                .map(str::to_string)
                .or_else(|| s.vxnet_id.clone())
                .ok_or_else(|| {
                    terr(
                        ing,
                        ann::VXNET_ID,
                        "an internal load balancer needs a vxnet (annotation or --vxnet-id)",
                    )
                })?;
            let private_ip = annotation(ing, ann::PRIVATE_IP)
                .map(|v| {
                    v.parse::<Ipv4Addr>().map_err(|_| {
                        terr(
                            ing,
                            ann::PRIVATE_IP,
                            format!("{v:?} is not an IPv4 address"),
                        )
                    })
                })
                .transpose()?;
            LbNetwork::Internal { vxnet, private_ip }
        }
        Some(v) => {
            return Err(terr(
                ing,
                ann::NETWORK_TYPE,
                format!("{v:?}: expected public or internal"),
            ));
        }
    };
    let mut source_ranges = Vec::new();
    for r in annotation(ing, ann::SOURCE_RANGES)
        .map(comma_list)
        .unwrap_or_default()
    {
        let c = crate::model::canonical_cidr(&r).map_err(|e| terr(ing, ann::SOURCE_RANGES, e))?;
        // 0.0.0.0/0 admits everyone: the same as no restriction.
        if c != "0.0.0.0/0" && !source_ranges.contains(&c) {
            source_ranges.push(c);
        }
    }
    source_ranges.sort();
    let lb_type = match annotation(ing, ann::LB_TYPE) {
        None => 0,
        Some(v) => v
            .parse::<i32>()
            .ok()
            .filter(|t| (0..=5).contains(t))
            .ok_or_else(|| terr(ing, ann::LB_TYPE, format!("{v:?}: expected 0..5")))?,
    };
    Ok(LbSettings {
        network,
        source_ranges,
        lb_type,
    })
}

// ---------------------------------------------------------------- translate

/// The result of translating one LB's Ingresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translation {
    /// The desired LB (validated).
    pub desired: DesiredLb,
    /// Warnings for individual Ingresses (conflicts, missing Services or Secrets).
    pub notices: Vec<Notice>,
}

/// Who contributed a rule (for conflict reports).
struct RuleEntry {
    rule: DesiredRule,
    owner: String,
    field: String,
}

/// Translates the Ingresses sharing one LB (`members`, already filtered to
/// ours and sorted by [`sort_by_precedence`]; one member for a plain
/// Ingress) into the desired LB. LB-wide annotations (network, EIP, source
/// ranges, size) come from the first member; a differing value on another
/// member is a notice, not an override. Any invalid field of any member
/// fails the whole translation (nothing changes in the cloud) with an
/// error naming the Ingress and the field.
pub fn translate(
    key: &LbKey,
    members: &[Ingress],
    snap: &Snapshot<'_>,
    s: &Settings,
) -> Result<Translation, TranslateError> {
    let first = members.first().ok_or_else(|| TranslateError {
        object: format!("{key:?}"),
        field: "members".into(),
        message: "no Ingress to translate".into(),
    })?;
    let mut notices = Vec::new();
    let lb = lb_settings(first, s)?;
    for m in &members[1..] {
        let other = lb_settings(m, s)?;
        if other != lb {
            notices.push(Notice {
                object: key_of(m),
                reason: "GroupSettingIgnored",
                message: format!(
                    "load balancer annotations (network, EIP, source ranges, type) differ from {}, which has precedence in the group; its values are used",
                    key_of(first)
                ),
            });
        }
    }
    let instances: BTreeSet<String> = eligible_nodes(snap.nodes, &s.provider_name)
        .into_values()
        .collect();

    let mut rules: Vec<RuleEntry> = Vec::new();
    let mut default_backends: Option<(Vec<DesiredBackend>, String)> = None;
    let mut certs: Vec<DesiredCert> = Vec::new();
    let mut tls_hosts: BTreeSet<String> = BTreeSet::new();
    let mut redirect_hosts: BTreeSet<String> = BTreeSet::new();

    for ing in members {
        let who = key_of(ing);
        let mode = backend_mode(ing)?;
        let redirect = parse_bool(ing, ann::SSL_REDIRECT)?;
        group_order(ing)?;
        let spec = ing
            .spec
            .as_ref()
            .ok_or_else(|| terr(ing, "spec", "missing"))?;
        let ns = ing.namespace().unwrap_or_default();

        if let Some(db) = &spec.default_backend {
            let backends = resolve_backend(
                ing,
                "spec.defaultBackend",
                db,
                mode,
                snap,
                &instances,
                &mut notices,
            )?;
            match &default_backends {
                None => default_backends = Some((backends, who.clone())),
                Some((_, winner)) => notices.push(Notice {
                    object: who.clone(),
                    reason: "RuleConflict",
                    message: format!(
                        "spec.defaultBackend ignored: {winner} has precedence in the group and sets one"
                    ),
                }),
            }
        }

        for (i, r) in spec.rules.iter().flatten().enumerate() {
            let rf = format!("spec.rules[{i}]");
            let host = host_rule(ing, &rf, r.host.as_deref())?;
            let Some(http) = &r.http else { continue };
            for (j, p) in http.paths.iter().enumerate() {
                let pf = format!("{rf}.http.paths[{j}]");
                let (path, path_match) = path_rule(ing, &pf, p.path.as_deref(), &p.path_type)?;
                let backends = resolve_backend(
                    ing,
                    &format!("{pf}.backend"),
                    &p.backend,
                    mode,
                    snap,
                    &instances,
                    &mut notices,
                )?;
                let rule = DesiredRule {
                    host: host.clone(),
                    path_prefix: Some(path),
                    path_match,
                    backends,
                };
                if let Some(win) = rules
                    .iter()
                    .find(|e| e.rule.host == rule.host && e.rule.url_rule() == rule.url_rule())
                {
                    notices.push(Notice {
                        object: who.clone(),
                        reason: "RuleConflict",
                        message: format!(
                            "{pf}: host {} path {} is already routed by {} ({}); this rule is ignored",
                            rule.host.as_deref().unwrap_or("*"),
                            rule.url_rule().unwrap_or_default(),
                            win.owner,
                            win.field
                        ),
                    });
                    continue;
                }
                if redirect && let Some(h) = &rule.host {
                    redirect_hosts.insert(h.clone());
                }
                rules.push(RuleEntry {
                    rule,
                    owner: who.clone(),
                    field: pf,
                });
            }
        }

        for (i, t) in spec.tls.iter().flatten().enumerate() {
            let tf = format!("spec.tls[{i}]");
            let hosts: Vec<String> = t
                .hosts
                .iter()
                .flatten()
                .map(|h| h.trim().to_string())
                .collect();
            for (k, h) in hosts.iter().enumerate() {
                host_rule(ing, &format!("{tf}.hosts[{k}]"), Some(h))?;
            }
            let Some(secret_name) = t.secret_name.as_deref().filter(|n| !n.is_empty()) else {
                notices.push(Notice {
                    object: who.clone(),
                    reason: "SecretNotFound",
                    message: format!(
                        "{tf}.secretName is empty: no certificate for {}",
                        hosts.join(", ")
                    ),
                });
                continue;
            };
            let field = format!("{tf}.secretName");
            let Some(secret) = snap.secrets.iter().find(|x| {
                x.namespace().as_deref() == Some(ns.as_str()) && x.name_any() == secret_name
            }) else {
                notices.push(Notice {
                    object: who.clone(),
                    reason: "SecretNotFound",
                    message: format!(
                        "{field}: Secret {ns}/{secret_name} not found; {} not served over HTTPS until it exists",
                        hosts.join(", ")
                    ),
                });
                continue;
            };
            let cert = cert_from_secret(ing, &field, secret)?;
            if !certs.iter().any(|c| c.fingerprint() == cert.fingerprint()) {
                certs.push(cert);
            }
            tls_hosts.extend(hosts);
        }
    }

    // Deterministic order (the data plane ranks by specificity, not order).
    rules.sort_by(|a, b| {
        (
            a.rule.host.is_none(),
            &a.rule.host,
            std::cmp::Reverse(a.rule.path_prefix.as_ref().map(String::len)),
            a.rule.url_rule(),
        )
            .cmp(&(
                b.rule.host.is_none(),
                &b.rule.host,
                std::cmp::Reverse(b.rule.path_prefix.as_ref().map(String::len)),
                b.rule.url_rule(),
            ))
    });
    let all_rules: Vec<DesiredRule> = rules.into_iter().map(|e| e.rule).collect();
    let default_backends = default_backends.map(|(b, _)| b).unwrap_or_default();

    let l7 = |port: u16, protocol: Protocol, rules: Vec<DesiredRule>| {
        let mut l = DesiredListener::l4(port, protocol, default_backends.clone());
        l.backend_protocol = Some(Protocol::Http);
        l.forwardfor = true;
        l.rules = rules;
        l
    };
    // ssl-redirect: the cloud API has no redirect (no listener field or
    // policy rule type answers with a status or Location), so a TLS host
    // marked ssl-redirect is enforced instead: its rules are left off the
    // HTTP listener, and a plain request for it routes as an unknown host
    // would (wildcard, host-less rule, defaultBackend, else 503).
    let http_rules: Vec<DesiredRule> = all_rules
        .iter()
        .filter(|r| {
            !r.host
                .as_ref()
                .is_some_and(|h| redirect_hosts.contains(h) && tls_hosts.contains(h))
        })
        .cloned()
        .collect();
    let mut listeners = vec![l7(HTTP_PORT, Protocol::Http, http_rules)];
    if !certs.is_empty() {
        let mut https = l7(HTTPS_PORT, Protocol::Https, all_rules);
        https.certificates = certs;
        listeners.push(https);
    }
    let desired = DesiredLb {
        owner: key.owner(&s.cluster_id),
        network: lb.network,
        reuse_existing: None,
        loadbalancer_type: lb.lb_type,
        source_ranges: lb.source_ranges,
        listeners,
    };
    desired.validate().map_err(|e| TranslateError {
        object: key_of(first),
        field: format!("(load balancer model) {}", e.field),
        message: e.message,
    })?;
    Ok(Translation { desired, notices })
}

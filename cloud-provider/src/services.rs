//! Service controller: Services of type LoadBalancer whose
//! `spec.loadBalancerClass` is unset or ours become one cloud LB each,
//! through lb-controller's [`DesiredLb`] model.
//!
//! Order guarantees: the finalizer `service.kubernetes.io/load-balancer-cleanup`
//! is added (and observed) before anything is created in the cloud; it is
//! removed only after lb-controller's `delete` succeeded, which tolerates an
//! LB already gone. A Service that stops being ours (type or class changed)
//! is cleaned up the same way without being deleted.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use lb_controller::model::{
    BackendTarget, BalanceMode, DEFAULT_HEALTH_CHECK, DesiredBackend, DesiredCert, DesiredLb,
    DesiredListener, EipSource, HealthCheck, HealthCheckMethod, HealthCheckTiming, LbNetwork,
    LbOwner, OwnerKind, Protocol,
};
use lb_controller::watch::slim;
use serde_json::json;
use suite_runtime::Shutdown;

use crate::annotations as ann;
use crate::config::CloudConfig;
use crate::context::{Context, Error};
use crate::node_cache::NodeCache;

/// Controller name (metrics, logs).
pub const NAME: &str = "service";
/// The finalizer guarding cloud cleanup.
pub const FINALIZER: &str = "service.kubernetes.io/load-balancer-cleanup";

/// A Service field or annotation that cannot be used; names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct TranslateError {
    /// The annotation name or the spec path (`spec.ports[1].protocol`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn terr(field: impl Into<String>, message: impl Into<String>) -> TranslateError {
    TranslateError {
        field: field.into(),
        message: message.into(),
    }
}

/// Whether this controller handles `svc` (type LoadBalancer, class unset or `ours`).
pub fn is_ours(svc: &Service, class: &str) -> bool {
    let Some(spec) = &svc.spec else { return false };
    spec.type_.as_deref() == Some("LoadBalancer")
        && spec
            .load_balancer_class
            .as_deref()
            .is_none_or(|c| c == class)
}

/// The ownership of a Service's LB.
pub fn owner(svc: &Service, cluster_id: &str) -> LbOwner {
    LbOwner {
        cluster_id: cluster_id.to_string(),
        kind: OwnerKind::Service,
        namespace: svc.namespace().unwrap_or_default(),
        name: svc.name_any(),
        uid: svc.uid().unwrap_or_default(),
    }
}

fn annotation<'a>(svc: &'a Service, name: &str) -> Option<&'a str> {
    svc.metadata
        .annotations
        .as_ref()?
        .get(name)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
}

/// A per-port annotation: `80:x,443:y`, or one bare value for every port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerPort {
    /// Value for ports not listed.
    pub default: Option<String>,
    /// Values by port.
    pub ports: BTreeMap<u16, String>,
}

impl PerPort {
    /// Parses `value` of annotation `name`.
    pub fn parse(name: &str, value: &str) -> Result<PerPort, TranslateError> {
        let mut out = PerPort::default();
        let entries: Vec<&str> = value
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        for e in &entries {
            match e.split_once(':') {
                Some((p, v)) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => {
                    let port: u16 = p
                        .parse()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| terr(name, format!("{p:?} is not a port")))?;
                    if out.ports.insert(port, v.trim().to_string()).is_some() {
                        return Err(terr(name, format!("port {port} listed twice")));
                    }
                }
                _ if entries.len() == 1 => out.default = Some(e.to_string()),
                _ => {
                    return Err(terr(
                        name,
                        format!("{e:?}: expected <port>:<value> entries separated by commas"),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// The value for `port`.
    pub fn get(&self, port: u16) -> Option<&str> {
        self.ports
            .get(&port)
            .or(self.default.as_ref())
            .map(String::as_str)
    }

    /// Ports named that the Service does not have (a typo the user should hear about).
    fn check_ports(&self, name: &str, ports: &BTreeSet<u16>) -> Result<(), TranslateError> {
        match self.ports.keys().find(|p| !ports.contains(p)) {
            Some(p) => Err(terr(name, format!("port {p} is not a port of the Service"))),
            None => Ok(()),
        }
    }
}

fn per_port(svc: &Service, name: &str, ports: &BTreeSet<u16>) -> Result<PerPort, TranslateError> {
    match annotation(svc, name) {
        None => Ok(PerPort::default()),
        Some(v) => {
            let p = PerPort::parse(name, v)?;
            p.check_ports(name, ports)?;
            Ok(p)
        }
    }
}

/// Parses a health check method: `tcp`, `udp` or `http|/path`.
pub fn parse_health_method(name: &str, v: &str) -> Result<HealthCheckMethod, TranslateError> {
    match v.split_once('|') {
        None if v.eq_ignore_ascii_case("tcp") || v.eq_ignore_ascii_case("udp") => {
            Ok(HealthCheckMethod::Tcp)
        }
        None if v.eq_ignore_ascii_case("http") => Ok(HealthCheckMethod::Http { path: "/".into() }),
        Some((m, path)) if m.eq_ignore_ascii_case("http") && path.starts_with('/') => {
            Ok(HealthCheckMethod::Http {
                path: path.to_string(),
            })
        }
        _ => Err(terr(
            name,
            format!("{v:?}: expected tcp, udp, http or http|/path"),
        )),
    }
}

/// Parses health check timing `interval|timeout|unhealthy|healthy`.
pub fn parse_health_option(name: &str, v: &str) -> Result<HealthCheckTiming, TranslateError> {
    let parts: Vec<&str> = v.split('|').map(str::trim).collect();
    let nums: Option<Vec<u32>> = parts.iter().map(|p| p.parse().ok()).collect();
    match nums.as_deref() {
        Some([i, t, u, h]) if *i >= 2 && *t >= 1 && *t <= *i && *u >= 1 && *h >= 1 => {
            Ok(HealthCheckTiming {
                interval_secs: *i,
                timeout_secs: *t,
                unhealthy_threshold: *u,
                healthy_threshold: *h,
            })
        }
        _ => Err(terr(
            name,
            format!(
                "{v:?}: expected interval|timeout|unhealthy|healthy (interval>=2, 1<=timeout<=interval, thresholds>=1)"
            ),
        )),
    }
}

fn parse_balance(name: &str, v: &str) -> Result<BalanceMode, TranslateError> {
    match v.to_ascii_lowercase().as_str() {
        "roundrobin" => Ok(BalanceMode::RoundRobin),
        "leastconn" => Ok(BalanceMode::LeastConn),
        "source" => Ok(BalanceMode::Source),
        _ => Err(terr(
            name,
            format!("{v:?}: expected roundrobin, leastconn or source"),
        )),
    }
}

/// Names of the TLS Secrets the Service's HTTPS listeners need.
pub fn cert_secret_names(svc: &Service) -> Result<Vec<String>, TranslateError> {
    let Some(v) = annotation(svc, ann::LISTENER_CERT) else {
        return Ok(vec![]);
    };
    let p = PerPort::parse(ann::LISTENER_CERT, v)?;
    let mut names: Vec<String> = p.default.into_iter().chain(p.ports.into_values()).collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Reads a `kubernetes.io/tls` Secret's chain and key.
pub fn cert_from_secret(secret: &Secret) -> Result<DesiredCert, TranslateError> {
    let name = secret.name_any();
    let get = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| terr(ann::LISTENER_CERT, format!("Secret {name} has no {k}")))
    };
    Ok(DesiredCert {
        name: format!("{}/{name}", secret.namespace().unwrap_or_default()),
        pem_chain: get("tls.crt")?,
        pem_key: get("tls.key")?,
    })
}

/// Instance ids of the nodes that may receive LB traffic: Ready, not
/// shutting down or uninitialised, not excluded by label, with our
/// providerID. The one rule lives in lb-controller, shared with the
/// Ingress controller.
pub fn eligible_nodes<N: Borrow<Node>>(
    nodes: &[N],
    provider_name: &str,
) -> BTreeMap<String, String> {
    lb_controller::nodes::eligible_nodes(nodes, provider_name)
}

/// The objects of `store` that satisfy `pred` (shared, not copied).
fn matching<K>(store: &Store<K>, pred: impl Fn(&K) -> bool) -> Vec<Arc<K>>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    store.state().into_iter().filter(|o| pred(o)).collect()
}

/// Whether an EndpointSlice belongs to `svc`.
fn slice_of(svc: &Service, s: &EndpointSlice) -> bool {
    s.namespace() == svc.namespace()
        && s.labels()
            .get("kubernetes.io/service-name")
            .map(String::as_str)
            == svc.metadata.name.as_deref()
}

fn slices_of<'a, S: Borrow<EndpointSlice>>(
    svc: &'a Service,
    slices: &'a [S],
) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
    slices
        .iter()
        .map(Borrow::borrow)
        .filter(move |s| slice_of(svc, s))
}

fn endpoint_ready(e: &k8s_openapi::api::discovery::v1::Endpoint) -> bool {
    e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
}

/// Translates a Service into the desired LB (pure). `certs` maps the TLS
/// Secret names of [`cert_secret_names`] to their content.
pub fn translate<N: Borrow<Node>, S: Borrow<EndpointSlice>>(
    svc: &Service,
    nodes: &[N],
    slices: &[S],
    certs: &BTreeMap<String, DesiredCert>,
    cfg: &CloudConfig,
) -> Result<DesiredLb, TranslateError> {
    let eligible = eligible_nodes(nodes, &cfg.provider_name);
    translate_with(svc, &eligible, slices, certs, cfg)
}

/// [`translate`] with the eligible backend nodes already computed
/// ([`eligible_nodes`]): a batch of Services computes them once.
pub fn translate_with<S: Borrow<EndpointSlice>>(
    svc: &Service,
    eligible: &BTreeMap<String, String>,
    slices: &[S],
    certs: &BTreeMap<String, DesiredCert>,
    cfg: &CloudConfig,
) -> Result<DesiredLb, TranslateError> {
    let spec = svc.spec.as_ref().ok_or_else(|| terr("spec", "missing"))?;
    let ports = spec.ports.as_deref().unwrap_or(&[]);
    if ports.is_empty() {
        return Err(terr(
            "spec.ports",
            "a LoadBalancer Service needs at least one port",
        ));
    }
    let port_set: BTreeSet<u16> = ports
        .iter()
        .filter_map(|p| u16::try_from(p.port).ok())
        .collect();
    let protocols = per_port(svc, ann::LISTENER_PROTOCOL, &port_set)?;
    let methods = per_port(svc, ann::HEALTH_METHOD, &port_set)?;
    let options = per_port(svc, ann::HEALTH_OPTION, &port_set)?;
    let balances = per_port(svc, ann::BALANCE_MODE, &port_set)?;
    let cert_refs = per_port(svc, ann::LISTENER_CERT, &port_set)?;

    let pod_backends = match annotation(svc, ann::BACKEND_TYPE) {
        None | Some("node") => false,
        Some("pod") => true,
        Some(v) => {
            return Err(terr(
                ann::BACKEND_TYPE,
                format!("{v:?}: expected node or pod"),
            ));
        }
    };
    let local = spec.external_traffic_policy.as_deref() == Some("Local");
    let mut backend_nodes = eligible.clone();
    if local && !pod_backends {
        // Only nodes running a ready endpoint: kube-proxy drops traffic elsewhere.
        let with_endpoints: BTreeSet<String> = slices_of(svc, slices)
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| endpoint_ready(e))
            .filter_map(|e| e.node_name.clone())
            .collect();
        backend_nodes.retain(|name, _| with_endpoints.contains(name));
    }
    let instance_ids: BTreeSet<&String> = backend_nodes.values().collect();
    let affinity_source = spec.session_affinity.as_deref() == Some("ClientIP");

    let mut listeners = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| terr(format!("{field}.port"), format!("{} is not a port", p.port)))?;
        let transport = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            other => {
                return Err(terr(
                    format!("{field}.protocol"),
                    format!("{other} is not supported by the cloud load balancer (TCP or UDP)"),
                ));
            }
        };
        let protocol = match protocols.get(port) {
            None => transport,
            Some(v) => {
                let proto = Protocol::parse(&v.to_ascii_lowercase()).ok_or_else(|| {
                    terr(
                        ann::LISTENER_PROTOCOL,
                        format!("port {port}: {v:?}: expected tcp, udp, http or https"),
                    )
                })?;
                if proto.transport() != transport.as_str() {
                    return Err(terr(
                        ann::LISTENER_PROTOCOL,
                        format!(
                            "port {port}: {v} cannot serve a {} port",
                            transport.as_str().to_uppercase()
                        ),
                    ));
                }
                proto
            }
        };
        let backends: Vec<DesiredBackend> = if pod_backends {
            let mut set = BTreeSet::new();
            for s in slices_of(svc, slices) {
                let Some(sp) = s.ports.iter().flatten().find(|sp| {
                    sp.name.as_deref().unwrap_or("") == p.name.as_deref().unwrap_or("")
                        && sp.protocol.as_deref().unwrap_or("TCP")
                            == p.protocol.as_deref().unwrap_or("TCP")
                }) else {
                    continue;
                };
                let Some(target) = sp.port.and_then(|x| u16::try_from(x).ok()) else {
                    continue;
                };
                for e in s.endpoints.iter().filter(|e| endpoint_ready(e)) {
                    for a in &e.addresses {
                        if let Ok(ip) = a.parse::<IpAddr>() {
                            set.insert((ip, target));
                        }
                    }
                }
            }
            set.into_iter()
                .map(|(ip, port)| DesiredBackend {
                    target: BackendTarget::Ip(ip),
                    port,
                    weight: 1,
                })
                .collect()
        } else {
            let node_port = p
                .node_port
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    terr(
                        format!("{field}.nodePort"),
                        format!(
                            "not allocated; node backends need node ports (or set {} to pod)",
                            ann::BACKEND_TYPE
                        ),
                    )
                })?;
            instance_ids
                .iter()
                .map(|id| DesiredBackend {
                    target: BackendTarget::Instance((*id).clone()),
                    port: node_port,
                    weight: 1,
                })
                .collect()
        };
        let mut l = DesiredListener::l4(port, protocol, backends);
        if protocol.is_l7() {
            l.backend_protocol = Some(Protocol::Http);
            l.forwardfor = true;
        }
        l.balance_mode = match balances.get(port) {
            Some(v) => parse_balance(ann::BALANCE_MODE, v)?,
            None if affinity_source => BalanceMode::Source,
            None => BalanceMode::RoundRobin,
        };
        let method = methods
            .get(port)
            .map(|v| parse_health_method(ann::HEALTH_METHOD, v))
            .transpose()?;
        if matches!(method, Some(HealthCheckMethod::Http { .. })) && protocol == Protocol::Udp {
            return Err(terr(
                ann::HEALTH_METHOD,
                format!("port {port}: http health checks need a TCP port"),
            ));
        }
        let timing = options
            .get(port)
            .map(|v| parse_health_option(ann::HEALTH_OPTION, v))
            .transpose()?;
        if method.is_some() || timing.is_some() {
            l.health_check = Some(HealthCheck {
                method: method.unwrap_or(HealthCheckMethod::Tcp),
                timing: timing.unwrap_or(DEFAULT_HEALTH_CHECK),
            });
        }
        match (protocol, cert_refs.get(port)) {
            (Protocol::Https, None) => {
                return Err(terr(
                    ann::LISTENER_CERT,
                    format!("port {port} is https but names no certificate Secret"),
                ));
            }
            (Protocol::Https, Some(secret)) => {
                if secret.starts_with("sc-") {
                    return Err(terr(
                        ann::LISTENER_CERT,
                        format!(
                            "port {port}: {secret}: give the name of a kubernetes.io/tls Secret in the Service's namespace (cloud certificate ids are not supported)"
                        ),
                    ));
                }
                let cert = certs.get(secret).ok_or_else(|| {
                    terr(
                        ann::LISTENER_CERT,
                        format!("port {port}: Secret {secret} not found"),
                    )
                })?;
                l.certificates = vec![cert.clone()];
            }
            (_, Some(_)) if cert_refs.ports.contains_key(&port) => {
                return Err(terr(
                    ann::LISTENER_CERT,
                    format!("port {port} is not an https listener"),
                ));
            }
            _ => {}
        }
        listeners.push(l);
    }

    let internal = match annotation(svc, ann::NETWORK_TYPE) {
        None | Some("public") => false,
        Some("internal") => true,
        Some(v) => {
            return Err(terr(
                ann::NETWORK_TYPE,
                format!("{v:?}: expected public or internal"),
            ));
        }
    };
    let lb_ip = spec
        .load_balancer_ip
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let network = if internal {
        let vxnet = annotation(svc, ann::VXNET_ID)
            .map(str::to_string)
            .or_else(|| cfg.vxnet_id.clone())
            .ok_or_else(|| {
                terr(
                    ann::VXNET_ID,
                    "an internal load balancer needs a vxnet (annotation or cloud config vxnet_id)",
                )
            })?;
        let private_ip = lb_ip
            .map(|ip| {
                ip.parse::<Ipv4Addr>().map_err(|_| {
                    terr(
                        "spec.loadBalancerIP",
                        format!("{ip:?} is not an IPv4 address"),
                    )
                })
            })
            .transpose()?;
        LbNetwork::Internal { vxnet, private_ip }
    } else {
        let ids: Vec<String> = annotation(svc, ann::EIP_IDS)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let source = annotation(svc, ann::EIP_SOURCE).unwrap_or("allocate");
        let eip = match source {
            "manual" | "use-available" if ids.is_empty() => {
                return Err(terr(
                    ann::EIP_IDS,
                    format!("required when {} is {source}", ann::EIP_SOURCE),
                ));
            }
            "manual" | "allocate" | "auto" | "use-available" => {
                if !ids.is_empty() {
                    EipSource::Existing(ids)
                } else if let Some(ip) = lb_ip {
                    EipSource::ByAddress(ip.parse().map_err(|_| {
                        terr(
                            "spec.loadBalancerIP",
                            format!("{ip:?} is not an IP address"),
                        )
                    })?)
                } else {
                    let bandwidth = match annotation(svc, ann::EIP_BANDWIDTH) {
                        None => cfg.default_eip_bandwidth,
                        Some(b) => b
                            .parse::<u32>()
                            .ok()
                            .filter(|b| (1..=1000).contains(b))
                            .ok_or_else(|| {
                                terr(ann::EIP_BANDWIDTH, format!("{b:?}: expected 1..1000 Mbps"))
                            })?,
                    };
                    EipSource::Allocate { bandwidth }
                }
            }
            other => {
                return Err(terr(
                    ann::EIP_SOURCE,
                    format!("{other:?}: expected allocate or manual"),
                ));
            }
        };
        LbNetwork::Public { eip }
    };
    let reuse_existing = match annotation(svc, ann::LB_ID) {
        None => None,
        Some(id) if id.starts_with("lb-") && !id.contains(',') => Some(id.to_string()),
        Some(id) => {
            return Err(terr(
                ann::LB_ID,
                format!("{id:?} is not a load balancer id (lb-xxxx)"),
            ));
        }
    };
    let loadbalancer_type = match annotation(svc, ann::LB_TYPE) {
        None => cfg.default_lb_type,
        Some(v) => v
            .parse::<i32>()
            .ok()
            .filter(|t| (0..=5).contains(t))
            .ok_or_else(|| terr(ann::LB_TYPE, format!("{v:?}: expected 0..5")))?,
    };
    let ranges: Vec<String> = match spec.load_balancer_source_ranges.as_deref() {
        Some(r) if !r.is_empty() => r.to_vec(),
        _ => annotation(svc, ann::SOURCE_RANGES)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
    };
    let mut source_ranges = Vec::new();
    for r in ranges {
        let canon = lb_controller::model::canonical_cidr(&r)
            .map_err(|e| terr("spec.loadBalancerSourceRanges", format!("{r:?}: {e}")))?;
        // 0.0.0.0/0 allows everyone: the same as no restriction.
        if canon != "0.0.0.0/0" {
            source_ranges.push(canon);
        }
    }
    let desired = DesiredLb {
        owner: owner(svc, &cfg.cluster_id),
        network,
        reuse_existing,
        loadbalancer_type,
        source_ranges,
        listeners,
    };
    desired
        .validate()
        .map_err(|e| terr(format!("(load balancer model) {}", e.field), e.message))?;
    Ok(desired)
}

/// Stores the Service controller reads Services, nodes and endpoint slices from.
#[derive(Clone)]
pub struct ServiceInputs {
    /// Services (slimmed; the periodic resync reads them from here).
    pub services: Store<Service>,
    /// Nodes (the CCM's shared Node cache).
    pub nodes: Store<Node>,
    /// EndpointSlices.
    pub slices: Store<EndpointSlice>,
    /// Resync period of every Service.
    pub resync: Duration,
}

impl std::fmt::Debug for ServiceInputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceInputs")
            .field("services", &self.services.len())
            .field("nodes", &self.nodes.len())
            .field("slices", &self.slices.len())
            .field("resync", &self.resync)
            .finish()
    }
}

/// The Service controller's context.
#[derive(Debug, Clone)]
pub struct ServiceCtx {
    /// Shared context.
    pub ctx: Arc<Context>,
    /// Reflected inputs.
    pub inputs: ServiceInputs,
    /// Services being reconciled right now.
    pub in_flight: InFlight,
    /// What the last successful ensure of each Service was.
    pub ensured: Ensured,
}

impl ServiceCtx {
    /// A context with no Service in flight or ensured yet.
    pub fn new(ctx: Arc<Context>, inputs: ServiceInputs) -> Self {
        ServiceCtx {
            ctx,
            inputs,
            in_flight: InFlight::default(),
            ensured: Ensured::default(),
        }
    }

    /// The nodes eligible as LB backends now (instance id by node name).
    pub fn eligible(&self) -> BTreeMap<String, String> {
        eligible_nodes(&self.inputs.nodes.state(), &self.ctx.config.provider_name)
    }
}

/// The last successful ensure of each Service: its uid, a digest of the
/// desired LB and the addresses written to its status.
///
/// A Service's watch event is mostly our own doing (the finalizer, the
/// status write); re-ensuring then costs a full observation of the cloud
/// (five Describe calls) to learn nothing. When the Service still
/// translates to the same desired LB and shows the addresses we wrote, the
/// work queue skips the cloud; the periodic resync still observes every
/// LB, so drift in the cloud is repaired within one resync period. Only
/// successes are remembered, so a failure is always retried for real.
/// Clones share the map.
#[derive(Debug, Clone, Default)]
pub struct Ensured(Arc<std::sync::Mutex<BTreeMap<String, EnsuredEntry>>>);

/// One Service's entry in [`Ensured`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnsuredEntry {
    /// The Service's uid (a re-created Service is a new owner).
    pub uid: String,
    /// [`desired_digest`] of the desired LB.
    pub digest: u64,
    /// Addresses the ensure returned (and the status holds).
    pub addresses: Vec<String>,
}

impl Ensured {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, EnsuredEntry>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `key` was last ensured as `entry` describes.
    pub fn is_current(&self, key: &str, entry: &EnsuredEntry) -> bool {
        self.map().get(key) == Some(entry)
    }

    /// Records a successful ensure.
    pub fn record(&self, key: &str, entry: EnsuredEntry) {
        self.map().insert(key.to_string(), entry);
    }

    /// Forgets `key` (after a failure or a deletion).
    pub fn forget(&self, key: &str) {
        self.map().remove(key);
    }

    /// Number of Services remembered.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }
}

/// A digest of a desired LB (stable within one process), so [`Ensured`]
/// keeps neither certificates nor keys in memory.
pub fn desired_digest(desired: &DesiredLb) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    // Serialising a validated model cannot fail; an empty encoding would
    // only make every comparison miss (a harmless full ensure).
    serde_json::to_vec(desired).unwrap_or_default().hash(&mut h);
    h.finish()
}

fn service_key(svc: &Service) -> String {
    format!(
        "service/{}/{}",
        svc.namespace().unwrap_or_default(),
        svc.name_any()
    )
}

/// Per-Service exclusion between the work queue and the periodic resync.
///
/// Without it a resync tick landing while the queue creates or updates a
/// Service's load balancer makes a second writer on the same LB: measured
/// with the real binary, it re-added a listener the queue had just added
/// (2110 already_exists), and it could create a second LB for a Service
/// whose first is not yet observable. The queue waits for the lock; the
/// resync skips busy Services (the queue is reconciling them anyway).
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<std::sync::Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>>);

impl InFlight {
    fn entry(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Drop entries nobody holds or waits for (only the map refers to
        // them; new references are only made under this lock), so the map
        // does not grow with every Service ever seen.
        map.retain(|_, m| Arc::strong_count(m) > 1);
        map.entry(key.to_string()).or_default().clone()
    }

    /// Waits for exclusive access to the Service `key`.
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.entry(key).lock_owned().await
    }

    /// Exclusive access to `key` if no one else has it now.
    pub fn try_lock(&self, key: &str) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.entry(key).try_lock_owned().ok()
    }
}

fn has_finalizer(svc: &Service) -> bool {
    svc.finalizers().iter().any(|f| f == FINALIZER)
}

/// Merge patch of the finalizer list, guarded by resourceVersion.
async fn set_finalizer(api: &Api<Service>, svc: &Service, present: bool) -> Result<(), Error> {
    let mut list: Vec<String> = svc
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if present {
        list.push(FINALIZER.to_string());
    }
    api.patch(
        &svc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": {
            "resourceVersion": svc.resource_version(),
            "finalizers": if list.is_empty() { serde_json::Value::Null } else { json!(list) },
        }})),
    )
    .await?;
    Ok(())
}

/// The addresses in a Service's `status.loadBalancer.ingress`.
pub fn ingress_ips(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone())
        .collect()
}

async fn set_ingress(api: &Api<Service>, svc: &Service, ips: &[String]) -> Result<(), Error> {
    let ingress: Vec<_> = ips.iter().map(|ip| json!({ "ip": ip })).collect();
    api.patch_status(
        &svc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "loadBalancer": { "ingress": if ingress.is_empty() { serde_json::Value::Null } else { json!(ingress) } } } })),
    )
    .await?;
    Ok(())
}

/// Runs the controller until `shutdown`. Nodes come from the CCM's shared
/// Node cache (`backends_changed` fires when the eligible backend set
/// changes, and re-reconciles every Service); Services and EndpointSlices
/// each have one slimmed reflector, run in their own tasks so the startup
/// pass can wait for their stores, and feeding the work queue by reference.
pub async fn run(
    ctx: Arc<Context>,
    nodes: NodeCache,
    backends_changed: impl Stream<Item = ()> + Send + 'static,
    resync: Duration,
    shutdown: Shutdown,
) {
    let client = ctx.kube.clone();
    let (services, svc_writer) = reflector::store::<Service>();
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    let (queue_tx, queue_rx) = futures::channel::mpsc::unbounded::<ObjectRef<Service>>();
    let svc_tx = queue_tx.clone();
    let svc_reflector = tokio::spawn(
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .modify(slim)
        .default_backoff()
        .reflect(svc_writer)
        .applied_objects()
        .for_each(move |r| {
            if let Ok(s) = r {
                let _ = svc_tx.unbounded_send(ObjectRef::from_obj(&s));
            }
            futures::future::ready(())
        }),
    );
    // A slice change re-reconciles its Service (the store feeds translation).
    let slice_reflector = tokio::spawn(
        watcher(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default(),
        )
        .modify(slim)
        .default_backoff()
        .reflect(slice_writer)
        .touched_objects()
        .for_each(move |r| {
            if let Ok(s) = r
                && let Some(name) = s.labels().get("kubernetes.io/service-name")
            {
                let r = ObjectRef::<Service>::new(name);
                let r = match s.namespace() {
                    Some(ns) => r.within(&ns),
                    None => r,
                };
                let _ = queue_tx.unbounded_send(r);
            }
            futures::future::ready(())
        }),
    );
    let stop_watches = move || {
        svc_reflector.abort();
        slice_reflector.abort();
    };
    // The first complete listings, waited for by this task alone (see
    // `desired_for`); nothing reconciles before.
    let listed = async {
        nodes.ready().await;
        let _ = services.wait_until_ready().await;
        let _ = slices.wait_until_ready().await;
    };
    tokio::select! {
        _ = listed => {}
        _ = shutdown.wait() => {
            stop_watches();
            return;
        }
    }
    let sctx = Arc::new(ServiceCtx::new(
        ctx,
        ServiceInputs {
            services: services.clone(),
            nodes: nodes.store,
            slices,
            resync,
        },
    ));
    // Startup: one batched pass over every Service we own (a few paged
    // Describes, whatever their number) fills `ensured`, so the work
    // queue's initial reconcile of each Service costs no cloud call.
    tokio::select! {
        r = resync_all(&sctx) => match r {
            Ok(r) => tracing::info!(
                ensured = r.ensured,
                failed = r.failed,
                skipped = r.skipped,
                "service startup resync"
            ),
            Err(e) => tracing::warn!(error = %e, "service startup resync failed"),
        },
        _ = shutdown.wait() => {
            stop_watches();
            return;
        }
    }
    let resync_task = {
        let sctx = sctx.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(resync);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is immediate; the watch already covers startup
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.wait() => return,
                }
                match resync_all(&sctx).await {
                    Ok(r) => {
                        tracing::debug!(
                            ensured = r.ensured,
                            failed = r.failed,
                            skipped = r.skipped,
                            "service resync"
                        )
                    }
                    Err(e) => tracing::warn!(error = %e, "service resync failed"),
                }
            }
        })
    };
    // The queue is fed by reference only: the reflectors above own the
    // watches (no second watch of either kind inside the Controller).
    Controller::for_stream(
        futures::stream::pending::<Result<Service, watcher::Error>>(),
        services,
    )
    .reconcile_on(queue_rx)
    .reconcile_all_on(backends_changed)
    .graceful_shutdown_on(async move { shutdown.wait().await })
    .run(reconcile, error_policy, sctx)
    .for_each(|_| futures::future::ready(()))
    .await;
    stop_watches();
    resync_task.abort();
}

/// Retries a failed Service with per-Service exponential backoff.
pub fn error_policy(svc: Arc<Service>, err: &Error, sctx: Arc<ServiceCtx>) -> Action {
    let ctx = &sctx.ctx;
    ctx.metrics.record(NAME, err.metric_label());
    let key = format!(
        "service/{}/{}",
        svc.namespace().unwrap_or_default(),
        svc.name_any()
    );
    let delay = ctx.backoff.next(&key);
    tracing::warn!(service = %key, error = %err, retry_in = ?delay, "service reconcile failed");
    Action::requeue(delay)
}

/// One reconciliation of one Service.
pub async fn reconcile(svc: Arc<Service>, sctx: Arc<ServiceCtx>) -> Result<Action, Error> {
    let ctx = &sctx.ctx;
    let ns = svc.namespace().unwrap_or_default();
    let key = service_key(&svc);
    let _exclusive = sctx.in_flight.lock(&key).await;
    let api: Api<Service> = Api::namespaced(ctx.kube.clone(), &ns);
    let oref = svc.object_ref(&());
    let ours = is_ours(&svc, &ctx.config.load_balancer_class);
    let deleting = svc.metadata.deletion_timestamp.is_some();

    if deleting || !ours {
        sctx.ensured.forget(&key);
        if !has_finalizer(&svc) {
            return Ok(Action::await_change());
        }
        let owner = owner(&svc, &ctx.config.cluster_id);
        ctx.events
            .normal(
                &oref,
                "DeletingLoadBalancer",
                "DeleteLoadBalancer",
                format!("Deleting load balancer of {owner}"),
            )
            .await;
        if let Err(e) = ctx.lbs.delete(&owner).await {
            ctx.events
                .warning(
                    &oref,
                    "DeleteLoadBalancerFailed",
                    "DeleteLoadBalancer",
                    format!("Error deleting load balancer: {e}"),
                )
                .await;
            return Err(e.into());
        }
        ctx.events
            .normal(
                &oref,
                "DeletedLoadBalancer",
                "DeleteLoadBalancer",
                "Deleted load balancer".into(),
            )
            .await;
        if !deleting && !ingress_ips(&svc).is_empty() {
            set_ingress(&api, &svc, &[]).await?;
        }
        // Re-read for a fresh resourceVersion after the status write.
        let fresh = if !deleting {
            api.get(&svc.name_any()).await?
        } else {
            (*svc).clone()
        };
        set_finalizer(&api, &fresh, false).await?;
        ctx.backoff.reset(&key);
        ctx.metrics.record(NAME, "ok");
        return Ok(Action::await_change());
    }

    if !has_finalizer(&svc) {
        // Nothing is created before the finalizer is stored; the patch's
        // watch event brings the Service back here.
        set_finalizer(&api, &svc, true).await?;
        return Ok(Action::await_change());
    }

    let desired = match desired_for(&svc, &sctx, None).await {
        Ok(d) => d,
        Err(e) => {
            sctx.ensured.forget(&key);
            return Err(e);
        }
    };
    let current = EnsuredEntry {
        uid: svc.uid().unwrap_or_default(),
        digest: desired_digest(&desired),
        addresses: ingress_ips(&svc),
    };
    if !current.addresses.is_empty() && sctx.ensured.is_current(&key, &current) {
        // Nothing we act on changed since the last successful ensure (this
        // is typically the event of our own status write).
        ctx.backoff.reset(&key);
        ctx.metrics.record(NAME, "unchanged");
        return Ok(Action::await_change());
    }
    if ingress_ips(&svc).is_empty() {
        ctx.events
            .normal(
                &oref,
                "EnsuringLoadBalancer",
                "EnsureLoadBalancer",
                "Ensuring load balancer".into(),
            )
            .await;
    }
    let result = ctx.lbs.ensure(&desired).await;
    let addresses = match record_outcome(ctx, &api, &svc, result).await {
        Ok(a) => a,
        Err(e) => {
            sctx.ensured.forget(&key);
            return Err(e);
        }
    };
    sctx.ensured.record(
        &key,
        EnsuredEntry {
            addresses,
            ..current
        },
    );
    ctx.backoff.reset(&key);
    ctx.metrics.record(NAME, "ok");
    // Periodic resync is batched across Services (see `resync_all`).
    Ok(Action::await_change())
}

/// Translates `svc` with the reflected nodes and slices and its TLS Secrets;
/// a translation error becomes a Warning Event naming the field.
async fn desired_for(
    svc: &Service,
    sctx: &ServiceCtx,
    eligible: Option<&BTreeMap<String, String>>,
) -> Result<DesiredLb, Error> {
    let ctx = &sctx.ctx;
    // The stores are complete here: `run` waits for the first Node, Service
    // and slice listings before anything reconciles (translating with an
    // empty store would remove every backend of the LB). No waiting here:
    // a kube Store wakes only one of several concurrent waiters.
    let ns = svc.namespace().unwrap_or_default();
    let oref = svc.object_ref(&());
    let mut certs = BTreeMap::new();
    let secret_names = match cert_secret_names(svc) {
        Ok(n) => n,
        Err(e) => return Err(invalid(ctx, &oref, e).await),
    };
    if !secret_names.is_empty() {
        let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &ns);
        for name in secret_names {
            if let Some(s) = secrets.get_opt(&name).await? {
                match cert_from_secret(&s) {
                    Ok(cert) => {
                        certs.insert(name, cert);
                    }
                    Err(e) => return Err(invalid(ctx, &oref, e).await),
                }
            }
        }
    }
    let computed;
    let eligible = match eligible {
        Some(e) => e,
        None => {
            computed = sctx.eligible();
            &computed
        }
    };
    let slices: Vec<Arc<EndpointSlice>> = matching(&sctx.inputs.slices, |s| slice_of(svc, s));
    match translate_with(svc, eligible, &slices, &certs, &ctx.config) {
        Ok(d) => Ok(d),
        Err(e) => Err(invalid(ctx, &oref, e).await),
    }
}

async fn invalid(
    ctx: &Context,
    oref: &k8s_openapi::api::core::v1::ObjectReference,
    e: TranslateError,
) -> Error {
    ctx.events
        .warning(
            oref,
            "InvalidLoadBalancerConfig",
            "EnsureLoadBalancer",
            e.to_string(),
        )
        .await;
    Error::InvalidService(e.to_string())
}

/// Events and status after an ensure: a failure is a Warning carrying the
/// cloud's message; a change is `EnsuredLoadBalancer`; the ingress is
/// written only when it differs. Returns the addresses now in the status.
async fn record_outcome(
    ctx: &Context,
    api: &Api<Service>,
    svc: &Service,
    result: lb_controller::Result<lb_controller::LbStatus>,
) -> Result<Vec<String>, Error> {
    let oref = svc.object_ref(&());
    let status = match result {
        Ok(s) => s,
        Err(e) => {
            ctx.events
                .warning(
                    &oref,
                    "SyncLoadBalancerFailed",
                    "EnsureLoadBalancer",
                    format!("Error syncing load balancer: {e}"),
                )
                .await;
            return Err(e.into());
        }
    };
    let current = ingress_ips(svc);
    if status.operations > 0 || current.is_empty() {
        ctx.events
            .normal(
                &oref,
                "EnsuredLoadBalancer",
                "EnsureLoadBalancer",
                format!(
                    "Ensured load balancer {} at {}",
                    status.lb_id,
                    status.addresses.join(", ")
                ),
            )
            .await;
    }
    if current != status.addresses {
        set_ingress(api, svc, &status.addresses).await?;
    }
    Ok(status.addresses)
}

/// Outcome of a batched resync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResyncReport {
    /// Services ensured.
    pub ensured: usize,
    /// Services whose ensure (or translation) failed.
    pub failed: usize,
    /// Services skipped because the work queue was reconciling them.
    pub skipped: usize,
}

/// Re-ensures every LoadBalancer Service we own in one batch: the Services
/// from the reflected store, then lb-controller's `ensure_many`, which observes all LBs with
/// batched Describe calls; an unchanged cloud gets no writes. Services not
/// yet finalized or being deleted are left to the work queue.
pub async fn resync_all(sctx: &ServiceCtx) -> Result<ResyncReport, Error> {
    let ctx = &sctx.ctx;
    // (`run` waited for the stores; see `desired_for`.)
    let services: Vec<Arc<Service>> = matching(&sctx.inputs.services, |s| {
        is_ours(s, &ctx.config.load_balancer_class)
            && has_finalizer(s)
            && s.metadata.deletion_timestamp.is_none()
    });
    // Taken once for the whole batch.
    let eligible = sctx.eligible();
    let mut report = ResyncReport::default();
    let mut batch: Vec<(Arc<Service>, DesiredLb)> = Vec::new();
    // Held until the outcomes are recorded; Services the queue is working on
    // are left to it.
    let mut guards = Vec::new();
    for s in services {
        let key = service_key(&s);
        match sctx.in_flight.try_lock(&key) {
            Some(g) => guards.push(g),
            None => {
                report.skipped += 1;
                continue;
            }
        }
        match desired_for(&s, sctx, Some(&eligible)).await {
            Ok(d) => batch.push((s, d)),
            Err(e) => {
                sctx.ensured.forget(&key);
                report.failed += 1;
                tracing::warn!(service = %s.name_any(), error = %e, "resync: cannot translate");
            }
        }
    }
    let desired: Vec<DesiredLb> = batch.iter().map(|(_, d)| d.clone()).collect();
    let results = ctx.lbs.ensure_many(&desired).await;
    for ((svc, desired), result) in batch.iter().zip(results) {
        let api: Api<Service> =
            Api::namespaced(ctx.kube.clone(), &svc.namespace().unwrap_or_default());
        let key = service_key(svc);
        match record_outcome(ctx, &api, svc, result).await {
            Ok(addresses) => {
                report.ensured += 1;
                sctx.ensured.record(
                    &key,
                    EnsuredEntry {
                        uid: svc.uid().unwrap_or_default(),
                        digest: desired_digest(desired),
                        addresses,
                    },
                );
            }
            Err(e) => {
                sctx.ensured.forget(&key);
                report.failed += 1;
                ctx.metrics.record(NAME, e.metric_label());
                tracing::warn!(service = %svc.name_any(), error = %e, "resync failed");
            }
        }
    }
    drop(guards);
    Ok(report)
}

#[cfg(test)]
mod in_flight_tests {
    use super::InFlight;

    #[tokio::test]
    async fn resync_skips_what_the_queue_holds_and_the_map_is_pruned() {
        let f = InFlight::default();
        let held = f.lock("service/default/a").await;
        assert!(
            f.try_lock("service/default/a").is_none(),
            "held by the queue"
        );
        let other = f.try_lock("service/default/b").expect("free key");
        drop(held);
        drop(other);
        assert!(f.try_lock("service/default/a").is_some(), "free again");
        // Only the key just asked for remains; released ones were pruned.
        let _c = f.try_lock("service/default/c").unwrap();
        assert_eq!(f.0.lock().unwrap().len(), 1);
    }
}

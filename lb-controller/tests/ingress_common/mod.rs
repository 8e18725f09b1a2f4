//! Helpers of the Ingress controller tests: an emulator WITH its L7 proxy
//! data plane, a recording mock Kubernetes API, object builders, small
//! backend servers on 127.0.0.x and raw HTTP/HTTPS clients.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use iaas_client::Client;
use iaas_client::actions::*;
use iaas_emulator::dataplane::DataPlane;
use iaas_emulator::dataplane::lb::{ProxyLbDriver, ProxyOptions};
use iaas_emulator::{Emulator, EmulatorConfig};
use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::client::Body;
use lb_controller::ingress::annotations as ann;
use lb_controller::ingress::{Ctx, Settings, Stores};
use lb_controller::{Reconciler, ReconcilerOptions};
use serde_json::{Value, json};
use suite_runtime::metrics::ReconcileMetrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const CLUSTER: &str = "c1";

/// One Kubernetes request the controller sent.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub body: Value,
    /// IaaS calls the emulator had answered when this request arrived.
    pub cloud_calls: u64,
}

/// Emulator (with L7 proxies) + IaaS client + mock Kubernetes API.
pub struct Env {
    pub emu: Arc<Emulator>,
    pub dir: tempfile::TempDir,
    pub client: Client,
    pub kube: kube::Client,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Answers for `GET` by path (others get a minimal Ingress).
    pub gets: Arc<Mutex<BTreeMap<String, Value>>>,
}

pub fn iaas_client(emu: &Emulator) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut cfg = iaas_client::Config::from_credentials_file(emu.credentials_file()).unwrap();
    cfg.jobs.initial_poll = Duration::from_millis(5);
    cfg.jobs.max_poll = Duration::from_millis(50);
    cfg.jobs.default_timeout = Duration::from_secs(20);
    cfg.retry.initial_delay = Duration::from_millis(10);
    cfg.retry.max_delay = Duration::from_millis(100);
    cfg.retry.max_elapsed = Duration::from_secs(3);
    cfg.rate_limit.qps = 10_000;
    cfg.rate_limit.burst = 10_000;
    Client::new(cfg).unwrap()
}

/// A permissive mock API server: records every request and answers it
/// (PATCH/GET with a minimal Ingress of the path's name, POST by echoing).
/// Requests seen and canned GET answers of the mock API.
pub type MockState = (
    kube::Client,
    Arc<Mutex<Vec<Seen>>>,
    Arc<Mutex<BTreeMap<String, Value>>>,
);

pub fn mock_kube(emu: Arc<Emulator>) -> MockState {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let gets: Arc<Mutex<BTreeMap<String, Value>>> = Arc::default();
    let (s, g) = (seen.clone(), gets.clone());
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let cloud_calls = emu.stats().values().map(|s| s.calls).sum();
            s.lock().unwrap().push(Seen {
                method: method.clone(),
                path: path.clone(),
                body: body.clone(),
                cloud_calls,
            });
            let name = path
                .rsplit('/')
                .find(|p| *p != "status")
                .unwrap_or("x")
                .to_string();
            let reply = if method == "POST" {
                body
            } else if let Some(v) = g.lock().unwrap().get(&path) {
                v.clone()
            } else {
                json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                       "metadata": {"name": name, "namespace": "default", "resourceVersion": "2"}})
            };
            let status = if method == "POST" { 201 } else { 200 };
            send.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
    });
    (kube::Client::new(svc, "default"), seen, gets)
}

impl Env {
    /// Emulator whose LB data plane is the real proxy (EIPs on 127.79.x.0/24).
    pub async fn start() -> Env {
        let mut dp = DataPlane::noop();
        dp.lbs = Arc::new(ProxyLbDriver::new(ProxyOptions::default()).unwrap());
        Env::start_with(dp).await
    }

    /// Emulator with only its control plane (no proxy, so backends may be
    /// addresses nothing listens on and no packet is ever sent to them).
    pub async fn start_control_plane_only() -> Env {
        Env::start_with(DataPlane::noop()).await
    }

    async fn start_with(dp: DataPlane) -> Env {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = EmulatorConfig::for_tests(dir.path());
        cfg.job_delay_ms = 2;
        // A pool of its own per emulator: parallel tests (and other crates'
        // tests on the default 127.77.0.0/24) must not bind the same EIP.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        cfg.eip_pool = format!("127.79.{}.0/24", (std::process::id() * 7 + n) % 250);
        cfg.data_plane = dp;
        let emu = Arc::new(Emulator::start(cfg).await.unwrap());
        let client = iaas_client(&emu);
        let (kube, seen, gets) = mock_kube(emu.clone());
        Env {
            emu,
            dir,
            client,
            kube,
            seen,
            gets,
        }
    }

    pub fn reconciler(&self) -> Reconciler {
        Reconciler::new(iaas_client(&self.emu), CLUSTER).with_options(ReconcilerOptions {
            transition_timeout: Duration::from_secs(5),
            job_timeout: Some(Duration::from_secs(10)),
        })
    }

    pub fn ctx(&self, w: &World) -> Arc<Ctx> {
        Arc::new(Ctx::new(
            self.kube.clone(),
            self.reconciler(),
            Settings::new(CLUSTER),
            w.stores(),
            ReconcileMetrics::default(),
            Some("test".into()),
            Duration::from_secs(300),
        ))
    }

    pub fn take_seen(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    pub fn total_calls(&self) -> u64 {
        self.emu.stats().values().map(|s| s.calls).sum()
    }

    pub fn write_calls(&self) -> u64 {
        self.emu
            .stats()
            .iter()
            .filter(|(a, _)| !a.starts_with("Describe"))
            .map(|(_, s)| s.calls)
            .sum()
    }

    pub async fn certificates(&self) -> Vec<String> {
        self.client
            .describe_server_certificates_all(&DescribeServerCertificates::default())
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.server_certificate_id)
            .collect()
    }

    pub async fn lb_count(&self) -> usize {
        self.client
            .describe_load_balancers_all(&DescribeLoadBalancers::default())
            .await
            .unwrap()
            .len()
    }

    /// Nothing any reconcile could have created remains.
    pub async fn assert_clean(&self) {
        let c = &self.client;
        let lbs = c
            .describe_load_balancers_all(&DescribeLoadBalancers::default())
            .await
            .unwrap();
        assert!(lbs.is_empty(), "leaked load balancers: {lbs:?}");
        let eips = c.describe_eips_all(&DescribeEips::default()).await.unwrap();
        assert!(
            eips.iter().all(|e| !e.eip_name.starts_with("k8s_")),
            "leaked EIPs: {eips:?}"
        );
        let sgs = c
            .describe_security_groups_all(&DescribeSecurityGroups::default())
            .await
            .unwrap();
        assert!(sgs.iter().all(|s| s.is_default != 0), "leaked SGs: {sgs:?}");
        assert!(self.certificates().await.is_empty(), "leaked certificates");
        let policies = c
            .describe_load_balancer_policies_all(&DescribeLoadBalancerPolicies::default())
            .await
            .unwrap();
        assert!(policies.is_empty(), "leaked policies: {policies:?}");
        let tags = c.describe_tags_all(&DescribeTags::default()).await.unwrap();
        assert!(tags.is_empty(), "leaked tags: {tags:?}");
    }
}

// ------------------------------------------------------------ objects

/// The cluster as the reflectors would see it.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub ingresses: Vec<Ingress>,
    pub classes: Vec<IngressClass>,
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
    pub secrets: Vec<Secret>,
}

impl World {
    pub fn new() -> World {
        World {
            classes: vec![ingress_class()],
            ..Default::default()
        }
    }
    pub fn stores(&self) -> Stores {
        Stores::from_objects(
            self.ingresses.clone(),
            self.classes.clone(),
            self.services.clone(),
            self.slices.clone(),
            self.nodes.clone(),
            self.secrets.clone(),
        )
    }
    /// A ClusterIP Service `name` whose pods are the given backend servers.
    pub fn add_pod_service(&mut self, name: &str, pods: &[SocketAddr]) {
        self.services.push(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
            }))
            .unwrap(),
        );
        // One slice per distinct port (an EndpointSlice has one port list).
        let mut by_port: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        for p in pods {
            by_port
                .entry(p.port())
                .or_default()
                .push(p.ip().to_string());
        }
        for (i, (port, ips)) in by_port.into_iter().enumerate() {
            self.slices.push(
                serde_json::from_value(json!({
                    "metadata": {"name": format!("{name}-{i}"), "namespace": "default",
                                 "labels": {"kubernetes.io/service-name": name}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
                    "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>(),
                }))
                .unwrap(),
            );
        }
    }
    pub fn set_secret(&mut self, name: &str, pem_chain: &str, pem_key: &str) {
        use base64::Engine as _;
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        self.secrets
            .retain(|s| s.metadata.name.as_deref() != Some(name));
        self.secrets.push(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "type": "kubernetes.io/tls",
                "data": {"tls.crt": b(pem_chain), "tls.key": b(pem_key)},
            }))
            .unwrap(),
        );
    }
    pub fn put(&mut self, ing: &Ingress) {
        self.ingresses.retain(|i| {
            i.metadata.name != ing.metadata.name || i.metadata.namespace != ing.metadata.namespace
        });
        self.ingresses.push(ing.clone());
    }
}

pub fn ingress_class() -> IngressClass {
    serde_json::from_value(json!({
        "metadata": {"name": "cloudsuite"},
        "spec": {"controller": ann::CONTROLLER_NAME},
    }))
    .unwrap()
}

/// An Ingress of class `cloudsuite` with pod backends.
pub fn ingress(name: &str, spec: Value, annotations: Value) -> Ingress {
    let mut spec = spec;
    spec["ingressClassName"] = json!("cloudsuite");
    let mut a = json!({ann::BACKEND_TYPE: "pod"});
    for (k, v) in annotations.as_object().cloned().unwrap_or_default() {
        a[k] = v;
    }
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default",
                     "uid": format!("0000{name}-0000-4000-8000-000000000001"),
                     "resourceVersion": "1",
                     "creationTimestamp": "2024-01-01T00:00:00Z", "annotations": a},
        "spec": spec,
    }))
    .unwrap()
}

/// The Ingress as stored after the controller's first patch (finalizer + record).
pub fn finalized(ing: &Ingress, applied: &str) -> Ingress {
    let mut i = ing.clone();
    i.metadata.finalizers = Some(vec![ann::FINALIZER.to_string()]);
    i.metadata
        .annotations
        .get_or_insert_default()
        .insert(ann::APPLIED_LB.into(), applied.into());
    i
}

/// The Ingress marked for deletion.
pub fn deleting(ing: &Ingress) -> Ingress {
    let mut i = ing.clone();
    i.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2024-06-01T00:00:00Z".parse().unwrap(),
    ));
    i
}

pub fn path(p: &str, ty: &str, svc: &str) -> Value {
    json!({"path": p, "pathType": ty, "backend": {"service": {"name": svc, "port": {"number": 80}}}})
}

// ------------------------------------------------------------ backends

/// A backend HTTP server answering `name=<n>\npath=<p>\nhost=<h>\nxff=<x>\n`; stops on drop.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn backend(ip: &str, name: &str) -> Backend {
    let l = tokio::net::TcpListener::bind(format!("{ip}:0"))
        .await
        .unwrap();
    let addr = l.local_addr().unwrap();
    let n = name.to_string();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let n = n.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let header = |h: &str| {
                    head.lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.trim()
                                .eq_ignore_ascii_case(h)
                                .then(|| v.trim().to_string())
                        })
                        .unwrap_or_default()
                };
                let body = format!(
                    "name={n}\npath={path}\nhost={}\nxff={}\n",
                    header("host"),
                    header("x-forwarded-for")
                );
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    Backend {
        addr,
        name: name.into(),
        task,
    }
}

pub fn field(body: &str, k: &str) -> String {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{k}=")))
        .unwrap_or("")
        .to_string()
}

async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    host: &str,
    path: &str,
) -> Result<(u16, String), String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no HTTP response: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Plain HTTP GET to `addr` with `Host: host`.
pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> (u16, String) {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    exchange(s, host, path).await.unwrap()
}

/// HTTPS GET with SNI `host`, verifying the chain against `ca` and the name.
pub async fn https_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    ca: &rustls::pki_types::CertificateDer<'static>,
) -> Result<(u16, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let tls = conn.connect(name, tcp).await.map_err(|e| e.to_string())?;
    exchange(tls, host, path).await
}

/// A test CA issuing leaf certificates.
pub struct Ca {
    pub der: rustls::pki_types::CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    pub fn new() -> Ca {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }
    /// `(chain PEM, key PEM)` for `names`.
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The LB address written in the last status patch for `name`.
pub fn status_ip(seen: &[Seen], name: &str) -> Option<String> {
    seen.iter()
        .rev()
        .find(|s| s.method == "PATCH" && s.path.ends_with(&format!("/ingresses/{name}/status")))
        .and_then(|s| {
            s.body["status"]["loadBalancer"]["ingress"][0]["ip"]
                .as_str()
                .map(str::to_string)
        })
}

/// Polls `f` until it returns true (proxies apply asynchronously after the job).
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

//! The load-balancer data plane: real L4 and L7 proxies run by the emulator.
//!
//! [`ProxyLbDriver`] implements [`LbDriver`]. Per LB, every listener binds
//! `address:listener_port` on each of the LB's bind addresses:
//!
//! - `tcp`: bytes proxied both ways to one backend per connection;
//! - `udp`: a session per client address, closed after an idle timeout;
//! - `http` / `https`: requests routed by the listener's L7 policies, TLS
//!   terminated with the certificate matching the client's SNI.
//!
//! Balance modes: `roundrobin` (smooth, weighted), `leastconn` (fewest
//! active connections or requests per weight) and `source` (weighted
//! rendezvous hash of the client IP: a client stays on its backend).
//!
//! Health checks probe every backend of a tcp/http/https listener:
//! `healthy_check_method` `tcp` or `http|/path` (2xx/3xx is healthy),
//! `healthy_check_option` `interval|timeout|unhealthy|healthy`, default
//! `10|5|2|5`. Times are seconds, or milliseconds when suffixed `ms`
//! (`200ms|100ms|1|1`; the API stores the string as given). New backends
//! start up; down backends get no new traffic; with none up a TCP client is
//! closed and an HTTP client gets 503. UDP backends are not probed.
//!
//! L7 routing. A backend with `policy_id` serves that policy; a request
//! matches a policy when its rules hold (`and`: all, `or`: any; a policy
//! without rules matches nothing). Rule `domain`: the host equals the value,
//! or `*.example.com` matches exactly one label. Rule `url`: a path prefix;
//! two extensions carry Kubernetes path semantics: `=/p` matches the path
//! `/p` exactly, `~/p` matches `/p` and `/p/…` but not `/px` (element-wise).
//! The most specific matching policy wins: exact host over wildcard host
//! over none, then the longest path rule, an exact path over a prefix of the
//! same length, then the lowest policy id. Requests matching no policy go to
//! the backends without a policy; if there are none: 503.
//! `forwardfor & 1` appends the client IP to `X-Forwarded-For`;
//! `X-Forwarded-Proto` is always set.
//!
//! HTTPS: `server_certificate_id` lists the listener's certificates (the
//! list's elements may themselves be comma-separated); the first is served
//! when no certificate's SAN names (exact first, then `*.` wildcards) match
//! the SNI name.
//!
//! Source CIDRs from the security group are enforced at accept (TCP) or at
//! session start (UDP): other clients are closed or ignored.
//!
//! `apply` is a diff: a socket is identified by (address, port, transport)
//! and kept across applies, so established connections on unchanged
//! listeners survive; the listener's settings and backends behind each
//! socket are swapped atomically, and live connections keep the backend
//! they were given. Removed listeners stop accepting; their established TCP
//! connections may finish. `delete` closes everything of the LB.
//!
//! Sockets (listening and outgoing) are created in a network namespace when
//! one is configured ([`ProxyOptions::netns`] or
//! [`ProxyOptions::netns_for`]), through a helper thread that has entered it.

mod balance;
mod config;
mod health;
mod http;
mod netns;
mod proxy;
mod tls;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use iaas_client::model::LoadBalancerListener;
use rustls::crypto::CryptoProvider;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::watch;

use self::balance::{Backend, BackendState, Balancer};
use self::config::{BalanceMode, Cidr, HealthCheck, Policy, Protocol, Specificity};
use self::netns::SocketFactory;
use crate::dataplane::{DataPlaneError, DpResult, LbDriver, LbSpec, ResolvedBackend};

/// Chooses the network namespace an LB's sockets live in.
pub type NetnsResolver = Arc<dyn Fn(&LbSpec) -> Option<PathBuf> + Send + Sync>;

/// How the proxies run.
#[derive(Clone)]
pub struct ProxyOptions {
    /// Namespace (for example `/run/netns/NAME`) in which every LB's
    /// listening and outgoing sockets are created; `None`: the emulator's own.
    pub netns: Option<PathBuf>,
    /// Per-LB namespace (for example the VPC namespace of the LB's vxnet);
    /// when it returns `Some` it overrides `netns`.
    pub netns_for: Option<NetnsResolver>,
    /// Time allowed to dial a backend.
    pub connect_timeout: Duration,
    /// A UDP session with no datagram either way for this long is closed.
    pub udp_idle_timeout: Duration,
    /// Proxy runtime worker threads.
    pub worker_threads: usize,
    /// Skip (with a warning) bind addresses not assigned on this machine
    /// instead of failing the apply; [`ProxyLbDriver::listening`] shows what
    /// is bound. For the emulator without its network data plane.
    pub skip_unassigned_addresses: bool,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            netns: None,
            netns_for: None,
            connect_timeout: Duration::from_secs(5),
            udp_idle_timeout: Duration::from_secs(60),
            worker_threads: 2,
            skip_unassigned_addresses: false,
        }
    }
}

impl fmt::Debug for ProxyOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyOptions")
            .field("netns", &self.netns)
            .field("netns_for", &self.netns_for.as_ref().map(|_| "<fn>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("udp_idle_timeout", &self.udp_idle_timeout)
            .field("worker_threads", &self.worker_threads)
            .field("skip_unassigned_addresses", &self.skip_unassigned_addresses)
            .finish()
    }
}

/// A listener's settings and backends at one apply; swapped whole.
pub(crate) struct ListenerRuntime {
    id: String,
    protocol: Protocol,
    health: HealthCheck,
    forwardfor: i32,
    backends: Vec<Backend>,
    balancer: Balancer,
    /// All backend indices (L4 ignores policies).
    all: Vec<usize>,
    /// L7 policies with their backend indices, ordered by policy id.
    policies: Vec<(Policy, Vec<usize>)>,
    /// Backends without a policy.
    default_group: Vec<usize>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    source: Vec<Cidr>,
}

impl ListenerRuntime {
    /// Whether a client may connect (security-group source ranges).
    fn allows(&self, ip: IpAddr) -> bool {
        self.source.is_empty() || self.source.iter().any(|c| c.contains(ip))
    }

    /// The backend group serving a request.
    fn route(&self, host: &str, path: &str) -> &[usize] {
        let mut best: Option<(Specificity, &[usize])> = None;
        for (p, group) in &self.policies {
            if let Some(s) = p.matches(host, path)
                && best.as_ref().is_none_or(|(b, _)| s > *b)
            {
                best = Some((s, group));
            }
        }
        best.map(|(_, g)| g).unwrap_or(&self.default_group)
    }
}

/// What a socket task serves; the driver swaps it on apply.
pub(crate) type Slot = RwLock<Arc<ListenerRuntime>>;

/// The listener currently in a slot.
pub(crate) fn read_slot(slot: &Slot) -> Arc<ListenerRuntime> {
    slot.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn write_slot(slot: &Slot, rt: Arc<ListenerRuntime>) {
    *slot.write().unwrap_or_else(|e| e.into_inner()) = rt;
}

/// What every task of one LB shares.
pub(crate) struct LbCtx {
    lb_id: String,
    factory: Arc<SocketFactory>,
    client: http::BackendClient,
    /// Becomes true (or its sender drops) when the LB is deleted.
    closing: watch::Receiver<bool>,
    connect_timeout: Duration,
    udp_idle_timeout: Duration,
}

/// Resolves when the LB is being deleted.
pub(crate) async fn closed(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|c| *c).await;
}

/// A value owned by a task, with a signal that fires once it is dropped.
/// Fields drop in order: the value (the socket) first, then the signal.
pub(crate) struct Owned<T> {
    value: T,
    _dropped: SyncSender<()>,
}

/// A spawned task that can be stopped and waited for.
struct Task {
    abort: tokio::task::AbortHandle,
    /// Disconnects when the task's `Owned` value has been dropped.
    dropped: Option<Receiver<()>>,
}

impl Task {
    fn stop(self) {
        self.abort.abort();
        if let Some(rx) = self.dropped {
            // Wait for the socket to close so its port can be bound again at once.
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SockKey {
    addr: SocketAddr,
    udp: bool,
}

struct SocketEntry {
    slot: Arc<Slot>,
    task: Task,
}

struct ListenerEntry {
    slot: Arc<Slot>,
    health: Task,
}

struct LbEntry {
    ctx: Arc<LbCtx>,
    closing: watch::Sender<bool>,
    /// Identity (device, inode) of the namespace the sockets were made in.
    ns_id: Option<(u64, u64)>,
    sockets: HashMap<SockKey, SocketEntry>,
    listeners: HashMap<String, ListenerEntry>,
}

impl LbEntry {
    fn stop(self) {
        let _ = self.closing.send(true);
        for (_, l) in self.listeners {
            l.health.stop();
        }
        for (_, s) in self.sockets {
            s.task.stop();
        }
    }
}

/// Real proxies for load balancers, on a runtime of their own.
pub struct ProxyLbDriver {
    runtime: Mutex<Option<Runtime>>,
    handle: Handle,
    options: ProxyOptions,
    provider: Arc<CryptoProvider>,
    lbs: Mutex<HashMap<String, LbEntry>>,
}

impl fmt::Debug for ProxyLbDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lbs: Vec<String> = self.lock().keys().cloned().collect();
        f.debug_struct("ProxyLbDriver")
            .field("options", &self.options)
            .field("lbs", &lbs)
            .finish()
    }
}

impl ProxyLbDriver {
    /// Starts the proxy runtime (its own threads, so it serves whatever
    /// thread or runtime calls the driver).
    pub fn new(options: ProxyOptions) -> DpResult<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.worker_threads.max(1))
            .thread_name("lb-proxy")
            .enable_all()
            .build()
            .map_err(|e| DataPlaneError::new("starting the LB proxy runtime", e))?;
        Ok(ProxyLbDriver {
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
            options,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            lbs: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LbEntry>> {
        self.lbs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The addresses an LB currently listens on (`udp` true for datagram sockets).
    pub fn listening(&self, loadbalancer_id: &str) -> Vec<(SocketAddr, bool)> {
        let mut v: Vec<_> = self
            .lock()
            .get(loadbalancer_id)
            .map(|e| e.sockets.keys().map(|k| (k.addr, k.udp)).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    fn netns_of(&self, spec: &LbSpec) -> Option<PathBuf> {
        self.options
            .netns_for
            .as_ref()
            .and_then(|f| f(spec))
            .or_else(|| self.options.netns.clone())
    }

    fn spawn_task<T: Send + 'static, F>(&self, value: T, run: impl FnOnce(Owned<T>) -> F) -> Task
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = sync_channel(1);
        let owned = Owned {
            value,
            _dropped: tx,
        };
        let jh = self.handle.spawn(run(owned));
        Task {
            abort: jh.abort_handle(),
            dropped: Some(rx),
        }
    }

    fn new_entry(&self, lb_id: &str, ns: Option<&PathBuf>) -> DpResult<LbEntry> {
        let (factory, ns_id) = match ns {
            None => (SocketFactory::current(), None),
            Some(p) => (
                SocketFactory::in_netns(p)
                    .map_err(|e| DataPlaneError::new("network namespace", e))?,
                ns_identity(p)?,
            ),
        };
        let factory = Arc::new(factory);
        let (closing_tx, closing) = watch::channel(false);
        let client = {
            // The pooled client spawns its connection tasks on the proxy runtime.
            let _g = self.handle.enter();
            http::backend_client(factory.clone(), self.options.connect_timeout)
        };
        Ok(LbEntry {
            ctx: Arc::new(LbCtx {
                lb_id: lb_id.to_string(),
                factory,
                client,
                closing,
                connect_timeout: self.options.connect_timeout,
                udp_idle_timeout: self.options.udp_idle_timeout,
            }),
            closing: closing_tx,
            ns_id,
            sockets: HashMap::new(),
            listeners: HashMap::new(),
        })
    }

    fn apply_locked(&self, lbs: &mut HashMap<String, LbEntry>, spec: &LbSpec) -> DpResult<()> {
        let lb_id = spec.lb.loadbalancer_id.as_str();
        if lb_id.is_empty() {
            return Err(DataPlaneError("load balancer spec without an id".into()));
        }
        // Everything is parsed and validated before anything changes.
        let source = config::parse_cidrs(&spec.source_cidrs)?;
        let mut addrs: Vec<IpAddr> = Vec::new();
        for a in &spec.bind_addresses {
            let ip: IpAddr = a.trim().parse().map_err(|_| {
                DataPlaneError(format!(
                    "load balancer {lb_id}: bind address [{a}] is not an IP"
                ))
            })?;
            if !addrs.contains(&ip) {
                addrs.push(ip);
            }
        }
        let ns = self.netns_of(spec);
        if let Some(p) = &ns {
            answer_for_addresses(p, &addrs)?;
        }
        let ns_id = match &ns {
            Some(p) => ns_identity(p)?,
            None => None,
        };
        // A different namespace (or the same name recreated) means new sockets.
        if lbs.get(lb_id).is_some_and(|e| e.ns_id != ns_id)
            && let Some(old) = lbs.remove(lb_id)
        {
            old.stop();
        }
        let previous = lbs.get(lb_id);
        let mut runtimes: Vec<Arc<ListenerRuntime>> = Vec::new();
        for l in &spec.lb.listeners {
            let resolved = spec
                .backends
                .iter()
                .find(|(id, _)| *id == l.loadbalancer_listener_id)
                .map(|(_, b)| b.as_slice())
                .unwrap_or_default();
            let prev = previous
                .and_then(|e| e.listeners.get(&l.loadbalancer_listener_id))
                .map(|le| read_slot(&le.slot));
            runtimes.push(Arc::new(self.build_listener(
                spec,
                l,
                resolved,
                &source,
                prev.as_deref(),
            )?));
        }
        let mut wanted: HashMap<SockKey, usize> = HashMap::new();
        for (i, rt) in runtimes.iter().enumerate() {
            let port = spec.lb.listeners[i].listener_port;
            for ip in &addrs {
                let key = SockKey {
                    addr: SocketAddr::new(*ip, port),
                    udp: rt.protocol.is_udp(),
                };
                if let Some(j) = wanted.insert(key, i) {
                    return Err(DataPlaneError(format!(
                        "load balancer {lb_id}: listeners {} and {} both use {} port {port}",
                        runtimes[j].id,
                        rt.id,
                        if key.udp { "udp" } else { "tcp" }
                    )));
                }
            }
        }

        if !lbs.contains_key(lb_id) {
            let entry = self.new_entry(lb_id, ns.as_ref())?;
            lbs.insert(lb_id.to_string(), entry);
        }
        let entry = lbs.get_mut(lb_id).expect("inserted above");

        // Bind every new socket first: on failure nothing has changed.
        let mut bound: Vec<(SockKey, BoundSocket)> = Vec::new();
        for key in wanted.keys() {
            if entry.sockets.contains_key(key) {
                continue;
            }
            let sock = if key.udp {
                entry.ctx.factory.bind_udp(key.addr).map(BoundSocket::Udp)
            } else {
                entry.ctx.factory.bind_tcp(key.addr).map(BoundSocket::Tcp)
            };
            match sock {
                Ok(s) => bound.push((*key, s)),
                // The address is not on this machine (a private IP of a VPC
                // the emulator does not build without root): serve the rest.
                // The next apply tries again.
                Err(e)
                    if self.options.skip_unassigned_addresses
                        && e.kind() == std::io::ErrorKind::AddrNotAvailable =>
                {
                    tracing::warn!(loadbalancer = %lb_id, addr = %key.addr, "address not assigned here; listener not bound");
                }
                Err(e) => {
                    let proto = if key.udp { "udp" } else { "tcp" };
                    let err = DataPlaneError(format!(
                        "load balancer {lb_id}: binding {proto} {}: {e}",
                        key.addr
                    ));
                    // A brand-new entry that never served leaves nothing behind.
                    if entry.sockets.is_empty()
                        && entry.listeners.is_empty()
                        && let Some(e) = lbs.remove(lb_id)
                    {
                        e.stop();
                    }
                    return Err(err);
                }
            }
        }

        // Commit. Listeners: swap settings, start probing new ones.
        let keep: HashSet<&str> = runtimes.iter().map(|r| r.id.as_str()).collect();
        let gone: Vec<String> = entry
            .listeners
            .keys()
            .filter(|id| !keep.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            if let Some(l) = entry.listeners.remove(&id) {
                l.health.stop();
            }
        }
        for rt in &runtimes {
            if let Some(l) = entry.listeners.get(&rt.id) {
                write_slot(&l.slot, rt.clone());
            } else {
                let slot = Arc::new(RwLock::new(rt.clone()));
                let ctx = entry.ctx.clone();
                let s2 = slot.clone();
                let jh = self.handle.spawn(health::health_loop(s2, ctx));
                entry.listeners.insert(
                    rt.id.clone(),
                    ListenerEntry {
                        slot,
                        health: Task {
                            abort: jh.abort_handle(),
                            dropped: None,
                        },
                    },
                );
            }
        }
        // Sockets: close removed ones, swap kept ones, start new ones.
        let removed: Vec<SockKey> = entry
            .sockets
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for k in removed {
            if let Some(s) = entry.sockets.remove(&k) {
                s.task.stop();
            }
        }
        for (key, i) in &wanted {
            if let Some(s) = entry.sockets.get(key) {
                write_slot(&s.slot, runtimes[*i].clone());
            }
        }
        for (key, sock) in bound {
            let slot = Arc::new(RwLock::new(runtimes[wanted[&key]].clone()));
            let ctx = entry.ctx.clone();
            let s2 = slot.clone();
            let task = {
                // from_std registers with the proxy runtime's reactor.
                let _g = self.handle.enter();
                match sock {
                    BoundSocket::Tcp(l) => match tokio::net::TcpListener::from_std(l) {
                        Ok(l) => self.spawn_task(l, move |o| proxy::tcp_accept_loop(o, s2, ctx)),
                        Err(e) => return Err(DataPlaneError::new("registering a listener", e)),
                    },
                    BoundSocket::Udp(u) => match tokio::net::UdpSocket::from_std(u) {
                        Ok(u) => self.spawn_task(u, move |o| proxy::udp_loop(o, s2, ctx)),
                        Err(e) => return Err(DataPlaneError::new("registering a listener", e)),
                    },
                }
            };
            entry.sockets.insert(key, SocketEntry { slot, task });
        }
        tracing::debug!(loadbalancer = %lb_id, sockets = entry.sockets.len(), "load balancer applied");
        Ok(())
    }

    fn build_listener(
        &self,
        spec: &LbSpec,
        l: &LoadBalancerListener,
        resolved: &[ResolvedBackend],
        source: &[Cidr],
        prev: Option<&ListenerRuntime>,
    ) -> DpResult<ListenerRuntime> {
        let id = l.loadbalancer_listener_id.as_str();
        if id.is_empty() {
            return Err(DataPlaneError(format!(
                "load balancer {}: a listener has no id",
                spec.lb.loadbalancer_id
            )));
        }
        if l.listener_port == 0 {
            return Err(DataPlaneError(format!(
                "listener {id}: listener_port [0]: must be 1..65535"
            )));
        }
        let protocol = config::Protocol::parse(id, &l.listener_protocol)?;
        let mode = BalanceMode::parse(id, &l.balance_mode)?;
        let health = HealthCheck::parse(id, &l.healthy_check_method, &l.healthy_check_option)?;
        let mut backends = Vec::with_capacity(resolved.len());
        for b in resolved {
            let ip: IpAddr = b.address.trim().parse().map_err(|_| {
                DataPlaneError(format!(
                    "listener {id}: backend {}: address [{}] is not an IP",
                    b.backend_id, b.address
                ))
            })?;
            if b.port == 0 {
                return Err(DataPlaneError(format!(
                    "listener {id}: backend {}: port [0]: must be 1..65535",
                    b.backend_id
                )));
            }
            let addr = SocketAddr::new(ip, b.port);
            // Same backend at the same address: keep its health and counts.
            let state = prev
                .and_then(|p| {
                    p.backends
                        .iter()
                        .find(|o| o.id == b.backend_id && o.addr == addr)
                })
                .map(|o| o.state.clone())
                .unwrap_or_else(|| Arc::new(BackendState::default()));
            backends.push(Backend {
                id: b.backend_id.clone(),
                addr,
                weight: b.weight,
                policy_id: b.policy_id.clone(),
                state,
            });
        }
        let all: Vec<usize> = (0..backends.len()).collect();
        let mut policies: Vec<(Policy, Vec<usize>)> = Vec::new();
        let mut default_group = Vec::new();
        if matches!(protocol, Protocol::Http | Protocol::Https) {
            let mut ids: Vec<&str> = backends
                .iter()
                .map(|b| b.policy_id.as_str())
                .filter(|p| !p.is_empty())
                .collect();
            ids.sort_unstable();
            ids.dedup();
            for pid in ids {
                let Some(p) = spec
                    .policies
                    .iter()
                    .find(|p| p.loadbalancer_policy_id == pid)
                else {
                    // Unknown policy: its backends serve nothing rather than everything.
                    tracing::warn!(listener = %id, policy = %pid, "backend names an unknown policy");
                    continue;
                };
                let group = all
                    .iter()
                    .copied()
                    .filter(|&i| backends[i].policy_id == pid)
                    .collect();
                policies.push((Policy::compile(p)?, group));
            }
            default_group = all
                .iter()
                .copied()
                .filter(|&i| backends[i].policy_id.is_empty())
                .collect();
        }
        let tls = if protocol == Protocol::Https {
            Some(self.tls_acceptor(spec, l)?)
        } else {
            None
        };
        Ok(ListenerRuntime {
            id: id.to_string(),
            protocol,
            health,
            forwardfor: l.forwardfor,
            balancer: Balancer::new(mode, backends.len()),
            backends,
            all,
            policies,
            default_group,
            tls,
            source: source.to_vec(),
        })
    }

    fn tls_acceptor(
        &self,
        spec: &LbSpec,
        l: &LoadBalancerListener,
    ) -> DpResult<tokio_rustls::TlsAcceptor> {
        let id = &l.loadbalancer_listener_id;
        let ids: Vec<&str> = l
            .server_certificate_id
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if ids.is_empty() {
            return Err(DataPlaneError(format!(
                "listener {id}: server_certificate_id: an https listener needs a certificate"
            )));
        }
        let mut certs = Vec::new();
        for cid in ids {
            let Some((_, chain, key)) = spec.certificates.iter().find(|(c, _, _)| c == cid) else {
                return Err(DataPlaneError(format!(
                    "listener {id}: server_certificate_id [{cid}]: no such certificate"
                )));
            };
            certs.push(tls::load_cert(&self.provider, cid, chain, key)?);
        }
        let resolver = tls::SniResolver::new(certs)?;
        let cfg = tls::server_config(self.provider.clone(), resolver)?;
        Ok(tokio_rustls::TlsAcceptor::from(cfg))
    }
}

enum BoundSocket {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

/// (device, inode) of a namespace file: tells a recreated namespace of the
/// same name from the one the sockets live in.
fn ns_identity(p: &std::path::Path) -> DpResult<Option<(u64, u64)>> {
    let m = std::fs::metadata(p)
        .map_err(|e| DataPlaneError(format!("network namespace {}: {e}", p.display())))?;
    Ok(Some((m.dev(), m.ino())))
}

impl LbDriver for ProxyLbDriver {
    fn apply(&self, spec: &LbSpec) -> DpResult<()> {
        let mut lbs = self.lock();
        self.apply_locked(&mut lbs, spec)
    }

    fn delete(&self, loadbalancer_id: &str) -> DpResult<()> {
        let entry = self.lock().remove(loadbalancer_id);
        if let Some(e) = entry {
            e.stop();
        }
        Ok(())
    }

    fn backend_health(&self, loadbalancer_id: &str) -> Vec<(String, String)> {
        let lbs = self.lock();
        let Some(e) = lbs.get(loadbalancer_id) else {
            return Vec::new();
        };
        let mut out: Vec<(String, String)> = Vec::new();
        for l in e.listeners.values() {
            let rt = read_slot(&l.slot);
            for b in &rt.backends {
                let up = rt.protocol.is_udp() || b.is_up();
                out.push((b.id.clone(), if up { "up" } else { "down" }.to_string()));
            }
        }
        out.sort();
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }

    fn shutdown(&self) -> DpResult<()> {
        let all: Vec<LbEntry> = self.lock().drain().map(|(_, e)| e).collect();
        for e in all {
            e.stop();
        }
        Ok(())
    }
}

impl Drop for ProxyLbDriver {
    fn drop(&mut self) {
        let _ = self.shutdown();
        // shutdown_background never blocks, so dropping the driver is safe
        // from async code too.
        if let Some(rt) = self
            .runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            rt.shutdown_background();
        }
    }
}

/// Makes the namespace at `ns` answer for the LB's addresses (EIPs are not
/// configured on any interface: a `local` route in the router's namespace is
/// what a cloud's edge does for them). Idempotent.
fn answer_for_addresses(ns: &std::path::Path, addrs: &[IpAddr]) -> DpResult<()> {
    let Some(name) = ns.file_name().and_then(|n| n.to_str()) else {
        return Err(DataPlaneError(format!(
            "bad namespace path {}",
            ns.display()
        )));
    };
    for ip in addrs.iter().filter(|ip| !ip.is_loopback()) {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        let out = std::process::Command::new("ip")
            .args(["-n", name, "route", "replace", "local"])
            .arg(format!("{ip}/{prefix}"))
            .args(["dev", "lo", "table", "local"])
            .output()
            .map_err(|e| DataPlaneError::new("running ip", e))?;
        if !out.status.success() {
            return Err(DataPlaneError(format!(
                "namespace {name}: cannot answer for {ip}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(())
}

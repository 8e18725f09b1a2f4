//! The node agent (`cloudsuite-cni-agent`, one per node as a DaemonSet):
//! waits for its Node's pod CIDR(s), installs the plugin binary, writes the
//! conflist, and reclaims leases nobody will ever release.
//!
//! Order matters: the plugin binary is installed before the conflist is
//! written, because the runtime declares the node's network ready as soon
//! as a conflist appears and would then execute a plugin that is not there.
//!
//! ## Lease GC rule
//! The runtime's list of live attachments is not reachable from here, so the
//! agent reclaims a lease only when the machine proves it dead. A lease is
//! stale when all of these hold:
//! 1. its file is older than the grace period (an ADD allocates before it
//!    creates the veth, so a young lease without a veth is an ADD in flight);
//! 2. the host veth derived from its container id and ifname does not exist
//!    in the node's namespace (the kernel deletes it with the pod's netns);
//! 3. the netns path recorded in the lease no longer exists, or none was
//!    recorded (torn or older leases).
//!
//! A lease whose netns still exists but whose veth is gone is kept: the
//! sandbox is alive and its runtime will DEL (or CNI GC) it.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, WatchEvent, WatchParams};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;
use suite_runtime::Shutdown;
use suite_runtime::http::Health;

use crate::config::{CNI_VERSION, Cidr};
use crate::ipam::{Lease, LeaseStore};
use crate::net;

/// The plugin's binary name (its `type` in the conflist).
pub const PLUGIN_TYPE: &str = "cloudsuite-cni";

/// The conflist file name the agent owns.
pub const CONFLIST_NAME: &str = "10-cloudsuite.conflist";

/// Every Kubernetes API call the agent makes, as RBAC sees it
/// (`(apiGroup, resource, verb)`): the manifest grants exactly these.
pub const API_CALLS: &[(&str, &str, &str)] = &[("", "nodes", "get"), ("", "nodes", "watch")];

/// The default address of the health and metrics server.
pub const DEFAULT_METRICS_PORT: u16 = 9105;

/// Failures of the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The Node object carries a pod CIDR this plugin cannot use.
    #[error("node {node}: {field}: {why}")]
    BadPodCidr {
        /// Node name.
        node: String,
        /// The offending field (`spec.podCIDRs[1]`, ...).
        field: String,
        /// What is wrong.
        why: String,
    },
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {context}: {source}")]
    Kube {
        /// What was being done.
        context: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// The watch reported an error status.
    #[error("kubernetes API: watch of node {node}: {code} {message}")]
    Watch {
        /// Node name.
        node: String,
        /// HTTP-like status code.
        code: u16,
        /// Server message.
        message: String,
    },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done (names the path).
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A lease or netlink operation failed.
    #[error("{0}")]
    Cni(#[from] crate::error::CniError),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let context = context.into();
    move |source| AgentError::Io { context, source }
}

/// What the agent was configured with (flags / environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// This node's name.
    pub node_name: String,
    /// Network name (the conflist's and the plugin's `name`).
    pub network_name: String,
    /// Where the conflist goes (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// Where the plugin goes (`/opt/cni/bin`).
    pub bin_dir: PathBuf,
    /// The plugin binary shipped with the agent.
    pub plugin_source: PathBuf,
    /// The plugin's `dataDir` (leases live in `<dataDir>/<network name>`).
    pub data_dir: PathBuf,
    /// Pod MTU; `None` takes the node uplink's.
    pub mtu: Option<u32>,
    /// Pod veths take the uplink's GSO/GRO limits (BIG TCP); the plugin's
    /// `bigTCP`.
    pub big_tcp: bool,
    /// Masquerade traffic leaving the VPC and cluster ranges.
    pub ip_masq: bool,
    /// Destinations never masqueraded (VPC and cluster CIDRs).
    pub non_masquerade: Vec<Cidr>,
    /// How often conflist, binary and leases are reconciled.
    pub resync: Duration,
    /// Minimum age of a lease before GC may reclaim it.
    pub gc_grace: Duration,
}

impl AgentConfig {
    /// The conflist path.
    pub fn conflist_path(&self) -> PathBuf {
        self.conf_dir.join(CONFLIST_NAME)
    }

    /// The lease directory of the network.
    pub fn lease_dir(&self) -> PathBuf {
        self.data_dir.join(&self.network_name)
    }
}

/// The pod CIDRs of `node`: `spec.podCIDRs` (dual-stack, at most one per
/// family) or else `spec.podCIDR`; `None` while unassigned. IPv4 first.
pub fn select_pod_cidrs(node: &Node) -> Result<Option<Vec<Cidr>>, AgentError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let spec = node.spec.as_ref();
    let list: Vec<(String, &str)> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(l) if !l.is_empty() => l
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("spec.podCIDRs[{i}]"), c.as_str()))
            .collect(),
        _ => spec
            .and_then(|s| s.pod_cidr.as_deref())
            .filter(|c| !c.is_empty())
            .map(|c| vec![("spec.podCIDR".to_string(), c)])
            .unwrap_or_default(),
    };
    if list.is_empty() {
        return Ok(None);
    }
    let mut out: Vec<Cidr> = Vec::new();
    for (field, text) in list {
        let bad = |why: String| AgentError::BadPodCidr {
            node: name.clone(),
            field: field.clone(),
            why,
        };
        let c = Cidr::parse(text).map_err(bad)?;
        let limit = if c.addr.is_ipv4() { 30 } else { 126 };
        if c.prefix > limit {
            return Err(bad(format!(
                "{text} leaves no pod addresses (at most /{limit})"
            )));
        }
        if out.iter().any(|o| o.addr.is_ipv4() == c.addr.is_ipv4()) {
            return Err(bad(format!(
                "{text}: a second {} range (one per family is supported)",
                if c.addr.is_ipv4() { "IPv4" } else { "IPv6" }
            )));
        }
        out.push(c);
    }
    out.sort_by_key(|c| c.addr.is_ipv6());
    Ok(Some(out))
}

/// The conflist for the node's pod CIDRs, as written to disk (stable bytes:
/// keys sorted, trailing newline, so "changed?" is a byte comparison).
pub fn render_conflist(cfg: &AgentConfig, cidrs: &[Cidr], mtu: u32) -> String {
    let mut plugin = json!({
        "type": PLUGIN_TYPE,
        "podCIDRs": cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "mtu": mtu,
        "dataDir": cfg.data_dir.display().to_string(),
    });
    // Written only when off, so the default conflist's bytes stay as before.
    if !cfg.big_tcp {
        plugin["bigTCP"] = json!(false);
    }
    if cfg.ip_masq {
        plugin["ipMasq"] = json!(true);
        plugin["nonMasqueradeCIDRs"] = json!(
            cfg.non_masquerade
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        );
    }
    let list = json!({
        "cniVersion": CNI_VERSION,
        "name": cfg.network_name,
        "plugins": [plugin],
    });
    let mut text = serde_json::to_string_pretty(&list).unwrap_or_else(|_| list.to_string());
    text.push('\n');
    text
}

/// Whether a file holding `current` (absent: `None`) must be rewritten.
pub fn needs_write(current: Option<&[u8]>, desired: &[u8]) -> bool {
    current != Some(desired)
}

fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, AgentError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(format!("read {}", path.display()))(e)),
    }
}

/// Replaces `path` with `bytes` atomically (a temp file in the same
/// directory, fsynced, renamed over it) when its content differs. Readers
/// see the old or the new file, never a partial one. Returns whether it wrote.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, AgentError> {
    if !needs_write(read_if_exists(path)?.as_deref(), bytes) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Dot-prefixed and not ending in .conf/.conflist: runtimes ignore it.
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io(format!("create {}", tmp.display())))?;
        f.write_all(bytes)
            .map_err(io(format!("write {}", tmp.display())))?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io(format!("chmod {}", tmp.display())))?;
        f.sync_all()
            .map_err(io(format!("fsync {}", tmp.display())))?;
        fs::rename(&tmp, path).map_err(io(format!("rename onto {}", path.display())))?;
        // The rename itself must survive a crash too.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(true)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Installs `src` as `dest` (mode 0755) atomically when the content differs
/// (renaming over a binary a runtime is executing is safe; writing into it
/// is not). Returns whether it installed.
pub fn install_plugin(src: &Path, dest: &Path) -> Result<bool, AgentError> {
    let mut bytes = Vec::new();
    File::open(src)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io(format!("read plugin binary {}", src.display())))?;
    write_atomic(dest, &bytes, 0o755)
}

/// The GC rule (see the module docs): whether `lease` may be reclaimed.
pub fn lease_is_stale(
    lease: &Lease,
    now: SystemTime,
    grace: Duration,
    veth_exists: impl Fn(&str) -> bool,
    netns_exists: impl Fn(&str) -> bool,
) -> bool {
    let young = lease
        .modified
        .and_then(|m| now.duration_since(m).ok())
        .is_none_or(|age| age < grace);
    if young {
        return false;
    }
    if !lease.container_id.is_empty()
        && veth_exists(&net::host_veth_name(&lease.container_id, &lease.ifname))
    {
        return false;
    }
    lease.netns.is_empty() || !netns_exists(&lease.netns)
}

/// Reclaims stale leases of `store` given the node's link names; returns them.
pub fn gc_leases(
    store: &LeaseStore,
    links: &HashSet<String>,
    grace: Duration,
) -> Result<Vec<Lease>, AgentError> {
    let now = SystemTime::now();
    Ok(store.reclaim(|l| {
        lease_is_stale(
            l,
            now,
            grace,
            |v| links.contains(v),
            |p| Path::new(p).exists(),
        )
    })?)
}

/// Waits until the Node has pod CIDR(s) and returns them: one GET, then a
/// watch on that one object from the GET's resourceVersion (no polling);
/// a watch that ends is resumed, an expired one (410) starts over.
pub async fn wait_for_pod_cidrs(client: kube::Client, node: &str) -> Result<Vec<Cidr>, AgentError> {
    let api: Api<Node> = Api::all(client);
    loop {
        let n = api.get(node).await.map_err(|source| AgentError::Kube {
            context: format!("get node {node}"),
            source,
        })?;
        if let Some(c) = select_pod_cidrs(&n)? {
            return Ok(c);
        }
        tracing::info!(node, "waiting for the node's pod CIDR");
        let mut rv = n.metadata.resource_version.clone().unwrap_or_default();
        'watch: loop {
            let wp = WatchParams::default()
                .fields(&format!("metadata.name={node}"))
                .timeout(290);
            let stream = api
                .watch(&wp, &rv)
                .await
                .map_err(|source| AgentError::Kube {
                    context: format!("watch node {node}"),
                    source,
                })?;
            let mut stream = stream.boxed();
            while let Some(ev) = stream.next().await {
                let ev = ev.map_err(|source| AgentError::Kube {
                    context: format!("watch node {node}"),
                    source,
                })?;
                match ev {
                    WatchEvent::Added(n) | WatchEvent::Modified(n) => {
                        if let Some(c) = select_pod_cidrs(&n)? {
                            return Ok(c);
                        }
                        if let Some(v) = n.metadata.resource_version {
                            rv = v;
                        }
                    }
                    WatchEvent::Bookmark(b) => rv = b.metadata.resource_version,
                    WatchEvent::Deleted(_) => {}
                    WatchEvent::Error(s) if s.code == 410 => break 'watch,
                    WatchEvent::Error(s) => {
                        return Err(AgentError::Watch {
                            node: node.to_string(),
                            code: s.code,
                            message: s.message,
                        });
                    }
                }
            }
        }
    }
}

/// The agent's metrics.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Conflist (re)writes.
    pub conflist_writes: Counter,
    /// Plugin binary installs.
    pub plugin_installs: Counter,
    /// Leases reclaimed by GC.
    pub leases_reclaimed: Counter,
    /// Failed reconcile passes.
    pub sync_errors: Counter,
    /// Leases on disk after the last pass.
    pub leases: Gauge,
    /// 1 once the node's pod CIDR is known.
    pub pod_cidr_assigned: Gauge,
}

impl Metrics {
    /// Registers every metric under `cloudsuite_cni_agent_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        let r = registry.sub_registry_with_prefix("cloudsuite_cni_agent");
        r.register(
            "conflist_writes",
            "Conflist (re)writes",
            m.conflist_writes.clone(),
        );
        r.register(
            "plugin_installs",
            "Plugin binary installs",
            m.plugin_installs.clone(),
        );
        r.register(
            "leases_reclaimed",
            "Leases reclaimed by GC",
            m.leases_reclaimed.clone(),
        );
        r.register(
            "sync_errors",
            "Failed reconcile passes",
            m.sync_errors.clone(),
        );
        r.register("leases", "Leases on disk", m.leases.clone());
        r.register(
            "pod_cidr_assigned",
            "1 once the node's pod CIDR is known",
            m.pod_cidr_assigned.clone(),
        );
        m
    }
}

/// One reconcile pass: plugin binary, then conflist, then lease GC.
/// `netlink` lists the node's links (None: skip GC, as in tests without one).
pub async fn sync_once(
    cfg: &AgentConfig,
    cidrs: &[Cidr],
    mtu: u32,
    netlink: Option<&rtnetlink::Handle>,
    metrics: &Metrics,
) -> Result<(), AgentError> {
    if install_plugin(&cfg.plugin_source, &cfg.bin_dir.join(PLUGIN_TYPE))? {
        metrics.plugin_installs.inc();
        tracing::info!(dest = %cfg.bin_dir.display(), "installed the plugin binary");
    }
    // BIG TCP segments routed into a tunnel would be cut in software: while
    // one is up on the node, new pods get the 64 KiB default. Checked here,
    // once a resync, with the listing lease GC uses below; not by the plugin
    // (listing 220 links took 1.4 ms, more than half of an ADD).
    let links = match netlink {
        Some(h) => Some(net::list_links(h).await?),
        None => None,
    };
    let tunnel = links
        .as_deref()
        .filter(|_| cfg.big_tcp)
        .and_then(net::up_tunnel);
    let conflist = match &tunnel {
        Some(_) => render_conflist(
            &AgentConfig {
                big_tcp: false,
                ..cfg.clone()
            },
            cidrs,
            mtu,
        ),
        None => render_conflist(cfg, cidrs, mtu),
    };
    if write_atomic(&cfg.conflist_path(), conflist.as_bytes(), 0o644)? {
        metrics.conflist_writes.inc();
        match &tunnel {
            Some(t) => tracing::info!(
                path = %cfg.conflist_path().display(),
                tunnel = %t,
                "wrote the conflist; BIG TCP off for new pods while this tunnel is up"
            ),
            None => tracing::info!(path = %cfg.conflist_path().display(), "wrote the conflist"),
        }
    }
    if let Some(links) = links {
        let links: HashSet<String> = links
            .iter()
            .filter_map(|m| net::link_name(m).map(str::to_string))
            .collect();
        let store = LeaseStore::open(&cfg.lease_dir())?;
        let freed = gc_leases(&store, &links, cfg.gc_grace)?;
        for l in &freed {
            tracing::info!(ip = %l.ip, container = %l.container_id, "reclaimed a stale lease");
        }
        metrics.leases_reclaimed.inc_by(freed.len() as u64);
        metrics.leases.set(store.leases()?.len() as i64);
    }
    Ok(())
}

/// Runs the agent until `shutdown`: wait for the pod CIDR (retrying API
/// failures with backoff), then reconcile every `cfg.resync`. Ready once
/// the conflist is in place.
pub async fn run(
    cfg: AgentConfig,
    client: kube::Client,
    metrics: Metrics,
    health: Health,
    shutdown: Shutdown,
) -> Result<(), AgentError> {
    if !cfg.ip_masq
        && let Err(e) = crate::masq::remove(&cfg.network_name)
    {
        tracing::debug!(error = %e, "masquerade rules not removed (nft unavailable?)");
    }
    let mut backoff = Duration::from_secs(1);
    let cidrs = loop {
        let attempt = tokio::select! {
            r = wait_for_pod_cidrs(client.clone(), &cfg.node_name) => r,
            _ = shutdown.wait() => return Ok(()),
        };
        match attempt {
            Ok(c) => break c,
            // A malformed CIDR will not fix itself by retrying fast.
            Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "pod CIDR not available"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait() => return Ok(()),
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    };
    metrics.pod_cidr_assigned.set(1);
    tracing::info!(cidrs = ?cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(), "pod CIDR assigned");
    let (conn, handle, _) = rtnetlink::new_connection().map_err(io("open a netlink socket"))?;
    let conn = tokio::spawn(conn);
    let mtu = match cfg.mtu {
        Some(m) => m,
        None => net::uplink_mtu(&handle).await?,
    };
    loop {
        match sync_once(&cfg, &cidrs, mtu, Some(&handle), &metrics).await {
            Ok(()) => health.set_ready(true),
            Err(e) => {
                metrics.sync_errors.inc();
                // Stay ready if a conflist is already in place: pods keep working.
                health.set_ready(cfg.conflist_path().exists());
                tracing::warn!(error = %e, "reconcile failed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.resync) => {}
            _ = shutdown.wait() => break,
        }
    }
    conn.abort();
    Ok(())
}

#[cfg(test)]
mod tests;

//! The walk's CNI part: the emulator's instances are network namespaces
//! (nodes), the VPC router routes each node's pod CIDR to it, and the CNI
//! plugin, executed exactly as a runtime executes it, wires pods on two nodes
//! that then talk across nodes with no encapsulation.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use iaas_client::Client;
use iaas_client::actions::*;
use iaas_emulator::dataplane::network::NamespaceNetworkDriver;

use crate::lb_walk::{LbWalk, PodView};
use crate::netns::{self, Netns};
use crate::walk::Walk;

/// One pod the walk wired.
#[derive(Debug)]
struct Pod {
    node_ns: String,
    container_id: String,
    ns: Netns,
    ip: Ipv4Addr,
    conf: String,
    result: serde_json::Value,
}

#[derive(Debug)]
struct Node {
    instance_id: String,
    ns: String,
    ip: Ipv4Addr,
    pod_cidr: String,
}

/// Everything the CNI part needs to know about its surroundings.
#[derive(Debug)]
pub struct CniWalk {
    /// The emulator's data dir (namespace names derive from it).
    pub data_dir: PathBuf,
    /// The `cloudsuite-cni` binary.
    pub plugin: PathBuf,
    /// Lease directories live here.
    pub scratch: PathBuf,
    /// When set, the load-balancer part runs on the pods before they go
    /// (the emulator's credentials file, for the CCM's cloud-config).
    pub lb_credentials: Option<PathBuf>,
}

impl CniWalk {
    /// Runs the CNI steps; returns whether all passed.
    pub async fn run(&self, walk: &mut Walk, client: &Client) -> bool {
        walk.section("CNI: pods on two nodes, routed by the VPC");
        let mut nodes = Vec::new();
        let mut pods: Vec<Pod> = Vec::new();
        let mut statics = Vec::new();
        let ok = walk
            .step(
                "two instances are node namespaces on the VPC bridge",
                self.nodes(client, &mut nodes),
            )
            .await
            && walk
                .step(
                    "route per node pod CIDR in the VPC router (UpdateRouters)",
                    routes(client, &nodes, &mut statics),
                )
                .await
            && walk
                .step(
                    "CNI ADD: 2 pods per node, plugin exec'd as a runtime does",
                    self.add_pods(&nodes, &mut pods),
                )
                .await;
        if ok {
            walk.step("pod to pod on one node", pair(&pods, true)).await;
            walk.step(
                "pod to pod across nodes, no tunnel device anywhere",
                across(&nodes, &pods),
            )
            .await;
            walk.step(
                "pod to the other node's address",
                pod_to_node(&nodes, &pods),
            )
            .await;
            walk.step("CNI CHECK passes for every pod", self.check(&pods))
                .await;
            if let Some(credentials_file) = &self.lb_credentials {
                match self.vpc_ns(client).await {
                    Ok(vpc_ns) => {
                        let views: Vec<PodView> = pods
                            .iter()
                            .map(|p| PodView {
                                ns: p.ns.name().to_string(),
                                ip: p.ip,
                            })
                            .collect();
                        let lb = LbWalk {
                            vpc_ns,
                            credentials_file: credentials_file.clone(),
                        };
                        lb.run(walk, client, &views).await;
                    }
                    Err(e) => walk.skip("Service type=LoadBalancer", &format!("{e:#}")),
                }
            }
        }
        walk.step(
            "CNI DEL (twice: idempotent), pods removed",
            self.delete_pods(&mut pods),
        )
        .await;
        walk.step("pod CIDR routes removed", unroute(client, &mut statics))
            .await;
        walk.all_passed()
    }

    async fn nodes(&self, client: &Client, nodes: &mut Vec<Node>) -> anyhow::Result<String> {
        let driver = NamespaceNetworkDriver::for_data_dir(&self.data_dir)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let instances = client
            .describe_instances_all(&DescribeInstances {
                status: vec!["running".into()],
                ..Default::default()
            })
            .await?;
        let existing = netns::ip(&["netns", "list"])?;
        for (i, inst) in instances
            .iter()
            .filter(|i| i.instance_name.starts_with("node-"))
            .take(2)
            .enumerate()
        {
            let ns = driver.instance_netns(&inst.instance_id);
            ensure!(
                existing
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(ns.as_str())),
                "namespace {ns} of {} is missing",
                inst.instance_id
            );
            let ip: Ipv4Addr = inst.vxnets.first().context("no NIC")?.private_ip.parse()?;
            nodes.push(Node {
                instance_id: inst.instance_id.clone(),
                ns,
                ip,
                pod_cidr: format!("10.244.{}.0/24", i + 1),
            });
        }
        ensure!(
            nodes.len() == 2,
            "need 2 running seeded nodes, found {}",
            nodes.len()
        );
        Ok(nodes
            .iter()
            .map(|n| format!("{} at {} ({})", n.instance_id, n.ip, n.ns))
            .collect::<Vec<_>>()
            .join(", "))
    }

    async fn vpc_ns(&self, client: &Client) -> anyhow::Result<String> {
        let driver = NamespaceNetworkDriver::for_data_dir(&self.data_dir)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let vxnets = client
            .describe_vxnets_all(&DescribeVxnets::default())
            .await?;
        let router = vxnets
            .first()
            .and_then(|v| v.router.as_ref())
            .context("no VPC router")?;
        Ok(driver.vpc_netns(&router.router_id))
    }

    async fn add_pods(&self, nodes: &[Node], pods: &mut Vec<Pod>) -> anyhow::Result<String> {
        let run_id = std::process::id();
        for (n, node) in nodes.iter().enumerate() {
            let leases = self.scratch.join(format!("leases-{n}"));
            std::fs::create_dir_all(&leases)?;
            let conf = serde_json::json!({
                "cniVersion": "1.1.0", "name": "walk", "type": "cloudsuite-cni",
                "podCIDR": node.pod_cidr, "dataDir": leases.display().to_string(),
            })
            .to_string();
            for p in 0..2 {
                let ns = Netns::create(&format!("walk{run_id}-n{n}p{p}"))?;
                let container_id = format!("walk{run_id}n{n}p{p}");
                let (plugin, node_ns, path, conf2, cid) = (
                    self.plugin.clone(),
                    node.ns.clone(),
                    ns.path(),
                    conf.clone(),
                    container_id.clone(),
                );
                let run = tokio::task::spawn_blocking(move || {
                    netns::run_cni(&plugin, &node_ns, "ADD", &cid, Some(&path), &conf2)
                })
                .await??;
                ensure!(run.ok, "ADD failed on {}: {}", node.ns, run.json);
                let ip = netns::result_ipv4(&run)?;
                pods.push(Pod {
                    node_ns: node.ns.clone(),
                    container_id,
                    ns,
                    ip,
                    conf: conf.clone(),
                    result: run.json,
                });
            }
        }
        Ok(pods
            .iter()
            .map(|p| p.ip.to_string())
            .collect::<Vec<_>>()
            .join(", "))
    }

    async fn check(&self, pods: &[Pod]) -> anyhow::Result<String> {
        for p in pods {
            // A runtime passes the cached ADD result as prevResult.
            let mut conf: serde_json::Value = serde_json::from_str(&p.conf)?;
            conf["prevResult"] = p.result.clone();
            let conf = conf.to_string();
            let (plugin, node_ns, path, cid) = (
                self.plugin.clone(),
                p.node_ns.clone(),
                p.ns.path(),
                p.container_id.clone(),
            );
            let run = tokio::task::spawn_blocking(move || {
                netns::run_cni(&plugin, &node_ns, "CHECK", &cid, Some(&path), &conf)
            })
            .await??;
            ensure!(run.ok, "CHECK failed for {}: {}", p.ip, run.json);
        }
        Ok(format!(
            "{} pods consistent with their ADD results",
            pods.len()
        ))
    }

    async fn delete_pods(&self, pods: &mut Vec<Pod>) -> anyhow::Result<String> {
        let n = pods.len();
        for p in pods.drain(..) {
            for attempt in 0..2 {
                let (plugin, node_ns, path, conf, cid) = (
                    self.plugin.clone(),
                    p.node_ns.clone(),
                    p.ns.path(),
                    p.conf.clone(),
                    p.container_id.clone(),
                );
                let run = tokio::task::spawn_blocking(move || {
                    netns::run_cni(&plugin, &node_ns, "DEL", &cid, Some(&path), &conf)
                })
                .await??;
                ensure!(
                    run.ok,
                    "DEL #{} failed for {}: {}",
                    attempt + 1,
                    p.ip,
                    run.json
                );
            }
            drop(p.ns);
        }
        Ok(format!("{n} pods deleted, namespaces removed"))
    }
}

async fn routes(
    client: &Client,
    nodes: &[Node],
    statics: &mut Vec<String>,
) -> anyhow::Result<String> {
    let vxnets = client
        .describe_vxnets_all(&DescribeVxnets::default())
        .await?;
    let vxnet = vxnets.first().context("no vxnet")?;
    let router = vxnet
        .router
        .as_ref()
        .context("no router")?
        .router_id
        .clone();
    let specs = nodes
        .iter()
        .map(|n| {
            RouterStaticSpec::route(
                n.pod_cidr.clone(),
                n.ip.to_string(),
                Some(format!("walk-pods-{}", n.instance_id)),
            )
        })
        .collect();
    let out = client
        .add_router_statics(&AddRouterStatics {
            router: router.clone(),
            vxnet: Some(vxnet.vxnet_id.clone()),
            statics: specs,
        })
        .await?;
    statics.extend(out.router_statics);
    client
        .update_routers_and_wait(&UpdateRouters::new([&router]))
        .await?;
    Ok(nodes
        .iter()
        .map(|n| format!("{} via {}", n.pod_cidr, n.ip))
        .collect::<Vec<_>>()
        .join(", "))
}

async fn unroute(client: &Client, statics: &mut Vec<String>) -> anyhow::Result<String> {
    if statics.is_empty() {
        return Ok("none were added".into());
    }
    let all = client
        .describe_router_statics_all(&DescribeRouterStatics {
            router_statics: statics.clone(),
            ..Default::default()
        })
        .await?;
    let routers: std::collections::BTreeSet<String> =
        all.iter().map(|s| s.router_id.clone()).collect();
    client
        .delete_router_statics(&DeleteRouterStatics::new(statics.clone()))
        .await?;
    client
        .update_routers_and_wait(&UpdateRouters::new(routers))
        .await?;
    let n = statics.len();
    statics.clear();
    Ok(format!("{n} routes deleted and applied"))
}

/// A TCP round trip, tried up to 3 times: the first packets to a fresh
/// namespace may wait on neighbour resolution. A retry is reported on stderr
/// so that flakiness stays visible.
async fn blocking_round_trip(from: String, to: String, addr: Ipv4Addr) -> anyhow::Result<bool> {
    for attempt in 1..=3 {
        let (f, t) = (from.clone(), to.clone());
        if tokio::task::spawn_blocking(move || netns::tcp_round_trip(&f, &t, addr)).await?? {
            return Ok(true);
        }
        eprintln!("walk: TCP {from} -> {addr} attempt {attempt} failed");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    Ok(false)
}

async fn pair(pods: &[Pod], same_node: bool) -> anyhow::Result<String> {
    let a = pods.first().context("no pods")?;
    let b = pods
        .iter()
        .skip(1)
        .find(|p| (p.node_ns == a.node_ns) == same_node)
        .context("no peer pod")?;
    ensure!(
        blocking_round_trip(a.ns.name().into(), b.ns.name().into(), b.ip).await?,
        "TCP {} -> {} failed",
        a.ip,
        b.ip
    );
    Ok(format!("TCP {} -> {}", a.ip, b.ip))
}

async fn across(nodes: &[Node], pods: &[Pod]) -> anyhow::Result<String> {
    let detail = pair(pods, false).await?;
    for n in nodes {
        let kinds = netns::link_kinds(&n.ns)?;
        let tunnels: Vec<_> = kinds
            .iter()
            .filter(|k| !matches!(k.as_str(), "veth" | "bridge" | "dummy"))
            .collect();
        ensure!(
            tunnels.is_empty(),
            "tunnel devices on {}: {tunnels:?}",
            n.ns
        );
    }
    // The pods' veths copy their node uplink's GSO limit (BIG TCP when
    // the emulated NIC advertises it).
    let a = pods.first().context("no pods")?;
    let limits = |ns: &str| {
        iaas_emulator::dataplane::network::gso_limits(ns, "eth0")
            .map(|l| l.0)
            .map_err(|e| anyhow::anyhow!("{}", e.0))
    };
    let (pod, uplink) = (limits(a.ns.name())?, limits(&a.node_ns)?);
    ensure!(
        pod == uplink,
        "pod {} eth0 GSO limit {pod} differs from its node uplink's {uplink}",
        a.ip
    );
    let big = if pod > 65_536 { ", BIG TCP" } else { "" };
    Ok(format!(
        "{detail} via the VPC router; node links are veths only; pod segments up to {} KiB (the uplink's{big})",
        pod / 1024
    ))
}

async fn pod_to_node(nodes: &[Node], pods: &[Pod]) -> anyhow::Result<String> {
    let a = pods.first().context("no pods")?;
    let other = nodes
        .iter()
        .find(|n| n.ns != a.node_ns)
        .context("no other node")?;
    ensure!(
        blocking_round_trip(a.ns.name().into(), other.ns.clone(), other.ip).await?,
        "TCP {} -> node {} failed",
        a.ip,
        other.ip
    );
    Ok(format!("TCP {} -> node {}", a.ip, other.ip))
}

/// The plugin binary beside the running executable (target/<profile>/).
pub fn plugin_path() -> anyhow::Result<PathBuf> {
    sibling_binary("cloudsuite-cni")
}

/// A binary of the workspace beside the running executable.
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir: &Path = exe.parent().context("no exe dir")?;
    if dir.ends_with("deps") {
        dir = dir.parent().context("no profile dir")?;
    }
    let bin = dir.join(name);
    ensure!(
        bin.exists(),
        "{} not built (cargo build --release --workspace --bins)",
        bin.display()
    );
    Ok(bin)
}

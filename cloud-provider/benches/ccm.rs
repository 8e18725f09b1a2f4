//! Benchmarks of the real `cloud-controller-manager` binary (release build)
//! against a real kube-apiserver + etcd and the in-process IaaS emulator:
//! Service-to-address latency, a burst of Services, IaaS calls per idle
//! Service resync, idle RSS and binary size, and route reconcile of many
//! nodes with the IaaS calls of an idle route sync.
//!
//! ```sh
//! KUBE_APISERVER=/usr/local/bin/kube-apiserver ETCD=/usr/bin/etcd \
//!   cargo bench -p cloud-provider --bench ccm -- --nodes 500,2000
//! ```
//!
//! Everything it starts is owned by a guard (the CCM child is killed by PID,
//! the control plane and the emulator are stopped, temp dirs removed), also
//! when a step fails.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use iaas_client::actions::{DescribeRouterStatics, DescribeRouters};
use iaas_emulator::{Emulator, EmulatorConfig};
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use suite_tests::control_plane::ControlPlane;

const UNINIT: &str = "node.cloudprovider.kubernetes.io/uninitialized";
const CLUSTER_ID: &str = "bench";
/// Concurrent API requests used to create objects (Services, Nodes).
const CREATE_CONCURRENCY: usize = 16;

/// Command line of the bench.
#[derive(Debug, Parser)]
#[command(about = "cloud-controller-manager benchmarks (real apiserver + emulator)")]
struct Args {
    /// Services created one after another for the latency figure.
    #[arg(long, default_value_t = 20)]
    sequential: usize,
    /// Services created at once for the burst and the idle resync.
    #[arg(long, default_value_t = 200)]
    burst: usize,
    /// The CCM's `--service-resync-period` (and route period in phase 5), seconds.
    #[arg(long, default_value_t = 10)]
    resync_secs: u64,
    /// Node counts for the route reconcile, ascending, comma separated
    /// (each step adds nodes up to the next count).
    #[arg(long, value_delimiter = ',', default_value = "500,2000")]
    nodes: Vec<usize>,
    /// Skip the route phase.
    #[arg(long)]
    skip_routes: bool,
    /// Ignored (cargo bench passes `--bench`).
    #[arg(long, hide = true)]
    bench: bool,
}

/// The CCM child process, killed by PID and reaped when dropped.
struct Ccm {
    child: Child,
    log: PathBuf,
}

impl Ccm {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the log tail if the process has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "cloud-controller-manager exited with {status}; log tail:\n{}",
                tail(&self.log)
            );
        }
        Ok(())
    }

    /// Parsed JSON log lines whose message is `message`.
    fn log_events(&self, message: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(message))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }
}

impl Drop for Ccm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(3000);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_string()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts the release binary with `extra` flags; its JSON log goes to `log`.
fn spawn_ccm(
    cloud_config: &Path,
    kubeconfig: &Path,
    log: PathBuf,
    extra: &[&str],
) -> anyhow::Result<Ccm> {
    let out = std::fs::File::create(&log)?;
    let err = out.try_clone()?;
    let child = Command::new(env!("CARGO_BIN_EXE_cloud-controller-manager"))
        .arg("--cloud-config")
        .arg(cloud_config)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port()?)])
        .args(["--leader-elect", "false", "--log-format", "json"])
        .args(extra)
        // Debug for the two lines the bench reads (resync completions);
        // everything else at the default level.
        .env(
            "RUST_LOG",
            "info,kube=warn,cloud_provider::services=debug,lb_controller=info",
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("spawning cloud-controller-manager")?;
    Ok(Ccm { child, log })
}

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} missing in /proc/{pid}/status"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("malformed status line")?
            .parse()?)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Waits until `f` yields a value, polling every `every`, or fails after `timeout`.
async fn until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    ccm: &mut Ccm,
    mut f: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        ccm.check_alive()?;
        if start.elapsed() > timeout {
            bail!(
                "timed out after {timeout:?} waiting for {what}; CCM log tail:\n{}",
                tail(&ccm.log)
            );
        }
        tokio::time::sleep(every).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Calls per action since the last reset.
fn calls(emu: &Emulator) -> BTreeMap<String, u64> {
    emu.stats()
        .into_iter()
        .filter(|(_, s)| s.calls > 0)
        .map(|(a, s)| (a, s.calls))
        .collect()
}

fn total(c: &BTreeMap<String, u64>) -> u64 {
    c.values().sum()
}

fn writes(c: &BTreeMap<String, u64>) -> u64 {
    c.iter()
        .filter(|(a, _)| !a.starts_with("Describe"))
        .map(|(_, n)| n)
        .sum()
}

/// `Action n, Action m` (per `div` when given, one decimal).
fn by_action(c: &BTreeMap<String, u64>, div: f64) -> String {
    if c.is_empty() {
        return "none".into();
    }
    c.iter()
        .map(|(a, n)| {
            let v = *n as f64 / div;
            if v.fract() == 0.0 {
                format!("{a} {v:.0}")
            } else {
                format!("{a} {v:.1}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn lb_service(name: &str) -> anyhow::Result<Service> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
        },
    }))?)
}

fn ingress_ip(s: &Service) -> Option<String> {
    s.status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .first()?
        .ip
        .clone()
}

/// A table row.
struct Row(String, String, String);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(plane) = ControlPlane::start().await? else {
        bail!("KUBE_APISERVER and ETCD must name the binaries (see docs/TESTING.md)");
    };
    let dir = tempfile::Builder::new().prefix("ccm-bench-").tempdir()?;
    let mut cfg = EmulatorConfig::for_tests(dir.path().join("emu"));
    // Room for every EIP of the run (loopback, never routed) and for the
    // next hops of thousands of nodes inside the managed vxnet.
    cfg.eip_pool = "127.77.0.0/20".into();
    cfg.vxnet_network = "172.30.0.0/18".into();
    let emu = Emulator::start(cfg).await?;
    let result = run(&args, &plane, &emu, dir.path()).await;
    emu.shutdown().await;
    drop(plane);
    drop(dir);
    let rows = result?;
    print_table(&args, &rows);
    Ok(())
}

async fn run(
    args: &Args,
    plane: &ControlPlane,
    emu: &Emulator,
    dir: &Path,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let cloud = iaas_client::Client::new(iaas_client::Config::from_credentials_file(
        emu.credentials_file(),
    )?)?;
    let router = cloud
        .describe_routers_all(&DescribeRouters::default())
        .await?
        .first()
        .context("the emulator seeds a router")?
        .router_id
        .clone();
    let cc = dir.join("cloud-config.yaml");
    std::fs::write(
        &cc,
        format!(
            "credentials_file: {}\ncluster_id: {CLUSTER_ID}\nrouter_id: {router}\ncluster_cidr: 10.0.0.0/8\n",
            emu.credentials_file().display()
        ),
    )?;
    let kube = plane.client();

    // Three nodes named after the emulator's instances, Ready, uninitialised.
    let nodes: Api<Node> = Api::all(kube.clone());
    for i in 1..=3 {
        let name = format!("node-{i}");
        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"taints": [{"key": UNINIT, "value": "true", "effect": "NoSchedule"}]},
        }))?;
        nodes.create(&PostParams::default(), &n).await?;
        nodes
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(ready_status(&[("Hostname", &name)])),
            )
            .await?;
    }

    let resync = args.resync_secs.to_string() + "s";
    let mut ccm = spawn_ccm(
        &cc,
        plane.kubeconfig_path(),
        dir.join("ccm-services.log"),
        &[
            "--controllers",
            "node,lifecycle,service",
            "--service-resync-period",
            &resync,
        ],
    )?;
    until(
        "3 nodes initialised",
        Duration::from_secs(120),
        Duration::from_millis(200),
        &mut ccm,
        || {
            let nodes = nodes.clone();
            async move {
                let list = nodes.list(&ListParams::default()).await?;
                let done = list
                    .items
                    .iter()
                    .filter(|n| {
                        n.spec.as_ref().is_some_and(|s| {
                            s.provider_id.is_some()
                                && !s.taints.iter().flatten().any(|t| t.key == UNINIT)
                        })
                    })
                    .count();
                Ok((done == 3).then_some(()))
            }
        },
    )
    .await?;
    eprintln!("3 nodes initialised");

    // 1. Service creation -> ingress address, one after another.
    let services: Api<Service> = Api::namespaced(kube.clone(), "default");
    let mut lat = Vec::new();
    for i in 0..args.sequential {
        let name = format!("seq-{i}");
        let start = Instant::now();
        services
            .create(&PostParams::default(), &lb_service(&name)?)
            .await?;
        until(
            &format!("{name} address"),
            Duration::from_secs(120),
            Duration::from_millis(20),
            &mut ccm,
            || {
                let services = services.clone();
                let name = name.clone();
                async move { Ok(services.get(&name).await.ok().as_ref().and_then(ingress_ip)) }
            },
        )
        .await?;
        lat.push(start.elapsed());
    }
    lat.sort();
    eprintln!("sequential: {lat:?}");
    rows.push(Row(
        format!(
            "Service created -> ingress address ({} Services one after another, 3 nodes)",
            args.sequential
        ),
        format!(
            "p50 {} / p99 {}",
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99))
        ),
        format!("min {}, max {}", ms(lat[0]), ms(lat[lat.len() - 1])),
    ));
    // Delete them so the burst and the resync see exactly `burst` Services.
    let start = Instant::now();
    for i in 0..args.sequential {
        services
            .delete(&format!("seq-{i}"), &DeleteParams::default())
            .await?;
    }
    until(
        "sequential Services deleted",
        Duration::from_secs(180),
        Duration::from_millis(100),
        &mut ccm,
        || {
            let services = services.clone();
            async move {
                Ok(services
                    .list(&ListParams::default())
                    .await?
                    .items
                    .iter()
                    .all(|s| !s.metadata.name.as_deref().unwrap_or("").starts_with("seq-"))
                    .then_some(()))
            }
        },
    )
    .await?;
    rows.push(Row(
        format!(
            "{} Services deleted at once -> finalizers removed",
            args.sequential
        ),
        ms(start.elapsed()),
        String::new(),
    ));

    // 2. A burst of Services created at once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    emu.reset_stats();
    let start = Instant::now();
    futures::stream::iter(0..args.burst)
        .map(|i| {
            let services = services.clone();
            async move {
                services
                    .create(&PostParams::default(), &lb_service(&format!("burst-{i}"))?)
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let created = start.elapsed();
    let burst = args.burst;
    until(
        "burst addressed",
        Duration::from_secs(900),
        Duration::from_millis(250),
        &mut ccm,
        || {
            let services = services.clone();
            async move {
                let list = services.list(&ListParams::default()).await?;
                let done = list
                    .items
                    .iter()
                    .filter(|s| ingress_ip(s).is_some())
                    .count();
                Ok((done >= burst).then_some(()))
            }
        },
    )
    .await?;
    let all = start.elapsed();
    let c = calls(emu);
    eprintln!("burst: all addressed after {all:?}; calls {c:?}");
    rows.push(Row(
        format!("{burst} Services created at once -> all have an address"),
        format!("{:.1} s", all.as_secs_f64()),
        format!(
            "creates took {:.1} s ({CREATE_CONCURRENCY} concurrent requests); {:.1} Services/s",
            created.as_secs_f64(),
            burst as f64 / all.as_secs_f64()
        ),
    ));
    rows.push(Row(
        format!("IaaS calls for the {burst}-Service burst"),
        format!(
            "{} total, {:.1} per Service ({} writes, {:.1} per Service)",
            total(&c),
            total(&c) as f64 / burst as f64,
            writes(&c),
            writes(&c) as f64 / burst as f64
        ),
        by_action(&c, burst as f64) + " (per Service)",
    ));

    // 3. Idle resync: let everything settle, then count the calls of two
    // whole resyncs (window from one resync's completion to the second
    // completion after it).
    tokio::time::sleep(Duration::from_secs(args.resync_secs + 2)).await;
    let resync_line = "service resync";
    let done0 = until(
        "a resync",
        Duration::from_secs(args.resync_secs * 3 + 900),
        Duration::from_millis(50),
        &mut ccm,
        || {
            let n = ccm_count(&dir.join("ccm-services.log"), resync_line);
            async move { Ok(Some(n)) }
        },
    )
    .await?;
    until(
        "next resync",
        Duration::from_secs(args.resync_secs * 3 + 900),
        Duration::from_millis(20),
        &mut ccm,
        || {
            let n = ccm_count(&dir.join("ccm-services.log"), resync_line);
            async move { Ok((n > done0).then_some(n)) }
        },
    )
    .await?;
    emu.reset_stats();
    let base = ccm_count(&dir.join("ccm-services.log"), resync_line);
    let window = Instant::now();
    until(
        "two idle resyncs",
        Duration::from_secs(args.resync_secs * 3 + 900),
        Duration::from_millis(20),
        &mut ccm,
        || {
            let n = ccm_count(&dir.join("ccm-services.log"), resync_line);
            async move { Ok((n >= base + 2).then_some(())) }
        },
    )
    .await?;
    let window = window.elapsed();
    let c = calls(emu);
    let last = ccm.log_events(resync_line);
    let last = last.last().cloned().unwrap_or_default();
    eprintln!("idle resync: {c:?} over {window:?}; last {last}");
    rows.push(Row(
        format!(
            "IaaS calls per idle Service resync ({burst} Services, period {}s; 2 resyncs counted)",
            args.resync_secs
        ),
        format!(
            "{:.1} calls, {:.1} writes",
            total(&c) as f64 / 2.0,
            writes(&c) as f64 / 2.0
        ),
        by_action(&c, 2.0) + &format!(" (ensured {}, failed {})", last["ensured"], last["failed"]),
    ));

    // 4. Footprint.
    let (rss, hwm) = rss_kib(ccm.pid())?;
    let size = std::fs::metadata(env!("CARGO_BIN_EXE_cloud-controller-manager"))?.len();
    rows.push(Row(
        format!("CCM idle RSS ({burst} Services, 3 nodes, converged)"),
        format!("{:.1} MiB", rss as f64 / 1024.0),
        format!("peak (VmHWM) {:.1} MiB", hwm as f64 / 1024.0),
    ));
    rows.push(Row(
        "release binary size (cloud-controller-manager, stripped)".into(),
        format!("{:.1} MiB", size as f64 / (1024.0 * 1024.0)),
        String::new(),
    ));
    drop(ccm);

    // 5. Route reconcile of many nodes.
    if !args.skip_routes {
        route_phase(args, plane, emu, &cloud, &router, &cc, dir, &mut rows).await?;
    }
    Ok(rows)
}

fn ccm_count(log: &Path, message: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!("\"message\":\"{message}\"")))
        .count()
}

fn ready_status(addrs: &[(&str, &str)]) -> serde_json::Value {
    let now = "2026-01-01T00:00:00Z";
    let addrs: Vec<_> = addrs
        .iter()
        .map(|(t, a)| json!({"type": t, "address": a}))
        .collect();
    json!({"status": {"addresses": addrs, "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now, "lastTransitionTime": now}]}})
}

#[allow(clippy::too_many_arguments)]
async fn route_phase(
    args: &Args,
    plane: &ControlPlane,
    emu: &Emulator,
    cloud: &iaas_client::Client,
    router: &str,
    cc: &Path,
    dir: &Path,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(plane.client());
    let mut have = 0usize;
    let resync = args.resync_secs.to_string() + "s";
    for (step, &want) in args.nodes.iter().enumerate() {
        if want <= have {
            continue;
        }
        // Nodes are created while no CCM runs, so the figure is one cold
        // reconcile of every missing route, not the API's create rate.
        let t = Instant::now();
        futures::stream::iter(have..want)
            .map(|i| {
                let nodes = nodes.clone();
                async move {
                    let name = format!("rn-{i:05}");
                    let cidr = format!("10.{}.{}.0/24", 1 + i / 256, i % 256);
                    let ip = format!("172.30.{}.{}", 8 + i / 250, 1 + i % 250);
                    let n: Node = serde_json::from_value(json!({
                        "metadata": {"name": name},
                        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
                    }))?;
                    nodes.create(&PostParams::default(), &n).await?;
                    nodes
                        .patch_status(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(ready_status(&[("InternalIP", &ip)])),
                        )
                        .await?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(CREATE_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        eprintln!("created nodes {have}..{want} in {:?}", t.elapsed());
        let missing = want - have;
        emu.reset_stats();
        let log = dir.join(format!("ccm-routes-{step}.log"));
        let start = Instant::now();
        let mut ccm = spawn_ccm(
            cc,
            plane.kubeconfig_path(),
            log.clone(),
            &[
                "--controllers",
                "route",
                "--route-reconcile-period",
                &resync,
            ],
        )?;
        let added_sum = |ccm: &Ccm| -> u64 {
            ccm.log_events("routes updated")
                .iter()
                .map(|v| v["added"].as_u64().unwrap_or(0))
                .sum()
        };
        let mut routes_at = None;
        let conds_at = loop {
            ccm.check_alive()?;
            if routes_at.is_none() && added_sum(&ccm) >= missing as u64 {
                routes_at = Some(start.elapsed());
            }
            if routes_at.is_some() {
                let list = nodes.list(&ListParams::default()).await?;
                let routed = list
                    .items
                    .iter()
                    .filter(|n| n.metadata.name.as_deref().unwrap_or("").starts_with("rn-"))
                    .filter(|n| cloud_provider::routes::has_route_condition(n))
                    .count();
                if routed >= want {
                    break start.elapsed();
                }
            }
            if start.elapsed() > Duration::from_secs(1800) {
                bail!(
                    "routes for {want} nodes not done after 30 min; log tail:\n{}",
                    tail(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(if routes_at.is_some() {
                250
            } else {
                20
            }))
            .await;
        };
        let routes_at = routes_at.unwrap_or(conds_at);
        let c = calls(emu);
        let statics = cloud
            .describe_router_statics_all(&DescribeRouterStatics {
                router: Some(router.to_string()),
                static_type: Some(iaas_client::model::STATIC_TYPE_ROUTE),
                ..Default::default()
            })
            .await?;
        let ours = statics
            .iter()
            .filter(|s| {
                s.router_static_name
                    .starts_with(&cloud_provider::routes::route_prefix(CLUSTER_ID))
            })
            .count();
        if ours != want {
            bail!("expected {want} routes in the emulator, found {ours}");
        }
        let (rss_busy, _) = rss_kib(ccm.pid())?;
        rows.push(Row(
            format!("route reconcile: {missing} missing routes ({want} nodes), CCM start -> all routes in the cloud"),
            format!("{:.2} s", routes_at.as_secs_f64()),
            format!("-> all NetworkUnavailable=False {:.1} s; IaaS calls {} ({}); RSS {:.1} MiB", conds_at.as_secs_f64(), total(&c), by_action(&c, 1.0), rss_busy as f64 / 1024.0),
        ));

        // Idle route syncs: count the calls of two periods.
        tokio::time::sleep(Duration::from_secs(2)).await;
        emu.reset_stats();
        tokio::time::sleep(Duration::from_secs(args.resync_secs * 2) + Duration::from_millis(500))
            .await;
        ccm.check_alive()?;
        let c = calls(emu);
        let (rss, _) = rss_kib(ccm.pid())?;
        rows.push(Row(
            format!(
                "IaaS calls per idle route sync ({want} nodes, period {}s; 2 periods counted)",
                args.resync_secs
            ),
            format!(
                "{:.1} calls, {:.1} writes",
                total(&c) as f64 / 2.0,
                writes(&c) as f64 / 2.0
            ),
            format!(
                "{}; idle RSS {:.1} MiB",
                by_action(&c, 2.0),
                rss as f64 / 1024.0
            ),
        ));
        drop(ccm);
        have = want;
    }
    Ok(())
}

fn print_table(args: &Args, rows: &[Row]) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let nodes: Vec<String> = args.nodes.iter().map(|n| n.to_string()).collect();
    println!();
    println!("## cloud-controller-manager");
    println!();
    println!("Command:");
    println!();
    println!("```sh");
    println!(
        "KUBE_APISERVER=/usr/local/bin/kube-apiserver ETCD=/usr/bin/etcd cargo bench -p cloud-provider --bench ccm -- --sequential {} --burst {} --resync-secs {} --nodes {}",
        args.sequential,
        args.burst,
        args.resync_secs,
        nodes.join(",")
    );
    println!("```");
    println!();
    println!(
        "Run of {date}, {nproc} cores ({cpu}), load average at the end {}; real kube-apiserver + etcd on loopback, emulator in process (job delay 10 ms, no-op data plane), the release binary as a child process with `--leader-elect false`.",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!();
    println!("| measurement | result | detail |");
    println!("|---|---|---|");
    for Row(a, b, c) in rows {
        println!("| {a} | {b} | {c} |");
    }
    println!();
    println!(
        "No Go peer (the upstream QingCloud cloud-controller-manager) can be built or run offline on this machine, so there is no side-by-side column; the issue's reference of 40 to 100 MiB requested by Go peers is their manifests' figure, not a measurement."
    );
}

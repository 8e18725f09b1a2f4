//! `ingress-controller`: Ingresses of IngressClass controller
//! `cloudsuite.io/ingress-controller` become cloud L7 load balancers.
//! Parses flags and wires; the logic lives in `lb_controller::ingress`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use lb_controller::Reconciler;
use lb_controller::ingress::{self, Settings};
use suite_runtime::metrics::ReconcileMetrics;
use suite_runtime::{Shutdown, http, leader, logging};

/// Flags (each also settable by environment variable).
#[derive(Debug, Parser)]
#[command(name = "ingress-controller", version, about)]
struct Args {
    /// IaaS credentials file (QingCloud SDK YAML: access key, secret, zone, endpoint).
    #[arg(long, env = "CLOUDSUITE_CREDENTIALS_FILE")]
    credentials_file: Option<PathBuf>,
    /// Cluster id: owns LBs (part of their names and ownership tags).
    #[arg(long, env = "CLOUDSUITE_CLUSTER_ID")]
    cluster_id: String,
    /// Scheme of node providerIDs (`<name>://<zone>/<instance-id>`).
    #[arg(long, env = "CLOUDSUITE_PROVIDER_NAME", default_value = "cloudsuite")]
    provider_name: String,
    /// Vxnet of internal LBs when the Ingress does not name one.
    #[arg(long, env = "CLOUDSUITE_VXNET_ID")]
    vxnet_id: Option<String>,
    /// Bandwidth (Mbps) of allocated EIPs when the Ingress does not say.
    #[arg(long, default_value_t = 10)]
    default_eip_bandwidth: u32,
    /// Seconds between batched resyncs of every Ingress LB (drift repair;
    /// an idle resync costs a few Describe calls in all, no write).
    #[arg(long, default_value_t = 300)]
    resync_secs: u64,
    /// Metrics and health address.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:10281")]
    metrics_addr: SocketAddr,
    /// Run only while holding the leader Lease (disable for a single replica).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Lease name.
    #[arg(long, default_value = "cloudsuite-ingress-controller")]
    lease_name: String,
    /// Lease namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    lease_namespace: String,
    /// This replica's identity (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: logging::LogFormat,
}

// The suite's small runtime (two workers, capped malloc arenas): idle
// footprint, see suite_runtime::runtime.
fn main() -> anyhow::Result<()> {
    suite_runtime::runtime::block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    logging::init(args.log_format, "info,kube=warn")?;
    let _ = rustls::crypto::ring::default_provider().install_default();

    let mut settings = Settings::new(args.cluster_id.clone());
    settings.provider_name = args.provider_name.clone();
    settings.vxnet_id = args.vxnet_id.clone();
    anyhow::ensure!(
        (1..=1000).contains(&args.default_eip_bandwidth),
        "--default-eip-bandwidth: {} is not within 1..1000",
        args.default_eip_bandwidth
    );
    settings.default_eip_bandwidth = args.default_eip_bandwidth;

    let iaas_cfg = match &args.credentials_file {
        Some(p) => iaas_client::Config::from_credentials_file(p)
            .with_context(|| format!("--credentials-file {}", p.display()))?,
        None => {
            iaas_client::Config::from_env().context("IaaS credentials from QY_* environment")?
        }
    };
    let cloud = iaas_client::Client::new(iaas_cfg).context("IaaS client")?;
    let lbs = Reconciler::new(cloud, args.cluster_id.clone());
    let kube = kube::Client::try_default()
        .await
        .context("Kubernetes client (in-cluster or KUBECONFIG)")?;

    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    let health = http::Health::new();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ReconcileMetrics::register(&mut registry, "ingress_controller");
    let server = http::serve(
        args.metrics_addr,
        registry,
        health.clone(),
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("--metrics-addr {}", args.metrics_addr))?;
    tracing::info!(addr = %server.addr, "metrics and health");
    health.set_ready(true);

    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "ingress-controller".into());
    let resync = Duration::from_secs(args.resync_secs.max(10));
    let work = {
        let (kube, shutdown, metrics, identity) = (
            kube.clone(),
            shutdown.clone(),
            metrics.clone(),
            identity.clone(),
        );
        move || {
            let (kube, lbs, settings, metrics, identity, shutdown) = (
                kube.clone(),
                lbs.clone(),
                settings.clone(),
                metrics.clone(),
                identity.clone(),
                shutdown.clone(),
            );
            metrics.set_leader(true);
            async move {
                ingress::run(
                    kube,
                    lbs,
                    settings,
                    metrics.clone(),
                    Some(identity),
                    resync,
                    shutdown,
                )
                .await;
                metrics.set_leader(false);
            }
        }
    };
    if args.leader_elect {
        let cfg = leader::LeaderConfig::new(&args.lease_name, &args.lease_namespace, &identity);
        leader::run_while_leader(kube, cfg, health, shutdown.clone(), work).await?;
    } else {
        health.set_leader(true);
        work().await;
    }
    shutdown.trigger();
    let _ = server.handle.await;
    tracing::info!("stopped");
    Ok(())
}

//! `cloudsuite-cni-agent`: the CNI node agent (one per node, DaemonSet).
//! See `cni_plugin::agent` for what it does and its lease GC rule.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use cni_plugin::agent::{self, AgentConfig, Metrics};
use cni_plugin::config::Cidr;
use suite_runtime::logging::{self, LogFormat};
use suite_runtime::{Shutdown, http};

/// Command line (every flag also reads an environment variable).
#[derive(Debug, Parser)]
#[command(
    name = "cloudsuite-cni-agent",
    version,
    about = "CNI node agent: conflist, plugin install, lease GC"
)]
struct Args {
    /// This node's name (the Downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Network name in the conflist.
    #[arg(long, env = "CNI_NETWORK_NAME", default_value = "cloudsuite")]
    network_name: String,
    /// Directory of the runtime's CNI configurations.
    #[arg(long, env = "CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// Directory of the runtime's CNI plugin binaries.
    #[arg(long, env = "CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    bin_dir: PathBuf,
    /// The plugin binary to install (default: `cloudsuite-cni` next to this binary).
    #[arg(long, env = "CNI_PLUGIN_SOURCE")]
    plugin_source: Option<PathBuf>,
    /// The plugin's data directory (leases).
    #[arg(long, env = "CNI_DATA_DIR", default_value = cni_plugin::config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Pod MTU (default: the MTU of the node's default-route interface).
    #[arg(long, env = "CNI_MTU", value_parser = clap::value_parser!(u32).range(576..=65535))]
    mtu: Option<u32>,
    /// Give pod veths the GSO/GRO size limits of the node's uplink (BIG TCP
    /// when the NIC has it); `false` when pod traffic enters a tunnel.
    #[arg(long, env = "CNI_BIG_TCP", default_value_t = true, action = clap::ArgAction::Set)]
    big_tcp: bool,
    /// Masquerade pod traffic to destinations outside the non-masquerade CIDRs.
    #[arg(long, env = "CNI_IP_MASQ")]
    ip_masq: bool,
    /// Destinations reached without masquerade (VPC and cluster CIDRs); repeatable or comma-separated.
    #[arg(long = "non-masquerade-cidr", env = "CNI_NON_MASQUERADE_CIDRS", value_delimiter = ',', value_parser = parse_cidr)]
    non_masquerade: Vec<Cidr>,
    /// Seconds between reconcile passes (conflist, binary, lease GC).
    #[arg(long, env = "CNI_RESYNC_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    resync_seconds: u64,
    /// Minimum age in seconds of a lease before GC may reclaim it.
    #[arg(long, env = "CNI_GC_GRACE_SECONDS", default_value_t = 300)]
    gc_grace_seconds: u64,
    /// Address of the /healthz, /readyz and /metrics server (port: `agent::DEFAULT_METRICS_PORT`).
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9105")]
    metrics_addr: SocketAddr,
    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "json")]
    log_format: LogFormat,
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    Cidr::parse(s.trim())
}

// The suite's small runtime (two workers, capped malloc arenas): idle
// footprint, see suite_runtime::runtime.
fn main() -> ExitCode {
    suite_runtime::runtime::block_on(run())
}

async fn run() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = logging::init(args.log_format, "info,kube=warn") {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    let _ = rustls_provider();
    let plugin_source = match args.plugin_source {
        Some(p) => p,
        None => match std::env::current_exe() {
            Ok(exe) => exe.with_file_name(agent::PLUGIN_TYPE),
            Err(e) => {
                tracing::error!(error = %e, "cannot locate the plugin binary; pass --plugin-source");
                return ExitCode::FAILURE;
            }
        },
    };
    let cfg = AgentConfig {
        node_name: args.node_name,
        network_name: args.network_name,
        conf_dir: args.conf_dir,
        bin_dir: args.bin_dir,
        plugin_source,
        data_dir: args.data_dir,
        mtu: args.mtu,
        big_tcp: args.big_tcp,
        ip_masq: args.ip_masq,
        non_masquerade: args.non_masquerade,
        resync: Duration::from_secs(args.resync_seconds),
        gc_grace: Duration::from_secs(args.gc_grace_seconds),
    };
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build a Kubernetes client");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    let health = http::Health::new();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let server = match http::serve(
        args.metrics_addr,
        registry,
        health.clone(),
        shutdown.clone(),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, addr = %args.metrics_addr, "cannot serve health and metrics");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(addr = %server.addr, node = %cfg.node_name, "agent started");
    let outcome = agent::run(cfg, client, metrics, health, shutdown.clone()).await;
    shutdown.trigger();
    let _ = server.handle.await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "agent failed");
            ExitCode::FAILURE
        }
    }
}

/// kube's rustls client needs a process-wide crypto provider (ring, as in
/// the rest of the suite).
fn rustls_provider() -> Result<(), ()> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| ())
}

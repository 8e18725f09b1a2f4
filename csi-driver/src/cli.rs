//! Command-line flags and wiring: `main` only parses and calls [`run`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::controller::{ControllerConfig, ControllerService};
use crate::device::DeviceFinder;
use crate::error::{Error, Result};
use crate::identity::IdentityService;
use crate::node::{NodeConfig, NodeService};
use crate::server::{self, Services};

/// Which services this process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Identity + Controller (the Deployment).
    Controller,
    /// Identity + Node (the DaemonSet).
    Node,
    /// Everything (development, the emulator walk).
    All,
}

/// Where QingCloud VMs keep their own instance id.
pub const INSTANCE_ID_FILE: &str = "/etc/qingcloud/instance-id";

/// The CSI driver for the cloud's block disks.
#[derive(Debug, Clone, Parser)]
#[command(name = "csi-driver", version)]
pub struct Args {
    /// gRPC endpoint, `unix:///csi/csi.sock`.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,
    /// Services to serve.
    #[arg(long, value_enum, default_value = "all")]
    pub mode: Mode,
    /// IaaS client config (YAML; the emulator's credentials.yaml works).
    /// Without it the client reads QY_* environment variables.
    #[arg(long, env = "IAAS_CONFIG")]
    pub iaas_config: Option<PathBuf>,
    /// This node's instance id (node mode); default: read INSTANCE_ID_FILE.
    #[arg(long, env = "CSI_NODE_ID")]
    pub node_id: Option<String>,
    /// This node's zone (node mode); default: the client config's zone.
    #[arg(long, env = "CSI_ZONE")]
    pub zone: Option<String>,
    /// Volumes attachable to one node, reported to the scheduler.
    #[arg(long, default_value_t = 10)]
    pub max_volumes_per_node: i64,
    /// Directory of `virtio-<serial>` device links.
    #[arg(long, default_value = "/dev/disk/by-id")]
    pub by_id_dir: PathBuf,
    /// How long NodeStage waits for an attached device to appear, in seconds.
    #[arg(long, default_value_t = 30)]
    pub device_timeout_secs: u64,
    /// Disk type used when a StorageClass names none.
    #[arg(long, default_value_t = 0)]
    pub default_disk_type: i32,
    /// Prometheus metrics listen address (e.g. `0.0.0.0:9808`); off when unset.
    #[arg(long, env = "CSI_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

fn client_config(args: &Args) -> Result<iaas_client::config::Config> {
    let cfg = match &args.iaas_config {
        Some(p) => iaas_client::config::Config::from_yaml_file(p),
        None => iaas_client::config::Config::from_env(),
    };
    cfg.map_err(|e| Error::invalid("iaas_config", e.to_string()))
}

fn node_id(args: &Args) -> Result<String> {
    if let Some(id) = args.node_id.as_ref().filter(|s| !s.trim().is_empty()) {
        return Ok(id.trim().to_string());
    }
    match std::fs::read_to_string(INSTANCE_ID_FILE) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => Err(Error::invalid(
            "node_id",
            format!("set --node-id / CSI_NODE_ID, or provide {INSTANCE_ID_FILE}"),
        )),
    }
}

/// Builds the services for `args`.
pub fn services(args: &Args) -> Result<Services> {
    let wants_controller = matches!(args.mode, Mode::Controller | Mode::All);
    let wants_node = matches!(args.mode, Mode::Node | Mode::All);
    let mut zone = args.zone.clone().unwrap_or_default();
    let mut controller = None;
    let mut cloud = None;
    if wants_controller {
        let cfg = client_config(args)?;
        if zone.is_empty() {
            zone = cfg.zone.clone();
        }
        let client = iaas_client::Client::new(cfg)
            .map_err(|e| Error::invalid("iaas_config", e.to_string()))?;
        let mut ccfg = ControllerConfig::new(client.zone().to_string());
        ccfg.default_type = args.default_disk_type;
        if !ccfg.disk_types.contains_key(&ccfg.default_type) {
            return Err(Error::invalid(
                "default_disk_type",
                format!("unknown type {}", ccfg.default_type),
            ));
        }
        cloud = Some(client.clone());
        controller = Some(ControllerService::new(client, ccfg));
    }
    let node = if wants_node {
        if zone.is_empty() {
            zone = client_config(args).map(|c| c.zone).unwrap_or_default();
        }
        Some(NodeService::new(NodeConfig {
            node_id: node_id(args)?,
            zone,
            max_volumes_per_node: args.max_volumes_per_node,
            finder: DeviceFinder {
                by_id_dir: args.by_id_dir.clone(),
                timeout: Duration::from_secs(args.device_timeout_secs),
                ..Default::default()
            },
        }))
    } else {
        None
    };
    Ok(Services {
        identity: IdentityService::new(cloud),
        controller,
        node,
    })
}

/// Runs the driver until SIGTERM or SIGINT.
pub async fn run(args: Args) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let path = server::parse_endpoint(&args.endpoint)?;
    let services = services(&args)?;
    let rpc = std::sync::Arc::new(crate::metrics::RpcMetrics::new());
    if let Some(addr) = args.metrics_addr {
        let registry = crate::metrics::registry(&rpc, services.identity.cloud());
        tokio::spawn(crate::metrics::serve(addr, registry));
    }
    server::serve_with_metrics(services, &path, shutdown_signal(), rpc).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

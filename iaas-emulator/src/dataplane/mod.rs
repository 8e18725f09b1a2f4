//! The seam between the emulator's control plane (store + jobs) and the
//! machine: one driver per resource kind.
//!
//! The job engine calls a driver when a job does real work (attach a disk,
//! bring an instance's namespace up, program a route, start an LB proxy). A
//! driver call must be idempotent: after a crash the job engine replays the
//! unfinished job, and at start it calls `restore` with the persisted state.
//! Calls are synchronous and may block (they shell out or do file I/O); the
//! job engine runs them on a blocking thread.
//!
//! Without root every kind uses its `Noop` driver, and the emulator says so.

use std::fmt;
use std::sync::Arc;

use iaas_client::model::{Instance, LoadBalancer, RouterStatic, Vxnet};

pub mod disk;
pub mod lb;
pub mod network;

/// A data-plane failure; the job fails with ret_code 5000 and this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DataPlaneError(pub String);

impl DataPlaneError {
    /// Wraps any displayable error with context.
    pub fn new(context: &str, err: impl fmt::Display) -> Self {
        DataPlaneError(format!("{context}: {err}"))
    }
}

/// Result of a driver call.
pub type DpResult<T> = Result<T, DataPlaneError>;

/// A persisted attachment, replayed at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Volume id.
    pub volume_id: String,
    /// Instance id.
    pub instance_id: String,
}

/// Block disks: sparse files bound to loop devices.
pub trait VolumeDriver: Send + Sync + fmt::Debug {
    /// Creates the backing store of a new volume of `size_gb`.
    fn create(&self, volume_id: &str, size_gb: u64) -> DpResult<()>;
    /// Creates a volume as a copy of a snapshot, grown to `size_gb` if larger.
    fn create_from_snapshot(
        &self,
        snapshot_id: &str,
        volume_id: &str,
        size_gb: u64,
    ) -> DpResult<()>;
    /// Creates a volume as a copy of another (clone), grown to `size_gb` if larger.
    fn clone_volume(&self, source_volume_id: &str, volume_id: &str, size_gb: u64) -> DpResult<()>;
    /// Removes the backing store; a missing one is success.
    fn delete(&self, volume_id: &str) -> DpResult<()>;
    /// Attaches to an instance and returns the device path it shows as.
    fn attach(&self, volume_id: &str, instance_id: &str) -> DpResult<String>;
    /// Detaches; an already-detached volume is success.
    fn detach(&self, volume_id: &str, instance_id: &str) -> DpResult<()>;
    /// Grows to `size_gb`, refreshing an attached device's capacity.
    fn resize(&self, volume_id: &str, size_gb: u64) -> DpResult<()>;
    /// Copies the volume into a snapshot.
    fn snapshot(&self, volume_id: &str, snapshot_id: &str) -> DpResult<()>;
    /// Removes a snapshot's copy; a missing one is success.
    fn delete_snapshot(&self, snapshot_id: &str) -> DpResult<()>;
    /// Re-establishes attachments after a restart; returns `(volume_id, device)` pairs.
    fn restore(&self, attachments: &[Attachment]) -> DpResult<Vec<(String, String)>>;
    /// Tears everything down (emulator shutdown with cleanup requested).
    fn shutdown(&self) -> DpResult<()>;
}

/// Instances and the VPC: namespaces, a bridge, router statics as kernel routes.
pub trait NetworkDriver: Send + Sync + fmt::Debug {
    /// Brings an instance's network up on its vxnet (idempotent).
    fn instance_up(&self, instance: &Instance, vxnet: &Vxnet) -> DpResult<()>;
    /// Removes an instance's network (idempotent).
    fn instance_down(&self, instance_id: &str) -> DpResult<()>;
    /// Makes the router's applied statics the complete set of its routes.
    fn apply_router_statics(&self, router_id: &str, statics: &[RouterStatic]) -> DpResult<()>;
    /// Tears everything down.
    fn shutdown(&self) -> DpResult<()>;
}

/// A backend resolved to an address the proxy can dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedBackend {
    /// Backend id.
    pub backend_id: String,
    /// Address to dial (instance private IP, or the resource id itself when it is an IP).
    pub address: String,
    /// Port.
    pub port: u16,
    /// Weight.
    pub weight: u32,
    /// L7 policy id, if any.
    pub policy_id: String,
}

/// Everything a proxy needs to serve one load balancer.
#[derive(Debug, Clone)]
pub struct LbSpec {
    /// The LB with its listeners (backends inside listeners).
    pub lb: LoadBalancer,
    /// Addresses to bind (EIP addresses or private IPs).
    pub bind_addresses: Vec<String>,
    /// Backends per listener id, resolved.
    pub backends: Vec<(String, Vec<ResolvedBackend>)>,
    /// Policies with their rules.
    pub policies: Vec<iaas_client::model::LoadBalancerPolicy>,
    /// `(certificate id, PEM chain, PEM key)` for https listeners.
    pub certificates: Vec<(String, String, String)>,
    /// Allowed source CIDRs (empty: all).
    pub source_cidrs: Vec<String>,
    /// The VPC router serving the LB (its vxnet's router, or the zone's VPC
    /// router for public LBs): with the network data plane, the proxy's
    /// sockets live in that router's namespace, where backends are routable.
    pub router_id: String,
}

/// The EIP pool to use when the network data plane is active: a range
/// reserved for benchmarking (RFC 2544), never routed on the internet. The
/// VPC namespace answers for it; client namespaces reach it through a veth.
pub const PUBLIC_EIP_POOL: &str = "198.18.0.0/24";

/// Load-balancer proxies.
pub trait LbDriver: Send + Sync + fmt::Debug {
    /// Makes the proxy for this LB match the spec (start, update, keep unchanged listeners).
    fn apply(&self, spec: &LbSpec) -> DpResult<()>;
    /// Stops the LB's proxy (idempotent).
    fn delete(&self, loadbalancer_id: &str) -> DpResult<()>;
    /// Health of each backend id, as the proxy last probed it: `up` / `down`.
    fn backend_health(&self, loadbalancer_id: &str) -> Vec<(String, String)>;
    /// Tears everything down.
    fn shutdown(&self) -> DpResult<()>;
}

/// The drivers the emulator runs with.
#[derive(Debug, Clone)]
pub struct DataPlane {
    /// Disks.
    pub volumes: Arc<dyn VolumeDriver>,
    /// Instances and routes.
    pub network: Arc<dyn NetworkDriver>,
    /// Load balancers.
    pub lbs: Arc<dyn LbDriver>,
}

impl DataPlane {
    /// A data plane that does nothing (not root, or a control-plane-only test).
    pub fn noop() -> Self {
        DataPlane {
            volumes: Arc::new(Noop),
            network: Arc::new(Noop),
            lbs: Arc::new(Noop),
        }
    }
}

/// The do-nothing driver for every kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Noop;

impl VolumeDriver for Noop {
    fn create(&self, _: &str, _: u64) -> DpResult<()> {
        Ok(())
    }
    fn create_from_snapshot(&self, _: &str, _: &str, _: u64) -> DpResult<()> {
        Ok(())
    }
    fn clone_volume(&self, _: &str, _: &str, _: u64) -> DpResult<()> {
        Ok(())
    }
    fn delete(&self, _: &str) -> DpResult<()> {
        Ok(())
    }
    fn attach(&self, volume_id: &str, _: &str) -> DpResult<String> {
        // What a real cloud reports; there is no such device on this machine.
        Ok(format!("/dev/disk/by-id/virtio-{volume_id}"))
    }
    fn detach(&self, _: &str, _: &str) -> DpResult<()> {
        Ok(())
    }
    fn resize(&self, _: &str, _: u64) -> DpResult<()> {
        Ok(())
    }
    fn snapshot(&self, _: &str, _: &str) -> DpResult<()> {
        Ok(())
    }
    fn delete_snapshot(&self, _: &str) -> DpResult<()> {
        Ok(())
    }
    fn restore(&self, attachments: &[Attachment]) -> DpResult<Vec<(String, String)>> {
        attachments
            .iter()
            .map(|a| {
                Ok((
                    a.volume_id.clone(),
                    self.attach(&a.volume_id, &a.instance_id)?,
                ))
            })
            .collect()
    }
    fn shutdown(&self) -> DpResult<()> {
        Ok(())
    }
}

impl NetworkDriver for Noop {
    fn instance_up(&self, _: &Instance, _: &Vxnet) -> DpResult<()> {
        Ok(())
    }
    fn instance_down(&self, _: &str) -> DpResult<()> {
        Ok(())
    }
    fn apply_router_statics(&self, _: &str, _: &[RouterStatic]) -> DpResult<()> {
        Ok(())
    }
    fn shutdown(&self) -> DpResult<()> {
        Ok(())
    }
}

impl LbDriver for Noop {
    fn apply(&self, _: &LbSpec) -> DpResult<()> {
        Ok(())
    }
    fn delete(&self, _: &str) -> DpResult<()> {
        Ok(())
    }
    fn backend_health(&self, _: &str) -> Vec<(String, String)> {
        Vec::new()
    }
    fn shutdown(&self) -> DpResult<()> {
        Ok(())
    }
}

impl DataPlane {
    /// The drivers this machine supports: real ones as root, `Noop` otherwise.
    /// Returns the drivers and one human line per kind saying which is in use.
    pub fn detect(data_dir: &std::path::Path) -> (Self, Vec<String>) {
        Self::detect_with(data_dir, network::NIC_GSO_MAX_SIZE)
    }

    /// [`DataPlane::detect`] with instance NICs advertising
    /// `nic_gso_max_size` bytes of GSO/GRO (`EmulatorConfig::nic_gso_max_size`).
    pub fn detect_with(data_dir: &std::path::Path, nic_gso_max_size: u32) -> (Self, Vec<String>) {
        let mut plane = DataPlane::noop();
        let volumes_line = if disk::supported() {
            match disk::LoopVolumeDriver::new(data_dir) {
                Ok(driver) => {
                    plane.volumes = Arc::new(driver);
                    "volumes: sparse files on loop devices, linked in /dev/disk/by-id".to_string()
                }
                Err(e) => format!("volumes: control plane only (loop driver unavailable: {e})"),
            }
        } else {
            "volumes: control plane only (loop devices need root and losetup)".to_string()
        };
        let network_line = if network::supported() {
            match network::NamespaceNetworkDriver::for_data_dir(data_dir) {
                Ok(driver) => {
                    let driver = driver.with_nic_gso_max_size(nic_gso_max_size);
                    let big = if nic_gso_max_size > 65_536 {
                        " (BIG TCP)"
                    } else {
                        ""
                    };
                    let line = format!(
                        "network: instances as network namespaces {}-<id> on VPC bridges; NICs take {} KiB segments{big}",
                        driver.prefix(),
                        nic_gso_max_size / 1024
                    );
                    plane.network = Arc::new(driver);
                    line
                }
                Err(e) => {
                    format!("network: control plane only (namespace driver unavailable: {e})")
                }
            }
        } else {
            "network: control plane only (namespaces need root and ip)".to_string()
        };
        // Proxies need no privilege: without root the EIP pool is on loopback.
        // Private LB addresses exist only when the network data plane builds
        // the VPC; until then listeners on them are skipped, not failed.
        // With the network plane the proxies run inside the VPC router's
        // namespace, where instance and pod addresses are routable.
        let mut lb_options = lb::ProxyOptions {
            skip_unassigned_addresses: true,
            ..lb::ProxyOptions::default()
        };
        if network::supported() {
            let prefix = network::default_prefix(data_dir);
            lb_options.netns_for = Some(Arc::new(move |spec: &LbSpec| {
                (!spec.router_id.is_empty()).then(|| {
                    std::path::Path::new(network::NETNS_DIR)
                        .join(format!("{prefix}-{}", spec.router_id))
                })
            }));
        }
        let lbs_line = match lb::ProxyLbDriver::new(lb_options) {
            Ok(driver) => {
                plane.lbs = Arc::new(driver);
                "load balancers: tcp/udp/http/https proxies on the LB addresses".to_string()
            }
            Err(e) => format!("load balancers: control plane only (proxy unavailable: {e})"),
        };
        (plane, vec![volumes_line, network_line, lbs_line])
    }
}

//! Test harness: an in-process emulator with real loop devices, the driver
//! serving on a real unix socket, and gRPC clients connected through it.
//!
//! Everything a test creates lives under one temporary directory: the
//! emulator's data (volume files), the `virtio-*` link directory, the socket,
//! staging and target paths. Dropping the harness (also when a test panics)
//! unmounts everything mounted under that directory, releases every loop
//! device backed by a file in it, then removes it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use csi_driver::controller::{ControllerConfig, ControllerService};
use csi_driver::csi;
use csi_driver::csi::controller_client::ControllerClient;
use csi_driver::csi::identity_client::IdentityClient;
use csi_driver::csi::node_client::NodeClient;
use csi_driver::device::DeviceFinder;
use csi_driver::identity::IdentityService;
use csi_driver::node::{NodeConfig, NodeService};
use csi_driver::server::Services;
use iaas_emulator::dataplane::VolumeDriver;
use iaas_emulator::dataplane::disk::LoopVolumeDriver;
use iaas_emulator::{DataPlane, Emulator, EmulatorConfig};
use tonic::transport::Channel;

pub const GIB: i64 = 1 << 30;

/// Options for a harness.
#[derive(Debug, Clone)]
pub struct Options {
    /// Volumes one instance may hold.
    pub attach_limit: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options { attach_limit: 10 }
    }
}

/// One emulator + driver + clients.
pub struct Harness {
    pub root: PathBuf,
    pub emulator: Option<Emulator>,
    pub cloud: iaas_client::Client,
    pub identity: IdentityClient<Channel>,
    pub controller: ControllerClient<Channel>,
    /// Node clients: one per instance, each its own node service and socket.
    pub nodes: Vec<(String, NodeClient<Channel>)>,
    disks: Arc<LoopVolumeDriver>,
    shutdowns: Vec<tokio::sync::oneshot::Sender<()>>,
    dir: tempfile::TempDir,
}

async fn connect(path: PathBuf) -> Channel {
    // The URI is required by the API but unused: the connector dials the socket.
    tonic::transport::Endpoint::try_from("http://localhost")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: tonic::codegen::http::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .expect("connect to the driver socket")
}

async fn wait_for_socket(path: &Path) {
    for _ in 0..200 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("socket {} never appeared", path.display());
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Harness {
        let _ = rustls::crypto::ring::default_provider().install_default();
        assert!(
            iaas_emulator::dataplane::disk::supported(),
            "the CSI conformance tests need root and losetup"
        );
        let dir = tempfile::Builder::new()
            .prefix("csi-conf-")
            .tempdir()
            .expect("temp dir");
        let root = std::fs::canonicalize(dir.path()).expect("canonical temp dir");
        let by_id = root.join("by-id");
        let data = root.join("emu");
        let disks = Arc::new(LoopVolumeDriver::with_by_id_dir(&data, &by_id).expect("loop driver"));
        let mut plane = DataPlane::noop();
        plane.volumes = disks.clone();
        let emulator = Emulator::start(EmulatorConfig {
            attach_limit: opts.attach_limit,
            data_plane: plane,
            ..EmulatorConfig::for_tests(&data)
        })
        .await
        .expect("emulator");
        let cfg = iaas_client::config::Config::from_credentials_file(emulator.credentials_file())
            .expect("client config");
        let cloud = iaas_client::Client::new(cfg).expect("client");
        let zone = emulator.zone().to_string();
        let instances = cloud
            .describe_instances_all(&Default::default())
            .await
            .expect("instances");
        assert!(
            instances.len() >= 2,
            "the emulator seeds at least two instances"
        );

        let mut shutdowns = Vec::new();
        // The controller plugin.
        let ctrl_sock = root.join("controller.sock");
        let services = Services {
            identity: IdentityService::new(Some(cloud.clone())),
            controller: Some(ControllerService::new(
                cloud.clone(),
                ControllerConfig::new(zone.clone()),
            )),
            node: None,
        };
        shutdowns.push(spawn_server(services, ctrl_sock.clone()));
        // One node plugin per instance, as on a real cluster.
        let mut node_socks = Vec::new();
        for inst in instances.iter().take(2) {
            let sock = root.join(format!("node-{}.sock", inst.instance_id));
            let services = Services {
                identity: IdentityService::new(None),
                controller: None,
                node: Some(NodeService::new(NodeConfig {
                    node_id: inst.instance_id.clone(),
                    zone: zone.clone(),
                    max_volumes_per_node: opts.attach_limit as i64,
                    finder: DeviceFinder {
                        by_id_dir: by_id.clone(),
                        timeout: Duration::from_secs(5),
                        ..Default::default()
                    },
                })),
            };
            shutdowns.push(spawn_server(services, sock.clone()));
            node_socks.push((inst.instance_id.clone(), sock));
        }
        wait_for_socket(&ctrl_sock).await;
        let channel = connect(ctrl_sock).await;
        let mut nodes = Vec::new();
        for (id, sock) in node_socks {
            wait_for_socket(&sock).await;
            nodes.push((id, NodeClient::new(connect(sock).await)));
        }
        Harness {
            root,
            emulator: Some(emulator),
            cloud,
            identity: IdentityClient::new(channel.clone()),
            controller: ControllerClient::new(channel),
            nodes,
            disks,
            shutdowns,
            dir,
        }
    }

    /// Node id (instance id) of node `n`.
    pub fn node_id(&self, n: usize) -> String {
        self.nodes[n].0.clone()
    }

    /// The node client of node `n`.
    pub fn node(&self, n: usize) -> NodeClient<Channel> {
        self.nodes[n].1.clone()
    }

    /// A fresh path under the harness root (not created).
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// A staging directory (created, as the CO does).
    pub fn staging(&self, name: &str) -> PathBuf {
        let p = self.root.join("staging").join(name);
        std::fs::create_dir_all(&p).expect("staging dir");
        p
    }

    /// A target path whose parent exists (the CO creates the parent only).
    pub fn target(&self, name: &str) -> PathBuf {
        let parent = self.root.join("pods").join(name);
        std::fs::create_dir_all(&parent).expect("pod dir");
        parent.join("mount")
    }

    /// The loop device file of a volume, resolved through its by-id link.
    pub fn device_of(&self, volume_id: &str) -> PathBuf {
        std::fs::canonicalize(self.disks.by_id_link(volume_id)).expect("device link")
    }

    /// The backing file of a volume.
    pub fn volume_file(&self, volume_id: &str) -> PathBuf {
        self.disks.volume_path(volume_id)
    }
}

fn spawn_server(services: Services, sock: PathBuf) -> tokio::sync::oneshot::Sender<()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        csi_driver::server::serve(services, &sock, async {
            let _ = rx.await;
        })
        .await
        .expect("serve");
    });
    tx
}

impl Drop for Harness {
    fn drop(&mut self) {
        for tx in self.shutdowns.drain(..) {
            let _ = tx.send(());
        }
        // Unmount deepest first so stacked and nested mounts all go.
        let mut mounts: Vec<PathBuf> = csi_driver::mount::mounts()
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(&self.root))
            .collect();
        mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for m in mounts {
            if Command::new("umount")
                .arg(&m)
                .status()
                .map(|s| !s.success())
                .unwrap_or(true)
            {
                let _ = Command::new("umount").arg("-l").arg(&m).status();
            }
        }
        let _ = self.disks.shutdown();
        for dev in iaas_emulator::dataplane::disk::loop_devices().unwrap_or_default() {
            if dev.backing_file.starts_with(&self.root) {
                let _ = Command::new("losetup").arg("-d").arg(dev.path()).status();
            }
        }
        // The emulator's tasks end with the test's runtime; the TempDir
        // removes the files when it drops after this.
        drop(self.emulator.take());
    }
}

// ---- request builders ----

pub fn mount_cap(fs_type: &str) -> csi::VolumeCapability {
    use csi::volume_capability::*;
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: fs_type.to_string(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode {
            mode: access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

pub fn block_cap() -> csi::VolumeCapability {
    use csi::volume_capability::*;
    csi::VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

pub fn create_req(name: &str, gib: i64, cap: csi::VolumeCapability) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: gib * GIB,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap],
        ..Default::default()
    }
}

/// A unique name for this test run.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// `blkid -p -s TYPE -s UUID -o export` of a device, as a string.
pub fn fs_identity(dev: &Path) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export", "-s", "TYPE", "-s", "UUID"])
        .arg(dev)
        .output()
        .expect("blkid");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("TYPE=") || l.starts_with("UUID="))
        .collect::<Vec<_>>()
        .join(",")
}

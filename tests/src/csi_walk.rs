//! The walk's CSI part: the `csi-driver` binary runs as deployed (controller
//! and node services on a unix socket) and the walk plays the container
//! orchestrator (what external-provisioner, external-attacher, kubelet,
//! external-resizer and external-snapshotter send): provision, attach,
//! format, mount, write, expand online, snapshot, restore, tear down.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use csi_driver::csi;
use csi_driver::csi::controller_client::ControllerClient;
use csi_driver::csi::identity_client::IdentityClient;
use csi_driver::csi::node_client::NodeClient;
use tonic::transport::Channel;

use crate::walk::Walk;

const GIB: i64 = 1 << 30;

/// The driver process; killed on drop.
#[derive(Debug)]
struct Driver {
    child: Child,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Volumes and paths the walk made, for teardown.
#[derive(Debug, Default)]
struct State {
    volumes: Vec<String>,
    snapshots: Vec<String>,
    /// (volume, staging, target) currently staged and published.
    mounted: Vec<(String, PathBuf, PathBuf)>,
    /// (volume, node) currently attached.
    attached: Vec<(String, String)>,
    checksum: u64,
}

/// Inputs of the CSI part.
#[derive(Debug)]
pub struct CsiWalk {
    /// The `csi-driver` binary.
    pub driver: PathBuf,
    /// The emulator's credentials file (the driver's `--iaas-config`).
    pub iaas_config: PathBuf,
    /// The instance the node service runs on.
    pub node_id: String,
    /// Scratch dir for the socket, staging and target paths.
    pub scratch: PathBuf,
}

struct Clients {
    identity: IdentityClient<Channel>,
    controller: ControllerClient<Channel>,
    node: NodeClient<Channel>,
}

fn mount_capability(fs: &str) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(csi::volume_capability::AccessType::Mount(
            csi::volume_capability::MountVolume {
                fs_type: fs.to_string(),
                ..Default::default()
            },
        )),
        access_mode: Some(csi::volume_capability::AccessMode {
            mode: csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

impl CsiWalk {
    /// Runs the CSI steps; returns whether all passed.
    pub async fn run(&self, walk: &mut Walk) -> bool {
        walk.section("CSI: block disks through the driver's gRPC socket");
        let mut st = State::default();
        let started = self.start().await;
        let (driver, mut c) = match started {
            Ok(v) => v,
            Err(e) => {
                walk.step(
                    "start csi-driver (controller + node) on a unix socket",
                    async { Err::<String, _>(e) },
                )
                .await;
                return false;
            }
        };
        walk.step(
            "start csi-driver (controller + node) on a unix socket",
            identity(&mut c),
        )
        .await;
        let ok = walk
            .step(
                "CreateVolume 10 GiB xfs (provision)",
                self.create(&mut c, &mut st),
            )
            .await
            && walk
                .step(
                    "ControllerPublish (attach to the node's instance)",
                    self.publish(&mut c, &mut st, 0),
                )
                .await
            && walk
                .step(
                    "NodeStage (find device, format, mount) + NodePublish",
                    self.stage(&mut c, &mut st, 0, "pvc"),
                )
                .await
            && walk
                .step("write 8 MiB through the mount", write(&mut st))
                .await
            && walk
                .step(
                    "expand online to 20 GiB (controller + node)",
                    self.expand(&mut c, &st),
                )
                .await
            && walk
                .step(
                    "CreateSnapshot, ready to use",
                    self.snapshot(&mut c, &mut st),
                )
                .await
            && walk
                .step(
                    "restore the snapshot into a new volume, attach, mount",
                    self.restore(&mut c, &mut st),
                )
                .await
            && walk
                .step("restored data equals the source", verify(&st))
                .await;
        let _ = ok;
        walk.step(
            "tear down: unpublish, unstage, detach, delete volumes and snapshot",
            self.teardown(&mut c, &mut st),
        )
        .await;
        drop(driver);
        walk.all_passed()
    }

    async fn start(&self) -> anyhow::Result<(Driver, Clients)> {
        std::fs::create_dir_all(&self.scratch)?;
        let sock = self.scratch.join("csi.sock");
        let child = Command::new(&self.driver)
            .arg("--mode")
            .arg("all")
            .arg("--endpoint")
            .arg(format!("unix://{}", sock.display()))
            .arg("--iaas-config")
            .arg(&self.iaas_config)
            .arg("--node-id")
            .arg(&self.node_id)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.driver.display()))?;
        let driver = Driver { child };
        for _ in 0..500 {
            if sock.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ensure!(
            sock.exists(),
            "driver socket {} never appeared",
            sock.display()
        );
        let channel = connect(sock).await?;
        Ok((
            driver,
            Clients {
                identity: IdentityClient::new(channel.clone()),
                controller: ControllerClient::new(channel.clone()),
                node: NodeClient::new(channel),
            },
        ))
    }

    async fn create(&self, c: &mut Clients, st: &mut State) -> anyhow::Result<String> {
        let req = csi::CreateVolumeRequest {
            name: format!("walk-pvc-{}", std::process::id()),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 10 * GIB,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![mount_capability("xfs")],
            parameters: HashMap::from([("type".to_string(), "0".to_string())]),
            ..Default::default()
        };
        let vol = c
            .controller
            .create_volume(req.clone())
            .await?
            .into_inner()
            .volume
            .context("no volume")?;
        st.volumes.push(vol.volume_id.clone());
        // Idempotent by name: the same request returns the same volume.
        let again = c
            .controller
            .create_volume(req)
            .await?
            .into_inner()
            .volume
            .context("no volume")?;
        ensure!(
            again.volume_id == vol.volume_id,
            "CreateVolume is not idempotent: {} vs {}",
            again.volume_id,
            vol.volume_id
        );
        Ok(format!(
            "{} ({} GiB), idempotent by name",
            vol.volume_id,
            vol.capacity_bytes / GIB
        ))
    }

    async fn publish(
        &self,
        c: &mut Clients,
        st: &mut State,
        index: usize,
    ) -> anyhow::Result<String> {
        let volume_id = st.volumes[index].clone();
        let resp = c
            .controller
            .controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: volume_id.clone(),
                node_id: self.node_id.clone(),
                volume_capability: Some(mount_capability("xfs")),
                ..Default::default()
            })
            .await?
            .into_inner();
        st.attached.push((volume_id.clone(), self.node_id.clone()));
        Ok(format!(
            "{volume_id} on {}: {:?}",
            self.node_id, resp.publish_context
        ))
    }

    async fn stage(
        &self,
        c: &mut Clients,
        st: &mut State,
        index: usize,
        tag: &str,
    ) -> anyhow::Result<String> {
        let volume_id = st.volumes[index].clone();
        let staging = self.scratch.join(format!("staging-{tag}"));
        let target_parent = self.scratch.join(format!("pods-{tag}"));
        std::fs::create_dir_all(&staging)?;
        std::fs::create_dir_all(&target_parent)?;
        let target = target_parent.join("mount");
        c.node
            .node_stage_volume(csi::NodeStageVolumeRequest {
                volume_id: volume_id.clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(mount_capability("xfs")),
                ..Default::default()
            })
            .await?;
        c.node
            .node_publish_volume(csi::NodePublishVolumeRequest {
                volume_id: volume_id.clone(),
                staging_target_path: staging.display().to_string(),
                target_path: target.display().to_string(),
                volume_capability: Some(mount_capability("xfs")),
                ..Default::default()
            })
            .await?;
        st.mounted
            .push((volume_id.clone(), staging, target.clone()));
        let fs = findmnt_fstype(&target)?;
        ensure!(
            fs == "xfs",
            "{} is mounted as {fs:?}, expected xfs",
            target.display()
        );
        Ok(format!(
            "{volume_id} formatted xfs, published at {}",
            target.display()
        ))
    }

    async fn expand(&self, c: &mut Clients, st: &State) -> anyhow::Result<String> {
        let (volume_id, staging, target) = st.mounted.first().context("nothing mounted")?.clone();
        let resp = c
            .controller
            .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: volume_id.clone(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: 20 * GIB,
                    limit_bytes: 0,
                }),
                volume_capability: Some(mount_capability("xfs")),
                ..Default::default()
            })
            .await?
            .into_inner();
        ensure!(
            resp.node_expansion_required,
            "a filesystem volume needs node expansion"
        );
        c.node
            .node_expand_volume(csi::NodeExpandVolumeRequest {
                volume_id: volume_id.clone(),
                volume_path: target.display().to_string(),
                staging_target_path: staging.display().to_string(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: 20 * GIB,
                    limit_bytes: 0,
                }),
                volume_capability: Some(mount_capability("xfs")),
                ..Default::default()
            })
            .await?;
        let stats = c
            .node
            .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: volume_id.clone(),
                volume_path: target.display().to_string(),
                staging_target_path: staging.display().to_string(),
            })
            .await?
            .into_inner();
        let total = stats
            .usage
            .iter()
            .find(|u| u.unit == csi::volume_usage::Unit::Bytes as i32)
            .map(|u| u.total)
            .unwrap_or(0);
        ensure!(
            total > 19 * GIB,
            "filesystem is {total} bytes after expanding to 20 GiB"
        );
        ensure!(
            file_checksum(&target.join("data.bin"))? == st.checksum,
            "data changed while expanding"
        );
        Ok(format!(
            "{volume_id}: filesystem {:.1} GiB, data intact",
            total as f64 / GIB as f64
        ))
    }

    async fn snapshot(&self, c: &mut Clients, st: &mut State) -> anyhow::Result<String> {
        let source = st.volumes.first().context("no volume")?.clone();
        let (_, _, target) = st.mounted.first().context("nothing mounted")?.clone();
        // Quiesce: what the application wrote must be on the disk, as a
        // filesystem freeze hook would ensure before a cloud snapshot.
        let _ = Command::new("sync").arg("-f").arg(&target).status();
        let snap = c
            .controller
            .create_snapshot(csi::CreateSnapshotRequest {
                source_volume_id: source.clone(),
                name: format!("walk-snap-{}", std::process::id()),
                ..Default::default()
            })
            .await?
            .into_inner()
            .snapshot
            .context("no snapshot")?;
        st.snapshots.push(snap.snapshot_id.clone());
        let mut ready = snap.ready_to_use;
        for _ in 0..100 {
            if ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let list = c
                .controller
                .list_snapshots(csi::ListSnapshotsRequest {
                    snapshot_id: snap.snapshot_id.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            ready = list
                .entries
                .iter()
                .any(|e| e.snapshot.as_ref().is_some_and(|s| s.ready_to_use));
        }
        ensure!(ready, "snapshot {} never became ready", snap.snapshot_id);
        Ok(format!(
            "{} of {source}, {} GiB",
            snap.snapshot_id,
            snap.size_bytes / GIB
        ))
    }

    async fn restore(&self, c: &mut Clients, st: &mut State) -> anyhow::Result<String> {
        let snapshot_id = st.snapshots.first().context("no snapshot")?.clone();
        let vol = c
            .controller
            .create_volume(csi::CreateVolumeRequest {
                name: format!("walk-restored-{}", std::process::id()),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: 20 * GIB,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![mount_capability("xfs")],
                volume_content_source: Some(csi::VolumeContentSource {
                    r#type: Some(csi::volume_content_source::Type::Snapshot(
                        csi::volume_content_source::SnapshotSource {
                            snapshot_id: snapshot_id.clone(),
                        },
                    )),
                }),
                ..Default::default()
            })
            .await?
            .into_inner()
            .volume
            .context("no volume")?;
        st.volumes.push(vol.volume_id.clone());
        let index = st.volumes.len() - 1;
        self.publish(c, st, index).await?;
        self.stage(c, st, index, "restored").await?;
        Ok(format!("{} from {snapshot_id}", vol.volume_id))
    }

    async fn teardown(&self, c: &mut Clients, st: &mut State) -> anyhow::Result<String> {
        let mut errors = Vec::new();
        for (volume_id, staging, target) in st.mounted.drain(..) {
            if let Err(e) = c
                .node
                .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                    volume_id: volume_id.clone(),
                    target_path: target.display().to_string(),
                })
                .await
            {
                errors.push(format!("unpublish {volume_id}: {e}"));
            }
            if let Err(e) = c
                .node
                .node_unstage_volume(csi::NodeUnstageVolumeRequest {
                    volume_id: volume_id.clone(),
                    staging_target_path: staging.display().to_string(),
                })
                .await
            {
                errors.push(format!("unstage {volume_id}: {e}"));
            }
        }
        for (volume_id, node_id) in st.attached.drain(..) {
            if let Err(e) = c
                .controller
                .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
                    volume_id: volume_id.clone(),
                    node_id,
                    ..Default::default()
                })
                .await
            {
                errors.push(format!("detach {volume_id}: {e}"));
            }
        }
        for snapshot_id in st.snapshots.drain(..) {
            if let Err(e) = c
                .controller
                .delete_snapshot(csi::DeleteSnapshotRequest {
                    snapshot_id: snapshot_id.clone(),
                    ..Default::default()
                })
                .await
            {
                errors.push(format!("delete {snapshot_id}: {e}"));
            }
        }
        let n = st.volumes.len();
        for volume_id in st.volumes.drain(..) {
            if let Err(e) = c
                .controller
                .delete_volume(csi::DeleteVolumeRequest {
                    volume_id: volume_id.clone(),
                    ..Default::default()
                })
                .await
            {
                errors.push(format!("delete {volume_id}: {e}"));
            }
        }
        ensure!(errors.is_empty(), "{}", errors.join("; "));
        let leftover = Command::new("findmnt")
            .arg("-rn")
            .arg("-o")
            .arg("TARGET")
            .output()?;
        let scratch = self.scratch.display().to_string();
        let still: Vec<String> = String::from_utf8_lossy(&leftover.stdout)
            .lines()
            .filter(|l| l.starts_with(&scratch))
            .map(String::from)
            .collect();
        ensure!(still.is_empty(), "mounts left behind: {still:?}");
        Ok(format!("{n} volumes and 1 snapshot deleted, no mount left"))
    }
}

async fn identity(c: &mut Clients) -> anyhow::Result<String> {
    let info = c
        .identity
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await?
        .into_inner();
    let probe = c.identity.probe(csi::ProbeRequest {}).await?.into_inner();
    ensure!(probe.ready != Some(false), "driver not ready");
    Ok(format!(
        "{} {}; Probe ready",
        info.name, info.vendor_version
    ))
}

async fn write(st: &mut State) -> anyhow::Result<String> {
    let (_, _, target) = st.mounted.first().context("nothing mounted")?.clone();
    let mut data = vec![0u8; 8 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let path = target.join("data.bin");
    std::fs::write(&path, &data)?;
    std::fs::File::open(&path)?.sync_all()?;
    st.checksum = checksum(&data);
    Ok(format!("data.bin, checksum {:016x}", st.checksum))
}

async fn verify(st: &State) -> anyhow::Result<String> {
    let (_, _, target) = st
        .mounted
        .last()
        .context("restored volume not mounted")?
        .clone();
    let got = file_checksum(&target.join("data.bin"))?;
    ensure!(
        got == st.checksum,
        "restored checksum {got:016x} != source {:016x}",
        st.checksum
    );
    Ok(format!("checksum {got:016x} matches"))
}

fn checksum(data: &[u8]) -> u64 {
    // FNV-1a: enough to detect any difference in a walk.
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn file_checksum(path: &Path) -> anyhow::Result<u64> {
    Ok(checksum(
        &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    ))
}

fn findmnt_fstype(target: &Path) -> anyhow::Result<String> {
    let out = Command::new("findmnt")
        .arg("-rn")
        .arg("-o")
        .arg("FSTYPE")
        .arg(target)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

async fn connect(path: PathBuf) -> anyhow::Result<Channel> {
    // The URI is required by the API but unused: the connector dials the socket.
    Ok(tonic::transport::Endpoint::try_from("http://localhost")?
        .connect_with_connector(tower::service_fn(move |_: tonic::codegen::http::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await?)
}

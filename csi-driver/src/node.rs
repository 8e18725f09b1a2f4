//! The CSI Node service: find the attached device, format it safely, mount
//! it, bind it into pods, grow it, report on it.
//!
//! Mount work shells out and blocks, so it runs on the blocking pool; the
//! per-volume guard is held across it so a retried call cannot race it.

use std::collections::HashMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use tonic::{Request, Response, Status};

use crate::csi::node_server::Node;
use crate::csi::{self, node_service_capability, volume_usage};
use crate::device::{self, DeviceFinder};
use crate::error::{Error, Result};
use crate::format::{self, Content};
use crate::inflight::InFlight;
use crate::mount::{self, MountEntry};
use crate::validate::{self, Access, Capability};

/// Topology key carrying the zone.
pub const TOPOLOGY_ZONE_KEY: &str = "topology.disk.csi.cloudsuite.io/zone";

/// The publish-context key under which the controller passes the device.
pub const PUBLISH_DEVICE_KEY: &str = "device";

/// What a node plugin needs to know about its node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The cloud instance id of this node.
    pub node_id: String,
    /// The zone the instance runs in.
    pub zone: String,
    /// How many volumes can attach to this instance (0: no limit reported).
    pub max_volumes_per_node: i64,
    /// Where devices are looked for.
    pub finder: DeviceFinder,
}

/// The Node service.
#[derive(Debug, Clone)]
pub struct NodeService {
    cfg: NodeConfig,
    inflight: InFlight,
}

impl NodeService {
    /// A node service for this node.
    pub fn new(cfg: NodeConfig) -> Self {
        NodeService {
            cfg,
            inflight: InFlight::default(),
        }
    }

    async fn find_device(
        &self,
        volume_id: &str,
        publish_context: &HashMap<String, String>,
    ) -> Result<PathBuf> {
        self.cfg
            .finder
            .wait(
                volume_id,
                publish_context.get(PUBLISH_DEVICE_KEY).map(String::as_str),
            )
            .await
    }
}

/// Runs blocking node work off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal("node task", e))?
}

/// The device node behind a mount's `major:minor`, via `/sys/dev/block`.
fn device_of_mount(m: &MountEntry) -> Result<PathBuf> {
    let link = PathBuf::from(format!("/sys/dev/block/{}:{}", m.major, m.minor));
    let target = std::fs::read_link(&link).map_err(|e| {
        Error::internal(
            format!(
                "{} is not a block device mount ({})",
                m.mount_point.display(),
                link.display()
            ),
            e,
        )
    })?;
    let name = target
        .file_name()
        .ok_or_else(|| Error::Internal(format!("odd sysfs link {}", target.display())))?;
    Ok(Path::new("/dev").join(name))
}

/// Names the step at which [`crash_point`] stops the driver. Test-only.
pub const CRASH_POINT_ENV: &str = "CLOUDSUITE_CSI_TEST_CRASH_POINT";

/// A test-only crash point (crash-safety tests SIGKILL the node plugin at a
/// known step). When [`CRASH_POINT_ENV`] equals `step`, the process stops
/// itself with SIGSTOP there; the test sees the stopped state and kills it.
/// Steps: `stage-after-format` (the device was formatted if it was empty,
/// nothing is mounted), `stage-after-mount` (mounted at the staging path,
/// the call not yet answered), `publish-before-bind` (the target directory
/// exists, nothing is bound onto it). Harmless in production: nothing sets
/// the variable, and checking it is one environment lookup.
pub fn crash_point(step: &str) {
    if std::env::var_os(CRASH_POINT_ENV).is_some_and(|v| v == step) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
    }
}

/// Stages a filesystem volume: safe format, then mount at `staging`.
fn stage_mount(
    device: &Path,
    staging: &Path,
    fs_type: &str,
    flags: &[String],
    read_only: bool,
) -> Result<()> {
    std::fs::create_dir_all(staging)
        .map_err(|e| Error::internal(format!("create {}", staging.display()), e))?;
    let (major, minor) = device::device_number(device)?;
    if let Some(m) = mount::find_by_target(staging)? {
        // Already staged: fine if it is this device the same way.
        if (m.major, m.minor) != (major, minor) {
            return Err(Error::AlreadyExists(format!(
                "{} is already staged from another device ({}:{})",
                staging.display(),
                m.major,
                m.minor
            )));
        }
        if !fs_type.is_empty() && m.fs_type != fs_type {
            return Err(Error::AlreadyExists(format!(
                "{} is staged as {}, not {fs_type}",
                staging.display(),
                m.fs_type
            )));
        }
        if m.read_only() != read_only {
            return Err(Error::AlreadyExists(format!(
                "{} is staged {}",
                staging.display(),
                if m.read_only() {
                    "read-only"
                } else {
                    "read-write"
                }
            )));
        }
        return Ok(());
    }
    let wanted = if fs_type.is_empty() {
        format::DEFAULT_FS
    } else {
        fs_type
    };
    if read_only {
        // Never write a filesystem onto a volume asked for read-only.
        if format::probe(device)? == Content::Empty {
            return Err(Error::FailedPrecondition(format!(
                "{} has no filesystem and the volume is read-only",
                device.display()
            )));
        }
    } else if format::format_if_empty(device, wanted)? {
        tracing::info!(device = %device.display(), fs = wanted, "formatted empty device");
    }
    crash_point("stage-after-format");
    let actual = match format::probe(device)? {
        Content::Filesystem(t) => t,
        other => {
            return Err(Error::FailedPrecondition(format!(
                "{} holds {other:?}, not a filesystem",
                device.display()
            )));
        }
    };
    if !fs_type.is_empty() && actual != fs_type {
        return Err(Error::FailedPrecondition(format!(
            "{} already holds a {actual} filesystem; refusing to reformat it as {fs_type}",
            device.display()
        )));
    }
    if !read_only && format::grow_offline_if_needed(device)? {
        // The disk grew while detached (offline expansion).
        tracing::info!(device = %device.display(), "grew the filesystem before mounting");
    }
    let mut options: Vec<String> = flags.to_vec();
    if read_only {
        options.push("ro".into());
    }
    if actual == "xfs" {
        // Snapshots and clones carry their source's UUID; xfs refuses a
        // second mount of one UUID on a node unless told otherwise.
        options.push("nouuid".into());
    }
    mount::mount(device, staging, &actual, &options)?;
    crash_point("stage-after-mount");
    Ok(())
}

/// Publishes a staged filesystem: bind mount `staging` onto `target`.
fn publish_mount(staging: &Path, target: &Path, read_only: bool, flags: &[String]) -> Result<()> {
    let staged = mount::find_by_target(staging)?.ok_or_else(|| {
        Error::FailedPrecondition(format!("volume is not staged at {}", staging.display()))
    })?;
    std::fs::create_dir_all(target)
        .map_err(|e| Error::internal(format!("create {}", target.display()), e))?;
    if let Some(m) = mount::find_by_target(target)? {
        if (m.major, m.minor) == (staged.major, staged.minor) && m.read_only() == read_only {
            return Ok(());
        }
        return Err(Error::AlreadyExists(format!(
            "{} is already published differently ({}:{}, {})",
            target.display(),
            m.major,
            m.minor,
            if m.read_only() { "ro" } else { "rw" }
        )));
    }
    let extra: Vec<String> = flags
        .iter()
        .filter(|f| *f != "ro" && *f != "rw")
        .cloned()
        .collect();
    crash_point("publish-before-bind");
    mount::bind_mount(staging, target, read_only, &extra)
}

/// Publishes a raw block volume: bind mount the device file onto a file.
fn publish_block(device: &Path, target: &Path, read_only: bool) -> Result<()> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::internal(format!("create {}", parent.display()), e))?;
    }
    if let Some(m) = mount::find_by_target(target)? {
        let dev_name = device
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if m.root == Path::new("/").join(&dev_name) && m.read_only() == read_only {
            return Ok(());
        }
        return Err(Error::AlreadyExists(format!(
            "{} is already published from {}",
            target.display(),
            m.root.display()
        )));
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(target)
        .map_err(|e| Error::internal(format!("create {}", target.display()), e))?;
    mount::bind_mount(device, target, read_only, &[])
}

/// Unmounts `target` and removes what publish created, never data.
fn unpublish(target: &Path) -> Result<()> {
    mount::unmount_all(target)?;
    match std::fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::internal(format!("stat {}", target.display()), e)),
        Ok(meta) if meta.is_dir() => match std::fs::remove_dir(target) {
            Ok(()) => Ok(()),
            // Something wrote into the unmounted directory: that is data,
            // and data is not ours to delete.
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                tracing::warn!(target = %target.display(), "target directory not empty after unmount; left in place");
                Ok(())
            }
            Err(e) => Err(Error::internal(format!("remove {}", target.display()), e)),
        },
        // The placeholder file of a block publish is empty; anything else stays.
        Ok(meta) if meta.is_file() && meta.len() == 0 => std::fs::remove_file(target)
            .map_err(|e| Error::internal(format!("remove {}", target.display()), e)),
        Ok(_) => Ok(()),
    }
}

fn usage(unit: volume_usage::Unit, total: u64, available: u64, used: u64) -> csi::VolumeUsage {
    csi::VolumeUsage {
        total: total as i64,
        available: available as i64,
        used: used as i64,
        unit: unit as i32,
    }
}

/// Usage of a published or staged path; `None` when nothing is mounted there.
fn volume_stats(path: &Path) -> Result<csi::NodeGetVolumeStatsResponse> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound(format!("volume path {} does not exist", path.display()))
        } else {
            Error::internal(format!("stat {}", path.display()), e)
        }
    })?;
    if mount::find_by_target(path)?.is_none() {
        return Ok(csi::NodeGetVolumeStatsResponse {
            usage: vec![],
            volume_condition: Some(csi::VolumeCondition {
                abnormal: true,
                message: format!("nothing is mounted at {}", path.display()),
            }),
        });
    }
    let usage = if meta.file_type().is_block_device() {
        // Raw block: the path is the device (bind-mounted); its size is the volume.
        let size = device::size_bytes(path)?;
        vec![usage(volume_usage::Unit::Bytes, size, 0, 0)]
    } else {
        let st = nix::sys::statvfs::statvfs(path)
            .map_err(|e| Error::internal(format!("statvfs {}", path.display()), e))?;
        let frsize = st.fragment_size() as u64;
        let blocks = st.blocks() as u64;
        let bfree = st.blocks_free() as u64;
        let bavail = st.blocks_available() as u64;
        let files = st.files() as u64;
        let ffree = st.files_free() as u64;
        vec![
            usage(
                volume_usage::Unit::Bytes,
                blocks * frsize,
                bavail * frsize,
                (blocks - bfree) * frsize,
            ),
            usage(
                volume_usage::Unit::Inodes,
                files,
                ffree,
                files.saturating_sub(ffree),
            ),
        ]
    };
    Ok(csi::NodeGetVolumeStatsResponse {
        usage,
        volume_condition: Some(csi::VolumeCondition {
            abnormal: false,
            message: "mounted".into(),
        }),
    })
}

/// Grows the filesystem mounted at `path`; returns the device size.
fn expand(path: &Path, block: bool, required: u64) -> Result<u64> {
    if !path.exists() {
        return Err(Error::NotFound(format!(
            "volume path {} does not exist",
            path.display()
        )));
    }
    let m = mount::find_by_target(path)?.ok_or_else(|| {
        Error::FailedPrecondition(format!("nothing is mounted at {}", path.display()))
    })?;
    let is_block = block || device::is_block_device(path);
    let dev = if is_block {
        path.to_path_buf()
    } else {
        device_of_mount(&m)?
    };
    let size = device::size_bytes(&dev)?;
    if size < required {
        // The controller grew the disk but this node has not seen it yet.
        return Err(Error::Unavailable(format!(
            "{} is {size} bytes, below the requested {required}; retry once the resize reaches the node",
            dev.display()
        )));
    }
    if !is_block {
        format::grow(&dev, path)?;
    }
    Ok(size)
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        request: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        let req = request.into_inner();
        validate::volume_id("volume_id", &req.volume_id)?;
        let staging =
            validate::path("staging_target_path", &req.staging_target_path)?.to_path_buf();
        let cap = validate::capability("volume_capability", req.volume_capability.as_ref())?;
        let _guard = self.inflight.claim(&req.volume_id)?;
        let device = self
            .find_device(&req.volume_id, &req.publish_context)
            .await?;
        if let Access::Mount { fs_type, flags } = cap.access {
            let read_only = cap.read_only;
            blocking(move || stage_mount(&device, &staging, &fs_type, &flags, read_only)).await?;
        }
        // Raw block needs nothing at stage: publish binds the device itself.
        Ok(Response::new(csi::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        let req = request.into_inner();
        validate::volume_id("volume_id", &req.volume_id)?;
        let staging =
            validate::path("staging_target_path", &req.staging_target_path)?.to_path_buf();
        let _guard = self.inflight.claim(&req.volume_id)?;
        // The CO owns the staging directory; only the mount is ours.
        blocking(move || mount::unmount_all(&staging)).await?;
        Ok(Response::new(csi::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        validate::volume_id("volume_id", &req.volume_id)?;
        let target = validate::path("target_path", &req.target_path)?.to_path_buf();
        let staging =
            validate::path("staging_target_path", &req.staging_target_path)?.to_path_buf();
        let Capability { access, read_only } =
            validate::capability("volume_capability", req.volume_capability.as_ref())?;
        let read_only = read_only || req.readonly;
        let _guard = self.inflight.claim(&req.volume_id)?;
        match access {
            Access::Mount { flags, .. } => {
                blocking(move || publish_mount(&staging, &target, read_only, &flags)).await?;
            }
            Access::Block => {
                let device = self
                    .find_device(&req.volume_id, &req.publish_context)
                    .await?;
                blocking(move || publish_block(&device, &target, read_only)).await?;
            }
        }
        Ok(Response::new(csi::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        validate::volume_id("volume_id", &req.volume_id)?;
        let target = validate::path("target_path", &req.target_path)?.to_path_buf();
        let _guard = self.inflight.claim(&req.volume_id)?;
        blocking(move || unpublish(&target)).await?;
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        let req = request.into_inner();
        validate::volume_id("volume_id", &req.volume_id)?;
        let path = validate::path("volume_path", &req.volume_path)?.to_path_buf();
        // Read-only: no in-flight claim, so stats never block a mount.
        Ok(Response::new(blocking(move || volume_stats(&path)).await?))
    }

    async fn node_expand_volume(
        &self,
        request: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        validate::volume_id("volume_id", &req.volume_id)?;
        let path = validate::path("volume_path", &req.volume_path)?.to_path_buf();
        let block = match req.volume_capability.as_ref() {
            Some(_) => {
                validate::capability("volume_capability", req.volume_capability.as_ref())?.access
                    == Access::Block
            }
            None => false,
        };
        let required = req
            .capacity_range
            .as_ref()
            .map(|r| r.required_bytes.max(0) as u64)
            .unwrap_or(0);
        let _guard = self.inflight.claim(&req.volume_id)?;
        let size = blocking(move || expand(&path, block, required)).await?;
        Ok(Response::new(csi::NodeExpandVolumeResponse {
            capacity_bytes: size as i64,
        }))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        use node_service_capability::rpc::Type;
        let capabilities = [
            Type::StageUnstageVolume,
            Type::GetVolumeStats,
            Type::ExpandVolume,
            Type::VolumeCondition,
        ]
        .into_iter()
        .map(|t| csi::NodeServiceCapability {
            r#type: Some(node_service_capability::Type::Rpc(
                node_service_capability::Rpc { r#type: t as i32 },
            )),
        })
        .collect();
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        let accessible_topology = (!self.cfg.zone.is_empty()).then(|| csi::Topology {
            segments: HashMap::from([(TOPOLOGY_ZONE_KEY.to_string(), self.cfg.zone.clone())]),
        });
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.cfg.node_id.clone(),
            max_volumes_per_node: self.cfg.max_volumes_per_node,
            accessible_topology,
        }))
    }
}

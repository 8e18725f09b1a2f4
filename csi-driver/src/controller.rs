//! The CSI Controller service: volume and snapshot lifecycle through the
//! cloud API.
//!
//! Idempotency comes from names: a CSI name becomes the cloud resource name,
//! and every create first looks the name up (exact match, since the API's
//! `search_word` is a substring search). A retried call after a crash finds
//! what the first call created instead of creating a twin.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::Duration;

use iaas_client::Client;
use iaas_client::actions::{
    AttachTags, AttachVolumes, CloneVolumes, CreateSnapshots, CreateVolumeFromSnapshot,
    CreateVolumes, DeleteSnapshots, DeleteVolumes, DescribeInstances, DescribeSnapshots,
    DescribeVolumes, DetachVolumes, ResizeVolumes,
};
use iaas_client::model::{ResourceTagPair, Snapshot, Volume};
use tonic::{Request, Response, Status};

use crate::cloud::Cloud;
use crate::csi::controller_server::Controller;
use crate::csi::{self, controller_service_capability, volume_content_source};
use crate::error::{Error, Result};
use crate::inflight::InFlight;
use crate::node::{PUBLISH_DEVICE_KEY, TOPOLOGY_ZONE_KEY};
use crate::validate::{self, Access};

/// Bytes per GB of disk size (the API's GB is binary).
pub const GIB: u64 = 1 << 30;

/// The well-known Kubernetes zone label, accepted in topology requirements.
pub const K8S_ZONE_KEY: &str = "topology.kubernetes.io/zone";

/// Size rules of one disk type, in GB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskType {
    /// Smallest size.
    pub min_gb: u64,
    /// Largest size.
    pub max_gb: u64,
    /// Sizes are multiples of this.
    pub step_gb: u64,
}

/// The QingCloud defaults: types 0, 2, 3, 5, each 10..5000 GB in steps of 10.
pub fn default_disk_types() -> BTreeMap<i32, DiskType> {
    [0, 2, 3, 5]
        .into_iter()
        .map(|t| {
            (
                t,
                DiskType {
                    min_gb: 10,
                    max_gb: 5000,
                    step_gb: 10,
                },
            )
        })
        .collect()
}

/// Controller settings.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The zone the client's endpoint serves (volumes are created there).
    pub zone: String,
    /// Disk types and their size rules.
    pub disk_types: BTreeMap<i32, DiskType>,
    /// Type used when the StorageClass names none.
    pub default_type: i32,
    /// How long to wait for one cloud job.
    pub job_timeout: Duration,
}

impl ControllerConfig {
    /// Defaults for `zone`.
    pub fn new(zone: impl Into<String>) -> Self {
        ControllerConfig {
            zone: zone.into(),
            disk_types: default_disk_types(),
            default_type: 0,
            job_timeout: Duration::from_secs(120),
        }
    }
}

/// The Controller service.
#[derive(Debug, Clone)]
pub struct ControllerService {
    client: Client,
    cloud: Cloud,
    cfg: ControllerConfig,
    inflight: InFlight,
}

/// Volume statuses that mean the volume exists.
const LIVE_VOLUME: &[&str] = &["pending", "available", "in-use", "suspended"];
/// Snapshot statuses that mean the snapshot exists.
const LIVE_SNAPSHOT: &[&str] = &["pending", "available", "suspended"];

/// StorageClass parameters this driver understands.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VolumeParams {
    disk_type: i32,
    fs_type: String,
    tags: Vec<String>,
}

impl ControllerService {
    /// A controller using `client` (already configured for the zone).
    /// Must be called inside a tokio runtime (it starts the batching tasks).
    pub fn new(client: Client, cfg: ControllerConfig) -> Self {
        ControllerService {
            cloud: Cloud::new(client.clone()),
            client,
            cfg,
            inflight: InFlight::default(),
        }
    }

    /// The cloud client, for the identity probe.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn parse_params(&self, params: &HashMap<String, String>) -> Result<VolumeParams> {
        let mut out = VolumeParams {
            disk_type: self.cfg.default_type,
            fs_type: String::new(),
            tags: Vec::new(),
        };
        for (key, value) in params {
            match key.as_str() {
                "type" => {
                    out.disk_type = value.trim().parse().map_err(|_| {
                        Error::invalid(
                            "parameters.type",
                            format!("{value:?} is not a disk type number"),
                        )
                    })?;
                    if !self.cfg.disk_types.contains_key(&out.disk_type) {
                        return Err(Error::invalid(
                            "parameters.type",
                            format!(
                                "unknown disk type {} (known: {:?})",
                                out.disk_type,
                                self.cfg.disk_types.keys().collect::<Vec<_>>()
                            ),
                        ));
                    }
                }
                "fsType" | "fstype" | "csi.storage.k8s.io/fstype" => {
                    crate::format::check_fs_type("parameters.fsType", value)?;
                    out.fs_type = value.clone();
                }
                "tags" => {
                    for tag in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                        validate::volume_id("parameters.tags", tag)?;
                        out.tags.push(tag.to_string());
                    }
                }
                // Added by the sidecars for their own use (PVC name, etc.).
                k if k.starts_with("csi.storage.k8s.io/") => {}
                other => {
                    return Err(Error::invalid(
                        "parameters",
                        format!("unknown parameter {other:?} (known: type, fsType, tags)"),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Rounds a capacity range to a size the disk type allows.
    fn size_gb(&self, disk_type: i32, range: Option<&csi::CapacityRange>) -> Result<u64> {
        let t = self.cfg.disk_types[&disk_type];
        let (required, limit) = range
            .map(|r| (r.required_bytes, r.limit_bytes))
            .unwrap_or((0, 0));
        if required < 0 || limit < 0 {
            return Err(Error::invalid(
                "capacity_range",
                "bytes must not be negative",
            ));
        }
        if limit > 0 && required > limit {
            return Err(Error::invalid(
                "capacity_range",
                "required_bytes exceeds limit_bytes",
            ));
        }
        let required_gb = (required as u64).div_ceil(GIB);
        let step = t.step_gb.max(1);
        let gb = required_gb.max(t.min_gb).div_ceil(step) * step;
        if gb > t.max_gb {
            return Err(Error::OutOfRange(format!(
                "{required} bytes exceed the {} GB maximum of disk type {disk_type}",
                t.max_gb
            )));
        }
        if limit > 0 && gb * GIB > limit as u64 {
            return Err(Error::OutOfRange(format!(
                "disk type {disk_type} sizes are {}..{} GB in steps of {step}; none fits {required}..{limit} bytes",
                t.min_gb, t.max_gb
            )));
        }
        Ok(gb)
    }

    /// Checks topology requirements against our zone.
    fn check_topology(&self, req: Option<&csi::TopologyRequirement>) -> Result<()> {
        let Some(req) = req else { return Ok(()) };
        let zone_of = |t: &csi::Topology| {
            t.segments
                .get(TOPOLOGY_ZONE_KEY)
                .or_else(|| t.segments.get(K8S_ZONE_KEY))
                .cloned()
        };
        if req.requisite.is_empty() {
            return Ok(());
        }
        // Preferred entries are a subset of requisite; with one zone the
        // only question is whether ours is allowed at all.
        if req
            .requisite
            .iter()
            .any(|t| zone_of(t).is_none_or(|z| z == self.cfg.zone))
        {
            return Ok(());
        }
        Err(Error::ResourceExhausted(format!(
            "no requisite topology includes zone {}",
            self.cfg.zone
        )))
    }

    fn topology(&self) -> Vec<csi::Topology> {
        vec![csi::Topology {
            segments: HashMap::from([(TOPOLOGY_ZONE_KEY.to_string(), self.cfg.zone.clone())]),
        }]
    }

    fn to_csi_volume(
        &self,
        v: &Volume,
        source: Option<csi::VolumeContentSource>,
        fs_type: &str,
    ) -> csi::Volume {
        let mut ctx = HashMap::from([("type".to_string(), v.volume_type.to_string())]);
        if !fs_type.is_empty() {
            ctx.insert("fsType".into(), fs_type.into());
        }
        csi::Volume {
            capacity_bytes: (v.size * GIB) as i64,
            volume_id: v.volume_id.clone(),
            volume_context: ctx,
            content_source: source,
            accessible_topology: self.topology(),
        }
    }

    async fn volume(&self, id: &str) -> Result<Option<Volume>> {
        Ok(self
            .cloud
            .volume(id)
            .await?
            .filter(|v| LIVE_VOLUME.contains(&v.status.as_str())))
    }

    async fn volume_by_name(&self, name: &str) -> Result<Option<Volume>> {
        let all = self
            .client
            .describe_volumes_all(&DescribeVolumes {
                search_word: Some(name.to_string()),
                status: LIVE_VOLUME.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
            .await?;
        // search_word matches substrings of ids and names: filter exactly.
        let mut found: Vec<Volume> = all.into_iter().filter(|v| v.volume_name == name).collect();
        found.sort_by(|a, b| a.create_time.cmp(&b.create_time));
        Ok(found.into_iter().next())
    }

    async fn snapshot(&self, id: &str) -> Result<Option<Snapshot>> {
        let page = self
            .client
            .describe_snapshots(&DescribeSnapshots {
                snapshots: vec![id.to_string()],
                ..Default::default()
            })
            .await;
        let page = match page {
            Ok(p) => p,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(page
            .items
            .into_iter()
            .find(|s| s.snapshot_id == id && LIVE_SNAPSHOT.contains(&s.status.as_str())))
    }

    async fn snapshot_by_name(&self, name: &str) -> Result<Option<Snapshot>> {
        let all = self
            .client
            .describe_snapshots_all(&DescribeSnapshots {
                search_word: Some(name.to_string()),
                status: LIVE_SNAPSHOT.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
            .await?;
        let mut found: Vec<Snapshot> = all
            .into_iter()
            .filter(|s| s.snapshot_name == name)
            .collect();
        found.sort_by(|a, b| a.create_time.cmp(&b.create_time));
        Ok(found.into_iter().next())
    }

    async fn wait(&self, job_id: &str) -> Result<()> {
        self.cloud
            .wait_job(job_id, self.cfg.job_timeout)
            .await
            .map(|_| ())
    }

    /// Waits for a delete job; the resource being gone already (at the call
    /// or while the job runs) is success, as CSI deletes are idempotent.
    async fn delete_job(
        &self,
        started: std::result::Result<iaas_client::actions::JobOutput, iaas_client::Error>,
    ) -> Result<()> {
        match started {
            Ok(out) => match self.wait(&out.job_id).await {
                Err(Error::Cloud(e)) if e.is_not_found() => Ok(()),
                other => other,
            },
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(Error::from(e)),
        }
    }

    /// Waits for a volume that exists but is still being created.
    async fn settled_volume(&self, id: &str) -> Result<Volume> {
        let deadline = tokio::time::Instant::now() + self.cfg.job_timeout;
        let mut delay = Duration::from_millis(50);
        loop {
            let v = self
                .cloud
                .volume(id)
                .await?
                .ok_or_else(|| Error::NotFound(format!("volume {id} disappeared")))?;
            if v.transition_status.is_empty() && v.status != "pending" {
                return Ok(v);
            }
            if tokio::time::Instant::now() + delay > deadline {
                return Err(Error::DeadlineExceeded(format!(
                    "volume {id} still {} after {:?}",
                    v.transition_status, self.cfg.job_timeout
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Whether the instance behind a node id exists (and is not terminated).
    async fn instance_exists(&self, instance_id: &str) -> Result<bool> {
        let page = self
            .client
            .describe_instances(&DescribeInstances {
                instances: vec![instance_id.to_string()],
                ..Default::default()
            })
            .await;
        match page {
            Ok(p) => Ok(p.items.iter().any(|i| {
                i.instance_id == instance_id
                    && !matches!(i.status.as_str(), "terminated" | "ceased")
            })),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The volume once no transition is running on it.
    async fn settle(&self, v: Volume) -> Result<Volume> {
        if v.transition_status.is_empty() && v.status != "pending" {
            return Ok(v);
        }
        self.settled_volume(&v.volume_id).await
    }

    async fn create_volume_inner(
        &self,
        req: csi::CreateVolumeRequest,
    ) -> Result<csi::CreateVolumeResponse> {
        let name = validate::required("name", &req.name)?;
        if name.len() > 128 {
            return Err(Error::invalid("name", "longer than 128 characters"));
        }
        let caps = validate::capabilities("volume_capabilities", &req.volume_capabilities)?;
        let params = self.parse_params(&req.parameters)?;
        if caps.iter().any(|c| c.access == Access::Block) && !params.fs_type.is_empty() {
            tracing::debug!(name, "fsType ignored for a raw block capability");
        }
        let size_gb = self.size_gb(params.disk_type, req.capacity_range.as_ref())?;
        self.check_topology(req.accessibility_requirements.as_ref())?;
        let source = req.volume_content_source.clone();
        let _guard = self.inflight.claim(name)?;

        if let Some(existing) = self.volume_by_name(name).await? {
            let v = self.settled_volume(&existing.volume_id).await?;
            let range = req.capacity_range.as_ref();
            let required = range.map(|r| r.required_bytes.max(0) as u64).unwrap_or(0);
            let limit = range.map(|r| r.limit_bytes.max(0) as u64).unwrap_or(0);
            let bytes = v.size * GIB;
            if bytes < required
                || (limit > 0 && bytes > limit)
                || v.volume_type != params.disk_type && source.is_none()
            {
                return Err(Error::AlreadyExists(format!(
                    "volume {name} exists as {} ({} GB, type {}), incompatible with this request",
                    v.volume_id, v.size, v.volume_type
                )));
            }
            return Ok(csi::CreateVolumeResponse {
                volume: Some(self.to_csi_volume(&v, source, &params.fs_type)),
            });
        }

        let created = match source.as_ref().and_then(|s| s.r#type.as_ref()) {
            Some(volume_content_source::Type::Snapshot(s)) => {
                validate::required("volume_content_source.snapshot.snapshot_id", &s.snapshot_id)?;
                let snap = self.snapshot(&s.snapshot_id).await?.ok_or_else(|| {
                    Error::NotFound(format!("snapshot {} does not exist", s.snapshot_id))
                })?;
                if snap.size > size_gb {
                    return Err(Error::OutOfRange(format!(
                        "snapshot {} is {} GB, larger than the requested {size_gb} GB",
                        snap.snapshot_id, snap.size
                    )));
                }
                let out = self
                    .client
                    .create_volume_from_snapshot(&CreateVolumeFromSnapshot {
                        snapshot: snap.snapshot_id.clone(),
                        volume_name: Some(name.to_string()),
                    })
                    .await?;
                self.wait(&out.job_id).await?;
                self.grow_to(&out.volume_id, size_gb).await?
            }
            Some(volume_content_source::Type::Volume(s)) => {
                validate::required("volume_content_source.volume.volume_id", &s.volume_id)?;
                let src = self.volume(&s.volume_id).await?.ok_or_else(|| {
                    Error::NotFound(format!("source volume {} does not exist", s.volume_id))
                })?;
                if src.size > size_gb {
                    return Err(Error::OutOfRange(format!(
                        "source volume {} is {} GB, larger than the requested {size_gb} GB",
                        src.volume_id, src.size
                    )));
                }
                let out = self
                    .client
                    .clone_volumes(&CloneVolumes {
                        volume: src.volume_id.clone(),
                        volume_name: Some(name.to_string()),
                        count: Some(1),
                    })
                    .await?;
                self.wait(&out.job_id).await?;
                let id =
                    out.volumes.into_iter().next().ok_or_else(|| {
                        Error::Internal("CloneVolumes returned no volume id".into())
                    })?;
                self.grow_to(&id, size_gb).await?
            }
            None => {
                let out = self
                    .client
                    .create_volumes(&CreateVolumes {
                        size: size_gb,
                        volume_name: Some(name.to_string()),
                        volume_type: Some(params.disk_type),
                        count: Some(1),
                    })
                    .await?;
                self.wait(&out.job_id).await?;
                let id =
                    out.volumes.into_iter().next().ok_or_else(|| {
                        Error::Internal("CreateVolumes returned no volume id".into())
                    })?;
                // Everything the response needs is known: no Describe.
                Volume {
                    volume_id: id,
                    volume_name: name.to_string(),
                    size: size_gb,
                    volume_type: params.disk_type,
                    status: "available".into(),
                    ..Default::default()
                }
            }
        };
        let volume_id = created.volume_id.clone();
        if !params.tags.is_empty() {
            self.client
                .attach_tags(&AttachTags {
                    resource_tag_pairs: params
                        .tags
                        .iter()
                        .map(|t| ResourceTagPair {
                            tag_id: t.clone(),
                            resource_type: "volume".into(),
                            resource_id: volume_id.clone(),
                        })
                        .collect(),
                })
                .await?;
        }
        Ok(csi::CreateVolumeResponse {
            volume: Some(self.to_csi_volume(&created, source, &params.fs_type)),
        })
    }

    /// Grows a fresh copy to the requested size when it is smaller;
    /// returns the volume as it now is.
    async fn grow_to(&self, volume_id: &str, size_gb: u64) -> Result<Volume> {
        let mut v = self.volume(volume_id).await?.ok_or_else(|| {
            Error::Internal(format!("volume {volume_id} vanished after creation"))
        })?;
        if v.size < size_gb {
            let out = self
                .client
                .resize_volumes(&ResizeVolumes {
                    volumes: vec![volume_id.to_string()],
                    size: size_gb,
                })
                .await?;
            self.wait(&out.job_id).await?;
            v.size = size_gb;
        }
        Ok(v)
    }

    fn published_nodes(v: &Volume) -> Vec<String> {
        v.instance
            .as_ref()
            .filter(|i| !i.instance_id.is_empty())
            .map(|i| vec![i.instance_id.clone()])
            .unwrap_or_default()
    }

    fn condition(v: &Volume) -> csi::VolumeCondition {
        match v.status.as_str() {
            "available" | "in-use" => csi::VolumeCondition {
                abnormal: false,
                message: format!("volume is {}", v.status),
            },
            other => csi::VolumeCondition {
                abnormal: true,
                message: format!("volume is {other}"),
            },
        }
    }

    fn to_csi_snapshot(s: &Snapshot) -> csi::Snapshot {
        csi::Snapshot {
            size_bytes: (s.size * GIB) as i64,
            snapshot_id: s.snapshot_id.clone(),
            source_volume_id: s
                .resource
                .as_ref()
                .map(|r| r.resource_id.clone())
                .unwrap_or_default(),
            creation_time: prost_types::Timestamp::from_str(&s.create_time).ok(),
            ready_to_use: s.status == "available" && s.transition_status.is_empty(),
            group_snapshot_id: String::new(),
        }
    }
}

/// Parses a paging token (an offset); a bad one is ABORTED per the spec.
fn parse_token(token: &str) -> Result<u64> {
    if token.is_empty() {
        return Ok(0);
    }
    token.parse().map_err(|_| {
        Error::Aborted(format!(
            "starting_token {token:?} (not a token this driver issued)"
        ))
    })
}

fn page_limit(max_entries: i32) -> Result<u64> {
    match max_entries {
        n if n < 0 => Err(Error::invalid("max_entries", "must not be negative")),
        0 => Ok(iaas_client::actions::PAGE_LIMIT),
        n => Ok((n as u64).min(iaas_client::actions::PAGE_LIMIT)),
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        Ok(Response::new(
            self.create_volume_inner(request.into_inner()).await?,
        ))
    }

    async fn delete_volume(
        &self,
        request: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let req = request.into_inner();
        validate::required("volume_id", &req.volume_id)?;
        let _guard = self.inflight.claim(&req.volume_id)?;
        let Some(v) = self.volume(&req.volume_id).await? else {
            return Ok(Response::new(csi::DeleteVolumeResponse {}));
        };
        let v = match self.settle(v).await {
            Ok(v) if LIVE_VOLUME.contains(&v.status.as_str()) => v,
            // Gone while we waited (a delete already in flight finished).
            Ok(_) | Err(Error::NotFound(_)) => {
                return Ok(Response::new(csi::DeleteVolumeResponse {}));
            }
            Err(e) => return Err(e.into()),
        };
        if v.status == "in-use"
            || v.instance
                .as_ref()
                .is_some_and(|i| !i.instance_id.is_empty())
        {
            return Err(Error::FailedPrecondition(format!(
                "volume {} is attached to {}",
                v.volume_id,
                Self::published_nodes(&v).join(",")
            ))
            .into());
        }
        let started = self
            .client
            .delete_volumes(&DeleteVolumes::new([v.volume_id.clone()]))
            .await;
        self.delete_job(started).await?;
        Ok(Response::new(csi::DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        request: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        let req = request.into_inner();
        validate::required("volume_id", &req.volume_id)?;
        validate::required("node_id", &req.node_id)?;
        validate::capability("volume_capability", req.volume_capability.as_ref())?;
        let _guard = self.inflight.claim(&req.volume_id)?;
        let v = self
            .volume(&req.volume_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("volume {} does not exist", req.volume_id)))?;
        // A job still running on it (a retry after a timeout): let it land
        // first, then decide on its outcome.
        let v = self.settle(v).await?;
        // An unknown node shows as the cloud's "instance not found" (2100,
        // NOT_FOUND) from AttachVolumes: no separate lookup needed.
        let attached_to = v
            .instance
            .as_ref()
            .map(|i| i.instance_id.as_str())
            .unwrap_or("");
        if attached_to == req.node_id {
            let device = v
                .instance
                .as_ref()
                .map(|i| i.device.clone())
                .unwrap_or_default();
            if !device.is_empty() {
                return Ok(Response::new(csi::ControllerPublishVolumeResponse {
                    publish_context: HashMap::from([(PUBLISH_DEVICE_KEY.to_string(), device)]),
                }));
            }
        } else if !attached_to.is_empty() {
            // The spec ranks a missing node before a busy volume.
            if !self.instance_exists(&req.node_id).await? {
                return Err(Error::NotFound(format!(
                    "node {} (instance) does not exist",
                    req.node_id
                ))
                .into());
            }
            return Err(Error::FailedPrecondition(format!(
                "volume {} is attached to another node, {attached_to}",
                v.volume_id
            ))
            .into());
        }
        if attached_to.is_empty() {
            let out = self
                .client
                .attach_volumes(&AttachVolumes {
                    volumes: vec![v.volume_id.clone()],
                    instance: req.node_id.clone(),
                })
                .await
                .map_err(Error::from)?;
            self.wait(&out.job_id).await?;
        }
        let v = self.settled_volume(&v.volume_id).await?;
        let device = v
            .instance
            .as_ref()
            .filter(|i| i.instance_id == req.node_id)
            .map(|i| i.device.clone())
            .ok_or_else(|| {
                Error::Internal(format!(
                    "volume {} not attached after the attach job",
                    v.volume_id
                ))
            })?;
        Ok(Response::new(csi::ControllerPublishVolumeResponse {
            publish_context: HashMap::from([(PUBLISH_DEVICE_KEY.to_string(), device)]),
        }))
    }

    async fn controller_unpublish_volume(
        &self,
        request: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        validate::required("volume_id", &req.volume_id)?;
        let _guard = self.inflight.claim(&req.volume_id)?;
        // A volume that is gone is detached from everything: success, so a
        // lost node or volume never wedges the CO's detach.
        let Some(v) = self.volume(&req.volume_id).await? else {
            return Ok(Response::new(csi::ControllerUnpublishVolumeResponse {}));
        };
        let v = self.settle(v).await?;
        let attached_to = v
            .instance
            .as_ref()
            .map(|i| i.instance_id.clone())
            .unwrap_or_default();
        if attached_to.is_empty() || (!req.node_id.is_empty() && attached_to != req.node_id) {
            return Ok(Response::new(csi::ControllerUnpublishVolumeResponse {}));
        }
        match self
            .client
            .detach_volumes(&DetachVolumes {
                volumes: vec![v.volume_id.clone()],
                instance: attached_to,
            })
            .await
        {
            Ok(out) => self.wait(&out.job_id).await?,
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(Error::from(e).into()),
        }
        Ok(Response::new(csi::ControllerUnpublishVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        validate::required("volume_id", &req.volume_id)?;
        if req.volume_capabilities.is_empty() {
            return Err(Error::invalid(
                "volume_capabilities",
                "at least one capability is required",
            )
            .into());
        }
        self.volume(&req.volume_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("volume {} does not exist", req.volume_id)))?;
        if let Err(e) = self.parse_params(&req.parameters) {
            return Ok(Response::new(csi::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: e.to_string(),
            }));
        }
        for c in &req.volume_capabilities {
            if let Err(e) = validate::capability("volume_capabilities", Some(c)) {
                return Ok(Response::new(csi::ValidateVolumeCapabilitiesResponse {
                    confirmed: None,
                    message: e.to_string(),
                }));
            }
        }
        Ok(Response::new(csi::ValidateVolumeCapabilitiesResponse {
            confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                volume_context: req.volume_context,
                volume_capabilities: req.volume_capabilities,
                parameters: req.parameters,
                mutable_parameters: HashMap::new(),
            }),
            message: String::new(),
        }))
    }

    async fn list_volumes(
        &self,
        request: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        let req = request.into_inner();
        let offset = parse_token(&req.starting_token)?;
        let limit = page_limit(req.max_entries)?;
        let page = self
            .client
            .describe_volumes(&DescribeVolumes {
                status: LIVE_VOLUME.iter().map(|s| s.to_string()).collect(),
                offset: Some(offset),
                limit: Some(limit),
                ..Default::default()
            })
            .await
            .map_err(Error::from)?;
        if offset > page.total_count {
            return Err(Error::Aborted(format!(
                "starting_token {offset} is past the end ({})",
                page.total_count
            ))
            .into());
        }
        let n = page.items.len() as u64;
        let next_token = if n > 0 && offset + n < page.total_count {
            (offset + n).to_string()
        } else {
            String::new()
        };
        let entries = page
            .items
            .iter()
            .map(|v| csi::list_volumes_response::Entry {
                volume: Some(self.to_csi_volume(v, None, "")),
                status: Some(csi::list_volumes_response::VolumeStatus {
                    published_node_ids: Self::published_nodes(v),
                    volume_condition: Some(Self::condition(v)),
                }),
            })
            .collect();
        Ok(Response::new(csi::ListVolumesResponse {
            entries,
            next_token,
        }))
    }

    async fn get_capacity(
        &self,
        request: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        let req = request.into_inner();
        for c in &req.volume_capabilities {
            validate::capability("volume_capabilities", Some(c))?;
        }
        let params = self.parse_params(&req.parameters)?;
        let t = self.cfg.disk_types[&params.disk_type];
        if let Some(topo) = &req.accessible_topology {
            let elsewhere = self
                .check_topology(Some(&csi::TopologyRequirement {
                    requisite: vec![topo.clone()],
                    preferred: vec![],
                }))
                .is_err();
            if elsewhere {
                // Another zone: nothing can be provisioned there through us.
                return Ok(Response::new(csi::GetCapacityResponse {
                    available_capacity: 0,
                    maximum_volume_size: Some(0),
                    minimum_volume_size: Some((t.min_gb * GIB) as i64),
                }));
            }
        }
        // The API exposes no pool capacity; report what one volume can be,
        // which is what the scheduler compares a claim against.
        Ok(Response::new(csi::GetCapacityResponse {
            available_capacity: (t.max_gb * GIB) as i64,
            maximum_volume_size: Some((t.max_gb * GIB) as i64),
            minimum_volume_size: Some((t.min_gb * GIB) as i64),
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        use controller_service_capability::rpc::Type;
        let capabilities = [
            Type::CreateDeleteVolume,
            Type::PublishUnpublishVolume,
            Type::ListVolumes,
            Type::GetCapacity,
            Type::CreateDeleteSnapshot,
            Type::ListSnapshots,
            Type::CloneVolume,
            Type::ExpandVolume,
            Type::ListVolumesPublishedNodes,
            Type::VolumeCondition,
            Type::GetVolume,
            Type::GetSnapshot,
        ]
        .into_iter()
        .map(|t| csi::ControllerServiceCapability {
            r#type: Some(controller_service_capability::Type::Rpc(
                controller_service_capability::Rpc { r#type: t as i32 },
            )),
        })
        .collect();
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        let req = request.into_inner();
        let name = validate::required("name", &req.name)?;
        validate::required("source_volume_id", &req.source_volume_id)?;
        let _guard = self.inflight.claim(&format!("snapshot/{name}"))?;
        if let Some(existing) = self.snapshot_by_name(name).await? {
            let source = existing
                .resource
                .as_ref()
                .map(|r| r.resource_id.as_str())
                .unwrap_or("");
            if source != req.source_volume_id {
                return Err(Error::AlreadyExists(format!(
                    "snapshot {name} exists as {} of volume {source}, not of {}",
                    existing.snapshot_id, req.source_volume_id
                ))
                .into());
            }
            return Ok(Response::new(csi::CreateSnapshotResponse {
                snapshot: Some(Self::to_csi_snapshot(&existing)),
            }));
        }
        self.volume(&req.source_volume_id).await?.ok_or_else(|| {
            Error::NotFound(format!(
                "source volume {} does not exist",
                req.source_volume_id
            ))
        })?;
        let out = self
            .client
            .create_snapshots(&CreateSnapshots {
                resources: vec![req.source_volume_id.clone()],
                snapshot_name: Some(name.to_string()),
                is_full: Some(true),
            })
            .await
            .map_err(Error::from)?;
        self.wait(&out.job_id).await?;
        let id = out
            .snapshots
            .into_iter()
            .next()
            .ok_or_else(|| Error::Internal("CreateSnapshots returned no snapshot id".into()))?;
        let s = self
            .snapshot(&id)
            .await?
            .ok_or_else(|| Error::Internal(format!("snapshot {id} vanished after creation")))?;
        Ok(Response::new(csi::CreateSnapshotResponse {
            snapshot: Some(Self::to_csi_snapshot(&s)),
        }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        let req = request.into_inner();
        validate::required("snapshot_id", &req.snapshot_id)?;
        let _guard = self.inflight.claim(&req.snapshot_id)?;
        if self.snapshot(&req.snapshot_id).await?.is_none() {
            return Ok(Response::new(csi::DeleteSnapshotResponse {}));
        }
        let started = self
            .client
            .delete_snapshots(&DeleteSnapshots::new([req.snapshot_id.clone()]))
            .await;
        self.delete_job(started).await?;
        Ok(Response::new(csi::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        request: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        let req = request.into_inner();
        let offset = parse_token(&req.starting_token)?;
        let limit = page_limit(req.max_entries)?;
        if !req.snapshot_id.is_empty() {
            // A lookup by id: one entry or none, never an error.
            let entries = self
                .snapshot(&req.snapshot_id)
                .await?
                .filter(|s| {
                    req.source_volume_id.is_empty()
                        || s.resource
                            .as_ref()
                            .is_some_and(|r| r.resource_id == req.source_volume_id)
                })
                .map(|s| csi::list_snapshots_response::Entry {
                    snapshot: Some(Self::to_csi_snapshot(&s)),
                })
                .into_iter()
                .collect();
            return Ok(Response::new(csi::ListSnapshotsResponse {
                entries,
                next_token: String::new(),
            }));
        }
        let page = self
            .client
            .describe_snapshots(&DescribeSnapshots {
                resource_id: (!req.source_volume_id.is_empty())
                    .then(|| req.source_volume_id.clone()),
                status: LIVE_SNAPSHOT.iter().map(|s| s.to_string()).collect(),
                offset: Some(offset),
                limit: Some(limit),
                ..Default::default()
            })
            .await
            .map_err(Error::from)?;
        let n = page.items.len() as u64;
        let next_token = if n > 0 && offset + n < page.total_count {
            (offset + n).to_string()
        } else {
            String::new()
        };
        let entries = page
            .items
            .iter()
            .map(|s| csi::list_snapshots_response::Entry {
                snapshot: Some(Self::to_csi_snapshot(s)),
            })
            .collect();
        Ok(Response::new(csi::ListSnapshotsResponse {
            entries,
            next_token,
        }))
    }

    async fn get_snapshot(
        &self,
        request: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        let req = request.into_inner();
        validate::required("snapshot_id", &req.snapshot_id)?;
        let s = self.snapshot(&req.snapshot_id).await?.ok_or_else(|| {
            Error::NotFound(format!("snapshot {} does not exist", req.snapshot_id))
        })?;
        Ok(Response::new(csi::GetSnapshotResponse {
            snapshot: Some(Self::to_csi_snapshot(&s)),
        }))
    }

    async fn controller_expand_volume(
        &self,
        request: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        validate::required("volume_id", &req.volume_id)?;
        let range = req
            .capacity_range
            .as_ref()
            .ok_or_else(|| Error::invalid("capacity_range", "missing"))?;
        let block = match req.volume_capability.as_ref() {
            Some(c) => validate::capability("volume_capability", Some(c))?.access == Access::Block,
            None => false,
        };
        let _guard = self.inflight.claim(&req.volume_id)?;
        let mut v = self
            .volume(&req.volume_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("volume {} does not exist", req.volume_id)))?;
        if !v.transition_status.is_empty() {
            // A resize started by a previous incarnation (killed while
            // waiting) may still be running: its size only shows once it
            // ends, and resizing to that size then would be refused as
            // "does not grow". Decide on the settled size.
            v = self.settled_volume(&req.volume_id).await?;
        }
        let disk_type = if self.cfg.disk_types.contains_key(&v.volume_type) {
            v.volume_type
        } else {
            self.cfg.default_type
        };
        let size_gb = self.size_gb(disk_type, Some(range))?;
        let final_gb = if v.size >= size_gb {
            v.size
        } else {
            let out = self
                .client
                .resize_volumes(&ResizeVolumes {
                    volumes: vec![v.volume_id.clone()],
                    size: size_gb,
                })
                .await
                .map_err(Error::from)?;
            self.wait(&out.job_id).await?;
            size_gb
        };
        Ok(Response::new(csi::ControllerExpandVolumeResponse {
            capacity_bytes: (final_gb * GIB) as i64,
            node_expansion_required: !block,
        }))
    }

    async fn controller_get_volume(
        &self,
        request: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        let req = request.into_inner();
        validate::required("volume_id", &req.volume_id)?;
        let v = self
            .volume(&req.volume_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("volume {} does not exist", req.volume_id)))?;
        Ok(Response::new(csi::ControllerGetVolumeResponse {
            volume: Some(self.to_csi_volume(&v, None, "")),
            status: Some(csi::controller_get_volume_response::VolumeStatus {
                published_node_ids: Self::published_nodes(&v),
                volume_condition: Some(Self::condition(&v)),
            }),
        }))
    }

    async fn controller_modify_volume(
        &self,
        _request: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        Err(Error::Unimplemented("ControllerModifyVolume is not supported".into()).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> ControllerService {
        let cfg = iaas_client::config::Config::new(
            "http://127.0.0.1:9",
            "emu1",
            iaas_client::config::Credentials::new("AK", "SK").expect("creds"),
        );
        ControllerService::new(
            Client::new(cfg).expect("client"),
            ControllerConfig::new("emu1"),
        )
    }

    fn range(req: i64, lim: i64) -> csi::CapacityRange {
        csi::CapacityRange {
            required_bytes: req,
            limit_bytes: lim,
        }
    }

    #[test]
    fn capacity_rounds_to_step_within_bounds() {
        let s = svc();
        assert_eq!(s.size_gb(0, None).expect("default"), 10);
        assert_eq!(s.size_gb(0, Some(&range(1, 0))).expect("tiny"), 10);
        assert_eq!(
            s.size_gb(0, Some(&range((11 * GIB) as i64, 0)))
                .expect("11"),
            20
        );
        assert_eq!(
            s.size_gb(0, Some(&range((20 * GIB) as i64, (20 * GIB) as i64)))
                .expect("exact"),
            20
        );
        assert!(matches!(
            s.size_gb(0, Some(&range((11 * GIB) as i64, (15 * GIB) as i64))),
            Err(Error::OutOfRange(_))
        ));
        assert!(matches!(
            s.size_gb(0, Some(&range((6000 * GIB) as i64, 0))),
            Err(Error::OutOfRange(_))
        ));
        assert!(matches!(
            s.size_gb(0, Some(&range(10, 5))),
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[test]
    fn parameters_are_checked_by_name() {
        let s = svc();
        let p = s
            .parse_params(&HashMap::from([
                ("type".into(), "2".into()),
                ("fsType".into(), "xfs".into()),
                ("tags".into(), "tag-a, tag-b".into()),
                ("csi.storage.k8s.io/pvc/name".into(), "x".into()),
            ]))
            .expect("params");
        assert_eq!(p.disk_type, 2);
        assert_eq!(p.fs_type, "xfs");
        assert_eq!(p.tags, vec!["tag-a", "tag-b"]);
        for (k, v, field) in [
            ("type", "7", "parameters.type"),
            ("type", "x", "parameters.type"),
            ("fsType", "ntfs", "parameters.fsType"),
            ("color", "red", "parameters"),
        ] {
            let e = s
                .parse_params(&HashMap::from([(k.to_string(), v.to_string())]))
                .expect_err(k);
            assert!(e.to_string().contains(field), "{e}");
        }
    }

    #[test]
    fn topology_requires_our_zone() {
        let s = svc();
        let t = |zone: &str| csi::Topology {
            segments: HashMap::from([(TOPOLOGY_ZONE_KEY.to_string(), zone.to_string())]),
        };
        let req = |zones: &[&str]| csi::TopologyRequirement {
            requisite: zones.iter().map(|z| t(z)).collect(),
            preferred: vec![],
        };
        assert!(s.check_topology(None).is_ok());
        assert!(s.check_topology(Some(&req(&["emu2", "emu1"]))).is_ok());
        assert!(matches!(
            s.check_topology(Some(&req(&["emu2"]))),
            Err(Error::ResourceExhausted(_))
        ));
    }

    #[test]
    fn tokens() {
        assert_eq!(parse_token("").expect("empty"), 0);
        assert_eq!(parse_token("40").expect("n"), 40);
        assert!(matches!(parse_token("abc"), Err(Error::Aborted(_))));
        assert!(page_limit(-1).is_err());
        assert_eq!(page_limit(0).expect("0"), 100);
    }
}

//! Conformance in the spirit of csi-sanity, over the real unix socket,
//! against the in-process emulator with real loop devices, mkfs and mounts.
//! Privileged: runs as root (and fails, never skips, otherwise).

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use csi_driver::csi;
use tonic::Code;

async fn create(h: &Harness, name: &str, gib: i64) -> csi::Volume {
    h.controller
        .clone()
        .create_volume(create_req(name, gib, mount_cap("")))
        .await
        .expect("create volume")
        .into_inner()
        .volume
        .expect("volume")
}

async fn publish(h: &Harness, volume_id: &str, node: usize) -> HashMap<String, String> {
    h.controller
        .clone()
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: volume_id.to_string(),
            node_id: h.node_id(node),
            volume_capability: Some(mount_cap("")),
            ..Default::default()
        })
        .await
        .expect("controller publish")
        .into_inner()
        .publish_context
}

async fn unpublish(h: &Harness, volume_id: &str, node: usize) {
    h.controller
        .clone()
        .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
            volume_id: volume_id.to_string(),
            node_id: h.node_id(node),
            ..Default::default()
        })
        .await
        .expect("controller unpublish");
}

fn stage_req(
    volume_id: &str,
    staging: &Path,
    cap: csi::VolumeCapability,
    ctx: &HashMap<String, String>,
) -> csi::NodeStageVolumeRequest {
    csi::NodeStageVolumeRequest {
        volume_id: volume_id.to_string(),
        publish_context: ctx.clone(),
        staging_target_path: staging.to_string_lossy().into_owned(),
        volume_capability: Some(cap),
        ..Default::default()
    }
}

fn publish_req(
    volume_id: &str,
    staging: &Path,
    target: &Path,
    cap: csi::VolumeCapability,
    readonly: bool,
) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: volume_id.to_string(),
        staging_target_path: staging.to_string_lossy().into_owned(),
        target_path: target.to_string_lossy().into_owned(),
        volume_capability: Some(cap),
        readonly,
        ..Default::default()
    }
}

async fn stage(
    h: &Harness,
    node: usize,
    volume_id: &str,
    staging: &Path,
    fs: &str,
    ctx: &HashMap<String, String>,
) {
    h.node(node)
        .node_stage_volume(stage_req(volume_id, staging, mount_cap(fs), ctx))
        .await
        .expect("node stage");
}

async fn unstage(h: &Harness, node: usize, volume_id: &str, staging: &Path) {
    h.node(node)
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: volume_id.to_string(),
            staging_target_path: staging.to_string_lossy().into_owned(),
        })
        .await
        .expect("node unstage");
}

async fn node_publish(h: &Harness, node: usize, volume_id: &str, staging: &Path, target: &Path) {
    h.node(node)
        .node_publish_volume(publish_req(
            volume_id,
            staging,
            target,
            mount_cap(""),
            false,
        ))
        .await
        .expect("node publish");
}

async fn node_unpublish(h: &Harness, node: usize, volume_id: &str, target: &Path) {
    h.node(node)
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: volume_id.to_string(),
            target_path: target.to_string_lossy().into_owned(),
        })
        .await
        .expect("node unpublish");
}

fn is_mounted(p: &Path) -> bool {
    csi_driver::mount::find_by_target(p)
        .expect("mountinfo")
        .is_some()
}

fn write_file(p: &Path, data: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::File::create(p).expect("create file");
    f.write_all(data).expect("write");
    f.sync_all().expect("fsync");
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("expected an error");
    (s.code(), s.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_service() {
    let h = Harness::start().await;
    let mut id = h.identity.clone();
    let info = id
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.name, "disk.csi.cloudsuite.io");
    assert!(!info.vendor_version.is_empty());
    let caps = id
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await
        .expect("caps")
        .into_inner()
        .capabilities;
    assert_eq!(caps.len(), 4, "{caps:?}");
    let probe = id
        .probe(csi::ProbeRequest {})
        .await
        .expect("probe")
        .into_inner();
    assert_eq!(probe.ready, Some(true));

    let info = h
        .node(0)
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .expect("node info")
        .into_inner();
    assert_eq!(info.node_id, h.node_id(0));
    assert_eq!(info.max_volumes_per_node, 10);
    let zone = info.accessible_topology.expect("topology").segments;
    assert_eq!(
        zone.get(csi_driver::node::TOPOLOGY_ZONE_KEY)
            .map(String::as_str),
        Some("emu1")
    );
    let ncaps = h
        .node(0)
        .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
        .await
        .expect("node caps")
        .into_inner()
        .capabilities;
    assert_eq!(ncaps.len(), 4);
    let ccaps = h
        .controller
        .clone()
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .expect("controller caps")
        .into_inner()
        .capabilities;
    assert!(ccaps.len() >= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_delete_volume_idempotency_and_errors() {
    let h = Harness::start().await;
    let mut c = h.controller.clone();
    let name = unique("pvc");
    let v1 = create(&h, &name, 11).await;
    assert_eq!(v1.capacity_bytes, 20 * GIB, "rounded up to the 10 GB step");
    assert_eq!(
        v1.accessible_topology[0]
            .segments
            .get(csi_driver::node::TOPOLOGY_ZONE_KEY)
            .map(String::as_str),
        Some("emu1")
    );
    // Same name, compatible: the same volume.
    let v2 = create(&h, &name, 15).await;
    assert_eq!(v1.volume_id, v2.volume_id);
    // Same name, incompatible size: ALREADY_EXISTS.
    let (c1, _) = code(c.create_volume(create_req(&name, 40, mount_cap(""))).await);
    assert_eq!(c1, Code::AlreadyExists);

    // Validation names the field.
    let (c2, m2) = code(c.create_volume(create_req("", 1, mount_cap(""))).await);
    assert_eq!(c2, Code::InvalidArgument);
    assert!(m2.contains("name"), "{m2}");
    let mut no_caps = create_req(&unique("pvc"), 1, mount_cap(""));
    no_caps.volume_capabilities.clear();
    let (c3, m3) = code(c.create_volume(no_caps).await);
    assert_eq!(c3, Code::InvalidArgument);
    assert!(m3.contains("volume_capabilities"), "{m3}");
    let mut bad_param = create_req(&unique("pvc"), 1, mount_cap(""));
    bad_param.parameters.insert("type".into(), "42".into());
    let (c4, m4) = code(c.create_volume(bad_param).await);
    assert_eq!(c4, Code::InvalidArgument);
    assert!(m4.contains("parameters.type"), "{m4}");
    let (c5, _) = code(
        c.create_volume(create_req(&unique("pvc"), 6000, mount_cap("")))
            .await,
    );
    assert_eq!(c5, Code::OutOfRange);
    let mut elsewhere = create_req(&unique("pvc"), 1, mount_cap(""));
    elsewhere.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![csi::Topology {
            segments: HashMap::from([(csi_driver::node::TOPOLOGY_ZONE_KEY.into(), "other".into())]),
        }],
        preferred: vec![],
    });
    let (c6, _) = code(c.create_volume(elsewhere).await);
    assert_eq!(c6, Code::ResourceExhausted);

    // Get, validate, capacity.
    let got = c
        .controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: v1.volume_id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    let status = got.status.expect("status");
    assert!(status.published_node_ids.is_empty());
    assert!(!status.volume_condition.expect("condition").abnormal);
    let (c7, _) = code(
        c.controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: "vol-missing0".into(),
        })
        .await,
    );
    assert_eq!(c7, Code::NotFound);
    let valid = c
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: v1.volume_id.clone(),
            volume_capabilities: vec![mount_cap("ext4"), block_cap()],
            ..Default::default()
        })
        .await
        .expect("validate")
        .into_inner();
    assert!(valid.confirmed.is_some(), "{}", valid.message);
    let (c8, _) = code(
        c.validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: "vol-missing0".into(),
            volume_capabilities: vec![mount_cap("")],
            ..Default::default()
        })
        .await,
    );
    assert_eq!(c8, Code::NotFound);
    let cap = c
        .get_capacity(csi::GetCapacityRequest::default())
        .await
        .expect("capacity")
        .into_inner();
    assert!(cap.available_capacity > 0);

    // Delete is idempotent; unknown ids are success.
    for _ in 0..2 {
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: v1.volume_id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete");
    }
    assert!(
        !h.volume_file(&v1.volume_id).exists(),
        "backing file left behind"
    );
    let (c9, _) = code(
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: String::new(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(c9, Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_volumes_pages_and_reports_published_nodes() {
    let h = Harness::start().await;
    let mut c = h.controller.clone();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(create(&h, &unique("pvc"), 1).await.volume_id);
    }
    publish(&h, &ids[0], 0).await;
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .list_volumes(csi::ListVolumesRequest {
                max_entries: 2,
                starting_token: token.clone(),
            })
            .await
            .expect("list")
            .into_inner();
        pages += 1;
        for e in page.entries {
            let v = e.volume.expect("volume");
            let st = e.status.expect("status");
            if v.volume_id == ids[0] {
                assert_eq!(st.published_node_ids, vec![h.node_id(0)]);
            }
            seen.push(v.volume_id);
        }
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert!(pages >= 2);
    for id in &ids {
        assert!(seen.contains(id), "{id} missing from {seen:?}");
    }
    let (code_, _) = code(
        c.list_volumes(csi::ListVolumesRequest {
            max_entries: 0,
            starting_token: "not-a-token".into(),
        })
        .await,
    );
    assert_eq!(code_, Code::Aborted);
    unpublish(&h, &ids[0], 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_publish_unpublish_and_errors() {
    let h = Harness::start_with(Options { attach_limit: 2 }).await;
    let mut c = h.controller.clone();
    let v = create(&h, &unique("pvc"), 1).await;
    let ctx = publish(&h, &v.volume_id, 0).await;
    let device = ctx
        .get("device")
        .expect("device in publish context")
        .clone();
    assert!(device.starts_with("/dev/loop"), "{device}");
    assert_eq!(h.device_of(&v.volume_id), Path::new(&device));
    // Idempotent.
    assert_eq!(publish(&h, &v.volume_id, 0).await, ctx);
    // Attached elsewhere: FAILED_PRECONDITION.
    let (c1, _) = code(
        c.controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: v.volume_id.clone(),
            node_id: h.node_id(1),
            volume_capability: Some(mount_cap("")),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(c1, Code::FailedPrecondition);
    // Deleting an attached volume: FAILED_PRECONDITION.
    let (c2, _) = code(
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: v.volume_id.clone(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(c2, Code::FailedPrecondition);
    // Unknown volume / node: NOT_FOUND.
    for (vol, node) in [
        ("vol-missing0".to_string(), h.node_id(0)),
        (v.volume_id.clone(), "i-missing0".to_string()),
    ] {
        let (c3, _) = code(
            c.controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: vol,
                node_id: node,
                volume_capability: Some(mount_cap("")),
                ..Default::default()
            })
            .await,
        );
        assert_eq!(c3, Code::NotFound);
    }
    // Missing capability names the field.
    let (c4, m4) = code(
        c.controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: v.volume_id.clone(),
            node_id: h.node_id(0),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(c4, Code::InvalidArgument);
    assert!(m4.contains("volume_capability"), "{m4}");
    // Attach limit of 2: the third is RESOURCE_EXHAUSTED.
    let v2 = create(&h, &unique("pvc"), 1).await;
    let v3 = create(&h, &unique("pvc"), 1).await;
    publish(&h, &v2.volume_id, 0).await;
    let (c5, m5) = code(
        c.controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: v3.volume_id.clone(),
            node_id: h.node_id(0),
            volume_capability: Some(mount_cap("")),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(c5, Code::ResourceExhausted, "{m5}");
    // Unpublish is idempotent, also for unknown volumes.
    for _ in 0..2 {
        unpublish(&h, &v.volume_id, 0).await;
    }
    unpublish(&h, &v2.volume_id, 0).await;
    c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
        volume_id: "vol-missing0".into(),
        node_id: h.node_id(0),
        ..Default::default()
    })
    .await
    .expect("unpublish unknown volume");
    assert!(
        std::fs::symlink_metadata(h.root.join("by-id").join(format!("virtio-{}", v.volume_id)))
            .is_err()
    );
}

/// Write data, unpublish, unstage, detach, attach to another instance,
/// stage again: the data is intact and the filesystem was not recreated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_moving_between_nodes_and_is_never_reformatted() {
    let h = Harness::start().await;
    let v = create(&h, &unique("pvc"), 1).await;
    let id = v.volume_id.clone();
    let ctx = publish(&h, &id, 0).await;
    let staging = h.staging("a");
    let target = h.target("pod-a");
    stage(&h, 0, &id, &staging, "ext4", &ctx).await;
    // Staging again the same way is success; differently is ALREADY_EXISTS.
    stage(&h, 0, &id, &staging, "ext4", &ctx).await;
    let (c1, _) = code(
        h.node(0)
            .node_stage_volume(stage_req(&id, &staging, mount_cap("xfs"), &ctx))
            .await,
    );
    assert_eq!(c1, Code::AlreadyExists);
    let fs_before = fs_identity(&h.device_of(&id));
    assert!(fs_before.contains("TYPE=ext4"), "{fs_before}");
    node_publish(&h, 0, &id, &staging, &target).await;
    node_publish(&h, 0, &id, &staging, &target).await;
    write_file(&target.join("data.txt"), b"precious bytes");

    // Stats: bytes and inodes, condition normal.
    let stats = h
        .node(0)
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: target.to_string_lossy().into_owned(),
            ..Default::default()
        })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.usage.len(), 2);
    assert!(stats.usage[0].total > 9 * GIB, "{:?}", stats.usage);
    assert!(stats.usage[1].total > 0);
    assert!(!stats.volume_condition.expect("condition").abnormal);

    node_unpublish(&h, 0, &id, &target).await;
    node_unpublish(&h, 0, &id, &target).await;
    assert!(!target.exists(), "target left behind");
    // Stats on a path that is gone: NOT_FOUND.
    let (c2, _) = code(
        h.node(0)
            .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: id.clone(),
                volume_path: target.to_string_lossy().into_owned(),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(c2, Code::NotFound);
    unstage(&h, 0, &id, &staging).await;
    unstage(&h, 0, &id, &staging).await;
    assert!(!is_mounted(&staging));
    unpublish(&h, &id, 0).await;

    // Attach to the other instance and stage there.
    let ctx_b = publish(&h, &id, 1).await;
    let staging_b = h.staging("b");
    let target_b = h.target("pod-b");
    stage(&h, 1, &id, &staging_b, "ext4", &ctx_b).await;
    assert_eq!(
        fs_identity(&h.device_of(&id)),
        fs_before,
        "filesystem was recreated"
    );
    node_publish(&h, 1, &id, &staging_b, &target_b).await;
    assert_eq!(
        std::fs::read(target_b.join("data.txt")).expect("read"),
        b"precious bytes"
    );
    node_unpublish(&h, 1, &id, &target_b).await;
    unstage(&h, 1, &id, &staging_b).await;
    unpublish(&h, &id, 1).await;
}

/// A device carrying a filesystem is never formatted, even when the
/// request asks for another type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_filesystem_is_never_formatted() {
    let h = Harness::start().await;
    let v = create(&h, &unique("pvc"), 1).await;
    let ctx = publish(&h, &v.volume_id, 0).await;
    let dev = h.device_of(&v.volume_id);
    let out = std::process::Command::new("mkfs.xfs")
        .arg("-q")
        .arg(&dev)
        .output()
        .expect("mkfs.xfs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = fs_identity(&dev);
    let staging = h.staging("x");
    let (c1, m1) = code(
        h.node(0)
            .node_stage_volume(stage_req(&v.volume_id, &staging, mount_cap("ext4"), &ctx))
            .await,
    );
    assert_eq!(c1, Code::FailedPrecondition, "{m1}");
    assert_eq!(fs_identity(&dev), before, "device was touched");
    assert!(!is_mounted(&staging));
    // Without a type (or with the right one) it mounts what is there.
    stage(&h, 0, &v.volume_id, &staging, "", &ctx).await;
    let m = csi_driver::mount::find_by_target(&staging)
        .expect("mountinfo")
        .expect("mounted");
    assert_eq!(m.fs_type, "xfs");
    assert_eq!(fs_identity(&dev), before);
    unstage(&h, 0, &v.volume_id, &staging).await;
    unpublish(&h, &v.volume_id, 0).await;
}

async fn controller_expand(
    h: &Harness,
    id: &str,
    gib: i64,
    fs: &str,
) -> csi::ControllerExpandVolumeResponse {
    h.controller
        .clone()
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: id.to_string(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: gib * GIB,
                limit_bytes: 0,
            }),
            volume_capability: Some(mount_cap(fs)),
            ..Default::default()
        })
        .await
        .expect("controller expand")
        .into_inner()
}

async fn node_expand(h: &Harness, id: &str, target: &Path, gib: i64) -> i64 {
    h.node(0)
        .node_expand_volume(csi::NodeExpandVolumeRequest {
            volume_id: id.to_string(),
            volume_path: target.to_string_lossy().into_owned(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: gib * GIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("node expand")
        .into_inner()
        .capacity_bytes
}

fn fs_total(target: &Path) -> i64 {
    let st = nix::sys::statvfs::statvfs(target).expect("statvfs");
    st.blocks() as i64 * st.fragment_size() as i64
}

/// Whether this process may use the ext4 online-resize ioctl, which the
/// kernel reserves to CAP_SYS_RESOURCE (CI containers often drop it; a
/// node plugin runs privileged and has it).
fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

/// Online expansion (volume published, filesystem mounted) keeps data:
/// xfs always; ext4 when the online-resize ioctl is permitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_expansion_keeps_data() {
    let h = Harness::start().await;
    let mut kinds = vec!["xfs"];
    if has_cap_sys_resource() {
        kinds.push("ext4");
    }
    for fs in kinds {
        let v = create(&h, &unique("pvc"), 1).await;
        let id = v.volume_id.clone();
        let ctx = publish(&h, &id, 0).await;
        let staging = h.staging(&format!("e-{fs}"));
        let target = h.target(&format!("pod-e-{fs}"));
        stage(&h, 0, &id, &staging, fs, &ctx).await;
        node_publish(&h, 0, &id, &staging, &target).await;
        write_file(&target.join("keep"), b"still here");
        let resp = controller_expand(&h, &id, 25, fs).await;
        assert_eq!(resp.capacity_bytes, 30 * GIB);
        assert!(resp.node_expansion_required);
        assert_eq!(node_expand(&h, &id, &target, 30).await, 30 * GIB);
        assert!(
            fs_total(&target) > 25 * GIB,
            "{fs}: filesystem not grown: {}",
            fs_total(&target)
        );
        assert_eq!(
            std::fs::read(target.join("keep")).expect("read"),
            b"still here"
        );
        // Again: nothing left to do, still success.
        assert_eq!(node_expand(&h, &id, &target, 30).await, 30 * GIB);
        node_unpublish(&h, 0, &id, &target).await;
        unstage(&h, 0, &id, &staging).await;
        unpublish(&h, &id, 0).await;
    }
}

/// Offline expansion (disk grown while detached) keeps data: the ext4
/// filesystem is grown at the next stage, before it is mounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_expansion_keeps_data() {
    let h = Harness::start().await;
    let v = create(&h, &unique("pvc"), 1).await;
    let id = v.volume_id.clone();
    let ctx = publish(&h, &id, 0).await;
    let staging = h.staging("off");
    let target = h.target("pod-off");
    stage(&h, 0, &id, &staging, "ext4", &ctx).await;
    node_publish(&h, 0, &id, &staging, &target).await;
    write_file(&target.join("keep"), b"offline");
    node_unpublish(&h, 0, &id, &target).await;
    unstage(&h, 0, &id, &staging).await;
    unpublish(&h, &id, 0).await;

    let resp = controller_expand(&h, &id, 40, "ext4").await;
    assert_eq!(resp.capacity_bytes, 40 * GIB);
    let ctx = publish(&h, &id, 0).await;
    stage(&h, 0, &id, &staging, "ext4", &ctx).await;
    node_publish(&h, 0, &id, &staging, &target).await;
    assert_eq!(node_expand(&h, &id, &target, 40).await, 40 * GIB);
    assert!(
        fs_total(&target) > 35 * GIB,
        "filesystem not grown: {}",
        fs_total(&target)
    );
    assert_eq!(
        std::fs::read(target.join("keep")).expect("read"),
        b"offline"
    );
    node_unpublish(&h, 0, &id, &target).await;
    unstage(&h, 0, &id, &staging).await;
    unpublish(&h, &id, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_restore_and_clone_equal_their_source() {
    let h = Harness::start().await;
    let mut c = h.controller.clone();
    let v = create(&h, &unique("pvc"), 1).await;
    let id = v.volume_id.clone();
    let ctx = publish(&h, &id, 0).await;
    let staging = h.staging("s");
    let target = h.target("pod-s");
    stage(&h, 0, &id, &staging, "ext4", &ctx).await;
    node_publish(&h, 0, &id, &staging, &target).await;
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    write_file(&target.join("blob"), &payload);
    // Quiesce as a CO would (unpublish + unstage) so the copy is clean.
    node_unpublish(&h, 0, &id, &target).await;
    unstage(&h, 0, &id, &staging).await;

    let name = unique("snap");
    let req = csi::CreateSnapshotRequest {
        source_volume_id: id.clone(),
        name: name.clone(),
        ..Default::default()
    };
    let s1 = c
        .create_snapshot(req.clone())
        .await
        .expect("snapshot")
        .into_inner()
        .snapshot
        .expect("snap");
    assert!(s1.ready_to_use);
    assert_eq!(s1.source_volume_id, id);
    let s2 = c
        .create_snapshot(req)
        .await
        .expect("snapshot again")
        .into_inner()
        .snapshot
        .expect("snap");
    assert_eq!(s1.snapshot_id, s2.snapshot_id);
    let other = create(&h, &unique("pvc"), 1).await;
    let (c1, _) = code(
        c.create_snapshot(csi::CreateSnapshotRequest {
            source_volume_id: other.volume_id.clone(),
            name: name.clone(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(c1, Code::AlreadyExists);
    let (c2, _) = code(
        c.create_snapshot(csi::CreateSnapshotRequest {
            source_volume_id: "vol-missing0".into(),
            name: unique("snap"),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(c2, Code::NotFound);
    let listed = c
        .list_snapshots(csi::ListSnapshotsRequest {
            snapshot_id: s1.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.entries.len(), 1);
    let by_source = c
        .list_snapshots(csi::ListSnapshotsRequest {
            source_volume_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("list by source")
        .into_inner();
    assert_eq!(by_source.entries.len(), 1);
    let none = c
        .list_snapshots(csi::ListSnapshotsRequest {
            snapshot_id: "ss-missing0".into(),
            ..Default::default()
        })
        .await
        .expect("list unknown")
        .into_inner();
    assert!(none.entries.is_empty());

    // Restore into a bigger volume, and clone; both read back the payload.
    let mut restore = create_req(&unique("pvc"), 20, mount_cap(""));
    restore.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: s1.snapshot_id.clone(),
            },
        )),
    });
    let restored = c
        .create_volume(restore)
        .await
        .expect("restore")
        .into_inner()
        .volume
        .expect("volume");
    assert_eq!(restored.capacity_bytes, 20 * GIB);
    let mut clone = create_req(&unique("pvc"), 1, mount_cap(""));
    clone.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Volume(
            csi::volume_content_source::VolumeSource {
                volume_id: id.clone(),
            },
        )),
    });
    let cloned = c
        .create_volume(clone)
        .await
        .expect("clone")
        .into_inner()
        .volume
        .expect("volume");
    for (n, copy) in [restored.volume_id.clone(), cloned.volume_id.clone()]
        .iter()
        .enumerate()
    {
        let ctx = publish(&h, copy, 1).await;
        let staging = h.staging(&format!("r{n}"));
        let target = h.target(&format!("pod-r{n}"));
        stage(&h, 1, copy, &staging, "ext4", &ctx).await;
        node_publish(&h, 1, copy, &staging, &target).await;
        assert!(
            std::fs::read(target.join("blob")).expect("read copy") == payload,
            "copy differs"
        );
        node_unpublish(&h, 1, copy, &target).await;
        unstage(&h, 1, copy, &staging).await;
        unpublish(&h, copy, 1).await;
    }
    let mut missing = create_req(&unique("pvc"), 1, mount_cap(""));
    missing.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: "ss-missing0".into(),
            },
        )),
    });
    let (c3, _) = code(c.create_volume(missing).await);
    assert_eq!(c3, Code::NotFound);

    for _ in 0..2 {
        c.delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: s1.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete snapshot");
    }
    unpublish(&h, &id, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_block_publish_and_read_only_mounts() {
    let h = Harness::start().await;
    let v = create(&h, &unique("pvc"), 1).await;
    let id = v.volume_id.clone();
    let ctx = publish(&h, &id, 0).await;
    let staging = h.staging("blk");
    let target = h.target("pod-blk");
    h.node(0)
        .node_stage_volume(stage_req(&id, &staging, block_cap(), &ctx))
        .await
        .expect("stage block");
    h.node(0)
        .node_publish_volume(publish_req(&id, &staging, &target, block_cap(), false))
        .await
        .expect("publish block");
    h.node(0)
        .node_publish_volume(publish_req(&id, &staging, &target, block_cap(), false))
        .await
        .expect("publish block again");
    assert!(is_mounted(&target));
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&target)
            .expect("open target");
        f.seek(SeekFrom::Start(1 << 20)).expect("seek");
        f.write_all(b"raw block").expect("write");
        f.sync_all().expect("sync");
        let mut d = std::fs::File::open(h.device_of(&id)).expect("open device");
        d.seek(SeekFrom::Start(1 << 20)).expect("seek");
        let mut buf = [0u8; 9];
        d.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"raw block");
    }
    let stats = h
        .node(0)
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: target.to_string_lossy().into_owned(),
            ..Default::default()
        })
        .await
        .expect("block stats")
        .into_inner();
    assert_eq!(stats.usage[0].total, 10 * GIB);
    node_unpublish(&h, 0, &id, &target).await;
    assert!(!target.exists());

    unpublish(&h, &id, 0).await;

    // Read-only publish of a filesystem: the pod cannot write.
    let v2 = create(&h, &unique("pvc"), 1).await;
    let ctx2 = publish(&h, &v2.volume_id, 0).await;
    let fs_staging = h.staging("ro");
    let ro_target = h.target("pod-ro");
    stage(&h, 0, &v2.volume_id, &fs_staging, "ext4", &ctx2).await;
    h.node(0)
        .node_publish_volume(publish_req(
            &v2.volume_id,
            &fs_staging,
            &ro_target,
            mount_cap(""),
            true,
        ))
        .await
        .expect("publish read-only");
    let m = csi_driver::mount::find_by_target(&ro_target)
        .expect("mountinfo")
        .expect("mounted");
    assert!(m.read_only(), "{m:?}");
    assert!(
        std::fs::File::create(ro_target.join("nope")).is_err(),
        "read-only mount accepted a write"
    );
    // The same target asked read-write: ALREADY_EXISTS.
    let (c1, _) = code(
        h.node(0)
            .node_publish_volume(publish_req(
                &v2.volume_id,
                &fs_staging,
                &ro_target,
                mount_cap(""),
                false,
            ))
            .await,
    );
    assert_eq!(c1, Code::AlreadyExists);
    node_unpublish(&h, 0, &v2.volume_id, &ro_target).await;
    unstage(&h, 0, &v2.volume_id, &fs_staging).await;
    unpublish(&h, &v2.volume_id, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_rejects_bad_paths_and_unstaged_publish() {
    let h = Harness::start().await;
    let mut n = h.node(0);
    let good = h.staging("g");
    for (bad, field) in [
        ("relative/x", "staging_target_path"),
        ("/a/../b", "staging_target_path"),
    ] {
        let (c, m) = code(
            n.node_stage_volume(stage_req(
                "vol-abc",
                Path::new(bad),
                mount_cap(""),
                &HashMap::new(),
            ))
            .await,
        );
        assert_eq!(c, Code::InvalidArgument);
        assert!(m.contains(field), "{m}");
    }
    let (c1, m1) = code(
        n.node_stage_volume(stage_req("", &good, mount_cap(""), &HashMap::new()))
            .await,
    );
    assert_eq!(c1, Code::InvalidArgument);
    assert!(m1.contains("volume_id"), "{m1}");
    let mut no_cap = stage_req("vol-abc", &good, mount_cap(""), &HashMap::new());
    no_cap.volume_capability = None;
    let (c2, m2) = code(n.node_stage_volume(no_cap).await);
    assert_eq!(c2, Code::InvalidArgument);
    assert!(m2.contains("volume_capability"), "{m2}");
    // Publishing a volume that was never staged.
    let (c3, _) = code(
        n.node_publish_volume(publish_req(
            "vol-abc",
            &good,
            &h.target("p"),
            mount_cap(""),
            false,
        ))
        .await,
    );
    assert_eq!(c3, Code::FailedPrecondition);
    // Stats of an existing but unmounted path: condition abnormal.
    let stats = n
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: "vol-abc".into(),
            volume_path: good.to_string_lossy().into_owned(),
            ..Default::default()
        })
        .await
        .expect("stats")
        .into_inner();
    assert!(stats.volume_condition.expect("condition").abnormal);
    // A second call on a volume whose first call is still running (here:
    // waiting for a device that never appears) is ABORTED at once.
    let mut first = h.node(0);
    let req = stage_req("vol-neverattached", &good, mount_cap(""), &HashMap::new());
    let waiting = tokio::spawn(async move { first.node_stage_volume(req).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (c4, _) = code(
        n.node_stage_volume(stage_req(
            "vol-neverattached",
            &good,
            mount_cap(""),
            &HashMap::new(),
        ))
        .await,
    );
    assert_eq!(c4, Code::Aborted);
    let (c5, _) = code(waiting.await.expect("join"));
    assert_eq!(c5, Code::NotFound, "no device ever appeared");
    // Unpublish / unstage of things never done: success.
    node_unpublish(&h, 0, "vol-abc", &h.target("never")).await;
    unstage(&h, 0, "vol-abc", &good).await;
}

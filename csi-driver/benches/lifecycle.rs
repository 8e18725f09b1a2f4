//! Volume lifecycle benchmark against the emulator with real loop devices:
//! create + attach + stage + publish latency for one volume at a time and
//! for 50 at once, and the IaaS calls one full lifecycle costs.
//!
//! Run as root: `cargo bench -p csi-driver --bench lifecycle`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use csi_driver::csi;

/// The paths of one provisioned volume, for teardown.
struct Provisioned {
    id: String,
    node: usize,
    staging: PathBuf,
    target: PathBuf,
}

async fn provision(h: &Harness, node: usize, tag: &str) -> Provisioned {
    let mut c = h.controller.clone();
    let v = c
        .create_volume(create_req(
            &unique(&format!("bench-{tag}")),
            10,
            mount_cap("ext4"),
        ))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("volume");
    let ctx = c
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: v.volume_id.clone(),
            node_id: h.node_id(node),
            volume_capability: Some(mount_cap("ext4")),
            ..Default::default()
        })
        .await
        .expect("attach")
        .into_inner()
        .publish_context;
    let staging = h.staging(&format!("st-{tag}"));
    let target = h.target(&format!("pod-{tag}"));
    h.node(node)
        .node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: v.volume_id.clone(),
            publish_context: ctx,
            staging_target_path: staging.to_string_lossy().into_owned(),
            volume_capability: Some(mount_cap("ext4")),
            ..Default::default()
        })
        .await
        .expect("stage");
    h.node(node)
        .node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: v.volume_id.clone(),
            staging_target_path: staging.to_string_lossy().into_owned(),
            target_path: target.to_string_lossy().into_owned(),
            volume_capability: Some(mount_cap("ext4")),
            ..Default::default()
        })
        .await
        .expect("publish");
    Provisioned {
        id: v.volume_id,
        node,
        staging,
        target,
    }
}

async fn teardown(h: &Harness, p: Provisioned) {
    h.node(p.node)
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: p.id.clone(),
            target_path: p.target.to_string_lossy().into_owned(),
        })
        .await
        .expect("unpublish");
    h.node(p.node)
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: p.id.clone(),
            staging_target_path: p.staging.to_string_lossy().into_owned(),
        })
        .await
        .expect("unstage");
    let mut c = h.controller.clone();
    c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
        volume_id: p.id.clone(),
        node_id: h.node_id(p.node),
        ..Default::default()
    })
    .await
    .expect("detach");
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: p.id,
        ..Default::default()
    })
    .await
    .expect("delete");
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let k = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[k.min(sorted.len() - 1)]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let h = Harness::start_with(Options { attach_limit: 64 }).await;

        // IaaS calls of one full lifecycle.
        h.emulator.as_ref().expect("emulator").reset_stats();
        let p = provision(&h, 0, "calls").await;
        let up: BTreeMap<String, u64> = h
            .emulator
            .as_ref()
            .expect("emulator")
            .stats()
            .into_iter()
            .map(|(k, v)| (k, v.calls))
            .collect();
        teardown(&h, p).await;
        let all: BTreeMap<String, u64> = h
            .emulator
            .as_ref()
            .expect("emulator")
            .stats()
            .into_iter()
            .map(|(k, v)| (k, v.calls))
            .collect();
        println!(
            "IaaS calls, create+attach+stage+publish: {} {:?}",
            up.values().sum::<u64>(),
            up
        );
        println!(
            "IaaS calls, full lifecycle (incl. teardown): {} {:?}",
            all.values().sum::<u64>(),
            all
        );

        // One volume at a time.
        let mut single = Vec::new();
        for i in 0..10 {
            let t = Instant::now();
            let p = provision(&h, i % 2, &format!("s{i}")).await;
            single.push(t.elapsed());
            teardown(&h, p).await;
        }
        single.sort();
        println!(
            "one volume: create+attach+stage+publish p50 {:?} p90 {:?} max {:?} (n=10)",
            pct(&single, 50.0),
            pct(&single, 90.0),
            single[single.len() - 1]
        );

        // 50 at once, spread over the two nodes.
        let t = Instant::now();
        let mut tasks = Vec::new();
        let h = std::sync::Arc::new(h);
        for i in 0..50 {
            let h = h.clone();
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let p = provision(&h, i % 2, &format!("c{i}")).await;
                (t.elapsed(), p)
            }));
        }
        let mut lat = Vec::new();
        let mut provisioned = Vec::new();
        for task in tasks {
            let (d, p) = task.await.expect("task");
            lat.push(d);
            provisioned.push(p);
        }
        let wall = t.elapsed();
        lat.sort();
        println!(
            "50 concurrent volumes: wall {:?}; per volume p50 {:?} p90 {:?} max {:?}",
            wall,
            pct(&lat, 50.0),
            pct(&lat, 90.0),
            lat[lat.len() - 1]
        );
        for p in provisioned {
            teardown(&h, p).await;
        }
    });
}

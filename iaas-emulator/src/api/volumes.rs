//! Volumes and snapshots.

use iaas_client::model::{Snapshot, SnapshotResource, Volume, VolumeInstance};
use iaas_client::params::Params;
use serde_json::Value;

use super::{
    Ctx, Reply, check_idle, check_status, count, describe, id_list, ids_value, load, load_one,
    name_param, reply,
};
use crate::error::{ApiError, ApiResult};
use crate::jobs::JobOp;
use crate::util::{new_id, now_rfc3339};

/// Checks a size against the configured bounds of its type.
fn check_size(ctx: &Ctx<'_>, volume_type: i32, size: u64, param: &str) -> ApiResult<()> {
    let Some(b) = ctx.config.volume_types.get(&volume_type) else {
        let known: Vec<String> = ctx
            .config
            .volume_types
            .keys()
            .map(|k| k.to_string())
            .collect();
        return Err(ApiError::invalid(
            "volume_type",
            format!("{volume_type} is not one of {}", known.join(", ")),
        ));
    };
    if size < b.min_gb || size > b.max_gb || !size.is_multiple_of(b.step_gb) {
        return Err(ApiError::invalid(
            param,
            format!(
                "{size} GB is not allowed for volume type {volume_type}: {}..{} GB in steps of {}",
                b.min_gb, b.max_gb, b.step_gb
            ),
        ));
    }
    Ok(())
}

fn new_volume(ctx: &mut Ctx<'_>, name: &str, size: u64, volume_type: i32) -> String {
    let id = new_id("vol");
    let seq = ctx.seq();
    ctx.st.volumes.insert(
        &id,
        seq,
        Volume {
            volume_id: id.clone(),
            volume_name: name.to_string(),
            size,
            volume_type,
            status: "pending".into(),
            transition_status: "creating".into(),
            zone_id: ctx.config.zone.clone(),
            create_time: now_rfc3339(),
            ..Default::default()
        },
    );
    id
}

/// CreateVolumes.
pub fn create_volumes(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let size: u64 = p.req("size")?;
    let volume_type: i32 = p.opt("volume_type")?.unwrap_or(0);
    check_size(ctx, volume_type, size, "size")?;
    let name = name_param(p, "volume_name")?;
    let n = count(p)?;
    let ids: Vec<String> = (0..n)
        .map(|_| new_volume(ctx, &name, size, volume_type))
        .collect();
    let job = ctx.job(
        "CreateVolumes",
        &ids,
        JobOp::CreateVolumes {
            volumes: ids.clone(),
        },
    );
    Ok(reply([
        ("job_id", job.into()),
        ("volumes", ids_value(&ids)),
    ]))
}

/// DescribeVolumes.
pub fn describe_volumes(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let instance = p.get("instance_id").map(str::to_string);
    describe(
        ctx.st,
        p,
        ctx.st.volumes.ordered(),
        "volumes",
        "volume_set",
        |v: &Volume| {
            instance
                .as_ref()
                .is_none_or(|i| v.instance.as_ref().is_some_and(|a| &a.instance_id == i))
        },
        |_, _| {},
    )
}

/// AttachVolumes.
pub fn attach_volumes(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let ids = id_list(p, "volumes")?;
    let instance_id = p.required("instance")?.to_string();
    let inst = load_one(&ctx.st.instances, "instance", &instance_id)?.clone();
    check_status("instance", &instance_id, &inst.status, &["running"])?;
    check_idle("instance", &instance_id, &inst.transition_status)?;
    let vols = load(&ctx.st.volumes, "volume", &ids)?;
    for v in &vols {
        check_idle("volume", &v.volume_id, &v.transition_status)?;
        check_status("volume", &v.volume_id, &v.status, &["available"])?;
    }
    let attached = ctx
        .st
        .volumes
        .values()
        .filter(|v| {
            v.instance
                .as_ref()
                .is_some_and(|a| a.instance_id == instance_id)
        })
        .count();
    let limit = ctx.config.attach_limit as usize;
    if attached + ids.len() > limit {
        return Err(ApiError::insufficient(format!(
            "insufficient resources: instance {instance_id} reached its limit of {limit} volumes"
        )));
    }
    for id in &ids {
        if let Some(v) = ctx.st.volumes.get_mut(id) {
            v.transition_status = "attaching".into();
            // Recorded now so that concurrent attaches count against the limit.
            v.instance = Some(VolumeInstance {
                instance_id: instance_id.clone(),
                instance_name: inst.instance_name.clone(),
                device: String::new(),
            });
        }
    }
    let job = ctx.job(
        "AttachVolumes",
        &ids,
        JobOp::AttachVolumes {
            volumes: ids.clone(),
            instance: instance_id,
        },
    );
    Ok(reply([("job_id", job.into())]))
}

/// DetachVolumes.
pub fn detach_volumes(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let ids = id_list(p, "volumes")?;
    let instance_id = p.required("instance")?.to_string();
    load_one(&ctx.st.instances, "instance", &instance_id)?;
    for v in load(&ctx.st.volumes, "volume", &ids)? {
        check_idle("volume", &v.volume_id, &v.transition_status)?;
        check_status("volume", &v.volume_id, &v.status, &["in-use"])?;
        if v.instance
            .as_ref()
            .is_none_or(|a| a.instance_id != instance_id)
        {
            return Err(ApiError::new(
                iaas_client::codes::PERMISSION_DENIED,
                format!(
                    "volume [{}] is not attached to instance [{instance_id}]",
                    v.volume_id
                ),
            ));
        }
    }
    for id in &ids {
        if let Some(v) = ctx.st.volumes.get_mut(id) {
            v.transition_status = "detaching".into();
        }
    }
    let job = ctx.job(
        "DetachVolumes",
        &ids,
        JobOp::DetachVolumes {
            volumes: ids.clone(),
            instance: instance_id,
        },
    );
    Ok(reply([("job_id", job.into())]))
}

/// DeleteVolumes.
pub fn delete_volumes(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let ids = id_list(p, "volumes")?;
    for v in load(&ctx.st.volumes, "volume", &ids)? {
        check_idle("volume", &v.volume_id, &v.transition_status)?;
        check_status("volume", &v.volume_id, &v.status, &["available"])?;
        if let Some(s) = ctx.st.snapshots.values().find(|s| {
            s.transition_status == "creating"
                && s.resource
                    .as_ref()
                    .is_some_and(|r| r.resource_id == v.volume_id)
        }) {
            return Err(ApiError::busy(
                "volume",
                &v.volume_id,
                &format!("snapshot {} is being taken", s.snapshot_id),
            ));
        }
    }
    for id in &ids {
        if let Some(v) = ctx.st.volumes.get_mut(id) {
            v.transition_status = "deleting".into();
        }
    }
    let job = ctx.job(
        "DeleteVolumes",
        &ids,
        JobOp::DeleteVolumes {
            volumes: ids.clone(),
        },
    );
    Ok(reply([("job_id", job.into())]))
}

/// ResizeVolumes (grow only; attached volumes too).
pub fn resize_volumes(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let ids = id_list(p, "volumes")?;
    let size: u64 = p.req("size")?;
    for v in load(&ctx.st.volumes, "volume", &ids)? {
        check_idle("volume", &v.volume_id, &v.transition_status)?;
        check_status("volume", &v.volume_id, &v.status, &["available", "in-use"])?;
        if size <= v.size {
            return Err(ApiError::invalid(
                "size",
                format!(
                    "{size} GB does not grow volume [{}] of {} GB (shrinking is not supported)",
                    v.volume_id, v.size
                ),
            ));
        }
        check_size(ctx, v.volume_type, size, "size")?;
    }
    for id in &ids {
        if let Some(v) = ctx.st.volumes.get_mut(id) {
            v.transition_status = "resizing".into();
        }
    }
    let job = ctx.job(
        "ResizeVolumes",
        &ids,
        JobOp::ResizeVolumes {
            volumes: ids.clone(),
            size,
        },
    );
    Ok(reply([("job_id", job.into())]))
}

/// CloneVolumes.
pub fn clone_volumes(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let source = p.required("volume")?.to_string();
    let src = load_one(&ctx.st.volumes, "volume", &source)?.clone();
    check_idle("volume", &source, &src.transition_status)?;
    check_status("volume", &source, &src.status, &["available", "in-use"])?;
    let name = name_param(p, "volume_name")?;
    let n = count(p)?;
    let ids: Vec<String> = (0..n)
        .map(|_| new_volume(ctx, &name, src.size, src.volume_type))
        .collect();
    let job = ctx.job(
        "CloneVolumes",
        &ids,
        JobOp::CloneVolumes {
            source,
            volumes: ids.clone(),
        },
    );
    Ok(reply([
        ("job_id", job.into()),
        ("volumes", ids_value(&ids)),
    ]))
}

/// CreateSnapshots.
pub fn create_snapshots(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let vols = id_list(p, "resources")?;
    let name = name_param(p, "snapshot_name")?;
    let is_full = p.flag("is_full")?.unwrap_or(true);
    let sources = load(&ctx.st.volumes, "volume", &vols)?;
    for v in &sources {
        check_idle("volume", &v.volume_id, &v.transition_status)?;
        check_status("volume", &v.volume_id, &v.status, &["available", "in-use"])?;
    }
    let mut ids = Vec::new();
    for v in sources {
        let id = new_id("ss");
        let seq = ctx.seq();
        ctx.st.snapshots.insert(
            &id,
            seq,
            Snapshot {
                snapshot_id: id.clone(),
                snapshot_name: name.clone(),
                status: "pending".into(),
                transition_status: "creating".into(),
                size: v.size,
                is_full: i32::from(is_full),
                resource: Some(SnapshotResource {
                    resource_id: v.volume_id.clone(),
                    resource_type: "volume".into(),
                    resource_name: v.volume_name.clone(),
                }),
                create_time: now_rfc3339(),
                ..Default::default()
            },
        );
        ids.push(id);
    }
    let job = ctx.job(
        "CreateSnapshots",
        &ids,
        JobOp::CreateSnapshots {
            snapshots: ids.clone(),
        },
    );
    Ok(reply([
        ("job_id", job.into()),
        ("snapshots", ids_value(&ids)),
    ]))
}

/// DescribeSnapshots.
pub fn describe_snapshots(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let resource = p.get("resource_id").map(str::to_string);
    describe(
        ctx.st,
        p,
        ctx.st.snapshots.ordered(),
        "snapshots",
        "snapshot_set",
        |s: &Snapshot| {
            resource
                .as_ref()
                .is_none_or(|r| s.resource.as_ref().is_some_and(|x| &x.resource_id == r))
        },
        |_, _| {},
    )
}

/// DeleteSnapshots.
pub fn delete_snapshots(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let ids = id_list(p, "snapshots")?;
    for s in load(&ctx.st.snapshots, "snapshot", &ids)? {
        check_idle("snapshot", &s.snapshot_id, &s.transition_status)?;
        check_status("snapshot", &s.snapshot_id, &s.status, &["available"])?;
        // A volume being created from it still reads it.
        let reader = ctx.st.jobs.values().find(|j| {
            (j.job.status == "pending" || j.job.status == "working")
                && matches!(&j.op, Some(JobOp::CreateVolumeFromSnapshot { snapshot, .. }) if snapshot == &s.snapshot_id)
        });
        if let Some(j) = reader {
            return Err(ApiError::busy(
                "snapshot",
                &s.snapshot_id,
                &format!("job {} reads it", j.job.job_id),
            ));
        }
    }
    for id in &ids {
        if let Some(s) = ctx.st.snapshots.get_mut(id) {
            s.transition_status = "deleting".into();
        }
    }
    let job = ctx.job(
        "DeleteSnapshots",
        &ids,
        JobOp::DeleteSnapshots {
            snapshots: ids.clone(),
        },
    );
    Ok(reply([("job_id", job.into())]))
}

/// CreateVolumeFromSnapshot.
pub fn create_volume_from_snapshot(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let snapshot = p.required("snapshot")?.to_string();
    let snap = load_one(&ctx.st.snapshots, "snapshot", &snapshot)?.clone();
    check_idle("snapshot", &snapshot, &snap.transition_status)?;
    check_status("snapshot", &snapshot, &snap.status, &["available"])?;
    let name = name_param(p, "volume_name")?;
    let volume_type = snap
        .resource
        .as_ref()
        .and_then(|r| ctx.st.volumes.get(&r.resource_id))
        .map(|v| v.volume_type)
        .unwrap_or(0);
    let id = new_volume(ctx, &name, snap.size, volume_type);
    let job = ctx.job(
        "CreateVolumeFromSnapshot",
        std::slice::from_ref(&id),
        JobOp::CreateVolumeFromSnapshot {
            volume: id.clone(),
            snapshot,
        },
    );
    Ok(reply([
        ("job_id", job.into()),
        ("volume_id", Value::String(id)),
    ]))
}

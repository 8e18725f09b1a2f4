//! Instances, vxnets and jobs.

use iaas_client::model::{Instance, InstanceVxnet, Vxnet};
use iaas_client::params::Params;

use super::{
    Ctx, Reply, check_idle, check_status, count, describe, id_list, ids_value, load, load_one,
    name_param, reply,
};
use crate::error::{ApiError, ApiResult};
use crate::jobs::JobOp;
use crate::state::nic_id;
use crate::util::{new_id, now_rfc3339};

/// DescribeInstances.
pub fn describe_instances(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    describe(
        ctx.st,
        p,
        ctx.st.instances.ordered(),
        "instances",
        "instance_set",
        |_: &Instance| true,
        |_, _| {},
    )
}

/// RunInstances: allocates private IPs on the vxnet and boots.
pub fn run_instances(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let name = name_param(p, "instance_name")?;
    let instance_type = p.get("instance_type").unwrap_or("c1m2").to_string();
    let n = count(p)?;
    let vxnets = p.list("vxnets")?;
    let vxnet_id = match vxnets.as_slice() {
        [] => ctx
            .st
            .vxnets
            .ordered()
            .first()
            .map(|v| v.vxnet_id.clone())
            .ok_or_else(|| ApiError::invalid("vxnets.1", "no vxnet exists to default to"))?,
        [one] => one.clone(),
        _ => {
            return Err(ApiError::invalid(
                "vxnets.2",
                "instances have exactly one vxnet in this emulator",
            ));
        }
    };
    let vx = load_one(&ctx.st.vxnets, "vxnet", &vxnet_id)?.clone();
    let now = now_rfc3339();
    let mut ids = Vec::new();
    for _ in 0..n {
        let ip = ctx.st.allocate_private_ip(&vxnet_id, None)?;
        let id = new_id("i");
        let seq = ctx.seq();
        ctx.st.instances.insert(
            &id,
            seq,
            Instance {
                instance_id: id.clone(),
                instance_name: name.clone(),
                instance_type: instance_type.clone(),
                status: "pending".into(),
                transition_status: "creating".into(),
                vxnets: vec![InstanceVxnet {
                    vxnet_id: vxnet_id.clone(),
                    vxnet_name: vx.vxnet_name.clone(),
                    private_ip: ip,
                    nic_id: nic_id(),
                }],
                zone_id: ctx.config.zone.clone(),
                create_time: now.clone(),
                ..Default::default()
            },
        );
        ids.push(id);
    }
    let job = ctx.job(
        "RunInstances",
        &ids,
        JobOp::RunInstances {
            instances: ids.clone(),
        },
    );
    Ok(reply([
        ("job_id", job.into()),
        ("instances", ids_value(&ids)),
    ]))
}

/// Shared shape of Start/Stop/Terminate.
fn transition(
    ctx: &mut Ctx<'_>,
    p: &Params,
    action: &str,
    allowed: &[&str],
    transition: &str,
    op: fn(Vec<String>) -> JobOp,
) -> ApiResult<Reply> {
    let ids = id_list(p, "instances")?;
    for i in load(&ctx.st.instances, "instance", &ids)? {
        check_idle("instance", &i.instance_id, &i.transition_status)?;
        check_status("instance", &i.instance_id, &i.status, allowed)?;
    }
    if action == "TerminateInstances" {
        // A volume mid-attach/detach would race the forced detach.
        if let Some(v) = ctx.st.volumes.values().find(|v| {
            !v.transition_status.is_empty()
                && v.instance
                    .as_ref()
                    .is_some_and(|a| ids.contains(&a.instance_id))
        }) {
            return Err(ApiError::busy("volume", &v.volume_id, &v.transition_status));
        }
    }
    for id in &ids {
        if let Some(i) = ctx.st.instances.get_mut(id) {
            i.transition_status = transition.into();
        }
    }
    let job = ctx.job(action, &ids, op(ids.clone()));
    Ok(reply([("job_id", job.into())]))
}

/// StopInstances.
pub fn stop_instances(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    transition(
        ctx,
        p,
        "StopInstances",
        &["running"],
        "stopping",
        |instances| JobOp::StopInstances { instances },
    )
}

/// StartInstances.
pub fn start_instances(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    transition(
        ctx,
        p,
        "StartInstances",
        &["stopped"],
        "starting",
        |instances| JobOp::StartInstances { instances },
    )
}

/// TerminateInstances (attached volumes are detached by the job).
pub fn terminate_instances(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    transition(
        ctx,
        p,
        "TerminateInstances",
        &["running", "stopped"],
        "terminating",
        |instances| JobOp::TerminateInstances { instances },
    )
}

/// DescribeVxnets (`verbose=1` lists the instances on each).
pub fn describe_vxnets(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let verbose = p.flag("verbose")?.unwrap_or(false);
    describe(
        ctx.st,
        p,
        ctx.st.vxnets.ordered(),
        "vxnets",
        "vxnet_set",
        |_: &Vxnet| true,
        |st, vx| {
            if verbose {
                vx.instance_ids = st
                    .instances
                    .ordered()
                    .into_iter()
                    .filter(|i| {
                        i.status != "terminated"
                            && i.vxnets.iter().any(|n| n.vxnet_id == vx.vxnet_id)
                    })
                    .map(|i| i.instance_id.clone())
                    .collect();
            }
        },
    )
}

/// DescribeJobs.
pub fn describe_jobs(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let jobs: Vec<&iaas_client::model::Job> =
        ctx.st.jobs.ordered().into_iter().map(|j| &j.job).collect();
    describe(ctx.st, p, jobs, "jobs", "job_set", |_| true, |_, _| {})
}

//! The job engine.
//!
//! An asynchronous action validates its request, marks the resources with a
//! `transition_status`, persists a `pending` job carrying a [`JobOp`] and
//! answers with the job id. A worker task then moves the job to `working`,
//! performs the data-plane calls on a blocking thread, and commits the final
//! resource state together with `successful` — or, on failure, rolls the
//! resources back to their pre-job state and records `failed` with
//! `error_code`/`error_message`. Every step is committed before the next.
//!
//! Restart: jobs found `pending` or `working` in the store are resumed from
//! the start of their effect. Driver calls are idempotent, so replaying a
//! half-done effect is safe; this keeps the client's contract (a job always
//! ends) without a separate recovery path.

use std::sync::Arc;
use std::time::Duration;

use iaas_client::codes;
use iaas_client::model::{EipRef, Instance, Job, RouterStatic, Vxnet};
use serde::{Deserialize, Serialize};

use crate::dataplane::{DataPlane, DataPlaneError, LbSpec, ResolvedBackend};
use crate::emulator::Shared;
use crate::error::ApiResult;
use crate::state::State;
use crate::util::{new_id, now_rfc3339};

/// A job as stored: the public record and what it does.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct JobRec {
    /// What DescribeJobs shows.
    pub job: Job,
    /// The effect (None only for records written by a newer version).
    pub op: Option<JobOp>,
}

/// The effect of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum JobOp {
    CreateVolumes {
        volumes: Vec<String>,
    },
    CreateVolumeFromSnapshot {
        volume: String,
        snapshot: String,
    },
    CloneVolumes {
        source: String,
        volumes: Vec<String>,
    },
    DeleteVolumes {
        volumes: Vec<String>,
    },
    AttachVolumes {
        volumes: Vec<String>,
        instance: String,
    },
    DetachVolumes {
        volumes: Vec<String>,
        instance: String,
    },
    ResizeVolumes {
        volumes: Vec<String>,
        size: u64,
    },
    CreateSnapshots {
        snapshots: Vec<String>,
    },
    DeleteSnapshots {
        snapshots: Vec<String>,
    },
    RunInstances {
        instances: Vec<String>,
    },
    StartInstances {
        instances: Vec<String>,
    },
    StopInstances {
        instances: Vec<String>,
    },
    TerminateInstances {
        instances: Vec<String>,
    },
    UpdateRouters {
        routers: Vec<String>,
    },
    CreateLoadBalancer {
        loadbalancer: String,
        eips: Vec<String>,
    },
    UpdateLoadBalancers {
        loadbalancers: Vec<String>,
    },
    DeleteLoadBalancers {
        loadbalancers: Vec<String>,
    },
    AssociateEips {
        loadbalancer: String,
        eips: Vec<String>,
    },
    DissociateEips {
        loadbalancer: String,
        eips: Vec<String>,
    },
    ReleaseEips {
        eips: Vec<String>,
    },
    ApplyLoadBalancerPolicy {
        policy: String,
    },
    ApplySecurityGroup {
        security_group: String,
    },
}

/// One data-plane call.
#[derive(Debug, Clone)]
enum Call {
    VolCreate(String, u64),
    VolFromSnapshot(String, String, u64),
    VolClone(String, String, u64),
    VolDelete(String),
    VolAttach(String, String),
    VolDetach(String, String),
    VolResize(String, u64),
    Snapshot(String, String),
    SnapshotDelete(String),
    InstanceUp(Box<Instance>, Box<Vxnet>),
    InstanceDown(String),
    RouterStatics(String, Vec<RouterStatic>),
    LbApply(Box<LbSpec>),
    LbDelete(String),
}

/// What the calls produced (attach devices).
#[derive(Debug, Default)]
struct Outcome {
    devices: Vec<(String, String)>,
    /// Router id -> the statics that were programmed.
    applied_statics: Vec<(String, Vec<String>)>,
}

fn run_calls(dp: &DataPlane, calls: &[Call], out: &mut Outcome) -> Result<(), DataPlaneError> {
    for call in calls {
        match call {
            Call::VolCreate(v, s) => dp.volumes.create(v, *s)?,
            Call::VolFromSnapshot(ss, v, s) => dp.volumes.create_from_snapshot(ss, v, *s)?,
            Call::VolClone(src, v, s) => dp.volumes.clone_volume(src, v, *s)?,
            Call::VolDelete(v) => dp.volumes.delete(v)?,
            Call::VolAttach(v, i) => {
                let dev = dp.volumes.attach(v, i)?;
                out.devices.push((v.clone(), dev));
            }
            Call::VolDetach(v, i) => dp.volumes.detach(v, i)?,
            Call::VolResize(v, s) => dp.volumes.resize(v, *s)?,
            Call::Snapshot(v, ss) => dp.volumes.snapshot(v, ss)?,
            Call::SnapshotDelete(ss) => dp.volumes.delete_snapshot(ss)?,
            Call::InstanceUp(i, vx) => dp.network.instance_up(i, vx)?,
            Call::InstanceDown(i) => dp.network.instance_down(i)?,
            Call::RouterStatics(r, statics) => {
                dp.network.apply_router_statics(r, statics)?;
                out.applied_statics.push((
                    r.clone(),
                    statics.iter().map(|s| s.router_static_id.clone()).collect(),
                ));
            }
            Call::LbApply(spec) => dp.lbs.apply(spec)?,
            Call::LbDelete(id) => dp.lbs.delete(id)?,
        }
    }
    Ok(())
}

/// Best-effort compensation after a failure; errors are logged only.
fn run_cleanup(dp: &DataPlane, calls: &[Call]) {
    for call in calls {
        let mut ignored = Outcome::default();
        if let Err(e) = run_calls(dp, std::slice::from_ref(call), &mut ignored) {
            tracing::warn!(error = %e, "cleanup after failed job");
        }
    }
}

/// Creates a pending job record (the caller commits it with the request).
pub fn new_job(state: &mut State, action: &str, resource_ids: &[String], op: JobOp) -> String {
    let id = new_id("j");
    let now = now_rfc3339();
    let seq = state.next_seq();
    state.jobs.insert(
        &id,
        seq,
        JobRec {
            job: Job {
                job_id: id.clone(),
                job_action: action.to_string(),
                status: "pending".to_string(),
                resource_ids: resource_ids.join(","),
                create_time: now.clone(),
                status_time: now,
                ..Default::default()
            },
            op: Some(op),
        },
    );
    id
}

fn set_job_status(state: &mut State, job_id: &str, status: &str, error: Option<(i32, String)>) {
    if let Some(rec) = state.jobs.get_mut(job_id) {
        rec.job.status = status.to_string();
        rec.job.status_time = now_rfc3339();
        if let Some((code, message)) = error {
            rec.job.error_code = code;
            rec.job.error_message = message;
        }
    }
}

/// Runs one job to its end. Safe to call again for a job interrupted by a crash.
pub async fn run_job(shared: Arc<Shared>, job_id: String) {
    let delay = shared.job_delay();
    sleep(delay).await;
    let action = {
        let mut st = shared.state.lock().await;
        let Some(rec) = st.jobs.get(&job_id) else {
            return;
        };
        if rec.job.status != "pending" && rec.job.status != "working" {
            return;
        }
        let action = rec.job.job_action.clone();
        set_job_status(&mut st, &job_id, "working", None);
        if shared.commit(st).await.is_err() {
            return;
        }
        action
    };
    let stuck = shared
        .faults
        .lock()
        .map(|mut f| f.job_sticks(&action))
        .unwrap_or(false);
    if stuck {
        tracing::info!(job = %job_id, %action, "job held in working by a stuck fault");
        while shared
            .faults
            .lock()
            .map(|f| f.still_stuck(&action))
            .unwrap_or(false)
        {
            sleep(Duration::from_millis(20)).await;
        }
    }
    sleep(delay).await;

    let injected = shared
        .faults
        .lock()
        .map(|mut f| f.job_fails(&action))
        .unwrap_or(false);
    let (op, calls, gens) = {
        let st = shared.state.lock().await;
        let Some(op) = st.jobs.get(&job_id).and_then(|r| r.op.clone()) else {
            drop(st);
            finish_failed(
                &shared,
                &job_id,
                None,
                codes::INTERNAL,
                "job has no operation".into(),
            )
            .await;
            return;
        };
        if injected {
            drop(st);
            finish_failed(
                &shared,
                &job_id,
                Some(&op),
                codes::INTERNAL,
                format!("injected job failure ({action})"),
            )
            .await;
            return;
        }
        let calls = plan(&st, &op);
        let gens = lb_ids(&op)
            .into_iter()
            .map(|id| {
                let g = st.lb_generation(&id);
                (id, g)
            })
            .collect::<Vec<_>>();
        // The plan may reflect other requests' changes still being
        // committed: act on the data plane only once they are durable. On a
        // store failure the job stays working and resumes at the next start.
        if shared.commit(st).await.is_err() {
            return;
        }
        (op, calls, gens)
    };
    let dp = shared.dp.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut out = Outcome::default();
        run_calls(&dp, &calls, &mut out).map(|_| out)
    })
    .await;
    match result {
        Ok(Ok(out)) => {
            let mut st = shared.state.lock().await;
            let extra = finish_ok(&mut st, &op, &out, &gens);
            set_job_status(&mut st, &job_id, "successful", None);
            if shared.commit(st).await.is_ok() && !extra.is_empty() {
                // Follow-up applies (LBs re-applied after a security group or
                // policy change) run after the state is committed.
                let dp = shared.dp.clone();
                let _ = tokio::task::spawn_blocking(move || run_cleanup(&dp, &extra)).await;
            }
        }
        Ok(Err(e)) => {
            finish_failed(&shared, &job_id, Some(&op), codes::INTERNAL, e.to_string()).await
        }
        Err(e) => {
            finish_failed(
                &shared,
                &job_id,
                Some(&op),
                codes::INTERNAL,
                format!("job task: {e}"),
            )
            .await
        }
    }
}

async fn sleep(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

async fn finish_failed(
    shared: &Arc<Shared>,
    job_id: &str,
    op: Option<&JobOp>,
    code: i32,
    message: String,
) {
    tracing::warn!(job = %job_id, code, %message, "job failed");
    let mut st = shared.state.lock().await;
    let cleanup = op.map(|op| rollback(&mut st, op)).unwrap_or_default();
    set_job_status(&mut st, job_id, "failed", Some((code, message)));
    let _ = shared.commit(st).await;
    if !cleanup.is_empty() {
        let dp = shared.dp.clone();
        let _ = tokio::task::spawn_blocking(move || run_cleanup(&dp, &cleanup)).await;
    }
}

/// The data-plane calls of an operation, computed from the current state.
fn plan(st: &State, op: &JobOp) -> Vec<Call> {
    let size_of = |v: &str| st.volumes.get(v).map(|v| v.size).unwrap_or(0);
    match op {
        JobOp::CreateVolumes { volumes } => volumes
            .iter()
            .map(|v| Call::VolCreate(v.clone(), size_of(v)))
            .collect(),
        JobOp::CreateVolumeFromSnapshot { volume, snapshot } => {
            vec![Call::VolFromSnapshot(
                snapshot.clone(),
                volume.clone(),
                size_of(volume),
            )]
        }
        JobOp::CloneVolumes { source, volumes } => volumes
            .iter()
            .map(|v| Call::VolClone(source.clone(), v.clone(), size_of(v)))
            .collect(),
        JobOp::DeleteVolumes { volumes } => {
            volumes.iter().map(|v| Call::VolDelete(v.clone())).collect()
        }
        JobOp::AttachVolumes { volumes, instance } => volumes
            .iter()
            .map(|v| Call::VolAttach(v.clone(), instance.clone()))
            .collect(),
        JobOp::DetachVolumes { volumes, instance } => volumes
            .iter()
            .map(|v| Call::VolDetach(v.clone(), instance.clone()))
            .collect(),
        JobOp::ResizeVolumes { volumes, size } => volumes
            .iter()
            .map(|v| Call::VolResize(v.clone(), *size))
            .collect(),
        JobOp::CreateSnapshots { snapshots } => snapshots
            .iter()
            .filter_map(|s| {
                let src = st.snapshots.get(s)?.resource.as_ref()?.resource_id.clone();
                Some(Call::Snapshot(src, s.clone()))
            })
            .collect(),
        JobOp::DeleteSnapshots { snapshots } => snapshots
            .iter()
            .map(|s| Call::SnapshotDelete(s.clone()))
            .collect(),
        JobOp::RunInstances { instances } | JobOp::StartInstances { instances } => instances
            .iter()
            .filter_map(|i| instance_up_call(st, i))
            .collect(),
        JobOp::StopInstances { instances } => instances
            .iter()
            .map(|i| Call::InstanceDown(i.clone()))
            .collect(),
        JobOp::TerminateInstances { instances } => {
            let mut calls: Vec<Call> = Vec::new();
            for i in instances {
                for v in st.volumes.values() {
                    if v.instance.as_ref().is_some_and(|a| &a.instance_id == i) {
                        calls.push(Call::VolDetach(v.volume_id.clone(), i.clone()));
                    }
                }
                calls.push(Call::InstanceDown(i.clone()));
            }
            calls
        }
        JobOp::UpdateRouters { routers } => routers
            .iter()
            .map(|r| {
                let statics: Vec<RouterStatic> = st
                    .statics
                    .ordered()
                    .into_iter()
                    .filter(|s| &s.router_id == r && s.disabled == 0)
                    .map(|s| RouterStatic {
                        is_applied: 1,
                        ..s.clone()
                    })
                    .collect();
                Call::RouterStatics(r.clone(), statics)
            })
            .collect(),
        JobOp::CreateLoadBalancer { loadbalancer, eips }
        | JobOp::AssociateEips { loadbalancer, eips } => {
            let mut refs = st
                .lbs
                .get(loadbalancer)
                .map(|lb| lb.eips.clone())
                .unwrap_or_default();
            for e in eips {
                if let Some(eip) = st.eips.get(e)
                    && !refs.iter().any(|r| &r.eip_id == e)
                {
                    refs.push(EipRef {
                        eip_id: eip.eip_id.clone(),
                        eip_addr: eip.eip_addr.clone(),
                        eip_name: eip.eip_name.clone(),
                    });
                }
            }
            lb_spec(st, loadbalancer, Some(refs))
                .map(|s| Call::LbApply(Box::new(s)))
                .into_iter()
                .collect()
        }
        JobOp::DissociateEips { loadbalancer, eips } => {
            let refs = st.lbs.get(loadbalancer).map(|lb| {
                lb.eips
                    .iter()
                    .filter(|r| !eips.contains(&r.eip_id))
                    .cloned()
                    .collect()
            });
            lb_spec(st, loadbalancer, refs)
                .map(|s| Call::LbApply(Box::new(s)))
                .into_iter()
                .collect()
        }
        JobOp::UpdateLoadBalancers { loadbalancers } => loadbalancers
            .iter()
            .filter_map(|lb| lb_spec(st, lb, None))
            .map(|s| Call::LbApply(Box::new(s)))
            .collect(),
        JobOp::DeleteLoadBalancers { loadbalancers } => loadbalancers
            .iter()
            .map(|lb| Call::LbDelete(lb.clone()))
            .collect(),
        JobOp::ReleaseEips { .. } => Vec::new(),
        // Effects on LBs are follow-ups computed at finish (see finish_ok).
        JobOp::ApplyLoadBalancerPolicy { .. } | JobOp::ApplySecurityGroup { .. } => Vec::new(),
    }
}

fn instance_up_call(st: &State, id: &str) -> Option<Call> {
    // An adopted host brings its own network.
    let inst = st.instances.get(id).filter(|i| !i.adopted)?;
    let vx = inst
        .vxnets
        .first()
        .and_then(|n| st.vxnets.get(&n.vxnet_id))?;
    let inst = Instance {
        status: "running".to_string(),
        transition_status: String::new(),
        ..inst.clone()
    };
    Some(Call::InstanceUp(Box::new(inst), Box::new(vx.clone())))
}

fn clear_transition_volumes(st: &mut State, ids: &[String]) {
    for id in ids {
        if let Some(v) = st.volumes.get_mut(id) {
            v.transition_status.clear();
        }
    }
}

fn set_instances(st: &mut State, ids: &[String], status: Option<&str>) {
    for id in ids {
        if let Some(i) = st.instances.get_mut(id) {
            i.transition_status.clear();
            if let Some(s) = status {
                i.status = s.to_string();
            }
        }
    }
}

/// LBs whose configuration an operation applies.
fn lb_ids(op: &JobOp) -> Vec<String> {
    match op {
        JobOp::CreateLoadBalancer { loadbalancer, .. }
        | JobOp::AssociateEips { loadbalancer, .. }
        | JobOp::DissociateEips { loadbalancer, .. } => vec![loadbalancer.clone()],
        JobOp::UpdateLoadBalancers { loadbalancers } => loadbalancers.clone(),
        _ => Vec::new(),
    }
}

/// Clears transitions; `applied` marks LBs applied only when their
/// configuration generation is still the one the job applied.
fn set_lbs(
    st: &mut State,
    ids: &[String],
    status: Option<&str>,
    applied: Option<&[(String, u64)]>,
) {
    for id in ids {
        let current = st.lb_generation(id);
        let fresh =
            applied.is_some_and(|gens| gens.iter().any(|(g_id, g)| g_id == id && *g == current));
        if let Some(lb) = st.lbs.get_mut(id) {
            lb.transition_status.clear();
            if let Some(s) = status {
                lb.status = s.to_string();
            }
            if fresh {
                lb.is_applied = 1;
            }
        }
    }
}

fn set_eips(st: &mut State, ids: &[String], lb: Option<&str>) {
    let lb_name = lb
        .and_then(|id| st.lbs.get(id))
        .map(|l| l.loadbalancer_name.clone())
        .unwrap_or_default();
    for id in ids {
        if let Some(e) = st.eips.get_mut(id) {
            e.transition_status.clear();
            match lb {
                Some(lb) => {
                    e.status = "associated".to_string();
                    e.resource = Some(iaas_client::model::EipResource {
                        resource_id: lb.to_string(),
                        resource_type: "loadbalancer".to_string(),
                        resource_name: lb_name.clone(),
                    });
                }
                None => {
                    e.status = "available".to_string();
                    e.resource = None;
                }
            }
        }
    }
}

/// Applies a successful effect; returns follow-up calls to run after commit.
fn finish_ok(st: &mut State, op: &JobOp, out: &Outcome, gens: &[(String, u64)]) -> Vec<Call> {
    match op {
        JobOp::CreateVolumes { volumes } | JobOp::CloneVolumes { volumes, .. } => {
            for id in volumes {
                if let Some(v) = st.volumes.get_mut(id) {
                    v.status = "available".into();
                    v.transition_status.clear();
                }
            }
        }
        JobOp::CreateVolumeFromSnapshot { volume, .. } => {
            if let Some(v) = st.volumes.get_mut(volume) {
                v.status = "available".into();
                v.transition_status.clear();
            }
        }
        JobOp::DeleteVolumes { volumes } => {
            for id in volumes {
                st.volumes.remove(id);
                st.untag_resource(id);
            }
        }
        JobOp::AttachVolumes { volumes, .. } => {
            for id in volumes {
                let dev = out
                    .devices
                    .iter()
                    .find(|(v, _)| v == id)
                    .map(|(_, d)| d.clone());
                if let Some(v) = st.volumes.get_mut(id) {
                    v.status = "in-use".into();
                    v.transition_status.clear();
                    if let (Some(a), Some(d)) = (v.instance.as_mut(), dev) {
                        a.device = d;
                    }
                }
            }
        }
        JobOp::DetachVolumes { volumes, .. } => {
            for id in volumes {
                if let Some(v) = st.volumes.get_mut(id) {
                    v.status = "available".into();
                    v.transition_status.clear();
                    v.instance = None;
                }
            }
        }
        JobOp::ResizeVolumes { volumes, size } => {
            for id in volumes {
                if let Some(v) = st.volumes.get_mut(id) {
                    v.size = *size;
                    v.transition_status.clear();
                }
            }
        }
        JobOp::CreateSnapshots { snapshots } => {
            for id in snapshots {
                if let Some(s) = st.snapshots.get_mut(id) {
                    s.status = "available".into();
                    s.transition_status.clear();
                }
            }
        }
        JobOp::DeleteSnapshots { snapshots } => {
            for id in snapshots {
                st.snapshots.remove(id);
                st.untag_resource(id);
            }
        }
        JobOp::RunInstances { instances } | JobOp::StartInstances { instances } => {
            set_instances(st, instances, Some("running"))
        }
        JobOp::StopInstances { instances } => set_instances(st, instances, Some("stopped")),
        JobOp::TerminateInstances { instances } => {
            for i in instances {
                let attached = st
                    .volumes
                    .ids_where(|v| v.instance.as_ref().is_some_and(|a| &a.instance_id == i));
                for v in attached {
                    if let Some(v) = st.volumes.get_mut(&v) {
                        v.status = "available".into();
                        v.instance = None;
                        v.transition_status.clear();
                    }
                }
            }
            set_instances(st, instances, Some("terminated"))
        }
        JobOp::UpdateRouters { routers } => {
            for r in routers {
                let programmed: Vec<String> = out
                    .applied_statics
                    .iter()
                    .find(|(id, _)| id == r)
                    .map(|(_, s)| s.clone())
                    .unwrap_or_default();
                for s in &programmed {
                    if let Some(s) = st.statics.get_mut(s) {
                        s.is_applied = 1;
                    }
                }
                // Statics added while the job ran are not programmed yet.
                let current = st
                    .statics
                    .ids_where(|s| &s.router_id == r && s.disabled == 0);
                let complete = current.iter().all(|c| programmed.contains(c));
                if let Some(rt) = st.routers.get_mut(r) {
                    rt.transition_status.clear();
                    if complete {
                        rt.is_applied = 1;
                    }
                }
            }
        }
        JobOp::CreateLoadBalancer { loadbalancer, eips }
        | JobOp::AssociateEips { loadbalancer, eips } => {
            set_eips(st, eips, Some(loadbalancer));
            let refs: Vec<EipRef> = eips
                .iter()
                .filter_map(|e| st.eips.get(e))
                .map(|e| EipRef {
                    eip_id: e.eip_id.clone(),
                    eip_addr: e.eip_addr.clone(),
                    eip_name: e.eip_name.clone(),
                })
                .collect();
            if let Some(lb) = st.lbs.get_mut(loadbalancer) {
                for r in refs {
                    if !lb.eips.iter().any(|x| x.eip_id == r.eip_id) {
                        lb.eips.push(r);
                    }
                }
            }
            set_lbs(
                st,
                std::slice::from_ref(loadbalancer),
                Some("active"),
                Some(gens),
            );
        }
        JobOp::DissociateEips { loadbalancer, eips } => {
            set_eips(st, eips, None);
            if let Some(lb) = st.lbs.get_mut(loadbalancer) {
                lb.eips.retain(|r| !eips.contains(&r.eip_id));
            }
            set_lbs(st, std::slice::from_ref(loadbalancer), None, Some(gens));
        }
        JobOp::UpdateLoadBalancers { loadbalancers } => {
            set_lbs(st, loadbalancers, None, Some(gens));
            let used: Vec<String> = st
                .backends
                .values()
                .filter(|b| {
                    loadbalancers.contains(&b.loadbalancer_id)
                        && !b.loadbalancer_policy_id.is_empty()
                })
                .map(|b| b.loadbalancer_policy_id.clone())
                .collect();
            for p in used {
                if let Some(p) = st.policies.get_mut(&p) {
                    p.is_applied = 1;
                }
            }
        }
        JobOp::DeleteLoadBalancers { loadbalancers } => {
            for id in loadbalancers {
                st.remove_loadbalancer(id);
            }
        }
        JobOp::ReleaseEips { eips } => {
            for id in eips {
                st.eips.remove(id);
                st.untag_resource(id);
            }
        }
        JobOp::ApplyLoadBalancerPolicy { policy } => {
            if let Some(p) = st.policies.get_mut(policy) {
                p.is_applied = 1;
            }
            let lbs: Vec<String> = st
                .backends
                .values()
                .filter(|b| &b.loadbalancer_policy_id == policy)
                .map(|b| b.loadbalancer_id.clone())
                .collect();
            return reapply(st, lbs);
        }
        JobOp::ApplySecurityGroup { security_group } => {
            if let Some(sg) = st.sgs.get_mut(security_group) {
                sg.is_applied = 1;
            }
            let lbs = st
                .lbs
                .ids_where(|lb| &lb.security_group_id == security_group);
            return reapply(st, lbs);
        }
    }
    Vec::new()
}

fn reapply(st: &State, mut lbs: Vec<String>) -> Vec<Call> {
    lbs.sort();
    lbs.dedup();
    lbs.iter()
        .filter(|id| st.lbs.get(id).is_some_and(|lb| lb.status == "active"))
        .filter_map(|id| lb_spec(st, id, None))
        .map(|s| Call::LbApply(Box::new(s)))
        .collect()
}

/// Rolls resources back to their pre-job state; returns compensating calls.
fn rollback(st: &mut State, op: &JobOp) -> Vec<Call> {
    match op {
        JobOp::CreateVolumes { volumes } | JobOp::CloneVolumes { volumes, .. } => {
            for v in volumes {
                st.volumes.remove(v);
                st.untag_resource(v);
            }
            volumes.iter().map(|v| Call::VolDelete(v.clone())).collect()
        }
        JobOp::CreateVolumeFromSnapshot { volume, .. } => {
            st.volumes.remove(volume);
            st.untag_resource(volume);
            vec![Call::VolDelete(volume.clone())]
        }
        JobOp::DeleteVolumes { volumes }
        | JobOp::ResizeVolumes { volumes, .. }
        | JobOp::DetachVolumes { volumes, .. } => {
            clear_transition_volumes(st, volumes);
            Vec::new()
        }
        JobOp::AttachVolumes { volumes, instance } => {
            for id in volumes {
                if let Some(v) = st.volumes.get_mut(id) {
                    v.transition_status.clear();
                    v.instance = None;
                    v.status = "available".into();
                }
            }
            volumes
                .iter()
                .map(|v| Call::VolDetach(v.clone(), instance.clone()))
                .collect()
        }
        JobOp::CreateSnapshots { snapshots } => {
            for s in snapshots {
                st.snapshots.remove(s);
                st.untag_resource(s);
            }
            snapshots
                .iter()
                .map(|s| Call::SnapshotDelete(s.clone()))
                .collect()
        }
        JobOp::DeleteSnapshots { snapshots } => {
            for s in snapshots {
                if let Some(s) = st.snapshots.get_mut(s) {
                    s.transition_status.clear();
                }
            }
            Vec::new()
        }
        JobOp::RunInstances { instances } => {
            for i in instances {
                st.instances.remove(i);
                st.untag_resource(i);
            }
            instances
                .iter()
                .map(|i| Call::InstanceDown(i.clone()))
                .collect()
        }
        JobOp::StartInstances { instances }
        | JobOp::StopInstances { instances }
        | JobOp::TerminateInstances { instances } => {
            set_instances(st, instances, None);
            Vec::new()
        }
        JobOp::UpdateRouters { routers } => {
            for r in routers {
                if let Some(r) = st.routers.get_mut(r) {
                    r.transition_status.clear();
                }
            }
            Vec::new()
        }
        JobOp::CreateLoadBalancer { loadbalancer, eips } => {
            // The EIPs were reserved ("associating") for the LB: free them again.
            set_eips(st, eips, None);
            st.remove_loadbalancer(loadbalancer);
            vec![Call::LbDelete(loadbalancer.clone())]
        }
        JobOp::AssociateEips { loadbalancer, eips } => {
            set_eips(st, eips, None);
            set_lbs(st, std::slice::from_ref(loadbalancer), None, None);
            Vec::new()
        }
        JobOp::DissociateEips { loadbalancer, eips } => {
            set_eips(st, eips, Some(loadbalancer));
            set_lbs(st, std::slice::from_ref(loadbalancer), None, None);
            Vec::new()
        }
        JobOp::UpdateLoadBalancers { loadbalancers }
        | JobOp::DeleteLoadBalancers { loadbalancers } => {
            set_lbs(st, loadbalancers, None, None);
            Vec::new()
        }
        JobOp::ReleaseEips { eips } => {
            for e in eips {
                if let Some(e) = st.eips.get_mut(e) {
                    e.transition_status.clear();
                }
            }
            Vec::new()
        }
        JobOp::ApplyLoadBalancerPolicy { .. } | JobOp::ApplySecurityGroup { .. } => Vec::new(),
    }
}

/// Builds what the LB driver needs; `eips` overrides the LB's current EIPs
/// (the projected set of an associate/dissociate job).
pub fn lb_spec(st: &State, lb_id: &str, eips: Option<Vec<EipRef>>) -> Option<LbSpec> {
    let mut lb = st.lbs.get(lb_id)?.clone();
    if let Some(e) = eips {
        lb.eips = e;
    }
    let mut listeners: Vec<_> = st
        .listeners
        .ordered()
        .into_iter()
        .filter(|l| l.loadbalancer_id == lb_id)
        .cloned()
        .collect();
    let mut backends = Vec::new();
    let mut policy_ids: Vec<String> = Vec::new();
    let mut cert_ids: Vec<String> = Vec::new();
    for l in listeners.iter_mut() {
        l.backends = st
            .backends
            .ordered()
            .into_iter()
            .filter(|b| b.loadbalancer_listener_id == l.loadbalancer_listener_id)
            .cloned()
            .collect();
        let resolved: Vec<ResolvedBackend> = l
            .backends
            .iter()
            .filter_map(|b| {
                let address = if b.resource_id.parse::<std::net::IpAddr>().is_ok() {
                    b.resource_id.clone()
                } else {
                    let inst = st.instances.get(&b.resource_id)?;
                    inst.vxnets.first()?.private_ip.clone()
                };
                if !b.loadbalancer_policy_id.is_empty() {
                    policy_ids.push(b.loadbalancer_policy_id.clone());
                }
                Some(ResolvedBackend {
                    backend_id: b.loadbalancer_backend_id.clone(),
                    address,
                    port: b.port,
                    weight: b.weight,
                    policy_id: b.loadbalancer_policy_id.clone(),
                })
            })
            .collect();
        backends.push((l.loadbalancer_listener_id.clone(), resolved));
        cert_ids.extend(l.server_certificate_id.iter().cloned());
    }
    lb.listeners = listeners;
    policy_ids.sort();
    policy_ids.dedup();
    let policies = policy_ids
        .iter()
        .filter_map(|p| {
            let mut pol = st.policies.get(p)?.clone();
            pol.rules = st
                .rules
                .ordered()
                .into_iter()
                .filter(|r| &r.loadbalancer_policy_id == p)
                .cloned()
                .collect();
            Some(pol)
        })
        .collect();
    cert_ids.sort();
    cert_ids.dedup();
    let certificates = cert_ids
        .iter()
        .filter_map(|c| st.certs.get(c))
        .map(|c| {
            (
                c.cert.server_certificate_id.clone(),
                c.cert.certificate_content.clone(),
                c.private_key.clone(),
            )
        })
        .collect();
    let bind_addresses = if lb.eips.is_empty() {
        lb.private_ips.clone()
    } else {
        lb.eips.iter().map(|e| e.eip_addr.clone()).collect()
    };
    // Internal LBs sit on their vxnet's router; public ones on the zone's VPC.
    let router_id = st
        .vxnets
        .get(&lb.vxnet_id)
        .and_then(|v| v.router.as_ref())
        .map(|r| r.router_id.clone())
        .or_else(|| st.routers.ordered().first().map(|r| r.router_id.clone()))
        .unwrap_or_default();
    Some(LbSpec {
        router_id,
        bind_addresses,
        backends,
        policies,
        certificates,
        source_cidrs: source_cidrs(st, &lb.security_group_id),
        lb,
    })
}

/// Allowed sources of an LB: the ingress accept rules of its security group.
/// No rule, or a rule without a source (or 0.0.0.0/0), means everyone.
pub fn source_cidrs(st: &State, sg: &str) -> Vec<String> {
    if sg.is_empty() {
        return Vec::new();
    }
    let mut cidrs = Vec::new();
    for r in st.sg_rules.ordered() {
        if r.security_group_id != sg || r.direction != 0 || r.action != "accept" || r.disabled != 0
        {
            continue;
        }
        if r.val3.is_empty() || r.val3 == "0.0.0.0/0" {
            return Vec::new();
        }
        cidrs.push(r.val3.clone());
    }
    cidrs
}

/// One re-apply call run at start.
pub type RestoreCall = Box<dyn FnOnce(&DataPlane) -> Result<(), DataPlaneError> + Send>;

/// Re-establishes the data plane after a restart: attachments, instance
/// networks, router statics, LB proxies. Returns new devices per volume.
pub fn restore_plan(st: &State) -> (Vec<crate::dataplane::Attachment>, Vec<RestoreCall>) {
    let attachments = st
        .volumes
        .values()
        .filter(|v| v.status == "in-use")
        .filter_map(|v| {
            v.instance.as_ref().map(|a| crate::dataplane::Attachment {
                volume_id: v.volume_id.clone(),
                instance_id: a.instance_id.clone(),
            })
        })
        .collect();
    let mut calls: Vec<Call> = Vec::new();
    for i in st.instances.ordered() {
        if i.status == "running"
            && let Some(c) = instance_up_call(st, &i.instance_id)
        {
            calls.push(c);
        }
    }
    for r in st.routers.ordered() {
        let statics: Vec<RouterStatic> = st
            .statics
            .ordered()
            .into_iter()
            .filter(|s| s.router_id == r.router_id && s.is_applied == 1 && s.disabled == 0)
            .cloned()
            .collect();
        calls.push(Call::RouterStatics(r.router_id.clone(), statics));
    }
    for lb in st.lbs.ordered() {
        if lb.status == "active"
            && let Some(spec) = lb_spec(st, &lb.loadbalancer_id, None)
        {
            calls.push(Call::LbApply(Box::new(spec)));
        }
    }
    let boxed = calls
        .into_iter()
        .map(|c| {
            Box::new(move |dp: &DataPlane| {
                run_calls(dp, std::slice::from_ref(&c), &mut Outcome::default())
            }) as RestoreCall
        })
        .collect();
    (attachments, boxed)
}

/// Ids of jobs to resume at start.
pub fn unfinished_jobs(st: &State) -> Vec<String> {
    st.jobs
        .ordered()
        .into_iter()
        .filter(|j| j.job.status == "pending" || j.job.status == "working")
        .map(|j| j.job.job_id.clone())
        .collect()
}

/// The job id with the shape of a create response.
pub fn job_response(job_id: &str) -> ApiResult<serde_json::Map<String, serde_json::Value>> {
    let mut m = serde_json::Map::new();
    m.insert("job_id".into(), job_id.into());
    Ok(m)
}

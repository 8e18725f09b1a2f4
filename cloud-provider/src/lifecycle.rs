//! Node lifecycle controller (periodic). For NotReady nodes of this
//! provider and zone: instance terminated, ceased or gone -> delete the
//! Node; stopped or suspended -> taint `node.cloudprovider.kubernetes.io/shutdown:NoSchedule`;
//! the taint goes when the node is Ready again or its instance runs.
//! Initialised nodes also get their addresses refreshed (an EIP bound
//! later shows up as ExternalIP) from the same listing: one batched
//! DescribeInstances per pass (100 ids per call), never one per node.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use iaas_client::model::Instance;
use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use suite_runtime::Shutdown;

use crate::context::{Context, Error, describe_instances_by_id};
use crate::node_cache::NodeCache;
use crate::provider::{self, TAINT_SHUTDOWN, TAINT_UNINITIALIZED};

/// Controller name (metrics, logs).
pub const NAME: &str = "lifecycle";

/// What to do with one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleAction {
    /// Nothing.
    Keep,
    /// Delete the Node object (its instance is gone); the reason says why.
    Delete(String),
    /// Add the shutdown taint.
    Taint,
    /// Remove the shutdown taint.
    Untaint,
}

/// Decides for one node, given its instance as listed (`None`: not found).
pub fn decide(node: &Node, instance: Option<&Instance>) -> LifecycleAction {
    let ready = provider::ready_status(node) == Some("True");
    let tainted = provider::has_taint(node, TAINT_SHUTDOWN);
    if ready {
        return if tainted {
            LifecycleAction::Untaint
        } else {
            LifecycleAction::Keep
        };
    }
    match instance {
        None => LifecycleAction::Delete("instance no longer exists".into()),
        Some(i) if provider::is_gone(&i.status) => {
            LifecycleAction::Delete(format!("instance {} is {}", i.instance_id, i.status))
        }
        Some(i) if provider::is_shut_down(&i.status) => {
            if tainted {
                LifecycleAction::Keep
            } else {
                LifecycleAction::Taint
            }
        }
        Some(_) => {
            if tainted {
                LifecycleAction::Untaint
            } else {
                LifecycleAction::Keep
            }
        }
    }
}

/// The taints after adding or removing the shutdown taint.
pub fn with_shutdown_taint(node: &Node, present: bool) -> Vec<Taint> {
    let mut out: Vec<Taint> = provider::taints(node)
        .iter()
        .filter(|t| t.key != TAINT_SHUTDOWN)
        .cloned()
        .collect();
    if present {
        out.push(Taint {
            key: TAINT_SHUTDOWN.to_string(),
            effect: "NoSchedule".to_string(),
            time_added: Some(crate::context::now()),
            value: None,
        });
    }
    out
}

/// Runs a pass every `period` until `shutdown`, over the shared Node cache
/// (from its first complete listing on).
pub async fn run(ctx: Arc<Context>, cache: NodeCache, period: Duration, shutdown: Shutdown) {
    tokio::select! {
        ready = cache.ready() => if !ready { return },
        _ = shutdown.wait() => return,
    }
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        match pass(&ctx, &cache.nodes()).await {
            Ok(()) => ctx.metrics.record(NAME, "ok"),
            Err(e) => {
                ctx.metrics.record(NAME, e.metric_label());
                tracing::warn!(error = %e, "node lifecycle pass failed");
            }
        }
    }
}

/// One pass over `nodes` (every Node of the cluster). A failed
/// DescribeInstances ends the pass before any decision: a node is never
/// deleted on missing data.
pub async fn pass(ctx: &Context, nodes: &[Arc<Node>]) -> Result<(), Error> {
    let api: Api<Node> = Api::all(ctx.kube.clone());
    let cfg = &ctx.config;
    // Only nodes of this provider and zone: another zone's instances are
    // invisible to this endpoint, and must not look "gone".
    let ours: Vec<(&Node, String)> = nodes
        .iter()
        .filter_map(|n| {
            let pid = n.spec.as_ref()?.provider_id.as_deref()?;
            let (zone, id) = provider::parse_provider_id(&cfg.provider_name, pid)?;
            (zone == cfg.zone).then_some((&**n, id))
        })
        .collect();
    if ours.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = ours.iter().map(|(_, id)| id.clone()).collect();
    let instances: HashMap<String, Instance> = describe_instances_by_id(&ctx.cloud, &ids)
        .await?
        .into_iter()
        .map(|i| (i.instance_id.clone(), i))
        .collect();
    for (node, id) in ours {
        let inst = instances.get(&id);
        if let Err(e) = act(ctx, &api, node, inst, decide(node, inst)).await {
            tracing::warn!(node = %node.name_any(), error = %e, "lifecycle action failed");
        }
    }
    Ok(())
}

async fn act(
    ctx: &Context,
    api: &Api<Node>,
    node: &Node,
    inst: Option<&Instance>,
    action: LifecycleAction,
) -> Result<(), Error> {
    let name = node.name_any();
    let oref = node.object_ref(&());
    match action {
        LifecycleAction::Delete(why) => {
            ctx.events
                .normal(
                    &oref,
                    "DeletingNode",
                    "DeleteNode",
                    format!("Deleting node {name}: {why}"),
                )
                .await;
            tracing::info!(node = %name, reason = %why, "deleting node");
            // Precondition on uid: never delete a re-registered node of the same name.
            let dp = DeleteParams {
                preconditions: node.uid().map(|uid| kube::api::Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        LifecycleAction::Taint | LifecycleAction::Untaint => {
            let add = action == LifecycleAction::Taint;
            let taints = with_shutdown_taint(node, add);
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({
                    "metadata": { "resourceVersion": node.resource_version() },
                    "spec": { "taints": if taints.is_empty() { serde_json::Value::Null } else { json!(taints) } },
                })),
            )
            .await?;
            let (reason, note) = if add {
                (
                    "NodeShutdown",
                    format!("Instance of node {name} is shut down; tainted {TAINT_SHUTDOWN}"),
                )
            } else {
                (
                    "NodeRunning",
                    format!("Node {name} is running again; removed {TAINT_SHUTDOWN}"),
                )
            };
            ctx.events
                .normal(&oref, reason, "UpdateNodeTaints", note)
                .await;
        }
        LifecycleAction::Keep => {
            // Cheap re-check of initialised nodes: addresses from the same listing.
            if let Some(inst) = inst
                && !provider::has_taint(node, TAINT_UNINITIALIZED)
                && !provider::is_gone(&inst.status)
            {
                let want = provider::node_addresses(node, inst, ctx.config.vxnet_id.as_deref());
                if provider::current_addresses(node) != want.as_slice() {
                    api.patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({ "status": { "addresses": want } })),
                    )
                    .await?;
                }
            }
        }
    }
    Ok(())
}

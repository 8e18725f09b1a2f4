//! Node controller: initialises nodes tainted
//! `node.cloudprovider.kubernetes.io/uninitialized` (or lacking a
//! providerID): providerID, addresses, zone/region/instance-type labels,
//! then removes the taint. A node no instance matches gets a Warning Event
//! naming every key tried and is retried with backoff.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use iaas_client::actions::DescribeInstances;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::{Controller, watcher};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use suite_runtime::Shutdown;

use crate::context::{Context, Error};
use crate::node_cache::NodeCache;
use crate::provider::{self, NodeInit, TAINT_UNINITIALIZED};

/// Controller name (metrics, logs).
pub const NAME: &str = "node";

/// Field manager of the CCM's writes.
pub const FIELD_MANAGER: &str = "cloud-controller-manager";

/// Whether the node still needs initialisation.
pub fn needs_init(node: &Node) -> bool {
    provider::has_taint(node, TAINT_UNINITIALIZED)
        || node
            .spec
            .as_ref()
            .and_then(|s| s.provider_id.as_deref())
            .is_none_or(str::is_empty)
}

/// Runs the controller until `shutdown`, fed by the shared Node cache:
/// `needs_init` carries the Nodes to initialise, `cache` is their store.
pub async fn run(
    ctx: Arc<Context>,
    cache: NodeCache,
    needs_init: impl Stream<Item = Result<Node, watcher::Error>> + Send + 'static,
    shutdown: Shutdown,
) {
    Controller::for_stream(needs_init, cache.store)
        .graceful_shutdown_on(async move { shutdown.wait().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// Retries a failed node with per-node exponential backoff.
pub fn error_policy(node: Arc<Node>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.record(NAME, err.metric_label());
    let delay = ctx.backoff.next(&format!("node/{}", node.name_any()));
    tracing::warn!(node = %node.name_any(), error = %err, retry_in = ?delay, "node initialisation failed");
    Action::requeue(delay)
}

/// One reconciliation of one node.
pub async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = node.name_any();
    if node.metadata.deletion_timestamp.is_some() || !needs_init(&node) {
        return Ok(Action::await_change());
    }
    let cfg = &ctx.config;
    // A providerID of ours names the instance: ask for just that one.
    let by_id = node
        .spec
        .as_ref()
        .and_then(|s| s.provider_id.as_deref())
        .and_then(|p| provider::parse_provider_id(&cfg.provider_name, p));
    let instances = match by_id {
        Some((_, id)) => Arc::new(
            ctx.cloud
                .describe_instances_all(&DescribeInstances {
                    instances: vec![id],
                    verbose: true,
                    ..Default::default()
                })
                .await?,
        ),
        None => ctx.instances.all(&ctx.cloud).await?,
    };
    let plan = match provider::plan_node_init(&node, &instances, cfg) {
        Ok(p) => p,
        Err(no_match) => {
            ctx.instances.invalidate().await;
            let msg = format!("node {name}: {no_match}");
            ctx.events
                .warning(
                    &node.object_ref(&()),
                    "InstanceNotFound",
                    "InitializeNode",
                    msg.clone(),
                )
                .await;
            return Err(Error::NoInstance(msg));
        }
    };
    apply_init(&Api::all(ctx.kube.clone()), &node, &plan).await?;
    tracing::info!(node = %name, instance = %plan.instance_id, matched_by = %plan.matched_by, "node initialised");
    ctx.backoff.reset(&format!("node/{name}"));
    ctx.metrics.record(NAME, "ok");
    Ok(Action::requeue(Duration::from_secs(600)))
}

/// Writes a [`NodeInit`]: addresses through the status subresource first,
/// then providerID, labels and the remaining taints in one merge patch
/// guarded by resourceVersion (taints are a list that merge patches
/// replace whole; a concurrent change must fail, not be overwritten).
pub async fn apply_init(api: &Api<Node>, node: &Node, plan: &NodeInit) -> Result<(), Error> {
    let name = node.name_any();
    let mut rv = node.resource_version();
    if let Some(addresses) = &plan.addresses {
        let patched = api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": { "addresses": addresses } })),
            )
            .await?;
        rv = patched.resource_version();
    }
    let mut metadata = serde_json::Map::new();
    let mut spec = serde_json::Map::new();
    if !plan.labels.is_empty() {
        metadata.insert("labels".into(), json!(plan.labels));
    }
    if let Some(pid) = &plan.provider_id {
        spec.insert("providerID".into(), json!(pid));
    }
    if let Some(taints) = &plan.taints {
        spec.insert(
            "taints".into(),
            if taints.is_empty() {
                serde_json::Value::Null
            } else {
                json!(taints)
            },
        );
        if let Some(rv) = rv {
            metadata.insert("resourceVersion".into(), json!(rv));
        }
    }
    if metadata.is_empty() && spec.is_empty() {
        return Ok(());
    }
    let mut body = serde_json::Map::new();
    if !metadata.is_empty() {
        body.insert("metadata".into(), metadata.into());
    }
    if !spec.is_empty() {
        body.insert("spec".into(), spec.into());
    }
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::Value::Object(body)),
    )
    .await?;
    Ok(())
}

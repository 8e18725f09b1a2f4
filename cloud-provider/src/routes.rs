//! Route controller: one VPC route per node pod CIDR via the node's
//! InternalIP, as router statics of type 9 on the configured router.
//!
//! Each sync reads the router's statics once, adds the missing routes with
//! AddRouterStatics, deletes stale routes (only inside `cluster_cidr` and
//! only ones this cluster owns, by name prefix) with DeleteRouterStatics
//! (both [`STATICS_PER_CALL`] at a time), applies them with one UpdateRouters, then sets `NetworkUnavailable=False`
//! (reason RouteCreated) on nodes whose routes exist. A sync where nothing
//! changed makes no cloud writes and no Node writes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use iaas_client::actions::{
    AddRouterStatics, DeleteRouterStatics, DescribeRouterStatics, DescribeRouters,
    RouterStaticSpec, UpdateRouters,
};
use iaas_client::model::{RouterStatic, STATIC_TYPE_ROUTE};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use suite_runtime::Shutdown;

use crate::cidr::Cidr;
use crate::context::{Context, Error};
use crate::node_cache::NodeCache;
use crate::provider;

/// Controller name (metrics, logs).
pub const NAME: &str = "route";

/// Statics per AddRouterStatics / DeleteRouterStatics call. A request is
/// limited to 4096 parameters and a route takes four (type, destination,
/// next hop, name), so thousands of nodes need several calls; 100 matches
/// the API's page size. One UpdateRouters still applies them all.
pub const STATICS_PER_CALL: usize = 100;

/// Name prefix of the routes cluster `cluster_id` owns.
pub fn route_prefix(cluster_id: &str) -> String {
    format!("k8s-route:{cluster_id}:")
}

/// Name of a node's route (the prefix plus the node name).
pub fn route_name(cluster_id: &str, node: &str) -> String {
    format!("{}{node}", route_prefix(cluster_id))
}

/// A route that should exist.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DesiredRoute {
    /// Node name.
    pub node: String,
    /// Pod CIDR.
    pub cidr: Cidr,
    /// The node's InternalIP.
    pub next_hop: String,
}

/// The routes nodes need: one per IPv4 pod CIDR (the VPC is IPv4) with an
/// InternalIP to route to. Nodes without either are skipped (not yet ready
/// for routing). Malformed CIDRs are skipped with a warning.
pub fn desired_routes<N: std::borrow::Borrow<Node>>(nodes: &[N]) -> Vec<DesiredRoute> {
    let mut out = Vec::new();
    for n in nodes {
        let n = n.borrow();
        if n.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(ip) = provider::internal_ip(n) else {
            continue;
        };
        let spec = n.spec.as_ref();
        let mut cidrs: Vec<String> = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
        if cidrs.is_empty()
            && let Some(c) = spec.and_then(|s| s.pod_cidr.clone())
        {
            cidrs.push(c);
        }
        for c in cidrs {
            match c.parse::<Cidr>() {
                Ok(cidr) if cidr.is_ipv4() => out.push(DesiredRoute {
                    node: n.name_any(),
                    cidr,
                    next_hop: ip.to_string(),
                }),
                Ok(_) => {}
                Err(e) => tracing::warn!(node = %n.name_any(), error = %e, "ignoring pod CIDR"),
            }
        }
    }
    out.sort();
    out
}

/// The difference between desired routes and the router's statics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePlan {
    /// Routes to add.
    pub add: Vec<DesiredRoute>,
    /// Static ids to delete (owned, inside the cluster CIDR, not desired).
    pub delete: Vec<String>,
    /// Nodes all of whose routes exist once the plan is applied.
    pub routed: BTreeSet<String>,
    /// Routes not added because a static this cluster does not own already
    /// claims the CIDR with another next hop (never overwritten).
    pub conflicts: Vec<(DesiredRoute, String)>,
}

impl RoutePlan {
    /// Whether the plan writes anything to the cloud.
    pub fn is_noop(&self) -> bool {
        self.add.is_empty() && self.delete.is_empty()
    }
}

/// Plans routes (pure). `statics` may contain any type; only type 9 counts.
pub fn plan_routes(
    desired: &[DesiredRoute],
    statics: &[RouterStatic],
    cluster_cidr: &Cidr,
    cluster_id: &str,
) -> RoutePlan {
    let prefix = route_prefix(cluster_id);
    let routes: Vec<&RouterStatic> = statics
        .iter()
        .filter(|s| s.static_type == STATIC_TYPE_ROUTE)
        .collect();
    let parse = |s: &RouterStatic| s.val1.parse::<Cidr>().ok();
    let mut plan = RoutePlan::default();
    let wanted: BTreeSet<(Cidr, &str)> = desired
        .iter()
        .map(|d| (d.cidr, d.next_hop.as_str()))
        .collect();
    // Stale: ours, inside the cluster CIDR, not wanted (a changed next hop is stale too).
    let mut deleted: BTreeSet<&str> = BTreeSet::new();
    for s in &routes {
        if !s.router_static_name.starts_with(&prefix) {
            continue;
        }
        let Some(c) = parse(s) else { continue };
        if cluster_cidr.contains(&c) && !wanted.contains(&(c, s.val2.as_str())) {
            plan.delete.push(s.router_static_id.clone());
            deleted.insert(s.router_static_id.as_str());
        }
    }
    let mut node_ok: BTreeMap<&str, bool> = BTreeMap::new();
    for d in desired {
        let live = routes
            .iter()
            .filter(|s| !deleted.contains(s.router_static_id.as_str()))
            .filter(|s| parse(s) == Some(d.cidr));
        let mut present = false;
        let mut conflict = None;
        for s in live {
            if s.val2 == d.next_hop {
                present = true;
            } else {
                conflict = Some(s.router_static_id.clone());
            }
        }
        let ok = if present {
            true
        } else if let Some(id) = conflict {
            plan.conflicts.push((d.clone(), id));
            false
        } else {
            plan.add.push(d.clone());
            true
        };
        let e = node_ok.entry(d.node.as_str()).or_insert(true);
        *e = *e && ok;
    }
    plan.routed = node_ok
        .into_iter()
        .filter(|(_, ok)| *ok)
        .map(|(n, _)| n.to_string())
        .collect();
    plan.delete.sort();
    plan
}

/// Whether the node already says `NetworkUnavailable=False` (RouteCreated).
pub fn has_route_condition(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.type_ == "NetworkUnavailable"
                && c.status == "False"
                && c.reason.as_deref() == Some("RouteCreated")
        })
}

/// Runs the controller until `shutdown`: a sync every `period`, and soon
/// after any change of a node's pod CIDRs or InternalIP (the shared Node
/// cache wakes it; heartbeats and other status churn do not).
pub async fn run(ctx: Arc<Context>, cache: NodeCache, period: Duration, shutdown: Shutdown) {
    let (Some(_), Some(_)) = (&ctx.config.router_id, &ctx.config.cluster_cidr) else {
        tracing::info!("route controller disabled: router_id/cluster_cidr not configured");
        return;
    };
    // Before the first complete listing the cache is empty, and a sync
    // then would find every route of ours stale.
    tokio::select! {
        ready = cache.ready() => if !ready { return },
        _ = shutdown.wait() => return,
    }
    // The first listing's own wake-up is covered by the first sync, which
    // runs at once (the interval's first tick).
    let _ = tokio::time::timeout(Duration::ZERO, cache.routes_changed.notified()).await;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            _ = tick.tick() => {}
            _ = cache.routes_changed.notified() => {
                // Let a burst of node changes settle into one sync.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        let nodes = cache.nodes();
        tracing::debug!(nodes = nodes.len(), "route sync");
        match sync(&ctx, &nodes).await {
            Ok(_) => ctx.metrics.record(NAME, "ok"),
            Err(e) => {
                ctx.metrics.record(NAME, e.metric_label());
                tracing::warn!(error = %e, "route sync failed");
            }
        }
    }
}

/// True when the router holds changes not yet applied with UpdateRouters.
async fn router_unapplied(ctx: &Context, router: &str) -> Result<bool, Error> {
    let routers = ctx
        .cloud
        .describe_routers_all(&DescribeRouters {
            routers: vec![router.to_string()],
            ..Default::default()
        })
        .await?;
    Ok(routers
        .iter()
        .any(|r| r.router_id == router && r.is_applied == 0))
}

/// One route sync over `nodes` (every Node of the cluster); returns the
/// plan it applied.
pub async fn sync(ctx: &Context, nodes: &[Arc<Node>]) -> Result<RoutePlan, Error> {
    let cfg = &ctx.config;
    let (Some(router), Some(cluster_cidr)) = (&cfg.router_id, &cfg.cluster_cidr) else {
        return Ok(RoutePlan::default());
    };
    let api: Api<Node> = Api::all(ctx.kube.clone());
    let statics = ctx
        .cloud
        .describe_router_statics_all(&DescribeRouterStatics {
            router: Some(router.clone()),
            static_type: Some(STATIC_TYPE_ROUTE),
            ..Default::default()
        })
        .await?;
    let desired = desired_routes(nodes);
    let plan = plan_routes(&desired, &statics, cluster_cidr, &cfg.cluster_id);
    for (d, id) in &plan.conflicts {
        tracing::warn!(node = %d.node, cidr = %d.cidr, existing = %id, "pod CIDR already routed elsewhere by a static this cluster does not own; not touching it");
    }
    // Statics added but never applied (a crash between AddRouterStatics and
    // UpdateRouters) look present in the listing: the router's is_applied
    // flag tells, so an otherwise idle sync still applies them.
    let unapplied = plan.is_noop() && router_unapplied(ctx, router).await?;
    if unapplied {
        tracing::warn!(%router, "router has unapplied statics (an earlier sync stopped before UpdateRouters); applying them");
        let job = ctx
            .cloud
            .update_routers(&UpdateRouters::new([router.clone()]))
            .await?;
        ctx.cloud.wait_job(&job.job_id, None).await?;
    }
    if !plan.is_noop() {
        for ids in plan.delete.chunks(STATICS_PER_CALL) {
            ctx.cloud
                .delete_router_statics(&DeleteRouterStatics::new(ids.to_vec()))
                .await?;
        }
        for routes in plan.add.chunks(STATICS_PER_CALL) {
            let statics = routes
                .iter()
                .map(|d| {
                    RouterStaticSpec::route(
                        d.cidr.to_string(),
                        d.next_hop.clone(),
                        Some(route_name(&cfg.cluster_id, &d.node)),
                    )
                })
                .collect();
            ctx.cloud
                .add_router_statics(&AddRouterStatics {
                    router: router.clone(),
                    vxnet: None,
                    statics,
                })
                .await?;
        }
        let job = ctx
            .cloud
            .update_routers(&UpdateRouters::new([router.clone()]))
            .await?;
        ctx.cloud.wait_job(&job.job_id, None).await?;
        tracing::info!(
            added = plan.add.len(),
            deleted = plan.delete.len(),
            "routes updated"
        );
    }
    for n in nodes {
        if plan.routed.contains(&n.name_any()) && !has_route_condition(n) {
            let now = crate::context::now();
            // Strategic merge: conditions merge by type, other conditions stay.
            api.patch_status(
                &n.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(json!({ "status": { "conditions": [{
                    "type": "NetworkUnavailable",
                    "status": "False",
                    "reason": "RouteCreated",
                    "message": "cloud-controller-manager created a route for the pod CIDR",
                    "lastTransitionTime": now,
                    "lastHeartbeatTime": now,
                }]}})),
            )
            .await?;
        }
    }
    Ok(plan)
}

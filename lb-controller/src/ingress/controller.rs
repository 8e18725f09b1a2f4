//! The Ingress controller's reconcile loop: finalizer, ensure, status,
//! Events, and deletion that never deadlocks.
//!
//! Order guarantees:
//! - the finalizer [`FINALIZER`] (with the [`APPLIED_LB`] record) is stored
//!   before anything is created in the cloud;
//! - it is removed only after the Ingress's rules are off its LB: the LB is
//!   deleted (a plain Ingress, or the last of a group), or the group's LB is
//!   re-ensured without it. lb-controller's `delete` treats an LB already
//!   gone as done, and deletion never reads Secrets or Services, so a
//!   missing LB, Secret or Service never holds the finalizer;
//! - members of one group are reconciled one at a time (a per-LB lock), so
//!   two reconciles never race on the shared LB.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};

use crate::watch::slim;
use serde_json::{Value, json};
use suite_runtime::Shutdown;
use suite_runtime::events::EventRecorder;
use suite_runtime::metrics::ReconcileMetrics;

use super::annotations::{APPLIED_LB, FINALIZER};
use super::translate::{
    LbKey, Settings, Snapshot, TranslateError, is_ours, key_of, lb_key, sort_by_precedence,
    translate,
};
use crate::{DesiredLb, LbStatus, Reconciler};

/// Controller name (metrics label, Event reporter).
pub const NAME: &str = "ingress";

/// The errors of one reconciliation; each has a metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The load balancer reconciler failed (the cloud's message).
    #[error("{0}")]
    Lb(#[from] crate::Error),
    /// An Ingress cannot be translated (names the Ingress and the field).
    #[error("{0}")]
    Invalid(#[from] TranslateError),
}

impl Error {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Lb(e) => e.metric_label(),
            Error::Invalid(_) => "invalid_ingress",
        }
    }
}

/// Reflected cluster state the translation reads.
#[derive(Clone)]
pub struct Stores {
    /// Ingresses (the controller's own store).
    pub ingresses: Store<Ingress>,
    /// IngressClasses.
    pub classes: Store<IngressClass>,
    /// Services.
    pub services: Store<Service>,
    /// EndpointSlices.
    pub slices: Store<EndpointSlice>,
    /// Nodes.
    pub nodes: Store<Node>,
    /// `kubernetes.io/tls` Secrets.
    pub secrets: Store<Secret>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("ingresses", &self.ingresses.len())
            .field("classes", &self.classes.len())
            .field("services", &self.services.len())
            .field("slices", &self.slices.len())
            .field("nodes", &self.nodes.len())
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

fn store_of<K>(objects: Vec<K>) -> Store<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let mut w = reflector::store::Writer::<K>::default();
    for o in objects {
        w.apply_watcher_event(&watcher::Event::Apply(o));
    }
    w.as_reader()
}

impl Stores {
    /// Stores pre-filled with fixed objects (tests, benchmarks, one-shot tools).
    pub fn from_objects(
        ingresses: Vec<Ingress>,
        classes: Vec<IngressClass>,
        services: Vec<Service>,
        slices: Vec<EndpointSlice>,
        nodes: Vec<Node>,
        secrets: Vec<Secret>,
    ) -> Self {
        Stores {
            ingresses: store_of(ingresses),
            classes: store_of(classes),
            services: store_of(services),
            slices: store_of(slices),
            nodes: store_of(nodes),
            secrets: store_of(secrets),
        }
    }
}

fn all<K: Clone + Resource + 'static>(s: &Store<K>) -> Vec<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    s.state().iter().map(|o| (**o).clone()).collect()
}

/// Everything a reconciliation needs.
pub struct Ctx {
    /// Kubernetes client.
    pub kube: kube::Client,
    /// Load balancer reconciler.
    pub lbs: Reconciler,
    /// Translation settings.
    pub settings: Settings,
    /// Event recorder.
    pub events: EventRecorder,
    /// Reconcile counters.
    pub metrics: ReconcileMetrics,
    /// Reflected inputs.
    pub stores: Stores,
    /// Period of the batched resync of every LB (drift repair).
    pub resync: Duration,
    locks: Mutex<HashMap<LbKey, Arc<tokio::sync::Mutex<()>>>>,
    failures: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("settings", &self.settings)
            .field("stores", &self.stores)
            .field("resync", &self.resync)
            .finish_non_exhaustive()
    }
}

impl Ctx {
    /// Builds the context; `identity` is the pod name reported on Events.
    pub fn new(
        kube: kube::Client,
        lbs: Reconciler,
        settings: Settings,
        stores: Stores,
        metrics: ReconcileMetrics,
        identity: Option<String>,
        resync: Duration,
    ) -> Self {
        Ctx {
            events: EventRecorder::new(kube.clone(), "ingress-controller", identity),
            kube,
            lbs,
            settings,
            metrics,
            stores,
            resync,
            locks: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The lock serialising work on the LB `key`: reconciles of its members
    /// wait for it, the batched resync skips an LB whose lock is held.
    pub fn lock_for(&self, key: &LbKey) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// Exponential backoff per Ingress: 2 s doubling to 5 min.
    fn next_backoff(&self, key: &str) -> Duration {
        let mut m = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key.to_string()).or_insert(0);
        let d = Duration::from_secs(2)
            .saturating_mul(1u32 << (*n).min(16))
            .min(Duration::from_secs(300));
        *n = n.saturating_add(1);
        d
    }

    fn reset_backoff(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// Whether the Ingress carries our finalizer.
pub fn has_finalizer(ing: &Ingress) -> bool {
    ing.finalizers().iter().any(|f| f == FINALIZER)
}

fn applied_key(ing: &Ingress) -> Option<LbKey> {
    ing.annotations()
        .get(APPLIED_LB)
        .and_then(|v| LbKey::from_applied(ing, v.trim()))
}

fn oref(ing: &Ingress) -> ObjectReference {
    ing.object_ref(&())
}

/// Adds (`Some(key)`) or removes (`None`) the finalizer and the applied-LB
/// record in one merge patch guarded by resourceVersion.
async fn patch_meta(
    api: &Api<Ingress>,
    ing: &Ingress,
    key: Option<&LbKey>,
) -> Result<Ingress, Error> {
    let mut list: Vec<String> = ing
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if key.is_some() {
        list.push(FINALIZER.to_string());
    }
    let patch = json!({ "metadata": {
        "resourceVersion": ing.resource_version(),
        "finalizers": if list.is_empty() { Value::Null } else { json!(list) },
        "annotations": { APPLIED_LB: key.map(|k| json!(k.applied_value())).unwrap_or(Value::Null) },
    }});
    Ok(api
        .patch(
            &ing.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?)
}

fn status_ips(ing: &Ingress) -> Vec<String> {
    ing.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone())
        .collect()
}

async fn set_status(kube: &kube::Client, ing: &Ingress, ips: &[String]) -> Result<(), Error> {
    let api: Api<Ingress> = Api::namespaced(kube.clone(), &ing.namespace().unwrap_or_default());
    let list: Vec<Value> = ips.iter().map(|ip| json!({ "ip": ip })).collect();
    api.patch_status(
        &ing.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "loadBalancer": {
            "ingress": if list.is_empty() { Value::Null } else { json!(list) }
        } } })),
    )
    .await?;
    Ok(())
}

/// Retries a failed Ingress with per-Ingress exponential backoff.
pub fn error_policy(ing: Arc<Ingress>, err: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.record(NAME, err.metric_label());
    let key = key_of(&ing);
    let delay = ctx.next_backoff(&key);
    tracing::warn!(ingress = %key, error = %err, retry_in = ?delay, "ingress reconcile failed");
    Action::requeue(delay)
}

/// One reconciliation of one Ingress (and, for a group, its shared LB).
pub async fn reconcile(ing: Arc<Ingress>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let result = reconcile_inner(&ing, &ctx).await;
    if result.is_ok() {
        ctx.reset_backoff(&key_of(&ing));
        ctx.metrics.record(NAME, "ok");
    }
    result
}

async fn reconcile_inner(ing: &Ingress, ctx: &Ctx) -> Result<Action, Error> {
    let api: Api<Ingress> = Api::namespaced(ctx.kube.clone(), &ing.namespace().unwrap_or_default());
    let classes = all(&ctx.stores.classes);
    let ours = is_ours(ing, &classes, &ctx.settings.controller_name);
    let deleting = ing.metadata.deletion_timestamp.is_some();
    if deleting || !ours {
        return leave(ing, ctx, &api, deleting).await;
    }
    let key = match lb_key(ing) {
        Ok(k) => k,
        Err(e) => return Err(invalid(ctx, ing, e).await),
    };
    let applied = applied_key(ing);
    if !has_finalizer(ing) || applied.is_none() {
        // Nothing is created before the finalizer is stored; the patch's
        // watch event brings the Ingress back here.
        patch_meta(&api, ing, Some(applied.as_ref().unwrap_or(&key))).await?;
        return Ok(Action::await_change());
    }
    let applied = applied.unwrap_or_else(|| key.clone());
    {
        let lock = ctx.lock_for(&key);
        let _guard = lock.lock().await;
        ensure_lb(ctx, &key, Some(ing), None).await?;
    }
    if applied != key {
        // The Ingress moved (into, out of or between groups): take its rules
        // off the LB it was on, then record the new one.
        tracing::info!(ingress = %key_of(ing), from = ?applied, to = ?key, "ingress moved to another load balancer");
        {
            let lock = ctx.lock_for(&applied);
            let _guard = lock.lock().await;
            remove_from(ctx, &applied, ing).await?;
        }
        let fresh = api.get(&ing.name_any()).await?;
        patch_meta(&api, &fresh, Some(&key)).await?;
    }
    // No per-Ingress requeue: drift repair is the batched resync loop.
    Ok(Action::await_change())
}

/// The Ingress is being deleted or is no longer ours: take its rules off
/// its LB, then let the finalizer go.
async fn leave(
    ing: &Ingress,
    ctx: &Ctx,
    api: &Api<Ingress>,
    deleting: bool,
) -> Result<Action, Error> {
    if !has_finalizer(ing) {
        return Ok(Action::await_change());
    }
    // Where the rules were applied; the annotation can have been edited
    // since, and a group annotation may even be invalid now.
    let key = applied_key(ing)
        .or_else(|| lb_key(ing).ok())
        .unwrap_or_else(|| LbKey::Single {
            namespace: ing.namespace().unwrap_or_default(),
            name: ing.name_any(),
            uid: ing.uid().unwrap_or_default(),
        });
    {
        let lock = ctx.lock_for(&key);
        let _guard = lock.lock().await;
        remove_from(ctx, &key, ing).await?;
    }
    let mut current = ing.clone();
    if !deleting && !status_ips(ing).is_empty() {
        set_status(&ctx.kube, ing, &[]).await?;
        current = api.get(&ing.name_any()).await?;
    }
    patch_meta(api, &current, None).await?;
    Ok(Action::await_change())
}

/// Takes `ing`'s rules off the LB `key`: deletes the LB when no other
/// member remains, else re-ensures the group without it. A broken sibling
/// (invalid annotation) must not hold this Ingress's finalizer: its rules
/// then stay until the group is fixed, which is logged and reported.
async fn remove_from(ctx: &Ctx, key: &LbKey, ing: &Ingress) -> Result<(), Error> {
    let on = oref(ing);
    match ensure_lb(ctx, key, None, Some(ing)).await {
        Ok(None) => {
            ctx.events
                .normal(
                    &on,
                    "DeletedLoadBalancer",
                    "DeleteLoadBalancer",
                    format!(
                        "Deleted load balancer of {}",
                        key.owner(&ctx.settings.cluster_id)
                    ),
                )
                .await;
            Ok(())
        }
        Ok(Some(_)) => {
            ctx.events
                .normal(
                    &on,
                    "LeftLoadBalancerGroup",
                    "DeleteLoadBalancer",
                    "Rules removed from the group's load balancer".into(),
                )
                .await;
            Ok(())
        }
        Err(Error::Invalid(e)) => {
            tracing::warn!(ingress = %key_of(ing), error = %e, "group cannot be re-ensured without this ingress; releasing it anyway");
            ctx.events
                .warning(
                    &on,
                    "GroupInvalid",
                    "DeleteLoadBalancer",
                    format!(
                        "Rules stay on the group's load balancer until the group is fixed: {e}"
                    ),
                )
                .await;
            Ok(())
        }
        Err(e) => {
            ctx.events
                .warning(
                    &on,
                    "DeleteLoadBalancerFailed",
                    "DeleteLoadBalancer",
                    format!("Error removing rules from the load balancer: {e}"),
                )
                .await;
            Err(e)
        }
    }
}

/// Members of `key` from the store (ours, finalized, not being deleted),
/// with `include` replacing its stored copy and `exclude` left out.
fn members(
    ctx: &Ctx,
    key: &LbKey,
    include: Option<&Ingress>,
    exclude: Option<&Ingress>,
) -> Vec<Ingress> {
    let uid = |i: &Ingress| i.uid().unwrap_or_else(|| key_of(i));
    let skip: Vec<String> = include
        .iter()
        .chain(exclude.iter())
        .map(|i| uid(i))
        .collect();
    let classes = all(&ctx.stores.classes);
    let mut out: Vec<Ingress> = match key {
        // A plain Ingress's LB has exactly one member.
        LbKey::Single { .. } => Vec::new(),
        LbKey::Group(_) => ctx
            .stores
            .ingresses
            .state()
            .iter()
            .filter(|i| !skip.contains(&uid(i)))
            .filter(|i| i.metadata.deletion_timestamp.is_none() && has_finalizer(i))
            .filter(|i| is_ours(i, &classes, &ctx.settings.controller_name))
            .filter(|i| lb_key(i).ok().as_ref() == Some(key))
            .map(|i| (**i).clone())
            .collect(),
    };
    if let Some(i) = include {
        out.push(i.clone());
    }
    out
}

/// The reflected translation inputs, taken once per reconcile (or once per
/// resync for every LB): shared pointers into the stores, not copies.
struct Inputs {
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    nodes: Vec<Arc<Node>>,
    secrets: Vec<Arc<Secret>>,
}

impl Inputs {
    fn take(stores: &Stores) -> Self {
        Inputs {
            services: stores.services.state(),
            slices: stores.slices.state(),
            nodes: stores.nodes.state(),
            secrets: stores.secrets.state(),
        }
    }

    fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            services: &self.services,
            slices: &self.slices,
            nodes: &self.nodes,
            secrets: &self.secrets,
        }
    }
}

/// Sorts `members` by precedence and translates them into the LB `key`;
/// reports an invalid member and the translation's notices as Events.
async fn desired_for(
    ctx: &Ctx,
    key: &LbKey,
    members: &mut [Ingress],
    inputs: &Inputs,
) -> Result<DesiredLb, Error> {
    if let Err(e) = sort_by_precedence(members) {
        return Err(invalid_in(ctx, members, e).await);
    }
    let t = match translate(key, members, &inputs.snapshot(), &ctx.settings) {
        Ok(t) => t,
        Err(e) => return Err(invalid_in(ctx, members, e).await),
    };
    for n in &t.notices {
        if let Some(m) = members.iter().find(|m| key_of(m) == n.object) {
            ctx.events
                .warning(&oref(m), n.reason, "EnsureLoadBalancer", n.message.clone())
                .await;
        }
    }
    Ok(t.desired)
}

/// Makes the LB `key` match its members; deletes it when there are none.
/// Returns the LB status, or `None` when it was deleted.
async fn ensure_lb(
    ctx: &Ctx,
    key: &LbKey,
    include: Option<&Ingress>,
    exclude: Option<&Ingress>,
) -> Result<Option<LbStatus>, Error> {
    let owner = key.owner(&ctx.settings.cluster_id);
    let mut members = members(ctx, key, include, exclude);
    if members.is_empty() {
        ctx.lbs.delete(&owner).await?;
        return Ok(None);
    }
    let desired = desired_for(ctx, key, &mut members, &Inputs::take(&ctx.stores)).await?;
    let trigger = include.or(exclude).unwrap_or(&members[0]);
    let result = ctx.lbs.ensure(&desired).await;
    record_outcome(ctx, &members, trigger, result)
        .await
        .map(Some)
}

/// Reports an ensure's outcome: Events on the members, and their
/// `status.loadBalancer` when the addresses changed.
async fn record_outcome(
    ctx: &Ctx,
    members: &[Ingress],
    trigger: &Ingress,
    result: crate::Result<LbStatus>,
) -> Result<LbStatus, Error> {
    let status = match result {
        Ok(s) => s,
        Err(e) => {
            ctx.events
                .warning(
                    &oref(trigger),
                    "SyncLoadBalancerFailed",
                    "EnsureLoadBalancer",
                    format!("Error syncing load balancer: {e}"),
                )
                .await;
            return Err(e.into());
        }
    };
    for m in members {
        let fresh = status_ips(m) != status.addresses;
        if status.operations > 0 || fresh {
            ctx.events
                .normal(
                    &oref(m),
                    "EnsuredLoadBalancer",
                    "EnsureLoadBalancer",
                    format!(
                        "Ensured load balancer {} at {}",
                        status.lb_id,
                        status.addresses.join(", ")
                    ),
                )
                .await;
        }
        if fresh {
            set_status(&ctx.kube, m, &status.addresses).await?;
        }
    }
    Ok(status)
}

/// Outcome of a batched resync, counted in load balancers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResyncReport {
    /// LBs ensured (unchanged ones cost no write).
    pub ensured: usize,
    /// LBs whose translation or ensure failed.
    pub failed: usize,
    /// LBs skipped because the work queue was reconciling them.
    pub skipped: usize,
}

/// Re-ensures every LB of every Ingress we serve in one batch (drift
/// repair): members come from the reflector stores (no API list), and
/// lb-controller's `ensure_many` observes all LBs with batched Describe
/// calls, so an idle resync costs a constant handful of Describes (paging
/// aside) and no write, whatever the number of Ingresses. Ingresses not yet
/// finalized, being deleted, or moving between LBs are left to the work
/// queue, as are LBs the queue holds at this moment.
pub async fn resync_all(ctx: &Ctx) -> ResyncReport {
    let classes = all(&ctx.stores.classes);
    // One entry per LB, with an Ingress that names it (a plain Ingress is
    // its LB's only member; a group's members are gathered below).
    let mut lbs: std::collections::BTreeMap<LbKey, Ingress> = Default::default();
    for ing in ctx.stores.ingresses.state() {
        if ing.metadata.deletion_timestamp.is_some()
            || !has_finalizer(&ing)
            || !is_ours(&ing, &classes, &ctx.settings.controller_name)
        {
            continue;
        }
        let Ok(key) = lb_key(&ing) else { continue };
        if applied_key(&ing).as_ref() != Some(&key) {
            continue;
        }
        lbs.entry(key).or_insert_with(|| (*ing).clone());
    }
    let mut report = ResyncReport::default();
    let inputs = Inputs::take(&ctx.stores);
    // Guards are held until the outcomes are recorded, so the queue never
    // works on an LB the batch is changing.
    let mut guards = Vec::new();
    let mut batch: Vec<(Vec<Ingress>, DesiredLb)> = Vec::new();
    for (key, ing) in lbs {
        let Ok(guard) = ctx.lock_for(&key).try_lock_owned() else {
            report.skipped += 1;
            continue;
        };
        let include = matches!(key, LbKey::Single { .. }).then_some(&ing);
        let mut members = members(ctx, &key, include, None);
        if members.is_empty() {
            continue;
        }
        match desired_for(ctx, &key, &mut members, &inputs).await {
            Ok(d) => {
                guards.push(guard);
                batch.push((members, d));
            }
            Err(e) => {
                report.failed += 1;
                ctx.metrics.record(NAME, e.metric_label());
                tracing::warn!(lb = ?key, error = %e, "ingress resync: cannot translate");
            }
        }
    }
    let desired: Vec<DesiredLb> = batch.iter().map(|(_, d)| d.clone()).collect();
    let results = ctx.lbs.ensure_many(&desired).await;
    for ((members, d), result) in batch.iter().zip(results) {
        match record_outcome(ctx, members, &members[0], result).await {
            Ok(_) => report.ensured += 1,
            Err(e) => {
                report.failed += 1;
                ctx.metrics.record(NAME, e.metric_label());
                tracing::warn!(owner = %d.owner, error = %e, "ingress resync failed");
            }
        }
    }
    drop(guards);
    report
}

/// Runs [`resync_all`] every `ctx.resync` until `shutdown`. After a resync
/// with failures the next one comes sooner (2 s doubling, capped at the
/// period): the work queue does not requeue successful Ingresses, so this
/// loop is what retries a failed drift repair.
async fn resync_loop(ctx: Arc<Ctx>, shutdown: Shutdown) {
    let mut failures: u32 = 0;
    loop {
        let wait = if failures == 0 {
            ctx.resync
        } else {
            Duration::from_secs(2)
                .saturating_mul(1u32 << (failures - 1).min(16))
                .min(ctx.resync)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait() => return,
        }
        let r = resync_all(&ctx).await;
        tracing::debug!(
            ensured = r.ensured,
            failed = r.failed,
            skipped = r.skipped,
            "ingress resync"
        );
        failures = if r.failed > 0 {
            failures.saturating_add(1)
        } else {
            0
        };
    }
}

async fn invalid(ctx: &Ctx, ing: &Ingress, e: TranslateError) -> Error {
    ctx.events
        .warning(
            &oref(ing),
            "InvalidIngress",
            "EnsureLoadBalancer",
            e.to_string(),
        )
        .await;
    Error::Invalid(e)
}

async fn invalid_in(ctx: &Ctx, members: &[Ingress], e: TranslateError) -> Error {
    match members.iter().find(|m| key_of(m) == e.object) {
        Some(m) => invalid(ctx, m, e).await,
        None => Error::Invalid(e),
    }
}

/// Ingresses of `ns` whose backends (default or per path) name Service `svc`.
fn referencing_service(
    store: &Store<Ingress>,
    ns: Option<String>,
    svc: &str,
) -> Vec<ObjectRef<Ingress>> {
    store
        .state()
        .iter()
        .filter(|i| i.namespace() == ns)
        .filter(|i| {
            let Some(spec) = &i.spec else { return false };
            let default = spec.default_backend.iter();
            let paths = spec
                .rules
                .iter()
                .flatten()
                .filter_map(|r| r.http.as_ref())
                .flat_map(|h| h.paths.iter().map(|p| &p.backend));
            default
                .chain(paths)
                .any(|b| b.service.as_ref().is_some_and(|s| s.name == svc))
        })
        .map(|i| ObjectRef::from_obj(&**i))
        .collect()
}

/// Runs the controller until `shutdown`: reflectors for the inputs, the
/// Ingress work queue, and the triggers that map input changes to Ingresses.
pub async fn run(
    kube: kube::Client,
    lbs: Reconciler,
    settings: Settings,
    metrics: ReconcileMetrics,
    identity: Option<String>,
    resync: Duration,
    shutdown: Shutdown,
) {
    let cfg = watcher::Config::default;
    let tls_only = || watcher::Config::default().fields("type=kubernetes.io/tls");

    let (classes, class_w) = reflector::store::<IngressClass>();
    let (services, svc_w) = reflector::store::<Service>();
    let (slices, slice_w) = reflector::store::<EndpointSlice>();
    let (nodes, node_w) = reflector::store::<Node>();
    let (secrets, secret_w) = reflector::store::<Secret>();

    // Class changes and changes of the eligible node set touch every Ingress.
    let class_trigger = reflector::reflector(
        class_w,
        watcher(Api::<IngressClass>::all(kube.clone()), cfg()).modify(slim),
    )
    .default_backoff()
    .touched_objects()
    .filter_map(|r| futures::future::ready(r.ok().map(|_| ())));
    // Tracked per Node event (never by rescanning the store).
    let provider = settings.provider_name.clone();
    let mut eligible = crate::nodes::PerNode::default();
    let node_trigger = reflector::reflector(
        node_w,
        watcher(Api::<Node>::all(kube.clone()), cfg()).modify(slim),
    )
    .default_backoff()
    .filter_map(move |r| {
        let changed = r.is_ok_and(|ev| {
            eligible.on_event(&ev, |n| crate::nodes::eligible_instance(n, &provider))
        });
        futures::future::ready(changed.then_some(()))
    });
    let background = vec![
        tokio::spawn(
            reflector::reflector(
                svc_w,
                watcher(Api::<Service>::all(kube.clone()), cfg()).modify(slim),
            )
            .default_backoff()
            .for_each(|_| futures::future::ready(())),
        ),
        tokio::spawn(
            reflector::reflector(
                slice_w,
                watcher(Api::<EndpointSlice>::all(kube.clone()), cfg()).modify(slim),
            )
            .default_backoff()
            .for_each(|_| futures::future::ready(())),
        ),
        tokio::spawn(
            reflector::reflector(
                secret_w,
                watcher(Api::<Secret>::all(kube.clone()), tls_only()).modify(slim),
            )
            .default_backoff()
            .for_each(|_| futures::future::ready(())),
        ),
    ];

    let controller = Controller::new(Api::<Ingress>::all(kube.clone()), cfg());
    let ing_store = controller.store();
    let stores = Stores {
        ingresses: ing_store.clone(),
        classes,
        services,
        slices,
        nodes,
        secrets,
    };
    let ctx = Arc::new(Ctx::new(
        kube.clone(),
        lbs,
        settings,
        stores,
        metrics,
        identity,
        resync,
    ));
    let resync_task = tokio::spawn(resync_loop(ctx.clone(), shutdown.clone()));
    let (s1, s2, s3) = (ing_store.clone(), ing_store.clone(), ing_store.clone());
    controller
        .reconcile_all_on(class_trigger)
        .reconcile_all_on(node_trigger)
        .watches(
            Api::<Service>::all(kube.clone()),
            cfg(),
            move |s: Service| referencing_service(&s1, s.namespace(), &s.name_any()),
        )
        .watches(
            Api::<EndpointSlice>::all(kube.clone()),
            cfg(),
            move |s: EndpointSlice| match s.labels().get("kubernetes.io/service-name") {
                Some(svc) => referencing_service(&s2, s.namespace(), svc),
                None => Vec::new(),
            },
        )
        .watches(
            Api::<Secret>::all(kube.clone()),
            tls_only(),
            move |s: Secret| {
                let name = s.name_any();
                let ns = s.namespace();
                s3.state()
                    .iter()
                    .filter(|i| i.namespace() == ns)
                    .filter(|i| {
                        i.spec
                            .as_ref()
                            .and_then(|sp| sp.tls.as_ref())
                            .is_some_and(|t| {
                                t.iter().any(|t| t.secret_name.as_deref() == Some(&name))
                            })
                    })
                    .map(|i| ObjectRef::from_obj(&**i))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(async move { shutdown.wait().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
    // Let a resync in progress finish its writes (like in-flight reconciles).
    let _ = resync_task.await;
    for b in background {
        b.abort();
    }
}

//! Observe -> plan -> execute, for `ensure` and `delete`.
//!
//! Nothing is remembered between calls: each call re-reads the cloud by tag
//! and name, so a crash at any point is followed by a call that picks up
//! where the previous one stopped. Every resource is tagged right after its
//! create call returns, and anything created but not tagged is found again
//! by its deterministic name.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use iaas_client::Client;
use iaas_client::actions::{
    AddLoadBalancerBackends, AddLoadBalancerListeners, AddLoadBalancerPolicyRules,
    AddSecurityGroupRules, AllocateEips, ApplySecurityGroup, AssociateEipsToLoadBalancer,
    AttachTags, BackendSpec, CreateLoadBalancer, CreateLoadBalancerPolicy, CreateSecurityGroup,
    CreateServerCertificate, CreateTag, DeleteLoadBalancerBackends, DeleteLoadBalancerListeners,
    DeleteLoadBalancerPolicies, DeleteLoadBalancers, DeleteSecurityGroupRules,
    DeleteSecurityGroups, DeleteServerCertificates, DeleteTags, DescribeLoadBalancers,
    DescribeTags, DetachTags, DissociateEipsFromLoadBalancer, ListenerSpec,
    ModifyLoadBalancerBackendAttributes, ModifyLoadBalancerListenerAttributes, PolicyRuleSpec,
    ReleaseEips, SecurityGroupRuleSpec, UpdateLoadBalancers,
};
use iaas_client::codes;
use iaas_client::model::{LoadBalancer, ResourceTagPair};
use tracing::{debug, info};

use crate::error::{Error, Result};
use crate::model::{DesiredLb, LbOwner, ModelError};
use crate::observe::{ObserveRequest, ObservedLb, is_gone, observe_many};
use crate::plan::{EipRef, LbRef, ListenerRef, Op, Plan, ResourceType, plan, plan_delete};

/// Tunables of a [`Reconciler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcilerOptions {
    /// How long to wait for an LB in a transition (creating, updating,
    /// deleting) before giving up with [`Error::Busy`] (retryable).
    pub transition_timeout: Duration,
    /// Timeout of each job wait; `None` uses the client's `jobs.default_timeout`.
    pub job_timeout: Option<Duration>,
}

impl Default for ReconcilerOptions {
    fn default() -> Self {
        ReconcilerOptions {
            transition_timeout: Duration::from_secs(120),
            job_timeout: None,
        }
    }
}

/// The observed outcome of a successful `ensure`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbStatus {
    /// `lb-xxxx`.
    pub lb_id: String,
    /// Addresses clients use: EIP addresses (public) or private IPs (internal).
    pub addresses: Vec<String>,
    /// Our security group (`None` for a reused LB).
    pub security_group_id: Option<String>,
    /// Whether the LB is a reused, user-given one.
    pub reused: bool,
    /// How many plan operations this call executed (0: nothing changed).
    pub operations: usize,
}

/// Makes the cloud match [`DesiredLb`]s and cleans up after owners.
#[derive(Debug, Clone)]
pub struct Reconciler {
    client: Client,
    cluster_id: String,
    opts: ReconcilerOptions,
}

impl Reconciler {
    /// A reconciler for one cluster's LBs.
    pub fn new(client: Client, cluster_id: impl Into<String>) -> Self {
        Reconciler {
            client,
            cluster_id: cluster_id.into(),
            opts: ReconcilerOptions::default(),
        }
    }

    /// Replaces the options.
    pub fn with_options(mut self, opts: ReconcilerOptions) -> Self {
        self.opts = opts;
        self
    }

    /// The IaaS client (its `stats()` count the calls made).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The cluster id owners must carry.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    fn check_owner(&self, owner: &LbOwner) -> Result<()> {
        owner.validate()?;
        if owner.cluster_id != self.cluster_id {
            return Err(ModelError::new(
                "owner.cluster_id",
                format!(
                    "{:?} is not this reconciler's cluster {:?}",
                    owner.cluster_id, self.cluster_id
                ),
            )
            .into());
        }
        Ok(())
    }

    /// Reads the cloud state of one owner.
    pub async fn observe(
        &self,
        owner: &LbOwner,
        desired: Option<&DesiredLb>,
    ) -> Result<ObservedLb> {
        crate::observe::observe(&self.client, owner, desired).await
    }

    /// Observes, waiting (bounded) while any of the owner's LBs is in a transition.
    async fn settled(&self, owner: &LbOwner, desired: Option<&DesiredLb>) -> Result<ObservedLb> {
        let start = Instant::now();
        loop {
            let obs = self.observe(owner, desired).await?;
            let busy = obs
                .lb
                .iter()
                .chain(obs.stale_lbs.iter())
                .find(|lb| !lb.transition_status.is_empty());
            let Some(lb) = busy else { return Ok(obs) };
            if start.elapsed() >= self.opts.transition_timeout {
                return Err(Error::Busy {
                    what: format!(
                        "load balancer {} ({})",
                        lb.loadbalancer_id, lb.transition_status
                    ),
                    waited: start.elapsed(),
                });
            }
            debug!(lb = %lb.loadbalancer_id, transition = %lb.transition_status, "waiting for load balancer to settle");
            self.wait_lb_idle(&lb.loadbalancer_id, start).await?;
        }
    }

    /// Polls one LB until it is idle or gone, or the transition bound passes.
    async fn wait_lb_idle(&self, lb_id: &str, start: Instant) -> Result<()> {
        let mut delay = Duration::from_millis(100);
        loop {
            let lb = self.describe_lb(lb_id).await?;
            match lb {
                None => return Ok(()),
                Some(lb) if lb.transition_status.is_empty() => return Ok(()),
                Some(lb) => {
                    if start.elapsed() >= self.opts.transition_timeout {
                        return Err(Error::Busy {
                            what: format!("load balancer {lb_id} ({})", lb.transition_status),
                            waited: start.elapsed(),
                        });
                    }
                }
            }
            let left = self.opts.transition_timeout.saturating_sub(start.elapsed());
            tokio::time::sleep(delay.min(left)).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn describe_lb(&self, lb_id: &str) -> Result<Option<LoadBalancer>> {
        match self
            .client
            .describe_load_balancers(&DescribeLoadBalancers {
                loadbalancers: vec![lb_id.to_string()],
                ..Default::default()
            })
            .await
        {
            Ok(page) => Ok(page
                .items
                .into_iter()
                .find(|lb| lb.loadbalancer_id == lb_id && !is_gone(&lb.status))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(Error::iaas("describe load balancer", e)),
        }
    }

    /// Plans without executing (a dry run: what `ensure` would do now).
    pub async fn plan(&self, desired: &DesiredLb) -> Result<Plan> {
        desired.validate()?;
        self.check_owner(&desired.owner)?;
        let obs = self.observe(&desired.owner, Some(desired)).await?;
        plan(desired, &obs)
    }

    /// Makes the cloud match `desired`; returns the LB's id and addresses.
    /// An unchanged LB costs only Describe calls.
    pub async fn ensure(&self, desired: &DesiredLb) -> Result<LbStatus> {
        desired.validate()?;
        self.check_owner(&desired.owner)?;
        let obs = self.settled(&desired.owner, Some(desired)).await?;
        self.apply(desired, &obs).await
    }

    /// Ensures many LBs, observing them with batched Describe calls (a
    /// resync). Results are in input order; one failure does not stop the others.
    pub async fn ensure_many(&self, desired: &[DesiredLb]) -> Vec<Result<LbStatus>> {
        let mut results: Vec<Option<Result<LbStatus>>> = desired.iter().map(|_| None).collect();
        let mut valid = Vec::new();
        for (i, d) in desired.iter().enumerate() {
            match d
                .validate()
                .map_err(Error::from)
                .and_then(|_| self.check_owner(&d.owner))
            {
                Ok(()) => valid.push(i),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let reqs: Vec<ObserveRequest<'_>> = valid
            .iter()
            .map(|&i| ObserveRequest {
                owner: &desired[i].owner,
                desired: Some(&desired[i]),
            })
            .collect();
        match observe_many(&self.client, &reqs).await {
            Ok(observed) => {
                for (&i, obs) in valid.iter().zip(observed) {
                    let busy = obs
                        .lb
                        .iter()
                        .chain(obs.stale_lbs.iter())
                        .any(|lb| !lb.transition_status.is_empty());
                    results[i] = Some(if busy {
                        self.ensure(&desired[i]).await
                    } else {
                        self.apply(&desired[i], &obs).await
                    });
                }
            }
            Err(_) => {
                // Fall back to one observation per owner so one bad answer
                // does not fail the whole resync.
                for &i in &valid {
                    results[i] = Some(self.ensure(&desired[i]).await);
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Conflict("not reconciled".into()))))
            .collect()
    }

    async fn apply(&self, desired: &DesiredLb, obs: &ObservedLb) -> Result<LbStatus> {
        let p = plan(desired, obs)?;
        let reused = desired.reuse_existing.is_some();
        if p.is_empty() {
            let lb = obs
                .lb
                .as_ref()
                .ok_or_else(|| Error::Conflict("empty plan without a load balancer".to_string()))?;
            return Ok(status_of(
                lb,
                obs.security_group
                    .as_ref()
                    .map(|s| s.security_group_id.clone()),
                reused,
                0,
            ));
        }
        info!(owner = %desired.owner, ops = ?p.kinds(), "ensuring load balancer");
        let n = p.ops.len();
        let addresses_kept = !p.ops.iter().any(changes_addresses);
        let refs = self.execute(&desired.owner, p).await?;
        let lb_id = refs
            .lb
            .ok_or_else(|| Error::Conflict("plan finished without a load balancer".into()))?;
        // Listener, backend and security group changes leave the LB's
        // addresses as observed: no need to describe it again.
        if addresses_kept && let Some(lb) = obs.lb.as_ref().filter(|lb| lb.loadbalancer_id == lb_id)
        {
            return Ok(status_of(lb, refs.security_group, reused, n));
        }
        let lb = self.describe_lb(&lb_id).await?.ok_or_else(|| Error::Busy {
            what: format!("load balancer {lb_id} vanished right after reconcile"),
            waited: Duration::ZERO,
        })?;
        Ok(status_of(&lb, refs.security_group, reused, n))
    }

    /// Removes everything `owner` has in the cloud. Tolerates resources
    /// already gone, waits (bounded) for LBs in a transition, never deletes a
    /// reused LB, and trusts no id the tag or name does not confirm.
    pub async fn delete(&self, owner: &LbOwner) -> Result<()> {
        self.check_owner(owner)?;
        let obs = self.settled(owner, None).await?;
        let p = plan_delete(owner, &obs);
        if p.is_empty() {
            return Ok(());
        }
        info!(owner = %owner, ops = ?p.kinds(), "deleting load balancer resources");
        self.execute(owner, p).await?;
        Ok(())
    }

    /// Runs a plan in order; returns the final ids.
    pub async fn execute(&self, owner: &LbOwner, p: Plan) -> Result<crate::plan::Refs> {
        let mut ex = Exec {
            client: &self.client,
            owner,
            refs: p.refs,
            allocated: Vec::new(),
            new_listeners: BTreeMap::new(),
            deferred: Vec::new(),
            defer_job: false,
            job_timeout: self.opts.job_timeout,
        };
        let last = p.ops.len().saturating_sub(1);
        for (i, op) in p.ops.iter().enumerate() {
            debug!(owner = %owner, op = op.kind(), "executing");
            // Nothing after the last op depends on its job: it is waited
            // for with the deferred ones, in one DescribeJobs round.
            ex.defer_job = i == last;
            ex.run(op).await?;
        }
        if !ex.deferred.is_empty() {
            let jobs = std::mem::take(&mut ex.deferred);
            self.client
                .wait_jobs(&jobs, self.opts.job_timeout)
                .await
                .map_err(|e| Error::iaas("wait for jobs", e))?;
        }
        Ok(ex.refs)
    }
}

/// Whether `op` can change which LB is current or the addresses it serves.
fn changes_addresses(op: &Op) -> bool {
    matches!(
        op,
        Op::CreateLoadBalancer { .. }
            | Op::DeleteLoadBalancer { .. }
            | Op::AllocateEip { .. }
            | Op::AssociateEips { .. }
            | Op::DissociateEips { .. }
    )
}

fn status_of(lb: &LoadBalancer, sg: Option<String>, reused: bool, operations: usize) -> LbStatus {
    let addresses = if lb.eips.is_empty() {
        lb.private_ips.clone()
    } else {
        lb.eips.iter().map(|e| e.eip_addr.clone()).collect()
    };
    LbStatus {
        lb_id: lb.loadbalancer_id.clone(),
        addresses,
        security_group_id: if reused { None } else { sg },
        reused,
        operations,
    }
}

/// Executor state: ids learned while running a plan.
struct Exec<'a> {
    client: &'a Client,
    owner: &'a LbOwner,
    refs: crate::plan::Refs,
    allocated: Vec<String>,
    new_listeners: BTreeMap<(u16, &'static str), String>,
    deferred: Vec<String>,
    /// Whether the running op may defer its job to the end of the plan.
    defer_job: bool,
    job_timeout: Option<Duration>,
}

fn missing(what: &str) -> Error {
    Error::Conflict(format!("plan refers to {what}, which does not exist yet"))
}

impl Exec<'_> {
    fn tag(&self) -> Result<String> {
        self.refs
            .tag
            .clone()
            .ok_or_else(|| missing("the ownership tag"))
    }

    fn lb(&self, r: &LbRef) -> Result<String> {
        match r {
            LbRef::Id(id) => Ok(id.clone()),
            LbRef::Current => self
                .refs
                .lb
                .clone()
                .ok_or_else(|| missing("the load balancer")),
        }
    }

    fn eips(&self, refs: &[EipRef]) -> Vec<String> {
        let mut out = Vec::new();
        for r in refs {
            match r {
                EipRef::Id(id) => out.push(id.clone()),
                EipRef::Allocated => out.extend(self.allocated.iter().cloned()),
            }
        }
        out
    }

    async fn wait(&self, step: &str, job_id: &str) -> Result<()> {
        if job_id.is_empty() {
            return Ok(());
        }
        self.client
            .wait_job(job_id, self.job_timeout)
            .await
            .map(|_| ())
            .map_err(|e| Error::iaas(step, e))
    }

    async fn attach(&self, rt: ResourceType, id: &str) -> Result<()> {
        let tag = self.tag()?;
        self.client
            .attach_tags(&AttachTags {
                resource_tag_pairs: vec![ResourceTagPair {
                    tag_id: tag,
                    resource_type: rt.as_str().to_string(),
                    resource_id: id.to_string(),
                }],
            })
            .await
            .map(|_| ())
            .map_err(|e| Error::iaas(format!("tag {} {id}", rt.as_str()), e))
    }

    /// Deletes by ids, treating "not found" as done: on 2100 the batch is
    /// retried id by id, since one vanished id fails the whole call.
    async fn delete_ids<F, Fut, T>(&self, step: &str, ids: &[String], call: F) -> Result<()>
    where
        F: Fn(Vec<String>) -> Fut,
        Fut: std::future::Future<Output = Result<T, iaas_client::Error>>,
    {
        if ids.is_empty() {
            return Ok(());
        }
        match call(ids.to_vec()).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => {
                for id in ids {
                    match call(vec![id.clone()]).await {
                        Ok(_) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(Error::iaas(step, e)),
                    }
                }
                Ok(())
            }
            Err(e) => Err(Error::iaas(step, e)),
        }
    }

    async fn run(&mut self, op: &Op) -> Result<()> {
        let c = self.client;
        match op {
            Op::CreateTag { name } => {
                let id = match c
                    .create_tag(&CreateTag {
                        tag_name: name.clone(),
                        description: Some(format!(
                            "load balancer resources of {} in cluster {}",
                            self.owner, self.owner.cluster_id
                        )),
                    })
                    .await
                {
                    Ok(out) => out.tag_id,
                    // Created by a call whose answer was lost: find it.
                    Err(e) if e.code() == Some(codes::ALREADY_EXISTS) => {
                        let tags = c
                            .describe_tags_all(&DescribeTags {
                                search_word: Some(name.clone()),
                                ..Default::default()
                            })
                            .await
                            .map_err(|e| Error::iaas("find ownership tag", e))?;
                        tags.into_iter()
                            .find(|t| &t.tag_name == name)
                            .map(|t| t.tag_id)
                            .ok_or_else(|| Error::iaas("create ownership tag", e))?
                    }
                    Err(e) => return Err(Error::iaas("create ownership tag", e)),
                };
                self.refs.tag = Some(id);
            }
            Op::AttachTag {
                resource_type,
                resource_id,
            } => self.attach(*resource_type, resource_id).await?,
            Op::DetachTag {
                resource_type,
                resource_id,
            } => {
                let tag = self.tag()?;
                match c
                    .detach_tags(&DetachTags {
                        resource_tag_pairs: vec![ResourceTagPair {
                            tag_id: tag,
                            resource_type: resource_type.as_str().to_string(),
                            resource_id: resource_id.clone(),
                        }],
                    })
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(Error::iaas("untag reused load balancer", e)),
                }
            }
            Op::CreateSecurityGroup { name } => {
                let out = c
                    .create_security_group(&CreateSecurityGroup {
                        security_group_name: Some(name.clone()),
                    })
                    .await
                    .map_err(|e| Error::iaas("create security group", e))?;
                self.attach(ResourceType::SecurityGroup, &out.security_group_id)
                    .await?;
                self.refs.security_group = Some(out.security_group_id);
            }
            Op::AddSecurityGroupRules { rules } => {
                let sg = self
                    .refs
                    .security_group
                    .clone()
                    .ok_or_else(|| missing("the security group"))?;
                c.add_security_group_rules(&AddSecurityGroupRules {
                    security_group: sg,
                    rules: rules
                        .iter()
                        .map(|r| SecurityGroupRuleSpec {
                            protocol: r.protocol.clone(),
                            priority: 1,
                            action: Some("accept".into()),
                            direction: Some(0),
                            val3: Some(r.cidr.clone()),
                            security_group_rule_name: Some(r.name.clone()),
                            ..Default::default()
                        })
                        .collect(),
                })
                .await
                .map_err(|e| Error::iaas("add security group rules", e))?;
            }
            Op::DeleteSecurityGroupRules { ids } => {
                self.delete_ids("delete security group rules", ids, |ids| async move {
                    c.delete_security_group_rules(&DeleteSecurityGroupRules::new(ids))
                        .await
                })
                .await?;
            }
            Op::ApplySecurityGroup => {
                let sg = self
                    .refs
                    .security_group
                    .clone()
                    .ok_or_else(|| missing("the security group"))?;
                let out = c
                    .apply_security_group(&ApplySecurityGroup {
                        security_group: sg,
                        instances: Vec::new(),
                    })
                    .await
                    .map_err(|e| Error::iaas("apply security group", e))?;
                // Nothing later depends on it: waited for at the end, with the others.
                if !out.job_id.is_empty() {
                    self.deferred.push(out.job_id);
                }
            }
            Op::AllocateEip { name, bandwidth } => {
                let out = c
                    .allocate_eips(&AllocateEips {
                        bandwidth: *bandwidth,
                        count: Some(1),
                        eip_name: Some(name.clone()),
                    })
                    .await
                    .map_err(|e| Error::iaas("allocate EIP", e))?;
                for id in &out.eips {
                    self.attach(ResourceType::Eip, id).await?;
                }
                self.wait("allocate EIP", &out.job_id).await?;
                self.allocated.extend(out.eips);
            }
            Op::CreateLoadBalancer {
                name,
                eips,
                vxnet,
                private_ip,
                loadbalancer_type,
            } => {
                let out = c
                    .create_load_balancer(&CreateLoadBalancer {
                        eips: self.eips(eips),
                        vxnet: vxnet.clone(),
                        private_ip: private_ip.clone(),
                        loadbalancer_type: Some(*loadbalancer_type),
                        loadbalancer_name: Some(name.clone()),
                        security_group: self.refs.security_group.clone(),
                    })
                    .await
                    .map_err(|e| Error::iaas("create load balancer", e))?;
                // Tag before waiting: a crash during the job must not leave
                // an LB only its name can find.
                self.attach(ResourceType::LoadBalancer, &out.loadbalancer_id)
                    .await?;
                self.refs.lb = Some(out.loadbalancer_id);
                self.wait("create load balancer", &out.job_id).await?;
            }
            Op::AssociateEips { eips } => {
                let lb = self.lb(&LbRef::Current)?;
                let out = c
                    .associate_eips_to_load_balancer(&AssociateEipsToLoadBalancer {
                        eips: self.eips(eips),
                        loadbalancer: lb,
                    })
                    .await
                    .map_err(|e| Error::iaas("associate EIPs", e))?;
                self.wait("associate EIPs", &out.job_id).await?;
            }
            Op::DissociateEips { lb, ids } => {
                let lb = self.lb(lb)?;
                match c
                    .dissociate_eips_from_load_balancer(&DissociateEipsFromLoadBalancer {
                        eips: ids.clone(),
                        loadbalancer: lb,
                    })
                    .await
                {
                    Ok(out) => self.wait("dissociate EIPs", &out.job_id).await?,
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(Error::iaas("dissociate EIPs", e)),
                }
            }
            Op::UploadCertificate {
                fingerprint,
                name,
                pem_chain,
                pem_key,
            } => {
                let out = c
                    .create_server_certificate(&CreateServerCertificate {
                        server_certificate_name: Some(name.clone()),
                        certificate_content: pem_chain.clone(),
                        private_key: pem_key.0.clone(),
                    })
                    .await
                    .map_err(|e| Error::iaas("upload certificate", e))?;
                self.attach(ResourceType::ServerCertificate, &out.server_certificate_id)
                    .await?;
                self.refs
                    .certificates
                    .insert(fingerprint.clone(), out.server_certificate_id);
            }
            Op::CreatePolicy { key, name, rules } => {
                let out = c
                    .create_load_balancer_policy(&CreateLoadBalancerPolicy {
                        loadbalancer_policy_name: Some(name.clone()),
                        operator: Some("and".into()),
                    })
                    .await
                    .map_err(|e| Error::iaas("create policy", e))?;
                c.add_load_balancer_policy_rules(&AddLoadBalancerPolicyRules {
                    loadbalancer_policy: out.loadbalancer_policy_id.clone(),
                    rules: rules
                        .iter()
                        .map(|(t, v)| PolicyRuleSpec {
                            rule_type: t.clone(),
                            val: v.clone(),
                            loadbalancer_policy_rule_name: Some(name.clone()),
                        })
                        .collect(),
                })
                .await
                .map_err(|e| Error::iaas("add policy rules", e))?;
                self.refs
                    .policies
                    .insert(key.clone(), out.loadbalancer_policy_id);
            }
            Op::DeleteBackends { ids } => {
                self.delete_ids("delete backends", ids, |ids| async move {
                    c.delete_load_balancer_backends(&DeleteLoadBalancerBackends::new(ids))
                        .await
                })
                .await?;
            }
            Op::DeleteListeners { ids } => {
                self.delete_ids("delete listeners", ids, |ids| async move {
                    c.delete_load_balancer_listeners(&DeleteLoadBalancerListeners::new(ids))
                        .await
                })
                .await?;
            }
            Op::AddListeners { listeners } => {
                let lb = self.lb(&LbRef::Current)?;
                let mut specs = Vec::new();
                for l in listeners {
                    specs.push(ListenerSpec {
                        listener_port: l.port,
                        listener_protocol: l.protocol.as_str().to_string(),
                        backend_protocol: Some(l.attrs.backend_protocol.clone()),
                        balance_mode: Some(l.attrs.balance_mode.clone()),
                        healthy_check_method: Some(l.attrs.healthy_check_method.clone()),
                        healthy_check_option: Some(l.attrs.healthy_check_option.clone()),
                        session_sticky: (!l.attrs.session_sticky.is_empty())
                            .then(|| l.attrs.session_sticky.clone()),
                        forwardfor: l.protocol.is_l7().then_some(l.attrs.forwardfor),
                        server_certificate_id: self.cert_ids(&l.attrs.certificates)?,
                        loadbalancer_listener_name: Some(l.attrs.name.clone()),
                    });
                }
                let out = c
                    .add_load_balancer_listeners(&AddLoadBalancerListeners {
                        loadbalancer: lb,
                        listeners: specs,
                    })
                    .await
                    .map_err(|e| Error::iaas("add listeners", e))?;
                if out.loadbalancer_listeners.len() != listeners.len() {
                    return Err(Error::Conflict(format!(
                        "AddLoadBalancerListeners returned {} ids for {} listeners",
                        out.loadbalancer_listeners.len(),
                        listeners.len()
                    )));
                }
                for (l, id) in listeners.iter().zip(out.loadbalancer_listeners) {
                    self.new_listeners
                        .insert((l.port, l.protocol.transport()), id);
                }
            }
            Op::ModifyListener { id, change } => {
                let certs = match &change.certificates {
                    Some(fps) => self.cert_ids(fps)?,
                    None => None,
                };
                c.modify_load_balancer_listener_attributes(&ModifyLoadBalancerListenerAttributes {
                    loadbalancer_listener: id.clone(),
                    loadbalancer_listener_name: change.name.clone(),
                    backend_protocol: change.backend_protocol.clone(),
                    balance_mode: change.balance_mode.clone(),
                    healthy_check_method: change.healthy_check_method.clone(),
                    healthy_check_option: change.healthy_check_option.clone(),
                    session_sticky: change.session_sticky.clone(),
                    forwardfor: change.forwardfor,
                    server_certificate_id: certs,
                })
                .await
                .map_err(|e| Error::iaas(format!("modify listener {id}"), e))?;
            }
            Op::ModifyBackend { id, port, weight } => {
                c.modify_load_balancer_backend_attributes(&ModifyLoadBalancerBackendAttributes {
                    loadbalancer_backend: id.clone(),
                    port: *port,
                    weight: *weight,
                })
                .await
                .map_err(|e| Error::iaas(format!("modify backend {id}"), e))?;
            }
            Op::AddBackends { listener, backends } => {
                let listener_id = match listener {
                    ListenerRef::Id(id) => id.clone(),
                    ListenerRef::New { port, transport } => self
                        .new_listeners
                        .get(&(*port, *transport))
                        .cloned()
                        .ok_or_else(|| missing(&format!("listener {port}/{transport}")))?,
                };
                let mut specs = Vec::new();
                for b in backends {
                    let policy = match &b.policy {
                        Some(k) => Some(
                            self.refs
                                .policies
                                .get(k)
                                .cloned()
                                .ok_or_else(|| missing(&format!("policy {k}")))?,
                        ),
                        None => None,
                    };
                    specs.push(BackendSpec {
                        resource_id: b.resource_id.clone(),
                        port: b.port,
                        weight: Some(b.weight),
                        loadbalancer_policy_id: policy,
                        loadbalancer_backend_name: Some(b.name.clone()),
                    });
                }
                c.add_load_balancer_backends(&AddLoadBalancerBackends {
                    loadbalancer_listener: listener_id,
                    backends: specs,
                })
                .await
                .map_err(|e| Error::iaas("add backends", e))?;
            }
            Op::UpdateLoadBalancer { lb } => {
                let lb = self.lb(lb)?;
                match c
                    .update_load_balancers(&UpdateLoadBalancers::new([lb.clone()]))
                    .await
                {
                    Ok(out) if self.defer_job && !out.job_id.is_empty() => {
                        self.deferred.push(out.job_id)
                    }
                    Ok(out) => self.wait("update load balancer", &out.job_id).await?,
                    // A stale LB that vanished needs no update.
                    Err(e) if e.is_not_found() && Some(&lb) != self.refs.lb.as_ref() => {}
                    Err(e) => return Err(Error::iaas("update load balancer", e)),
                }
            }
            Op::DeletePolicies { ids } => {
                self.delete_ids("delete policies", ids, |ids| async move {
                    c.delete_load_balancer_policies(&DeleteLoadBalancerPolicies::new(ids))
                        .await
                })
                .await?;
            }
            Op::DeleteLoadBalancer { id } => {
                match c
                    .delete_load_balancers(&DeleteLoadBalancers::new([id.clone()]))
                    .await
                {
                    Ok(out) => self.wait("delete load balancer", &out.job_id).await?,
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(Error::iaas("delete load balancer", e)),
                }
                if self.refs.lb.as_ref() == Some(id) {
                    self.refs.lb = None;
                }
            }
            Op::ReleaseEips { ids } => {
                let mut jobs = Vec::new();
                for id in ids {
                    match c.release_eips(&ReleaseEips::new([id.clone()])).await {
                        Ok(out) if !out.job_id.is_empty() => jobs.push(out.job_id),
                        Ok(_) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(Error::iaas("release EIPs", e)),
                    }
                }
                self.deferred.extend(jobs);
            }
            Op::DeleteSecurityGroup { id } => {
                self.delete_ids(
                    "delete security group",
                    std::slice::from_ref(id),
                    |ids| async move {
                        c.delete_security_groups(&DeleteSecurityGroups::new(ids))
                            .await
                    },
                )
                .await?;
                if self.refs.security_group.as_ref() == Some(id) {
                    self.refs.security_group = None;
                }
            }
            Op::DeleteCertificates { ids } => {
                self.delete_ids("delete certificates", ids, |ids| async move {
                    c.delete_server_certificates(&DeleteServerCertificates::new(ids))
                        .await
                })
                .await?;
            }
            Op::DeleteTag { id } => {
                // Pending jobs (EIP releases) first: the tag is how a crash
                // right now would find those EIPs again.
                if !self.deferred.is_empty() {
                    let jobs = std::mem::take(&mut self.deferred);
                    c.wait_jobs(&jobs, self.job_timeout)
                        .await
                        .map_err(|e| Error::iaas("wait for jobs", e))?;
                }
                self.delete_ids(
                    "delete ownership tag",
                    std::slice::from_ref(id),
                    |ids| async move { c.delete_tags(&DeleteTags::new(ids)).await },
                )
                .await?;
                self.refs.tag = None;
            }
        }
        Ok(())
    }

    fn cert_ids(&self, fps: &[String]) -> Result<Option<String>> {
        if fps.is_empty() {
            return Ok(None);
        }
        let ids: Vec<String> = fps
            .iter()
            .map(|fp| {
                self.refs
                    .certificates
                    .get(fp)
                    .cloned()
                    .ok_or_else(|| missing(&format!("certificate {fp}")))
            })
            .collect::<Result<_>>()?;
        Ok(Some(ids.join(",")))
    }
}

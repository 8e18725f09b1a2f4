//! Reading the cloud state of owners, with as few Describe calls as possible.
//!
//! Everything is found through the ownership tag (and, to recover from a
//! crash between a create call and its tagging, through the deterministic
//! names); no id is ever taken from memory. [`observe_many`] batches the
//! Describe calls of many owners: one `DescribeTags` per cluster prefix and
//! one Describe per resource kind per 100 tags, so a resync of 1,000 owners
//! costs a few dozen calls rather than thousands.
//!
//! Name searches are per owner, so they are kept to the cases where they can
//! find something: every plan creates the ownership tag before any other
//! resource and a deletion removes it last, so an owner being ensured whose
//! tag does not exist has nothing in the cloud yet (a new Service costs one
//! `DescribeTags`, not four searches), and an owner whose tagged resource
//! carries our name needs no search for it. Deletions still search by name
//! whatever the tag says, so nothing left by a removed tag can leak.

use std::collections::{BTreeMap, BTreeSet};

use iaas_client::Client;
use iaas_client::actions::{
    DescribeEips, DescribeLoadBalancerPolicies, DescribeLoadBalancers, DescribeSecurityGroupRules,
    DescribeSecurityGroups, DescribeServerCertificates, DescribeTags, PAGE_LIMIT,
};
use iaas_client::model::{
    Eip, LoadBalancer, LoadBalancerPolicy, SecurityGroup, SecurityGroupRule, ServerCertificate,
    Tag, TagRef,
};

use crate::error::{Error, Result};
use crate::model::{DesiredLb, EipSource, LbNetwork, LbOwner, OwnerKind, Protocol};

/// The cloud state of one owner, as [`crate::plan::plan`] consumes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObservedLb {
    /// The ownership tag, when it exists.
    pub tag: Option<Tag>,
    /// The LB the desired state refers to: the reused one, or the oldest one
    /// named ours (tagged or not), with listeners and backends.
    pub lb: Option<LoadBalancer>,
    /// Other LBs carrying our tag or name: crash leftovers, a previously
    /// reused LB. Ours (by name) are deleted; reused ones lose our listeners.
    pub stale_lbs: Vec<LoadBalancer>,
    /// Our security group (the one the LB uses when it is ours).
    pub security_group: Option<SecurityGroup>,
    /// Other security groups carrying our tag or name (leftovers).
    pub extra_security_groups: Vec<SecurityGroup>,
    /// Rules of `security_group`.
    pub sg_rules: Vec<SecurityGroupRule>,
    /// EIPs we allocated (tagged, or named ours and untagged).
    pub eips: Vec<Eip>,
    /// The user-given EIPs of `EipSource::Existing` / `ByAddress`, as found.
    pub wanted_eips: Vec<Eip>,
    /// Certificates we uploaded (tagged, or named ours).
    pub certificates: Vec<ServerCertificate>,
    /// Policies named ours or used by backends of our LBs, with their rules.
    pub policies: Vec<LoadBalancerPolicy>,
}

/// One owner to observe; `desired` (absent for a deletion) tells which
/// optional lookups are needed.
#[derive(Debug, Clone, Copy)]
pub struct ObserveRequest<'a> {
    /// The owner.
    pub owner: &'a LbOwner,
    /// Its desired state, when ensuring.
    pub desired: Option<&'a DesiredLb>,
}

/// Statuses of records that no longer exist (real endpoints list them for a while).
pub(crate) fn is_gone(status: &str) -> bool {
    matches!(status, "deleted" | "ceased" | "released")
}

pub(crate) fn has_tag(tags: &[TagRef], tag: Option<&Tag>) -> bool {
    tag.is_some_and(|t| tags.iter().any(|x| x.tag_id == t.tag_id))
}

fn wrap(step: &str) -> impl FnOnce(iaas_client::Error) -> Error + '_ {
    move |e| Error::iaas(step, e)
}

fn chunks(ids: &[String]) -> impl Iterator<Item = Vec<String>> + '_ {
    ids.chunks(PAGE_LIMIT as usize).map(<[String]>::to_vec)
}

/// Observes one owner (see [`observe_many`]).
pub async fn observe(
    client: &Client,
    owner: &LbOwner,
    desired: Option<&DesiredLb>,
) -> Result<ObservedLb> {
    let mut v = observe_many(client, &[ObserveRequest { owner, desired }]).await?;
    Ok(v.pop().unwrap_or_default())
}

/// Observes many owners with batched Describe calls; results are in request order.
pub async fn observe_many(client: &Client, reqs: &[ObserveRequest<'_>]) -> Result<Vec<ObservedLb>> {
    let mut out: Vec<ObservedLb> = vec![ObservedLb::default(); reqs.len()];
    if reqs.is_empty() {
        return Ok(out);
    }

    // 1. Ownership tags: exact name for one owner, the cluster prefix for many.
    let mut by_name: BTreeMap<String, Tag> = BTreeMap::new();
    let searches: BTreeSet<String> = if reqs.len() == 1 {
        [reqs[0].owner.tag_name()].into()
    } else {
        reqs.iter()
            .map(|r| LbOwner::tag_prefix(&r.owner.cluster_id))
            .collect()
    };
    for word in searches {
        let tags = client
            .describe_tags_all(&DescribeTags {
                search_word: Some(word),
                ..Default::default()
            })
            .await
            .map_err(wrap("describe ownership tags"))?;
        for t in tags {
            by_name.entry(t.tag_name.clone()).or_insert(t);
        }
    }
    for (o, r) in out.iter_mut().zip(reqs) {
        o.tag = by_name.get(&r.owner.tag_name()).cloned();
    }
    let tag_ids: Vec<String> = out
        .iter()
        .filter_map(|o| o.tag.as_ref().map(|t| t.tag_id.clone()))
        .collect();
    let owner_of_tag: BTreeMap<String, usize> = out
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.tag.as_ref().map(|t| (t.tag_id.clone(), i)))
        .collect();
    let owners_of = |tags: &[TagRef]| -> Vec<usize> {
        tags.iter()
            .filter_map(|t| owner_of_tag.get(&t.tag_id).copied())
            .collect()
    };
    // Owners that may have untagged resources worth a name search: any owner
    // being deleted, and owners being ensured whose tag exists (a create
    // whose tagging was cut short by a crash). See the module docs.
    let searchable: Vec<bool> = reqs
        .iter()
        .zip(&out)
        .map(|(r, o)| r.desired.is_none() || o.tag.is_some())
        .collect();

    // 2. Load balancers by tag (verbose: listeners and backends in the same call).
    let mut lbs: Vec<Vec<LoadBalancer>> = vec![Vec::new(); reqs.len()];
    for chunk in chunks(&tag_ids) {
        let found = client
            .describe_load_balancers_all(&DescribeLoadBalancers {
                tags: chunk,
                verbose: true,
                ..Default::default()
            })
            .await
            .map_err(wrap("describe load balancers by tag"))?;
        for lb in found.into_iter().filter(|lb| !is_gone(&lb.status)) {
            for i in owners_of(&lb.tags) {
                lbs[i].push(lb.clone());
            }
        }
    }
    // Reused LBs not tagged yet, in one call.
    let reuse_missing: Vec<String> = reqs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let id = r.desired?.reuse_existing.as_ref()?;
            (!lbs[i].iter().any(|lb| &lb.loadbalancer_id == id)).then(|| id.clone())
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut reused: BTreeMap<String, LoadBalancer> = BTreeMap::new();
    for chunk in chunks(&reuse_missing) {
        match client
            .describe_load_balancers_all(&DescribeLoadBalancers {
                loadbalancers: chunk,
                verbose: true,
                ..Default::default()
            })
            .await
        {
            Ok(found) => {
                for lb in found.into_iter().filter(|lb| !is_gone(&lb.status)) {
                    reused.insert(lb.loadbalancer_id.clone(), lb);
                }
            }
            // An unknown id is reported by plan as a ReferenceNotFound.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(Error::iaas("describe reused load balancers", e)),
        }
    }
    for (i, r) in reqs.iter().enumerate() {
        if let Some(id) = r.desired.and_then(|d| d.reuse_existing.as_ref())
            && let Some(lb) = reused.get(id)
        {
            lbs[i].push(lb.clone());
        }
        // A create call whose tagging never happened (crash) is found by
        // name. A reused LB is never created by us, so no search then.
        let name = r.owner.lb_name();
        let reusing = r.desired.is_some_and(|d| d.reuse_existing.is_some());
        if searchable[i] && !reusing && !lbs[i].iter().any(|lb| lb.loadbalancer_name == name) {
            let found = client
                .describe_load_balancers_all(&DescribeLoadBalancers {
                    search_word: Some(name.clone()),
                    verbose: true,
                    ..Default::default()
                })
                .await
                .map_err(wrap("describe load balancers by name"))?;
            for lb in found {
                if lb.loadbalancer_name == name
                    && !is_gone(&lb.status)
                    && !lbs[i]
                        .iter()
                        .any(|x| x.loadbalancer_id == lb.loadbalancer_id)
                {
                    lbs[i].push(lb);
                }
            }
        }
    }
    for (i, r) in reqs.iter().enumerate() {
        let mut all = std::mem::take(&mut lbs[i]);
        // Oldest first, so the LB a crash left behind a second time is the stale one.
        all.sort_by(|a, b| {
            (a.create_time.as_str(), a.loadbalancer_id.as_str())
                .cmp(&(b.create_time.as_str(), b.loadbalancer_id.as_str()))
        });
        let name = r.owner.lb_name();
        let current_idx = match r.desired.and_then(|d| d.reuse_existing.as_ref()) {
            Some(id) => all.iter().position(|lb| &lb.loadbalancer_id == id),
            None => all.iter().position(|lb| lb.loadbalancer_name == name),
        };
        // Without a desired state (deletion) every LB found is handled; pick
        // ours as the main one and treat the rest as stale.
        let current_idx = current_idx.or_else(|| {
            r.desired
                .is_none()
                .then(|| (!all.is_empty()).then_some(0))
                .flatten()
        });
        if let Some(ci) = current_idx {
            out[i].lb = Some(all.remove(ci));
        }
        out[i].stale_lbs = all;
    }

    // 3. Security groups by tag, then by name when a tagged one is missing.
    let mut sgs: Vec<Vec<SecurityGroup>> = vec![Vec::new(); reqs.len()];
    for chunk in chunks(&tag_ids) {
        let found = client
            .describe_security_groups_all(&DescribeSecurityGroups {
                tags: chunk,
                ..Default::default()
            })
            .await
            .map_err(wrap("describe security groups by tag"))?;
        for sg in found {
            for i in owners_of(&sg.tags) {
                sgs[i].push(sg.clone());
            }
        }
    }
    for (i, r) in reqs.iter().enumerate() {
        let wants_sg = r.desired.is_none_or(|d| d.reuse_existing.is_none());
        let name = r.owner.security_group_name();
        if searchable[i] && wants_sg && !sgs[i].iter().any(|s| s.security_group_name == name) {
            let found = client
                .describe_security_groups_all(&DescribeSecurityGroups {
                    search_word: Some(name.clone()),
                    ..Default::default()
                })
                .await
                .map_err(wrap("describe security groups by name"))?;
            for sg in found {
                if sg.security_group_name == name
                    && !sgs[i]
                        .iter()
                        .any(|x| x.security_group_id == sg.security_group_id)
                {
                    sgs[i].push(sg);
                }
            }
        }
        let mut all = std::mem::take(&mut sgs[i]);
        let lb_sg = out[i]
            .lb
            .as_ref()
            .filter(|lb| lb.loadbalancer_name == r.owner.lb_name())
            .map(|lb| lb.security_group_id.clone());
        let pick = lb_sg
            .and_then(|id| all.iter().position(|s| s.security_group_id == id))
            .or_else(|| {
                if wants_sg && r.desired.is_some() {
                    (!all.is_empty()).then_some(0)
                } else {
                    None
                }
            });
        if let Some(p) = pick {
            out[i].security_group = Some(all.remove(p));
        }
        out[i].extra_security_groups = all;
    }
    // Rules: one filtered call for a single group, else one listing of all rules.
    let sg_ids: Vec<String> = out
        .iter()
        .filter_map(|o| {
            o.security_group
                .as_ref()
                .map(|s| s.security_group_id.clone())
        })
        .collect();
    if !sg_ids.is_empty() {
        let req = if sg_ids.len() == 1 {
            DescribeSecurityGroupRules {
                security_group: Some(sg_ids[0].clone()),
                ..Default::default()
            }
        } else {
            DescribeSecurityGroupRules::default()
        };
        let rules = client
            .describe_security_group_rules_all(&req)
            .await
            .map_err(wrap("describe security group rules"))?;
        for o in out.iter_mut() {
            if let Some(sg) = &o.security_group {
                o.sg_rules = rules
                    .iter()
                    .filter(|r| r.security_group_id == sg.security_group_id)
                    .cloned()
                    .collect();
            }
        }
    }

    // 4. EIPs we allocated (tagged; untagged by name when none is tagged).
    for chunk in chunks(&tag_ids) {
        let found = client
            .describe_eips_all(&DescribeEips {
                tags: chunk,
                ..Default::default()
            })
            .await
            .map_err(wrap("describe EIPs by tag"))?;
        for e in found.into_iter().filter(|e| !is_gone(&e.status)) {
            for i in owners_of(&e.tags) {
                out[i].eips.push(e.clone());
            }
        }
    }
    for (i, r) in reqs.iter().enumerate() {
        let allocates = match r.desired {
            None => true,
            Some(d) => {
                d.reuse_existing.is_none()
                    && matches!(
                        d.network,
                        LbNetwork::Public {
                            eip: EipSource::Allocate { .. }
                        }
                    )
            }
        };
        if searchable[i] && allocates && out[i].eips.is_empty() {
            let name = r.owner.eip_name();
            let found = client
                .describe_eips_all(&DescribeEips {
                    search_word: Some(name.clone()),
                    ..Default::default()
                })
                .await
                .map_err(wrap("describe EIPs by name"))?;
            // Only an untagged one: a tagged EIP with our name belongs to
            // whoever tagged it (an older incarnation handles its own).
            out[i].eips.extend(
                found
                    .into_iter()
                    .filter(|e| e.eip_name == name && e.tags.is_empty() && !is_gone(&e.status)),
            );
        }
    }
    // User-given EIPs, unless the LB already carries them.
    let mut want_ids: BTreeSet<String> = BTreeSet::new();
    for (i, r) in reqs.iter().enumerate() {
        let Some(d) = r.desired else { continue };
        if d.reuse_existing.is_some() {
            continue;
        }
        let on_lb: Vec<&iaas_client::model::EipRef> =
            out[i].lb.iter().flat_map(|lb| lb.eips.iter()).collect();
        match &d.network {
            LbNetwork::Public {
                eip: EipSource::Existing(ids),
            } => {
                for id in ids {
                    if !on_lb.iter().any(|e| &e.eip_id == id) {
                        want_ids.insert(id.clone());
                    }
                }
            }
            LbNetwork::Public {
                eip: EipSource::ByAddress(ip),
            } => {
                let ip = ip.to_string();
                if !on_lb.iter().any(|e| e.eip_addr == ip) {
                    let found = client
                        .describe_eips_all(&DescribeEips {
                            search_word: Some(ip.clone()),
                            ..Default::default()
                        })
                        .await
                        .map_err(wrap("describe EIP by address"))?;
                    out[i].wanted_eips.extend(
                        found
                            .into_iter()
                            .filter(|e| e.eip_addr == ip && !is_gone(&e.status)),
                    );
                }
            }
            _ => {}
        }
    }
    if !want_ids.is_empty() {
        let ids: Vec<String> = want_ids.into_iter().collect();
        let mut found: Vec<Eip> = Vec::new();
        for chunk in chunks(&ids) {
            match client
                .describe_eips_all(&DescribeEips {
                    eips: chunk,
                    ..Default::default()
                })
                .await
            {
                Ok(v) => found.extend(v.into_iter().filter(|e| !is_gone(&e.status))),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(Error::iaas("describe given EIPs", e)),
            }
        }
        for (i, r) in reqs.iter().enumerate() {
            if let Some(LbNetwork::Public {
                eip: EipSource::Existing(ids),
            }) = r.desired.map(|d| &d.network)
            {
                out[i]
                    .wanted_eips
                    .extend(found.iter().filter(|e| ids.contains(&e.eip_id)).cloned());
            }
        }
    }
    // EIPs on the LB itself need no call: they are associated with it.
    for o in out.iter_mut() {
        if let Some(lb) = &o.lb {
            for e in &lb.eips {
                if !o.wanted_eips.iter().any(|w| w.eip_id == e.eip_id) {
                    o.wanted_eips.push(Eip {
                        eip_id: e.eip_id.clone(),
                        eip_addr: e.eip_addr.clone(),
                        eip_name: e.eip_name.clone(),
                        status: "associated".into(),
                        resource: Some(iaas_client::model::EipResource {
                            resource_id: lb.loadbalancer_id.clone(),
                            resource_type: "loadbalancer".into(),
                            resource_name: lb.loadbalancer_name.clone(),
                        }),
                        ..Default::default()
                    });
                }
            }
        }
    }

    // 5. Certificates (tagged; by name prefix when a desired one is missing).
    for chunk in chunks(&tag_ids) {
        let found = client
            .describe_server_certificates_all(&DescribeServerCertificates {
                tags: chunk,
                ..Default::default()
            })
            .await
            .map_err(wrap("describe certificates by tag"))?;
        for c in found {
            for i in owners_of(&c.tags) {
                out[i].certificates.push(c.clone());
            }
        }
    }
    for (i, r) in reqs.iter().enumerate() {
        let names: BTreeSet<String> = out[i]
            .certificates
            .iter()
            .map(|c| c.server_certificate_name.clone())
            .collect();
        let missing = match r.desired {
            None => r.owner.kind != OwnerKind::Service || uses_l7(&out[i]),
            Some(d) => d
                .listeners
                .iter()
                .flat_map(|l| &l.certificates)
                .any(|c| !names.contains(&r.owner.certificate_name(&c.fingerprint()))),
        };
        if searchable[i] && missing {
            let prefix = format!("{}c_", r.owner.child_prefix());
            let found = client
                .describe_server_certificates_all(&DescribeServerCertificates {
                    search_word: Some(prefix.clone()),
                    ..Default::default()
                })
                .await
                .map_err(wrap("describe certificates by name"))?;
            for c in found {
                if c.server_certificate_name.starts_with(&prefix)
                    && !out[i]
                        .certificates
                        .iter()
                        .any(|x| x.server_certificate_id == c.server_certificate_id)
                {
                    out[i].certificates.push(c);
                }
            }
        }
    }

    // 6. Policies: those our backends use, plus a full listing when a desired
    // policy is missing (or on deletion of an L7 owner) to find orphans.
    let mut used: BTreeSet<String> = BTreeSet::new();
    for o in &out {
        for lb in o.lb.iter().chain(o.stale_lbs.iter()) {
            for l in &lb.listeners {
                for b in &l.backends {
                    if !b.loadbalancer_policy_id.is_empty() {
                        used.insert(b.loadbalancer_policy_id.clone());
                    }
                }
            }
        }
    }
    let mut policies: BTreeMap<String, LoadBalancerPolicy> = BTreeMap::new();
    let used: Vec<String> = used.into_iter().collect();
    for chunk in chunks(&used) {
        match client
            .describe_load_balancer_policies_all(&DescribeLoadBalancerPolicies {
                loadbalancer_policies: chunk,
                verbose: true,
                ..Default::default()
            })
            .await
        {
            Ok(found) => {
                for p in found {
                    policies.insert(p.loadbalancer_policy_id.clone(), p);
                }
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(Error::iaas("describe policies", e)),
        }
    }
    let needs_listing = reqs.iter().enumerate().any(|(i, r)| match r.desired {
        _ if !searchable[i] => false,
        None => r.owner.kind != OwnerKind::Service || uses_l7(&out[i]),
        Some(d) => d.listeners.iter().flat_map(|l| &l.rules).any(|rule| {
            let name = r.owner.policy_name(&rule.policy_key());
            !rule.backends.is_empty()
                && !policies
                    .values()
                    .any(|p| p.loadbalancer_policy_name == name)
        }),
    });
    if needs_listing {
        let all = client
            .describe_load_balancer_policies_all(&DescribeLoadBalancerPolicies {
                verbose: true,
                ..Default::default()
            })
            .await
            .map_err(wrap("list policies"))?;
        for p in all {
            policies
                .entry(p.loadbalancer_policy_id.clone())
                .or_insert(p);
        }
    }
    for (i, r) in reqs.iter().enumerate() {
        let prefix = format!("{}p_", r.owner.child_prefix());
        let mine: BTreeSet<&str> = out[i]
            .lb
            .iter()
            .chain(out[i].stale_lbs.iter())
            .flat_map(|lb| {
                lb.listeners
                    .iter()
                    .filter(move |l| crate::plan::listener_is_ours(r.owner, lb, l))
            })
            .flat_map(|l| l.backends.iter())
            .map(|b| b.loadbalancer_policy_id.as_str())
            .collect();
        out[i].policies = policies
            .values()
            .filter(|p| {
                p.loadbalancer_policy_name.starts_with(&prefix)
                    || mine.contains(p.loadbalancer_policy_id.as_str())
            })
            .cloned()
            .collect();
    }
    Ok(out)
}

/// Whether an observed LB has L7 listeners (so certificates/policies may exist).
fn uses_l7(o: &ObservedLb) -> bool {
    o.lb.iter().chain(o.stale_lbs.iter()).any(|lb| {
        lb.listeners
            .iter()
            .any(|l| Protocol::parse(&l.listener_protocol).is_some_and(Protocol::is_l7))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gone_statuses() {
        assert!(is_gone("deleted") && is_gone("ceased") && is_gone("released"));
        assert!(!is_gone("active") && !is_gone("pending"));
    }
}

//! The actions: a dispatcher table from action name to handler, and the
//! helpers every handler shares (id lists, state checks, Describe paging).
//!
//! Handlers run under the state lock, mutate the cache and return the reply
//! fields; the server commits the changes (and persists new jobs) before it
//! answers, then starts the new jobs.

mod instances;
mod lb;
mod network;
mod volumes;

use iaas_client::model::TagRef;
use iaas_client::params::{ParamError, Params};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::EmulatorConfig;
use crate::dataplane::DataPlane;
use crate::error::{ApiError, ApiResult};
use crate::jobs::{JobOp, new_job};
use crate::state::State;
use crate::store::Table;

/// Reply fields (the server adds `action` and `ret_code`).
pub type Reply = Map<String, Value>;

/// What a handler sees.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// The state (locked).
    pub st: &'a mut State,
    /// Configuration.
    pub config: &'a EmulatorConfig,
    /// Drivers (read-only uses such as backend health).
    pub dp: &'a DataPlane,
    /// Jobs created by this request, started after the commit.
    pub new_jobs: Vec<String>,
}

impl Ctx<'_> {
    /// Records a job and schedules it; returns its id.
    pub fn job(&mut self, action: &str, resource_ids: &[String], op: JobOp) -> String {
        let id = new_job(self.st, action, resource_ids, op);
        self.new_jobs.push(id.clone());
        id
    }

    /// A creation sequence number.
    pub fn seq(&mut self) -> u64 {
        self.st.next_seq()
    }
}

/// A handler.
pub type Handler = fn(&mut Ctx<'_>, &Params) -> ApiResult<Reply>;

/// Every action the emulator serves.
static HANDLERS: &[(&str, Handler)] = &[
    ("DescribeInstances", instances::describe_instances),
    ("RunInstances", instances::run_instances),
    ("StopInstances", instances::stop_instances),
    ("StartInstances", instances::start_instances),
    ("TerminateInstances", instances::terminate_instances),
    ("DescribeVxnets", instances::describe_vxnets),
    ("DescribeJobs", instances::describe_jobs),
    ("CreateVolumes", volumes::create_volumes),
    ("DescribeVolumes", volumes::describe_volumes),
    ("AttachVolumes", volumes::attach_volumes),
    ("DetachVolumes", volumes::detach_volumes),
    ("DeleteVolumes", volumes::delete_volumes),
    ("ResizeVolumes", volumes::resize_volumes),
    ("CloneVolumes", volumes::clone_volumes),
    ("CreateSnapshots", volumes::create_snapshots),
    ("DescribeSnapshots", volumes::describe_snapshots),
    ("DeleteSnapshots", volumes::delete_snapshots),
    (
        "CreateVolumeFromSnapshot",
        volumes::create_volume_from_snapshot,
    ),
    ("CreateLoadBalancer", lb::create_loadbalancer),
    ("DescribeLoadBalancers", lb::describe_loadbalancers),
    ("UpdateLoadBalancers", lb::update_loadbalancers),
    ("DeleteLoadBalancers", lb::delete_loadbalancers),
    ("AddLoadBalancerListeners", lb::add_listeners),
    ("DescribeLoadBalancerListeners", lb::describe_listeners),
    ("ModifyLoadBalancerListenerAttributes", lb::modify_listener),
    ("DeleteLoadBalancerListeners", lb::delete_listeners),
    ("AddLoadBalancerBackends", lb::add_backends),
    ("DescribeLoadBalancerBackends", lb::describe_backends),
    ("ModifyLoadBalancerBackendAttributes", lb::modify_backend),
    ("DeleteLoadBalancerBackends", lb::delete_backends),
    ("CreateLoadBalancerPolicy", lb::create_policy),
    ("DescribeLoadBalancerPolicies", lb::describe_policies),
    ("DeleteLoadBalancerPolicies", lb::delete_policies),
    ("AddLoadBalancerPolicyRules", lb::add_policy_rules),
    ("DescribeLoadBalancerPolicyRules", lb::describe_policy_rules),
    ("DeleteLoadBalancerPolicyRules", lb::delete_policy_rules),
    ("ApplyLoadBalancerPolicy", lb::apply_policy),
    ("CreateServerCertificate", lb::create_certificate),
    ("DescribeServerCertificates", lb::describe_certificates),
    ("DeleteServerCertificates", lb::delete_certificates),
    ("AllocateEips", network::allocate_eips),
    ("DescribeEips", network::describe_eips),
    ("ReleaseEips", network::release_eips),
    ("AssociateEipsToLoadBalancer", network::associate_eips),
    ("DissociateEipsFromLoadBalancer", network::dissociate_eips),
    ("DescribeRouters", network::describe_routers),
    ("UpdateRouters", network::update_routers),
    ("AddRouterStatics", network::add_router_statics),
    ("DescribeRouterStatics", network::describe_router_statics),
    ("DeleteRouterStatics", network::delete_router_statics),
    ("CreateSecurityGroup", network::create_security_group),
    ("DescribeSecurityGroups", network::describe_security_groups),
    ("DeleteSecurityGroups", network::delete_security_groups),
    ("AddSecurityGroupRules", network::add_security_group_rules),
    (
        "DescribeSecurityGroupRules",
        network::describe_security_group_rules,
    ),
    (
        "DeleteSecurityGroupRules",
        network::delete_security_group_rules,
    ),
    ("ApplySecurityGroup", network::apply_security_group),
    ("CreateTag", network::create_tag),
    ("DescribeTags", network::describe_tags),
    ("DeleteTags", network::delete_tags),
    ("AttachTags", network::attach_tags),
    ("DetachTags", network::detach_tags),
];

/// The handler of an action.
pub fn handler(action: &str) -> Option<Handler> {
    HANDLERS
        .iter()
        .find(|(name, _)| *name == action)
        .map(|(_, h)| *h)
}

/// Names of every served action (documentation, tests).
pub fn actions() -> impl Iterator<Item = &'static str> {
    HANDLERS.iter().map(|(n, _)| *n)
}

/// Builds a reply from pairs.
pub fn reply<const N: usize>(pairs: [(&str, Value); N]) -> Reply {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// A required, non-empty id list `name.n` without duplicates.
pub fn id_list(p: &Params, name: &str) -> ApiResult<Vec<String>> {
    let ids = p.list(name)?;
    if ids.is_empty() {
        return Err(ParamError::Missing(format!("{name}.1")).into());
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, id) in ids.iter().enumerate() {
        if !seen.insert(id) {
            return Err(ApiError::invalid(
                &format!("{name}.{}", i + 1),
                format!("{id} is listed twice"),
            ));
        }
    }
    Ok(ids)
}

/// Looks up every id or fails with 2100 naming the first missing one.
pub fn load<T: Clone + serde::de::DeserializeOwned + Serialize>(
    table: &Table<T>,
    kind: &str,
    ids: &[String],
) -> ApiResult<Vec<T>> {
    ids.iter()
        .map(|id| {
            table
                .get(id)
                .cloned()
                .ok_or_else(|| ApiError::not_found(kind, id))
        })
        .collect()
}

/// One record by id or 2100.
pub fn load_one<'t, T: serde::de::DeserializeOwned + Serialize>(
    table: &'t Table<T>,
    kind: &str,
    id: &str,
) -> ApiResult<&'t T> {
    table.get(id).ok_or_else(|| ApiError::not_found(kind, id))
}

/// 1400 unless no job is running on the resource.
pub fn check_idle(kind: &str, id: &str, transition: &str) -> ApiResult<()> {
    if transition.is_empty() {
        Ok(())
    } else {
        Err(ApiError::busy(kind, id, transition))
    }
}

/// 1400 unless the status is one of `allowed`.
pub fn check_status(kind: &str, id: &str, status: &str, allowed: &[&str]) -> ApiResult<()> {
    if allowed.contains(&status) {
        Ok(())
    } else {
        Err(ApiError::bad_state(kind, id, status, &allowed.join(" or ")))
    }
}

/// A record Describe can filter and page.
pub trait Record: Serialize + Clone {
    /// Resource type in tag pairs; empty when the kind cannot be tagged.
    const RESOURCE_TYPE: &'static str = "";
    /// Id.
    fn id(&self) -> &str;
    /// Name (for search_word).
    fn name(&self) -> &str {
        ""
    }
    /// Status (for status.n).
    fn status(&self) -> &str {
        ""
    }
    /// Receives the resource's tags.
    fn set_tags(&mut self, _tags: Vec<TagRef>) {}
}

/// Describe parameters shared by every Describe action.
#[derive(Debug)]
pub struct Paging {
    /// Records to skip.
    pub offset: usize,
    /// Page size (1..=100).
    pub limit: usize,
}

/// Most records one Describe page holds; larger limits are clamped to it.
pub const MAX_LIMIT: usize = 100;
/// Page size when `limit` is absent.
pub const DEFAULT_LIMIT: usize = 20;

impl Paging {
    /// Reads `offset` and `limit`; `limit` above 100 is clamped to 100 (as
    /// QingCloud does), 0 is rejected.
    pub fn parse(p: &Params) -> ApiResult<Paging> {
        let offset = p.opt::<usize>("offset")?.unwrap_or(0);
        let limit = p.opt::<usize>("limit")?.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 {
            return Err(ApiError::invalid("limit", "must be at least 1"));
        }
        Ok(Paging {
            offset,
            limit: limit.min(MAX_LIMIT),
        })
    }
}

/// Tags of a resource, as its `tags` list shows them.
pub fn tags_of(st: &State, resource_id: &str) -> Vec<TagRef> {
    let mut tags: Vec<TagRef> = st
        .tag_pairs
        .values()
        .filter(|p| p.resource_id == resource_id)
        .map(|p| TagRef {
            tag_id: p.tag_id.clone(),
            tag_name: st
                .tags
                .get(&p.tag_id)
                .map(|t| t.tag_name.clone())
                .unwrap_or_default(),
        })
        .collect();
    tags.sort_by(|a, b| a.tag_id.cmp(&b.tag_id));
    tags
}

/// Generic Describe: filters `ids_param.n`, `status.n`, `tags.n`,
/// `search_word` and `extra`, counts, pages in creation order, fills tags and
/// applies `decorate` to the returned page only.
pub fn describe<T: Record>(
    st: &State,
    p: &Params,
    rows: Vec<&T>,
    ids_param: &str,
    set_name: &str,
    extra: impl Fn(&T) -> bool,
    mut decorate: impl FnMut(&State, &mut T),
) -> ApiResult<Reply> {
    let ids = p.list(ids_param)?;
    let statuses = p.list("status")?;
    // DescribeTags lists tags by `tags.n`; elsewhere `tags.n` selects tagged resources.
    let tag_ids = if ids_param == "tags" {
        Vec::new()
    } else {
        p.list("tags")?
    };
    let search = p.get("search_word").map(|s| s.to_lowercase());
    p.flag("verbose")?;
    let paging = Paging::parse(p)?;
    let tagged: Option<std::collections::BTreeSet<&str>> = (!tag_ids.is_empty()).then(|| {
        st.tag_pairs
            .values()
            .filter(|pair| tag_ids.contains(&pair.tag_id))
            .map(|pair| pair.resource_id.as_str())
            .collect()
    });
    let matching: Vec<&T> = rows
        .into_iter()
        .filter(|r| ids.is_empty() || ids.iter().any(|i| i == r.id()))
        .filter(|r| statuses.is_empty() || statuses.iter().any(|s| s == r.status()))
        .filter(|r| tagged.as_ref().is_none_or(|t| t.contains(r.id())))
        .filter(|r| {
            search.as_ref().is_none_or(|w| {
                r.id().to_lowercase().contains(w) || r.name().to_lowercase().contains(w)
            })
        })
        .filter(|r| extra(r))
        .collect();
    let total = matching.len();
    let page: Vec<Value> = matching
        .into_iter()
        .skip(paging.offset)
        .take(paging.limit)
        .map(|r| {
            let mut r = r.clone();
            if !T::RESOURCE_TYPE.is_empty() {
                r.set_tags(tags_of(st, r.id()));
            }
            decorate(st, &mut r);
            serde_json::to_value(&r)
                .map_err(|e| ApiError::internal(format!("encoding {set_name}: {e}")))
        })
        .collect::<ApiResult<_>>()?;
    Ok(reply([
        (set_name, Value::Array(page)),
        ("total_count", total.into()),
    ]))
}

/// Ids as a JSON array.
pub fn ids_value(ids: &[String]) -> Value {
    Value::Array(ids.iter().map(|s| Value::String(s.clone())).collect())
}

/// A count parameter `count` (default 1, 1..=100).
pub fn count(p: &Params) -> ApiResult<usize> {
    let n = p.opt::<usize>("count")?.unwrap_or(1);
    if !(1..=100).contains(&n) {
        return Err(ApiError::invalid(
            "count",
            format!("{n} is not within 1..100"),
        ));
    }
    Ok(n)
}

/// A name parameter, bounded so records stay small.
pub fn name_param(p: &Params, name: &str) -> ApiResult<String> {
    let v = p.get(name).unwrap_or_default();
    if v.chars().count() > 255 {
        return Err(ApiError::invalid(name, "longer than 255 characters"));
    }
    Ok(v.to_string())
}

macro_rules! record {
    ($t:ty, $rt:expr, $id:ident, $name:ident, status) => {
        impl Record for $t {
            const RESOURCE_TYPE: &'static str = $rt;
            fn id(&self) -> &str {
                &self.$id
            }
            fn name(&self) -> &str {
                &self.$name
            }
            fn status(&self) -> &str {
                &self.status
            }
            fn set_tags(&mut self, tags: Vec<TagRef>) {
                self.tags = tags;
            }
        }
    };
    ($t:ty, $rt:expr, $id:ident, $name:ident, tags) => {
        impl Record for $t {
            const RESOURCE_TYPE: &'static str = $rt;
            fn id(&self) -> &str {
                &self.$id
            }
            fn name(&self) -> &str {
                &self.$name
            }
            fn set_tags(&mut self, tags: Vec<TagRef>) {
                self.tags = tags;
            }
        }
    };
    ($t:ty, $id:ident, $name:ident) => {
        impl Record for $t {
            fn id(&self) -> &str {
                &self.$id
            }
            fn name(&self) -> &str {
                &self.$name
            }
        }
    };
}

use iaas_client::model as m;
record!(m::Instance, "instance", instance_id, instance_name, status);
record!(m::Volume, "volume", volume_id, volume_name, status);
record!(m::Snapshot, "snapshot", snapshot_id, snapshot_name, status);
record!(
    m::LoadBalancer,
    "loadbalancer",
    loadbalancer_id,
    loadbalancer_name,
    status
);
record!(m::Eip, "eip", eip_id, eip_name, status);
record!(m::Router, "router", router_id, router_name, status);
record!(m::Vxnet, "vxnet", vxnet_id, vxnet_name, tags);
record!(
    m::SecurityGroup,
    "security_group",
    security_group_id,
    security_group_name,
    tags
);
record!(
    m::ServerCertificate,
    "server_certificate",
    server_certificate_id,
    server_certificate_name,
    tags
);
record!(
    m::LoadBalancerListener,
    loadbalancer_listener_id,
    loadbalancer_listener_name
);
record!(
    m::LoadBalancerBackend,
    loadbalancer_backend_id,
    loadbalancer_backend_name
);
record!(
    m::LoadBalancerPolicy,
    loadbalancer_policy_id,
    loadbalancer_policy_name
);
record!(
    m::LoadBalancerPolicyRule,
    loadbalancer_policy_rule_id,
    loadbalancer_policy_rule_name
);
record!(m::RouterStatic, router_static_id, router_static_name);
record!(
    m::SecurityGroupRule,
    security_group_rule_id,
    security_group_rule_name
);
record!(m::Tag, tag_id, tag_name);

impl Record for m::Job {
    fn id(&self) -> &str {
        &self.job_id
    }
    fn status(&self) -> &str {
        &self.status
    }
}

/// Resource types accepted in tag pairs, with a lookup of existence.
pub fn resource_exists(st: &State, resource_type: &str, id: &str) -> Option<bool> {
    Some(match resource_type {
        "instance" => st.instances.contains(id),
        "volume" => st.volumes.contains(id),
        "snapshot" => st.snapshots.contains(id),
        "loadbalancer" => st.lbs.contains(id),
        "eip" => st.eips.contains(id),
        "security_group" => st.sgs.contains(id),
        "server_certificate" => st.certs.contains(id),
        "router" => st.routers.contains(id),
        "vxnet" => st.vxnets.contains(id),
        _ => return None,
    })
}

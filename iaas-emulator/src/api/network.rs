//! EIPs, routers and their statics, security groups, tags.

use std::net::Ipv4Addr;

use iaas_client::model::{
    Eip, EipResource, ResourceTagPair, Router, RouterStatic, STATIC_TYPE_ROUTE, SecurityGroup,
    SecurityGroupRule, Tag,
};
use iaas_client::params::{ParamError, Params};
use serde_json::Value;

use super::{
    Ctx, Reply, check_idle, check_status, count, describe, id_list, ids_value, load, load_one,
    name_param, reply, resource_exists,
};
use crate::error::{ApiError, ApiResult};
use crate::jobs::JobOp;
use crate::util::{Cidr, new_id, now_rfc3339};

// ---------------------------------------------------------------- EIPs

/// AllocateEips: addresses from the configured pool.
pub fn allocate_eips(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let bandwidth: u32 = p.opt("bandwidth")?.unwrap_or(1);
    if !(1..=1000).contains(&bandwidth) {
        return Err(ApiError::invalid(
            "bandwidth",
            format!("{bandwidth} Mbps is not within 1..1000"),
        ));
    }
    let n = count(p)?;
    let name = name_param(p, "eip_name")?;
    let pool = Cidr::parse(&ctx.config.eip_pool, true)
        .map_err(|e| ApiError::internal(format!("eip_pool: {e}")))?;
    let used: std::collections::BTreeSet<String> =
        ctx.st.eips.values().map(|e| e.eip_addr.clone()).collect();
    let free: Vec<String> = (1..pool.size().saturating_sub(1) as u32)
        .filter_map(|i| pool.nth(i))
        .map(|a| a.to_string())
        .filter(|a| !used.contains(a))
        .take(n)
        .collect();
    if free.len() < n {
        return Err(ApiError::insufficient(format!(
            "insufficient resources: the EIP pool {pool} has {} free addresses, {n} requested",
            free.len()
        )));
    }
    let now = now_rfc3339();
    let mut ids = Vec::new();
    for addr in free {
        let id = new_id("eip");
        let seq = ctx.seq();
        ctx.st.eips.insert(
            &id,
            seq,
            Eip {
                eip_id: id.clone(),
                eip_name: name.clone(),
                eip_addr: addr,
                status: "available".into(),
                bandwidth,
                create_time: now.clone(),
                ..Default::default()
            },
        );
        ids.push(id);
    }
    Ok(reply([("eips", ids_value(&ids))]))
}

/// DescribeEips.
pub fn describe_eips(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    describe(
        ctx.st,
        p,
        ctx.st.eips.ordered(),
        "eips",
        "eip_set",
        |_: &Eip| true,
        |_, _| {},
    )
}

/// ReleaseEips (only when not associated).
pub fn release_eips(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let ids = id_list(p, "eips")?;
    for e in load(&ctx.st.eips, "eip", &ids)? {
        check_idle("eip", &e.eip_id, &e.transition_status)?;
        check_status("eip", &e.eip_id, &e.status, &["available"])?;
    }
    for id in &ids {
        if let Some(e) = ctx.st.eips.get_mut(id) {
            e.transition_status = "releasing".into();
        }
    }
    let job = ctx.job(
        "ReleaseEips",
        &ids,
        JobOp::ReleaseEips { eips: ids.clone() },
    );
    Ok(reply([("job_id", job.into())]))
}

/// Loads an LB that must be active and idle.
fn active_lb(ctx: &Ctx<'_>, id: &str) -> ApiResult<iaas_client::model::LoadBalancer> {
    let lb = load_one(&ctx.st.lbs, "loadbalancer", id)?.clone();
    check_idle("loadbalancer", id, &lb.transition_status)?;
    check_status("loadbalancer", id, &lb.status, &["active"])?;
    Ok(lb)
}

/// AssociateEipsToLoadBalancer.
pub fn associate_eips(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let ids = id_list(p, "eips")?;
    let lb_id = p.required("loadbalancer")?.to_string();
    let lb = active_lb(ctx, &lb_id)?;
    if !lb.vxnet_id.is_empty() {
        return Err(ApiError::invalid(
            "loadbalancer",
            format!(
                "[{lb_id}] is an internal load balancer on [{}]; it takes no EIPs",
                lb.vxnet_id
            ),
        ));
    }
    for e in load(&ctx.st.eips, "eip", &ids)? {
        check_idle("eip", &e.eip_id, &e.transition_status)?;
        check_status("eip", &e.eip_id, &e.status, &["available"])?;
    }
    for id in &ids {
        if let Some(e) = ctx.st.eips.get_mut(id) {
            e.transition_status = "associating".into();
        }
    }
    if let Some(lb) = ctx.st.lbs.get_mut(&lb_id) {
        lb.transition_status = "updating".into();
    }
    let mut res = ids.clone();
    res.push(lb_id.clone());
    let job = ctx.job(
        "AssociateEipsToLoadBalancer",
        &res,
        JobOp::AssociateEips {
            loadbalancer: lb_id,
            eips: ids,
        },
    );
    Ok(reply([("job_id", job.into())]))
}

/// DissociateEipsFromLoadBalancer.
pub fn dissociate_eips(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let ids = id_list(p, "eips")?;
    let lb_id = p.required("loadbalancer")?.to_string();
    active_lb(ctx, &lb_id)?;
    for e in load(&ctx.st.eips, "eip", &ids)? {
        check_idle("eip", &e.eip_id, &e.transition_status)?;
        if e.resource.as_ref().is_none_or(|r| r.resource_id != lb_id) {
            return Err(ApiError::new(
                iaas_client::codes::PERMISSION_DENIED,
                format!(
                    "eip [{}] is not associated with loadbalancer [{lb_id}]",
                    e.eip_id
                ),
            ));
        }
    }
    for id in &ids {
        if let Some(e) = ctx.st.eips.get_mut(id) {
            e.transition_status = "dissociating".into();
        }
    }
    if let Some(lb) = ctx.st.lbs.get_mut(&lb_id) {
        lb.transition_status = "updating".into();
    }
    let mut res = ids.clone();
    res.push(lb_id.clone());
    let job = ctx.job(
        "DissociateEipsFromLoadBalancer",
        &res,
        JobOp::DissociateEips {
            loadbalancer: lb_id,
            eips: ids,
        },
    );
    Ok(reply([("job_id", job.into())]))
}

// ---------------------------------------------------------------- routers

/// DescribeRouters (`vxnet` finds the router a vxnet is attached to).
pub fn describe_routers(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let vxnet = p.get("vxnet").map(str::to_string);
    describe(
        ctx.st,
        p,
        ctx.st.routers.ordered(),
        "routers",
        "router_set",
        |r: &Router| vxnet.as_ref().is_none_or(|v| r.vxnets.contains(v)),
        |_, _| {},
    )
}

/// UpdateRouters: programs every static of the routers.
pub fn update_routers(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let ids = id_list(p, "routers")?;
    for r in load(&ctx.st.routers, "router", &ids)? {
        check_idle("router", &r.router_id, &r.transition_status)?;
        check_status("router", &r.router_id, &r.status, &["active"])?;
    }
    for id in &ids {
        if let Some(r) = ctx.st.routers.get_mut(id) {
            r.transition_status = "updating".into();
        }
    }
    let job = ctx.job(
        "UpdateRouters",
        &ids,
        JobOp::UpdateRouters {
            routers: ids.clone(),
        },
    );
    Ok(reply([("job_id", job.into())]))
}

/// AddRouterStatics. Type 9 (route): `val1` destination CIDR, `val2` next
/// hop inside the vxnet; one route per destination and router.
pub fn add_router_statics(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let router_id = p.required("router")?.to_string();
    // Malformed parameters are reported before unknown ids (1100 before 2100).
    for r in p.records("statics")? {
        r.req::<i32>("static_type")?;
        r.required("val1")?;
    }
    let router = load_one(&ctx.st.routers, "router", &router_id)?.clone();
    if router.transition_status == "deleting" {
        return Err(ApiError::busy("router", &router_id, "deleting"));
    }
    let top_vxnet = p.get("vxnet").map(str::to_string);
    if let Some(v) = &top_vxnet
        && !router.vxnets.contains(v)
    {
        load_one(&ctx.st.vxnets, "vxnet", v)?;
        return Err(ApiError::invalid(
            "vxnet",
            format!("[{v}] is not attached to router [{router_id}]"),
        ));
    }
    let records = p.records("statics")?;
    if records.is_empty() {
        return Err(ParamError::Missing("statics.1.static_type".into()).into());
    }
    let mut new: Vec<RouterStatic> = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let n = i + 1;
        let static_type: i32 = r.req("static_type")?;
        if !(1..=9).contains(&static_type) {
            return Err(ApiError::invalid(
                &format!("statics.{n}.static_type"),
                format!("{static_type} is not within 1..9"),
            ));
        }
        let vxnet_id = r
            .get("vxnet")
            .map(str::to_string)
            .or_else(|| top_vxnet.clone())
            .unwrap_or_default();
        let val = |k: &str| r.get(k).unwrap_or_default().to_string();
        let mut s = RouterStatic {
            router_static_name: r.get("router_static_name").unwrap_or_default().to_string(),
            router_id: router_id.clone(),
            vxnet_id: vxnet_id.clone(),
            static_type,
            val1: r.required("val1")?.to_string(),
            val2: val("val2"),
            val3: val("val3"),
            val4: val("val4"),
            val5: val("val5"),
            val6: val("val6"),
            create_time: now_rfc3339(),
            ..Default::default()
        };
        if static_type == STATIC_TYPE_ROUTE {
            let dst = Cidr::parse(&s.val1, true)
                .map_err(|e| ApiError::invalid(&format!("statics.{n}.val1"), e))?;
            s.val1 = dst.to_string();
            let hop_name = format!("statics.{n}.val2");
            let hop: Ipv4Addr = r.required("val2")?.parse().map_err(|_| {
                ApiError::invalid(&hop_name, format!("{:?} is not an IPv4 address", s.val2))
            })?;
            let candidates: Vec<String> = if vxnet_id.is_empty() {
                router.vxnets.clone()
            } else {
                vec![vxnet_id.clone()]
            };
            let home = candidates
                .iter()
                .find(|v| ctx.st.vxnet_cidr(v).is_ok_and(|c| c.contains(hop)))
                .ok_or_else(|| {
                    ApiError::invalid(
                        &hop_name,
                        format!(
                            "next hop {hop} is not inside vxnet(s) {}",
                            candidates.join(", ")
                        ),
                    )
                })?;
            s.vxnet_id = home.clone();
            let clash = ctx
                .st
                .statics
                .values()
                .chain(new.iter())
                .find(|o| {
                    o.router_id == router_id
                        && o.static_type == STATIC_TYPE_ROUTE
                        && o.val1 == s.val1
                })
                .map(|o| o.router_static_id.clone());
            if let Some(other) = clash {
                return Err(ApiError::exists(format!(
                    "invalid parameter [statics.{n}.val1]: router [{router_id}] already has a route to {} ([{other}])",
                    s.val1
                )));
            }
        }
        s.router_static_id = new_id("rtrs");
        new.push(s);
    }
    let ids: Vec<String> = new.iter().map(|s| s.router_static_id.clone()).collect();
    for s in new {
        let seq = ctx.seq();
        ctx.st.statics.insert(&s.router_static_id.clone(), seq, s);
    }
    if let Some(r) = ctx.st.routers.get_mut(&router_id) {
        r.is_applied = 0;
    }
    Ok(reply([("router_statics", ids_value(&ids))]))
}

/// DescribeRouterStatics.
pub fn describe_router_statics(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let router = p.get("router").map(str::to_string);
    let vxnet = p.get("vxnet").map(str::to_string);
    let static_type: Option<i32> = p.opt("static_type")?;
    describe(
        ctx.st,
        p,
        ctx.st.statics.ordered(),
        "router_statics",
        "router_static_set",
        |s: &RouterStatic| {
            router.as_ref().is_none_or(|r| &s.router_id == r)
                && vxnet.as_ref().is_none_or(|v| &s.vxnet_id == v)
                && static_type.is_none_or(|t| s.static_type == t)
        },
        |_, _| {},
    )
}

/// DeleteRouterStatics (the route stays in force until UpdateRouters).
pub fn delete_router_statics(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let ids = id_list(p, "router_statics")?;
    let statics = load(&ctx.st.statics, "router static", &ids)?;
    for s in statics {
        ctx.st.statics.remove(&s.router_static_id);
        if let Some(r) = ctx.st.routers.get_mut(&s.router_id) {
            r.is_applied = 0;
        }
    }
    Ok(reply([("router_statics", ids_value(&ids))]))
}

// ---------------------------------------------------------------- security groups

/// CreateSecurityGroup.
pub fn create_security_group(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let name = name_param(p, "security_group_name")?;
    let id = new_id("sg");
    let seq = ctx.seq();
    ctx.st.sgs.insert(
        &id,
        seq,
        SecurityGroup {
            security_group_id: id.clone(),
            security_group_name: name,
            is_applied: 1,
            create_time: now_rfc3339(),
            ..Default::default()
        },
    );
    Ok(reply([("security_group_id", Value::String(id))]))
}

/// DescribeSecurityGroups (`resources` lists the LBs using each).
pub fn describe_security_groups(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    describe(
        ctx.st,
        p,
        ctx.st.sgs.ordered(),
        "security_groups",
        "security_group_set",
        |_: &SecurityGroup| true,
        |st, sg| {
            sg.resources = st
                .lbs
                .ordered()
                .into_iter()
                .filter(|lb| lb.security_group_id == sg.security_group_id)
                .map(|lb| EipResource {
                    resource_id: lb.loadbalancer_id.clone(),
                    resource_type: "loadbalancer".into(),
                    resource_name: lb.loadbalancer_name.clone(),
                })
                .collect();
        },
    )
}

/// DeleteSecurityGroups (not the default one, not one in use).
pub fn delete_security_groups(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let ids = id_list(p, "security_groups")?;
    for sg in load(&ctx.st.sgs, "security group", &ids)? {
        if sg.is_default == 1 {
            return Err(ApiError::new(
                iaas_client::codes::PERMISSION_DENIED,
                format!(
                    "security group [{}] is the zone's default and cannot be deleted",
                    sg.security_group_id
                ),
            ));
        }
        if let Some(lb) = ctx
            .st
            .lbs
            .values()
            .find(|lb| lb.security_group_id == sg.security_group_id)
        {
            return Err(ApiError::in_use(
                "security group",
                &sg.security_group_id,
                &lb.loadbalancer_id,
            ));
        }
    }
    for id in &ids {
        for r in ctx.st.sg_rules.ids_where(|r| &r.security_group_id == id) {
            ctx.st.sg_rules.remove(&r);
        }
        ctx.st.sgs.remove(id);
        ctx.st.untag_resource(id);
    }
    Ok(reply([("security_groups", ids_value(&ids))]))
}

const PROTOCOLS: &[&str] = &["tcp", "udp", "icmp", "gre", "esp", "ah", "ipip"];

/// AddSecurityGroupRules.
pub fn add_security_group_rules(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let sg_id = p.required("security_group")?.to_string();
    let records = p.records("rules")?;
    if records.is_empty() {
        return Err(ParamError::Missing("rules.1.protocol".into()).into());
    }
    for r in &records {
        r.required("protocol")?;
    }
    load_one(&ctx.st.sgs, "security group", &sg_id)?;
    let mut new = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let n = i + 1;
        let field = |f: &str| format!("rules.{n}.{f}");
        let protocol = r.required("protocol")?.to_ascii_lowercase();
        if !PROTOCOLS.contains(&protocol.as_str()) {
            return Err(ApiError::invalid(
                &field("protocol"),
                format!("{protocol:?} is not one of {}", PROTOCOLS.join(", ")),
            ));
        }
        let priority: i32 = r.opt("priority")?.unwrap_or(0);
        if !(0..=100).contains(&priority) {
            return Err(ApiError::invalid(
                &field("priority"),
                format!("{priority} is not within 0..100"),
            ));
        }
        let action = r.get("action").unwrap_or("accept").to_string();
        if action != "accept" && action != "drop" {
            return Err(ApiError::invalid(
                &field("action"),
                format!("{action:?} is not accept or drop"),
            ));
        }
        let direction: i32 = r.opt("direction")?.unwrap_or(0);
        if direction != 0 && direction != 1 {
            return Err(ApiError::invalid(
                &field("direction"),
                "must be 0 (ingress) or 1 (egress)",
            ));
        }
        let val1 = r.get("val1").unwrap_or_default().to_string();
        let val2 = r.get("val2").unwrap_or_default().to_string();
        if protocol == "tcp" || protocol == "udp" {
            for (k, v) in [("val1", &val1), ("val2", &val2)] {
                if !v.is_empty() && v.parse::<u16>().ok().filter(|p| *p > 0).is_none() {
                    return Err(ApiError::invalid(
                        &field(k),
                        format!("{v:?} is not a port 1..65535"),
                    ));
                }
            }
        }
        let mut val3 = r.get("val3").unwrap_or_default().to_string();
        if !val3.is_empty() {
            let cidr = if val3.contains('/') {
                val3.clone()
            } else {
                format!("{val3}/32")
            };
            val3 = Cidr::parse(&cidr, false)
                .map_err(|e| ApiError::invalid(&field("val3"), e))?
                .to_string();
        }
        new.push(SecurityGroupRule {
            security_group_rule_id: new_id("sgr"),
            security_group_rule_name: r
                .get("security_group_rule_name")
                .unwrap_or_default()
                .to_string(),
            security_group_id: sg_id.clone(),
            protocol,
            priority,
            action,
            direction,
            val1,
            val2,
            val3,
            disabled: 0,
        });
    }
    let ids: Vec<String> = new
        .iter()
        .map(|r| r.security_group_rule_id.clone())
        .collect();
    for r in new {
        let seq = ctx.seq();
        ctx.st
            .sg_rules
            .insert(&r.security_group_rule_id.clone(), seq, r);
    }
    if let Some(sg) = ctx.st.sgs.get_mut(&sg_id) {
        sg.is_applied = 0;
    }
    Ok(reply([("security_group_rules", ids_value(&ids))]))
}

/// DescribeSecurityGroupRules.
pub fn describe_security_group_rules(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let sg = p.get("security_group").map(str::to_string);
    let direction: Option<i32> = p.opt("direction")?;
    describe(
        ctx.st,
        p,
        ctx.st.sg_rules.ordered(),
        "security_group_rules",
        "security_group_rule_set",
        |r: &SecurityGroupRule| {
            sg.as_ref().is_none_or(|s| &r.security_group_id == s)
                && direction.is_none_or(|d| r.direction == d)
        },
        |_, _| {},
    )
}

/// DeleteSecurityGroupRules.
pub fn delete_security_group_rules(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let ids = id_list(p, "security_group_rules")?;
    for r in load(&ctx.st.sg_rules, "security group rule", &ids)? {
        ctx.st.sg_rules.remove(&r.security_group_rule_id);
        if let Some(sg) = ctx.st.sgs.get_mut(&r.security_group_id) {
            sg.is_applied = 0;
        }
    }
    Ok(reply([("security_group_rules", ids_value(&ids))]))
}

/// ApplySecurityGroup: rules take effect (LBs using the group are re-applied).
pub fn apply_security_group(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let sg_id = p.required("security_group")?.to_string();
    load_one(&ctx.st.sgs, "security group", &sg_id)?;
    let instances = p.list("instances")?;
    load(&ctx.st.instances, "instance", &instances)?;
    let job = ctx.job(
        "ApplySecurityGroup",
        std::slice::from_ref(&sg_id),
        JobOp::ApplySecurityGroup {
            security_group: sg_id.clone(),
        },
    );
    Ok(reply([("job_id", job.into())]))
}

// ---------------------------------------------------------------- tags

/// CreateTag (names are unique).
pub fn create_tag(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let name = p.required("tag_name")?.to_string();
    if name.chars().count() > 255 {
        return Err(ApiError::invalid("tag_name", "longer than 255 characters"));
    }
    if let Some(t) = ctx.st.tags.values().find(|t| t.tag_name == name) {
        return Err(ApiError::exists(format!(
            "tag [{}] named {name:?} already exists",
            t.tag_id
        )));
    }
    let id = new_id("tag");
    let seq = ctx.seq();
    ctx.st.tags.insert(
        &id,
        seq,
        Tag {
            tag_id: id.clone(),
            tag_name: name,
            description: p.get("description").unwrap_or_default().to_string(),
            create_time: now_rfc3339(),
            ..Default::default()
        },
    );
    Ok(reply([("tag_id", Value::String(id))]))
}

/// DescribeTags (`verbose=1` lists the bindings).
pub fn describe_tags(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let verbose = p.flag("verbose")?.unwrap_or(false);
    describe(
        ctx.st,
        p,
        ctx.st.tags.ordered(),
        "tags",
        "tag_set",
        |_: &Tag| true,
        |st, t| {
            let pairs: Vec<ResourceTagPair> = st
                .tag_pairs
                .ordered()
                .into_iter()
                .filter(|x| x.tag_id == t.tag_id)
                .cloned()
                .collect();
            t.resource_count = pairs.len() as u32;
            if verbose {
                t.resource_tag_pairs = pairs;
            }
        },
    )
}

/// DeleteTags (their bindings go too).
pub fn delete_tags(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let ids = id_list(p, "tags")?;
    load(&ctx.st.tags, "tag", &ids)?;
    for id in &ids {
        for k in ctx.st.tag_pairs.ids_where(|x| &x.tag_id == id) {
            ctx.st.tag_pairs.remove(&k);
        }
        ctx.st.tags.remove(id);
    }
    Ok(reply([("tags", ids_value(&ids))]))
}

fn tag_pairs(ctx: &Ctx<'_>, p: &Params) -> ApiResult<Vec<ResourceTagPair>> {
    let records = p.records("resource_tag_pairs")?;
    if records.is_empty() {
        return Err(ParamError::Missing("resource_tag_pairs.1.tag_id".into()).into());
    }
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let pair = ResourceTagPair {
                tag_id: r.required("tag_id")?.to_string(),
                resource_type: r.required("resource_type")?.to_string(),
                resource_id: r.required("resource_id")?.to_string(),
            };
            load_one(&ctx.st.tags, "tag", &pair.tag_id)?;
            match resource_exists(ctx.st, &pair.resource_type, &pair.resource_id) {
                None => Err(ApiError::invalid(
                    &format!("resource_tag_pairs.{}.resource_type", i + 1),
                    format!("{:?} is not a taggable resource type", pair.resource_type),
                )),
                Some(false) => Err(ApiError::not_found(&pair.resource_type, &pair.resource_id)),
                Some(true) => Ok(pair),
            }
        })
        .collect()
}

fn pair_key(p: &ResourceTagPair) -> String {
    format!("{}|{}|{}", p.tag_id, p.resource_type, p.resource_id)
}

/// AttachTags (attaching twice is a no-op).
pub fn attach_tags(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    for pair in tag_pairs(ctx, p)? {
        let key = pair_key(&pair);
        if !ctx.st.tag_pairs.contains(&key) {
            let seq = ctx.seq();
            ctx.st.tag_pairs.insert(&key, seq, pair);
        }
    }
    Ok(Reply::new())
}

/// DetachTags (detaching an absent binding is a no-op).
pub fn detach_tags(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    for pair in tag_pairs(ctx, p)? {
        ctx.st.tag_pairs.remove(&pair_key(&pair));
    }
    Ok(Reply::new())
}

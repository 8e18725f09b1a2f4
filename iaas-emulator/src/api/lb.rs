//! Load balancers, listeners, backends, L7 policies and server certificates.

use std::collections::BTreeMap;

use iaas_client::model::{
    LoadBalancer, LoadBalancerBackend, LoadBalancerListener, LoadBalancerPolicy,
    LoadBalancerPolicyRule, ServerCertificate,
};
use iaas_client::params::{ParamError, Params};
use serde_json::Value;

use super::{
    Ctx, Reply, check_idle, check_status, describe, id_list, ids_value, load, load_one, name_param,
    reply,
};
use crate::dataplane::DataPlane;
use crate::error::{ApiError, ApiResult};
use crate::jobs::JobOp;
use crate::state::{CertRec, State};
use crate::util::{new_id, now_rfc3339};

// ---------------------------------------------------------------- load balancers

/// CreateLoadBalancer: public with `eips.n`, or internal with `vxnet` (+`private_ip`).
pub fn create_loadbalancer(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let eips = p.list("eips")?;
    let vxnet = p.get("vxnet").map(str::to_string);
    let lb_type: i32 = p.opt("loadbalancer_type")?.unwrap_or(0);
    if !(0..=5).contains(&lb_type) {
        return Err(ApiError::invalid(
            "loadbalancer_type",
            format!("{lb_type} is not within 0..5"),
        ));
    }
    let name = name_param(p, "loadbalancer_name")?;
    let sg = match p.get("security_group") {
        Some(sg) => load_one(&ctx.st.sgs, "security group", sg)?
            .security_group_id
            .clone(),
        None => ctx
            .st
            .sgs
            .values()
            .find(|s| s.is_default == 1)
            .map(|s| s.security_group_id.clone())
            .unwrap_or_default(),
    };
    let mut private_ips = Vec::new();
    match (&vxnet, eips.is_empty()) {
        (Some(_), false) => {
            return Err(ApiError::invalid(
                "vxnet",
                "give eips.n for a public or vxnet for an internal load balancer, not both",
            ));
        }
        (None, true) => return Err(ParamError::Missing("eips.1 (or vxnet)".into()).into()),
        (Some(vx), true) => {
            load_one(&ctx.st.vxnets, "vxnet", vx)?;
            private_ips.push(ctx.st.allocate_private_ip(vx, p.get("private_ip"))?);
        }
        (None, false) => {
            if p.get("private_ip").is_some() {
                return Err(ApiError::invalid(
                    "private_ip",
                    "only internal (vxnet) load balancers take a private_ip",
                ));
            }
            let mut seen = std::collections::BTreeSet::new();
            for (i, e) in load(&ctx.st.eips, "eip", &eips)?.iter().enumerate() {
                if !seen.insert(e.eip_id.clone()) {
                    return Err(ApiError::invalid(
                        &format!("eips.{}", i + 1),
                        format!("{} is listed twice", e.eip_id),
                    ));
                }
                check_idle("eip", &e.eip_id, &e.transition_status)?;
                check_status("eip", &e.eip_id, &e.status, &["available"])?;
            }
        }
    }
    for e in &eips {
        if let Some(e) = ctx.st.eips.get_mut(e) {
            e.transition_status = "associating".into();
        }
    }
    let id = new_id("lb");
    let seq = ctx.seq();
    ctx.st.lbs.insert(
        &id,
        seq,
        LoadBalancer {
            loadbalancer_id: id.clone(),
            loadbalancer_name: name,
            loadbalancer_type: lb_type,
            status: "pending".into(),
            transition_status: "creating".into(),
            is_applied: 0,
            vxnet_id: vxnet.unwrap_or_default(),
            private_ips,
            security_group_id: sg,
            create_time: now_rfc3339(),
            ..Default::default()
        },
    );
    let mut res = vec![id.clone()];
    res.extend(eips.iter().cloned());
    let job = ctx.job(
        "CreateLoadBalancer",
        &res,
        JobOp::CreateLoadBalancer {
            loadbalancer: id.clone(),
            eips,
        },
    );
    Ok(reply([
        ("job_id", job.into()),
        ("loadbalancer_id", Value::String(id)),
    ]))
}

/// Backend health as the driver last probed it; "up" when it does not report.
fn health(
    dp: &DataPlane,
    lb_id: &str,
    cache: &mut BTreeMap<String, BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    cache
        .entry(lb_id.to_string())
        .or_insert_with(|| dp.lbs.backend_health(lb_id).into_iter().collect())
        .clone()
}

fn backends_of(st: &State, listener_id: &str) -> Vec<LoadBalancerBackend> {
    st.backends
        .ordered()
        .into_iter()
        .filter(|b| b.loadbalancer_listener_id == listener_id)
        .cloned()
        .collect()
}

fn with_status(mut b: LoadBalancerBackend, h: &BTreeMap<String, String>) -> LoadBalancerBackend {
    b.status = h
        .get(&b.loadbalancer_backend_id)
        .cloned()
        .unwrap_or_else(|| "up".into());
    b
}

/// DescribeLoadBalancers (`verbose=1` nests listeners and their backends).
pub fn describe_loadbalancers(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let verbose = p.flag("verbose")?.unwrap_or(false);
    let dp = ctx.dp.clone();
    let mut cache = BTreeMap::new();
    describe(
        ctx.st,
        p,
        ctx.st.lbs.ordered(),
        "loadbalancers",
        "loadbalancer_set",
        |_: &LoadBalancer| true,
        |st, lb| {
            if verbose {
                let h = health(&dp, &lb.loadbalancer_id, &mut cache);
                lb.listeners = st
                    .listeners
                    .ordered()
                    .into_iter()
                    .filter(|l| l.loadbalancer_id == lb.loadbalancer_id)
                    .map(|l| {
                        let mut l = l.clone();
                        l.backends = backends_of(st, &l.loadbalancer_listener_id)
                            .into_iter()
                            .map(|b| with_status(b, &h))
                            .collect();
                        l
                    })
                    .collect();
            }
        },
    )
}

/// UpdateLoadBalancers: applies pending listener/backend/policy changes.
pub fn update_loadbalancers(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let ids = id_list(p, "loadbalancers")?;
    for lb in load(&ctx.st.lbs, "loadbalancer", &ids)? {
        check_idle("loadbalancer", &lb.loadbalancer_id, &lb.transition_status)?;
        check_status("loadbalancer", &lb.loadbalancer_id, &lb.status, &["active"])?;
    }
    for id in &ids {
        if let Some(lb) = ctx.st.lbs.get_mut(id) {
            lb.transition_status = "updating".into();
        }
    }
    let job = ctx.job(
        "UpdateLoadBalancers",
        &ids,
        JobOp::UpdateLoadBalancers {
            loadbalancers: ids.clone(),
        },
    );
    Ok(reply([("job_id", job.into())]))
}

/// DeleteLoadBalancers: listeners and backends go, EIPs become available.
pub fn delete_loadbalancers(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let ids = id_list(p, "loadbalancers")?;
    for lb in load(&ctx.st.lbs, "loadbalancer", &ids)? {
        check_idle("loadbalancer", &lb.loadbalancer_id, &lb.transition_status)?;
    }
    for id in &ids {
        if let Some(lb) = ctx.st.lbs.get_mut(id) {
            lb.transition_status = "deleting".into();
        }
    }
    let job = ctx.job(
        "DeleteLoadBalancers",
        &ids,
        JobOp::DeleteLoadBalancers {
            loadbalancers: ids.clone(),
        },
    );
    Ok(reply([("job_id", job.into())]))
}

/// An LB whose configuration may change (anything but being deleted); marks it unapplied.
fn touch_lb(st: &mut State, lb_id: &str) -> ApiResult<()> {
    let lb = load_one(&st.lbs, "loadbalancer", lb_id)?;
    if lb.transition_status == "deleting" {
        return Err(ApiError::busy("loadbalancer", lb_id, "deleting"));
    }
    st.bump_lb(lb_id);
    Ok(())
}

// ---------------------------------------------------------------- listeners

const LISTENER_PROTOCOLS: &[&str] = &["tcp", "udp", "http", "https"];
const BALANCE_MODES: &[&str] = &["roundrobin", "leastconn", "source"];

/// TCP and HTTP(S) listeners share the TCP port space; UDP has its own.
fn transport(protocol: &str) -> &'static str {
    if protocol == "udp" { "udp" } else { "tcp" }
}

/// Reads the modifiable listener fields present in `r` into `l`; `prefix`
/// names fields in errors (`listeners.2.`).
fn listener_fields(
    st: &State,
    r: &Params,
    prefix: &str,
    l: &mut LoadBalancerListener,
) -> ApiResult<()> {
    let name = |f: &str| format!("{prefix}{f}");
    let proto = l.listener_protocol.clone();
    if let Some(v) = r.get("backend_protocol") {
        let ok = match proto.as_str() {
            "tcp" => v == "tcp",
            "udp" => v == "udp",
            _ => v == "http",
        };
        if !ok {
            return Err(ApiError::invalid(
                &name("backend_protocol"),
                format!("{v:?} cannot serve a {proto} listener"),
            ));
        }
        l.backend_protocol = v.to_string();
    }
    if let Some(v) = r.get("balance_mode") {
        if !BALANCE_MODES.contains(&v) {
            return Err(ApiError::invalid(
                &name("balance_mode"),
                format!("{v:?} is not one of {}", BALANCE_MODES.join(", ")),
            ));
        }
        l.balance_mode = v.to_string();
    }
    if let Some(v) = r.get("healthy_check_method") {
        let ok = match v.split_once('|') {
            None => v == "tcp" || v == "udp",
            Some(("http", path)) => path.starts_with('/'),
            _ => false,
        };
        if !ok {
            return Err(ApiError::invalid(
                &name("healthy_check_method"),
                format!("{v:?} is not tcp, udp or http|/path"),
            ));
        }
        l.healthy_check_method = v.to_string();
    }
    if let Some(v) = r.get("healthy_check_option") {
        let parts: Vec<Option<u32>> = v
            .split('|')
            .map(|x| x.parse().ok().filter(|n| (1..=3600).contains(n)))
            .collect();
        if parts.len() != 4 || parts.iter().any(Option::is_none) {
            return Err(ApiError::invalid(
                &name("healthy_check_option"),
                format!("{v:?} is not interval|timeout|unhealthy|healthy (positive numbers)"),
            ));
        }
        l.healthy_check_option = v.to_string();
    }
    if let Some(v) = r.get("session_sticky") {
        l.session_sticky = v.to_string();
    }
    if let Some(v) = r.opt::<i32>("forwardfor")? {
        if v < 0 {
            return Err(ApiError::invalid(
                &name("forwardfor"),
                "must not be negative",
            ));
        }
        l.forwardfor = v;
    }
    if let Some(v) = r.get("loadbalancer_listener_name") {
        l.loadbalancer_listener_name = v.to_string();
    }
    let mut certs = r.list("server_certificate_id")?;
    if let Some(v) = r.get("server_certificate_id") {
        certs.extend(
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
    }
    if !certs.is_empty() {
        if proto != "https" {
            return Err(ApiError::invalid(
                &name("server_certificate_id"),
                format!("a {proto} listener takes no certificate"),
            ));
        }
        for c in &certs {
            load_one(&st.certs, "server certificate", c)?;
        }
        l.server_certificate_id = certs;
    }
    if proto == "https" && l.server_certificate_id.is_empty() {
        return Err(ParamError::Missing(name("server_certificate_id")).into());
    }
    Ok(())
}

/// AddLoadBalancerListeners.
pub fn add_listeners(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let lb_id = p.required("loadbalancer")?.to_string();
    let records = p.records("listeners")?;
    if records.is_empty() {
        return Err(ParamError::Missing("listeners.1.listener_port".into()).into());
    }
    // Malformed parameters are reported before unknown ids (1100 before 2100).
    for r in &records {
        r.req::<u16>("listener_port")?;
        r.required("listener_protocol")?;
    }
    load_one(&ctx.st.lbs, "loadbalancer", &lb_id)?;
    let mut taken: Vec<(u16, &'static str, String)> = ctx
        .st
        .listeners
        .values()
        .filter(|l| l.loadbalancer_id == lb_id)
        .map(|l| {
            (
                l.listener_port,
                transport(&l.listener_protocol),
                l.loadbalancer_listener_id.clone(),
            )
        })
        .collect();
    let mut new = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let prefix = format!("listeners.{}.", i + 1);
        let port: u16 = r.req("listener_port")?;
        if port == 0 {
            return Err(ApiError::invalid(
                &format!("{prefix}listener_port"),
                "must be 1..65535",
            ));
        }
        let proto = r.required("listener_protocol")?.to_string();
        if !LISTENER_PROTOCOLS.contains(&proto.as_str()) {
            return Err(ApiError::invalid(
                &format!("{prefix}listener_protocol"),
                format!("{proto:?} is not one of {}", LISTENER_PROTOCOLS.join(", ")),
            ));
        }
        let id = new_id("lbl");
        if let Some((_, t, other)) = taken
            .iter()
            .find(|(p, t, _)| *p == port && *t == transport(&proto))
        {
            return Err(ApiError::exists(format!(
                "invalid parameter [{prefix}listener_port]: loadbalancer [{lb_id}] already listens on {port}/{t} ([{other}])"
            )));
        }
        taken.push((port, transport(&proto), id.clone()));
        let mut l = LoadBalancerListener {
            loadbalancer_listener_id: id,
            loadbalancer_id: lb_id.clone(),
            listener_port: port,
            listener_protocol: proto.clone(),
            backend_protocol: match proto.as_str() {
                "tcp" => "tcp",
                "udp" => "udp",
                _ => "http",
            }
            .into(),
            balance_mode: "roundrobin".into(),
            healthy_check_method: if proto == "udp" { "udp" } else { "tcp" }.into(),
            healthy_check_option: "10|5|2|5".into(),
            create_time: now_rfc3339(),
            ..Default::default()
        };
        listener_fields(ctx.st, r, &prefix, &mut l)?;
        new.push(l);
    }
    touch_lb(ctx.st, &lb_id)?;
    let ids: Vec<String> = new
        .iter()
        .map(|l| l.loadbalancer_listener_id.clone())
        .collect();
    for l in new {
        let seq = ctx.seq();
        ctx.st
            .listeners
            .insert(&l.loadbalancer_listener_id.clone(), seq, l);
    }
    Ok(reply([("loadbalancer_listeners", ids_value(&ids))]))
}

/// DescribeLoadBalancerListeners (`verbose=1` nests backends).
pub fn describe_listeners(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let lb = p.get("loadbalancer").map(str::to_string);
    let verbose = p.flag("verbose")?.unwrap_or(false);
    let dp = ctx.dp.clone();
    let mut cache = BTreeMap::new();
    describe(
        ctx.st,
        p,
        ctx.st.listeners.ordered(),
        "loadbalancer_listeners",
        "loadbalancer_listener_set",
        |l: &LoadBalancerListener| lb.as_ref().is_none_or(|x| &l.loadbalancer_id == x),
        |st, l| {
            if verbose {
                let h = health(&dp, &l.loadbalancer_id, &mut cache);
                l.backends = backends_of(st, &l.loadbalancer_listener_id)
                    .into_iter()
                    .map(|b| with_status(b, &h))
                    .collect();
            }
        },
    )
}

/// ModifyLoadBalancerListenerAttributes (port and protocol are fixed).
pub fn modify_listener(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let id = p.required("loadbalancer_listener")?.to_string();
    let mut l = load_one(&ctx.st.listeners, "loadbalancer listener", &id)?.clone();
    for fixed in ["listener_port", "listener_protocol"] {
        if p.get(fixed).is_some() {
            return Err(ApiError::invalid(
                fixed,
                "cannot be modified; delete the listener and add a new one",
            ));
        }
    }
    listener_fields(ctx.st, p, "", &mut l)?;
    touch_lb(ctx.st, &l.loadbalancer_id)?;
    let seq = ctx.seq();
    ctx.st.listeners.insert(&id, seq, l);
    Ok(Reply::new())
}

/// DeleteLoadBalancerListeners (their backends go too).
pub fn delete_listeners(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let ids = id_list(p, "loadbalancer_listeners")?;
    let listeners = load(&ctx.st.listeners, "loadbalancer listener", &ids)?;
    for l in &listeners {
        touch_lb(ctx.st, &l.loadbalancer_id)?;
    }
    for l in listeners {
        for b in ctx
            .st
            .backends
            .ids_where(|b| b.loadbalancer_listener_id == l.loadbalancer_listener_id)
        {
            ctx.st.backends.remove(&b);
        }
        ctx.st.listeners.remove(&l.loadbalancer_listener_id);
    }
    Ok(reply([("loadbalancer_listeners", ids_value(&ids))]))
}

// ---------------------------------------------------------------- backends

/// AddLoadBalancerBackends: `resource_id` is an instance or an IP address.
pub fn add_backends(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let listener_id = p.required("loadbalancer_listener")?.to_string();
    let records = p.records("backends")?;
    if records.is_empty() {
        return Err(ParamError::Missing("backends.1.resource_id".into()).into());
    }
    // Malformed parameters are reported before unknown ids (1100 before 2100).
    for r in &records {
        r.required("resource_id")?;
        r.req::<u16>("port")?;
        r.opt::<u32>("weight")?;
    }
    let listener = load_one(&ctx.st.listeners, "loadbalancer listener", &listener_id)?.clone();
    let mut taken: Vec<(String, u16, String, String)> = ctx
        .st
        .backends
        .values()
        .filter(|b| b.loadbalancer_listener_id == listener_id)
        .map(|b| {
            (
                b.resource_id.clone(),
                b.port,
                b.loadbalancer_policy_id.clone(),
                b.loadbalancer_backend_id.clone(),
            )
        })
        .collect();
    let mut new = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let prefix = format!("backends.{}.", i + 1);
        let resource_id = r.required("resource_id")?.to_string();
        if resource_id.parse::<std::net::IpAddr>().is_err() {
            let inst = load_one(&ctx.st.instances, "instance", &resource_id)?;
            if inst.status == "terminated" || inst.status == "ceased" {
                return Err(ApiError::bad_state(
                    "instance",
                    &resource_id,
                    &inst.status,
                    "running or stopped",
                ));
            }
        }
        let port: u16 = r.req("port")?;
        if port == 0 {
            return Err(ApiError::invalid(
                &format!("{prefix}port"),
                "must be 1..65535",
            ));
        }
        let weight: u32 = r.opt("weight")?.unwrap_or(1);
        if !(1..=100).contains(&weight) {
            return Err(ApiError::invalid(
                &format!("{prefix}weight"),
                format!("{weight} is not within 1..100"),
            ));
        }
        let policy = r
            .get("loadbalancer_policy_id")
            .unwrap_or_default()
            .to_string();
        if !policy.is_empty() {
            load_one(&ctx.st.policies, "loadbalancer policy", &policy)?;
            if listener.listener_protocol != "http" && listener.listener_protocol != "https" {
                return Err(ApiError::invalid(
                    &format!("{prefix}loadbalancer_policy_id"),
                    format!(
                        "policies apply to http/https listeners, [{listener_id}] is {}",
                        listener.listener_protocol
                    ),
                ));
            }
        }
        let id = new_id("lbb");
        if let Some((.., other)) = taken
            .iter()
            .find(|(r, p, pol, _)| *r == resource_id && *p == port && *pol == policy)
        {
            return Err(ApiError::exists(format!(
                "invalid parameter [{prefix}resource_id]: listener [{listener_id}] already has backend {resource_id}:{port} ([{other}])"
            )));
        }
        taken.push((resource_id.clone(), port, policy.clone(), id.clone()));
        new.push(LoadBalancerBackend {
            loadbalancer_backend_id: id,
            loadbalancer_backend_name: r
                .get("loadbalancer_backend_name")
                .unwrap_or_default()
                .to_string(),
            loadbalancer_listener_id: listener_id.clone(),
            loadbalancer_id: listener.loadbalancer_id.clone(),
            resource_id,
            port,
            weight,
            loadbalancer_policy_id: policy,
            status: String::new(),
            create_time: now_rfc3339(),
        });
    }
    touch_lb(ctx.st, &listener.loadbalancer_id)?;
    let ids: Vec<String> = new
        .iter()
        .map(|b| b.loadbalancer_backend_id.clone())
        .collect();
    for b in new {
        let seq = ctx.seq();
        ctx.st
            .backends
            .insert(&b.loadbalancer_backend_id.clone(), seq, b);
    }
    Ok(reply([("loadbalancer_backends", ids_value(&ids))]))
}

/// DescribeLoadBalancerBackends (status from the proxy's health checks).
pub fn describe_backends(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let listener = p.get("loadbalancer_listener").map(str::to_string);
    let lb = p.get("loadbalancer").map(str::to_string);
    let dp = ctx.dp.clone();
    let mut cache = BTreeMap::new();
    describe(
        ctx.st,
        p,
        ctx.st.backends.ordered(),
        "loadbalancer_backends",
        "loadbalancer_backend_set",
        |b: &LoadBalancerBackend| {
            listener
                .as_ref()
                .is_none_or(|l| &b.loadbalancer_listener_id == l)
                && lb.as_ref().is_none_or(|l| &b.loadbalancer_id == l)
        },
        |_, b| {
            let h = health(&dp, &b.loadbalancer_id, &mut cache);
            *b = with_status(b.clone(), &h);
        },
    )
}

/// ModifyLoadBalancerBackendAttributes (port, weight).
pub fn modify_backend(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let id = p.required("loadbalancer_backend")?.to_string();
    let mut b = load_one(&ctx.st.backends, "loadbalancer backend", &id)?.clone();
    if let Some(port) = p.opt::<u16>("port")? {
        if port == 0 {
            return Err(ApiError::invalid("port", "must be 1..65535"));
        }
        b.port = port;
    }
    if let Some(w) = p.opt::<u32>("weight")? {
        if !(1..=100).contains(&w) {
            return Err(ApiError::invalid(
                "weight",
                format!("{w} is not within 1..100"),
            ));
        }
        b.weight = w;
    }
    if let Some(name) = p.get("loadbalancer_backend_name") {
        b.loadbalancer_backend_name = name.to_string();
    }
    touch_lb(ctx.st, &b.loadbalancer_id)?;
    let seq = ctx.seq();
    ctx.st.backends.insert(&id, seq, b);
    Ok(Reply::new())
}

/// DeleteLoadBalancerBackends.
pub fn delete_backends(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let ids = id_list(p, "loadbalancer_backends")?;
    let backends = load(&ctx.st.backends, "loadbalancer backend", &ids)?;
    for b in &backends {
        touch_lb(ctx.st, &b.loadbalancer_id)?;
    }
    for b in backends {
        ctx.st.backends.remove(&b.loadbalancer_backend_id);
    }
    Ok(reply([("loadbalancer_backends", ids_value(&ids))]))
}

// ---------------------------------------------------------------- policies

/// CreateLoadBalancerPolicy.
pub fn create_policy(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let name = name_param(p, "loadbalancer_policy_name")?;
    let operator = p.get("operator").unwrap_or("or").to_string();
    if operator != "and" && operator != "or" {
        return Err(ApiError::invalid(
            "operator",
            format!("{operator:?} is not and or or"),
        ));
    }
    let id = new_id("lbp");
    let seq = ctx.seq();
    ctx.st.policies.insert(
        &id,
        seq,
        LoadBalancerPolicy {
            loadbalancer_policy_id: id.clone(),
            loadbalancer_policy_name: name,
            operator,
            is_applied: 0,
            create_time: now_rfc3339(),
            ..Default::default()
        },
    );
    Ok(reply([("loadbalancer_policy_id", Value::String(id))]))
}

/// DescribeLoadBalancerPolicies (`verbose=1` nests rules).
pub fn describe_policies(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let verbose = p.flag("verbose")?.unwrap_or(false);
    describe(
        ctx.st,
        p,
        ctx.st.policies.ordered(),
        "loadbalancer_policies",
        "loadbalancer_policy_set",
        |_: &LoadBalancerPolicy| true,
        |st, pol| {
            if verbose {
                pol.rules = st
                    .rules
                    .ordered()
                    .into_iter()
                    .filter(|r| r.loadbalancer_policy_id == pol.loadbalancer_policy_id)
                    .cloned()
                    .collect();
            }
        },
    )
}

/// DeleteLoadBalancerPolicies (not while a backend uses one).
pub fn delete_policies(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let ids = id_list(p, "loadbalancer_policies")?;
    load(&ctx.st.policies, "loadbalancer policy", &ids)?;
    for id in &ids {
        if let Some(b) = ctx
            .st
            .backends
            .values()
            .find(|b| &b.loadbalancer_policy_id == id)
        {
            return Err(ApiError::in_use(
                "loadbalancer policy",
                id,
                &b.loadbalancer_backend_id,
            ));
        }
    }
    for id in &ids {
        for r in ctx.st.rules.ids_where(|r| &r.loadbalancer_policy_id == id) {
            ctx.st.rules.remove(&r);
        }
        ctx.st.policies.remove(id);
    }
    Ok(reply([("loadbalancer_policies", ids_value(&ids))]))
}

/// AddLoadBalancerPolicyRules.
pub fn add_policy_rules(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let policy = p.required("loadbalancer_policy")?.to_string();
    let records = p.records("rules")?;
    if records.is_empty() {
        return Err(ParamError::Missing("rules.1.rule_type".into()).into());
    }
    for r in &records {
        r.required("rule_type")?;
        r.required("val")?;
    }
    load_one(&ctx.st.policies, "loadbalancer policy", &policy)?;
    let mut new = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let n = i + 1;
        let rule_type = r.required("rule_type")?.to_string();
        let val = r.required("val")?.to_string();
        match rule_type.as_str() {
            "domain" => {
                if val.contains('/') || val.contains(' ') {
                    return Err(ApiError::invalid(
                        &format!("rules.{n}.val"),
                        format!("{val:?} is not a host name"),
                    ));
                }
            }
            "url" => {
                // `/p` is a string prefix; `=/p` an exact path and `~/p` an
                // element-wise prefix (Kubernetes Exact and Prefix pathTypes).
                let path = val.strip_prefix(['=', '~']).unwrap_or(&val);
                if !path.starts_with('/') {
                    return Err(ApiError::invalid(
                        &format!("rules.{n}.val"),
                        format!("{val:?} is not a path starting with / (optionally after = or ~)"),
                    ));
                }
            }
            other => {
                return Err(ApiError::invalid(
                    &format!("rules.{n}.rule_type"),
                    format!("{other:?} is not domain or url"),
                ));
            }
        }
        new.push(LoadBalancerPolicyRule {
            loadbalancer_policy_rule_id: new_id("lbpr"),
            loadbalancer_policy_rule_name: r
                .get("loadbalancer_policy_rule_name")
                .unwrap_or_default()
                .to_string(),
            loadbalancer_policy_id: policy.clone(),
            rule_type,
            val,
        });
    }
    let ids: Vec<String> = new
        .iter()
        .map(|r| r.loadbalancer_policy_rule_id.clone())
        .collect();
    for r in new {
        let seq = ctx.seq();
        ctx.st
            .rules
            .insert(&r.loadbalancer_policy_rule_id.clone(), seq, r);
    }
    if let Some(p) = ctx.st.policies.get_mut(&policy) {
        p.is_applied = 0;
    }
    Ok(reply([("loadbalancer_policy_rules", ids_value(&ids))]))
}

/// DescribeLoadBalancerPolicyRules.
pub fn describe_policy_rules(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let policy = p.get("loadbalancer_policy").map(str::to_string);
    describe(
        ctx.st,
        p,
        ctx.st.rules.ordered(),
        "loadbalancer_policy_rules",
        "loadbalancer_policy_rule_set",
        |r: &LoadBalancerPolicyRule| {
            policy
                .as_ref()
                .is_none_or(|x| &r.loadbalancer_policy_id == x)
        },
        |_, _| {},
    )
}

/// DeleteLoadBalancerPolicyRules.
pub fn delete_policy_rules(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let ids = id_list(p, "loadbalancer_policy_rules")?;
    for r in load(&ctx.st.rules, "loadbalancer policy rule", &ids)? {
        ctx.st.rules.remove(&r.loadbalancer_policy_rule_id);
        if let Some(p) = ctx.st.policies.get_mut(&r.loadbalancer_policy_id) {
            p.is_applied = 0;
        }
    }
    Ok(reply([("loadbalancer_policy_rules", ids_value(&ids))]))
}

/// ApplyLoadBalancerPolicy: the policy's rules take effect on every LB using it.
pub fn apply_policy(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let policy = p.required("loadbalancer_policy")?.to_string();
    load_one(&ctx.st.policies, "loadbalancer policy", &policy)?;
    let job = ctx.job(
        "ApplyLoadBalancerPolicy",
        std::slice::from_ref(&policy),
        JobOp::ApplyLoadBalancerPolicy {
            policy: policy.clone(),
        },
    );
    Ok(reply([("job_id", job.into())]))
}

// ---------------------------------------------------------------- certificates

/// Accepts PEM with real newlines or with literal `\n` (how QingCloud's console sends it).
fn pem_param(p: &Params, name: &str, marker: &str) -> ApiResult<String> {
    let v = p.required(name)?;
    let v = if !v.contains('\n') && v.contains("\\n") {
        v.replace("\\n", "\n")
    } else {
        v.to_string()
    };
    if !v.contains(marker) {
        return Err(ApiError::invalid(
            name,
            format!("not PEM (no {marker:?} block)"),
        ));
    }
    if v.len() > 64 * 1024 {
        return Err(ApiError::invalid(name, "longer than 64 KiB"));
    }
    Ok(v)
}

/// CreateServerCertificate.
pub fn create_certificate(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let name = name_param(p, "server_certificate_name")?;
    let content = pem_param(p, "certificate_content", "-----BEGIN CERTIFICATE-----")?;
    let key = pem_param(p, "private_key", "PRIVATE KEY-----")?;
    let id = new_id("sc");
    let seq = ctx.seq();
    ctx.st.certs.insert(
        &id,
        seq,
        CertRec {
            cert: ServerCertificate {
                server_certificate_id: id.clone(),
                server_certificate_name: name,
                certificate_content: content,
                create_time: now_rfc3339(),
                ..Default::default()
            },
            private_key: key,
        },
    );
    Ok(reply([("server_certificate_id", Value::String(id))]))
}

/// DescribeServerCertificates (never returns the private key).
pub fn describe_certificates(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let rows: Vec<&ServerCertificate> = ctx
        .st
        .certs
        .ordered()
        .into_iter()
        .map(|c| &c.cert)
        .collect();
    describe(
        ctx.st,
        p,
        rows,
        "server_certificates",
        "server_certificate_set",
        |_| true,
        |_, _| {},
    )
}

/// DeleteServerCertificates (not while a listener uses one).
pub fn delete_certificates(ctx: &mut Ctx<'_>, p: &Params) -> ApiResult<Reply> {
    let ids = id_list(p, "server_certificates")?;
    load(&ctx.st.certs, "server certificate", &ids)?;
    for id in &ids {
        if let Some(l) = ctx
            .st
            .listeners
            .values()
            .find(|l| l.server_certificate_id.contains(id))
        {
            return Err(ApiError::in_use(
                "server certificate",
                id,
                &l.loadbalancer_listener_id,
            ));
        }
    }
    for id in &ids {
        ctx.st.certs.remove(id);
        ctx.st.untag_resource(id);
    }
    Ok(reply([("server_certificates", ids_value(&ids))]))
}

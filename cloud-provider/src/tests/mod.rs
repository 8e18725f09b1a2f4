//! Unit tests of the planning functions (no cluster, no cloud).

mod lifecycle;
mod provider;
mod routes;
mod services;

use iaas_client::model::{EipRef, Instance, InstanceVxnet};
use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

use crate::config::CloudConfig;
use crate::provider::MatchKey;

pub fn cfg() -> CloudConfig {
    CloudConfig {
        zone: "emu1".into(),
        region: "emu".into(),
        router_id: Some("rtr-1".into()),
        vxnet_id: Some("vxnet-1".into()),
        cluster_id: "c1".into(),
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        provider_name: "cloudsuite".into(),
        node_match_order: MatchKey::DEFAULT_ORDER.to_vec(),
        load_balancer_class: crate::config::DEFAULT_LB_CLASS.into(),
        default_eip_bandwidth: 10,
        default_lb_type: 0,
    }
}

pub fn instance(id: &str, name: &str, ip: &str, status: &str) -> Instance {
    Instance {
        instance_id: id.into(),
        instance_name: name.into(),
        instance_type: "c1m2".into(),
        status: status.into(),
        vxnets: vec![InstanceVxnet {
            vxnet_id: "vxnet-1".into(),
            private_ip: ip.into(),
            ..Default::default()
        }],
        zone_id: "emu1".into(),
        ..Default::default()
    }
}

pub fn with_eip(mut i: Instance, addr: &str) -> Instance {
    i.eip = Some(EipRef {
        eip_id: "eip-1".into(),
        eip_addr: addr.into(),
        ..Default::default()
    });
    i
}

/// A node from JSON pieces: `spec`, `status`, `metadata` extras merged in.
pub fn node(name: &str, extra: Value) -> Node {
    let mut v = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name, "uid": format!("uid-{name}"), "resourceVersion": "1" },
        "spec": {},
        "status": {},
    });
    merge(&mut v, extra);
    serde_json::from_value(v).unwrap()
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

pub fn uninit_taint() -> Value {
    json!({ "key": crate::provider::TAINT_UNINITIALIZED, "value": "true", "effect": "NoSchedule" })
}

pub fn ready(status: &str) -> Value {
    json!({ "status": { "conditions": [{ "type": "Ready", "status": status }] } })
}

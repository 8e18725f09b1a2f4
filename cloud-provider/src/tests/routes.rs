use iaas_client::model::RouterStatic;
use serde_json::json;

use super::node;
use crate::routes::*;

fn n(name: &str, cidrs: &[&str], ip: &str) -> k8s_openapi::api::core::v1::Node {
    node(
        name,
        json!({
            "spec": {"podCIDR": cidrs.first(), "podCIDRs": cidrs},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
        }),
    )
}

fn st(id: &str, name: &str, cidr: &str, hop: &str) -> RouterStatic {
    RouterStatic {
        router_static_id: id.into(),
        router_static_name: name.into(),
        static_type: 9,
        val1: cidr.into(),
        val2: hop.into(),
        ..Default::default()
    }
}

#[test]
fn desired_from_nodes() {
    let nodes = vec![
        n("a", &["10.244.1.0/24", "fd00:1::/64"], "172.30.1.11"),
        n("b", &[], "172.30.1.12"),
        node("c", json!({"spec": {"podCIDRs": ["10.244.3.0/24"]}})),
        n("d", &["bogus"], "172.30.1.14"),
    ];
    let d = desired_routes(&nodes);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].node, "a");
    assert_eq!(d[0].cidr.to_string(), "10.244.1.0/24");
    assert_eq!(d[0].next_hop, "172.30.1.11");
}

#[test]
fn diff_adds_deletes_and_respects_ownership_and_cluster_cidr() {
    let cidr = "10.244.0.0/16".parse().unwrap();
    let desired = desired_routes(&[
        n("a", &["10.244.1.0/24"], "172.30.1.11"),
        n("b", &["10.244.2.0/24"], "172.30.1.12"),
        n("c", &["10.244.3.0/24"], "172.30.1.13"),
        n("d", &["10.244.4.0/24"], "172.30.1.14"),
    ]);
    let statics = vec![
        // a: present (name irrelevant for presence).
        st("rtrs-a", "k8s-route:c1:a", "10.244.1.0/24", "172.30.1.11"),
        // b: ours with a stale next hop: replaced.
        st("rtrs-b", "k8s-route:c1:b", "10.244.2.0/24", "172.30.1.99"),
        // ours, node gone, inside cluster CIDR: deleted.
        st(
            "rtrs-gone",
            "k8s-route:c1:gone",
            "10.244.9.0/24",
            "172.30.1.19",
        ),
        // ours but outside the cluster CIDR: kept.
        st(
            "rtrs-out",
            "k8s-route:c1:old",
            "10.99.0.0/24",
            "172.30.1.20",
        ),
        // another cluster's (prefix c10 must not match c1): kept.
        st(
            "rtrs-c10",
            "k8s-route:c10:x",
            "10.244.10.0/24",
            "172.30.1.21",
        ),
        // not ours, claims d's CIDR elsewhere: conflict, never touched.
        st("rtrs-user", "manual", "10.244.4.0/24", "172.30.1.50"),
        // other static types are ignored.
        RouterStatic {
            static_type: 1,
            val1: "10.244.3.0/24".into(),
            ..Default::default()
        },
    ];
    let p = plan_routes(&desired, &statics, &cidr, "c1");
    assert_eq!(
        p.delete,
        vec!["rtrs-b".to_string(), "rtrs-gone".to_string()]
    );
    let added: Vec<(&str, String)> = p
        .add
        .iter()
        .map(|d| (d.node.as_str(), d.next_hop.clone()))
        .collect();
    assert_eq!(
        added,
        vec![
            ("b", "172.30.1.12".to_string()),
            ("c", "172.30.1.13".to_string())
        ]
    );
    assert_eq!(p.conflicts.len(), 1);
    assert_eq!(p.conflicts[0].1, "rtrs-user");
    let routed: Vec<&str> = p.routed.iter().map(String::as_str).collect();
    assert_eq!(routed, vec!["a", "b", "c"]);
    // Steady state: nothing to do.
    let statics = vec![
        st("1", "k8s-route:c1:a", "10.244.1.0/24", "172.30.1.11"),
        st("2", "k8s-route:c1:b", "10.244.2.0/24", "172.30.1.12"),
        st("3", "k8s-route:c1:c", "10.244.3.0/24", "172.30.1.13"),
        st("4", "k8s-route:c1:d", "10.244.4.0/24", "172.30.1.14"),
    ];
    let p = plan_routes(&desired, &statics, &cidr, "c1");
    assert!(p.is_noop(), "{p:?}");
    assert_eq!(p.routed.len(), 4);
}

#[test]
fn route_condition_detection() {
    let yes = node(
        "a",
        json!({"status": {"conditions": [{"type": "NetworkUnavailable", "status": "False", "reason": "RouteCreated"}]}}),
    );
    let no = node(
        "a",
        json!({"status": {"conditions": [{"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated"}]}}),
    );
    assert!(has_route_condition(&yes));
    assert!(!has_route_condition(&no));
    assert!(!has_route_condition(&node("a", json!({}))));
}

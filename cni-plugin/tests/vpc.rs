//! Pods on two emulated instances reach each other through the VPC routes
//! the emulator's network driver programs: no tunnel, no encapsulation.

mod common;

use common::*;
use iaas_client::model::{
    Instance, InstanceVxnet, RouterStatic, STATIC_TYPE_ROUTE, Vxnet, VxnetRouter,
};
use iaas_emulator::dataplane::NetworkDriver;
use iaas_emulator::dataplane::network::NamespaceNetworkDriver;

/// Tears the emulated VPC down even when the test fails.
struct Vpc(NamespaceNetworkDriver);

impl Drop for Vpc {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

fn instance(id: &str, ip: &str) -> Instance {
    Instance {
        instance_id: id.into(),
        vxnets: vec![InstanceVxnet {
            vxnet_id: "vxnet-c1".into(),
            private_ip: ip.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn pods_across_nodes_route_through_the_vpc() {
    if !privileged() {
        return;
    }
    let vpc = Vpc(NamespaceNetworkDriver::new(&unique("v")).unwrap());
    let vxnet = Vxnet {
        vxnet_id: "vxnet-c1".into(),
        vxnet_type: 1,
        router: Some(VxnetRouter {
            router_id: "rtr-c1".into(),
            ip_network: "172.31.9.0/24".into(),
            manager_ip: "172.31.9.1".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    vpc.0
        .instance_up(&instance("i-na", "172.31.9.11"), &vxnet)
        .unwrap();
    vpc.0
        .instance_up(&instance("i-nb", "172.31.9.12"), &vxnet)
        .unwrap();
    let route = |dst: &str, hop: &str| RouterStatic {
        router_static_id: format!("rtrs-{hop}"),
        static_type: STATIC_TYPE_ROUTE,
        val1: dst.into(),
        val2: hop.into(),
        ..Default::default()
    };
    vpc.0
        .apply_router_statics(
            "rtr-c1",
            &[
                route("10.251.1.0/24", "172.31.9.11"),
                route("10.251.2.0/24", "172.31.9.12"),
            ],
        )
        .unwrap();
    let node_a = Ns::borrowed(&vpc.0.instance_netns("i-na"));
    let node_b = Ns::borrowed(&vpc.0.instance_netns("i-nb"));
    let dir = tempfile::tempdir().unwrap();
    let conf_a = conf("10.251.1.0/24", &dir.path().join("a"));
    let conf_b = conf("10.251.2.0/24", &dir.path().join("b"));

    let (a1, a2, b1) = (Ns::new("a"), Ns::new("a"), Ns::new("b"));
    let r = cni(&node_a.name, "ADD", "a1", Some(&a1.path()), &conf_a);
    assert!(r.ok, "{}", r.stdout);
    let ip_a1 = result_ip(&r);
    // The pod's MTU is the uplink's (no encapsulation overhead).
    assert_eq!(r.json["interfaces"][1]["mtu"], 1500);
    let r = cni(&node_a.name, "ADD", "a2", Some(&a2.path()), &conf_a);
    assert!(r.ok, "{}", r.stdout);
    let ip_a2 = result_ip(&r);
    let r = cni(&node_b.name, "ADD", "b1", Some(&b1.path()), &conf_b);
    assert!(r.ok, "{}", r.stdout);
    let ip_b1 = result_ip(&r);

    assert!(
        tcp_reaches(&a1.name, &a2.name, ip_a2),
        "pod to pod on one node"
    );
    assert!(
        tcp_reaches(&a1.name, &b1.name, ip_b1),
        "pod A to pod B across nodes"
    );
    assert!(
        tcp_reaches(&b1.name, &a1.name, ip_a1),
        "pod B to pod A across nodes"
    );
    assert!(
        tcp_reaches(&a1.name, &node_b.name, "172.31.9.12".parse().unwrap()),
        "pod to the other node"
    );

    // The path is plain routing: no tunnel device anywhere on it, and the
    // VPC namespace forwarded the pod traffic itself.
    let vpc_ns = vpc.0.vpc_netns("rtr-c1");
    for ns in [&node_a.name, &node_b.name, &vpc_ns, &a1.name, &b1.name] {
        let kinds = link_kinds(ns);
        for tunnel in [
            "vxlan",
            "geneve",
            "gre",
            "gretap",
            "ipip",
            "sit",
            "ip6tnl",
            "wireguard",
        ] {
            assert!(
                !kinds.iter().any(|k| k == tunnel),
                "{tunnel} device in {ns}: {kinds:?}"
            );
        }
    }
    let got = ip(&["-n", &vpc_ns, "route", "get", &ip_b1.to_string()]);
    assert!(got.contains("via 172.31.9.12"), "{got}");

    for (node, cid, ns, c) in [
        (&node_a, "a1", &a1, &conf_a),
        (&node_a, "a2", &a2, &conf_a),
        (&node_b, "b1", &b1, &conf_b),
    ] {
        assert!(cni(&node.name, "DEL", cid, Some(&ns.path()), c).ok);
    }
}

//! Pods on two emulated instances reach each other through the VPC routes
//! the emulator's network driver programs: no tunnel, no encapsulation.

mod common;

use common::*;
use iaas_client::model::{
    Instance, InstanceVxnet, RouterStatic, STATIC_TYPE_ROUTE, Vxnet, VxnetRouter,
};
use iaas_emulator::dataplane::NetworkDriver;
use iaas_emulator::dataplane::network::{self, NIC_GSO_MAX_SIZE, NamespaceNetworkDriver};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

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
    // The same network with bigTCP off (same lease dir).
    let mut small: serde_json::Value = serde_json::from_str(&conf_a).unwrap();
    small["bigTCP"] = false.into();
    let small_a = small.to_string();

    let (a1, a2, b1) = (Ns::new("a"), Ns::new("a"), Ns::new("b"));
    let r = cni(&node_a.name, "ADD", "a1", Some(&a1.path()), &conf_a);
    assert!(r.ok, "{}", r.stdout);
    let ip_a1 = result_ip(&r);
    // The pod's MTU is the uplink's (no encapsulation overhead).
    assert_eq!(r.json["interfaces"][1]["mtu"], 1500);
    let host_a1 = r.json["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let r = cni(&node_a.name, "ADD", "a2", Some(&a2.path()), &small_a);
    assert!(r.ok, "{}", r.stdout);
    let ip_a2 = result_ip(&r);
    let host_a2 = r.json["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let r = cni(&node_b.name, "ADD", "b1", Some(&b1.path()), &conf_b);
    assert!(r.ok, "{}", r.stdout);
    let ip_b1 = result_ip(&r);
    let host_b1 = r.json["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();

    // BIG TCP: the emulated NIC advertises it, both ends of a default pod's
    // veth copy it, and bigTCP false keeps the kernel's 64 KiB.
    let big = (
        NIC_GSO_MAX_SIZE,
        NIC_GSO_MAX_SIZE,
        NIC_GSO_MAX_SIZE,
        NIC_GSO_MAX_SIZE,
    );
    let legacy = (65_536, 65_536, 65_536, 65_536);
    let limits = |ns: &str, dev: &str| network::gso_limits(ns, dev).unwrap();
    assert_eq!(limits(&node_a.name, "eth0"), big, "the instance's NIC");
    assert_eq!(limits(&a1.name, "eth0"), big, "pod end");
    assert_eq!(limits(&node_a.name, &host_a1), big, "host end");
    assert_eq!(limits(&a2.name, "eth0"), legacy, "bigTCP false, pod end");
    assert_eq!(
        limits(&node_a.name, &host_a2),
        legacy,
        "bigTCP false, host end"
    );

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

    // A bulk transfer crosses both nodes and the router in segments above
    // 64 KiB, intact: the skbs the receiving node hands to pod B's veth
    // average more than the legacy limit (a device on the way with smaller
    // limits would have cut them to MTU-sized packets).
    let before = tx(&node_b.name, &host_b1);
    let sent = 64 << 20;
    assert_eq!(bulk(&a1.name, &b1.name, ip_b1, sent), sent);
    let (bytes, packets) = tx(&node_b.name, &host_b1);
    let (bytes, packets) = (bytes - before.0, packets - before.1);
    assert!(bytes >= sent, "{bytes} bytes for {sent}");
    eprintln!("pod B's veth got {bytes} bytes in {packets} skbs");
    assert!(
        bytes / packets > 65_536,
        "{bytes} bytes in {packets} packets: segments were cut on the way"
    );

    for (node, cid, ns, c) in [
        (&node_a, "a1", &a1, &conf_a),
        (&node_a, "a2", &a2, &conf_a),
        (&node_b, "b1", &b1, &conf_b),
    ] {
        assert!(cni(&node.name, "DEL", cid, Some(&ns.path()), c).ok);
    }
}

/// Bytes and packets `dev` in `ns` has transmitted.
fn tx(ns: &str, dev: &str) -> (u64, u64) {
    let out = ip(&["-n", ns, "-s", "-j", "link", "show", dev]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let t = &v[0]["stats64"]["tx"];
    (t["bytes"].as_u64().unwrap(), t["packets"].as_u64().unwrap())
}

/// Sends `bytes` over TCP from namespace `from` to a listener at `to_addr`
/// in `to`; returns what the receiver read.
fn bulk(from: &str, to: &str, to_addr: Ipv4Addr, bytes: u64) -> u64 {
    let listener = in_netns(to, move || TcpListener::bind((to_addr, 0)).unwrap());
    let port = listener.local_addr().unwrap().port();
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = vec![0u8; 1 << 18];
        let mut got = 0u64;
        loop {
            match s.read(&mut buf).unwrap() {
                0 => return got,
                n => got += n as u64,
            }
        }
    });
    in_netns(from, move || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((to_addr, port)), Duration::from_secs(5))
                .unwrap();
        let chunk = vec![0x5au8; 1 << 18];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            s.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
    });
    receiver.join().unwrap()
}

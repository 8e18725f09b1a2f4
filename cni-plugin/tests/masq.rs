//! `ipMasq`: pod traffic to a destination outside the non-masquerade CIDRs
//! leaves with the node's address; inside them, with the pod's own.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::*;

#[test]
fn masquerade_only_outside_the_non_masquerade_cidrs() {
    if !privileged() {
        return;
    }
    let node = Ns::new("n");
    let outside = Ns::new("x");
    let pod = Ns::new("p");
    let dir = tempfile::tempdir().unwrap();
    // node <-> outside: 192.0.2.0/24 (masqueraded) and 198.51.100.0/24 (not).
    let (vn, vx) = (unique("vn"), unique("vx"));
    ip(&[
        "-n",
        &node.name,
        "link",
        "add",
        &vn,
        "type",
        "veth",
        "peer",
        "name",
        &vx,
        "netns",
        &outside.name,
    ]);
    for (ns, dev, a, b) in [
        (&node.name, &vn, "192.0.2.1/24", "198.51.100.1/24"),
        (&outside.name, &vx, "192.0.2.2/24", "198.51.100.2/24"),
    ] {
        ip(&["-n", ns, "addr", "add", a, "dev", dev]);
        ip(&["-n", ns, "addr", "add", b, "dev", dev]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
    }
    // Only the non-masqueraded network knows the way back to pods.
    ip(&[
        "-n",
        &outside.name,
        "route",
        "add",
        "10.250.6.0/24",
        "via",
        "198.51.100.1",
    ]);
    let c = serde_json::json!({
        "cniVersion": "1.1.0", "name": "podnet", "type": "cloudsuite-cni",
        "podCIDR": "10.250.6.0/24", "dataDir": dir.path().display().to_string(),
        "ipMasq": true, "nonMasqueradeCIDRs": ["198.51.100.0/24", "10.250.0.0/16"],
    })
    .to_string();
    let add = cni(&node.name, "ADD", "m1", Some(&pod.path()), &c);
    assert!(add.ok, "{}", add.stdout);
    let pod_ip = result_ip(&add);

    let node_addr: IpAddr = "192.0.2.1".parse().unwrap();
    assert_eq!(
        seen_source(&pod.name, &outside.name, Ipv4Addr::new(192, 0, 2, 2)),
        Some(node_addr),
        "outside the non-masquerade CIDRs the pod appears as the node"
    );
    assert_eq!(
        seen_source(&pod.name, &outside.name, Ipv4Addr::new(198, 51, 100, 2)),
        Some(IpAddr::V4(pod_ip)),
        "inside them it keeps its own address"
    );

    // Idempotent: another ADD re-applies the same single rule set.
    let pod2 = Ns::new("p");
    assert!(cni(&node.name, "ADD", "m2", Some(&pod2.path()), &c).ok);
    let rules = ip_netns_exec(
        &node.name,
        &["nft", "list", "table", "inet", "cloudsuite_masq_podnet"],
    );
    assert_eq!(rules.matches("masquerade").count(), 1, "{rules}");
    for (cid, ns) in [("m1", &pod), ("m2", &pod2)] {
        assert!(cni(&node.name, "DEL", cid, Some(&ns.path()), &c).ok);
    }
}

fn ip_netns_exec(ns: &str, cmd: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

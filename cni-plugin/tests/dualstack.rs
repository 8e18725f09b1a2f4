//! Dual-stack: a pod gets an IPv4 /32 and an IPv6 /128 from the node's two
//! ranges; IPv6 pod-to-pod on one node works at once (no DAD wait); CHECK,
//! DEL and GC cover both families.

mod common;

use std::net::IpAddr;

use common::*;

fn dual_conf(dir: &std::path::Path) -> String {
    serde_json::json!({
        "cniVersion": "1.1.0", "name": "podnet", "type": "cloudsuite-cni",
        "podCIDRs": ["10.250.5.0/24", "fd00:250:5::/64"],
        "dataDir": dir.display().to_string(),
    })
    .to_string()
}

fn lease_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir.join("podnet"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.parse::<IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn ipv6_pod_to_pod_on_one_node_and_both_families_cleaned_up() {
    if !privileged() {
        return;
    }
    let node = Ns::new("n");
    let (p1, p2) = (Ns::new("p"), Ns::new("p"));
    let dir = tempfile::tempdir().unwrap();
    let c = dual_conf(dir.path());

    let a1 = cni(&node.name, "ADD", "d1", Some(&p1.path()), &c);
    assert!(a1.ok, "{}", a1.stdout);
    let a2 = cni(&node.name, "ADD", "d2", Some(&p2.path()), &c);
    assert!(a2.ok, "{}", a2.stdout);
    let ips1 = result_ips(&a1);
    let ips2 = result_ips(&a2);
    assert!(ips1[0].is_ipv4() && ips1[1].is_ipv6(), "{ips1:?}");
    assert!(ips2[1].to_string().starts_with("fd00:250:5::"));
    assert_eq!(a1.json["ips"][1]["address"], format!("{}/128", ips1[1]));
    assert_eq!(a1.json["ips"][1]["gateway"], "fe80::1");
    assert_eq!(
        a1.json["routes"][1],
        serde_json::json!({"dst": "::/0", "gw": "fe80::1"})
    );
    let neigh = ip(&["-n", &p1.name, "-6", "neigh", "show", "fe80::1"]);
    assert!(neigh.contains("PERMANENT"), "{neigh}");
    let host_route = ip(&[
        "-n",
        &node.name,
        "-6",
        "route",
        "show",
        &format!("{}/128", ips2[1]),
    ]);
    assert!(host_route.contains("dev cse"), "{host_route}");
    let addr = ip(&["-n", &p1.name, "-6", "addr", "show", "dev", "eth0"]);
    assert!(!addr.contains("tentative"), "DAD must be off: {addr}");

    // Right after ADD, both ways, both families.
    assert!(
        tcp_reaches_ip(&p1.name, &p2.name, ips2[1]),
        "IPv6 pod to pod"
    );
    assert!(
        tcp_reaches_ip(&p2.name, &p1.name, ips1[1]),
        "IPv6 pod to pod, back"
    );
    assert!(
        tcp_reaches_ip(&p1.name, &p2.name, ips2[0]),
        "IPv4 pod to pod"
    );

    // CHECK covers the IPv6 side too.
    let mut with_prev: serde_json::Value = serde_json::from_str(&c).unwrap();
    with_prev["prevResult"] = a1.json.clone();
    let with_prev = with_prev.to_string();
    let chk = cni(&node.name, "CHECK", "d1", Some(&p1.path()), &with_prev);
    assert!(chk.ok, "{}", chk.stdout);
    ip(&["-n", &p1.name, "-6", "route", "del", "default"]);
    let chk = cni(&node.name, "CHECK", "d1", Some(&p1.path()), &with_prev);
    assert_eq!((chk.ok, chk.code()), (false, 101), "{}", chk.stdout);
    assert!(
        chk.json["details"].as_str().unwrap().contains("fe80::1"),
        "{}",
        chk.stdout
    );

    // DEL releases both leases and removes both host routes.
    assert_eq!(lease_files(dir.path()).len(), 4);
    let del = cni(&node.name, "DEL", "d1", Some(&p1.path()), &c);
    assert!(del.ok, "{}", del.stdout);
    assert_eq!(lease_files(dir.path()).len(), 2);
    let r = ip(&[
        "-n",
        &node.name,
        "-6",
        "route",
        "show",
        &format!("{}/128", ips1[1]),
    ]);
    assert!(r.trim().is_empty(), "{r}");

    // GC reclaims both families of an attachment that is not valid.
    let mut gc: serde_json::Value = serde_json::from_str(&c).unwrap();
    gc["cni.dev/valid-attachments"] = serde_json::json!([]);
    let g = cni(&node.name, "GC", "", None, &gc.to_string());
    assert!(g.ok, "{}", g.stdout);
    assert!(lease_files(dir.path()).is_empty());
    assert!(wait_links_gone(&node.name, |l| l.starts_with("cse")));
}

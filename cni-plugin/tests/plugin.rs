//! The plugin binary executed as a runtime executes it, in real namespaces.

mod common;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::time::Duration;

use common::*;

#[test]
fn add_check_del_gc_status_version() {
    if !privileged() {
        return;
    }
    let node = Ns::new("n");
    let mut pod = Ns::new("p");
    let dir = tempfile::tempdir().unwrap();
    let c = conf("10.250.1.0/24", dir.path());

    let v = cni(&node.name, "VERSION", "", None, r#"{"cniVersion":"1.1.0"}"#);
    assert!(v.ok, "{}", v.stdout);
    assert!(
        v.json["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == "0.4.0")
    );

    let st = cni(&node.name, "STATUS", "", None, &c);
    assert!(st.ok, "{}", st.stdout);

    let add = cni(&node.name, "ADD", "ctr1", Some(&pod.path()), &c);
    assert!(add.ok, "{}", add.stdout);
    let pod_ip = result_ip(&add);
    assert!(pod_ip.to_string().starts_with("10.250.1."));
    assert_eq!(add.json["routes"][0]["gw"], "169.254.1.1");
    assert_eq!(add.json["cniVersion"], "1.1.0");
    let host_if = add.json["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(links(&node.name).contains(&host_if));
    let pod_addrs = ip(&["-n", &pod.name, "-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(pod_addrs.contains(&format!("{pod_ip}/32")), "{pod_addrs}");
    let neigh = ip(&["-n", &pod.name, "neigh", "show", "169.254.1.1"]);
    assert!(neigh.contains("PERMANENT"), "{neigh}");
    // Pod to node: the node answers on its own side of the veth path.
    ip(&[
        "-n",
        &node.name,
        "addr",
        "add",
        "192.0.2.10/32",
        "dev",
        "lo",
    ]);
    assert!(tcp_reaches(
        &pod.name,
        &node.name,
        "192.0.2.10".parse().unwrap()
    ));

    // CHECK against the result passes; after a change it names the difference.
    let mut with_prev: serde_json::Value = serde_json::from_str(&c).unwrap();
    with_prev["prevResult"] = add.json.clone();
    let with_prev = with_prev.to_string();
    let chk = cni(&node.name, "CHECK", "ctr1", Some(&pod.path()), &with_prev);
    assert!(chk.ok, "{}", chk.stdout);
    ip(&[
        "-n",
        &pod.name,
        "neigh",
        "del",
        "169.254.1.1",
        "dev",
        "eth0",
    ]);
    let chk = cni(&node.name, "CHECK", "ctr1", Some(&pod.path()), &with_prev);
    assert!(!chk.ok);
    assert_eq!(chk.code(), 101);
    assert!(
        chk.json["details"].as_str().unwrap().contains("neighbour"),
        "{}",
        chk.stdout
    );

    // A 0.4.0 configuration gets a 0.4.0 result.
    let mut old: serde_json::Value = serde_json::from_str(&c).unwrap();
    old["cniVersion"] = "0.4.0".into();
    let mut pod2 = Ns::new("p");
    let add2 = cni(
        &node.name,
        "ADD",
        "ctr2",
        Some(&pod2.path()),
        &old.to_string(),
    );
    assert!(add2.ok, "{}", add2.stdout);
    assert_eq!(add2.json["ips"][0]["version"], "4");
    assert_ne!(result_ip(&add2), pod_ip);

    // DEL is idempotent, also once the netns is gone.
    let del = cni(&node.name, "DEL", "ctr1", Some(&pod.path()), &c);
    assert!(del.ok, "{}", del.stdout);
    // Down at once (its route gone), unregistered shortly after.
    let route = ip(&["-n", &node.name, "route", "show", &format!("{pod_ip}/32")]);
    assert!(route.trim().is_empty(), "host route left: {route}");
    assert!(wait_links_gone(&node.name, |l| l == host_if));
    pod.delete();
    let del = cni(&node.name, "DEL", "ctr1", Some(&pod.path()), &c);
    assert!(del.ok, "{}", del.stdout);
    let del = cni(&node.name, "DEL", "ctr1", None, &c);
    assert!(del.ok, "{}", del.stdout);

    // GC: ctr2 is not valid any more, a crash leftover lease neither.
    std::fs::write(
        dir.path().join("podnet").join("10.250.1.200"),
        "crashed\neth0\n",
    )
    .unwrap();
    let mut gc: serde_json::Value = serde_json::from_str(&c).unwrap();
    gc["cni.dev/valid-attachments"] =
        serde_json::json!([{"containerID": "other", "ifname": "eth0"}]);
    let g = cni(&node.name, "GC", "", None, &gc.to_string());
    assert!(g.ok, "{}", g.stdout);
    let left: Vec<_> = std::fs::read_dir(dir.path().join("podnet"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
        .collect();
    assert!(left.is_empty(), "leases left after GC: {left:?}");
    assert!(
        links(&node.name).iter().all(|l| !l.starts_with("cse")),
        "GC left a veth"
    );
    pod2.delete();

    // STATUS without a pod CIDR is "not available".
    let none =
        serde_json::json!({"cniVersion":"1.1.0","name":"podnet","dataDir": dir.path()}).to_string();
    let st = cni(&node.name, "STATUS", "", None, &none);
    assert!(!st.ok);
    assert_eq!(st.code(), 50);
}

#[test]
fn concurrent_adds_never_share_an_address() {
    if !privileged() {
        return;
    }
    const PODS: usize = 110;
    let node = Ns::new("n");
    let dir = tempfile::tempdir().unwrap();
    let c = conf("10.250.2.0/24", dir.path());
    let pods: Vec<Ns> = (0..PODS).map(|_| Ns::new("p")).collect();
    let handles: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (node, path, c) = (node.name.clone(), p.path(), c.clone());
            std::thread::spawn(move || cni(&node, "ADD", &format!("burst{i}"), Some(&path), &c))
        })
        .collect();
    let runs: Vec<Run> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for r in &runs {
        assert!(r.ok, "{}", r.stdout);
    }
    let ips: HashSet<_> = runs.iter().map(result_ip).collect();
    assert_eq!(ips.len(), PODS, "duplicate addresses handed out");
    let handles: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (node, path, c) = (node.name.clone(), p.path(), c.clone());
            std::thread::spawn(move || cni(&node, "DEL", &format!("burst{i}"), Some(&path), &c))
        })
        .collect();
    for h in handles {
        let r = h.join().unwrap();
        assert!(r.ok, "{}", r.stdout);
    }
    assert!(wait_links_gone(&node.name, |l| l.starts_with("cse")));
}

/// Whether a UDP datagram sent from `src` in namespace `from` reaches a
/// socket bound to `to_addr` in namespace `to` (1 s wait).
fn udp_arrives(from: &str, src: Ipv4Addr, to: &str, to_addr: Ipv4Addr) -> bool {
    let rx = in_netns(to, move || UdpSocket::bind((to_addr, 0)).unwrap());
    rx.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let port = rx.local_addr().unwrap().port();
    in_netns(from, move || {
        let tx = UdpSocket::bind((src, 0)).unwrap();
        tx.send_to(b"who am i", (to_addr, port)).unwrap();
    });
    let mut buf = [0u8; 16];
    matches!(rx.recv_from(&mut buf), Ok((_, peer)) if peer.ip() == IpAddr::V4(src))
}

/// The node's count of packets dropped by the reverse-path filter.
fn rp_filter_drops(node: &str) -> u64 {
    let text = ip(&["netns", "exec", node, "cat", "/proc/net/netstat"]);
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "IPReversePathFilter")
        .map(|(_, v)| v.parse().unwrap())
        .expect("IPReversePathFilter in /proc/net/netstat")
}

#[test]
fn a_pod_cannot_send_from_an_address_it_was_not_given() {
    if !privileged() {
        return;
    }
    let node = Ns::new("n");
    let (pod, other) = (Ns::new("p"), Ns::new("p"));
    let dir = tempfile::tempdir().unwrap();
    let c = conf("10.250.4.0/24", dir.path());
    let add = cni(&node.name, "ADD", "spoof", Some(&pod.path()), &c);
    assert!(add.ok, "{}", add.stdout);
    let pod_ip = result_ip(&add);
    let add_other = cni(&node.name, "ADD", "victim", Some(&other.path()), &c);
    assert!(add_other.ok, "{}", add_other.stdout);
    let other_ip = result_ip(&add_other).to_string();
    ip(&[
        "-n",
        &node.name,
        "addr",
        "add",
        "192.0.2.20/32",
        "dev",
        "lo",
    ]);
    // The node routes everything else somewhere (as a real node's default
    // route does), so only a strict check tells the forged sources apart:
    // a loose one passes any source the node can route at all.
    ip(&[
        "-n", &node.name, "link", "add", "up0", "type", "veth", "peer", "name", "up1",
    ]);
    for l in ["up0", "up1"] {
        ip(&["-n", &node.name, "link", "set", l, "up"]);
    }
    ip(&["-n", &node.name, "route", "add", "default", "dev", "up0"]);
    let node_ip: Ipv4Addr = "192.0.2.20".parse().unwrap();
    assert!(udp_arrives(&pod.name, pod_ip, &node.name, node_ip));

    // A pod with NET_ADMIN adds an address that is not its own (the other
    // pod's, and one from outside the cluster) and sends from it: the host
    // veth's strict reverse-path check drops it before it is forwarded.
    let before = rp_filter_drops(&node.name);
    for forged in [other_ip.as_str(), "203.0.113.9"] {
        ip(&[
            "-n",
            &pod.name,
            "addr",
            "add",
            &format!("{forged}/32"),
            "dev",
            "eth0",
        ]);
        let forged: Ipv4Addr = forged.parse().unwrap();
        assert!(
            !udp_arrives(&pod.name, forged, &node.name, node_ip),
            "a datagram from forged source {forged} reached the node"
        );
    }
    assert!(
        rp_filter_drops(&node.name) >= before + 2,
        "the reverse-path filter did not count the forged datagrams"
    );
    // Its own address still works.
    assert!(udp_arrives(&pod.name, pod_ip, &node.name, node_ip));
    for (cid, ns) in [("spoof", &pod), ("victim", &other)] {
        let del = cni(&node.name, "DEL", cid, Some(&ns.path()), &c);
        assert!(del.ok, "{}", del.stdout);
    }
}

#[test]
fn exhaustion_is_a_clear_error_and_leaks_nothing() {
    if !privileged() {
        return;
    }
    let node = Ns::new("n");
    let dir = tempfile::tempdir().unwrap();
    let c = conf("10.250.3.0/30", dir.path());
    let pods: Vec<Ns> = (0..3).map(|_| Ns::new("p")).collect();
    assert!(cni(&node.name, "ADD", "x0", Some(&pods[0].path()), &c).ok);
    assert!(cni(&node.name, "ADD", "x1", Some(&pods[1].path()), &c).ok);
    let r = cni(&node.name, "ADD", "x2", Some(&pods[2].path()), &c);
    assert!(!r.ok);
    assert_eq!(r.code(), 100, "{}", r.stdout);
    assert!(r.json["msg"].as_str().unwrap().contains("10.250.3.0/30"));
    assert_eq!(
        links(&node.name)
            .iter()
            .filter(|l| l.starts_with("cse"))
            .count(),
        2
    );
    assert!(!links(&pods[2].name).contains(&"eth0".to_string()));
    let st = cni(&node.name, "STATUS", "", None, &c);
    assert_eq!(st.code(), 50);
}

#[test]
fn malformed_input_gets_cni_errors() {
    if !privileged() {
        return;
    }
    let node = Ns::new("n");
    let pod = Ns::new("p");
    let dir = tempfile::tempdir().unwrap();
    let c = conf("10.250.4.0/24", dir.path());
    let r = cni(&node.name, "ADD", "c1", Some(&pod.path()), "{not json");
    assert_eq!((r.ok, r.code()), (false, 6), "{}", r.stdout);
    let r = cni(&node.name, "ADD", "../../etc", Some(&pod.path()), &c);
    assert_eq!((r.ok, r.code()), (false, 4), "{}", r.stdout);
    assert!(r.json["msg"].as_str().unwrap().contains("CNI_CONTAINERID"));
    let r = cni(
        &node.name,
        "ADD",
        "c1",
        Some(std::path::Path::new("/var/run/netns/../../etc")),
        &c,
    );
    assert_eq!((r.ok, r.code()), (false, 4), "{}", r.stdout);
    let r = cni(
        &node.name,
        "ADD",
        "c1",
        Some(std::path::Path::new("/var/run/netns/does-not-exist")),
        &c,
    );
    assert_eq!((r.ok, r.code()), (false, 3), "{}", r.stdout);
    let r = exec(plugin_bin(), &node.name, &[], &c);
    assert_eq!((r.ok, r.code()), (false, 4), "{}", r.stdout);
    let bad_ver = c.replace("1.1.0", "0.2.0");
    let r = cni(&node.name, "ADD", "c1", Some(&pod.path()), &bad_ver);
    assert_eq!((r.ok, r.code()), (false, 1), "{}", r.stdout);
    // Nothing was allocated by any of these.
    assert!(
        std::fs::read_dir(dir.path().join("podnet"))
            .map(|d| d.count() <= 1)
            .unwrap_or(true)
    );
}

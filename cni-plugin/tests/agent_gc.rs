//! The agent's reconcile pass on a real node namespace: it installs the
//! plugin, writes the conflist, and reclaims only leases the machine shows
//! dead (its veth gone and its netns gone), never a live pod's.

mod common;

use std::time::Duration;

use cni_plugin::agent::{self, AgentConfig, Metrics};
use cni_plugin::config::Cidr;
use common::*;

#[test]
fn reconcile_reclaims_dead_leases_and_keeps_live_ones() {
    if !privileged() {
        return;
    }
    let node = Ns::new("n");
    let pod = Ns::new("p");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = conf("10.250.7.0/24", &data);
    let add = cni(&node.name, "ADD", "live", Some(&pod.path()), &c);
    assert!(add.ok, "{}", add.stdout);
    let live_ip = result_ip(&add);
    let leases = data.join("podnet");
    // Only its veth proves this pod alive: hide its netns path.
    std::fs::write(
        leases.join(live_ip.to_string()),
        "live\neth0\n/nonexistent/ns\n",
    )
    .unwrap();
    // A pod that died without DEL, and a torn lease of a crashed ADD.
    std::fs::write(leases.join("10.250.7.200"), "gone\neth0\n/nonexistent/ns\n").unwrap();
    std::fs::write(leases.join("10.250.7.201"), "").unwrap();

    let cfg = agent_config(dir.path(), &data);
    let metrics = Metrics::register(&mut Default::default());
    sync_in(&node.name, &cfg, "10.250.7.0/24", &metrics);
    let mut left: Vec<String> = std::fs::read_dir(&leases)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    left.sort();
    assert_eq!(left, vec![live_ip.to_string()]);
    assert_eq!(metrics.leases_reclaimed.get(), 2);
    assert_eq!(metrics.leases.get(), 1);
    assert!(cfg.conflist_path().is_file());
    assert_eq!(
        std::fs::read(cfg.bin_dir.join(agent::PLUGIN_TYPE)).unwrap(),
        std::fs::read(plugin_bin()).unwrap()
    );
    assert!(cni(&node.name, "DEL", "live", Some(&pod.path()), &c).ok);
}

/// The agent's configuration for a test under `dir`.
fn agent_config(dir: &std::path::Path, data: &std::path::Path) -> AgentConfig {
    AgentConfig {
        node_name: "n1".into(),
        network_name: "podnet".into(),
        conf_dir: dir.join("net.d"),
        bin_dir: dir.join("bin"),
        plugin_source: plugin_bin().into(),
        data_dir: data.to_path_buf(),
        mtu: None,
        big_tcp: true,
        ip_masq: false,
        non_masquerade: Vec::new(),
        resync: Duration::from_secs(60),
        gc_grace: Duration::ZERO,
    }
}

/// One agent pass in namespace `node` for pod CIDR `cidr`; returns the
/// conflist's plugin entry.
fn sync_in(node: &str, cfg: &AgentConfig, cidr: &str, metrics: &Metrics) -> serde_json::Value {
    let (cfg2, m2, cidr) = (cfg.clone(), metrics.clone(), Cidr::parse(cidr).unwrap());
    in_netns(node, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(conn);
            let mtu = cni_plugin::net::uplink_mtu(&handle).await.unwrap();
            agent::sync_once(&cfg2, &[cidr], mtu, Some(&handle), &m2)
                .await
                .unwrap();
        })
    });
    let list: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cfg.conflist_path()).unwrap()).unwrap();
    list["plugins"][0].clone()
}

#[test]
fn a_tunnel_up_on_the_node_turns_big_tcp_off_in_the_conflist() {
    if !privileged() {
        return;
    }
    let node = Ns::new("n");
    let dir = tempfile::tempdir().unwrap();
    let cfg = agent_config(dir.path(), &dir.path().join("data"));
    let metrics = Metrics::register(&mut Default::default());
    let sync = || sync_in(&node.name, &cfg, "10.250.8.0/24", &metrics);
    // Every namespace has down fallback tunnels (tunl0, sit0...): no effect.
    assert!(sync().get("bigTCP").is_none());
    ip(&[
        "-n", &node.name, "link", "add", "cnitvx0", "type", "vxlan", "id", "7", "dstport", "4789",
    ]);
    assert!(
        sync().get("bigTCP").is_none(),
        "a tunnel that is down does not count"
    );
    ip(&["-n", &node.name, "link", "set", "cnitvx0", "up"]);
    assert_eq!(sync()["bigTCP"], false, "a tunnel is up");
    ip(&["-n", &node.name, "link", "set", "cnitvx0", "down"]);
    assert!(sync().get("bigTCP").is_none(), "down again");
}

//! Crash safety of the plugin binary: `cloudsuite-cni`, executed as a
//! runtime executes it in real network namespaces, is SIGKILLed in the
//! middle of ADD at a named step (the test-only
//! [`cni_plugin::plugin::crash_point`]: the plugin stops itself there, the
//! test sees the stopped state and kills it). Then:
//!
//! - a retried ADD of the same attachment converges: the same address, one
//!   lease, one veth, a working interface, no address handed out twice;
//! - a DEL instead (the runtime gave up) leaves no lease and no link;
//! - GC reclaims the lease of an ADD that never completed: the CNI `GC`
//!   verb (the runtime's valid attachments), and the node agent's lease GC
//!   once the sandbox's namespace is gone.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cni_plugin::agent;
use cni_plugin::ipam::LeaseStore;
use cni_plugin::net::host_veth_name;
use cni_plugin::plugin::CRASH_POINT_ENV;
use common::*;

/// A plugin process killed (SIGKILL) and reaped on drop, whatever happens.
struct Running(Child);

impl Running {
    /// Waits until the process has stopped itself at its crash point.
    fn wait_stopped(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let stat = format!("/proc/{}/stat", self.0.id());
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                let mut out = String::new();
                if let Some(mut s) = self.0.stdout.take() {
                    let _ = std::io::Read::read_to_string(&mut s, &mut out);
                }
                panic!("the plugin exited ({status}) before its crash point: {out}");
            }
            // `pid (comm) S ...`: the state follows the last ')'.
            let text = std::fs::read_to_string(&stat).unwrap_or_default();
            let state = text
                .rsplit(')')
                .next()
                .and_then(|r| r.trim().chars().next());
            if state == Some('T') {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the plugin never reached its crash point"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL (a stopped process dies of it too) and reap.
    fn kill(mut self) {
        self.0.kill().unwrap();
        let status = self.0.wait().unwrap();
        assert!(!status.success());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts ADD of `(cid, eth0)` from inside namespace `node`, exactly as a
/// runtime does, with the crash point set to `step`.
fn start_add(node: &str, cid: &str, pod: &Path, conf: &str, step: &str) -> Running {
    let (node, cid, pod, conf, step) = (
        node.to_string(),
        cid.to_string(),
        pod.display().to_string(),
        conf.to_string(),
        step.to_string(),
    );
    let path = Path::new("/var/run/netns").join(&node);
    // The child inherits the namespace of the thread that forks it.
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut child = Command::new(plugin_bin())
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", &cid)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_NETNS", &pod)
            .env("CNI_PATH", "/opt/cni/bin")
            .env(CRASH_POINT_ENV, &step)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn plugin");
        // Closing stdin after the config is what lets the plugin start.
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(conf.as_bytes()).unwrap();
        drop(stdin);
        Running(child)
    })
    .join()
    .unwrap()
}

/// Kills ADD of `cid` at `step`; returns the addresses it had leased.
fn crash_add(node: &Ns, cid: &str, pod: &Ns, conf: &str, leases: &Path, step: &str) -> Vec<IpAddr> {
    let mut p = start_add(&node.name, cid, &pod.path(), conf, step);
    p.wait_stopped();
    p.kill();
    let store = LeaseStore::open(leases).unwrap();
    let ips = store.find(cid, "eth0").unwrap();
    assert_eq!(
        ips.len(),
        1,
        "{step}: the lease is written before any interface"
    );
    ips
}

/// Every lease file name (an address) in `dir`.
fn lease_files(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.parse::<IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// How many links of `ns` are called `name`.
fn count_links(ns: &str, name: &str) -> usize {
    links(ns).iter().filter(|l| *l == name).count()
}

/// The pod's IPv4 addresses on eth0 (`a.b.c.d/len`).
fn pod_addrs(pod: &Ns) -> Vec<String> {
    let out = ip(&["-n", &pod.name, "-4", "-o", "addr", "show", "dev", "eth0"]);
    out.split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "inet")
        .map(|w| w[1].to_string())
        .collect()
}

/// A node namespace with an address on lo that pods reach through their veth.
fn node_ns() -> Ns {
    let node = Ns::new("n");
    ip(&[
        "-n",
        &node.name,
        "addr",
        "add",
        "192.0.2.10/32",
        "dev",
        "lo",
    ]);
    node
}

fn leases_dir(dir: &Path) -> PathBuf {
    dir.join("podnet")
}

#[test]
fn add_killed_mid_setup_then_retried_converges() {
    if !privileged() {
        return;
    }
    let node = node_ns();
    let dir = tempfile::tempdir().unwrap();
    let c = conf("10.250.40.0/24", dir.path());
    let leases = leases_dir(dir.path());

    for (i, step) in ["after-lease", "after-veth"].into_iter().enumerate() {
        let pod = Ns::new("p");
        let cid = format!("crash-retry-{i}");
        let host_if = host_veth_name(&cid, "eth0");
        let leased = crash_add(&node, &cid, &pod, &c, &leases, step);
        let leftover = count_links(&node.name, &host_if);
        assert_eq!(
            leftover,
            usize::from(step == "after-veth"),
            "{step}: veth after the kill"
        );

        // The runtime retries ADD with the same arguments.
        let add = cni(&node.name, "ADD", &cid, Some(&pod.path()), &c);
        assert!(add.ok, "{step}: retried ADD: {}", add.stdout);
        let ips = result_ips(&add);
        assert_eq!(ips, leased, "{step}: the retry keeps the leased address");
        let store = LeaseStore::open(&leases).unwrap();
        assert_eq!(
            store.find(&cid, "eth0").unwrap(),
            leased,
            "{step}: one lease"
        );
        assert_eq!(
            count_links(&node.name, &host_if),
            1,
            "{step}: one host veth"
        );
        assert_eq!(pod_addrs(&pod), vec![format!("{}/32", ips[0])], "{step}");
        assert!(
            tcp_reaches(&pod.name, &node.name, "192.0.2.10".parse().unwrap()),
            "{step}: the retried interface does not carry traffic"
        );
        // The node routes the address to this pod: the node reaches it.
        let IpAddr::V4(v4) = ips[0] else {
            panic!("IPv4 pool")
        };
        assert!(
            tcp_reaches(&node.name, &pod.name, v4),
            "{step}: node to pod"
        );

        // The crashed attempt's address is not handed out again.
        let other = Ns::new("p");
        let add2 = cni(
            &node.name,
            "ADD",
            &format!("{cid}-other"),
            Some(&other.path()),
            &c,
        );
        assert!(add2.ok, "{}", add2.stdout);
        assert_ne!(
            result_ips(&add2),
            leased,
            "{step}: address handed out twice"
        );

        for (id, ns) in [(cid.clone(), &pod), (format!("{cid}-other"), &other)] {
            let del = cni(&node.name, "DEL", &id, Some(&ns.path()), &c);
            assert!(del.ok, "{}", del.stdout);
        }
        assert!(
            lease_files(&leases).is_empty(),
            "{step}: {:?}",
            lease_files(&leases)
        );
        assert!(
            wait_links_gone(&node.name, |l| l.starts_with("cse")),
            "{step}: veth left"
        );
    }
}

#[test]
fn add_killed_mid_setup_then_deleted_leaves_nothing() {
    if !privileged() {
        return;
    }
    let node = node_ns();
    let dir = tempfile::tempdir().unwrap();
    let c = conf("10.250.41.0/24", dir.path());
    let leases = leases_dir(dir.path());
    for (i, step) in ["after-lease", "after-veth"].into_iter().enumerate() {
        let mut pod = Ns::new("p");
        let cid = format!("crash-del-{i}");
        let [leased] = crash_add(&node, &cid, &pod, &c, &leases, step)[..] else {
            unreachable!()
        };
        // The runtime gives up on the sandbox: DEL, then the namespace goes.
        let del = cni(&node.name, "DEL", &cid, Some(&pod.path()), &c);
        assert!(del.ok, "{step}: {}", del.stdout);
        assert!(
            lease_files(&leases).is_empty(),
            "{step}: lease of {leased} left"
        );
        assert!(
            wait_links_gone(&node.name, |l| l == host_veth_name(&cid, "eth0")),
            "{step}: veth left"
        );
        let route = ip(&["-n", &node.name, "route", "show", &format!("{leased}/32")]);
        assert!(route.trim().is_empty(), "{step}: host route left: {route}");
        pod.delete();
        // A second DEL (the runtime retries too) is still a success.
        let del = cni(&node.name, "DEL", &cid, Some(&pod.path()), &c);
        assert!(del.ok, "{step}: {}", del.stdout);
    }
}

#[test]
fn gc_reclaims_the_lease_of_an_add_that_never_completed() {
    if !privileged() {
        return;
    }
    let node = node_ns();
    let dir = tempfile::tempdir().unwrap();
    let c = conf("10.250.42.0/24", dir.path());
    let leases = leases_dir(dir.path());

    let live_pod = Ns::new("p");
    let live = cni(&node.name, "ADD", "gc-live", Some(&live_pod.path()), &c);
    assert!(live.ok, "{}", live.stdout);
    let live_ip = result_ips(&live)[0].to_string();

    // 1. The CNI GC verb: the runtime lists the attachments it still has;
    //    two ADDs that never completed are not among them.
    let dead_pods = [Ns::new("p"), Ns::new("p")];
    for (pod, step) in dead_pods.iter().zip(["after-lease", "after-veth"]) {
        crash_add(&node, &format!("gc-dead-{step}"), pod, &c, &leases, step);
    }
    assert_eq!(lease_files(&leases).len(), 3);
    let mut gc: serde_json::Value = serde_json::from_str(&c).unwrap();
    gc["cni.dev/valid-attachments"] =
        serde_json::json!([{"containerID": "gc-live", "ifname": "eth0"}]);
    let g = cni(&node.name, "GC", "", None, &gc.to_string());
    assert!(g.ok, "{}", g.stdout);
    assert_eq!(lease_files(&leases), vec![live_ip.clone()]);
    assert_eq!(
        count_links(&node.name, &host_veth_name("gc-dead-after-veth", "eth0")),
        0
    );
    assert_eq!(
        count_links(&node.name, &host_veth_name("gc-live", "eth0")),
        1
    );
    drop(dead_pods);

    // 2. The agent's lease GC (runtimes without the GC verb): an ADD killed
    //    mid-setup whose sandbox the runtime then removed without a DEL.
    //    While the namespace (and so the veth) lives the lease is kept;
    //    once both are gone it is reclaimed. The live pod's lease stays.
    let mut pod = Ns::new("p");
    let [dead_ip] = crash_add(&node, "agent-dead", &pod, &c, &leases, "after-veth")[..] else {
        unreachable!()
    };
    let store = LeaseStore::open(&leases).unwrap();
    let node_links = |node: &Ns| links(&node.name).into_iter().collect::<HashSet<String>>();
    let freed = agent::gc_leases(&store, &node_links(&node), Duration::ZERO).unwrap();
    assert!(
        freed.is_empty(),
        "reclaimed a lease whose sandbox lives: {freed:?}"
    );
    pod.delete();
    assert!(wait_links_gone(&node.name, |l| l == host_veth_name("agent-dead", "eth0")));
    let freed = agent::gc_leases(&store, &node_links(&node), Duration::ZERO).unwrap();
    let freed: Vec<IpAddr> = freed.iter().map(|l| l.ip).collect();
    assert_eq!(freed, vec![dead_ip]);
    assert_eq!(lease_files(&leases), vec![live_ip]);

    // The reclaimed address is usable again, and the live pod still works.
    assert!(tcp_reaches(
        &live_pod.name,
        &node.name,
        "192.0.2.10".parse().unwrap()
    ));
    let del = cni(&node.name, "DEL", "gc-live", Some(&live_pod.path()), &c);
    assert!(del.ok, "{}", del.stdout);
    assert!(lease_files(&leases).is_empty());
}

//! Harness: namespaces with RAII cleanup, and the plugin run as a runtime
//! does. The namespace primitives come from `netns-testkit` (shared with
//! suite-tests' walk); this layer adds unique names and test-style panics.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use netns_testkit::Netns;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Whether privileged tests can run (root with `ip`).
pub fn privileged() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|r| r.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        eprintln!("skipping: needs root");
    }
    root
}

/// A unique short name for this test run.
pub fn unique(tag: &str) -> String {
    format!(
        "cnit{}{tag}{}",
        std::process::id() % 100_000,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `ip` and panics with its stderr on failure.
pub fn ip(args: &[&str]) -> String {
    netns_testkit::ip(args).unwrap_or_else(|e| panic!("{e}"))
}

/// A named network namespace; one created here is deleted on drop.
#[derive(Debug)]
pub struct Ns {
    /// Name under /var/run/netns.
    pub name: String,
    inner: Netns,
}

impl Ns {
    /// Creates a fresh namespace with loopback up.
    pub fn new(tag: &str) -> Ns {
        let name = unique(tag);
        let inner = Netns::create(&name).unwrap_or_else(|e| panic!("{e}"));
        Ns { name, inner }
    }

    /// Wraps a namespace someone else owns (not deleted on drop).
    pub fn borrowed(name: &str) -> Ns {
        Ns {
            name: name.to_string(),
            inner: Netns::borrowed(name),
        }
    }

    /// Its path.
    pub fn path(&self) -> PathBuf {
        self.inner.path()
    }

    /// Deletes it now.
    pub fn delete(&mut self) {
        self.inner.delete();
    }
}

/// Runs `f` on a fresh thread inside namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    netns_testkit::in_netns(ns, f).unwrap_or_else(|e| panic!("{e}"))
}

/// What one plugin run returned (`ok`, `json`, `stdout`, `code()`).
pub type Run = netns_testkit::CniRun;

/// The plugin binary.
pub fn plugin_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cloudsuite-cni")
}

/// Executes `bin` exactly as a runtime does (env vars, config on stdin),
/// from inside the node namespace `node`.
pub fn exec(bin: &str, node: &str, env: &[(&str, &str)], stdin: &str) -> Run {
    netns_testkit::exec_cni(Path::new(bin), node, env, stdin).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs our plugin for one command and attachment.
pub fn cni(node: &str, cmd: &str, cid: &str, netns: Option<&Path>, conf: &str) -> Run {
    let ns = netns.map(|p| p.display().to_string()).unwrap_or_default();
    let mut env = vec![
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", cid),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];
    if netns.is_some() {
        env.push(("CNI_NETNS", &ns));
    }
    exec(plugin_bin(), node, &env, conf)
}

/// A network configuration for `cidr` keeping leases in `dir`.
pub fn conf(cidr: &str, dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.1.0", "name": "podnet", "type": "cloudsuite-cni",
        "podCIDR": cidr, "dataDir": dir.display().to_string(),
    })
    .to_string()
}

/// The source address a listener at `to_addr` in `to` sees for a TCP
/// connection from namespace `from` (`None`: no connection).
pub fn seen_source(from: &str, to: &str, to_addr: Ipv4Addr) -> Option<IpAddr> {
    let listener = in_netns(to, move || TcpListener::bind((to_addr, 0)).unwrap());
    listener.set_nonblocking(false).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || listener.accept().ok().map(|(_, peer)| peer.ip()));
    let ok = in_netns(from, move || {
        TcpStream::connect_timeout(&SocketAddr::from((to_addr, port)), Duration::from_secs(2))
            .is_ok()
    });
    if !ok {
        // Unblock the accept.
        in_netns(to, move || {
            let _ = TcpStream::connect_timeout(
                &SocketAddr::from((to_addr, port)),
                Duration::from_secs(1),
            );
        });
        let _ = server.join();
        return None;
    }
    server.join().unwrap()
}

/// Every address of an ADD result, in order.
pub fn result_ips(run: &Run) -> Vec<IpAddr> {
    run.json["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("no ips in {}", run.stdout))
        .iter()
        .map(|i| {
            i["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

/// The IPv4 address of an ADD result.
pub fn result_ip(run: &Run) -> Ipv4Addr {
    let a = run.json["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address in {}", run.stdout));
    a.split('/').next().unwrap().parse().unwrap()
}

/// Whether TCP from namespace `from` reaches a listener at `to_addr` in `to`.
pub fn tcp_reaches(from: &str, to: &str, to_addr: Ipv4Addr) -> bool {
    tcp_reaches_ip(from, to, to_addr.into())
}

/// [`tcp_reaches`] for either family.
pub fn tcp_reaches_ip(from: &str, to: &str, to_addr: IpAddr) -> bool {
    netns_testkit::tcp_round_trip(from, to, to_addr).unwrap_or_else(|e| panic!("{e}"))
}

/// Names of links in a namespace.
pub fn links(ns: &str) -> Vec<String> {
    netns_testkit::links(ns).unwrap_or_else(|e| panic!("{e}"))
}

/// Link kinds (`veth`, `bridge`, `vxlan`, ...) in a namespace.
pub fn link_kinds(ns: &str) -> Vec<String> {
    netns_testkit::link_kinds(ns).unwrap_or_else(|e| panic!("{e}"))
}

/// Waits (up to 5 s) until no link of `ns` satisfies `pred`; DEL leaves the
/// final unregister of a downed veth to a detached helper.
pub fn wait_links_gone(ns: &str, pred: impl Fn(&str) -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if !links(ns).iter().any(|l| pred(l)) {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

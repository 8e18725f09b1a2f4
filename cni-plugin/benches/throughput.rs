//! Cross-node TCP throughput between two pods on the routed path (through
//! the emulator's VPC namespace routes, no encapsulation) against
//! (a) a plain veth between two namespaces (the ceiling) and (b) a VXLAN
//! overlay between the same two node namespaces, carrying the same pods.
//!
//! Needs root and `ip`. Measured with our own TCP sender and receiver
//! (threads entered into the namespaces with setns): each run sends
//! `--bytes` and the receiver times first byte to EOF; the median of
//! `--runs` runs is reported in Gbit/s.
//!
//! Usage: `cargo bench -p cni-plugin --bench throughput -- [--bytes 2G] [--runs 5]`

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iaas_client::model::{
    Instance, InstanceVxnet, RouterStatic, STATIC_TYPE_ROUTE, Vxnet, VxnetRouter,
};
use iaas_emulator::dataplane::NetworkDriver;
use iaas_emulator::dataplane::network::NamespaceNetworkDriver;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace removed on drop (also on panic).
struct Ns(String);

impl Ns {
    fn new(name: String) -> Ns {
        ip(&["netns", "add", &name]);
        let ns = Ns(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }
    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.0)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The emulated VPC, torn down on drop.
struct Vpc(NamespaceNetworkDriver);

impl Drop for Vpc {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

/// A temp dir removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `f` on a fresh thread inside namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = Path::new("/var/run/netns").join(ns);
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// Sends `bytes` from namespace `from` to a receiver at `to_addr` in `to`;
/// returns Gbit/s as the receiver saw it (first byte to EOF).
fn transfer(from: &str, to: &str, to_addr: IpAddr, bytes: u64) -> f64 {
    let listener = in_ns(to, move || TcpListener::bind((to_addr, 0)).expect("bind"));
    let port = listener.local_addr().expect("addr").port();
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 18];
        let mut got = 0u64;
        let mut start = None;
        loop {
            let n = s.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            start.get_or_insert_with(Instant::now);
            got += n as u64;
        }
        (got, start.map(|s| s.elapsed()).unwrap_or_default())
    });
    in_ns(from, move || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::new(to_addr, port), Duration::from_secs(5))
                .expect("connect");
        let chunk = vec![0x5au8; 1 << 18];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            s.write_all(&chunk[..n]).expect("write");
            left -= n as u64;
        }
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    });
    let (got, took) = receiver.join().expect("receiver");
    assert_eq!(got, bytes, "short transfer");
    got as f64 * 8.0 / took.as_secs_f64() / 1e9
}

/// Median Gbit/s of `runs` transfers after one untimed warm-up.
fn median(from: &str, to: &str, addr: IpAddr, bytes: u64, runs: usize) -> (f64, Vec<f64>) {
    transfer(from, to, addr, bytes.min(64 << 20));
    let mut all: Vec<f64> = (0..runs).map(|_| transfer(from, to, addr, bytes)).collect();
    let shown = all.clone();
    all.sort_by(|a, b| a.total_cmp(b));
    (all[all.len() / 2], shown)
}

/// Executes the plugin as a runtime does, from inside `node`.
fn cni(node: &str, cmd: &str, cid: &str, netns: &Path, conf: &str) -> serde_json::Value {
    let (cmd, cid, netns, conf) = (
        cmd.to_string(),
        cid.to_string(),
        netns.display().to_string(),
        conf.to_string(),
    );
    in_ns(node, move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cloudsuite-cni"))
            .env_clear()
            .env("CNI_COMMAND", &cmd)
            .env("CNI_CONTAINERID", &cid)
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/nonexistent")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn plugin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.as_bytes())
            .expect("config");
        let out = child.wait_with_output().expect("plugin");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{cmd} {cid}: {text}");
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    })
}

fn parse_bytes(s: &str) -> u64 {
    let (num, mult) = match s.chars().last() {
        Some('G' | 'g') => (&s[..s.len() - 1], 1u64 << 30),
        Some('M' | 'm') => (&s[..s.len() - 1], 1u64 << 20),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .expect("--bytes: a number with optional M/G")
        * mult
}

fn main() {
    let mut bytes = 2u64 << 30;
    let mut runs = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            // cargo bench passes this to harness-less benches.
            "--bench" => {}
            "--bytes" => bytes = parse_bytes(&args.next().expect("--bytes needs a value")),
            "--runs" => {
                runs = args
                    .next()
                    .expect("--runs needs a value")
                    .parse()
                    .expect("--runs: a number")
            }
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(runs > 0, "--runs must be at least 1");
    let tag = format!("cset{}", std::process::id() % 100_000);

    // (a) Baseline: two namespaces joined by one veth pair.
    let (x, y) = (Ns::new(format!("{tag}-x")), Ns::new(format!("{tag}-y")));
    ip(&[
        "-n", &x.0, "link", "add", "bx", "type", "veth", "peer", "name", "by", "netns", &y.0,
    ]);
    ip(&["-n", &x.0, "addr", "add", "192.0.2.1/30", "dev", "bx"]);
    ip(&["-n", &y.0, "addr", "add", "192.0.2.2/30", "dev", "by"]);
    ip(&["-n", &x.0, "link", "set", "bx", "up"]);
    ip(&["-n", &y.0, "link", "set", "by", "up"]);
    let veth = median(&x.0, &y.0, "192.0.2.2".parse().unwrap(), bytes, runs);
    drop((x, y));

    // The routed path: two emulated instances, pods on each, VPC routes.
    let vpc = Vpc(NamespaceNetworkDriver::new(&format!("{tag}-v")).expect("driver"));
    let vxnet = Vxnet {
        vxnet_id: "vxnet-tp".into(),
        vxnet_type: 1,
        router: Some(VxnetRouter {
            router_id: "rtr-tp".into(),
            ip_network: "172.31.77.0/24".into(),
            manager_ip: "172.31.77.1".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    for (id, addr) in [("i-tpa", "172.31.77.11"), ("i-tpb", "172.31.77.12")] {
        let inst = Instance {
            instance_id: id.into(),
            vxnets: vec![InstanceVxnet {
                vxnet_id: "vxnet-tp".into(),
                private_ip: addr.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        vpc.0.instance_up(&inst, &vxnet).expect("instance up");
    }
    let route = |dst: &str, hop: &str| RouterStatic {
        router_static_id: format!("rtrs-{hop}"),
        static_type: STATIC_TYPE_ROUTE,
        val1: dst.into(),
        val2: hop.into(),
        ..Default::default()
    };
    vpc.0
        .apply_router_statics(
            "rtr-tp",
            &[
                route("10.254.1.0/24", "172.31.77.11"),
                route("10.254.2.0/24", "172.31.77.12"),
            ],
        )
        .expect("routes");
    let (node_a, node_b) = (vpc.0.instance_netns("i-tpa"), vpc.0.instance_netns("i-tpb"));
    let data = TempDir(std::env::temp_dir().join(format!("{tag}-leases")));
    let conf = |cidr: &str, sub: &str| {
        serde_json::json!({"cniVersion": "1.1.0", "name": "tp", "type": "cloudsuite-cni",
            "podCIDR": cidr, "dataDir": data.0.join(sub).display().to_string()})
        .to_string()
    };
    let (conf_a, conf_b) = (conf("10.254.1.0/24", "a"), conf("10.254.2.0/24", "b"));
    let (pa, pb) = (Ns::new(format!("{tag}-pa")), Ns::new(format!("{tag}-pb")));
    cni(&node_a, "ADD", "tpa", &pa.path(), &conf_a);
    let res = cni(&node_b, "ADD", "tpb", &pb.path(), &conf_b);
    let pod_b: Ipv4Addr = res["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next()?.parse().ok())
        .expect("pod B address");
    let routed = median(&pa.0, &pb.0, pod_b.into(), bytes, runs);

    // (b) The same pods over a VXLAN overlay between the same node
    // namespaces: pod CIDR routes point into the tunnel instead of the VPC.
    for (node, local, remote, over, peer_over, cidr) in [
        (
            &node_a,
            "172.31.77.11",
            "172.31.77.12",
            "10.99.0.1/24",
            "10.99.0.2",
            "10.254.2.0/24",
        ),
        (
            &node_b,
            "172.31.77.12",
            "172.31.77.11",
            "10.99.0.2/24",
            "10.99.0.1",
            "10.254.1.0/24",
        ),
    ] {
        ip(&[
            "-n", node, "link", "add", "csevx", "type", "vxlan", "id", "42", "local", local,
            "remote", remote, "dstport", "4789", "dev", "eth0",
        ]);
        ip(&["-n", node, "addr", "add", over, "dev", "csevx"]);
        ip(&["-n", node, "link", "set", "csevx", "up"]);
        ip(&[
            "-n", node, "route", "replace", cidr, "via", peer_over, "dev", "csevx",
        ]);
    }
    let vxlan = median(&pa.0, &pb.0, pod_b.into(), bytes, runs);
    // Prove the overlay carried it: the tunnel sent at least every payload byte.
    let out = Command::new("ip")
        .args(["-n", &node_a, "-s", "-j", "link", "show", "csevx"])
        .output()
        .expect("ip -s link");
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let tx = stats[0]["stats64"]["tx"]["bytes"].as_u64().unwrap_or(0);
    assert!(tx >= bytes * runs as u64, "VXLAN sent only {tx} bytes");
    for node in [&node_a, &node_b] {
        let _ = Command::new("ip")
            .args(["-n", node, "link", "del", "csevx"])
            .status();
    }
    cni(&node_a, "DEL", "tpa", &pa.path(), &conf_a);
    cni(&node_b, "DEL", "tpb", &pb.path(), &conf_b);

    let gib = bytes as f64 / f64::from(1u32 << 30);
    println!(
        "TCP throughput, {gib:.2} GiB per run, median of {runs} (one stream, {} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!("| path | median Gbit/s | runs Gbit/s |");
    println!("|---|---|---|");
    for (label, (m, all)) in [
        ("veth between two namespaces (ceiling)", &veth),
        (
            "pod to pod across nodes, VPC-routed (cloudsuite-cni)",
            &routed,
        ),
        ("pod to pod across nodes, VXLAN overlay", &vxlan),
    ] {
        let all: Vec<String> = all.iter().map(|g| format!("{g:.2}")).collect();
        println!("| {label} | {m:.2} | {} |", all.join(", "));
    }
    println!(
        "routed / VXLAN: {:.2}x; routed / veth: {:.2}x",
        routed.0 / vxlan.0,
        routed.0 / veth.0
    );
}

//! `cni-bench`: ADD/DEL latency (p50/p99) and a 110-ADD burst for this plugin
//! and for the reference ptp + host-local plugins, executed the same way
//! (env vars + stdin, from a thread inside a fresh "node" namespace) in the
//! same run. Needs root and `ip`; the reference is Debian's
//! containernetworking-plugins in /usr/lib/cni.
//!
//! Usage: `cargo build --release -p cni-plugin && cargo run --release -p cni-plugin --bin cni-bench -- [--iterations N] [--burst N] [--plugin PATH] [--reference-dir DIR] [--uplink-gso BYTES]`
//!
//! `--uplink-gso` gives each node an uplink (a veth holding the default
//! route) with those GSO/GRO limits, so our plugin's ADD includes BIG TCP
//! (the limits copied onto the pod's veth) as on a node whose NIC has it.
//!
//! With `BENCH_REPORT_DIR` set, also writes the `cni` section of
//! docs/BENCHMARKS.md to `$BENCH_REPORT_DIR/cni.md` (scripts/bench).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace removed on drop.
struct Ns(String);

impl Ns {
    fn new(name: String) -> Ns {
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Ns(name)
    }
    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// One plugin under test.
struct Subject {
    label: &'static str,
    bin: PathBuf,
    conf: String,
    cni_path: String,
}

/// Runs the plugin from a thread inside `node`; returns the elapsed time of
/// the process (spawn to exit) and its stdout, failing loudly on a CNI error.
fn run(s: &Subject, node: &str, cmd: &str, cid: &str, netns: &str) -> (Duration, String) {
    let node_path = format!("/var/run/netns/{node}");
    let (bin, conf, cni_path) = (s.bin.clone(), s.conf.clone(), s.cni_path.clone());
    let (cmd, cid, netns) = (cmd.to_string(), cid.to_string(), netns.to_string());
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&node_path).expect("open node netns");
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter node netns");
        let start = Instant::now();
        let mut child = Command::new(&bin)
            .env_clear()
            .env("CNI_COMMAND", &cmd)
            .env("CNI_CONTAINERID", &cid)
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn plugin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.as_bytes())
            .expect("write config");
        let out = child.wait_with_output().expect("wait plugin");
        let took = start.elapsed();
        assert!(
            out.status.success(),
            "{} {cmd} {cid} failed: {}{}",
            bin.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (took, String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .join()
    .expect("plugin thread")
}

/// The addresses a CNI ADD result assigned (`ips[].address`, prefix dropped).
fn result_addresses(stdout: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(stdout).unwrap_or_default();
    v["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .filter_map(|i| i["address"].as_str())
                .map(|a| a.split('/').next().unwrap_or(a).to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Figures {
    add_min: Duration,
    add_p50: Duration,
    add_p99: Duration,
    del_min: Duration,
    del_p50: Duration,
    del_p99: Duration,
    burst: Duration,
    /// Addresses handed out twice in the burst (must be zero).
    burst_duplicates: usize,
}

/// Gives namespace `node` an uplink: a veth `up0` holding the default route,
/// with GSO/GRO limits of `size` bytes (both families).
fn add_uplink(node: &str, size: u32) {
    ip(&[
        "-n", node, "link", "add", "up0", "type", "veth", "peer", "name", "up0p",
    ]);
    ip(&["-n", node, "addr", "add", "192.0.2.1/24", "dev", "up0"]);
    ip(&["-n", node, "link", "set", "up0p", "up"]);
    ip(&["-n", node, "link", "set", "up0", "up"]);
    ip(&["-n", node, "route", "add", "default", "via", "192.0.2.254"]);
    let node_path = format!("/var/run/netns/{node}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&node_path).expect("open node netns");
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter node netns");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (conn, h, _) = rtnetlink::new_connection().expect("netlink");
            tokio::spawn(conn);
            let all = cni_plugin::net::Offload {
                gso_ipv4: size,
                gro_ipv4: size,
                gso: size,
                gro: size,
            };
            cni_plugin::net::set_offload(&h, "up0", all)
                .await
                .expect("set up0 GSO limits");
        });
    })
    .join()
    .expect("uplink thread");
}

/// Measures both subjects with their timed steps interleaved: every
/// sequential ADD + DEL pair of one is followed by the same pair of the
/// other, so load from elsewhere on the machine hits both alike (run one
/// after the other, a drift of the load between the two runs would show
/// up as a difference of the plugins). The bursts follow, one each.
fn measure_both(
    subjects: [&Subject; 2],
    iterations: usize,
    burst: usize,
    uplink_gso: Option<u32>,
) -> [Figures; 2] {
    let tags = ["o", "r"];
    let nodes = tags.map(|t| Ns::new(format!("cseb-{t}-node-{}", std::process::id())));
    if let Some(size) = uplink_gso {
        for n in &nodes {
            add_uplink(&n.0, size);
        }
    }
    let mut adds: [Vec<Duration>; 2] = Default::default();
    let mut dels: [Vec<Duration>; 2] = Default::default();
    for k in 0..2 {
        // Warm the page cache and the lease dir once, untimed.
        let p = Ns::new(format!("cseb-{}-warm-{}", tags[k], std::process::id()));
        run(subjects[k], &nodes[k].0, "ADD", "warm", &p.path());
        run(subjects[k], &nodes[k].0, "DEL", "warm", &p.path());
    }
    for i in 0..iterations {
        for k in 0..2 {
            let p = Ns::new(format!("cseb-{}-s{i}-{}", tags[k], std::process::id()));
            let cid = format!("seq{i}");
            adds[k].push(run(subjects[k], &nodes[k].0, "ADD", &cid, &p.path()).0);
            dels[k].push(run(subjects[k], &nodes[k].0, "DEL", &cid, &p.path()).0);
        }
    }
    [0, 1].map(|k| {
        let (adds, dels) = (&mut adds[k], &mut dels[k]);
        adds.sort();
        dels.sort();
        let (burst_time, burst_duplicates) = burst_of(subjects[k], &nodes[k], tags[k], burst);
        Figures {
            add_min: adds[0],
            add_p50: pct(adds, 0.5),
            add_p99: pct(adds, 0.99),
            del_min: dels[0],
            del_p50: pct(dels, 0.5),
            del_p99: pct(dels, 0.99),
            burst: burst_time,
            burst_duplicates,
        }
    })
}

/// `burst` concurrent ADDs on one node: the time until all answered, and
/// the addresses handed out twice.
fn burst_of(s: &Subject, node: &Ns, tag: &str, burst: usize) -> (Duration, usize) {
    let pods: Vec<Ns> = (0..burst)
        .map(|i| Ns::new(format!("cseb-{tag}-b{i}-{}", std::process::id())))
        .collect();
    let start = Instant::now();
    let handles: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (node, path) = (node.0.clone(), p.path());
            let subject = Subject {
                label: s.label,
                bin: s.bin.clone(),
                conf: s.conf.clone(),
                cni_path: s.cni_path.clone(),
            };
            std::thread::spawn(move || run(&subject, &node, "ADD", &format!("burst{i}"), &path))
        })
        .collect();
    let outputs: Vec<String> = handles
        .into_iter()
        .map(|h| h.join().expect("burst ADD").1)
        .collect();
    let burst_time = start.elapsed();
    let mut addrs: Vec<String> = outputs.iter().flat_map(|o| result_addresses(o)).collect();
    assert!(
        addrs.len() >= burst,
        "{}: the burst's ADD results carry {} addresses for {burst} pods",
        s.label,
        addrs.len()
    );
    let total = addrs.len();
    addrs.sort();
    addrs.dedup();
    let burst_duplicates = total - addrs.len();
    for (i, p) in pods.iter().enumerate() {
        run(s, &node.0, "DEL", &format!("burst{i}"), &p.path());
    }
    (burst_time, burst_duplicates)
}

fn main() {
    let mut iterations = 100usize;
    let mut burst = 110usize;
    let mut plugin: Option<PathBuf> = None;
    let mut reference_dir = PathBuf::from("/usr/lib/cni");
    let mut uplink_gso: Option<u32> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--iterations" => iterations = val().parse().expect("--iterations: a number"),
            "--burst" => burst = val().parse().expect("--burst: a number"),
            "--plugin" => plugin = Some(PathBuf::from(val())),
            "--reference-dir" => reference_dir = PathBuf::from(val()),
            "--uplink-gso" => {
                uplink_gso = Some(
                    val()
                        .parse()
                        .expect("--uplink-gso: a size in bytes, 65536..=524280"),
                )
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let plugin = plugin.unwrap_or_else(|| {
        std::env::current_exe()
            .expect("current exe")
            .with_file_name("cloudsuite-cni")
    });
    assert!(
        plugin.is_file(),
        "{} not found: build it first (cargo build --release -p cni-plugin)",
        plugin.display()
    );
    assert!(
        reference_dir.join("ptp").is_file() && reference_dir.join("host-local").is_file(),
        "ptp/host-local not in {}: apt-get install containernetworking-plugins",
        reference_dir.display()
    );
    let data = tempfile_dir();
    let ours = Subject {
        label: "cloudsuite-cni",
        bin: plugin,
        conf: serde_json::json!({
            "cniVersion": "1.1.0", "name": "bench-ours", "type": "cloudsuite-cni",
            "podCIDR": "10.252.0.0/23", "dataDir": data.join("ours"),
        })
        .to_string(),
        cni_path: "/nonexistent".to_string(),
    };
    let reference = Subject {
        label: "ptp + host-local",
        bin: reference_dir.join("ptp"),
        conf: serde_json::json!({
            "cniVersion": "1.0.0", "name": "bench-ref", "type": "ptp", "ipMasq": false,
            "ipam": {"type": "host-local", "subnet": "10.253.0.0/23", "dataDir": data.join("ref"),
                     "routes": [{"dst": "0.0.0.0/0"}]},
        })
        .to_string(),
        cni_path: reference_dir.display().to_string(),
    };
    println!(
        "iterations {iterations}, burst {burst}, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let [mine, theirs] = measure_both([&ours, &reference], iterations, burst, uplink_gso);
    drop(data);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut report = render(&ours, &mine, &reference, &theirs, iterations, burst, cores);
    if let Some(size) = uplink_gso {
        report.push_str(&format!(
            "\nRun with `--uplink-gso {size}`: every node had an uplink with GSO/GRO limits of {size} \
             bytes, which our ADD copied onto each pod's veth (BIG TCP).\n"
        ));
    }
    print!("{report}");
    if let Some(dir) = std::env::var_os("BENCH_REPORT_DIR") {
        let path = Path::new(&dir).join("cni.md");
        std::fs::create_dir_all(&dir).expect("create BENCH_REPORT_DIR");
        std::fs::write(&path, &report).expect("write the cni section");
        println!("wrote {}", path.display());
    }
    assert_eq!(
        mine.burst_duplicates + theirs.burst_duplicates,
        0,
        "an address was handed out twice in a burst"
    );
}

/// The `cni` section of docs/BENCHMARKS.md, computed from this run's figures.
fn render(
    ours: &Subject,
    mine: &Figures,
    reference: &Subject,
    theirs: &Figures,
    iterations: usize,
    burst: usize,
    cores: usize,
) -> String {
    use std::fmt::Write as _;
    let mut r = String::new();
    let add = ms(mine.add_p50) / ms(theirs.add_p50);
    let del = ms(mine.del_p50) / ms(theirs.del_p50);
    let bst = ms(mine.burst) / ms(theirs.burst);
    let met = |ok: bool| if ok { "met" } else { "**not met**" };
    let _ = writeln!(r, "## CNI plugin: ADD, DEL and a {burst}-pod burst\n");
    let _ = writeln!(
        r,
        "Command (root; Debian's `containernetworking-plugins` provides the reference \
         `ptp` + `host-local` in `/usr/lib/cni`):\n\n```sh\n\
         cargo build --release -p cni-plugin && target/release/cni-bench --iterations {iterations} --burst {burst}\n```\n"
    );
    let _ = writeln!(
        r,
        "What it measures: wall time of one plugin process (spawn to exit), executed the way a \
         runtime does (CNI_* environment, network configuration on stdin) from a thread inside a \
         fresh node namespace, for fresh pod namespaces: {iterations} sequential ADD + DEL pairs, then \
         {burst} ADDs started at once on the same node (time until the last one exits; every address \
         in the results must be distinct). Both plugins run in the same process, their sequential \
         pairs interleaved (each pair of ours followed by the same pair of the reference, so load \
         drift hits both alike), then one burst each, on {cores} cores.\n"
    );
    let _ = writeln!(
        r,
        "| plugin | ADD min | ADD p50 | ADD p99 | DEL min | DEL p50 | DEL p99 | {burst} concurrent ADDs | duplicate addresses |"
    );
    let _ = writeln!(r, "|---|---|---|---|---|---|---|---|---|");
    for (s, f) in [(ours, mine), (reference, theirs)] {
        let _ = writeln!(
            r,
            "| {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} ms | {} |",
            s.label,
            ms(f.add_min),
            ms(f.add_p50),
            ms(f.add_p99),
            ms(f.del_min),
            ms(f.del_p50),
            ms(f.del_p99),
            ms(f.burst),
            f.burst_duplicates
        );
    }
    let _ = writeln!(
        r,
        "| ratio (ours / reference) | | {add:.2}x | | | {del:.2}x | | {bst:.2}x | |\n"
    );
    let _ = writeln!(r, "| goal (issue 9) | this run | |\n|---|---|---|");
    let _ = writeln!(
        r,
        "| ADD p50 <= 0.4x of the reference | {add:.2}x | {} |",
        met(add <= 0.4)
    );
    let _ = writeln!(
        r,
        "| DEL p50 <= 0.25x of the reference | {del:.2}x | {} |",
        met(del <= 0.25)
    );
    let _ = writeln!(
        r,
        "| {burst} concurrent ADDs in <= 0.5x of the reference's time, no duplicate address | {bst:.2}x, {} duplicates | {} |\n",
        mine.burst_duplicates,
        met(bst <= 0.5 && mine.burst_duplicates == 0)
    );
    let all = add <= 0.4 && del <= 0.25 && bst <= 0.5 && mine.burst_duplicates == 0;
    let _ = writeln!(
        r,
        "Reading: a pod ADD costs {:.1} ms at the median against {:.1} ms for ptp + host-local \
         ({add:.2}x), a DEL {:.1} ms against {:.1} ms ({del:.2}x), and {burst} pods start in {:.0} ms \
         against {:.0} ms ({bst:.2}x); {}. The plugin does its netlink work in process (no `ip` \
         forks, no IPAM plugin exec) and DEL only downs the host veth and releases the lease, \
         leaving the kernel's slow link unregister to a detached helper.",
        ms(mine.add_p50),
        ms(theirs.add_p50),
        ms(mine.del_p50),
        ms(theirs.del_p50),
        ms(mine.burst),
        ms(theirs.burst),
        if all {
            "every goal is met"
        } else {
            "not every goal is met in this run"
        }
    );
    r
}

/// The plugins' lease directories, removed on drop (also when a run panics).
struct DataDir(PathBuf);

impl DataDir {
    fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> DataDir {
    let dir = Path::new("/tmp").join(format!("cni-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create bench data dir");
    DataDir(dir)
}

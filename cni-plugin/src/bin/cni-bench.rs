//! `cni-bench`: ADD/DEL latency (p50/p99) and a 110-ADD burst for this plugin
//! and for the reference ptp + host-local plugins, executed the same way
//! (env vars + stdin, from a thread inside a fresh "node" namespace) in the
//! same run. Needs root and `ip`; the reference is Debian's
//! containernetworking-plugins in /usr/lib/cni.
//!
//! Usage: `cargo build --release -p cni-plugin && cargo run --release -p cni-plugin --bin cni-bench -- [--iterations N] [--burst N] [--plugin PATH] [--reference-dir DIR]`

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
/// the process (spawn to exit), failing loudly on a CNI error.
fn run(s: &Subject, node: &str, cmd: &str, cid: &str, netns: &str) -> Duration {
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
        took
    })
    .join()
    .expect("plugin thread")
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Figures {
    add_p50: Duration,
    add_p99: Duration,
    del_p50: Duration,
    del_p99: Duration,
    burst: Duration,
}

fn measure(s: &Subject, tag: &str, iterations: usize, burst: usize) -> Figures {
    let node = Ns::new(format!("cseb-{tag}-node-{}", std::process::id()));
    let mut adds = Vec::new();
    let mut dels = Vec::new();
    // Warm the page cache and the lease dir once, untimed.
    {
        let p = Ns::new(format!("cseb-{tag}-warm-{}", std::process::id()));
        run(s, &node.0, "ADD", "warm", &p.path());
        run(s, &node.0, "DEL", "warm", &p.path());
    }
    for i in 0..iterations {
        let p = Ns::new(format!("cseb-{tag}-s{i}-{}", std::process::id()));
        let cid = format!("seq{i}");
        adds.push(run(s, &node.0, "ADD", &cid, &p.path()));
        dels.push(run(s, &node.0, "DEL", &cid, &p.path()));
    }
    adds.sort();
    dels.sort();
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
    for h in handles {
        h.join().expect("burst ADD");
    }
    let burst_time = start.elapsed();
    for (i, p) in pods.iter().enumerate() {
        run(s, &node.0, "DEL", &format!("burst{i}"), &p.path());
    }
    Figures {
        add_p50: pct(&adds, 0.5),
        add_p99: pct(&adds, 0.99),
        del_p50: pct(&dels, 0.5),
        del_p99: pct(&dels, 0.99),
        burst: burst_time,
    }
}

fn main() {
    let mut iterations = 100usize;
    let mut burst = 110usize;
    let mut plugin: Option<PathBuf> = None;
    let mut reference_dir = PathBuf::from("/usr/lib/cni");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--iterations" => iterations = val().parse().expect("--iterations: a number"),
            "--burst" => burst = val().parse().expect("--burst: a number"),
            "--plugin" => plugin = Some(PathBuf::from(val())),
            "--reference-dir" => reference_dir = PathBuf::from(val()),
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
    let mine = measure(&ours, "o", iterations, burst);
    let theirs = measure(&reference, "r", iterations, burst);
    let _ = std::fs::remove_dir_all(&data);
    println!(
        "| plugin | ADD p50 ms | ADD p99 ms | DEL p50 ms | DEL p99 ms | {burst} concurrent ADDs ms |"
    );
    println!("|---|---|---|---|---|---|");
    for (s, f) in [(&ours, &mine), (&reference, &theirs)] {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} |",
            s.label,
            ms(f.add_p50),
            ms(f.add_p99),
            ms(f.del_p50),
            ms(f.del_p99),
            ms(f.burst)
        );
    }
    println!(
        "ratios (ours / reference): ADD p50 {:.2}x, DEL p50 {:.2}x, burst {:.2}x",
        ms(mine.add_p50) / ms(theirs.add_p50),
        ms(mine.del_p50) / ms(theirs.del_p50),
        ms(mine.burst) / ms(theirs.burst)
    );
}

fn tempfile_dir() -> PathBuf {
    let dir = Path::new("/tmp").join(format!("cni-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create bench data dir");
    dir
}

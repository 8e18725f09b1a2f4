//! `footprint`: what the suite's binaries cost a node while idle.
//!
//! Starts every long-running binary the way its manifest does, idle (no
//! objects to reconcile): the emulator (`serve --control-plane-only`), the
//! CSI driver's controller and node services, and — with a real control
//! plane (`KUBE_APISERVER` and `ETCD` set, see docs/TESTING.md) — the CNI
//! agent, the Ingress controller and the cloud-controller-manager. After
//! `--idle` seconds it reads VmRSS, VmHWM and Threads from
//! `/proc/<pid>/status`. It also lists the binaries' sizes for the release
//! and dist profiles and times `cloudsuite-cni VERSION` (the cheapest exec
//! a runtime makes) against Debian's `ptp`.
//!
//! Usage (root not needed): `cargo build --release --workspace --bins &&
//! cargo build --profile dist --bins -p iaas-emulator -p csi-driver -p cni-plugin -p lb-controller -p cloud-provider &&
//! target/release/footprint [--idle 10] [--execs 200] [--bin-dir DIR]`.
//! With `BENCH_REPORT_DIR` set it writes the `footprint` section of
//! docs/BENCHMARKS.md there (scripts/bench).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;

/// Idle footprint of the suite's binaries.
#[derive(Debug, Parser)]
struct Args {
    /// Seconds each process idles before its memory is read.
    #[arg(long, default_value_t = 10)]
    idle: u64,
    /// VERSION execs of the CNI plugin to time.
    #[arg(long, default_value_t = 200)]
    execs: usize,
    /// Directory of the binaries to run (default: this binary's directory).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Directory of the dist-profile binaries, for the size table.
    #[arg(long)]
    dist_dir: Option<PathBuf>,
    /// The reference CNI plugin timed beside ours.
    #[arg(long, default_value = "/usr/lib/cni/ptp")]
    reference_plugin: PathBuf,
}

/// The idle-RSS goal of issue 9, MiB.
const GOAL_MIB: f64 = 15.0;

/// The binaries whose sizes are listed.
const BINARIES: [&str; 6] = [
    "iaas-emulator",
    "csi-driver",
    "cloudsuite-cni",
    "cloudsuite-cni-agent",
    "ingress-controller",
    "cloud-controller-manager",
];

/// A child process killed (and reaped) on drop, also on panic.
struct Proc {
    label: &'static str,
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Memory figures of one process.
struct Mem {
    rss_kib: u64,
    hwm_kib: u64,
    /// Resident heap and stacks (RssAnon).
    anon_kib: u64,
    /// Resident pages of the mapped binary and libraries (RssFile).
    file_kib: u64,
    threads: u64,
}

/// One row of the idle table.
enum Row {
    Measured(&'static str, Mem),
    NotMeasured(&'static str, String),
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn status_field(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn read_mem(pid: u32) -> anyhow::Result<Mem> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    Ok(Mem {
        rss_kib: status_field(&s, "VmRSS:").context("VmRSS")?,
        hwm_kib: status_field(&s, "VmHWM:").context("VmHWM")?,
        anon_kib: status_field(&s, "RssAnon:").context("RssAnon")?,
        file_kib: status_field(&s, "RssFile:").context("RssFile")?,
        threads: status_field(&s, "Threads:").context("Threads")?,
    })
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join(" / ")
        .chars()
        .take(400)
        .collect()
}

fn spawn(
    label: &'static str,
    bin: &Path,
    args: &[String],
    env: &[(&str, String)],
    dir: &Path,
) -> anyhow::Result<Proc> {
    let log = dir.join(format!("{}.log", label.replace(' ', "-")));
    let out = std::fs::File::create(&log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // The idle figure of a default deployment: nothing inherited that
        // changes the runtime or the allocator.
        .env_remove("SUITE_WORKER_THREADS")
        .env_remove("MALLOC_ARENA_MAX")
        .env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    Ok(Proc { label, child, log })
}

/// Reads each process's memory after the idle period; a process that
/// exited is reported with its log's last lines.
fn sample(procs: &mut [Proc]) -> Vec<Row> {
    procs
        .iter_mut()
        .map(|p| match p.child.try_wait() {
            Ok(None) => match read_mem(p.child.id()) {
                Ok(m) => Row::Measured(p.label, m),
                Err(e) => Row::NotMeasured(p.label, format!("{e:#}")),
            },
            Ok(Some(st)) => Row::NotMeasured(p.label, format!("exited ({st}): {}", tail(&p.log))),
            Err(e) => Row::NotMeasured(p.label, e.to_string()),
        })
        .collect()
}

fn wait_for_file(path: &Path, child: &mut Child) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.trim().is_empty()
        {
            return Ok(s.trim().to_string());
        }
        if let Some(st) = child.try_wait()? {
            bail!("exited early with {st}");
        }
        if Instant::now() > deadline {
            bail!("{} not written in 30 s", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Times `runs` executions of `plugin` with CNI_COMMAND=VERSION; sorted.
fn exec_times(plugin: &Path, runs: usize) -> anyhow::Result<Vec<Duration>> {
    let mut all = Vec::with_capacity(runs);
    for i in 0..runs + 5 {
        let t = Instant::now();
        let mut child = Command::new(plugin)
            .env_clear()
            .env("CNI_COMMAND", "VERSION")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("exec {}", plugin.display()))?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(br#"{"cniVersion":"1.0.0"}"#)?;
        let out = child.wait_with_output()?;
        let took = t.elapsed();
        if !out.status.success() {
            bail!(
                "{} VERSION failed: {}",
                plugin.display(),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        // The first few warm the page cache.
        if i >= 5 {
            all.push(took);
        }
    }
    all.sort();
    Ok(all)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let k = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[k.min(sorted.len() - 1)]
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn size_of(dir: &Path, bin: &str) -> Option<u64> {
    std::fs::metadata(dir.join(bin)).ok().map(|m| m.len())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    // This binary lives in target/release; the dist profile's next to it.
    let release_dir = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .to_path_buf();
    let bin_dir = args.bin_dir.clone().unwrap_or_else(|| release_dir.clone());
    let dist_dir = args
        .dist_dir
        .clone()
        .unwrap_or_else(|| release_dir.with_file_name("dist"));
    for b in BINARIES {
        anyhow::ensure!(
            bin_dir.join(b).is_file(),
            "{} missing: cargo build --release --workspace --bins",
            bin_dir.join(b).display()
        );
    }
    let dir = tempfile::Builder::new().prefix("footprint-").tempdir()?;
    let idle = Duration::from_secs(args.idle);

    // The emulator first: the others talk to it.
    let emu_dir = dir.path().join("emu");
    std::fs::create_dir_all(&emu_dir)?;
    let addr_file = emu_dir.join("addr");
    let mut emu = spawn(
        "iaas-emulator serve (control plane)",
        &bin_dir.join("iaas-emulator"),
        &[
            "serve".into(),
            "--data-dir".into(),
            emu_dir.display().to_string(),
            "--control-plane-only".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--addr-file".into(),
            addr_file.display().to_string(),
        ],
        &[],
        dir.path(),
    )?;
    wait_for_file(&addr_file, &mut emu.child).context("iaas-emulator")?;
    let creds = emu_dir.join("credentials.yaml");
    let cloud = iaas_client::Client::new(iaas_client::Config::from_credentials_file(&creds)?)?;
    let instances = cloud
        .describe_instances_all(&iaas_client::actions::DescribeInstances::default())
        .await
        .context("DescribeInstances")?;
    let node_id = instances
        .first()
        .map(|i| i.instance_id.clone())
        .context("the emulator seeds an instance")?;
    let routers = cloud
        .describe_routers_all(&iaas_client::actions::DescribeRouters::default())
        .await
        .context("DescribeRouters")?;
    let router = routers
        .first()
        .map(|r| r.router_id.clone())
        .context("the emulator seeds a router")?;

    let mut procs = vec![emu];
    let csi = |mode: &str, sock: &str| -> Vec<String> {
        let mut v = vec![
            "--endpoint".to_string(),
            format!("unix://{}", dir.path().join(sock).display()),
            "--mode".into(),
            mode.into(),
            "--iaas-config".into(),
            creds.display().to_string(),
        ];
        if mode == "node" {
            v.extend(["--node-id".to_string(), node_id.clone()]);
        }
        v
    };
    procs.push(spawn(
        "csi-driver (controller)",
        &bin_dir.join("csi-driver"),
        &csi("controller", "ctrl.sock"),
        &[],
        dir.path(),
    )?);
    procs.push(spawn(
        "csi-driver (node)",
        &bin_dir.join("csi-driver"),
        &csi("node", "node.sock"),
        &[],
        dir.path(),
    )?);

    let plane = suite_tests::control_plane::ControlPlane::start().await?;
    let mut unmeasured: Vec<Row> = Vec::new();
    const NEEDS_PLANE: [&str; 3] = [
        "cloudsuite-cni-agent",
        "ingress-controller",
        "cloud-controller-manager",
    ];
    if let Some(plane) = &plane {
        let kubeconfig = plane.kubeconfig_path().display().to_string();
        // The agent's Node, with a pod CIDR so it settles into its resync loop.
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(plane.client());
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "footprint-node"},
            "spec": {"podCIDR": "10.250.0.0/24", "podCIDRs": ["10.250.0.0/24"]},
        }))?;
        nodes.create(&Default::default(), &node).await?;
        let cni_dir = dir.path().join("cni");
        for d in ["net.d", "bin", "data"] {
            std::fs::create_dir_all(cni_dir.join(d))?;
        }
        let kenv = [("KUBECONFIG", kubeconfig.clone())];
        procs.push(spawn(
            "cloudsuite-cni-agent",
            &bin_dir.join("cloudsuite-cni-agent"),
            &[
                "--node-name".into(),
                "footprint-node".into(),
                "--conf-dir".into(),
                cni_dir.join("net.d").display().to_string(),
                "--bin-dir".into(),
                cni_dir.join("bin").display().to_string(),
                "--data-dir".into(),
                cni_dir.join("data").display().to_string(),
                "--metrics-addr".into(),
                format!("127.0.0.1:{}", free_port()?),
            ],
            &kenv,
            dir.path(),
        )?);
        procs.push(spawn(
            "ingress-controller",
            &bin_dir.join("ingress-controller"),
            &[
                "--credentials-file".into(),
                creds.display().to_string(),
                "--cluster-id".into(),
                "footprint".into(),
                "--leader-elect".into(),
                "false".into(),
                "--metrics-addr".into(),
                format!("127.0.0.1:{}", free_port()?),
            ],
            &kenv,
            dir.path(),
        )?);
        let cc = dir.path().join("cloud-config.yaml");
        std::fs::write(
            &cc,
            format!(
                "credentials_file: {}\ncluster_id: footprint\nrouter_id: {router}\ncluster_cidr: 10.0.0.0/8\n",
                creds.display()
            ),
        )?;
        procs.push(spawn(
            "cloud-controller-manager",
            &bin_dir.join("cloud-controller-manager"),
            &[
                "--cloud-config".into(),
                cc.display().to_string(),
                "--kubeconfig".into(),
                kubeconfig,
                "--metrics-addr".into(),
                format!("127.0.0.1:{}", free_port()?),
                "--leader-elect".into(),
                "false".into(),
            ],
            &[],
            dir.path(),
        )?);
    } else {
        for b in NEEDS_PLANE {
            unmeasured.push(Row::NotMeasured(
                b,
                "not measured: needs a kube-apiserver (set KUBE_APISERVER and ETCD)".into(),
            ));
        }
    }
    tokio::time::sleep(idle).await;
    let mut rows = sample(&mut procs);
    rows.extend(unmeasured);
    drop(procs);
    drop(plane);

    let ours_exec = exec_times(&bin_dir.join("cloudsuite-cni"), args.execs)?;
    let ref_exec = if args.reference_plugin.is_file() {
        Some(exec_times(&args.reference_plugin, args.execs)?)
    } else {
        None
    };

    let report = render(
        &args,
        &bin_dir,
        &release_dir,
        &dist_dir,
        &rows,
        &ours_exec,
        ref_exec.as_deref(),
    );
    print!("{report}");
    if let Some(out) = std::env::var_os("BENCH_REPORT_DIR") {
        std::fs::create_dir_all(&out)?;
        let path = Path::new(&out).join("footprint.md");
        std::fs::write(&path, &report)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn render(
    args: &Args,
    bin_dir: &Path,
    release_dir: &Path,
    dist_dir: &Path,
    rows: &[Row],
    ours: &[Duration],
    reference: Option<&[Duration]>,
) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "## Footprint: idle memory, binary size, plugin exec\n");
    let _ = writeln!(
        r,
        "Command: `cargo build --release --workspace --bins && cargo build --profile dist --bins \
         -p iaas-emulator -p csi-driver -p cni-plugin -p lb-controller -p cloud-provider && \
         target/release/footprint --idle {} --execs {} --bin-dir {}` (with KUBE_APISERVER and \
         ETCD set for the three Kubernetes controllers).\n",
        args.idle,
        args.execs,
        bin_dir.display()
    );
    let _ = writeln!(
        r,
        "What it measures: each long-running binary (from `{}`) started as its manifest does, with \
         nothing to reconcile (an emulator with its seed data; a fresh control plane with one \
         Node), then VmRSS (resident now), VmHWM (peak resident) and threads from \
         `/proc/<pid>/status` after {} s idle. The Go peers (cloud-provider-qingcloud, \
         qingcloud-csi, Calico/Flannel agents) cannot be built here (no Go module downloads); \
         their manifests request 40-100 MiB of memory per container, which is the comparison \
         the goal uses. Nearly all of the resident set is file-backed: the pages of the binary \
         itself that the kernel mapped (clean, shared, reclaimable page cache, which is why the \
         smaller dist binaries show less); the heap and stacks (anon) are 1-2 MiB.\n",
        bin_dir.display(),
        args.idle
    );
    let _ = writeln!(
        r,
        "| process | VmRSS MiB | of which anon / file | VmHWM MiB | threads | goal: idle RSS <= {GOAL_MIB} MiB |\n|---|---|---|---|---|---|"
    );
    let mut worst: Option<(&str, f64)> = None;
    let mut all_met = true;
    let mut measured = 0;
    for row in rows {
        match row {
            Row::Measured(label, m) => {
                let rss = mib(m.rss_kib);
                let ok = rss <= GOAL_MIB;
                all_met &= ok;
                measured += 1;
                if worst.is_none_or(|(_, w)| rss > w) {
                    worst = Some((label, rss));
                }
                let _ = writeln!(
                    r,
                    "| {label} | {rss:.1} | {:.1} / {:.1} | {:.1} | {} | {} |",
                    mib(m.anon_kib),
                    mib(m.file_kib),
                    mib(m.hwm_kib),
                    m.threads,
                    if ok { "met" } else { "**not met**" }
                );
            }
            Row::NotMeasured(label, why) => {
                let _ = writeln!(r, "| {label} | - | - | - | - | {why} |");
            }
        }
    }
    let _ = writeln!(
        r,
        "\nBinary sizes (`ls -l`; release: `strip = \"symbols\"`; dist: release + `lto = \"fat\"`, \
         `codegen-units = 1`):\n"
    );
    let _ = writeln!(r, "| binary | release MiB | dist MiB |\n|---|---|---|");
    for b in BINARIES {
        let cell = |d: &Path| {
            size_of(d, b)
                .map(|s| format!("{:.1}", s as f64 / 1048576.0))
                .unwrap_or_else(|| "-".into())
        };
        let _ = writeln!(r, "| {b} | {} | {} |", cell(release_dir), cell(dist_dir));
    }
    let _ = writeln!(
        r,
        "\nCNI plugin exec (`CNI_COMMAND=VERSION`, spawn to exit, {} execs after 5 warm-ups):\n",
        ours.len()
    );
    let _ = writeln!(
        r,
        "| plugin | p50 | p99 | min | max |\n|---|---|---|---|---|"
    );
    let line = |label: &str, d: &[Duration]| {
        format!(
            "| {label} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            pct(d, 0.5).as_secs_f64() * 1e3,
            pct(d, 0.99).as_secs_f64() * 1e3,
            d[0].as_secs_f64() * 1e3,
            d[d.len() - 1].as_secs_f64() * 1e3
        )
    };
    let _ = writeln!(r, "{}", line("cloudsuite-cni", ours));
    match reference {
        Some(d) => {
            let _ = writeln!(
                r,
                "{}",
                line("ptp (Debian containernetworking-plugins, Go)", d)
            );
        }
        None => {
            let _ = writeln!(
                r,
                "| ptp (reference) | not installed ({}) | | | |",
                args.reference_plugin.display()
            );
        }
    }
    let mut reading = String::new();
    if let Some((label, rss)) = worst {
        let _ = write!(
            reading,
            "Reading: of {measured} idle processes measured, the largest resident set is {label} \
             at {rss:.1} MiB, so the {GOAL_MIB} MiB goal is {}",
            if all_met { "met" } else { "**not met**" }
        );
        if rows.iter().any(|r| matches!(r, Row::NotMeasured(..))) {
            reading.push_str(" for the processes measured (the others are listed as not measured)");
        }
        reading.push_str("; ");
    } else {
        reading.push_str("Reading: no process could be measured; ");
    }
    let _ = write!(
        reading,
        "a VERSION exec of the plugin takes {:.2} ms at the median",
        pct(ours, 0.5).as_secs_f64() * 1e3
    );
    if let Some(d) = reference {
        let _ = write!(
            reading,
            " against {:.2} ms for Go's ptp ({:.2}x)",
            pct(d, 0.5).as_secs_f64() * 1e3,
            pct(ours, 0.5).as_secs_f64() / pct(d, 0.5).as_secs_f64()
        );
    }
    reading.push('.');
    let _ = writeln!(r, "\n{reading}");
    r
}

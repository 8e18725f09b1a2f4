//! Benchmarks of the IaaS client and emulator, with QingCloud's own Python SDK
//! measured side by side in the same run when it is installed
//! (`bench/setup-peers.sh`). Prints Markdown; with `BENCH_REPORT_DIR` set it
//! also writes the `iaas` section of docs/BENCHMARKS.md there.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use iaas_client::actions::{CreateVolumes, DescribeInstances};
use iaas_client::sign::{self, SignatureMethod, Tc3Request};
use iaas_emulator::{Emulator, EmulatorConfig};
use tokio::sync::Mutex;

/// Client and emulator benchmarks.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Args {
    /// Calls per measurement (sequential runs).
    #[arg(long, default_value_t = 2000)]
    iterations: usize,
    /// Caller counts measured, comma separated (1 = sequential).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    callers: Vec<usize>,
    /// Python interpreter that has `qingcloud-sdk` installed (the peer).
    #[arg(long, default_value = "target/peer-venv/bin/python")]
    peer_python: PathBuf,
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    p50_us: f64,
    p99_us: f64,
    rps: f64,
}

fn figures(mut lat: Vec<Duration>, wall: Duration) -> Figures {
    lat.sort();
    let pick = |p: f64| {
        let k = ((p / 100.0) * (lat.len().saturating_sub(1)) as f64).round() as usize;
        lat.get(k).map(|d| d.as_secs_f64() * 1e6).unwrap_or(0.0)
    };
    Figures {
        p50_us: pick(50.0),
        p99_us: pick(99.0),
        rps: lat.len() as f64 / wall.as_secs_f64(),
    }
}

fn sign_params() -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = [
        ("action", "DescribeVolumes"),
        ("zone", "emu1"),
        ("limit", "100"),
        ("verbose", "1"),
        ("access_key_id", "EMUBENCHKEY"),
        ("signature_version", "1"),
        ("signature_method", "HmacSHA256"),
        ("version", "1"),
        ("time_stamp", "2026-11-21T12:00:00Z"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for i in 1..=10 {
        p.push((format!("volumes.{i}"), format!("vol-{i:08}")));
    }
    p
}

fn bench_signing() -> (f64, f64) {
    let params = sign_params();
    let n = 200_000;
    let t = Instant::now();
    let mut sink = 0usize;
    for _ in 0..n {
        sink += sign::signed_query(
            "SECRETKEY",
            SignatureMethod::HmacSha256,
            "GET",
            sign::QC_URI,
            &params,
        )
        .len();
    }
    let v1 = t.elapsed().as_nanos() as f64 / n as f64;
    let payload = br#"{"Limit": 1, "Filters": [{"Values": ["x"], "Name": "instance-name"}]}"#;
    let t = Instant::now();
    for i in 0..n {
        let s = sign::tc3_sign(
            "AKIDEXAMPLE",
            "SECRET",
            &Tc3Request {
                service: "cvm",
                host: "cvm.tencentcloudapi.com",
                content_type: "application/json; charset=utf-8",
                payload,
                timestamp: 1_551_113_065 + i as i64,
            },
        );
        sink += s.signature.len();
    }
    let tc3 = t.elapsed().as_nanos() as f64 / n as f64;
    std::hint::black_box(sink);
    (v1, tc3)
}

async fn sequential<F, Fut>(n: usize, mut call: F) -> anyhow::Result<Figures>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut lat = Vec::with_capacity(n);
    let wall = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        call().await?;
        lat.push(t.elapsed());
    }
    Ok(figures(lat, wall.elapsed()))
}

async fn concurrent<F, Fut>(n: usize, workers: usize, call: F) -> anyhow::Result<Figures>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let call = Arc::new(call);
    let lat = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let wall = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (call, lat) = (call.clone(), lat.clone());
        let share = n / workers + usize::from(w < n % workers);
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::with_capacity(share);
            for _ in 0..share {
                let t = Instant::now();
                call().await?;
                mine.push(t.elapsed());
            }
            lat.lock().await.extend(mine);
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let wall = wall.elapsed();
    let lat = std::mem::take(&mut *lat.lock().await);
    Ok(figures(lat, wall))
}

fn run_peer(python: &Path, creds: &Path, n: usize) -> Option<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/peer_qingcloud_sdk.py");
    if !python.exists() {
        eprintln!(
            "peer skipped: {} not found (run bench/setup-peers.sh)",
            python.display()
        );
        return None;
    }
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(creds)
        .arg(n.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("peer failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// One measured run: an action with some callers.
#[derive(Debug, Clone, Copy)]
struct Run {
    action: &'static str,
    callers: usize,
    calls: usize,
    figs: Figures,
    /// Store transactions (fsyncs) during the run, when the emulator counts them.
    transactions: Option<u64>,
    /// Request batches committed during the run (includes job steps).
    batches: Option<u64>,
}

/// Store transactions (fsyncs) and committed batches so far.
fn commit_counters(emulator: &Emulator) -> Option<(u64, u64)> {
    let s = emulator.commit_stats();
    Some((s.transactions, s.batches))
}

async fn measure<F, Fut>(callers: usize, calls: usize, call: F) -> anyhow::Result<Figures>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    if callers <= 1 {
        sequential(calls, call).await
    } else {
        concurrent(calls, callers, call).await
    }
}

fn peer_cell(peer: Option<&serde_json::Value>, run: &Run, peer_error: &str) -> String {
    if run.callers != 1 {
        return "- (the peer script is sequential)".into();
    }
    match peer {
        Some(p) => format!(
            "{:.0} / {:.0} µs, {:.0}/s",
            p["p50_us"].as_f64().unwrap_or(0.0),
            p["p99_us"].as_f64().unwrap_or(0.0),
            p["rps"].as_f64().unwrap_or(0.0)
        ),
        None => peer_error.to_string(),
    }
}

fn store_cell(run: &Run) -> String {
    match (run.transactions, run.batches) {
        (Some(t), Some(b)) => {
            let wall = run.calls as f64 / run.figs.rps.max(f64::MIN_POSITIVE);
            let per_txn = if t == 0 { 0.0 } else { b as f64 / t as f64 };
            format!(
                "{:.0} fsyncs/s, {:.1} batches per fsync",
                t as f64 / wall,
                per_txn
            )
        }
        _ => "not counted".into(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.iterations >= 2,
        "--iterations must be at least 2 (got {})",
        args.iterations
    );
    anyhow::ensure!(
        !args.callers.is_empty() && args.callers.iter().all(|&c| c >= 1),
        "--callers must list caller counts of at least 1"
    );
    let (v1_ns, tc3_ns) = bench_signing();

    let dir = tempfile::tempdir()?;
    let mut config = EmulatorConfig::for_tests(dir.path());
    config.job_delay_ms = 0;
    let emulator = Emulator::start(config).await?;
    let mut cc = iaas_client::Config::from_credentials_file(emulator.credentials_file())?;
    cc.rate_limit.qps = 1_000_000;
    cc.rate_limit.burst = 1_000_000;
    let client = iaas_client::Client::new(cc)?;

    let mut runs = Vec::new();
    for &callers in &args.callers {
        let c = client.clone();
        let figs = measure(callers, args.iterations, move || {
            let c = c.clone();
            async move {
                c.describe_instances(&DescribeInstances {
                    limit: Some(20),
                    ..Default::default()
                })
                .await?;
                Ok(())
            }
        })
        .await?;
        runs.push(Run {
            action: "DescribeInstances",
            callers,
            calls: args.iterations,
            figs,
            transactions: None,
            batches: None,
        });
    }

    // The peer runs between our reads and our writes, against the same
    // emulator, so both sides see about the same amount of state.
    let peer_calls = (args.iterations / 2).max(1);
    let peer = run_peer(&args.peer_python, &emulator.credentials_file(), peer_calls);

    for &callers in &args.callers {
        let before = commit_counters(&emulator);
        let c = client.clone();
        let figs = measure(callers, args.iterations, move || {
            let c = c.clone();
            async move {
                c.create_volumes(&CreateVolumes {
                    size: 10,
                    volume_name: Some("bench".into()),
                    ..Default::default()
                })
                .await?;
                Ok(())
            }
        })
        .await?;
        let after = commit_counters(&emulator);
        let (transactions, batches) = match (before, after) {
            (Some(b), Some(a)) => (Some(a.0 - b.0), Some(a.1 - b.1)),
            _ => (None, None),
        };
        runs.push(Run {
            action: "CreateVolumes",
            callers,
            calls: args.iterations,
            figs,
            transactions,
            batches,
        });
    }
    emulator.shutdown().await;

    let report = render(&args, &runs, peer.as_ref(), peer_calls, v1_ns, tc3_ns);
    print!("{report}");
    if let Some(dir) = std::env::var_os("BENCH_REPORT_DIR") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("iaas.md"), &report)?;
    }
    Ok(())
}

fn render(
    args: &Args,
    runs: &[Run],
    peer: Option<&serde_json::Value>,
    peer_calls: usize,
    v1_ns: f64,
    tc3_ns: f64,
) -> String {
    use std::fmt::Write as _;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let callers: Vec<String> = args.callers.iter().map(|c| c.to_string()).collect();
    let peer_error = if args.peer_python.exists() {
        "peer failed (see stderr)".to_string()
    } else {
        "not run (bench/setup-peers.sh not run)".to_string()
    };
    let mut r = String::new();
    let _ = writeln!(r, "## IaaS client and emulator");
    let _ = writeln!(r);
    let _ = writeln!(
        r,
        "Command: `cargo build --release -p suite-tests --bin bench && target/release/bench --iterations {} --callers {}` \
         (peer: `bench/setup-peers.sh` installs QingCloud's Python SDK into target/peer-venv).",
        args.iterations,
        callers.join(",")
    );
    let _ = writeln!(r);
    let _ = writeln!(
        r,
        "What it measures: signed API calls through our client (`iaas-client`) against the emulator \
         in-process on loopback (job delay 0, acknowledged == durable: every answer waits for its \
         redb commit), {} calls per row, spread over the callers; p50 / p99 of each call's latency \
         and throughput over the wall time. CreateVolumes also starts a job whose two state \
         transitions are committed too, so the store commits about three batches per create. \
         The peer is QingCloud's own Python SDK (`qingcloud-sdk`) calling the same emulator in \
         the same run, one caller, {} calls per action. Machine: {cores} cores, {cpu}.",
        args.iterations, peer_calls
    );
    let _ = writeln!(r);
    let _ = writeln!(
        r,
        "| action | callers | ours p50 / p99 | ours throughput | store commits | peer (qingcloud-sdk, Python) p50 / p99, throughput |"
    );
    let _ = writeln!(r, "|---|---|---|---|---|---|");
    for run in runs {
        let p = peer.map(|p| {
            if run.action == "DescribeInstances" {
                &p["describe"]
            } else {
                &p["create"]
            }
        });
        let store = if run.action == "CreateVolumes" {
            store_cell(run)
        } else {
            "- (reads commit nothing)".into()
        };
        let _ = writeln!(
            r,
            "| {} | {} | {:.0} / {:.0} µs | {:.0}/s | {} | {} |",
            run.action,
            run.callers,
            run.figs.p50_us,
            run.figs.p99_us,
            run.figs.rps,
            store,
            peer_cell(p, run, &peer_error)
        );
    }
    let _ = writeln!(r);
    let _ = writeln!(
        r,
        "| signing cost per request | ours | peer (qingcloud-sdk, Python) |"
    );
    let _ = writeln!(r, "|---|---|---|");
    let peer_sign = peer
        .and_then(|p| p["sign_ns"].as_f64())
        .map(|ns| format!("{:.1} µs", ns / 1000.0))
        .unwrap_or_else(|| peer_error.clone());
    let _ = writeln!(
        r,
        "| QingCloud v1 HmacSHA256, 19 params (canonicalise + sign + encode) | {:.1} µs | {peer_sign} |",
        v1_ns / 1000.0
    );
    let _ = writeln!(
        r,
        "| Tencent TC3-HMAC-SHA256 (hash payload + 4 HMACs) | {:.1} µs | - (the Python SDK signs v1 only) |",
        tc3_ns / 1000.0
    );
    let _ = writeln!(r);

    let create = |c: usize| {
        runs.iter()
            .find(|x| x.action == "CreateVolumes" && x.callers == c)
    };
    let describe1 = runs
        .iter()
        .find(|x| x.action == "DescribeInstances" && x.callers == 1);
    let most = args.callers.iter().copied().max().unwrap_or(1);
    let _ = writeln!(
        r,
        "Goal (issue 9, group commit): CreateVolumes throughput grows with concurrent callers \
         (several acknowledged writes share one redb transaction and fsync) while every \
         acknowledged write stays durable; taken as met when 16 callers reach at least twice \
         the throughput of one caller."
    );
    let _ = writeln!(r);
    let mut reading = Vec::new();
    match (create(1), create(16)) {
        (Some(one), Some(sixteen)) => {
            let gain = sixteen.figs.rps / one.figs.rps.max(f64::MIN_POSITIVE);
            reading.push(format!(
                "CreateVolumes: {:.0}/s with 1 caller, {:.0}/s with 16 ({gain:.1}x): goal {}.",
                one.figs.rps,
                sixteen.figs.rps,
                if gain >= 2.0 { "met" } else { "NOT met" }
            ));
        }
        _ => reading.push("Goal not evaluated: runs with 1 and 16 callers are needed.".into()),
    }
    if let Some(top) = create(most).filter(|_| most > 1)
        && let (Some(t), Some(b)) = (top.transactions, top.batches)
        && t > 0
    {
        reading.push(format!(
            "With {most} callers the store committed {:.1} batches per fsync.",
            b as f64 / t as f64
        ));
    }
    if let (Some(d), Some(p)) = (describe1, peer) {
        let peer_p50 = p["describe"]["p50_us"].as_f64().unwrap_or(0.0);
        if d.figs.p50_us > 0.0 && peer_p50 > 0.0 {
            reading.push(format!(
                "A Describe round trip costs {:.0} µs at the median, {:.1}x less than the Python SDK against the same server.",
                d.figs.p50_us,
                peer_p50 / d.figs.p50_us
            ));
        }
    }
    let _ = writeln!(r, "Reading: {}", reading.join(" "));
    r
}

//! Benchmarks of the IaaS client and emulator, with QingCloud's own Python SDK
//! measured side by side in the same run when it is installed
//! (`bench/setup-peers.sh`). Prints Markdown for docs/BENCHMARKS.md.

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
    /// Concurrent callers for the throughput runs.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
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

fn row(what: &str, ours: Figures, peer: Option<&serde_json::Value>) -> String {
    let peer = peer.map(|p| {
        format!(
            "{:.0} / {:.0} µs, {:.0}/s",
            p["p50_us"].as_f64().unwrap_or(0.0),
            p["p99_us"].as_f64().unwrap_or(0.0),
            p["rps"].as_f64().unwrap_or(0.0)
        )
    });
    format!(
        "| {what} | {:.0} / {:.0} µs | {:.0}/s | {} |",
        ours.p50_us,
        ours.p99_us,
        ours.rps,
        peer.unwrap_or_else(|| "not run".into())
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (v1_ns, tc3_ns) = bench_signing();

    let dir = tempfile::tempdir()?;
    let mut config = EmulatorConfig::for_tests(dir.path());
    config.job_delay_ms = 0;
    let emulator = Emulator::start(config).await?;
    let mut cc = iaas_client::Config::from_credentials_file(emulator.credentials_file())?;
    cc.rate_limit.qps = 1_000_000;
    cc.rate_limit.burst = 1_000_000;
    let client = iaas_client::Client::new(cc)?;

    let c = client.clone();
    let describe_seq = sequential(args.iterations, || {
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
    let c = client.clone();
    let describe_par = concurrent(args.iterations * 2, args.concurrency, move || {
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
    let c = client.clone();
    let create_seq = sequential(args.iterations / 2, || {
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
    let c = client.clone();
    let create_par = concurrent(args.iterations, args.concurrency, move || {
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

    let peer = run_peer(
        &args.peer_python,
        &emulator.credentials_file(),
        args.iterations / 2,
    );
    emulator.shutdown().await;

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!("### IaaS client and emulator");
    println!();
    println!(
        "Machine: {} cores, {cpu}. Emulator in-process on loopback, job delay 0, store fsync per write.",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!();
    println!(
        "| measurement | ours p50 / p99 | ours throughput | peer (qingcloud-sdk, Python) p50 / p99, throughput |"
    );
    println!("|---|---|---|---|");
    let pd = peer.as_ref().map(|p| &p["describe"]);
    let pc = peer.as_ref().map(|p| &p["create"]);
    println!("{}", row("DescribeInstances, 1 caller", describe_seq, pd));
    println!(
        "{}",
        row(
            &format!("DescribeInstances, {} callers", args.concurrency),
            describe_par,
            None
        )
    );
    println!("{}", row("CreateVolumes, 1 caller", create_seq, pc));
    println!(
        "{}",
        row(
            &format!("CreateVolumes, {} callers", args.concurrency),
            create_par,
            None
        )
    );
    println!();
    println!("| signing cost per request | ours | peer (qingcloud-sdk, Python) |");
    println!("|---|---|---|");
    let peer_sign = peer
        .as_ref()
        .and_then(|p| p["sign_ns"].as_f64())
        .map(|ns| format!("{:.1} µs", ns / 1000.0))
        .unwrap_or_else(|| "not run".into());
    println!(
        "| QingCloud v1 HmacSHA256, 19 params (canonicalise + sign + encode) | {:.1} µs | {peer_sign} |",
        v1_ns / 1000.0
    );
    println!(
        "| Tencent TC3-HMAC-SHA256 (hash payload + 4 HMACs) | {:.1} µs | - |",
        tc3_ns / 1000.0
    );
    Ok(())
}

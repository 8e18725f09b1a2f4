//! `iaas-emulator`: serve the embedded IaaS, or reset its data dir.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use iaas_emulator::{DataPlane, Emulator, EmulatorConfig};

#[derive(Debug, Parser)]
#[command(
    name = "iaas-emulator",
    version,
    about = "A QingCloud-style IaaS on this machine"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve the API until SIGINT/SIGTERM.
    Serve {
        /// State, credentials and TLS material live here.
        #[arg(long)]
        data_dir: PathBuf,
        /// Address to bind (port 0: ephemeral).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Serve HTTPS with a self-signed certificate (<data-dir>/tls/cert.pem).
        #[arg(long)]
        tls: bool,
        /// YAML config file (field names of EmulatorConfig).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Instances seeded at first start.
        #[arg(long)]
        instances: Option<u32>,
        /// Zone name.
        #[arg(long)]
        zone: Option<String>,
        /// Enable /admin/ (faults and stats).
        #[arg(long)]
        admin: bool,
        /// Write the bound address here (atomically) once listening.
        #[arg(long)]
        addr_file: Option<PathBuf>,
        /// Serve the API only, even as root (no disks, namespaces or proxies).
        #[arg(long)]
        control_plane_only: bool,
    },
    /// Tear down the data plane and delete the state of a data dir.
    Reset {
        /// The data dir to reset.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // The suite's runtime (capped malloc arenas, small stacks; see
    // suite_runtime::runtime), but unlike the controllers the emulator is a
    // server whose API throughput matters: one worker per core unless
    // SUITE_WORKER_THREADS says otherwise.
    let rt = match suite_runtime::runtime::RuntimeOptions::from_env()
        .map(|mut o| {
            if std::env::var_os("SUITE_WORKER_THREADS").is_none() {
                o.worker_threads = std::thread::available_parallelism()
                    .map_or(o.worker_threads, std::num::NonZeroUsize::get);
            }
            o
        })
        .map_err(std::io::Error::other)
        .and_then(|o| o.build())
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("iaas-emulator: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve {
                data_dir,
                listen,
                tls,
                config,
                instances,
                zone,
                admin,
                addr_file,
                control_plane_only,
            } => {
                let opts = ServeOpts {
                    listen,
                    tls,
                    config,
                    instances,
                    zone,
                    admin,
                    addr_file,
                    control_plane_only,
                };
                serve(data_dir, opts).await
            }
            Cmd::Reset { data_dir } => reset(&data_dir),
        }
    });
    if let Err(e) = result {
        eprintln!("iaas-emulator: {e}");
        std::process::exit(1);
    }
}

/// Flags of `serve` besides the data dir.
#[derive(Debug)]
struct ServeOpts {
    listen: SocketAddr,
    tls: bool,
    config: Option<PathBuf>,
    instances: Option<u32>,
    zone: Option<String>,
    admin: bool,
    addr_file: Option<PathBuf>,
    control_plane_only: bool,
}

async fn serve(data_dir: PathBuf, opts: ServeOpts) -> Result<(), String> {
    let ServeOpts {
        listen,
        tls,
        config,
        instances,
        zone,
        admin,
        addr_file,
        control_plane_only,
    } = opts;
    let mut cfg = match &config {
        Some(path) => EmulatorConfig::from_yaml_file(path).map_err(|e| e.to_string())?,
        None => EmulatorConfig::default(),
    };
    cfg.data_dir = data_dir.clone();
    cfg.listen = listen;
    cfg.tls |= tls;
    cfg.admin_enabled |= admin;
    if let Some(n) = instances {
        cfg.instances = n;
    }
    if let Some(z) = zone {
        cfg.zone = z;
    }
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| format!("creating {}: {e}", data_dir.display()))?;
    if control_plane_only {
        println!("control plane only (--control-plane-only): no disks, namespaces or proxies");
        cfg.data_plane = DataPlane::noop();
    } else {
        cfg.validate().map_err(|e| e.to_string())?;
        let (dp, lines) = DataPlane::detect_with(&data_dir, cfg.nic_gso_max_size);
        for l in &lines {
            println!("{l}");
        }
        cfg.data_plane = dp;
        // With the VPC in namespaces, EIPs sit at the router's edge (unless
        // the config chose a pool).
        if iaas_emulator::dataplane::network::supported()
            && cfg.eip_pool == EmulatorConfig::default().eip_pool
        {
            cfg.eip_pool = iaas_emulator::dataplane::PUBLIC_EIP_POOL.to_string();
            println!("eips: {} at the VPC router's edge", cfg.eip_pool);
        }
    }
    let emu = Emulator::start(cfg).await.map_err(|e| e.to_string())?;
    if emu.first_start() {
        // The secret itself stays in the 0600 credentials file: stdout ends
        // up in container logs, which must never carry it.
        println!("access_key_id: {}", emu.access_key_id());
        println!("secret_access_key: (in the credentials file)");
    }
    println!("zone: {}", emu.zone());
    println!("endpoint: {}", emu.endpoint());
    println!("credentials: {}", emu.credentials_file().display());
    if let Some(cert) = emu.tls_cert_file() {
        println!("tls certificate: {}", cert.display());
    }
    if let Some(path) = addr_file {
        write_atomic(&path, emu.addr().to_string().as_bytes())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    wait_for_signal().await;
    emu.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "no SIGTERM handler; waiting for SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn reset(data_dir: &Path) -> Result<(), String> {
    let (dp, _) = DataPlane::detect(data_dir);
    for (kind, r) in [
        ("volumes", dp.volumes.shutdown()),
        ("network", dp.network.shutdown()),
        ("load balancers", dp.lbs.shutdown()),
    ] {
        if let Err(e) = r {
            eprintln!("iaas-emulator: tearing down {kind}: {e}");
        }
    }
    for name in ["state.redb", "credentials.yaml"] {
        let p = data_dir.join(name);
        match std::fs::remove_file(&p) {
            Ok(()) => println!("removed {}", p.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("removing {}: {e}", p.display())),
        }
    }
    let tls = data_dir.join("tls");
    if tls.exists() {
        std::fs::remove_dir_all(&tls).map_err(|e| format!("removing {}: {e}", tls.display()))?;
    }
    Ok(())
}

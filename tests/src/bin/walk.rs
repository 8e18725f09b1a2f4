//! The suite's main job: start the embedded emulator and walk every component
//! through its real interfaces, printing progress and a final summary.

use std::path::PathBuf;

use clap::Parser;
use iaas_emulator::dataplane::DataPlane;
use iaas_emulator::{Emulator, EmulatorConfig};
use suite_tests::walk::Walk;

/// Walk every component of the suite against the embedded emulator.
#[derive(Debug, Parser)]
#[command(name = "walk", version)]
struct Args {
    /// Keep the emulator's state here instead of a fresh temporary directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Instances to seed (nodes).
    #[arg(long, default_value_t = 3)]
    instances: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let temp = tempfile::tempdir()?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;

    println!("cloudsuite walk: every component against the embedded IaaS emulator");
    let (data_plane, lines) = DataPlane::detect(&dir);
    let mut config = EmulatorConfig::for_tests(&dir);
    config.data_plane = data_plane.clone();
    config.instances = args.instances;
    if iaas_emulator::dataplane::network::supported() {
        // EIPs live at the VPC router's edge, reachable from client namespaces.
        config.eip_pool = iaas_emulator::dataplane::PUBLIC_EIP_POOL.to_string();
    }
    let emulator = Emulator::start(config).await?;
    println!(
        "emulator: {} zone {} (data dir {})",
        emulator.endpoint(),
        emulator.zone(),
        dir.display()
    );
    for line in &lines {
        println!("  {line}");
    }

    let mut config = iaas_client::Config::from_credentials_file(emulator.credentials_file())?;
    // The emulator is local: no need for the conservative default of a shared cloud account.
    config.rate_limit.qps = 200;
    config.rate_limit.burst = 200;
    let client = iaas_client::Client::new(config)?;
    // Count every IaaS call any component makes: the emulator sees them all.
    let emulator = std::sync::Arc::new(emulator);
    let counter = emulator.clone();
    let mut walk = Walk::new(move || counter.stats().values().map(|s| s.calls).sum());

    suite_tests::iaas_walk::run(&mut walk, &client).await;

    if iaas_emulator::dataplane::disk::supported() {
        let node = client
            .describe_instances_all(&iaas_client::actions::DescribeInstances {
                status: vec!["running".into()],
                ..Default::default()
            })
            .await?
            .into_iter()
            .next()
            .map(|i| i.instance_id);
        match (suite_tests::cni_walk::sibling_binary("csi-driver"), node) {
            (Ok(driver), Some(node_id)) => {
                let csi = suite_tests::csi_walk::CsiWalk {
                    driver,
                    iaas_config: emulator.credentials_file(),
                    node_id,
                    scratch: temp.path().join("csi"),
                };
                csi.run(&mut walk).await;
            }
            (Err(e), _) => {
                walk.section("CSI: block disks through the driver's gRPC socket");
                walk.skip("volume lifecycle", &format!("{e:#}"));
            }
            (_, None) => {
                walk.section("CSI: block disks through the driver's gRPC socket");
                walk.skip("volume lifecycle", "no running instance to attach to");
            }
        }
    } else {
        walk.section("CSI: block disks through the driver's gRPC socket");
        walk.skip(
            "volume lifecycle",
            "needs root and losetup (disks are loop devices)",
        );
    }

    if iaas_emulator::dataplane::network::supported() {
        match suite_tests::cni_walk::plugin_path() {
            Ok(plugin) => {
                let cni = suite_tests::cni_walk::CniWalk {
                    data_dir: dir.clone(),
                    plugin,
                    scratch: temp.path().join("cni"),
                    lb_credentials: Some(emulator.credentials_file()),
                };
                cni.run(&mut walk, &client).await;
            }
            Err(e) => {
                walk.section("CNI: pods on two nodes, routed by the VPC");
                walk.skip("pods across nodes", &format!("{e:#}"));
            }
        }
    } else {
        walk.section("CNI: pods on two nodes, routed by the VPC");
        walk.skip(
            "pods across nodes",
            "needs root and iproute2 (instances are network namespaces)",
        );
    }

    walk.section("Teardown");
    walk.step(
        "the cloud is back to its seed: nothing leaked",
        suite_tests::iaas_walk::final_leak_check(&client),
    )
    .await;

    print!("{}", walk.summary());
    let stats = emulator.stats();
    let calls: u64 = stats.values().map(|s| s.calls).sum();
    println!("emulator served {calls} calls over {} actions", stats.len());
    if let Ok(emulator) = std::sync::Arc::try_unwrap(emulator) {
        emulator.shutdown().await;
    }
    // The walk's namespaces, loop devices and proxies go with it.
    for (kind, result) in [
        ("load balancers", data_plane.lbs.shutdown()),
        ("volumes", data_plane.volumes.shutdown()),
        ("network", data_plane.network.shutdown()),
    ] {
        if let Err(e) = result {
            println!("teardown of {kind} failed: {e}");
        }
    }
    if !walk.all_passed() {
        std::process::exit(1);
    }
    Ok(())
}

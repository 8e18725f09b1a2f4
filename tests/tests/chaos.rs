//! Chaos convergence (reduced for CI): the emulator injects faults (5%
//! server busy, 0-200 ms latency, throttling windows, 5% failed jobs) while
//! the lb-controller reconciler ensures, updates and deletes load balancers
//! and the CSI controller service (in process, over a unix socket) creates
//! and deletes volumes and snapshots. Both controllers "crash": reconcile
//! tasks are aborted at random points and restarted from nothing, the CSI
//! server task is aborted at random intervals and started again on the same
//! socket. At the end every object converged and nothing leaked.
//!
//! Sizes: 20 LBs and 20 volumes by default; `CHAOS_FULL=1` runs issue 8's
//! 200 Service LBs + 100 Ingress LBs + 100 volumes; `CHAOS_LBS` /
//! `CHAOS_VOLUMES` set the counts directly. The figures are printed (run
//! with `--nocapture`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use csi_driver::csi;
use csi_driver::csi::controller_client::ControllerClient;
use iaas_client::actions::*;
use iaas_emulator::faults::{ErrorFault, FaultConfig, JobFault, LatencyRange, Throttle};
use lb_controller::model::{
    BackendTarget, DesiredBackend, DesiredCert, DesiredListener, EipSource, LbNetwork, LbOwner,
    OwnerKind, Protocol,
};
use lb_controller::{DesiredLb, Reconciler};
use rand::Rng;
use suite_tests::TestCloud;
use tokio::sync::Semaphore;
use tonic::transport::Channel;

/// Counts to run.
#[derive(Debug, Clone, Copy)]
struct Scale {
    service_lbs: usize,
    ingress_lbs: usize,
    volumes: usize,
}

fn env_count(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn scale() -> Scale {
    let full = std::env::var("CHAOS_FULL").is_ok_and(|v| v == "1");
    let (s, i, v) = if full { (200, 100, 100) } else { (20, 0, 20) };
    Scale {
        service_lbs: env_count("CHAOS_LBS").unwrap_or(s),
        ingress_lbs: if env_count("CHAOS_LBS").is_some() {
            0
        } else {
            i
        },
        volumes: env_count("CHAOS_VOLUMES").unwrap_or(v),
    }
}

/// The steady faults; a throttle is layered on during throttling windows.
fn faults(throttled: bool) -> FaultConfig {
    FaultConfig {
        latency_ms: Some(LatencyRange { min: 0, max: 200 }),
        errors: vec![ErrorFault {
            action: "*".into(),
            code: iaas_client::codes::SERVER_BUSY,
            rate: 0.05,
            remaining: None,
            message: None,
        }],
        throttle: throttled.then_some(Throttle {
            max_calls: 40,
            window_ms: 1000,
        }),
        job_failures: vec![JobFault {
            action: "*".into(),
            rate: 0.05,
            remaining: None,
        }],
        ..Default::default()
    }
}

/// Figures of one run.
#[derive(Debug, Default)]
struct Figures {
    aborts: AtomicU64,
    errors: AtomicU64,
    attempts: AtomicU64,
    csi_restarts: AtomicU64,
    throttle_windows: AtomicU64,
}

/// A controller that may crash: runs `op` as a task, aborting it at a random
/// point with probability 0.3 per attempt and starting it again from
/// scratch; errors are retried (as a requeue would). Returns once an
/// attempt completed successfully.
async fn until_done<F, Fut, T>(figures: &Figures, what: &str, op: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{what}: no convergence in 10 minutes"
        );
        figures.attempts.fetch_add(1, Ordering::Relaxed);
        let (crash, after) = {
            let mut rng = rand::rng();
            (rng.random_bool(0.3), rng.random_range(0..800u64))
        };
        let task = tokio::spawn(op());
        if crash {
            tokio::time::sleep(Duration::from_millis(after)).await;
            if !task.is_finished() {
                task.abort();
                let _ = task.await;
                figures.aborts.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        }
        match task.await {
            Ok(Ok(v)) => return v,
            Ok(Err(_)) => {
                figures.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what}: task panicked: {e}"),
        }
    }
}

fn client_config(c: &mut iaas_client::Config) {
    c.retry.initial_delay = Duration::from_millis(20);
    c.retry.max_delay = Duration::from_millis(500);
    c.retry.max_elapsed = Duration::from_secs(20);
    c.rate_limit.qps = 1000;
    c.rate_limit.burst = 1000;
    c.jobs.initial_poll = Duration::from_millis(20);
    c.jobs.max_poll = Duration::from_millis(200);
}

fn cert() -> DesiredCert {
    let c = rcgen::generate_simple_self_signed(vec!["chaos.test".to_string()]).unwrap();
    DesiredCert {
        name: "chaos-tls".into(),
        pem_chain: c.cert.pem(),
        pem_key: c.signing_key.serialize_pem(),
    }
}

/// The desired LB of owner `i`; `version` 1 adds a listener (an update).
fn desired(i: usize, kind: OwnerKind, version: u8, backend: &str, cert: &DesiredCert) -> DesiredLb {
    let backends = vec![DesiredBackend {
        target: BackendTarget::Instance(backend.to_string()),
        port: 30000 + (i % 1000) as u16,
        weight: 1,
    }];
    let mut listeners = vec![DesiredListener::l4(80, Protocol::Tcp, backends.clone())];
    if version >= 1 {
        listeners.push(DesiredListener::l4(53, Protocol::Udp, backends.clone()));
    }
    if i.is_multiple_of(4) {
        let mut https = DesiredListener::l4(443, Protocol::Https, backends);
        https.backend_protocol = Some(Protocol::Http);
        https.certificates = vec![cert.clone()];
        listeners.push(https);
    }
    DesiredLb {
        owner: owner(i, kind),
        network: LbNetwork::Public {
            eip: EipSource::Allocate { bandwidth: 5 },
        },
        reuse_existing: None,
        loadbalancer_type: 0,
        source_ranges: vec![],
        listeners,
    }
}

fn owner(i: usize, kind: OwnerKind) -> LbOwner {
    LbOwner {
        cluster_id: "chaos".into(),
        kind,
        namespace: "default".into(),
        name: format!("obj-{i}"),
        uid: format!("uid-{i:04}"),
    }
}

async fn uds_channel(path: PathBuf) -> Channel {
    // Lazy: every (re)connection dials the socket again, so a restarted
    // server is found like a CO's sidecar finds a restarted driver.
    tonic::transport::Endpoint::try_from("http://localhost")
        .expect("static uri")
        .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
}

/// Starts the CSI controller service on `sock` as a task (a fresh service,
/// no state carried over from a previous incarnation).
fn start_csi(client: &iaas_client::Client, zone: &str, sock: &Path) -> tokio::task::JoinHandle<()> {
    let _ = std::fs::remove_file(sock);
    let mut cfg = csi_driver::controller::ControllerConfig::new(zone);
    cfg.job_timeout = Duration::from_secs(30);
    let services = csi_driver::server::Services {
        identity: csi_driver::identity::IdentityService::new(Some(client.clone())),
        controller: Some(csi_driver::controller::ControllerService::new(
            client.clone(),
            cfg,
        )),
        node: None,
    };
    let sock = sock.to_path_buf();
    tokio::spawn(async move {
        let _ = csi_driver::server::serve(services, &sock, std::future::pending()).await;
    })
}

fn mount_cap() -> csi::VolumeCapability {
    use csi::volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode};
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

/// A CO call, retried (as the sidecars do) until the driver answers OK.
async fn co_call<T, F, Fut>(figures: &Figures, what: &str, f: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{what}: no convergence in 10 minutes"
        );
        figures.attempts.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(Duration::from_secs(60), f()).await {
            Ok(Ok(r)) => return r.into_inner(),
            Ok(Err(s)) => {
                assert!(
                    !matches!(
                        s.code(),
                        tonic::Code::InvalidArgument | tonic::Code::AlreadyExists
                    ),
                    "{what}: {s}"
                );
                figures.errors.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                figures.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn volume_cycle(figures: Arc<Figures>, channel: Channel, i: usize) {
    let c = ControllerClient::new(channel);
    let vol = co_call(&figures, "CreateVolume", || {
        let mut c = c.clone();
        async move {
            c.create_volume(csi::CreateVolumeRequest {
                name: format!("pvc-chaos-{i}"),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: 10 << 30,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![mount_cap()],
                parameters: HashMap::new(),
                ..Default::default()
            })
            .await
        }
    })
    .await
    .volume
    .expect("volume");
    let snap = co_call(&figures, "CreateSnapshot", || {
        let mut c = c.clone();
        let source = vol.volume_id.clone();
        async move {
            c.create_snapshot(csi::CreateSnapshotRequest {
                source_volume_id: source,
                name: format!("snap-chaos-{i}"),
                ..Default::default()
            })
            .await
        }
    })
    .await
    .snapshot
    .expect("snapshot");
    co_call(&figures, "DeleteSnapshot", || {
        let mut c = c.clone();
        let id = snap.snapshot_id.clone();
        async move {
            c.delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: id,
                ..Default::default()
            })
            .await
        }
    })
    .await;
    co_call(&figures, "DeleteVolume", || {
        let mut c = c.clone();
        let id = vol.volume_id.clone();
        async move {
            c.delete_volume(csi::DeleteVolumeRequest {
                volume_id: id,
                ..Default::default()
            })
            .await
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_converges_without_leaks() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let scale = scale();
    let cloud = TestCloud::start_with(|c| {
        c.faults = faults(false);
        c.attach_limit = 1000;
    })
    .await
    .unwrap();
    let client = cloud.client_with(client_config).unwrap();
    let backend = client
        .describe_instances(&DescribeInstances::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .next()
        .expect("an instance")
        .instance_id;
    let tags_before = client
        .describe_tags_all(&DescribeTags::default())
        .await
        .unwrap()
        .len();
    let figures = Arc::new(Figures::default());
    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));

    // The CSI controller, crashed at random intervals.
    let scratch = tempfile::tempdir().unwrap();
    let sock = scratch.path().join("csi.sock");
    let zone = cloud.emulator.zone().to_string();
    let crasher = {
        let (client, sock, done, figures) =
            (client.clone(), sock.clone(), done.clone(), figures.clone());
        tokio::spawn(async move {
            let mut server = start_csi(&client, &zone, &sock);
            while !done.load(Ordering::Relaxed) {
                let wait = rand::rng().random_range(300..2000u64);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                server.abort();
                let _ = server.await;
                figures.csi_restarts.fetch_add(1, Ordering::Relaxed);
                server = start_csi(&client, &zone, &sock);
            }
            server.abort();
        })
    };

    // LB cycles: ensure, update, delete; 8 owners in flight.
    let cert = cert();
    let limit = Arc::new(Semaphore::new(8));
    let mut lb_tasks = Vec::new();
    let owners: Vec<(usize, OwnerKind)> = (0..scale.service_lbs)
        .map(|i| (i, OwnerKind::Service))
        .chain((0..scale.ingress_lbs).map(|i| (scale.service_lbs + i, OwnerKind::Ingress)))
        .collect();
    for (i, kind) in owners {
        let (client, figures, limit, backend, cert) = (
            client.clone(),
            figures.clone(),
            limit.clone(),
            backend.clone(),
            cert.clone(),
        );
        lb_tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            for version in [0u8, 1] {
                let want = desired(i, kind, version, &backend, &cert);
                until_done(&figures, "ensure", || {
                    // A restarted controller starts from nothing but the cloud.
                    let (r, want) = (Reconciler::new(client.clone(), "chaos"), want.clone());
                    async move { Ok(r.ensure(&want).await?) }
                })
                .await;
            }
            until_done(&figures, "delete", || {
                let r = Reconciler::new(client.clone(), "chaos");
                async move { Ok(r.delete(&owner(i, kind)).await?) }
            })
            .await;
        }));
    }

    // Volume cycles through the CSI socket; 8 in flight.
    let channel = uds_channel(sock.clone()).await;
    let vlimit = Arc::new(Semaphore::new(8));
    let mut vol_tasks = Vec::new();
    for i in 0..scale.volumes {
        let (figures, channel, vlimit) = (figures.clone(), channel.clone(), vlimit.clone());
        vol_tasks.push(tokio::spawn(async move {
            let _permit = vlimit.acquire().await.unwrap();
            volume_cycle(figures, channel, i).await;
        }));
    }
    // Throttling windows (2 s of a tight quota every 8 s) until all converged.
    let work = async {
        for t in lb_tasks.into_iter().chain(vol_tasks) {
            t.await.unwrap();
        }
    };
    let throttle = async {
        loop {
            tokio::time::sleep(Duration::from_secs(6)).await;
            cloud.emulator.set_faults(faults(true)).unwrap();
            figures.throttle_windows.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(2)).await;
            cloud.emulator.set_faults(faults(false)).unwrap();
        }
    };
    tokio::select! {
        () = work => {}
        () = throttle => {}
    }
    let converged_in = started.elapsed();
    done.store(true, Ordering::Relaxed);
    crasher.await.unwrap();
    cloud.emulator.clear_faults();

    // Nothing leaked. (Cloud deletes are asynchronous transitions: read the
    // final statuses.)
    let live = |s: &str| !matches!(s, "deleted" | "ceased" | "released");
    let check = iaas_client::Client::new({
        let mut c =
            iaas_client::Config::from_credentials_file(cloud.emulator.credentials_file()).unwrap();
        client_config(&mut c);
        c
    })
    .unwrap();
    let lbs: Vec<_> = check
        .describe_load_balancers_all(&DescribeLoadBalancers::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|l| live(&l.status))
        .map(|l| l.loadbalancer_id)
        .collect();
    let listeners = check
        .describe_load_balancer_listeners_all(&DescribeLoadBalancerListeners::default())
        .await
        .unwrap()
        .len();
    let eips: Vec<_> = check
        .describe_eips_all(&DescribeEips::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| live(&e.status))
        .map(|e| e.eip_id)
        .collect();
    let sgs: Vec<_> = check
        .describe_security_groups_all(&DescribeSecurityGroups::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|g| g.is_default == 0)
        .map(|g| g.security_group_id)
        .collect();
    let volumes: Vec<_> = check
        .describe_volumes_all(&DescribeVolumes::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|v| live(&v.status))
        .map(|v| v.volume_id)
        .collect();
    let snapshots: Vec<_> = check
        .describe_snapshots_all(&DescribeSnapshots::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|s| live(&s.status))
        .map(|s| s.snapshot_id)
        .collect();
    let certs = check
        .describe_server_certificates_all(&DescribeServerCertificates::default())
        .await
        .unwrap()
        .len();
    let tags = check
        .describe_tags_all(&DescribeTags::default())
        .await
        .unwrap()
        .len();

    let stats = cloud.emulator.stats();
    let calls: u64 = stats.values().map(|s| s.calls).sum();
    println!(
        "chaos: {} service LBs + {} ingress LBs (ensure, update, delete), {} volumes (+ snapshot, delete) converged in {:.1} s",
        scale.service_lbs,
        scale.ingress_lbs,
        scale.volumes,
        converged_in.as_secs_f64()
    );
    println!(
        "chaos: {} controller attempts, {} aborted mid-flight, {} failed and retried, {} CSI server restarts, {} throttling windows, {} API calls",
        figures.attempts.load(Ordering::Relaxed),
        figures.aborts.load(Ordering::Relaxed),
        figures.errors.load(Ordering::Relaxed),
        figures.csi_restarts.load(Ordering::Relaxed),
        figures.throttle_windows.load(Ordering::Relaxed),
        calls
    );
    println!(
        "chaos: leaked: {} LBs, {listeners} listeners, {} EIPs, {} security groups, {} volumes, {} snapshots, {certs} certificates, {} tags",
        lbs.len(),
        eips.len(),
        sgs.len(),
        volumes.len(),
        snapshots.len(),
        tags.saturating_sub(tags_before)
    );
    // Not vacuous: every kind of resource was really created.
    for action in [
        "CreateLoadBalancer",
        "AllocateEips",
        "CreateSecurityGroup",
        "CreateServerCertificate",
        "CreateVolumes",
        "CreateSnapshots",
    ] {
        let made = stats.get(action).map_or(0, |s| s.calls);
        assert!(made > 0, "{action} was never called");
    }
    assert!(lbs.is_empty(), "load balancers leaked: {lbs:?}");
    assert_eq!(listeners, 0, "listeners leaked");
    assert!(eips.is_empty(), "EIPs leaked: {eips:?}");
    assert!(sgs.is_empty(), "security groups leaked: {sgs:?}");
    assert!(volumes.is_empty(), "volumes leaked: {volumes:?}");
    assert!(snapshots.is_empty(), "snapshots leaked: {snapshots:?}");
    assert_eq!(certs, 0, "server certificates leaked");
    assert!(tags <= tags_before, "tags leaked: {tags} > {tags_before}");
}

//! Security properties, each shown against the real binaries or the real
//! transport: credentials never logged at trace level, TLS verification on
//! by default toward the IaaS endpoint, CSI paths validated over the socket,
//! CNI inputs sanitised by the plugin binary. (The emulator's admin endpoint
//! being off by default is `client_emulator::admin_endpoint_is_off_unless_enabled`.)

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use csi_driver::csi;
use csi_driver::csi::controller_client::ControllerClient;
use csi_driver::csi::node_client::NodeClient;
use iaas_client::actions::*;
use suite_tests::TestCloud;
use suite_tests::raw::{RawRequest, Target};
use tonic::transport::Channel;

/// A workspace binary beside the test executable, built on demand when the
/// test runs for this package alone.
fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = profile.join(bin);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", package, "--bin", bin]);
        if profile.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().expect("cargo build").success(),
            "building {bin}"
        );
    }
    path
}

/// A child process killed (and reaped) on drop, even when the test fails.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `bin` with `RUST_LOG=trace`, stdout and stderr into `log`.
fn spawn_traced(bin: &Path, args: &[&str], log: &Path) -> Proc {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    Proc(
        Command::new(bin)
            .args(args)
            .env("RUST_LOG", "trace")
            .env_remove("QY_SECRET_ACCESS_KEY")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display())),
    )
}

/// The emulator binary (control plane only) on an ephemeral loopback port,
/// logging at trace; returns it and its address.
fn traced_emulator(dir: &Path) -> (Proc, String) {
    let addr_file = dir.join("addr");
    let log = dir.join("emulator.log");
    let bin = workspace_binary("iaas-emulator", "iaas-emulator");
    let args = [
        "serve",
        "--data-dir",
        dir.to_str().expect("utf-8 dir"),
        "--control-plane-only",
        "--listen",
        "127.0.0.1:0",
        "--addr-file",
        addr_file.to_str().expect("utf-8 dir"),
    ];
    let mut p = spawn_traced(&bin, &args, &log);
    for _ in 0..1500 {
        if let Ok(a) = std::fs::read_to_string(&addr_file)
            && !a.trim().is_empty()
        {
            return (p, a.trim().to_string());
        }
        if let Some(status) = p.0.try_wait().expect("wait") {
            panic!(
                "emulator exited with {status}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("emulator did not report its address");
}

/// A gRPC channel over a unix socket, once the socket exists.
async fn uds_channel(path: &Path) -> Channel {
    for _ in 0..1000 {
        if path.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(path.exists(), "socket {} never appeared", path.display());
    let path = path.to_path_buf();
    tonic::transport::Endpoint::try_from("http://localhost")
        .expect("static uri")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .expect("connect")
}

fn mount_cap() -> csi::VolumeCapability {
    use csi::volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode};
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: "ext4".into(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

/// Every base64 token of HMAC-SHA256 length (43 characters then `=`, raw
/// or percent-encoded) in `text`: what a logged signature looks like.
fn hmac_like_tokens(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let is_b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'+' || c == b'/';
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !is_b64(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && is_b64(b[i]) {
            i += 1;
        }
        let tail = &text[i..];
        if i - start == 43 && (tail.starts_with('=') || tail.starts_with("%3D")) {
            out.push(text[start..i].to_string());
        }
    }
    out
}

/// Asserts `log` (named `what`) carries neither the secret, nor any of the
/// known signatures, nor anything shaped like one.
fn assert_clean(what: &str, log: &str, secret: &str, signatures: &[String]) {
    assert!(!log.is_empty(), "{what}: empty log, was tracing on?");
    assert!(!log.contains(secret), "{what}: secret key logged");
    for s in signatures {
        assert!(!log.contains(s.as_str()), "{what}: signature {s} logged");
    }
    let tokens = hmac_like_tokens(log);
    assert!(
        tokens.is_empty(),
        "{what}: signature-shaped values logged: {tokens:?}"
    );
}

/// A `tracing` writer into a shared buffer (the in-process CCM-style calls).
#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
    type Writer = Buf;
    fn make_writer(&'a self) -> Buf {
        self.clone()
    }
}

#[test]
fn credentials_never_logged_at_trace_by_emulator_csi_driver_and_ccm_calls() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, addr) = traced_emulator(dir.path());
    let creds_file = dir.path().join("credentials.yaml");
    let creds: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&creds_file).unwrap()).unwrap();
    let secret = creds["qy_secret_access_key"].as_str().unwrap().to_string();
    let target = Target {
        endpoint: format!("http://{addr}"),
        access_key_id: creds["qy_access_key_id"].as_str().unwrap().to_string(),
        secret: secret.clone(),
        zone: creds["zone"].as_str().unwrap().to_string(),
    };

    let csi_sock = dir.path().join("csi.sock");
    let csi_log = dir.path().join("csi.log");
    let csi_bin = workspace_binary("csi-driver", "csi-driver");
    let csi = spawn_traced(
        &csi_bin,
        &[
            "--mode",
            "controller",
            "--endpoint",
            &format!("unix://{}", csi_sock.display()),
            "--iaas-config",
            creds_file.to_str().unwrap(),
        ],
        &csi_log,
    );

    // In-process CCM-style calls (the lb-controller reconciler and the
    // client) under a trace-level subscriber capturing everything.
    let buf = Buf::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(buf.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut signatures = Vec::new();
    rt.block_on(async {
        // Raw requests whose signatures are known, one of them refused for a
        // bad signature (the emulator must not log what it expected either).
        for action in ["DescribeVolumes", "DescribeLoadBalancers"] {
            let r = RawRequest::new(&target, action, &[]);
            let encoded = r.encode(&target);
            let sig = encoded.rsplit("signature=").next().unwrap().to_string();
            signatures.push(percent_decode(&sig));
            let (status, body) = r.send(&target).await.unwrap();
            assert_eq!(status, 200, "{body}");
        }
        let mut bad = RawRequest::new(&target, "DescribeVolumes", &[]);
        bad.secret = Some("wrong-secret".into());
        bad.send(&target).await.unwrap();

        let mut config = iaas_client::Config::from_credentials_file(&creds_file).unwrap();
        config.endpoint = format!("http://{addr}");
        let client = iaas_client::Client::new(config).unwrap();
        let reconciler = lb_controller::Reconciler::new(client.clone(), "sec");
        let owner = lb_controller::model::LbOwner {
            cluster_id: "sec".into(),
            kind: lb_controller::model::OwnerKind::Service,
            namespace: "default".into(),
            name: "web".into(),
            uid: "1111-2222".into(),
        };
        let desired = lb_controller::DesiredLb {
            owner: owner.clone(),
            network: lb_controller::model::LbNetwork::Public {
                eip: lb_controller::model::EipSource::Allocate { bandwidth: 5 },
            },
            reuse_existing: None,
            loadbalancer_type: 0,
            source_ranges: vec![],
            listeners: vec![lb_controller::model::DesiredListener::l4(
                80,
                lb_controller::model::Protocol::Tcp,
                vec![],
            )],
        };
        reconciler.ensure(&desired).await.unwrap();
        reconciler.delete(&owner).await.unwrap();

        // The CSI driver binary provisions and deletes a volume.
        let mut ctl = ControllerClient::new(uds_channel(&csi_sock).await);
        let vol = ctl
            .create_volume(csi::CreateVolumeRequest {
                name: "pvc-sec".into(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: 10 << 30,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![mount_cap()],
                parameters: HashMap::new(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        ctl.delete_volume(csi::DeleteVolumeRequest {
            volume_id: vol.volume_id,
            ..Default::default()
        })
        .await
        .unwrap();
    });
    drop(_guard);
    drop(csi);
    drop(emu);

    let ccm_log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let emu_log = std::fs::read_to_string(dir.path().join("emulator.log")).unwrap();
    let csi_log = std::fs::read_to_string(&csi_log).unwrap();
    // The logs saw the calls: the emulator logs every API call (it has no
    // finer events), the driver and the client log at debug/trace too.
    assert!(
        emu_log.contains("DescribeLoadBalancers"),
        "emulator log:\n{emu_log}"
    );
    for (what, log) in [("csi-driver", &csi_log), ("ccm", &ccm_log)] {
        assert!(
            log.contains("TRACE") || log.contains("DEBUG"),
            "{what}: no debug/trace lines, tracing was not at trace level:\n{log}"
        );
    }
    for (what, log) in [
        ("emulator", &emu_log),
        ("csi-driver", &csi_log),
        ("ccm", &ccm_log),
    ] {
        assert_clean(what, log, &secret, &signatures);
    }
}

/// Undoes the percent-encoding a base64 signature gets in a query.
fn percent_decode(s: &str) -> String {
    s.replace("%2B", "+")
        .replace("%2F", "/")
        .replace("%3D", "=")
}

#[tokio::test]
async fn tls_verification_is_on_by_default_toward_the_emulator() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cloud = TestCloud::start_with(|c| c.tls = true).await.unwrap();
    assert!(cloud.emulator.endpoint().starts_with("https://"));
    let ca = cloud.emulator.tls_cert_file().expect("tls cert");

    // No CA configured: the self-signed certificate is refused, not retried.
    let untrusted = cloud
        .client_with(|c| {
            c.retry.max_elapsed = Duration::from_secs(2);
            c.tls.ca_file = None;
            c.tls.insecure_skip_verify = false;
        })
        .unwrap();
    let e = untrusted
        .describe_volumes(&DescribeVolumes::default())
        .await
        .unwrap_err();
    assert!(e.is_tls_failure(), "{e}");
    assert!(e.to_string().contains("certificate"), "{e}");

    // With the emulator's certificate as `tls.ca_file` the same call works.
    let trusted = cloud.client_with(|c| c.tls.ca_file = Some(ca)).unwrap();
    trusted
        .describe_volumes(&DescribeVolumes::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_paths_are_validated_over_the_socket() {
    let cloud = TestCloud::start().await.unwrap();
    let client = cloud.client().unwrap();
    let node = client
        .describe_instances(&DescribeInstances::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .next()
        .expect("an instance")
        .instance_id;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("csi.sock");
    let bin = workspace_binary("csi-driver", "csi-driver");
    let _driver = spawn_traced(
        &bin,
        &[
            "--mode",
            "all",
            "--endpoint",
            &format!("unix://{}", sock.display()),
            "--iaas-config",
            cloud.emulator.credentials_file().to_str().unwrap(),
            "--node-id",
            &node,
        ],
        &dir.path().join("csi.log"),
    );
    let mut nodes = NodeClient::new(uds_channel(&sock).await);
    let staging_ok = dir.path().join("staging").display().to_string();
    let bad = ["relative/path", "/var/lib/../../etc", "/tmp/a\0b", ""];
    for p in bad {
        let e = nodes
            .node_stage_volume(csi::NodeStageVolumeRequest {
                volume_id: "vol-abc".into(),
                staging_target_path: p.into(),
                volume_capability: Some(mount_cap()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{p:?}: {e}");
        assert!(e.message().contains("staging_target_path"), "{p:?}: {e}");

        let e = nodes
            .node_publish_volume(csi::NodePublishVolumeRequest {
                volume_id: "vol-abc".into(),
                staging_target_path: staging_ok.clone(),
                target_path: p.into(),
                volume_capability: Some(mount_cap()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{p:?}: {e}");
        assert!(e.message().contains("target_path"), "{p:?}: {e}");

        let e = nodes
            .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: "vol-abc".into(),
                target_path: p.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{p:?}: {e}");
        assert!(e.message().contains("target_path"), "{p:?}: {e}");
    }
    // Nothing was created outside the scratch dir by the refused calls.
    assert!(!Path::new("/tmp/a").exists() || Path::new("/tmp/a").is_dir());
}

/// Runs the plugin binary with `env` and a valid configuration; returns the
/// exit success, stdout, and whether anything appeared under the data dir.
fn run_cni(env: &[(&str, &str)]) -> (bool, serde_json::Value, bool) {
    let bin = workspace_binary("cni-plugin", "cloudsuite-cni");
    let data = tempfile::tempdir().unwrap();
    let conf = serde_json::json!({
        "cniVersion": "1.1.0", "name": "sec", "type": "cloudsuite-cni",
        "podCIDR": "10.99.0.0/24", "dataDir": data.path(),
    });
    let mut child = Command::new(bin)
        .env_clear()
        .envs(env.iter().copied())
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    let touched = std::fs::read_dir(data.path()).unwrap().next().is_some();
    (out.status.success(), json, touched)
}

#[test]
fn cni_inputs_are_sanitised_by_the_plugin_binary() {
    let good_ns = "/var/run/netns/cni-sec-test";
    let cases: &[(&str, &str, &str, &str)] = &[
        // (variable under test, container id, ifname, netns)
        ("CNI_CONTAINERID", "../../etc/passwd", "eth0", good_ns),
        ("CNI_CONTAINERID", "abc/def", "eth0", good_ns),
        ("CNI_CONTAINERID", ".hidden", "eth0", good_ns),
        ("CNI_IFNAME", "abc123", "../eth0", good_ns),
        ("CNI_IFNAME", "abc123", "eth0/x", good_ns),
        ("CNI_IFNAME", "abc123", "a-name-longer-than-15", good_ns),
        ("CNI_IFNAME", "abc123", ".", good_ns),
        ("CNI_NETNS", "abc123", "eth0", "relative/netns"),
        (
            "CNI_NETNS",
            "abc123",
            "eth0",
            "/var/run/netns/../../../etc/passwd",
        ),
    ];
    for (var, id, ifname, netns) in cases {
        for command in ["ADD", "DEL", "CHECK"] {
            let (ok, out, touched) = run_cni(&[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", id),
                ("CNI_IFNAME", ifname),
                ("CNI_NETNS", netns),
            ]);
            let case = format!("{command} {var} ({id:?}, {ifname:?}, {netns:?})");
            assert!(!ok, "{case}: accepted: {out}");
            assert_eq!(out["code"], 4, "{case}: {out}");
            assert!(
                out["msg"].as_str().unwrap_or_default().contains(var),
                "{case}: {out}"
            );
            assert!(!touched, "{case}: the data dir was written");
        }
    }
}

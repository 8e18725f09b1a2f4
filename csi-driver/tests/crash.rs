//! Crash safety of the node plugin: the `csi-driver` binary in node mode,
//! serving on a real unix socket over a real loop device, is SIGKILLed in
//! the middle of NodeStageVolume / NodePublishVolume, restarted, and the
//! call is retried with the same arguments. It must converge, and it must
//! never format a device that already holds a filesystem.
//!
//! Kill points: the test-only [`csi_driver::node::crash_point`] steps (the
//! driver stops itself there; the test sees the stopped state), and "while
//! mkfs runs" (the test watches for the driver's `mkfs.ext4` child). The
//! driver runs in its own process group and the whole group is killed, as
//! a container runtime kills every process of a dying container: mkfs dies
//! with the driver, never outlives it.
//!
//! Everything lives under one temporary directory; a guard unmounts what
//! is mounted there, kills the driver and releases the loop devices, also
//! when a test fails.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use csi_driver::csi;
use csi_driver::csi::node_client::NodeClient;
use csi_driver::node::CRASH_POINT_ENV;
use tonic::transport::Channel;

const VOLUME: &str = "vol-crash0001";
/// Small enough for a quick mkfs, large enough for an ext4 journal.
const IMAGE_BYTES: u64 = 64 << 20;

fn privileged() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    let tools = ["losetup", "mkfs.ext4", "blkid", "mount", "sha256sum"]
        .iter()
        .all(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    if !(root && tools) {
        eprintln!("SKIP: the node crash tests need root, losetup, mkfs.ext4, blkid and mount");
    }
    root && tools
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The driver process, in its own process group.
struct Driver {
    child: Child,
}

impl Driver {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL to the whole group (the driver and any mkfs/mount child),
    /// then reap the driver and wait until no process of the group is left
    /// (a child is re-parented to init and reaped there), so the next step
    /// sees a quiet device. Returns whether the group is gone.
    fn stop_group(&mut self) -> bool {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while group_alive(self.pid()) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// [`Driver::stop_group`], failing the test if the group survives.
    fn kill_group(&mut self) {
        assert!(
            self.stop_group(),
            "process group {} survives SIGKILL",
            self.pid()
        );
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // No assertion here: this also runs while a failed test unwinds.
        let _ = self.stop_group();
    }
}

/// Whether any process of group `pgid` still exists (zombies aside).
fn group_alive(pgid: i32) -> bool {
    processes().iter().any(|p| p.pgid == pgid && p.state != 'Z')
}

/// One line of /proc/<pid>/stat, the fields used here.
#[derive(Debug)]
struct Proc {
    pgid: i32,
    state: char,
}

fn processes() -> Vec<Proc> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<i32>().is_err() {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces and ')'.
        let Some(close) = text.rfind(')') else {
            continue;
        };
        let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
        if rest.len() < 3 {
            continue;
        }
        out.push(Proc {
            state: rest[0].chars().next().unwrap_or('?'),
            pgid: rest[2].parse().unwrap_or(0),
        });
    }
    out
}

/// Whether a child of `pid` runs a program whose name starts with `prefix`
/// (`/proc/<pid>/task/*/children`: cheap enough to poll every millisecond).
fn children_named(pid: i32, prefix: &str) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("children"))
            .unwrap_or_default()
            .split_whitespace()
            .any(|child| {
                std::fs::read_to_string(format!("/proc/{child}/comm"))
                    .is_ok_and(|c| c.starts_with(prefix))
            })
    })
}

fn state_of(pid: i32) -> Option<char> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    text.rsplit(')').next()?.trim().chars().next()
}

/// One loop-backed "disk", a staging path, a publish target and a socket,
/// all under one temporary directory; cleaned up on drop.
struct Node {
    root: PathBuf,
    device: PathBuf,
    staging: PathBuf,
    target: PathBuf,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::Builder::new()
            .prefix("csi-crash-")
            .tempdir()
            .unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let image = root.join("disk.img");
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(IMAGE_BYTES).unwrap();
        drop(f);
        let device = PathBuf::from(run(
            "losetup",
            &["--find", "--show", image.to_str().unwrap()],
        ));
        Node {
            staging: root.join("staging"),
            target: root.join("pods/target"),
            socket: root.join("csi.sock"),
            device,
            root,
            _dir: dir,
        }
    }

    /// Starts the node plugin; `crash_at` sets its crash point.
    async fn start(&self, crash_at: Option<&str>) -> (Driver, NodeClient<Channel>) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_csi-driver"));
        cmd.args([
            "--mode=node",
            &format!("--endpoint=unix://{}", self.socket.display()),
            "--node-id=i-crashtest",
            "--zone=zone-test",
            "--device-timeout-secs=5",
            // Nothing of the host's: the device comes from the publish context.
            &format!("--by-id-dir={}", self.root.join("by-id").display()),
        ])
        .env("RUST_LOG", "warn")
        .env_remove(CRASH_POINT_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own group: the test kills the driver with its children.
        .process_group(0);
        if let Some(step) = crash_at {
            cmd.env(CRASH_POINT_ENV, step);
        }
        let _ = std::fs::remove_file(&self.socket);
        let driver = Driver {
            child: cmd.spawn().expect("spawn csi-driver"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket.exists() {
            assert!(
                Instant::now() < deadline,
                "the driver never opened its socket"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let path = self.socket.clone();
        let channel = tonic::transport::Endpoint::try_from("http://localhost")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: tonic::codegen::http::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .expect("connect to the driver");
        (driver, NodeClient::new(channel))
    }

    fn stage_req(&self) -> csi::NodeStageVolumeRequest {
        csi::NodeStageVolumeRequest {
            volume_id: VOLUME.into(),
            publish_context: HashMap::from([(
                csi_driver::node::PUBLISH_DEVICE_KEY.to_string(),
                self.device.display().to_string(),
            )]),
            staging_target_path: self.staging.display().to_string(),
            volume_capability: Some(ext4_cap()),
            ..Default::default()
        }
    }

    fn publish_req(&self) -> csi::NodePublishVolumeRequest {
        csi::NodePublishVolumeRequest {
            volume_id: VOLUME.into(),
            staging_target_path: self.staging.display().to_string(),
            target_path: self.target.display().to_string(),
            volume_capability: Some(ext4_cap()),
            ..Default::default()
        }
    }

    fn unstage_req(&self) -> csi::NodeUnstageVolumeRequest {
        csi::NodeUnstageVolumeRequest {
            volume_id: VOLUME.into(),
            staging_target_path: self.staging.display().to_string(),
        }
    }

    fn unpublish_req(&self) -> csi::NodeUnpublishVolumeRequest {
        csi::NodeUnpublishVolumeRequest {
            volume_id: VOLUME.into(),
            target_path: self.target.display().to_string(),
        }
    }

    /// The filesystem UUID on the device (`None`: no filesystem).
    fn fs_uuid(&self) -> Option<String> {
        let out = Command::new("blkid")
            .args(["-p", "-o", "value", "-s", "UUID"])
            .arg(&self.device)
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !s.is_empty()).then_some(s)
    }

    /// The device mounted at `path`, as `major:minor` (`None`: not a mount point).
    fn mounted_at(&self, path: &Path) -> Option<(u32, u32)> {
        csi_driver::mount::find_by_target(path)
            .unwrap()
            .map(|m| (m.major, m.minor))
    }

    fn device_number(&self) -> (u32, u32) {
        csi_driver::device::device_number(&self.device).unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Deepest first, so the publish bind goes before the staging mount.
        let mut mounts: Vec<PathBuf> = csi_driver::mount::mounts()
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(&self.root))
            .collect();
        mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for m in mounts {
            let ok = Command::new("umount")
                .arg(&m)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&m).status();
            }
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

fn ext4_cap() -> csi::VolumeCapability {
    use csi::volume_capability::*;
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: "ext4".into(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode {
            mode: access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

/// Waits until the driver has stopped itself at its crash point.
async fn wait_stopped(driver: &mut Driver) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = driver.child.try_wait().unwrap() {
            panic!("the driver exited ({status}) before its crash point");
        }
        if state_of(driver.pid()) == Some('T') {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the driver never reached its crash point"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Starts the driver with `step` armed, sends `call`, waits for the stop,
/// kills the group, and checks the call did not succeed.
async fn crash_during<F, Fut, T>(node: &Node, step: &str, call: F)
where
    F: FnOnce(NodeClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>> + Send + 'static,
    T: Send + 'static,
{
    let (mut driver, client) = node.start(Some(step)).await;
    let pending = tokio::spawn(call(client));
    wait_stopped(&mut driver).await;
    driver.kill_group();
    let answer = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the call hangs after the kill")
        .unwrap();
    assert!(
        answer.is_err(),
        "{step}: the call succeeded although the driver was killed"
    );
}

fn sha256(path: &Path) -> String {
    run("sha256sum", &[path.to_str().unwrap()])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Stages with a driver that is killed right after mkfs (before mounting)
/// and right after mounting (before answering); each retry converges on
/// the filesystem the first attempt made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_killed_after_mkfs_or_mount_then_retried_converges() {
    if !privileged() {
        return;
    }
    let node = Node::new();
    assert_eq!(node.fs_uuid(), None, "a fresh device is empty");

    let req = node.stage_req();
    crash_during(&node, "stage-after-format", move |mut c| async move {
        c.node_stage_volume(req).await
    })
    .await;
    let uuid = node.fs_uuid().expect("mkfs ran before the crash point");
    assert_eq!(
        node.mounted_at(&node.staging),
        None,
        "killed before mounting"
    );

    // The CO retries the same call against the restarted plugin.
    let (driver, mut client) = node.start(None).await;
    client.node_stage_volume(node.stage_req()).await.unwrap();
    assert_eq!(node.mounted_at(&node.staging), Some(node.device_number()));
    assert_eq!(
        node.fs_uuid().as_ref(),
        Some(&uuid),
        "the retry reformatted the device"
    );
    // And again: idempotent.
    client.node_stage_volume(node.stage_req()).await.unwrap();
    client
        .node_unstage_volume(node.unstage_req())
        .await
        .unwrap();
    assert_eq!(node.mounted_at(&node.staging), None);
    drop(driver);

    // Killed after the mount, before the answer: the retry finds the mount.
    let req = node.stage_req();
    crash_during(&node, "stage-after-mount", move |mut c| async move {
        c.node_stage_volume(req).await
    })
    .await;
    assert_eq!(node.mounted_at(&node.staging), Some(node.device_number()));
    let (_driver, mut client) = node.start(None).await;
    client.node_stage_volume(node.stage_req()).await.unwrap();
    assert_eq!(node.mounted_at(&node.staging), Some(node.device_number()));
    assert_eq!(node.fs_uuid().as_ref(), Some(&uuid));
    // One mount, not two stacked ones.
    let stacked = csi_driver::mount::mounts()
        .unwrap()
        .into_iter()
        .filter(|m| m.mount_point == node.staging)
        .count();
    assert_eq!(stacked, 1);
    client
        .node_unstage_volume(node.unstage_req())
        .await
        .unwrap();
}

/// Kills the driver (with its mkfs child) while mkfs runs, at several
/// moments; the retried stage always converges on a clean filesystem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_killed_while_mkfs_runs_then_retried_converges() {
    if !privileged() {
        return;
    }
    // How many kills left no filesystem behind (mkfs cut short).
    let mut interrupted = 0;
    for delay_ms in [0u64, 2, 5, 10, 20] {
        let node = Node::new();
        let (mut driver, mut client) = node.start(None).await;
        let req = node.stage_req();
        let pending = tokio::spawn(async move { client.node_stage_volume(req).await });
        // Wait for the driver's mkfs child, let it run `delay_ms`, kill all.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut caught = false;
        while Instant::now() < deadline && !pending.is_finished() {
            if children_named(driver.pid(), "mkfs") {
                caught = true;
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        driver.kill_group();
        let _ = pending.await;
        let after_kill = node.fs_uuid();
        eprintln!("delay {delay_ms} ms: filesystem after the kill: {after_kill:?}");
        interrupted += usize::from(caught && after_kill.is_none());
        if !caught {
            // mkfs finished between two looks: still a valid run (killed
            // after mkfs); say so, the retry must converge all the same.
            eprintln!("delay {delay_ms} ms: mkfs was not caught running");
        }
        let (_driver, mut client) = node.start(None).await;
        client
            .node_stage_volume(node.stage_req())
            .await
            .unwrap_or_else(|e| panic!("delay {delay_ms} ms: retried stage: {e}"));
        assert_eq!(node.mounted_at(&node.staging), Some(node.device_number()));
        // The filesystem works and checks clean.
        std::fs::write(node.staging.join("probe"), b"ok").unwrap();
        client
            .node_unstage_volume(node.unstage_req())
            .await
            .unwrap();
        let fsck = Command::new("e2fsck")
            .args(["-f", "-n"])
            .arg(&node.device)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "delay {delay_ms} ms: e2fsck: {}",
            String::from_utf8_lossy(&fsck.stdout)
        );
    }
    assert!(interrupted > 0, "no kill landed while mkfs was writing");
}

/// The data test: a file written through a first, successful stage and
/// publish survives kills in the middle of a later re-stage and re-publish
/// (the pod moved, or the node restarted), byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_kills_during_restage_and_republish() {
    if !privileged() {
        return;
    }
    let node = Node::new();
    let (driver, mut client) = node.start(None).await;
    client.node_stage_volume(node.stage_req()).await.unwrap();
    client
        .node_publish_volume(node.publish_req())
        .await
        .unwrap();
    let uuid = node.fs_uuid().unwrap();
    // Data from the "pod": not compressible, so a reformat cannot keep it.
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = node.target.join("data.bin");
    std::fs::write(&file, &data).unwrap();
    run("sync", &[]);
    let sum = sha256(&file);
    client
        .node_unpublish_volume(node.unpublish_req())
        .await
        .unwrap();
    client
        .node_unstage_volume(node.unstage_req())
        .await
        .unwrap();
    drop(driver);

    // Re-stage, killed at each step of the stage; then re-publish, killed
    // before the bind. Each time the retry must converge, same filesystem.
    for step in ["stage-after-format", "stage-after-mount"] {
        let req = node.stage_req();
        crash_during(&node, step, move |mut c| async move {
            c.node_stage_volume(req).await
        })
        .await;
        assert_eq!(node.fs_uuid().as_ref(), Some(&uuid), "{step}: reformatted");
    }
    let (driver, mut client) = node.start(None).await;
    client.node_stage_volume(node.stage_req()).await.unwrap();
    drop(driver);
    let req = node.publish_req();
    crash_during(&node, "publish-before-bind", move |mut c| async move {
        c.node_publish_volume(req).await
    })
    .await;
    assert_eq!(
        node.mounted_at(&node.target),
        None,
        "killed before the bind"
    );

    let (_driver, mut client) = node.start(None).await;
    client.node_stage_volume(node.stage_req()).await.unwrap();
    client
        .node_publish_volume(node.publish_req())
        .await
        .unwrap();
    assert_eq!(node.mounted_at(&node.target), Some(node.device_number()));
    assert_eq!(node.fs_uuid().as_ref(), Some(&uuid), "reformatted");
    assert_eq!(sha256(&file), sum, "the pod's data changed");
    assert_eq!(std::fs::read(&file).unwrap(), data);

    client
        .node_unpublish_volume(node.unpublish_req())
        .await
        .unwrap();
    client
        .node_unstage_volume(node.unstage_req())
        .await
        .unwrap();
    assert_eq!(node.mounted_at(&node.staging), None);
}

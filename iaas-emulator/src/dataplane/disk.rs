//! The disk data plane: volumes are sparse files bound to loop devices.
//!
//! Layout under the emulator's data dir:
//! - `volumes/<volume id>.img`: one sparse file per volume, `size GB * 2^30` bytes;
//! - `snapshots/<snapshot id>.img`: a sparse copy of a volume.
//!
//! Attaching binds the file to a free loop device (`losetup --find --show`)
//! and publishes `<by-id dir>/virtio-<volume id>` pointing at it, the way a
//! virtio disk with the volume id as its serial shows up on a cloud VM. The
//! device path reported to the control plane is the loop device itself,
//! which is what a cloud reports in `DescribeVolumes` (`instance.device`).
//!
//! Every operation is idempotent: the job engine replays unfinished jobs
//! after a crash, so "already done" is success. Copies go to a temporary file
//! renamed into place, so a crash mid-copy never leaves a half-written
//! snapshot or volume that a replay would take as finished.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Attachment, DataPlaneError, DpResult, VolumeDriver};

/// Bytes in one GB of volume size (the API's GB is a binary gigabyte).
pub const GIB: u64 = 1 << 30;

/// Where a cloud VM's disks appear by serial.
pub const DEFAULT_BY_ID_DIR: &str = "/dev/disk/by-id";

/// Counter making temporary file names unique within this process.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Volumes as sparse files on loop devices (requires root and `losetup`).
#[derive(Debug)]
pub struct LoopVolumeDriver {
    /// `<data dir>/volumes`, canonical.
    dir: PathBuf,
    /// `<data dir>/snapshots`, canonical.
    snapshot_dir: PathBuf,
    /// Where `virtio-<volume id>` links are published.
    by_id_dir: PathBuf,
}

/// Serialises loop-device allocation and release in this process:
/// `losetup --find` picks a free device and binds it in two steps, so two
/// concurrent callers (even of different drivers) can race for one device.
static LOSETUP_LOCK: Mutex<()> = Mutex::new(());

/// Whether this process can run the loop driver: effective uid 0 and a
/// `losetup` on PATH.
pub fn supported() -> bool {
    effective_uid_is_root() && find_on_path("losetup")
}

fn effective_uid_is_root() -> bool {
    // /proc/self/status "Uid:" carries real, effective, saved, fs uids.
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

fn find_on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
}

impl LoopVolumeDriver {
    /// A driver keeping its files under `data_dir` and publishing links in
    /// `/dev/disk/by-id`. Creates the directories.
    pub fn new(data_dir: &Path) -> DpResult<Self> {
        Self::with_by_id_dir(data_dir, Path::new(DEFAULT_BY_ID_DIR))
    }

    /// Like [`LoopVolumeDriver::new`] with another directory for the
    /// `virtio-<id>` links (tests use a temporary one).
    pub fn with_by_id_dir(data_dir: &Path, by_id_dir: &Path) -> DpResult<Self> {
        let dir = ensure_dir(&data_dir.join("volumes"))?;
        let snapshot_dir = ensure_dir(&data_dir.join("snapshots"))?;
        let by_id_dir = ensure_dir(by_id_dir)?;
        Ok(LoopVolumeDriver {
            dir,
            snapshot_dir,
            by_id_dir,
        })
    }

    /// The backing file of a volume.
    pub fn volume_path(&self, volume_id: &str) -> PathBuf {
        self.dir.join(format!("{volume_id}.img"))
    }

    /// The backing file of a snapshot.
    pub fn snapshot_path(&self, snapshot_id: &str) -> PathBuf {
        self.snapshot_dir.join(format!("{snapshot_id}.img"))
    }

    /// The published link of a volume: `<by-id dir>/virtio-<volume id>`.
    pub fn by_id_link(&self, volume_id: &str) -> PathBuf {
        self.by_id_dir.join(format!("virtio-{volume_id}"))
    }

    /// The loop devices currently bound to a volume's file (normally zero
    /// or one), including ones released lazily but still busy.
    pub fn devices_of(&self, volume_id: &str) -> DpResult<Vec<LoopDevice>> {
        check_id("volume id", volume_id)?;
        let file = self.volume_path(volume_id);
        Ok(loop_devices()?
            .into_iter()
            .filter(|d| d.backing_file == file)
            .collect())
    }

    fn lock(&self) -> std::sync::MutexGuard<'static, ()> {
        // A panic while holding the lock leaves no broken invariant behind
        // (the kernel holds the state), so a poisoned lock is still usable.
        LOSETUP_LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds the volume's file to a loop device, reusing a live one.
    fn bind(&self, volume_id: &str) -> DpResult<String> {
        let file = self.volume_path(volume_id);
        if !file.exists() {
            return Err(DataPlaneError(format!(
                "volume {volume_id} has no backing file"
            )));
        }
        if let Some(dev) = self
            .devices_of(volume_id)?
            .into_iter()
            .find(|d| !d.autoclear)
        {
            return Ok(dev.path());
        }
        // Another process (or a test) may grab the device losetup picked
        // between its lookup and its bind; that shows as "busy": pick again.
        let mut attempt = 0;
        let out = loop {
            match run("losetup", &["--find", "--show", path_str(&file)?]) {
                Ok(out) => break out,
                Err(e) if attempt < 5 && e.0.contains("busy") => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20 * attempt));
                }
                Err(e) => return Err(e),
            }
        };
        let dev = out.trim().to_string();
        if !dev.starts_with("/dev/loop") {
            return Err(DataPlaneError(format!(
                "losetup printed an unexpected device {dev:?}"
            )));
        }
        Ok(dev)
    }

    /// Points `virtio-<id>` at `device`, replacing any older link atomically.
    fn publish_link(&self, volume_id: &str, device: &str) -> DpResult<()> {
        let link = self.by_id_link(volume_id);
        if fs::read_link(&link).is_ok_and(|t| t == Path::new(device)) {
            return Ok(());
        }
        let tmp = self.by_id_dir.join(format!(
            ".virtio-{volume_id}.{}.{}.tmp",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::os::unix::fs::symlink(device, &tmp)
            .map_err(|e| DataPlaneError::new(&format!("link {}", tmp.display()), e))?;
        fs::rename(&tmp, &link).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            DataPlaneError::new(&format!("publish {}", link.display()), e)
        })
    }

    fn remove_link(&self, volume_id: &str) -> DpResult<()> {
        remove_if_exists(&self.by_id_link(volume_id))
    }

    /// Releases every loop device bound to the volume's file and its link.
    fn unbind(&self, volume_id: &str) -> DpResult<()> {
        self.remove_link(volume_id)?;
        for dev in self.devices_of(volume_id)? {
            if dev.autoclear {
                // Already released; the kernel frees it when its last user closes it.
                continue;
            }
            // A busy device (still mounted somewhere) is only marked for
            // release by the kernel; it goes away when unmounted, exactly
            // like a force-detached disk whose guest still holds it.
            match run("losetup", &["-d", &dev.path()]) {
                Ok(_) => {}
                // Released by someone else meanwhile.
                Err(_) if !dev.still_bound() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Flushes a volume's live devices so a copy of the file sees every
    /// write the devices accepted.
    fn flush_devices(&self, volume_id: &str) -> DpResult<()> {
        for dev in self.devices_of(volume_id)? {
            let path = dev.path();
            let f = fs::File::open(&path)
                .map_err(|e| DataPlaneError::new(&format!("open {path}"), e))?;
            f.sync_all()
                .map_err(|e| DataPlaneError::new(&format!("flush {path}"), e))?;
        }
        Ok(())
    }

    /// Copies `src` to `dst` sparse-aware and grows it to `size_gb`, unless
    /// `dst` already exists (a replay).
    fn copy_into_place(&self, src: &Path, dst: &Path, size_gb: Option<u64>) -> DpResult<()> {
        if dst.exists() {
            if let Some(gb) = size_gb {
                grow(dst, gb)?;
            }
            return Ok(());
        }
        if !src.exists() {
            return Err(DataPlaneError(format!(
                "source {} does not exist",
                src.display()
            )));
        }
        let tmp = tmp_path(dst);
        let result = (|| {
            // cp finds data extents (SEEK_DATA/SEEK_HOLE, or a reflink) and
            // writes holes for zero runs, so copies stay as sparse as the source.
            run(
                "cp",
                &[
                    "--sparse=always",
                    "--reflink=auto",
                    path_str(src)?,
                    path_str(&tmp)?,
                ],
            )?;
            if let Some(gb) = size_gb {
                grow(&tmp, gb)?;
            }
            let f = fs::File::open(&tmp).map_err(|e| DataPlaneError::new("open copy", e))?;
            f.sync_all()
                .map_err(|e| DataPlaneError::new("sync copy", e))?;
            fs::rename(&tmp, dst)
                .map_err(|e| DataPlaneError::new(&format!("rename into {}", dst.display()), e))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Volume ids that have a backing file here.
    fn known_volumes(&self) -> DpResult<Vec<String>> {
        let mut ids = Vec::new();
        let entries =
            fs::read_dir(&self.dir).map_err(|e| DataPlaneError::new("list volumes", e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".img"))
                && check_id("volume id", id).is_ok()
            {
                ids.push(id.to_string());
            }
        }
        Ok(ids)
    }
}

impl VolumeDriver for LoopVolumeDriver {
    fn create(&self, volume_id: &str, size_gb: u64) -> DpResult<()> {
        check_id("volume id", volume_id)?;
        check_size(size_gb)?;
        let path = self.volume_path(volume_id);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => f
                .set_len(size_gb * GIB)
                .map_err(|e| DataPlaneError::new(&format!("size {}", path.display()), e)),
            // A replay: the file exists; make sure it has at least the size.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => grow(&path, size_gb),
            Err(e) => Err(DataPlaneError::new(
                &format!("create {}", path.display()),
                e,
            )),
        }
    }

    fn create_from_snapshot(
        &self,
        snapshot_id: &str,
        volume_id: &str,
        size_gb: u64,
    ) -> DpResult<()> {
        check_id("snapshot id", snapshot_id)?;
        check_id("volume id", volume_id)?;
        check_size(size_gb)?;
        self.copy_into_place(
            &self.snapshot_path(snapshot_id),
            &self.volume_path(volume_id),
            Some(size_gb),
        )
    }

    fn clone_volume(&self, source_volume_id: &str, volume_id: &str, size_gb: u64) -> DpResult<()> {
        check_id("source volume id", source_volume_id)?;
        check_id("volume id", volume_id)?;
        check_size(size_gb)?;
        self.flush_devices(source_volume_id)?;
        self.copy_into_place(
            &self.volume_path(source_volume_id),
            &self.volume_path(volume_id),
            Some(size_gb),
        )
    }

    fn delete(&self, volume_id: &str) -> DpResult<()> {
        check_id("volume id", volume_id)?;
        let _guard = self.lock();
        if self.devices_of(volume_id)?.iter().any(|d| !d.autoclear) {
            // Deleting the file under a live device would leave a disk
            // nobody can find; the control plane detaches first.
            return Err(DataPlaneError(format!(
                "volume {volume_id} is still attached"
            )));
        }
        self.remove_link(volume_id)?;
        remove_if_exists(&self.volume_path(volume_id))
    }

    fn attach(&self, volume_id: &str, instance_id: &str) -> DpResult<String> {
        check_id("volume id", volume_id)?;
        check_id("instance id", instance_id)?;
        let _guard = self.lock();
        let dev = self.bind(volume_id)?;
        self.publish_link(volume_id, &dev)?;
        Ok(dev)
    }

    fn detach(&self, volume_id: &str, instance_id: &str) -> DpResult<()> {
        check_id("volume id", volume_id)?;
        check_id("instance id", instance_id)?;
        let _guard = self.lock();
        self.unbind(volume_id)
    }

    fn resize(&self, volume_id: &str, size_gb: u64) -> DpResult<()> {
        check_id("volume id", volume_id)?;
        check_size(size_gb)?;
        let path = self.volume_path(volume_id);
        if !path.exists() {
            return Err(DataPlaneError(format!(
                "volume {volume_id} has no backing file"
            )));
        }
        let _guard = self.lock();
        grow(&path, size_gb)?;
        for dev in self.devices_of(volume_id)? {
            // Tell the loop driver the file grew; the device's capacity (and
            // a change uevent) follow.
            run("losetup", &["-c", &dev.path()])?;
        }
        Ok(())
    }

    fn snapshot(&self, volume_id: &str, snapshot_id: &str) -> DpResult<()> {
        check_id("volume id", volume_id)?;
        check_id("snapshot id", snapshot_id)?;
        self.flush_devices(volume_id)?;
        self.copy_into_place(
            &self.volume_path(volume_id),
            &self.snapshot_path(snapshot_id),
            None,
        )
    }

    fn delete_snapshot(&self, snapshot_id: &str) -> DpResult<()> {
        check_id("snapshot id", snapshot_id)?;
        remove_if_exists(&self.snapshot_path(snapshot_id))
    }

    fn restore(&self, attachments: &[Attachment]) -> DpResult<Vec<(String, String)>> {
        let mut devices = Vec::with_capacity(attachments.len());
        for a in attachments {
            devices.push((
                a.volume_id.clone(),
                self.attach(&a.volume_id, &a.instance_id)?,
            ));
        }
        // Devices bound to volumes the store says are detached are leftovers
        // of a detach interrupted by the crash: finish it.
        let _guard = self.lock();
        for id in self.known_volumes()? {
            if !attachments.iter().any(|a| a.volume_id == id) {
                self.unbind(&id)?;
            }
        }
        Ok(devices)
    }

    fn shutdown(&self) -> DpResult<()> {
        let _guard = self.lock();
        let mut first_err = None;
        for id in self.known_volumes()? {
            if let Err(e) = self.unbind(&id) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// One loop device as the kernel describes it under `/sys/block/loopN/loop`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopDevice {
    /// `loopN`.
    pub name: String,
    /// The file it serves.
    pub backing_file: PathBuf,
    /// Released but still open: the kernel frees it on last close.
    pub autoclear: bool,
}

impl LoopDevice {
    /// `/dev/loopN`.
    pub fn path(&self) -> String {
        format!("/dev/{}", self.name)
    }

    /// Whether the device still serves a file.
    pub fn still_bound(&self) -> bool {
        Path::new("/sys/block")
            .join(&self.name)
            .join("loop/backing_file")
            .exists()
    }

    /// Size in bytes as the kernel currently sees it.
    pub fn size_bytes(&self) -> DpResult<u64> {
        let p = Path::new("/sys/block").join(&self.name).join("size");
        let sectors = fs::read_to_string(&p)
            .map_err(|e| DataPlaneError::new(&format!("read {}", p.display()), e))?;
        let sectors: u64 = sectors
            .trim()
            .parse()
            .map_err(|e| DataPlaneError::new(&format!("parse {}", p.display()), e))?;
        Ok(sectors * 512)
    }
}

/// Every bound loop device on the machine.
pub fn loop_devices() -> DpResult<Vec<LoopDevice>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir("/sys/block") {
        Ok(e) => e,
        Err(e) => return Err(DataPlaneError::new("list /sys/block", e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let loop_dir = entry.path().join("loop");
        // Unbound devices have no `loop` directory; one that goes away
        // between the listing and the read was released meanwhile.
        let Ok(backing) = fs::read_to_string(loop_dir.join("backing_file")) else {
            continue;
        };
        let backing = backing.trim_end_matches('\n');
        // The kernel appends " (deleted)" when the file was unlinked; such a
        // device no longer serves any file we could name.
        if backing.ends_with(" (deleted)") {
            continue;
        }
        let autoclear =
            fs::read_to_string(loop_dir.join("autoclear")).is_ok_and(|s| s.trim() == "1");
        out.push(LoopDevice {
            name,
            backing_file: PathBuf::from(backing),
            autoclear,
        });
    }
    Ok(out)
}

/// Ids become file names: allow only what the emulator generates (and
/// nothing that could climb out of the directory).
fn check_id(what: &str, id: &str) -> DpResult<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !id.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(DataPlaneError(format!("invalid {what} {id:?}")))
    }
}

fn check_size(size_gb: u64) -> DpResult<()> {
    if size_gb == 0 || size_gb.checked_mul(GIB).is_none() {
        return Err(DataPlaneError(format!("invalid size {size_gb} GB")));
    }
    Ok(())
}

/// Grows a file to `size_gb` (never shrinks: data past the end would be lost).
fn grow(path: &Path, size_gb: u64) -> DpResult<()> {
    let want = size_gb * GIB;
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| DataPlaneError::new(&format!("open {}", path.display()), e))?;
    let have = f
        .metadata()
        .map_err(|e| DataPlaneError::new(&format!("stat {}", path.display()), e))?
        .len();
    if have < want {
        f.set_len(want)
            .map_err(|e| DataPlaneError::new(&format!("grow {}", path.display()), e))?;
    }
    Ok(())
}

fn ensure_dir(dir: &Path) -> DpResult<PathBuf> {
    fs::create_dir_all(dir)
        .map_err(|e| DataPlaneError::new(&format!("create {}", dir.display()), e))?;
    // The kernel reports backing files by canonical path; compare like with like.
    fs::canonicalize(dir).map_err(|e| DataPlaneError::new(&format!("resolve {}", dir.display()), e))
}

fn tmp_path(dst: &Path) -> PathBuf {
    let name = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dst.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

fn remove_if_exists(path: &Path) -> DpResult<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DataPlaneError::new(
            &format!("remove {}", path.display()),
            e,
        )),
    }
}

fn path_str(p: &Path) -> DpResult<&str> {
    p.to_str()
        .ok_or_else(|| DataPlaneError(format!("path {} is not UTF-8", p.display())))
}

/// Runs a command, returning stdout; a failure carries its stderr.
fn run(program: &str, args: &[&str]) -> DpResult<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| DataPlaneError::new(&format!("run {program}"), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(DataPlaneError(format!(
            "{program} {}: {} ({})",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        )))
    }
}

/// Whether `path` is a block device node.
pub fn is_block_device(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

#[cfg(test)]
mod tests {
    //! Privileged: real loop devices. Each test has its own data dir and
    //! by-id dir, unique volume ids, and a guard that releases every loop
    //! device bound to its files even when an assertion fails.

    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    struct Fixture {
        driver: LoopVolumeDriver,
        dir: tempfile::TempDir,
        tag: String,
    }

    impl Fixture {
        fn new() -> Self {
            assert!(
                supported(),
                "the disk data-plane tests must run as root with losetup"
            );
            let dir = tempfile::tempdir().expect("temp dir");
            let driver = LoopVolumeDriver::with_by_id_dir(
                &dir.path().join("data"),
                &dir.path().join("by-id"),
            )
            .expect("driver");
            let tag = format!("{:08x}", rand::random::<u32>());
            Fixture { driver, dir, tag }
        }

        fn vol(&self, n: u32) -> String {
            format!("vol-t{}{n}", self.tag)
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = self.driver.shutdown();
            // Belt and braces: anything still bound to a file of ours.
            let root =
                fs::canonicalize(self.dir.path()).unwrap_or_else(|_| self.dir.path().to_path_buf());
            for dev in loop_devices().unwrap_or_default() {
                if dev.backing_file.starts_with(&root) {
                    let _ = Command::new("losetup").args(["-d", &dev.path()]).status();
                }
            }
        }
    }

    fn write_at(dev: &str, offset: u64, data: &[u8]) {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(dev)
            .expect("open device");
        f.seek(SeekFrom::Start(offset)).expect("seek");
        f.write_all(data).expect("write");
        f.sync_all().expect("sync");
    }

    fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
        let mut f = fs::File::open(path).expect("open");
        f.seek(SeekFrom::Start(offset)).expect("seek");
        let mut buf = vec![0; len];
        f.read_exact(&mut buf).expect("read");
        buf
    }

    fn device_named(dev: &str) -> LoopDevice {
        let name = dev.trim_start_matches("/dev/");
        loop_devices()
            .expect("list")
            .into_iter()
            .find(|d| d.name == name)
            .expect("device bound")
    }

    #[test]
    fn create_is_sparse_and_idempotent() {
        let fx = Fixture::new();
        let id = fx.vol(1);
        fx.driver.create(&id, 2).expect("create");
        fx.driver.create(&id, 2).expect("create again");
        let meta = fs::metadata(fx.driver.volume_path(&id)).expect("stat");
        assert_eq!(meta.len(), 2 * GIB);
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 < GIB / 1024,
            "backing file is not sparse"
        );
        fx.driver.delete(&id).expect("delete");
        fx.driver.delete(&id).expect("delete again");
        assert!(!fx.driver.volume_path(&id).exists());
    }

    #[test]
    fn attach_detach_publish_and_idempotency() {
        let fx = Fixture::new();
        let id = fx.vol(1);
        fx.driver.create(&id, 1).expect("create");
        let dev = fx.driver.attach(&id, "i-a").expect("attach");
        assert!(dev.starts_with("/dev/loop"), "{dev}");
        assert!(is_block_device(Path::new(&dev)));
        assert_eq!(
            fs::read_link(fx.driver.by_id_link(&id)).expect("link"),
            PathBuf::from(&dev)
        );
        assert_eq!(device_named(&dev).size_bytes().expect("size"), GIB);
        // Replayed attach reuses the same device rather than binding another.
        assert_eq!(fx.driver.attach(&id, "i-a").expect("attach again"), dev);
        assert_eq!(fx.driver.devices_of(&id).expect("devices").len(), 1);
        // Writes through the link land in the file.
        write_at(
            fx.driver.by_id_link(&id).to_str().expect("utf8"),
            4096,
            b"hello disk",
        );
        assert_eq!(
            read_at(&fx.driver.volume_path(&id), 4096, 10),
            b"hello disk"
        );
        // Attached volumes are never deleted.
        assert!(fx.driver.delete(&id).is_err());
        fx.driver.detach(&id, "i-a").expect("detach");
        fx.driver.detach(&id, "i-a").expect("detach again");
        assert!(fx.driver.devices_of(&id).expect("devices").is_empty());
        assert!(
            fs::symlink_metadata(fx.driver.by_id_link(&id)).is_err(),
            "link left behind"
        );
        fx.driver.delete(&id).expect("delete");
    }

    #[test]
    fn resize_refreshes_capacity_of_attached_device() {
        let fx = Fixture::new();
        let id = fx.vol(1);
        fx.driver.create(&id, 1).expect("create");
        let dev = fx.driver.attach(&id, "i-a").expect("attach");
        write_at(&dev, 0, b"keep me");
        fx.driver.resize(&id, 3).expect("resize");
        fx.driver.resize(&id, 3).expect("resize again");
        assert_eq!(device_named(&dev).size_bytes().expect("size"), 3 * GIB);
        // Never shrinks.
        fx.driver.resize(&id, 2).expect("smaller size is a no-op");
        assert_eq!(
            fs::metadata(fx.driver.volume_path(&id))
                .expect("stat")
                .len(),
            3 * GIB
        );
        assert_eq!(read_at(Path::new(&dev), 0, 7), b"keep me");
        fx.driver.detach(&id, "i-a").expect("detach");
    }

    #[test]
    fn snapshot_restore_and_clone_copy_data_sparsely() {
        let fx = Fixture::new();
        let src = fx.vol(1);
        fx.driver.create(&src, 1).expect("create");
        let dev = fx.driver.attach(&src, "i-a").expect("attach");
        write_at(&dev, 0, b"first block");
        write_at(&dev, GIB - 4096, b"last block");
        let ss = format!("ss-t{}", fx.tag);
        fx.driver.snapshot(&src, &ss).expect("snapshot");
        fx.driver.snapshot(&src, &ss).expect("snapshot replay");
        // Later writes do not leak into the snapshot.
        write_at(&dev, 0, b"changed!!!!");
        let snap = fx.driver.snapshot_path(&ss);
        use std::os::unix::fs::MetadataExt;
        assert!(
            fs::metadata(&snap).expect("stat").blocks() * 512 < 16 << 20,
            "snapshot is not sparse"
        );
        assert_eq!(read_at(&snap, 0, 11), b"first block");

        let restored = fx.vol(2);
        fx.driver
            .create_from_snapshot(&ss, &restored, 2)
            .expect("restore");
        fx.driver
            .create_from_snapshot(&ss, &restored, 2)
            .expect("restore replay");
        let rpath = fx.driver.volume_path(&restored);
        assert_eq!(fs::metadata(&rpath).expect("stat").len(), 2 * GIB);
        assert_eq!(read_at(&rpath, 0, 11), b"first block");
        assert_eq!(read_at(&rpath, GIB - 4096, 10), b"last block");

        let clone = fx.vol(3);
        fx.driver.clone_volume(&src, &clone, 1).expect("clone");
        assert_eq!(
            read_at(&fx.driver.volume_path(&clone), 0, 11),
            b"changed!!!!"
        );

        assert!(
            fx.driver
                .create_from_snapshot("ss-missing", &fx.vol(4), 1)
                .is_err()
        );
        fx.driver.delete_snapshot(&ss).expect("delete snapshot");
        fx.driver
            .delete_snapshot(&ss)
            .expect("delete snapshot again");
        fx.driver.detach(&src, "i-a").expect("detach");
    }

    #[test]
    fn restore_reattaches_and_finishes_interrupted_detaches() {
        let fx = Fixture::new();
        let (kept, stale, fresh) = (fx.vol(1), fx.vol(2), fx.vol(3));
        for id in [&kept, &stale, &fresh] {
            fx.driver.create(id, 1).expect("create");
        }
        let dev = fx.driver.attach(&kept, "i-a").expect("attach");
        fx.driver.attach(&stale, "i-a").expect("attach");
        // A restarted emulator: a new driver over the same directories.
        let again = LoopVolumeDriver::with_by_id_dir(
            &fx.dir.path().join("data"),
            &fx.dir.path().join("by-id"),
        )
        .expect("driver");
        let restored = again
            .restore(&[
                Attachment {
                    volume_id: kept.clone(),
                    instance_id: "i-a".into(),
                },
                Attachment {
                    volume_id: fresh.clone(),
                    instance_id: "i-b".into(),
                },
            ])
            .expect("restore");
        assert_eq!(
            restored[0],
            (kept.clone(), dev.clone()),
            "existing device reused"
        );
        assert!(restored[1].1.starts_with("/dev/loop"));
        assert!(
            again.devices_of(&stale).expect("devices").is_empty(),
            "stale attachment kept"
        );
        assert!(fs::symlink_metadata(again.by_id_link(&stale)).is_err());
        again.shutdown().expect("shutdown");
        for id in [&kept, &stale, &fresh] {
            assert!(again.devices_of(id).expect("devices").is_empty());
            assert!(fs::symlink_metadata(again.by_id_link(id)).is_err());
        }
    }

    #[test]
    fn concurrent_attaches_get_distinct_devices() {
        let fx = Fixture::new();
        let ids: Vec<String> = (0..6).map(|n| fx.vol(n)).collect();
        for id in &ids {
            fx.driver.create(id, 1).expect("create");
        }
        let devs: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = ids
                .iter()
                .map(|id| s.spawn(|| fx.driver.attach(id, "i-a")))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread").expect("attach"))
                .collect()
        });
        let mut unique = devs.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "{devs:?}");
        fx.driver.shutdown().expect("shutdown");
    }

    #[test]
    fn rejects_ids_that_are_not_file_names() {
        let fx = Fixture::new();
        for bad in ["", "../x", "a/b", "-rf", "vol x"] {
            assert!(fx.driver.create(bad, 1).is_err(), "{bad:?} accepted");
        }
        assert!(
            fx.driver.create(&fx.vol(1), 0).is_err(),
            "zero size accepted"
        );
    }
}

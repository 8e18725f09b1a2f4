//! Finding the block device of an attached volume on this node.
//!
//! Device names handed out by the cloud are hints at best (every peer had
//! "wrong device path" bugs), so the search goes from the most to the least
//! trustworthy source: the `virtio-<volume id>` link udev publishes from the
//! disk's serial, then the serials in `/sys/block`, then the device in the
//! publish context.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// virtio-blk serials hold at most 20 bytes; longer ids show up truncated.
const VIRTIO_SERIAL_MAX: usize = 20;

/// Where to look for devices.
#[derive(Debug, Clone)]
pub struct DeviceFinder {
    /// Directory of `virtio-<serial>` links (`/dev/disk/by-id`).
    pub by_id_dir: PathBuf,
    /// Sysfs block directory (`/sys/block`).
    pub sys_block: PathBuf,
    /// How long [`DeviceFinder::wait`] waits for the device to show up.
    pub timeout: Duration,
}

impl Default for DeviceFinder {
    fn default() -> Self {
        DeviceFinder {
            by_id_dir: PathBuf::from("/dev/disk/by-id"),
            sys_block: PathBuf::from("/sys/block"),
            timeout: Duration::from_secs(30),
        }
    }
}

impl DeviceFinder {
    /// Looks once; `Ok(None)` when the device has not appeared (yet).
    pub fn find(&self, volume_id: &str, publish_device: Option<&str>) -> Result<Option<PathBuf>> {
        for serial in serials(volume_id) {
            let link = self.by_id_dir.join(format!("virtio-{serial}"));
            if let Ok(dev) = std::fs::canonicalize(&link)
                && is_block_device(&dev)
            {
                return Ok(Some(dev));
            }
        }
        if let Some(dev) = self.scan_serials(volume_id) {
            return Ok(Some(dev));
        }
        if let Some(dev) = publish_device.filter(|d| !d.is_empty()) {
            let p = Path::new(dev);
            if !p.is_absolute() || !dev.starts_with("/dev/") {
                return Err(Error::invalid(
                    "publish_context",
                    format!("device {dev:?} is not under /dev"),
                ));
            }
            if let Ok(real) = std::fs::canonicalize(p)
                && is_block_device(&real)
            {
                return Ok(Some(real));
            }
        }
        Ok(None)
    }

    /// Waits with backoff, up to the finder's timeout, for the device.
    pub async fn wait(&self, volume_id: &str, publish_device: Option<&str>) -> Result<PathBuf> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut delay = Duration::from_millis(50);
        loop {
            if let Some(dev) = self.find(volume_id, publish_device)? {
                return Ok(dev);
            }
            if tokio::time::Instant::now() + delay > deadline {
                return Err(Error::NotFound(format!(
                    "no device for volume {volume_id} after {:?} (looked in {}, {} serials, publish context {:?})",
                    self.timeout,
                    self.by_id_dir.display(),
                    self.sys_block.display(),
                    publish_device.unwrap_or("")
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    fn scan_serials(&self, volume_id: &str) -> Option<PathBuf> {
        let wanted = serials(volume_id);
        let entries = std::fs::read_dir(&self.sys_block).ok()?;
        for entry in entries.flatten() {
            let Ok(serial) = std::fs::read_to_string(entry.path().join("serial")) else {
                continue;
            };
            let serial = serial.trim();
            if !serial.is_empty() && wanted.contains(&serial) {
                let dev = Path::new("/dev").join(entry.file_name());
                if is_block_device(&dev) {
                    return Some(dev);
                }
            }
        }
        None
    }
}

/// The serials a disk for `volume_id` can carry: the id, or its truncation.
fn serials(volume_id: &str) -> Vec<&str> {
    let mut v = vec![volume_id];
    if volume_id.len() > VIRTIO_SERIAL_MAX && volume_id.is_char_boundary(VIRTIO_SERIAL_MAX) {
        v.push(&volume_id[..VIRTIO_SERIAL_MAX]);
    }
    v
}

/// Whether `path` is a block device node.
pub fn is_block_device(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// `(major, minor)` of a block device node.
pub fn device_number(path: &Path) -> Result<(u32, u32)> {
    let st = nix::sys::stat::stat(path)
        .map_err(|e| Error::internal(format!("stat {}", path.display()), e))?;
    let rdev = st.st_rdev;
    Ok((
        nix::sys::stat::major(rdev) as u32,
        nix::sys::stat::minor(rdev) as u32,
    ))
}

/// Size of a block device in bytes (`blockdev --getsize64`).
pub fn size_bytes(path: &Path) -> Result<u64> {
    let arg = path
        .to_str()
        .ok_or_else(|| Error::Internal(format!("path {} is not UTF-8", path.display())))?;
    let out = crate::mount::run_output("blockdev", &["--getsize64", arg])?;
    out.trim()
        .parse()
        .map_err(|e| Error::internal(format!("blockdev --getsize64 {arg} printed {out:?}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_ids_match_truncated_serials() {
        assert_eq!(serials("vol-abc"), vec!["vol-abc"]);
        assert_eq!(
            serials("vol-0123456789abcdefghij"),
            vec!["vol-0123456789abcdefghij", "vol-0123456789abcdef"]
        );
    }

    #[test]
    fn finds_nothing_for_unknown_volume_and_rejects_odd_publish_paths() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = DeviceFinder {
            by_id_dir: dir.path().to_path_buf(),
            sys_block: dir.path().to_path_buf(),
            timeout: Duration::from_millis(10),
        };
        assert_eq!(f.find("vol-none", None).expect("find"), None);
        assert!(f.find("vol-none", Some("/etc/passwd")).is_err());
        assert!(
            f.find("vol-none", Some("/dev/null"))
                .expect("find")
                .is_none()
        );
        assert!(f.find("vol-none", Some("relative")).is_err());
    }

    #[test]
    fn follows_by_id_links_to_block_devices() {
        let dir = tempfile::tempdir().expect("tmp");
        // /dev/loop-control is a char device; a real block device is needed.
        let Some(block) = std::fs::read_dir("/dev")
            .expect("dev")
            .flatten()
            .map(|e| e.path())
            .find(|p| is_block_device(p))
        else {
            return;
        };
        std::os::unix::fs::symlink(&block, dir.path().join("virtio-vol-link")).expect("link");
        std::os::unix::fs::symlink("/dev/null", dir.path().join("virtio-vol-char")).expect("link");
        let f = DeviceFinder {
            by_id_dir: dir.path().to_path_buf(),
            sys_block: dir.path().to_path_buf(),
            timeout: Duration::from_millis(10),
        };
        assert_eq!(f.find("vol-link", None).expect("find"), Some(block));
        assert_eq!(
            f.find("vol-char", None).expect("find"),
            None,
            "char device accepted"
        );
    }
}

//! Safe formatting and filesystem growth.
//!
//! The rule that protects user data: a device is formatted only when
//! `blkid -p` (a low-level probe that reads the device itself, not a cache)
//! positively reports that it found nothing. Any filesystem, any partition
//! table, or any probe error means "do not touch".

use std::path::Path;
use std::process::Command;

use crate::error::{Error, Result};

/// Filesystems this driver creates and grows.
pub const SUPPORTED_FS: &[&str] = &["ext4", "ext3", "xfs"];

/// Filesystem used when the volume capability names none.
pub const DEFAULT_FS: &str = "ext4";

/// What a device holds, according to `blkid -p`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Nothing recognisable: safe to format.
    Empty,
    /// A filesystem (or other superblock) of this type.
    Filesystem(String),
    /// A partition table of this type (`gpt`, `dos`).
    PartitionTable(String),
}

/// Probes a device. Errors when the probe itself fails: an unreadable
/// device must never be taken for an empty one.
pub fn probe(device: &Path) -> Result<Content> {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(device)
        .output()
        .map_err(|e| Error::internal("run blkid", e))?;
    match out.status.code() {
        // blkid's documented "no identifiable content" exit status.
        Some(2) => Ok(Content::Empty),
        Some(0) => parse_probe(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
            Error::Internal(format!(
                "blkid -p {} found something it could not name: {:?}",
                device.display(),
                String::from_utf8_lossy(&out.stdout)
            ))
        }),
        _ => Err(Error::Internal(format!(
            "blkid -p {} failed ({}): {}",
            device.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// Reads `KEY=value` lines of `blkid -o export`.
fn parse_probe(text: &str) -> Option<Content> {
    let get = |key: &str| {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.trim().to_string())
    };
    if let Some(pt) = get("PTTYPE") {
        return Some(Content::PartitionTable(pt));
    }
    // TYPE covers filesystems, swap, LVM and RAID members alike: all are data.
    get("TYPE").map(Content::Filesystem)
}

/// Formats `device` with `fs_type`, but only if it is verifiably empty.
/// Returns whether it formatted.
pub fn format_if_empty(device: &Path, fs_type: &str) -> Result<bool> {
    match probe(device)? {
        Content::Empty => {}
        Content::Filesystem(_) => return Ok(false),
        Content::PartitionTable(pt) => {
            return Err(Error::FailedPrecondition(format!(
                "{} carries a {pt} partition table; refusing to format or mount it",
                device.display()
            )));
        }
    }
    let dev = device.to_string_lossy();
    match fs_type {
        // -F: the target is a whole device, not a partition; -m0: no blocks
        // reserved for root on a data volume.
        "ext4" | "ext3" => crate::mount::run(&format!("mkfs.{fs_type}"), &["-F", "-m0", &*dev])?,
        "xfs" => crate::mount::run("mkfs.xfs", &[&*dev])?,
        other => {
            return Err(Error::invalid(
                "volume_capability.mount.fs_type",
                format!("unsupported {other:?}"),
            ));
        }
    }
    Ok(true)
}

/// Grows the filesystem on `device`, mounted at `mount_point`, to fill it.
/// A filesystem that already fills the device is left alone.
pub fn grow(device: &Path, mount_point: &Path) -> Result<()> {
    match probe(device)? {
        Content::Filesystem(t) if t.starts_with("ext") => {
            if ext_fs_bytes(device)? >= crate::device::size_bytes(device)? {
                return Ok(());
            }
            crate::mount::run("resize2fs", &[&*device.to_string_lossy()])
        }
        // xfs_growfs is a no-op on a filesystem that fills its device.
        Content::Filesystem(t) if t == "xfs" => {
            crate::mount::run("xfs_growfs", &[&*mount_point.to_string_lossy()])
        }
        other => Err(Error::FailedPrecondition(format!(
            "cannot grow {} holding {other:?}",
            device.display()
        ))),
    }
}

/// Grows an unmounted ext filesystem that is smaller than its device (the
/// disk was expanded while detached). Returns whether it grew. Offline
/// growth needs no privilege beyond opening the device, unlike the online
/// resize ioctl (which wants CAP_SYS_RESOURCE).
pub fn grow_offline_if_needed(device: &Path) -> Result<bool> {
    let Content::Filesystem(t) = probe(device)? else {
        return Ok(false);
    };
    if !t.starts_with("ext") || ext_fs_bytes(device)? >= crate::device::size_bytes(device)? {
        return Ok(false);
    }
    // resize2fs insists on a freshly checked filesystem; -p repairs only
    // what is safe without a human and fails on anything else.
    let out = Command::new("e2fsck")
        .args(["-f", "-p"])
        .arg(device)
        .output()
        .map_err(|e| Error::internal("run e2fsck", e))?;
    // 0: clean, 1: errors corrected; anything else needs a human.
    if !matches!(out.status.code(), Some(0) | Some(1)) {
        return Err(Error::FailedPrecondition(format!(
            "e2fsck -f -p {} found problems it will not fix alone ({}): {}",
            device.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim()
        )));
    }
    crate::mount::run("resize2fs", &[&*device.to_string_lossy()])?;
    Ok(true)
}

/// Size of an ext filesystem in bytes, from its superblock.
fn ext_fs_bytes(device: &Path) -> Result<u64> {
    let out = crate::mount::run_output("dumpe2fs", &["-h", &*device.to_string_lossy()])?;
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    match (field("Block count:"), field("Block size:")) {
        (Some(count), Some(size)) => Ok(count * size),
        _ => Err(Error::Internal(format!(
            "dumpe2fs -h {} printed no block count/size",
            device.display()
        ))),
    }
}

/// Checks an fs type named in a request.
pub fn check_fs_type(field: &'static str, fs_type: &str) -> Result<()> {
    if fs_type.is_empty() || SUPPORTED_FS.contains(&fs_type) {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("unsupported filesystem {fs_type:?} (supported: {SUPPORTED_FS:?})"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_blkid_export() {
        assert_eq!(
            parse_probe("DEVNAME=/dev/loop3\nUUID=x\nTYPE=ext4\nUSAGE=filesystem\n"),
            Some(Content::Filesystem("ext4".into()))
        );
        assert_eq!(
            parse_probe("DEVNAME=/dev/loop3\nPTUUID=y\nPTTYPE=gpt\n"),
            Some(Content::PartitionTable("gpt".into()))
        );
        assert_eq!(parse_probe("DEVNAME=/dev/loop3\n"), None);
    }

    #[test]
    fn fs_type_validation_names_the_field() {
        assert!(check_fs_type("parameters.fsType", "xfs").is_ok());
        let e = check_fs_type("parameters.fsType", "ntfs").expect_err("ntfs");
        assert!(e.to_string().contains("parameters.fsType"));
    }

    /// Privileged (loop devices): an empty device is formatted once; a
    /// device with a filesystem or a partition table is never formatted.
    #[test]
    fn never_formats_a_device_with_content() {
        let dir = tempfile::tempdir().expect("tmp");
        let img = dir.path().join("d.img");
        std::fs::File::create(&img)
            .expect("create")
            .set_len(64 << 20)
            .expect("size");
        let dev = crate::testutil::LoopGuard::attach(&img);
        assert_eq!(probe(dev.path()).expect("probe"), Content::Empty);
        assert!(format_if_empty(dev.path(), "ext4").expect("format"));
        assert_eq!(
            probe(dev.path()).expect("probe"),
            Content::Filesystem("ext4".into())
        );
        // A second call, even asking for another fs type, leaves it alone.
        assert!(!format_if_empty(dev.path(), "xfs").expect("no format"));
        assert_eq!(
            probe(dev.path()).expect("probe"),
            Content::Filesystem("ext4".into())
        );
        drop(dev);

        let img2 = dir.path().join("p.img");
        std::fs::File::create(&img2)
            .expect("create")
            .set_len(64 << 20)
            .expect("size");
        crate::testutil::write_mbr(&img2);
        let dev2 = crate::testutil::LoopGuard::attach(&img2);
        assert!(matches!(
            probe(dev2.path()).expect("probe"),
            Content::PartitionTable(_)
        ));
        assert!(format_if_empty(dev2.path(), "ext4").is_err());
    }
}

//! Helpers for the crate's privileged unit tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A loop device bound to a file, released on drop (even after a panic).
#[derive(Debug)]
pub struct LoopGuard {
    dev: PathBuf,
}

impl LoopGuard {
    /// `losetup --find --show <file>`.
    pub fn attach(file: &Path) -> Self {
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .expect("run losetup (the tests need root)");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        LoopGuard {
            dev: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
        }
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.dev
    }
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Writes a DOS partition table with one Linux partition into `file`.
pub fn write_mbr(file: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .expect("open image");
    let mut entry = vec![0u8, 0, 0, 0, 0x83, 0, 0, 0];
    entry.extend_from_slice(&2048u32.to_le_bytes());
    entry.extend_from_slice(&4096u32.to_le_bytes());
    f.seek(SeekFrom::Start(446)).expect("seek");
    f.write_all(&entry).expect("write entry");
    f.seek(SeekFrom::Start(510)).expect("seek");
    f.write_all(&[0x55, 0xaa]).expect("write signature");
}

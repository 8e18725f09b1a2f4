//! Mounts: read from `/proc/self/mountinfo` (never guessed from paths), made
//! and removed with `mount(8)` / `umount(8)`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Unique mount id.
    pub mount_id: u32,
    /// Parent mount id.
    pub parent_id: u32,
    /// Device major number of the mounted filesystem.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// Path inside the filesystem that is mounted here (`/` unless a bind of a subtree).
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`, `ro`, `nosuid`, ...).
    pub mount_options: Vec<String>,
    /// Filesystem type.
    pub fs_type: String,
    /// Mount source (a device path, or anything for pseudo filesystems).
    pub source: String,
    /// Per-superblock options.
    pub super_options: Vec<String>,
}

impl MountEntry {
    /// Whether the mount is read-only.
    pub fn read_only(&self) -> bool {
        self.mount_options.iter().any(|o| o == "ro")
    }
}

/// Parses the text of a mountinfo file.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountEntry>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Result<MountEntry> {
    let bad = |what: &str| Error::Internal(format!("malformed mountinfo line ({what}): {line:?}"));
    let (left, right) = line.split_once(" - ").ok_or_else(|| bad("no separator"))?;
    let mut f = left.split(' ');
    let mount_id = f
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("mount id"))?;
    let parent_id = f
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("parent id"))?;
    let (major, minor) = f
        .next()
        .and_then(|s| s.split_once(':'))
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| bad("major:minor"))?;
    let root = PathBuf::from(unescape(f.next().ok_or_else(|| bad("root"))?));
    let mount_point = PathBuf::from(unescape(f.next().ok_or_else(|| bad("mount point"))?));
    let mount_options = split_options(f.next().ok_or_else(|| bad("options"))?);
    // Optional fields (shared:N, master:N, ...) follow until the separator.
    let mut r = right.split(' ');
    let fs_type = unescape(r.next().ok_or_else(|| bad("fs type"))?);
    let source = unescape(r.next().ok_or_else(|| bad("source"))?);
    let super_options = split_options(r.next().unwrap_or(""));
    Ok(MountEntry {
        mount_id,
        parent_id,
        major,
        minor,
        root,
        mount_point,
        mount_options,
        fs_type,
        source,
        super_options,
    })
}

fn split_options(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|o| !o.is_empty())
        .map(str::to_string)
        .collect()
}

/// The kernel escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The current mount table of this process's mount namespace.
pub fn mounts() -> Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::internal("read /proc/self/mountinfo", e))?;
    parse_mountinfo(&text)
}

/// The topmost mount at exactly `target`, if any (mounts can stack; the
/// last one listed is the one visible).
pub fn find_by_target(target: &Path) -> Result<Option<MountEntry>> {
    let target = normalize(target);
    Ok(mounts()?
        .into_iter()
        .rev()
        .find(|m| m.mount_point == target))
}

/// Every mount of the block device `major:minor`.
pub fn find_by_device(major: u32, minor: u32) -> Result<Vec<MountEntry>> {
    Ok(mounts()?
        .into_iter()
        .filter(|m| m.major == major && m.minor == minor)
        .collect())
}

/// Resolves symlinks when the path exists, so it compares equal to what the
/// kernel prints.
fn normalize(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// `mount -t <fs_type> -o <options> <source> <target>`.
pub fn mount(source: &Path, target: &Path, fs_type: &str, options: &[String]) -> Result<()> {
    let mut args: Vec<String> = Vec::new();
    if !fs_type.is_empty() {
        args.extend(["-t".into(), fs_type.into()]);
    }
    if !options.is_empty() {
        args.extend(["-o".into(), options.join(",")]);
    }
    args.push(path_arg(source)?);
    args.push(path_arg(target)?);
    run("mount", &args)
}

/// Bind-mounts `source` onto `target`, then makes it read-only if asked
/// (a bind mount ignores `ro` until remounted).
pub fn bind_mount(source: &Path, target: &Path, read_only: bool, extra: &[String]) -> Result<()> {
    run(
        "mount",
        &["--bind".into(), path_arg(source)?, path_arg(target)?],
    )?;
    if read_only || !extra.is_empty() {
        let mut opts = vec!["remount".to_string(), "bind".to_string()];
        if read_only {
            opts.push("ro".into());
        }
        opts.extend(extra.iter().cloned());
        if let Err(e) = run("mount", &["-o".into(), opts.join(","), path_arg(target)?]) {
            // Never leave a writable mount behind a request for a read-only one.
            let _ = unmount(target);
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts everything stacked at `target`; not mounted is success.
pub fn unmount_all(target: &Path) -> Result<()> {
    // A bounded loop: each round removes one layer.
    for _ in 0..16 {
        if find_by_target(target)?.is_none() {
            return Ok(());
        }
        unmount(target)?;
    }
    Err(Error::Internal(format!(
        "{} is still mounted after 16 unmounts",
        target.display()
    )))
}

/// `umount <target>`.
pub fn unmount(target: &Path) -> Result<()> {
    run("umount", &[path_arg(target)?])
}

fn path_arg(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| Error::Internal(format!("path {} is not UTF-8", p.display())))
}

/// Runs a command; a failure carries its stderr.
pub(crate) fn run<S: AsRef<str>>(program: &str, args: &[S]) -> Result<()> {
    run_output(program, args).map(|_| ())
}

/// Runs a command and returns stdout; a failure carries its stderr.
pub(crate) fn run_output<S: AsRef<str>>(program: &str, args: &[S]) -> Result<String> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let out = Command::new(program)
        .args(&args)
        .output()
        .map_err(|e| Error::internal(format!("run {program}"), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Internal(format!(
            "{program} {}: {} ({})",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
41 27 7:3 / /var/lib/kubelet/plugins/x/globalmount rw,relatime shared:7 - ext4 /dev/loop3 rw
42 27 7:3 / /mnt/with\\040space ro,relatime - ext4 /dev/loop3 rw
";

    #[test]
    fn parses_fields_and_optional_tags() {
        let m = parse_mountinfo(SAMPLE).expect("parse");
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].major, 98);
        assert_eq!(m[1].root, PathBuf::from("/mnt1"));
        assert_eq!(m[1].mount_point, PathBuf::from("/mnt2"));
        assert_eq!(m[1].fs_type, "ext3");
        assert_eq!(m[1].source, "/dev/root");
        assert_eq!(m[2].minor, 3);
        assert!(!m[2].read_only());
        assert_eq!(m[3].mount_point, PathBuf::from("/mnt/with space"));
        assert!(m[3].read_only());
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_mountinfo("not a mountinfo line").is_err());
        assert!(parse_mountinfo("1 2 x:y / /a rw - ext4 /dev/a rw").is_err());
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("a\\040b\\011c\\134d"), "a b\tc\\d");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn reads_own_table() {
        let all = mounts().expect("mountinfo");
        assert!(all.iter().any(|m| m.mount_point == Path::new("/")));
    }
}

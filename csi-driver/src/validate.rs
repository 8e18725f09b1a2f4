//! Request validation shared by the services; every error names its field.

use std::path::{Component, Path};

use crate::csi::VolumeCapability;
use crate::csi::volume_capability::access_mode::Mode;
use crate::csi::volume_capability::{AccessMode, AccessType};
use crate::error::{Error, Result};

/// A required string field.
pub fn required<'a>(field: &'static str, value: &'a str) -> Result<&'a str> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.contains('\0') {
        return Err(Error::invalid(field, "must not contain NUL"));
    }
    Ok(value)
}

/// A path the CO hands us: absolute, no `..`, no NUL.
pub fn path<'a>(field: &'static str, value: &'a str) -> Result<&'a Path> {
    required(field, value)?;
    let p = Path::new(value);
    if !p.is_absolute() {
        return Err(Error::invalid(field, format!("{value:?} is not absolute")));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(Error::invalid(field, format!("{value:?} contains '..'")));
    }
    Ok(p)
}

/// A volume id must look like a cloud id: it becomes part of device paths
/// and API parameters.
pub fn volume_id(field: &'static str, value: &str) -> Result<()> {
    required(field, value)?;
    if value.len() > 128
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::invalid(
            field,
            format!("{value:?} is not a volume id"),
        ));
    }
    Ok(())
}

/// How a capability wants the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Raw block device.
    Block,
    /// Filesystem with type (may be empty: default) and mount flags.
    Mount {
        /// Requested filesystem type.
        fs_type: String,
        /// Extra mount options.
        flags: Vec<String>,
    },
}

/// A validated volume capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    /// Block or mount.
    pub access: Access,
    /// Whether every mode it allows is read-only.
    pub read_only: bool,
}

/// Checks one capability: a block disk attaches to one node at a time, so
/// only single-node modes (and multi-node read-only is refused too).
pub fn capability(field: &'static str, cap: Option<&VolumeCapability>) -> Result<Capability> {
    let cap = cap.ok_or_else(|| Error::invalid(field, "missing"))?;
    let access = match &cap.access_type {
        Some(AccessType::Block(_)) => Access::Block,
        Some(AccessType::Mount(m)) => {
            crate::format::check_fs_type(field, &m.fs_type)?;
            for flag in &m.mount_flags {
                if flag.is_empty() || flag.contains('\0') {
                    return Err(Error::invalid(field, format!("bad mount flag {flag:?}")));
                }
            }
            Access::Mount {
                fs_type: m.fs_type.clone(),
                flags: m.mount_flags.clone(),
            }
        }
        None => {
            return Err(Error::invalid(
                field,
                "access_type (block or mount) is missing",
            ));
        }
    };
    let mode = cap
        .access_mode
        .as_ref()
        .map(AccessMode::mode)
        .ok_or_else(|| Error::invalid(field, "access_mode is missing"))?;
    let read_only = match mode {
        Mode::SingleNodeWriter | Mode::SingleNodeSingleWriter | Mode::SingleNodeMultiWriter => {
            false
        }
        Mode::SingleNodeReaderOnly => true,
        Mode::Unknown => return Err(Error::invalid(field, "access_mode is UNKNOWN")),
        other => {
            return Err(Error::invalid(
                field,
                format!(
                    "access mode {other:?} is not supported by a block disk (single node only)"
                ),
            ));
        }
    };
    Ok(Capability { access, read_only })
}

/// Checks a non-empty list of capabilities.
pub fn capabilities(field: &'static str, caps: &[VolumeCapability]) -> Result<Vec<Capability>> {
    if caps.is_empty() {
        return Err(Error::invalid(field, "at least one capability is required"));
    }
    caps.iter().map(|c| capability(field, Some(c))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csi::volume_capability::{BlockVolume, MountVolume};

    fn cap(access: AccessType, mode: Mode) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(access),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    #[test]
    fn paths() {
        assert!(path("target_path", "/var/lib/x").is_ok());
        for bad in ["", "rel/x", "/a/../b", "/a\0b"] {
            let e = path("target_path", bad).expect_err(bad);
            assert!(e.to_string().contains("target_path"), "{e}");
        }
    }

    #[test]
    fn capabilities_checked() {
        let block = cap(AccessType::Block(BlockVolume {}), Mode::SingleNodeWriter);
        assert_eq!(
            capability("c", Some(&block)).expect("ok").access,
            Access::Block
        );
        let ro = cap(
            AccessType::Mount(MountVolume {
                fs_type: "xfs".into(),
                ..Default::default()
            }),
            Mode::SingleNodeReaderOnly,
        );
        assert!(capability("c", Some(&ro)).expect("ok").read_only);
        let multi = cap(
            AccessType::Block(BlockVolume {}),
            Mode::MultiNodeMultiWriter,
        );
        assert!(capability("c", Some(&multi)).is_err());
        let bad_fs = cap(
            AccessType::Mount(MountVolume {
                fs_type: "ntfs".into(),
                ..Default::default()
            }),
            Mode::SingleNodeWriter,
        );
        assert!(capability("c", Some(&bad_fs)).is_err());
        assert!(capability("c", None).is_err());
        assert!(capabilities("c", &[]).is_err());
    }
}

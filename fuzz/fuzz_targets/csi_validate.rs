//! CSI request validation: paths, volume ids and volume capabilities (decoded from protobuf bytes, as they arrive on the wire).
//! Accepted paths are absolute without `..` or NUL.
#![no_main]

use csi_driver::csi::{NodePublishVolumeRequest, VolumeCapability};
use csi_driver::validate;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 4 {
        0 => {
            let s = String::from_utf8_lossy(rest);
            if let Ok(p) = validate::path("staging_target_path", &s) {
                assert!(p.is_absolute());
                assert!(!s.contains('\0'));
                assert!(!p.components().any(|c| c == std::path::Component::ParentDir));
            }
            let _ = validate::volume_id("volume_id", &s);
            let _ = validate::required("node_id", &s);
        }
        1 => {
            if let Ok(cap) = VolumeCapability::decode(rest) {
                let _ = validate::capability("volume_capability", Some(&cap));
            }
        }
        2 => {
            // A list of capabilities: length-delimited messages back to back.
            let mut caps = Vec::new();
            let mut buf = rest;
            while !buf.is_empty() {
                match VolumeCapability::decode_length_delimited(&mut buf) {
                    Ok(c) => caps.push(c),
                    Err(_) => break,
                }
            }
            let _ = validate::capabilities("volume_capabilities", &caps);
        }
        _ => {
            // A whole NodePublishVolume request, validated field by field
            // as the node service does.
            if let Ok(req) = NodePublishVolumeRequest::decode(rest) {
                let _ = validate::volume_id("volume_id", &req.volume_id);
                let _ = validate::path("target_path", &req.target_path);
                if !req.staging_target_path.is_empty() {
                    let _ = validate::path("staging_target_path", &req.staging_target_path);
                }
                let _ = validate::capability("volume_capability", req.volume_capability.as_ref());
            }
        }
    }
});

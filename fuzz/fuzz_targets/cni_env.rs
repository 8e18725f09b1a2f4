//! The CNI environment (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_IFNAME`,
//! `CNI_NETNS`): the input is split on NUL into the four values. Errors must
//! carry the invalid-environment code; accepted values must be safe to use
//! in paths and interface names.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let command = parts.next().map(str::to_owned);
    let id = parts.next().map(str::to_owned);
    let ifname = parts.next().map(str::to_owned);
    let netns = parts.next().map(str::to_owned);
    let env = cni_plugin::config::Env::parse(|k| match k {
        "CNI_COMMAND" => command.clone(),
        "CNI_CONTAINERID" => id.clone(),
        "CNI_IFNAME" => ifname.clone(),
        "CNI_NETNS" => netns.clone(),
        _ => None,
    });
    if let Ok(env) = env {
        // Accepted values never traverse out of their directory: no `/`,
        // and never `.` or `..` themselves (`a..b` is a valid, harmless id).
        assert!(!env.container_id.contains('/'));
        assert!(env.container_id != "." && env.container_id != "..");
        assert!(!env.ifname.contains('/') && env.ifname.len() < 16);
        if let Some(ns) = &env.netns {
            assert!(ns.is_absolute());
            assert!(
                !ns.components()
                    .any(|c| c == std::path::Component::ParentDir)
            );
        }
    }
});

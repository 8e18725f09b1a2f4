//! The CNI network configuration on stdin (`NetConf::parse`, the version
//! sniffer, and the CIDR parser it uses): errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cni_plugin::config::NetConf::sniff_version(data);
    if let Ok(conf) = cni_plugin::config::NetConf::parse(data) {
        // Every accepted pool must answer its own queries without panicking.
        for pool in &conf.pools {
            let _ = pool.size();
            let _ = pool.cidr();
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = cni_plugin::config::Cidr::parse(text) {
            let _ = c.contains(std::net::IpAddr::from([10, 0, 0, 1]));
            let _ = c.contains(std::net::IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]));
        }
    }
});

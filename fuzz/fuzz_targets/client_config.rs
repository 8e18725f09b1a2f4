//! Operator-supplied configuration (cloud-config YAML, credentials files,
//! durations): parse errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = iaas_client::Config::from_yaml_str(&text);
    let _ = iaas_client::config::parse_duration(&text);
});

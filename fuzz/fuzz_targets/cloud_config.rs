//! The CCM's `--cloud-config` YAML: parse and validate, errors never panics.
//! File references are cleared so the fuzzer never opens arbitrary paths.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(mut file) = serde_yaml::from_str::<cloud_provider::config::CloudConfigFile>(&text)
    else {
        return;
    };
    file.credentials_file = None;
    file.credentials_dir = None;
    let _ = cloud_provider::config::build(file, "fuzz.yaml", None, |k| match k {
        "QY_ACCESS_KEY_ID" => Some("AKIDFUZZ".into()),
        "QY_SECRET_ACCESS_KEY" => Some("fuzz-secret".into()),
        _ => None,
    });
});

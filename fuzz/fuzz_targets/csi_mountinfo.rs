//! `/proc/self/mountinfo` parsing (the node service decides what is mounted
//! where from it): errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(entries) = csi_driver::mount::parse_mountinfo(&text) {
        for e in &entries {
            let _ = e.read_only();
        }
    }
});

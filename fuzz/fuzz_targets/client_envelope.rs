//! Untrusted API responses: the client's envelope decoding returns a value or
//! an error, never panics, for any status and body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let status = data.first().map(|b| 100 + u16::from(*b) * 2).unwrap_or(200);
    let body = data.get(1..).unwrap_or_default();
    let _ = iaas_client::client::decode_envelope("DescribeVolumes", status, body);
});

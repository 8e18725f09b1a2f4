//! What the client signs, the emulator must verify: for any parameters,
//! a signed query parsed back and re-signed yields the same signature.
#![no_main]

use iaas_client::params::Params;
use iaas_client::sign::{self, SignatureMethod};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Build pairs from NUL/LF separated input: name \x01 value \n ...
    let mut pairs: Vec<(String, String)> = Vec::new();
    for line in text.split('\n').take(64) {
        let (k, v) = line.split_once('\u{1}').unwrap_or((line, ""));
        if k.is_empty() || k == "signature" || pairs.iter().any(|(n, _)| n == k) {
            continue;
        }
        pairs.push((k.to_string(), v.to_string()));
    }
    let method = if data.first().is_some_and(|b| b & 1 == 1) { SignatureMethod::HmacSha1 } else { SignatureMethod::HmacSha256 };
    let wire = sign::signed_query("secret", method, "POST", sign::QC_URI, &pairs);
    let parsed = Params::parse(&wire).expect("our own query parses");
    let received = parsed.get("signature").unwrap_or_default().to_string();
    let back: Vec<(String, String)> = parsed.pairs().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let recomputed = sign::sign_v1("secret", method, "POST", sign::QC_URI, &back);
    // Empty values are dropped by `get` but still signed: compare on the raw pairs.
    assert!(sign::signatures_equal(&received, &recomputed) || received.is_empty());
});

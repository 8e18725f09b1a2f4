//! The emulator's request verification on untrusted query strings: any input
//! is accepted only when correctly signed, and never panics.
#![no_main]

use iaas_client::params::Params;
use iaas_emulator::server::{Verifier, verify_request};
use libfuzzer_sys::fuzz_target;

const V: Verifier<'static> = Verifier {
    access_key_id: "FUZZKEY",
    secret_access_key: "fuzz-secret",
    zone: "emu1",
    max_clock_skew_secs: 60,
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(params) = Params::parse(&text) else { return };
    let now = time::OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap();
    for method in ["GET", "POST"] {
        if verify_request(&V, method, &params, now).is_ok() {
            // Only possible with a real signature over these exact parameters.
            let pairs: Vec<(&str, &str)> = params.pairs().filter(|(k, _)| *k != "signature").collect();
            let method_kind = iaas_client::sign::SignatureMethod::parse(params.get("signature_method").unwrap_or("")).unwrap();
            let expected = iaas_client::sign::sign_v1(V.secret_access_key, method_kind, method, iaas_client::sign::QC_URI, &pairs);
            assert_eq!(params.get("signature"), Some(expected.as_str()));
        }
    }
});

//! Untrusted query strings and form bodies: parsing and every typed getter
//! must return a value or a ParamError, never panic, whatever the input.
#![no_main]

use iaas_client::params::Params;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(params) = Params::parse(&text) else { return };
    let names: Vec<String> = params.pairs().map(|(k, _)| k.to_string()).collect();
    for name in names.iter().take(32) {
        let _ = params.required(name);
        let _ = params.opt::<u64>(name);
        let _ = params.flag(name);
        // Every prefix of a name may be a list or a record list.
        let mut prefix = String::new();
        for part in name.split('.') {
            if !prefix.is_empty() {
                let _ = params.list(&prefix);
                if let Ok(records) = params.records(&prefix) {
                    for r in records.iter().take(8) {
                        let _ = r.required("listener_port");
                        let _ = r.req::<u16>("port");
                    }
                }
                prefix.push('.');
            }
            prefix.push_str(part);
        }
    }
});

//! `cloudsuite-cni`: the CNI plugin binary the container runtime executes.

use std::io::{Read, Write};
use std::process::ExitCode;

use cni_plugin::config::{Env, NetConf};
use cni_plugin::error::{CniError, Code};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == cni_plugin::plugin::REAP_ARG {
        // A detached helper of DEL (see plugin::del); nobody reads its output.
        return match args[2].parse().map(cni_plugin::plugin::reap_link) {
            Ok(Ok(())) => ExitCode::SUCCESS,
            _ => ExitCode::FAILURE,
        };
    }
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = NetConf::sniff_version(&stdin);
    let outcome = read
        .map_err(|e| {
            CniError::new(Code::Io, "read the network configuration from stdin")
                .with_details(e.to_string())
        })
        .and_then(|_| Env::parse(|k| std::env::var(k).ok()))
        .and_then(|env| cni_plugin::plugin::run(&env, &stdin));
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(text) => {
            let _ = out.write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = out.write_all(e.to_json(&version).as_bytes());
            ExitCode::FAILURE
        }
    }
}

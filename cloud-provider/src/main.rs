//! `cloud-controller-manager`: parses flags and runs [`cloud_provider::manager::run`].

use clap::Parser;

// The suite's small runtime (two workers, capped malloc arenas): idle
// footprint, see suite_runtime::runtime.
fn main() -> std::process::ExitCode {
    suite_runtime::runtime::block_on(run())
}

async fn run() -> std::process::ExitCode {
    let flags = cloud_provider::config::Flags::parse();
    if let Err(e) = suite_runtime::logging::init(flags.log_format, "info,kube=warn") {
        eprintln!("{e}");
        return std::process::ExitCode::FAILURE;
    }
    match cloud_provider::manager::run(flags).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cloud-controller-manager failed");
            eprintln!("cloud-controller-manager: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

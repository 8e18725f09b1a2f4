//! `csi-driver`: parses flags and runs the services.

use clap::Parser;

// The suite's small runtime (two workers, capped malloc arenas): idle
// footprint, see suite_runtime::runtime.
fn main() -> std::process::ExitCode {
    suite_runtime::runtime::block_on(run())
}

async fn run() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = csi_driver::cli::Args::parse();
    match csi_driver::cli::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "csi-driver failed");
            eprintln!("csi-driver: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

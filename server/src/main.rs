//! `dlockd`: parses flags, environment and config file, starts tracing, runs a node until
//! SIGINT/SIGTERM. Everything else lives in the `dlock_server` library.

#![forbid(unsafe_code)]

use clap::Parser;

/// dlockd allocates many small, short-lived buffers per request (protobuf messages, Raft
/// entries, sled nodes); glibc's malloc showed up as ~15% of the leader's CPU in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use dlock_server::config::Settings;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let config = match Settings::parse().resolve() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("dlockd: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    match dlock_server::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "dlockd failed");
            eprintln!("dlockd: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

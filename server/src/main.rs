//! `dlockd`: parses flags, environment and config file, starts tracing, runs a node until
//! SIGINT/SIGTERM. Everything else lives in the `dlock_server` library.

use clap::Parser;
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

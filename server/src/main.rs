//! `dlockd`: parses flags and environment, starts tracing, runs a node until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use dlock_server::config::{Config, DEFAULT_CLIENT_ADDR, DEFAULT_DATA_DIR};
use tracing_subscriber::EnvFilter;

/// dlockd: the Win32 named-object namespace (mutexes, events, semaphores), served over gRPC and
/// replicated with Raft. With no flags it starts a one-node cluster on 127.0.0.1:7700 with its
/// data in ./dlockd-data.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// This node's Raft id.
    #[arg(long, env = "DLOCKD_NODE_ID", default_value_t = 1)]
    node_id: u64,
    /// Directory for the Raft log, hard state and snapshots (created if missing).
    #[arg(long, env = "DLOCKD_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Address of the client API (gRPC dlock.v1.Dlock).
    #[arg(long, env = "DLOCKD_CLIENT_ADDR", default_value = DEFAULT_CLIENT_ADDR)]
    client_addr: SocketAddr,
    /// TTL in milliseconds for sessions that do not ask for one.
    #[arg(long, env = "DLOCKD_SESSION_TTL_MS_DEFAULT")]
    session_ttl_ms_default: Option<u64>,
    /// Smallest session TTL in milliseconds.
    #[arg(long, env = "DLOCKD_SESSION_TTL_MS_MIN")]
    session_ttl_ms_min: Option<u64>,
    /// Largest session TTL in milliseconds.
    #[arg(long, env = "DLOCKD_SESSION_TTL_MS_MAX")]
    session_ttl_ms_max: Option<u64>,
    /// How often keepalive times are checkpointed into the log, in milliseconds.
    #[arg(long, env = "DLOCKD_CHECKPOINT_INTERVAL_MS")]
    checkpoint_interval_ms: Option<u64>,
    /// Raft tick in milliseconds.
    #[arg(long, env = "DLOCKD_TICK_MS")]
    tick_ms: Option<u64>,
    /// Snapshot the state machine every this many applied entries.
    #[arg(long, env = "DLOCKD_SNAPSHOT_INTERVAL_ENTRIES")]
    snapshot_interval_entries: Option<u64>,
    /// Largest client request in bytes.
    #[arg(long, env = "DLOCKD_REQUEST_BYTES_MAX")]
    request_bytes_max: Option<usize>,
}

impl Args {
    fn into_config(self) -> Config {
        let d = Config::default();
        Config {
            node_id: self.node_id,
            data_dir: self.data_dir,
            client_addr: self.client_addr,
            session_ttl_ms_default: self
                .session_ttl_ms_default
                .unwrap_or(d.session_ttl_ms_default),
            session_ttl_ms_min: self.session_ttl_ms_min.unwrap_or(d.session_ttl_ms_min),
            session_ttl_ms_max: self.session_ttl_ms_max.unwrap_or(d.session_ttl_ms_max),
            checkpoint_interval_ms: self
                .checkpoint_interval_ms
                .unwrap_or(d.checkpoint_interval_ms),
            tick_ms: self.tick_ms.unwrap_or(d.tick_ms),
            snapshot_interval_entries: self
                .snapshot_interval_entries
                .unwrap_or(d.snapshot_interval_entries),
            request_bytes_max: self.request_bytes_max.unwrap_or(d.request_bytes_max),
            ..d
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let config = Args::parse().into_config();
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

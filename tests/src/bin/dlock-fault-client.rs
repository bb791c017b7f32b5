//! The client of the container fault suite (`tests/tests/docker_faults.rs`): runs checked mutex
//! traffic ([`dlock_tests::contention`]) against the cluster named by `DLOCK_ENDPOINTS` for a
//! fixed time, then writes its recorded history as JSON to `OUT_DIR/<hostname>.json` and exits.
//!
//! ```text
//! dlock-fault-client --out DIR --duration-ms MS [--workers N] [--mutexes a,b] [--client-index I]
//! ```
//!
//! It stops after `--duration-ms`, or earlier once a file named `STOP` appears in `DIR` (the
//! suite's signal that its faults are over).
//!
//! Times are `CLOCK_MONOTONIC`, which containers share with the host, so the suite merges the
//! histories of every client container with its own and checks them as one. Client ids start at
//! `(I + 1) << 32` for `--client-index I`, which the suite gives each container, so that no two
//! collide (nor with the suite's own, below 2^32). The mutexes must exist (pinned by the suite)
//! before the traffic starts.

use std::process::ExitCode;
use std::time::Duration;

use dlock::{Client, ClientConfig};
use dlock_tests::contention::{Contention, Traffic};
use dlock_tests::history::Recorder;

/// The command line.
struct Args {
    out: std::path::PathBuf,
    duration: Duration,
    workers: u64,
    mutexes: Vec<String>,
    client_index: u64,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        out: "/histories".into(),
        duration: Duration::from_secs(60),
        workers: 4,
        mutexes: vec!["fault.a".into(), "fault.b".into()],
        client_index: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--out" => args.out = value()?.into(),
            "--duration-ms" => {
                let ms = value()?
                    .parse()
                    .map_err(|e| format!("--duration-ms: {e}"))?;
                args.duration = Duration::from_millis(ms);
            }
            "--workers" => {
                args.workers = value()?.parse().map_err(|e| format!("--workers: {e}"))?
            }
            "--mutexes" => args.mutexes = value()?.split(',').map(str::to_owned).collect(),
            "--client-index" => {
                args.client_index = value()?
                    .parse()
                    .map_err(|e| format!("--client-index: {e}"))?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.workers == 0 || args.workers > 64 || args.mutexes.is_empty() {
        return Err("--workers must be 1..=64 and --mutexes non-empty".into());
    }
    if args.client_index >= 1 << 20 {
        return Err("--client-index must be below 2^20".into());
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = match parse() {
        Ok(args) => args,
        Err(why) => {
            eprintln!("dlock-fault-client: {why}");
            return ExitCode::from(2);
        }
    };
    let hostname = std::env::var("HOSTNAME").unwrap_or_else(|_| std::process::id().to_string());
    let endpoints = std::env::var("DLOCK_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:7700".into());
    let mut config = ClientConfig::new(endpoints.split(','));
    config.client_name = format!("fault-client-{hostname}");
    config.request_timeout = Duration::from_secs(10);
    // Mutual TLS with DLOCK_CACERT, DLOCK_CERT and DLOCK_KEY when they are set.
    config.tls = match dlock::tls_from_env() {
        Ok(tls) => tls,
        Err(err) => {
            eprintln!("dlock-fault-client: {err}");
            return ExitCode::from(2);
        }
    };
    let client = match Client::connect_with_config(config).await {
        Ok(client) => client,
        Err(err) => {
            eprintln!("dlock-fault-client: {err}");
            return ExitCode::FAILURE;
        }
    };
    let rec = Recorder::system_monotonic();
    let traffic = Traffic {
        worker_ttl: Duration::from_secs(5),
        acquire_timeout_ms: 1_000,
        hold: Duration::from_millis(5),
        client_id_base: (args.client_index + 1) << 32,
        ..Traffic::default()
    };
    println!(
        "[fault-client {hostname}] {} workers on {:?} for {:?}",
        args.workers, args.mutexes, args.duration
    );
    let contention = Contention::start(&client, &rec, &args.mutexes, args.workers, traffic);
    let stop_file = args.out.join("STOP");
    let deadline = tokio::time::Instant::now() + args.duration;
    while tokio::time::Instant::now() < deadline && !stop_file.exists() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let grants = contention.grants();
    let stats = contention.stop().await;
    let history = rec.history();
    let path = args.out.join(format!("{hostname}.json"));
    let partial = args.out.join(format!(".{hostname}.json.partial"));
    let written = serde_json::to_vec(&history)
        .map_err(|e| e.to_string())
        .and_then(|json| std::fs::write(&partial, json).map_err(|e| e.to_string()))
        .and_then(|()| std::fs::rename(&partial, &path).map_err(|e| e.to_string()));
    if let Err(why) = written {
        eprintln!("dlock-fault-client: cannot write {}: {why}", path.display());
        return ExitCode::FAILURE;
    }
    let sessions: u64 = stats.iter().map(|s| s.sessions).sum();
    let unknown: u64 = stats.iter().map(|s| s.unknown).sum();
    println!(
        "[fault-client {hostname}] {grants} grants, {sessions} sessions, {unknown} unknown \
         outcomes, {} records in {}",
        history.records.len(),
        path.display()
    );
    ExitCode::SUCCESS
}

//! Single-node propose latency: 1000 sequential proposals (each waits for its fsync and apply),
//! then 10,000 proposals from 64 concurrent tasks (group commit).
//!
//! Run: `cargo run -p dlock-cluster --release --example propose_latency [DATA_DIR]`.
//! Without DATA_DIR, a temporary directory is used (ext4 on the same disk here).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dlock_cluster::{Config, NoTransport, Node};

mod common;

use common::{Counter, percentile};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| temp.path().to_path_buf());
    let config = Config {
        data_dir: dir,
        ..Config::default()
    };
    let node = Node::start(config, Box::new(Counter(0)), Arc::new(NoTransport)).expect("start");
    node.leadership()
        .wait_for(|l| l.is_leader)
        .await
        .expect("leader");

    let command = vec![7u8; 100];
    for _ in 0..100 {
        node.propose(command.clone()).await.expect("warm-up");
    }
    let mut samples = Vec::with_capacity(1000);
    let before = node.status();
    for _ in 0..1000 {
        let start = Instant::now();
        node.propose(command.clone()).await.expect("propose");
        samples.push(start.elapsed());
    }
    let after = node.status();
    samples.sort_unstable();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "sequential: 1000 proposals, p50 {:?}, p90 {:?}, p99 {:?}, max {:?}, mean {:?}, flushes {}",
        percentile(&samples, 0.50),
        percentile(&samples, 0.90),
        percentile(&samples, 0.99),
        samples[samples.len() - 1],
        mean,
        after.flushes - before.flushes
    );

    let before = node.status();
    let start = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let node = node.clone();
            let command = command.clone();
            tokio::spawn(async move {
                for _ in 0..10_000 / 64 {
                    node.propose(command.clone()).await.expect("propose");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let elapsed = start.elapsed();
    let after = node.status();
    let proposals = after.entries_appended - before.entries_appended;
    println!(
        "concurrent: {proposals} proposals from 64 tasks in {elapsed:?} ({:.0}/s), {} flushes ({:.1} entries per flush)",
        proposals as f64 / elapsed.as_secs_f64(),
        after.flushes - before.flushes,
        proposals as f64 / (after.flushes - before.flushes).max(1) as f64
    );
    node.shutdown();
}

//! Crash safety: a child process proposes in a loop and prints every acknowledged index; it is
//! killed with SIGKILL mid-stream, the store is reopened, and every acknowledged command must be
//! at its index. Repeated over several rounds on one directory, with frequent snapshots so that
//! kills also land during snapshot writes and compaction.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{ListSm, bounded, config, start};

/// Set in the child: the data directory to propose into.
const CHILD_DIR_ENV: &str = "DLOCK_CLUSTER_CRASH_CHILD_DIR";
/// Set in the child: the round number, used to make commands unique.
const CHILD_ROUND_ENV: &str = "DLOCK_CLUSTER_CRASH_CHILD_ROUND";
/// Acknowledgements the parent waits for before killing the child.
const ACKS_BEFORE_KILL: usize = 2_000;
const ROUNDS: usize = 5;
/// Concurrent proposers in the child, so kills hit multi-entry Readys.
const CHILD_PROPOSERS: usize = 8;

fn crash_config(dir: &std::path::Path) -> dlock_cluster::Config {
    dlock_cluster::Config {
        snapshot_interval_entries: 97,
        log_tail_entries: 13,
        // Segments fill every few dozen Readies, so that kills also land while the logged
        // writes go to sled and a new segment starts.
        wal_segment_bytes: dlock_cluster::storage::WAL_SEGMENT_BYTES_MIN * 4,
        ..config(dir)
    }
}

/// The child side: only active when re-invoked by `acknowledged_proposals_survive_sigkill`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let round: usize = std::env::var(CHILD_ROUND_ENV).unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let node = start(crash_config(dir.as_ref()), ListSm::default()).await;
        let mut tasks = Vec::new();
        for proposer in 0..CHILD_PROPOSERS {
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                for seq in 0u64.. {
                    let command = format!("r{round}-p{proposer}-{seq}");
                    let (index, _) = node.propose(command.clone().into_bytes()).await.unwrap();
                    // Printed only after the proposal is applied, hence durable.
                    println!("ACK {index} {command}");
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_proposals_survive_sigkill() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let mut acked: BTreeMap<u64, String> = BTreeMap::new();
        for round in 0..ROUNDS {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
                .env(CHILD_DIR_ENV, dir.path())
                .env(CHILD_ROUND_ENV, round.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let lines = tokio::task::spawn_blocking(move || {
                let mut lines = Vec::new();
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.starts_with("ACK ") {
                        lines.push(line);
                        if lines.len() == ACKS_BEFORE_KILL {
                            break;
                        }
                    }
                }
                lines
            })
            .await
            .unwrap();
            child.kill().unwrap(); // SIGKILL: no destructor, no flush, mid-Ready.
            child.wait().unwrap();
            assert_eq!(
                lines.len(),
                ACKS_BEFORE_KILL,
                "child died early in round {round}"
            );
            for line in lines {
                let mut parts = line.splitn(3, ' ');
                parts.next();
                let index: u64 = parts.next().unwrap().parse().unwrap();
                let command = parts.next().unwrap().to_string();
                let previous = acked.insert(index, command.clone());
                assert!(previous.is_none(), "index {index} acknowledged twice");
            }

            // Reopen and check every acknowledgement so far.
            let sm = ListSm::default();
            let node = start(crash_config(dir.path()), sm.clone()).await;
            node.read_index().await.unwrap();
            let applied: BTreeMap<u64, String> = sm
                .state
                .lock()
                .unwrap()
                .commands
                .iter()
                .map(|(i, c)| (*i, String::from_utf8(c.clone()).unwrap()))
                .collect();
            for (index, command) in &acked {
                assert_eq!(
                    applied.get(index),
                    Some(command),
                    "acknowledged index {index} lost after kill in round {round}"
                );
            }
            println!(
                "round {round}: {} acknowledged, {} applied after restart, status {:?}",
                acked.len(),
                applied.len(),
                node.status()
            );
            node.shutdown();
        }
    })
    .await;
}

//! Shared test helpers: a recording state machine and node start-up.
#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock_cluster::{Config, NoTransport, Node, StateMachine};

/// What the recording state machine holds: every applied command with its index.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// `(index, command)` in apply order.
    pub commands: Vec<(u64, Vec<u8>)>,
    /// Number of `restore` calls with a non-empty snapshot.
    pub restores: u64,
}

/// An append-only list of commands; replies with `"<index>:<count>"`.
#[derive(Clone, Default)]
pub struct ListSm {
    pub state: Arc<Mutex<Applied>>,
}

impl StateMachine for ListSm {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        let mut state = self.state.lock().unwrap();
        if let Some((last, _)) = state.commands.last() {
            assert!(index > *last, "apply went backwards: {index} after {last}");
        }
        state.commands.push((index, command.to_vec()));
        format!("{index}:{}", state.commands.len()).into_bytes()
    }

    fn snapshot(&mut self) -> dlock_cluster::SnapshotJob {
        // A plain copy: the test states are small.
        let commands = self.state.lock().unwrap().commands.clone();
        Box::new(move || {
            let mut out = Vec::new();
            for (index, command) in &commands {
                out.extend_from_slice(&index.to_be_bytes());
                out.extend_from_slice(&(command.len() as u32).to_be_bytes());
                out.extend_from_slice(command);
            }
            out
        })
    }

    fn restore(&mut self, _index: u64, mut data: &[u8]) -> Result<(), String> {
        let mut commands = Vec::new();
        while !data.is_empty() {
            if data.len() < 12 {
                return Err("truncated snapshot".into());
            }
            let index = u64::from_be_bytes(data[..8].try_into().unwrap());
            let len = u32::from_be_bytes(data[8..12].try_into().unwrap()) as usize;
            if data.len() < 12 + len {
                return Err("truncated command".into());
            }
            commands.push((index, data[12..12 + len].to_vec()));
            data = &data[12 + len..];
        }
        let mut state = self.state.lock().unwrap();
        state.commands = commands;
        state.restores += 1;
        Ok(())
    }
}

/// A one-node config on `dir` with a fast tick.
pub fn config(dir: &Path) -> Config {
    Config {
        node_id: 1,
        data_dir: dir.to_path_buf(),
        initial_voters: vec![1],
        tick_interval: Duration::from_millis(20),
        sled_cache_bytes: 8 * 1024 * 1024,
        ..Config::default()
    }
}

/// Starts a node and waits until it leads.
pub async fn start(config: Config, sm: ListSm) -> Node {
    let node = Node::start(config, Box::new(sm), Arc::new(NoTransport)).expect("start node");
    let mut leadership = node.leadership();
    leadership
        .wait_for(|l| l.is_leader)
        .await
        .expect("leadership watch closed");
    node
}

/// Runs `future` with a deadline so a hang fails the test instead of stalling the suite.
pub async fn bounded<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .expect("test exceeded its 30 s bound")
}

//! Three nodes on the simulated network (`dlock_cluster::sim`): a leader cut off from the other
//! two loses its leadership to them, cannot commit on its own, and after the partition heals
//! follows the new leader and applies exactly what the majority committed.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{ListSm, config};
use dlock_cluster::sim::Network;
use dlock_cluster::{Config, Node, Role};

/// How long the cluster may take to elect a leader, or to agree again after healing.
const DEADLINE: Duration = Duration::from_secs(20);

fn node_config(dir: &Path, id: u64) -> Config {
    Config {
        node_id: id,
        initial_voters: vec![1, 2, 3],
        ..config(&dir.join(id.to_string()))
    }
}

/// The leader of the highest term among `nodes`, once one leads.
async fn leader_among(nodes: &[&Node]) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let leader = nodes
            .iter()
            .map(|n| n.status())
            .filter(|s| s.role == Role::Leader)
            .max_by_key(|s| s.term)
            .map(|s| s.id);
        if let Some(id) = leader {
            return id;
        }
        assert!(Instant::now() < deadline, "no leader within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Proposes `command` on node `id`, retrying while it is not ready; the node must lead.
async fn propose_on(node: &Node, command: &[u8]) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match node.propose(command.to_vec()).await {
            Ok((index, _)) => return index,
            Err(err) if err.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(err) => panic!("propose on node {} failed: {err}", node.id()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_is_replaced_and_catches_up_after_healing() {
    let dir = tempfile::tempdir().unwrap();
    let net = Network::with_seed(7);
    let sms: Vec<ListSm> = (0..3).map(|_| ListSm::default()).collect();
    let nodes: Vec<Node> = (1..=3u64)
        .map(|id| {
            let sm = sms[id as usize - 1].clone();
            Node::start(node_config(dir.path(), id), Box::new(sm), net.transport(id)).unwrap()
        })
        .collect();
    let all: Vec<&Node> = nodes.iter().collect();
    let old = leader_among(&all).await;
    propose_on(&nodes[old as usize - 1], b"before").await;

    net.isolate(old);
    let others: Vec<&Node> = nodes.iter().filter(|n| n.id() != old).collect();
    let new = leader_among(&others).await;
    assert_ne!(new, old, "the majority side elects its own leader");
    let committed = propose_on(&nodes[new as usize - 1], b"during").await;

    // The old leader cannot commit anything on its own side.
    let lonely = tokio::time::timeout(
        Duration::from_millis(500),
        nodes[old as usize - 1].propose(b"lost".to_vec()),
    )
    .await;
    assert!(
        !matches!(lonely, Ok(Ok(_))),
        "an isolated node committed a proposal: {lonely:?}"
    );

    net.heal();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status = nodes[old as usize - 1].status();
        if status.role != Role::Leader && status.applied >= committed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {old} did not rejoin: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reference = sms[new as usize - 1].state.lock().unwrap().commands.clone();
    let rejoined = sms[old as usize - 1].state.lock().unwrap().commands.clone();
    assert_eq!(
        rejoined[..reference.len().min(rejoined.len())],
        reference[..reference.len().min(rejoined.len())],
        "the rejoined node applied the majority's log"
    );
    assert!(
        rejoined.iter().all(|(_, c)| c != b"lost"),
        "nothing the isolated leader proposed was applied"
    );
}

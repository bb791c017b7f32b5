//! Three nodes on the simulated network (`dlock_cluster::sim`): a leader cut off from the other
//! two cannot commit what it is asked to alone, loses its leadership to them, and after the
//! partition heals follows the new leader, applies exactly what the majority committed, and
//! never applies what it was asked while isolated.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{ListSm, config};
use dlock_cluster::sim::Network;
use dlock_cluster::{Config, Error, Node, Role};

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

/// Proposes `command` on whichever of `nodes` leads, following leader hints and retrying
/// retryable errors (leadership may move on a loaded machine).
async fn propose(nodes: &[&Node], command: &[u8]) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    let mut target = leader_among(nodes).await;
    loop {
        let node = nodes.iter().find(|n| n.id() == target).copied();
        let result = match node {
            Some(node) => node.propose(command.to_vec()).await,
            None => Err(Error::NotLeader { leader_hint: None }),
        };
        match result {
            Ok((index, _)) => return index,
            Err(err) if err.is_retryable() && Instant::now() < deadline => {
                target = match err {
                    Error::NotLeader {
                        leader_hint: Some(hint),
                    } => hint,
                    _ => leader_among(nodes).await,
                };
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(err) => panic!("propose failed: {err}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_commits_nothing_and_rejoins_the_majority() {
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
    propose(&all, b"before").await;
    let old = leader_among(&all).await;
    let old_node = nodes[old as usize - 1].clone();

    // Cut the leader off and, while it still believes it leads, ask it to commit something.
    net.isolate(old);
    let lonely = tokio::spawn(async move { old_node.propose(b"lost".to_vec()).await });

    let others: Vec<&Node> = nodes.iter().filter(|n| n.id() != old).collect();
    let committed = propose(&others, b"during").await;

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
    let lonely = tokio::time::timeout(DEADLINE, lonely)
        .await
        .expect("the isolated proposal ends once the node learns it lost leadership")
        .expect("the proposal task");
    assert!(
        lonely.is_err(),
        "a proposal made to an isolated leader was committed: {lonely:?}"
    );
    let new = leader_among(&others).await;
    let reference = sms[new as usize - 1].state.lock().unwrap().commands.clone();
    let rejoined = sms[old as usize - 1].state.lock().unwrap().commands.clone();
    let common = reference.len().min(rejoined.len());
    assert!(
        common >= 2,
        "both applied 'before' and 'during': {reference:?}"
    );
    assert_eq!(
        rejoined[..common],
        reference[..common],
        "the rejoined node applied the majority's log"
    );
    for sm in &sms {
        let applied = sm.state.lock().unwrap().commands.clone();
        assert!(
            applied.iter().all(|(_, c)| c != b"lost"),
            "nothing the isolated leader was asked was applied anywhere: {applied:?}"
        );
    }
}

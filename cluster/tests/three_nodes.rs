//! Three nodes in one process over an in-memory transport: replication, follower ReadIndex,
//! concurrent ReadIndex on a follower and the leader, and a snapshot installed on a node that
//! fell behind the leader's compacted log.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ListSm, bounded, config};
use dlock_cluster::{Config, Error, Node, Transport};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};

/// Delivers messages straight into the addressed node's inbound queue.
#[derive(Default)]
struct Mesh {
    nodes: Mutex<HashMap<u64, Node>>,
    /// While set, heartbeat responses are lost (a leader's ReadIndex then stays pending).
    drop_heartbeat_responses: AtomicBool,
    /// This many forwarded ReadIndex requests (follower to leader) are lost.
    drop_read_requests: AtomicUsize,
}

impl Transport for Mesh {
    fn send(&self, to: u64, bytes: Vec<u8>) {
        let nodes = self.nodes.lock().unwrap();
        let decoded = Message::parse_from_bytes(&bytes).unwrap();
        if decoded.get_msg_type() == MessageType::MsgHeartbeatResponse
            && self.drop_heartbeat_responses.load(Ordering::SeqCst)
        {
            return;
        }
        if decoded.get_msg_type() == MessageType::MsgReadIndex
            && self
                .drop_read_requests
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return;
        }
        let delivered = nodes.get(&to).is_some_and(|n| n.receive(bytes).is_ok());
        let Some(from) = nodes.get(&decoded.from) else {
            return;
        };
        if decoded.get_msg_type() == MessageType::MsgSnapshot {
            from.report_snapshot(to, delivered);
        }
        if !delivered {
            from.report_unreachable(to);
        }
    }
}

/// The node that leads, as the nodes themselves see it, once one does.
async fn wait_for_leader(mesh: &Arc<Mesh>) -> u64 {
    loop {
        let leader = mesh
            .nodes
            .lock()
            .unwrap()
            .values()
            .map(Node::status)
            .filter(|s| s.role == dlock_cluster::Role::Leader)
            .max_by_key(|s| s.term)
            .map(|s| s.id);
        if let Some(id) = leader {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn node_config(dir: &Path, id: u64) -> Config {
    Config {
        node_id: id,
        initial_voters: vec![1, 2, 3],
        snapshot_interval_entries: 40,
        log_tail_entries: 10,
        ..config(&dir.join(id.to_string()))
    }
}

fn start_node(mesh: &Arc<Mesh>, dir: &Path, id: u64, sm: ListSm) -> Node {
    let transport: Arc<dyn Transport> = mesh.clone();
    let node = Node::start(node_config(dir, id), Box::new(sm), transport).unwrap();
    mesh.nodes.lock().unwrap().insert(id, node.clone());
    node
}

/// Proposes on whichever node leads, following hints and retrying retryable errors.
async fn propose(mesh: &Arc<Mesh>, command: Vec<u8>) -> u64 {
    let mut target = 1;
    loop {
        let node = mesh.nodes.lock().unwrap().get(&target).cloned();
        let Some(node) = node else {
            target = target % 3 + 1;
            continue;
        };
        match node.propose(command.clone()).await {
            Ok((index, _)) => return index,
            Err(Error::NotLeader {
                leader_hint: Some(hint),
            }) => target = hint,
            Err(Error::NotLeader { leader_hint: None }) => {
                // No leader yet: wait for this node to learn of one.
                let mut leadership = node.leadership();
                let _ = leadership.wait_for(|l| l.leader_id.is_some()).await;
            }
            Err(err) if err.is_retryable() => {}
            Err(err) => panic!("propose failed: {err}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_and_catches_up_a_lagging_node_by_snapshot() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let mesh = Arc::new(Mesh::default());
        let sms: Vec<ListSm> = (0..3).map(|_| ListSm::default()).collect();
        for id in 1..=3 {
            start_node(&mesh, dir.path(), id, sms[id as usize - 1].clone());
        }
        for i in 0..30 {
            propose(&mesh, format!("one-{i}").into_bytes()).await;
        }
        // Every node, leader or follower, serves a linearizable read of all 30.
        let nodes: Vec<Node> = (1..=3)
            .map(|id| mesh.nodes.lock().unwrap()[&id].clone())
            .collect();
        for node in &nodes {
            node.read_index().await.unwrap();
        }
        let reference = sms[0].state.lock().unwrap().commands.clone();
        assert_eq!(reference.len(), 30);
        for sm in &sms {
            assert_eq!(sm.state.lock().unwrap().commands, reference);
        }

        // Stop a follower, move the log far past it, then bring it back.
        let leader = nodes[0].status().leader_id.unwrap();
        let lagging = if leader == 3 { 2 } else { 3 };
        let removed = mesh.nodes.lock().unwrap().remove(&lagging).unwrap();
        removed.shutdown();
        drop(removed);
        for i in 0..200 {
            propose(&mesh, format!("two-{i}").into_bytes()).await;
        }
        let leader_node = mesh.nodes.lock().unwrap()[&leader].clone();
        let leader_status = leader_node.status();
        assert!(leader_status.first_index > 40, "{leader_status:?}");

        let fresh = ListSm::default();
        let node = start_node(&mesh, dir.path(), lagging, fresh.clone());
        // A restarted follower knows no leader until the first heartbeat.
        let mut leadership = node.leadership();
        leadership
            .wait_for(|l| l.leader_id.is_some())
            .await
            .unwrap();
        node.read_index().await.unwrap();
        let status = node.status();
        assert!(status.snapshots >= 1, "caught up by snapshot: {status:?}");
        let expected = sms[leader as usize - 1]
            .state
            .lock()
            .unwrap()
            .commands
            .clone();
        let got = fresh.state.lock().unwrap().commands.clone();
        assert_eq!(got.len(), 230);
        assert_eq!(got, expected[..got.len()]);

        let all: Vec<Node> = mesh.nodes.lock().unwrap().drain().map(|(_, n)| n).collect();
        for node in &all {
            node.shutdown();
        }
    })
    .await;
}

/// Every node numbers its reads from the same start, so the first read on a follower and the
/// first on the leader have equal counters. The follower's read is forwarded to the leader
/// while the leader's own is still pending (heartbeat responses are lost meanwhile): raft-rs
/// silently ignores a read whose context equals a pending one, so with contexts that are only
/// a counter the follower's read was never answered and failed after its timeout. Contexts
/// carry the node id and incarnation, so both reads succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_on_a_follower_and_the_leader_with_equal_counters_both_succeed() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let mesh = Arc::new(Mesh::default());
        for id in 1..=3 {
            start_node(&mesh, dir.path(), id, ListSm::default());
        }
        // A leader that has committed in its term (it would defer reads otherwise).
        propose(&mesh, b"x".to_vec()).await;
        let leader_id = wait_for_leader(&mesh).await;
        let follower_id = (1..=3).find(|id| *id != leader_id).unwrap();
        let (leader, follower) = {
            let nodes = mesh.nodes.lock().unwrap();
            (nodes[&leader_id].clone(), nodes[&follower_id].clone())
        };
        follower
            .leadership()
            .wait_for(|l| l.leader_id == Some(leader_id))
            .await
            .unwrap();

        mesh.drop_heartbeat_responses.store(true, Ordering::SeqCst);
        let leader_read = tokio::spawn({
            let leader = leader.clone();
            async move { leader.read_index().await }
        });
        // The leader's read is pending now (its confirmations are lost)...
        tokio::time::sleep(Duration::from_millis(40)).await;
        let follower_read = tokio::spawn({
            let follower = follower.clone();
            async move { follower.read_index().await }
        });
        // ... when the follower's arrives (forwarded at once over the mesh).
        tokio::time::sleep(Duration::from_millis(40)).await;
        mesh.drop_heartbeat_responses.store(false, Ordering::SeqCst);

        let leader_index = leader_read.await.unwrap().expect("leader read");
        let follower_index = follower_read.await.unwrap().expect("follower read");
        assert!(leader_index >= 2, "{leader_index}");
        assert!(
            follower_index >= leader_index,
            "{follower_index} {leader_index}"
        );

        let all: Vec<Node> = mesh.nodes.lock().unwrap().drain().map(|(_, n)| n).collect();
        for node in &all {
            node.shutdown();
        }
    })
    .await;
}

/// A follower's forwarded ReadIndex that is lost on the way (or silently dropped by the
/// leader) is issued again with a fresh context and succeeds, instead of failing with
/// `Dropped` when its deadline passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_forwarded_read_is_retried_until_it_succeeds() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let mesh = Arc::new(Mesh::default());
        for id in 1..=3 {
            start_node(&mesh, dir.path(), id, ListSm::default());
        }
        let index = propose(&mesh, b"x".to_vec()).await;
        let leader_id = wait_for_leader(&mesh).await;
        let follower_id = (1..=3).find(|id| *id != leader_id).unwrap();
        let follower = mesh.nodes.lock().unwrap()[&follower_id].clone();
        follower
            .leadership()
            .wait_for(|l| l.leader_id == Some(leader_id))
            .await
            .unwrap();
        mesh.drop_read_requests.store(1, Ordering::SeqCst);
        let read = follower.read_index().await.expect("follower read");
        assert!(read >= index, "{read} {index}");
        assert_eq!(mesh.drop_read_requests.load(Ordering::SeqCst), 0);

        let all: Vec<Node> = mesh.nodes.lock().unwrap().drain().map(|(_, n)| n).collect();
        for node in &all {
            node.shutdown();
        }
    })
    .await;
}

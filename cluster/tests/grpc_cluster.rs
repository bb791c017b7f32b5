//! Clusters of in-process nodes connected by the real gRPC peer transport over 127.0.0.1:
//! failover and catch-up, a snapshot larger than tonic's 4 MiB default, a new node caught up
//! by a snapshot in many chunks, a snapshot the receiver had to drop reported failed, membership
//! changes under a stream of proposals, and a restart that ignores a different initial cluster.
//! A wiped node catches up from a snapshot of the largest state dlockd's limits allow (320 MiB).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ListSm, bounded};
use dlock_cluster::transport::{GrpcTransport, PeerLimits, RaftPeerService};
use dlock_cluster::{Config, Error, MemberKind, Node, Role, StateMachine};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

/// How long any one condition may take before the test fails.
const WAIT: Duration = Duration::from_secs(20);

/// One running node: raft node, its state machine and its gRPC peer server.
struct Running {
    node: Node,
    sm: ListSm,
    transport: Arc<GrpcTransport>,
    server: JoinHandle<()>,
}

impl Running {
    /// Stops the node and its server (a crash as far as the peers can tell).
    async fn kill(self) {
        self.node.shutdown();
        self.server.abort();
        let _ = self.server.await;
    }
}

fn node_config(dir: &Path, id: u64, cluster: &BTreeMap<u64, String>) -> Config {
    Config {
        node_id: id,
        data_dir: dir.join(id.to_string()),
        initial_cluster: cluster.clone(),
        tick_interval: Duration::from_millis(20),
        snapshot_interval_entries: 50,
        log_tail_entries: 10,
        sled_cache_bytes: 8 * 1024 * 1024,
        ..Config::default()
    }
}

/// Logs to the test output if `RUST_LOG` is set (e.g. `RUST_LOG=dlock_cluster=info`).
fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Starts a node with a real gRPC transport, serving its peer service on `listener`.
async fn launch(config: Config, sm: ListSm, listener: TcpListener) -> Running {
    launch_with(config, sm, listener, PeerLimits::default()).await
}

/// [`launch`] with the transport's `limits` on both sides.
async fn launch_with(
    config: Config,
    sm: ListSm,
    listener: TcpListener,
    limits: PeerLimits,
) -> Running {
    let running = launch_any(config, Box::new(sm.clone()), listener, limits).await;
    Running {
        node: running.0,
        sm,
        transport: running.1,
        server: running.2,
    }
}

/// Starts a node with any state machine; returns the node, its transport and its server task.
async fn launch_any(
    config: Config,
    sm: Box<dyn StateMachine>,
    listener: TcpListener,
    limits: PeerLimits,
) -> (Node, Arc<GrpcTransport>, JoinHandle<()>) {
    init_tracing();
    let transport = GrpcTransport::with_limits(config.node_id, limits);
    let node = Node::start(config, sm, transport.clone()).expect("start node");
    let service = RaftPeerService::with_limits(node.clone(), limits);
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpIncoming::from(listener))
            .await;
    });
    (node, transport, server)
}

/// Binds `n` listeners on ephemeral ports.
/// Starts nodes 1-3 on the first three of `bound`, each with `tweak` applied to its
/// [`node_config`]. Returns the initial cluster (id to peer address) and the running nodes.
async fn launch_three(
    dir: &Path,
    bound: Vec<(TcpListener, SocketAddr)>,
    tweak: impl Fn(Config) -> Config,
) -> (BTreeMap<u64, String>, BTreeMap<u64, Running>) {
    launch_three_with(dir, bound, tweak, PeerLimits::default()).await
}

/// [`launch_three`] with the transport's `limits`.
async fn launch_three_with(
    dir: &Path,
    bound: Vec<(TcpListener, SocketAddr)>,
    tweak: impl Fn(Config) -> Config,
    limits: PeerLimits,
) -> (BTreeMap<u64, String>, BTreeMap<u64, Running>) {
    let cluster: BTreeMap<u64, String> = (1..=3)
        .map(|id| (id, bound[id as usize - 1].1.to_string()))
        .collect();
    let mut running = BTreeMap::new();
    for (i, (listener, _)) in bound.into_iter().enumerate() {
        let id = i as u64 + 1;
        let config = tweak(node_config(dir, id, &cluster));
        running.insert(
            id,
            launch_with(config, ListSm::default(), listener, limits).await,
        );
    }
    (cluster, running)
}

async fn listeners(n: usize) -> Vec<(TcpListener, SocketAddr)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        out.push((listener, addr));
    }
    out
}

/// Binds `addr` again after its node was killed (the old listener is closed by then; sled-like
/// lingering is not an issue for TCP with SO_REUSEADDR, which tokio sets).
async fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(err) if Instant::now() < deadline => {
                let _ = err;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(err) => panic!("cannot rebind {addr}: {err}"),
        }
    }
}

/// Polls `condition` until it holds, failing the test after [`WAIT`].
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

type Nodes = Arc<Mutex<BTreeMap<u64, Node>>>;

fn handles(running: &BTreeMap<u64, Running>) -> Nodes {
    Arc::new(Mutex::new(
        running
            .iter()
            .map(|(id, r)| (*id, r.node.clone()))
            .collect(),
    ))
}

/// The node that currently leads, as seen by the nodes themselves (highest term wins).
fn leader(nodes: &Nodes) -> Option<u64> {
    let nodes = nodes.lock().unwrap();
    nodes
        .values()
        .map(Node::status)
        .filter(|s| s.role == Role::Leader && !s.stopped)
        .max_by_key(|s| s.term)
        .map(|s| s.id)
}

async fn wait_for_leader(nodes: &Nodes) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(id) = leader(nodes) {
            return id;
        }
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Proposes on whichever node leads, retrying retryable errors until [`WAIT`] runs out.
async fn propose(nodes: &Nodes, command: Vec<u8>) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "proposal never succeeded");
        let target = leader(nodes).and_then(|id| nodes.lock().unwrap().get(&id).cloned());
        let Some(node) = target else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        match node.propose(command.clone()).await {
            Ok((index, _)) => return index,
            Err(err) if err.is_retryable() || err == Error::Stopped => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(err) => panic!("propose failed: {err}"),
        }
    }
}

/// Runs a membership change on whichever node leads, retrying retryable errors.
async fn change<F, Fut>(nodes: &Nodes, what: &str, mut op: F) -> u64
where
    F: FnMut(Node) -> Fut,
    Fut: std::future::Future<Output = Result<u64, Error>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "{what} never succeeded");
        let target = leader(nodes).and_then(|id| nodes.lock().unwrap().get(&id).cloned());
        if let Some(node) = target {
            match op(node).await {
                Ok(index) => return index,
                Err(err) if err.is_retryable() => {}
                Err(err) => panic!("{what} failed: {err}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `node` has applied at least `index`.
async fn wait_applied(node: &Node, index: u64) {
    let id = node.id();
    wait_until(&format!("node {id} applied {index}"), || {
        node.status().applied >= index
    })
    .await;
}

/// A condition: `n` more proposals acknowledged than now.
fn progressed(acked: &Arc<AtomicU64>, n: u64) -> impl FnMut() -> bool + use<> {
    let acked = acked.clone();
    let target = acked.load(Ordering::SeqCst) + n;
    move || acked.load(Ordering::SeqCst) >= target
}

fn commands(sm: &ListSm) -> Vec<(u64, Vec<u8>)> {
    sm.state.lock().unwrap().commands.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_fails_over_and_catches_up_a_restarted_node() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let bound = listeners(3).await;
        let (cluster, mut running) = launch_three(dir.path(), bound, |c| c).await;
        let nodes = handles(&running);
        let first_leader = wait_for_leader(&nodes).await;
        let mut last = 0;
        for i in 0..20 {
            last = propose(&nodes, format!("a-{i}").into_bytes()).await;
        }
        for r in running.values() {
            wait_applied(&r.node, last).await;
            // Everyone knows everyone's address, from the initial cluster.
            assert_eq!(r.node.peers(), cluster);
            let others: BTreeMap<u64, String> = cluster
                .iter()
                .filter(|(id, _)| **id != r.node.id())
                .map(|(id, a)| (*id, a.clone()))
                .collect();
            assert_eq!(r.transport.peers(), others);
        }
        let reference = commands(&running[&1].sm);
        assert_eq!(reference.len(), 20);
        for r in running.values() {
            assert_eq!(commands(&r.sm), reference);
        }
        // The leader's status reports every member and how far each has replicated (a
        // follower may apply an entry before the leader has processed its acknowledgement).
        let leader_node = running[&first_leader].node.clone();
        wait_until("the leader saw every member match the last entry", || {
            let status = leader_node.status();
            status
                .members
                .iter()
                .all(|m| m.matched.is_some_and(|i| i >= last))
        })
        .await;
        let status = leader_node.status();
        assert_eq!(status.members.len(), 3);
        for member in &status.members {
            assert_eq!(member.kind, MemberKind::Voter);
            assert_eq!(
                member.address.as_deref(),
                Some(cluster[&member.id].as_str())
            );
            assert!(member.matched.unwrap() >= last, "{status:?}");
        }
        assert_eq!(status.leader_id, Some(first_leader));

        // Kill the leader: a new one is elected and progress continues.
        let killed = running.remove(&first_leader).unwrap();
        nodes.lock().unwrap().remove(&first_leader);
        killed.kill().await;
        let second_leader = wait_for_leader(&nodes).await;
        assert_ne!(second_leader, first_leader);
        for i in 0..20 {
            propose(&nodes, format!("b-{i}").into_bytes()).await;
        }

        // Restart the old leader on the same address: it catches up.
        let listener = rebind(cluster[&first_leader].parse().unwrap()).await;
        let config = node_config(dir.path(), first_leader, &cluster);
        let restarted = launch(config, ListSm::default(), listener).await;
        nodes
            .lock()
            .unwrap()
            .insert(first_leader, restarted.node.clone());
        running.insert(first_leader, restarted);
        last = propose(&nodes, b"c-0".to_vec()).await;
        for r in running.values() {
            wait_applied(&r.node, last).await;
        }
        let reference = commands(&running[&second_leader].sm);
        assert!(reference.len() >= 41, "{}", reference.len());
        for r in running.values() {
            assert_eq!(commands(&r.sm), reference);
        }
        for (_, r) in std::mem::take(&mut running) {
            r.kill().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_behind_node_catches_up_by_a_snapshot_above_4_mib() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let bound = listeners(3).await;
        let (cluster, mut running) = launch_three(dir.path(), bound, |c| Config {
            snapshot_interval_entries: 20,
            log_tail_entries: 5,
            ..c
        })
        .await;
        let nodes = handles(&running);
        let leader_id = wait_for_leader(&nodes).await;
        propose(&nodes, b"first".to_vec()).await;

        let lagging = if leader_id == 3 { 2 } else { 3 };
        let stopped = running.remove(&lagging).unwrap();
        nodes.lock().unwrap().remove(&lagging);
        stopped.kill().await;

        // 80 commands of 64 KiB: a state machine image of over 5 MiB.
        let mut last = 0;
        for i in 0..80u8 {
            let mut command = vec![i; 64 * 1024];
            command[0] = b'x';
            last = propose(&nodes, command).await;
        }
        let leader_node = nodes.lock().unwrap()[&leader_id].clone();
        let before = leader_node.status();
        assert!(before.first_index > 20, "log compacted: {before:?}");

        let listener = rebind(cluster[&lagging].parse().unwrap()).await;
        let config = Config {
            snapshot_interval_entries: 20,
            log_tail_entries: 5,
            ..node_config(dir.path(), lagging, &cluster)
        };
        let fresh = ListSm::default();
        let restarted = launch(config, fresh.clone(), listener).await;
        wait_applied(&restarted.node, last).await;
        let status = restarted.node.status();
        assert!(status.snapshots >= 1, "caught up by snapshot: {status:?}");
        let image_bytes: usize = commands(&fresh).iter().map(|(_, c)| c.len()).sum();
        assert!(image_bytes > 5 * 1024 * 1024, "{image_bytes}");
        // The transport reported the delivery, so the leader went on replicating at once.
        wait_until("the leader saw the snapshot delivered", || {
            leader_node.status().snapshots_sent >= 1
        })
        .await;
        // Only the leader's view matters, but any current leader would do.
        assert_eq!(commands(&fresh), commands(&running[&leader_id].sm));
        assert_eq!(restarted.node.peers(), cluster);

        running.insert(lagging, restarted);
        for (_, r) in std::mem::take(&mut running) {
            r.kill().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_a_learner_promote_it_and_remove_the_leader_under_traffic() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let mut bound = listeners(4).await;
        let (listener4, addr4) = bound.pop().unwrap();
        let (cluster, mut running) = launch_three(dir.path(), bound, |c| c).await;
        let nodes = handles(&running);
        let first_leader = wait_for_leader(&nodes).await;

        // A stream of proposals for the whole membership dance.
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let traffic = {
            let (nodes, stop, acked) = (nodes.clone(), stop.clone(), acked.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                let mut acknowledged = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let command = format!("t-{i}").into_bytes();
                    propose(&nodes, command.clone()).await;
                    acknowledged.push(command);
                    acked.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
                acknowledged
            })
        };

        // Misuse is refused clearly.
        let leader_node = nodes.lock().unwrap()[&first_leader].clone();
        let follower = (1..=3).find(|id| *id != first_leader).unwrap();
        let follower_node = nodes.lock().unwrap()[&follower].clone();
        assert!(matches!(
            follower_node.add_learner(4, addr4.to_string()).await,
            Err(Error::NotLeader { .. })
        ));
        assert!(matches!(
            leader_node.add_learner(follower, "x:1").await,
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            leader_node.promote_learner(follower).await,
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            leader_node.remove_node(9).await,
            Err(Error::InvalidInput(_))
        ));

        // Node 4 starts empty: not in the initial cluster, so it joins.
        let config4 = node_config(dir.path(), 4, &cluster);
        let node4 = launch(config4, ListSm::default(), listener4).await;
        assert!(node4.node.membership().borrow().voters.is_empty());
        let addr4 = addr4.to_string();
        let added = change(&nodes, "add_learner", |n| {
            let addr4 = addr4.clone();
            async move { n.add_learner(4, addr4).await }
        })
        .await;
        nodes.lock().unwrap().insert(4, node4.node.clone());
        running.insert(4, node4);
        wait_until("traffic after add_learner", progressed(&acked, 10)).await;
        // The learner catches up (through a snapshot that names it).
        let commit = leader_node.status().commit;
        wait_applied(&running[&4].node, commit.max(added)).await;
        let membership = running[&4].node.membership().borrow().clone();
        assert_eq!(membership.learners, vec![4]);
        assert_eq!(membership.peers.get(&4), Some(&addr4));
        assert_eq!(membership.peers.len(), 4);
        assert_eq!(running[&4].node.status().role, Role::Follower);

        change(&nodes, "promote_learner", |n| async move {
            n.promote_learner(4).await
        })
        .await;
        wait_until("traffic after promote", progressed(&acked, 10)).await;

        // Remove the leader itself: it hands leadership over (answering NotLeader with the
        // new leader as hint), and the retry on the new leader removes it.
        let removed = wait_for_leader(&nodes).await;
        let removed_node = nodes.lock().unwrap()[&removed].clone();
        match removed_node.remove_node(removed).await {
            Err(Error::NotLeader {
                leader_hint: Some(hint),
            }) => assert_ne!(hint, removed),
            other => panic!("removing the leader itself: {other:?}"),
        }
        let index = change(&nodes, "remove the old leader", |n| async move {
            n.remove_node(removed).await
        })
        .await;
        assert_ne!(removed_node.status().role, Role::Leader);
        nodes.lock().unwrap().remove(&removed);
        let new_leader = wait_for_leader(&nodes).await;
        assert_ne!(new_leader, removed);
        wait_until("traffic after remove", progressed(&acked, 10)).await;
        running.remove(&removed).unwrap().kill().await;

        stop.store(true, Ordering::SeqCst);
        let acknowledged = traffic.await.unwrap();
        assert!(acknowledged.len() >= 30);
        let last = propose(&nodes, b"end".to_vec()).await;
        let mut expected_voters: Vec<u64> = (1..=4).filter(|id| *id != removed).collect();
        expected_voters.sort_unstable();
        for r in running.values() {
            wait_applied(&r.node, last).await;
            let membership = r.node.membership().borrow().clone();
            assert_eq!(membership.voters, expected_voters);
            assert!(membership.learners.is_empty());
            assert!(membership.index >= index);
            assert!(!membership.peers.contains_key(&removed));
            assert!(!r.transport.peers().contains_key(&removed));
        }
        let reference = commands(&running[&new_leader].sm);
        for r in running.values() {
            assert_eq!(commands(&r.sm), reference);
        }
        let applied: std::collections::HashSet<Vec<u8>> =
            reference.into_iter().map(|(_, c)| c).collect();
        for command in &acknowledged {
            assert!(applied.contains(command), "acknowledged command lost");
        }
        for (_, r) in std::mem::take(&mut running) {
            r.kill().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_stored_state_ignores_a_different_initial_cluster() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (listener, addr) = listeners(1).await.pop().unwrap();
        let alone = BTreeMap::from([(1, addr.to_string())]);
        let first = launch(
            node_config(dir.path(), 1, &alone),
            ListSm::default(),
            listener,
        )
        .await;
        let running = BTreeMap::from([(1, first)]);
        let nodes = handles(&running);
        wait_for_leader(&nodes).await;
        let index = propose(&nodes, b"kept".to_vec()).await;
        nodes.lock().unwrap().clear();
        for (_, r) in running {
            r.kill().await;
        }

        let other = BTreeMap::from([
            (1, "127.0.0.1:1".to_string()),
            (2, "127.0.0.1:2".to_string()),
            (3, "127.0.0.1:3".to_string()),
        ]);
        let listener = rebind(addr).await;
        let sm = ListSm::default();
        let again = launch(node_config(dir.path(), 1, &other), sm.clone(), listener).await;
        let membership = again.node.membership().borrow().clone();
        assert_eq!(membership.voters, vec![1]);
        assert_eq!(membership.peers, alone);
        assert!(again.transport.peers().is_empty());
        // Still a cluster of one: it leads alone and kept its data.
        let running = BTreeMap::from([(1, again)]);
        let nodes = handles(&running);
        wait_for_leader(&nodes).await;
        let next = propose(&nodes, b"more".to_vec()).await;
        assert!(next > index);
        let got: Vec<Vec<u8>> = commands(&sm).into_iter().map(|(_, c)| c).collect();
        assert_eq!(got, vec![b"kept".to_vec(), b"more".to_vec()]);
        nodes.lock().unwrap().clear();
        for (_, r) in running {
            r.kill().await;
        }
    })
    .await;
}

/// Chunks of 64 KiB: the snapshot a new learner needs (over 5 MiB) travels in about 90 chunks,
/// is reassembled and installed, and the learner then follows the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_catches_up_from_a_snapshot_in_many_chunks() {
    bounded(async {
        let limits = PeerLimits {
            chunk_bytes: 64 * 1024,
            message_bytes_max: 64 * 1024 * 1024,
        };
        let tweak = |c: Config| Config {
            snapshot_interval_entries: 20,
            log_tail_entries: 5,
            ..c
        };
        let dir = tempfile::tempdir().unwrap();
        let mut bound = listeners(4).await;
        let (listener4, addr4) = bound.pop().unwrap();
        let (cluster, mut running) = launch_three_with(dir.path(), bound, tweak, limits).await;
        let nodes = handles(&running);
        let leader_id = wait_for_leader(&nodes).await;
        // 80 commands of 64 KiB: a state machine image of over 5 MiB.
        for i in 0..80u8 {
            let mut command = vec![i; 64 * 1024];
            command[0] = b'x';
            propose(&nodes, command).await;
        }
        let leader_node = nodes.lock().unwrap()[&leader_id].clone();
        assert!(leader_node.status().first_index > 20, "log compacted");

        let fresh = ListSm::default();
        let config4 = tweak(node_config(dir.path(), 4, &cluster));
        let node4 = launch_with(config4, fresh.clone(), listener4, limits).await;
        let added = change(&nodes, "add_learner", |n| {
            let addr4 = addr4.to_string();
            async move { n.add_learner(4, addr4).await }
        })
        .await;
        let last = propose(&nodes, b"after".to_vec()).await;
        wait_applied(&node4.node, last.max(added)).await;
        let status = node4.node.status();
        assert!(status.snapshots >= 1, "caught up by snapshot: {status:?}");
        let image_bytes: usize = commands(&fresh).iter().map(|(_, c)| c.len()).sum();
        assert!(image_bytes > 80 * limits.chunk_bytes, "{image_bytes}");
        assert_eq!(commands(&fresh), commands(&running[&leader_id].sm));
        // The sender counts a snapshot once its task reports the receiver's acknowledgement to
        // the raft thread, which can come after node 4 has applied it and more (appends resume
        // on node 4's response); and under load leadership may have moved meanwhile. Wait
        // (bounded) for some node to have counted it.
        let all = handles(&running);
        wait_until("some node counted the snapshot as sent", || {
            all.lock()
                .unwrap()
                .values()
                .map(|n| n.status().snapshots_sent)
                .sum::<u64>()
                >= 1
        })
        .await;

        running.insert(4, node4);
        for (_, r) in std::mem::take(&mut running) {
            r.kill().await;
        }
    })
    .await;
}

/// A state machine whose `apply` blocks on the command `block` until the test releases it,
/// holding the raft thread (and so letting its inbound queue fill up).
struct GateSm {
    entered: std::sync::mpsc::Sender<()>,
    release: Arc<Mutex<std::sync::mpsc::Receiver<()>>>,
}

impl StateMachine for GateSm {
    fn apply(&mut self, _index: u64, command: &[u8]) -> Vec<u8> {
        if command == b"block" {
            let _ = self.entered.send(());
            let _ = self.release.lock().unwrap().recv();
        }
        Vec::new()
    }

    fn snapshot(&mut self) -> dlock_cluster::SnapshotJob {
        Box::new(Vec::new)
    }

    fn restore(&mut self, _index: u64, _data: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

fn encoded(kind: MessageType, from: u64, to: u64) -> Vec<u8> {
    let mut message = Message::default();
    message.set_msg_type(kind);
    message.from = from;
    message.to = to;
    message.term = 1;
    if kind == MessageType::MsgSnapshot {
        message.mut_snapshot().set_data(vec![7u8; 1000].into());
        message.mut_snapshot().mut_metadata().index = 50;
        message.mut_snapshot().mut_metadata().term = 1;
    }
    message.write_to_bytes().unwrap()
}

/// The receiver's inbound queue is full when a snapshot arrives, so it drops it: the sender
/// must hear about that and report the snapshot failed (raft then sends it again), not
/// delivered because the stream was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_the_receiver_dropped_is_reported_failed() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let mut bound = listeners(2).await;
        let (listener2, addr2) = bound.pop().unwrap();
        let (listener1, _) = bound.pop().unwrap();
        // Node 2: a cluster of its own, whose raft thread the test blocks.
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let gate = GateSm {
            entered: entered_tx,
            release: Arc::new(Mutex::new(release_rx)),
        };
        let config2 = Config {
            initial_voters: vec![2],
            message_queue_max: 4,
            ..node_config(dir.path(), 2, &BTreeMap::new())
        };
        let (receiver, _, server2) =
            launch_any(config2, Box::new(gate), listener2, PeerLimits::default()).await;
        receiver
            .leadership()
            .wait_for(|l| l.is_leader)
            .await
            .unwrap();
        // Node 1: the sender, a cluster of its own too, with node 2 set as a peer by hand.
        let config1 = Config {
            initial_voters: vec![1],
            ..node_config(dir.path(), 1, &BTreeMap::new())
        };
        let (sender, transport, server1) = launch_any(
            config1,
            Box::new(GateSm {
                entered: std::sync::mpsc::channel().0,
                release: Arc::new(Mutex::new(std::sync::mpsc::channel().1)),
            }),
            listener1,
            PeerLimits::default(),
        )
        .await;
        transport.set_peer(2, addr2.to_string());

        // Block node 2's raft thread, then fill its inbound queue.
        let blocked = tokio::spawn({
            let receiver = receiver.clone();
            async move { receiver.propose(b"block".to_vec()).await }
        });
        tokio::task::spawn_blocking(move || entered.recv().unwrap())
            .await
            .unwrap();
        let mut queued = 0;
        while receiver
            .receive(encoded(MessageType::MsgHeartbeat, 1, 2))
            .is_ok()
        {
            queued += 1;
        }
        assert_eq!(queued, 4);

        use dlock_cluster::Transport as _;
        transport.send(2, encoded(MessageType::MsgSnapshot, 1, 2));
        wait_until("the sender reported the snapshot", || {
            let status = sender.status();
            status.snapshots_sent + status.snapshots_failed >= 1
        })
        .await;
        let status = sender.status();
        assert_eq!(
            (status.snapshots_sent, status.snapshots_failed),
            (0, 1),
            "a dropped snapshot must be reported failed"
        );

        release.send(()).unwrap();
        blocked.await.unwrap().unwrap();
        sender.shutdown();
        receiver.shutdown();
        server1.abort();
        server2.abort();
    })
    .await;
}

/// A state machine holding one blob: `grow:N` replaces it with N bytes of a fixed pattern. The
/// blob is shared (`Arc`), so freezing it for a snapshot is O(1), as with dlockd's namespace.
#[derive(Default, Clone)]
struct BlobSm {
    blob: Arc<Mutex<Arc<Vec<u8>>>>,
}

impl BlobSm {
    fn blob(&self) -> Arc<Vec<u8>> {
        self.blob.lock().unwrap().clone()
    }
}

fn pattern(n: usize) -> Vec<u8> {
    let block: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let take = (n - out.len()).min(block.len());
        out.extend_from_slice(&block[..take]);
    }
    out
}

impl StateMachine for BlobSm {
    fn apply(&mut self, _index: u64, command: &[u8]) -> Vec<u8> {
        if let Some(n) = std::str::from_utf8(command)
            .ok()
            .and_then(|c| c.strip_prefix("grow:"))
            .and_then(|n| n.parse::<usize>().ok())
        {
            *self.blob.lock().unwrap() = Arc::new(pattern(n));
        }
        Vec::new()
    }

    fn snapshot(&mut self) -> dlock_cluster::SnapshotJob {
        let blob = self.blob();
        Box::new(move || blob.to_vec())
    }

    fn restore(&mut self, _index: u64, data: &[u8]) -> Result<(), String> {
        *self.blob.lock().unwrap() = Arc::new(data.to_vec());
        Ok(())
    }
}

/// The largest state dlockd's limits allow: `dlock_server::namespace::STATE_IMAGE_BYTES_MAX`
/// (its test `the_largest_state_fits_its_bound` builds that state and checks it fits).
const LARGEST_STATE_BYTES: usize = 320 << 20;

/// How long a wiped node may take to catch up from a snapshot of the largest state (debug
/// build, three nodes in one process on a 2-core machine); the README states it.
const LARGEST_CATCH_UP_MAX: Duration = Duration::from_secs(120);

/// Three nodes with dlockd's default timing (50 ms ticks) hold the largest state; node 3 is
/// removed, wiped and rejoins empty: it catches up from a snapshot of that state (built in the
/// background by the others, sent in 4 MiB chunks) within [`LARGEST_CATCH_UP_MAX`], and holds
/// the same bytes. Prints the time taken and whether the leader kept its term throughout
/// (snapshots are built off the raft thread, so it should).
/// `DLOCK_BIG_SNAPSHOT_MB` overrides the size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_catches_up_from_a_snapshot_of_the_largest_state() {
    let bytes: usize = std::env::var("DLOCK_BIG_SNAPSHOT_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(LARGEST_STATE_BYTES, |mb| mb << 20);
    let dir = tempfile::tempdir().unwrap();
    let config = |id: u64, cluster: &BTreeMap<u64, String>| Config {
        tick_interval: Duration::from_millis(50),
        sled_cache_bytes: 64 * 1024 * 1024,
        ..node_config(dir.path(), id, cluster)
    };
    let bound = listeners(3).await;
    let addrs: Vec<SocketAddr> = bound.iter().map(|(_, a)| *a).collect();
    let cluster: BTreeMap<u64, String> = (1..=3)
        .map(|id| (id, addrs[id as usize - 1].to_string()))
        .collect();
    let mut running: BTreeMap<u64, (Node, BlobSm, JoinHandle<()>)> = BTreeMap::new();
    for (i, (listener, _)) in bound.into_iter().enumerate() {
        let id = i as u64 + 1;
        let sm = BlobSm::default();
        let (node, _transport, server) = launch_any(
            config(id, &cluster),
            Box::new(sm.clone()),
            listener,
            PeerLimits::default(),
        )
        .await;
        running.insert(id, (node, sm, server));
    }
    let nodes: Nodes = Arc::new(Mutex::new(
        running.iter().map(|(id, r)| (*id, r.0.clone())).collect(),
    ));
    wait_for_leader(&nodes).await;
    let started = Instant::now();
    let grown = propose(&nodes, format!("grow:{bytes}").into_bytes()).await;
    // Enough entries after it for every node to snapshot the large state and compact behind it.
    let mut last = grown;
    for _ in 0..60 {
        last = propose(&nodes, b"tick".to_vec()).await;
    }
    for id in 1..=3 {
        let node = running[&id].0.clone();
        let deadline = Instant::now() + LARGEST_CATCH_UP_MAX;
        while node.status().snapshot_index < grown || node.status().first_index <= grown {
            assert!(
                Instant::now() < deadline,
                "node {id} never snapshotted the state"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!(
        "state of {} MiB built and snapshotted on three nodes in {:?}",
        bytes >> 20,
        started.elapsed()
    );

    // Remove node 3, wipe it, restart it empty as a node joining the other two.
    change(
        &nodes,
        "remove_node",
        |n| async move { n.remove_node(3).await },
    )
    .await;
    let (node3, _, server3) = running.remove(&3).unwrap();
    nodes.lock().unwrap().remove(&3);
    node3.shutdown();
    server3.abort();
    let _ = server3.await;
    drop(node3);
    std::fs::remove_dir_all(dir.path().join("3")).unwrap();
    let leader_id = wait_for_leader(&nodes).await;
    let leader = running[&leader_id].0.clone();
    let term = leader.status().term;
    let contacts: BTreeMap<u64, String> = cluster
        .iter()
        .filter(|(id, _)| **id != 3)
        .map(|(id, a)| (*id, a.clone()))
        .collect();
    let sm3 = BlobSm::default();
    let (node3, _transport3, server3) = launch_any(
        config(3, &contacts),
        Box::new(sm3.clone()),
        rebind(addrs[2]).await,
        PeerLimits::default(),
    )
    .await;
    let started = Instant::now();
    change(&nodes, "add_learner", |n| {
        let addr = addrs[2].to_string();
        async move { n.add_learner(3, addr).await }
    })
    .await;
    let deadline = Instant::now() + LARGEST_CATCH_UP_MAX;
    while node3.status().applied < last {
        assert!(
            Instant::now() < deadline,
            "the wiped node did not catch up within {LARGEST_CATCH_UP_MAX:?}: {:?}",
            node3.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let status = leader.status();
    println!(
        "wiped node caught up from a {} MiB snapshot in {elapsed:?} ({:.0} MiB/s); leader {leader_id} \
         kept term {term}: {}",
        bytes >> 20,
        (bytes >> 20) as f64 / elapsed.as_secs_f64(),
        status.term == term && status.role == Role::Leader
    );
    assert!(node3.status().snapshots >= 1, "caught up by a snapshot");
    assert!(
        sm3.blob() == running[&leader_id].1.blob(),
        "the wiped node holds the same state"
    );

    node3.shutdown();
    server3.abort();
    for (_, (node, _, server)) in running {
        node.shutdown();
        server.abort();
    }
}

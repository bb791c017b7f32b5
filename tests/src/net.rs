//! Three (or N) embedded dlockd nodes in one test process, joined by the simulated Raft
//! network of the cluster crate ([`dlock_cluster::sim`]: drop, delay, partition), with kills
//! and restarts of nodes.
//!
//! # The cluster
//!
//! [`TestCluster::start`] starts N embedded [`dlock_server::Server`]s with
//! `start_with_transport`, each on its own loopback client and peer port and its own data
//! directory under one temporary directory. The ports are reserved up front (all bound at
//! once, then released and handed to the servers) because `initial_cluster` must name every
//! node's real peer address: with a custom transport Raft messages never use it, but
//! followers ask the leader's `PeerInfo` service at that address for its client address, and
//! that is what they put in the `dlock-leader-hint` a client follows. Restarts reuse the same
//! ports and data directory, so clients reconnect to the address they know and the node
//! recovers its persisted state.
//!
//! A [`Server`] must be shut down from inside a tokio runtime; use
//! `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` and call
//! [`TestCluster::shutdown`] at the end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

pub use dlock_cluster::sim::{
    DELAY_MAX, LINK_QUEUE_MESSAGES_MAX, NetStats, NetTransport, Network, SplitMix64,
};
use dlock_cluster::{Role, Status};
use dlock_server::{Config, Server};
use tokio::time::Instant;

/// How long [`TestCluster::wait_leader`] waits for a leader before failing the test.
pub const LEADER_DEADLINE: Duration = Duration::from_secs(20);

/// How often the cluster helpers poll node status.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How many times a (re)start retries when its reserved port was taken meanwhile.
const START_ATTEMPTS_MAX: u32 = 50;

/// Starts tracing for a test binary once: `RUST_LOG` (default: warnings, without the client's
/// "session expired" that every close logs) to the test's stderr.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,dlock::session=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Settings of a [`TestCluster`] beyond the defaults of [`Config`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of nodes (ids 1..=nodes).
    pub nodes: u64,
    /// Raft tick (election timeout is 10 to 20 ticks, heartbeats every 2).
    pub tick_ms: u64,
    /// Smallest session TTL the nodes grant.
    pub session_ttl_ms_min: u64,
    /// How often the leader checkpoints keepalive times into the log.
    pub checkpoint_interval_ms: u64,
}

impl Default for ClusterOptions {
    /// Three nodes, 50 ms ticks (the production default: 0.5 to 1 s election timeout, robust
    /// on a loaded 2-core machine), 500 ms minimum TTL, 1 s checkpoints.
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            tick_ms: 50,
            session_ttl_ms_min: 2_500,
            checkpoint_interval_ms: 1_000,
        }
    }
}

/// One node of a [`TestCluster`]: its configuration and, while it runs, its server.
struct Slot {
    config: Config,
    server: Option<Server>,
}

/// N embedded dlockd nodes on one [`Network`] (see the module docs).
pub struct TestCluster {
    /// The Raft network between the nodes.
    pub net: Network,
    slots: BTreeMap<u64, Slot>,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    /// Starts `options.nodes` nodes forming one new cluster, on a fresh [`Network`], and waits
    /// until they have elected a leader.
    ///
    /// # Panics
    ///
    /// If a node cannot start or no leader is elected within [`LEADER_DEADLINE`].
    pub async fn start(options: ClusterOptions) -> TestCluster {
        let net = Network::new();
        let dir = tempfile::tempdir().expect("temporary data directory");
        // Distinct ports outside the ephemeral range, so a restarted node finds its own free
        // (see `free_port`). Another process may grab one in between; starting retries then
        // fail loudly.
        let addrs: Vec<(SocketAddr, SocketAddr)> = (0..options.nodes)
            .map(|_| (loopback(crate::free_port()), loopback(crate::free_port())))
            .collect();
        let initial_cluster: BTreeMap<u64, String> = addrs
            .iter()
            .zip(1..)
            .map(|((_, peer), id)| (id, peer.to_string()))
            .collect();
        let mut slots = BTreeMap::new();
        for ((client_addr, peer_addr), id) in addrs.into_iter().zip(1..) {
            let config = Config {
                node_id: id,
                data_dir: dir.path().join(format!("node-{id}")),
                client_addr,
                peer_addr,
                initial_cluster: initial_cluster.clone(),
                tick_ms: options.tick_ms,
                session_ttl_ms_min: options.session_ttl_ms_min,
                checkpoint_interval_ms: options.checkpoint_interval_ms,
                ..Config::default()
            };
            slots.insert(
                id,
                Slot {
                    config,
                    server: None,
                },
            );
        }
        let mut cluster = TestCluster {
            net,
            slots,
            _dir: dir,
        };
        let ids: Vec<u64> = cluster.ids();
        for id in ids {
            cluster.start_node(id).await;
        }
        let leader = cluster.wait_leader().await;
        eprintln!(
            "--- cluster of {} up, leader {leader}, endpoints {:?}",
            options.nodes,
            cluster.endpoints()
        );
        cluster
    }

    async fn start_node(&mut self, id: u64) {
        let slot = self.slots.get_mut(&id).expect("known node");
        assert!(slot.server.is_none(), "node {id} is already running");
        let mut attempt = 0;
        let server = loop {
            attempt += 1;
            match Server::start_with_transport(slot.config.clone(), Some(self.net.transport(id)))
                .await
            {
                Ok(server) => break server,
                Err(err) if attempt < START_ATTEMPTS_MAX => {
                    eprintln!("--- node {id} did not start ({err}); retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("node {id} did not start: {err}"),
            }
        };
        self.net.set_down(id, false);
        slot.server = Some(server);
    }

    /// Node ids, ascending.
    pub fn ids(&self) -> Vec<u64> {
        self.slots.keys().copied().collect()
    }

    /// The client endpoint (`http://127.0.0.1:port`) of node `id`, running or not.
    ///
    /// # Panics
    ///
    /// For an unknown id.
    pub fn endpoint(&self, id: u64) -> String {
        format!("http://{}", self.slots[&id].config.client_addr)
    }

    /// Every node's client endpoint, in id order: what a client is configured with.
    pub fn endpoints(&self) -> Vec<String> {
        self.ids().into_iter().map(|id| self.endpoint(id)).collect()
    }

    /// Whether node `id` is running.
    pub fn is_up(&self, id: u64) -> bool {
        self.slots.get(&id).is_some_and(|s| s.server.is_some())
    }

    /// The running server of node `id`.
    pub fn server(&self, id: u64) -> Option<&Server> {
        self.slots.get(&id).and_then(|s| s.server.as_ref())
    }

    /// Node `id`'s Raft status, if it is running.
    pub fn status(&self, id: u64) -> Option<Status> {
        self.server(id).map(|s| s.raft().status())
    }

    /// Kills node `id`: the network drops everything to and from it at once (a crash, as far
    /// as the other nodes can tell), then its server shuts down, breaking its client
    /// connections. Its data directory stays for [`TestCluster::restart`].
    ///
    /// # Panics
    ///
    /// If the node is not running.
    pub async fn kill(&mut self, id: u64) {
        self.net.set_down(id, true);
        let server = self
            .slots
            .get_mut(&id)
            .and_then(|s| s.server.take())
            .unwrap_or_else(|| panic!("node {id} is not running"));
        let started = std::time::Instant::now();
        server.shutdown().await;
        eprintln!("--- node {id} down (shutdown took {:?})", started.elapsed());
    }

    /// Starts node `id` again on the same ports and data directory; it recovers its state and
    /// rejoins.
    ///
    /// # Panics
    ///
    /// If the node is running or cannot start.
    pub async fn restart(&mut self, id: u64) {
        self.start_node(id).await;
        eprintln!("--- node {id} restarted");
    }

    /// The leader as the running nodes agree on it now: a running node in the Leader role
    /// whose leadership a majority of the members confirm (they report it as the leader of
    /// its term). A stale leader cut off in a minority is not confirmed once the others have
    /// moved on.
    pub fn current_leader(&self) -> Option<u64> {
        let statuses: Vec<Status> = self
            .ids()
            .iter()
            .filter_map(|id| self.status(*id))
            .collect();
        let majority = self.slots.len() / 2 + 1;
        statuses
            .iter()
            .filter(|s| s.role == Role::Leader)
            .find(|leader| {
                statuses
                    .iter()
                    .filter(|s| s.term == leader.term && s.leader_id == Some(leader.id))
                    .count()
                    >= majority
            })
            .map(|s| s.id)
    }

    /// Waits up to `timeout` for [`TestCluster::current_leader`].
    pub async fn leader(&self, timeout: Duration) -> Option<u64> {
        self.leader_where(timeout, |_| true).await
    }

    /// Waits up to `timeout` for a confirmed leader other than `old`.
    pub async fn leader_other_than(&self, old: u64, timeout: Duration) -> Option<u64> {
        self.leader_where(timeout, |id| id != old).await
    }

    async fn leader_where(&self, timeout: Duration, accept: impl Fn(u64) -> bool) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(id) = self.current_leader().filter(|id| accept(*id)) {
                return Some(id);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The leader, waiting up to [`LEADER_DEADLINE`].
    ///
    /// # Panics
    ///
    /// If no leader is confirmed in time (the message lists every node's status).
    pub async fn wait_leader(&self) -> u64 {
        match self.leader(LEADER_DEADLINE).await {
            Some(id) => id,
            None => panic!("no leader within {LEADER_DEADLINE:?}: {}", self.describe()),
        }
    }

    /// A new leader other than `old`, waiting up to [`LEADER_DEADLINE`].
    ///
    /// # Panics
    ///
    /// If none is confirmed in time.
    pub async fn wait_new_leader(&self, old: u64) -> u64 {
        match self.leader_other_than(old, LEADER_DEADLINE).await {
            Some(id) => id,
            None => panic!(
                "no leader other than {old} within {LEADER_DEADLINE:?}: {}",
                self.describe()
            ),
        }
    }

    /// Waits until every running node has applied at least `index`.
    ///
    /// # Panics
    ///
    /// If that takes longer than [`LEADER_DEADLINE`].
    pub async fn wait_applied(&self, index: u64) {
        let deadline = Instant::now() + LEADER_DEADLINE;
        loop {
            let behind: Vec<u64> = self
                .ids()
                .into_iter()
                .filter(|id| self.status(*id).is_some_and(|s| s.applied < index))
                .collect();
            if behind.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nodes {behind:?} did not apply {index}: {}",
                self.describe()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// One line per node: role, term, leader, commit, applied; for failure messages.
    pub fn describe(&self) -> String {
        self.ids()
            .into_iter()
            .map(|id| match self.status(id) {
                Some(s) => format!(
                    "[node {id}: {:?} term {} leader {:?} commit {} applied {}]",
                    s.role, s.term, s.leader_id, s.commit, s.applied
                ),
                None => format!("[node {id}: down]"),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Shuts every running node down.
    pub async fn shutdown(mut self) {
        let ids = self.ids();
        for id in ids {
            if let Some(server) = self.slots.get_mut(&id).and_then(|s| s.server.take()) {
                self.net.set_down(id, true);
                server.shutdown().await;
            }
        }
        eprintln!("--- cluster shut down; network {:?}", self.net.stats());
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

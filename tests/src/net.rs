//! Three (or N) embedded dlockd nodes in one test process, joined by an in-process Raft
//! network that can drop, delay and partition messages, and kill and restart nodes.
//!
//! # The network model
//!
//! [`Network`] replaces the gRPC peer transport. Each node gets a [`NetTransport`] (`from` =
//! its id); raft's `send(to, bytes)` on the node's raft thread goes through the network to
//! the destination node's [`dlock_cluster::Node::receive`]. The network learns each node
//! through [`Transport::bind`], which [`dlock_cluster::Node::start`] calls with the node it
//! just started (again after a restart), and keeps only a [`WeakNode`] so that it never keeps
//! a stopped node alive.
//!
//! * **Links.** Every directed pair `(from, to)` is a *link*: a bounded queue
//!   ([`LINK_QUEUE_MESSAGES_MAX`]) drained by one tokio task that sleeps until each
//!   message's delivery time and then hands it to the destination. `send` only takes a short
//!   std lock and `try_send`s, so it never blocks the raft thread; a full queue drops the
//!   message (raft retransmits). Delivery times on one link never decrease, so a link is
//!   FIFO like a TCP stream even with random delays: raft-rs 0.7 tolerates loss but the
//!   transport should not reorder or duplicate (docs/dependencies.md §1.1, raft-rs #557).
//! * **Faults**, checked when a message is sent *and* again when it is delivered (a message
//!   in flight when a partition starts is lost, like a TCP stream that broke):
//!   - a node that is **down** ([`Network::set_down`], [`TestCluster::kill`]) neither sends
//!     nor receives;
//!   - a **partition** ([`Network::partition`], [`Network::isolate`]) lets messages flow only
//!     within a group; [`Network::heal`] reconnects everyone;
//!   - **random loss** ([`Network::set_drop_probability`]) and **random delay**
//!     ([`Network::set_delay`], uniform in `[min, max]`, capped at [`DELAY_MAX`]).
//!
//!   A message dropped by a fault (down or partitioned) is reported to the sender with
//!   [`dlock_cluster::Node::report_unreachable`], as the gRPC transport does when a stream
//!   breaks; a dropped or delivered `MsgSnapshot` is reported with
//!   [`dlock_cluster::Node::report_snapshot`].
//! * **Reproducibility.** Loss and delay come from one seeded generator. The seed is printed
//!   (`--- network seed N`) and can be fixed with `DLOCK_NET_SEED=N`. Thread scheduling still
//!   varies between runs, so a seed reproduces the fault *parameters* and random choices in
//!   order, not the exact interleaving.
//!
//! The client API is NOT behind this network: clients talk real gRPC over loopback to each
//! node's client port, so "partitioned" means "cut off from the other nodes' Raft traffic",
//! exactly the situation in which a stale leader could be tempted to grant a lock.
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dlock_cluster::transport::is_snapshot_message;
use dlock_cluster::{Node, Role, Status, Transport, WeakNode};
use dlock_server::{Config, Server};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Messages queued on one link; beyond this the network drops them (raft retransmits).
pub const LINK_QUEUE_MESSAGES_MAX: usize = 4096;

/// The largest delay [`Network::set_delay`] accepts: delays are bounded so that a test's
/// deadlines stay meaningful.
pub const DELAY_MAX: Duration = Duration::from_secs(2);

/// How long [`TestCluster::wait_leader`] waits for a leader before failing the test.
pub const LEADER_DEADLINE: Duration = Duration::from_secs(20);

/// How often the cluster helpers poll node status.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How many times a (re)start retries when its reserved port was taken meanwhile.
const START_ATTEMPTS_MAX: u32 = 50;

/// Counters of what the network did, for progress output and assertions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Messages raft handed to the network.
    pub sent: u64,
    /// Messages handed to the destination node.
    pub delivered: u64,
    /// Messages dropped because a node was down or the two were partitioned.
    pub dropped_fault: u64,
    /// Messages dropped at random ([`Network::set_drop_probability`]).
    pub dropped_random: u64,
    /// Messages dropped because the link queue was full or the destination refused them.
    pub dropped_overflow: u64,
}

/// SplitMix64: a tiny, good-enough seeded generator (no dependency needed). Tests use it
/// too, seeded from [`Network::seed`], so one printed seed covers all random choices.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi]`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "empty range [{lo}, {hi}]");
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// One directed link's queue.
struct Link {
    tx: mpsc::Sender<(Instant, Vec<u8>)>,
    /// Delivery time of the last message queued: later messages are never delivered earlier.
    last_delivery: Instant,
}

struct NetState {
    nodes: HashMap<u64, WeakNode>,
    down: HashSet<u64>,
    /// `None`: everyone reaches everyone. `Some(groups)`: only nodes of one group reach each
    /// other; a node in no group reaches nobody.
    groups: Option<Vec<HashSet<u64>>>,
    drop_probability: f64,
    delay: (Duration, Duration),
    rng: SplitMix64,
    links: HashMap<(u64, u64), Link>,
    stats: NetStats,
}

impl NetState {
    fn connected(&self, from: u64, to: u64) -> bool {
        if self.down.contains(&from) || self.down.contains(&to) {
            return false;
        }
        match &self.groups {
            None => true,
            Some(groups) => groups.iter().any(|g| g.contains(&from) && g.contains(&to)),
        }
    }

    fn node(&self, id: u64) -> Option<Node> {
        self.nodes.get(&id).and_then(WeakNode::upgrade)
    }
}

struct NetInner {
    seed: u64,
    /// The runtime the link tasks run on (`send` is called on raft's std threads).
    runtime: tokio::runtime::Handle,
    /// A std mutex: held for a few instructions, never across an await, and `send` must not
    /// block on an async lock.
    state: Mutex<NetState>,
}

/// The in-process Raft network (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct Network {
    inner: Arc<NetInner>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("seed", &self.inner.seed)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// What happened to one message at a fault check.
enum Verdict {
    Pass,
    Fault,
    Random,
}

impl Network {
    /// A fully connected network without loss or delay. The seed comes from `DLOCK_NET_SEED`
    /// if set, else from the clock; it is printed either way.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn new() -> Network {
        let seed = std::env::var("DLOCK_NET_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        Network::with_seed(seed)
    }

    /// A fully connected network whose random choices follow `seed`.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn with_seed(seed: u64) -> Network {
        eprintln!("--- network seed {seed} (DLOCK_NET_SEED={seed} repeats its choices)");
        Network {
            inner: Arc::new(NetInner {
                seed,
                runtime: tokio::runtime::Handle::current(),
                state: Mutex::new(NetState {
                    nodes: HashMap::new(),
                    down: HashSet::new(),
                    groups: None,
                    drop_probability: 0.0,
                    delay: (Duration::ZERO, Duration::ZERO),
                    rng: SplitMix64(seed),
                    links: HashMap::new(),
                    stats: NetStats::default(),
                }),
            }),
        }
    }

    /// The seed of this network's random choices.
    pub fn seed(&self) -> u64 {
        self.inner.seed
    }

    /// The transport for node `id`: give it to `Server::start_with_transport`.
    pub fn transport(&self, id: u64) -> Arc<dyn Transport> {
        Arc::new(NetTransport {
            from: id,
            net: self.clone(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers (or, after a restart, replaces) node `id`. [`NetTransport::bind`] does this.
    pub fn register(&self, id: u64, node: &Node) {
        assert_eq!(
            node.id(),
            id,
            "a transport for node {id} bound to another node"
        );
        self.state().nodes.insert(id, node.downgrade());
    }

    /// Marks node `id` down (nothing to or from it) or up again.
    pub fn set_down(&self, id: u64, down: bool) {
        let mut state = self.state();
        if down {
            state.down.insert(id);
        } else {
            state.down.remove(&id);
        }
    }

    /// Splits the nodes into `groups`: messages flow only within a group; a node named in no
    /// group is cut off from everyone. Replaces any earlier partition.
    ///
    /// # Panics
    ///
    /// If a node is named in two groups.
    pub fn partition(&self, groups: &[&[u64]]) {
        let mut seen = HashSet::new();
        for id in groups.iter().flat_map(|g| g.iter()) {
            assert!(seen.insert(*id), "node {id} named in two partition groups");
        }
        let groups = groups.iter().map(|g| g.iter().copied().collect()).collect();
        self.state().groups = Some(groups);
    }

    /// Cuts node `id` off from every other node (its client port stays reachable).
    pub fn isolate(&self, id: u64) {
        let mut state = self.state();
        let others: HashSet<u64> = state.nodes.keys().copied().filter(|n| *n != id).collect();
        state.groups = Some(vec![HashSet::from([id]), others]);
    }

    /// Removes every partition (down nodes stay down).
    pub fn heal(&self) {
        self.state().groups = None;
    }

    /// Drops each message with probability `p` (0 to 1).
    ///
    /// # Panics
    ///
    /// If `p` is not within `[0, 1]`.
    pub fn set_drop_probability(&self, p: f64) {
        assert!(
            (0.0..=1.0).contains(&p),
            "drop probability {p} not in [0, 1]"
        );
        self.state().drop_probability = p;
    }

    /// Delays each message by a uniform random time in `[min, max]` (links stay FIFO).
    ///
    /// # Panics
    ///
    /// If `min > max` or `max` exceeds [`DELAY_MAX`].
    pub fn set_delay(&self, min: Duration, max: Duration) {
        assert!(min <= max, "delay min {min:?} above max {max:?}");
        assert!(
            max <= DELAY_MAX,
            "delay {max:?} above DELAY_MAX {DELAY_MAX:?}"
        );
        self.state().delay = (min, max);
    }

    /// What the network did so far.
    pub fn stats(&self) -> NetStats {
        self.state().stats
    }

    /// Whether a message from `from` to `to` would pass the fault checks now (ignoring loss).
    pub fn connected(&self, from: u64, to: u64) -> bool {
        self.state().connected(from, to)
    }

    /// `send` of node `from`'s transport: queue on the link or drop.
    fn send(&self, from: u64, to: u64, message: Vec<u8>) {
        let snapshot = is_snapshot_message(&message);
        let mut state = self.state();
        state.stats.sent += 1;
        let verdict = if !state.connected(from, to) {
            Verdict::Fault
        } else if state.drop_probability > 0.0 && state.rng.next_f64() < state.drop_probability {
            Verdict::Random
        } else {
            Verdict::Pass
        };
        match verdict {
            Verdict::Pass => {}
            Verdict::Fault => {
                state.stats.dropped_fault += 1;
                let sender = state.node(from);
                drop(state);
                report_lost(sender, to, snapshot, true);
                return;
            }
            Verdict::Random => {
                state.stats.dropped_random += 1;
                let sender = state.node(from);
                drop(state);
                report_lost(sender, to, snapshot, false);
                return;
            }
        }
        let (min, max) = state.delay;
        let delay = if max > min {
            let span = (max - min).as_nanos() as u64;
            min + Duration::from_nanos(state.rng.next_u64() % (span + 1))
        } else {
            min
        };
        let now = Instant::now();
        let link = match state.links.entry((from, to)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let (tx, rx) = mpsc::channel(LINK_QUEUE_MESSAGES_MAX);
                self.inner
                    .runtime
                    .spawn(run_link(Arc::downgrade(&self.inner), from, to, rx));
                e.insert(Link {
                    tx,
                    last_delivery: now,
                })
            }
        };
        let at = (now + delay).max(link.last_delivery);
        link.last_delivery = at;
        if link.tx.try_send((at, message)).is_err() {
            state.stats.dropped_overflow += 1;
            let sender = state.node(from);
            drop(state);
            report_lost(sender, to, snapshot, false);
        }
    }
}

impl Default for Network {
    fn default() -> Self {
        Network::new()
    }
}

/// Tells the sender about a message the network lost: a snapshot failed; a fault (down or
/// partitioned peer) makes the peer unreachable, as a broken gRPC stream would.
fn report_lost(sender: Option<Node>, to: u64, snapshot: bool, fault: bool) {
    let Some(sender) = sender else { return };
    if snapshot {
        sender.report_snapshot(to, false);
    }
    if fault {
        sender.report_unreachable(to);
    }
}

/// Drains one link: waits until each message is due, re-checks the faults, delivers.
async fn run_link(
    net: Weak<NetInner>,
    from: u64,
    to: u64,
    mut rx: mpsc::Receiver<(Instant, Vec<u8>)>,
) {
    while let Some((at, message)) = rx.recv().await {
        tokio::time::sleep_until(at).await;
        let Some(inner) = net.upgrade() else { return };
        let snapshot = is_snapshot_message(&message);
        let (receiver, sender) = {
            let mut state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            if !state.connected(from, to) {
                state.stats.dropped_fault += 1;
                let sender = state.node(from);
                drop(state);
                report_lost(sender, to, snapshot, true);
                continue;
            }
            (state.node(to), state.node(from))
        };
        let delivered = receiver.is_some_and(|node| node.receive(message).is_ok());
        {
            let mut state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            if delivered {
                state.stats.delivered += 1;
            } else {
                state.stats.dropped_overflow += 1;
            }
        }
        if let Some(sender) = sender
            && snapshot
        {
            sender.report_snapshot(to, delivered);
        }
    }
}

/// The [`Transport`] of one node on a [`Network`].
pub struct NetTransport {
    /// The node this transport sends for.
    pub from: u64,
    /// The network it sends into.
    pub net: Network,
}

impl Transport for NetTransport {
    fn send(&self, to: u64, message: Vec<u8>) {
        self.net.send(self.from, to, message);
    }

    fn bind(&self, node: &Node) {
        self.net.register(self.from, node);
    }
}

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
        // Reserve every port at once (so that they are distinct), then release them for the
        // servers. Another process may grab one in between; starting retries then fail loudly.
        let reserved: Vec<(TcpListener, TcpListener)> = (0..options.nodes)
            .map(|_| (reserve_port(), reserve_port()))
            .collect();
        let addrs: Vec<(SocketAddr, SocketAddr)> = reserved
            .iter()
            .map(|(c, p)| {
                (
                    c.local_addr().expect("bound client port"),
                    p.local_addr().expect("bound peer port"),
                )
            })
            .collect();
        drop(reserved);
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

fn reserve_port() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port")
}

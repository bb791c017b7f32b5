//! A simulated Raft network for tests (feature `sim`): nodes of one process joined by an
//! in-process network that can drop, delay and partition messages. The cluster crate's own
//! tests use it with a test state machine; dlock-tests puts embedded dlockd servers on it
//! (`dlock_tests::net::TestCluster`).
//!
//! # The network model
//!
//! [`Network`] replaces the gRPC peer transport. Each node gets a [`NetTransport`] (`from` =
//! its id); raft's `send(to, bytes)` on the node's raft thread goes through the network to
//! the destination node's [`Node::receive`]. The network learns each node
//! through [`Transport::bind`], which [`Node::start`] calls with the node it
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
//!   - a node that is **down** ([`Network::set_down`], `TestCluster::kill`) neither sends
//!     nor receives;
//!   - a **partition** ([`Network::partition`], [`Network::isolate`]) lets messages flow only
//!     within a group; [`Network::heal`] reconnects everyone;
//!   - **random loss** ([`Network::set_drop_probability`]) and **random delay**
//!     ([`Network::set_delay`], uniform in `[min, max]`, capped at [`DELAY_MAX`]).
//!
//!   A message dropped by a fault (down or partitioned) is reported to the sender with
//!   [`Node::report_unreachable`], as the gRPC transport does when a stream
//!   breaks; a dropped or delivered `MsgSnapshot` is reported with
//!   [`Node::report_snapshot`].
//! * **Reproducibility.** Loss and delay come from one seeded generator. The seed is printed
//!   (`--- network seed N`) and can be fixed with `DLOCK_NET_SEED=N`. Thread scheduling still
//!   varies between runs, so a seed reproduces the fault *parameters* and random choices in
//!   order, not the exact interleaving.
//!
//! Only Raft traffic goes through this network: in dlock-tests, clients still talk real gRPC
//! over loopback to each node's client port, so "partitioned" means "cut off from the other
//! nodes' Raft traffic", exactly the situation in which a stale leader could be tempted to
//! grant a lock.
//!

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::transport::is_snapshot_message;
use crate::{Node, Transport, WeakNode};

/// Messages queued on one link; beyond this the network drops them (raft retransmits).
pub const LINK_QUEUE_MESSAGES_MAX: usize = 4096;

/// The largest delay [`Network::set_delay`] accepts: delays are bounded so that a test's
/// deadlines stay meaningful.
pub const DELAY_MAX: Duration = Duration::from_secs(2);

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

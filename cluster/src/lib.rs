//! Generic Raft replication for dlock: opaque commands in, a deterministic [`StateMachine`] out.
//!
//! This crate knows nothing about mutexes. The server hands it byte strings ("commands"); it
//! orders them with Raft (tikv's `raft` crate, `RawNode`), keeps the log durable in sled, and
//! applies every committed command, in log order, to a [`StateMachine`] that the server supplies.
//! The proposer gets back the log index of its command and the state machine's reply bytes.
//!
//! # Thread model
//!
//! [`Node::start`] spawns ONE dedicated `std::thread` (the *raft thread*) that owns the
//! `RawNode`, the sled storage and the state machine. A std thread rather than a tokio task,
//! because its storage writes block for an fsync and must not stall an async worker. Everything
//! else talks to the raft thread through one bounded queue: proposals, ReadIndex requests,
//! inbound peer messages and shutdown. Callers get answers through tokio oneshots, so
//! [`Node::propose`] and [`Node::read_index`] are plain `async fn`s. A [`Node`] is a cheap,
//! cloneable handle.
//!
//! The raft thread loops:
//!
//! 1. wait for input, at most until the next tick deadline (ticks follow a monotonic schedule;
//!    waking up for work never makes the clock run faster);
//! 2. drain *every* queued input, so proposals from many concurrent callers land in one Raft
//!    `Ready` and share one fsync (group commit);
//! 3. handle the `Ready` in exactly the canonical order of raft-rs's `five_mem_node` example:
//!    send messages, install a snapshot, apply committed entries, append entries, store the hard
//!    state, ONE batch + ONE `fdatasync` of the write-ahead log, send persisted messages,
//!    `advance`, handle the
//!    `LightReady` (commit index, messages, committed entries), `advance_apply`, then serve read
//!    states and take a snapshot / compact the log if due.
//!
//! A proposal is never held back until a tick: the queue wakes the thread at once, so a
//! one-node propose costs about one fsync.
//!
//! # Proposals and reads
//!
//! A proposal's entry carries a small context: a u64 proposal id, unique per node lifetime.
//! The raft thread remembers `(index, term, id)` of each pending proposal and completes it when
//! the entry at that index is applied; a different term or id there means the proposal was
//! overwritten by another leader and it fails with [`Error::Dropped`]. Losing leadership fails
//! every pending proposal with `Dropped` too: its fate is unknown, and the caller retries with
//! the same session/sequence number, which the state machine deduplicates.
//!
//! Reads use ReadIndex with a context unique across nodes and restarts (node id, a random
//! per-start incarnation, a counter). raft-rs drops ReadIndex requests *silently* (no leader, a
//! new leader that has not committed in its term yet, a context equal to a pending one); the
//! raft thread detects this on the leader by comparing raft's read counters before and after,
//! defers reads on a fresh leader until its first commit, and issues a read again with a fresh
//! context whenever it was dropped, went unanswered for half an election timeout, or was pending
//! when the leader changed; only its deadline (two election timeouts) fails it.
//!
//! # Durability and recovery
//!
//! All writes of one `Ready` go into one batch, appended to the write-ahead log as one record
//! followed by one `fdatasync` and kept in memory until sled gets it, before any message that depends on them is sent and before
//! any client is answered (sled inserts are NOT durable until sled is flushed, which happens
//! only when a log segment is full: the log is what makes them durable, and opening replays it). The state machine lives in memory only: it is rebuilt on start from
//! the stored snapshot (`restore`) plus replay of the committed log after it (raft's
//! `Config::applied` is set to the snapshot index). Every `snapshot_interval_entries` applied
//! entries the node stores a fresh snapshot and compacts the log, keeping `log_tail_entries`
//! entries for slow followers. If a storage write fails, the node fails closed: the raft thread
//! stops and everyone gets [`Error::Storage`].
//!
//! # Membership
//!
//! A brand-new cluster is founded from [`Config::initial_cluster`] (node id → peer address);
//! a node whose store already holds state ignores it and rejoins with what it stored. The
//! leader changes membership at run time with [`Node::add_voter`], [`Node::add_learner`],
//! [`Node::promote_learner`] and [`Node::remove_node`]: one simple `ConfChangeV2` at a time,
//! each resolving when it is applied. The added node's address travels in the conf change's
//! context; every node keeps a replicated *peer registry* (id → address), stored with each
//! snapshot and sent inline with snapshots, published with the configuration through
//! [`Node::membership`]. A leader that finds the configuration joint (left over from an earlier
//! leader) proposes the leave-joint entry itself; a leader that applies its own removal hands
//! leadership to the most up-to-date voter.
//!
//! # Transport
//!
//! [`Transport`] carries encoded raft messages. [`transport::GrpcTransport`] does it over the
//! `dlock.v1.RaftPeer` gRPC service (one long-lived client stream per peer, reconnecting with
//! backoff; messages larger than a chunk, i.e. snapshots, split into chunks and reassembled)
//! and [`transport::RaftPeerService`] is its receiving side, which tells the sender when it
//! could not hand a snapshot to its node. [`Node::start`] binds the
//! transport to the node ([`Transport::bind`]) so that it can report unreachable peers and
//! snapshot delivery, and follow the peer registry.
//!
//! # IMPLEMENTATION CAVEATS
//!
//! - Proposals are accepted only on the leader (no forwarding): followers answer
//!   [`Error::NotLeader`] with a hint.
//! - A snapshot travels inline in one raft message, which the gRPC transport splits into
//!   chunks of [`transport::PeerLimits::chunk_bytes`] (any size up to the receiver's
//!   [`transport::PeerLimits::message_bytes_max`], 8 GiB by default). The whole encoded
//!   message is still held in memory on both sides, a few copies at a time.
//! - A node's own snapshots are frozen on the raft thread ([`StateMachine::snapshot`] must be
//!   cheap) and serialised and written to a file by a background thread; one build at a time.
//!   A snapshot *received* from the leader is still written and restored on the raft thread of
//!   the (lagging) node that installs it. The stored snapshot's envelope is kept in memory for
//!   sending, so a node holds its state about twice.
//! - Stores bootstrapped before the peer registry existed (snapshot at index 0) cannot add
//!   members until they have taken their first snapshot and compacted the log.
//! - A removed node learns of its removal only if it applies the conf change; the leader stops
//!   replicating to it once the removal is applied, so it often never does ([`Status::removed`]
//!   stays false). The remaining members' [`Node::membership`] is authoritative: shut the
//!   removed node down. Until then it is harmless (pre-vote + check-quorum ignore it).
//! - Removing the current leader is done in two steps (see [`Node::remove_node`]), because
//!   raft-rs 0.7 panics when a leader applies its own removal.

#![forbid(unsafe_code)]

mod config;
mod error;
mod node;
#[cfg(feature = "sim")]
pub mod sim;
pub mod storage;
pub mod transport;

use std::collections::BTreeMap;
use std::time::Duration;

pub use config::Config;
pub use error::Error;

/// Hooks through which the program embedding a [`Node`] observes its raft thread (for
/// metrics); set once with [`Node::observe`]. Called on the raft thread: keep them cheap and
/// never block.
pub trait Observer: Send + Sync + 'static {
    /// A flush of the log to disk (the fsync of one Raft `Ready`, or of a snapshot record)
    /// took `took`.
    fn flushed(&self, took: Duration);
}
pub use node::{Node, PeerOrigin, WeakNode};

/// The replicated state: commands applied in log order on every node.
///
/// The raft thread is the only caller. Implementations must be deterministic: the same commands
/// in the same order give the same state and the same replies on every node (no clock, no
/// randomness, no I/O).
pub trait StateMachine: Send + 'static {
    /// Apply the command committed at `index` (never called for empty entries); returns reply
    /// bytes for the proposer. Deterministic.
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8>;
    /// Freeze the state as of the last applied command and return a job that serialises that
    /// frozen copy. Called on the raft thread between applies, so it must be cheap (a
    /// copy-on-write clone, an `Arc`): the job runs on a background thread while the raft
    /// thread goes on applying, and must not see later commands.
    fn snapshot(&mut self) -> SnapshotJob;
    /// Replace the whole state with a snapshot taken at `index`.
    ///
    /// # Errors
    ///
    /// A description of why `data` is not a valid snapshot; the node then stops (fails closed).
    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), String>;
}

/// Serialises a frozen copy of the state (see [`StateMachine::snapshot`]).
pub type SnapshotJob = Box<dyn FnOnce() -> Vec<u8> + Send>;

/// Outbound peer messages.
pub trait Transport: Send + Sync + 'static {
    /// Send an encoded `eraftpb::Message` to peer `to`. Must not block; may drop (raft
    /// retransmits). Called on the raft thread.
    fn send(&self, to: u64, message: Vec<u8>);

    /// Called once by [`Node::start`] with the node this transport serves, right after the
    /// raft thread was spawned (and again if the same transport is given to a restarted
    /// node). A transport keeps only the [`WeakNode`] (a strong [`Node`] would keep the node
    /// alive forever: the node owns the transport) and uses it for feedback
    /// ([`Node::report_unreachable`], [`Node::report_snapshot`]) and to follow
    /// [`Node::membership`]. The default does nothing.
    fn bind(&self, node: &Node) {
        let _ = node;
    }
}

/// A transport for a cluster of one, or for tests: drops every message.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTransport;

impl Transport for NoTransport {
    fn send(&self, _to: u64, _message: Vec<u8>) {}
}

/// The Raft role of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Follows a leader (or waits for one).
    #[default]
    Follower,
    /// Asking for pre-votes before starting a real election (pre-vote is on).
    PreCandidate,
    /// Asking for votes.
    Candidate,
    /// Accepts proposals and reads.
    Leader,
}

impl From<raft::StateRole> for Role {
    fn from(role: raft::StateRole) -> Self {
        match role {
            raft::StateRole::Follower => Role::Follower,
            raft::StateRole::PreCandidate => Role::PreCandidate,
            raft::StateRole::Candidate => Role::Candidate,
            raft::StateRole::Leader => Role::Leader,
        }
    }
}

/// Who leads, as this node last saw it. Published through [`Node::leadership`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Leadership {
    /// The Raft term.
    pub term: u64,
    /// The leader of `term`, if known.
    pub leader_id: Option<u64>,
    /// Whether this node is that leader.
    pub is_leader: bool,
}

/// Whether a member votes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemberKind {
    /// Votes and counts for the quorum.
    #[default]
    Voter,
    /// Receives the log but does not vote (catching up before a promotion).
    Learner,
}

/// The cluster configuration as of the last applied entry, with every member's peer address.
/// Published through [`Node::membership`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// Voters, ascending (empty on a node that has not joined yet).
    pub voters: Vec<u64>,
    /// Learners, ascending.
    pub learners: Vec<u64>,
    /// Voters of the outgoing configuration while joint (empty otherwise).
    pub voters_outgoing: Vec<u64>,
    /// Peer addresses by node id: the replicated registry. On a node that is joining and has
    /// not received its first snapshot yet, the addresses of `Config::initial_cluster`.
    pub peers: BTreeMap<u64, String>,
    /// The log index at which this configuration was applied.
    pub index: u64,
}

impl Membership {
    /// True if `id` is a voter (incoming or outgoing) or a learner.
    pub fn contains(&self, id: u64) -> bool {
        self.voters.contains(&id)
            || self.learners.contains(&id)
            || self.voters_outgoing.contains(&id)
    }

    /// True while the configuration is joint (a change is half-way).
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }
}

/// One member as this node sees it (part of [`Status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The member's node id (this node included).
    pub id: u64,
    /// Its peer address, if the registry has one.
    pub address: Option<String>,
    /// Voter or learner.
    pub kind: MemberKind,
    /// On the leader: the highest log index known to be replicated on that member (for the
    /// leader itself, its last index). `None` on other nodes.
    pub matched: Option<u64>,
    /// The incarnation of its data directory the cluster recorded, once it has.
    pub incarnation: Option<u64>,
}

/// A point-in-time view of a node, for monitoring and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// This node's id.
    pub id: u64,
    /// The cluster this node belongs to (0: none known yet).
    pub cluster_id: u64,
    /// The incarnation of this node's data directory.
    pub incarnation: u64,
    /// Current role.
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// The leader this node knows of.
    pub leader_id: Option<u64>,
    /// Highest log index known committed.
    pub commit: u64,
    /// Highest log index applied to the state machine.
    pub applied: u64,
    /// Index of the first entry still in the log.
    pub first_index: u64,
    /// Index of the last entry in the log.
    pub last_index: u64,
    /// Index of the stored snapshot (0 if none).
    pub snapshot_index: u64,
    /// Raft `Ready`s handled since start.
    pub readies: u64,
    /// sled flushes (fsyncs) since start. Far fewer than proposals under load: group commit.
    pub flushes: u64,
    /// Log entries appended since start.
    pub entries_appended: u64,
    /// Snapshots stored since start (local ones and installed ones).
    pub snapshots: u64,
    /// Size in bytes of the state-machine image of the last snapshot stored since start (0 if
    /// none).
    pub snapshot_bytes: u64,
    /// Times this node saw the leader change (to another node or to none) since start.
    pub leader_changes: u64,
    /// Set once the raft thread has stopped (shutdown or fatal error).
    pub stopped: bool,
    /// MsgSnapshots this node sent that the transport reported delivered.
    pub snapshots_sent: u64,
    /// MsgSnapshots this node sent that the transport reported failed.
    pub snapshots_failed: u64,
    /// Every member (voters, then learners, each ascending), with the leader's replication
    /// progress if this node leads.
    pub members: Vec<PeerStatus>,
    /// True once this node has applied a configuration that no longer contains it: it gets no
    /// more messages and should be shut down. (It may never apply its removal: see the crate
    /// docs' caveats.)
    pub removed: bool,
}

/// Default interval between Raft ticks.
pub const TICK_INTERVAL_DEFAULT: Duration = Duration::from_millis(100);

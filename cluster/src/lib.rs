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
//! because `sled::Db::flush` blocks for an fsync and must not stall an async worker. Everything
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
//!    state, ONE `sled::Batch` + ONE `flush()`, send persisted messages, `advance`, handle the
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
//! Reads use ReadIndex with a unique context. raft-rs drops ReadIndex requests *silently* (no
//! leader, or a new leader that has not committed in its term yet); the raft thread detects this
//! by comparing raft's read counters before and after, defers reads on a fresh leader until its
//! first commit, and times out reads that were forwarded and never answered.
//!
//! # Durability and recovery
//!
//! All writes of one `Ready` go into one sled batch followed by one `flush()`, before any
//! message that depends on them is sent and before any client is answered (sled inserts are NOT
//! durable until a flush). The state machine lives in memory only: it is rebuilt on start from
//! the stored snapshot (`restore`) plus replay of the committed log after it (raft's
//! `Config::applied` is set to the snapshot index). Every `snapshot_interval_entries` applied
//! entries the node stores a fresh snapshot and compacts the log, keeping `log_tail_entries`
//! entries for slow followers. If a storage write fails, the node fails closed: the raft thread
//! stops and everyone gets [`Error::Storage`].
//!
//! # IMPLEMENTATION CAVEATS
//!
//! - No membership-change API yet; conf-change entries in the log are applied correctly.
//! - Transport feedback (`report_unreachable`, `report_snapshot`) is available on [`Node`] but
//!   the peer transport that calls it lives elsewhere.
//! - Proposals are accepted only on the leader (no forwarding): followers answer
//!   [`Error::NotLeader`] with a hint.

mod config;
mod error;
mod node;
pub mod storage;

use std::time::Duration;

pub use config::Config;
pub use error::Error;
pub use node::Node;

/// The replicated state: commands applied in log order on every node.
///
/// The raft thread is the only caller. Implementations must be deterministic: the same commands
/// in the same order give the same state and the same replies on every node (no clock, no
/// randomness, no I/O).
pub trait StateMachine: Send + 'static {
    /// Apply the command committed at `index` (never called for empty entries); returns reply
    /// bytes for the proposer. Deterministic.
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8>;
    /// Serialise the whole state (called on the raft thread, between applies).
    fn snapshot(&mut self) -> Vec<u8>;
    /// Replace the whole state with a snapshot taken at `index`.
    ///
    /// # Errors
    ///
    /// A description of why `data` is not a valid snapshot; the node then stops (fails closed).
    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), String>;
}

/// Outbound peer messages.
pub trait Transport: Send + Sync + 'static {
    /// Send an encoded `eraftpb::Message` to peer `to`. Must not block; may drop (raft
    /// retransmits).
    fn send(&self, to: u64, message: Vec<u8>);
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

/// A point-in-time view of a node, for monitoring and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// This node's id.
    pub id: u64,
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
    /// Set once the raft thread has stopped (shutdown or fatal error).
    pub stopped: bool,
}

/// Default interval between Raft ticks.
pub const TICK_INTERVAL_DEFAULT: Duration = Duration::from_millis(100);

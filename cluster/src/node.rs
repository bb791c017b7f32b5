//! The node handle and the raft thread that drives `RawNode` (see the crate docs for the design).
//!
//! # ReadIndex
//!
//! Every ReadIndex request goes to raft with a context that no other request, on any node or
//! in any earlier run of this node, ever had: `be_u64(node id) ‖ be_u64(incarnation) ‖
//! be_u64(counter)`, where the incarnation is random per start. raft-rs silently ignores a
//! read whose context equals one already pending on the leader (a follower's forwarded read
//! and the leader's own, with plain per-node counters), and an answer that arrives for a read
//! of an earlier run must not satisfy a read of this one. Answers are decoded strictly: a
//! context of another length, node or incarnation is ignored.
//!
//! A read is failed only by its deadline (two election timeouts, then `Dropped`). Until then:
//! raft dropping it (detected on the leader by its read counters not moving) puts it back to
//! be issued again with a fresh context after the next `Ready` or tick; an issued read not
//! answered within half an election timeout (the forwarded request or its answer was lost, or
//! the leader had not committed in its term) is issued again with a fresh context (a late
//! answer to the old one is ignored); reads pending when the leader changes are issued again
//! to the new one once it is known; a leader holds reads until its first entry of the term
//! is committed. Only a *new* read on a node that knows no leader fails at once
//! (`NotLeader { leader_hint: None }`), so that the caller can try another node.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType,
    Message, MessageType, Snapshot,
};
use raft::{RawNode, ReadState, SnapshotStatus, StateRole};
use tokio::sync::{oneshot, watch};

use crate::storage::{self, BOOTSTRAP_INDEX, SledStorage};
use crate::{
    Config, Error, Leadership, MemberKind, Membership, PeerStatus, Role, StateMachine, Status,
    Transport,
};

/// Queue slots reserved for control inputs (shutdown wake-ups, transport feedback) on top of
/// the per-kind limits in [`Config`]. Beyond this, feedback is dropped (raft copes).
const CONTROL_QUEUE_SLOTS: usize = 64;

/// Longest time one pass of the raft thread's loop spends stepping queued inputs before it
/// handles the Ready they produced (and so sends heartbeats and appends).
const DRAIN_TIME_MAX: Duration = Duration::from_millis(10);

/// Largest snapshot image (with its peer registry) that one raft message can carry: protobuf 2
/// sizes messages with a `u32`, so this leaves room for the rest of the message.
pub const SNAPSHOT_MESSAGE_BYTES_MAX: usize = (u32::MAX - 1024 * 1024) as usize;

/// One pass of the raft thread's loop that takes longer than this is logged: followers may
/// start an election meanwhile.
const RAFT_THREAD_STALL_WARN: Duration = Duration::from_millis(250);

/// A ReadIndex request that raft did not answer within this many election timeouts fails with
/// `Dropped` (raft-rs drops forwarded reads silently when the leader changes). Until then it
/// is re-issued as needed (see [`READ_RETRY_DIVISOR`]).
const READ_TIMEOUT_ELECTIONS: u32 = 2;

/// A ReadIndex request handed to raft and not answered within an election timeout divided by
/// this is re-issued with a fresh context (the first request, or its answer, may have been
/// lost: a forwarded read is dropped silently by a leader that has not committed in its term
/// yet, and by the transport).
const READ_RETRY_DIVISOR: u32 = 2;

/// Bytes of an encoded [`ReadCtx`].
const READ_CTX_BYTES: usize = 24;

/// The context of one ReadIndex request, unique across the cluster and across restarts:
/// raft-rs silently ignores a read whose context equals one already pending on the leader
/// (a follower's forwarded read and the leader's own), and an answer for a read of an earlier
/// run of this node must never match a read of this run. Encoded as `be_u64(node_id) ‖
/// be_u64(incarnation) ‖ be_u64(counter)` ([`READ_CTX_BYTES`] bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReadCtx {
    /// The node that issued the read.
    node_id: u64,
    /// Random per start of that node ([`new_incarnation`]).
    incarnation: u64,
    /// Per incarnation, never reused (a re-issued read gets a new one).
    counter: u64,
}

impl ReadCtx {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(READ_CTX_BYTES);
        out.extend_from_slice(&self.node_id.to_be_bytes());
        out.extend_from_slice(&self.incarnation.to_be_bytes());
        out.extend_from_slice(&self.counter.to_be_bytes());
        out
    }

    /// Decodes exactly [`READ_CTX_BYTES`] bytes; anything else is not one of ours.
    fn decode(bytes: &[u8]) -> Option<ReadCtx> {
        let bytes: &[u8; READ_CTX_BYTES] = bytes.try_into().ok()?;
        let word = |i: usize| u64::from_be_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8"));
        Some(ReadCtx {
            node_id: word(0),
            incarnation: word(1),
            counter: word(2),
        })
    }
}

/// A random, non-zero number that tells this start of the node from every earlier one.
///
/// std's `RandomState` is keyed from the operating system's random source (once per thread,
/// then varied per instance); the clock and the process id are mixed in as well, so two starts
/// agree only with negligible probability even if that source were weak. No extra dependency.
fn new_incarnation(node_id: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(node_id);
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.finish().max(1)
}

/// If the raft thread falls this many ticks behind (e.g. the process was stopped), it ticks once
/// and resynchronises its schedule instead of firing a burst that would start an election.
const TICK_BURST_MAX: u32 = 3;

type ProposeReply = oneshot::Sender<Result<(u64, Vec<u8>), Error>>;
type ReadReply = oneshot::Sender<Result<u64, Error>>;

/// A membership change requested through the `Node` API.
#[derive(Debug, Clone)]
enum MembershipChange {
    AddVoter { id: u64, address: String },
    AddLearner { id: u64, address: String },
    Promote { id: u64 },
    Remove { id: u64 },
}

/// Work for the raft thread.
enum Input {
    Propose {
        command: Vec<u8>,
        reply: ProposeReply,
    },
    /// Counted against the proposal queue.
    ConfChange {
        change: MembershipChange,
        reply: ProposeReply,
    },
    ReadIndex {
        reply: ReadReply,
    },
    Message(Box<Message>),
    Unreachable(u64),
    SnapshotStatus {
        to: u64,
        success: bool,
    },
    /// Sent by `shutdown` so that a waiting raft thread notices the stop flag at once.
    Wake,
    /// Hand leadership to the most up-to-date other voter (graceful shutdown).
    TransferLeadership,
    /// Test hook: block the raft thread (a disk stall, a long snapshot build).
    Stall(Duration),
}

/// State shared between the handles and the raft thread.
struct Shared {
    node_id: u64,
    status: Mutex<Status>,
    /// The error that stopped the raft thread, if it was not a plain shutdown.
    fatal: Mutex<Option<Error>>,
    stop: AtomicBool,
    queued_proposals: AtomicUsize,
    queued_reads: AtomicUsize,
    queued_messages: AtomicUsize,
    proposal_queue_max: usize,
    read_queue_max: usize,
    message_queue_max: usize,
    command_bytes_max: usize,
}

impl Shared {
    /// The error to report once the raft thread is gone.
    fn stopped_error(&self) -> Error {
        self.fatal
            .lock()
            .expect("fatal lock poisoned")
            .clone()
            .unwrap_or(Error::Stopped)
    }
}

struct Inner {
    tx: SyncSender<Input>,
    shared: Arc<Shared>,
    leadership: watch::Receiver<Leadership>,
    membership: watch::Receiver<Membership>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    fn stop_and_join(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // If the queue is full the thread is busy and will see the flag after draining it.
        let _ = self.tx.try_send(Input::Wake);
        let handle = self.thread.lock().expect("thread lock poisoned").take();
        // The raft thread itself never holds a handle, but never join oneself regardless.
        match handle {
            Some(handle) if handle.thread().id() != std::thread::current().id() => {
                let _ = handle.join();
            }
            _ => {}
        }
    }
}

impl Drop for Inner {
    /// The last handle stops the raft thread and waits for it, so that the sled directory is
    /// released and can be reopened right away.
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// A handle to a running replication node. Cheap to clone; `Send + Sync`.
///
/// Dropping the last handle shuts the node down like [`Node::shutdown`].
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

/// A handle that does not keep the node alive: what a [`Transport`] keeps (see
/// [`Transport::bind`]). Cheap to clone.
#[derive(Clone, Default)]
pub struct WeakNode {
    inner: Weak<Inner>,
}

impl WeakNode {
    /// The node, if some [`Node`] handle still exists.
    pub fn upgrade(&self) -> Option<Node> {
        self.inner.upgrade().map(|inner| Node { inner })
    }
}

impl std::fmt::Debug for WeakNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeakNode")
            .field("alive", &(self.inner.strong_count() > 0))
            .finish()
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.shared.node_id)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Opens (or creates) the sled db in `data_dir`. If the store is empty, bootstraps it from
    /// `initial_cluster` (or `initial_voters`): a snapshot at index 1 holding the initial
    /// voters, their addresses and `sm`'s (empty) image; or, if `initial_cluster` does not name
    /// this node, leaves it empty to join an existing cluster. A store with state ignores the
    /// initial members and recovers: the stored snapshot is restored into `sm`, raft's `applied`
    /// is set to the snapshot index and raft re-delivers the committed entries after it
    /// (conf changes included). Spawns the raft thread, then binds `transport` to the node
    /// ([`Transport::bind`]). A single-voter cluster campaigns at once and is leader within a
    /// few milliseconds.
    ///
    /// # Errors
    ///
    /// `Error::Config` for an invalid config, `Error::Storage` if sled cannot open or read the
    /// store, `Error::StateMachine` if `sm` rejects the stored snapshot, `Error::Raft` if raft
    /// rejects the stored state.
    pub fn start(
        config: Config,
        mut sm: Box<dyn StateMachine>,
        transport: Arc<dyn Transport>,
    ) -> Result<Node, Error> {
        config.validate()?;
        let mut storage = SledStorage::open(&config.data_dir, config.sled_cache_bytes)?;
        let mut peers = storage.snapshot_peers().clone();
        if storage.is_initialized() {
            tracing::info!(
                node_id = config.node_id,
                voters = ?storage.conf_state().voters,
                learners = ?storage.conf_state().learners,
                peers = ?peers,
                "recovering existing store; initial cluster ignored"
            );
        } else if config.joins_existing_cluster() {
            tracing::info!(
                node_id = config.node_id,
                contacts = ?config.initial_cluster,
                "empty store, not a founding member: joining an existing cluster, waiting for the leader's snapshot"
            );
            peers = config.initial_cluster.clone();
        } else {
            let voters = config.bootstrap_voters();
            tracing::info!(
                node_id = config.node_id,
                voters = ?voters,
                peers = ?config.initial_cluster,
                "bootstrapping new store"
            );
            storage.bootstrap_cluster(
                ConfState::from((voters, Vec::new())),
                &config.initial_cluster,
                (sm.snapshot())(),
            )?;
            peers = config.initial_cluster.clone();
        }
        let snapshot_index = storage.snapshot_metadata().index;
        // Invariants the raft thread maintains (checked when written, again after reading):
        // compaction only goes behind a stored snapshot, and a snapshot is only of committed
        // state.
        assert!(
            storage.first() <= snapshot_index + 1,
            "log truncated at {} past the snapshot at {snapshot_index}",
            storage.first() - 1
        );
        assert!(
            storage.hard_state().commit >= snapshot_index,
            "commit {} is behind the snapshot at {snapshot_index}",
            storage.hard_state().commit
        );
        // The bootstrap snapshot holds the image of an empty state machine, which `sm` is.
        if snapshot_index > BOOTSTRAP_INDEX
            && let Some(data) = storage.snapshot_data()?
        {
            sm.restore(snapshot_index, &data)
                .map_err(Error::StateMachine)?;
        }
        let raft_config = config.raft_config(snapshot_index);
        raft_config
            .validate()
            .map_err(|e| Error::Config(e.to_string()))?;
        let logger = slog::Logger::root(
            tracing_slog::TracingSlogDrain,
            slog::o!("raft_id" => config.node_id),
        );
        let conf_state = storage.conf_state().clone();
        let mut raw =
            RawNode::new(&raft_config, storage, &logger).map_err(|e| Error::Raft(e.to_string()))?;
        if conf_state.voters == [config.node_id] && conf_state.learners.is_empty() {
            // A cluster of one has nobody to wait for: become leader now, not after a timeout.
            raw.campaign().map_err(|e| Error::Raft(e.to_string()))?;
        }

        let capacity = config.proposal_queue_max
            + config.read_queue_max
            + config.message_queue_max
            + CONTROL_QUEUE_SLOTS;
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        let shared = Arc::new(Shared {
            node_id: config.node_id,
            status: Mutex::new(Status {
                id: config.node_id,
                ..Status::default()
            }),
            fatal: Mutex::new(None),
            stop: AtomicBool::new(false),
            queued_proposals: AtomicUsize::new(0),
            queued_reads: AtomicUsize::new(0),
            queued_messages: AtomicUsize::new(0),
            proposal_queue_max: config.proposal_queue_max,
            read_queue_max: config.read_queue_max,
            message_queue_max: config.message_queue_max,
            command_bytes_max: config.command_bytes_max,
        });
        let (leadership_tx, leadership_rx) = watch::channel(Leadership::default());
        let (membership_tx, membership_rx) = watch::channel(Membership::default());
        let now = Instant::now();
        let proposal_id_seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let election_timeout = config.tick_interval * (config.election_ticks as u32);
        let incarnation = new_incarnation(config.node_id);
        tracing::debug!(
            node_id = config.node_id,
            incarnation,
            "read contexts of this start"
        );
        let mut worker = Worker {
            id: config.node_id,
            tick_interval: config.tick_interval,
            next_tick: now + config.tick_interval,
            read_timeout: election_timeout * READ_TIMEOUT_ELECTIONS,
            read_retry: election_timeout / READ_RETRY_DIVISOR,
            drain_max: capacity,
            raw,
            sm,
            transport: transport.clone(),
            rx,
            shared: shared.clone(),
            leadership_tx,
            membership_tx,
            peers,
            membership_index: snapshot_index,
            membership_dirty: true,
            next_proposal_id: proposal_id_seed,
            proposals: BTreeMap::new(),
            incarnation,
            next_read_counter: 1,
            reads_unconfirmed: HashMap::new(),
            reads_waiting: Vec::new(),
            reads_confirmed: BTreeMap::new(),
            applied: snapshot_index,
            conf_state,
            role: StateRole::Follower,
            leader_id: 0,
            snapshot_interval_entries: config.snapshot_interval_entries,
            log_tail_entries: config.log_tail_entries,
            readies: 0,
            flushes: 0,
            entries_appended: 0,
            snapshots: 0,
            snapshots_sent: 0,
            snapshots_failed: 0,
            snapshot_build: None,
        };
        worker.publish();
        let thread = std::thread::Builder::new()
            .name(format!("raft-{}", config.node_id))
            .spawn(move || worker.run())
            .map_err(|e| Error::Storage(format!("spawn raft thread: {e}")))?;
        let node = Node {
            inner: Arc::new(Inner {
                tx,
                shared,
                leadership: leadership_rx,
                membership: membership_rx,
                thread: Mutex::new(Some(thread)),
            }),
        };
        transport.bind(&node);
        Ok(node)
    }

    /// A handle that does not keep the node alive.
    pub fn downgrade(&self) -> WeakNode {
        WeakNode {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.inner.shared.node_id
    }

    /// Queues `input`, counted against `counter` (limit `max`).
    fn enqueue(&self, input: Input, counter: &AtomicUsize, max: usize) -> Result<(), Error> {
        let shared = &self.inner.shared;
        if shared.stop.load(Ordering::SeqCst) {
            return Err(shared.stopped_error());
        }
        if counter.fetch_add(1, Ordering::AcqRel) >= max {
            counter.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::Overloaded);
        }
        match self.inner.tx.try_send(input) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                counter.fetch_sub(1, Ordering::AcqRel);
                Err(Error::Overloaded)
            }
            Err(TrySendError::Disconnected(_)) => {
                counter.fetch_sub(1, Ordering::AcqRel);
                Err(shared.stopped_error())
            }
        }
    }

    /// Proposes `command`; resolves when the entry is APPLIED on this node, with its log index
    /// and the state machine's reply.
    ///
    /// # Errors
    ///
    /// - `NotLeader { leader_hint }` at once on a non-leader;
    /// - `Overloaded` if the proposal queue is full (never blocks);
    /// - `Dropped` if raft dropped the proposal or leadership was lost before it applied: the
    ///   outcome is unknown, retry idempotently;
    /// - `InvalidInput` for an empty command or one above `command_bytes_max`;
    /// - `Stopped` / `Storage(..)` once the node has stopped.
    pub async fn propose(&self, command: Vec<u8>) -> Result<(u64, Vec<u8>), Error> {
        let shared = &self.inner.shared;
        if command.is_empty() {
            return Err(Error::InvalidInput(
                "empty command (empty entries are raft's own)".into(),
            ));
        }
        if command.len() > shared.command_bytes_max {
            return Err(Error::InvalidInput(format!(
                "command of {} bytes is above command_bytes_max {}",
                command.len(),
                shared.command_bytes_max
            )));
        }
        let (reply, rx) = oneshot::channel();
        self.enqueue(
            Input::Propose { command, reply },
            &shared.queued_proposals,
            shared.proposal_queue_max,
        )?;
        rx.await.unwrap_or_else(|_| Err(shared.stopped_error()))
    }

    /// ReadIndex: resolves with the read index once this node has applied at least up to an
    /// index that the leader confirmed (by a heartbeat round) to be the commit index at some
    /// point after the call. State read after that is linearizable.
    ///
    /// A read that raft drops, or whose confirmation is lost, or that was pending when the
    /// leader changed, is issued again with a fresh context (see the [crate docs](crate))
    /// until it is confirmed or its deadline of two election timeouts passes.
    ///
    /// # Errors
    ///
    /// `NotLeader { leader_hint: None }` if no leader is known when the read arrives;
    /// `Dropped` if no confirmation came within two election timeouts; `Overloaded` if the
    /// read queue is full; `Stopped` / `Storage(..)` once stopped.
    pub async fn read_index(&self) -> Result<u64, Error> {
        let shared = &self.inner.shared;
        let (reply, rx) = oneshot::channel();
        self.enqueue(
            Input::ReadIndex { reply },
            &shared.queued_reads,
            shared.read_queue_max,
        )?;
        rx.await.unwrap_or_else(|_| Err(shared.stopped_error()))
    }

    /// A snapshot of this node's state and counters.
    pub fn status(&self) -> Status {
        self.inner
            .shared
            .status
            .lock()
            .expect("status lock poisoned")
            .clone()
    }

    /// Leadership as this node sees it; updated on every change of term, leader or role.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.inner.leadership.clone()
    }

    /// The configuration and peer registry as of the last applied entry; updated whenever a
    /// conf change or a snapshot is applied.
    pub fn membership(&self) -> watch::Receiver<Membership> {
        self.inner.membership.clone()
    }

    /// Every member's peer address (the replicated registry), this node's included.
    pub fn peers(&self) -> BTreeMap<u64, String> {
        self.inner.membership.borrow().peers.clone()
    }

    /// Adds `id` as a voter reachable at `address` (or promotes it if it is a learner; prefer
    /// [`Node::add_learner`] then [`Node::promote_learner`] so that a new node catches up
    /// before it counts for the quorum). Resolves with the log index of the conf change once
    /// it is applied on this node.
    ///
    /// # Errors
    ///
    /// See [`Node::remove_node`].
    pub async fn add_voter(&self, id: u64, address: impl Into<String>) -> Result<u64, Error> {
        self.change_membership(MembershipChange::AddVoter {
            id,
            address: address.into(),
        })
        .await
    }

    /// Adds `id` as a learner reachable at `address`: it receives the log (a snapshot first)
    /// but does not vote. Resolves with the conf change's log index once applied.
    ///
    /// # Errors
    ///
    /// See [`Node::remove_node`]; `InvalidInput` if `id` is already a member.
    pub async fn add_learner(&self, id: u64, address: impl Into<String>) -> Result<u64, Error> {
        self.change_membership(MembershipChange::AddLearner {
            id,
            address: address.into(),
        })
        .await
    }

    /// Makes learner `id` a voter. Resolves with the conf change's log index once applied.
    ///
    /// # Errors
    ///
    /// See [`Node::remove_node`]; `InvalidInput` if `id` is not a learner.
    pub async fn promote_learner(&self, id: u64) -> Result<u64, Error> {
        self.change_membership(MembershipChange::Promote { id })
            .await
    }

    /// Removes voter or learner `id`. Resolves with the conf change's log index once applied
    /// on this node.
    ///
    /// Removing the leader itself: the leader first hands leadership to the most up-to-date
    /// voter and answers `NotLeader { leader_hint: Some(that voter) }`; retrying there (the
    /// usual NotLeader handling) removes the old leader as an ordinary follower. (raft-rs 0.7
    /// panics when a leader applies its own removal, so a leader never proposes it; a leader
    /// elected while someone else's removal of it is pending steps down before applying it.)
    ///
    /// # Errors
    ///
    /// - `NotLeader { leader_hint }` on a non-leader;
    /// - `ConfChangePending` if another membership change has not been applied yet (or the
    ///   configuration is joint and leaving it is pending);
    /// - `InvalidInput` for a change that makes no sense (unknown node, removing the last
    ///   voter, id 0, empty address) or that raft refused when applying it;
    /// - `Dropped` if leadership was lost before it applied (outcome unknown: check
    ///   [`Node::membership`]), `Overloaded`, `Stopped`.
    pub async fn remove_node(&self, id: u64) -> Result<u64, Error> {
        self.change_membership(MembershipChange::Remove { id })
            .await
    }

    async fn change_membership(&self, change: MembershipChange) -> Result<u64, Error> {
        let shared = &self.inner.shared;
        let (reply, rx) = oneshot::channel();
        self.enqueue(
            Input::ConfChange { change, reply },
            &shared.queued_proposals,
            shared.proposal_queue_max,
        )?;
        let result = rx.await.unwrap_or_else(|_| Err(shared.stopped_error()));
        result.map(|(index, _)| index)
    }

    /// Hands an inbound peer message (an encoded `eraftpb::Message`) to the raft thread.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if the bytes do not decode, carry a local message type (MsgHup, MsgBeat,
    /// MsgUnreachable, MsgSnapStatus, MsgCheckQuorum: only this node may generate those) or are
    /// addressed to another node; `Overloaded` if the inbound queue is full (the message is
    /// dropped; raft retransmits); `Stopped` / `Storage(..)` once stopped.
    pub fn receive(&self, message: Vec<u8>) -> Result<(), Error> {
        let shared = &self.inner.shared;
        let message = Message::parse_from_bytes(&message)
            .map_err(|e| Error::InvalidInput(format!("undecodable raft message: {e}")))?;
        if raft::raw_node::is_local_msg(message.get_msg_type()) {
            return Err(Error::InvalidInput(format!(
                "local raft message type {:?} from the network",
                message.get_msg_type()
            )));
        }
        if message.to != shared.node_id {
            return Err(Error::InvalidInput(format!(
                "raft message for node {} delivered to node {}",
                message.to, shared.node_id
            )));
        }
        self.enqueue(
            Input::Message(Box::new(message)),
            &shared.queued_messages,
            shared.message_queue_max,
        )
    }

    /// Transport feedback: peer `to` could not be reached, so raft should stop pipelining
    /// appends to it. Best effort (dropped if the control queue is full).
    pub fn report_unreachable(&self, to: u64) {
        let _ = self.inner.tx.try_send(Input::Unreachable(to));
    }

    /// Transport feedback: a MsgSnapshot to `to` was delivered (`success`) or failed. Without it
    /// the follower stays in snapshot state until the next election. Best effort.
    pub fn report_snapshot(&self, to: u64, success: bool) {
        let _ = self
            .inner
            .tx
            .try_send(Input::SnapshotStatus { to, success });
    }

    /// **Test hook.** Blocks the raft thread for `duration` (as a disk stall or a long snapshot
    /// build would): no ticks, no heartbeats, no proposals or reads answered meanwhile, while
    /// the node's gRPC services keep running. Best effort (dropped if the control queue is full).
    #[doc(hidden)]
    pub fn stall_for_test(&self, duration: Duration) {
        let _ = self.inner.tx.try_send(Input::Stall(duration));
    }

    /// If this node leads, asks raft to hand leadership to the most up-to-date other voter
    /// (raft catches it up, then sends it MsgTimeoutNow), so that stopping this node does not
    /// cost clients an election timeout. Best effort and asynchronous: watch
    /// [`Node::leadership`] to see it happen; raft aborts a transfer that does not finish
    /// within an election timeout. A no-op on followers and one-member clusters.
    pub fn transfer_leadership(&self) {
        let _ = self.inner.tx.try_send(Input::TransferLeadership);
    }

    /// Stops the raft thread and waits for it to exit (idempotent). Pending and later requests
    /// fail with `Stopped`. Blocks the calling thread for at most one in-flight `Ready`.
    pub fn shutdown(&self) {
        self.inner.stop_and_join();
    }
}

/// A proposal accepted into the leader's log, waiting to be applied.
struct PendingProposal {
    id: u64,
    term: u64,
    reply: ProposeReply,
}

/// What applying one committed entry produced for its proposer.
enum Outcome {
    /// An empty entry (a new leader's, or a conf change raft replaced): nobody's proposal.
    Empty,
    /// The state machine's reply, or an applied conf change (empty reply).
    Reply(Vec<u8>),
    /// A conf change raft refused when applying it (the configuration is unchanged).
    Failed(Error),
}

/// A ReadIndex request waiting for raft's confirmation.
struct PendingRead {
    /// Only this fails the read (with `Dropped`); until then it is re-issued as needed.
    deadline: Instant,
    /// When it was last handed to raft (meaningless while `attempts` is 0).
    issued: Instant,
    /// How often it was handed to raft.
    attempts: u32,
    reply: ReadReply,
}

/// The raft thread's state. Owns the `RawNode` (storage inside), the state machine and all
/// request bookkeeping; nothing here is shared except through `Shared`.
struct Worker {
    id: u64,
    tick_interval: Duration,
    next_tick: Instant,
    read_timeout: Duration,
    /// An issued read unanswered for this long is re-issued with a fresh context.
    read_retry: Duration,
    /// Inputs handled per loop iteration at most, so a flood cannot starve `Ready` handling.
    drain_max: usize,
    raw: RawNode<SledStorage>,
    sm: Box<dyn StateMachine>,
    transport: Arc<dyn Transport>,
    rx: Receiver<Input>,
    shared: Arc<Shared>,
    leadership_tx: watch::Sender<Leadership>,
    membership_tx: watch::Sender<Membership>,
    /// The peer registry as of `applied` (the addresses of `Config::initial_cluster` on a
    /// joining node until its first snapshot).
    peers: BTreeMap<u64, String>,
    /// The log index at which the current configuration was applied.
    membership_index: u64,
    /// The configuration or registry changed since the last `publish`.
    membership_dirty: bool,
    next_proposal_id: u64,
    /// Pending proposals by log index.
    proposals: BTreeMap<u64, PendingProposal>,
    /// This start's [`ReadCtx::incarnation`].
    incarnation: u64,
    /// The next [`ReadCtx::counter`].
    next_read_counter: u64,
    /// Reads handed to raft, by [`ReadCtx::counter`].
    reads_unconfirmed: HashMap<u64, PendingRead>,
    /// Reads that raft cannot take right now, issued again as soon as it can: on a leader that
    /// has not yet committed an entry in its term (raft would drop them), on a node that knows
    /// no leader after the leadership changed under them, and reads raft dropped.
    reads_waiting: Vec<PendingRead>,
    /// Confirmed reads waiting for `applied` to reach their index.
    reads_confirmed: BTreeMap<u64, Vec<ReadReply>>,
    applied: u64,
    /// The configuration after the last applied entry.
    conf_state: ConfState,
    role: StateRole,
    leader_id: u64,
    snapshot_interval_entries: u64,
    log_tail_entries: u64,
    readies: u64,
    flushes: u64,
    entries_appended: u64,
    snapshots: u64,
    snapshots_sent: u64,
    snapshots_failed: u64,
    /// The snapshot being serialised and written by a background thread, if any.
    snapshot_build: Option<SnapshotBuild>,
}

/// A snapshot of the state machine at `index` that a background thread is serialising and
/// writing to its file; the raft thread records it (and compacts the log) once it is durable.
struct SnapshotBuild {
    index: u64,
    /// The configuration and peer registry at `index`.
    conf_state: ConfState,
    peers: BTreeMap<u64, String>,
    started: Instant,
    /// The envelope written, how long serialising took, how long wrapping and writing it took.
    thread: JoinHandle<Result<(bytes::Bytes, Duration, Duration), Error>>,
}

impl Worker {
    fn run(mut self) {
        let span = tracing::info_span!("raft", node_id = self.id);
        let _entered = span.enter();
        tracing::info!(applied = self.applied, "raft thread started");
        let shared = self.shared.clone();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| self.run_loop()));
        let error = match result {
            Ok(Ok(())) => match self.raw.store().flush() {
                Ok(()) => Error::Stopped,
                Err(err) => err,
            },
            Ok(Err(err)) => {
                tracing::error!(error = %err, "raft thread stopped by a fatal error");
                err
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(panic = %what, "raft thread panicked");
                Error::Raft(format!("raft thread panicked: {what}"))
            }
        };
        if error != Error::Stopped {
            *shared.fatal.lock().expect("fatal lock poisoned") = Some(error.clone());
        }
        if let Some(build) = self.snapshot_build.take() {
            // The build holds the store's files and nothing else; let it finish so that a
            // restart in this process finds no half-written file it would have to clean up.
            let _ = build.thread.join();
        }
        shared.stop.store(true, Ordering::SeqCst);
        self.fail_everything(&error);
        self.publish();
        shared.status.lock().expect("status lock poisoned").stopped = true;
        self.leadership_tx.send_replace(Leadership {
            term: self.raw.raft.term,
            leader_id: None,
            is_leader: false,
        });
        tracing::info!("raft thread stopped");
    }

    fn run_loop(&mut self) -> Result<(), Error> {
        loop {
            if self.shared.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let timeout = if self.raw.has_ready() {
                Duration::ZERO
            } else {
                self.next_tick.saturating_duration_since(Instant::now())
            };
            let received = self.rx.recv_timeout(timeout);
            let woke = Instant::now();
            let mut inputs = 0usize;
            match received {
                Ok(input) => {
                    inputs += 1;
                    self.handle_input(input);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            // Drain everything already queued so it all lands in one Ready (group commit), but
            // for at most DRAIN_TIME_MAX: a burst of inputs (a thawed follower's backlog of
            // responses, each of which may make raft read and send a batch of entries) must not
            // keep the Ready, and with it every heartbeat, from going out.
            for _ in 0..self.drain_max {
                if woke.elapsed() > DRAIN_TIME_MAX {
                    break;
                }
                match self.rx.try_recv() {
                    Ok(input) => {
                        inputs += 1;
                        self.handle_input(input);
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            let started = Instant::now();
            self.tick_if_due();
            let ticked = Instant::now();
            self.on_ready()?;
            let readied = Instant::now();
            self.maintain_membership();
            self.maybe_snapshot()?;
            self.publish();
            let done = Instant::now();
            if done - woke > RAFT_THREAD_STALL_WARN {
                tracing::warn!(
                    inputs,
                    input_ms = (started - woke).as_millis() as u64,
                    tick_ms = (ticked - started).as_millis() as u64,
                    ready_ms = (readied - ticked).as_millis() as u64,
                    rest_ms = (done - readied).as_millis() as u64,
                    "raft thread was busy for longer than an election timeout allows"
                );
            }
        }
    }

    /// Ticks on a monotonic schedule: once per elapsed interval, never faster because the loop
    /// woke up for other work.
    fn tick_if_due(&mut self) {
        let now = Instant::now();
        if now < self.next_tick {
            return;
        }
        let mut ticks = 0;
        while now >= self.next_tick && ticks < TICK_BURST_MAX {
            self.raw.tick();
            self.next_tick += self.tick_interval;
            ticks += 1;
        }
        if now >= self.next_tick {
            self.next_tick = now + self.tick_interval;
        }
        self.retry_reads(now);
    }

    fn handle_input(&mut self, input: Input) {
        match input {
            Input::Propose { command, reply } => {
                self.shared.queued_proposals.fetch_sub(1, Ordering::AcqRel);
                self.propose(command, reply);
            }
            Input::ConfChange { change, reply } => {
                self.shared.queued_proposals.fetch_sub(1, Ordering::AcqRel);
                self.propose_conf_change(change, reply);
            }
            Input::ReadIndex { reply } => {
                self.shared.queued_reads.fetch_sub(1, Ordering::AcqRel);
                let now = Instant::now();
                self.read_index(PendingRead {
                    deadline: now + self.read_timeout,
                    issued: now,
                    attempts: 0,
                    reply,
                });
            }
            Input::Message(message) => {
                self.shared.queued_messages.fetch_sub(1, Ordering::AcqRel);
                let from = message.from;
                let msg_type = message.get_msg_type();
                match self.raw.step(*message) {
                    Ok(()) => {}
                    // Responses from peers outside the configuration (e.g. removed nodes).
                    Err(raft::Error::StepPeerNotFound) => {}
                    Err(err) => {
                        tracing::debug!(from, ?msg_type, error = %err, "raft rejected a message")
                    }
                }
            }
            Input::Unreachable(to) => self.raw.report_unreachable(to),
            Input::Stall(duration) => {
                tracing::warn!(?duration, "raft thread stalled on purpose (test hook)");
                std::thread::sleep(duration);
            }
            Input::TransferLeadership => {
                if self.raw.raft.state == raft::StateRole::Leader
                    && let Some(transferee) = self.best_transferee()
                {
                    tracing::info!(transferee, "transferring leadership before stopping");
                    self.raw.transfer_leader(transferee);
                }
            }
            Input::SnapshotStatus { to, success } => {
                tracing::debug!(to, success, "snapshot delivery reported");
                if success {
                    self.snapshots_sent += 1;
                } else {
                    self.snapshots_failed += 1;
                }
                let status = if success {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            Input::Wake => {}
        }
    }

    fn leader_hint(&self) -> Option<u64> {
        (self.raw.raft.leader_id != 0).then_some(self.raw.raft.leader_id)
    }

    fn propose(&mut self, command: Vec<u8>, reply: ProposeReply) {
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(Error::NotLeader {
                leader_hint: self.leader_hint(),
            }));
            return;
        }
        let id = self.next_proposal_id;
        self.next_proposal_id = self.next_proposal_id.wrapping_add(1);
        let last_before = self.raw.raft.raft_log.last_index();
        let result = self.raw.propose(id.to_be_bytes().to_vec(), command);
        self.track_proposal(result, last_before, id, reply);
    }

    /// Records a proposal that raft accepted (or answers the caller if it did not).
    fn track_proposal(
        &mut self,
        result: raft::Result<()>,
        last_before: u64,
        id: u64,
        reply: ProposeReply,
    ) {
        match result {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                if index != last_before + 1 {
                    // Defensive: raft accepted but did not append exactly one entry.
                    let _ = reply.send(Err(Error::Dropped));
                    return;
                }
                let term = self.raw.raft.term;
                let previous = self
                    .proposals
                    .insert(index, PendingProposal { id, term, reply });
                assert!(previous.is_none(), "two pending proposals at index {index}");
            }
            Err(raft::Error::ProposalDropped) => {
                let _ = reply.send(Err(Error::Dropped));
            }
            Err(err) => {
                let _ = reply.send(Err(Error::Raft(err.to_string())));
            }
        }
    }

    /// Validates a membership change against the applied configuration and proposes it as a
    /// simple `ConfChangeV2` whose context carries the added node's address.
    fn propose_conf_change(&mut self, change: MembershipChange, reply: ProposeReply) {
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(Error::NotLeader {
                leader_hint: self.leader_hint(),
            }));
            return;
        }
        // A new leader counts its whole uncommitted log as a pending conf change until it has
        // applied its first entry, so this also waits for that.
        if self.raw.raft.has_pending_conf() || !self.conf_state.voters_outgoing.is_empty() {
            let _ = reply.send(Err(Error::ConfChangePending));
            return;
        }
        if let MembershipChange::Remove { id } = change
            && id == self.id
            && self.conf_state.voters.len() > 1
        {
            // raft-rs 0.7 panics when a leader applies its own removal (`maybe_commit`
            // unwraps the leader's own progress): hand leadership over first and let the
            // caller retry the removal on the new leader, where it is a plain removal.
            let transferee = self.best_transferee();
            if let Some(transferee) = transferee {
                tracing::info!(
                    transferee,
                    "asked to remove the leader itself: transferring leadership first"
                );
                self.raw.transfer_leader(transferee);
            }
            let _ = reply.send(Err(Error::NotLeader {
                leader_hint: transferee,
            }));
            return;
        }
        match self.conf_change_for(&change) {
            Ok(cc) => {
                tracing::info!(change = ?change, "proposing membership change");
                let id = self.next_proposal_id;
                self.next_proposal_id = self.next_proposal_id.wrapping_add(1);
                let last_before = self.raw.raft.raft_log.last_index();
                let result = self.raw.propose_conf_change(id.to_be_bytes().to_vec(), cc);
                self.track_proposal(result, last_before, id, reply);
            }
            Err(err) => {
                let _ = reply.send(Err(err));
            }
        }
    }

    fn conf_change_for(&self, change: &MembershipChange) -> Result<ConfChangeV2, Error> {
        let invalid = |msg: String| Err(Error::InvalidInput(msg));
        let cs = &self.conf_state;
        let (id, address) = match change {
            MembershipChange::AddVoter { id, address }
            | MembershipChange::AddLearner { id, address } => (*id, Some(address)),
            MembershipChange::Promote { id } | MembershipChange::Remove { id } => (*id, None),
        };
        if id == 0 {
            return invalid("node id 0 is raft's 'no node'".into());
        }
        if address.is_some_and(|a| a.trim().is_empty()) {
            return invalid(format!("node {id}: empty peer address"));
        }
        let is_voter = cs.voters.contains(&id);
        let is_learner = cs.learners.contains(&id);
        let change_type = match change {
            MembershipChange::AddVoter { .. } if is_voter => {
                return invalid(format!("node {id} is already a voter"));
            }
            MembershipChange::AddVoter { .. } => ConfChangeType::AddNode,
            MembershipChange::AddLearner { .. } if is_voter || is_learner => {
                return invalid(format!("node {id} is already a member"));
            }
            MembershipChange::AddLearner { .. } => ConfChangeType::AddLearnerNode,
            MembershipChange::Promote { .. } if !is_learner => {
                return invalid(format!("node {id} is not a learner"));
            }
            MembershipChange::Promote { .. } => ConfChangeType::AddNode,
            MembershipChange::Remove { .. } if !is_voter && !is_learner => {
                return invalid(format!("node {id} is not a member"));
            }
            MembershipChange::Remove { .. } if is_voter && cs.voters.len() == 1 => {
                return invalid(format!("node {id} is the last voter"));
            }
            MembershipChange::Remove { .. } => ConfChangeType::RemoveNode,
        };
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change_type);
        single.node_id = id;
        let mut cc = ConfChangeV2::default();
        cc.set_changes(vec![single].into());
        let address = address.or_else(|| self.peers.get(&id));
        if change_type != ConfChangeType::RemoveNode
            && let Some(address) = address
        {
            let context = BTreeMap::from([(id, address.clone())]);
            cc.set_context(storage::encode_peers(&context).into());
        }
        Ok(cc)
    }

    /// Membership duties of a leader, run after each `Ready` (never between `ready()` and
    /// `advance()`): leave a joint configuration that nobody is leaving (docs/dependencies.md §1.9:
    /// raft-rs may never auto-leave if the leader changed before the enter-joint entry was
    /// applied), and hand leadership away once this leader's own removal has been applied.
    fn maintain_membership(&mut self) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            return;
        }
        if !self.conf_state.voters_outgoing.is_empty()
            && !raft.has_pending_conf()
            && raft.commit_to_current_term()
        {
            tracing::info!(
                voters = ?self.conf_state.voters,
                voters_outgoing = ?self.conf_state.voters_outgoing,
                "configuration is joint and nothing is leaving it: proposing leave-joint"
            );
            if let Err(err) = self
                .raw
                .propose_conf_change(Vec::new(), ConfChangeV2::default())
            {
                tracing::warn!(error = %err, "leave-joint proposal failed; retrying later");
            }
            return;
        }
        if !self.conf_state.voters.contains(&self.id)
            && self.raw.raft.lead_transferee.is_none()
            && let Some(transferee) = self.best_transferee()
        {
            tracing::info!(
                transferee,
                "this leader is no longer a voter: transferring leadership"
            );
            self.raw.transfer_leader(transferee);
        }
    }

    /// The voter other than this node that has replicated the most (for a leader transfer).
    fn best_transferee(&self) -> Option<u64> {
        self.raw
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != self.id && self.conf_state.voters.contains(*id))
            .max_by_key(|(_, progress)| progress.matched)
            .map(|(id, _)| *id)
    }

    /// A leader about to apply a conf change that drops it from the configuration altogether
    /// steps down first: raft-rs 0.7 would otherwise panic on its next commit (its own
    /// progress is gone). This happens only when another leader proposed the removal and this
    /// node was elected before applying it; stepping down in the same term is always safe.
    fn step_down_if_removing_self(&mut self, changes: &[ConfChangeSingle]) {
        if self.raw.raft.state != StateRole::Leader {
            return;
        }
        let cs = &self.conf_state;
        let removed = if changes.is_empty() {
            // Leaving a joint configuration keeps only the incoming voters and learners.
            !cs.voters.contains(&self.id)
                && !cs.learners.contains(&self.id)
                && !cs.learners_next.contains(&self.id)
        } else {
            changes.iter().any(|change| {
                change.node_id == self.id && change.get_change_type() == ConfChangeType::RemoveNode
            })
        };
        if removed {
            tracing::info!("applying this leader's own removal: stepping down first");
            let term = self.raw.raft.term;
            self.raw.raft.become_follower(term, raft::INVALID_ID);
        }
    }

    /// Hands `read` to raft with a fresh context, or parks it in `reads_waiting` if raft
    /// cannot take it now. A new read on a node that knows no leader fails at once with
    /// `NotLeader` (the caller can go elsewhere); a read already under way waits for its
    /// deadline instead.
    fn read_index(&mut self, mut read: PendingRead) {
        let raft = &self.raw.raft;
        if raft.state == StateRole::Leader {
            if !raft.commit_to_current_term() {
                // raft-rs would drop it silently; issued once the leader's first entry commits.
                self.reads_waiting.push(read);
                return;
            }
        } else if raft.leader_id == 0 {
            if read.attempts == 0 {
                let _ = read.reply.send(Err(Error::NotLeader { leader_hint: None }));
            } else {
                self.reads_waiting.push(read);
            }
            return;
        }
        let ctx = ReadCtx {
            node_id: self.id,
            incarnation: self.incarnation,
            counter: self.next_read_counter,
        };
        self.next_read_counter += 1;
        let counts =
            |raft: &raft::Raft<SledStorage>| (raft.ready_read_count(), raft.pending_read_count());
        let before = counts(&self.raw.raft);
        self.raw.read_index(ctx.encode());
        let after = counts(&self.raw.raft);
        read.issued = Instant::now();
        read.attempts += 1;
        if self.raw.raft.state == StateRole::Leader && before == after {
            // Dropped silently by raft (docs/dependencies.md §1.7); issued again with a fresh context
            // after the next Ready or tick. A follower forwards, so only the retry timer can
            // tell there.
            tracing::debug!(
                counter = ctx.counter,
                attempts = read.attempts,
                "ReadIndex dropped by raft; retrying"
            );
            self.reads_waiting.push(read);
            return;
        }
        self.reads_unconfirmed.insert(ctx.counter, read);
    }

    /// Whether raft would take a read now (see [`Worker::read_index`]).
    fn can_issue_reads(&self) -> bool {
        let raft = &self.raw.raft;
        if raft.state == StateRole::Leader {
            raft.commit_to_current_term()
        } else {
            raft.leader_id != 0
        }
    }

    /// Issues the waiting reads again if raft would take them now. Never call between
    /// `ready()` and `advance()`.
    fn issue_waiting_reads(&mut self) {
        if self.reads_waiting.is_empty() || !self.can_issue_reads() {
            return;
        }
        for read in std::mem::take(&mut self.reads_waiting) {
            self.read_index(read);
        }
    }

    /// Fails reads past their deadline with `Dropped`, re-issues (with a fresh context) reads
    /// that raft has not answered within `read_retry`, and issues waiting ones if it can.
    fn retry_reads(&mut self, now: Instant) {
        let counters: Vec<u64> = self
            .reads_unconfirmed
            .iter()
            .filter(|(_, read)| read.deadline <= now || read.issued + self.read_retry <= now)
            .map(|(counter, _)| *counter)
            .collect();
        let mut stale: Vec<PendingRead> = counters
            .iter()
            .filter_map(|counter| self.reads_unconfirmed.remove(counter))
            .collect();
        stale.append(&mut self.reads_waiting);
        for read in stale {
            if read.deadline <= now {
                tracing::debug!(attempts = read.attempts, "ReadIndex timed out");
                let _ = read.reply.send(Err(Error::Dropped));
            } else {
                self.reads_waiting.push(read);
            }
        }
        if !self.reads_waiting.is_empty() {
            tracing::trace!(reads = self.reads_waiting.len(), "re-issuing reads");
        }
        self.issue_waiting_reads();
    }

    fn on_read_states(&mut self, states: Vec<ReadState>) {
        for state in states {
            let Some(ctx) = ReadCtx::decode(&state.request_ctx) else {
                tracing::warn!(
                    bytes = state.request_ctx.len(),
                    "read state with a context that is not ours; ignored"
                );
                continue;
            };
            if ctx.node_id != self.id || ctx.incarnation != self.incarnation {
                tracing::debug!(
                    node_id = ctx.node_id,
                    incarnation = ctx.incarnation,
                    "read state for another node or an earlier start; ignored"
                );
                continue;
            }
            let Some(read) = self.reads_unconfirmed.remove(&ctx.counter) else {
                continue; // re-issued or timed out meanwhile
            };
            if state.index <= self.applied {
                let _ = read.reply.send(Ok(state.index));
            } else {
                self.reads_confirmed
                    .entry(state.index)
                    .or_default()
                    .push(read.reply);
            }
        }
    }

    /// Answers confirmed reads whose index has been applied.
    fn serve_confirmed_reads(&mut self) {
        let later = self.reads_confirmed.split_off(&(self.applied + 1));
        let ready = std::mem::replace(&mut self.reads_confirmed, later);
        for (index, replies) in ready {
            for reply in replies {
                let _ = reply.send(Ok(index));
            }
        }
    }

    /// Reacts to a change of role or leader: pending work tied to the old leadership fails.
    fn on_soft_state(&mut self, leader_id: u64, role: StateRole) {
        let was_leader = self.role == StateRole::Leader;
        let leader_changed = leader_id != self.leader_id;
        self.role = role;
        self.leader_id = leader_id;
        tracing::info!(
            term = self.raw.raft.term,
            role = ?role,
            leader_id,
            "leadership changed"
        );
        if was_leader && role != StateRole::Leader {
            for (_, proposal) in std::mem::take(&mut self.proposals) {
                let _ = proposal.reply.send(Err(Error::Dropped));
            }
        }
        if leader_changed || (was_leader && role != StateRole::Leader) {
            // Their answers would come from (or through) the old leader, if ever: issue them
            // again, to the new leader, once there is one (after this Ready). Only their
            // deadline fails them.
            let reads = self.reads_unconfirmed.drain().map(|(_, read)| read);
            self.reads_waiting.extend(reads);
        }
    }

    fn send_messages(&mut self, messages: Vec<Message>) {
        for message in messages {
            assert_ne!(
                message.to, self.id,
                "raft addressed a message to its own node"
            );
            let to = message.to;
            if message.get_msg_type() == MessageType::MsgSnapshot {
                // protobuf 2 sizes messages with a u32: a bigger one cannot be encoded.
                let bytes = message.get_snapshot().get_data().len();
                if bytes > SNAPSHOT_MESSAGE_BYTES_MAX {
                    tracing::error!(
                        to,
                        bytes,
                        max = SNAPSHOT_MESSAGE_BYTES_MAX,
                        "snapshot too large for one raft message: the follower cannot catch up"
                    );
                    self.raw.report_snapshot(to, SnapshotStatus::Failure);
                    continue;
                }
                // Encoding copies the whole snapshot: done off the raft thread. Raft sends this
                // peer nothing else until the snapshot is reported delivered or failed.
                let transport = self.transport.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("snapshot-send-{to}"))
                    .spawn(move || match message.write_to_bytes() {
                        Ok(bytes) => transport.send(to, bytes),
                        // Unreachable in practice (the size was checked above, and the message
                        // has no required fields); raft resends after the next election.
                        Err(err) => {
                            tracing::error!(to, error = %err, "cannot encode a snapshot message")
                        }
                    });
                if let Err(err) = spawned {
                    tracing::error!(to, error = %err, "cannot spawn a snapshot sender");
                    self.raw.report_snapshot(to, SnapshotStatus::Failure);
                }
                continue;
            }
            match message.write_to_bytes() {
                Ok(bytes) => self.transport.send(to, bytes),
                Err(err) => {
                    tracing::error!(to, error = %err, "cannot encode raft message");
                    if message.get_msg_type() == MessageType::MsgSnapshot {
                        self.raw.report_snapshot(to, SnapshotStatus::Failure);
                    }
                }
            }
        }
    }

    /// Handles one `Ready` in the canonical order (docs/dependencies.md §1.4).
    fn on_ready(&mut self) -> Result<(), Error> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        self.readies += 1;
        if let Some(ss) = rd.ss() {
            self.on_soft_state(ss.leader_id, ss.raft_state);
        }
        let read_states = rd.take_read_states();

        // 2. The leader's messages may go out before its own write (Raft thesis §10.2.1).
        self.send_messages(rd.take_messages());

        let mut batch = sled::Batch::default();
        let mut wrote = false;
        // 3. Snapshot from the leader: state machine, then storage.
        if !rd.snapshot().is_empty() {
            let snapshot = rd.snapshot().clone();
            wrote |= self.install_snapshot(&mut batch, &snapshot)?;
        }
        // 4. Committed entries (already durable).
        self.apply_entries(rd.take_committed_entries())?;
        // 5. New entries.
        if !rd.entries().is_empty() {
            self.entries_appended += rd.entries().len() as u64;
            self.raw.mut_store().append(&mut batch, rd.entries())?;
            wrote = true;
        }
        // 6. Hard state.
        if let Some(hs) = rd.hs() {
            self.raw
                .mut_store()
                .set_hard_state(&mut batch, hs.clone())?;
            wrote = true;
        }
        // 7. One atomic batch, one flush.
        if wrote {
            let sync = rd.must_sync() || !rd.entries().is_empty();
            self.raw.mut_store().write(batch, sync)?;
            if sync {
                self.flushes += 1;
            }
        }
        // 8. Follower responses and votes: only once durable.
        self.send_messages(rd.take_persisted_messages());
        // 9. Advance and handle the LightReady completely.
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        self.send_messages(light.take_messages());
        self.apply_entries(light.take_committed_entries())?;
        // 10.
        self.raw.advance_apply();
        // 11. Reads.
        self.on_read_states(read_states);
        self.serve_confirmed_reads();
        self.issue_waiting_reads();
        Ok(())
    }

    /// Restores the state machine from a leader's snapshot and stages it into storage.
    fn install_snapshot(
        &mut self,
        batch: &mut sled::Batch,
        snapshot: &Snapshot,
    ) -> Result<bool, Error> {
        let meta = snapshot.get_metadata();
        if meta.index < self.raw.store().first() {
            tracing::warn!(index = meta.index, "ignoring out-of-date snapshot");
            return Ok(false);
        }
        let (peers, image) = storage::decode_snapshot_data(snapshot.get_data())
            .map_err(|e| Error::StateMachine(format!("snapshot from the leader: {e}")))?;
        tracing::info!(
            index = meta.index,
            term = meta.term,
            bytes = image.len(),
            voters = ?meta.get_conf_state().voters,
            learners = ?meta.get_conf_state().learners,
            peers = ?peers,
            "installing snapshot"
        );
        let started = Instant::now();
        self.sm
            .restore(meta.index, image)
            .map_err(Error::StateMachine)?;
        tracing::info!(
            index = meta.index,
            restore_ms = started.elapsed().as_millis() as u64,
            "state machine restored from snapshot"
        );
        let mut local = Snapshot::default();
        local.set_metadata(meta.clone());
        local.set_data(image.to_vec().into());
        let staged = self.raw.mut_store().apply_snapshot(batch, &local, &peers)?;
        assert!(staged, "snapshot newer than the log was not staged");
        self.applied = meta.index;
        self.conf_state = meta.get_conf_state().clone();
        self.peers = peers;
        self.membership_index = meta.index;
        self.membership_dirty = true;
        self.snapshots += 1;
        // Anything proposed at or below the snapshot index was decided elsewhere.
        let later = self.proposals.split_off(&(meta.index + 1));
        for (_, proposal) in std::mem::replace(&mut self.proposals, later) {
            let _ = proposal.reply.send(Err(Error::Dropped));
        }
        Ok(true)
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), Error> {
        for entry in entries {
            assert_eq!(
                entry.index,
                self.applied + 1,
                "committed entries must be applied in order without gaps"
            );
            let outcome = match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => Outcome::Empty,
                EntryType::EntryNormal => Outcome::Reply(self.sm.apply(entry.index, &entry.data)),
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&entry.data)
                        .map_err(|e| Error::Raft(format!("undecodable conf change: {e}")))?;
                    let mut single = ConfChangeSingle::default();
                    single.set_change_type(cc.get_change_type());
                    single.node_id = cc.node_id;
                    self.step_down_if_removing_self(std::slice::from_ref(&single));
                    let result = self.raw.apply_conf_change(&cc);
                    self.on_conf_change_applied(entry.index, result, &[single], &[])
                }
                EntryType::EntryConfChangeV2 => {
                    // Empty data (raft's own auto-leave entry) decodes as the empty leave-joint
                    // change, which carries no context (TiKV #12022).
                    let cc = ConfChangeV2::parse_from_bytes(&entry.data)
                        .map_err(|e| Error::Raft(format!("undecodable conf change: {e}")))?;
                    self.step_down_if_removing_self(cc.get_changes());
                    let result = self.raw.apply_conf_change(&cc);
                    self.on_conf_change_applied(
                        entry.index,
                        result,
                        cc.get_changes(),
                        cc.get_context(),
                    )
                }
            };
            self.applied = entry.index;
            self.complete_proposal(&entry, outcome);
        }
        self.serve_confirmed_reads();
        Ok(())
    }

    /// Records the configuration that `RawNode::apply_conf_change` returned and updates the
    /// peer registry: addresses of added nodes come from `context` ([`storage::encode_peers`]);
    /// nodes no longer in the configuration are forgotten. raft refuses an invalid change
    /// without changing anything, identically on every node, so that is not fatal: the
    /// configuration stays as it was and the proposer is told.
    fn on_conf_change_applied(
        &mut self,
        index: u64,
        result: raft::Result<ConfState>,
        changes: &[ConfChangeSingle],
        context: &[u8],
    ) -> Outcome {
        let conf_state = match result {
            Ok(conf_state) => conf_state,
            Err(err) => {
                tracing::warn!(index, error = %err, "conf change refused by raft; configuration unchanged");
                return Outcome::Failed(Error::InvalidInput(format!(
                    "conf change refused by raft: {err}"
                )));
            }
        };
        let added = if context.is_empty() {
            BTreeMap::new()
        } else {
            match storage::decode_peers(context) {
                Ok((added, _)) => added,
                Err(err) => {
                    tracing::warn!(index, error = %err, "conf change context is not a peer registry; no address learnt");
                    BTreeMap::new()
                }
            }
        };
        for change in changes {
            if change.get_change_type() != ConfChangeType::RemoveNode
                && let Some(address) = added.get(&change.node_id)
            {
                self.peers.insert(change.node_id, address.clone());
            }
        }
        let member = |id: &u64| {
            conf_state.voters.contains(id)
                || conf_state.learners.contains(id)
                || conf_state.voters_outgoing.contains(id)
                || conf_state.learners_next.contains(id)
        };
        self.peers.retain(|id, _| member(id));
        tracing::info!(
            index,
            voters = ?conf_state.voters,
            learners = ?conf_state.learners,
            voters_outgoing = ?conf_state.voters_outgoing,
            peers = ?self.peers,
            "configuration changed"
        );
        if !member(&self.id) {
            tracing::info!(index, "this node has been removed from the cluster");
        }
        self.conf_state = conf_state;
        self.membership_index = index;
        self.membership_dirty = true;
        Outcome::Reply(Vec::new())
    }

    /// Completes the proposal waiting at `entry.index`, if any. A proposal whose index was
    /// taken by an entry of another term (or another proposer) was overwritten: `Dropped`.
    fn complete_proposal(&mut self, entry: &Entry, outcome: Outcome) {
        while let Some(first) = self.proposals.first_entry() {
            if *first.key() >= entry.index {
                break;
            }
            let _ = first.remove().reply.send(Err(Error::Dropped));
        }
        let Some(proposal) = self.proposals.remove(&entry.index) else {
            return;
        };
        let ours = proposal.term == entry.term && entry.context[..] == proposal.id.to_be_bytes();
        let result = match outcome {
            Outcome::Reply(reply) if ours => Ok((entry.index, reply)),
            Outcome::Failed(err) if ours => Err(err),
            _ => Err(Error::Dropped),
        };
        let _ = proposal.reply.send(result);
    }

    /// Takes a snapshot every `snapshot_interval_entries` applied entries, or when raft asked
    /// for one newer than the stored one, and records it once built.
    ///
    /// The raft thread only freezes the state machine ([`StateMachine::snapshot`], a cheap
    /// copy-on-write clone); a background thread serialises the frozen copy and writes it to
    /// its file, and a later pass of the loop records it in the store and compacts the log. So
    /// the raft thread never serialises or writes a snapshot of its own state, whatever its
    /// size. One build at a time.
    fn maybe_snapshot(&mut self) -> Result<(), Error> {
        if let Some(build) = &self.snapshot_build {
            if !build.thread.is_finished() {
                return Ok(());
            }
            let build = self.snapshot_build.take().expect("checked above");
            self.record_snapshot(build)?;
        }
        let stored = self.raw.store().snapshot_metadata().index;
        if self.applied <= stored {
            return Ok(());
        }
        // Consumed whenever no build runs, so a request satisfied by this build does not start
        // another one right after it.
        let wanted = self.raw.store().take_snapshot_wanted();
        if self.applied - stored < self.snapshot_interval_entries && !wanted {
            return Ok(());
        }
        let started = Instant::now();
        let job = self.sm.snapshot();
        let index = self.applied;
        let peers = self.peers.clone();
        let files = self.raw.store().snapshot_files();
        let image_peers = peers.clone();
        let thread = std::thread::Builder::new()
            .name(format!("snapshot-{}", self.id))
            .spawn(move || {
                let began = Instant::now();
                let image = job();
                let serialised = began.elapsed();
                let began = Instant::now();
                let envelope = files.write_image(index, &image_peers, &image)?;
                Ok((envelope, serialised, began.elapsed()))
            })
            .map_err(|e| Error::Storage(format!("spawn snapshot thread: {e}")))?;
        tracing::debug!(
            index,
            freeze_us = started.elapsed().as_micros() as u64,
            "snapshot frozen, building in the background"
        );
        self.snapshot_build = Some(SnapshotBuild {
            index,
            conf_state: self.conf_state.clone(),
            peers,
            started,
            thread,
        });
        Ok(())
    }

    /// Records a finished background build and compacts the log behind it. A build that a
    /// snapshot from the leader overtook meanwhile is dropped (its file with it).
    fn record_snapshot(&mut self, build: SnapshotBuild) -> Result<(), Error> {
        let SnapshotBuild {
            index,
            conf_state,
            peers,
            started,
            thread,
        } = build;
        let (envelope, serialised, written) = match thread.join() {
            Ok(result) => result?,
            Err(_) => {
                return Err(Error::StateMachine(format!(
                    "the snapshot build at index {index} panicked"
                )));
            }
        };
        let bytes = envelope.len();
        let store = self.raw.mut_store();
        if index <= store.snapshot_metadata().index {
            tracing::info!(
                index,
                stored = store.snapshot_metadata().index,
                "dropping a snapshot build overtaken by a snapshot from the leader"
            );
            store
                .snapshot_files()
                .remove_stale(index, store.snapshot_metadata().index);
            return Ok(());
        }
        let recording = Instant::now();
        let compact_to = index.saturating_sub(self.log_tail_entries) + 1;
        let mut batch = sled::Batch::default();
        store.record_snapshot(&mut batch, index, conf_state, &peers, envelope)?;
        store.compact(&mut batch, compact_to)?;
        store.write(batch, true)?;
        self.flushes += 1;
        self.snapshots += 1;
        tracing::info!(
            index,
            bytes,
            first_index = compact_to,
            serialise_ms = serialised.as_millis() as u64,
            write_ms = written.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            record_ms = recording.elapsed().as_millis() as u64,
            "snapshot stored, log compacted (the raft thread was busy only for record_ms)"
        );
        Ok(())
    }

    /// Publishes status and leadership for the handles.
    fn publish(&mut self) {
        let raft = &self.raw.raft;
        let store = self.raw.store();
        let leader_id = (raft.leader_id != 0).then_some(raft.leader_id);
        {
            let mut status = self.shared.status.lock().expect("status lock poisoned");
            status.role = Role::from(raft.state);
            status.term = raft.term;
            status.leader_id = leader_id;
            status.commit = raft.raft_log.committed;
            status.applied = self.applied;
            status.first_index = store.first();
            status.last_index = store.last();
            status.snapshot_index = store.snapshot_metadata().index;
            status.readies = self.readies;
            status.flushes = self.flushes;
            status.entries_appended = self.entries_appended;
            status.snapshots = self.snapshots;
            status.snapshots_sent = self.snapshots_sent;
            status.snapshots_failed = self.snapshots_failed;
            if self.membership_dirty {
                let cs = &self.conf_state;
                let mut voters: Vec<u64> = cs.voters.clone();
                voters.extend(
                    cs.voters_outgoing
                        .iter()
                        .filter(|id| !cs.voters.contains(id)),
                );
                voters.sort_unstable();
                let mut learners: Vec<u64> = cs.learners.clone();
                learners.extend(
                    cs.learners_next
                        .iter()
                        .filter(|id| !cs.learners.contains(id)),
                );
                learners.sort_unstable();
                let member = |id: u64, kind: MemberKind| PeerStatus {
                    id,
                    address: self.peers.get(&id).cloned(),
                    kind,
                    matched: None,
                };
                status.members = voters
                    .iter()
                    .map(|id| member(*id, MemberKind::Voter))
                    .chain(learners.iter().map(|id| member(*id, MemberKind::Learner)))
                    .collect();
                let initialized = !voters.is_empty() || !learners.is_empty();
                status.removed =
                    initialized && !voters.contains(&self.id) && !learners.contains(&self.id);
                let mut sorted_voters = cs.voters.clone();
                sorted_voters.sort_unstable();
                let mut sorted_learners = cs.learners.clone();
                sorted_learners.sort_unstable();
                let mut voters_outgoing = cs.voters_outgoing.clone();
                voters_outgoing.sort_unstable();
                let membership = Membership {
                    voters: sorted_voters,
                    learners: sorted_learners,
                    voters_outgoing,
                    peers: self.peers.clone(),
                    index: self.membership_index,
                };
                self.membership_tx.send_if_modified(|current| {
                    if *current == membership {
                        false
                    } else {
                        *current = membership;
                        true
                    }
                });
                self.membership_dirty = false;
            }
            let leading = raft.state == StateRole::Leader;
            for member in &mut status.members {
                member.matched = if leading {
                    raft.prs().get(member.id).map(|progress| progress.matched)
                } else {
                    None
                };
            }
        }
        let leadership = Leadership {
            term: raft.term,
            leader_id,
            is_leader: raft.state == StateRole::Leader,
        };
        self.leadership_tx.send_if_modified(|current| {
            if *current == leadership {
                false
            } else {
                *current = leadership;
                true
            }
        });
    }

    /// Fails every pending and queued request with `error` (the thread is stopping).
    fn fail_everything(&mut self, error: &Error) {
        for (_, proposal) in std::mem::take(&mut self.proposals) {
            let _ = proposal.reply.send(Err(error.clone()));
        }
        for (_, read) in self.reads_unconfirmed.drain() {
            let _ = read.reply.send(Err(error.clone()));
        }
        for read in self.reads_waiting.drain(..) {
            let _ = read.reply.send(Err(error.clone()));
        }
        for (_, replies) in std::mem::take(&mut self.reads_confirmed) {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
        while let Ok(input) = self.rx.try_recv() {
            match input {
                Input::Propose { reply, .. } | Input::ConfChange { reply, .. } => {
                    self.shared.queued_proposals.fetch_sub(1, Ordering::AcqRel);
                    let _ = reply.send(Err(error.clone()));
                }
                Input::ReadIndex { reply } => {
                    self.shared.queued_reads.fetch_sub(1, Ordering::AcqRel);
                    let _ = reply.send(Err(error.clone()));
                }
                Input::Message(_) => {
                    self.shared.queued_messages.fetch_sub(1, Ordering::AcqRel);
                }
                Input::Unreachable(_)
                | Input::SnapshotStatus { .. }
                | Input::Wake
                | Input::Stall(_)
                | Input::TransferLeadership => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_contexts_round_trip_and_decode_strictly() {
        let ctx = ReadCtx {
            node_id: 3,
            incarnation: 0xdead_beef_0123_4567,
            counter: 42,
        };
        let bytes = ctx.encode();
        assert_eq!(bytes.len(), READ_CTX_BYTES);
        assert_eq!(ReadCtx::decode(&bytes), Some(ctx));
        // The old format (a bare counter), truncated and padded contexts are not ours.
        assert_eq!(ReadCtx::decode(&42u64.to_be_bytes()), None);
        assert_eq!(ReadCtx::decode(&bytes[..READ_CTX_BYTES - 1]), None);
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(ReadCtx::decode(&longer), None);
        assert_eq!(ReadCtx::decode(&[]), None);
    }

    #[test]
    fn every_start_has_its_own_incarnation() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let incarnation = new_incarnation(1);
            assert_ne!(incarnation, 0);
            assert!(
                seen.insert(incarnation),
                "incarnation {incarnation} repeated"
            );
        }
    }
}

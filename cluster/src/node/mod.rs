//! The node handle and the raft thread that drives `RawNode` (see the crate docs for the design).
//!
//! This file holds the handle side: [`Node`] and [`WeakNode`], which other threads use, the
//! state they share with the raft thread, and the [`Input`]s they send it over one bounded
//! channel. The raft thread's side is [`Worker`], whose methods are split by concern:
//!
//! - `worker.rs`: the raft thread's loop, input handling, proposals and `Ready` handling;
//! - `read_index.rs`: ReadIndex contexts and the issue/retry/answer bookkeeping of reads (its
//!   module docs say how a read is kept alive until its deadline);
//! - `membership.rs`: conf changes, leaving a joint configuration, a leader's own removal;
//! - `snapshot.rs`: installing the leader's snapshots, building and recording this node's own;
//! - `identity.rs`: the cluster id and incarnations that peer messages are checked against.

mod identity;
mod membership;
mod read_index;
mod snapshot;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Message};
use raft::{RawNode, StateRole};
use tokio::sync::{oneshot, watch};

use crate::storage::{BOOTSTRAP_INDEX, Registry, SledStorage};
use crate::{Config, Error, Leadership, Membership, Observer, StateMachine, Status, Transport};

pub use identity::PeerOrigin;
pub(crate) use identity::Stamp;
use identity::Trust;
use read_index::{READ_RETRY_DIVISOR, READ_TIMEOUT_ELECTIONS, new_incarnation};
use worker::Worker;

/// Queue slots reserved for control inputs (shutdown wake-ups, transport feedback) on top of
/// the per-kind limits in [`Config`]. Beyond this, feedback is dropped (raft copes).
const CONTROL_QUEUE_SLOTS: usize = 64;

/// Largest snapshot image (with its peer registry) that one raft message can carry: protobuf 2
/// sizes messages with a `u32`, so this leaves room for the rest of the message.
pub const SNAPSHOT_MESSAGE_BYTES_MAX: usize = (u32::MAX - 1024 * 1024) as usize;

type ProposeReply = oneshot::Sender<Result<(u64, Vec<u8>), Error>>;
type ReadReply = oneshot::Sender<Result<u64, Error>>;

/// A membership change requested through the `Node` API.
#[derive(Debug, Clone)]
enum MembershipChange {
    /// `incarnation`: what the node reported when asked (0: not asked or did not answer).
    AddVoter {
        id: u64,
        address: String,
        incarnation: u64,
    },
    AddLearner {
        id: u64,
        address: String,
        incarnation: u64,
    },
    Promote {
        id: u64,
    },
    Remove {
        id: u64,
    },
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

/// What the node's handles and its raft thread share: the status and the fatal error the
/// thread publishes, the stop flag, and the occupancy and limits of the thread's input queue
/// that handles check before queueing.
struct NodeState {
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
    /// The embedding program's hooks, once set.
    observer: OnceLock<Arc<dyn Observer>>,
    /// Cluster id and incarnations, checked on every peer message.
    trust: Trust,
}

impl NodeState {
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
    shared: Arc<NodeState>,
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
        let mut storage = SledStorage::open_with_wal_segment(
            &config.data_dir,
            config.sled_cache_bytes,
            config.wal_segment_bytes,
        )?;
        let mut registry = storage.snapshot_registry().clone();
        if storage.is_initialized() {
            tracing::info!(
                node_id = config.node_id,
                voters = ?storage.conf_state().voters,
                learners = ?storage.conf_state().learners,
                peers = ?registry.addresses,
                cluster_id = format_args!("{:016x}", storage.cluster_id()),
                incarnation = format_args!("{:016x}", storage.incarnation()),
                "recovering existing store; initial cluster ignored"
            );
        } else if config.joins_existing_cluster() {
            tracing::info!(
                node_id = config.node_id,
                contacts = ?config.initial_cluster,
                "empty store, not a founding member: joining an existing cluster, waiting for the leader's snapshot"
            );
            registry = Registry::with_addresses(config.initial_cluster.clone());
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
            registry = Registry::with_addresses(config.initial_cluster.clone());
        }
        let trust = Trust::new(
            config.node_id,
            storage.incarnation(),
            storage.cluster_id(),
            &registry,
        );
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
        let shared = Arc::new(NodeState {
            node_id: config.node_id,
            status: Mutex::new(Status {
                id: config.node_id,
                incarnation: trust.incarnation(),
                cluster_id: trust.cluster_id(),
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
            observer: OnceLock::new(),
            trust,
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
            registry,
            identity_proposed: false,
            recording: std::collections::BTreeSet::new(),
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
            snapshot_bytes: 0,
            leader_changes: 0,
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

    /// Installs the hooks the raft thread reports to (see [`Observer`]). Only the first call
    /// takes effect; events before it are not reported.
    pub fn observe(&self, observer: Arc<dyn Observer>) {
        let _ = self.inner.shared.observer.set(observer);
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
        self.add_member(id, address, 0, crate::MemberKind::Voter)
            .await
    }

    /// Adds `id` as a voter or a learner ([`Node::add_voter`], [`Node::add_learner`]) whose
    /// data directory reported `incarnation` when asked (0: unknown; the leader then records
    /// the incarnation of its first message). Its messages are accepted from that incarnation
    /// only, and never from an incarnation removed from the cluster earlier.
    ///
    /// # Errors
    ///
    /// See [`Node::remove_node`]; `InvalidInput` if `id` is already a member or `incarnation`
    /// was removed from the cluster.
    pub async fn add_member(
        &self,
        id: u64,
        address: impl Into<String>,
        incarnation: u64,
        kind: crate::MemberKind,
    ) -> Result<u64, Error> {
        let address = address.into();
        self.change_membership(match kind {
            crate::MemberKind::Voter => MembershipChange::AddVoter {
                id,
                address,
                incarnation,
            },
            crate::MemberKind::Learner => MembershipChange::AddLearner {
                id,
                address,
                incarnation,
            },
        })
        .await
    }

    /// Checks the identity fields of a peer message (`origin`) before its payload is handed
    /// to [`Node::receive_from`]: a message for another incarnation of this node, from another
    /// cluster (or a node in none, once this node has a cluster id), or from an incarnation of
    /// the sender that the cluster removed or does not have on record is refused with a
    /// description for both nodes' logs. A node without a cluster id takes the sender's.
    ///
    /// # Errors
    ///
    /// `Error::InvalidInput` saying why the message is refused.
    pub fn admit(&self, origin: &PeerOrigin) -> Result<(), Error> {
        self.inner
            .shared
            .trust
            .admit(origin)
            .map_err(Error::InvalidInput)
    }

    /// The identity fields for a message from this node to `to`.
    pub(crate) fn stamp(&self, to: u64) -> Stamp {
        self.inner.shared.trust.stamp(to)
    }

    /// Adds `id` as a learner reachable at `address`: it receives the log (a snapshot first)
    /// but does not vote. Resolves with the conf change's log index once applied.
    ///
    /// # Errors
    ///
    /// See [`Node::remove_node`]; `InvalidInput` if `id` is already a member.
    pub async fn add_learner(&self, id: u64, address: impl Into<String>) -> Result<u64, Error> {
        self.add_member(id, address, 0, crate::MemberKind::Learner)
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
        self.receive_checked(None, message)
    }

    /// Like [`Node::receive`], for a message that arrived on a stream of node `sender`: a
    /// message that names another sender in its `from` is refused.
    ///
    /// # Errors
    ///
    /// As [`Node::receive`]; `InvalidInput` if `from` is not `sender`.
    pub fn receive_from(&self, sender: u64, message: Vec<u8>) -> Result<(), Error> {
        self.receive_checked(Some(sender), message)
    }

    fn receive_checked(&self, sender: Option<u64>, message: Vec<u8>) -> Result<(), Error> {
        let shared = &self.inner.shared;
        let message = Message::parse_from_bytes(&message)
            .map_err(|e| Error::InvalidInput(format!("undecodable raft message: {e}")))?;
        if let Some(sender) = sender
            && message.from != sender
        {
            return Err(Error::InvalidInput(format!(
                "raft message from node {} on node {sender}'s stream",
                message.from
            )));
        }
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

//! The node handle and the raft thread that drives `RawNode` (see the crate docs for the design).

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType, Snapshot,
};
use raft::{RawNode, ReadState, SnapshotStatus, StateRole};
use tokio::sync::{oneshot, watch};

use crate::storage::SledStorage;
use crate::{Config, Error, Leadership, Role, StateMachine, Status, Transport};

/// Queue slots reserved for control inputs (shutdown wake-ups, transport feedback) on top of
/// the per-kind limits in [`Config`]. Beyond this, feedback is dropped (raft copes).
const CONTROL_QUEUE_SLOTS: usize = 64;

/// A ReadIndex request that raft did not answer within this many election timeouts fails with
/// `Dropped` (raft-rs drops forwarded reads silently when the leader changes).
const READ_TIMEOUT_ELECTIONS: u32 = 2;

/// If the raft thread falls this many ticks behind (e.g. the process was stopped), it ticks once
/// and resynchronises its schedule instead of firing a burst that would start an election.
const TICK_BURST_MAX: u32 = 3;

type ProposeReply = oneshot::Sender<Result<(u64, Vec<u8>), Error>>;
type ReadReply = oneshot::Sender<Result<u64, Error>>;

/// Work for the raft thread.
enum Input {
    Propose {
        command: Vec<u8>,
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

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.shared.node_id)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Opens (or creates) the sled db in `data_dir`; if the store is empty, bootstraps it with
    /// `initial_voters`, otherwise ignores them and recovers: the stored snapshot is restored
    /// into `sm`, raft's `applied` is set to the snapshot index and raft re-delivers the
    /// committed entries after it. Spawns the raft thread. A single-voter cluster campaigns at
    /// once and is leader within a few milliseconds.
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
        if storage.is_initialized() {
            tracing::info!(
                node_id = config.node_id,
                voters = ?storage.conf_state().voters,
                "recovering existing store; initial_voters ignored"
            );
        } else {
            tracing::info!(
                node_id = config.node_id,
                voters = ?config.initial_voters,
                "bootstrapping new store"
            );
            storage.bootstrap(ConfState::from((config.initial_voters.clone(), Vec::new())))?;
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
        if let Some(data) = storage.snapshot_data()? {
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
        let now = Instant::now();
        let proposal_id_seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let mut worker = Worker {
            id: config.node_id,
            tick_interval: config.tick_interval,
            next_tick: now + config.tick_interval,
            read_timeout: config.tick_interval
                * (config.election_ticks as u32)
                * READ_TIMEOUT_ELECTIONS,
            drain_max: capacity,
            raw,
            sm,
            transport,
            rx,
            shared: shared.clone(),
            leadership_tx,
            next_proposal_id: proposal_id_seed,
            proposals: BTreeMap::new(),
            next_read_ctx: 1,
            reads_unconfirmed: HashMap::new(),
            reads_deferred: Vec::new(),
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
        };
        worker.publish();
        let thread = std::thread::Builder::new()
            .name(format!("raft-{}", config.node_id))
            .spawn(move || worker.run())
            .map_err(|e| Error::Storage(format!("spawn raft thread: {e}")))?;
        Ok(Node {
            inner: Arc::new(Inner {
                tx,
                shared,
                leadership: leadership_rx,
                thread: Mutex::new(Some(thread)),
            }),
        })
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
    /// # Errors
    ///
    /// `NotLeader { leader_hint: None }` if no leader is known; `Dropped` if raft dropped the
    /// request, leadership changed, or no answer came within two election timeouts;
    /// `Overloaded` if the read queue is full; `Stopped` / `Storage(..)` once stopped.
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

/// A ReadIndex request waiting for raft's confirmation.
struct PendingRead {
    deadline: Instant,
    reply: ReadReply,
}

/// The raft thread's state. Owns the `RawNode` (storage inside), the state machine and all
/// request bookkeeping; nothing here is shared except through `Shared`.
struct Worker {
    id: u64,
    tick_interval: Duration,
    next_tick: Instant,
    read_timeout: Duration,
    /// Inputs handled per loop iteration at most, so a flood cannot starve `Ready` handling.
    drain_max: usize,
    raw: RawNode<SledStorage>,
    sm: Box<dyn StateMachine>,
    transport: Arc<dyn Transport>,
    rx: Receiver<Input>,
    shared: Arc<Shared>,
    leadership_tx: watch::Sender<Leadership>,
    next_proposal_id: u64,
    /// Pending proposals by log index.
    proposals: BTreeMap<u64, PendingProposal>,
    next_read_ctx: u64,
    /// Reads handed to raft, by context.
    reads_unconfirmed: HashMap<u64, PendingRead>,
    /// Reads on a leader that has not yet committed an entry in its term (raft would drop them).
    reads_deferred: Vec<PendingRead>,
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
            match self.rx.recv_timeout(timeout) {
                Ok(input) => self.handle_input(input),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            // Drain everything already queued so it all lands in one Ready (group commit).
            for _ in 0..self.drain_max {
                match self.rx.try_recv() {
                    Ok(input) => self.handle_input(input),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            self.tick_if_due();
            self.on_ready()?;
            self.maybe_snapshot()?;
            self.publish();
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
        self.expire_reads(now);
    }

    fn handle_input(&mut self, input: Input) {
        match input {
            Input::Propose { command, reply } => {
                self.shared.queued_proposals.fetch_sub(1, Ordering::AcqRel);
                self.propose(command, reply);
            }
            Input::ReadIndex { reply } => {
                self.shared.queued_reads.fetch_sub(1, Ordering::AcqRel);
                self.read_index(PendingRead {
                    deadline: Instant::now() + self.read_timeout,
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
            Input::SnapshotStatus { to, success } => {
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
        match self.raw.propose(id.to_be_bytes().to_vec(), command) {
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

    fn read_index(&mut self, read: PendingRead) {
        let raft = &self.raw.raft;
        if raft.state == StateRole::Leader {
            if !raft.commit_to_current_term() {
                // raft-rs would drop it silently; retry once the leader's first entry commits.
                self.reads_deferred.push(read);
                return;
            }
        } else if raft.leader_id == 0 {
            let _ = read.reply.send(Err(Error::NotLeader { leader_hint: None }));
            return;
        }
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        let counts =
            |raft: &raft::Raft<SledStorage>| (raft.ready_read_count(), raft.pending_read_count());
        let before = counts(&self.raw.raft);
        self.raw.read_index(ctx.to_be_bytes().to_vec());
        let after = counts(&self.raw.raft);
        if self.raw.raft.state == StateRole::Leader && before == after {
            // Dropped silently by raft (FIELD-NOTES §1.7); a follower forwards, so only the
            // timeout can tell there.
            let _ = read.reply.send(Err(Error::Dropped));
            return;
        }
        self.reads_unconfirmed.insert(ctx, read);
    }

    fn expire_reads(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .reads_unconfirmed
            .iter()
            .filter(|(_, read)| read.deadline <= now)
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in expired {
            if let Some(read) = self.reads_unconfirmed.remove(&ctx) {
                let _ = read.reply.send(Err(Error::Dropped));
            }
        }
        let (expired, kept): (Vec<_>, Vec<_>) = self
            .reads_deferred
            .drain(..)
            .partition(|read| read.deadline <= now);
        self.reads_deferred = kept;
        for read in expired {
            let _ = read.reply.send(Err(Error::Dropped));
        }
    }

    fn on_read_states(&mut self, states: Vec<ReadState>) {
        for state in states {
            let Ok(ctx) = <[u8; 8]>::try_from(state.request_ctx.as_slice()) else {
                continue;
            };
            let Some(read) = self.reads_unconfirmed.remove(&u64::from_be_bytes(ctx)) else {
                continue; // timed out meanwhile
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
            for read in self.reads_deferred.drain(..) {
                let _ = read.reply.send(Err(Error::NotLeader {
                    leader_hint: (leader_id != 0).then_some(leader_id),
                }));
            }
        }
        if leader_changed || (was_leader && role != StateRole::Leader) {
            for (_, read) in self.reads_unconfirmed.drain() {
                let _ = read.reply.send(Err(Error::Dropped));
            }
        }
    }

    fn send_messages(&mut self, messages: Vec<Message>) {
        for message in messages {
            assert_ne!(
                message.to, self.id,
                "raft addressed a message to its own node"
            );
            let to = message.to;
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

    /// Handles one `Ready` in the canonical order (FIELD-NOTES §1.4).
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
        if self.raw.raft.state == StateRole::Leader
            && !self.reads_deferred.is_empty()
            && self.raw.raft.commit_to_current_term()
        {
            for read in std::mem::take(&mut self.reads_deferred) {
                self.read_index(read);
            }
        }
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
        tracing::info!(index = meta.index, term = meta.term, "installing snapshot");
        self.sm
            .restore(meta.index, snapshot.get_data())
            .map_err(Error::StateMachine)?;
        let staged = self.raw.mut_store().apply_snapshot(batch, snapshot)?;
        assert!(staged, "snapshot newer than the log was not staged");
        self.applied = meta.index;
        self.conf_state = meta.get_conf_state().clone();
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
            let reply = match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => None,
                EntryType::EntryNormal => Some(self.sm.apply(entry.index, &entry.data)),
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&entry.data)
                        .map_err(|e| Error::Raft(format!("undecodable conf change: {e}")))?;
                    let result = self.raw.apply_conf_change(&cc);
                    self.on_conf_changed(result)?;
                    Some(Vec::new())
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&entry.data)
                        .map_err(|e| Error::Raft(format!("undecodable conf change: {e}")))?;
                    let result = self.raw.apply_conf_change(&cc);
                    self.on_conf_changed(result)?;
                    Some(Vec::new())
                }
            };
            self.applied = entry.index;
            self.complete_proposal(&entry, reply);
        }
        self.serve_confirmed_reads();
        Ok(())
    }

    /// Records the configuration that `RawNode::apply_conf_change` returned.
    fn on_conf_changed(&mut self, result: raft::Result<ConfState>) -> Result<(), Error> {
        let conf_state = result.map_err(|e| Error::Raft(format!("apply conf change: {e}")))?;
        tracing::info!(voters = ?conf_state.voters, learners = ?conf_state.learners, "configuration changed");
        self.conf_state = conf_state;
        Ok(())
    }

    /// Completes the proposal waiting at `entry.index`, if any. A proposal whose index was
    /// taken by an entry of another term (or another proposer) was overwritten: `Dropped`.
    fn complete_proposal(&mut self, entry: &Entry, reply: Option<Vec<u8>>) {
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
        let result = match reply {
            Some(reply) if ours => Ok((entry.index, reply)),
            _ => Err(Error::Dropped),
        };
        let _ = proposal.reply.send(result);
    }

    /// Stores a snapshot and compacts the log every `snapshot_interval_entries` applied
    /// entries, or when raft asked for a snapshot newer than the stored one.
    fn maybe_snapshot(&mut self) -> Result<(), Error> {
        let stored = self.raw.store().snapshot_metadata().index;
        let wanted = self.raw.store().take_snapshot_wanted();
        if self.applied <= stored {
            return Ok(());
        }
        if self.applied - stored < self.snapshot_interval_entries && !wanted {
            return Ok(());
        }
        let data = self.sm.snapshot();
        let index = self.applied;
        let compact_to = index.saturating_sub(self.log_tail_entries) + 1;
        let conf_state = self.conf_state.clone();
        let store = self.raw.mut_store();
        let mut batch = sled::Batch::default();
        store.create_snapshot(&mut batch, index, conf_state, data)?;
        store.compact(&mut batch, compact_to)?;
        store.write(batch, true)?;
        self.flushes += 1;
        self.snapshots += 1;
        tracing::debug!(
            index,
            first_index = compact_to,
            "snapshot stored, log compacted"
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
        for read in self.reads_deferred.drain(..) {
            let _ = read.reply.send(Err(error.clone()));
        }
        for (_, replies) in std::mem::take(&mut self.reads_confirmed) {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
        while let Ok(input) = self.rx.try_recv() {
            match input {
                Input::Propose { reply, .. } => {
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
                Input::Unreachable(_) | Input::SnapshotStatus { .. } | Input::Wake => {}
            }
        }
    }
}

//! The raft thread: [`Worker`], its loop (monotonic ticks, draining the input channel for group
//! commit), proposals, the handling of each `Ready` in the canonical order, applying committed
//! entries, and publishing status, leadership and membership for the handles.
//!
//! The ReadIndex, membership and snapshot duties of the worker are `impl Worker` blocks in
//! `read_index.rs`, `membership.rs` and `snapshot.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType,
};
use raft::{RawNode, SnapshotStatus, StateRole};
use tokio::sync::watch;

use crate::storage::{Batch, Registry, SledStorage};
use crate::{Error, Leadership, MemberKind, Membership, PeerStatus, Role, StateMachine, Transport};

use super::identity::RECORD_CONTEXT;
use super::read_index::PendingRead;
use super::snapshot::SnapshotBuild;
use super::{Input, NodeState, ProposeReply, ReadReply, SNAPSHOT_MESSAGE_BYTES_MAX};

/// Longest time one pass of the raft thread's loop spends stepping queued inputs before it
/// handles the Ready they produced (and so sends heartbeats and appends).
const DRAIN_TIME_MAX: Duration = Duration::from_millis(10);

/// One pass of the raft thread's loop that takes longer than this is logged: followers may
/// start an election meanwhile.
const RAFT_THREAD_STALL_WARN: Duration = Duration::from_millis(250);

/// If the raft thread falls this many ticks behind (e.g. the process was stopped), it ticks once
/// and resynchronises its schedule instead of firing a burst that would start an election.
const TICK_BURST_MAX: u32 = 3;

/// A proposal accepted into the leader's log, waiting to be applied.
pub(super) struct PendingProposal {
    id: u64,
    term: u64,
    pub(super) reply: ProposeReply,
}

/// What applying one committed entry produced for its proposer.
pub(super) enum Outcome {
    /// An empty entry (a new leader's, or a conf change raft replaced): nobody's proposal.
    Empty,
    /// The state machine's reply, or an applied conf change (empty reply).
    Reply(Vec<u8>),
    /// A conf change raft refused when applying it (the configuration is unchanged).
    Failed(Error),
}

/// The raft thread's state. Owns the `RawNode` (storage inside), the state machine and all
/// request bookkeeping; nothing here is shared except through `NodeState`.
pub(super) struct Worker {
    pub(super) id: u64,
    pub(super) tick_interval: Duration,
    pub(super) next_tick: Instant,
    pub(super) read_timeout: Duration,
    /// An issued read unanswered for this long is re-issued with a fresh context.
    pub(super) read_retry: Duration,
    /// Inputs handled per loop iteration at most, so a flood cannot starve `Ready` handling.
    pub(super) drain_max: usize,
    pub(super) raw: RawNode<SledStorage>,
    pub(super) sm: Box<dyn StateMachine>,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) rx: Receiver<Input>,
    pub(super) shared: Arc<NodeState>,
    pub(super) leadership_tx: watch::Sender<Leadership>,
    pub(super) membership_tx: watch::Sender<Membership>,
    /// The peer registry as of `applied` (the addresses of `Config::initial_cluster` on a
    /// joining node until its first snapshot).
    pub(super) registry: Registry,
    /// This leader proposed a new cluster id in its term.
    pub(super) identity_proposed: bool,
    /// Incarnations this leader proposed to record, not applied yet.
    pub(super) recording: BTreeSet<(u64, u64)>,
    /// The log index at which the current configuration was applied.
    pub(super) membership_index: u64,
    /// The configuration or registry changed since the last `publish`.
    pub(super) membership_dirty: bool,
    pub(super) next_proposal_id: u64,
    /// Pending proposals by log index.
    pub(super) proposals: BTreeMap<u64, PendingProposal>,
    /// This start's [`ReadCtx::incarnation`](super::read_index::ReadCtx::incarnation).
    pub(super) incarnation: u64,
    /// The next [`ReadCtx::counter`](super::read_index::ReadCtx::counter).
    pub(super) next_read_counter: u64,
    /// Reads handed to raft, by [`ReadCtx::counter`](super::read_index::ReadCtx::counter).
    pub(super) reads_unconfirmed: HashMap<u64, PendingRead>,
    /// Reads that raft cannot take right now, issued again as soon as it can: on a leader that
    /// has not yet committed an entry in its term (raft would drop them), on a node that knows
    /// no leader after the leadership changed under them, and reads raft dropped.
    pub(super) reads_waiting: Vec<PendingRead>,
    /// Confirmed reads waiting for `applied` to reach their index.
    pub(super) reads_confirmed: BTreeMap<u64, Vec<ReadReply>>,
    pub(super) applied: u64,
    /// The configuration after the last applied entry.
    pub(super) conf_state: ConfState,
    pub(super) role: StateRole,
    pub(super) leader_id: u64,
    pub(super) snapshot_interval_entries: u64,
    pub(super) log_tail_entries: u64,
    pub(super) readies: u64,
    pub(super) flushes: u64,
    pub(super) entries_appended: u64,
    pub(super) snapshots: u64,
    pub(super) snapshot_bytes: u64,
    pub(super) leader_changes: u64,
    pub(super) snapshots_sent: u64,
    pub(super) snapshots_failed: u64,
    /// The snapshot being serialised and written by a background thread, if any.
    pub(super) snapshot_build: Option<SnapshotBuild>,
}

impl Worker {
    pub(super) fn run(mut self) {
        let span = tracing::info_span!("raft", node_id = self.id);
        let _entered = span.enter();
        tracing::info!(applied = self.applied, "raft thread started");
        let shared = self.shared.clone();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| self.run_loop()));
        let error = match result {
            Ok(Ok(())) => match self.raw.mut_store().flush() {
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
            self.maintain_identity()?;
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

    pub(super) fn leader_hint(&self) -> Option<u64> {
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
    pub(super) fn track_proposal(
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

    /// Counts a flush that began at `started` and reports its duration to the observer.
    pub(super) fn flushed(&mut self, started: Instant) {
        self.flushes += 1;
        if let Some(observer) = self.shared.observer.get() {
            observer.flushed(started.elapsed());
        }
    }

    /// Reacts to a change of role or leader: pending work tied to the old leadership fails.
    fn on_soft_state(&mut self, leader_id: u64, role: StateRole) {
        let was_leader = self.role == StateRole::Leader;
        let leader_changed = leader_id != self.leader_id;
        if leader_changed {
            self.leader_changes += 1;
        }
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
        if leader_changed || role != StateRole::Leader {
            self.identity_proposed = false;
            self.recording.clear();
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

        let mut batch = Batch::default();
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
            let started = Instant::now();
            self.raw.mut_store().write(batch, sync)?;
            if sync {
                self.flushed(started);
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

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), Error> {
        for entry in entries {
            assert_eq!(
                entry.index,
                self.applied + 1,
                "committed entries must be applied in order without gaps"
            );
            let outcome = match entry.get_entry_type() {
                EntryType::EntryNormal
                    if entry.data.is_empty() && entry.context.starts_with(RECORD_CONTEXT) =>
                {
                    self.apply_record(entry.index, &entry.context[RECORD_CONTEXT.len()..])?;
                    Outcome::Empty
                }
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

    /// Publishes status and leadership for the handles.
    pub(super) fn publish(&mut self) {
        let raft = &self.raw.raft;
        let store = self.raw.store();
        let leader_id = (raft.leader_id != 0).then_some(raft.leader_id);
        {
            let mut status = self.shared.status.lock().expect("status lock poisoned");
            status.role = Role::from(raft.state);
            status.cluster_id = self.shared.trust.cluster_id();
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
            status.snapshot_bytes = self.snapshot_bytes;
            status.leader_changes = self.leader_changes;
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
                    address: self.registry.addresses.get(&id).cloned(),
                    kind,
                    matched: None,
                    incarnation: self.registry.incarnations.get(&id).copied(),
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
                    peers: self.registry.addresses.clone(),
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

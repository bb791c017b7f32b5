//! Node configuration: one typed struct, every default in [`Config::default`], [`Config::validate`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::Error;

/// Configuration of one replication node. Units are at the end of field names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This node's Raft id; non-zero and unique in the cluster.
    pub node_id: u64,
    /// Directory of the sled database (log, hard state, snapshot). Created if missing.
    pub data_dir: PathBuf,
    /// Voters of a brand-new cluster, without addresses (a cluster of one, or tests with their
    /// own transport). Ignored when `initial_cluster` is non-empty. Used only when `data_dir`
    /// holds no state yet; an existing store keeps its own configuration. Must then contain
    /// `node_id`.
    pub initial_voters: Vec<u64>,
    /// The founding members of a brand-new cluster: node id → peer address (`HOST:PORT`, or a
    /// URI such as `http://HOST:PORT`). When non-empty it replaces `initial_voters`: its ids
    /// are the initial voters and its addresses seed the replicated peer registry.
    ///
    /// Used only when `data_dir` holds no state yet; a node with stored state ignores it and
    /// rejoins with the configuration and addresses it stored. If it does not contain
    /// `node_id`, the node *joins* an existing cluster: it starts empty and waits for the
    /// leader (after an `add_learner`/`add_voter` for this node) to send it a snapshot; the
    /// addresses here are only used to answer the leader until then.
    pub initial_cluster: BTreeMap<u64, String>,
    /// Raft tick period. Elections and heartbeats are counted in ticks.
    pub tick_interval: Duration,
    /// Election timeout in ticks (randomised by raft in `[election_ticks, 2 × election_ticks)`).
    pub election_ticks: usize,
    /// Leader heartbeat period in ticks. Must be smaller than `election_ticks`.
    pub heartbeat_ticks: usize,
    /// Take a state machine snapshot (and compact the log) every this many applied entries.
    pub snapshot_interval_entries: u64,
    /// Entries kept in the log behind the latest snapshot, so slightly lagging followers catch
    /// up from the log instead of receiving a snapshot.
    pub log_tail_entries: u64,
    /// Proposals queued for the raft thread; beyond this, `propose` fails with `Overloaded`.
    pub proposal_queue_max: usize,
    /// ReadIndex requests queued for the raft thread; beyond this, `read_index` fails with
    /// `Overloaded`.
    pub read_queue_max: usize,
    /// Inbound peer messages queued for the raft thread; beyond this, `receive` fails with
    /// `Overloaded` and the message is dropped (raft retransmits).
    pub message_queue_max: usize,
    /// Largest command accepted by `propose`, in bytes.
    pub command_bytes_max: usize,
    /// raft `max_size_per_msg`: bytes of entries per append message.
    pub append_bytes_max: u64,
    /// raft `max_inflight_msgs`: unacknowledged append messages per follower.
    pub inflight_messages_max: usize,
    /// raft `max_uncommitted_size`: bytes of uncommitted entries the leader accepts before
    /// dropping proposals (they fail with `Dropped`).
    pub uncommitted_bytes_max: u64,
    /// raft `max_committed_size_per_ready`: bytes of committed entries handed out per Ready.
    pub committed_bytes_per_ready_max: u64,
    /// sled page cache size in bytes (sled's own default is 1 GiB, far too much here).
    pub sled_cache_bytes: u64,
    /// Size of one write-ahead log segment (`storage::WAL_SEGMENT_BYTES`): the writes that
    /// reach sled only when a segment fills, and what opening the store replays at most.
    pub wal_segment_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            data_dir: PathBuf::from("dlock-data"),
            initial_voters: vec![1],
            initial_cluster: BTreeMap::new(),
            tick_interval: crate::TICK_INTERVAL_DEFAULT,
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_interval_entries: 10_000,
            log_tail_entries: 1_000,
            proposal_queue_max: 4_096,
            read_queue_max: 4_096,
            message_queue_max: 4_096,
            command_bytes_max: 1024 * 1024,
            append_bytes_max: 64 * 1024,
            inflight_messages_max: 256,
            uncommitted_bytes_max: 4 * 1024 * 1024,
            committed_bytes_per_ready_max: 4 * 1024 * 1024,
            sled_cache_bytes: 64 * 1024 * 1024,
            wal_segment_bytes: crate::storage::WAL_SEGMENT_BYTES,
        }
    }
}

impl Config {
    /// Checks every field and their relations.
    ///
    /// # Errors
    ///
    /// `Error::Config` naming the first offending field and why.
    pub fn validate(&self) -> Result<(), Error> {
        let fail = |msg: String| Err(Error::Config(msg));
        if self.node_id == 0 {
            return fail("node_id must be non-zero (0 is raft's 'no node')".into());
        }
        if self.data_dir.as_os_str().is_empty() {
            return fail("data_dir must not be empty".into());
        }
        if !self.initial_cluster.is_empty() {
            if self.initial_cluster.contains_key(&0) {
                return fail("initial_cluster must not contain node id 0".into());
            }
            for (id, address) in &self.initial_cluster {
                if address.trim().is_empty() {
                    return fail(format!("initial_cluster: node {id} has an empty address"));
                }
            }
        } else {
            if self.initial_voters.is_empty() {
                return fail("initial_voters must name at least one voter".into());
            }
            if self.initial_voters.contains(&0) {
                return fail("initial_voters must not contain 0".into());
            }
            let mut voters = self.initial_voters.clone();
            voters.sort_unstable();
            voters.dedup();
            if voters.len() != self.initial_voters.len() {
                return fail(format!(
                    "initial_voters {:?} contains duplicates",
                    self.initial_voters
                ));
            }
            if !self.initial_voters.contains(&self.node_id) {
                return fail(format!(
                    "initial_voters {:?} must contain node_id {}",
                    self.initial_voters, self.node_id
                ));
            }
        }
        if self.tick_interval.is_zero() {
            return fail("tick_interval must be positive".into());
        }
        if self.tick_interval > Duration::from_secs(10) {
            return fail(format!(
                "tick_interval {:?} is above the 10 s maximum",
                self.tick_interval
            ));
        }
        if self.heartbeat_ticks == 0 {
            return fail("heartbeat_ticks must be at least 1".into());
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return fail(format!(
                "election_ticks ({}) must be greater than heartbeat_ticks ({})",
                self.election_ticks, self.heartbeat_ticks
            ));
        }
        if self.snapshot_interval_entries == 0 {
            return fail("snapshot_interval_entries must be at least 1".into());
        }
        for (name, value) in [
            ("proposal_queue_max", self.proposal_queue_max),
            ("read_queue_max", self.read_queue_max),
            ("message_queue_max", self.message_queue_max),
            ("command_bytes_max", self.command_bytes_max),
            ("inflight_messages_max", self.inflight_messages_max),
        ] {
            if value == 0 {
                return fail(format!("{name} must be at least 1"));
            }
        }
        if self.append_bytes_max == 0 {
            return fail(
                "append_bytes_max must be at least 1 (raft's 0 means one entry per message)".into(),
            );
        }
        if (self.command_bytes_max as u64) > self.uncommitted_bytes_max {
            return fail(format!(
                "command_bytes_max ({}) must not exceed uncommitted_bytes_max ({}), or such commands could never be proposed",
                self.command_bytes_max, self.uncommitted_bytes_max
            ));
        }
        if self.committed_bytes_per_ready_max == 0 {
            return fail("committed_bytes_per_ready_max must be at least 1".into());
        }
        if self.sled_cache_bytes < 1024 * 1024 {
            return fail(format!(
                "sled_cache_bytes ({}) must be at least 1 MiB",
                self.sled_cache_bytes
            ));
        }
        if !(crate::storage::WAL_SEGMENT_BYTES_MIN..=crate::storage::WAL_SEGMENT_BYTES_MAX)
            .contains(&self.wal_segment_bytes)
        {
            return fail(format!(
                "wal_segment_bytes ({}) must be between {} and {}",
                self.wal_segment_bytes,
                crate::storage::WAL_SEGMENT_BYTES_MIN,
                crate::storage::WAL_SEGMENT_BYTES_MAX
            ));
        }
        Ok(())
    }

    /// The voters a brand-new store is bootstrapped with: the ids of `initial_cluster` if it
    /// is non-empty, else `initial_voters`. Empty if this node joins an existing cluster.
    pub fn bootstrap_voters(&self) -> Vec<u64> {
        if self.joins_existing_cluster() {
            Vec::new()
        } else if self.initial_cluster.is_empty() {
            self.initial_voters.clone()
        } else {
            self.initial_cluster.keys().copied().collect()
        }
    }

    /// True if `initial_cluster` is non-empty and does not name `node_id`: a brand-new store
    /// then stays empty and waits for the leader's snapshot (see `initial_cluster`).
    pub fn joins_existing_cluster(&self) -> bool {
        !self.initial_cluster.is_empty() && !self.initial_cluster.contains_key(&self.node_id)
    }

    /// The raft-rs configuration derived from this one, every field set explicitly so that a
    /// raft upgrade cannot silently change behaviour.
    pub(crate) fn raft_config(&self, applied: u64) -> raft::Config {
        raft::Config {
            id: self.node_id,
            election_tick: self.election_ticks,
            heartbeat_tick: self.heartbeat_ticks,
            applied,
            max_size_per_msg: self.append_bytes_max,
            max_inflight_msgs: self.inflight_messages_max,
            check_quorum: true,
            pre_vote: true,
            min_election_tick: 0,
            max_election_tick: 0,
            read_only_option: raft::ReadOnlyOption::Safe,
            skip_bcast_commit: false,
            batch_append: false,
            priority: 0,
            max_uncommitted_size: self.uncommitted_bytes_max,
            max_committed_size_per_ready: self.committed_bytes_per_ready_max,
        }
    }
}

//! Who a peer is beyond its node id: the **cluster id** and the **incarnation** of its data
//! directory (docs/security.md, "Cluster id and incarnations").
//!
//! - An incarnation is a random number drawn when a data directory is created
//!   ([`SledStorage::incarnation`](crate::storage::SledStorage::incarnation)). A node that lost
//!   its data and was started again with its old id is a new incarnation: without this it
//!   would bootstrap a fresh log, forget the votes it cast and could vote twice in one term.
//! - The cluster id is drawn by the first leader of a new cluster and committed through the
//!   log as a [`Record`]; every node applies the first one, and a node that has none yet (a
//!   founder before that commit, a joiner) takes it from the first peer message that carries
//!   one. Founders bootstrap independently from the same member list, so none of them can draw
//!   it alone.
//! - The leader records each member's incarnation in the replicated [`Registry`]: the
//!   incarnations it sees on messages from members not yet recorded, its own, and the
//!   incarnation a node reports when it is added. A member removed from the cluster has its
//!   incarnation *retired*.
//!
//! Every peer envelope carries the sender's cluster id and incarnation and the incarnation
//! the sender has on record for the receiver ([`Trust::stamp`]); [`Trust::admit`] refuses,
//! before anything reaches raft, a message meant for another incarnation of this node, one
//! from another cluster (or from a node in none), and one from a retired incarnation or from
//! an incarnation of a member other than the recorded one. So a wiped voter restarted with
//! its original member list neither disturbs the cluster nor is disturbed by it (the leader's
//! heartbeats would otherwise crash it: raft's commit index would be past its empty log) until
//! it is removed and added back as a learner.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use crate::storage::Registry;

/// Prefix of the context of an entry that carries a [`Record`] (the rest of the context; the
/// entry's data is empty). Client proposals carry an 8-byte proposal id as their context, so
/// the two never collide.
pub(crate) const RECORD_CONTEXT: &[u8] = b"dlock/identity-record";

/// Observed but unrecorded `(node, incarnation)` pairs kept for the leader at most (a peer
/// that sends under many incarnations cannot grow it).
const UNRECORDED_MAX: usize = 64;

/// Records proposed to the log at most in one entry.
const RECORD_PAIRS_MAX: usize = 1024;

/// What a peer message says about its sender (the envelope's identity fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerOrigin {
    /// The sender's node id.
    pub from: u64,
    /// The sender's cluster id (0: it belongs to none yet).
    pub cluster_id: u64,
    /// The incarnation of the sender's data directory (0: a sender that does not say).
    pub from_incarnation: u64,
    /// The incarnation the sender has on record for the receiver (0: none).
    pub to_incarnation: u64,
}

/// The identity fields a sender puts on its envelopes to one peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    /// This node's cluster id (0: none yet).
    pub cluster_id: u64,
    /// This node's incarnation.
    pub from_incarnation: u64,
    /// The receiver's incarnation on record (0: none).
    pub to_incarnation: u64,
}

/// A log entry that records the cluster id and members' incarnations (context
/// [`RECORD_CONTEXT`] ‖ `be_u64(cluster_id) ‖ be_u32(n) ‖ (be_u64(id) ‖ be_u64(incarnation))*`,
/// empty data).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Record {
    /// A freshly drawn cluster id, or 0.
    pub cluster_id: u64,
    /// `(node id, incarnation)` pairs to record.
    pub incarnations: Vec<(u64, u64)>,
}

impl Record {
    pub(crate) fn is_empty(&self) -> bool {
        self.cluster_id == 0 && self.incarnations.is_empty()
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + 16 * self.incarnations.len());
        out.extend_from_slice(&self.cluster_id.to_be_bytes());
        out.extend_from_slice(&(self.incarnations.len() as u32).to_be_bytes());
        for (id, incarnation) in &self.incarnations {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&incarnation.to_be_bytes());
        }
        out
    }

    pub(crate) fn decode(data: &[u8]) -> Result<Record, String> {
        if data.len() < 12 {
            return Err(format!("identity record of {} bytes", data.len()));
        }
        let cluster_id = u64::from_be_bytes(data[..8].try_into().expect("8 bytes"));
        let count = u32::from_be_bytes(data[8..12].try_into().expect("4 bytes")) as usize;
        let rest = &data[12..];
        if count > RECORD_PAIRS_MAX || rest.len() != count * 16 {
            return Err(format!(
                "identity record announces {count} incarnations in {} bytes",
                rest.len()
            ));
        }
        let incarnations = rest
            .chunks_exact(16)
            .map(|pair| {
                (
                    u64::from_be_bytes(pair[..8].try_into().expect("8 bytes")),
                    u64::from_be_bytes(pair[8..].try_into().expect("8 bytes")),
                )
            })
            .collect();
        Ok(Record {
            cluster_id,
            incarnations,
        })
    }
}

/// The identity state shared by the raft thread (which owns the replicated part), the peer
/// receivers ([`Trust::admit`]) and the peer senders ([`Trust::stamp`]).
#[derive(Debug)]
pub(crate) struct Trust {
    node_id: u64,
    incarnation: u64,
    state: Mutex<TrustState>,
}

#[derive(Debug, Default)]
struct TrustState {
    cluster_id: u64,
    /// A cluster id taken from a peer message that the raft thread has not stored yet.
    adopted_unsaved: bool,
    incarnations: BTreeMap<u64, u64>,
    retired: BTreeSet<(u64, u64)>,
    /// Incarnations seen on admitted messages of nodes with none on record.
    unrecorded: BTreeSet<(u64, u64)>,
}

impl Trust {
    pub(crate) fn new(
        node_id: u64,
        incarnation: u64,
        cluster_id: u64,
        registry: &Registry,
    ) -> Trust {
        let trust = Trust {
            node_id,
            incarnation,
            state: Mutex::new(TrustState {
                cluster_id,
                ..TrustState::default()
            }),
        };
        trust.set_registry(registry);
        trust
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TrustState> {
        self.state.lock().expect("trust lock poisoned")
    }

    pub(crate) fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub(crate) fn cluster_id(&self) -> u64 {
        self.lock().cluster_id
    }

    /// Takes on the recorded incarnations of `registry` (after every change the raft thread
    /// makes to it).
    pub(crate) fn set_registry(&self, registry: &Registry) {
        let mut state = self.lock();
        state.incarnations = registry.incarnations.clone();
        state.retired = registry.retired.clone();
        let TrustState {
            unrecorded,
            incarnations,
            ..
        } = &mut *state;
        unrecorded.retain(|(id, _)| !incarnations.contains_key(id));
    }

    /// The cluster id this node goes by once a committed record says `cluster_id`: the one it
    /// already had, if any (taken from a peer earlier), else `cluster_id`.
    pub(crate) fn settle_cluster_id(&self, cluster_id: u64) -> u64 {
        let mut state = self.lock();
        if state.cluster_id == 0 {
            state.cluster_id = cluster_id;
        }
        state.cluster_id
    }

    /// A cluster id taken from a peer message and not stored yet, once.
    pub(crate) fn take_adopted(&self) -> Option<u64> {
        let mut state = self.lock();
        std::mem::take(&mut state.adopted_unsaved).then_some(state.cluster_id)
    }

    /// Incarnations seen on messages from nodes with none on record, for the leader to record.
    pub(crate) fn take_unrecorded(&self) -> BTreeSet<(u64, u64)> {
        std::mem::take(&mut self.lock().unrecorded)
    }

    /// The identity fields of a message from this node to `to`.
    pub(crate) fn stamp(&self, to: u64) -> Stamp {
        let state = self.lock();
        Stamp {
            cluster_id: state.cluster_id,
            from_incarnation: self.incarnation,
            to_incarnation: state.incarnations.get(&to).copied().unwrap_or(0),
        }
    }

    /// Whether a message with `origin` may reach raft; the refusal says why, for both logs.
    /// A node without a cluster id takes the sender's.
    pub(crate) fn admit(&self, origin: &PeerOrigin) -> Result<(), String> {
        let me = self.node_id;
        let from = origin.from;
        let mut state = self.lock();
        // The sender has this data directory on record: it holds replicated state that
        // recorded it, which a node wiped since cannot have.
        let knows_me = origin.to_incarnation != 0 && origin.to_incarnation == self.incarnation;
        if origin.to_incarnation != 0 && !knows_me {
            // A sender behind on the log may still name the incarnation this node had before
            // it was removed and added back: this node's own registry then retired that one
            // and records the current one, and the sender is the stale side.
            let readded = state.retired.contains(&(me, origin.to_incarnation))
                && state.incarnations.get(&me) == Some(&self.incarnation);
            if !readded {
                return Err(format!(
                    "node {from} sent node {me} a message for its data directory incarnation \
                     {:016x}, but node {me} now runs incarnation {:016x}: its data directory \
                     was wiped or replaced, so it is a new member; remove node {me} from the \
                     cluster first, then add it back as a learner",
                    origin.to_incarnation, self.incarnation
                ));
            }
        }
        if origin.cluster_id != 0 && state.cluster_id != 0 && origin.cluster_id != state.cluster_id
        {
            return Err(format!(
                "node {from} belongs to cluster {:016x}, node {me} to cluster {:016x}: check \
                 --initial-cluster and the peer addresses",
                origin.cluster_id, state.cluster_id
            ));
        }
        if state.retired.contains(&(from, origin.from_incarnation)) {
            return Err(format!(
                "node {from} (data directory incarnation {:016x}) was removed from this \
                 cluster; to bring it back, wipe its data directory and add it as a learner",
                origin.from_incarnation
            ));
        }
        match state.incarnations.get(&from) {
            // A sender that has this node on record is ahead of it on the log (it was removed
            // and added back with a new incarnation this node has not applied yet).
            Some(&recorded) if recorded != origin.from_incarnation && !knows_me => {
                return Err(if origin.from_incarnation == 0 {
                    format!(
                        "node {from} sends no data directory incarnation: it runs an older \
                         dlockd; upgrade it"
                    )
                } else {
                    format!(
                        "node {from} runs data directory incarnation {:016x}, but the cluster \
                         recorded incarnation {recorded:016x} for it: its data directory was \
                         wiped or replaced; remove node {from} first, then add it back as a \
                         learner",
                        origin.from_incarnation
                    )
                });
            }
            Some(_) => {}
            None if origin.from_incarnation != 0 && state.unrecorded.len() < UNRECORDED_MAX => {
                state.unrecorded.insert((from, origin.from_incarnation));
            }
            None => {}
        }
        // Take the cluster id only from a sender that has this data directory on record: it
        // is of the cluster that recorded it (not merely some node that reached the port).
        if state.cluster_id == 0 && origin.cluster_id != 0 && knows_me {
            state.cluster_id = origin.cluster_id;
            state.adopted_unsaved = true;
        }
        Ok(())
    }
}

impl super::worker::Worker {
    /// Whether `id` is in the applied configuration (either half of a joint one).
    pub(super) fn is_member(&self, id: u64) -> bool {
        let cs = &self.conf_state;
        cs.voters.contains(&id)
            || cs.learners.contains(&id)
            || cs.voters_outgoing.contains(&id)
            || cs.learners_next.contains(&id)
    }

    /// Run after each `Ready`: stores a cluster id taken from a peer, and on a leader that has
    /// applied its log proposes a [`Record`] with a new cluster id if the cluster has none and
    /// the incarnations of members not yet recorded (its own and those seen on messages).
    pub(super) fn maintain_identity(&mut self) -> Result<(), crate::Error> {
        let trust = &self.shared.trust;
        if let Some(cluster_id) = trust.take_adopted()
            && self.raw.store().cluster_id() == 0
        {
            self.raw.mut_store().set_cluster_id(cluster_id)?;
            tracing::info!(
                cluster_id = format_args!("{cluster_id:016x}"),
                "cluster id taken from a peer and stored"
            );
        }
        let raft = &self.raw.raft;
        if raft.state != raft::StateRole::Leader
            || !raft.commit_to_current_term()
            || self.applied < raft.raft_log.committed
        {
            return Ok(());
        }
        let mut record = Record::default();
        if trust.cluster_id() == 0 && !self.identity_proposed {
            record.cluster_id = crate::storage::draw_nonzero();
        }
        let mut seen = trust.take_unrecorded();
        seen.insert((self.id, trust.incarnation()));
        // An id seen under two incarnations (a wiped node before its first one was recorded)
        // is left for a later round rather than recorded under either.
        let mut per_id: BTreeMap<u64, usize> = BTreeMap::new();
        for (id, _) in &seen {
            *per_id.entry(*id).or_default() += 1;
        }
        for (id, incarnation) in seen {
            if per_id[&id] == 1
                && self.is_member(id)
                && !self.registry.incarnations.contains_key(&id)
                && !self.registry.retired.contains(&(id, incarnation))
                && !self.recording.contains(&(id, incarnation))
                && record.incarnations.len() < RECORD_PAIRS_MAX
            {
                record.incarnations.push((id, incarnation));
            }
        }
        if record.is_empty() {
            return Ok(());
        }
        // The record travels in the entry's context with empty data: a dlockd that predates
        // records takes it for an empty entry rather than a command for its state machine.
        let mut context = RECORD_CONTEXT.to_vec();
        context.extend_from_slice(&record.encode());
        match self.raw.propose(context, Vec::new()) {
            Ok(()) => {
                tracing::info!(
                    cluster_id = format_args!("{:016x}", record.cluster_id),
                    incarnations = ?record.incarnations,
                    "proposing an identity record"
                );
                self.identity_proposed |= record.cluster_id != 0;
                self.recording.extend(record.incarnations);
            }
            Err(err) => tracing::debug!(error = %err, "identity record not proposed"),
        }
        Ok(())
    }

    /// Applies a committed [`Record`]: the first cluster id in the log is the cluster's (a
    /// node that took one from a peer already has the same); each member's first recorded
    /// incarnation stays until it is removed. Depends only on replicated state, so every node
    /// ends with the same registry.
    pub(super) fn apply_record(&mut self, index: u64, data: &[u8]) -> Result<(), crate::Error> {
        let record = match Record::decode(data) {
            Ok(record) => record,
            Err(err) => {
                tracing::warn!(index, error = %err, "undecodable identity record ignored");
                return Ok(());
            }
        };
        if record.cluster_id != 0 {
            let settled = self.shared.trust.settle_cluster_id(record.cluster_id);
            if self.raw.store().cluster_id() == 0 {
                self.raw.mut_store().set_cluster_id(settled)?;
                tracing::info!(
                    index,
                    cluster_id = format_args!("{settled:016x}"),
                    "cluster id recorded"
                );
            }
        }
        for (id, incarnation) in record.incarnations {
            self.recording.remove(&(id, incarnation));
            if self.is_member(id)
                && !self.registry.incarnations.contains_key(&id)
                && !self.registry.retired.contains(&(id, incarnation))
            {
                self.registry.incarnations.insert(id, incarnation);
                tracing::info!(
                    index,
                    node_id = id,
                    incarnation = format_args!("{incarnation:016x}"),
                    "member incarnation recorded"
                );
            }
        }
        self.shared.trust.set_registry(&self.registry);
        self.membership_dirty = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(from: u64, cluster_id: u64, from_inc: u64, to_inc: u64) -> PeerOrigin {
        PeerOrigin {
            from,
            cluster_id,
            from_incarnation: from_inc,
            to_incarnation: to_inc,
        }
    }

    #[test]
    fn records_round_trip_and_refuse_bad_lengths() {
        let record = Record {
            cluster_id: 7,
            incarnations: vec![(1, 10), (2, 20)],
        };
        assert_eq!(Record::decode(&record.encode()).unwrap(), record);
        let bytes = record.encode();
        assert!(Record::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(Record::decode(&bytes[..5]).is_err());
    }

    #[test]
    fn admission_follows_cluster_and_incarnations() {
        let registry = Registry {
            incarnations: BTreeMap::from([(2, 20)]),
            retired: BTreeSet::from([(3, 30)]),
            ..Registry::default()
        };
        let trust = Trust::new(1, 10, 0, &registry);
        // Without a cluster id: anything with the right incarnations; the id is taken only
        // from a sender that has this node on record.
        trust.admit(&origin(2, 0, 20, 0)).unwrap();
        trust.admit(&origin(2, 77, 20, 0)).unwrap();
        assert_eq!(trust.cluster_id(), 0);
        trust.admit(&origin(2, 99, 20, 10)).unwrap();
        assert_eq!(trust.cluster_id(), 99);
        assert_eq!(trust.take_adopted(), Some(99));
        assert_eq!(trust.take_adopted(), None);
        // Another cluster; a message for another incarnation of this node (it was wiped).
        assert!(trust.admit(&origin(2, 98, 20, 10)).is_err());
        assert!(trust.admit(&origin(2, 99, 20, 11)).is_err());
        // A recorded sender under another incarnation (wiped), or saying none (older build),
        // a retired one.
        let err = trust.admit(&origin(2, 99, 21, 0)).unwrap_err();
        assert!(err.contains("remove node 2 first"), "{err}");
        let err = trust.admit(&origin(2, 99, 0, 0)).unwrap_err();
        assert!(err.contains("older dlockd"), "{err}");
        assert!(trust.admit(&origin(3, 99, 30, 0)).is_err());
        // ... unless it has this node on record: then it is ahead on the log (re-added).
        trust.admit(&origin(2, 99, 21, 10)).unwrap();
        // A founder that has not taken the id yet; a node with nothing on record, taken at its
        // word and noted for the leader.
        trust.admit(&origin(2, 0, 20, 10)).unwrap();
        trust.admit(&origin(4, 0, 40, 0)).unwrap();
        trust.admit(&origin(3, 99, 31, 0)).unwrap();
        assert_eq!(trust.take_unrecorded(), BTreeSet::from([(3, 31), (4, 40)]));
        assert_eq!(
            trust.stamp(2),
            Stamp {
                cluster_id: 99,
                from_incarnation: 10,
                to_incarnation: 20
            }
        );
        // The first cluster id stays when a later record names another.
        assert_eq!(trust.settle_cluster_id(5), 99);
    }

    #[test]
    fn a_readded_node_admits_a_sender_that_is_behind() {
        // Node 1 was removed with incarnation 9 and added back with 10.
        let registry = Registry {
            incarnations: BTreeMap::from([(1, 10), (2, 20)]),
            retired: BTreeSet::from([(1, 9)]),
            ..Registry::default()
        };
        let trust = Trust::new(1, 10, 99, &registry);
        trust.admit(&origin(2, 99, 20, 9)).unwrap();
        assert!(trust.admit(&origin(2, 99, 20, 8)).is_err());
        // A node that was wiped and never added back has no such record.
        let wiped = Trust::new(1, 11, 0, &Registry::default());
        assert!(wiped.admit(&origin(2, 99, 20, 10)).is_err());
    }
}

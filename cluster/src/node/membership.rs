//! Membership on the raft thread: validating and proposing a requested change as a simple
//! `ConfChangeV2`, a leader's duties after each `Ready` (leaving a joint configuration, handing
//! leadership away once removed), stepping down before applying its own removal, and recording
//! an applied conf change with the peer registry.

use std::collections::BTreeMap;

use raft::StateRole;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState};

use crate::Error;
use crate::storage;

use super::worker::{Outcome, Worker};
use super::{MembershipChange, ProposeReply};

impl Worker {
    /// Validates a membership change against the applied configuration and proposes it as a
    /// simple `ConfChangeV2` whose context carries the added node's address.
    pub(super) fn propose_conf_change(&mut self, change: MembershipChange, reply: ProposeReply) {
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
        let (id, address, incarnation) = match change {
            MembershipChange::AddVoter {
                id,
                address,
                incarnation,
            }
            | MembershipChange::AddLearner {
                id,
                address,
                incarnation,
            } => (*id, Some(address), *incarnation),
            MembershipChange::Promote { id } | MembershipChange::Remove { id } => (*id, None, 0),
        };
        if id == 0 {
            return invalid("node id 0 is raft's 'no node'".into());
        }
        if address.is_some_and(|a| a.trim().is_empty()) {
            return invalid(format!("node {id}: empty peer address"));
        }
        if incarnation != 0 {
            if self.registry.retired.contains(&(id, incarnation)) {
                return invalid(format!(
                    "node {id}'s data directory (incarnation {incarnation:016x}) was removed \
                     from this cluster: wipe it and start the node again to join as a new member"
                ));
            }
            if let Some(recorded) = self.registry.incarnations.get(&id)
                && *recorded != incarnation
            {
                return invalid(format!(
                    "node {id} now runs data directory incarnation {incarnation:016x}, but the \
                     cluster recorded {recorded:016x}: its data was wiped or replaced; remove \
                     node {id} first, then add it back as a learner"
                ));
            }
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
        let address = address.or_else(|| self.registry.addresses.get(&id));
        if change_type != ConfChangeType::RemoveNode
            && let Some(address) = address
        {
            let mut context =
                storage::Registry::with_addresses(BTreeMap::from([(id, address.clone())]));
            if incarnation != 0 {
                context.incarnations.insert(id, incarnation);
            }
            cc.set_context(storage::encode_registry(&context).into());
        }
        Ok(cc)
    }

    /// Membership duties of a leader, run after each `Ready` (never between `ready()` and
    /// `advance()`): leave a joint configuration that nobody is leaving (docs/dependencies.md §1.9:
    /// raft-rs may never auto-leave if the leader changed before the enter-joint entry was
    /// applied), and hand leadership away once this leader's own removal has been applied.
    pub(super) fn maintain_membership(&mut self) {
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
    pub(super) fn best_transferee(&self) -> Option<u64> {
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
    pub(super) fn step_down_if_removing_self(&mut self, changes: &[ConfChangeSingle]) {
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

    /// Records the configuration that `RawNode::apply_conf_change` returned and updates the
    /// peer registry: addresses of added nodes come from `context` ([`storage::encode_registry`]),
    /// with the incarnation the node reported when it was added, if any (kept only if none is
    /// recorded: a promotion never changes it); nodes no longer in the configuration are
    /// forgotten, and their recorded incarnations retired. raft refuses an invalid change
    /// without changing anything, identically on every node, so that is not fatal: the
    /// configuration stays as it was and the proposer is told.
    pub(super) fn on_conf_change_applied(
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
            storage::Registry::default()
        } else {
            match storage::decode_registry(context) {
                Ok((added, _)) => added,
                Err(err) => {
                    tracing::warn!(index, error = %err, "conf change context is not a peer registry; no address learnt");
                    storage::Registry::default()
                }
            }
        };
        for change in changes {
            if change.get_change_type() == ConfChangeType::RemoveNode {
                continue;
            }
            let id = change.node_id;
            if let Some(address) = added.addresses.get(&id) {
                self.registry.addresses.insert(id, address.clone());
            }
            if let Some(incarnation) = added.incarnations.get(&id)
                && !self.registry.incarnations.contains_key(&id)
                && !self.registry.retired.contains(&(id, *incarnation))
            {
                self.registry.incarnations.insert(id, *incarnation);
            }
        }
        let member = |id: &u64| {
            conf_state.voters.contains(id)
                || conf_state.learners.contains(id)
                || conf_state.voters_outgoing.contains(id)
                || conf_state.learners_next.contains(id)
        };
        self.registry.addresses.retain(|id, _| member(id));
        let departed: Vec<(u64, u64)> = self
            .registry
            .incarnations
            .iter()
            .filter(|(id, _)| !member(id))
            .map(|(id, incarnation)| (*id, *incarnation))
            .collect();
        for (id, incarnation) in departed {
            self.registry.incarnations.remove(&id);
            self.registry.retire(id, incarnation);
            tracing::info!(
                index,
                node_id = id,
                incarnation = format_args!("{incarnation:016x}"),
                "removed member's incarnation retired: it can only come back wiped, as a new member"
            );
        }
        self.shared.trust.set_registry(&self.registry);
        tracing::info!(
            index,
            voters = ?conf_state.voters,
            learners = ?conf_state.learners,
            voters_outgoing = ?conf_state.voters_outgoing,
            peers = ?self.registry.addresses,
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
}

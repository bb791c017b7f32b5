//! ReadIndex on the raft thread: the read context ([`ReadCtx`]) and this start's incarnation,
//! a pending read ([`PendingRead`]), and the `impl Worker` methods that issue reads, re-issue
//! the dropped or unanswered ones, match raft's answers and serve them once applied.
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

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use raft::{ReadState, StateRole};

use crate::Error;
use crate::storage::SledStorage;

use super::ReadReply;
use super::worker::Worker;

/// A ReadIndex request that raft did not answer within this many election timeouts fails with
/// `Dropped` (raft-rs drops forwarded reads silently when the leader changes). Until then it
/// is re-issued as needed (see [`READ_RETRY_DIVISOR`]).
pub(super) const READ_TIMEOUT_ELECTIONS: u32 = 2;

/// A ReadIndex request handed to raft and not answered within an election timeout divided by
/// this is re-issued with a fresh context (the first request, or its answer, may have been
/// lost: a forwarded read is dropped silently by a leader that has not committed in its term
/// yet, and by the transport).
pub(super) const READ_RETRY_DIVISOR: u32 = 2;

/// Bytes of an encoded [`ReadCtx`].
const READ_CTX_BYTES: usize = 24;

/// The context of one ReadIndex request, unique across the cluster and across restarts:
/// raft-rs silently ignores a read whose context equals one already pending on the leader
/// (a follower's forwarded read and the leader's own), and an answer for a read of an earlier
/// run of this node must never match a read of this run. Encoded as `be_u64(node_id) ‖
/// be_u64(incarnation) ‖ be_u64(counter)` ([`READ_CTX_BYTES`] bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReadCtx {
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
pub(super) fn new_incarnation(node_id: u64) -> u64 {
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

/// A ReadIndex request waiting for raft's confirmation.
pub(super) struct PendingRead {
    /// Only this fails the read (with `Dropped`); until then it is re-issued as needed.
    pub(super) deadline: Instant,
    /// When it was last handed to raft (meaningless while `attempts` is 0).
    pub(super) issued: Instant,
    /// How often it was handed to raft.
    pub(super) attempts: u32,
    pub(super) reply: ReadReply,
}

impl Worker {
    /// Hands `read` to raft with a fresh context, or parks it in `reads_waiting` if raft
    /// cannot take it now. A new read on a node that knows no leader fails at once with
    /// `NotLeader` (the caller can go elsewhere); a read already under way waits for its
    /// deadline instead.
    pub(super) fn read_index(&mut self, mut read: PendingRead) {
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
    pub(super) fn issue_waiting_reads(&mut self) {
        if self.reads_waiting.is_empty() || !self.can_issue_reads() {
            return;
        }
        for read in std::mem::take(&mut self.reads_waiting) {
            self.read_index(read);
        }
    }

    /// Fails reads past their deadline with `Dropped`, re-issues (with a fresh context) reads
    /// that raft has not answered within `read_retry`, and issues waiting ones if it can.
    pub(super) fn retry_reads(&mut self, now: Instant) {
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

    pub(super) fn on_read_states(&mut self, states: Vec<ReadState>) {
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
    pub(super) fn serve_confirmed_reads(&mut self) {
        let later = self.reads_confirmed.split_off(&(self.applied + 1));
        let ready = std::mem::replace(&mut self.reads_confirmed, later);
        for (index, replies) in ready {
            for reply in replies {
                let _ = reply.send(Ok(index));
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

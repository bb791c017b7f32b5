//! Sessions: one per client process, with a lease, its handles, its pending waits and its reply
//! table for deduplication.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::types::{HandleId, Reply, Seq, SessionId};
use super::wait::Outcome;

/// A session's replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    /// Client description (host, pid), for logs and status.
    pub client_name: String,
    /// Lease length without keepalives, in milliseconds.
    pub ttl_ms: u64,
    /// The namespace's watched time (see `Command::Checkpoint`) at which a leader last heard
    /// from the client (`OpenSession`, `Checkpoint`).
    pub heard_at_watched_ms: u64,
    /// The session's open handles.
    pub handles: BTreeSet<HandleId>,
    /// Sequence numbers of the session's pending (queued) waits.
    pub waits: BTreeSet<Seq>,
    /// Recorded replies by request sequence number (dedupe table).
    pub replies: BTreeMap<Seq, Reply>,
    /// Outcomes of the session's waits that ended (at once or later) and that the client has not
    /// acknowledged yet (`waits_done`), by the wait's sequence number. With `waits` bounded by
    /// `Limits::waits_per_session_max`.
    pub outcomes: BTreeMap<Seq, Outcome>,
    /// The highest `ack_below` seen: requests below it without a recorded reply are refused.
    pub acked_below: Seq,
}

/// A read-only summary of one session, for the leader's lease timers and for status pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The session id (log index of its `OpenSession`).
    pub id: SessionId,
    /// Client description given at `OpenSession`.
    pub client_name: String,
    /// Lease length without keepalives, in milliseconds.
    pub ttl_ms: u64,
    /// How long leaders have watched the session in silence, as of the latest checkpoint:
    /// watched time since one last heard from it. A new leader expires a session whose silence
    /// exceeds its TTL at once and grants every other one a full TTL.
    pub silence_ms: u64,
    /// Number of open handles.
    pub handles: usize,
    /// Number of pending (queued) waits.
    pub pending_waits: usize,
    /// Number of entries in the reply table (bounded by `Limits::replies_per_session_max`).
    pub replies: usize,
    /// Number of wait outcomes not yet acknowledged by the client.
    pub unacknowledged_outcomes: usize,
}

impl Session {
    /// The summary of this session, with the namespace's watched time now.
    pub fn info(&self, id: SessionId, watched_ms: u64) -> SessionInfo {
        SessionInfo {
            id,
            client_name: self.client_name.clone(),
            ttl_ms: self.ttl_ms,
            silence_ms: watched_ms.saturating_sub(self.heard_at_watched_ms),
            handles: self.handles.len(),
            pending_waits: self.waits.len(),
            replies: self.replies.len(),
            unacknowledged_outcomes: self.outcomes.len(),
        }
    }
}

//! Waits: a registered `WaitForMultipleObjects` that could not be satisfied at once.

use serde::{Deserialize, Serialize};

use super::object::ObjectId;
use super::types::{Seq, SessionId, ThreadId, WaitOutcome};

/// A wait is identified by the request that made it.
pub(crate) type WaitKey = (SessionId, Seq);

/// A pending wait's replicated state. It references objects, not handles: closing the handle it
/// was made through does not end it (§4.4), and it keeps its objects alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Wait {
    /// The waiting thread (mutex owner identity together with the session).
    pub thread: ThreadId,
    /// The object behind each entry of the request's handle array, in request order (wait-any
    /// may name an object twice).
    pub objects: Vec<ObjectId>,
    /// `bWaitAll`.
    pub wait_all: bool,
    /// `now_unix_ms` of the command that queued the wait (for the record; deadlines never
    /// compare wall clocks of different nodes).
    pub registered_unix_ms: u64,
    /// The namespace's watched time when the wait was queued.
    pub registered_watched_ms: u64,
    /// The requested timeout; `u32::MAX` (INFINITE) never expires.
    pub timeout_ms: u32,
}

/// A wait's outcome, kept in its session from the moment the wait ends until the client says it
/// has received it (`waits_done`) or gives the wait up (`CancelWait`), which gives back what the
/// wait acquired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Outcome {
    /// How the wait ended.
    pub outcome: WaitOutcome,
    /// The waiting thread (the owner of any mutex acquired).
    pub thread: ThreadId,
    /// What the grant acquired, in acquisition order. Empty unless granted.
    pub acquired: Vec<Taken>,
    /// Granted by the registration itself: the client receives the outcome with the reply, so
    /// the record goes when the reply is acknowledged (`ack_below`), not through `waits_done`,
    /// and it does not count against the session's wait limit.
    pub immediate: bool,
}

/// One object a grant acquired, with what a give-back needs to undo exactly that grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Taken {
    /// The object.
    pub object: ObjectId,
    /// It was an abandoned mutex (a give-back restores the flag).
    pub abandoned: bool,
    /// Mutex: the fencing token of the grant (a give-back releases only that very grant, never
    /// a later one of an owner id that was reused). Event: its `event_epoch` at the grant.
    pub stamp: u64,
}

/// A pending wait as the leader's timeout timers see it: a new leader times it out
/// `timeout_ms - waited_ms` after it takes over (the leader that registered it, `timeout_ms`
/// after it applied the registration), by proposing `TimeoutWait`. A `timeout_ms` of
/// `u32::MAX` (INFINITE) never expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingWait {
    /// The waiting session.
    pub session: SessionId,
    /// The wait request's sequence number.
    pub seq: Seq,
    /// The waiting thread.
    pub thread: ThreadId,
    /// Wall-clock time (ms since the Unix epoch) of the command that queued the wait.
    pub registered_unix_ms: u64,
    /// The requested timeout in milliseconds; `u32::MAX` is INFINITE.
    pub timeout_ms: u32,
    /// How long leaders have watched the wait pending, as of the latest checkpoint (watched
    /// time since it was queued). A new leader gives it `timeout_ms` minus this, erring late.
    pub waited_ms: u64,
}

impl PendingWait {
    /// The wall-clock time at which the wait would time out by the registering node's clock, or
    /// `None` for INFINITE. For the golden-script runner's simulated clock only; the server's
    /// timers never use it.
    pub fn deadline_unix_ms(&self) -> Option<u64> {
        (self.timeout_ms != u32::MAX).then(|| {
            self.registered_unix_ms
                .saturating_add(u64::from(self.timeout_ms))
        })
    }
}

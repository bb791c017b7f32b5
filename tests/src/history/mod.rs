//! A recorded-history checker for fault tests: clients record every operation they send to
//! the cluster with its invocation and completion times, and [`check`] verifies from that
//! record alone, with no access to the servers, that the cluster behaved like one correct lock
//! service.
//!
//! # The model
//!
//! A [`History`] is a list of [`Record`]s. Each record is one operation ([`Op`]) of one
//! [`ClientId`], with the time it was *invoked* (read before the request left the client) and
//! the *outcomes* it got (each read after the reply arrived). All times come from one
//! monotonic clock shared by every client ([`Nanos`] since a common start; [`Recorder`] does
//! this for you).
//!
//! An outcome ([`Outcome`]) is either **definite** (the cluster answered: `Ok`, `Created`,
//! `Acquired`, `Signaled`, `TimedOut`, or `Failed(code)`, an error reply that changed nothing)
//! or **[`Outcome::Unknown`]**: the client gave up (timeout, lost connection, killed process).
//! An operation with an unknown outcome may have taken effect at any moment after its
//! invocation — even long after the client gave up, because a retried or re-attached request
//! can still be applied — or never.
//!
//! The checks rest on one fact about the cluster: every operation that changes state takes
//! effect at one instant, when its log entry is applied, and entries take effect in log order.
//! That instant lies after the operation's invocation and, for a definite outcome, before the
//! reply was read. A mutex grant's **fencing token** is the log index of the grant, so the order
//! of tokens *is* the order in which grants took effect. Two operations whose time intervals
//! overlap may take effect in either order; only when one completed before the other was
//! invoked is their order known. So:
//!
//! * "A definitely took effect before B" is concluded only from `A.completed < B.invoked`
//!   (strictly: equal clock readings say nothing).
//! * "A may have taken effect between X and Y" is assumed whenever the intervals allow it, with
//!   `<=` (an unknown outcome's interval never ends).
//!
//! Every violation below is a contradiction between these facts and the recorded outcomes, so
//! no schedule of a correct cluster can produce it: the checker is *sound*. It is not complete:
//! unknown outcomes make it skip what it cannot conclude, and [`Report`] counts how much was
//! actually checked so a test can assert the run was not vacuous.
//!
//! # What the driver must do
//!
//! * One [`ClientId`] is one lock **owner** (one session and thread) for its whole life and
//!   issues one operation at a time (each op is invoked after the previous one completed or was
//!   given up; giving up is recorded as [`Outcome::Unknown`]). A client that opens a new
//!   session uses a new `ClientId`.
//! * Record **every** operation that can grant or release a mutex (grants from
//!   `CreateMutex(bInitialOwner = TRUE)` or multi-object waits are not modelled: don't use them
//!   in a checked run), and every `Close` of a handle the run pinned (see below).
//! * Record [`Outcome::Failed`] only for error *replies* that changed nothing; a transport
//!   error, a deadline, or anything ambiguous is [`Outcome::Unknown`].
//! * When a client learns or suspects that its session ended (jeopardy, an expired-session
//!   error, its process was killed), record [`Op::LostSession`] (via
//!   [`Recorder::lost_session`]) and continue, if at all, under a new `ClientId`.
//! * To enable the existence, abandonment and lost-write checks, **pin** each object: create it
//!   before the traffic starts with `keep_open: true` from a client that never closes that
//!   handle and never loses its session (at the end of the run, confirm that client's session
//!   is still alive, or record `LostSession` for it, which voids its pins).
//!
//! # What is checked, and why each check is sound
//!
//! First the per-mutex *grants* are reconstructed. Each client's operations on each mutex are
//! replayed in order, tracking the recursion depth. While every acquire and release of that
//! (client, mutex) pair so far had a definite outcome the replay is **certain**: an `Acquired`
//! at depth 0 is a new grant, one at depth > 0 a recursive re-acquire, and the `Ok` release that
//! brings the depth to 0 *ends* the grant. After an unknown acquire or release (or a
//! `LostSession`) the pair is **uncertain** for the rest of the run: an `Acquired` with a token
//! this client already reported is taken as the same grant, a new token as a new grant, and no
//! grant's end is known. Each grant gets an interval `[lo, hi]` that surely contains the instant
//! it took effect: `hi` is the completion of the first op that reported its token, `lo` that
//! op's invocation, or, if an earlier acquire of this client on this mutex had an unknown
//! outcome (which may be the real grant), that earlier invocation.
//!
//! 1. **At most one owner per mutex at any moment, via fencing tokens.**
//!    * (a) [`ViolationKind::DuplicateToken`]: two distinct grants of one mutex with the same
//!      token. Grants from different clients are always distinct; two grants of one client are
//!      distinct only when a certain replay saw the first released before the second was
//!      granted. A log index grants a mutex at most once, so equal tokens are the same grant.
//!    * (b) [`ViolationKind::TokenOrder`]: grant X's interval ended before grant Y's began
//!      (`X.hi < Y.lo`) yet `token(X) > token(Y)`. X took effect first, so its log index is
//!      smaller.
//!    * (c) [`ViolationKind::OverlappingHolds`]: grant A was ended by an acknowledged release R
//!      (certain replay), grant B has a larger token, and `R.invoked > B.hi`. B took effect
//!      after A ended, i.e. after R was applied, which is after R was invoked, and before B's
//!      acquire completed. This is exactly "two clients both believed they held the mutex":
//!      A's belief lasts from its acquire's completion to its release's invocation. Holds that
//!      ended without an acknowledged release (release failed or unknown, session lost, still
//!      held at the end) are exempt: the cluster may have taken the mutex away (abandonment)
//!      at a moment the client could not see, which is what fencing tokens are for; they are
//!      still covered by (a) and (b).
//!    * [`ViolationKind::UnownedRelease`]: a release acknowledged `Ok` while a certain replay
//!      says the client owned nothing; the cluster must refuse that with `ERROR_NOT_OWNER`.
//!    * **Abandonment** ([`ViolationKind::MissingAbandon`], [`ViolationKind::SpuriousAbandon`]).
//!      A grant ends in one of two ways: a release is applied, or its owner ends (session
//!      expiry or close) and the mutex becomes *abandoned*; the next grant clears the flag and
//!      reports `WAIT_ABANDONED`. For consecutive observed grants A, B (by token) of a pinned
//!      mutex the checker requires: if A was surely ended by an acknowledged release,
//!      `B.abandoned == false`; if a certain replay shows that no release of A's can have been
//!      applied (every release after A failed definitely, or none was sent — whether or not
//!      `LostSession` was recorded, since B's grant proves A's owner ended),
//!      `B.abandoned == true`. It concludes nothing when (i) A's end is ambiguous (an unknown
//!      release may or may not have been applied; an unknown acquire makes the depth unknown),
//!      (ii) some acquire of that mutex with an unknown outcome was invoked no later than
//!      `B.hi` (its invisible grant may sit between A and B and have consumed or produced the
//!      flag), or (iii) the mutex was not pinned before A (if every handle was closed the
//!      object, and its abandoned flag, can vanish and be created afresh).
//!
//! 2. **No acknowledged operation lost.**
//!    * [`ViolationKind::LostRelease`]: grant A ended by acknowledged release R of a pinned
//!      mutex, and an acquire W invoked after R completed returned `WAIT_TIMEOUT`, although no
//!      observed grant other than A can have taken effect between R's application and W's
//!      completion and no acquire with an unknown outcome was invoked before W completed. After
//!      R the mutex was unowned, nobody can have taken it before W was decided, so W must have
//!      acquired it (whatever its timeout).
//!    * [`ViolationKind::LostSet`]: an acknowledged `SetEvent` S on a pinned manual-reset event
//!      (pinned by a create that made it, so its kind is known), and a wait W invoked after S
//!      completed returned `WAIT_TIMEOUT`, although no `ResetEvent`/`PulseEvent` that may have
//!      had an effect (outcome `Ok` or unknown) can have been applied between S and W. A
//!      manual-reset event stays signaled until reset or pulsed, so W must have been signaled
//!      (whatever its timeout). Auto-reset events are not checked: any waiter may consume the
//!      signal.
//!    * [`ViolationKind::LostCreate`]: after a pinning create completed, an `Open` of the same
//!      name failed with `ERROR_FILE_NOT_FOUND` (2), or a `Create` reported
//!      `already_existed == false`. The pin's handle keeps the object alive from the pin's
//!      application on.
//!
//! 3. **Every wait resolved exactly once** ([`ViolationKind::ConflictingOutcomes`]): one record
//!    with two different definite outcomes, or two records with the same (client, request id)
//!    with different definite outcomes. A request is resolved once in the log and a retry or a
//!    re-attach returns that first result; [`Outcome::Unknown`] is always allowed (the client
//!    gave up, which says nothing about the cluster).
//!
//! An acquire with an unknown outcome may be granted at any later moment, so it disables the
//! abandonment and lost-release checks of its mutex from its invocation on; drivers that
//! re-attach to a wait and record its real outcome (same request id) keep those checks alive.
//!
//! [`ViolationKind::Malformed`] reports driver bugs that would make the other conclusions
//! unsound (overlapping operations of one client, an outcome that does not fit its operation,
//! one request id used for different operations).

// Layout: the shared vocabulary (ids, operations, outcomes) lives here; `recorder` holds the
// recorded history and the `Recorder` that produces it; `model` replays the history into the
// grants and pins the checks reason about; `checker` runs the checks and reports.
mod checker;
mod model;
mod recorder;
#[cfg(test)]
mod tests;

pub use checker::{Report, Violation, ViolationKind, check};
pub use recorder::{History, Record, Recorder, monotonic_now};

use std::fmt;

/// A time: nanoseconds since the history's common start, from one monotonic clock.
pub type Nanos = u64;

/// `ERROR_FILE_NOT_FOUND`: an open of a name that does not exist.
pub use dlock_proto::vocab::ERROR_FILE_NOT_FOUND;

/// One lock owner (one session and thread) issuing one operation at a time.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ClientId(pub u64);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// Identifies one record: its index in [`History::records`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct OpId(pub usize);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The kind of object a [`Op::Create`] asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ObjectKind {
    /// A named mutex.
    Mutex,
    /// An event that stays signaled until reset.
    ManualResetEvent,
    /// An event that one released waiter resets.
    AutoResetEvent,
    /// A semaphore.
    Semaphore,
}

/// One operation a client sent to the cluster. Objects are identified by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Op {
    /// `CreateMutex`/`CreateEvent`/`CreateSemaphore` (create-or-open; never with initial
    /// ownership). `keep_open` promises that this client never closes the handle it gets, which
    /// pins the object (see the module documentation).
    Create {
        /// Object name.
        name: String,
        /// Requested kind.
        kind: ObjectKind,
        /// The handle stays open for the rest of the run.
        keep_open: bool,
    },
    /// `OpenMutex`/`OpenEvent`: open an existing object by name.
    Open {
        /// Object name.
        name: String,
    },
    /// `CloseHandle` on a handle to `name`.
    Close {
        /// Object name.
        name: String,
    },
    /// `WaitForSingleObject` on a mutex.
    Acquire {
        /// Mutex name.
        mutex: String,
        /// The wait's timeout in milliseconds (0 polls); informational.
        timeout_ms: u32,
    },
    /// `ReleaseMutex`.
    Release {
        /// Mutex name.
        mutex: String,
    },
    /// `SetEvent`.
    SetEvent {
        /// Event name.
        event: String,
    },
    /// `ResetEvent`.
    ResetEvent {
        /// Event name.
        event: String,
    },
    /// `PulseEvent`.
    PulseEvent {
        /// Event name.
        event: String,
    },
    /// `WaitForSingleObject` on an event.
    WaitEvent {
        /// Event name.
        event: String,
        /// The wait's timeout in milliseconds (0 polls); informational.
        timeout_ms: u32,
    },
    /// Not a request: the client learned or suspects that its session ended (or its process was
    /// killed). Recorded with equal invoke and completion times and outcome `Ok`.
    LostSession,
}

impl Op {
    /// A short name for statistics: `"create"`, `"acquire"`, ...
    pub fn kind_name(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Open { .. } => "open",
            Op::Close { .. } => "close",
            Op::Acquire { .. } => "acquire",
            Op::Release { .. } => "release",
            Op::SetEvent { .. } => "set",
            Op::ResetEvent { .. } => "reset",
            Op::PulseEvent { .. } => "pulse",
            Op::WaitEvent { .. } => "wait_event",
            Op::LostSession => "lost_session",
        }
    }

    /// The name of the object the operation is about (`None` for [`Op::LostSession`]).
    pub fn object(&self) -> Option<&str> {
        match self {
            Op::Create { name, .. } | Op::Open { name } | Op::Close { name } => Some(name),
            Op::Acquire { mutex, .. } | Op::Release { mutex } => Some(mutex),
            Op::SetEvent { event }
            | Op::ResetEvent { event }
            | Op::PulseEvent { event }
            | Op::WaitEvent { event, .. } => Some(event),
            Op::LostSession => None,
        }
    }

    /// Whether `outcome` is one this operation can have.
    pub fn fits(&self, outcome: &Outcome) -> bool {
        use Outcome as O;
        match (self, outcome) {
            (Op::LostSession, o) => *o == O::Ok,
            (_, O::Unknown | O::Failed(_)) => true,
            (Op::Create { .. }, O::Created { .. }) => true,
            (Op::Acquire { .. }, O::Acquired { .. } | O::TimedOut) => true,
            (Op::WaitEvent { .. }, O::Signaled | O::TimedOut) => true,
            (
                Op::Open { .. }
                | Op::Close { .. }
                | Op::Release { .. }
                | Op::SetEvent { .. }
                | Op::ResetEvent { .. }
                | Op::PulseEvent { .. },
                O::Ok,
            ) => true,
            _ => false,
        }
    }
}

/// What the client learned about an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// Success with nothing to report (open, close, release, set, reset, pulse).
    Ok,
    /// A create succeeded; `already_existed` is Win32's `ERROR_ALREADY_EXISTS`.
    Created {
        /// The name already named an object of that kind.
        already_existed: bool,
    },
    /// A mutex wait acquired the mutex (`WAIT_OBJECT_0`, or `WAIT_ABANDONED` if `abandoned`).
    Acquired {
        /// The grant's fencing token (Raft log index of the grant).
        token: u64,
        /// The previous owner ended while holding it.
        abandoned: bool,
    },
    /// An event wait was satisfied.
    Signaled,
    /// A wait returned `WAIT_TIMEOUT`: nothing was acquired.
    TimedOut,
    /// The cluster answered with this Win32 error and changed nothing.
    Failed(u32),
    /// The client gave up without an answer: the operation may or may not take effect, at any
    /// time after its invocation.
    Unknown,
}

impl Outcome {
    /// The outcome of a mutex wait as the async client reports it.
    pub fn from_mutex_wait(outcome: dlock::WaitOutcome) -> Outcome {
        match outcome {
            dlock::WaitOutcome::Signaled { fencing_token, .. } => Outcome::Acquired {
                token: fencing_token,
                abandoned: false,
            },
            dlock::WaitOutcome::Abandoned { fencing_token, .. } => Outcome::Acquired {
                token: fencing_token,
                abandoned: true,
            },
            dlock::WaitOutcome::TimedOut => Outcome::TimedOut,
        }
    }

    /// The outcome of an event wait as the async client reports it.
    pub fn from_event_wait(outcome: dlock::WaitOutcome) -> Outcome {
        match outcome {
            dlock::WaitOutcome::TimedOut => Outcome::TimedOut,
            _ => Outcome::Signaled,
        }
    }

    /// True for every outcome except [`Outcome::Unknown`].
    pub fn is_definite(&self) -> bool {
        *self != Outcome::Unknown
    }
}

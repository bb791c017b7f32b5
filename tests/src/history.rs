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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A time: nanoseconds since the history's common start, from one monotonic clock.
pub type Nanos = u64;

/// `ERROR_FILE_NOT_FOUND`: an open of a name that does not exist.
pub use dlock_proto::vocab::ERROR_FILE_NOT_FOUND;

/// One lock owner (one session and thread) issuing one operation at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// Identifies one record: its index in [`History::records`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub usize);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The kind of object a [`Op::Create`] asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

/// One operation of one client with its times and outcomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// This record's id (its index in the history).
    pub id: OpId,
    /// Who sent it.
    pub client: ClientId,
    /// The client's request id (e.g. its sequence number or wait id), if the driver tracks
    /// one; records sharing `(client, request)` are retries or re-attaches of one request.
    pub request: Option<u64>,
    /// What was sent.
    pub op: Op,
    /// When it was invoked (read before the request left).
    pub invoke: Nanos,
    /// Every outcome recorded for it, in order, with the time each was read. Normally one; none
    /// if the history was taken while the operation was in flight.
    pub outcomes: Vec<(Nanos, Outcome)>,
}

impl Record {
    /// The first definite outcome, or [`Outcome::Unknown`] if there is none.
    pub fn outcome(&self) -> Outcome {
        self.outcomes
            .iter()
            .map(|(_, o)| *o)
            .find(Outcome::is_definite)
            .unwrap_or(Outcome::Unknown)
    }

    /// When the first definite outcome was read (an upper bound of the moment the operation
    /// took effect), or `None` if the outcome is unknown.
    pub fn returned(&self) -> Option<Nanos> {
        self.outcomes
            .iter()
            .find(|(_, o)| o.is_definite())
            .map(|(t, _)| *t)
    }

    /// When the client moved on (its first outcome of any kind), or `None` while in flight.
    pub fn ended(&self) -> Option<Nanos> {
        self.outcomes.first().map(|(t, _)| *t)
    }

    /// `returned()`, or "never" for an unknown outcome.
    fn hi(&self) -> Nanos {
        self.returned().unwrap_or(Nanos::MAX)
    }
}

/// A recorded history: every operation of every client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// The records; `records[i].id == OpId(i)`.
    pub records: Vec<Record>,
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// Appends an invoked operation and returns its id.
    pub fn push(&mut self, client: ClientId, request: Option<u64>, op: Op, invoke: Nanos) -> OpId {
        let id = OpId(self.records.len());
        self.records.push(Record {
            id,
            client,
            request,
            op,
            invoke,
            outcomes: Vec::new(),
        });
        id
    }

    /// Records an outcome of operation `id`, read at time `at`.
    ///
    /// # Panics
    ///
    /// If `id` is not a record of this history.
    pub fn complete(&mut self, id: OpId, at: Nanos, outcome: Outcome) {
        self.records[id.0].outcomes.push((at, outcome));
    }

    /// Appends a whole operation: invoked at `invoke`, one outcome read at `at`.
    pub fn add(
        &mut self,
        client: ClientId,
        op: Op,
        invoke: Nanos,
        at: Nanos,
        outcome: Outcome,
    ) -> OpId {
        let id = self.push(client, None, op, invoke);
        self.complete(id, at, outcome);
        id
    }

    /// The record with id `id`.
    ///
    /// # Panics
    ///
    /// If `id` is not a record of this history.
    pub fn get(&self, id: OpId) -> &Record {
        &self.records[id.0]
    }
}

/// A thread-safe, cheaply cloned history recorder with one clock for all clients.
///
/// ```
/// use dlock_tests::history::{check, ClientId, Op, Outcome, Recorder};
/// let rec = Recorder::new();
/// let me = ClientId(1);
/// let op = rec.invoke(me, Op::Acquire { mutex: "m".into(), timeout_ms: 1000 });
/// rec.complete(op, Outcome::Acquired { token: 7, abandoned: false });
/// let op = rec.invoke(me, Op::Release { mutex: "m".into() });
/// rec.complete(op, Outcome::Ok);
/// let report = check(&rec.history()).expect("a correct history");
/// assert_eq!(report.max_token, 7);
/// ```
#[derive(Clone, Debug)]
pub struct Recorder {
    start: Instant,
    history: Arc<Mutex<History>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            history: Arc::new(Mutex::new(History::new())),
        }
    }

    /// The recorder's clock: nanoseconds since it was created.
    pub fn now(&self) -> Nanos {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(Nanos::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `client` is about to send `op`; call it *before* sending.
    pub fn invoke(&self, client: ClientId, op: Op) -> OpId {
        let mut h = self.lock();
        let now = self.now();
        h.push(client, None, op, now)
    }

    /// Like [`Recorder::invoke`], tagging the operation with the client's request id so that
    /// retries and re-attaches of one request are checked to agree.
    pub fn invoke_request(&self, client: ClientId, request: u64, op: Op) -> OpId {
        let mut h = self.lock();
        let now = self.now();
        h.push(client, Some(request), op, now)
    }

    /// Records an outcome of `id`; call it *after* the reply arrived (or when giving up, with
    /// [`Outcome::Unknown`]). Calling it again records another outcome, which check 3 compares.
    pub fn complete(&self, id: OpId, outcome: Outcome) {
        let mut h = self.lock();
        let now = self.now();
        if id.0 < h.records.len() {
            h.complete(id, now, outcome);
        }
    }

    /// Records that `client`'s session ended or may have ended (jeopardy, expiry error, killed
    /// process). Its holds end without release, its pins are void, and it should not be used
    /// again: continue under a new [`ClientId`].
    pub fn lost_session(&self, client: ClientId) -> OpId {
        let mut h = self.lock();
        let now = self.now();
        let id = h.push(client, None, Op::LostSession, now);
        h.complete(id, now, Outcome::Ok);
        id
    }

    /// A snapshot of everything recorded so far.
    pub fn history(&self) -> History {
        self.lock().clone()
    }
}

/// Which property a [`Violation`] breaks (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ViolationKind {
    /// The history itself is ill-formed (a driver bug), so other conclusions may be unsound.
    Malformed,
    /// One request or wait got two different definite outcomes.
    ConflictingOutcomes,
    /// Two distinct grants of one mutex carry the same fencing token.
    DuplicateToken,
    /// A grant that took effect earlier in real time has a larger token.
    TokenOrder,
    /// A hold ended by an acknowledged release overlaps a later grant.
    OverlappingHolds,
    /// A release was acknowledged although the client owned nothing.
    UnownedRelease,
    /// The grant after a hold that ended without release did not report `WAIT_ABANDONED`.
    MissingAbandon,
    /// The grant after a cleanly released hold reported `WAIT_ABANDONED`.
    SpuriousAbandon,
    /// An acquire of a surely free mutex timed out after an acknowledged release.
    LostRelease,
    /// A wait on a surely signaled manual-reset event timed out after an acknowledged set.
    LostSet,
    /// A pinned object was reported missing or newly created.
    LostCreate,
}

/// One property the history breaks, with the records that show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which property.
    pub kind: ViolationKind,
    /// The records involved, most relevant first.
    pub ops: Vec<OpId>,
    /// A readable explanation naming the records' operations, times and outcomes.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.detail)
    }
}

/// Statistics of a history that passed, including how much each check could examine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Number of records.
    pub ops: usize,
    /// Records per [`Op::kind_name`].
    pub ops_per_kind: BTreeMap<&'static str, usize>,
    /// Records whose outcome is [`Outcome::Unknown`].
    pub unknown_outcomes: usize,
    /// Records whose outcome is [`Outcome::TimedOut`].
    pub timed_out: usize,
    /// Records whose outcome is [`Outcome::Failed`].
    pub failed: usize,
    /// Distinct grants reconstructed per mutex.
    pub grants_per_mutex: BTreeMap<String, usize>,
    /// Grants that reported `WAIT_ABANDONED`.
    pub abandoned_grants: usize,
    /// The largest fencing token seen (0 if none).
    pub max_token: u64,
    /// Holds ended by an acknowledged release that check 1(c) compared with later grants.
    pub released_holds_checked: usize,
    /// Consecutive grant pairs whose abandoned flag could be checked.
    pub abandon_pairs_checked: usize,
    /// Mutex waits that followed an acknowledged release with no possible grant in between, so
    /// had to acquire (check 2).
    pub release_waits_checked: usize,
    /// Event waits that followed an acknowledged set with no possible reset in between, so had
    /// to be signaled (check 2).
    pub event_waits_checked: usize,
    /// Opens and creates checked against an earlier pin.
    pub opens_checked: usize,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ops {:?}; {} unknown, {} timed out, {} failed; grants {:?} ({} abandoned), \
             max token {}; checked: {} released holds, {} abandon pairs, {} release waits, \
             {} event waits, {} opens",
            self.ops,
            self.ops_per_kind,
            self.unknown_outcomes,
            self.timed_out,
            self.failed,
            self.grants_per_mutex,
            self.abandoned_grants,
            self.max_token,
            self.released_holds_checked,
            self.abandon_pairs_checked,
            self.release_waits_checked,
            self.event_waits_checked,
            self.opens_checked,
        )
    }
}

/// How a reconstructed grant ended, as far as the history shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HoldEnd {
    /// Certain replay, and no release of it can have been applied: if anyone was granted the
    /// mutex after it, its owner ended (abandonment).
    NotReleased,
    /// Certain replay: this acknowledged release ended it.
    Released(OpId),
    /// Unknown.
    Ambiguous,
}

/// One grant of a mutex (a new owner at one log index), with the window in which it took
/// effect.
#[derive(Clone, Debug)]
struct Grant {
    mutex: String,
    client: ClientId,
    token: u64,
    abandoned: bool,
    /// The first record that reported the token.
    first: OpId,
    lo: Nanos,
    hi: Nanos,
    end: HoldEnd,
}

/// Replay state of one (client, mutex) pair.
#[derive(Default)]
struct Walk {
    tainted: bool,
    depth: u32,
    current: Option<usize>,
    earliest_unknown_acquire: Option<Nanos>,
}

/// A valid pin of one name: the object exists from `from` on.
#[derive(Clone, Copy, Debug)]
struct Pin {
    op: OpId,
    from: Nanos,
}

/// Valid pins per name.
struct Pins {
    /// The object exists from `from` on.
    exists: HashMap<String, Pin>,
    /// ... and is a manual-reset event (the pin created it).
    manual: HashMap<String, Pin>,
}

struct Checker<'h> {
    h: &'h History,
    violations: Vec<Violation>,
    report: Report,
}

/// Checks `history` against the properties in the module documentation.
///
/// # Errors
///
/// Every violation found (each is impossible for a correct cluster and a driver that follows
/// the module's rules).
pub fn check(history: &History) -> Result<Report, Vec<Violation>> {
    let mut c = Checker {
        h: history,
        violations: Vec::new(),
        report: Report::default(),
    };
    c.stats();
    c.well_formed();
    c.resolved_once();
    let grants = c.grants();
    c.grant_stats(&grants);
    let pins = c.pins();
    c.tokens(&grants);
    c.holds(&grants);
    c.abandonment(&grants, &pins);
    c.lost_releases(&grants, &pins);
    c.lost_sets(&pins);
    c.lost_creates(&pins);
    if c.violations.is_empty() {
        Ok(c.report)
    } else {
        Err(c.violations)
    }
}

impl<'h> Checker<'h> {
    fn describe(&self, id: OpId) -> String {
        let r = self.h.get(id);
        let outcomes: Vec<String> = r
            .outcomes
            .iter()
            .map(|(t, o)| format!("{o:?}@{t}"))
            .collect();
        format!(
            "{id} {} {:?} invoked@{} -> [{}]",
            r.client,
            r.op,
            r.invoke,
            outcomes.join(", ")
        )
    }

    fn violation(&mut self, kind: ViolationKind, ops: &[OpId], why: String) {
        let described: Vec<String> = ops.iter().map(|&id| self.describe(id)).collect();
        self.violations.push(Violation {
            kind,
            ops: ops.to_vec(),
            detail: format!("{why}; {}", described.join("; ")),
        });
    }

    fn stats(&mut self) {
        let r = &mut self.report;
        r.ops = self.h.records.len();
        for rec in &self.h.records {
            *r.ops_per_kind.entry(rec.op.kind_name()).or_default() += 1;
            match rec.outcome() {
                Outcome::Unknown => r.unknown_outcomes += 1,
                Outcome::TimedOut => r.timed_out += 1,
                Outcome::Failed(_) => r.failed += 1,
                Outcome::Acquired { token, .. } => r.max_token = r.max_token.max(token),
                _ => {}
            }
        }
    }

    /// Each client's records, in invocation order.
    fn by_client(&self) -> BTreeMap<ClientId, Vec<OpId>> {
        let mut map: BTreeMap<ClientId, Vec<OpId>> = BTreeMap::new();
        for r in &self.h.records {
            map.entry(r.client).or_default().push(r.id);
        }
        for ids in map.values_mut() {
            ids.sort_by_key(|&id| (self.h.get(id).invoke, id));
        }
        map
    }

    fn well_formed(&mut self) {
        for (i, r) in self.h.records.iter().enumerate() {
            if r.id != OpId(i) {
                self.violation(
                    ViolationKind::Malformed,
                    &[OpId(i)],
                    format!("record {i} carries id {}", r.id),
                );
            }
            for (t, o) in &r.outcomes {
                if !r.op.fits(o) {
                    self.violation(
                        ViolationKind::Malformed,
                        &[OpId(i)],
                        format!("outcome {o:?} does not fit the operation"),
                    );
                }
                if *t < r.invoke {
                    self.violation(
                        ViolationKind::Malformed,
                        &[OpId(i)],
                        "an outcome was read before the invocation".into(),
                    );
                }
            }
        }
        for ids in self.by_client().values() {
            for pair in ids.windows(2) {
                let (a, b) = (self.h.get(pair[0]), self.h.get(pair[1]));
                if a.ended().is_none_or(|end| end > b.invoke) {
                    self.violation(
                        ViolationKind::Malformed,
                        &[a.id, b.id],
                        "one client had two operations in flight at once".into(),
                    );
                }
            }
        }
    }

    fn resolved_once(&mut self) {
        let mut groups: BTreeMap<(ClientId, u64), Vec<OpId>> = BTreeMap::new();
        for r in &self.h.records {
            let mut definite = r.outcomes.iter().filter(|(_, o)| o.is_definite());
            if let Some((_, first)) = definite.next()
                && let Some((_, other)) = definite.find(|(_, o)| o != first)
            {
                self.violation(
                    ViolationKind::ConflictingOutcomes,
                    &[r.id],
                    format!("one operation got two outcomes, {first:?} and {other:?}"),
                );
            }
            if let Some(request) = r.request {
                groups.entry((r.client, request)).or_default().push(r.id);
            }
        }
        for ((client, request), ids) in groups {
            let first = self.h.get(ids[0]);
            for &id in &ids[1..] {
                let r = self.h.get(id);
                if r.op != first.op {
                    self.violation(
                        ViolationKind::Malformed,
                        &[first.id, id],
                        format!("request {client}/{request} was used for different operations"),
                    );
                    continue;
                }
                let (a, b) = (first.outcome(), r.outcome());
                if a.is_definite() && b.is_definite() && a != b {
                    self.violation(
                        ViolationKind::ConflictingOutcomes,
                        &[first.id, id],
                        format!("request {client}/{request} was resolved twice: {a:?} and {b:?}"),
                    );
                }
            }
        }
    }

    /// Replays each client's acquires and releases to reconstruct grants and how they ended.
    fn grants(&mut self) -> Vec<Grant> {
        let mut grants: Vec<Grant> = Vec::new();
        for ids in self.by_client().values() {
            let mut walks: HashMap<String, Walk> = HashMap::new();
            // (mutex, token) -> grant index, for this client.
            let mut seen: HashMap<(String, u64), usize> = HashMap::new();
            let mut lost = false;
            for &id in ids {
                let r = self.h.get(id);
                let (mutex, is_acquire) = match &r.op {
                    Op::Acquire { mutex, .. } => (mutex, true),
                    Op::Release { mutex } => (mutex, false),
                    Op::LostSession => {
                        // Open holds end here, without a release (their end stays as it is).
                        for w in walks.values_mut() {
                            w.tainted = true;
                            w.depth = 0;
                            w.current = None;
                        }
                        lost = true;
                        continue;
                    }
                    _ => continue,
                };
                let w = walks.entry(mutex.clone()).or_insert_with(|| Walk {
                    tainted: lost,
                    ..Walk::default()
                });
                let outcome = r.outcome();
                if outcome == Outcome::Unknown {
                    if is_acquire {
                        let e = w.earliest_unknown_acquire.get_or_insert(r.invoke);
                        *e = (*e).min(r.invoke);
                    }
                    if !w.tainted
                        && let Some(cur) = w.current
                    {
                        grants[cur].end = HoldEnd::Ambiguous;
                    }
                    w.tainted = true;
                    continue;
                }
                match (is_acquire, outcome) {
                    (true, Outcome::Acquired { token, abandoned }) => {
                        let hi = r.hi();
                        if !w.tainted {
                            if let Some(cur) = w.current
                                && grants[cur].token == token
                            {
                                w.depth += 1;
                                continue;
                            }
                            // Depth 0: a new grant. Depth > 0 with another token: the old
                            // owner identity ended unseen (e.g. a library that silently opened
                            // a new session); no release of the old grant was applied, so its
                            // end stays `NotReleased`.
                            let g = grants.len();
                            grants.push(Grant {
                                mutex: mutex.clone(),
                                client: r.client,
                                token,
                                abandoned,
                                first: id,
                                lo: r.invoke,
                                hi,
                                end: HoldEnd::NotReleased,
                            });
                            seen.insert((mutex.clone(), token), g);
                            w.current = Some(g);
                            w.depth = 1;
                        } else if let Some(&g) = seen.get(&(mutex.clone(), token)) {
                            w.current = Some(g);
                        } else {
                            let g = grants.len();
                            grants.push(Grant {
                                mutex: mutex.clone(),
                                client: r.client,
                                token,
                                abandoned,
                                first: id,
                                lo: w
                                    .earliest_unknown_acquire
                                    .map_or(r.invoke, |e| e.min(r.invoke)),
                                hi,
                                end: HoldEnd::Ambiguous,
                            });
                            seen.insert((mutex.clone(), token), g);
                            w.current = Some(g);
                        }
                    }
                    (false, Outcome::Ok) if !w.tainted => match w.current {
                        Some(cur) if w.depth > 0 => {
                            w.depth -= 1;
                            if w.depth == 0 {
                                grants[cur].end = HoldEnd::Released(id);
                                w.current = None;
                            }
                        }
                        _ => {
                            self.violation(
                                ViolationKind::UnownedRelease,
                                &[id],
                                "a release was acknowledged although the client owned \
                                 nothing (every earlier acquire and release had a definite \
                                 outcome)"
                                    .into(),
                            );
                        }
                    },
                    // Timeouts and failures changed nothing; releases of an uncertain pair
                    // tell nothing.
                    _ => {}
                }
            }
        }
        grants
    }

    fn grant_stats(&mut self, grants: &[Grant]) {
        for g in grants {
            *self
                .report
                .grants_per_mutex
                .entry(g.mutex.clone())
                .or_default() += 1;
            if g.abandoned {
                self.report.abandoned_grants += 1;
            }
        }
    }

    /// Grant indices per mutex.
    fn per_mutex(grants: &[Grant]) -> BTreeMap<&str, Vec<usize>> {
        let mut map: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, g) in grants.iter().enumerate() {
            map.entry(g.mutex.as_str()).or_default().push(i);
        }
        map
    }

    /// Valid pins: `keep_open` creates that succeeded, by clients that never lost their session
    /// nor closed a handle to that name.
    fn pins(&self) -> Pins {
        let lost: HashSet<ClientId> = self
            .h
            .records
            .iter()
            .filter(|r| r.op == Op::LostSession)
            .map(|r| r.client)
            .collect();
        let closed: HashSet<(ClientId, &str)> = self
            .h
            .records
            .iter()
            .filter_map(|r| match &r.op {
                Op::Close { name } if !matches!(r.outcome(), Outcome::Failed(_)) => {
                    Some((r.client, name.as_str()))
                }
                _ => None,
            })
            .collect();
        let mut exists: HashMap<String, Pin> = HashMap::new();
        let mut manual: HashMap<String, Pin> = HashMap::new();
        for r in &self.h.records {
            let Op::Create {
                name,
                kind,
                keep_open: true,
            } = &r.op
            else {
                continue;
            };
            let Outcome::Created { already_existed } = r.outcome() else {
                continue;
            };
            if lost.contains(&r.client) || closed.contains(&(r.client, name.as_str())) {
                continue;
            }
            let pin = Pin {
                op: r.id,
                from: r.hi(),
            };
            let better = |old: Option<&Pin>| old.is_none_or(|p| p.from > pin.from);
            if better(exists.get(name)) {
                exists.insert(name.clone(), pin);
            }
            if *kind == ObjectKind::ManualResetEvent && !already_existed && better(manual.get(name))
            {
                manual.insert(name.clone(), pin);
            }
        }
        Pins { exists, manual }
    }

    /// 1(a) unique tokens and 1(b) tokens increase in real-time order.
    fn tokens(&mut self, grants: &[Grant]) {
        for (mutex, idx) in Self::per_mutex(grants) {
            let mut by_token: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
            for &i in &idx {
                by_token.entry(grants[i].token).or_default().push(i);
            }
            for (token, gs) in &by_token {
                if gs.len() > 1 {
                    let ops: Vec<OpId> = gs.iter().map(|&i| grants[i].first).collect();
                    let clients: Vec<String> =
                        gs.iter().map(|&i| grants[i].client.to_string()).collect();
                    self.violation(
                        ViolationKind::DuplicateToken,
                        &ops,
                        format!(
                            "{} distinct grants of {mutex:?} (clients {}) share token {token}",
                            gs.len(),
                            clients.join(", ")
                        ),
                    );
                }
            }
            // For each Y: the largest token among grants X with X.hi < Y.lo.
            let mut by_hi = idx.clone();
            by_hi.sort_by_key(|&i| grants[i].hi);
            let mut prefix_max: Vec<usize> = Vec::with_capacity(by_hi.len());
            for (k, &i) in by_hi.iter().enumerate() {
                let best = match k {
                    0 => i,
                    _ => {
                        let prev = prefix_max[k - 1];
                        if grants[prev].token >= grants[i].token {
                            prev
                        } else {
                            i
                        }
                    }
                };
                prefix_max.push(best);
            }
            for &y in &idx {
                let n = by_hi.partition_point(|&i| grants[i].hi < grants[y].lo);
                if n == 0 {
                    continue;
                }
                let x = prefix_max[n - 1];
                if grants[x].token > grants[y].token {
                    self.violation(
                        ViolationKind::TokenOrder,
                        &[grants[x].first, grants[y].first],
                        format!(
                            "grant with token {} took effect before grant with token {} of \
                             {mutex:?} was invoked, so its token must be smaller",
                            grants[x].token, grants[y].token
                        ),
                    );
                }
            }
        }
    }

    /// 1(c): a hold ended by an acknowledged release R ends before any grant with a larger
    /// token takes effect, so R was invoked no later than that grant's acquire completed.
    fn holds(&mut self, grants: &[Grant]) {
        for (mutex, mut idx) in Self::per_mutex(grants) {
            idx.sort_by_key(|&i| grants[i].token);
            // suffix_min[k]: the grant with the smallest `hi` among idx[k..].
            let mut suffix_min = idx.clone();
            for k in (0..idx.len().saturating_sub(1)).rev() {
                if grants[suffix_min[k + 1]].hi < grants[idx[k]].hi {
                    suffix_min[k] = suffix_min[k + 1];
                }
            }
            for &a in &idx {
                let HoldEnd::Released(release) = grants[a].end else {
                    continue;
                };
                self.report.released_holds_checked += 1;
                let k = idx.partition_point(|&i| grants[i].token <= grants[a].token);
                if k == idx.len() {
                    continue;
                }
                let b = suffix_min[k];
                let release_invoke = self.h.get(release).invoke;
                if release_invoke > grants[b].hi {
                    self.violation(
                        ViolationKind::OverlappingHolds,
                        &[grants[a].first, release, grants[b].first],
                        format!(
                            "{mutex:?}: the grant with token {} completed before the release \
                             of the grant with token {} was invoked; both clients held it",
                            grants[b].token, grants[a].token
                        ),
                    );
                }
            }
        }
    }

    /// Invocations of acquires with unknown outcomes, per mutex, sorted.
    fn unknown_acquires(&self) -> HashMap<&'h str, Vec<Nanos>> {
        let h: &'h History = self.h;
        let mut map: HashMap<&'h str, Vec<Nanos>> = HashMap::new();
        for r in &h.records {
            if let Op::Acquire { mutex, .. } = &r.op
                && r.outcome() == Outcome::Unknown
            {
                map.entry(mutex.as_str()).or_default().push(r.invoke);
            }
        }
        for v in map.values_mut() {
            v.sort_unstable();
        }
        map
    }

    /// Abandoned flags of consecutive grants of pinned mutexes.
    fn abandonment(&mut self, grants: &[Grant], pins: &Pins) {
        let unknown = self.unknown_acquires();
        for (mutex, mut idx) in Self::per_mutex(grants) {
            let Some(pin) = pins.exists.get(mutex) else {
                continue;
            };
            let earliest_unknown = unknown
                .get(mutex)
                .and_then(|v| v.first().copied())
                .unwrap_or(Nanos::MAX);
            idx.sort_by_key(|&i| grants[i].token);
            for pair in idx.windows(2) {
                let (a, b) = (&grants[pair[0]], &grants[pair[1]]);
                if a.token == b.token || pin.from >= a.lo || earliest_unknown <= b.hi {
                    continue;
                }
                match a.end {
                    HoldEnd::Ambiguous => {}
                    HoldEnd::Released(release) => {
                        self.report.abandon_pairs_checked += 1;
                        if b.abandoned {
                            self.violation(
                                ViolationKind::SpuriousAbandon,
                                &[b.first, a.first, release],
                                format!(
                                    "{mutex:?}: the grant with token {} reported WAIT_ABANDONED \
                                     although the previous grant (token {}) was released",
                                    b.token, a.token
                                ),
                            );
                        }
                    }
                    HoldEnd::NotReleased => {
                        self.report.abandon_pairs_checked += 1;
                        if !b.abandoned {
                            self.violation(
                                ViolationKind::MissingAbandon,
                                &[b.first, a.first],
                                format!(
                                    "{mutex:?}: the grant with token {} did not report \
                                     WAIT_ABANDONED although the previous grant (token {}) was \
                                     never released, so its owner ended",
                                    b.token, a.token
                                ),
                            );
                        }
                    }
                }
            }
        }
    }

    /// 2: an acquire of a mutex that was surely free (released, nobody else granted) must not
    /// time out.
    fn lost_releases(&mut self, grants: &[Grant], pins: &Pins) {
        let unknown = self.unknown_acquires();
        let per_mutex = Self::per_mutex(grants);
        for w in &self.h.records {
            let Op::Acquire { mutex, .. } = &w.op else {
                continue;
            };
            let timed_out = match w.outcome() {
                Outcome::TimedOut => true,
                Outcome::Acquired { .. } => false,
                _ => continue,
            };
            let (Some(pin), Some(idx)) = (pins.exists.get(mutex), per_mutex.get(mutex.as_str()))
            else {
                continue;
            };
            let w_ret = w.hi();
            if unknown
                .get(mutex.as_str())
                .and_then(|v| v.first())
                .is_some_and(|&u| u <= w_ret)
            {
                continue;
            }
            // The acknowledged final release with the latest invocation that completed before W
            // was invoked (the later the release, the fewer grants can interfere).
            let candidate = idx
                .iter()
                .filter_map(|&a| match grants[a].end {
                    HoldEnd::Released(r) if pin.from < grants[a].lo => Some((a, r)),
                    _ => None,
                })
                .filter(|&(_, r)| self.h.get(r).hi() < w.invoke)
                .max_by_key(|&(_, r)| self.h.get(r).invoke);
            let Some((a, release)) = candidate else {
                continue;
            };
            let r_invoke = self.h.get(release).invoke;
            // Any other grant that may have taken effect between the release and W's decision
            // (W's own grant, if it got one, does not count).
            let interfering = idx.iter().any(|&x| {
                x != a
                    && grants[x].first != w.id
                    && grants[x].lo <= w_ret
                    && grants[x].hi >= r_invoke
            });
            if interfering {
                continue;
            }
            self.report.release_waits_checked += 1;
            if timed_out {
                self.violation(
                    ViolationKind::LostRelease,
                    &[w.id, release, grants[a].first],
                    format!(
                        "{mutex:?} was released (token {}) before this acquire was invoked and \
                         nobody can have been granted it since, yet the acquire timed out",
                        grants[a].token
                    ),
                );
            }
        }
    }

    /// 2: a wait on a manual-reset event that was surely signaled must not time out.
    fn lost_sets(&mut self, pins: &Pins) {
        // Per event: acknowledged sets (invoke, returned, id) after the pin, and resets or
        // pulses that may have had an effect (invoke, returned or never).
        let h: &'h History = self.h;
        let mut sets: HashMap<&str, Vec<(Nanos, Nanos, OpId)>> = HashMap::new();
        let mut clears: HashMap<&str, Vec<(Nanos, Nanos)>> = HashMap::new();
        for r in &h.records {
            match (&r.op, r.outcome()) {
                (Op::SetEvent { event }, Outcome::Ok)
                    if pins.manual.get(event).is_some_and(|p| p.from < r.invoke) =>
                {
                    sets.entry(event)
                        .or_default()
                        .push((r.invoke, r.hi(), r.id));
                }
                (Op::ResetEvent { event } | Op::PulseEvent { event }, o)
                    if !matches!(o, Outcome::Failed(_)) =>
                {
                    clears.entry(event).or_default().push((r.invoke, r.hi()));
                }
                _ => {}
            }
        }
        for w in &self.h.records {
            let Op::WaitEvent { event, .. } = &w.op else {
                continue;
            };
            let timed_out = match w.outcome() {
                Outcome::TimedOut => true,
                Outcome::Signaled => false,
                _ => continue,
            };
            // The acknowledged set with the latest invocation that completed before W.
            let Some(&(s_invoke, _, set)) = sets
                .get(event.as_str())
                .and_then(|v| v.iter().filter(|s| s.1 < w.invoke).max_by_key(|s| s.0))
            else {
                continue;
            };
            let w_ret = w.hi();
            let interfering = clears
                .get(event.as_str())
                .is_some_and(|v| v.iter().any(|&(inv, hi)| inv <= w_ret && hi >= s_invoke));
            if interfering {
                continue;
            }
            self.report.event_waits_checked += 1;
            if timed_out {
                self.violation(
                    ViolationKind::LostSet,
                    &[w.id, set],
                    format!(
                        "manual-reset event {event:?} was set before this wait was invoked and \
                         nothing can have reset it since, yet the wait timed out"
                    ),
                );
            }
        }
    }

    /// 2: an object pinned before an open or create was invoked still exists then.
    fn lost_creates(&mut self, pins: &Pins) {
        for r in &self.h.records {
            let (name, lost) = match (&r.op, r.outcome()) {
                (Op::Open { name }, o) => (name, o == Outcome::Failed(ERROR_FILE_NOT_FOUND)),
                (Op::Create { name, .. }, o) => (
                    name,
                    o == Outcome::Created {
                        already_existed: false,
                    },
                ),
                _ => continue,
            };
            let Some(pin) = pins.exists.get(name) else {
                continue;
            };
            if pin.op == r.id || pin.from >= r.invoke || !r.outcome().is_definite() {
                continue;
            }
            self.report.opens_checked += 1;
            if lost {
                self.violation(
                    ViolationKind::LostCreate,
                    &[r.id, pin.op],
                    format!(
                        "{name:?} was created and kept open before this operation was \
                         invoked, yet the cluster reported it missing"
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BinaryHeap, VecDeque};

    const PIN: ClientId = ClientId(0);

    /// A hand-built history over mutex "m" and event "e".
    #[derive(Default)]
    struct B {
        h: History,
    }

    fn c(n: u64) -> ClientId {
        ClientId(n)
    }

    fn acquire() -> Op {
        Op::Acquire {
            mutex: "m".into(),
            timeout_ms: 1000,
        }
    }

    fn poll() -> Op {
        Op::Acquire {
            mutex: "m".into(),
            timeout_ms: 0,
        }
    }

    fn release() -> Op {
        Op::Release { mutex: "m".into() }
    }

    fn granted(token: u64) -> Outcome {
        Outcome::Acquired {
            token,
            abandoned: false,
        }
    }

    fn granted_abandoned(token: u64) -> Outcome {
        Outcome::Acquired {
            token,
            abandoned: true,
        }
    }

    impl B {
        fn new() -> B {
            B::default()
        }

        /// Pins `name` (client 0, at times 0..1, creating it).
        fn pinned(mut self, name: &str, kind: ObjectKind) -> B {
            self.op(
                0,
                Op::Create {
                    name: name.into(),
                    kind,
                    keep_open: true,
                },
                0,
                1,
                Outcome::Created {
                    already_existed: false,
                },
            );
            self
        }

        fn op(&mut self, client: u64, op: Op, invoke: Nanos, at: Nanos, o: Outcome) -> OpId {
            self.h.add(c(client), op, invoke, at, o)
        }

        fn acq(&mut self, client: u64, invoke: Nanos, at: Nanos, token: u64) -> OpId {
            self.op(client, acquire(), invoke, at, granted(token))
        }

        fn acq_abandoned(&mut self, client: u64, invoke: Nanos, at: Nanos, token: u64) -> OpId {
            self.op(client, acquire(), invoke, at, granted_abandoned(token))
        }

        fn rel(&mut self, client: u64, invoke: Nanos, at: Nanos) -> OpId {
            self.op(client, release(), invoke, at, Outcome::Ok)
        }

        fn lost(&mut self, client: u64, at: Nanos) -> OpId {
            self.op(client, Op::LostSession, at, at, Outcome::Ok)
        }

        fn event(&mut self, client: u64, op: Op, invoke: Nanos, at: Nanos, o: Outcome) -> OpId {
            self.op(client, op, invoke, at, o)
        }

        fn check(&self) -> Result<Report, Vec<Violation>> {
            check(&self.h)
        }

        /// The distinct violation kinds (empty if the history passes).
        fn kinds(&self) -> Vec<ViolationKind> {
            match self.check() {
                Ok(_) => Vec::new(),
                Err(vs) => {
                    let mut k: Vec<ViolationKind> = vs.iter().map(|v| v.kind).collect();
                    k.sort();
                    k.dedup();
                    k
                }
            }
        }

        fn passes(&self) -> Report {
            match self.check() {
                Ok(report) => report,
                Err(vs) => {
                    let lines: Vec<String> = vs.iter().map(ToString::to_string).collect();
                    panic!("unexpected violations:\n{}", lines.join("\n"))
                }
            }
        }
    }

    fn set() -> Op {
        Op::SetEvent { event: "e".into() }
    }

    fn reset() -> Op {
        Op::ResetEvent { event: "e".into() }
    }

    fn wait_event(timeout_ms: u32) -> Op {
        Op::WaitEvent {
            event: "e".into(),
            timeout_ms,
        }
    }

    // ----- histories that must pass -----

    #[test]
    fn empty_history_passes() {
        let report = B::new().passes();
        assert_eq!(report.ops, 0);
        assert_eq!(report.max_token, 0);
    }

    #[test]
    fn sequential_holds_pass_with_stats() {
        let mut b = B::new().pinned("m", ObjectKind::Mutex);
        b.acq(1, 10, 20, 5);
        b.rel(1, 30, 40);
        b.acq(2, 15, 45, 9);
        b.rel(2, 50, 60);
        b.op(3, poll(), 70, 80, granted(12));
        b.rel(3, 90, 100);
        let r = b.passes();
        assert_eq!(r.ops, 7);
        assert_eq!(r.ops_per_kind["acquire"], 3);
        assert_eq!(r.ops_per_kind["release"], 3);
        assert_eq!(r.grants_per_mutex["m"], 3);
        assert_eq!(r.max_token, 12);
        assert_eq!(r.released_holds_checked, 3);
        assert_eq!(r.abandon_pairs_checked, 2);
        // The poll followed an acknowledged release with no grant possible in between.
        assert_eq!(r.release_waits_checked, 1);
        assert_eq!(r.unknown_outcomes, 0);
    }

    #[test]
    fn overlapping_acquires_may_get_tokens_against_invocation_order() {
        // Client 1 invoked first but its grant took effect second: tokens follow the log, and
        // overlapping operations may be ordered either way.
        let mut b = B::new();
        b.acq(1, 10, 50, 9);
        b.acq(2, 20, 30, 5);
        b.rel(2, 31, 35);
        b.rel(1, 60, 70);
        b.passes();
    }

    #[test]
    fn release_acknowledged_after_the_next_grant_passes() {
        // The release was applied (at ~45) before the next grant (~55); its reply was slow.
        let mut b = B::new().pinned("m", ObjectKind::Mutex);
        b.acq(1, 10, 20, 5);
        b.rel(1, 40, 100);
        b.acq(2, 30, 60, 9);
        b.passes();
    }

    #[test]
    fn recursive_acquires_share_a_token() {
        let mut b = B::new().pinned("m", ObjectKind::Mutex);
        b.acq(1, 10, 20, 5);
        b.acq(1, 21, 22, 5);
        b.rel(1, 23, 24);
        b.rel(1, 25, 26);
        b.acq(2, 12, 30, 8);
        let r = b.passes();
        assert_eq!(r.grants_per_mutex["m"], 2);
        assert_eq!(r.abandon_pairs_checked, 1);
    }

    #[test]
    fn abandoned_after_a_lost_session_passes() {
        let mut b = B::new().pinned("m", ObjectKind::Mutex);
        b.acq(1, 10, 20, 5);
        b.lost(1, 30);
        b.acq_abandoned(2, 25, 90, 11);
        let r = b.passes();
        assert_eq!(r.abandoned_grants, 1);
        assert_eq!(r.abandon_pairs_checked, 1);
    }

    #[test]
    fn abandonment_after_an_unknown_release_is_not_concluded() {
        for abandoned in [false, true] {
            let mut b = B::new().pinned("m", ObjectKind::Mutex);
            b.acq(1, 10, 20, 5);
            b.op(1, release(), 30, 40, Outcome::Unknown);
            b.op(
                2,
                acquire(),
                25,
                90,
                Outcome::Acquired {
                    token: 11,
                    abandoned,
                },
            );
            let r = b.passes();
            assert_eq!(r.abandon_pairs_checked, 0);
            assert_eq!(r.unknown_outcomes, 1);
        }
    }

    #[test]
    fn a_hold_whose_release_failed_may_overlap_and_must_be_abandoned() {
        // The session ended unseen (the release failed: not owner); the next owner was granted
        // the mutex while client 1 still thought it held it: legal, fencing tokens cover it.
        let mut b = B::new().pinned("m", ObjectKind::Mutex);
        b.acq(1, 10, 20, 5);
        b.acq_abandoned(2, 15, 60, 11);
        b.op(1, release(), 70, 80, Outcome::Failed(288));
        b.passes();
        // Without WAIT_ABANDONED the next grant proves nothing released the first one.
        let mut b = B::new().pinned("m", ObjectKind::Mutex);
        b.acq(1, 10, 20, 5);
        b.acq(2, 15, 60, 11);
        b.op(1, release(), 70, 80, Outcome::Failed(288));
        assert_eq!(b.kinds(), vec![ViolationKind::MissingAbandon]);
    }

    #[test]
    fn an_unknown_acquire_hides_the_abandoned_flag() {
        // Client 3's acquire may have been granted between 5 and 11 (taking the abandoned flag)
        // and released (its release is unknown too).
        let mut b = B::new().pinned("m", ObjectKind::Mutex);
        b.acq(1, 10, 20, 5);
        b.lost(1, 30);
        b.op(3, acquire(), 40, 50, Outcome::Unknown);
        b.op(3, release(), 51, 52, Outcome::Unknown);
        b.acq(2, 45, 90, 11);
        let r = b.passes();
        assert_eq!(r.abandon_pairs_checked, 0);
    }

    #[test]
    fn unpinned_mutexes_are_not_checked_for_abandonment() {
        let mut b = B::new();
        b.acq(1, 10, 20, 5);
        b.lost(1, 30);
        b.acq(2, 25, 90, 11);
        assert_eq!(b.passes().abandon_pairs_checked, 0);
    }

    #[test]
    fn a_poll_while_held_may_time_out() {
        let mut b = B::new().pinned("m", ObjectKind::Mutex);
        b.acq(1, 10, 20, 5);
        b.op(2, poll(), 25, 26, Outcome::TimedOut);
        b.rel(1, 30, 40);
        b.op(2, poll(), 35, 36, Outcome::TimedOut); // overlaps the release: either is fine
        b.passes();
    }

    #[test]
    fn a_poll_after_a_release_may_time_out_if_someone_else_may_have_won() {
        let mut b = B::new().pinned("m", ObjectKind::Mutex);
        b.acq(1, 10, 20, 5);
        b.rel(1, 30, 40);
        b.acq(3, 35, 60, 9); // may have been granted before the poll was decided
        b.op(2, poll(), 50, 55, Outcome::TimedOut);
        b.rel(3, 70, 80);
        b.passes();
        // Or an acquire whose outcome is unknown.
        let mut b = B::new().pinned("m", ObjectKind::Mutex);
        b.acq(1, 10, 20, 5);
        b.rel(1, 30, 40);
        b.op(3, acquire(), 45, 100, Outcome::Unknown);
        b.op(2, poll(), 50, 55, Outcome::TimedOut);
        b.passes();
    }

    #[test]
    fn events_pass_when_a_reset_may_intervene() {
        let mut b = B::new().pinned("e", ObjectKind::ManualResetEvent);
        b.event(1, set(), 10, 20, Outcome::Ok);
        b.event(2, wait_event(0), 30, 31, Outcome::Signaled);
        // A reset with an unknown outcome may have been applied at any time after 40.
        b.event(1, reset(), 40, 41, Outcome::Unknown);
        b.event(2, wait_event(0), 50, 51, Outcome::TimedOut);
        // A wait that overlaps the set may be decided before it.
        b.event(1, set(), 60, 70, Outcome::Ok);
        b.event(2, wait_event(0), 65, 66, Outcome::TimedOut);
        let r = b.passes();
        assert_eq!(r.event_waits_checked, 1);
    }

    #[test]
    fn auto_reset_events_and_unpinned_events_are_not_checked() {
        let mut b = B::new().pinned("e", ObjectKind::AutoResetEvent);
        b.event(1, set(), 10, 20, Outcome::Ok);
        b.event(2, wait_event(0), 30, 31, Outcome::Signaled);
        b.event(3, wait_event(0), 32, 33, Outcome::TimedOut);
        b.passes();
        let mut b = B::new();
        b.event(1, set(), 10, 20, Outcome::Ok);
        b.event(3, wait_event(0), 32, 33, Outcome::TimedOut);
        b.passes();
    }

    #[test]
    fn a_retried_wait_with_the_same_outcome_or_unknown_passes() {
        let mut h = History::new();
        let a = h.push(c(1), Some(7), acquire(), 10);
        h.complete(a, 20, Outcome::Unknown);
        let b = h.push(c(1), Some(7), acquire(), 21);
        h.complete(b, 30, granted(5));
        h.complete(b, 31, granted(5));
        check(&h).expect("unknown then one outcome, repeated");
    }

    #[test]
    fn opens_after_a_pin_succeed() {
        let mut b = B::new().pinned("m", ObjectKind::Mutex);
        b.op(1, Op::Open { name: "m".into() }, 10, 11, Outcome::Ok);
        let create = Op::Create {
            name: "m".into(),
            kind: ObjectKind::Mutex,
            keep_open: false,
        };
        b.op(
            2,
            create,
            12,
            13,
            Outcome::Created {
                already_existed: true,
            },
        );
        // Another name was never pinned: it may be missing.
        b.op(
            1,
            Op::Open { name: "x".into() },
            20,
            21,
            Outcome::Failed(ERROR_FILE_NOT_FOUND),
        );
        assert_eq!(b.passes().opens_checked, 2);
    }

    #[test]
    fn a_pin_whose_holder_closed_it_or_lost_its_session_is_void() {
        let open_fails = |b: &mut B| {
            b.op(
                1,
                Op::Open { name: "m".into() },
                50,
                51,
                Outcome::Failed(ERROR_FILE_NOT_FOUND),
            );
        };
        let mut b = B::new().pinned("m", ObjectKind::Mutex);
        b.op(0, Op::Close { name: "m".into() }, 10, 11, Outcome::Ok);
        open_fails(&mut b);
        b.passes();
        let mut b = B::new().pinned("m", ObjectKind::Mutex);
        b.lost(0, 10);
        open_fails(&mut b);
        b.passes();
    }

    // ----- histories that must fail -----

    #[test]
    fn duplicate_token_for_two_clients_fails() {
        let mut b = B::new();
        b.acq(1, 0, 10, 5);
        b.acq(2, 5, 12, 5);
        assert_eq!(b.kinds(), vec![ViolationKind::DuplicateToken]);
    }

    #[test]
    fn one_client_granted_the_same_token_twice_fails() {
        let mut b = B::new();
        b.acq(1, 0, 10, 5);
        b.rel(1, 11, 12);
        b.acq(1, 13, 14, 5);
        assert!(b.kinds().contains(&ViolationKind::DuplicateToken));
    }

    #[test]
    fn token_going_backwards_in_real_time_fails() {
        let mut b = B::new();
        b.acq(1, 0, 10, 9);
        b.rel(1, 11, 12);
        b.acq(2, 20, 30, 5);
        assert_eq!(b.kinds(), vec![ViolationKind::TokenOrder]);
    }

    #[test]
    fn overlapping_holds_with_acknowledged_release_fail() {
        let mut b = B::new();
        b.acq(1, 0, 10, 5);
        b.acq(2, 5, 20, 9);
        b.rel(1, 30, 31);
        b.rel(2, 40, 41);
        assert_eq!(b.kinds(), vec![ViolationKind::OverlappingHolds]);
    }

    #[test]
    fn overlapping_holds_are_exempt_without_an_acknowledged_release() {
        for outcome in [Outcome::Unknown, Outcome::Failed(288)] {
            let mut b = B::new();
            b.acq(1, 0, 10, 5);
            b.acq(2, 5, 20, 9);
            b.op(1, release(), 30, 31, outcome);
            b.passes();
        }
    }

    #[test]
    fn missing_abandon_after_a_lost_session_fails() {
        let mut b = B::new().pinned("m", ObjectKind::Mutex);
        b.acq(1, 10, 20, 5);
        b.lost(1, 30);
        b.acq(2, 25, 90, 11);
        assert_eq!(b.kinds(), vec![ViolationKind::MissingAbandon]);
    }

    #[test]
    fn spurious_abandon_after_a_clean_release_fails() {
        let mut b = B::new().pinned("m", ObjectKind::Mutex);
        b.acq(1, 10, 20, 5);
        b.rel(1, 30, 40);
        b.acq_abandoned(2, 25, 90, 11);
        assert_eq!(b.kinds(), vec![ViolationKind::SpuriousAbandon]);
    }

    #[test]
    fn a_lost_acknowledged_release_fails() {
        let mut b = B::new().pinned("m", ObjectKind::Mutex);
        b.acq(1, 10, 20, 5);
        b.rel(1, 30, 40);
        b.op(2, poll(), 50, 55, Outcome::TimedOut);
        assert_eq!(b.kinds(), vec![ViolationKind::LostRelease]);
    }

    #[test]
    fn an_unowned_acknowledged_release_fails() {
        let mut b = B::new();
        b.acq(1, 10, 20, 5);
        b.rel(1, 30, 40);
        b.rel(1, 50, 60);
        assert_eq!(b.kinds(), vec![ViolationKind::UnownedRelease]);
    }

    #[test]
    fn a_lost_acknowledged_set_fails() {
        // Whatever the timeout: the event was signaled when the wait was registered.
        for timeout in [0, 500] {
            let mut b = B::new().pinned("e", ObjectKind::ManualResetEvent);
            b.event(1, set(), 10, 20, Outcome::Ok);
            // A reset that failed definitely changed nothing; one before the set doesn't matter.
            b.event(3, reset(), 2, 5, Outcome::Ok);
            b.event(3, reset(), 22, 23, Outcome::Failed(6));
            b.event(2, wait_event(timeout), 30, 31, Outcome::TimedOut);
            assert_eq!(b.kinds(), vec![ViolationKind::LostSet]);
        }
    }

    #[test]
    fn a_lost_acknowledged_create_fails() {
        let mut b = B::new().pinned("m", ObjectKind::Mutex);
        b.op(
            1,
            Op::Open { name: "m".into() },
            10,
            11,
            Outcome::Failed(ERROR_FILE_NOT_FOUND),
        );
        assert_eq!(b.kinds(), vec![ViolationKind::LostCreate]);
        let mut b = B::new().pinned("m", ObjectKind::Mutex);
        let create = Op::Create {
            name: "m".into(),
            kind: ObjectKind::Mutex,
            keep_open: false,
        };
        b.op(
            1,
            create,
            10,
            11,
            Outcome::Created {
                already_existed: false,
            },
        );
        assert_eq!(b.kinds(), vec![ViolationKind::LostCreate]);
    }

    #[test]
    fn a_wait_with_two_outcomes_fails() {
        let mut h = History::new();
        let a = h.push(c(1), Some(7), acquire(), 10);
        h.complete(a, 20, granted(5));
        h.complete(a, 21, Outcome::TimedOut);
        let err = check(&h).unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].kind, ViolationKind::ConflictingOutcomes);

        // A re-attached wait (same request id) that saw a different result.
        let mut h = History::new();
        let a = h.push(c(1), Some(7), poll(), 10);
        h.complete(a, 20, Outcome::TimedOut);
        let b = h.push(c(1), Some(7), poll(), 21);
        h.complete(b, 30, granted(5));
        let err = check(&h).unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].kind, ViolationKind::ConflictingOutcomes);
        assert_eq!(err[0].ops, vec![a, b]);
    }

    #[test]
    fn malformed_histories_are_reported() {
        // Two operations of one client in flight at once.
        let mut b = B::new();
        b.acq(1, 10, 30, 5);
        b.rel(1, 20, 40);
        assert!(b.kinds().contains(&ViolationKind::Malformed));
        // An outcome that does not fit its operation.
        let mut b = B::new();
        b.op(1, release(), 10, 20, granted(3));
        assert_eq!(b.kinds(), vec![ViolationKind::Malformed]);
    }

    #[test]
    fn violations_explain_themselves() {
        let mut b = B::new();
        b.acq(1, 0, 10, 5);
        b.acq(2, 5, 12, 5);
        let err = b.check().unwrap_err();
        let text = err[0].to_string();
        assert!(text.contains("DuplicateToken"), "{text}");
        assert!(text.contains("token 5"), "{text}");
        assert!(text.contains("c1") && text.contains("c2"), "{text}");
    }

    #[test]
    fn recorder_records_concurrent_clients() {
        let rec = Recorder::new();
        let threads: Vec<_> = (1..=4u64)
            .map(|n| {
                let rec = rec.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let op = rec.invoke_request(ClientId(n), i, poll());
                        rec.complete(op, Outcome::TimedOut);
                    }
                    rec.lost_session(ClientId(n));
                })
            })
            .collect();
        for t in threads {
            t.join().expect("recording thread");
        }
        let h = rec.history();
        assert_eq!(h.records.len(), 4 * 51);
        let report = check(&h).expect("well-formed");
        assert_eq!(report.timed_out, 200);
        assert_eq!(report.ops_per_kind["lost_session"], 4);
    }

    // ----- randomized: a simulated correct single-mutex service -----

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    #[derive(Debug)]
    enum Ev {
        Start(usize),
        ServerAcquire(ClientId, OpId, bool),
        ServerRelease(ClientId, OpId),
        Reply(ClientId, OpId, Outcome),
        GiveUp(ClientId, OpId),
        ClientRelease(ClientId),
        ClientCrash(ClientId),
        Expire(ClientId),
    }

    /// Events by (time, sequence).
    #[derive(Default)]
    struct Schedule {
        heap: BinaryHeap<std::cmp::Reverse<(Nanos, u64)>>,
        events: HashMap<u64, Ev>,
        seq: u64,
    }

    impl Schedule {
        fn at(&mut self, t: Nanos, ev: Ev) {
            self.seq += 1;
            self.heap.push(std::cmp::Reverse((t, self.seq)));
            self.events.insert(self.seq, ev);
        }

        fn pop(&mut self) -> Option<(Nanos, Ev)> {
            let std::cmp::Reverse((t, seq)) = self.heap.pop()?;
            Some((t, self.events.remove(&seq).expect("scheduled event")))
        }
    }

    /// A correct single-mutex service: FIFO grants, fencing token = log index.
    #[derive(Default)]
    struct Server {
        owner: Option<ClientId>,
        abandoned: bool,
        queue: VecDeque<(ClientId, OpId)>,
        index: u64,
        expired: HashSet<ClientId>,
    }

    impl Server {
        /// Applies one log entry.
        fn apply(&mut self, rng: &mut Rng) {
            self.index += 1 + rng.below(3);
        }

        /// Grants the mutex to the next live waiter, if any, at the current log index.
        fn grant_next(&mut self, now: Nanos, rng: &mut Rng, sched: &mut Schedule) {
            while let Some((client, op)) = self.queue.pop_front() {
                if self.expired.contains(&client) {
                    continue;
                }
                self.owner = Some(client);
                let outcome = Outcome::Acquired {
                    token: self.index,
                    abandoned: std::mem::take(&mut self.abandoned),
                };
                sched.at(now + net(rng), Ev::Reply(client, op, outcome));
                return;
            }
        }
    }

    fn net(rng: &mut Rng) -> Nanos {
        1 + rng.below(15)
    }

    struct Worker {
        client: ClientId,
        incarnation: u64,
        rounds_left: usize,
        waiting: Option<OpId>,
    }

    fn worker_of(client: ClientId) -> usize {
        (client.0 / 1000 - 1) as usize
    }

    /// Simulates `workers` clients contending on one pinned mutex served by a correct
    /// service: FIFO grants with growing log indices, lost replies, clients that give up and
    /// lose their session, clients that crash while holding (abandonment after a TTL).
    fn simulate(seed: u64, workers: usize, rounds: usize) -> History {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut h = History::new();
        h.add(
            PIN,
            Op::Create {
                name: "m".into(),
                kind: ObjectKind::Mutex,
                keep_open: true,
            },
            0,
            1,
            Outcome::Created {
                already_existed: false,
            },
        );
        let mut ws: Vec<Worker> = (0..workers)
            .map(|w| Worker {
                client: ClientId((w as u64 + 1) * 1000),
                incarnation: 0,
                rounds_left: rounds,
                waiting: None,
            })
            .collect();
        let mut server = Server::default();
        let mut sched = Schedule::default();
        for w in 0..workers {
            sched.at(2 + rng.below(20), Ev::Start(w));
        }
        while let Some((now, ev)) = sched.pop() {
            match ev {
                Ev::Start(w) => {
                    let worker = &mut ws[w];
                    if worker.rounds_left == 0 {
                        continue;
                    }
                    worker.rounds_left -= 1;
                    let is_poll = rng.chance(20);
                    let op = if is_poll { poll() } else { acquire() };
                    let op = h.push(worker.client, None, op, now);
                    worker.waiting = Some(op);
                    let client = worker.client;
                    sched.at(now + net(&mut rng), Ev::ServerAcquire(client, op, is_poll));
                    if !is_poll {
                        sched.at(now + 300 + rng.below(600), Ev::GiveUp(client, op));
                    }
                }
                Ev::ServerAcquire(client, op, is_poll) => {
                    if server.expired.contains(&client) {
                        continue;
                    }
                    server.apply(&mut rng);
                    if server.owner.is_none() {
                        server.queue.push_front((client, op));
                        server.grant_next(now, &mut rng, &mut sched);
                    } else if is_poll {
                        let reply = Ev::Reply(client, op, Outcome::TimedOut);
                        sched.at(now + net(&mut rng), reply);
                    } else {
                        server.queue.push_back((client, op));
                    }
                }
                Ev::ServerRelease(client, op) => {
                    server.apply(&mut rng);
                    if server.owner == Some(client) && !server.expired.contains(&client) {
                        server.owner = None;
                        sched.at(now + net(&mut rng), Ev::Reply(client, op, Outcome::Ok));
                        server.grant_next(now, &mut rng, &mut sched);
                    } else {
                        let reply = Ev::Reply(client, op, Outcome::Failed(288));
                        sched.at(now + net(&mut rng), reply);
                    }
                }
                Ev::Expire(client) => {
                    server.apply(&mut rng);
                    server.expired.insert(client);
                    if server.owner == Some(client) {
                        server.owner = None;
                        server.abandoned = true;
                        server.grant_next(now, &mut rng, &mut sched);
                    }
                }
                Ev::Reply(client, op, outcome) => {
                    let w = worker_of(client);
                    if ws[w].client != client || ws[w].waiting != Some(op) {
                        continue; // the client gave up on it
                    }
                    let is_release = matches!(h.get(op).op, Op::Release { .. });
                    if !is_release && rng.chance(4) {
                        sched.at(now, Ev::GiveUp(client, op)); // reply lost
                        continue;
                    }
                    ws[w].waiting = None;
                    if is_release && rng.chance(5) {
                        h.complete(op, now, Outcome::Unknown); // reply lost; it was applied
                    } else {
                        h.complete(op, now, outcome);
                    }
                    if let Outcome::Acquired { .. } = outcome {
                        let hold = now + 1 + rng.below(40);
                        if rng.chance(7) {
                            sched.at(hold, Ev::ClientCrash(client));
                        } else {
                            sched.at(hold, Ev::ClientRelease(client));
                        }
                    } else {
                        sched.at(now + 1 + rng.below(30), Ev::Start(w));
                    }
                }
                Ev::ClientRelease(client) => {
                    let w = worker_of(client);
                    let op = h.push(client, None, release(), now);
                    ws[w].waiting = Some(op);
                    sched.at(now + net(&mut rng), Ev::ServerRelease(client, op));
                }
                Ev::GiveUp(client, op) => {
                    let w = worker_of(client);
                    if ws[w].client != client || ws[w].waiting != Some(op) {
                        continue;
                    }
                    h.complete(op, now, Outcome::Unknown);
                    lose_session(&mut h, &mut ws[w], now);
                    sched.at(now + 50 + rng.below(100), Ev::Expire(client));
                    sched.at(now + 1, Ev::Start(w));
                }
                Ev::ClientCrash(client) => {
                    let w = worker_of(client);
                    lose_session(&mut h, &mut ws[w], now);
                    sched.at(now + 50 + rng.below(100), Ev::Expire(client));
                    sched.at(now + 1 + rng.below(30), Ev::Start(w));
                }
            }
        }
        h
    }

    /// Records the loss and moves the worker to a new client id (a new session).
    fn lose_session(h: &mut History, worker: &mut Worker, now: Nanos) {
        let id = h.push(worker.client, None, Op::LostSession, now);
        h.complete(id, now, Outcome::Ok);
        worker.incarnation += 1;
        worker.client = ClientId(worker.client.0 - worker.client.0 % 1000 + worker.incarnation);
        worker.waiting = None;
    }

    /// Indices of records that report a grant.
    fn grant_records(h: &History) -> Vec<OpId> {
        h.records
            .iter()
            .filter(|r| matches!(r.outcome(), Outcome::Acquired { .. }))
            .map(|r| r.id)
            .collect()
    }

    fn set_token(h: &mut History, id: OpId, token: u64) {
        for (_, o) in &mut h.records[id.0].outcomes {
            if let Outcome::Acquired { token: t, .. } = o {
                *t = token;
            }
        }
    }

    fn token_of(h: &History, id: OpId) -> u64 {
        match h.get(id).outcome() {
            Outcome::Acquired { token, .. } => token,
            _ => unreachable!(),
        }
    }

    #[test]
    fn randomized_correct_histories_pass_and_corrupted_ones_fail() {
        let mut totals = Report::default();
        for seed in 1..=100u64 {
            let h = simulate(seed, 2 + (seed % 5) as usize, 30);
            let report = match check(&h) {
                Ok(r) => r,
                Err(vs) => {
                    let lines: Vec<String> = vs.iter().take(5).map(ToString::to_string).collect();
                    panic!(
                        "seed {seed}: a correct history was rejected:\n{}",
                        lines.join("\n")
                    );
                }
            };
            totals.abandon_pairs_checked += report.abandon_pairs_checked;
            totals.released_holds_checked += report.released_holds_checked;
            totals.release_waits_checked += report.release_waits_checked;
            totals.abandoned_grants += report.abandoned_grants;
            totals.unknown_outcomes += report.unknown_outcomes;

            let grants = grant_records(&h);
            let mut rng = Rng(seed);
            // Corruption 1: a grant reports another client's token.
            let pairs: Vec<(OpId, OpId)> = grants
                .iter()
                .flat_map(|&x| grants.iter().map(move |&y| (x, y)))
                .filter(|&(x, y)| h.get(x).client != h.get(y).client)
                .collect();
            let (x, y) = pairs[rng.below(pairs.len() as u64) as usize];
            let mut bad = h.clone();
            set_token(&mut bad, y, token_of(&h, x));
            let err = check(&bad).expect_err("duplicate token accepted");
            assert!(
                err.iter().any(|v| v.kind == ViolationKind::DuplicateToken),
                "seed {seed}: {err:?}"
            );
            // Corruption 2: swap the tokens of two grants ordered in real time.
            let ordered: Vec<(OpId, OpId)> = grants
                .iter()
                .flat_map(|&x| grants.iter().map(move |&y| (x, y)))
                .filter(|&(x, y)| h.get(x).hi() < h.get(y).invoke)
                .collect();
            let (x, y) = ordered[rng.below(ordered.len() as u64) as usize];
            let mut bad = h.clone();
            set_token(&mut bad, x, token_of(&h, y));
            set_token(&mut bad, y, token_of(&h, x));
            let err = check(&bad).expect_err("tokens out of real-time order accepted");
            assert!(
                err.iter().any(|v| v.kind == ViolationKind::TokenOrder),
                "seed {seed}: {err:?}"
            );
        }
        // The simulation exercised the ambiguous paths and the checks were not vacuous.
        assert!(totals.abandoned_grants > 0, "{totals:?}");
        assert!(totals.unknown_outcomes > 0, "{totals:?}");
        assert!(totals.abandon_pairs_checked > 0, "{totals:?}");
        assert!(totals.released_holds_checked > 0, "{totals:?}");
        assert!(totals.release_waits_checked > 0, "{totals:?}");
    }
}

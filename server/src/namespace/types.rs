//! The vocabulary of the namespace state machine: the commands that travel through the Raft log
//! and the replies that `apply` produces. Everything here is plain data (serde, encoded with
//! postcard in the log and in snapshots) so that the state machine stays free of I/O and of the
//! wire protocol's generated types.

pub use dlock_proto::vocab::{CreateParams, ObjectKind, Win32Error};
use serde::{Deserialize, Serialize};

/// A session id. It is the Raft log index of the `OpenSession` entry that created the session,
/// so it is unique for the life of the cluster and never reused.
pub type SessionId = u64;
/// A handle id, unique across the whole namespace (a counter in the state), never reused. A handle
/// belongs to exactly one session; using it from another session fails with `Win32Error::INVALID_HANDLE`.
pub type HandleId = u64;
/// A client-chosen thread id, unique within its session. Mutex ownership is `(session, thread)`.
pub type ThreadId = u64;
/// A per-session request sequence number, chosen by the client, strictly increasing per request
/// (a retry reuses the number of the request it retries).
pub type Seq = u64;

/// A session's secret: 16 random bytes drawn by the leader that opened it. Session ids are log
/// indexes, which anyone can guess; the secret is what proves a request comes from the session's
/// opener.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSecret(pub [u8; 16]);

impl SessionSecret {
    /// A fresh secret from the operating system's random source.
    ///
    /// # Panics
    ///
    /// If the operating system has no random source (no supported Linux lacks one).
    pub fn random() -> SessionSecret {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the OS random source works");
        SessionSecret(bytes)
    }

    /// The secret a request carried, as bytes off the wire; `None` unless exactly 16 bytes.
    pub fn from_wire(bytes: &[u8]) -> Option<SessionSecret> {
        bytes.try_into().ok().map(SessionSecret)
    }

    /// Whether `other` is this secret, in time that does not depend on where they differ.
    pub fn matches(&self, other: &SessionSecret) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for SessionSecret {
    /// Never prints the bytes: logs and test output must not leak a session's secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionSecret(..)")
    }
}

/// A command as it is stored in the Raft log. Time only ever enters the state machine as data in
/// a command: durations measured by the proposing leader on its monotonic clock (`Checkpoint`),
/// and wall-clock stamps (`now_unix_ms`) kept for the record, never compared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Open a new session. Its id is the log index of this entry. Reply: `Reply::SessionOpened`.
    OpenSession {
        /// Time-to-live of the session without keepalives, in milliseconds (already validated
        /// against the server's limits).
        ttl_ms: u64,
        /// The session's secret, drawn at random by the proposing leader (so that apply stays
        /// deterministic): every later request naming the session must carry it.
        secret: SessionSecret,
        /// Wall-clock time at the proposing node.
        now_unix_ms: u64,
        /// Free-form client description (host, pid) for logs and status; bounded by the server.
        client_name: String,
    },
    /// A checkpoint of what the leader has watched, as durations on its own monotonic clock
    /// (never wall-clock times, which differ between nodes): how long it watched since its own
    /// previous checkpoint of the same term, and for each session it heard from since then, how
    /// long ago it last heard it. Never sent per keepalive; proposed periodically for sessions
    /// heard since, and once when a leader's term starts (with `elapsed_ms` 0, so a new term
    /// advances nobody's silence). Unknown sessions are ignored. Reply: `Done`.
    ///
    /// The namespace sums `elapsed_ms` into one "watched time" clock; a session's silence is the
    /// watched time since it was last heard. A new leader expires at once a session whose
    /// silence already exceeds its TTL (it was dead while leaders watched), and gives every
    /// other session a full TTL of grace, so repeated elections cannot keep a dead session
    /// alive and no clock difference can expire a live one.
    Checkpoint {
        /// Wall-clock time at the leader when it wrote the checkpoint; for logs only.
        now_unix_ms: u64,
        /// Time on the leader's monotonic clock since its previous checkpoint in this term (0 for
        /// the first one of a term).
        elapsed_ms: u64,
        /// `(session, silent_ms)`: time on the leader's monotonic clock since it last heard the
        /// session. A silence that would move a session's "last heard" back is ignored.
        sessions: Vec<(SessionId, u64)>,
    },
    /// The leader decided the session's lease ran out: close all of its handles, abandon every
    /// mutex owned by any of its threads, drop its pending waits (they resolve as
    /// `WaitOutcome::Failed(Win32Error::INVALID_HANDLE)`), forget it. Unknown session: no-op. Reply:
    /// `Done`.
    ExpireSession {
        /// The session to end.
        session: SessionId,
    },
    /// The leader decided a pending wait's timeout passed. If the wait `(session, seq)` is still
    /// pending it resolves as `WaitOutcome::TimedOut` and is removed from every queue; if it was
    /// already granted (or is unknown) this is a no-op: the first recorded outcome wins. Reply:
    /// `Done`.
    TimeoutWait {
        /// The waiting session.
        session: SessionId,
        /// The sequence number of the wait request.
        seq: Seq,
    },
    /// A client request, deduplicated by `(session, seq)`.
    Client {
        /// The requesting session. An unknown (expired or closed) session gets
        /// `Reply::SessionUnknown` and nothing happens.
        session: SessionId,
        /// The secret the request carried: unless it is the session's, the reply is
        /// `Reply::SecretMismatch` and nothing happens (not even a dedupe lookup).
        secret: SessionSecret,
        /// The request's sequence number. If a reply for it is already recorded, that reply is
        /// returned again and nothing else happens.
        seq: Seq,
        /// Every reply with a sequence number below this one has been received by the client and
        /// may be forgotten (Raft thesis §6.3 style client table pruning).
        ack_below: Seq,
        /// Sequence numbers of the session's waits whose outcome the client has received: their
        /// recorded outcomes may be forgotten (a wait's outcome outlives the acknowledgement of
        /// its registration, see `Reply::WaitPending`). Processed even when the request itself
        /// is a retry. At most `WAITS_PER_SESSION_MAX` entries (the server refuses longer lists).
        waits_done: Vec<Seq>,
        /// Wall-clock time at the proposing node; recorded with waits so a new leader can compute
        /// their remaining timeout.
        now_unix_ms: u64,
        /// What to do.
        request: Request,
    },
    /// `OpenSession` for a principal under a quota (docs/security.md, "Quotas"): the session
    /// counts, with everything it holds, against `principal`'s `quota`, which the proposing
    /// node took from its configuration (so every replica checks the same numbers). A
    /// principal at its session quota gets `Error(NO_SYSTEM_RESOURCES)` (1450), and so does a
    /// session of a principal at its object, handle or wait quota when it asks for one more;
    /// other principals are not affected. (A variant of its own, last, so that the other
    /// entries keep their encoding.)
    OpenSessionAs {
        /// As `OpenSession`.
        ttl_ms: u64,
        /// As `OpenSession`.
        secret: SessionSecret,
        /// As `OpenSession`.
        now_unix_ms: u64,
        /// As `OpenSession`.
        client_name: String,
        /// The principal (a client certificate subject; empty: a caller without one).
        principal: String,
        /// The principal's quota.
        quota: Quota,
    },
}

/// What one principal may hold at once, all its sessions together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Open sessions.
    pub sessions: u32,
    /// Objects its sessions created that still exist.
    pub objects: u32,
    /// Open handles.
    pub handles: u32,
    /// Pending (blocked) waits.
    pub waits: u32,
}

/// The client operations. Each mirrors one Win32 call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// `Create{Mutex,Event,Semaphore}Ex`: create or open by name. `name` is the name exactly as
    /// the caller gave it (`None` or empty = unnamed). Reply: `Created` or `Error`.
    Create {
        /// The calling thread (becomes owner of a new mutex with `initial_owner`).
        thread: ThreadId,
        /// The object name, `None` for an unnamed object.
        name: Option<String>,
        /// Type and creation parameters.
        params: CreateParams,
        /// The requested access mask (may contain generic rights).
        access: u32,
    },
    /// `Open{Mutex,Event,Semaphore}`. Reply: `Opened` or `Error`.
    Open {
        /// Expected object type.
        kind: ObjectKind,
        /// The name (`None` fails with 87).
        name: Option<String>,
        /// The requested access mask.
        access: u32,
    },
    /// `CloseHandle`. Reply: `Done` or `Error(6)`.
    CloseHandle {
        /// The handle to close.
        handle: HandleId,
    },
    /// `ReleaseMutex` by `thread`. Reply: `Done` or `Error(288 | 6)`.
    ReleaseMutex {
        /// The releasing thread.
        thread: ThreadId,
        /// A handle to the mutex.
        handle: HandleId,
    },
    /// `SetEvent`. Reply: `Done` or `Error(5 | 6)`.
    SetEvent {
        /// A handle to the event.
        handle: HandleId,
    },
    /// `ResetEvent`. Reply: `Done` or `Error(5 | 6)`.
    ResetEvent {
        /// A handle to the event.
        handle: HandleId,
    },
    /// `PulseEvent`: release exactly the waiters registered now, then leave it non-signaled.
    PulseEvent {
        /// A handle to the event.
        handle: HandleId,
    },
    /// `ReleaseSemaphore`. Reply: `SemaphoreReleased { previous }` or `Error(87 | 298 | 5 | 6)`.
    ReleaseSemaphore {
        /// A handle to the semaphore.
        handle: HandleId,
        /// How much to add; must be > 0.
        count: i32,
    },
    /// `WaitForMultipleObjects` (one handle = `WaitForSingleObject`). Reply: `Wait(outcome)` if it
    /// resolved at once (including `TimedOut` for `timeout_ms == 0`), `WaitPending` if it was
    /// queued, or `Wait(Failed(code))` for a bad request.
    Wait {
        /// The waiting thread (owner identity for mutexes).
        thread: ThreadId,
        /// 1..=64 handles.
        handles: Vec<HandleId>,
        /// `bWaitAll`.
        wait_all: bool,
        /// Milliseconds; `u32::MAX` is INFINITE; 0 polls.
        timeout_ms: u32,
    },
    /// `SignalObjectAndWait`: atomically signal `signal` (SetEvent, ReleaseMutex or
    /// ReleaseSemaphore by 1) and wait on `wait`. Same replies as `Wait`; a failing signal gives
    /// `Wait(Failed(code))` and nothing waits.
    SignalAndWait {
        /// The calling thread.
        thread: ThreadId,
        /// The object to signal.
        signal: HandleId,
        /// The object to wait on.
        wait: HandleId,
        /// Milliseconds; `u32::MAX` is INFINITE.
        timeout_ms: u32,
    },
    /// The client gives up on its wait `wait` (a cancelled future, a give-up at the client's
    /// deadline). A pending wait ends as `TimedOut`; a wait that already resolved with a grant
    /// has the grant given back (a mutex released for its owner, a semaphore unit or an
    /// auto-reset event's signal restored) so that nothing stays acquired by an owner that will
    /// never use it; a wait never registered is barred (a late registration with that sequence
    /// number gets `TimedOut` and does nothing). Reply: `Wait(outcome)`, the outcome the wait had
    /// (`TimedOut` if the cancel ended it), or `Wait(Failed(87))` if its outcome was already
    /// acknowledged.
    CancelWait {
        /// The sequence number of the wait request to cancel.
        wait: Seq,
    },
    /// A client thread exited: abandon every mutex it owns. Reply: `Done`.
    ThreadExit {
        /// The thread that exited.
        thread: ThreadId,
    },
    /// The client ends its session on purpose (same effects as `ExpireSession`). Reply: `Done`.
    CloseSession,
    /// A `Create` or `Open` under an access policy (docs/security.md, "Rights"): what the
    /// caller's principal may do with the name, decided by the proposing node from its ACL and
    /// carried here so that every replica applies the same decision. A create that would make
    /// a new object needs `allowed.create`, one that finds the name or an open needs
    /// `allowed.open`; the handle's access is limited to [`Allowed::mask`]. Anything else
    /// fails with `ERROR_ACCESS_DENIED` (5) and changes nothing. Any other request inside:
    /// 87. (A variant of its own, last, so that log entries of the other requests keep their
    /// encoding.)
    Limited {
        /// What the principal may do with this name.
        allowed: Allowed,
        /// The `Create` or `Open`.
        request: Box<Request>,
    },
}

/// What a principal may do with a name (the ACL's answer, docs/security.md "Rights").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowed {
    /// Make a new object under the name.
    pub create: bool,
    /// Get a handle to an existing object under the name.
    pub open: bool,
    /// `SYNCHRONIZE`: wait on it (and so acquire a mutex, take a semaphore unit).
    pub synchronize: bool,
    /// `EVENT_MODIFY_STATE` / `SEMAPHORE_MODIFY_STATE`: set, reset, pulse, release units.
    pub modify_state: bool,
}

impl Allowed {
    /// Everything.
    pub const ALL: Allowed = Allowed {
        create: true,
        open: true,
        synchronize: true,
        modify_state: true,
    };

    /// The access bits a handle of `kind` may hold: the type's `…_ALL_ACCESS` without
    /// `SYNCHRONIZE` unless [`Allowed::synchronize`], and without the modify-state bit of
    /// events and semaphores unless [`Allowed::modify_state`] (a mutex's `MUTEX_MODIFY_STATE`
    /// is its query bit; `ReleaseMutex` needs no right, only ownership).
    pub fn mask(&self, kind: ObjectKind) -> u32 {
        use dlock_proto::vocab::{EVENT_MODIFY_STATE, SEMAPHORE_MODIFY_STATE, SYNCHRONIZE};
        let mut mask = dlock_proto::vocab::access::rights(kind).all;
        if !self.synchronize {
            mask &= !SYNCHRONIZE;
        }
        if !self.modify_state {
            mask &= !match kind {
                ObjectKind::Mutex => 0,
                ObjectKind::Event => EVENT_MODIFY_STATE,
                ObjectKind::Semaphore => SEMAPHORE_MODIFY_STATE,
            };
        }
        mask
    }
}

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaitOutcome {
    /// `WAIT_OBJECT_0 + index` (index 0 for wait-all).
    Signaled {
        /// Index into the request's handle array.
        index: u32,
        /// Log index of the entry that granted the wait if it acquired a mutex (recursive
        /// acquisitions keep the token of the original grant), else 0.
        fencing_token: u64,
    },
    /// `WAIT_ABANDONED_0 + index` (index 0 for wait-all).
    Abandoned {
        /// Index into the request's handle array.
        index: u32,
        /// As for `Signaled`.
        fencing_token: u64,
    },
    /// `WAIT_TIMEOUT`.
    TimedOut,
    /// `WAIT_FAILED` with this last-error code.
    Failed(Win32Error),
}

/// The reply to one applied command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// `OpenSession` succeeded.
    SessionOpened {
        /// The new session's id.
        session: SessionId,
    },
    /// The command's session does not exist (never did, expired or closed).
    SessionUnknown,
    /// The command named a session without its secret: nothing happened.
    SecretMismatch,
    /// A create succeeded.
    Created {
        /// The new handle.
        handle: HandleId,
        /// Last error 183 rather than 0.
        already_existed: bool,
        /// Fencing token if the create made the caller the owner of a new mutex, else 0.
        fencing_token: u64,
    },
    /// An open succeeded.
    Opened {
        /// The new handle.
        handle: HandleId,
    },
    /// Success without data.
    Done,
    /// `ReleaseSemaphore` succeeded.
    SemaphoreReleased {
        /// The count before the release.
        previous: i32,
    },
    /// The operation failed with this Win32 error code and changed nothing.
    Error(Win32Error),
    /// A wait that resolved.
    Wait(WaitOutcome),
    /// A wait that was queued. Its outcome is reported through `ApplyOutput::resolved` and kept
    /// in the session (see [`WaitStatus`]) until the client lists the wait in `waits_done`, so
    /// the client may acknowledge this reply at once and block for the outcome separately; a
    /// retry of the same `(session, seq)` returns the outcome once there is one.
    WaitPending,
    /// The session has too many unacknowledged replies or pending requests
    /// (`REPLIES_PER_SESSION_MAX`, see `Limits::replies_per_session_max`); nothing was done.
    TooManyPending,
}

/// Where a wait `(session, seq)` stands, for the non-mutating "await the outcome" call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStatus {
    /// The session does not exist.
    SessionUnknown,
    /// The wait is queued.
    Pending,
    /// The wait ended with this outcome (not yet acknowledged by the client).
    Resolved(WaitOutcome),
    /// No such wait: never registered here (yet), or its outcome was acknowledged.
    Unknown,
}

/// A wait that reached its single outcome during `apply` of some (other) command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    /// The waiting session.
    pub session: SessionId,
    /// The wait request's sequence number.
    pub seq: Seq,
    /// Its outcome.
    pub outcome: WaitOutcome,
}

/// What `Namespace::apply` produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApplyOutput {
    /// The reply for the command's proposer (`None` only for commands without a reply).
    pub reply: Option<Reply>,
    /// Waits (of any session) that this command resolved, in the order they resolved.
    pub resolved: Vec<Resolved>,
}

/// A snapshot of one object's state, for `Query` and for tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectState {
    /// A mutex.
    Mutex {
        /// `(session, thread)` of the owner, if owned.
        owner: Option<(SessionId, ThreadId)>,
        /// Recursion count (0 when unowned).
        recursion: u32,
        /// Abandoned and not yet re-acquired.
        abandoned: bool,
        /// Fencing token of the current grant (0 when unowned).
        fencing_token: u64,
    },
    /// An event.
    Event {
        /// Manual-reset event.
        manual_reset: bool,
        /// Currently signaled.
        signaled: bool,
    },
    /// A semaphore.
    Semaphore {
        /// Current count.
        count: i32,
        /// Maximum count.
        max: i32,
    },
}

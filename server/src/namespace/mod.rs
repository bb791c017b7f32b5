//! The namespace state machine: the Win32 named-object namespace (mutexes, events, semaphores
//! with create-or-open semantics) as a deterministic function of the Raft log.
//!
//! The specification is `win32-semantics.md` (sections cited as §n); this module reproduces it
//! for objects that live in a cluster instead of one machine's kernel.
//!
//! # The objects
//!
//! Every object lives in one namespace, keyed by its exact (case-sensitive) name, shared by the
//! three types; a name held by one type cannot be created or opened as another (error 6).
//! `Global\X` and `X` name the same object; `Local\X` is served by the host-local backend and
//! never reaches here (see [`name_key`]). A create with no name (or `""`) makes an unnamed
//! object that only its handle reaches.
//!
//! * A **mutex** has an owner `(session, thread)` and a recursion count. It is signaled when
//!   unowned, and always counts as signaled for its owner, whose waits just add to the count.
//!   Only the owner can release it (else 288).
//! * An **event** is a boolean. A *manual-reset* event stays set until reset and releases every
//!   waiter; an *auto-reset* event releases one waiter and is reset by that release.
//!   `PulseEvent` sets it, releases the waiters registered at that moment that can be released
//!   (all of them for manual-reset, at most one for auto-reset) and resets it.
//! * A **semaphore** is a count in `0..=max`, signaled while positive; each satisfied wait takes
//!   one unit, and any session may release units.
//!
//! A **handle** is `(session, handle id) → (object, granted access)`. Handle ids come from one
//! counter, are never reused, and are only valid in the session that opened them: any other
//! session gets 6. The granted mask is fixed when the handle is made (generic rights mapped per
//! §1.3) and checked by every operation: waits need `SYNCHRONIZE`, `Set/Reset/PulseEvent` need
//! `EVENT_MODIFY_STATE`, `ReleaseSemaphore` needs `SEMAPHORE_MODIFY_STATE`, `ReleaseMutex` needs
//! nothing.
//!
//! An object lives while it has a handle or a pending wait anywhere. Its **name** lives only
//! while it has handles: when the last handle closes the name is removed at once (as NT removes
//! a temporary object's name when its handle count drops to zero), even if waits keep the
//! object itself alive a little longer. So a later create of that name makes a new object, and an
//! owned mutex whose handles all close is gone for good.
//!
//! # Sessions, ownership and abandonment
//!
//! A session is one client process with a lease (`ttl_ms`). Its id is the log index of its
//! `OpenSession`. Threads are the client's own ids. When a thread exits (`ThreadExit`) or the
//! whole session ends (`ExpireSession` from the leader's lease timer, or `CloseSession`), every
//! mutex that thread or session owned is **abandoned**: its recursion drops to zero regardless
//! of depth, it becomes unowned and signaled, and it is flagged abandoned. Whoever acquires it
//! next — by a queued wait woken right then, or much later — becomes the owner with count 1 and
//! gets `WAIT_ABANDONED` (+ index for wait-any), which clears the flag. Ending a session also
//! fails its pending waits with 6 and closes its handles in ascending id order.
//!
//! # Waits and queues
//!
//! A wait names 1..=64 handles, any or all. It is evaluated at once: wait-any takes the lowest
//! index whose object is signaled for the waiter and modifies only that object; wait-all takes
//! every object at once or none (no object is ever reserved for a waiting wait-all). A wait that
//! cannot be satisfied fails at once as `WAIT_TIMEOUT` if its timeout is 0; otherwise it is
//! registered under `(session, seq)` and appended to the FIFO queue of every distinct object it
//! names, and the reply is `WaitPending`.
//!
//! After every command that can make an object signaled (release, set, pulse, abandonment) the
//! queues of the affected objects are scanned oldest first, and every wait that can be satisfied
//! *now* is granted (a wait-all at the head that cannot be satisfied does not block the waits
//! behind it). One pass per queue suffices: a grant only ever consumes (it never makes an object
//! more signaled for anyone), so a wait passed over cannot become satisfiable later in the same
//! scan. The invariant after every `apply` is that no pending wait is satisfiable. Windows
//! promises no order among waiters; dlock gives FIFO.
//!
//! A wait ends exactly once: granted, failed, timed out by `TimeoutWait`, which the leader
//! proposes when its timeout passes on the leader's monotonic clock (a new leader gives it the
//! timeout minus the watched time it already waited, [`PendingWait::waited_ms`]), or given up by the client's `CancelWait`; whichever reaches the log first wins.
//! Resolutions of waits other than the command's own go into [`ApplyOutput::resolved`], in
//! order. Every outcome (and what a grant acquired) is kept in the session until the client
//! says it has it (`waits_done`), so the client may acknowledge the registration's
//! `WaitPending` at once and learn the outcome later with a read ([`Namespace::wait_status`]);
//! a retry of the registration returns the outcome too. `CancelWait` on a wait that was granted
//! meanwhile gives the grant back: one recursion level of each mutex it acquired (only that
//! grant, by its fencing token, restoring the abandoned flag it took), the semaphore unit, the
//! auto-reset event's signal (only if no Set/Reset/Pulse touched the event since).
//!
//! # Fencing tokens
//!
//! Every mutex grant records the log index of the entry that granted it (a create with
//! `initial_owner`, a wait, or the command whose release/abandonment woke a queued wait). The
//! token only grows cluster-wide; recursive acquisitions keep the original token. A storage
//! system can ask [`Namespace::check_fencing_token`] (Chubby's sequencer check) whether a token
//! is still the current grant for a name.
//!
//! # Deduplication
//!
//! Every client request carries `(session, seq, ack_below)`. The session's reply table records
//! every reply; a repeated `seq` gets the recorded reply and nothing else happens. Replies below
//! `ack_below` are pruned, and a `seq` below the highest `ack_below` seen whose reply is gone is
//! refused with 87 rather than executed twice. The table is bounded by
//! [`Limits::replies_per_session_max`] (`Reply::TooManyPending`), except that the oldest request
//! in flight (`seq == ack_below`) is always admitted, so a client can always make progress, and
//! `CancelWait` has a wider bound (it can run while the wait it cancels holds the floor).
//!
//! # Determinism
//!
//! `apply` depends only on the state and the command: ordered maps only, no clock (time arrives
//! in commands: durations a leader measured, `Checkpoint::elapsed_ms` and silences, and
//! wall-clock stamps kept only for the record), no randomness, no I/O. Bad commands never panic; they get error
//! replies. Invariants are asserted; [`Namespace::snapshot`] verifies them all before encoding
//! and [`Namespace::restore`] verifies them after decoding.
//!
//! # Decisions (where the spec leaves a choice)
//!
//! 1. `Global\` with nothing after it fails with 123 (an empty last component), for create and
//!    open alike. `Global\Global\X` fails with 3: only one `Global\` prefix is stripped.
//! 2. Access checks: a *new* object's creator gets the requested (mapped) access without a check,
//!    even 0 or undefined bits, as on Windows. Opening an existing object (by `Open*` or by a
//!    create that found the name) refuses an empty mask, undefined specific bits and reserved
//!    bits with 5. `ACCESS_SYSTEM_SECURITY` is refused with 1314 in every create and open (after
//!    the name lookup for open, so a missing name is still 2). dlock has no security
//!    descriptors, so an access check can only fail on the mask itself.
//! 3. Error precedence: validation (counts, names, handle counts) → handle lookup (6) → type
//!    (6) → rights (5) → the operation's own errors → resource limits (1450).
//! 4. A wait-all that acquires several mutexes reports the fencing token of the first mutex in
//!    array order; a wait-any reports the token of the mutex it acquired; 0 if no mutex.
//! 5. The recursion limit: an owner's wait whose lowest signaled object is its own mutex at
//!    [`MUTEX_RECURSION_MAX`](dlock_proto::vocab::MUTEX_RECURSION_MAX) fails with `WAIT_FAILED`/587 and changes nothing; a queued
//!    wait that would overflow when woken fails the same way.
//! 6. `ThreadExit` also fails that thread's pending waits with 6 (a dead thread must not be
//!    granted a mutex it would never release), like session end does for the whole session.
//! 7. `SignalObjectAndWait` checks both handles (existence, type, rights) and, unless it polls,
//!    the wait limits before signaling, so every failure leaves the state unchanged. The signal
//!    wakes other waiters before the caller's own wait is evaluated.
//! 8. `query` needs no access right (it is dlock's, not a Win32 call), only a handle of the
//!    session.
//! 9. `CloseSession`'s `Done` is not recorded (the reply table goes with the session); a retry
//!    gets `SessionUnknown`.
//! 10. An interior NUL in a name fails with 123 (Rust callers can pass one; C callers cannot).
//!
//! # IMPLEMENTATION CAVEATS (Win32 behaviour deliberately not reproduced)
//!
//! * No security descriptors, no inheritance, no `DuplicateHandle`; no waitable timers, jobs or
//!   file mappings in the namespace.
//! * `Local\` names are refused here (87); unlike Windows, `Local\X` and `X` differ.
//! * Waiters are served FIFO (Windows promises no order), and `PulseEvent` is reliable: it
//!   releases exactly the waits registered when it is applied, never "missing" one.
//! * Alertable waits, `WAIT_IO_COMPLETION`, pseudo-handles and the low-two-bits handle quirk are
//!   not modelled.
//! * Wait timeouts are measured on the leader's monotonic clock and resolved by `TimeoutWait`; a
//!   grant that reaches the log first wins even if the deadline had passed. Across a failover a
//!   wait may run up to a checkpoint interval (plus the failover) longer than its timeout.
//! * (Resolved) Finding the mutexes of a dying thread or session no longer scans all objects:
//!   an owner index (rebuilt from the objects on restore, checked by `verify`) makes it cost
//!   what the owner holds.

mod object;
mod session;
#[cfg(test)]
mod tests;
mod types;
mod validate;
mod wait;

use std::collections::{BTreeMap, BTreeSet};

use imbl::OrdMap;

use serde::{Deserialize, Serialize};

use dlock_proto::vocab::names::{create_name_key, name_key, open_name_key};
pub use session::SessionInfo;
pub use types::*;
pub use validate::{failure_reply, validate_request};
pub use wait::PendingWait;

use dlock_proto::vocab::{
    EVENT_MODIFY_STATE, MAXIMUM_WAIT_OBJECTS, SEMAPHORE_MODIFY_STATE, SYNCHRONIZE, access,
};
use object::{MutexData, Object, ObjectData, ObjectId, Owner};
use session::Session;
use wait::{Outcome, Taken, Wait, WaitKey};

/// Most sessions open at once. At the limit `OpenSession` replies `Error(1450)` and nothing
/// changes.
pub const SESSIONS_MAX: usize = 10_000;
/// Most objects alive at once, cluster-wide. At the limit a create that would make a new object
/// replies `Error(1450)` (opening existing objects still works).
pub const OBJECTS_MAX: usize = 100_000;
/// Most open handles per session. At the limit create and open reply `Error(1450)`.
pub const HANDLES_PER_SESSION_MAX: usize = 16_384;
/// Most open handles at once, cluster-wide. At the limit create and open reply `Error(1450)`.
/// With [`WAITS_MAX`] it bounds the state, and so every snapshot: see
/// [`STATE_IMAGE_BYTES_MAX`].
pub const HANDLES_MAX: usize = 1_000_000;
/// Most pending (queued) waits plus ended waits whose outcome the client has not acknowledged
/// yet, per session. At the limit a wait that would have to queue replies `Wait(Failed(1450))`;
/// a wait satisfiable at once, or a poll, still succeeds.
pub const WAITS_PER_SESSION_MAX: usize = 1_024;
/// Most pending (queued) waits plus wait outcomes the clients have not acknowledged yet (those
/// granted at once included: they are kept until the reply is acknowledged), cluster-wide. At
/// the limit a wait that would queue or be granted replies `Wait(Failed(1450))` and nothing
/// changes (a poll that finds nothing still times out).
pub const WAITS_MAX: usize = 100_000;
/// Most pending waits queued on one object. At the limit a wait that would have to queue on it
/// replies `Wait(Failed(1450))`.
pub const WAITERS_PER_OBJECT_MAX: usize = 1_024;
/// Most recorded replies per session (the dedupe table). At the limit a new request gets
/// `Reply::TooManyPending` and is not executed (except the oldest one in flight); the client
/// must acknowledge replies (`ack_below`) to make room.
pub const REPLIES_PER_SESSION_MAX: usize = 1_024;
/// Most recorded replies (dedupe tables) of all sessions together. At the limit a new request
/// gets `Reply::TooManyPending` and is not executed, except each session's oldest request in
/// flight, as at the per-session limit.
pub const REPLIES_MAX: usize = 1_000_000;
/// Longest `OpenSession::client_name`, in bytes. Longer names get `Error(87)` and no session.
pub const CLIENT_NAME_MAX_BYTES: usize = 256;
/// The first byte of every snapshot; [`Namespace::restore`] refuses any other.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 4;
/// The largest namespace image ([`Namespace::snapshot`]) the default limits allow: every
/// limit reached at once with the largest item of each kind (longest names, 64-object waits,
/// 64-object grants), as built by the test `the_largest_state_fits_its_bound`. A node that
/// lost its data catches up from a snapshot of this size; the cluster crate's test
/// `a_wiped_node_catches_up_from_a_snapshot_of_the_largest_state` sends one of this size.
pub const STATE_IMAGE_BYTES_MAX: usize = 320 << 20;

/// The resource limits in force. They are part of the replicated state (every replica must
/// refuse the same commands), fixed when the namespace is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// See [`SESSIONS_MAX`].
    pub sessions_max: usize,
    /// See [`OBJECTS_MAX`].
    pub objects_max: usize,
    /// See [`HANDLES_PER_SESSION_MAX`].
    pub handles_per_session_max: usize,
    /// See [`HANDLES_MAX`].
    pub handles_max: usize,
    /// See [`WAITS_PER_SESSION_MAX`].
    pub waits_per_session_max: usize,
    /// See [`WAITS_MAX`].
    pub waits_max: usize,
    /// See [`WAITERS_PER_OBJECT_MAX`].
    pub waiters_per_object_max: usize,
    /// See [`REPLIES_PER_SESSION_MAX`].
    pub replies_per_session_max: usize,
    /// See [`REPLIES_MAX`].
    pub replies_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sessions_max: SESSIONS_MAX,
            objects_max: OBJECTS_MAX,
            handles_per_session_max: HANDLES_PER_SESSION_MAX,
            handles_max: HANDLES_MAX,
            waits_per_session_max: WAITS_PER_SESSION_MAX,
            waits_max: WAITS_MAX,
            waiters_per_object_max: WAITERS_PER_OBJECT_MAX,
            replies_per_session_max: REPLIES_PER_SESSION_MAX,
            replies_max: REPLIES_MAX,
        }
    }
}

/// Why a snapshot could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// The snapshot is empty.
    #[error("namespace snapshot is empty")]
    Empty,
    /// The snapshot was written by an unknown format version.
    #[error("namespace snapshot has format version {0}, expected {SNAPSHOT_FORMAT_VERSION}")]
    Version(u8),
    /// The bytes do not decode.
    #[error("namespace snapshot does not decode: {0}")]
    Decode(#[from] postcard::Error),
    /// Bytes follow the encoded state.
    #[error("namespace snapshot has {0} trailing bytes")]
    TrailingBytes(usize),
    /// The decoded state violates an invariant.
    #[error("namespace snapshot is inconsistent: {0}")]
    Inconsistent(String),
}

/// A handle's replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Handle {
    /// The session that owns the handle.
    session: SessionId,
    /// The object it refers to.
    object: ObjectId,
    /// The granted access mask (generic rights already mapped).
    access: u32,
}

/// How a wait could be satisfied right now.
enum Eval {
    /// Not satisfiable now.
    NotReady,
    /// Wait-any: satisfied by this index.
    Any(usize),
    /// Wait-all: satisfied by all objects.
    All,
    /// It would fail (recursion limit) with this code.
    Fail(Win32Error),
}

/// The namespace: every session, handle, object, name and pending wait. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// The limits in force.
    limits: Limits,
    /// The log index of the last applied command (0 before the first).
    applied_index: u64,
    /// The last handle id handed out.
    last_handle_id: HandleId,
    /// The last object id handed out.
    last_object_id: ObjectId,
    /// Sessions by id.
    sessions: OrdMap<SessionId, Session>,
    /// Handles by id.
    handles: OrdMap<HandleId, Handle>,
    /// Objects by id.
    objects: OrdMap<ObjectId, Object>,
    /// Name (namespace key) → object: an index over `objects` (not part of snapshots, where it
    /// would double the largest part of the largest state; rebuilt by `restore`).
    #[serde(skip)]
    names: OrdMap<String, ObjectId>,
    /// Pending waits by `(session, seq)`.
    waits: OrdMap<WaitKey, Wait>,
    /// Watched time: the sum of every checkpoint's `elapsed_ms` (see `Command::Checkpoint`).
    watched_ms: u64,
    /// Owned mutexes by owning session, each with its owning thread: an index over `objects`
    /// (not part of snapshots; rebuilt by `restore`) so that a thread exit or a session end
    /// costs what the owner holds, not a scan of every object.
    #[serde(skip)]
    owned: OrdMap<SessionId, BTreeMap<ObjectId, ThreadId>>,
    /// Wait outcomes not acknowledged yet, all sessions together: with `waits`, what
    /// [`WAITS_MAX`] bounds. Not part of snapshots; recounted by `restore`.
    #[serde(skip)]
    outcomes_total: usize,
    /// Recorded replies, all sessions together: what [`REPLIES_MAX`] bounds. Not part of
    /// snapshots; recounted by `restore`.
    #[serde(skip)]
    replies_total: usize,
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace::with_limits(Limits::default())
    }
}

impl Namespace {
    /// An empty namespace with the default [`Limits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty namespace with the given limits (tests use small ones).
    pub fn with_limits(limits: Limits) -> Self {
        Namespace {
            limits,
            applied_index: 0,
            last_handle_id: 0,
            last_object_id: 0,
            sessions: OrdMap::new(),
            handles: OrdMap::new(),
            objects: OrdMap::new(),
            names: OrdMap::new(),
            waits: OrdMap::new(),
            watched_ms: 0,
            owned: OrdMap::new(),
            outcomes_total: 0,
            replies_total: 0,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The log index of the last applied command (0 before the first).
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Applies one committed command; `index` is its Raft log index (session ids and fencing
    /// tokens come from it).
    ///
    /// # Panics
    ///
    /// If `index` is not greater than the previous one (a bug in the caller, never bad input).
    pub fn apply(&mut self, index: u64, command: &Command) -> ApplyOutput {
        assert!(
            index > self.applied_index,
            "log index {index} applied after index {}",
            self.applied_index
        );
        self.applied_index = index;
        let mut resolved = Vec::new();
        let reply = match command {
            Command::OpenSession {
                ttl_ms,
                now_unix_ms,
                client_name,
            } => self.open_session(index, *ttl_ms, *now_unix_ms, client_name),
            Command::Checkpoint {
                elapsed_ms,
                sessions,
                ..
            } => {
                self.watched_ms = self.watched_ms.saturating_add(*elapsed_ms);
                for (id, silent_ms) in sessions {
                    if let Some(session) = self.sessions.get_mut(id) {
                        let heard = self.watched_ms.saturating_sub(*silent_ms);
                        session.heard_at_watched_ms = session.heard_at_watched_ms.max(heard);
                    }
                }
                Reply::Done
            }
            Command::ExpireSession { session } => {
                self.end_session(index, *session, &mut resolved);
                Reply::Done
            }
            Command::TimeoutWait { session, seq } => {
                if self.waits.contains_key(&(*session, *seq)) {
                    self.finish_wait((*session, *seq), WaitOutcome::TimedOut, &mut resolved);
                }
                Reply::Done
            }
            Command::Client {
                session,
                seq,
                ack_below,
                waits_done,
                now_unix_ms,
                request,
            } => self.client(
                index,
                *session,
                (*seq, *ack_below),
                waits_done,
                *now_unix_ms,
                request,
                &mut resolved,
            ),
        };
        ApplyOutput {
            reply: Some(reply),
            resolved,
        }
    }

    /// Linearizable read (the caller ensures ReadIndex): the state of the object behind the
    /// session's handle. Needs no access right.
    ///
    /// # Errors
    ///
    /// `Win32Error::INVALID_HANDLE` if the session does not exist or the handle is not one of its own.
    pub fn query(&self, session: SessionId, handle: HandleId) -> Result<ObjectState, Win32Error> {
        let (object, _) = self.lookup(session, handle)?;
        Ok(self.object(object).state())
    }

    /// Chubby-style sequencer check: true iff the mutex with this name (`Global\` prefix
    /// stripped, same rules as create) is owned now and its current grant's fencing token is
    /// `token`. A malformed name, a missing name or another type gives false.
    pub fn check_fencing_token(&self, name: &str, token: u64) -> bool {
        let Ok(key) = name_key(name) else {
            return false;
        };
        let Some(id) = self.names.get(key) else {
            return false;
        };
        match &self.object(*id).data {
            ObjectData::Mutex(m) => m.owner.is_some() && m.fencing_token == token,
            _ => false,
        }
    }

    /// The state of the object with this name, if any (same name rules as open).
    pub fn object_state_by_name(&self, name: &str) -> Option<ObjectState> {
        let key = name_key(name).ok()?;
        self.names.get(key).map(|id| self.object(*id).state())
    }

    /// One session's summary.
    pub fn session(&self, id: SessionId) -> Option<SessionInfo> {
        self.sessions.get(&id).map(|s| s.info(id, self.watched_ms))
    }

    /// Every session's summary, in id order.
    pub fn sessions(&self) -> impl Iterator<Item = SessionInfo> + '_ {
        self.sessions
            .iter()
            .map(|(id, s)| s.info(*id, self.watched_ms))
    }

    /// All pending (queued) waits in `(session, seq)` order, for the leader's timeout timers.
    pub fn pending_waits(&self) -> impl Iterator<Item = PendingWait> + '_ {
        self.waits
            .keys()
            .filter_map(|(session, seq)| self.pending_wait(*session, *seq))
    }

    /// The watched time: the sum of every checkpoint's `elapsed_ms` (see `Command::Checkpoint`).
    pub fn watched_ms(&self) -> u64 {
        self.watched_ms
    }

    /// The pending wait `(session, seq)`, if it is still queued.
    pub fn pending_wait(&self, session: SessionId, seq: Seq) -> Option<PendingWait> {
        self.waits.get(&(session, seq)).map(|wait| PendingWait {
            session,
            seq,
            thread: wait.thread,
            registered_unix_ms: wait.registered_unix_ms,
            timeout_ms: wait.timeout_ms,
            waited_ms: self.watched_ms.saturating_sub(wait.registered_watched_ms),
        })
    }

    /// Where wait `(session, seq)` stands: pending, ended (with the outcome the client has not
    /// acknowledged yet), or unknown. The read behind the non-mutating "await the outcome" call.
    pub fn wait_status(&self, session: SessionId, seq: Seq) -> WaitStatus {
        let Some(s) = self.sessions.get(&session) else {
            return WaitStatus::SessionUnknown;
        };
        if s.waits.contains(&seq) {
            return WaitStatus::Pending;
        }
        if let Some(outcome) = s.outcomes.get(&seq) {
            return WaitStatus::Resolved(outcome.outcome);
        }
        match s.replies.get(&seq) {
            Some(Reply::Wait(outcome)) => WaitStatus::Resolved(*outcome),
            _ => WaitStatus::Unknown,
        }
    }

    /// The reply recorded for request `(session, seq)` in the session's dedupe table, if any.
    pub fn recorded_reply(&self, session: SessionId, seq: Seq) -> Option<&Reply> {
        self.sessions.get(&session)?.replies.get(&seq)
    }

    /// Encodes the whole state (postcard, after a format version byte).
    ///
    /// # Panics
    ///
    /// If the state violates an invariant (a bug: it is never written out inconsistent).
    pub fn snapshot(&self) -> Vec<u8> {
        if let Err(err) = self.verify() {
            panic!("namespace invariant violated before snapshot: {err}");
        }
        let mut bytes = vec![SNAPSHOT_FORMAT_VERSION];
        let encoded = postcard::to_stdvec(self).expect("encoding to a Vec cannot fail");
        bytes.extend_from_slice(&encoded);
        bytes
    }

    /// Decodes a snapshot made by [`Namespace::snapshot`] and checks every invariant.
    ///
    /// # Errors
    ///
    /// [`NamespaceError`] for bytes that are not a consistent snapshot; never panics.
    pub fn restore(bytes: &[u8]) -> Result<Namespace, NamespaceError> {
        let (&version, rest) = bytes.split_first().ok_or(NamespaceError::Empty)?;
        if version != SNAPSHOT_FORMAT_VERSION {
            return Err(NamespaceError::Version(version));
        }
        let (mut namespace, trailing): (Namespace, _) = postcard::take_from_bytes(rest)?;
        if !trailing.is_empty() {
            return Err(NamespaceError::TrailingBytes(trailing.len()));
        }
        namespace.owned = namespace.owner_index();
        namespace.names = namespace
            .objects
            .iter()
            .filter_map(|(id, object)| object.name.clone().map(|name| (name, *id)))
            .collect();
        namespace.outcomes_total = namespace.count_outcomes();
        namespace.replies_total = namespace.count_replies();
        namespace.verify().map_err(NamespaceError::Inconsistent)?;
        Ok(namespace)
    }

    // -----------------------------------------------------------------------------------------
    // Sessions and client requests.
    // -----------------------------------------------------------------------------------------

    fn open_session(&mut self, index: u64, ttl_ms: u64, _now: u64, client_name: &str) -> Reply {
        if client_name.len() > CLIENT_NAME_MAX_BYTES {
            return Reply::Error(Win32Error::INVALID_PARAMETER);
        }
        if self.sessions.len() >= self.limits.sessions_max {
            return Reply::Error(Win32Error::NO_SYSTEM_RESOURCES);
        }
        let session = Session {
            client_name: client_name.to_string(),
            ttl_ms,
            heard_at_watched_ms: self.watched_ms,
            handles: BTreeSet::new(),
            waits: BTreeSet::new(),
            replies: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            acked_below: 0,
        };
        let previous = self.sessions.insert(index, session);
        assert!(previous.is_none(), "session id {index} reused");
        Reply::SessionOpened { session: index }
    }

    /// Ends a session (expiry or close): fails its pending waits with 6, abandons every mutex its
    /// threads own (waking their waiters), closes its handles in id order and forgets it.
    fn end_session(&mut self, index: u64, id: SessionId, resolved: &mut Vec<Resolved>) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        let seqs: Vec<Seq> = session.waits.iter().copied().collect();
        let handles: Vec<HandleId> = session.handles.iter().copied().collect();
        for seq in seqs {
            self.finish_wait(
                (id, seq),
                WaitOutcome::Failed(Win32Error::INVALID_HANDLE),
                resolved,
            );
        }
        let abandoned = self.abandon(id, None);
        self.wake(index, &abandoned, resolved);
        for handle in handles {
            self.close_handle(handle);
        }
        let session = self
            .sessions
            .remove(&id)
            .expect("the ending session exists");
        self.outcomes_total -= session.outcomes.len();
        self.replies_total -= session.replies.len();
        assert!(
            session.handles.is_empty(),
            "session {id} ended with open handles"
        );
        assert!(
            session.waits.is_empty(),
            "session {id} ended with pending waits"
        );
        assert!(
            !self.owned.contains_key(&id),
            "session {id} ended still owning a mutex"
        );
    }

    /// A client request: session check, acknowledged wait outcomes, dedupe, acknowledgement
    /// pruning, the reply-table limit, then the operation; the reply is recorded.
    #[allow(clippy::too_many_arguments)]
    fn client(
        &mut self,
        index: u64,
        id: SessionId,
        (seq, ack_below): (Seq, Seq),
        waits_done: &[Seq],
        now: u64,
        request: &Request,
        resolved: &mut Vec<Resolved>,
    ) -> Reply {
        let replies_max = self.limits.replies_per_session_max;
        let Some(session) = self.sessions.get_mut(&id) else {
            return Reply::SessionUnknown;
        };
        // The client has these outcomes: forget them (idempotent, so also on a retry).
        for done in waits_done.iter().take(self.limits.waits_per_session_max) {
            if session.outcomes.remove(done).is_some() {
                self.outcomes_total -= 1;
            }
        }
        if let Some(reply) = session.replies.get(&seq) {
            // A retried registration of a wait that has ended since gets the outcome.
            if *reply == Reply::WaitPending
                && let Some(outcome) = session.outcomes.get(&seq)
            {
                return Reply::Wait(outcome.outcome);
            }
            return reply.clone();
        }
        let floor = session.acked_below.max(ack_below);
        if seq < floor {
            return Reply::Error(Win32Error::INVALID_PARAMETER);
        }
        session.acked_below = floor;
        let (replies, outcomes) = (session.replies.len(), session.outcomes.len());
        session.replies.retain(|s, _| *s >= floor);
        // A grant made at once is received with its reply, so it goes with the reply.
        session.outcomes.retain(|s, o| *s >= floor || !o.immediate);
        self.replies_total -= replies - session.replies.len();
        self.outcomes_total -= outcomes - session.outcomes.len();
        // The oldest request in flight is always admitted (so the floor can always advance, and
        // the table exceeds the limit by at most one); a CancelWait, which may hold a wait's
        // number in flight below everything else, gets a wider bound.
        // A CancelWait may record two replies (its own and the one barring a registration that
        // has not arrived), so it needs two free slots of the cluster-wide bound.
        let (limit, needed) = match request {
            Request::CancelWait { .. } => (replies_max + self.limits.waits_per_session_max, 2),
            _ => (replies_max, 1),
        };
        let full =
            session.replies.len() >= limit || self.replies_total + needed > self.limits.replies_max;
        if full && seq > floor {
            return Reply::TooManyPending;
        }
        let reply = self.execute(index, id, seq, now, request, resolved);
        if let Some(session) = self.sessions.get_mut(&id)
            && session.replies.insert(seq, reply.clone()).is_none()
        {
            self.replies_total += 1;
        }
        reply
    }

    /// `CancelWait`: the client gives wait `(session, wait)` up (see [`Request::CancelWait`]).
    fn cancel_wait(
        &mut self,
        index: u64,
        session: SessionId,
        wait: Seq,
        resolved: &mut Vec<Resolved>,
    ) -> Reply {
        if self.waits.contains_key(&(session, wait)) {
            self.finish_wait((session, wait), WaitOutcome::TimedOut, resolved);
        }
        let s = self
            .sessions
            .get_mut(&session)
            .expect("the requesting session exists");
        if let Some(outcome) = s.outcomes.remove(&wait) {
            self.outcomes_total -= 1;
            self.give_back(index, session, &outcome, resolved);
            return Reply::Wait(outcome.outcome);
        }
        match s.replies.get(&wait) {
            Some(Reply::Wait(outcome)) => Reply::Wait(*outcome),
            Some(_) => Reply::Wait(WaitOutcome::Failed(Win32Error::INVALID_PARAMETER)),
            None if wait < s.acked_below => {
                Reply::Wait(WaitOutcome::Failed(Win32Error::INVALID_PARAMETER))
            }
            None => {
                // Never registered (yet): bar a registration still on its way.
                s.replies.insert(wait, Reply::Wait(WaitOutcome::TimedOut));
                self.replies_total += 1;
                Reply::Wait(WaitOutcome::TimedOut)
            }
        }
    }

    /// Undoes what a granted wait acquired, for an owner that will never use it: one recursion
    /// level of each mutex it still owns (restoring the abandoned flag it took), one unit of
    /// each semaphore, the signal of each auto-reset event; then wakes whoever can use them.
    fn give_back(
        &mut self,
        index: u64,
        session: SessionId,
        outcome: &Outcome,
        resolved: &mut Vec<Resolved>,
    ) {
        let mut freed = Vec::new();
        let mut unowned = Vec::new();
        for taken in &outcome.acquired {
            let (id, was_abandoned) = (taken.object, taken.abandoned);
            let Some(object) = self.objects.get_mut(&id) else {
                continue;
            };
            let epoch = object.event_epoch;
            match &mut object.data {
                ObjectData::Mutex(m) => {
                    // Only the very grant being given back (its token), never a later one.
                    if m.owner != Some((session, outcome.thread)) || m.fencing_token != taken.stamp
                    {
                        continue;
                    }
                    m.recursion -= 1;
                    if m.recursion == 0 {
                        *m = MutexData {
                            owner: None,
                            recursion: 0,
                            abandoned: was_abandoned,
                            fencing_token: 0,
                        };
                        freed.push(id);
                        unowned.push(id);
                    }
                }
                ObjectData::Semaphore { count, max } => {
                    if *count < *max {
                        *count += 1;
                        freed.push(id);
                    }
                }
                ObjectData::Event {
                    manual_reset: false,
                    signaled,
                } if epoch == taken.stamp => {
                    *signaled = true;
                    freed.push(id);
                }
                ObjectData::Event { .. } => {}
            }
        }
        for id in unowned {
            self.unindex_owner(id, (session, outcome.thread));
        }
        self.wake(index, &freed, resolved);
    }

    fn execute(
        &mut self,
        index: u64,
        session: SessionId,
        seq: Seq,
        now: u64,
        request: &Request,
        resolved: &mut Vec<Resolved>,
    ) -> Reply {
        if let Err(code) = validate_request(request) {
            return failure_reply(request, code);
        }
        match request {
            Request::Create {
                thread,
                name,
                params,
                access,
            } => self.create(index, session, *thread, name.as_deref(), params, *access),
            Request::Open { kind, name, access } => {
                self.open(session, *kind, name.as_deref(), *access)
            }
            Request::CloseHandle { handle } => match self.lookup(session, *handle) {
                Ok(_) => {
                    self.close_handle(*handle);
                    Reply::Done
                }
                Err(code) => Reply::Error(code),
            },
            Request::ReleaseMutex { thread, handle } => {
                match self.release_mutex(index, session, *thread, *handle, resolved) {
                    Ok(()) => Reply::Done,
                    Err(code) => Reply::Error(code),
                }
            }
            Request::SetEvent { handle } => {
                self.event_op(index, session, *handle, resolved, Op::Set)
            }
            Request::ResetEvent { handle } => {
                self.event_op(index, session, *handle, resolved, Op::Reset)
            }
            Request::PulseEvent { handle } => {
                self.event_op(index, session, *handle, resolved, Op::Pulse)
            }
            Request::ReleaseSemaphore { handle, count } => {
                match self.release_semaphore(index, session, *handle, *count, resolved) {
                    Ok(previous) => Reply::SemaphoreReleased { previous },
                    Err(code) => Reply::Error(code),
                }
            }
            Request::Wait {
                thread,
                handles,
                wait_all,
                timeout_ms,
            } => {
                let mut objects = Vec::with_capacity(handles.len());
                for handle in handles {
                    match self.wait_handle(session, *handle) {
                        Ok(object) => objects.push(object),
                        Err(code) => return Reply::Wait(WaitOutcome::Failed(code)),
                    }
                }
                if *wait_all {
                    let mut seen = BTreeSet::new();
                    if !objects.iter().all(|o| seen.insert(*o)) {
                        return Reply::Wait(WaitOutcome::Failed(Win32Error::INVALID_PARAMETER));
                    }
                }
                let wait = Wait {
                    thread: *thread,
                    objects,
                    wait_all: *wait_all,
                    registered_unix_ms: now,
                    registered_watched_ms: self.watched_ms,
                    timeout_ms: *timeout_ms,
                };
                self.start_wait(index, (session, seq), wait)
            }
            Request::SignalAndWait {
                thread,
                signal,
                wait,
                timeout_ms,
            } => {
                let outcome = self.signal_and_wait(
                    index,
                    (session, seq),
                    now,
                    *thread,
                    *signal,
                    *wait,
                    *timeout_ms,
                    resolved,
                );
                match outcome {
                    Ok(reply) => reply,
                    Err(code) => Reply::Wait(WaitOutcome::Failed(code)),
                }
            }
            // A wait is cancelled by a later request: a cancel that names its own or a later
            // number could bar registrations no client will ever send, one reply each, past
            // every bound.
            Request::CancelWait { wait } if *wait >= seq => {
                Reply::Wait(WaitOutcome::Failed(Win32Error::INVALID_PARAMETER))
            }
            Request::CancelWait { wait } => self.cancel_wait(index, session, *wait, resolved),
            Request::ThreadExit { thread } => {
                let seqs: Vec<Seq> = self
                    .sessions
                    .get(&session)
                    .expect("the requesting session exists")
                    .waits
                    .iter()
                    .copied()
                    .filter(|seq| {
                        self.waits
                            .get(&(session, *seq))
                            .is_some_and(|w| w.thread == *thread)
                    })
                    .collect();
                for seq in seqs {
                    let failed = WaitOutcome::Failed(Win32Error::INVALID_HANDLE);
                    self.finish_wait((session, seq), failed, resolved);
                }
                let abandoned = self.abandon(session, Some(*thread));
                self.wake(index, &abandoned, resolved);
                Reply::Done
            }
            Request::CloseSession => {
                self.end_session(index, session, resolved);
                Reply::Done
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Create, open, close.
    // -----------------------------------------------------------------------------------------

    fn create(
        &mut self,
        index: u64,
        session: SessionId,
        thread: ThreadId,
        name: Option<&str>,
        params: &CreateParams,
        access: u32,
    ) -> Reply {
        let key = match create_name_key(name) {
            Ok(key) => key,
            Err(code) => return Reply::Error(code),
        };
        let kind = params.kind();
        if let Some(id) = key.and_then(|key| self.names.get(key)).copied() {
            if self.object(id).kind() != kind {
                return Reply::Error(Win32Error::INVALID_HANDLE);
            }
            let granted = match access::existing_object(kind, access) {
                Ok(granted) => granted,
                Err(code) => return Reply::Error(code),
            };
            if !self.has_handle_room(session) {
                return Reply::Error(Win32Error::NO_SYSTEM_RESOURCES);
            }
            let handle = self.new_handle(session, id, granted);
            return Reply::Created {
                handle,
                already_existed: true,
                fencing_token: 0,
            };
        }
        let granted = match access::new_object(kind, access) {
            Ok(granted) => granted,
            Err(code) => return Reply::Error(code),
        };
        if !self.has_handle_room(session) || self.objects.len() >= self.limits.objects_max {
            return Reply::Error(Win32Error::NO_SYSTEM_RESOURCES);
        }
        let mut fencing_token = 0;
        let data = match *params {
            CreateParams::Mutex { initial_owner } => {
                let mut mutex = MutexData {
                    owner: None,
                    recursion: 0,
                    abandoned: false,
                    fencing_token: 0,
                };
                if initial_owner {
                    fencing_token = index;
                    mutex = MutexData {
                        owner: Some((session, thread)),
                        recursion: 1,
                        abandoned: false,
                        fencing_token,
                    };
                }
                ObjectData::Mutex(mutex)
            }
            CreateParams::Event {
                manual_reset,
                initial_state,
            } => ObjectData::Event {
                manual_reset,
                signaled: initial_state,
            },
            CreateParams::Semaphore { initial, max } => ObjectData::Semaphore {
                count: initial,
                max,
            },
        };
        self.last_object_id += 1;
        let id = self.last_object_id;
        let object = Object::new(key.map(str::to_string), data);
        assert!(
            self.objects.insert(id, object).is_none(),
            "object id {id} reused"
        );
        if let Some(key) = key {
            assert!(
                self.names.insert(key.to_string(), id).is_none(),
                "name {key:?} taken twice"
            );
        }
        if fencing_token != 0 {
            self.index_owner(id, (session, thread));
        }
        let handle = self.new_handle(session, id, granted);
        Reply::Created {
            handle,
            already_existed: false,
            fencing_token,
        }
    }

    fn open(
        &mut self,
        session: SessionId,
        kind: ObjectKind,
        name: Option<&str>,
        access: u32,
    ) -> Reply {
        let key = match open_name_key(name) {
            Ok(key) => key,
            Err(code) => return Reply::Error(code),
        };
        let Some(&id) = self.names.get(key) else {
            return Reply::Error(Win32Error::FILE_NOT_FOUND);
        };
        if self.object(id).kind() != kind {
            return Reply::Error(Win32Error::INVALID_HANDLE);
        }
        let granted = match access::existing_object(kind, access) {
            Ok(granted) => granted,
            Err(code) => return Reply::Error(code),
        };
        if !self.has_handle_room(session) {
            return Reply::Error(Win32Error::NO_SYSTEM_RESOURCES);
        }
        Reply::Opened {
            handle: self.new_handle(session, id, granted),
        }
    }

    fn has_handle_room(&self, session: SessionId) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|s| s.handles.len() < self.limits.handles_per_session_max)
            && self.handles.len() < self.limits.handles_max
    }

    fn new_handle(&mut self, session: SessionId, object: ObjectId, access: u32) -> HandleId {
        self.last_handle_id += 1;
        let id = self.last_handle_id;
        self.handles.insert(
            id,
            Handle {
                session,
                object,
                access,
            },
        );
        let owner = self
            .sessions
            .get_mut(&session)
            .expect("the handle's session exists");
        owner.handles.insert(id);
        self.objects
            .get_mut(&object)
            .expect("the handle's object exists")
            .handle_count += 1;
        id
    }

    /// Closes a handle known to exist. The last handle removes the object's name; an object with
    /// neither handles nor waits is destroyed.
    fn close_handle(&mut self, id: HandleId) {
        let handle = self.handles.remove(&id).expect("the closed handle exists");
        let session = self
            .sessions
            .get_mut(&handle.session)
            .expect("the handle's session exists");
        assert!(
            session.handles.remove(&id),
            "handle {id} missing from its session"
        );
        let object = self
            .objects
            .get_mut(&handle.object)
            .expect("the handle's object exists");
        assert!(object.handle_count > 0, "object handle count underflow");
        object.handle_count -= 1;
        if object.handle_count == 0
            && let Some(name) = object.name.take()
        {
            assert_eq!(
                self.names.remove(&name),
                Some(handle.object),
                "name table out of sync"
            );
        }
        self.maybe_destroy(handle.object);
    }

    /// Destroys the object if nothing keeps it alive any more (an owned mutex whose handles
    /// all closed goes too, and leaves its owner's index).
    fn maybe_destroy(&mut self, id: ObjectId) {
        let object = self.object(id);
        if object.handle_count == 0 && object.waiters.is_empty() {
            assert!(object.name.is_none(), "destroying a named object");
            if let ObjectData::Mutex(MutexData {
                owner: Some(owner), ..
            }) = object.data
            {
                self.unindex_owner(id, owner);
            }
            self.objects.remove(&id);
        }
    }

    /// Records that `owner` now owns mutex `id`.
    fn index_owner(&mut self, id: ObjectId, (session, thread): Owner) {
        self.owned.entry(session).or_default().insert(id, thread);
    }

    /// Records that `owner` no longer owns mutex `id`.
    fn unindex_owner(&mut self, id: ObjectId, (session, _): Owner) {
        if let Some(objects) = self.owned.get_mut(&session) {
            objects.remove(&id);
            if objects.is_empty() {
                self.owned.remove(&session);
            }
        }
    }

    /// The owner index as the objects say it should be (for `restore` and `verify`).
    fn count_outcomes(&self) -> usize {
        self.sessions.values().map(|s| s.outcomes.len()).sum()
    }

    fn count_replies(&self) -> usize {
        self.sessions.values().map(|s| s.replies.len()).sum()
    }

    fn owner_index(&self) -> OrdMap<SessionId, BTreeMap<ObjectId, ThreadId>> {
        let mut index: OrdMap<SessionId, BTreeMap<ObjectId, ThreadId>> = OrdMap::new();
        for (id, object) in &self.objects {
            if let ObjectData::Mutex(MutexData {
                owner: Some((session, thread)),
                ..
            }) = object.data
            {
                index.entry(session).or_default().insert(*id, thread);
            }
        }
        index
    }

    // -----------------------------------------------------------------------------------------
    // Signaling operations.
    // -----------------------------------------------------------------------------------------

    fn release_mutex(
        &mut self,
        index: u64,
        session: SessionId,
        thread: ThreadId,
        handle: HandleId,
        resolved: &mut Vec<Resolved>,
    ) -> Result<(), Win32Error> {
        let (id, _) = self.typed_handle(session, handle, ObjectKind::Mutex, 0)?;
        let ObjectData::Mutex(m) = &mut self.object_mut(id).data else {
            unreachable!("typed_handle checked the type")
        };
        if m.owner != Some((session, thread)) {
            return Err(Win32Error::NOT_OWNER);
        }
        m.recursion -= 1;
        if m.recursion == 0 {
            m.owner = None;
            m.fencing_token = 0;
            self.unindex_owner(id, (session, thread));
            self.wake(index, &[id], resolved);
        }
        Ok(())
    }

    fn event_op(
        &mut self,
        index: u64,
        session: SessionId,
        handle: HandleId,
        resolved: &mut Vec<Resolved>,
        op: Op,
    ) -> Reply {
        let id = match self.typed_handle(session, handle, ObjectKind::Event, EVENT_MODIFY_STATE) {
            Ok((id, _)) => id,
            Err(code) => return Reply::Error(code),
        };
        match op {
            Op::Set => {
                self.set_event_signaled(id, true);
                self.wake(index, &[id], resolved);
            }
            Op::Reset => self.set_event_signaled(id, false),
            Op::Pulse => {
                // Every wait queued now was registered before this command, so waking with the
                // event momentarily set releases exactly "the waiters registered at that moment".
                self.set_event_signaled(id, true);
                self.wake(index, &[id], resolved);
                if self.objects.contains_key(&id) {
                    self.set_event_signaled(id, false);
                }
            }
        }
        Reply::Done
    }

    fn set_event_signaled(&mut self, id: ObjectId, value: bool) {
        let object = self.object_mut(id);
        object.event_epoch += 1;
        let ObjectData::Event { signaled, .. } = &mut object.data else {
            unreachable!("an event operation on a non-event")
        };
        *signaled = value;
    }

    fn release_semaphore(
        &mut self,
        index: u64,
        session: SessionId,
        handle: HandleId,
        release: i32,
        resolved: &mut Vec<Resolved>,
    ) -> Result<i32, Win32Error> {
        if release <= 0 {
            return Err(Win32Error::INVALID_PARAMETER);
        }
        let (id, _) = self.typed_handle(
            session,
            handle,
            ObjectKind::Semaphore,
            SEMAPHORE_MODIFY_STATE,
        )?;
        let ObjectData::Semaphore { count, max } = &mut self.object_mut(id).data else {
            unreachable!("typed_handle checked the type")
        };
        let previous = *count;
        match previous.checked_add(release) {
            Some(new) if new <= *max => *count = new,
            _ => return Err(Win32Error::TOO_MANY_POSTS),
        }
        self.wake(index, &[id], resolved);
        Ok(previous)
    }

    /// Abandons every mutex owned by `session` (only by `thread` of it, if given), in object id
    /// order (§4.4); returns them. Costs what the owner holds, through the owner index.
    fn abandon(&mut self, session: SessionId, thread: Option<ThreadId>) -> Vec<ObjectId> {
        let owned: Vec<(ObjectId, ThreadId)> = self
            .owned
            .get(&session)
            .map(|objects| {
                objects
                    .iter()
                    .filter(|(_, t)| thread.is_none_or(|wanted| **t == wanted))
                    .map(|(id, t)| (*id, *t))
                    .collect()
            })
            .unwrap_or_default();
        let mut abandoned = Vec::with_capacity(owned.len());
        for (id, t) in owned {
            let Some(ObjectData::Mutex(m)) = self.objects.get_mut(&id).map(|o| &mut o.data) else {
                tracing::error!(id, session, "owner index names a missing object; skipped");
                continue;
            };
            if m.owner != Some((session, t)) {
                tracing::error!(id, session, "owner index out of date; skipped");
                continue;
            }
            *m = MutexData {
                owner: None,
                recursion: 0,
                abandoned: true,
                fencing_token: 0,
            };
            self.unindex_owner(id, (session, t));
            abandoned.push(id);
        }
        abandoned
    }

    // -----------------------------------------------------------------------------------------
    // Waits.
    // -----------------------------------------------------------------------------------------

    /// The object behind a handle the session waits on (needs `SYNCHRONIZE`).
    fn wait_handle(&self, session: SessionId, handle: HandleId) -> Result<ObjectId, Win32Error> {
        let (id, access) = self.lookup(session, handle)?;
        if access & SYNCHRONIZE == 0 {
            return Err(Win32Error::ACCESS_DENIED);
        }
        Ok(id)
    }

    /// Evaluates a new wait: grants it, fails it, times it out (poll) or queues it.
    fn start_wait(&mut self, index: u64, key: WaitKey, wait: Wait) -> Reply {
        let owner = (key.0, wait.thread);
        match self.evaluate(owner, &wait.objects, wait.wait_all) {
            Eval::Fail(code) => Reply::Wait(WaitOutcome::Failed(code)),
            Eval::NotReady if wait.timeout_ms == 0 => Reply::Wait(WaitOutcome::TimedOut),
            Eval::NotReady => {
                if !self.has_wait_room(key.0, &wait.objects) {
                    return Reply::Wait(WaitOutcome::Failed(Win32Error::NO_SYSTEM_RESOURCES));
                }
                for id in distinct(&wait.objects) {
                    self.object_mut(id).waiters.push_back(key);
                }
                let session = self
                    .sessions
                    .get_mut(&key.0)
                    .expect("the waiting session exists");
                assert!(session.waits.insert(key.1), "wait {key:?} registered twice");
                assert!(
                    self.waits.insert(key, wait).is_none(),
                    "wait {key:?} registered twice"
                );
                Reply::WaitPending
            }
            ready => {
                // The grant's record counts against the cluster-wide bound (not the session's).
                if self.waits.len() + self.outcomes_total >= self.limits.waits_max {
                    return Reply::Wait(WaitOutcome::Failed(Win32Error::NO_SYSTEM_RESOURCES));
                }
                let (outcome, acquired) = self.grant(index, owner, &wait.objects, ready);
                let record = Outcome {
                    outcome,
                    thread: wait.thread,
                    acquired,
                    immediate: true,
                };
                let previous = self
                    .sessions
                    .get_mut(&key.0)
                    .expect("the waiting session exists")
                    .outcomes
                    .insert(key.1, record);
                assert!(previous.is_none(), "wait {key:?} granted twice");
                self.outcomes_total += 1;
                Reply::Wait(outcome)
            }
        }
    }

    fn has_wait_room(&self, session: SessionId, objects: &[ObjectId]) -> bool {
        let session = self
            .sessions
            .get(&session)
            .expect("the waiting session exists");
        session.waits.len() + session.outcomes.values().filter(|o| !o.immediate).count()
            < self.limits.waits_per_session_max
            && self.waits.len() + self.outcomes_total < self.limits.waits_max
            && objects
                .iter()
                .all(|id| self.object(*id).waiters.len() < self.limits.waiters_per_object_max)
    }

    /// How a wait by `owner` on `objects` could be satisfied now (§7.2, §7.3, §4.2).
    fn evaluate(&self, owner: Owner, objects: &[ObjectId], wait_all: bool) -> Eval {
        if wait_all {
            if !objects
                .iter()
                .all(|id| self.object(*id).is_signaled_for(owner))
            {
                return Eval::NotReady;
            }
            if objects
                .iter()
                .any(|id| self.object(*id).acquire_would_overflow(owner))
            {
                return Eval::Fail(Win32Error::MUTANT_LIMIT_EXCEEDED);
            }
            return Eval::All;
        }
        for (i, id) in objects.iter().enumerate() {
            let object = self.object(*id);
            if object.is_signaled_for(owner) {
                if object.acquire_would_overflow(owner) {
                    return Eval::Fail(Win32Error::MUTANT_LIMIT_EXCEEDED);
                }
                return Eval::Any(i);
            }
        }
        Eval::NotReady
    }

    /// Performs a satisfiable wait's acquisitions; returns its outcome and what it acquired
    /// (each object, and whether it was an abandoned mutex).
    fn grant(
        &mut self,
        index: u64,
        owner: Owner,
        objects: &[ObjectId],
        eval: Eval,
    ) -> (WaitOutcome, Vec<Taken>) {
        let (selected, result_index): (Vec<ObjectId>, u32) = match eval {
            Eval::Any(i) => (
                vec![objects[i]],
                u32::try_from(i).expect("at most 64 handles"),
            ),
            Eval::All => (objects.to_vec(), 0),
            Eval::NotReady | Eval::Fail(_) => unreachable!("granting an unsatisfiable wait"),
        };
        let mut abandoned = false;
        let mut fencing_token = 0;
        let mut taken = Vec::with_capacity(selected.len());
        for id in selected {
            let object = self.object_mut(id);
            let acquired = object.acquire(owner, index);
            let is_mutex = matches!(object.data, ObjectData::Mutex(_));
            if is_mutex && fencing_token == 0 {
                fencing_token = acquired.fencing_token;
            }
            abandoned |= acquired.abandoned;
            let stamp = match object.data {
                ObjectData::Mutex(_) => acquired.fencing_token,
                _ => object.event_epoch,
            };
            taken.push(Taken {
                object: id,
                abandoned: acquired.abandoned,
                stamp,
            });
            if is_mutex {
                self.index_owner(id, owner);
            }
        }
        let outcome = if abandoned {
            WaitOutcome::Abandoned {
                index: result_index,
                fencing_token,
            }
        } else {
            WaitOutcome::Signaled {
                index: result_index,
                fencing_token,
            }
        };
        (outcome, taken)
    }

    /// Grants every queued wait that is satisfiable now, scanning the queues of `start` in order,
    /// each oldest first.
    fn wake(&mut self, index: u64, start: &[ObjectId], resolved: &mut Vec<Resolved>) {
        for &id in start {
            let mut position = 0;
            // The object disappears if a grant released the last thing keeping it alive.
            while let Some(&key) = self.objects.get(&id).and_then(|o| o.waiters.get(position)) {
                let wait = self.waits.get(&key).expect("a queued wait is registered");
                let owner = (key.0, wait.thread);
                match self.evaluate(owner, &wait.objects, wait.wait_all) {
                    Eval::NotReady => position += 1,
                    Eval::Fail(code) => self.finish_wait(key, WaitOutcome::Failed(code), resolved),
                    ready => {
                        let objects = wait.objects.clone();
                        let (outcome, acquired) = self.grant(index, owner, &objects, ready);
                        self.finish_wait_with(key, outcome, acquired, resolved);
                    }
                }
            }
        }
    }

    /// Ends a pending wait with `outcome` (acquiring nothing).
    fn finish_wait(&mut self, key: WaitKey, outcome: WaitOutcome, resolved: &mut Vec<Resolved>) {
        self.finish_wait_with(key, outcome, Vec::new(), resolved);
    }

    /// Ends a pending wait with `outcome`: unqueues it, releases the objects it kept alive,
    /// records the outcome (and what it acquired) in the session until the client acknowledges
    /// it, and reports it.
    fn finish_wait_with(
        &mut self,
        key: WaitKey,
        outcome: WaitOutcome,
        acquired: Vec<Taken>,
        resolved: &mut Vec<Resolved>,
    ) {
        let wait = self
            .waits
            .remove(&key)
            .expect("the finished wait is registered");
        for id in distinct(&wait.objects) {
            let object = self.object_mut(id);
            let before = object.waiters.len();
            object.waiters.retain(|k| *k != key);
            assert_eq!(
                object.waiters.len() + 1,
                before,
                "wait {key:?} queued once per object"
            );
            self.maybe_destroy(id);
        }
        let session = self
            .sessions
            .get_mut(&key.0)
            .expect("the waiting session exists");
        assert!(
            session.waits.remove(&key.1),
            "wait {key:?} missing from its session"
        );
        let record = Outcome {
            outcome,
            thread: wait.thread,
            acquired,
            immediate: false,
        };
        assert!(
            session.outcomes.insert(key.1, record).is_none(),
            "wait {key:?} ended twice"
        );
        self.outcomes_total += 1;
        resolved.push(Resolved {
            session: key.0,
            seq: key.1,
            outcome,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn signal_and_wait(
        &mut self,
        index: u64,
        key: WaitKey,
        now: u64,
        thread: ThreadId,
        signal: HandleId,
        wait: HandleId,
        timeout_ms: u32,
        resolved: &mut Vec<Resolved>,
    ) -> Result<Reply, Win32Error> {
        let session = key.0;
        let (signal_id, signal_access) = self.lookup(session, signal)?;
        let kind = self.object(signal_id).kind();
        let needed = match kind {
            ObjectKind::Mutex => 0,
            ObjectKind::Event => EVENT_MODIFY_STATE,
            ObjectKind::Semaphore => SEMAPHORE_MODIFY_STATE,
        };
        if signal_access & needed != needed {
            return Err(Win32Error::ACCESS_DENIED);
        }
        let wait_id = self.wait_handle(session, wait)?;
        if timeout_ms != 0 && !self.has_wait_room(session, &[wait_id]) {
            return Err(Win32Error::NO_SYSTEM_RESOURCES);
        }
        // Refused before signalling: a poll granted at once needs a record the cluster-wide
        // bound may not allow, and a refusal must change nothing.
        if self.waits.len() + self.outcomes_total >= self.limits.waits_max {
            return Err(Win32Error::NO_SYSTEM_RESOURCES);
        }
        match kind {
            ObjectKind::Mutex => self.release_mutex(index, session, thread, signal, resolved)?,
            ObjectKind::Event => {
                self.set_event_signaled(signal_id, true);
                self.wake(index, &[signal_id], resolved);
            }
            ObjectKind::Semaphore => {
                self.release_semaphore(index, session, signal, 1, resolved)?;
            }
        }
        let wait = Wait {
            thread,
            objects: vec![wait_id],
            wait_all: false,
            registered_unix_ms: now,
            registered_watched_ms: self.watched_ms,
            timeout_ms,
        };
        Ok(self.start_wait(index, key, wait))
    }

    // -----------------------------------------------------------------------------------------
    // Lookups and invariants.
    // -----------------------------------------------------------------------------------------

    /// The object and granted access behind one of the session's handles.
    fn lookup(&self, session: SessionId, handle: HandleId) -> Result<(ObjectId, u32), Win32Error> {
        match self.handles.get(&handle) {
            Some(h) if h.session == session => Ok((h.object, h.access)),
            _ => Err(Win32Error::INVALID_HANDLE),
        }
    }

    /// As [`Self::lookup`], also requiring the object's type (else 6) and `rights` (else 5).
    fn typed_handle(
        &self,
        session: SessionId,
        handle: HandleId,
        kind: ObjectKind,
        rights: u32,
    ) -> Result<(ObjectId, u32), Win32Error> {
        let (id, access) = self.lookup(session, handle)?;
        if self.object(id).kind() != kind {
            return Err(Win32Error::INVALID_HANDLE);
        }
        if access & rights != rights {
            return Err(Win32Error::ACCESS_DENIED);
        }
        Ok((id, access))
    }

    fn object(&self, id: ObjectId) -> &Object {
        self.objects.get(&id).expect("a referenced object exists")
    }

    fn object_mut(&mut self, id: ObjectId) -> &mut Object {
        self.objects
            .get_mut(&id)
            .expect("a referenced object exists")
    }

    /// Checks every cross-structure invariant; `Err` describes the first violation.
    fn verify(&self) -> Result<(), String> {
        let limits = &self.limits;
        if self.sessions.len() > limits.sessions_max || self.objects.len() > limits.objects_max {
            return Err("more sessions or objects than the limits allow".into());
        }
        for (id, session) in &self.sessions {
            if *id > self.applied_index {
                return Err(format!("session {id} from the future"));
            }
            if session.heard_at_watched_ms > self.watched_ms {
                return Err(format!(
                    "session {id} heard in the future of the watched time"
                ));
            }
            if session.handles.len() > limits.handles_per_session_max
                || session.waits.len() > limits.waits_per_session_max
            {
                return Err(format!("session {id} is over its limits"));
            }
            for handle in &session.handles {
                if self.handles.get(handle).is_none_or(|h| h.session != *id) {
                    return Err(format!("session {id} lists foreign handle {handle}"));
                }
            }
            for seq in &session.waits {
                if !self.waits.contains_key(&(*id, *seq)) {
                    return Err(format!("session {id} lists unknown wait {seq}"));
                }
                if session.outcomes.contains_key(seq) {
                    return Err(format!("pending wait {id}/{seq} also has an outcome"));
                }
            }
            for (seq, outcome) in &session.outcomes {
                if outcome.immediate && !session.replies.contains_key(seq) {
                    return Err(format!("immediate grant {id}/{seq} outlived its reply"));
                }
            }
            let later = session.outcomes.values().filter(|o| !o.immediate).count();
            if session.waits.len() + later > limits.waits_per_session_max {
                return Err(format!("session {id} keeps too many wait outcomes"));
            }
        }
        let mut handle_counts: BTreeMap<ObjectId, usize> = BTreeMap::new();
        for (id, handle) in &self.handles {
            if *id > self.last_handle_id {
                return Err(format!("handle {id} above the handle counter"));
            }
            let in_session = self
                .sessions
                .get(&handle.session)
                .is_some_and(|s| s.handles.contains(id));
            if !in_session {
                return Err(format!(
                    "handle {id} not listed by session {}",
                    handle.session
                ));
            }
            if !self.objects.contains_key(&handle.object) {
                return Err(format!("handle {id} refers to a dead object"));
            }
            *handle_counts.entry(handle.object).or_default() += 1;
        }
        for (name, id) in &self.names {
            if self
                .objects
                .get(id)
                .is_none_or(|o| o.name.as_deref() != Some(name))
            {
                return Err(format!("name {name:?} points at the wrong object"));
            }
        }
        let mut queued: Vec<(SessionId, Seq, ObjectId)> = Vec::new();
        for (id, object) in &self.objects {
            if *id > self.last_object_id {
                return Err(format!("object {id} above the object counter"));
            }
            object
                .verify()
                .map_err(|err| format!("object {id}: {err}"))?;
            if handle_counts.get(id).copied().unwrap_or(0) != object.handle_count {
                return Err(format!("object {id} handle count is wrong"));
            }
            if let Some(name) = &object.name
                && self.names.get(name) != Some(id)
            {
                return Err(format!("object {id} name {name:?} not in the name table"));
            }
            if let ObjectData::Mutex(MutexData {
                owner: Some((session, _)),
                fencing_token,
                ..
            }) = &object.data
            {
                if !self.sessions.contains_key(session) {
                    return Err(format!("mutex {id} owned by dead session {session}"));
                }
                if *fencing_token > self.applied_index {
                    return Err(format!("mutex {id} token from the future"));
                }
            }
            if object.waiters.len() > limits.waiters_per_object_max {
                return Err(format!("object {id} has too many waiters"));
            }
            queued.extend(
                object
                    .waiters
                    .iter()
                    .map(|&(session, seq)| (session, seq, *id)),
            );
        }
        // Every queue entry, sorted: each wait must be queued exactly once on each of its
        // objects and nowhere else (checked with the waits below), in time linear in the
        // entries rather than in entries times queue lengths.
        queued.sort_unstable();
        if let Some(pair) = queued.windows(2).find(|pair| pair[0] == pair[1]) {
            let (session, seq, id) = pair[0];
            return Err(format!("wait {:?} queued twice on {id}", (session, seq)));
        }
        let mut expected_entries = 0usize;
        if self.owned != self.owner_index() {
            return Err("the owner index disagrees with the mutexes".into());
        }
        if self.outcomes_total != self.count_outcomes()
            || self.replies_total != self.count_replies()
        {
            return Err("the count of outcomes or replies is wrong".into());
        }
        // The oldest request in flight of each session is admitted beyond the reply bound.
        if self.handles.len() > limits.handles_max
            || self.waits.len() + self.outcomes_total > limits.waits_max
            || self.replies_total > limits.replies_max + self.sessions.len()
        {
            return Err("more handles, waits or replies than the limits allow".into());
        }
        for (key, wait) in &self.waits {
            if !self
                .sessions
                .get(&key.0)
                .is_some_and(|s| s.waits.contains(&key.1))
            {
                return Err(format!("wait {key:?} not listed by its session"));
            }
            if wait.objects.is_empty() || wait.objects.len() > MAXIMUM_WAIT_OBJECTS as usize {
                return Err(format!("wait {key:?} names {} objects", wait.objects.len()));
            }
            for id in distinct(&wait.objects) {
                if !self.objects.contains_key(&id) {
                    return Err(format!("wait {key:?} on dead object {id}"));
                }
                if queued.binary_search(&(key.0, key.1, id)).is_err() {
                    return Err(format!("wait {key:?} not queued on {id}"));
                }
                expected_entries += 1;
            }
            if wait.wait_all && distinct(&wait.objects).len() != wait.objects.len() {
                return Err(format!("wait-all {key:?} names an object twice"));
            }
            let owner = (key.0, wait.thread);
            if !matches!(
                self.evaluate(owner, &wait.objects, wait.wait_all),
                Eval::NotReady
            ) {
                return Err(format!("pending wait {key:?} is satisfiable"));
            }
        }
        if expected_entries != queued.len() {
            return Err("an object queues a wait that is not waiting on it".into());
        }
        Ok(())
    }
}

/// An event operation.
#[derive(Debug, Clone, Copy)]
enum Op {
    Set,
    Reset,
    Pulse,
}

/// The distinct objects of a wait, in first-appearance order.
fn distinct(objects: &[ObjectId]) -> Vec<ObjectId> {
    let mut seen = BTreeSet::new();
    objects
        .iter()
        .copied()
        .filter(|id| seen.insert(*id))
        .collect()
}

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

#[cfg(test)]
mod fuzz;
mod object;
mod session;
mod tenancy;
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
use wait::{Wait, WaitKey};

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

/// Longest principal an `OpenSessionAs` may carry (a certificate subject); longer: 87. A
/// principal is known only while it has a session, so the principal table is at most 10 MiB.
pub const PRINCIPAL_MAX_BYTES: usize = 1024;
/// Decodes a map of a snapshot entry by entry. imbl's own `Deserialize` reserves capacity for
/// the length the bytes claim, so one corrupt length (a damaged snapshot file, a forged
/// `MsgSnapshot`) made the node abort on a multi-terabyte allocation; this grows with the
/// entries actually present, and a short input fails with an error.
fn cautious_map<'de, D, K, V>(deserializer: D) -> Result<OrdMap<K, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    K: Deserialize<'de> + Ord + Clone,
    V: Deserialize<'de> + Clone,
{
    struct Entries<K, V>(std::marker::PhantomData<(K, V)>);
    impl<'de, K, V> serde::de::Visitor<'de> for Entries<K, V>
    where
        K: Deserialize<'de> + Ord + Clone,
        V: Deserialize<'de> + Clone,
    {
        type Value = OrdMap<K, V>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut entries = OrdMap::new();
            while let Some((key, value)) = map.next_entry()? {
                entries.insert(key, value);
            }
            Ok(entries)
        }
    }
    deserializer.deserialize_map(Entries(std::marker::PhantomData))
}

/// The first byte of every snapshot. Format 6 adds the per-principal attribution after the
/// namespace; [`Namespace::restore`] also reads format 5 (without it) and refuses any other.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 6;

/// The format before per-principal quotas, still read.
const SNAPSHOT_FORMAT_VERSION_5: u8 = 5;
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
    #[error(
        "namespace snapshot has format version {0}, expected {SNAPSHOT_FORMAT_VERSION_5} or \
         {SNAPSHOT_FORMAT_VERSION}"
    )]
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

/// One named object, as [`Namespace::list_objects`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSummary {
    /// Its namespace key (the name without `Global\`).
    pub name: String,
    /// Its type and state.
    pub state: ObjectState,
    /// Open handles to it.
    pub handles: usize,
    /// Waits queued on it.
    pub waiters: usize,
}

/// The most mutex names one session summary lists ([`SessionSummary::owned_count`] counts
/// them all).
pub const OWNED_NAMES_LISTED_MAX: usize = 32;
/// A page of [`Namespace::list_sessions`] ends once its names reach this many bytes.
pub const SESSION_PAGE_BYTES_MAX: usize = 1 << 20;

/// One session, as [`Namespace::list_sessions`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    /// Its summary.
    pub info: SessionInfo,
    /// Names of the first [`OWNED_NAMES_LISTED_MAX`] mutexes it owns in name order (unnamed
    /// ones left out).
    pub owned_mutexes: Vec<String>,
    /// How many mutexes it owns, named or not.
    pub owned_count: usize,
}

/// What [`Namespace::counts`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Open sessions.
    pub sessions: usize,
    /// Live objects (named and unnamed).
    pub objects: usize,
    /// Open handles, all sessions together.
    pub handles: usize,
    /// Pending (queued) waits.
    pub waits: usize,
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
    #[serde(deserialize_with = "cautious_map")]
    sessions: OrdMap<SessionId, Session>,
    /// Handles by id.
    #[serde(deserialize_with = "cautious_map")]
    handles: OrdMap<HandleId, Handle>,
    /// Objects by id.
    #[serde(deserialize_with = "cautious_map")]
    objects: OrdMap<ObjectId, Object>,
    /// Name (namespace key) → object: an index over `objects` (not part of snapshots, where it
    /// would double the largest part of the largest state; rebuilt by `restore`).
    #[serde(skip)]
    names: OrdMap<String, ObjectId>,
    /// Pending waits by `(session, seq)`.
    #[serde(deserialize_with = "cautious_map")]
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
    /// Principal and quota of the sessions opened with `OpenSessionAs` (snapshots carry it
    /// after the rest: `tenancy::TenancyImage`).
    #[serde(skip)]
    tenants: OrdMap<SessionId, tenancy::Tenancy>,
    /// The session of a principal that created each object it still counts (an index over
    /// `tenants`: derived, rebuilt by `restore`).
    #[serde(skip)]
    object_tenants: OrdMap<ObjectId, SessionId>,
    /// The principals that hold something, by number (same).
    #[serde(skip)]
    principals: OrdMap<tenancy::PrincipalId, String>,
    /// The last principal number handed out (same).
    #[serde(skip)]
    last_principal_id: tenancy::PrincipalId,
    /// `principals` the other way round: derived, rebuilt by `restore`.
    #[serde(skip)]
    principal_ids: OrdMap<String, tenancy::PrincipalId>,
    /// What each principal holds now: derived, recounted by `restore`.
    #[serde(skip)]
    usage: OrdMap<tenancy::PrincipalId, tenancy::Usage>,
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
            tenants: OrdMap::new(),
            object_tenants: OrdMap::new(),
            principals: OrdMap::new(),
            last_principal_id: 0,
            principal_ids: OrdMap::new(),
            usage: OrdMap::new(),
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
                secret,
                now_unix_ms,
                client_name,
            } => self.open_session(index, *ttl_ms, *secret, *now_unix_ms, client_name),
            Command::OpenSessionAs {
                ttl_ms,
                secret,
                now_unix_ms,
                client_name,
                principal,
                quota,
            } => {
                if client_name.len() > CLIENT_NAME_MAX_BYTES
                    || principal.len() > PRINCIPAL_MAX_BYTES
                {
                    Reply::Error(Win32Error::INVALID_PARAMETER)
                } else if !self.can_number(principal)
                    || self.usage_of(principal).sessions >= quota.sessions
                {
                    Reply::Error(Win32Error::NO_SYSTEM_RESOURCES)
                } else {
                    let reply =
                        self.open_session(index, *ttl_ms, *secret, *now_unix_ms, client_name);
                    if let Reply::SessionOpened { session } = reply {
                        self.tenant_opened(session, principal, *quota);
                    }
                    reply
                }
            }
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
                secret,
                seq,
                ack_below,
                waits_done,
                now_unix_ms,
                request,
            } => self.client(
                index,
                (*session, secret),
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

    /// Up to `limit` named objects whose namespace key starts with `prefix` and sorts after
    /// `after` (exclusive; `None` from the start), in key order; and whether more follow.
    pub fn list_objects(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<ObjectSummary>, bool) {
        use std::ops::Bound;
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after.to_owned()),
            _ => Bound::Included(prefix.to_owned()),
        };
        let mut matching = self
            .names
            .range((start, Bound::Unbounded))
            .take_while(|(name, _)| name.starts_with(prefix));
        let objects: Vec<ObjectSummary> = matching
            .by_ref()
            .take(limit)
            .map(|(name, id)| {
                let object = self.object(*id);
                ObjectSummary {
                    name: name.clone(),
                    state: object.state(),
                    handles: object.handle_count,
                    waiters: object.waiters.len(),
                }
            })
            .collect();
        let more = matching.next().is_some();
        (objects, more)
    }

    /// Up to `limit` sessions with an id above `after`, in id order, each with the names of up
    /// to [`OWNED_NAMES_LISTED_MAX`] mutexes it owns; and whether more follow. A page also ends
    /// once its names add up to [`SESSION_PAGE_BYTES_MAX`] (after at least one session), so that
    /// a reply stays far below a gRPC message limit whatever the sessions hold.
    pub fn list_sessions(&self, after: SessionId, limit: usize) -> (Vec<SessionSummary>, bool) {
        use std::ops::Bound;
        let mut sessions = self
            .sessions
            .range((Bound::Excluded(after), Bound::Unbounded))
            .peekable();
        let mut page = Vec::new();
        let mut bytes = 0;
        while page.len() < limit && (page.is_empty() || bytes < SESSION_PAGE_BYTES_MAX) {
            let Some((id, session)) = sessions.next() else {
                break;
            };
            let owned = self.owned.get(id);
            let mut owned_mutexes: Vec<String> = owned
                .into_iter()
                .flat_map(|owned| owned.keys())
                .filter_map(|object| self.object(*object).name.clone())
                .collect();
            owned_mutexes.sort();
            owned_mutexes.truncate(OWNED_NAMES_LISTED_MAX);
            let info = session.info(*id, self.watched_ms);
            bytes += info.client_name.len() + owned_mutexes.iter().map(String::len).sum::<usize>();
            page.push(SessionSummary {
                info,
                owned_count: owned.map_or(0, BTreeMap::len),
                owned_mutexes,
            });
        }
        let more = sessions.peek().is_some();
        (page, more)
    }

    /// One session's summary.
    pub fn session(&self, id: SessionId) -> Option<SessionInfo> {
        self.sessions.get(&id).map(|s| s.info(id, self.watched_ms))
    }

    /// How much the namespace holds (for metrics): O(1).
    pub fn counts(&self) -> Counts {
        Counts {
            sessions: self.sessions.len(),
            objects: self.objects.len(),
            handles: self.handles.len(),
            waits: self.waits.len(),
        }
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
        // Format 5 while nothing was ever attributed to a principal, so that a build that
        // predates quotas can still read it.
        let attributed = self.last_principal_id != 0;
        let version = if attributed {
            SNAPSHOT_FORMAT_VERSION
        } else {
            SNAPSHOT_FORMAT_VERSION_5
        };
        let mut bytes = vec![version];
        let encoded = postcard::to_stdvec(self).expect("encoding to a Vec cannot fail");
        bytes.extend_from_slice(&encoded);
        if attributed {
            let image = tenancy::TenancyImage {
                principals: self.principals.clone(),
                last_principal_id: self.last_principal_id,
                tenants: self.tenants.clone(),
            };
            let encoded = postcard::to_stdvec(&image).expect("encoding to a Vec cannot fail");
            bytes.extend_from_slice(&encoded);
        }
        bytes
    }

    /// Decodes a snapshot made by [`Namespace::snapshot`] and checks every invariant.
    ///
    /// # Errors
    ///
    /// [`NamespaceError`] for bytes that are not a consistent snapshot; never panics.
    pub fn restore(bytes: &[u8]) -> Result<Namespace, NamespaceError> {
        let (&version, rest) = bytes.split_first().ok_or(NamespaceError::Empty)?;
        if version != SNAPSHOT_FORMAT_VERSION && version != SNAPSHOT_FORMAT_VERSION_5 {
            return Err(NamespaceError::Version(version));
        }
        let (mut namespace, mut trailing): (Namespace, _) = postcard::take_from_bytes(rest)?;
        if version == SNAPSHOT_FORMAT_VERSION {
            let (image, rest): (tenancy::TenancyImage, _) = postcard::take_from_bytes(trailing)?;
            namespace.tenants = image.tenants;
            namespace.principal_ids = image
                .principals
                .iter()
                .map(|(id, name)| (name.clone(), *id))
                .collect();
            namespace.principals = image.principals;
            namespace.last_principal_id = image.last_principal_id;
            trailing = rest;
        }
        if !trailing.is_empty() {
            return Err(NamespaceError::TrailingBytes(trailing.len()));
        }
        namespace.object_tenants = namespace.object_tenant_index();
        namespace.usage = namespace.count_usage().ok_or_else(|| {
            NamespaceError::Inconsistent("per-principal counts do not fit".into())
        })?;
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
        self.verify_tenancy()?;
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

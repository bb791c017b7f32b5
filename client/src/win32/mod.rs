//! The blocking Win32 facade: `CreateMutexA`, `WaitForSingleObject`, `GetLastError`, ...
//! with Win32 names, signatures and semantics, served by the dlock cluster.
//!
//! ```no_run
//! use dlock::win32::*;
//!
//! let h = CreateMutexA(None, FALSE, Some("NameOfMutexObject"));
//! if h == NULL {
//!     eprintln!("CreateMutex error: {}", GetLastError());
//! } else {
//!     let opened_existing = GetLastError() == ERROR_ALREADY_EXISTS;
//!     match WaitForSingleObject(h, 5000) {
//!         WAIT_OBJECT_0 | WAIT_ABANDONED => {
//!             // ... we own the mutex ...
//!             ReleaseMutex(h);
//!         }
//!         WAIT_TIMEOUT => eprintln!("busy"),
//!         _ => eprintln!("wait failed: {}", GetLastError()),
//!     }
//!     CloseHandle(h);
//!     let _ = opened_existing;
//! }
//! ```
//!
//! # Configuration (environment, read once at the first call)
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `DLOCK_ENDPOINTS` | comma-separated cluster nodes, each `http://host:port` or `host:port` | `127.0.0.1:7700` (dlockd's default client address) |
//! | `DLOCK_SESSION_TTL_MS` | the session TTL asked for, in milliseconds (the server clamps it) | `10000` |
//! | `DLOCK_REQUEST_TIMEOUT_MS` | how long a call keeps retrying across nodes before failing with `ERROR_NETWORK_UNREACHABLE` | `10000` |
//!
//! A program can give the same settings as a value instead, before its first facade call:
//! [`configure`] with a [`FacadeConfig`]. The `Local\` namespace has its own settings
//! (`DLOCK_LOCAL_*`, or `dlock_local::configure`).
//!
//! The facade connects lazily at the first call that needs the cluster, and opens one session
//! for the process.
//!
//! # Semantics
//!
//! * **Handles** are process-wide and usable from any thread. Their values are small
//!   multiples of 4, never 0 (NULL), and not reused. `bInheritHandle` and security
//!   descriptors are accepted and ignored.
//! * **The last error is per OS thread**, and set exactly when Win32 sets it: creates always
//!   set it (0 new, 183 `ERROR_ALREADY_EXISTS`, or the failure code); every other call sets it
//!   only when it fails. Successful waits and `WAIT_TIMEOUT` leave it untouched.
//! * **Mutex ownership belongs to the calling OS thread.** Each thread gets a process-unique
//!   id on first use. When a thread that waited (or created a mutex owned) exits, the facade
//!   reports it to the cluster (blocking the exit for at most 2 s; the report keeps being
//!   retried in the background for as long as the session lives): the mutexes it still owns
//!   become abandoned, as on Windows. When the process dies, its session expires after the
//!   TTL and its mutexes become abandoned.
//! * **`bAlertable`** is accepted and ignored: there are no APCs, so `WAIT_IO_COMPLETION`
//!   never happens.
//! * Names are cut at the first NUL, limited to 260 UTF-16 units in both `A` and `W` forms
//!   (else `ERROR_FILENAME_EXCED_RANGE`); invalid UTF-16 in a `W` name gives
//!   `ERROR_INVALID_NAME`. Everything else about names is validated by the server.
//!
//! # Cluster trouble: the dlock-specific error codes
//!
//! | situation | result | `GetLastError()` |
//! |---|---|---|
//! | no node answered within `DLOCK_REQUEST_TIMEOUT_MS` | NULL / FALSE / `WAIT_FAILED` | [`ERROR_NETWORK_UNREACHABLE`] (1231) |
//! | the cluster stayed overloaded for the request timeout | NULL / FALSE / `WAIT_FAILED` | [`ERROR_NO_SYSTEM_RESOURCES`] (1450) |
//! | a handle of a session that was lost (its value is still known) | FALSE / `WAIT_FAILED` | [`ERROR_INVALID_HANDLE`] (6) |
//! | the session was lost *during* the call (e.g. a wait in progress) | FALSE / `WAIT_FAILED` | [`ERROR_CONNECTION_ABORTED`] (1236) |
//! | a call from inside a tokio runtime | NULL / FALSE / `WAIT_FAILED` | [`ERROR_NOT_SUPPORTED`] (50) |
//! | `DLOCK_ENDPOINTS` unusable | NULL / FALSE / `WAIT_FAILED` | [`ERROR_BAD_NET_NAME`] (67) |
//! | the server broke the protocol (version mismatch, bug) | NULL / FALSE / `WAIT_FAILED` | [`ERROR_INTERNAL_ERROR`] (1359) |
//!
//! A lost session is replaced transparently: the next create or open opens a new session (a
//! create that finds its session lost mid-call is retried once on a new session). Handles of
//! the old session then fail with `ERROR_INVALID_HANDLE`, including `CloseHandle`, which also
//! forgets the value. Calls never hang forever, except an `INFINITE` wait while the cluster is
//! reachable (the wait ends with `ERROR_CONNECTION_ABORTED` if the session is lost).
//!
//! **Outcome unknown.** 1231 and 1450 from a call that changes state mean the request may or
//! may not have been applied. From a wait they mean "not acquired": the facade cancels the wait
//! in the background, and a grant that raced the cancellation is given back (if the cluster
//! stays unreachable, the session expires and abandons what it held). A blocked wait never
//! holds back the other threads of the process: it is registered once and its outcome awaited
//! with repeatable reads, across any number of failovers.
//!
//! # Restrictions
//!
//! * Do not call the facade from inside a tokio runtime (an async task or a runtime worker
//!   thread): the calls block. They fail with `ERROR_NOT_SUPPORTED` there; use the async API
//!   ([`crate::Session`]) instead. The facade runs its own runtime (2 worker threads named
//!   `dlock-worker`).
//! * A wait (or `SignalObjectAndWait`) cannot mix `Local\` handles with cluster handles: it
//!   fails with `ERROR_INVALID_PARAMETER` (87), because one wait cannot block in the kernel on
//!   shared memory and on a server's reply at once. Wait on each side from its own thread.
//!
//! # `Local\` names: the host-local backend
//!
//! A name starting with `Local\` (case-sensitive) names a **host-local** object: it lives in
//! a shared-memory segment on this machine, is shared by the processes of this host that use
//! the same namespace, and never involves dlockd (no cluster, session or network is needed).
//! Every other name, `Global\X` and plain `X` alike, is cluster-wide. `Local\X` and `X` are
//! different objects. Unnamed objects belong to the cluster.
//!
//! Local objects have the cluster objects' semantics (create-or-open, 183, cross-type 6,
//! access rights, recursive per-thread mutex ownership, 288, 298, wait-any and atomic
//! wait-all, `PulseEvent`), with these differences: a mutex whose owning thread exits, or
//! whose process dies, is abandoned **at once** (the kernel's robust futex list reports it; no
//! TTL); waiters are not served in FIFO order; a fencing token counts the acquisitions of
//! that mutex. An uncontended acquire and release makes no system call.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `DLOCK_LOCAL_DIR` | directory of the segment file (created if missing) | `/dev/shm` |
//! | `DLOCK_LOCAL_NAMESPACE` | namespace name (`[A-Za-z0-9._-]`, 1-64): processes meet only within one | `u<uid>` |
//! | `DLOCK_LOCAL_MODE` | octal mode of a new segment file; `660` shares it with the group | `600` |
//!
//! The segment is `DLOCK_LOCAL_DIR/dlock-local-<namespace>`. Its failures:
//!
//! | situation | result | `GetLastError()` |
//! |---|---|---|
//! | the segment file has another layout version | NULL | `ERROR_REVISION_MISMATCH` (1306) |
//! | the segment file's header is corrupt (magic, size, checksum) | NULL | `ERROR_FILE_CORRUPT` (1392) |
//! | the directory or file is not accessible | NULL | [`ERROR_ACCESS_DENIED`] (5) |
//! | a table of the segment is full (4096 objects, 65536 handles, 1024 blocked waits, 256 processes) | NULL / `WAIT_FAILED` | [`ERROR_NO_SYSTEM_RESOURCES`] (1450) |
//! | the platform is not glibc/Linux | NULL | [`ERROR_NOT_SUPPORTED`] (50) |
//!
//! Each is also logged (`tracing`, target `dlock::local`) with the file's path and the reason.
#![allow(non_snake_case, non_camel_case_types)]

mod global;
mod handles;
mod thread;

use dlock_proto::vocab::Win32Error;
use std::future::Future;

use crate::local::{self, LocalObj, Segment};
use crate::route::{Route, route};
use crate::{CreateParams, Error, ObjectKind, Session, Timeout};
use dlock_proto::vocab::names;
use global::{Entry, HANDLES, Slot, block_on, resolve};
pub use global::{FacadeConfig, configure};

/// A handle value; 0 is NULL.
pub type HANDLE = isize;
/// A 32-bit unsigned value.
pub type DWORD = dlock_proto::vocab::DWORD;
/// A Win32 boolean: 0 is FALSE, anything else TRUE.
pub type BOOL = i32;
/// A 32-bit signed value.
pub type LONG = i32;

/// The NULL handle.
pub const NULL: HANDLE = 0;
/// BOOL true.
pub const TRUE: BOOL = 1;
/// BOOL false.
pub const FALSE: BOOL = 0;

/// Security attributes: accepted for signature compatibility; the descriptor is ignored, and so
/// is `bInheritHandle` (there are no child processes to inherit dlock handles).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct SECURITY_ATTRIBUTES {
    /// Size of the structure (not checked).
    pub nLength: DWORD,
    /// Address of a security descriptor (ignored).
    pub lpSecurityDescriptor: usize,
    /// Whether the handle is inheritable (ignored).
    pub bInheritHandle: BOOL,
}

// ---- The Win32 vocabulary (docs/win32-semantics.md §1), defined once in dlock-proto ----

pub use dlock_proto::vocab::{
    ACCESS_SYSTEM_SECURITY, CREATE_EVENT_INITIAL_SET, CREATE_EVENT_MANUAL_RESET,
    CREATE_MUTEX_INITIAL_OWNER, DELETE, ERROR_ACCESS_DENIED, ERROR_ALREADY_EXISTS,
    ERROR_BAD_NET_NAME, ERROR_BAD_PATHNAME, ERROR_CONNECTION_ABORTED, ERROR_FILE_CORRUPT,
    ERROR_FILE_NOT_FOUND, ERROR_FILENAME_EXCED_RANGE, ERROR_INTERNAL_ERROR, ERROR_INVALID_HANDLE,
    ERROR_INVALID_NAME, ERROR_INVALID_PARAMETER, ERROR_MUTANT_LIMIT_EXCEEDED,
    ERROR_NETWORK_UNREACHABLE, ERROR_NO_SYSTEM_RESOURCES, ERROR_NOT_OWNER, ERROR_NOT_SUPPORTED,
    ERROR_PATH_NOT_FOUND, ERROR_PRIVILEGE_NOT_HELD, ERROR_REVISION_MISMATCH, ERROR_SUCCESS,
    ERROR_TOO_MANY_POSTS, EVENT_ALL_ACCESS, EVENT_MODIFY_STATE, EVENT_QUERY_STATE, GENERIC_ALL,
    GENERIC_EXECUTE, GENERIC_READ, GENERIC_WRITE, INFINITE, MAX_PATH, MAXIMUM_ALLOWED,
    MAXIMUM_WAIT_OBJECTS, MUTANT_ALL_ACCESS, MUTANT_QUERY_STATE, MUTEX_ALL_ACCESS,
    MUTEX_MODIFY_STATE, READ_CONTROL, SEMAPHORE_ALL_ACCESS, SEMAPHORE_MODIFY_STATE,
    SEMAPHORE_QUERY_STATE, STANDARD_RIGHTS_EXECUTE, STANDARD_RIGHTS_READ, STANDARD_RIGHTS_REQUIRED,
    STANDARD_RIGHTS_WRITE, SYNCHRONIZE, WAIT_ABANDONED, WAIT_ABANDONED_0, WAIT_FAILED,
    WAIT_IO_COMPLETION, WAIT_OBJECT_0, WAIT_TIMEOUT, WRITE_DAC, WRITE_OWNER,
};

// ---- Last error ----

/// The calling thread's last-error code.
///
/// ```
/// dlock::win32::SetLastError(0xDEADBEEF);
/// assert_eq!(dlock::win32::GetLastError(), 0xDEADBEEF);
/// ```
pub fn GetLastError() -> DWORD {
    thread::last_error()
}

/// Sets the calling thread's last-error code.
pub fn SetLastError(code: DWORD) {
    thread::set_last_error(code);
}

/// Sets the last error and returns `value` (the failure value of the caller).
fn fail<T>(code: impl Into<DWORD>, value: T) -> T {
    thread::set_last_error(code.into());
    value
}

fn is_true(b: BOOL) -> bool {
    b != FALSE
}

// ---- Create and open ----

/// The shared body of every create: name checks, then create-or-open on the current session.
fn create(
    kind: ObjectKind,
    name: Result<Option<String>, Win32Error>,
    flags: u32,
    access: u32,
    initial_count: i32,
    maximum_count: i32,
) -> HANDLE {
    let name = match name {
        Ok(name) => name,
        Err(code) => return fail(code, NULL),
    };
    if !HANDLES.lock().unwrap_or_else(|e| e.into_inner()).has_room() {
        return fail(ERROR_NO_SYSTEM_RESOURCES, NULL);
    }
    let params = CreateParams::from_flags(kind, flags, initial_count, maximum_count);
    if let Ok(Route::Local(key)) = route(name.as_deref()) {
        let created = local::namespace().and_then(|seg| local::create(seg, key, &params, access));
        return match created {
            Ok((obj, existed)) => {
                let handle = insert_slot(Slot::Local(obj));
                thread::set_last_error(if existed {
                    ERROR_ALREADY_EXISTS
                } else {
                    ERROR_SUCCESS
                });
                handle
            }
            Err(code) => fail(code, NULL),
        };
    }
    let thread = thread::current_thread_id();
    if params.initial_owner() {
        thread::mark_may_own();
    }
    let name = name.as_deref();
    let result = block_on(|facade| {
        facade.with_session(move |session| async move {
            session.create(thread, name, params, access).await
        })
    });
    match result {
        Ok((session, created)) => {
            let handle = insert_handle(session, created.handle, kind);
            thread::set_last_error(if created.already_existed {
                ERROR_ALREADY_EXISTS
            } else {
                ERROR_SUCCESS
            });
            handle
        }
        Err(code) => fail(code, NULL),
    }
}

/// The shared body of every open.
fn open(kind: ObjectKind, access: u32, name: Result<Option<String>, Win32Error>) -> HANDLE {
    let name = match name {
        Ok(Some(name)) => name,
        Ok(None) => return fail(ERROR_INVALID_PARAMETER, NULL),
        Err(code) => return fail(code, NULL),
    };
    if !HANDLES.lock().unwrap_or_else(|e| e.into_inner()).has_room() {
        return fail(ERROR_NO_SYSTEM_RESOURCES, NULL);
    }
    if let Ok(Route::Local(key)) = route(Some(&name)) {
        return match local::namespace().and_then(|seg| local::open(seg, kind, key, access)) {
            Ok(obj) => insert_slot(Slot::Local(obj)),
            Err(code) => fail(code, NULL),
        };
    }
    let name = name.as_str();
    let result = block_on(|facade| {
        facade.with_session(move |session| async move { session.open(kind, name, access).await })
    });
    match result {
        Ok((session, id)) => insert_handle(session, id, kind),
        Err(code) => fail(code, NULL),
    }
}

fn insert_handle(session: Session, id: u64, kind: ObjectKind) -> HANDLE {
    insert_slot(Slot::Remote(Entry { session, id, kind }))
}

fn insert_slot(slot: Slot) -> HANDLE {
    HANDLES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(slot)
}

/// Runs `op` if `handle` is a local handle (of `kind`, if given); `None` for a cluster handle.
/// Lookup failures are `Some(Err(6))`, as the cluster path would report them.
#[inline]
fn on_local<T>(
    handle: HANDLE,
    kind: Option<ObjectKind>,
    op: impl FnOnce(&'static Segment, LocalObj) -> Result<T, Win32Error>,
) -> Option<Result<T, Win32Error>> {
    let obj = match global::cached_local(handle) {
        Some(obj) => obj,
        None => match global::lookup(handle, kind) {
            Ok(Slot::Local(obj)) => obj,
            Ok(Slot::Remote(_)) => return None,
            Err(code) => return Some(Err(code)),
        },
    };
    if kind.is_some_and(|k| k != obj.kind) {
        return Some(Err(Win32Error::INVALID_HANDLE));
    }
    Some(with_segment(|seg| op(seg, obj)))
}

/// Runs `op` on the attached local namespace; 6 if there is none (no local handle can exist
/// then).
fn with_segment<T>(
    op: impl FnOnce(&'static Segment) -> Result<T, Win32Error>,
) -> Result<T, Win32Error> {
    local::attached()
        .ok_or(Win32Error::INVALID_HANDLE)
        .and_then(op)
}

fn mutex_flags(initial_owner: BOOL) -> u32 {
    if is_true(initial_owner) {
        CREATE_MUTEX_INITIAL_OWNER
    } else {
        0
    }
}

fn event_flags(manual_reset: BOOL, initial_state: BOOL) -> u32 {
    let mut flags = 0;
    if is_true(manual_reset) {
        flags |= CREATE_EVENT_MANUAL_RESET;
    }
    if is_true(initial_state) {
        flags |= CREATE_EVENT_INITIAL_SET;
    }
    flags
}

/// Creates or opens a named mutex with `MUTEX_ALL_ACCESS`. `bInitialOwner` makes the calling
/// thread own a *new* mutex. Last error: 0 (new), 183 (existing; not acquired) or the failure
/// code (NULL returned): 6 name held by another type, 5, 3, 123, 161, 206, and the cluster
/// or local-backend codes of the module docs.
pub fn CreateMutexA(
    lpMutexAttributes: Option<&SECURITY_ATTRIBUTES>,
    bInitialOwner: BOOL,
    lpName: Option<&str>,
) -> HANDLE {
    let _ = lpMutexAttributes;
    create(
        ObjectKind::Mutex,
        names::from_a(lpName),
        mutex_flags(bInitialOwner),
        MUTEX_ALL_ACCESS,
        0,
        0,
    )
}

/// [`CreateMutexA`] with a UTF-16 name.
pub fn CreateMutexW(
    lpMutexAttributes: Option<&SECURITY_ATTRIBUTES>,
    bInitialOwner: BOOL,
    lpName: Option<&[u16]>,
) -> HANDLE {
    let _ = lpMutexAttributes;
    create(
        ObjectKind::Mutex,
        names::from_w(lpName),
        mutex_flags(bInitialOwner),
        MUTEX_ALL_ACCESS,
        0,
        0,
    )
}

/// Creates or opens a named mutex with the given flags (`CREATE_MUTEX_INITIAL_OWNER`) and
/// access mask. Otherwise as [`CreateMutexA`].
pub fn CreateMutexExA(
    lpMutexAttributes: Option<&SECURITY_ATTRIBUTES>,
    lpName: Option<&str>,
    dwFlags: DWORD,
    dwDesiredAccess: DWORD,
) -> HANDLE {
    let _ = lpMutexAttributes;
    create(
        ObjectKind::Mutex,
        names::from_a(lpName),
        dwFlags,
        dwDesiredAccess,
        0,
        0,
    )
}

/// [`CreateMutexExA`] with a UTF-16 name.
pub fn CreateMutexExW(
    lpMutexAttributes: Option<&SECURITY_ATTRIBUTES>,
    lpName: Option<&[u16]>,
    dwFlags: DWORD,
    dwDesiredAccess: DWORD,
) -> HANDLE {
    let _ = lpMutexAttributes;
    create(
        ObjectKind::Mutex,
        names::from_w(lpName),
        dwFlags,
        dwDesiredAccess,
        0,
        0,
    )
}

/// Opens an existing named mutex. NULL on failure: 2 no such name, 6 another type, 5 access
/// (including 0), 1314, 87 for a NULL name, 3/123/161/206. The last error is unchanged on
/// success.
pub fn OpenMutexA(dwDesiredAccess: DWORD, bInheritHandle: BOOL, lpName: Option<&str>) -> HANDLE {
    let _ = bInheritHandle;
    open(ObjectKind::Mutex, dwDesiredAccess, names::from_a(lpName))
}

/// [`OpenMutexA`] with a UTF-16 name.
pub fn OpenMutexW(dwDesiredAccess: DWORD, bInheritHandle: BOOL, lpName: Option<&[u16]>) -> HANDLE {
    let _ = bInheritHandle;
    open(ObjectKind::Mutex, dwDesiredAccess, names::from_w(lpName))
}

/// Creates or opens a named event with `EVENT_ALL_ACCESS`; for an existing event the type
/// and state arguments are ignored. Last error as for [`CreateMutexA`].
pub fn CreateEventA(
    lpEventAttributes: Option<&SECURITY_ATTRIBUTES>,
    bManualReset: BOOL,
    bInitialState: BOOL,
    lpName: Option<&str>,
) -> HANDLE {
    let _ = lpEventAttributes;
    create(
        ObjectKind::Event,
        names::from_a(lpName),
        event_flags(bManualReset, bInitialState),
        EVENT_ALL_ACCESS,
        0,
        0,
    )
}

/// [`CreateEventA`] with a UTF-16 name.
pub fn CreateEventW(
    lpEventAttributes: Option<&SECURITY_ATTRIBUTES>,
    bManualReset: BOOL,
    bInitialState: BOOL,
    lpName: Option<&[u16]>,
) -> HANDLE {
    let _ = lpEventAttributes;
    create(
        ObjectKind::Event,
        names::from_w(lpName),
        event_flags(bManualReset, bInitialState),
        EVENT_ALL_ACCESS,
        0,
        0,
    )
}

/// Creates or opens a named event with flags (`CREATE_EVENT_MANUAL_RESET`,
/// `CREATE_EVENT_INITIAL_SET`) and an access mask. Otherwise as [`CreateEventA`].
pub fn CreateEventExA(
    lpEventAttributes: Option<&SECURITY_ATTRIBUTES>,
    lpName: Option<&str>,
    dwFlags: DWORD,
    dwDesiredAccess: DWORD,
) -> HANDLE {
    let _ = lpEventAttributes;
    create(
        ObjectKind::Event,
        names::from_a(lpName),
        dwFlags,
        dwDesiredAccess,
        0,
        0,
    )
}

/// [`CreateEventExA`] with a UTF-16 name.
pub fn CreateEventExW(
    lpEventAttributes: Option<&SECURITY_ATTRIBUTES>,
    lpName: Option<&[u16]>,
    dwFlags: DWORD,
    dwDesiredAccess: DWORD,
) -> HANDLE {
    let _ = lpEventAttributes;
    create(
        ObjectKind::Event,
        names::from_w(lpName),
        dwFlags,
        dwDesiredAccess,
        0,
        0,
    )
}

/// Opens an existing named event. Errors as [`OpenMutexA`].
pub fn OpenEventA(dwDesiredAccess: DWORD, bInheritHandle: BOOL, lpName: Option<&str>) -> HANDLE {
    let _ = bInheritHandle;
    open(ObjectKind::Event, dwDesiredAccess, names::from_a(lpName))
}

/// [`OpenEventA`] with a UTF-16 name.
pub fn OpenEventW(dwDesiredAccess: DWORD, bInheritHandle: BOOL, lpName: Option<&[u16]>) -> HANDLE {
    let _ = bInheritHandle;
    open(ObjectKind::Event, dwDesiredAccess, names::from_w(lpName))
}

/// Creates or opens a named semaphore with `SEMAPHORE_ALL_ACCESS`. The counts must satisfy
/// `0 <= lInitialCount <= lMaximumCount` and `lMaximumCount > 0` (else 87, even when the
/// name exists); for an existing semaphore they are otherwise ignored. Last error as for
/// [`CreateMutexA`].
pub fn CreateSemaphoreA(
    lpSemaphoreAttributes: Option<&SECURITY_ATTRIBUTES>,
    lInitialCount: LONG,
    lMaximumCount: LONG,
    lpName: Option<&str>,
) -> HANDLE {
    let _ = lpSemaphoreAttributes;
    create(
        ObjectKind::Semaphore,
        names::from_a(lpName),
        0,
        SEMAPHORE_ALL_ACCESS,
        lInitialCount,
        lMaximumCount,
    )
}

/// [`CreateSemaphoreA`] with a UTF-16 name.
pub fn CreateSemaphoreW(
    lpSemaphoreAttributes: Option<&SECURITY_ATTRIBUTES>,
    lInitialCount: LONG,
    lMaximumCount: LONG,
    lpName: Option<&[u16]>,
) -> HANDLE {
    let _ = lpSemaphoreAttributes;
    create(
        ObjectKind::Semaphore,
        names::from_w(lpName),
        0,
        SEMAPHORE_ALL_ACCESS,
        lInitialCount,
        lMaximumCount,
    )
}

/// [`CreateSemaphoreA`] with reserved flags (passed on, ignored by the server) and an access
/// mask.
pub fn CreateSemaphoreExA(
    lpSemaphoreAttributes: Option<&SECURITY_ATTRIBUTES>,
    lInitialCount: LONG,
    lMaximumCount: LONG,
    lpName: Option<&str>,
    dwFlags: DWORD,
    dwDesiredAccess: DWORD,
) -> HANDLE {
    let _ = lpSemaphoreAttributes;
    create(
        ObjectKind::Semaphore,
        names::from_a(lpName),
        dwFlags,
        dwDesiredAccess,
        lInitialCount,
        lMaximumCount,
    )
}

/// [`CreateSemaphoreExA`] with a UTF-16 name.
pub fn CreateSemaphoreExW(
    lpSemaphoreAttributes: Option<&SECURITY_ATTRIBUTES>,
    lInitialCount: LONG,
    lMaximumCount: LONG,
    lpName: Option<&[u16]>,
    dwFlags: DWORD,
    dwDesiredAccess: DWORD,
) -> HANDLE {
    let _ = lpSemaphoreAttributes;
    create(
        ObjectKind::Semaphore,
        names::from_w(lpName),
        dwFlags,
        dwDesiredAccess,
        lInitialCount,
        lMaximumCount,
    )
}

/// Opens an existing named semaphore. Errors as [`OpenMutexA`].
pub fn OpenSemaphoreA(
    dwDesiredAccess: DWORD,
    bInheritHandle: BOOL,
    lpName: Option<&str>,
) -> HANDLE {
    let _ = bInheritHandle;
    open(
        ObjectKind::Semaphore,
        dwDesiredAccess,
        names::from_a(lpName),
    )
}

/// [`OpenSemaphoreA`] with a UTF-16 name.
pub fn OpenSemaphoreW(
    dwDesiredAccess: DWORD,
    bInheritHandle: BOOL,
    lpName: Option<&[u16]>,
) -> HANDLE {
    let _ = bInheritHandle;
    open(
        ObjectKind::Semaphore,
        dwDesiredAccess,
        names::from_w(lpName),
    )
}

// ---- Operations on handles ----

/// Runs `op` on the session and server id behind `handle` (which must be of `kind`, if
/// given). Failure codes: 6 for a bad handle; [`Error::code`] otherwise (a session lost during
/// the call gives 1236).
fn with_handle<T, F, Fut>(handle: HANDLE, kind: Option<ObjectKind>, op: F) -> Result<T, Win32Error>
where
    F: FnOnce(Session, u64) -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let entry = resolve(handle, kind)?;
    block_on(|_| async move {
        op(entry.session, entry.id)
            .await
            .map_err(|e| e.win32_error())
    })
}

fn to_bool(result: Result<(), Win32Error>) -> BOOL {
    match result {
        Ok(()) => TRUE,
        Err(code) => fail(code, FALSE),
    }
}

/// Releases the calling thread's ownership of a mutex once. FALSE with 288 if the thread does
/// not own it, 6 for a bad or non-mutex handle.
pub fn ReleaseMutex(hMutex: HANDLE) -> BOOL {
    if let Some(r) = on_local(hMutex, Some(ObjectKind::Mutex), |seg, o| {
        o.release_mutex(seg)
    }) {
        return to_bool(r);
    }
    let thread = thread::current_thread_id();
    to_bool(with_handle(
        hMutex,
        Some(ObjectKind::Mutex),
        |s, h| async move { s.release_mutex(thread, h).await },
    ))
}

/// Signals an event. FALSE with 5 (no `EVENT_MODIFY_STATE`) or 6.
pub fn SetEvent(hEvent: HANDLE) -> BOOL {
    if let Some(r) = on_local(hEvent, Some(ObjectKind::Event), |seg, o| o.set_event(seg)) {
        return to_bool(r);
    }
    to_bool(with_handle(
        hEvent,
        Some(ObjectKind::Event),
        |s, h| async move { s.set_event(h).await },
    ))
}

/// Resets an event to non-signaled. FALSE with 5 or 6.
pub fn ResetEvent(hEvent: HANDLE) -> BOOL {
    if let Some(r) = on_local(hEvent, Some(ObjectKind::Event), |seg, o| o.reset_event(seg)) {
        return to_bool(r);
    }
    to_bool(with_handle(
        hEvent,
        Some(ObjectKind::Event),
        |s, h| async move { s.reset_event(h).await },
    ))
}

/// Releases the waiters registered right now (all that can be released for a manual-reset
/// event, at most one for auto-reset) and leaves the event non-signaled. Reliable in dlock,
/// unlike on Windows. FALSE with 5 or 6.
pub fn PulseEvent(hEvent: HANDLE) -> BOOL {
    if let Some(r) = on_local(hEvent, Some(ObjectKind::Event), |seg, o| o.pulse_event(seg)) {
        return to_bool(r);
    }
    to_bool(with_handle(
        hEvent,
        Some(ObjectKind::Event),
        |s, h| async move { s.pulse_event(h).await },
    ))
}

/// Adds `lReleaseCount` to a semaphore; on success writes the previous count to
/// `lpPreviousCount` if given. FALSE (and `lpPreviousCount` untouched) with 87 for a count
/// <= 0, 298 above the maximum, 5 or 6.
pub fn ReleaseSemaphore(
    hSemaphore: HANDLE,
    lReleaseCount: LONG,
    lpPreviousCount: Option<&mut LONG>,
) -> BOOL {
    let local = on_local(hSemaphore, Some(ObjectKind::Semaphore), |seg, o| {
        o.release_semaphore(seg, lReleaseCount)
    });
    let result = match local {
        Some(r) => r,
        None => with_handle(hSemaphore, Some(ObjectKind::Semaphore), |s, h| async move {
            s.release_semaphore(h, lReleaseCount).await
        }),
    };
    match result {
        Ok(previous) => {
            if let Some(out) = lpPreviousCount {
                *out = previous;
            }
            TRUE
        }
        Err(code) => fail(code, FALSE),
    }
}

/// Closes a handle; the object disappears with its last handle anywhere (and last waiter).
/// Closing does not release a mutex the thread owns. FALSE with 6 for an unknown or already
/// closed handle, and for a handle of a lost session (whose value is forgotten as well).
pub fn CloseHandle(hObject: HANDLE) -> BOOL {
    let entry = match global::lookup(hObject, None) {
        Ok(Slot::Remote(entry)) => entry,
        Ok(Slot::Local(_)) => {
            // Only the thread that takes the handle out of the table closes it.
            return match global::forget(hObject) {
                Some(Slot::Local(obj)) => to_bool(with_segment(|seg| obj.close(seg))),
                _ => fail(ERROR_INVALID_HANDLE, FALSE),
            };
        }
        Err(code) => {
            // A handle of a lost session: forget it, but report it as invalid.
            global::forget(hObject);
            return fail(code, FALSE);
        }
    };
    let session = entry.session.clone();
    let result = block_on(|_| async move { Ok(session.close_handle(entry.id).await) });
    let forget = || {
        global::forget(hObject);
    };
    match result {
        Ok(Ok(())) => {
            forget();
            TRUE
        }
        Ok(Err(Error::SessionLost)) | Ok(Err(Error::Win32(Win32Error::INVALID_HANDLE))) => {
            forget();
            fail(ERROR_INVALID_HANDLE, FALSE)
        }
        // Cluster trouble: keep the handle so the caller can retry the close.
        Ok(Err(err)) => fail(err.code(), FALSE),
        Err(code) => fail(code, FALSE),
    }
}

// ---- Waits ----

/// Resolves every handle of a wait; they must all belong to one live session.
fn resolve_all(handles: &[HANDLE]) -> Result<(Session, Vec<u64>), Win32Error> {
    let mut session: Option<Session> = None;
    let mut ids = Vec::with_capacity(handles.len());
    for &handle in handles {
        let entry = resolve(handle, None)?;
        match &session {
            Some(s) if s.id() != entry.session.id() => return Err(Win32Error::INVALID_HANDLE),
            Some(_) => {}
            None => session = Some(entry.session.clone()),
        }
        ids.push(entry.id);
    }
    session
        .map(|s| (s, ids))
        .ok_or(Win32Error::INVALID_PARAMETER)
}

fn wait_result(result: Result<crate::WaitOutcome, Win32Error>) -> DWORD {
    match result {
        Ok(outcome) => outcome.to_win32(),
        Err(code) => fail(code, WAIT_FAILED),
    }
}

/// Waits until the object is signaled or `dwMilliseconds` pass (`INFINITE` never). Returns
/// `WAIT_OBJECT_0`, `WAIT_ABANDONED` (an abandoned mutex, now owned by the calling thread),
/// `WAIT_TIMEOUT`, or `WAIT_FAILED` (6 bad handle, 5 no `SYNCHRONIZE`, 587, 1236 if the
/// session was lost during the wait, 1231). A mutex acquired belongs to the calling thread.
/// Success and timeout leave the last error untouched.
pub fn WaitForSingleObject(hHandle: HANDLE, dwMilliseconds: DWORD) -> DWORD {
    // The uncontended local mutex: a cached handle, one try-lock, no system call.
    if let Some(obj) = global::cached_local(hHandle)
        && let Some(seg) = local::attached()
        && let Some(result) = obj.try_lock(seg)
    {
        return result;
    }
    if let Some(r) = on_local(hHandle, None, |seg, o| {
        local::wait(seg, &[o], false, Timeout::from_millis(dwMilliseconds))
    }) {
        return wait_result(r);
    }
    WaitForMultipleObjects(&[hHandle], FALSE, dwMilliseconds)
}

/// The handles of a wait, all local, or `None` if they are all cluster handles. A mix fails
/// with 87: one wait cannot block on the cluster and on shared memory at once.
fn local_wait_set(handles: &[HANDLE]) -> Result<Option<Vec<LocalObj>>, Win32Error> {
    let mut local = Vec::with_capacity(handles.len());
    let mut remote = 0;
    for &handle in handles {
        match global::lookup(handle, None)? {
            Slot::Local(obj) => local.push(obj),
            Slot::Remote(_) => remote += 1,
        }
    }
    match (local.len(), remote) {
        (_, 0) => Ok(Some(local)),
        (0, _) => Ok(None),
        _ => Err(Win32Error::INVALID_PARAMETER),
    }
}

/// Waits for any (`bWaitAll` FALSE: the lowest-indexed signaled object is acquired and its
/// index returned) or all (TRUE: all acquired at once, `WAIT_OBJECT_0` or `WAIT_ABANDONED_0`)
/// of 1 to 64 handles. `WAIT_FAILED` with 87 for 0 or more than 64 handles (no server call)
/// or a duplicate object in a wait-all, 6 for an unknown handle; otherwise as
/// [`WaitForSingleObject`].
pub fn WaitForMultipleObjects(
    lpHandles: &[HANDLE],
    bWaitAll: BOOL,
    dwMilliseconds: DWORD,
) -> DWORD {
    if lpHandles.is_empty() || lpHandles.len() > MAXIMUM_WAIT_OBJECTS as usize {
        return fail(ERROR_INVALID_PARAMETER, WAIT_FAILED);
    }
    let timeout = Timeout::from_millis(dwMilliseconds);
    match local_wait_set(lpHandles) {
        Ok(Some(objs)) => {
            return wait_result(with_segment(|seg| {
                local::wait(seg, &objs, is_true(bWaitAll), timeout)
            }));
        }
        Ok(None) => {}
        Err(code) => return fail(code, WAIT_FAILED),
    }
    let (session, ids) = match resolve_all(lpHandles) {
        Ok(resolved) => resolved,
        Err(code) => return fail(code, WAIT_FAILED),
    };
    let thread = thread::current_thread_id();
    thread::mark_may_own();
    wait_result(block_on(|_| async move {
        session
            .wait(thread, &ids, is_true(bWaitAll), timeout)
            .await
            .map_err(|e| e.win32_error())
    }))
}

/// Atomically signals one object (sets an event, releases a mutex the calling thread owns, or
/// releases a semaphore by one) and waits on another. `bAlertable` is ignored. Results as
/// [`WaitForSingleObject`]; `WAIT_FAILED` also with 288 / 298 / 5 / 6 from the signal half.
pub fn SignalObjectAndWait(
    hObjectToSignal: HANDLE,
    hObjectToWaitOn: HANDLE,
    dwMilliseconds: DWORD,
    bAlertable: BOOL,
) -> DWORD {
    let _ = bAlertable;
    let timeout = Timeout::from_millis(dwMilliseconds);
    match local_wait_set(&[hObjectToSignal, hObjectToWaitOn]) {
        Ok(Some(objs)) => {
            return wait_result(with_segment(|seg| {
                local::signal_and_wait(seg, &objs[0], &objs[1], timeout)
            }));
        }
        Ok(None) => {}
        Err(code) => return fail(code, WAIT_FAILED),
    }
    let (session, ids) = match resolve_all(&[hObjectToSignal, hObjectToWaitOn]) {
        Ok(resolved) => resolved,
        Err(code) => return fail(code, WAIT_FAILED),
    };
    let thread = thread::current_thread_id();
    thread::mark_may_own();
    wait_result(block_on(|_| async move {
        session
            .signal_and_wait(thread, ids[0], ids[1], timeout)
            .await
            .map_err(|e| e.win32_error())
    }))
}

/// **dlock extension.** The fencing token of the calling thread's current hold of the mutex
/// behind `hMutex`, or 0 if the thread does not own it. The token is the Raft log index of
/// the grant; it grows strictly across successive owners, so a storage system that remembers
/// the highest token it has seen can reject a stale owner. Reads the cluster (linearizable).
/// On failure returns 0 and sets the last error (6 bad or non-mutex handle, cluster codes);
/// a successful call leaves the last error untouched.
pub fn GetFencingToken(hMutex: HANDLE) -> u64 {
    if let Some(r) = on_local(hMutex, Some(ObjectKind::Mutex), |seg, o| {
        Ok(o.fencing_token(seg))
    }) {
        return r.unwrap_or_else(|code| fail(code, 0));
    }
    let thread = thread::current_thread_id();
    let result = with_handle(hMutex, Some(ObjectKind::Mutex), |s, h| async move {
        let state = s.query(h).await?;
        let mine = state.owner_session_id == s.id() && state.owner_thread_id == thread;
        Ok(if mine { state.fencing_token } else { 0 })
    });
    match result {
        Ok(token) => token,
        Err(code) => fail(code, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // These tests never reach a server: every path below fails before any RPC.

    #[test]
    fn bad_handles_fail_with_invalid_handle() {
        SetLastError(0);
        assert_eq!(ReleaseMutex(NULL), FALSE);
        assert_eq!(GetLastError(), ERROR_INVALID_HANDLE);
        SetLastError(0);
        assert_eq!(SetEvent(0x7777_7774), FALSE);
        assert_eq!(GetLastError(), ERROR_INVALID_HANDLE);
        SetLastError(0);
        assert_eq!(CloseHandle(12345), FALSE);
        assert_eq!(GetLastError(), ERROR_INVALID_HANDLE);
        SetLastError(0);
        let mut prev = 99;
        assert_eq!(ReleaseSemaphore(8, 1, Some(&mut prev)), FALSE);
        assert_eq!(prev, 99, "previous count not written on failure");
        assert_eq!(GetLastError(), ERROR_INVALID_HANDLE);
        SetLastError(0);
        assert_eq!(WaitForSingleObject(4, 0), WAIT_FAILED);
        assert_eq!(GetLastError(), ERROR_INVALID_HANDLE);
        SetLastError(0);
        assert_eq!(SignalObjectAndWait(4, 8, 0, FALSE), WAIT_FAILED);
        assert_eq!(GetLastError(), ERROR_INVALID_HANDLE);
        SetLastError(0);
        assert_eq!(GetFencingToken(4), 0);
        assert_eq!(GetLastError(), ERROR_INVALID_HANDLE);
    }

    #[test]
    fn wait_counts_are_checked_without_a_server() {
        SetLastError(0);
        assert_eq!(WaitForMultipleObjects(&[], FALSE, 0), WAIT_FAILED);
        assert_eq!(GetLastError(), ERROR_INVALID_PARAMETER);
        SetLastError(0);
        assert_eq!(WaitForMultipleObjects(&[4; 65], TRUE, 0), WAIT_FAILED);
        assert_eq!(GetLastError(), ERROR_INVALID_PARAMETER);
        SetLastError(0);
        assert_eq!(WaitForMultipleObjects(&[4; 64], TRUE, 0), WAIT_FAILED);
        assert_eq!(
            GetLastError(),
            ERROR_INVALID_HANDLE,
            "64 is allowed; 4 is unknown"
        );
    }

    #[test]
    fn name_errors_come_before_any_server_call() {
        SetLastError(0);
        assert_eq!(CreateMutexA(None, FALSE, Some(&"n".repeat(261))), NULL);
        assert_eq!(GetLastError(), ERROR_FILENAME_EXCED_RANGE);
        SetLastError(0);
        assert_eq!(CreateSemaphoreW(None, 0, 1, Some(&[0xDC00])), NULL);
        assert_eq!(GetLastError(), ERROR_INVALID_NAME);
        SetLastError(0);
        assert_eq!(OpenMutexA(MUTEX_ALL_ACCESS, FALSE, None), NULL);
        assert_eq!(GetLastError(), ERROR_INVALID_PARAMETER);
        SetLastError(0);
        assert_eq!(OpenEventW(EVENT_ALL_ACCESS, FALSE, None), NULL);
        assert_eq!(GetLastError(), ERROR_INVALID_PARAMETER);
    }

    #[test]
    fn constants_have_their_win32_values() {
        assert_eq!(WAIT_ABANDONED_0, 0x80);
        assert_eq!(WAIT_TIMEOUT, 258);
        assert_eq!(INFINITE, u32::MAX);
        assert_eq!(
            MUTEX_ALL_ACCESS,
            STANDARD_RIGHTS_REQUIRED | SYNCHRONIZE | MUTANT_QUERY_STATE
        );
        assert_eq!(
            EVENT_ALL_ACCESS,
            STANDARD_RIGHTS_REQUIRED | SYNCHRONIZE | EVENT_QUERY_STATE | EVENT_MODIFY_STATE
        );
        assert_eq!(SEMAPHORE_ALL_ACCESS, 0x001F_0003);
        assert_eq!(ERROR_NETWORK_UNREACHABLE, 1231);
        assert_eq!(ERROR_CONNECTION_ABORTED, 1236);
        assert_eq!(ERROR_NO_SYSTEM_RESOURCES, 1450);
    }
}

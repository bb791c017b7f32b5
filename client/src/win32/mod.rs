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
//! | `DLOCK_CACERT` | CA certificates (PEM) the nodes' certificates must chain to; setting it makes every connection TLS (endpoints may then be written `https://host:port`) | unset: plaintext |
//! | `DLOCK_CERT`, `DLOCK_KEY` | this process's client certificate and key (PEM), for clusters started with `--client-cert-auth`; its subject is the process's principal | unset |
//! | `DLOCK_TOKEN` | a development bearer token that a node's `--token-file` maps to a principal (without client certificates; docs/security.md) | unset |
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
//!   thread): the calls block. Cluster calls fail with `ERROR_NOT_SUPPORTED` there; calls on
//!   `Local\` and unnamed objects do not need the runtime and are not refused, but a wait
//!   blocks the worker. Use the async API ([`crate::Session`]) instead. The facade runs its own runtime (2 worker threads named
//!   `dlock-worker`).
//! * A wait-all cannot mix `Local\` (or unnamed) handles with cluster handles: it fails with
//!   `ERROR_INVALID_PARAMETER` (87), because taking objects of two independent systems in one
//!   atomic step would need a commit protocol between them. A wait-any across both backends
//!   works (the lowest signaled index wins; a cluster grant that lost the race is given back),
//!   and so does `SignalObjectAndWait`, which then signals and waits in two steps (not
//!   atomic across backends). See `mixed.rs`.
//! * A child made by `fork` must not call the facade before it `exec`s: calls fail there with
//!   `ERROR_NOT_SUPPORTED` (the parent's runtime threads and local process record are not
//!   the child's).
//!
//! # `Local\` names: the host-local backend
//!
//! A name starting with `Local\` (case-sensitive) names a **host-local** object: it lives in
//! a shared-memory segment on this machine, is shared by the processes of this host that use
//! the same namespace, and never involves dlockd (no cluster, session or network is needed).
//! Every other name, `Global\X` and plain `X` alike, is cluster-wide. `Local\X` and `X` are
//! different objects. Unnamed objects (`NULL` or `""` names) are private to the process, so
//! the local engine serves them too: they need no cluster at all. They do need the host's
//! segment (its failures below apply to them) and count against its limits.
//!
//! Local objects have the cluster objects' semantics (create-or-open, 183, cross-type 6,
//! access rights, recursive per-thread mutex ownership, 288, 298, wait-any and atomic
//! wait-all, `PulseEvent`), with these differences: a mutex whose owning thread exits, or
//! whose process dies, is abandoned **at once** (the kernel's robust futex list reports it; no
//! TTL); a thread on the lock-free path may take a free mutex before a woken waiter; a
//! fencing token counts the acquisitions of that mutex. An uncontended acquire and release makes no system call.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `DLOCK_LOCAL_DIR` | directory of the segment file (created if missing) | `/dev/shm` |
//! | `DLOCK_LOCAL_NAMESPACE` | namespace name (`[A-Za-z0-9._-]`, 1-64): processes meet only within one | `u<uid>` |
//! | `DLOCK_LOCAL_MODE` | octal mode of a new segment file; `660` shares it with `DLOCK_LOCAL_GROUP` (never with other users) | `600` |
//! | `DLOCK_LOCAL_GROUP` | the one group (name or gid) that may share the namespace; required for `660` | none |
//! | `DLOCK_LOCAL_LOCK_TIMEOUT_MS` | longest wait for the namespace lock before a call fails with `ERROR_TIMEOUT` (1460); timed waits use their own deadline | `30000` |
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
//! | another process held the namespace lock longer than `DLOCK_LOCAL_LOCK_TIMEOUT_MS` (a stopped or frozen process) | NULL / FALSE | [`ERROR_TIMEOUT`] (1460); a timed wait returns `WAIT_TIMEOUT` at its deadline instead |
//!
//! Each is also logged (`tracing`, target `dlock::local`) with the file's path and the reason.
#![allow(non_snake_case, non_camel_case_types)]

mod create;
mod global;
mod handles;
mod mixed;
mod ops;
mod thread;

pub use create::*;
pub use ops::*;

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
    ERROR_TIMEOUT, ERROR_TOO_MANY_POSTS, EVENT_ALL_ACCESS, EVENT_MODIFY_STATE, EVENT_QUERY_STATE,
    GENERIC_ALL, GENERIC_EXECUTE, GENERIC_READ, GENERIC_WRITE, INFINITE, MAX_PATH, MAXIMUM_ALLOWED,
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

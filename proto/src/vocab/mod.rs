//! The Win32 vocabulary dlock speaks: every number, right, name rule and object type that the
//! server, the async client, the blocking facade and the `Local\` engine share, defined once.
//!
//! The values are Windows' own (docs/win32-semantics.md §1), so a code can go from the state
//! machine to an application's `GetLastError()` unchanged. This module lives in the protocol
//! crate because it is part of the contract: the `.proto` files carry these numbers, and every
//! crate that talks the protocol needs them (as etcd's `api/` module holds both the protobufs and
//! the error values they carry). It depends on nothing but `serde`, so the `Local\` engine, which
//! speaks no gRPC, can use it too.
//!
//! * constants: wait results and limits (§1.1), last-error codes (§1.2), access rights (§1.3),
//!   creation flags (§1.4);
//! * [`Win32Error`]: a last-error code as a type, so a failure is not a bare `u32`;
//! * [`ObjectKind`]: the three object types of the one namespace; [`Timeout`], [`WaitOutcome`]
//!   and [`ObjectState`]: what a wait takes and gives and what a query reads;
//! * [`access`]: the access-mask arithmetic of §1.3 and §2.1;
//! * [`names`]: the name rules of §3, for the cluster and for `Local\`.

pub mod access;
pub mod names;
mod values;

pub use values::{CreateParams, ObjectState, Timeout, WaitOutcome};

use serde::{Deserialize, Serialize};

/// A Win32 `DWORD`.
pub type DWORD = u32;

// ---------------------------------------------------------------------------------------------
// §1.1 Wait results and limits.
// ---------------------------------------------------------------------------------------------

/// `WAIT_OBJECT_0`: the wait succeeded; add the array index for multiple-object waits.
pub const WAIT_OBJECT_0: DWORD = 0x0000_0000;
/// `WAIT_ABANDONED_0`: the wait acquired an abandoned mutex; add the array index for wait-any.
pub const WAIT_ABANDONED_0: DWORD = 0x0000_0080;
/// `WAIT_ABANDONED`: the single-object spelling of [`WAIT_ABANDONED_0`].
pub const WAIT_ABANDONED: DWORD = WAIT_ABANDONED_0;
/// `WAIT_IO_COMPLETION`: an alertable wait was interrupted by an APC (never produced by dlock).
pub const WAIT_IO_COMPLETION: DWORD = 0x0000_00C0;
/// `WAIT_TIMEOUT`: the timeout elapsed (or a poll found nothing signaled).
pub const WAIT_TIMEOUT: DWORD = 0x0000_0102;
/// `WAIT_FAILED`: the wait failed; the last error says why.
pub const WAIT_FAILED: DWORD = 0xFFFF_FFFF;
/// `INFINITE`: a timeout that never expires.
pub const INFINITE: DWORD = 0xFFFF_FFFF;
/// `MAXIMUM_WAIT_OBJECTS`: the most handles one wait may name.
pub const MAXIMUM_WAIT_OBJECTS: DWORD = 64;
/// `MAX_PATH`: the longest accepted object name, in UTF-16 code units (§3.2).
pub const MAX_PATH: DWORD = 260;
/// The highest mutex recursion count (§4.2: `MINLONG` acquisitions). One more acquisition by the
/// owner fails with `WAIT_FAILED` / [`ERROR_MUTANT_LIMIT_EXCEEDED`] and changes nothing.
pub const MUTEX_RECURSION_MAX: u32 = 0x7FFF_FFFF;

// ---------------------------------------------------------------------------------------------
// §1.2 Error codes.
// ---------------------------------------------------------------------------------------------

/// 0: success (a create that made a new object).
pub const ERROR_SUCCESS: DWORD = 0;
/// 2: `Open*` found no object of that name.
pub const ERROR_FILE_NOT_FOUND: DWORD = 2;
/// 3: a name with a backslash other than the `Global\` prefix (`a\b`, `X\`, `global\X`).
pub const ERROR_PATH_NOT_FOUND: DWORD = 3;
/// 5: the handle or the requested access mask lacks a needed right; or (`Local\`) the shared
/// segment is not accessible or not trusted.
pub const ERROR_ACCESS_DENIED: DWORD = 5;
/// 6: bad, closed, foreign or wrong-type handle; name held by another object type.
pub const ERROR_INVALID_HANDLE: DWORD = 6;
/// 50: the operation is not supported here (for example the `Local\` engine on a platform it
/// cannot run on).
pub const ERROR_NOT_SUPPORTED: DWORD = 50;
/// 67: the cluster cannot be reached because no endpoint is configured or usable.
pub const ERROR_BAD_NET_NAME: DWORD = 67;
/// 87: invalid parameter (counts, missing name, wait-all duplicates, `Local\` names at the
/// cluster).
pub const ERROR_INVALID_PARAMETER: DWORD = 87;
/// 123: malformed name (empty component, interior NUL, `Global\` alone).
pub const ERROR_INVALID_NAME: DWORD = 123;
/// 161: a name starting with a backslash.
pub const ERROR_BAD_PATHNAME: DWORD = 161;
/// 183: a create opened an existing object of the same type (reported with a valid handle).
pub const ERROR_ALREADY_EXISTS: DWORD = 183;
/// 206: a name longer than [`MAX_PATH`] UTF-16 code units.
pub const ERROR_FILENAME_EXCED_RANGE: DWORD = 206;
/// 288: `ReleaseMutex` by a thread that does not own the mutex.
pub const ERROR_NOT_OWNER: DWORD = 288;
/// 298: `ReleaseSemaphore` would push the count over the maximum.
pub const ERROR_TOO_MANY_POSTS: DWORD = 298;
/// 587: a mutex's recursion count would exceed [`MUTEX_RECURSION_MAX`].
pub const ERROR_MUTANT_LIMIT_EXCEEDED: DWORD = 587;
/// 995: a cancellable `Local\` wait was cancelled (its future was dropped).
pub const ERROR_OPERATION_ABORTED: DWORD = 995;
/// 997: a wait is registered and still pending (`WaitReply.pending`; the outcome comes from
/// `AwaitWait`).
pub const ERROR_IO_PENDING: DWORD = 997;
/// 1231: no node of the cluster answered within the request timeout.
pub const ERROR_NETWORK_UNREACHABLE: DWORD = 1231;
/// 1236: the session ended (expired or closed) during the call.
pub const ERROR_CONNECTION_ABORTED: DWORD = 1236;
/// 1306: the `Local\` segment was written by another layout version.
pub const ERROR_REVISION_MISMATCH: DWORD = 1306;
/// 1314: `ACCESS_SYSTEM_SECURITY` was requested (dlock grants no privileges).
pub const ERROR_PRIVILEGE_NOT_HELD: DWORD = 1314;
/// 1359: an internal error (a transport failure or a reply that broke the wire contract).
pub const ERROR_INTERNAL_ERROR: DWORD = 1359;
/// 1392: the `Local\` segment's header is not trustworthy.
pub const ERROR_FILE_CORRUPT: DWORD = 1392;
/// 1450: a dlock resource limit (handles, waits, objects, sessions) was reached, or the cluster
/// stayed overloaded; nothing changed.
pub const ERROR_NO_SYSTEM_RESOURCES: DWORD = 1450;
/// 1460: a `Local\` call could not take the host's namespace lock within its bound
/// (`DLOCK_LOCAL_LOCK_TIMEOUT_MS`): a process holds it and does not run. Nothing changed.
pub const ERROR_TIMEOUT: DWORD = 1460;

// ---------------------------------------------------------------------------------------------
// §1.3 Access rights.
// ---------------------------------------------------------------------------------------------

/// `DELETE`.
pub const DELETE: DWORD = 0x0001_0000;
/// `READ_CONTROL`.
pub const READ_CONTROL: DWORD = 0x0002_0000;
/// `STANDARD_RIGHTS_READ` (= `READ_CONTROL`).
pub const STANDARD_RIGHTS_READ: DWORD = READ_CONTROL;
/// `STANDARD_RIGHTS_WRITE` (= `READ_CONTROL`).
pub const STANDARD_RIGHTS_WRITE: DWORD = READ_CONTROL;
/// `STANDARD_RIGHTS_EXECUTE` (= `READ_CONTROL`).
pub const STANDARD_RIGHTS_EXECUTE: DWORD = READ_CONTROL;
/// `WRITE_DAC`.
pub const WRITE_DAC: DWORD = 0x0004_0000;
/// `WRITE_OWNER`.
pub const WRITE_OWNER: DWORD = 0x0008_0000;
/// `SYNCHRONIZE`: required by every wait.
pub const SYNCHRONIZE: DWORD = 0x0010_0000;
/// `STANDARD_RIGHTS_REQUIRED`.
pub const STANDARD_RIGHTS_REQUIRED: DWORD = 0x000F_0000;
/// `ACCESS_SYSTEM_SECURITY`: always refused with [`ERROR_PRIVILEGE_NOT_HELD`].
pub const ACCESS_SYSTEM_SECURITY: DWORD = 0x0100_0000;
/// `MAXIMUM_ALLOWED`: grants the type's `…_ALL_ACCESS` (dlock has no security descriptors).
pub const MAXIMUM_ALLOWED: DWORD = 0x0200_0000;
/// `GENERIC_ALL`.
pub const GENERIC_ALL: DWORD = 0x1000_0000;
/// `GENERIC_EXECUTE`.
pub const GENERIC_EXECUTE: DWORD = 0x2000_0000;
/// `GENERIC_WRITE`.
pub const GENERIC_WRITE: DWORD = 0x4000_0000;
/// `GENERIC_READ`.
pub const GENERIC_READ: DWORD = 0x8000_0000;
/// `MUTANT_QUERY_STATE`.
pub const MUTANT_QUERY_STATE: DWORD = 0x0001;
/// `MUTEX_MODIFY_STATE` (same bit as `MUTANT_QUERY_STATE`; "reserved for future use").
pub const MUTEX_MODIFY_STATE: DWORD = 0x0001;
/// `MUTEX_ALL_ACCESS`.
pub const MUTEX_ALL_ACCESS: DWORD = 0x001F_0001;
/// `MUTANT_ALL_ACCESS` (= `MUTEX_ALL_ACCESS`).
pub const MUTANT_ALL_ACCESS: DWORD = MUTEX_ALL_ACCESS;
/// `EVENT_QUERY_STATE`.
pub const EVENT_QUERY_STATE: DWORD = 0x0001;
/// `EVENT_MODIFY_STATE`: required by `SetEvent`, `ResetEvent` and `PulseEvent`.
pub const EVENT_MODIFY_STATE: DWORD = 0x0002;
/// `EVENT_ALL_ACCESS`.
pub const EVENT_ALL_ACCESS: DWORD = 0x001F_0003;
/// `SEMAPHORE_QUERY_STATE`.
pub const SEMAPHORE_QUERY_STATE: DWORD = 0x0001;
/// `SEMAPHORE_MODIFY_STATE`: required by `ReleaseSemaphore`.
pub const SEMAPHORE_MODIFY_STATE: DWORD = 0x0002;
/// `SEMAPHORE_ALL_ACCESS`.
pub const SEMAPHORE_ALL_ACCESS: DWORD = 0x001F_0003;

// ---------------------------------------------------------------------------------------------
// §1.4 Flags.
// ---------------------------------------------------------------------------------------------

/// `CREATE_MUTEX_INITIAL_OWNER` (`CreateMutexEx dwFlags`).
pub const CREATE_MUTEX_INITIAL_OWNER: DWORD = 0x0000_0001;
/// `CREATE_EVENT_MANUAL_RESET` (`CreateEventEx dwFlags`).
pub const CREATE_EVENT_MANUAL_RESET: DWORD = 0x0000_0001;
/// `CREATE_EVENT_INITIAL_SET` (`CreateEventEx dwFlags`).
pub const CREATE_EVENT_INITIAL_SET: DWORD = 0x0000_0002;

// ---------------------------------------------------------------------------------------------
// Types.
// ---------------------------------------------------------------------------------------------

/// A Win32 last-error code: why a call failed, in Windows' own numbers.
///
/// It is a value, not a Rust error type: the state machine records it in replies (encoded as the
/// bare number, so logs and snapshots are unchanged by the type), and the facade hands it to
/// `GetLastError()`. Any `u32` is representable, since a newer server may send a code this
/// client does not name.
///
/// ```
/// use dlock_proto::vocab::{Win32Error, ERROR_NOT_OWNER};
/// let e = Win32Error::NOT_OWNER;
/// assert_eq!(e.code(), ERROR_NOT_OWNER);
/// assert_eq!(e.name(), "ERROR_NOT_OWNER");
/// assert_eq!(e.to_string(), "ERROR_NOT_OWNER (288)");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Win32Error(u32);

impl Win32Error {
    /// [`ERROR_FILE_NOT_FOUND`].
    pub const FILE_NOT_FOUND: Win32Error = Win32Error(ERROR_FILE_NOT_FOUND);
    /// [`ERROR_PATH_NOT_FOUND`].
    pub const PATH_NOT_FOUND: Win32Error = Win32Error(ERROR_PATH_NOT_FOUND);
    /// [`ERROR_ACCESS_DENIED`].
    pub const ACCESS_DENIED: Win32Error = Win32Error(ERROR_ACCESS_DENIED);
    /// [`ERROR_INVALID_HANDLE`].
    pub const INVALID_HANDLE: Win32Error = Win32Error(ERROR_INVALID_HANDLE);
    /// [`ERROR_NOT_SUPPORTED`].
    pub const NOT_SUPPORTED: Win32Error = Win32Error(ERROR_NOT_SUPPORTED);
    /// [`ERROR_BAD_NET_NAME`].
    pub const BAD_NET_NAME: Win32Error = Win32Error(ERROR_BAD_NET_NAME);
    /// [`ERROR_INVALID_PARAMETER`].
    pub const INVALID_PARAMETER: Win32Error = Win32Error(ERROR_INVALID_PARAMETER);
    /// [`ERROR_INVALID_NAME`].
    pub const INVALID_NAME: Win32Error = Win32Error(ERROR_INVALID_NAME);
    /// [`ERROR_BAD_PATHNAME`].
    pub const BAD_PATHNAME: Win32Error = Win32Error(ERROR_BAD_PATHNAME);
    /// [`ERROR_FILENAME_EXCED_RANGE`].
    pub const FILENAME_EXCED_RANGE: Win32Error = Win32Error(ERROR_FILENAME_EXCED_RANGE);
    /// [`ERROR_NOT_OWNER`].
    pub const NOT_OWNER: Win32Error = Win32Error(ERROR_NOT_OWNER);
    /// [`ERROR_TOO_MANY_POSTS`].
    pub const TOO_MANY_POSTS: Win32Error = Win32Error(ERROR_TOO_MANY_POSTS);
    /// [`ERROR_MUTANT_LIMIT_EXCEEDED`].
    pub const MUTANT_LIMIT_EXCEEDED: Win32Error = Win32Error(ERROR_MUTANT_LIMIT_EXCEEDED);
    /// [`ERROR_OPERATION_ABORTED`].
    pub const OPERATION_ABORTED: Win32Error = Win32Error(ERROR_OPERATION_ABORTED);
    /// [`ERROR_NETWORK_UNREACHABLE`].
    pub const NETWORK_UNREACHABLE: Win32Error = Win32Error(ERROR_NETWORK_UNREACHABLE);
    /// [`ERROR_CONNECTION_ABORTED`].
    pub const CONNECTION_ABORTED: Win32Error = Win32Error(ERROR_CONNECTION_ABORTED);
    /// [`ERROR_REVISION_MISMATCH`].
    pub const REVISION_MISMATCH: Win32Error = Win32Error(ERROR_REVISION_MISMATCH);
    /// [`ERROR_PRIVILEGE_NOT_HELD`].
    pub const PRIVILEGE_NOT_HELD: Win32Error = Win32Error(ERROR_PRIVILEGE_NOT_HELD);
    /// [`ERROR_INTERNAL_ERROR`].
    pub const INTERNAL_ERROR: Win32Error = Win32Error(ERROR_INTERNAL_ERROR);
    /// [`ERROR_FILE_CORRUPT`].
    pub const FILE_CORRUPT: Win32Error = Win32Error(ERROR_FILE_CORRUPT);
    /// [`ERROR_NO_SYSTEM_RESOURCES`].
    pub const NO_SYSTEM_RESOURCES: Win32Error = Win32Error(ERROR_NO_SYSTEM_RESOURCES);
    /// [`ERROR_TIMEOUT`].
    pub const TIMEOUT: Win32Error = Win32Error(ERROR_TIMEOUT);

    /// The error with this code (any value; a newer peer may send one this build does not name).
    pub const fn from_code(code: u32) -> Win32Error {
        Win32Error(code)
    }

    /// The numeric code, as `GetLastError()` returns it.
    pub const fn code(self) -> u32 {
        self.0
    }

    /// The symbolic name (`"ERROR_NOT_OWNER"`), or `"UNKNOWN_ERROR"` for a code not named here.
    pub fn name(self) -> &'static str {
        match self.0 {
            ERROR_SUCCESS => "ERROR_SUCCESS",
            ERROR_FILE_NOT_FOUND => "ERROR_FILE_NOT_FOUND",
            ERROR_PATH_NOT_FOUND => "ERROR_PATH_NOT_FOUND",
            ERROR_ACCESS_DENIED => "ERROR_ACCESS_DENIED",
            ERROR_INVALID_HANDLE => "ERROR_INVALID_HANDLE",
            ERROR_NOT_SUPPORTED => "ERROR_NOT_SUPPORTED",
            ERROR_BAD_NET_NAME => "ERROR_BAD_NET_NAME",
            ERROR_INVALID_PARAMETER => "ERROR_INVALID_PARAMETER",
            ERROR_INVALID_NAME => "ERROR_INVALID_NAME",
            ERROR_BAD_PATHNAME => "ERROR_BAD_PATHNAME",
            ERROR_ALREADY_EXISTS => "ERROR_ALREADY_EXISTS",
            ERROR_FILENAME_EXCED_RANGE => "ERROR_FILENAME_EXCED_RANGE",
            ERROR_NOT_OWNER => "ERROR_NOT_OWNER",
            ERROR_TOO_MANY_POSTS => "ERROR_TOO_MANY_POSTS",
            ERROR_MUTANT_LIMIT_EXCEEDED => "ERROR_MUTANT_LIMIT_EXCEEDED",
            ERROR_OPERATION_ABORTED => "ERROR_OPERATION_ABORTED",
            ERROR_IO_PENDING => "ERROR_IO_PENDING",
            ERROR_NETWORK_UNREACHABLE => "ERROR_NETWORK_UNREACHABLE",
            ERROR_CONNECTION_ABORTED => "ERROR_CONNECTION_ABORTED",
            ERROR_REVISION_MISMATCH => "ERROR_REVISION_MISMATCH",
            ERROR_PRIVILEGE_NOT_HELD => "ERROR_PRIVILEGE_NOT_HELD",
            ERROR_INTERNAL_ERROR => "ERROR_INTERNAL_ERROR",
            ERROR_FILE_CORRUPT => "ERROR_FILE_CORRUPT",
            ERROR_NO_SYSTEM_RESOURCES => "ERROR_NO_SYSTEM_RESOURCES",
            ERROR_TIMEOUT => "ERROR_TIMEOUT",
            _ => "UNKNOWN_ERROR",
        }
    }
}

impl std::fmt::Display for Win32Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

impl From<Win32Error> for u32 {
    fn from(e: Win32Error) -> u32 {
        e.0
    }
}

/// The three object types that share the one namespace.
///
/// ```
/// assert_eq!(dlock_proto::vocab::ObjectKind::Mutex.to_string(), "mutex");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ObjectKind {
    /// A mutex (`CreateMutex`): owned by one (session, thread) at a time, recursive, abandoned
    /// when its owner goes away.
    Mutex,
    /// An event (`CreateEvent`): manual-reset or auto-reset.
    Event,
    /// A counting semaphore with a maximum (`CreateSemaphore`).
    Semaphore,
}

impl ObjectKind {
    /// The type's `…_ALL_ACCESS` mask, which the non-`Ex` create calls ask for.
    pub fn all_access(self) -> DWORD {
        access::rights(self).all
    }

    /// The wire value of this kind.
    pub fn to_wire(self) -> crate::v1::ObjectKind {
        match self {
            ObjectKind::Mutex => crate::v1::ObjectKind::Mutex,
            ObjectKind::Event => crate::v1::ObjectKind::Event,
            ObjectKind::Semaphore => crate::v1::ObjectKind::Semaphore,
        }
    }

    /// Decodes a wire value; `None` for `UNSPECIFIED` and for values this build does not know.
    pub fn from_wire(value: i32) -> Option<ObjectKind> {
        match crate::v1::ObjectKind::try_from(value) {
            Ok(crate::v1::ObjectKind::Mutex) => Some(ObjectKind::Mutex),
            Ok(crate::v1::ObjectKind::Event) => Some(ObjectKind::Event),
            Ok(crate::v1::ObjectKind::Semaphore) => Some(ObjectKind::Semaphore),
            _ => None,
        }
    }
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObjectKind::Mutex => "mutex",
            ObjectKind::Event => "event",
            ObjectKind::Semaphore => "semaphore",
        })
    }
}

/// The `DWORD` a Win32 wait function returns when the object at `index` satisfied it
/// (`WAIT_OBJECT_0 + index`, or `WAIT_ABANDONED_0 + index` for an abandoned mutex).
pub fn wait_result(index: u32, abandoned: bool) -> DWORD {
    if abandoned {
        WAIT_ABANDONED_0 + index
    } else {
        WAIT_OBJECT_0 + index
    }
}

//! Win32 numeric constants (win32-semantics.md §1) and the access-mask arithmetic of §1.3.
//!
//! Everything the namespace puts on the wire as a number is named here: wait results, last-error
//! codes, access rights and creation flags. The values are Windows' own, so a client can hand
//! them to an application unchanged.

use super::types::{ObjectKind, WaitOutcome};

// ---------------------------------------------------------------------------------------------
// §1.1 Wait results and limits.
// ---------------------------------------------------------------------------------------------

/// `WAIT_OBJECT_0`: the wait succeeded; add the array index for multiple-object waits.
pub const WAIT_OBJECT_0: u32 = 0x0000_0000;
/// `WAIT_ABANDONED_0`: the wait acquired an abandoned mutex; add the array index for wait-any.
pub const WAIT_ABANDONED_0: u32 = 0x0000_0080;
/// `WAIT_ABANDONED`: the single-object spelling of [`WAIT_ABANDONED_0`].
pub const WAIT_ABANDONED: u32 = WAIT_ABANDONED_0;
/// `WAIT_IO_COMPLETION`: an alertable wait was interrupted by an APC (never produced by dlock).
pub const WAIT_IO_COMPLETION: u32 = 0x0000_00C0;
/// `WAIT_TIMEOUT`: the timeout elapsed (or a poll found nothing signaled).
pub const WAIT_TIMEOUT: u32 = 0x0000_0102;
/// `WAIT_FAILED`: the wait failed; the last error says why.
pub const WAIT_FAILED: u32 = 0xFFFF_FFFF;
/// `INFINITE`: a timeout that never expires.
pub const INFINITE: u32 = 0xFFFF_FFFF;
/// `MAXIMUM_WAIT_OBJECTS`: the most handles one wait may name.
pub const MAXIMUM_WAIT_OBJECTS: usize = 64;
/// `MAX_PATH`: the longest accepted object name, in UTF-16 code units (§3.2).
pub const MAX_PATH: usize = 260;

// ---------------------------------------------------------------------------------------------
// §1.2 Error codes.
// ---------------------------------------------------------------------------------------------

/// 0: success (a create that made a new object).
pub const ERROR_SUCCESS: u32 = 0;
/// 2: `Open*` found no object of that name.
pub const ERROR_FILE_NOT_FOUND: u32 = 2;
/// 3: a name with a backslash other than the `Global\` prefix (`a\b`, `X\`, `global\X`).
pub const ERROR_PATH_NOT_FOUND: u32 = 3;
/// 5: the handle or the requested access mask lacks a needed right.
pub const ERROR_ACCESS_DENIED: u32 = 5;
/// 6: bad, closed, foreign or wrong-type handle; name held by another object type.
pub const ERROR_INVALID_HANDLE: u32 = 6;
/// 87: invalid parameter (counts, missing name, wait-all duplicates, `Local\` names here).
pub const ERROR_INVALID_PARAMETER: u32 = 87;
/// 123: malformed name (empty component, interior NUL, `Global\` alone).
pub const ERROR_INVALID_NAME: u32 = 123;
/// 161: a name starting with a backslash.
pub const ERROR_BAD_PATHNAME: u32 = 161;
/// 183: a create opened an existing object of the same type (reported with a valid handle).
pub const ERROR_ALREADY_EXISTS: u32 = 183;
/// 206: a name longer than [`MAX_PATH`] UTF-16 code units.
pub const ERROR_FILENAME_EXCED_RANGE: u32 = 206;
/// 288: `ReleaseMutex` by a thread that does not own the mutex.
pub const ERROR_NOT_OWNER: u32 = 288;
/// 298: `ReleaseSemaphore` would push the count over the maximum.
pub const ERROR_TOO_MANY_POSTS: u32 = 298;
/// 587: a mutex's recursion count would exceed [`MUTEX_RECURSION_MAX`].
pub const ERROR_MUTANT_LIMIT_EXCEEDED: u32 = 587;
/// 1314: `ACCESS_SYSTEM_SECURITY` was requested (dlock grants no privileges).
pub const ERROR_PRIVILEGE_NOT_HELD: u32 = 1314;
/// 1450: a dlock resource limit (handles, waits, objects, sessions) was reached; nothing changed.
pub const ERROR_NO_SYSTEM_RESOURCES: u32 = 1450;

/// The highest mutex recursion count (§4.2: `MINLONG` acquisitions). One more acquisition by the
/// owner fails with `WAIT_FAILED` / [`ERROR_MUTANT_LIMIT_EXCEEDED`] and changes nothing.
pub const MUTEX_RECURSION_MAX: u32 = 0x7FFF_FFFF;

// ---------------------------------------------------------------------------------------------
// §1.3 Access rights.
// ---------------------------------------------------------------------------------------------

/// `DELETE`.
pub const DELETE: u32 = 0x0001_0000;
/// `READ_CONTROL` (= `STANDARD_RIGHTS_READ/WRITE/EXECUTE`).
pub const READ_CONTROL: u32 = 0x0002_0000;
/// `WRITE_DAC`.
pub const WRITE_DAC: u32 = 0x0004_0000;
/// `WRITE_OWNER`.
pub const WRITE_OWNER: u32 = 0x0008_0000;
/// `SYNCHRONIZE`: required by every wait.
pub const SYNCHRONIZE: u32 = 0x0010_0000;
/// `STANDARD_RIGHTS_REQUIRED`.
pub const STANDARD_RIGHTS_REQUIRED: u32 = 0x000F_0000;
/// `ACCESS_SYSTEM_SECURITY`: always refused with [`ERROR_PRIVILEGE_NOT_HELD`].
pub const ACCESS_SYSTEM_SECURITY: u32 = 0x0100_0000;
/// `MAXIMUM_ALLOWED`: grants the type's `…_ALL_ACCESS` (dlock has no security descriptors).
pub const MAXIMUM_ALLOWED: u32 = 0x0200_0000;
/// `GENERIC_ALL`.
pub const GENERIC_ALL: u32 = 0x1000_0000;
/// `GENERIC_EXECUTE`.
pub const GENERIC_EXECUTE: u32 = 0x2000_0000;
/// `GENERIC_WRITE`.
pub const GENERIC_WRITE: u32 = 0x4000_0000;
/// `GENERIC_READ`.
pub const GENERIC_READ: u32 = 0x8000_0000;
/// `MUTANT_QUERY_STATE`.
pub const MUTANT_QUERY_STATE: u32 = 0x0001;
/// `MUTEX_MODIFY_STATE` (same bit as `MUTANT_QUERY_STATE`; "reserved for future use").
pub const MUTEX_MODIFY_STATE: u32 = 0x0001;
/// `MUTEX_ALL_ACCESS` (= `MUTANT_ALL_ACCESS`).
pub const MUTEX_ALL_ACCESS: u32 = 0x001F_0001;
/// `EVENT_QUERY_STATE`.
pub const EVENT_QUERY_STATE: u32 = 0x0001;
/// `EVENT_MODIFY_STATE`: required by `SetEvent`, `ResetEvent` and `PulseEvent`.
pub const EVENT_MODIFY_STATE: u32 = 0x0002;
/// `EVENT_ALL_ACCESS`.
pub const EVENT_ALL_ACCESS: u32 = 0x001F_0003;
/// `SEMAPHORE_QUERY_STATE`.
pub const SEMAPHORE_QUERY_STATE: u32 = 0x0001;
/// `SEMAPHORE_MODIFY_STATE`: required by `ReleaseSemaphore`.
pub const SEMAPHORE_MODIFY_STATE: u32 = 0x0002;
/// `SEMAPHORE_ALL_ACCESS`.
pub const SEMAPHORE_ALL_ACCESS: u32 = 0x001F_0003;

// ---------------------------------------------------------------------------------------------
// §1.4 Flags.
// ---------------------------------------------------------------------------------------------

/// `CREATE_MUTEX_INITIAL_OWNER` (`CreateMutexEx dwFlags`).
pub const CREATE_MUTEX_INITIAL_OWNER: u32 = 0x0000_0001;
/// `CREATE_EVENT_MANUAL_RESET` (`CreateEventEx dwFlags`).
pub const CREATE_EVENT_MANUAL_RESET: u32 = 0x0000_0001;
/// `CREATE_EVENT_INITIAL_SET` (`CreateEventEx dwFlags`).
pub const CREATE_EVENT_INITIAL_SET: u32 = 0x0000_0002;

/// The type's rights table (shared with the client's local backend).
fn rights(kind: ObjectKind) -> &'static dlock_proto::access::Rights {
    match kind {
        ObjectKind::Mutex => &dlock_proto::access::MUTEX,
        ObjectKind::Event => &dlock_proto::access::EVENT,
        ObjectKind::Semaphore => &dlock_proto::access::SEMAPHORE,
    }
}

/// The type's `…_ALL_ACCESS` mask: everything a handle to it can ever be granted.
pub fn all_access(kind: ObjectKind) -> u32 {
    rights(kind).all
}

/// Replaces the four generic rights in `access` by the type's specific rights (§1.3, Wine's type
/// descriptors). Every other bit is kept as it is.
pub fn map_generic_access(kind: ObjectKind, access: u32) -> u32 {
    dlock_proto::access::map_generic(rights(kind), access)
}

/// The access a handle to an *existing* object receives (`Open*`, or a create that found the
/// name), after the access check of §2.1: the request is mapped, `MAXIMUM_ALLOWED` grants the
/// type's `…_ALL_ACCESS`, and the result must be non-empty and within `…_ALL_ACCESS`.
///
/// # Errors
///
/// [`ERROR_PRIVILEGE_NOT_HELD`] for `ACCESS_SYSTEM_SECURITY`; [`ERROR_ACCESS_DENIED`] for an
/// empty request or one with undefined specific bits or reserved bits.
pub fn existing_object_access(kind: ObjectKind, access: u32) -> Result<u32, u32> {
    dlock_proto::access::existing_object(rights(kind), access)
}

/// The access the creator's handle to a *new* object receives: Windows grants the requested
/// access to the creator without a check (§2.1 `CreateMutexEx`), so the mapped request is granted
/// as it is (even 0, which yields a handle that can do nothing but be closed).
///
/// # Errors
///
/// [`ERROR_PRIVILEGE_NOT_HELD`] for `ACCESS_SYSTEM_SECURITY`.
pub fn new_object_access(kind: ObjectKind, access: u32) -> Result<u32, u32> {
    dlock_proto::access::new_object(rights(kind), access)
}

/// The `DWORD` a Win32 wait function returns for this outcome (`WAIT_OBJECT_0 + i`,
/// `WAIT_ABANDONED_0 + i`, `WAIT_TIMEOUT` or `WAIT_FAILED`).
pub fn wait_result_code(outcome: &WaitOutcome) -> u32 {
    match outcome {
        WaitOutcome::Signaled { index, .. } => WAIT_OBJECT_0 + index,
        WaitOutcome::Abandoned { index, .. } => WAIT_ABANDONED_0 + index,
        WaitOutcome::TimedOut => WAIT_TIMEOUT,
        WaitOutcome::Failed(_) => WAIT_FAILED,
    }
}

/// The symbolic name of a last-error code this module defines, for logs and test output.
pub fn error_name(code: u32) -> &'static str {
    match code {
        ERROR_SUCCESS => "ERROR_SUCCESS",
        ERROR_FILE_NOT_FOUND => "ERROR_FILE_NOT_FOUND",
        ERROR_PATH_NOT_FOUND => "ERROR_PATH_NOT_FOUND",
        ERROR_ACCESS_DENIED => "ERROR_ACCESS_DENIED",
        ERROR_INVALID_HANDLE => "ERROR_INVALID_HANDLE",
        ERROR_INVALID_PARAMETER => "ERROR_INVALID_PARAMETER",
        ERROR_INVALID_NAME => "ERROR_INVALID_NAME",
        ERROR_BAD_PATHNAME => "ERROR_BAD_PATHNAME",
        ERROR_ALREADY_EXISTS => "ERROR_ALREADY_EXISTS",
        ERROR_FILENAME_EXCED_RANGE => "ERROR_FILENAME_EXCED_RANGE",
        ERROR_NOT_OWNER => "ERROR_NOT_OWNER",
        ERROR_TOO_MANY_POSTS => "ERROR_TOO_MANY_POSTS",
        ERROR_MUTANT_LIMIT_EXCEEDED => "ERROR_MUTANT_LIMIT_EXCEEDED",
        ERROR_PRIVILEGE_NOT_HELD => "ERROR_PRIVILEGE_NOT_HELD",
        ERROR_NO_SYSTEM_RESOURCES => "ERROR_NO_SYSTEM_RESOURCES",
        _ => "UNKNOWN_ERROR",
    }
}

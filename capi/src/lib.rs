//! `libdlock`: the C ABI of the blocking Win32 facade (`dlock::win32`), declared by
//! `include/dlock/windows.h`, so that C and C++ written for Windows' named mutexes, events and
//! semaphores compiles unchanged on Linux (`include/compat/windows.h`) and runs against a dlock
//! cluster.
//!
//! Every function here converts its C arguments and calls the facade function of the same name;
//! the semantics are the facade's (per-thread last error and mutex ownership, abandonment when
//! an owning thread exits, configuration by `DLOCK_*` environment variables). They hold for
//! threads created by C too: the facade's per-thread state lives in Rust thread-locals, whose
//! destructors glibc runs at the exit of any thread, pthreads and C11 threads included.
//!
//! Names: `A` names are NUL-terminated UTF-8 (invalid UTF-8 fails with `ERROR_INVALID_NAME`),
//! `W` names NUL-terminated UTF-16. A name is read up to its terminator or to the longest name
//! Win32 allows (`MAX_PATH` UTF-16 units), whichever comes first, so a missing terminator
//! cannot make the library read far beyond the name.
//!
//! This crate and `dlock-local` are the only ones with `unsafe` code: here it is the reading of
//! the pointers C passes, each under the contract its Win32 function documents.

#![allow(non_snake_case)]

use std::ffi::{c_char, c_void};

use dlock_client::win32::{self as w, BOOL, DWORD, LONG};
use dlock_proto::vocab::{
    ERROR_FILENAME_EXCED_RANGE, ERROR_INTERNAL_ERROR, ERROR_INVALID_NAME, MAX_PATH,
};

/// `HANDLE`: an opaque pointer-sized value (the facade's handle number).
pub type HANDLE = *mut c_void;

/// `SECURITY_ATTRIBUTES`, as C lays it out. Accepted and ignored (see the header).
#[repr(C)]
pub struct SECURITY_ATTRIBUTES {
    /// Size of the structure.
    pub nLength: DWORD,
    /// A security descriptor (ignored).
    pub lpSecurityDescriptor: *mut c_void,
    /// Inheritable handle (ignored: dlock handles are never inherited).
    pub bInheritHandle: BOOL,
}

/// The longest `A` name in bytes: `MAX_PATH` UTF-16 units take at most 3 bytes each in UTF-8
/// (a 4-byte character is 2 units).
const NAME_BYTES_MAX: usize = 3 * MAX_PATH as usize;

fn from_handle(h: HANDLE) -> w::HANDLE {
    h.addr() as w::HANDLE
}

fn to_handle(h: w::HANDLE) -> HANDLE {
    std::ptr::without_provenance_mut(h as usize)
}

/// Runs `body`; a panic (a bug) must not unwind into C, where it would abort the process:
/// the call fails instead, with `failure` and `ERROR_INTERNAL_ERROR`.
fn guard<T>(failure: T, body: impl FnOnce() -> T) -> T {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or_else(|_| {
        w::SetLastError(ERROR_INTERNAL_ERROR);
        failure
    })
}

/// Why a C name could not be read.
enum BadName {
    TooLong,
    NotUtf8,
}

impl BadName {
    /// Sets the last error for this failure and returns NULL, as the create and open functions
    /// fail.
    fn fail(self) -> HANDLE {
        w::SetLastError(match self {
            BadName::TooLong => ERROR_FILENAME_EXCED_RANGE,
            BadName::NotUtf8 => ERROR_INVALID_NAME,
        });
        std::ptr::null_mut()
    }
}

/// Reads an `A` name: `None` for NULL.
///
/// # Safety
///
/// `name` is NULL or points to a NUL-terminated string, or to at least
/// [`NAME_BYTES_MAX`] + 1 readable bytes.
unsafe fn name_a<'a>(name: *const c_char) -> Result<Option<&'a str>, BadName> {
    if name.is_null() {
        return Ok(None);
    }
    let mut len = 0;
    // SAFETY: per the contract, every byte up to the terminator (or up to the bound, which is
    // checked before the read) is readable.
    while unsafe { *name.add(len) } != 0 {
        len += 1;
        if len > NAME_BYTES_MAX {
            return Err(BadName::TooLong);
        }
    }
    // SAFETY: the `len` bytes before the terminator were just read.
    let bytes = unsafe { std::slice::from_raw_parts(name.cast::<u8>(), len) };
    std::str::from_utf8(bytes)
        .map(Some)
        .map_err(|_| BadName::NotUtf8)
}

/// Reads a `W` name: `None` for NULL.
///
/// # Safety
///
/// `name` is NULL or points to a NUL-terminated UTF-16 string, or to at least `MAX_PATH` + 1
/// readable units.
unsafe fn name_w<'a>(name: *const u16) -> Result<Option<&'a [u16]>, BadName> {
    if name.is_null() {
        return Ok(None);
    }
    let mut len = 0;
    // SAFETY: as in `name_a`, for 16-bit units.
    while unsafe { *name.add(len) } != 0 {
        len += 1;
        if len > MAX_PATH as usize {
            return Err(BadName::TooLong);
        }
    }
    // SAFETY: the `len` units before the terminator were just read.
    Ok(Some(unsafe { std::slice::from_raw_parts(name, len) }))
}

/// Runs `call` with the name read from `name` (an `A` or `W` reader), or fails as a create or
/// open fails.
macro_rules! with_name {
    ($reader:ident, $name:expr, |$n:ident| $call:expr) => {
        // SAFETY: the caller of the exported function passes a name as its Win32 contract
        // says (see `name_a` / `name_w`).
        match unsafe { $reader($name) } {
            Ok($n) => guard(std::ptr::null_mut(), || to_handle($call)),
            Err(bad) => bad.fail(),
        }
    };
}

/// `CreateMutexA`.
///
/// # Safety
///
/// `lpName` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn CreateMutexA(
    _lpMutexAttributes: *const SECURITY_ATTRIBUTES,
    bInitialOwner: BOOL,
    lpName: *const c_char,
) -> HANDLE {
    with_name!(name_a, lpName, |n| w::CreateMutexA(None, bInitialOwner, n))
}

/// `CreateMutexW`.
///
/// # Safety
///
/// `lpName` is NULL or a NUL-terminated UTF-16 string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn CreateMutexW(
    _lpMutexAttributes: *const SECURITY_ATTRIBUTES,
    bInitialOwner: BOOL,
    lpName: *const u16,
) -> HANDLE {
    with_name!(name_w, lpName, |n| w::CreateMutexW(None, bInitialOwner, n))
}

/// `CreateMutexExA`.
///
/// # Safety
///
/// As [`CreateMutexA`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn CreateMutexExA(
    _lpMutexAttributes: *const SECURITY_ATTRIBUTES,
    lpName: *const c_char,
    dwFlags: DWORD,
    dwDesiredAccess: DWORD,
) -> HANDLE {
    with_name!(name_a, lpName, |n| w::CreateMutexExA(
        None,
        n,
        dwFlags,
        dwDesiredAccess
    ))
}

/// `CreateMutexExW`.
///
/// # Safety
///
/// As [`CreateMutexW`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn CreateMutexExW(
    _lpMutexAttributes: *const SECURITY_ATTRIBUTES,
    lpName: *const u16,
    dwFlags: DWORD,
    dwDesiredAccess: DWORD,
) -> HANDLE {
    with_name!(name_w, lpName, |n| w::CreateMutexExW(
        None,
        n,
        dwFlags,
        dwDesiredAccess
    ))
}

/// `OpenMutexA`.
///
/// # Safety
///
/// As [`CreateMutexA`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn OpenMutexA(
    dwDesiredAccess: DWORD,
    bInheritHandle: BOOL,
    lpName: *const c_char,
) -> HANDLE {
    with_name!(name_a, lpName, |n| w::OpenMutexA(
        dwDesiredAccess,
        bInheritHandle,
        n
    ))
}

/// `OpenMutexW`.
///
/// # Safety
///
/// As [`CreateMutexW`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn OpenMutexW(
    dwDesiredAccess: DWORD,
    bInheritHandle: BOOL,
    lpName: *const u16,
) -> HANDLE {
    with_name!(name_w, lpName, |n| w::OpenMutexW(
        dwDesiredAccess,
        bInheritHandle,
        n
    ))
}

/// `ReleaseMutex`.
#[unsafe(no_mangle)]
pub extern "C" fn ReleaseMutex(hMutex: HANDLE) -> BOOL {
    guard(w::FALSE, || w::ReleaseMutex(from_handle(hMutex)))
}

/// `CreateEventA`.
///
/// # Safety
///
/// As [`CreateMutexA`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn CreateEventA(
    _lpEventAttributes: *const SECURITY_ATTRIBUTES,
    bManualReset: BOOL,
    bInitialState: BOOL,
    lpName: *const c_char,
) -> HANDLE {
    with_name!(name_a, lpName, |n| w::CreateEventA(
        None,
        bManualReset,
        bInitialState,
        n
    ))
}

/// `CreateEventW`.
///
/// # Safety
///
/// As [`CreateMutexW`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn CreateEventW(
    _lpEventAttributes: *const SECURITY_ATTRIBUTES,
    bManualReset: BOOL,
    bInitialState: BOOL,
    lpName: *const u16,
) -> HANDLE {
    with_name!(name_w, lpName, |n| w::CreateEventW(
        None,
        bManualReset,
        bInitialState,
        n
    ))
}

/// `CreateEventExA`.
///
/// # Safety
///
/// As [`CreateMutexA`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn CreateEventExA(
    _lpEventAttributes: *const SECURITY_ATTRIBUTES,
    lpName: *const c_char,
    dwFlags: DWORD,
    dwDesiredAccess: DWORD,
) -> HANDLE {
    with_name!(name_a, lpName, |n| w::CreateEventExA(
        None,
        n,
        dwFlags,
        dwDesiredAccess
    ))
}

/// `CreateEventExW`.
///
/// # Safety
///
/// As [`CreateMutexW`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn CreateEventExW(
    _lpEventAttributes: *const SECURITY_ATTRIBUTES,
    lpName: *const u16,
    dwFlags: DWORD,
    dwDesiredAccess: DWORD,
) -> HANDLE {
    with_name!(name_w, lpName, |n| w::CreateEventExW(
        None,
        n,
        dwFlags,
        dwDesiredAccess
    ))
}

/// `OpenEventA`.
///
/// # Safety
///
/// As [`CreateMutexA`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn OpenEventA(
    dwDesiredAccess: DWORD,
    bInheritHandle: BOOL,
    lpName: *const c_char,
) -> HANDLE {
    with_name!(name_a, lpName, |n| w::OpenEventA(
        dwDesiredAccess,
        bInheritHandle,
        n
    ))
}

/// `OpenEventW`.
///
/// # Safety
///
/// As [`CreateMutexW`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn OpenEventW(
    dwDesiredAccess: DWORD,
    bInheritHandle: BOOL,
    lpName: *const u16,
) -> HANDLE {
    with_name!(name_w, lpName, |n| w::OpenEventW(
        dwDesiredAccess,
        bInheritHandle,
        n
    ))
}

/// `SetEvent`.
#[unsafe(no_mangle)]
pub extern "C" fn SetEvent(hEvent: HANDLE) -> BOOL {
    guard(w::FALSE, || w::SetEvent(from_handle(hEvent)))
}

/// `ResetEvent`.
#[unsafe(no_mangle)]
pub extern "C" fn ResetEvent(hEvent: HANDLE) -> BOOL {
    guard(w::FALSE, || w::ResetEvent(from_handle(hEvent)))
}

/// `PulseEvent`.
#[unsafe(no_mangle)]
pub extern "C" fn PulseEvent(hEvent: HANDLE) -> BOOL {
    guard(w::FALSE, || w::PulseEvent(from_handle(hEvent)))
}

/// `CreateSemaphoreA`.
///
/// # Safety
///
/// As [`CreateMutexA`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn CreateSemaphoreA(
    _lpSemaphoreAttributes: *const SECURITY_ATTRIBUTES,
    lInitialCount: LONG,
    lMaximumCount: LONG,
    lpName: *const c_char,
) -> HANDLE {
    with_name!(name_a, lpName, |n| w::CreateSemaphoreA(
        None,
        lInitialCount,
        lMaximumCount,
        n
    ))
}

/// `CreateSemaphoreW`.
///
/// # Safety
///
/// As [`CreateMutexW`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn CreateSemaphoreW(
    _lpSemaphoreAttributes: *const SECURITY_ATTRIBUTES,
    lInitialCount: LONG,
    lMaximumCount: LONG,
    lpName: *const u16,
) -> HANDLE {
    with_name!(name_w, lpName, |n| w::CreateSemaphoreW(
        None,
        lInitialCount,
        lMaximumCount,
        n
    ))
}

/// `CreateSemaphoreExA`.
///
/// # Safety
///
/// As [`CreateMutexA`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn CreateSemaphoreExA(
    _lpSemaphoreAttributes: *const SECURITY_ATTRIBUTES,
    lInitialCount: LONG,
    lMaximumCount: LONG,
    lpName: *const c_char,
    dwFlags: DWORD,
    dwDesiredAccess: DWORD,
) -> HANDLE {
    with_name!(name_a, lpName, |n| w::CreateSemaphoreExA(
        None,
        lInitialCount,
        lMaximumCount,
        n,
        dwFlags,
        dwDesiredAccess
    ))
}

/// `CreateSemaphoreExW`.
///
/// # Safety
///
/// As [`CreateMutexW`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn CreateSemaphoreExW(
    _lpSemaphoreAttributes: *const SECURITY_ATTRIBUTES,
    lInitialCount: LONG,
    lMaximumCount: LONG,
    lpName: *const u16,
    dwFlags: DWORD,
    dwDesiredAccess: DWORD,
) -> HANDLE {
    with_name!(name_w, lpName, |n| w::CreateSemaphoreExW(
        None,
        lInitialCount,
        lMaximumCount,
        n,
        dwFlags,
        dwDesiredAccess
    ))
}

/// `OpenSemaphoreA`.
///
/// # Safety
///
/// As [`CreateMutexA`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn OpenSemaphoreA(
    dwDesiredAccess: DWORD,
    bInheritHandle: BOOL,
    lpName: *const c_char,
) -> HANDLE {
    with_name!(name_a, lpName, |n| w::OpenSemaphoreA(
        dwDesiredAccess,
        bInheritHandle,
        n
    ))
}

/// `OpenSemaphoreW`.
///
/// # Safety
///
/// As [`CreateMutexW`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn OpenSemaphoreW(
    dwDesiredAccess: DWORD,
    bInheritHandle: BOOL,
    lpName: *const u16,
) -> HANDLE {
    with_name!(name_w, lpName, |n| w::OpenSemaphoreW(
        dwDesiredAccess,
        bInheritHandle,
        n
    ))
}

/// `ReleaseSemaphore`.
///
/// # Safety
///
/// `lpPreviousCount` is NULL or points to a writable `LONG`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ReleaseSemaphore(
    hSemaphore: HANDLE,
    lReleaseCount: LONG,
    lpPreviousCount: *mut LONG,
) -> BOOL {
    guard(w::FALSE, || {
        // SAFETY: NULL or a writable LONG, per the contract.
        let previous = unsafe { lpPreviousCount.as_mut() };
        w::ReleaseSemaphore(from_handle(hSemaphore), lReleaseCount, previous)
    })
}

/// `WaitForSingleObject`.
#[unsafe(no_mangle)]
pub extern "C" fn WaitForSingleObject(hHandle: HANDLE, dwMilliseconds: DWORD) -> DWORD {
    guard(w::WAIT_FAILED, || {
        w::WaitForSingleObject(from_handle(hHandle), dwMilliseconds)
    })
}

/// `WaitForMultipleObjects`.
///
/// # Safety
///
/// `lpHandles` points to `nCount` handles (it may be NULL only if `nCount` is 0, which fails
/// with `ERROR_INVALID_PARAMETER` as on Windows).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WaitForMultipleObjects(
    nCount: DWORD,
    lpHandles: *const HANDLE,
    bWaitAll: BOOL,
    dwMilliseconds: DWORD,
) -> DWORD {
    guard(w::WAIT_FAILED, || {
        let handles: Vec<w::HANDLE> =
            if lpHandles.is_null() || nCount == 0 || nCount > w::MAXIMUM_WAIT_OBJECTS {
                // The facade refuses an empty or oversized list with 87; do not read the pointer.
                Vec::new()
            } else {
                // SAFETY: `nCount` (at most 64) handles are readable at `lpHandles`, per the contract.
                unsafe { std::slice::from_raw_parts(lpHandles, nCount as usize) }
                    .iter()
                    .map(|&h| from_handle(h))
                    .collect()
            };
        w::WaitForMultipleObjects(&handles, bWaitAll, dwMilliseconds)
    })
}

/// `SignalObjectAndWait`.
#[unsafe(no_mangle)]
pub extern "C" fn SignalObjectAndWait(
    hObjectToSignal: HANDLE,
    hObjectToWaitOn: HANDLE,
    dwMilliseconds: DWORD,
    bAlertable: BOOL,
) -> DWORD {
    guard(w::WAIT_FAILED, || {
        w::SignalObjectAndWait(
            from_handle(hObjectToSignal),
            from_handle(hObjectToWaitOn),
            dwMilliseconds,
            bAlertable,
        )
    })
}

/// `CloseHandle`.
#[unsafe(no_mangle)]
pub extern "C" fn CloseHandle(hObject: HANDLE) -> BOOL {
    guard(w::FALSE, || w::CloseHandle(from_handle(hObject)))
}

/// `GetLastError`: the calling thread's last-error code.
#[unsafe(no_mangle)]
pub extern "C" fn GetLastError() -> DWORD {
    w::GetLastError()
}

/// `SetLastError`.
#[unsafe(no_mangle)]
pub extern "C" fn SetLastError(dwErrCode: DWORD) {
    w::SetLastError(dwErrCode)
}

/// dlock's own: the fencing token of the calling thread's grant of a mutex (see the header).
#[unsafe(no_mangle)]
pub extern "C" fn DlockGetFencingToken(hMutex: HANDLE) -> u64 {
    guard(0, || w::GetFencingToken(from_handle(hMutex)))
}

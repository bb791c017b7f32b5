//! The create and open calls of the facade (`CreateMutexA` ... `OpenSemaphoreW`, the `Ex`
//! forms), and the handle-table bookkeeping they share with the other calls.

use super::*;

/// The shared body of every create: name checks, then create-or-open on the current session.
pub(super) fn create(
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
    let local_route = name.as_deref().is_none_or(str::is_empty)
        || matches!(route(name.as_deref()), Ok(Route::Local(_)));
    if local_route && local::in_forked_child() {
        return fail(ERROR_NOT_SUPPORTED, NULL);
    }
    // An unnamed object (`NULL` or `""`) is private to this process: the local engine serves
    // it, with no network and no cluster needed (docs/win32-semantics.md §3.3).
    if name.as_deref().is_none_or(str::is_empty) {
        let created =
            local::namespace().and_then(|seg| local::create_unnamed(seg, &params, access));
        return match created {
            Ok(obj) => {
                let handle = insert_slot(Slot::Local(obj));
                thread::set_last_error(ERROR_SUCCESS);
                handle
            }
            Err(code) => fail(code, NULL),
        };
    }
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
pub(super) fn open(
    kind: ObjectKind,
    access: u32,
    name: Result<Option<String>, Win32Error>,
) -> HANDLE {
    let name = match name {
        Ok(Some(name)) => name,
        Ok(None) => return fail(ERROR_INVALID_PARAMETER, NULL),
        Err(code) => return fail(code, NULL),
    };
    if !HANDLES.lock().unwrap_or_else(|e| e.into_inner()).has_room() {
        return fail(ERROR_NO_SYSTEM_RESOURCES, NULL);
    }
    if let Ok(Route::Local(key)) = route(Some(&name)) {
        if local::in_forked_child() {
            return fail(ERROR_NOT_SUPPORTED, NULL);
        }
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

pub(super) fn insert_handle(session: Session, id: u64, kind: ObjectKind) -> HANDLE {
    insert_slot(Slot::Remote(Entry { session, id, kind }))
}

pub(super) fn insert_slot(slot: Slot) -> HANDLE {
    HANDLES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(slot)
}

/// Runs `op` if `handle` is a local handle (of `kind`, if given); `None` for a cluster handle.
/// Lookup failures are `Some(Err(6))`, as the cluster path would report them.
#[inline]
pub(super) fn on_local<T>(
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
    if local::in_forked_child() {
        return Some(Err(Win32Error::NOT_SUPPORTED));
    }
    Some(with_segment(|seg| op(seg, obj)))
}

/// Runs `op` on the attached local namespace; 6 if there is none (no local handle can exist
/// then).
pub(super) fn with_segment<T>(
    op: impl FnOnce(&'static Segment) -> Result<T, Win32Error>,
) -> Result<T, Win32Error> {
    local::attached()
        .ok_or(Win32Error::INVALID_HANDLE)
        .and_then(op)
}

pub(super) fn mutex_flags(initial_owner: BOOL) -> u32 {
    if is_true(initial_owner) {
        CREATE_MUTEX_INITIAL_OWNER
    } else {
        0
    }
}

pub(super) fn event_flags(manual_reset: BOOL, initial_state: BOOL) -> u32 {
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

/// [`CreateSemaphoreA`] with reserved flags (ignored: `CreateParams::from_flags` keeps only
/// the counts for a semaphore) and an access mask.
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

//! The facade's calls on handles: `ReleaseMutex`, the event and semaphore calls,
//! `CloseHandle`, the waits (`WaitForSingleObject`, `WaitForMultipleObjects`,
//! `SignalObjectAndWait`) and `GetFencingToken`.

use super::create::{on_local, with_segment};
use super::*;

// ---- Operations on handles ----

/// Runs `op` on the session and server id behind `handle` (which must be of `kind`, if
/// given). Failure codes: 6 for a bad handle; [`Error::code`] otherwise (a session lost during
/// the call gives 1236).
pub(super) fn with_handle<T, F, Fut>(
    handle: HANDLE,
    kind: Option<ObjectKind>,
    op: F,
) -> Result<T, Win32Error>
where
    F: FnOnce(Session, u64) -> Fut + Send,
    Fut: Future<Output = Result<T, Error>>,
    T: Send,
{
    let entry = resolve(handle, kind)?;
    block_on(|_| async move {
        op(entry.session, entry.id)
            .await
            .map_err(|e| e.win32_error())
    })
}

pub(super) fn to_bool(result: Result<(), Win32Error>) -> BOOL {
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
            // A forked child shares its parent's process record: closing would close the
            // parent's handle.
            if local::in_forked_child() {
                return fail(ERROR_NOT_SUPPORTED, FALSE);
            }
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
pub(super) fn resolve_all(handles: &[HANDLE]) -> Result<(Session, Vec<u64>), Win32Error> {
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

pub(super) fn wait_result(result: Result<crate::WaitOutcome, Win32Error>) -> DWORD {
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
        && !local::in_forked_child()
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
pub(super) fn local_wait_set(handles: &[HANDLE]) -> Result<Option<Vec<LocalObj>>, Win32Error> {
    let mut local = Vec::with_capacity(handles.len());
    let mut remote = 0;
    for &handle in handles {
        match global::lookup(handle, None)? {
            Slot::Local(obj) => local.push(obj),
            Slot::Remote(_) => remote += 1,
        }
    }
    if !local.is_empty() && local::in_forked_child() {
        return Err(Win32Error::NOT_SUPPORTED);
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
        // Both backends: a wait-any waits on both (a wait-all stays 87, see `mixed`).
        Err(Win32Error::INVALID_PARAMETER) if !is_true(bWaitAll) => {
            return wait_result(super::mixed::wait_any(lpHandles, timeout));
        }
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
        // One handle in each backend: signal, then wait (see `mixed`).
        Err(Win32Error::INVALID_PARAMETER) => {
            return wait_result(super::mixed::signal_and_wait(
                hObjectToSignal,
                hObjectToWaitOn,
                timeout,
            ));
        }
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
/// behind `hMutex`, or 0 if the thread does not own it. For a cluster mutex the token is the
/// Raft log index of the grant (read linearizably); for a `Local\` or unnamed mutex it counts
/// the acquisitions of that one mutex. Either way it grows strictly across successive owners,
/// so a resource that remembers the highest token it has seen can reject a stale owner.
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

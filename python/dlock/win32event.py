"""pywin32's ``win32event`` for dlock: named mutexes, events and semaphores, and the waits.

Names, argument orders, return values and exceptions are pywin32's:

* the create and open functions return a :class:`~dlock.pywintypes.HANDLE`; after a create,
  ``win32api.GetLastError() == winerror.ERROR_ALREADY_EXISTS`` tells that the object existed;
* ``SetEvent``, ``ResetEvent``, ``PulseEvent`` and ``ReleaseMutex`` return None;
  ``ReleaseSemaphore`` returns the previous count;
* ``WaitForSingleObject`` and ``WaitForMultipleObjects`` return the wait result
  (``WAIT_OBJECT_0 + i``, ``WAIT_ABANDONED_0 + i``, ``WAIT_TIMEOUT``); a timeout is a result,
  not an exception;
* every failure raises :class:`~dlock.pywintypes.error` ``(winerror, funcname, strerror)``,
  with ``funcname`` the pywin32 function name (``"OpenMutex"``, ``"WaitForSingleObject"``...).

Handle arguments may be handle objects, integers or None. Names may be str (passed to
libdlock's A functions as UTF-8), bytes, or None where pywin32 allows None (an unnamed object).
Security attributes are accepted and ignored; ``bInheritHandle`` and ``bAlertable`` too.

Every call goes through :class:`ctypes.CDLL`, which **releases the GIL** for its duration: a
thread blocked in a wait does not stop the other Python threads. Mutex ownership belongs to the
calling OS thread (a Python thread is one): release a mutex from the thread that acquired it. A
thread that ends owning mutexes abandons them: the next waiter gets ``WAIT_ABANDONED``.
"""

import ctypes

from . import _args, _lib
from . import pywintypes as _pywintypes
from .pywintypes import PyHANDLE, _as_handle_value, _raise_last_error

error = _pywintypes.error  # as in pywin32, win32event.error is pywintypes.error

# ---- Constants, with pywin32's values (its SWIG module exports DWORDs as C longs, so
# INFINITE and WAIT_FAILED are -1; every DWORD argument accepts -1 as 0xFFFFFFFF). ----

WAIT_FAILED = -1
WAIT_OBJECT_0 = 0
WAIT_ABANDONED = 0x80
WAIT_ABANDONED_0 = 0x80
WAIT_TIMEOUT = 0x102
WAIT_IO_COMPLETION = 0xC0
MAXIMUM_WAIT_OBJECTS = 64
INFINITE = -1

SYNCHRONIZE = 0x00100000
EVENT_ALL_ACCESS = 0x001F0003
EVENT_MODIFY_STATE = 0x0002

# Not exported by pywin32 (scripts write them as numbers), offered here for convenience: the
# access rights and flags of capi/include/dlock/windows.h.
EVENT_QUERY_STATE = 0x0001
MUTEX_ALL_ACCESS = 0x001F0001
MUTEX_MODIFY_STATE = 0x0001
MUTANT_ALL_ACCESS = 0x001F0001
MUTANT_QUERY_STATE = 0x0001
SEMAPHORE_ALL_ACCESS = 0x001F0003
SEMAPHORE_MODIFY_STATE = 0x0002
SEMAPHORE_QUERY_STATE = 0x0001
CREATE_MUTEX_INITIAL_OWNER = 0x00000001
CREATE_EVENT_MANUAL_RESET = 0x00000001
CREATE_EVENT_INITIAL_SET = 0x00000002

_WAIT_FAILED = 0xFFFFFFFF
_INVALID_HANDLE_VALUE = (1 << (8 * ctypes.sizeof(ctypes.c_void_p))) - 1


def _handle_result(value, funcname):
    """The handle object for a create or open result, or the error for NULL (and for
    INVALID_HANDLE_VALUE, which pywin32 also treats as failure). Makes no libdlock call after
    the one that produced ``value``, so GetLastError still tells ERROR_ALREADY_EXISTS."""
    if not value or value == _INVALID_HANDLE_VALUE:
        _raise_last_error(funcname)
    return PyHANDLE._from_api(value)


def _bool_result(ok, funcname):
    if not ok:
        _raise_last_error(funcname)


def _wait_result(rc, funcname):
    if rc == _WAIT_FAILED:
        _raise_last_error(funcname)
    return rc


# ---- Mutexes ----


def CreateMutex(MutexAttributes, InitialOwner, Name):
    """Creates a mutex, or opens the existing one of that name (then GetLastError() is
    ERROR_ALREADY_EXISTS, and ``InitialOwner`` is ignored, as on Windows). Returns a handle."""
    initial = _args.c_int(InitialOwner)
    name = _args.name(Name, True)
    _lib.check_usable()
    return _handle_result(_lib.CreateMutexA(None, initial, name), "CreateMutex")


def CreateMutexEx(MutexAttributes, Name, Flags, DesiredAccess):
    """dlock addition (not in pywin32): ``CreateMutexEx``, with CREATE_MUTEX_INITIAL_OWNER in
    ``Flags`` and the access rights the handle gets."""
    name = _args.name(Name, True)
    flags = _args.dword(Flags)
    access = _args.dword(DesiredAccess)
    _lib.check_usable()
    return _handle_result(_lib.CreateMutexExA(None, name, flags, access), "CreateMutexEx")


def OpenMutex(desiredAccess, bInheritHandle, name):
    """Opens an existing named mutex. Raises error 2 (ERROR_FILE_NOT_FOUND) if there is none,
    6 if the name belongs to another kind of object."""
    access = _args.dword(desiredAccess)
    inherit = _args.c_int(bInheritHandle)
    encoded = _args.name(name, False)
    _lib.check_usable()
    return _handle_result(_lib.OpenMutexA(access, inherit, encoded), "OpenMutex")


def ReleaseMutex(hMutex):
    """Releases the calling thread's ownership of a mutex once. Raises error 288
    (ERROR_NOT_OWNER) if the thread does not own it."""
    h = _as_handle_value(hMutex)
    _lib.check_usable()
    _bool_result(_lib.ReleaseMutex(h), "ReleaseMutex")


# ---- Events ----


def CreateEvent(EventAttributes, bManualReset, bInitialState, Name):
    """Creates an event, or opens the existing one of that name (then GetLastError() is
    ERROR_ALREADY_EXISTS and the other arguments are ignored). Returns a handle."""
    manual = _args.c_int(bManualReset)
    initial = _args.c_int(bInitialState)
    name = _args.name(Name, True)
    _lib.check_usable()
    return _handle_result(_lib.CreateEventA(None, manual, initial, name), "CreateEvent")


def CreateEventEx(EventAttributes, Name, Flags, DesiredAccess):
    """dlock addition (not in pywin32): ``CreateEventEx``, with CREATE_EVENT_MANUAL_RESET and
    CREATE_EVENT_INITIAL_SET in ``Flags``."""
    name = _args.name(Name, True)
    flags = _args.dword(Flags)
    access = _args.dword(DesiredAccess)
    _lib.check_usable()
    return _handle_result(_lib.CreateEventExA(None, name, flags, access), "CreateEventEx")


def OpenEvent(desiredAccess, bInheritHandle, name):
    """Opens an existing named event."""
    access = _args.dword(desiredAccess)
    inherit = _args.c_int(bInheritHandle)
    encoded = _args.name(name, False)
    _lib.check_usable()
    return _handle_result(_lib.OpenEventA(access, inherit, encoded), "OpenEvent")


def SetEvent(hEvent):
    """Sets an event (signaled)."""
    h = _as_handle_value(hEvent)
    _lib.check_usable()
    _bool_result(_lib.SetEvent(h), "SetEvent")


def ResetEvent(hEvent):
    """Resets an event (non-signaled)."""
    h = _as_handle_value(hEvent)
    _lib.check_usable()
    _bool_result(_lib.ResetEvent(h), "ResetEvent")


def PulseEvent(hEvent):
    """Releases the threads waiting on the event right now (one for an auto-reset event) and
    leaves it non-signaled."""
    h = _as_handle_value(hEvent)
    _lib.check_usable()
    _bool_result(_lib.PulseEvent(h), "PulseEvent")


# ---- Semaphores ----


def CreateSemaphore(SemaphoreAttributes, InitialCount, MaximumCount, SemaphoreName):
    """Creates a semaphore, or opens the existing one of that name (then GetLastError() is
    ERROR_ALREADY_EXISTS). Returns a handle."""
    initial = _args.c_int(InitialCount)
    maximum = _args.c_int(MaximumCount)
    name = _args.name(SemaphoreName, True)
    _lib.check_usable()
    return _handle_result(
        _lib.CreateSemaphoreA(None, initial, maximum, name), "CreateSemaphore"
    )


def CreateSemaphoreEx(SemaphoreAttributes, InitialCount, MaximumCount, Name, Flags, DesiredAccess):
    """dlock addition (not in pywin32): ``CreateSemaphoreEx``, with the access rights the
    handle gets (``Flags`` must be 0)."""
    initial = _args.c_int(InitialCount)
    maximum = _args.c_int(MaximumCount)
    name = _args.name(Name, True)
    flags = _args.dword(Flags)
    access = _args.dword(DesiredAccess)
    _lib.check_usable()
    return _handle_result(
        _lib.CreateSemaphoreExA(None, initial, maximum, name, flags, access),
        "CreateSemaphoreEx",
    )


def OpenSemaphore(desiredAccess, bInheritHandle, name):
    """Opens an existing named semaphore."""
    access = _args.dword(desiredAccess)
    inherit = _args.c_int(bInheritHandle)
    encoded = _args.name(name, False)
    _lib.check_usable()
    return _handle_result(_lib.OpenSemaphoreA(access, inherit, encoded), "OpenSemaphore")


def ReleaseSemaphore(hSemaphore, lReleaseCount):
    """Adds ``lReleaseCount`` to a semaphore's count and returns the previous count. Raises
    error 298 (ERROR_TOO_MANY_POSTS) past the maximum, 87 for a count <= 0."""
    h = _as_handle_value(hSemaphore)
    count = _args.c_int(lReleaseCount)
    previous = _lib.LONG(0)
    _lib.check_usable()
    _bool_result(_lib.ReleaseSemaphore(h, count, ctypes.byref(previous)), "ReleaseSemaphore")
    return previous.value


# ---- Waits (the GIL is released while they block) ----


def WaitForSingleObject(hHandle, milliseconds):
    """Waits until the object is signaled or ``milliseconds`` pass (INFINITE: never). Returns
    WAIT_OBJECT_0, WAIT_ABANDONED (an abandoned mutex, now owned by the calling thread) or
    WAIT_TIMEOUT; raises :class:`error` on failure."""
    h = _as_handle_value(hHandle)
    ms = _args.dword(milliseconds)
    _lib.check_usable()
    return _wait_result(_lib.WaitForSingleObject(h, ms), "WaitForSingleObject")


def WaitForSingleObjectEx(hHandle, milliseconds, bAlertable):
    """As :func:`WaitForSingleObject`; ``bAlertable`` is ignored (there are no APCs)."""
    h = _as_handle_value(hHandle)
    ms = _args.dword(milliseconds)
    _args.c_int(bAlertable)
    _lib.check_usable()
    return _wait_result(_lib.WaitForSingleObject(h, ms), "WaitForSingleObjectEx")


def _handle_array(handleList):
    if isinstance(handleList, (str, bytes, dict)) or not hasattr(handleList, "__getitem__"):
        raise TypeError("Handles must be a list of integers")
    try:
        values = [_as_handle_value(item) for item in handleList]
    except TypeError:
        raise TypeError("Handles must be a list of integers") from None
    return len(values), (_lib.HANDLE * len(values))(*values)


def WaitForMultipleObjects(handleList, bWaitAll, milliseconds):
    """Waits for any (``bWaitAll`` false: returns WAIT_OBJECT_0 + i, or WAIT_ABANDONED_0 + i,
    for the lowest-indexed object acquired) or all (true: WAIT_OBJECT_0 or WAIT_ABANDONED_0)
    of 1 to MAXIMUM_WAIT_OBJECTS handles, or until ``milliseconds`` pass (WAIT_TIMEOUT)."""
    count, array = _handle_array(handleList)
    wait_all = _args.c_int(bWaitAll)
    ms = _args.dword(milliseconds)
    _lib.check_usable()
    rc = _lib.WaitForMultipleObjects(count, array, wait_all, ms)
    return _wait_result(rc, "WaitForMultipleObjects")


def WaitForMultipleObjectsEx(handleList, bWaitAll, milliseconds, bAlertable):
    """As :func:`WaitForMultipleObjects`; ``bAlertable`` is ignored."""
    count, array = _handle_array(handleList)
    wait_all = _args.c_int(bWaitAll)
    ms = _args.dword(milliseconds)
    _args.c_int(bAlertable)
    _lib.check_usable()
    rc = _lib.WaitForMultipleObjects(count, array, wait_all, ms)
    return _wait_result(rc, "WaitForMultipleObjectsEx")


def SignalObjectAndWait(hObjectToSignal, hObjectToWaitOn, dwMilliseconds, bAlertable):
    """Atomically signals one object (sets an event, releases a mutex the thread owns, or
    releases a semaphore by one) and waits on another. Returns the wait result, as
    :func:`WaitForSingleObject` does.

    pywin32 declares this function as returning a BOOL, so there it returns None, and raises
    when the wait succeeds with WAIT_OBJECT_0 (0); dlock returns the result instead, and raises
    only on failure (WAIT_FAILED). ``bAlertable`` is ignored."""
    signal = _as_handle_value(hObjectToSignal)
    wait_on = _as_handle_value(hObjectToWaitOn)
    ms = _args.dword(dwMilliseconds)
    alertable = _args.c_int(bAlertable)
    _lib.check_usable()
    rc = _lib.SignalObjectAndWait(signal, wait_on, ms, alertable)
    return _wait_result(rc, "SignalObjectAndWait")


# ---- dlock's own ----


def DlockGetFencingToken(hMutex):
    """dlock addition: the fencing token of the calling thread's current hold of a mutex (it
    grows with every grant: cluster-wide for a named mutex, per mutex for a Local\\ or
    unnamed one), or 0 if the thread does not own it. Raises
    :class:`error` on failure; leaves the last error as it was on success."""
    h = _as_handle_value(hMutex)
    _lib.check_usable()
    saved = _lib.GetLastError()
    _lib.SetLastError(0)
    token = _lib.DlockGetFencingToken(h)
    if token == 0 and _lib.GetLastError() not in (0, 288):
        _raise_last_error("DlockGetFencingToken")
    _lib.SetLastError(saved)
    return token

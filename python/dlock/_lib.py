"""Loading libdlock.so and declaring its C signatures (capi/include/dlock/windows.h).

The library is found, once, at the first import of a module that needs it:

* ``DLOCK_LIBRARY`` (a path to ``libdlock.so``), if set, overrides;
* otherwise the copy bundled inside this package at install time (``dlock/libdlock.so``).

Every function is called through :class:`ctypes.CDLL`, which releases the GIL for the whole
call: a thread blocked in ``WaitForSingleObject`` lets the other Python threads run.

Nothing here calls into the library except the wrappers themselves, so that the last error a
wrapper leaves is the one of the call it made (see :func:`last_error`).
"""

import ctypes
import os

LIBRARY_ENV = "DLOCK_LIBRARY"
BUNDLED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libdlock.so")


def _locate():
    override = os.environ.get(LIBRARY_ENV)
    if override:
        if not os.path.isfile(override):
            raise ImportError(
                f"dlock: {LIBRARY_ENV}={override!r} is not a file; point it at libdlock.so "
                "(`cargo build --release -p dlock-capi` builds target/release/libdlock.so) "
                "or unset it to use the copy installed with this package"
            )
        return override
    if not os.path.isfile(BUNDLED):
        raise ImportError(
            f"dlock: no libdlock.so in the installed package ({BUNDLED}) and {LIBRARY_ENV} is "
            "not set; reinstall with `pip install ./python` from the dlock repository, or set "
            f"{LIBRARY_ENV} to the path of libdlock.so"
        )
    return BUNDLED


PATH = _locate()
try:
    _dll = ctypes.CDLL(PATH)
except OSError as exc:
    raise ImportError(f"dlock: cannot load {PATH}: {exc}") from exc

HANDLE = ctypes.c_void_p
DWORD = ctypes.c_uint32
BOOL = ctypes.c_int
LONG = ctypes.c_int32
LPCSTR = ctypes.c_char_p
LPVOID = ctypes.c_void_p


def _fn(name, restype, *argtypes):
    f = getattr(_dll, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


# Security attributes are always passed as NULL: libdlock accepts and ignores them.
CreateMutexA = _fn("CreateMutexA", HANDLE, LPVOID, BOOL, LPCSTR)
CreateMutexExA = _fn("CreateMutexExA", HANDLE, LPVOID, LPCSTR, DWORD, DWORD)
OpenMutexA = _fn("OpenMutexA", HANDLE, DWORD, BOOL, LPCSTR)
ReleaseMutex = _fn("ReleaseMutex", BOOL, HANDLE)

CreateEventA = _fn("CreateEventA", HANDLE, LPVOID, BOOL, BOOL, LPCSTR)
CreateEventExA = _fn("CreateEventExA", HANDLE, LPVOID, LPCSTR, DWORD, DWORD)
OpenEventA = _fn("OpenEventA", HANDLE, DWORD, BOOL, LPCSTR)
SetEvent = _fn("SetEvent", BOOL, HANDLE)
ResetEvent = _fn("ResetEvent", BOOL, HANDLE)
PulseEvent = _fn("PulseEvent", BOOL, HANDLE)

CreateSemaphoreA = _fn("CreateSemaphoreA", HANDLE, LPVOID, LONG, LONG, LPCSTR)
CreateSemaphoreExA = _fn("CreateSemaphoreExA", HANDLE, LPVOID, LONG, LONG, LPCSTR, DWORD, DWORD)
OpenSemaphoreA = _fn("OpenSemaphoreA", HANDLE, DWORD, BOOL, LPCSTR)
ReleaseSemaphore = _fn("ReleaseSemaphore", BOOL, HANDLE, LONG, ctypes.POINTER(LONG))

WaitForSingleObject = _fn("WaitForSingleObject", DWORD, HANDLE, DWORD)
WaitForMultipleObjects = _fn(
    "WaitForMultipleObjects", DWORD, DWORD, ctypes.POINTER(HANDLE), BOOL, DWORD
)
SignalObjectAndWait = _fn("SignalObjectAndWait", DWORD, HANDLE, HANDLE, DWORD, BOOL)
CloseHandle = _fn("CloseHandle", BOOL, HANDLE)

GetLastError = _fn("GetLastError", DWORD)
SetLastError = _fn("SetLastError", None, DWORD)
DlockGetFencingToken = _fn("DlockGetFencingToken", ctypes.c_uint64, HANDLE)

# ---- fork() ----
#
# libdlock runs its own threads once a process has used it. A child made by fork() (e.g.
# multiprocessing's "fork" start method) has none of them, inherits no handles or session, and
# could block forever in its first call. So once this process has called into the library, a
# forked child refuses every call (GetLastError and SetLastError, which only touch a
# thread-local, excepted) until it execs; handle objects it inherited are dropped without a call.

_used = False
_forked_after_use = False
PID = os.getpid()


def _after_fork_in_child():
    global _forked_after_use, PID
    if _used:
        _forked_after_use = True
    PID = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def check_usable():
    """Raises RuntimeError in a forked child of a process that had used the library."""
    global _used
    if _forked_after_use:
        raise RuntimeError(
            "dlock: this process was forked from one that had already used libdlock; a forked "
            "child cannot use it before it execs (use multiprocessing's 'spawn' start method)"
        )
    _used = True

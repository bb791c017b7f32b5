"""pywin32's ``win32api`` for dlock: the last error, CloseHandle, FormatMessage, and a few
helpers that scripts using named objects call alongside them.

``GetLastError()`` is libdlock's per-OS-thread last error: it reflects the last libdlock call
made by the calling thread (a create's ERROR_ALREADY_EXISTS, or the failure of a call), as
Windows' does. The wrappers of :mod:`dlock.win32event` make no other libdlock call after the
one that sets it, and handle objects finalized in between keep it intact.
"""

import os
import threading
import time

from . import _args, _lib
from ._messages import MESSAGES
from .pywintypes import PyHANDLE, _as_handle_value, _raise_last_error, error

_FORMAT_MESSAGE_FROM_SYSTEM = 0x00001000  # win32con.FORMAT_MESSAGE_FROM_SYSTEM


def GetLastError():
    """The calling thread's last-error code (libdlock's, per OS thread)."""
    code = _lib.GetLastError()
    # pywin32 returns it as a C int.
    return code - 0x100000000 if code >= 0x80000000 else code


def SetLastError(errVal):
    """Sets the calling thread's last-error code."""
    _lib.SetLastError(_args.dword(errVal))


def CloseHandle(handle):
    """Closes a handle: a handle object (as its ``Close()``: closing it twice does nothing) or
    an integer (closing a value twice raises error 6, ERROR_INVALID_HANDLE)."""
    if isinstance(handle, PyHANDLE):
        handle.Close()
        return None
    value = _as_handle_value(handle)
    if value == 0:
        return None
    _lib.check_usable()
    if not _lib.CloseHandle(value):
        _raise_last_error("CloseHandle")
    return None


def _system_message(code, funcname):
    text = MESSAGES.get(code & 0xFFFFFFFF)
    if text is None:
        # What Windows' FormatMessage does for a code it has no text for.
        raise error(317, funcname, MESSAGES[317])
    return text + "\r\n"


def FormatMessage(*args):
    """The system message for an error code, with Windows' trailing CR LF:
    ``FormatMessage(errCode=0)`` (0: the last error). The full form ``FormatMessage(flags,
    source, messageId, languageId, inserts)`` is supported with FORMAT_MESSAGE_FROM_SYSTEM.
    Only the codes of :mod:`dlock.winerror` have a text; others raise error 317, as Windows
    does for a code it does not know."""
    if len(args) <= 1:
        code = _args.dword(args[0]) if args else 0
        if code == 0:
            code = _lib.GetLastError()
        return _system_message(code, "FormatMessageW")
    if len(args) != 5:
        raise TypeError("FormatMessage takes 0, 1 or 5 arguments")
    flags, _source, message_id, _language_id, _inserts = args
    flags = _args.dword(flags)
    if not flags & _FORMAT_MESSAGE_FROM_SYSTEM:
        raise NotImplementedError("dlock's FormatMessage supports FORMAT_MESSAGE_FROM_SYSTEM only")
    return _system_message(_args.dword(message_id), "FormatMessageW")


FormatMessageW = FormatMessage


def GetCurrentThreadId():
    """The calling OS thread's id (the owner of the mutexes it acquires)."""
    return threading.get_native_id()


def GetCurrentProcessId():
    """The process id."""
    return os.getpid()


def Sleep(time_ms, bAlertable=0):
    """Suspends the calling thread for ``time_ms`` milliseconds; returns 0."""
    time.sleep(max(0, int(time_ms)) / 1000.0)
    return 0


SleepEx = Sleep

"""pywin32's ``pywintypes`` for dlock: the :class:`error` exception and the handle object.

``error(winerror, funcname, strerror)`` is what every failing call raises, exactly as in
pywin32: an :class:`Exception` whose ``args`` are that tuple, with the attributes
``winerror``, ``funcname`` and ``strerror``, and (as in pywin32's Python 2 days) indexable
like the tuple: ``e[0] == e.winerror``.

:class:`HANDLE` (also ``PyHANDLE`` and ``HANDLEType``) wraps a libdlock handle and closes it
when it is garbage-collected, like pywin32's PyHANDLE: ``Close()`` / ``close()``,
``Detach()``, ``.handle``, ``int(h)``, ``bool(h)``, comparison with handles and integers. It
is also a context manager that closes the handle on exit (a dlock addition).
"""

import operator
import os

from . import _lib
from ._messages import strerror as _strerror


class error(Exception):
    """A Win32 error: ``error(winerror, funcname, strerror)``."""

    def __init__(self, *args, **kw):
        nargs = len(args)
        self.winerror = args[0] if nargs > 0 else None
        self.funcname = args[1] if nargs > 1 else None
        self.strerror = args[2] if nargs > 2 else None
        Exception.__init__(self, *args, **kw)

    def __getitem__(self, index):
        return self.args[index]


class com_error(Exception):
    """pywin32's COM error, for scripts that name it; dlock never raises it."""

    def __init__(self, *args, **kw):
        nargs = len(args)
        self.hresult = args[0] if nargs > 0 else None
        self.strerror = args[1] if nargs > 1 else None
        self.excepinfo = args[2] if nargs > 2 else None
        self.argerror = args[3] if nargs > 3 else None
        Exception.__init__(self, *args, **kw)

    def __getitem__(self, index):
        return self.args[index]


def _raise_last_error(funcname):
    """Raises :class:`error` for the calling thread's last error, read at once (GetLastError
    changes nothing, so nothing the caller sees is disturbed)."""
    code = _lib.GetLastError()
    # pywin32 builds the exception with "i": the code as a C int.
    if code >= 0x80000000:
        code -= 0x100000000
    raise error(code, funcname, _strerror(code))


def _as_handle_value(ob):
    """The integer value of a handle argument: a handle object, an integer, or None (0)."""
    if ob is None:
        return 0
    if isinstance(ob, PyHANDLE):
        return ob._handle
    try:
        return operator.index(ob)
    except TypeError:
        raise TypeError("The object is not a PyHANDLE object") from None


class PyHANDLE:
    """A handle to a dlock object (a mutex, an event or a semaphore).

    ``HANDLE(value=None)`` wraps an existing handle value (an integer, another handle object,
    or None for a NULL handle) and takes ownership of it: the value is closed when the object
    is closed or garbage-collected. Use :meth:`Detach` to take it back.
    """

    __slots__ = ("_handle", "_pid", "__weakref__")

    def __init__(self, handle=None):
        self._handle = _as_handle_value(handle)
        self._pid = os.getpid()

    @classmethod
    def _from_api(cls, value):
        h = cls.__new__(cls)
        h._handle = value
        h._pid = os.getpid()
        return h

    @property
    def handle(self):
        """The integer value of the handle (0 once closed or detached)."""
        return self._handle

    def Close(self):
        """Closes the underlying handle. Closing a handle already closed or detached does
        nothing (as in pywin32); a failing close raises :class:`error` and still forgets the
        value."""
        value = self._handle
        if not value:
            return None
        self._handle = 0
        _lib.check_usable()
        if not _lib.CloseHandle(value):
            _raise_last_error("CloseHandle")
        return None

    close = Close

    def Detach(self):
        """Detaches the handle value from this object and returns it, without closing it;
        the object then holds 0."""
        value = self._handle
        self._handle = 0
        return value

    def __del__(self):
        value = getattr(self, "_handle", 0)
        if not value:
            return
        self._handle = 0
        try:
            if self._pid != os.getpid() or _lib._forked_after_use:
                return  # inherited through fork(): not this process's handle
            # A finalizer can run between any two lines of the program, e.g. between a
            # CreateMutex and the GetLastError that checks it: keep the last error intact.
            saved = _lib.GetLastError()
            _lib.CloseHandle(value)
            _lib.SetLastError(saved)
        except Exception:  # noqa: BLE001 - never raise from a finalizer (interpreter exit)
            pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.Close()
        return False

    def __int__(self):
        return self._handle

    def __bool__(self):
        return self._handle != 0

    def __eq__(self, other):
        if isinstance(other, PyHANDLE):
            return self._handle == other._handle
        if isinstance(other, int):
            return self._handle == other
        return NotImplemented

    def __ne__(self, other):
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    # pywin32 hashes a handle object by its identity.
    __hash__ = object.__hash__

    def __str__(self):
        return f"<{type(self).__name__}:{self._handle}>"

    __repr__ = __str__


HANDLE = PyHANDLE
HANDLEType = PyHANDLE


class SECURITY_ATTRIBUTES:
    """Accepted wherever pywin32 takes security attributes, and ignored: dlock has no security
    descriptors and its handles are never inherited."""

    def __init__(self):
        self.bInheritHandle = 1
        self.SECURITY_DESCRIPTOR = None


SECURITY_ATTRIBUTESType = SECURITY_ATTRIBUTES

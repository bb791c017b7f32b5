"""dlock for Python: pywin32's named-object API (``win32event``, ``win32api``, ``winerror``,
``pywintypes``) over libdlock, so that a script written for pywin32 runs against a dlock cluster
by changing only its imports::

    from dlock import win32event, win32api, winerror   # was: import win32event, win32api, winerror

The cluster is named by ``DLOCK_ENDPOINTS`` (default ``127.0.0.1:7700``), read at the first
call. The library is ``DLOCK_LIBRARY`` if set, else the copy installed with this package; it is
loaded by the first import of ``win32event``, ``win32api`` or ``pywintypes``.
"""

__version__ = "0.1.0"
__all__ = ["pywintypes", "win32api", "win32con", "win32event", "winerror"]

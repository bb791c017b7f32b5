"""The Win32 "Using Named Objects" sample, written for pywin32, running on dlock.

The only line that differs from the pywin32 script is the import (pywin32:
``import win32event, win32api, winerror``)::

    DLOCK_ENDPOINTS=127.0.0.1:7700 python3 named_objects.py   # CreateMutex created new mutex
    DLOCK_ENDPOINTS=127.0.0.1:7700 python3 named_objects.py   # CreateMutex opened existing mutex

The first run creates the mutex (default name ``NameOfMutexObject``, or the first argument),
prints ``CreateMutex created new mutex`` and keeps its handle open until Ctrl-C or SIGTERM; then
it closes the handle and exits 0. A run while another one holds the mutex prints ``CreateMutex
opened existing mutex``, opens the mutex again with OpenMutex (``OpenMutex succeeded``), closes
its handles and exits 0. A failure prints ``CreateMutex error: N`` or ``OpenMutex error: N`` and
exits 1.
"""

import signal
import sys
import time

from dlock import win32api, win32event, winerror

MUTEX_ALL_ACCESS = 0x001F0001  # winnt.h (pywin32 does not export it)


def say(line):
    print(line)
    sys.stdout.flush()


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else "NameOfMutexObject"

    # Create a mutex with no initial owner.
    try:
        hMutex = win32event.CreateMutex(None, False, name)
    except win32api.error as e:
        say("CreateMutex error: %d" % e.winerror)
        return 1

    if win32api.GetLastError() == winerror.ERROR_ALREADY_EXISTS:
        say("CreateMutex opened existing mutex")
        try:
            hOpened = win32event.OpenMutex(MUTEX_ALL_ACCESS, False, name)
        except win32api.error as e:
            say("OpenMutex error: %d" % e.winerror)
            win32api.CloseHandle(hMutex)
            return 1
        say("OpenMutex succeeded")
        win32api.CloseHandle(hOpened)
        win32api.CloseHandle(hMutex)
        return 0

    # The first instance keeps its handle, and so the name, until it is stopped. The handlers
    # are in place before the line is printed, so a signal sent on reading it is caught.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        say("CreateMutex created new mutex")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        win32api.CloseHandle(hMutex)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Two Python processes meeting on named objects, and the pywin32-shaped example script."""

import signal
import threading
import time
from pathlib import Path

from conftest import SESSION_TTL_MS

from dlock import win32api, win32event, winerror

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "named_objects.py"

# A child that creates a mutex it owns, says so, releases it when told, then closes on request.
HOLDER = """
import sys
from dlock import win32api, win32event
h = win32event.CreateMutex(None, True, sys.argv[1])
print("created", win32api.GetLastError(), flush=True)
sys.stdin.readline()
win32event.ReleaseMutex(h)
print("released", flush=True)
sys.stdin.readline()
h.Close()
print("closed", flush=True)
"""


def test_child_holds_a_mutex_until_it_releases_it(unique, spawn):
    name = unique()
    child = spawn(["-c", HOLDER, name])
    assert child.readline() == "created 0"

    h = win32event.CreateMutex(None, False, name)
    assert win32api.GetLastError() == winerror.ERROR_ALREADY_EXISTS
    assert win32event.WaitForSingleObject(h, 0) == win32event.WAIT_TIMEOUT

    result = {}

    def waiter():
        result["rc"] = win32event.WaitForSingleObject(h, 20000)
        result["at"] = time.monotonic()
        if result["rc"] in (win32event.WAIT_OBJECT_0, win32event.WAIT_ABANDONED):
            win32event.ReleaseMutex(h)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive(), "the wait returned while the child still owned the mutex"
    told = time.monotonic()
    child.send("\n")
    assert child.readline() == "released"
    thread.join(25)
    assert not thread.is_alive()
    assert result["rc"] == win32event.WAIT_OBJECT_0
    assert result["at"] >= told
    child.send("\n")
    assert child.readline() == "closed"
    assert child.wait() == 0
    h.Close()


def test_killed_child_abandons_its_mutex(unique, spawn):
    name = unique()
    child = spawn(["-c", HOLDER, name])
    assert child.readline() == "created 0"
    h = win32event.OpenMutex(win32event.SYNCHRONIZE, False, name)
    child.kill()
    # Its session expires after the TTL; then the mutex is abandoned to the next waiter.
    rc = win32event.WaitForSingleObject(h, SESSION_TTL_MS + 20000)
    assert rc == win32event.WAIT_ABANDONED
    win32event.ReleaseMutex(h)
    h.Close()


def test_pywin32_shaped_example_run_twice(unique, spawn):
    name = unique("NameOfMutexObject")
    first = spawn([str(EXAMPLE), name])
    assert first.readline() == "CreateMutex created new mutex"

    second = spawn([str(EXAMPLE), name])
    assert second.readline() == "CreateMutex opened existing mutex"
    assert second.readline() == "OpenMutex succeeded"
    assert second.wait() == 0

    # SIGTERM: the first run closes its handle and exits 0; the name goes with it.
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    third = spawn([str(EXAMPLE), name])
    assert third.readline() == "CreateMutex created new mutex"
    third.signal(signal.SIGINT)  # Ctrl-C
    assert third.wait() == 0


# A child that tries to create a mutex and prints the error it got.
TRY_CREATE = """
import sys
from dlock import pywintypes, win32event
try:
    win32event.CreateMutex(None, False, sys.argv[1])
    print("created", flush=True)
except pywintypes.error as e:
    print("error", e.winerror, e.funcname, flush=True)
"""


def test_a_child_without_its_certificate_cannot_reach_the_tls_cluster(unique, spawn):
    name = unique()
    # The session's run has mutual TLS (conftest.py): the certificate is what lets a child in.
    child = spawn(["-c", TRY_CREATE, name])
    assert child.readline() == "created"
    child.wait()
    no_cert = spawn(
        ["-c", TRY_CREATE, name], DLOCK_CERT="", DLOCK_KEY="", DLOCK_REQUEST_TIMEOUT_MS="1500"
    )
    assert no_cert.readline() == "error 1231 CreateMutex"
    no_ca = spawn(
        ["-c", TRY_CREATE, name],
        DLOCK_CACERT="",
        DLOCK_CERT="",
        DLOCK_KEY="",
        DLOCK_REQUEST_TIMEOUT_MS="1500",
    )
    assert no_ca.readline() == "error 1231 CreateMutex"

"""win32event, win32api and winerror against a real dlockd, in one process (and its threads)."""

import os
import signal
import threading
import time

import pytest

from dlock import pywintypes, win32api, win32con, win32event, winerror

# Every wait in these tests is bounded: a broken wait fails the test, it does not hang it.
LONG_MS = 15000


def run_thread(target, timeout=30):
    """Runs ``target`` in a new OS thread, joins it (bounded) and returns what it returned."""
    result = {}

    def body():
        try:
            result["value"] = target()
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            result["error"] = exc

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"thread still running after {timeout} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


# ---- Create-or-open and the last error ----


def test_create_mutex_new_then_existing(unique):
    name = unique()
    first = win32event.CreateMutex(None, False, name)
    assert isinstance(first, pywintypes.HANDLE)
    assert win32api.GetLastError() == winerror.ERROR_SUCCESS
    second = win32event.CreateMutex(None, True, name)
    assert win32api.GetLastError() == winerror.ERROR_ALREADY_EXISTS
    assert first != second and int(first) != int(second)
    # InitialOwner is ignored when the mutex exists: another thread can take it at once.
    assert run_thread(lambda: win32event.WaitForSingleObject(second, 0)) in (
        win32event.WAIT_OBJECT_0,
        win32event.WAIT_ABANDONED,  # the helper thread exits owning it
    )
    first.Close()
    second.Close()


def test_create_reports_already_exists_for_events_and_semaphores(unique):
    event_name, sem_name = unique(), unique()
    e1 = win32event.CreateEvent(None, True, False, event_name)
    assert win32api.GetLastError() == 0
    e2 = win32event.CreateEvent(None, True, False, event_name)
    assert win32api.GetLastError() == winerror.ERROR_ALREADY_EXISTS
    s1 = win32event.CreateSemaphore(None, 0, 1, sem_name)
    assert win32api.GetLastError() == 0
    s2 = win32event.CreateSemaphore(None, 0, 1, sem_name)
    assert win32api.GetLastError() == winerror.ERROR_ALREADY_EXISTS
    for h in (e1, e2, s1, s2):
        h.Close()


def test_unnamed_objects():
    m = win32event.CreateMutex(None, True, None)
    assert win32api.GetLastError() == 0
    e = win32event.CreateEvent(None, False, False, None)
    s = win32event.CreateSemaphore(None, 1, 1, None)
    assert win32event.WaitForSingleObject(s, 0) == win32event.WAIT_OBJECT_0
    win32event.ReleaseMutex(m)
    for h in (m, e, s):
        h.Close()


def test_open_missing_mutex_raises_file_not_found(unique):
    with pytest.raises(pywintypes.error) as info:
        win32event.OpenMutex(win32event.SYNCHRONIZE, False, unique("missing"))
    e = info.value
    assert e.winerror == winerror.ERROR_FILE_NOT_FOUND == 2
    assert e.funcname == "OpenMutex"
    assert e.strerror == "The system cannot find the file specified."
    assert e.args == (2, "OpenMutex", e.strerror)
    assert (e[0], e[1], e[2]) == e.args  # indexable like the tuple
    assert win32api.GetLastError() == 2
    # One exception class everywhere, as in pywin32.
    assert win32event.error is win32api.error is pywintypes.error


def test_open_existing_and_wrong_kind(unique):
    name = unique()
    ev = win32event.CreateEvent(None, True, False, name)
    opened = win32event.OpenEvent(win32event.EVENT_ALL_ACCESS, False, name)
    win32event.SetEvent(opened)
    assert win32event.WaitForSingleObject(ev, 0) == win32event.WAIT_OBJECT_0
    with pytest.raises(pywintypes.error) as info:
        win32event.OpenMutex(win32event.SYNCHRONIZE, False, name)
    assert info.value.winerror == winerror.ERROR_INVALID_HANDLE
    with pytest.raises(pywintypes.error) as info:
        win32event.OpenSemaphore(win32event.SYNCHRONIZE, False, unique("missing"))
    assert (info.value.winerror, info.value.funcname) == (2, "OpenSemaphore")
    with pytest.raises(pywintypes.error) as info:
        win32event.OpenEvent(win32event.SYNCHRONIZE, False, unique("missing"))
    assert (info.value.winerror, info.value.funcname) == (2, "OpenEvent")
    ev.Close()
    opened.Close()


def test_access_rights_are_enforced(unique):
    name = unique()
    ev = win32event.CreateEvent(None, True, False, name)
    sync_only = win32event.OpenEvent(win32event.SYNCHRONIZE, False, name)
    with pytest.raises(pywintypes.error) as info:
        win32event.SetEvent(sync_only)
    assert (info.value.winerror, info.value.funcname) == (winerror.ERROR_ACCESS_DENIED, "SetEvent")
    ev.Close()
    sync_only.Close()


def test_last_error_survives_a_handle_finalized_in_between(unique):
    name = unique()
    first = win32event.CreateMutex(None, False, name)
    second = win32event.CreateMutex(None, False, name)
    # A handle object whose close fails (a value libdlock never gave) is collected between the
    # create and the check: its finalizer must not disturb the create's last error.
    bogus = pywintypes.HANDLE(0x7FFFFFF0)
    del bogus
    assert win32api.GetLastError() == winerror.ERROR_ALREADY_EXISTS
    first.Close()
    second.Close()


def test_last_error_is_per_thread():
    win32api.SetLastError(1234)

    def other():
        before = win32api.GetLastError()
        win32api.SetLastError(5)
        return before, win32api.GetLastError()

    assert run_thread(other) == (0, 5)
    assert win32api.GetLastError() == 1234
    win32api.SetLastError(0)


def test_bad_arguments():
    with pytest.raises(TypeError):
        win32event.CreateMutex(None, False, 42)
    with pytest.raises(TypeError):
        win32event.OpenMutex(win32event.SYNCHRONIZE, False, None)
    with pytest.raises(ValueError):
        win32event.CreateEvent(None, False, False, "a\0b")
    with pytest.raises(TypeError):
        win32event.SetEvent("not a handle")
    with pytest.raises(TypeError):
        win32event.WaitForMultipleObjects(5, False, 0)


def test_bytes_names_and_long_names(unique):
    name = unique()
    h1 = win32event.CreateEvent(None, True, False, name.encode())
    h2 = win32event.CreateEvent(None, True, False, name)
    assert win32api.GetLastError() == winerror.ERROR_ALREADY_EXISTS
    with pytest.raises(pywintypes.error) as info:
        win32event.CreateMutex(None, False, "x" * (win32con.MAX_PATH + 1))
    assert (info.value.winerror, info.value.funcname) == (
        winerror.ERROR_FILENAME_EXCED_RANGE,
        "CreateMutex",
    )
    h1.Close()
    h2.Close()


# ---- Mutexes ----


def test_mutex_is_recursive_and_owned_by_its_thread(unique):
    m = win32event.CreateMutex(None, True, unique())
    assert win32event.WaitForSingleObject(m, 0) == win32event.WAIT_OBJECT_0  # recursion
    # Another thread neither gets it nor may release it.
    assert run_thread(lambda: win32event.WaitForSingleObject(m, 50)) == win32event.WAIT_TIMEOUT

    def release_elsewhere():
        with pytest.raises(pywintypes.error) as info:
            win32event.ReleaseMutex(m)
        return info.value.winerror

    assert run_thread(release_elsewhere) == winerror.ERROR_NOT_OWNER
    assert win32event.ReleaseMutex(m) is None
    assert win32event.ReleaseMutex(m) is None
    with pytest.raises(pywintypes.error) as info:
        win32event.ReleaseMutex(m)
    assert (info.value.winerror, info.value.funcname) == (288, "ReleaseMutex")
    m.Close()


def test_thread_that_ends_owning_a_mutex_abandons_it(unique):
    m = win32event.CreateMutex(None, False, unique())
    assert run_thread(lambda: win32event.WaitForSingleObject(m, LONG_MS)) == win32event.WAIT_OBJECT_0
    # The thread ended without ReleaseMutex: the next owner is told.
    assert win32event.WaitForSingleObject(m, LONG_MS) == win32event.WAIT_ABANDONED
    win32event.ReleaseMutex(m)
    assert win32event.WaitForSingleObject(m, 0) == win32event.WAIT_OBJECT_0
    win32event.ReleaseMutex(m)
    m.Close()


def test_fencing_token(unique):
    m = win32event.CreateMutex(None, False, unique())
    assert win32event.DlockGetFencingToken(m) == 0
    assert win32event.WaitForSingleObject(m, LONG_MS) == win32event.WAIT_OBJECT_0
    first = win32event.DlockGetFencingToken(m)
    win32event.ReleaseMutex(m)
    assert win32event.WaitForSingleObject(m, LONG_MS) == win32event.WAIT_OBJECT_0
    second = win32event.DlockGetFencingToken(m)
    assert 0 < first < second
    win32event.ReleaseMutex(m)
    m.Close()


# ---- Events ----


def test_manual_and_auto_reset_events(unique):
    manual = win32event.CreateEvent(None, True, False, unique())
    auto = win32event.CreateEvent(None, False, True, unique())
    assert win32event.WaitForSingleObject(manual, 0) == win32event.WAIT_TIMEOUT
    assert win32event.SetEvent(manual) is None
    assert win32event.WaitForSingleObject(manual, 0) == win32event.WAIT_OBJECT_0
    assert win32event.WaitForSingleObject(manual, 0) == win32event.WAIT_OBJECT_0
    assert win32event.ResetEvent(manual) is None
    assert win32event.WaitForSingleObject(manual, 0) == win32event.WAIT_TIMEOUT
    # Auto-reset: created signaled, one wait consumes it.
    assert win32event.WaitForSingleObject(auto, 0) == win32event.WAIT_OBJECT_0
    assert win32event.WaitForSingleObject(auto, 0) == win32event.WAIT_TIMEOUT
    manual.Close()
    auto.Close()


def test_pulse_event_releases_a_waiter_and_leaves_it_reset(unique):
    ev = win32event.CreateEvent(None, False, False, unique())
    result = {}
    waiter = threading.Thread(
        target=lambda: result.update(rc=win32event.WaitForSingleObject(ev, LONG_MS))
    )
    waiter.start()
    # PulseEvent releases only the waiters registered right now: pulse until the waiter is.
    deadline = time.monotonic() + LONG_MS / 1000
    while waiter.is_alive() and time.monotonic() < deadline:
        assert win32event.PulseEvent(ev) is None
        waiter.join(0.05)
    waiter.join(5)
    assert result.get("rc") == win32event.WAIT_OBJECT_0
    assert win32event.WaitForSingleObject(ev, 0) == win32event.WAIT_TIMEOUT
    ev.Close()


# ---- Semaphores ----


def test_semaphore_counts(unique):
    name = unique()
    s = win32event.CreateSemaphore(None, 1, 2, name)
    assert win32event.WaitForSingleObject(s, 0) == win32event.WAIT_OBJECT_0
    assert win32event.WaitForSingleObject(s, 0) == win32event.WAIT_TIMEOUT
    assert win32event.ReleaseSemaphore(s, 1) == 0  # the previous count
    opened = win32event.OpenSemaphore(win32event.SEMAPHORE_ALL_ACCESS, False, name)
    assert win32event.ReleaseSemaphore(opened, 1) == 1
    with pytest.raises(pywintypes.error) as info:
        win32event.ReleaseSemaphore(s, 1)
    assert (info.value.winerror, info.value.funcname) == (
        winerror.ERROR_TOO_MANY_POSTS,
        "ReleaseSemaphore",
    )
    with pytest.raises(pywintypes.error) as info:
        win32event.ReleaseSemaphore(s, 0)
    assert info.value.winerror == winerror.ERROR_INVALID_PARAMETER
    s.Close()
    opened.Close()


# ---- Waits ----


def test_wait_timeout_is_a_result_not_an_exception(unique):
    ev = win32event.CreateEvent(None, True, False, unique())
    start = time.monotonic()
    assert win32event.WaitForSingleObject(ev, 200) == win32event.WAIT_TIMEOUT == 258
    assert time.monotonic() - start >= 0.15
    assert win32event.WaitForMultipleObjects([ev], False, 50) == win32event.WAIT_TIMEOUT
    ev.Close()


def test_infinite_wait_on_a_signaled_object(unique):
    assert win32event.INFINITE == -1  # as pywin32 exports it
    ev = win32event.CreateEvent(None, True, True, unique())
    assert win32event.WaitForSingleObject(ev, win32event.INFINITE) == win32event.WAIT_OBJECT_0
    assert win32event.WaitForSingleObject(ev, 0xFFFFFFFF) == win32event.WAIT_OBJECT_0
    ev.Close()


def test_wait_for_multiple_objects(unique):
    a = win32event.CreateEvent(None, True, False, unique())
    b = win32event.CreateEvent(None, True, False, unique())
    win32event.SetEvent(b)
    assert win32event.WaitForMultipleObjects([a, b], False, 0) == win32event.WAIT_OBJECT_0 + 1
    assert win32event.WaitForMultipleObjects((a, b), True, 50) == win32event.WAIT_TIMEOUT
    win32event.SetEvent(a)
    assert win32event.WaitForMultipleObjects([a, b], True, LONG_MS) == win32event.WAIT_OBJECT_0
    # Integers are handles too.
    assert win32event.WaitForMultipleObjects([int(a)], False, 0) == win32event.WAIT_OBJECT_0
    a.Close()
    b.Close()


def test_wait_for_multiple_reports_abandoned_index(unique):
    ev = win32event.CreateEvent(None, True, False, unique())
    m = win32event.CreateMutex(None, False, unique())
    assert run_thread(lambda: win32event.WaitForSingleObject(m, LONG_MS)) == win32event.WAIT_OBJECT_0
    rc = win32event.WaitForMultipleObjects([ev, m], False, LONG_MS)
    assert rc == win32event.WAIT_ABANDONED_0 + 1
    win32event.ReleaseMutex(m)
    ev.Close()
    m.Close()


def test_wait_failures_raise(unique):
    with pytest.raises(pywintypes.error) as info:
        win32event.WaitForMultipleObjects([], False, 0)
    assert (info.value.winerror, info.value.funcname) == (87, "WaitForMultipleObjects")
    ev = win32event.CreateEvent(None, True, False, unique())
    too_many = [ev] * (win32event.MAXIMUM_WAIT_OBJECTS + 1)
    with pytest.raises(pywintypes.error) as info:
        win32event.WaitForMultipleObjects(too_many, False, 0)
    assert info.value.winerror == 87
    ev.Close()
    with pytest.raises(pywintypes.error) as info:
        win32event.WaitForSingleObject(ev, 0)  # closed: its handle is now 0
    assert (info.value.winerror, info.value.funcname) == (6, "WaitForSingleObject")


def test_signal_object_and_wait(unique):
    m = win32event.CreateMutex(None, True, unique())
    ready = win32event.CreateEvent(None, True, True, unique())
    # Releases the mutex and waits on the (signaled) event: the wait result is returned.
    assert win32event.SignalObjectAndWait(m, ready, LONG_MS, False) == win32event.WAIT_OBJECT_0
    assert run_thread(lambda: win32event.WaitForSingleObject(m, 0)) in (
        win32event.WAIT_OBJECT_0,
        win32event.WAIT_ABANDONED,
    )
    a = win32event.CreateEvent(None, True, False, unique())
    b = win32event.CreateEvent(None, True, False, unique())
    assert win32event.SignalObjectAndWait(a, b, 50, False) == win32event.WAIT_TIMEOUT
    assert win32event.WaitForSingleObject(a, 0) == win32event.WAIT_OBJECT_0
    with pytest.raises(pywintypes.error) as info:
        win32event.SignalObjectAndWait(m, b, 0, False)  # not the owner any more
    assert (info.value.winerror, info.value.funcname) == (288, "SignalObjectAndWait")
    for h in (m, ready, a, b):
        h.Close()


def test_gil_is_released_while_a_wait_blocks(unique):
    ev = win32event.CreateEvent(None, True, False, unique())
    win32event.WaitForSingleObject(ev, 0)  # connected before the timed part
    times = {}

    def waiter():
        times["start"] = time.monotonic()
        times["rc"] = win32event.WaitForSingleObject(ev, 1000)
        times["end"] = time.monotonic()

    thread = threading.Thread(target=waiter)
    thread.start()
    ticks = []
    deadline = time.monotonic() + 20
    while thread.is_alive() and time.monotonic() < deadline:
        sum(range(200))  # pure Python: runs only while this thread holds the GIL
        ticks.append(time.monotonic())
    thread.join(5)
    assert times["rc"] == win32event.WAIT_TIMEOUT
    assert times["end"] - times["start"] >= 0.9
    during = [t for t in ticks if times["start"] + 0.2 < t < times["end"] - 0.2]
    # With the GIL held for the whole wait there would be none.
    assert len(during) > 100, f"only {len(during)} ticks of the main thread during the wait"
    ev.Close()


# ---- Handle objects ----


def test_handle_object(unique):
    h = win32event.CreateEvent(None, True, False, unique())
    value = int(h)
    assert value != 0 and h.handle == value and bool(h)
    assert h == value and h == pywintypes.HANDLE(value).Detach()
    assert str(h) == f"<PyHANDLE:{value}>"
    assert isinstance(h, pywintypes.HANDLEType)
    h.Close()
    assert h.handle == 0 and not bool(h) and int(h) == 0
    h.Close()  # closing a closed handle object does nothing, as in pywin32
    win32api.CloseHandle(h)  # nor through win32api
    with pytest.raises(pywintypes.error) as info:
        win32api.CloseHandle(value)  # but the value itself is gone
    assert (info.value.winerror, info.value.funcname) == (6, "CloseHandle")
    with pytest.raises(pywintypes.error) as info:
        win32event.SetEvent(value)
    assert info.value.winerror == 6


def test_handle_detach_and_close_by_value(unique):
    h = win32event.CreateMutex(None, False, unique())
    value = h.Detach()
    assert h.handle == 0 and h.Detach() == 0
    assert win32event.WaitForSingleObject(value, 0) == win32event.WAIT_OBJECT_0
    win32event.ReleaseMutex(value)
    assert win32api.CloseHandle(value) is None
    with pytest.raises(pywintypes.error):
        win32api.CloseHandle(value)


def test_handle_context_manager_closes(unique):
    name = unique()
    with win32event.CreateEvent(None, True, False, name) as h:
        value = int(h)
        assert win32event.WaitForSingleObject(h, 0) == win32event.WAIT_TIMEOUT
    assert h.handle == 0
    with pytest.raises(pywintypes.error) as info:
        win32api.CloseHandle(value)
    assert info.value.winerror == winerror.ERROR_INVALID_HANDLE
    # The object went with its last handle.
    with pytest.raises(pywintypes.error) as info:
        win32event.OpenEvent(win32event.SYNCHRONIZE, False, name)
    assert info.value.winerror == winerror.ERROR_FILE_NOT_FOUND


def test_garbage_collected_handle_is_closed(unique):
    name = unique()
    h = win32event.CreateEvent(None, True, False, name)
    del h
    with pytest.raises(pywintypes.error) as info:
        win32event.OpenEvent(win32event.SYNCHRONIZE, False, name)
    assert info.value.winerror == winerror.ERROR_FILE_NOT_FOUND


def test_format_message():
    assert win32api.FormatMessage(2) == "The system cannot find the file specified.\r\n"
    win32api.SetLastError(winerror.ERROR_ALREADY_EXISTS)
    assert win32api.FormatMessage() == "Cannot create a file when that file already exists.\r\n"
    assert win32api.FormatMessage(win32con.FORMAT_MESSAGE_FROM_SYSTEM, None, 6, 0, None) == (
        "The handle is invalid.\r\n"
    )
    with pytest.raises(pywintypes.error) as info:
        win32api.FormatMessage(123456)
    assert info.value.winerror == winerror.ERROR_MR_MID_NOT_FOUND
    win32api.SetLastError(0)


def test_forked_child_refuses_calls():
    # This process has used libdlock: a fork()ed child must not call it before exec (it would
    # find none of the library's threads); dlock raises RuntimeError there instead.
    win32event.CreateEvent(None, False, False, None).Close()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            win32event.CreateEvent(None, False, False, None)
        except RuntimeError:
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child hung in its call")
        time.sleep(0.02)
    assert os.waitstatus_to_exitcode(status) == 0

// The conformance suite of `dlock::win32`, compiled once per backend: the including test binary
// defines a module `backend` with `PREFIX` (its names' prefix), `EMPTY_COMPONENT` (a name
// whose first component is empty), `setup()` (run first in every test), `name(prefix)` (a unique
// object name in that backend's namespace) and `anon()` (a name for an object the test could
// leave unnamed; unnamed objects are served by the local engine, with no cluster). One test per behaviour, named for the section of win32-semantics.md
// it checks.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dlock::win32::*;

// ---- §2 general rules and §2.1 mutex functions ----------------------------------------------

#[test]
fn s2_1_create_mutex_reports_new_then_already_exists() {
    backend::setup();
    let name = backend::name("mutex");
    SetLastError(0xDEAD_BEEF);
    let a = CreateMutexA(None, FALSE, Some(&name));
    assert_ne!(a, 0);
    assert_eq!(GetLastError(), 0, "a fresh create sets last error 0");
    let b = CreateMutexA(None, TRUE, Some(&name));
    assert_ne!(b, 0);
    assert_ne!(a, b, "every create returns a new handle");
    assert_eq!(GetLastError(), ERROR_ALREADY_EXISTS);
    // bInitialOwner is ignored on open: another thread can take it at once.
    let b2 = b;
    let r = std::thread::spawn(move || WaitForSingleObject(b2, 0))
        .join()
        .unwrap();
    assert_eq!(r, WAIT_OBJECT_0);
    assert_eq!(CloseHandle(a), TRUE);
    assert_eq!(CloseHandle(b), TRUE);
}

#[test]
fn s2_1_open_mutex_missing_name_is_file_not_found_and_null_name_is_87() {
    backend::setup();
    SetLastError(0xDEAD_BEEF);
    assert_eq!(
        OpenMutexA(MUTEX_ALL_ACCESS, FALSE, Some(&backend::name("missing"))),
        0
    );
    assert_eq!(GetLastError(), ERROR_FILE_NOT_FOUND);
    assert_eq!(OpenMutexA(MUTEX_ALL_ACCESS, FALSE, None), 0);
    assert_eq!(GetLastError(), ERROR_INVALID_PARAMETER);
    // Name lookup happens before the access check: 0 access on a missing name is still 2.
    assert_eq!(OpenMutexA(0, FALSE, Some(&backend::name("missing"))), 0);
    assert_eq!(GetLastError(), ERROR_FILE_NOT_FOUND);
}

#[test]
fn s2_1_open_mutex_success_leaves_last_error_alone() {
    backend::setup();
    let name = backend::name("mutex");
    let a = CreateMutexA(None, FALSE, Some(&name));
    SetLastError(0xDEAD_BEEF);
    let b = OpenMutexA(SYNCHRONIZE, FALSE, Some(&name));
    assert_ne!(b, 0);
    assert_eq!(GetLastError(), 0xDEAD_BEEF);
    // Zero access on an existing name is access denied.
    assert_eq!(OpenMutexA(0, FALSE, Some(&name)), 0);
    assert_eq!(GetLastError(), ERROR_ACCESS_DENIED);
    CloseHandle(a);
    CloseHandle(b);
}

#[test]
fn s2_1_release_mutex_by_non_owner_fails_with_288() {
    backend::setup();
    let h = CreateMutexA(None, FALSE, Some(&backend::name("mutex")));
    assert_eq!(ReleaseMutex(h), FALSE);
    assert_eq!(GetLastError(), ERROR_NOT_OWNER);
    assert_eq!(WaitForSingleObject(h, 0), WAIT_OBJECT_0);
    let r = std::thread::spawn(move || (ReleaseMutex(h), GetLastError()))
        .join()
        .unwrap();
    assert_eq!(
        r,
        (FALSE, ERROR_NOT_OWNER),
        "another thread is not the owner"
    );
    assert_eq!(ReleaseMutex(h), TRUE);
    CloseHandle(h);
}

#[test]
fn s2_1_release_mutex_needs_no_access_right() {
    backend::setup();
    let name = backend::name("mutex");
    let full = CreateMutexA(None, TRUE, Some(&name));
    let weak = OpenMutexA(READ_CONTROL, FALSE, Some(&name));
    assert_ne!(weak, 0);
    assert_eq!(ReleaseMutex(weak), TRUE);
    CloseHandle(weak);
    CloseHandle(full);
}

#[test]
fn s2_1_mutex_ex_initial_owner_and_requested_access() {
    backend::setup();
    let name = backend::name("mutex");
    let h = CreateMutexExA(None, Some(&name), CREATE_MUTEX_INITIAL_OWNER, SYNCHRONIZE);
    assert_ne!(h, 0);
    assert_eq!(GetLastError(), 0);
    let other = std::thread::spawn({
        let name = name.clone();
        move || {
            let h2 = OpenMutexA(SYNCHRONIZE, FALSE, Some(&name));
            let r = WaitForSingleObject(h2, 0);
            CloseHandle(h2);
            r
        }
    })
    .join()
    .unwrap();
    assert_eq!(other, WAIT_TIMEOUT, "the creator owns it");
    assert_eq!(ReleaseMutex(h), TRUE);
    CloseHandle(h);
}

// ---- §2.2 / §5 events -----------------------------------------------------------------------

#[test]
fn s5_manual_reset_event_releases_every_waiter_and_stays_set() {
    backend::setup();
    let ev = CreateEventA(None, TRUE, FALSE, Some(&backend::name("event")));
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    for _ in 0..3 {
        let tx = tx.clone();
        threads.push(std::thread::spawn(move || {
            tx.send(()).unwrap();
            WaitForSingleObject(ev, 10_000)
        }));
    }
    for _ in 0..3 {
        rx.recv().unwrap();
    }
    assert_eq!(SetEvent(ev), TRUE);
    for t in threads {
        assert_eq!(t.join().unwrap(), WAIT_OBJECT_0);
    }
    assert_eq!(WaitForSingleObject(ev, 0), WAIT_OBJECT_0, "still signaled");
    assert_eq!(ResetEvent(ev), TRUE);
    assert_eq!(WaitForSingleObject(ev, 0), WAIT_TIMEOUT);
    CloseHandle(ev);
}

#[test]
fn s5_auto_reset_event_is_consumed_by_one_wait() {
    backend::setup();
    let ev = CreateEventA(None, FALSE, TRUE, Some(&backend::name("event")));
    assert_eq!(WaitForSingleObject(ev, 0), WAIT_OBJECT_0);
    assert_eq!(
        WaitForSingleObject(ev, 0),
        WAIT_TIMEOUT,
        "the first wait reset it"
    );
    assert_eq!(SetEvent(ev), TRUE);
    assert_eq!(SetEvent(ev), TRUE, "setting a set event changes nothing");
    assert_eq!(WaitForSingleObject(ev, 0), WAIT_OBJECT_0);
    assert_eq!(WaitForSingleObject(ev, 0), WAIT_TIMEOUT);
    CloseHandle(ev);
}

#[test]
fn s5_pulse_event_with_no_waiter_leaves_it_unsignaled() {
    backend::setup();
    let ev = CreateEventA(None, TRUE, TRUE, Some(&backend::name("event")));
    assert_eq!(PulseEvent(ev), TRUE);
    assert_eq!(WaitForSingleObject(ev, 0), WAIT_TIMEOUT);
    CloseHandle(ev);
}

#[test]
fn s5_create_event_on_existing_ignores_parameters() {
    backend::setup();
    let name = backend::name("event");
    let a = CreateEventA(None, TRUE, FALSE, Some(&name));
    let b = CreateEventA(None, FALSE, TRUE, Some(&name));
    assert_eq!(GetLastError(), ERROR_ALREADY_EXISTS);
    assert_eq!(
        WaitForSingleObject(b, 0),
        WAIT_TIMEOUT,
        "initial state ignored"
    );
    SetEvent(a);
    assert_eq!(WaitForSingleObject(b, 0), WAIT_OBJECT_0);
    assert_eq!(
        WaitForSingleObject(b, 0),
        WAIT_OBJECT_0,
        "still manual-reset"
    );
    CloseHandle(a);
    CloseHandle(b);
}

#[test]
fn s2_2_set_event_needs_modify_state() {
    backend::setup();
    let name = backend::name("event");
    let a = CreateEventA(None, TRUE, FALSE, Some(&name));
    let weak = OpenEventA(SYNCHRONIZE, FALSE, Some(&name));
    assert_ne!(weak, 0);
    assert_eq!(SetEvent(weak), FALSE);
    assert_eq!(GetLastError(), ERROR_ACCESS_DENIED);
    assert_eq!(WaitForSingleObject(a, 0), WAIT_TIMEOUT, "nothing changed");
    CloseHandle(weak);
    CloseHandle(a);
}

// ---- §2.3 / §6 semaphores -------------------------------------------------------------------

#[test]
fn s6_semaphore_counts_and_too_many_posts() {
    backend::setup();
    let s = CreateSemaphoreA(None, 1, 2, Some(&backend::name("sem")));
    assert_ne!(s, 0);
    let mut prev: LONG = -7;
    assert_eq!(ReleaseSemaphore(s, 1, Some(&mut prev)), TRUE);
    assert_eq!(prev, 1);
    prev = -7;
    assert_eq!(ReleaseSemaphore(s, 1, Some(&mut prev)), FALSE);
    assert_eq!(GetLastError(), ERROR_TOO_MANY_POSTS);
    assert_eq!(prev, -7, "previous count is not written on failure");
    assert_eq!(WaitForSingleObject(s, 0), WAIT_OBJECT_0);
    assert_eq!(WaitForSingleObject(s, 0), WAIT_OBJECT_0);
    assert_eq!(WaitForSingleObject(s, 0), WAIT_TIMEOUT);
    assert_eq!(ReleaseSemaphore(s, 0, None), FALSE);
    assert_eq!(GetLastError(), ERROR_INVALID_PARAMETER);
    CloseHandle(s);
}

#[test]
fn s6_semaphore_release_wakes_blocked_waiters() {
    backend::setup();
    let s = CreateSemaphoreA(None, 0, 10, Some(&backend::name("sem")));
    let t = std::thread::spawn(move || WaitForSingleObject(s, 10_000));
    // The waiter may or may not be queued yet; either way one unit reaches it.
    assert_eq!(ReleaseSemaphore(s, 1, None), TRUE);
    assert_eq!(t.join().unwrap(), WAIT_OBJECT_0);
    CloseHandle(s);
}

// ---- grants at signal time (§5, §6) ----------------------------------------------------------
//
// A signal is judged, and its units handed out, when it happens. The waiter below releases a
// mutex and waits in one step (`SignalObjectAndWait`); the signaller needs that mutex first,
// so when it signals, the wait is certainly registered.

/// Runs `signal` on another thread once `waiter_on` has a registered wait, and returns
/// (the waiter's result, what `signal` returned).
fn with_registered_waiter<T: Send + 'static>(
    waiter_on: HANDLE,
    signal: impl FnOnce() -> T + Send + 'static,
) -> (DWORD, T) {
    let gate = CreateMutexA(None, TRUE, Some(&backend::name("gate")));
    let signaller = std::thread::spawn(move || {
        assert_eq!(WaitForSingleObject(gate, 10_000), WAIT_OBJECT_0);
        let result = signal();
        assert_eq!(ReleaseMutex(gate), TRUE);
        result
    });
    let waited = SignalObjectAndWait(gate, waiter_on, 10_000, FALSE);
    let result = signaller.join().unwrap();
    CloseHandle(gate);
    (waited, result)
}

#[test]
fn s5_set_then_reset_releases_the_waits_blocked_at_the_set() {
    backend::setup();
    let ev = CreateEventA(None, TRUE, FALSE, Some(&backend::name("event")));
    let (waited, ()) = with_registered_waiter(ev, move || {
        assert_eq!(SetEvent(ev), TRUE);
        assert_eq!(ResetEvent(ev), TRUE);
    });
    assert_eq!(waited, WAIT_OBJECT_0, "released at the set, before the reset");
    assert_eq!(WaitForSingleObject(ev, 0), WAIT_TIMEOUT);
    CloseHandle(ev);
}

#[test]
fn s5_an_auto_reset_signal_goes_to_the_waiter_not_to_a_later_poll() {
    backend::setup();
    let ev = CreateEventA(None, FALSE, FALSE, Some(&backend::name("event")));
    let (waited, polled) = with_registered_waiter(ev, move || {
        assert_eq!(SetEvent(ev), TRUE);
        WaitForSingleObject(ev, 0)
    });
    assert_eq!(waited, WAIT_OBJECT_0);
    assert_eq!(polled, WAIT_TIMEOUT, "the signal belonged to the waiter already");
    assert_eq!(WaitForSingleObject(ev, 0), WAIT_TIMEOUT, "consumed once");
    CloseHandle(ev);
}

#[test]
fn s6_a_released_unit_goes_to_the_waiter_not_to_a_later_poll() {
    backend::setup();
    let s = CreateSemaphoreA(None, 0, 5, Some(&backend::name("sem")));
    let (waited, polled) = with_registered_waiter(s, move || {
        assert_eq!(ReleaseSemaphore(s, 1, None), TRUE);
        WaitForSingleObject(s, 0)
    });
    assert_eq!(waited, WAIT_OBJECT_0);
    assert_eq!(polled, WAIT_TIMEOUT, "the unit belonged to the waiter already");
    let mut previous = -1;
    assert_eq!(ReleaseSemaphore(s, 1, Some(&mut previous)), TRUE);
    assert_eq!(previous, 0, "one unit, consumed once");
    CloseHandle(s);
}

#[test]
fn s5_a_pulse_releases_a_wait_all_only_if_it_is_satisfied_at_the_pulse() {
    backend::setup();
    let pulsed = CreateEventA(None, TRUE, FALSE, Some(&backend::name("pulsed")));
    let other = CreateEventA(None, TRUE, FALSE, Some(&backend::name("other")));
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        tx.send(()).unwrap();
        WaitForMultipleObjects(&[pulsed, other], TRUE, 2_000)
    });
    rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // At the pulse `other` is not signaled: the wait-all is not satisfied then, and once
    // `other` is set, `pulsed` is not signaled any more. Whether or not the wait was
    // registered by the pulse, it must time out.
    assert_eq!(PulseEvent(pulsed), TRUE);
    assert_eq!(SetEvent(other), TRUE);
    assert_eq!(waiter.join().unwrap(), WAIT_TIMEOUT);
    CloseHandle(pulsed);
    CloseHandle(other);
}

// ---- §3 names -------------------------------------------------------------------------------

#[test]
fn s3_one_namespace_cross_type_names_fail_with_6() {
    backend::setup();
    let name = backend::name("shared-name");
    let m = CreateMutexA(None, FALSE, Some(&name));
    assert_eq!(CreateEventA(None, TRUE, FALSE, Some(&name)), 0);
    assert_eq!(GetLastError(), ERROR_INVALID_HANDLE);
    assert_eq!(CreateSemaphoreA(None, 0, 1, Some(&name)), 0);
    assert_eq!(GetLastError(), ERROR_INVALID_HANDLE);
    assert_eq!(OpenEventA(EVENT_ALL_ACCESS, FALSE, Some(&name)), 0);
    assert_eq!(GetLastError(), ERROR_INVALID_HANDLE);
    CloseHandle(m);
}

#[test]
fn s3_name_rules_give_their_documented_errors() {
    backend::setup();
    // The backend's prefix ("" or "Local\\") counts towards the 260 units.
    let p = backend::PREFIX;
    let long = format!("{p}{}", "x".repeat(261 - p.len()));
    let cases = [
        (long, ERROR_FILENAME_EXCED_RANGE),
        (format!("{p}a\\b"), ERROR_PATH_NOT_FOUND),
        (format!("{p}a\\"), ERROR_PATH_NOT_FOUND),
        (backend::EMPTY_COMPONENT.to_owned(), ERROR_INVALID_NAME),
    ];
    for (name, code) in cases {
        assert_eq!(CreateMutexA(None, FALSE, Some(&name)), 0, "{name:?}");
        assert_eq!(GetLastError(), code, "{name:?}");
        assert_eq!(OpenMutexA(SYNCHRONIZE, FALSE, Some(&name)), 0, "{name:?}");
        assert_eq!(GetLastError(), code, "open {name:?}");
    }
    let ok = format!("{p}{}", "y".repeat(260 - p.len()));
    let h = CreateMutexA(None, FALSE, Some(&ok));
    assert_ne!(h, 0, "260 characters are allowed");
    CloseHandle(h);
}

#[test]
fn s3_wide_names_reach_the_same_object() {
    backend::setup();
    let name = backend::name("wide");
    let wide: Vec<u16> = name.encode_utf16().collect();
    let a = CreateMutexW(None, FALSE, Some(&wide));
    assert_ne!(a, 0);
    let b = OpenMutexA(SYNCHRONIZE, FALSE, Some(&name));
    assert_ne!(b, 0);
    CloseHandle(a);
    CloseHandle(b);
}

#[test]
fn s3_5_last_close_destroys_the_object_and_its_name() {
    backend::setup();
    let name = backend::name("temp");
    let a = CreateSemaphoreA(None, 0, 1, Some(&name));
    assert_eq!(CloseHandle(a), TRUE);
    assert_eq!(OpenSemaphoreA(SEMAPHORE_ALL_ACCESS, FALSE, Some(&name)), 0);
    assert_eq!(GetLastError(), ERROR_FILE_NOT_FOUND);
}

// ---- §2.5 handles ---------------------------------------------------------------------------

#[test]
fn s2_5_closed_and_bogus_handles_fail_with_6() {
    backend::setup();
    let h = CreateEventA(None, TRUE, FALSE, backend::anon().as_deref());
    assert_eq!(CloseHandle(h), TRUE);
    assert_eq!(CloseHandle(h), FALSE);
    assert_eq!(GetLastError(), ERROR_INVALID_HANDLE);
    assert_eq!(SetEvent(h), FALSE);
    assert_eq!(GetLastError(), ERROR_INVALID_HANDLE);
    assert_eq!(WaitForSingleObject(0, 0), WAIT_FAILED);
    assert_eq!(GetLastError(), ERROR_INVALID_HANDLE);
    assert_eq!(CloseHandle(123_456), FALSE);
}

#[test]
fn s2_wrong_type_handle_fails_with_6() {
    backend::setup();
    let m = CreateMutexA(None, FALSE, backend::anon().as_deref());
    assert_eq!(SetEvent(m), FALSE);
    assert_eq!(GetLastError(), ERROR_INVALID_HANDLE);
    assert_eq!(ReleaseSemaphore(m, 1, None), FALSE);
    assert_eq!(GetLastError(), ERROR_INVALID_HANDLE);
    CloseHandle(m);
}

#[test]
fn s2_last_error_is_per_thread() {
    backend::setup();
    SetLastError(42);
    let other = std::thread::spawn(|| {
        SetLastError(7);
        GetLastError()
    })
    .join()
    .unwrap();
    assert_eq!(other, 7);
    assert_eq!(GetLastError(), 42);
}

// ---- §4 mutex semantics ---------------------------------------------------------------------

#[test]
fn s4_2_recursive_acquisition_needs_as_many_releases() {
    backend::setup();
    let name = backend::name("mutex");
    let a = CreateMutexA(None, FALSE, Some(&name));
    let b = OpenMutexA(MUTEX_ALL_ACCESS, FALSE, Some(&name));
    for i in 0..32 {
        let h = if i % 2 == 0 { a } else { b };
        assert_eq!(WaitForSingleObject(h, 0), WAIT_OBJECT_0);
    }
    for _ in 0..32 {
        assert_eq!(ReleaseMutex(a), TRUE);
    }
    assert_eq!(ReleaseMutex(a), FALSE);
    assert_eq!(GetLastError(), ERROR_NOT_OWNER);
    CloseHandle(a);
    CloseHandle(b);
}

#[test]
fn s4_1_two_threads_contend_and_hand_over() {
    backend::setup();
    let h = CreateMutexA(None, TRUE, Some(&backend::name("mutex")));
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        assert_eq!(
            WaitForSingleObject(h, 0),
            WAIT_TIMEOUT,
            "owned by the main thread"
        );
        tx.send(()).unwrap();
        let r = WaitForSingleObject(h, 10_000);
        assert_eq!(ReleaseMutex(h), TRUE);
        r
    });
    rx.recv().unwrap();
    assert_eq!(ReleaseMutex(h), TRUE);
    assert_eq!(t.join().unwrap(), WAIT_OBJECT_0);
    CloseHandle(h);
}

#[test]
fn s4_4_thread_exit_abandons_the_mutex() {
    backend::setup();
    let h = CreateMutexA(None, FALSE, Some(&backend::name("mutex")));
    std::thread::spawn(move || {
        assert_eq!(WaitForSingleObject(h, 0), WAIT_OBJECT_0);
        // The thread ends while owning it.
    })
    .join()
    .unwrap();
    assert_eq!(WaitForSingleObject(h, 5_000), WAIT_ABANDONED);
    assert_eq!(
        WaitForSingleObject(h, 0),
        WAIT_OBJECT_0,
        "flag cleared by the acquisition"
    );
    assert_eq!(ReleaseMutex(h), TRUE);
    assert_eq!(ReleaseMutex(h), TRUE);
    CloseHandle(h);
}

#[test]
fn s4_fencing_tokens_grow_across_owners() {
    backend::setup();
    let h = CreateMutexA(None, FALSE, Some(&backend::name("mutex")));
    assert_eq!(WaitForSingleObject(h, 0), WAIT_OBJECT_0);
    let first = GetFencingToken(h);
    assert!(first > 0);
    assert_eq!(WaitForSingleObject(h, 0), WAIT_OBJECT_0);
    assert_eq!(GetFencingToken(h), first, "recursion keeps the token");
    ReleaseMutex(h);
    ReleaseMutex(h);
    assert_eq!(GetFencingToken(h), 0, "no token without a hold");
    assert_eq!(WaitForSingleObject(h, 0), WAIT_OBJECT_0);
    assert!(GetFencingToken(h) > first);
    ReleaseMutex(h);
    CloseHandle(h);
}

// ---- §7 waits -------------------------------------------------------------------------------

#[test]
fn s7_2_wait_any_returns_the_lowest_signaled_index() {
    backend::setup();
    let evs: Vec<HANDLE> = (0..4)
        .map(|_| CreateEventA(None, FALSE, FALSE, backend::anon().as_deref()))
        .collect();
    SetEvent(evs[2]);
    SetEvent(evs[3]);
    assert_eq!(WaitForMultipleObjects(&evs, FALSE, 0), WAIT_OBJECT_0 + 2);
    assert_eq!(WaitForMultipleObjects(&evs, FALSE, 0), WAIT_OBJECT_0 + 3);
    assert_eq!(WaitForMultipleObjects(&evs, FALSE, 0), WAIT_TIMEOUT);
    for h in evs {
        CloseHandle(h);
    }
}

#[test]
fn s7_3_wait_all_is_all_or_nothing() {
    backend::setup();
    let a = CreateEventA(None, FALSE, TRUE, backend::anon().as_deref());
    let b = CreateEventA(None, FALSE, FALSE, backend::anon().as_deref());
    assert_eq!(WaitForMultipleObjects(&[a, b], TRUE, 0), WAIT_TIMEOUT);
    assert_eq!(
        WaitForSingleObject(a, 0),
        WAIT_OBJECT_0,
        "a was not consumed"
    );
    SetEvent(a);
    SetEvent(b);
    assert_eq!(WaitForMultipleObjects(&[a, b], TRUE, 0), WAIT_OBJECT_0);
    assert_eq!(
        WaitForMultipleObjects(&[a, b], FALSE, 0),
        WAIT_TIMEOUT,
        "both consumed"
    );
    CloseHandle(a);
    CloseHandle(b);
}

#[test]
fn s7_3_wait_all_with_the_same_object_twice_fails_with_87() {
    backend::setup();
    let name = backend::name("event");
    let a = CreateEventA(None, TRUE, TRUE, Some(&name));
    let b = CreateEventA(None, TRUE, TRUE, Some(&name));
    assert_eq!(WaitForMultipleObjects(&[a, b], TRUE, 0), WAIT_FAILED);
    assert_eq!(GetLastError(), ERROR_INVALID_PARAMETER);
    assert_eq!(
        WaitForMultipleObjects(&[a, b], FALSE, 0),
        WAIT_OBJECT_0,
        "allowed in wait-any"
    );
    CloseHandle(a);
    CloseHandle(b);
}

#[test]
fn s7_4_handle_counts_outside_1_to_64_fail_with_87() {
    backend::setup();
    assert_eq!(WaitForMultipleObjects(&[], FALSE, 0), WAIT_FAILED);
    assert_eq!(GetLastError(), ERROR_INVALID_PARAMETER);
    let evs: Vec<HANDLE> = (0..65)
        .map(|_| CreateEventA(None, TRUE, TRUE, backend::anon().as_deref()))
        .collect();
    assert_eq!(WaitForMultipleObjects(&evs, FALSE, 0), WAIT_FAILED);
    assert_eq!(GetLastError(), ERROR_INVALID_PARAMETER);
    assert_eq!(
        WaitForMultipleObjects(&evs[..64], TRUE, 0),
        WAIT_OBJECT_0,
        "64 is accepted"
    );
    for h in evs {
        CloseHandle(h);
    }
}

#[test]
fn s7_4_timeout_is_enforced_by_the_server() {
    backend::setup();
    let ev = CreateEventA(None, TRUE, FALSE, backend::anon().as_deref());
    let start = Instant::now();
    SetLastError(0xDEAD_BEEF);
    assert_eq!(WaitForSingleObject(ev, 200), WAIT_TIMEOUT);
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "not before the timeout"
    );
    assert_eq!(
        GetLastError(),
        0xDEAD_BEEF,
        "WAIT_TIMEOUT leaves the last error alone"
    );
    CloseHandle(ev);
}

#[test]
fn s7_4_wait_needs_synchronize() {
    backend::setup();
    let name = backend::name("mutex");
    let a = CreateMutexA(None, FALSE, Some(&name));
    let weak = OpenMutexA(READ_CONTROL, FALSE, Some(&name));
    assert_eq!(WaitForSingleObject(weak, 0), WAIT_FAILED);
    assert_eq!(GetLastError(), ERROR_ACCESS_DENIED);
    CloseHandle(weak);
    CloseHandle(a);
}

#[test]
fn s2_5_signal_object_and_wait_hands_over_atomically() {
    backend::setup();
    let m = CreateMutexA(None, TRUE, Some(&backend::name("mutex")));
    // Named, so that both objects are in the backend under test (an unnamed object is
    // always local).
    let ev = CreateEventA(None, FALSE, FALSE, Some(&backend::name("event")));
    let waiter = Arc::new(std::sync::Barrier::new(2));
    let w = waiter.clone();
    let t = std::thread::spawn(move || {
        w.wait();
        let r = WaitForSingleObject(m, 10_000);
        SetEvent(ev);
        ReleaseMutex(m);
        r
    });
    waiter.wait();
    assert_eq!(SignalObjectAndWait(m, ev, 10_000, FALSE), WAIT_OBJECT_0);
    assert_eq!(t.join().unwrap(), WAIT_OBJECT_0);
    CloseHandle(m);
    CloseHandle(ev);
}

#[test]
fn s2_5_signal_object_and_wait_is_registered_before_it_signals() {
    backend::setup();
    // The condition-variable pattern: release the mutex and wait for a pulse in one step. The
    // pulser can only run once the mutex is released, and by then the wait must be registered,
    // or the pulse would find nobody and the waiter would sleep forever.
    let m = CreateMutexA(None, TRUE, Some(&backend::name("cv-mutex")));
    let ev = CreateEventA(None, TRUE, FALSE, Some(&backend::name("cv-event")));
    let pulser = std::thread::spawn(move || {
        assert_eq!(WaitForSingleObject(m, 10_000), WAIT_OBJECT_0);
        let pulsed = PulseEvent(ev);
        ReleaseMutex(m);
        pulsed
    });
    assert_eq!(SignalObjectAndWait(m, ev, 10_000, FALSE), WAIT_OBJECT_0);
    assert_eq!(pulser.join().unwrap(), TRUE);
    assert_eq!(WaitForSingleObject(ev, 0), WAIT_TIMEOUT, "a pulse leaves it unsignaled");
    CloseHandle(m);
    CloseHandle(ev);
}

//! Sessions used the way long-running services use them, against a real dlockd: a wait that
//! stays blocked while the same process keeps working, and futures that are dropped mid-wait.
//! (Failover, frozen nodes and skewed clocks are in `session_faults.rs`.)

use std::time::{Duration, Instant};

use dlock::win32::*;
use dlock::{ObjectKind, Timeout, WaitOutcome};
use dlock_tests::{shared_dlockd, unique};

/// Issue 8, finding 1: one thread of a process blocks in an `INFINITE` wait while another
/// thread of the same process locks and unlocks a mutex 10,000 times. The blocked wait once
/// held back the session's acknowledgements, so the server's reply table (1024) filled and
/// every call of the process failed with 1450 after about 225 cycles.
#[test]
fn a_blocked_wait_does_not_wedge_the_rest_of_its_process() {
    shared_dlockd();
    let stop_name = unique("stop");
    let stop = CreateEventA(None, TRUE, FALSE, Some(&stop_name));
    assert_ne!(stop, 0, "error {}", GetLastError());
    let waiter = std::thread::spawn(move || WaitForSingleObject(stop, INFINITE));
    // Let the wait register and block on the server.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!waiter.is_finished(), "the event is not set yet");

    let mutex = CreateMutexA(None, FALSE, Some(&unique("work")));
    assert_ne!(mutex, 0, "error {}", GetLastError());
    let started = Instant::now();
    for cycle in 0..10_000 {
        // Uncontended: a bounded wait, so that a wedged process fails the test instead of
        // hanging it.
        let result = WaitForSingleObject(mutex, 10_000);
        assert_eq!(
            result,
            WAIT_OBJECT_0,
            "cycle {cycle}: error {}",
            GetLastError()
        );
        assert_eq!(
            ReleaseMutex(mutex),
            TRUE,
            "cycle {cycle}: error {}",
            GetLastError()
        );
    }
    eprintln!(
        "10,000 cycles beside a blocked wait in {:?}",
        started.elapsed()
    );
    assert!(!waiter.is_finished(), "the blocked wait is still blocked");

    assert_eq!(SetEvent(stop), TRUE);
    assert_eq!(waiter.join().unwrap(), WAIT_OBJECT_0);
    assert_eq!(CloseHandle(mutex), TRUE);
    assert_eq!(CloseHandle(stop), TRUE);
}

/// A runtime for the async-API tests of this binary (the facade refuses to run inside one, so
/// they build their own).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Issue 8, finding "a cancelled remote wait is granted later to nobody": a `lock()` future
/// dropped by a timeout leaves its wait queued on the server; when the holder releases, the
/// mutex went to the dropped waiter's session and stayed there for good. Now the dropped wait
/// is cancelled (or its grant given back), so a third session takes the mutex at once.
#[test]
fn a_dropped_lock_future_leaves_nothing_acquired() {
    let server = shared_dlockd();
    runtime().block_on(async {
        let client = dlock::Client::connect([server.endpoint()]).await.unwrap();
        let ttl = Duration::from_secs(30);
        let (holder, dropper, third) = (
            client.open_session(ttl).await.unwrap(),
            client.open_session(ttl).await.unwrap(),
            client.open_session(ttl).await.unwrap(),
        );
        for round in 0..20 {
            let name = unique("dropped-lock");
            let held = holder.create_mutex(Some(&name), true).await.unwrap();
            let dropped = dropper.create_mutex(Some(&name), false).await.unwrap();
            let other = third.create_mutex(Some(&name), false).await.unwrap();
            let gave_up =
                tokio::time::timeout(Duration::from_millis(100), dropped.lock(Timeout::Infinite))
                    .await;
            assert!(gave_up.is_err(), "round {round}: the holder still holds it");
            // Odd rounds release before the cancellation can have been applied, so the grant
            // races it and must be given back; even rounds give the cancellation time.
            if round % 2 == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            held.release().await.unwrap();
            let outcome = other.lock(Timeout::Millis(5_000)).await.unwrap();
            assert!(
                matches!(outcome, WaitOutcome::Signaled { .. }),
                "round {round}: the third session gets the released mutex: {outcome:?}"
            );
            other.release().await.unwrap();
            let state = other.query().await.unwrap();
            assert_eq!(state.kind, ObjectKind::Mutex);
            assert_eq!(state.owner_session_id, 0, "round {round}: {state:?}");
        }
    });
}

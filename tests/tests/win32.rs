//! The `dlock::win32` conformance suite against a real dlockd (one shared server per test
//! binary, started on a free port), plus the behaviours only the cluster has: unnamed objects
//! and the `Global\` prefix. The same suite runs against `Local\` names in `win32_local.rs`.

mod backend {
    /// Cluster names need no prefix.
    pub const PREFIX: &str = "";
    /// `Global\\` followed by an empty component.
    pub const EMPTY_COMPONENT: &str = "Global\\\\x";

    /// Starts (once) the shared dlockd and points the facade at it; also sets the local
    /// namespace directory, so that every environment change of this binary happens before
    /// any test gets past its setup.
    pub fn setup() {
        dlock_tests::shared_dlockd();
        dlock_tests::local_namespace();
    }

    /// A unique cluster name.
    pub fn name(prefix: &str) -> String {
        dlock_tests::unique(prefix)
    }

    /// A named cluster object where a test could use an unnamed one: unnamed objects are
    /// served by the local engine, and this suite is about the cluster.
    pub fn anon() -> Option<String> {
        Some(dlock_tests::unique("anon"))
    }
}

include!("conformance/suite.rs");

// ---- cluster-only behaviours ------------------------------------------------------------------

use dlock_tests::unique;

fn setup() {
    backend::setup();
}

#[test]
fn s3_4_a_leading_backslash_is_a_bad_pathname() {
    setup();
    assert_eq!(CreateMutexA(None, FALSE, Some("\\leading")), 0);
    assert_eq!(GetLastError(), ERROR_BAD_PATHNAME);
}

#[test]
fn s3_4_local_and_cluster_names_are_different_objects_and_mix_only_in_wait_any() {
    setup();
    let name = unique("split");
    let cluster = CreateEventA(None, TRUE, TRUE, Some(&name));
    let local = CreateEventA(None, TRUE, FALSE, Some(&format!("Local\\{name}")));
    assert_ne!(local, 0, "error {}", GetLastError());
    assert_eq!(GetLastError(), 0, "a new object: Local\\X is not X");
    assert_eq!(WaitForSingleObject(cluster, 0), WAIT_OBJECT_0);
    assert_eq!(WaitForSingleObject(local, 0), WAIT_TIMEOUT);
    // A wait-any spans both backends; a wait-all cannot be atomic across them.
    assert_eq!(
        WaitForMultipleObjects(&[local, cluster], FALSE, 0),
        WAIT_OBJECT_0 + 1
    );
    assert_eq!(
        WaitForMultipleObjects(&[cluster, local], TRUE, 0),
        WAIT_FAILED
    );
    assert_eq!(GetLastError(), ERROR_INVALID_PARAMETER);
    assert_eq!(CloseHandle(local), TRUE);
    assert_eq!(CloseHandle(cluster), TRUE);
}

// ---- one wait across both backends ------------------------------------------------------------

#[test]
fn the_service_loop_waits_on_a_private_shutdown_event_and_a_shared_mutex() {
    setup();
    // The most common Win32 service loop: an unnamed (private, local) shutdown event and a
    // named (cluster) work mutex in one WaitForMultipleObjects.
    let shutdown = CreateEventA(None, TRUE, FALSE, None);
    let work = CreateMutexA(None, FALSE, Some(&unique("work")));
    assert_ne!(shutdown, 0);
    assert_ne!(work, 0);
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let mut rounds = 0;
        loop {
            // Bounded, so that a wait that never ends fails the test instead of hanging it.
            match WaitForMultipleObjects(&[shutdown, work], FALSE, 30_000) {
                WAIT_OBJECT_0 => return rounds,
                r if r == WAIT_OBJECT_0 + 1 => {
                    rounds += 1;
                    assert_eq!(ReleaseMutex(work), TRUE, "the loop owns the mutex");
                    if rounds == 3 {
                        tx.send(()).unwrap();
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => panic!("wait returned {other:#x}, error {}", GetLastError()),
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the loop took the shared mutex");
    // While another thread holds the mutex, the loop blocks in both backends at once; the
    // private event ends it.
    assert_eq!(WaitForSingleObject(work, 10_000), WAIT_OBJECT_0);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(SetEvent(shutdown), TRUE);
    let rounds = worker.join().unwrap();
    assert!(rounds >= 3, "{rounds}");
    assert_eq!(ReleaseMutex(work), TRUE);
    // The loop's cluster wait, stopped when the event ended it, took nothing: the mutex is
    // free for another thread (the cancellation is applied in the background).
    let free = std::thread::spawn(move || {
        let r = WaitForSingleObject(work, 5_000);
        if r == WAIT_OBJECT_0 || r == WAIT_ABANDONED {
            ReleaseMutex(work);
        }
        r
    })
    .join()
    .unwrap();
    assert_eq!(free, WAIT_OBJECT_0, "not held, not abandoned");
    CloseHandle(shutdown);
    CloseHandle(work);
}

#[test]
fn a_mixed_wait_any_returns_the_lowest_signaled_index_and_gives_back_the_rest() {
    setup();
    let local = CreateSemaphoreA(None, 1, 1, None);
    let cluster = CreateMutexA(None, FALSE, Some(&unique("mixed")));
    // Both signaled at the call: index 0 (the local semaphore) wins, the cluster mutex is not
    // kept.
    assert_eq!(
        WaitForMultipleObjects(&[local, cluster], FALSE, 0),
        WAIT_OBJECT_0
    );
    let other = std::thread::spawn(move || {
        let r = WaitForSingleObject(cluster, 0);
        ReleaseMutex(cluster);
        r
    })
    .join()
    .unwrap();
    assert_eq!(other, WAIT_OBJECT_0, "the cluster mutex was given back");
    // Now only the cluster side is available (the semaphore is at 0): index 1.
    assert_eq!(
        WaitForMultipleObjects(&[local, cluster], FALSE, 0),
        WAIT_OBJECT_0 + 1
    );
    assert_eq!(ReleaseMutex(cluster), TRUE);
    // Blocking on both: whichever is signaled first ends the wait, and only it is taken.
    let cluster_ev = CreateEventA(None, FALSE, FALSE, Some(&unique("mixed-ev")));
    let local_ev = CreateEventA(None, FALSE, FALSE, None);
    let t =
        std::thread::spawn(move || WaitForMultipleObjects(&[local_ev, cluster_ev], FALSE, 10_000));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(SetEvent(cluster_ev), TRUE);
    assert_eq!(t.join().unwrap(), WAIT_OBJECT_0 + 1);
    let t =
        std::thread::spawn(move || WaitForMultipleObjects(&[local_ev, cluster_ev], FALSE, 10_000));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(SetEvent(local_ev), TRUE);
    assert_eq!(t.join().unwrap(), WAIT_OBJECT_0);
    assert_eq!(
        WaitForMultipleObjects(&[local_ev, cluster_ev], FALSE, 0),
        WAIT_TIMEOUT,
        "each signal was consumed once"
    );
    let start = Instant::now();
    assert_eq!(
        WaitForMultipleObjects(&[local_ev, cluster_ev], FALSE, 300),
        WAIT_TIMEOUT
    );
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(
        took < Duration::from_secs(3),
        "one timeout, not two: {took:?}"
    );
    // A local object without SYNCHRONIZE fails the wait before anything is taken.
    let name = format!("Local\\{}", unique("nosync"));
    let owner = CreateEventA(None, TRUE, TRUE, Some(&name));
    let no_sync = OpenEventA(EVENT_MODIFY_STATE, FALSE, Some(&name));
    assert_ne!(no_sync, 0);
    assert_eq!(WaitForSingleObject(cluster, 0), WAIT_OBJECT_0);
    assert_eq!(ReleaseMutex(cluster), TRUE);
    assert_eq!(
        WaitForMultipleObjects(&[no_sync, cluster], FALSE, 0),
        WAIT_FAILED
    );
    assert_eq!(GetLastError(), ERROR_ACCESS_DENIED);
    let other = std::thread::spawn(move || {
        let r = WaitForSingleObject(cluster, 0);
        ReleaseMutex(cluster);
        r
    })
    .join()
    .unwrap();
    assert_eq!(other, WAIT_OBJECT_0, "the failed wait took nothing");
    CloseHandle(no_sync);
    CloseHandle(owner);
    // Across backends SignalObjectAndWait signals, then waits.
    assert_eq!(WaitForSingleObject(cluster, 0), WAIT_OBJECT_0);
    assert_eq!(SetEvent(local_ev), TRUE);
    assert_eq!(
        SignalObjectAndWait(cluster, local_ev, 1_000, FALSE),
        WAIT_OBJECT_0
    );
    let other = std::thread::spawn(move || {
        let r = WaitForSingleObject(cluster, 0);
        ReleaseMutex(cluster);
        r
    })
    .join()
    .unwrap();
    assert_eq!(other, WAIT_OBJECT_0, "the signal half released the mutex");
    for h in [local, cluster, cluster_ev, local_ev] {
        CloseHandle(h);
    }
}

#[test]
fn s3_names_are_case_sensitive_and_global_prefix_is_the_same_object() {
    setup();
    let name = unique("CaseName");
    let a = CreateMutexA(None, FALSE, Some(&name));
    assert_eq!(
        OpenMutexA(MUTEX_ALL_ACCESS, FALSE, Some(&name.to_lowercase())),
        0
    );
    assert_eq!(GetLastError(), ERROR_FILE_NOT_FOUND);
    let g = CreateMutexA(None, FALSE, Some(&format!("Global\\{name}")));
    assert_eq!(GetLastError(), ERROR_ALREADY_EXISTS);
    CloseHandle(g);
    CloseHandle(a);
}

#[test]
fn s3_empty_and_null_names_create_unnamed_objects() {
    setup();
    let a = CreateEventA(None, TRUE, FALSE, Some(""));
    assert_ne!(a, 0);
    assert_eq!(GetLastError(), 0);
    let b = CreateEventA(None, TRUE, FALSE, Some(""));
    assert_eq!(GetLastError(), 0, "two empty names are two objects");
    SetEvent(a);
    assert_eq!(WaitForSingleObject(b, 0), WAIT_TIMEOUT);
    let c = CreateMutexA(None, FALSE, None);
    assert_ne!(c, 0);
    CloseHandle(a);
    CloseHandle(b);
    CloseHandle(c);
}

//! The async API on `Local\` names: no server anywhere, a private namespace directory.

use std::time::Duration;

use dlock::{Error, LocalNamespace, Timeout, WaitOutcome, Win32Error};

fn local() -> LocalNamespace {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        // Once, before any use of the local backend in this test binary (every test calls
        // this first).
        let mut settings = dlock_local::Settings::from_env();
        settings.dir = dir.path().to_path_buf();
        dlock_local::configure(settings).expect("configured before first use");
        dir
    });
    LocalNamespace::attach().expect("attach")
}

fn name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("Local\\{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

#[tokio::test]
async fn each_mutex_handle_is_its_own_owner_and_tokens_grow() {
    let ns = local();
    let n = name("m");
    let a = ns.create_mutex(&n, true).await.unwrap();
    assert!(!a.already_existed());
    let first = a.fencing_token().expect("created owned");
    let b = ns.open_mutex(&n).await.unwrap();
    assert_eq!(b.try_lock().await.unwrap(), WaitOutcome::TimedOut);
    assert!(
        a.lock(Timeout::Millis(0)).await.unwrap().is_acquired(),
        "recursive"
    );
    a.release().await.unwrap();
    a.release().await.unwrap();
    assert_eq!(a.release().await, Err(Error::Win32(Win32Error::NOT_OWNER)));
    let got = b.lock(Timeout::Millis(5_000)).await.unwrap();
    assert!(got.is_acquired());
    assert!(b.fencing_token().unwrap() > first);
    let state = b.query().await.unwrap();
    assert_eq!(state.recursion, 1);
    b.release().await.unwrap();
}

#[tokio::test]
async fn dropping_a_holding_handle_abandons_the_mutex() {
    let ns = local();
    let n = name("drop");
    let a = ns.create_mutex(&n, false).await.unwrap();
    let b = ns.open_mutex(&n).await.unwrap();
    assert!(a.lock(Timeout::Infinite).await.unwrap().is_acquired());
    drop(a);
    let got = b.lock(Timeout::Millis(5_000)).await.unwrap();
    assert!(
        matches!(got, WaitOutcome::Abandoned { index: 0, .. }),
        "{got:?}"
    );
    b.release().await.unwrap();
}

#[tokio::test]
async fn a_cancelled_lock_leaves_nothing_held() {
    let ns = local();
    let n = name("cancel");
    let holder = ns.create_mutex(&n, true).await.unwrap();
    let waiter = ns.open_mutex(&n).await.unwrap();
    let cancelled =
        tokio::time::timeout(Duration::from_millis(50), waiter.lock(Timeout::Infinite)).await;
    assert!(cancelled.is_err(), "the lock was still waiting");
    holder.release().await.unwrap();
    let third = ns.open_mutex(&n).await.unwrap();
    assert!(
        third
            .lock(Timeout::Millis(5_000))
            .await
            .unwrap()
            .is_acquired(),
        "the cancelled wait did not keep the mutex"
    );
    third.release().await.unwrap();
}

#[tokio::test]
async fn events_semaphores_and_multiple_waits() {
    let ns = local();
    let ev = ns.create_event(&name("ev"), false, false).await.unwrap();
    let sem = ns.create_semaphore(&name("sem"), 0, 2).await.unwrap();
    let m = ns.create_mutex(&name("mx"), false).await.unwrap();
    assert_eq!(
        ns.wait_any(&[&ev, &sem], Timeout::Millis(0)).await.unwrap(),
        WaitOutcome::TimedOut
    );
    assert_eq!(sem.release(2).await.unwrap(), 0);
    assert_eq!(
        sem.release(1).await,
        Err(Error::Win32(Win32Error::TOO_MANY_POSTS))
    );
    ev.set().await.unwrap();
    let got = ns.wait_any(&[&sem, &ev], Timeout::Millis(0)).await.unwrap();
    assert!(
        matches!(got, WaitOutcome::Signaled { index: 0, .. }),
        "{got:?}"
    );
    let got = ns
        .wait_all(&[&m, &ev, &sem], Timeout::Millis(0))
        .await
        .unwrap();
    assert!(got.is_acquired(), "{got:?}");
    assert!(
        m.fencing_token().is_some(),
        "the wait-all took the mutex for its handle"
    );
    m.release().await.unwrap();
    assert!(!ev.query().await.unwrap().signaled, "auto-reset consumed");
    assert_eq!(sem.query().await.unwrap().count, 0);
    let m2 = ns.create_mutex(&name("mx2"), false).await.unwrap();
    assert!(matches!(
        ns.wait_all(&[&m, &m2], Timeout::Millis(0)).await,
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(
        ns.open_event("Local\\never-created").await.err(),
        Some(Error::Win32(Win32Error::FILE_NOT_FOUND))
    );
}

#[tokio::test]
async fn names_without_the_prefix_are_refused() {
    let ns = local();
    assert!(matches!(
        ns.create_mutex("plain", false).await,
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(
        ns.create_mutex("Local\\a\\b", false).await.err(),
        Some(Error::Win32(Win32Error::PATH_NOT_FOUND))
    );
    let long = format!("Local\\{}", "x".repeat(255));
    assert_eq!(
        ns.create_event(&long, true, false).await.err(),
        Some(Error::Win32(Win32Error::FILENAME_EXCED_RANGE))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_wait_never_loses_an_auto_reset_signal_or_a_semaphore_unit() {
    let ns = local();
    let ev = ns
        .create_event(&name("race-ev"), false, false)
        .await
        .unwrap();
    let sem = ns.create_semaphore(&name("race-sem"), 0, 1).await.unwrap();
    for round in 0..200u64 {
        // Cancel the wait at a moment that varies around the signal.
        let delay = Duration::from_micros(round % 7 * 50);
        let both: [&dyn dlock::Waitable; 2] = [&ev, &sem];
        let wait = tokio::time::timeout(delay, ns.wait_any(&both, Timeout::Infinite));
        let signal = async {
            tokio::time::sleep(Duration::from_micros(round % 5 * 60)).await;
            if round % 2 == 0 {
                ev.set().await.unwrap();
            } else {
                sem.release(1).await.unwrap();
            }
        };
        let (waited, ()) = tokio::join!(wait, signal);
        // Either the wait reported the signal, or the signal is still there: never both
        // consumed and unreported. (A give-back runs on a blocking thread: allow it a moment.)
        let delivered = matches!(waited, Ok(Ok(o)) if o.is_acquired());
        let mut left = false;
        // A correctness deadline (10 s), left as soon as the state is known.
        for _ in 0..2_000 {
            let q = if round % 2 == 0 {
                ev.query().await
            } else {
                sem.query().await
            };
            let q = q.unwrap();
            left = q.signaled || q.count > 0;
            if left || delivered {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            delivered != left,
            "round {round}: delivered {delivered}, left {left}"
        );
        // Consume what is left so the next round starts clean.
        let _ = ns.wait_any(&[&ev, &sem], Timeout::Millis(0)).await;
    }
}

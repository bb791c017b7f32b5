//! Issue 8, "a failed ThreadExit is never retried": a facade thread that dies owning a mutex is
//! reported to the cluster with `ThreadExit`, and if that report failed (the cluster
//! unreachable for longer than the request timeout), the dead thread's mutex stayed owned for
//! the life of the process. Now thread exits are queued and retried for as long as the session
//! lives, so the mutex is abandoned to the next waiter once the cluster answers again.
//!
//! The outage is a dlockd killed with SIGKILL and restarted on the same address and data (a
//! frozen one would not do: the report would wait in its socket buffer and be applied on the
//! thaw even after the client gave up).

use std::time::Duration;

use dlock::win32::*;
use dlock::{Timeout, WaitOutcome};
use dlock_tests::{Dlockd, unique};

#[test]
fn a_thread_exit_that_failed_for_a_while_still_abandons_the_mutex() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Dlockd::start_detached(dir.path(), &[]);
    dlock_tests::configure_facade(
        &server.endpoint(),
        Some(Duration::from_millis(60_000)),
        Some(Duration::from_millis(1_000)),
    );
    let name = unique("exit-retry");
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (exit_tx, exit_rx) = std::sync::mpsc::channel::<()>();
    let owner = {
        let name = name.clone();
        std::thread::spawn(move || {
            let h = CreateMutexA(None, FALSE, Some(&name));
            assert_ne!(h, 0, "error {}", GetLastError());
            assert_eq!(WaitForSingleObject(h, INFINITE), WAIT_OBJECT_0);
            held_tx.send(()).unwrap();
            // Exit owning the mutex, while the cluster does not answer.
            exit_rx.recv().unwrap();
        })
    };
    held_rx.recv().unwrap();
    server.kill9();
    exit_tx.send(()).unwrap();
    owner.join().unwrap();
    // Longer than the request timeout: the first ThreadExit attempt has given up by now.
    std::thread::sleep(Duration::from_secs(3));
    server.restart();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = dlock::Client::connect([server.endpoint()]).await.unwrap();
        let session = client.open_session(Duration::from_secs(30)).await.unwrap();
        let mutex = session.create_mutex(Some(&name), false).await.unwrap();
        let outcome = mutex.lock(Timeout::Millis(10_000)).await.unwrap();
        assert!(
            matches!(outcome, WaitOutcome::Abandoned { .. }),
            "the dead thread's mutex must be abandoned to the next waiter: {outcome:?}"
        );
        mutex.release().await.unwrap();
    });
}

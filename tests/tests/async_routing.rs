//! The async API routes by name: a [`dlock::Session`] given a `Local\` name serves it from the
//! host-local backend, and a wait that mixes local and cluster objects fails with 87.

use std::time::Duration;

use dlock::{Client, Error, Timeout, WaitOutcome, Win32Error};
use dlock_tests::{local_namespace, shared_dlockd, unique};

#[test]
fn a_session_serves_local_names_locally_and_refuses_mixed_waits() {
    let server = shared_dlockd();
    local_namespace();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = Client::connect([server.endpoint()]).await.unwrap();
        let session = client.open_session(Duration::from_secs(10)).await.unwrap();
        let name = unique("routed");
        let local = session
            .create_mutex(Some(&format!("Local\\{name}")), true)
            .await
            .unwrap();
        assert!(local.session().is_none(), "served by the local backend");
        let cluster = session.create_event(Some(&name), true, true).await.unwrap();
        assert_eq!(cluster.session().map(|s| s.id()), Some(session.id()));
        assert_eq!(
            session
                .wait_any(&[&local, &cluster], Timeout::Millis(0))
                .await,
            Err(Error::Win32(Win32Error::INVALID_PARAMETER))
        );
        // A second local handle through the session is a second owner.
        let other = session.open_mutex(&format!("Local\\{name}")).await.unwrap();
        assert_eq!(other.try_lock().await.unwrap(), WaitOutcome::TimedOut);
        local.release().await.unwrap();
        assert!(other.try_lock().await.unwrap().is_acquired());
        other.release().await.unwrap();
        session.close().await.unwrap();
    });
}

#[test]
fn a_held_namespace_lock_never_blocks_a_runtime_worker() {
    local_namespace();
    // One worker thread: if a local call blocked it, nothing else could run.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ns = dlock::LocalNamespace::attach().unwrap();
        let name = format!("Local\\{}", unique("stuck"));
        let event = ns.create_event(&name, true, false).await.unwrap();
        let semaphore = ns
            .create_semaphore(&format!("{name}-s"), 0, 5)
            .await
            .unwrap();
        // Another thread holds the namespace lock, as a process stopped while holding it
        // would, for a few seconds.
        let seg = dlock_local::namespace().unwrap();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let g = seg.lock().unwrap();
            held_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_secs(3));
            drop(g);
        });
        held_rx.recv().unwrap();
        let set = tokio::spawn(async move { event.set().await.map(|()| event) });
        let release = tokio::spawn(async move { semaphore.release(1).await });
        // The runtime keeps running other work meanwhile.
        let started = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a worker was blocked for {:?}",
            started.elapsed()
        );
        // Once the lock is free, the calls complete.
        let event = set.await.unwrap().unwrap();
        assert_eq!(release.await.unwrap(), Ok(0));
        assert_eq!(
            event.wait(Timeout::Millis(0)).await.unwrap(),
            WaitOutcome::Signaled {
                index: 0,
                fencing_token: 0
            }
        );
        holder.join().unwrap();
    });
}

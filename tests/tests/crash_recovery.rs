//! Crash recovery: `kill -9` of dlockd while clients are writing, then a restart on the same
//! data directory. Every acknowledged operation must be there exactly once (the client retries
//! in-flight requests with the same sequence number and the server deduplicates them), every
//! object, handle, owner and session must be back, and a later wait must behave.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dlock::win32::*;
use dlock_tests::{restartable_dlockd, unique};

const WRITERS: usize = 4;
/// Acknowledged releases before the crash, and again after the restart.
const ACKS_BEFORE_CRASH: u64 = 200;
const ACKS_AFTER_RESTART: u64 = 200;

#[test]
fn kill_9_under_load_loses_nothing_acknowledged_and_acts_once() {
    let server = restartable_dlockd();
    let sem = CreateSemaphoreA(None, 0, i32::MAX, Some(&unique("counter")));
    assert_ne!(sem, 0, "create: {}", GetLastError());
    let mutex = CreateMutexA(None, TRUE, Some(&unique("held")));
    let event = CreateEventA(None, TRUE, TRUE, Some(&unique("flag")));
    let token_before = GetFencingToken(mutex);

    let acks = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (acks, stop) = (acks.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    if ReleaseSemaphore(sem, 1, None) == TRUE {
                        acks.fetch_add(1, Ordering::AcqRel);
                    } else {
                        panic!("release failed with {}", GetLastError());
                    }
                }
            })
        })
        .collect();

    let wait_for_acks = |target: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while acks.load(Ordering::Acquire) < target {
            assert!(
                std::time::Instant::now() < deadline,
                "writers made no progress"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for_acks(ACKS_BEFORE_CRASH);
    {
        let mut server = server.lock().unwrap();
        server.kill9();
        server.restart();
    }
    let after_restart = acks.load(Ordering::Acquire);
    wait_for_acks(after_restart + ACKS_AFTER_RESTART);
    stop.store(true, Ordering::Release);
    for w in writers {
        w.join().expect("writer thread");
    }

    let total = acks.load(Ordering::Acquire);
    let mut previous: LONG = -1;
    assert_eq!(ReleaseSemaphore(sem, 1, Some(&mut previous)), TRUE);
    assert_eq!(
        previous as u64, total,
        "every acknowledged release applied exactly once"
    );

    assert_eq!(
        WaitForSingleObject(event, 0),
        WAIT_OBJECT_0,
        "the event is still set"
    );
    let contender = std::thread::spawn(move || WaitForSingleObject(mutex, 0))
        .join()
        .unwrap();
    assert_eq!(
        contender, WAIT_TIMEOUT,
        "the mutex is still owned by this thread"
    );
    assert_eq!(GetFencingToken(mutex), token_before);
    assert_eq!(ReleaseMutex(mutex), TRUE, "ownership survived the crash");
    let later = std::thread::spawn(move || {
        let r = WaitForSingleObject(mutex, 10_000);
        ReleaseMutex(mutex);
        r
    })
    .join()
    .unwrap();
    assert_eq!(later, WAIT_OBJECT_0, "a later wait is granted");
    for h in [sem, mutex, event] {
        assert_eq!(CloseHandle(h), TRUE);
    }
}

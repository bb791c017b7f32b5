//! The async API against the mock cluster: leader hints, keepalive renewal, request
//! deduplication on retry, session loss.

mod common;

use std::time::Duration;

use dlock::{Error, ObjectKind, SessionState, Timeout, WaitOutcome, Win32Error};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_api_follows_hints_keeps_alive_and_reuses_headers() {
    let (follower, _leader, state) = common::start_cluster().await;
    // Only the follower is configured: the leader is found through the hint.
    let client = dlock::Client::connect([follower.to_string()])
        .await
        .unwrap();
    let session = client
        .open_session(Duration::from_millis(600))
        .await
        .unwrap();
    assert_eq!(session.ttl(), Duration::from_millis(600));
    assert_eq!(session.state(), SessionState::Alive);

    let m = session.create_mutex(Some("m"), true).await.unwrap();
    assert!(!m.already_existed());
    let first_token = m.fencing_token().expect("created owned");
    let m2 = session.create_mutex(Some("m"), true).await.unwrap();
    assert!(m2.already_existed());
    assert_eq!(
        m2.fencing_token(),
        None,
        "an existing mutex is not acquired"
    );
    assert!(session.check_fencing_token("m", first_token).await.unwrap());
    m.release().await.unwrap();
    assert_eq!(m.fencing_token(), None);
    assert_eq!(m.release().await, Err(Error::Win32(Win32Error::NOT_OWNER)));

    // A wait whose reply is lost is re-sent with the same header and applied once.
    state.lock().unwrap().lose_next_wait_reply = true;
    let outcome = m.lock(Timeout::Millis(1000)).await.unwrap();
    assert!(matches!(outcome, WaitOutcome::Signaled { index: 0, .. }));
    assert_eq!(state.lock().unwrap().waits_applied, 1);
    assert_eq!(m.fencing_token(), outcome.fencing_token());

    // Contending owner (another thread id) times out.
    let h = session
        .open(ObjectKind::Mutex, "m", 0x001F_0001)
        .await
        .unwrap();
    assert_eq!(
        session.wait(99, &[h], false, Timeout::Millis(0)).await,
        Ok(WaitOutcome::TimedOut)
    );
    assert_eq!(
        session.open(ObjectKind::Mutex, "nope", 0x001F_0001).await,
        Err(Error::Win32(Win32Error::FILE_NOT_FOUND))
    );

    // Keepalives keep the session alive well past its TTL.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(session.state(), SessionState::Alive);
    assert!(state.lock().unwrap().keepalives >= 3);

    // The server forgets the session: a keepalive reply says so, and calls fail.
    let mut states = session.watch_state();
    state.lock().unwrap().sessions.clear();
    tokio::time::timeout(
        Duration::from_secs(2),
        states.wait_for(|s| *s == SessionState::Expired),
    )
    .await
    .expect("expired within ttl")
    .unwrap();
    assert_eq!(m.lock(Timeout::Millis(0)).await, Err(Error::SessionLost));
    assert_eq!(m.fencing_token(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_session_clone_closes_it() {
    let (_follower, leader, state) = common::start_cluster().await;
    let client = dlock::Client::connect([leader.to_string()]).await.unwrap();
    let session = client.open_session(Duration::from_secs(5)).await.unwrap();
    let id = session.id();
    let clone = session.clone();
    drop(session);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(state.lock().unwrap().closed_sessions.is_empty());
    drop(clone);
    for _ in 0..50 {
        if state.lock().unwrap().closed_sessions.contains(&id) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("session {id} was not closed");
}

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

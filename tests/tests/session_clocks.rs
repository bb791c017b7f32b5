//! Issue 8, "checkpoints subtract wall clocks of different leaders": a session's silence was
//! judged by subtracting keepalive times written by one leader from a checkpoint time written
//! by another, so one node whose clock ran ahead made the next leader expire every live session
//! at once. Now checkpoints carry durations measured on each leader's monotonic clock.
//!
//! Three real dlockd processes, node 1's wall clock an hour ahead and node 2's an hour behind
//! (the test-only `DLOCKD_TEST_CLOCK_SKEW_MS`); leadership is moved around repeatedly, each
//! new leader killed soon after it takes over (before its first periodic checkpoint). No live
//! session may be expired; a session that stops its keepalives must still be expired, within
//! its TTL plus a failover.

use std::time::{Duration, Instant};

use dlock::{SessionState, Timeout, WaitOutcome};
use dlock_proto::v1 as pb;
use dlock_proto::v1::dlock_client::DlockClient;
use dlock_tests::procs::ProcCluster;

const HOUR_MS: &str = "3600000";
const LIVE_TTL: Duration = Duration::from_secs(10);
const DEAD_TTL_MS: u64 = 4_000;
const ROUNDS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_clocks_and_many_elections_expire_no_live_session() {
    let skew = dlock_server::replica::CLOCK_SKEW_ENV;
    let mut cluster = ProcCluster::start_with_env(
        3,
        &[],
        &[(1, skew, HOUR_MS), (2, skew, &format!("-{HOUR_MS}"))],
    )
    .await;
    cluster.leader().await;
    let client = dlock::Client::connect(cluster.endpoint_list())
        .await
        .unwrap();
    let mut live = Vec::new();
    for i in 0..3 {
        let session = client.open_session(LIVE_TTL).await.unwrap();
        let mutex = session
            .create_mutex(Some(&format!("clock-live-{i}")), true)
            .await
            .unwrap();
        live.push((session, mutex));
    }
    for round in 0..ROUNDS {
        let leader = cluster.leader().await;
        // Let it take over, then kill it before its first periodic checkpoint (1 s).
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.kill9(leader);
        cluster.restart(leader).await;
        eprintln!("round {round}: killed and restarted leader {leader}");
    }
    cluster.leader().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (session, mutex) in &live {
        assert_eq!(
            session.state(),
            SessionState::Alive,
            "live session {} expired",
            session.id()
        );
        let state = mutex.query().await.unwrap();
        assert_eq!(
            state.owner_session_id,
            session.id(),
            "a live session lost its mutex: {state:?}"
        );
    }

    // A session that stops its keepalives (raw gRPC, no keepalive task) is still expired.
    let leader = cluster.leader().await;
    let mut raw = DlockClient::connect(format!("http://{}", cluster.node(leader).endpoint()))
        .await
        .unwrap();
    let dead = raw
        .open_session(pb::OpenSessionRequest {
            ttl_ms: DEAD_TTL_MS,
            client_name: "silent".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let opened = Instant::now();
    let created = raw
        .create(pb::CreateRequest {
            header: Some(pb::RequestHeader {
                session_id: dead.session_id,
                session_secret: dead.session_secret.clone(),
                seq: 1,
                ..Default::default()
            }),
            thread_id: 1,
            kind: pb::ObjectKind::Mutex as i32,
            name: Some("clock-dead".into()),
            initial_owner: true,
            access: 0x001F_0001,
            initial_count: 0,
            maximum_count: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.error, 0);
    // One failover while it is silent.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    cluster.kill9(leader);
    cluster.restart(leader).await;
    let (waiter, _) = &live[0];
    let mutex = waiter
        .create_mutex(Some("clock-dead"), false)
        .await
        .unwrap();
    let outcome = mutex.lock(Timeout::Millis(30_000)).await.unwrap();
    let took = opened.elapsed();
    assert!(
        matches!(outcome, WaitOutcome::Abandoned { .. }),
        "the silent session's mutex is abandoned: {outcome:?}"
    );
    eprintln!("silent session expired {took:?} after its last sign of life (TTL {DEAD_TTL_MS} ms)");
    assert!(
        took < Duration::from_millis(DEAD_TTL_MS) + Duration::from_secs(8),
        "expired only after {took:?}"
    );
    mutex.release().await.unwrap();
}

//! Keepalives never touch the Raft log: a burst of keepalives costs no log entries beyond the
//! leader's periodic checkpoint (at most one per `checkpoint-interval-ms`, however many
//! keepalives arrived), and that checkpoint does come. Reference: docs/architecture.md
//! "Keepalives never touch the log".

use std::time::{Duration, Instant};

use dlock_proto::v1 as pb;
use dlock_proto::v1::dlock_client::DlockClient;
use dlock_server::{Config, Server};

const KEEPALIVES: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_keepalives_writes_at_most_one_checkpoint_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().join("data"),
        client_addr: "127.0.0.1:0".parse().unwrap(),
        peer_addr: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    let interval = Duration::from_millis(config.checkpoint_interval_ms);
    let server = Server::start(config).await.expect("start dlockd");
    let mut client = DlockClient::connect(format!("http://{}", server.local_addr()))
        .await
        .expect("connect");
    let session = client
        .open_session(pb::OpenSessionRequest {
            ttl_ms: 10_000,
            client_name: "keepalive-log".into(),
        })
        .await
        .expect("open session")
        .into_inner();
    let (session, secret) = (session.session_id, session.session_secret);

    // The term's first checkpoint is proposed in the background and may commit after the
    // session opened: wait for the first checkpoint after the session (bounded), so that the
    // burst below is measured from a quiet log.
    let opened = server.raft().status().last_index;
    let deadline = Instant::now() + 10 * interval;
    while server.raft().status().last_index == opened {
        assert!(
            Instant::now() < deadline,
            "no checkpoint within {:?}",
            10 * interval
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = server.raft().status().last_index;
    let started = Instant::now();
    let requests = tokio_stream::iter((0..KEEPALIVES).map(move |_| pb::KeepAliveRequest {
        session_id: session,
        session_secret: secret.clone(),
    }));
    let mut replies = client
        .keep_alive(requests)
        .await
        .expect("keepalive stream")
        .into_inner();
    let mut answered = 0;
    while let Some(reply) = replies.message().await.expect("keepalive reply") {
        assert!(
            !reply.expired,
            "a live session must not be reported expired"
        );
        answered += 1;
    }
    let elapsed = started.elapsed();
    let written = server.raft().status().last_index - before;
    assert_eq!(answered, KEEPALIVES, "one reply per keepalive");
    // One checkpoint per started interval, plus one that may already have been due.
    let allowed = elapsed.as_millis() / interval.as_millis() + 2;
    assert!(
        (written as u128) <= allowed,
        "{KEEPALIVES} keepalives in {elapsed:?} wrote {written} log entries (allowed {allowed})"
    );
    eprintln!("{KEEPALIVES} keepalives in {elapsed:?}: {written} log entries");

    // The keepalives are not lost either: the next checkpoint records the session's last
    // keepalive time, as one entry for the whole burst.
    let deadline = Instant::now() + 10 * interval;
    while server.raft().status().last_index == before {
        assert!(
            Instant::now() < deadline,
            "no checkpoint within {:?}",
            10 * interval
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let checkpointed = server.raft().status().last_index - before;
    assert!(
        checkpointed <= 2,
        "the burst was checkpointed in {checkpointed} entries"
    );
    server.shutdown().await;
}

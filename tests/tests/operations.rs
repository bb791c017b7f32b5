//! What operators and deployments rely on, against real dlockd processes: the advertised
//! client address in leader hints (and clients that cannot reach it), and the Prometheus
//! endpoint. (`dlockctl health` is tested with the CLI, in `dlockctl/tests/cli.rs`.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use dlock::{Client, ClientConfig, Timeout, WaitOutcome};
use dlock_proto::v1 as pb;
use dlock_proto::v1::dlock_client::DlockClient;
use dlock_tests::procs::ProcCluster;
use dlock_tests::{Dlockd, free_port, unique};

/// The address node `id` advertises in the test below: a name no resolver knows, like a
/// container's service name seen from the host.
fn advertised(id: u64) -> String {
    format!("dlock-node-{id}.invalid:7700")
}

/// A follower's `NOT_LEADER` answer carries the leader's address.
async fn hint_from(node: &str) -> Option<String> {
    let mut client = DlockClient::connect(format!("http://{node}"))
        .await
        .expect("connect to a follower");
    let status = client
        .open_session(pb::OpenSessionRequest {
            ttl_ms: 10_000,
            client_name: "hint-probe".into(),
        })
        .await
        // It may lead by now: then there is no hint (and the session expires on its own).
        .err()?;
    status
        .metadata()
        .get(dlock_proto::LEADER_HINT_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_hint_the_advertised_address_and_clients_that_cannot_reach_it_carry_on() {
    let env: Vec<(u64, String)> = (1..=3).map(|id| (id, advertised(id))).collect();
    let env: Vec<(u64, &str, &str)> = env
        .iter()
        .map(|(id, addr)| (*id, "DLOCKD_ADVERTISE_CLIENT_ADDR", addr.as_str()))
        .collect();
    let mut cluster = ProcCluster::start_with_env(3, &[], &env).await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");

    // The hint is what the leader advertises, not the address it listens on.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let hint = hint_from(&cluster.node(follower).endpoint()).await;
        if hint.as_deref() == Some(advertised(leader).as_str()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "follower {follower} hints {hint:?}, not {:?}",
            advertised(leader)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = cluster.status(leader).await.expect("leader status");
    assert_eq!(
        status.node.expect("own status").client_addr,
        advertised(leader)
    );

    // A client that cannot resolve the hinted name uses its own endpoints: the follower first,
    // so its first answer is such a hint.
    let mut endpoints = vec![cluster.node(follower).endpoint()];
    endpoints.extend(
        (1..=3)
            .filter(|&id| id != follower)
            .map(|id| cluster.node(id).endpoint()),
    );
    let mut config = ClientConfig::new(&endpoints);
    config.request_timeout = Duration::from_secs(20);
    let client = Client::connect_with_config(config).await.expect("client");
    let session = client
        .open_session(Duration::from_secs(10))
        .await
        .expect("a session through unreachable hints");
    let name = unique("advertised");
    let mutex = session
        .create_mutex(Some(&name), false)
        .await
        .expect("create");
    for round in 0..2 {
        let outcome = mutex.lock(Timeout::Millis(10_000)).await.expect("lock");
        assert!(
            matches!(outcome, WaitOutcome::Signaled { .. }),
            "round {round}: {outcome:?}"
        );
        mutex.release().await.expect("release");
        if round == 0 {
            // And again once the leader is gone: the new leader is hinted by a name this
            // client cannot resolve either.
            cluster.kill9(leader);
        }
    }
}

/// The hint node `via` gives now (polled until it names `want`, for up to 10 s).
async fn wait_for_hint(cluster: &ProcCluster, via: u64, want: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let hint = hint_from(&cluster.node(via).endpoint()).await;
        if hint.as_deref() == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node {via} hints {hint:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_with_another_address_is_hinted_by_its_new_one() {
    let old = |id: u64| format!("old-{id}.invalid:7700");
    let env: Vec<(u64, String)> = (1..=3).map(|id| (id, old(id))).collect();
    let env: Vec<(u64, &str, &str)> = env
        .iter()
        .map(|(id, addr)| (*id, "DLOCKD_ADVERTISE_CLIENT_ADDR", addr.as_str()))
        .collect();
    let mut cluster = ProcCluster::start_with_env(3, &[], &env).await;
    let moved = cluster.leader().await;
    let others: Vec<u64> = (1..=3).filter(|&id| id != moved).collect();
    for &id in &others {
        wait_for_hint(&cluster, id, &old(moved)).await;
    }

    // The leader comes back under another address (a container with a new name, a new host).
    let new = format!("new-{moved}.invalid:7700");
    cluster.stop(moved).await;
    cluster.set_env(moved, "DLOCKD_ADVERTISE_CLIENT_ADDR", &new);
    cluster.restart(moved).await;

    // Make it lead again without restarting the others (their directories knew the old
    // address): freeze whoever leads until the election falls on it.
    for attempt in 0.. {
        let leader = cluster.leader().await;
        if leader == moved {
            break;
        }
        assert!(attempt < 30, "node {moved} never led again");
        cluster.freeze(leader);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cluster.thaw(leader);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for &id in &others {
        wait_for_hint(&cluster, id, &new).await;
    }
}

/// `GET /metrics` from `addr`, the body as text.
fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain"), "{head}");
    body.to_owned()
}

/// The value of the sample `series` (name with its labels, exactly as rendered).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_shows_state_and_traffic() {
    let dir = tempfile::tempdir().expect("data directory");
    let metrics = format!("127.0.0.1:{}", free_port());
    let server = Dlockd::start(dir.path(), &["--metrics-addr", &metrics]);
    let client = Client::connect([server.endpoint()]).await.expect("client");
    let session = client
        .open_session(Duration::from_secs(10))
        .await
        .expect("session");
    let mutex = session
        .create_mutex(Some(&unique("metrics")), true)
        .await
        .expect("create");
    let event = std::sync::Arc::new(
        session
            .create_event(None, true, false)
            .await
            .expect("event"),
    );

    // A request the server refuses before the log: counted under its status code.
    let mut raw = DlockClient::connect(server.endpoint())
        .await
        .expect("raw client");
    let refused = raw
        .create(pb::CreateRequest::default())
        .await
        .expect_err("a create without a header is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    // A wait blocked on the event while the scrape happens.
    let waiter = tokio::spawn({
        let event = event.clone();
        async move { event.wait(Timeout::Millis(30_000)).await }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body = tokio::task::spawn_blocking({
            let metrics = metrics.clone();
            move || scrape(&metrics)
        })
        .await
        .expect("scrape");
        if sample(&body, "dlock_waits_pending") >= Some(1.0) {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the wait never showed:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    for (series, at_least) in [
        ("dlock_raft_term", 1.0),
        ("dlock_raft_role{role=\"leader\"}", 1.0),
        ("dlock_raft_has_leader", 1.0),
        ("dlock_raft_commit_index", 3.0),
        ("dlock_raft_applied_index", 3.0),
        ("dlock_raft_leader_changes_total", 1.0),
        ("dlock_raft_proposals_total{outcome=\"ok\"}", 3.0),
        ("dlock_raft_proposal_seconds_count", 3.0),
        ("dlock_raft_flush_seconds_count", 3.0),
        ("dlock_sessions", 1.0),
        ("dlock_objects", 2.0),
        ("dlock_handles", 2.0),
        ("dlock_waits_pending", 1.0),
        (
            "dlock_grpc_requests_total{code=\"OK\",method=\"Dlock/Create\"}",
            2.0,
        ),
        (
            "dlock_grpc_requests_total{code=\"INVALID_ARGUMENT\",method=\"Dlock/Create\"}",
            1.0,
        ),
        (
            "dlock_grpc_request_seconds_count{method=\"Dlock/OpenSession\"}",
            1.0,
        ),
    ] {
        let value = sample(&body, series);
        assert!(
            value >= Some(at_least),
            "{series} is {value:?}, expected at least {at_least}:\n{body}"
        );
    }
    for series in [
        "dlock_raft_role{role=\"follower\"}",
        "dlock_raft_snapshots_total",
        "dlock_raft_snapshot_bytes",
        "dlock_waits_blocked",
    ] {
        assert!(sample(&body, series).is_some(), "{series} missing:\n{body}");
    }

    event.set().await.expect("set");
    let outcome = waiter.await.expect("waiter").expect("wait");
    assert!(
        matches!(outcome, WaitOutcome::Signaled { .. }),
        "{outcome:?}"
    );
    drop(mutex);
    session.close().await.expect("close");
}

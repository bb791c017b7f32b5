//! Mutual TLS end to end, against real three-node `dlockd` clusters started with certificates
//! from `dlock_tls::certs`: clients with the right certificate work; plaintext clients, clients
//! without a certificate and clients that do not trust the node's CA fail with a message that
//! says what to change; forged raft messages on the peer port are refused and change nothing;
//! certificates rotate under traffic without a failed request; a node refuses plaintext beyond
//! loopback unless told `--insecure`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dlock::{Client, ClientConfig, Error, Timeout, WaitOutcome};
use dlock_proto::v1::RaftEnvelope;
use dlock_proto::v1::raft_peer_client::RaftPeerClient;
use dlock_tests::procs::ProcCluster;
use dlock_tests::{free_port, target_binary, unique};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};

/// Bounds every wait of these tests (no timed assertions: a hang fails here instead).
const DEADLINE: Duration = Duration::from_secs(30);

fn quick(mut config: ClientConfig) -> ClientConfig {
    config.request_timeout = Duration::from_secs(1);
    config.attempt_timeout = Duration::from_millis(500);
    config
}

/// A mutex round trip: create, acquire, release, close.
async fn round_trip(client: &Client, name: &str) -> Result<(), Error> {
    let session = client.open_session(Duration::ZERO).await?;
    let mutex = session.create_mutex(Some(name), false).await?;
    let outcome = mutex.lock(Timeout::Millis(5_000)).await?;
    assert!(
        matches!(outcome, WaitOutcome::Signaled { .. }),
        "{outcome:?}"
    );
    mutex.release().await?;
    session.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_need_the_right_certificates_and_are_told_what_is_wrong() {
    let cluster = ProcCluster::start_tls(3, &[]).await;
    cluster.leader().await;

    let client = Client::connect_with_config(cluster.client_config("alice"))
        .await
        .unwrap();
    round_trip(&client, &unique("tls-ok"))
        .await
        .expect("mTLS client works");

    // https:// endpoints mean the same.
    let mut config = cluster.client_config("bob");
    config.endpoints = config
        .endpoints
        .iter()
        .map(|e| format!("https://{e}"))
        .collect();
    let client = Client::connect_with_config(config).await.unwrap();
    round_trip(&client, &unique("tls-https"))
        .await
        .expect("https endpoints work");

    // Plaintext against the TLS port: refused with a status that says what to do.
    let plain = Client::connect_with_config(quick(ClientConfig::new(cluster.endpoint_list())))
        .await
        .unwrap();
    let err = plain.open_session(Duration::ZERO).await.unwrap_err();
    assert!(
        matches!(&err, Error::Tls(why) if why.contains("requires TLS") && why.contains("DLOCK_CACERT")),
        "{err}"
    );

    // TLS without a client certificate, against --client-cert-auth.
    let certs = cluster.certs_dir();
    let mut config = quick(ClientConfig::new(cluster.endpoint_list()));
    config.tls = dlock::tls_from_files(Some(&certs.join("ca.pem")), None, None).unwrap();
    let anonymous = Client::connect_with_config(config).await.unwrap();
    let err = anonymous.open_session(Duration::ZERO).await.unwrap_err();
    assert!(
        matches!(&err, Error::Tls(why) if why.contains("requires a client certificate")),
        "{err}"
    );

    // A client that trusts another CA refuses the nodes' certificates.
    let other = tempfile::tempdir().unwrap();
    let bundle = dlock_tls::certs::generate("another CA", &[], &["eve".into()]).unwrap();
    dlock_tls::certs::write(other.path(), &bundle, false, false).unwrap();
    let mut config = quick(ClientConfig::new(cluster.endpoint_list()));
    config.tls = dlock::tls_from_files(
        Some(&other.path().join("ca.pem")),
        Some(&other.path().join("client-eve.pem")),
        Some(&other.path().join("client-eve.key")),
    )
    .unwrap();
    let untrusting = Client::connect_with_config(config).await.unwrap();
    let err = untrusting.open_session(Duration::ZERO).await.unwrap_err();
    assert!(
        matches!(&err, Error::Tls(why) if why.contains("not trusted")),
        "{err}"
    );

    // https:// without a CA is a configuration error, caught before any connection.
    let err = Client::connect_with_config(ClientConfig::new(["https://127.0.0.1:1"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument(why) if why.contains("CA")),
        "{err}"
    );
}

/// A raft message that, if a follower took it, would move its term far ahead and depose the
/// leader.
fn forged_heartbeat(from: u64, to: u64, term: u64) -> Vec<u8> {
    let mut message = Message::default();
    message.set_msg_type(MessageType::MsgHeartbeat);
    message.from = from;
    message.to = to;
    message.term = term;
    message.write_to_bytes().unwrap()
}

/// Sends one envelope on a `RaftPeer.Stream` to `peer_addr` with `tls`, from `envelope_from`
/// with the cluster id and sender incarnation `identity` (0s: none); the stream's end.
async fn send_raw(
    peer_addr: std::net::SocketAddr,
    tls: Option<dlock::ClientTls>,
    envelope_from: u64,
    identity: (u64, u64),
    payload: Vec<u8>,
) -> Result<(), String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{peer_addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_with_connector(dlock_tls::Connector::new(tls))
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let envelope = RaftEnvelope {
        from: envelope_from,
        payload,
        more: false,
        message_bytes: 0,
        cluster_id: identity.0,
        from_incarnation: identity.1,
        to_incarnation: 0,
    };
    let mut client = RaftPeerClient::new(channel);
    let call = client.stream(tokio_stream::iter(vec![envelope]));
    match tokio::time::timeout(DEADLINE, call).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => panic!("the raft stream hung"),
    }
}

fn tls_of(certs: &Path, cert: Option<&str>) -> Option<dlock::ClientTls> {
    let cert_path = cert.map(|c| certs.join(format!("{c}.pem")));
    let key_path = cert.map(|c| certs.join(format!("{c}.key")));
    dlock::tls_from_files(
        Some(&certs.join("ca.pem")),
        cert_path.as_deref(),
        key_path.as_deref(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_raft_messages_on_the_peer_port_are_refused_and_change_nothing() {
    let cluster = ProcCluster::start_tls(3, &[]).await;
    let before = cluster.leader_status().await;
    let leader = before.node.as_ref().unwrap().node_id;
    let term = before.node.as_ref().unwrap().term;
    let target = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    let other = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader && *id != target)
        .unwrap();
    let peer_addr = cluster.node(target).peer_addr;
    let certs = cluster.certs_dir();
    let forged = || forged_heartbeat(leader, target, term + 100);

    // Plaintext: refused with a message for the operator of the calling node.
    let err = send_raw(peer_addr, None, leader, (0, 0), forged())
        .await
        .unwrap_err();
    assert!(
        err.contains("requires mutual TLS") && err.contains("--peer-cert-file"),
        "{err}"
    );
    // TLS without a client certificate: the handshake fails.
    let err = send_raw(peer_addr, tls_of(&certs, None), leader, (0, 0), forged())
        .await
        .unwrap_err();
    assert!(!err.is_empty());
    // A client certificate of the same CA that names no node.
    let err = send_raw(
        peer_addr,
        tls_of(&certs, Some("client-alice")),
        leader,
        (0, 0),
        forged(),
    )
    .await
    .unwrap_err();
    assert!(
        err.starts_with("PermissionDenied") && err.contains("CN=alice"),
        "{err}"
    );
    // Another node's certificate, claiming to be the leader.
    let name = format!("node-{other}");
    let err = send_raw(
        peer_addr,
        tls_of(&certs, Some(&name)),
        leader,
        (0, 0),
        forged(),
    )
    .await
    .unwrap_err();
    assert!(
        err.starts_with("PermissionDenied") && err.contains(&format!("names node {other}")),
        "{err}"
    );
    // Its own name on the envelope, the leader's inside the message: dropped.
    let other_status = cluster.status(other).await.unwrap().node.unwrap();
    send_raw(
        peer_addr,
        tls_of(&certs, Some(&name)),
        other,
        (other_status.cluster_id, other_status.incarnation),
        forged(),
    )
    .await
    .expect("the stream itself is fine; the message is dropped");

    // Nothing changed: same leader, same term, on every node.
    for id in cluster.ids() {
        let status = cluster.status(id).await.unwrap();
        let node = status.node.unwrap();
        assert_eq!((node.leader_id, node.term), (leader, term), "node {id}");
    }
    let log = std::fs::read_to_string(&cluster.node(target).log).unwrap();
    assert!(
        log.contains("peer port call without a node certificate refused"),
        "{log}"
    );
    assert!(
        log.contains("raft message in another node's name refused"),
        "{log}"
    );

    // Over the leader's own certificate, but of another cluster, of no cluster, or of another
    // incarnation of the leader (a wiped data directory): refused before raft sees it.
    let name = format!("node-{leader}");
    let leader_status = cluster.status(leader).await.unwrap().node.unwrap();
    let (cluster_id, incarnation) = (leader_status.cluster_id, leader_status.incarnation);
    assert_ne!(cluster_id, 0, "the cluster has an id");
    // Wait until the target itself has the cluster id and the leader's incarnation on record.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let reply = cluster.status(target).await.unwrap();
        let recorded = reply
            .members
            .iter()
            .any(|m| m.node_id == leader && m.incarnation == incarnation);
        if reply.node.unwrap().cluster_id == cluster_id && recorded {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {target} never recorded the cluster's identity"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (identity, expected) in [
        ((cluster_id ^ 1, incarnation), "belongs to cluster"),
        ((0, incarnation ^ 1), "remove node"),
        ((cluster_id, incarnation ^ 1), "recorded incarnation"),
    ] {
        let err = send_raw(
            peer_addr,
            tls_of(&certs, Some(&name)),
            leader,
            identity,
            forged(),
        )
        .await
        .unwrap_err();
        assert!(
            err.starts_with("FailedPrecondition") && err.contains(expected),
            "{identity:?}: {err}"
        );
    }
    for id in cluster.ids() {
        let node = cluster.status(id).await.unwrap().node.unwrap();
        assert_eq!((node.leader_id, node.term), (leader, term), "node {id}");
    }

    // The control: the same message over the leader's own certificate, with its cluster id and
    // incarnation, is taken, and moves the target's term (so the refusals above are what kept
    // it still).
    send_raw(
        peer_addr,
        tls_of(&certs, Some(&name)),
        leader,
        (cluster_id, incarnation),
        forged(),
    )
    .await
    .expect("the leader's own message");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let node = cluster.status(target).await.unwrap().node.unwrap();
        if node.term >= term + 100 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the control message was not taken"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `text` to `path` through a temporary file renamed over it (what cert managers do).
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_traffic_without_a_failed_request() {
    let mut cluster = ProcCluster::start_tls(3, &[]).await;
    cluster.leader().await;
    let certs = cluster.certs_dir();
    let old_ca = std::fs::read_to_string(certs.join("ca.pem")).unwrap();
    let new = dlock_tls::certs::generate(
        "rotated CA",
        &(1..=3)
            .map(|id| dlock_tls::certs::NodeSpec::with_default_hosts(id, &[]))
            .collect::<Vec<_>>(),
        &["carol".into()],
    )
    .unwrap();
    let both = format!("{old_ca}{}", new.ca.cert_pem);
    let both_path = certs.join("both-cas.pem");
    std::fs::write(&both_path, &both).unwrap();

    // Traffic: long-lived clients trusting both CAs with the old client certificate, and a
    // new client (a new connection) every round.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let traffic = {
        let stop = stop.clone();
        let rounds = rounds.clone();
        let endpoints = cluster.endpoint_list();
        let both_path = both_path.clone();
        let certs = certs.clone();
        tokio::spawn(async move {
            let config = || {
                let mut config = ClientConfig::new(&endpoints);
                config.tls = dlock::tls_from_files(
                    Some(&both_path),
                    Some(&certs.join("client-alice.pem")),
                    Some(&certs.join("client-alice.key")),
                )
                .unwrap();
                config
            };
            let steady = Client::connect_with_config(config()).await.unwrap();
            let name = unique("rotation");
            while !stop.load(Ordering::Relaxed) {
                round_trip(&steady, &name).await.expect("steady client");
                let fresh = Client::connect_with_config(config()).await.unwrap();
                round_trip(&fresh, &name).await.expect("fresh client");
                rounds.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let progress = |at_least: u64| {
        let rounds = rounds.clone();
        async move {
            let deadline = Instant::now() + DEADLINE;
            while rounds.load(Ordering::Relaxed) < at_least {
                assert!(Instant::now() < deadline, "traffic stalled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    progress(3).await;

    // 1. Trust both CAs (client port and peer port), 2. switch the node certificates.
    replace_file(&certs.join("ca.pem"), &both);
    let done = rounds.load(Ordering::Relaxed);
    progress(done + 3).await;
    for (id, pair) in &new.nodes {
        replace_file(&certs.join(format!("node-{id}.key.pending")), &pair.key_pem);
        replace_file(&certs.join(format!("node-{id}.pem")), &pair.cert_pem);
        std::fs::rename(
            certs.join(format!("node-{id}.key.pending")),
            certs.join(format!("node-{id}.key")),
        )
        .unwrap();
    }

    // A client that trusts only the new CA, with a certificate of the new CA, gets in once the
    // nodes have picked the new files up.
    let new_only = tempfile::tempdir().unwrap();
    dlock_tls::certs::write(new_only.path(), &new, false, false).unwrap();
    let mut config = quick(ClientConfig::new(cluster.endpoint_list()));
    config.tls = dlock::tls_from_files(
        Some(&new_only.path().join("ca.pem")),
        Some(&new_only.path().join("client-carol.pem")),
        Some(&new_only.path().join("client-carol.key")),
    )
    .unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let client = Client::connect_with_config(config.clone()).await.unwrap();
        match round_trip(&client, &unique("new-ca")).await {
            Ok(()) => break,
            Err(err) => {
                assert!(
                    Instant::now() < deadline,
                    "new certificates never served: {err}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    // Every node picked the new files up (each polls on its own clock; the client above
    // needed only the leader).
    for id in cluster.ids() {
        cluster
            .wait_for_log(id, &["TLS certificates reloaded"], 2)
            .await;
    }

    // Peer links made after the rotation use the new certificates: a follower killed and
    // restarted rejoins.
    let leader = cluster.leader().await;
    let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    cluster.kill9(follower);
    cluster.restart(follower).await;
    cluster.wait_caught_up(follower).await;

    let done = rounds.load(Ordering::Relaxed);
    progress(done + 3).await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(DEADLINE, traffic)
        .await
        .expect("traffic stops")
        .expect("no request failed during the rotation");
}

#[test]
fn plaintext_beyond_loopback_needs_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(target_binary("dlockd"))
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--client-addr")
        .arg(format!("0.0.0.0:{}", free_port()))
        .arg("--peer-addr")
        .arg(format!("127.0.0.1:{}", free_port()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to serve the client API on 0.0.0.0")
            && stderr.contains("insecure"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_an_admin_principal_and_a_refused_call_changes_nothing() {
    let mut cluster = ProcCluster::start_tls(3, &[]).await;
    cluster.leader().await;
    cluster.start_joining(4, &[1, 2, 3]).await;
    let peer4 = cluster.node(4).peer_addr.to_string();

    let alice = Client::connect_with_config(quick(cluster.client_config("alice")))
        .await
        .unwrap();
    let denied = |err: &Error| {
        matches!(err, Error::Transport(why)
            if why.starts_with("PermissionDenied")
                && why.contains("admin principal")
                && why.contains("CN=alice"))
    };
    let err = alice.admin().add_learner(4, &peer4).await.unwrap_err();
    assert!(denied(&err.error), "{:?}", err.error);
    let err = alice.admin().status(true).await.unwrap_err();
    assert!(denied(&err), "{err:?}");
    let err = alice.admin().list_sessions(0, 10).await.unwrap_err();
    assert!(denied(&err), "{err:?}");
    // The client API itself is alice's to use.
    round_trip(&alice, &unique("alice-works")).await.unwrap();

    // Nothing changed: still three voters and no learner.
    let status = cluster.leader_status().await;
    let members: Vec<(u64, bool)> = status
        .members
        .iter()
        .map(|m| (m.node_id, m.voter))
        .collect();
    assert_eq!(members, vec![(1, true), (2, true), (3, true)]);

    // The admin principal (the `admin` client certificate, CN=admin by default) may.
    let admin = Client::connect_with_config(cluster.client_config("admin"))
        .await
        .unwrap();
    admin
        .admin()
        .add_learner(4, &peer4)
        .await
        .expect("admin adds the learner");
    cluster
        .wait_members(&[(1, true), (2, true), (3, true), (4, false)])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_certificates_and_a_broken_file_keeps_the_old_ones() {
    let cluster = ProcCluster::start_tls(1, &[]).await;
    cluster.leader().await;
    cluster.hangup(1);
    cluster
        .wait_for_log(1, &["TLS certificates reloaded", "sighup=true"], 2)
        .await;

    // A broken certificate file: reported, and the node keeps serving with the old one.
    let cert = cluster.certs_dir().join("node-1.pem");
    replace_file(
        &cert,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    cluster.hangup(1);
    cluster
        .wait_for_log(
            1,
            &["TLS certificates not reloaded", "previous ones stay"],
            1,
        )
        .await;
    let client = Client::connect_with_config(cluster.client_config("alice"))
        .await
        .unwrap();
    round_trip(&client, &unique("after-broken-reload"))
        .await
        .expect("a new connection gets the previous certificate");

    // A node without TLS takes SIGHUP too (its default action would end the process).
    let plain = ProcCluster::start(1, &[]).await;
    plain.leader().await;
    plain.hangup(1);
    plain
        .wait_for_log(1, &["SIGHUP: this node serves no TLS"], 1)
        .await;
    plain.leader().await;
}

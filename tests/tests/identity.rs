//! Cluster ids and data-directory incarnations, with real dlockd processes (SAFETY.md H10):
//! a wiped voter restarted with its original member list is refused (and refuses the cluster)
//! until it is removed and added back as a learner; a node of another cluster cannot join.

use std::time::{Duration, Instant};

use dlock::{Client, Timeout, WaitOutcome};
use dlock_proto::v1 as pb;
use dlock_tests::procs::ProcCluster;
use dlock_tests::unique;
use tonic::Code;

const FLAGS: &[&str] = &["--tick-ms", "50"];

/// How long the cluster gets to record every member's incarnation.
const RECORD_DEADLINE: Duration = Duration::from_secs(30);

/// A few lock/unlock cycles through `client`: the cluster commits.
async fn commits(client: &Client, rounds: usize) {
    let session = client.open_session(Duration::from_secs(5)).await.unwrap();
    let mutex = session
        .create_mutex(Some(&unique("identity")), false)
        .await
        .unwrap();
    for _ in 0..rounds {
        let outcome = mutex.lock(Timeout::Millis(5_000)).await.unwrap();
        assert!(
            matches!(outcome, WaitOutcome::Signaled { .. }),
            "{outcome:?}"
        );
        mutex.release().await.unwrap();
    }
    session.close().await.unwrap();
}

/// The leader's view of the members once every one of `ids` has an incarnation on record.
async fn recorded_incarnations(cluster: &ProcCluster, ids: &[u64]) -> Vec<pb::Member> {
    let deadline = Instant::now() + RECORD_DEADLINE;
    loop {
        let leader = cluster.leader().await;
        let members = cluster
            .admin("Members", |mut c| async move {
                c.status(pb::ClusterStatusRequest { all: false }).await
            })
            .await
            .map(|reply| reply.members)
            .unwrap_or_default();
        let recorded = ids.iter().all(|id| {
            members
                .iter()
                .any(|m| m.node_id == *id && m.incarnation != 0)
        });
        if recorded {
            return members;
        }
        assert!(
            Instant::now() < deadline,
            "incarnations of {ids:?} not all recorded on leader {leader}: {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn own(reply: pb::ClusterStatusReply) -> pb::NodeStatus {
    reply.node.expect("own status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_voter_restarted_with_its_member_list_is_refused_until_added_back_as_a_learner() {
    let mut cluster = ProcCluster::start(3, FLAGS).await;
    cluster.leader().await;
    let client = Client::connect(cluster.endpoint_list()).await.unwrap();
    commits(&client, 5).await;
    let members = recorded_incarnations(&cluster, &[1, 2, 3]).await;
    let cluster_id = own(cluster.status(1).await.unwrap()).cluster_id;
    assert_ne!(cluster_id, 0, "the cluster drew an id");
    for id in [2, 3] {
        assert_eq!(
            own(cluster.status(id).await.unwrap()).cluster_id,
            cluster_id
        );
    }
    let old = own(cluster.status(3).await.unwrap()).incarnation;
    assert_eq!(
        members.iter().find(|m| m.node_id == 3).unwrap().incarnation,
        old,
        "the recorded incarnation is node 3's own"
    );

    // Keep node 3 out of the leadership so that killing it does not force an election.
    let mut leader = cluster.leader().await;
    if leader == 3 {
        cluster.kill9(3);
        cluster.restart(3).await;
        leader = cluster.leader().await;
        while leader == 3 {
            cluster.kill9(3);
            cluster.restart(3).await;
            leader = cluster.leader().await;
        }
    }
    let before = own(cluster.status(leader).await.unwrap());

    // Wipe node 3 and start it again exactly as before: same id, same --initial-cluster. It
    // bootstraps a new store with a new incarnation.
    cluster.wipe(3);
    cluster.restart(3).await;
    let wiped = own(cluster.status(3).await.unwrap());
    assert_ne!(
        wiped.incarnation, old,
        "a new data directory draws a new incarnation"
    );

    // Both sides refuse: node 3 the leader's messages (meant for its old incarnation), the
    // others node 3's (it belongs to no cluster, then runs an unrecorded incarnation).
    cluster
        .wait_for_log(3, &["raft message refused", "now runs incarnation"], 1)
        .await;
    cluster
        .wait_for_log(leader, &["raft message refused", "from=3"], 1)
        .await;
    commits(&client, 10).await;
    let after = own(cluster.status(leader).await.unwrap());
    assert_eq!(
        (after.term, after.leader_id),
        (before.term, before.leader_id),
        "the wiped node disturbed nobody's term"
    );
    let outside = own(cluster.status(3).await.unwrap());
    assert_eq!(
        outside.cluster_id, 0,
        "node 3 took nothing from the cluster"
    );
    assert!(
        outside.applied <= 1 && outside.commit <= 1,
        "node 3 applied nothing of the cluster's log: {outside:?}"
    );
    let log = std::fs::read_to_string(&cluster.node(3).log).unwrap();
    assert!(
        !log.contains("panicked") && !log.contains("raft thread stopped"),
        "node 3's raft kept running:\n{log}"
    );

    // Adding it as a learner while the cluster still lists it is refused; removing it and
    // adding it back is the way in.
    let err = cluster.add_learner(3).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("remove node 3 first"), "{err:?}");
    cluster.remove(3).await.expect("RemoveNode 3");
    cluster.wait_members(&[(1, true), (2, true)]).await;
    cluster.add_learner(3).await.expect("AddLearner 3");
    cluster
        .wait_members(&[(1, true), (2, true), (3, false)])
        .await;
    cluster.wait_caught_up(3).await;
    cluster.promote(3).await.expect("PromoteLearner 3");
    cluster
        .wait_members(&[(1, true), (2, true), (3, true)])
        .await;
    let members = recorded_incarnations(&cluster, &[1, 2, 3]).await;
    assert_eq!(
        members.iter().find(|m| m.node_id == 3).unwrap().incarnation,
        wiped.incarnation,
        "the new incarnation is on record"
    );
    assert_eq!(own(cluster.status(3).await.unwrap()).cluster_id, cluster_id);

    // Node 3 votes again: with another original node gone, the cluster needs it.
    let leader = cluster.leader().await;
    let victim = if leader == 3 { 1 } else { leader };
    cluster.kill9(victim);
    cluster.leader().await;
    commits(&client, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_cannot_join() {
    let cluster = ProcCluster::start(3, FLAGS).await;
    cluster.leader().await;
    let client = Client::connect(cluster.endpoint_list()).await.unwrap();
    commits(&client, 3).await;
    recorded_incarnations(&cluster, &[1, 2, 3]).await;
    let ours = own(cluster.status(1).await.unwrap()).cluster_id;

    // Another cluster, with a node 4 of its own.
    let mut other = ProcCluster::start(1, FLAGS).await;
    other.leader().await;
    other.start_joining(4, &[1]).await;
    other
        .add_learner(4)
        .await
        .expect("node 4 joins the other cluster");
    other.wait_caught_up(4).await;
    let theirs = own(other.status(4).await.unwrap()).cluster_id;
    assert!(
        theirs != 0 && theirs != ours,
        "{theirs:016x} vs {ours:016x}"
    );

    // Asked to add it, the leader asks node 4 who it is and refuses.
    let peer_addr = other.node(4).peer_addr.to_string();
    let request = pb::AddMemberRequest {
        node_id: 4,
        peer_addr: peer_addr.clone(),
    };
    let err = cluster
        .admin("AddLearner", |mut c| {
            let request = request.clone();
            async move { c.add_learner(request).await }
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("belongs to cluster"),
        "{}",
        err.message()
    );
    cluster
        .wait_members(&[(1, true), (2, true), (3, true)])
        .await;

    // Added while it does not answer (so unchecked), it refuses the cluster's messages once it
    // runs (it never answers them, so nothing of it reaches the cluster), and it never takes a
    // byte of this cluster's log.
    other.kill9(4);
    cluster
        .admin("AddLearner", |mut c| {
            let request = request.clone();
            async move { c.add_learner(request).await }
        })
        .await
        .expect("an unreachable node is added unchecked");
    other.restart(4).await;
    other
        .wait_for_log(4, &["raft message refused", "belongs to cluster"], 1)
        .await;
    commits(&client, 3).await;
    let status = own(other.status(4).await.unwrap());
    assert_eq!(status.cluster_id, theirs, "node 4 stays in its own cluster");
    let members = cluster.leader_status().await.members;
    let member = members.iter().find(|m| m.node_id == 4).expect("listed");
    assert_eq!(
        (member.matched, member.incarnation),
        (0, 0),
        "nothing replicated to node 4, no incarnation recorded"
    );
    // Its own cluster still works through it.
    other.wait_caught_up(4).await;
}

/// A voter that was down while another member was wiped, removed and added back (so its own
/// registry still records the member's old incarnation) catches up from that member when it
/// leads: the two must not refuse each other forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_behind_a_readd_catches_up_from_the_readded_leader() {
    let mut cluster = ProcCluster::start(5, FLAGS).await;
    cluster.leader().await;
    let client = Client::connect(cluster.endpoint_list()).await.unwrap();
    commits(&client, 3).await;
    recorded_incarnations(&cluster, &[1, 2, 3, 4, 5]).await;

    // Node 2 goes down; node 5 is wiped, removed and added back as a new incarnation.
    cluster.kill9(2);
    if cluster.leader().await == 5 {
        cluster.kill9(5);
        cluster.restart(5).await;
    }
    cluster.remove(5).await.expect("RemoveNode 5");
    cluster.wipe(5);
    cluster.rejoin(5, &[1, 3, 4]).await;
    cluster.add_learner(5).await.expect("AddLearner 5");
    cluster.wait_caught_up(5).await;
    cluster.promote(5).await.expect("PromoteLearner 5");
    commits(&client, 3).await;

    // Make node 5 the leader (bounded: each kill of another leader is a fresh election).
    let mut attempts = 0;
    loop {
        let leader = cluster.leader().await;
        if leader == 5 {
            break;
        }
        attempts += 1;
        assert!(attempts <= 30, "node 5 never won an election");
        cluster.kill9(leader);
        cluster.leader().await;
        cluster.restart(leader).await;
    }

    // Node 2 comes back with the registry it had: it must take node 5's messages.
    cluster.restart(2).await;
    commits(&client, 3).await;
    cluster.wait_caught_up(2).await;
    let reply = cluster.status(2).await.unwrap();
    assert_eq!(own(reply).leader_id, cluster.leader().await);
    commits(&client, 3).await;
}

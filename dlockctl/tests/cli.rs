//! `dlockctl` as an operator runs it: the real binary against a real three-node `dlockd`
//! cluster (membership through a follower, status, a refused change), and `dlockctl local`
//! against a real `Local\` segment.

use std::process::{Command, Output};

use dlock_proto::vocab::{CreateParams, MUTEX_ALL_ACCESS};
use dlock_tests::procs::ProcCluster;

/// Runs `dlockctl` with `args`; returns its output (stdout and stderr as text).
fn dlockctl(args: &[&str]) -> (Output, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dlockctl"))
        .args(args)
        .env_remove("DLOCK_ENDPOINTS")
        .output()
        .expect("dlockctl runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_and_status_go_through_any_node() {
    let mut cluster = ProcCluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    cluster.start_joining(4, &[1, 2, 3]).await;
    let endpoint = cluster.node(follower).client_addr.to_string();
    let peer4 = cluster.node(4).peer_addr.to_string();

    // A follower refuses the change with a hint naming the leader; the client follows it.
    let (out, stdout, stderr) = dlockctl(&["--endpoint", &endpoint, "add-learner", "4", &peer4]);
    assert!(out.status.success(), "add-learner: {stdout}{stderr}");
    assert!(stdout.contains("added node 4 as a learner"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("member 4") && l.contains("learner")),
        "{stdout}"
    );

    let (out, stdout, stderr) = dlockctl(&["--endpoint", &endpoint, "status", "--all"]);
    assert!(out.status.success(), "status: {stdout}{stderr}");
    assert_eq!(
        stdout.matches(" LEADER ").count(),
        1,
        "one leader: {stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(&format!("node {leader} ")) && l.contains("LEADER")),
        "node {leader} leads: {stdout}"
    );

    // A change the cluster refuses fails at once, with the server's reason, exit status 1, and
    // without claiming an earlier attempt may have applied it (none had an unknown outcome).
    let (out, stdout, stderr) = dlockctl(&["--endpoint", &endpoint, "promote", "9"]);
    assert_eq!(out.status.code(), Some(1), "promote 9: {stdout}{stderr}");
    assert!(stderr.contains("node 9 is not a learner"), "{stderr}");
    assert!(!stderr.contains("may have applied"), "{stderr}");

    let (out, stdout, stderr) = dlockctl(&["--endpoint", &endpoint, "remove", "4"]);
    assert!(out.status.success(), "remove: {stdout}{stderr}");
    assert!(!stdout.contains("member 4"), "{stdout}");

    // Bad usage is exit status 2.
    let (out, _, _) = dlockctl(&["promote", "not-a-number"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn local_prints_a_namespace_without_a_cluster() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let dir_arg = dir.path().to_str().expect("utf-8 path");
    let (out, _, stderr) = dlockctl(&["local", "--dir", dir_arg, "--namespace", "cli"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("no local namespace"), "{stderr}");

    // A namespace the library would refuse is refused here too, not read from elsewhere.
    let (out, _, stderr) = dlockctl(&["local", "--dir", dir_arg, "--namespace", "../x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("invalid namespace"), "{stderr}");

    let settings = dlock_local::Settings {
        dir: dir.path().to_path_buf(),
        namespace: "cli".into(),
        mode: 0o600,
    };
    let seg = dlock_local::Segment::attach(&settings).expect("segment");
    let (_mutex, existed) = dlock_local::create(
        &seg,
        "jobs",
        &CreateParams::Mutex {
            initial_owner: true,
        },
        MUTEX_ALL_ACCESS,
    )
    .expect("create Local\\jobs");
    assert!(!existed);

    let (out, stdout, stderr) = dlockctl(&["local", "--dir", dir_arg, "--namespace", "cli"]);
    assert!(out.status.success(), "local: {stdout}{stderr}");
    assert!(stdout.contains("1 objects"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("Local\\jobs") && l.contains("owned by tid")),
        "{stdout}"
    );
}

/// Runs `dlockctl health` against one endpoint until its exit status is `want` (the node's view
/// of leader and membership settles within a few election timeouts); returns the last output.
async fn health_until(endpoint: &str, want: i32) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (out, stdout, stderr) =
            dlockctl(&["--endpoint", endpoint, "--timeout-ms", "1000", "health"]);
        if out.status.code() == Some(want) {
            return format!("{stdout}{stderr}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "health of {endpoint} never exited {want}: {stdout}{stderr}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_only_for_members_that_know_a_leader() {
    let mut cluster = ProcCluster::start(3, &[]).await;
    cluster.leader().await;
    for id in 1..=3 {
        let out = health_until(&cluster.node(id).client_addr.to_string(), 0).await;
        assert!(out.contains("SERVING"), "{out}");
    }

    // A node waiting to be added is not a member: it must not take traffic.
    cluster.start_joining(4, &[1, 2, 3]).await;
    let joining = cluster.node(4).client_addr.to_string();
    let out = health_until(&joining, 1).await;
    assert!(out.contains("NOT_SERVING"), "{out}");
    cluster.add_learner(4).await.expect("add learner 4");
    health_until(&joining, 0).await;

    // Several endpoints: exit 0 only if all serve; an unreachable one is named.
    let dead = format!("127.0.0.1:{}", dlock_tests::free_port());
    let both = format!("{},{dead}", cluster.node(1).client_addr);
    let (out, stdout, _) = dlockctl(&["--endpoint", &both, "--timeout-ms", "500", "health"]);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(&format!("{dead} UNREACHABLE")), "{stdout}");

    // A voter cut off from the quorum loses its leader and stops serving.
    let lone = 1;
    for id in [2, 3] {
        cluster.kill9(id);
    }
    let out = health_until(&cluster.node(lone).client_addr.to_string(), 1).await;
    assert!(out.contains("NOT_SERVING"), "{out}");
}

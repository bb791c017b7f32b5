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
        group: None,
        lock_timeout: dlock_local::LOCK_TIMEOUT_DEFAULT,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_sessions_show_objects_owners_and_pages() {
    let cluster = ProcCluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    let endpoint = cluster.node(follower).client_addr.to_string();

    let mut config = dlock::ClientConfig::new(cluster.endpoint_list());
    config.client_name = "cli-list-test".into();
    let client = dlock::Client::connect_with_config(config)
        .await
        .expect("client");
    let session = client
        .open_session(std::time::Duration::from_secs(10))
        .await
        .expect("session");
    let owned = session
        .create_mutex(Some("jobs.a"), true)
        .await
        .expect("jobs.a");
    let _event = session
        .create_event(Some("Global\\jobs.e"), true, true)
        .await
        .expect("jobs.e");
    let _sem = session
        .create_semaphore(Some("jobs.s"), 1, 3)
        .await
        .expect("jobs.s");
    let _other = session
        .create_mutex(Some("other.x"), false)
        .await
        .expect("other.x");

    // Read through a follower: linearizable, so every create above shows.
    let (out, stdout, stderr) = dlockctl(&["--endpoint", &endpoint, "list", "--prefix", "jobs."]);
    assert!(out.status.success(), "list: {stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three objects:\n{stdout}");
    let token = owned.fencing_token().expect("owned at creation");
    assert!(
        lines[1].starts_with("mutex")
            && lines[1].contains("jobs.a")
            && lines[1].contains("owned x1")
            && lines[1].contains(&token.to_string()),
        "{stdout}"
    );
    assert!(
        lines[2].contains("jobs.e") && lines[2].contains("manual signaled"),
        "{stdout}"
    );
    assert!(
        lines[3].contains("jobs.s") && lines[3].contains("count 1/3"),
        "{stdout}"
    );

    // Pages: two at a time, continuing after the last one printed.
    let (_, stdout, _) = dlockctl(&["--endpoint", &endpoint, "list", "--limit", "2"]);
    assert!(
        stdout.contains("jobs.a")
            && stdout.contains("jobs.e")
            && stdout.contains("continue with --after 'jobs.e'"),
        "{stdout}"
    );
    let (_, stdout, _) = dlockctl(&["--endpoint", &endpoint, "list", "--after", "jobs.e"]);
    assert!(
        !stdout.contains("jobs.a") && stdout.contains("jobs.s") && stdout.contains("other.x"),
        "{stdout}"
    );

    // JSON for scripts.
    // -o goes before or after the subcommand.
    let (out, stdout, stderr) = dlockctl(&["--endpoint", &endpoint, "list", "-o", "json"]);
    assert!(out.status.success(), "{stdout}{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let objects = doc["objects"].as_array().expect("objects");
    assert_eq!(objects.len(), 4);
    assert_eq!(objects[0]["name"], "jobs.a");
    assert_eq!(objects[0]["type"], "mutex");
    assert_eq!(objects[0]["owner_session"], session.id());
    assert_eq!(objects[0]["fencing_token"], token);
    assert_eq!(objects[2]["count"], 1);
    assert!(doc["next"].is_null());

    let (out, stdout, stderr) = dlockctl(&["--endpoint", &endpoint, "sessions"]);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&session.id().to_string())
                && l.contains("cli-list-test")
                && l.ends_with("jobs.a")),
        "{stdout}"
    );
    let (_, stdout, _) = dlockctl(&["--endpoint", &endpoint, "-o", "json", "sessions"]);
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let mine = doc["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .find(|s| s["session"] == session.id())
        .expect("our session");
    assert_eq!(mine["owned_mutexes"], serde_json::json!(["jobs.a"]));
    assert_eq!(mine["owned_count"], 1);
    assert_eq!(mine["handles"], 4);

    // A page larger than the server allows is refused, not truncated silently.
    let refused = client.admin().list_objects("", "", 1001).await;
    assert!(
        matches!(refused, Err(dlock::Error::InvalidArgument(_))),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_cacert_cert_and_key_and_development_certificates() {
    // `dlockctl certs init` makes what a cluster needs; ProcCluster uses the same library.
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.display().to_string();
    let (out, stdout, stderr) = dlockctl(&[
        "certs",
        "init",
        "--dir",
        &certs_arg,
        "--nodes",
        "2",
        "--clients",
        "ops",
    ]);
    assert!(out.status.success(), "certs init: {stdout}{stderr}");
    for file in [
        "ca.pem",
        "ca.key",
        "node-1.pem",
        "node-2.key",
        "client-ops.pem",
    ] {
        assert!(certs.join(file).is_file(), "{file} missing: {stdout}");
    }
    let (out, _, stderr) = dlockctl(&["certs", "init", "--dir", &certs_arg]);
    assert!(
        !out.status.success() && stderr.contains("--force"),
        "{stderr}"
    );

    let cluster = ProcCluster::start_tls(3, &[]).await;
    cluster.leader().await;
    let cluster_certs = cluster.certs_dir();
    let file = |name: &str| cluster_certs.join(name).display().to_string();
    let endpoints = cluster.endpoint_list().join(",");
    let tls = [
        "--cacert".to_owned(),
        file("ca.pem"),
        "--cert".to_owned(),
        file("client-admin.pem"),
        "--key".to_owned(),
        file("client-admin.key"),
    ];
    let with_tls = |args: &[&str]| {
        let mut all: Vec<&str> = vec!["--endpoint", &endpoints];
        all.extend(tls.iter().map(String::as_str));
        all.extend(args);
        dlockctl(&all)
    };
    let (out, stdout, stderr) = with_tls(&["create", "mutex", "tls-jobs"]);
    assert!(out.status.success(), "create: {stdout}{stderr}");
    let (out, stdout, stderr) = with_tls(&["health"]);
    assert!(out.status.success(), "health: {stdout}{stderr}");
    let (out, stdout, stderr) = with_tls(&["status", "--all"]);
    assert!(
        out.status.success() && stdout.contains("LEADER"),
        "status: {stdout}{stderr}"
    );

    // Without a client certificate: a message that says what is missing.
    let (out, _, stderr) = dlockctl(&[
        "--endpoint",
        &endpoints,
        "--cacert",
        &file("ca.pem"),
        "--timeout-ms",
        "1500",
        "status",
    ]);
    assert!(!out.status.success());
    assert!(stderr.contains("requires a client certificate"), "{stderr}");
    // Plaintext against TLS: the node says so.
    let (out, _, stderr) = dlockctl(&["--endpoint", &endpoints, "--timeout-ms", "1500", "status"]);
    assert!(!out.status.success());
    assert!(stderr.contains("requires TLS"), "{stderr}");
}

//! Rights by principal and name prefix (`--acl-file`), with real dlockd processes over mutual
//! TLS: a create or open outside a principal's rights fails with `ERROR_ACCESS_DENIED` (5) and
//! changes nothing, a handle never holds a right its opener lacks, `dlockctl acl` explains a
//! principal's rights, and SIGHUP reads the file again.

use std::process::Command;
use std::time::{Duration, Instant};

use dlock::{Client, CreateParams, Error, ObjectKind, Win32Error};
use dlock_proto::vocab::{EVENT_MODIFY_STATE, MAXIMUM_ALLOWED, SYNCHRONIZE};
use dlock_tests::procs::ProcCluster;
use dlock_tests::target_binary;

const ACL: &str = r#"
[[rule]]
principal = "CN=alice"
prefix = "alice/"
rights = ["all"]

[[rule]]
principal = "CN=alice"
prefix = "shared/"
rights = ["all"]

[[rule]]
principal = "CN=bob"
prefix = "shared/"
rights = ["open", "synchronize"]
"#;

const DENIED: Error = Error::Win32(Win32Error::ACCESS_DENIED);

async fn session_of(cluster: &ProcCluster, who: &str) -> dlock::Session {
    let client = Client::connect_with_config(cluster.client_config(who))
        .await
        .unwrap();
    client.open_session(Duration::from_secs(10)).await.unwrap()
}

/// Runs `dlockctl` as the admin against `cluster`; its standard output.
fn dlockctl(cluster: &ProcCluster, args: &[&str]) -> String {
    let certs = cluster.certs_dir();
    let out = Command::new(target_binary("dlockctl"))
        .arg("--endpoint")
        .arg(cluster.endpoints())
        .arg("--cacert")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("client-admin.pem"))
        .arg("--key")
        .arg(certs.join("client-admin.key"))
        .args(args)
        .output()
        .expect("run dlockctl");
    assert!(
        out.status.success(),
        "dlockctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_denies_creates_and_opens_outside_a_principals_prefixes_with_5() {
    let dir = tempfile::tempdir().unwrap();
    let acl_path = dir.path().join("acl.toml");
    std::fs::write(&acl_path, ACL).unwrap();
    let acl_arg = acl_path.display().to_string();
    let cluster = ProcCluster::start_tls(3, &["--acl-file", &acl_arg]).await;
    cluster.leader().await;

    let alice = session_of(&cluster, "alice").await;
    let bob = session_of(&cluster, "bob").await;
    let event = alice
        .create_event(Some("shared/ready"), true, false)
        .await
        .expect("alice creates in shared/");
    alice
        .create_mutex(Some("Global\\alice/m"), false)
        .await
        .expect("Global\\ names the same prefix");

    // Outside their prefixes: 5, and nothing is created.
    let err = alice.create_mutex(Some("bob/m"), false).await.unwrap_err();
    assert_eq!(err, DENIED);
    let err = bob.create_mutex(Some("alice/x"), false).await.unwrap_err();
    assert_eq!(err, DENIED);
    // bob may open in shared/ but not create there.
    let err = bob
        .create_mutex(Some("shared/new"), false)
        .await
        .unwrap_err();
    assert_eq!(err, DENIED);
    let admin = Client::connect_with_config(cluster.client_config("admin"))
        .await
        .unwrap();
    for prefix in ["bob/", "alice/x", "shared/new"] {
        let page = admin.admin().list_objects(prefix, "", 10).await.unwrap();
        assert!(page.objects.is_empty(), "{prefix}: {:?}", page.objects);
    }
    // Opening the existing mutex of alice's prefix is denied to bob, even just to look.
    let err = bob
        .open(ObjectKind::Mutex, "alice/m", SYNCHRONIZE)
        .await
        .unwrap_err();
    assert_eq!(err, DENIED);

    // Nor may bob ask who owns it through a fencing token check; alice may.
    let bob_client = Client::connect_with_config(cluster.client_config("bob"))
        .await
        .unwrap();
    assert!(bob_client.check_fencing_token("alice/m", 1).await.is_err());
    let alice_client = Client::connect_with_config(cluster.client_config("alice"))
        .await
        .unwrap();
    assert!(
        !alice_client
            .check_fencing_token("alice/m", 1)
            .await
            .unwrap()
    );

    // In shared/, bob may wait but not signal: asking for more is 5, MAXIMUM_ALLOWED gets a
    // handle that cannot set the event.
    let err = bob
        .open(ObjectKind::Event, "shared/ready", EVENT_MODIFY_STATE)
        .await
        .unwrap_err();
    assert_eq!(err, DENIED);
    let err = bob.open_event("shared/ready").await.unwrap_err();
    assert_eq!(err, DENIED, "OpenEvent asks for EVENT_ALL_ACCESS");
    let handle = bob
        .open(ObjectKind::Event, "shared/ready", MAXIMUM_ALLOWED)
        .await
        .expect("bob opens for waiting");
    assert_eq!(bob.set_event(handle).await.unwrap_err(), DENIED);
    event.set().await.unwrap();
    // ... and the same handle kept SYNCHRONIZE: it waits.
    let outcome = bob
        .wait(1, &[handle], false, dlock::Timeout::Millis(5_000))
        .await
        .unwrap();
    assert!(
        matches!(outcome, dlock::WaitOutcome::Signaled { index: 0, .. }),
        "{outcome:?}"
    );

    // `dlockctl acl` explains a principal's rights and which rules grant them.
    let out = dlockctl(&cluster, &["acl", "CN=bob", "Global\\shared/ready"]);
    assert!(
        out.contains("CN=bob on \"Global\\\\shared/ready\": open, synchronize"),
        "{out}"
    );
    assert!(
        out.contains("granted by principal \"CN=bob\" prefix \"shared/\""),
        "{out}"
    );
    let out = dlockctl(&cluster, &["acl", "CN=bob", "alice/m"]);
    assert!(out.contains("none (ERROR_ACCESS_DENIED)"), "{out}");

    // SIGHUP reads the file again: bob may now create in shared/.
    std::fs::write(
        &acl_path,
        format!(
            "{ACL}\n[[rule]]\nprincipal = \"CN=bob\"\nprefix = \"shared/\"\nrights = [\"create\"]\n"
        ),
    )
    .unwrap();
    for id in cluster.ids() {
        cluster.hangup(id);
    }
    for id in cluster.ids() {
        cluster
            .wait_for_log(id, &["SIGHUP: ACL file read again"], 1)
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match bob
            .create(
                1,
                Some("shared/new"),
                CreateParams::Mutex {
                    initial_owner: false,
                },
                SYNCHRONIZE,
            )
            .await
        {
            Ok(_) => break,
            Err(err) => {
                assert_eq!(err, DENIED);
                assert!(Instant::now() < deadline, "the new rule never applied");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // A broken file keeps the rules in force: what they deny stays denied, and what they
    // allow (bob's new right to create in shared/) stays allowed.
    std::fs::write(
        &acl_path,
        "[[rule]]\nprincipal = \"*\"\nrights = [\"all\"]\n",
    )
    .unwrap();
    for id in cluster.ids() {
        cluster.hangup(id);
    }
    for id in cluster.ids() {
        cluster
            .wait_for_log(id, &["ACL file not read again"], 1)
            .await;
    }
    let err = bob.create_mutex(Some("alice/y"), false).await.unwrap_err();
    assert_eq!(err, DENIED);
    bob.create(
        1,
        Some("shared/after-broken-file"),
        CreateParams::Mutex {
            initial_owner: false,
        },
        SYNCHRONIZE,
    )
    .await
    .expect("the previous rules stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_at_its_quota_gets_1450_while_another_is_unaffected() {
    let cluster =
        ProcCluster::start_tls(3, &["--quota-sessions", "2", "--quota-handles", "3"]).await;
    cluster.leader().await;
    let alice = Client::connect_with_config(cluster.client_config("alice"))
        .await
        .unwrap();
    let bob = Client::connect_with_config(cluster.client_config("bob"))
        .await
        .unwrap();
    let ttl = Duration::from_secs(10);
    let a1 = alice.open_session(ttl).await.unwrap();
    let a2 = alice.open_session(ttl).await.unwrap();
    let err = alice.open_session(ttl).await.unwrap_err();
    assert_eq!(err.code(), 1450, "{err}");
    let b1 = bob.open_session(ttl).await.expect("bob is not affected");

    // Handles, across alice's sessions (kept: a dropped typed handle closes itself).
    let _held = [
        a1.create_event(Some("quota/a1"), true, false)
            .await
            .unwrap(),
        a1.create_event(Some("quota/a2"), true, false)
            .await
            .unwrap(),
        a2.create_event(Some("quota/a3"), true, false)
            .await
            .unwrap(),
    ];
    let err = a2
        .create_event(Some("quota/a4"), true, false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), 1450, "{err}");
    let admin = Client::connect_with_config(cluster.client_config("admin"))
        .await
        .unwrap();
    let page = admin
        .admin()
        .list_objects("quota/a4", "", 10)
        .await
        .unwrap();
    assert!(page.objects.is_empty(), "nothing was created");
    let mut bobs = Vec::new();
    for i in 0..3 {
        bobs.push(
            b1.create_event(Some(&format!("quota/b{i}")), true, false)
                .await
                .expect("bob is not affected"),
        );
    }

    // Closing a session gives its share back.
    a2.close().await.unwrap();
    alice
        .open_session(ttl)
        .await
        .expect("a closed session's quota is given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_name_principals_without_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let alice_token = "alice-0123456789abcdef0123456789abcdef";
    let bob_token = "bob-0123456789abcdef0123456789abcdef0";
    std::fs::write(
        &tokens,
        format!(
            "[[token]]\nprincipal = \"dev-alice\"\ntoken = \"{alice_token}\"\n\n\
             [[token]]\nprincipal = \"dev-bob\"\ntoken = \"{bob_token}\"\n"
        ),
    )
    .unwrap();
    let acl = dir.path().join("acl.toml");
    std::fs::write(
        &acl,
        "[[rule]]\nprincipal = \"dev-alice\"\nprefix = \"alice/\"\nrights = [\"all\"]\n",
    )
    .unwrap();
    let (tokens_arg, acl_arg) = (tokens.display().to_string(), acl.display().to_string());
    let cluster =
        ProcCluster::start(1, &["--token-file", &tokens_arg, "--acl-file", &acl_arg]).await;
    cluster.leader().await;
    let client_with = |token: Option<&str>| {
        let mut config = dlock::ClientConfig::new(cluster.endpoint_list());
        config.token = token.map(str::to_owned);
        config.request_timeout = Duration::from_secs(3);
        Client::connect_with_config(config)
    };
    let alice = client_with(Some(alice_token)).await.unwrap();
    let session = alice.open_session(Duration::from_secs(10)).await.unwrap();
    let _m = session
        .create_mutex(Some("alice/m"), false)
        .await
        .expect("alice's token names dev-alice");
    let bob = client_with(Some(bob_token)).await.unwrap();
    let session = bob.open_session(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        session
            .create_mutex(Some("alice/b"), false)
            .await
            .unwrap_err(),
        DENIED
    );
    let anonymous = client_with(None).await.unwrap();
    let session = anonymous
        .open_session(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        session
            .create_mutex(Some("alice/c"), false)
            .await
            .unwrap_err(),
        DENIED
    );
    // An unknown token is refused outright, with a message that says so.
    let stranger = client_with(Some("not-a-token-0123456789abcdef0123456789"))
        .await
        .unwrap();
    let err = stranger
        .open_session(Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown bearer token"), "{err}");
}

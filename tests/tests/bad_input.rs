//! Bad input against a real dlockd, through the raw gRPC API (so the server's own validation is
//! what is tested, not the client library's): every bad request gets its documented error and
//! changes nothing, and the node keeps serving.

use dlock_proto::v1 as pb;
use dlock_proto::v1::dlock_client::DlockClient;
use dlock_tests::{Dlockd, unique};
use tonic::Code;
use tonic::transport::Channel;

const WAIT_FAILED: u32 = 0xFFFF_FFFF;
const WAIT_OBJECT_0: u32 = 0;
const MUTEX_ALL_ACCESS: u32 = 0x001F_0001;
const SEMAPHORE_ALL_ACCESS: u32 = 0x001F_0003;
const EVENT_ALL_ACCESS: u32 = 0x001F_0003;

struct Session {
    client: DlockClient<Channel>,
    id: u64,
    secret: Vec<u8>,
    seq: u64,
}

impl Session {
    async fn open(server: &Dlockd) -> Session {
        let mut client = DlockClient::connect(server.endpoint())
            .await
            .expect("connect");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let id = loop {
            match client
                .open_session(pb::OpenSessionRequest {
                    ttl_ms: 30_000,
                    client_name: "bad-input".into(),
                })
                .await
            {
                Ok(reply) => break reply.into_inner(),
                Err(status) if status.code() == Code::Unavailable => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "no leader in time: {status}"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(status) => panic!("open session: {status}"),
            }
        };
        Session {
            client,
            id: id.session_id,
            secret: id.session_secret,
            seq: 0,
        }
    }

    fn header(&mut self) -> Option<pb::RequestHeader> {
        self.seq += 1;
        Some(pb::RequestHeader {
            session_id: self.id,
            session_secret: self.secret.clone(),
            seq: self.seq,
            ack_below: self.seq,
            ..Default::default()
        })
    }

    async fn create(
        &mut self,
        kind: pb::ObjectKind,
        name: &str,
        initial: i32,
        max: i32,
    ) -> pb::CreateReply {
        let header = self.header();
        self.client
            .create(pb::CreateRequest {
                header,
                thread_id: 1,
                kind: kind as i32,
                name: Some(name.to_string()),
                access: match kind {
                    pb::ObjectKind::Mutex => MUTEX_ALL_ACCESS,
                    pb::ObjectKind::Semaphore => SEMAPHORE_ALL_ACCESS,
                    _ => EVENT_ALL_ACCESS,
                },
                initial_count: initial,
                maximum_count: max,
                ..Default::default()
            })
            .await
            .expect("create")
            .into_inner()
    }

    async fn open_name(&mut self, kind: pb::ObjectKind, name: &str) -> pb::OpenReply {
        let header = self.header();
        self.client
            .open(pb::OpenRequest {
                header,
                kind: kind as i32,
                name: Some(name.into()),
                access: MUTEX_ALL_ACCESS,
            })
            .await
            .expect("open")
            .into_inner()
    }

    async fn wait(&mut self, handles: Vec<u64>, wait_all: bool) -> pb::WaitReply {
        let header = self.header();
        self.client
            .wait(pb::WaitRequest {
                header,
                thread_id: 1,
                handles,
                wait_all,
                timeout_ms: 0,
            })
            .await
            .expect("wait")
            .into_inner()
    }

    async fn close(&mut self, handle: u64) -> u32 {
        let header = self.header();
        self.client
            .close_handle(pb::HandleRequest {
                header,
                handle,
                thread_id: 1,
            })
            .await
            .expect("close")
            .into_inner()
            .error
    }
}

fn server() -> (tempfile::TempDir, Dlockd) {
    let dir = tempfile::tempdir().unwrap();
    let server = Dlockd::start(dir.path(), &[]);
    (dir, server)
}

#[tokio::test]
async fn bad_names_get_their_error_and_create_nothing() {
    let (_dir, server) = server();
    let mut s = Session::open(&server).await;
    let long = "n".repeat(261);
    for (name, code) in [
        (long.as_str(), 206),
        ("\\x", 161),
        ("a\\b", 3),
        ("Local\\x", 87),
    ] {
        let reply = s.create(pb::ObjectKind::Mutex, name, 0, 0).await;
        assert_eq!((reply.error, reply.handle), (code, 0), "{name:?}");
    }
    // Nothing was created under any of those names.
    let reply = s.open_name(pb::ObjectKind::Mutex, &"n".repeat(260)).await;
    assert_eq!(reply.error, 2);
}

#[tokio::test]
async fn bad_semaphore_counts_get_87_even_when_the_name_exists() {
    let (_dir, server) = server();
    let mut s = Session::open(&server).await;
    let name = unique("sem");
    for (initial, max) in [(-1, 5), (6, 5), (0, 0), (0, -3)] {
        let reply = s
            .create(pb::ObjectKind::Semaphore, &name, initial, max)
            .await;
        assert_eq!(reply.error, 87, "initial {initial} max {max}");
    }
    assert_eq!(
        s.open_name(pb::ObjectKind::Semaphore, &name).await.error,
        2,
        "nothing created"
    );
    let created = s.create(pb::ObjectKind::Semaphore, &name, 1, 2).await;
    assert_eq!(created.error, 0);
    let reply = s.create(pb::ObjectKind::Semaphore, &name, 3, 2).await;
    assert_eq!(reply.error, 87, "validated before the name lookup");
    let header = s.header();
    let release = s
        .client
        .release_semaphore(pb::ReleaseSemaphoreRequest {
            header,
            handle: created.handle,
            count: -1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(release.error, 87);
    let header = s.header();
    let release = s
        .client
        .release_semaphore(pb::ReleaseSemaphoreRequest {
            header,
            handle: created.handle,
            count: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (release.error, release.previous_count),
        (0, 1),
        "count unchanged by the bad calls"
    );
}

#[tokio::test]
async fn zero_or_65_handles_fail_with_87() {
    let (_dir, server) = server();
    let mut s = Session::open(&server).await;
    let ev = s.create(pb::ObjectKind::Event, "", 0, 0).await.handle;
    let reply = s.wait(vec![], false).await;
    assert_eq!((reply.result, reply.error), (WAIT_FAILED, 87));
    let reply = s.wait(vec![ev; 65], false).await;
    assert_eq!((reply.result, reply.error), (WAIT_FAILED, 87));
}

#[tokio::test]
async fn handles_of_another_session_and_closed_handles_are_invalid() {
    let (_dir, server) = server();
    let mut a = Session::open(&server).await;
    let mut b = Session::open(&server).await;
    let name = unique("mutex");
    let h = a.create(pb::ObjectKind::Mutex, &name, 0, 0).await.handle;
    let reply = b.wait(vec![h], false).await;
    assert_eq!(
        (reply.result, reply.error),
        (WAIT_FAILED, 6),
        "a's handle is not b's"
    );
    assert_eq!(b.close(h).await, 6, "b cannot close a's handle");
    let reply = a.wait(vec![h], false).await;
    assert_eq!(
        reply.result, WAIT_OBJECT_0,
        "a's handle still works and was not taken by b"
    );
    assert_eq!(a.close(h).await, 0);
    assert_eq!(a.close(h).await, 6, "closed handles are invalid");
    let reply = a.wait(vec![h], false).await;
    assert_eq!((reply.result, reply.error), (WAIT_FAILED, 6));
}

#[tokio::test]
async fn a_huge_message_is_refused_and_the_node_keeps_serving() {
    let (_dir, server) = server();
    let mut s = Session::open(&server).await;
    let header = s.header();
    let status = s
        .client
        .create(pb::CreateRequest {
            header,
            thread_id: 1,
            kind: pb::ObjectKind::Mutex as i32,
            name: Some("h".repeat(4 << 20)),
            access: MUTEX_ALL_ACCESS,
            initial_count: 0,
            maximum_count: 0,
            ..Default::default()
        })
        .await
        .expect_err("a 4 MiB request must be refused");
    assert!(
        matches!(
            status.code(),
            Code::ResourceExhausted | Code::OutOfRange | Code::Internal
        ),
        "{status}"
    );
    let mut fresh = Session::open(&server).await;
    let reply = fresh
        .create(pb::ObjectKind::Event, &unique("after"), 0, 0)
        .await;
    assert_eq!(reply.error, 0, "the node still serves");
}

#[tokio::test]
async fn requests_without_a_header_or_with_unknown_kinds_are_invalid_arguments() {
    let (_dir, server) = server();
    let mut s = Session::open(&server).await;
    let status = s
        .client
        .close_handle(pb::HandleRequest {
            header: None,
            handle: 1,
            thread_id: 1,
        })
        .await
        .expect_err("no header");
    assert_eq!(status.code(), Code::InvalidArgument);
    let header = s.header();
    let status = s
        .client
        .open(pb::OpenRequest {
            header,
            kind: 42,
            name: Some("x".into()),
            access: 0,
        })
        .await
        .expect_err("unknown kind");
    assert_eq!(status.code(), Code::InvalidArgument);
    let header = Some(pb::RequestHeader {
        session_id: 999_999,
        session_secret: vec![0; 16],
        seq: 1,
        ack_below: 0,
        ..Default::default()
    });
    let status = s
        .client
        .close_handle(pb::HandleRequest {
            header,
            handle: 1,
            thread_id: 1,
        })
        .await
        .expect_err("unknown session");
    assert_eq!(status.code(), Code::NotFound);
}

/// Issue 13: session ids are log indexes, so anyone who reaches the port could release another
/// session's mutex, close it, keep it alive or read its outcomes. Every request naming a
/// session must carry the secret its opener was given: without it, PERMISSION_DENIED, and
/// nothing changes.
#[tokio::test]
async fn requests_in_another_sessions_name_without_its_secret_change_nothing() {
    let (_dir, server) = server();
    let mut owner = Session::open(&server).await;
    let name = unique("victim");
    let created = owner.create(pb::ObjectKind::Mutex, &name, 0, 0).await;
    assert_eq!(created.error, 0);
    let handle = created.handle;
    assert_eq!(owner.wait(vec![handle], false).await.result, WAIT_OBJECT_0);
    // The attacker knows the id (it is guessable) and the handle, not the secret.
    let mut attacker = Session::open(&server).await;
    for wrong in [
        Vec::new(),
        vec![0; 16],
        attacker.secret.clone(),
        vec![1; 15],
    ] {
        let header = Some(pb::RequestHeader {
            session_id: owner.id,
            session_secret: wrong.clone(),
            seq: 1_000,
            ack_below: 0,
            ..Default::default()
        });
        let release = attacker
            .client
            .release_mutex(pb::HandleRequest {
                header: header.clone(),
                handle,
                thread_id: 1,
            })
            .await
            .expect_err("release in another session's name");
        assert_eq!(release.code(), Code::PermissionDenied, "{release}");
        let close = attacker
            .client
            .close_session(pb::CloseSessionRequest { header })
            .await
            .expect_err("close another session");
        assert_eq!(close.code(), Code::PermissionDenied, "{close}");
        let query = attacker
            .client
            .query(pb::QueryRequest {
                session_id: owner.id,
                session_secret: wrong.clone(),
                handle,
            })
            .await
            .expect_err("query in another session's name");
        assert_eq!(query.code(), Code::PermissionDenied, "{query}");
        let await_wait = attacker
            .client
            .await_wait(pb::AwaitWaitRequest {
                session_id: owner.id,
                session_secret: wrong.clone(),
                seq: 2,
                max_block_ms: 0,
            })
            .await
            .expect_err("await another session's wait");
        assert_eq!(await_wait.code(), Code::PermissionDenied, "{await_wait}");
        let keepalive = tokio_stream::iter(vec![pb::KeepAliveRequest {
            session_id: owner.id,
            session_secret: wrong,
        }]);
        let mut stream = attacker
            .client
            .keep_alive(keepalive)
            .await
            .expect("a keepalive stream opens")
            .into_inner();
        let refused = stream
            .message()
            .await
            .expect_err("a keepalive in another session's name");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    }
    // Nothing changed: the owner still holds its mutex and its session goes on (its own next
    // sequence number was not taken by the attacker's requests).
    let state = owner
        .client
        .query(pb::QueryRequest {
            session_id: owner.id,
            session_secret: owner.secret.clone(),
            handle,
        })
        .await
        .expect("the owner's query")
        .into_inner();
    assert_eq!(state.error, 0);
    assert_eq!(state.owner_session_id, owner.id);
    assert_eq!(state.recursion, 1);
    let header = owner.header();
    let released = owner
        .client
        .release_mutex(pb::HandleRequest {
            header,
            handle,
            thread_id: 1,
        })
        .await
        .expect("the owner's release")
        .into_inner();
    assert_eq!(released.error, 0);
}

/// Issue 13 (fuzzing, at the gRPC layer): random requests of every kind, with random field
/// values (unknown kinds and handles, bad names, huge counts, 70-handle waits, random sequence
/// numbers and acknowledgements, wrong secrets), in one session's name against a real dlockd.
/// Each is answered with a reply or a documented status, the node keeps serving, and the
/// session still works. `DLOCK_FUZZ_SEED` repeats a run; `DLOCK_FUZZ_CASES` sets its length.
#[tokio::test]
async fn random_requests_are_answered_and_the_node_keeps_serving() {
    let (_dir, server) = server();
    let mut s = Session::open(&server).await;
    let seed = std::env::var("DLOCK_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let cases: u64 = std::env::var("DLOCK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    eprintln!("--- fuzz seed {seed} (DLOCK_FUZZ_SEED={seed} repeats it), {cases} requests");
    let mut rng = dlock_cluster::sim::SplitMix64::new(seed);
    let names = [
        "",
        "a",
        "b",
        "Global\\a",
        "Local\\a",
        "\\lead",
        "a\\\\b",
        "x\\y",
        "ü€𝄞",
    ];
    let long = "n".repeat(300);
    for i in 0..cases {
        let mut r = || rng.next_u64();
        let handle = if r() % 4 == 0 { r() } else { r() % 12 };
        let thread_id = r() % 4;
        let header = match r() % 10 {
            // A sequence and acknowledgements of its own choosing.
            0 => Some(pb::RequestHeader {
                session_id: s.id,
                session_secret: s.secret.clone(),
                seq: r() % 50,
                ack_below: if r() % 2 == 0 { r() % 50 } else { r() },
                waits_done: (0..r() % 5).map(|_| r() % 50).collect(),
            }),
            // Another session's id, or no secret.
            1 => Some(pb::RequestHeader {
                session_id: r() % 5,
                session_secret: if r() % 2 == 0 {
                    vec![0; 16]
                } else {
                    Vec::new()
                },
                seq: 1 + r() % 50,
                ..Default::default()
            }),
            2 => None,
            _ => s.header(),
        };
        let name = match r() % 12 {
            0 => None,
            1 => Some(long.clone()),
            k => Some(names[(k as usize) % names.len()].to_string()),
        };
        let small = |v: u64| (v % 7) as i32 - 2;
        let result: Result<(), tonic::Status> = match r() % 14 {
            0 | 1 => s
                .client
                .create(pb::CreateRequest {
                    header,
                    thread_id,
                    kind: (r() % 5) as i32,
                    name,
                    access: if r() % 2 == 0 {
                        r() as u32
                    } else {
                        MUTEX_ALL_ACCESS
                    },
                    initial_count: small(r()),
                    maximum_count: if r() % 8 == 0 { i32::MAX } else { small(r()) },
                    initial_owner: r() % 2 == 0,
                    manual_reset: r() % 2 == 0,
                    initial_state: r() % 2 == 0,
                })
                .await
                .map(drop),
            2 => s
                .client
                .open(pb::OpenRequest {
                    header,
                    kind: (r() % 5) as i32,
                    name,
                    access: r() as u32,
                })
                .await
                .map(drop),
            3 => s
                .client
                .close_handle(pb::HandleRequest {
                    header,
                    handle,
                    thread_id,
                })
                .await
                .map(drop),
            4 => s
                .client
                .release_mutex(pb::HandleRequest {
                    header,
                    handle,
                    thread_id,
                })
                .await
                .map(drop),
            5 => s
                .client
                .set_event(pb::HandleRequest {
                    header,
                    handle,
                    thread_id,
                })
                .await
                .map(drop),
            6 => s
                .client
                .pulse_event(pb::HandleRequest {
                    header,
                    handle,
                    thread_id,
                })
                .await
                .map(drop),
            7 => s
                .client
                .release_semaphore(pb::ReleaseSemaphoreRequest {
                    header,
                    handle,
                    count: if r() % 4 == 0 { i32::MAX } else { small(r()) },
                })
                .await
                .map(drop),
            8 | 9 => s
                .client
                .wait(pb::WaitRequest {
                    header,
                    thread_id,
                    handles: (0..if r() % 10 == 0 { 70 } else { r() % 5 })
                        .map(|_| r() % 12)
                        .collect(),
                    wait_all: r() % 2 == 0,
                    timeout_ms: [0, 10, u32::MAX][(r() % 3) as usize],
                })
                .await
                .map(drop),
            10 => s
                .client
                .signal_and_wait(pb::SignalAndWaitRequest {
                    header,
                    thread_id,
                    signal_handle: handle,
                    wait_handle: r() % 12,
                    timeout_ms: [0, 10, u32::MAX][(r() % 3) as usize],
                })
                .await
                .map(drop),
            11 => s
                .client
                .cancel_wait(pb::CancelWaitRequest {
                    header,
                    wait_seq: r() % 50,
                })
                .await
                .map(drop),
            12 => s
                .client
                .await_wait(pb::AwaitWaitRequest {
                    session_id: s.id,
                    session_secret: s.secret.clone(),
                    seq: r() % 50,
                    max_block_ms: (r() % 20) as u32,
                })
                .await
                .map(drop),
            _ => s
                .client
                .query(pb::QueryRequest {
                    session_id: s.id,
                    session_secret: s.secret.clone(),
                    handle,
                })
                .await
                .map(drop),
        };
        if let Err(status) = result {
            assert!(
                matches!(
                    status.code(),
                    Code::InvalidArgument
                        | Code::NotFound
                        | Code::PermissionDenied
                        | Code::FailedPrecondition
                        | Code::ResourceExhausted
                ),
                "request {i} (seed {seed}): {status}"
            );
        }
    }
    // The node serves, and the session goes on.
    let name = unique("after-fuzz");
    let created = s.create(pb::ObjectKind::Mutex, &name, 0, 0).await;
    assert_eq!(created.error, 0, "{created:?}");
}

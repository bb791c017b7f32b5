//! A property test over the state machine (issue 13, "fuzzing"): random command sequences,
//! with every kind of bad input the wire can carry (bad names, unknown handles, repeated and
//! zero sequence numbers, wrong secrets, impossible counts, too many handles, other sessions'
//! ids), applied to a [`Namespace`]. Whatever they are, apply must not panic, every
//! cross-structure invariant ([`Namespace::verify`]) must hold after every command, the same
//! commands must give the same state on every replica, and every state must survive a
//! snapshot round trip. Random bytes must never panic the decoders a node runs on what
//! reaches it (log entries, snapshots).
//!
//! `.ci/run` runs a short pass; a long one:
//! `DLOCK_FUZZ_CASES=20000 cargo test --release -p dlock-server fuzz`.

use proptest::prelude::*;

use super::*;
use dlock_proto::vocab::{GENERIC_ALL, INFINITE, MUTEX_ALL_ACCESS, SYNCHRONIZE, Win32Error};

/// Cases per property: `DLOCK_FUZZ_CASES`, or a short default for `.ci/run`.
fn cases() -> u32 {
    std::env::var("DLOCK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Sessions the sequences open first (log indexes 1..=SESSIONS, secret [i; 16]).
const SESSIONS: u64 = 3;

fn secret_of(session: u64) -> SessionSecret {
    SessionSecret([session as u8; 16])
}

fn name() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some(String::new())),
        Just(Some("a".to_string())),
        Just(Some("b".to_string())),
        Just(Some("Global\\a".to_string())),
        Just(Some("Local\\a".to_string())),
        Just(Some("\\lead".to_string())),
        Just(Some("a\\\\b".to_string())),
        Just(Some("x".repeat(300))),
        "[a-c\\\\]{0,4}".prop_map(Some),
    ]
}

fn params() -> impl Strategy<Value = CreateParams> {
    prop_oneof![
        any::<bool>().prop_map(|initial_owner| CreateParams::Mutex { initial_owner }),
        (any::<bool>(), any::<bool>()).prop_map(|(manual_reset, initial_state)| {
            CreateParams::Event {
                manual_reset,
                initial_state,
            }
        }),
        (-2i32..5, -1i32..5).prop_map(|(initial, max)| CreateParams::Semaphore { initial, max }),
    ]
}

fn kind() -> impl Strategy<Value = ObjectKind> {
    prop_oneof![
        Just(ObjectKind::Mutex),
        Just(ObjectKind::Event),
        Just(ObjectKind::Semaphore),
    ]
}

fn access() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(GENERIC_ALL),
        Just(MUTEX_ALL_ACCESS),
        Just(SYNCHRONIZE),
        Just(0),
        any::<u32>(),
    ]
}

fn handle() -> impl Strategy<Value = HandleId> {
    prop_oneof![4 => 0u64..12, 1 => any::<u64>()]
}

fn timeout() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), Just(10), Just(INFINITE), any::<u32>()]
}

fn request() -> impl Strategy<Value = Request> {
    let thread = 0u64..4;
    prop_oneof![
        3 => (thread.clone(), name(), params(), access()).prop_map(|(thread, name, params, access)| {
            Request::Create { thread, name, params, access }
        }),
        1 => (kind(), name(), access()).prop_map(|(kind, name, access)| Request::Open { kind, name, access }),
        1 => handle().prop_map(|handle| Request::CloseHandle { handle }),
        2 => (thread.clone(), handle()).prop_map(|(thread, handle)| Request::ReleaseMutex { thread, handle }),
        1 => handle().prop_map(|handle| Request::SetEvent { handle }),
        1 => handle().prop_map(|handle| Request::ResetEvent { handle }),
        1 => handle().prop_map(|handle| Request::PulseEvent { handle }),
        1 => (handle(), prop_oneof![-1i32..3, Just(i32::MAX)])
            .prop_map(|(handle, count)| Request::ReleaseSemaphore { handle, count }),
        3 => (
            thread.clone(),
            prop_oneof![
                10 => proptest::collection::vec(handle(), 0..5),
                1 => proptest::collection::vec(handle(), 60..70),
            ],
            any::<bool>(),
            timeout()
        )
            .prop_map(|(thread, handles, wait_all, timeout_ms)| Request::Wait {
                thread,
                handles,
                wait_all,
                timeout_ms,
            }),
        1 => (thread.clone(), handle(), handle(), timeout()).prop_map(|(thread, signal, wait, timeout_ms)| {
            Request::SignalAndWait { thread, signal, wait, timeout_ms }
        }),
        1 => (0u64..20).prop_map(|wait| Request::CancelWait { wait }),
        1 => thread.prop_map(|thread| Request::ThreadExit { thread }),
        1 => Just(Request::CloseSession),
    ]
}

/// Requests, a fifth of them under an ACL decision (`Request::Limited`, usually of a create or
/// an open, sometimes of anything else, which must be refused).
fn limited_request() -> impl Strategy<Value = Request> {
    let allowed = (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(create, open, synchronize, modify_state)| Allowed {
            create,
            open,
            synchronize,
            modify_state,
        },
    );
    prop_oneof![
        4 => request(),
        1 => (allowed, request()).prop_map(|(allowed, request)| Request::Limited {
            allowed,
            request: Box::new(request),
        }),
    ]
}

fn session_id() -> impl Strategy<Value = SessionId> {
    prop_oneof![8 => 1..=SESSIONS, 1 => Just(0u64), 1 => any::<u64>()]
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        12 => (
            session_id(),
            prop_oneof![9 => Just(true), 1 => Just(false)],
            0u64..20,
            0u64..20,
            proptest::collection::vec(0u64..20, 0..3),
            limited_request(),
        )
            .prop_map(|(session, right_secret, seq, ack_below, waits_done, request)| {
                Command::Client {
                    session,
                    secret: if right_secret {
                        secret_of(session)
                    } else {
                        SessionSecret([0xEE; 16])
                    },
                    seq,
                    ack_below,
                    waits_done,
                    now_unix_ms: 1_000,
                    request,
                }
            }),
        1 => (0u64..5_000, proptest::collection::vec((session_id(), 0u64..10_000), 0..3))
            .prop_map(|(elapsed_ms, sessions)| Command::Checkpoint {
                now_unix_ms: 1_000,
                elapsed_ms,
                sessions,
            }),
        1 => session_id().prop_map(|session| Command::ExpireSession { session }),
        1 => (session_id(), 0u64..20).prop_map(|(session, seq)| Command::TimeoutWait { session, seq }),
        1 => (0u64..100_000).prop_map(|ttl_ms| Command::OpenSession {
            ttl_ms,
            secret: SessionSecret([0x55; 16]),
            now_unix_ms: 1_000,
            client_name: "late".into(),
        }),
        1 => (0usize..3).prop_map(|p| Command::OpenSessionAs {
            ttl_ms: 10_000,
            secret: SessionSecret([0x55; 16]),
            now_unix_ms: 1_000,
            client_name: "late".into(),
            principal: ["CN=p1", "CN=p2", ""][p].into(),
            quota: FUZZ_QUOTA,
        }),
    ]
}

/// Small quotas, so that random traffic reaches them.
const FUZZ_QUOTA: Quota = Quota {
    sessions: 8,
    objects: 3,
    handles: 4,
    waits: 2,
};

/// The sequence: the fixed sessions first (two thirds of them for one of two principals under
/// [`FUZZ_QUOTA`], the rest of none), then the random commands.
fn with_sessions(commands: Vec<Command>) -> Vec<Command> {
    (1..=SESSIONS)
        .map(|i| match i % 3 {
            0 => Command::OpenSession {
                ttl_ms: 10_000,
                secret: secret_of(i),
                now_unix_ms: 1_000,
                client_name: format!("s{i}"),
            },
            p => Command::OpenSessionAs {
                ttl_ms: 10_000,
                secret: secret_of(i),
                now_unix_ms: 1_000,
                client_name: format!("s{i}"),
                principal: format!("CN=p{p}"),
                quota: FUZZ_QUOTA,
            },
        })
        .chain(commands)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// No command sequence panics apply, breaks an invariant, diverges between replicas or
    /// fails a snapshot round trip.
    #[test]
    fn fuzz_random_commands_keep_every_invariant(
        commands in proptest::collection::vec(command(), 1..120)
    ) {
        let commands = with_sessions(commands);
        let mut a = Namespace::new();
        let mut b = Namespace::new();
        let mut seen = std::collections::BTreeSet::new();
        for (i, command) in commands.iter().enumerate() {
            let index = i as u64 + 1;
            let reply_a = a.apply(index, command).reply;
            let reply_b = b.apply(index, command).reply;
            prop_assert_eq!(&reply_a, &reply_b, "replicas answered command {} differently", index);
            let fresh = match command {
                Command::Client { secret, session, seq, request, .. }
                    if a.session_secret(*session).is_some_and(|s| s.matches(secret)) =>
                {
                    // A cancel bars the registration it names (it gets the recorded outcome).
                    if let Request::CancelWait { wait } = request {
                        seen.insert((*session, *wait));
                    }
                    seen.insert((*session, *seq))
                }
                _ => false,
            };
            if let Command::Client { request, .. } = command
                && fresh
                && let Err(code) = validate_request(request)
            {
                // A request that fails validation changes nothing and is answered with its code
                // (or 87 below the acknowledged floor, or "too many pending"), the first time
                // its sequence number is seen; a retry gets the recorded reply.
                let reply = reply_a.clone().expect("client commands reply");
                prop_assert!(
                    reply == failure_reply(request, code)
                        || reply == Reply::Error(Win32Error::INVALID_PARAMETER)
                        || reply == Reply::TooManyPending,
                    "invalid request {:?} answered {:?}", request, reply
                );
            }
            if let Err(violation) = a.verify() {
                return Err(TestCaseError::fail(format!(
                    "after command {index} ({command:?}): {violation}"
                )));
            }
        }
        let snapshot = a.snapshot();
        prop_assert_eq!(&snapshot, &b.snapshot(), "replicas diverged");
        let restored = Namespace::restore(&snapshot).expect("a snapshot restores");
        prop_assert_eq!(restored.snapshot(), snapshot, "the round trip changed the state");
    }

    /// Random bytes never panic the decoders of what reaches a node: log entries and snapshots.
    #[test]
    fn fuzz_random_bytes_never_panic_the_decoders(
        bytes in proptest::collection::vec(any::<u8>(), 0..512)
    ) {
        let _ = postcard::from_bytes::<Command>(&bytes);
        let _ = postcard::from_bytes::<Reply>(&bytes);
        let _ = Namespace::restore(&bytes);
        let mut versioned = vec![SNAPSHOT_FORMAT_VERSION];
        versioned.extend_from_slice(&bytes);
        let _ = Namespace::restore(&versioned);
    }
}

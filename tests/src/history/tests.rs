//! Unit tests of the checker: hand-built histories that must pass or fail, and the recorder
//! under concurrent clients. Randomized histories of a simulated service are in `simulation`.

use super::*;

mod simulation;

const PIN: ClientId = ClientId(0);

/// A hand-built history over mutex "m" and event "e".
#[derive(Default)]
struct B {
    h: History,
}

fn c(n: u64) -> ClientId {
    ClientId(n)
}

fn acquire() -> Op {
    Op::Acquire {
        mutex: "m".into(),
        timeout_ms: 1000,
    }
}

fn poll() -> Op {
    Op::Acquire {
        mutex: "m".into(),
        timeout_ms: 0,
    }
}

fn release() -> Op {
    Op::Release { mutex: "m".into() }
}

fn granted(token: u64) -> Outcome {
    Outcome::Acquired {
        token,
        abandoned: false,
    }
}

fn granted_abandoned(token: u64) -> Outcome {
    Outcome::Acquired {
        token,
        abandoned: true,
    }
}

impl B {
    fn new() -> B {
        B::default()
    }

    /// Pins `name` (client 0, at times 0..1, creating it).
    fn pinned(mut self, name: &str, kind: ObjectKind) -> B {
        self.op(
            0,
            Op::Create {
                name: name.into(),
                kind,
                keep_open: true,
            },
            0,
            1,
            Outcome::Created {
                already_existed: false,
            },
        );
        self
    }

    fn op(&mut self, client: u64, op: Op, invoke: Nanos, at: Nanos, o: Outcome) -> OpId {
        self.h.add(c(client), op, invoke, at, o)
    }

    fn acq(&mut self, client: u64, invoke: Nanos, at: Nanos, token: u64) -> OpId {
        self.op(client, acquire(), invoke, at, granted(token))
    }

    fn acq_abandoned(&mut self, client: u64, invoke: Nanos, at: Nanos, token: u64) -> OpId {
        self.op(client, acquire(), invoke, at, granted_abandoned(token))
    }

    fn rel(&mut self, client: u64, invoke: Nanos, at: Nanos) -> OpId {
        self.op(client, release(), invoke, at, Outcome::Ok)
    }

    fn lost(&mut self, client: u64, at: Nanos) -> OpId {
        self.op(client, Op::LostSession, at, at, Outcome::Ok)
    }

    fn event(&mut self, client: u64, op: Op, invoke: Nanos, at: Nanos, o: Outcome) -> OpId {
        self.op(client, op, invoke, at, o)
    }

    fn check(&self) -> Result<Report, Vec<Violation>> {
        check(&self.h)
    }

    /// The distinct violation kinds (empty if the history passes).
    fn kinds(&self) -> Vec<ViolationKind> {
        match self.check() {
            Ok(_) => Vec::new(),
            Err(vs) => {
                let mut k: Vec<ViolationKind> = vs.iter().map(|v| v.kind).collect();
                k.sort();
                k.dedup();
                k
            }
        }
    }

    fn passes(&self) -> Report {
        match self.check() {
            Ok(report) => report,
            Err(vs) => {
                let lines: Vec<String> = vs.iter().map(ToString::to_string).collect();
                panic!("unexpected violations:\n{}", lines.join("\n"))
            }
        }
    }
}

fn set() -> Op {
    Op::SetEvent { event: "e".into() }
}

fn reset() -> Op {
    Op::ResetEvent { event: "e".into() }
}

fn wait_event(timeout_ms: u32) -> Op {
    Op::WaitEvent {
        event: "e".into(),
        timeout_ms,
    }
}

// ----- histories that must pass -----

#[test]
fn empty_history_passes() {
    let report = B::new().passes();
    assert_eq!(report.ops, 0);
    assert_eq!(report.max_token, 0);
}

#[test]
fn sequential_holds_pass_with_stats() {
    let mut b = B::new().pinned("m", ObjectKind::Mutex);
    b.acq(1, 10, 20, 5);
    b.rel(1, 30, 40);
    b.acq(2, 15, 45, 9);
    b.rel(2, 50, 60);
    b.op(3, poll(), 70, 80, granted(12));
    b.rel(3, 90, 100);
    let r = b.passes();
    assert_eq!(r.ops, 7);
    assert_eq!(r.ops_per_kind["acquire"], 3);
    assert_eq!(r.ops_per_kind["release"], 3);
    assert_eq!(r.grants_per_mutex["m"], 3);
    assert_eq!(r.max_token, 12);
    assert_eq!(r.released_holds_checked, 3);
    assert_eq!(r.abandon_pairs_checked, 2);
    // The poll followed an acknowledged release with no grant possible in between.
    assert_eq!(r.release_waits_checked, 1);
    assert_eq!(r.unknown_outcomes, 0);
}

#[test]
fn overlapping_acquires_may_get_tokens_against_invocation_order() {
    // Client 1 invoked first but its grant took effect second: tokens follow the log, and
    // overlapping operations may be ordered either way.
    let mut b = B::new();
    b.acq(1, 10, 50, 9);
    b.acq(2, 20, 30, 5);
    b.rel(2, 31, 35);
    b.rel(1, 60, 70);
    b.passes();
}

#[test]
fn release_acknowledged_after_the_next_grant_passes() {
    // The release was applied (at ~45) before the next grant (~55); its reply was slow.
    let mut b = B::new().pinned("m", ObjectKind::Mutex);
    b.acq(1, 10, 20, 5);
    b.rel(1, 40, 100);
    b.acq(2, 30, 60, 9);
    b.passes();
}

#[test]
fn recursive_acquires_share_a_token() {
    let mut b = B::new().pinned("m", ObjectKind::Mutex);
    b.acq(1, 10, 20, 5);
    b.acq(1, 21, 22, 5);
    b.rel(1, 23, 24);
    b.rel(1, 25, 26);
    b.acq(2, 12, 30, 8);
    let r = b.passes();
    assert_eq!(r.grants_per_mutex["m"], 2);
    assert_eq!(r.abandon_pairs_checked, 1);
}

#[test]
fn abandoned_after_a_lost_session_passes() {
    let mut b = B::new().pinned("m", ObjectKind::Mutex);
    b.acq(1, 10, 20, 5);
    b.lost(1, 30);
    b.acq_abandoned(2, 25, 90, 11);
    let r = b.passes();
    assert_eq!(r.abandoned_grants, 1);
    assert_eq!(r.abandon_pairs_checked, 1);
}

#[test]
fn abandonment_after_an_unknown_release_is_not_concluded() {
    for abandoned in [false, true] {
        let mut b = B::new().pinned("m", ObjectKind::Mutex);
        b.acq(1, 10, 20, 5);
        b.op(1, release(), 30, 40, Outcome::Unknown);
        b.op(
            2,
            acquire(),
            25,
            90,
            Outcome::Acquired {
                token: 11,
                abandoned,
            },
        );
        let r = b.passes();
        assert_eq!(r.abandon_pairs_checked, 0);
        assert_eq!(r.unknown_outcomes, 1);
    }
}

#[test]
fn a_hold_whose_release_failed_may_overlap_and_must_be_abandoned() {
    // The session ended unseen (the release failed: not owner); the next owner was granted
    // the mutex while client 1 still thought it held it: legal, fencing tokens cover it.
    let mut b = B::new().pinned("m", ObjectKind::Mutex);
    b.acq(1, 10, 20, 5);
    b.acq_abandoned(2, 15, 60, 11);
    b.op(1, release(), 70, 80, Outcome::Failed(288));
    b.passes();
    // Without WAIT_ABANDONED the next grant proves nothing released the first one.
    let mut b = B::new().pinned("m", ObjectKind::Mutex);
    b.acq(1, 10, 20, 5);
    b.acq(2, 15, 60, 11);
    b.op(1, release(), 70, 80, Outcome::Failed(288));
    assert_eq!(b.kinds(), vec![ViolationKind::MissingAbandon]);
}

#[test]
fn an_unknown_acquire_hides_the_abandoned_flag() {
    // Client 3's acquire may have been granted between 5 and 11 (taking the abandoned flag)
    // and released (its release is unknown too).
    let mut b = B::new().pinned("m", ObjectKind::Mutex);
    b.acq(1, 10, 20, 5);
    b.lost(1, 30);
    b.op(3, acquire(), 40, 50, Outcome::Unknown);
    b.op(3, release(), 51, 52, Outcome::Unknown);
    b.acq(2, 45, 90, 11);
    let r = b.passes();
    assert_eq!(r.abandon_pairs_checked, 0);
}

#[test]
fn unpinned_mutexes_are_not_checked_for_abandonment() {
    let mut b = B::new();
    b.acq(1, 10, 20, 5);
    b.lost(1, 30);
    b.acq(2, 25, 90, 11);
    assert_eq!(b.passes().abandon_pairs_checked, 0);
}

#[test]
fn a_poll_while_held_may_time_out() {
    let mut b = B::new().pinned("m", ObjectKind::Mutex);
    b.acq(1, 10, 20, 5);
    b.op(2, poll(), 25, 26, Outcome::TimedOut);
    b.rel(1, 30, 40);
    b.op(2, poll(), 35, 36, Outcome::TimedOut); // overlaps the release: either is fine
    b.passes();
}

#[test]
fn a_poll_after_a_release_may_time_out_if_someone_else_may_have_won() {
    let mut b = B::new().pinned("m", ObjectKind::Mutex);
    b.acq(1, 10, 20, 5);
    b.rel(1, 30, 40);
    b.acq(3, 35, 60, 9); // may have been granted before the poll was decided
    b.op(2, poll(), 50, 55, Outcome::TimedOut);
    b.rel(3, 70, 80);
    b.passes();
    // Or an acquire whose outcome is unknown.
    let mut b = B::new().pinned("m", ObjectKind::Mutex);
    b.acq(1, 10, 20, 5);
    b.rel(1, 30, 40);
    b.op(3, acquire(), 45, 100, Outcome::Unknown);
    b.op(2, poll(), 50, 55, Outcome::TimedOut);
    b.passes();
}

#[test]
fn events_pass_when_a_reset_may_intervene() {
    let mut b = B::new().pinned("e", ObjectKind::ManualResetEvent);
    b.event(1, set(), 10, 20, Outcome::Ok);
    b.event(2, wait_event(0), 30, 31, Outcome::Signaled);
    // A reset with an unknown outcome may have been applied at any time after 40.
    b.event(1, reset(), 40, 41, Outcome::Unknown);
    b.event(2, wait_event(0), 50, 51, Outcome::TimedOut);
    // A wait that overlaps the set may be decided before it.
    b.event(1, set(), 60, 70, Outcome::Ok);
    b.event(2, wait_event(0), 65, 66, Outcome::TimedOut);
    let r = b.passes();
    assert_eq!(r.event_waits_checked, 1);
}

#[test]
fn auto_reset_events_and_unpinned_events_are_not_checked() {
    let mut b = B::new().pinned("e", ObjectKind::AutoResetEvent);
    b.event(1, set(), 10, 20, Outcome::Ok);
    b.event(2, wait_event(0), 30, 31, Outcome::Signaled);
    b.event(3, wait_event(0), 32, 33, Outcome::TimedOut);
    b.passes();
    let mut b = B::new();
    b.event(1, set(), 10, 20, Outcome::Ok);
    b.event(3, wait_event(0), 32, 33, Outcome::TimedOut);
    b.passes();
}

#[test]
fn a_retried_wait_with_the_same_outcome_or_unknown_passes() {
    let mut h = History::new();
    let a = h.push(c(1), Some(7), acquire(), 10);
    h.complete(a, 20, Outcome::Unknown);
    let b = h.push(c(1), Some(7), acquire(), 21);
    h.complete(b, 30, granted(5));
    h.complete(b, 31, granted(5));
    check(&h).expect("unknown then one outcome, repeated");
}

#[test]
fn opens_after_a_pin_succeed() {
    let mut b = B::new().pinned("m", ObjectKind::Mutex);
    b.op(1, Op::Open { name: "m".into() }, 10, 11, Outcome::Ok);
    let create = Op::Create {
        name: "m".into(),
        kind: ObjectKind::Mutex,
        keep_open: false,
    };
    b.op(
        2,
        create,
        12,
        13,
        Outcome::Created {
            already_existed: true,
        },
    );
    // Another name was never pinned: it may be missing.
    b.op(
        1,
        Op::Open { name: "x".into() },
        20,
        21,
        Outcome::Failed(ERROR_FILE_NOT_FOUND),
    );
    assert_eq!(b.passes().opens_checked, 2);
}

#[test]
fn a_pin_whose_holder_closed_it_or_lost_its_session_is_void() {
    let open_fails = |b: &mut B| {
        b.op(
            1,
            Op::Open { name: "m".into() },
            50,
            51,
            Outcome::Failed(ERROR_FILE_NOT_FOUND),
        );
    };
    let mut b = B::new().pinned("m", ObjectKind::Mutex);
    b.op(0, Op::Close { name: "m".into() }, 10, 11, Outcome::Ok);
    open_fails(&mut b);
    b.passes();
    let mut b = B::new().pinned("m", ObjectKind::Mutex);
    b.lost(0, 10);
    open_fails(&mut b);
    b.passes();
}

// ----- histories that must fail -----

#[test]
fn duplicate_token_for_two_clients_fails() {
    let mut b = B::new();
    b.acq(1, 0, 10, 5);
    b.acq(2, 5, 12, 5);
    assert_eq!(b.kinds(), vec![ViolationKind::DuplicateToken]);
}

#[test]
fn one_client_granted_the_same_token_twice_fails() {
    let mut b = B::new();
    b.acq(1, 0, 10, 5);
    b.rel(1, 11, 12);
    b.acq(1, 13, 14, 5);
    assert!(b.kinds().contains(&ViolationKind::DuplicateToken));
}

#[test]
fn token_going_backwards_in_real_time_fails() {
    let mut b = B::new();
    b.acq(1, 0, 10, 9);
    b.rel(1, 11, 12);
    b.acq(2, 20, 30, 5);
    assert_eq!(b.kinds(), vec![ViolationKind::TokenOrder]);
}

#[test]
fn overlapping_holds_with_acknowledged_release_fail() {
    let mut b = B::new();
    b.acq(1, 0, 10, 5);
    b.acq(2, 5, 20, 9);
    b.rel(1, 30, 31);
    b.rel(2, 40, 41);
    assert_eq!(b.kinds(), vec![ViolationKind::OverlappingHolds]);
}

#[test]
fn overlapping_holds_are_exempt_without_an_acknowledged_release() {
    for outcome in [Outcome::Unknown, Outcome::Failed(288)] {
        let mut b = B::new();
        b.acq(1, 0, 10, 5);
        b.acq(2, 5, 20, 9);
        b.op(1, release(), 30, 31, outcome);
        b.passes();
    }
}

#[test]
fn missing_abandon_after_a_lost_session_fails() {
    let mut b = B::new().pinned("m", ObjectKind::Mutex);
    b.acq(1, 10, 20, 5);
    b.lost(1, 30);
    b.acq(2, 25, 90, 11);
    assert_eq!(b.kinds(), vec![ViolationKind::MissingAbandon]);
}

#[test]
fn spurious_abandon_after_a_clean_release_fails() {
    let mut b = B::new().pinned("m", ObjectKind::Mutex);
    b.acq(1, 10, 20, 5);
    b.rel(1, 30, 40);
    b.acq_abandoned(2, 25, 90, 11);
    assert_eq!(b.kinds(), vec![ViolationKind::SpuriousAbandon]);
}

#[test]
fn a_lost_acknowledged_release_fails() {
    let mut b = B::new().pinned("m", ObjectKind::Mutex);
    b.acq(1, 10, 20, 5);
    b.rel(1, 30, 40);
    b.op(2, poll(), 50, 55, Outcome::TimedOut);
    assert_eq!(b.kinds(), vec![ViolationKind::LostRelease]);
}

#[test]
fn an_unowned_acknowledged_release_fails() {
    let mut b = B::new();
    b.acq(1, 10, 20, 5);
    b.rel(1, 30, 40);
    b.rel(1, 50, 60);
    assert_eq!(b.kinds(), vec![ViolationKind::UnownedRelease]);
}

#[test]
fn a_lost_acknowledged_set_fails() {
    // Whatever the timeout: the event was signaled when the wait was registered.
    for timeout in [0, 500] {
        let mut b = B::new().pinned("e", ObjectKind::ManualResetEvent);
        b.event(1, set(), 10, 20, Outcome::Ok);
        // A reset that failed definitely changed nothing; one before the set doesn't matter.
        b.event(3, reset(), 2, 5, Outcome::Ok);
        b.event(3, reset(), 22, 23, Outcome::Failed(6));
        b.event(2, wait_event(timeout), 30, 31, Outcome::TimedOut);
        assert_eq!(b.kinds(), vec![ViolationKind::LostSet]);
    }
}

#[test]
fn a_lost_acknowledged_create_fails() {
    let mut b = B::new().pinned("m", ObjectKind::Mutex);
    b.op(
        1,
        Op::Open { name: "m".into() },
        10,
        11,
        Outcome::Failed(ERROR_FILE_NOT_FOUND),
    );
    assert_eq!(b.kinds(), vec![ViolationKind::LostCreate]);
    let mut b = B::new().pinned("m", ObjectKind::Mutex);
    let create = Op::Create {
        name: "m".into(),
        kind: ObjectKind::Mutex,
        keep_open: false,
    };
    b.op(
        1,
        create,
        10,
        11,
        Outcome::Created {
            already_existed: false,
        },
    );
    assert_eq!(b.kinds(), vec![ViolationKind::LostCreate]);
}

#[test]
fn a_wait_with_two_outcomes_fails() {
    let mut h = History::new();
    let a = h.push(c(1), Some(7), acquire(), 10);
    h.complete(a, 20, granted(5));
    h.complete(a, 21, Outcome::TimedOut);
    let err = check(&h).unwrap_err();
    assert_eq!(err.len(), 1);
    assert_eq!(err[0].kind, ViolationKind::ConflictingOutcomes);

    // A re-attached wait (same request id) that saw a different result.
    let mut h = History::new();
    let a = h.push(c(1), Some(7), poll(), 10);
    h.complete(a, 20, Outcome::TimedOut);
    let b = h.push(c(1), Some(7), poll(), 21);
    h.complete(b, 30, granted(5));
    let err = check(&h).unwrap_err();
    assert_eq!(err.len(), 1);
    assert_eq!(err[0].kind, ViolationKind::ConflictingOutcomes);
    assert_eq!(err[0].ops, vec![a, b]);
}

#[test]
fn malformed_histories_are_reported() {
    // Two operations of one client in flight at once.
    let mut b = B::new();
    b.acq(1, 10, 30, 5);
    b.rel(1, 20, 40);
    assert!(b.kinds().contains(&ViolationKind::Malformed));
    // An outcome that does not fit its operation.
    let mut b = B::new();
    b.op(1, release(), 10, 20, granted(3));
    assert_eq!(b.kinds(), vec![ViolationKind::Malformed]);
}

#[test]
fn violations_explain_themselves() {
    let mut b = B::new();
    b.acq(1, 0, 10, 5);
    b.acq(2, 5, 12, 5);
    let err = b.check().unwrap_err();
    let text = err[0].to_string();
    assert!(text.contains("DuplicateToken"), "{text}");
    assert!(text.contains("token 5"), "{text}");
    assert!(text.contains("c1") && text.contains("c2"), "{text}");
}

#[test]
fn recorder_records_concurrent_clients() {
    let rec = Recorder::new();
    let threads: Vec<_> = (1..=4u64)
        .map(|n| {
            let rec = rec.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let op = rec.invoke_request(ClientId(n), i, poll());
                    rec.complete(op, Outcome::TimedOut);
                }
                rec.lost_session(ClientId(n));
            })
        })
        .collect();
    for t in threads {
        t.join().expect("recording thread");
    }
    let h = rec.history();
    assert_eq!(h.records.len(), 4 * 51);
    let report = check(&h).expect("well-formed");
    assert_eq!(report.timed_out, 200);
    assert_eq!(report.ops_per_kind["lost_session"], 4);
}

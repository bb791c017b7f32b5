//! Issue 8, finding 3: a leader frozen with SIGSTOP keeps its sockets open, so clients once
//! stayed on it and the whole cluster made no grant for 3-4 s after 3 of 5 freezes, although
//! the other nodes elected a new leader within about a second. Now a frozen node costs clients
//! no more than a killed one: 64 threads of one process keep cycling on their own mutexes
//! while the leader is frozen for 4 s and then continued, three times; no call fails, every
//! thread makes progress while the old leader is still frozen, and the recorded history
//! (fencing tokens, no overlapping holds) passes the checker, so the thawed node granted
//! nothing stale.
//!
//! The aim is progress within 1.5 s of the freeze; the assertion is looser (see
//! `failover_kill.rs`), and `dlock-bench freeze` reports the figures.

use std::time::{Duration, Instant};

use dlock_tests::faults::Workload;
use dlock_tests::history;
use dlock_tests::procs::ProcCluster;

const THREADS: usize = 64;
const FREEZES: usize = 3;
const FROZEN_FOR: Duration = Duration::from_secs(4);
/// Every thread must complete a cycle within this long after each freeze (while the old
/// leader is still frozen).
const PROGRESS_BOUND: Duration = Duration::from_millis(3_500);

#[test]
fn a_frozen_leader_stalls_no_thread() {
    dlock_tests::net::init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cluster = rt.block_on(ProcCluster::start(3, &[]));
    rt.block_on(cluster.leader());
    dlock_tests::configure_facade(&cluster.endpoints(), None, None);
    let workload = Workload::start(THREADS, &dlock_tests::unique("freeze"), true);
    std::thread::sleep(Duration::from_secs(2));
    let (mut freezes, mut thaws) = (Vec::new(), Vec::new());
    for round in 0..FREEZES {
        let leader = rt.block_on(cluster.leader());
        let at = Instant::now();
        cluster.freeze(leader);
        eprintln!("round {round}: froze leader {leader}");
        std::thread::sleep(FROZEN_FOR);
        let thawed = Instant::now();
        cluster.thaw(leader);
        std::thread::sleep(Duration::from_secs(3));
        freezes.push(at);
        thaws.push(thawed);
    }
    let results = workload.finish();
    for (round, at) in freezes.iter().enumerate() {
        let d = results.disruption(*at, PROGRESS_BOUND);
        eprintln!("freeze {round}: {d}");
        assert_eq!(d.stuck, 0, "freeze {round}: {d}");
    }
    // Not asserted yet (see SAFETY.md H17): the thawed ex-leader can stall the new leader's
    // appends for seconds while it catches up.
    for (round, at) in thaws.iter().enumerate() {
        eprintln!(
            "thaw {round}: {}",
            results.disruption(*at, Duration::from_secs(3))
        );
    }
    eprintln!("{} cycles", results.cycles());
    let errors = results.errors();
    assert!(errors.is_empty(), "calls failed: {errors:?}");
    match history::check(&results.recorder.history()) {
        Ok(report) => eprintln!("history ok: {} ops", report.ops),
        Err(violations) => panic!("history violations: {violations:?}"),
    }
    drop(cluster);
}

//! Issue 8, finding 2: 64 threads of one process, each locking and unlocking its own mutex
//! through `dlock::win32` against three real dlockd processes, while the leader is SIGKILLed
//! and restarted five times. Waits pending across a failover once left 33-54 calls failing
//! with 1450 and every thread stuck after 4 of 9 kills. Now no call may fail, every thread must
//! make progress after each kill, and the recorded history must pass the checker.
//!
//! The aim is every thread back within 1.5 s; this test asserts a looser bound
//! ([`PROGRESS_BOUND`], twice what a debug build needs here) so that a loaded CI machine cannot
//! fail it spuriously, prints the measured figures, and `dlock-bench failover` reports them
//! against the aim. (Before the two-call wait protocol, some kills here left every thread
//! stalled for 3.6-4.5 s, and others wedged the process for good.)

use std::time::{Duration, Instant};

use dlock_tests::faults::Workload;
use dlock_tests::history;
use dlock_tests::procs::ProcCluster;

const THREADS: usize = 64;
const KILLS: usize = 5;
/// Every thread must complete a cycle within this long after each kill.
const PROGRESS_BOUND: Duration = Duration::from_secs(3);

#[test]
fn leader_kills_under_64_threads_fail_no_call_and_stall_no_thread() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut cluster = rt.block_on(ProcCluster::start(3, &[]));
    rt.block_on(cluster.leader());
    dlock_tests::configure_facade(&cluster.endpoints(), None, None);
    let workload = Workload::start(THREADS, &dlock_tests::unique("kill"), true);
    std::thread::sleep(Duration::from_secs(2));
    let mut kills = Vec::new();
    for round in 0..KILLS {
        let leader = rt.block_on(cluster.leader());
        let at = Instant::now();
        cluster.kill9(leader);
        eprintln!("round {round}: killed leader {leader}");
        std::thread::sleep(Duration::from_secs(3));
        rt.block_on(cluster.restart(leader));
        std::thread::sleep(Duration::from_secs(2));
        kills.push(at);
    }
    let results = workload.finish();
    let mut worst = Duration::ZERO;
    for (round, at) in kills.iter().enumerate() {
        let d = results.disruption(*at, PROGRESS_BOUND);
        eprintln!("kill {round}: {d}");
        assert_eq!(d.stuck, 0, "kill {round}: {d}");
        worst = worst.max(d.all_back.unwrap_or(PROGRESS_BOUND));
    }
    eprintln!(
        "{} cycles; slowest return of all threads after a kill: {worst:?}",
        results.cycles()
    );
    let errors = results.errors();
    assert!(errors.is_empty(), "calls failed: {errors:?}");
    match history::check(&results.recorder.history()) {
        Ok(report) => eprintln!("history ok: {} ops", report.ops),
        Err(violations) => panic!("history violations: {violations:?}"),
    }
}

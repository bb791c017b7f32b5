//! A small benchmark through `dlock::win32` against the cluster in `DLOCK_ENDPOINTS` (not a
//! test: it asserts nothing about speed, it prints numbers).
//!
//! `dlock-bench pair [N]`: N uncontended `WaitForSingleObject` + `ReleaseMutex` pairs on one
//! mutex from one thread; prints median, p99 and mean latency per pair, and pairs per second.
//! `dlock-bench read [N]`: N `GetFencingToken` calls (a linearizable read: one gRPC round trip
//! and a ReadIndex, no log write); the floor under every mutating call.
//! `dlock-bench gaps SECONDS`: lock+unlock in a loop for SECONDS and report the longest time
//! without a completed pair (kill the leader meanwhile to measure failover).
//! `dlock-bench distinct THREADS SECONDS`: THREADS threads each lock and unlock their own mutex
//! for SECONDS; prints total pairs per second.
//! `dlock-bench failover [ROUNDS]` / `dlock-bench freeze [ROUNDS]`: starts its own three-node
//! cluster (the `dlockd` next to this binary), runs 64 threads each locking and unlocking its
//! own mutex, and ROUNDS times (default 10) kills the leader with SIGKILL and restarts it, or
//! freezes it with SIGSTOP for 4 s and continues it; prints per fault the failed calls, the
//! threads stuck, the longest time without any completed pair and the time until every thread
//! completed a pair again. `DLOCK_ENDPOINTS` is ignored by these two modes.

use std::time::{Duration, Instant};

use dlock::win32::*;

fn pair(n: usize) {
    let h = CreateMutexA(
        None,
        FALSE,
        Some(&format!("bench-pair-{}", std::process::id())),
    );
    assert_ne!(h, 0, "create failed: {}", GetLastError());
    for _ in 0..50 {
        WaitForSingleObject(h, INFINITE);
        ReleaseMutex(h);
    }
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        assert_eq!(WaitForSingleObject(h, INFINITE), WAIT_OBJECT_0);
        assert_eq!(ReleaseMutex(h), TRUE);
        samples.push(t.elapsed());
    }
    let total = start.elapsed();
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "pair: n={n} median={:?} p99={:?} mean={:?} pairs/s={:.0}",
        pct(0.5),
        pct(0.99),
        total / n as u32,
        n as f64 / total.as_secs_f64()
    );
    CloseHandle(h);
}

fn read(n: usize) {
    let h = CreateMutexA(
        None,
        TRUE,
        Some(&format!("bench-read-{}", std::process::id())),
    );
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        assert!(GetFencingToken(h) > 0);
        samples.push(t.elapsed());
    }
    samples.sort();
    println!(
        "read (GetFencingToken, a ReadIndex query): n={n} median={:?} p99={:?}",
        samples[n / 2],
        samples[(n * 99 / 100).min(n - 1)]
    );
    CloseHandle(h);
}

fn gaps(seconds: u64) {
    let h = CreateMutexA(
        None,
        FALSE,
        Some(&format!("bench-gaps-{}", std::process::id())),
    );
    assert_ne!(h, 0, "create failed: {}", GetLastError());
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let (mut last, mut worst, mut worst_at, mut pairs) = (start, Duration::ZERO, 0.0, 0u64);
    while Instant::now() < deadline {
        if WaitForSingleObject(h, 5_000) == WAIT_OBJECT_0 && ReleaseMutex(h) == TRUE {
            let now = Instant::now();
            if now - last > worst {
                worst = now - last;
                worst_at = (last - start).as_secs_f64();
            }
            last = now;
            pairs += 1;
        }
    }
    println!(
        "gaps: pairs={pairs} longest gap without a completed pair={worst:?} starting at t={worst_at:.3}s"
    );
    CloseHandle(h);
}

fn distinct(threads: usize, seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            std::thread::spawn(move || {
                let name = format!("bench-distinct-{}-{i}", std::process::id());
                let h = CreateMutexA(None, FALSE, Some(&name));
                let mut n = 0u64;
                while Instant::now() < deadline {
                    assert_eq!(WaitForSingleObject(h, INFINITE), WAIT_OBJECT_0);
                    assert_eq!(ReleaseMutex(h), TRUE);
                    n += 1;
                }
                CloseHandle(h);
                n
            })
        })
        .collect();
    let total: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "distinct: threads={threads} pairs={total} pairs/s={:.0}",
        total as f64 / secs
    );
}

/// What `failover` / `freeze` inject into the leader.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Freeze,
}

fn faults(fault: Fault, rounds: usize) {
    use dlock_tests::faults::Workload;
    use dlock_tests::procs::ProcCluster;
    const THREADS: usize = 64;
    const WINDOW: Duration = Duration::from_secs(4);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime for the cluster harness");
    let mut cluster = rt.block_on(ProcCluster::start(3, &[]));
    rt.block_on(cluster.leader());
    dlock_tests::configure_facade(&cluster.endpoints(), None, None);
    let workload = Workload::start(
        THREADS,
        &format!("bench-faults-{}", std::process::id()),
        false,
    );
    std::thread::sleep(Duration::from_secs(3));
    let (mut events, mut thaws) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let leader = rt.block_on(cluster.leader());
        let at = Instant::now();
        match fault {
            Fault::Kill => {
                cluster.kill9(leader);
                std::thread::sleep(Duration::from_secs(3));
                rt.block_on(cluster.restart(leader));
                std::thread::sleep(Duration::from_secs(3));
            }
            Fault::Freeze => {
                cluster.freeze(leader);
                std::thread::sleep(Duration::from_secs(4));
                thaws.push(Instant::now());
                cluster.thaw(leader);
                std::thread::sleep(Duration::from_secs(3));
            }
        }
        events.push((leader, at));
    }
    let results = workload.finish();
    let what = if fault == Fault::Kill {
        "kill"
    } else {
        "freeze"
    };
    for (round, (leader, at)) in events.iter().enumerate() {
        println!(
            "{what} {round} (leader {leader}): {}",
            results.disruption(*at, WINDOW)
        );
    }
    for (round, at) in thaws.iter().enumerate() {
        println!(
            "thaw {round}: {}",
            results.disruption(*at, Duration::from_secs(3))
        );
    }
    println!(
        "{what}: threads={THREADS} pairs={} errors={}",
        results.cycles(),
        results.errors().len()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let num =
        |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    match args.get(1).map(String::as_str) {
        Some("pair") | None => pair(num(2, 2000)),
        Some("read") => read(num(2, 2000)),
        Some("gaps") => gaps(num(2, 10) as u64),
        Some("distinct") => distinct(num(2, 64), num(3, 10) as u64),
        Some("failover") => faults(Fault::Kill, num(2, 10)),
        Some("freeze") => faults(Fault::Freeze, num(2, 10)),
        Some(other) => {
            eprintln!(
                "unknown mode {other}; use pair [N], read [N], gaps SECONDS, \
                 distinct THREADS SECONDS, failover [ROUNDS] or freeze [ROUNDS]"
            );
            std::process::exit(2);
        }
    }
}

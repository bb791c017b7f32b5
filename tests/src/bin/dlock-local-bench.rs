//! The benchmark of the host-local backend (not a test: it prints numbers, asserts no speed).
//!
//! `dlock-local-bench [PAIRS] [ROUNDS]` measures, in one run on this machine:
//!
//! 1. **local pair**: PAIRS uncontended `WaitForSingleObject(INFINITE)` + `ReleaseMutex` pairs
//!    through `dlock::win32` on a `Local\` mutex, in 5 batches; the median batch's ns/pair;
//! 2. **pthread pair (the floor)**: the same loop on a glibc robust, process-shared
//!    `pthread_mutex_t` in a shared mapping (`pthread_mutex_lock` + `pthread_mutex_unlock`);
//! 3. **mutex hand-off**: ROUNDS times, this process holds a `Local\` mutex that a second
//!    process is blocked on, and releases it; the latency is from just before `ReleaseMutex`
//!    to the moment the other process's wait returned (`CLOCK_MONOTONIC` on both sides);
//! 4. **event wake**: the same for `SetEvent` on an auto-reset event the other process waits on.
//!
//! The segment lives in a fresh temporary `DLOCK_LOCAL_DIR` unless one is set. Before each
//! hand-off round the bench sleeps 2 ms so the other process is certainly asleep in the kernel
//! (the benchmark measures a wake-up from sleep, not a spin).

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dlock::win32::*;

/// Batches of the uncontended loops; the median batch is reported.
const BATCHES: usize = 5;
/// Time given to the other process to fall asleep before each hand-off.
const SETTLE: Duration = Duration::from_millis(2);

/// `CLOCK_MONOTONIC` in nanoseconds: comparable between the two processes of a hand-off.
fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn local_pair(pairs: usize) -> f64 {
    let h = CreateMutexA(
        None,
        FALSE,
        Some(&format!("Local\\bench-pair-{}", std::process::id())),
    );
    assert_ne!(h, 0, "CreateMutexA: {}", GetLastError());
    for _ in 0..10_000 {
        WaitForSingleObject(h, INFINITE);
        ReleaseMutex(h);
    }
    let mut batches = Vec::new();
    for _ in 0..BATCHES {
        let start = Instant::now();
        for _ in 0..pairs {
            if WaitForSingleObject(h, INFINITE) != WAIT_OBJECT_0 || ReleaseMutex(h) != TRUE {
                panic!("lock/unlock failed: {}", GetLastError());
            }
        }
        batches.push(start.elapsed().as_nanos() as f64 / pairs as f64);
    }
    CloseHandle(h);
    median(batches)
}

/// Latency summary in microseconds.
fn summary(mut ns: Vec<u64>) -> String {
    ns.sort_unstable();
    let pct = |p: f64| ns[((ns.len() as f64 * p) as usize).min(ns.len() - 1)] as f64 / 1000.0;
    format!(
        "median {:.1} us, p90 {:.1} us, p99 {:.1} us (n={})",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        ns.len()
    )
}

/// The other process: for each round, waits for `go`, then blocks on `what` and prints the
/// time its wait returned.
fn child(kind: &str, name: &str, go: &str, rounds: usize) {
    let go = OpenEventA(EVENT_ALL_ACCESS, FALSE, Some(go));
    let h = match kind {
        "mutex" => OpenMutexA(SYNCHRONIZE, FALSE, Some(name)),
        _ => OpenEventA(SYNCHRONIZE, FALSE, Some(name)),
    };
    assert!(go != 0 && h != 0, "open: {}", GetLastError());
    let mut out = std::io::stdout().lock();
    for _ in 0..rounds {
        assert_eq!(WaitForSingleObject(go, INFINITE), WAIT_OBJECT_0);
        let r = WaitForSingleObject(h, INFINITE);
        let t = monotonic_ns();
        assert_eq!(r, WAIT_OBJECT_0);
        if kind == "mutex" {
            ReleaseMutex(h);
        }
        writeln!(out, "{t}").unwrap();
        out.flush().unwrap();
    }
}

/// One process holds (or resets) the object, the other blocks on it; this one releases (or
/// sets) it and the other reports when its wait returned.
fn hand_off(kind: &str, rounds: usize) -> Vec<u64> {
    let pid = std::process::id();
    let name = format!("Local\\bench-{kind}-{pid}");
    let go_name = format!("Local\\bench-go-{kind}-{pid}");
    let h = match kind {
        "mutex" => CreateMutexA(None, FALSE, Some(&name)),
        _ => CreateEventA(None, FALSE, FALSE, Some(&name)),
    };
    let go = CreateEventA(None, FALSE, FALSE, Some(&go_name));
    assert!(h != 0 && go != 0, "create: {}", GetLastError());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child", kind, &name, &go_name, &rounds.to_string()])
        .env("DLOCK_LOCAL_DIR", dlock_local::settings().dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the other process");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut latencies = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        if kind == "mutex" {
            assert_eq!(WaitForSingleObject(h, INFINITE), WAIT_OBJECT_0);
        }
        SetEvent(go);
        std::thread::sleep(SETTLE);
        let t0 = monotonic_ns();
        let ok = if kind == "mutex" {
            ReleaseMutex(h)
        } else {
            SetEvent(h)
        };
        assert_eq!(ok, TRUE);
        let line = lines.next().expect("child line").expect("read");
        let t1: u64 = line.trim().parse().expect("a timestamp");
        latencies.push(t1.saturating_sub(t0));
    }
    assert!(child.wait().unwrap().success());
    CloseHandle(h);
    CloseHandle(go);
    latencies
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        child(&args[2], &args[3], &args[4], args[5].parse().unwrap());
        return;
    }
    // A private namespace unless DLOCK_LOCAL_DIR names one; the child gets the same one.
    let _dir = if std::env::var_os("DLOCK_LOCAL_DIR").is_none() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut settings = dlock_local::Settings::from_env();
        settings.dir = dir.path().to_path_buf();
        dlock_local::configure(settings).expect("configured before first use");
        Some(dir)
    } else {
        None
    };
    let num = |i: usize, default: usize| {
        args.get(i)
            .map(|s| s.parse().expect("a number"))
            .unwrap_or(default)
    };
    let pairs = num(1, 2_000_000);
    let rounds = num(2, 300);
    let local = local_pair(pairs);
    let floor = dlock_local::baseline::robust_pthread_pair_ns(pairs, BATCHES);
    println!("uncontended pair, Local\\ mutex via dlock::win32: {local:.1} ns");
    println!("uncontended pair, glibc robust pshared pthread mutex: {floor:.1} ns");
    println!("ratio: {:.2}x the pthread floor", local / floor);
    println!(
        "cross-process mutex hand-off (ReleaseMutex -> waiter's return): {}",
        summary(hand_off("mutex", rounds))
    );
    println!(
        "cross-process event wake (SetEvent -> waiter's return): {}",
        summary(hand_off("event", rounds))
    );
}

//! A busy process under faults: many threads of one process, each locking and unlocking its own
//! mutex through `dlock::win32`, with every operation recorded for the history checker and
//! every completed cycle timestamped, so that a test (or `dlock-bench`) can measure what one
//! fault (a leader killed or frozen) cost: errors, threads stuck, the longest time without any
//! completed cycle, and the time until every thread made progress again.
//!
//! The facade is process-global: point `DLOCK_ENDPOINTS` at the cluster before
//! [`Workload::start`], and run one workload per process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dlock::win32::*;

use crate::history::{ClientId, Op, Outcome, Recorder};

/// Bound on one facade call of a workload thread. The mutexes are uncontended, so a call that
/// takes longer is a failure (the facade itself gives up at this plus its request timeout).
const CALL_TIMEOUT_MS: u32 = 10_000;

/// What one workload thread saw.
#[derive(Debug, Default)]
pub struct ThreadLog {
    /// When each lock+unlock cycle completed.
    pub completions: Vec<Instant>,
    /// Calls that failed, with when and why.
    pub errors: Vec<(Instant, String)>,
}

/// Threads cycling on their own mutexes until [`Workload::finish`].
pub struct Workload {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<ThreadLog>>,
    recorder: Arc<Recorder>,
}

/// What a finished workload saw.
pub struct Results {
    /// One log per thread.
    pub logs: Vec<ThreadLog>,
    /// Every operation, for [`crate::history::check`].
    pub recorder: Arc<Recorder>,
}

/// What one fault cost the workload, measured from the moment it was injected.
#[derive(Debug, Clone, Copy)]
pub struct Disruption {
    /// Failed calls in the window.
    pub errors: usize,
    /// Threads that completed no cycle within the window after the fault.
    pub stuck: usize,
    /// The longest time around the fault in which no thread completed a cycle.
    pub longest_gap: Duration,
    /// From the fault until every thread had completed a cycle again (`None` if some never
    /// did within the window).
    pub all_back: Option<Duration>,
}

impl std::fmt::Display for Disruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "errors={} stuck={} longest_gap={:.3}s all_back={}",
            self.errors,
            self.stuck,
            self.longest_gap.as_secs_f64(),
            self.all_back
                .map_or("never".to_string(), |d| format!("{:.3}s", d.as_secs_f64()))
        )
    }
}

impl Workload {
    /// Starts `threads` threads, thread `i` on mutex `<prefix>-<i>`. With `record`, every
    /// acquire also reads its fencing token (`GetFencingToken`, one more round trip) and is
    /// recorded for the history checker.
    pub fn start(threads: usize, prefix: &str, record: bool) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let recorder = Arc::new(Recorder::new());
        let threads = (0..threads)
            .map(|i| {
                let (stop, recorder) = (stop.clone(), recorder.clone());
                let name = format!("{prefix}-{i}");
                std::thread::Builder::new()
                    .name(format!("workload-{i}"))
                    .spawn(move || {
                        let rec = record.then_some(&*recorder);
                        run_thread(i as u64, &name, &stop, rec)
                    })
                    .expect("spawn a workload thread")
            })
            .collect();
        Workload {
            stop,
            threads,
            recorder,
        }
    }

    /// Stops every thread after its current cycle and collects what they saw.
    pub fn finish(self) -> Results {
        self.stop.store(true, Ordering::SeqCst);
        let logs = self
            .threads
            .into_iter()
            .map(|t| t.join().expect("a workload thread panicked"))
            .collect();
        Results {
            logs,
            recorder: self.recorder,
        }
    }
}

fn run_thread(i: u64, name: &str, stop: &AtomicBool, rec: Option<&Recorder>) -> ThreadLog {
    let mut log = ThreadLog::default();
    let client = ClientId(i + 1);
    let fail = |log: &mut ThreadLog, what: &str| {
        log.errors
            .push((Instant::now(), format!("{what}: error {}", GetLastError())));
    };
    let h = loop {
        let h = CreateMutexA(None, FALSE, Some(name));
        if h != 0 {
            break h;
        }
        fail(&mut log, "CreateMutexA");
        if stop.load(Ordering::SeqCst) {
            return log;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    while !stop.load(Ordering::SeqCst) {
        let op = rec.map(|r| {
            r.invoke(
                client,
                Op::Acquire {
                    mutex: name.to_owned(),
                    timeout_ms: CALL_TIMEOUT_MS,
                },
            )
        });
        let result = WaitForSingleObject(h, CALL_TIMEOUT_MS);
        if result != WAIT_OBJECT_0 {
            fail(
                &mut log,
                &format!("WaitForSingleObject returned {result:#x}"),
            );
            if let (Some(r), Some(op)) = (rec, op) {
                r.complete(op, Outcome::Unknown);
            }
            continue;
        }
        if let (Some(r), Some(op)) = (rec, op) {
            let token = GetFencingToken(h);
            if token == 0 {
                fail(&mut log, "GetFencingToken");
                r.complete(op, Outcome::Unknown);
            } else {
                r.complete(
                    op,
                    Outcome::Acquired {
                        token,
                        abandoned: false,
                    },
                );
            }
        }
        let op = rec.map(|r| {
            r.invoke(
                client,
                Op::Release {
                    mutex: name.to_owned(),
                },
            )
        });
        let released = ReleaseMutex(h) == TRUE;
        if !released {
            fail(&mut log, "ReleaseMutex");
        }
        if let (Some(r), Some(op)) = (rec, op) {
            r.complete(
                op,
                if released {
                    Outcome::Ok
                } else {
                    Outcome::Unknown
                },
            );
        }
        if released {
            log.completions.push(Instant::now());
        }
    }
    CloseHandle(h);
    log
}

impl Results {
    /// What the fault injected at `at` cost, looking at `window` after it.
    pub fn disruption(&self, at: Instant, window: Duration) -> Disruption {
        let end = at + window;
        let errors = self
            .logs
            .iter()
            .flat_map(|l| &l.errors)
            .filter(|(t, _)| *t >= at && *t < end)
            .count();
        let firsts: Vec<Option<Instant>> = self
            .logs
            .iter()
            .map(|l| l.completions.iter().copied().find(|t| *t >= at && *t < end))
            .collect();
        let stuck = firsts.iter().filter(|f| f.is_none()).count();
        let all_back = if stuck == 0 {
            firsts.iter().flatten().max().map(|t| *t - at)
        } else {
            None
        };
        // The longest stretch without any completed cycle, from the last one before the fault
        // through those in the window.
        let mut all: Vec<Instant> = self
            .logs
            .iter()
            .flat_map(|l| l.completions.iter().copied())
            .filter(|t| *t < end)
            .collect();
        all.sort();
        let mut previous = all.iter().copied().rfind(|t| *t < at).unwrap_or(at);
        let mut longest_gap = Duration::ZERO;
        for t in all.into_iter().filter(|t| *t >= at) {
            longest_gap = longest_gap.max(t - previous);
            previous = t;
        }
        Disruption {
            errors,
            stuck,
            longest_gap,
            all_back,
        }
    }

    /// Every error of every thread, oldest first.
    pub fn errors(&self) -> Vec<(Instant, String)> {
        let mut all: Vec<_> = self.logs.iter().flat_map(|l| l.errors.clone()).collect();
        all.sort_by_key(|(t, _)| *t);
        all
    }

    /// Completed cycles of all threads.
    pub fn cycles(&self) -> usize {
        self.logs.iter().map(|l| l.completions.len()).sum()
    }
}

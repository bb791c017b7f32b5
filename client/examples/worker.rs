//! A template for a pool of workers on dlock, using only `dlock::win32` as a Win32 program
//! would (plus `signal-hook` for SIGINT/SIGTERM). Many replicas run; each unit of work that the
//! active `scheduler` example announces wakes one of them, and a named semaphore bounds how many
//! jobs run at once across the whole pool.
//!
//! ```text
//! DLOCK_ENDPOINTS=127.0.0.1:7711,127.0.0.1:7712,127.0.0.1:7713 \
//!     cargo run -p dlock-client --example worker -- [--name NAME] [--slots N] [--work-ms MS]
//! ```
//!
//! Each replica creates or opens the scheduler's auto-reset event `jobs.ready` and semaphore
//! `jobs.slots` (same parameters: initial = maximum = `--slots`, default 3), then loops: wait for
//! `jobs.ready`, take a slot, "do the job" (sleep `--work-ms`, default 200), give the slot back
//! with `ReleaseSemaphore`. Waits block for 1 s at most, so that SIGINT or SIGTERM is noticed
//! within about a second: it gives back a slot it holds, closes the handles and exits 0 (a second
//! signal exits at once with 1). Failures, naming (`--name`, `$HOSTNAME`, `pid<N>`) and log lines
//! (`[worker NAME] ...`) are as in the `scheduler` example.

use std::io::Write;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dlock::win32::{
    CloseHandle, CreateEventA, CreateSemaphoreA, DWORD, ERROR_ALREADY_EXISTS, ERROR_INVALID_HANDLE,
    ERROR_TOO_MANY_POSTS, FALSE, GetLastError, HANDLE, LONG, NULL, ReleaseSemaphore, WAIT_OBJECT_0,
    WAIT_TIMEOUT, WaitForSingleObject,
};
use signal_hook::consts::{SIGINT, SIGTERM};

const EVENT: &str = "jobs.ready";
const SLOTS: &str = "jobs.slots";
/// The longest one wait blocks, so that a stop signal is noticed within about a second.
const WAIT_STEP_MS: DWORD = 1000;

/// Set by SIGINT or SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);
/// `worker NAME`, the start of every line.
static ME: OnceLock<String> = OnceLock::new();

/// Prints `[worker NAME] ...` and flushes.
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "[{}] {}", ME.get().unwrap(), format_args!($($arg)*));
        let _ = out.flush();
    }};
}

fn main() -> ExitCode {
    let (mut name, mut slots, mut work_ms): (String, LONG, u64) = (String::new(), 3, 200);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_default();
        let ok = match arg.as_str() {
            "--name" => {
                name = value;
                !name.is_empty()
            }
            "--slots" => value.parse().map(|n| slots = n).is_ok() && slots > 0,
            "--work-ms" => value.parse().map(|n| work_ms = n).is_ok(),
            _ => false,
        };
        if !ok {
            eprintln!("usage: worker [--name NAME] [--slots N] [--work-ms MS]");
            return ExitCode::from(2);
        }
    }
    if name.is_empty() {
        let pid = || format!("pid{}", std::process::id());
        name = std::env::var("HOSTNAME").unwrap_or_else(|_| pid());
    }
    ME.get_or_init(|| format!("worker {name}"));
    if let Err(err) = stop_on_signals() {
        say!("cannot catch SIGINT/SIGTERM: {err}");
        return ExitCode::FAILURE;
    }

    let mut jobs: u64 = 0;
    while !stopped() {
        let ready = CreateEventA(None, FALSE, FALSE, Some(EVENT));
        let ready = created(ready, "event", EVENT);
        let slot_sem = CreateSemaphoreA(None, slots, slots, Some(SLOTS));
        let slot_sem = created(slot_sem, "semaphore", SLOTS);
        match (ready, slot_sem) {
            (Some(ready), Some(slot_sem)) => run(ready, slot_sem, slots, work_ms, &mut jobs),
            _ => pause(Duration::from_secs(1)),
        }
        for handle in [ready, slot_sem].into_iter().flatten() {
            CloseHandle(handle);
        }
    }
    say!("closed its handles; exiting");
    ExitCode::SUCCESS
}

/// Does one job per signal of `ready`, under a slot of `slot_sem`, until stopped; returns early
/// if the session was lost (`ERROR_INVALID_HANDLE`), to open the objects again.
fn run(ready: HANDLE, slot_sem: HANDLE, slots: LONG, work_ms: u64, jobs: &mut u64) {
    say!("waits for event \"{EVENT}\"");
    while !stopped() {
        match acquire(ready) {
            Some(true) => *jobs += 1,
            Some(false) => continue,
            None => return,
        }
        let job = *jobs;
        say!("job {job} from scheduler: woken by event \"{EVENT}\", waits for a slot");
        match acquire(slot_sem) {
            Some(true) => say!("job {job}: holds a slot of semaphore \"{SLOTS}\" (max {slots})"),
            Some(false) => return say!("job {job} dropped: stopping before a slot was free"),
            None => return,
        }
        pause(Duration::from_millis(work_ms));
        if stopped() {
            say!("job {job} cut short by a stop signal");
        } else {
            say!("job {job} done: worked {work_ms} ms ({job} done so far)");
        }
        let mut previous: LONG = 0;
        loop {
            if ReleaseSemaphore(slot_sem, 1, Some(&mut previous)) != FALSE {
                say!("job {job}: released its slot (previous count {previous} of {slots})");
                break;
            }
            match failed("ReleaseSemaphore") {
                // An earlier try whose outcome was unknown (1231) had given the slot back.
                ERROR_TOO_MANY_POSTS => break,
                ERROR_INVALID_HANDLE => return say!("lost its session: the slot stays taken"),
                _ if stopped() => return say!("stopping: gave up giving the slot back"),
                _ => pause(Duration::from_secs(1)),
            }
        }
    }
}

/// Waits in 1 s steps until `handle` is acquired (`Some(true)`) or a stop signal arrives
/// (`Some(false)`). `None`: the session was lost.
fn acquire(handle: HANDLE) -> Option<bool> {
    while !stopped() {
        match WaitForSingleObject(handle, WAIT_STEP_MS) {
            WAIT_OBJECT_0 => return Some(true),
            WAIT_TIMEOUT => {}
            _ if failed("WaitForSingleObject") == ERROR_INVALID_HANDLE => return None,
            _ => pause(Duration::from_secs(1)),
        }
    }
    Some(false)
}

/// Logs the outcome of a create call; `None` (after logging the error) if it failed.
fn created(handle: HANDLE, kind: &str, name: &str) -> Option<HANDLE> {
    // Read the last error first: creates always set it (0 new, 183 existing, or the failure).
    let existed = GetLastError() == ERROR_ALREADY_EXISTS;
    if handle == NULL {
        failed(&format!("creating {kind} \"{name}\""));
        return None;
    }
    let how = if existed {
        "opened existing"
    } else {
        "created"
    };
    say!("{how} {kind} \"{name}\"");
    Some(handle)
}

/// Logs a failed call with the thread's last error, and returns that error.
fn failed(call: &str) -> DWORD {
    let code = GetLastError();
    say!("{call} failed: GetLastError {code}");
    code
}

fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Sets [`STOP`] on SIGINT or SIGTERM; a second signal exits at once with status 1.
fn stop_on_signals() -> std::io::Result<()> {
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 1, &STOP)?;
        signal_hook::flag::register(signal, &STOP)?;
    }
    Ok(())
}

/// Sleeps for `time` (to 50 ms), or less if a stop signal arrives.
fn pause(time: Duration) {
    let end = Instant::now() + time;
    while !stopped() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
}

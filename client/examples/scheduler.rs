//! A template for a singleton service on dlock, using only `dlock::win32` as a Win32 program
//! would (plus `signal-hook` for SIGINT/SIGTERM). Many replicas run; exactly one is active.
//!
//! ```text
//! DLOCK_ENDPOINTS=127.0.0.1:7711,127.0.0.1:7712,127.0.0.1:7713 \
//!     cargo run -p dlock-client --example scheduler -- [--name NAME] [--slots N] [--interval-ms MS]
//! ```
//!
//! Each replica creates or opens the mutex `jobs.scheduler` (not initially owned; its owner is
//! the active scheduler), and the auto-reset event `jobs.ready` and semaphore `jobs.slots`
//! (initial = maximum = `--slots`, default 3) that it shares with the `worker` example. The
//! standbys wait for the mutex in 1 s steps; `WAIT_ABANDONED` means the active one died without
//! releasing it (its session expired after `DLOCK_SESSION_TTL_MS`). The active one sets
//! `jobs.ready` every `--interval-ms` (default 500): one unit of work, which wakes one worker.
//!
//! SIGINT or SIGTERM: release the mutex (a standby takes over at once), close the handles, exit
//! 0; a second signal exits at once with 1 (while no node answers, one call can take up to
//! `DLOCK_REQUEST_TIMEOUT_MS` to fail). A failed call is logged with its `GetLastError` code
//! and retried a second later (a failover can fail calls briefly); after `ERROR_INVALID_HANDLE`
//! (the session was lost) the objects are opened again. The replica's name is `--name`, else
//! `$HOSTNAME` (a container's hostname), else `pid<N>`; every line starts `[scheduler NAME]`.

use std::io::Write;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dlock::win32::{
    CloseHandle, CreateEventA, CreateMutexA, CreateSemaphoreA, DWORD, ERROR_ALREADY_EXISTS,
    ERROR_INVALID_HANDLE, FALSE, GetLastError, HANDLE, LONG, NULL, ReleaseMutex, SetEvent,
    WAIT_ABANDONED, WAIT_OBJECT_0, WAIT_TIMEOUT, WaitForSingleObject,
};
use signal_hook::consts::{SIGINT, SIGTERM};

const MUTEX: &str = "jobs.scheduler";
const EVENT: &str = "jobs.ready";
const SLOTS: &str = "jobs.slots";
/// The longest one wait blocks, so that a stop signal is noticed within about a second.
const WAIT_STEP_MS: DWORD = 1000;

/// Set by SIGINT or SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);
/// `scheduler NAME`, the start of every line.
static ME: OnceLock<String> = OnceLock::new();

/// Prints `[scheduler NAME] ...` and flushes.
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "[{}] {}", ME.get().unwrap(), format_args!($($arg)*));
        let _ = out.flush();
    }};
}

fn main() -> ExitCode {
    let (mut name, mut slots, mut interval_ms): (String, LONG, u64) = (String::new(), 3, 500);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_default();
        let ok = match arg.as_str() {
            "--name" => {
                name = value;
                !name.is_empty()
            }
            "--slots" => value.parse().map(|n| slots = n).is_ok() && slots > 0,
            "--interval-ms" => value.parse().map(|n| interval_ms = n).is_ok(),
            _ => false,
        };
        if !ok {
            eprintln!("usage: scheduler [--name NAME] [--slots N] [--interval-ms MS]");
            return ExitCode::from(2);
        }
    }
    if name.is_empty() {
        let pid = || format!("pid{}", std::process::id());
        name = std::env::var("HOSTNAME").unwrap_or_else(|_| pid());
    }
    ME.get_or_init(|| format!("scheduler {name}"));
    if let Err(err) = stop_on_signals() {
        say!("cannot catch SIGINT/SIGTERM: {err}");
        return ExitCode::FAILURE;
    }

    while !stopped() {
        let mutex = CreateMutexA(None, FALSE, Some(MUTEX));
        let mutex = created(mutex, "mutex", MUTEX);
        let ready = CreateEventA(None, FALSE, FALSE, Some(EVENT));
        let ready = created(ready, "event", EVENT);
        let slot_sem = CreateSemaphoreA(None, slots, slots, Some(SLOTS));
        let slot_sem = created(slot_sem, "semaphore", SLOTS);
        match (mutex, ready, slot_sem) {
            (Some(mutex), Some(ready), Some(_)) => run(mutex, ready, interval_ms),
            _ => pause(Duration::from_secs(1)),
        }
        for handle in [mutex, ready, slot_sem].into_iter().flatten() {
            CloseHandle(handle);
        }
    }
    say!("closed its handles; exiting");
    ExitCode::SUCCESS
}

/// Waits for the mutex, then announces work until stopped; returns early if the session was
/// lost (`ERROR_INVALID_HANDLE`), to open the objects again.
fn run(mutex: HANDLE, ready: HANDLE, interval_ms: u64) {
    say!("waits for mutex \"{MUTEX}\" (standby)");
    loop {
        if stopped() {
            return say!("stopping while standby");
        }
        match WaitForSingleObject(mutex, WAIT_STEP_MS) {
            WAIT_OBJECT_0 => break say!("holds mutex \"{MUTEX}\" (active)"),
            WAIT_ABANDONED => {
                break say!(
                    "holds mutex \"{MUTEX}\" (active): took over from a scheduler that died"
                );
            }
            WAIT_TIMEOUT => {}
            _ if failed("WaitForSingleObject") == ERROR_INVALID_HANDLE => return,
            _ => pause(Duration::from_secs(1)),
        }
    }

    let mut announced: u64 = 0;
    while !stopped() {
        if SetEvent(ready) == FALSE {
            if failed("SetEvent") == ERROR_INVALID_HANDLE {
                return say!("lost its session, and with it the mutex: no longer active");
            }
            pause(Duration::from_secs(1));
            continue;
        }
        announced += 1;
        say!("set event \"{EVENT}\": job {announced} announced ({announced} so far)");
        pause(Duration::from_millis(interval_ms));
    }
    if ReleaseMutex(mutex) == FALSE {
        failed("ReleaseMutex");
    } else {
        say!("released mutex \"{MUTEX}\" (no longer active)");
    }
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

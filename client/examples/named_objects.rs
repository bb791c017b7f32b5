//! The Win32 "Using Named Objects" sample, on dlock, using only `dlock::win32`.
//!
//! ```text
//! cargo run -p dlock-client --example named_objects [NAME]
//! ```
//!
//! * The first run creates the mutex (default name `NameOfMutexObject`, or the first argument),
//!   prints `CreateMutex created new mutex`, and keeps its handle open **until it is stopped by
//!   SIGINT (Ctrl-C) or SIGTERM**; then it closes the handle and exits 0. Its standard input
//!   plays no part, so it keeps the mutex alive under `&`, `nohup` or in a container too. (If
//!   it is killed with SIGKILL instead, its session expires after the TTL and the name goes
//!   with it.)
//! * A run while another one holds the mutex prints `CreateMutex opened existing mutex`, opens
//!   the mutex again with `OpenMutexA` (printing `OpenMutex succeeded`, or
//!   `OpenMutex error: N`), closes its handles and exits.
//!
//! A failure prints `CreateMutex error: N` (N from `GetLastError`) and exits 1. The cluster is
//! found through `DLOCK_ENDPOINTS` (default `127.0.0.1:7700`); see the `dlock::win32` docs.

use std::io::Write;
use std::process::ExitCode;

use dlock::win32::{
    CloseHandle, CreateMutexA, ERROR_ALREADY_EXISTS, FALSE, GetLastError, MUTEX_ALL_ACCESS, NULL,
    OpenMutexA,
};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Prints one line and flushes, so a test reading the pipe sees it at once.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() -> ExitCode {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "NameOfMutexObject".to_owned());

    let h_mutex = CreateMutexA(None, FALSE, Some(&name));
    if h_mutex == NULL {
        say(&format!("CreateMutex error: {}", GetLastError()));
        return ExitCode::FAILURE;
    }
    if GetLastError() != ERROR_ALREADY_EXISTS {
        // Catch the stop signals before saying so: a signal sent as soon as the line is read
        // must find the handler in place.
        let mut signals = match Signals::new([SIGINT, SIGTERM]) {
            Ok(signals) => signals,
            Err(err) => {
                say(&format!("cannot catch SIGINT/SIGTERM: {err}"));
                CloseHandle(h_mutex);
                return ExitCode::FAILURE;
            }
        };
        say("CreateMutex created new mutex");
        // Hold the handle (and so the mutex's name) until SIGINT or SIGTERM.
        let _ = signals.forever().next();
        CloseHandle(h_mutex);
        return ExitCode::SUCCESS;
    }

    say("CreateMutex opened existing mutex");
    let h_opened = OpenMutexA(MUTEX_ALL_ACCESS, FALSE, Some(&name));
    let code = if h_opened == NULL {
        say(&format!("OpenMutex error: {}", GetLastError()));
        ExitCode::FAILURE
    } else {
        say("OpenMutex succeeded");
        CloseHandle(h_opened);
        ExitCode::SUCCESS
    };
    CloseHandle(h_mutex);
    code
}

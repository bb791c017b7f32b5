//! The Win32 "Using Named Objects" sample, on dlock, using only `dlock::win32`.
//!
//! ```text
//! cargo run -p dlock-client --example named_objects [NAME]
//! ```
//!
//! * The first run creates the mutex (default name `NameOfMutexObject`, or the first argument),
//!   prints `CreateMutex created new mutex`, and keeps its handle open **until its standard
//!   input reaches EOF** (or it is killed); then it closes the handle and exits 0.
//! * A run while another one holds the mutex prints `CreateMutex opened existing mutex`, opens
//!   the mutex again with `OpenMutexA` (printing `OpenMutex succeeded`, or
//!   `OpenMutex error: N`), closes its handles and exits.
//!
//! A failure prints `CreateMutex error: N` (N from `GetLastError`) and exits 1. The cluster is
//! found through `DLOCK_ENDPOINTS` (default `127.0.0.1:7700`); see the `dlock::win32` docs.

use std::io::{Read, Write};
use std::process::ExitCode;

use dlock::win32::{
    CloseHandle, CreateMutexA, ERROR_ALREADY_EXISTS, FALSE, GetLastError, MUTEX_ALL_ACCESS, NULL,
    OpenMutexA,
};

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
        say("CreateMutex created new mutex");
        // Hold the handle (and so the mutex's name) until stdin is closed.
        let mut sink = Vec::new();
        let _ = std::io::stdin().lock().read_to_end(&mut sink);
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

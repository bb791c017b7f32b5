//! A child process for multi-process tests. It talks to the cluster in `DLOCK_ENDPOINTS`
//! through `dlock::win32` only, prints what happened on stdout (one line per step, flushed), and
//! then keeps its handles open until stdin reaches EOF (or it is killed).
//!
//! Commands:
//! * `hold-mutex NAME`: create or open the mutex, wait for it, print `owned TOKEN`.
//! * `hold-mutex-in-thread NAME`: as above but acquired by a second thread that then exits
//!   (abandoning the mutex) while the process lives on; prints `thread exited`.

use std::io::{Read, Write};

use dlock::win32::*;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("stdout");
    out.flush().expect("stdout");
}

fn hold(name: &str) -> HANDLE {
    let h = CreateMutexA(None, FALSE, Some(name));
    if h == 0 {
        say(&format!("CreateMutex error: {}", GetLastError()));
        std::process::exit(1);
    }
    let r = WaitForSingleObject(h, INFINITE);
    if r != WAIT_OBJECT_0 && r != WAIT_ABANDONED {
        say(&format!("wait failed: {r:#x} error {}", GetLastError()));
        std::process::exit(1);
    }
    say(&format!("owned {}", GetFencingToken(h)));
    h
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("hold-mutex") => {
            let _h = hold(&args[2]);
        }
        Some("hold-mutex-in-thread") => {
            let name = args[2].clone();
            std::thread::spawn(move || {
                let _h = hold(&name);
            })
            .join()
            .expect("holder thread");
            say("thread exited");
        }
        other => {
            eprintln!("unknown command {other:?}");
            std::process::exit(2);
        }
    }
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

//! Abandonment across processes, against both backends: a child process takes a mutex and dies
//! (SIGKILL) or a child's thread exits while owning it; the parent's wait returns
//! `WAIT_ABANDONED`.
//!
//! Bound: on the cluster a killed process's session expires at most its TTL after its last
//! keepalive, and the leader's expiry commits within one Raft round trip, so the waiter is
//! served within the TTL plus [`EXPIRY_MARGIN_MS`] (generous, for a loaded 2-core CI machine).
//! Locally the kernel reports the death at once; the same bound applies. This is a correctness
//! deadline for the wait, not a performance assertion.

use std::process::{Command, Stdio};
use std::time::Duration;

use dlock::win32::*;
use dlock_tests::{Lines, die_with_parent, local_namespace, shared_dlockd, unique};

const CHILD_TTL_MS: u32 = 2_500;
/// Documented margin on top of the session TTL within which an abandoned mutex is handed on.
const EXPIRY_MARGIN_MS: u32 = 5_000;

/// Which namespace a test's objects live in.
#[derive(Clone, Copy)]
enum Backend {
    Cluster,
    Local,
}

impl Backend {
    /// Prepares the backend and returns a unique object name in it.
    fn name(self, prefix: &str) -> String {
        shared_dlockd();
        local_namespace();
        match self {
            Backend::Cluster => unique(prefix),
            Backend::Local => format!("Local\\{}", unique(prefix)),
        }
    }
}

fn child(args: &[&str]) -> (std::process::Child, Lines) {
    let server = shared_dlockd();
    let mut command = Command::new(env!("CARGO_BIN_EXE_dlock-child"));
    command
        .args(args)
        .env("DLOCK_LOCAL_DIR", dlock_tests::local_namespace())
        .env("DLOCK_ENDPOINTS", server.endpoint())
        .env("DLOCK_SESSION_TTL_MS", CHILD_TTL_MS.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    die_with_parent(&mut command);
    let mut child = command.spawn().expect("spawn dlock-child");
    let lines = Lines::new(&mut child);
    (child, lines)
}

#[test]
fn a_killed_owner_process_abandons_its_cluster_mutex() {
    killed_owner(Backend::Cluster);
}

#[test]
fn a_killed_owner_process_abandons_its_local_mutex() {
    killed_owner(Backend::Local);
}

#[test]
fn a_thread_that_exits_owning_a_cluster_mutex_abandons_it_while_its_process_lives() {
    thread_exit(Backend::Cluster);
}

#[test]
fn a_thread_that_exits_owning_a_local_mutex_abandons_it_while_its_process_lives() {
    thread_exit(Backend::Local);
}

fn killed_owner(backend: Backend) {
    let name = backend.name("abandon");
    let (mut child, lines) = child(&["hold-mutex", &name]);
    let line = lines
        .next(Duration::from_secs(30))
        .expect("child reports ownership");
    assert!(line.starts_with("owned "), "{line}");
    let child_token: u64 = line["owned ".len()..].parse().unwrap();

    let h = OpenMutexA(SYNCHRONIZE, FALSE, Some(&name));
    assert_ne!(h, 0, "open: {}", GetLastError());
    assert_eq!(WaitForSingleObject(h, 0), WAIT_TIMEOUT, "the child owns it");

    child.kill().expect("SIGKILL the child");
    child.wait().unwrap();
    assert_eq!(
        WaitForSingleObject(h, CHILD_TTL_MS + EXPIRY_MARGIN_MS),
        WAIT_ABANDONED
    );
    assert!(
        GetFencingToken(h) > child_token,
        "the new grant has a larger token"
    );
    assert_eq!(ReleaseMutex(h), TRUE);
    CloseHandle(h);
}

fn thread_exit(backend: Backend) {
    let name = backend.name("thread-abandon");
    let (mut child, lines) = child(&["hold-mutex-in-thread", &name]);
    lines.expect("thread exited", Duration::from_secs(30));
    let h = OpenMutexA(SYNCHRONIZE, FALSE, Some(&name));
    assert_ne!(h, 0);
    // The process is alive and keeps its session: only the thread exit explains this.
    assert_eq!(WaitForSingleObject(h, 5_000), WAIT_ABANDONED);
    assert_eq!(ReleaseMutex(h), TRUE);
    CloseHandle(h);
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

//! `dlockctl local`: the operator's view of this host's `Local\` namespace, without a cluster.

use std::process::Command;

use dlock::win32::*;
use dlock_tests::{local_namespace, target_binary, unique};

#[test]
fn dlockctl_local_lists_processes_objects_and_owners() {
    let dir = local_namespace();
    let name = unique("shown");
    let m = CreateMutexA(None, TRUE, Some(&format!("Local\\{name}")));
    assert_ne!(m, 0, "error {}", GetLastError());
    let ev = CreateEventA(None, TRUE, TRUE, Some(&format!("Local\\{name}-ev")));
    let out = Command::new(target_binary("dlockctl"))
        .arg("local")
        .env("DLOCK_LOCAL_DIR", dir)
        .output()
        .expect("run dlockctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("pid {} alive", std::process::id())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "mutex     Local\\{name} handles 1 waiters 0 owned by tid"
        )),
        "{text}"
    );
    assert!(text.contains("manual signaled"), "{text}");
    CloseHandle(ev);
    ReleaseMutex(m);
    CloseHandle(m);
}

#[test]
fn dlockctl_local_says_when_there_is_no_namespace() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(target_binary("dlockctl"))
        .args(["local", "--dir"])
        .arg(empty.path())
        .output()
        .expect("run dlockctl");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no local namespace at"), "{err}");
    assert_eq!(
        std::fs::read_dir(empty.path()).unwrap().count(),
        0,
        "nothing created"
    );
}

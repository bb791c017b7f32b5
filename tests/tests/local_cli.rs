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

#[test]
fn dlockctl_local_names_a_stuck_lock_holder_instead_of_hanging() {
    // A namespace of its own: the lock held below must not stall this binary's other tests.
    let dir = tempfile::tempdir().unwrap();
    let mut settings = dlock_local::Settings::from_env();
    settings.dir = dir.path().to_path_buf();
    settings.namespace = "stuck".into();
    let seg: &'static dlock_local::Segment = Box::leak(Box::new(
        dlock_local::Segment::attach(&settings).expect("attach"),
    ));
    // Hold its lock on a thread of this process, as a process stopped (SIGSTOP, a debugger)
    // while it held the lock would.
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let g = seg.lock().expect("lock");
        // /proc/thread-self is /proc/<pid>/task/<tid>.
        let tid = std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|p| p.file_name()?.to_str()?.parse::<u32>().ok())
            .expect("this thread's id");
        held_tx.send(tid).unwrap();
        let _ = release_rx.recv();
        drop(g);
    });
    let holder_tid = held_rx.recv().unwrap();
    let mut child = Command::new(target_binary("dlockctl"))
        .args(["local", "--namespace", "stuck"])
        .env("DLOCK_LOCAL_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run dlockctl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = release_tx.send(());
            panic!("dlockctl local hung behind the held namespace lock");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the namespace lock is held by thread {holder_tid} of process {}",
            std::process::id()
        )),
        "{stderr}"
    );
}

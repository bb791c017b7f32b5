//! A session whose TTL runs out while the (one-node) cluster is down expires when the node comes
//! back: its mutexes become abandoned. Sessions that are still alive survive the restart.

use std::process::{Command, Stdio};
use std::time::Duration;

use dlock::win32::*;
use dlock_tests::{Lines, die_with_parent, restartable_dlockd, unique};

const CHILD_TTL_MS: u64 = 2_500;
/// How long the node stays down: well past the child's TTL plus the checkpoint interval (1 s),
/// well within the parent's default TTL (10 s). Real time must pass here: it is the scenario.
const DOWNTIME: Duration = Duration::from_millis(4_000);

#[test]
fn a_session_that_expired_while_the_node_was_down_is_abandoned_on_restart() {
    let server = restartable_dlockd();
    let name = unique("orphan");
    let endpoint = server.lock().unwrap().endpoint();
    let mut command = Command::new(env!("CARGO_BIN_EXE_dlock-child"));
    command
        .args(["hold-mutex", &name])
        .env("DLOCK_ENDPOINTS", endpoint)
        .env("DLOCK_SESSION_TTL_MS", CHILD_TTL_MS.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    die_with_parent(&mut command);
    let mut child = command.spawn().unwrap();
    let lines = Lines::new(&mut child);
    let line = lines.next(Duration::from_secs(30)).expect("child reports");
    assert!(line.starts_with("owned "), "{line}");

    let h = OpenMutexA(SYNCHRONIZE, FALSE, Some(&name));
    assert_ne!(h, 0);
    let mine = CreateEventA(None, TRUE, TRUE, Some(&unique("mine")));

    {
        let mut server = server.lock().unwrap();
        server.kill9();
        child.kill().unwrap();
        child.wait().unwrap();
        std::thread::sleep(DOWNTIME);
        server.restart();
    }
    assert_eq!(WaitForSingleObject(h, 10_000), WAIT_ABANDONED);
    assert_eq!(ReleaseMutex(h), TRUE);
    assert_eq!(
        WaitForSingleObject(mine, 0),
        WAIT_OBJECT_0,
        "the live session kept its handles"
    );
    CloseHandle(h);
    CloseHandle(mine);
}

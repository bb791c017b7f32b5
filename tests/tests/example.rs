//! The seed scenario as two real processes: `client/examples/named_objects.rs` run twice against
//! one dlockd. The first run creates the mutex and keeps its handle until SIGTERM, with its
//! standard input closed from the start (as under `&` or in a container); the second, while the
//! first lives, opens the existing mutex and exits. Run once against dlockd and once on a
//! `Local\` name with no dlockd at all.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use std::path::Path;

use dlock_tests::{Dlockd, Lines, die_with_parent, target_binary};
use rustix::process::{Pid, Signal, kill_process};

const LINE_DEADLINE: Duration = Duration::from_secs(30);
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

fn example(endpoint: &str, name: &str, local_dir: &Path) -> Command {
    let mut command = Command::new(target_binary("examples/named_objects"));
    command
        .arg(name)
        .env("DLOCK_ENDPOINTS", endpoint)
        .env("DLOCK_LOCAL_DIR", local_dir)
        // Standard input closed from the start: the example must not take EOF as a stop.
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    die_with_parent(&mut command);
    command
}

#[test]
fn second_run_opens_the_mutex_the_first_run_created() {
    let dir = tempfile::tempdir().unwrap();
    let server = Dlockd::start(dir.path(), &[]);
    let name = format!("NameOfMutexObject-{}", std::process::id());
    two_runs(|| example(&server.endpoint(), &name, dir.path()));
}

#[test]
fn second_run_opens_the_local_mutex_the_first_run_created_without_any_server() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: any cluster call would fail.
    let name = format!("Local\\NameOfMutexObject-{}", std::process::id());
    two_runs(|| example("http://127.0.0.1:1", &name, dir.path()));
}

/// Waits for `child` to exit within [`EXIT_DEADLINE`]; kills it and panics if it does not.
fn wait_bounded(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + EXIT_DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {EXIT_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_alive(child: &mut Child, when: &str) {
    if let Some(status) = child.try_wait().expect("try_wait") {
        panic!("the first run exited {when} ({status}); it must hold its handle until SIGTERM");
    }
}

fn two_runs(example: impl Fn() -> Command) {
    let mut first = example().spawn().expect("start first run");
    let first_lines = Lines::new(&mut first);
    first_lines.expect("CreateMutex created new mutex", LINE_DEADLINE);
    // Its stdin is closed: an example that stopped at EOF would be gone by now.
    std::thread::sleep(Duration::from_millis(500));
    assert_alive(&mut first, "with its standard input closed");

    let mut second = example().spawn().expect("start second run");
    let second_lines = Lines::new(&mut second);
    second_lines.expect("CreateMutex opened existing mutex", LINE_DEADLINE);
    let status = wait_bounded(&mut second, "the second run");
    let mut rest = Vec::new();
    while let Some(line) = second_lines.next(Duration::from_secs(5)) {
        rest.push(line);
    }
    assert!(
        status.success(),
        "second run failed: {status}, output {rest:?}"
    );
    assert!(
        !rest.iter().any(|l| l.starts_with("OpenMutex error")),
        "OpenMutexA failed in the second run: {rest:?}"
    );
    assert_alive(&mut first, "while the second run opened its mutex");

    // The first run holds its handle until SIGTERM, then closes it and exits 0.
    kill_process(Pid::from_child(&first), Signal::TERM).expect("SIGTERM the first run");
    let status = wait_bounded(&mut first, "the first run after SIGTERM");
    assert!(status.success(), "first run failed after SIGTERM: {status}");
}

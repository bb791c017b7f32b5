//! The seed scenario as two real processes: `client/examples/named_objects.rs` run twice against
//! one dlockd. The first run creates the mutex and keeps its handle; the second, while the first
//! lives, opens the existing mutex and exits. Run once against dlockd and once on a `Local\`
//! name with no dlockd at all.

use std::process::{Command, Stdio};
use std::time::Duration;

use std::path::Path;

use dlock_tests::{Dlockd, Lines, die_with_parent, target_binary};

const LINE_DEADLINE: Duration = Duration::from_secs(30);

fn example(endpoint: &str, name: &str, local_dir: &Path) -> Command {
    let mut command = Command::new(target_binary("examples/named_objects"));
    command
        .arg(name)
        .env("DLOCK_ENDPOINTS", endpoint)
        .env("DLOCK_LOCAL_DIR", local_dir)
        .stdin(Stdio::piped())
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

fn two_runs(example: impl Fn() -> Command) {
    let mut first = example().spawn().expect("start first run");
    let first_lines = Lines::new(&mut first);
    first_lines.expect("CreateMutex created new mutex", LINE_DEADLINE);

    let mut second = example().spawn().expect("start second run");
    let second_lines = Lines::new(&mut second);
    second_lines.expect("CreateMutex opened existing mutex", LINE_DEADLINE);
    drop(second.stdin.take());
    let status = second.wait().expect("second run exits");
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

    // The first run holds its handle until its stdin closes.
    drop(first.stdin.take());
    let status = first.wait().expect("first run exits");
    assert!(status.success(), "first run failed: {status}");
}

//! `dlockctl` as a shell script uses it: the object commands (`create`, `open`, `wait`,
//! `release`, `set`, `reset`, `pulse`, `release-semaphore`) and `run` under a mutex or a
//! bounded number of slots, all as real processes against a real three-node cluster.
//!
//! The `run` commands are plain `sh` scripts: mutual exclusion is checked by the scripts
//! themselves (`mkdir` of one directory fails if another holder is inside), so a broken lock
//! fails the test whatever the timing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dlock_tests::procs::ProcCluster;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a test waits for something that should happen within a second or two.
const PATIENCE: Duration = Duration::from_secs(20);

/// A short session TTL, for the processes a test kills: their mutexes are abandoned within
/// seconds. Every other process keeps the default (10 s), so a slow keepalive on a loaded
/// machine does not put it in jeopardy.
const SHORT_TTL_MS: &str = "3000";

/// A `dlockctl` command line against `endpoints`.
fn dlockctl(endpoints: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dlockctl"));
    command
        .args(args)
        .env("DLOCK_ENDPOINTS", endpoints)
        .env_remove("DLOCK_SESSION_TTL_MS");
    command
}

/// A background `dlockctl`, killed (and reaped) when dropped, also when a check fails.
struct Proc(Child);

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How many waits are registered on the cluster object `name`.
fn waiters(endpoints: &str, name: &str) -> u64 {
    let (code, out, err) = output(endpoints, &["-o", "json", "list", "--prefix", name]);
    assert_eq!(code, Some(0), "list: {err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("list JSON");
    doc["objects"]
        .as_array()
        .and_then(|objects| objects.iter().find(|o| o["name"] == name))
        .and_then(|o| o["waiters"].as_u64())
        .unwrap_or(0)
}

/// Waits until `name` has `n` registered waits.
fn wait_for_waiters(endpoints: &str, name: &str, n: u64) {
    let deadline = Instant::now() + PATIENCE;
    while waiters(endpoints, name) < n {
        assert!(Instant::now() < deadline, "{name} never had {n} waiters");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs it to the end: (exit code, stdout, stderr).
fn output(endpoints: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = dlockctl(endpoints, args).output().expect("dlockctl runs");
    (
        status.code(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// Starts it in the background with stdout and stderr going to `log`.
fn spawn(endpoints: &str, args: &[&str], log: &Path) -> Proc {
    let file = std::fs::File::create(log).expect("log file");
    Proc(
        dlockctl(endpoints, args)
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("dlockctl starts"),
    )
}

/// Waits until `path` exists and contains `text`; returns its contents.
fn wait_for_text(path: &Path, text: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let contents = std::fs::read_to_string(path).unwrap_or_default();
        if contents.contains(text) {
            return contents;
        }
        assert!(
            Instant::now() < deadline,
            "{} never contained {text:?}: {contents:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` to exit within [`PATIENCE`]; returns its exit code.
fn wait_exit(child: &mut Child, what: &str) -> Option<i32> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code();
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not exit within {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` still runs (a zombie whose parent is gone does not).
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

fn signal(child: &Child, sig: Signal) {
    kill(Pid::from_raw(child.id() as i32), sig).expect("signal dlockctl");
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temporary path")
}

struct Setup {
    _cluster: ProcCluster,
    endpoints: String,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Setup {
        let cluster = ProcCluster::start(3, &[]).await;
        cluster.leader().await;
        let endpoints = cluster.endpoints();
        Setup {
            _cluster: cluster,
            endpoints,
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_commands_behave_as_their_win32_calls() {
    let s = Setup::start().await;
    let ep = s.endpoints.as_str();

    // An event lives while a handle is open: one process holds it.
    let mut event_holder = spawn(
        ep,
        &["create", "event", "ctl.ev", "--manual-reset", "--hold"],
        &s.path("event.log"),
    );
    wait_for_text(&s.path("event.log"), "holding the handle");
    let log = std::fs::read_to_string(s.path("event.log")).unwrap();
    assert!(
        log.contains("created new event \"ctl.ev\": manual unsignaled"),
        "{log}"
    );

    let (code, out, err) = output(ep, &["wait", "event", "ctl.ev", "--timeout", "100"]);
    assert_eq!(code, Some(3), "WAIT_TIMEOUT is exit 3: {out}{err}");
    assert!(out.contains("WAIT_TIMEOUT"), "{out}");
    let (code, out, _) = output(ep, &["set", "ctl.ev"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("set event \"ctl.ev\": manual signaled"),
        "{out}"
    );
    // Manual reset: it stays signaled for every waiter until reset.
    for _ in 0..2 {
        let (code, out, _) = output(ep, &["wait", "event", "ctl.ev", "--timeout", "100"]);
        assert_eq!(code, Some(0), "{out}");
    }
    let (code, out, _) = output(ep, &["reset", "ctl.ev"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("manual unsignaled"), "{out}");
    let (code, out, _) = output(ep, &["pulse", "ctl.ev"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("pulsed event \"ctl.ev\": manual unsignaled"),
        "{out}"
    );
    // The name belongs to an event: opening it as a mutex is ERROR_INVALID_HANDLE.
    let (code, _, err) = output(ep, &["open", "mutex", "ctl.ev"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("ERROR_INVALID_HANDLE (6)"), "{err}");
    // JSON for scripts.
    let (code, out, _) = output(ep, &["-o", "json", "open", "event", "ctl.ev"]);
    assert_eq!(code, Some(0));
    let doc: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON document");
    assert_eq!(doc["type"], "event");
    assert_eq!(doc["state"]["manual_reset"], true);
    signal(&event_holder, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut event_holder, "event holder"), Some(0));
    // The last handle closed: the event is gone.
    let (code, _, err) = output(ep, &["open", "event", "ctl.ev"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("ERROR_FILE_NOT_FOUND (2)"), "{err}");

    // A semaphore: counts, and the maximum.
    let mut sem_holder = spawn(
        ep,
        &[
            "create",
            "semaphore",
            "ctl.sem",
            "--initial-count",
            "0",
            "--maximum-count",
            "2",
            "--hold",
        ],
        &s.path("sem.log"),
    );
    wait_for_text(&s.path("sem.log"), "holding the handle");
    let (code, out, _) = output(ep, &["release-semaphore", "ctl.sem"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("count 0 -> 1"), "{out}");
    let (code, _, err) = output(ep, &["release-semaphore", "ctl.sem", "--count", "5"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("ERROR_TOO_MANY_POSTS (298)"), "{err}");
    let (code, _, _) = output(ep, &["wait", "semaphore", "ctl.sem", "--timeout", "100"]);
    assert_eq!(code, Some(0), "takes the one unit");
    let (code, _, _) = output(ep, &["wait", "semaphore", "ctl.sem", "--timeout", "100"]);
    assert_eq!(code, Some(3), "none left");
    signal(&sem_holder, Signal::SIGINT);
    assert_eq!(wait_exit(&mut sem_holder, "semaphore holder"), Some(0));

    // A mutex held by one process: others time out, cannot release it, and are told who owns
    // it; when the holder is killed, the next waiter acquires it abandoned (exit 4).
    // `wait` opens an existing name: one process creates it and keeps it open.
    let mut opener = spawn(
        ep,
        &["create", "mutex", "ctl.mx", "--hold"],
        &s.path("mx-open.log"),
    );
    wait_for_text(&s.path("mx-open.log"), "holding the handle");
    let mut holder = spawn(
        ep,
        &[
            "wait",
            "mutex",
            "ctl.mx",
            "--hold",
            "--ttl-ms",
            SHORT_TTL_MS,
        ],
        &s.path("mx.log"),
    );
    let log = wait_for_text(&s.path("mx.log"), "holding the handle");
    assert!(log.contains("acquired mutex \"ctl.mx\""), "{log}");
    let (code, _, _) = output(ep, &["wait", "mutex", "ctl.mx", "--timeout", "200"]);
    assert_eq!(code, Some(3), "held by another process");
    let (code, _, err) = output(ep, &["release", "ctl.mx"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("ERROR_NOT_OWNER (288)") && err.contains("owned by session"),
        "{err}"
    );
    holder.kill().expect("SIGKILL the holder");
    let _ = holder.wait();
    let (code, out, err) = output(ep, &["wait", "mutex", "ctl.mx", "--timeout", "20000"]);
    assert_eq!(code, Some(4), "WAIT_ABANDONED is exit 4: {out}{err}");
    assert!(out.contains("acquired abandoned mutex"), "{out}");
    // That waiter released it on exit (not abandoned again).
    let (code, out, _) = output(ep, &["wait", "mutex", "ctl.mx", "--timeout", "2000"]);
    assert_eq!(code, Some(0), "{out}");
    signal(&opener, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut opener, "opener"), Some(0));

    // Bad input: a clear error, nothing done.
    let (code, _, err) = output(ep, &["create", "mutex", "Local\\x"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("Local\\ name"), "{err}");
    let (code, _, err) = output(ep, &["create", "mutex", "a\\b"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("ERROR_PATH_NOT_FOUND (3)"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_of_one_mutex_never_overlap() {
    let s = Setup::start().await;
    let inside = s.path("inside");
    let script = format!(
        "mkdir {dir} || exit 99; echo $DLOCK_FENCING_TOKEN >> {tokens}; sleep 0.05; rmdir {dir}",
        dir = path_str(&inside),
        tokens = path_str(&s.path("tokens"))
    );
    let rounds = 8;
    let runners: Vec<_> = (0..2)
        .map(|_| {
            let endpoints = s.endpoints.clone();
            let script = script.clone();
            std::thread::spawn(move || {
                for _ in 0..rounds {
                    let (code, out, err) = output(
                        &endpoints,
                        &["run", "--mutex", "ctl.run", "--", "sh", "-c", &script],
                    );
                    assert_eq!(code, Some(0), "a run overlapped or failed: {out}{err}");
                }
            })
        })
        .collect();
    for runner in runners {
        runner.join().expect("runner");
    }
    // Every run held the mutex with a token larger than the previous holder's.
    let tokens: Vec<u64> = std::fs::read_to_string(s.path("tokens"))
        .unwrap()
        .lines()
        .map(|l| l.parse().expect("a token"))
        .collect();
    assert_eq!(tokens.len(), 2 * rounds);
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holders_successor_sees_the_abandonment() {
    let s = Setup::start().await;
    let ep = s.endpoints.as_str();
    let child_pid = s.path("child.pid");
    let mut holder = spawn(
        ep,
        &[
            "run",
            "--mutex",
            "ctl.crash",
            "--ttl-ms",
            SHORT_TTL_MS,
            "--",
            "sh",
            "-c",
            &format!("echo $$ > {}; exec sleep 600", path_str(&child_pid)),
        ],
        &s.path("holder.log"),
    );
    wait_for_text(&child_pid, "\n");
    let pid: i32 = std::fs::read_to_string(&child_pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut successor = spawn(
        ep,
        &[
            "run",
            "--mutex",
            "ctl.crash",
            "--",
            "sh",
            "-c",
            "echo successor abandoned=$DLOCK_ABANDONED",
        ],
        &s.path("successor.log"),
    );
    // The successor waits while the holder runs.
    wait_for_waiters(ep, "ctl.crash", 1);
    assert!(successor.try_wait().unwrap().is_none(), "it must wait");

    holder.kill().expect("SIGKILL the holder");
    let _ = holder.wait();
    // Its command dies with it, at once: nothing runs without the lock.
    let deadline = Instant::now() + Duration::from_secs(5);
    while running(pid) {
        assert!(
            Instant::now() < deadline,
            "the holder's command outlived it"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(wait_exit(&mut successor, "successor"), Some(0));
    let log = std::fs::read_to_string(s.path("successor.log")).unwrap();
    assert!(
        log.contains("successor abandoned=1") && log.contains("ABANDONED by its previous holder"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_forwards_signals_exits_with_the_status_and_reports_failures() {
    let s = Setup::start().await;
    let ep = s.endpoints.as_str();
    // Keeps the mutex in existence between the runs, to see how each one left it.
    let mut opener = spawn(
        ep,
        &["create", "mutex", "ctl.sig", "--hold"],
        &s.path("opener.log"),
    );
    wait_for_text(&s.path("opener.log"), "holding the handle");
    let got = s.path("got");
    let ready = s.path("ready");
    let script = format!(
        "trap 'echo usr1 >> {got}' USR1; trap 'echo term >> {got}; exit 7' TERM; \
         echo ready > {ready}; while :; do sleep 0.05; done",
        got = path_str(&got),
        ready = path_str(&ready)
    );
    let mut run = spawn(
        ep,
        &["run", "--mutex", "ctl.sig", "--", "sh", "-c", &script],
        &s.path("run.log"),
    );
    wait_for_text(&ready, "ready");
    signal(&run, Signal::SIGUSR1);
    wait_for_text(&got, "usr1");
    // While it runs, the lock is held.
    let (code, _, err) = output(
        ep,
        &[
            "run",
            "--mutex",
            "ctl.sig",
            "--timeout",
            "200",
            "--",
            "true",
        ],
    );
    assert_eq!(code, Some(124), "not acquired within the timeout");
    assert!(
        err.contains("mutex \"ctl.sig\" was not acquired within 200 ms"),
        "{err}"
    );

    // A signal that does not stop dlockctl leaves a waiting run waiting (one wait, not a new
    // one); a stopping one ends it before its command starts.
    let started = s.path("started");
    let mut patient = spawn(
        ep,
        &[
            "run",
            "--mutex",
            "ctl.sig",
            "--",
            "sh",
            "-c",
            &format!("echo patient >> {}", path_str(&started)),
        ],
        &s.path("patient.log"),
    );
    let mut impatient = spawn(
        ep,
        &[
            "run",
            "--mutex",
            "ctl.sig",
            "--",
            "sh",
            "-c",
            &format!("echo impatient >> {}", path_str(&started)),
        ],
        &s.path("impatient.log"),
    );
    wait_for_waiters(ep, "ctl.sig", 2);
    signal(&patient, Signal::SIGWINCH);
    signal(&patient, Signal::SIGUSR1);
    signal(&impatient, Signal::SIGINT);
    assert_eq!(wait_exit(&mut impatient, "impatient"), Some(128 + 2));
    assert_eq!(
        waiters(ep, "ctl.sig"),
        1,
        "the patient one still waits, once"
    );

    signal(&run, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut run, "run"), Some(7), "the command's status");
    assert!(std::fs::read_to_string(&got).unwrap().contains("term"));
    assert_eq!(wait_exit(&mut patient, "patient"), Some(0));
    assert_eq!(
        std::fs::read_to_string(&started).unwrap(),
        "patient\n",
        "only the patient run's command started"
    );

    let (code, _, _) = output(
        ep,
        &["run", "--mutex", "ctl.sig", "--", "sh", "-c", "kill -9 $$"],
    );
    assert_eq!(code, Some(128 + 9), "killed by a signal: 128+N");
    let (code, _, err) = output(ep, &["run", "--mutex", "ctl.sig", "--", "/no/such/cmd"]);
    assert_eq!(code, Some(127), "{err}");
    let not_executable = s.path("not-executable");
    std::fs::write(&not_executable, "#!/bin/sh\n").unwrap();
    let (code, _, err) = output(
        ep,
        &["run", "--mutex", "ctl.sig", "--", path_str(&not_executable)],
    );
    assert_eq!(code, Some(126), "{err}");
    let (code, _, err) = output(ep, &["run", "--mutex", "Local\\x", "--", "true"]);
    assert_eq!(code, Some(125), "{err}");
    // Every run gave the mutex back released, never abandoned.
    let (code, out, err) = output(ep, &["wait", "mutex", "ctl.sig", "--timeout", "0"]);
    assert_eq!(code, Some(0), "free, not abandoned: {out}{err}");
    signal(&opener, Signal::SIGTERM);
    assert_eq!(wait_exit(&mut opener, "opener"), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_a_limit_admits_that_many_at_once() {
    let s = Setup::start().await;
    let ep = s.endpoints.as_str();
    let hold = |name: &str| {
        let flag = s.path(name);
        let script = format!(
            "echo $DLOCK_LOCK_NAME > {flag}.slot; while [ ! -e {flag} ]; do sleep 0.05; done",
            flag = path_str(&flag)
        );
        spawn(
            ep,
            &[
                "run",
                "--semaphore",
                "ctl.pool",
                "--limit",
                "2",
                "--",
                "sh",
                "-c",
                &script,
            ],
            &s.path(&format!("{name}.log")),
        )
    };
    let mut a = hold("a");
    let mut b = hold("b");
    let slot_a = wait_for_text(&s.path("a.slot"), "\n");
    let slot_b = wait_for_text(&s.path("b.slot"), "\n");
    assert_ne!(slot_a, slot_b, "two slots held at once");
    let (code, _, err) = output(
        ep,
        &[
            "run",
            "--semaphore",
            "ctl.pool",
            "--limit",
            "2",
            "--timeout",
            "300",
            "--",
            "true",
        ],
    );
    assert_eq!(code, Some(124), "a third one waits: {err}");
    assert!(
        err.contains("any of the 2 slots of \"ctl.pool\" was not acquired within 300 ms"),
        "{err}"
    );
    std::fs::write(s.path("a"), "").unwrap();
    assert_eq!(wait_exit(&mut a, "a"), Some(0));
    let (code, _, err) = output(
        ep,
        &[
            "run",
            "--semaphore",
            "ctl.pool",
            "--limit",
            "2",
            "--timeout",
            "5000",
            "--",
            "true",
        ],
    );
    assert_eq!(code, Some(0), "a slot is free again: {err}");
    std::fs::write(s.path("b"), "").unwrap();
    assert_eq!(wait_exit(&mut b, "b"), Some(0));
    // --limit belongs to --semaphore.
    let (code, _, _) = output(ep, &["run", "--mutex", "x", "--limit", "2", "--", "true"]);
    assert_eq!(code, Some(2), "bad usage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stops_the_command_when_the_session_falls_into_jeopardy() {
    let cluster = ProcCluster::start(3, &[]).await;
    cluster.leader().await;
    let endpoints = cluster.endpoints();
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("got");
    let ready = dir.path().join("ready");
    let grandchild = dir.path().join("grandchild.pid");
    // The command ignores SIGTERM (it only notes it), and leaves a process of its own behind.
    let script = format!(
        "sleep 600 & echo $! > {grandchild}; trap 'echo term >> {got}' TERM; \
         echo ready > {ready}; while :; do sleep 0.05; done",
        got = path_str(&got),
        ready = path_str(&ready),
        grandchild = path_str(&grandchild),
    );
    let log = dir.path().join("run.log");
    let mut run = spawn(
        &endpoints,
        &[
            "run",
            "--mutex",
            "ctl.jeopardy",
            "--ttl-ms",
            SHORT_TTL_MS,
            "--",
            "sh",
            "-c",
            &script,
        ],
        &log,
    );
    wait_for_text(&ready, "ready");
    let grandchild_pid: i32 = wait_for_text(&grandchild, "\n").trim().parse().unwrap();
    // A successor waits, with a session long enough to outlive the outage below; when it runs,
    // the holder's command must have been told to stop already.
    let successor_log = dir.path().join("successor.log");
    let mut successor = spawn(
        &endpoints,
        &[
            "run",
            "--mutex",
            "ctl.jeopardy",
            "--ttl-ms",
            "30000",
            "--",
            "sh",
            "-c",
            &format!(
                "echo abandoned=$DLOCK_ABANDONED; grep -q term {} && echo holder-stopped",
                path_str(&got)
            ),
        ],
        &successor_log,
    );
    wait_for_waiters(&endpoints, "ctl.jeopardy", 1);

    // The whole cluster stops answering: no keepalive is answered, the lease runs down, and
    // the command is told to stop while the cluster may still count the holder as its owner.
    for id in cluster.ids() {
        cluster.freeze(id);
    }
    wait_for_text(&got, "term");
    for id in cluster.ids() {
        cluster.thaw(id);
    }
    let code = wait_exit(&mut run, "run");
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(125), "{log_text}");
    assert!(
        (log_text.contains("in jeopardy") || log_text.contains("expired"))
            && log_text.contains("lost while the command ran")
            && log_text.contains("killed by SIGKILL"),
        "SIGTERM ignored, then SIGKILL: {log_text}"
    );
    // The whole group is gone, not only the command's first process.
    let deadline = Instant::now() + Duration::from_secs(5);
    while running(grandchild_pid) {
        assert!(
            Instant::now() < deadline,
            "a process of the command outlived the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Cut short, not released: the successor sees the abandonment.
    assert_eq!(wait_exit(&mut successor, "successor"), Some(0));
    let out = std::fs::read_to_string(&successor_log).unwrap();
    assert!(
        out.contains("abandoned=1") && out.contains("holder-stopped"),
        "{out}"
    );
}

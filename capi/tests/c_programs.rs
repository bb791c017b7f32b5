//! C programs compiled against `include/compat/windows.h` and linked with `libdlock.so`, run
//! as real processes against real dlockd clusters:
//!
//! - `c/seed_create.c` and `c/seed_open.c`: the two fragments of the Win32 "Interprocess
//!   Synchronization" page, verbatim, each wrapped only in the two includes and `main`;
//! - `c/threads.c`: pthreads, per-thread last error and ownership, `WaitForMultipleObjects`,
//!   abandonment by a thread that exits, semaphores, `W` names; linked with `libdlock.so` and,
//!   once more, with `libdlock.a`;
//! - `c/exit_paths.c`: calls from an `atexit` handler and a pthread key destructor (where the
//!   calling thread's thread-locals are gone) and from a forked child;
//! - `c/constants.c`: every constant of the header against the Rust vocabulary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use dlock_proto::vocab as v;
use dlock_tests::procs::ProcCluster;

/// The session TTL the C programs run with: a process that exits without closing its handles
/// keeps them until its session expires, as a killed one does.
const TTL_MS: u64 = 3000;

/// `target/<profile>`, where `cargo build` puts `libdlock.so`. `cargo test` builds this
/// crate's integration tests but not its `cdylib` (nothing links it), so the first test to get
/// here builds it, with the cargo running the tests, once per test process.
fn lib_dir() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test executable");
            let deps = exe.parent().expect("target/<profile>/deps");
            let dir = deps.parent().expect("target/<profile>").to_path_buf();
            let release = dir.file_name().is_some_and(|n| n == "release");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = Command::new(cargo);
            build.args(["build", "-p", "dlock-capi", "--lib"]);
            if release {
                build.arg("--release");
            }
            let out = build.current_dir(crate_dir()).output().expect("cargo runs");
            assert!(
                out.status.success() && dir.join("libdlock.so").exists(),
                "cargo build -p dlock-capi did not give {}/libdlock.so:\n{}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            dir
        })
        .clone()
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Compiles `tests/c/<name>.c` into `dir` against the compat header and `libdlock.so`.
fn compile(name: &str, dir: &Path) -> PathBuf {
    let lib = lib_dir();
    compile_with(
        name,
        &dir.join(name),
        &[
            "-L".as_ref(),
            lib.as_os_str(),
            "-ldlock".as_ref(),
            format!("-Wl,-rpath,{}", lib.display()).as_ref(),
            "-lpthread".as_ref(),
        ],
    )
}

/// Compiles `tests/c/<name>.c` into `dir` linked with `libdlock.a` (the README's static link).
fn compile_static(name: &str, dir: &Path) -> PathBuf {
    let archive = lib_dir().join("libdlock.a");
    let mut link: Vec<&std::ffi::OsStr> = vec![archive.as_os_str()];
    link.extend(["-lpthread", "-ldl", "-lm", "-lrt", "-lgcc_s"].map(std::ffi::OsStr::new));
    compile_with(name, &dir.join(format!("{name}-static")), &link)
}

fn compile_with(name: &str, out: &Path, link: &[&std::ffi::OsStr]) -> PathBuf {
    let source = crate_dir()
        .join("tests")
        .join("c")
        .join(format!("{name}.c"));
    let result = Command::new("cc")
        .arg("-std=gnu11")
        .arg("-Wall")
        .arg("-I")
        .arg(crate_dir().join("include").join("compat"))
        .arg(&source)
        .arg("-o")
        .arg(out)
        .args(link)
        .output()
        .expect("cc runs");
    assert!(
        result.status.success(),
        "cc {}:\n{}",
        source.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    out.to_path_buf()
}

/// The local namespace directory of this test binary's programs (unnamed and `Local\`
/// objects), never `/dev/shm`, where a segment of another build may be.
fn local_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("local namespace directory"))
        .path()
}

/// Runs a compiled program against `endpoints`; its output.
fn run(program: &Path, endpoints: &str, args: &[&str]) -> Output {
    run_with(program, endpoints, args, &[])
}

/// Like [`run`], with more environment variables.
fn run_with(
    program: &Path,
    endpoints: &str,
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> Output {
    Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .env("DLOCK_ENDPOINTS", endpoints)
        .env("DLOCK_SESSION_TTL_MS", TTL_MS.to_string())
        .env("DLOCK_LOCAL_DIR", local_dir())
        .output()
        .expect("the program runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_c_code_runs_unchanged_against_three_nodes() {
    let dir = tempfile::tempdir().expect("build directory");
    let create = compile("seed_create", dir.path());
    let open = compile("seed_open", dir.path());
    let cluster = ProcCluster::start(3, &[]).await;
    cluster.leader().await;
    let endpoints = cluster.endpoints();

    let first = run(&create, &endpoints, &[]);
    assert_eq!(stdout(&first), "CreateMutex created new mutex\n");
    assert!(first.status.success());
    // The first process returned from main without closing its handle: like a process that
    // died, it keeps it until its session expires. Meanwhile the name exists.
    let second = run(&create, &endpoints, &[]);
    assert_eq!(stdout(&second), "CreateMutex opened existing mutex\n");
    let opened = run(&open, &endpoints, &[]);
    assert_eq!(
        stdout(&opened),
        "",
        "OpenMutex succeeds (and prints nothing)"
    );
    assert!(opened.status.success());

    // Once every session that held a handle has expired, the name is gone. Poll without
    // holding handles (an async session that closes what it opens).
    let client = dlock_client::Client::connect(cluster.endpoint_list())
        .await
        .expect("client");
    let probe = client
        .open_session(Duration::from_secs(10))
        .await
        .expect("probe session");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match probe.open_mutex("NameOfMutexObject").await {
            Ok(handle) => drop(handle),
            Err(dlock_client::Error::Win32(code)) if code.code() == v::ERROR_FILE_NOT_FOUND => {
                break;
            }
            Err(err) => panic!("probe: {err}"),
        }
        assert!(Instant::now() < deadline, "the mutex outlived its holders");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gone = run(&open, &endpoints, &[]);
    assert_eq!(stdout(&gone), "OpenMutex error: 2\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_c_code_runs_unchanged_against_a_mutual_tls_cluster() {
    let dir = tempfile::tempdir().expect("build directory");
    let create = compile("seed_create", dir.path());
    let cluster = ProcCluster::start_tls(3, &[]).await;
    cluster.leader().await;
    let certs = cluster.certs_dir();
    let (ca, cert, key) = (
        certs.join("ca.pem"),
        certs.join("client-alice.pem"),
        certs.join("client-alice.key"),
    );
    let tls = [
        ("DLOCK_CACERT", ca.as_os_str()),
        ("DLOCK_CERT", cert.as_os_str()),
        ("DLOCK_KEY", key.as_os_str()),
    ];
    let quick = ("DLOCK_REQUEST_TIMEOUT_MS", std::ffi::OsStr::new("1500"));
    let https = cluster
        .endpoint_list()
        .iter()
        .map(|e| format!("https://{e}"))
        .collect::<Vec<_>>()
        .join(",");
    let first = run_with(&create, &https, &[], &tls);
    assert_eq!(stdout(&first), "CreateMutex created new mutex\n");
    let second = run_with(&create, &cluster.endpoints(), &[], &tls);
    assert_eq!(stdout(&second), "CreateMutex opened existing mutex\n");
    // Without the CA the same program cannot reach the cluster: 1231, with the reason logged.
    let plain = run_with(&create, &cluster.endpoints(), &[], &[quick]);
    assert_eq!(stdout(&plain), "CreateMutex error: 1231\n");
    // Without its certificate, the same.
    let anonymous = run_with(&create, &cluster.endpoints(), &[], &[tls[0], quick]);
    assert_eq!(stdout(&anonymous), "CreateMutex error: 1231\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_threads_wait_for_multiple_objects_and_abandon_what_they_owned() {
    let dir = tempfile::tempdir().expect("build directory");
    let dynamic = compile("threads", dir.path());
    let fixed = compile_static("threads", dir.path());
    let cluster = ProcCluster::start(3, &[]).await;
    cluster.leader().await;
    for (program, prefix) in [(dynamic, "c-threads"), (fixed, "c-threads-static")] {
        let out = run(&program, &cluster.endpoints(), &[prefix]);
        assert!(
            out.status.success() && stdout(&out) == "threads: ok\n",
            "{}: {}{}",
            program.display(),
            stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_at_exit_in_key_destructors_and_after_fork_neither_abort_nor_hang() {
    let dir = tempfile::tempdir().expect("build directory");
    let program = compile("exit_paths", dir.path());
    let cluster = ProcCluster::start(3, &[]).await;
    cluster.leader().await;
    let started = Instant::now();
    let out = run(&program, &cluster.endpoints(), &["exit-paths"]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{:?}: {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The worker's exit is reported first (its thread-locals go before its key destructors),
    // so the release may find the mutex abandoned already: either answer, but an answer.
    assert!(text.contains("key destructor ReleaseMutex: "), "{text}");
    // A forked child cannot use its parent's runtime: a clear error, and a prompt exit.
    assert!(
        text.contains(&format!("child: failed {}\n", v::ERROR_NOT_SUPPORTED)),
        "{text}"
    );
    assert!(text.contains("child exited 0\n"), "{text}");
    assert!(text.ends_with("atexit CloseHandle: ok\n"), "{text}");
    eprintln!("exit_paths ran in {:?}", started.elapsed());
}

#[test]
fn the_header_constants_are_the_rust_vocabulary() {
    let dir = tempfile::tempdir().expect("build directory");
    let program = compile("constants", dir.path());
    let out = Command::new(&program).output().expect("runs");
    assert!(out.status.success(), "{}", stdout(&out));
    let printed: std::collections::BTreeMap<String, u64> = stdout(&out)
        .lines()
        .map(|line| {
            let (name, value) = line.split_once('=').expect("NAME=VALUE");
            (name.to_owned(), value.parse().expect("a number"))
        })
        .collect();
    let expected: &[(&str, u32)] = &[
        ("WAIT_OBJECT_0", v::WAIT_OBJECT_0),
        ("WAIT_ABANDONED", v::WAIT_ABANDONED),
        ("WAIT_ABANDONED_0", v::WAIT_ABANDONED_0),
        ("WAIT_IO_COMPLETION", v::WAIT_IO_COMPLETION),
        ("WAIT_TIMEOUT", v::WAIT_TIMEOUT),
        ("WAIT_FAILED", v::WAIT_FAILED),
        ("INFINITE", v::INFINITE),
        ("MAXIMUM_WAIT_OBJECTS", v::MAXIMUM_WAIT_OBJECTS),
        ("MAX_PATH", v::MAX_PATH),
        ("ERROR_SUCCESS", v::ERROR_SUCCESS),
        ("ERROR_FILE_NOT_FOUND", v::ERROR_FILE_NOT_FOUND),
        ("ERROR_PATH_NOT_FOUND", v::ERROR_PATH_NOT_FOUND),
        ("ERROR_ACCESS_DENIED", v::ERROR_ACCESS_DENIED),
        ("ERROR_INVALID_HANDLE", v::ERROR_INVALID_HANDLE),
        ("ERROR_NOT_SUPPORTED", v::ERROR_NOT_SUPPORTED),
        ("ERROR_BAD_NET_NAME", v::ERROR_BAD_NET_NAME),
        ("ERROR_INVALID_PARAMETER", v::ERROR_INVALID_PARAMETER),
        ("ERROR_INVALID_NAME", v::ERROR_INVALID_NAME),
        ("ERROR_BAD_PATHNAME", v::ERROR_BAD_PATHNAME),
        ("ERROR_ALREADY_EXISTS", v::ERROR_ALREADY_EXISTS),
        ("ERROR_FILENAME_EXCED_RANGE", v::ERROR_FILENAME_EXCED_RANGE),
        ("ERROR_NOT_OWNER", v::ERROR_NOT_OWNER),
        ("ERROR_TOO_MANY_POSTS", v::ERROR_TOO_MANY_POSTS),
        (
            "ERROR_MUTANT_LIMIT_EXCEEDED",
            v::ERROR_MUTANT_LIMIT_EXCEEDED,
        ),
        ("ERROR_OPERATION_ABORTED", v::ERROR_OPERATION_ABORTED),
        ("ERROR_IO_PENDING", v::ERROR_IO_PENDING),
        ("ERROR_NETWORK_UNREACHABLE", v::ERROR_NETWORK_UNREACHABLE),
        ("ERROR_CONNECTION_ABORTED", v::ERROR_CONNECTION_ABORTED),
        ("ERROR_REVISION_MISMATCH", v::ERROR_REVISION_MISMATCH),
        ("ERROR_PRIVILEGE_NOT_HELD", v::ERROR_PRIVILEGE_NOT_HELD),
        ("ERROR_INTERNAL_ERROR", v::ERROR_INTERNAL_ERROR),
        ("ERROR_FILE_CORRUPT", v::ERROR_FILE_CORRUPT),
        ("ERROR_NO_SYSTEM_RESOURCES", v::ERROR_NO_SYSTEM_RESOURCES),
        ("ERROR_TIMEOUT", v::ERROR_TIMEOUT),
        ("DELETE", v::DELETE),
        ("READ_CONTROL", v::READ_CONTROL),
        ("WRITE_DAC", v::WRITE_DAC),
        ("WRITE_OWNER", v::WRITE_OWNER),
        ("SYNCHRONIZE", v::SYNCHRONIZE),
        ("STANDARD_RIGHTS_REQUIRED", v::STANDARD_RIGHTS_REQUIRED),
        ("STANDARD_RIGHTS_READ", v::STANDARD_RIGHTS_READ),
        ("STANDARD_RIGHTS_WRITE", v::STANDARD_RIGHTS_WRITE),
        ("STANDARD_RIGHTS_EXECUTE", v::STANDARD_RIGHTS_EXECUTE),
        ("ACCESS_SYSTEM_SECURITY", v::ACCESS_SYSTEM_SECURITY),
        ("MAXIMUM_ALLOWED", v::MAXIMUM_ALLOWED),
        ("GENERIC_ALL", v::GENERIC_ALL),
        ("GENERIC_EXECUTE", v::GENERIC_EXECUTE),
        ("GENERIC_WRITE", v::GENERIC_WRITE),
        ("GENERIC_READ", v::GENERIC_READ),
        ("MUTANT_QUERY_STATE", v::MUTANT_QUERY_STATE),
        ("MUTANT_ALL_ACCESS", v::MUTANT_ALL_ACCESS),
        ("MUTEX_MODIFY_STATE", v::MUTEX_MODIFY_STATE),
        ("MUTEX_ALL_ACCESS", v::MUTEX_ALL_ACCESS),
        ("EVENT_QUERY_STATE", v::EVENT_QUERY_STATE),
        ("EVENT_MODIFY_STATE", v::EVENT_MODIFY_STATE),
        ("EVENT_ALL_ACCESS", v::EVENT_ALL_ACCESS),
        ("SEMAPHORE_QUERY_STATE", v::SEMAPHORE_QUERY_STATE),
        ("SEMAPHORE_MODIFY_STATE", v::SEMAPHORE_MODIFY_STATE),
        ("SEMAPHORE_ALL_ACCESS", v::SEMAPHORE_ALL_ACCESS),
        ("CREATE_MUTEX_INITIAL_OWNER", v::CREATE_MUTEX_INITIAL_OWNER),
        ("CREATE_EVENT_MANUAL_RESET", v::CREATE_EVENT_MANUAL_RESET),
        ("CREATE_EVENT_INITIAL_SET", v::CREATE_EVENT_INITIAL_SET),
    ];
    assert_eq!(printed.len(), expected.len(), "one line per constant");
    for (name, value) in expected {
        assert_eq!(printed.get(*name), Some(&u64::from(*value)), "{name}");
    }
}

//! Test harness for dlock's end-to-end tests: starts real `dlockd` processes on free loopback
//! ports with their own data directories, and kills them (gracefully or with SIGKILL).
//!
//! `dlockd` is the binary cargo builds for the `dlock-server` package in the same target
//! directory (`cargo test --workspace` builds it before running any test). Children are tied to
//! the test process with `PR_SET_PDEATHSIG`, so a failing test leaves no stray servers behind.

#![deny(unsafe_code)]

pub mod contention;
pub mod faults;
pub mod history;
pub mod net;
pub mod procs;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a started dlockd may take to accept connections.
pub const START_DEADLINE: Duration = Duration::from_secs(30);

/// Path of a binary built in this target directory (`dlockd`, or an example under `examples/`).
///
/// # Panics
///
/// If the binary was not built: run the tests with `cargo test --workspace`.
pub fn target_binary(relative: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    // target/<profile>/deps/<test>-<hash>  ->  target/<profile>; a binary of this crate
    // (dlock-bench) lives in target/<profile> itself.
    let mut profile_dir = exe.parent().expect("the executable lives in a directory");
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir = profile_dir
            .parent()
            .expect("test executable lives in target/<profile>/deps");
    }
    let path = profile_dir.join(relative);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` so it is built",
        path.display()
    );
    path
}

/// A free port on 127.0.0.1 (bound and released), never one this process was given before,
/// and outside the kernel's ephemeral range when that leaves room.
///
/// Two failures this avoids, both seen in CI: the kernel readily hands the port it just
/// released to the next bind, so two nodes of one cluster could be given the same port; and a
/// node restarted on its old port finds it taken for good when, while the node was down, an
/// outgoing connection (a client's, to another node) was given that port as its local end, so
/// ports for servers come from below `ip_local_port_range`, where `connect` never looks.
/// Another process may still bind the port in between; that race is rare and fails loudly.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(port) = port_below_ephemeral_range(&given) {
        given.insert(port);
        return port;
    }
    // Ports refused stay bound until one is accepted, so the kernel cannot offer them again.
    let mut refused = Vec::new();
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("bound address").port();
        if given.insert(port) {
            return port;
        }
        refused.push(listener);
    }
}

/// The lowest port [`free_port`] picks from: above the registered services most machines run.
const SERVER_PORT_LOW: u16 = 20_000;

/// A port in `[SERVER_PORT_LOW, start of the ephemeral range)` that binds now and is not in
/// `given`, starting at a random place so that concurrent test processes rarely meet; `None`
/// when that range is too small or full.
fn port_below_ephemeral_range(given: &std::collections::BTreeSet<u16>) -> Option<u16> {
    use std::hash::{BuildHasher, Hasher};
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let ephemeral_low: u16 = range.split_whitespace().next()?.parse().ok()?;
    let span = ephemeral_low.checked_sub(SERVER_PORT_LOW)?;
    if span < 1_000 {
        return None;
    }
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let start = (hasher.finish() % u64::from(span)) as u16;
    (0..span)
        .map(|i| SERVER_PORT_LOW + (start + i) % span)
        .find(|port| !given.contains(port) && TcpListener::bind(("127.0.0.1", *port)).is_ok())
}

/// Makes a child die with the test process (`PR_SET_PDEATHSIG`). The signal fires when the
/// *thread* that spawned the child exits, so long-lived servers are spawned from a thread that
/// lives as long as the process (see [`Dlockd::start_detached`]).
#[allow(unsafe_code)] // `pre_exec` is the only way to run prctl in the child before exec.
pub fn die_with_parent(command: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// A running dlockd child process.
pub struct Dlockd {
    child: Child,
    /// Its client address.
    pub addr: SocketAddr,
    /// Its peer (Raft transport) address.
    pub peer_addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    extra: Vec<String>,
}

impl Dlockd {
    /// Starts dlockd with `data_dir` on a free port and waits until it accepts connections.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Dlockd {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let peer_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = spawn(data_dir, addr, peer_addr, &extra);
        let mut d = Dlockd {
            child,
            addr,
            peer_addr,
            data_dir: data_dir.to_path_buf(),
            extra,
        };
        d.wait_ready();
        d
    }

    /// Like [`Dlockd::start`], but spawned from a thread that never exits, so the server lives
    /// as long as the test process (for servers shared through a `OnceLock`).
    pub fn start_detached(data_dir: &Path, extra: &[&str]) -> Dlockd {
        let (tx, rx) = mpsc::channel();
        let data_dir = data_dir.to_path_buf();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        std::thread::Builder::new()
            .name("dlockd-parent".into())
            .spawn(move || {
                let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
                tx.send(Dlockd::start(&data_dir, &refs)).unwrap();
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn dlockd parent thread");
        rx.recv().expect("dlockd started")
    }

    /// The endpoint string for `DLOCK_ENDPOINTS`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the server with SIGKILL (no chance to flush or clean up) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same address and data directory (after [`Dlockd::kill9`]).
    pub fn restart(&mut self) {
        self.child = spawn(&self.data_dir, self.addr, self.peer_addr, &self.extra);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("dlockd exited during start-up: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "dlockd did not listen on {} in time",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Dlockd {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn(data_dir: &Path, addr: SocketAddr, peer_addr: SocketAddr, extra: &[String]) -> Child {
    let mut command = Command::new(target_binary("dlockd"));
    command
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--client-addr")
        .arg(addr.to_string())
        .arg("--peer-addr")
        .arg(peer_addr.to_string())
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null());
    die_with_parent(&mut command);
    command.spawn().expect("spawn dlockd")
}

/// Reads lines from a child's stdout on a thread, so tests can wait for a line with a deadline.
pub struct Lines {
    rx: mpsc::Receiver<String>,
}

impl Lines {
    /// Starts reading `child`'s stdout (which must be piped).
    pub fn new(child: &mut Child) -> Lines {
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx }
    }

    /// The next line, or `None` if the stream ended or `timeout` passed.
    pub fn next(&self, timeout: Duration) -> Option<String> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Waits for a line equal to `expected`, returning every line read; panics after `timeout`.
    pub fn expect(&self, expected: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(line) if line == expected => return seen,
                Some(line) => seen.push(line),
                None => panic!("did not see {expected:?} within {timeout:?}; saw {seen:?}"),
            }
        }
    }
}

/// One dlockd shared by every test of the calling test binary, with `DLOCK_ENDPOINTS` pointing
/// the `dlock::win32` facade at it. Call it first in every test that uses the facade.
pub fn shared_dlockd() -> &'static Dlockd {
    static SERVER: std::sync::OnceLock<(tempfile::TempDir, Dlockd)> = std::sync::OnceLock::new();
    let (_dir, server) = SERVER.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary data directory");
        let server = Dlockd::start_detached(dir.path(), &[]);
        // Once, before any test of this binary used the facade (every such test calls this
        // function first).
        configure_facade(&server.endpoint(), None, None);
        (dir, server)
    });
    server
}

/// Like [`shared_dlockd`], but behind a mutex so a test can kill and restart it (the client
/// address stays the same across restarts, so the facade reconnects to it).
pub fn restartable_dlockd() -> &'static std::sync::Mutex<Dlockd> {
    static SERVER: std::sync::OnceLock<(tempfile::TempDir, std::sync::Mutex<Dlockd>)> =
        std::sync::OnceLock::new();
    let (_dir, server) = SERVER.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary data directory");
        let server = Dlockd::start_detached(dir.path(), &[]);
        configure_facade(&server.endpoint(), None, None);
        (dir, std::sync::Mutex::new(server))
    });
    server
}

/// A name unique to this process and call, so tests sharing a server never collide.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A private local namespace for this test binary: configures the `Local\` engine with a
/// temporary directory, once, before any use of it. Returns the directory; child processes
/// that must meet in the same namespace get it as `DLOCK_LOCAL_DIR`.
pub fn local_namespace() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary local namespace directory");
        let mut settings = dlock_local::Settings::from_env();
        settings.dir = dir.path().to_path_buf();
        dlock_local::configure(settings)
            .expect("the local namespace is configured before its first use");
        dir
    })
    .path()
}

/// Points the `dlock::win32` facade of this process at `endpoints` (comma-separated), with an
/// optional session TTL and request timeout; the other settings come from the environment.
///
/// # Panics
///
/// If the facade was configured already or has been used: call it before the first facade
/// call.
pub fn configure_facade(
    endpoints: &str,
    session_ttl: Option<std::time::Duration>,
    request_timeout: Option<std::time::Duration>,
) {
    let mut config = dlock::win32::FacadeConfig::from_env();
    config.endpoints = Ok(endpoints
        .split(',')
        .map(|e| e.trim().to_owned())
        .filter(|e| !e.is_empty())
        .collect());
    if let Some(ttl) = session_ttl {
        config.session_ttl = ttl;
    }
    if let Some(timeout) = request_timeout {
        config.request_timeout = timeout;
    }
    dlock::win32::configure(config).expect("the facade is configured before its first call");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node restarted on its port failed in CI for good because a client's outgoing
    /// connection had been given that port meanwhile: server ports stay out of the range the
    /// kernel gives outgoing connections.
    #[test]
    fn server_ports_are_distinct_and_outside_the_ephemeral_range() {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .expect("Linux tells its ephemeral port range");
        let low: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
        let ports: Vec<u16> = (0..64).map(|_| free_port()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "ports repeat: {ports:?}");
        if low >= SERVER_PORT_LOW + 1_000 {
            assert!(
                ports.iter().all(|p| *p < low),
                "ports {ports:?} overlap the ephemeral range starting at {low}"
            );
        }
    }
}

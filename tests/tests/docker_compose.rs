//! The deployment a user takes to staging, as the README runs it: `deploy/docker-compose.yml`
//! brings up three healthy nodes and the example services; the seed example, run twice from the
//! host against the published ports, prints "created new mutex" then "opened existing mutex";
//! the metrics endpoint shows the services' traffic; `down -v` removes everything.
//!
//! Needs Docker, docker-compose and the images (`deploy/build-image.sh`), and the host ports
//! 7711-7713 and 9111-9113 the compose file publishes, so it is `#[ignore]`d in `cargo test`:
//! `.ci/run` runs it when a Docker engine answers.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use dlock_tests::{Lines, die_with_parent, target_binary};

/// The compose project: its own name, so it never touches a user's `deploy` project.
const PROJECT: &str = "dlockci";
/// The endpoints the compose file publishes on the host.
const ENDPOINTS: &str = "127.0.0.1:7711,127.0.0.1:7712,127.0.0.1:7713";

fn compose_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join("docker-compose.yml")
}

/// The host's client settings: mutual TLS with the certificates `deploy/build-image.sh` made.
fn tls_env() -> [(&'static str, PathBuf); 3] {
    let certs = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join("certs");
    [
        ("DLOCK_CACERT", certs.join("ca.pem")),
        ("DLOCK_CERT", certs.join("client-app.pem")),
        ("DLOCK_KEY", certs.join("client-app.key")),
    ]
}

fn compose(args: &[&str]) -> Output {
    Command::new("docker-compose")
        .arg("-p")
        .arg(PROJECT)
        .arg("-f")
        .arg(compose_file())
        .args(args)
        .output()
        .expect("docker-compose runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Kills the child when dropped (a failed check must not leave the first run holding on).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `down -v` when dropped, also when a check fails.
struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        let out = compose(&["down", "-v", "--timeout", "10"]);
        if !out.status.success() {
            eprintln!("docker-compose down failed: {}", text(&out));
        }
    }
}

/// `GET /metrics` of `addr` with a plain HTTP/1.1 request.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut body = String::new();
    stream.read_to_string(&mut body).expect("response");
    body
}

#[test]
#[ignore = "needs Docker, docker-compose and the images; .ci/run runs it"]
fn the_compose_cluster_serves_the_seed_example_from_the_host() {
    if Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_or(true, |s| !s.success())
    {
        eprintln!("SKIPPED: no Docker engine answers `docker info`");
        return;
    }
    let _ = compose(&["down", "-v", "--timeout", "10"]);
    let _down = Down;
    let started = Instant::now();
    let up = compose(&["up", "-d"]);
    assert!(up.status.success(), "up: {}", text(&up));

    // Healthy within 20 s (the README promises it).
    loop {
        let ps = compose(&["ps"]);
        let listing = text(&ps);
        let healthy = listing.matches("(healthy)").count();
        if healthy == 3 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "3 healthy nodes not within 20 s:\n{listing}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("three healthy nodes after {:?}", started.elapsed());

    // The seed example from the host: the first run creates the mutex and holds its handle
    // (with its standard input closed, as under `&`), the second opens it.
    let example = target_binary("examples/named_objects");
    let name = format!("compose-seed-{}", std::process::id());
    let mut command = Command::new(&example);
    command
        .arg(&name)
        .env("DLOCK_ENDPOINTS", ENDPOINTS)
        .envs(tls_env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut first = KillOnDrop(die_with_parent(&mut command).spawn().expect("first run"));
    let lines = Lines::new(&mut first.0);
    lines.expect("CreateMutex created new mutex", Duration::from_secs(30));
    let second = Command::new(&example)
        .arg(&name)
        .env("DLOCK_ENDPOINTS", ENDPOINTS)
        .envs(tls_env())
        .stdin(Stdio::null())
        .output()
        .expect("second run");
    let second_out = text(&second);
    assert!(second.status.success(), "second run: {second_out}");
    assert!(
        second_out.contains("CreateMutex opened existing mutex"),
        "{second_out}"
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&first.0),
        rustix::process::Signal::TERM,
    )
    .expect("stop the first run");
    assert!(first.0.wait().expect("first run exits").success());

    // The services log who holds what.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = text(&compose(&["logs", "--no-color", "scheduler", "worker"]));
        let active = logs.contains("holds mutex \"jobs.scheduler\"");
        let jobs = logs.contains("holds a slot of semaphore \"jobs.slots\"");
        if active && jobs {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no active scheduler or no job in the logs:\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Every node's metrics show the traffic.
    for port in [9111, 9112, 9113] {
        let body = scrape(&format!("127.0.0.1:{port}"));
        for metric in [
            "dlock_raft_term",
            "dlock_raft_commit_index",
            "dlock_raft_flush_seconds_bucket",
            "dlock_sessions",
            "dlock_objects",
            "dlock_handles",
            "dlock_waits_blocked",
            "dlock_grpc_requests_total",
        ] {
            assert!(
                body.contains(metric),
                "{metric} missing on :{port}:\n{body}"
            );
        }
    }
    let leaders: usize = [9111, 9112, 9113]
        .iter()
        .map(|port| scrape(&format!("127.0.0.1:{port}")))
        .filter(|body| body.contains("dlock_raft_role{role=\"leader\"} 1"))
        .count();
    assert_eq!(leaders, 1, "one leader among the nodes' metrics");
}

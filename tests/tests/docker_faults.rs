//! The container fault suite: a three-node cluster of `dlock/dlockd` containers on its own
//! Docker network, client containers (`dlock/fault-client`, running
//! `tests/src/bin/dlock-fault-client.rs`) recording checked mutex traffic, and faults injected
//! through the docker CLI, one after another:
//!
//! 1. `docker kill` of the leader, started again 5 s later;
//! 2. `docker pause` of the leader (a frozen process: the stalled-leader case) for 5 s;
//! 3. `docker network disconnect` of the leader (a partition) for 5 s;
//! 4. the same for a follower;
//! 5. a rolling restart (`docker restart`, one node at a time, each healthy before the next).
//!
//! Every port speaks mutual TLS, as deploy/docker-compose.yml runs: the suite makes a
//! development CA, node and client certificates for each run and mounts them into every
//! container (the nodes, their health checks, the client containers) and uses them from the host.
//!
//! The clients' histories (on the host's clock: containers share `CLOCK_MONOTONIC`) are merged
//! with the suite's own (it pins the mutexes from the host, through the published ports) and
//! checked with the history checker: one owner at a time, fencing tokens increasing, no
//! acknowledged operation lost, every wait resolved once, no spurious `WAIT_ABANDONED`. The
//! suite prints, per fault, the longest time without a grant and the time until every client
//! worker was granted a mutex it asked for after the fault began.
//!
//! It needs Docker and the images, so it is `#[ignore]`d in `cargo test`: `.ci/run` runs it
//! after `deploy/build-image.sh --with-fault-client` when a Docker engine answers. Everything it
//! creates carries the label `dlock.fault-suite` and is removed when it ends, fails or is
//! interrupted and run again.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dlock::{Client, ClientConfig};
use dlock_proto::v1 as pb;
use dlock_proto::v1::admin_client::AdminClient;
use dlock_tests::contention::{CLIENT_ID_STRIDE, Pin, check_history};
use dlock_tests::free_port;
use dlock_tests::history::{ClientId, History, Nanos, Op, Outcome, Recorder, monotonic_now};

/// Every container, network and volume the suite makes carries this label.
const LABEL: &str = "dlock.fault-suite";
/// The mutexes the traffic contends on.
const MUTEXES: [&str; 2] = ["fault.a", "fault.b"];
/// Client containers, and workers (each its own session) in each.
const CLIENT_CONTAINERS: usize = 3;
const WORKERS_PER_CLIENT: u64 = 4;
/// How long a fault lasts before it is undone.
const FAULT_FOR: Duration = Duration::from_secs(5);
/// Calm between faults, so that each one's recovery is measured on its own.
const SETTLE: Duration = Duration::from_secs(4);
/// Bound of waiting for a node to be healthy again.
const HEALTHY_DEADLINE: Duration = Duration::from_secs(60);
/// The clients stop by themselves after this even if the suite never tells them.
const CLIENT_MAX_MS: u64 = 8 * 60 * 1000;

/// Runs `docker args`; its stdout, or an error with its stderr.
fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Like [`docker`], on the blocking pool, panicking on failure.
async fn docker_ok(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&refs).unwrap_or_else(|e| panic!("{e}"))
    })
    .await
    .expect("docker task")
}

/// Removes everything labelled [`LABEL`] (this run's, or an interrupted run's).
fn remove_labelled() {
    let filter = format!("label={LABEL}");
    if let Ok(ids) = docker(&["ps", "-aq", "--filter", &filter])
        && !ids.is_empty()
    {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(ids.lines());
        let _ = docker(&args);
    }
    if let Ok(ids) = docker(&["network", "ls", "-q", "--filter", &filter])
        && !ids.is_empty()
    {
        let mut args = vec!["network", "rm"];
        args.extend(ids.lines());
        let _ = docker(&args);
    }
    if let Ok(ids) = docker(&["volume", "ls", "-q", "--filter", &filter])
        && !ids.is_empty()
    {
        let mut args = vec!["volume", "rm", "-f"];
        args.extend(ids.lines());
        let _ = docker(&args);
    }
}

/// Removes the suite's containers, network and volumes when dropped, also on a panic.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_labelled();
    }
}

/// One dlockd container.
struct Node {
    container: String,
    /// Its client port as published on the host.
    host_addr: String,
}

struct Cluster {
    network: String,
    nodes: BTreeMap<u64, Node>,
    /// The development CA, node and client certificates every container mounts at `/certs`.
    certs: tempfile::TempDir,
}

impl Cluster {
    async fn start(prefix: &str) -> Cluster {
        let network = format!("{prefix}-net");
        docker_ok(&["network", "create", "--label", LABEL, &network]).await;
        // Mutual TLS on both ports, as deploy/docker-compose.yml runs: node certificates naming
        // nodeN (the peers' and clients' address) and 127.0.0.1 (the published port), client
        // certificates for the health check, the client containers and the host.
        let certs = tempfile::Builder::new()
            .prefix("dlock-fault-certs-")
            .tempdir()
            .expect("certificate directory");
        let bundle = dlock_tls::certs::generate(
            "dlock fault suite CA",
            &(1..=3)
                .map(|id| dlock_tls::certs::NodeSpec::with_default_hosts(id, &[]))
                .collect::<Vec<_>>(),
            &["ops".into(), "app".into(), "admin".into()],
        )
        .expect("certificates");
        // Readable by the containers' unprivileged user (test certificates only).
        dlock_tls::certs::write(certs.path(), &bundle, false, true).expect("write certificates");
        std::fs::set_permissions(
            certs.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod the certificate directory");
        let certs_mount = format!("{}:/certs:ro", certs.path().display());
        let initial = "1=node1:7701,2=node2:7701,3=node3:7701";
        let mut nodes = BTreeMap::new();
        for id in 1..=3u64 {
            let container = format!("{prefix}-node{id}");
            let volume = format!("{prefix}-data{id}");
            docker_ok(&["volume", "create", "--label", LABEL, &volume]).await;
            let host_addr = format!("127.0.0.1:{}", free_port());
            docker_ok(&[
                "run",
                "-d",
                "--pull",
                "never",
                "--name",
                &container,
                "--label",
                LABEL,
                "--network",
                &network,
                "--network-alias",
                &format!("node{id}"),
                "--hostname",
                &format!("node{id}"),
                "-v",
                &format!("{volume}:/data"),
                "-v",
                &certs_mount,
                "-p",
                &format!("{host_addr}:7700"),
                "-e",
                &format!("DLOCKD_NODE_ID={id}"),
                "-e",
                &format!("DLOCKD_INITIAL_CLUSTER={initial}"),
                "-e",
                &format!("DLOCKD_ADVERTISE_CLIENT_ADDR=node{id}:7700"),
                "-e",
                &format!("DLOCKD_CERT_FILE=/certs/node-{id}.pem"),
                "-e",
                &format!("DLOCKD_KEY_FILE=/certs/node-{id}.key"),
                "-e",
                "DLOCKD_TRUSTED_CA_FILE=/certs/ca.pem",
                "-e",
                "DLOCKD_CLIENT_CERT_AUTH=true",
                "-e",
                &format!("DLOCKD_PEER_CERT_FILE=/certs/node-{id}.pem"),
                "-e",
                &format!("DLOCKD_PEER_KEY_FILE=/certs/node-{id}.key"),
                "-e",
                "DLOCKD_PEER_TRUSTED_CA_FILE=/certs/ca.pem",
                "-e",
                // For the image's health check (dlockctl).
                "DLOCK_CACERT=/certs/ca.pem",
                "-e",
                "DLOCK_CERT=/certs/client-ops.pem",
                "-e",
                "DLOCK_KEY=/certs/client-ops.key",
                "-e",
                "RUST_LOG=info",
                "dlock/dlockd:latest",
            ])
            .await;
            nodes.insert(
                id,
                Node {
                    container,
                    host_addr,
                },
            );
        }
        let cluster = Cluster {
            network,
            nodes,
            certs,
        };
        for id in 1..=3 {
            cluster.wait_healthy(id).await;
        }
        cluster
    }

    /// The client TLS of client certificate `name` (`client-NAME.pem`).
    fn tls(&self, name: &str) -> Option<dlock::ClientTls> {
        let dir = self.certs.path();
        dlock::tls_from_files(
            Some(&dir.join("ca.pem")),
            Some(&dir.join(format!("client-{name}.pem"))),
            Some(&dir.join(format!("client-{name}.key"))),
        )
        .expect("client certificates")
    }

    fn endpoints(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.host_addr.clone()).collect()
    }

    /// Waits until node `id`'s container reports healthy (its `dlockctl health` check).
    async fn wait_healthy(&self, id: u64) {
        let container = &self.nodes[&id].container;
        let deadline = tokio::time::Instant::now() + HEALTHY_DEADLINE;
        loop {
            let health = docker_ok(&["inspect", "-f", "{{.State.Health.Status}}", container]).await;
            if health == "healthy" {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let logs = docker(&["logs", "--tail", "30", container]).unwrap_or_default();
                panic!("node {id} not healthy within {HEALTHY_DEADLINE:?} ({health}):\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until node `id` is back in the cluster after a fault: it answers through its
    /// published port, knows a leader, and has applied what that leader had committed when
    /// first asked. (Its container's health status may still be a stale "healthy" from before
    /// the fault: Docker needs a few failed checks to notice.)
    async fn wait_rejoined(&self, id: u64) {
        let deadline = tokio::time::Instant::now() + HEALTHY_DEADLINE;
        let mut target = None;
        loop {
            // The leader of the highest term: a thawed old leader still believes it leads in
            // its old term until it hears the new one.
            let (leader, lead) = self.leader_status().await;
            if let Some(own) = status(&self.nodes[&id].host_addr, self.tls("admin")).await
                && own.leader_id == leader
                && own.term == lead.term
            {
                let target = *target.get_or_insert(lead.commit);
                if own.applied >= target {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {id} did not rejoin within {HEALTHY_DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The node that says it leads, in the highest term any node reports.
    async fn leader(&self) -> u64 {
        self.leader_status().await.0
    }

    /// [`Cluster::leader`] with that leader's own status.
    async fn leader_status(&self) -> (u64, pb::NodeStatus) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut best: Option<pb::NodeStatus> = None;
            for node in self.nodes.values() {
                if let Some(status) = status(&node.host_addr, self.tls("admin")).await
                    && status.role() == pb::Role::Leader
                    && best.as_ref().is_none_or(|b| status.term > b.term)
                {
                    best = Some(status);
                }
            }
            if let Some(best) = best {
                return (best.node_id, best);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no leader within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A node's own status through its published port (mutual TLS with `tls`), if it answers
/// within a second.
async fn status(addr: &str, tls: Option<dlock::ClientTls>) -> Option<pb::NodeStatus> {
    let call = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_with_connector(dlock_tls::Connector::new(tls))
            .await
            .ok()?;
        let mut admin = AdminClient::new(channel);
        admin
            .status(pb::ClusterStatusRequest { all: false })
            .await
            .ok()?
            .into_inner()
            .node
    };
    tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .ok()
        .flatten()
}

/// One injected fault: what, and when it began and was undone (the host's monotonic clock).
struct Fault {
    name: String,
    began: Nanos,
    undone: Nanos,
}

/// What a fault does to its node's container.
#[derive(Clone, Copy)]
enum Action {
    /// `docker kill` (SIGKILL), later `docker start`.
    Kill,
    /// `docker pause` (the cgroup freezer), later `docker unpause`.
    Pause,
    /// `docker network disconnect`, later `docker network connect` with its alias.
    Disconnect,
}

/// Injects the faults one after another (see the module docs).
async fn inject_faults(cluster: &Cluster) -> Vec<Fault> {
    let mut faults = Vec::new();
    let network = cluster.network.as_str();
    for (name, action, on_leader) in [
        ("kill leader", Action::Kill, true),
        ("pause leader", Action::Pause, true),
        ("partition leader", Action::Disconnect, true),
        ("partition follower", Action::Disconnect, false),
    ] {
        let leader = cluster.leader().await;
        let victim = if on_leader {
            leader
        } else {
            (1..=3).find(|&id| id != leader).expect("a follower")
        };
        let container = cluster.nodes[&victim].container.as_str();
        let alias = format!("node{victim}");
        let began = monotonic_now();
        match action {
            Action::Kill => docker_ok(&["kill", container]).await,
            Action::Pause => docker_ok(&["pause", container]).await,
            Action::Disconnect => docker_ok(&["network", "disconnect", network, container]).await,
        };
        tokio::time::sleep(FAULT_FOR).await;
        match action {
            Action::Kill => docker_ok(&["start", container]).await,
            Action::Pause => docker_ok(&["unpause", container]).await,
            Action::Disconnect => {
                docker_ok(&["network", "connect", "--alias", &alias, network, container]).await
            }
        };
        let undone = monotonic_now();
        cluster.wait_rejoined(victim).await;
        eprintln!("fault: {name} (node {victim}) for {FAULT_FOR:?}, rejoined");
        faults.push(Fault {
            name: format!("{name} (node {victim})"),
            began,
            undone,
        });
        tokio::time::sleep(SETTLE).await;
    }
    let began = monotonic_now();
    for id in 1..=3 {
        docker_ok(&["restart", "-t", "10", &cluster.nodes[&id].container]).await;
        cluster.wait_rejoined(id).await;
        cluster.wait_healthy(id).await;
    }
    faults.push(Fault {
        name: "rolling restart".into(),
        began,
        undone: monotonic_now(),
    });
    eprintln!("fault: rolling restart done");
    tokio::time::sleep(SETTLE).await;
    faults
}

/// Each worker's grants, `(asked, granted)`, by `(process, worker)`.
type WorkerGrants = BTreeMap<(u64, u64), Vec<(Nanos, Nanos)>>;

/// Grant times (when the grant's reply was read) and, per worker, its grants with the time
/// each was asked for.
fn grants(history: &History) -> (Vec<Nanos>, WorkerGrants) {
    let mut all = Vec::new();
    let mut per_worker = WorkerGrants::new();
    for record in &history.records {
        if let (Op::Acquire { .. }, Outcome::Acquired { .. }) = (&record.op, record.outcome())
            && let Some(at) = record.returned()
        {
            all.push(at);
            // Client ids are base + (worker + 1) * CLIENT_ID_STRIDE + incarnation, base a
            // multiple of 2^32 (dlock_tests::contention).
            let worker = (
                record.client.0 >> 32,
                (record.client.0 & 0xFFFF_FFFF) / CLIENT_ID_STRIDE,
            );
            per_worker
                .entry(worker)
                .or_default()
                .push((record.invoke, at));
        }
    }
    all.sort_unstable();
    (all, per_worker)
}

fn ms(nanos: Nanos) -> f64 {
    nanos as f64 / 1e6
}

/// Prints, per fault, the longest time without a grant (from the last grant before the fault
/// to the end of its recovery period) and the time until every worker that had been granted
/// anything before was granted a mutex it asked for after the fault began.
fn print_figures(history: &History, faults: &[Fault], end: Nanos) {
    let (all, per_worker) = grants(history);
    eprintln!(
        "{:<28} {:>10} {:>22} {:>26}",
        "fault", "lasted ms", "longest no-grant ms", "every worker granted ms"
    );
    for (i, fault) in faults.iter().enumerate() {
        let until = faults.get(i + 1).map_or(end, |next| next.began);
        let before = all.iter().rev().find(|&&t| t <= fault.began).copied();
        let mut last = before.unwrap_or(fault.began);
        let mut gap = 0;
        for &t in all.iter().filter(|&&t| t > fault.began && t <= until) {
            gap = gap.max(t - last);
            last = t;
        }
        gap = gap.max(until.saturating_sub(last));
        let mut every = Some(0);
        for grants in per_worker.values() {
            if !grants.iter().any(|(_, at)| *at <= fault.began) {
                continue; // a worker that had not started yet
            }
            match grants.iter().find(|(asked, _)| *asked > fault.began) {
                Some((_, at)) => every = every.map(|e: Nanos| e.max(at - fault.began)),
                None => every = None,
            }
        }
        let every = every.map_or("never".to_owned(), |e| format!("{:.0}", ms(e)));
        eprintln!(
            "{:<28} {:>10.0} {:>22.0} {:>26}",
            fault.name,
            ms(fault.undone - fault.began),
            ms(gap),
            every
        );
    }
}

fn docker_available() -> bool {
    docker(&["info", "--format", "{{.ServerVersion}}"]).is_ok()
}

fn images_present() -> Result<(), String> {
    for image in ["dlock/dlockd:latest", "dlock/fault-client:latest"] {
        docker(&["image", "inspect", "-f", "{{.Id}}", image]).map_err(|_| {
            format!("image {image} is missing: run deploy/build-image.sh --with-fault-client")
        })?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine and the images; .ci/run runs it"]
async fn faults_between_containers_keep_the_lock_service_correct() {
    if !docker_available() {
        eprintln!("SKIPPED: no Docker engine answers `docker info`");
        return;
    }
    images_present().unwrap_or_else(|e| panic!("{e}"));
    remove_labelled();
    let _cleanup = Cleanup;
    let prefix = format!("dlockfs{}", std::process::id());
    let histories = tempfile::Builder::new()
        .prefix("dlock-fault-histories-")
        .tempdir()
        .expect("history directory");
    // The clients run as an unprivileged user in their containers.
    std::fs::set_permissions(
        histories.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod the history directory");

    let started = monotonic_now();
    let cluster = Cluster::start(&prefix).await;
    eprintln!(
        "cluster healthy in {:.1} s; leader node {}",
        ms(monotonic_now() - started) / 1e3,
        cluster.leader().await
    );

    // The suite pins the mutexes from the host, through the published ports (the nodes
    // advertise their service names, which the host cannot resolve: the client falls back).
    let rec = Recorder::system_monotonic();
    let mut config = ClientConfig::new(cluster.endpoints());
    config.request_timeout = Duration::from_secs(20);
    config.tls = cluster.tls("app");
    let client = Client::connect_with_config(config)
        .await
        .expect("host client");
    let pin = Pin::open(&client, &rec, Duration::from_secs(30), ClientId(1)).await;
    for name in MUTEXES {
        pin.mutex(name).await;
    }

    let mut clients = Vec::new();
    for j in 0..CLIENT_CONTAINERS {
        let container = format!("{prefix}-client{j}");
        docker_ok(&[
            "run",
            "-d",
            "--pull",
            "never",
            "--name",
            &container,
            "--label",
            LABEL,
            "--network",
            &cluster.network,
            "-v",
            &format!("{}:/histories", histories.path().display()),
            "-v",
            &format!("{}:/certs:ro", cluster.certs.path().display()),
            "-e",
            "DLOCK_ENDPOINTS=node1:7700,node2:7700,node3:7700",
            "-e",
            "DLOCK_CACERT=/certs/ca.pem",
            "-e",
            "DLOCK_CERT=/certs/client-app.pem",
            "-e",
            "DLOCK_KEY=/certs/client-app.key",
            "dlock/fault-client:latest",
            "--out",
            "/histories",
            "--duration-ms",
            &CLIENT_MAX_MS.to_string(),
            "--workers",
            &WORKERS_PER_CLIENT.to_string(),
            "--mutexes",
            &MUTEXES.join(","),
            "--client-index",
            &j.to_string(),
        ])
        .await;
        clients.push(container);
    }
    tokio::time::sleep(SETTLE).await;

    let faults = inject_faults(&cluster).await;
    let end = monotonic_now();

    std::fs::write(histories.path().join("STOP"), b"").expect("tell the clients to stop");
    for container in &clients {
        let code = tokio::time::timeout(Duration::from_secs(60), docker_ok(&["wait", container]))
            .await
            .unwrap_or_else(|_| panic!("client {container} did not stop"));
        let logs = docker(&["logs", "--tail", "5", container]).unwrap_or_default();
        eprintln!("{container} exited {code}:\n{logs}");
        assert_eq!(code, "0", "client {container} failed");
    }
    pin.confirm_alive();

    let mut parts = vec![rec.history()];
    for entry in std::fs::read_dir(histories.path()).expect("read histories") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            parts.push(read_history(&path));
        }
    }
    assert_eq!(parts.len(), 1 + CLIENT_CONTAINERS, "one history per client");
    let history = History::merge(parts);
    let report = check_history(&history, 200);
    eprintln!("checked: {report}");
    print_figures(&history, &faults, end);
}

fn read_history(path: &Path) -> History {
    let bytes = std::fs::read(path).expect("read a history");
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{} is not a history: {e}", path.display()))
}

//! Clusters of real `dlockd` processes for end-to-end fault tests: [`ProcCluster`] starts N
//! nodes on free loopback ports with `--initial-cluster` naming all of them, each with its own
//! data directory and log file, and kills (`SIGKILL`), stops (`SIGTERM`), restarts, wipes and
//! adds nodes. It finds the leader and drives membership changes through the `dlock.v1.Admin`
//! service, polling with deadlines.
//!
//! Every node's stdout and stderr go to `<dir>/nodeN.log` (appended across restarts; `RUST_LOG`
//! defaults to `info`). When a test panics, the cluster's directory is kept and its path and
//! the tail of every log are printed, so a failure can be investigated after the fact (set
//! `DLOCK_KEEP_CLUSTER=1` to keep it after a passing test too).
//!
//! Children are tied to the test process with `PR_SET_PDEATHSIG` and spawned from one thread
//! that lives as long as the process (the signal fires when the *spawning thread* exits, and
//! tokio's blocking threads come and go), so a crashed test leaves no stray servers behind.
//!
//! ```no_run
//! # async fn demo() {
//! use dlock_tests::procs::ProcCluster;
//! let mut cluster = ProcCluster::start(3, &["--tick-ms", "50"]).await;
//! let leader = cluster.leader().await;
//! cluster.kill9(leader);
//! let next = cluster.leader().await;
//! assert_ne!(next, leader);
//! let client = dlock::Client::connect(cluster.endpoint_list()).await.unwrap();
//! # let _ = client;
//! # }
//! ```

use rustix::process::Signal;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use dlock_proto::v1 as pb;
use dlock_proto::v1::admin_client::AdminClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::{START_DEADLINE, die_with_parent, free_port, target_binary};

/// How long [`ProcCluster::leader`] waits for a leader that a quorum of voters follows.
pub const LEADER_DEADLINE: Duration = Duration::from_secs(20);
/// How long a membership change may keep being retried (leader changes, a change in flight).
pub const ADMIN_DEADLINE: Duration = Duration::from_secs(20);
/// How long [`ProcCluster::wait_caught_up`] waits for a node to apply the leader's commit index.
pub const CATCH_UP_DEADLINE: Duration = Duration::from_secs(30);
/// How long a node may take to exit after `SIGTERM`.
pub const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// How long [`ProcCluster::wait_for_log`] waits for a line.
pub const LOG_DEADLINE: Duration = Duration::from_secs(30);
/// Timeout of one admin RPC (and of its TCP connect).
const RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// Poll interval while waiting for a condition (the deadlines above bound every wait).
const POLL: Duration = Duration::from_millis(25);
/// Lines of each node's log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// One dlockd process of a [`ProcCluster`] (running or not).
#[derive(Debug)]
pub struct ProcNode {
    /// Raft node id.
    pub id: u64,
    /// Client API address (`dlock.v1.Dlock` and `dlock.v1.Admin`).
    pub client_addr: SocketAddr,
    /// Peer (Raft transport) address.
    pub peer_addr: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Log file (stdout and stderr of every incarnation).
    pub log: PathBuf,
    /// The `--initial-cluster` it is started with.
    initial_cluster: String,
    /// Extra environment of every incarnation.
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl ProcNode {
    /// `host:port` of the client API, as the client and `DLOCK_ENDPOINTS` take it.
    pub fn endpoint(&self) -> String {
        self.client_addr.to_string()
    }

    /// Whether the process was started and not yet killed or stopped by the harness.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// N real dlockd processes forming one Raft cluster (see the module docs).
pub struct ProcCluster {
    dir: Option<tempfile::TempDir>,
    nodes: BTreeMap<u64, ProcNode>,
    extra: Vec<String>,
    /// Mutual TLS on both ports with the certificates in [`ProcCluster::certs_dir`].
    tls: bool,
}

/// The client certificates a TLS cluster's directory holds (`client-<name>.pem`/`.key`).
pub const TLS_CLIENTS: [&str; 3] = ["admin", "alice", "bob"];

/// How many node certificates a TLS cluster's directory holds (nodes added later need one).
pub const TLS_NODES: u64 = 5;

impl ProcCluster {
    /// Starts nodes `1..=n` with `--initial-cluster` naming all of them plus the `extra` flags
    /// (e.g. `--tick-ms 50`), and waits until each accepts connections (not for a leader: see
    /// [`ProcCluster::leader`]).
    ///
    /// # Panics
    ///
    /// If a node exits or does not listen within [`START_DEADLINE`].
    pub async fn start(n: u64, extra: &[&str]) -> ProcCluster {
        ProcCluster::start_with_env(n, extra, &[]).await
    }

    /// Like [`ProcCluster::start`], with extra environment variables per node, `(node, name,
    /// value)`, kept for every restart (e.g. a test-only clock skew).
    pub async fn start_with_env(n: u64, extra: &[&str], env: &[(u64, &str, &str)]) -> ProcCluster {
        ProcCluster::launch(n, extra, env, false).await
    }

    /// Like [`ProcCluster::start`], with mutual TLS on the client and peer ports: a CA, node
    /// certificates for ids `1..=`[`TLS_NODES`] and client certificates for [`TLS_CLIENTS`]
    /// are made in [`ProcCluster::certs_dir`]; every node requires client certificates.
    pub async fn start_tls(n: u64, extra: &[&str]) -> ProcCluster {
        ProcCluster::launch(n, extra, &[], true).await
    }

    async fn launch(n: u64, extra: &[&str], env: &[(u64, &str, &str)], tls: bool) -> ProcCluster {
        let dir = tempfile::Builder::new()
            .prefix("dlock-cluster-")
            .tempdir()
            .expect("temporary cluster directory");
        let mut cluster = ProcCluster {
            dir: Some(dir),
            nodes: BTreeMap::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls,
        };
        if tls {
            let nodes: Vec<_> = (1..=TLS_NODES)
                .map(|id| dlock_tls::certs::NodeSpec::with_default_hosts(id, &[]))
                .collect();
            let clients: Vec<String> = TLS_CLIENTS.iter().map(|c| c.to_string()).collect();
            let bundle = dlock_tls::certs::generate("test CA", &nodes, &clients)
                .expect("generate certificates");
            dlock_tls::certs::write(&cluster.certs_dir(), &bundle, false, false)
                .expect("write certificates");
        }
        for id in 1..=n {
            cluster.add_node_record(id, String::new());
        }
        let initial = cluster.initial_cluster_of(&(1..=n).collect::<Vec<_>>());
        for node in cluster.nodes.values_mut() {
            node.initial_cluster = initial.clone();
        }
        for (id, name, value) in env {
            let node = cluster
                .nodes
                .get_mut(id)
                .expect("env for a node of the cluster");
            node.env.push(((*name).to_owned(), (*value).to_owned()));
        }
        for id in 1..=n {
            cluster.spawn(id);
        }
        for id in 1..=n {
            cluster.wait_listening(id).await;
        }
        cluster
    }

    /// The cluster's directory (data directories and logs).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("directory kept until drop").path()
    }

    /// Where a TLS cluster's certificates are (`ca.pem`, `node-<id>.pem`,
    /// `client-<name>.pem`, and their `.key` files).
    pub fn certs_dir(&self) -> PathBuf {
        self.dir().join("certs")
    }

    /// TLS settings of client `name` (one of [`TLS_CLIENTS`]) for a TLS cluster; `None` for a
    /// plaintext one.
    pub fn client_tls(&self, name: &str) -> Option<dlock::ClientTls> {
        if !self.tls {
            return None;
        }
        let certs = self.certs_dir();
        let tls = dlock::tls_from_files(
            Some(&certs.join("ca.pem")),
            Some(&certs.join(format!("client-{name}.pem"))),
            Some(&certs.join(format!("client-{name}.key"))),
        )
        .expect("client TLS settings");
        Some(tls.expect("a CA was given"))
    }

    /// A client configuration for every node, with client `name`'s certificate on a TLS
    /// cluster.
    pub fn client_config(&self, name: &str) -> dlock::ClientConfig {
        let mut config = dlock::ClientConfig::new(self.endpoint_list());
        config.tls = self.client_tls(name);
        config
    }

    /// Node `id`.
    ///
    /// # Panics
    ///
    /// If there is no such node.
    pub fn node(&self, id: u64) -> &ProcNode {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The ids of every node ever started, running or not.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// The ids of the running nodes.
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.is_running())
            .map(|n| n.id)
            .collect()
    }

    /// Every node's client address (`host:port`), in id order, for [`dlock::Client::connect`].
    pub fn endpoint_list(&self) -> Vec<String> {
        self.nodes.values().map(ProcNode::endpoint).collect()
    }

    /// The value for `DLOCK_ENDPOINTS`: every node's client address, comma-separated.
    pub fn endpoints(&self) -> String {
        self.endpoint_list().join(",")
    }

    /// `id=peer,...` for `--initial-cluster` naming `ids`.
    pub fn initial_cluster_of(&self, ids: &[u64]) -> String {
        ids.iter()
            .map(|id| format!("{id}={}", self.node(*id).peer_addr))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills node `id` with SIGKILL (no chance to flush or clean up) and reaps it. No-op if it
    /// is not running.
    pub fn kill9(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops node `id` with SIGTERM (a graceful shutdown) and waits for it to exit.
    ///
    /// # Panics
    ///
    /// If it does not exit within [`STOP_DEADLINE`] (it is then killed), or exits with a
    /// failure status.
    pub async fn stop(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let Some(mut child) = node.child.take() else {
            return;
        };
        // Our own child, not reaped yet, so the pid is still its.
        let _ = kill(child.id(), Signal::TERM);
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    assert!(
                        status.success(),
                        "node {id} exited with {status} after SIGTERM"
                    );
                    return;
                }
                Ok(None) => {}
                Err(err) => panic!("waiting for node {id}: {err}"),
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node {id} did not exit within {STOP_DEADLINE:?} of SIGTERM");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Freezes node `id` with `SIGSTOP` (a GC pause, a VM migration, a disk stall): its sockets
    /// stay open and nothing answers. [`ProcCluster::thaw`] continues it.
    pub fn freeze(&self, id: u64) {
        self.signal(id, Signal::STOP);
    }

    /// Continues a node frozen by [`ProcCluster::freeze`] (`SIGCONT`).
    pub fn thaw(&self, id: u64) {
        self.signal(id, Signal::CONT);
    }

    /// Sends node `id` `SIGHUP` (dlockd reads its TLS files again).
    pub fn hangup(&self, id: u64) {
        self.signal(id, Signal::HUP);
    }

    fn signal(&self, id: u64, signal: Signal) {
        // A pid this harness spawned and has not reaped.
        let pid = self.node(id).pid().expect("the node is running");
        if let Err(err) = kill(pid, signal) {
            panic!("kill({pid}, {signal:?}): {err}");
        }
    }

    /// Starts node `id` again with its data directory, addresses and flags (after
    /// [`ProcCluster::kill9`], [`ProcCluster::stop`] or [`ProcCluster::wipe`]) and waits until
    /// it accepts connections.
    ///
    /// # Panics
    ///
    /// If it is running, or does not come up.
    pub async fn restart(&mut self, id: u64) {
        assert!(!self.node(id).is_running(), "node {id} is running");
        self.spawn(id);
        self.wait_listening(id).await;
    }

    /// Sets the environment variable `name` of node `id` for its next incarnations (a restart
    /// with another configuration).
    pub fn set_env(&mut self, id: u64, name: &str, value: &str) {
        let node = self.nodes.get_mut(&id).expect("known node");
        node.env.retain(|(k, _)| k != name);
        node.env.push((name.to_owned(), value.to_owned()));
    }

    /// Kills node `id` if it runs and deletes its data directory: it starts from nothing next
    /// time.
    pub fn wipe(&mut self, id: u64) {
        self.kill9(id);
        let dir = self.node(id).data_dir.clone();
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("delete data directory");
        }
    }

    /// Restarts node `id` (stopped, usually wiped) as a node joining the existing cluster of
    /// `contacts`: `--initial-cluster` names only them, so an empty data directory waits to
    /// be added ([`ProcCluster::add_learner`]) instead of bootstrapping.
    pub async fn rejoin(&mut self, id: u64, contacts: &[u64]) {
        assert!(!contacts.contains(&id), "a joining node is not a contact");
        let initial = self.initial_cluster_of(contacts);
        self.nodes.get_mut(&id).expect("known node").initial_cluster = initial;
        self.restart(id).await;
    }

    /// Starts a brand-new node `id` on free ports that joins the cluster of `contacts` (see
    /// [`ProcCluster::rejoin`]); add it with [`ProcCluster::add_learner`].
    ///
    /// # Panics
    ///
    /// If `id` is already used or the node does not come up.
    pub async fn start_joining(&mut self, id: u64, contacts: &[u64]) {
        assert!(!self.nodes.contains_key(&id), "node {id} exists");
        let initial = self.initial_cluster_of(contacts);
        self.add_node_record(id, initial);
        self.spawn(id);
        self.wait_listening(id).await;
    }

    /// Waits until node `id`'s log has `count` lines that contain every one of `parts`.
    ///
    /// # Panics
    ///
    /// If it does not within [`LOG_DEADLINE`] (the log is printed).
    pub async fn wait_for_log(&self, id: u64, parts: &[&str], count: usize) {
        let deadline = Instant::now() + LOG_DEADLINE;
        loop {
            let log = std::fs::read_to_string(&self.node(id).log).unwrap_or_default();
            let seen = log
                .lines()
                .filter(|line| parts.iter().all(|p| line.contains(p)))
                .count();
            if seen >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {parts:?} in node {id}'s log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Node `id`'s own view (`Admin.Status` without `all`).
    ///
    /// # Errors
    ///
    /// The RPC's status (connection failures are `UNAVAILABLE`).
    pub async fn status(&self, id: u64) -> Result<pb::ClusterStatusReply, Status> {
        let mut client = admin_client(self.node(id).client_addr, self.client_tls("admin")).await?;
        Ok(client
            .status(pb::ClusterStatusRequest { all: false })
            .await?
            .into_inner())
    }

    /// The leader's id, once one running node reports itself leader and a quorum of the voters
    /// it lists report it as their leader in the same term. Polls every running node.
    ///
    /// # Panics
    ///
    /// If there is no such leader within [`LEADER_DEADLINE`].
    pub async fn leader(&self) -> u64 {
        self.leader_status().await.node.expect("own status").node_id
    }

    /// The leader's own `Status` reply (as [`ProcCluster::leader`]): its commit index and its
    /// view of the members with their replication progress.
    ///
    /// # Panics
    ///
    /// As [`ProcCluster::leader`].
    pub async fn leader_status(&self) -> pb::ClusterStatusReply {
        let deadline = Instant::now() + LEADER_DEADLINE;
        loop {
            let mut views: BTreeMap<u64, pb::ClusterStatusReply> = BTreeMap::new();
            for id in self.running() {
                if let Ok(reply) = self.status(id).await {
                    views.insert(id, reply);
                }
            }
            if let Some(reply) = agreed_leader(&views) {
                return reply;
            }
            let summary: Vec<String> = views
                .values()
                .filter_map(|v| v.node.as_ref())
                .map(|n| {
                    format!(
                        "{}:{:?} term {} leader {}",
                        n.node_id,
                        n.role(),
                        n.term,
                        n.leader_id
                    )
                })
                .collect();
            assert!(
                Instant::now() < deadline,
                "no leader followed by a quorum within {LEADER_DEADLINE:?}: {summary:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until node `id` has applied everything the leader had committed when the wait
    /// began (so it caught up, from a snapshot if need be) and returns its applied index.
    ///
    /// # Panics
    ///
    /// If it does not within [`CATCH_UP_DEADLINE`].
    pub async fn wait_caught_up(&self, id: u64) -> u64 {
        let target = self.leader_status().await.node.expect("own status").commit;
        let deadline = Instant::now() + CATCH_UP_DEADLINE;
        let mut last = None;
        loop {
            if let Ok(reply) = self.status(id).await {
                let node = reply.node.expect("own status");
                if node.applied >= target {
                    return node.applied;
                }
                last = Some((node.role(), node.term, node.commit, node.applied));
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not apply the leader's commit index {target} within \
                 {CATCH_UP_DEADLINE:?}; last seen (role, term, commit, applied) {last:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the leader lists exactly `expected` as members (`(id, voter)` pairs).
    ///
    /// # Panics
    ///
    /// If it does not within [`ADMIN_DEADLINE`].
    pub async fn wait_members(&self, expected: &[(u64, bool)]) {
        let mut expected = expected.to_vec();
        expected.sort_unstable();
        let deadline = Instant::now() + ADMIN_DEADLINE;
        loop {
            let reply = self.leader_status().await;
            let mut members: Vec<(u64, bool)> =
                reply.members.iter().map(|m| (m.node_id, m.voter)).collect();
            members.sort_unstable();
            if members == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "members are {members:?}, expected {expected:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// `Admin.AddLearner` of node `id` at its peer address (see [`ProcCluster::admin`]).
    ///
    /// # Errors
    ///
    /// As [`ProcCluster::admin`].
    pub async fn add_learner(&self, id: u64) -> Result<pb::MembershipReply, Status> {
        let request = pb::AddMemberRequest {
            node_id: id,
            peer_addr: self.node(id).peer_addr.to_string(),
        };
        self.admin("AddLearner", |mut c| {
            let request = request.clone();
            async move { c.add_learner(request).await }
        })
        .await
    }

    /// `Admin.AddVoter` of node `id` at its peer address (see [`ProcCluster::admin`]).
    ///
    /// # Errors
    ///
    /// As [`ProcCluster::admin`].
    pub async fn add_voter(&self, id: u64) -> Result<pb::MembershipReply, Status> {
        let request = pb::AddMemberRequest {
            node_id: id,
            peer_addr: self.node(id).peer_addr.to_string(),
        };
        self.admin("AddVoter", |mut c| {
            let request = request.clone();
            async move { c.add_voter(request).await }
        })
        .await
    }

    /// `Admin.PromoteLearner` of node `id` (see [`ProcCluster::admin`]).
    ///
    /// # Errors
    ///
    /// As [`ProcCluster::admin`].
    pub async fn promote(&self, id: u64) -> Result<pb::MembershipReply, Status> {
        let request = pb::NodeRequest { node_id: id };
        self.admin("PromoteLearner", |mut c| async move {
            c.promote_learner(request).await
        })
        .await
    }

    /// `Admin.RemoveNode` of node `id` (see [`ProcCluster::admin`]); removing the leader is
    /// answered with a hint to the new leader, which this follows.
    ///
    /// # Errors
    ///
    /// As [`ProcCluster::admin`].
    pub async fn remove(&self, id: u64) -> Result<pb::MembershipReply, Status> {
        let request = pb::NodeRequest { node_id: id };
        self.admin(
            "RemoveNode",
            |mut c| async move { c.remove_node(request).await },
        )
        .await
    }

    /// Runs one membership call: sends it to the leader, follows `dlock-leader-hint` on
    /// `UNAVAILABLE`, and retries (each retry printed) on `UNAVAILABLE` without a hint (no
    /// leader yet) and on `FAILED_PRECONDITION` (another change, or a new leader's first
    /// entry, not applied yet) until [`ADMIN_DEADLINE`].
    ///
    /// # Errors
    ///
    /// Any other status at once; the last status at the deadline. A retry after an
    /// `UNAVAILABLE` that was not "not the leader" may find the change already applied
    /// (`INVALID_ARGUMENT`): the error message then says so.
    pub async fn admin<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, Status>
    where
        F: FnMut(AdminClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + ADMIN_DEADLINE;
        let mut target = self.leader().await;
        let mut ambiguous = false;
        loop {
            let result =
                match admin_client(self.node(target).client_addr, self.client_tls("admin")).await {
                    Ok(client) => call(client).await.map(tonic::Response::into_inner),
                    Err(status) => Err(status),
                };
            let status = match result {
                Ok(reply) => return Ok(reply),
                Err(status) => status,
            };
            let retry = match status.code() {
                Code::Unavailable => true,
                Code::FailedPrecondition => true,
                Code::InvalidArgument if ambiguous => {
                    return Err(Status::invalid_argument(format!(
                        "{} (after an attempt with an unknown outcome, which may have \
                         applied the change)",
                        status.message()
                    )));
                }
                _ => false,
            };
            if !retry || Instant::now() >= deadline {
                return Err(status);
            }
            if status.code() == Code::Unavailable && !status.message().contains("not the leader") {
                ambiguous = true;
            }
            let hint = status
                .metadata()
                .get(dlock_proto::LEADER_HINT_METADATA)
                .and_then(|v| v.to_str().ok())
                .and_then(|addr| self.id_of_client_addr(addr));
            eprintln!(
                "admin {what} at node {target}: {:?} {:?}; retrying{}",
                status.code(),
                status.message(),
                hint.map(|h| format!(" at hinted node {h}"))
                    .unwrap_or_default()
            );
            tokio::time::sleep(POLL).await;
            match hint {
                Some(hinted) if self.node(hinted).is_running() => target = hinted,
                _ => target = self.leader().await,
            }
        }
    }

    /// The id of the node whose client address is `addr` (`host:port` or `http://host:port`).
    fn id_of_client_addr(&self, addr: &str) -> Option<u64> {
        let addr = addr.trim().trim_start_matches("http://");
        self.nodes
            .values()
            .find(|n| n.client_addr.to_string() == addr)
            .map(|n| n.id)
    }

    fn add_node_record(&mut self, id: u64, initial_cluster: String) {
        let data_dir = self.dir().join(format!("node{id}"));
        let log = self.dir().join(format!("node{id}.log"));
        let node = ProcNode {
            id,
            client_addr: loopback(free_port()),
            peer_addr: loopback(free_port()),
            data_dir,
            log,
            initial_cluster,
            env: Vec::new(),
            child: None,
        };
        self.nodes.insert(id, node);
    }

    fn spawn(&mut self, id: u64) {
        let mut extra = self.extra.clone();
        if self.tls {
            let certs = self.certs_dir();
            let file = |name: String| certs.join(name).display().to_string();
            for (flag, path) in [
                ("--cert-file", file(format!("node-{id}.pem"))),
                ("--key-file", file(format!("node-{id}.key"))),
                ("--trusted-ca-file", file("ca.pem".into())),
                ("--peer-cert-file", file(format!("node-{id}.pem"))),
                ("--peer-key-file", file(format!("node-{id}.key"))),
                ("--peer-trusted-ca-file", file("ca.pem".into())),
            ] {
                extra.push(flag.into());
                extra.push(path);
            }
            extra.push("--client-cert-auth".into());
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        std::fs::create_dir_all(&node.data_dir).expect("create data directory");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open node log");
        let mut command = Command::new(target_binary("dlockd"));
        command.envs(node.env.iter().map(|(k, v)| (k, v)));
        command
            .arg("--node-id")
            .arg(id.to_string())
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--client-addr")
            .arg(node.client_addr.to_string())
            .arg("--peer-addr")
            .arg(node.peer_addr.to_string())
            .arg("--initial-cluster")
            .arg(&node.initial_cluster)
            .args(&extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        die_with_parent(&mut command);
        node.child = Some(spawn_from_long_lived_thread(command));
    }

    async fn wait_listening(&mut self, id: u64) {
        let deadline = Instant::now() + START_DEADLINE;
        let node = self.nodes.get_mut(&id).expect("known node");
        loop {
            let connect = tokio::net::TcpStream::connect(node.client_addr);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
                return;
            }
            let child = node.child.as_mut().expect("spawned");
            if let Ok(Some(status)) = child.try_wait() {
                node.child = None;
                panic!(
                    "node {id} exited during start-up: {status}; log:\n{}",
                    tail(&node.log, LOG_TAIL_LINES)
                );
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not listen on {} within {START_DEADLINE:?}",
                node.client_addr
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let keep = std::thread::panicking() || std::env::var_os("DLOCK_KEEP_CLUSTER").is_some();
        if keep && let Some(dir) = self.dir.take() {
            let path = dir.keep();
            eprintln!(
                "=== cluster directory kept for inspection: {}",
                path.display()
            );
            for node in self.nodes.values() {
                eprintln!(
                    "=== node {} (client {}, peer {}) log tail, {}:\n{}",
                    node.id,
                    node.client_addr,
                    node.peer_addr,
                    node.log.display(),
                    tail(&node.log, LOG_TAIL_LINES)
                );
            }
        }
    }
}

/// Among the nodes' own views, the leader that a quorum of the voters it lists follows in its
/// term (its own reply), if any.
fn agreed_leader(views: &BTreeMap<u64, pb::ClusterStatusReply>) -> Option<pb::ClusterStatusReply> {
    views.values().find_map(|reply| {
        let own = reply.node.as_ref()?;
        if own.role() != pb::Role::Leader {
            return None;
        }
        let voters: Vec<u64> = reply
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.node_id)
            .collect();
        let followers = voters
            .iter()
            .filter(|v| {
                views
                    .get(v)
                    .and_then(|r| r.node.as_ref())
                    .is_some_and(|n| n.leader_id == own.node_id && n.term == own.term)
            })
            .count();
        (followers * 2 > voters.len()).then(|| reply.clone())
    })
}

/// An admin client for the node at `addr`, with short connect and call timeouts.
async fn admin_client(
    addr: SocketAddr,
    tls: Option<dlock::ClientTls>,
) -> Result<AdminClient<Channel>, Status> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Status::invalid_argument(e.to_string()))?
        .connect_timeout(RPC_TIMEOUT)
        .timeout(RPC_TIMEOUT)
        .connect_with_connector(dlock_tls::Connector::new(tls))
        .await
        .map_err(|e| Status::unavailable(format!("connect to {addr}: {e}")))?;
    Ok(AdminClient::new(channel))
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The last `lines` lines of a file (for failure reports).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(file) = File::open(path) else {
        return format!("({} unreadable)", path.display());
    };
    // raft-rs lines end in a long `slog.target=... slog.column=N` suffix: cut it.
    let all: Vec<String> = BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .map(|line| match line.find(" slog.target=") {
            Some(cut) => line[..cut].to_owned(),
            None => line,
        })
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `command` from one thread that lives as long as the process, so that
/// `PR_SET_PDEATHSIG` (which fires when the spawning *thread* exits) kills the child only with
/// the test process.
fn spawn_from_long_lived_thread(command: Command) -> Child {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("dlockd-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                // The senders live in a static: never reached while the process runs.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the dlockd spawner thread");
        Mutex::new(tx)
    });
    let (reply, result) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, reply))
        .expect("spawner thread alive");
    result
        .recv()
        .expect("spawner answers")
        .expect("spawn dlockd")
}

/// Sends `signal` to process `pid` (kill(2)).
fn kill(pid: u32, signal: Signal) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::other(format!("not a pid: {pid}")))?;
    rustix::process::kill_process(pid, signal).map_err(std::io::Error::from)
}

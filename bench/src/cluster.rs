//! The two clusters: three `dlockd` nodes ([`ProcCluster`] from the end-to-end tests) or three
//! etcd members started here, with their CPU time read from `/proc` and the leader found and
//! killed the same way.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dlock_tests::procs::ProcCluster;

use crate::System;

/// How long a cluster may take to start or elect a leader.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// Timeout of one status call while looking for the leader.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// A running three-member cluster of either system.
pub enum Cluster {
    /// dlock's nodes 1..=3.
    Dlock(ProcCluster),
    /// etcd's members 1..=3.
    Etcd(EtcdCluster),
}

impl Cluster {
    /// Starts a fresh three-member cluster and waits for its leader.
    pub async fn start(system: System, etcd: &Path) -> Cluster {
        let cluster = match system {
            System::Dlock => {
                // The nodes log at `warn`, as etcd's members do here: per-request logging is
                // not what is measured.
                // SAFETY: set before any thread of ours reads the environment concurrently
                // with it (the nodes are spawned with it).
                unsafe { std::env::set_var("RUST_LOG", "warn") };
                Cluster::Dlock(ProcCluster::start(3, &[]).await)
            }
            System::Etcd => Cluster::Etcd(EtcdCluster::start(etcd).await),
        };
        cluster.leader().await;
        cluster
    }

    /// Client endpoints, `host:port`.
    pub fn endpoints(&self) -> Vec<String> {
        match self {
            Cluster::Dlock(c) => c.endpoint_list(),
            Cluster::Etcd(c) => c.members.iter().map(|m| m.client_addr()).collect(),
        }
    }

    /// The members' pids (of those running).
    pub fn pids(&self) -> Vec<u32> {
        match self {
            Cluster::Dlock(c) => c
                .ids()
                .into_iter()
                .filter_map(|id| c.node(id).pid())
                .collect(),
            Cluster::Etcd(c) => c
                .members
                .iter()
                .filter_map(|m| m.child.as_ref().map(Child::id))
                .collect(),
        }
    }

    /// CPU time (user + system) the running members have used so far.
    pub fn cpu(&self) -> Duration {
        self.pids().into_iter().map(cpu_of).sum()
    }

    /// The leader's member number (1..=3), waiting for one.
    pub async fn leader(&self) -> u64 {
        match self {
            Cluster::Dlock(c) => c.leader().await,
            Cluster::Etcd(c) => c.leader().await,
        }
    }

    /// Kills member `id` with SIGKILL.
    pub fn kill9(&mut self, id: u64) {
        match self {
            Cluster::Dlock(c) => c.kill9(id),
            Cluster::Etcd(c) => c.kill9(id),
        }
    }

    /// Restarts member `id` with its data directory.
    pub async fn restart(&mut self, id: u64) {
        match self {
            Cluster::Dlock(c) => c.restart(id).await,
            Cluster::Etcd(c) => c.restart(id).await,
        }
    }

    /// Stops every member and removes the data.
    pub async fn stop(self) {
        match self {
            Cluster::Dlock(mut c) => {
                for id in c.running() {
                    c.kill9(id);
                }
            }
            Cluster::Etcd(c) => drop(c),
        }
    }
}

/// CPU time (user + system) of process `pid` from `/proc/<pid>/stat`; zero if it is gone.
pub fn cpu_of(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime is field 14 and stime field 15: indexes 11 and 12 counting from field 3.
    let total = ticks(11) + ticks(12);
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(total * 1_000_000_000 / hz)
}

/// CPU time of this process (the clients of both systems).
pub fn own_cpu() -> Duration {
    cpu_of(std::process::id())
}

/// One etcd member.
pub struct EtcdMember {
    name: String,
    client_port: u16,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    /// Its member id (from its own status), known once it answered.
    member_id: u64,
}

impl EtcdMember {
    fn client_addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
}

/// Three etcd members on loopback with their data in a temporary directory.
pub struct EtcdCluster {
    _dir: tempfile::TempDir,
    binary: PathBuf,
    members: Vec<EtcdMember>,
}

impl EtcdCluster {
    async fn start(binary: &Path) -> EtcdCluster {
        assert!(
            binary.exists(),
            "{} is missing: `bench/run.sh` installs Debian's etcd-server",
            binary.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("bench-etcd-")
            .tempdir()
            .expect("temporary directory");
        let ports: Vec<(u16, u16)> = (0..3)
            .map(|_| (dlock_tests::free_port(), dlock_tests::free_port()))
            .collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{}=http://127.0.0.1:{peer}", i + 1))
            .collect();
        let initial = initial.join(",");
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("m{}", i + 1);
            let args = vec![
                format!("--name={name}"),
                format!("--data-dir={}", dir.path().join(&name).display()),
                format!("--listen-client-urls=http://127.0.0.1:{client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-cluster={initial}"),
                "--initial-cluster-state=new".into(),
                "--initial-cluster-token=dlock-bench".into(),
                "--logger=zap".into(),
                "--log-level=warn".into(),
            ];
            members.push(EtcdMember {
                log: dir.path().join(format!("{name}.log")),
                name,
                client_port: *client,
                args,
                child: None,
                member_id: 0,
            });
        }
        let mut cluster = EtcdCluster {
            _dir: dir,
            binary: binary.to_owned(),
            members,
        };
        for i in 0..3 {
            cluster.spawn(i);
        }
        // Learn each member's id from its own status (ids stay across restarts).
        let deadline = Instant::now() + START_DEADLINE;
        for i in 0..3 {
            loop {
                if let Some((me, _)) = status_of(&cluster.members[i].client_addr()).await {
                    cluster.members[i].member_id = me;
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd member {} did not answer; log: {}",
                    cluster.members[i].name,
                    cluster.members[i].log.display()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let member = &mut self.members[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(&member.log)
            .expect("etcd log file");
        let mut command = Command::new(&self.binary);
        command
            .args(&member.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        dlock_tests::die_with_parent(&mut command);
        member.child = Some(command.spawn().expect("start etcd"));
    }

    async fn leader(&self) -> u64 {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            for member in self.members.iter().filter(|m| m.child.is_some()) {
                if let Some((_, leader)) = status_of(&member.client_addr()).await
                    && let Some(i) = self
                        .members
                        .iter()
                        .position(|m| m.member_id == leader && m.child.is_some())
                {
                    return i as u64 + 1;
                }
            }
            assert!(Instant::now() < deadline, "etcd elected no leader");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn kill9(&mut self, id: u64) {
        if let Some(mut child) = self.members[id as usize - 1].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn restart(&mut self, id: u64) {
        let i = id as usize - 1;
        assert!(self.members[i].child.is_none(), "member {id} is running");
        self.spawn(i);
        let deadline = Instant::now() + START_DEADLINE;
        while status_of(&self.members[i].client_addr()).await.is_none() {
            assert!(
                Instant::now() < deadline,
                "etcd member {id} did not come back"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// `(its own member id, the leader's member id)` from one member's status, if it answers and
/// knows a leader.
async fn status_of(addr: &str) -> Option<(u64, u64)> {
    let call = async {
        let mut client = etcd_client::Client::connect([addr], None).await.ok()?;
        let status = client.status().await.ok()?;
        let me = status.header()?.member_id();
        Some((me, status.leader()))
    };
    match tokio::time::timeout(STATUS_TIMEOUT, call).await {
        Ok(Some((me, leader))) if leader != 0 => Some((me, leader)),
        _ => None,
    }
}

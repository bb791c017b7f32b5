//! The workloads, each written once over both systems: a [`Locker`] is a dlock session with a
//! named mutex or an etcd lease with etcd's Lock API, a [`Signal`] an auto-reset event or a
//! key and its watch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cluster::{Cluster, own_cpu};
use crate::report::Sample;
use crate::{Args, Workload, quantile_ms, sample};

/// dlock's session TTL here: the facade's default (`DLOCK_SESSION_TTL_MS`).
const DLOCK_TTL: Duration = Duration::from_secs(10);
/// etcd's lease TTL here: the Go client's `concurrency.NewSession` default.
const ETCD_TTL: i64 = 60;
/// Pairs run before measuring (connections, caches, the leader's first proposals).
const WARMUP_PAIRS: usize = 100;
/// Pause between signals, so that the waiter is blocked again before the next one.
const SIGNAL_GAP: Duration = Duration::from_millis(10);
/// How long after a kill the killed member is restarted.
const RESTART_AFTER: Duration = Duration::from_secs(3);
/// Time between kills (the restart included).
const KILL_PERIOD: Duration = Duration::from_secs(6);
/// Sessions (leases) opened at once by `sessions`.
const OPEN_CONCURRENCY: usize = 64;
/// `sessions` stops opening after this many refusals (e.g. a cluster-wide limit).
const OPEN_REFUSALS_MAX: usize = 64;

/// Runs one workload against `cluster` and returns its samples.
pub async fn run(
    args: &Args,
    workload: Workload,
    cluster: &mut Cluster,
    run: usize,
) -> Vec<Sample> {
    let conn = Conn::connect(cluster).await;
    let prefix = format!("bench-r{run}-{workload:?}");
    match workload {
        Workload::Pair => pair(args, cluster, &conn, &prefix).await,
        Workload::Distinct => {
            let (rate, cpu) = throughput(
                cluster,
                &conn,
                &prefix,
                args.distinct_tasks,
                false,
                args.seconds,
            )
            .await;
            vec![
                sample("distinct: pairs/s", rate),
                sample("distinct: cluster CPU per pair (ms)", cpu),
            ]
        }
        Workload::Handoff => {
            let (rate, cpu) = throughput(
                cluster,
                &conn,
                &prefix,
                args.handoff_tasks,
                true,
                args.seconds,
            )
            .await;
            vec![
                sample("handoff: hand-offs/s", rate),
                sample("handoff: cluster CPU per hand-off (ms)", cpu),
            ]
        }
        Workload::Signal => signal(args, cluster, &conn, &prefix).await,
        Workload::Failover => failover(args, cluster, &conn, &prefix).await,
        Workload::Sessions => sessions(args, cluster, &conn).await,
    }
}

/// A connection to either system, shared by every task of a workload (one client process).
#[derive(Clone)]
enum Conn {
    Dlock(dlock::Client),
    Etcd(Box<etcd_client::Client>),
}

impl Conn {
    async fn connect(cluster: &Cluster) -> Conn {
        let endpoints = cluster.endpoints();
        match cluster {
            Cluster::Dlock(_) => Conn::Dlock(
                dlock::Client::connect(endpoints)
                    .await
                    .expect("connect to dlock"),
            ),
            Cluster::Etcd(_) => Conn::Etcd(Box::new(
                etcd_client::Client::connect(endpoints, Some(etcd_options()))
                    .await
                    .expect("connect to etcd"),
            )),
        }
    }
}

/// etcd's client options: the same connect and attempt timeouts as dlock's client defaults
/// (a call to a killed member fails after it and is retried), and etcdctl's gRPC keepalive
/// (`--keepalive-time 2s --keepalive-timeout 6s`).
fn etcd_options() -> etcd_client::ConnectOptions {
    etcd_client::ConnectOptions::new()
        .with_connect_timeout(dlock::CONNECT_TIMEOUT_DEFAULT)
        .with_timeout(dlock::ATTEMPT_TIMEOUT_DEFAULT)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(6))
}

/// Error text of either client.
type Failed = String;

/// One task's lock: a dlock session with a named mutex, or an etcd lease (kept alive as the Go
/// client's session does, every TTL/3) with etcd's Lock API on a name.
enum Locker {
    Dlock {
        _session: dlock::Session,
        mutex: dlock::Mutex,
    },
    Etcd {
        client: Box<etcd_client::Client>,
        name: String,
        lease: i64,
        _keepalive: Aborting,
    },
}

impl Locker {
    async fn new(conn: &Conn, name: &str) -> Result<Locker, Failed> {
        match conn {
            Conn::Dlock(client) => {
                let session = client
                    .open_session(DLOCK_TTL)
                    .await
                    .map_err(|e| e.to_string())?;
                let mutex = session
                    .create_mutex(Some(name), false)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Locker::Dlock {
                    _session: session,
                    mutex,
                })
            }
            Conn::Etcd(client) => {
                let mut client = client.clone();
                let lease = client
                    .lease_grant(ETCD_TTL, None)
                    .await
                    .map_err(|e| e.to_string())?
                    .id();
                let keepalive = Aborting(tokio::spawn(keep_lease_alive(*client.clone(), lease)));
                Ok(Locker::Etcd {
                    client,
                    name: name.to_owned(),
                    lease,
                    _keepalive: keepalive,
                })
            }
        }
    }

    /// Acquires the lock (blocking while another holds it).
    async fn lock(&mut self) -> Result<(), Failed> {
        match self {
            Locker::Dlock { mutex, .. } => match mutex.lock(dlock::Timeout::Infinite).await {
                Ok(outcome) if outcome.is_acquired() => Ok(()),
                Ok(outcome) => Err(format!("{outcome:?}")),
                Err(e) => Err(e.to_string()),
            },
            Locker::Etcd {
                client,
                name,
                lease,
                ..
            } => client
                .lock(
                    name.as_bytes(),
                    Some(etcd_client::LockOptions::new().with_lease(*lease)),
                )
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        }
    }

    /// Releases it.
    async fn unlock(&mut self) -> Result<(), Failed> {
        match self {
            Locker::Dlock { mutex, .. } => mutex.release().await.map_err(|e| e.to_string()),
            Locker::Etcd {
                client,
                name,
                lease,
                ..
            } => {
                // etcd's lock key is `<name>/<lease in hex>` (v3lock), so an unlock can be
                // retried after a lock whose reply was lost.
                client
                    .unlock(format!("{name}/{lease:x}"))
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// One lock + unlock, retrying each half until it succeeds; returns the failed calls.
    async fn pair(&mut self) -> u64 {
        let mut failed = 0;
        while self.lock().await.is_err() {
            failed += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        while self.unlock().await.is_err() {
            failed += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        failed
    }
}

/// A task aborted when this is dropped.
struct Aborting(JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renews `lease` every TTL/3 over a keep-alive stream, reopening it after errors.
async fn keep_lease_alive(mut client: etcd_client::Client, lease: i64) {
    loop {
        if let Ok((mut keeper, mut stream)) = client.lease_keep_alive(lease).await {
            loop {
                tokio::time::sleep(Duration::from_secs(ETCD_TTL as u64 / 3)).await;
                if keeper.keep_alive().await.is_err()
                    || !matches!(stream.message().await, Ok(Some(_)))
                {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn locker(conn: &Conn, name: &str) -> Locker {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Locker::new(conn, name).await {
            Ok(locker) => return locker,
            Err(e) if Instant::now() < deadline => {
                eprintln!("   (retrying a session: {e})");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no session within 30 s: {e}"),
        }
    }
}

/// Uncontended pairs from one task: latency per pair and cluster CPU per pair.
async fn pair(args: &Args, cluster: &Cluster, conn: &Conn, prefix: &str) -> Vec<Sample> {
    let mut locker = locker(conn, prefix).await;
    for _ in 0..WARMUP_PAIRS {
        locker.pair().await;
    }
    let cpu = cluster.cpu();
    let mut samples = Vec::with_capacity(args.pairs);
    for _ in 0..args.pairs {
        let t = Instant::now();
        locker.pair().await;
        samples.push(t.elapsed());
    }
    let cpu = cluster.cpu() - cpu;
    samples.sort();
    vec![
        sample("pair p50 (ms)", quantile_ms(&samples, 0.5)),
        sample("pair p99 (ms)", quantile_ms(&samples, 0.99)),
        sample(
            "pair: cluster CPU per pair (ms)",
            cpu.as_secs_f64() * 1e3 / args.pairs as f64,
        ),
    ]
}

/// `tasks` tasks locking and unlocking, each its own name or all one name, for `seconds`:
/// pairs per second and cluster CPU per pair.
async fn throughput(
    cluster: &Cluster,
    conn: &Conn,
    prefix: &str,
    tasks: usize,
    one_name: bool,
    seconds: u64,
) -> (f64, f64) {
    let mut lockers = Vec::new();
    for i in 0..tasks {
        let name = if one_name {
            prefix.to_owned()
        } else {
            format!("{prefix}-{i}")
        };
        lockers.push(locker(conn, &name).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = lockers
        .into_iter()
        .map(|mut locker| {
            let (stop, done, counting) = (stop.clone(), done.clone(), counting.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    locker.pair().await;
                    if counting.load(Ordering::Relaxed) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // A second of warm-up, then the measured window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = cluster.cpu();
    let start = Instant::now();
    counting.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    counting.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed();
    let cpu = cluster.cpu() - cpu;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.await;
    }
    let pairs = done.load(Ordering::Relaxed).max(1);
    (
        pairs as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64() * 1e3 / pairs as f64,
    )
}

/// Sets the event (puts the key) once.
type SetFn = Box<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), Failed>>>;

/// Set → blocked waiter returns: an auto-reset event set by one session and waited on by
/// another, or a key put by one client task and watched by another.
async fn signal(args: &Args, cluster: &Cluster, conn: &Conn, prefix: &str) -> Vec<Sample> {
    let (woke_tx, mut woke) = mpsc::unbounded_channel::<Instant>();
    let (set, _waiter): (SetFn, Aborting) = match conn {
        Conn::Dlock(client) => {
            let setter = client.open_session(DLOCK_TTL).await.expect("session");
            let event = setter
                .create_event(Some(prefix), false, false)
                .await
                .expect("event");
            let waiter = client.open_session(DLOCK_TTL).await.expect("session");
            let watched = waiter
                .create_event(Some(prefix), false, false)
                .await
                .expect("event");
            let task = tokio::spawn(async move {
                let _waiter = waiter;
                loop {
                    match watched.wait(dlock::Timeout::Infinite).await {
                        Ok(outcome) if outcome.is_acquired() => {
                            let _ = woke_tx.send(Instant::now());
                        }
                        _ => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            });
            let event = Arc::new((setter, event));
            let set = move || {
                let event = event.clone();
                Box::pin(async move { event.1.set().await.map_err(|e| e.to_string()) })
                    as futures::future::BoxFuture<'static, _>
            };
            (Box::new(set) as Box<dyn Fn() -> _>, Aborting(task))
        }
        Conn::Etcd(client) => {
            let mut watch = client.clone().watch(prefix, None).await.expect("watch");
            let task = tokio::spawn(async move {
                while let Ok(Some(reply)) = watch.message().await {
                    if !reply.events().is_empty() {
                        let _ = woke_tx.send(Instant::now());
                    }
                }
            });
            let (client, key) = (client.clone(), prefix.to_owned());
            let set = move || {
                let (mut client, key) = (client.clone(), key.clone());
                Box::pin(async move {
                    client
                        .put(key, "x", None)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                }) as futures::future::BoxFuture<'static, _>
            };
            (Box::new(set) as Box<dyn Fn() -> _>, Aborting(task))
        }
    };
    // Let the waiter block before the first signal.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut samples = Vec::with_capacity(args.signals);
    let mut cpu = cluster.cpu();
    for i in 0..WARMUP_PAIRS / 5 + args.signals {
        if i == WARMUP_PAIRS / 5 {
            cpu = cluster.cpu();
        }
        tokio::time::sleep(SIGNAL_GAP).await;
        let t = Instant::now();
        set().await.expect("signal");
        let woke = tokio::time::timeout(Duration::from_secs(30), woke.recv())
            .await
            .expect("the waiter returns within 30 s")
            .expect("waiter running");
        if i >= WARMUP_PAIRS / 5 {
            samples.push(woke.saturating_duration_since(t));
        }
    }
    let cpu = cluster.cpu() - cpu;
    samples.sort();
    vec![
        sample("signal p50 (ms)", quantile_ms(&samples, 0.5)),
        sample("signal p99 (ms)", quantile_ms(&samples, 0.99)),
        sample(
            "signal: cluster CPU per signal (ms)",
            // The pauses between signals cost the cluster its idle CPU too: counted, as both
            // systems pay it the same way.
            cpu.as_secs_f64() * 1e3 / args.signals as f64,
        ),
    ]
}

/// Tasks on distinct names while the leader is killed `args.kills` times, each restarted
/// [`RESTART_AFTER`] later: per kill the longest time without any completed pair and the time
/// until every task completed one; reported as the worst over the kills.
async fn failover(args: &Args, cluster: &mut Cluster, conn: &Conn, prefix: &str) -> Vec<Sample> {
    let mut lockers = Vec::new();
    for i in 0..args.distinct_tasks {
        lockers.push(locker(conn, &format!("{prefix}-{i}")).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let workers: Vec<JoinHandle<Vec<Instant>>> = lockers
        .into_iter()
        .map(|mut locker| {
            let (stop, failed) = (stop.clone(), failed.clone());
            tokio::spawn(async move {
                let mut done = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    failed.fetch_add(locker.pair().await, Ordering::Relaxed);
                    done.push(Instant::now());
                }
                done
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut kills = Vec::new();
    for _ in 0..args.kills {
        let leader = cluster.leader().await;
        let at = Instant::now();
        cluster.kill9(leader);
        kills.push(at);
        tokio::time::sleep(RESTART_AFTER).await;
        cluster.restart(leader).await;
        tokio::time::sleep_until((at + KILL_PERIOD).into()).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut per_task = Vec::new();
    for worker in workers {
        per_task.push(worker.await.expect("worker"));
    }
    let mut all: Vec<Instant> = per_task.iter().flatten().copied().collect();
    all.sort();
    let (mut worst_gap, mut worst_back) = (Duration::ZERO, Duration::ZERO);
    for (k, &at) in kills.iter().enumerate() {
        let end = kills.get(k + 1).copied().unwrap_or(at + KILL_PERIOD);
        // The longest gap between consecutive completions that reaches into [at, end).
        let mut previous = all.iter().rev().find(|&&t| t <= at).copied().unwrap_or(at);
        for &t in all.iter().filter(|&&t| t > at && t < end) {
            worst_gap = worst_gap.max(t - previous);
            previous = t;
        }
        worst_gap = worst_gap.max(end.saturating_duration_since(previous).min(KILL_PERIOD));
        for done in &per_task {
            let back = done.iter().find(|&&t| t > at).map_or(end - at, |&t| t - at);
            worst_back = worst_back.max(back);
        }
    }
    vec![
        sample("failover: longest gap (s)", worst_gap.as_secs_f64()),
        sample("failover: all tasks back (s)", worst_back.as_secs_f64()),
        sample(
            "failover: failed calls",
            failed.load(Ordering::Relaxed) as f64,
        ),
    ]
}

/// `args.sessions` sessions (leases) opened and held for `args.hold` seconds with their
/// keepalives: how many were held, how many expired, and the CPU the holding cost.
async fn sessions(args: &Args, cluster: &Cluster, conn: &Conn) -> Vec<Sample> {
    let refusals = AtomicU64::new(0);
    let first_refusal = std::sync::Mutex::new(None::<String>);
    let start = Instant::now();
    let open = |i: usize| {
        let (refusals, first_refusal) = (&refusals, &first_refusal);
        let conn = conn.clone();
        async move {
            if refusals.load(Ordering::Relaxed) as usize >= OPEN_REFUSALS_MAX {
                return None;
            }
            let opened = match &conn {
                Conn::Dlock(client) => client
                    .open_session(DLOCK_TTL)
                    .await
                    .map(Held::Dlock)
                    .map_err(|e| e.to_string()),
                Conn::Etcd(client) => client
                    .clone()
                    .lease_grant(ETCD_TTL, None)
                    .await
                    .map(|r| Held::Etcd(r.id()))
                    .map_err(|e| e.to_string()),
            };
            match opened {
                Ok(held) => Some((held, Instant::now())),
                Err(e) => {
                    refusals.fetch_add(1, Ordering::Relaxed);
                    first_refusal
                        .lock()
                        .unwrap()
                        .get_or_insert_with(|| format!("session {i}: {e}"));
                    None
                }
            }
        }
    };
    let opened: Vec<(Held, Instant)> = futures::stream::iter(0..args.sessions)
        .map(open)
        .buffer_unordered(OPEN_CONCURRENCY)
        .filter_map(|h| async move { h })
        .collect()
        .await;
    // Up to the last successful open: refusals at a limit wait out the client's retries.
    let last = opened.iter().map(|(_, at)| *at).max().unwrap_or(start);
    let opened_per_second = opened.len() as f64 / (last - start).as_secs_f64().max(1e-3);
    let held: Vec<Held> = opened.into_iter().map(|(held, _)| held).collect();
    if let Some(refusal) = first_refusal.lock().unwrap().take() {
        eprintln!(
            "   sessions: {} opened; first refusal: {refusal}",
            held.len()
        );
    }
    // etcd: one keep-alive stream renews every lease, as etcd's Go client multiplexes them.
    let etcd_leases: Vec<i64> = held
        .iter()
        .filter_map(|h| {
            if let Held::Etcd(id) = h {
                Some(*id)
            } else {
                None
            }
        })
        .collect();
    let renewals = match conn {
        Conn::Etcd(client) if !etcd_leases.is_empty() => {
            Some(EtcdRenewals::start(*client.clone(), etcd_leases).await)
        }
        _ => None,
    };
    let (cluster_cpu, client_cpu) = (cluster.cpu(), own_cpu());
    let hold = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let wall = hold.elapsed().as_secs_f64();
    let cluster_cpu = (cluster.cpu() - cluster_cpu).as_secs_f64() / wall * 100.0;
    let client_cpu = (own_cpu() - client_cpu).as_secs_f64() / wall * 100.0;
    let expired = match renewals {
        Some(renewals) => match conn {
            Conn::Etcd(client) => renewals.expired(*client.clone()).await,
            Conn::Dlock(_) => unreachable!("renewals are etcd's"),
        },
        None => held
            .iter()
            .filter(|h| matches!(h, Held::Dlock(s) if s.state() == dlock::SessionState::Expired))
            .count(),
    };
    vec![
        sample("sessions: held", held.len() as f64),
        sample("sessions: expired wrongly", expired as f64),
        sample("sessions: opened per second", opened_per_second),
        sample(
            "sessions: cluster CPU while held (% of a core)",
            cluster_cpu,
        ),
        sample("sessions: client CPU while held (% of a core)", client_cpu),
    ]
}

/// A held session or lease.
enum Held {
    Dlock(dlock::Session),
    Etcd(i64),
}

/// Renews many etcd leases over one keep-alive stream every TTL/3 (as etcd's Go client
/// multiplexes them).
struct EtcdRenewals {
    /// Holds the stream's sender open.
    _keeper: etcd_client::LeaseKeeper,
    leases: Arc<Vec<i64>>,
    _renew: Aborting,
    _read: Aborting,
}

impl EtcdRenewals {
    async fn start(mut client: etcd_client::Client, leases: Vec<i64>) -> EtcdRenewals {
        let (keeper, mut stream) = client
            .lease_keep_alive(leases[0])
            .await
            .expect("keep-alive stream");
        let leases = Arc::new(leases);
        // The answers are drained (an undrained stream would stop the renewals).
        let read = tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return eprintln!("   (etcd closed the keep-alive stream)"),
                    Err(e) => return eprintln!("   (etcd's keep-alive stream failed: {e})"),
                }
            }
        });
        let renew = {
            let (leases, sender) = (leases.clone(), keeper.sender.clone());
            tokio::spawn(async move {
                loop {
                    for &id in leases.iter() {
                        let mut one = etcd_client::LeaseKeeper {
                            id,
                            sender: sender.clone(),
                        };
                        if one.keep_alive().await.is_err() {
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(ETCD_TTL as u64 / 3)).await;
                }
            })
        };
        EtcdRenewals {
            _keeper: keeper,
            leases,
            _renew: Aborting(renew),
            _read: Aborting(read),
        }
    }

    /// Counts the leases the cluster no longer has (etcd's `LeaseLeases` lists every live
    /// lease), after the renewals have run for the hold.
    async fn expired(self, mut client: etcd_client::Client) -> usize {
        let live: std::collections::HashSet<i64> = match client.leases().await {
            Ok(reply) => reply.leases().iter().map(|l| l.id()).collect(),
            Err(e) => {
                eprintln!("   (listing etcd's leases failed: {e}; counting all as expired)");
                return self.leases.len();
            }
        };
        self.leases.iter().filter(|id| !live.contains(id)).count()
    }
}

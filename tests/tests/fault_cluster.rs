//! Three embedded dlockd nodes in one process over a faulty in-process Raft network
//! (`dlock_tests::net`): a node fails and no lock, grant, wait or session is lost.
//!
//! Every scenario drives real `dlock` clients over gRPC against a [`TestCluster`], records
//! what the clients saw in a [`Recorder`], and at the end runs the recorded-history checker
//! ([`history::check`]): at most one owner per mutex at any moment (fencing tokens strictly
//! increase in real time, no hold ended by an acknowledged release overlaps a later grant), no
//! acknowledged release, set or create lost, abandonment reported exactly when an owner ended
//! holding a mutex, and every wait resolved once. Objects are *pinned* by a session that stays
//! alive for the whole run, so the existence and abandonment checks apply.
//!
//! The scenarios, each named for the property it proves:
//!
//! * `killing_the_leader_under_contended_traffic_loses_no_grant_and_double_grants_nothing`:
//!   five clients contend on three mutexes and a manual-reset event over a network that
//!   loses 2 % of the Raft messages and delays the rest by up to 4 ms; the leader is killed
//!   mid-run, traffic goes on through the new leader, the old one is restarted and catches
//!   up; then the same again with the next leader. The history must check and cover every
//!   mutex.
//! * `a_leader_partitioned_into_a_minority_grants_nothing_and_its_clients_move_on`: the
//!   leader is cut off from both followers (its client port stays up). A client that knows
//!   only that node gets no grant from it; the other clients follow leader hints to the
//!   majority and keep being granted with larger fencing tokens; after healing, the old
//!   leader rejoins as a follower.
//! * `a_session_that_keeps_its_keepalives_through_a_leader_change_is_not_abandoned`: a
//!   holder with a 3 s TTL (a 2 s lease) keeps its mutex through a failover and well beyond it.
//! * `a_session_that_stops_its_keepalives_is_expired_once_after_its_ttl_by_the_new_leader`:
//!   a raw-gRPC session takes a mutex, sends a few keepalives, goes silent, and the leader
//!   that saw those keepalives is killed. A waiter gets `WAIT_ABANDONED` no earlier than the
//!   TTL after the last keepalive was sent, and no later than the new leader's election plus
//!   the TTL plus [`EXPIRY_SLACK`] (the new leader grants every session a full TTL of grace).
//! * `a_wait_blocked_across_a_failover_gets_exactly_one_outcome`: an INFINITE wait on a
//!   held mutex survives the leader's death; the holder releases through the new leader; the
//!   waiter gets exactly one grant, with a larger token.
//! * `an_isolated_leader_renews_no_keepalive` and
//!   `a_stalled_leader_renews_no_lease_and_expires_no_live_session` (raft thread blocked for a
//!   TTL + 2 s by a test hook): keepalives are renewed only with proof of leadership, so no
//!   session is expired while its client believes it is alive.
//! * `a_wait_blocked_on_a_leader_that_is_partitioned_away_is_answered_by_the_majority`: a
//!   waiter blocked on the leader when it is partitioned away learns the majority's grant
//!   without waiting for the heal (a regression test, see its doc comment).
//!
//! Synchronisation is by polling with deadlines (progress counters, Raft status); fixed
//! pauses appear only where the scenario itself is "time passes" (a hold, a TTL). Each test
//! is bounded by [`TEST_DEADLINE`]. Progress markers (`--- ...`) and the network seed go to
//! stderr (`cargo test -- --nocapture` shows them); `DLOCK_NET_SEED=N` repeats the random
//! choices of a run, `RUST_LOG=dlock_server=debug,dlock_cluster=info` shows the nodes' logs.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dlock::{Client, ClientConfig, SessionState, Timeout};
use dlock_proto::v1 as pb;
use dlock_proto::v1::dlock_client::DlockClient;
use dlock_tests::history::{self, ClientId, ObjectKind, Op, Outcome, Recorder, Report};
use dlock_tests::net::{ClusterOptions, SplitMix64, TestCluster};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Every scenario finishes within this, or fails.
const TEST_DEADLINE: Duration = Duration::from_secs(120);
/// How long a scenario waits for the traffic to make a given amount of progress.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(40);
/// Grants the traffic must make in each phase (before a fault, during it, after it).
const GRANTS_PER_PHASE: u64 = 40;
/// Leader kills in the contended-traffic scenario.
const KILL_ROUNDS: u32 = 2;
/// TTL of the contending clients' sessions: long enough that a failover (about one second
/// with 50 ms ticks) never puts them in jeopardy.
const WORKER_TTL: Duration = Duration::from_secs(6);
/// TTL of the pinning session, which must outlive every fault of a run.
const PIN_TTL: Duration = Duration::from_secs(15);
/// How long one client call keeps retrying across nodes.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);
/// How long one attempt on one node may take before the client tries the next.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// The short TTL of the expiry scenarios.
const SHORT_TTL: Duration = Duration::from_secs(3);
/// Expiry slack on top of "new leader elected + TTL": the leader's timer, one Raft round
/// trip for `ExpireSession`, and the waiter's reply, on a loaded 2-core machine. A
/// correctness deadline, not a performance assertion.
const EXPIRY_SLACK: Duration = Duration::from_millis(1_500);
/// How soon a waiter whose node was partitioned away must learn the outcome the majority
/// decided: a few client attempts and one leader-hint round trip.
const PARTITIONED_WAIT_DEADLINE: Duration = Duration::from_secs(10);
/// `MUTEX_ALL_ACCESS`, for the raw gRPC session.
const MUTEX_ALL_ACCESS: u32 = 0x001F_0001;

// ---------------------------------------------------------------------------------------------
// Small helpers.

/// Runs a scenario with tracing on and a hard deadline.
async fn bounded(name: &str, scenario: impl Future<Output = ()>) {
    dlock_tests::net::init_tracing();
    let started = Instant::now();
    eprintln!("=== {name}");
    if tokio::time::timeout(TEST_DEADLINE, scenario).await.is_err() {
        panic!("{name} did not finish within {TEST_DEADLINE:?}");
    }
    eprintln!("=== {name} passed in {:?}", started.elapsed());
}

/// A client of the whole cluster with the test's timeouts.
async fn client_for(endpoints: Vec<String>) -> Client {
    let mut config = ClientConfig::new(endpoints);
    config.request_timeout = REQUEST_TIMEOUT;
    config.attempt_timeout = ATTEMPT_TIMEOUT;
    Client::connect_with_config(config)
        .await
        .expect("valid endpoints")
}

/// The history outcome of a failed call: a Win32 error reply changed nothing; anything else
/// (unavailable, session lost, overloaded, ...) leaves the outcome unknown.
fn error_outcome(err: &dlock::Error) -> Outcome {
    match err {
        dlock::Error::Win32(code) => Outcome::Failed(code.code()),
        _ => Outcome::Unknown,
    }
}

/// Checks the history; prints the report or every violation.
fn check_history(rec: &Recorder) -> Report {
    let history = rec.history();
    match history::check(&history) {
        Ok(report) => {
            eprintln!("--- history ok: {report}");
            report
        }
        Err(violations) => {
            for v in &violations {
                eprintln!("VIOLATION {v}");
            }
            for r in &history.records {
                eprintln!(
                    "  {} {} {:?} @{} {:?}",
                    r.id, r.client, r.op, r.invoke, r.outcomes
                );
            }
            panic!("{} history violations (see above)", violations.len());
        }
    }
}

/// Recorded typed-handle operations of one history client.
struct Recorded<'a> {
    rec: &'a Recorder,
    me: ClientId,
}

impl Recorded<'_> {
    async fn create_mutex(
        &self,
        session: &dlock::Session,
        name: &str,
        keep_open: bool,
    ) -> Result<dlock::Mutex, dlock::Error> {
        let op = Op::Create {
            name: name.into(),
            kind: ObjectKind::Mutex,
            keep_open,
        };
        let id = self.rec.invoke(self.me, op);
        let result = session.create_mutex(Some(name), false).await;
        self.rec.complete(
            id,
            match &result {
                Ok(m) => Outcome::Created {
                    already_existed: m.already_existed(),
                },
                Err(e) => error_outcome(e),
            },
        );
        result
    }

    async fn create_event(
        &self,
        session: &dlock::Session,
        name: &str,
        keep_open: bool,
    ) -> Result<dlock::Event, dlock::Error> {
        let op = Op::Create {
            name: name.into(),
            kind: ObjectKind::ManualResetEvent,
            keep_open,
        };
        let id = self.rec.invoke(self.me, op);
        let result = session.create_event(Some(name), true, false).await;
        self.rec.complete(
            id,
            match &result {
                Ok(e) => Outcome::Created {
                    already_existed: e.already_existed(),
                },
                Err(e) => error_outcome(e),
            },
        );
        result
    }

    async fn acquire(&self, mutex: &dlock::Mutex, name: &str, timeout_ms: u32) -> Outcome {
        let op = Op::Acquire {
            mutex: name.into(),
            timeout_ms,
        };
        let id = self.rec.invoke(self.me, op);
        let outcome = match mutex.lock(Timeout::from_millis(timeout_ms)).await {
            Ok(o) => Outcome::from_mutex_wait(o),
            Err(e) => error_outcome(&e),
        };
        self.rec.complete(id, outcome);
        outcome
    }

    async fn release(&self, mutex: &dlock::Mutex, name: &str) -> Outcome {
        let id = self.rec.invoke(self.me, Op::Release { mutex: name.into() });
        let outcome = match mutex.release().await {
            Ok(()) => Outcome::Ok,
            Err(e) => error_outcome(&e),
        };
        self.rec.complete(id, outcome);
        outcome
    }

    async fn set(&self, event: &dlock::Event, name: &str) -> Outcome {
        let id = self
            .rec
            .invoke(self.me, Op::SetEvent { event: name.into() });
        let outcome = match event.set().await {
            Ok(()) => Outcome::Ok,
            Err(e) => error_outcome(&e),
        };
        self.rec.complete(id, outcome);
        outcome
    }

    async fn reset(&self, event: &dlock::Event, name: &str) -> Outcome {
        let id = self
            .rec
            .invoke(self.me, Op::ResetEvent { event: name.into() });
        let outcome = match event.reset().await {
            Ok(()) => Outcome::Ok,
            Err(e) => error_outcome(&e),
        };
        self.rec.complete(id, outcome);
        outcome
    }

    async fn wait_event(&self, event: &dlock::Event, name: &str, timeout_ms: u32) -> Outcome {
        let op = Op::WaitEvent {
            event: name.into(),
            timeout_ms,
        };
        let id = self.rec.invoke(self.me, op);
        let outcome = match event.wait(Timeout::from_millis(timeout_ms)).await {
            Ok(o) => Outcome::from_event_wait(o),
            Err(e) => error_outcome(&e),
        };
        self.rec.complete(id, outcome);
        outcome
    }
}

/// The session that pins every object of a run: it creates each with `keep_open`, never
/// closes a handle and must stay alive until the history is taken.
struct Pinner {
    session: dlock::Session,
    mutexes: Vec<dlock::Mutex>,
    events: Vec<dlock::Event>,
}

const PINNER: ClientId = ClientId(0);

impl Pinner {
    async fn pin(
        rec: &Recorder,
        endpoints: Vec<String>,
        mutexes: &[String],
        events: &[String],
    ) -> Pinner {
        let client = client_for(endpoints).await;
        let session = client.open_session(PIN_TTL).await.expect("pinner session");
        let me = Recorded { rec, me: PINNER };
        let mut pinner = Pinner {
            session,
            mutexes: Vec::new(),
            events: Vec::new(),
        };
        for name in mutexes {
            let m = me.create_mutex(&pinner.session, name, true).await;
            pinner.mutexes.push(m.expect("pin a mutex"));
        }
        for name in events {
            let e = me.create_event(&pinner.session, name, true).await;
            pinner.events.push(e.expect("pin an event"));
        }
        pinner
    }

    /// Confirms the pinning session is still alive (else voids its pins in the history).
    async fn confirm(&self, rec: &Recorder) {
        let alive = self.session.state() == SessionState::Alive
            && match self.mutexes.first() {
                Some(m) => m.query().await.is_ok(),
                None => true,
            };
        if !alive {
            eprintln!("--- the pinning session did not survive; its pins are void");
            rec.lost_session(PINNER);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Contended traffic.

/// What the contending workers share.
struct Traffic {
    rec: Recorder,
    endpoints: Vec<String>,
    mutexes: Vec<String>,
    event: String,
    stop: AtomicBool,
    /// Grants (acquires answered `Acquired`) so far, for progress checks.
    grants: AtomicU64,
    /// The next history client id (0 is the pinner).
    next_client: AtomicU64,
}

impl Traffic {
    fn new(rec: &Recorder, endpoints: Vec<String>, tag: &str) -> Arc<Traffic> {
        Arc::new(Traffic {
            rec: rec.clone(),
            endpoints,
            mutexes: (0..3).map(|i| format!("{tag}-mutex-{i}")).collect(),
            event: format!("{tag}-event"),
            stop: AtomicBool::new(false),
            grants: AtomicU64::new(0),
            next_client: AtomicU64::new(1),
        })
    }

    fn grants(&self) -> u64 {
        self.grants.load(Ordering::Acquire)
    }

    /// Waits until at least `target` grants were made, failing the test after the deadline.
    async fn wait_grants(&self, target: u64, phase: &str, cluster: &TestCluster) {
        let deadline = Instant::now() + PROGRESS_DEADLINE;
        while self.grants() < target {
            assert!(
                Instant::now() < deadline,
                "{phase}: only {} of {target} grants within {PROGRESS_DEADLINE:?}; {}",
                self.grants(),
                cluster.describe()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn spawn_workers(self: &Arc<Self>, count: u64, seed: u64) -> Vec<JoinHandle<()>> {
        (0..count)
            .map(|i| {
                tokio::spawn(worker(
                    self.clone(),
                    SplitMix64::new(seed ^ ((i + 1) * 7919)),
                ))
            })
            .collect()
    }

    /// Stops the workers and waits for them (each finishes its current cycle and closes its
    /// session).
    async fn stop(&self, workers: Vec<JoinHandle<()>>) {
        self.stop.store(true, Ordering::Release);
        for w in workers {
            tokio::time::timeout(REQUEST_TIMEOUT * 3, w)
                .await
                .expect("a worker did not stop in time")
                .expect("worker panicked");
        }
    }
}

/// One contending client: a session at a time (a new history client for each), acquiring a
/// random mutex with a timeout, holding it briefly and releasing it, or setting, resetting
/// or waiting on the manual-reset event. An unknown outcome on a mutex (the client cannot tell
/// whether it owns it), a refused release or a session not `Alive` ends the session: it is
/// closed (abandoning anything held without the client knowing), recorded as lost, and the
/// worker continues with a new session.
async fn worker(t: Arc<Traffic>, mut rng: SplitMix64) {
    let client = client_for(t.endpoints.clone()).await;
    while !t.stop.load(Ordering::Acquire) {
        let Ok(session) = client.open_session(WORKER_TTL).await else {
            continue;
        };
        let me = Recorded {
            rec: &t.rec,
            me: ClientId(t.next_client.fetch_add(1, Ordering::AcqRel)),
        };
        let mut mutexes = Vec::new();
        let mut lost = false;
        for name in &t.mutexes {
            match me.create_mutex(&session, name, false).await {
                Ok(m) => mutexes.push(m),
                Err(_) => lost = true,
            }
        }
        let event = if lost {
            None
        } else {
            me.create_event(&session, &t.event, false).await.ok()
        };
        lost |= event.is_none();
        while !lost && !t.stop.load(Ordering::Acquire) {
            let roll = rng.between(0, 99);
            if roll < 70 {
                let i = rng.between(0, mutexes.len() as u64 - 1) as usize;
                let (mutex, name) = (&mutexes[i], &t.mutexes[i]);
                let timeout_ms = rng.between(200, 800) as u32;
                match me.acquire(mutex, name, timeout_ms).await {
                    Outcome::Acquired { .. } => {
                        t.grants.fetch_add(1, Ordering::AcqRel);
                        // The work done under the lock: time passes.
                        tokio::time::sleep(Duration::from_millis(rng.between(1, 15))).await;
                        lost = me.release(mutex, name).await != Outcome::Ok;
                    }
                    Outcome::TimedOut => {}
                    _ => lost = true,
                }
            } else if let Some(event) = &event {
                let outcome = match roll {
                    70..=79 => me.set(event, &t.event).await,
                    80..=84 => me.reset(event, &t.event).await,
                    _ => {
                        let timeout_ms = rng.between(50, 300) as u32;
                        me.wait_event(event, &t.event, timeout_ms).await
                    }
                };
                lost = !outcome.is_definite();
            }
            lost |= session.state() != SessionState::Alive;
        }
        if lost {
            eprintln!("--- {} gives its session up", me.me);
            t.rec.lost_session(me.me);
        }
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, session.close()).await;
    }
}

fn assert_coverage(report: &Report, traffic: &Traffic) {
    for name in &traffic.mutexes {
        let grants = report.grants_per_mutex.get(name).copied().unwrap_or(0);
        assert!(grants > 0, "no grant of {name} was checked: {report}");
    }
    assert!(
        report.released_holds_checked > 0,
        "no released hold compared with later grants: {report}"
    );
    assert!(
        report.abandon_pairs_checked > 0,
        "no consecutive grant pair checked: {report}"
    );
}

/// How long after `after` (recorder clock) the first grant of an acquire *sent* after `after`
/// was read: the outage a fault caused, as a client saw it.
fn first_grant_after(rec: &Recorder, after: u64) -> Option<Duration> {
    rec.history()
        .records
        .iter()
        .filter(|r| r.invoke > after && matches!(r.outcome(), Outcome::Acquired { .. }))
        .filter_map(|r| r.returned())
        .min()
        .map(|t| Duration::from_nanos(t - after))
}

/// The largest fencing token among grants whose reply was read before `before` (recorder
/// clock), and the smallest among acquires invoked after `after`.
fn tokens_around(rec: &Recorder, before: u64, after: u64) -> (u64, Option<u64>) {
    let mut max_before = 0;
    let mut min_after = None::<u64>;
    for r in rec.history().records {
        let Outcome::Acquired { token, .. } = r.outcome() else {
            continue;
        };
        if r.returned().is_some_and(|t| t < before) {
            max_before = max_before.max(token);
        }
        if r.invoke > after {
            min_after = Some(min_after.map_or(token, |m| m.min(token)));
        }
    }
    (max_before, min_after)
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_contended_traffic_loses_no_grant_and_double_grants_nothing() {
    bounded("kill the leader under contended traffic", async {
        let mut cluster = TestCluster::start(ClusterOptions::default()).await;
        let rec = Recorder::new();
        let traffic = Traffic::new(&rec, cluster.endpoints(), "kill");
        let pinner = Pinner::pin(
            &rec,
            cluster.endpoints(),
            &traffic.mutexes,
            std::slice::from_ref(&traffic.event),
        )
        .await;
        // A lossy, jittery network throughout: raft must retransmit, nothing may change.
        cluster.net.set_drop_probability(0.02);
        cluster
            .net
            .set_delay(Duration::ZERO, Duration::from_millis(4));
        let workers = traffic.spawn_workers(5, cluster.net.seed());

        traffic
            .wait_grants(GRANTS_PER_PHASE, "before the kill", &cluster)
            .await;
        // Two rounds: the second kills the leader elected in the first, so the restarted node
        // must have caught up to take part in the next quorum.
        for round in 1..=KILL_ROUNDS {
            let old = cluster.wait_leader().await;
            let grants_at_kill = traffic.grants();
            eprintln!("--- round {round}: killing leader {old} after {grants_at_kill} grants");
            let killed_at = rec.now();
            cluster.kill(old).await;
            let new = cluster.wait_new_leader(old).await;
            eprintln!(
                "--- node {new} leads (seen {:?} after the kill)",
                Duration::from_nanos(rec.now() - killed_at)
            );
            traffic
                .wait_grants(
                    grants_at_kill + GRANTS_PER_PHASE,
                    "after the kill",
                    &cluster,
                )
                .await;
            eprintln!(
                "--- first grant of a request sent after the kill: {:?} after it",
                first_grant_after(&rec, killed_at).expect("a grant after the kill")
            );

            cluster.restart(old).await;
            let commit = cluster.status(new).map_or(0, |s| s.commit);
            cluster.wait_applied(commit).await;
            eprintln!("--- node {old} caught up to {commit}");
            let grants_at_restart = traffic.grants();
            traffic
                .wait_grants(
                    grants_at_restart + GRANTS_PER_PHASE,
                    "after the restart",
                    &cluster,
                )
                .await;
        }

        traffic.stop(workers).await;
        pinner.confirm(&rec).await;
        let report = check_history(&rec);
        assert_coverage(&report, &traffic);
        drop(pinner);
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_partitioned_into_a_minority_grants_nothing_and_its_clients_move_on() {
    bounded("partition the leader into a minority", async {
        let cluster = TestCluster::start(ClusterOptions::default()).await;
        let rec = Recorder::new();
        let traffic = Traffic::new(&rec, cluster.endpoints(), "part");
        let probe_name = "part-probe".to_owned();
        let pinned: Vec<String> = traffic
            .mutexes
            .iter()
            .cloned()
            .chain([probe_name.clone()])
            .collect();
        let pinner = Pinner::pin(
            &rec,
            cluster.endpoints(),
            &pinned,
            std::slice::from_ref(&traffic.event),
        )
        .await;
        let workers = traffic.spawn_workers(5, cluster.net.seed());
        traffic
            .wait_grants(GRANTS_PER_PHASE, "before the partition", &cluster)
            .await;

        // A client that knows only the current leader, with handles to a free mutex and a
        // contended one, opened while that node still leads.
        let old = cluster.wait_leader().await;
        let probe_client = {
            let mut config = ClientConfig::new([cluster.endpoint(old)]);
            config.request_timeout = Duration::from_secs(3);
            config.attempt_timeout = ATTEMPT_TIMEOUT;
            Client::connect_with_config(config).await.unwrap()
        };
        let mut probes = Vec::new();
        for (i, name) in [&probe_name, &traffic.mutexes[0]].into_iter().enumerate() {
            let session = probe_client
                .open_session(PIN_TTL)
                .await
                .expect("probe session on the leader");
            let me = Recorded {
                rec: &rec,
                me: ClientId(1_000 + i as u64),
            };
            let mutex = me
                .create_mutex(&session, name, false)
                .await
                .expect("probe handle");
            probes.push((session, me, mutex, name.clone()));
        }

        eprintln!("--- isolating leader {old}");
        let isolated_at = rec.now();
        let isolated_instant = Instant::now();
        cluster.net.isolate(old);
        let grants_at_partition = traffic.grants();

        // The isolated node must grant nothing, whether the mutex is free or contended; the
        // probes start at once, while it may still believe it leads.
        let probe_runs = probes.iter().map(|(_, me, mutex, name)| async move {
            let outcome = me.acquire(mutex, name, 1_000).await;
            (name.clone(), outcome)
        });
        let majority = async {
            let new = cluster.wait_new_leader(old).await;
            eprintln!(
                "--- node {new} leads the majority {:?} after the partition",
                isolated_instant.elapsed()
            );
            new
        };
        let (probed, new) = tokio::join!(futures_join_all(probe_runs), majority);
        for (name, outcome) in probed {
            eprintln!("--- acquire of {name} sent only to isolated node {old}: {outcome:?}");
            assert!(
                !matches!(outcome, Outcome::Acquired { .. }),
                "isolated ex-leader {old} granted {name}: {outcome:?}"
            );
        }
        for (_, me, _, _) in &probes {
            rec.lost_session(me.me);
        }

        traffic
            .wait_grants(
                grants_at_partition + GRANTS_PER_PHASE,
                "in the majority",
                &cluster,
            )
            .await;
        eprintln!(
            "--- {} grants in the majority {:?} after the partition, the first after {:?}",
            traffic.grants() - grants_at_partition,
            isolated_instant.elapsed(),
            first_grant_after(&rec, isolated_at).expect("a grant after the partition")
        );

        eprintln!("--- healing");
        cluster.net.heal();
        let commit = cluster.status(new).map_or(0, |s| s.commit);
        cluster.wait_applied(commit).await;
        let rejoined = cluster.status(old).expect("old leader runs");
        assert_ne!(
            rejoined.role,
            dlock_cluster::Role::Leader,
            "the old leader must not lead again right after healing: {}",
            cluster.describe()
        );
        let grants_at_heal = traffic.grants();
        traffic
            .wait_grants(grants_at_heal + GRANTS_PER_PHASE, "after healing", &cluster)
            .await;

        traffic.stop(workers).await;
        let (max_before, min_after) = tokens_around(&rec, isolated_at, isolated_at);
        let min_after = min_after.expect("grants after the partition");
        assert!(
            min_after > max_before,
            "a grant after the partition has token {min_after}, not above {max_before}"
        );
        for (session, _, mutex, _) in probes {
            drop(mutex);
            let _ = tokio::time::timeout(Duration::from_secs(1), session.close()).await;
        }
        pinner.confirm(&rec).await;
        let report = check_history(&rec);
        assert_coverage(&report, &traffic);
        drop(pinner);
        cluster.shutdown().await;
    })
    .await;
}

/// Runs futures concurrently and collects their outputs in order (no `futures` dependency).
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: Future,
{
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("ready")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_keeps_its_keepalives_through_a_leader_change_is_not_abandoned() {
    bounded("a live session survives a leader change", async {
        let mut cluster = TestCluster::start(ClusterOptions::default()).await;
        let rec = Recorder::new();
        let name = "alive-mutex".to_owned();
        let pinner = Pinner::pin(&rec, cluster.endpoints(), std::slice::from_ref(&name), &[]).await;

        let holder_client = client_for(cluster.endpoints()).await;
        let holder = holder_client.open_session(SHORT_TTL).await.unwrap();
        assert_eq!(holder.ttl(), SHORT_TTL);
        let h = Recorded {
            rec: &rec,
            me: ClientId(1),
        };
        let held = h.create_mutex(&holder, &name, false).await.unwrap();
        let Outcome::Acquired { token, .. } = h.acquire(&held, &name, 0).await else {
            panic!("the free mutex was not granted");
        };

        let old = cluster.wait_leader().await;
        eprintln!(
            "--- holder session {} holds {name} (token {token}); killing leader {old}",
            holder.id()
        );
        cluster.kill(old).await;
        let new = cluster.wait_new_leader(old).await;
        eprintln!("--- node {new} leads; letting 2.5 TTLs pass");
        // Time passes: more than twice the TTL after the failover, so an early expiry (a new
        // leader that did not grant grace, or lost the keepalives) would have happened.
        tokio::time::sleep(SHORT_TTL * 5 / 2).await;
        assert_eq!(
            holder.state(),
            SessionState::Alive,
            "the holder's lease clock"
        );

        let other_client = client_for(cluster.endpoints()).await;
        let other = other_client.open_session(WORKER_TTL).await.unwrap();
        let o = Recorded {
            rec: &rec,
            me: ClientId(2),
        };
        let contender = o.create_mutex(&other, &name, false).await.unwrap();
        assert_eq!(
            o.acquire(&contender, &name, 0).await,
            Outcome::TimedOut,
            "the mutex is still owned"
        );
        let state = held.query().await.unwrap();
        assert_eq!(
            state.owner_session_id,
            holder.id(),
            "owned by the holder: {state:?}"
        );
        assert_eq!(state.fencing_token, token, "same grant: {state:?}");
        assert!(!state.abandoned, "{state:?}");
        assert_eq!(
            h.release(&held, &name).await,
            Outcome::Ok,
            "the holder still owns it"
        );
        let after = o.acquire(&contender, &name, 5_000).await;
        let Outcome::Acquired {
            token: next,
            abandoned,
        } = after
        else {
            panic!("the released mutex was not granted: {after:?}");
        };
        assert!(!abandoned, "a released mutex is not abandoned");
        assert!(next > token, "token {next} after {token}");
        assert_eq!(o.release(&contender, &name).await, Outcome::Ok);

        cluster.restart(old).await;
        pinner.confirm(&rec).await;
        check_history(&rec);
        drop((held, contender, pinner));
        let _ = holder.close().await;
        let _ = other.close().await;
        cluster.shutdown().await;
    })
    .await;
}

/// A raw gRPC connection to one node, for a session that must not run the client's
/// keepalive task.
async fn raw(endpoint: String) -> DlockClient<tonic::transport::Channel> {
    DlockClient::connect(endpoint).await.expect("connect")
}

/// A session opened over raw gRPC: its id and its secret.
type RawSession = (u64, Vec<u8>);

fn header(session: &RawSession, seq: u64) -> Option<pb::RequestHeader> {
    Some(pb::RequestHeader {
        session_id: session.0,
        session_secret: session.1.clone(),
        seq,
        ack_below: seq,
        ..Default::default()
    })
}

/// One keepalive on a fresh stream; the reply's `expired`, or `None` if the call failed.
async fn raw_keepalive(
    raw: &mut DlockClient<tonic::transport::Channel>,
    session: &RawSession,
) -> Option<bool> {
    let request = tonic::codegen::tokio_stream::iter(vec![pb::KeepAliveRequest {
        session_id: session.0,
        session_secret: session.1.clone(),
    }]);
    let mut stream = raw.keep_alive(request).await.ok()?.into_inner();
    let reply = stream.message().await.ok()??;
    Some(reply.expired)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_stops_its_keepalives_is_expired_once_after_its_ttl_by_the_new_leader() {
    bounded("a silent session expires once, after its TTL", async {
        let mut cluster = TestCluster::start(ClusterOptions::default()).await;
        let rec = Recorder::new();
        let name = "silent-mutex".to_owned();
        let pinner = Pinner::pin(&rec, cluster.endpoints(), std::slice::from_ref(&name), &[]).await;

        // The silent holder speaks raw gRPC to the leader: no keepalive task, no close.
        let old = cluster.wait_leader().await;
        let mut leader = raw(cluster.endpoint(old)).await;
        let opened = leader
            .open_session(pb::OpenSessionRequest {
                ttl_ms: SHORT_TTL.as_millis() as u64,
                client_name: "silent holder".into(),
            })
            .await
            .expect("open the raw session")
            .into_inner();
        assert_eq!(opened.ttl_ms, SHORT_TTL.as_millis() as u64);
        let session: RawSession = (opened.session_id, opened.session_secret.clone());
        let holder = ClientId(1);
        let id = rec.invoke(
            holder,
            Op::Create {
                name: name.clone(),
                kind: ObjectKind::Mutex,
                keep_open: false,
            },
        );
        let created = leader
            .create(pb::CreateRequest {
                header: header(&session, 1),
                thread_id: 1,
                kind: pb::ObjectKind::Mutex as i32,
                name: Some(name.clone()),
                access: MUTEX_ALL_ACCESS,
                initial_count: 0,
                maximum_count: 0,
                ..Default::default()
            })
            .await
            .expect("create")
            .into_inner();
        assert_eq!(created.error, 183, "the pinner created it");
        rec.complete(
            id,
            Outcome::Created {
                already_existed: true,
            },
        );
        let id = rec.invoke(
            holder,
            Op::Acquire {
                mutex: name.clone(),
                timeout_ms: 0,
            },
        );
        let waited = leader
            .wait(pb::WaitRequest {
                header: header(&session, 2),
                thread_id: 1,
                handles: vec![created.handle],
                wait_all: false,
                timeout_ms: 0,
            })
            .await
            .expect("wait")
            .into_inner();
        assert_eq!((waited.result, waited.error), (0, 0), "granted");
        let token = waited.fencing_token;
        rec.complete(
            id,
            Outcome::Acquired {
                token,
                abandoned: false,
            },
        );

        // A waiter of another (healthy) session queues behind the holder.
        let waiter_client = client_for(cluster.endpoints()).await;
        let waiter = waiter_client.open_session(WORKER_TTL).await.unwrap();
        let w = Recorded {
            rec: &rec,
            me: ClientId(2),
        };
        let wanted = w.create_mutex(&waiter, &name, false).await.unwrap();
        let wait = {
            let rec = rec.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let w = Recorded {
                    rec: &rec,
                    me: ClientId(2),
                };
                let outcome = w.acquire(&wanted, &name, 30_000).await;
                (outcome, rec.now(), wanted)
            })
        };

        // A few keepalives that the leader sees, then silence.
        let mut last_keepalive = 0;
        for _ in 0..3 {
            tokio::time::sleep(SHORT_TTL / 4).await;
            last_keepalive = rec.now();
            assert_eq!(
                raw_keepalive(&mut leader, &session).await,
                Some(false),
                "renewed"
            );
        }
        drop(leader);
        eprintln!(
            "--- session {} holds {name} (token {token}), now silent; killing leader {old}",
            session.0
        );
        cluster.kill(old).await;
        let new = cluster.wait_new_leader(old).await;
        let elected = rec.now();
        eprintln!(
            "--- node {new} leads {:?} after the last keepalive",
            Duration::from_nanos(elected.saturating_sub(last_keepalive))
        );

        let (outcome, granted_at, wanted) = wait.await.expect("waiter task");
        let Outcome::Acquired {
            token: next,
            abandoned,
        } = outcome
        else {
            panic!("the waiter got {outcome:?} instead of the abandoned mutex");
        };
        let since_keepalive = Duration::from_nanos(granted_at.saturating_sub(last_keepalive));
        let since_election = Duration::from_nanos(granted_at.saturating_sub(elected));
        eprintln!(
            "--- waiter got {name} (token {next}, abandoned {abandoned}) {since_keepalive:?} \
             after the last keepalive, {since_election:?} after the election"
        );
        assert!(abandoned, "the silent owner's mutex is abandoned");
        assert!(next > token, "token {next} after {token}");
        assert!(
            since_keepalive >= SHORT_TTL,
            "expired {since_keepalive:?} after the last keepalive, before its TTL {SHORT_TTL:?}"
        );
        assert!(
            since_election <= SHORT_TTL + EXPIRY_SLACK,
            "expired {since_election:?} after the new leader's election, later than the TTL \
             {SHORT_TTL:?} + {EXPIRY_SLACK:?}"
        );

        // Exactly once: the session is gone for good, and nobody else gets the mutex.
        let mut now_leader = raw(cluster.endpoint(new)).await;
        assert_ne!(
            raw_keepalive(&mut now_leader, &session).await,
            Some(false),
            "the expired session cannot be renewed"
        );
        let other = waiter_client.open_session(WORKER_TTL).await.unwrap();
        let o = Recorded {
            rec: &rec,
            me: ClientId(3),
        };
        let contender = o.create_mutex(&other, &name, false).await.unwrap();
        assert_eq!(o.acquire(&contender, &name, 0).await, Outcome::TimedOut);
        assert_eq!(w.release(&wanted, &name).await, Outcome::Ok);
        let after = o.acquire(&contender, &name, 5_000).await;
        assert!(
            matches!(
                after,
                Outcome::Acquired {
                    abandoned: false,
                    ..
                }
            ),
            "{after:?}"
        );
        assert_eq!(o.release(&contender, &name).await, Outcome::Ok);
        rec.lost_session(holder);

        cluster.restart(old).await;
        pinner.confirm(&rec).await;
        let report = check_history(&rec);
        assert_eq!(report.abandoned_grants, 1, "one abandonment: {report}");
        assert!(report.abandon_pairs_checked >= 2, "{report}");
        drop((wanted, contender, pinner));
        let _ = waiter.close().await;
        let _ = other.close().await;
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_blocked_across_a_failover_gets_exactly_one_outcome() {
    bounded("a wait survives failover", async {
        let mut cluster = TestCluster::start(ClusterOptions::default()).await;
        let rec = Recorder::new();
        let name = "failover-wait".to_owned();
        let pinner = Pinner::pin(&rec, cluster.endpoints(), std::slice::from_ref(&name), &[]).await;

        let holder_client = client_for(cluster.endpoints()).await;
        let holder = holder_client.open_session(WORKER_TTL).await.unwrap();
        let h = Recorded {
            rec: &rec,
            me: ClientId(1),
        };
        let held = h.create_mutex(&holder, &name, false).await.unwrap();
        let Outcome::Acquired { token, .. } = h.acquire(&held, &name, 0).await else {
            panic!("the free mutex was not granted");
        };

        let waiter_client = client_for(cluster.endpoints()).await;
        let waiter = waiter_client.open_session(WORKER_TTL).await.unwrap();
        let w = Recorded {
            rec: &rec,
            me: ClientId(2),
        };
        let wanted = w.create_mutex(&waiter, &name, false).await.unwrap();
        let old = cluster.wait_leader().await;
        // The wait is registered once the leader applied one more entry after this point
        // (barring a keepalive checkpoint landing first, once a second: then the wait is
        // registered a few milliseconds later, or re-sent to the new leader, and the
        // scenario still checks that it resolves once).
        let applied_before = cluster.status(old).map_or(0, |s| s.applied);
        let wait = {
            let rec = rec.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let w = Recorded {
                    rec: &rec,
                    me: ClientId(2),
                };
                let outcome = w.acquire(&wanted, &name, u32::MAX).await;
                (outcome, wanted)
            })
        };
        let deadline = Instant::now() + PROGRESS_DEADLINE;
        while cluster.status(old).map_or(0, |s| s.applied) <= applied_before {
            assert!(Instant::now() < deadline, "the wait was never applied");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            !wait.is_finished(),
            "the wait must block while the mutex is held"
        );

        eprintln!("--- waiter blocked on {name} (held with token {token}); killing leader {old}");
        cluster.kill(old).await;
        let new = cluster.wait_new_leader(old).await;
        eprintln!("--- node {new} leads; the holder releases");
        assert!(
            !wait.is_finished(),
            "the wait must still block after the failover"
        );
        assert_eq!(h.release(&held, &name).await, Outcome::Ok);

        let (outcome, wanted) = tokio::time::timeout(PROGRESS_DEADLINE, wait)
            .await
            .expect("the waiter was never granted")
            .expect("waiter task");
        let Outcome::Acquired {
            token: next,
            abandoned,
        } = outcome
        else {
            panic!("the waiter got {outcome:?}");
        };
        eprintln!("--- waiter granted {name} with token {next}");
        assert!(!abandoned, "the holder released it");
        assert!(next > token, "token {next} after {token}");
        let state = wanted.query().await.unwrap();
        assert_eq!(state.owner_session_id, waiter.id(), "{state:?}");
        assert_eq!(state.fencing_token, next, "{state:?}");
        assert_eq!(w.release(&wanted, &name).await, Outcome::Ok);

        cluster.restart(old).await;
        pinner.confirm(&rec).await;
        check_history(&rec);
        drop((held, wanted, pinner));
        let _ = holder.close().await;
        let _ = waiter.close().await;
        cluster.shutdown().await;
    })
    .await;
}

/// A waiter blocked in an INFINITE wait on the leader; the leader is partitioned away (its
/// client port stays reachable, so the wait call does not break); the holder releases through
/// the new leader, which grants the mutex to the waiter in the log. The waiter's client must
/// learn that grant within [`PARTITIONED_WAIT_DEADLINE`], not when the partition heals: until
/// it does, the waiter's session (whose keepalives moved to the majority) owns the mutex
/// without knowing, and nobody else can take it.
///
/// Regression test: `DlockService::wait` used to block on the local wait registry until the
/// outcome was applied *on that node*; a node cut off from the majority never applies it and
/// keeps answering HTTP/2 pings, so the call never ended. A blocked wait now also ends with
/// `UNAVAILABLE` (and the leader hint) when its node stops being leader (check-quorum makes a
/// cut-off leader step down), and the client re-attaches on the new leader with the same
/// (session, seq), which returns the recorded outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_blocked_on_a_leader_that_is_partitioned_away_is_answered_by_the_majority() {
    bounded("a wait survives a partition of its node", async {
        let cluster = TestCluster::start(ClusterOptions::default()).await;
        let rec = Recorder::new();
        let name = "partition-wait".to_owned();
        let pinner = Pinner::pin(&rec, cluster.endpoints(), std::slice::from_ref(&name), &[]).await;

        let holder_client = client_for(cluster.endpoints()).await;
        let holder = holder_client.open_session(WORKER_TTL).await.unwrap();
        let h = Recorded {
            rec: &rec,
            me: ClientId(1),
        };
        let held = h.create_mutex(&holder, &name, false).await.unwrap();
        let Outcome::Acquired { token, .. } = h.acquire(&held, &name, 0).await else {
            panic!("the free mutex was not granted");
        };

        let waiter_client = client_for(cluster.endpoints()).await;
        let waiter = waiter_client.open_session(WORKER_TTL).await.unwrap();
        let w = Recorded {
            rec: &rec,
            me: ClientId(2),
        };
        let wanted = w.create_mutex(&waiter, &name, false).await.unwrap();
        let old = cluster.wait_leader().await;
        let applied_before = cluster.status(old).map_or(0, |s| s.applied);
        let mut wait = {
            let rec = rec.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let w = Recorded {
                    rec: &rec,
                    me: ClientId(2),
                };
                let outcome = w.acquire(&wanted, &name, u32::MAX).await;
                (outcome, wanted)
            })
        };
        let deadline = Instant::now() + PROGRESS_DEADLINE;
        while cluster.status(old).map_or(0, |s| s.applied) <= applied_before {
            assert!(Instant::now() < deadline, "the wait was never applied");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        eprintln!("--- waiter blocked on {name} at leader {old}; isolating it");
        cluster.net.isolate(old);
        let new = cluster.wait_new_leader(old).await;
        eprintln!("--- node {new} leads the majority; the holder releases");
        assert_eq!(h.release(&held, &name).await, Outcome::Ok);
        let released = Instant::now();

        let (outcome, wanted) =
            match tokio::time::timeout(PARTITIONED_WAIT_DEADLINE, &mut wait).await {
                Ok(done) => done.expect("waiter task"),
                Err(_) => {
                    // Show what the majority decided meanwhile.
                    let state = held.query().await;
                    wait.abort();
                    panic!(
                        "the waiter (session {}) did not learn its outcome within \
                     {PARTITIONED_WAIT_DEADLINE:?} while its node {old} was partitioned away; \
                     the majority (leader {new}) says the mutex is {state:?}",
                        waiter.id()
                    );
                }
            };
        eprintln!(
            "--- waiter got {outcome:?} {:?} after the release",
            released.elapsed()
        );
        let Outcome::Acquired { token: next, .. } = outcome else {
            panic!("the waiter got {outcome:?}");
        };
        assert!(next > token, "token {next} after {token}");
        assert_eq!(w.release(&wanted, &name).await, Outcome::Ok);
        cluster.net.heal();
        pinner.confirm(&rec).await;
        check_history(&rec);
        drop((held, wanted, pinner));
        let _ = holder.close().await;
        let _ = waiter.close().await;
        cluster.shutdown().await;
    })
    .await;
}

/// Issue 8, "keepalives renewed without proof of leadership": a leader cut off from the
/// majority still believes it leads for up to an election timeout, and used to answer every
/// keepalive `Renewed` meanwhile, while the majority's new leader may expire the session and
/// hand its mutexes on. Now a keepalive is only renewed after a ReadIndex round that started
/// after it arrived confirmed the leadership, which an isolated node cannot get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_renews_no_keepalive() {
    bounded("an isolated leader renews no keepalive", async {
        let cluster = TestCluster::start(ClusterOptions::default()).await;
        let old = cluster.wait_leader().await;
        let mut leader = raw(cluster.endpoint(old)).await;
        let session = leader
            .open_session(pb::OpenSessionRequest {
                ttl_ms: 10_000,
                client_name: "keepalive on an isolated leader".into(),
            })
            .await
            .expect("open a session")
            .into_inner();
        let session: RawSession = (session.session_id, session.session_secret);
        assert_eq!(
            raw_keepalive(&mut leader, &session).await,
            Some(false),
            "renewed while the leader leads"
        );
        cluster.net.isolate(old);
        let answer = raw_keepalive(&mut leader, &session).await;
        assert_eq!(
            answer, None,
            "an isolated leader must not answer a keepalive (answered expired={answer:?})"
        );
        cluster.net.heal();
        cluster.shutdown().await;
    })
    .await;
}

/// Issue 8, "keepalives renewed without proof of leadership", the stalled case: a leader whose
/// raft thread is stuck (a disk stall, a snapshot build) for longer than a TTL still has a
/// running gRPC service. It used to answer keepalives `Renewed` from memory, so its clients
/// stayed `Alive` while the other nodes elected a new leader that expired the session after a
/// TTL and handed its mutex on. Now the stalled node cannot confirm its leadership, its
/// keepalive streams go unanswered, the client moves to the new leader, and, checked from both
/// sides, no session is expired while its client believes it is alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_leader_renews_no_lease_and_expires_no_live_session() {
    bounded("a stalled leader renews no lease", async {
        let cluster = TestCluster::start(ClusterOptions::default()).await;
        let old = cluster.wait_leader().await;
        let client = client_for(cluster.endpoints()).await;
        let session = client.open_session(WORKER_TTL).await.unwrap();
        let mutex = session
            .create_mutex(Some("stalled-leader-mutex"), true)
            .await
            .unwrap();
        let mut states = session.watch_state();
        let timeline = tokio::spawn(async move {
            let mut seen = vec![*states.borrow_and_update()];
            while states.changed().await.is_ok() {
                let state = *states.borrow_and_update();
                seen.push(state);
                if state == SessionState::Expired {
                    break;
                }
            }
            seen
        });
        let stall = WORKER_TTL + Duration::from_secs(2);
        eprintln!("--- stalling leader {old}'s raft thread for {stall:?}");
        cluster
            .server(old)
            .expect("the leader runs")
            .raft()
            .stall_for_test(stall);
        tokio::time::sleep(stall + Duration::from_secs(2)).await;
        let client_state = session.state();
        let state = mutex.query().await;
        timeline.abort();
        let seen = timeline.await.unwrap_or_default();
        eprintln!("--- client states during the stall: {seen:?}, now {client_state:?}");
        assert_ne!(
            client_state,
            SessionState::Expired,
            "the client kept its lease through the new leader"
        );
        let state = state.expect("the session is alive on the server too");
        assert_eq!(
            state.owner_session_id,
            session.id(),
            "the server expired a session whose client believes it is alive: {state:?}"
        );
        cluster.shutdown().await;
    })
    .await;
}

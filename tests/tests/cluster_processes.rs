//! Fault scenarios against three (or four) real `dlockd` processes, driven in-process through
//! the async `dlock` API (no environment needed) while [`ProcCluster`] kills, restarts, wipes,
//! adds and removes nodes:
//!
//! * `kill -9` of the leader under contended mutex traffic, checked with the history checker;
//!   prints the time from the kill to the first acquisition on the new leader;
//! * a rolling restart of all three nodes, one at a time (down, up again, wait until it has
//!   applied the leader's commit index), under light traffic, once with SIGTERM (an operator's
//!   rolling restart) and once with SIGKILL: every acknowledged `ReleaseSemaphore` applied
//!   exactly once, no long write stall, sessions and mutex ownership survive;
//! * wipe one node, rejoin it from a snapshot (remove, wipe, restart as a joining node with the
//!   same id, add as learner, catch up, promote), then lose an original node: the rejoined node
//!   votes and serves the pre-wipe state;
//! * add a fourth node as a learner, promote it, remove the leader, all under checked traffic;
//! * membership replies list the members after the change.
//!
//! The tests run one at a time (each starts its own cluster; two at once on two cores would
//! make elections flaky), every wait is a poll with a deadline, and each test takes 2-20 s.
//! A failing test keeps its cluster directory (data and one log per node) and prints its path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dlock::{Client, Error, Session, Timeout, WaitOutcome};
use dlock_proto::v1 as pb;
use dlock_proto::v1::dlock_client::DlockClient;
use dlock_tests::contention::{Contention, Pin, Traffic, check_history, wait_until};
use dlock_tests::history::{ClientId, Outcome, Recorder};
use dlock_tests::procs::ProcCluster;
use dlock_tests::unique;
use tokio::task::JoinHandle;

/// Flags of every node: a 50 ms tick (elections after 0.5-1 s of silence).
const FLAGS: &[&str] = &["--tick-ms", "50"];
/// TTL of the sessions that pin objects and must survive every scenario.
const PIN_TTL: Duration = Duration::from_secs(5);
/// Bound of every "wait until the traffic made progress" step.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(30);
/// Bound of stopping the traffic (an acquire in flight takes its timeout plus, at worst, the
/// client's request timeout).
const STOP_DEADLINE: Duration = Duration::from_secs(20);

/// One scenario at a time (see the module docs). A tokio mutex: it is held across awaits.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Semaphore writers: each with its own session, `ReleaseSemaphore(1)` in a loop, counting
/// acknowledgements and measuring the longest pause between two of them. Failures are
/// collected (the scenarios expect none: the client retries for 10 s); a writer whose session
/// is lost opens a new one so that the traffic, and the stall measurement, go on.
struct Writers {
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    /// The longest time without any acknowledgement (ns) since the last [`Writers::max_stall`].
    stall: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<WriterEnd>>,
}

/// One writer's end state.
struct WriterEnd {
    /// The session the writer started with.
    first_session: Session,
    /// How many times it had to open a new session.
    replaced: u64,
    /// Every failed call.
    errors: Vec<String>,
    /// Failed calls that may still have been applied (anything but a Win32 error reply).
    ambiguous: u64,
}

/// What the writers did, once stopped.
struct Written {
    acks: u64,
    ambiguous: u64,
    replaced: u64,
    first_sessions: Vec<Session>,
    errors: Vec<String>,
}

async fn writer_session(client: &Client, name: &str) -> Result<(Session, dlock::Semaphore), Error> {
    let session = client.open_session(PIN_TTL).await?;
    let sem = session.open_semaphore(name).await?;
    Ok((session, sem))
}

impl Writers {
    async fn start(client: &Client, name: &str, writers: usize, pause: Duration) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicU64::new(0));
        let stall = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let last_ack = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..writers {
            let (first_session, mut sem) = writer_session(client, name).await.expect("writer");
            let (stop, acks) = (stop.clone(), acks.clone());
            let (stall, last_ack) = (stall.clone(), last_ack.clone());
            let (client, name) = (client.clone(), name.to_owned());
            tasks.push(tokio::spawn(async move {
                let mut end = WriterEnd {
                    first_session: first_session.clone(),
                    replaced: 0,
                    errors: Vec::new(),
                    ambiguous: 0,
                };
                let mut session = first_session;
                while !stop.load(Ordering::Acquire) {
                    match sem.release(1).await {
                        Ok(_) => {
                            acks.fetch_add(1, Ordering::AcqRel);
                            let now = u64::try_from(start.elapsed().as_nanos()).unwrap();
                            let previous = last_ack.fetch_max(now, Ordering::AcqRel);
                            stall.fetch_max(now.saturating_sub(previous), Ordering::AcqRel);
                        }
                        Err(err) => {
                            end.errors.push(format!("ReleaseSemaphore: {err}"));
                            if !matches!(err, Error::Win32(_)) {
                                end.ambiguous += 1;
                            }
                            if session.state() == dlock::SessionState::Expired
                                && let Ok((s, m)) = writer_session(&client, &name).await
                            {
                                (session, sem) = (s, m);
                                end.replaced += 1;
                            }
                        }
                    }
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
                end
            }));
        }
        Writers {
            stop,
            acks,
            stall,
            tasks,
        }
    }

    /// The longest pause between two acknowledgements since the last call.
    fn max_stall(&self) -> Duration {
        Duration::from_nanos(self.stall.swap(0, Ordering::AcqRel))
    }

    fn acks(&self) -> u64 {
        self.acks.load(Ordering::Acquire)
    }

    async fn progress(&self, more: u64, what: &str) {
        let target = self.acks() + more;
        let acks = self.acks.clone();
        wait_until(what, PROGRESS_DEADLINE, || {
            acks.load(Ordering::Acquire) >= target
        })
        .await;
    }

    /// Stops the writers and sums up what they did.
    async fn stop(self) -> Written {
        self.stop.store(true, Ordering::Release);
        let mut written = Written {
            acks: 0,
            ambiguous: 0,
            replaced: 0,
            first_sessions: Vec::new(),
            errors: Vec::new(),
        };
        for task in self.tasks {
            let end = tokio::time::timeout(STOP_DEADLINE, task)
                .await
                .expect("a writer did not stop in time")
                .expect("writer task");
            written.ambiguous += end.ambiguous;
            written.replaced += end.replaced;
            written.first_sessions.push(end.first_session);
            written.errors.extend(end.errors);
        }
        written.acks = self.acks.load(Ordering::Acquire);
        written
    }
}

/// Checks the counter after `written`: every acknowledged release applied exactly once (if
/// some calls had an unknown outcome, each may or may not have been applied).
fn assert_counter(count_before_probe: u64, written: &Written) {
    assert!(
        (written.acks..=written.acks + written.ambiguous).contains(&count_before_probe),
        "counter {count_before_probe}, acknowledged {}, unknown outcomes {}: an acknowledged \
         ReleaseSemaphore was lost or one was applied twice",
        written.acks,
        written.ambiguous
    );
}

/// Fails with a summary (each distinct error once, with its count) if any write failed.
fn assert_no_errors(errors: &[String]) {
    if errors.is_empty() {
        return;
    }
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for e in errors {
        *counts.entry(e.as_str()).or_default() += 1;
    }
    panic!("{} writes failed: {counts:?}", errors.len());
}

/// A raw client API connection to one node (no retries, no hints): what that node itself
/// answers.
async fn direct(cluster: &ProcCluster, id: u64) -> DlockClient<tonic::transport::Channel> {
    DlockClient::connect(format!("http://{}", cluster.node(id).client_addr))
        .await
        .expect("connect to the node directly")
}

/// `CheckFencingToken` answered by node `id` itself (a ReadIndex read of its own state).
async fn token_valid_at(cluster: &ProcCluster, id: u64, name: &str, token: u64) -> bool {
    direct(cluster, id)
        .await
        .check_fencing_token(pb::CheckFencingTokenRequest {
            name: name.into(),
            fencing_token: token,
        })
        .await
        .unwrap_or_else(|s| panic!("CheckFencingToken at node {id}: {s}"))
        .into_inner()
        .valid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_under_contention_keeps_one_owner_and_fails_over() {
    let _serial = SERIAL.lock().await;
    let mut cluster = ProcCluster::start(3, FLAGS).await;
    let old_leader = cluster.leader().await;
    let client = Client::connect(cluster.endpoint_list()).await.unwrap();
    let rec = Recorder::new();
    let pin = Pin::open(&client, &rec, PIN_TTL, ClientId(1)).await;
    let names = vec![unique("hot-a"), unique("hot-b")];
    for name in &names {
        pin.mutex(name).await;
    }
    // The probe: an uncontended mutex of its own session, locked right after the kill.
    let probe_session = client.open_session(PIN_TTL).await.unwrap();
    let probe = probe_session
        .create_mutex(Some(&unique("probe")), false)
        .await
        .unwrap();

    let traffic = Contention::start(&client, &rec, &names, 4, Traffic::default());
    traffic.progress(40, "grants before the kill").await;

    let killed_at = Instant::now();
    let killed_at_rec = rec.now();
    cluster.kill9(old_leader);
    let outcome = probe.lock(Timeout::Millis(10_000)).await;
    let probe_failover = killed_at.elapsed();
    assert!(
        matches!(outcome, Ok(WaitOutcome::Signaled { .. })),
        "probe after the kill: {outcome:?}"
    );
    probe.release().await.unwrap();
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, old_leader);
    traffic.progress(40, "grants after the kill").await;

    // The killed node comes back, catches up, and the traffic goes on.
    cluster.restart(old_leader).await;
    cluster.wait_caught_up(old_leader).await;
    traffic.progress(20, "grants after the restart").await;

    let stats = traffic.stop().await;
    pin.confirm_alive();
    let history = rec.history();
    // The first contended acquisition invoked after the kill, and the first one completed.
    let first_after = |invoked_after: bool| {
        history
            .records
            .iter()
            .filter(|r| matches!(r.outcome(), Outcome::Acquired { .. }))
            .filter(|r| !invoked_after || r.invoke > killed_at_rec)
            .filter_map(|r| r.returned())
            .filter(|t| *t > killed_at_rec)
            .min()
            .map(|t| Duration::from_nanos(t - killed_at_rec))
    };
    eprintln!(
        "failover: killed leader {old_leader}, new leader {new_leader}; kill -> probe acquired \
         on the new leader: {probe_failover:?}; kill -> first contended grant invoked after the \
         kill: {:?} (first grant reply of any acquire after the kill, which may have been \
         committed before it: {:?})",
        first_after(true),
        first_after(false)
    );
    eprintln!("workers: {stats:?}");
    check_history(&rec.history(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_by_sigterm_loses_no_acknowledged_write_and_keeps_sessions() {
    rolling_restart(Stop::Sigterm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_by_kill_9_loses_no_acknowledged_write_and_keeps_sessions() {
    rolling_restart(Stop::Kill9).await;
}

/// How a rolling restart takes a node down.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// A graceful shutdown (what an operator's rolling restart does).
    Sigterm,
    /// A crash.
    Kill9,
}

/// Three nodes, a pinned session holding one mutex, and a counter semaphore for writers: the
/// start of the tests that restart or wipe nodes and then check nothing was lost.
struct Holding {
    cluster: ProcCluster,
    client: Client,
    pin: Session,
    /// Name of the counter semaphore.
    counter: String,
    sem: dlock::Semaphore,
    held_name: String,
    held: dlock::Mutex,
    /// Fencing token of the pinned session's hold.
    token: u64,
}

impl Holding {
    async fn start(flags: &[&str], held_prefix: &str) -> Holding {
        let cluster = ProcCluster::start(3, flags).await;
        cluster.leader().await;
        let client = Client::connect(cluster.endpoint_list()).await.unwrap();
        let pin = client.open_session(PIN_TTL).await.unwrap();
        let counter = unique("counter");
        let sem = pin
            .create_semaphore(Some(&counter), 0, i32::MAX)
            .await
            .unwrap();
        let held_name = unique(held_prefix);
        let held = pin.create_mutex(Some(&held_name), false).await.unwrap();
        let token = held
            .lock(Timeout::Millis(0))
            .await
            .unwrap()
            .fencing_token()
            .expect("held");
        Holding {
            cluster,
            client,
            pin,
            counter,
            sem,
            held_name,
            held,
            token,
        }
    }
}

/// Restarts the three nodes one at a time under light semaphore traffic, each time waiting
/// until the restarted node has applied the leader's commit index; then checks the counter
/// (no acknowledged write lost or doubled), the sessions and a mutex held throughout.
async fn rolling_restart(how: Stop) {
    let _serial = SERIAL.lock().await;
    let Holding {
        mut cluster,
        client,
        pin,
        counter,
        sem,
        held_name,
        held,
        token,
    } = Holding::start(FLAGS, "held").await;

    let writers = Writers::start(&client, &counter, 3, Duration::from_millis(2)).await;
    writers
        .progress(50, "writes before the rolling restart")
        .await;
    let mut stalls = Vec::new();
    for id in cluster.ids() {
        let leader = cluster.leader().await;
        writers.max_stall();
        let started = Instant::now();
        match how {
            Stop::Sigterm => cluster.stop(id).await,
            Stop::Kill9 => cluster.kill9(id),
        }
        let stopped = started.elapsed();
        cluster.restart(id).await;
        let applied = cluster.wait_caught_up(id).await;
        let role = if id == leader { "leader" } else { "follower" };
        eprintln!(
            "rolling restart: node {id} ({role}) stopped ({how:?}) in {stopped:?}, back and \
             caught up (applied {applied}) after {:?}",
            started.elapsed()
        );
        let what = format!("writes after restarting node {id}");
        writers.progress(50, &what).await;
        let stall = writers.max_stall();
        eprintln!(
            "rolling restart ({how:?}): longest write stall around node {id} ({role}): {stall:?}"
        );
        stalls.push((id, role, stall));
    }
    let written = writers.stop().await;
    // No restart may stall the writers for long: sessions must live through it (their TTL is
    // 5 s; the client's lease estimate reports jeopardy after 2/3 of it).
    for (id, role, stall) in &stalls {
        assert!(
            *stall < Duration::from_secs(3),
            "{how:?} of node {id} ({role}) stalled every write for {stall:?}; all stalls: \
             {stalls:?}"
        );
    }
    // Every acknowledged release applied exactly once.
    let previous = sem.release(1).await.unwrap();
    assert_counter(previous as u64, &written);
    assert_no_errors(&written.errors);
    // Sessions and ownership survived. A session whose keepalive was held up by the last
    // failover may still be in jeopardy (a warning, not a loss) until its next renewal, a
    // keepalive interval later: it must be renewed, never expired.
    assert_renewed(&pin, "pin session").await;
    assert_eq!(written.replaced, 0, "writer sessions were lost");
    for s in &written.first_sessions {
        assert_renewed(s, "writer session").await;
    }
    let state = held.query().await.unwrap();
    assert_eq!(
        (state.owner_session_id, state.fencing_token),
        (pin.id(), token)
    );
    assert!(client.check_fencing_token(&held_name, token).await.unwrap());
    held.release().await.unwrap();
    let other = client.open_session(PIN_TTL).await.unwrap();
    let m = other.open_mutex(&held_name).await.unwrap();
    let outcome = m.lock(Timeout::Millis(5_000)).await.unwrap();
    assert!(
        matches!(outcome, WaitOutcome::Signaled { .. }),
        "released, not abandoned: {outcome:?}"
    );
    eprintln!(
        "rolling restart ({how:?}): {} acknowledged writes, all applied once",
        written.acks
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_rejoins_from_a_snapshot_and_then_votes() {
    let _serial = SERIAL.lock().await;
    let flags: Vec<&str> = FLAGS
        .iter()
        .copied()
        .chain(["--snapshot-interval-entries", "50"])
        .collect();
    let Holding {
        mut cluster,
        client,
        pin,
        counter,
        sem,
        held_name: before_name,
        held: _before,
        token,
    } = Holding::start(&flags, "before-wipe").await;

    // Enough entries for several snapshots and compactions before the wipe.
    let writers = Writers::start(&client, &counter, 3, Duration::ZERO).await;
    writers.progress(300, "writes before the wipe").await;

    // Remove node 3, wipe it, restart it empty as a joining node with the same id.
    cluster.remove(3).await.expect("RemoveNode 3");
    cluster.wait_members(&[(1, true), (2, true)]).await;
    cluster.wipe(3);
    cluster.rejoin(3, &[1, 2]).await;
    writers.progress(100, "writes while node 3 is out").await;
    cluster.add_learner(3).await.expect("AddLearner 3");
    cluster
        .wait_members(&[(1, true), (2, true), (3, false)])
        .await;
    let applied = cluster.wait_caught_up(3).await;
    cluster.promote(3).await.expect("PromoteLearner 3");
    cluster
        .wait_members(&[(1, true), (2, true), (3, true)])
        .await;
    let log = std::fs::read_to_string(&cluster.node(3).log).unwrap();
    let snapshot_index: u64 = log
        .lines()
        .filter_map(|l| l.split("installing snapshot index=").nth(1))
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .max()
        .expect("node 3 installed a snapshot after the wipe");
    assert!(snapshot_index > 50, "snapshot at {snapshot_index}");
    eprintln!("rejoin: node 3 installed a snapshot at index {snapshot_index}, applied {applied}");
    // Node 3's own state machine has the pre-wipe grant.
    assert!(token_valid_at(&cluster, 3, &before_name, token).await);
    assert!(!token_valid_at(&cluster, 3, &before_name, token + 1).await);

    // Lose an original node (the leader if it is one): the cluster needs node 3's vote.
    let leader = cluster.leader().await;
    let victim = if leader == 3 { 1 } else { leader };
    cluster.kill9(victim);
    let new_leader = cluster.leader().await;
    eprintln!("rejoin: killed node {victim}; leader now {new_leader}");
    writers
        .progress(100, "writes with node 3 as one of two voters")
        .await;

    // The pre-wipe mutex opens through node 3 and is still held by the pin with its token.
    let via3 = Client::connect([cluster.node(3).endpoint()]).await.unwrap();
    let session = via3.open_session(PIN_TTL).await.unwrap();
    let opened = session.open_mutex(&before_name).await.unwrap();
    let state = opened.query().await.unwrap();
    assert_eq!(
        (state.owner_session_id, state.fencing_token),
        (pin.id(), token)
    );
    assert!(token_valid_at(&cluster, 3, &before_name, token).await);
    let written = writers.stop().await;
    assert_no_errors(&written.errors);
    let previous = sem.release(1).await.unwrap();
    assert_counter(previous as u64, &written);
    // And node 3's own copy of the counter agrees.
    let query = direct(&cluster, 3)
        .await
        .query(pb::QueryRequest {
            session_id: pin.id(),
            session_secret: pin.secret().to_vec(),
            handle: sem.handle(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(query.count, previous + 1, "node 3's counter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_is_added_promoted_and_an_old_one_removed_under_traffic() {
    let _serial = SERIAL.lock().await;
    let mut cluster = ProcCluster::start(3, FLAGS).await;
    cluster.leader().await;
    let client = Client::connect(cluster.endpoint_list()).await.unwrap();
    let rec = Recorder::new();
    let pin = Pin::open(&client, &rec, PIN_TTL, ClientId(1)).await;
    let names = vec![unique("hot-a"), unique("hot-b")];
    for name in &names {
        pin.mutex(name).await;
    }
    let traffic = Contention::start(&client, &rec, &names, 4, Traffic::default());
    traffic.progress(30, "grants before the change").await;

    cluster.start_joining(4, &[1, 2, 3]).await;
    cluster.add_learner(4).await.expect("AddLearner 4");
    cluster
        .wait_members(&[(1, true), (2, true), (3, true), (4, false)])
        .await;
    cluster.wait_caught_up(4).await;
    traffic.progress(20, "grants with a learner").await;
    cluster.promote(4).await.expect("PromoteLearner 4");
    cluster
        .wait_members(&[(1, true), (2, true), (3, true), (4, true)])
        .await;
    traffic.progress(20, "grants with four voters").await;

    // Remove the leader itself (it hands leadership over first; the call follows the hint).
    let removed = cluster.leader().await;
    assert_ne!(removed, 4);
    cluster
        .remove(removed)
        .await
        .expect("RemoveNode of the leader");
    let rest: Vec<(u64, bool)> = [1, 2, 3, 4]
        .into_iter()
        .filter(|id| *id != removed)
        .map(|id| (id, true))
        .collect();
    cluster.wait_members(&rest).await;
    cluster.stop(removed).await;
    traffic.progress(20, "grants after the removal").await;

    // Node 4 counts: with another old node down, the cluster still commits.
    let down = rest.iter().map(|(id, _)| *id).find(|id| *id != 4).unwrap();
    cluster.kill9(down);
    let leader = cluster.leader().await;
    eprintln!("membership: removed {removed}, killed {down}, leader now {leader}");
    traffic
        .progress(20, "grants with node 4 in the quorum")
        .await;

    let stats = traffic.stop().await;
    pin.confirm_alive();
    eprintln!("workers: {stats:?}");
    check_history(&rec.history(), 80);
}

/// `MembershipReply.members` is documented as "every member after the change".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_reply_lists_the_members_after_the_change() {
    let _serial = SERIAL.lock().await;
    let mut cluster = ProcCluster::start(3, FLAGS).await;
    cluster.leader().await;
    cluster.start_joining(4, &[1, 2, 3]).await;
    let members = |reply: dlock_proto::v1::MembershipReply| {
        let mut m: Vec<(u64, bool)> = reply.members.iter().map(|m| (m.node_id, m.voter)).collect();
        m.sort_unstable();
        m
    };
    let added = members(cluster.add_learner(4).await.expect("AddLearner 4"));
    cluster.wait_caught_up(4).await;
    let promoted = members(cluster.promote(4).await.expect("PromoteLearner 4"));
    let removed = members(cluster.remove(4).await.expect("RemoveNode 4"));
    assert_eq!(
        (added, promoted, removed),
        (
            vec![(1, true), (2, true), (3, true), (4, false)],
            vec![(1, true), (2, true), (3, true), (4, true)],
            vec![(1, true), (2, true), (3, true)],
        ),
        "the replies to AddLearner, PromoteLearner and RemoveNode"
    );
}

/// Waits (bounded by a TTL) until `session` is `Alive` again: renewed, not expired.
async fn assert_renewed(session: &dlock::Session, what: &str) {
    let mut states = session.watch_state();
    // The guard `wait_for` returns must be gone before `state()` publishes to the channel.
    let renewed = tokio::time::timeout(
        PIN_TTL,
        states.wait_for(|s| *s != dlock::SessionState::Jeopardy),
    )
    .await
    .is_ok_and(|changed| changed.is_ok());
    let state = session.state();
    assert!(
        renewed && state == dlock::SessionState::Alive,
        "{what} not renewed within {PIN_TTL:?}: {state:?}"
    );
}

//! Keepalives: renewing a session's lease at the leader ([`keep_alive`]) once a
//! [`LeaseConfirmer`] round has proved, after the keepalive arrived, that this node still leads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::replica::{Replica, Touch, lock};

/// How long a keepalive that reaches a new leader waits for its timers to be rebuilt for the
/// term (one ReadIndex round, normally milliseconds) before it is refused.
const TIMERS_READY_WAIT: Duration = Duration::from_secs(2);

/// Confirms this node's leadership for keepalives, in rounds: one ReadIndex (a heartbeat round
/// acknowledged by a quorum) confirms every keepalive that arrived before the round started, so
/// the cost is one round per few milliseconds of keepalives, not one per keepalive, and
/// keepalives still never touch the log.
pub struct LeaseConfirmer {
    node: dlock_cluster::Node,
    /// How long a keepalive waits for its round: a node that cannot confirm within about an
    /// election timeout (a stalled raft thread) refuses it, so the client moves on at once.
    wait: Duration,
    state: std::sync::Mutex<ConfirmRounds>,
    /// `(round, term)` of the latest finished round: the term it confirmed this node leads in
    /// from its start to its end, or `None` if it failed.
    done: watch::Sender<(u64, Option<u64>)>,
}

#[derive(Default)]
struct ConfirmRounds {
    /// The round started last (0: none yet).
    started: u64,
    /// Whether that round is still running.
    running: bool,
    /// The latest round a keepalive waits for.
    wanted: u64,
}

impl LeaseConfirmer {
    /// A confirmer for `node`; a keepalive waits at most `wait` for its round.
    pub fn new(node: dlock_cluster::Node, wait: Duration) -> Arc<LeaseConfirmer> {
        Arc::new(LeaseConfirmer {
            node,
            wait,
            state: std::sync::Mutex::new(ConfirmRounds::default()),
            done: watch::channel((0, None)).0,
        })
    }

    /// True once a round that started after this call confirmed that this node still leads in
    /// `term`; false if that round failed (deposed, cut off, raft thread stalled past the read's
    /// deadline) or confirmed another term. A ReadIndex alone proves nothing on a node that is
    /// no longer leader (raft forwards it to the new leader), so a round only counts if this
    /// node led in the same term when the read started and when it finished.
    pub async fn confirm(self: &Arc<Self>, term: u64) -> bool {
        let mut finished = self.done.subscribe();
        let target = {
            let mut rounds = lock(&self.state);
            // A round already running started before this keepalive arrived: it proves nothing
            // about leadership after the arrival. Wait for the next one.
            let target = rounds.started + 1;
            rounds.wanted = rounds.wanted.max(target);
            if !rounds.running {
                self.start_round(&mut rounds);
            }
            target
        };
        let confirmed = finished.wait_for(|(round, _)| *round >= target);
        match tokio::time::timeout(self.wait, confirmed).await {
            Ok(Ok(value)) => value.1 == Some(term),
            Ok(Err(_)) | Err(_) => false,
        }
    }

    fn start_round(self: &Arc<Self>, rounds: &mut ConfirmRounds) {
        rounds.started += 1;
        rounds.running = true;
        let round = rounds.started;
        let this = self.clone();
        tokio::spawn(async move {
            let before = *this.node.leadership().borrow();
            let read = this.node.read_index().await.is_ok();
            let after = *this.node.leadership().borrow();
            let confirmed =
                (read && before.is_leader && after.is_leader && before.term == after.term)
                    .then_some(after.term);
            let mut rounds = lock(&this.state);
            this.done.send_replace((round, confirmed));
            rounds.running = false;
            if rounds.wanted > round {
                this.start_round(&mut rounds);
            }
        });
    }
}

/// Renews a session's lease on a keepalive. `None` means the session is lost: unknown to the
/// namespace, or its lease already ran out and its expiry is under way.
///
/// A renewal is only answered once this node has confirmed, after the keepalive arrived, that
/// it still leads ([`LeaseConfirmer`]): a deposed leader, or one whose raft thread is stalled,
/// must not tell a client its lease was renewed while the real leader may expire it and hand
/// its mutexes on.
///
/// "Unknown" is only believed after a ReadIndex: right after a restart or a leader change the
/// local namespace may not have applied every committed entry yet (the log is replayed in the
/// background), and telling a live client its session expired would make it drop its locks.
pub(super) async fn keep_alive(
    replica: &Replica,
    node: &dlock_cluster::Node,
    confirmer: &Arc<LeaseConfirmer>,
    session: u64,
) -> Result<Option<std::time::Duration>, dlock_cluster::Error> {
    let arrived = *node.leadership().borrow();
    // Never hint at this node itself: a node that believes it leads but cannot confirm it
    // (a stalled raft thread) must send the client elsewhere, not back to itself.
    let not_leader = || dlock_cluster::Error::NotLeader {
        leader_hint: node
            .leadership()
            .borrow()
            .leader_id
            .filter(|id| *id != node.id()),
    };
    if !arrived.is_leader {
        return Err(not_leader());
    }
    // The timers must be this term's: a new leader's rebuild replaces every lease, and a
    // deposed leader's are stale (an `Expiring` mark from an old reign must not be reported).
    if !replica.timers_ready(arrived.term, TIMERS_READY_WAIT).await {
        return Err(not_leader());
    }
    let touched = lock(&replica.timers).touch(session, Instant::now());
    // Whatever the answer, it is only given with proof that this node still leads: one retry,
    // so that a single failed round does not end every stream of a healthy leader.
    let confirmed = confirmer.confirm(arrived.term).await
        || (node.leadership().borrow().term == arrived.term
            && confirmer.confirm(arrived.term).await);
    if !confirmed {
        return Err(not_leader());
    }
    match touched {
        Touch::Renewed(ttl) => return Ok(Some(ttl)),
        Touch::Expiring => return Ok(None),
        Touch::Unknown => {}
    }
    // Slow path: the timers may not know a session the namespace has (a snapshot installed
    // after the rebuild). The namespace may lag the log: read it after a ReadIndex. Lock
    // order: ns, then timers.
    node.read_index().await?;
    if node.leadership().borrow().term != arrived.term {
        return Err(not_leader());
    }
    let now = Instant::now();
    let ns = lock(&replica.ns);
    let Some(info) = ns.session(session) else {
        return Ok(None);
    };
    let mut timers = lock(&replica.timers);
    timers.adopt(session, info.ttl_ms, now);
    Ok(match timers.touch(session, now) {
        Touch::Renewed(ttl) => Some(ttl),
        Touch::Expiring | Touch::Unknown => None,
    })
}

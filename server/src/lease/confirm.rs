//! Proof of leadership for lease renewals: a [`LeaseConfirmer`] answers whether a ReadIndex
//! round that started after a keepalive arrived confirmed that this node still leads in the
//! keepalive's term. Rounds are shared by every keepalive that arrives meanwhile, so renewals
//! cost no log entry and about one heartbeat round per few milliseconds of keepalives.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::replica::lock;

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

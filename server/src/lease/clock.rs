//! The leader's clock: the timer task that, while this node leads, rebuilds the
//! [`Timers`](super::Timers) for each new term, proposes `ExpireSession` for sessions whose
//! lease ran out and `TimeoutWait` for waits whose timeout passed, and checkpoints what it
//! watched into the log. Its proposals run on bounded background tasks and are retried (or, for
//! checkpoints, carried into the next one) when they fail. Followers keep their timers up to
//! date through `apply` but act on none of them.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};
use tracing::{info, warn};

use crate::config::Config;
use crate::error::Error;
use crate::namespace::{Command, Seq, SessionId};
use crate::replica::{Replica, lock, now_unix_ms};

/// Most sessions written into one `Checkpoint` command; the rest go into the next one.
pub const CHECKPOINT_SESSIONS_MAX: usize = 10_000;

// Sessions are taken for a checkpoint lowest id first: if one checkpoint could not hold every
// session, busy low ids could starve high ones, whose silence would then grow in the log.
const _: () = assert!(CHECKPOINT_SESSIONS_MAX >= crate::namespace::SESSIONS_MAX);

/// How long a failed timer proposal (lost in a leader change, queue full) waits before retrying.
const TIMER_RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// Most timer proposals (expiries, wait timeouts) in flight at once; the rest wait their turn,
/// so a leader that finds thousands of dead sessions does not flood its own proposal queue.
const TIMER_PROPOSALS_MAX: usize = 64;

/// The leader's clock: expires sessions whose lease ran out, times out waits, and checkpoints
/// keepalive times into the log. Followers keep their timers up to date (through apply) but act
/// on none of them; a node that becomes leader rebuilds every deadline first.
pub(crate) async fn timer_task(
    replica: Arc<Replica>,
    node: dlock_cluster::Node,
    config: Arc<Config>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut leadership = node.leadership();
    let checkpoint_interval = Duration::from_millis(config.checkpoint_interval_ms);
    let permits = Arc::new(Semaphore::new(TIMER_PROPOSALS_MAX));
    let mut leading_term = None;
    let mut next_checkpoint = Instant::now() + checkpoint_interval;
    // When this leader's previous checkpoint was proposed (its term-start one first): each
    // checkpoint carries the time since, on this node's monotonic clock. A proposal that is
    // lost only makes the next leader see less watched time: it errs towards grace.
    let mut last_checkpoint = Instant::now();
    loop {
        let state = *leadership.borrow_and_update();
        if !state.is_leader {
            if leading_term.take().is_some() {
                // Stale leases must not answer keepalives (or expire anyone) any more.
                lock(&replica.timers).clear();
            }
            replica.timers_term.send_replace(None);
            tokio::select! {
                changed = leadership.changed() => match changed {
                    Ok(()) => continue,
                    // The raft thread is gone (fatal storage error): nothing left to time.
                    Err(_) => return,
                },
                _ = stopped.wait_for(|s| *s) => return,
            }
        }
        if leading_term != Some(state.term) {
            // Rebuild from a namespace that has applied everything committed so far (after a
            // restart the log is replayed in the background), so that the "certainly dead"
            // judgement and wait deadlines see every session and wait.
            if let Err(err) = node.read_index().await {
                warn!(error = %err, "leading, but the read index failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(TIMER_RETRY_BACKOFF) => continue,
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
            leading_term = Some(state.term);
            let ns = lock(&replica.ns);
            lock(&replica.timers).rebuild(&ns, Instant::now(), checkpoint_interval);
            drop(ns);
            replica.timers_term.send_replace(Some(state.term));
            info!(
                term = state.term,
                "leading: session and wait deadlines rebuilt"
            );
            // Mark the start of this term in the log. It adds no watched time: time without a
            // leader never counts against a session.
            last_checkpoint = Instant::now();
            let command = Command::Checkpoint {
                now_unix_ms: now_unix_ms(),
                elapsed_ms: 0,
                sessions: Vec::new(),
            };
            spawn_bounded(&permits, propose_logged(node.clone(), command));
        }
        let now = Instant::now();
        let (sessions, waits) = lock(&replica.timers).take_due(now);
        for session in sessions {
            spawn_bounded(
                &permits,
                expire_session(replica.clone(), node.clone(), session),
            );
        }
        for (session, seq) in waits {
            spawn_bounded(
                &permits,
                cancel_wait(replica.clone(), node.clone(), session, seq),
            );
        }
        if now >= next_checkpoint {
            next_checkpoint = now + checkpoint_interval;
            let (sessions, any) = {
                let mut timers = lock(&replica.timers);
                let sessions = timers.take_checkpoint(now, CHECKPOINT_SESSIONS_MAX);
                (sessions, timers.has_sessions())
            };
            // Every interval while there are sessions, even if nobody was heard: the silence of
            // dead sessions must keep accruing in the log, or elections could keep them alive.
            if any {
                let elapsed_ms = now.saturating_duration_since(last_checkpoint).as_millis() as u64;
                last_checkpoint = now;
                let command = Command::Checkpoint {
                    now_unix_ms: now_unix_ms(),
                    elapsed_ms,
                    sessions,
                };
                spawn_bounded(&permits, checkpoint(replica.clone(), node.clone(), command));
            }
        }
        let deadline = lock(&replica.timers)
            .next_deadline()
            .map_or(next_checkpoint, |d| d.min(next_checkpoint));
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = replica.timer_wake.notified() => {}
            changed = leadership.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

/// Runs `task` once one of the timer task's [`TIMER_PROPOSALS_MAX`] permits is free.
fn spawn_bounded(permits: &Arc<Semaphore>, task: impl Future<Output = ()> + Send + 'static) {
    let permits = permits.clone();
    tokio::spawn(async move {
        let Ok(_permit) = permits.acquire_owned().await else {
            return;
        };
        task.await;
    });
}

async fn propose(node: &dlock_cluster::Node, command: &Command) -> Result<(), Error> {
    let bytes = postcard::to_stdvec(command).map_err(|e| Error::Internal(e.to_string()))?;
    node.propose(bytes).await?;
    Ok(())
}

async fn propose_logged(node: dlock_cluster::Node, command: Command) {
    if let Err(err) = propose(&node, &command).await {
        warn!(error = %err, ?command, "timer proposal failed");
    }
}

/// Proposes a periodic checkpoint; if it is not committed, its sessions go into the next one
/// (otherwise a later leader would see them silent since before it).
async fn checkpoint(replica: Arc<Replica>, node: dlock_cluster::Node, command: Command) {
    if let Err(err) = propose(&node, &command).await {
        warn!(error = %err, "checkpoint proposal failed; its sessions go into the next one");
        if let Command::Checkpoint { sessions, .. } = &command {
            lock(&replica.timers).checkpoint_lost(sessions);
        }
    }
}

async fn expire_session(replica: Arc<Replica>, node: dlock_cluster::Node, session: SessionId) {
    info!(session, "session lease ran out; expiring");
    if let Err(err) = propose(&node, &Command::ExpireSession { session }).await {
        warn!(session, error = %err, "expiry proposal failed; will retry");
        lock(&replica.timers).retry_session(session, Instant::now() + TIMER_RETRY_BACKOFF);
        replica.timer_wake.notify_one();
    }
}

async fn cancel_wait(
    replica: Arc<Replica>,
    node: dlock_cluster::Node,
    session: SessionId,
    seq: Seq,
) {
    if let Err(err) = propose(&node, &Command::TimeoutWait { session, seq }).await {
        warn!(session, seq, error = %err, "wait timeout proposal failed; will retry");
        lock(&replica.timers).retry_wait(session, seq, Instant::now() + TIMER_RETRY_BACKOFF);
        replica.timer_wake.notify_one();
    }
}

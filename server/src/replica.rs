//! The glue between the replicated log and the namespace: the [`StateMachine`] that
//! `dlock-cluster` drives, the registry through which a blocked `AwaitWait` call learns its
//! outcome, and the [`Replica`] that holds them, with the leader's [`Timers`] (session leases,
//! wait timeouts, keepalive checkpoints; see [`crate::lease`]), for the raft thread, the gRPC
//! handlers and the timer task.
//!
//! Locking: the raft thread applies a command while holding `ns` and then `timers`; every other
//! user takes them in the same order (`ns` before `timers`), or only one of them. Both are std
//! mutexes because no critical section awaits anything; a tokio mutex would only add cost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dlock_cluster::StateMachine;
use tokio::sync::{Notify, oneshot, watch};
use tracing::{debug, error, info};

use crate::lease::{Timers, later};
use crate::namespace::{
    Command, Namespace, Reply, Request, Resolved, Seq, SessionId, WaitOutcome, WaitStatus,
};

/// Milliseconds since the Unix epoch on this node's wall clock. Only ever recorded in commands
/// for the record (logs, status); no decision compares wall-clock times, of one node or of
/// several: leases and wait deadlines use durations on each leader's monotonic clock.
///
/// Tests skew it with the environment variable [`CLOCK_SKEW_ENV`] (signed milliseconds, read
/// once), to show that a node whose clock is off changes nothing.
pub fn now_unix_ms() -> u64 {
    static SKEW_MS: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let skew = *SKEW_MS.get_or_init(|| {
        std::env::var(CLOCK_SKEW_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    });
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    u64::try_from(now.saturating_add(skew)).unwrap_or(0)
}

/// Test-only: shifts this node's wall clock ([`now_unix_ms`]) by this many milliseconds.
pub const CLOCK_SKEW_ENV: &str = "DLOCKD_TEST_CLOCK_SKEW_MS";

/// Most `AwaitWait` calls that may be blocked on this node at once, over all waits; beyond it
/// new calls are refused with `RESOURCE_EXHAUSTED`.
pub const WAIT_SUBSCRIBERS_MAX: usize = 1 << 20;

/// Most `AwaitWait` calls blocked on one wait at once (a client needs one; a few more cover
/// retries whose earlier call the server has not noticed as gone yet).
pub const WAIT_SUBSCRIBERS_PER_WAIT_MAX: usize = 16;

/// Blocked `AwaitWait` calls by `(session, seq)`: several calls may wait for one wait (a retry while
/// the first call is still open), so each key holds a list.
type WaitRegistry = HashMap<(SessionId, Seq), Vec<oneshot::Sender<WaitOutcome>>>;

/// This node's replica: the namespace with its timers and wait registry, shared by the raft
/// thread (through [`Machine`]), the gRPC handlers and the timer task.
pub struct Replica {
    /// The namespace state machine.
    pub ns: Mutex<Namespace>,
    /// Session and wait deadlines (acted upon only while this node leads).
    pub timers: Mutex<Timers>,
    /// Wakes the timer task when a deadline may have moved earlier.
    pub timer_wake: Notify,
    /// Blocked `AwaitWait` calls by `(session, seq)`.
    pub waiters: Mutex<WaitRegistry>,
    /// The term the timers were last rebuilt for while leading (`None` while not leading):
    /// keepalives are only answered from timers of the current term.
    pub timers_term: watch::Sender<Option<u64>>,
}

/// Locks a std mutex, treating poisoning (a panic while holding it) as fatal for the node.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock()
        .expect("a thread panicked while holding dlockd state")
}

impl Replica {
    /// Fresh state for a node that starts with an empty namespace (the cluster restores
    /// snapshots and replays the log into it).
    pub fn new() -> Arc<Replica> {
        Arc::new(Replica {
            ns: Mutex::new(Namespace::new()),
            timers: Mutex::new(Timers::default()),
            timer_wake: Notify::new(),
            waiters: Mutex::new(HashMap::new()),
            timers_term: watch::channel(None).0,
        })
    }

    /// Waits (at most `wait`) until the timers have been rebuilt for `term`; false if they were
    /// not (this node lost leadership meanwhile, or its rebuild is stuck behind a stalled raft
    /// thread).
    pub async fn timers_ready(&self, term: u64, wait: Duration) -> bool {
        let mut rebuilt = self.timers_term.subscribe();
        matches!(
            tokio::time::timeout(wait, rebuilt.wait_for(|t| *t == Some(term))).await,
            Ok(Ok(_))
        )
    }

    /// Registers interest in the outcome of wait `(session, seq)`. Register BEFORE looking at the
    /// wait, so an outcome applied right after it cannot be missed.
    ///
    /// # Errors
    ///
    /// `None` when [`WAIT_SUBSCRIBERS_MAX`] waits, or [`WAIT_SUBSCRIBERS_PER_WAIT_MAX`] calls
    /// on this wait, are already being waited for.
    pub fn subscribe(self: &Arc<Self>, session: SessionId, seq: Seq) -> Option<Subscription> {
        let (tx, rx) = oneshot::channel();
        let mut waiters = lock(&self.waiters);
        if waiters.len() >= WAIT_SUBSCRIBERS_MAX {
            return None;
        }
        let entry = waiters.entry((session, seq)).or_default();
        entry.retain(|tx| !tx.is_closed());
        if entry.len() >= WAIT_SUBSCRIBERS_PER_WAIT_MAX {
            return None;
        }
        entry.push(tx);
        Some(Subscription {
            replica: self.clone(),
            key: (session, seq),
            rx,
        })
    }

    fn notify(&self, resolved: &Resolved) {
        if let Some(senders) = lock(&self.waiters).remove(&(resolved.session, resolved.seq)) {
            for tx in senders {
                let _ = tx.send(resolved.outcome);
            }
        }
    }
}

/// A registered interest in one wait's outcome; dropping it unregisters.
pub struct Subscription {
    replica: Arc<Replica>,
    key: (SessionId, Seq),
    rx: oneshot::Receiver<WaitOutcome>,
}

impl Subscription {
    /// Waits for the outcome. `None` if the node dropped the registry entry (it never does while
    /// the subscription lives, except at shutdown).
    pub async fn outcome(&mut self) -> Option<WaitOutcome> {
        (&mut self.rx).await.ok()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Close our receiver first so our own sender counts as closed below; otherwise the
        // entry would never be removed for waits that resolved at once.
        self.rx.close();
        let mut waiters = lock(&self.replica.waiters);
        if let Some(senders) = waiters.get_mut(&self.key) {
            senders.retain(|tx| !tx.is_closed());
            if senders.is_empty() {
                waiters.remove(&self.key);
            }
        }
    }
}

/// The [`StateMachine`] the cluster applies committed commands to.
pub struct Machine {
    replica: Arc<Replica>,
}

impl Machine {
    /// Wraps the node's [`Replica`].
    pub fn new(replica: Arc<Replica>) -> Machine {
        Machine { replica }
    }
}

impl StateMachine for Machine {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        let command: Command = match postcard::from_bytes(command) {
            Ok(command) => command,
            Err(err) => {
                // Only this crate writes log entries and it validates them first, so this is a
                // bug or a corrupt log. Every node sees the same bytes, so answering with an
                // error (instead of crashing) keeps the replicas identical.
                error!(index, error = %err, "undecodable command in the log; skipped");
                return encode(&Reply::Error(
                    dlock_proto::vocab::Win32Error::INVALID_PARAMETER,
                ));
            }
        };
        let mut ns = lock(&self.replica.ns);
        let out = ns.apply(index, &command);
        let mut timers = lock(&self.replica.timers);
        let now = Instant::now();
        match (&command, &out.reply) {
            (
                Command::OpenSession { ttl_ms, .. } | Command::OpenSessionAs { ttl_ms, .. },
                Some(Reply::SessionOpened { session }),
            ) => {
                debug!(session, ttl_ms, "session opened");
                timers.session_opened(*session, *ttl_ms, now);
            }
            (Command::ExpireSession { session }, _) => {
                info!(session, "session expired");
                timers.session_removed(*session);
            }
            (
                Command::Client {
                    session,
                    request: Request::CloseSession,
                    ..
                },
                Some(Reply::Done),
            ) => {
                debug!(session, "session closed");
                timers.session_removed(*session);
            }
            (Command::Client { session, seq, .. }, Some(Reply::WaitPending)) => {
                // Take the timeout from the recorded wait, not from this command: a retry that
                // re-attaches must not change (or add) the first request's deadline.
                if let Some(wait) = ns.pending_wait(*session, *seq)
                    && wait.timeout_ms != u32::MAX
                {
                    timers.wait_pending(*session, *seq, later(now, u64::from(wait.timeout_ms)));
                }
            }
            _ => {}
        }
        for resolved in &out.resolved {
            timers.wait_resolved(resolved.session, resolved.seq);
        }
        drop(timers);
        drop(ns);
        for resolved in &out.resolved {
            self.replica.notify(resolved);
        }
        self.replica.timer_wake.notify_one();
        encode(&out.reply.unwrap_or(Reply::Done))
    }

    /// The namespace's maps are persistent (`imbl`): the clone is O(1) and shares structure
    /// with the live namespace, which copies what it changes from then on.
    fn snapshot(&mut self) -> dlock_cluster::SnapshotJob {
        let frozen = lock(&self.replica.ns).clone();
        Box::new(move || frozen.snapshot())
    }

    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), String> {
        let restored = Namespace::restore(data).map_err(|e| e.to_string())?;
        let mut ns = lock(&self.replica.ns);
        *ns = restored;
        // Deadlines of the restored sessions and waits are rebuilt when this node leads.
        lock(&self.replica.timers).clear();
        // Waits blocked on this node may have been resolved inside the entries the snapshot
        // replaced: hand them their recorded outcome, or end the call if their session is gone
        // (the client retries and learns the session is unknown). Still-pending waits stay.
        let mut waiters = lock(&self.replica.waiters);
        waiters.retain(
            |&(session, seq), senders| match ns.wait_status(session, seq) {
                WaitStatus::Resolved(outcome) => {
                    for tx in senders.drain(..) {
                        let _ = tx.send(outcome);
                    }
                    false
                }
                WaitStatus::Pending => true,
                WaitStatus::SessionUnknown | WaitStatus::Unknown => false,
            },
        );
        drop(waiters);
        info!(index, "namespace restored from snapshot");
        Ok(())
    }
}

fn encode(reply: &Reply) -> Vec<u8> {
    postcard::to_stdvec(reply).expect("replies always encode")
}

//! The leader's lease and wait timers, in memory: [`Timers`] keeps each session's deadline and
//! each pending wait's timeout on this node's monotonic clock, and the sessions heard from since
//! the last checkpoint. Keepalives renew here ([`Timers::touch`]) and never in the log; the
//! raft thread keeps the timers up to date as commands apply (`Machine` in `replica.rs`), and
//! the timer task (`clock.rs`) acts on them while this node leads.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::namespace::{Namespace, Seq, SessionId};

/// `now + ms`, saturating far in the future instead of overflowing `Instant`.
pub(crate) fn later(now: Instant, ms: u64) -> Instant {
    now.checked_add(Duration::from_millis(ms))
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// What a keepalive did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// The lease was renewed for this TTL.
    Renewed(Duration),
    /// The lease already ran out and `ExpireSession` is on its way: the session is lost.
    Expiring,
    /// The timers do not know the session (check the namespace before calling it expired).
    Unknown,
}

/// One session's lease as the leader sees it.
#[derive(Debug, Clone)]
struct SessionTimer {
    ttl: Duration,
    deadline: Instant,
    /// When this node last heard from the session (its monotonic clock).
    last_heard: Instant,
    /// `ExpireSession` was proposed; keepalives no longer help.
    expiring: bool,
}

/// Session leases and wait timeouts, in memory. Keepalives only ever touch this, never the log.
#[derive(Debug, Default)]
pub struct Timers {
    sessions: HashMap<SessionId, SessionTimer>,
    session_deadlines: BTreeSet<(Instant, SessionId)>,
    waits: HashMap<(SessionId, Seq), Instant>,
    wait_deadlines: BTreeSet<(Instant, SessionId, Seq)>,
    /// Sessions heard from since the last checkpoint.
    dirty: BTreeSet<SessionId>,
}

impl Timers {
    /// Forgets every lease and wait deadline (this node stopped leading).
    pub fn clear(&mut self) {
        *self = Timers::default();
    }

    pub(crate) fn session_opened(&mut self, id: SessionId, ttl_ms: u64, now: Instant) {
        let ttl = Duration::from_millis(ttl_ms);
        self.set_session(
            id,
            SessionTimer {
                ttl,
                deadline: later(now, ttl_ms),
                last_heard: now,
                expiring: false,
            },
        );
    }

    fn set_session(&mut self, id: SessionId, timer: SessionTimer) {
        if let Some(old) = self.sessions.insert(id, timer.clone()) {
            self.session_deadlines.remove(&(old.deadline, id));
        }
        if !timer.expiring {
            self.session_deadlines.insert((timer.deadline, id));
        }
    }

    pub(crate) fn session_removed(&mut self, id: SessionId) {
        if let Some(old) = self.sessions.remove(&id) {
            self.session_deadlines.remove(&(old.deadline, id));
        }
        self.dirty.remove(&id);
    }

    /// A keepalive for `id` arrived at the leader: the lease runs a full TTL from `now`.
    pub fn touch(&mut self, id: SessionId, now: Instant) -> Touch {
        let Some(timer) = self.sessions.get(&id) else {
            return Touch::Unknown;
        };
        if timer.expiring {
            return Touch::Expiring;
        }
        let mut timer = timer.clone();
        timer.deadline = later(now, timer.ttl.as_millis() as u64);
        timer.last_heard = now;
        let ttl = timer.ttl;
        self.set_session(id, timer);
        self.dirty.insert(id);
        Touch::Renewed(ttl)
    }

    /// Starts tracking a session the namespace has but the timers do not (a keepalive that
    /// arrived between a snapshot install or a leadership change and the rebuild): it gets a
    /// full TTL from `now`, like every session after a leader change.
    pub fn adopt(&mut self, id: SessionId, ttl_ms: u64, now: Instant) {
        if !self.sessions.contains_key(&id) {
            self.session_opened(id, ttl_ms, now);
        }
    }

    pub(crate) fn wait_pending(&mut self, session: SessionId, seq: Seq, deadline: Instant) {
        // A retried wait must not move its deadline: keep the first one.
        if let std::collections::hash_map::Entry::Vacant(entry) = self.waits.entry((session, seq)) {
            entry.insert(deadline);
            self.wait_deadlines.insert((deadline, session, seq));
        }
    }

    pub(crate) fn wait_resolved(&mut self, session: SessionId, seq: Seq) {
        if let Some(deadline) = self.waits.remove(&(session, seq)) {
            self.wait_deadlines.remove(&(deadline, session, seq));
        }
    }

    /// Rebuilds every deadline from the namespace when this node becomes leader.
    ///
    /// Every session gets a full TTL of grace from now, so failover never expires a live session
    /// early, except sessions that were certainly dead while leaders were watching: those whose
    /// silence in the namespace's watched time (durations measured by each leader on its own
    /// monotonic clock, see `Command::Checkpoint`) exceeds twice their TTL plus one checkpoint
    /// interval. They expire at once. Twice, because the latest renewal may not have reached a
    /// checkpoint before its leader died: the client may have been silent for up to a TTL
    /// before that renewal, and its lease runs less than a TTL after it. Because each checkpoint only adds time a leader
    /// really watched, repeated elections cannot keep a dead session alive, and no difference
    /// between the nodes' wall clocks can expire a live one. A pending wait gets its timeout
    /// minus the watched time it already waited (erring late, never early).
    pub fn rebuild(&mut self, ns: &Namespace, now: Instant, checkpoint_interval: Duration) {
        self.clear();
        for info in ns.sessions() {
            let ttl = Duration::from_millis(info.ttl_ms);
            let dead = Duration::from_millis(info.silence_ms) > 2 * ttl + checkpoint_interval;
            let deadline = if dead { now } else { later(now, info.ttl_ms) };
            self.set_session(
                info.id,
                SessionTimer {
                    ttl,
                    deadline,
                    last_heard: now,
                    expiring: false,
                },
            );
        }
        for wait in ns.pending_waits() {
            if wait.timeout_ms == u32::MAX {
                continue;
            }
            let left_ms = u64::from(wait.timeout_ms).saturating_sub(wait.waited_ms);
            self.wait_pending(wait.session, wait.seq, later(now, left_ms));
        }
    }

    /// The earliest deadline, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        let session = self.session_deadlines.first().map(|(at, _)| *at);
        let wait = self.wait_deadlines.first().map(|(at, _, _)| *at);
        match (session, wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes every session and wait whose deadline has passed. Sessions are marked as expiring;
    /// waits leave the deadline set (re-arm them with [`Timers::retry_wait`] if the proposal fails).
    pub fn take_due(&mut self, now: Instant) -> (Vec<SessionId>, Vec<(SessionId, Seq)>) {
        let mut sessions = Vec::new();
        while let Some(&(at, id)) = self.session_deadlines.first() {
            if at > now {
                break;
            }
            self.session_deadlines.remove(&(at, id));
            if let Some(timer) = self.sessions.get_mut(&id) {
                timer.expiring = true;
            }
            sessions.push(id);
        }
        let mut waits = Vec::new();
        while let Some(&(at, session, seq)) = self.wait_deadlines.first() {
            if at > now {
                break;
            }
            self.wait_deadlines.remove(&(at, session, seq));
            waits.push((session, seq));
        }
        (sessions, waits)
    }

    /// Re-arms a session whose `ExpireSession` proposal failed. It stays marked as expiring:
    /// its lease ran out, so no keepalive may revive it.
    pub fn retry_session(&mut self, id: SessionId, at: Instant) {
        if let Some(timer) = self.sessions.get_mut(&id) {
            timer.deadline = at;
            self.session_deadlines.insert((at, id));
        }
    }

    /// Re-arms a wait whose `TimeoutWait` proposal failed.
    pub fn retry_wait(&mut self, session: SessionId, seq: Seq, at: Instant) {
        if let Some(deadline) = self.waits.get_mut(&(session, seq)) {
            *deadline = at;
            self.wait_deadlines.insert((at, session, seq));
        }
    }

    /// Takes up to `max` sessions heard from since the last checkpoint, each with how long ago
    /// (at `now`) it was last heard.
    pub fn take_checkpoint(&mut self, now: Instant, max: usize) -> Vec<(SessionId, u64)> {
        let ids: Vec<SessionId> = self.dirty.iter().take(max).copied().collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            self.dirty.remove(&id);
            if let Some(timer) = self.sessions.get(&id) {
                let silent = now.saturating_duration_since(timer.last_heard);
                out.push((id, silent.as_millis() as u64));
            }
        }
        out
    }

    /// Whether any session is tracked (then every interval is checkpointed, so that the silence
    /// of dead sessions keeps accruing even when nobody is heard).
    pub fn has_sessions(&self) -> bool {
        !self.sessions.is_empty()
    }

    /// A checkpoint carrying these sessions was not committed: report them in the next one.
    pub fn checkpoint_lost(&mut self, sessions: &[(SessionId, u64)]) {
        for (id, _) in sessions {
            if self.sessions.contains_key(id) {
                self.dirty.insert(*id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::Command;

    #[test]
    fn keepalive_moves_the_deadline_and_marks_the_session_for_checkpoint() {
        let mut timers = Timers::default();
        let t0 = Instant::now();
        timers.session_opened(7, 1_000, t0);
        assert_eq!(
            timers.next_deadline(),
            Some(t0 + Duration::from_millis(1_000))
        );
        let t1 = t0 + Duration::from_millis(600);
        assert_eq!(
            timers.touch(7, t1),
            Touch::Renewed(Duration::from_millis(1_000))
        );
        assert_eq!(
            timers.next_deadline(),
            Some(t1 + Duration::from_millis(1_000))
        );
        let t2 = t1 + Duration::from_millis(250);
        let taken = timers.take_checkpoint(t2, 10);
        assert_eq!(taken, vec![(7, 250)], "silent for 250 ms at the checkpoint");
        assert!(timers.take_checkpoint(t2, 10).is_empty());
        timers.checkpoint_lost(&taken);
        assert_eq!(
            timers.take_checkpoint(t2, 10),
            vec![(7, 250)],
            "a lost checkpoint's sessions go into the next one"
        );
    }

    #[test]
    fn due_sessions_are_taken_once_and_keepalives_no_longer_help() {
        let mut timers = Timers::default();
        let t0 = Instant::now();
        timers.session_opened(1, 100, t0);
        timers.session_opened(2, 10_000, t0);
        let (sessions, waits) = timers.take_due(t0 + Duration::from_millis(150));
        assert_eq!(sessions, vec![1]);
        assert!(waits.is_empty());
        assert_eq!(
            timers.touch(1, t0 + Duration::from_millis(151)),
            Touch::Expiring
        );
        let (again, _) = timers.take_due(t0 + Duration::from_millis(200));
        assert!(again.is_empty());
        timers.retry_session(1, t0 + Duration::from_millis(210));
        assert_eq!(
            timers.touch(1, t0 + Duration::from_millis(211)),
            Touch::Expiring
        );
        let (retried, _) = timers.take_due(t0 + Duration::from_millis(220));
        assert_eq!(retried, vec![1], "a failed expiry is retried");
    }

    fn open(ns: &mut Namespace, index: u64, now_unix_ms: u64) {
        let open = Command::OpenSession {
            secret: crate::namespace::SessionSecret([0; 16]),
            ttl_ms: 1_000,
            now_unix_ms,
            client_name: "test".into(),
        };
        ns.apply(index, &open);
    }

    #[test]
    fn rebuild_grants_grace_except_to_sessions_dead_while_leaders_watched() {
        let mut ns = Namespace::new();
        open(&mut ns, 1, 10_000);
        open(&mut ns, 2, 10_000);
        // A leader watched for 4 s, hearing session 2 100 ms ago; session 1 was silent (more
        // than twice its TTL plus the interval).
        let checkpoint = Command::Checkpoint {
            now_unix_ms: 14_000,
            elapsed_ms: 4_000,
            sessions: vec![(2, 100)],
        };
        ns.apply(3, &checkpoint);
        let mut timers = Timers::default();
        let t0 = Instant::now();
        timers.rebuild(&ns, t0, Duration::from_millis(1_000));
        let (due, _) = timers.take_due(t0);
        assert_eq!(
            due,
            vec![1],
            "session 1 was already dead while a leader watched"
        );
        assert_eq!(
            timers.next_deadline(),
            Some(t0 + Duration::from_millis(1_000)),
            "session 2 gets a full TTL of grace"
        );
    }

    #[test]
    fn wall_clocks_and_term_starts_advance_nobodys_silence() {
        // Two leaders whose wall clocks are an hour apart, and many elections with no leader
        // watching in between: only watched durations count.
        let mut ns = Namespace::new();
        open(&mut ns, 1, 10_000);
        let mut index = 2;
        for now_unix_ms in [3_600_000 + 20_000, 30_000, 7_200_000, 0] {
            let term_start = Command::Checkpoint {
                now_unix_ms,
                elapsed_ms: 0,
                sessions: Vec::new(),
            };
            ns.apply(index, &term_start);
            index += 1;
        }
        let mut timers = Timers::default();
        let t0 = Instant::now();
        timers.rebuild(&ns, t0, Duration::from_millis(1_000));
        assert!(timers.take_due(t0).0.is_empty(), "nobody watched it die");
        // Then leaders watch it silent for 3.5 s in total, over three terms (twice its TTL of
        // 1 s plus the interval of 1 s is 3 s).
        for elapsed_ms in [1_000, 1_500, 1_000] {
            let checkpoint = Command::Checkpoint {
                now_unix_ms: 0,
                elapsed_ms,
                sessions: Vec::new(),
            };
            ns.apply(index, &checkpoint);
            index += 1;
        }
        timers.rebuild(&ns, t0, Duration::from_millis(1_000));
        assert_eq!(timers.take_due(t0).0, vec![1], "dead under the watch");
    }

    #[test]
    fn a_retried_wait_keeps_its_first_deadline() {
        let mut timers = Timers::default();
        let t0 = Instant::now();
        timers.wait_pending(1, 5, t0 + Duration::from_millis(100));
        timers.wait_pending(1, 5, t0 + Duration::from_millis(900));
        assert_eq!(
            timers.next_deadline(),
            Some(t0 + Duration::from_millis(100))
        );
        timers.wait_resolved(1, 5);
        assert_eq!(timers.next_deadline(), None);
    }
}

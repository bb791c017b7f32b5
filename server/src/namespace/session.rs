//! Sessions: one per client process, with a lease, its handles, its pending waits and its reply
//! table for deduplication.

use super::*;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::types::{HandleId, Reply, Seq, SessionId, SessionSecret};
use super::wait::Outcome;

/// A session's replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    /// The secret every request naming the session must carry.
    pub secret: SessionSecret,
    /// Client description (host, pid), for logs and status.
    pub client_name: String,
    /// Lease length without keepalives, in milliseconds.
    pub ttl_ms: u64,
    /// The namespace's watched time (see `Command::Checkpoint`) at which a leader last heard
    /// from the client (`OpenSession`, `Checkpoint`).
    pub heard_at_watched_ms: u64,
    /// The session's open handles.
    pub handles: BTreeSet<HandleId>,
    /// Sequence numbers of the session's pending (queued) waits.
    pub waits: BTreeSet<Seq>,
    /// Recorded replies by request sequence number (dedupe table).
    pub replies: BTreeMap<Seq, Reply>,
    /// Outcomes of the session's waits that ended (at once or later) and that the client has not
    /// acknowledged yet (`waits_done`), by the wait's sequence number. With `waits` bounded by
    /// `Limits::waits_per_session_max`.
    pub outcomes: BTreeMap<Seq, Outcome>,
    /// The highest `ack_below` seen: requests below it without a recorded reply are refused.
    pub acked_below: Seq,
}

/// A read-only summary of one session, for the leader's lease timers and for status pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The session id (log index of its `OpenSession`).
    pub id: SessionId,
    /// Client description given at `OpenSession`.
    pub client_name: String,
    /// Lease length without keepalives, in milliseconds.
    pub ttl_ms: u64,
    /// How long leaders have watched the session in silence, as of the latest checkpoint:
    /// watched time since one last heard from it. A new leader expires a session whose silence
    /// exceeds its TTL at once and grants every other one a full TTL.
    pub silence_ms: u64,
    /// Number of open handles.
    pub handles: usize,
    /// Number of pending (queued) waits.
    pub pending_waits: usize,
    /// Number of entries in the reply table (bounded by `Limits::replies_per_session_max`).
    pub replies: usize,
    /// Number of wait outcomes not yet acknowledged by the client.
    pub unacknowledged_outcomes: usize,
}

impl Session {
    /// The summary of this session, with the namespace's watched time now.
    pub fn info(&self, id: SessionId, watched_ms: u64) -> SessionInfo {
        SessionInfo {
            id,
            client_name: self.client_name.clone(),
            ttl_ms: self.ttl_ms,
            silence_ms: watched_ms.saturating_sub(self.heard_at_watched_ms),
            handles: self.handles.len(),
            pending_waits: self.waits.len(),
            replies: self.replies.len(),
            unacknowledged_outcomes: self.outcomes.len(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The namespace's verbs on sessions: open, end, and every client request's way in (dedupe,
// acknowledgements, cancels, dispatch).
// ---------------------------------------------------------------------------------------------

impl Namespace {
    pub(super) fn open_session(
        &mut self,
        index: u64,
        ttl_ms: u64,
        secret: SessionSecret,
        _now: u64,
        client_name: &str,
    ) -> Reply {
        if client_name.len() > CLIENT_NAME_MAX_BYTES {
            return Reply::Error(Win32Error::INVALID_PARAMETER);
        }
        if self.sessions.len() >= self.limits.sessions_max {
            return Reply::Error(Win32Error::NO_SYSTEM_RESOURCES);
        }
        let session = Session {
            secret,
            client_name: client_name.to_string(),
            ttl_ms,
            heard_at_watched_ms: self.watched_ms,
            handles: BTreeSet::new(),
            waits: BTreeSet::new(),
            replies: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            acked_below: 0,
        };
        let previous = self.sessions.insert(index, session);
        assert!(previous.is_none(), "session id {index} reused");
        Reply::SessionOpened { session: index }
    }

    /// The secret of session `id`, if it exists (for the requests that do not go through the
    /// log: keepalives, `AwaitWait`, `Query`).
    pub fn session_secret(&self, id: SessionId) -> Option<SessionSecret> {
        self.sessions.get(&id).map(|s| s.secret)
    }

    /// Ends a session (expiry or close): fails its pending waits with 6, abandons every mutex its
    /// threads own (waking their waiters), closes its handles in id order and forgets it.
    pub(super) fn end_session(&mut self, index: u64, id: SessionId, resolved: &mut Vec<Resolved>) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        let seqs: Vec<Seq> = session.waits.iter().copied().collect();
        let handles: Vec<HandleId> = session.handles.iter().copied().collect();
        for seq in seqs {
            self.finish_wait(
                (id, seq),
                WaitOutcome::Failed(Win32Error::INVALID_HANDLE),
                resolved,
            );
        }
        let abandoned = self.abandon(id, None);
        self.wake(index, &abandoned, resolved);
        for handle in handles {
            self.close_handle(handle);
        }
        self.tenant_ended(id);
        let session = self
            .sessions
            .remove(&id)
            .expect("the ending session exists");
        self.outcomes_total -= session.outcomes.len();
        self.replies_total -= session.replies.len();
        assert!(
            session.handles.is_empty(),
            "session {id} ended with open handles"
        );
        assert!(
            session.waits.is_empty(),
            "session {id} ended with pending waits"
        );
        assert!(
            !self.owned.contains_key(&id),
            "session {id} ended still owning a mutex"
        );
    }

    /// A client request: session and secret check, acknowledged wait outcomes, dedupe,
    /// acknowledgement pruning, the reply-table limit, then the operation; the reply is recorded.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn client(
        &mut self,
        index: u64,
        (id, secret): (SessionId, &SessionSecret),
        (seq, ack_below): (Seq, Seq),
        waits_done: &[Seq],
        now: u64,
        request: &Request,
        resolved: &mut Vec<Resolved>,
    ) -> Reply {
        let replies_max = self.limits.replies_per_session_max;
        let Some(session) = self.sessions.get_mut(&id) else {
            return Reply::SessionUnknown;
        };
        if !session.secret.matches(secret) {
            return Reply::SecretMismatch;
        }
        // The client has these outcomes: forget them (idempotent, so also on a retry).
        for done in waits_done.iter().take(self.limits.waits_per_session_max) {
            if session.outcomes.remove(done).is_some() {
                self.outcomes_total -= 1;
            }
        }
        if let Some(reply) = session.replies.get(&seq) {
            // A retried registration of a wait that has ended since gets the outcome.
            if *reply == Reply::WaitPending
                && let Some(outcome) = session.outcomes.get(&seq)
            {
                return Reply::Wait(outcome.outcome);
            }
            return reply.clone();
        }
        let floor = session.acked_below.max(ack_below);
        if seq < floor {
            return Reply::Error(Win32Error::INVALID_PARAMETER);
        }
        session.acked_below = floor;
        let (replies, outcomes) = (session.replies.len(), session.outcomes.len());
        session.replies.retain(|s, _| *s >= floor);
        // A grant made at once is received with its reply, so it goes with the reply.
        session.outcomes.retain(|s, o| *s >= floor || !o.immediate);
        self.replies_total -= replies - session.replies.len();
        self.outcomes_total -= outcomes - session.outcomes.len();
        // The oldest request in flight is always admitted (so the floor can always advance, and
        // the table exceeds the limit by at most one); a CancelWait, which may hold a wait's
        // number in flight below everything else, gets a wider bound.
        // A CancelWait may record two replies (its own and the one barring a registration that
        // has not arrived), so it needs two free slots of the cluster-wide bound.
        let (limit, needed) = match request {
            Request::CancelWait { .. } => (replies_max + self.limits.waits_per_session_max, 2),
            _ => (replies_max, 1),
        };
        let full =
            session.replies.len() >= limit || self.replies_total + needed > self.limits.replies_max;
        if full && seq > floor {
            return Reply::TooManyPending;
        }
        let reply = self.execute(index, id, seq, now, request, resolved);
        if let Some(session) = self.sessions.get_mut(&id)
            && session.replies.insert(seq, reply.clone()).is_none()
        {
            self.replies_total += 1;
        }
        reply
    }

    /// `CancelWait`: the client gives wait `(session, wait)` up (see [`Request::CancelWait`]).
    pub(super) fn cancel_wait(
        &mut self,
        index: u64,
        session: SessionId,
        wait: Seq,
        resolved: &mut Vec<Resolved>,
    ) -> Reply {
        if self.waits.contains_key(&(session, wait)) {
            self.finish_wait((session, wait), WaitOutcome::TimedOut, resolved);
        }
        let s = self
            .sessions
            .get_mut(&session)
            .expect("the requesting session exists");
        if let Some(outcome) = s.outcomes.remove(&wait) {
            self.outcomes_total -= 1;
            self.give_back(index, session, &outcome, resolved);
            return Reply::Wait(outcome.outcome);
        }
        match s.replies.get(&wait) {
            Some(Reply::Wait(outcome)) => Reply::Wait(*outcome),
            Some(_) => Reply::Wait(WaitOutcome::Failed(Win32Error::INVALID_PARAMETER)),
            None if wait < s.acked_below => {
                Reply::Wait(WaitOutcome::Failed(Win32Error::INVALID_PARAMETER))
            }
            None => {
                // Never registered (yet): bar a registration still on its way.
                s.replies.insert(wait, Reply::Wait(WaitOutcome::TimedOut));
                self.replies_total += 1;
                Reply::Wait(WaitOutcome::TimedOut)
            }
        }
    }

    /// Undoes what a granted wait acquired, for an owner that will never use it: one recursion
    /// level of each mutex it still owns (restoring the abandoned flag it took), one unit of
    /// each semaphore, the signal of each auto-reset event; then wakes whoever can use them.
    pub(super) fn give_back(
        &mut self,
        index: u64,
        session: SessionId,
        outcome: &Outcome,
        resolved: &mut Vec<Resolved>,
    ) {
        let mut freed = Vec::new();
        let mut unowned = Vec::new();
        for taken in &outcome.acquired {
            let (id, was_abandoned) = (taken.object, taken.abandoned);
            let Some(object) = self.objects.get_mut(&id) else {
                continue;
            };
            let epoch = object.event_epoch;
            match &mut object.data {
                ObjectData::Mutex(m) => {
                    // Only the very grant being given back (its token), never a later one.
                    if m.owner != Some((session, outcome.thread)) || m.fencing_token != taken.stamp
                    {
                        continue;
                    }
                    m.recursion -= 1;
                    if m.recursion == 0 {
                        *m = MutexData {
                            owner: None,
                            recursion: 0,
                            abandoned: was_abandoned,
                            fencing_token: 0,
                        };
                        freed.push(id);
                        unowned.push(id);
                    }
                }
                ObjectData::Semaphore { count, max } => {
                    if *count < *max {
                        *count += 1;
                        freed.push(id);
                    }
                }
                ObjectData::Event {
                    manual_reset: false,
                    signaled,
                } if epoch == taken.stamp => {
                    *signaled = true;
                    freed.push(id);
                }
                ObjectData::Event { .. } => {}
            }
        }
        for id in unowned {
            self.unindex_owner(id, (session, outcome.thread));
        }
        self.wake(index, &freed, resolved);
    }

    pub(super) fn execute(
        &mut self,
        index: u64,
        session: SessionId,
        seq: Seq,
        now: u64,
        request: &Request,
        resolved: &mut Vec<Resolved>,
    ) -> Reply {
        if let Err(code) = validate_request(request) {
            return failure_reply(request, code);
        }
        // An ACL's decision wraps a Create or Open (validate_request refused anything else).
        let (request, allowed) = match request {
            Request::Limited { allowed, request } => (&**request, Some(allowed)),
            request => (request, None),
        };
        match request {
            Request::Create {
                thread,
                name,
                params,
                access,
            } => self.create(
                index,
                session,
                *thread,
                name.as_deref(),
                params,
                *access,
                allowed,
            ),
            Request::Open { kind, name, access } => {
                self.open(session, *kind, name.as_deref(), *access, allowed)
            }
            // Unreachable: validate_request refused a nested one above.
            Request::Limited { .. } => Reply::Error(Win32Error::INVALID_PARAMETER),
            Request::CloseHandle { handle } => match self.lookup(session, *handle) {
                Ok(_) => {
                    self.close_handle(*handle);
                    Reply::Done
                }
                Err(code) => Reply::Error(code),
            },
            Request::ReleaseMutex { thread, handle } => {
                match self.release_mutex(index, session, *thread, *handle, resolved) {
                    Ok(()) => Reply::Done,
                    Err(code) => Reply::Error(code),
                }
            }
            Request::SetEvent { handle } => {
                self.event_op(index, session, *handle, resolved, Op::Set)
            }
            Request::ResetEvent { handle } => {
                self.event_op(index, session, *handle, resolved, Op::Reset)
            }
            Request::PulseEvent { handle } => {
                self.event_op(index, session, *handle, resolved, Op::Pulse)
            }
            Request::ReleaseSemaphore { handle, count } => {
                match self.release_semaphore(index, session, *handle, *count, resolved) {
                    Ok(previous) => Reply::SemaphoreReleased { previous },
                    Err(code) => Reply::Error(code),
                }
            }
            Request::Wait {
                thread,
                handles,
                wait_all,
                timeout_ms,
            } => {
                let mut objects = Vec::with_capacity(handles.len());
                for handle in handles {
                    match self.wait_handle(session, *handle) {
                        Ok(object) => objects.push(object),
                        Err(code) => return Reply::Wait(WaitOutcome::Failed(code)),
                    }
                }
                if *wait_all {
                    let mut seen = BTreeSet::new();
                    if !objects.iter().all(|o| seen.insert(*o)) {
                        return Reply::Wait(WaitOutcome::Failed(Win32Error::INVALID_PARAMETER));
                    }
                }
                let wait = Wait {
                    thread: *thread,
                    objects,
                    wait_all: *wait_all,
                    registered_unix_ms: now,
                    registered_watched_ms: self.watched_ms,
                    timeout_ms: *timeout_ms,
                };
                self.start_wait(index, (session, seq), wait)
            }
            Request::SignalAndWait {
                thread,
                signal,
                wait,
                timeout_ms,
            } => {
                let outcome = self.signal_and_wait(
                    index,
                    (session, seq),
                    now,
                    *thread,
                    *signal,
                    *wait,
                    *timeout_ms,
                    resolved,
                );
                match outcome {
                    Ok(reply) => reply,
                    Err(code) => Reply::Wait(WaitOutcome::Failed(code)),
                }
            }
            // A wait is cancelled by a later request: a cancel that names its own or a later
            // number could bar registrations no client will ever send, one reply each, past
            // every bound.
            Request::CancelWait { wait } if *wait >= seq => {
                Reply::Wait(WaitOutcome::Failed(Win32Error::INVALID_PARAMETER))
            }
            Request::CancelWait { wait } => self.cancel_wait(index, session, *wait, resolved),
            Request::ThreadExit { thread } => {
                let seqs: Vec<Seq> = self
                    .sessions
                    .get(&session)
                    .expect("the requesting session exists")
                    .waits
                    .iter()
                    .copied()
                    .filter(|seq| {
                        self.waits
                            .get(&(session, *seq))
                            .is_some_and(|w| w.thread == *thread)
                    })
                    .collect();
                for seq in seqs {
                    let failed = WaitOutcome::Failed(Win32Error::INVALID_HANDLE);
                    self.finish_wait((session, seq), failed, resolved);
                }
                let abandoned = self.abandon(session, Some(*thread));
                self.wake(index, &abandoned, resolved);
                Reply::Done
            }
            Request::CloseSession => {
                self.end_session(index, session, resolved);
                Reply::Done
            }
        }
    }
}

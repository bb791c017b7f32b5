//! Waits: a registered `WaitForMultipleObjects` that could not be satisfied at once.

use super::tenancy::Held;
use super::*;
use serde::{Deserialize, Serialize};

use super::object::ObjectId;
use super::types::{Seq, SessionId, ThreadId, WaitOutcome};

/// A wait is identified by the request that made it.
pub(crate) type WaitKey = (SessionId, Seq);

/// A pending wait's replicated state. It references objects, not handles: closing the handle it
/// was made through does not end it (§4.4), and it keeps its objects alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Wait {
    /// The waiting thread (mutex owner identity together with the session).
    pub thread: ThreadId,
    /// The object behind each entry of the request's handle array, in request order (wait-any
    /// may name an object twice).
    pub objects: Vec<ObjectId>,
    /// `bWaitAll`.
    pub wait_all: bool,
    /// `now_unix_ms` of the command that queued the wait (for the record; deadlines never
    /// compare wall clocks of different nodes).
    pub registered_unix_ms: u64,
    /// The namespace's watched time when the wait was queued.
    pub registered_watched_ms: u64,
    /// The requested timeout; `u32::MAX` (INFINITE) never expires.
    pub timeout_ms: u32,
}

/// A wait's outcome, kept in its session from the moment the wait ends until the client says it
/// has received it (`waits_done`) or gives the wait up (`CancelWait`), which gives back what the
/// wait acquired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Outcome {
    /// How the wait ended.
    pub outcome: WaitOutcome,
    /// The waiting thread (the owner of any mutex acquired).
    pub thread: ThreadId,
    /// What the grant acquired, in acquisition order. Empty unless granted.
    pub acquired: Vec<Taken>,
    /// Granted by the registration itself: the client receives the outcome with the reply, so
    /// the record goes when the reply is acknowledged (`ack_below`), not through `waits_done`,
    /// and it does not count against the session's wait limit.
    pub immediate: bool,
}

/// One object a grant acquired, with what a give-back needs to undo exactly that grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Taken {
    /// The object.
    pub object: ObjectId,
    /// It was an abandoned mutex (a give-back restores the flag).
    pub abandoned: bool,
    /// Mutex: the fencing token of the grant (a give-back releases only that very grant, never
    /// a later one of an owner id that was reused). Event: its `event_epoch` at the grant.
    pub stamp: u64,
}

/// A pending wait as the leader's timeout timers see it: a new leader times it out
/// `timeout_ms - waited_ms` after it takes over (the leader that registered it, `timeout_ms`
/// after it applied the registration), by proposing `TimeoutWait`. A `timeout_ms` of
/// `u32::MAX` (INFINITE) never expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingWait {
    /// The waiting session.
    pub session: SessionId,
    /// The wait request's sequence number.
    pub seq: Seq,
    /// The waiting thread.
    pub thread: ThreadId,
    /// Wall-clock time (ms since the Unix epoch) of the command that queued the wait.
    pub registered_unix_ms: u64,
    /// The requested timeout in milliseconds; `u32::MAX` is INFINITE.
    pub timeout_ms: u32,
    /// How long leaders have watched the wait pending, as of the latest checkpoint (watched
    /// time since it was queued). A new leader gives it `timeout_ms` minus this, erring late.
    pub waited_ms: u64,
}

impl PendingWait {
    /// The wall-clock time at which the wait would time out by the registering node's clock, or
    /// `None` for INFINITE. For the golden-script runner's simulated clock only; the server's
    /// timers never use it.
    pub fn deadline_unix_ms(&self) -> Option<u64> {
        (self.timeout_ms != u32::MAX).then(|| {
            self.registered_unix_ms
                .saturating_add(u64::from(self.timeout_ms))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The namespace's verbs on waits: register, evaluate, grant, wake, finish, SignalObjectAndWait.
// ---------------------------------------------------------------------------------------------

impl Namespace {
    /// The object behind a handle the session waits on (needs `SYNCHRONIZE`).
    pub(super) fn wait_handle(
        &self,
        session: SessionId,
        handle: HandleId,
    ) -> Result<ObjectId, Win32Error> {
        let (id, access) = self.lookup(session, handle)?;
        if access & SYNCHRONIZE == 0 {
            return Err(Win32Error::ACCESS_DENIED);
        }
        Ok(id)
    }

    /// Evaluates a new wait: grants it, fails it, times it out (poll) or queues it.
    pub(super) fn start_wait(&mut self, index: u64, key: WaitKey, wait: Wait) -> Reply {
        let owner = (key.0, wait.thread);
        match self.evaluate(owner, &wait.objects, wait.wait_all) {
            Eval::Fail(code) => Reply::Wait(WaitOutcome::Failed(code)),
            Eval::NotReady if wait.timeout_ms == 0 => Reply::Wait(WaitOutcome::TimedOut),
            Eval::NotReady => {
                if !self.has_wait_room(key.0, &wait.objects) {
                    return Reply::Wait(WaitOutcome::Failed(Win32Error::NO_SYSTEM_RESOURCES));
                }
                for id in distinct(&wait.objects) {
                    self.object_mut(id).waiters.push_back(key);
                }
                let session = self
                    .sessions
                    .get_mut(&key.0)
                    .expect("the waiting session exists");
                assert!(session.waits.insert(key.1), "wait {key:?} registered twice");
                assert!(
                    self.waits.insert(key, wait).is_none(),
                    "wait {key:?} registered twice"
                );
                self.tenant_count(key.0, Held::Waits, true);
                Reply::WaitPending
            }
            ready => {
                // The grant's record counts against the cluster-wide bound (not the session's).
                if self.waits.len() + self.outcomes_total >= self.limits.waits_max {
                    return Reply::Wait(WaitOutcome::Failed(Win32Error::NO_SYSTEM_RESOURCES));
                }
                let (outcome, acquired) = self.grant(index, owner, &wait.objects, ready);
                let record = Outcome {
                    outcome,
                    thread: wait.thread,
                    acquired,
                    immediate: true,
                };
                let previous = self
                    .sessions
                    .get_mut(&key.0)
                    .expect("the waiting session exists")
                    .outcomes
                    .insert(key.1, record);
                assert!(previous.is_none(), "wait {key:?} granted twice");
                self.outcomes_total += 1;
                Reply::Wait(outcome)
            }
        }
    }

    pub(super) fn has_wait_room(&self, id: SessionId, objects: &[ObjectId]) -> bool {
        let session = self.sessions.get(&id).expect("the waiting session exists");
        session.waits.len() + session.outcomes.values().filter(|o| !o.immediate).count()
            < self.limits.waits_per_session_max
            && self.waits.len() + self.outcomes_total < self.limits.waits_max
            && objects
                .iter()
                .all(|id| self.object(*id).waiters.len() < self.limits.waiters_per_object_max)
            && self.tenant_has_room(id, Held::Waits)
    }

    /// How a wait by `owner` on `objects` could be satisfied now (§7.2, §7.3, §4.2).
    pub(super) fn evaluate(&self, owner: Owner, objects: &[ObjectId], wait_all: bool) -> Eval {
        if wait_all {
            if !objects
                .iter()
                .all(|id| self.object(*id).is_signaled_for(owner))
            {
                return Eval::NotReady;
            }
            if objects
                .iter()
                .any(|id| self.object(*id).acquire_would_overflow(owner))
            {
                return Eval::Fail(Win32Error::MUTANT_LIMIT_EXCEEDED);
            }
            return Eval::All;
        }
        for (i, id) in objects.iter().enumerate() {
            let object = self.object(*id);
            if object.is_signaled_for(owner) {
                if object.acquire_would_overflow(owner) {
                    return Eval::Fail(Win32Error::MUTANT_LIMIT_EXCEEDED);
                }
                return Eval::Any(i);
            }
        }
        Eval::NotReady
    }

    /// Performs a satisfiable wait's acquisitions; returns its outcome and what it acquired
    /// (each object, and whether it was an abandoned mutex).
    pub(super) fn grant(
        &mut self,
        index: u64,
        owner: Owner,
        objects: &[ObjectId],
        eval: Eval,
    ) -> (WaitOutcome, Vec<Taken>) {
        let (selected, result_index): (Vec<ObjectId>, u32) = match eval {
            Eval::Any(i) => (
                vec![objects[i]],
                u32::try_from(i).expect("at most 64 handles"),
            ),
            Eval::All => (objects.to_vec(), 0),
            Eval::NotReady | Eval::Fail(_) => unreachable!("granting an unsatisfiable wait"),
        };
        let mut abandoned = false;
        let mut fencing_token = 0;
        let mut taken = Vec::with_capacity(selected.len());
        for id in selected {
            let object = self.object_mut(id);
            let acquired = object.acquire(owner, index);
            let is_mutex = matches!(object.data, ObjectData::Mutex(_));
            if is_mutex && fencing_token == 0 {
                fencing_token = acquired.fencing_token;
            }
            abandoned |= acquired.abandoned;
            let stamp = match object.data {
                ObjectData::Mutex(_) => acquired.fencing_token,
                _ => object.event_epoch,
            };
            taken.push(Taken {
                object: id,
                abandoned: acquired.abandoned,
                stamp,
            });
            if is_mutex {
                self.index_owner(id, owner);
            }
        }
        let outcome = if abandoned {
            WaitOutcome::Abandoned {
                index: result_index,
                fencing_token,
            }
        } else {
            WaitOutcome::Signaled {
                index: result_index,
                fencing_token,
            }
        };
        (outcome, taken)
    }

    /// Grants every queued wait that is satisfiable now, scanning the queues of `start` in order,
    /// each oldest first.
    pub(super) fn wake(&mut self, index: u64, start: &[ObjectId], resolved: &mut Vec<Resolved>) {
        for &id in start {
            let mut position = 0;
            // The object disappears if a grant released the last thing keeping it alive.
            while let Some(&key) = self.objects.get(&id).and_then(|o| o.waiters.get(position)) {
                let wait = self.waits.get(&key).expect("a queued wait is registered");
                let owner = (key.0, wait.thread);
                match self.evaluate(owner, &wait.objects, wait.wait_all) {
                    Eval::NotReady => position += 1,
                    Eval::Fail(code) => self.finish_wait(key, WaitOutcome::Failed(code), resolved),
                    ready => {
                        let objects = wait.objects.clone();
                        let (outcome, acquired) = self.grant(index, owner, &objects, ready);
                        self.finish_wait_with(key, outcome, acquired, resolved);
                    }
                }
            }
        }
    }

    /// Ends a pending wait with `outcome` (acquiring nothing).
    pub(super) fn finish_wait(
        &mut self,
        key: WaitKey,
        outcome: WaitOutcome,
        resolved: &mut Vec<Resolved>,
    ) {
        self.finish_wait_with(key, outcome, Vec::new(), resolved);
    }

    /// Ends a pending wait with `outcome`: unqueues it, releases the objects it kept alive,
    /// records the outcome (and what it acquired) in the session until the client acknowledges
    /// it, and reports it.
    pub(super) fn finish_wait_with(
        &mut self,
        key: WaitKey,
        outcome: WaitOutcome,
        acquired: Vec<Taken>,
        resolved: &mut Vec<Resolved>,
    ) {
        let wait = self
            .waits
            .remove(&key)
            .expect("the finished wait is registered");
        for id in distinct(&wait.objects) {
            let object = self.object_mut(id);
            let before = object.waiters.len();
            object.waiters.retain(|k| *k != key);
            assert_eq!(
                object.waiters.len() + 1,
                before,
                "wait {key:?} queued once per object"
            );
            self.maybe_destroy(id);
        }
        let session = self
            .sessions
            .get_mut(&key.0)
            .expect("the waiting session exists");
        assert!(
            session.waits.remove(&key.1),
            "wait {key:?} missing from its session"
        );
        let record = Outcome {
            outcome,
            thread: wait.thread,
            acquired,
            immediate: false,
        };
        assert!(
            session.outcomes.insert(key.1, record).is_none(),
            "wait {key:?} ended twice"
        );
        self.outcomes_total += 1;
        self.tenant_count(key.0, Held::Waits, false);
        resolved.push(Resolved {
            session: key.0,
            seq: key.1,
            outcome,
        });
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn signal_and_wait(
        &mut self,
        index: u64,
        key: WaitKey,
        now: u64,
        thread: ThreadId,
        signal: HandleId,
        wait: HandleId,
        timeout_ms: u32,
        resolved: &mut Vec<Resolved>,
    ) -> Result<Reply, Win32Error> {
        let session = key.0;
        let (signal_id, signal_access) = self.lookup(session, signal)?;
        let kind = self.object(signal_id).kind();
        let needed = match kind {
            ObjectKind::Mutex => 0,
            ObjectKind::Event => EVENT_MODIFY_STATE,
            ObjectKind::Semaphore => SEMAPHORE_MODIFY_STATE,
        };
        if signal_access & needed != needed {
            return Err(Win32Error::ACCESS_DENIED);
        }
        let wait_id = self.wait_handle(session, wait)?;
        if timeout_ms != 0 && !self.has_wait_room(session, &[wait_id]) {
            return Err(Win32Error::NO_SYSTEM_RESOURCES);
        }
        // Refused before signalling: a poll granted at once needs a record the cluster-wide
        // bound may not allow, and a refusal must change nothing.
        if self.waits.len() + self.outcomes_total >= self.limits.waits_max {
            return Err(Win32Error::NO_SYSTEM_RESOURCES);
        }
        match kind {
            ObjectKind::Mutex => self.release_mutex(index, session, thread, signal, resolved)?,
            ObjectKind::Event => {
                self.set_event_signaled(signal_id, true);
                self.wake(index, &[signal_id], resolved);
            }
            ObjectKind::Semaphore => {
                self.release_semaphore(index, session, signal, 1, resolved)?;
            }
        }
        let wait = Wait {
            thread,
            objects: vec![wait_id],
            wait_all: false,
            registered_unix_ms: now,
            registered_watched_ms: self.watched_ms,
            timeout_ms,
        };
        Ok(self.start_wait(index, key, wait))
    }
}

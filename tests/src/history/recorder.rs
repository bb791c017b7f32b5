//! Recording a run: a [`History`] is the list of [`Record`]s (one per operation, with its
//! invocation time and outcomes), and [`Recorder`] appends to one from many client threads
//! with a single clock.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{ClientId, Nanos, Op, OpId, Outcome};

/// One operation of one client with its times and outcomes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// This record's id (its index in the history).
    pub id: OpId,
    /// Who sent it.
    pub client: ClientId,
    /// The client's request id (e.g. its sequence number or wait id), if the driver tracks
    /// one; records sharing `(client, request)` are retries or re-attaches of one request.
    pub request: Option<u64>,
    /// What was sent.
    pub op: Op,
    /// When it was invoked (read before the request left).
    pub invoke: Nanos,
    /// Every outcome recorded for it, in order, with the time each was read. Normally one; none
    /// if the history was taken while the operation was in flight.
    pub outcomes: Vec<(Nanos, Outcome)>,
}

impl Record {
    /// The first definite outcome, or [`Outcome::Unknown`] if there is none.
    pub fn outcome(&self) -> Outcome {
        self.outcomes
            .iter()
            .map(|(_, o)| *o)
            .find(Outcome::is_definite)
            .unwrap_or(Outcome::Unknown)
    }

    /// When the first definite outcome was read (an upper bound of the moment the operation
    /// took effect), or `None` if the outcome is unknown.
    pub fn returned(&self) -> Option<Nanos> {
        self.outcomes
            .iter()
            .find(|(_, o)| o.is_definite())
            .map(|(t, _)| *t)
    }

    /// When the client moved on (its first outcome of any kind), or `None` while in flight.
    pub fn ended(&self) -> Option<Nanos> {
        self.outcomes.first().map(|(t, _)| *t)
    }

    /// `returned()`, or "never" for an unknown outcome.
    pub(super) fn hi(&self) -> Nanos {
        self.returned().unwrap_or(Nanos::MAX)
    }
}

/// A recorded history: every operation of every client.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct History {
    /// The records; `records[i].id == OpId(i)`.
    pub records: Vec<Record>,
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// One history of the records of `parts`, recorded by different processes on one clock
    /// (see [`Recorder::system_monotonic`]) with distinct client ids: records are renumbered in
    /// order of invocation.
    pub fn merge(parts: impl IntoIterator<Item = History>) -> History {
        let mut records: Vec<Record> = parts.into_iter().flat_map(|h| h.records).collect();
        records.sort_by_key(|r| (r.invoke, r.client));
        for (i, record) in records.iter_mut().enumerate() {
            record.id = OpId(i);
        }
        History { records }
    }

    /// Appends an invoked operation and returns its id.
    pub fn push(&mut self, client: ClientId, request: Option<u64>, op: Op, invoke: Nanos) -> OpId {
        let id = OpId(self.records.len());
        self.records.push(Record {
            id,
            client,
            request,
            op,
            invoke,
            outcomes: Vec::new(),
        });
        id
    }

    /// Records an outcome of operation `id`, read at time `at`.
    ///
    /// # Panics
    ///
    /// If `id` is not a record of this history.
    pub fn complete(&mut self, id: OpId, at: Nanos, outcome: Outcome) {
        self.records[id.0].outcomes.push((at, outcome));
    }

    /// Appends a whole operation: invoked at `invoke`, one outcome read at `at`.
    pub fn add(
        &mut self,
        client: ClientId,
        op: Op,
        invoke: Nanos,
        at: Nanos,
        outcome: Outcome,
    ) -> OpId {
        let id = self.push(client, None, op, invoke);
        self.complete(id, at, outcome);
        id
    }

    /// The record with id `id`.
    ///
    /// # Panics
    ///
    /// If `id` is not a record of this history.
    pub fn get(&self, id: OpId) -> &Record {
        &self.records[id.0]
    }
}

/// A thread-safe, cheaply cloned history recorder with one clock for all clients.
///
/// ```
/// use dlock_tests::history::{check, ClientId, Op, Outcome, Recorder};
/// let rec = Recorder::new();
/// let me = ClientId(1);
/// let op = rec.invoke(me, Op::Acquire { mutex: "m".into(), timeout_ms: 1000 });
/// rec.complete(op, Outcome::Acquired { token: 7, abandoned: false });
/// let op = rec.invoke(me, Op::Release { mutex: "m".into() });
/// rec.complete(op, Outcome::Ok);
/// let report = check(&rec.history()).expect("a correct history");
/// assert_eq!(report.max_token, 7);
/// ```
#[derive(Clone, Debug)]
pub struct Recorder {
    /// Where the clock counts from: a moment of this process, or the system's monotonic clock
    /// itself.
    start: Option<Instant>,
    history: Arc<Mutex<History>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Recorder {
        Recorder {
            start: Some(Instant::now()),
            history: Arc::new(Mutex::new(History::new())),
        }
    }

    /// A recorder whose clock is the system's `CLOCK_MONOTONIC`, which every process on one
    /// kernel shares (containers included: Docker does not give them time namespaces), so
    /// histories recorded by several processes can be merged ([`History::merge`]).
    pub fn system_monotonic() -> Recorder {
        Recorder {
            start: None,
            history: Arc::new(Mutex::new(History::new())),
        }
    }

    /// The recorder's clock: nanoseconds since it was created, or of `CLOCK_MONOTONIC`.
    pub fn now(&self) -> Nanos {
        match self.start {
            Some(start) => u64::try_from(start.elapsed().as_nanos()).unwrap_or(Nanos::MAX),
            None => monotonic_now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `client` is about to send `op`; call it *before* sending.
    pub fn invoke(&self, client: ClientId, op: Op) -> OpId {
        let mut h = self.lock();
        let now = self.now();
        h.push(client, None, op, now)
    }

    /// Like [`Recorder::invoke`], tagging the operation with the client's request id so that
    /// retries and re-attaches of one request are checked to agree.
    pub fn invoke_request(&self, client: ClientId, request: u64, op: Op) -> OpId {
        let mut h = self.lock();
        let now = self.now();
        h.push(client, Some(request), op, now)
    }

    /// Records an outcome of `id`; call it *after* the reply arrived (or when giving up, with
    /// [`Outcome::Unknown`]). Calling it again records another outcome, which check 3 compares.
    pub fn complete(&self, id: OpId, outcome: Outcome) {
        let mut h = self.lock();
        let now = self.now();
        if id.0 < h.records.len() {
            h.complete(id, now, outcome);
        }
    }

    /// Records that `client`'s session ended or may have ended (jeopardy, expiry error, killed
    /// process). Its holds end without release, its pins are void, and it should not be used
    /// again: continue under a new [`ClientId`].
    pub fn lost_session(&self, client: ClientId) -> OpId {
        let mut h = self.lock();
        let now = self.now();
        let id = h.push(client, None, Op::LostSession, now);
        h.complete(id, now, Outcome::Ok);
        id
    }

    /// A snapshot of everything recorded so far.
    pub fn history(&self) -> History {
        self.lock().clone()
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds.
pub fn monotonic_now() -> Nanos {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

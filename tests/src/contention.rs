//! Checked mutex traffic for fault tests: a [`Pin`] that creates and pins the objects, and
//! [`Contention`], workers that acquire, hold and release named mutexes and record every
//! operation in a [`Recorder`] for the history checker ([`check_history`]). The in-process
//! scenarios (`tests/tests/cluster_processes.rs`) and the container fault suite's client
//! (`tests/src/bin/dlock-fault-client.rs`) run the same traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dlock::{Client, Error, Session, Timeout};
use tokio::task::JoinHandle;

use crate::history::{self, ClientId, History, ObjectKind, Op, Outcome, Recorder, Report};

/// Client ids a worker may use: worker `w`'s incarnations are `(w + 1) * CLIENT_ID_STRIDE + 1`
/// onwards, so a worker would need a million sessions to reach the next one's.
pub const CLIENT_ID_STRIDE: u64 = 1_000_000;

/// How the traffic behaves.
#[derive(Debug, Clone, Copy)]
pub struct Traffic {
    /// TTL of the workers' sessions: longer than a failover.
    pub worker_ttl: Duration,
    /// Timeout of one contended acquire, in milliseconds.
    pub acquire_timeout_ms: u32,
    /// How long a worker holds a mutex it acquired ("work").
    pub hold: Duration,
    /// Bound of [`Contention::progress`].
    pub progress_deadline: Duration,
    /// Bound of [`Contention::stop`] (an acquire in flight takes its timeout plus, at worst,
    /// the client's request timeout).
    pub stop_deadline: Duration,
    /// Added to every worker's client ids, so that several processes can record into one
    /// history (worker `w` records as `base + (w + 1) * CLIENT_ID_STRIDE + incarnation`).
    pub client_id_base: u64,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            worker_ttl: Duration::from_secs(3),
            acquire_timeout_ms: 500,
            hold: Duration::from_millis(3),
            progress_deadline: Duration::from_secs(30),
            stop_deadline: Duration::from_secs(20),
            client_id_base: 0,
        }
    }
}

/// Polls `condition` every 10 ms until it holds; panics naming `what` after `deadline`.
pub async fn wait_until(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !condition() {
        assert!(Instant::now() < end, "{what}: not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Maps a failed call to its history outcome: a Win32 error reply changed nothing; everything
/// else (unavailable, session lost, transport) is ambiguous.
pub fn failed(err: &Error) -> Outcome {
    match err {
        Error::Win32(code) => Outcome::Failed(code.code()),
        _ => Outcome::Unknown,
    }
}

/// The client that pins the traffic's objects: one session that creates every object with
/// `keep_open` and never closes a handle.
pub struct Pin {
    session: Session,
    rec: Recorder,
    id: ClientId,
    /// The pinning handles: dropping a typed handle closes it, which would void the pin.
    handles: std::sync::Mutex<Vec<dlock::Mutex>>,
}

impl Pin {
    /// Opens the pinning session with `ttl`, recording as client `id`.
    pub async fn open(client: &Client, rec: &Recorder, ttl: Duration, id: ClientId) -> Pin {
        let session = client.open_session(ttl).await.expect("pin session");
        Pin {
            session,
            rec: rec.clone(),
            id,
            handles: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Creates (and pins) the mutex `name`, recording the create; the handle stays open.
    pub async fn mutex(&self, name: &str) {
        let op = self.rec.invoke(
            self.id,
            Op::Create {
                name: name.into(),
                kind: ObjectKind::Mutex,
                keep_open: true,
            },
        );
        let m = self
            .session
            .create_mutex(Some(name), false)
            .await
            .expect("pin create");
        self.rec.complete(
            op,
            Outcome::Created {
                already_existed: m.already_existed(),
            },
        );
        self.handles.lock().unwrap().push(m);
    }

    /// At the end of a run: the pinning session must still be alive (else its pins would be
    /// void; record that so the check stays sound, and fail).
    pub fn confirm_alive(&self) {
        let state = self.session.state();
        if state != dlock::SessionState::Alive {
            self.rec.lost_session(self.id);
            panic!("the pinning session is {state:?} at the end of the run");
        }
    }
}

/// What one contending worker did.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Mutex grants.
    pub grants: u64,
    /// Sessions opened (one per client id).
    pub sessions: u64,
    /// Operations whose outcome stayed unknown.
    pub unknown: u64,
}

/// Clients contending on a few mutexes (acquire, hold a few ms, release), each op recorded.
pub struct Contention {
    stop: Arc<AtomicBool>,
    grants: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<WorkerStats>>,
    traffic: Traffic,
}

impl Contention {
    /// Starts `workers` workers on `mutexes` (which the pin created first). Worker `w` records
    /// as client `traffic.client_id_base + (w + 1) * CLIENT_ID_STRIDE + incarnation`; a worker whose
    /// session is lost or whose call had an unknown outcome drops that session and continues
    /// under a new client id.
    pub fn start(
        client: &Client,
        rec: &Recorder,
        mutexes: &[String],
        workers: u64,
        traffic: Traffic,
    ) -> Contention {
        let stop = Arc::new(AtomicBool::new(false));
        let grants = Arc::new(AtomicU64::new(0));
        let tasks = (0..workers)
            .map(|w| {
                let worker = Worker {
                    client: client.clone(),
                    rec: rec.clone(),
                    mutexes: mutexes.to_vec(),
                    base: traffic.client_id_base + (w + 1) * CLIENT_ID_STRIDE,
                    traffic,
                    stop: stop.clone(),
                    grants: grants.clone(),
                    rng: 0x9E37_79B9_7F4A_7C15 ^ (w + 1),
                };
                tokio::spawn(worker.run())
            })
            .collect();
        Contention {
            stop,
            grants,
            tasks,
            traffic,
        }
    }

    /// Grants so far, all workers.
    pub fn grants(&self) -> u64 {
        self.grants.load(Ordering::Acquire)
    }

    /// Waits until `more` further grants happened.
    pub async fn progress(&self, more: u64, what: &str) {
        let target = self.grants() + more;
        let grants = self.grants.clone();
        wait_until(what, self.traffic.progress_deadline, || {
            grants.load(Ordering::Acquire) >= target
        })
        .await;
    }

    /// Stops the workers and waits for them.
    pub async fn stop(self) -> Vec<WorkerStats> {
        self.stop.store(true, Ordering::Release);
        let mut stats = Vec::new();
        for task in self.tasks {
            let joined = tokio::time::timeout(self.traffic.stop_deadline, task)
                .await
                .expect("a worker did not stop in time");
            stats.push(joined.expect("worker task"));
        }
        stats
    }
}

struct Worker {
    client: Client,
    rec: Recorder,
    mutexes: Vec<String>,
    base: u64,
    stop: Arc<AtomicBool>,
    grants: Arc<AtomicU64>,
    rng: u64,
    traffic: Traffic,
}

impl Worker {
    fn next_index(&mut self) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % self.mutexes.len() as u64) as usize
    }

    /// Opens a session and a handle to every mutex (creates recorded, not pinning).
    async fn open(&self, id: ClientId) -> Option<(Session, Vec<dlock::Mutex>)> {
        let session = self
            .client
            .open_session(self.traffic.worker_ttl)
            .await
            .ok()?;
        let mut handles = Vec::new();
        for name in &self.mutexes {
            let op = self.rec.invoke(
                id,
                Op::Create {
                    name: name.clone(),
                    kind: ObjectKind::Mutex,
                    keep_open: false,
                },
            );
            match session.create_mutex(Some(name), false).await {
                Ok(m) => {
                    self.rec.complete(
                        op,
                        Outcome::Created {
                            already_existed: m.already_existed(),
                        },
                    );
                    handles.push(m);
                }
                Err(err) => {
                    self.rec.complete(op, failed(&err));
                    return None;
                }
            }
        }
        Some((session, handles))
    }

    async fn run(mut self) -> WorkerStats {
        let mut stats = WorkerStats::default();
        let mut incarnation = 0;
        'sessions: while !self.stop.load(Ordering::Acquire) {
            incarnation += 1;
            let id = ClientId(self.base + incarnation);
            stats.sessions += 1;
            let Some((session, handles)) = self.open(id).await else {
                self.rec.lost_session(id);
                continue;
            };
            while !self.stop.load(Ordering::Acquire) {
                let i = self.next_index();
                let (name, mutex) = (&self.mutexes[i], &handles[i]);
                let op = self.rec.invoke(
                    id,
                    Op::Acquire {
                        mutex: name.clone(),
                        timeout_ms: self.traffic.acquire_timeout_ms,
                    },
                );
                let outcome = match mutex
                    .lock(Timeout::Millis(self.traffic.acquire_timeout_ms))
                    .await
                {
                    Ok(o) => Outcome::from_mutex_wait(o),
                    Err(err) => failed(&err),
                };
                self.rec.complete(op, outcome);
                match outcome {
                    Outcome::Acquired { .. } => {}
                    Outcome::Unknown => {
                        stats.unknown += 1;
                        self.rec.lost_session(id);
                        drop(session);
                        continue 'sessions;
                    }
                    _ => continue,
                }
                stats.grants += 1;
                self.grants.fetch_add(1, Ordering::AcqRel);
                tokio::time::sleep(self.traffic.hold).await;
                let op = self.rec.invoke(
                    id,
                    Op::Release {
                        mutex: name.clone(),
                    },
                );
                let outcome = match mutex.release().await {
                    Ok(()) => Outcome::Ok,
                    Err(err) => failed(&err),
                };
                self.rec.complete(op, outcome);
                if outcome != Outcome::Ok {
                    if outcome == Outcome::Unknown {
                        stats.unknown += 1;
                    }
                    // Not released (or not known to be): this owner is done.
                    self.rec.lost_session(id);
                    drop(session);
                    continue 'sessions;
                }
                if session.state() == dlock::SessionState::Expired {
                    self.rec.lost_session(id);
                    continue 'sessions;
                }
            }
            // Stopping: end this owner cleanly.
            let _ = session.close().await;
            self.rec.lost_session(id);
        }
        stats
    }
}

/// Checks `history` and that it examined something (at least `min_grants` grants and one
/// released hold); prints the report. On violations, writes every record to a file in the
/// temporary directory and panics with the first ten.
pub fn check_history(history: &History, min_grants: usize) -> Report {
    let report = match history::check(history) {
        Ok(report) => report,
        Err(violations) => {
            let lines: Vec<String> = violations.iter().take(10).map(|v| v.to_string()).collect();
            let dump = std::env::temp_dir().join(format!("{}.history", crate::unique("dlock")));
            let records: Vec<String> = history.records.iter().map(|r| format!("{r:?}")).collect();
            let _ = std::fs::write(&dump, records.join("\n"));
            panic!(
                "{} violations in a history of {} ops (all records in {}):\n{}",
                violations.len(),
                history.records.len(),
                dump.display(),
                lines.join("\n")
            );
        }
    };
    eprintln!("history: {report}");
    let grants: usize = report.grants_per_mutex.values().sum();
    assert!(grants >= min_grants, "only {grants} grants checked");
    assert!(report.released_holds_checked > 0, "{report}");
    report
}

//! Sessions: the identity that owns handles and mutexes, its lease, and the low-level calls.
//!
//! # Lease tracking
//!
//! The cluster expires a session `ttl` after the last keepalive the leader saw. The client
//! cannot know when the leader saw a keepalive, only when it *sent* it, so it measures
//! conservatively: a reply renews the lease from the moment its request was sent (keepalive
//! replies are matched to requests in order on the stream), and the lease is the TTL minus the
//! cluster's longest election timeout (`OpenSessionReply.lease_margin_ms`), so the client
//! gives up before the cluster can have expired the session in any failover. With `elapsed`
//! the time since that moment, the session is [`SessionState::Alive`] below 2/3 of the lease,
//! [`SessionState::Jeopardy`] from 2/3, and [`SessionState::Expired`] from the full lease, or
//! as soon as a reply says so. Keepalives go out every third of the lease. Expired is terminal: the keepalive task stops and the client sends
//! a best-effort `CloseSession`, so the mutexes the application was told it lost are abandoned
//! promptly instead of lingering until the server's own expiry.
//!
//! # Request identity
//!
//! Every mutating request carries `(session, seq)`; a retry reuses the header, so the server
//! returns the first reply instead of acting twice. `ack_below` is the smallest sequence number
//! still in flight (or the next one if none): the server may forget replies below it.
//!
//! # Waits
//!
//! A wait is two calls. `Wait` registers it and returns at once, with the outcome or "pending";
//! its sequence number then leaves the in-flight set like any other request's, so a wait that
//! blocks for hours never holds back the acknowledgements of the session's other requests (the
//! server's reply table bounds only what is really in flight). `AwaitWait` then blocks for the
//! outcome; it changes nothing, so it is simply asked again after a broken call, on whichever
//! node leads. The server keeps the outcome until the client lists the wait in the next
//! request's `waits_done`.
//!
//! A wait the caller stops waiting for (a dropped future, the client's give-up deadline) is
//! cancelled: a background task sends `CancelWait` until it is applied (or the session ends),
//! and the server gives back any grant that raced the cancel. Until then the wait's own
//! sequence number stays in flight if its registration was never answered, so a registration
//! still travelling can only be refused, never applied after the cancel.

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use dlock_proto::v1::{self, dlock_client::DlockClient};
use dlock_proto::vocab::{ERROR_ALREADY_EXISTS, ERROR_SUCCESS, Win32Error};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::transport::Channel;

use crate::client::{Backoff, CallPolicy, is_transport_failure, leader_hint};
use crate::types::WAIT_OBJECTS_MAX;
use crate::{
    Client, CreateParams, Created, Error, ObjectKind, ObjectState, SessionState, Timeout,
    WaitOutcome,
};

/// The owner thread id that the typed handles ([`crate::Mutex`], [`crate::Event`],
/// [`crate::Semaphore`]) use for every call: all typed handles of one [`Session`] act as a
/// single owner, so a mutex locked through one typed handle is re-entered (recursively), not
/// contended, through another typed handle of the same session. Use two sessions (or the
/// low-level calls with distinct thread ids) for owners that must contend.
///
/// The value (2^63) is far from the small counters the [`crate::win32`] facade assigns to OS
/// threads and from ids applications typically pick.
pub const TYPED_OWNER_THREAD_ID: u64 = 1 << 63;

/// Shortest keepalive period, whatever the TTL.
const KEEPALIVE_INTERVAL_MIN: Duration = Duration::from_millis(10);

/// Longest `AwaitWait` call: a wait still pending after this is asked about again (the server
/// caps it at 30 s too). Short enough that a node that stopped being useful without breaking
/// the connection is left within this bound.
const AWAIT_BLOCK: Duration = Duration::from_secs(10);

/// How much longer than its `max_block_ms` one `AwaitWait` attempt may take before the client
/// treats the node as unresponsive and asks another one.
const AWAIT_SLACK: Duration = Duration::from_secs(2);

/// Most wait outcomes reported in one request's `waits_done` (the server's limit).
const WAITS_DONE_MAX: usize = 1024;

/// Longest pause between two attempts of a background `CancelWait` or `ThreadExit`.
const CANCEL_RETRY_MAX: Duration = Duration::from_secs(1);

/// Most thread exits queued for delivery per session ([`Session::report_thread_exit`]); beyond
/// it a report is refused (logged), and the session's end abandons that thread's mutexes.
pub const THREAD_EXITS_QUEUED_MAX: usize = 4096;

/// One queued thread exit: the thread, and who to tell once it is applied.
type ThreadExitJob = (u64, oneshot::Sender<()>);

/// Allocates sequence numbers, computes `ack_below`, and collects received wait outcomes.
#[derive(Debug)]
pub(crate) struct SeqTracker {
    next: u64,
    in_flight: BTreeSet<u64>,
    /// Waits whose final outcome was received and not yet reported in a `waits_done`.
    done: BTreeSet<u64>,
}

impl SeqTracker {
    pub(crate) fn new() -> SeqTracker {
        SeqTracker {
            next: 1,
            in_flight: BTreeSet::new(),
            done: BTreeSet::new(),
        }
    }

    /// Allocates a sequence number, marks it in flight and returns `(seq, ack_below)`.
    pub(crate) fn begin(&mut self) -> (u64, u64) {
        let seq = self.next;
        self.next = seq.checked_add(1).expect("sequence numbers exhausted");
        let inserted = self.in_flight.insert(seq);
        assert!(inserted, "sequence number {seq} allocated twice");
        (seq, self.ack_below())
    }

    /// The outcome of wait `seq` was received: report it in the next requests.
    pub(crate) fn wait_done(&mut self, seq: u64) {
        self.done.insert(seq);
    }

    /// Wait outcomes to report in the next request (at most [`WAITS_DONE_MAX`]).
    pub(crate) fn waits_done(&self) -> Vec<u64> {
        self.done.iter().take(WAITS_DONE_MAX).copied().collect()
    }

    /// A request carrying `reported` in its `waits_done` was applied.
    pub(crate) fn reported(&mut self, reported: &[u64]) {
        for seq in reported {
            self.done.remove(seq);
        }
    }

    /// The request `seq` got its final reply (or was given up).
    pub(crate) fn finish(&mut self, seq: u64) {
        let removed = self.in_flight.remove(&seq);
        assert!(removed, "sequence number {seq} finished but not in flight");
    }

    /// The smallest sequence number in flight, or the next one if none.
    pub(crate) fn ack_below(&self) -> u64 {
        self.in_flight.first().copied().unwrap_or(self.next)
    }
}

/// The conservative lease clock (see the module docs). Pure: time is passed in.
#[derive(Debug, Clone)]
pub(crate) struct LeaseClock {
    /// When the request behind the latest renewal was sent.
    renewed_at: Instant,
    /// The client's lease: the TTL minus the cluster's longest election timeout.
    ttl: Duration,
    /// That election timeout.
    margin: Duration,
    /// Latched: once expired, always expired.
    expired: bool,
}

/// The client's lease for a TTL: the TTL less `margin`, but never less than half the TTL (a
/// server whose minimum TTL does not exceed twice its election timeout is misconfigured).
pub(crate) fn lease_for(ttl: Duration, margin: Duration) -> Duration {
    ttl.saturating_sub(margin).max(ttl / 2)
}

impl LeaseClock {
    pub(crate) fn new(sent_at: Instant, ttl: Duration, margin: Duration) -> LeaseClock {
        LeaseClock {
            renewed_at: sent_at,
            ttl: lease_for(ttl, margin),
            margin,
            expired: false,
        }
    }

    fn jeopardy_after(&self) -> Duration {
        self.ttl * 2 / 3
    }

    /// The state at `now`, without latching.
    pub(crate) fn state_at(&self, now: Instant) -> SessionState {
        if self.expired {
            return SessionState::Expired;
        }
        let elapsed = now.saturating_duration_since(self.renewed_at);
        if elapsed >= self.ttl {
            SessionState::Expired
        } else if elapsed >= self.jeopardy_after() {
            SessionState::Jeopardy
        } else {
            SessionState::Alive
        }
    }

    /// The state at `now`, latching expiry.
    pub(crate) fn observe(&mut self, now: Instant) -> SessionState {
        let state = self.state_at(now);
        if state == SessionState::Expired {
            self.expired = true;
        }
        state
    }

    /// A reply to a request sent at `sent_at` granted `ttl` more. Too late if the lease had
    /// already run out at `now`: expiry is terminal.
    pub(crate) fn renew(&mut self, sent_at: Instant, ttl: Duration, now: Instant) -> SessionState {
        if self.observe(now) == SessionState::Expired {
            return SessionState::Expired;
        }
        if sent_at > self.renewed_at {
            self.renewed_at = sent_at;
        }
        if !ttl.is_zero() {
            self.ttl = lease_for(ttl, self.margin);
        }
        self.observe(now)
    }

    pub(crate) fn expire(&mut self) {
        self.expired = true;
    }

    /// When the state changes next (absent renewals), or `None` once expired.
    pub(crate) fn next_transition(&self, now: Instant) -> Option<Instant> {
        match self.state_at(now) {
            SessionState::Alive => Some(self.renewed_at + self.jeopardy_after()),
            SessionState::Jeopardy => Some(self.renewed_at + self.ttl),
            SessionState::Expired => None,
        }
    }
}

/// What the background tasks and the calls share. The tasks hold an `Arc` of this, never of
/// [`SessionInner`], so dropping the last [`Session`] is observable.
pub(crate) struct Shared {
    id: u64,
    ttl: Duration,
    client: Client,
    /// The runtime the session was opened in: background closes are spawned there.
    runtime: tokio::runtime::Handle,
    /// Std mutexes: held for a few instructions, never across an await.
    seqs: StdMutex<SeqTracker>,
    lease: StdMutex<LeaseClock>,
    state_tx: watch::Sender<SessionState>,
    /// Set to stop the background tasks.
    stop_tx: watch::Sender<bool>,
    /// A `CloseSession` was sent or is not needed (the server said the session is gone).
    close_done: AtomicBool,
    /// Thread exits waiting for delivery (see [`Session::report_thread_exit`]).
    exits: mpsc::Sender<ThreadExitJob>,
    /// The cluster's longest election timeout: the lease is the TTL minus this.
    margin: Duration,
}

/// Marks one sequence number in flight until dropped (also when the call is cancelled). `S`
/// is `&Shared` for a call, `Arc<Shared>` when the number must outlive it (a wait whose
/// cancellation runs in the background).
struct InFlight<S: std::ops::Deref<Target = Shared>> {
    shared: S,
    header: v1::RequestHeader,
}

impl<S: std::ops::Deref<Target = Shared>> InFlight<S> {
    fn begin(shared: S) -> InFlight<S> {
        let header = {
            let mut seqs = shared.seqs.lock().unwrap_or_else(|e| e.into_inner());
            let (seq, ack_below) = seqs.begin();
            v1::RequestHeader {
                session_id: shared.id,
                seq,
                ack_below,
                waits_done: seqs.waits_done(),
            }
        };
        InFlight { shared, header }
    }
}

impl<S: std::ops::Deref<Target = Shared>> Drop for InFlight<S> {
    fn drop(&mut self) {
        self.shared
            .seqs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .finish(self.header.seq);
    }
}

impl Shared {
    pub(crate) fn is_expired(&self) -> bool {
        self.refresh(Instant::now()) == SessionState::Expired
    }

    /// Resolves once the session is expired.
    pub(crate) async fn expired(&self) {
        let mut rx = self.state_tx.subscribe();
        let _ = rx.wait_for(|s| *s == SessionState::Expired).await;
    }

    /// Reads the lease clock at `now` and publishes the state.
    fn refresh(&self, now: Instant) -> SessionState {
        let state = self
            .lease
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(now);
        self.publish(state);
        state
    }

    fn publish(&self, state: SessionState) {
        let changed = self.state_tx.send_if_modified(|s| {
            if *s == state {
                false
            } else {
                *s = state;
                true
            }
        });
        if changed {
            match state {
                SessionState::Alive => tracing::info!(session = self.id, "session alive again"),
                SessionState::Jeopardy => {
                    tracing::warn!(session = self.id, "session in jeopardy: no lease renewal")
                }
                SessionState::Expired => tracing::warn!(session = self.id, "session expired"),
            }
        }
        if state == SessionState::Expired {
            self.stop_tx.send_replace(true);
        }
    }

    /// The session is gone (or must be treated as gone) for `reason`.
    pub(crate) fn mark_expired(&self, reason: &str) {
        tracing::debug!(session = self.id, reason, "marking session expired");
        self.lease
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expire();
        self.publish(SessionState::Expired);
    }

    /// The server says the session does not exist: no `CloseSession` needed.
    fn mark_server_expired(&self, reason: &str) {
        self.close_done.store(true, Ordering::SeqCst);
        self.mark_expired(reason);
    }

    fn renew(&self, sent_at: Instant, ttl_ms: u64) {
        let state = self.lease.lock().unwrap_or_else(|e| e.into_inner()).renew(
            sent_at,
            Duration::from_millis(ttl_ms),
            Instant::now(),
        );
        self.publish(state);
    }

    /// Sends one mutating request with a fresh header, retried per `policy`.
    async fn mutate<T, F, Fut>(&self, policy: CallPolicy<'_>, f: F) -> Result<T, Error>
    where
        F: FnMut(DlockClient<Channel>, v1::RequestHeader) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let in_flight = InFlight::begin(self);
        self.send(policy, &in_flight.header, f).await
    }

    /// Sends the request `header` names (retried per `policy`); once it is answered, the wait
    /// outcomes it reported are forgotten.
    async fn send<T, F, Fut>(
        &self,
        policy: CallPolicy<'_>,
        header: &v1::RequestHeader,
        mut f: F,
    ) -> Result<T, Error>
    where
        F: FnMut(DlockClient<Channel>, v1::RequestHeader) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let result = self.client.call(policy, |c| f(c, header.clone())).await;
        if result.is_ok() && !header.waits_done.is_empty() {
            self.seqs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .reported(&header.waits_done);
        }
        result
    }

    fn wait_done(&self, seq: u64) {
        self.seqs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .wait_done(seq);
    }

    /// `CloseSession`, at most once, ignoring "already gone".
    async fn close_rpc(&self) -> Result<(), Error> {
        if self.close_done.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let policy = self.client.unary_policy("CloseSession", None);
        let result = self
            .mutate(policy, |mut c, header| async move {
                c.close_session(v1::CloseSessionRequest {
                    header: Some(header),
                })
                .await
            })
            .await;
        match result {
            Ok(reply) if reply.error == 0 => Ok(()),
            Ok(reply) => Err(Error::Win32(Win32Error::from_code(reply.error))),
            Err(Error::SessionLost) => Ok(()),
            Err(err) => Err(err),
        }
    }
}

/// Owns the background tasks: dropping it (with the last [`Session`] clone) stops them.
struct SessionInner {
    shared: Arc<Shared>,
}

impl Drop for SessionInner {
    fn drop(&mut self) {
        // The clock task sees the stop and sends the best-effort CloseSession.
        self.shared.stop_tx.send_replace(true);
    }
}

/// A session: the identity that owns handles and mutexes, kept alive by a background task.
///
/// Cheap to clone (an `Arc` inside). Dropping the last clone stops the keepalive task and
/// closes the session in the background (best effort; otherwise the cluster expires it after
/// its TTL), which abandons the mutexes its owners still hold, like a Win32 process exit.
///
/// Handle ids are only valid in the session that opened them. Calls that involve mutex
/// ownership take an explicit `thread`: the owner is `(session, thread)`. Two different
/// `thread` values of one session contend; the same value re-acquires recursively.
///
/// Cancelling a wait future cancels the wait on the server (in the background; a grant that
/// raced it is given back). Cancelling any other call future leaves the request to the server:
/// it may or may not be applied.
///
/// ```no_run
/// # async fn demo() -> Result<(), dlock::Error> {
/// use dlock::{CreateParams, Timeout, WaitOutcome};
/// let client = dlock::Client::connect(["127.0.0.1:7700"]).await?;
/// let session = client.open_session(std::time::Duration::from_secs(10)).await?;
/// let created = session
///     .create(1, Some("orders"), CreateParams::Mutex { initial_owner: false }, 0x001F_0001)
///     .await?;
/// match session.wait(1, &[created.handle], false, Timeout::Millis(5000)).await? {
///     WaitOutcome::Signaled { fencing_token, .. } => println!("locked, token {fencing_token}"),
///     WaitOutcome::Abandoned { .. } => println!("locked; previous owner died"),
///     WaitOutcome::TimedOut => println!("busy"),
/// }
/// session.release_mutex(1, created.handle).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Session {
    inner: Arc<SessionInner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id())
            .field("ttl", &self.ttl())
            .field("state", &*self.shared().state_tx.borrow())
            .finish()
    }
}

impl Session {
    /// Starts the session's background tasks; `sent_at` is when `OpenSession` was first sent,
    /// `margin` the cluster's longest election timeout (the lease is the TTL minus it).
    pub(crate) fn start(
        client: Client,
        id: u64,
        ttl: Duration,
        margin: Duration,
        sent_at: Instant,
    ) -> Session {
        let (state_tx, _) = watch::channel(SessionState::Alive);
        let (stop_tx, _) = watch::channel(false);
        let (exits, exits_rx) = mpsc::channel(THREAD_EXITS_QUEUED_MAX);
        let shared = Arc::new(Shared {
            id,
            ttl,
            client,
            runtime: tokio::runtime::Handle::current(),
            seqs: StdMutex::new(SeqTracker::new()),
            lease: StdMutex::new(LeaseClock::new(sent_at, ttl, margin)),
            margin,
            state_tx,
            stop_tx,
            close_done: AtomicBool::new(false),
            exits,
        });
        shared.refresh(Instant::now());
        tokio::spawn(keepalive_task(shared.clone()));
        tokio::spawn(clock_task(shared.clone()));
        tokio::spawn(thread_exit_task(shared.clone(), exits_rx));
        Session {
            inner: Arc::new(SessionInner { shared }),
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The runtime the session lives in (for background work from `Drop`).
    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.inner.shared.runtime
    }

    /// The session id the server assigned (never reused).
    pub fn id(&self) -> u64 {
        self.shared().id
    }

    /// The TTL the server granted at open.
    pub fn ttl(&self) -> Duration {
        self.shared().ttl
    }

    /// The client this session was opened with.
    pub fn client(&self) -> &Client {
        &self.shared().client
    }

    /// The lease state now (see [`SessionState`]).
    ///
    /// ```no_run
    /// # fn demo(session: dlock::Session) {
    /// if session.state() != dlock::SessionState::Alive {
    ///     // Stop writing to the resource the mutex protects.
    /// }
    /// # }
    /// ```
    pub fn state(&self) -> SessionState {
        self.shared().refresh(Instant::now())
    }

    /// A receiver that sees every state change, on time (a background task watches the lease
    /// clock), so an application can react to jeopardy as it happens.
    ///
    /// ```no_run
    /// # async fn demo(session: dlock::Session) {
    /// let mut states = session.watch_state();
    /// while states.changed().await.is_ok() {
    ///     if *states.borrow() == dlock::SessionState::Expired {
    ///         break;
    ///     }
    /// }
    /// # }
    /// ```
    pub fn watch_state(&self) -> watch::Receiver<SessionState> {
        self.shared().state_tx.subscribe()
    }

    /// Ends the session on purpose: its handles close and the mutexes its owners still hold
    /// become abandoned. The session is [`SessionState::Expired`] afterwards, even if the
    /// request failed (the cluster then expires it after its TTL).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] / [`Error::Overloaded`] if the cluster could not be told.
    pub async fn close(&self) -> Result<(), Error> {
        let shared = self.shared();
        shared.mark_expired("closed by the application");
        shared.close_rpc().await
    }

    fn ensure_alive(&self) -> Result<(), Error> {
        if self.shared().is_expired() {
            Err(Error::SessionLost)
        } else {
            Ok(())
        }
    }

    fn unary_policy(&self, what: &'static str) -> CallPolicy<'_> {
        self.shared().client.unary_policy(what, Some(self.shared()))
    }

    /// Create-or-open a named object (`CreateMutexEx` / `CreateEventEx` / `CreateSemaphoreEx`).
    ///
    /// `name` `None` or `""` makes an unnamed object. `params` says which type and how to make
    /// it (a mutex with `initial_owner` is owned by `thread`; see
    /// [`CreateParams::from_flags`] for the `Create…Ex` flag bits). `access` is the access mask
    /// wanted (e.g. `MUTEX_ALL_ACCESS`).
    /// If the name exists with the same type, a handle to it is returned with
    /// [`Created::already_existed`] and the parameters are ignored.
    ///
    /// # Errors
    ///
    /// [`Error::Win32`] with the Win32 failure code (6 name held by another type, 5, 87, 3,
    /// 123, 161, 206, 1450); [`Error::SessionLost`], [`Error::Unavailable`],
    /// [`Error::Overloaded`], [`Error::InvalidArgument`].
    pub async fn create(
        &self,
        thread: u64,
        name: Option<&str>,
        params: CreateParams,
        access: u32,
    ) -> Result<Created, Error> {
        let kind = params.kind();
        let (initial_count, maximum_count) = match params {
            CreateParams::Semaphore { initial, max } => (initial, max),
            _ => (0, 0),
        };
        let (manual_reset, initial_state) = match params {
            CreateParams::Event {
                manual_reset,
                initial_state,
            } => (manual_reset, initial_state),
            _ => (false, false),
        };
        self.ensure_alive()?;
        let name = name.map(str::to_owned);
        let reply = self
            .shared()
            .mutate(self.unary_policy("Create"), |mut c, header| {
                let request = v1::CreateRequest {
                    header: Some(header),
                    thread_id: thread,
                    kind: kind.to_wire().into(),
                    name: name.clone(),
                    access,
                    initial_count,
                    maximum_count,
                    initial_owner: params.initial_owner(),
                    manual_reset,
                    initial_state,
                };
                async move { c.create(request).await }
            })
            .await?;
        match reply.error {
            ERROR_SUCCESS | ERROR_ALREADY_EXISTS if reply.handle != 0 => Ok(Created {
                handle: reply.handle,
                already_existed: reply.error == ERROR_ALREADY_EXISTS,
                fencing_token: reply.fencing_token,
            }),
            ERROR_SUCCESS | ERROR_ALREADY_EXISTS => {
                Err(Error::Protocol("Create succeeded without a handle".into()))
            }
            code => Err(Error::Win32(Win32Error::from_code(code))),
        }
    }

    /// Opens an existing named object (`OpenMutex` / `OpenEvent` / `OpenSemaphore`) and
    /// returns the new handle id.
    ///
    /// # Errors
    ///
    /// [`Error::Win32`]: 2 no such name, 6 another type, 5 access (including 0), 1314, 87,
    /// 3, 123, 161, 206, 1450; and the cluster errors.
    pub async fn open(&self, kind: ObjectKind, name: &str, access: u32) -> Result<u64, Error> {
        self.ensure_alive()?;
        let reply = self
            .shared()
            .mutate(self.unary_policy("Open"), |mut c, header| {
                let request = v1::OpenRequest {
                    header: Some(header),
                    kind: kind.to_wire().into(),
                    name: Some(name.to_owned()),
                    access,
                };
                async move { c.open(request).await }
            })
            .await?;
        match reply.error {
            0 if reply.handle != 0 => Ok(reply.handle),
            0 => Err(Error::Protocol("Open succeeded without a handle".into())),
            code => Err(Error::Win32(Win32Error::from_code(code))),
        }
    }

    /// A `HandleRequest` RPC answered by a `StatusReply`.
    async fn handle_call<F, Fut>(
        &self,
        what: &'static str,
        handle: u64,
        thread: u64,
        rpc: F,
    ) -> Result<(), Error>
    where
        F: Fn(DlockClient<Channel>, v1::HandleRequest) -> Fut,
        Fut: Future<Output = Result<tonic::Response<v1::StatusReply>, Status>>,
    {
        self.ensure_alive()?;
        let reply = self
            .shared()
            .mutate(self.unary_policy(what), |c, header| {
                rpc(
                    c,
                    v1::HandleRequest {
                        header: Some(header),
                        handle,
                        thread_id: thread,
                    },
                )
            })
            .await?;
        match reply.error {
            0 => Ok(()),
            code => Err(Error::Win32(Win32Error::from_code(code))),
        }
    }

    /// `CloseHandle`. The object disappears with its last handle and last waiter.
    ///
    /// # Errors
    ///
    /// [`Error::Win32`]`(6)` for an unknown or already closed handle; the cluster errors.
    pub async fn close_handle(&self, handle: u64) -> Result<(), Error> {
        self.handle_call("CloseHandle", handle, 0, |mut c, r| async move {
            c.close_handle(r).await
        })
        .await
    }

    /// `ReleaseMutex` on behalf of `thread`.
    ///
    /// # Errors
    ///
    /// [`Error::Win32`]: 288 if `thread` does not own the mutex, 6 for a bad or non-mutex
    /// handle; the cluster errors.
    pub async fn release_mutex(&self, thread: u64, handle: u64) -> Result<(), Error> {
        self.handle_call("ReleaseMutex", handle, thread, |mut c, r| async move {
            c.release_mutex(r).await
        })
        .await
    }

    /// `SetEvent`.
    ///
    /// # Errors
    ///
    /// [`Error::Win32`]: 5 without `EVENT_MODIFY_STATE`, 6 bad or non-event handle.
    pub async fn set_event(&self, handle: u64) -> Result<(), Error> {
        self.handle_call("SetEvent", handle, 0, |mut c, r| async move {
            c.set_event(r).await
        })
        .await
    }

    /// `ResetEvent`.
    ///
    /// # Errors
    ///
    /// [`Error::Win32`]: 5 without `EVENT_MODIFY_STATE`, 6 bad or non-event handle.
    pub async fn reset_event(&self, handle: u64) -> Result<(), Error> {
        self.handle_call("ResetEvent", handle, 0, |mut c, r| async move {
            c.reset_event(r).await
        })
        .await
    }

    /// `PulseEvent`: releases exactly the waiters registered when it is applied, then leaves
    /// the event non-signaled (reliable, unlike on Windows).
    ///
    /// # Errors
    ///
    /// [`Error::Win32`]: 5 without `EVENT_MODIFY_STATE`, 6 bad or non-event handle.
    pub async fn pulse_event(&self, handle: u64) -> Result<(), Error> {
        self.handle_call("PulseEvent", handle, 0, |mut c, r| async move {
            c.pulse_event(r).await
        })
        .await
    }

    /// `ReleaseSemaphore`: adds `count` and returns the previous count.
    ///
    /// # Errors
    ///
    /// [`Error::Win32`]: 87 if `count <= 0`, 298 if the maximum would be exceeded (the count
    /// is unchanged), 5, 6.
    pub async fn release_semaphore(&self, handle: u64, count: i32) -> Result<i32, Error> {
        self.ensure_alive()?;
        let reply = self
            .shared()
            .mutate(self.unary_policy("ReleaseSemaphore"), |mut c, header| {
                let request = v1::ReleaseSemaphoreRequest {
                    header: Some(header),
                    handle,
                    count,
                };
                async move { c.release_semaphore(request).await }
            })
            .await?;
        match reply.error {
            0 => Ok(reply.previous_count),
            code => Err(Error::Win32(Win32Error::from_code(code))),
        }
    }

    /// `WaitForMultipleObjects` (and, with one handle, `WaitForSingleObject`) on behalf of
    /// `thread`, which becomes the owner of any mutex acquired.
    ///
    /// The server enforces `timeout`. The wait is registered with one request and its outcome
    /// awaited with repeatable non-mutating calls (see the module docs), so a broken call or a
    /// leader change only means asking again; an infinite wait keeps asking for as long as the
    /// session is not expired.
    ///
    /// Cancel-safe: dropping the future (a `select!`, a `tokio::time::timeout`) cancels the wait
    /// on the server in the background, and a grant that raced the cancellation is given back,
    /// so nothing stays acquired by a waiter that is gone.
    ///
    /// # Errors
    ///
    /// [`Error::Win32`] for `WAIT_FAILED` (87 for 0 or more than 64 handles or a duplicate
    /// in a wait-all, 6, 5, 587, 1450); [`Error::SessionLost`] if the session expired during
    /// the wait; [`Error::Unavailable`] / [`Error::Overloaded`] if the cluster could not be
    /// reached until `timeout` plus the request timeout passed: the outcome is then unknown to
    /// the caller, and the wait is cancelled in the background (any grant is given back; if
    /// the cluster stays unreachable, the session expires and abandons it).
    pub async fn wait(
        &self,
        thread: u64,
        handles: &[u64],
        wait_all: bool,
        timeout: Timeout,
    ) -> Result<WaitOutcome, Error> {
        if handles.is_empty() || handles.len() > WAIT_OBJECTS_MAX {
            return Err(Error::Win32(Win32Error::INVALID_PARAMETER));
        }
        self.ensure_alive()?;
        let count = handles.len();
        let handles = handles.to_vec();
        let reply = self
            .run_wait("Wait", timeout, |mut c, header| {
                let request = v1::WaitRequest {
                    header: Some(header),
                    thread_id: thread,
                    handles: handles.clone(),
                    wait_all,
                    timeout_ms: timeout.as_wire(),
                };
                async move { c.wait(request).await }
            })
            .await?;
        crate::types::outcome_from_wire(reply.result, reply.error, reply.fencing_token, count)
    }

    /// `SignalObjectAndWait`: signals `signal` (sets an event, releases a mutex owned by
    /// `thread`, or releases a semaphore by one) and waits on `wait` in one atomic step.
    /// Cancel-safe as [`Session::wait`] (the signal, once applied, stays applied).
    ///
    /// # Errors
    ///
    /// As [`Session::wait`]; also 288 / 298 / 5 / 6 from the signal half.
    pub async fn signal_and_wait(
        &self,
        thread: u64,
        signal: u64,
        wait: u64,
        timeout: Timeout,
    ) -> Result<WaitOutcome, Error> {
        self.ensure_alive()?;
        let reply = self
            .run_wait("SignalAndWait", timeout, |mut c, header| {
                let request = v1::SignalAndWaitRequest {
                    header: Some(header),
                    thread_id: thread,
                    signal_handle: signal,
                    wait_handle: wait,
                    timeout_ms: timeout.as_wire(),
                };
                async move { c.signal_and_wait(request).await }
            })
            .await?;
        crate::types::outcome_from_wire(reply.result, reply.error, reply.fencing_token, 1)
    }

    /// Registers a wait with `register`, then awaits its outcome (see the module docs). A
    /// [`WaitGuard`] cancels the wait if this future is dropped or gives up first.
    async fn run_wait<F, Fut>(
        &self,
        what: &'static str,
        timeout: Timeout,
        register: F,
    ) -> Result<v1::WaitReply, Error>
    where
        F: FnMut(DlockClient<Channel>, v1::RequestHeader) -> Fut,
        Fut: Future<Output = Result<tonic::Response<v1::WaitReply>, Status>>,
    {
        let shared = &self.inner.shared;
        let config = shared.client.config();
        let deadline = timeout
            .as_duration()
            .map(|t| Instant::now() + t + config.request_timeout);
        let in_flight = InFlight::begin(shared.clone());
        let seq = in_flight.header.seq;
        let header = in_flight.header.clone();
        let mut guard = WaitGuard {
            shared: shared.clone(),
            seq,
            in_flight: Some(in_flight),
            armed: true,
        };
        let policy = CallPolicy {
            deadline,
            attempt_timeout: Some(config.attempt_timeout),
            session: Some(shared),
            what,
        };
        let registered = shared.send(policy, &header, register).await;
        let reply = match registered {
            Ok(reply) => reply,
            Err(err) => {
                // Unless the server certainly never queued it, the guard cancels it on return.
                guard.armed = !matches!(err, Error::SessionLost | Error::InvalidArgument(_));
                return Err(err);
            }
        };
        // The registration is answered: its number may be acknowledged from now on.
        guard.in_flight = None;
        let mut reply = reply;
        while reply.pending {
            let block = deadline
                .map_or(AWAIT_BLOCK, |d| {
                    d.saturating_duration_since(Instant::now()).min(AWAIT_BLOCK)
                })
                .max(Duration::from_millis(1));
            let request = v1::AwaitWaitRequest {
                session_id: shared.id,
                seq,
                max_block_ms: u32::try_from(block.as_millis()).unwrap_or(u32::MAX),
            };
            let policy = CallPolicy {
                deadline,
                attempt_timeout: Some(block + AWAIT_SLACK),
                session: Some(shared),
                what: "AwaitWait",
            };
            reply = match shared
                .client
                .call(policy, |mut c| async move { c.await_wait(request).await })
                .await
            {
                Ok(reply) => reply,
                Err(err) => {
                    guard.armed = !matches!(err, Error::SessionLost);
                    return Err(err);
                }
            };
            if reply.pending && deadline.is_some_and(|d| Instant::now() >= d) {
                tracing::debug!(
                    session = shared.id,
                    seq,
                    "giving up on a wait at the deadline"
                );
                return Err(Error::Unavailable);
            }
        }
        guard.armed = false;
        shared.wait_done(seq);
        Ok(reply)
    }

    /// Reports that `thread` exited: every mutex it owns becomes abandoned (Win32 thread-exit
    /// semantics). The thread id may be reused afterwards.
    ///
    /// # Errors
    ///
    /// The cluster errors.
    pub async fn thread_exit(&self, thread: u64) -> Result<(), Error> {
        self.ensure_alive()?;
        let reply = self
            .shared()
            .mutate(self.unary_policy("ThreadExit"), |mut c, header| {
                let request = v1::ThreadExitRequest {
                    header: Some(header),
                    thread_id: thread,
                };
                async move { c.thread_exit(request).await }
            })
            .await?;
        match reply.error {
            0 => Ok(()),
            code => Err(Error::Win32(Win32Error::from_code(code))),
        }
    }

    /// Queues the report that `thread` exited and returns at once: the report is sent, in
    /// order with other queued exits, and retried with backoff for as long as the session lives,
    /// so the thread's mutexes are abandoned even if the cluster is unreachable when the thread
    /// dies (the [`crate::win32`] facade reports its threads this way). The receiver completes
    /// once the cluster applied it, and is dropped unsent if the session ended first (its end
    /// abandons the thread's mutexes anyway) or [`THREAD_EXITS_QUEUED_MAX`] reports are queued.
    pub fn report_thread_exit(&self, thread: u64) -> oneshot::Receiver<()> {
        let (done, applied) = oneshot::channel();
        if let Err(err) = self.shared().exits.try_send((thread, done)) {
            tracing::error!(
                session = self.id(),
                thread,
                queued = THREAD_EXITS_QUEUED_MAX,
                error = %err,
                "cannot queue a thread exit; its mutexes stay owned until the session ends"
            );
        }
        applied
    }

    /// Reads an object's state through a handle (linearizable).
    ///
    /// # Errors
    ///
    /// [`Error::Win32`]`(6)` for a bad handle; the cluster errors.
    pub async fn query(&self, handle: u64) -> Result<ObjectState, Error> {
        self.ensure_alive()?;
        let request = v1::QueryRequest {
            session_id: self.id(),
            handle,
        };
        let reply = self
            .shared()
            .client
            .call(self.unary_policy("Query"), |mut c| async move {
                c.query(request).await
            })
            .await?;
        match reply.error {
            0 => crate::types::state_from_wire(&reply),
            code => Err(Error::Win32(Win32Error::from_code(code))),
        }
    }

    /// Checks a fencing token for a mutex name: true iff the mutex is owned now and its
    /// current grant has exactly this token. Same as [`Client::check_fencing_token`].
    ///
    /// # Errors
    ///
    /// The cluster errors.
    pub async fn check_fencing_token(&self, name: &str, token: u64) -> Result<bool, Error> {
        self.shared().client.check_fencing_token(name, token).await
    }
}

/// Cancels its wait in the background when dropped while armed: the caller stopped waiting
/// (its future was dropped, or it gave up) before it received the outcome.
struct WaitGuard {
    shared: Arc<Shared>,
    seq: u64,
    /// The wait's own sequence number while its registration is unanswered: the cancellation
    /// keeps it in flight, so a registration still travelling is refused, not applied late.
    in_flight: Option<InFlight<Arc<Shared>>>,
    armed: bool,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let shared = self.shared.clone();
        let seq = self.seq;
        let in_flight = self.in_flight.take();
        tracing::debug!(
            session = shared.id,
            seq,
            "wait abandoned by its caller; cancelling"
        );
        let runtime = shared.runtime.clone();
        runtime.spawn(cancel_wait(shared, seq, in_flight));
    }
}

/// Sends `CancelWait` for wait `seq` until it is applied, or the session ends (which ends the
/// wait and abandons what it acquired anyway).
async fn cancel_wait(shared: Arc<Shared>, seq: u64, in_flight: Option<InFlight<Arc<Shared>>>) {
    let cancelled = until_applied(&shared, "CancelWait", |mut c, header| async move {
        c.cancel_wait(v1::CancelWaitRequest {
            header: Some(header),
            wait_seq: seq,
        })
        .await
    })
    .await;
    if let Some(reply) = cancelled {
        tracing::debug!(
            session = shared.id,
            seq,
            result = reply.result,
            error = reply.error,
            "wait cancelled (any grant given back)"
        );
    }
    drop(in_flight);
}

/// Delivers queued thread exits one at a time, each retried until applied or the session ends.
async fn thread_exit_task(shared: Arc<Shared>, mut jobs: mpsc::Receiver<ThreadExitJob>) {
    let mut stop = shared.stop_tx.subscribe();
    loop {
        let (thread, done) = tokio::select! {
            () = stopped(&mut stop) => return,
            job = jobs.recv() => match job {
                Some(job) => job,
                None => return,
            },
        };
        let applied = until_applied(&shared, "ThreadExit", |mut c, header| async move {
            c.thread_exit(v1::ThreadExitRequest {
                header: Some(header),
                thread_id: thread,
            })
            .await
        })
        .await;
        if let Some(reply) = applied {
            tracing::debug!(
                session = shared.id,
                thread,
                error = reply.error,
                "thread exit applied"
            );
            let _ = done.send(());
        }
    }
}

/// Sends the request `f` builds until it is applied, as a background task does: each round is
/// one ordinary call (a fresh header, retried within the request timeout); while the cluster
/// stays unreachable or overloaded, rounds repeat with backoff (at most [`CANCEL_RETRY_MAX`]
/// apart). `None` once the session has ended or is stopped (its end settles what the request
/// was for), or on an error that retrying cannot fix (logged).
async fn until_applied<T, F, Fut>(shared: &Shared, what: &'static str, mut f: F) -> Option<T>
where
    F: FnMut(DlockClient<Channel>, v1::RequestHeader) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let mut stop = shared.stop_tx.subscribe();
    let mut backoff = Backoff::new();
    loop {
        if shared.is_expired() {
            return None;
        }
        let policy = shared.client.unary_policy(what, Some(shared));
        match shared.mutate(policy, &mut f).await {
            Ok(reply) => return Some(reply),
            Err(Error::SessionLost) => return None,
            Err(err @ (Error::Unavailable | Error::Overloaded)) => {
                tracing::warn!(session = shared.id, what, error = %err, "failed; retrying");
                let delay = backoff.next_delay().min(CANCEL_RETRY_MAX);
                tokio::select! {
                    () = stopped(&mut stop) => return None,
                    () = tokio::time::sleep(delay) => {}
                }
            }
            Err(err) => {
                // A server of another version, a malformed request: retrying cannot help.
                tracing::error!(session = shared.id, what, error = %err, "refused; giving up");
                return None;
            }
        }
    }
}

/// How a keepalive stream ended.
enum StreamEnd {
    /// Stop for good (session stopped or expired).
    Stop,
    /// The stream broke; reconnect, following the status's leader hint if any.
    Broken(Option<Status>),
    /// The node stopped answering keepalives (alive at the transport level: a stalled or
    /// deposed leader): avoid it for a while, like a node whose connection broke.
    Unresponsive,
}

/// Resolves once the stop flag is set (dropping the watch guard before returning, so that the
/// future stays `Send`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Keeps the session alive: a bidi `KeepAlive` stream with one request every third of the lease,
/// reconnected on any node when it breaks.
async fn keepalive_task(shared: Arc<Shared>) {
    let mut stop = shared.stop_tx.subscribe();
    let interval = (lease_for(shared.ttl, shared.margin) / 3).max(KEEPALIVE_INTERVAL_MIN);
    let attempt_timeout = shared.client.config().attempt_timeout;
    let request = v1::KeepAliveRequest {
        session_id: shared.id,
    };
    let mut backoff = Backoff::new();
    loop {
        if *stop.borrow() {
            return;
        }
        let (node, channel) = shared.client.pick();
        // Room for the initial request plus one per tick; a stream with an unanswered request
        // older than one interval is abandoned, so this never fills.
        let (tx, rx) = mpsc::channel(4);
        let mut sent = VecDeque::new();
        sent.push_back(Instant::now());
        let _ = tx.try_send(request);
        let mut client = DlockClient::new(channel);
        let open =
            tokio::time::timeout(attempt_timeout, client.keep_alive(ReceiverStream::new(rx)));
        let opened = tokio::select! {
            () = stopped(&mut stop) => return,
            r = open => r,
        };
        let end = match opened {
            Ok(Ok(response)) => {
                let mut stream = response.into_inner();
                let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
                ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = stopped(&mut stop) => break StreamEnd::Stop,
                        _ = ticker.tick() => {
                            if sent.front().is_some_and(|t| t.elapsed() >= interval) {
                                tracing::debug!(session = shared.id, node, "keepalive unanswered");
                                break StreamEnd::Unresponsive;
                            }
                            sent.push_back(Instant::now());
                            if tx.send(request).await.is_err() {
                                break StreamEnd::Broken(None);
                            }
                        }
                        message = stream.message() => match message {
                            Ok(Some(reply)) => {
                                let sent_at = sent.pop_front();
                                if reply.expired {
                                    shared.mark_server_expired("keepalive reply: expired");
                                    break StreamEnd::Stop;
                                }
                                if let Some(sent_at) = sent_at {
                                    shared.renew(sent_at, reply.ttl_ms);
                                }
                                backoff.reset();
                            }
                            Ok(None) => break StreamEnd::Broken(None),
                            Err(status) => break StreamEnd::Broken(Some(status)),
                        },
                    }
                }
            }
            Ok(Err(status)) => StreamEnd::Broken(Some(status)),
            Err(_) => StreamEnd::Broken(None),
        };
        let status = match end {
            StreamEnd::Stop => return,
            StreamEnd::Broken(status) => status,
            StreamEnd::Unresponsive => {
                shared.client.suspect(node);
                let delay = backoff.next_delay();
                tokio::select! {
                    () = stopped(&mut stop) => return,
                    () = tokio::time::sleep(delay) => {}
                }
                continue;
            }
        };
        if let Some(status) = &status {
            tracing::debug!(
                session = shared.id,
                node,
                code = ?status.code(),
                message = status.message(),
                "keepalive stream failed"
            );
            if status.code() == tonic::Code::NotFound {
                shared.mark_server_expired("keepalive: session not found");
                return;
            }
        }
        let followed = status
            .as_ref()
            .and_then(leader_hint)
            .is_some_and(|hint| shared.client.follow_hint(&hint));
        if !followed && status.as_ref().is_some_and(is_transport_failure) {
            shared.client.suspect(node);
        } else if !followed {
            shared.client.advance(node);
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = stopped(&mut stop) => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Publishes lease-state changes on time, and sends the best-effort `CloseSession` once the
/// session is stopped or expired.
async fn clock_task(shared: Arc<Shared>) {
    let mut stop = shared.stop_tx.subscribe();
    loop {
        let now = Instant::now();
        let state = shared.refresh(now);
        let next = shared
            .lease
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_transition(now);
        let Some(next) = next else { break };
        if state == SessionState::Expired || *stop.borrow() {
            break;
        }
        tokio::select! {
            () = stopped(&mut stop) => break,
            () = tokio::time::sleep_until(next) => {}
        }
    }
    shared.mark_expired("session stopped");
    if let Err(err) = shared.close_rpc().await {
        tracing::debug!(session = shared.id, error = %err, "best-effort CloseSession failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_start_at_one_and_ack_the_oldest_in_flight() {
        let mut t = SeqTracker::new();
        assert_eq!(t.ack_below(), 1);
        assert_eq!(t.begin(), (1, 1));
        assert_eq!(t.begin(), (2, 1), "1 is still in flight");
        t.finish(1);
        assert_eq!(t.ack_below(), 2);
        assert_eq!(t.begin(), (3, 2));
        t.finish(3);
        assert_eq!(t.ack_below(), 2, "2 still in flight");
        t.finish(2);
        assert_eq!(t.ack_below(), 4, "nothing in flight: the next seq");
        assert_eq!(t.begin(), (4, 4));
    }

    #[test]
    #[should_panic(expected = "not in flight")]
    fn finishing_twice_is_a_bug() {
        let mut t = SeqTracker::new();
        let (seq, _) = t.begin();
        t.finish(seq);
        t.finish(seq);
    }

    #[test]
    fn lease_goes_alive_jeopardy_expired_from_the_send_time() {
        let t0 = Instant::now();
        let ttl = Duration::from_millis(900);
        let mut l = LeaseClock::new(t0, ttl, Duration::ZERO);
        assert_eq!(l.state_at(t0), SessionState::Alive);
        assert_eq!(l.next_transition(t0), Some(t0 + Duration::from_millis(600)));
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(l.state_at(ms(599)), SessionState::Alive);
        assert_eq!(l.state_at(ms(600)), SessionState::Jeopardy);
        assert_eq!(l.next_transition(ms(600)), Some(ms(900)));
        assert_eq!(l.state_at(ms(899)), SessionState::Jeopardy);
        assert_eq!(l.state_at(ms(900)), SessionState::Expired);
        assert_eq!(l.next_transition(ms(900)), None);

        // A renewal for a keepalive sent at 500 ms, received at 700 ms: alive until 1100.
        assert_eq!(l.renew(ms(500), ttl, ms(700)), SessionState::Alive);
        assert_eq!(l.state_at(ms(1099)), SessionState::Alive);
        assert_eq!(l.state_at(ms(1100)), SessionState::Jeopardy);
        assert_eq!(l.state_at(ms(1400)), SessionState::Expired);

        // An older reply (sent before the current renewal) does not move the clock back.
        assert_eq!(l.renew(ms(100), ttl, ms(800)), SessionState::Alive);
        assert_eq!(l.state_at(ms(1100)), SessionState::Jeopardy);

        // The server may grant another TTL.
        assert_eq!(
            l.renew(ms(800), Duration::from_millis(3000), ms(850)),
            SessionState::Alive
        );
        assert_eq!(l.state_at(ms(2799)), SessionState::Alive);
        assert_eq!(l.state_at(ms(3800)), SessionState::Expired);
    }

    #[test]
    fn the_lease_ends_an_election_timeout_before_the_ttl() {
        // TTL 3 s, longest election timeout 1 s: the client's lease is 2 s from the send time,
        // jeopardy from 1.33 s, so it gives up before any new leader can have expired it.
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut l = LeaseClock::new(t0, Duration::from_secs(3), Duration::from_secs(1));
        assert_eq!(l.state_at(ms(1_332)), SessionState::Alive);
        assert_eq!(l.state_at(ms(1_334)), SessionState::Jeopardy);
        assert_eq!(l.state_at(ms(1_999)), SessionState::Jeopardy);
        assert_eq!(l.state_at(ms(2_000)), SessionState::Expired);
        // Renewals keep the margin; a misconfigured margin never takes more than half the TTL.
        assert_eq!(
            l.renew(ms(1_000), Duration::from_secs(3), ms(1_100)),
            SessionState::Alive
        );
        assert_eq!(l.state_at(ms(2_999)), SessionState::Jeopardy);
        assert_eq!(l.state_at(ms(3_000)), SessionState::Expired);
        assert_eq!(
            lease_for(Duration::from_secs(2), Duration::from_secs(5)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn lease_expiry_is_terminal() {
        let t0 = Instant::now();
        let ttl = Duration::from_millis(300);
        let mut l = LeaseClock::new(t0, ttl, Duration::ZERO);
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(l.observe(ms(300)), SessionState::Expired);
        // A late reply cannot revive it, even one for a request sent in time.
        assert_eq!(l.renew(ms(250), ttl, ms(310)), SessionState::Expired);
        assert_eq!(l.state_at(ms(260)), SessionState::Expired);

        let mut l = LeaseClock::new(t0, ttl, Duration::ZERO);
        l.expire();
        assert_eq!(l.state_at(t0), SessionState::Expired);
        assert_eq!(l.renew(t0, ttl, t0), SessionState::Expired);
    }

    #[test]
    fn late_reply_after_local_expiry_without_observation_stays_expired() {
        // Nobody observed the clock between 0 and 400 ms; the renewal arrives at 400 ms for a
        // request sent at 200 ms. The lease ran out at 300 ms, so the session stays expired.
        let t0 = Instant::now();
        let ttl = Duration::from_millis(300);
        let mut l = LeaseClock::new(t0, ttl, Duration::ZERO);
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(l.renew(ms(200), ttl, ms(400)), SessionState::Expired);
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_cluster_drives_the_session_to_jeopardy_then_expired() {
        let mut config = crate::ClientConfig::new(["127.0.0.1:1"]);
        config.request_timeout = Duration::from_millis(200);
        let client = Client::connect_with_config(config).await.unwrap();
        // A session as if OpenSession had just been answered; no node will answer keepalives.
        let session = Session::start(
            client,
            7,
            Duration::from_millis(900),
            Duration::ZERO,
            Instant::now(),
        );
        let mut states = session.watch_state();
        assert_eq!(*states.borrow_and_update(), SessionState::Alive);
        let t0 = Instant::now();
        states.changed().await.unwrap();
        assert_eq!(*states.borrow_and_update(), SessionState::Jeopardy);
        assert!(t0.elapsed() >= Duration::from_millis(600));
        states.changed().await.unwrap();
        assert_eq!(*states.borrow_and_update(), SessionState::Expired);
        assert!(t0.elapsed() >= Duration::from_millis(900));
        assert_eq!(session.state(), SessionState::Expired);
        // Calls on an expired session fail fast.
        assert_eq!(session.set_event(1).await.unwrap_err(), Error::SessionLost);
        assert_eq!(
            session
                .wait(1, &[1], false, Timeout::Infinite)
                .await
                .unwrap_err(),
            Error::SessionLost
        );
    }

    #[tokio::test]
    async fn waits_validate_the_handle_count_locally() {
        let client = Client::connect(["127.0.0.1:1"]).await.unwrap();
        let session = Session::start(
            client,
            7,
            Duration::from_secs(60),
            Duration::ZERO,
            Instant::now(),
        );
        assert_eq!(
            session.wait(1, &[], false, Timeout::Millis(0)).await,
            Err(Error::Win32(Win32Error::INVALID_PARAMETER))
        );
        assert_eq!(
            session.wait(1, &[1; 65], false, Timeout::Millis(0)).await,
            Err(Error::Win32(Win32Error::INVALID_PARAMETER))
        );
    }
}

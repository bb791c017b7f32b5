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

use crate::client::{Backoff, CallPolicy, is_transport_failure, leader_hint};
use crate::types::WAIT_OBJECTS_MAX;
use crate::{
    Client, CreateParams, Created, Error, ObjectKind, ObjectState, SessionState, Timeout,
    WaitOutcome,
};

/// The reason [`Session::close`] gives: an expiry the application asked for, not worth a
/// warning.
pub(crate) const CLOSED_BY_APPLICATION: &str = "closed by the application";
/// The reason the lease task gives when it stops because the application dropped the session.
pub(crate) const DROPPED_BY_APPLICATION: &str = "dropped by the application";

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

mod lease;
mod seq;
mod tasks;
mod wait;

use lease::clock_task;
pub(crate) use lease::{LeaseClock, lease_for};
pub(crate) use seq::SeqTracker;
use tasks::{keepalive_task, stopped, thread_exit_task, until_applied};

/// What the background tasks and the calls share. The tasks hold an `Arc` of this, never of
/// [`SessionInner`], so dropping the last [`Session`] is observable.
pub(crate) struct SessionCore {
    id: u64,
    /// The session's secret (`OpenSessionReply.session_secret`), sent with every request that
    /// names the session. Never logged.
    secret: Vec<u8>,
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
/// is `&SessionCore` for a call, `Arc<SessionCore>` when the number must outlive it (a wait whose
/// cancellation runs in the background).
struct InFlight<S: std::ops::Deref<Target = SessionCore>> {
    shared: S,
    header: v1::RequestHeader,
}

impl<S: std::ops::Deref<Target = SessionCore>> InFlight<S> {
    fn begin(shared: S) -> InFlight<S> {
        let header = {
            let mut seqs = shared.seqs.lock().unwrap_or_else(|e| e.into_inner());
            let (seq, ack_below) = seqs.begin();
            v1::RequestHeader {
                session_id: shared.id,
                session_secret: shared.secret.clone(),
                seq,
                ack_below,
                waits_done: seqs.waits_done(),
            }
        };
        InFlight { shared, header }
    }
}

impl<S: std::ops::Deref<Target = SessionCore>> Drop for InFlight<S> {
    fn drop(&mut self) {
        self.shared
            .seqs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .finish(self.header.seq);
    }
}

impl SessionCore {
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
        self.publish_because(state, "the lease ran out without a renewal");
    }

    /// Publishes `state`; `why` says, in the log, why a session expired.
    fn publish_because(&self, state: SessionState, why: &str) {
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
                SessionState::Expired
                    if why == CLOSED_BY_APPLICATION || why == DROPPED_BY_APPLICATION =>
                {
                    tracing::debug!(session = self.id, "session closed")
                }
                SessionState::Expired => {
                    tracing::warn!(session = self.id, reason = why, "session expired")
                }
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
        self.publish_because(SessionState::Expired, reason);
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
        F: FnMut(DlockClient<crate::client::Rpc>, v1::RequestHeader) -> Fut,
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
        F: FnMut(DlockClient<crate::client::Rpc>, v1::RequestHeader) -> Fut,
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
    shared: Arc<SessionCore>,
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
        secret: Vec<u8>,
        ttl: Duration,
        margin: Duration,
        sent_at: Instant,
    ) -> Session {
        let (state_tx, _) = watch::channel(SessionState::Alive);
        let (stop_tx, _) = watch::channel(false);
        let (exits, exits_rx) = mpsc::channel(THREAD_EXITS_QUEUED_MAX);
        let shared = Arc::new(SessionCore {
            id,
            secret,
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

    pub(crate) fn shared(&self) -> &SessionCore {
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

    /// The session's secret (`OpenSessionReply.session_secret`), for tools that speak the
    /// gRPC API directly in this session's name. Whoever holds it can act as the session: do
    /// not log it.
    pub fn secret(&self) -> &[u8] {
        &self.shared().secret
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
        shared.mark_expired(CLOSED_BY_APPLICATION);
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
        F: Fn(DlockClient<crate::client::Rpc>, v1::HandleRequest) -> Fut,
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
            session_secret: self.shared().secret.clone(),
            handle,
        };
        let reply = self
            .shared()
            .client
            .call(self.unary_policy("Query"), |mut c| {
                let request = request.clone();
                async move { c.query(request).await }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn unreachable_cluster_drives_the_session_to_jeopardy_then_expired() {
        let mut config = crate::ClientConfig::new(["127.0.0.1:1"]);
        config.request_timeout = Duration::from_millis(200);
        let client = Client::connect_with_config(config).await.unwrap();
        // A session as if OpenSession had just been answered; no node will answer keepalives.
        let session = Session::start(
            client,
            7,
            vec![0; 16],
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
            vec![0; 16],
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

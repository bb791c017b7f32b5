//! Waits on the cluster: registering (`Wait`, `SignalAndWait`), awaiting the outcome
//! (`AwaitWait`), and cancelling a wait the caller stopped waiting for (see the module docs of
//! `session`, "Waits").

use super::*;

impl Session {
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
        F: FnMut(DlockClient<crate::client::Rpc>, v1::RequestHeader) -> Fut,
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
                session_secret: shared.secret.clone(),
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
                .call(policy, |mut c| {
                    let request = request.clone();
                    async move { c.await_wait(request).await }
                })
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
}

/// Cancels its wait in the background when dropped while armed: the caller stopped waiting
/// (its future was dropped, or it gave up) before it received the outcome.
pub(super) struct WaitGuard {
    shared: Arc<SessionCore>,
    seq: u64,
    /// The wait's own sequence number while its registration is unanswered: the cancellation
    /// keeps it in flight, so a registration still travelling is refused, not applied late.
    in_flight: Option<InFlight<Arc<SessionCore>>>,
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
pub(super) async fn cancel_wait(
    shared: Arc<SessionCore>,
    seq: u64,
    in_flight: Option<InFlight<Arc<SessionCore>>>,
) {
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

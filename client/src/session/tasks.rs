//! The session's background tasks: the keepalive stream and the delivery of thread exits.

use super::*;

/// Delivers queued thread exits one at a time, each retried until applied or the session ends.
pub(super) async fn thread_exit_task(
    shared: Arc<SessionCore>,
    mut jobs: mpsc::Receiver<ThreadExitJob>,
) {
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
pub(super) async fn until_applied<T, F, Fut>(
    shared: &SessionCore,
    what: &'static str,
    mut f: F,
) -> Option<T>
where
    F: FnMut(DlockClient<crate::client::Rpc>, v1::RequestHeader) -> Fut,
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
pub(super) enum StreamEnd {
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
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Keeps the session alive: a bidi `KeepAlive` stream with one request every third of the lease,
/// reconnected on any node when it breaks.
pub(super) async fn keepalive_task(shared: Arc<SessionCore>) {
    let mut stop = shared.stop_tx.subscribe();
    let interval = (lease_for(shared.ttl, shared.margin) / 3).max(KEEPALIVE_INTERVAL_MIN);
    let attempt_timeout = shared.client.config().attempt_timeout;
    let request = v1::KeepAliveRequest {
        session_id: shared.id,
        session_secret: shared.secret.clone(),
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
        let _ = tx.try_send(request.clone());
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
                            if tx.send(request.clone()).await.is_err() {
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
                                shared.client.answered(node);
                                backoff.reset();
                            }
                            Ok(None) => break StreamEnd::Broken(None),
                            Err(status) => break StreamEnd::Broken(Some(status)),
                        },
                    }
                }
            }
            Ok(Err(status)) => StreamEnd::Broken(Some(status)),
            Err(_) if shared.client.never_answered_hint(node) => {
                // A hinted address that swallows connections: avoid it like one that refuses
                // them, or an idle session would keep following the hint and never renew.
                StreamEnd::Unresponsive
            }
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
        if let Some(status) = &status
            && !is_transport_failure(status)
        {
            // An error status its server sent: the node is reachable.
            shared.client.answered(node);
        }
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
            if status.code() == tonic::Code::PermissionDenied {
                // The server does not take this session's secret (a server of another version,
                // or not the cluster that opened it): no keepalive will ever renew it.
                tracing::warn!(
                    session = shared.id,
                    node,
                    message = status.message(),
                    "the server refused this session's keepalives; the session is lost"
                );
                shared.mark_server_expired("keepalive: permission denied");
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

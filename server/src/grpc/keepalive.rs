//! Keepalives: renewing a session's lease at the leader ([`keep_alive`]) once a
//! [`LeaseConfirmer`] round has proved, after the keepalive arrived, that this node still leads.
//! The lease machinery itself lives in [`crate::lease`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::lease::{LeaseConfirmer, Touch};
use crate::namespace::SessionSecret;
use crate::replica::{Replica, lock};

/// How long a keepalive that reaches a new leader waits for its timers to be rebuilt for the
/// term (one ReadIndex round, normally milliseconds) before it is refused.
const TIMERS_READY_WAIT: Duration = Duration::from_secs(2);

/// Renews a session's lease on a keepalive. `None` means the session is lost: unknown to the
/// namespace, or its lease already ran out and its expiry is under way. A keepalive without
/// the session's `secret` renews nothing and fails with [`Error::SecretMismatch`].
///
/// A renewal is only answered once this node has confirmed, after the keepalive arrived, that
/// it still leads ([`LeaseConfirmer`]): a deposed leader, or one whose raft thread is stalled,
/// must not tell a client its lease was renewed while the real leader may expire it and hand
/// its mutexes on.
///
/// "Unknown" is only believed after a ReadIndex: right after a restart or a leader change the
/// local namespace may not have applied every committed entry yet (the log is replayed in the
/// background), and telling a live client its session expired would make it drop its locks.
pub(super) async fn keep_alive(
    replica: &Replica,
    node: &dlock_cluster::Node,
    confirmer: &Arc<LeaseConfirmer>,
    session: u64,
    secret: &SessionSecret,
) -> Result<Option<std::time::Duration>, Error> {
    // The secret is checked against the namespace before any renewal; a session the
    // namespace does not know yet (it lags the log) skips the fast path and is checked below,
    // after a ReadIndex.
    let known = lock(&replica.ns).session_secret(session);
    if known.is_some_and(|k| !k.matches(secret)) {
        tracing::warn!(
            session,
            "a keepalive without its session's secret was refused"
        );
        return Err(Error::SecretMismatch(session));
    }
    let arrived = *node.leadership().borrow();
    // Never hint at this node itself: a node that believes it leads but cannot confirm it
    // (a stalled raft thread) must send the client elsewhere, not back to itself.
    let not_leader = || dlock_cluster::Error::NotLeader {
        leader_hint: node
            .leadership()
            .borrow()
            .leader_id
            .filter(|id| *id != node.id()),
    };
    if !arrived.is_leader {
        return Err(not_leader().into());
    }
    // The timers must be this term's: a new leader's rebuild replaces every lease, and a
    // deposed leader's are stale (an `Expiring` mark from an old reign must not be reported).
    if !replica.timers_ready(arrived.term, TIMERS_READY_WAIT).await {
        return Err(not_leader().into());
    }
    let touched = if known.is_some() {
        lock(&replica.timers).touch(session, Instant::now())
    } else {
        Touch::Unknown
    };
    // Whatever the answer, it is only given with proof that this node still leads: one retry,
    // so that a single failed round does not end every stream of a healthy leader.
    let confirmed = confirmer.confirm(arrived.term).await
        || (node.leadership().borrow().term == arrived.term
            && confirmer.confirm(arrived.term).await);
    if !confirmed {
        return Err(not_leader().into());
    }
    match touched {
        Touch::Renewed(ttl) => return Ok(Some(ttl)),
        Touch::Expiring => return Ok(None),
        Touch::Unknown => {}
    }
    // Slow path: the timers may not know a session the namespace has (a snapshot installed
    // after the rebuild). The namespace may lag the log: read it after a ReadIndex. Lock
    // order: ns, then timers.
    node.read_index().await?;
    if node.leadership().borrow().term != arrived.term {
        return Err(not_leader().into());
    }
    let now = Instant::now();
    let ns = lock(&replica.ns);
    let Some(info) = ns.session(session) else {
        return Ok(None);
    };
    if ns
        .session_secret(session)
        .is_none_or(|k| !k.matches(secret))
    {
        tracing::warn!(
            session,
            "a keepalive without its session's secret was refused"
        );
        return Err(Error::SecretMismatch(session));
    }
    let mut timers = lock(&replica.timers);
    timers.adopt(session, info.ttl_ms, now);
    Ok(match timers.touch(session, now) {
        Touch::Renewed(ttl) => Some(ttl),
        Touch::Expiring | Touch::Unknown => None,
    })
}

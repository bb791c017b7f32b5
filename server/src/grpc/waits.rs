//! `Wait`, `SignalAndWait` and `CancelWait` (register, or cancel, and answer at once) and
//! `AwaitWait` (block on the wait registry for a registered wait's outcome).

use std::time::Duration;

use dlock_proto::v1 as pb;
use tonic::Status;

use super::DlockService;
use super::convert::{pending_reply, unexpected, wait_reply};
use super::refused_before_log;
use super::status::to_status;
use crate::error::Error;
use crate::namespace::{Reply, Request, SessionSecret, WaitOutcome, WaitStatus};
use crate::replica::lock;

/// Longest `AwaitWait` block: a call still pending after this answers `pending` and the client
/// asks again, so no call outlives a node's usefulness by long.
pub const AWAIT_BLOCK_MAX: Duration = Duration::from_secs(30);

impl DlockService {
    /// Registers a wait (or a signal-and-wait), or cancels one: its outcome if it ended at
    /// once, else `pending` (never for a cancel). Never blocks for the outcome: that is `AwaitWait`'s job, so that a blocked wait
    /// never holds back the client's acknowledgements.
    pub(super) async fn wait(
        &self,
        header: Option<pb::RequestHeader>,
        request: Request,
    ) -> Result<pb::WaitReply, Status> {
        if let Some(code) = refused_before_log(header.as_ref(), &request) {
            return Ok(wait_reply(WaitOutcome::Failed(code)));
        }
        match self.client(header, request).await? {
            Reply::Wait(outcome) => Ok(wait_reply(outcome)),
            Reply::WaitPending => Ok(pending_reply()),
            Reply::Error(code) => Ok(wait_reply(WaitOutcome::Failed(code))),
            other => Err(unexpected(other)),
        }
    }

    /// Where wait `(session, seq)` stands on this node. "Unknown" (and "no such session") are
    /// only believed after a ReadIndex: a new leader may not have applied the registration yet.
    async fn wait_status(&self, session: u64, seq: u64) -> Result<WaitStatus, Status> {
        let status = lock(&self.replica.ns).wait_status(session, seq);
        if matches!(status, WaitStatus::Pending | WaitStatus::Resolved(_)) {
            return Ok(status);
        }
        self.node
            .read_index()
            .await
            .map_err(|e| self.cluster_error(e))?;
        Ok(lock(&self.replica.ns).wait_status(session, seq))
    }

    /// `AwaitWait`: the outcome of a registered wait, blocking up to `max_block`.
    pub(super) async fn await_outcome(
        &self,
        session: u64,
        secret: &SessionSecret,
        seq: u64,
        max_block: Duration,
    ) -> Result<pb::WaitReply, Status> {
        let leadership = *self.node.leadership().borrow();
        if !leadership.is_leader {
            return Err(self.cluster_error(dlock_cluster::Error::NotLeader {
                leader_hint: leadership.leader_id,
            }));
        }
        // Subscribe before looking, so an outcome applied in between cannot be missed.
        let mut subscription = self.replica.subscribe(session, seq).ok_or_else(|| {
            to_status(Error::Overloaded(
                "too many blocked waits on this node".into(),
            ))
        })?;
        let status = self.wait_status(session, seq).await?;
        // Only the session's opener may read its outcomes (the namespace is up to date here).
        match lock(&self.replica.ns).session_secret(session) {
            Some(known) if known.matches(secret) => {}
            Some(_) => {
                tracing::warn!(
                    session,
                    "an AwaitWait without its session's secret was refused"
                );
                return Err(to_status(Error::SecretMismatch(session)));
            }
            None => return Err(to_status(Error::SessionUnknown(session))),
        }
        match status {
            WaitStatus::Resolved(outcome) => return Ok(wait_reply(outcome)),
            WaitStatus::Pending => {}
            WaitStatus::SessionUnknown => return Err(to_status(Error::SessionUnknown(session))),
            WaitStatus::Unknown => {
                return Err(Status::failed_precondition(format!(
                    "session {session} has no wait with sequence number {seq} (never \
                     registered, or its outcome was already acknowledged)"
                )));
            }
        }
        let mut stopped = self.stopped.clone();
        let mut leadership = self.node.leadership();
        tokio::select! {
            outcome = subscription.outcome() => match outcome {
                Some(outcome) => Ok(wait_reply(outcome)),
                None => Err(to_status(Error::Retry)),
            },
            () = tokio::time::sleep(max_block) => Ok(pending_reply()),
            // The wait stays registered in the replicated state; the client asks again on
            // another node (or this one after a restart).
            _ = stopped.wait_for(|s| *s) => Err(to_status(Error::Stopped)),
            // A node that lost leadership may be cut off from the majority and never apply the
            // outcome: send the client to the leader.
            lost = leadership.wait_for(|l| !l.is_leader) => {
                let leader_hint = lost.ok().and_then(|l| l.leader_id);
                Err(self.cluster_error(dlock_cluster::Error::NotLeader { leader_hint }))
            }
        }
    }
}

//! Conversions between the wire messages of `dlock.v1.Dlock` and the namespace's types: object
//! kinds, wait outcomes (and the "pending" reply), status replies and object states.

use dlock_proto::v1 as pb;
use dlock_proto::vocab::{
    ERROR_IO_PENDING, WAIT_ABANDONED_0, WAIT_FAILED, WAIT_OBJECT_0, WAIT_TIMEOUT, Win32Error,
};
use tonic::{Response, Status};

use super::status::to_status;
use crate::error::Error;
use crate::namespace::{ObjectKind, ObjectState, Reply, WaitOutcome};

/// A recorded reply of another kind than the request expects: the client reused a sequence
/// number for a different request.
pub(super) fn unexpected(reply: Reply) -> Status {
    to_status(Error::InvalidArgument(format!(
        "sequence number already used by another request (recorded reply {reply:?})"
    )))
}

pub(super) fn wait_reply(outcome: WaitOutcome) -> pb::WaitReply {
    match outcome {
        WaitOutcome::Signaled {
            index,
            fencing_token,
        } => pb::WaitReply {
            result: WAIT_OBJECT_0 + index,
            error: 0,
            fencing_token,
            pending: false,
        },
        WaitOutcome::Abandoned {
            index,
            fencing_token,
        } => pb::WaitReply {
            result: WAIT_ABANDONED_0 + index,
            error: 0,
            fencing_token,
            pending: false,
        },
        WaitOutcome::TimedOut => pb::WaitReply {
            result: WAIT_TIMEOUT,
            error: 0,
            fencing_token: 0,
            pending: false,
        },
        WaitOutcome::Failed(code) => pb::WaitReply {
            result: WAIT_FAILED,
            error: code.code(),
            fencing_token: 0,
            pending: false,
        },
    }
}

/// "Registered, no outcome yet". Fail-safe for a client that does not know `pending`: it reads
/// `WAIT_FAILED` with `ERROR_IO_PENDING` (997), never a grant.
pub(super) fn pending_reply() -> pb::WaitReply {
    pb::WaitReply {
        result: WAIT_FAILED,
        error: ERROR_IO_PENDING,
        fencing_token: 0,
        pending: true,
    }
}

pub(super) fn status_reply(reply: Reply) -> Result<Response<pb::StatusReply>, Status> {
    match reply {
        Reply::Done => Ok(Response::new(pb::StatusReply { error: 0 })),
        Reply::Error(code) => Ok(Response::new(pb::StatusReply { error: code.code() })),
        other => Err(unexpected(other)),
    }
}

pub(super) fn kind_from_wire(kind: i32) -> Result<ObjectKind, Status> {
    match pb::ObjectKind::try_from(kind) {
        Ok(pb::ObjectKind::Mutex) => Ok(ObjectKind::Mutex),
        Ok(pb::ObjectKind::Event) => Ok(ObjectKind::Event),
        Ok(pb::ObjectKind::Semaphore) => Ok(ObjectKind::Semaphore),
        _ => Err(Status::invalid_argument(format!(
            "unknown object kind {kind}"
        ))),
    }
}

pub(super) fn kind_to_wire(kind: ObjectKind) -> pb::ObjectKind {
    match kind {
        ObjectKind::Mutex => pb::ObjectKind::Mutex,
        ObjectKind::Event => pb::ObjectKind::Event,
        ObjectKind::Semaphore => pb::ObjectKind::Semaphore,
    }
}

/// The `Query` reply for an object's state (or the Win32 error that refused the query).
pub(crate) fn query_reply(state: Result<ObjectState, Win32Error>) -> pb::QueryReply {
    let mut reply = pb::QueryReply::default();
    match state {
        Err(code) => reply.error = code.code(),
        Ok(ObjectState::Mutex {
            owner,
            recursion,
            abandoned,
            fencing_token,
        }) => {
            reply.kind = kind_to_wire(ObjectKind::Mutex) as i32;
            if let Some((session, thread)) = owner {
                reply.owner_session_id = session;
                reply.owner_thread_id = thread;
            }
            reply.recursion = recursion;
            reply.abandoned = abandoned;
            reply.fencing_token = fencing_token;
        }
        Ok(ObjectState::Event {
            manual_reset,
            signaled,
        }) => {
            reply.kind = kind_to_wire(ObjectKind::Event) as i32;
            reply.manual_reset = manual_reset;
            reply.signaled = signaled;
        }
        Ok(ObjectState::Semaphore { count, max }) => {
            reply.kind = kind_to_wire(ObjectKind::Semaphore) as i32;
            reply.count = count;
            reply.maximum = max;
        }
    }
    reply
}

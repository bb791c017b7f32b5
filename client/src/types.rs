//! Plain value types of the async API, and their decoding from the wire.
//!
//! The values shared with the facade, the server and the `Local\` engine ([`ObjectKind`],
//! [`Timeout`], [`WaitOutcome`], [`ObjectState`]) are defined once in `dlock_proto::vocab`;
//! this module re-exports them and adds what only the client has.

use dlock_proto::v1;
pub use dlock_proto::vocab::{CreateParams, ObjectKind, ObjectState, Timeout, WaitOutcome};
use dlock_proto::vocab::{
    MAXIMUM_WAIT_OBJECTS, WAIT_ABANDONED_0, WAIT_FAILED, WAIT_TIMEOUT, Win32Error,
};

use crate::Error;

/// `MAXIMUM_WAIT_OBJECTS`: the most handles one wait may name.
pub(crate) const WAIT_OBJECTS_MAX: usize = MAXIMUM_WAIT_OBJECTS as usize;

/// Decodes a wire object kind; `UNSPECIFIED` and unknown values are a protocol violation.
pub(crate) fn kind_from_wire(value: i32) -> Result<ObjectKind, Error> {
    ObjectKind::from_wire(value)
        .ok_or_else(|| Error::Protocol(format!("unknown object kind {value}")))
}

/// Decodes a `WaitReply` for a wait on `count` handles.
///
/// # Errors
///
/// `WAIT_FAILED` gives [`Error::Win32`] with the reply's error; a result outside the
/// documented ranges gives [`Error::Protocol`].
pub(crate) fn outcome_from_wire(
    result: u32,
    error: u32,
    fencing_token: u64,
    count: usize,
) -> Result<WaitOutcome, Error> {
    let count = count as u64;
    let result64 = u64::from(result);
    if result64 < count {
        return Ok(WaitOutcome::Signaled {
            index: result as usize,
            fencing_token,
        });
    }
    if result >= WAIT_ABANDONED_0 && result64 < u64::from(WAIT_ABANDONED_0) + count {
        return Ok(WaitOutcome::Abandoned {
            index: (result - WAIT_ABANDONED_0) as usize,
            fencing_token,
        });
    }
    match result {
        WAIT_TIMEOUT => Ok(WaitOutcome::TimedOut),
        WAIT_FAILED if error != 0 => Err(Error::Win32(Win32Error::from_code(error))),
        WAIT_FAILED => Err(Error::Protocol("WAIT_FAILED without an error code".into())),
        other => Err(Error::Protocol(format!(
            "wait result {other:#x} out of range for {count} handles"
        ))),
    }
}

/// The result of a successful create (a new object, or a handle to an existing one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Created {
    /// The server handle id, valid in the session that created it.
    pub handle: u64,
    /// True if an object of the same type already had this name (Win32 last error 183); the
    /// creation parameters were then ignored and a mutex was *not* acquired.
    pub already_existed: bool,
    /// If the call created a mutex owned by the caller: the fencing token of that grant, else 0.
    pub fencing_token: u64,
}

/// Decodes a `QueryReply` whose `error` is 0.
pub(crate) fn state_from_wire(r: &v1::QueryReply) -> Result<ObjectState, Error> {
    Ok(ObjectState {
        kind: kind_from_wire(r.kind)?,
        owner_session_id: r.owner_session_id,
        owner_thread_id: r.owner_thread_id,
        recursion: r.recursion,
        abandoned: r.abandoned,
        fencing_token: r.fencing_token,
        manual_reset: r.manual_reset,
        signaled: r.signaled,
        count: r.count,
        maximum: r.maximum,
    })
}

/// What the client knows about its session's lease (see [`crate::Session::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionState {
    /// A keepalive was answered less than 2/3 of the TTL ago (measured from when that keepalive
    /// was *sent*): the session certainly exists.
    Alive,
    /// No renewal for more than 2/3 of the TTL: the cluster may expire the session soon, and with
    /// it the mutexes its owners hold. Stop acting on protected resources until `Alive` again.
    Jeopardy,
    /// The session is gone, or may be: a reply said so, it was closed, or a full TTL passed
    /// without renewal. Terminal: open a new session.
    Expired,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn wait_results_decode_per_win32() {
        assert_eq!(
            outcome_from_wire(0, 0, 7, 1),
            Ok(WaitOutcome::Signaled {
                index: 0,
                fencing_token: 7
            })
        );
        assert_eq!(
            outcome_from_wire(63, 0, 0, 64),
            Ok(WaitOutcome::Signaled {
                index: 63,
                fencing_token: 0
            })
        );
        assert_eq!(
            outcome_from_wire(0x81, 0, 9, 2),
            Ok(WaitOutcome::Abandoned {
                index: 1,
                fencing_token: 9
            })
        );
        assert_eq!(outcome_from_wire(0x102, 0, 0, 3), Ok(WaitOutcome::TimedOut));
        assert_eq!(
            outcome_from_wire(u32::MAX, 87, 0, 3),
            Err(Error::Win32(Win32Error::INVALID_PARAMETER))
        );
        // Out of range for the number of handles.
        assert!(matches!(
            outcome_from_wire(2, 0, 0, 2),
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            outcome_from_wire(0x82, 0, 0, 2),
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            outcome_from_wire(u32::MAX, 0, 0, 2),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn wait_outcome_round_trips_to_win32() {
        for n in [1usize, 5, 64] {
            for i in 0..n {
                let s = WaitOutcome::Signaled {
                    index: i,
                    fencing_token: 0,
                };
                assert_eq!(outcome_from_wire(s.to_win32(), 0, 0, n), Ok(s));
                let a = WaitOutcome::Abandoned {
                    index: i,
                    fencing_token: 3,
                };
                assert_eq!(outcome_from_wire(a.to_win32(), 0, 3, n), Ok(a));
            }
        }
    }

    #[test]
    fn timeouts_map_infinite() {
        assert_eq!(Timeout::from_millis(5), Timeout::Millis(5));
        assert_eq!(Timeout::Millis(u32::MAX).as_duration(), None);
        assert_eq!(Timeout::Infinite.as_wire(), u32::MAX);
        assert_eq!(
            Timeout::from(Duration::from_secs(u64::MAX)),
            Timeout::Millis(u32::MAX - 1)
        );
    }

    #[test]
    fn object_kinds_round_trip() {
        for k in [ObjectKind::Mutex, ObjectKind::Event, ObjectKind::Semaphore] {
            assert_eq!(kind_from_wire(k.to_wire() as i32), Ok(k));
        }
        assert!(kind_from_wire(0).is_err());
        assert!(kind_from_wire(99).is_err());
    }
}

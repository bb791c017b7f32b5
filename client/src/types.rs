//! Plain value types shared by the async API and the facade.

use std::time::Duration;

use dlock_proto::v1;

use crate::Error;

/// `WAIT_ABANDONED_0` on the wire.
const WIRE_WAIT_ABANDONED_0: u32 = 0x80;
/// `WAIT_TIMEOUT` on the wire.
const WIRE_WAIT_TIMEOUT: u32 = 0x102;
/// `WAIT_FAILED` on the wire.
const WIRE_WAIT_FAILED: u32 = 0xFFFF_FFFF;
/// `MAXIMUM_WAIT_OBJECTS`: the most handles one wait may name.
pub(crate) const WAIT_OBJECTS_MAX: usize = 64;

/// The three object types of the namespace.
///
/// ```
/// assert_eq!(dlock::ObjectKind::Mutex.to_string(), "mutex");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// A mutex: owned by one (session, thread) at a time, recursive, abandoned when its owner
    /// goes away.
    Mutex,
    /// An event: manual-reset or auto-reset.
    Event,
    /// A counting semaphore with a maximum.
    Semaphore,
}

impl ObjectKind {
    /// The wire value.
    pub(crate) fn to_wire(self) -> i32 {
        match self {
            ObjectKind::Mutex => v1::ObjectKind::Mutex as i32,
            ObjectKind::Event => v1::ObjectKind::Event as i32,
            ObjectKind::Semaphore => v1::ObjectKind::Semaphore as i32,
        }
    }

    /// Decodes a wire value; `UNSPECIFIED` and unknown values are a protocol violation.
    pub(crate) fn from_wire(value: i32) -> Result<Self, Error> {
        match v1::ObjectKind::try_from(value) {
            Ok(v1::ObjectKind::Mutex) => Ok(ObjectKind::Mutex),
            Ok(v1::ObjectKind::Event) => Ok(ObjectKind::Event),
            Ok(v1::ObjectKind::Semaphore) => Ok(ObjectKind::Semaphore),
            _ => Err(Error::Protocol(format!("unknown object kind {value}"))),
        }
    }
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObjectKind::Mutex => "mutex",
            ObjectKind::Event => "event",
            ObjectKind::Semaphore => "semaphore",
        })
    }
}

/// How long a wait may block. The server enforces it (from the moment the leader applied the
/// wait), so it holds across node failover.
///
/// ```
/// use std::time::Duration;
/// use dlock::Timeout;
/// assert_eq!(Timeout::from_millis(u32::MAX), Timeout::Infinite);
/// assert_eq!(Timeout::from(Duration::from_millis(1500)), Timeout::Millis(1500));
/// assert_eq!(Timeout::Millis(0).as_wire(), 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timeout {
    /// At most this many milliseconds; 0 polls and never queues. `Millis(u32::MAX)` means
    /// infinite, as on the wire (prefer [`Timeout::Infinite`]).
    Millis(u32),
    /// Never times out (`INFINITE`, `u32::MAX` on the wire).
    Infinite,
}

impl Timeout {
    /// A Win32-style DWORD timeout: `u32::MAX` (INFINITE) becomes [`Timeout::Infinite`].
    pub fn from_millis(ms: u32) -> Timeout {
        if ms == u32::MAX {
            Timeout::Infinite
        } else {
            Timeout::Millis(ms)
        }
    }

    /// The `timeout_ms` wire value.
    pub fn as_wire(self) -> u32 {
        match self {
            Timeout::Millis(ms) => ms,
            Timeout::Infinite => u32::MAX,
        }
    }

    /// The finite duration, or `None` for infinite.
    pub fn as_duration(self) -> Option<Duration> {
        match self.as_wire() {
            u32::MAX => None,
            ms => Some(Duration::from_millis(u64::from(ms))),
        }
    }
}

impl From<Duration> for Timeout {
    /// Whole milliseconds, rounded down, capped just below INFINITE (about 49.7 days).
    fn from(d: Duration) -> Timeout {
        let ms = d.as_millis().min(u128::from(u32::MAX - 1));
        Timeout::Millis(u32::try_from(ms).unwrap_or(u32::MAX - 1))
    }
}

/// How a wait ended without failing. `WAIT_FAILED` is `Err(Error::Win32(code))` instead.
///
/// ```
/// use dlock::WaitOutcome;
/// let o = WaitOutcome::Signaled { index: 0, fencing_token: 42 };
/// assert!(o.is_acquired());
/// assert_eq!(o.to_win32(), 0);
/// assert_eq!(WaitOutcome::TimedOut.to_win32(), 0x102);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WaitOutcome {
    /// The object at `index` was signaled and acquired (`WAIT_OBJECT_0 + index`; a wait-all
    /// reports 0). `fencing_token` is the token of the mutex grant if the wait acquired a mutex,
    /// else 0.
    Signaled {
        /// Index into the waited handles.
        index: usize,
        /// Fencing token of the mutex grant, 0 if no mutex was acquired.
        fencing_token: u64,
    },
    /// The mutex at `index` was abandoned by its previous owner and now belongs to the caller
    /// (`WAIT_ABANDONED_0 + index`; a wait-all reports 0). The data it protects may be
    /// inconsistent.
    Abandoned {
        /// Index into the waited handles.
        index: usize,
        /// Fencing token of the mutex grant.
        fencing_token: u64,
    },
    /// The timeout passed first (`WAIT_TIMEOUT`); nothing was acquired.
    TimedOut,
}

impl WaitOutcome {
    /// True for `Signaled` and `Abandoned`: the wait acquired its object(s).
    pub fn is_acquired(self) -> bool {
        !matches!(self, WaitOutcome::TimedOut)
    }

    /// The fencing token of the mutex grant, if the wait acquired a mutex.
    pub fn fencing_token(self) -> Option<u64> {
        match self {
            WaitOutcome::Signaled { fencing_token, .. }
            | WaitOutcome::Abandoned { fencing_token, .. } => {
                (fencing_token != 0).then_some(fencing_token)
            }
            WaitOutcome::TimedOut => None,
        }
    }

    /// The Win32 DWORD a wait function returns for this outcome.
    pub fn to_win32(self) -> u32 {
        // Indexes are < 64 by construction, so the casts cannot truncate.
        match self {
            WaitOutcome::Signaled { index, .. } => index as u32,
            WaitOutcome::Abandoned { index, .. } => WIRE_WAIT_ABANDONED_0 + index as u32,
            WaitOutcome::TimedOut => WIRE_WAIT_TIMEOUT,
        }
    }

    /// Decodes a `WaitReply` for a wait on `count` handles.
    ///
    /// # Errors
    ///
    /// `WAIT_FAILED` gives [`Error::Win32`] with the reply's error; a result outside the
    /// documented ranges gives [`Error::Protocol`].
    pub(crate) fn from_wire(
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
        if result >= WIRE_WAIT_ABANDONED_0 && result64 < u64::from(WIRE_WAIT_ABANDONED_0) + count {
            return Ok(WaitOutcome::Abandoned {
                index: (result - WIRE_WAIT_ABANDONED_0) as usize,
                fencing_token,
            });
        }
        match result {
            WIRE_WAIT_TIMEOUT => Ok(WaitOutcome::TimedOut),
            WIRE_WAIT_FAILED if error != 0 => Err(Error::Win32(error)),
            WIRE_WAIT_FAILED => Err(Error::Protocol("WAIT_FAILED without an error code".into())),
            other => Err(Error::Protocol(format!(
                "wait result {other:#x} out of range for {count} handles"
            ))),
        }
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

/// A snapshot of an object's state read through a handle (the mirror of `QueryReply`).
/// Fields that do not apply to the object's kind are zero / false.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectState {
    /// The object's type.
    pub kind: ObjectKind,
    /// Mutex: owner session id, 0 when unowned.
    pub owner_session_id: u64,
    /// Mutex: owner thread id, 0 when unowned.
    pub owner_thread_id: u64,
    /// Mutex: recursion count.
    pub recursion: u32,
    /// Mutex: abandoned and not yet re-acquired.
    pub abandoned: bool,
    /// Mutex: fencing token of the current grant, 0 when unowned.
    pub fencing_token: u64,
    /// Event: manual-reset (else auto-reset).
    pub manual_reset: bool,
    /// Event: signaled.
    pub signaled: bool,
    /// Semaphore: current count.
    pub count: i32,
    /// Semaphore: maximum count.
    pub maximum: i32,
}

impl ObjectState {
    /// Decodes a `QueryReply` whose `error` is 0.
    pub(crate) fn from_wire(r: &v1::QueryReply) -> Result<ObjectState, Error> {
        Ok(ObjectState {
            kind: ObjectKind::from_wire(r.kind)?,
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

    #[test]
    fn wait_results_decode_per_win32() {
        assert_eq!(
            WaitOutcome::from_wire(0, 0, 7, 1),
            Ok(WaitOutcome::Signaled {
                index: 0,
                fencing_token: 7
            })
        );
        assert_eq!(
            WaitOutcome::from_wire(63, 0, 0, 64),
            Ok(WaitOutcome::Signaled {
                index: 63,
                fencing_token: 0
            })
        );
        assert_eq!(
            WaitOutcome::from_wire(0x81, 0, 9, 2),
            Ok(WaitOutcome::Abandoned {
                index: 1,
                fencing_token: 9
            })
        );
        assert_eq!(
            WaitOutcome::from_wire(0x102, 0, 0, 3),
            Ok(WaitOutcome::TimedOut)
        );
        assert_eq!(
            WaitOutcome::from_wire(u32::MAX, 87, 0, 3),
            Err(Error::Win32(87))
        );
        // Out of range for the number of handles.
        assert!(matches!(
            WaitOutcome::from_wire(2, 0, 0, 2),
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            WaitOutcome::from_wire(0x82, 0, 0, 2),
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            WaitOutcome::from_wire(u32::MAX, 0, 0, 2),
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
                assert_eq!(WaitOutcome::from_wire(s.to_win32(), 0, 0, n), Ok(s));
                let a = WaitOutcome::Abandoned {
                    index: i,
                    fencing_token: 3,
                };
                assert_eq!(WaitOutcome::from_wire(a.to_win32(), 0, 3, n), Ok(a));
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
            assert_eq!(ObjectKind::from_wire(k.to_wire()), Ok(k));
        }
        assert!(ObjectKind::from_wire(0).is_err());
        assert!(ObjectKind::from_wire(99).is_err());
    }
}

//! The parameters of a create, the values a wait takes and gives, and what a query reads: the same types for the async
//! client, the facade and the `Local\` engine.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    CREATE_EVENT_INITIAL_SET, CREATE_EVENT_MANUAL_RESET, CREATE_MUTEX_INITIAL_OWNER, ObjectKind,
    WAIT_ABANDONED_0, WAIT_TIMEOUT,
};

/// How long a wait may block. The server enforces it (from the moment the leader applied the
/// wait), so it holds across node failover.
///
/// ```
/// use std::time::Duration;
/// use dlock_proto::vocab::Timeout;
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

/// How a wait ended without failing. `WAIT_FAILED` is an error instead (the
/// client's `Error::Win32`), never an outcome.
///
/// ```
/// use dlock_proto::vocab::WaitOutcome;
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
            WaitOutcome::Abandoned { index, .. } => WAIT_ABANDONED_0 + index as u32,
            WaitOutcome::TimedOut => WAIT_TIMEOUT,
        }
    }
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

/// The type-specific creation parameters of a create-or-open. They are ignored when the name
/// already exists (except that semaphore counts are validated first, as Windows does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CreateParams {
    /// `CreateMutexEx`: whether the creating thread owns the new mutex.
    Mutex {
        /// `CREATE_MUTEX_INITIAL_OWNER` / `bInitialOwner`.
        initial_owner: bool,
    },
    /// `CreateEventEx`.
    Event {
        /// `CREATE_EVENT_MANUAL_RESET` / `bManualReset`.
        manual_reset: bool,
        /// `CREATE_EVENT_INITIAL_SET` / `bInitialState`.
        initial_state: bool,
    },
    /// `CreateSemaphoreEx`.
    Semaphore {
        /// `lInitialCount`, must be in `0..=max`.
        initial: i32,
        /// `lMaximumCount`, must be > 0.
        max: i32,
    },
}

impl CreateParams {
    /// The object type these parameters create.
    pub fn kind(&self) -> ObjectKind {
        match self {
            CreateParams::Mutex { .. } => ObjectKind::Mutex,
            CreateParams::Event { .. } => ObjectKind::Event,
            CreateParams::Semaphore { .. } => ObjectKind::Semaphore,
        }
    }

    /// The parameters of a `Create…Ex` call: its `dwFlags` (§1.4: `CREATE_MUTEX_INITIAL_OWNER`,
    /// `CREATE_EVENT_MANUAL_RESET`, `CREATE_EVENT_INITIAL_SET`; other bits are ignored) and,
    /// for a semaphore, its counts. This is the one place the flag bits are decoded.
    ///
    /// ```
    /// use dlock_proto::vocab::{CreateParams, ObjectKind, CREATE_EVENT_INITIAL_SET};
    /// assert_eq!(
    ///     CreateParams::from_flags(ObjectKind::Event, CREATE_EVENT_INITIAL_SET, 0, 0),
    ///     CreateParams::Event { manual_reset: false, initial_state: true },
    /// );
    /// ```
    pub fn from_flags(kind: ObjectKind, flags: u32, initial: i32, max: i32) -> CreateParams {
        match kind {
            ObjectKind::Mutex => CreateParams::Mutex {
                initial_owner: flags & CREATE_MUTEX_INITIAL_OWNER != 0,
            },
            ObjectKind::Event => CreateParams::Event {
                manual_reset: flags & CREATE_EVENT_MANUAL_RESET != 0,
                initial_state: flags & CREATE_EVENT_INITIAL_SET != 0,
            },
            ObjectKind::Semaphore => CreateParams::Semaphore { initial, max },
        }
    }

    /// Whether these parameters make the creating thread own a new mutex.
    pub fn initial_owner(&self) -> bool {
        matches!(
            self,
            CreateParams::Mutex {
                initial_owner: true
            }
        )
    }
}

//! One synchronisation object: its type-specific state, its name, how many handles point at it
//! and the FIFO queue of waits registered on it.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::types::{ObjectState, SessionId, ThreadId};
use super::wait::WaitKey;
use dlock_proto::vocab::MUTEX_RECURSION_MAX;
use dlock_proto::vocab::ObjectKind;

/// Internal object id (a counter; never exposed, never reused).
pub(crate) type ObjectId = u64;

/// Mutex owner identity: `(session, thread)`.
pub(crate) type Owner = (SessionId, ThreadId);

/// A mutex's ownership state (§4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MutexData {
    /// The owning thread, if any.
    pub owner: Option<Owner>,
    /// Recursion count: 0 iff unowned.
    pub recursion: u32,
    /// Abandoned by a dead owner and not re-acquired since (implies unowned).
    pub abandoned: bool,
    /// Log index of the entry that granted the current ownership; 0 iff unowned.
    pub fencing_token: u64,
}

/// The type-specific state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ObjectData {
    /// A mutex.
    Mutex(MutexData),
    /// An event.
    Event {
        /// Manual-reset (stays signaled until reset) rather than auto-reset.
        manual_reset: bool,
        /// Signaled now.
        signaled: bool,
    },
    /// A semaphore with `0 <= count <= max`.
    Semaphore {
        /// Current count.
        count: i32,
        /// Maximum count (> 0).
        max: i32,
    },
}

/// What an acquisition did, for the wait's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Acquired {
    /// The object was an abandoned mutex (the wait reports `WAIT_ABANDONED`).
    pub abandoned: bool,
    /// The mutex's fencing token after the acquisition, 0 for events and semaphores.
    pub fencing_token: u64,
}

/// A synchronisation object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Object {
    /// The namespace key while the object is named and has handles; `None` for unnamed objects
    /// and for objects whose last handle closed while waits still keep them alive.
    pub name: Option<String>,
    /// Open handles (of all sessions) to the object.
    pub handle_count: usize,
    /// Type-specific state.
    pub data: ObjectData,
    /// Waits registered on this object, oldest first; each wait appears at most once.
    pub waiters: VecDeque<WaitKey>,
    /// Events: how many times `SetEvent`, `ResetEvent` or `PulseEvent` changed it. A give-back
    /// restores an auto-reset event's signal only if nothing touched the event since the grant
    /// (a pulse's signal must not outlive the pulse, a reset must not be undone).
    pub event_epoch: u64,
}

impl Object {
    /// A new object without handles or waiters.
    pub fn new(name: Option<String>, data: ObjectData) -> Self {
        Object {
            name,
            handle_count: 0,
            data,
            waiters: VecDeque::new(),
            event_epoch: 0,
        }
    }

    /// The object's type.
    pub fn kind(&self) -> ObjectKind {
        match self.data {
            ObjectData::Mutex(_) => ObjectKind::Mutex,
            ObjectData::Event { .. } => ObjectKind::Event,
            ObjectData::Semaphore { .. } => ObjectKind::Semaphore,
        }
    }

    /// The externally visible state.
    pub fn state(&self) -> ObjectState {
        match &self.data {
            ObjectData::Mutex(m) => ObjectState::Mutex {
                owner: m.owner,
                recursion: m.recursion,
                abandoned: m.abandoned,
                fencing_token: m.fencing_token,
            },
            ObjectData::Event {
                manual_reset,
                signaled,
            } => ObjectState::Event {
                manual_reset: *manual_reset,
                signaled: *signaled,
            },
            ObjectData::Semaphore { count, max } => ObjectState::Semaphore {
                count: *count,
                max: *max,
            },
        }
    }

    /// Whether a wait by `owner` would be satisfied by this object now (§7.1): an unowned mutex
    /// or one `owner` already owns, a set event, a semaphore with a positive count.
    pub fn is_signaled_for(&self, owner: Owner) -> bool {
        match &self.data {
            ObjectData::Mutex(m) => m.owner.is_none() || m.owner == Some(owner),
            ObjectData::Event { signaled, .. } => *signaled,
            ObjectData::Semaphore { count, .. } => *count > 0,
        }
    }

    /// Whether an acquisition by `owner` would push the mutex's recursion count past
    /// [`MUTEX_RECURSION_MAX`] (§4.2).
    pub fn acquire_would_overflow(&self, owner: Owner) -> bool {
        match &self.data {
            ObjectData::Mutex(m) => m.owner == Some(owner) && m.recursion >= MUTEX_RECURSION_MAX,
            _ => false,
        }
    }

    /// Performs the effect of a satisfied wait by `owner` (§7.1). A fresh mutex grant records
    /// `index` (the log index of the granting entry) as the fencing token and clears the
    /// abandoned flag; a recursive acquisition keeps the original token.
    ///
    /// # Panics
    ///
    /// If the object is not signaled for `owner` or the acquisition would overflow: the caller
    /// checks both first.
    pub fn acquire(&mut self, owner: Owner, index: u64) -> Acquired {
        assert!(
            self.is_signaled_for(owner),
            "acquiring an object that is not signaled"
        );
        assert!(
            !self.acquire_would_overflow(owner),
            "acquiring a mutex past its recursion limit"
        );
        match &mut self.data {
            ObjectData::Mutex(m) => {
                if m.owner == Some(owner) {
                    m.recursion += 1;
                    Acquired {
                        abandoned: false,
                        fencing_token: m.fencing_token,
                    }
                } else {
                    let abandoned = m.abandoned;
                    *m = MutexData {
                        owner: Some(owner),
                        recursion: 1,
                        abandoned: false,
                        fencing_token: index,
                    };
                    Acquired {
                        abandoned,
                        fencing_token: index,
                    }
                }
            }
            ObjectData::Event {
                manual_reset,
                signaled,
            } => {
                if !*manual_reset {
                    *signaled = false;
                }
                Acquired {
                    abandoned: false,
                    fencing_token: 0,
                }
            }
            ObjectData::Semaphore { count, .. } => {
                *count -= 1;
                Acquired {
                    abandoned: false,
                    fencing_token: 0,
                }
            }
        }
    }

    /// Checks the object's own invariants.
    pub fn verify(&self) -> Result<(), String> {
        match &self.data {
            ObjectData::Mutex(m) => {
                if m.owner.is_some() != (m.recursion >= 1) {
                    return Err(format!(
                        "mutex owner {:?} with recursion {}",
                        m.owner, m.recursion
                    ));
                }
                if m.owner.is_some() != (m.fencing_token > 0) {
                    return Err(format!(
                        "mutex owner {:?} with token {}",
                        m.owner, m.fencing_token
                    ));
                }
                if m.recursion > MUTEX_RECURSION_MAX {
                    return Err(format!("mutex recursion {} over the limit", m.recursion));
                }
                if m.abandoned && m.owner.is_some() {
                    return Err("abandoned mutex has an owner".into());
                }
            }
            ObjectData::Event { .. } => {}
            ObjectData::Semaphore { count, max } => {
                if *max <= 0 || *count < 0 || count > max {
                    return Err(format!("semaphore count {count} max {max}"));
                }
            }
        }
        if self.handle_count == 0 && self.name.is_some() {
            return Err("named object without handles".into());
        }
        if self.handle_count == 0 && self.waiters.is_empty() {
            return Err("object with neither handles nor waiters is still alive".into());
        }
        Ok(())
    }
}

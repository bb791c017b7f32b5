//! One synchronisation object: its type-specific state, its name, how many handles point at it
//! and the FIFO queue of waits registered on it.

use super::tenancy::Held;
use super::*;
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::types::{ObjectState, SessionId, ThreadId};
use super::wait::WaitKey;
use dlock_proto::vocab::ObjectKind;
use dlock_proto::vocab::{MAXIMUM_ALLOWED, MUTEX_RECURSION_MAX};

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

// ---------------------------------------------------------------------------------------------
// The namespace's verbs on objects and handles: create, open, close, and the signalling
// operations (ReleaseMutex, SetEvent/ResetEvent/PulseEvent, ReleaseSemaphore, abandonment).
// ---------------------------------------------------------------------------------------------

impl Namespace {
    #[allow(clippy::too_many_arguments)] // the fields of a Create, and the ACL's decision
    pub(super) fn create(
        &mut self,
        index: u64,
        session: SessionId,
        thread: ThreadId,
        name: Option<&str>,
        params: &CreateParams,
        access: u32,
        allowed: Option<&Allowed>,
    ) -> Reply {
        let key = match create_name_key(name) {
            Ok(key) => key,
            Err(code) => return Reply::Error(code),
        };
        let kind = params.kind();
        if let Some(id) = key.and_then(|key| self.names.get(key)).copied() {
            if allowed.is_some_and(|a| !a.open) {
                return Reply::Error(Win32Error::ACCESS_DENIED);
            }
            if self.object(id).kind() != kind {
                return Reply::Error(Win32Error::INVALID_HANDLE);
            }
            let granted = match limit(kind, access::existing_object(kind, access), access, allowed)
            {
                Ok(granted) => granted,
                Err(code) => return Reply::Error(code),
            };
            if !self.has_handle_room(session) {
                return Reply::Error(Win32Error::NO_SYSTEM_RESOURCES);
            }
            let handle = self.new_handle(session, id, granted);
            return Reply::Created {
                handle,
                already_existed: true,
                fencing_token: 0,
            };
        }
        if allowed.is_some_and(|a| !a.create) {
            return Reply::Error(Win32Error::ACCESS_DENIED);
        }
        let granted = match limit(kind, access::new_object(kind, access), access, allowed) {
            Ok(granted) => granted,
            Err(code) => return Reply::Error(code),
        };
        if !self.has_handle_room(session)
            || self.objects.len() >= self.limits.objects_max
            || !self.tenant_has_room(session, Held::Objects)
        {
            return Reply::Error(Win32Error::NO_SYSTEM_RESOURCES);
        }
        let mut fencing_token = 0;
        let data = match *params {
            CreateParams::Mutex { initial_owner } => {
                let mut mutex = MutexData {
                    owner: None,
                    recursion: 0,
                    abandoned: false,
                    fencing_token: 0,
                };
                if initial_owner {
                    fencing_token = index;
                    mutex = MutexData {
                        owner: Some((session, thread)),
                        recursion: 1,
                        abandoned: false,
                        fencing_token,
                    };
                }
                ObjectData::Mutex(mutex)
            }
            CreateParams::Event {
                manual_reset,
                initial_state,
            } => ObjectData::Event {
                manual_reset,
                signaled: initial_state,
            },
            CreateParams::Semaphore { initial, max } => ObjectData::Semaphore {
                count: initial,
                max,
            },
        };
        self.last_object_id += 1;
        let id = self.last_object_id;
        let object = Object::new(key.map(str::to_string), data);
        assert!(
            self.objects.insert(id, object).is_none(),
            "object id {id} reused"
        );
        self.tenant_object_created(id, session);
        if let Some(key) = key {
            assert!(
                self.names.insert(key.to_string(), id).is_none(),
                "name {key:?} taken twice"
            );
        }
        if fencing_token != 0 {
            self.index_owner(id, (session, thread));
        }
        let handle = self.new_handle(session, id, granted);
        Reply::Created {
            handle,
            already_existed: false,
            fencing_token,
        }
    }

    pub(super) fn open(
        &mut self,
        session: SessionId,
        kind: ObjectKind,
        name: Option<&str>,
        access: u32,
        allowed: Option<&Allowed>,
    ) -> Reply {
        let key = match open_name_key(name) {
            Ok(key) => key,
            Err(code) => return Reply::Error(code),
        };
        // Without the right to open, whether the name exists is none of the caller's business.
        if allowed.is_some_and(|a| !a.open) {
            return Reply::Error(Win32Error::ACCESS_DENIED);
        }
        let Some(&id) = self.names.get(key) else {
            return Reply::Error(Win32Error::FILE_NOT_FOUND);
        };
        if self.object(id).kind() != kind {
            return Reply::Error(Win32Error::INVALID_HANDLE);
        }
        let granted = match limit(kind, access::existing_object(kind, access), access, allowed) {
            Ok(granted) => granted,
            Err(code) => return Reply::Error(code),
        };
        if !self.has_handle_room(session) {
            return Reply::Error(Win32Error::NO_SYSTEM_RESOURCES);
        }
        Reply::Opened {
            handle: self.new_handle(session, id, granted),
        }
    }

    pub(super) fn has_handle_room(&self, session: SessionId) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|s| s.handles.len() < self.limits.handles_per_session_max)
            && self.handles.len() < self.limits.handles_max
            && self.tenant_has_room(session, Held::Handles)
    }

    pub(super) fn new_handle(
        &mut self,
        session: SessionId,
        object: ObjectId,
        access: u32,
    ) -> HandleId {
        self.last_handle_id += 1;
        let id = self.last_handle_id;
        self.handles.insert(
            id,
            Handle {
                session,
                object,
                access,
            },
        );
        let owner = self
            .sessions
            .get_mut(&session)
            .expect("the handle's session exists");
        owner.handles.insert(id);
        self.tenant_count(session, Held::Handles, true);
        self.objects
            .get_mut(&object)
            .expect("the handle's object exists")
            .handle_count += 1;
        id
    }

    /// Closes a handle known to exist. The last handle removes the object's name; an object with
    /// neither handles nor waits is destroyed.
    pub(super) fn close_handle(&mut self, id: HandleId) {
        let handle = self.handles.remove(&id).expect("the closed handle exists");
        let session = self
            .sessions
            .get_mut(&handle.session)
            .expect("the handle's session exists");
        assert!(
            session.handles.remove(&id),
            "handle {id} missing from its session"
        );
        self.tenant_count(handle.session, Held::Handles, false);
        let object = self
            .objects
            .get_mut(&handle.object)
            .expect("the handle's object exists");
        assert!(object.handle_count > 0, "object handle count underflow");
        object.handle_count -= 1;
        if object.handle_count == 0
            && let Some(name) = object.name.take()
        {
            assert_eq!(
                self.names.remove(&name),
                Some(handle.object),
                "name table out of sync"
            );
        }
        self.maybe_destroy(handle.object);
    }

    /// Destroys the object if nothing keeps it alive any more (an owned mutex whose handles
    /// all closed goes too, and leaves its owner's index).
    pub(super) fn maybe_destroy(&mut self, id: ObjectId) {
        let object = self.object(id);
        if object.handle_count == 0 && object.waiters.is_empty() {
            assert!(object.name.is_none(), "destroying a named object");
            if let ObjectData::Mutex(MutexData {
                owner: Some(owner), ..
            }) = object.data
            {
                self.unindex_owner(id, owner);
            }
            self.objects.remove(&id);
            self.tenant_object_destroyed(id);
        }
    }

    /// Records that `owner` now owns mutex `id`.
    pub(super) fn index_owner(&mut self, id: ObjectId, (session, thread): Owner) {
        self.owned.entry(session).or_default().insert(id, thread);
    }

    /// Records that `owner` no longer owns mutex `id`.
    pub(super) fn unindex_owner(&mut self, id: ObjectId, (session, _): Owner) {
        if let Some(objects) = self.owned.get_mut(&session) {
            objects.remove(&id);
            if objects.is_empty() {
                self.owned.remove(&session);
            }
        }
    }

    /// The owner index as the objects say it should be (for `restore` and `verify`).
    pub(super) fn count_outcomes(&self) -> usize {
        self.sessions.values().map(|s| s.outcomes.len()).sum()
    }

    pub(super) fn count_replies(&self) -> usize {
        self.sessions.values().map(|s| s.replies.len()).sum()
    }

    pub(super) fn owner_index(&self) -> OrdMap<SessionId, BTreeMap<ObjectId, ThreadId>> {
        let mut index: OrdMap<SessionId, BTreeMap<ObjectId, ThreadId>> = OrdMap::new();
        for (id, object) in &self.objects {
            if let ObjectData::Mutex(MutexData {
                owner: Some((session, thread)),
                ..
            }) = object.data
            {
                index.entry(session).or_default().insert(*id, thread);
            }
        }
        index
    }

    pub(super) fn release_mutex(
        &mut self,
        index: u64,
        session: SessionId,
        thread: ThreadId,
        handle: HandleId,
        resolved: &mut Vec<Resolved>,
    ) -> Result<(), Win32Error> {
        let (id, _) = self.typed_handle(session, handle, ObjectKind::Mutex, 0)?;
        let ObjectData::Mutex(m) = &mut self.object_mut(id).data else {
            unreachable!("typed_handle checked the type")
        };
        if m.owner != Some((session, thread)) {
            return Err(Win32Error::NOT_OWNER);
        }
        m.recursion -= 1;
        if m.recursion == 0 {
            m.owner = None;
            m.fencing_token = 0;
            self.unindex_owner(id, (session, thread));
            self.wake(index, &[id], resolved);
        }
        Ok(())
    }

    pub(super) fn event_op(
        &mut self,
        index: u64,
        session: SessionId,
        handle: HandleId,
        resolved: &mut Vec<Resolved>,
        op: Op,
    ) -> Reply {
        let id = match self.typed_handle(session, handle, ObjectKind::Event, EVENT_MODIFY_STATE) {
            Ok((id, _)) => id,
            Err(code) => return Reply::Error(code),
        };
        match op {
            Op::Set => {
                self.set_event_signaled(id, true);
                self.wake(index, &[id], resolved);
            }
            Op::Reset => self.set_event_signaled(id, false),
            Op::Pulse => {
                // Every wait queued now was registered before this command, so waking with the
                // event momentarily set releases exactly "the waiters registered at that moment".
                self.set_event_signaled(id, true);
                self.wake(index, &[id], resolved);
                if self.objects.contains_key(&id) {
                    self.set_event_signaled(id, false);
                }
            }
        }
        Reply::Done
    }

    pub(super) fn set_event_signaled(&mut self, id: ObjectId, value: bool) {
        let object = self.object_mut(id);
        object.event_epoch += 1;
        let ObjectData::Event { signaled, .. } = &mut object.data else {
            unreachable!("an event operation on a non-event")
        };
        *signaled = value;
    }

    pub(super) fn release_semaphore(
        &mut self,
        index: u64,
        session: SessionId,
        handle: HandleId,
        release: i32,
        resolved: &mut Vec<Resolved>,
    ) -> Result<i32, Win32Error> {
        if release <= 0 {
            return Err(Win32Error::INVALID_PARAMETER);
        }
        let (id, _) = self.typed_handle(
            session,
            handle,
            ObjectKind::Semaphore,
            SEMAPHORE_MODIFY_STATE,
        )?;
        let ObjectData::Semaphore { count, max } = &mut self.object_mut(id).data else {
            unreachable!("typed_handle checked the type")
        };
        let previous = *count;
        match previous.checked_add(release) {
            Some(new) if new <= *max => *count = new,
            _ => return Err(Win32Error::TOO_MANY_POSTS),
        }
        self.wake(index, &[id], resolved);
        Ok(previous)
    }

    /// Abandons every mutex owned by `session` (only by `thread` of it, if given), in object id
    /// order (§4.4); returns them. Costs what the owner holds, through the owner index.
    pub(super) fn abandon(
        &mut self,
        session: SessionId,
        thread: Option<ThreadId>,
    ) -> Vec<ObjectId> {
        let owned: Vec<(ObjectId, ThreadId)> = self
            .owned
            .get(&session)
            .map(|objects| {
                objects
                    .iter()
                    .filter(|(_, t)| thread.is_none_or(|wanted| **t == wanted))
                    .map(|(id, t)| (*id, *t))
                    .collect()
            })
            .unwrap_or_default();
        let mut abandoned = Vec::with_capacity(owned.len());
        for (id, t) in owned {
            let Some(ObjectData::Mutex(m)) = self.objects.get_mut(&id).map(|o| &mut o.data) else {
                tracing::error!(id, session, "owner index names a missing object; skipped");
                continue;
            };
            if m.owner != Some((session, t)) {
                tracing::error!(id, session, "owner index out of date; skipped");
                continue;
            }
            *m = MutexData {
                owner: None,
                recursion: 0,
                abandoned: true,
                fencing_token: 0,
            };
            self.unindex_owner(id, (session, t));
            abandoned.push(id);
        }
        abandoned
    }
}

/// The access check of an ACL on top of Windows' own (`granted`, for the request `access`):
/// `MAXIMUM_ALLOWED` gets what the principal may have, and a request for more than that fails
/// with `ERROR_ACCESS_DENIED`, as Windows does when a security descriptor denies a right.
fn limit(
    kind: ObjectKind,
    granted: Result<u32, Win32Error>,
    access: u32,
    allowed: Option<&Allowed>,
) -> Result<u32, Win32Error> {
    let granted = granted?;
    let Some(allowed) = allowed else {
        return Ok(granted);
    };
    let mask = allowed.mask(kind);
    let requested = access::map_generic(kind, access & !MAXIMUM_ALLOWED);
    if requested & !mask != 0 {
        return Err(Win32Error::ACCESS_DENIED);
    }
    let limited = granted & mask;
    if limited == 0 && granted != 0 {
        return Err(Win32Error::ACCESS_DENIED);
    }
    Ok(limited)
}

//! Typed handles: [`Mutex`], [`Event`], [`Semaphore`], and waiting on several at once.
//!
//! A typed handle to a cluster object owns one server handle of its [`Session`] and closes it
//! in the background when dropped (best effort, like `CloseHandle`; closing never releases a
//! held mutex, as on Windows). All typed handles of a session act as one owner,
//! [`crate::TYPED_OWNER_THREAD_ID`].
//!
//! A typed handle to a `Local\` object (from [`crate::LocalNamespace`], or from a [`Session`]
//! given a `Local\` name) lives in the host's shared memory and never involves the cluster.
//! Local mutex ownership belongs to one OS thread, so each local [`Mutex`] handle has its own
//! owner thread (`dlock-local-owner`) that takes and releases it: each handle is its own owner,
//! and dropping a handle that holds its mutex abandons it (as a thread exit does on Windows).
//!
//! This file holds the handle types and the waits on them; `make.rs` the constructors (the one
//! place a name is routed, through [`crate::route`]); `host.rs` what only `Local\` handles need
//! (the owner thread, local waits from async code, [`LocalNamespace`]).

mod host;
mod make;

pub use host::{LocalHandle, LocalNamespace, Owner};
use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::AtomicU32;

use crate::local::{self, LocalObj, Segment};
use crate::route::{Route, route};
use crate::session::TYPED_OWNER_THREAD_ID;
use crate::{
    CreateParams, Error, ObjectKind, ObjectState, Session, SessionState, Timeout, WaitOutcome,
};
use dlock_proto::vocab::Win32Error;

use host::{local_wait, wait_local_objects};

mod sealed {
    /// Hooks the wait functions use; private so that only this crate implements [`Waitable`].
    ///
    /// [`Waitable`]: super::Waitable
    pub trait Sealed {
        /// The object's type.
        fn kind(&self) -> crate::ObjectKind;
        /// A wait through this handle acquired the object with this fencing token (0 unknown).
        fn note_acquired(&self, _fencing_token: u64) {}
        /// The cluster handle, if this is one.
        fn remote(&self) -> Option<&super::Base>;
        /// The local object and (for a mutex) its owner thread, if this is one.
        fn local(&self) -> Option<(&super::LocalHandle, Option<&super::Owner>)>;
    }
}

/// Something a [`Session::wait_any`] / [`Session::wait_all`] (or the [`crate::LocalNamespace`]
/// ones) can wait on: a [`Mutex`], an [`Event`] or a [`Semaphore`].
pub trait Waitable: sealed::Sealed + Send + Sync {
    /// The server handle id; for a `Local\` object, its slot in the local namespace.
    fn handle(&self) -> u64;
    /// The session the handle belongs to; `None` for a `Local\` object.
    fn session(&self) -> Option<&Session>;
}

/// The parts every typed handle has; closes the server handle on drop.
#[derive(Debug)]
pub struct Base {
    session: Session,
    handle: u64,
    pub(super) already_existed: bool,
}

impl Drop for Base {
    fn drop(&mut self) {
        if self.session.state() == SessionState::Expired {
            return;
        }
        let session = self.session.clone();
        let handle = self.handle;
        self.session.runtime().spawn(async move {
            if let Err(err) = session.close_handle(handle).await {
                tracing::debug!(handle, error = %err, "background CloseHandle failed");
            }
        });
    }
}

/// Where a typed handle's object lives.
#[derive(Debug)]
enum Backing {
    /// On the cluster.
    Remote(Base),
    /// In this host's shared memory.
    Local(LocalHandle),
}

/// What this session's typed owner holds of one mutex, as seen through one handle.
#[derive(Debug, Default)]
struct Hold {
    recursion: u32,
    fencing_token: u64,
}

/// A named (or unnamed) mutex, owned by this session's typed owner when locked.
///
/// ```no_run
/// # async fn demo(session: dlock::Session) -> Result<(), dlock::Error> {
/// use dlock::{Timeout, WaitOutcome};
/// let mutex = session.create_mutex(Some("inventory"), false).await?;
/// match mutex.lock(Timeout::Millis(10_000)).await? {
///     WaitOutcome::TimedOut => return Ok(()),
///     WaitOutcome::Abandoned { .. } => { /* repair the data first */ }
///     WaitOutcome::Signaled { .. } => {}
/// }
/// let token = mutex.fencing_token().expect("held");
/// // ... pass `token` to the storage system along with each write ...
/// mutex.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Mutex {
    backing: Backing,
    /// A std mutex: updated after each call, never held across an await.
    hold: StdMutex<Hold>,
    /// The owner thread of a local mutex.
    owner: Option<Owner>,
}

/// An event, manual-reset or auto-reset.
///
/// ```no_run
/// # async fn demo(session: dlock::Session) -> Result<(), dlock::Error> {
/// let ready = session.create_event(Some("ready"), true, false).await?;
/// ready.set().await?;
/// assert!(ready.wait(dlock::Timeout::Millis(0)).await?.is_acquired());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Event {
    backing: Backing,
}

/// A counting semaphore.
///
/// ```no_run
/// # async fn demo(session: dlock::Session) -> Result<(), dlock::Error> {
/// let slots = session.create_semaphore(Some("db-slots"), 4, 4).await?;
/// if slots.acquire(dlock::Timeout::Infinite).await?.is_acquired() {
///     // ... use one slot ...
///     let before = slots.release(1).await?;
///     assert!(before < 4);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Semaphore {
    backing: Backing,
}

impl Backing {
    fn handle(&self) -> u64 {
        match self {
            Backing::Remote(base) => base.handle,
            Backing::Local(l) => u64::from(l.obj.index),
        }
    }

    fn session(&self) -> Option<&Session> {
        match self {
            Backing::Remote(base) => Some(&base.session),
            Backing::Local(_) => None,
        }
    }

    fn remote(&self) -> Option<&Base> {
        match self {
            Backing::Remote(base) => Some(base),
            Backing::Local(_) => None,
        }
    }

    fn local(&self) -> Option<&LocalHandle> {
        match self {
            Backing::Remote(_) => None,
            Backing::Local(l) => Some(l),
        }
    }

    /// Waits on this one object (for events and semaphores; mutexes go through their owner).
    async fn wait(&self, timeout: Timeout) -> Result<WaitOutcome, Error> {
        match self {
            Backing::Remote(base) => {
                base.session
                    .wait(TYPED_OWNER_THREAD_ID, &[base.handle], false, timeout)
                    .await
            }
            Backing::Local(l) => local_wait(l.seg, vec![l.obj], None, false, timeout).await,
        }
    }
}

macro_rules! common_handle_methods {
    () => {
        /// The server handle id (valid in [`Self::session`] only); for a `Local\` object, its
        /// slot in the local namespace.
        pub fn handle(&self) -> u64 {
            self.backing.handle()
        }

        /// The session this handle belongs to; `None` for a `Local\` object.
        pub fn session(&self) -> Option<&Session> {
            self.backing.session()
        }

        /// True if the create found an existing object of the same type (Win32 last error
        /// 183) and opened it instead; always false for handles from `open_*`.
        pub fn already_existed(&self) -> bool {
            match &self.backing {
                Backing::Remote(base) => base.already_existed,
                Backing::Local(l) => l.already_existed,
            }
        }

        /// Reads the object's state (linearizable). For a `Local\` mutex the owner is
        /// reported by kernel thread id, with session id 0.
        ///
        /// # Errors
        ///
        /// As [`Session::query`].
        pub async fn query(&self) -> Result<ObjectState, Error> {
            match &self.backing {
                Backing::Remote(base) => base.session.query(base.handle).await,
                Backing::Local(l) => l.op(|seg, obj| obj.query(seg)).await,
            }
        }
    };
}

impl Mutex {
    common_handle_methods!();

    /// Waits for the mutex (`WaitForSingleObject`). Re-entrant: locking it again while held
    /// succeeds immediately and needs one more [`Mutex::release`].
    ///
    /// # Errors
    ///
    /// As [`Session::wait`].
    pub async fn lock(&self, timeout: Timeout) -> Result<WaitOutcome, Error> {
        let outcome = match &self.backing {
            Backing::Remote(base) => {
                base.session
                    .wait(TYPED_OWNER_THREAD_ID, &[base.handle], false, timeout)
                    .await?
            }
            Backing::Local(l) => {
                local_wait(l.seg, vec![l.obj], self.owner.as_ref(), false, timeout).await?
            }
        };
        if let Some(token) = acquired_token(outcome) {
            sealed::Sealed::note_acquired(self, token);
        }
        Ok(outcome)
    }

    /// Tries once without queueing (`lock(Timeout::Millis(0))`).
    ///
    /// # Errors
    ///
    /// As [`Session::wait`].
    pub async fn try_lock(&self) -> Result<WaitOutcome, Error> {
        self.lock(Timeout::Millis(0)).await
    }

    /// Releases one level of ownership (`ReleaseMutex`).
    ///
    /// # Errors
    ///
    /// [`Error::Win32`]`(288)` if this session's typed owner does not hold it; the cluster
    /// errors.
    pub async fn release(&self) -> Result<(), Error> {
        match (&self.backing, &self.owner) {
            (Backing::Remote(base), _) => {
                base.session
                    .release_mutex(TYPED_OWNER_THREAD_ID, base.handle)
                    .await?
            }
            (Backing::Local(l), Some(owner)) => {
                let (seg, obj) = (l.seg, l.obj);
                owner
                    .run(move || obj.release_mutex(seg))
                    .await?
                    .map_err(Error::Win32)?
            }
            (Backing::Local(_), None) => return Err(Error::Win32(Win32Error::NOT_OWNER)),
        }
        let mut hold = self.hold.lock().unwrap_or_else(|e| e.into_inner());
        hold.recursion = hold.recursion.saturating_sub(1);
        if hold.recursion == 0 {
            hold.fencing_token = 0;
        }
        Ok(())
    }

    /// The fencing token of the current hold, if this handle's owner holds the mutex (as far as
    /// acquisitions and releases through this handle show) and the session is not expired.
    /// `None` as well after a wait-all that acquired several mutexes at once (the wire carries
    /// one token per wait); use [`Mutex::query`] then.
    pub fn fencing_token(&self) -> Option<u64> {
        if let Backing::Remote(base) = &self.backing
            && base.session.state() == SessionState::Expired
        {
            return None;
        }
        let hold = self.hold.lock().unwrap_or_else(|e| e.into_inner());
        (hold.recursion > 0 && hold.fencing_token != 0).then_some(hold.fencing_token)
    }
}

impl Event {
    common_handle_methods!();

    /// `SetEvent`.
    ///
    /// # Errors
    ///
    /// As [`Session::set_event`].
    pub async fn set(&self) -> Result<(), Error> {
        match &self.backing {
            Backing::Remote(base) => base.session.set_event(base.handle).await,
            Backing::Local(l) => l.op(|seg, obj| obj.set_event(seg)).await,
        }
    }

    /// `ResetEvent`.
    ///
    /// # Errors
    ///
    /// As [`Session::reset_event`].
    pub async fn reset(&self) -> Result<(), Error> {
        match &self.backing {
            Backing::Remote(base) => base.session.reset_event(base.handle).await,
            Backing::Local(l) => l.op(|seg, obj| obj.reset_event(seg)).await,
        }
    }

    /// `PulseEvent`: releases the waiters registered now, then leaves the event non-signaled.
    ///
    /// # Errors
    ///
    /// As [`Session::pulse_event`].
    pub async fn pulse(&self) -> Result<(), Error> {
        match &self.backing {
            Backing::Remote(base) => base.session.pulse_event(base.handle).await,
            Backing::Local(l) => l.op(|seg, obj| obj.pulse_event(seg)).await,
        }
    }

    /// Waits for the event to be signaled (consuming it if auto-reset).
    ///
    /// # Errors
    ///
    /// As [`Session::wait`].
    pub async fn wait(&self, timeout: Timeout) -> Result<WaitOutcome, Error> {
        self.backing.wait(timeout).await
    }
}

impl Semaphore {
    common_handle_methods!();

    /// Waits for one unit and takes it.
    ///
    /// # Errors
    ///
    /// As [`Session::wait`].
    pub async fn acquire(&self, timeout: Timeout) -> Result<WaitOutcome, Error> {
        self.backing.wait(timeout).await
    }

    /// Adds `count` units and returns the count before.
    ///
    /// # Errors
    ///
    /// As [`Session::release_semaphore`] (87 for `count <= 0`, 298 above the maximum).
    pub async fn release(&self, count: i32) -> Result<i32, Error> {
        match &self.backing {
            Backing::Remote(base) => base.session.release_semaphore(base.handle, count).await,
            Backing::Local(l) => {
                l.op(move |seg, obj| obj.release_semaphore(seg, count))
                    .await
            }
        }
    }
}

impl sealed::Sealed for Mutex {
    fn kind(&self) -> ObjectKind {
        ObjectKind::Mutex
    }

    fn remote(&self) -> Option<&Base> {
        self.backing.remote()
    }

    fn local(&self) -> Option<(&LocalHandle, Option<&Owner>)> {
        self.backing.local().map(|l| (l, self.owner.as_ref()))
    }

    fn note_acquired(&self, fencing_token: u64) {
        let mut hold = self.hold.lock().unwrap_or_else(|e| e.into_inner());
        hold.recursion = hold.recursion.saturating_add(1);
        if fencing_token != 0 {
            hold.fencing_token = fencing_token;
        }
    }
}

impl sealed::Sealed for Event {
    fn kind(&self) -> ObjectKind {
        ObjectKind::Event
    }

    fn remote(&self) -> Option<&Base> {
        self.backing.remote()
    }

    fn local(&self) -> Option<(&LocalHandle, Option<&Owner>)> {
        self.backing.local().map(|l| (l, None))
    }
}

impl sealed::Sealed for Semaphore {
    fn kind(&self) -> ObjectKind {
        ObjectKind::Semaphore
    }

    fn remote(&self) -> Option<&Base> {
        self.backing.remote()
    }

    fn local(&self) -> Option<(&LocalHandle, Option<&Owner>)> {
        self.backing.local().map(|l| (l, None))
    }
}

macro_rules! impl_waitable {
    ($($t:ty),*) => {$(
        impl Waitable for $t {
            fn handle(&self) -> u64 {
                self.backing.handle()
            }
            fn session(&self) -> Option<&Session> {
                self.backing.session()
            }
        }
    )*};
}
impl_waitable!(Mutex, Event, Semaphore);

/// The token to record for an acquiring outcome (`Some(0)` = acquired, token unknown).
fn acquired_token(outcome: WaitOutcome) -> Option<u64> {
    match outcome {
        WaitOutcome::Signaled { fencing_token, .. }
        | WaitOutcome::Abandoned { fencing_token, .. } => Some(fencing_token),
        WaitOutcome::TimedOut => None,
    }
}

/// Records what a wait acquired in the handles' hold bookkeeping.
fn note_wait(objects: &[&dyn Waitable], wait_all: bool, outcome: WaitOutcome) {
    let Some(token) = acquired_token(outcome) else {
        return;
    };
    if wait_all {
        let mutexes = objects
            .iter()
            .filter(|o| o.kind() == ObjectKind::Mutex)
            .count();
        let token = if mutexes == 1 { token } else { 0 };
        for object in objects {
            object.note_acquired(token);
        }
    } else if let WaitOutcome::Signaled { index, .. } | WaitOutcome::Abandoned { index, .. } =
        outcome
        && let Some(object) = objects.get(index)
    {
        object.note_acquired(token);
    }
}

impl Session {
    /// Waits until any one of `objects` is signaled and acquires the lowest-indexed signaled
    /// one (`WaitForMultipleObjects` with `bWaitAll = FALSE`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if an object belongs to another session; otherwise as
    /// [`Session::wait`].
    ///
    /// ```no_run
    /// # async fn demo(session: dlock::Session) -> Result<(), dlock::Error> {
    /// let stop = session.create_event(Some("stop"), true, false).await?;
    /// let work = session.create_semaphore(Some("work"), 0, 100).await?;
    /// match session.wait_any(&[&stop, &work], dlock::Timeout::Infinite).await? {
    ///     dlock::WaitOutcome::Signaled { index: 0, .. } => println!("stopping"),
    ///     _ => println!("got work"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn wait_any(
        &self,
        objects: &[&dyn Waitable],
        timeout: Timeout,
    ) -> Result<WaitOutcome, Error> {
        self.wait_objects(objects, false, timeout).await
    }

    /// Waits until all of `objects` are signaled at the same moment and acquires them all at
    /// once (`WaitForMultipleObjects` with `bWaitAll = TRUE`); nothing is acquired until then.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if an object belongs to another session; otherwise as
    /// [`Session::wait`] (87 if the same object appears twice).
    pub async fn wait_all(
        &self,
        objects: &[&dyn Waitable],
        timeout: Timeout,
    ) -> Result<WaitOutcome, Error> {
        self.wait_objects(objects, true, timeout).await
    }

    async fn wait_objects(
        &self,
        objects: &[&dyn Waitable],
        wait_all: bool,
        timeout: Timeout,
    ) -> Result<WaitOutcome, Error> {
        let locals = objects.iter().filter(|o| o.local().is_some()).count();
        if locals > 0 {
            if locals < objects.len() {
                // One wait cannot block on shared memory and on the cluster at once.
                return Err(Error::Win32(Win32Error::INVALID_PARAMETER));
            }
            return wait_local_objects(objects, wait_all, timeout).await;
        }
        let mut handles = Vec::with_capacity(objects.len());
        for o in objects {
            let base = o
                .remote()
                .ok_or(Error::Win32(Win32Error::INVALID_PARAMETER))?;
            if base.session.id() != self.id() {
                return Err(Error::InvalidArgument(format!(
                    "handle {} belongs to session {}, not {}",
                    base.handle,
                    base.session.id(),
                    self.id()
                )));
            }
            handles.push(base.handle);
        }
        let outcome = self
            .wait(TYPED_OWNER_THREAD_ID, &handles, wait_all, timeout)
            .await?;
        note_wait(objects, wait_all, outcome);
        Ok(outcome)
    }
}

//! Typed handles: [`Mutex`], [`Event`], [`Semaphore`], and waiting on several at once.
//!
//! Each typed handle owns one server handle of its [`Session`] and closes it in the background
//! when dropped (best effort, like `CloseHandle`; closing never releases a held mutex, as on
//! Windows). All typed handles of a session act as one owner,
//! [`crate::TYPED_OWNER_THREAD_ID`].

use std::sync::Mutex as StdMutex;

use crate::session::TYPED_OWNER_THREAD_ID;
use crate::win32::{
    CREATE_EVENT_INITIAL_SET, CREATE_EVENT_MANUAL_RESET, CREATE_MUTEX_INITIAL_OWNER,
};
use crate::win32::{EVENT_ALL_ACCESS, MUTEX_ALL_ACCESS, SEMAPHORE_ALL_ACCESS};
use crate::{Error, ObjectKind, ObjectState, Session, SessionState, Timeout, WaitOutcome};

mod sealed {
    /// Hooks the wait functions use; private so that only this crate implements [`Waitable`].
    ///
    /// [`Waitable`]: super::Waitable
    pub trait Sealed {
        /// The object's type.
        fn kind(&self) -> crate::ObjectKind;
        /// A wait through this handle acquired the object with this fencing token (0 unknown).
        fn note_acquired(&self, _fencing_token: u64) {}
    }
}

/// Something a [`Session::wait_any`] / [`Session::wait_all`] can wait on: a [`Mutex`], an
/// [`Event`] or a [`Semaphore`].
pub trait Waitable: sealed::Sealed + Send + Sync {
    /// The server handle id.
    fn handle(&self) -> u64;
    /// The session the handle belongs to.
    fn session(&self) -> &Session;
}

/// The parts every typed handle has; closes the server handle on drop.
#[derive(Debug)]
struct Base {
    session: Session,
    handle: u64,
    already_existed: bool,
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
    base: Base,
    /// A std mutex: updated after each call, never held across an await.
    hold: StdMutex<Hold>,
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
    base: Base,
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
    base: Base,
}

macro_rules! common_handle_methods {
    () => {
        /// The server handle id (valid in [`Self::session`] only).
        pub fn handle(&self) -> u64 {
            self.base.handle
        }

        /// The session this handle belongs to.
        pub fn session(&self) -> &Session {
            &self.base.session
        }

        /// True if the create found an existing object of the same type (Win32 last error
        /// 183) and opened it instead; always false for handles from `open_*`.
        pub fn already_existed(&self) -> bool {
            self.base.already_existed
        }

        /// Reads the object's state (linearizable).
        ///
        /// # Errors
        ///
        /// As [`Session::query`].
        pub async fn query(&self) -> Result<ObjectState, Error> {
            self.base.session.query(self.base.handle).await
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
        let outcome = self
            .base
            .session
            .wait(TYPED_OWNER_THREAD_ID, &[self.base.handle], false, timeout)
            .await?;
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
        self.base
            .session
            .release_mutex(TYPED_OWNER_THREAD_ID, self.base.handle)
            .await?;
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
        if self.base.session.state() == SessionState::Expired {
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
        self.base.session.set_event(self.base.handle).await
    }

    /// `ResetEvent`.
    ///
    /// # Errors
    ///
    /// As [`Session::reset_event`].
    pub async fn reset(&self) -> Result<(), Error> {
        self.base.session.reset_event(self.base.handle).await
    }

    /// `PulseEvent`: releases the waiters registered now, then leaves the event non-signaled.
    ///
    /// # Errors
    ///
    /// As [`Session::pulse_event`].
    pub async fn pulse(&self) -> Result<(), Error> {
        self.base.session.pulse_event(self.base.handle).await
    }

    /// Waits for the event to be signaled (consuming it if auto-reset).
    ///
    /// # Errors
    ///
    /// As [`Session::wait`].
    pub async fn wait(&self, timeout: Timeout) -> Result<WaitOutcome, Error> {
        self.base
            .session
            .wait(TYPED_OWNER_THREAD_ID, &[self.base.handle], false, timeout)
            .await
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
        self.base
            .session
            .wait(TYPED_OWNER_THREAD_ID, &[self.base.handle], false, timeout)
            .await
    }

    /// Adds `count` units and returns the count before.
    ///
    /// # Errors
    ///
    /// As [`Session::release_semaphore`] (87 for `count <= 0`, 298 above the maximum).
    pub async fn release(&self, count: i32) -> Result<i32, Error> {
        self.base
            .session
            .release_semaphore(self.base.handle, count)
            .await
    }
}

impl sealed::Sealed for Mutex {
    fn kind(&self) -> ObjectKind {
        ObjectKind::Mutex
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
}

impl sealed::Sealed for Semaphore {
    fn kind(&self) -> ObjectKind {
        ObjectKind::Semaphore
    }
}

macro_rules! impl_waitable {
    ($($t:ty),*) => {$(
        impl Waitable for $t {
            fn handle(&self) -> u64 {
                self.base.handle
            }
            fn session(&self) -> &Session {
                &self.base.session
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

impl Session {
    fn base(&self, handle: u64, already_existed: bool) -> Base {
        Base {
            session: self.clone(),
            handle,
            already_existed,
        }
    }

    /// Creates or opens a named mutex (`CreateMutex`); `None` or `""` makes an unnamed one.
    /// With `initial_owner`, a *new* mutex starts owned by this session's typed owner (not an
    /// existing one: check [`Mutex::already_existed`]).
    ///
    /// # Errors
    ///
    /// As [`Session::create`].
    ///
    /// ```no_run
    /// # async fn demo(session: dlock::Session) -> Result<(), dlock::Error> {
    /// let m = session.create_mutex(Some("leader-election"), true).await?;
    /// if !m.already_existed() {
    ///     println!("we own it, token {:?}", m.fencing_token());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn create_mutex(
        &self,
        name: Option<&str>,
        initial_owner: bool,
    ) -> Result<Mutex, Error> {
        let flags = if initial_owner {
            CREATE_MUTEX_INITIAL_OWNER
        } else {
            0
        };
        let created = self
            .create(
                TYPED_OWNER_THREAD_ID,
                ObjectKind::Mutex,
                name,
                flags,
                MUTEX_ALL_ACCESS,
                0,
                0,
            )
            .await?;
        let mut hold = Hold::default();
        if initial_owner && !created.already_existed {
            hold.recursion = 1;
            hold.fencing_token = created.fencing_token;
        }
        Ok(Mutex {
            base: self.base(created.handle, created.already_existed),
            hold: StdMutex::new(hold),
        })
    }

    /// Opens an existing named mutex with `MUTEX_ALL_ACCESS` (`OpenMutex`).
    ///
    /// # Errors
    ///
    /// As [`Session::open`] (2 if there is no such name, 6 if it is another type).
    pub async fn open_mutex(&self, name: &str) -> Result<Mutex, Error> {
        let handle = self.open(ObjectKind::Mutex, name, MUTEX_ALL_ACCESS).await?;
        Ok(Mutex {
            base: self.base(handle, false),
            hold: StdMutex::new(Hold::default()),
        })
    }

    /// Creates or opens a named event (`CreateEvent`); an existing event keeps its type and
    /// state.
    ///
    /// # Errors
    ///
    /// As [`Session::create`].
    pub async fn create_event(
        &self,
        name: Option<&str>,
        manual_reset: bool,
        initial_state: bool,
    ) -> Result<Event, Error> {
        let mut flags = 0;
        if manual_reset {
            flags |= CREATE_EVENT_MANUAL_RESET;
        }
        if initial_state {
            flags |= CREATE_EVENT_INITIAL_SET;
        }
        let created = self
            .create(
                TYPED_OWNER_THREAD_ID,
                ObjectKind::Event,
                name,
                flags,
                EVENT_ALL_ACCESS,
                0,
                0,
            )
            .await?;
        Ok(Event {
            base: self.base(created.handle, created.already_existed),
        })
    }

    /// Opens an existing named event with `EVENT_ALL_ACCESS` (`OpenEvent`).
    ///
    /// # Errors
    ///
    /// As [`Session::open`].
    pub async fn open_event(&self, name: &str) -> Result<Event, Error> {
        let handle = self.open(ObjectKind::Event, name, EVENT_ALL_ACCESS).await?;
        Ok(Event {
            base: self.base(handle, false),
        })
    }

    /// Creates or opens a named semaphore (`CreateSemaphore`). The counts are validated even
    /// when the name exists (87), and otherwise ignored for an existing semaphore.
    ///
    /// # Errors
    ///
    /// As [`Session::create`].
    pub async fn create_semaphore(
        &self,
        name: Option<&str>,
        initial_count: i32,
        maximum_count: i32,
    ) -> Result<Semaphore, Error> {
        let created = self
            .create(
                TYPED_OWNER_THREAD_ID,
                ObjectKind::Semaphore,
                name,
                0,
                SEMAPHORE_ALL_ACCESS,
                initial_count,
                maximum_count,
            )
            .await?;
        Ok(Semaphore {
            base: self.base(created.handle, created.already_existed),
        })
    }

    /// Opens an existing named semaphore with `SEMAPHORE_ALL_ACCESS` (`OpenSemaphore`).
    ///
    /// # Errors
    ///
    /// As [`Session::open`].
    pub async fn open_semaphore(&self, name: &str) -> Result<Semaphore, Error> {
        let handle = self
            .open(ObjectKind::Semaphore, name, SEMAPHORE_ALL_ACCESS)
            .await?;
        Ok(Semaphore {
            base: self.base(handle, false),
        })
    }

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
        if let Some(other) = objects.iter().find(|o| o.session().id() != self.id()) {
            return Err(Error::InvalidArgument(format!(
                "handle {} belongs to session {}, not {}",
                other.handle(),
                other.session().id(),
                self.id()
            )));
        }
        let handles: Vec<u64> = objects.iter().map(|o| o.handle()).collect();
        let outcome = self
            .wait(TYPED_OWNER_THREAD_ID, &handles, wait_all, timeout)
            .await?;
        let Some(token) = acquired_token(outcome) else {
            return Ok(outcome);
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
        } else {
            let index = match outcome {
                WaitOutcome::Signaled { index, .. } | WaitOutcome::Abandoned { index, .. } => index,
                WaitOutcome::TimedOut => unreachable!("acquired_token returned a token"),
            };
            if let Some(object) = objects.get(index) {
                object.note_acquired(token);
            }
        }
        Ok(outcome)
    }
}

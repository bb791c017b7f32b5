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

use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::AtomicU32;

use crate::local::{self, LocalObj, Segment};
use crate::session::TYPED_OWNER_THREAD_ID;
use crate::{
    CreateParams, Error, ObjectKind, ObjectState, Session, SessionState, Timeout, WaitOutcome,
};
use dlock_proto::vocab::{EVENT_ALL_ACCESS, MUTEX_ALL_ACCESS, SEMAPHORE_ALL_ACCESS, Win32Error};

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

/// Where a typed handle's object lives.
#[derive(Debug)]
enum Backing {
    /// On the cluster.
    Remote(Base),
    /// In this host's shared memory.
    Local(LocalHandle),
}

/// A local object's handle; closed on drop.
pub struct LocalHandle {
    seg: &'static Segment,
    obj: LocalObj,
    already_existed: bool,
}

impl std::fmt::Debug for LocalHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalHandle")
            .field("path", &self.seg.path())
            .field("obj", &self.obj)
            .finish()
    }
}

impl Drop for LocalHandle {
    fn drop(&mut self) {
        if let Err(code) = self.obj.close(self.seg) {
            tracing::debug!(%code, "closing a local handle failed");
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The OS thread that owns one local mutex handle's acquisitions: it runs that handle's waits
/// and releases, one at a time. It ends when the handle is dropped; if it holds the mutex
/// then, the kernel marks it abandoned.
pub struct Owner {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Owner")
    }
}

impl Owner {
    fn spawn() -> Result<Owner, Error> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("dlock-local-owner".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .map_err(|e| {
                tracing::error!(error = %e, "cannot start a local mutex owner thread");
                Error::Win32(Win32Error::NO_SYSTEM_RESOURCES)
            })?;
        Ok(Owner { jobs })
    }

    /// Runs `job` on the owner thread.
    fn submit(&self, job: Job) -> Result<(), Error> {
        self.jobs
            .send(job)
            .map_err(|_| Error::Protocol("the local owner thread is gone".into()))
    }

    /// Runs `f` on the owner thread and returns its result.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Box::new(move || {
            let _ = tx.send(f());
        }))?;
        rx.await
            .map_err(|_| Error::Protocol("the local owner thread is gone".into()))
    }
}

/// Sets a cancellable local wait's cancel word when the awaiting future goes away.
struct CancelOnDrop(Arc<AtomicU32>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        local::cancel(&self.0);
    }
}

/// What a local wait took, on its way to the awaiting future. Dropped without
/// [`Acquisition::accept`] (the future went away before reading it, at any point), it gives
/// everything back, on the owner thread for mutexes.
struct Acquisition {
    seg: &'static Segment,
    objs: Vec<LocalObj>,
    wait_all: bool,
    taken: Option<local::Taken>,
    /// The owner thread's queue, for a wait that may hold a mutex.
    owner: Option<std::sync::mpsc::Sender<Job>>,
}

impl Acquisition {
    /// The caller has the outcome: nothing to give back.
    fn accept(mut self) -> WaitOutcome {
        self.taken
            .take()
            .map_or(WaitOutcome::TimedOut, |t| t.outcome)
    }
}

impl Drop for Acquisition {
    fn drop(&mut self) {
        let Some(taken) = self.taken.take() else {
            return;
        };
        let (seg, objs, wait_all) = (self.seg, std::mem::take(&mut self.objs), self.wait_all);
        let give_back = move || local::give_back(seg, &objs, wait_all, taken);
        match &self.owner {
            // If the owner thread is gone, so is its hold: the kernel abandoned the mutex.
            Some(owner) => {
                let _ = owner.send(Box::new(give_back));
            }
            None => give_back(),
        }
    }
}

/// Runs a local wait on the owner thread of the one mutex it names (or, without a mutex, on
/// tokio's blocking pool), cancellably: if the caller stops awaiting, the wait ends, and what
/// it took that nobody will learn of is given back.
async fn local_wait(
    seg: &'static Segment,
    objs: Vec<LocalObj>,
    owner: Option<&Owner>,
    wait_all: bool,
    timeout: Timeout,
) -> Result<WaitOutcome, Error> {
    if objs.len() > local::CANCELLABLE_WAIT_OBJECTS_MAX {
        return Err(Error::Win32(Win32Error::INVALID_PARAMETER));
    }
    let cancel = Arc::new(AtomicU32::new(0));
    let _cancel_on_drop = CancelOnDrop(cancel.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<Acquisition, Win32Error>>();
    let owner_queue = owner.map(|o| o.jobs.clone());
    let job = move || {
        let r = local::wait_cancellable(seg, &objs, wait_all, timeout, Some(&cancel));
        // If the receiver is gone the acquisition is dropped here, and gives back.
        let _ = tx.send(r.map(|taken| Acquisition {
            seg,
            objs,
            wait_all,
            taken: Some(taken),
            owner: owner_queue,
        }));
    };
    match owner {
        Some(owner) => owner.submit(Box::new(job))?,
        None => {
            tokio::task::spawn_blocking(job);
        }
    }
    let acquisition = rx
        .await
        .map_err(|_| Error::Protocol("a local wait ended without a result".into()))?
        .map_err(Error::Win32)?;
    Ok(acquisition.accept())
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
                Backing::Local(l) => l.obj.query(l.seg).map_err(Error::Win32),
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
            Backing::Local(l) => l.obj.set_event(l.seg).map_err(Error::Win32),
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
            Backing::Local(l) => l.obj.reset_event(l.seg).map_err(Error::Win32),
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
            Backing::Local(l) => l.obj.pulse_event(l.seg).map_err(Error::Win32),
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
            Backing::Local(l) => l.obj.release_semaphore(l.seg, count).map_err(Error::Win32),
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

/// The key of a `Local\` name, or `None` for a cluster name. The 260-unit limit is checked
/// here for local names (the server checks cluster names).
fn local_name(name: Option<&str>) -> Result<Option<&str>, Error> {
    let Some(key) = name.and_then(|n| n.strip_prefix(LOCAL_PREFIX)) else {
        return Ok(None);
    };
    if name.unwrap_or_default().encode_utf16().count() > NAME_UNITS_MAX {
        return Err(Error::Win32(Win32Error::FILENAME_EXCED_RANGE));
    }
    Ok(Some(key))
}

/// The prefix of host-local names.
const LOCAL_PREFIX: &str = "Local\\";
/// `MAX_PATH`: the longest name in UTF-16 units.
const NAME_UNITS_MAX: usize = 260;

fn local_handle(seg: &'static Segment, obj: LocalObj, already_existed: bool) -> Backing {
    Backing::Local(LocalHandle {
        seg,
        obj,
        already_existed,
    })
}

/// Creates or opens local mutex `key` on a new owner thread (which then owns it if
/// `initial_owner` made a new one).
async fn local_mutex(key: &str, create: Option<bool>) -> Result<Mutex, Error> {
    let seg = local::namespace().map_err(Error::Win32)?;
    let owner = Owner::spawn()?;
    let key = key.to_owned();
    // The handle travels as a LocalHandle, so that a caller that went away closes it; the
    // owner thread (dropped with the caller) then abandons a mutex it was given to own.
    let result = owner
        .run(move || match create {
            Some(initial_owner) => {
                let params = CreateParams::Mutex { initial_owner };
                local::create(seg, &key, &params, MUTEX_ALL_ACCESS).map(|(obj, existed)| {
                    let owned = initial_owner && !existed;
                    // Read on the owner thread: the token of its own hold.
                    let token = if owned { obj.fencing_token(seg) } else { 0 };
                    (local_handle(seg, obj, existed), owned, token)
                })
            }
            None => local::open(seg, ObjectKind::Mutex, &key, MUTEX_ALL_ACCESS)
                .map(|obj| (local_handle(seg, obj, false), false, 0)),
        })
        .await?;
    let (backing, owned, token) = result.map_err(Error::Win32)?;
    let mut hold = Hold::default();
    if owned {
        hold.recursion = 1;
        hold.fencing_token = token;
    }
    Ok(Mutex {
        backing,
        hold: StdMutex::new(hold),
        owner: Some(owner),
    })
}

/// Creates (`Some(params)`) or opens a local event or semaphore.
fn local_object(
    kind: ObjectKind,
    key: &str,
    create: Option<CreateParams>,
) -> Result<Backing, Error> {
    let seg = local::namespace().map_err(Error::Win32)?;
    let access = match kind {
        ObjectKind::Event => EVENT_ALL_ACCESS,
        _ => SEMAPHORE_ALL_ACCESS,
    };
    let (obj, existed) = match create {
        Some(params) => local::create(seg, key, &params, access).map_err(Error::Win32)?,
        None => (
            local::open(seg, kind, key, access).map_err(Error::Win32)?,
            false,
        ),
    };
    Ok(local_handle(seg, obj, existed))
}

/// Waits on typed handles that are all local.
async fn wait_local_objects(
    objects: &[&dyn Waitable],
    wait_all: bool,
    timeout: Timeout,
) -> Result<WaitOutcome, Error> {
    let mut objs = Vec::with_capacity(objects.len());
    let mut owner = None;
    let mut seg = None;
    for o in objects {
        let Some((l, o_owner)) = o.local() else {
            return Err(Error::Win32(Win32Error::INVALID_PARAMETER));
        };
        if let Some(o_owner) = o_owner {
            if owner.is_some() {
                return Err(Error::InvalidArgument(
                    "a local wait through the async API may name at most one mutex: each \
                     local mutex handle is owned by its own thread"
                        .into(),
                ));
            }
            owner = Some(o_owner);
        }
        seg = Some(l.seg);
        objs.push(l.obj);
    }
    let Some(seg) = seg else {
        return Err(Error::Win32(Win32Error::INVALID_PARAMETER));
    };
    let outcome = local_wait(seg, objs, owner, wait_all, timeout).await?;
    note_wait(objects, wait_all, outcome);
    Ok(outcome)
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

/// The host-local namespace through the async API: `Local\` objects in shared memory, with no
/// cluster, session or network. (A [`Session`] given a `Local\` name serves it from here too.)
///
/// ```no_run
/// # async fn demo() -> Result<(), dlock::Error> {
/// use dlock::{LocalNamespace, Timeout};
/// let local = LocalNamespace::attach()?;
/// let m = local.create_mutex("Local\\cache-rebuild", false).await?;
/// if m.lock(Timeout::Millis(100)).await?.is_acquired() {
///     // ... only one process on this host gets here at a time ...
///     m.release().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct LocalNamespace {
    _attached: (),
}

impl LocalNamespace {
    /// Attaches this process to the host-local namespace (configured by `DLOCK_LOCAL_DIR`,
    /// `DLOCK_LOCAL_NAMESPACE` and `DLOCK_LOCAL_MODE`, see [`crate::win32`]).
    ///
    /// # Errors
    ///
    /// [`Error::Win32`] with the codes of the `win32` module docs (1306 another layout
    /// version, 1392 a corrupt file, 5 no access, 50 unsupported platform).
    pub fn attach() -> Result<LocalNamespace, Error> {
        local::namespace().map_err(Error::Win32)?;
        Ok(LocalNamespace { _attached: () })
    }

    /// The segment file the environment (`DLOCK_LOCAL_DIR`, `DLOCK_LOCAL_NAMESPACE`) names,
    /// whether it exists yet or not; `attach` creates it.
    pub fn configured_path() -> std::path::PathBuf {
        local::configured_path()
    }

    /// What the namespace holds now: attached processes, objects, blocked waits (read under
    /// its lock; for operators and debugging).
    ///
    /// # Errors
    ///
    /// [`Error::Win32`]`(1392)` if the namespace lock is unusable.
    pub fn snapshot(&self) -> Result<crate::LocalSnapshot, Error> {
        local::namespace()
            .map_err(Error::Win32)?
            .snapshot()
            .map_err(Error::Win32)
    }

    fn key(name: &str) -> Result<&str, Error> {
        local_name(Some(name))?
            .ok_or_else(|| Error::InvalidArgument(format!("{name:?} is not a Local\\ name")))
    }

    /// Creates or opens the local mutex `name` (which must start with `Local\`). With
    /// `initial_owner`, a new mutex starts owned by the returned handle.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a name without the prefix; [`Error::Win32`] as
    /// `CreateMutex` (6 another type, 3/123/206 bad names, 1450 a full table).
    pub async fn create_mutex(&self, name: &str, initial_owner: bool) -> Result<Mutex, Error> {
        local_mutex(Self::key(name)?, Some(initial_owner)).await
    }

    /// Opens the existing local mutex `name`.
    ///
    /// # Errors
    ///
    /// As [`LocalNamespace::create_mutex`], and 2 if there is no such object.
    pub async fn open_mutex(&self, name: &str) -> Result<Mutex, Error> {
        local_mutex(Self::key(name)?, None).await
    }

    /// Creates or opens the local event `name`.
    ///
    /// # Errors
    ///
    /// As [`LocalNamespace::create_mutex`].
    pub async fn create_event(
        &self,
        name: &str,
        manual_reset: bool,
        initial_state: bool,
    ) -> Result<Event, Error> {
        let params = CreateParams::Event {
            manual_reset,
            initial_state,
        };
        Ok(Event {
            backing: local_object(ObjectKind::Event, Self::key(name)?, Some(params))?,
        })
    }

    /// Opens the existing local event `name`.
    ///
    /// # Errors
    ///
    /// As [`LocalNamespace::open_mutex`].
    pub async fn open_event(&self, name: &str) -> Result<Event, Error> {
        Ok(Event {
            backing: local_object(ObjectKind::Event, Self::key(name)?, None)?,
        })
    }

    /// Creates or opens the local semaphore `name`.
    ///
    /// # Errors
    ///
    /// As [`LocalNamespace::create_mutex`], and 87 for counts outside
    /// `0 <= initial <= maximum, maximum > 0`.
    pub async fn create_semaphore(
        &self,
        name: &str,
        initial_count: i32,
        maximum_count: i32,
    ) -> Result<Semaphore, Error> {
        Ok(Semaphore {
            backing: local_object(
                ObjectKind::Semaphore,
                Self::key(name)?,
                Some(CreateParams::Semaphore {
                    initial: initial_count,
                    max: maximum_count,
                }),
            )?,
        })
    }

    /// Opens the existing local semaphore `name`.
    ///
    /// # Errors
    ///
    /// As [`LocalNamespace::open_mutex`].
    pub async fn open_semaphore(&self, name: &str) -> Result<Semaphore, Error> {
        Ok(Semaphore {
            backing: local_object(ObjectKind::Semaphore, Self::key(name)?, None)?,
        })
    }

    /// Waits until any of `objects` (all local, at most 63, at most one mutex) is signaled and
    /// acquires the lowest-indexed one.
    ///
    /// # Errors
    ///
    /// [`Error::Win32`]`(87)` for a cluster object, none or more than 63;
    /// [`Error::InvalidArgument`] for more than one mutex.
    pub async fn wait_any(
        &self,
        objects: &[&dyn Waitable],
        timeout: Timeout,
    ) -> Result<WaitOutcome, Error> {
        wait_local_objects(objects, false, timeout).await
    }

    /// Waits until all of `objects` are signaled at once and acquires them together.
    ///
    /// # Errors
    ///
    /// As [`LocalNamespace::wait_any`], and 87 if an object appears twice.
    pub async fn wait_all(
        &self,
        objects: &[&dyn Waitable],
        timeout: Timeout,
    ) -> Result<WaitOutcome, Error> {
        wait_local_objects(objects, true, timeout).await
    }
}

impl Session {
    fn base(&self, handle: u64, already_existed: bool) -> Backing {
        Backing::Remote(Base {
            session: self.clone(),
            handle,
            already_existed,
        })
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
        if let Some(key) = local_name(name)? {
            return local_mutex(key, Some(initial_owner)).await;
        }
        let created = self
            .create(
                TYPED_OWNER_THREAD_ID,
                name,
                CreateParams::Mutex { initial_owner },
                MUTEX_ALL_ACCESS,
            )
            .await?;
        let mut hold = Hold::default();
        if initial_owner && !created.already_existed {
            hold.recursion = 1;
            hold.fencing_token = created.fencing_token;
        }
        Ok(Mutex {
            backing: self.base(created.handle, created.already_existed),
            hold: StdMutex::new(hold),
            owner: None,
        })
    }

    /// Opens an existing named mutex with `MUTEX_ALL_ACCESS` (`OpenMutex`).
    ///
    /// # Errors
    ///
    /// As [`Session::open`] (2 if there is no such name, 6 if it is another type).
    pub async fn open_mutex(&self, name: &str) -> Result<Mutex, Error> {
        if let Some(key) = local_name(Some(name))? {
            return local_mutex(key, None).await;
        }
        let handle = self.open(ObjectKind::Mutex, name, MUTEX_ALL_ACCESS).await?;
        Ok(Mutex {
            backing: self.base(handle, false),
            hold: StdMutex::new(Hold::default()),
            owner: None,
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
        let params = CreateParams::Event {
            manual_reset,
            initial_state,
        };
        if let Some(key) = local_name(name)? {
            return Ok(Event {
                backing: local_object(ObjectKind::Event, key, Some(params))?,
            });
        }
        let created = self
            .create(TYPED_OWNER_THREAD_ID, name, params, EVENT_ALL_ACCESS)
            .await?;
        Ok(Event {
            backing: self.base(created.handle, created.already_existed),
        })
    }

    /// Opens an existing named event with `EVENT_ALL_ACCESS` (`OpenEvent`).
    ///
    /// # Errors
    ///
    /// As [`Session::open`].
    pub async fn open_event(&self, name: &str) -> Result<Event, Error> {
        if let Some(key) = local_name(Some(name))? {
            return Ok(Event {
                backing: local_object(ObjectKind::Event, key, None)?,
            });
        }
        let handle = self.open(ObjectKind::Event, name, EVENT_ALL_ACCESS).await?;
        Ok(Event {
            backing: self.base(handle, false),
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
        let params = CreateParams::Semaphore {
            initial: initial_count,
            max: maximum_count,
        };
        if let Some(key) = local_name(name)? {
            return Ok(Semaphore {
                backing: local_object(ObjectKind::Semaphore, key, Some(params))?,
            });
        }
        let created = self
            .create(TYPED_OWNER_THREAD_ID, name, params, SEMAPHORE_ALL_ACCESS)
            .await?;
        Ok(Semaphore {
            backing: self.base(created.handle, created.already_existed),
        })
    }

    /// Opens an existing named semaphore with `SEMAPHORE_ALL_ACCESS` (`OpenSemaphore`).
    ///
    /// # Errors
    ///
    /// As [`Session::open`].
    pub async fn open_semaphore(&self, name: &str) -> Result<Semaphore, Error> {
        if let Some(key) = local_name(Some(name))? {
            return Ok(Semaphore {
                backing: local_object(ObjectKind::Semaphore, key, None)?,
            });
        }
        let handle = self
            .open(ObjectKind::Semaphore, name, SEMAPHORE_ALL_ACCESS)
            .await?;
        Ok(Semaphore {
            backing: self.base(handle, false),
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

//! Typed handles to `Local\\` objects: the handle, the owner thread of a local mutex, local
//! waits from async code, and [`LocalNamespace`].

use super::make::{Made, created_hold};
use super::*;

/// A local object's handle; closed on drop.
pub struct LocalHandle {
    pub(super) seg: &'static Segment,
    pub(super) obj: LocalObj,
    pub(super) already_existed: bool,
}

impl std::fmt::Debug for LocalHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalHandle")
            .field("path", &self.seg.path())
            .field("obj", &self.obj)
            .finish()
    }
}

impl LocalHandle {
    /// Runs `op` (a call that takes the namespace lock) for async code: on the calling task
    /// when the lock is free (a few microseconds), on tokio's blocking pool when another
    /// thread holds it, so a process that holds it and does not run (stopped, frozen) never
    /// blocks a runtime worker; `op` then fails with `ERROR_TIMEOUT` after the lock timeout.
    pub(super) async fn op<T: Send + 'static>(
        &self,
        op: impl FnOnce(&'static Segment, LocalObj) -> Result<T, Win32Error> + Send + 'static,
    ) -> Result<T, Error> {
        let (seg, obj) = (self.seg, self.obj);
        if seg.lock_holder() == 0 {
            return op(seg, obj).map_err(Error::Win32);
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime
                .spawn_blocking(move || op(seg, obj))
                .await
                .map_err(|e| Error::Protocol(format!("a local call's thread failed: {e}")))?
                .map_err(Error::Win32),
            Err(_) => op(seg, obj).map_err(Error::Win32),
        }
    }
}

impl Drop for LocalHandle {
    fn drop(&mut self) {
        if let Err(code) = self.obj.close(self.seg) {
            tracing::debug!(%code, "closing a local handle failed");
        }
    }
}

pub(super) type Job = Box<dyn FnOnce() + Send>;

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
    pub(super) async fn run<T: Send + 'static>(
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
pub(super) struct CancelOnDrop(Arc<AtomicU32>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        local::cancel(&self.0);
    }
}

/// What a local wait took, on its way to the awaiting future. Dropped without
/// [`Acquisition::accept`] (the future went away before reading it, at any point), it gives
/// everything back, on the owner thread for mutexes.
pub(super) struct Acquisition {
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
pub(super) async fn local_wait(
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

pub(super) fn local_handle(seg: &'static Segment, obj: LocalObj, already_existed: bool) -> Backing {
    Backing::Local(LocalHandle {
        seg,
        obj,
        already_existed,
    })
}

/// Creates (`Some(params)`) or opens (`None`) the local object `key` of type `kind`, with the
/// type's `…_ALL_ACCESS`. A mutex gets its own owner thread, which runs the create so that it
/// owns a new mutex made with `initial_owner`.
pub(super) async fn make_local(
    kind: ObjectKind,
    key: &str,
    create: Option<CreateParams>,
) -> Result<Made, Error> {
    let seg = local::namespace().map_err(Error::Win32)?;
    let access = kind.all_access();
    let key = key.to_owned();
    // The handle is made where the call runs, as a LocalHandle, so that it is closed if the
    // caller went away; a mutex's owner thread (dropped with the caller) then abandons a
    // mutex it was given to own.
    let make = move || -> Result<(Backing, bool, u64), Win32Error> {
        match create {
            Some(params) => local::create(seg, &key, &params, access).map(|(obj, existed)| {
                let owned = params.initial_owner() && !existed;
                // Read on the owner thread: the token of its own hold.
                let token = if owned { obj.fencing_token(seg) } else { 0 };
                (local_handle(seg, obj, existed), owned, token)
            }),
            None => local::open(seg, kind, &key, access)
                .map(|obj| (local_handle(seg, obj, false), false, 0)),
        }
    };
    let (owner, made) = if kind == ObjectKind::Mutex {
        let owner = Owner::spawn()?;
        let made = owner.run(make).await?;
        (Some(owner), made)
    } else {
        (None, make())
    };
    let (backing, owned, token) = made.map_err(Error::Win32)?;
    Ok(Made {
        backing,
        owner,
        hold: created_hold(owned, token),
    })
}

/// Waits on typed handles that are all local.
pub(super) async fn wait_local_objects(
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
        match route(Some(name)).map_err(Error::Win32)? {
            Route::Local(key) => Ok(key),
            Route::Cluster => Err(Error::InvalidArgument(format!(
                "{name:?} is not a Local\\ name"
            ))),
        }
    }

    /// Creates or opens the local mutex `name` (which must start with `Local\`). With
    /// `initial_owner`, a new mutex starts owned by the returned handle.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a name without the prefix; [`Error::Win32`] as
    /// `CreateMutex` (6 another type, 3/123/206 bad names, 1450 a full table).
    pub async fn create_mutex(&self, name: &str, initial_owner: bool) -> Result<Mutex, Error> {
        let params = CreateParams::Mutex { initial_owner };
        Ok(
            make_local(ObjectKind::Mutex, Self::key(name)?, Some(params))
                .await?
                .mutex(),
        )
    }

    /// Opens the existing local mutex `name`.
    ///
    /// # Errors
    ///
    /// As [`LocalNamespace::create_mutex`], and 2 if there is no such object.
    pub async fn open_mutex(&self, name: &str) -> Result<Mutex, Error> {
        Ok(make_local(ObjectKind::Mutex, Self::key(name)?, None)
            .await?
            .mutex())
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
        Ok(
            make_local(ObjectKind::Event, Self::key(name)?, Some(params))
                .await?
                .event(),
        )
    }

    /// Opens the existing local event `name`.
    ///
    /// # Errors
    ///
    /// As [`LocalNamespace::open_mutex`].
    pub async fn open_event(&self, name: &str) -> Result<Event, Error> {
        Ok(make_local(ObjectKind::Event, Self::key(name)?, None)
            .await?
            .event())
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
        let params = CreateParams::Semaphore {
            initial: initial_count,
            max: maximum_count,
        };
        Ok(
            make_local(ObjectKind::Semaphore, Self::key(name)?, Some(params))
                .await?
                .semaphore(),
        )
    }

    /// Opens the existing local semaphore `name`.
    ///
    /// # Errors
    ///
    /// As [`LocalNamespace::open_mutex`].
    pub async fn open_semaphore(&self, name: &str) -> Result<Semaphore, Error> {
        Ok(make_local(ObjectKind::Semaphore, Self::key(name)?, None)
            .await?
            .semaphore())
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

//! The shared-memory segment: its file, its layout, the versioned header, the namespace lock
//! with its undo journal, and the table of attached processes.
//!
//! # Layout (version 4)
//!
//! ```text
//! Header      magic "DLOCKSHM", version, ready flag, Layout, checksum,
//!             the namespace lock (robust pthread mutex), the undo journal
//! ProcSlot    [PROCS_MAX]     attached processes (liveness: an OFD lock on byte PROC_LOCK_BASE+i)
//! hashes      [OBJECTS_MAX]   name hash per object slot (0: no name); a named object lives at
//!                             or after its hash's home slot (open addressing, linear probing)
//! ObjMeta     [OBJECTS_MAX]   state, kind, name, handle count, event and semaphore state
//! ObjSync     [OBJECTS_MAX]   the lock-free part: robust mutex, waiter count, wake sequence
//! HandleRec   [HANDLES_MAX]   one per open handle: which process holds which object
//! WaiterSlot  [WAITERS_MAX]   one per blocked wait: its objects, what signals granted it, and
//!                             its own wake word (signals wake the waits they granted)
//! ```
//!
//! # Crash safety
//!
//! Everything but [`ObjSync`] changes only under the namespace lock, a robust mutex. Before a
//! change the old bytes of the region are copied into the undo journal ([`Guard::touch`]); the
//! journal is cleared when the change is complete. If a process dies holding the lock, the next
//! locker gets `EOWNERDEAD`, copies the saved bytes back (the half-done change never happened),
//! recounts the waiter counts from the waiter table, and marks the lock consistent. [`ObjSync`]
//! needs no journal: its mutex is the kernel's robust futex, and its counters are either
//! owner-only or recomputed.

use dlock_proto::vocab::Win32Error;
use std::cell::UnsafeCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::sys;
use super::{LocalError, Settings};

/// First bytes of every segment.
pub const MAGIC: [u8; 8] = *b"DLOCKSHM";
/// The layout version this library reads and writes (2: waits carry grants, `Grants`; 3:
/// waits have their own wake word and the header a bitmap of registered waits).
pub const VERSION: u32 = 4;
/// `Header::ready` once the creator finished initialising.
const READY: u32 = 0x5245_4459; // "READY"

/// The most processes attached to one namespace at a time.
pub const PROCS_MAX: usize = 256;
/// The most objects (named or zombie) in one namespace.
pub const OBJECTS_MAX: usize = 4096;
/// The most open handles to local objects, all processes together.
pub const HANDLES_MAX: usize = 65_536;
/// The most threads blocked in local waits, all processes together.
pub const WAITERS_MAX: usize = 1024;
/// Longest name in UTF-8 bytes (260 UTF-16 units are at most 780 bytes).
pub const NAME_BYTES_MAX: usize = dlock_proto::vocab::names::LOCAL_NAME_BYTES_MAX;
/// The most handles one wait names (`MAXIMUM_WAIT_OBJECTS`).
pub const WAIT_OBJECTS_MAX: usize = dlock_proto::vocab::MAXIMUM_WAIT_OBJECTS as usize;
/// Where the per-process liveness locks start (byte offsets of the file, past its end).
const PROC_LOCK_BASE: u64 = 1 << 40;
/// Regions one journaled change may save: the largest change is a signal of a manual-reset
/// event that grants every registered wait (one `Grants` each), each of them a wait-all that
/// consumes other events and semaphores (one field per object, saved once per change).
const JOURNAL_ENTRIES: usize = WAITERS_MAX + 2 * OBJECTS_MAX + 64;
/// Bytes one journaled change may save (whole slots at creation, single fields elsewhere).
const JOURNAL_BYTES: usize = 16 * WAITERS_MAX + 8 * OBJECTS_MAX + 32 * 1024;

/// This library's layout, computed at compile time.
const LAYOUT: Layout = Layout::current();

/// Sizes and offsets of the segment; stored in the header and compared on every attach.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The header's own shape: a change to it (a new field) must not go unnoticed.
    header_size: u64,
    off_ns_lock: u64,
    off_journal: u64,
    procs: u64,
    objects: u64,
    handles: u64,
    waiters: u64,
    name_bytes: u64,
    mutex_size: u64,
    off_procs: u64,
    off_hashes: u64,
    off_meta: u64,
    off_sync: u64,
    off_handles: u64,
    off_waiters: u64,
    len: u64,
}

const fn align_up(n: usize, a: usize) -> usize {
    n.div_ceil(a) * a
}

impl Layout {
    /// The layout of this version on this architecture.
    pub const fn current() -> Layout {
        let off_procs = align_up(size_of::<Header>(), 4096);
        let off_hashes = align_up(off_procs + PROCS_MAX * size_of::<ProcSlot>(), 64);
        let off_meta = align_up(off_hashes + OBJECTS_MAX * 8, 64);
        let off_sync = align_up(off_meta + OBJECTS_MAX * size_of::<ObjMeta>(), 64);
        let off_handles = align_up(off_sync + OBJECTS_MAX * size_of::<ObjSync>(), 64);
        let off_waiters = align_up(off_handles + HANDLES_MAX * size_of::<HandleRec>(), 64);
        let len = align_up(off_waiters + WAITERS_MAX * size_of::<WaiterSlot>(), 4096);
        Layout {
            header_size: size_of::<Header>() as u64,
            off_ns_lock: std::mem::offset_of!(Header, ns_lock) as u64,
            off_journal: std::mem::offset_of!(Header, journal) as u64,
            procs: PROCS_MAX as u64,
            objects: OBJECTS_MAX as u64,
            handles: HANDLES_MAX as u64,
            waiters: WAITERS_MAX as u64,
            name_bytes: NAME_BYTES_MAX as u64,
            mutex_size: size_of::<libc::pthread_mutex_t>() as u64,
            off_procs: off_procs as u64,
            off_hashes: off_hashes as u64,
            off_meta: off_meta as u64,
            off_sync: off_sync as u64,
            off_handles: off_handles as u64,
            off_waiters: off_waiters as u64,
            len: len as u64,
        }
    }

    fn checksum(&self, version: u32) -> u64 {
        let mut h = Fnv::new();
        h.write(&MAGIC);
        h.write(&version.to_le_bytes());
        for v in [
            self.header_size,
            self.off_ns_lock,
            self.off_journal,
            self.procs,
            self.objects,
            self.handles,
            self.waiters,
            self.name_bytes,
            self.mutex_size,
            self.off_procs,
            self.off_hashes,
            self.off_meta,
            self.off_sync,
            self.off_handles,
            self.off_waiters,
            self.len,
        ] {
            h.write(&v.to_le_bytes());
        }
        h.0
    }
}

/// FNV-1a, 64-bit: the header checksum and the name hash (no adversary inside one host's
/// namespace; the full name is compared after the hash).
pub struct Fnv(pub u64);

impl Fnv {
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[repr(C)]
struct JournalEntry {
    offset: AtomicU64,
    len: AtomicU32,
    data_at: AtomicU32,
}

#[repr(C)]
struct Journal {
    /// 1 while a change is in progress: the saved regions must be restored if its owner died.
    active: AtomicU32,
    count: AtomicU32,
    used: AtomicU32,
    _pad: u32,
    entries: [JournalEntry; JOURNAL_ENTRIES],
    data: UnsafeCell<[u8; JOURNAL_BYTES]>,
}

#[repr(C, align(64))]
struct LockCell(UnsafeCell<libc::pthread_mutex_t>);

#[repr(C)]
struct Header {
    magic: [u8; 8],
    version: u32,
    ready: AtomicU32,
    layout: Layout,
    checksum: u64,
    /// The creator's PID namespace (`/proc/self/ns/pid` device and inode; 0 if unknown): lock
    /// words hold thread ids, which mean something only within one PID namespace.
    pid_ns: [u64; 2],
    ns_lock: LockCell,
    /// Changes rolled back after a holder died (diagnostics).
    recoveries: AtomicU64,
    /// The next wait's ticket: signals grant registered waits oldest first.
    next_ticket: AtomicU64,
    /// Bit i: waiter slot i holds a registered wait. Signals walk these bits, not the table
    /// (which would touch a cache line per slot).
    waits_used: [AtomicU64; WAITERS_MAX / 64],
    /// The longest distance from its home slot at which a named object was ever placed
    /// (open addressing, see `objects`): a lookup probes this many slots past the home, no
    /// more. Grows only.
    probe_max: AtomicU32,
    journal: Journal,
}

/// An attached process.
#[repr(C)]
pub struct ProcSlot {
    /// 0 free, 1 live.
    pub state: AtomicU32,
    pub pid: AtomicU32,
    pub generation: AtomicU32,
    _pad: u32,
}

/// Object slot states.
pub const OBJ_FREE: u32 = 0;
/// Named or unnamed, with handles.
pub const OBJ_LIVE: u32 = 1;
/// No handles and no name any more, but a mutex still owned or a wait still registered:
/// freed once neither holds.
pub const OBJ_ZOMBIE: u32 = 2;

/// The part of an object that changes under the namespace lock (and is journaled).
#[repr(C)]
pub struct ObjMeta {
    pub state: AtomicU32,
    /// 1 mutex, 2 event, 3 semaphore.
    pub kind: AtomicU32,
    /// Open handles (handle records) of all processes.
    pub refs: AtomicU32,
    /// Bumped at each allocation of the slot, so stale handles are detected.
    pub generation: AtomicU32,
    pub manual_reset: AtomicU32,
    pub signaled: AtomicU32,
    pub count: AtomicI32,
    pub maximum: AtomicI32,
    pub name_len: AtomicU32,
    _pad: u32,
    pub name: UnsafeCell<[u8; NAME_BYTES_MAX]>,
}

/// The lock-free part of an object, on its own cache lines.
#[repr(C, align(64))]
pub struct ObjSync {
    /// The robust process-shared mutex (mutex objects only).
    pub mutex: UnsafeCell<libc::pthread_mutex_t>,
    /// Registered waits naming this object (changed under the namespace lock, read by releasers).
    pub waiters: AtomicU32,
    /// Bumped on every change that may satisfy a waiter; waiters sleep on it.
    pub seq: AtomicU32,
    /// Mutex recursion count, written only by the owner thread.
    pub recursion: AtomicU32,
    /// Non-zero while a mutex that was acquired abandoned and then given back (a wait-all
    /// that could not complete, a cancelled async wait) is free: its next acquirer reports
    /// `WAIT_ABANDONED`. Set by the giver while it still holds the mutex, so no acquirer can
    /// slip in between and miss it; cleared by the acquirer.
    pub given_back_abandoned: AtomicU32,
    /// Mutex acquisitions from unowned: the fencing token of the current hold.
    pub fencing: AtomicU64,
}

/// One open handle.
#[repr(C)]
pub struct HandleRec {
    /// Holder's process slot + 1; 0 when free.
    pub proc: AtomicU32,
    pub obj: AtomicU32,
}

/// One blocked wait.
#[repr(C)]
pub struct WaiterSlot {
    /// Waiting process slot + 1; 0 when free.
    pub proc: AtomicU32,
    pub tid: AtomicU32,
    pub count: AtomicU32,
    pub wait_all: AtomicU32,
    /// Non-zero once the waiting thread has returned without being able to leave the registry
    /// (its deadline passed, or it was cancelled, while the namespace lock was held for
    /// long): signals skip it, and a locker of its process removes it. Set without the lock.
    pub ended: AtomicU32,
    /// Bumped and woken by a signal that grants this wait: a waiter sleeps on it (besides its
    /// mutexes), so a signal wakes the waits it satisfied and no others.
    pub wake: AtomicU32,
    /// The order of registration (from the header's counter): signals serve the oldest wait
    /// first, so a thread that waits again at once cannot starve the others.
    pub ticket: AtomicU64,
    /// What signals handed this wait (see the `grant` module).
    pub grants: Grants,
    pub objs: [AtomicU32; WAIT_OBJECTS_MAX],
}

/// What signals handed one registered wait, by index into its objects. A wait-any holds at
/// most one index; a wait-all holds every event and semaphore of its set at once.
#[repr(C)]
pub struct Grants {
    /// Bit i: the event at index i released the wait without being consumed (a manual-reset
    /// event set, or a pulse): nothing to give back.
    pub released: AtomicU64,
    /// Bit i: a unit of object i (an auto-reset event's signal, a semaphore count) was moved
    /// from the object to this wait: given back to the object if the wait does not use it.
    pub granted: AtomicU64,
}

impl Grants {
    /// Every index granted or released.
    pub fn any(&self) -> u64 {
        self.released.load(Ordering::Relaxed) | self.granted.load(Ordering::Relaxed)
    }
}

impl WaiterSlot {
    /// The object slots this wait names (its count clamped, so a damaged count cannot index
    /// past the array).
    pub fn objects(&self) -> impl Iterator<Item = usize> + '_ {
        let n = (self.count.load(Ordering::Relaxed) as usize).min(WAIT_OBJECTS_MAX);
        self.objs[..n]
            .iter()
            .map(|o| o.load(Ordering::Relaxed) as usize)
    }
}

/// One attached namespace (process-wide; never unmapped).
pub struct Segment {
    base: *mut u8,
    /// Kept open for the life of the process: it carries this process's liveness lock.
    file: File,
    path: PathBuf,
    /// This process's slot in the process table.
    proc_slot: u32,
    /// The longest [`Segment::lock`] waits for the namespace lock.
    lock_timeout: Duration,
    /// Waits of this process that ended (their deadline passed, they were cancelled) while the
    /// namespace lock could not be taken: removed from the registry by the next locker of
    /// this process.
    deferred: StdMutex<Vec<usize>>,
    /// Whether `deferred` may hold something (so lockers need not look).
    has_deferred: AtomicBool,
    /// When this process last reclaimed dead processes from a wait (ms since `epoch`).
    last_reap_ms: AtomicU64,
    /// This process's clock origin for `last_reap_ms`.
    epoch: Instant,
    /// Full reclaims of dead processes run through this segment (diagnostics, tests).
    pub(crate) reaps: AtomicU64,
    /// Looks a blocked wait of this process took under the lock after sleeping (tests).
    pub(crate) looks: AtomicU64,
    /// Object slots this process's name lookups compared (tests).
    pub(crate) probes: AtomicU64,
    /// Unnamed objects this process created (spreads them over the object table).
    pub(crate) unnamed_created: AtomicU64,
}

// SAFETY: the mapping is shared memory designed for concurrent use; every access goes through
// atomics, the robust mutexes, or the namespace lock.
unsafe impl Send for Segment {}
// SAFETY: as above.
unsafe impl Sync for Segment {}

impl Segment {
    /// Opens the namespace file of `settings`, creating it if missing, validates it, and
    /// registers this process in it.
    pub fn attach(settings: &Settings) -> Result<Segment, LocalError> {
        sys::check_glibc_layout().map_err(LocalError::Unsupported)?;
        sys::check_futex_waitv().map_err(LocalError::Unsupported)?;
        sys::install_fork_handler();
        let path = settings.segment_path();
        let dir = path.parent().unwrap_or(Path::new("/"));
        check_settings(settings).map_err(|why| LocalError::Untrusted {
            path: settings.segment_path(),
            why,
        })?;
        ensure_dir(dir, settings).map_err(|e| LocalError::io(dir, e))?;
        let file = match open_existing(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => create(&path, settings)?,
            Err(e) => return Err(LocalError::io(&path, e)),
        };
        let len = Layout::current().len;
        let meta = file.metadata().map_err(|e| LocalError::io(&path, e))?;
        check_owner(&meta, settings).map_err(|why| LocalError::Untrusted {
            path: path.clone(),
            why,
        })?;
        let actual = meta.len();
        if actual != len {
            return Err(LocalError::Corrupt {
                path,
                why: format!(
                    "the file is {actual} bytes, layout version {VERSION} needs {len} \
                     (another dlock version, or not a dlock segment)"
                ),
            });
        }
        let base = map(&file, len as usize).map_err(|e| LocalError::io(&path, e))?;
        let mut seg = Segment {
            base,
            file,
            path,
            // No slot yet: every slot's liveness is tested while registering.
            proc_slot: u32::MAX,
            lock_timeout: settings.lock_timeout,
            deferred: StdMutex::new(Vec::new()),
            has_deferred: AtomicBool::new(false),
            last_reap_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            reaps: AtomicU64::new(0),
            looks: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            unnamed_created: AtomicU64::new(0),
        };
        let attached = seg.validate().and_then(|()| seg.register_process());
        match attached {
            Ok(slot) => seg.proc_slot = slot,
            Err(e) => {
                // Nothing of this process is in the segment: give the mapping back.
                // SAFETY: mapped above with this length; no reference into it outlives `seg`,
                // which is forgotten without running anything that reads it.
                unsafe { libc::munmap(seg.base.cast(), len as usize) };
                return Err(e);
            }
        }
        sys::mark_attached();
        tracing::debug!(path = %seg.path.display(), slot = seg.proc_slot, "attached to the local namespace");
        Ok(seg)
    }

    fn validate(&self) -> Result<(), LocalError> {
        let h = self.header();
        let corrupt = |why: String| LocalError::Corrupt {
            path: self.path.clone(),
            why,
        };
        if h.magic != MAGIC {
            return Err(corrupt("bad magic: not a dlock local segment".into()));
        }
        if h.version != VERSION {
            return Err(LocalError::Version {
                path: self.path.clone(),
                found: h.version,
            });
        }
        if h.ready.load(Ordering::Acquire) != READY {
            return Err(corrupt("the creator never finished initialising it".into()));
        }
        if h.layout != Layout::current() {
            return Err(corrupt(format!(
                "layout {:?} differs from this library's",
                h.layout
            )));
        }
        if h.checksum != h.layout.checksum(h.version) {
            return Err(corrupt("header checksum mismatch".into()));
        }
        let ours = pid_namespace();
        if h.pid_ns != [0, 0] && ours != [0, 0] && h.pid_ns != ours {
            return Err(LocalError::Unsupported(format!(
                "{} was created in another PID namespace: thread ids (which mutexes record) \
                 differ between PID namespaces, so processes sharing a Local\\ namespace must \
                 share their PID namespace too (containers: --pid=host or --pid=container:NAME)",
                self.path.display()
            )));
        }
        Ok(())
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping is at least Layout::current().len bytes, page-aligned.
        unsafe { &*self.base.cast::<Header>() }
    }

    /// The file's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This process's slot.
    pub fn proc_slot(&self) -> u32 {
        self.proc_slot
    }

    #[inline]
    fn array<T>(&self, offset: u64, len: usize) -> &[T] {
        // SAFETY: offsets and lengths come from Layout::current(), validated against the file.
        unsafe { std::slice::from_raw_parts(self.base.add(offset as usize).cast::<T>(), len) }
    }

    #[inline]
    pub fn procs(&self) -> &[ProcSlot] {
        self.array(LAYOUT.off_procs, PROCS_MAX)
    }

    #[inline]
    pub fn hashes(&self) -> &[AtomicU64] {
        self.array(LAYOUT.off_hashes, OBJECTS_MAX)
    }

    #[inline]
    pub fn metas(&self) -> &[ObjMeta] {
        self.array(LAYOUT.off_meta, OBJECTS_MAX)
    }

    #[inline]
    pub fn syncs(&self) -> &[ObjSync] {
        self.array(LAYOUT.off_sync, OBJECTS_MAX)
    }

    #[inline]
    pub fn handles(&self) -> &[HandleRec] {
        self.array(LAYOUT.off_handles, HANDLES_MAX)
    }

    #[inline]
    pub fn waiters(&self) -> &[WaiterSlot] {
        self.array(LAYOUT.off_waiters, WAITERS_MAX)
    }

    /// Takes the namespace lock, repairing the segment first if the previous holder died.
    ///
    /// # Errors
    ///
    /// `ERROR_TIMEOUT` if another thread held it for longer than the lock timeout
    /// (`DLOCK_LOCAL_LOCK_TIMEOUT_MS`: a process that is stopped, frozen or in a debugger; the
    /// holder is logged); `ERROR_FILE_CORRUPT` if the lock is unusable (`ENOTRECOVERABLE` or
    /// another error from glibc, which dlock's own use can never cause).
    pub fn lock(&self) -> Result<Guard<'_>, Win32Error> {
        match self.lock_until(Instant::now() + self.lock_timeout)? {
            Some(g) => Ok(g),
            None => {
                tracing::error!(
                    path = %self.path.display(),
                    holder = %self.lock_holder_description(),
                    timeout_ms = self.lock_timeout.as_millis() as u64,
                    "the local namespace lock was held by another process for longer than \
                     DLOCK_LOCAL_LOCK_TIMEOUT_MS; failing the call with ERROR_TIMEOUT"
                );
                Err(Win32Error::TIMEOUT)
            }
        }
    }

    /// Takes the namespace lock unless `deadline` passes first (`Ok(None)`), repairing the
    /// segment first if the previous holder died, and finishing this process's deferred
    /// removals of waits.
    ///
    /// # Errors
    ///
    /// As [`Segment::lock`], without the timeout.
    pub fn lock_until(&self, deadline: Instant) -> Result<Option<Guard<'_>>, Win32Error> {
        let m = self.header().ns_lock.0.get();
        // SAFETY: initialised by the creator; the mapping lives forever.
        let attempt = unsafe { sys::robust_lock_until(m, deadline) };
        match attempt {
            Ok(None) => return Ok(None),
            Ok(Some(sys::Locked::OwnerDied)) => {
                self.recover(&Held {
                    _private: std::marker::PhantomData,
                });
                // SAFETY: we hold it.
                unsafe { sys::robust_consistent(m) };
            }
            Ok(Some(_)) => {}
            Err(code) => {
                tracing::error!(
                    path = %self.path.display(),
                    code,
                    "the local namespace lock is unusable; remove the file once no process uses it"
                );
                return Err(Win32Error::FILE_CORRUPT);
            }
        }
        let mut g = Guard {
            seg: self,
            open: false,
            held: Held {
                _private: std::marker::PhantomData,
            },
        };
        if self.has_deferred.load(Ordering::Acquire) {
            let slots =
                std::mem::take(&mut *self.deferred.lock().unwrap_or_else(|e| e.into_inner()));
            self.has_deferred.store(false, Ordering::Release);
            let me = self.proc_slot + 1;
            for slot in slots {
                // Still this process's wait: nobody else frees a live process's slot.
                if self
                    .waiters()
                    .get(slot)
                    .is_some_and(|w| w.proc.load(Ordering::Relaxed) == me)
                {
                    g.unregister(slot);
                    g.commit();
                }
            }
        }
        Ok(Some(g))
    }

    /// The next wait ticket (under the lock, journaled by the caller's change).
    pub(crate) fn take_ticket(&self, g: &mut Guard<'_>) -> u64 {
        let counter = &self.header().next_ticket;
        g.touch(counter);
        let ticket = counter.load(Ordering::Relaxed) + 1;
        counter.store(ticket, Ordering::Relaxed);
        ticket
    }

    /// Leaves the removal of this process's wait `slot` from the registry (and the return of
    /// anything granted to it) to the next call that takes the namespace lock; meanwhile no
    /// signal grants it anything.
    pub(crate) fn defer_unregister(&self, slot: usize) {
        if let Some(w) = self.waiters().get(slot) {
            w.ended.store(1, Ordering::Release);
        }
        self.deferred
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot);
        self.has_deferred.store(true, Ordering::Release);
    }

    /// The [`LocalError`] for a failure of [`Segment::lock`].
    pub fn lock_error(&self, code: Win32Error) -> LocalError {
        if code == Win32Error::TIMEOUT {
            LocalError::LockHeld {
                path: self.path.clone(),
                holder: self.lock_holder_description(),
                waited_ms: self.lock_timeout.as_millis() as u64,
            }
        } else {
            LocalError::Corrupt {
                path: self.path.clone(),
                why: "its namespace lock is unusable".into(),
            }
        }
    }

    /// The kernel id of the thread holding the namespace lock now, 0 if none.
    pub fn lock_holder(&self) -> u32 {
        // SAFETY: the namespace lock lives in the mapping, which is never unmapped.
        let word = unsafe { sys::lock_word(self.header().ns_lock.0.get()) };
        word.load(Ordering::SeqCst) & sys::FUTEX_TID_MASK
    }

    /// The namespace lock's holder, as an operator can find it: thread, process, name and
    /// state (`T (stopped)`, ...) from `/proc`.
    pub fn lock_holder_description(&self) -> String {
        match self.lock_holder() {
            0 => "nobody (free now)".into(),
            tid => describe_thread(tid),
        }
    }

    /// Whether `interval` has passed since this process last reaped from a wait (and if so,
    /// records now).
    pub(crate) fn reap_due(&self, interval: Duration) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64 + interval.as_millis() as u64;
        let last = self.last_reap_ms.load(Ordering::Relaxed);
        now >= last + interval.as_millis() as u64
            && self
                .last_reap_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// The configured lock timeout.
    pub fn lock_timeout(&self) -> Duration {
        self.lock_timeout
    }

    /// Undoes the change a dead holder left half done and recounts derived counters.
    fn recover(&self, held: &Held) {
        let restored = self.undo(held);
        self.recount_waiters(held);
        let total = self.header().recoveries.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(
            path = %self.path.display(),
            restored,
            total,
            "a process died holding the local namespace lock; its unfinished change was rolled back"
        );
    }

    /// Copies the journal's saved regions back, newest first, and clears it. Returns how many
    /// regions were restored.
    fn undo(&self, _held: &Held) -> usize {
        let j = &self.header().journal;
        let mut restored = 0;
        if j.active.load(Ordering::Acquire) == 1 {
            let count = (j.count.load(Ordering::Acquire) as usize).min(JOURNAL_ENTRIES);
            for e in j.entries[..count].iter().rev() {
                let offset = e.offset.load(Ordering::Relaxed);
                let len = e.len.load(Ordering::Relaxed) as usize;
                let at = e.data_at.load(Ordering::Relaxed) as usize;
                // A corrupt entry is skipped rather than trusted with a wild copy.
                if at + len > JOURNAL_BYTES || offset.saturating_add(len as u64) > LAYOUT.len {
                    tracing::error!(offset, len, at, "skipping a corrupt journal entry");
                    continue;
                }
                // SAFETY: bounds checked above; we hold the namespace lock (`_held`).
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        j.data.get().cast::<u8>().add(at),
                        self.base.add(offset as usize),
                        len,
                    );
                }
                restored += 1;
            }
        }
        j.count.store(0, Ordering::Relaxed);
        j.used.store(0, Ordering::Relaxed);
        j.active.store(0, Ordering::Release);
        restored
    }

    /// The waiter slots that hold a registered wait, in slot order (read under the lock).
    pub(crate) fn registered_waits(&self, _held: &Held) -> Vec<usize> {
        let mut slots = Vec::new();
        for (i, word) in self.header().waits_used.iter().enumerate() {
            let mut bits = word.load(Ordering::Relaxed);
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                slots.push(i * 64 + b);
                bits &= bits - 1;
            }
        }
        slots
    }

    /// The header's probe bound for name lookups (see `objects`).
    pub(crate) fn probe_max(&self) -> &AtomicU32 {
        &self.header().probe_max
    }

    /// The bitmap word holding waiter slot `slot`'s bit, and the bit.
    pub(crate) fn waits_used_bit(&self, slot: usize) -> (&AtomicU64, u64) {
        (&self.header().waits_used[slot / 64], 1 << (slot % 64))
    }

    /// The first free waiter slot according to the bitmap.
    pub(crate) fn free_wait_slot(&self, _held: &Held) -> Option<usize> {
        self.header()
            .waits_used
            .iter()
            .enumerate()
            .find_map(|(i, w)| {
                let free = !w.load(Ordering::Relaxed);
                (free != 0).then(|| i * 64 + free.trailing_zeros() as usize)
            })
            .filter(|&slot| slot < WAITERS_MAX)
    }

    /// Recomputes every object's waiter count, and the bitmap of registered waits, from the
    /// waiter table.
    pub(crate) fn recount_waiters(&self, _held: &Held) {
        let syncs = self.syncs();
        let mut counts = vec![0u32; OBJECTS_MAX];
        let mut used = [0u64; WAITERS_MAX / 64];
        for (slot, w) in self.waiters().iter().enumerate() {
            if w.proc.load(Ordering::Relaxed) == 0 {
                continue;
            }
            used[slot / 64] |= 1 << (slot % 64);
            for o in w.objects() {
                if let Some(c) = counts.get_mut(o) {
                    *c += 1;
                }
            }
        }
        for (s, c) in syncs.iter().zip(counts) {
            s.waiters.store(c, Ordering::SeqCst);
        }
        for (word, bits) in self.header().waits_used.iter().zip(used) {
            word.store(bits, Ordering::Relaxed);
        }
    }

    /// Test hook: damages the journal's counters, as a stray write from outside would.
    #[cfg(test)]
    pub fn damage_journal_for_test(&self) {
        let j = &self.header().journal;
        j.count.store(u32::MAX, Ordering::Relaxed);
        j.used.store(u32::MAX, Ordering::Relaxed);
    }

    /// Number of journal recoveries so far.
    #[cfg(test)]
    pub fn recoveries(&self) -> u64 {
        self.header().recoveries.load(Ordering::Relaxed)
    }

    fn proc_lock_offset(slot: usize) -> u64 {
        PROC_LOCK_BASE + slot as u64
    }

    /// Claims a process slot: reclaims dead processes first, then takes a free slot's liveness
    /// lock and marks it live.
    fn register_process(&self) -> Result<u32, LocalError> {
        let mut g = self.lock().map_err(|e| self.lock_error(e))?;
        for slot in 0..PROCS_MAX {
            if self.procs()[slot].state.load(Ordering::Relaxed) != 0 {
                g.reap_if_dead(slot as u32, u32::MAX);
            }
        }
        let fd = self.file.as_fd();
        for (i, p) in self.procs().iter().enumerate() {
            if p.state.load(Ordering::Relaxed) != 0 {
                continue;
            }
            match sys::ofd_try_lock(fd, Self::proc_lock_offset(i)) {
                Ok(true) => {}
                // A process that died a moment ago may still be closing its files.
                Ok(false) => continue,
                Err(e) => return Err(LocalError::io(&self.path, e)),
            }
            g.touch(p);
            p.pid.store(std::process::id(), Ordering::Relaxed);
            p.generation.fetch_add(1, Ordering::Relaxed);
            p.state.store(1, Ordering::Relaxed);
            g.commit();
            return Ok(i as u32);
        }
        Err(LocalError::Full("processes"))
    }

    /// Whether process slot `slot` belongs to a process that is gone.
    pub fn is_dead(&self, slot: u32) -> bool {
        if slot == self.proc_slot {
            return false;
        }
        match sys::ofd_is_locked(self.file.as_fd(), Self::proc_lock_offset(slot as usize)) {
            Ok(locked) => !locked,
            Err(e) => {
                tracing::warn!(slot, error = %e, "cannot test a process's liveness lock");
                false
            }
        }
    }
}

impl Segment {
    /// Test hook: closes this process's descriptor of the segment behind its back, as a
    /// daemon closing every descriptor would (the mapping stays).
    #[cfg(test)]
    pub fn close_descriptor_for_test(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: closes a descriptor this process owns; the caller leaks the segment, so
        // its `File` is never closed a second time.
        unsafe { libc::close(self.file.as_raw_fd()) };
    }
}

/// Test hook: a process that sets it is SIGKILLed right after its next commit, still holding
/// the namespace lock: the window between a change becoming permanent and everything that
/// follows it (the unlock, a wake).
#[cfg(test)]
pub static DIE_AFTER_COMMIT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The namespace lock, held. Every change to journaled memory goes through [`Guard::touch`]
/// first; [`Guard::commit`] makes it permanent. Dropping the guard with a change still open
/// (an early error return, a panic) undoes it, as a crash would be undone.
pub struct Guard<'a> {
    pub seg: &'a Segment,
    open: bool,
    /// The proof that this thread holds the lock, for what reads lock-protected bytes.
    pub held: Held,
}

/// Proof that the calling thread holds the namespace lock. Only [`Segment::lock`] makes one,
/// once the lock is taken, and keeps it in the [`Guard`] it returns (borrowed from there, it
/// cannot outlive the hold, and it cannot leave the thread that took the lock). Code that reads
/// bytes the lock protects takes a `&Held`, code that writes them a `&mut Held` (or a
/// [`Guard`]), so that holding the lock, and no reader alive during a write, is checked by
/// the compiler, not by a comment. It does not name the segment: a process with several
/// namespaces must pass the one of the same segment (every call site does).
pub struct Held {
    /// Not `Send` or `Sync`: the proof belongs to the thread that took the lock.
    _private: std::marker::PhantomData<*const ()>,
}

impl Guard<'_> {
    /// Saves `region`'s current bytes in the journal (once per change) so a crash before
    /// [`Guard::commit`] restores them.
    pub fn touch<T>(&mut self, region: &T) {
        let j = &self.seg.header().journal;
        let ptr = (region as *const T).cast::<u8>();
        let offset = ptr as u64 - self.seg.base as u64;
        let len = size_of::<T>();
        if !self.open {
            // A change starts with an empty journal (commit and recovery leave it so); damaged
            // counters from outside must not make the slices below panic in every process.
            if j.count.load(Ordering::Relaxed) != 0 || j.used.load(Ordering::Relaxed) != 0 {
                tracing::error!(
                    path = %self.seg.path.display(),
                    "the local namespace journal was not empty at the start of a change; \
                     resetting it"
                );
                j.count.store(0, Ordering::Relaxed);
                j.used.store(0, Ordering::Relaxed);
            }
        }
        let count = (j.count.load(Ordering::Relaxed) as usize).min(JOURNAL_ENTRIES);
        // Already saved if a saved region contains it (saving an overlapping larger region
        // again is harmless: restores run newest first, so the oldest bytes win).
        if j.entries[..count].iter().any(|e| {
            let start = e.offset.load(Ordering::Relaxed);
            let end = start + u64::from(e.len.load(Ordering::Relaxed));
            start <= offset && offset + len as u64 <= end
        }) {
            return;
        }
        let used = j.used.load(Ordering::Relaxed) as usize;
        assert!(
            count < JOURNAL_ENTRIES && used + len <= JOURNAL_BYTES,
            "one local namespace change saves more than the journal holds (a bug)"
        );
        // SAFETY: bounds asserted above; the region lies in the mapping; we hold the lock.
        unsafe {
            std::ptr::copy_nonoverlapping(ptr, j.data.get().cast::<u8>().add(used), len);
        }
        let e = &j.entries[count];
        e.offset.store(offset, Ordering::Relaxed);
        e.len.store(len as u32, Ordering::Relaxed);
        e.data_at.store(used as u32, Ordering::Relaxed);
        j.used.store((used + len) as u32, Ordering::Relaxed);
        // The entry's bytes come first: a process killed between any two stores leaves either
        // the old count or a complete entry (Release orders them, for the compiler as well).
        j.count.store(count as u32 + 1, Ordering::Release);
        if !self.open {
            // The entry is complete before the journal says it must be replayed.
            j.active.store(1, Ordering::Release);
            self.open = true;
        }
        // The caller's change must not be emitted before the saved bytes: a SIGKILL can land
        // between any two stores, and only program order matters for a dead process's stores.
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
    }

    /// Ends the current change: from here on it is permanent.
    pub fn commit(&mut self) {
        if !self.open {
            return;
        }
        let j = &self.seg.header().journal;
        j.active.store(0, Ordering::Release);
        j.count.store(0, Ordering::Relaxed);
        j.used.store(0, Ordering::Relaxed);
        self.open = false;
        #[cfg(test)]
        if DIE_AFTER_COMMIT.load(Ordering::SeqCst) {
            // SAFETY: raise has no preconditions; SIGKILL ends the process here.
            unsafe { libc::raise(libc::SIGKILL) };
        }
    }

    /// Test hook: leaves the change open and the lock held, as a process killed mid-change would.
    #[cfg(test)]
    pub fn abandon_for_test(self) {
        std::mem::forget(self);
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if self.open {
            let restored = self.seg.undo(&self.held);
            self.seg.recount_waiters(&self.held);
            tracing::debug!(restored, "rolled back an unfinished local namespace change");
            self.open = false;
        }
        // SAFETY: we hold the lock.
        unsafe { sys::robust_unlock(self.seg.header().ns_lock.0.get()) };
    }
}

/// Thread `tid` as `/proc` shows it: "thread 1234 of process 1230 (name), state T (stopped)".
fn describe_thread(tid: u32) -> String {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return format!("thread {tid} (not visible in /proc: another PID namespace, or gone)");
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| "?".into())
    };
    format!(
        "thread {tid} of process {} ({}), state {}",
        field("Tgid:"),
        field("Name:"),
        field("State:")
    )
}

/// This process's PID namespace as (device, inode) of `/proc/self/ns/pid`; zeros if `/proc`
/// is not available.
fn pid_namespace() -> [u64; 2] {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid")
        .map(|m| [m.dev(), m.ino()])
        .unwrap_or([0, 0])
}

/// Refuses a segment another user could have planted or can write. Its memory is trusted with
/// pointers that glibc and the kernel follow (every attached thread's robust list links the
/// mutexes it holds), so whoever can write the file can make them write into every attached
/// process: it is shared with its owner and, if configured, the one group named by
/// `DLOCK_LOCAL_GROUP`, whose members are trusted as much as the owner. It must be a regular
/// file with no permission for other users; ours, or of that group; and if the group may
/// access it, that group must be the configured one.
fn check_owner(meta: &std::fs::Metadata, settings: &Settings) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(format!(
            "open to other users (mode {mode:o}); remove it once no process uses it (an older \
             dlock may have made it so)"
        ));
    }
    let group_ok = settings.mode & 0o060 != 0 && settings.group == Some(meta.gid());
    if mode & 0o060 != 0 && !group_ok {
        return Err(format!(
            "open to group {} (mode {mode:o}), but this process shares namespaces with no \
             group or another one (DLOCK_LOCAL_MODE=660 and DLOCK_LOCAL_GROUP={} would trust \
             it; or chmod 600 the file, or remove it once no process uses it)",
            meta.gid(),
            meta.gid()
        ));
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && !group_ok {
        return Err(format!(
            "owned by uid {}, not by this user ({me}), and not shared through \
             DLOCK_LOCAL_GROUP (another user may have created it first: point DLOCK_LOCAL_DIR \
             at a directory only you can write, or choose another DLOCK_LOCAL_NAMESPACE)",
            meta.uid()
        ));
    }
    Ok(())
}

/// Creates the segment's directory if missing: its parents with the search rights the mode
/// implies; itself owner only until it belongs to the named group (when the mode shares with
/// one), then with those rights. A directory another process created meanwhile is left as it
/// is; one this process could not finish is removed again.
fn ensure_dir(dir: &Path, settings: &Settings) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
        && !parent.is_dir()
    {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, dir_mode(settings.mode));
        builder.create(parent)?;
    }
    let mut builder = std::fs::DirBuilder::new();
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    match builder.create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    let finish = || -> io::Result<()> {
        if settings.mode & 0o060 != 0
            && let Some(gid) = settings.group
        {
            std::os::unix::fs::chown(dir, None, Some(gid))?;
        }
        std::fs::set_permissions(
            dir,
            std::fs::Permissions::from_mode(dir_mode(settings.mode)),
        )
    };
    finish().inspect_err(|_| {
        let _ = std::fs::remove_dir(dir);
    })
}

/// Refuses settings that would make a segment others could write, whether they came from the
/// environment or from [`crate::configure`]: a mode of `600` or `660` only, and `660` only
/// with the one group named.
fn check_settings(settings: &Settings) -> Result<(), String> {
    match (settings.mode, settings.group) {
        (0o600, _) => Ok(()),
        (0o660, Some(_)) => Ok(()),
        (0o660, None) => Err(
            "DLOCK_LOCAL_MODE 660 shares the namespace with a group, but \
             DLOCK_LOCAL_GROUP names none (or could not be resolved: see the log); set it, or \
             use mode 600"
                .into(),
        ),
        (mode, _) => Err(format!(
            "DLOCK_LOCAL_MODE {mode:o} is not allowed: use 600 (this user only) or 660 with \
             DLOCK_LOCAL_GROUP (one named group)"
        )),
    }
}

/// The directory mode for a file mode: execute wherever read is granted.
fn dir_mode(mode: u32) -> u32 {
    mode | ((mode & 0o444) >> 2)
}

fn open_existing(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
}

/// Creates and initialises the segment under a temporary name, then links it into place, so
/// no process ever sees a half-initialised file. Losing the race to another creator is fine:
/// its file is opened instead.
fn create(path: &Path, settings: &Settings) -> Result<File, LocalError> {
    let mode = settings.mode;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(format!(
        ".{}.{}.{:x}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("dlock"),
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let io_err = |e| LocalError::io(path, e);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        // Owner only until it belongs to the named group: a descriptor opened meanwhile by a
        // member of another group would keep its access after the change.
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(io_err)?;
    let result = (|| {
        // The group that may share it, before its mode lets the group in (the creator must
        // belong to it, or be root).
        if mode & 0o060 != 0
            && let Some(gid) = settings.group
        {
            std::os::unix::fs::fchown(&file, None, Some(gid))?;
        }
        // The umask may have narrowed the mode; the configured one is what counts.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        let layout = Layout::current();
        file.set_len(layout.len)?;
        let base = map(&file, layout.len as usize)?;
        // SAFETY: a fresh, zero-filled, private-to-us mapping of the right size.
        unsafe {
            let h = &mut *base.cast::<Header>();
            h.magic = MAGIC;
            h.version = VERSION;
            h.layout = layout;
            h.checksum = layout.checksum(VERSION);
            h.pid_ns = pid_namespace();
            sys::robust_mutex_init(h.ns_lock.0.get())?;
            // Every object's mutex is initialised once, here, and never again: a thread of a
            // stale handle may be inside glibc on it at any time, and re-initialising a mutex
            // a robust list links would corrupt that list.
            let syncs = base.add(layout.off_sync as usize).cast::<ObjSync>();
            for i in 0..OBJECTS_MAX {
                sys::robust_mutex_init((*syncs.add(i)).mutex.get())?;
            }
            h.ready.store(READY, Ordering::Release);
            libc::munmap(base.cast(), layout.len as usize);
        }
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match result {
        Ok(()) => {
            tracing::info!(path = %path.display(), mode = format!("{mode:o}"), "created the local namespace");
            Ok(file)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => open_existing(path).map_err(io_err),
        Err(e) => Err(io_err(e)),
    }
}

fn map(file: &File, len: usize) -> io::Result<*mut u8> {
    use std::os::fd::AsRawFd;
    // SAFETY: a shared read-write mapping of a file we opened read-write; never unmapped
    // except by `create`, which unmaps its own temporary view.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p.cast())
}

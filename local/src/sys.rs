//! The system interfaces of the local backend, each wrapped once: futexes (wake, `futex_waitv`),
//! glibc's robust process-shared mutexes, open-file-description locks, and the cached kernel
//! thread id.
//!
//! Everything unsafe about talking to the kernel and to glibc lives here, with its reasoning.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::AtomicU32;
use std::time::Instant;

use rustix::thread::futex;

/// `FUTEX_TID_MASK`: the owner's kernel thread id in a robust mutex word.
pub const FUTEX_TID_MASK: u32 = 0x3FFF_FFFF;
/// `FUTEX_WAITERS`: somebody sleeps (or may sleep) on the word; the unlocker must wake.
pub const FUTEX_WAITERS: u32 = 0x8000_0000;
/// `FUTEX_OWNER_DIED`: the kernel sets this when the owner exited holding the lock.
pub const FUTEX_OWNER_DIED: u32 = 0x4000_0000;
/// The most futexes one `futex_waitv` call takes (`FUTEX_WAITV_MAX`).
pub const FUTEX_WAITV_MAX: usize = 128;

thread_local! {
    /// The calling thread's kernel id, cached: `gettid` is a system call, and the fast path
    /// makes none. Reset in a forked child (see [`install_fork_handler`]).
    static TID: Cell<u32> = const { Cell::new(0) };
}

/// The calling thread's kernel thread id (the value a robust mutex word holds for its owner).
#[inline]
pub fn tid() -> u32 {
    TID.try_with(|t| {
        let v = t.get();
        if v != 0 {
            return v;
        }
        let v = gettid();
        t.set(v);
        v
    })
    .unwrap_or_else(|_| gettid())
}

fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions. A TID is a positive i32.
    (unsafe { libc::gettid() }) as u32
}

/// Set in a child made by `fork` after this process attached a namespace.
static FORKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Set once this process has a slot in a namespace.
static ATTACHED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Records that this process holds a slot in a namespace (a child forked from now on shares it).
pub fn mark_attached() {
    ATTACHED.store(true, std::sync::atomic::Ordering::Relaxed);
}

extern "C" fn reset_tid_in_child() {
    let _ = TID.try_with(|t| t.set(0));
    if ATTACHED.load(std::sync::atomic::Ordering::Relaxed) {
        FORKED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether this process is a child made by `fork` after its parent attached a namespace: it
/// shares the parent's process slot (and so its liveness), so it must not use the namespace
/// before it `exec`s.
#[inline]
pub fn forked_child() -> bool {
    FORKED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Makes a forked child re-read its thread id (the child's only thread has a new one), once
/// per process however many attaches are tried.
pub fn install_fork_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a handler that only writes a thread-local Cell and an atomic.
        unsafe {
            libc::pthread_atfork(None, None, Some(reset_tid_in_child));
        }
    });
}

/// Wakes up to `count` waiters of a shared (non-private) futex word.
pub fn futex_wake(word: &AtomicU32, count: u32) {
    // The only failure is EFAULT on a bad address, impossible for a reference.
    let _ = futex::wake(word, futex::Flags::empty(), count);
}

/// One word and the value it must still hold for `futex_waitv` to sleep.
pub struct WaitOn<'a> {
    pub word: &'a AtomicU32,
    pub expected: u32,
}

/// How a `futex_waitv` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// Woken through the word at this index (of the slice passed in).
    Index(usize),
    /// A word already differed from its expected value, or a signal interrupted the sleep.
    Changed,
    /// The deadline passed.
    TimedOut,
    /// The kernel refused the call (a seccomp filter, for example): waiting cannot work.
    Failed(i32),
}

/// Sleeps until one of `words` is woken, one differs from its expected value, or `deadline`
/// passes (`None`: never). At most [`FUTEX_WAITV_MAX`] words.
pub fn futex_waitv(words: &[WaitOn<'_>], deadline: Option<Instant>) -> Woke {
    debug_assert!(!words.is_empty() && words.len() <= FUTEX_WAITV_MAX);
    let mut waits = [futex::Wait::new(); FUTEX_WAITV_MAX];
    for (slot, w) in waits.iter_mut().zip(words) {
        slot.val = u64::from(w.expected);
        slot.uaddr = futex::WaitPtr::new(w.word.as_ptr().cast());
        // Shared (no FUTEX2_PRIVATE): processes mapping the same file meet on the same futex.
        slot.flags = futex::WaitFlags::SIZE_U32;
    }
    let timeout = match deadline {
        None => None,
        Some(deadline) => {
            let now = Instant::now();
            if deadline <= now {
                return Woke::TimedOut;
            }
            Some(monotonic_after(deadline - now))
        }
    };
    match futex::waitv(
        &waits[..words.len()],
        futex::WaitvFlags::empty(),
        timeout.as_ref(),
        rustix::time::ClockId::Monotonic,
    ) {
        Ok(index) => Woke::Index(index),
        Err(rustix::io::Errno::TIMEDOUT) => Woke::TimedOut,
        // A value changed before the sleep, or a signal interrupted it: look again.
        Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => Woke::Changed,
        Err(e) => Woke::Failed(e.raw_os_error()),
    }
}

/// The absolute `CLOCK_MONOTONIC` time `after` from now (futex_waitv takes absolute times).
fn monotonic_after(after: std::time::Duration) -> rustix::time::Timespec {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let nanos = i128::from(now.tv_sec) * 1_000_000_000
        + i128::from(now.tv_nsec)
        + i128::try_from(after.as_nanos()).unwrap_or(i128::MAX / 2);
    rustix::time::Timespec {
        tv_sec: i64::try_from(nanos / 1_000_000_000).unwrap_or(i64::MAX),
        tv_nsec: (nanos % 1_000_000_000) as _,
    }
}

/// Checks that the kernel has `futex_waitv` (Linux 5.16+): a call whose word already differs
/// must fail with `EAGAIN`, not `ENOSYS`.
pub fn check_futex_waitv() -> Result<(), String> {
    let word = AtomicU32::new(1);
    let mut w = futex::Wait::new();
    w.val = 0;
    w.uaddr = futex::WaitPtr::new(word.as_ptr().cast());
    w.flags = futex::WaitFlags::SIZE_U32;
    match futex::waitv(
        &[w],
        futex::WaitvFlags::empty(),
        None,
        rustix::time::ClockId::Monotonic,
    ) {
        Err(rustix::io::Errno::AGAIN) => Ok(()),
        Err(rustix::io::Errno::NOSYS) => Err("the kernel has no futex_waitv (Linux 5.16+)".into()),
        Err(e) => Err(format!(
            "futex_waitv is refused ({e}; a seccomp profile that blocks it?)"
        )),
        Ok(_) => Err("futex_waitv slept on a word that differs".into()),
    }
}

/// Initialises a robust, process-shared glibc mutex in place.
///
/// # Safety
///
/// `m` must point to writable memory for a `pthread_mutex_t` that no thread holds, waits on
/// or is linked into a robust list (a fresh or a free object slot).
pub unsafe fn robust_mutex_init(m: *mut libc::pthread_mutex_t) -> io::Result<()> {
    // SAFETY: attr is initialised before use and destroyed after; m is valid per the contract.
    unsafe {
        let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
        check(libc::pthread_mutexattr_init(&mut attr))?;
        let result = (|| {
            check(libc::pthread_mutexattr_setpshared(
                &mut attr,
                libc::PTHREAD_PROCESS_SHARED,
            ))?;
            check(libc::pthread_mutexattr_setrobust(
                &mut attr,
                libc::PTHREAD_MUTEX_ROBUST,
            ))?;
            check(libc::pthread_mutex_init(m, &attr))
        })();
        libc::pthread_mutexattr_destroy(&mut attr);
        result
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// The outcome of locking a robust mutex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locked {
    /// Acquired; the previous owner released it.
    Clean,
    /// Acquired; the previous owner died holding it (made consistent again already).
    OwnerDied,
    /// Somebody else holds it (try-lock only).
    Busy,
}

/// Try-locks a robust mutex. The mutex word must not be held by the calling thread.
///
/// # Safety
///
/// `m` must point to a mutex initialised by [`robust_mutex_init`] in memory that stays mapped.
#[inline]
pub unsafe fn robust_trylock(m: *mut libc::pthread_mutex_t) -> Locked {
    // SAFETY: per the contract.
    match unsafe { libc::pthread_mutex_trylock(m) } {
        0 => Locked::Clean,
        libc::EOWNERDEAD => {
            // SAFETY: we own it now; consistent() is exactly what EOWNERDEAD asks for.
            unsafe { libc::pthread_mutex_consistent(m) };
            Locked::OwnerDied
        }
        // EBUSY; ENOTRECOVERABLE cannot happen because every EOWNERDEAD is made consistent
        // (a holder killed before that leaves OWNER_DIED again, not NOTRECOVERABLE).
        _ => Locked::Busy,
    }
}

unsafe extern "C" {
    /// glibc 2.30+: `pthread_mutex_timedlock` measured on a chosen clock (robust mutexes
    /// included).
    fn pthread_mutex_clocklock(
        m: *mut libc::pthread_mutex_t,
        clock: libc::clockid_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
}

/// Locks a robust mutex unless `deadline` passes first (`Ok(None)`), sleeping in glibc.
/// `Err` carries glibc's error (`ENOTRECOVERABLE`, or `EINVAL` for a broken mutex): the lock
/// is then not held.
///
/// # Safety
///
/// As [`robust_trylock`].
pub unsafe fn robust_lock_until(
    m: *mut libc::pthread_mutex_t,
    deadline: Instant,
) -> Result<Option<Locked>, i32> {
    let after = deadline.saturating_duration_since(Instant::now());
    let at = monotonic_after(after);
    let abstime = libc::timespec {
        tv_sec: at.tv_sec as libc::time_t,
        tv_nsec: at.tv_nsec as _,
    };
    // SAFETY: per the contract; abstime is a valid timespec on the stack.
    match unsafe { pthread_mutex_clocklock(m, libc::CLOCK_MONOTONIC, &abstime) } {
        0 => Ok(Some(Locked::Clean)),
        libc::EOWNERDEAD => Ok(Some(Locked::OwnerDied)),
        libc::ETIMEDOUT => Ok(None),
        err => Err(err),
    }
}

/// Marks a mutex acquired with [`Locked::OwnerDied`] from [`robust_lock_until`] consistent
/// again.
///
/// # Safety
///
/// The calling thread must hold `m`.
pub unsafe fn robust_consistent(m: *mut libc::pthread_mutex_t) {
    // SAFETY: per the contract.
    unsafe { libc::pthread_mutex_consistent(m) };
}

/// Unlocks a robust mutex held by the calling thread.
///
/// # Safety
///
/// The calling thread must hold `m`.
#[inline]
pub unsafe fn robust_unlock(m: *mut libc::pthread_mutex_t) {
    // SAFETY: per the contract.
    unsafe { libc::pthread_mutex_unlock(m) };
}

/// The lock word of a glibc mutex: `__lock`, the first `int` of `pthread_mutex_t` on every
/// glibc target. For robust mutexes glibc keeps it in the kernel's robust-futex format (owner
/// TID, [`FUTEX_WAITERS`], [`FUTEX_OWNER_DIED`]). [`check_glibc_layout`] verifies this at start.
///
/// # Safety
///
/// `m` must point to a live, mapped `pthread_mutex_t`.
#[inline]
pub unsafe fn lock_word<'a>(m: *mut libc::pthread_mutex_t) -> &'a AtomicU32 {
    // SAFETY: the word is 4-aligned (the struct is 8-aligned) and lives as long as the mapping,
    // which is never unmapped.
    unsafe { AtomicU32::from_ptr(m.cast::<u32>()) }
}

/// Checks that glibc's robust mutex word is where and what [`lock_word`] assumes, on a private
/// mutex: locked by this thread it must read exactly our TID. The local backend refuses to run
/// otherwise (another libc, or a changed layout).
pub fn check_glibc_layout() -> Result<(), String> {
    // SAFETY: `pthread_mutex_t` is a plain C struct for which all-zero bytes are a valid value
    // (it is initialised properly by `robust_mutex_init` below before any use).
    let mut m: Box<libc::pthread_mutex_t> = Box::new(unsafe { std::mem::zeroed() });
    let p: *mut libc::pthread_mutex_t = &mut *m;
    // SAFETY: a fresh private allocation, locked and unlocked by this thread only.
    unsafe {
        robust_mutex_init(p).map_err(|e| format!("pthread_mutex_init: {e}"))?;
        let free = lock_word(p).load(std::sync::atomic::Ordering::SeqCst);
        if robust_trylock(p) != Locked::Clean {
            return Err("try-lock of a fresh robust mutex failed".into());
        }
        let held = lock_word(p).load(std::sync::atomic::Ordering::SeqCst);
        robust_unlock(p);
        let after = lock_word(p).load(std::sync::atomic::Ordering::SeqCst);
        libc::pthread_mutex_destroy(p);
        if free != 0 || held != tid() || after != 0 {
            return Err(format!(
                "unexpected robust mutex word (free {free:#x}, held {held:#x}, tid {:#x}, after {after:#x})",
                tid()
            ));
        }
    }
    Ok(())
}

/// Takes an open-file-description write lock on byte `offset` of `fd` without blocking.
/// Returns false if another open file description holds it.
pub fn ofd_try_lock(fd: BorrowedFd<'_>, offset: u64) -> io::Result<bool> {
    let mut fl = flock_at(offset, libc::F_WRLCK);
    // SAFETY: fcntl with a valid fd and a pointer to an initialised flock.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(err),
    }
}

/// Whether some open file description other than `fd`'s holds a lock on byte `offset`.
/// OFD locks vanish when the last descriptor of their owner is closed, which the kernel does
/// when a process dies: that is the liveness test of attached processes.
pub fn ofd_is_locked(fd: BorrowedFd<'_>, offset: u64) -> io::Result<bool> {
    let mut fl = flock_at(offset, libc::F_WRLCK);
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i32::from(fl.l_type) != libc::F_UNLCK)
}

fn flock_at(offset: u64, kind: libc::c_int) -> libc::flock {
    // SAFETY: flock is plain data; zero is a valid value for every field.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = offset as libc::off_t;
    fl.l_len = 1;
    fl.l_pid = 0; // required for OFD locks
    fl
}

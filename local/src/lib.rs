//! # dlock-local: the `Local\` engine
//!
//! `Local\` names served from shared memory to the processes of one host, with no server. The
//! client library (`dlock`) routes `Local\` names here; this crate knows nothing of the cluster
//! and speaks only the shared vocabulary of `dlock_proto::vocab`. It holds all of the
//! workspace's product `unsafe` code (robust mutexes, futexes, the mapped segment), each block
//! with its `SAFETY:` comment (`clippy::undocumented_unsafe_blocks` is denied workspace-wide);
//! every other crate forbids unsafe code.
//!
//! Configuration: from the environment ([`Settings::from_env`]), or from a value given once
//! before first use ([`configure`]); [`Segment::attach`] opens any namespace without touching
//! the process-wide one.
//!
//!
//! One file per namespace (default `/dev/shm/dlock-local-u<uid>`, mode 0600) holds the name
//! table and every object; processes of one user on one host map it and meet on its futex
//! words. Semantics are the cluster's (win32-semantics.md), with these mechanisms:
//!
//! * **Mutexes** are glibc robust, process-shared mutexes. Acquire and release are one
//!   uncontended atomic each and make no system call. When the owning thread exits (or its
//!   process dies) holding one, the kernel marks it `OWNER_DIED` and wakes a waiter: the next
//!   acquisition reports `WAIT_ABANDONED`. Ownership is per OS thread and recursive.
//! * **Events and semaphores** live under the namespace lock, itself a robust mutex (no system
//!   call when uncontended either). A signal is judged when it happens, as on the cluster: it
//!   hands its units to the registered waits it satisfies at that instant and wakes them
//!   before its change is committed (the `grant` module), so `SetEvent; ResetEvent` releases
//!   the waits blocked at the set, a poll cannot take a unit from a thread already waiting,
//!   and a signaller killed after its commit has woken its waiters already.
//! * **Waits** sleep in `futex_waitv` on each object's wake sequence (and on the lock word of a
//!   held mutex, so the kernel's owner-died wake reaches them): any or all of up to 64 objects,
//!   lowest signaled index first, deadlines on `CLOCK_MONOTONIC`. A blocked wait looks at
//!   its objects again after a second without a wake, as a safety net for a wake that was
//!   lost; no signal relies on it.
//! * **Crash safety**: changes under the namespace lock are undo-journaled
//!   (the `segment` module's docs); a process killed mid-change is rolled back by the next
//!   locker. Handles of dead processes are reclaimed (their liveness is an OFD lock that the
//!   kernel drops when they die) whenever any process attaches, creates or opens.
//! * **Trust**: the segment holds pointers glibc and the kernel follow for every attached
//!   thread (robust lists), so it is shared only with its owner and the one group
//!   `DLOCK_LOCAL_GROUP` names; a file open to others, to another group, or owned by another
//!   user outside that group is refused (`Untrusted`, `ERROR_ACCESS_DENIED`), which is also
//!   what a squatter who created the file first gets: the way out is a private
//!   `DLOCK_LOCAL_DIR` or another namespace.
//! * **Versioning**: a segment with another layout version, a bad magic, size or checksum is
//!   refused with an error naming the file, never trusted.
//!
//! Deliberate differences from the cluster: mutex waiters are not served FIFO (the
//! no-system-call fast path lets a running thread take a free mutex before a woken one, as
//! Windows and pthreads do; events and semaphores serve the oldest wait first); fencing tokens count acquisitions of that one mutex; a mutex is abandoned the
//! moment its owning thread exits (no TTL). `SignalObjectAndWait` registers its wait before it
//! signals, so nothing the signal provokes (a `PulseEvent`) can slip between the two.
//!
//! **A holder that does not run.** The namespace lock is a robust mutex: a holder that dies
//! is recovered from, but one that is alive and stopped (SIGSTOP, Ctrl-Z, a debugger, a
//! frozen cgroup) keeps it. Every wait for it is bounded: a timed wait returns
//! `WAIT_TIMEOUT` at its own deadline (a wait registered before leaves the registry at the
//! process's next call that gets the lock), an infinite wait keeps waiting and logs the holder
//! every lock timeout, a cancelled async wait ends within a second, and every other call
//! (create, open, close, set, reset, pulse, release-semaphore, query) fails with
//! `ERROR_TIMEOUT` (1460) after `DLOCK_LOCAL_LOCK_TIMEOUT_MS` (30 s), changing nothing.
//! Those calls still block their thread that long: the async API moves event and semaphore
//! calls to tokio's blocking pool when the lock is held, but its create, open and handle
//! drop run on the calling task. `dlockctl local` names the holder (thread, process, state)
//! after 2 s. Mutex acquire and release never take the namespace lock.
//!
//! Known limits: events and semaphores share one namespace lock (fine for coordination, not
//! for millions of operations per second across many processes); using a handle on one thread
//! while another closes it may act on whatever object reuses the slot (Windows has the same
//! hazard with handle reuse); a child made by `fork` shares its parent's liveness record; a
//! wait-all takes its mutexes one at a time under the namespace lock, and if a fast-path
//! thread takes one of them first it gives back those it took: a `WaitForSingleObject(h, 0)`
//! racing it may see a mutex held for that instant although the wait-all then takes nothing.

pub mod baseline;
mod grant;
mod inspect;
mod objects;
mod segment;
mod sys;
mod wait;

use std::path::{Path, PathBuf};
use std::sync::{Mutex as StdMutex, OnceLock};
use std::time::Duration;

pub use inspect::{LocalObjectInfo, LocalProcess, LocalSnapshot};
pub use objects::{LocalObj, MUTEXES_HELD_MAX, create, create_unnamed, open};
pub use segment::Segment;
pub use wait::{
    CANCELLABLE_WAIT_OBJECTS_MAX, Taken, cancel, give_back, signal_and_wait, wait, wait_cancellable,
};

use dlock_proto::vocab::Win32Error;

/// Why the local namespace cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The platform lacks what the backend needs (not glibc, or an unexpected mutex layout).
    #[error("the local backend cannot run here: {0}")]
    Unsupported(String),
    /// The segment file or its directory could not be opened or created.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid segment.
    #[error("{path} is not a usable dlock local segment: {why}; remove it once no process uses it")]
    Corrupt { path: PathBuf, why: String },
    /// The file could have been planted or altered by another user.
    #[error("{path} is not trusted: {why}")]
    Untrusted { path: PathBuf, why: String },
    /// The file was made by another layout version.
    #[error(
        "{path} has layout version {found}, this library uses {}; stop the processes of the \
         other version and remove the file, or point DLOCK_LOCAL_DIR elsewhere",
        segment::VERSION
    )]
    Version { path: PathBuf, found: u32 },
    /// A fixed-size table is full.
    #[error("the local namespace has no free {0} slot")]
    Full(&'static str),
    /// Another process held the namespace lock for longer than the lock timeout.
    #[error(
        "{path}: the namespace lock is held by {holder} and was not released within {waited_ms} \
         ms; every Local\\ call on this host waits for it (continue or kill that process)"
    )]
    LockHeld {
        path: PathBuf,
        holder: String,
        waited_ms: u64,
    },
}

impl LocalError {
    fn io(path: &Path, source: std::io::Error) -> LocalError {
        LocalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The Win32 last-error code the facade reports.
    pub fn code(&self) -> Win32Error {
        match self {
            LocalError::Unsupported(_) => Win32Error::NOT_SUPPORTED,
            LocalError::Io { source, .. } => match source.raw_os_error() {
                Some(libc::EACCES) | Some(libc::EPERM) => Win32Error::ACCESS_DENIED,
                Some(libc::ENOSPC) | Some(libc::ENOMEM) | Some(libc::EMFILE) => {
                    Win32Error::NO_SYSTEM_RESOURCES
                }
                _ => Win32Error::INTERNAL_ERROR,
            },
            LocalError::Corrupt { .. } => Win32Error::FILE_CORRUPT,
            LocalError::Untrusted { .. } => Win32Error::ACCESS_DENIED,
            LocalError::Version { .. } => Win32Error::REVISION_MISMATCH,
            LocalError::Full(_) => Win32Error::NO_SYSTEM_RESOURCES,
            LocalError::LockHeld { .. } => Win32Error::TIMEOUT,
        }
    }
}

/// Where a namespace lives. [`Settings::from_env`] reads them from the environment:
///
/// | variable | meaning | default |
/// |---|---|---|
/// | `DLOCK_LOCAL_DIR` | directory of the segment file (created with the mode below plus search rights) | `/dev/shm` |
/// | `DLOCK_LOCAL_NAMESPACE` | name of the namespace: processes meet only within one | `u<uid>` |
/// | `DLOCK_LOCAL_MODE` | octal file mode of a new segment; `660` shares it with `DLOCK_LOCAL_GROUP` (never with other users) | `600` |
/// | `DLOCK_LOCAL_GROUP` | the one group (name or gid) that may share the namespace; required for `660` | none |
/// | `DLOCK_LOCAL_LOCK_TIMEOUT_MS` | longest wait for the namespace lock before a call fails with `ERROR_TIMEOUT` (1460) | `30000` |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Directory of the segment file.
    pub dir: PathBuf,
    /// Name of the namespace (1-64 of `[A-Za-z0-9._-]`): processes meet only within one.
    pub namespace: String,
    /// Octal file mode of a new segment: `0o600` (this user only) or `0o660` (with `group`);
    /// never for other users.
    pub mode: u32,
    /// The one group that may share the namespace (a gid), required for a mode with group
    /// bits: a new segment is given to it, and a segment of another user is trusted only if
    /// it belongs to it.
    pub group: Option<u32>,
    /// The longest a call waits for the namespace lock (held by a process that does not run:
    /// stopped, frozen, in a debugger) before it fails with `ERROR_TIMEOUT`. Timed waits wait
    /// until their own deadline instead, and infinite waits for as long as it takes.
    pub lock_timeout: Duration,
}

/// Default `DLOCK_LOCAL_DIR`.
const DIR_DEFAULT: &str = "/dev/shm";
/// Default `DLOCK_LOCAL_MODE`: owner only.
const MODE_DEFAULT: u32 = 0o600;
/// Default `DLOCK_LOCAL_LOCK_TIMEOUT_MS`: far beyond any real critical section (microseconds),
/// short enough that a call does not hang for good behind a stopped process.
pub const LOCK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

impl Settings {
    /// The settings the environment names, with the defaults above for what it leaves out
    /// (an invalid value is logged and replaced by the default).
    pub fn from_env() -> Settings {
        let dir = std::env::var_os("DLOCK_LOCAL_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DIR_DEFAULT));
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        let namespace = match std::env::var("DLOCK_LOCAL_NAMESPACE") {
            Ok(ns) if valid_namespace(&ns) => ns,
            Ok(ns) => {
                tracing::warn!(
                    value = ns,
                    "ignoring DLOCK_LOCAL_NAMESPACE: use 1-64 of [A-Za-z0-9._-]"
                );
                format!("u{uid}")
            }
            Err(_) => format!("u{uid}"),
        };
        let mode = match std::env::var("DLOCK_LOCAL_MODE") {
            Ok(raw) => match u32::from_str_radix(raw.trim(), 8) {
                Ok(m @ (0o600 | 0o660)) => m,
                _ => {
                    tracing::warn!(
                        value = raw,
                        "ignoring DLOCK_LOCAL_MODE: 600 (this user only) or 660 (with \
                         DLOCK_LOCAL_GROUP); a segment is never shared with other users"
                    );
                    MODE_DEFAULT
                }
            },
            Err(_) => MODE_DEFAULT,
        };
        let group = match std::env::var("DLOCK_LOCAL_GROUP") {
            Ok(raw) if !raw.trim().is_empty() => match group_id(raw.trim()) {
                Some(gid) => Some(gid),
                None => {
                    tracing::warn!(
                        value = raw,
                        "ignoring DLOCK_LOCAL_GROUP: no such group name or number"
                    );
                    None
                }
            },
            _ => None,
        };
        // A group mode without a usable group is not quietly made private (the first process
        // would lock the group out): attaching refuses it with a message.
        if mode == 0o600 && group.is_some() {
            tracing::warn!(
                "DLOCK_LOCAL_GROUP is set but DLOCK_LOCAL_MODE is 600: the namespace stays \
                 private (set DLOCK_LOCAL_MODE=660 to share it with the group)"
            );
        }
        let lock_timeout = match std::env::var("DLOCK_LOCAL_LOCK_TIMEOUT_MS") {
            Ok(raw) => match raw.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    tracing::warn!(
                        value = raw,
                        "ignoring DLOCK_LOCAL_LOCK_TIMEOUT_MS: a number of milliseconds above 0"
                    );
                    LOCK_TIMEOUT_DEFAULT
                }
            },
            Err(_) => LOCK_TIMEOUT_DEFAULT,
        };
        Settings {
            dir,
            namespace,
            mode,
            group,
            lock_timeout,
        }
    }

    /// The segment file these settings name.
    pub fn segment_path(&self) -> PathBuf {
        self.dir.join(format!("dlock-local-{}", self.namespace))
    }
}

/// The gid of group `name_or_number` (a name from the group database, or a number).
pub fn group_id(name_or_number: &str) -> Option<u32> {
    if let Ok(gid) = name_or_number.parse::<u32>() {
        return Some(gid);
    }
    let name = std::ffi::CString::new(name_or_number).ok()?;
    // SAFETY: `libc::group` is a plain C struct for which all-zero bytes are valid; getgrnam_r
    // fills it.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut len = 16 * 1024;
    loop {
        let mut buf = vec![0 as libc::c_char; len];
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: a NUL-terminated name, a group struct
        // and a buffer of the length passed, and the result pointer; getgrnam_r is
        // thread-safe.
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut group,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        match rc {
            0 => return (!result.is_null()).then_some(group.gr_gid),
            // A large group (LDAP, sssd): a bigger buffer, up to a bound.
            libc::ERANGE if len < 16 * 1024 * 1024 => len *= 4,
            libc::EINTR => {}
            rc => {
                tracing::error!(
                    group = name_or_number,
                    error = %std::io::Error::from_raw_os_error(rc),
                    "cannot look up DLOCK_LOCAL_GROUP"
                );
                return None;
            }
        }
    }
}

/// Whether `ns` is a valid namespace name: 1-64 of `[A-Za-z0-9._-]`, not starting with `.`
/// (it becomes part of a file name).
pub fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 64
        && !ns.starts_with('.')
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

static SEGMENT: OnceLock<Segment> = OnceLock::new();
/// Settings given by [`configure`]; the environment's otherwise.
static CONFIGURED: OnceLock<Settings> = OnceLock::new();

/// Makes the process's namespace ([`namespace`]) use `settings` instead of the environment.
/// Call it before the first `Local\` call.
///
/// # Errors
///
/// Gives `settings` back if settings were configured already, or if the namespace is attached
/// already (with whatever settings it was attached with).
pub fn configure(settings: Settings) -> Result<(), Settings> {
    let _serial = ATTACH.lock().unwrap_or_else(|e| e.into_inner());
    if SEGMENT.get().is_some() {
        return Err(settings);
    }
    CONFIGURED.set(settings)?;
    // A failure under the previous settings says nothing about these.
    *LAST_FAILURE.lock().unwrap_or_else(|e| e.into_inner()) = None;
    Ok(())
}

/// The settings the process's namespace attaches with: [`configure`]'s, else the environment's.
pub fn settings() -> Settings {
    CONFIGURED.get().cloned().unwrap_or_else(Settings::from_env)
}
/// Serialises attach attempts; a failed attach is retried at the next call.
static ATTACH: StdMutex<()> = StdMutex::new(());

/// The segment file of the process's namespace (whether it exists or not).
pub fn configured_path() -> PathBuf {
    settings().segment_path()
}

/// The process's namespace, attached at first use.
pub fn namespace() -> Result<&'static Segment, Win32Error> {
    if let Some(seg) = SEGMENT.get() {
        return Ok(seg);
    }
    let _serial = ATTACH.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(seg) = SEGMENT.get() {
        return Ok(seg);
    }
    // A namespace that cannot be attached is not tried again at every call (each try opens,
    // maps and checks the file): the failure stands for ATTACH_RETRY_AFTER.
    let mut last = LAST_FAILURE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, code)) = *last
        && at.elapsed() < ATTACH_RETRY_AFTER
    {
        return Err(code);
    }
    match Segment::attach(&settings()) {
        Ok(seg) => {
            *last = None;
            Ok(SEGMENT.get_or_init(|| seg))
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot use the local namespace");
            *last = Some((std::time::Instant::now(), err.code()));
            Err(err.code())
        }
    }
}

/// How long a failed attach of the process's namespace stands before the next call tries
/// again.
const ATTACH_RETRY_AFTER: Duration = Duration::from_secs(1);
/// When the process's namespace last failed to attach, and why.
static LAST_FAILURE: StdMutex<Option<(std::time::Instant, Win32Error)>> = StdMutex::new(None);

/// Whether this process is a child made by `fork` after the namespace was attached in its
/// parent: it shares the parent's process slot, so the facade refuses `Local\` calls there
/// (`ERROR_NOT_SUPPORTED`) until it `exec`s. One relaxed load.
#[inline]
pub fn in_forked_child() -> bool {
    sys::forked_child()
}

/// The attached namespace, if any (for paths that must not attach, like a thread's exit).
#[inline]
pub fn attached() -> Option<&'static Segment> {
    SEGMENT.get()
}

#[cfg(test)]
mod tests;

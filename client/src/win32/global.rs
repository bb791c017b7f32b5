//! The process-global state behind the facade: one tokio runtime, one client, the current
//! session, and the handle table.

use dlock_proto::vocab::Win32Error;
use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex as StdMutex, OnceLock};
use std::time::Duration;

use super::handles::HandleTable;
use crate::config::split_endpoint_list;
use crate::local::LocalObj;
use crate::{Client, ClientConfig, Error, ObjectKind, Session, SessionState};

/// Worker threads of the facade's runtime: the blocking calls run their futures on the calling
/// thread, so the workers only drive I/O, timers and the keepalive.
const RUNTIME_WORKER_THREADS: usize = 2;
/// How long a thread's exit waits for its `ThreadExit` to be applied. Bounded so a thread never
/// hangs on exit when the cluster is unreachable; the report stays queued and is retried in the
/// background for as long as the session lives ([`Session::report_thread_exit`]).
const THREAD_EXIT_WAIT: Duration = Duration::from_secs(2);
/// Default for `DLOCK_SESSION_TTL_MS`.
const SESSION_TTL_DEFAULT: Duration = Duration::from_millis(10_000);

/// One open facade handle to a cluster object.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) session: Session,
    pub(crate) id: u64,
    pub(crate) kind: ObjectKind,
}

/// One open facade handle: a cluster object, or a `Local\` object in shared memory.
#[derive(Debug, Clone)]
pub(crate) enum Slot {
    /// Served by the cluster.
    Remote(Entry),
    /// Served by the local backend.
    Local(LocalObj),
}

/// The handle table. A std mutex: held only for lookups and inserts, never across an await.
pub(crate) static HANDLES: LazyLock<StdMutex<HandleTable<Slot>>> =
    LazyLock::new(|| StdMutex::new(HandleTable::new()));

/// Bumped whenever a local handle leaves the table, which invalidates every thread's
/// [`LOCAL_CACHE`].
static LOCAL_EPOCH: AtomicU64 = AtomicU64::new(1);

/// Local handles a thread's cache holds: a lock/unlock loop over a few mutexes (or a mutex
/// and an event) stays on the fast path.
const LOCAL_CACHE_ENTRIES: usize = 16;

/// Local handles a thread resolved, each with the epoch it was valid in: direct-mapped by
/// handle value (handles are multiples of 4 handed out in order, so the next
/// `LOCAL_CACHE_ENTRIES` handles a program opens never evict each other).
struct CachedLocal {
    /// (handle, epoch, object); handle 0 (NULL) when empty.
    entries: [Cell<(isize, u64, LocalObj)>; LOCAL_CACHE_ENTRIES],
}

impl CachedLocal {
    fn entry(&self, handle: isize) -> &Cell<(isize, u64, LocalObj)> {
        &self.entries[(handle as usize >> 2) % LOCAL_CACHE_ENTRIES]
    }
}

thread_local! {
    /// The fast path of a lock/unlock loop resolves its handles here, without the table's
    /// mutex (which every thread of the process shares).
    static LOCAL_CACHE: CachedLocal = const {
        CachedLocal {
            entries: [const { Cell::new((0, 0, LocalObj::EMPTY)) }; LOCAL_CACHE_ENTRIES],
        }
    };
}

/// Looks a handle up; 6 if it is unknown, or a cluster handle of another kind than `kind` or
/// from a lost session. (A local handle's kind is checked by the caller.)
pub(crate) fn lookup(handle: isize, kind: Option<ObjectKind>) -> Result<Slot, Win32Error> {
    if let Some(obj) = cached_local(handle) {
        return Ok(Slot::Local(obj));
    }
    let epoch = LOCAL_EPOCH.load(Ordering::Acquire);
    let table = HANDLES.lock().unwrap_or_else(|e| e.into_inner());
    match table.get(handle).ok_or(Win32Error::INVALID_HANDLE)? {
        Slot::Local(obj) => {
            let obj = *obj;
            drop(table);
            let _ = LOCAL_CACHE.try_with(|c| c.entry(handle).set((handle, epoch, obj)));
            Ok(Slot::Local(obj))
        }
        Slot::Remote(entry) => {
            if kind.is_some_and(|k| k != entry.kind) {
                return Err(Win32Error::INVALID_HANDLE);
            }
            if entry.session.state() == SessionState::Expired {
                return Err(Win32Error::INVALID_HANDLE);
            }
            Ok(Slot::Remote(entry.clone()))
        }
    }
}

/// The local object behind `handle` if this thread resolved it since the last close of a
/// local handle (and no other handle took its cache entry since): two loads, no lock.
#[inline]
pub(crate) fn cached_local(handle: isize) -> Option<LocalObj> {
    if handle == 0 {
        return None;
    }
    LOCAL_CACHE
        .try_with(|c| {
            let (h, epoch, obj) = c.entry(handle).get();
            (h == handle && epoch == LOCAL_EPOCH.load(Ordering::Acquire)).then_some(obj)
        })
        .ok()
        .flatten()
}

/// Removes `handle` from the table (and from every thread's cache).
pub(crate) fn forget(handle: isize) -> Option<Slot> {
    let removed = HANDLES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(handle);
    if matches!(removed, Some(Slot::Local(_))) {
        LOCAL_EPOCH.fetch_add(1, Ordering::AcqRel);
    }
    removed
}

/// Looks a cluster handle up; 6 if it is unknown, local, of another kind than `kind`, or from
/// a lost session.
pub(crate) fn resolve(handle: isize, kind: Option<ObjectKind>) -> Result<Entry, Win32Error> {
    match lookup(handle, kind)? {
        Slot::Remote(entry) => Ok(entry),
        Slot::Local(_) => Err(Win32Error::INVALID_HANDLE),
    }
}

/// How the facade reaches the cluster: read from the environment at the first call
/// ([`FacadeConfig::from_env`]), or given once before it ([`configure`]).
///
/// ```
/// use std::time::Duration;
/// let mut config = dlock::win32::FacadeConfig::from_env();
/// config.endpoints = Ok(vec!["127.0.0.1:7711".into(), "127.0.0.1:7712".into()]);
/// config.session_ttl = Duration::from_secs(5);
/// // dlock::win32::configure(config) before the first facade call.
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FacadeConfig {
    /// The cluster's client addresses (`host:port` or `http://host:port`), or why the
    /// configured list is unusable (every call that needs the cluster then fails with
    /// `ERROR_BAD_NET_NAME`, and the reason is logged).
    pub endpoints: Result<Vec<String>, String>,
    /// TLS for every connection (`DLOCK_CACERT`, `DLOCK_CERT`, `DLOCK_KEY`), or why the
    /// configured files are unusable (then, as for endpoints, every call that needs the
    /// cluster fails with `ERROR_BAD_NET_NAME` and the reason is logged).
    pub tls: Result<Option<crate::ClientTls>, String>,
    /// A development bearer token (`DLOCK_TOKEN`, [`crate::ClientConfig::token`]).
    pub token: Option<String>,
    /// The session TTL asked for (the server clamps it).
    pub session_ttl: Duration,
    /// How long a call keeps retrying across nodes before failing with
    /// `ERROR_NETWORK_UNREACHABLE`.
    pub request_timeout: Duration,
}

/// Makes the facade use `config` instead of the environment. Call it before the first facade
/// call of the process.
///
/// # Errors
///
/// Gives `config` back if the facade was configured already or has started (its first call
/// read the environment).
pub fn configure(config: FacadeConfig) -> Result<(), FacadeConfig> {
    let mut configured = CONFIGURED.lock().unwrap_or_else(|e| e.into_inner());
    match &*configured {
        Configured::Unset => {
            *configured = Configured::Given(config);
            Ok(())
        }
        Configured::Given(_) | Configured::Started => Err(config),
    }
}

/// What [`configure`] gave, until the facade starts and takes it.
enum Configured {
    /// Nothing yet: the first call reads the environment.
    Unset,
    /// A configuration for the first call.
    Given(FacadeConfig),
    /// The facade started; configuring is too late.
    Started,
}

static CONFIGURED: StdMutex<Configured> = StdMutex::new(Configured::Unset);

/// The configuration the starting facade uses; configuring is refused from now on.
fn take_config() -> FacadeConfig {
    let mut configured = CONFIGURED.lock().unwrap_or_else(|e| e.into_inner());
    match std::mem::replace(&mut *configured, Configured::Started) {
        Configured::Given(config) => config,
        Configured::Unset | Configured::Started => FacadeConfig::from_env(),
    }
}

impl FacadeConfig {
    /// The configuration the environment names (`DLOCK_ENDPOINTS`, `DLOCK_SESSION_TTL_MS`,
    /// `DLOCK_REQUEST_TIMEOUT_MS`; see the module docs), with the defaults for what it leaves
    /// out.
    pub fn from_env() -> FacadeConfig {
        let endpoints = match std::env::var("DLOCK_ENDPOINTS") {
            Ok(list) => {
                let list = split_endpoint_list(&list);
                if list.is_empty() {
                    Err("DLOCK_ENDPOINTS is empty".to_owned())
                } else {
                    Ok(list)
                }
            }
            Err(std::env::VarError::NotPresent) => Ok(vec![crate::DEFAULT_ENDPOINT.to_owned()]),
            Err(err) => Err(format!("DLOCK_ENDPOINTS: {err}")),
        };
        FacadeConfig {
            endpoints,
            tls: crate::config::tls_from_env().map_err(|e| e.to_string()),
            token: crate::config::token_from_env(),
            session_ttl: env_millis("DLOCK_SESSION_TTL_MS", SESSION_TTL_DEFAULT),
            request_timeout: env_millis("DLOCK_REQUEST_TIMEOUT_MS", crate::REQUEST_TIMEOUT_DEFAULT),
        }
    }
}

/// A positive millisecond count from the environment, or the default (with a warning if set but
/// unusable).
fn env_millis(var: &str, default: Duration) -> Duration {
    match std::env::var(var) {
        Err(_) => default,
        Ok(raw) => match raw.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Duration::from_millis(ms),
            _ => {
                tracing::warn!(var, value = raw, ?default, "ignoring invalid setting");
                default
            }
        },
    }
}

/// The connection state, created lazily inside the runtime.
#[derive(Default)]
struct Conn {
    client: Option<Client>,
    session: Option<Session>,
}

pub(crate) struct Facade {
    runtime: tokio::runtime::Runtime,
    settings: FacadeConfig,
    /// A tokio mutex: held across `OpenSession` so that concurrent first calls open one
    /// session, not several.
    conn: tokio::sync::Mutex<Conn>,
    /// The process that started the runtime. A child made by `fork` has the memory but not
    /// the runtime's threads: it must not use the facade (see [`in_forked_child`]).
    pid: u32,
}

/// True in a child made by `fork` after the facade started in its parent: the runtime's worker
/// threads do not exist there, so any call would wait forever for them. Calls then fail with
/// `ERROR_NOT_SUPPORTED`, and a thread exit is not reported (the parent's session is the
/// parent's). One `getpid` per cluster call, never on the `Local\` fast path.
fn in_forked_child(facade: &Facade) -> bool {
    facade.pid != std::process::id()
}

static FACADE: OnceLock<Option<Facade>> = OnceLock::new();

/// Blocks `SIGPIPE` on the calling (runtime) thread. A write to a connection the other side
/// closed raises `SIGPIPE` on the writing thread, whose default action ends the process; Rust
/// programs ignore it from `main`, but a C program using `libdlock` does not (a node closing a
/// TLS connection after refusing a client certificate killed one). Blocked, the write fails
/// with `EPIPE` instead; the host program's own threads and disposition are left alone.
fn block_sigpipe() {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    let mut set = SigSet::empty();
    set.add(Signal::SIGPIPE);
    if let Err(err) = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None) {
        tracing::warn!(error = %err, "cannot block SIGPIPE on a dlock runtime thread");
    }
}

fn facade() -> Option<&'static Facade> {
    FACADE
        .get_or_init(|| {
            // Taken first: from now on `configure` is refused, whether the runtime starts or not.
            let settings = take_config();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(RUNTIME_WORKER_THREADS)
                .thread_name("dlock-worker")
                .on_thread_start(block_sigpipe)
                .enable_all()
                .build();
            match runtime {
                Ok(runtime) => Some(Facade {
                    runtime,
                    settings,
                    conn: tokio::sync::Mutex::new(Conn::default()),
                    pid: std::process::id(),
                }),
                Err(err) => {
                    tracing::error!(error = %err, "cannot start the dlock runtime");
                    None
                }
            }
        })
        .as_ref()
}

/// Runs a facade operation to completion on the calling thread.
///
/// Fails with `ERROR_NOT_SUPPORTED` when called from inside a tokio runtime (blocking there
/// could deadlock it, and `block_on` would panic) or in a forked child, and with
/// `ERROR_NO_SYSTEM_RESOURCES` if the runtime cannot be started.
///
/// A thread whose thread-locals are being destroyed (an `atexit` handler or a C++ static
/// destructor after `main` returned, a pthread key destructor) cannot enter the runtime, whose
/// own thread-local is gone: the operation then runs on a helper thread while the caller waits.
pub(crate) fn block_on<T, F, Fut>(op: F) -> Result<T, Win32Error>
where
    F: FnOnce(&'static Facade) -> Fut + Send,
    Fut: Future<Output = Result<T, Win32Error>>,
    T: Send,
{
    let exiting = match tokio::runtime::Handle::try_current() {
        Ok(_) => {
            tracing::warn!("dlock::win32 called from inside a tokio runtime; use the async API");
            return Err(Win32Error::NOT_SUPPORTED);
        }
        Err(err) => err.is_thread_local_destroyed(),
    };
    let facade = facade().ok_or(Win32Error::NO_SYSTEM_RESOURCES)?;
    if in_forked_child(facade) {
        return Err(Win32Error::NOT_SUPPORTED);
    }
    if !exiting {
        return facade.runtime.block_on(op(facade));
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| facade.runtime.block_on(op(facade)))
            .join()
            .unwrap_or(Err(Win32Error::INTERNAL_ERROR))
    })
}

impl Facade {
    /// The current session, opening one (and the client) if there is none or it expired.
    pub(crate) async fn session(&self) -> Result<Session, Win32Error> {
        let mut conn = self.conn.lock().await;
        if let Some(session) = &conn.session {
            if session.state() != SessionState::Expired {
                return Ok(session.clone());
            }
            tracing::info!(session = session.id(), "session lost; opening a new one");
        }
        let client = match &conn.client {
            Some(client) => client.clone(),
            None => {
                let endpoints = self.settings.endpoints.clone().map_err(|why| {
                    tracing::error!(why, "no usable cluster endpoints");
                    Win32Error::BAD_NET_NAME
                })?;
                let tls = self.settings.tls.clone().map_err(|why| {
                    tracing::error!(why, "unusable TLS settings");
                    Win32Error::BAD_NET_NAME
                })?;
                let mut config = ClientConfig::new(endpoints);
                config.request_timeout = self.settings.request_timeout;
                config.tls = tls;
                config.token = self.settings.token.clone();
                let client = Client::connect_with_config(config).await.map_err(|err| {
                    tracing::error!(error = %err, "invalid DLOCK_ENDPOINTS, TLS or DLOCK_TOKEN settings");
                    Win32Error::BAD_NET_NAME
                })?;
                conn.client = Some(client.clone());
                client
            }
        };
        let session = client
            .open_session(self.settings.session_ttl)
            .await
            .map_err(|e| e.win32_error())?;
        conn.session = Some(session.clone());
        Ok(session)
    }

    /// Runs `op` on the current session; if the session turns out to be lost, opens a new one
    /// and runs `op` once more (for creates and opens, which act on no existing handle).
    pub(crate) async fn with_session<T, F, Fut>(
        &self,
        mut op: F,
    ) -> Result<(Session, T), Win32Error>
    where
        F: FnMut(Session) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut retried = false;
        loop {
            let session = self.session().await?;
            match op(session.clone()).await {
                Ok(value) => return Ok((session, value)),
                Err(Error::SessionLost) if !retried => retried = true,
                Err(err) => return Err(err.win32_error()),
            }
        }
    }
}

/// Reports that facade thread `thread` exited, waiting a bounded time for the cluster to apply
/// it. Called from a thread-local destructor: uses only `spawn` and a std channel, both safe
/// while the thread's other thread-locals are being torn down.
pub(crate) fn thread_exited(thread: u64) {
    let Some(Some(facade)) = FACADE.get() else {
        return;
    };
    if in_forked_child(facade) {
        return;
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    facade.runtime.spawn(async move {
        let session = facade.conn.lock().await.session.clone();
        if let Some(session) = session.filter(|s| s.state() != SessionState::Expired) {
            // Queued for sure delivery: retried in the background for as long as the session
            // lives, even after this thread is gone.
            if session.report_thread_exit(thread).await.is_ok() {
                tracing::debug!(thread, "reported thread exit");
            }
        }
        let _ = done_tx.send(());
    });
    if done_rx.recv_timeout(THREAD_EXIT_WAIT).is_err() {
        tracing::warn!(
            thread,
            waited = ?THREAD_EXIT_WAIT,
            "thread exit not applied yet; it keeps being retried in the background"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finding 5 of issue 12: the cache held one handle per thread, so a loop over two local
    /// handles took the process-wide table mutex on every call. Both stay cached now, and
    /// closing a local handle still invalidates every entry.
    #[test]
    fn a_thread_caches_several_local_handles() {
        let handles: Vec<(isize, LocalObj)> = (0..LOCAL_CACHE_ENTRIES as u32)
            .map(|i| {
                let mut obj = LocalObj::EMPTY;
                obj.index = 1000 + i;
                let handle = HANDLES
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(Slot::Local(obj));
                (handle, obj)
            })
            .collect();
        std::thread::spawn(move || {
            for (handle, _) in &handles {
                assert!(matches!(lookup(*handle, None), Ok(Slot::Local(_))));
            }
            // Every handle resolves from the cache, without the table's mutex.
            for _ in 0..3 {
                for (handle, obj) in &handles {
                    assert_eq!(cached_local(*handle), Some(*obj), "handle {handle}");
                }
            }
            let (closed, _) = handles[0];
            assert!(forget(closed).is_some());
            assert_eq!(cached_local(closed), None);
            assert_eq!(
                cached_local(handles[1].0),
                None,
                "a close invalidates the cache"
            );
            assert!(matches!(lookup(handles[1].0, None), Ok(Slot::Local(_))));
            assert_eq!(cached_local(handles[1].0), Some(handles[1].1));
            for (handle, _) in &handles[1..] {
                forget(*handle);
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn env_millis_falls_back_on_garbage() {
        assert_eq!(
            env_millis("DLOCK_TEST_UNSET_VARIABLE_XYZ", Duration::from_secs(3)),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn blocking_calls_refuse_to_run_inside_a_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let r = rt.block_on(async { block_on(|_| async { Ok(1) }) });
        assert_eq!(r, Err(Win32Error::NOT_SUPPORTED));
    }

    #[test]
    fn spawning_from_a_thread_local_destructor_does_not_panic() {
        // The mechanism thread_exited relies on: spawn onto a runtime from a TLS destructor
        // and wait on a std channel.
        static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap()
        });
        static RAN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        struct Guard;
        impl Drop for Guard {
            fn drop(&mut self) {
                let (tx, rx) = std::sync::mpsc::channel();
                RT.spawn(async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let _ = tx.send(());
                });
                if rx.recv_timeout(Duration::from_secs(5)).is_ok() {
                    RAN.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
        thread_local! { static G: Guard = const { Guard }; }
        LazyLock::force(&RT);
        std::thread::spawn(|| G.with(|_| ())).join().unwrap();
        assert!(RAN.load(std::sync::atomic::Ordering::SeqCst));
    }
}

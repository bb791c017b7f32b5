//! `dlockctl run`: runs a command only while holding a named mutex (consul lock's idea), or one
//! of N slots to bound how many such commands run at once.
//!
//! ```text
//! dlockctl run --mutex NAME [--timeout MS] [--grace-ms MS] -- CMD ARGS...
//! dlockctl run --semaphore NAME --limit N [--timeout MS] [--grace-ms MS] -- CMD ARGS...
//! ```
//!
//! 1. It opens a session, create-or-opens the mutex and waits for it (forever, or `--timeout`
//!    milliseconds). SIGINT, SIGTERM, SIGHUP or SIGQUIT while it connects or waits end it
//!    (exit 128+N); other signals are ignored until the command runs.
//! 2. It starts the command, in a process group of its own, with `DLOCK_LOCK_NAME` (the mutex
//!    held), `DLOCK_FENCING_TOKEN` (the grant's token, for the resource to check:
//!    docs/architecture.md "Fencing token"), `DLOCK_ABANDONED` (`1` if the previous holder
//!    ended without releasing, as `WAIT_ABANDONED` says: what it protects may be half-done)
//!    and `DLOCK_SESSION_ID` in its environment. It does not start it if the session's lease is
//!    no longer `Alive` when the mutex is granted.
//! 3. It forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH to the
//!    command's process group. The group is not the terminal's foreground group: a Ctrl-C
//!    reaches `dlockctl`, which passes it on once, and a command that reads from the terminal
//!    is stopped by it (give it its input from a file or a pipe).
//! 4. If the session leaves `Alive` (jeopardy: no keepalive answered for 2/3 of the lease, so
//!    the cluster may soon expire it and give the mutex to someone else), it sends the group
//!    SIGTERM, then SIGKILL after `--grace-ms` (default and at most a sixth of the session TTL,
//!    which always ends before the cluster can expire the session; at once if the lease has
//!    run out), and ends the session without releasing: the next holder sees the mutex
//!    abandoned.
//! 5. When the command exits, whatever it left running in its group is killed, the mutex is
//!    released, and `dlockctl` exits with the command's status.
//!
//! If `dlockctl` itself is killed (SIGKILL), the kernel kills the command's first process at
//! once (`PR_SET_PDEATHSIG`); processes it started are its own to stop (a command that
//! starts long-lived children should stop them when it is terminated).
//!
//! `--semaphore NAME --limit N` holds one of the N mutexes `NAME.0` ... `NAME.<N-1>` (a wait
//! for any of them), not a Win32 semaphore: a semaphore's count has no owner, so a holder
//! killed with SIGKILL would take its unit with it forever, while a slot mutex is abandoned
//! and handed on when its session expires. N is at most 64 (`MAXIMUM_WAIT_OBJECTS`). Callers
//! should agree on N: a caller with a larger N also uses the higher slots.
//!
//! Exit status: the command's own; 128+N if a signal N ended it; 124 if the lock was not
//! acquired within `--timeout`; 125 if `dlockctl` failed (cluster unreachable, bad name, the
//! lock lost while the command ran: the reason is printed); 126 if the command could not be
//! started; 127 if it was not found; 128+N if signal N stopped `dlockctl` before the command
//! started; 2 for a command line `dlockctl` cannot parse (nothing was run).

use std::ffi::OsString;
use std::process::ExitStatus;
use std::time::Duration;

use dlock::{CreateParams, Session, SessionState, Timeout, WaitOutcome};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};

use crate::Failure;
use crate::handles::{SessionArgs, THREAD, client, cluster_name};

/// Exit status: the lock was not acquired within `--timeout`.
pub const EXIT_TIMEOUT: u8 = 124;
/// Exit status: `dlockctl` failed, or lost the lock while the command ran.
pub const EXIT_FAILED: u8 = 125;
/// Exit status: the command could not be started.
pub const EXIT_CANNOT_RUN: u8 = 126;
/// Exit status: the command was not found.
pub const EXIT_NOT_FOUND: u8 = 127;

/// Longest grace between SIGTERM and SIGKILL (also capped at a sixth of the session TTL).
const GRACE_MAX: Duration = Duration::from_secs(60);

/// How long `run` tries to end a session it lost before exiting anyway.
const CLOSE_AFTER_LOSS_MAX: Duration = Duration::from_secs(2);

/// The most slots `--limit` may ask for: one wait covers them all.
pub const LIMIT_MAX: u32 = 64;

/// The command line of `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Hold this named mutex while the command runs.
    #[arg(long, value_name = "NAME", required_unless_present = "semaphore")]
    mutex: Option<String>,
    /// Hold one of `--limit` slots (mutexes `NAME.0` .. `NAME.<limit-1>`) while the command
    /// runs.
    #[arg(
        long,
        value_name = "NAME",
        conflicts_with = "mutex",
        requires = "limit"
    )]
    semaphore: Option<String>,
    /// How many commands may hold `--semaphore` at once (1-64).
    #[arg(
        long,
        conflicts_with = "mutex",
        value_parser = clap::value_parser!(u32).range(1..=LIMIT_MAX as i64)
    )]
    limit: Option<u32>,
    /// Give up (exit 124) if the lock is not acquired within this many milliseconds.
    #[arg(long, value_name = "MS")]
    timeout: Option<u32>,
    /// After SIGTERM for a lost lease, wait this long before SIGKILL (at most, and by
    /// default, a sixth of the session TTL).
    #[arg(long, value_name = "MS")]
    grace_ms: Option<u64>,
    /// The session.
    #[command(flatten)]
    session: SessionArgs,
    /// The command and its arguments (after `--`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        num_args = 1..,
        value_name = "CMD"
    )]
    command: Vec<OsString>,
}

/// The signals passed on to the command.
const FORWARDED: [Signal; 7] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Receives the forwarded signals, in the order they arrived.
struct Signals {
    received: tokio::sync::mpsc::Receiver<Signal>,
}

impl Signals {
    /// Installs the handlers; a task per signal passes them on.
    fn install() -> Result<Signals, Failure> {
        // Signals coalesce in the kernel anyway; a full channel only drops repeats.
        let (tx, received) = tokio::sync::mpsc::channel(4 * FORWARDED.len());
        for sig in FORWARDED {
            let mut stream = signal(SignalKind::from_raw(sig as i32))
                .map_err(|e| Failure(format!("cannot install a handler for {sig}: {e}")))?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(sig).await.is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Signals { received })
    }

    /// The next signal received.
    async fn recv(&mut self) -> Signal {
        match self.received.recv().await {
            Some(sig) => sig,
            // The tasks never end while the runtime runs.
            None => std::future::pending().await,
        }
    }
}

/// Whether `sig` stops `dlockctl` while it waits for the lock.
fn stops_waiting(sig: Signal) -> bool {
    matches!(
        sig,
        Signal::SIGINT | Signal::SIGTERM | Signal::SIGHUP | Signal::SIGQUIT
    )
}

/// Runs `run`; returns the exit status (errors are printed here).
pub async fn run(endpoints: &[String], timeout: Duration, args: RunArgs) -> u8 {
    match run_inner(endpoints, timeout, args).await {
        Ok(code) => code,
        Err(Failure(message)) => {
            eprintln!("dlockctl: {message}");
            EXIT_FAILED
        }
    }
}

/// The lock held while the command runs.
struct Held {
    /// The mutex's name.
    name: String,
    /// Its handle.
    handle: u64,
    /// The grant's fencing token.
    fencing_token: u64,
    /// Whether the previous holder abandoned it.
    abandoned: bool,
}

async fn run_inner(endpoints: &[String], timeout: Duration, args: RunArgs) -> Result<u8, Failure> {
    let names: Vec<String> = match (&args.mutex, &args.semaphore, args.limit) {
        (Some(name), None, _) => vec![name.clone()],
        (None, Some(name), Some(limit)) => (0..limit).map(|i| format!("{name}.{i}")).collect(),
        _ => {
            return Err(Failure(
                "give --mutex NAME or --semaphore NAME --limit N".into(),
            ));
        }
    };
    for name in &names {
        cluster_name(name)?;
    }
    let mut signals = Signals::install()?;

    // Connecting and opening the session can take the whole retry budget while the cluster is
    // unreachable: a stop signal ends it.
    let open = async {
        let client = client(endpoints, timeout).await?;
        client
            .open_session(Duration::from_millis(args.session.ttl_ms))
            .await
            .map_err(|e| Failure(format!("cannot open a session: {e}")))
    };
    tokio::pin!(open);
    let session = loop {
        tokio::select! {
            session = &mut open => break session?,
            sig = signals.recv() => if stops_waiting(sig) {
                return Ok(128 + sig as u8);
            },
        }
    };
    // Subscribed before anything is acquired: no state change can be missed.
    let mut states = session.watch_state();

    // One wait, however many signals arrive: other signals than the stopping ones are ignored
    // until the command runs (a terminal resize must not restart the wait).
    let acquiring = acquire(&session, &names, args.timeout);
    tokio::pin!(acquiring);
    let acquired = loop {
        tokio::select! {
            held = &mut acquiring => break held,
            sig = signals.recv() => if stops_waiting(sig) {
                let _ = session.close().await;
                return Ok(128 + sig as u8);
            },
        }
    };
    let held = match acquired {
        Ok(Some(held)) => held,
        Ok(None) => {
            let _ = session.close().await;
            eprintln!(
                "dlockctl: {} was not acquired within {} ms",
                lock_words(&args),
                args.timeout.unwrap_or(u32::MAX)
            );
            return Ok(EXIT_TIMEOUT);
        }
        Err(e) => {
            let _ = session.close().await;
            return Err(e);
        }
    };
    // A grant that arrived while the lease was already in jeopardy (a long failover) is not
    // worth starting the command for: the cluster may expire the session any moment.
    let state = session.state();
    if state != SessionState::Alive {
        let _ = tokio::time::timeout(CLOSE_AFTER_LOSS_MAX, session.close()).await;
        return Err(Failure(format!(
            "acquired mutex {:?} but the session is {}: the command was not started",
            held.name,
            state_words(state)
        )));
    }
    if held.abandoned {
        eprintln!(
            "dlockctl: acquired mutex {:?} (fencing token {}) ABANDONED by its previous holder, \
             which ended without releasing it: what it protects may be half-done",
            held.name, held.fencing_token
        );
    } else {
        eprintln!(
            "dlockctl: acquired mutex {:?} (fencing token {})",
            held.name, held.fencing_token
        );
    }

    let mut command = tokio::process::Command::new(&args.command[0]);
    command
        .args(&args.command[1..])
        .env("DLOCK_LOCK_NAME", &held.name)
        .env("DLOCK_FENCING_TOKEN", held.fencing_token.to_string())
        .env("DLOCK_ABANDONED", if held.abandoned { "1" } else { "0" })
        .env("DLOCK_SESSION_ID", session.id().to_string())
        // Its own process group: signals and a lost lock reach everything it started.
        .process_group(0);
    die_with_parent(&mut command);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            release(&session, &held).await;
            let _ = session.close().await;
            let program = args.command[0].to_string_lossy();
            eprintln!("dlockctl: cannot run {program:?}: {e}");
            return Ok(if e.kind() == std::io::ErrorKind::NotFound {
                EXIT_NOT_FOUND
            } else {
                EXIT_CANNOT_RUN
            });
        }
    };
    // The group's id is the command's pid; a negative pid signals the whole group.
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(|id| Pid::from_raw(-id))
        .ok_or_else(|| Failure("the command has no process id".into()))?;

    let ended = loop {
        let state = *states.borrow_and_update();
        if state != SessionState::Alive {
            break Err(state);
        }
        tokio::select! {
            // The lease first: a command that ends as the lock is lost did not run under it.
            biased;
            changed = states.changed() => {
                if changed.is_err() {
                    break Err(SessionState::Expired);
                }
            }
            status = child.wait() => break Ok(status),
            sig = signals.recv() => {
                let _ = kill(group, sig);
            }
        }
    };
    match ended {
        Ok(status) => {
            let status = status.map_err(|e| Failure(format!("waiting for the command: {e}")))?;
            // Whatever the command left running in its group must not outlive the lock.
            let _ = kill(group, Signal::SIGKILL);
            release(&session, &held).await;
            let _ = session.close().await;
            Ok(exit_code(status))
        }
        Err(state) => {
            // After jeopardy at least a sixth of the TTL is left before the cluster can expire
            // the session (the lease is more than half the TTL): the grace fits in it.
            let grace = args
                .grace_ms
                .map_or(GRACE_MAX, Duration::from_millis)
                .min(session.ttl() / 6);
            let grace = if state == SessionState::Expired {
                Duration::ZERO
            } else {
                grace
            };
            eprintln!(
                "dlockctl: the session is {}: the cluster may give mutex {:?} to another holder; \
                 stopping the command (SIGTERM, SIGKILL after {} ms)",
                state_words(state),
                held.name,
                grace.as_millis()
            );
            let status = if grace.is_zero() {
                let _ = kill(group, Signal::SIGKILL);
                child.wait().await
            } else {
                let _ = kill(group, Signal::SIGTERM);
                let stopped = async {
                    loop {
                        if *states.borrow_and_update() == SessionState::Expired {
                            return;
                        }
                        if states.changed().await.is_err() {
                            return;
                        }
                    }
                };
                tokio::select! {
                    status = child.wait() => status,
                    _ = tokio::time::sleep(grace) => {
                        let _ = kill(group, Signal::SIGKILL);
                        child.wait().await
                    }
                    _ = stopped => {
                        let _ = kill(group, Signal::SIGKILL);
                        child.wait().await
                    }
                }
            };
            let _ = kill(group, Signal::SIGKILL);
            // Not released: the command was cut short, so the next holder must see the
            // mutex abandoned. Closing abandons it at once if the cluster answers; if it does
            // not, the session expires on its own and dlockctl need not wait for that.
            let _ = tokio::time::timeout(CLOSE_AFTER_LOSS_MAX, session.close()).await;
            let how = match status {
                Ok(status) => describe(status),
                Err(e) => format!("could not be waited for: {e}"),
            };
            Err(Failure(format!(
                "the lock on {:?} was lost while the command ran; the command {how}",
                held.name
            )))
        }
    }
}

/// A session state in words, for messages.
fn state_words(state: SessionState) -> &'static str {
    match state {
        SessionState::Alive => "alive",
        SessionState::Jeopardy => "in jeopardy (no keepalive answered for 2/3 of its lease)",
        SessionState::Expired => "expired (no keepalive answered for its whole lease)",
    }
}

/// `mutex "X"` or `one of N slots of "X"`, for messages.
fn lock_words(args: &RunArgs) -> String {
    match (&args.mutex, &args.semaphore, args.limit) {
        (Some(name), _, _) => format!("mutex {name:?}"),
        (_, Some(name), Some(limit)) => format!("any of the {limit} slots of {name:?}"),
        _ => "the lock".into(),
    }
}

/// Create-or-opens the mutexes and waits for any of them; `None` on timeout.
async fn acquire(
    session: &Session,
    names: &[String],
    timeout: Option<u32>,
) -> Result<Option<Held>, Failure> {
    let mut handles = Vec::with_capacity(names.len());
    for name in names {
        let created = session
            .create(
                THREAD,
                Some(name),
                CreateParams::Mutex {
                    initial_owner: false,
                },
                dlock::win32::MUTEX_ALL_ACCESS,
            )
            .await
            .map_err(|e| Failure(format!("create mutex {name:?}: {e}")))?;
        handles.push(created.handle);
    }
    let wait_for = timeout.map_or(Timeout::Infinite, Timeout::Millis);
    let outcome = session
        .wait(THREAD, &handles, false, wait_for)
        .await
        .map_err(|e| Failure(format!("waiting for {:?}: {e}", names[0])))?;
    let (index, fencing_token, abandoned) = match outcome {
        WaitOutcome::Signaled {
            index,
            fencing_token,
        } => (index, fencing_token, false),
        WaitOutcome::Abandoned {
            index,
            fencing_token,
        } => (index, fencing_token, true),
        WaitOutcome::TimedOut => return Ok(None),
    };
    let (name, handle) = names
        .get(index)
        .zip(handles.get(index))
        .ok_or_else(|| Failure(format!("the wait named handle {index} of {}", names.len())))?;
    Ok(Some(Held {
        name: name.clone(),
        handle: *handle,
        fencing_token,
        abandoned,
    }))
}

/// Releases the held mutex (the command finished, or never started).
async fn release(session: &Session, held: &Held) {
    if let Err(e) = session.release_mutex(THREAD, held.handle).await {
        eprintln!("dlockctl: releasing mutex {:?}: {e}", held.name);
    }
}

/// The exit status that reports `status`: the command's code, or 128+N for signal N.
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.saturating_add(sig as u8),
        (None, None) => EXIT_FAILED,
    }
}

/// How the command ended, for messages.
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!(
            "was killed by {}",
            Signal::try_from(sig).map_or_else(|_| sig.to_string(), |s| s.to_string())
        ),
        _ => "ended".into(),
    }
}

/// Makes the kernel SIGKILL the command when `dlockctl` dies, so nothing keeps running
/// without the lock after its holder is gone (`PR_SET_PDEATHSIG`; the runtime is
/// single-threaded, so the thread that spawns is the one that lives as long as the process).
#[allow(unsafe_code)]
fn die_with_parent(command: &mut tokio::process::Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the child between fork and exec and only makes two system
    // calls (prctl, getppid) and builds an io::Error from a number, none of which allocates
    // or takes a lock.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            if nix::unistd::getppid() != parent {
                // dlockctl died before the request took effect.
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
}

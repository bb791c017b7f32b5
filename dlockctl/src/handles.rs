//! The object commands: `create`, `open`, `wait`, `release`, `set`, `reset`, `pulse` and
//! `release-semaphore`, each the Win32 call of the same name made from a session of its own.
//!
//! A named object lives as long as some handle to it is open (docs/win32-semantics.md §2), and
//! a mutex belongs to the thread that acquired it. A `dlockctl` process is one session with one
//! thread, so what it creates, opens or acquires lasts as long as the process:
//!
//! - By default a command does its call and ends its session. A mutex it acquired (`wait`, or
//!   `create --initial-owner`) is released first, never left to be abandoned, so `wait mutex`
//!   without `--hold` only proves the mutex could be taken.
//! - With `--hold` it keeps the handle, and the mutex it acquired, until SIGINT or SIGTERM
//!   (then it releases the mutex and exits with the call's status, 1 if the release failed)
//!   or until the session is lost (exit 1: a lost session abandons the mutex). This is `etcdctl lock NAME` without a command; for a command
//!   run under the lock use `dlockctl run`.
//! - `release` is `ReleaseMutex`, which only the owning thread may call: a separate `dlockctl`
//!   process never owns the mutex another one holds, so `release` fails with `ERROR_NOT_OWNER`
//!   (288) and names the owner. Stop the holding process (SIGINT/SIGTERM) to release; a
//!   process that dies without releasing leaves the mutex abandoned once its session expires.
//!
//! Exit status: 0 success; 1 a failed call (the Win32 error or the cluster problem is
//! printed); 2 bad usage; 3 `WAIT_TIMEOUT`; 4 `WAIT_ABANDONED` (the mutex *was* acquired, from
//! an owner that died holding it); 128+N when signal N stopped a command before it finished.

use std::time::Duration;

use dlock::win32::{EVENT_ALL_ACCESS, MUTEX_ALL_ACCESS, SEMAPHORE_ALL_ACCESS};
use dlock::{
    Client, ClientConfig, CreateParams, ObjectKind, ObjectState, Session, SessionState, Timeout,
    WaitOutcome,
};
use serde_json::{Value, json};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::Failure;
use crate::objects::Output;

/// Exit status of a wait that timed out.
pub const EXIT_TIMEOUT: u8 = 3;
/// Exit status of a wait that acquired an abandoned mutex.
pub const EXIT_ABANDONED: u8 = 4;

/// The thread id every call of a `dlockctl` process uses: one process, one owner.
pub const THREAD: u64 = 1;

/// An object type as the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A named mutex.
    Mutex,
    /// A named event.
    Event,
    /// A named semaphore.
    Semaphore,
}

impl Kind {
    fn object_kind(self) -> ObjectKind {
        match self {
            Kind::Mutex => ObjectKind::Mutex,
            Kind::Event => ObjectKind::Event,
            Kind::Semaphore => ObjectKind::Semaphore,
        }
    }
}

/// The access every command asks for: all rights of the type.
fn all_access(kind: ObjectKind) -> u32 {
    match kind {
        ObjectKind::Mutex => MUTEX_ALL_ACCESS,
        ObjectKind::Event => EVENT_ALL_ACCESS,
        ObjectKind::Semaphore => SEMAPHORE_ALL_ACCESS,
    }
}

/// Options shared by the object commands (and `run`).
#[derive(Debug, Clone, clap::Args)]
pub struct SessionArgs {
    /// Session TTL in milliseconds: how long the cluster keeps this process's handles and
    /// mutexes after it stops answering (the server clamps it).
    #[arg(long, env = "DLOCK_SESSION_TTL_MS", default_value_t = 10_000)]
    pub ttl_ms: u64,
}

/// What `create` makes when the name is new.
#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    /// The object's type.
    pub kind: Kind,
    /// Its name (`Global\` optional; `Local\` names are not the cluster's).
    pub name: String,
    /// Mutex: the new mutex is owned by this process (`bInitialOwner`).
    #[arg(long)]
    pub initial_owner: bool,
    /// Event: manual-reset (stays signaled until reset) instead of auto-reset.
    #[arg(long)]
    pub manual_reset: bool,
    /// Event: created signaled.
    #[arg(long)]
    pub signaled: bool,
    /// Semaphore: the initial count.
    #[arg(long, default_value_t = 0)]
    pub initial_count: i32,
    /// Semaphore: the maximum count.
    #[arg(long, default_value_t = 1)]
    pub maximum_count: i32,
    /// Keep the handle (and a mutex owned) until SIGINT/SIGTERM.
    #[arg(long)]
    pub hold: bool,
}

/// One object command.
#[derive(Debug, Clone)]
pub enum Op {
    /// `create KIND NAME ...`.
    Create(CreateArgs),
    /// `open KIND NAME [--hold]`.
    Open {
        /// The type expected.
        kind: Kind,
        /// The name.
        name: String,
        /// Keep the handle until a signal.
        hold: bool,
    },
    /// `wait KIND NAME [--timeout MS] [--hold]`.
    Wait {
        /// The type expected.
        kind: Kind,
        /// The name.
        name: String,
        /// Milliseconds; `None` waits forever.
        timeout: Option<u32>,
        /// Keep the handle (and the mutex acquired) until a signal.
        hold: bool,
    },
    /// `release NAME`: `ReleaseMutex`.
    Release {
        /// The mutex's name.
        name: String,
    },
    /// `set NAME`: `SetEvent`.
    Set {
        /// The event's name.
        name: String,
    },
    /// `reset NAME`: `ResetEvent`.
    Reset {
        /// The event's name.
        name: String,
    },
    /// `pulse NAME`: `PulseEvent`.
    Pulse {
        /// The event's name.
        name: String,
    },
    /// `release-semaphore NAME [--count N]`: `ReleaseSemaphore`.
    ReleaseSemaphore {
        /// The semaphore's name.
        name: String,
        /// By how much.
        count: i32,
    },
}

impl Op {
    fn name(&self) -> &str {
        match self {
            Op::Create(args) => &args.name,
            Op::Open { name, .. }
            | Op::Wait { name, .. }
            | Op::Release { name }
            | Op::Set { name }
            | Op::Reset { name }
            | Op::Pulse { name }
            | Op::ReleaseSemaphore { name, .. } => name,
        }
    }

    fn verb(&self) -> &'static str {
        match self {
            Op::Create(_) => "create",
            Op::Open { .. } => "open",
            Op::Wait { .. } => "wait",
            Op::Release { .. } => "release",
            Op::Set { .. } => "set",
            Op::Reset { .. } => "reset",
            Op::Pulse { .. } => "pulse",
            Op::ReleaseSemaphore { .. } => "release-semaphore",
        }
    }

    fn hold(&self) -> bool {
        match self {
            Op::Create(args) => args.hold,
            Op::Open { hold, .. } | Op::Wait { hold, .. } => *hold,
            _ => false,
        }
    }
}

/// A client with the command line's endpoints and retry budget, named `dlockctl` in
/// `dlockctl sessions`.
pub async fn client(endpoints: &[String], timeout: Duration) -> Result<Client, Failure> {
    let mut config = ClientConfig::new(endpoints);
    config.tls = crate::tls();
    config.token = dlock::token_from_env();
    config.request_timeout = timeout;
    config.client_name = format!("dlockctl pid {}", std::process::id());
    Client::connect_with_config(config)
        .await
        .map_err(|e| Failure(format!("bad endpoints: {e}")))
}

/// Refuses a `Local\` name: those live in this host's shared memory, not in the cluster.
pub fn cluster_name(name: &str) -> Result<(), Failure> {
    if name
        .get(..6)
        .is_some_and(|p| p.eq_ignore_ascii_case("Local\\"))
    {
        return Err(Failure(format!(
            "{name:?} is a Local\\ name: it lives in this host's shared memory, not in the \
             cluster (see `dlockctl local`)"
        )));
    }
    Ok(())
}

/// The signals that stop a command: SIGINT, SIGTERM, SIGHUP.
pub struct Stop {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Stop {
    /// Installs the handlers (before anything is acquired, so no signal is missed).
    pub fn install() -> Result<Stop, Failure> {
        let install = |kind: SignalKind| {
            signal(kind).map_err(|e| Failure(format!("cannot install a signal handler: {e}")))
        };
        Ok(Stop {
            int: install(SignalKind::interrupt())?,
            term: install(SignalKind::terminate())?,
            hup: install(SignalKind::hangup())?,
        })
    }

    /// The next stop signal's number.
    pub async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => 2,
            _ = self.term.recv() => 15,
            _ = self.hup.recv() => 1,
        }
    }
}

/// An object's state in a few words (as `list` prints it).
fn state_words(state: &ObjectState) -> String {
    match state.kind {
        ObjectKind::Mutex if state.owner_session_id != 0 => format!(
            "owned by session {} thread {} x{} (fencing token {})",
            state.owner_session_id, state.owner_thread_id, state.recursion, state.fencing_token
        ),
        ObjectKind::Mutex if state.abandoned => "abandoned".into(),
        ObjectKind::Mutex => "free".into(),
        ObjectKind::Event => format!(
            "{} {}",
            if state.manual_reset { "manual" } else { "auto" },
            if state.signaled {
                "signaled"
            } else {
                "unsignaled"
            }
        ),
        ObjectKind::Semaphore => format!("count {}/{}", state.count, state.maximum),
    }
}

fn state_json(state: &ObjectState) -> Value {
    match state.kind {
        ObjectKind::Mutex => json!({
            "owner_session": state.owner_session_id,
            "owner_thread": state.owner_thread_id,
            "recursion": state.recursion,
            "abandoned": state.abandoned,
            "fencing_token": state.fencing_token,
        }),
        ObjectKind::Event => json!({
            "manual_reset": state.manual_reset,
            "signaled": state.signaled,
        }),
        ObjectKind::Semaphore => json!({ "count": state.count, "maximum": state.maximum }),
    }
}

/// What a command did, printed as one line or one JSON document.
struct Report {
    /// The line for people.
    line: String,
    /// The fields for scripts (besides `op`, `name`, `type`).
    fields: Value,
    /// The exit status.
    exit: u8,
}

impl Report {
    /// A successful call's report: `head`, then the object's state if it could be read (also
    /// added to `fields` as `state`).
    fn with_state(head: String, state: Option<ObjectState>, mut fields: Value) -> Report {
        let mut line = head;
        if let Some(state) = &state {
            line.push_str(&format!(": {}", state_words(state)));
        }
        if let Value::Object(map) = &mut fields {
            map.insert("state".into(), json!(state.as_ref().map(state_json)));
        }
        Report {
            line,
            fields,
            exit: 0,
        }
    }
}

/// A failed call, as printed: the Win32 error by name and number, or the cluster problem.
fn failed(what: &str, name: &str, e: dlock::Error) -> Failure {
    Failure(format!("{what} {name:?}: {e}"))
}

/// Runs an object command; returns the exit status.
pub async fn run(
    endpoints: &[String],
    timeout: Duration,
    session_args: &SessionArgs,
    output: Output,
    op: Op,
) -> Result<u8, Failure> {
    cluster_name(op.name())?;
    let mut stop = Stop::install()?;
    let open = async {
        let client = client(endpoints, timeout).await?;
        client
            .open_session(Duration::from_millis(session_args.ttl_ms))
            .await
            .map_err(|e| Failure(format!("cannot open a session: {e}")))
    };
    let session = tokio::select! {
        session = open => session?,
        signo = stop.recv() => return Ok(128 + signo as u8),
    };
    // Subscribed before anything is acquired: no state change can be missed.
    let mut states = session.watch_state();
    // A stop signal before the call is done ends it (a wait is cancelled on the server).
    let done = tokio::select! {
        done = act(&session, &op) => done,
        signo = stop.recv() => {
            let _ = session.close().await;
            return Ok(128 + signo as u8);
        }
    };
    let (report, handle, owned) = match done {
        Ok(done) => done,
        Err(e) => {
            let _ = session.close().await;
            return Err(e);
        }
    };
    let kind = match &op {
        Op::Create(args) => args.kind,
        Op::Open { kind, .. } | Op::Wait { kind, .. } => *kind,
        Op::Release { .. } => Kind::Mutex,
        Op::Set { .. } | Op::Reset { .. } | Op::Pulse { .. } => Kind::Event,
        Op::ReleaseSemaphore { .. } => Kind::Semaphore,
    };
    match output {
        Output::Table => println!("{}", report.line),
        Output::Json => {
            let mut doc = json!({
                "op": op.verb(),
                "name": op.name(),
                "type": kind.object_kind().to_string(),
            });
            if let (Value::Object(map), Value::Object(more)) = (&mut doc, report.fields) {
                map.extend(more);
            }
            println!("{doc}");
        }
    }
    let mut exit = report.exit;
    if op.hold() && exit != EXIT_TIMEOUT {
        if output == Output::Table {
            println!("holding the handle: stop with Ctrl-C or SIGTERM");
        }
        let mut warned = false;
        let lost = loop {
            // The state now, also one reached before this loop (a call that retried until
            // the lease ran out).
            match *states.borrow_and_update() {
                SessionState::Expired => break true,
                SessionState::Jeopardy if !warned => {
                    warned = true;
                    eprintln!(
                        "dlockctl: the session is in jeopardy: the cluster has not answered a \
                         keepalive for 2/3 of its lease"
                    );
                }
                SessionState::Alive => warned = false,
                SessionState::Jeopardy => {}
            }
            tokio::select! {
                _ = stop.recv() => break false,
                changed = states.changed() => if changed.is_err() {
                    break true;
                },
            }
        };
        if lost {
            return Err(Failure(format!(
                "the session expired while holding {:?}: its handles are closed{}",
                op.name(),
                if owned {
                    " and the mutex is abandoned"
                } else {
                    ""
                }
            )));
        }
    }
    if owned && let Some(handle) = handle {
        // Released, not abandoned: this process finished with it normally.
        if let Err(e) = session.release_mutex(THREAD, handle).await {
            eprintln!("dlockctl: releasing {:?}: {e}", op.name());
            exit = 1;
        } else if op.hold() && output == Output::Table {
            println!("released mutex {:?}", op.name());
        }
    }
    let _ = session.close().await;
    Ok(exit)
}

/// Does the call; returns the report, the handle, and whether a mutex is now owned.
async fn act(session: &Session, op: &Op) -> Result<(Report, Option<u64>, bool), Failure> {
    let name = op.name();
    let open = |kind: ObjectKind| async move {
        session
            .open(kind, name, all_access(kind))
            .await
            .map_err(|e| failed(&format!("open {kind}"), name, e))
    };
    let query = |handle: u64| async move { session.query(handle).await.ok() };
    match op {
        Op::Create(args) => {
            let params = match args.kind {
                Kind::Mutex => CreateParams::Mutex {
                    initial_owner: args.initial_owner,
                },
                Kind::Event => CreateParams::Event {
                    manual_reset: args.manual_reset,
                    initial_state: args.signaled,
                },
                Kind::Semaphore => CreateParams::Semaphore {
                    initial: args.initial_count,
                    max: args.maximum_count,
                },
            };
            let kind = args.kind.object_kind();
            let created = session
                .create(THREAD, Some(name), params, all_access(kind))
                .await
                .map_err(|e| failed(&format!("create {kind}"), name, e))?;
            let owned = created.fencing_token != 0;
            let state = query(created.handle).await;
            let verb = if created.already_existed {
                "opened existing"
            } else {
                "created new"
            };
            let fields = json!({
                "created": !created.already_existed,
                "owned": owned,
                "fencing_token": created.fencing_token,
            });
            let report = Report::with_state(format!("{verb} {kind} {name:?}"), state, fields);
            Ok((report, Some(created.handle), owned))
        }
        Op::Open { kind, .. } => {
            let kind = kind.object_kind();
            let handle = open(kind).await?;
            let report = Report::with_state(
                format!("opened {kind} {name:?}"),
                query(handle).await,
                json!({}),
            );
            Ok((report, Some(handle), false))
        }
        Op::Wait { kind, timeout, .. } => {
            let kind = kind.object_kind();
            let handle = open(kind).await?;
            let wait_for = timeout.map_or(Timeout::Infinite, Timeout::Millis);
            let outcome = session
                .wait(THREAD, &[handle], false, wait_for)
                .await
                .map_err(|e| failed(&format!("wait on {kind}"), name, e))?;
            let (line, result, token, exit) = match outcome {
                WaitOutcome::Signaled { fencing_token, .. } if kind == ObjectKind::Mutex => (
                    format!("acquired mutex {name:?} (fencing token {fencing_token})"),
                    "signaled",
                    fencing_token,
                    0,
                ),
                WaitOutcome::Signaled { .. } => {
                    (format!("{kind} {name:?} signaled"), "signaled", 0, 0)
                }
                WaitOutcome::Abandoned { fencing_token, .. } => (
                    format!(
                        "acquired abandoned mutex {name:?} (fencing token {fencing_token}): its \
                         previous owner ended without releasing it (WAIT_ABANDONED)"
                    ),
                    "abandoned",
                    fencing_token,
                    EXIT_ABANDONED,
                ),
                WaitOutcome::TimedOut => (
                    format!(
                        "timed out after {} ms waiting on {kind} {name:?} (WAIT_TIMEOUT)",
                        timeout.unwrap_or(u32::MAX)
                    ),
                    "timeout",
                    0,
                    EXIT_TIMEOUT,
                ),
            };
            let owned = token != 0;
            let fields = json!({ "result": result, "fencing_token": token });
            Ok((Report { line, fields, exit }, Some(handle), owned))
        }
        Op::Release { .. } => {
            let handle = open(ObjectKind::Mutex).await?;
            match session.release_mutex(THREAD, handle).await {
                // A fresh session owns nothing: the server would have broken the ownership rule.
                Ok(()) => Err(Failure(format!(
                    "release mutex {name:?}: released by a session that never acquired it"
                ))),
                Err(e) => {
                    let owner = match query(handle).await {
                        Some(state) if state.owner_session_id != 0 => format!(
                            "; it is owned by session {} thread {}: only that owner can release \
                             it (stop the process holding it, or let its session expire)",
                            state.owner_session_id, state.owner_thread_id
                        ),
                        Some(_) => "; nobody owns it".to_owned(),
                        None => String::new(),
                    };
                    Err(Failure(format!("release mutex {name:?}: {e}{owner}")))
                }
            }
        }
        Op::Set { .. } | Op::Reset { .. } | Op::Pulse { .. } => {
            let handle = open(ObjectKind::Event).await?;
            let (done, verb) = match op {
                Op::Set { .. } => (session.set_event(handle).await, "set"),
                Op::Reset { .. } => (session.reset_event(handle).await, "reset"),
                _ => (session.pulse_event(handle).await, "pulsed"),
            };
            done.map_err(|e| failed(op.verb(), name, e))?;
            let report = Report::with_state(
                format!("{verb} event {name:?}"),
                query(handle).await,
                json!({}),
            );
            Ok((report, Some(handle), false))
        }
        Op::ReleaseSemaphore { count, .. } => {
            let handle = open(ObjectKind::Semaphore).await?;
            let previous = session
                .release_semaphore(handle, *count)
                .await
                .map_err(|e| failed("release-semaphore", name, e))?;
            let line = format!(
                "released semaphore {name:?} by {count}: count {previous} -> {}",
                previous.saturating_add(*count)
            );
            let fields =
                json!({ "previous_count": previous, "count": previous.saturating_add(*count) });
            let report = Report {
                line,
                fields,
                exit: 0,
            };
            Ok((report, Some(handle), false))
        }
    }
}

//! Golden-script tests for the namespace state machine, plus snapshot and determinism tests.
//!
//! Scripts live in `testscripts/<area>/<behaviour>`; each starts with a `#` sentence stating the
//! property and the spec section it comes from. Regenerate with `UPDATE_GOLDENFILES=1` and read
//! every changed output against the spec.
//!
//! # Vocabulary
//!
//! Sessions are given symbolic names (`s1`); handles are printed and referred to as `h<id>` (the
//! real handle id). Every command that reaches the state machine is applied at the next log
//! index (starting at 1), so a fencing token equals the number of the command that granted it.
//! Client commands take optional `seq=N` (default: the session's next sequence number),
//! `ack=N` (default 0) and `done=N,N...` (the waits whose outcome the client has received) to
//! exercise deduplication.
//!
//! ```text
//! session NAME [ttl=MS] [client=TEXT]         OpenSession
//! checkpoint [elapsed=MS] NAME=MS...         Checkpoint: watched time elapsed since the
//!                                             previous one, each session's silence
//! expire NAME                                 ExpireSession
//! timeout NAME SEQ                            TimeoutWait (the leader's timeout)
//! cancel_wait NAME SEQ                        CancelWait (the client gives the wait up)
//! await NAME SEQ                              Namespace::wait_status
//! now MS                                      set the clock stamped into later commands
//! advance MS                                  move the clock; TimeoutWait every expired wait
//! limits KEY=N...                             replace the limits (before the first command)
//! create NAME mutex|event|semaphore [OBJNAME] [t=] [owner=] [manual=] [set=] [initial=] [max=]
//!        [access=] [pad=N pad_char=C]         Create (no OBJNAME: unnamed; pad: grow the name
//!                                             to N UTF-16 units)
//! open NAME KIND [OBJNAME] [access=] [pad=]   Open (no OBJNAME: lpName NULL)
//! close NAME H                                CloseHandle
//! release_mutex NAME H [t=]                   ReleaseMutex
//! release_semaphore NAME H [count=1]          ReleaseSemaphore
//! set|reset|pulse NAME H                      SetEvent / ResetEvent / PulseEvent
//! wait NAME H... [all=] [timeout=MS|infinite] [t=] [repeat=N]
//! signal_wait NAME SIGNAL WAIT [timeout=] [t=]
//! thread_exit NAME [t=]                       ThreadExit
//! close_session NAME                          CloseSession
//! query NAME H                                Namespace::query
//! state OBJNAME                               object state by name (Namespace internals)
//! fence OBJNAME TOKEN                         Namespace::check_fencing_token
//! sessions | pending | dump                   summaries
//! set_recursion OBJNAME N                     test hook: force a mutex's recursion count
//! ```

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;

use super::wait::{Outcome, Taken};
use super::*;
use dlock_proto::vocab::*;
// The namespace's own outcome and state types, not the client-facing ones of the vocabulary.
use super::{ObjectState, WaitOutcome};

/// Runs the namespace and a twin fed the same commands (determinism), checking invariants and a
/// snapshot round trip after every command.
struct Runner {
    ns: Namespace,
    twin: Namespace,
    index: u64,
    now: u64,
    session_ids: BTreeMap<String, SessionId>,
    session_names: BTreeMap<SessionId, String>,
    next_seq: BTreeMap<SessionId, Seq>,
}

impl Runner {
    fn new() -> Self {
        Runner {
            ns: Namespace::new(),
            twin: Namespace::new(),
            index: 0,
            now: 1_000,
            session_ids: BTreeMap::new(),
            session_names: BTreeMap::new(),
            next_seq: BTreeMap::new(),
        }
    }

    fn apply(&mut self, command: Command) -> ApplyOutput {
        self.index += 1;
        let output = self.ns.apply(self.index, &command);
        let twin = self.twin.apply(self.index, &command);
        assert_eq!(output, twin, "two namespaces diverged on the same command");
        output
    }

    fn session_id(&self, name: &str) -> Result<SessionId, Box<dyn Error>> {
        self.session_ids
            .get(name)
            .copied()
            .ok_or_else(|| format!("unknown session {name}").into())
    }

    fn session_name(&self, id: SessionId) -> String {
        self.session_names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("#{id}"))
    }

    /// Applies a client request and formats its reply and the waits it resolved.
    fn client(
        &mut self,
        name: &str,
        (seq, ack, waits_done): (Option<Seq>, Seq, &[Seq]),
        request: Request,
    ) -> Result<String, Box<dyn Error>> {
        let session = self.session_id(name)?;
        let next = self.next_seq.entry(session).or_insert(1);
        let seq = seq.unwrap_or(*next);
        *next = (*next).max(seq + 1);
        let explicit_seq = seq != *next - 1;
        let validation = validate_request(&request);
        let command = Command::Client {
            secret: SessionSecret([0; 16]),
            session,
            seq,
            ack_below: ack,
            waits_done: waits_done.to_vec(),
            now_unix_ms: self.now,
            request,
        };
        let output = self.apply(command.clone());
        let reply = output.reply.clone().expect("client commands always reply");
        if let (Err(code), false) = (validation, explicit_seq) {
            let Command::Client { request, .. } = &command else {
                unreachable!()
            };
            if !matches!(
                reply,
                Reply::SessionUnknown
                    | Reply::TooManyPending
                    | Reply::Error(Win32Error::INVALID_PARAMETER)
            ) {
                assert_eq!(
                    reply,
                    failure_reply(request, code),
                    "validate_request disagrees"
                );
            }
        }
        let mut out = format!("{name}: {}", self.format_reply(&reply));
        if reply == Reply::WaitPending {
            write!(out, " seq={seq}")?;
        }
        out.push('\n');
        out.push_str(&self.format_resolved(&output.resolved));
        Ok(out)
    }

    fn format_resolved(&self, resolved: &[Resolved]) -> String {
        resolved
            .iter()
            .map(|r| {
                format!(
                    "resolved {} seq={}: {}\n",
                    self.session_name(r.session),
                    r.seq,
                    format_outcome(&r.outcome)
                )
            })
            .collect()
    }

    fn format_reply(&self, reply: &Reply) -> String {
        match reply {
            Reply::SessionOpened { session } => format!("session opened id={session}"),
            Reply::SessionUnknown => "session unknown".into(),
            Reply::SecretMismatch => "secret mismatch".into(),
            Reply::Created {
                handle,
                already_existed,
                fencing_token,
            } => {
                let mut s = format!("created h{handle}");
                s.push_str(if *already_existed {
                    " (existing, 183)"
                } else {
                    " (new)"
                });
                if *fencing_token != 0 {
                    write!(s, " token={fencing_token}").expect("write to String");
                }
                s
            }
            Reply::Opened { handle } => format!("opened h{handle}"),
            Reply::Done => "ok".into(),
            Reply::SemaphoreReleased { previous } => format!("released previous={previous}"),
            Reply::Error(code) => format!("error {} {}", code.code(), code.name()),
            Reply::Wait(outcome) => format_outcome(outcome),
            Reply::WaitPending => "pending".into(),
            Reply::TooManyPending => "too many pending".into(),
        }
    }

    fn format_state(&self, state: &ObjectState) -> String {
        match state {
            ObjectState::Mutex {
                owner,
                recursion,
                abandoned,
                fencing_token,
            } => {
                let mut s = match owner {
                    Some((session, thread)) => format!(
                        "mutex owner={}/t{thread} recursion={recursion} token={fencing_token}",
                        self.session_name(*session)
                    ),
                    None => "mutex unowned".into(),
                };
                if *abandoned {
                    s.push_str(" abandoned");
                }
                s
            }
            ObjectState::Event {
                manual_reset,
                signaled,
            } => format!(
                "event {} {}",
                if *manual_reset { "manual" } else { "auto" },
                if *signaled { "signaled" } else { "unsignaled" }
            ),
            ObjectState::Semaphore { count, max } => format!("semaphore count={count} max={max}"),
        }
    }

    fn dump(&self) -> String {
        let mut out = String::new();
        for (id, object) in &self.ns.objects {
            let waiters: Vec<String> = object
                .waiters
                .iter()
                .map(|(s, seq)| format!("{}#{seq}", self.session_name(*s)))
                .collect();
            let _ = writeln!(
                out,
                "object {id} name={} handles={} waiters=[{}]: {}",
                object
                    .name
                    .as_deref()
                    .map(|n| format!("{n:?}"))
                    .unwrap_or("-".into()),
                object.handle_count,
                waiters.join(" "),
                self.format_state(&object.state())
            );
        }
        for (id, handle) in &self.ns.handles {
            let _ = writeln!(
                out,
                "h{id}: session={} object={} access={:#x}",
                self.session_name(handle.session),
                handle.object,
                handle.access
            );
        }
        if out.is_empty() {
            out.push_str("empty\n");
        }
        out
    }
}

fn format_outcome(outcome: &WaitOutcome) -> String {
    let with = |base: &str, index: u32, token: u64| {
        let mut s = base.to_string();
        if index != 0 {
            write!(s, "+{index}").expect("write to String");
        }
        if token != 0 {
            write!(s, " token={token}").expect("write to String");
        }
        s
    };
    match outcome {
        WaitOutcome::Signaled {
            index,
            fencing_token,
        } => with("WAIT_OBJECT_0", *index, *fencing_token),
        WaitOutcome::Abandoned {
            index,
            fencing_token,
        } => with("WAIT_ABANDONED_0", *index, *fencing_token),
        WaitOutcome::TimedOut => "WAIT_TIMEOUT".into(),
        WaitOutcome::Failed(code) => format!("WAIT_FAILED {} {}", code.code(), code.name()),
    }
}

fn parse_handle(text: &str) -> Result<HandleId, Box<dyn Error>> {
    Ok(text
        .strip_prefix('h')
        .ok_or_else(|| format!("handle {text} must be h<N>"))?
        .parse()?)
}

fn parse_kind(text: &str) -> Result<ObjectKind, Box<dyn Error>> {
    match text {
        "mutex" => Ok(ObjectKind::Mutex),
        "event" => Ok(ObjectKind::Event),
        "semaphore" => Ok(ObjectKind::Semaphore),
        _ => Err(format!("unknown object kind {text}").into()),
    }
}

/// Parses an access mask: `|`-separated symbolic names or numbers (`0x…` or decimal).
fn parse_access(text: &str) -> Result<u32, Box<dyn Error>> {
    let mut mask = 0;
    for part in text.split('|') {
        mask |= match part {
            "0" => 0,
            "DELETE" => DELETE,
            "READ_CONTROL" => READ_CONTROL,
            "WRITE_DAC" => WRITE_DAC,
            "WRITE_OWNER" => WRITE_OWNER,
            "SYNCHRONIZE" => SYNCHRONIZE,
            "STANDARD_RIGHTS_REQUIRED" => STANDARD_RIGHTS_REQUIRED,
            "ACCESS_SYSTEM_SECURITY" => ACCESS_SYSTEM_SECURITY,
            "MAXIMUM_ALLOWED" => MAXIMUM_ALLOWED,
            "GENERIC_ALL" => GENERIC_ALL,
            "GENERIC_EXECUTE" => GENERIC_EXECUTE,
            "GENERIC_WRITE" => GENERIC_WRITE,
            "GENERIC_READ" => GENERIC_READ,
            "MUTANT_QUERY_STATE" | "MUTEX_MODIFY_STATE" => MUTANT_QUERY_STATE,
            "MUTEX_ALL_ACCESS" => MUTEX_ALL_ACCESS,
            "EVENT_QUERY_STATE" => EVENT_QUERY_STATE,
            "EVENT_MODIFY_STATE" => EVENT_MODIFY_STATE,
            "EVENT_ALL_ACCESS" => EVENT_ALL_ACCESS,
            "SEMAPHORE_QUERY_STATE" => SEMAPHORE_QUERY_STATE,
            "SEMAPHORE_MODIFY_STATE" => SEMAPHORE_MODIFY_STATE,
            "SEMAPHORE_ALL_ACCESS" => SEMAPHORE_ALL_ACCESS,
            hex if hex.starts_with("0x") => u32::from_str_radix(&hex[2..], 16)?,
            other => other
                .parse()
                .map_err(|_| format!("unknown access right {other}"))?,
        };
    }
    Ok(mask)
}

/// Parses an optional key into `T`, with a default.
fn key<T: std::str::FromStr>(
    args: &mut goldenscript::ArgumentConsumer<'_>,
    name: &str,
    default: T,
) -> Result<T, Box<dyn Error>>
where
    T::Err: std::fmt::Display,
{
    match args.take_key(name) {
        Some(value) => value
            .parse()
            .map_err(|e| format!("bad {name}={value}: {e}").into()),
        None => Ok(default),
    }
}

fn pos<'a>(
    args: &mut goldenscript::ArgumentConsumer<'a>,
    what: &str,
) -> Result<&'a str, Box<dyn Error>> {
    args.next_pos()
        .ok_or_else(|| format!("missing {what}").into())
}

/// Reads the optional object name (with `pad=N` growing it to N UTF-16 units).
fn object_name(
    args: &mut goldenscript::ArgumentConsumer<'_>,
) -> Result<Option<String>, Box<dyn Error>> {
    let name = args.next_pos().map(str::to_string);
    let pad: usize = key(args, "pad", 0)?;
    let pad_char: char = key(args, "pad_char", 'x')?;
    if pad == 0 {
        return Ok(name);
    }
    let mut name = name.unwrap_or_default();
    while name.encode_utf16().count() < pad {
        name.push(pad_char);
    }
    Ok(Some(name))
}

fn parse_timeout(text: &str) -> Result<u32, Box<dyn Error>> {
    if text == "infinite" {
        Ok(INFINITE)
    } else {
        Ok(text.parse()?)
    }
}

impl goldenscript::Runner for Runner {
    type Command = goldenscript::Command;

    fn run(
        &mut self,
        command: &goldenscript::Command,
        _context: &goldenscript::Context,
    ) -> Result<String, Box<dyn Error>> {
        let mut args = command.consume_args();
        // Keys common to every client command.
        let seq: Option<Seq> = args.take_key("seq").map(str::parse).transpose()?;
        let ack: Seq = key(&mut args, "ack", 0)?;
        let thread: ThreadId = key(&mut args, "t", 1)?;
        let done: Vec<Seq> = match args.take_key("done") {
            Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let out = match command.name.as_str() {
            "session" => {
                let name = pos(&mut args, "session name")?.to_string();
                let ttl_ms = key(&mut args, "ttl", 10_000)?;
                let client_name = key(&mut args, "client", "test".to_string())?;
                let output = self.apply(Command::OpenSession {
                    secret: SessionSecret([0; 16]),
                    ttl_ms,
                    now_unix_ms: self.now,
                    client_name,
                });
                match output.reply {
                    Some(Reply::SessionOpened { session }) => {
                        self.session_ids.insert(name.clone(), session);
                        self.session_names.insert(session, name.clone());
                        format!("{name}: session opened id={session}\n")
                    }
                    Some(reply) => format!("{name}: {}\n", self.format_reply(&reply)),
                    None => unreachable!("OpenSession always replies"),
                }
            }
            "checkpoint" => {
                let mut sessions = Vec::new();
                let mut elapsed_ms = 0;
                while let Some((name, ms)) = args.next_key() {
                    if name == "elapsed" {
                        elapsed_ms = ms.parse()?;
                    } else {
                        sessions.push((self.session_id(name)?, ms.parse()?));
                    }
                }
                let output = self.apply(Command::Checkpoint {
                    now_unix_ms: self.now,
                    elapsed_ms,
                    sessions,
                });
                format!("{}\n", self.format_reply(&output.reply.expect("reply")))
            }
            "expire" => {
                let session = self.session_id(pos(&mut args, "session")?)?;
                let output = self.apply(Command::ExpireSession { session });
                let reply = self.format_reply(&output.reply.expect("reply"));
                format!("{reply}\n{}", self.format_resolved(&output.resolved))
            }
            "timeout" => {
                let session = self.session_id(pos(&mut args, "session")?)?;
                let seq = pos(&mut args, "seq")?.parse()?;
                let output = self.apply(Command::TimeoutWait { session, seq });
                let reply = self.format_reply(&output.reply.expect("reply"));
                format!("{reply}\n{}", self.format_resolved(&output.resolved))
            }
            "now" => {
                self.now = pos(&mut args, "time")?.parse()?;
                String::new()
            }
            "advance" => {
                let by: u64 = pos(&mut args, "milliseconds")?.parse()?;
                self.now += by;
                let mut out = format!("now={}\n", self.now);
                let expired: Vec<PendingWait> = self
                    .ns
                    .pending_waits()
                    .filter(|w| w.deadline_unix_ms().is_some_and(|d| d <= self.now))
                    .collect();
                for wait in expired {
                    let command = Command::TimeoutWait {
                        session: wait.session,
                        seq: wait.seq,
                    };
                    let output = self.apply(command);
                    writeln!(
                        out,
                        "timeout {} seq={}",
                        self.session_name(wait.session),
                        wait.seq
                    )?;
                    out.push_str(&self.format_resolved(&output.resolved));
                }
                out
            }
            "limits" => {
                if self.index != 0 {
                    return Err("limits must come before the first command".into());
                }
                let mut limits = Limits::default();
                limits.sessions_max = key(&mut args, "sessions", limits.sessions_max)?;
                limits.objects_max = key(&mut args, "objects", limits.objects_max)?;
                limits.handles_per_session_max = key(
                    &mut args,
                    "handles_per_session",
                    limits.handles_per_session_max,
                )?;
                limits.waits_per_session_max =
                    key(&mut args, "waits_per_session", limits.waits_per_session_max)?;
                limits.handles_max = key(&mut args, "handles", limits.handles_max)?;
                limits.waits_max = key(&mut args, "waits", limits.waits_max)?;
                limits.replies_max = key(&mut args, "replies", limits.replies_max)?;
                limits.waiters_per_object_max = key(
                    &mut args,
                    "waiters_per_object",
                    limits.waiters_per_object_max,
                )?;
                limits.replies_per_session_max = key(
                    &mut args,
                    "replies_per_session",
                    limits.replies_per_session_max,
                )?;
                self.ns = Namespace::with_limits(limits);
                self.twin = Namespace::with_limits(limits);
                String::new()
            }
            "create" => {
                let name = pos(&mut args, "session")?;
                let kind = parse_kind(pos(&mut args, "kind")?)?;
                let object = object_name(&mut args)?;
                let params = match kind {
                    ObjectKind::Mutex => CreateParams::Mutex {
                        initial_owner: key(&mut args, "owner", false)?,
                    },
                    ObjectKind::Event => CreateParams::Event {
                        manual_reset: key(&mut args, "manual", false)?,
                        initial_state: key(&mut args, "set", false)?,
                    },
                    ObjectKind::Semaphore => CreateParams::Semaphore {
                        initial: key(&mut args, "initial", 0)?,
                        max: key(&mut args, "max", 1)?,
                    },
                };
                let access = match args.take_key("access") {
                    Some(text) => parse_access(text)?,
                    None => kind.all_access(),
                };
                args.reject_next()?;
                let request = Request::Create {
                    thread,
                    name: object,
                    params,
                    access,
                };
                self.client(name, (seq, ack, &done), request)?
            }
            "open" => {
                let name = pos(&mut args, "session")?;
                let kind = parse_kind(pos(&mut args, "kind")?)?;
                let object = object_name(&mut args)?;
                let access = match args.take_key("access") {
                    Some(text) => parse_access(text)?,
                    None => kind.all_access(),
                };
                args.reject_next()?;
                self.client(
                    name,
                    (seq, ack, &done),
                    Request::Open {
                        kind,
                        name: object,
                        access,
                    },
                )?
            }
            "close" | "set" | "reset" | "pulse" | "release_mutex" | "release_semaphore"
            | "query" => {
                let name = pos(&mut args, "session")?;
                let handle = parse_handle(pos(&mut args, "handle")?)?;
                let count = key(&mut args, "count", 1)?;
                args.reject_next()?;
                let request = match command.name.as_str() {
                    "close" => Request::CloseHandle { handle },
                    "set" => Request::SetEvent { handle },
                    "reset" => Request::ResetEvent { handle },
                    "pulse" => Request::PulseEvent { handle },
                    "release_mutex" => Request::ReleaseMutex { thread, handle },
                    "release_semaphore" => Request::ReleaseSemaphore { handle, count },
                    _ => {
                        let session = self.session_id(name)?;
                        return Ok(match self.ns.query(session, handle) {
                            Ok(state) => {
                                format!("{name}: h{handle} {}\n", self.format_state(&state))
                            }
                            Err(code) => format!("{name}: error {} {}\n", code.code(), code.name()),
                        });
                    }
                };
                self.client(name, (seq, ack, &done), request)?
            }
            "wait" => {
                let name = pos(&mut args, "session")?;
                let wait_all = key(&mut args, "all", false)?;
                let timeout_ms =
                    parse_timeout(&key(&mut args, "timeout", "infinite".to_string())?)?;
                let repeat: usize = key(&mut args, "repeat", 1)?;
                let mut handles = Vec::new();
                while let Some(text) = args.next_pos() {
                    handles.push(parse_handle(text)?);
                }
                args.reject_next()?;
                let handles = handles.repeat(repeat);
                let request = Request::Wait {
                    thread,
                    handles,
                    wait_all,
                    timeout_ms,
                };
                self.client(name, (seq, ack, &done), request)?
            }
            "signal_wait" => {
                let name = pos(&mut args, "session")?;
                let signal = parse_handle(pos(&mut args, "signal handle")?)?;
                let wait = parse_handle(pos(&mut args, "wait handle")?)?;
                let timeout_ms =
                    parse_timeout(&key(&mut args, "timeout", "infinite".to_string())?)?;
                args.reject_next()?;
                let request = Request::SignalAndWait {
                    thread,
                    signal,
                    wait,
                    timeout_ms,
                };
                self.client(name, (seq, ack, &done), request)?
            }
            "thread_exit" => {
                let name = pos(&mut args, "session")?;
                args.reject_next()?;
                self.client(name, (seq, ack, &done), Request::ThreadExit { thread })?
            }
            "cancel_wait" => {
                let name = pos(&mut args, "session")?;
                let wait: Seq = pos(&mut args, "wait seq")?.parse()?;
                args.reject_next()?;
                self.client(name, (seq, ack, &done), Request::CancelWait { wait })?
            }
            "await" => {
                let name = pos(&mut args, "session")?;
                let session = self.session_id(name)?;
                let wait: Seq = pos(&mut args, "wait seq")?.parse()?;
                args.reject_next()?;
                let status = match self.ns.wait_status(session, wait) {
                    WaitStatus::SessionUnknown => "session unknown".to_string(),
                    WaitStatus::Pending => "pending".to_string(),
                    WaitStatus::Resolved(outcome) => format_outcome(&outcome),
                    WaitStatus::Unknown => "unknown wait".to_string(),
                };
                format!("{name} seq={wait}: {status}\n")
            }
            "close_session" => {
                let name = pos(&mut args, "session")?;
                args.reject_next()?;
                self.client(name, (seq, ack, &done), Request::CloseSession)?
            }
            "state" => {
                let name = pos(&mut args, "object name")?;
                args.reject_next()?;
                match self.ns.object_state_by_name(name) {
                    Some(state) => format!("{name}: {}\n", self.format_state(&state)),
                    None => format!("{name}: not found\n"),
                }
            }
            "fence" => {
                let name = pos(&mut args, "object name")?;
                let token = pos(&mut args, "token")?.parse()?;
                args.reject_next()?;
                format!(
                    "fence {name} token={token}: {}\n",
                    self.ns.check_fencing_token(name, token)
                )
            }
            "sessions" => {
                let mut out = String::new();
                for info in self.ns.sessions() {
                    writeln!(
                        out,
                        "{}: id={} ttl={} silence={} handles={} pending_waits={} replies={} \
                         outcomes={}",
                        self.session_name(info.id),
                        info.id,
                        info.ttl_ms,
                        info.silence_ms,
                        info.handles,
                        info.pending_waits,
                        info.replies,
                        info.unacknowledged_outcomes
                    )?;
                }
                if out.is_empty() {
                    out.push_str("no sessions\n");
                }
                writeln!(out, "watched={}", self.ns.watched_ms())?;
                out
            }
            "pending" => {
                let mut out = String::new();
                for wait in self.ns.pending_waits() {
                    let deadline = wait
                        .deadline_unix_ms()
                        .map_or("never".to_string(), |d| d.to_string());
                    writeln!(
                        out,
                        "{} seq={} t{} registered={} timeout={} deadline={deadline}",
                        self.session_name(wait.session),
                        wait.seq,
                        wait.thread,
                        wait.registered_unix_ms,
                        wait.timeout_ms
                    )?;
                }
                if out.is_empty() {
                    "no pending waits\n".into()
                } else {
                    out
                }
            }
            "dump" => self.dump(),
            "set_recursion" => {
                let name = pos(&mut args, "object name")?;
                let count: u32 = pos(&mut args, "count")?.parse()?;
                let key = name_key(name).map_err(|c| format!("bad name: {c}"))?;
                for ns in [&mut self.ns, &mut self.twin] {
                    let id = ns.names[key];
                    let ObjectData::Mutex(m) = &mut ns.objects.get_mut(&id).expect("object").data
                    else {
                        return Err("not a mutex".into());
                    };
                    if m.owner.is_none() {
                        return Err("mutex is not owned".into());
                    }
                    m.recursion = count;
                }
                String::new()
            }
            other => return Err(format!("unknown command {other}").into()),
        };
        args.reject_next()?;
        Ok(out)
    }

    fn end_command(
        &mut self,
        _command: &goldenscript::Command,
        _context: &goldenscript::Context,
    ) -> Result<String, Box<dyn Error>> {
        if let Err(err) = self.ns.verify() {
            panic!("invariant violated: {err}");
        }
        let bytes = self.ns.snapshot();
        let restored = Namespace::restore(&bytes)?;
        assert_eq!(restored, self.ns, "snapshot round trip changed the state");
        assert_eq!(bytes, self.twin.snapshot(), "twin snapshot differs");
        Ok(String::new())
    }
}

// The path is relative to the workspace root, where cargo runs rustc.
test_each_file::test_each_path! {
    in "server/src/namespace/testscripts" as scripts => test_goldenscript
}

fn test_goldenscript(path: &std::path::Path) {
    goldenscript::run(&mut Runner::new(), path).expect("goldenscript failed")
}

/// A fixed mix of commands touching every kind of state.
fn sample_commands() -> Vec<Command> {
    let client = |session, seq, request| Command::Client {
        secret: SessionSecret([0; 16]),
        session,
        seq,
        ack_below: 0,
        waits_done: Vec::new(),
        now_unix_ms: 5_000 + seq,
        request,
    };
    let create = |name: &str, params| Request::Create {
        thread: 1,
        name: Some(name.to_string()),
        params,
        access: GENERIC_ALL,
    };
    vec![
        Command::OpenSession {
            secret: SessionSecret([0; 16]),
            ttl_ms: 1_000,
            now_unix_ms: 1,
            client_name: "a".into(),
        },
        Command::OpenSession {
            secret: SessionSecret([0; 16]),
            ttl_ms: 2_000,
            now_unix_ms: 2,
            client_name: "b".into(),
        },
        client(
            1,
            1,
            create(
                "m",
                CreateParams::Mutex {
                    initial_owner: true,
                },
            ),
        ),
        client(
            2,
            1,
            create(
                "Global\\m",
                CreateParams::Mutex {
                    initial_owner: true,
                },
            ),
        ),
        client(
            1,
            2,
            create(
                "e",
                CreateParams::Event {
                    manual_reset: false,
                    initial_state: false,
                },
            ),
        ),
        client(
            2,
            2,
            create(
                "e",
                CreateParams::Event {
                    manual_reset: true,
                    initial_state: true,
                },
            ),
        ),
        client(
            1,
            3,
            create("s", CreateParams::Semaphore { initial: 1, max: 3 }),
        ),
        client(
            2,
            3,
            Request::Wait {
                thread: 7,
                handles: vec![2],
                wait_all: false,
                timeout_ms: 500,
            },
        ),
        client(
            2,
            4,
            Request::Wait {
                thread: 8,
                handles: vec![4, 2],
                wait_all: true,
                timeout_ms: u32::MAX,
            },
        ),
        Command::Checkpoint {
            now_unix_ms: 120,
            elapsed_ms: 200,
            sessions: vec![(1, 100), (2, 50)],
        },
        client(1, 4, Request::SetEvent { handle: 3 }),
        client(
            1,
            5,
            Request::ReleaseSemaphore {
                handle: 5,
                count: 2,
            },
        ),
        client(1, 6, Request::ThreadExit { thread: 1 }),
        Command::TimeoutWait { session: 2, seq: 4 },
    ]
}

#[test]
fn snapshot_round_trips() {
    let mut ns = Namespace::new();
    for (i, command) in sample_commands().iter().enumerate() {
        ns.apply(i as u64 + 1, command);
        let bytes = ns.snapshot();
        let restored = Namespace::restore(&bytes).expect("a snapshot restores");
        assert_eq!(restored, ns);
        assert_eq!(restored.snapshot(), bytes);
    }
    assert!(ns.sessions().count() == 2);
}

#[test]
fn same_commands_give_identical_snapshots() {
    let run = || {
        let mut ns = Namespace::new();
        let outputs: Vec<ApplyOutput> = sample_commands()
            .iter()
            .enumerate()
            .map(|(i, command)| ns.apply(i as u64 + 1, command))
            .collect();
        (outputs, ns.snapshot())
    };
    let (outputs_a, bytes_a) = run();
    let (outputs_b, bytes_b) = run();
    assert_eq!(outputs_a, outputs_b);
    assert_eq!(bytes_a, bytes_b);
}

#[test]
fn restore_rejects_bad_bytes_without_panicking() {
    assert!(matches!(
        Namespace::restore(&[]),
        Err(NamespaceError::Empty)
    ));
    assert!(matches!(
        Namespace::restore(&[9, 0]),
        Err(NamespaceError::Version(9))
    ));
    let mut ns = Namespace::new();
    for (i, command) in sample_commands().iter().enumerate() {
        ns.apply(i as u64 + 1, command);
    }
    let bytes = ns.snapshot();
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(matches!(
        Namespace::restore(&trailing),
        Err(NamespaceError::TrailingBytes(1))
    ));
    // Every truncation and every single-bit flip either fails cleanly or yields a consistent
    // state; none may panic.
    for len in 0..bytes.len() {
        assert!(
            Namespace::restore(&bytes[..len]).is_err(),
            "truncation to {len} accepted"
        );
    }
    for i in 1..bytes.len() {
        for bit in 0..8 {
            let mut flipped = bytes.clone();
            flipped[i] ^= 1 << bit;
            if let Ok(restored) = Namespace::restore(&flipped) {
                restored
                    .verify()
                    .expect("restore only returns consistent states");
            }
        }
    }
}

#[test]
fn validate_request_checks_fields() {
    let wait = |handles: Vec<HandleId>, wait_all| Request::Wait {
        thread: 1,
        handles,
        wait_all,
        timeout_ms: 0,
    };
    assert_eq!(
        validate_request(&wait(vec![], false)),
        Err(Win32Error::INVALID_PARAMETER)
    );
    assert_eq!(validate_request(&wait(vec![1; 64], false)), Ok(()));
    assert_eq!(
        validate_request(&wait(vec![1; 65], false)),
        Err(Win32Error::INVALID_PARAMETER)
    );
    assert_eq!(
        validate_request(&wait(vec![1, 2, 1], true)),
        Err(Win32Error::INVALID_PARAMETER)
    );
    let open = |name: Option<&str>| Request::Open {
        kind: ObjectKind::Mutex,
        name: name.map(str::to_string),
        access: SYNCHRONIZE,
    };
    assert_eq!(
        validate_request(&open(None)),
        Err(Win32Error::INVALID_PARAMETER)
    );
    assert_eq!(
        validate_request(&open(Some(""))),
        Err(Win32Error::INVALID_HANDLE)
    );
    assert_eq!(
        validate_request(&open(Some("Local\\x"))),
        Err(Win32Error::INVALID_PARAMETER)
    );
    assert_eq!(validate_request(&open(Some("Global\\x"))), Ok(()));
    let release = Request::ReleaseSemaphore {
        handle: 1,
        count: 0,
    };
    assert_eq!(
        validate_request(&release),
        Err(Win32Error::INVALID_PARAMETER)
    );
    assert_eq!(
        failure_reply(&release, Win32Error::INVALID_PARAMETER),
        Reply::Error(Win32Error::INVALID_PARAMETER)
    );
}

#[test]
#[should_panic(expected = "applied after index")]
fn apply_refuses_a_non_increasing_index() {
    let mut ns = Namespace::new();
    let open = Command::OpenSession {
        secret: SessionSecret([0; 16]),
        ttl_ms: 1,
        now_unix_ms: 1,
        client_name: String::new(),
    };
    ns.apply(5, &open);
    ns.apply(5, &open);
}

#[test]
fn open_session_refuses_a_long_client_name() {
    let mut ns = Namespace::new();
    let open = |name: String| Command::OpenSession {
        secret: SessionSecret([0; 16]),
        ttl_ms: 1,
        now_unix_ms: 1,
        client_name: name,
    };
    let reply = ns
        .apply(1, &open("x".repeat(CLIENT_NAME_MAX_BYTES + 1)))
        .reply;
    assert_eq!(reply, Some(Reply::Error(Win32Error::INVALID_PARAMETER)));
    assert_eq!(ns.sessions().count(), 0);
    let reply = ns.apply(2, &open("x".repeat(CLIENT_NAME_MAX_BYTES))).reply;
    assert_eq!(reply, Some(Reply::SessionOpened { session: 2 }));
}

/// What fills the wait budget ([`WAITS_MAX`]) of [`largest_namespace`].
#[derive(Debug, Clone, Copy)]
enum WaitBudget {
    /// Pending waits, each on 64 objects (and queued on each).
    Pending,
    /// Unacknowledged outcomes, each of a wait that acquired 64 objects.
    Granted,
}

/// The largest namespace the default limits allow, built directly: every count at its limit
/// (sessions, objects, handles, waits, replies) with the largest item of each kind (the longest
/// client names, object names of 260 UTF-16 units of 3-byte UTF-8 characters, owned mutexes,
/// 64-object waits or grants, the largest reply), ids and tokens of a cluster that has run for
/// 2^48 log entries (178 years at 50,000 entries a second), and the largest sequence numbers
/// and thread ids a client may choose (near 2^64).
fn largest_namespace(budget: WaitBudget) -> Namespace {
    let limits = Limits::default();
    let mut ns = Namespace::with_limits(limits);
    let base: u64 = 1 << 48;
    // Chosen by clients: the largest encodings.
    let seq = |n: u64| u64::MAX - (1 << 32) + n;
    let (owner_thread, waiter_thread) = (u64::MAX - 1, u64::MAX - 2);
    let sessions = limits.sessions_max as u64;
    let objects = limits.objects_max as u64;
    let session_id = |i: u64| base + i;
    let object_id = |i: u64| base + i;
    // Three-byte UTF-8 characters, the index spelled in the last three of them.
    let name = |i: u64| -> String {
        let digit = |d: u64| char::from_u32(0x4e00 + (d & 0xff) as u32).expect("a CJK character");
        let mut name: String = std::iter::repeat_n('\u{4e00}', MAX_PATH as usize - 3).collect();
        name.extend([digit(i >> 16), digit(i >> 8), digit(i)]);
        name
    };
    for i in 0..sessions {
        ns.sessions.insert(
            session_id(i),
            Session {
                secret: SessionSecret([0; 16]),
                client_name: "x".repeat(CLIENT_NAME_MAX_BYTES),
                ttl_ms: u64::from(u32::MAX),
                heard_at_watched_ms: base,
                handles: BTreeSet::new(),
                waits: BTreeSet::new(),
                replies: BTreeMap::new(),
                outcomes: BTreeMap::new(),
                acked_below: seq(0),
            },
        );
    }
    // Every object a mutex owned (recursively) by a thread of some session.
    for i in 0..objects {
        let data = ObjectData::Mutex(MutexData {
            owner: Some((session_id(i % sessions), owner_thread)),
            recursion: u32::MAX >> 1,
            abandoned: false,
            fencing_token: base + i,
        });
        let mut object = Object::new(Some(name(i)), data);
        object.event_epoch = base;
        ns.names.insert(name(i), object_id(i));
        ns.objects.insert(object_id(i), object);
    }
    for h in 0..limits.handles_max as u64 {
        let (session, object) = (session_id(h % sessions), object_id(h % objects));
        ns.handles.insert(
            base + h,
            Handle {
                session,
                object,
                access: 0x1f_0001,
            },
        );
        ns.sessions
            .get_mut(&session)
            .unwrap()
            .handles
            .insert(base + h);
        ns.objects.get_mut(&object).unwrap().handle_count += 1;
    }
    // 64 distinct objects for wait `w`, none owned by the waiting thread.
    let wait_objects =
        |w: u64| -> Vec<ObjectId> { (0..64).map(|k| object_id((w * 64 + k) % objects)).collect() };
    for w in 0..limits.waits_max as u64 {
        let session = session_id(w % sessions);
        let key = (session, seq(w / sessions));
        match budget {
            WaitBudget::Pending => {
                let wait = Wait {
                    thread: waiter_thread,
                    objects: wait_objects(w),
                    wait_all: false,
                    registered_unix_ms: base,
                    registered_watched_ms: base,
                    timeout_ms: u32::MAX - 1,
                };
                for id in &wait.objects {
                    ns.objects.get_mut(id).unwrap().waiters.push_back(key);
                }
                ns.waits.insert(key, wait);
                ns.sessions.get_mut(&session).unwrap().waits.insert(key.1);
            }
            WaitBudget::Granted => {
                let acquired = wait_objects(w)
                    .into_iter()
                    .map(|object| Taken {
                        object,
                        abandoned: true,
                        stamp: base,
                    })
                    .collect();
                let outcome = Outcome {
                    outcome: WaitOutcome::Abandoned {
                        index: 63,
                        fencing_token: base,
                    },
                    thread: waiter_thread,
                    acquired,
                    immediate: false,
                };
                ns.sessions
                    .get_mut(&session)
                    .unwrap()
                    .outcomes
                    .insert(key.1, outcome);
            }
        }
    }
    // The reply tables, each session's oldest request in flight beyond the bound included.
    let per_session = (limits.replies_max as u64).div_ceil(sessions) + 1;
    for i in 0..sessions {
        let session = ns.sessions.get_mut(&session_id(i)).unwrap();
        for n in 0..per_session {
            session.replies.insert(
                seq(1_000_000 + n),
                Reply::Created {
                    handle: base * 2,
                    already_existed: true,
                    fencing_token: base * 2,
                },
            );
        }
    }
    ns.applied_index = base * 4;
    ns.last_handle_id = base * 2;
    ns.last_object_id = base * 2;
    ns.watched_ms = base;
    ns.owned = ns.owner_index();
    ns.outcomes_total = ns.count_outcomes();
    ns.replies_total = ns.count_replies();
    // Every session of a principal of its own with the longest name, under a quota, and every
    // object attributed to one of them.
    let quota = Quota {
        sessions: u32::MAX,
        objects: u32::MAX,
        handles: u32::MAX,
        waits: u32::MAX,
    };
    for i in 0..sessions {
        let mut principal = format!("CN={i}");
        principal.extend(std::iter::repeat_n(
            'x',
            PRINCIPAL_MAX_BYTES - principal.len(),
        ));
        ns.tenant_opened(session_id(i), &principal, quota);
    }
    let ids: Vec<u64> = ns.objects.keys().copied().collect();
    for (n, id) in ids.into_iter().enumerate() {
        let session = session_id(n as u64 % sessions);
        ns.tenant_object_created(id, session);
    }
    ns.usage = ns.count_usage().expect("counts fit");
    ns
}

/// The largest state the limits allow serialises within [`STATE_IMAGE_BYTES_MAX`] (the size
/// the cluster's catch-up test sends) and restores. Prints the sizes.
#[test]
fn the_largest_state_fits_its_bound() {
    for budget in [WaitBudget::Pending, WaitBudget::Granted] {
        let ns = largest_namespace(budget);
        // Verifies the namespace first (panics if the construction is inconsistent).
        let image = ns.snapshot();
        println!(
            "largest namespace ({budget:?} waits): {} bytes ({:.1} MiB), bound {} MiB",
            image.len(),
            image.len() as f64 / (1 << 20) as f64,
            STATE_IMAGE_BYTES_MAX >> 20
        );
        assert!(
            image.len() <= STATE_IMAGE_BYTES_MAX,
            "the largest state ({budget:?} waits) is {} bytes, over the stated bound",
            image.len()
        );
        if let WaitBudget::Granted = budget {
            let restored = Namespace::restore(&image).expect("the largest image restores");
            assert!(
                restored == ns,
                "the largest image restores to the same namespace"
            );
        }
    }
}

#[test]
fn objects_and_sessions_list_in_pages() {
    let mut ns = Namespace::new();
    // Two sessions; "m" owned by session 1 (session 2 opens it as "Global\m"), "e", "s".
    for (i, command) in sample_commands().iter().take(7).enumerate() {
        ns.apply(i as u64 + 1, command);
    }
    let names = |page: &[ObjectSummary]| page.iter().map(|o| o.name.clone()).collect::<Vec<_>>();

    let (all, more) = ns.list_objects("", None, 10);
    assert_eq!(
        (names(&all), more),
        (vec!["e".into(), "m".into(), "s".into()], false)
    );
    let m = &all[1];
    assert_eq!(m.handles, 2);
    assert!(matches!(
        m.state,
        ObjectState::Mutex {
            owner: Some((1, _)),
            ..
        }
    ));

    let (first, more) = ns.list_objects("", None, 2);
    assert_eq!((names(&first), more), (vec!["e".into(), "m".into()], true));
    let (rest, more) = ns.list_objects("", Some("m"), 2);
    assert_eq!((names(&rest), more), (vec!["s".into()], false));
    assert_eq!(
        names(&ns.list_objects("m", None, 10).0),
        vec!["m".to_string()]
    );
    assert!(ns.list_objects("x", None, 10).0.is_empty());
    // A token before the prefix starts at the prefix; one after every match ends the list.
    assert_eq!(
        names(&ns.list_objects("e", Some("a"), 10).0),
        vec!["e".to_string()]
    );
    assert!(ns.list_objects("e", Some("f"), 10).0.is_empty());

    let (sessions, more) = ns.list_sessions(0, 10);
    assert!(!more);
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0].info.client_name, "a");
    assert_eq!(sessions[0].owned_mutexes, vec!["m".to_string()]);
    assert_eq!(sessions[0].owned_count, 1);
    assert!(sessions[1].owned_mutexes.is_empty());
    let (first, more) = ns.list_sessions(0, 1);
    assert!(more && first.len() == 1);
    let (second, more) = ns.list_sessions(first[0].info.id, 1);
    assert!(!more && second.len() == 1 && second[0].info.client_name == "b");
}

/// Issue 13: session ids are log indexes, so anyone could act in another session's name. A
/// request without the session's secret gets `SecretMismatch`, records nothing (the same
/// sequence number with the right secret then runs), and changes nothing.
#[test]
fn a_request_without_its_sessions_secret_changes_nothing() {
    let mut ns = Namespace::new();
    let secret = SessionSecret([7; 16]);
    let open = Command::OpenSession {
        secret,
        ttl_ms: 1_000,
        now_unix_ms: 1,
        client_name: "owner".into(),
    };
    assert_eq!(
        ns.apply(1, &open).reply,
        Some(Reply::SessionOpened { session: 1 })
    );
    let create = |secret| Command::Client {
        session: 1,
        secret,
        seq: 1,
        ack_below: 0,
        waits_done: Vec::new(),
        now_unix_ms: 2,
        request: Request::Create {
            thread: 1,
            name: Some("taken".into()),
            params: CreateParams::Mutex {
                initial_owner: true,
            },
            access: GENERIC_ALL,
        },
    };
    let before = ns.snapshot();
    for (index, wrong) in [(2, SessionSecret([0; 16])), (3, SessionSecret([8; 16]))] {
        assert_eq!(
            ns.apply(index, &create(wrong)).reply,
            Some(Reply::SecretMismatch)
        );
    }
    assert_eq!(
        Namespace::restore(&before)
            .unwrap()
            .sessions()
            .collect::<Vec<_>>(),
        ns.sessions().collect::<Vec<_>>()
    );
    assert!(matches!(
        ns.apply(4, &create(secret)).reply,
        Some(Reply::Created { .. })
    ));
    assert_eq!(ns.session_secret(1), Some(secret));
    assert!(secret.matches(&SessionSecret([7; 16])));
    let mut last_differs = [7; 16];
    last_differs[15] = 6;
    assert!(!secret.matches(&SessionSecret(last_differs)));
    assert_eq!(format!("{secret:?}"), "SessionSecret(..)", "never printed");
}

#[test]
fn an_acl_limited_create_or_open_is_denied_or_trimmed_and_a_denial_changes_nothing() {
    let mut ns = Namespace::new();
    let open_session = Command::OpenSession {
        secret: SessionSecret([0; 16]),
        ttl_ms: 1_000,
        now_unix_ms: 1,
        client_name: String::new(),
    };
    ns.apply(1, &open_session);
    let mut index = 1;
    let mut run = |ns: &mut Namespace, request: Request| {
        index += 1;
        ns.apply(
            index,
            &Command::Client {
                secret: SessionSecret([0; 16]),
                session: 1,
                seq: index,
                ack_below: 0,
                waits_done: Vec::new(),
                now_unix_ms: 1,
                request,
            },
        )
        .reply
        .expect("a reply")
    };
    let limited = |allowed: Allowed, request: Request| Request::Limited {
        allowed,
        request: Box::new(request),
    };
    let create = |access| Request::Create {
        thread: 1,
        name: Some("jobs/e".into()),
        params: CreateParams::Event {
            manual_reset: true,
            initial_state: false,
        },
        access,
    };
    let open = |access| Request::Open {
        kind: ObjectKind::Event,
        name: Some("jobs/e".into()),
        access,
    };
    let read_only = Allowed {
        create: false,
        open: true,
        synchronize: true,
        modify_state: false,
    };
    let denied = Reply::Error(Win32Error::ACCESS_DENIED);
    // No right to create (asking only for what the rights allow): 5, and no object.
    assert_eq!(
        run(&mut ns, limited(read_only, create(SYNCHRONIZE))),
        denied
    );
    assert!(ns.object_state_by_name("jobs/e").is_none());
    // Without the right to open, a missing name is not even reported missing.
    assert_eq!(
        run(&mut ns, limited(Allowed::default(), open(SYNCHRONIZE))),
        denied
    );
    // Created with every right, then opened under the read-only policy.
    let Reply::Created { .. } = run(&mut ns, limited(Allowed::ALL, create(EVENT_ALL_ACCESS)))
    else {
        panic!("created");
    };
    let handles_before = ns.sessions().next().unwrap().handles;
    assert_eq!(
        run(&mut ns, limited(read_only, open(EVENT_MODIFY_STATE))),
        denied
    );
    assert_eq!(
        run(&mut ns, limited(read_only, create(GENERIC_ALL))),
        denied
    );
    assert_eq!(ns.sessions().next().unwrap().handles, handles_before);
    // MAXIMUM_ALLOWED gets what the policy allows, and the handle cannot set the event.
    let Reply::Opened { handle } = run(&mut ns, limited(read_only, open(MAXIMUM_ALLOWED))) else {
        panic!("opened");
    };
    assert_eq!(run(&mut ns, Request::SetEvent { handle }), denied);
    let Reply::Opened { .. } = run(&mut ns, limited(read_only, open(SYNCHRONIZE))) else {
        panic!("opened for waiting");
    };
    // A create that finds the name needs the right to open it.
    let create_only = Allowed {
        create: true,
        open: false,
        synchronize: true,
        modify_state: true,
    };
    assert_eq!(
        run(&mut ns, limited(create_only, create(SYNCHRONIZE))),
        denied
    );
    // A creator's handle is trimmed too: created with MAXIMUM_ALLOWED without modify-state,
    // it cannot set its own event.
    let no_modify = Allowed {
        modify_state: false,
        ..Allowed::ALL
    };
    let new_event = Request::Create {
        thread: 1,
        name: Some("jobs/f".into()),
        params: CreateParams::Event {
            manual_reset: true,
            initial_state: false,
        },
        access: MAXIMUM_ALLOWED,
    };
    let Reply::Created { handle: own, .. } = run(&mut ns, limited(no_modify, new_event)) else {
        panic!("created");
    };
    assert_eq!(run(&mut ns, Request::SetEvent { handle: own }), denied);
    // Only Create and Open may be limited.
    assert_eq!(
        run(
            &mut ns,
            limited(Allowed::ALL, Request::CloseHandle { handle })
        ),
        Reply::Error(Win32Error::INVALID_PARAMETER)
    );
}

#[test]
fn a_principal_at_its_quota_gets_1450_and_another_is_unaffected() {
    let mut ns = Namespace::new();
    let quota = Quota {
        sessions: 2,
        objects: 2,
        handles: 3,
        waits: 1,
    };
    let index = std::cell::Cell::new(0u64);
    let next = || {
        index.set(index.get() + 1);
        index.get()
    };
    let open = |ns: &mut Namespace, principal: &str| {
        ns.apply(
            next(),
            &Command::OpenSessionAs {
                ttl_ms: 10_000,
                secret: SessionSecret([0; 16]),
                now_unix_ms: 1,
                client_name: String::new(),
                principal: principal.into(),
                quota,
            },
        )
        .reply
        .expect("a reply")
    };
    let full = Reply::Error(Win32Error::NO_SYSTEM_RESOURCES);
    let Reply::SessionOpened { session: a1 } = open(&mut ns, "CN=alice") else {
        panic!("opened");
    };
    let Reply::SessionOpened { session: a2 } = open(&mut ns, "CN=alice") else {
        panic!("opened");
    };
    assert_eq!(open(&mut ns, "CN=alice"), full, "alice's third session");
    let Reply::SessionOpened { session: b } = open(&mut ns, "CN=bob") else {
        panic!("bob is not affected");
    };
    let mut seq = 0;
    let mut run = |ns: &mut Namespace, session: SessionId, request: Request| {
        seq += 1;
        ns.apply(
            next(),
            &Command::Client {
                secret: SessionSecret([0; 16]),
                session,
                seq,
                ack_below: 0,
                waits_done: Vec::new(),
                now_unix_ms: 1,
                request,
            },
        )
        .reply
        .expect("a reply")
    };
    let create = |name: &str| Request::Create {
        thread: 1,
        name: Some(name.into()),
        params: CreateParams::Event {
            manual_reset: true,
            initial_state: false,
        },
        access: EVENT_ALL_ACCESS,
    };
    // Objects: two across alice's sessions, the third refused; bob creates his own.
    let Reply::Created { handle: e1, .. } = run(&mut ns, a1, create("a/1")) else {
        panic!("created");
    };
    let Reply::Created { .. } = run(&mut ns, a2, create("a/2")) else {
        panic!("created");
    };
    assert_eq!(run(&mut ns, a1, create("a/3")), full);
    assert!(ns.object_state_by_name("a/3").is_none());
    let Reply::Created { .. } = run(&mut ns, b, create("b/1")) else {
        panic!("bob is not affected");
    };
    // Handles: alice holds two; one more opens, the next is refused.
    let Reply::Created { .. } = run(&mut ns, a2, create("b/1")) else {
        panic!("opened through create");
    };
    assert_eq!(run(&mut ns, a1, create("b/1")), full);
    // Waits: one blocked wait, the second refused; bob still waits.
    let wait = |handle| Request::Wait {
        thread: 1,
        handles: vec![handle],
        wait_all: false,
        timeout_ms: INFINITE,
    };
    assert_eq!(run(&mut ns, a1, wait(e1)), Reply::WaitPending);
    assert_eq!(
        run(&mut ns, a1, wait(e1)),
        Reply::Wait(WaitOutcome::Failed(Win32Error::NO_SYSTEM_RESOURCES))
    );
    // Closing a session gives its share back; the snapshot keeps the attribution.
    let restored = Namespace::restore(&ns.snapshot()).expect("restore");
    assert_eq!(restored, ns);
    run(&mut ns, a2, Request::CloseSession);
    let Reply::SessionOpened { .. } = open(&mut ns, "CN=alice") else {
        panic!("alice's session back");
    };
    Namespace::restore(&ns.snapshot()).expect("consistent after the close");
}

#[test]
fn a_hostile_tenancy_section_is_refused_without_panicking() {
    let mut ns = Namespace::new();
    ns.apply(
        1,
        &Command::OpenSessionAs {
            ttl_ms: 10_000,
            secret: SessionSecret([0; 16]),
            now_unix_ms: 1,
            client_name: String::new(),
            principal: "CN=alice".into(),
            quota: Quota {
                sessions: 1,
                objects: 1,
                handles: 1,
                waits: 1,
            },
        },
    );
    let image = ns.snapshot();
    assert_eq!(image[0], SNAPSHOT_FORMAT_VERSION);
    assert_eq!(Namespace::restore(&image).unwrap(), ns);
    let body = postcard::to_stdvec(&ns).unwrap();
    let head = 1 + body.len();
    // A huge claimed length for the principal table, a truncated section, trailing bytes.
    let mut huge = image[..head].to_vec();
    huge.extend_from_slice(&[0xFF; 9]);
    huge.push(0x01);
    assert!(Namespace::restore(&huge).is_err());
    assert!(Namespace::restore(&image[..image.len() - 1]).is_err());
    let mut trailing = image.clone();
    trailing.push(0);
    assert!(Namespace::restore(&trailing).is_err());
    // A namespace that never attributed anything still writes format 5.
    let plain = Namespace::new();
    assert_eq!(plain.snapshot()[0], 5);
}

#[test]
fn format_5_snapshots_still_restore() {
    let mut ns = Namespace::new();
    for (i, command) in sample_commands().iter().enumerate() {
        ns.apply(i as u64 + 1, command);
    }
    let mut old = vec![5u8];
    old.extend_from_slice(&postcard::to_stdvec(&ns).unwrap());
    let restored = Namespace::restore(&old).expect("a format 5 snapshot restores");
    assert_eq!(restored, ns);
}

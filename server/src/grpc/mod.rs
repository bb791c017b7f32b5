//! The gRPC face of a node: `dlock.v1.Dlock` implemented on top of the cluster and the
//! namespace. Handlers validate every request before it can reach the log (bad input gets its
//! Win32 error and changes nothing), turn it into a [`Command`], propose it, and turn the
//! namespace's [`Reply`] back into the wire reply.

pub mod admin;
pub mod peer_info;
pub mod status;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dlock_proto::v1 as pb;
use dlock_proto::v1::dlock_server::Dlock;
use futures::Stream;
use tokio::sync::watch;
use tonic::{Request as GrpcRequest, Response, Status, Streaming};
use tracing::{debug, instrument, warn};

use crate::config::Config;
use crate::error::Error;
use crate::machine::{Shared, Touch, lock, now_unix_ms};
use crate::namespace::{
    Command, CreateParams, ObjectKind, ObjectState, Reply, Request, WaitOutcome, WaitStatus,
    validate_request,
};
use dlock_proto::vocab::{
    ERROR_IO_PENDING, WAIT_ABANDONED_0, WAIT_FAILED, WAIT_OBJECT_0, WAIT_TIMEOUT, Win32Error,
};
use peer_info::Directory;
use status::to_status;

/// Longest accepted `client_name`, in bytes.
pub const CLIENT_NAME_BYTES_MAX: usize = crate::namespace::CLIENT_NAME_MAX_BYTES;

/// The `dlock.v1.Dlock` service of one node.
pub struct DlockService {
    shared: Arc<Shared>,
    node: dlock_cluster::Node,
    config: Arc<Config>,
    /// Becomes true when the node shuts down: long calls (waits, keepalive streams) end then.
    stopped: watch::Receiver<bool>,
    /// Client addresses of the members, for leader hints.
    directory: Arc<Directory>,
    /// Confirms leadership before a keepalive is answered `Renewed`.
    confirmer: Arc<LeaseConfirmer>,
}

impl DlockService {
    /// A service over the node's shared state and its Raft node.
    pub fn new(
        shared: Arc<Shared>,
        node: dlock_cluster::Node,
        config: Arc<Config>,
        stopped: watch::Receiver<bool>,
        directory: Arc<Directory>,
    ) -> Self {
        DlockService {
            confirmer: LeaseConfirmer::new(
                node.clone(),
                Duration::from_millis(config.election_timeout_max_ms()),
            ),
            shared,
            node,
            config,
            stopped,
            directory,
        }
    }

    /// Maps a cluster error to its status; "not the leader" carries the leader's client address
    /// in the `dlock-leader-hint` metadata when this node knows it.
    fn cluster_error(&self, err: dlock_cluster::Error) -> Status {
        not_leader_hint(&self.directory, Error::from(err))
    }

    async fn propose(&self, command: Command) -> Result<Reply, Status> {
        let bytes = postcard::to_stdvec(&command)
            .map_err(|e| to_status(Error::Internal(format!("encode command: {e}"))))?;
        let (_index, reply) = self
            .node
            .propose(bytes)
            .await
            .map_err(|e| self.cluster_error(e))?;
        let reply: Reply = postcard::from_bytes(&reply)
            .map_err(|e| to_status(Error::Internal(format!("decode reply: {e}"))))?;
        Ok(reply)
    }

    /// Proposes a client request (already validated) and maps session-level replies to statuses.
    async fn client(
        &self,
        header: Option<pb::RequestHeader>,
        request: Request,
    ) -> Result<Reply, Status> {
        let header = header.ok_or_else(|| Status::invalid_argument("missing request header"))?;
        if header.seq == 0 {
            return Err(Status::invalid_argument(
                "header.seq must be greater than 0",
            ));
        }
        if header.waits_done.len() > crate::namespace::WAITS_PER_SESSION_MAX {
            return Err(Status::invalid_argument(format!(
                "header.waits_done lists {} waits; the limit is {}",
                header.waits_done.len(),
                crate::namespace::WAITS_PER_SESSION_MAX
            )));
        }
        let session = header.session_id;
        let command = Command::Client {
            session,
            seq: header.seq,
            ack_below: header.ack_below,
            waits_done: header.waits_done,
            now_unix_ms: now_unix_ms(),
            request,
        };
        match self.propose(command).await? {
            Reply::SessionUnknown => Err(to_status(Error::SessionUnknown(session))),
            Reply::TooManyPending => Err(to_status(Error::Overloaded(format!(
                "session {session} has too many unacknowledged requests"
            )))),
            reply => Ok(reply),
        }
    }

    /// Registers a wait (or a signal-and-wait), or cancels one: its outcome if it ended at
    /// once, else `pending` (never for a cancel). Never blocks for the outcome: that is `AwaitWait`'s job, so that a blocked wait
    /// never holds back the client's acknowledgements.
    async fn wait(
        &self,
        header: Option<pb::RequestHeader>,
        request: Request,
    ) -> Result<pb::WaitReply, Status> {
        if let Some(code) = refused_before_log(header.as_ref(), &request) {
            return Ok(wait_reply(WaitOutcome::Failed(code)));
        }
        match self.client(header, request).await? {
            Reply::Wait(outcome) => Ok(wait_reply(outcome)),
            Reply::WaitPending => Ok(pending_reply()),
            Reply::Error(code) => Ok(wait_reply(WaitOutcome::Failed(code))),
            other => Err(unexpected(other)),
        }
    }

    /// Where wait `(session, seq)` stands on this node. "Unknown" (and "no such session") are
    /// only believed after a ReadIndex: a new leader may not have applied the registration yet.
    async fn wait_status(&self, session: u64, seq: u64) -> Result<WaitStatus, Status> {
        let status = lock(&self.shared.ns).wait_status(session, seq);
        if matches!(status, WaitStatus::Pending | WaitStatus::Resolved(_)) {
            return Ok(status);
        }
        self.node
            .read_index()
            .await
            .map_err(|e| self.cluster_error(e))?;
        Ok(lock(&self.shared.ns).wait_status(session, seq))
    }

    /// `AwaitWait`: the outcome of a registered wait, blocking up to `max_block`.
    async fn await_outcome(
        &self,
        session: u64,
        seq: u64,
        max_block: Duration,
    ) -> Result<pb::WaitReply, Status> {
        let leadership = *self.node.leadership().borrow();
        if !leadership.is_leader {
            return Err(self.cluster_error(dlock_cluster::Error::NotLeader {
                leader_hint: leadership.leader_id,
            }));
        }
        // Subscribe before looking, so an outcome applied in between cannot be missed.
        let mut subscription = self.shared.subscribe(session, seq).ok_or_else(|| {
            to_status(Error::Overloaded(
                "too many blocked waits on this node".into(),
            ))
        })?;
        match self.wait_status(session, seq).await? {
            WaitStatus::Resolved(outcome) => return Ok(wait_reply(outcome)),
            WaitStatus::Pending => {}
            WaitStatus::SessionUnknown => return Err(to_status(Error::SessionUnknown(session))),
            WaitStatus::Unknown => {
                return Err(Status::failed_precondition(format!(
                    "session {session} has no wait with sequence number {seq} (never \
                     registered, or its outcome was already acknowledged)"
                )));
            }
        }
        let mut stopped = self.stopped.clone();
        let mut leadership = self.node.leadership();
        tokio::select! {
            outcome = subscription.outcome() => match outcome {
                Some(outcome) => Ok(wait_reply(outcome)),
                None => Err(to_status(Error::Retry)),
            },
            () = tokio::time::sleep(max_block) => Ok(pending_reply()),
            // The wait stays registered in the replicated state; the client asks again on
            // another node (or this one after a restart).
            _ = stopped.wait_for(|s| *s) => Err(to_status(Error::Stopped)),
            // A node that lost leadership may be cut off from the majority and never apply the
            // outcome: send the client to the leader.
            lost = leadership.wait_for(|l| !l.is_leader) => {
                let leader_hint = lost.ok().and_then(|l| l.leader_id);
                Err(self.cluster_error(dlock_cluster::Error::NotLeader { leader_hint }))
            }
        }
    }
}

/// How long a keepalive that reaches a new leader waits for its timers to be rebuilt for the
/// term (one ReadIndex round, normally milliseconds) before it is refused.
const TIMERS_READY_WAIT: Duration = Duration::from_secs(2);

/// Longest `AwaitWait` block: a call still pending after this answers `pending` and the client
/// asks again, so no call outlives a node's usefulness by long.
pub const AWAIT_BLOCK_MAX: Duration = Duration::from_secs(30);

/// [`to_status`], plus the `dlock-leader-hint` metadata for "not the leader" when the leader's
/// client address is known.
pub fn not_leader_hint(directory: &Directory, err: Error) -> Status {
    let hint = match &err {
        Error::NotLeader {
            leader_hint: Some(id),
        } => directory.client_addr(*id),
        _ => None,
    };
    let mut status = to_status(err);
    if let Some(addr) = hint.and_then(|a| a.parse().ok()) {
        status
            .metadata_mut()
            .insert(dlock_proto::LEADER_HINT_METADATA, addr);
    }
    status
}

/// A recorded reply of another kind than the request expects: the client reused a sequence
/// number for a different request.
fn unexpected(reply: Reply) -> Status {
    to_status(Error::InvalidArgument(format!(
        "sequence number already used by another request (recorded reply {reply:?})"
    )))
}

/// Confirms this node's leadership for keepalives, in rounds: one ReadIndex (a heartbeat round
/// acknowledged by a quorum) confirms every keepalive that arrived before the round started, so
/// the cost is one round per few milliseconds of keepalives, not one per keepalive, and
/// keepalives still never touch the log.
pub struct LeaseConfirmer {
    node: dlock_cluster::Node,
    /// How long a keepalive waits for its round: a node that cannot confirm within about an
    /// election timeout (a stalled raft thread) refuses it, so the client moves on at once.
    wait: Duration,
    state: std::sync::Mutex<ConfirmRounds>,
    /// `(round, term)` of the latest finished round: the term it confirmed this node leads in
    /// from its start to its end, or `None` if it failed.
    done: watch::Sender<(u64, Option<u64>)>,
}

#[derive(Default)]
struct ConfirmRounds {
    /// The round started last (0: none yet).
    started: u64,
    /// Whether that round is still running.
    running: bool,
    /// The latest round a keepalive waits for.
    wanted: u64,
}

impl LeaseConfirmer {
    /// A confirmer for `node`; a keepalive waits at most `wait` for its round.
    pub fn new(node: dlock_cluster::Node, wait: Duration) -> Arc<LeaseConfirmer> {
        Arc::new(LeaseConfirmer {
            node,
            wait,
            state: std::sync::Mutex::new(ConfirmRounds::default()),
            done: watch::channel((0, None)).0,
        })
    }

    /// True once a round that started after this call confirmed that this node still leads in
    /// `term`; false if that round failed (deposed, cut off, raft thread stalled past the read's
    /// deadline) or confirmed another term. A ReadIndex alone proves nothing on a node that is
    /// no longer leader (raft forwards it to the new leader), so a round only counts if this
    /// node led in the same term when the read started and when it finished.
    pub async fn confirm(self: &Arc<Self>, term: u64) -> bool {
        let mut finished = self.done.subscribe();
        let target = {
            let mut rounds = lock(&self.state);
            // A round already running started before this keepalive arrived: it proves nothing
            // about leadership after the arrival. Wait for the next one.
            let target = rounds.started + 1;
            rounds.wanted = rounds.wanted.max(target);
            if !rounds.running {
                self.start_round(&mut rounds);
            }
            target
        };
        let confirmed = finished.wait_for(|(round, _)| *round >= target);
        match tokio::time::timeout(self.wait, confirmed).await {
            Ok(Ok(value)) => value.1 == Some(term),
            Ok(Err(_)) | Err(_) => false,
        }
    }

    fn start_round(self: &Arc<Self>, rounds: &mut ConfirmRounds) {
        rounds.started += 1;
        rounds.running = true;
        let round = rounds.started;
        let this = self.clone();
        tokio::spawn(async move {
            let before = *this.node.leadership().borrow();
            let read = this.node.read_index().await.is_ok();
            let after = *this.node.leadership().borrow();
            let confirmed =
                (read && before.is_leader && after.is_leader && before.term == after.term)
                    .then_some(after.term);
            let mut rounds = lock(&this.state);
            this.done.send_replace((round, confirmed));
            rounds.running = false;
            if rounds.wanted > round {
                this.start_round(&mut rounds);
            }
        });
    }
}

/// Renews a session's lease on a keepalive. `None` means the session is lost: unknown to the
/// namespace, or its lease already ran out and its expiry is under way.
///
/// A renewal is only answered once this node has confirmed, after the keepalive arrived, that
/// it still leads ([`LeaseConfirmer`]): a deposed leader, or one whose raft thread is stalled,
/// must not tell a client its lease was renewed while the real leader may expire it and hand
/// its mutexes on.
///
/// "Unknown" is only believed after a ReadIndex: right after a restart or a leader change the
/// local namespace may not have applied every committed entry yet (the log is replayed in the
/// background), and telling a live client its session expired would make it drop its locks.
async fn keep_alive(
    shared: &Shared,
    node: &dlock_cluster::Node,
    confirmer: &Arc<LeaseConfirmer>,
    session: u64,
) -> Result<Option<std::time::Duration>, dlock_cluster::Error> {
    let arrived = *node.leadership().borrow();
    // Never hint at this node itself: a node that believes it leads but cannot confirm it
    // (a stalled raft thread) must send the client elsewhere, not back to itself.
    let not_leader = || dlock_cluster::Error::NotLeader {
        leader_hint: node
            .leadership()
            .borrow()
            .leader_id
            .filter(|id| *id != node.id()),
    };
    if !arrived.is_leader {
        return Err(not_leader());
    }
    // The timers must be this term's: a new leader's rebuild replaces every lease, and a
    // deposed leader's are stale (an `Expiring` mark from an old reign must not be reported).
    if !shared.timers_ready(arrived.term, TIMERS_READY_WAIT).await {
        return Err(not_leader());
    }
    let touched = lock(&shared.timers).touch(session, Instant::now());
    // Whatever the answer, it is only given with proof that this node still leads: one retry,
    // so that a single failed round does not end every stream of a healthy leader.
    let confirmed = confirmer.confirm(arrived.term).await
        || (node.leadership().borrow().term == arrived.term
            && confirmer.confirm(arrived.term).await);
    if !confirmed {
        return Err(not_leader());
    }
    match touched {
        Touch::Renewed(ttl) => return Ok(Some(ttl)),
        Touch::Expiring => return Ok(None),
        Touch::Unknown => {}
    }
    // Slow path: the timers may not know a session the namespace has (a snapshot installed
    // after the rebuild). The namespace may lag the log: read it after a ReadIndex. Lock
    // order: ns, then timers.
    node.read_index().await?;
    if node.leadership().borrow().term != arrived.term {
        return Err(not_leader());
    }
    let now = Instant::now();
    let ns = lock(&shared.ns);
    let Some(info) = ns.session(session) else {
        return Ok(None);
    };
    let mut timers = lock(&shared.timers);
    timers.adopt(session, info.ttl_ms, now);
    Ok(match timers.touch(session, now) {
        Touch::Renewed(ttl) => Some(ttl),
        Touch::Expiring | Touch::Unknown => None,
    })
}

fn wait_reply(outcome: WaitOutcome) -> pb::WaitReply {
    match outcome {
        WaitOutcome::Signaled {
            index,
            fencing_token,
        } => pb::WaitReply {
            result: WAIT_OBJECT_0 + index,
            error: 0,
            fencing_token,
            pending: false,
        },
        WaitOutcome::Abandoned {
            index,
            fencing_token,
        } => pb::WaitReply {
            result: WAIT_ABANDONED_0 + index,
            error: 0,
            fencing_token,
            pending: false,
        },
        WaitOutcome::TimedOut => pb::WaitReply {
            result: WAIT_TIMEOUT,
            error: 0,
            fencing_token: 0,
            pending: false,
        },
        WaitOutcome::Failed(code) => pb::WaitReply {
            result: WAIT_FAILED,
            error: code.code(),
            fencing_token: 0,
            pending: false,
        },
    }
}

/// "Registered, no outcome yet". Fail-safe for a client that does not know `pending`: it reads
/// `WAIT_FAILED` with `ERROR_IO_PENDING` (997), never a grant.
fn pending_reply() -> pb::WaitReply {
    pb::WaitReply {
        result: WAIT_FAILED,
        error: ERROR_IO_PENDING,
        fencing_token: 0,
        pending: true,
    }
}

/// The Win32 code of a request that fails the state-independent checks, if it may be refused
/// before the log. Not when its header reports received wait outcomes (`waits_done`): those
/// must reach the log, so such a request is proposed and refused by `apply` instead, with the
/// same reply.
fn refused_before_log(header: Option<&pb::RequestHeader>, request: &Request) -> Option<Win32Error> {
    let code = validate_request(request).err()?;
    header
        .is_none_or(|h| h.waits_done.is_empty())
        .then_some(code)
}

fn status_reply(reply: Reply) -> Result<Response<pb::StatusReply>, Status> {
    match reply {
        Reply::Done => Ok(Response::new(pb::StatusReply { error: 0 })),
        Reply::Error(code) => Ok(Response::new(pb::StatusReply { error: code.code() })),
        other => Err(unexpected(other)),
    }
}

fn kind_from_wire(kind: i32) -> Result<ObjectKind, Status> {
    match pb::ObjectKind::try_from(kind) {
        Ok(pb::ObjectKind::Mutex) => Ok(ObjectKind::Mutex),
        Ok(pb::ObjectKind::Event) => Ok(ObjectKind::Event),
        Ok(pb::ObjectKind::Semaphore) => Ok(ObjectKind::Semaphore),
        _ => Err(Status::invalid_argument(format!(
            "unknown object kind {kind}"
        ))),
    }
}

fn kind_to_wire(kind: ObjectKind) -> pb::ObjectKind {
    match kind {
        ObjectKind::Mutex => pb::ObjectKind::Mutex,
        ObjectKind::Event => pb::ObjectKind::Event,
        ObjectKind::Semaphore => pb::ObjectKind::Semaphore,
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<pb::KeepAliveReply, Status>> + Send>>;

#[tonic::async_trait]
impl Dlock for DlockService {
    #[instrument(skip_all, fields(ttl_ms))]
    async fn open_session(
        &self,
        request: GrpcRequest<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionReply>, Status> {
        let req = request.into_inner();
        if req.client_name.len() > CLIENT_NAME_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "client_name is {} bytes; the limit is {CLIENT_NAME_BYTES_MAX}",
                req.client_name.len()
            )));
        }
        let ttl_ms = self.config.grant_ttl_ms(req.ttl_ms);
        tracing::Span::current().record("ttl_ms", ttl_ms);
        let command = Command::OpenSession {
            ttl_ms,
            now_unix_ms: now_unix_ms(),
            client_name: req.client_name,
        };
        match self.propose(command).await? {
            Reply::SessionOpened { session } => {
                debug!(session, ttl_ms, "session opened");
                Ok(Response::new(pb::OpenSessionReply {
                    session_id: session,
                    ttl_ms,
                    lease_margin_ms: self.config.election_timeout_max_ms(),
                }))
            }
            Reply::Error(Win32Error::NO_SYSTEM_RESOURCES) => Err(to_status(Error::Overloaded(
                "the cluster's session limit is reached".into(),
            ))),
            Reply::Error(code) => Err(to_status(Error::InvalidArgument(format!(
                "session refused with win32 error {code}"
            )))),
            other => Err(unexpected(other)),
        }
    }

    type KeepAliveStream = KeepAliveStream;

    async fn keep_alive(
        &self,
        request: GrpcRequest<Streaming<pb::KeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let inbound = request.into_inner();
        let shared = self.shared.clone();
        let node = self.node.clone();
        let directory = self.directory.clone();
        let confirmer = self.confirmer.clone();
        // One reply per request, in order (`then` runs them one at a time).
        let output = futures::StreamExt::then(inbound, move |item| {
            let (shared, node, directory, confirmer) = (
                shared.clone(),
                node.clone(),
                directory.clone(),
                confirmer.clone(),
            );
            async move {
                let session_id = item?.session_id;
                let leadership = *node.leadership().borrow();
                if !leadership.is_leader {
                    let err = Error::NotLeader {
                        leader_hint: leadership.leader_id,
                    };
                    return Err(not_leader_hint(&directory, err));
                }
                let ttl = keep_alive(&shared, &node, &confirmer, session_id)
                    .await
                    .map_err(|e| not_leader_hint(&directory, Error::from(e)))?;
                Ok(pb::KeepAliveReply {
                    session_id,
                    ttl_ms: ttl.map_or(0, |ttl| ttl.as_millis() as u64),
                    expired: ttl.is_none(),
                })
            }
        });
        let mut stopped = self.stopped.clone();
        let output = futures::StreamExt::take_until(output, async move {
            let _ = stopped.wait_for(|s| *s).await;
        });
        Ok(Response::new(Box::pin(output)))
    }

    #[instrument(skip_all)]
    async fn close_session(
        &self,
        request: GrpcRequest<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let req = request.into_inner();
        status_reply(self.client(req.header, Request::CloseSession).await?)
    }

    #[instrument(skip_all, fields(name))]
    async fn create(
        &self,
        request: GrpcRequest<pb::CreateRequest>,
    ) -> Result<Response<pb::CreateReply>, Status> {
        let req = request.into_inner();
        let params = match kind_from_wire(req.kind)? {
            ObjectKind::Mutex => CreateParams::Mutex {
                initial_owner: req.initial_owner,
            },
            ObjectKind::Event => CreateParams::Event {
                manual_reset: req.manual_reset,
                initial_state: req.initial_state,
            },
            ObjectKind::Semaphore => CreateParams::Semaphore {
                initial: req.initial_count,
                max: req.maximum_count,
            },
        };
        let request = Request::Create {
            thread: req.thread_id,
            name: req.name,
            params,
            access: req.access,
        };
        if let Some(code) = refused_before_log(req.header.as_ref(), &request) {
            return Ok(Response::new(pb::CreateReply {
                error: code.code(),
                handle: 0,
                fencing_token: 0,
            }));
        }
        match self.client(req.header, request).await? {
            Reply::Created {
                handle,
                already_existed,
                fencing_token,
            } => Ok(Response::new(pb::CreateReply {
                error: if already_existed {
                    dlock_proto::vocab::ERROR_ALREADY_EXISTS
                } else {
                    0
                },
                handle,
                fencing_token,
            })),
            Reply::Error(code) => Ok(Response::new(pb::CreateReply {
                error: code.code(),
                handle: 0,
                fencing_token: 0,
            })),
            other => Err(unexpected(other)),
        }
    }

    #[instrument(skip_all)]
    async fn open(
        &self,
        request: GrpcRequest<pb::OpenRequest>,
    ) -> Result<Response<pb::OpenReply>, Status> {
        let req = request.into_inner();
        let request = Request::Open {
            kind: kind_from_wire(req.kind)?,
            name: req.name,
            access: req.access,
        };
        if let Some(code) = refused_before_log(req.header.as_ref(), &request) {
            return Ok(Response::new(pb::OpenReply {
                error: code.code(),
                handle: 0,
            }));
        }
        match self.client(req.header, request).await? {
            Reply::Opened { handle } => Ok(Response::new(pb::OpenReply { error: 0, handle })),
            Reply::Error(code) => Ok(Response::new(pb::OpenReply {
                error: code.code(),
                handle: 0,
            })),
            other => Err(unexpected(other)),
        }
    }

    #[instrument(skip_all)]
    async fn close_handle(
        &self,
        request: GrpcRequest<pb::HandleRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let req = request.into_inner();
        status_reply(
            self.client(req.header, Request::CloseHandle { handle: req.handle })
                .await?,
        )
    }

    #[instrument(skip_all)]
    async fn release_mutex(
        &self,
        request: GrpcRequest<pb::HandleRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let req = request.into_inner();
        status_reply(
            self.client(
                req.header,
                Request::ReleaseMutex {
                    thread: req.thread_id,
                    handle: req.handle,
                },
            )
            .await?,
        )
    }

    #[instrument(skip_all)]
    async fn set_event(
        &self,
        request: GrpcRequest<pb::HandleRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let req = request.into_inner();
        status_reply(
            self.client(req.header, Request::SetEvent { handle: req.handle })
                .await?,
        )
    }

    #[instrument(skip_all)]
    async fn reset_event(
        &self,
        request: GrpcRequest<pb::HandleRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let req = request.into_inner();
        status_reply(
            self.client(req.header, Request::ResetEvent { handle: req.handle })
                .await?,
        )
    }

    #[instrument(skip_all)]
    async fn pulse_event(
        &self,
        request: GrpcRequest<pb::HandleRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let req = request.into_inner();
        status_reply(
            self.client(req.header, Request::PulseEvent { handle: req.handle })
                .await?,
        )
    }

    #[instrument(skip_all)]
    async fn release_semaphore(
        &self,
        request: GrpcRequest<pb::ReleaseSemaphoreRequest>,
    ) -> Result<Response<pb::ReleaseSemaphoreReply>, Status> {
        let req = request.into_inner();
        let request = Request::ReleaseSemaphore {
            handle: req.handle,
            count: req.count,
        };
        if let Some(code) = refused_before_log(req.header.as_ref(), &request) {
            return Ok(Response::new(pb::ReleaseSemaphoreReply {
                error: code.code(),
                previous_count: 0,
            }));
        }
        match self.client(req.header, request).await? {
            Reply::SemaphoreReleased { previous } => Ok(Response::new(pb::ReleaseSemaphoreReply {
                error: 0,
                previous_count: previous,
            })),
            Reply::Error(code) => Ok(Response::new(pb::ReleaseSemaphoreReply {
                error: code.code(),
                previous_count: 0,
            })),
            other => Err(unexpected(other)),
        }
    }

    #[instrument(skip_all, fields(handles))]
    async fn wait(
        &self,
        request: GrpcRequest<pb::WaitRequest>,
    ) -> Result<Response<pb::WaitReply>, Status> {
        let req = request.into_inner();
        tracing::Span::current().record("handles", req.handles.len());
        let request = Request::Wait {
            thread: req.thread_id,
            handles: req.handles,
            wait_all: req.wait_all,
            timeout_ms: req.timeout_ms,
        };
        Ok(Response::new(
            DlockService::wait(self, req.header, request).await?,
        ))
    }

    #[instrument(skip_all)]
    async fn signal_and_wait(
        &self,
        request: GrpcRequest<pb::SignalAndWaitRequest>,
    ) -> Result<Response<pb::WaitReply>, Status> {
        let req = request.into_inner();
        let request = Request::SignalAndWait {
            thread: req.thread_id,
            signal: req.signal_handle,
            wait: req.wait_handle,
            timeout_ms: req.timeout_ms,
        };
        Ok(Response::new(
            DlockService::wait(self, req.header, request).await?,
        ))
    }

    #[instrument(skip_all, fields(session, seq))]
    async fn await_wait(
        &self,
        request: GrpcRequest<pb::AwaitWaitRequest>,
    ) -> Result<Response<pb::WaitReply>, Status> {
        let req = request.into_inner();
        tracing::Span::current().record("session", req.session_id);
        tracing::Span::current().record("seq", req.seq);
        let max_block = Duration::from_millis(u64::from(req.max_block_ms)).min(AWAIT_BLOCK_MAX);
        Ok(Response::new(
            self.await_outcome(req.session_id, req.seq, max_block)
                .await?,
        ))
    }

    #[instrument(skip_all, fields(wait_seq))]
    async fn cancel_wait(
        &self,
        request: GrpcRequest<pb::CancelWaitRequest>,
    ) -> Result<Response<pb::WaitReply>, Status> {
        let req = request.into_inner();
        tracing::Span::current().record("wait_seq", req.wait_seq);
        let request = Request::CancelWait { wait: req.wait_seq };
        Ok(Response::new(
            DlockService::wait(self, req.header, request).await?,
        ))
    }

    #[instrument(skip_all)]
    async fn thread_exit(
        &self,
        request: GrpcRequest<pb::ThreadExitRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let req = request.into_inner();
        status_reply(
            self.client(
                req.header,
                Request::ThreadExit {
                    thread: req.thread_id,
                },
            )
            .await?,
        )
    }

    #[instrument(skip_all)]
    async fn query(
        &self,
        request: GrpcRequest<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryReply>, Status> {
        let req = request.into_inner();
        self.node
            .read_index()
            .await
            .map_err(|e| self.cluster_error(e))?;
        let state = lock(&self.shared.ns).query(req.session_id, req.handle);
        let mut reply = pb::QueryReply::default();
        match state {
            Err(code) => reply.error = code.code(),
            Ok(ObjectState::Mutex {
                owner,
                recursion,
                abandoned,
                fencing_token,
            }) => {
                reply.kind = kind_to_wire(ObjectKind::Mutex) as i32;
                if let Some((session, thread)) = owner {
                    reply.owner_session_id = session;
                    reply.owner_thread_id = thread;
                }
                reply.recursion = recursion;
                reply.abandoned = abandoned;
                reply.fencing_token = fencing_token;
            }
            Ok(ObjectState::Event {
                manual_reset,
                signaled,
            }) => {
                reply.kind = kind_to_wire(ObjectKind::Event) as i32;
                reply.manual_reset = manual_reset;
                reply.signaled = signaled;
            }
            Ok(ObjectState::Semaphore { count, max }) => {
                reply.kind = kind_to_wire(ObjectKind::Semaphore) as i32;
                reply.count = count;
                reply.maximum = max;
            }
        }
        Ok(Response::new(reply))
    }

    #[instrument(skip_all)]
    async fn check_fencing_token(
        &self,
        request: GrpcRequest<pb::CheckFencingTokenRequest>,
    ) -> Result<Response<pb::CheckFencingTokenReply>, Status> {
        let req = request.into_inner();
        self.node
            .read_index()
            .await
            .map_err(|e| self.cluster_error(e))?;
        let valid = lock(&self.shared.ns).check_fencing_token(&req.name, req.fencing_token);
        if !valid {
            warn!(name = %req.name, token = req.fencing_token, "stale fencing token presented");
        }
        Ok(Response::new(pb::CheckFencingTokenReply { valid }))
    }
}

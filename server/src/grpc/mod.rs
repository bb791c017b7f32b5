//! The gRPC face of a node: `dlock.v1.Dlock` implemented on top of the cluster and the
//! namespace. Handlers validate every request before it can reach the log (bad input gets its
//! Win32 error and changes nothing), turn it into a [`Command`], propose it, and turn the
//! namespace's [`Reply`] back into the wire reply.
//!
//! The service struct and its RPC methods live here; `waits.rs` answers `Wait`,
//! `SignalAndWait`, `CancelWait` and `AwaitWait`, `keepalive.rs` renews leases only under
//! confirmed leadership (the lease machinery is [`crate::lease`]), and `convert.rs` maps between
//! wire messages and the namespace's types.

pub mod admin;
mod convert;
mod keepalive;
pub mod peer_info;
pub mod status;
mod waits;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dlock_proto::v1 as pb;
use dlock_proto::v1::dlock_server::Dlock;
use futures::Stream;
use tokio::sync::watch;
use tonic::{Request as GrpcRequest, Response, Status, Streaming};
use tracing::{debug, instrument, warn};

use crate::config::Config;
use crate::error::Error;
use crate::lease::LeaseConfirmer;
use crate::metrics::Metrics;
use crate::namespace::{
    Allowed, Command, CreateParams, ObjectKind, Reply, Request, SessionSecret, validate_request,
};
use crate::replica::{Replica, lock, now_unix_ms};
use convert::{kind_from_wire, query_reply, status_reply, unexpected};
use dlock_proto::vocab::Win32Error;
use dlock_proto::vocab::names::{create_name_key, open_name_key};
use keepalive::keep_alive;
use peer_info::Directory;
use status::to_status;
pub use waits::AWAIT_BLOCK_MAX;

/// Longest accepted `client_name`, in bytes.
pub const CLIENT_NAME_BYTES_MAX: usize = crate::namespace::CLIENT_NAME_MAX_BYTES;

/// The `dlock.v1.Dlock` service of one node.
pub struct DlockService {
    replica: Arc<Replica>,
    node: dlock_cluster::Node,
    config: Arc<Config>,
    /// Becomes true when the node shuts down: long calls (waits, keepalive streams) end then.
    stopped: watch::Receiver<bool>,
    /// Client addresses of the members, for leader hints.
    directory: Arc<Directory>,
    /// Confirms leadership before a keepalive is answered `Renewed`.
    confirmer: Arc<LeaseConfirmer>,
    /// Where proposals are counted and timed.
    metrics: Arc<Metrics>,
    /// What each principal may do with which names.
    policy: Arc<crate::acl::Policy>,
}

impl DlockService {
    /// A service over the node's [`Replica`] and its Raft node.
    pub fn new(
        replica: Arc<Replica>,
        node: dlock_cluster::Node,
        config: Arc<Config>,
        stopped: watch::Receiver<bool>,
        directory: Arc<Directory>,
        metrics: Arc<Metrics>,
        policy: Arc<crate::acl::Policy>,
    ) -> Self {
        DlockService {
            policy,
            confirmer: LeaseConfirmer::new(
                node.clone(),
                Duration::from_millis(config.election_timeout_max_ms()),
            ),
            replica,
            node,
            config,
            stopped,
            directory,
            metrics,
        }
    }

    /// `request` (a `Create` or `Open`) under the ACL for `principal`: wrapped in
    /// `Request::Limited` with what the principal may do with its name, unless no ACL is in
    /// force, the object is unnamed (private to its creator), the name is invalid (validation
    /// fails it anyway) or the principal may do everything.
    fn limited(&self, principal: Option<&str>, request: Request) -> Request {
        let acl = self.policy.get();
        if !acl.is_enforced() {
            return request;
        }
        let key = match &request {
            Request::Create { name, .. } => match create_name_key(name.as_deref()) {
                Ok(Some(key)) => key,
                _ => return request,
            },
            Request::Open { name, .. } => match open_name_key(name.as_deref()) {
                Ok(key) => key,
                Err(_) => return request,
            },
            _ => return request,
        };
        let (allowed, _) = acl.check(principal, key);
        if allowed == Allowed::ALL {
            return request;
        }
        debug!(
            principal,
            name = key,
            ?allowed,
            "create/open limited by the ACL"
        );
        Request::Limited {
            allowed,
            request: Box::new(request),
        }
    }

    /// The principal of a request (its client certificate's subject, else its bearer token's
    /// principal, else none).
    ///
    /// # Errors
    ///
    /// `PERMISSION_DENIED` for an unknown bearer token.
    fn principal_of<T>(&self, request: &GrpcRequest<T>) -> Result<Option<String>, Status> {
        self.policy
            .principal_of(request.extensions(), request.metadata())
    }

    /// Maps a cluster error to its status; "not the leader" carries the leader's client address
    /// in the `dlock-leader-hint` metadata when this node knows it.
    fn cluster_error(&self, err: dlock_cluster::Error) -> Status {
        not_leader_hint(&self.directory, Error::from(err))
    }

    async fn propose(&self, command: Command) -> Result<Reply, Status> {
        let bytes = postcard::to_stdvec(&command)
            .map_err(|e| to_status(Error::Internal(format!("encode command: {e}"))))?;
        let started = std::time::Instant::now();
        let proposed = self.node.propose(bytes).await;
        if !matches!(proposed, Err(dlock_cluster::Error::NotLeader { .. })) {
            // A follower's refusal is no proposal (the leader hint sends it elsewhere).
            self.metrics.proposal(started.elapsed(), proposed.is_ok());
        }
        let (_index, reply) = proposed.map_err(|e| self.cluster_error(e))?;
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
        let secret = wire_secret(session, &header.session_secret)?;
        // A known session's secret never changes: a wrong one is refused here without costing
        // a log entry (apply checks again, for a session this node has not applied yet).
        if lock(&self.replica.ns)
            .session_secret(session)
            .is_some_and(|known| !known.matches(&secret))
        {
            warn!(
                session,
                "a request without its session's secret was refused"
            );
            return Err(to_status(Error::SecretMismatch(session)));
        }
        let command = Command::Client {
            session,
            secret,
            seq: header.seq,
            ack_below: header.ack_below,
            waits_done: header.waits_done,
            now_unix_ms: now_unix_ms(),
            request,
        };
        match self.propose(command).await? {
            Reply::SessionUnknown => Err(to_status(Error::SessionUnknown(session))),
            Reply::SecretMismatch => {
                warn!(
                    session,
                    "a request without its session's secret was refused"
                );
                Err(to_status(Error::SecretMismatch(session)))
            }
            Reply::TooManyPending => Err(to_status(Error::Overloaded(format!(
                "session {session} has too many unacknowledged requests"
            )))),
            reply => Ok(reply),
        }
    }
}

/// The session secret a request carried: PERMISSION_DENIED unless it is 16 bytes (a wrong one
/// of the right length is found out where the session is known).
fn wire_secret(session: u64, bytes: &[u8]) -> Result<SessionSecret, Status> {
    SessionSecret::from_wire(bytes).ok_or_else(|| to_status(Error::SecretMismatch(session)))
}

/// Refuses a read request (`Query`, `AwaitWait`) naming a session the namespace knows without
/// its secret. An unknown session passes: the read itself reports it.
fn check_read_secret(replica: &Replica, session: u64, bytes: &[u8]) -> Result<(), Status> {
    let secret = wire_secret(session, bytes)?;
    match lock(&replica.ns).session_secret(session) {
        Some(known) if !known.matches(&secret) => {
            warn!(session, "a read without its session's secret was refused");
            Err(to_status(Error::SecretMismatch(session)))
        }
        _ => Ok(()),
    }
}

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

/// The name of a request the ACL limited, for the log line of a denial.
fn denied_name(request: &Request) -> Option<String> {
    match request {
        Request::Limited { request, .. } => match &**request {
            Request::Create { name, .. } | Request::Open { name, .. } => name.clone(),
            _ => None,
        },
        _ => None,
    }
}

/// Logs a create or open the ACL denied (`name` is set only for limited requests).
fn log_denial(code: Win32Error, principal: Option<&str>, name: Option<&str>, what: &str) {
    if code == Win32Error::ACCESS_DENIED
        && let Some(name) = name
    {
        // Debug: a client can repeat a denied call as often as it likes.
        debug!(
            principal = principal.unwrap_or("(none)"),
            name, what, "ERROR_ACCESS_DENIED for a create or open under the ACL"
        );
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

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<pb::KeepAliveReply, Status>> + Send>>;

#[tonic::async_trait]
impl Dlock for DlockService {
    #[instrument(skip_all, fields(ttl_ms))]
    async fn open_session(
        &self,
        request: GrpcRequest<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionReply>, Status> {
        let principal = self.principal_of(&request)?;
        let req = request.into_inner();
        if req.client_name.len() > CLIENT_NAME_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "client_name is {} bytes; the limit is {CLIENT_NAME_BYTES_MAX}",
                req.client_name.len()
            )));
        }
        if self.config.quota.is_some()
            && principal
                .as_ref()
                .is_some_and(|p| p.len() > crate::namespace::PRINCIPAL_MAX_BYTES)
        {
            return Err(Status::invalid_argument(format!(
                "the client certificate's subject is longer than {} bytes, too long to be a \
                 principal",
                crate::namespace::PRINCIPAL_MAX_BYTES
            )));
        }
        let ttl_ms = self.config.grant_ttl_ms(req.ttl_ms);
        tracing::Span::current().record("ttl_ms", ttl_ms);
        let secret = SessionSecret::random();
        let command = match self.config.quota {
            Some(quota) => Command::OpenSessionAs {
                ttl_ms,
                secret,
                now_unix_ms: now_unix_ms(),
                client_name: req.client_name,
                principal: principal.clone().unwrap_or_default(),
                quota,
            },
            None => Command::OpenSession {
                ttl_ms,
                secret,
                now_unix_ms: now_unix_ms(),
                client_name: req.client_name,
            },
        };
        match self.propose(command).await? {
            Reply::SessionOpened { session } => {
                debug!(session, ttl_ms, "session opened");
                Ok(Response::new(pb::OpenSessionReply {
                    session_id: session,
                    ttl_ms,
                    lease_margin_ms: self.config.election_timeout_max_ms(),
                    session_secret: secret.0.to_vec(),
                }))
            }
            Reply::Error(Win32Error::NO_SYSTEM_RESOURCES) => {
                // At its own quota, a principal gets the same answer until it closes a
                // session: final. The cluster's limit may free up as others' sessions expire:
                // the client backs off and tries again, as before.
                let at_quota = self.config.quota.is_some_and(|quota| {
                    lock(&self.replica.ns).principal_sessions(principal.as_deref().unwrap_or(""))
                        >= quota.sessions
                });
                if !at_quota {
                    return Err(to_status(Error::Overloaded(
                        "the cluster's session limit is reached".into(),
                    )));
                }
                let mut status = to_status(Error::Overloaded(format!(
                    "{} is at its quota of {} sessions",
                    principal
                        .as_deref()
                        .unwrap_or("a caller without a principal"),
                    self.config.quota.map_or(0, |q| q.sessions)
                )));
                status.metadata_mut().insert(
                    dlock_proto::FINAL_METADATA,
                    tonic::metadata::MetadataValue::from_static("1"),
                );
                Err(status)
            }
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
        let replica = self.replica.clone();
        let node = self.node.clone();
        let directory = self.directory.clone();
        let confirmer = self.confirmer.clone();
        // One reply per request, in order (`then` runs them one at a time).
        let output = futures::StreamExt::then(inbound, move |item| {
            let (replica, node, directory, confirmer) = (
                replica.clone(),
                node.clone(),
                directory.clone(),
                confirmer.clone(),
            );
            async move {
                let item = item?;
                let session_id = item.session_id;
                let secret = wire_secret(session_id, &item.session_secret)?;
                let leadership = *node.leadership().borrow();
                if !leadership.is_leader {
                    let err = Error::NotLeader {
                        leader_hint: leadership.leader_id,
                    };
                    return Err(not_leader_hint(&directory, err));
                }
                let ttl = keep_alive(&replica, &node, &confirmer, session_id, &secret)
                    .await
                    .map_err(|e| not_leader_hint(&directory, e))?;
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
        let principal = self.principal_of(&request)?;
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
        let request = self.limited(principal.as_deref(), request);
        let denied_name = denied_name(&request);
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
            Reply::Error(code) => {
                log_denial(code, principal.as_deref(), denied_name.as_deref(), "create");
                Ok(Response::new(pb::CreateReply {
                    error: code.code(),
                    handle: 0,
                    fencing_token: 0,
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    #[instrument(skip_all)]
    async fn open(
        &self,
        request: GrpcRequest<pb::OpenRequest>,
    ) -> Result<Response<pb::OpenReply>, Status> {
        let principal = self.principal_of(&request)?;
        let req = request.into_inner();
        let request = Request::Open {
            kind: kind_from_wire(req.kind)?,
            name: req.name,
            access: req.access,
        };
        let request = self.limited(principal.as_deref(), request);
        let denied_name = denied_name(&request);
        if let Some(code) = refused_before_log(req.header.as_ref(), &request) {
            return Ok(Response::new(pb::OpenReply {
                error: code.code(),
                handle: 0,
            }));
        }
        match self.client(req.header, request).await? {
            Reply::Opened { handle } => Ok(Response::new(pb::OpenReply { error: 0, handle })),
            Reply::Error(code) => {
                log_denial(code, principal.as_deref(), denied_name.as_deref(), "open");
                Ok(Response::new(pb::OpenReply {
                    error: code.code(),
                    handle: 0,
                }))
            }
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
        let secret = wire_secret(req.session_id, &req.session_secret)?;
        Ok(Response::new(
            self.await_outcome(req.session_id, &secret, req.seq, max_block)
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
        check_read_secret(&self.replica, req.session_id, &req.session_secret)?;
        let state = lock(&self.replica.ns).query(req.session_id, req.handle);
        Ok(Response::new(query_reply(state)))
    }

    #[instrument(skip_all)]
    async fn check_fencing_token(
        &self,
        request: GrpcRequest<pb::CheckFencingTokenRequest>,
    ) -> Result<Response<pb::CheckFencingTokenReply>, Status> {
        let principal = self.principal_of(&request)?;
        let req = request.into_inner();
        // Under an ACL, whether a name exists and who owns it is for those who may open it.
        let acl = self.policy.get();
        if acl.is_enforced() {
            let key = dlock_proto::vocab::names::name_key(&req.name).unwrap_or(&req.name);
            if !acl.check(principal.as_deref(), key).0.open {
                return Err(Status::permission_denied(format!(
                    "the ACL grants {} no open right on {:?}",
                    principal
                        .as_deref()
                        .unwrap_or("a caller without a principal"),
                    req.name
                )));
            }
        }
        self.node
            .read_index()
            .await
            .map_err(|e| self.cluster_error(e))?;
        let valid = lock(&self.replica.ns).check_fencing_token(&req.name, req.fencing_token);
        if !valid {
            warn!(name = %req.name, token = req.fencing_token, "stale fencing token presented");
        }
        Ok(Response::new(pb::CheckFencingTokenReply { valid }))
    }
}

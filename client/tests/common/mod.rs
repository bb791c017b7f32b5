//! A tiny in-process mock of dlockd for client tests: a follower that answers every call with
//! `UNAVAILABLE` + leader hint, and a "leader" with just enough state to exercise the client's
//! retry, deduplication, keepalive and facade paths. Not a model of the real state machine.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use dlock_proto::v1::dlock_server::{Dlock, DlockServer};
use dlock_proto::v1::*;
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

#[derive(Default)]
pub struct State {
    pub next_session: u64,
    pub sessions: HashMap<u64, u64>, // id -> ttl ms
    pub next_handle: u64,
    pub names: HashMap<String, i32>,              // name -> kind
    pub handles: HashMap<(u64, u64), String>,     // (session, handle) -> name
    pub owners: HashMap<String, (u64, u64, u64)>, // mutex -> (session, thread, token)
    pub create_replies: HashMap<(u64, u64), CreateReply>,
    pub wait_replies: HashMap<(u64, u64), WaitReply>,
    pub waits_applied: usize,
    pub creates_applied: usize,
    pub lose_next_wait_reply: bool,
    pub keepalives: usize,
    pub thread_exits: Vec<(u64, u64)>,
    pub closed_sessions: Vec<u64>,
    pub next_token: u64,
}

pub type Shared = Arc<Mutex<State>>;

#[derive(Clone)]
pub struct Node {
    pub state: Shared,
    /// Some(leader address) for a follower.
    pub hint: Option<String>,
}

impl Node {
    fn check(&self) -> Result<(), Status> {
        match &self.hint {
            None => Ok(()),
            Some(hint) => {
                let mut status = Status::unavailable("not the leader");
                status
                    .metadata_mut()
                    .insert(dlock_proto::LEADER_HINT_METADATA, hint.parse().unwrap());
                Err(status)
            }
        }
    }

    fn session(&self, header: Option<RequestHeader>) -> Result<RequestHeader, Status> {
        let header = header.ok_or_else(|| Status::invalid_argument("no header"))?;
        if !self
            .state
            .lock()
            .unwrap()
            .sessions
            .contains_key(&header.session_id)
        {
            return Err(Status::not_found("no such session"));
        }
        Ok(header)
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<KeepAliveReply, Status>> + Send>>;

#[tonic::async_trait]
impl Dlock for Node {
    async fn open_session(
        &self,
        r: Request<OpenSessionRequest>,
    ) -> Result<Response<OpenSessionReply>, Status> {
        self.check()?;
        let mut s = self.state.lock().unwrap();
        s.next_session += 1;
        let id = s.next_session;
        let ttl = r.into_inner().ttl_ms.max(100);
        s.sessions.insert(id, ttl);
        Ok(Response::new(OpenSessionReply {
            session_id: id,
            ttl_ms: ttl,
            lease_margin_ms: 0,
            session_secret: vec![0; 16],
        }))
    }

    type KeepAliveStream = KeepAliveStream;

    async fn keep_alive(
        &self,
        r: Request<Streaming<KeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        self.check()?;
        let state = self.state.clone();
        let replies = r.into_inner().map(move |req| {
            let req = req?;
            let mut s = state.lock().unwrap();
            s.keepalives += 1;
            let ttl = s.sessions.get(&req.session_id).copied();
            Ok(KeepAliveReply {
                session_id: req.session_id,
                ttl_ms: ttl.unwrap_or(0),
                expired: ttl.is_none(),
            })
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn close_session(
        &self,
        r: Request<CloseSessionRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        self.check()?;
        let h = self.session(r.into_inner().header)?;
        let mut s = self.state.lock().unwrap();
        s.sessions.remove(&h.session_id);
        s.closed_sessions.push(h.session_id);
        Ok(Response::new(StatusReply { error: 0 }))
    }

    async fn create(&self, r: Request<CreateRequest>) -> Result<Response<CreateReply>, Status> {
        self.check()?;
        let r = r.into_inner();
        let h = self.session(r.header)?;
        let mut s = self.state.lock().unwrap();
        if let Some(reply) = s.create_replies.get(&(h.session_id, h.seq)) {
            return Ok(Response::new(*reply));
        }
        s.creates_applied += 1;
        let name = r.name.clone().unwrap_or_default();
        let reply = match s.names.get(&name).copied() {
            Some(kind) if kind != r.kind => CreateReply {
                error: 6,
                handle: 0,
                fencing_token: 0,
            },
            existing => {
                s.next_handle += 1;
                let handle = s.next_handle;
                s.handles.insert((h.session_id, handle), name.clone());
                s.names.insert(name.clone(), r.kind);
                let mut token = 0;
                if existing.is_none() && r.kind == ObjectKind::Mutex as i32 && r.initial_owner {
                    s.next_token += 1;
                    token = s.next_token;
                    s.owners.insert(name, (h.session_id, r.thread_id, token));
                }
                CreateReply {
                    error: if existing.is_some() { 183 } else { 0 },
                    handle,
                    fencing_token: token,
                }
            }
        };
        s.create_replies.insert((h.session_id, h.seq), reply);
        Ok(Response::new(reply))
    }

    async fn open(&self, r: Request<OpenRequest>) -> Result<Response<OpenReply>, Status> {
        self.check()?;
        let r = r.into_inner();
        let h = self.session(r.header)?;
        let mut s = self.state.lock().unwrap();
        let name = r.name.unwrap_or_default();
        let reply = match s.names.get(&name).copied() {
            None => OpenReply {
                error: 2,
                handle: 0,
            },
            Some(kind) if kind != r.kind => OpenReply {
                error: 6,
                handle: 0,
            },
            Some(_) => {
                s.next_handle += 1;
                let handle = s.next_handle;
                s.handles.insert((h.session_id, handle), name);
                OpenReply { error: 0, handle }
            }
        };
        Ok(Response::new(reply))
    }

    async fn close_handle(
        &self,
        r: Request<HandleRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        self.check()?;
        let r = r.into_inner();
        let h = self.session(r.header)?;
        let mut s = self.state.lock().unwrap();
        let error = match s.handles.remove(&(h.session_id, r.handle)) {
            Some(_) => 0,
            None => 6,
        };
        Ok(Response::new(StatusReply { error }))
    }

    async fn release_mutex(
        &self,
        r: Request<HandleRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        self.check()?;
        let r = r.into_inner();
        let h = self.session(r.header)?;
        let mut s = self.state.lock().unwrap();
        let Some(name) = s.handles.get(&(h.session_id, r.handle)).cloned() else {
            return Ok(Response::new(StatusReply { error: 6 }));
        };
        let error = match s.owners.get(&name) {
            Some(&(sid, tid, _)) if sid == h.session_id && tid == r.thread_id => {
                s.owners.remove(&name);
                0
            }
            _ => 288,
        };
        Ok(Response::new(StatusReply { error }))
    }

    async fn set_event(&self, _: Request<HandleRequest>) -> Result<Response<StatusReply>, Status> {
        self.check()?;
        Err(Status::unimplemented("mock"))
    }

    async fn reset_event(
        &self,
        _: Request<HandleRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        self.check()?;
        Err(Status::unimplemented("mock"))
    }

    async fn pulse_event(
        &self,
        _: Request<HandleRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        self.check()?;
        Err(Status::unimplemented("mock"))
    }

    async fn release_semaphore(
        &self,
        _: Request<ReleaseSemaphoreRequest>,
    ) -> Result<Response<ReleaseSemaphoreReply>, Status> {
        self.check()?;
        Err(Status::unimplemented("mock"))
    }

    /// Mutexes only, no queueing: granted if free or owned by the caller, else WAIT_TIMEOUT.
    async fn wait(&self, r: Request<WaitRequest>) -> Result<Response<WaitReply>, Status> {
        self.check()?;
        let r = r.into_inner();
        let h = self.session(r.header)?;
        let mut s = self.state.lock().unwrap();
        if let Some(reply) = s.wait_replies.get(&(h.session_id, h.seq)) {
            return Ok(Response::new(*reply));
        }
        s.waits_applied += 1;
        let Some(name) = s.handles.get(&(h.session_id, r.handles[0])).cloned() else {
            return Ok(Response::new(WaitReply {
                result: u32::MAX,
                error: 6,
                fencing_token: 0,
                pending: false,
            }));
        };
        let reply = match s.owners.get(&name).copied() {
            Some((sid, tid, token)) if sid == h.session_id && tid == r.thread_id => WaitReply {
                result: 0,
                error: 0,
                fencing_token: token,
                pending: false,
            },
            Some(_) => WaitReply {
                result: 0x102,
                error: 0,
                fencing_token: 0,
                pending: false,
            },
            None => {
                s.next_token += 1;
                let token = s.next_token;
                s.owners.insert(name, (h.session_id, r.thread_id, token));
                WaitReply {
                    result: 0,
                    error: 0,
                    fencing_token: token,
                    pending: false,
                }
            }
        };
        s.wait_replies.insert((h.session_id, h.seq), reply);
        if std::mem::take(&mut s.lose_next_wait_reply) {
            return Err(Status::unavailable("reply lost in a leader change"));
        }
        Ok(Response::new(reply))
    }

    async fn signal_and_wait(
        &self,
        _: Request<SignalAndWaitRequest>,
    ) -> Result<Response<WaitReply>, Status> {
        self.check()?;
        Err(Status::unimplemented("mock"))
    }

    async fn await_wait(
        &self,
        _: Request<AwaitWaitRequest>,
    ) -> Result<Response<WaitReply>, Status> {
        self.check()?;
        Err(Status::unimplemented("mock: waits never queue"))
    }

    async fn cancel_wait(
        &self,
        _: Request<CancelWaitRequest>,
    ) -> Result<Response<WaitReply>, Status> {
        self.check()?;
        Err(Status::unimplemented("mock: waits never queue"))
    }

    async fn thread_exit(
        &self,
        r: Request<ThreadExitRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        self.check()?;
        let r = r.into_inner();
        let h = self.session(r.header)?;
        let mut s = self.state.lock().unwrap();
        s.thread_exits.push((h.session_id, r.thread_id));
        s.owners
            .retain(|_, &mut (sid, tid, _)| !(sid == h.session_id && tid == r.thread_id));
        Ok(Response::new(StatusReply { error: 0 }))
    }

    async fn query(&self, r: Request<QueryRequest>) -> Result<Response<QueryReply>, Status> {
        self.check()?;
        let r = r.into_inner();
        let s = self.state.lock().unwrap();
        let Some(name) = s.handles.get(&(r.session_id, r.handle)) else {
            return Ok(Response::new(QueryReply {
                error: 6,
                ..Default::default()
            }));
        };
        let (owner_session_id, owner_thread_id, fencing_token) =
            s.owners.get(name).copied().unwrap_or_default();
        Ok(Response::new(QueryReply {
            kind: s.names[name],
            owner_session_id,
            owner_thread_id,
            fencing_token,
            recursion: u32::from(owner_session_id != 0),
            ..Default::default()
        }))
    }

    async fn check_fencing_token(
        &self,
        r: Request<CheckFencingTokenRequest>,
    ) -> Result<Response<CheckFencingTokenReply>, Status> {
        self.check()?;
        let r = r.into_inner();
        let s = self.state.lock().unwrap();
        let valid = s
            .owners
            .get(&r.name)
            .is_some_and(|&(_, _, t)| t == r.fencing_token);
        Ok(Response::new(CheckFencingTokenReply { valid }))
    }
}

async fn serve(node: Node) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(DlockServer::new(node))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    addr
}

/// Starts a leader and a follower pointing at it; returns (follower, leader, state).
pub async fn start_cluster() -> (SocketAddr, SocketAddr, Shared) {
    let state = Shared::default();
    let leader = serve(Node {
        state: state.clone(),
        hint: None,
    })
    .await;
    let follower = serve(Node {
        state: state.clone(),
        hint: Some(leader.to_string()),
    })
    .await;
    (follower, leader, state)
}

//! One running dlockd node: the Raft node over sled, the namespace, the leader's timer task and
//! the gRPC server, wired together. `main.rs` only parses flags and calls [`run`]; tests embed
//! [`Server`] directly.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dlock_cluster::transport::{GrpcTransport, RaftPeerService};
use dlock_proto::v1::admin_server::AdminServer;
use dlock_proto::v1::dlock_server::DlockServer;
use dlock_proto::v1::peer_info_server::PeerInfoServer;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::Config;
use crate::error::Error;
use crate::grpc::DlockService;
use crate::grpc::admin::AdminService;
use crate::grpc::peer_info::{Directory, PeerInfoService};
use crate::namespace::{Command, Seq, SessionId};
use crate::replica::{CHECKPOINT_SESSIONS_MAX, Machine, Replica, lock, now_unix_ms};

/// How long a failed timer proposal (lost in a leader change, queue full) waits before retrying.
const TIMER_RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// Most timer proposals (expiries, wait timeouts) in flight at once; the rest wait their turn,
/// so a leader that finds thousands of dead sessions does not flood its own proposal queue.
const TIMER_PROPOSALS_MAX: usize = 64;

/// How long a shutdown waits for open connections to finish before closing them. Clients
/// keep their connections open, so this is usually waited in full; in-flight calls need far
/// less (waits and keepalive streams end at once on the stop signal).
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(1);

/// How long a stopping leader waits for another voter to take over (raft aborts a transfer
/// after an election timeout anyway).
const LEADERSHIP_HANDOFF: Duration = Duration::from_secs(2);

/// How often a follower retries learning an unreachable leader's client address.
const DIRECTORY_RETRY: Duration = Duration::from_millis(200);

/// A running node. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    local_addr: SocketAddr,
    peer_addr: SocketAddr,
    node: dlock_cluster::Node,
    stop: watch::Sender<bool>,
    serve: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
    background: Vec<JoinHandle<()>>,
}

impl Server {
    /// Opens the data directory, starts Raft and binds the client port.
    ///
    /// # Errors
    ///
    /// An invalid configuration, an unusable data directory, a port that cannot be bound.
    pub async fn start(config: Config) -> Result<Server, Error> {
        Server::start_with_transport(config, None).await
    }

    /// Like [`Server::start`], but Raft messages go through `transport` instead of the gRPC
    /// peer transport (tests use an in-process network that can drop, delay and partition).
    /// The peer port still serves `PeerInfo` and accepts Raft streams.
    ///
    /// # Errors
    ///
    /// As [`Server::start`].
    pub async fn start_with_transport(
        config: Config,
        transport: Option<Arc<dyn dlock_cluster::Transport>>,
    ) -> Result<Server, Error> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::Io {
            context: format!("cannot create data directory {}", config.data_dir.display()),
            source,
        })?;
        let client_listener = bind(config.client_addr, "client").await?;
        let local_addr = bound_addr(&client_listener)?;
        let peer_listener = bind(config.peer_addr, "peer").await?;
        let peer_addr = bound_addr(&peer_listener)?;
        let members = if config.initial_cluster.is_empty() {
            BTreeMap::from([(config.node_id, peer_addr.to_string())])
        } else {
            config.initial_cluster.clone()
        };
        let config = Arc::new(config);
        let replica = Replica::new();
        let cluster_config = dlock_cluster::Config {
            node_id: config.node_id,
            data_dir: config.data_dir.join("raft"),
            initial_cluster: members,
            tick_interval: config.tick(),
            snapshot_interval_entries: config.snapshot_interval_entries,
            ..dlock_cluster::Config::default()
        };
        let transport = match transport {
            Some(transport) => transport,
            None => GrpcTransport::new(config.node_id),
        };
        let node = dlock_cluster::Node::start(
            cluster_config,
            Box::new(Machine::new(replica.clone())),
            transport,
        )?;
        let (stop, stopped) = watch::channel(false);
        let directory = Directory::new(config.node_id, local_addr);

        let service = DlockServer::new(DlockService::new(
            replica.clone(),
            node.clone(),
            config.clone(),
            stopped.clone(),
            directory.clone(),
        ))
        .max_decoding_message_size(config.request_bytes_max);
        let admin = AdminServer::new(AdminService::new(
            node.clone(),
            local_addr,
            directory.clone(),
        ));
        let serve = tokio::spawn(
            tonic::transport::Server::builder()
                .concurrency_limit_per_connection(config.requests_per_connection_max)
                .http2_keepalive_interval(Some(Duration::from_secs(10)))
                .http2_keepalive_timeout(Some(Duration::from_secs(5)))
                .tcp_nodelay(true)
                .add_service(service)
                .add_service(admin)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(client_listener),
                    stopped_signal(stopped.clone()),
                ),
        );
        let peer_serve = tokio::spawn(
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(1)))
                .http2_keepalive_timeout(Some(Duration::from_secs(3)))
                .tcp_nodelay(true)
                .add_service(RaftPeerService::new(node.clone()))
                .add_service(PeerInfoServer::new(PeerInfoService::new(
                    node.clone(),
                    local_addr,
                )))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(peer_listener),
                    stopped_signal(stopped.clone()),
                ),
        );
        let background = vec![
            tokio::spawn(timer_task(
                replica,
                node.clone(),
                config.clone(),
                stopped.clone(),
            )),
            tokio::spawn(directory_task(node.clone(), directory, stopped)),
        ];
        info!(
            node_id = config.node_id,
            client_addr = %local_addr,
            peer_addr = %peer_addr,
            data_dir = %config.data_dir.display(),
            "dlockd serving"
        );
        Ok(Server {
            local_addr,
            peer_addr,
            node,
            stop,
            serve: vec![serve, peer_serve],
            background,
        })
    }

    /// If this node leads a cluster with other voters, hands leadership to one of them first,
    /// so that clients see a quick leader change instead of an election timeout plus the
    /// connection drain. Bounded by [`LEADERSHIP_HANDOFF`]; a failed transfer only costs the
    /// usual election.
    async fn hand_over_leadership(&self) {
        let mut leadership = self.node.leadership();
        let others = self.node.membership().borrow().voters.len() > 1;
        if !leadership.borrow().is_leader || !others {
            return;
        }
        self.node.transfer_leadership();
        match tokio::time::timeout(LEADERSHIP_HANDOFF, leadership.wait_for(|l| !l.is_leader)).await
        {
            Ok(_) => info!("leadership handed over before stopping"),
            Err(_) => warn!(waited = ?LEADERSHIP_HANDOFF, "leadership transfer did not finish"),
        }
    }

    /// The address the peer transport listens on (useful with port 0).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The address the client API listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The Raft node (status, counters).
    pub fn raft(&self) -> &dlock_cluster::Node {
        &self.node
    }

    /// Stops serving, stops the timers and the Raft thread, and waits for all of them.
    pub async fn shutdown(self) {
        self.hand_over_leadership().await;
        let _ = self.stop.send(true);
        // Long calls end on the stop signal; a client that keeps a connection open without
        // calls must not hold the shutdown hostage, so the graceful drain is bounded.
        for mut serve in self.serve {
            match tokio::time::timeout(SHUTDOWN_DRAIN, &mut serve).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(err))) => warn!(error = %err, "gRPC server ended with an error"),
                Ok(Err(err)) => warn!(error = %err, "gRPC server task failed"),
                Err(_) => {
                    warn!(drain = ?SHUTDOWN_DRAIN, "connections still open; closing them");
                    serve.abort();
                }
            }
        }
        for task in self.background {
            let _ = task.await;
        }
        let node = self.node.clone();
        let _ = tokio::task::spawn_blocking(move || node.shutdown()).await;
        info!("dlockd stopped");
    }
}

async fn bind(addr: SocketAddr, what: &str) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Io {
            context: format!("cannot listen on {addr} ({what} address)"),
            source,
        })
}

fn bound_addr(listener: &tokio::net::TcpListener) -> Result<SocketAddr, Error> {
    listener.local_addr().map_err(|source| Error::Io {
        context: "cannot read the bound address".into(),
        source,
    })
}

async fn stopped_signal(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// Keeps the [`Directory`] knowing the current leader's client address, so that followers can
/// send clients a leader hint: whenever the leader changes to a node whose address is unknown,
/// ask it (over the peer port) until it answers or leadership moves on.
async fn directory_task(
    node: dlock_cluster::Node,
    directory: Arc<Directory>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut leadership = node.leadership();
    loop {
        let leader = leadership.borrow_and_update().leader_id;
        if let Some(id) = leader
            && directory.client_addr(id).is_none()
            && let Some(peer_addr) = node.peers().get(&id).cloned()
        {
            directory.learn(id, &peer_addr).await;
            if directory.client_addr(id).is_none() {
                // Not reachable yet: try again shortly unless something changes first.
                tokio::select! {
                    _ = tokio::time::sleep(DIRECTORY_RETRY) => continue,
                    changed = leadership.changed() => if changed.is_err() { return },
                    _ = stopped.wait_for(|s| *s) => return,
                }
                continue;
            }
        }
        tokio::select! {
            changed = leadership.changed() => if changed.is_err() { return },
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

/// Runs a node until `shutdown` completes.
///
/// # Errors
///
/// As [`Server::start`].
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let server = Server::start(config).await?;
    shutdown.await;
    info!("shutdown requested");
    server.shutdown().await;
    Ok(())
}

/// The leader's clock: expires sessions whose lease ran out, times out waits, and checkpoints
/// keepalive times into the log. Followers keep their timers up to date (through apply) but act
/// on none of them; a node that becomes leader rebuilds every deadline first.
async fn timer_task(
    replica: Arc<Replica>,
    node: dlock_cluster::Node,
    config: Arc<Config>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut leadership = node.leadership();
    let checkpoint_interval = Duration::from_millis(config.checkpoint_interval_ms);
    let permits = Arc::new(Semaphore::new(TIMER_PROPOSALS_MAX));
    let mut leading_term = None;
    let mut next_checkpoint = Instant::now() + checkpoint_interval;
    // When this leader's previous checkpoint was proposed (its term-start one first): each
    // checkpoint carries the time since, on this node's monotonic clock. A proposal that is
    // lost only makes the next leader see less watched time: it errs towards grace.
    let mut last_checkpoint = Instant::now();
    loop {
        let state = *leadership.borrow_and_update();
        if !state.is_leader {
            if leading_term.take().is_some() {
                // Stale leases must not answer keepalives (or expire anyone) any more.
                lock(&replica.timers).clear();
            }
            replica.timers_term.send_replace(None);
            tokio::select! {
                changed = leadership.changed() => match changed {
                    Ok(()) => continue,
                    // The raft thread is gone (fatal storage error): nothing left to time.
                    Err(_) => return,
                },
                _ = stopped.wait_for(|s| *s) => return,
            }
        }
        if leading_term != Some(state.term) {
            // Rebuild from a namespace that has applied everything committed so far (after a
            // restart the log is replayed in the background), so that the "certainly dead"
            // judgement and wait deadlines see every session and wait.
            if let Err(err) = node.read_index().await {
                warn!(error = %err, "leading, but the read index failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(TIMER_RETRY_BACKOFF) => continue,
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
            leading_term = Some(state.term);
            let ns = lock(&replica.ns);
            lock(&replica.timers).rebuild(&ns, Instant::now(), checkpoint_interval);
            drop(ns);
            replica.timers_term.send_replace(Some(state.term));
            info!(
                term = state.term,
                "leading: session and wait deadlines rebuilt"
            );
            // Mark the start of this term in the log. It adds no watched time: time without a
            // leader never counts against a session.
            last_checkpoint = Instant::now();
            let command = Command::Checkpoint {
                now_unix_ms: now_unix_ms(),
                elapsed_ms: 0,
                sessions: Vec::new(),
            };
            spawn_bounded(&permits, propose_logged(node.clone(), command));
        }
        let now = Instant::now();
        let (sessions, waits) = lock(&replica.timers).take_due(now);
        for session in sessions {
            spawn_bounded(
                &permits,
                expire_session(replica.clone(), node.clone(), session),
            );
        }
        for (session, seq) in waits {
            spawn_bounded(
                &permits,
                cancel_wait(replica.clone(), node.clone(), session, seq),
            );
        }
        if now >= next_checkpoint {
            next_checkpoint = now + checkpoint_interval;
            let (sessions, any) = {
                let mut timers = lock(&replica.timers);
                let sessions = timers.take_checkpoint(now, CHECKPOINT_SESSIONS_MAX);
                (sessions, timers.has_sessions())
            };
            // Every interval while there are sessions, even if nobody was heard: the silence of
            // dead sessions must keep accruing in the log, or elections could keep them alive.
            if any {
                let elapsed_ms = now.saturating_duration_since(last_checkpoint).as_millis() as u64;
                last_checkpoint = now;
                let command = Command::Checkpoint {
                    now_unix_ms: now_unix_ms(),
                    elapsed_ms,
                    sessions,
                };
                spawn_bounded(&permits, checkpoint(replica.clone(), node.clone(), command));
            }
        }
        let deadline = lock(&replica.timers)
            .next_deadline()
            .map_or(next_checkpoint, |d| d.min(next_checkpoint));
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = replica.timer_wake.notified() => {}
            changed = leadership.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

/// Runs `task` once one of the timer task's [`TIMER_PROPOSALS_MAX`] permits is free.
fn spawn_bounded(permits: &Arc<Semaphore>, task: impl Future<Output = ()> + Send + 'static) {
    let permits = permits.clone();
    tokio::spawn(async move {
        let Ok(_permit) = permits.acquire_owned().await else {
            return;
        };
        task.await;
    });
}

async fn propose(node: &dlock_cluster::Node, command: &Command) -> Result<(), Error> {
    let bytes = postcard::to_stdvec(command).map_err(|e| Error::Internal(e.to_string()))?;
    node.propose(bytes).await?;
    Ok(())
}

async fn propose_logged(node: dlock_cluster::Node, command: Command) {
    if let Err(err) = propose(&node, &command).await {
        warn!(error = %err, ?command, "timer proposal failed");
    }
}

/// Proposes a periodic checkpoint; if it is not committed, its sessions go into the next one
/// (otherwise a later leader would see them silent since before it).
async fn checkpoint(replica: Arc<Replica>, node: dlock_cluster::Node, command: Command) {
    if let Err(err) = propose(&node, &command).await {
        warn!(error = %err, "checkpoint proposal failed; its sessions go into the next one");
        if let Command::Checkpoint { sessions, .. } = &command {
            lock(&replica.timers).checkpoint_lost(sessions);
        }
    }
}

async fn expire_session(replica: Arc<Replica>, node: dlock_cluster::Node, session: SessionId) {
    info!(session, "session lease ran out; expiring");
    if let Err(err) = propose(&node, &Command::ExpireSession { session }).await {
        warn!(session, error = %err, "expiry proposal failed; will retry");
        lock(&replica.timers).retry_session(session, Instant::now() + TIMER_RETRY_BACKOFF);
        replica.timer_wake.notify_one();
    }
}

async fn cancel_wait(
    replica: Arc<Replica>,
    node: dlock_cluster::Node,
    session: SessionId,
    seq: Seq,
) {
    if let Err(err) = propose(&node, &Command::TimeoutWait { session, seq }).await {
        warn!(session, seq, error = %err, "wait timeout proposal failed; will retry");
        lock(&replica.timers).retry_wait(session, seq, Instant::now() + TIMER_RETRY_BACKOFF);
        replica.timer_wake.notify_one();
    }
}

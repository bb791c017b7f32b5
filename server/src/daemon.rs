//! One running dlockd node: the Raft node over sled, the namespace, the leader's timer task
//! (in [`crate::lease`]) and the gRPC server, wired together. `main.rs` only parses flags and
//! calls [`run`]; tests embed [`Server`] directly.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dlock_cluster::transport::{GrpcTransport, RaftPeerService};
use dlock_proto::v1::admin_server::AdminServer;
use dlock_proto::v1::dlock_server::DlockServer;
use dlock_proto::v1::peer_info_server::PeerInfoServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::error::Error;
use crate::grpc::DlockService;
use crate::grpc::admin::AdminService;
use crate::grpc::peer_info::{Directory, PeerInfoService};
use crate::lease;
use crate::metrics::{Metrics, RequestMetricsLayer};
use crate::replica::{Machine, Replica};

/// How long a shutdown waits for open connections to finish before closing them. Clients
/// keep their connections open, so this is usually waited in full; in-flight calls need far
/// less (waits and keepalive streams end at once on the stop signal).
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(1);

/// How long a stopping leader waits for another voter to take over (raft aborts a transfer
/// after an election timeout anyway).
const LEADERSHIP_HANDOFF: Duration = Duration::from_secs(2);

/// How often a follower retries learning an unreachable leader's client address.
const DIRECTORY_RETRY: Duration = Duration::from_millis(200);

/// How often the TLS files are checked for changes (a `stat` each); SIGHUP reads them at once.
pub const TLS_RELOAD_POLL: Duration = Duration::from_secs(1);

/// A running node. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    local_addr: SocketAddr,
    peer_addr: SocketAddr,
    node: dlock_cluster::Node,
    stop: watch::Sender<bool>,
    /// Set first when stopping: the health service reports `NOT_SERVING` from then on.
    draining: watch::Sender<bool>,
    health: HealthReporter,
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
        // Caught from the start: SIGHUP's default action ends the process, and an operator's
        // reload (or a systemd ExecReload) may come while the node is still starting.
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .inspect_err(
                |err| warn!(error = %err, "cannot catch SIGHUP; TLS files are still polled"),
            )
            .ok();
        let client_tls = match config.client_tls() {
            Some(files) => Some(dlock_tls::ServerTls::load(files, None)?),
            None => None,
        };
        let peer_tls = match config.peer_tls() {
            Some(files) => Some(dlock_tls::ServerTls::load(files, Some(config.node_id))?),
            None => None,
        };
        std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::Io {
            context: format!("cannot create data directory {}", config.data_dir.display()),
            source,
        })?;
        let client_listener = bind(config.client_addr, "client").await?;
        let local_addr = bound_addr(&client_listener)?;
        let peer_listener = bind(config.peer_addr, "peer").await?;
        let peer_addr = bound_addr(&peer_listener)?;
        let members = config.members(peer_addr);
        let advertised = config.advertised_client_addr(local_addr);
        if advertised.is_none() {
            warn!(
                client_addr = %local_addr,
                "the client port listens on an unspecified address and advertise-client-addr is \
                 not set: followers will send clients no leader hint"
            );
        }
        let advertised = advertised.unwrap_or_default();
        let metrics_listener = match config.metrics_addr {
            Some(addr) => Some(crate::metrics::bind(addr).await?),
            None => None,
        };
        let config = Arc::new(config);
        let metrics = Metrics::new();
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
            None => GrpcTransport::with_tls(
                config.node_id,
                dlock_cluster::transport::PeerLimits::default(),
                peer_tls.clone(),
            ),
        };
        let node = dlock_cluster::Node::start(
            cluster_config,
            Box::new(Machine::new(replica.clone())),
            transport,
        )?;
        node.observe(metrics.clone());
        let (stop, stopped) = watch::channel(false);
        let directory = Directory::new(config.node_id, advertised.clone(), peer_tls.clone());
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        // Not serving until the health task has seen a leader (the reporter starts SERVING).
        crate::health::report(&health_reporter, ServingStatus::NotServing).await;
        let (draining, draining_rx) = watch::channel(false);

        let tokens = match &config.token_file {
            Some(path) => {
                let tokens = crate::acl::Tokens::load(path)?;
                warn!(
                    token_file = %path.display(),
                    "bearer tokens in force: for development (a token is a password; without TLS \
                     anyone on the path can read it)"
                );
                tokens
            }
            None => crate::acl::Tokens::default(),
        };
        let policy = crate::acl::Policy::with_tokens(
            match &config.acl_file {
                Some(path) => {
                    let acl = crate::acl::Acl::load(path)?;
                    if config.trusted_ca_file.is_none() {
                        warn!(
                            acl_file = %path.display(),
                            "an ACL without client certificates (trusted-ca-file): every caller is \
                             anonymous, so only rules for \"*\" can ever apply"
                        );
                    }
                    info!(
                        acl_file = %path.display(),
                        rules = acl.len(),
                        "ACL in force: what no rule grants is denied"
                    );
                    acl
                }
                None => {
                    info!("no ACL file: every caller may create and open every name");
                    crate::acl::Acl::open_to_all()
                }
            },
            tokens,
        );
        let service = DlockServer::new(DlockService::new(
            replica.clone(),
            node.clone(),
            config.clone(),
            stopped.clone(),
            directory.clone(),
            metrics.clone(),
            policy.clone(),
        ))
        .max_decoding_message_size(config.request_bytes_max);
        let admin = AdminServer::with_interceptor(
            AdminService::new(
                node.clone(),
                replica.clone(),
                advertised.clone(),
                directory.clone(),
                policy.clone(),
            ),
            AdminGate::new(&config, policy.clone()),
        );
        let serve = tokio::spawn(
            tonic::transport::Server::builder()
                .concurrency_limit_per_connection(config.requests_per_connection_max)
                .http2_keepalive_interval(Some(Duration::from_secs(10)))
                .http2_keepalive_timeout(Some(Duration::from_secs(5)))
                .tcp_nodelay(true)
                .layer(RequestMetricsLayer::new(metrics.clone()))
                .layer(tonic::service::InterceptorLayer::new(
                    refuse_plaintext_on_tls,
                ))
                .add_service(service)
                .add_service(admin)
                .add_service(health_service)
                .serve_with_incoming_shutdown(
                    dlock_tls::incoming(client_listener, client_tls.clone(), "client"),
                    stopped_signal(stopped.clone()),
                ),
        );
        // With peer TLS only nodes are served; without it, everyone (a loopback or --insecure
        // peer port).
        let peer_gate = match &peer_tls {
            Some(_) => {
                refuse_non_nodes
                    as fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>
            }
            None => Ok,
        };
        let raft_peer = match &peer_tls {
            Some(_) => RaftPeerService::authenticated(
                node.clone(),
                dlock_cluster::transport::PeerLimits::default(),
            ),
            None => RaftPeerService::new(node.clone()),
        };
        let peer_serve = tokio::spawn(
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(1)))
                .http2_keepalive_timeout(Some(Duration::from_secs(3)))
                .tcp_nodelay(true)
                .layer(tonic::service::InterceptorLayer::new(peer_gate))
                .add_service(raft_peer)
                .add_service(PeerInfoServer::new(PeerInfoService::new(
                    node.clone(),
                    advertised.clone(),
                )))
                .serve_with_incoming_shutdown(
                    dlock_tls::incoming(peer_listener, peer_tls.clone(), "peer"),
                    stopped_signal(stopped.clone()),
                ),
        );
        let mut background = vec![
            tokio::spawn(lease::clock::timer_task(
                replica.clone(),
                node.clone(),
                config.clone(),
                stopped.clone(),
            )),
            tokio::spawn(directory_task(node.clone(), directory, stopped.clone())),
            tokio::spawn(crate::health::health_task(
                node.clone(),
                health_reporter.clone(),
                draining_rx,
            )),
        ];
        let identities: Vec<_> = [("client", client_tls.clone()), ("peer", peer_tls.clone())]
            .into_iter()
            .filter_map(|(port, tls)| Some((port, tls?)))
            .collect();
        background.push(tokio::spawn(tls_reload_task(
            identities,
            policy,
            hangup,
            stopped.clone(),
        )));
        if let Some(listener) = metrics_listener {
            background.push(tokio::spawn(crate::metrics::serve(
                listener,
                metrics,
                node.clone(),
                replica,
                stopped,
            )));
        }
        info!(
            node_id = config.node_id,
            client_addr = %local_addr,
            advertise_client_addr = %advertised,
            peer_addr = %peer_addr,
            client_tls = client_tls.is_some(),
            client_cert_auth = config.client_cert_auth,
            peer_tls = peer_tls.is_some(),
            data_dir = %config.data_dir.display(),
            "dlockd serving"
        );
        Ok(Server {
            local_addr,
            peer_addr,
            node,
            stop,
            draining,
            health: health_reporter,
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
        // Load balancers and orchestrators hear first that this node is going.
        let _ = self.draining.send(true);
        crate::health::report(&self.health, ServingStatus::NotServing).await;
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
        for mut task in self.background {
            // The tasks end on the stop signal; the metrics endpoint may still be serving a
            // scrape, which must not hold the shutdown hostage either.
            if tokio::time::timeout(SHUTDOWN_DRAIN, &mut task)
                .await
                .is_err()
            {
                warn!(drain = ?SHUTDOWN_DRAIN, "a background task did not stop; aborting it");
                task.abort();
            }
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

/// Who may call the admin API: only admin principals when the client port checks client
/// certificates (`Config::admin_needs_principal`); without principals, only loopback callers
/// unless the node runs `--insecure` (a TLS port without client certificates beyond loopback
/// would otherwise let anyone change the membership).
#[derive(Clone)]
struct AdminGate {
    admins: Option<Arc<Vec<String>>>,
    loopback_only: bool,
    /// The admin principals, for a caller that names one with a bearer token.
    principals: Arc<Vec<String>>,
    policy: Arc<crate::acl::Policy>,
}

impl AdminGate {
    fn new(config: &Config, policy: Arc<crate::acl::Policy>) -> AdminGate {
        AdminGate {
            admins: config
                .admin_needs_principal()
                .then(|| Arc::new(config.admin_principals.clone())),
            loopback_only: !config.admin_needs_principal() && !config.insecure,
            principals: Arc::new(config.admin_principals.clone()),
            policy,
        }
    }
}

impl tonic::service::Interceptor for AdminGate {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let conn = request.extensions().get::<dlock_tls::ConnInfo>();
        // Bearer tokens (development, docs/security.md): on a node that checks client
        // certificates the admin API takes certificates only; elsewhere a token must name an
        // admin principal (then it is an admin wherever it comes from), and a token that does
        // not is refused, never taken for an anonymous loopback caller.
        let certified = conn.and_then(|c| c.peer.as_ref()).is_some();
        if !certified && request.metadata().contains_key("authorization") {
            let remote = conn.and_then(|c| c.remote_addr);
            if self.admins.is_some() {
                warn!(
                    ?remote,
                    "admin call with a bearer token refused: certificates only"
                );
                return Err(tonic::Status::permission_denied(
                    "this node checks client certificates: its admin API takes an admin \
                     certificate, not a bearer token",
                ));
            }
            let principal = self
                .policy
                .principal_of(request.extensions(), request.metadata())
                .inspect_err(|_| {
                    warn!(?remote, "admin call with an unknown bearer token refused")
                })?;
            return match principal {
                Some(p) if self.principals.contains(&p) => Ok(request),
                principal => {
                    warn!(
                        ?remote,
                        ?principal,
                        "admin call by a non-admin token principal refused"
                    );
                    Err(tonic::Status::permission_denied(format!(
                        "the admin API needs an admin principal (admin-principals: {}); this \
                         token's principal: {}",
                        self.principals.join("; "),
                        principal.as_deref().unwrap_or("none")
                    )))
                }
            };
        }
        let Some(admins) = &self.admins else {
            let remote = conn.and_then(|c| c.remote_addr);
            if !self.loopback_only || remote.is_some_and(|r| r.ip().is_loopback()) {
                return Ok(request);
            }
            warn!(
                ?remote,
                "admin call from beyond loopback without client certificates refused"
            );
            return Err(tonic::Status::permission_denied(
                "this node checks no client certificates, so its admin API answers only \
                 loopback callers: give it trusted-ca-file and an admin certificate \
                 (admin-principals), or insecure",
            ));
        };
        let principal = conn
            .and_then(|c| c.peer.as_ref())
            .map(|p| p.subject.as_str());
        if principal.is_some_and(|p| admins.iter().any(|a| a == p)) {
            return Ok(request);
        }
        warn!(
            remote = ?conn.and_then(|c| c.remote_addr),
            principal = principal.unwrap_or("none"),
            "admin call without an admin principal refused"
        );
        Err(tonic::Status::permission_denied(format!(
            "the admin API needs an admin principal (admin-principals: {}); this connection's \
             principal: {}",
            admins.join("; "),
            principal.unwrap_or("none (no client certificate)")
        )))
    }
}

/// Refuses calls that arrived in plaintext on the TLS client port, saying what to change.
fn refuse_plaintext_on_tls(
    request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    match request.extensions().get::<dlock_tls::ConnInfo>() {
        Some(conn) if conn.plaintext_on_tls => {
            debug!(remote = ?conn.remote_addr, "plaintext call on the TLS client port refused");
            Err(dlock_tls::plaintext_refusal(false))
        }
        _ => Ok(request),
    }
}

/// On the mutual-TLS peer port, refuses every call (raft streams and `PeerInfo`) that did not
/// arrive over a connection whose certificate names a node.
fn refuse_non_nodes(request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let conn = request.extensions().get::<dlock_tls::ConnInfo>();
    match conn {
        Some(conn) if conn.plaintext_on_tls => {
            debug!(remote = ?conn.remote_addr, "plaintext call on the TLS peer port refused");
            Err(dlock_tls::plaintext_refusal(true))
        }
        Some(conn) if conn.peer.as_ref().is_some_and(|p| p.node_id.is_some()) => Ok(request),
        _ => {
            let subject = conn
                .and_then(|c| c.peer.as_ref())
                .map(|p| p.subject.clone());
            warn!(remote = ?conn.and_then(|c| c.remote_addr), ?subject, "peer port call without a node certificate refused");
            Err(tonic::Status::permission_denied(format!(
                "the peer port serves only nodes, whose certificates name them \
                 (dlock://node/<id>); this connection's certificate: {}",
                subject.as_deref().unwrap_or("none")
            )))
        }
    }
}

/// Reads the TLS files again when they change (checked every [`TLS_RELOAD_POLL`]) or on
/// SIGHUP. New connections use the new certificates; open ones keep theirs. A file that does
/// not make a valid configuration is reported and the previous certificates stay. Runs without
/// TLS too, so that a SIGHUP (whose default action ends the process) is only logged.
async fn tls_reload_task(
    identities: Vec<(&'static str, Arc<dlock_tls::ServerTls>)>,
    policy: Arc<crate::acl::Policy>,
    mut hangup: Option<tokio::signal::unix::Signal>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let forced = tokio::select! {
            _ = tokio::time::sleep(TLS_RELOAD_POLL) => false,
            Some(()) = async {
                match &mut hangup {
                    Some(hangup) => hangup.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
            _ = stopped.wait_for(|s| *s) => return,
        };
        if forced {
            match policy.reload() {
                Ok(Some(rules)) => info!(rules, "SIGHUP: ACL file read again"),
                Ok(None) => {}
                Err(err) => error!(
                    error = %err,
                    "ACL file not read again; the previous rules stay in force"
                ),
            }
            match policy.reload_tokens() {
                Ok(Some(tokens)) => info!(tokens, "SIGHUP: token file read again"),
                Ok(None) => {}
                Err(err) => error!(
                    error = %err,
                    "token file not read again; the previous tokens stay in force"
                ),
            }
        }
        if forced && identities.is_empty() {
            info!("SIGHUP: this node serves no TLS, nothing to read again");
        }
        for (port, tls) in &identities {
            if !forced && !tls.changed() {
                continue;
            }
            match tls.reload() {
                Ok(()) => info!(
                    port,
                    subject = %tls.identity().subject,
                    sighup = forced,
                    "TLS certificates reloaded"
                ),
                Err(err) => error!(
                    port,
                    error = %err,
                    "TLS certificates not reloaded; the previous ones stay in use"
                ),
            }
        }
    }
}

async fn stopped_signal(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// Keeps the [`Directory`] knowing the current leader's client address, so that followers can
/// send clients a leader hint: whenever the leader changes, ask the new one (over the peer
/// port) for its advertised address, until it answers or leadership moves on. Asking on every
/// change, not only for unknown nodes, picks up a node that restarted with another address.
async fn directory_task(
    node: dlock_cluster::Node,
    directory: Arc<Directory>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut leadership = node.leadership();
    loop {
        let leader = leadership.borrow_and_update().leader_id;
        if let Some(id) = leader
            && id != node.id()
            && let Some(peer_addr) = node.peers().get(&id).cloned()
            && !directory.learn(id, &peer_addr).await
        {
            // Not reachable yet: try again shortly unless something changes first.
            tokio::select! {
                _ = tokio::time::sleep(DIRECTORY_RETRY) => continue,
                changed = leadership.changed() => if changed.is_err() { return },
                _ = stopped.wait_for(|s| *s) => return,
            }
            continue;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn call(gate: &mut AdminGate, remote: &str, subject: Option<&str>) -> Result<(), tonic::Code> {
        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(dlock_tls::ConnInfo {
            remote_addr: Some(remote.parse().unwrap()),
            peer: subject.map(|s| {
                Arc::new(dlock_tls::PeerIdentity {
                    subject: s.to_owned(),
                    node_id: None,
                })
            }),
            plaintext_on_tls: false,
        });
        gate.call(request).map(|_| ()).map_err(|s| s.code())
    }

    use crate::acl::{Acl, Policy, Tokens};

    /// [`call`] with a bearer token.
    fn call_with_token(gate: &mut AdminGate, remote: &str, token: &str) -> Result<(), tonic::Code> {
        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(dlock_tls::ConnInfo {
            remote_addr: Some(remote.parse().unwrap()),
            peer: None,
            plaintext_on_tls: false,
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        gate.call(request).map(|_| ()).map_err(|s| s.code())
    }

    #[test]
    fn bearer_tokens_at_the_admin_gate() {
        let denied = Err(tonic::Code::PermissionDenied);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let (admin, dev) = ("a".repeat(40), "d".repeat(40));
        std::fs::write(
            &path,
            format!(
                "[[token]]\nprincipal = \"ops\"\ntoken = \"{admin}\"\n\
                 [[token]]\nprincipal = \"dev\"\ntoken = \"{dev}\"\n"
            ),
        )
        .unwrap();
        let policy = || Policy::with_tokens(Acl::open_to_all(), Tokens::load(&path).unwrap());
        // No client certificates: an admin principal's token is an admin from anywhere; another
        // principal's token, or an unknown one, is refused even on loopback.
        let config = Config {
            admin_principals: vec!["ops".into()],
            ..Config::default()
        };
        let mut gate = AdminGate::new(&config, policy());
        assert_eq!(call_with_token(&mut gate, "10.0.0.9:1000", &admin), Ok(()));
        assert_eq!(call_with_token(&mut gate, "127.0.0.1:1000", &dev), denied);
        assert_eq!(
            call_with_token(&mut gate, "127.0.0.1:1000", &"x".repeat(40)),
            denied
        );
        assert_eq!(call(&mut gate, "127.0.0.1:1000", None), Ok(()));
        // Client certificates checked: certificates only.
        let config = Config {
            cert_file: Some("c.pem".into()),
            key_file: Some("c.key".into()),
            trusted_ca_file: Some("ca.pem".into()),
            admin_principals: vec!["ops".into()],
            ..Config::default()
        };
        let mut gate = AdminGate::new(&config, policy());
        assert_eq!(call_with_token(&mut gate, "127.0.0.1:1000", &admin), denied);
    }

    #[test]
    fn the_admin_gate_admits_admin_principals_or_loopback_callers_only() {
        let denied = Err(tonic::Code::PermissionDenied);
        // Client certificates checked: the principal decides, wherever the caller is.
        let mut gate = AdminGate::new(
            &Config {
                cert_file: Some("c.pem".into()),
                key_file: Some("c.key".into()),
                trusted_ca_file: Some("ca.pem".into()),
                ..Config::default()
            },
            Policy::new(Acl::open_to_all()),
        );
        assert_eq!(call(&mut gate, "10.0.0.9:1000", Some("CN=admin")), Ok(()));
        assert_eq!(call(&mut gate, "127.0.0.1:1000", Some("CN=alice")), denied);
        assert_eq!(call(&mut gate, "127.0.0.1:1000", None), denied);
        assert_eq!(
            call(&mut gate, "127.0.0.1:1000", Some("CN=admin,O=x")),
            denied
        );
        // TLS without client certificates (or plaintext): loopback callers only...
        let mut gate = AdminGate::new(
            &Config {
                cert_file: Some("c.pem".into()),
                key_file: Some("c.key".into()),
                ..Config::default()
            },
            Policy::new(Acl::open_to_all()),
        );
        assert_eq!(call(&mut gate, "127.0.0.1:1000", None), Ok(()));
        assert_eq!(call(&mut gate, "[::1]:1000", None), Ok(()));
        assert_eq!(call(&mut gate, "10.0.0.9:1000", None), denied);
        // ...unless the operator said insecure.
        let mut gate = AdminGate::new(
            &Config {
                insecure: true,
                ..Config::default()
            },
            Policy::new(Acl::open_to_all()),
        );
        assert_eq!(call(&mut gate, "10.0.0.9:1000", None), Ok(()));
    }
}

//! The connection to the cluster: node selection, leader hints and the retry loop.
//!
//! Every RPC goes through [`Client::call`]. One attempt goes to the current node; on
//! `UNAVAILABLE`, `INTERNAL`, `UNKNOWN`, a transport error or an attempt timeout, the *same*
//! request (same header, so the server deduplicates it) is re-sent, to the node named by the
//! `dlock-leader-hint` metadata if present, else to the next configured node, after a short
//! jittered exponential backoff. `RESOURCE_EXHAUSTED` backs off on the same node. The loop
//! stops at the call's deadline ([`ClientConfig::request_timeout`] for ordinary calls, the wait
//! timeout plus that for waits, none for infinite waits, which instead stop when the session is
//! expired).
//!
//! # Nodes that stop answering
//!
//! A node that is frozen (SIGSTOP, a VM pause, a blackholed network) keeps its sockets open, so
//! nothing resets them. Every connection therefore sends HTTP/2 pings every
//! [`HTTP2_KEEPALIVE_INTERVAL`] and drops the connection when one stays unanswered for
//! [`HTTP2_KEEPALIVE_TIMEOUT`]: a call on a frozen node fails within about a second, about the
//! time the other nodes need to elect a new leader (election timeout 0.5-1 s by default). A
//! node whose connection failed is *suspect* for [`SUSPECT_FOR`]: the client does not move to
//! it, nor follow a leader hint naming it (the other nodes keep naming the frozen leader until
//! they elect a new one), unless every node is suspect. So a frozen node costs a client about
//! as much as a killed one.
//!
//! # Hints the client cannot use
//!
//! A leader hint is the leader's *advertised* client address (dlockd's
//! `--advertise-client-addr`), which not every client can reach: a node in a container
//! advertises its service name, which a client on the host cannot resolve, while the host
//! reaches it through a published port in its endpoint list. A node known only from a hint that
//! has never answered is avoided for longer after each failure in a row ([`SUSPECT_FOR`],
//! doubling up to [`UNREACHABLE_HINT_FOR`]), and the client goes round its configured endpoints
//! meanwhile, which reach the same leader. Any answer from the node (a reply, an error status
//! its server sent, a keepalive reply) ends that: it is then avoided like any other node.

use std::future::Future;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use dlock_proto::v1::{self, dlock_client::DlockClient};
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::config::{Scheme, parse_endpoint, parse_endpoint_scheme, truncate_client_name};
use crate::session::{Session, SessionCore};
use crate::{ClientConfig, Error};

/// Length of the secret a session's requests carry (`OpenSessionReply.session_secret`).
const SESSION_SECRET_BYTES: usize = 16;

/// HTTP/2 keepalive ping interval: detects a dead or frozen node within about interval +
/// timeout, even while a call is blocked on it and no data flows.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_millis(250);
/// How long an HTTP/2 keepalive ping may stay unanswered before the connection is dropped
/// (and every call on it fails over to another node).
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_millis(750);
/// How long a node whose connection failed is avoided (see the module docs): about two
/// election timeouts, time for the others to elect a leader and start naming it.
pub const SUSPECT_FOR: Duration = Duration::from_secs(2);
/// First retry backoff.
const BACKOFF_INITIAL: Duration = Duration::from_millis(20);
/// Largest retry backoff. Kept short: during a failover the client cycles through the nodes
/// until one is leader again, and a long backoff would add directly to the outage.
const BACKOFF_MAX: Duration = Duration::from_millis(200);
/// The longest a node known only from a leader hint, that has never answered, is avoided after
/// failures in a row: its advertised address is likely not reachable from this client at all
/// (a container's service name seen from the host, say), and the configured endpoints reach the
/// same cluster. The avoidance starts at [`SUSPECT_FOR`] and doubles with each failure, so a
/// node that was merely down when first hinted is tried again soon, and an address that never
/// works costs one failed connection a minute.
pub const UNREACHABLE_HINT_FOR: Duration = Duration::from_secs(60);
/// Nodes learned from leader hints beyond the configured ones. Bounded so that a misbehaving
/// server cannot grow the node list without limit; further hints are followed only if known.
const HINTED_NODES_MAX: usize = 16;
/// Consecutive leader hints followed without sleeping; after that hints are followed with the
/// normal backoff, so two nodes that name each other cannot make the client spin.
const IMMEDIATE_HINTS_MAX: u32 = 3;

/// A connection to a dlock cluster. Cheap to clone (an `Arc` inside); all clones share the
/// connections.
///
/// Connecting is lazy: [`Client::connect`] only validates the endpoints, and a node is
/// contacted on first use; a node that is down is skipped per call.
///
/// ```no_run
/// # async fn demo() -> Result<(), dlock::Error> {
/// use std::time::Duration;
/// let client = dlock::Client::connect(["127.0.0.1:7700", "127.0.0.1:7701"]).await?;
/// let session = client.open_session(Duration::from_secs(10)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes = self.inner.nodes.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("Client")
            .field(
                "nodes",
                &nodes
                    .list
                    .iter()
                    .map(|n| n.addr.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("current", &nodes.current)
            .finish()
    }
}

struct ClientInner {
    config: ClientConfig,
    /// A std mutex, not a tokio one: it is held only to pick or switch a node, never across an
    /// await.
    nodes: StdMutex<Nodes>,
}

/// The known nodes and which one the next attempt goes to.
struct Nodes {
    list: Vec<NodeConn>,
    /// How many of `list` came from the configuration (the rest came from hints).
    configured: usize,
    current: usize,
}

/// A connection to one node whose every call carries the configured bearer token.
pub(crate) type Rpc = InterceptedService<Channel, Credentials>;

/// Adds `authorization: Bearer TOKEN` to every call when a token is configured.
#[derive(Clone, Default)]
pub(crate) struct Credentials {
    header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl std::fmt::Debug for Credentials {
    /// Never the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.header.as_ref().map(|_| "(set)"))
            .finish()
    }
}

impl Credentials {
    /// The credentials of `config`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a token that cannot travel in a header.
    fn of(config: &ClientConfig) -> Result<Credentials, Error> {
        let header = match &config.token {
            None => None,
            Some(token) => {
                let mut header: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
                    format!("Bearer {token}").parse().map_err(|_| {
                        Error::InvalidArgument(
                            "the bearer token (DLOCK_TOKEN) must be printable ASCII".into(),
                        )
                    })?;
                // Kept out of HTTP/2 header compression tables.
                header.set_sensitive(true);
                Some(header)
            }
        };
        Ok(Credentials { header })
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// The client's connection to one node of the cluster.
struct NodeConn {
    /// Normalised `http://host:port`.
    addr: String,
    channel: Rpc,
    /// The connection failed at the transport level; avoid the node until then.
    suspect_until: Option<Instant>,
    /// The node has answered at least once.
    answered: bool,
    /// Failures in a row since the node last answered (or since it was added).
    failures: u32,
}

impl NodeConn {
    fn new(addr: String, channel: Rpc) -> NodeConn {
        NodeConn {
            addr,
            channel,
            suspect_until: None,
            answered: false,
            failures: 0,
        }
    }

    fn is_suspect(&self, now: Instant) -> bool {
        self.suspect_until.is_some_and(|until| until > now)
    }
}

/// What the retry loop does with one failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Try another node (following a leader hint if any).
    NextNode,
    /// Back off and retry on the same node.
    Overloaded,
    /// The session does not exist.
    SessionLost,
    /// The request is malformed.
    InvalidArgument,
    /// A status the protocol does not use.
    Unexpected,
}

/// Classifies a gRPC status per the table at the top of `dlock.proto`.
pub(crate) fn classify(code: Code) -> Disposition {
    match code {
        Code::Unavailable
        | Code::Internal
        | Code::Unknown
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted => Disposition::NextNode,
        Code::ResourceExhausted => Disposition::Overloaded,
        Code::NotFound => Disposition::SessionLost,
        Code::InvalidArgument => Disposition::InvalidArgument,
        _ => Disposition::Unexpected,
    }
}

/// The leader hint carried by a status, if any.
pub(crate) fn leader_hint(status: &Status) -> Option<String> {
    let value = status.metadata().get(dlock_proto::LEADER_HINT_METADATA)?;
    let hint = value.to_str().ok()?.trim();
    (!hint.is_empty()).then(|| hint.to_owned())
}

/// Jittered exponential backoff.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    /// xorshift state for jitter; no need for a real RNG.
    rng: u64,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        Backoff {
            next: BACKOFF_INITIAL,
            rng: seed | 1,
        }
    }

    /// The next delay: between half and all of the current step; the step doubles up to the
    /// maximum.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let step = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let half = step / 2;
        let jitter_nanos = self.rng % (half.as_nanos() as u64 + 1);
        half + Duration::from_nanos(jitter_nanos)
    }

    pub(crate) fn reset(&mut self) {
        self.next = BACKOFF_INITIAL;
    }
}

/// Limits of one [`Client::call`].
pub(crate) struct CallPolicy<'a> {
    /// Give up (with the last failure's error) at this instant; `None` = never.
    pub(crate) deadline: Option<Instant>,
    /// Abandon one attempt after this long and move to the next node; `None` = let it run.
    pub(crate) attempt_timeout: Option<Duration>,
    /// Stop with [`Error::SessionLost`] as soon as this session is expired.
    pub(crate) session: Option<&'a SessionCore>,
    /// For logs.
    pub(crate) what: &'static str,
}

impl Client {
    /// A client for the given endpoints (`http://host:port` or `host:port`) with default
    /// timeouts. Nothing is contacted yet.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if the list is empty or an endpoint is malformed.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), dlock::Error> {
    /// let client = dlock::Client::connect(["http://10.0.0.1:7700", "10.0.0.2:7700"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(
        endpoints: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<Client, Error> {
        Client::connect_with_config(ClientConfig::new(endpoints)).await
    }

    /// A client with a full configuration. Nothing is contacted yet.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if the endpoint list is empty or an endpoint is malformed.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), dlock::Error> {
    /// let mut config = dlock::ClientConfig::new(["127.0.0.1:7700"]);
    /// config.request_timeout = std::time::Duration::from_secs(3);
    /// let client = dlock::Client::connect_with_config(config).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with_config(config: ClientConfig) -> Result<Client, Error> {
        Client::new(config)
    }

    /// Builds the client; must run inside a tokio runtime (channels spawn their workers).
    fn new(mut config: ClientConfig) -> Result<Client, Error> {
        if config.endpoints.is_empty() {
            return Err(Error::InvalidArgument("no endpoints".into()));
        }
        config.client_name = truncate_client_name(std::mem::take(&mut config.client_name));
        let credentials = Credentials::of(&config)?;
        let mut list = Vec::with_capacity(config.endpoints.len());
        for raw in &config.endpoints {
            let (addr, scheme) = parse_endpoint_scheme(raw)?;
            match (scheme, config.tls.is_some()) {
                (Scheme::Https, false) => {
                    return Err(Error::InvalidArgument(format!(
                        "endpoint {raw:?} asks for TLS but no CA is configured (ClientConfig::tls; \
                         DLOCK_CACERT for the facade, the C library, Python and dlockctl)"
                    )));
                }
                (Scheme::Http, true) => {
                    return Err(Error::InvalidArgument(format!(
                        "endpoint {raw:?} asks for plaintext but TLS is configured: the client \
                         speaks one or the other to every node; use https:// or host:port"
                    )));
                }
                _ => {}
            }
            if list.iter().any(|n: &NodeConn| n.addr == addr) {
                continue;
            }
            let channel = make_channel(&addr, &config)?;
            list.push(NodeConn::new(
                addr,
                InterceptedService::new(channel, credentials.clone()),
            ));
        }
        let configured = list.len();
        Ok(Client {
            inner: Arc::new(ClientInner {
                config,
                nodes: StdMutex::new(Nodes {
                    list,
                    configured,
                    current: 0,
                }),
            }),
        })
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Opens a new session with the wanted time-to-live (the server clamps it to its limits;
    /// [`Session::ttl`] says what was granted) and starts its keepalive task. The session must
    /// be used within the tokio runtime that opened it.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] / [`Error::Overloaded`] if no node accepted the request within
    /// the request timeout. (A lost reply may leave an orphan session on the server; it expires
    /// after its TTL since nobody keeps it alive.)
    ///
    /// ```no_run
    /// # async fn demo(client: dlock::Client) -> Result<(), dlock::Error> {
    /// let session = client.open_session(std::time::Duration::from_secs(10)).await?;
    /// println!("session {} ttl {:?}", session.id(), session.ttl());
    /// # Ok(()) }
    /// ```
    pub async fn open_session(&self, ttl: Duration) -> Result<Session, Error> {
        let request = v1::OpenSessionRequest {
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            client_name: self.inner.config.client_name.clone(),
        };
        let sent_at = Instant::now();
        let policy = CallPolicy {
            deadline: Some(sent_at + self.inner.config.request_timeout),
            attempt_timeout: Some(self.inner.config.attempt_timeout),
            session: None,
            what: "OpenSession",
        };
        // The lease is measured from the first send: conservative even if a retry succeeded.
        let reply = self
            .call(policy, |mut c| {
                let request = request.clone();
                async move { c.open_session(request).await }
            })
            .await?;
        if reply.session_id == 0 || reply.ttl_ms == 0 {
            return Err(Error::Protocol(format!(
                "OpenSession reply with session {} ttl {} ms",
                reply.session_id, reply.ttl_ms
            )));
        }
        if reply.session_secret.len() != SESSION_SECRET_BYTES {
            return Err(Error::Protocol(format!(
                "OpenSession reply with a {}-byte session secret, not {SESSION_SECRET_BYTES} \
                 (a dlockd older than this client?)",
                reply.session_secret.len()
            )));
        }
        tracing::debug!(
            session = reply.session_id,
            ttl_ms = reply.ttl_ms,
            "opened session"
        );
        Ok(Session::start(
            self.clone(),
            reply.session_id,
            reply.session_secret,
            Duration::from_millis(reply.ttl_ms),
            Duration::from_millis(reply.lease_margin_ms),
            sent_at,
        ))
    }

    /// Checks a fencing token (Chubby's sequencer): true iff the named mutex is owned now and
    /// its current grant has exactly this token. Needs no session; a storage service can call it.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] / [`Error::Overloaded`] / [`Error::InvalidArgument`].
    pub async fn check_fencing_token(&self, name: &str, token: u64) -> Result<bool, Error> {
        let request = v1::CheckFencingTokenRequest {
            name: name.to_owned(),
            fencing_token: token,
        };
        let policy = self.unary_policy("CheckFencingToken", None);
        let reply = self
            .call(policy, |mut c| {
                let request = request.clone();
                async move { c.check_fencing_token(request).await }
            })
            .await?;
        Ok(reply.valid)
    }

    /// The policy of an ordinary (non-wait) call started now.
    pub(crate) fn unary_policy<'a>(
        &self,
        what: &'static str,
        session: Option<&'a SessionCore>,
    ) -> CallPolicy<'a> {
        CallPolicy {
            deadline: Some(Instant::now() + self.inner.config.request_timeout),
            attempt_timeout: Some(self.inner.config.attempt_timeout),
            session,
            what,
        }
    }

    /// The node the next attempt goes to: its index and a handle to its channel.
    pub(crate) fn pick(&self) -> (usize, Rpc) {
        let nodes = self.inner.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let node = &nodes.list[nodes.current];
        (nodes.current, node.channel.clone())
    }

    /// Moves on from node `failed` (only if no concurrent call has moved on already), to the
    /// next node that is not suspect (or simply the next one if all are).
    pub(crate) fn advance(&self, failed: usize) {
        let mut nodes = self.inner.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if nodes.current != failed {
            return;
        }
        let now = Instant::now();
        let count = nodes.list.len();
        let next = (1..=count)
            .map(|step| (failed + step) % count)
            .find(|&i| !nodes.list[i].is_suspect(now))
            .unwrap_or((failed + 1) % count);
        nodes.current = next;
        tracing::debug!(node = %nodes.list[next].addr, "switching node");
    }

    /// Node `node` answered (a reply, or an error status its server sent): it is not suspect
    /// any more.
    pub(crate) fn answered(&self, node: usize) {
        let mut nodes = self.inner.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = nodes.list.get_mut(node) {
            n.suspect_until = None;
            n.answered = true;
            n.failures = 0;
        }
    }

    /// True if node `node` is known only from a leader hint and has never answered.
    pub(crate) fn never_answered_hint(&self, node: usize) -> bool {
        let nodes = self.inner.nodes.lock().unwrap_or_else(|e| e.into_inner());
        node >= nodes.configured && nodes.list.get(node).is_some_and(|n| !n.answered)
    }

    /// Node `failed`'s connection broke (refused, reset, or a keepalive ping unanswered):
    /// avoid it for [`SUSPECT_FOR`] and move on. A node known only from a hint that has never
    /// answered is avoided for longer after each outage in a row (see the module docs); the
    /// calls that fail together when its connection breaks count as one.
    pub(crate) fn suspect(&self, failed: usize) {
        {
            let mut nodes = self.inner.nodes.lock().unwrap_or_else(|e| e.into_inner());
            let hinted = failed >= nodes.configured;
            if let Some(node) = nodes.list.get_mut(failed) {
                let now = Instant::now();
                if hinted && !node.answered && node.is_suspect(now) {
                    // Another call that was on it when it failed: already counted.
                } else if hinted && !node.answered {
                    node.failures = node.failures.saturating_add(1);
                    let avoid_for = SUSPECT_FOR
                        .saturating_mul(1 << (node.failures - 1).min(8))
                        .min(UNREACHABLE_HINT_FOR);
                    node.suspect_until = Some(now + avoid_for);
                    tracing::info!(
                        node = %node.addr,
                        failures = node.failures,
                        ?avoid_for,
                        "a leader hint names an address this client has not reached; using \
                         the configured endpoints meanwhile (the servers' advertise-client-addr \
                         should be an address clients can reach)"
                    );
                } else {
                    node.suspect_until = Some(now + SUSPECT_FOR);
                    tracing::debug!(node = %node.addr, "node unreachable; avoiding it for a while");
                }
            }
        }
        self.advance(failed);
    }

    /// Makes the hinted leader the current node, adding it if it is new. Returns false if the
    /// hint is unusable (malformed, or the hinted-node budget is spent), in which case the
    /// caller just moves to the next node.
    pub(crate) fn follow_hint(&self, hint: &str) -> bool {
        let addr = match parse_endpoint(hint) {
            Ok(a) => a,
            Err(err) => {
                tracing::warn!(hint, error = %err, "ignoring malformed leader hint");
                return false;
            }
        };
        let mut nodes = self.inner.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = nodes.list.iter().position(|n| n.addr == addr) {
            let now = Instant::now();
            let others_usable = nodes
                .list
                .iter()
                .enumerate()
                .any(|(j, n)| j != i && !n.is_suspect(now));
            if nodes.list[i].is_suspect(now) && others_usable {
                tracing::debug!(
                    hint,
                    "not following a hint to a node that stopped answering"
                );
                return false;
            }
            nodes.current = i;
            return true;
        }
        if nodes.list.len() >= nodes.configured + HINTED_NODES_MAX {
            tracing::warn!(hint, "too many hinted nodes; not adding");
            return false;
        }
        let credentials = Credentials::of(&self.inner.config).unwrap_or_default();
        match make_channel(&addr, &self.inner.config) {
            Ok(channel) => {
                tracing::debug!(node = %addr, "following leader hint to a new node");
                nodes.list.push(NodeConn::new(
                    addr,
                    InterceptedService::new(channel, credentials),
                ));
                nodes.current = nodes.list.len() - 1;
                true
            }
            Err(_) => false,
        }
    }

    /// Runs one request of the `Dlock` service with retries (see the module docs). `f` builds
    /// and sends one attempt on the given connection; it is called again, unchanged, for each
    /// retry.
    pub(crate) async fn call<T, F, Fut>(&self, policy: CallPolicy<'_>, mut f: F) -> Result<T, Error>
    where
        F: FnMut(DlockClient<Rpc>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_on(policy, |channel| f(DlockClient::new(channel)))
            .await
    }

    /// Runs one request of any service the nodes serve (`Dlock`, `Admin`) with the retries,
    /// leader hints and node switching of [`Client::call`]: `f` sends one attempt on a channel
    /// to the current node.
    pub(crate) async fn call_on<T, F, Fut>(
        &self,
        policy: CallPolicy<'_>,
        mut f: F,
    ) -> Result<T, Error>
    where
        F: FnMut(Rpc) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut backoff = Backoff::new();
        let mut last_failure = Error::Unavailable;
        // The last TLS failure seen: with no answer at all, it is the likely cause.
        let mut tls_failure = None;
        let mut immediate_hints = 0;
        loop {
            if policy.session.is_some_and(SessionCore::is_expired) {
                return Err(Error::SessionLost);
            }
            let now = Instant::now();
            let remaining = policy.deadline.map(|d| d.saturating_duration_since(now));
            if remaining == Some(Duration::ZERO) {
                tracing::debug!(what = policy.what, error = %last_failure, "giving up at deadline");
                return Err(match (last_failure, tls_failure) {
                    (Error::Unavailable, Some(why)) => Error::Tls(why),
                    (other, _) => other,
                });
            }
            let limit = match (remaining, policy.attempt_timeout) {
                (Some(r), Some(a)) => Some(r.min(a)),
                (r, a) => r.or(a),
            };
            let (node, channel) = self.pick();
            let attempt = f(channel);
            let attempt = async {
                match limit {
                    Some(limit) => tokio::time::timeout(limit, attempt).await.ok(),
                    None => Some(attempt.await),
                }
            };
            let result = match policy.session {
                Some(session) => tokio::select! {
                    r = attempt => r,
                    () = session.expired() => return Err(Error::SessionLost),
                },
                None => attempt.await,
            };
            let mut sleep = true;
            if let Some(Err(status)) = &result
                && !is_transport_failure(status)
            {
                // An error status its server sent: the node is reachable.
                self.answered(node);
            }
            match result {
                Some(Ok(response)) => {
                    self.answered(node);
                    return Ok(response.into_inner());
                }
                None => {
                    tracing::debug!(what = policy.what, node, "attempt timed out");
                    last_failure = Error::Unavailable;
                    // Only a full attempt says something about the node, not one the call's
                    // own deadline cut short.
                    let full_attempt = policy
                        .attempt_timeout
                        .is_some_and(|a| remaining.is_none_or(|r| a <= r));
                    if full_attempt && self.never_answered_hint(node) {
                        // A hinted address that swallows connections: avoid it like one that
                        // refuses them.
                        self.suspect(node);
                    } else {
                        self.advance(node);
                    }
                }
                Some(Err(status)) => match classify(status.code()) {
                    Disposition::NextNode => {
                        if let Some(why) = dlock_tls::tls_failure(&status) {
                            tracing::warn!(what = policy.what, node, why, "TLS failure");
                            tls_failure = Some(why);
                        }
                        tracing::debug!(
                            what = policy.what,
                            node,
                            code = ?status.code(),
                            message = status.message(),
                            "attempt failed; retrying elsewhere"
                        );
                        last_failure = Error::Unavailable;
                        let followed = leader_hint(&status).is_some_and(|h| self.follow_hint(&h));
                        if followed && immediate_hints < IMMEDIATE_HINTS_MAX {
                            immediate_hints += 1;
                            sleep = false;
                        } else if !followed && is_transport_failure(&status) {
                            self.suspect(node);
                        } else if !followed {
                            self.advance(node);
                        }
                    }
                    Disposition::Overloaded
                        if status.metadata().contains_key(dlock_proto::FINAL_METADATA) =>
                    {
                        tracing::debug!(
                            what = policy.what,
                            node,
                            message = status.message(),
                            "refused for lack of resources"
                        );
                        return Err(Error::Overloaded);
                    }
                    Disposition::Overloaded => {
                        tracing::debug!(what = policy.what, node, "server overloaded; backing off");
                        last_failure = Error::Overloaded;
                    }
                    Disposition::SessionLost => {
                        if let Some(session) = policy.session {
                            session.mark_expired("server reported the session unknown");
                        }
                        return Err(Error::SessionLost);
                    }
                    Disposition::InvalidArgument => {
                        return Err(Error::InvalidArgument(status.message().to_owned()));
                    }
                    // A node that serves TLS only answers a plaintext client this way. Another
                    // node may not (TLS being switched on node by node): try the others, and
                    // report it if none answers.
                    Disposition::Unexpected if status.code() == Code::Unauthenticated => {
                        tracing::warn!(
                            what = policy.what,
                            node,
                            why = status.message(),
                            "refused as plaintext"
                        );
                        tls_failure = Some(status.message().to_owned());
                        last_failure = Error::Unavailable;
                        self.advance(node);
                    }
                    Disposition::Unexpected => {
                        return Err(Error::Transport(format!(
                            "{:?}: {}",
                            status.code(),
                            status.message()
                        )));
                    }
                },
            }
            if sleep {
                let mut delay = backoff.next_delay();
                if let Some(deadline) = policy.deadline {
                    delay = delay.min(deadline.saturating_duration_since(Instant::now()));
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// True for a status made by the client's own transport (connection refused or reset, a
/// keepalive ping unanswered) rather than sent by a server: those carry their cause as the
/// error source.
pub(crate) fn is_transport_failure(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// A lazily connecting channel to one node.
fn make_channel(addr: &str, config: &ClientConfig) -> Result<Channel, Error> {
    let endpoint = Endpoint::from_shared(addr.to_owned())
        .map_err(|e| Error::InvalidArgument(format!("endpoint {addr:?}: {e}")))?
        .connect_timeout(config.connect_timeout)
        .http2_keep_alive_interval(HTTP2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    Ok(endpoint.connect_with_connector_lazy(dlock_tls::Connector::new(config.tls.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_classify_per_the_proto_table() {
        assert_eq!(classify(Code::Unavailable), Disposition::NextNode);
        assert_eq!(classify(Code::Internal), Disposition::NextNode);
        assert_eq!(classify(Code::Unknown), Disposition::NextNode);
        assert_eq!(classify(Code::ResourceExhausted), Disposition::Overloaded);
        assert_eq!(classify(Code::NotFound), Disposition::SessionLost);
        assert_eq!(
            classify(Code::InvalidArgument),
            Disposition::InvalidArgument
        );
        assert_eq!(classify(Code::Unimplemented), Disposition::Unexpected);
        assert_eq!(classify(Code::PermissionDenied), Disposition::Unexpected);
    }

    #[test]
    fn leader_hints_are_read_from_metadata() {
        let mut status = Status::unavailable("not leader");
        assert_eq!(leader_hint(&status), None);
        status.metadata_mut().insert(
            dlock_proto::LEADER_HINT_METADATA,
            "10.0.0.3:7700".parse().unwrap(),
        );
        assert_eq!(leader_hint(&status).as_deref(), Some("10.0.0.3:7700"));
    }

    #[test]
    fn backoff_grows_jittered_and_capped() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(first >= BACKOFF_INITIAL / 2 && first <= BACKOFF_INITIAL);
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= BACKOFF_MAX, "{d:?}");
        }
        let d = b.next_delay();
        assert!(d >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.next_delay() <= BACKOFF_INITIAL);
    }

    #[tokio::test]
    async fn clients_validate_and_dedupe_endpoints() {
        assert!(matches!(
            Client::connect(Vec::<String>::new()).await,
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            Client::connect(["nope"]).await,
            Err(Error::InvalidArgument(_))
        ));
        let c = Client::connect(["127.0.0.1:1", "http://127.0.0.1:1", "127.0.0.1:2"])
            .await
            .unwrap();
        assert_eq!(c.pick().0, 0);
        c.advance(0);
        assert_eq!(c.pick().0, 1);
        c.advance(0); // stale failure report: no move
        assert_eq!(c.pick().0, 1);
        c.advance(1);
        assert_eq!(c.pick().0, 0, "wraps around over the 2 distinct nodes");
        assert!(c.follow_hint("127.0.0.1:2"));
        assert_eq!(c.pick().0, 1);
        assert!(c.follow_hint("127.0.0.1:3"));
        assert_eq!(c.pick().0, 2, "a new hinted node is appended");
        assert!(!c.follow_hint("garbage"));
        for port in 10..(10 + HINTED_NODES_MAX as u16) {
            c.follow_hint(&format!("127.0.0.1:{port}"));
        }
        assert!(!c.follow_hint("127.0.0.1:999"), "hinted nodes are bounded");
    }

    /// How long from now node `i` stays suspect (zero if it is not).
    fn suspect_for(c: &Client, i: usize) -> Duration {
        let nodes = c.inner.nodes.lock().unwrap();
        nodes.list[i].suspect_until.map_or(Duration::ZERO, |until| {
            until.saturating_duration_since(Instant::now())
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_hinted_node_that_never_answers_is_avoided_longer_after_each_failure() {
        let c = Client::connect(["127.0.0.1:1", "127.0.0.1:2"])
            .await
            .unwrap();
        assert!(c.follow_hint("unreachable.invalid:7700"));
        let hinted = c.pick().0;
        assert_eq!(hinted, 2);
        let mut expected = SUSPECT_FOR;
        for _ in 0..10 {
            c.suspect(hinted);
            assert_eq!(suspect_for(&c, hinted), expected);
            // The other calls that were on it when it failed do not count again.
            c.suspect(hinted);
            assert_eq!(suspect_for(&c, hinted), expected);
            tokio::time::advance(expected).await;
            expected = (expected * 2).min(UNREACHABLE_HINT_FOR);
        }
        c.suspect(hinted);
        assert_eq!(suspect_for(&c, hinted), UNREACHABLE_HINT_FOR, "capped");
        assert!(
            !c.follow_hint("unreachable.invalid:7700"),
            "not followed while avoided and other nodes are usable"
        );

        // Once it answers, it is an ordinary node: one failure costs SUSPECT_FOR.
        c.answered(hinted);
        assert_eq!(suspect_for(&c, hinted), Duration::ZERO);
        c.suspect(hinted);
        c.suspect(hinted);
        assert_eq!(suspect_for(&c, hinted), SUSPECT_FOR);

        // Configured endpoints never get more than SUSPECT_FOR.
        for _ in 0..5 {
            c.suspect(0);
        }
        assert_eq!(suspect_for(&c, 0), SUSPECT_FOR);
    }

    #[tokio::test]
    async fn calls_to_a_dead_cluster_fail_unavailable_at_the_deadline() {
        // Port 1 on loopback refuses connections.
        let mut config = ClientConfig::new(["127.0.0.1:1", "127.0.0.1:2"]);
        config.request_timeout = Duration::from_millis(300);
        let client = Client::connect_with_config(config).await.unwrap();
        let started = std::time::Instant::now();
        let err = client.check_fencing_token("x", 1).await.unwrap_err();
        assert_eq!(err, Error::Unavailable);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        let err = client
            .open_session(Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(err, Error::Unavailable);
    }
}

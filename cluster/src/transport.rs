//! The Raft peer transport over gRPC (`dlock.v1.RaftPeer`), both directions.
//!
//! # Sending: [`GrpcTransport`]
//!
//! One long-lived client-streaming `RaftPeer.Stream` call per peer, fed by a bounded per-peer
//! queue of [`PEER_QUEUE_MESSAGES`]. [`Transport::send`] never blocks: it puts the encoded
//! message on the peer's queue, or, if the queue is full or the peer has no address, drops it
//! and reports the peer unreachable (raft retransmits; docs/dependencies.md §1.3).
//!
//! A tokio task per peer connects (`connect_timeout`, `TCP_NODELAY`, HTTP/2 keepalive so a
//! dead peer is noticed even on an idle stream), streams `RaftEnvelope { from, payload }` and,
//! on any error, reports the peer unreachable, drops what queued up meanwhile (stale by then)
//! and reconnects with exponential backoff from [`RECONNECT_BACKOFF_MIN`] to
//! [`RECONNECT_BACKOFF_MAX`], resolving the address again on every attempt.
//!
//! # Chunks
//!
//! A message larger than [`PeerLimits::chunk_bytes`] (4 MiB by default; in practice only a
//! `MsgSnapshot`, whose state machine image travels inline) is sent as consecutive envelopes
//! on the stream, nothing in between: every chunk but the last has `more` set, and the first
//! announces the whole size in `message_bytes`. So a snapshot of any size fits, while each
//! gRPC message stays below [`PEER_ENVELOPE_BYTES_MAX`] (8 MiB) and a bad or hostile peer
//! cannot make a receiver decode one huge message. The receiver refuses a message announcing
//! more than [`PeerLimits::message_bytes_max`] (8 GiB by default) before buffering any of it,
//! checks that the chunks add up to the announced size, and ends the stream on any violation.
//! Each chunk is copied out of the encoded message only when it is sent; at most 16 envelopes
//! (64 MiB) wait for HTTP/2 flow control per peer.
//!
//! # Snapshot delivery
//!
//! To know that a snapshot was *delivered*, the task ends the stream right after its last
//! chunk and waits for the receiver's `StreamAck`, which the receiver sends only once it has
//! handed every message of the stream to its node. It then reports [`Node::report_snapshot`]
//! `true`, or `false` if the stream failed first, and opens a new stream. A receiver that
//! cannot hand a snapshot to its node (inbound queue full, message refused) ends the stream
//! with an error status (`RESOURCE_EXHAUSTED` / `INVALID_ARGUMENT`) instead of acknowledging
//! it, so the sender reports `false` and raft sends the snapshot again; without that the
//! leader would believe it delivered and wait for a follower that never got it. Without any
//! report the follower would stay in snapshot state until an election. The message type is
//! read from the first bytes of the payload (see [`is_snapshot_message`]).
//!
//! # Binding and membership
//!
//! The transport is created before the [`Node`] (the node owns it), so it starts unbound:
//! [`Node::start`] calls [`Transport::bind`], which stores a [`WeakNode`] (a strong handle
//! would keep the node alive forever) for the feedback calls and starts a task that follows
//! [`Node::membership`]: every member's address in the replicated registry becomes a peer
//! (via [`GrpcTransport::set_peer`]; a changed address replaces the peer's task) and peers that
//! left the registry are removed ([`GrpcTransport::remove_peer`]). Before binding, or for
//! tests, peers can be set by hand; an unbound transport sends but reports nothing.
//!
//! # Receiving: [`RaftPeerService`]
//!
//! The tonic service reassembles chunked messages and hands every whole message to
//! [`Node::receive`], in stream order. Malformed or misaddressed messages are logged and
//! dropped, never fatal; a full inbound queue drops the message (raft retransmits), except
//! that a dropped snapshot ends the stream with an error (see above); once the node has
//! stopped, the stream is ended with `UNAVAILABLE` so that the sender backs off and reconnects.
//!
//! Both sides set tonic's per-message limits to [`PEER_ENVELOPE_BYTES_MAX`]; appends stay far
//! smaller through raft's `max_size_per_msg` (`Config::append_bytes_max`) and
//! `Config::command_bytes_max`, and anything larger than a chunk is chunked.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use dlock_proto::v1::raft_peer_client::RaftPeerClient;
use dlock_proto::v1::raft_peer_server::{RaftPeer, RaftPeerServer};
use dlock_proto::v1::{RaftEnvelope, StreamAck};
use raft::eraftpb::MessageType;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::{Error, Node, Transport, WeakNode};

/// Messages queued per peer before [`Transport::send`] starts dropping (and reporting the peer
/// unreachable). Raft's own flow control (`inflight_messages_max` appends per follower) keeps
/// a healthy peer far below this.
pub const PEER_QUEUE_MESSAGES: usize = 1024;

/// Largest chunk a sender uses ([`PeerLimits::chunk_bytes`] is clamped to it), so that every
/// envelope fits [`PEER_ENVELOPE_BYTES_MAX`].
pub const PEER_CHUNK_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Default [`PeerLimits::chunk_bytes`].
pub const PEER_CHUNK_BYTES_DEFAULT: usize = PEER_CHUNK_BYTES_MAX;

/// Largest gRPC message (one `RaftEnvelope`) either side accepts or sends: a chunk of at most
/// [`PEER_CHUNK_BYTES_MAX`] plus the envelope's few bytes, with room to spare. Messages larger
/// than a chunk (snapshots) are split, so this never limits a snapshot's size.
pub const PEER_ENVELOPE_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Default [`PeerLimits::message_bytes_max`]: the largest reassembled message (in practice a
/// snapshot) a receiver accepts, 8 GiB.
pub const PEER_MESSAGE_BYTES_MAX_DEFAULT: u64 = 8 * 1024 * 1024 * 1024;

/// Sizes of the peer transport. Both sides take one ([`GrpcTransport::with_limits`],
/// [`RaftPeerService::with_limits`]); `Default` gives the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLimits {
    /// Sending: messages larger than this travel as chunks of this size. Clamped to
    /// `1..=`[`PEER_CHUNK_BYTES_MAX`]. Default [`PEER_CHUNK_BYTES_DEFAULT`] (4 MiB).
    pub chunk_bytes: usize,
    /// Receiving: a chunked message announcing more than this is refused before any of it is
    /// buffered (the stream ends with `RESOURCE_EXHAUSTED`; for a snapshot the sender reports
    /// it failed). It bounds the memory one stream can take. Default
    /// [`PEER_MESSAGE_BYTES_MAX_DEFAULT`] (8 GiB); it must exceed the largest snapshot.
    pub message_bytes_max: u64,
}

impl Default for PeerLimits {
    fn default() -> Self {
        PeerLimits {
            chunk_bytes: PEER_CHUNK_BYTES_DEFAULT,
            message_bytes_max: PEER_MESSAGE_BYTES_MAX_DEFAULT,
        }
    }
}

impl PeerLimits {
    fn effective_chunk_bytes(&self) -> usize {
        self.chunk_bytes.clamp(1, PEER_CHUNK_BYTES_MAX)
    }
}

/// First wait before reconnecting to a peer; doubles on every failure.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(20);

/// Longest wait between reconnection attempts.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Bound on establishing one connection (TCP and HTTP/2 handshake).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// HTTP/2 ping interval on peer connections, idle ones included.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// A peer connection whose ping is not answered within this is considered dead.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Envelopes buffered between a peer's queue and its gRPC stream (HTTP/2 flow control
/// applies beyond this). With chunks of 4 MiB that is at most 64 MiB per peer.
const STREAM_BUFFER_MESSAGES: usize = 16;

/// True if `payload` (an encoded `eraftpb::Message`) is a `MsgSnapshot`.
///
/// rust-protobuf writes fields in field-number order and omits proto3 default values, so a
/// message whose type is not `MsgHup` (0, local-only) starts with field 1, `msg_type`, as
/// tag byte `0x08` followed by the type as a one-byte varint. This avoids decoding every
/// message (and copying every snapshot) on the raft thread just to learn its type.
pub fn is_snapshot_message(payload: &[u8]) -> bool {
    matches!(payload, [0x08, kind, ..] if u32::from(*kind) == MessageType::MsgSnapshot as u32)
}

/// One encoded raft message waiting for its peer stream.
struct Outbound {
    payload: Vec<u8>,
    snapshot: bool,
}

/// Transport feedback to the bound node, if any (best effort).
#[derive(Clone)]
struct Feedback {
    node: Arc<RwLock<WeakNode>>,
}

impl Feedback {
    fn node(&self) -> Option<Node> {
        self.node.read().expect("node lock poisoned").upgrade()
    }

    fn unreachable(&self, to: u64) {
        if let Some(node) = self.node() {
            node.report_unreachable(to);
        }
    }

    fn snapshot(&self, to: u64, delivered: bool) {
        if let Some(node) = self.node() {
            node.report_snapshot(to, delivered);
        }
    }
}

/// A peer's queue and the task that drains it into a gRPC stream.
struct PeerLink {
    address: String,
    queue: mpsc::Sender<Outbound>,
    task: JoinHandle<()>,
}

impl Drop for PeerLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    self_id: u64,
    limits: PeerLimits,
    runtime: tokio::runtime::Handle,
    feedback: Feedback,
    links: Mutex<HashMap<u64, PeerLink>>,
}

impl Shared {
    fn set_peer(&self, id: u64, address: String) {
        if id == self.self_id {
            return;
        }
        let mut links = self.links.lock().expect("links lock poisoned");
        if links.get(&id).is_some_and(|link| link.address == address) {
            return;
        }
        tracing::info!(peer = id, %address, "peer address set");
        let (queue, rx) = mpsc::channel(PEER_QUEUE_MESSAGES);
        let task = self.runtime.spawn(run_link(
            self.self_id,
            id,
            address.clone(),
            rx,
            self.feedback.clone(),
            self.limits.effective_chunk_bytes(),
        ));
        // Replacing a link drops (and aborts) the old one.
        links.insert(
            id,
            PeerLink {
                address,
                queue,
                task,
            },
        );
    }

    fn remove_peer(&self, id: u64) {
        let removed = self.links.lock().expect("links lock poisoned").remove(&id);
        if let Some(link) = removed {
            tracing::info!(peer = id, address = %link.address, "peer removed");
        }
    }

    /// Makes the peers exactly `peers` (this node excluded).
    fn sync(&self, peers: &BTreeMap<u64, String>) {
        for (id, address) in peers {
            self.set_peer(*id, address.clone());
        }
        let stale: Vec<u64> = self
            .links
            .lock()
            .expect("links lock poisoned")
            .keys()
            .filter(|id| !peers.contains_key(id))
            .copied()
            .collect();
        for id in stale {
            self.remove_peer(id);
        }
    }
}

/// The sending side of the peer transport: see the [module docs](self).
///
/// Create it inside a tokio runtime (its tasks run there), hand it to [`Node::start`] (which
/// binds it), and keep no other strong expectations: dropping the last reference stops every
/// peer task.
pub struct GrpcTransport {
    shared: Arc<Shared>,
    sync_task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for GrpcTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcTransport")
            .field("self_id", &self.shared.self_id)
            .field("peers", &self.peers())
            .finish()
    }
}

impl GrpcTransport {
    /// A transport for node `self_id` with the default [`PeerLimits`], with no peers and not
    /// yet bound to a node.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    pub fn new(self_id: u64) -> Arc<GrpcTransport> {
        Self::with_limits(self_id, PeerLimits::default())
    }

    /// Like [`GrpcTransport::new`], sending with `limits.chunk_bytes` (the receiving limit
    /// does not apply to a sender).
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    pub fn with_limits(self_id: u64, limits: PeerLimits) -> Arc<GrpcTransport> {
        Arc::new(GrpcTransport {
            shared: Arc::new(Shared {
                self_id,
                limits,
                runtime: tokio::runtime::Handle::current(),
                feedback: Feedback {
                    node: Arc::new(RwLock::new(WeakNode::default())),
                },
                links: Mutex::new(HashMap::new()),
            }),
            sync_task: Mutex::new(None),
        })
    }

    /// Sets (or changes) peer `id`'s address: `HOST:PORT` or a URI (`http://HOST:PORT`). A new
    /// address replaces the peer's connection task; the same address is a no-op. Ignored for
    /// this node's own id. Once bound, the transport does this itself from the registry.
    pub fn set_peer(&self, id: u64, address: impl Into<String>) {
        self.shared.set_peer(id, address.into());
    }

    /// Forgets peer `id` and stops its task; messages to it are dropped from then on.
    pub fn remove_peer(&self, id: u64) {
        self.shared.remove_peer(id);
    }

    /// The peers this transport currently sends to, with their addresses.
    pub fn peers(&self) -> BTreeMap<u64, String> {
        self.shared
            .links
            .lock()
            .expect("links lock poisoned")
            .iter()
            .map(|(id, link)| (*id, link.address.clone()))
            .collect()
    }
}

impl Drop for GrpcTransport {
    fn drop(&mut self) {
        if let Some(task) = self.sync_task.lock().expect("sync lock poisoned").take() {
            task.abort();
        }
        // The links (and their tasks) go with `shared` once the sync task has let go of it.
        self.shared
            .links
            .lock()
            .expect("links lock poisoned")
            .clear();
    }
}

impl Transport for GrpcTransport {
    fn send(&self, to: u64, message: Vec<u8>) {
        let snapshot = is_snapshot_message(&message);
        let bytes = message.len();
        let result = {
            let links = self.shared.links.lock().expect("links lock poisoned");
            match links.get(&to) {
                Some(link) => link
                    .queue
                    .try_send(Outbound {
                        payload: message,
                        snapshot,
                    })
                    .map_err(|err| match err {
                        mpsc::error::TrySendError::Full(_) => "peer queue full",
                        mpsc::error::TrySendError::Closed(_) => "peer task gone",
                    }),
                None => Err("no address for peer"),
            }
        };
        match result {
            Ok(()) => tracing::trace!(to, bytes, snapshot, "raft message queued"),
            Err(reason) => {
                tracing::debug!(to, bytes, snapshot, reason, "raft message dropped");
                if snapshot {
                    self.shared.feedback.snapshot(to, false);
                }
                self.shared.feedback.unreachable(to);
            }
        }
    }

    /// Stores a weak handle to `node` for feedback and starts following its membership (the
    /// peers become exactly the registry's members other than this node). Binding again (a
    /// restarted node) replaces the previous binding.
    fn bind(&self, node: &Node) {
        *self
            .shared
            .feedback
            .node
            .write()
            .expect("node lock poisoned") = node.downgrade();
        let mut membership = node.membership();
        let peers = membership.borrow_and_update().peers.clone();
        self.shared.sync(&peers);
        let shared = self.shared.clone();
        let task = self.shared.runtime.spawn(async move {
            // Ends when the node stops (the raft thread drops the sender).
            while membership.changed().await.is_ok() {
                let peers = membership.borrow_and_update().peers.clone();
                shared.sync(&peers);
            }
        });
        if let Some(old) = self
            .sync_task
            .lock()
            .expect("sync lock poisoned")
            .replace(task)
        {
            old.abort();
        }
    }
}

fn endpoint(address: &str) -> Result<Endpoint, tonic::transport::Error> {
    let uri = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    Ok(Endpoint::from_shared(uri)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// Connects to `address` (resolved afresh), bounded by twice [`CONNECT_TIMEOUT`].
async fn connect(address: &str) -> Result<Channel, String> {
    let endpoint = endpoint(address).map_err(|e| format!("invalid peer address: {e}"))?;
    match tokio::time::timeout(2 * CONNECT_TIMEOUT, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(err)) => Err(format!("connect: {err}")),
        Err(_) => Err("connect: timed out".into()),
    }
}

/// How one stream on a connection ended.
enum SessionEnd {
    /// The peer was removed or the transport dropped: stop.
    QueueClosed,
    /// A snapshot was delivered and acknowledged; open the next stream on the same connection.
    SnapshotDelivered,
    /// The stream (or connection) broke; reconnect after a backoff.
    Failed(String),
}

/// The per-peer task: connect, stream, reconnect with backoff, until the queue closes.
async fn run_link(
    self_id: u64,
    to: u64,
    address: String,
    mut queue: mpsc::Receiver<Outbound>,
    feedback: Feedback,
    chunk_bytes: usize,
) {
    let mut backoff = RECONNECT_BACKOFF_MIN;
    let mut failures: u32 = 0;
    loop {
        let failure = match connect(&address).await {
            Ok(channel) => {
                tracing::debug!(peer = to, %address, "connected to peer");
                let client = RaftPeerClient::new(channel)
                    .max_encoding_message_size(PEER_ENVELOPE_BYTES_MAX)
                    .max_decoding_message_size(PEER_ENVELOPE_BYTES_MAX);
                loop {
                    let started = Instant::now();
                    let session = Session {
                        self_id,
                        to,
                        chunk_bytes,
                        feedback: &feedback,
                    };
                    match session.run(client.clone(), &mut queue).await {
                        SessionEnd::QueueClosed => return,
                        SessionEnd::SnapshotDelivered => {
                            backoff = RECONNECT_BACKOFF_MIN;
                            failures = 0;
                        }
                        SessionEnd::Failed(reason) => {
                            if started.elapsed() >= RECONNECT_BACKOFF_MAX {
                                // It worked for a while: this is a fresh outage.
                                backoff = RECONNECT_BACKOFF_MIN;
                                failures = 0;
                            }
                            // Whatever was in flight on the stream is lost.
                            feedback.unreachable(to);
                            break reason;
                        }
                    }
                }
            }
            Err(reason) => reason,
        };
        if failures == 0 {
            tracing::info!(peer = to, %address, reason = %failure, "peer unreachable; reconnecting with backoff");
        } else {
            tracing::debug!(peer = to, %address, reason = %failure, failures, "peer still unreachable");
        }
        failures = failures.saturating_add(1);
        // What queued up while the peer was unreachable is stale; raft sends again.
        let mut dropped = 0usize;
        loop {
            match queue.try_recv() {
                Ok(item) => {
                    dropped += 1;
                    if item.snapshot {
                        feedback.snapshot(to, false);
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
        if dropped > 0 {
            feedback.unreachable(to);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
    }
}

/// What one `RaftPeer.Stream` call needs to know.
struct Session<'a> {
    self_id: u64,
    to: u64,
    chunk_bytes: usize,
    feedback: &'a Feedback,
}

impl Session<'_> {
    /// One `RaftPeer.Stream` call: forwards queued messages (each larger than a chunk as
    /// consecutive chunks) until the stream fails, the queue closes, or a snapshot has been
    /// sent (then waits for the receiver's acknowledgement).
    async fn run(
        &self,
        mut client: RaftPeerClient<Channel>,
        queue: &mut mpsc::Receiver<Outbound>,
    ) -> SessionEnd {
        let to = self.to;
        let (tx, rx) = mpsc::channel::<RaftEnvelope>(STREAM_BUFFER_MESSAGES);
        let call = async move { client.stream(ReceiverStream::new(rx)).await };
        tokio::pin!(call);
        let ended_early = |result: Result<Response<StreamAck>, Status>| match result {
            Ok(_) => SessionEnd::Failed("peer ended the stream".into()),
            Err(status) => SessionEnd::Failed(format!("stream failed: {status}")),
        };
        loop {
            // Keep polling the call while waiting: it must start, and it reports a broken stream.
            let item = tokio::select! {
                biased;
                result = &mut call => return ended_early(result),
                item = queue.recv() => item,
            };
            let Some(Outbound { payload, snapshot }) = item else {
                return SessionEnd::QueueClosed;
            };
            let bytes = payload.len();
            let started = Instant::now();
            let chunks = self.envelopes(payload);
            let count = chunks.len();
            for envelope in chunks {
                let sent = tokio::select! {
                    biased;
                    result = &mut call => {
                        if snapshot {
                            self.feedback.snapshot(to, false);
                        }
                        return ended_early(result);
                    }
                    sent = tx.send(envelope.build()) => sent.is_ok(),
                };
                if !sent {
                    if snapshot {
                        self.feedback.snapshot(to, false);
                    }
                    return SessionEnd::Failed("stream closed".into());
                }
            }
            tracing::debug!(
                peer = to,
                bytes,
                chunks = count,
                snapshot,
                "raft message sent"
            );
            if snapshot {
                // End the stream so that the receiver's acknowledgement proves delivery.
                drop(tx);
                return match (&mut call).await {
                    Ok(_) => {
                        tracing::info!(
                            peer = to,
                            bytes,
                            chunks = count,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "snapshot delivered"
                        );
                        self.feedback.snapshot(to, true);
                        SessionEnd::SnapshotDelivered
                    }
                    Err(status) => {
                        tracing::info!(peer = to, bytes, error = %status, "snapshot not delivered");
                        self.feedback.snapshot(to, false);
                        SessionEnd::Failed(format!("snapshot stream failed: {status}"))
                    }
                };
            }
        }
    }

    /// The envelopes that carry `payload`: one if it fits a chunk, else one per chunk. Each
    /// chunk is copied out only when it is about to be sent.
    fn envelopes(&self, payload: Vec<u8>) -> Vec<Chunk> {
        let payload = Arc::new(payload);
        let total = payload.len();
        if total <= self.chunk_bytes {
            return vec![Chunk {
                from: self.self_id,
                payload,
                range: 0..total,
                message_bytes: 0,
            }];
        }
        (0..total)
            .step_by(self.chunk_bytes)
            .map(|start| Chunk {
                from: self.self_id,
                payload: payload.clone(),
                range: start..(start + self.chunk_bytes).min(total),
                message_bytes: if start == 0 { total as u64 } else { 0 },
            })
            .collect()
    }
}

/// One envelope to send: a range of a shared payload.
struct Chunk {
    from: u64,
    payload: Arc<Vec<u8>>,
    range: std::ops::Range<usize>,
    /// The whole message's size on the first chunk of a chunked message, else 0.
    message_bytes: u64,
}

impl Chunk {
    fn build(self) -> RaftEnvelope {
        let total = self.payload.len();
        let more = self.range.end < total;
        let payload = if self.range.start == 0 && !more {
            // The only chunk: hand the buffer over without copying when nobody else holds it.
            Arc::try_unwrap(self.payload).unwrap_or_else(|shared| shared.to_vec())
        } else {
            self.payload[self.range].to_vec()
        };
        RaftEnvelope {
            from: self.from,
            payload,
            more,
            message_bytes: self.message_bytes,
        }
    }
}

/// The receiving side of the peer transport (`dlock.v1.RaftPeer`): see the
/// [module docs](self). It holds a strong [`Node`] handle: serve it only as long as the node.
#[derive(Debug, Clone)]
pub struct RaftPeerService {
    node: Node,
    limits: PeerLimits,
}

impl RaftPeerService {
    /// The tonic service for `node` with the default [`PeerLimits`], its per-envelope size
    /// limits set to [`PEER_ENVELOPE_BYTES_MAX`]. Add it to a `tonic::transport::Server` on
    /// the peer address.
    pub fn new(node: Node) -> RaftPeerServer<RaftPeerService> {
        Self::with_limits(node, PeerLimits::default())
    }

    /// Like [`RaftPeerService::new`], refusing chunked messages above
    /// `limits.message_bytes_max` (the chunk size does not apply to a receiver: it takes
    /// whatever chunks fit an envelope).
    pub fn with_limits(node: Node, limits: PeerLimits) -> RaftPeerServer<RaftPeerService> {
        RaftPeerServer::new(RaftPeerService { node, limits })
            .max_decoding_message_size(PEER_ENVELOPE_BYTES_MAX)
            .max_encoding_message_size(PEER_ENVELOPE_BYTES_MAX)
    }

    /// Hands one whole message to the node. A snapshot that does not reach the node ends the
    /// stream with an error, so that the sender reports it failed (raft then sends it again);
    /// other messages are dropped quietly (raft retransmits).
    fn deliver(&self, from: u64, payload: Vec<u8>) -> Result<(), Status> {
        let bytes = payload.len();
        let snapshot = is_snapshot_message(&payload);
        match self.node.receive(payload) {
            Ok(()) => {
                if snapshot {
                    tracing::info!(from, bytes, "snapshot received and queued for raft");
                } else {
                    tracing::debug!(from, bytes, "raft message received");
                }
                Ok(())
            }
            Err(err) if err.is_fatal() => Err(Status::unavailable(format!(
                "node {} is not running: {err}",
                self.node.id()
            ))),
            Err(Error::Overloaded) if snapshot => {
                tracing::info!(
                    from,
                    bytes,
                    "inbound raft queue full; snapshot dropped, telling the sender"
                );
                Err(Status::resource_exhausted(format!(
                    "node {}: inbound raft queue full, snapshot of {bytes} bytes dropped",
                    self.node.id()
                )))
            }
            Err(Error::Overloaded) => {
                tracing::debug!(from, bytes, "inbound raft queue full; message dropped");
                Ok(())
            }
            Err(err) if snapshot => {
                tracing::warn!(from, bytes, error = %err, "invalid snapshot message refused");
                Err(Status::invalid_argument(format!(
                    "node {}: snapshot message refused: {err}",
                    self.node.id()
                )))
            }
            Err(err) => {
                tracing::warn!(from, bytes, error = %err, "invalid raft message dropped");
                Ok(())
            }
        }
    }
}

/// A chunked message being put back together on a stream.
struct Reassembly {
    from: u64,
    /// The size announced by the first chunk.
    expected: u64,
    buffer: Vec<u8>,
    chunks: u64,
}

/// Chunk sequences are checked strictly: a violation ends the stream (the sender reconnects,
/// raft resends). Returns a whole message once its last chunk is in.
fn reassemble(
    partial: &mut Option<Reassembly>,
    envelope: RaftEnvelope,
    limit: u64,
) -> Result<Option<Vec<u8>>, Status> {
    let RaftEnvelope {
        from,
        payload,
        more,
        message_bytes,
    } = envelope;
    let Some(mut current) = partial.take() else {
        if !more {
            if message_bytes != 0 && message_bytes != payload.len() as u64 {
                return Err(Status::invalid_argument(format!(
                    "unchunked message of {} bytes announces {message_bytes}",
                    payload.len()
                )));
            }
            return Ok(Some(payload));
        }
        if message_bytes > limit {
            tracing::warn!(
                from,
                message_bytes,
                limit,
                "chunked raft message above the limit refused"
            );
            return Err(Status::resource_exhausted(format!(
                "raft message of {message_bytes} bytes is above this node's limit of {limit}"
            )));
        }
        if message_bytes <= payload.len() as u64 {
            return Err(Status::invalid_argument(format!(
                "first chunk of {} bytes, with more to come, announces a message of {message_bytes}",
                payload.len()
            )));
        }
        // Grow with the data rather than trusting the announcement with memory up front.
        let mut buffer = Vec::with_capacity((message_bytes as usize).min(64 * 1024 * 1024));
        buffer.extend_from_slice(&payload);
        *partial = Some(Reassembly {
            from,
            expected: message_bytes,
            buffer,
            chunks: 1,
        });
        return Ok(None);
    };
    if from != current.from || message_bytes != 0 {
        return Err(Status::invalid_argument(
            "chunk does not continue the message in progress",
        ));
    }
    let size = current.buffer.len() as u64 + payload.len() as u64;
    if size > current.expected || (!more && size != current.expected) {
        return Err(Status::invalid_argument(format!(
            "chunks add up to {size} bytes{}, the message announced {}",
            if more { " so far" } else { "" },
            current.expected
        )));
    }
    current.buffer.extend_from_slice(&payload);
    current.chunks += 1;
    if more {
        *partial = Some(current);
        return Ok(None);
    }
    tracing::debug!(
        from,
        bytes = current.buffer.len(),
        chunks = current.chunks,
        "chunked raft message reassembled"
    );
    Ok(Some(current.buffer))
}

#[tonic::async_trait]
impl RaftPeer for RaftPeerService {
    async fn stream(
        &self,
        request: Request<Streaming<RaftEnvelope>>,
    ) -> Result<Response<StreamAck>, Status> {
        let remote = request.remote_addr();
        let mut stream = request.into_inner();
        let mut from = None;
        let mut partial = None;
        while let Some(envelope) = stream.message().await.inspect_err(|status| {
            tracing::debug!(?remote, ?from, error = %status, "peer stream broke");
        })? {
            if from != Some(envelope.from) {
                from = Some(envelope.from);
                tracing::debug!(?remote, from = envelope.from, "peer stream opened");
            }
            let sender = envelope.from;
            let message = reassemble(&mut partial, envelope, self.limits.message_bytes_max)
                .inspect_err(|status| {
                    tracing::warn!(?remote, from = sender, error = %status, "bad chunk sequence; stream ended");
                })?;
            if let Some(payload) = message {
                self.deliver(sender, payload)?;
            }
        }
        if let Some(current) = partial {
            return Err(Status::invalid_argument(format!(
                "stream ended inside a chunked message ({} of {} bytes)",
                current.buffer.len(),
                current.expected
            )));
        }
        Ok(Response::new(StreamAck {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message as _;
    use raft::eraftpb::Message;

    #[test]
    fn snapshot_messages_are_recognised_from_their_first_bytes() {
        for kind in [
            MessageType::MsgSnapshot,
            MessageType::MsgAppend,
            MessageType::MsgHeartbeat,
            MessageType::MsgRequestPreVote,
            MessageType::MsgHup,
        ] {
            let mut message = Message::default();
            message.set_msg_type(kind);
            message.to = 3;
            message.from = 1;
            message.term = 7;
            if kind == MessageType::MsgSnapshot {
                message.mut_snapshot().set_data(vec![1u8; 100].into());
                message.mut_snapshot().mut_metadata().index = 9;
            }
            let bytes = message.write_to_bytes().unwrap();
            assert_eq!(
                is_snapshot_message(&bytes),
                kind == MessageType::MsgSnapshot,
                "{kind:?}"
            );
        }
        assert!(!is_snapshot_message(&[]));
    }

    fn session(chunk_bytes: usize, feedback: &Feedback) -> Session<'_> {
        Session {
            self_id: 7,
            to: 8,
            chunk_bytes,
            feedback,
        }
    }

    fn feedback() -> Feedback {
        Feedback {
            node: Arc::new(RwLock::new(WeakNode::default())),
        }
    }

    #[test]
    fn a_message_larger_than_a_chunk_is_split_and_reassembled() {
        let feedback = feedback();
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for chunk_bytes in [1, 7, 4096, 9_999, 10_000, 1 << 20] {
            let envelopes: Vec<RaftEnvelope> = session(chunk_bytes, &feedback)
                .envelopes(payload.clone())
                .into_iter()
                .map(Chunk::build)
                .collect();
            assert_eq!(envelopes.len(), payload.len().div_ceil(chunk_bytes));
            let mut partial = None;
            let mut out = Vec::new();
            for (i, envelope) in envelopes.into_iter().enumerate() {
                assert!(envelope.payload.len() <= chunk_bytes);
                assert_eq!(envelope.from, 7);
                if let Some(message) = reassemble(&mut partial, envelope, 10_000).unwrap() {
                    out.push((i, message));
                }
            }
            assert!(partial.is_none());
            assert_eq!(out.len(), 1, "chunk_bytes {chunk_bytes}");
            assert_eq!(out[0].1, payload, "chunk_bytes {chunk_bytes}");
        }
    }

    #[test]
    fn chunked_messages_above_the_limit_or_malformed_are_refused() {
        let feedback = feedback();
        let chunks = |n: usize| -> Vec<RaftEnvelope> {
            session(10, &feedback)
                .envelopes(vec![1u8; n])
                .into_iter()
                .map(Chunk::build)
                .collect()
        };
        // Above the limit: refused at the first chunk, before anything is buffered.
        let mut partial = None;
        let first = chunks(101).remove(0);
        let status = reassemble(&mut partial, first, 100).unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(partial.is_none());
        // At the limit: fine.
        let mut partial = None;
        let whole: Vec<_> = chunks(100)
            .into_iter()
            .filter_map(|e| reassemble(&mut partial, e, 100).unwrap())
            .collect();
        assert_eq!(whole, vec![vec![1u8; 100]]);
        // A chunk missing: the sizes do not add up.
        let mut partial = None;
        let mut sequence = chunks(50);
        sequence.remove(2);
        let results: Vec<_> = sequence
            .into_iter()
            .map(|e| reassemble(&mut partial, e, 100))
            .collect();
        assert_eq!(
            results.last().unwrap().as_ref().unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        // Another message's first chunk in the middle of one.
        let mut partial = None;
        let mut sequence = chunks(50);
        assert!(
            reassemble(&mut partial, sequence.remove(0), 100)
                .unwrap()
                .is_none()
        );
        let intruder = chunks(30).remove(0);
        assert!(reassemble(&mut partial, intruder, 100).is_err());
        // Too many bytes for the announcement.
        let mut partial = None;
        let mut first = chunks(50).remove(0);
        first.message_bytes = 15;
        assert!(reassemble(&mut partial, first, 100).unwrap().is_none());
        let mut next = chunks(50).remove(1);
        next.more = true;
        assert!(reassemble(&mut partial, next, 100).is_err());
    }
}

//! The Raft peer transport over gRPC (`dlock.v1.RaftPeer`), both directions.
//!
//! # Sending: [`GrpcTransport`]
//!
//! One long-lived client-streaming `RaftPeer.Stream` call per peer, fed by a bounded per-peer
//! queue of [`PEER_QUEUE_MESSAGES`]. [`Transport::send`] never blocks: it puts the encoded
//! message on the peer's queue, or, if the queue is full or the peer has no address, drops it
//! and reports the peer unreachable (raft retransmits; FIELD-NOTES §1.3).
//!
//! A tokio task per peer connects (`connect_timeout`, `TCP_NODELAY`, HTTP/2 keepalive so a
//! dead peer is noticed even on an idle stream), streams `RaftEnvelope { from, payload }` and,
//! on any error, reports the peer unreachable, drops what queued up meanwhile (stale by then)
//! and reconnects with exponential backoff from [`RECONNECT_BACKOFF_MIN`] to
//! [`RECONNECT_BACKOFF_MAX`], resolving the address again on every attempt.
//!
//! Snapshots travel inline in a `MsgSnapshot`. To know that one was *delivered*, the task ends
//! the stream right after it and waits for the receiver's `StreamAck` (sent once the receiver
//! has handed every message of the stream to its node), then reports
//! [`Node::report_snapshot`] `true`, or `false` if the stream failed first, and opens a new
//! stream. Without that report the follower would stay in snapshot state until an election.
//! The message type is read from the first bytes of the payload (see [`is_snapshot_message`]).
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
//! The tonic service hands every received payload to [`Node::receive`], in stream order.
//! Malformed or misaddressed messages are logged and dropped, never fatal; a full inbound queue
//! drops the message (raft retransmits); once the node has stopped, the stream is ended with
//! `UNAVAILABLE` so that the sender backs off and reconnects.
//!
//! Both sides raise tonic's 4 MiB message limit to [`PEER_MESSAGE_BYTES_MAX`] because
//! snapshots travel inline; appends stay small through raft's `max_size_per_msg`
//! (`Config::append_bytes_max`).

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

/// Largest gRPC message either side accepts or sends: a whole snapshot travels in one
/// `RaftEnvelope` (tonic's default limit is 4 MiB).
pub const PEER_MESSAGE_BYTES_MAX: usize = 256 * 1024 * 1024;

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
/// applies beyond this).
const STREAM_BUFFER_MESSAGES: usize = 64;

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
    /// A transport for node `self_id`, with no peers and not yet bound to a node.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    pub fn new(self_id: u64) -> Arc<GrpcTransport> {
        Arc::new(GrpcTransport {
            shared: Arc::new(Shared {
                self_id,
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
) {
    let mut backoff = RECONNECT_BACKOFF_MIN;
    let mut failures: u32 = 0;
    loop {
        let failure = match connect(&address).await {
            Ok(channel) => {
                tracing::debug!(peer = to, %address, "connected to peer");
                let client = RaftPeerClient::new(channel)
                    .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
                    .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX);
                loop {
                    let started = Instant::now();
                    match stream_session(self_id, to, client.clone(), &mut queue, &feedback).await {
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

/// One `RaftPeer.Stream` call: forwards queued messages until the stream fails, the queue
/// closes, or a snapshot has been sent (then waits for the receiver's acknowledgement).
async fn stream_session(
    self_id: u64,
    to: u64,
    mut client: RaftPeerClient<Channel>,
    queue: &mut mpsc::Receiver<Outbound>,
    feedback: &Feedback,
) -> SessionEnd {
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
        let envelope = RaftEnvelope {
            from: self_id,
            payload,
        };
        let sent = tokio::select! {
            biased;
            result = &mut call => {
                if snapshot {
                    feedback.snapshot(to, false);
                }
                return ended_early(result);
            }
            sent = tx.send(envelope) => sent.is_ok(),
        };
        if !sent {
            if snapshot {
                feedback.snapshot(to, false);
            }
            return SessionEnd::Failed("stream closed".into());
        }
        tracing::debug!(peer = to, bytes, snapshot, "raft message sent");
        if snapshot {
            // End the stream so that the receiver's acknowledgement proves delivery.
            drop(tx);
            return match (&mut call).await {
                Ok(_) => {
                    tracing::info!(peer = to, bytes, "snapshot delivered");
                    feedback.snapshot(to, true);
                    SessionEnd::SnapshotDelivered
                }
                Err(status) => {
                    tracing::info!(peer = to, bytes, error = %status, "snapshot not delivered");
                    feedback.snapshot(to, false);
                    SessionEnd::Failed(format!("snapshot stream failed: {status}"))
                }
            };
        }
    }
}

/// The receiving side of the peer transport (`dlock.v1.RaftPeer`): see the
/// [module docs](self). It holds a strong [`Node`] handle: serve it only as long as the node.
#[derive(Debug, Clone)]
pub struct RaftPeerService {
    node: Node,
}

impl RaftPeerService {
    /// The tonic service for `node`, with the message size limits raised to
    /// [`PEER_MESSAGE_BYTES_MAX`]. Add it to a `tonic::transport::Server` on the peer address.
    pub fn new(node: Node) -> RaftPeerServer<RaftPeerService> {
        RaftPeerServer::new(RaftPeerService { node })
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
    }
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
        while let Some(envelope) = stream.message().await.inspect_err(|status| {
            tracing::debug!(?remote, ?from, error = %status, "peer stream broke");
        })? {
            if from != Some(envelope.from) {
                from = Some(envelope.from);
                tracing::debug!(?remote, from = envelope.from, "peer stream opened");
            }
            let bytes = envelope.payload.len();
            match self.node.receive(envelope.payload) {
                Ok(()) => tracing::debug!(from = envelope.from, bytes, "raft message received"),
                Err(Error::Overloaded) => {
                    tracing::debug!(
                        from = envelope.from,
                        bytes,
                        "inbound raft queue full; message dropped"
                    );
                }
                Err(err) if err.is_fatal() => {
                    return Err(Status::unavailable(format!(
                        "node {} is not running: {err}",
                        self.node.id()
                    )));
                }
                Err(err) => {
                    tracing::warn!(from = envelope.from, bytes, error = %err, "invalid raft message dropped");
                }
            }
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
}

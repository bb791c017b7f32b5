//! The receiving side: [`RaftPeerService`], the `dlock.v1.RaftPeer` service that reassembles
//! chunked messages and hands every whole message to the node.

use dlock_proto::v1::raft_peer_server::{RaftPeer, RaftPeerServer};
use dlock_proto::v1::{RaftEnvelope, StreamAck};
use tonic::{Request, Response, Status, Streaming};

use super::chunks::reassemble;
use super::{PEER_ENVELOPE_BYTES_MAX, PeerLimits, is_snapshot_message};
use crate::{Error, Node, PeerOrigin};

/// The receiving side of the peer transport (`dlock.v1.RaftPeer`): see the
/// [module docs](super). It holds a strong [`Node`] handle: serve it only as long as the node.
#[derive(Debug, Clone)]
pub struct RaftPeerService {
    node: Node,
    limits: PeerLimits,
    /// Take messages only over TLS connections whose client certificate names a node, and
    /// only in that node's name.
    authenticate: bool,
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
        Self::build(node, limits, false)
    }

    /// Like [`RaftPeerService::with_limits`], for a peer port served over mutual TLS: a stream
    /// is taken only on a connection whose client certificate names a node
    /// (`dlock://node/<id>`), and every message on it must come from that node. Anything else
    /// ends the stream with `PERMISSION_DENIED` before a message reaches raft.
    pub fn authenticated(node: Node, limits: PeerLimits) -> RaftPeerServer<RaftPeerService> {
        Self::build(node, limits, true)
    }

    fn build(
        node: Node,
        limits: PeerLimits,
        authenticate: bool,
    ) -> RaftPeerServer<RaftPeerService> {
        RaftPeerServer::new(RaftPeerService {
            node,
            limits,
            authenticate,
        })
        .max_decoding_message_size(PEER_ENVELOPE_BYTES_MAX)
        .max_encoding_message_size(PEER_ENVELOPE_BYTES_MAX)
    }

    /// Hands one whole message to the node. A snapshot that does not reach the node ends the
    /// stream with an error, so that the sender reports it failed (raft then sends it again);
    /// other messages are dropped quietly (raft retransmits).
    fn deliver(&self, from: u64, payload: Vec<u8>) -> Result<(), Status> {
        let bytes = payload.len();
        let snapshot = is_snapshot_message(&payload);
        match self.node.receive_from(from, payload) {
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

#[tonic::async_trait]
impl RaftPeer for RaftPeerService {
    async fn stream(
        &self,
        request: Request<Streaming<RaftEnvelope>>,
    ) -> Result<Response<StreamAck>, Status> {
        let conn = request.extensions().get::<dlock_tls::ConnInfo>().cloned();
        let remote = conn.as_ref().and_then(|c| c.remote_addr);
        if conn.as_ref().is_some_and(|c| c.plaintext_on_tls) {
            tracing::warn!(?remote, "plaintext peer on the TLS peer port refused");
            return Err(dlock_tls::plaintext_refusal(true));
        }
        let certified = match conn.as_ref().and_then(|c| c.peer.as_ref()) {
            _ if !self.authenticate => None,
            Some(peer) if peer.node_id.is_some() => peer.node_id,
            peer => {
                let subject = peer.map(|p| p.subject.clone());
                tracing::warn!(
                    ?remote,
                    ?subject,
                    "raft stream without a node certificate refused"
                );
                return Err(Status::permission_denied(format!(
                    "node {} takes raft messages only from peers whose TLS certificate names \
                     their node (dlock://node/<id>); this connection's certificate: {}",
                    self.node.id(),
                    subject.as_deref().unwrap_or("none")
                )));
            }
        };
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
            if let Some(node) = certified
                && sender != node
            {
                tracing::warn!(
                    ?remote,
                    certified = node,
                    claimed = sender,
                    "raft message in another node's name refused; stream ended"
                );
                return Err(Status::permission_denied(format!(
                    "this connection's certificate names node {node}, not node {sender}"
                )));
            }
            let origin = PeerOrigin {
                from: sender,
                cluster_id: envelope.cluster_id,
                from_incarnation: envelope.from_incarnation,
                to_incarnation: envelope.to_incarnation,
            };
            if let Err(err) = self.node.admit(&origin) {
                let reason = match err {
                    Error::InvalidInput(reason) => reason,
                    other => other.to_string(),
                };
                tracing::warn!(?remote, from = sender, %reason, "raft message refused; stream ended");
                return Err(Status::failed_precondition(reason));
            }
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

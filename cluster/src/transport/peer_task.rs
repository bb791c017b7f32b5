//! The per-peer task: connects to a peer, forwards its queue over `RaftPeer.Stream` calls
//! (a snapshot ends its stream and waits for the receiver's acknowledgement), and reconnects
//! with backoff when the connection breaks.

use std::time::Instant;

use dlock_proto::v1::raft_peer_client::RaftPeerClient;
use dlock_proto::v1::{RaftEnvelope, StreamAck};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Response, Status};

use super::chunks::Chunk;
use super::outbound::{Feedback, Outbound};
use super::{
    CONNECT_TIMEOUT, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, PEER_ENVELOPE_BYTES_MAX,
    RECONNECT_BACKOFF_MAX, RECONNECT_BACKOFF_MIN,
};

/// Envelopes buffered between a peer's queue and its gRPC stream (HTTP/2 flow control
/// applies beyond this). With chunks of 4 MiB that is at most 64 MiB per peer.
const STREAM_BUFFER_MESSAGES: usize = 16;

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

/// Connects to `address` (resolved afresh) through `connector` (TLS or not), bounded by twice
/// [`CONNECT_TIMEOUT`].
async fn connect(address: &str, connector: &dlock_tls::Connector) -> Result<Channel, String> {
    let endpoint = endpoint(address).map_err(|e| format!("invalid peer address: {e}"))?;
    match tokio::time::timeout(
        2 * CONNECT_TIMEOUT,
        endpoint.connect_with_connector(connector.clone()),
    )
    .await
    {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(err)) => Err(format!("connect: {}", dlock_tls::error_chain(&err))),
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
pub(super) async fn run_link(
    self_id: u64,
    to: u64,
    address: String,
    connector: dlock_tls::Connector,
    mut queue: mpsc::Receiver<Outbound>,
    feedback: Feedback,
    chunk_bytes: usize,
) {
    let mut backoff = RECONNECT_BACKOFF_MIN;
    let mut failures: u32 = 0;
    loop {
        let failure = match connect(&address, &connector).await {
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
            let stamp = self.feedback.stamp(to);
            let chunks = Chunk::split(self.self_id, stamp, payload, self.chunk_bytes);
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
}

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
//! dead peer is noticed even on an idle stream), streams `RaftEnvelope { from, payload }`
//! (each stamped with this node's cluster id and incarnation and the peer's recorded
//! incarnation, which the receiver checks with [`Node::admit`] before anything else) and,
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

mod chunks;
mod inbound;
mod outbound;
mod peer_task;

use std::time::Duration;

use raft::eraftpb::MessageType;

// Named only by the intra-doc links above (the code lives in the submodules).
#[cfg(doc)]
use crate::{Node, Transport, WeakNode};

pub use inbound::RaftPeerService;
pub use outbound::GrpcTransport;

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

/// True if `payload` (an encoded `eraftpb::Message`) is a `MsgSnapshot`.
///
/// rust-protobuf writes fields in field-number order and omits proto3 default values, so a
/// message whose type is not `MsgHup` (0, local-only) starts with field 1, `msg_type`, as
/// tag byte `0x08` followed by the type as a one-byte varint. This avoids decoding every
/// message (and copying every snapshot) on the raft thread just to learn its type.
pub fn is_snapshot_message(payload: &[u8]) -> bool {
    matches!(payload, [0x08, kind, ..] if u32::from(*kind) == MessageType::MsgSnapshot as u32)
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

//! The dlock.v1 wire protocol, generated from `proto/dlock/v1/*.proto`.
//!
//! * [`v1::dlock_client`] / [`v1::dlock_server`]: the client API (`service Dlock`).
//! * [`v1::raft_peer_client`] / [`v1::raft_peer_server`]: the Raft peer transport.
//!
//! The `.proto` files are the documented contract; this crate only compiles them.

/// Generated types of package `dlock.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("dlock.v1");
}

/// gRPC metadata key carrying the client address of the leader when a follower answers
/// `UNAVAILABLE`.
pub const LEADER_HINT_METADATA: &str = "dlock-leader-hint";

//! The dlock.v1 wire protocol, generated from `proto/dlock/v1/*.proto`.
//!
//! * [`v1::dlock_client`] / [`v1::dlock_server`]: the client API (`service Dlock`).
//! * [`v1::admin_client`] / [`v1::admin_server`]: membership and status (`service Admin`).
//! * [`v1::raft_peer_client`] / [`v1::raft_peer_server`]: the Raft peer transport.
//! * [`v1::peer_info_client`] / [`v1::peer_info_server`]: what nodes tell each other about
//!   themselves (client address, Raft state).
//!
//! The `.proto` files are the documented contract; this crate compiles them, and holds the
//! Win32 vocabulary those messages carry, defined once for every crate: [`vocab`].

#![forbid(unsafe_code)]

pub mod vocab;

/// Generated types of package `dlock.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("dlock.v1");
}

/// gRPC metadata key carrying the client address of the leader when a follower answers
/// `UNAVAILABLE`.
pub const LEADER_HINT_METADATA: &str = "dlock-leader-hint";

/// Response metadata on a `RESOURCE_EXHAUSTED` that waiting will not cure (a principal at its
/// own session quota: only its own close frees one): the client reports 1450 at once instead
/// of backing off and trying again until its deadline.
pub const FINAL_METADATA: &str = "dlock-final";

/// gRPC metadata key set (to `1`) on every `UNAVAILABLE` a node answers because it is not the
/// leader: the request was refused before the log, so it was not applied. Any other
/// `UNAVAILABLE` (or a broken connection, or a timeout) leaves the outcome unknown.
pub const NOT_LEADER_METADATA: &str = "dlock-not-leader";

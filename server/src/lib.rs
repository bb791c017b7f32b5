//! # dlock-server: the dlockd node
//!
//! dlockd serves the Win32 named-object namespace (named mutexes, events and semaphores with
//! create-or-open semantics) to clients on many hosts, replicated with Raft.
//!
//! # Layout
//!
//! * [`namespace`]: the deterministic state machine: objects, handles, sessions, waits. No I/O,
//!   no clock; time enters only as data in commands.
//! * [`replica`]: the glue between `dlock-cluster` (raft-rs over sled) and the namespace: the
//!   `StateMachine` implementation and the registry through which blocked waits learn their
//!   outcome.
//! * [`lease`]: session leases, the whole protocol: the leader's in-memory timers (session
//!   leases, wait timeouts), leadership confirmation for keepalives, and the timer task that
//!   checkpoints, expires sessions and times out waits.
//! * [`grpc`]: the `dlock.v1.Dlock` service and the one table mapping errors to gRPC statuses.
//! * [`daemon`]: one running node ([`Server`], [`run`]).
//! * [`config`]: the typed configuration with its defaults and validation.
//!
//! # Life of a request
//!
//! A handler validates the request (bad input gets its Win32 error and never reaches the log),
//! encodes a [`namespace::Command`] stamped with the session, its sequence number and the
//! node's wall-clock time, and proposes it. The Raft thread batches every proposal waiting at
//! that moment into one Ready, writes them with one sled flush, and applies them in log order;
//! the namespace's reply travels back to the handler. A wait that cannot be granted at once is
//! queued in the namespace and answered "pending" at once; the client's `AwaitWait` call blocks
//! on the wait registry until a later command (a release, a set, the leader's `TimeoutWait` when
//! the timeout passes, the client's `CancelWait`, an `ExpireSession`) resolves it. Retries with
//! the same `(session, seq)` return the recorded reply.

#![forbid(unsafe_code)]

pub mod acl;
pub mod config;
pub mod daemon;
pub mod error;
pub mod grpc;
pub mod health;
pub mod lease;
pub mod metrics;
pub mod namespace;
pub mod replica;

pub use config::Config;
pub use daemon::{Server, run};
pub use error::Error;

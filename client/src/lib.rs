//! # dlock: Win32 named mutexes, events and semaphores, served by a cluster
//!
//! dlock serves the Win32 named-object namespace from a Raft cluster (`dlockd`), so processes
//! on many hosts synchronise through the calls they would use on one Windows machine. This
//! crate is the client. It has two layers:
//!
//! * **[`win32`]**: a blocking facade with the Win32 names and signatures (`CreateMutexA`,
//!   `WaitForSingleObject`, `GetLastError`, ...), process-wide `HANDLE`s, a per-thread last
//!   error and per-OS-thread mutex ownership. Configured by environment variables; see its
//!   module docs.
//! * **The async API**: [`Client`] (connection to the cluster, retries, leader hints),
//!   [`Session`] (the identity that owns handles and mutexes, with its lease and the low-level
//!   calls) and typed handles [`Mutex`], [`Event`], [`Semaphore`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), dlock::Error> {
//! use std::time::Duration;
//! use dlock::{Client, Timeout, WaitOutcome};
//!
//! let client = Client::connect(["node-1:7700", "node-2:7700", "node-3:7700"]).await?;
//! let session = client.open_session(Duration::from_secs(10)).await?;
//! let mutex = session.create_mutex(Some("Global\\billing"), false).await?;
//! if let WaitOutcome::Signaled { fencing_token, .. } = mutex.lock(Timeout::Infinite).await? {
//!     // Hand `fencing_token` to the storage you write to; it grows with every new owner.
//!     let _ = fencing_token;
//!     mutex.release().await?;
//! }
//! # Ok(()) }
//! ```
//!
//! # Failure model
//!
//! * A call is retried across nodes, with the same request header (the server deduplicates
//!   by `(session, seq)`), for up to [`ClientConfig::request_timeout`]; then it fails with
//!   [`Error::Unavailable`]. A request that failed that way may or may not have been applied.
//! * A session stays alive while its keepalive task reaches the cluster. The client tracks the
//!   lease conservatively and reports [`SessionState::Jeopardy`] before the cluster could
//!   expire it, and [`SessionState::Expired`] when it may have. When a session ends, the
//!   mutexes its owners held become *abandoned*: the next owner's wait returns
//!   [`WaitOutcome::Abandoned`].
//! * Waits are resolved by the server (timeouts included) and survive failover: a broken wait
//!   call is re-sent and re-attaches to the same wait.
//!
//! # Host-local objects
//!
//! Names starting with `Local\` are served by a shared-memory backend on this host, with no
//! server: see [`win32`]'s module docs. In the async API, [`LocalNamespace`] serves them without
//! any cluster, and a [`Session`] given a `Local\` name serves it from there too.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod admin;
mod client;
mod config;
mod error;
/// The `Local\` engine (crate `dlock-local`), which serves `Local\` names from shared memory.
use dlock_local as local;
pub use local::{LocalObjectInfo, LocalProcess, LocalSnapshot};
mod route;
mod session;
mod typed;
mod types;
pub mod win32;

pub use client::Client;
pub use config::{
    ATTEMPT_TIMEOUT_DEFAULT, CONNECT_TIMEOUT_DEFAULT, ClientConfig, DEFAULT_ENDPOINT, ENV_CACERT,
    ENV_CERT, ENV_KEY, ENV_TOKEN, REQUEST_TIMEOUT_DEFAULT, tls_from_env, tls_from_files,
    token_from_env,
};
pub use dlock_proto::vocab::Win32Error;
pub use dlock_tls::ClientTls;
pub use error::Error;
pub use session::{Session, THREAD_EXITS_QUEUED_MAX, TYPED_OWNER_THREAD_ID};
pub use typed::{Event, LocalNamespace, Mutex, Semaphore, Waitable};
pub use types::{
    CreateParams, Created, ObjectKind, ObjectState, SessionState, Timeout, WaitOutcome,
};

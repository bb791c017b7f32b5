//! The server crate's one error type, named by what the caller should do next.

/// Everything that can go wrong in dlockd outside the state machine (whose outcomes are values).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration breaks a rule; fix it and restart.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// This node is not the leader; retry on the leader (the hint, if known, is its node id).
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader's node id, if this node knows it.
        leader_hint: Option<u64>,
    },
    /// The request was lost in a leader change or dropped by Raft; retry with the same header.
    #[error("request dropped by raft; retry")]
    Retry,
    /// A bounded queue is full; back off and retry.
    #[error("server overloaded: {0}")]
    Overloaded(String),
    /// The request is malformed in a way no Win32 call produces.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The session does not exist (expired or closed).
    #[error("session {0} is not known (expired or closed)")]
    SessionUnknown(u64),
    /// The request named a session without its secret; nothing changed.
    #[error(
        "the request does not carry session {0}'s secret (OpenSessionReply.session_secret); \
         nothing changed"
    )]
    SecretMismatch(u64),
    /// Another membership change is still being applied; retry after it.
    #[error("another membership change is in progress; retry when it has been applied")]
    ChangePending,
    /// The node is shutting down.
    #[error("node is shutting down")]
    Stopped,
    /// Storage or another internal fault; the node may be failing.
    #[error("internal error: {0}")]
    Internal(String),
    /// A TLS certificate, key or CA file is unusable.
    #[error("TLS: {0}")]
    Tls(#[from] dlock_tls::Error),
    /// I/O while starting (binding the port, creating the data directory).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl From<dlock_cluster::Error> for Error {
    fn from(err: dlock_cluster::Error) -> Self {
        use dlock_cluster::Error as C;
        match err {
            C::NotLeader { leader_hint } => Error::NotLeader { leader_hint },
            C::Overloaded => Error::Overloaded("raft proposal queue is full".into()),
            C::Dropped => Error::Retry,
            C::Stopped => Error::Stopped,
            C::ConfChangePending => Error::ChangePending,
            C::InvalidInput(msg) => Error::InvalidArgument(msg),
            other => Error::Internal(other.to_string()),
        }
    }
}

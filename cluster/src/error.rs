//! The one error type of the crate, named by what the caller should do next.

/// Why a replication request failed.
///
/// [`Error::is_retryable`] tells a caller whether trying again (possibly elsewhere, after
/// following `leader_hint`) can succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// This node is not the leader; redirect to `leader_hint` if known.
    #[error("cluster: not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader_hint: Option<u64>,
    },
    /// A bounded queue is full; back off and retry.
    #[error("cluster: overloaded, queue full")]
    Overloaded,
    /// Raft dropped the request, or leadership changed before it applied or was confirmed.
    /// A proposal's outcome is unknown: it may still be applied. Retry idempotently.
    #[error("cluster: request dropped (leadership changed or no quorum); outcome unknown")]
    Dropped,
    /// A membership change is already in progress (proposed but not yet applied, or the
    /// configuration is joint and leaving it is pending); retry once it has applied.
    #[error("cluster: a membership change is already in progress; retry when it has applied")]
    ConfChangePending,
    /// The node has been shut down.
    #[error("cluster: node stopped")]
    Stopped,
    /// The storage failed; the node has stopped (fail closed) and must be restarted.
    #[error("cluster: storage failure: {0}")]
    Storage(String),
    /// The state machine rejected a snapshot; the node has stopped.
    #[error("cluster: state machine failure: {0}")]
    StateMachine(String),
    /// raft-rs rejected an operation in a way that indicates misuse or corruption.
    #[error("cluster: raft error: {0}")]
    Raft(String),
    /// The configuration is invalid.
    #[error("cluster: invalid config: {0}")]
    Config(String),
    /// The request itself is invalid (empty or oversized command, malformed peer message).
    #[error("cluster: invalid input: {0}")]
    InvalidInput(String),
}

impl Error {
    /// True if the same request may succeed when retried (after a back-off, or on the leader).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. } | Error::Overloaded | Error::Dropped | Error::ConfChangePending
        )
    }

    /// True if the node has stopped and will not serve again until restarted.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Error::Stopped | Error::Storage(_) | Error::StateMachine(_) | Error::Raft(_)
        )
    }
}

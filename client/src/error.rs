//! The one error type of the crate.
//!
//! Variants are named by what the caller should do next (docs/architecture.md, "Errors and outcomes"): fix the request
//! ([`Error::Win32`], [`Error::InvalidArgument`]), open a new session ([`Error::SessionLost`]),
//! or wait and try again later ([`Error::Unavailable`], [`Error::Overloaded`]). Expected
//! outcomes such as a wait timing out or an abandoned mutex are *values*
//! ([`crate::WaitOutcome`]), never errors.

use dlock_proto::vocab::Win32Error;

/// Everything that can go wrong in a dlock call.
///
/// ```
/// use dlock::{Error, Win32Error};
/// assert_eq!(Error::Win32(Win32Error::FILE_NOT_FOUND).code(), 2);
/// assert_eq!(Error::Unavailable.code(), 1231);
/// assert!(Error::Unavailable.to_string().contains("unavailable"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The call failed the way the Win32 call would: the value is the Win32 last-error code
    /// (for example 2 `ERROR_FILE_NOT_FOUND`, 6 `ERROR_INVALID_HANDLE`, 288 `ERROR_NOT_OWNER`).
    /// The call changed nothing.
    #[error("win32 error {0}")]
    Win32(Win32Error),
    /// No node of the cluster answered within the request timeout
    /// ([`crate::ClientConfig::request_timeout`]). The request may or may not have been applied
    /// (outcome unknown). From a wait it means "not acquired": the wait is cancelled in the
    /// background and a grant that raced the cancellation is given back.
    #[error("dlock cluster unavailable (no node answered within the request timeout)")]
    Unavailable,
    /// The session does not exist any more (it expired, was closed, or the client's own lease
    /// clock says it may have expired). Its handles are gone and the mutexes its owners held are
    /// abandoned; open a new session.
    #[error("dlock session lost (expired or closed)")]
    SessionLost,
    /// The cluster kept answering `RESOURCE_EXHAUSTED` (a queue or a per-session limit is full)
    /// until the request timeout passed, or answered it once marked final (`dlock-final`: the
    /// caller's principal is at its session quota).
    #[error("dlock cluster overloaded (resource exhausted until the request timeout)")]
    Overloaded,
    /// The request is malformed in a way no Win32 call can produce, or the client configuration
    /// is invalid (for example an endpoint that is not `host:port`). Fix the caller.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The server answered with a gRPC status the protocol does not use for this call (for
    /// example `UNIMPLEMENTED` from a node of another version), or `PERMISSION_DENIED` (a
    /// request the server did not take this session's secret for, or a proxy's refusal).
    #[error("transport error: {0}")]
    Transport(String),
    /// No node could be reached because TLS failed (an untrusted or misnamed node
    /// certificate, a missing or refused client certificate, a node that does not speak TLS),
    /// and none answered otherwise within the request timeout (a node that requires TLS
    /// answering a plaintext request with `UNAUTHENTICATED` counts too). The text says what to
    /// change. The request was not applied.
    #[error("TLS: {0}")]
    Tls(String),
    /// A reply violated the wire contract (for example an unknown wait result). Indicates a bug
    /// or a version mismatch between client and server.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

impl Error {
    /// The Win32 last-error code for this error: the code itself for [`Error::Win32`], otherwise
    /// the code the [`crate::win32`] facade reports for it:
    ///
    /// | variant | code |
    /// |---|---|
    /// | `Unavailable`, `Tls` | 1231 `ERROR_NETWORK_UNREACHABLE` |
    /// | `SessionLost` | 1236 `ERROR_CONNECTION_ABORTED` |
    /// | `Overloaded` | 1450 `ERROR_NO_SYSTEM_RESOURCES` |
    /// | `InvalidArgument` | 87 `ERROR_INVALID_PARAMETER` |
    /// | `Transport`, `Protocol` | 1359 `ERROR_INTERNAL_ERROR` |
    ///
    /// ```
    /// assert_eq!(dlock::Error::SessionLost.code(), 1236);
    /// ```
    pub fn code(&self) -> u32 {
        self.win32_error().code()
    }

    /// The Win32 error the facade reports for this error (see [`Error::code`]).
    pub fn win32_error(&self) -> Win32Error {
        match self {
            Error::Win32(e) => *e,
            Error::Unavailable | Error::Tls(_) => Win32Error::NETWORK_UNREACHABLE,
            Error::SessionLost => Win32Error::CONNECTION_ABORTED,
            Error::Overloaded => Win32Error::NO_SYSTEM_RESOURCES,
            Error::InvalidArgument(_) => Win32Error::INVALID_PARAMETER,
            Error::Transport(_) | Error::Protocol(_) => Win32Error::INTERNAL_ERROR,
        }
    }
}

//! The one table that maps server errors to gRPC status codes (see the top of `dlock.proto`).
//! Win32 outcomes never come through here: they travel as data in replies.

use tonic::{Code, Status};

use crate::error::Error;

/// Maps an [`Error`] to the status the client API documents.
pub fn to_status(err: Error) -> Status {
    let code = match &err {
        Error::NotLeader { .. } | Error::Retry | Error::Stopped => Code::Unavailable,
        Error::Overloaded(_) => Code::ResourceExhausted,
        Error::InvalidArgument(_) | Error::Config(_) => Code::InvalidArgument,
        Error::SessionUnknown(_) => Code::NotFound,
        Error::SecretMismatch(_) => Code::PermissionDenied,
        Error::ChangePending => Code::FailedPrecondition,
        Error::Internal(_) | Error::Io { .. } | Error::Tls(_) => Code::Internal,
    };
    let not_leader = matches!(err, Error::NotLeader { .. });
    let mut status = Status::new(code, err.to_string());
    if not_leader {
        status.metadata_mut().insert(
            dlock_proto::NOT_LEADER_METADATA,
            tonic::metadata::MetadataValue::from_static("1"),
        );
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_documented_code() {
        let cases = [
            (
                Error::NotLeader {
                    leader_hint: Some(2),
                },
                Code::Unavailable,
            ),
            (Error::Retry, Code::Unavailable),
            (Error::Stopped, Code::Unavailable),
            (Error::Overloaded("queue".into()), Code::ResourceExhausted),
            (Error::InvalidArgument("x".into()), Code::InvalidArgument),
            (Error::SessionUnknown(9), Code::NotFound),
            (Error::ChangePending, Code::FailedPrecondition),
            (Error::Internal("disk".into()), Code::Internal),
        ];
        for (err, code) in cases {
            assert_eq!(to_status(err).code(), code);
        }
    }
}

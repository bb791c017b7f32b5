//! State-independent validation of client requests. The gRPC layer runs it before proposing (so
//! bad input never reaches the log) and `apply` runs it again (so a replica never trusts the
//! proposer). It checks everything that does not depend on the namespace's state; what does
//! (handles, names that exist, rights) is checked inside `apply`.

use std::collections::BTreeSet;

use super::types::{CreateParams, Reply, Request, WaitOutcome};
use dlock_proto::vocab::names::{create_name_key, open_name_key};
use dlock_proto::vocab::{MAXIMUM_WAIT_OBJECTS, Win32Error};

/// Checks a request's own fields:
///
/// * `Create`: semaphore counts first (`max <= 0`, `initial < 0`, `initial > max` → 87, even
///   when the name exists, as ntdll checks them before the lookup), then the name
///   ([`create_name_key`]);
/// * `Open`: the name ([`open_name_key`]: `None` → 87, `""` → 6, malformed → 206/123/161/87/3);
/// * `ReleaseSemaphore`: `count <= 0` → 87 (checked before the handle, as Windows does);
/// * `Wait`: 1..=64 handles, and no handle id twice in a wait-all → 87. (The same *object*
///   through two different handles is only detectable in `apply`, which fails it with 87 too.)
///
/// # Errors
///
/// The Win32 error code. Turn it into the reply with [`failure_reply`].
pub fn validate_request(request: &Request) -> Result<(), Win32Error> {
    match request {
        Request::Create { name, params, .. } => {
            if let CreateParams::Semaphore { initial, max } = params
                && (*max <= 0 || *initial < 0 || initial > max)
            {
                return Err(Win32Error::INVALID_PARAMETER);
            }
            create_name_key(name.as_deref()).map(|_| ())
        }
        Request::Open { name, .. } => open_name_key(name.as_deref()).map(|_| ()),
        Request::Limited { request, .. } => match **request {
            Request::Create { .. } | Request::Open { .. } => validate_request(request),
            _ => Err(Win32Error::INVALID_PARAMETER),
        },
        Request::ReleaseSemaphore { count, .. } if *count <= 0 => {
            Err(Win32Error::INVALID_PARAMETER)
        }
        Request::Wait {
            handles, wait_all, ..
        } => {
            if handles.is_empty() || handles.len() > MAXIMUM_WAIT_OBJECTS as usize {
                return Err(Win32Error::INVALID_PARAMETER);
            }
            if *wait_all {
                let mut seen = BTreeSet::new();
                if !handles.iter().all(|handle| seen.insert(*handle)) {
                    return Err(Win32Error::INVALID_PARAMETER);
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The reply a request gets when it fails with `code` before doing anything: `Wait(Failed(code))`
/// for the wait requests (`Wait`, `SignalAndWait`, `CancelWait`), `Error(code)` for everything
/// else.
pub fn failure_reply(request: &Request, code: Win32Error) -> Reply {
    match request {
        Request::Wait { .. } | Request::SignalAndWait { .. } | Request::CancelWait { .. } => {
            Reply::Wait(WaitOutcome::Failed(code))
        }
        _ => Reply::Error(code),
    }
}

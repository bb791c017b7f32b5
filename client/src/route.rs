//! The client's one routing rule: which backend serves a name. `Local\` names go to the host's
//! `Local\` engine (crate `dlock-local`), every other name to the cluster. The typed API
//! ([`crate::Session`]'s constructors, [`crate::LocalNamespace`]) and the blocking facade
//! ([`crate::win32`]) all ask here, so the rule lives in one place.
//!
//! Unnamed objects are private to one process, so no other host needs them: the facade
//! serves them from the local engine (no cluster needed, `win32::create`), while a typed
//! [`crate::Session`] keeps them on the cluster, where its async waits can combine them with
//! named cluster objects (the async API does not mix backends in one wait).

use dlock_proto::vocab::names::local_key;
use dlock_proto::vocab::{MAX_PATH, Win32Error};

/// Where a name is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// By this host's `Local\` engine, under this key (what follows `Local\`).
    Local(&'a str),
    /// By the cluster (which checks the name itself).
    Cluster,
}

/// Routes `name` (`None`: an unnamed object, which the cluster serves).
///
/// # Errors
///
/// [`Win32Error::FILENAME_EXCED_RANGE`] for a `Local\` name over [`MAX_PATH`] UTF-16 units:
/// the cluster checks its own names, the `Local\` engine has no server to do it.
pub(crate) fn route(name: Option<&str>) -> Result<Route<'_>, Win32Error> {
    let Some((name, key)) = name.and_then(|n| local_key(n).map(|key| (n, key))) else {
        return Ok(Route::Cluster);
    };
    if name.encode_utf16().count() > MAX_PATH as usize {
        return Err(Win32Error::FILENAME_EXCED_RANGE);
    }
    Ok(Route::Local(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_names_go_local_and_everything_else_to_the_cluster() {
        assert_eq!(route(Some("Local\\jobs")), Ok(Route::Local("jobs")));
        assert_eq!(route(Some("Local\\")), Ok(Route::Local("")));
        assert_eq!(route(Some("jobs")), Ok(Route::Cluster));
        assert_eq!(route(Some("Global\\jobs")), Ok(Route::Cluster));
        assert_eq!(
            route(Some("local\\jobs")),
            Ok(Route::Cluster),
            "case-sensitive"
        );
        assert_eq!(route(None), Ok(Route::Cluster));
        let long = format!("Local\\{}", "x".repeat(255));
        assert_eq!(route(Some(&long)), Err(Win32Error::FILENAME_EXCED_RANGE));
        assert!(matches!(route(Some(&long[..260])), Ok(Route::Local(_))));
    }
}

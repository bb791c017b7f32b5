//! The `dlock::win32` conformance suite against a real dlockd (one shared server per test
//! binary, started on a free port), plus the behaviours only the cluster has: unnamed objects
//! and the `Global\` prefix. The same suite runs against `Local\` names in `win32_local.rs`.

mod backend {
    /// Cluster names need no prefix.
    pub const PREFIX: &str = "";
    /// `Global\\` followed by an empty component.
    pub const EMPTY_COMPONENT: &str = "Global\\\\x";

    /// Starts (once) the shared dlockd and points the facade at it; also sets the local
    /// namespace directory, so that every environment change of this binary happens before
    /// any test gets past its setup.
    pub fn setup() {
        dlock_tests::shared_dlockd();
        dlock_tests::local_namespace();
    }

    /// A unique cluster name.
    pub fn name(prefix: &str) -> String {
        dlock_tests::unique(prefix)
    }

    /// Cluster objects may be unnamed.
    pub fn anon() -> Option<String> {
        None
    }
}

include!("conformance/suite.rs");

// ---- cluster-only behaviours ------------------------------------------------------------------

use dlock_tests::unique;

fn setup() {
    backend::setup();
}

#[test]
fn s3_4_a_leading_backslash_is_a_bad_pathname() {
    setup();
    assert_eq!(CreateMutexA(None, FALSE, Some("\\leading")), 0);
    assert_eq!(GetLastError(), ERROR_BAD_PATHNAME);
}

#[test]
fn s3_4_local_and_cluster_names_are_different_objects_and_do_not_mix_in_waits() {
    setup();
    let name = unique("split");
    let cluster = CreateEventA(None, TRUE, TRUE, Some(&name));
    let local = CreateEventA(None, TRUE, FALSE, Some(&format!("Local\\{name}")));
    assert_ne!(local, 0, "error {}", GetLastError());
    assert_eq!(GetLastError(), 0, "a new object: Local\\X is not X");
    assert_eq!(WaitForSingleObject(cluster, 0), WAIT_OBJECT_0);
    assert_eq!(WaitForSingleObject(local, 0), WAIT_TIMEOUT);
    assert_eq!(
        WaitForMultipleObjects(&[cluster, local], FALSE, 0),
        WAIT_FAILED
    );
    assert_eq!(GetLastError(), ERROR_INVALID_PARAMETER);
    assert_eq!(SignalObjectAndWait(local, cluster, 0, FALSE), WAIT_FAILED);
    assert_eq!(GetLastError(), ERROR_INVALID_PARAMETER);
    assert_eq!(CloseHandle(local), TRUE);
    assert_eq!(CloseHandle(cluster), TRUE);
}

#[test]
fn s3_names_are_case_sensitive_and_global_prefix_is_the_same_object() {
    setup();
    let name = unique("CaseName");
    let a = CreateMutexA(None, FALSE, Some(&name));
    assert_eq!(
        OpenMutexA(MUTEX_ALL_ACCESS, FALSE, Some(&name.to_lowercase())),
        0
    );
    assert_eq!(GetLastError(), ERROR_FILE_NOT_FOUND);
    let g = CreateMutexA(None, FALSE, Some(&format!("Global\\{name}")));
    assert_eq!(GetLastError(), ERROR_ALREADY_EXISTS);
    CloseHandle(g);
    CloseHandle(a);
}

#[test]
fn s3_empty_and_null_names_create_unnamed_objects() {
    setup();
    let a = CreateEventA(None, TRUE, FALSE, Some(""));
    assert_ne!(a, 0);
    assert_eq!(GetLastError(), 0);
    let b = CreateEventA(None, TRUE, FALSE, Some(""));
    assert_eq!(GetLastError(), 0, "two empty names are two objects");
    SetEvent(a);
    assert_eq!(WaitForSingleObject(b, 0), WAIT_TIMEOUT);
    let c = CreateMutexA(None, FALSE, None);
    assert_ne!(c, 0);
    CloseHandle(a);
    CloseHandle(b);
    CloseHandle(c);
}

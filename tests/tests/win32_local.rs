//! The `dlock::win32` conformance suite against the host-local backend: the same test code as
//! `win32.rs`, on `Local\` names, in a private namespace directory, with no dlockd running.

mod backend {
    /// Local names start with `Local\\`.
    pub const PREFIX: &str = "Local\\";
    /// `Local\\` followed by an empty component.
    pub const EMPTY_COMPONENT: &str = "Local\\\\x";

    /// Points the local backend at this test binary's private namespace directory.
    pub fn setup() {
        dlock_tests::local_namespace();
    }

    /// A unique `Local\` name.
    pub fn name(prefix: &str) -> String {
        format!("Local\\{}", dlock_tests::unique(prefix))
    }

    /// Unnamed objects belong to the cluster; the local suite names them.
    pub fn anon() -> Option<String> {
        Some(name("anon"))
    }
}

include!("conformance/suite.rs");

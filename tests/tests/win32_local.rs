//! The `dlock::win32` conformance suite against the host-local backend: the same test code as
//! `win32.rs`, on `Local\` names and unnamed objects, in a private namespace directory, with
//! no dlockd reachable (the facade points at a port nobody listens on, with a short request
//! timeout: a call that went to a cluster would fail with 1231).

mod backend {
    /// Local names start with `Local\\`.
    pub const PREFIX: &str = "Local\\";
    /// `Local\\` followed by an empty component.
    pub const EMPTY_COMPONENT: &str = "Local\\\\x";

    /// Points the local backend at this test binary's private namespace directory, and the
    /// facade at no cluster.
    pub fn setup() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            dlock_tests::configure_facade(
                "127.0.0.1:1",
                None,
                Some(std::time::Duration::from_millis(500)),
            );
        });
        dlock_tests::local_namespace();
    }

    /// A unique `Local\` name.
    pub fn name(prefix: &str) -> String {
        format!("Local\\{}", dlock_tests::unique(prefix))
    }

    /// Unnamed objects: private to the process, served by the local engine.
    pub fn anon() -> Option<String> {
        None
    }
}

include!("conformance/suite.rs");

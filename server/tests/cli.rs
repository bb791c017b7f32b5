//! The `dlockd` binary's command line: a bad configuration is refused with a message that names
//! the field, before anything is created; `--help` documents every flag.
//!
//! (Being an integration test of this package also makes cargo build `target/<profile>/dlockd`,
//! which the end-to-end tests in `dlock-tests` start as a real process.)

use std::process::Command;

fn dlockd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dlockd"))
}

#[test]
fn help_lists_every_flag() {
    let out = dlockd().arg("--help").output().expect("run dlockd --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--node-id",
        "--data-dir",
        "--client-addr",
        "--peer-addr",
        "--initial-cluster",
        "--config",
        "--session-ttl-ms-default",
        "--session-ttl-ms-min",
        "--session-ttl-ms-max",
        "--checkpoint-interval-ms",
        "--tick-ms",
        "--snapshot-interval-entries",
        "--request-bytes-max",
    ] {
        assert!(
            help.contains(flag),
            "--help does not mention {flag}:\n{help}"
        );
    }
}

#[test]
fn an_inverted_ttl_range_is_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = dlockd()
        .args([
            "--session-ttl-ms-min",
            "5000",
            "--session-ttl-ms-max",
            "1000",
        ])
        .arg("--data-dir")
        .arg(&data)
        .args(["--client-addr", "127.0.0.1:0"])
        .output()
        .expect("run dlockd");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("session-ttl-ms-min (5000)"), "{stderr}");
    assert!(
        !data.exists(),
        "nothing may be created for a refused configuration"
    );
}

#[test]
fn a_malformed_address_is_refused_with_the_flag_name() {
    let out = dlockd()
        .args(["--client-addr", "not-an-address"])
        .output()
        .expect("run dlockd");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--client-addr"), "{stderr}");
}

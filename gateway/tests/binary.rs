//! The `postern-gateway` binary: a config error names the field and the file, and the process
//! exits with a failure. (Its graceful shutdown on SIGTERM, which needs a relay and a lease, is
//! tested end to end in `tests/tests/gateway_limits.rs`, on the binary this test makes cargo
//! build.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_postern-gateway");

#[test]
fn invalid_config_is_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        "relays = [\"ws://127.0.0.1:1\"]\nidentity_key_file = \"k\"\ngrant_file = \"g\"\n\n\
         [listen]\nhttp = \"127.0.0.1:0\"\n\n[limits]\nmax_connections = 0\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.max_connections"), "{err}");
    assert!(err.contains("gateway.toml"), "{err}");
}

#[test]
fn a_missing_config_file_is_named() {
    let out = Command::new(BIN)
        .args(["--config", "/nonexistent/postern-gateway.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/postern-gateway.toml"), "{err}");
}

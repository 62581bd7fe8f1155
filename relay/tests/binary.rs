//! The `postern-relay` binary: config errors name the field; `--dev` prepares a data directory
//! and serves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_postern-relay");

#[test]
fn invalid_config_is_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        "[control_plane]\npublic_keys = [\"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\"]\n\n[limits]\nmax_sessions = 0\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.max_sessions"), "{err}");
}

#[test]
fn dev_mode_creates_keys_and_prints_the_expose_command() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(BIN)
        .args(["--dev", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .take(4)
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    let text = lines.join("\n");
    assert!(
        text.contains("postern -- expose http://127.0.0.1:3000"),
        "{text}"
    );
    assert!(text.contains(&format!("ws://127.0.0.1:{port}")), "{text}");
    for file in ["control-plane.key", "agent.key", "agent.grants"] {
        assert!(dir.path().join(file).exists(), "{file}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("agent.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

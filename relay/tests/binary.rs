//! The `postern-relay` binary: config errors name the field; `check-config` validates offline;
//! a running relay reloads its file on change and on SIGHUP; `--dev` prepares a data directory
//! and serves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_postern-relay");
const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn check_config_prints_ok_or_the_located_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!("[control_plane]\npublic_keys = [\"{KEY}\"]\n"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ok: {}", good.display())
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!("[control_plane]\npublic_keys = [\"{KEY}\"]\n\n[limits]\nmax_sessions = 0\n"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:5: invalid `limits.max_sessions`",
            bad.display()
        )),
        "{err}"
    );

    // TLS files are loaded, not just named.
    let tls = dir.path().join("tls.toml");
    std::fs::write(
        &tls,
        format!("[listen]\ntls = {{ cert = \"missing.pem\", key = \"missing.key\" }}\n[control_plane]\npublic_keys = [\"{KEY}\"]\n"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&tls)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.pem"));
}

fn scrape(addr: SocketAddr) -> Option<String> {
    let mut tcp = TcpStream::connect(addr).ok()?;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    tcp.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Waits until the metrics text contains `line`.
fn wait_for(addr: SocketAddr, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = None;
    while Instant::now() < deadline {
        last = scrape(addr);
        if last.as_deref().is_some_and(|t| t.contains(line)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{line} never appeared; last scrape:\n{last:?}");
}

#[test]
fn a_running_relay_reloads_on_change_and_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let base = format!(
        "[listen]\naddr = \"127.0.0.1:{}\"\n[metrics]\nlisten = \"{metrics}\"\n\
         [control_plane]\npublic_keys = [\"{KEY}\"]\n",
        free_port()
    );
    std::fs::write(&config, &base).unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ok = |n: u32| format!("postern_relay_config_reloads_total{{result=\"ok\"}} {n}");
    let failed = |n: u32| format!("postern_relay_config_reloads_total{{result=\"failed\"}} {n}");
    wait_for(metrics, &ok(0));

    // An editor's save: write elsewhere, rename over.
    let tmp = dir.path().join(".relay.toml.tmp");
    std::fs::write(&tmp, format!("{base}[limits]\nmax_sessions = 5\n")).unwrap();
    std::fs::rename(&tmp, &config).unwrap();
    wait_for(metrics, &ok(1));

    std::fs::write(&config, format!("{base}[limits]\nmax_sessions = 0\n")).unwrap();
    wait_for(metrics, &failed(1));

    std::fs::write(&config, &base).unwrap();
    wait_for(metrics, &ok(2));
    let kill = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    wait_for(metrics, &ok(3));
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP must not stop the relay"
    );
    let _ = child.kill();
    let _ = child.wait();
}

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

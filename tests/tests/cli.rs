//! The shipped binaries, end to end: `postern keygen`, `postern grant mint`, `postern-relay`
//! and `postern expose` as real processes; a request dialed through them; then the relay
//! process is killed and restarted and `expose` comes back on its own.
//!
//! `cargo test --workspace` builds the binaries before any test runs; they are found next to
//! this test's executable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use postern_sdk::protocol::permission;
use postern_sdk::{Dialer, DialerConfig, Identity, RelayUrl};
use postern_tests::*;

/// Kills the child when dropped, so a failing test leaves no process behind.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Self { child, lines }
    }

    /// Waits (bounded) for an output line containing `needle`.
    fn wait_for(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("no line with {needle:?}; output was:\n{}", seen.join("\n"));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_relay(config: &Path) -> Proc {
    let relay = Proc::spawn(
        Command::new(built_binary("postern-relay"))
            .arg("--config")
            .arg(config),
    );
    relay.wait_for("relay listening");
    relay
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binaries_expose_a_service_and_survive_a_relay_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cp_key = dir.path().join("control-plane.key");
    let agent_key = dir.path().join("agent.key");
    let grants = dir.path().join("agent.grants");
    let postern = built_binary("postern");

    let cp_out = run(Command::new(&postern)
        .args(["keygen", "--out"])
        .arg(&cp_key));
    let cp_public = cp_out
        .lines()
        .find_map(|l| l.strip_prefix("identity (ed25519): "))
        .unwrap()
        .trim()
        .to_owned();
    run(Command::new(&postern)
        .args(["keygen", "--out"])
        .arg(&agent_key));
    run(Command::new(&postern)
        .args(["grant", "mint", "--lease", "web", "--ttl", "1h", "--signer"])
        .arg(&cp_key)
        .arg("--identity-file")
        .arg(&agent_key)
        .arg("--out")
        .arg(&grants));

    let port = free_port();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\naddr = \"127.0.0.1:{port}\"\n\n[control_plane]\npublic_keys = [\"{cp_public}\"]\n"
        ),
    )
    .unwrap();
    let relay = start_relay(&config);

    let origin = spawn_origin().await;
    let expose = Proc::spawn(
        Command::new(&postern)
            .arg("expose")
            .arg(format!("http://{origin}"))
            .args(["--lease", "web", "--relay"])
            .arg(format!("ws://127.0.0.1:{port}"))
            .arg("--grant")
            .arg(&grants)
            .arg("--key")
            .arg(&agent_key),
    );
    let status = expose.wait_for("online");
    assert!(status.contains("web"), "{status}");

    // Dial from this process, as the gateway will: a DIAL grant from the same control plane,
    // and the owner's identity key pinned from the key file (the control plane's record).
    let control_plane = Identity::load(&cp_key).unwrap();
    let owner = Identity::load(&agent_key).unwrap();
    let me = Identity::generate();
    let dial_grant = postern_sdk::grant::mint(
        &control_plane,
        &postern_sdk::protocol::LeaseGrant {
            workspace: "default".into(),
            lease_pattern: "*".into(),
            identity_key: me.verifying_key().to_bytes().to_vec(),
            issued_at_unix: postern_sdk::grant::unix_now(),
            expires_at_unix: postern_sdk::grant::unix_now() + 600,
            permissions: permission::DIAL,
        },
    );
    let relay_url = RelayUrl::parse(&format!("ws://127.0.0.1:{port}")).unwrap();
    let dialer = Dialer::new(DialerConfig::new(relay_url, me, vec![dial_grant]));
    let get_hello = || async {
        let stream = dialer.dial(&target("web", &owner)).await?;
        let mut client = http1_client(stream).await;
        let resp = send(&mut client, get("/hello")).await;
        Ok::<_, postern_sdk::DialError>((resp.status(), body_bytes(resp).await))
    };
    let (status, body) = get_hello().await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "hello from origin");

    // Kill the relay; expose notices and keeps retrying; a new relay on the same port gets the
    // lease back without anyone touching expose.
    drop(relay);
    expose.wait_for("retrying");
    let _relay = start_relay(&config);
    expose.wait_for("online");
    let mut last = None;
    for _ in 0..100 {
        match get_hello().await {
            Ok((status, _)) => {
                assert_eq!(status, 200);
                return;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("lease not reachable after the relay restart: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_config_holds_several_leases_with_their_own_targets() {
    let net = TestNet::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent_key = dir.path().join("agent.key");
    let owner = Identity::generate();
    owner.save(&agent_key).unwrap();
    let grants = dir.path().join("agent.grants");
    std::fs::write(
        &grants,
        postern_sdk::grant::to_file_text(&[net.grant(
            &owner,
            "*",
            permission::LISTEN,
            Duration::from_secs(600),
        )]),
    )
    .unwrap();
    let web = spawn_origin().await;
    // A raw TCP echo for the second lease.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"relays = ["ws://{relay}"]
identity_key_file = "{key}"
grant_file = "{grants}"

[[lease]]
name = "web"
target = "http://{web}"

[[lease]]
name = "echo"
target = "tcp://{echo_addr}"
"#,
            relay = net.relay_addr,
            key = agent_key.display(),
            grants = grants.display(),
        ),
    )
    .unwrap();
    let agent = Proc::spawn(
        Command::new(built_binary("postern"))
            .arg("agent")
            .arg("--config")
            .arg(&config),
    );
    let line = agent.wait_for("online");
    assert!(line.contains("web") && line.contains("echo"), "{line}");

    let dialer = net.dialer();
    let mut client = http1_client(dialer.dial(&target("web", &owner)).await.unwrap()).await;
    let resp = send(&mut client, get("/hello")).await;
    assert_eq!(body_bytes(resp).await, "hello from origin");

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = dialer.dial(&target("echo", &owner)).await.unwrap();
    s.write_all(b"raw bytes").await.unwrap();
    let mut buf = [0u8; 9];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"raw bytes");
}

#[tokio::test]
async fn invalid_agent_config_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "relays = [\"ws://127.0.0.1:1\"]\nidentity_key_file = \"k\"\ngrant_file = \"g\"\n\n[[lease]]\nname = \"has space\"\ntarget = \"http://127.0.0.1:1\"\n",
    )
    .unwrap();
    let out = Command::new(built_binary("postern"))
        .arg("agent")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lease[0].name"), "{err}");
}

//! The tunnel under test: keys and grants made through the `postern` CLI like an operator
//! would, a `postern-relay` child, a `postern expose` child in front of the bench's origin, and
//! the wait until its lease is online.
//!
//! Everything listens on 127.0.0.1. The relay's stream limits are raised so that the memory
//! measurements (thousands of idle streams) are not refused.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use postern_sdk::grant::{self, unix_now};
use postern_sdk::protocol::{permission, LeaseGrant, SignedGrant};
use postern_sdk::{Dialer, Identity, LeaseTarget, RelayUrl};

use crate::children::{free_port, log_tail, run_cli, wait_for_port, Children};

/// The lease the agent holds.
pub const LEASE: &str = "bench";

/// Path of `p` as a `&str` argument.
pub fn path_str(p: &Path) -> String {
    p.to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 path {}", p.display()))
        .to_owned()
}

/// The control plane's key and the agent's key and LISTEN grant, as files and in memory.
pub struct Keys {
    pub control_plane: Identity,
    pub control_plane_file: PathBuf,
    pub owner: Identity,
    pub agent_key: PathBuf,
    pub agent_grants: PathBuf,
}

impl Keys {
    /// Makes both keys and the agent's grant in `dir` with `postern keygen` / `grant mint`.
    pub fn mint(cli: &Path, dir: &Path) -> Self {
        let cp_key = dir.join("control-plane.key");
        let agent_key = dir.join("agent.key");
        let agent_grants = dir.join("agent.grants");
        run_cli(cli, &["keygen", "--out", &path_str(&cp_key)]);
        run_cli(cli, &["keygen", "--out", &path_str(&agent_key)]);
        run_cli(
            cli,
            &[
                "grant",
                "mint",
                "--signer",
                &path_str(&cp_key),
                "--identity-file",
                &path_str(&agent_key),
                "--lease",
                LEASE,
                "--out",
                &path_str(&agent_grants),
            ],
        );
        Self {
            control_plane: Identity::load(&cp_key).expect("control plane key"),
            control_plane_file: cp_key,
            owner: Identity::load(&agent_key).expect("agent key"),
            agent_key,
            agent_grants,
        }
    }

    /// A DIAL grant for `who` on every lease, valid for an hour, signed in-process.
    pub fn dial_grant(&self, who: &Identity) -> SignedGrant {
        let now = unix_now();
        grant::mint(
            &self.control_plane,
            &LeaseGrant {
                workspace: "default".into(),
                lease_pattern: "*".into(),
                identity_key: who.verifying_key().to_bytes().to_vec(),
                issued_at_unix: now,
                expires_at_unix: now + 3600,
                permissions: permission::DIAL,
            },
        )
    }

    /// Where to dial the agent's lease, with its owner pinned.
    pub fn target(&self) -> LeaseTarget {
        LeaseTarget::new(LEASE, self.owner.verifying_key())
    }
}

/// A running `postern-relay`.
pub struct Relay {
    pub addr: SocketAddr,
    pub url: RelayUrl,
    pub pid: u32,
}

/// Starts `postern-relay` on a free port, trusting `keys`' control plane and requiring DIAL
/// grants; returns once it listens.
pub fn start_relay(relay_bin: &Path, children: &Children, dir: &Path, keys: &Keys) -> Relay {
    let relay_port = free_port();
    let addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], relay_port));
    let relay_cfg = dir.join("relay.toml");
    std::fs::write(
        &relay_cfg,
        format!(
            "require_dial_grant = true\n\n[listen]\naddr = \"{addr}\"\n\n\
             [control_plane]\npublic_keys = [\"{}\"]\n\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n\n\
             [limits]\nmax_streams_per_session = 4096\nmax_streams_per_lease = 4096\n",
            keys.control_plane.public_base64()
        ),
    )
    .expect("writing relay.toml");
    let relay_log = dir.join("relay.log");
    let pid = children.spawn(
        "postern-relay",
        Command::new(relay_bin)
            .arg("--config")
            .arg(&relay_cfg)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&relay_log).expect("relay.log"))
            .stderr(std::fs::File::create(dir.join("relay.err")).expect("relay.err")),
    );
    wait_for_port(addr, children, &dir.join("relay.err"));
    let url = RelayUrl::parse(&format!("ws://{addr}")).expect("relay URL");
    Relay { addr, url, pid }
}

/// A running `postern expose`.
pub struct Agent {
    pub pid: u32,
    /// Its stderr.
    pub log: PathBuf,
}

/// Starts `postern expose http://{origin}` holding [`LEASE`] on `relay`.
pub fn spawn_expose(
    cli: &Path,
    children: &Children,
    dir: &Path,
    origin: SocketAddr,
    relay: &RelayUrl,
    keys: &Keys,
) -> Agent {
    let log = dir.join("agent.err");
    let pid = children.spawn(
        "postern expose",
        Command::new(cli)
            .arg("expose")
            .arg(format!("http://{origin}"))
            .args(["--lease", LEASE, "--relay", &relay.to_string()])
            .arg("--grant")
            .arg(&keys.agent_grants)
            .arg("--key")
            .arg(&keys.agent_key)
            .env("POSTERN_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("agent.err")),
    );
    Agent { pid, log }
}

/// Dials `target` until it answers (15 s at most): the lease is online, and the dialer's E2EE
/// session is up.
///
/// # Panics
/// If a child exits or the lease never comes online (with the agent's log).
pub async fn wait_for_lease(
    dialer: &Dialer,
    target: &LeaseTarget,
    children: &Children,
    agent: &Agent,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        children.check_alive();
        match dialer.dial(target).await {
            Ok(stream) => {
                drop(stream);
                return;
            }
            Err(e) if Instant::now() >= deadline => {
                panic!(
                    "lease {LEASE} never came online: {e}\nagent log:\n{}",
                    log_tail(&agent.log)
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

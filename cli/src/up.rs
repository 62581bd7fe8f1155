//! `postern up`: relay and gateway in one process on embedded defaults — a data
//! directory with generated keys, a self-signed certificate and a printed API key — for a
//! first run on one machine. Nothing here is for production; production runs
//! `postern-relay` and `postern-gateway` from their config files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use postern_config::RelayConfig;
use postern_sdk::grant::{self, unix_now};
use postern_sdk::protocol::{permission, LeaseGrant};
use postern_sdk::Identity;

use postern_gateway::runtime::Runtime;
use postern_gateway::GatewayError;

/// Where `up` listens and keeps its files (the `postern up` command line).
#[derive(Debug, Clone, clap::Args)]
pub struct UpOptions {
    /// Keys, grants, the certificate and the API key record live here.
    #[arg(long, default_value = "postern-data")]
    pub data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub relay: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub https: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// Prometheus metrics (`GET /metrics`), loopback only by default.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics: SocketAddr,
    /// The lease the gateway routes and the printed `expose` command registers. It is the
    /// only lease this gateway serves (its responder key is pinned from this setup); for more,
    /// run `postern-gateway` with a config that lists them.
    #[arg(long, default_value = "demo")]
    pub lease: String,
}

fn err(e: impl std::fmt::Display) -> GatewayError {
    GatewayError::Config(e.to_string())
}

fn load_or_create(path: &Path) -> Result<Identity, GatewayError> {
    Identity::load_or_create(path)
        .map(|(id, _)| id)
        .map_err(|e| GatewayError::Key(e.to_string()))
}

fn mint(cp: &Identity, who: &Identity, permissions: u32) -> postern_sdk::protocol::SignedGrant {
    let now = unix_now();
    grant::mint(
        cp,
        &LeaseGrant {
            workspace: "default".into(),
            lease_pattern: "*".into(),
            identity_key: who.verifying_key().to_bytes().to_vec(),
            issued_at_unix: now,
            expires_at_unix: now + 365 * 24 * 3600,
            permissions,
        },
    )
}

fn write_private(path: &Path, text: &str) -> Result<(), GatewayError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| err(format!("{}: {e}", path.display())))?;
    f.write_all(text.as_bytes())
        .map_err(|e| err(format!("{}: {e}", path.display())))
}

/// An API key generated on the first run: shown once, and only its argon2id hash (in
/// `record`) is kept. The record is written once the listeners are bound, so that a run that
/// fails to start does not keep a key nobody was shown.
struct NewKey {
    key: String,
    record: String,
}

/// Prepares the data directory; returns the gateway config text and, on first run, the new
/// API key.
fn prepare(opts: &UpOptions) -> Result<(String, RelayConfig, Option<NewKey>), GatewayError> {
    let dir = &opts.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    let cp = load_or_create(&dir.join("control-plane.key"))?;
    let gateway = load_or_create(&dir.join("gateway.key"))?;
    let agent = load_or_create(&dir.join("agent.key"))?;
    std::fs::write(
        dir.join("agent.grants"),
        grant::to_file_text(&[mint(&cp, &agent, permission::LISTEN)]),
    )
    .map_err(err)?;
    std::fs::write(
        dir.join("gateway.grants"),
        grant::to_file_text(&[mint(&cp, &gateway, permission::DIAL)]),
    )
    .map_err(err)?;

    let cert_path = dir.join("gateway.crt");
    let key_path = dir.join("gateway-tls.key");
    if !cert_path.exists() || !key_path.exists() {
        let cert = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .map_err(err)?;
        std::fs::write(&cert_path, cert.cert.pem()).map_err(err)?;
        write_private(&key_path, &cert.key_pair.serialize_pem())?;
    }

    let keys_path = dir.join("api-keys.toml");
    let (api_keys, new_key) = if keys_path.exists() {
        (std::fs::read_to_string(&keys_path).map_err(err)?, None)
    } else {
        let (key, id, phc) = postern_gateway::auth::generate(12).map_err(err)?;
        let record = format!(
            "[[api_key]]\nid = \"{id}\"\nhash = \"{phc}\"\nname = \"postern up\"\nleases = [\"*\"]\n"
        );
        (record.clone(), Some(NewKey { key, record }))
    };
    let toml = format!(
        "relays = [\"ws://{relay}\"]\nidentity_key_file = \"{gw_key}\"\ngrant_file = \"{gw_grants}\"\nbase_domain = \"localhost\"\n\n[listen]\nhttps = \"{https}\"\nhttp = \"{http}\"\n\n[metrics]\nlisten = \"{metrics}\"\n\n[[listen.tls]]\ncert = \"{cert}\"\nkey = \"{key}\"\n\n[control]\ndatabase_url = \"sqlite://{db}\"\nsigning_key_file = \"{cp_key}\"\n\n[[lease]]\nname = \"{lease}\"\nowner_identity = \"{owner}\"\n\n{api_keys}",
        relay = opts.relay,
        gw_key = dir.join("gateway.key").display(),
        gw_grants = dir.join("gateway.grants").display(),
        https = opts.https,
        http = opts.http,
        metrics = opts.metrics,
        cert = cert_path.display(),
        key = key_path.display(),
        db = dir.join("control.db").display(),
        cp_key = dir.join("control-plane.key").display(),
        lease = opts.lease,
        owner = agent.public_base64(),
    );
    let mut relay = RelayConfig::with_control_plane_keys(vec![cp.public_base64()]);
    relay.listen.addr = opts.relay;
    Ok((toml, relay, new_key))
}

/// Runs relay and gateway until Ctrl-C.
pub async fn run(opts: UpOptions) -> Result<(), GatewayError> {
    let (toml, relay_cfg, new_key) = prepare(&opts)?;
    let relay = postern_relay::Relay::bind(relay_cfg).await.map_err(err)?;
    let relay_handle = relay.handle().map_err(err)?;
    tokio::spawn(relay.run());
    let config = postern_config::parse_gateway(&toml, "postern up").map_err(err)?;
    let opened = postern_gateway::control::open_with_keys(&config.control).await?;
    let runtime = Runtime::start_with_control(config, opened.control, opened.keys)?;
    postern_gateway::control::follow(Arc::clone(&runtime));
    // Bound before anything is printed: a port in use is an error, not a banner and then one.
    let gateway = postern_gateway::server::Gateway::bind(Arc::clone(&runtime))?;
    if let Some(new) = &new_key {
        write_private(&opts.data_dir.join("api-keys.toml"), &new.record)?;
    }
    let bootstrap = postern_gateway::control::bootstrap_token(&runtime).await?;
    let dir = opts.data_dir.display();
    let key_line = match &new_key {
        Some(new) => format!("API key (shown once; only its hash is kept): {}", new.key),
        None => format!("API key: the one printed on the first run (hash in {dir}/api-keys.toml)"),
    };
    let key_for_curl = new_key.as_ref().map_or("<your API key>", |new| &new.key);
    let admin_line = match &bootstrap {
        Some(token) => {
            format!("admin token for /api/v1 (shown once; only its hash is kept): {token}")
        }
        None => "admin token for /api/v1: the one printed on the first run".to_owned(),
    };
    let token_for_curl = bootstrap.as_deref().unwrap_or("<your admin token>");
    let metrics = gateway
        .metrics_addr()
        .map_or_else(|| "off".to_owned(), |a| format!("http://{a}/metrics"));
    println!(
        "postern up: relay ws://{relay}  gateway https://{https} (and http://{http})\n\
         metrics: {metrics}\n{key_line}\n{admin_line}\n\n\
         1. expose a local HTTP service (port 3000 here) as lease {lease:?}:\n   \
         cargo run --release --bin postern -- expose http://127.0.0.1:3000 --lease {lease} \
         --relay ws://{relay} --grant {dir}/agent.grants --key {dir}/agent.key\n\n\
         2. call it:\n   \
         curl --cacert {dir}/gateway.crt -H 'Authorization: Bearer {key_for_curl}' https://localhost:{port}/peer/{lease}/\n\n\
         3. the control plane (workspaces, keys, audit):\n   \
         curl --cacert {dir}/gateway.crt -H 'Authorization: Bearer {token_for_curl}' https://localhost:{port}/api/v1/whoami\n",
        relay = opts.relay,
        https = opts.https,
        http = opts.http,
        lease = opts.lease,
        port = opts.https.port(),
    );
    let shutdown = postern_gateway::server::shutdown_on_stop_signal();
    gateway.serve(shutdown).await;
    relay_handle.shutdown();
    Ok(())
}

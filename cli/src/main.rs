//! `postern`: the Postern command line.
//!
//! * `postern up` — relay and gateway in one process on embedded defaults (data directory,
//!   self-signed certificate, printed API key), for a first run on one machine.
//! * `postern expose http://127.0.0.1:3000 --lease NAME --relay URL --grant FILE` — hold a
//!   lease and forward every end-to-end-encrypted stream to a local service.
//! * `postern keygen --out FILE` — a new identity key (mode 0600).
//! * `postern pubkey --key FILE` — print an identity's public keys.
//! * `postern grant mint …` — development helper: sign a lease grant with a control-plane key.

mod audit;
mod up;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clap::{Args, Parser, Subcommand};
use postern_sdk::expose::{self, ExposeOptions, Target};
use postern_sdk::grant::{self, unix_now};
use postern_sdk::identity::{parse_verifying_key, Identity};
use postern_sdk::protocol::{permission, LeaseGrant};
use postern_sdk::{ClientOptions, LeaseSpec, Listener, ListenerConfig, ListenerStatus, RelayUrl};

#[derive(Debug, Parser)]
#[command(
    name = "postern",
    version,
    about = "Expose services behind NAT through an end-to-end-encrypted relay"
)]
struct Cli {
    /// Tokio worker threads. Default: 1 for `expose` and `agent` (a lease's requests arrive
    /// on one E2EE session from each gateway and pass its one session task: more threads add
    /// cross-thread wakeups, not throughput), one per core for `up`.
    #[arg(long, global = true, env = "POSTERN_WORKER_THREADS")]
    worker_threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Relay and gateway in one process: generated keys, a self-signed certificate and an API
    /// key in a data directory; prints a working `postern expose` and `curl` line.
    Up(up::UpOptions),
    /// Hold a lease on a relay and forward its streams to a local service.
    Expose(ExposeArgs),
    /// Hold every lease of an agent config file (see config/examples/agent.toml).
    Agent {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Create a new identity key file (mode 0600).
    Keygen {
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Print the public keys of an identity key file.
    Pubkey {
        #[arg(long, short)]
        key: PathBuf,
    },
    /// Lease grants (development helper for a local control plane key).
    #[command(subcommand)]
    Grant(GrantCommand),
    /// The control plane's evidence chain: verify it, export it.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Print the control plane API's OpenAPI 3.1 document (as served at /api/v1/openapi.json).
    Openapi,
}

#[derive(Debug, Subcommand)]
enum GrantCommand {
    /// Sign a grant with the control plane's key.
    Mint(MintArgs),
}

#[derive(Debug, Args)]
struct MintArgs {
    /// The control plane's identity key file (the relay trusts its public key).
    #[arg(long)]
    signer: PathBuf,
    /// Identity the grant is for: a base64 public key ...
    #[arg(long, conflicts_with = "identity_file")]
    identity: Option<String>,
    /// ... or that identity's key file.
    #[arg(long)]
    identity_file: Option<PathBuf>,
    /// Lease name or glob pattern (`*` matches any run of characters).
    #[arg(long)]
    lease: String,
    #[arg(long, default_value = "default")]
    workspace: String,
    /// How long the grant is valid, e.g. `24h`, `30d`.
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Allow dialing (gateway); the default is listening (service).
    #[arg(long)]
    dial: bool,
    /// Allow both listening and dialing.
    #[arg(long)]
    both: bool,
    /// Append to this grant file instead of printing.
    #[arg(long, short)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ExposeArgs {
    /// Local service: http://host:port (HTTP/1.1), h2c://host:port (HTTP/2 without TLS, e.g.
    /// gRPC) or tcp://host:port.
    target: String,
    /// Lease name to hold.
    #[arg(long)]
    lease: String,
    /// Relay URL (ws:// or wss://); repeat for several relays.
    #[arg(long, required = true)]
    relay: Vec<String>,
    /// Grant file from the control plane.
    #[arg(long)]
    grant: PathBuf,
    /// Identity key file; created (0600) if it does not exist.
    #[arg(long, default_value = "postern.key", env = "POSTERN_KEY")]
    key: PathBuf,
    /// Extra CA certificate (PEM) to trust for wss:// relays.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Keep the caller's Host header instead of rewriting it to the target.
    #[arg(long)]
    keep_host: bool,
    /// Most header fields a request may carry: the gateway's `limits.max_header_count`
    /// (room for the fields the gateway adds is kept on top).
    #[arg(long, default_value_t = postern_sdk::expose::DEFAULT_MAX_HEADER_COUNT)]
    max_header_count: usize,
    /// Only accept dialers with this X25519 public key (base64); repeatable.
    #[arg(long)]
    allow_dialer: Vec<String>,
    /// Lease TTL; renewed at a third of it.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// ALPN protocols the lease speaks inside the tunnel, in preference order; repeatable.
    /// Default for an http:// target: `h2`, `http/1.1` (the agent serves both).
    #[arg(long)]
    alpn: Vec<String>,
}

/// The agent's default worker count (see `--worker-threads`).
const AGENT_WORKER_THREADS: usize = 1;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let agent = matches!(cli.command, Command::Expose(_) | Command::Agent { .. });
    let workers = cli.worker_threads.filter(|&n| n > 0);
    if let Some(n) = workers.or(agent.then_some(AGENT_WORKER_THREADS)) {
        builder.worker_threads(n);
    }
    builder.enable_all().build()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POSTERN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Up(opts) => Ok(up::run(opts).await?),
        Command::Expose(args) => expose_cmd(args).await,
        Command::Agent { config } => agent_cmd(&config).await,
        Command::Keygen { out } => {
            let id = Identity::generate();
            id.save(&out)?;
            print_pubkeys(&id);
            Ok(())
        }
        Command::Pubkey { key } => {
            print_pubkeys(&Identity::load(&key)?);
            Ok(())
        }
        Command::Grant(GrantCommand::Mint(args)) => mint_cmd(args),
        Command::Audit(cmd) => audit::run(cmd).await,
        Command::Openapi => {
            println!("{}", postern_control::api::openapi_document());
            Ok(())
        }
    }
}

fn print_pubkeys(id: &Identity) {
    println!("identity (ed25519): {}", id.public_base64());
    println!(
        "e2ee (x25519):      {}",
        B64.encode(id.e2ee_keypair().public().as_bytes())
    );
}

fn load_or_create_key(path: &Path) -> anyhow::Result<Identity> {
    let (id, created) = Identity::load_or_create(path)?;
    if created {
        eprintln!(
            "created identity key {} (public {})",
            path.display(),
            id.public_base64()
        );
    }
    Ok(id)
}

fn mint_cmd(args: MintArgs) -> anyhow::Result<()> {
    let signer = Identity::load(&args.signer)?;
    let identity = match (&args.identity, &args.identity_file) {
        (Some(text), None) => parse_verifying_key(text)?,
        (None, Some(path)) => Identity::load(path)?.verifying_key(),
        _ => bail!("give --identity or --identity-file"),
    };
    let now = unix_now();
    let permissions = if args.both {
        permission::LISTEN | permission::DIAL
    } else if args.dial {
        permission::DIAL
    } else {
        permission::LISTEN
    };
    let signed = grant::mint(
        &signer,
        &LeaseGrant {
            workspace: args.workspace,
            lease_pattern: args.lease,
            identity_key: identity.to_bytes().to_vec(),
            issued_at_unix: now,
            expires_at_unix: now + args.ttl.as_secs(),
            permissions,
        },
    );
    let text = grant::to_file_text(&[signed]);
    match args.out {
        Some(path) => {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            let body: String = text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| format!("{l}\n"))
                .collect();
            f.write_all(body.as_bytes())?;
            eprintln!("grant appended to {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

async fn agent_cmd(path: &Path) -> anyhow::Result<()> {
    let cfg = postern_config::load_agent(path)?;
    let identity = load_or_create_key(&cfg.identity_key_file)?;
    let grants = grant::load_file(&cfg.grant_file)?;
    let relays = cfg
        .relays
        .iter()
        .map(|r| RelayUrl::parse(r))
        .collect::<Result<Vec<_>, _>>()?;
    let mut targets = std::collections::HashMap::new();
    let mut leases = Vec::new();
    for lease in &cfg.leases {
        let name = postern_sdk::lease_name::normalize(&lease.name)?;
        let target = Target::parse(&lease.target, lease.keep_host)?;
        let alpn = served_alpn(&lease.alpn, &target);
        targets.insert(name.clone(), target);
        leases.push(LeaseSpec {
            name,
            alpn,
            metadata: lease.metadata.clone(),
            ttl: lease.ttl,
        });
    }
    let mut client = ClientOptions::default();
    if let Some(ca) = &cfg.ca_file {
        client.tls = Some(postern_sdk::tls::client_config(
            &postern_sdk::tls::load_certs(ca)?,
        )?);
    }
    let allowed = cfg.allowed_dialer_bytes();
    let mut lcfg = ListenerConfig::new(relays[0].clone(), identity, grants, leases[0].clone());
    lcfg.relays = relays;
    lcfg.leases = leases;
    lcfg.client = client;
    lcfg.allowed_dialers = (!allowed.is_empty()).then(|| allowed.into_iter().collect());
    lcfg.initial_backoff = cfg.reconnect.initial_backoff;
    lcfg.max_backoff = cfg.reconnect.max_backoff;
    lcfg.handshake_timeout = cfg.limits.handshake_timeout;
    lcfg.max_sessions = cfg.limits.max_e2ee_sessions;
    lcfg.idle_session_timeout = cfg.limits.idle_session_timeout;
    lcfg.max_inner_streams = cfg.limits.max_inner_streams;
    lcfg.max_pending_accepts = cfg.limits.max_pending_accepts;
    let listener = Listener::bind(lcfg).await.context("registering leases")?;
    print_status(listener.status());
    for (lease, target) in &targets {
        println!("postern: forwarding lease {lease:?} → {target}");
    }
    tokio::select! {
        r = expose::serve_leases(listener, targets, None, expose_options(cfg.limits.max_header_count)) => r?,
        _ = postern_sdk::signal::stop_signal() => eprintln!("postern: stopping"),
    }
    Ok(())
}

/// The agent's HTTP limits for a gateway that accepts `max_header_count` fields.
fn expose_options(max_header_count: usize) -> ExposeOptions {
    ExposeOptions {
        max_header_count: max_header_count.saturating_add(expose::GATEWAY_ADDED_FIELDS),
        ..ExposeOptions::default()
    }
}

fn print_status(mut status: tokio::sync::watch::Receiver<ListenerStatus>) {
    tokio::spawn(async move {
        loop {
            let line = match &*status.borrow_and_update() {
                ListenerStatus::Online { relay, leases } => {
                    format!("online: lease {} on {relay}", leases.join(", "))
                }
                ListenerStatus::Connecting { relay } => format!("connecting to {relay}…"),
                ListenerStatus::Retrying {
                    relay,
                    error,
                    retry_in,
                } => format!("relay {relay}: {error}; retrying in {retry_in:.1?}"),
                ListenerStatus::Stopped => "stopped".into(),
            };
            eprintln!("postern: {line}");
            if status.changed().await.is_err() {
                return;
            }
        }
    });
}

/// The protocols a lease serves: as configured, or for an HTTP target what the agent serves
/// (HTTP/2 first, so that the gateway carries the lease's requests on one HTTP/2 connection).
fn served_alpn(configured: &[String], target: &Target) -> Vec<String> {
    match target {
        _ if !configured.is_empty() => configured.to_vec(),
        Target::Http { .. } => postern_sdk::expose::HTTP_ALPN
            .iter()
            .map(|a| a.to_string())
            .collect(),
        Target::Tcp { .. } => Vec::new(),
    }
}

async fn expose_cmd(args: ExposeArgs) -> anyhow::Result<()> {
    let target = Target::parse(&args.target, args.keep_host)?;
    let identity = load_or_create_key(&args.key)?;
    let grants = grant::load_file(&args.grant)?;
    let relays = args
        .relay
        .iter()
        .map(|r| RelayUrl::parse(r))
        .collect::<Result<Vec<_>, _>>()?;
    let mut client = ClientOptions::default();
    if let Some(ca) = &args.ca {
        let certs = postern_sdk::tls::load_certs(ca)?;
        client.tls = Some(postern_sdk::tls::client_config(&certs)?);
    }
    let allowed = if args.allow_dialer.is_empty() {
        None
    } else {
        let mut set = HashSet::new();
        for k in &args.allow_dialer {
            let bytes = B64.decode(k.trim()).context("--allow-dialer: not base64")?;
            let key: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| anyhow::anyhow!("--allow-dialer: expected a 32-byte key"))?;
            set.insert(key);
        }
        Some(set)
    };
    let mut lease = LeaseSpec::new(args.lease.clone());
    lease.ttl = args.ttl;
    lease.alpn = served_alpn(&args.alpn, &target);
    let mut cfg = ListenerConfig::new(relays[0].clone(), identity, grants, lease);
    cfg.relays = relays;
    cfg.client = client;
    cfg.allowed_dialers = allowed;
    let listener = Listener::bind(cfg)
        .await
        .with_context(|| format!("registering lease {:?}", args.lease))?;
    print_status(listener.status());
    println!(
        "postern: forwarding lease {:?} → {target} (Ctrl-C to stop)",
        args.lease
    );
    tokio::select! {
        r = expose::serve(listener, target, expose_options(args.max_header_count)) => r?,
        _ = postern_sdk::signal::stop_signal() => eprintln!("postern: stopping"),
    }
    Ok(())
}

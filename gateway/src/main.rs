//! `postern-gateway`: runs the gateway from a TOML config file, or everything in one process
//! on embedded defaults with `up`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use postern_gateway::state::GatewayState;

/// Postern gateway: authenticates and forwards requests to leases over the E2EE tunnel.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Path to the gateway's TOML config (see config/examples/gateway.toml).
    #[arg(long, short, env = "POSTERN_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Relay and gateway in one process: generated keys, a self-signed certificate and an API
    /// key in a data directory; prints a working `postern expose` and `curl` line.
    Up {
        #[arg(long, default_value = "postern-data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7000")]
        relay: std::net::SocketAddr,
        #[arg(long, default_value = "127.0.0.1:8443")]
        https: std::net::SocketAddr,
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: std::net::SocketAddr,
        /// Lease the printed `expose` command registers.
        #[arg(long, default_value = "demo")]
        lease: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Some(Command::Up {
        data_dir,
        relay,
        https,
        http,
        lease,
    }) = args.command
    {
        let opts = postern_gateway::up::UpOptions {
            data_dir,
            relay,
            https,
            http,
            lease,
        };
        postern_gateway::up::run(opts).await?;
        return Ok(());
    }
    let Some(path) = args.config else {
        anyhow::bail!("--config is required");
    };
    let config = postern_config::load_gateway(&path)?;
    let state = Arc::new(GatewayState::load(config).context("starting the gateway")?);
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = tx.send(true);
    });
    postern_gateway::server::serve(state, rx).await?;
    Ok(())
}

//! `postern-relay`: runs a relay from a TOML config file.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use postern_relay::Relay;

/// Postern relay: brokers leases and splices end-to-end-encrypted streams it cannot read.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Path to the relay's TOML config (see config/examples/relay.toml).
    #[arg(long, short, env = "POSTERN_RELAY_CONFIG")]
    config: PathBuf,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long)]
    json_logs: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.json_logs {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let config = postern_config::load_relay(&args.config)?;
    let relay = Relay::bind(config).await.context("starting the relay")?;
    let handle = relay.handle()?;
    tracing::info!(addr = %handle.local_addr(), "relay listening");
    let shutdown = handle.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received; shutting down gracefully");
        shutdown.shutdown();
    });
    relay.run().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

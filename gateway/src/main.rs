//! `postern-gateway`: runs the gateway from a TOML config file, reloading it on change and on
//! `SIGHUP`; `postern-gateway check-config FILE` validates a file offline. (`postern up` runs
//! relay and gateway in one process on embedded defaults.)

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use postern_gateway::access_log::{self, AccessLayer};
use postern_gateway::log_sink::LogSink;
use postern_gateway::runtime::Runtime;
use tracing_subscriber::prelude::*;

/// glibc's allocator serialises on its arena locks when one thread frees what another
/// allocated, which every proxied buffer does; mimalloc frees into per-thread pages. In the
/// gateway bench (32 connections, small responses) the gateway's CPU per request went from
/// 40.4 to 37.0 µs and its RSS per idle client connection from 16.9 to 6.1 KiB. The `postern`
/// command (the agent) keeps the system allocator: there mimalloc's retained pages raised the
/// RSS per idle inner stream from 17.8 to 29.8 KiB in the tunnel bench.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Postern gateway: authenticates and forwards requests to leases over the E2EE tunnel.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Args {
    /// Path to the gateway's TOML config (see config/examples/gateway.toml). It is watched:
    /// a valid change is applied without a restart, an invalid one is logged and ignored.
    #[arg(long, short, env = "POSTERN_GATEWAY_CONFIG", required = false)]
    config: Option<PathBuf>,
    /// Log lines as JSON (one object per line) or as text for a terminal.
    #[arg(long, value_enum, default_value = "json", global = true)]
    log_format: LogFormat,
    /// Tokio worker threads (default: one per core). On a box the gateway shares with the
    /// relay and agents, fewer threads mean fewer cross-thread wakeups per request.
    #[arg(long, env = "POSTERN_WORKER_THREADS")]
    worker_threads: Option<usize>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validates a config file offline (keys, grants and certificates are read too); exits 0
    /// if the gateway would start with it.
    CheckConfig { file: PathBuf },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn init_logs(format: LogFormat) -> Option<LogSink> {
    // The gateway's own events (reloads, breaker transitions) and the access log (target
    // postern::access) at info, its dependencies at warn, unless RUST_LOG says otherwise.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,postern_gateway=info,postern::access=info")
    });
    // Lines go through a buffer written by a thread of its own (see log_sink); if that
    // thread cannot start, straight to stderr. In JSON, access-log lines are formatted by
    // their own layer (see access_log), and the general formatter skips them.
    let sink = LogSink::stderr().ok();
    match (format, sink.clone()) {
        (LogFormat::Json, Some(sink)) => {
            let general = tracing_subscriber::fmt::layer()
                .json()
                .with_writer(sink.clone())
                .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                    !access_log::is_access(m)
                }));
            tracing_subscriber::registry()
                .with(filter)
                .with(general)
                .with(AccessLayer::new(sink))
                .init();
        }
        (LogFormat::Text, Some(sink)) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(sink)
            .init(),
        (LogFormat::Json, None) => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        (LogFormat::Text, None) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    // Pingora logs through the `log` crate, bridged into tracing at the subscriber's most
    // verbose level: with the access log at info, every info record of Pingora's would be
    // built and then filtered out, per request (2-3% of the gateway's CPU in the bench). Only
    // a RUST_LOG that asks for more from dependencies opens the bridge wider.
    if !wants_dependency_logs(std::env::var("RUST_LOG").ok().as_deref()) {
        log::set_max_level(log::LevelFilter::Warn);
    }
    sink
}

/// Whether a `RUST_LOG` value asks for records below warn from dependencies (a global
/// `info`/`debug`/`trace`, or a directive naming `pingora`).
fn wants_dependency_logs(rust_log: Option<&str>) -> bool {
    rust_log.is_some_and(|value| {
        value.split(',').any(|directive| {
            let directive = directive.trim().to_ascii_lowercase();
            directive.contains("pingora")
                || matches!(directive.as_str(), "info" | "debug" | "trace")
        })
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::CheckConfig { file }) = &args.command {
        return check_config(file);
    }
    let sink = init_logs(args.log_format);
    let Some(path) = args.config else {
        eprintln!("postern-gateway: --config FILE is required (or: check-config FILE)");
        return ExitCode::from(2);
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.worker_threads.filter(|&n| n > 0) {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("postern-gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "gateway stopped");
            if let Some(sink) = &sink {
                sink.flush();
            }
            eprintln!("postern-gateway: {e:#}");
            ExitCode::FAILURE
        }
    };
    if let Some(sink) = &sink {
        sink.flush();
    }
    code
}

async fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = postern_config::load_gateway(&path)
        .with_context(|| format!("config {}", path.display()))?;
    let opened = postern_gateway::control::open_with_keys(&config.control)
        .await
        .context("opening the control plane")?;
    let runtime = Runtime::start_with_control(config, opened.control, opened.keys)
        .context("starting the gateway")?;
    postern_gateway::control::follow(std::sync::Arc::clone(&runtime));
    // Watching before the listeners are bound: a change written once the gateway answers is
    // never missed.
    postern_gateway::reload::watch(std::sync::Arc::clone(&runtime), path)
        .context("watching the config file")?;
    let gateway = postern_gateway::server::Gateway::bind(std::sync::Arc::clone(&runtime))?;
    if let Some(token) = postern_gateway::control::bootstrap_token(&runtime).await? {
        // Printed, never logged: the one time this token is shown (only its hash is kept).
        println!(
            "postern-gateway: bootstrap admin token (shown once; only its hash is kept): {token}"
        );
    }
    if let Some(addr) = gateway.metrics_addr() {
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
    }
    let shutdown = postern_gateway::server::shutdown_on_stop_signal();
    gateway.serve(shutdown).await;
    Ok(())
}

fn check_config(file: &std::path::Path) -> ExitCode {
    let checked = postern_config::load_gateway(file)
        .map_err(anyhow::Error::from)
        .and_then(|config| {
            postern_gateway::runtime::check_offline(config).map_err(anyhow::Error::from)
        });
    match checked {
        Ok(()) => {
            println!("ok: {}", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e:#}", file.display());
            ExitCode::FAILURE
        }
    }
}

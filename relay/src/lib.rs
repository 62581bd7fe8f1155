//! Postern relay: brokers leases and splices streams between dialers and lease owners.
//!
//! Clients connect over WebSocket (`/v1/tunnel`, ws or wss) and run one yamux session each.
//! A lease owner registers names it holds a control-plane grant for; a dialer opens a stream,
//! names a lease, and the relay splices it onto a new stream in the owner's session. What
//! flows through a splice is end-to-end encrypted between dialer and owner: **the relay never
//! decrypts and holds no key that could** — it knows lease names, public keys, sizes and timing.
//!
//! Modules: [`server`] (listener, HTTP, TLS, shutdown), `session` (control stream and
//! authentication), `client` (what an authenticated client holds), [`lease`] (the lease
//! table), `splice` (connect-and-splice), `state` (shared state and the reloadable settings
//! snapshot), `slots` (counts under a reloadable limit), `metrics` (Prometheus counters and
//! their listener), `reload` (applying a new configuration). Dependencies point one way:
//! `server` → `session` → `splice` → `client`, all of them → `state`.
//!
//! Operations: `GET /metrics` on its own listener ([`RelayHandle::metrics_addr`]); a new
//! configuration applied without a restart ([`RelayHandle::reload`],
//! [`RelayHandle::watch_config`] for file changes and SIGHUP).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use postern_config::{ConfigWatcher, RelayConfig};
use tokio::net::TcpListener;

mod client;
pub mod lease;
mod metrics;
mod reload;
pub mod server;
mod session;
mod slots;
mod splice;
mod state;

pub use metrics::RelayMetrics;
pub use reload::{ReloadOutcome, WATCH_DEBOUNCE};
use state::{RelayState, Settings};

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("config: {0}")]
    Config(#[from] postern_config::ConfigError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("tls: {0}")]
    Tls(String),
    #[error("control-plane key: {0}")]
    Key(String),
    #[error("metrics: {0}")]
    Metrics(String),
    #[error(transparent)]
    Watch(#[from] postern_config::WatchError),
}

/// A bound relay, ready to run.
pub struct Relay {
    state: Arc<RelayState>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("addr", &self.listener.local_addr().ok())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Controls a running relay and reads its counters.
#[derive(Debug, Clone)]
pub struct RelayHandle {
    state: Arc<RelayState>,
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
}

impl Relay {
    /// Validates `config`, decodes its keys and loads its TLS material: everything
    /// [`Relay::bind`] does short of binding. `postern-relay check-config` runs this.
    pub fn check(config: &RelayConfig) -> Result<(), RelayError> {
        Settings::resolve(config)?;
        if let Some(files) = &config.listen.tls {
            server::load_tls(files)?;
        }
        Ok(())
    }

    /// Validates `config`, loads TLS material and binds the tunnel listener and, if enabled,
    /// the metrics listener (either failing to bind is an error).
    pub async fn bind(config: RelayConfig) -> Result<Self, RelayError> {
        let settings = Settings::resolve(&config)?;
        let tls = match &config.listen.tls {
            Some(files) => Some(server::load_tls(files)?),
            None => None,
        };
        let listener = bind(config.listen.addr).await?;
        let metrics_listener = match config.metrics.enabled {
            true => Some(bind(config.metrics.listen).await?),
            false => None,
        };
        Ok(Self {
            state: Arc::new(RelayState::new(config, settings)?),
            listener,
            metrics_listener,
            tls,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn handle(&self) -> std::io::Result<RelayHandle> {
        Ok(RelayHandle {
            state: Arc::clone(&self.state),
            addr: self.local_addr()?,
            metrics_addr: self
                .metrics_listener
                .as_ref()
                .map(TcpListener::local_addr)
                .transpose()?,
        })
    }

    /// Serves until [`RelayHandle::shutdown`] and then drains: returns once every spliced
    /// stream has ended or the grace period ran out.
    pub async fn run(self) {
        let state = Arc::clone(&self.state);
        let sweeper = tokio::spawn(sweep_leases(Arc::clone(&state)));
        let metrics = self.metrics_listener.map(|listener| {
            let render_state = Arc::clone(&state);
            let render: Arc<dyn Fn() -> String + Send + Sync> =
                Arc::new(move || render_metrics(&render_state));
            tokio::spawn(metrics::serve(listener, render, state.hard_stop.clone()))
        });
        server::accept_loop(Arc::clone(&state), self.listener, self.tls).await;
        tracing::info!("relay shutting down; draining spliced streams");
        let grace = state.settings().timeouts.shutdown_grace;
        let drained = tokio::time::timeout(grace, async {
            while state.metrics.splices_active.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("shutdown grace period over; closing remaining streams");
        }
        state.hard_stop.cancel();
        state.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), state.tasks.wait()).await;
        sweeper.abort();
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        tracing::info!("relay stopped");
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, RelayError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RelayError::Bind { addr, source })
}

fn render_metrics(state: &RelayState) -> String {
    state.metrics.render(state.leases.len())
}

async fn sweep_leases(state: Arc<RelayState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let n = state.leases.sweep(std::time::Instant::now());
        if n > 0 {
            tracing::info!(expired = n, "leases expired");
        }
    }
}

impl RelayHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts a graceful shutdown.
    pub fn shutdown(&self) {
        self.state.shutdown.cancel();
    }

    /// Ends everything at once (a crash, for tests of reconnection).
    pub fn abort(&self) {
        self.state.shutdown.cancel();
        self.state.hard_stop.cancel();
    }

    pub fn metrics(&self) -> &RelayMetrics {
        &self.state.metrics
    }

    pub fn lease_count(&self) -> usize {
        self.state.leases.len()
    }

    /// The bound metrics listener, `None` when `metrics.enabled = false`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// What `GET /metrics` answers now (Prometheus text format).
    pub fn render_metrics(&self) -> String {
        render_metrics(&self.state)
    }

    /// Applies a new configuration: validates it whole and swaps in its limits, timeouts and
    /// trusted keys, or changes nothing and returns the error. Settings that need a restart
    /// are listed in the outcome, not applied. See the `reload` module for what applies when.
    pub fn reload(&self, config: RelayConfig) -> Result<ReloadOutcome, RelayError> {
        reload::apply(&self.state, config)
    }

    /// [`RelayHandle::reload`] from a file, read and validated whole; the error names the
    /// file, line and field.
    pub fn reload_file(&self, path: &Path) -> Result<ReloadOutcome, RelayError> {
        reload::apply_file(&self.state, path)
    }

    /// Reloads `path` whenever it changes (debounced by [`WATCH_DEBOUNCE`]) or the process
    /// gets SIGHUP, until the relay shuts down. Must be called inside a tokio runtime; the
    /// watch is set up before this returns.
    pub fn watch_config(&self, path: &Path) -> Result<tokio::task::JoinHandle<()>, RelayError> {
        let watcher = ConfigWatcher::new(path, WATCH_DEBOUNCE)?;
        Ok(tokio::spawn(reload::watch(
            Arc::clone(&self.state),
            watcher,
            path.to_path_buf(),
        )))
    }
}

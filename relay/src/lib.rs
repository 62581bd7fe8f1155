//! Postern relay: brokers leases and splices streams between dialers and lease owners.
//!
//! Clients connect over WebSocket (`/v1/tunnel`, ws or wss) and run one yamux session each.
//! A lease owner registers names it holds a control-plane grant for; a dialer opens a stream,
//! names a lease, and the relay splices it onto a new stream in the owner's session. What
//! flows through a splice is end-to-end encrypted between dialer and owner: **the relay never
//! decrypts and holds no key that could** — it knows lease names, public keys, sizes and timing.
//!
//! Modules: [`server`] (listener, HTTP, TLS, shutdown), `session` (control stream and
//! authentication), [`lease`] (the lease table), `splice` (connect-and-splice), `state`
//! (shared state and counters).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use postern_config::RelayConfig;
use tokio::net::TcpListener;

pub mod lease;
pub mod server;
mod session;
mod splice;
mod state;

pub use state::RelayMetrics;
use state::RelayState;

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
}

/// A bound relay, ready to run.
pub struct Relay {
    state: Arc<RelayState>,
    listener: TcpListener,
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
}

impl Relay {
    /// Validates `config`, loads TLS material and binds the listener.
    pub async fn bind(config: RelayConfig) -> Result<Self, RelayError> {
        config.validate()?;
        let trusted = config
            .control_plane
            .public_key_bytes()
            .iter()
            .map(|b| {
                ed25519_dalek::VerifyingKey::from_bytes(b)
                    .map_err(|e| RelayError::Key(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tls = match &config.listen.tls {
            Some(files) => Some(server::load_tls(files)?),
            None => None,
        };
        let addr = config.listen.addr;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| RelayError::Bind { addr, source })?;
        Ok(Self {
            state: Arc::new(RelayState::new(config, trusted)),
            listener,
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
        })
    }

    /// Serves until [`RelayHandle::shutdown`] and then drains: returns once every spliced
    /// stream has ended or the grace period ran out.
    pub async fn run(self) {
        let state = Arc::clone(&self.state);
        let sweeper = tokio::spawn(sweep_leases(Arc::clone(&state)));
        server::accept_loop(Arc::clone(&state), self.listener, self.tls).await;
        tracing::info!("relay shutting down; draining spliced streams");
        let grace = state.config.timeouts.shutdown_grace;
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
        tracing::info!("relay stopped");
    }
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
}

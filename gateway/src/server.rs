//! The listeners: Pingora's HTTP proxy service on an HTTPS listener (rustls; several
//! certificates chosen by SNI; HTTP/1.1 and HTTP/2 by ALPN) and an optional plain HTTP listener
//! for loopback. Both are TCP listeners to Pingora: the TLS handshake runs in
//! [`crate::downstream`], with Pingora's acceptor, so that it is bounded in time.
//!
//! Certificates are loaded and checked by [`crate::tls`] before anything is handed to Pingora
//! (whose `TlsSettings::build` panics on bad files); Pingora's acceptor asks the runtime's
//! resolver on every handshake, so reloaded certificates reach new handshakes. The listening
//! sockets are bound here and handed to Pingora as inherited descriptors: Pingora's own bind
//! retries an address in use for several seconds and then panics. The metrics listener, when
//! enabled, is bound here too and served by [`crate::endpoints`].

use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::sync::Arc;

use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::proxy::{HttpProxy, ProcessCustomSession, ProxyServiceBuilder};
use pingora::server::configuration::ServerConf;
use pingora::server::{Fds, ListenFds};
use pingora::services::listening::Service;
use pingora::services::Service as _;
use tokio::sync::watch;

use crate::downstream::DownstreamApp;
use crate::proxy::GatewayProxy;
use crate::runtime::Runtime;
use crate::tls::CertResolver;
use crate::upstream::LeaseConnector;
use crate::GatewayError;

/// The gateway's HTTP proxy: Pingora's, with the lease connector as its custom upstream.
type Proxy = HttpProxy<GatewayProxy, LeaseConnector>;

/// TLS settings whose certificate comes from `resolver` on every handshake.
fn tls_settings(resolver: Arc<CertResolver>) -> Result<TlsSettings, GatewayError> {
    let mut settings =
        TlsSettings::intermediate("", "").map_err(|e| GatewayError::Tls(e.to_string()))?;
    settings.set_cert_resolver(resolver);
    settings.enable_h2();
    Ok(settings)
}

/// Binds a listening socket (`SO_REUSEADDR`, as Pingora would), so that an address in use or
/// not ours is a located error rather than a panic inside Pingora. Non-blocking, as tokio
/// requires of a socket it adopts.
fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, GatewayError> {
    let err = |source| GatewayError::Listen { addr, source };
    let socket = std::net::TcpListener::bind(addr).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    Ok(socket)
}

/// The table of "inherited" listening sockets Pingora looks an address up in before binding it
/// itself (its zero-downtime upgrade path), keyed by the address string its
/// `ListenerConfig::tcp` was given. Pingora takes ownership of each descriptor.
fn inherited_fds(sockets: Vec<(SocketAddr, std::net::TcpListener)>) -> ListenFds {
    let mut fds = Fds::new();
    for (addr, socket) in sockets {
        fds.add(addr.to_string(), socket.into_raw_fd());
    }
    Arc::new(parking_lot::Mutex::new(fds))
}

/// A shutdown signal for [`Gateway::serve`] driven by the process's stop signals: the first SIGTERM or
/// Ctrl-C starts a graceful shutdown (open connections get `limits.shutdown_grace`), a second
/// one ends the process at once.
pub fn shutdown_on_stop_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        postern_sdk::signal::stop_signal().await;
        tracing::warn!("stop signal: shutting down gracefully (send it again to stop at once)");
        let _ = tx.send(true);
        postern_sdk::signal::stop_signal().await;
        tracing::warn!("second stop signal: exiting now");
        std::process::exit(130);
    });
    rx
}

/// How the proxy serves a client connection. `force_custom` (`#[doc(hidden)]`, pinned with
/// Pingora's version) hands every accepted connection that has not negotiated HTTP/2 to the
/// proxy's custom-session hook, [`accept_with`]: that is how [`DownstreamApp`] gets to run
/// in front of Pingora's HTTP handling (caps, TLS under the header deadline, the keep-alive
/// loop) while the proxy itself — which only Pingora's service builder can make with a custom
/// upstream connector — stays Pingora's. A connection that has negotiated HTTP/2 (which only
/// `DownstreamApp` ever hands back) goes to Pingora's HTTP/2 server as before.
fn server_options(limits: &postern_config::GatewayLimits) -> HttpServerOptions {
    let mut options = HttpServerOptions::default();
    options.force_custom = true;
    // An HTTP/2 connection with no open stream is closed after the keep-alive time, as an
    // idle HTTP/1.1 connection is.
    options.h2_idle_timeout = Some(limits.keepalive_timeout);
    options
}

/// HTTP/2 heads: the decoded header list is bounded by the same limit as HTTP/1 heads.
fn h2_options(
    limits: &postern_config::GatewayLimits,
) -> pingora::protocols::http::v2::server::H2Options {
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    h2
}

/// The custom-session hook: every accepted connection goes to `front` (see [`server_options`]).
fn accept_with(front: Arc<DownstreamApp>) -> ProcessCustomSession<GatewayProxy, LeaseConnector> {
    Arc::new(move |proxy, stream, shutdown| {
        let front = Arc::clone(&front);
        let shutdown = shutdown.clone();
        Box::pin(async move {
            front.accept(proxy, stream, &shutdown);
            None
        })
    })
}

/// The gateway's listeners, bound and ready: [`Gateway::bind`] does everything that can fail
/// (certificates, sockets), [`Gateway::serve`] runs them.
pub struct Gateway {
    runtime: Arc<Runtime>,
    services: Vec<Service<Proxy>>,
    fds: ListenFds,
    http: Option<SocketAddr>,
    https: Option<SocketAddr>,
    metrics: Option<tokio::net::TcpListener>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("http", &self.http)
            .field("https", &self.https)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Loads the certificates and binds the listening sockets. A configured port 0 becomes a
    /// port chosen by the system: see [`Gateway::http_addr`] and [`Gateway::https_addr`].
    pub fn bind(runtime: Arc<Runtime>) -> Result<Self, GatewayError> {
        let snapshot = runtime.snapshot();
        let listen = snapshot.config.listen.clone();
        let conf = Arc::new(ServerConf::default());
        let limits = snapshot.config.limits.clone();
        let upstreams = LeaseConnector::new(Arc::clone(&runtime));
        // Pingora puts a 64 KiB zero-filled read buffer in front of every accepted socket by
        // default: that much RSS per idle keep-alive client. rustls and Pingora's HTTP/1
        // parser buffer on their own, so the size comes from config (default: none).
        let buffers = L4BufferSettings::default().read(limits.client_read_buffer_bytes);
        // One service per listener, both on this runtime, sharing the proxy and the
        // connection slots. The HTTPS listener is plain TCP: the TLS handshake runs in
        // `DownstreamApp`, under the header deadline (see `crate::downstream`).
        let mut services = Vec::new();
        let mut sockets = Vec::new();
        let mut bound = [None, None];
        let resolver = runtime.certs.clone();
        let listeners = [
            ("postern gateway http", listen.http, None),
            ("postern gateway https", listen.https, resolver.as_ref()),
        ];
        for (i, (name, addr, tls)) in listeners.into_iter().enumerate() {
            let Some(addr) = addr else { continue };
            let acceptor = match tls {
                Some(resolver) => Some(tls_settings(Arc::clone(resolver))?.build()),
                None => None,
            };
            let socket = bind(addr)?;
            // Pingora finds the socket by address string: the bound one, which is unique
            // (both listeners may be configured on port 0).
            let local = socket
                .local_addr()
                .map_err(|source| GatewayError::Listen { addr, source })?;
            bound[i] = Some(local);
            sockets.push((local, socket));
            let front = Arc::new(DownstreamApp::new(acceptor, Arc::clone(&runtime)));
            let proxy = GatewayProxy {
                runtime: Arc::clone(&runtime),
                upstreams: upstreams.clone(),
            };
            let mut service = ProxyServiceBuilder::new(&conf, proxy)
                .name(name)
                .server_options(server_options(&limits))
                .custom(upstreams.clone(), accept_with(front))
                .build();
            if let Some(proxy) = service.app_logic_mut() {
                proxy.h2_options = Some(h2_options(&limits));
            }
            service.add_listener(ListenerConfig::tcp(local.to_string()).l4_buffer(buffers));
            services.push(service);
        }
        let [http, https] = bound;
        let metrics_config = &snapshot.config.metrics;
        let metrics = if metrics_config.enabled {
            let socket = bind(metrics_config.listen)?;
            let addr = metrics_config.listen;
            Some(
                tokio::net::TcpListener::from_std(socket)
                    .map_err(|source| GatewayError::Listen { addr, source })?,
            )
        } else {
            None
        };
        Ok(Self {
            runtime,
            services,
            fds: inherited_fds(sockets),
            http,
            https,
            metrics,
        })
    }

    /// The metrics listener's address, if it is enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The plain HTTP listener's address, if one is configured.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    /// The HTTPS listener's address, if one is configured.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https
    }

    /// Serves until `shutdown` turns true, then drains open connections for up to
    /// `limits.shutdown_grace`.
    pub async fn serve(self, shutdown: watch::Receiver<bool>) {
        let Self {
            runtime,
            mut services,
            fds,
            metrics,
            ..
        } = self;
        if let Some(listener) = metrics {
            tokio::spawn(crate::endpoints::serve_metrics(
                listener,
                Arc::clone(&runtime),
                shutdown.clone(),
            ));
        }
        futures::future::join_all(
            services
                .iter_mut()
                .map(|service| service.start_service(Some(fds.clone()), shutdown.clone(), 1)),
        )
        .await;
        // The listeners have stopped. Idle connections close on the shutdown signal; requests
        // and streams in flight get `shutdown_grace` to finish, each holding its connection
        // slot.
        let open = runtime.connections.open();
        let grace = runtime.snapshot().config.limits.shutdown_grace;
        if !runtime.connections.drained(grace).await {
            tracing::warn!(
                open = runtime.connections.open(),
                at_shutdown = open,
                "shutdown grace over: client connections still open are cut"
            );
        }
    }
}

/// Binds the gateway's listeners and serves until `shutdown` turns true.
pub async fn serve(
    runtime: Arc<Runtime>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), GatewayError> {
    Gateway::bind(runtime)?.serve(shutdown).await;
    Ok(())
}

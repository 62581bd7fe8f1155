//! What happens to an accepted client connection before Pingora's HTTP proxy reads a request
//! from it: the connection cap, the TLS handshake, the header deadline, and the HTTP/1
//! keep-alive loop.
//!
//! * **Connection caps.** At most `limits.max_connections` client connections are open at
//!   once, across both listeners, and `limits.max_connections_per_ip` from one client
//!   ([`crate::connections`]). One over a cap is closed at accept, before any TLS work, so a
//!   flood of connections costs a socket and a refusal each, never unbounded memory.
//! * **TLS handshake, bounded by config.** Pingora's listener gives the handshake a fixed 60 s,
//!   which no setting changes: a client that connects and sends nothing, or half a
//!   ClientHello, would hold a connection (and a slot) for a minute. The HTTPS listener is
//!   therefore a plain TCP listener, and the handshake runs here with Pingora's own rustls
//!   acceptor (the same `TlsSettings`: SNI, TLS 1.2+, ALPN), under the header deadline:
//!   `request_header_timeout` from accept covers the handshake and the first request head
//!   together, as its config docs say.
//! * **Header deadline**: every connection is wrapped in a [`HeaderDeadlineStream`] armed for
//!   what is left of that time (see [`crate::header_deadline`]).
//! * **A task per connection.** The connection is served on a task of its own and Pingora's
//!   accept task ends at once; nothing in Pingora waits on it, and shutdown reaches the
//!   connection through the shutdown signal as before; the server waits for the slots to
//!   come back, up to `limits.shutdown_grace`, before the gateway exits. The TLS handshake's
//!   state is boxed and freed when the handshake ends, so an open connection never carries it.
//! * **HTTP/1 keep-alive loop**: Pingora's own loop (`ServerApp for HttpServerApp`), with one
//!   difference: between two requests it reads the next head itself, whole
//!   (`HeaderDeadlineStream::wait_for_head`), and only then builds Pingora's session and
//!   request future. An idle keep-alive connection so holds the socket, TLS state and a
//!   one-byte read — not Pingora's ~12 KiB of per-request session and future — and a head that
//!   never completes ends here, at debug level, not in Pingora's `error` log. (Pipelining,
//!   which would need the carried-over bytes, is never enabled in this gateway.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connections::ConnectionSlot;
use crate::header_deadline::HeaderDeadlineStream;
use crate::runtime::Runtime;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;

/// Serves the connections accepted by one listener with an HTTP application (Pingora's proxy,
/// handed over per connection by the proxy's custom-session hook: see `crate::server`).
pub struct DownstreamApp {
    /// Pingora's rustls acceptor for an HTTPS listener; `None` for plain HTTP.
    tls: Option<Arc<Acceptor>>,
    /// The connection slots, and the limits of the snapshot in force at each accept.
    runtime: Arc<Runtime>,
}

impl DownstreamApp {
    pub fn new(tls: Option<Acceptor>, runtime: Arc<Runtime>) -> Self {
        Self {
            tls: tls.map(Arc::new),
            runtime,
        }
    }

    /// Takes an accepted connection: refused at once over a connection cap, else served by
    /// `app` on a task of its own (see the module docs).
    pub fn accept<A: HttpServerApp + Send + Sync + 'static>(
        self: &Arc<Self>,
        app: Arc<A>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) {
        let accepted = Instant::now();
        let limits = &self.runtime.snapshot().config.limits;
        let (header_timeout, max_header_bytes) =
            (limits.request_header_timeout, limits.max_header_bytes);
        let ip = session
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let slot = match self
            .runtime
            .connections
            .try_acquire(ip, limits.max_connections_per_ip)
        {
            Ok(slot) => slot,
            Err(why) => {
                tracing::debug!(?why, "client connection refused at accept");
                return;
            }
        };
        let front = Arc::clone(self);
        let shutdown = shutdown.clone();
        let limits = AcceptLimits {
            accepted,
            header_timeout,
            max_header_bytes,
        };
        tokio::spawn(async move { front.serve(&app, session, limits, slot, &shutdown).await });
    }
}

/// The limits a connection is accepted under (from the snapshot in force then).
#[derive(Debug, Clone, Copy)]
struct AcceptLimits {
    accepted: Instant,
    header_timeout: Duration,
    /// Most bytes an HTTP/1 request head may take (`limits.max_header_bytes`).
    max_header_bytes: usize,
}

impl DownstreamApp {
    /// Serves one accepted connection to its end; its slot is given back when this returns.
    async fn serve<A: HttpServerApp + Send + Sync + 'static>(
        &self,
        app: &Arc<A>,
        session: Stream,
        limits: AcceptLimits,
        _slot: ConnectionSlot,
        shutdown: &ShutdownWatch,
    ) {
        let session = match &self.tls {
            None => session,
            Some(acceptor) => match self.tls_handshake(acceptor, session, limits).await {
                Some(tls) => tls,
                None => return,
            },
        };
        let left = limits
            .header_timeout
            .saturating_sub(limits.accepted.elapsed());
        if matches!(session.selected_alpn_proto(), Some(ALPN::H2)) {
            let wrapped = HeaderDeadlineStream::for_h2(session, left);
            // Pingora's HTTP/2 server (the stream has negotiated h2, so the proxy's
            // `force_custom` does not apply); it hands back no stream for reuse: the
            // connection ends with this call.
            app.process_new(Box::new(wrapped), shutdown).await;
            return;
        }
        let wrapped = HeaderDeadlineStream::new(session, limits.max_header_bytes);
        wrapped.arm(left);
        self.serve_http1(app, Box::new(wrapped), shutdown).await;
    }

    /// The TLS handshake on an accepted TCP connection, within the header deadline.
    async fn tls_handshake(
        &self,
        acceptor: &Acceptor,
        session: Stream,
        limits: AcceptLimits,
    ) -> Option<Stream> {
        // Always a TCP stream: the HTTPS listener is a plain TCP listener (module docs).
        let Ok(tcp) = session.into_any().downcast::<TcpStream>() else {
            tracing::warn!("HTTPS listener handed over something other than a TCP stream");
            return None;
        };
        // Boxed: the handshake's state is large and lives only as long as the handshake.
        let handshake = Box::pin(acceptor.tls_handshake(*tcp));
        let left = limits
            .header_timeout
            .saturating_sub(limits.accepted.elapsed());
        match tokio::time::timeout(left, handshake).await {
            Ok(Ok(tls)) => Some(Box::new(tls)),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!("TLS handshake not complete before the header deadline");
                None
            }
        }
    }

    /// Pingora's HTTP/1 keep-alive loop (`ServerApp for HttpServerApp`), reading each head whole
    /// before a session is built (see `crate::header_deadline`).
    async fn serve_http1<A: HttpServerApp + Send + Sync + 'static>(
        &self,
        app: &Arc<A>,
        mut stream: Box<HeaderDeadlineStream>,
        shutdown: &ShutdownWatch,
    ) {
        let mut persistent: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            let mut closing = shutdown.clone();
            // An idle connection is closed when the server starts shutting down.
            let arrived = tokio::select! {
                biased;
                arrived = stream.wait_for_head() => arrived,
                Ok(()) = closing.changed() => return,
            };
            match arrived {
                Ok(true) => {}
                Ok(false) => return,
                // A client's doing (slow, oversized or abandoned head): not a gateway error.
                Err(e) => return tracing::debug!(error = %e, "request head not read"),
            }
            let mut session = ServerSession::new_http1(stream);
            if first {
                let shutting_down = *shutdown.borrow();
                session.set_keepalive((!shutting_down).then_some(PINGORA_KEEPALIVE_SECS));
                session.set_keepalive_reuses_remaining(
                    app.server_options().and_then(|o| o.keepalive_request_limit),
                );
                first = false;
            } else if let Some(settings) = persistent.take() {
                settings.apply_to_session(&mut session);
            }
            let Some(reused) = app.process_new_http(session, shutdown).await else {
                return;
            };
            let (next, settings) = reused.consume();
            // Always ours: Pingora hands back the stream it was given.
            let Ok(next) = next.into_any().downcast::<HeaderDeadlineStream>() else {
                return;
            };
            stream = next;
            persistent = settings;
        }
    }
}

/// The per-read keep-alive timeout Pingora sets on a new HTTP/1 session; the gateway's own
/// keep-alive bound is the header deadline, set again when each request ends.
const PINGORA_KEEPALIVE_SECS: u64 = 60;

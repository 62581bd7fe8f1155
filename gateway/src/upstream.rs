//! The upstream of a lease: one multiplexed HTTP/2 connection per lease session, one HTTP/2
//! stream per request, driven by Pingora's own proxy loop.
//!
//! **The seam.** Pingora 0.9.1 cannot reuse a virtual upstream connection (#883), so it is
//! handed one it never pools: [`LeaseConnector`] is Pingora's custom upstream connector
//! (`connectors::http::custom::Connector`, `#[doc(hidden)]`, hence the exact version pin in
//! the workspace manifest) and owns the pool itself. The request path picks it by giving the
//! peer the custom ALPN [`PEER_ALPN`] and the lease's name as its `sni`
//! ([`LeaseConnector::peer`]); Pingora then asks this module for a session, drives it with
//! its ordinary phases (filters, body duplex, trailers), and hands it back when the request
//! is done.
//!
//! **The connection.** A lease's HTTP/2 connection is Pingora's own HTTP/2 client
//! (`connectors::http::v2::handshake`, `Http2Session`) on one inner stream of the lease's E2EE
//! session ([`crate::connector::plain_stream`]): no relay round trip, handshake or socket
//! per request, and nothing spawned per request. A second connection to the lease opens only
//! when every open one is out of streams (`[upstream] max_streams_per_connection`, or fewer
//! if the agent says so), up to `max_connections_per_lease`; past that a request waits for a
//! stream, bounded by the lease's connect timeout. A connection without a request for
//! `[upstream] idle_timeout` is closed. When the E2EE session dies its connections fail: the
//! requests in flight on them get 502 (or the status that already went out), and the next
//! request finds them closed and opens a new one, which re-establishes the session.
//!
//! **Isolation.** Pools are per lease name and pinned owner key: two leases never share a
//! connection, and a lease whose owner key changed on reload starts a new pool.
//!
//! **Which protocol.** The gateway offers `http/1.1` and `h2` in the E2EE handshake; the
//! agent picks (the `expose` agent picks `h2`). A lease whose session agreed on anything but
//! `h2`, or every lease with `[upstream] protocol = "http1"`, is served over HTTP/1 on a new
//! inner stream per request ([`crate::connector`]); so are WebSocket upgrades, which the
//! request path routes there directly: a long-lived stream pays its setup once, and Pingora
//! does not speak extended CONNECT (RFC 8441).
//!
//! **Per request** the session applies what Pingora's HTTP/2 client does not: the lease's head
//! timeout (from the last byte sent to the first of the response head, then `ReadTimedout`,
//! answered 504), the request body limit (the stream is reset and the request answered 413),
//! and the HTTP/2 rules on connection-specific fields (RFC 9113 §8.2.2).
//!
//! This module never decides policy (that is the request path's) and never blocks a request
//! without a bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream as FuturesStream;
use http::HeaderMap;
use parking_lot::Mutex;
use pingora::connectors::http::custom::{Connection, Connector};
use pingora::connectors::http::v2::{handshake, ConnectionRef, H2HandshakeSettings};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::custom::client::Session;
use pingora::protocols::http::custom::{BodyWrite, CustomMessageWrite};
use pingora::protocols::http::v2::client::Http2Session;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::tls::CustomALPN;
use pingora::protocols::{Digest, UniqueIDType, ALPN};
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error, ErrorType, OkOrErr, OrErr};
use postern_config::UpstreamProtocol;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::connector;
use crate::runtime::Runtime;
use crate::snapshot::LeaseRoute;

/// The ALPN that sends a peer to [`LeaseConnector`] rather than to Pingora's own connectors.
pub const PEER_ALPN: &[u8] = b"postern-lease";

/// What the gateway offers in a lease's E2EE handshake when the lease's config names nothing:
/// HTTP/1.1 first, so that a service that states no preference gets what every HTTP server
/// speaks; an agent that serves both picks `h2` (the responder's preference decides).
pub const OFFERED_ALPN: [&str; 2] = ["http/1.1", "h2"];

/// The config's bound on `[upstream] max_connections_per_lease`.
const MAX_CONNECTIONS_PER_LEASE: usize = 64;

/// Pingora's custom upstream connector: the per-lease HTTP/2 pools. Cheap to clone.
#[derive(Clone)]
pub struct LeaseConnector {
    inner: Arc<Pools>,
}

struct Pools {
    runtime: Arc<Runtime>,
    leases: Mutex<HashMap<String, Arc<LeasePool>>>,
}

/// One lease's HTTP/2 connections.
struct LeasePool {
    /// The owner key the connections were opened to.
    owner: [u8; 32],
    conns: Mutex<Vec<Arc<PooledConn>>>,
    /// One connection is opened at a time; requests arriving meanwhile wait for it and then
    /// take streams on it.
    opening: tokio::sync::Mutex<()>,
    /// A stream was given back (or a connection closed): a waiting request may go on.
    released: Notify,
    /// The lease's session agreed on HTTP/1.1: its requests take the HTTP/1 path.
    http1: AtomicBool,
}

/// One HTTP/2 connection of a lease, with when it was last used.
struct PooledConn {
    conn: ConnectionRef,
    last_used: Mutex<Instant>,
    /// `postern_upstream_h2_connections` of the lease, held up while this lives.
    open: prometheus::IntGauge,
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl std::fmt::Debug for LeaseConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let leases = self.inner.leases.lock();
        f.debug_struct("LeaseConnector")
            .field("leases", &leases.len())
            .finish()
    }
}

impl LeaseConnector {
    /// The pools, and a task that closes idle connections. Must run inside a tokio runtime.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        let inner = Arc::new(Pools {
            runtime,
            leases: Mutex::new(HashMap::new()),
        });
        tokio::spawn(close_idle(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// Whether `lease`'s requests go over HTTP/2 here (else over HTTP/1, see the module docs).
    pub fn serves_h2(&self, lease: &LeaseRoute, protocol: UpstreamProtocol) -> bool {
        protocol == UpstreamProtocol::Auto
            && !self
                .inner
                .leases
                .lock()
                .get(&lease.name)
                .is_some_and(|p| p.http1.load(Ordering::Relaxed))
    }

    /// The peer that sends a request for `lease` to this connector.
    pub fn peer(lease: &LeaseRoute) -> HttpPeer {
        // A numeric placeholder address (HttpPeer::new resolves and unwraps); the lease goes
        // into `sni`, which tells this connector the lease (the peer is never TLS).
        let mut peer = HttpPeer::new(
            std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            false,
            lease.name.clone(),
        );
        peer.options.alpn = ALPN::Custom(CustomALPN::new(PEER_ALPN.to_vec()));
        peer
    }

    /// Open HTTP/2 connections to `lease` (for tests and metrics).
    pub fn connections(&self, lease: &str) -> usize {
        self.inner.leases.lock().get(lease).map_or(0, |p| p.live())
    }

    fn pool(&self, lease: &LeaseRoute) -> Arc<LeasePool> {
        let owner = lease.target.owner_identity.to_bytes();
        let mut leases = self.inner.leases.lock();
        match leases.get(&lease.name) {
            Some(pool) if pool.owner == owner => Arc::clone(pool),
            _ => {
                let pool = Arc::new(LeasePool {
                    owner,
                    conns: Mutex::new(Vec::new()),
                    opening: tokio::sync::Mutex::new(()),
                    released: Notify::new(),
                    http1: AtomicBool::new(false),
                });
                leases.insert(lease.name.clone(), Arc::clone(&pool));
                pool
            }
        }
    }

    /// A stream on one of `lease`'s connections: an open one with a free stream, else a new
    /// connection, else the first stream given back — all within the lease's connect timeout.
    async fn stream(
        &self,
        lease: &Arc<LeaseRoute>,
    ) -> pingora::Result<(Connection<LeaseStream>, bool)> {
        let snap = self.inner.runtime.snapshot();
        let settings = &snap.config.upstream;
        let deadline = Instant::now() + lease.connect_timeout;
        let pool = self.pool(lease);
        let timed_out = || {
            Error::explain(
                ErrorType::ConnectTimedout,
                format!("no HTTP/2 stream to lease {} in time", lease.name),
            )
        };
        loop {
            let released = pool.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some((stream, conn)) = pool.free_stream().await {
                let session = LeaseStream::new(stream, conn, &pool, lease, &snap.config);
                return Ok((Connection::Session(session), true));
            }
            if pool.live() < settings.max_connections_per_lease {
                let opening = tokio::time::timeout_at(deadline, pool.opening.lock())
                    .await
                    .map_err(|_| timed_out())?;
                // Someone may have opened one while this request waited for its turn.
                if let Some((stream, conn)) = pool.free_stream().await {
                    let session = LeaseStream::new(stream, conn, &pool, lease, &snap.config);
                    return Ok((Connection::Session(session), true));
                }
                if pool.live() < settings.max_connections_per_lease {
                    let opened = tokio::time::timeout_at(deadline, self.open(lease, &pool))
                        .await
                        .map_err(|_| timed_out())??;
                    drop(opening);
                    return Ok(match opened {
                        Opened::H2(stream, conn) => {
                            let session =
                                LeaseStream::new(stream, conn, &pool, lease, &snap.config);
                            (Connection::Session(session), false)
                        }
                        Opened::Http1(stream) => (Connection::Stream(Box::new(stream)), false),
                    });
                }
            }
            tokio::time::timeout_at(deadline, released)
                .await
                .map_err(|_| timed_out())?;
        }
    }

    /// Opens a connection to `lease`: an inner stream of its E2EE session, and an HTTP/2
    /// handshake on it when the session agreed on `h2`.
    async fn open(&self, lease: &LeaseRoute, pool: &LeasePool) -> pingora::Result<Opened> {
        let runtime = &self.inner.runtime;
        let (stream, alpn) = runtime
            .dialer
            .dial_negotiated(&lease.target)
            .await
            .map_err(|e| {
                Error::because(
                    ErrorType::ConnectError,
                    format!("dialing lease {}", lease.name),
                    e,
                )
            })?;
        if alpn.as_deref() != Some("h2") {
            pool.http1.store(true, Ordering::Relaxed);
            let head = (lease.head_timeout, Arc::new(AtomicBool::new(false)));
            return Ok(Opened::Http1(connector::http1_stream(stream, None, head)));
        }
        pool.http1.store(false, Ordering::Relaxed);
        let settings = &runtime.snapshot().config.upstream;
        let mut h2 = H2HandshakeSettings::new();
        h2.max_streams = settings.max_streams_per_connection;
        h2.stream_window_size = Some(settings.stream_window_bytes);
        h2.connection_window_size = Some(settings.connection_window_bytes);
        let conn = handshake(Box::new(connector::plain_stream(stream)), h2).await?;
        let stream = conn.spawn_stream().await?.or_err(
            ErrorType::H2Error,
            "a new HTTP/2 connection to the lease has no free stream",
        )?;
        lease.metrics.h2_connections_opened.inc();
        lease.metrics.h2_connections.inc();
        let pooled = Arc::new(PooledConn {
            conn,
            last_used: Mutex::new(Instant::now()),
            open: lease.metrics.h2_connections.clone(),
        });
        pool.conns.lock().push(Arc::clone(&pooled));
        tracing::debug!(lease = %lease.name, "http/2 connection to the lease opened");
        Ok(Opened::H2(stream, pooled))
    }
}

enum Opened {
    H2(Http2Session, Arc<PooledConn>),
    Http1(pingora::protocols::l4::stream::Stream),
}

impl LeasePool {
    /// How many connections are neither closed nor shutting down (the others are dropped).
    fn live(&self) -> usize {
        let mut conns = self.conns.lock();
        conns.retain(|c| !c.conn.is_closed() && !c.conn.is_shutting_down());
        conns.len()
    }

    /// A new stream on an open connection with room for one (the first such connection, so
    /// that the others drain and close when idle).
    async fn free_stream(&self) -> Option<(Http2Session, Arc<PooledConn>)> {
        // Each failed try retires a connection or loses a race for its last stream: bounded.
        for _ in 0..2 * MAX_CONNECTIONS_PER_LEASE {
            let pooled = {
                let mut conns = self.conns.lock();
                conns.retain(|c| !c.conn.is_closed() && !c.conn.is_shutting_down());
                conns
                    .iter()
                    .find(|c| c.conn.more_streams_allowed())
                    .cloned()
            }?;
            match pooled.conn.spawn_stream().await {
                Ok(Some(stream)) => return Some((stream, pooled)),
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "http/2 connection to a lease refused a stream");
                    pooled.conn.mark_shutdown();
                }
            }
        }
        None
    }
}

/// Closes connections that have had no request for `[upstream] idle_timeout`, and forgets the
/// pools of leases that have none left.
async fn close_idle(pools: Weak<Pools>) {
    loop {
        let period = match pools.upgrade() {
            Some(p) => (p.runtime.snapshot().config.upstream.idle_timeout / 4)
                .clamp(Duration::from_millis(100), Duration::from_secs(15)),
            None => return,
        };
        tokio::time::sleep(period).await;
        let Some(pools) = pools.upgrade() else { return };
        let idle = pools.runtime.snapshot().config.upstream.idle_timeout;
        let mut leases = pools.leases.lock();
        leases.retain(|name, pool| {
            let mut conns = pool.conns.lock();
            conns.retain(|c| {
                let expired = c.conn.is_idle() && c.last_used.lock().elapsed() >= idle;
                if expired {
                    tracing::debug!(lease = %name, "idle http/2 connection to the lease closed");
                }
                !expired && !c.conn.is_closed()
            });
            // A pool that still says "HTTP/1" stays, so that the lease's requests keep
            // skipping it, until the lease's session is gone.
            !conns.is_empty() || (pool.http1.load(Ordering::Relaxed) && Arc::strong_count(pool) > 1)
        });
    }
}

#[async_trait]
impl Connector for LeaseConnector {
    type Session = LeaseStream;

    async fn get_http_session<P: Peer + Send + Sync + 'static>(
        &self,
        peer: &P,
    ) -> pingora::Result<(Connection<LeaseStream>, bool)> {
        let snap = self.inner.runtime.snapshot();
        let lease = snap.lease(peer.sni()).cloned().ok_or_else(|| {
            Error::explain(ErrorType::ConnectError, "the lease is no longer configured")
        })?;
        self.stream(&lease).await
    }

    /// Reuse is this connector's own business: [`Connector::get_http_session`] takes a
    /// stream on an open connection first.
    async fn reused_http_session<P: Peer + Send + Sync + 'static>(
        &self,
        _peer: &P,
    ) -> Option<LeaseStream> {
        None
    }

    async fn release_http_session<P: Peer + Send + Sync + 'static>(
        &self,
        mut session: LeaseStream,
        _peer: &P,
        _idle_timeout: Option<Duration>,
    ) {
        // A stream that did not finish both ways is reset, never left half open.
        if !session.h2.response_finished() {
            session.h2.shutdown();
        }
        drop(session);
    }
}

/// When the last byte went to the lease, for the head timeout.
type WriteClock = Arc<Mutex<Instant>>;

/// One request on a lease's HTTP/2 connection: Pingora's `Http2Session` with the lease's head
/// timeout, the request body limit and the HTTP/2 field rules (see the module docs).
pub struct LeaseStream {
    h2: Http2Session,
    conn: Arc<PooledConn>,
    pool: Weak<LeasePool>,
    /// The lease's name (the authority of a request that names none).
    lease: String,
    head_timeout: Duration,
    idle_timeout: Option<Duration>,
    max_body: u64,
    last_write: WriteClock,
    /// The request body's writer, from the head's write until Pingora takes it.
    body: Option<LeaseBodyWriter>,
}

impl LeaseStream {
    fn new(
        h2: Http2Session,
        conn: Arc<PooledConn>,
        pool: &Arc<LeasePool>,
        lease: &LeaseRoute,
        config: &postern_config::GatewayConfig,
    ) -> Self {
        *conn.last_used.lock() = Instant::now();
        Self {
            h2,
            conn,
            pool: Arc::downgrade(pool),
            lease: lease.name.clone(),
            head_timeout: lease.head_timeout,
            idle_timeout: None,
            max_body: config.limits.max_request_body_bytes,
            last_write: Arc::new(Mutex::new(Instant::now())),
            body: None,
        }
    }
}

impl Drop for LeaseStream {
    fn drop(&mut self) {
        *self.conn.last_used.lock() = Instant::now();
        if let Some(pool) = self.pool.upgrade() {
            // `h2` is dropped after this, freeing its slot; the waiter re-checks in a loop.
            pool.released.notify_one();
        }
    }
}

/// Fields HTTP/2 forbids (RFC 9113 §8.2.2), besides those the request path already removed as
/// hop-by-hop: the HTTP/1 framing fields Pingora kept for the client's hop.
fn strip_connection_fields(req: &mut RequestHeader) {
    for name in [
        http::header::CONNECTION,
        http::header::TRANSFER_ENCODING,
        http::header::UPGRADE,
        http::HeaderName::from_static("keep-alive"),
        http::HeaderName::from_static("proxy-connection"),
    ] {
        req.remove_header(&name);
    }
    let te_trailers = req
        .headers
        .get(http::header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_trailers {
        req.remove_header(&http::header::TE);
    }
}

#[async_trait]
impl Session for LeaseStream {
    async fn write_request_header(
        &mut self,
        mut req: Box<RequestHeader>,
        end: bool,
    ) -> pingora::Result<()> {
        strip_connection_fields(&mut req);
        // HTTP/2 needs an authority; an HTTP/1.0 request may come without `Host`. The agent
        // rewrites `Host` to its target unless told to keep it; then the lease's name is the
        // host the request was sent to.
        if !req.headers.contains_key(http::header::HOST) && req.uri.authority().is_none() {
            req.insert_header(http::header::HOST, self.lease.as_str())?;
        }
        self.h2.write_request_header(req, end)?;
        *self.last_write.lock() = Instant::now();
        let send = self.h2.take_request_body_writer();
        self.body = send.map(|send| LeaseBodyWriter {
            send,
            ended: end,
            written: 0,
            max: self.max_body,
            write_timeout: self.h2.write_timeout,
            last_write: Arc::clone(&self.last_write),
        });
        Ok(())
    }

    async fn write_request_body(&mut self, mut data: Bytes, end: bool) -> pingora::Result<()> {
        let body = self
            .body
            .as_mut()
            .or_err(ErrorType::WriteError, "request body before its head")?;
        body.write_all_buf(&mut data).await?;
        if end {
            body.finish().await?;
        }
        Ok(())
    }

    async fn finish_request_body(&mut self) -> pingora::Result<()> {
        match self.body.as_mut() {
            Some(body) => body.finish().await,
            None => Ok(()),
        }
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.idle_timeout = timeout;
        self.h2.read_timeout = timeout;
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.h2.write_timeout = timeout;
        if let Some(body) = self.body.as_mut() {
            body.write_timeout = timeout;
        }
    }

    /// Waits for the response head no longer than the lease's head timeout after the last
    /// byte sent (a long upload restarts it); then `ReadTimedout`, which the request path
    /// answers 504.
    async fn read_response_header(&mut self) -> pingora::Result<()> {
        // The idle timeout bounds the body; the head has the head timeout.
        self.h2.read_timeout = None;
        let clock = Arc::clone(&self.last_write);
        let head_timeout = self.head_timeout;
        let result = {
            let read = self.h2.read_response_header();
            tokio::pin!(read);
            loop {
                let deadline = *clock.lock() + head_timeout;
                tokio::select! {
                    result = &mut read => break result,
                    () = tokio::time::sleep_until(deadline) => {
                        if *clock.lock() + head_timeout <= Instant::now() {
                            break Err(Error::explain(
                                ErrorType::ReadTimedout,
                                "no response head from the lease within its head timeout",
                            ));
                        }
                    }
                }
            }
        };
        self.h2.read_timeout = self.idle_timeout;
        result
    }

    async fn read_response_body(&mut self) -> pingora::Result<Option<Bytes>> {
        self.h2.read_response_body().await
    }

    fn response_finished(&self) -> bool {
        self.h2.response_finished()
    }

    async fn shutdown(&mut self, _code: u32, _ctx: &str) {
        self.h2.shutdown();
    }

    fn response_header(&self) -> Option<&ResponseHeader> {
        self.h2.response_header()
    }

    fn was_upgraded(&self) -> bool {
        false
    }

    fn digest(&self) -> Option<&Digest> {
        self.h2.digest()
    }

    fn digest_mut(&mut self) -> Option<&mut Digest> {
        self.h2.digest_mut()
    }

    fn server_addr(&self) -> Option<&SocketAddr> {
        self.h2.server_addr()
    }

    fn client_addr(&self) -> Option<&SocketAddr> {
        self.h2.client_addr()
    }

    async fn read_trailers(&mut self) -> pingora::Result<Option<HeaderMap>> {
        self.h2.read_trailers().await
    }

    fn fd(&self) -> UniqueIDType {
        self.h2.fd()
    }

    async fn check_response_end_or_error(&mut self, _headers: bool) -> pingora::Result<bool> {
        self.h2.check_response_end_or_error()
    }

    fn take_request_body_writer(&mut self) -> Option<Box<dyn BodyWrite>> {
        self.body
            .take()
            .map(|body| Box::new(body) as Box<dyn BodyWrite>)
    }

    async fn finish_custom(&mut self) -> pingora::Result<()> {
        Ok(())
    }

    /// A lease speaks plain HTTP: no custom messages either way.
    fn take_custom_message_reader(
        &mut self,
    ) -> Option<Box<dyn FuturesStream<Item = pingora::Result<Bytes>> + Unpin + Send + Sync + 'static>>
    {
        Some(Box::new(futures::stream::empty()))
    }

    async fn drain_custom_messages(&mut self) -> pingora::Result<()> {
        Ok(())
    }

    fn take_custom_message_writer(&mut self) -> Option<Box<dyn CustomMessageWrite>> {
        Some(Box::new(()))
    }
}

/// The request body's way to the lease: HTTP/2 flow control (a write waits for the lease's
/// window, bounded by the write timeout), the body limit, and the head clock's restart.
struct LeaseBodyWriter {
    send: h2::SendStream<Bytes>,
    ended: bool,
    written: u64,
    max: u64,
    write_timeout: Option<Duration>,
    last_write: WriteClock,
}

#[async_trait]
impl BodyWrite for LeaseBodyWriter {
    async fn write_all_buf(&mut self, data: &mut Bytes) -> pingora::Result<()> {
        if self.ended || data.is_empty() {
            data.clear();
            return Ok(());
        }
        self.written = self.written.saturating_add(data.len() as u64);
        if self.written > self.max {
            // The lease must not wait for the rest of a body that will never come.
            self.send.send_reset(h2::Reason::CANCEL);
            self.ended = true;
            return Err(Error::explain(
                ErrorType::HTTPStatus(413),
                "request body too large",
            ));
        }
        let chunk = data.split_to(data.len());
        pingora::protocols::http::v2::write_body(&mut self.send, chunk, false, self.write_timeout)
            .await?;
        *self.last_write.lock() = Instant::now();
        Ok(())
    }

    async fn finish(&mut self) -> pingora::Result<()> {
        if self.ended {
            return Ok(());
        }
        self.ended = true;
        self.send.send_data(Bytes::new(), true).or_err(
            ErrorType::WriteError,
            "ending the request body to the lease",
        )?;
        *self.last_write.lock() = Instant::now();
        Ok(())
    }

    async fn cleanup(&mut self) -> pingora::Result<()> {
        Ok(())
    }

    fn upgrade_body_writer(&mut self) {}
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn connection_fields_go_and_te_trailers_stays() {
        let mut req = RequestHeader::build("POST", b"/grpc", None).unwrap();
        for (name, value) in [
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("content-type", "application/grpc"),
        ] {
            req.insert_header(name, value).unwrap();
        }
        strip_connection_fields(&mut req);
        let mut names: Vec<&str> = req.headers.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "te"]);

        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("te", "gzip").unwrap();
        strip_connection_fields(&mut req);
        assert!(req.headers.get("te").is_none());
    }
}

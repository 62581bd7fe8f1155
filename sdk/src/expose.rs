//! `postern expose`: forward each decrypted stream of a [`Listener`] to a local service.
//!
//! * `http://host:port` — every stream is served as HTTP/1.1 or HTTP/2 (whatever the dialer
//!   speaks) and each request is forwarded with a pooled hyper keep-alive client over
//!   TCP_NODELAY sockets; `h2c://host:port` forwards over HTTP/2 without TLS instead (gRPC
//!   servers, with their trailers). `Host` is rewritten to the local target by default (local dev servers often
//!   reject foreign hosts). Bodies stream both ways without buffering; `Upgrade` requests
//!   (WebSocket) are spliced after the `101`.
//! * `tcp://host:port` — bytes are copied both ways, nothing is interpreted.
//!
//! The origin's failures become `502`; nothing here panics on what a dialer sends.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::listener::{Listener, PosternStream};

/// What `expose` forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An HTTP origin, `host:port`; `h2`: it speaks HTTP/2 without TLS (h2c, e.g. a gRPC
    /// server), else HTTP/1.1.
    Http {
        authority: String,
        keep_host: bool,
        h2: bool,
    },
    /// A raw TCP service, `host:port`.
    Tcp { addr: String },
}

/// A target URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("target {0:?}: expected http://host:port, h2c://host:port or tcp://host:port")]
pub struct TargetError(String);

impl Target {
    pub fn parse(url: &str, keep_host: bool) -> Result<Self, TargetError> {
        let bad = || TargetError(url.to_owned());
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') || !authority.contains(':') {
            return Err(bad());
        }
        authority
            .parse::<http::uri::Authority>()
            .map_err(|_| bad())?;
        match scheme {
            "http" | "h2c" => Ok(Self::Http {
                authority: authority.to_owned(),
                keep_host,
                h2: scheme == "h2c",
            }),
            "tcp" => Ok(Self::Tcp {
                addr: authority.to_owned(),
            }),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http {
                authority,
                h2: true,
                ..
            } => write!(f, "h2c://{authority}"),
            Self::Http { authority, .. } => write!(f, "http://{authority}"),
            Self::Tcp { addr } => write!(f, "tcp://{addr}"),
        }
    }
}

/// Forwarding limits.
#[derive(Debug, Clone)]
pub struct ExposeOptions {
    /// How long the origin may take to answer with response headers.
    pub response_header_timeout: Duration,
    /// How long a dialer may take to send request headers.
    pub request_header_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_header_bytes: usize,
    /// Most fields a request head from the gateway may carry: the gateway's own
    /// `limits.max_header_count` (what it accepts from clients) plus
    /// [`GATEWAY_ADDED_FIELDS`], so that a request the gateway accepts is never refused here
    /// (hyper's default of about 100 would be an invisible second limit).
    pub max_header_count: usize,
}

/// Fields the gateway may add to a request before it reaches the agent (`X-Forwarded-For`,
/// `-Proto`, `-Host`, `X-Request-Id`, `Connection`, `Host`) with room to spare.
pub const GATEWAY_ADDED_FIELDS: usize = 10;

/// The gateway's default `limits.max_header_count`.
pub const DEFAULT_MAX_HEADER_COUNT: usize = 100;

impl Default for ExposeOptions {
    fn default() -> Self {
        Self {
            response_header_timeout: Duration::from_secs(120),
            request_header_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_header_bytes: 64 * 1024,
            max_header_count: DEFAULT_MAX_HEADER_COUNT + GATEWAY_ADDED_FIELDS,
        }
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

struct HttpForwarder {
    client: Client<HttpConnector, Incoming>,
    /// The origin speaks HTTP/2 (h2c).
    h2: bool,
    authority: String,
    host: HeaderValue,
    keep_host: bool,
    opts: ExposeOptions,
}

/// Where each stream goes, by its lease.
enum Route {
    Http(Arc<HttpForwarder>),
    Tcp(String),
}

/// The pooled clients to origins: HTTP/1.1 keep-alive, and HTTP/2 for `h2c://` targets.
struct Clients {
    http1: Client<HttpConnector, Incoming>,
    h2: Client<HttpConnector, Incoming>,
}

impl Route {
    fn new(target: &Target, clients: &Clients, opts: &ExposeOptions) -> std::io::Result<Self> {
        Ok(match target {
            Target::Http {
                authority,
                keep_host,
                h2,
            } => {
                let client = if *h2 { &clients.h2 } else { &clients.http1 };
                let host = HeaderValue::from_str(authority)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                Route::Http(Arc::new(HttpForwarder {
                    client: client.clone(),
                    h2: *h2,
                    authority: authority.clone(),
                    host,
                    keep_host: *keep_host,
                    opts: opts.clone(),
                }))
            }
            Target::Tcp { addr } => Route::Tcp(addr.clone()),
        })
    }
}

/// Accepts streams from `listener` forever, forwarding each to `target`.
pub async fn serve(listener: Listener, target: Target, opts: ExposeOptions) -> std::io::Result<()> {
    serve_leases(listener, HashMap::new(), Some(target), opts).await
}

/// Accepts streams from `listener` forever, forwarding each to the target of its lease (or to
/// `default` for a lease without one). Streams for a lease with no target are closed.
pub async fn serve_leases(
    mut listener: Listener,
    targets: HashMap<String, Target>,
    default: Option<Target>,
    opts: ExposeOptions,
) -> std::io::Result<()> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(opts.connect_timeout));
    let http1 = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .pool_timer(TokioTimer::new())
        .build(connector.clone());
    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector);
    let clients = Clients { http1, h2 };
    let routes = targets
        .iter()
        .map(|(lease, t)| Ok((lease.clone(), Route::new(t, &clients, &opts)?)))
        .collect::<std::io::Result<HashMap<_, _>>>()?;
    let default = default
        .map(|t| Route::new(&t, &clients, &opts))
        .transpose()?;
    loop {
        let (stream, peer) = listener.accept().await?;
        match routes.get(&peer.lease).or(default.as_ref()) {
            Some(Route::Http(fwd)) => {
                tokio::spawn(serve_http(Arc::clone(fwd), stream));
            }
            Some(Route::Tcp(addr)) => {
                tokio::spawn(forward_tcp(stream, addr.clone(), opts.connect_timeout));
            }
            None => tracing::warn!(lease = %peer.lease, "no target for lease; stream closed"),
        }
    }
}

async fn forward_tcp(mut stream: PosternStream, addr: String, connect_timeout: Duration) {
    let origin = match tokio::time::timeout(connect_timeout, TcpStream::connect(&addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return tracing::warn!(%addr, error = %e, "origin unreachable"),
        Err(_) => return tracing::warn!(%addr, "origin connect timed out"),
    };
    let _ = origin.set_nodelay(true);
    let mut origin = origin;
    let _ = tokio::io::copy_bidirectional(&mut stream, &mut origin).await;
}

/// The protocols an HTTP target is served with inside the tunnel, in preference order: every
/// stream is told apart by its first bytes ([`serve_http`]), so the agent speaks both.
pub const HTTP_ALPN: [&str; 2] = ["h2", "http/1.1"];

/// Requests at once on the gateway's HTTP/2 connection (the gateway opens another connection
/// past what it is told here, or past its own `[upstream] max_streams_per_connection`).
const H2_MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Receive windows for request bodies, bytes: one stream's, and the connection's.
const H2_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const H2_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// The largest HTTP/2 frame the agent accepts (the gateway asks for the same).
const H2_MAX_FRAME: u32 = 64 * 1024;

/// The connection preface every HTTP/2 client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one stream as HTTP/1.1 or HTTP/2, told apart by the first bytes. Choosing the
/// protocol before building the connection (rather than with hyper-util's `auto` builder,
/// whose connection future is sized for both protocols) keeps an idle keep-alive stream small:
/// a gateway may hold thousands of them.
async fn serve_http(fwd: Arc<HttpForwarder>, mut stream: PosternStream) {
    let mut prefix = [0u8; H2_PREFACE.len()];
    let mut n = 0;
    while n < prefix.len() && prefix[..n] == H2_PREFACE[..n] {
        match tokio::time::timeout(
            fwd.opts.request_header_timeout,
            stream.read(&mut prefix[n..]),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(k)) => n += k,
        }
    }
    let h2 = prefix[..n] == H2_PREFACE[..];
    let io = TokioIo::new(Prefixed {
        prefix: Bytes::copy_from_slice(&prefix[..n]),
        inner: stream,
    });
    // hyper keeps one slot for the service's future per connection, for the connection's
    // whole life; boxed, the slot is a pointer and the request's state lives only while the
    // request does.
    let service = {
        let fwd = Arc::clone(&fwd);
        hyper::service::service_fn(move |req| {
            let fwd = Arc::clone(&fwd);
            Box::pin(async move { Ok::<_, Infallible>(forward(&fwd, req).await) })
        })
    };
    let result = if h2 {
        // The gateway's connection for all of a lease's requests: its windows bound what
        // request bodies may have in flight towards the origin (per stream, and all together,
        // larger so that one slow upload does not stall the others), and large frames keep
        // the record layer's per-record cost low.
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(fwd.opts.max_header_bytes as u32)
            .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .max_frame_size(H2_MAX_FRAME)
            .serve_connection(io, service)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(fwd.opts.request_header_timeout)
            .max_buf_size(fwd.opts.max_header_bytes.max(8192))
            .max_headers(fwd.opts.max_header_count)
            .serve_connection(io, service)
            .with_upgrades()
            .await
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "dialer http connection ended with an error");
    }
}

/// A stream whose first bytes were already read: they are handed out again before the rest.
struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An RFC 9457 problem document for a failure on the origin's side of the agent. `detail` is
/// one of this module's fixed strings; `request_id` is the caller's `X-Request-Id` (the
/// gateway's), echoed when it is a plain token that needs no JSON escaping.
fn problem(status: StatusCode, detail: &str, request_id: Option<&str>) -> Response<Body> {
    let request_id = request_id
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        })
        .map(|id| format!(",\"request_id\":\"{id}\""))
        .unwrap_or_default();
    let body = format!(
        "{{\"type\":\"https://postern.dev/problems/origin\",\"title\":\"{}\",\"status\":{},\"detail\":\"{detail}\"{request_id}}}",
        status.canonical_reason().unwrap_or(""),
        status.as_u16()
    );
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

async fn forward(fwd: &HttpForwarder, mut req: Request<Incoming>) -> Response<Body> {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let refuse = |status, detail| problem(status, detail, request_id.as_deref());
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let Ok(uri) = format!("http://{}{path}", fwd.authority).parse::<Uri>() else {
        return refuse(StatusCode::BAD_REQUEST, "request target");
    };
    // An HTTP/2 request carries its host in the URI; keep it as a Host header for HTTP/1.1.
    let original_host = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    *req.uri_mut() = uri;
    *req.version_mut() = if fwd.h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    if !fwd.keep_host {
        req.headers_mut().insert(header::HOST, fwd.host.clone());
    } else if !req.headers().contains_key(header::HOST) {
        if let Some(h) = original_host {
            req.headers_mut().insert(header::HOST, h);
        }
    }
    // The agent is a proxy too: fields about the tunnel's hop (say, the gateway's
    // `Connection: close`) must not reach the local service, or they would close the pooled
    // connection to it.
    let upgrading = req.headers().contains_key(header::UPGRADE);
    crate::hop_by_hop::strip(req.headers_mut(), upgrading);
    let upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
    let mut resp =
        match tokio::time::timeout(fwd.opts.response_header_timeout, fwd.client.request(req)).await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, origin = %fwd.authority, "origin request failed");
                return refuse(StatusCode::BAD_GATEWAY, "origin unreachable");
            }
            Err(_) => return refuse(StatusCode::GATEWAY_TIMEOUT, "origin timed out"),
        };
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    crate::hop_by_hop::strip(resp.headers_mut(), switching);
    if switching {
        if let Some(downstream) = upgrade {
            let upstream = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(downstream, upstream) {
                    Ok((d, u)) => {
                        let _ = tokio::io::copy_bidirectional(
                            &mut TokioIo::new(d),
                            &mut TokioIo::new(u),
                        )
                        .await;
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
        }
    }
    resp.map(|b| b.boxed())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    async fn problem_body(request_id: Option<&str>) -> String {
        let resp = problem(StatusCode::BAD_GATEWAY, "origin unreachable", request_id);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn problems_echo_a_plain_request_id_and_nothing_that_needs_escaping() {
        let body = problem_body(Some("0af3-b9.c_d:e")).await;
        assert!(
            body.ends_with(",\"request_id\":\"0af3-b9.c_d:e\"}"),
            "{body}"
        );
        for unsafe_id in [Some("a\"b"), Some("a\\b"), Some("a b"), Some(""), None] {
            let body = problem_body(unsafe_id).await;
            assert!(!body.contains("request_id"), "{body}");
            assert!(
                body.ends_with("\"detail\":\"origin unreachable\"}"),
                "{body}"
            );
        }
    }

    #[test]
    fn parses_targets() {
        assert_eq!(
            Target::parse("http://127.0.0.1:3000", false).unwrap(),
            Target::Http {
                authority: "127.0.0.1:3000".into(),
                keep_host: false,
                h2: false,
            }
        );
        let grpc = Target::parse("h2c://127.0.0.1:50051", true).unwrap();
        assert_eq!(
            grpc,
            Target::Http {
                authority: "127.0.0.1:50051".into(),
                keep_host: true,
                h2: true,
            }
        );
        assert_eq!(grpc.to_string(), "h2c://127.0.0.1:50051");
        assert_eq!(
            Target::parse("tcp://localhost:22/", false).unwrap(),
            Target::Tcp {
                addr: "localhost:22".into()
            }
        );
        assert!(Target::parse("https://x:1", false).is_err());
        assert!(Target::parse("http://x:1/path", false).is_err());
        assert!(Target::parse("http://x", false).is_err());
        assert!(Target::parse("127.0.0.1:80", false).is_err());
    }
}

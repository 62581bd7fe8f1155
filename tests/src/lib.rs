//! Shared harness for the end-to-end tests and benches: a real relay on 127.0.0.1:0, a control
//! plane key that signs grants, a real hyper origin, and helpers to put `expose` and a `Dialer`
//! on either side. Everything runs over real sockets on the loopback interface.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use postern_config::RelayConfig;
use postern_relay::{Relay, RelayHandle};
use postern_sdk::expose::{self, ExposeOptions, Target};
use postern_sdk::grant::{self, unix_now};
use postern_sdk::protocol::{permission, LeaseGrant, SignedGrant};
use postern_sdk::{
    Dialer, DialerConfig, Identity, LeaseSpec, LeaseTarget, Listener, ListenerConfig, RelayUrl,
};
use tokio::net::TcpListener;

pub mod gateway;
pub mod postgres;
pub mod python;
pub mod redis;
pub mod tap;

/// Installs a test log subscriber once (RUST_LOG controls it).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A control plane key and a relay that trusts it.
pub struct TestNet {
    pub control_plane: Identity,
    pub relay: RelayHandle,
    pub relay_addr: SocketAddr,
    relay_task: tokio::task::JoinHandle<()>,
}

impl TestNet {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a relay on 127.0.0.1:0 after letting `adjust` change its config.
    pub async fn start_with(adjust: impl FnOnce(&mut RelayConfig)) -> Self {
        init_logs();
        let control_plane = Identity::generate();
        Self::start_relay(control_plane, "127.0.0.1:0".parse().unwrap(), adjust).await
    }

    async fn start_relay(
        control_plane: Identity,
        addr: SocketAddr,
        adjust: impl FnOnce(&mut RelayConfig),
    ) -> Self {
        let mut cfg = RelayConfig::with_control_plane_keys(vec![control_plane.public_base64()]);
        cfg.listen.addr = addr;
        adjust(&mut cfg);
        let relay = Relay::bind(cfg).await.expect("relay binds");
        let handle = relay.handle().unwrap();
        let relay_addr = handle.local_addr();
        let relay_task = tokio::spawn(relay.run());
        Self {
            control_plane,
            relay: handle,
            relay_addr,
            relay_task,
        }
    }

    /// Kills the relay at once (a crash) and starts a fresh one on the same port with the same
    /// control plane key: nothing of the old lease table survives.
    pub async fn restart_relay(self) -> Self {
        let addr = self.relay_addr;
        self.relay.abort();
        let _ = self.relay_task.await;
        // The port may take a moment to be free again.
        for _ in 0..100 {
            if std::net::TcpListener::bind(addr).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self::start_relay(self.control_plane, addr, |_| {}).await
    }

    pub fn relay_url(&self) -> RelayUrl {
        RelayUrl::parse(&format!("ws://{}", self.relay_addr)).unwrap()
    }

    /// Writes this net's control plane key to `path` (the gateway's `[control]
    /// signing_key_file`).
    pub fn save_control_plane_key(&self, path: &std::path::Path) {
        self.control_plane.save(path).unwrap();
    }

    /// This net's control plane's public key.
    pub fn control_plane_public(&self) -> ed25519_dalek::VerifyingKey {
        self.control_plane.verifying_key()
    }

    /// A grant signed by this net's control plane.
    pub fn grant(&self, who: &Identity, pattern: &str, perms: u32, ttl: Duration) -> SignedGrant {
        grant::mint(
            &self.control_plane,
            &LeaseGrant {
                workspace: "test".into(),
                lease_pattern: pattern.into(),
                identity_key: who.verifying_key().to_bytes().to_vec(),
                issued_at_unix: unix_now(),
                expires_at_unix: unix_now() + ttl.as_secs(),
                permissions: perms,
            },
        )
    }

    pub fn listener_config(&self, owner: &Identity, lease: &str) -> ListenerConfig {
        let grants = vec![self.grant(owner, lease, permission::LISTEN, Duration::from_secs(3600))];
        let mut cfg = ListenerConfig::new(
            self.relay_url(),
            owner.clone(),
            grants,
            LeaseSpec::new(lease),
        );
        cfg.initial_backoff = Duration::from_millis(50);
        cfg.max_backoff = Duration::from_millis(500);
        cfg
    }

    /// Registers `lease` with a fresh identity; returns the identity and the listener.
    pub async fn listen(&self, lease: &str) -> (Identity, Listener) {
        let owner = Identity::generate();
        let listener = Listener::bind(self.listener_config(&owner, lease))
            .await
            .expect("lease registers");
        (owner, listener)
    }

    /// A dialer allowed to dial every lease.
    pub fn dialer(&self) -> Dialer {
        let me = Identity::generate();
        let grants = vec![self.grant(&me, "*", permission::DIAL, Duration::from_secs(3600))];
        Dialer::new(DialerConfig::new(self.relay_url(), me, grants))
    }

    /// `postern expose` for `lease` in front of `origin`, serving HTTP/2 and HTTP/1.1 inside
    /// the tunnel as the CLI's does; returns the owner identity.
    pub async fn expose(&self, lease: &str, origin: SocketAddr) -> Identity {
        let alpn = expose::HTTP_ALPN.iter().map(|a| a.to_string()).collect();
        self.expose_serving(lease, origin, alpn).await
    }

    /// `postern expose` for `lease` in front of `origin`, stating `alpn` as what it serves
    /// inside the tunnel (`vec!["http/1.1".into()]`: the gateway speaks HTTP/1 to it).
    pub async fn expose_serving(
        &self,
        lease: &str,
        origin: SocketAddr,
        alpn: Vec<String>,
    ) -> Identity {
        let owner = Identity::generate();
        let mut cfg = self.listener_config(&owner, lease);
        cfg.leases[0].alpn = alpn;
        let listener = Listener::bind(cfg).await.expect("lease registers");
        let target = Target::parse(&format!("http://{origin}"), false).unwrap();
        tokio::spawn(expose::serve(listener, target, ExposeOptions::default()));
        owner
    }
}

/// The target a dialer uses for `lease` owned by `owner`.
pub fn target(lease: &str, owner: &Identity) -> LeaseTarget {
    LeaseTarget::new(lease, owner.verifying_key())
}

type Body = BoxBody<Bytes, hyper::Error>;

/// A whole request or response body.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|n| match n {}).boxed()
}

/// A real hyper origin on 127.0.0.1:0:
/// * `GET /hello` → `hello from origin` (and echoes the Host header in `x-seen-host`)
/// * `POST /echo` → streams the request body back
/// * `POST /count` → reads the whole request body, then answers with its length
/// * `GET /headers` → the request's header names, sorted, one per line
/// * `GET /hop` → a response carrying hop-by-hop fields (`Connection: x-origin-hop`,
///   `X-Origin-Hop`, `Keep-Alive`) next to an end-to-end `X-Origin-Kept`
/// * `GET /bytes/N` → N bytes of a repeating pattern, streamed in 64 KiB chunks
pub async fn spawn_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(
                        TokioIo::new(tcp),
                        hyper::service::service_fn(origin_service),
                    )
                    .await;
            });
        }
    });
    addr
}

/// Byte `i` of the `/bytes/N` pattern.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

async fn origin_service(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let resp = if path == "/hello" {
        let host = req
            .headers()
            .get(http::header::HOST)
            .cloned()
            .unwrap_or(http::HeaderValue::from_static(""));
        let mut r = Response::new(full("hello from origin"));
        r.headers_mut().insert("x-seen-host", host);
        r
    } else if path == "/echo" {
        Response::new(req.into_body().boxed())
    } else if path == "/headers" {
        let mut names: Vec<&str> = req.headers().keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        Response::new(full(names.join("\n")))
    } else if let Some(name) = path.strip_prefix("/header/") {
        // Every value of one field, one per line, as the origin received them.
        let values: Vec<&str> = req
            .headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("<non-ascii>"))
            .collect();
        Response::new(full(values.join("\n")))
    } else if path == "/hop" {
        let mut r = Response::new(full("hop"));
        let h = r.headers_mut();
        h.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("x-origin-hop"),
        );
        h.insert("x-origin-hop", http::HeaderValue::from_static("1"));
        h.insert("keep-alive", http::HeaderValue::from_static("timeout=5"));
        h.insert("x-origin-kept", http::HeaderValue::from_static("1"));
        r
    } else if path == "/count" {
        match req.into_body().collect().await {
            Ok(body) => Response::new(full(body.to_bytes().len().to_string())),
            Err(_) => {
                let mut r = Response::new(full("body read failed"));
                *r.status_mut() = StatusCode::BAD_REQUEST;
                r
            }
        }
    } else if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        const CHUNK: u64 = 64 * 1024;
        let stream = futures::stream::iter((0..n.div_ceil(CHUNK)).map(move |c| {
            let start = c * CHUNK;
            let end = (start + CHUNK).min(n);
            let data: Vec<u8> = (start..end).map(pattern_byte).collect();
            Ok::<_, hyper::Error>(Frame::data(Bytes::from(data)))
        }));
        Response::new(BodyExt::boxed(StreamBody::new(stream)))
    } else {
        let mut r = Response::new(full("not found"));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    };
    Ok(resp)
}

/// An HTTP/1.1 client connection over any stream (e.g. one the dialer returned).
pub async fn http1_client<S>(stream: S) -> hyper::client::conn::http1::SendRequest<Body>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http/1.1 handshake");
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender
}

/// Sends a request once the connection is ready for it (HTTP/1.1 keep-alive).
pub async fn send(
    client: &mut hyper::client::conn::http1::SendRequest<Body>,
    req: Request<Body>,
) -> Response<Incoming> {
    client.ready().await.expect("connection ready");
    client.send_request(req).await.expect("response")
}

/// An empty request body.
pub fn empty() -> Body {
    http_body_util::Empty::new().map_err(|n| match n {}).boxed()
}

/// A GET request for `path`.
pub fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header(http::header::HOST, "caller.example")
        .body(full(Bytes::new()))
        .unwrap()
}

/// Reads a whole response body.
pub async fn body_bytes(resp: Response<Incoming>) -> Bytes {
    resp.into_body().collect().await.expect("body").to_bytes()
}

/// Streams `len` pattern bytes as a request body, in chunks, without holding them in memory.
pub fn streaming_body(len: u64) -> Body {
    const CHUNK: u64 = 64 * 1024;
    let stream = futures::stream::iter((0..len.div_ceil(CHUNK)).map(move |c| {
        let start = c * CHUNK;
        let end = (start + CHUNK).min(len);
        let data: Vec<u8> = (start..end).map(pattern_byte).collect();
        Ok::<_, hyper::Error>(Frame::data(Bytes::from(data)))
    }));
    BodyExt::boxed(StreamBody::new(stream))
}

/// Consumes a body chunk by chunk, checking it against the pattern; returns the byte count.
pub async fn check_pattern_body(resp: Response<Incoming>) -> u64 {
    let mut body = resp.into_body().into_data_stream();
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("body chunk");
        for b in chunk.iter() {
            assert_eq!(*b, pattern_byte(n), "byte {n}");
            n += 1;
        }
    }
    n
}

/// Resident set size of this process in bytes (Linux), for memory bounds.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// A binary of this workspace, built next to the test executables.
pub fn built_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(std::path::Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo test --workspace` (or `cargo build --workspace`) first",
        path.display()
    );
    path
}

/// The value of the sample `series` (name and labels exactly as exported, e.g.
/// `postern_requests_total{lease="web",method="GET",status_class="2xx"}`) in a Prometheus text
/// exposition; `None` if it is not there.
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// The payload of an HTTP/1.1 chunked body.
pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = body.split_once("\r\n") else {
            return out;
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return out;
        };
        if n == 0 || rest.len() < n {
            return out;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
}

/// Waits (at most 10 s) until the process whose `/proc` directory is `proc` has an inotify
/// watch on the directory of `config`: a test that rewrites a config file right after starting
/// a gateway process knows its change will be seen.
pub async fn wait_for_config_watch(proc: &str, config: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let within = Duration::from_secs(10);
    let dir = std::fs::metadata(config.parent().unwrap()).unwrap();
    let ino = format!(" ino:{:x} ", dir.ino());
    let deadline = std::time::Instant::now() + within;
    loop {
        let fds = std::fs::read_dir(format!("{proc}/fdinfo")).unwrap();
        let watched = fds.flatten().any(|fd| {
            std::fs::read_to_string(fd.path()).is_ok_and(|info| {
                info.lines()
                    .any(|l| l.starts_with("inotify ") && l.contains(&ino))
            })
        });
        if watched {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{proc} set up no inotify watch on {} within {within:?}",
            config.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The body of `GET /metrics` from a metrics listener at `addr` (at most 10 s).
pub async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: metrics\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        // hyper may send the body chunked when it does not know the length up front.
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        }
    })
    .await
    .expect("a scrape within 10 s")
}

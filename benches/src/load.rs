//! HTTP load, the same for every route: keep-alive HTTP/1.1 connections running GETs back to
//! back, bounded in time and in count, with latency quantiles; and one long download.
//!
//! A [`Route`] is how the bench reaches the origin: directly over TCP, through an in-process
//! [`Dialer`] (the tunnel alone), or through the gateway over TLS with an API key. Every socket
//! is on 127.0.0.1 and has TCP_NODELAY.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, HOST};
use hyper::{Request, StatusCode};
use postern_sdk::{Dialer, LeaseTarget};
use postern_tests::{get, http1_client};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::procfs::{CpuMeter, CpuSnapshot};
use crate::quantile;

pub type Body = BoxBody<Bytes, hyper::Error>;
/// One keep-alive HTTP/1.1 client connection.
pub type Sender = SendRequest<Body>;

pub const MIB: u64 = 1024 * 1024;
/// Any single request or dial slower than this is a failure, not a data point.
pub const OP_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Knobs

/// `$name` as a number, or `default` when unset (with a message when it is not a number).
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("{name}={v:?} is not a number; using {default}");
            default
        }),
        Err(_) => default,
    }
}

/// `$name` as a byte count: a number with an optional `KiB`, `MiB` or `GiB` suffix.
pub fn env_bytes(name: &str, default: u64) -> u64 {
    let Ok(v) = std::env::var(name) else {
        return default;
    };
    let t = v.trim();
    let (digits, unit) = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)]
        .iter()
        .find_map(|(suffix, unit)| t.strip_suffix(suffix).map(|d| (d.trim(), *unit)))
        .unwrap_or((t, 1));
    match digits.parse::<u64>() {
        Ok(n) => n.saturating_mul(unit),
        Err(_) => {
            eprintln!("{name}={v:?} is not a byte count; using {default}");
            default
        }
    }
}

/// The knobs every load measurement shares.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// Length of one measurement (`POSTERN_BENCH_SECS`, default 3).
    pub secs: Duration,
    /// Load before each measurement, not counted.
    pub warmup: Duration,
    /// Most requests in one measurement, over all connections.
    pub max_requests: u64,
    /// Size of the download (`POSTERN_BENCH_DOWNLOAD_BYTES`, default 1 GiB; `64MiB` works).
    pub download_bytes: u64,
    pub download_timeout: Duration,
}

impl LoadSettings {
    pub fn from_env() -> Self {
        Self {
            secs: Duration::from_secs(env_u64("POSTERN_BENCH_SECS", 3).max(1)),
            warmup: Duration::from_millis(500),
            max_requests: 2_000_000,
            download_bytes: env_bytes("POSTERN_BENCH_DOWNLOAD_BYTES", 1024 * MIB).max(1),
            download_timeout: Duration::from_secs(120),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Routes

/// HTTPS to the gateway: `GET https://localhost/peer/{lease}{path}` with a Bearer API key.
pub struct GatewayRoute {
    pub addr: SocketAddr,
    /// TLS 1.3, HTTP/1.1 by ALPN, trusting the gateway's certificate.
    pub tls: TlsConnector,
    pub lease: String,
    pub api_key: String,
}

impl GatewayRoute {
    /// A GET for `path` on the origin behind the lease, presenting `key`.
    pub fn get(&self, path: &str, key: &str) -> Request<Body> {
        Request::get(format!("/peer/{}{path}", self.lease))
            .header(HOST, "localhost")
            .header(AUTHORIZATION, format!("Bearer {key}"))
            .body(Empty::new().map_err(|n| match n {}).boxed())
            .expect("request")
    }

    /// A new TLS connection, handshake done, ready for HTTP/1.1.
    pub async fn connect(&self) -> Sender {
        let tcp = TcpStream::connect(self.addr)
            .await
            .expect("connect to gateway");
        self.handshake(tcp).await
    }

    /// [`connect`](Self::connect) from source address `from` (any of 127.0.0.0/8 on Linux
    /// loopback): the gateway sees another client IP.
    pub async fn connect_from(&self, from: Ipv4Addr) -> Sender {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from((from, 0)))
            .unwrap_or_else(|e| panic!("binding {from}: {e}"));
        let tcp = socket
            .connect(self.addr)
            .await
            .unwrap_or_else(|e| panic!("connect to gateway from {from}: {e}"));
        self.handshake(tcp).await
    }

    /// The TLS session a new connection negotiates, e.g. `TLSv1_3 TLS13_AES_128_GCM_SHA256,
    /// ALPN http/1.1`.
    pub async fn describe_tls(&self) -> String {
        let tcp = TcpStream::connect(self.addr)
            .await
            .expect("connect to gateway");
        tcp.set_nodelay(true).expect("TCP_NODELAY");
        let name = ServerName::try_from("localhost").expect("server name");
        let tls = tokio::time::timeout(OP_TIMEOUT, self.tls.connect(name, tcp))
            .await
            .expect("TLS handshake timed out")
            .expect("TLS handshake");
        let conn = tls.get_ref().1;
        format!(
            "{:?} {:?}, ALPN {}",
            conn.protocol_version().expect("negotiated TLS version"),
            conn.negotiated_cipher_suite()
                .map(|s| s.suite())
                .expect("negotiated cipher suite"),
            conn.alpn_protocol()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .unwrap_or_else(|| "none".into())
        )
    }

    async fn handshake(&self, tcp: TcpStream) -> Sender {
        tcp.set_nodelay(true).expect("TCP_NODELAY");
        let name = ServerName::try_from("localhost").expect("server name");
        let tls = tokio::time::timeout(OP_TIMEOUT, self.tls.connect(name, tcp))
            .await
            .expect("TLS handshake timed out")
            .expect("TLS handshake");
        http1_client(tls).await
    }
}

/// How the bench reaches the origin.
#[derive(Clone)]
pub enum Route {
    /// Plain TCP to the origin.
    Direct(SocketAddr),
    /// Inner streams of an in-process dialer's E2EE session, through the relay and the agent.
    Dialer(Dialer, Box<LeaseTarget>),
    /// TLS to the gateway, which dials through the relay and the agent.
    Gateway(Arc<GatewayRoute>),
}

impl Route {
    /// A new keep-alive connection.
    pub async fn connect(&self) -> Sender {
        match self {
            Self::Direct(addr) => {
                let tcp = TcpStream::connect(addr).await.expect("connect to origin");
                tcp.set_nodelay(true).expect("TCP_NODELAY");
                http1_client(tcp).await
            }
            Self::Dialer(dialer, target) => {
                let stream = tokio::time::timeout(OP_TIMEOUT, dialer.dial(target))
                    .await
                    .expect("dial timed out")
                    .expect("dial");
                http1_client(stream).await
            }
            Self::Gateway(gw) => gw.connect().await,
        }
    }

    /// A GET for `path` on the origin, as this route has to ask for it.
    pub fn get(&self, path: &str) -> Request<Body> {
        match self {
            Self::Gateway(gw) => gw.get(path, &gw.api_key),
            _ => get(path),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

/// Sends `req` once the connection is ready and reads the whole body: (status, body length).
/// `Err` says what failed (the connection, the response, the body, or the time limit).
pub async fn exchange(
    sender: &mut Sender,
    req: Request<Body>,
) -> Result<(StatusCode, usize), String> {
    let exchange = async {
        sender
            .ready()
            .await
            .map_err(|e| format!("connection: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("response: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?;
        Ok((status, body.to_bytes().len()))
    };
    tokio::time::timeout(OP_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// GET `path` through `route` on `sender`; returns the body length.
///
/// # Panics
/// On any failure or a status other than 2xx.
pub async fn request(route: &Route, sender: &mut Sender, path: &str) -> usize {
    let (status, len) = exchange(sender, route.get(path))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert!(status.is_success(), "{path}: {status}");
    len
}

// ---------------------------------------------------------------------------------------------
// Load

/// One load measurement.
pub struct Load {
    pub requests: u64,
    pub elapsed: Duration,
    /// Sorted latencies, ns.
    pub latencies: Vec<u64>,
}

impl Load {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn quantile_us(&self, p: f64) -> f64 {
        quantile(&self.latencies, p) as f64 / 1e3
    }
}

/// Every connection runs GET `path` back to back until `dur` is over or `max` requests went.
pub async fn run_load(
    route: &Route,
    conns: Vec<Sender>,
    path: &str,
    dur: Duration,
    max: u64,
) -> (Vec<Sender>, Load) {
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + dur;
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut s| {
            let issued = Arc::clone(&issued);
            let route = route.clone();
            let path = path.to_owned();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(1 << 14);
                while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < max {
                    let t0 = Instant::now();
                    request(&route, &mut s, &path).await;
                    lat.push(t0.elapsed().as_nanos() as u64);
                }
                (s, lat)
            })
        })
        .collect();
    let mut senders = Vec::new();
    let mut latencies = Vec::new();
    for t in tasks {
        let (s, lat) = t.await.expect("load task");
        senders.push(s);
        latencies.extend(lat);
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    let load = Load {
        requests: latencies.len() as u64,
        elapsed,
        latencies,
    };
    (senders, load)
}

/// Opens `conns` connections, warms them up for `s.warmup`, then measures for `s.secs`.
pub async fn measure_load(route: &Route, conns: usize, path: &str, s: &LoadSettings) -> Load {
    measure_load_metered(route, conns, path, s, &CpuMeter::new(Vec::new()))
        .await
        .0
}

/// [`measure_load`], with `meter` read at the start and at the end of the measured part.
pub async fn measure_load_metered(
    route: &Route,
    conns: usize,
    path: &str,
    s: &LoadSettings,
    meter: &CpuMeter,
) -> (Load, CpuSnapshot, CpuSnapshot) {
    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns {
        senders.push(route.connect().await);
    }
    let (senders, _) = run_load(route, senders, path, s.warmup, s.max_requests).await;
    let before = meter.snapshot();
    let (_senders, load) = run_load(route, senders, path, s.secs, s.max_requests).await;
    let after = meter.snapshot();
    (load, before, after)
}

/// Opens up to `k` connections, 16 at a time, until `deadline`.
pub async fn open_connections(route: &Route, k: usize, deadline: Instant) -> Vec<Sender> {
    futures::stream::iter(0..k)
        .map(|_| async move {
            if Instant::now() >= deadline {
                return None;
            }
            Some(route.connect().await)
        })
        .buffer_unordered(16)
        .filter_map(|s| async move { s })
        .collect()
        .await
}

/// One GET `path` on each connection, 16 at a time, until `deadline`; returns the connections
/// that made their request.
pub async fn request_each(
    route: &Route,
    senders: Vec<Sender>,
    path: &str,
    deadline: Instant,
) -> Vec<Sender> {
    futures::stream::iter(senders)
        .map(|mut s| async move {
            if Instant::now() >= deadline {
                return None;
            }
            request(route, &mut s, path).await;
            Some(s)
        })
        .buffer_unordered(16)
        .filter_map(|s| async move { s })
        .collect()
        .await
}

// ---------------------------------------------------------------------------------------------
// Download

pub struct Download {
    pub bytes: u64,
    pub elapsed: Duration,
    pub complete: bool,
}

impl Download {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
}

/// GET `/bytes/{s.download_bytes}` on a warm connection, read to the end or to the time limit.
pub async fn measure_download(route: &Route, s: &LoadSettings) -> Download {
    let mut sender = route.connect().await;
    // One small request first so the connection is warm.
    request(route, &mut sender, "/hello").await;
    let start = Instant::now();
    let deadline = start + s.download_timeout;
    sender.ready().await.expect("connection ready");
    let resp = tokio::time::timeout(
        OP_TIMEOUT,
        sender.send_request(route.get(&format!("/bytes/{}", s.download_bytes))),
    )
    .await
    .expect("download response timed out")
    .expect("download response");
    assert!(resp.status().is_success(), "download: {}", resp.status());
    let mut body = resp.into_body();
    let mut bytes = 0u64;
    let mut complete = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, body.frame()).await {
            Ok(Some(frame)) => {
                if let Ok(data) = frame.expect("download body").into_data() {
                    bytes += data.len() as u64;
                }
            }
            Ok(None) => {
                complete = true;
                break;
            }
            Err(_) => break,
        }
    }
    let elapsed = start.elapsed();
    if complete {
        assert_eq!(bytes, s.download_bytes, "download length");
    }
    Download {
        bytes,
        elapsed,
        complete,
    }
}

/// `"1024 MiB"`, or `"12345 B"` when not a whole number of MiB.
pub fn size_label(bytes: u64) -> String {
    if bytes / MIB * MIB == bytes {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} B")
    }
}

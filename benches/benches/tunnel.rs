//! End-to-end load bench: direct vs through Postern, in one run, printed as a table.
//!
//! * **direct**: hyper HTTP/1.1 client → TCP → a local hyper origin (`postern_tests::spawn_origin`).
//! * **postern**: hyper HTTP/1.1 client over `Dialer::dial` inner streams → `postern-relay`
//!   (child process) → `postern expose` (child process) → the same origin.
//!
//! The relay and the agent are the real binaries, run as child processes so each one's memory
//! can be read from `/proc/<pid>/status`. Build them first:
//! `cargo build --release -p postern-relay -p postern-sdk` (same target directory as the bench).
//!
//! Knobs (environment): `POSTERN_BENCH_SECS` (per load measurement, default 3),
//! `POSTERN_BENCH_DOWNLOAD_BYTES` (default 1 GiB), `POSTERN_BENCH_DIALS` (default 10000),
//! `POSTERN_BENCH_IDLE_STREAMS` (default 2000), `POSTERN_BENCH_SPLICES` (default 500),
//! `POSTERN_BIN_DIR` (where the binaries are, if not next to the bench).
//!
//! Everything is on 127.0.0.1; every loop is bounded in count and in time; the child processes
//! are killed on exit, on panic (a guard's `Drop`) and on Ctrl-C.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use postern_benches::{locate_binaries, newer_source_than, quantile, thread_cpu_ns, vm_rss_bytes};
use postern_sdk::grant::{self, unix_now};
use postern_sdk::noise::{Initiator, Responder, StaticKeypair};
use postern_sdk::protocol::{permission, LeaseGrant, SignedGrant};
use postern_sdk::relay_client::RelaySession;
use postern_sdk::{ClientOptions, Dialer, DialerConfig, Identity, LeaseTarget, RelayUrl};
use postern_tests::{get, http1_client, spawn_origin};
use tokio::net::TcpStream;

type Sender = SendRequest<BoxBody<Bytes, hyper::Error>>;

const LEASE: &str = "bench";
const MIB: u64 = 1024 * 1024;
/// Any single request or dial slower than this is a failure, not a data point.
const OP_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Settings

struct Settings {
    secs: Duration,
    warmup: Duration,
    max_requests: u64,
    download_bytes: u64,
    download_timeout: Duration,
    dials: u64,
    tcp_connects: u64,
    dial_budget: Duration,
    idle_streams: usize,
    splices: usize,
    open_budget: Duration,
    handshakes: u32,
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("{name}={v:?} is not a number; using {default}");
            default
        }),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Self {
        Self {
            secs: Duration::from_secs(env_u64("POSTERN_BENCH_SECS", 3).max(1)),
            warmup: Duration::from_millis(500),
            max_requests: 2_000_000,
            download_bytes: env_u64("POSTERN_BENCH_DOWNLOAD_BYTES", 1024 * MIB).max(1),
            download_timeout: Duration::from_secs(120),
            dials: env_u64("POSTERN_BENCH_DIALS", 10_000).max(1),
            tcp_connects: 2_000,
            dial_budget: Duration::from_secs(20),
            idle_streams: env_u64("POSTERN_BENCH_IDLE_STREAMS", 2_000).max(1) as usize,
            splices: env_u64("POSTERN_BENCH_SPLICES", 500) as usize,
            open_budget: Duration::from_secs(120),
            handshakes: 2_000,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// Child processes, killed by [`Guard`]'s `Drop` or by the Ctrl-C handler.
#[derive(Clone, Default)]
struct Children(Arc<Mutex<Vec<(String, Child)>>>);

impl Children {
    fn spawn(&self, name: &str, cmd: &mut Command) -> u32 {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let pid = child.id();
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_owned(), child));
        pid
    }

    /// Panics if a child has already exited.
    fn check_alive(&self) {
        let mut kids = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (name, child) in kids.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{name} exited early ({status})");
            }
        }
    }

    fn kill_all(&self) {
        let mut kids = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (_, mut child) in kids.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Kills the children and removes the temporary directory, also while unwinding a panic.
struct Guard {
    children: Children,
    dir: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.children.kill_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn temp_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir =
        std::env::temp_dir().join(format!("postern-bench-{}-{nanos:08x}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_cli(cli: &Path, args: &[&str]) {
    let out = Command::new(cli)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", cli.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        cli.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn wait_for_port(addr: SocketAddr, children: &Children, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        children.check_alive();
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listening on {addr}; log:\n{}", log_tail(log));
}

fn rss(pid: u32) -> u64 {
    vm_rss_bytes(pid).unwrap_or_else(|| panic!("cannot read /proc/{pid}/status"))
}

// ---------------------------------------------------------------------------------------------
// Handshake CPU

struct HandshakeCost {
    n: u32,
    full_cpu_us: Option<f64>,
    full_wall_us: f64,
    responder_cpu_us: Option<f64>,
    responder_wall_us: f64,
}

/// Times `body` run up to `max` times (and at most ~1.5 s): (count, CPU µs each, wall µs each).
fn time_loop(max: u32, mut body: impl FnMut()) -> (u32, Option<f64>, f64) {
    let budget = Duration::from_millis(1500);
    let cpu0 = thread_cpu_ns();
    let t0 = Instant::now();
    let mut n = 0;
    while n < max && t0.elapsed() < budget {
        body();
        n += 1;
    }
    let wall = t0.elapsed();
    let cpu = match (cpu0, thread_cpu_ns()) {
        (Some(a), Some(b)) => Some((b - a) as f64 / 1e3 / f64::from(n)),
        _ => None,
    };
    (n, cpu, wall.as_secs_f64() * 1e6 / f64::from(n))
}

/// Times IK handshakes between one pair of keys. With `peer_cache` 0 neither side remembers
/// the other, so every handshake is a first contact (all five X25519 operations per side);
/// with the default cache a returning peer's static-static DH is reused.
fn measure_handshakes(max: u32, peer_cache: usize) -> HandshakeCost {
    let initiator = StaticKeypair::generate().with_peer_cache(peer_cache);
    let responder = StaticKeypair::generate().with_peer_cache(peer_cache);
    let prologue = postern_sdk::e2ee::prologue(LEASE);
    let payload = [0u8; 24];
    // Warm caches and the CPU's clock.
    for _ in 0..50 {
        let mut i = Initiator::new(&initiator, responder.public(), &prologue);
        let mut r = Responder::new(&responder, &prologue);
        r.read_message(&i.write_message(&payload).unwrap()).unwrap();
        let (m2, _) = r.write_message(&payload).unwrap();
        std::hint::black_box(i.read_message(&m2).unwrap());
    }
    let (n, full_cpu_us, full_wall_us) = time_loop(max, || {
        let mut i = Initiator::new(&initiator, responder.public(), &prologue);
        let mut r = Responder::new(&responder, &prologue);
        r.read_message(&i.write_message(&payload).unwrap()).unwrap();
        let (m2, rs) = r.write_message(&payload).unwrap();
        std::hint::black_box((i.read_message(&m2).unwrap(), rs));
    });
    let m1 = Initiator::new(&initiator, responder.public(), &prologue)
        .write_message(&payload)
        .unwrap();
    let (_, responder_cpu_us, responder_wall_us) = time_loop(max, || {
        let mut r = Responder::new(&responder, &prologue);
        std::hint::black_box(r.read_message(&m1).unwrap());
        std::hint::black_box(r.write_message(&payload).unwrap());
    });
    HandshakeCost {
        n,
        full_cpu_us,
        full_wall_us,
        responder_cpu_us,
        responder_wall_us,
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP load

#[derive(Clone)]
enum Route {
    Direct(SocketAddr),
    Postern(Dialer, Box<LeaseTarget>),
}

impl Route {
    async fn connect(&self) -> Sender {
        match self {
            Self::Direct(addr) => {
                let tcp = TcpStream::connect(addr).await.unwrap();
                tcp.set_nodelay(true).unwrap();
                http1_client(tcp).await
            }
            Self::Postern(dialer, target) => {
                let stream = tokio::time::timeout(OP_TIMEOUT, dialer.dial(target))
                    .await
                    .expect("dial timed out")
                    .expect("dial");
                http1_client(stream).await
            }
        }
    }
}

async fn request(sender: &mut Sender, path: &str) -> usize {
    let exchange = async {
        sender.ready().await.expect("connection ready");
        let resp = sender.send_request(get(path)).await.expect("response");
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .len()
    };
    tokio::time::timeout(OP_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} timed out"))
}

struct Load {
    requests: u64,
    elapsed: Duration,
    /// Sorted latencies, ns.
    latencies: Vec<u64>,
}

impl Load {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn quantile_us(&self, p: f64) -> f64 {
        quantile(&self.latencies, p) as f64 / 1e3
    }
}

/// Every connection runs GET /hello back to back until `dur` is over or `max` requests went.
async fn run_load(conns: Vec<Sender>, dur: Duration, max: u64) -> (Vec<Sender>, Load) {
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + dur;
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut s| {
            let issued = Arc::clone(&issued);
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(1 << 14);
                while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < max {
                    let t0 = Instant::now();
                    request(&mut s, "/hello").await;
                    lat.push(t0.elapsed().as_nanos() as u64);
                }
                (s, lat)
            })
        })
        .collect();
    let mut senders = Vec::new();
    let mut latencies = Vec::new();
    for t in tasks {
        let (s, lat) = t.await.unwrap();
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

async fn measure_load(path: &Route, conns: usize, s: &Settings) -> Load {
    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns {
        senders.push(path.connect().await);
    }
    let (senders, _) = run_load(senders, s.warmup, s.max_requests).await;
    let (_senders, load) = run_load(senders, s.secs, s.max_requests).await;
    load
}

struct Download {
    bytes: u64,
    elapsed: Duration,
    complete: bool,
}

impl Download {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
}

async fn measure_download(path: &Route, s: &Settings) -> Download {
    let mut sender = path.connect().await;
    // One small request first so the connection is warm.
    request(&mut sender, "/hello").await;
    let start = Instant::now();
    let deadline = start + s.download_timeout;
    sender.ready().await.unwrap();
    let resp = tokio::time::timeout(
        OP_TIMEOUT,
        sender.send_request(get(&format!("/bytes/{}", s.download_bytes))),
    )
    .await
    .expect("download response timed out")
    .expect("download response");
    assert!(resp.status().is_success());
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

/// Mean cost of a new connection: a TCP connect to the origin, or a dial on the warm session.
async fn measure_new_stream(path: &Route, max: u64, budget: Duration) -> (u64, f64) {
    let start = Instant::now();
    let mut n = 0u64;
    while n < max && start.elapsed() < budget {
        match path {
            Route::Direct(addr) => drop(TcpStream::connect(addr).await.unwrap()),
            Route::Postern(dialer, target) => drop(
                tokio::time::timeout(OP_TIMEOUT, dialer.dial(target))
                    .await
                    .expect("dial timed out")
                    .expect("dial"),
            ),
        }
        n += 1;
    }
    (n, start.elapsed().as_secs_f64() * 1e6 / n as f64)
}

struct Rss {
    opened: usize,
    relay_per: f64,
    agent_per: f64,
    relay_delta: i64,
    agent_delta: i64,
}

fn rss_result(opened: usize, before: (u64, u64), after: (u64, u64)) -> Rss {
    let relay_delta = after.0 as i64 - before.0 as i64;
    let agent_delta = after.1 as i64 - before.1 as i64;
    let n = opened.max(1) as f64;
    Rss {
        opened,
        relay_per: relay_delta as f64 / n,
        agent_per: agent_delta as f64 / n,
        relay_delta,
        agent_delta,
    }
}

/// Opens `k` inner streams, keeps them idle and reads both processes' RSS: before, after
/// dialing them (HTTP/1.1 client ready, nothing sent yet) and after one completed GET on each.
/// Returns (after the GET, dialed only).
async fn measure_idle_streams(
    path: &Route,
    pids: (u32, u32),
    k: usize,
    budget: Duration,
) -> (Rss, Rss) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = (rss(pids.0), rss(pids.1));
    let deadline = Instant::now() + budget;
    let senders: Vec<Sender> = futures::stream::iter(0..k)
        .map(|_| async move {
            if Instant::now() >= deadline {
                return None;
            }
            Some(path.connect().await)
        })
        .buffer_unordered(16)
        .filter_map(|s| async move { s })
        .collect()
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dialed = (rss(pids.0), rss(pids.1));
    let dialed = rss_result(senders.len(), before, dialed);
    let senders: Vec<Sender> = futures::stream::iter(senders)
        .map(|mut s| async move {
            if Instant::now() >= deadline {
                return None;
            }
            request(&mut s, "/hello").await;
            Some(s)
        })
        .buffer_unordered(16)
        .filter_map(|s| async move { s })
        .collect()
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = (rss(pids.0), rss(pids.1));
    let r = rss_result(senders.len(), before, after);
    drop(senders);
    tokio::time::sleep(Duration::from_millis(500)).await;
    (r, dialed)
}

/// Opens `k` separate spliced relay streams (one E2EE session each, handshake done) on one
/// relay session: the relay's and the agent's cost per dialer session.
#[allow(clippy::too_many_arguments)]
async fn measure_splices(
    relay: &RelayUrl,
    me: &Identity,
    grants: &[SignedGrant],
    owner: &Identity,
    pids: (u32, u32),
    k: usize,
    budget: Duration,
) -> Rss {
    let (session, _inbound) = RelaySession::connect(relay, me, grants, ClientOptions::default())
        .await
        .expect("relay session");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = (rss(pids.0), rss(pids.1));
    let deadline = Instant::now() + budget;
    let owner_key = owner.verifying_key();
    let session = &session;
    let owner_key = &owner_key;
    let streams: Vec<_> = futures::stream::iter(0..k)
        .map(|_| async move {
            if Instant::now() >= deadline {
                return None;
            }
            let open = async {
                let (stream, key) = session
                    .connect_lease(LEASE, "", owner_key)
                    .await
                    .expect("connect lease");
                postern_sdk::e2ee::initiate(stream, me.e2ee_keypair(), &key, LEASE, &[], OP_TIMEOUT)
                    .await
                    .expect("e2ee handshake")
                    .0
            };
            Some(
                tokio::time::timeout(OP_TIMEOUT, open)
                    .await
                    .expect("splice timed out"),
            )
        })
        .buffer_unordered(16)
        .filter_map(|s| async move { s })
        .collect()
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = (rss(pids.0), rss(pids.1));
    let r = rss_result(streams.len(), before, after);
    drop(streams);
    tokio::time::sleep(Duration::from_millis(500)).await;
    r
}

// ---------------------------------------------------------------------------------------------
// Table

struct Row {
    metric: String,
    direct: String,
    postern: String,
    ratio: String,
    target: String,
    result: String,
}

fn row(metric: &str, direct: Option<f64>, postern: f64, prec: usize) -> Row {
    Row {
        metric: metric.into(),
        direct: direct.map_or("—".into(), |d| format!("{d:.prec$}")),
        postern: format!("{postern:.prec$}"),
        ratio: direct
            .filter(|d| *d > 0.0)
            .map_or("—".into(), |d| format!("{:.3}x", postern / d)),
        target: String::new(),
        result: String::new(),
    }
}

fn with_target(mut r: Row, target: &str, pass: bool) -> Row {
    r.target = target.into();
    r.result = if pass { "PASS" } else { "MISS" }.into();
    r
}

fn print_table(rows: &[Row]) {
    let headers = [
        "metric",
        "direct",
        "postern",
        "postern/direct",
        "target",
        "result",
    ];
    let cells: Vec<[&str; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.metric.as_str(),
                r.direct.as_str(),
                r.postern.as_str(),
                r.ratio.as_str(),
                r.target.as_str(),
                r.result.as_str(),
            ]
        })
        .collect();
    let mut w = headers.map(|h| h.chars().count());
    for c in &cells {
        for (i, s) in c.iter().enumerate() {
            w[i] = w[i].max(s.chars().count());
        }
    }
    let line = |c: [&str; 6]| {
        let mut out = format!("{:<w0$}", c[0], w0 = w[0]);
        for i in 1..6 {
            let pad = w[i] - c[i].chars().count();
            out.push_str("  ");
            out.push_str(&" ".repeat(pad));
            out.push_str(c[i]);
        }
        println!("{}", out.trim_end());
    };
    line(headers);
    println!("{}", "-".repeat(w.iter().sum::<usize>() + 2 * 5));
    for c in cells {
        line(c);
    }
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let s = Settings::from_env();
    let (relay_bin, cli_bin) = match locate_binaries() {
        Ok(bins) => bins,
        Err(searched) => {
            eprintln!(
                "tunnel bench: the postern-relay and postern binaries were not found (looked in {}).\n\
                 Build them first, with the same target directory as the bench:\n\
                 \x20   cargo build --release -p postern-relay -p postern-sdk\n\
                 or point POSTERN_BIN_DIR at the directory that holds them.",
                searched
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            std::process::exit(2);
        }
    };

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("postern tunnel bench — {cpus} CPU(s), {cpu}");
    println!("  relay: {}", relay_bin.display());
    println!("  agent: {} expose", cli_bin.display());
    for bin in [&relay_bin, &cli_bin] {
        if let Some(src) = newer_source_than(bin) {
            println!(
                "  WARNING: {} is older than {}; rebuild with \
                 `cargo build --release -p postern-relay -p postern-sdk`",
                bin.display(),
                src.display()
            );
        }
    }

    // Handshake CPU first, while nothing else runs.
    let hs_first = measure_handshakes(s.handshakes, 0);
    let hs = measure_handshakes(s.handshakes, postern_sdk::dh::DEFAULT_PEER_CACHE);

    let children = Children::default();
    let guard = Guard {
        children: children.clone(),
        dir: temp_dir(),
    };
    let dir = guard.dir.clone();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    {
        let children = children.clone();
        let dir = dir.clone();
        rt.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                children.kill_all();
                let _ = std::fs::remove_dir_all(&dir);
                eprintln!("interrupted; child processes killed");
                std::process::exit(130);
            }
        });
    }

    // Keys and grants, through the CLI like an operator would.
    let cp_key = dir.join("control-plane.key");
    let agent_key = dir.join("agent.key");
    let agent_grants = dir.join("agent.grants");
    let path_str = |p: &Path| p.to_str().unwrap().to_owned();
    run_cli(&cli_bin, &["keygen", "--out", &path_str(&cp_key)]);
    run_cli(&cli_bin, &["keygen", "--out", &path_str(&agent_key)]);
    run_cli(
        &cli_bin,
        &[
            "grant",
            "mint",
            "--signer",
            &path_str(&cp_key),
            "--identity-file",
            &path_str(&agent_key),
            "--lease",
            LEASE,
            "--out",
            &path_str(&agent_grants),
        ],
    );
    let control_plane = Identity::load(&cp_key).expect("control plane key");
    let owner = Identity::load(&agent_key).expect("agent key");

    // The relay.
    let relay_port = free_port();
    let relay_addr: SocketAddr = format!("127.0.0.1:{relay_port}").parse().unwrap();
    let relay_cfg = dir.join("relay.toml");
    std::fs::write(
        &relay_cfg,
        format!(
            "require_dial_grant = true\n\n[listen]\naddr = \"{relay_addr}\"\n\n\
             [control_plane]\npublic_keys = [\"{}\"]\n\n\
             [limits]\nmax_streams_per_session = 4096\nmax_streams_per_lease = 4096\n",
            control_plane.public_base64()
        ),
    )
    .unwrap();
    let relay_log = dir.join("relay.log");
    let relay_pid = children.spawn(
        "postern-relay",
        Command::new(&relay_bin)
            .arg("--config")
            .arg(&relay_cfg)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&relay_log).unwrap())
            .stderr(std::fs::File::create(dir.join("relay.err")).unwrap()),
    );
    wait_for_port(relay_addr, &children, &dir.join("relay.err"));
    let relay_url = RelayUrl::parse(&format!("ws://{relay_addr}")).unwrap();

    let rows = rt.block_on(async {
        let origin = spawn_origin().await;

        // The agent: `postern expose` in front of the origin.
        let agent_log = dir.join("agent.err");
        let agent_pid = children.spawn(
            "postern expose",
            Command::new(&cli_bin)
                .arg("expose")
                .arg(format!("http://{origin}"))
                .args(["--lease", LEASE, "--relay", &relay_url.to_string()])
                .arg("--grant")
                .arg(&agent_grants)
                .arg("--key")
                .arg(&agent_key)
                .env("POSTERN_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&agent_log).unwrap()),
        );
        let pids = (relay_pid, agent_pid);

        // The dialer, with a grant minted in-process by the same control plane key.
        let me = Identity::generate();
        let now = unix_now();
        let grants = vec![grant::mint(
            &control_plane,
            &LeaseGrant {
                workspace: "default".into(),
                lease_pattern: "*".into(),
                identity_key: me.verifying_key().to_bytes().to_vec(),
                issued_at_unix: now,
                expires_at_unix: now + 3600,
                permissions: permission::DIAL,
            },
        )];
        let dialer = Dialer::new(DialerConfig::new(
            relay_url.clone(),
            me.clone(),
            grants.clone(),
        ));
        let target = LeaseTarget::new(LEASE, owner.verifying_key());

        // Wait until the lease is online; the first dial also sets up the E2EE session.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            children.check_alive();
            match dialer.dial(&target).await {
                Ok(stream) => {
                    drop(stream);
                    break;
                }
                Err(e) if Instant::now() >= deadline => {
                    panic!(
                        "lease {LEASE} never came online: {e}\nagent log:\n{}",
                        log_tail(&agent_log)
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let direct = Route::Direct(origin);
        let postern = Route::Postern(dialer.clone(), Box::new(target.clone()));
        let mut rows = Vec::new();
        let step = |what: &str| eprintln!("… {what}");

        // Memory first, on fresh processes, so freed memory from the load tests cannot hide
        // the cost of new streams.
        step(&format!("{} idle inner streams", s.idle_streams));
        let (idle, idle_dialed) =
            measure_idle_streams(&postern, pids, s.idle_streams, s.open_budget).await;
        let splices = if s.splices > 0 {
            step(&format!("{} idle spliced sessions", s.splices));
            Some(
                measure_splices(
                    &relay_url,
                    &me,
                    &grants,
                    &owner,
                    pids,
                    s.splices,
                    s.open_budget,
                )
                .await,
            )
        } else {
            None
        };

        for conns in [1usize, 32] {
            step(&format!("GET /hello, {conns} connection(s), direct"));
            let d = measure_load(&direct, conns, &s).await;
            step(&format!("GET /hello, {conns} connection(s), postern"));
            let p = measure_load(&postern, conns, &s).await;
            rows.push(row(
                &format!("req/s, {conns} conn"),
                Some(d.rps()),
                p.rps(),
                0,
            ));
            rows.push(row(
                &format!("p50 latency µs, {conns} conn"),
                Some(d.quantile_us(0.5)),
                p.quantile_us(0.5),
                1,
            ));
            rows.push(row(
                &format!("p99 latency µs, {conns} conn"),
                Some(d.quantile_us(0.99)),
                p.quantile_us(0.99),
                1,
            ));
            rows.push(row(
                &format!("  requests measured, {conns} conn"),
                Some(d.requests as f64),
                p.requests as f64,
                0,
            ));
        }

        step(&format!("download {} bytes, direct", s.download_bytes));
        let d = measure_download(&direct, &s).await;
        step(&format!("download {} bytes, postern", s.download_bytes));
        let p = measure_download(&postern, &s).await;
        let label = if s.download_bytes / MIB * MIB == s.download_bytes {
            format!("{} MiB", s.download_bytes / MIB)
        } else {
            format!("{} B", s.download_bytes)
        };
        let partial = |x: &Download| if x.complete { "" } else { " (timed out)" };
        let bulk_ratio = p.mb_per_s() / d.mb_per_s();
        rows.push(with_target(
            row(
                &format!("download MB/s, {label}{}{}", partial(&d), partial(&p)),
                Some(d.mb_per_s()),
                p.mb_per_s(),
                1,
            ),
            ">= 0.13x",
            bulk_ratio >= 0.13,
        ));

        step("new connections: TCP connect (direct) vs dial on the warm session (postern)");
        let (dn, d_us) = measure_new_stream(&direct, s.tcp_connects, s.dial_budget).await;
        let handshakes_before = dialer.handshakes();
        let (pn, p_us) = measure_new_stream(&postern, s.dials, s.dial_budget).await;
        let extra_handshakes = dialer.handshakes() - handshakes_before;
        rows.push(row(
            &format!("new stream µs (mean; {dn} TCP connects / {pn} dials)"),
            Some(d_us),
            p_us,
            2,
        ));

        let kib = |b: f64| b / 1024.0;
        rows.push(with_target(
            row(
                &format!(
                    "RSS KiB per idle inner stream, relay ({} streams)",
                    idle.opened
                ),
                None,
                kib(idle.relay_per),
                2,
            ),
            "<= 20 KB",
            idle.relay_per <= 20.0 * 1024.0,
        ));
        rows.push(with_target(
            row(
                &format!(
                    "RSS KiB per idle inner stream, agent ({} streams)",
                    idle.opened
                ),
                None,
                kib(idle.agent_per),
                2,
            ),
            "<= 20 KB",
            idle.agent_per <= 20.0 * 1024.0,
        ));
        if let Some(sp) = &splices {
            rows.push(row(
                &format!(
                    "RSS KiB per spliced session, relay ({} sessions)",
                    sp.opened
                ),
                None,
                kib(sp.relay_per),
                2,
            ));
            rows.push(row(
                &format!(
                    "RSS KiB per spliced session, agent ({} sessions)",
                    sp.opened
                ),
                None,
                kib(sp.agent_per),
                2,
            ));
        }

        let hs_cpu = |cpu: Option<f64>, wall: f64| cpu.unwrap_or(wall);
        for (cost, which) in [(&hs_first, "first contact"), (&hs, "returning peer")] {
            let responder = hs_cpu(cost.responder_cpu_us, cost.responder_wall_us);
            let full = hs_cpu(cost.full_cpu_us, cost.full_wall_us);
            let initiator = full - responder;
            for (side, cpu) in [
                ("responder (agent side)", responder),
                ("initiator (dialer side)", initiator),
            ] {
                rows.push(with_target(
                    row(&format!("handshake CPU µs, {which}, {side}"), None, cpu, 1),
                    "<= 150 µs",
                    cpu <= 150.0,
                ));
            }
        }
        let full = hs_cpu(hs.full_cpu_us, hs.full_wall_us);
        rows.push(row(
            "handshake CPU µs, returning peer, both sides together",
            None,
            full,
            1,
        ));

        children.check_alive();
        eprintln!();
        println!();
        print_table(&rows);
        println!();
        println!(
            "handshakes: {} timed in-process; CPU from /proc/thread-self/schedstat{} \
             (wall: both sides {:.1} µs, responder {:.1} µs)",
            hs.n,
            if hs.full_cpu_us.is_some() {
                ""
            } else {
                " unavailable, wall time shown"
            },
            hs.full_wall_us,
            hs.responder_wall_us
        );
        println!(
            "idle inner streams: RSS delta relay {:+} KiB, agent {:+} KiB over {} streams \
             (after dialing, before any request: relay {:+} KiB, agent {:+} KiB = {:.2} / {:.2} \
             KiB per stream)",
            idle.relay_delta / 1024,
            idle.agent_delta / 1024,
            idle.opened,
            idle_dialed.relay_delta / 1024,
            idle_dialed.agent_delta / 1024,
            idle_dialed.relay_per / 1024.0,
            idle_dialed.agent_per / 1024.0,
        );
        if let Some(sp) = &splices {
            println!(
                "spliced sessions: RSS delta relay {:+} KiB, agent {:+} KiB over {} sessions \
                 (one relay splice + one E2EE session each; informational)",
                sp.relay_delta / 1024,
                sp.agent_delta / 1024,
                sp.opened
            );
        }
        println!(
            "dialer: {} E2EE handshake(s) in total, {extra_handshakes} during the {pn} dials \
             (0 = every dial reused the warm session)",
            dialer.handshakes()
        );
        println!(
            "final RSS: relay {} KiB, agent {} KiB",
            rss(relay_pid) / 1024,
            rss(agent_pid) / 1024
        );
        rows
    });
    drop(rows);
    rt.shutdown_timeout(Duration::from_secs(2));
    drop(guard);
}

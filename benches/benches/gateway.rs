//! Gateway load bench: direct vs through the whole Postern path, in one run, printed as a table.
//!
//! * **direct**: hyper HTTP/1.1 client → TCP → a local hyper origin (`postern_tests::spawn_origin`).
//! * **postern**: hyper HTTP/1.1 client → TLS 1.3 → `postern-gateway` (API key check) → inner
//!   stream of its E2EE session → `postern-relay` → `postern expose` → the same origin.
//!
//! Measured: req/s and p50/p99 at 1 and 32 keep-alive connections for a small response and a
//! 64 KiB one; MB/s of one long download; gateway RSS per idle keep-alive client connection;
//! valid req/s at 32 connections with and without a concurrent flood of requests carrying
//! random invalid API keys, and the gateway's CPU per invalid request next to the cost of one
//! argon2 hash.
//!
//! Next to the small-response target at 32 connections the bench also loads the tunnel alone
//! (the bench client over an in-process dialer's kept-alive inner streams, no gateway) and
//! prints the ceiling that this measures for any gateway in front of it on the same cores (see
//! [`gateway_ceiling`]): a target above that ceiling cannot be met on this machine by work in
//! the gateway.
//!
//! The relay, the agent and the gateway are the real binaries, run as child processes so each
//! one's memory and CPU can be read from `/proc/<pid>`. Build them first (same target directory
//! as the bench): `cargo build --release -p postern-relay -p postern-cli -p postern-gateway`.
//!
//! Knobs (environment): `POSTERN_BENCH_SECS` (per load measurement, default 3),
//! `POSTERN_BENCH_DOWNLOAD_BYTES` (default 1 GiB; `64MiB` works), `POSTERN_BENCH_IDLE_CONNS`
//! (default 1000), `POSTERN_BENCH_INVALID_KEYS` (flood size per window, default 10000), `POSTERN_BIN_DIR`
//! (where the binaries are, if not next to the bench).
//!
//! Everything is on 127.0.0.1; every loop is bounded in count and in time; the child processes
//! are killed on exit, on panic (a guard's `Drop`) and on Ctrl-C.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use postern_benches::children::{
    binaries_or_exit, free_port, log_tail, run_cli, wait_for_port, warn_if_stale, Children, Guard,
};
use postern_benches::load::{
    env_u64, exchange, measure_download, measure_load_metered, open_connections, request_each,
    run_load, size_label, Download, GatewayRoute, Load, LoadSettings, Route, Sender,
};
use postern_benches::procfs::{machine, rss, CpuMeter};
use postern_benches::stack::{path_str, spawn_expose, start_relay, wait_for_lease, Keys, LEASE};
use postern_benches::table::{print_table, row, with_target, Row};
use postern_sdk::{Dialer, DialerConfig, Identity};
use postern_tests::spawn_origin;
use rand::distributions::{Alphanumeric, DistString};
use rand::Rng;
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;

const BUILD: &str = "cargo build --release -p postern-relay -p postern-cli -p postern-gateway";
/// The origin's small response: `hello from origin`, 17 bytes.
const SMALL: &str = "/hello";
const LARGE: &str = "/bytes/65536";

/// The targets.
const SMALL_32_RATIO: f64 = 0.30;
const LARGE_P50_US: f64 = 3_000.0;
const DOWNLOAD_RATIO: f64 = 0.12;
const IDLE_CONN_BYTES: f64 = 20_000.0;
/// "Does not slow valid traffic measurably": within the noise of a busy 2-core box.
const FLOOD_RATIO: f64 = 0.90;

/// The best `postern / direct` ratio that any gateway in front of the tunnel could reach on
/// this machine, from measurements of the same run.
///
/// The gateway path is the tunnel-only path (the bench client speaking HTTP/1.1 over an
/// in-process dialer's inner streams, kept alive: through the relay and the agent to the origin)
/// plus one more HTTP exchange over loopback TCP, client → gateway. That exchange costs at least
/// what the direct path costs in all (a client, a loopback hop, an HTTP server), before TLS, API
/// keys or any proxy logic. With every process on the same `cores`, the gateway path can serve at
/// most `cores / (cpu_tunnel + cpu_direct)` requests per second, CPU counted per request over
/// every process. The CPU is measured rather than inferred from req/s, so the bound holds even
/// if the tunnel-only load leaves cores idle.
fn gateway_ceiling(cores: f64, direct_rps: f64, cpu_direct_ns: f64, cpu_tunnel_ns: f64) -> f64 {
    let per_request = (cpu_direct_ns + cpu_tunnel_ns) / 1e9;
    if direct_rps <= 0.0 || per_request <= 0.0 {
        return 0.0;
    }
    cores / per_request / direct_rps
}

// ---------------------------------------------------------------------------------------------
// Settings

struct Settings {
    load: LoadSettings,
    idle_conns: usize,
    open_budget: Duration,
    invalid_keys: u64,
    flood_tasks: usize,
}

impl Settings {
    fn from_env() -> Self {
        Self {
            load: LoadSettings::from_env(),
            idle_conns: env_u64("POSTERN_BENCH_IDLE_CONNS", 1_000).max(1) as usize,
            open_budget: Duration::from_secs(120),
            invalid_keys: env_u64("POSTERN_BENCH_INVALID_KEYS", 10_000).max(1),
            flood_tasks: 2,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway child

struct Gateway {
    pid: u32,
    route: Arc<GatewayRoute>,
    log: PathBuf,
    /// Wall time of the one argon2 hash made for the bench's API key, in this process.
    argon2: Duration,
}

/// Writes the gateway's identity, DIAL grant, certificate, API key and config into `dir` and
/// starts `postern-gateway`; returns once its HTTPS port listens.
fn start_gateway(
    gateway_bin: &Path,
    cli: &Path,
    children: &Children,
    dir: &Path,
    keys: &Keys,
    relay: SocketAddr,
) -> Gateway {
    // Identity and grant through the CLI, like an operator would.
    let key_file = dir.join("gateway.key");
    let grant_file = dir.join("gateway.grants");
    run_cli(cli, &["keygen", "--out", &path_str(&key_file)]);
    run_cli(
        cli,
        &[
            "grant",
            "mint",
            "--signer",
            &path_str(&keys.control_plane_file),
            "--identity-file",
            &path_str(&key_file),
            "--lease",
            "*",
            "--dial",
            "--out",
            &path_str(&grant_file),
        ],
    );

    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("self-signed certificate");
    let cert_path = dir.join("gateway.crt");
    let cert_key_path = dir.join("gateway.crt.key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&cert_key_path, cert.key_pair.serialize_pem()).unwrap();

    let t0 = Instant::now();
    let (api_key, key_id, phc) = postern_gateway::auth::generate(12).expect("API key");
    let argon2 = t0.elapsed();

    let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // The flood and the valid traffic both come from 127.0.0.1. With the default per-IP limit
    // of failed attempts (30 a minute) the flood would be answered 429 before any key is looked
    // at, and the valid traffic would be blocked with it; raised, every invalid key goes
    // through the key check, which is what the bench is about.
    let config = format!(
        "relays = [\"ws://{relay}\"]\n\
         identity_key_file = \"{key}\"\n\
         grant_file = \"{grants}\"\n\n\
         [listen]\nhttps = \"{https}\"\n\n\
         [[listen.tls]]\ncert = \"{cert}\"\nkey = \"{cert_key}\"\nserver_names = [\"localhost\"]\n\n\
         [limits]\nfailed_auth_per_ip_per_minute = 1000000\n\n\
         [[lease]]\nname = \"{LEASE}\"\nowner_identity = \"{owner}\"\n\n\
         [[api_key]]\nid = \"{key_id}\"\nhash = \"{phc}\"\nname = \"bench\"\nleases = [\"{LEASE}\"]\n",
        key = path_str(&key_file),
        grants = path_str(&grant_file),
        cert = path_str(&cert_path),
        cert_key = path_str(&cert_key_path),
        owner = keys.owner.public_base64(),
    );
    let config_path = dir.join("gateway.toml");
    std::fs::write(&config_path, config).unwrap();

    let log = dir.join("gateway.err");
    let pid = children.spawn(
        "postern-gateway",
        Command::new(gateway_bin)
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    wait_for_port(https, children, &log);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(postern_sdk::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let route = Arc::new(GatewayRoute {
        addr: https,
        tls: TlsConnector::from(Arc::new(tls)),
        lease: LEASE.into(),
        api_key,
    });
    Gateway {
        pid,
        route,
        log,
        argon2,
    }
}

/// GETs through the gateway until one succeeds (15 s at most); describes the TLS session.
async fn wait_for_gateway(gw: &Gateway, children: &Children) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        children.check_alive();
        let mut sender = gw.route.connect().await;
        match exchange(&mut sender, gw.route.get(SMALL, &gw.route.api_key)).await {
            Ok((status, _)) if status.is_success() => break,
            result if Instant::now() >= deadline => panic!(
                "the gateway never answered GET {SMALL}: {result:?}\ngateway log:\n{}",
                log_tail(&gw.log)
            ),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let tcp = tokio::net::TcpStream::connect(gw.route.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = gw.route.tls.connect(name, tcp).await.unwrap();
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

// ---------------------------------------------------------------------------------------------
// Measurements

struct Idle {
    opened: usize,
    /// After the TLS handshake, before any request.
    handshaken_delta: i64,
    /// After one completed GET on each connection.
    delta: i64,
    still_open: usize,
}

impl Idle {
    fn per_conn(&self) -> f64 {
        self.delta as f64 / self.opened.max(1) as f64
    }
}

/// Opens `k` TLS connections to the gateway, makes one GET on each and keeps them idle; reads
/// the gateway's RSS before, after the handshakes and after the requests.
async fn measure_idle_connections(route: &Route, pid: u32, k: usize, budget: Duration) -> Idle {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss(pid) as i64;
    let deadline = Instant::now() + budget;
    let senders = open_connections(route, k, deadline).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let handshaken = rss(pid) as i64;
    let senders = request_each(route, senders, SMALL, deadline).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss(pid) as i64;
    let still_open = senders.iter().filter(|s| !s.is_closed()).count();
    let idle = Idle {
        opened: senders.len(),
        handshaken_delta: handshaken - before,
        delta: after - before,
        still_open,
    };
    drop(senders);
    tokio::time::sleep(Duration::from_millis(500)).await;
    idle
}

/// A well-formed API key (`pst_<id>_<secret>`) with a random id: unknown to the gateway.
fn random_invalid_key(real_id: &str) -> String {
    const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    loop {
        let id: String = (0..12)
            .map(|_| char::from(ID_ALPHABET[rng.gen_range(0..ID_ALPHABET.len())]))
            .collect();
        if id != real_id {
            let secret = Alphanumeric.sample_string(&mut rng, 40);
            return format!("pst_{id}_{secret}");
        }
    }
}

#[derive(Default)]
struct Flood {
    sent: u64,
    unauthorized: u64,
    /// Other statuses and how often.
    other: BTreeMap<u16, u64>,
    errors: u64,
    connections: u64,
    elapsed: Duration,
}

impl Flood {
    fn merge(&mut self, o: Flood) {
        self.sent += o.sent;
        self.unauthorized += o.unauthorized;
        for (s, n) in o.other {
            *self.other.entry(s).or_default() += n;
        }
        self.errors += o.errors;
        self.connections += o.connections;
        self.elapsed = self.elapsed.max(o.elapsed);
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "{} sent, {} answered 401 over {} connection(s) in {:.2} s",
            self.sent,
            self.unauthorized,
            self.connections,
            self.elapsed.as_secs_f64()
        );
        for (status, n) in &self.other {
            s.push_str(&format!(", {n} answered {status}"));
        }
        if self.errors > 0 {
            s.push_str(&format!(", {} failed", self.errors));
        }
        if self.unauthorized == self.sent {
            s.push_str(" — all 401");
        }
        s
    }
}

/// `tasks` tasks send up to `max` GETs with random invalid keys in all, for at most `dur`; with
/// `paced`, spread evenly over `dur`, otherwise back to back. Keep-alive; a connection the
/// gateway closes is replaced.
async fn flood(
    gw: &Arc<GatewayRoute>,
    tasks: usize,
    max: u64,
    dur: Duration,
    paced: bool,
) -> Flood {
    let real_id = gw
        .api_key
        .strip_prefix("pst_")
        .and_then(|k| k.split('_').next())
        .unwrap_or_default()
        .to_owned();
    let start = Instant::now();
    let deadline = start + dur;
    let tasks: Vec<_> = (0..tasks as u64)
        .map(|t| {
            let quota = max / tasks as u64 + u64::from(t < max % tasks as u64);
            let interval = dur.div_f64(quota.max(1) as f64);
            let gw = Arc::clone(gw);
            let real_id = real_id.clone();
            tokio::spawn(async move {
                let mut f = Flood::default();
                let mut sender: Option<Sender> = None;
                while f.sent < quota && Instant::now() < deadline {
                    if paced {
                        let at = start + interval.mul_f64(f.sent as f64);
                        tokio::time::sleep_until(at.into()).await;
                    }
                    if sender.as_ref().is_none_or(|s| s.is_closed()) {
                        f.connections += 1;
                        sender = Some(gw.connect().await);
                    }
                    let s = sender.as_mut().expect("connected");
                    f.sent += 1;
                    match exchange(s, gw.get(SMALL, &random_invalid_key(&real_id))).await {
                        Ok((StatusCode::UNAUTHORIZED, _)) => f.unauthorized += 1,
                        Ok((status, _)) => *f.other.entry(status.as_u16()).or_default() += 1,
                        Err(_) => {
                            f.errors += 1;
                            sender = None;
                        }
                    }
                }
                f.elapsed = start.elapsed();
                f
            })
        })
        .collect();
    let mut total = Flood::default();
    for t in tasks {
        total.merge(t.await.expect("flood task"));
    }
    total
}

/// Windows with the flood in the flood measurement, each between two without it.
const FLOOD_ROUNDS: usize = 3;

/// Valid GET /hello at 32 connections on the same warm connections, in windows that alternate
/// without and during a paced invalid-key flood: without, then [`FLOOD_ROUNDS`] times during and
/// without. The windows of each kind are pooled, so that a drift of this shared machine over the
/// run (its speed moves by tens of percent between runs) is not counted as the flood's effect.
/// Returns (without, with, the floods together).
async fn measure_flood(route: &Route, gw: &Arc<GatewayRoute>, s: &Settings) -> (Load, Load, Flood) {
    let (secs, max) = (s.load.secs, s.load.max_requests);
    let mut senders = Vec::with_capacity(32);
    for _ in 0..32 {
        senders.push(route.connect().await);
    }
    let (senders, _) = run_load(route, senders, SMALL, s.load.warmup, max).await;
    let (mut senders, first) = run_load(route, senders, SMALL, secs, max).await;
    let (mut without, mut with) = (vec![first], Vec::new());
    let (mut floods, mut flood_time) = (Flood::default(), Duration::ZERO);
    for _ in 0..FLOOD_ROUNDS {
        let flooding = {
            let gw = Arc::clone(gw);
            let (tasks, max) = (s.flood_tasks, s.invalid_keys);
            tokio::spawn(async move { flood(&gw, tasks, max, secs, true).await })
        };
        let (next, during) = run_load(route, senders, SMALL, secs, max).await;
        let flooded = flooding.await.expect("flood");
        flood_time += flooded.elapsed;
        floods.merge(flooded);
        with.push(during);
        let (next, after) = run_load(route, next, SMALL, secs, max).await;
        without.push(after);
        senders = next;
    }
    // The floods ran one after another: their times add up.
    floods.elapsed = flood_time;
    (pooled(without), pooled(with), floods)
}

/// Several load windows as one.
fn pooled(loads: Vec<Load>) -> Load {
    let mut all = Load {
        requests: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for load in loads {
        all.requests += load.requests;
        all.elapsed += load.elapsed;
        all.latencies.extend(load.latencies);
    }
    all.latencies.sort_unstable();
    all
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let s = Settings::from_env();
    let bins = binaries_or_exit(
        "gateway",
        &["postern-relay", "postern", "postern-gateway"],
        BUILD,
    );
    let (relay_bin, cli_bin, gateway_bin) = (&bins[0], &bins[1], &bins[2]);

    println!("postern gateway bench — {}", machine());
    println!("  relay: {}", relay_bin.display());
    println!("  agent: {} expose", cli_bin.display());
    println!("  gateway: {}", gateway_bin.display());
    warn_if_stale(relay_bin, &["sdk", "relay", "config"], BUILD);
    warn_if_stale(cli_bin, &["sdk", "relay", "config"], BUILD);
    warn_if_stale(gateway_bin, &["sdk", "relay", "config", "gateway"], BUILD);

    let children = Children::default();
    let guard = Guard::new(children.clone());
    let dir = guard.dir.clone();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    children.kill_on_ctrl_c(&rt, &dir);

    let keys = Keys::mint(cli_bin, &dir);
    let relay = start_relay(relay_bin, &children, &dir, &keys);

    rt.block_on(async {
        let origin = spawn_origin().await;
        let agent = spawn_expose(cli_bin, &children, &dir, origin, &relay.url, &keys);

        // The lease online, checked with an in-process dialer, before the gateway dials it.
        let me = Identity::generate();
        let dialer = Dialer::new(DialerConfig::new(
            relay.url.clone(),
            me.clone(),
            vec![keys.dial_grant(&me)],
        ));
        wait_for_lease(&dialer, &keys.target(), &children, &agent).await;
        // Kept: the same dialer is the "tunnel only" route of the ceiling measurement.
        let tunnel = Route::Dialer(dialer, Box::new(keys.target()));

        let gw = start_gateway(gateway_bin, cli_bin, &children, &dir, &keys, relay.addr);
        let tls = wait_for_gateway(&gw, &children).await;
        println!(
            "  client: hyper HTTP/1.1 keep-alive, TCP_NODELAY; postern over {tls}; direct over TCP"
        );

        let direct = Route::Direct(origin);
        let postern = Route::Gateway(Arc::clone(&gw.route));
        let meter = CpuMeter::new(vec![
            ("gateway", gw.pid),
            ("relay", relay.pid),
            ("agent", agent.pid),
            ("bench", std::process::id()),
        ]);
        let mut rows: Vec<Row> = Vec::new();
        let mut cpu_notes: Vec<String> = Vec::new();
        let step = |what: &str| eprintln!("… {what}");

        // Memory first, on a fresh gateway, so freed memory from the load tests cannot hide
        // the cost of new connections.
        step(&format!("{} idle keep-alive TLS connections", s.idle_conns));
        let idle = measure_idle_connections(&postern, gw.pid, s.idle_conns, s.open_budget).await;

        for (size, path) in [("small", SMALL), ("64 KiB", LARGE)] {
            for conns in [1usize, 32] {
                step(&format!("GET {path}, {conns} connection(s), direct"));
                let (dl, d0, d1) =
                    measure_load_metered(&direct, conns, path, &s.load, &meter).await;
                step(&format!("GET {path}, {conns} connection(s), postern"));
                let (pl, p0, p1) =
                    measure_load_metered(&postern, conns, path, &s.load, &meter).await;
                let rps = row(
                    &format!("req/s, {size}, {conns} conn"),
                    Some(dl.rps()),
                    pl.rps(),
                    0,
                );
                rows.push(if size == "small" && conns == 32 {
                    let ratio = pl.rps() / dl.rps();
                    with_target(
                        rps,
                        &format!(">= {SMALL_32_RATIO:.2}x"),
                        ratio >= SMALL_32_RATIO,
                    )
                } else {
                    rps
                });
                let p50 = row(
                    &format!("p50 latency µs, {size}, {conns} conn"),
                    Some(dl.quantile_us(0.5)),
                    pl.quantile_us(0.5),
                    1,
                );
                rows.push(if path == LARGE && conns == 1 {
                    let ok = pl.quantile_us(0.5) <= LARGE_P50_US;
                    with_target(p50, &format!("<= {LARGE_P50_US:.0} µs"), ok)
                } else {
                    p50
                });
                rows.push(row(
                    &format!("p99 latency µs, {size}, {conns} conn"),
                    Some(dl.quantile_us(0.99)),
                    pl.quantile_us(0.99),
                    1,
                ));
                rows.push(row(
                    &format!("  requests measured, {size}, {conns} conn"),
                    Some(dl.requests as f64),
                    pl.requests as f64,
                    0,
                ));
                if size == "small" && conns == 32 {
                    step(&format!("GET {path}, {conns} connection(s), tunnel only"));
                    let (tl, t0, t1) =
                        measure_load_metered(&tunnel, conns, path, &s.load, &meter).await;
                    rows.push(row(
                        &format!("req/s, {size}, {conns} conn, tunnel only (no gateway)"),
                        Some(dl.rps()),
                        tl.rps(),
                        0,
                    ));
                    let per_request = |b, a, n: u64| meter.total_ns(b, a) as f64 / n.max(1) as f64;
                    let ceiling = gateway_ceiling(
                        cores,
                        dl.rps(),
                        per_request(&d0, &d1, dl.requests),
                        per_request(&t0, &t1, tl.requests),
                    );
                    rows.push(Row {
                        ratio: format!("{ceiling:.3}x"),
                        ..row(
                            &format!("  ceiling: any gateway in front, {size}, {conns} conn"),
                            Some(dl.rps()),
                            ceiling * dl.rps(),
                            0,
                        )
                    });
                    cpu_notes.push(format!(
                        "  {size}, {conns} conn, tunnel only — {}",
                        meter.per_op_us(&t0, &t1, tl.requests),
                    ));
                }
                cpu_notes.push(format!(
                    "  {size}, {conns} conn — direct: {} | postern: {}",
                    meter.per_op_us(&d0, &d1, dl.requests),
                    meter.per_op_us(&p0, &p1, pl.requests),
                ));
            }
        }

        step(&format!("download {} bytes, direct", s.load.download_bytes));
        let d = measure_download(&direct, &s.load).await;
        step(&format!(
            "download {} bytes, postern",
            s.load.download_bytes
        ));
        let before = meter.snapshot();
        let p = measure_download(&postern, &s.load).await;
        let after = meter.snapshot();
        let partial = |x: &Download| if x.complete { "" } else { " (timed out)" };
        let bulk_ratio = p.mb_per_s() / d.mb_per_s();
        rows.push(with_target(
            row(
                &format!(
                    "download MB/s, {}{}{}",
                    size_label(s.load.download_bytes),
                    partial(&d),
                    partial(&p)
                ),
                Some(d.mb_per_s()),
                p.mb_per_s(),
                1,
            ),
            &format!(">= {DOWNLOAD_RATIO:.2}x"),
            bulk_ratio >= DOWNLOAD_RATIO,
        ));
        cpu_notes.push(format!(
            "  download, per MB — postern: {}",
            meter.per_op_us(&before, &after, (p.bytes / 1_000_000).max(1))
        ));

        rows.push(with_target(
            row(
                &format!(
                    "RSS KiB per idle keep-alive client conn, gateway ({} conns)",
                    idle.opened
                ),
                None,
                idle.per_conn() / 1024.0,
                2,
            ),
            "<= 20 KB (19.53 KiB)",
            idle.per_conn() <= IDLE_CONN_BYTES,
        ));

        step(&format!(
            "{} invalid-key requests alone, back to back",
            s.invalid_keys
        ));
        let before = meter.snapshot();
        let alone = flood(&gw.route, s.flood_tasks, s.invalid_keys, s.load.secs, false).await;
        let after = meter.snapshot();
        let gw_ns = meter.delta_ns("gateway", &before, &after).unwrap_or(0);
        let per_invalid_us = gw_ns as f64 / 1e3 / alone.sent.max(1) as f64;
        let argon2_us = gw.argon2.as_secs_f64() * 1e6;

        step("GET /hello, 32 connections, postern: without, during and after an invalid-key flood");
        let (without, with, flooded) = measure_flood(&postern, &gw.route, &s).await;
        let flood_ratio = with.rps() / without.rps();
        rows.push(with_target(
            Row {
                direct: format!("{:.0} w/o flood", without.rps()),
                ratio: format!("{flood_ratio:.3}x"),
                ..row(
                    "valid req/s, small, 32 conn, during invalid-key flood",
                    None,
                    with.rps(),
                    0,
                )
            },
            &format!(">= {FLOOD_RATIO:.2}x"),
            flood_ratio >= FLOOD_RATIO && flooded.unauthorized == flooded.sent,
        ));
        rows.push(with_target(
            row(
                &format!(
                    "gateway CPU µs per invalid-key request ({} alone)",
                    alone.sent
                ),
                None,
                per_invalid_us,
                1,
            ),
            &format!("no argon2: < {:.0} µs", argon2_us / 10.0),
            per_invalid_us < argon2_us / 10.0 && alone.unauthorized == alone.sent,
        ));

        children.check_alive();
        eprintln!();
        println!();
        print_table(&rows);
        println!();
        println!(
            "idle client connections: gateway RSS {:+} KiB over {} connections, {} still open \
             when measured (after the TLS handshake, before any request: {:+} KiB = {:.2} KiB \
             per connection)",
            idle.delta / 1024,
            idle.opened,
            idle.still_open,
            idle.handshaken_delta / 1024,
            idle.handshaken_delta as f64 / 1024.0 / idle.opened.max(1) as f64,
        );
        println!(
            "invalid-key flood during the valid load ({FLOOD_ROUNDS} windows of {} s, {} tasks \
             each, {} requests paced over each window): {}",
            s.load.secs.as_secs(),
            s.flood_tasks,
            s.invalid_keys,
            flooded.summary()
        );
        println!(
            "  valid req/s {:.0} without ({} windows alternating with those, pooled), {:.0} \
             during the flood; \"direct\" in that row is the Postern path without the flood, the \
             ratio is with / without",
            without.rps(),
            FLOOD_ROUNDS + 1,
            with.rps()
        );
        println!(
            "invalid keys alone (back to back): {}; gateway CPU {per_invalid_us:.1} µs each, \
             {:.0} req/s; one argon2 hash of the bench key took {:.1} ms here",
            alone.summary(),
            alone.sent as f64 / alone.elapsed.as_secs_f64(),
            argon2_us / 1e3
        );
        println!(
            "  (random well-formed keys with unknown ids; the per-IP failure limit is raised in \
             the bench config so that every one reaches the key check instead of a 429)"
        );
        println!("CPU µs per request, by process (bench = this process: clients and origin):");
        for note in &cpu_notes {
            println!("{note}");
        }
        println!(
            "final RSS: gateway {} KiB, relay {} KiB, agent {} KiB",
            rss(gw.pid) / 1024,
            rss(relay.pid) / 1024,
            rss(agent.pid) / 1024
        );
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    drop(guard);
}

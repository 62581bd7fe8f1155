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
//! Operations off vs on: three more gateways side by side on the same relay and agent, loaded
//! with the small response at 32 connections in rotated rounds — "ops off" (no rate-limit
//! budget, no breaker, no metrics listener, no access log), "ops on" (every budget set and
//! never reached, the breaker, metrics, the JSON access log to a file) and "ops on + redis"
//! (the same with the budgets decided by a `redis-server` the bench starts on a free loopback
//! port; skipped when `redis-server` is not installed): req/s, latency, CPU per request by
//! process (redis-server's included), the Redis decision time from the gateway's histogram.
//! Then the argon2 memory ceiling: the peak RSS growth of a fresh gateway over a burst of
//! concurrent wrong secrets for valid key ids from many client IPs, with
//! `limits.max_concurrent_key_checks` 2 (the default) and 16.
//!
//! The relay, the agent and the gateway are the real binaries, run as child processes so each
//! one's memory and CPU can be read from `/proc/<pid>`. Build them first (same target directory
//! as the bench): `cargo build --release -p postern-relay -p postern-cli -p postern-gateway`.
//!
//! Knobs (environment): `POSTERN_BENCH_SECS` (per load measurement, default 3),
//! `POSTERN_BENCH_DOWNLOAD_BYTES` (default 1 GiB; `64MiB` works), `POSTERN_BENCH_IDLE_CONNS`
//! (default 1000), `POSTERN_BENCH_INVALID_KEYS` (flood size per window, default 10000), `POSTERN_BIN_DIR`
//! (where the binaries are, if not next to the bench), `POSTERN_BENCH_ONLY` (comma-separated
//! sections to run: `base` — everything above the operations comparison —, `peers`, `ops`,
//! `argon2`; default all).
//!
//! The peers (section `peers`, after the base measurements): in the same run, the paths a user
//! would pick instead of Postern — nginx terminating TLS with an API-key check in front of the
//! origin ("nginx-tls"), rathole 0.5.0's Noise tunnel in front of it ("rathole-noise"), and
//! the two chained ("chain": nginx → rathole → origin) — next to "direct" and "postern", each
//! loaded the same way: GET /hello at 32 connections (req/s, p50/p99, CPU µs per request by
//! process and for the whole path), at 1 connection (p50), GET /bytes/65536 at 32 (req/s,
//! p50/p99) and the download (MB/s). One grid with a column per path, and rows in the main
//! table for issue 11's targets, Postern against the peer each names: small at 32 req/s ≥ 0.8×
//! chain (stretch 1.0×) and whole-path CPU per request ≤ 1.25× chain's, small at 1 p50 ≤ 1.5×
//! chain's, 64 KiB at 32 req/s ≥ 0.5× nginx-tls and p99 ≤ 3× its own p50, download ≥ 1.0×
//! rathole-noise. Before loading, nginx must answer 200 with the key and 401 without it or
//! with a wrong one, or the bench stops. nginx comes from Debian's package and rathole from
//! `bash benches/setup-peers.sh` (`$POSTERN_TOOLS_DIR/bin`, default
//! `/var/tmp/postern-tools/bin`); a missing one is named with that command, and the paths that
//! need it are skipped while the rest of the bench runs. How each peer is configured, and why
//! nginx has one worker: [`postern_benches::peers`].
//!
//! Everything is on 127.0.0.1; every loop is bounded in count and in time; the child processes
//! are killed on exit, on panic (a guard's `Drop`) and on Ctrl-C.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use postern_benches::children::{
    binaries_or_exit, free_port, log_tail, run_cli, wait_for_port, warn_if_stale, Children, Guard,
};
use postern_benches::load::{
    env_u64, exchange, measure_download, measure_load_metered, open_connections, request,
    request_each, run_load, size_label, Download, GatewayRoute, Load, LoadSettings, Route, Sender,
    MIB,
};
use postern_benches::peers::{check_api_key, start_nginx, start_rathole, NginxSpec, PeerTools};
use postern_benches::procfs::{machine, reset_peak_rss, rss, vm_hwm_bytes, CpuMeter, CpuSnapshot};
use postern_benches::prom;
use postern_benches::redis::start_redis;
use postern_benches::stack::{path_str, spawn_expose, start_relay, wait_for_lease, Keys, LEASE};
use postern_benches::table::{print_grid, print_table, row, with_target, Row};
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
    /// `POSTERN_BENCH_ONLY`: the sections to run (`base`, `ops`, `argon2`); all when unset.
    only: Option<Vec<String>>,
}

impl Settings {
    fn from_env() -> Self {
        Self {
            load: LoadSettings::from_env(),
            idle_conns: env_u64("POSTERN_BENCH_IDLE_CONNS", 1_000).max(1) as usize,
            open_budget: Duration::from_secs(120),
            invalid_keys: env_u64("POSTERN_BENCH_INVALID_KEYS", 10_000).max(1),
            flood_tasks: 2,
            only: std::env::var("POSTERN_BENCH_ONLY").ok().map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            }),
        }
    }

    /// Whether section `name` runs.
    fn runs(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|s| s == name))
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway child

/// What every gateway the bench starts shares: the binaries, the children, the keys, the relay
/// and the agent.
struct Stack<'a> {
    gateway_bin: &'a Path,
    cli: &'a Path,
    children: &'a Children,
    dir: &'a Path,
    keys: &'a Keys,
    relay: SocketAddr,
    relay_pid: u32,
    agent_pid: u32,
}

/// What differs between the gateways the bench starts.
struct GatewaySpec {
    /// Names its files (`{name}.toml`, `{name}.err`, ...) and its child process.
    name: String,
    /// `RUST_LOG` of the process (`warn`: no access log for successful requests).
    rust_log: &'static str,
    /// Lines added to `[limits]`.
    limits: String,
    /// Tables added to the config (`[rate_limit]`, `[breaker]`).
    tables: String,
    /// The metrics listener's address (port 0: any free port, not scraped); `None`:
    /// `enabled = false`.
    metrics: Option<SocketAddr>,
    /// More `[[api_key]]` entries for the lease: (id, argon2 PHC hash).
    extra_keys: Vec<(String, String)>,
}

impl GatewaySpec {
    /// The bench's usual gateway: defaults but for the raised failed-auth limit, metrics on any
    /// free port (parallel runs never collide on the default 9464), no access log.
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            rust_log: "warn",
            limits: String::new(),
            tables: String::new(),
            metrics: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            extra_keys: Vec::new(),
        }
    }
}

struct Gateway {
    pid: u32,
    route: Arc<GatewayRoute>,
    log: PathBuf,
    /// Wall time of the one argon2 hash made for the bench's API key, in this process.
    argon2: Duration,
    /// The metrics listener, when its port was chosen by the bench (scrapable).
    metrics: Option<SocketAddr>,
}

/// Writes the gateway's identity, DIAL grant, certificate, API key and config into the stack's
/// directory and starts `postern-gateway`; returns once its HTTPS port (and a chosen metrics
/// port) listens.
fn start_gateway(stack: &Stack<'_>, spec: &GatewaySpec) -> Gateway {
    let (cli, children, dir, keys) = (stack.cli, stack.children, stack.dir, stack.keys);
    let name = &spec.name;
    // Identity and grant through the CLI, like an operator would.
    let key_file = dir.join(format!("{name}.key"));
    let grant_file = dir.join(format!("{name}.grants"));
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
    let cert_path = dir.join(format!("{name}.crt"));
    let cert_key_path = dir.join(format!("{name}.crt.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&cert_key_path, cert.key_pair.serialize_pem()).unwrap();

    let t0 = Instant::now();
    let (api_key, key_id, phc) = postern_gateway::auth::generate(12).expect("API key");
    let argon2 = t0.elapsed();

    let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics = match spec.metrics {
        Some(addr) => format!("[metrics]\nlisten = \"{addr}\"\n"),
        None => "[metrics]\nlisten = \"127.0.0.1:0\"\nenabled = false\n".into(),
    };
    let extra_keys: String = spec
        .extra_keys
        .iter()
        .enumerate()
        .map(|(i, (id, phc))| {
            format!(
                "\n[[api_key]]\nid = \"{id}\"\nhash = \"{phc}\"\nname = \"extra {i}\"\n\
                 leases = [\"{LEASE}\"]\n"
            )
        })
        .collect();
    // The flood and the valid traffic both come from 127.0.0.1. With the default per-IP limit
    // of failed attempts (30 a minute) the flood would be answered 429 before any key is looked
    // at, and the valid traffic would be blocked with it; raised, every invalid key goes
    // through the key check, which is what the bench is about. The idle-connection measurement
    // opens its 1000 connections from 127.0.0.1 too: the per-IP connection cap is raised for
    // the same reason.
    let config = format!(
        "relays = [\"ws://{relay}\"]\n\
         identity_key_file = \"{key}\"\n\
         grant_file = \"{grants}\"\n\n\
         [listen]\nhttps = \"{https}\"\n\n\
         [[listen.tls]]\ncert = \"{cert}\"\nkey = \"{cert_key}\"\nserver_names = [\"localhost\"]\n\n\
         [limits]\nfailed_auth_per_ip_per_minute = 1000000\nmax_connections_per_ip = 100000\n{limits}\n\
         {metrics}\n{tables}\n\
         [[lease]]\nname = \"{LEASE}\"\nowner_identity = \"{owner}\"\n\n\
         [[api_key]]\nid = \"{key_id}\"\nhash = \"{phc}\"\nname = \"bench\"\nleases = [\"{LEASE}\"]\n\
         {extra_keys}",
        relay = stack.relay,
        key = path_str(&key_file),
        grants = path_str(&grant_file),
        cert = path_str(&cert_path),
        cert_key = path_str(&cert_key_path),
        limits = spec.limits,
        tables = spec.tables,
        owner = keys.owner.public_base64(),
    );
    let config_path = dir.join(format!("{name}.toml"));
    std::fs::write(&config_path, config).unwrap();

    let log = dir.join(format!("{name}.err"));
    let child_name = if name == "gateway" {
        "postern-gateway".to_owned()
    } else {
        format!("postern-gateway ({name})")
    };
    let pid = children.spawn(
        &child_name,
        Command::new(stack.gateway_bin)
            .arg("--config")
            .arg(&config_path)
            .args(["--log-format", "json"])
            .env("RUST_LOG", spec.rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    wait_for_port(https, children, &log);
    let metrics = spec.metrics.filter(|a| a.port() != 0);
    if let Some(addr) = metrics {
        wait_for_port(addr, children, &log);
    }

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
        metrics,
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
    gw.route.describe_tls().await
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
// Operations off vs on, and Redis-backed decisions

/// Rounds of the operations comparison: each round runs one window per gateway, the order
/// rotated by one every round so that each gateway takes each position once (a machine that
/// drifts over the run moves them all alike).
const OPS_ROUNDS: usize = 3;
/// The target: gateway CPU per request with every operations feature on within 5 % of
/// all of them off.
const OPS_CPU_RATIO: f64 = 1.05;
/// The budget the "ops on" gateways set on every limit: far above what this machine can send,
/// so that it is checked on every request and never refuses.
const NEVER_REACHED: &str = "{ requests = 10000000, per = \"1s\" }";
/// The gateway's histogram of one Redis decision.
const REDIS_HISTOGRAM: &str = "postern_ratelimit_redis_duration_seconds";

/// "ops off": no rate-limit budget, no breaker, no metrics listener, no access log.
fn ops_off_spec() -> GatewaySpec {
    GatewaySpec {
        rust_log: "warn,postern::access=off",
        tables: "[breaker]\nenabled = false\n".into(),
        metrics: None,
        ..GatewaySpec::new("gateway-ops-off")
    }
}

/// "ops on": every budget set (global, per key, per lease, per IP; never reached), the breaker
/// on, the metrics listener on a port picked here (to scrape it), the JSON access log on (to
/// the stderr file); with `redis_url`, the budgets are decided in Redis.
fn ops_on_spec(name: &str, redis_url: Option<&str>) -> GatewaySpec {
    let backend = match redis_url {
        Some(url) => format!("backend = \"redis\"\nredis_url = \"{url}\"\n"),
        None => "backend = \"local\"\n".into(),
    };
    // Diagnostics: `POSTERN_BENCH_OPS_ON_LOG` replaces the access-log filter, and
    // `POSTERN_BENCH_OPS_ON_BUDGETS=0` leaves the budgets out, to tell the costs apart.
    let rust_log: &'static str = match std::env::var("POSTERN_BENCH_OPS_ON_LOG") {
        Ok(filter) => Box::leak(filter.into_boxed_str()),
        Err(_) => "warn,postern::access=info",
    };
    let budgets = std::env::var("POSTERN_BENCH_OPS_ON_BUDGETS").map_or(true, |v| v != "0");
    let budgets = if budgets {
        format!(
            "global = {NEVER_REACHED}\nper_key = {NEVER_REACHED}\n\
             per_lease = {NEVER_REACHED}\nper_ip = {NEVER_REACHED}\n"
        )
    } else {
        String::new()
    };
    GatewaySpec {
        rust_log,
        tables: format!("[rate_limit]\n{backend}{budgets}\n[breaker]\nenabled = true\n"),
        metrics: Some(SocketAddr::from(([127, 0, 0, 1], free_port()))),
        ..GatewaySpec::new(name)
    }
}

/// One gateway of the operations comparison with its warm connections and pooled windows.
struct OpsRun {
    label: &'static str,
    gw: Gateway,
    route: Route,
    meter: CpuMeter,
    senders: Vec<Sender>,
    windows: Vec<Load>,
    /// CPU of the measured windows, pooled.
    cpu: CpuSnapshot,
    /// Requests sent in windows and warm-ups.
    sent: u64,
}

impl OpsRun {
    fn start(
        stack: &Stack<'_>,
        label: &'static str,
        spec: &GatewaySpec,
        redis: Option<u32>,
    ) -> Self {
        let gw = start_gateway(stack, spec);
        let mut procs = vec![
            ("gateway", gw.pid),
            ("relay", stack.relay_pid),
            ("agent", stack.agent_pid),
            ("bench", std::process::id()),
        ];
        if let Some(pid) = redis {
            procs.push(("redis-server", pid));
        }
        let meter = CpuMeter::new(procs);
        Self {
            label,
            route: Route::Gateway(Arc::clone(&gw.route)),
            cpu: meter.zero(),
            meter,
            gw,
            senders: Vec::new(),
            windows: Vec::new(),
            sent: 0,
        }
    }

    /// A warm-up (not measured) and one measured window of GET /hello on the kept connections.
    async fn window(&mut self, s: &Settings) {
        let max = s.load.max_requests;
        let senders = std::mem::take(&mut self.senders);
        let (senders, warm) = run_load(&self.route, senders, SMALL, s.load.warmup, max).await;
        let before = self.meter.snapshot();
        let (senders, load) = run_load(&self.route, senders, SMALL, s.load.secs, max).await;
        let after = self.meter.snapshot();
        self.cpu.add_delta(&before, &after);
        self.sent += warm.requests + load.requests;
        self.windows.push(load);
        self.senders = senders;
    }

    /// The windows as one, and CPU µs per request: (load, gateway, every process as text).
    fn pooled(&mut self) -> (Load, f64, String) {
        let load = pooled(std::mem::take(&mut self.windows));
        let zero = self.meter.zero();
        let n = load.requests.max(1);
        let gateway = self
            .meter
            .delta_ns("gateway", &zero, &self.cpu)
            .unwrap_or(0) as f64;
        let text = self.meter.per_op_us(&zero, &self.cpu, n);
        (load, gateway / 1e3 / n as f64, text)
    }

    fn per_request_us(&self, name: &str, requests: u64) -> f64 {
        let zero = self.meter.zero();
        self.meter.delta_ns(name, &zero, &self.cpu).unwrap_or(0) as f64
            / 1e3
            / requests.max(1) as f64
    }
}

/// A scrape of a gateway's `/metrics`, parsed (empty without a known metrics address).
async fn scrape_gateway(gw: &Gateway) -> Vec<prom::Sample> {
    match gw.metrics {
        Some(addr) => prom::parse(&prom::scrape(addr).await),
        None => Vec::new(),
    }
}

/// (lines, lines of target `postern::access`) in a log file.
fn access_log_lines(path: &Path) -> (usize, usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let access = text
        .lines()
        .filter(|l| l.contains("postern::access"))
        .count();
    (text.lines().count(), access)
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("—".into(), |v| format!("{v:.prec$}"))
}

/// "ops off", "ops on" and (with a `redis-server` on this machine) "ops on + redis": three
/// gateways side by side on the same relay and agent, GET /hello at 32 connections in
/// [`OPS_ROUNDS`] rotated rounds, pooled per gateway. Returns table rows and note lines.
async fn measure_ops(stack: &Stack<'_>, s: &Settings) -> (Vec<Row>, Vec<String>) {
    let step = |what: &str| eprintln!("… {what}");
    step("operations off / on / on + redis: starting gateways (and redis-server)");
    let redis = start_redis(stack.children, stack.dir);
    let mut runs = vec![
        OpsRun::start(stack, "ops off", &ops_off_spec(), None),
        OpsRun::start(stack, "ops on", &ops_on_spec("gateway-ops-on", None), None),
    ];
    if let Ok(r) = &redis {
        let spec = ops_on_spec("gateway-ops-redis", Some(&r.url()));
        runs.push(OpsRun::start(stack, "ops on + redis", &spec, Some(r.pid)));
    }
    for run in &mut runs {
        wait_for_gateway(&run.gw, stack.children).await;
        for _ in 0..32 {
            let mut sender = run.route.connect().await;
            // One request now: a connection that has sent nothing is closed by the gateway's
            // header deadline (`request_header_timeout`) while the other runs' windows go by.
            request(&run.route, &mut sender, SMALL).await;
            run.senders.push(sender);
        }
    }
    for round in 0..OPS_ROUNDS {
        for k in 0..runs.len() {
            let i = (round + k) % runs.len();
            step(&format!(
                "GET {SMALL}, 32 connections, {} (round {}/{OPS_ROUNDS})",
                runs[i].label,
                round + 1
            ));
            runs[i].window(s).await;
        }
    }
    stack.children.check_alive();
    let mut scraped = Vec::new();
    for run in &runs {
        scraped.push(scrape_gateway(&run.gw).await);
    }
    let results: Vec<(Load, f64, String)> = runs.iter_mut().map(OpsRun::pooled).collect();

    let mut rows = Vec::new();
    let mut notes = vec![format!(
        "operations off vs on (GET {SMALL}, 32 connections; {OPS_ROUNDS} rounds of one {} s \
         window per gateway, order rotated each round, windows pooled per gateway; the gateways \
         run side by side on the same relay and agent):",
        s.load.secs.as_secs()
    )];
    notes.push(
        "  ops off: no [rate_limit] budget, [breaker] enabled = false, [metrics] enabled = \
         false, RUST_LOG=warn,postern::access=off"
            .into(),
    );
    notes.push(format!(
        "  ops on: [rate_limit] global, per_key, per_lease and per_ip = {NEVER_REACHED} \
         (local), [breaker] enabled, [metrics] on, JSON access log (RUST_LOG=warn,\
         postern::access=info) to a file"
    ));
    match &redis {
        Ok(r) => notes.push(format!(
            "  ops on + redis: the same with backend = \"redis\", {} (redis-server pid {}, \
             default redis_timeout)",
            r.url(),
            r.pid
        )),
        Err(e) => notes.push(format!("  ops on + redis: not measured ({e})")),
    }
    for (run, (load, _, cpu)) in runs.iter().zip(&results) {
        notes.push(format!(
            "  {} — {} requests, {:.0} req/s, p50 {:.1} µs, p99 {:.1} µs; CPU µs per request: {cpu}",
            run.label,
            load.requests,
            load.rps(),
            load.quantile_us(0.5),
            load.quantile_us(0.99),
        ));
    }

    let (off, on) = (&results[0], &results[1]);
    let vs = |metric: &str, base: f64, base_label: &str, v: f64, prec: usize| Row {
        direct: format!("{base:.prec$} {base_label}"),
        ..row(metric, Some(base), v, prec)
    };
    rows.push(vs(
        "req/s, small, 32 conn, ops on vs off",
        off.0.rps(),
        "off",
        on.0.rps(),
        0,
    ));
    let cpu_ratio = on.1 / off.1;
    rows.push(with_target(
        vs(
            "gateway CPU µs/request, small, 32 conn, ops on vs off",
            off.1,
            "off",
            on.1,
            1,
        ),
        &format!("<= {OPS_CPU_RATIO:.2}x"),
        cpu_ratio <= OPS_CPU_RATIO,
    ));
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        rows.push(vs(
            &format!("{name} latency µs, small, 32 conn, ops on vs off"),
            off.0.quantile_us(q),
            "off",
            on.0.quantile_us(q),
            1,
        ));
    }

    let on_metrics = &scraped[1];
    let (lines, access) = access_log_lines(&runs[1].gw.log);
    notes.push(format!(
        "  ops on: /metrics postern_requests_total = {}; access log {lines} lines ({access} of \
         postern::access) for {} requests sent in windows and warm-ups (+ the readiness check)",
        fmt_opt(prom::sum(on_metrics, "postern_requests_total"), 0),
        runs[1].sent
    ));

    if let Some(with_redis) = results.get(2) {
        let m = &scraped[2];
        let buckets = prom::buckets(m, REDIS_HISTOGRAM);
        let q_us = |q| prom::histogram_quantile(q, &buckets).map(|v| v * 1e6);
        let count = prom::sum(m, &format!("{REDIS_HISTOGRAM}_count"));
        let mean_us = prom::sum(m, &format!("{REDIS_HISTOGRAM}_sum"))
            .zip(count)
            .filter(|(_, n)| *n > 0.0)
            .map(|(sum, n)| sum / n * 1e6);
        let fallback = prom::sum(m, "postern_ratelimit_redis_fallback");
        let errors = prom::sum(m, "postern_ratelimit_redis_errors_total");
        let redis_us = runs[2].per_request_us("redis-server", with_redis.0.requests);
        rows.push(vs(
            "req/s, small, 32 conn, ops on + redis vs local",
            on.0.rps(),
            "local",
            with_redis.0.rps(),
            0,
        ));
        rows.push(vs(
            "gateway CPU µs/request, small, 32 conn, ops on + redis vs local",
            on.1,
            "local",
            with_redis.1,
            1,
        ));
        for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
            rows.push(vs(
                &format!("{name} latency µs, small, 32 conn, ops on + redis vs local"),
                on.0.quantile_us(q),
                "local",
                with_redis.0.quantile_us(q),
                1,
            ));
        }
        rows.push(row(
            "redis-server CPU µs/request, small, 32 conn",
            None,
            redis_us,
            1,
        ));
        for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
            rows.push(with_target(
                Row {
                    postern: fmt_opt(q_us(q), 1),
                    ..row(
                        &format!("{name} Redis decision µs (gateway histogram)"),
                        None,
                        0.0,
                        1,
                    )
                },
                "fallback 0",
                fallback == Some(0.0),
            ));
        }
        let (lines, access) = access_log_lines(&runs[2].gw.log);
        notes.push(format!(
            "  ops on + redis: {} Redis decisions, p50 {} µs, p99 {} µs (histogram_quantile over \
             the {REDIS_HISTOGRAM} buckets), mean {} µs; postern_ratelimit_redis_fallback = {} \
             (must be 0), postern_ratelimit_redis_errors_total = {}; postern_requests_total = {}; \
             access log {lines} lines ({access} of postern::access) for {} requests sent",
            fmt_opt(count, 0),
            fmt_opt(q_us(0.5), 1),
            fmt_opt(q_us(0.99), 1),
            fmt_opt(mean_us, 1),
            fmt_opt(fallback, 0),
            fmt_opt(errors, 0),
            fmt_opt(prom::sum(m, "postern_requests_total"), 0),
            runs[2].sent,
        ));
        notes.push(format!(
            "  ops on + redis vs ops on (local): end-to-end p50 {:+.1} µs, p99 {:+.1} µs; \
             redis-server CPU {redis_us:.1} µs per request; req/s {:.3}x",
            with_redis.0.quantile_us(0.5) - on.0.quantile_us(0.5),
            with_redis.0.quantile_us(0.99) - on.0.quantile_us(0.99),
            with_redis.0.rps() / on.0.rps(),
        ));
    }

    for run in &runs {
        stack.children.stop(run.gw.pid);
    }
    if let Ok(r) = &redis {
        stack.children.stop(r.pid);
    }
    (rows, notes)
}

// ---------------------------------------------------------------------------------------------
// argon2 memory ceiling

/// Concurrent wrong-secret requests in one burst.
const ARGON2_BURST: usize = 64;
/// Valid key ids the burst spreads over (checks of one id queue behind each other: one argon2
/// run at a time per id, whatever the slots).
const ARGON2_KEY_IDS: usize = 32;
/// What one argon2 run holds: m = 19456 KiB (the hashes `auth::generate` makes).
const ARGON2_RUN_MIB: f64 = 19.0;
/// The ceiling's target: growth within the slots' argon2 memory, plus a quarter for the rest.
const ARGON2_SLACK: f64 = 1.25;

struct Burst {
    slots: usize,
    ids: usize,
    rss_before: u64,
    peak: u64,
    /// RSS 1 s after the burst.
    rss_after: u64,
    hwm_reset: bool,
    unauthorized: u64,
    other: BTreeMap<u16, u64>,
    errors: u64,
    elapsed: Duration,
    verifications: Option<f64>,
}

impl Burst {
    fn growth_mib(&self) -> f64 {
        self.peak.saturating_sub(self.rss_before) as f64 / MIB as f64
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "  max_concurrent_key_checks = {}, {} key id(s): RSS {:.1} MiB before, peak {:+.1} \
             MiB (VmHWM{}), {:+.1} MiB 1 s after; {} answered 401",
            self.slots,
            self.ids,
            self.rss_before as f64 / MIB as f64,
            self.growth_mib(),
            if self.hwm_reset {
                " reset before the burst"
            } else {
                " not resettable: includes the start-up peak"
            },
            self.rss_after as f64 / MIB as f64 - self.rss_before as f64 / MIB as f64,
            self.unauthorized,
        );
        for (status, n) in &self.other {
            s.push_str(&format!(", {n} answered {status}"));
        }
        if self.errors > 0 {
            s.push_str(&format!(", {} failed", self.errors));
        }
        s.push_str(&format!(
            " in {:.2} s; argon2 runs (postern_key_verifications_total, the readiness check's \
             one included): {}",
            self.elapsed.as_secs_f64(),
            fmt_opt(self.verifications, 0)
        ));
        s
    }
}

/// A fresh gateway with `max_concurrent_key_checks = slots` and the extra `keys`, one TLS
/// connection per burst request from its own client IP (127.0.0.2, 127.0.0.3, ...), then
/// [`ARGON2_BURST`] GETs at once with wrong secrets for the first `ids` of `keys`, round robin;
/// the gateway's RSS before, its peak during (VmHWM, reset first) and its RSS after.
async fn argon2_burst(
    stack: &Stack<'_>,
    keys: &[(String, String)],
    slots: usize,
    ids: usize,
) -> Burst {
    let spec = GatewaySpec {
        limits: format!("max_concurrent_key_checks = {slots}\nkey_verify_timeout = \"30s\"\n"),
        metrics: Some(SocketAddr::from(([127, 0, 0, 1], free_port()))),
        extra_keys: keys.to_vec(),
        ..GatewaySpec::new(&format!("gateway-argon2-{slots}-{ids}"))
    };
    let gw = start_gateway(stack, &spec);
    wait_for_gateway(&gw, stack.children).await;
    let mut senders = Vec::with_capacity(ARGON2_BURST);
    for i in 0..ARGON2_BURST {
        let ip = Ipv4Addr::new(127, 0, (2 + i as u32 / 254) as u8, (2 + i % 254) as u8);
        senders.push(gw.route.connect_from(ip).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hwm_reset = reset_peak_rss(gw.pid);
    let rss_before = rss(gw.pid);
    let start = Instant::now();
    let mut rng = rand::thread_rng();
    let requests: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, mut sender)| {
            let id = &keys[i % ids.clamp(1, keys.len())].0;
            let wrong = format!("pst_{id}_{}", Alphanumeric.sample_string(&mut rng, 40));
            let req = gw.route.get(SMALL, &wrong);
            tokio::spawn(async move { exchange(&mut sender, req).await })
        })
        .collect();
    let mut burst = Burst {
        slots,
        ids,
        rss_before,
        peak: 0,
        rss_after: 0,
        hwm_reset,
        unauthorized: 0,
        other: BTreeMap::new(),
        errors: 0,
        elapsed: Duration::ZERO,
        verifications: None,
    };
    for r in requests {
        match r.await.expect("burst request") {
            Ok((StatusCode::UNAUTHORIZED, _)) => burst.unauthorized += 1,
            Ok((status, _)) => *burst.other.entry(status.as_u16()).or_default() += 1,
            Err(_) => burst.errors += 1,
        }
    }
    burst.elapsed = start.elapsed();
    burst.peak = vm_hwm_bytes(gw.pid).unwrap_or(0).max(rss_before);
    tokio::time::sleep(Duration::from_secs(1)).await;
    burst.rss_after = rss(gw.pid);
    burst.verifications = prom::sum(
        &scrape_gateway(&gw).await,
        "postern_key_verifications_total",
    );
    stack.children.check_alive();
    stack.children.stop(gw.pid);
    burst
}

/// Peak RSS growth of a fresh gateway over a burst of wrong secrets for valid key ids, with
/// max_concurrent_key_checks 2 (the default) and 16, the burst at one key id and spread over
/// [`ARGON2_KEY_IDS`]. Returns table rows and note lines.
async fn measure_argon2_ceiling(stack: &Stack<'_>) -> (Vec<Row>, Vec<String>) {
    eprintln!("… argon2 memory ceiling: {ARGON2_KEY_IDS} API keys");
    let keys: Vec<(String, String)> = tokio::task::spawn_blocking(|| {
        (0..ARGON2_KEY_IDS)
            .map(|_| {
                let (_, id, phc) = postern_gateway::auth::generate(12).expect("API key");
                (id, phc)
            })
            .collect()
    })
    .await
    .expect("API keys");
    let mut bursts = Vec::new();
    for ids in [ARGON2_KEY_IDS, 1] {
        for slots in [2, 16] {
            eprintln!(
                "… {ARGON2_BURST} wrong-secret requests at {ids} key id(s), \
                 max_concurrent_key_checks = {slots}"
            );
            bursts.push(argon2_burst(stack, &keys, slots, ids).await);
        }
    }
    let mut rows = Vec::new();
    for pair in bursts.chunks(2) {
        let (two, sixteen) = (&pair[0], &pair[1]);
        let r = Row {
            direct: format!("{:.1} (16 slots)", sixteen.growth_mib()),
            ..row(
                &format!(
                    "gateway peak RSS growth MiB, {ARGON2_BURST} wrong secrets at {} key id(s), \
                     2 slots",
                    two.ids
                ),
                Some(sixteen.growth_mib()),
                two.growth_mib(),
                1,
            )
        };
        let limit = two.slots as f64 * ARGON2_RUN_MIB * ARGON2_SLACK;
        rows.push(with_target(
            r,
            &format!("<= {limit:.1} MiB"),
            two.growth_mib() <= limit && two.unauthorized == ARGON2_BURST as u64,
        ));
    }
    let mut notes = vec![format!(
        "argon2 memory ceiling: {ARGON2_BURST} concurrent GETs with wrong secrets for valid key \
         ids, each from its own client IP (127.0.0.2 ...), on a fresh gateway each \
         (limits.failed_auth_per_ip_per_minute = 1000000, key_verify_timeout = 30s); one argon2 \
         run holds ~{ARGON2_RUN_MIB:.0} MiB; \"direct\" in those rows is \
         max_concurrent_key_checks = 16, the target {ARGON2_SLACK}x the argon2 memory of 2 slots:"
    )];
    notes.extend(bursts.iter().map(Burst::summary));
    notes.push(
        "  (checks of one key id queue behind each other, one argon2 run at a time per id: at \
         one key id the slots do not come into play)"
            .into(),
    );
    (rows, notes)
}

// ---------------------------------------------------------------------------------------------

/// What the peers section runs next to: the bench's directory, origin and Postern route.
struct PeerStack<'a> {
    children: &'a Children,
    dir: &'a Path,
    origin: SocketAddr,
    gateway: &'a Arc<GatewayRoute>,
    postern: &'a Route,
    postern_meter: &'a CpuMeter,
}

/// The processes whose CPU the peers' rows show, in the order shown (a path meters those of
/// its own; `bench` is this process: the load client and the in-process origin).
const PEER_PROCS: [&str; 7] = [
    "bench",
    "nginx",
    "rathole server",
    "rathole client",
    "gateway",
    "relay",
    "agent",
];

/// One path of the peers section: how the bench reaches the origin through it and which
/// processes are on it.
struct PeerPath {
    name: &'static str,
    route: Route,
    meter: CpuMeter,
}

/// A load's CPU: µs per request, every metered process together and by process.
struct PerRequest {
    total: f64,
    by_process: Vec<(&'static str, f64)>,
}

impl PerRequest {
    fn new(meter: &CpuMeter, before: &CpuSnapshot, after: &CpuSnapshot, requests: u64) -> Self {
        Self {
            total: meter.total_per_op_us(before, after, requests),
            by_process: meter.per_op_us_by_process(before, after, requests),
        }
    }

    fn of(&self, name: &str) -> Option<f64> {
        self.by_process
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }
}

/// One path's measurements in the peers section.
struct PathRun {
    name: &'static str,
    small32: Load,
    small32_cpu: PerRequest,
    small1: Load,
    large32: Load,
    large32_cpu: PerRequest,
    download: Download,
    /// CPU µs per MB (10^6 bytes) of the download.
    download_cpu: PerRequest,
}

/// What the peers section prints: its grid, target rows for the main table and notes.
#[derive(Default)]
struct PeersOut {
    headers: Vec<&'static str>,
    grid: Vec<Vec<String>>,
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl PeersOut {
    fn print(&self) {
        if self.grid.is_empty() {
            return;
        }
        println!();
        print_grid(&self.headers, &self.grid);
    }
}

/// The targets for Postern against the peers (issue 11).
const PEER_SMALL_RPS: f64 = 0.8;
const PEER_SMALL_RPS_STRETCH: f64 = 1.0;
const PEER_SMALL_CPU: f64 = 1.25;
const PEER_C1_P50: f64 = 1.5;
const PEER_LARGE_RPS: f64 = 0.5;
const PEER_LARGE_TAIL: f64 = 3.0;
const PEER_DOWNLOAD: f64 = 1.0;

/// Starts the peers that are installed, checks each path with real requests (nginx: 200 with
/// the key, 401 without or with a wrong one), then loads every path the same way — GET /hello
/// at 32 connections (metered), at 1, GET /bytes/65536 at 32 (metered), the download — one
/// measurement kind at a time over all the paths in a fixed order (direct, nginx-tls,
/// rathole-noise, chain, postern), so that a drift of the machine over the section moves
/// neighbours alike. Stops the peers at the end.
async fn measure_peers(stack: &PeerStack<'_>, s: &Settings) -> PeersOut {
    let (children, dir) = (stack.children, stack.dir);
    let tools = PeerTools::find();
    let mut out = PeersOut::default();
    if let Some(missing) = tools.missing() {
        eprintln!("{missing}");
        out.notes.push(missing);
    }
    let me = std::process::id();
    // The gateway's certificate and key (the bench client trusts it): nginx serves the same.
    let cert = dir.join("gateway.crt");
    let cert_key = dir.join("gateway.crt.key");
    let spec = |name, upstream| NginxSpec {
        name,
        upstream,
        cert: &cert,
        cert_key: &cert_key,
        api_key: &stack.gateway.api_key,
        lease: LEASE,
    };
    // The same client as Postern's: TLS 1.3, HTTP/1.1 by ALPN, the Bearer key, /peer/<lease>/.
    let via = |addr| {
        Arc::new(GatewayRoute {
            addr,
            tls: stack.gateway.tls.clone(),
            lease: LEASE.into(),
            api_key: stack.gateway.api_key.clone(),
        })
    };
    let mut pids = Vec::new();
    let mut paths = vec![PeerPath {
        name: "direct",
        route: Route::Direct(stack.origin),
        meter: CpuMeter::new(vec![("bench", me)]),
    }];
    let nginx_alone = tools.nginx.as_ref().map(|bin| {
        let nginx = start_nginx(bin, children, dir, &spec("nginx-tls", stack.origin));
        pids.push(nginx.pid);
        (nginx.pid, via(nginx.addr))
    });
    let tunnel = tools.rathole.as_ref().map(|bin| {
        let tunnel = start_rathole(bin, children, dir, stack.origin);
        pids.extend([tunnel.server_pid, tunnel.client_pid]);
        tunnel
    });
    let chain = tools.nginx.as_ref().zip(tunnel.as_ref()).map(|(bin, t)| {
        let nginx = start_nginx(bin, children, dir, &spec("nginx-chain", t.service));
        pids.push(nginx.pid);
        (nginx.pid, via(nginx.addr))
    });
    let mut tls_notes = Vec::new();
    if let Some((pid, route)) = &nginx_alone {
        paths.push(PeerPath {
            name: "nginx-tls",
            route: Route::Gateway(Arc::clone(route)),
            meter: CpuMeter::new(vec![("bench", me), ("nginx", *pid)]),
        });
    }
    if let Some(t) = &tunnel {
        paths.push(PeerPath {
            name: "rathole-noise",
            route: Route::Direct(t.service),
            meter: CpuMeter::new(vec![
                ("bench", me),
                ("rathole server", t.server_pid),
                ("rathole client", t.client_pid),
            ]),
        });
    }
    if let (Some((pid, route)), Some(t)) = (&chain, &tunnel) {
        paths.push(PeerPath {
            name: "chain",
            route: Route::Gateway(Arc::clone(route)),
            meter: CpuMeter::new(vec![
                ("bench", me),
                ("nginx", *pid),
                ("rathole server", t.server_pid),
                ("rathole client", t.client_pid),
            ]),
        });
    }
    paths.push(PeerPath {
        name: "postern",
        route: stack.postern.clone(),
        meter: stack.postern_meter.clone(),
    });

    // Every path answers before it is loaded; nginx refuses requests without the key.
    for path in &paths {
        let mut sender = path.route.connect().await;
        let len = request(&path.route, &mut sender, SMALL).await;
        assert_eq!(len, 17, "{}: GET {SMALL} body length", path.name);
        if let Route::Gateway(route) = &path.route {
            if path.name != "postern" {
                check_api_key(route, SMALL)
                    .await
                    .unwrap_or_else(|e| panic!("{}: the API-key check failed: {e}", path.name));
                eprintln!(
                    "… peers: {} answers 200 with the key, 401 without and with a wrong one",
                    path.name
                );
            }
            tls_notes.push(format!("{} {}", path.name, route.describe_tls().await));
        }
    }

    let step = |what: &str, path: &PeerPath| eprintln!("… peers: {what}, {}", path.name);
    let mut small32 = Vec::new();
    for path in &paths {
        step(&format!("GET {SMALL}, 32 connections"), path);
        let (load, b, a) = measure_load_metered(&path.route, 32, SMALL, &s.load, &path.meter).await;
        let cpu = PerRequest::new(&path.meter, &b, &a, load.requests);
        small32.push((load, cpu));
    }
    let mut small1 = Vec::new();
    for path in &paths {
        step(&format!("GET {SMALL}, 1 connection"), path);
        let (load, _, _) = measure_load_metered(&path.route, 1, SMALL, &s.load, &path.meter).await;
        small1.push(load);
    }
    let mut large32 = Vec::new();
    for path in &paths {
        step(&format!("GET {LARGE}, 32 connections"), path);
        let (load, b, a) = measure_load_metered(&path.route, 32, LARGE, &s.load, &path.meter).await;
        let cpu = PerRequest::new(&path.meter, &b, &a, load.requests);
        large32.push((load, cpu));
    }
    let mut downloads = Vec::new();
    for path in &paths {
        step(&format!("download {} bytes", s.load.download_bytes), path);
        let before = path.meter.snapshot();
        let download = measure_download(&path.route, &s.load).await;
        let after = path.meter.snapshot();
        let mb = (download.bytes / 1_000_000).max(1);
        downloads.push((download, PerRequest::new(&path.meter, &before, &after, mb)));
    }
    children.check_alive();
    for pid in pids {
        children.stop(pid);
    }

    let runs: Vec<PathRun> = paths
        .iter()
        .zip(small32)
        .zip(small1)
        .zip(large32)
        .zip(downloads)
        .map(
            |(
                (((path, (small32, small32_cpu)), small1), (large32, large32_cpu)),
                (download, download_cpu),
            )| {
                PathRun {
                    name: path.name,
                    small32,
                    small32_cpu,
                    small1,
                    large32,
                    large32_cpu,
                    download,
                    download_cpu,
                }
            },
        )
        .collect();
    out.headers = std::iter::once("peers (one run)")
        .chain(runs.iter().map(|r| r.name))
        .collect();
    out.grid = peer_grid(&runs, s);
    out.rows = peer_targets(&runs);
    out.notes.extend(peer_notes(&runs, &tls_notes, s));
    out
}

/// The grid's rows: one per metric, one cell per path ("—" where a process is not on it).
fn peer_grid(runs: &[PathRun], s: &Settings) -> Vec<Vec<String>> {
    let line = |metric: String, cell: &dyn Fn(&PathRun) -> String| {
        std::iter::once(metric)
            .chain(runs.iter().map(cell))
            .collect::<Vec<_>>()
    };
    let f0 = |v: f64| format!("{v:.0}");
    let f1 = |v: f64| format!("{v:.1}");
    let opt = |v: Option<f64>| v.map_or("—".into(), f1);
    let mut grid = vec![
        line("req/s, small, 32 conn".into(), &|r| f0(r.small32.rps())),
        line("p50 µs, small, 32 conn".into(), &|r| {
            f1(r.small32.quantile_us(0.5))
        }),
        line("p99 µs, small, 32 conn".into(), &|r| {
            f1(r.small32.quantile_us(0.99))
        }),
    ];
    for name in PEER_PROCS {
        if runs.iter().any(|r| r.small32_cpu.of(name).is_some()) {
            grid.push(line(
                format!("  CPU µs/request, small, 32 conn: {name}"),
                &|r| opt(r.small32_cpu.of(name)),
            ));
        }
    }
    grid.extend([
        line(
            "  CPU µs/request, small, 32 conn: whole path".into(),
            &|r| f1(r.small32_cpu.total),
        ),
        line("  requests measured, small, 32 conn".into(), &|r| {
            r.small32.requests.to_string()
        }),
        line("p50 µs, small, 1 conn".into(), &|r| {
            f1(r.small1.quantile_us(0.5))
        }),
        line("p99 µs, small, 1 conn".into(), &|r| {
            f1(r.small1.quantile_us(0.99))
        }),
        line("req/s, 64 KiB, 32 conn".into(), &|r| f0(r.large32.rps())),
        line("p50 µs, 64 KiB, 32 conn".into(), &|r| {
            f1(r.large32.quantile_us(0.5))
        }),
        line("p99 µs, 64 KiB, 32 conn".into(), &|r| {
            f1(r.large32.quantile_us(0.99))
        }),
        line(
            "  CPU µs/request, 64 KiB, 32 conn: whole path".into(),
            &|r| f1(r.large32_cpu.total),
        ),
        line(
            format!("download MB/s, {}", size_label(s.load.download_bytes)),
            &|r| {
                let partial = if r.download.complete {
                    ""
                } else {
                    " (timed out)"
                };
                format!("{:.1}{partial}", r.download.mb_per_s())
            },
        ),
    ]);
    grid
}

/// Rows for the main table: Postern against the peer each target names ("direct" holds the
/// peer's value and name).
fn peer_targets(runs: &[PathRun]) -> Vec<Row> {
    let find = |name: &str| runs.iter().find(|r| r.name == name);
    let Some(postern) = find("postern") else {
        return Vec::new();
    };
    let vs = |metric: &str, peer: &PathRun, base: f64, v: f64, prec: usize| Row {
        direct: format!("{base:.prec$} {}", peer.name),
        ..row(metric, Some(base), v, prec)
    };
    let mut rows = Vec::new();
    if let Some(chain) = find("chain") {
        let (p, c) = (postern.small32.rps(), chain.small32.rps());
        let ratio = p / c;
        rows.push(with_target(
            vs(
                "peers: req/s, small, 32 conn, postern vs chain",
                chain,
                c,
                p,
                0,
            ),
            &format!(">= {PEER_SMALL_RPS:.2}x (stretch {PEER_SMALL_RPS_STRETCH:.2}x)"),
            ratio >= PEER_SMALL_RPS,
        ));
        let (p, c) = (postern.small32_cpu.total, chain.small32_cpu.total);
        rows.push(with_target(
            vs(
                "peers: whole-path CPU µs/request, small, 32 conn, postern vs chain",
                chain,
                c,
                p,
                1,
            ),
            &format!("<= {PEER_SMALL_CPU:.2}x"),
            p <= PEER_SMALL_CPU * c,
        ));
        let (p, c) = (
            postern.small1.quantile_us(0.5),
            chain.small1.quantile_us(0.5),
        );
        rows.push(with_target(
            vs(
                "peers: p50 µs, small, 1 conn, postern vs chain",
                chain,
                c,
                p,
                1,
            ),
            &format!("<= {PEER_C1_P50:.2}x"),
            p <= PEER_C1_P50 * c,
        ));
    }
    if let Some(nginx) = find("nginx-tls") {
        let (p, n) = (postern.large32.rps(), nginx.large32.rps());
        rows.push(with_target(
            vs(
                "peers: req/s, 64 KiB, 32 conn, postern vs nginx-tls",
                nginx,
                n,
                p,
                0,
            ),
            &format!(">= {PEER_LARGE_RPS:.2}x"),
            p >= PEER_LARGE_RPS * n,
        ));
    }
    let (p50, p99) = (
        postern.large32.quantile_us(0.5),
        postern.large32.quantile_us(0.99),
    );
    rows.push(with_target(
        Row {
            direct: format!("{p50:.1} p50"),
            ..row(
                "peers: p99 µs, 64 KiB, 32 conn, postern vs its p50",
                Some(p50),
                p99,
                1,
            )
        },
        &format!("<= {PEER_LARGE_TAIL:.2}x"),
        p99 <= PEER_LARGE_TAIL * p50,
    ));
    if let Some(rathole) = find("rathole-noise") {
        let (p, r) = (postern.download.mb_per_s(), rathole.download.mb_per_s());
        rows.push(with_target(
            vs(
                "peers: download MB/s, postern vs rathole-noise",
                rathole,
                r,
                p,
                1,
            ),
            &format!(">= {PEER_DOWNLOAD:.2}x"),
            p >= PEER_DOWNLOAD * r && postern.download.complete,
        ));
    }
    rows
}

fn peer_notes(runs: &[PathRun], tls: &[String], s: &Settings) -> Vec<String> {
    let ran = |name: &str| runs.iter().any(|r| r.name == name);
    let mut notes = vec![format!(
        "peers (one {} s window per load after a {} ms warm-up; measurement kinds one after \
         another, each over every path in the order of the grid; bench = this process: the \
         load client and the in-process origin):",
        s.load.secs.as_secs(),
        s.load.warmup.as_millis()
    )];
    if ran("nginx-tls") || ran("chain") {
        notes.push(
            "  nginx-tls: nginx (one process, master_process off, worker_processes 1), TLS 1.3 \
             with the gateway's certificate, `map $http_authorization` key check (401 without \
             it), proxy_pass to an upstream with keepalive 64 over HTTP/1.1, no access log"
                .into(),
        );
    }
    if ran("rathole-noise") || ran("chain") {
        notes.push(
            "  rathole-noise: rathole 0.5.0 server + client, noise transport \
             (Noise_NK_25519_ChaChaPoly_BLAKE2s), plain HTTP/1.1 to the server's service port"
                .into(),
        );
    }
    if ran("chain") {
        notes.push(
            "  chain: a second nginx as above whose upstream is rathole's service port".into(),
        );
    }
    if ran("rathole-noise") {
        notes.push(
            "  (rathole 0.5.0 leaves Nagle's algorithm on for the connections to its service \
             port — its `nodelay` option applies to its own data channels only —, so a response \
             it writes in several pieces on a kept-alive connection waits for the peer's \
             delayed ACK, ~40 ms: the 64 KiB latency of rathole-noise and chain is rathole's \
             own, not the bench's)"
                .into(),
        );
    }
    if !tls.is_empty() {
        notes.push(format!("  TLS sessions: {}", tls.join("; ")));
    }
    let by = |cpu: &PerRequest| {
        let by: Vec<String> = cpu
            .by_process
            .iter()
            .map(|(n, v)| format!("{n} {v:.1}"))
            .collect();
        format!("{} (all {:.1})", by.join(", "), cpu.total)
    };
    notes.push("  CPU µs per request by process, 64 KiB at 32 connections:".into());
    for r in runs {
        notes.push(format!("    {}: {}", r.name, by(&r.large32_cpu)));
    }
    notes.push("  CPU µs per MB by process, the download:".into());
    for r in runs {
        notes.push(format!("    {}: {}", r.name, by(&r.download_cpu)));
    }
    notes
}

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

        let stack = Stack {
            gateway_bin,
            cli: cli_bin,
            children: &children,
            dir: &dir,
            keys: &keys,
            relay: relay.addr,
            relay_pid: relay.pid,
            agent_pid: agent.pid,
        };
        let gw = start_gateway(&stack, &GatewaySpec::new("gateway"));
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

        let peer_stack = PeerStack {
            children: &children,
            dir: &dir,
            origin,
            gateway: &gw.route,
            postern: &postern,
            postern_meter: &meter,
        };

        if !s.runs("base") {
            // Only the sections named in POSTERN_BENCH_ONLY, after the gateway's start.
            let mut notes = Vec::new();
            let mut peers = PeersOut::default();
            if s.runs("peers") {
                peers = measure_peers(&peer_stack, &s).await;
                rows.append(&mut peers.rows);
            }
            if s.runs("ops") {
                let (r, n) = measure_ops(&stack, &s).await;
                rows.extend(r);
                notes.extend(n);
            }
            if s.runs("argon2") {
                let (r, n) = measure_argon2_ceiling(&stack).await;
                rows.extend(r);
                notes.extend(n);
            }
            children.check_alive();
            eprintln!();
            if !rows.is_empty() {
                println!();
                print_table(&rows);
            }
            peers.print();
            println!();
            for note in peers.notes.iter().chain(&notes) {
                println!("{note}");
            }
            return;
        }

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

        // The peers after the base measurements: the idle-connection one above needs a fresh
        // gateway.
        let mut peers = PeersOut::default();
        if s.runs("peers") {
            peers = measure_peers(&peer_stack, &s).await;
            rows.append(&mut peers.rows);
        }
        let mut extra_notes = Vec::new();
        if s.runs("ops") {
            let (r, n) = measure_ops(&stack, &s).await;
            rows.extend(r);
            extra_notes.extend(n);
        }
        if s.runs("argon2") {
            let (r, n) = measure_argon2_ceiling(&stack).await;
            rows.extend(r);
            extra_notes.extend(n);
        }

        children.check_alive();
        eprintln!();
        println!();
        print_table(&rows);
        peers.print();
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
        for note in peers.notes.iter().chain(&extra_notes) {
            println!("{note}");
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    drop(guard);
}

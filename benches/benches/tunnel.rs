//! End-to-end load bench: direct vs through Postern, in one run, printed as a table.
//!
//! * **direct**: hyper HTTP/1.1 client → TCP → a local hyper origin (`postern_tests::spawn_origin`).
//! * **postern**: hyper HTTP/1.1 client over `Dialer::dial` inner streams → `postern-relay`
//!   (child process) → `postern expose` (child process) → the same origin.
//!
//! The relay and the agent are the real binaries, run as child processes so each one's memory
//! can be read from `/proc/<pid>/status`. Build them first:
//! `cargo build --release -p postern-relay -p postern-cli` (same target directory as the bench).
//!
//! Knobs (environment): `POSTERN_BENCH_SECS` (per load measurement, default 3),
//! `POSTERN_BENCH_DOWNLOAD_BYTES` (default 1 GiB), `POSTERN_BENCH_DIALS` (default 10000),
//! `POSTERN_BENCH_IDLE_STREAMS` (default 2000), `POSTERN_BENCH_SPLICES` (default 500),
//! `POSTERN_BIN_DIR` (where the binaries are, if not next to the bench).
//!
//! Everything is on 127.0.0.1; every loop is bounded in count and in time; the child processes
//! are killed on exit, on panic (a guard's `Drop`) and on Ctrl-C.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use postern_benches::children::{binaries_or_exit, warn_if_stale, Children, Guard};
use postern_benches::load::{
    env_u64, measure_download, measure_load, open_connections, request_each, size_label, Download,
    LoadSettings, Route, Sender, OP_TIMEOUT,
};
use postern_benches::procfs::{machine, rss};
use postern_benches::stack::{spawn_expose, start_relay, wait_for_lease, Keys, LEASE};
use postern_benches::table::{print_table, row, with_target};
use postern_benches::thread_cpu_ns;
use postern_sdk::noise::{Initiator, Responder, StaticKeypair};
use postern_sdk::protocol::SignedGrant;
use postern_sdk::relay_client::RelaySession;
use postern_sdk::{ClientOptions, Dialer, DialerConfig, Identity, RelayUrl};
use postern_tests::spawn_origin;
use tokio::net::TcpStream;

const BUILD: &str = "cargo build --release -p postern-relay -p postern-cli";
/// The idle-stream target, "20 KB", read strictly: 20,000 bytes.
const IDLE_STREAM_BYTES: f64 = 20_000.0;

// ---------------------------------------------------------------------------------------------
// Settings

struct Settings {
    load: LoadSettings,
    dials: u64,
    tcp_connects: u64,
    dial_budget: Duration,
    idle_streams: usize,
    splices: usize,
    open_budget: Duration,
    handshakes: u32,
}

impl Settings {
    fn from_env() -> Self {
        Self {
            load: LoadSettings::from_env(),
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
// New streams and memory

/// Mean cost of a new connection: a TCP connect to the origin, or a dial on the warm session.
async fn measure_new_stream(path: &Route, max: u64, budget: Duration) -> (u64, f64) {
    let start = Instant::now();
    let mut n = 0u64;
    while n < max && start.elapsed() < budget {
        match path {
            Route::Direct(addr) => drop(TcpStream::connect(addr).await.unwrap()),
            Route::Dialer(dialer, target) => drop(
                tokio::time::timeout(OP_TIMEOUT, dialer.dial(target))
                    .await
                    .expect("dial timed out")
                    .expect("dial"),
            ),
            Route::Gateway(_) => unreachable!("the tunnel bench has no gateway"),
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
    let senders: Vec<Sender> = open_connections(path, k, deadline).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dialed = (rss(pids.0), rss(pids.1));
    let dialed = rss_result(senders.len(), before, dialed);
    let senders: Vec<Sender> = request_each(path, senders, "/hello", deadline).await;
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

fn main() {
    let s = Settings::from_env();
    let bins = binaries_or_exit("tunnel", &["postern-relay", "postern"], BUILD);
    let (relay_bin, cli_bin) = (&bins[0], &bins[1]);

    println!("postern tunnel bench — {}", machine());
    println!("  relay: {}", relay_bin.display());
    println!("  agent: {} expose", cli_bin.display());
    for bin in [relay_bin, cli_bin] {
        warn_if_stale(bin, &["sdk", "relay", "config"], BUILD);
    }

    // Handshake CPU first, while nothing else runs.
    let hs_first = measure_handshakes(s.handshakes, 0);
    let hs = measure_handshakes(s.handshakes, postern_sdk::dh::DEFAULT_PEER_CACHE);

    let children = Children::default();
    let guard = Guard::new(children.clone());
    let dir = guard.dir.clone();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    children.kill_on_ctrl_c(&rt, &dir);

    // Keys and grants, through the CLI like an operator would; then the relay.
    let keys = Keys::mint(cli_bin, &dir);
    let relay = start_relay(relay_bin, &children, &dir, &keys);
    let (relay_pid, relay_url) = (relay.pid, relay.url.clone());
    let owner = &keys.owner;

    let rows = rt.block_on(async {
        let origin = spawn_origin().await;

        // The agent: `postern expose` in front of the origin.
        let agent = spawn_expose(cli_bin, &children, &dir, origin, &relay_url, &keys);
        let agent_pid = agent.pid;
        let pids = (relay_pid, agent_pid);

        // The dialer, with a grant minted in-process by the same control plane key.
        let me = Identity::generate();
        let grants = vec![keys.dial_grant(&me)];
        let dialer = Dialer::new(DialerConfig::new(
            relay_url.clone(),
            me.clone(),
            grants.clone(),
        ));
        let target = keys.target();

        // Wait until the lease is online; the first dial also sets up the E2EE session.
        wait_for_lease(&dialer, &target, &children, &agent).await;
        let direct = Route::Direct(origin);
        let postern = Route::Dialer(dialer.clone(), Box::new(target.clone()));
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
                    owner,
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
            let d = measure_load(&direct, conns, "/hello", &s.load).await;
            step(&format!("GET /hello, {conns} connection(s), postern"));
            let p = measure_load(&postern, conns, "/hello", &s.load).await;
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

        step(&format!("download {} bytes, direct", s.load.download_bytes));
        let d = measure_download(&direct, &s.load).await;
        step(&format!(
            "download {} bytes, postern",
            s.load.download_bytes
        ));
        let p = measure_download(&postern, &s.load).await;
        let label = size_label(s.load.download_bytes);
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
            "<= 20 KB (19.53 KiB)",
            idle.relay_per <= IDLE_STREAM_BYTES,
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
            "<= 20 KB (19.53 KiB)",
            idle.agent_per <= IDLE_STREAM_BYTES,
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

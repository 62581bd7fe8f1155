//! Rate limits end to end: the per-key, per-lease, global and per-IP budgets answer 429 at
//! their configured rates (problem+json, `Retry-After`, `RateLimit-Policy`, `RateLimit`) and
//! recover; two gateway processes on one Redis share one budget; and a Redis outage falls back
//! to local limits (never a 5xx) and back to shared budgets once Redis answers again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use postern_sdk::Identity;
use postern_tests::gateway::{api_key_toml, authed, GatewayFiles, TestGateway};
use postern_tests::redis::TestRedis;
use postern_tests::*;

type Body = BoxBody<Bytes, hyper::Error>;

/// What one request got.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

/// Sends `req` on a new plain HTTP/1.1 connection to `addr`; panics after 10 s.
async fn call(addr: SocketAddr, req: Request<Body>) -> Answer {
    tokio::time::timeout(Duration::from_secs(10), async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut client = http1_client(tcp).await;
        let resp = send(&mut client, req).await;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = String::from_utf8_lossy(&body_bytes(resp).await).into_owned();
        Answer {
            status,
            headers,
            body,
        }
    })
    .await
    .expect("an answer within 10 s")
}

/// `GET /peer/{lease}/hello` with `key`.
async fn hello(addr: SocketAddr, lease: &str, key: &str) -> Answer {
    call(
        addr,
        authed(Method::GET, &format!("/peer/{lease}/hello"), key, empty()),
    )
    .await
}

/// `GET /peer/web/hello` without any key.
async fn keyless(addr: SocketAddr) -> Answer {
    let req = Request::get("/peer/web/hello")
        .header(http::header::HOST, "localhost")
        .body(empty())
        .unwrap();
    call(addr, req).await
}

/// A structured field like `"key";q=3;w=10`: the quoted name and its integer parameters.
fn parse_rate_field(value: &str) -> (String, HashMap<String, u64>) {
    let mut parts = value.split(';');
    let name = parts
        .next()
        .and_then(|n| n.trim().strip_prefix('"'))
        .and_then(|n| n.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no quoted name in {value:?}"))
        .to_owned();
    let params = parts
        .map(|p| {
            let (k, v) = p
                .trim()
                .split_once('=')
                .unwrap_or_else(|| panic!("bad parameter in {value:?}"));
            let v = v
                .parse()
                .unwrap_or_else(|_| panic!("non-integer parameter in {value:?}"));
            (k.to_owned(), v)
        })
        .collect();
    (name, params)
}

fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {a:?}"))
        .to_str()
        .unwrap()
}

/// Checks that `a` is the 429 of the budget `name` with quota `q` per `w` seconds; returns
/// (Retry-After, the RateLimit field's `t`), both in seconds.
fn assert_rate_limited(a: &Answer, name: &str, q: u64, w: u64) -> (u64, u64) {
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{a:?}");
    assert_eq!(header(a, "content-type"), "application/problem+json");
    let problem: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(
        problem["type"], "https://postern.dev/problems/too-many-requests",
        "{problem}"
    );
    assert_eq!(problem["status"], 429, "{problem}");
    assert_eq!(problem["title"], "Too Many Requests", "{problem}");
    assert_eq!(
        problem["request_id"].as_str(),
        Some(header(a, "x-request-id")),
        "{problem}"
    );
    let retry_after: u64 = header(a, "retry-after").parse().unwrap();
    assert!(
        (1..=w).contains(&retry_after),
        "Retry-After {retry_after} outside 1..={w}"
    );

    let (policy_name, policy) = parse_rate_field(header(a, "ratelimit-policy"));
    assert_eq!(policy_name, name, "{a:?}");
    assert_eq!(policy.get("q"), Some(&q), "{a:?}");
    assert_eq!(policy.get("w"), Some(&w), "{a:?}");
    let (state_name, state) = parse_rate_field(header(a, "ratelimit"));
    assert_eq!(state_name, name, "{a:?}");
    assert_eq!(state.get("r"), Some(&0), "{a:?}");
    let t = *state.get("t").expect("RateLimit has t");
    // Whole again no sooner than one more request is allowed, and no later than a window.
    assert!(
        (retry_after..=w).contains(&t),
        "t={t} Retry-After={retry_after} w={w}"
    );
    (retry_after, t)
}

fn rejections(exposition: &str, limit: &str) -> f64 {
    metric_value(
        exposition,
        &format!("postern_ratelimit_rejections_total{{limit=\"{limit}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Sleeps `secs` seconds and a little more (the server rounds its waits up to whole seconds,
/// so this is always enough).
async fn sleep_secs(secs: u64) {
    tokio::time::sleep(Duration::from_secs(secs) + Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_budget_gets_429_with_ratelimit_fields_and_recovers() {
    let (generous, generous_key) = api_key_toml(
        "generous",
        "\"*\"",
        "rate_limit = { requests = 4, per = \"4s\" }",
    );
    let (other, other_key) = api_key_toml("other", "\"*\"", "");
    let extra =
        format!("[rate_limit]\nper_key = {{ requests = 2, per = \"2s\" }}\n\n{generous}\n{other}");
    let (_net, gw) = TestGateway::for_web_origin(&extra).await;
    let key = gw.api_key.clone();

    // Two at once (the burst), then refused: the third comes well within the 1 s emission
    // interval of the first.
    for _ in 0..2 {
        let a = hello(gw.http, "web", &key).await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        assert_eq!(a.body, "hello from origin");
    }
    let refused = hello(gw.http, "web", &key).await;
    let (retry_after, t) = assert_rate_limited(&refused, "key", 2, 2);
    assert_eq!(rejections(&gw.scrape().await, "key"), 1.0);

    // Another key has a budget of its own: the first key's refusal does not touch it.
    for _ in 0..2 {
        assert_eq!(
            hello(gw.http, "web", &other_key).await.status,
            StatusCode::OK
        );
    }
    assert_rate_limited(&hello(gw.http, "web", &other_key).await, "key", 2, 2);

    // A key's own rate_limit beats [rate_limit] per_key: four at once, and its own policy.
    for _ in 0..4 {
        let a = hello(gw.http, "web", &generous_key).await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
    }
    assert_rate_limited(&hello(gw.http, "web", &generous_key).await, "key", 4, 4);
    assert_eq!(rejections(&gw.scrape().await, "key"), 3.0);

    // Retry-After is honest: one request is allowed after it, and the next is refused again.
    sleep_secs(retry_after).await;
    assert_eq!(hello(gw.http, "web", &key).await.status, StatusCode::OK);
    assert_rate_limited(&hello(gw.http, "web", &key).await, "key", 2, 2);
    // After `t` the whole burst is back.
    sleep_secs(t).await;
    for _ in 0..2 {
        assert_eq!(hello(gw.http, "web", &key).await.status, StatusCode::OK);
    }
    assert_rate_limited(&hello(gw.http, "web", &key).await, "key", 2, 2);
    assert_eq!(rejections(&gw.scrape().await, "key"), 5.0);
    assert_eq!(rejections(&gw.scrape().await, "lease"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_over_its_budget_gets_429_and_another_lease_keeps_its_own() {
    let net = TestNet::start().await;
    let origin = spawn_origin().await;
    let web = net.expose("web", origin).await;
    let api = net.expose("api", origin).await;
    let (second, second_key) = api_key_toml("second", "\"*\"", "");
    let gw = TestGateway::start(
        &net,
        &[("web", &web), ("api", &api)],
        &format!("[rate_limit]\nper_lease = {{ requests = 2, per = \"2s\" }}\n\n{second}"),
    )
    .await;

    for _ in 0..2 {
        let a = hello(gw.http, "web", &gw.api_key).await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
    }
    let (retry_after, t) =
        assert_rate_limited(&hello(gw.http, "web", &gw.api_key).await, "lease", 2, 2);
    // The budget is the lease's: another key is refused on it as well...
    assert_rate_limited(&hello(gw.http, "web", &second_key).await, "lease", 2, 2);
    // ...and another lease, same key, has its own.
    for _ in 0..2 {
        assert_eq!(
            hello(gw.http, "api", &gw.api_key).await.status,
            StatusCode::OK
        );
    }
    assert_rate_limited(&hello(gw.http, "api", &second_key).await, "lease", 2, 2);
    let text = gw.scrape().await;
    assert_eq!(rejections(&text, "lease"), 3.0);
    assert_eq!(rejections(&text, "key"), 0.0);

    sleep_secs(retry_after).await;
    assert_eq!(
        hello(gw.http, "web", &gw.api_key).await.status,
        StatusCode::OK
    );
    assert_rate_limited(&hello(gw.http, "web", &gw.api_key).await, "lease", 2, 2);
    sleep_secs(t).await;
    for _ in 0..2 {
        assert_eq!(
            hello(gw.http, "web", &second_key).await.status,
            StatusCode::OK
        );
    }
    assert_rate_limited(&hello(gw.http, "web", &gw.api_key).await, "lease", 2, 2);
    assert_eq!(rejections(&gw.scrape().await, "lease"), 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_budget_spans_keys_and_leases_and_recovers() {
    let net = TestNet::start().await;
    let origin = spawn_origin().await;
    let web = net.expose("web", origin).await;
    let api = net.expose("api", origin).await;
    let (second, second_key) = api_key_toml("second", "\"*\"", "");
    let gw = TestGateway::start(
        &net,
        &[("web", &web), ("api", &api)],
        &format!("[rate_limit]\nglobal = {{ requests = 2, per = \"2s\" }}\n\n{second}"),
    )
    .await;

    // One request by each key on a different lease spends the whole gateway's burst.
    assert_eq!(
        hello(gw.http, "web", &gw.api_key).await.status,
        StatusCode::OK
    );
    assert_eq!(
        hello(gw.http, "api", &second_key).await.status,
        StatusCode::OK
    );
    let (retry_after, t) =
        assert_rate_limited(&hello(gw.http, "web", &second_key).await, "global", 2, 2);
    assert_rate_limited(&hello(gw.http, "api", &gw.api_key).await, "global", 2, 2);
    assert_eq!(rejections(&gw.scrape().await, "global"), 2.0);

    sleep_secs(retry_after).await;
    assert_eq!(
        hello(gw.http, "api", &gw.api_key).await.status,
        StatusCode::OK
    );
    assert_rate_limited(&hello(gw.http, "web", &second_key).await, "global", 2, 2);
    sleep_secs(t).await;
    assert_eq!(
        hello(gw.http, "web", &gw.api_key).await.status,
        StatusCode::OK
    );
    assert_eq!(
        hello(gw.http, "api", &second_key).await.status,
        StatusCode::OK
    );
    assert_rate_limited(&hello(gw.http, "web", &gw.api_key).await, "global", 2, 2);
    let text = gw.scrape().await;
    assert_eq!(rejections(&text, "global"), 4.0);
    assert_eq!(rejections(&text, "key") + rejections(&text, "lease"), 0.0);
}

/// A copy of the gateway's key with its last character changed: right id, wrong secret.
fn wrong_secret(key: &str) -> String {
    let mut wrong = key.to_owned();
    let last = if wrong.ends_with('A') { "B" } else { "A" };
    wrong.replace_range(wrong.len() - 1.., last);
    wrong
}

fn assert_unauthorized(a: &Answer) {
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{a:?}");
    let problem: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(problem["type"], "https://postern.dev/problems/unauthorized");
    assert!(!a.headers.contains_key("ratelimit"), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_key_spend_the_per_ip_budget_then_get_429() {
    let (_net, gw) =
        TestGateway::for_web_origin("[rate_limit]\nper_ip = { requests = 2, per = \"2s\" }\n")
            .await;
    let wrong = wrong_secret(&gw.api_key);

    // No key, then a wrong one: 401 while the budget lasts...
    assert_unauthorized(&keyless(gw.http).await);
    assert_unauthorized(&hello(gw.http, "web", &wrong).await);
    // ...then 429 for both.
    let (retry_after, t) = assert_rate_limited(&keyless(gw.http).await, "ip", 2, 2);
    assert_rate_limited(&hello(gw.http, "web", &wrong).await, "ip", 2, 2);
    // A valid key from the same address is not limited by it.
    let ok = hello(gw.http, "web", &gw.api_key).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    assert_eq!(rejections(&gw.scrape().await, "ip"), 2.0);

    sleep_secs(retry_after).await;
    assert_unauthorized(&keyless(gw.http).await);
    assert_rate_limited(&keyless(gw.http).await, "ip", 2, 2);
    sleep_secs(t).await;
    assert_unauthorized(&hello(gw.http, "web", &wrong).await);
    assert_unauthorized(&keyless(gw.http).await);
    assert_rate_limited(&keyless(gw.http).await, "ip", 2, 2);
    let text = gw.scrape().await;
    assert_eq!(rejections(&text, "ip"), 4.0);
    assert_eq!(rejections(&text, "key"), 0.0);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `postern-gateway` binary on its own config, with its Prometheus listener on a known
/// port and its stderr (JSON log lines) collected by a thread; killed when dropped.
struct GatewayProcess {
    child: Child,
    http: SocketAddr,
    metrics: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    _files: GatewayFiles,
}

impl GatewayProcess {
    async fn start(net: &TestNet, owner: &Identity, extra_toml: &str) -> Self {
        let mut files = GatewayFiles::new(net, &[("web", owner)], extra_toml);
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let any_port = "[metrics]\nlisten = \"127.0.0.1:0\"";
        assert!(files.toml.contains(any_port), "{}", files.toml);
        files.toml = files
            .toml
            .replace(any_port, &format!("[metrics]\nlisten = \"{metrics}\""));
        let mut child = Command::new(built_binary("postern-gateway"))
            .arg("--config")
            .arg(files.write_config())
            .args(["--log-format", "json"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let mut gw = Self {
            child,
            http: files.http,
            metrics,
            logs,
            _files: files,
        };
        gw._files.wait_for_listeners().await;
        for addr in [gw.http, gw.metrics] {
            let mut up = false;
            for _ in 0..250 {
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    up = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let exited = gw.child.try_wait().unwrap();
            assert!(
                up && exited.is_none(),
                "the gateway is not listening on {addr} (exit: {exited:?}): {:?}",
                gw.log_lines()
            );
        }
        gw
    }

    fn log_lines(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// The log lines at `level` whose message contains `text`.
    fn logged(&self, level: &str, text: &str) -> Vec<serde_json::Value> {
        self.log_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                v["level"] == level
                    && v["fields"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(text))
            })
            .collect()
    }

    /// Waits (at most 5 s) for a log line at `level` containing `text`; returns how many
    /// such lines there are.
    async fn wait_logged(&self, level: &str, text: &str) -> usize {
        for _ in 0..100 {
            let n = self.logged(level, text).len();
            if n > 0 {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no {level} line containing {text:?} within 5 s: {:#?}",
            self.log_lines()
        );
    }

    /// `GET /metrics`.
    async fn scrape(&self) -> String {
        let req = Request::get("/metrics")
            .header(http::header::HOST, "metrics")
            .body(empty())
            .unwrap();
        let a = call(self.metrics, req).await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        a.body
    }

    async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.scrape().await, series).unwrap_or(0.0)
    }

    async fn fallback(&self) -> f64 {
        self.metric("postern_ratelimit_redis_fallback").await
    }

    async fn redis_errors(&self) -> f64 {
        self.metric("postern_ratelimit_redis_errors_total").await
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_toml(redis: &TestRedis, rest: &str) -> String {
    format!(
        "[rate_limit]\nbackend = \"redis\"\nredis_url = \"{}\"\n{rest}\n",
        redis.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_processes_on_one_redis_share_one_budget() {
    let redis = TestRedis::start();
    let net = TestNet::start().await;
    let origin = spawn_origin().await;
    let owner = net.expose("web", origin).await;
    // One key known to both gateways (each also has a key of its own).
    let (shared, key) = api_key_toml("shared", "\"*\"", "");
    // A long window: nothing comes back during the test. A generous Redis timeout: a slow
    // answer on a busy machine must not turn into a local decision here.
    let extra = format!(
        "{}\n{shared}",
        redis_toml(
            &redis,
            "redis_timeout = \"2s\"\nper_key = { requests = 6, per = \"600s\" }"
        )
    );
    let a = GatewayProcess::start(&net, &owner, &extra).await;
    let b = GatewayProcess::start(&net, &owner, &extra).await;

    let mut statuses = Vec::new();
    let mut refusals = Vec::new();
    for (gw, n) in [(&a, 4), (&b, 4), (&a, 2), (&b, 2)] {
        for _ in 0..n {
            let answer = hello(gw.http, "web", &key).await;
            statuses.push(answer.status.as_u16());
            if answer.status == StatusCode::TOO_MANY_REQUESTS {
                refusals.push(answer);
            }
        }
    }
    // Exactly the budget, across both: A spends four, B gets the last two.
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 200, 429, 429, 429, 429, 429, 429]
    );
    for refused in &refusals {
        let (retry_after, _) = assert_rate_limited(refused, "key", 6, 600);
        // One request comes back every 100 s.
        assert!((90..=100).contains(&retry_after), "{retry_after}");
    }
    let series = "postern_ratelimit_rejections_total{limit=\"key\"}";
    assert_eq!(a.metric(series).await, 2.0);
    assert_eq!(b.metric(series).await, 4.0);
    for gw in [&a, &b] {
        assert_eq!(gw.fallback().await, 0.0);
        assert_eq!(gw.redis_errors().await, 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_falls_back_to_local_budgets_and_sharing_resumes_when_it_is_back() {
    let mut redis = TestRedis::start();
    let port = redis.port;
    let net = TestNet::start().await;
    let origin = spawn_origin().await;
    let owner = net.expose("web", origin).await;
    let (k1, key) = api_key_toml("one", "\"*\"", "");
    let (k2, key2) = api_key_toml("two", "\"*\"", "");
    let (k3, key3) = api_key_toml("three", "\"*\"", "");
    // per_ip is generous: requests without a key make Redis decisions that spend nothing of
    // the key budgets (probes).
    let extra = format!(
        "{}\n{k1}\n{k2}\n{k3}",
        redis_toml(
            &redis,
            "redis_timeout = \"500ms\"\nredis_retry_interval = \"200ms\"\n\
             per_key = { requests = 3, per = \"600s\" }\n\
             per_ip = { requests = 1000, per = \"1s\" }"
        )
    );
    let a = GatewayProcess::start(&net, &owner, &extra).await;
    let b = GatewayProcess::start(&net, &owner, &extra).await;

    // Shared: one of the three on A, two on B, and the key is spent on both.
    assert_eq!(hello(a.http, "web", &key).await.status, StatusCode::OK);
    for _ in 0..2 {
        assert_eq!(hello(b.http, "web", &key).await.status, StatusCode::OK);
    }
    assert_rate_limited(&hello(a.http, "web", &key).await, "key", 3, 600);
    for gw in [&a, &b] {
        assert_eq!(gw.fallback().await, 0.0);
        assert_eq!(gw.redis_errors().await, 0.0);
    }

    redis.stop();

    // Still answered, never a 5xx: each gateway now enforces the whole budget alone, with a
    // fresh local limiter (Redis had decided everything so far).
    for gw in [&a, &b] {
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let answer = hello(gw.http, "web", &key).await;
            if answer.status == StatusCode::TOO_MANY_REQUESTS {
                assert_rate_limited(&answer, "key", 3, 600);
            }
            statuses.push(answer.status.as_u16());
        }
        assert_eq!(statuses, [200, 200, 200, 429, 429]);
        assert_eq!(gw.fallback().await, 1.0);
        assert!(gw.redis_errors().await >= 1.0);
        // Logged once, as an error, however many decisions went local.
        assert_eq!(gw.wait_logged("ERROR", "Redis unreachable").await, 1);
    }
    // Redis is tried again after redis_retry_interval (and fails again: counted, not logged).
    let errors = a.redis_errors().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_unauthorized(&keyless(a.http).await);
    assert!(a.redis_errors().await > errors);
    assert_eq!(a.logged("ERROR", "Redis unreachable").len(), 1);

    let _redis = TestRedis::start_on(port);
    // Soon, a decision goes to Redis again and switches back. Not always the first try after
    // redis_retry_interval: the client's connection broke during the outage, and the first
    // command after Redis is back fails (counted) and only triggers the reconnect, so the
    // switch takes up to two retry intervals (observed: ~420 ms with 200 ms) plus the time
    // between probes.
    let retry_interval = Duration::from_millis(200);
    for gw in [&a, &b] {
        let probing = Instant::now();
        let mut probes = 0;
        while gw.fallback().await != 0.0 {
            probes += 1;
            assert!(
                probes <= 40,
                "still falling back after {:?}",
                probing.elapsed()
            );
            assert_unauthorized(&keyless(gw.http).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            probing.elapsed() < 2 * retry_interval + Duration::from_millis(800),
            "switched back only after {:?}",
            probing.elapsed()
        );
        assert_eq!(
            gw.wait_logged("WARN", "Redis answers again").await,
            1,
            "the switch back is logged once"
        );
    }

    // Shared again. A's local budget for `key` is spent, so a 200 there comes from the new
    // (empty) Redis.
    assert_eq!(hello(a.http, "web", &key).await.status, StatusCode::OK);
    // Budget spent on A is seen by B (B never used `key2` locally: its 429 is Redis's)...
    for _ in 0..3 {
        assert_eq!(hello(a.http, "web", &key2).await.status, StatusCode::OK);
    }
    assert_rate_limited(&hello(b.http, "web", &key2).await, "key", 3, 600);
    // ...and the other way round.
    for _ in 0..3 {
        assert_eq!(hello(b.http, "web", &key3).await.status, StatusCode::OK);
    }
    assert_rate_limited(&hello(a.http, "web", &key3).await, "key", 3, 600);
    for gw in [&a, &b] {
        assert_eq!(gw.fallback().await, 0.0);
    }
}

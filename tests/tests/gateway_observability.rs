//! What operators see of the gateway, end to end: `/metrics` read by the real Prometheus text
//! parser (the official Python client's `prometheus_client.parser`) counts exactly the requests
//! sent, with no secret, path or address in any label; the `postern-gateway` binary's access
//! log is one JSON line per request with the right outcome, no query string and never an API
//! key; one client IP's connection flood is capped at accept while another IP is served; and
//! every metric name the deploy files rely on (`deploy/metric-names.txt`) is exported.
//!
//! Python: `POSTERN_TEST_PYTHON` if set (.ci/run sets it), else the venv under the cargo target
//! directory that tests/tests/gateway_mcp.rs uses too, filled from tests/mcp/requirements.txt
//! when it cannot import `prometheus_client`. Without one the test fails and says how to get
//! one: it never skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use postern_tests::gateway::{api_key_toml, authed, GatewayFiles, TestGateway};
use postern_tests::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Body = BoxBody<Bytes, hyper::Error>;

/// Longest any single step (a request, a scrape, a log line) may take.
const STEP: Duration = Duration::from_secs(10);
/// One run of the parser script.
const PYTHON_TIMEOUT: Duration = Duration::from_secs(60);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {STEP:?}"))
}

/// Sends `req` on a fresh plain connection to `addr`; returns the status and the body.
async fn request(addr: SocketAddr, req: Request<Body>) -> (StatusCode, Bytes) {
    within(&format!("{} {}", req.method(), req.uri()), async {
        let mut c = http1_client(tokio::net::TcpStream::connect(addr).await.unwrap()).await;
        let resp = send(&mut c, req).await;
        (resp.status(), body_bytes(resp).await)
    })
    .await
}

fn anon(path: &str) -> Request<Body> {
    Request::get(path)
        .header(http::header::HOST, "localhost")
        .body(empty())
        .unwrap()
}

// ---- the real Prometheus parser ------------------------------------------------------------

/// Prints the families and samples of the exposition in the file `argv[1]` as JSON.
const PARSE_SCRIPT: &str = r#"
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families
with open(sys.argv[1], encoding="utf-8") as f:
    text = f.read()
out = []
for family in text_string_to_metric_families(text):
    out.append({
        "name": family.name,
        "type": family.type,
        "samples": [
            {"name": s.name, "labels": dict(s.labels),
             "value": s.value if math.isfinite(s.value) else repr(s.value)}
            for s in family.samples
        ],
    })
print(json.dumps(out))
"#;

/// A Python that can import `prometheus_client`, found or made once per test process.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| postern_tests::python::with_module("prometheus_client.parser"))
}

/// One sample as the Prometheus parser read it.
#[derive(Debug)]
struct Sample {
    family: String,
    family_type: String,
    name: String,
    labels: Vec<(String, String)>,
    value: Value,
}

impl Sample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `text` parsed by `prometheus_client.parser`; panics (with the parser's error) if it does
/// not parse.
async fn parse_exposition(text: &str) -> Vec<Sample> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scrape.txt");
    std::fs::write(&file, text).unwrap();
    let script = dir.path().join("parse.py");
    std::fs::write(&script, PARSE_SCRIPT).unwrap();
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        postern_tests::python::run(
            Command::new(python()).arg(&script).arg(&file),
            PYTHON_TIMEOUT,
        )
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        ok,
        "prometheus_client could not parse the scrape: {stderr}\n{text}"
    );
    let families: Vec<Value> = serde_json::from_str(stdout.trim()).unwrap();
    let mut samples = Vec::new();
    for family in families {
        for s in family["samples"].as_array().unwrap() {
            samples.push(Sample {
                family: family["name"].as_str().unwrap().to_owned(),
                family_type: family["type"].as_str().unwrap().to_owned(),
                name: s["name"].as_str().unwrap().to_owned(),
                labels: s["labels"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect(),
                value: s["value"].clone(),
            });
        }
    }
    samples
}

/// The value of the sample `name` whose labels are exactly `labels`.
fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeSet<(&str, &str)> = labels.iter().copied().collect();
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect::<BTreeSet<_>>()
                    == want
        })
        .map(|s| s.value.as_f64().expect("a finite value"))
}

/// `pst_<id>_<secret>` → (id, secret).
fn key_parts(key: &str) -> (&str, &str) {
    key.strip_prefix("pst_")
        .and_then(|rest| rest.split_once('_'))
        .unwrap_or_else(|| panic!("not a Postern key: {key}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_with_the_prometheus_parser_and_count_exactly_the_requests_sent() {
    let (_net, gw) = TestGateway::for_web_origin("").await;
    let (key_id, secret) = key_parts(&gw.api_key);
    for i in 0..7 {
        let path = format!("/peer/web/hello?n={i}");
        let (status, body) =
            request(gw.http, authed(Method::GET, &path, &gw.api_key, empty())).await;
        assert_eq!(status, 200);
        assert_eq!(body, "hello from origin");
    }
    for _ in 0..3 {
        let (status, _) = request(gw.http, anon("/peer/web/hello")).await;
        assert_eq!(status, 401);
    }
    for path in ["/peer/nope/hello", "/peer/nowhere/x"] {
        let (status, _) = request(gw.http, authed(Method::GET, path, &gw.api_key, empty())).await;
        assert_eq!(status, 404);
    }

    // A request is counted when its log line is written, just after the response: wait
    // (bounded) for all twelve.
    let deadline = Instant::now() + STEP;
    let text = loop {
        let text = within("scrape", gw.scrape()).await;
        let web = metric_value(
            &text,
            "postern_request_duration_seconds_count{lease=\"web\"}",
        );
        let other = metric_value(
            &text,
            "postern_request_duration_seconds_count{lease=\"_other\"}",
        );
        if (web, other) == (Some(7.0), Some(5.0)) || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let samples = parse_exposition(&text).await;
    assert!(samples.len() > 50, "{samples:?}");

    let requests = |labels: &[(&str, &str)]| sample(&samples, "postern_requests_total", labels);
    assert_eq!(
        requests(&[("lease", "web"), ("method", "GET"), ("status_class", "2xx")]),
        Some(7.0),
        "{text}"
    );
    // Unauthenticated and unknown-lease requests have no served lease.
    assert_eq!(
        requests(&[
            ("lease", "_other"),
            ("method", "GET"),
            ("status_class", "4xx")
        ]),
        Some(5.0),
        "{text}"
    );
    let total: f64 = samples
        .iter()
        .filter(|s| s.name == "postern_requests_total")
        .map(|s| s.value.as_f64().unwrap())
        .sum();
    assert_eq!(total, 12.0, "{text}");
    assert_eq!(
        sample(
            &samples,
            "postern_auth_failures_total",
            &[("reason", "missing")]
        ),
        Some(3.0),
        "{text}"
    );
    let auth_failures: f64 = samples
        .iter()
        .filter(|s| s.name == "postern_auth_failures_total")
        .map(|s| s.value.as_f64().unwrap())
        .sum();
    assert_eq!(auth_failures, 3.0, "{text}");

    // The histogram, as the parser sees it: a histogram family with _count, _sum and buckets.
    let histogram: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.family == "postern_request_duration_seconds")
        .collect();
    assert!(histogram.iter().all(|s| s.family_type == "histogram"));
    let duration = |suffix: &str, labels: &[(&str, &str)]| {
        sample(
            &samples,
            &format!("postern_request_duration_seconds_{suffix}"),
            labels,
        )
    };
    assert_eq!(duration("count", &[("lease", "web")]), Some(7.0));
    assert_eq!(duration("count", &[("lease", "_other")]), Some(5.0));
    assert_eq!(
        duration("bucket", &[("lease", "web"), ("le", "+Inf")]),
        Some(7.0)
    );
    let sum = duration("sum", &[("lease", "web")]).unwrap();
    assert!(sum > 0.0 && sum < 7.0 * STEP.as_secs_f64(), "{sum}");
    let counters = samples
        .iter()
        .find(|s| s.name == "postern_requests_total")
        .unwrap();
    assert_eq!(counters.family, "postern_requests");
    assert_eq!(counters.family_type, "counter");
    assert_eq!(
        sample(&samples, "postern_request_bytes_total", &[("lease", "web")]),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &samples,
            "postern_response_bytes_total",
            &[("lease", "web")]
        ),
        Some(7.0 * "hello from origin".len() as f64)
    );

    // No label value carries a secret, a path, a query or an address.
    let forbidden = [
        gw.api_key.as_str(),
        key_id,
        secret,
        "/",
        "?",
        "127.0.0.1",
        "hello",
        "nope",
        "nowhere",
    ];
    for s in &samples {
        for (name, value) in &s.labels {
            for bad in forbidden {
                assert!(
                    !value.contains(bad),
                    "label {name}={value:?} of {} contains {bad:?}",
                    s.name
                );
            }
        }
        if let Some(lease) = s.label("lease") {
            assert!(
                ["web", "_other"].contains(&lease),
                "an unexpected lease label {lease:?} on {}",
                s.name
            );
        }
    }
    // Nor does anything else in the exposition.
    for bad in [gw.api_key.as_str(), key_id, secret, "127.0.0.1", "/peer/"] {
        assert!(!text.contains(bad), "the scrape contains {bad:?}\n{text}");
    }
}

// ---- the binary's access log ---------------------------------------------------------------

/// The `postern-gateway` binary with its stderr captured; killed when dropped.
struct GatewayProcess {
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl GatewayProcess {
    fn start(config: &Path) -> Self {
        let mut child = Command::new(built_binary("postern-gateway"))
            .arg("--config")
            .arg(config)
            .args(["--log-format", "json"])
            // The default filter: warn, and the access log at info.
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("postern-gateway starts");
        let stderr = postern_tests::python::drain(child.stderr.take().unwrap());
        Self { child, stderr }
    }

    /// Everything written to stderr so far, up to its last complete line.
    fn stderr(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned();
        match text.rfind('\n') {
            Some(end) => text[..=end].to_owned(),
            None => String::new(),
        }
    }

    /// Waits (bounded) until stderr satisfies `pred`; returns that stderr.
    async fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            let text = self.stderr();
            if pred(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "no log line {what} within {STEP:?}\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request with `x-request-id: id` and `headers`.
fn tagged(
    method: Method,
    path: &str,
    id: &str,
    headers: &[(&str, &str)],
    body: Body,
) -> Request<Body> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "localhost")
        .header("x-request-id", id);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_writes_one_json_access_line_per_request_and_never_a_key() {
    let net = TestNet::start().await;
    let owner = net.expose("web", spawn_origin().await).await;
    let files = GatewayFiles::new(&net, &[("web", &owner)], "");
    let config = files.write_config();
    let mut gw = GatewayProcess::start(&config);
    files.wait_for_listeners().await;
    if let Some(status) = gw.child.try_wait().unwrap() {
        panic!(
            "postern-gateway exited at start ({status})\n{}",
            gw.stderr()
        );
    }
    let addr = files.http;

    let key = files.api_key.as_str();
    let (key_id, secret) = key_parts(key);
    // The same id with another secret: a key that looks right and is not.
    let flipped: String = secret
        .chars()
        .map(|c| if c == 'A' { 'B' } else { 'A' })
        .collect();
    let wrong = format!("pst_{key_id}_{flipped}");
    let bearer = format!("Bearer {key}");
    let wrong_bearer = format!("Bearer {wrong}");
    // (request id, request, status, outcome, key id logged, lease logged, path logged)
    type Case<'a> = (&'a str, Request<Body>, u16, &'a str, bool, bool, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "t-bearer",
            tagged(
                Method::GET,
                "/peer/web/hello?token=query-secret-1",
                "t-bearer",
                &[("authorization", &bearer)],
                empty(),
            ),
            200,
            "ok",
            true,
            true,
            "/peer/web/hello",
        ),
        (
            "t-x-api-key",
            tagged(
                Method::GET,
                "/peer/web/headers",
                "t-x-api-key",
                &[("x-api-key", key)],
                empty(),
            ),
            200,
            "ok",
            true,
            true,
            "/peer/web/headers",
        ),
        (
            "t-key-in-query",
            tagged(
                Method::POST,
                &format!("/peer/web/echo?api_key={key}&key={wrong}"),
                "t-key-in-query",
                &[("authorization", &bearer)],
                streaming_body(1000),
            ),
            200,
            "ok",
            true,
            true,
            "/peer/web/echo",
        ),
        (
            "t-anonymous",
            tagged(Method::GET, "/peer/web/hello", "t-anonymous", &[], empty()),
            401,
            "unauthenticated",
            false,
            false,
            "/peer/web/hello",
        ),
        (
            "t-wrong-bearer",
            tagged(
                Method::GET,
                "/peer/web/hello",
                "t-wrong-bearer",
                &[("authorization", &wrong_bearer)],
                empty(),
            ),
            401,
            "unauthenticated",
            false,
            false,
            "/peer/web/hello",
        ),
        (
            "t-wrong-x-api-key",
            tagged(
                Method::GET,
                "/peer/web/hello",
                "t-wrong-x-api-key",
                &[("x-api-key", &wrong)],
                empty(),
            ),
            401,
            "unauthenticated",
            false,
            false,
            "/peer/web/hello",
        ),
        (
            "t-wrong-in-query",
            tagged(
                Method::GET,
                &format!("/peer/web/hello?api_key={wrong}"),
                "t-wrong-in-query",
                &[],
                empty(),
            ),
            401,
            "unauthenticated",
            false,
            false,
            "/peer/web/hello",
        ),
        (
            "t-no-lease",
            tagged(
                Method::GET,
                "/peer/nope/x?y=z",
                "t-no-lease",
                &[("authorization", &bearer)],
                empty(),
            ),
            404,
            "not_found",
            true,
            false,
            "/peer/nope/x",
        ),
    ];
    let mut expected = Vec::new();
    for (id, req, status, outcome, has_key, has_lease, path) in cases {
        let (got, body) = request(addr, req).await;
        assert_eq!(got.as_u16(), status, "{id}: {body:?}\n{}", gw.stderr());
        if id == "t-key-in-query" {
            assert_eq!(body.len(), 1000);
        }
        expected.push((id, status, outcome, has_key, has_lease, path));
    }

    // Every request has its line (written just after its response).
    let text = gw
        .wait_for("for every request", |text| {
            expected
                .iter()
                .all(|(id, ..)| text.contains(&format!("\"request_id\":\"{id}\"")))
        })
        .await;
    let mut access = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let json: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a stderr line is not JSON ({e}): {line}\n{text}"));
        if json["target"] == "postern::access" {
            access.push(json);
        }
    }
    assert_eq!(
        access.len(),
        expected.len(),
        "one access line per request\n{text}"
    );
    for (id, status, outcome, has_key, has_lease, path) in &expected {
        let lines: Vec<&Value> = access
            .iter()
            .filter(|j| j["fields"]["request_id"] == *id)
            .collect();
        assert_eq!(lines.len(), 1, "{id}: one line\n{text}");
        let line = lines[0];
        let f = &line["fields"];
        assert_eq!(f["message"], "request", "{line}");
        assert_eq!(f["status"], *status, "{id}: {line}");
        assert_eq!(f["outcome"], *outcome, "{id}: {line}");
        assert_eq!(f["path"], *path, "{id}: the path (no query): {line}");
        assert_eq!(f["client_ip"], "127.0.0.1", "{id}: {line}");
        let method = if *id == "t-key-in-query" {
            "POST"
        } else {
            "GET"
        };
        assert_eq!(f["method"], method, "{id}: {line}");
        for number in ["bytes_in", "bytes_out", "total_ms"] {
            assert!(f[number].is_number(), "{id}: {number}: {line}");
        }
        assert_eq!(
            f["key_id"].as_str(),
            has_key.then_some(key_id),
            "{id}: key_id: {line}"
        );
        assert_eq!(
            f["lease"].as_str(),
            has_lease.then_some("web"),
            "{id}: lease: {line}"
        );
        // Only proxied requests spent time upstream.
        assert_eq!(f["upstream_ms"].is_number(), *has_lease, "{id}: {line}");
        // Refusals that matter to security are warnings.
        let level = if *outcome == "unauthenticated" {
            "WARN"
        } else {
            "INFO"
        };
        assert_eq!(line["level"], level, "{id}: {line}");
    }
    let echo = access
        .iter()
        .find(|j| j["fields"]["request_id"] == "t-key-in-query")
        .unwrap();
    assert_eq!(echo["fields"]["bytes_in"], 1000, "{echo}");
    assert_eq!(echo["fields"]["bytes_out"], 1000, "{echo}");

    // A file that does not validate: an error line names the file, the line and the field,
    // and the gateway goes on serving.
    let bad = format!("{}\n[limits]\nmax_connections = 0\n", files.toml);
    let line = bad
        .lines()
        .position(|l| l == "max_connections = 0")
        .unwrap()
        + 1;
    wait_for_config_watch(&format!("/proc/{}", gw.child.id()), &config).await;
    let tmp = config.with_extension("toml.new");
    std::fs::write(&tmp, &bad).unwrap();
    std::fs::rename(&tmp, &config).unwrap();
    let located = format!(
        "{}:{line}: invalid `limits.max_connections`",
        config.display()
    );
    let text = gw
        .wait_for("for the failed reload", |text| {
            text.lines()
                .any(|l| l.contains("\"level\":\"ERROR\"") && l.contains(&located))
        })
        .await;
    let (status, _) = request(
        addr,
        tagged(
            Method::GET,
            "/peer/web/hello",
            "t-after-reload",
            &[("authorization", &bearer)],
            empty(),
        ),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let text = gw
        .wait_for("for the request after the failed reload", |text| {
            text.contains("\"request_id\":\"t-after-reload\"")
        })
        .await;

    // Nothing the gateway wrote holds a key, its secret half or the query's secrets.
    for line in text.lines() {
        for bad in [
            key,
            secret,
            wrong.as_str(),
            flipped.as_str(),
            "query-secret-1",
        ] {
            assert!(!line.contains(bad), "stderr holds {bad:?}: {line}");
        }
    }
}

// ---- per-IP connection cap -----------------------------------------------------------------

/// A plain connection to the gateway from `from` (any 127.0.0.0/8 address: all loopback).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((from, 0)))
        .unwrap_or_else(|e| panic!("bind {from:?}: {e}"));
    within("connect", socket.connect(to)).await.unwrap()
}

/// Whether the gateway answered anything on `tcp` to a request (false: closed unanswered).
async fn answers(mut tcp: tokio::net::TcpStream) -> bool {
    // Writing may already fail (reset): that too is a connection closed at accept.
    let _ = tcp
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    match within("read after accept", tcp.read(&mut buf)).await {
        Ok(0) | Err(_) => false,
        Ok(_) => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ips_connection_flood_is_capped_at_accept_while_another_ip_is_served() {
    let (_net, gw) = TestGateway::for_web_origin("[limits]\nmax_connections_per_ip = 4\n").await;
    let hello = || authed(Method::GET, "/peer/web/hello", &gw.api_key, empty());
    // Four connections from 127.0.0.1, each kept alive after a request.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = http1_client(connect_from([127, 0, 0, 1], gw.http).await).await;
        let resp = within("request", send(&mut c, hello())).await;
        assert_eq!(resp.status(), 200);
        let _ = body_bytes(resp).await;
        held.push(c);
    }
    // The fifth is closed at accept, without a response.
    let fifth = connect_from([127, 0, 0, 1], gw.http).await;
    assert!(
        !answers(fifth).await,
        "a fifth connection from one IP was served"
    );
    // Another address is served, over keep-alive, several times.
    let mut other = http1_client(connect_from([127, 0, 0, 2], gw.http).await).await;
    for _ in 0..3 {
        let resp = within("request from 127.0.0.2", send(&mut other, hello())).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(body_bytes(resp).await, "hello from origin");
    }
    // The held ones still are.
    for c in &mut held {
        let resp = within("request on a held connection", send(c, hello())).await;
        assert_eq!(resp.status(), 200);
        let _ = body_bytes(resp).await;
    }
    let text = gw.scrape().await;
    assert_eq!(
        metric_value(
            &text,
            "postern_client_connections_rejected_total{reason=\"per_ip_cap\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "postern_client_connections"),
        Some(5.0),
        "{text}"
    );

    // A slot given back is free again for that IP (once the gateway sees the close).
    drop(held.pop());
    let deadline = Instant::now() + STEP;
    loop {
        let tcp = connect_from([127, 0, 0, 1], gw.http).await;
        let mut c = http1_client(tcp).await;
        let served = tokio::time::timeout(STEP, async {
            c.ready().await.ok()?;
            c.send_request(hello()).await.ok()
        })
        .await
        .ok()
        .flatten();
        if let Some(resp) = served {
            assert_eq!(resp.status(), 200);
            break;
        }
        assert!(Instant::now() < deadline, "a freed slot was not given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- the deploy files' metric names --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_name_in_the_deploy_files_is_exported() {
    let net = TestNet::start().await;
    let origin = spawn_origin().await;
    let web = net.expose("web", origin).await;
    // `down` is configured, but its owner is not connected: 502, and the breaker opens.
    let down = postern_sdk::Identity::generate();
    let (limited, limited_key) = api_key_toml(
        "limited",
        "\"web\"",
        "rate_limit = { requests = 1, per = \"1h\" }",
    );
    let gw = TestGateway::start(
        &net,
        &[("web", &web), ("down", &down)],
        &format!(
            "[limits]\nmax_connections_per_ip = 16\n\n[breaker]\nconsecutive_failures = 1\nopen_for = \"1h\"\n\n{limited}"
        ),
    )
    .await;
    let get = |key: &str, path: &str| authed(Method::GET, path, key, empty());
    // Requests, bytes, durations, a tunnel session and its handshake.
    let (status, _) = request(gw.http, get(&gw.api_key, "/peer/web/hello")).await;
    assert_eq!(status, 200);
    // An auth failure.
    assert_eq!(request(gw.http, anon("/peer/web/hello")).await.0, 401);
    // An ACL denial: the limited key may not use `down`.
    assert_eq!(
        request(gw.http, get(&limited_key, "/peer/down/x")).await.0,
        403
    );
    // A rate-limit rejection: the limited key's budget is one request an hour.
    assert_eq!(
        request(gw.http, get(&limited_key, "/peer/web/hello"))
            .await
            .0,
        200
    );
    assert_eq!(
        request(gw.http, get(&limited_key, "/peer/web/hello"))
            .await
            .0,
        429
    );
    // A breaker transition (one failure opens it) and a breaker rejection.
    assert_eq!(
        request(gw.http, get(&gw.api_key, "/peer/down/x")).await.0,
        502
    );
    assert_eq!(
        request(gw.http, get(&gw.api_key, "/peer/down/x")).await.0,
        503
    );
    // A connection closed at the per-IP cap: 17 from 127.0.0.9, held open.
    let mut flood = Vec::new();
    for _ in 0..17 {
        flood.push(connect_from([127, 0, 0, 9], gw.http).await);
    }
    // A reload.
    wait_for_config_watch("/proc/self", &gw.config_path).await;
    assert!(gw.rewrite_config(&gw.toml).await);

    let deadline = Instant::now() + STEP;
    let gateway = loop {
        let text = gw.scrape().await;
        let rejected = metric_value(
            &text,
            "postern_client_connections_rejected_total{reason=\"per_ip_cap\"}",
        );
        if rejected == Some(1.0) || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(flood);
    for (series, want) in [
        (
            "postern_client_connections_rejected_total{reason=\"per_ip_cap\"}",
            1.0,
        ),
        ("postern_ratelimit_rejections_total{limit=\"key\"}", 1.0),
        ("postern_acl_denials_total{reason=\"lease\"}", 1.0),
        (
            "postern_breaker_transitions_total{lease=\"down\",to=\"open\"}",
            1.0,
        ),
        ("postern_breaker_rejections_total{lease=\"down\"}", 1.0),
        ("postern_breaker_state{lease=\"down\"}", 1.0),
        ("postern_config_reloads_total{result=\"ok\"}", 1.0),
    ] {
        assert_eq!(
            metric_value(&gateway, series),
            Some(want),
            "{series}\n{gateway}"
        );
    }
    // A session to `web` and at least one handshake (a re-dial would add one). Not an exact
    // session count: the dialer counts a lease whose dial failed (`down`) until its reaper runs.
    for series in ["postern_tunnel_sessions", "postern_tunnel_handshakes_total"] {
        let n = metric_value(&gateway, series);
        assert!(n.is_some_and(|n| n >= 1.0), "{series}: {n:?}\n{gateway}");
    }
    let relay = match net.relay.metrics_addr() {
        Some(addr) => scrape(addr).await,
        None => net.relay.render_metrics(),
    };

    let names = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/metric-names.txt"),
    )
    .unwrap();
    let names: Vec<&str> = names
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(names.len() > 20, "{names:?}");
    let mut missing = Vec::new();
    for name in &names {
        let (scrape, whose) = if name.starts_with("postern_relay_") {
            (&relay, "relay")
        } else {
            (&gateway, "gateway")
        };
        let declared = format!("# TYPE {name} ");
        if !scrape.lines().any(|l| l.starts_with(&declared)) {
            missing.push(format!("{name} ({whose})"));
        }
    }
    assert!(
        missing.is_empty(),
        "metric names in deploy/metric-names.txt that no scrape declares: {missing:?}\n\
         --- gateway\n{gateway}\n--- relay\n{relay}"
    );
    // And the other way: what the scrapes declare that the deploy files do not know.
    let listed: BTreeSet<&str> = names.iter().copied().collect();
    let unlisted: Vec<&str> = gateway
        .lines()
        .chain(relay.lines())
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_whitespace().next())
        .filter(|n| !listed.contains(n))
        .collect();
    if !unlisted.is_empty() {
        eprintln!("exported but not in deploy/metric-names.txt: {unlisted:?}");
    }
}

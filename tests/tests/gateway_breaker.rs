//! A lease's circuit breaker, head timeout and in-flight cap end to end: an origin that is
//! down opens the breaker (503 at once, no tunnel work), half-open probes find out when it is
//! back; a slow origin is cut at the lease's head timeout (504) and counts as a failure; one
//! request over the in-flight cap waits its queue time and is refused (503).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use postern_sdk::Identity;
use postern_tests::gateway::{authed, TestGateway};
use postern_tests::*;

type Body = BoxBody<Bytes, hyper::Error>;

/// What one request got, and how long it took.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
    took: Duration,
}

impl Answer {
    fn problem(&self) -> serde_json::Value {
        assert_eq!(
            self.headers["content-type"], "application/problem+json",
            "{self:?}"
        );
        serde_json::from_str(&self.body).unwrap()
    }

    /// Checks that this is the gateway's problem `slug` with `status`.
    fn assert_problem(&self, status: StatusCode, slug: &str) {
        assert_eq!(self.status, status, "{self:?}");
        let problem = self.problem();
        assert_eq!(
            problem["type"],
            format!("https://postern.dev/problems/{slug}"),
            "{self:?}"
        );
        assert_eq!(problem["status"], status.as_u16(), "{self:?}");
    }

    fn retry_after(&self) -> u64 {
        self.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }
}

/// `GET /peer/web{path}` with the gateway's key on a new plain connection (the gateway closes
/// a connection after a failed proxy attempt); panics after 10 s.
async fn get(gw: &TestGateway, path: &str) -> Answer {
    let req = authed(
        Method::GET,
        &format!("/peer/web{path}"),
        &gw.api_key,
        empty(),
    );
    call(gw.http, req).await
}

async fn call(addr: SocketAddr, req: Request<Body>) -> Answer {
    let started = Instant::now();
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
            took: started.elapsed(),
        }
    })
    .await
    .expect("an answer within 10 s")
}

/// A `[[lease]]` table for lease `web` owned by `owner`, with `settings` in it.
fn lease_toml(owner: &Identity, settings: &str) -> String {
    format!(
        "[[lease]]\nname = \"web\"\nowner_identity = \"{}\"\n{settings}\n",
        owner.public_base64()
    )
}

/// A small origin on `listener`: `/slow` answers `slow` after `delay`, everything else
/// `hello from origin` at once.
fn serve_origin(listener: tokio::net::TcpListener, delay: Duration) {
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<_>| async move {
                    let text = if req.uri().path() == "/slow" {
                        tokio::time::sleep(delay).await;
                        "slow"
                    } else {
                        "hello from origin"
                    };
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        text.as_bytes(),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
}

async fn spawn_slow_origin(delay: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve_origin(listener, delay);
    addr
}

/// The value of `family{lease="web"}` (0 when absent).
async fn lease_metric(gw: &TestGateway, family: &str) -> f64 {
    metric_value(&gw.scrape().await, &format!("{family}{{lease=\"web\"}}")).unwrap_or(0.0)
}

async fn transitions(gw: &TestGateway, to: &str) -> f64 {
    metric_value(
        &gw.scrape().await,
        &format!("postern_breaker_transitions_total{{lease=\"web\",to=\"{to}\"}}"),
    )
    .unwrap_or(0.0)
}

async fn state(gw: &TestGateway) -> f64 {
    lease_metric(gw, "postern_breaker_state").await
}

/// Upstream connections made for lease `web` (one per request that reached the tunnel).
async fn connects(gw: &TestGateway) -> f64 {
    lease_metric(gw, "postern_upstream_connect_duration_seconds_count").await
}

/// Waits (at most 5 s) until `value` reads `expected`: the gateway records a request's result
/// (breaker, in-flight slot, metrics) in its logging phase, just after the answer went out.
async fn settles<F, Fut>(what: &str, expected: f64, value: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let mut last = f64::NAN;
    for _ in 0..250 {
        last = value().await;
        if last == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} is {last}, not {expected}");
}

const OPEN_FOR: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_whose_origin_is_down_opens_its_breaker_and_closes_it_once_a_probe_succeeds() {
    let net = TestNet::start().await;
    // A port nothing listens on (bound, then closed); the origin comes up on it later.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let owner = net.expose("web", port).await;
    let gw = TestGateway::start(
        &net,
        &[],
        &lease_toml(
            &owner,
            "breaker = { consecutive_failures = 2, open_for = \"500ms\" }",
        ),
    )
    .await;

    // The agent answers 502 (its own problem: origin unreachable); two in a row open the
    // breaker.
    let first = get(&gw, "/hello").await;
    first.assert_problem(StatusCode::BAD_GATEWAY, "origin");
    settles("upstream connects", 1.0, || connects(&gw)).await;
    assert_eq!(state(&gw).await, 0.0, "one failure is not enough");
    get(&gw, "/hello")
        .await
        .assert_problem(StatusCode::BAD_GATEWAY, "origin");
    settles("breaker state", 1.0, || state(&gw)).await;
    settles("transitions to open", 1.0, || transitions(&gw, "open")).await;
    settles("upstream connects", 2.0, || connects(&gw)).await;

    // Open: refused at once with circuit-open and Retry-After, without touching the tunnel.
    for _ in 0..5 {
        let refused = get(&gw, "/hello").await;
        refused.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "circuit-open");
        assert_eq!(refused.retry_after(), 1, "{refused:?}");
        assert!(refused.took < Duration::from_millis(250), "{refused:?}");
    }
    assert_eq!(connects(&gw).await, 2.0, "no tunnel work while open");
    assert_eq!(
        lease_metric(&gw, "postern_breaker_rejections_total").await,
        5.0
    );

    // After open_for, one probe goes through; the origin is still down, so it opens again.
    tokio::time::sleep(OPEN_FOR + Duration::from_millis(100)).await;
    get(&gw, "/hello")
        .await
        .assert_problem(StatusCode::BAD_GATEWAY, "origin");
    settles("upstream connects", 3.0, || connects(&gw)).await;
    settles("transitions to half_open", 1.0, || {
        transitions(&gw, "half_open")
    })
    .await;
    settles("transitions to open", 2.0, || transitions(&gw, "open")).await;
    settles("breaker state", 1.0, || state(&gw)).await;

    // The origin comes back on its port; the breaker still refuses until open_for is over.
    let listener = tokio::net::TcpListener::bind(port)
        .await
        .expect("the origin's port is free again");
    serve_origin(listener, Duration::from_millis(500));
    get(&gw, "/hello")
        .await
        .assert_problem(StatusCode::SERVICE_UNAVAILABLE, "circuit-open");
    settles("upstream connects", 3.0, || connects(&gw)).await;

    // The next probe (a slow request) succeeds. While it is in flight the breaker is
    // half-open and lets no second request through (half_open_probes = 1).
    tokio::time::sleep(OPEN_FOR + Duration::from_millis(100)).await;
    let probe = {
        let req = authed(Method::GET, "/peer/web/slow", &gw.api_key, empty());
        tokio::spawn(call(gw.http, req))
    };
    let mut polls = 0;
    while state(&gw).await != 2.0 {
        polls += 1;
        assert!(polls < 100, "the breaker never went half-open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = get(&gw, "/hello").await;
    refused.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "circuit-open");
    assert!(refused.retry_after() >= 1);
    let probe = probe.await.unwrap();
    assert_eq!(probe.status, StatusCode::OK, "{probe:?}");
    assert_eq!(probe.body, "slow");

    // Closed again: requests flow.
    settles("breaker state", 0.0, || state(&gw)).await;
    settles("transitions to half_open", 2.0, || {
        transitions(&gw, "half_open")
    })
    .await;
    settles("transitions to closed", 1.0, || transitions(&gw, "closed")).await;
    for _ in 0..3 {
        let a = get(&gw, "/hello").await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        assert_eq!(a.body, "hello from origin");
    }
    settles("upstream connects", 7.0, || connects(&gw)).await;
    assert_eq!(
        lease_metric(&gw, "postern_breaker_rejections_total").await,
        7.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_head_slower_than_the_head_timeout_is_a_504_and_a_breaker_failure() {
    let net = TestNet::start().await;
    let origin = spawn_slow_origin(Duration::from_secs(2)).await;
    let owner = net.expose("web", origin).await;
    let gw = TestGateway::start(
        &net,
        &[],
        &lease_toml(
            &owner,
            "head_timeout = \"300ms\"\nbreaker = { consecutive_failures = 2, open_for = \"10s\" }",
        ),
    )
    .await;

    // A quick answer is not affected.
    let quick = get(&gw, "/hello").await;
    assert_eq!(quick.status, StatusCode::OK, "{quick:?}");

    for failures in 1..=2 {
        let slow = get(&gw, "/slow").await;
        slow.assert_problem(StatusCode::GATEWAY_TIMEOUT, "gateway-timeout");
        assert!(
            slow.took >= Duration::from_millis(300) && slow.took < Duration::from_millis(1200),
            "answered after {:?}, not at the 300 ms head timeout",
            slow.took
        );
        settles("upstream connects", f64::from(failures) + 1.0, || {
            connects(&gw)
        })
        .await;
        let expected = if failures < 2 { 0.0 } else { 1.0 };
        settles("breaker state", expected, || state(&gw)).await;
    }
    // Open: even the quick path is refused now, for up to open_for.
    let refused = get(&gw, "/hello").await;
    refused.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "circuit-open");
    assert!((9..=10).contains(&refused.retry_after()), "{:?}", refused);
    settles("transitions to open", 1.0, || transitions(&gw, "open")).await;
    settles("upstream connects", 3.0, || connects(&gw)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_in_flight_cap_waits_its_queue_time_then_gets_503() {
    let net = TestNet::start().await;
    let origin = spawn_slow_origin(Duration::from_secs(1)).await;
    let owner = net.expose("web", origin).await;
    let gw = TestGateway::start(
        &net,
        &[],
        &format!(
            "[limits]\nin_flight_queue_timeout = \"200ms\"\n\n{}",
            lease_toml(&owner, "max_in_flight = 1")
        ),
    )
    .await;

    // One slow request holds the only slot.
    let slow = {
        let req = authed(Method::GET, "/peer/web/slow", &gw.api_key, empty());
        tokio::spawn(call(gw.http, req))
    };
    let mut polls = 0;
    while lease_metric(&gw, "postern_lease_in_flight").await != 1.0 {
        polls += 1;
        assert!(polls < 200, "the slow request never got in flight");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A second one waits the queue time for a slot, then is refused.
    let refused = get(&gw, "/hello").await;
    refused.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "lease-overloaded");
    assert!(
        refused.took >= Duration::from_millis(190) && refused.took < Duration::from_millis(800),
        "refused after {:?}, not after the 200 ms queue time",
        refused.took
    );
    assert_eq!(
        lease_metric(&gw, "postern_lease_overload_rejections_total").await,
        1.0
    );

    // The slow request is not disturbed, and its slot comes back when it is done.
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, StatusCode::OK, "{slow:?}");
    assert_eq!(slow.body, "slow");
    settles("requests in flight", 0.0, || {
        lease_metric(&gw, "postern_lease_in_flight")
    })
    .await;
    let a = get(&gw, "/hello").await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(
        lease_metric(&gw, "postern_lease_overload_rejections_total").await,
        1.0
    );
    // An overload is not the lease failing: the breaker stays closed.
    settles("breaker state", 0.0, || state(&gw)).await;
}

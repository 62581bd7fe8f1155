//! What must hold of the gateway's HTTP/2 upstream (`postern_gateway::upstream`): leases never
//! share a connection, the connection's stream limit opens a second one, idle connections
//! close, a request body over the limit is refused without leaving the lease waiting, a slow
//! client holds back the origin (flow control), and a dead E2EE session fails the requests in
//! flight with 502 and is replaced on the next request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use postern_tests::gateway::{authed, TestGateway};
use postern_tests::*;

type Body = BoxBody<Bytes, hyper::Error>;

/// A series of the gateway's own registry.
fn metric(gw: &TestGateway, series: &str) -> f64 {
    metric_value(&gw.runtime.metrics.render(), series).unwrap_or(0.0)
}

fn opened(gw: &TestGateway, lease: &str) -> f64 {
    metric(
        gw,
        &format!("postern_upstream_h2_connections_opened_total{{lease=\"{lease}\"}}"),
    )
}

/// An origin that says who it is: `/who` → `name`; `/slow` → `slow` after `delay`;
/// `/stream/N` → N bytes in 64 KiB chunks, counting what it has handed to its connection in
/// `written`.
async fn origin(name: &'static str, delay: Duration, written: Arc<AtomicU64>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let written = Arc::clone(&written);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let written = Arc::clone(&written);
                    async move {
                        let path = req.uri().path().to_owned();
                        let body: Body = if path == "/slow" {
                            tokio::time::sleep(delay).await;
                            full("slow")
                        } else if let Some(n) = path.strip_prefix("/stream/") {
                            let total: u64 = n.parse().unwrap();
                            let chunks = futures::stream::unfold(0u64, move |sent| {
                                let written = Arc::clone(&written);
                                async move {
                                    if sent >= total {
                                        return None;
                                    }
                                    let n = (total - sent).min(64 * 1024);
                                    let chunk: Vec<u8> =
                                        (sent..sent + n).map(pattern_byte).collect();
                                    written.fetch_add(n, Ordering::SeqCst);
                                    Some((Ok(Frame::data(Bytes::from(chunk))), sent + n))
                                }
                            });
                            BodyExt::boxed(StreamBody::new(chunks))
                        } else {
                            full(name)
                        };
                        Ok::<_, Infallible>(Response::new(body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

fn full(text: &'static str) -> Body {
    Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|n| match n {})
        .boxed()
}

async fn get(gw: &TestGateway, path: &str) -> (StatusCode, Bytes) {
    let mut c = gw.h1().await;
    let resp = c
        .send_request(authed(Method::GET, path, &gw.api_key, empty()))
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_leases_never_share_a_connection() {
    let net = TestNet::start().await;
    let counter = Arc::new(AtomicU64::new(0));
    let web = origin("web-origin", Duration::ZERO, counter.clone()).await;
    let api = origin("api-origin", Duration::ZERO, counter).await;
    let web_owner = net.expose("web", web).await;
    let api_owner = net.expose("api", api).await;
    let gw = TestGateway::start(&net, &[("web", &web_owner), ("api", &api_owner)], "").await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (key, lease) = (gw.api_key.clone(), if i % 2 == 0 { "web" } else { "api" });
        let h2 = i % 4 < 2;
        let mut h1c = if h2 { None } else { Some(gw.h1().await) };
        let mut h2c = if h2 { Some(gw.h2().await) } else { None };
        tasks.push(tokio::spawn(async move {
            for round in 0..20 {
                // Interleave the leases on each client connection too.
                let lease = if round % 3 == 0 {
                    lease
                } else if lease == "web" {
                    "api"
                } else {
                    "web"
                };
                let uri = if h2c.is_some() {
                    format!("https://localhost/peer/{lease}/who")
                } else {
                    format!("/peer/{lease}/who")
                };
                let req = authed(Method::GET, &uri, &key, empty());
                let resp = match (&mut h1c, &mut h2c) {
                    (Some(c), _) => {
                        c.ready().await.unwrap();
                        c.send_request(req).await.unwrap()
                    }
                    (_, Some(c)) => c.send_request(req).await.unwrap(),
                    _ => unreachable!(),
                };
                assert_eq!(resp.status(), StatusCode::OK);
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(
                    body,
                    format!("{lease}-origin"),
                    "lease {lease} answered by its origin"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(opened(&gw, "web"), 1.0);
    assert_eq!(opened(&gw, "api"), 1.0);
    assert_eq!(
        gw.runtime.dialer.handshakes(),
        2,
        "one E2EE session per lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_connection_opens_a_second_one_and_a_capped_pool_waits_a_bounded_time() {
    let net = TestNet::start().await;
    let slow = origin("x", Duration::from_millis(600), Arc::default()).await;
    let owner = net.expose("web", slow).await;
    let gw = TestGateway::start(
        &net,
        &[("web", &owner)],
        "[upstream]\nmax_streams_per_connection = 2\n",
    )
    .await;
    let calls = (0..6).map(|_| get(&gw, "/peer/web/slow"));
    for (status, body) in futures::future::join_all(calls).await {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"slow");
    }
    let n = opened(&gw, "web");
    assert!(
        (2.0..=4.0).contains(&n),
        "6 requests on 2-stream connections opened {n}"
    );

    // One connection of one stream, and a connect timeout shorter than the slow answer: the
    // second request cannot get a stream in time and is answered 504, the first succeeds.
    let gw = TestGateway::start(
        &net,
        &[("web", &owner)],
        "[upstream]\nmax_streams_per_connection = 1\nmax_connections_per_lease = 1\n",
    )
    .await;
    let toml = gw.toml.replace(
        "[[lease]]\nname = \"web\"",
        "[[lease]]\nname = \"web\"\nconnect_timeout = \"200ms\"",
    );
    assert!(gw.rewrite_config(&toml).await, "{toml}");
    let first = get(&gw, "/peer/web/slow");
    let second = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        get(&gw, "/peer/web/slow").await
    };
    let (first, second) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(first, second)
    })
    .await
    .expect("both answered in time");
    assert_eq!(first.0, StatusCode::OK);
    assert_eq!(second.0, StatusCode::GATEWAY_TIMEOUT, "{:?}", second.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_closes_and_the_next_request_opens_another() {
    let net = TestNet::start().await;
    let o = origin("web-origin", Duration::ZERO, Arc::default()).await;
    let owner = net.expose("web", o).await;
    let gw = TestGateway::start(
        &net,
        &[("web", &owner)],
        "[upstream]\nidle_timeout = \"300ms\"\n",
    )
    .await;
    assert_eq!(get(&gw, "/peer/web/who").await.0, StatusCode::OK);
    let open = "postern_upstream_h2_connections{lease=\"web\"}";
    assert_eq!(metric(&gw, open), 1.0);
    let mut closed = false;
    for _ in 0..100 {
        if metric(&gw, open) == 0.0 {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed, "the idle connection closed within 5 s");
    assert_eq!(get(&gw, "/peer/web/who").await.0, StatusCode::OK);
    assert_eq!(opened(&gw, "web"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_over_the_limit_is_refused_at_once_and_the_lease_goes_on() {
    let (_net, gw) =
        TestGateway::for_web_origin("[limits]\nmax_request_body_bytes = 1048576\n").await;
    let mut c = gw.h1().await;
    // 2 MiB in 64 KiB chunks, no Content-Length: refused once 1 MiB has passed.
    let chunks = futures::stream::iter(0..32)
        .map(|_| Ok::<_, hyper::Error>(Frame::data(Bytes::from(vec![7u8; 64 * 1024]))));
    let body: Body = BodyExt::boxed(StreamBody::new(chunks));
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        c.send_request(authed(Method::POST, "/peer/web/count", &gw.api_key, body)),
    )
    .await
    .expect("answered in time, not after an idle timeout")
    .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    // Under the limit, streamed: echoed byte for byte, on the same lease connection.
    let chunks = futures::stream::iter(0..9u8)
        .map(|i| Ok::<_, hyper::Error>(Frame::data(Bytes::from(vec![i; 100 * 1024]))));
    let body: Body = BodyExt::boxed(StreamBody::new(chunks));
    let mut c = gw.h1().await;
    let resp = c
        .send_request(authed(Method::POST, "/peer/web/echo", &gw.api_key, body))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let echoed = resp.into_body().collect().await.unwrap().to_bytes();
    let expected: Vec<u8> = (0..9u8).flat_map(|i| vec![i; 100 * 1024]).collect();
    assert!(echoed == expected, "echo of 900 KiB");
    assert_eq!(
        opened(&gw, "web"),
        1.0,
        "the refused stream did not cost the connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_holds_the_origin_back() {
    let net = TestNet::start().await;
    let written = Arc::new(AtomicU64::new(0));
    let o = origin("x", Duration::ZERO, written.clone()).await;
    let owner = net.expose("web", o).await;
    let gw = TestGateway::start(&net, &[("web", &owner)], "").await;
    const TOTAL: u64 = 64 * 1024 * 1024;
    for h2 in [false, true] {
        written.store(0, Ordering::SeqCst);
        let resp = if h2 {
            let mut c = gw.h2().await;
            let uri = format!("https://localhost/peer/web/stream/{TOTAL}");
            c.send_request(authed(Method::GET, &uri, &gw.api_key, empty()))
                .await
                .unwrap()
        } else {
            let mut c = gw.h1().await;
            let uri = format!("/peer/web/stream/{TOTAL}");
            c.send_request(authed(Method::GET, &uri, &gw.api_key, empty()))
                .await
                .unwrap()
        };
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let mut read = 0u64;
        let check = |chunk: &Bytes, read: &mut u64| {
            for (i, b) in chunk.iter().enumerate() {
                assert_eq!(*b, pattern_byte(*read + i as u64));
            }
            *read += chunk.len() as u64;
        };
        while read < 1024 * 1024 {
            let frame = body.frame().await.unwrap().unwrap();
            if let Some(data) = frame.data_ref() {
                check(data, &mut read);
            }
        }
        // Stop reading: the origin may fill the windows and buffers on the way, then waits.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let plateau = written.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let later = written.load(Ordering::SeqCst);
        eprintln!("h2 client {h2}: origin wrote {plateau} bytes while the client read {read}");
        // The windows on the way (client TCP and TLS, the gateway's 2 MiB HTTP/2 stream
        // window, the tunnel's yamux windows, the agent's and origin's socket buffers) hold
        // a few MiB; an unbounded buffer would have taken all 64 MiB by now.
        assert!(plateau < 24 * 1024 * 1024, "origin wrote {plateau} bytes");
        assert_eq!(
            plateau, later,
            "the origin waits while the client does not read"
        );
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame.unwrap().data_ref() {
                check(data, &mut read);
            }
        }
        assert_eq!(read, TOTAL);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_session_fails_requests_in_flight_with_502_and_the_next_one_gets_a_new_session() {
    let net = TestNet::start().await;
    let slow = origin("web-origin", Duration::from_secs(5), Arc::default()).await;
    let owner = net.expose("web", slow).await;
    let gw = TestGateway::start(&net, &[("web", &owner)], "").await;
    assert_eq!(get(&gw, "/peer/web/who").await.0, StatusCode::OK);
    let handshakes = gw.runtime.dialer.handshakes();
    let in_flight = tokio::spawn({
        let (key, mut c) = (gw.api_key.clone(), gw.h1().await);
        async move {
            let resp = c
                .send_request(authed(Method::GET, "/peer/web/slow", &key, empty()))
                .await
                .unwrap();
            let status = resp.status();
            let ct = resp.headers().get("content-type").cloned();
            (status, ct)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A relay crash ends every session through it, the lease's E2EE session included.
    let _net = net.restart_relay().await;
    let (status, ct) = tokio::time::timeout(Duration::from_secs(4), in_flight)
        .await
        .expect("the request in flight is answered before the origin would have")
        .unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(ct.unwrap(), "application/problem+json");
    // The agent registers again on its own; then the next request opens a new session.
    let mut ok = false;
    for _ in 0..100 {
        if get(&gw, "/peer/web/who").await.0 == StatusCode::OK {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the lease is reachable again within 10 s");
    assert!(
        gw.runtime.dialer.handshakes() > handshakes,
        "a new E2EE session"
    );
}

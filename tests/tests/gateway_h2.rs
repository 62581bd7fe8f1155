//! The gateway's HTTP/2 upstream (`postern_gateway::upstream`): requests to a lease ride one
//! HTTP/2 connection on one inner stream of the lease's E2EE session.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use postern_tests::gateway::{authed, TestGateway};
use postern_tests::*;

/// `postern_upstream_h2_connections_opened_total` of lease `lease`.
fn h2_opened(gw: &TestGateway, lease: &str) -> f64 {
    metric_value(
        &gw.runtime.metrics.render(),
        &format!("postern_upstream_h2_connections_opened_total{{lease=\"{lease}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_over_many_client_connections_ride_one_h2_connection() {
    let (_net, gw) = TestGateway::for_web_origin("").await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (key, mut c) = (gw.api_key.clone(), gw.h1().await);
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                c.ready().await.unwrap();
                let resp = c
                    .send_request(authed(Method::GET, "/peer/web/hello", &key, empty()))
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&body[..], b"hello from origin");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        h2_opened(&gw, "web"),
        1.0,
        "one HTTP/2 connection for 200 requests"
    );
    assert_eq!(gw.runtime.dialer.handshakes(), 1, "one E2EE session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_serves_http1_only_is_served_over_http1() {
    let net = TestNet::start().await;
    let origin = spawn_origin().await;
    let owner = net
        .expose_serving("web", origin, vec!["http/1.1".into()])
        .await;
    let gw = TestGateway::start(&net, &[("web", &owner)], "").await;
    let mut c = gw.h1().await;
    for _ in 0..5 {
        c.ready().await.unwrap();
        let resp = c
            .send_request(authed(Method::GET, "/peer/web/hello", &gw.api_key, empty()))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello from origin");
    }
    assert_eq!(h2_opened(&gw, "web"), 0.0);
}

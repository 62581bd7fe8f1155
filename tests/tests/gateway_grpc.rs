//! A gRPC-style exchange through the gateway: an HTTP/2 client, the gateway's HTTP/2 upstream,
//! the agent forwarding to an `h2c://` origin. Response trailers (`grpc-status`) reach the
//! client, and the request body streams to the origin.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use postern_sdk::expose::{self, ExposeOptions, Target};
use postern_sdk::{Identity, Listener};
use postern_tests::gateway::TestGateway;
use postern_tests::*;

type Body = BoxBody<Bytes, hyper::Error>;

/// An HTTP/2 (h2c) origin: answers every request with the request body's length as its body
/// and `grpc-status: 0` plus `x-echo-bytes` as trailers, like a gRPC server's response.
async fn grpc_origin() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let content_type = req.headers().get("content-type").cloned();
                    let len = req.into_body().collect().await.unwrap().to_bytes().len();
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    trailers.insert("x-echo-bytes", HeaderValue::from(len));
                    let frames = vec![
                        Ok::<_, Infallible>(Frame::data(Bytes::from(len.to_string()))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let mut resp = Response::new(StreamBody::new(futures::stream::iter(frames)));
                    if let Some(ct) = content_type {
                        resp.headers_mut().insert("content-type", ct);
                    }
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// `postern expose h2c://origin` for lease `grpc`; returns the owner.
async fn expose_h2c(net: &TestNet, origin: SocketAddr) -> Identity {
    let owner = Identity::generate();
    let mut cfg = net.listener_config(&owner, "grpc");
    cfg.leases[0].alpn = expose::HTTP_ALPN.iter().map(|a| a.to_string()).collect();
    let listener = Listener::bind(cfg).await.expect("lease registers");
    let target = Target::parse(&format!("h2c://{origin}"), false).unwrap();
    tokio::spawn(expose::serve(listener, target, ExposeOptions::default()));
    owner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_trailers_reach_an_http2_client_and_the_body_streams_to_an_h2c_origin() {
    let net = TestNet::start().await;
    let owner = expose_h2c(&net, grpc_origin().await).await;
    let gw = TestGateway::start(&net, &[("grpc", &owner)], "").await;
    let mut c = gw.h2().await;
    for round in 0..3u8 {
        // The request body in several frames, as a streaming gRPC call sends it.
        let chunks: Vec<Result<Frame<Bytes>, hyper::Error>> = (0..4)
            .map(|i| Ok(Frame::data(Bytes::from(vec![round + i; 10_000]))))
            .collect();
        let body: Body = StreamBody::new(futures::stream::iter(chunks)).boxed();
        let req = Request::builder()
            .method(Method::POST)
            .uri("https://localhost/peer/grpc/echo.Echo/Count")
            .header("authorization", format!("Bearer {}", gw.api_key))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(body)
            .unwrap();
        let resp = c.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("response trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["x-echo-bytes"], "40000");
        assert_eq!(&collected.to_bytes()[..], b"40000");
    }
    let opened = metric_value(
        &gw.runtime.metrics.render(),
        "postern_upstream_h2_connections_opened_total{lease=\"grpc\"}",
    );
    assert_eq!(opened, Some(1.0), "the exchange rode the HTTP/2 upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_origin_serves_http1_callers_too() {
    let net = TestNet::start().await;
    let owner = expose_h2c(&net, grpc_origin().await).await;
    let gw = TestGateway::start(&net, &[("grpc", &owner)], "").await;
    let mut c = gw.h1().await;
    let body: Body = Full::new(Bytes::from_static(b"hello"))
        .map_err(|n| match n {})
        .boxed();
    let resp = c
        .send_request(postern_tests::gateway::authed(
            Method::POST,
            "/peer/grpc/anything",
            &gw.api_key,
            body,
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(&collected.to_bytes()[..], b"5");
}

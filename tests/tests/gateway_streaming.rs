//! WebSocket and SSE through the gateway: upgrades proxied end to end, events delivered as they
//! are produced.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use postern_tests::gateway::TestGateway;
use postern_tests::*;
use tokio::sync::{mpsc, Mutex};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;

type Body = BoxBody<Bytes, hyper::Error>;

/// An origin with `/ws` (WebSocket echo) and `/sse` (one event per permit from `release`).
async fn streaming_origin(release: Arc<Mutex<mpsc::Receiver<()>>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let release = release.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(req, release.clone()));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

async fn handle(
    mut req: Request<Incoming>,
    release: Arc<Mutex<mpsc::Receiver<()>>>,
) -> Result<Response<Body>, Infallible> {
    if req.uri().path() == "/ws" {
        let key = req.headers().get("sec-websocket-key").cloned().unwrap();
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let upgraded = upgrade.await.unwrap();
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                None,
            )
            .await;
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_close() {
                    break;
                }
                if ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let resp = Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-accept", accept)
            .body(http_body_util::Empty::new().map_err(|n| match n {}).boxed())
            .unwrap();
        return Ok(resp);
    }
    // SSE: event n is produced only after the test released it.
    let events = futures::stream::unfold((0u32, release), |(n, release)| async move {
        if n == 5 {
            return None;
        }
        release.lock().await.recv().await?;
        let frame = Frame::data(Bytes::from(format!("id: {n}\ndata: event {n}\n\n")));
        Some((Ok::<_, hyper::Error>(frame), (n + 1, release)))
    });
    let resp = Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(BodyExt::boxed(StreamBody::new(events)))
        .unwrap();
    Ok(resp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_one_by_one_as_produced() {
    let net = TestNet::start().await;
    let (tx, rx) = mpsc::channel(1);
    let origin = streaming_origin(Arc::new(Mutex::new(rx))).await;
    let owner = net.expose("events", origin).await;
    let gw = TestGateway::start(&net, &[("events", &owner)], "").await;
    let mut c = gw.h1().await;
    let req = postern_tests::gateway::authed(
        http::Method::GET,
        "/peer/events/sse",
        &gw.api_key,
        BodyExt::boxed(http_body_util::Empty::new().map_err(|n| match n {})),
    );
    // Headers arrive before any event is produced.
    tx.send(()).await.unwrap();
    let resp = send(&mut c, req).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut text = String::new();
    for n in 0..5u32 {
        if n > 0 {
            // Event n does not exist yet; it is produced only now.
            tx.send(()).await.unwrap();
        }
        let want = format!("data: event {n}\n\n");
        while !text.contains(&want) {
            let frame = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
                .await
                .unwrap_or_else(|_| panic!("event {n} was buffered somewhere"))
                .unwrap()
                .unwrap();
            if let Ok(data) = frame.into_data() {
                text.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
        assert!(
            !text.contains(&format!("event {}", n + 1)),
            "an event arrived before it was produced"
        );
    }
}

async fn websocket_round_trip<S>(stream: S, url: &str, key: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello over postern")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("hello over postern")
    );
    ws.send(Message::binary(vec![0u8, 1, 2, 254, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 254, 255])
    );
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_round_trips_text_and_binary_over_repeated_upgrades() {
    let net = TestNet::start().await;
    let (_tx, rx) = mpsc::channel(1);
    let origin = streaming_origin(Arc::new(Mutex::new(rx))).await;
    let owner = net.expose("ws", origin).await;
    let gw = TestGateway::start(&net, &[("ws", &owner)], "").await;
    // Hundreds of upgrades: cloudflare/pingora#946 tears tunnels down when the 101 is read
    // before the request's empty body end, which happens when the proxy task is starved (a
    // loaded machine). Four clients upgrade concurrently, plain and over TLS, so that the
    // gateway's tasks interleave; every tunnel must carry both frames.
    let gw = Arc::new(gw);
    let workers = (0..4).map(|_| {
        let gw = Arc::clone(&gw);
        tokio::spawn(async move {
            for i in 0..55 {
                if i % 4 == 3 {
                    let tls = gw.tls_stream(&[b"http/1.1"]).await;
                    let url = format!("wss://localhost:{}/peer/ws/ws", gw.https.port());
                    websocket_round_trip(tls, &url, &gw.api_key).await;
                } else {
                    let tcp = tokio::net::TcpStream::connect(gw.http).await.unwrap();
                    let url = format!("ws://localhost:{}/peer/ws/ws", gw.http.port());
                    websocket_round_trip(tcp, &url, &gw.api_key).await;
                }
            }
        })
    });
    for w in futures::future::join_all(workers).await {
        w.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_needs_a_write_scope_and_is_not_bound_by_the_body_limit() {
    let net = TestNet::start().await;
    let (_tx, rx) = mpsc::channel(1);
    let origin = streaming_origin(Arc::new(Mutex::new(rx))).await;
    let owner = net.expose("ws", origin).await;
    let (reader, reader_key) =
        postern_tests::gateway::api_key_toml("r", "\"*\"", "scopes = [\"read\"]");
    let gw = TestGateway::start(
        &net,
        &[("ws", &owner)],
        &format!("[limits]\nmax_request_body_bytes = 1024\n\n{reader}"),
    )
    .await;
    let url = format!("ws://localhost:{}/peer/ws/ws", gw.http.port());

    // A read-only key may GET, but an upgrade carries data both ways: 403.
    let tcp = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {reader_key}").parse().unwrap(),
    );
    match tokio_tungstenite::client_async(req, tcp).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 403)
        }
        other => panic!("a read-only key opened a WebSocket: {other:?}"),
    }

    // A write key's WebSocket carries far more than the 1 KiB request body limit.
    let tcp = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", gw.api_key).parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..16u8 {
        let payload = vec![i; 4096];
        ws.send(Message::binary(payload.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(payload));
    }
    ws.close(None).await.unwrap();
}

//! Malformed input at every layer of the relay gets an error and a closed stream; the relay
//! stays up and keeps serving everyone else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::SinkExt;
use postern_sdk::frame::{read_frame, write_frame};
use postern_sdk::mux::{self, MuxConfig, MuxHandle, MuxInbound, Side};
use postern_sdk::protocol::{
    client_frame, relay_frame, ClientFrame, ClientHello, ErrorCode, RelayFrame, PROTOCOL_VERSION,
};
use postern_sdk::relay_client::ws_config;
use postern_sdk::websocket::WsByteStream;
use postern_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

async fn websocket(net: &TestNet) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let tcp = TcpStream::connect(net.relay_addr).await.unwrap();
    let url = format!("ws://{}/v1/tunnel", net.relay_addr);
    tokio_tungstenite::client_async_with_config(url, tcp, Some(ws_config(1 << 20)))
        .await
        .unwrap()
        .0
}

async fn session(net: &TestNet) -> (MuxHandle, MuxInbound) {
    mux::spawn(
        WsByteStream::new(websocket(net).await),
        Side::Client,
        MuxConfig::default(),
    )
}

/// The relay still works for a well-behaved client: a full lease + dial round trip.
async fn assert_relay_still_serves(net: &TestNet, lease: &str) {
    let origin = spawn_origin().await;
    let owner = net.expose(lease, origin).await;
    let stream = net.dialer().dial(&target(lease, &owner)).await.unwrap();
    let mut client = http1_client(stream).await;
    let resp = send(&mut client, get("/hello")).await;
    assert_eq!(resp.status(), 200);
}

/// Reads until the stream ends; returns what arrived (bounded wait).
async fn drain(stream: &mut postern_sdk::mux::MuxStream) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got))
        .await
        .expect("the relay must close the stream");
    got
}

fn error_code(bytes: &[u8]) -> Option<ErrorCode> {
    let (frame, _) = postern_sdk::frame::decode_frame::<RelayFrame>(bytes, 1 << 16).ok()??;
    match frame.msg {
        Some(relay_frame::Msg::Error(e)) => Some(e.code()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_http_and_websocket_input_is_dropped() {
    let net = TestNet::start().await;
    // Not HTTP at all.
    let mut tcp = TcpStream::connect(net.relay_addr).await.unwrap();
    tcp.write_all(b"\x00\x01\x02 garbage \xff\xfe\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(
        buf.is_empty() || buf.starts_with(b"HTTP/1.1 4"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );

    // A text message on the binary tunnel.
    let mut ws = websocket(&net).await;
    ws.send(Message::text("hello?")).await.unwrap();
    // A binary message that is not yamux.
    let mut ws2 = websocket(&net).await;
    ws2.send(Message::binary(vec![0xffu8; 64])).await.unwrap();
    for ws in [&mut ws, &mut ws2] {
        // The relay may send its own yamux frames first (an RTT ping); then it must hang up.
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match futures::StreamExt::next(ws).await {
                    Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => return,
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the relay must close a session after garbage"
        );
    }
    assert_relay_still_serves(&net, "after-garbage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_truncated_and_garbage_frames_close_the_stream() {
    let net = TestNet::start().await;

    // Oversized length prefix on the control stream.
    let (h, _i) = session(&net).await;
    let mut s = h.open().await.unwrap();
    s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(error_code(&drain(&mut s).await), Some(ErrorCode::Malformed));

    // A protobuf that is garbage.
    let (h, _i) = session(&net).await;
    let mut s = h.open().await.unwrap();
    s.write_all(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    s.flush().await.unwrap();
    assert_eq!(error_code(&drain(&mut s).await), Some(ErrorCode::Malformed));

    // A truncated frame: the length promises more than ever arrives.
    let (h, _i) = session(&net).await;
    let mut s = h.open().await.unwrap();
    s.write_all(&[0, 0, 0, 100, 1, 2, 3]).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(error_code(&drain(&mut s).await), Some(ErrorCode::Malformed));

    // A valid frame of the wrong kind first.
    let (h, _i) = session(&net).await;
    let mut s = h.open().await.unwrap();
    let connect = ClientFrame::new(client_frame::Msg::Connect(Default::default()));
    write_frame(&mut s, &connect, 1 << 16).await.unwrap();
    assert_eq!(error_code(&drain(&mut s).await), Some(ErrorCode::Malformed));

    // An unsupported protocol version.
    let (h, _i) = session(&net).await;
    let mut s = h.open().await.unwrap();
    let hello = ClientFrame::new(client_frame::Msg::Hello(ClientHello {
        protocol_version: PROTOCOL_VERSION + 1,
        client: "future".into(),
    }));
    write_frame(&mut s, &hello, 1 << 16).await.unwrap();
    assert_eq!(
        error_code(&drain(&mut s).await),
        Some(ErrorCode::UnsupportedVersion)
    );

    // Hello, then a bad signature.
    let (h, _i) = session(&net).await;
    let mut s = h.open().await.unwrap();
    let hello = ClientFrame::new(client_frame::Msg::Hello(ClientHello {
        protocol_version: PROTOCOL_VERSION,
        client: "forger".into(),
    }));
    write_frame(&mut s, &hello, 1 << 16).await.unwrap();
    let _: RelayFrame = read_frame(&mut s, 1 << 16).await.unwrap();
    let auth = ClientFrame::new(client_frame::Msg::Authenticate(
        postern_sdk::protocol::Authenticate {
            identity_key: vec![1; 32],
            signature: vec![2; 64],
            grants: vec![],
        },
    ));
    write_frame(&mut s, &auth, 1 << 16).await.unwrap();
    assert_eq!(
        error_code(&drain(&mut s).await),
        Some(ErrorCode::Unauthenticated)
    );

    assert_relay_still_serves(&net, "after-bad-frames").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_timed_out() {
    let net = TestNet::start_with(|c| c.timeouts.hello = Duration::from_millis(300)).await;
    // Connects, upgrades, and never opens a control stream.
    let mut ws = websocket(&net).await;
    let end =
        tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut ws)).await;
    assert!(
        end.is_ok(),
        "the relay must drop a session that never says hello"
    );
    // Slow headers: a request line and nothing more.
    let mut tcp = TcpStream::connect(net.relay_addr).await.unwrap();
    tcp.write_all(b"GET /v1/tunnel HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "slow headers must be cut off");
    assert_relay_still_serves(&net, "after-silence").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoint_reports_leases() {
    let net = TestNet::start().await;
    let (_owner, _l) = net.listen("svc").await;
    let tcp = TcpStream::connect(net.relay_addr).await.unwrap();
    let mut client = http1_client(tcp).await;
    let resp = send(&mut client, get("/healthz")).await;
    assert_eq!(resp.status(), 200);
    let body = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    assert!(body.contains("\"leases\":1"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_open_streams_and_refuses_new_work() {
    let net = TestNet::start().await;
    let (owner, mut listener) = net.listen("svc").await;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 16];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let dialer = net.dialer();
    let mut s = dialer.dial(&target("svc", &owner)).await.unwrap();
    s.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf).await.unwrap();

    net.relay.shutdown();
    // In-flight streams keep working while the relay drains.
    s.write_all(b"during").await.unwrap();
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"during");
    // New connections are refused.
    let refused =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(net.relay_addr)).await;
    // The listener may still be closing; a connection that gets through must not be served.
    if let Ok(Ok(mut tcp)) = refused {
        let _ = tcp
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
        assert!(!String::from_utf8_lossy(&out).contains("\"status\":\"ok\""));
    }
}

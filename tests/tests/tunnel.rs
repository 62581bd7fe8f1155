//! The tunnel end to end: an HTTP service behind `postern expose`, reached by a dialer through a
//! real relay over E2EE, all on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use postern_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_through_relay_reaches_exposed_service_with_keep_alive() {
    let net = TestNet::start().await;
    let origin = spawn_origin().await;
    let owner = net.expose("svc", origin).await;
    let dialer = net.dialer();

    let stream = dialer.dial(&target("svc", &owner)).await.unwrap();
    let mut client = http1_client(stream).await;
    for _ in 0..5 {
        let resp = client.send_request(get("/hello")).await.unwrap();
        assert_eq!(resp.status(), 200);
        // Host is rewritten to the local target by default.
        assert_eq!(resp.headers()["x-seen-host"], origin.to_string().as_str());
        assert_eq!(body_bytes(resp).await, "hello from origin");
    }
    // Keep-alive: all five requests used one stream, and the session needed one handshake.
    assert_eq!(dialer.handshakes(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_streams_reuse_the_lease_session() {
    let net = TestNet::start().await;
    let origin = spawn_origin().await;
    let owner = net.expose("svc", origin).await;
    let dialer = net.dialer();
    for _ in 0..20 {
        let stream = dialer.dial(&target("svc", &owner)).await.unwrap();
        let mut client = http1_client(stream).await;
        let resp = client.send_request(get("/hello")).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(
        dialer.handshakes(),
        1,
        "one Noise handshake per lease, not per stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_streams_carry_bytes_both_ways() {
    let net = TestNet::start().await;
    let (owner, mut listener) = net.listen("raw").await;
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = listener.accept().await {
            assert_eq!(peer.lease, "raw");
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1024];
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    s.write_all(&buf[..n]).await.unwrap();
                }
                let _ = s.shutdown().await;
            });
        }
    });
    let dialer = net.dialer();
    let mut s = dialer.dial(&target("raw", &owner)).await.unwrap();
    s.write_all(b"ping through the tunnel").await.unwrap();
    let mut buf = [0u8; 23];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping through the tunnel");
}

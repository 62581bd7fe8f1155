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
        let resp = send(&mut client, get("/hello")).await;
        assert_eq!(resp.status(), 200);
        // Host is rewritten to the local target by default.
        assert_eq!(resp.headers()["x-seen-host"], origin.to_string().as_str());
        assert_eq!(body_bytes(resp).await, "hello from origin");
    }
    // Keep-alive: all five requests used one stream, and the session needed one handshake.
    assert_eq!(dialer.handshakes(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_drops_hop_by_hop_fields_both_ways() {
    let net = TestNet::start().await;
    let origin = spawn_origin().await;
    let owner = net.expose("svc", origin).await;
    let dialer = net.dialer();
    let stream = dialer.dial(&target("svc", &owner)).await.unwrap();
    let mut client = http1_client(stream).await;

    // The agent is a proxy between the tunnel and the local service (RFC 9110 §7.6.1).
    let mut req = get("/headers");
    let h = req.headers_mut();
    h.insert(
        http::header::CONNECTION,
        "keep-alive, X-Tunnel-Hop".parse().unwrap(),
    );
    h.insert("x-tunnel-hop", "1".parse().unwrap());
    h.insert("keep-alive", "timeout=5".parse().unwrap());
    h.insert("x-tunnel-kept", "1".parse().unwrap());
    let resp = send(&mut client, req).await;
    assert_eq!(resp.status(), 200);
    let seen = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    let seen: Vec<&str> = seen.lines().collect();
    for gone in ["connection", "x-tunnel-hop", "keep-alive"] {
        assert!(!seen.contains(&gone), "{gone} reached the origin: {seen:?}");
    }
    assert!(seen.contains(&"x-tunnel-kept"), "{seen:?}");

    let resp = send(&mut client, get("/hop")).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-origin-kept"));
    assert!(!resp.headers().contains_key("x-origin-hop"));
    assert!(!resp.headers().contains_key("keep-alive"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expose_speaks_http2_to_a_dialer_that_does() {
    let net = TestNet::start().await;
    let origin = spawn_origin().await;
    let owner = net.expose("svc", origin).await;
    let stream = net.dialer().dial(&target("svc", &owner)).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // Several requests at once on the one stream.
    let requests = (0..8).map(|_| {
        let req = http::Request::builder()
            .uri("http://svc/hello")
            .body(streaming_body(0))
            .unwrap();
        h2.send_request(req)
    });
    for resp in futures::future::join_all(requests).await {
        let resp = resp.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(body_bytes(resp).await, "hello from origin");
    }
    let req = http::Request::builder()
        .method(http::Method::POST)
        .uri("http://svc/echo")
        .body(streaming_body(300_000))
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(check_pattern_body(resp).await, 300_000);
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
        let resp = send(&mut client, get("/hello")).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_of_64_mib_streams_both_ways_with_bounded_memory() {
    const LEN: u64 = 64 * 1024 * 1024;
    let net = TestNet::start().await;
    let origin = spawn_origin().await;
    let owner = net.expose("bulk", origin).await;
    let dialer = net.dialer();

    // Warm up so one-time allocations (pools, sessions) are not counted as growth.
    let mut client = http1_client(dialer.dial(&target("bulk", &owner)).await.unwrap()).await;
    let resp = send(&mut client, get("/bytes/1048576")).await;
    assert_eq!(check_pattern_body(resp).await, 1 << 20);
    let before = rss_bytes();

    // Upload 64 MiB and get it echoed back, streamed; neither side holds the whole body.
    let req = http::Request::post("/echo")
        .header(http::header::HOST, "caller.example")
        .body(streaming_body(LEN))
        .unwrap();
    let resp = send(&mut client, req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(check_pattern_body(resp).await, LEN);

    // And download 64 MiB on the same kept-alive connection.
    client.ready().await.unwrap();
    let resp = client
        .send_request(get(&format!("/bytes/{LEN}")))
        .await
        .unwrap();
    assert_eq!(check_pattern_body(resp).await, LEN);

    let grown = rss_bytes().saturating_sub(before);
    eprintln!("RSS growth moving 128 MiB: {} KiB", grown / 1024);
    // Relay, agent, origin and client all live in this process: 64 MiB passed through each
    // of them twice, so buffering a whole body anywhere would show up several times over.
    assert!(
        grown < 32 * 1024 * 1024,
        "RSS grew by {} MiB moving 128 MiB",
        grown / (1024 * 1024)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_streams_on_one_session() {
    const N: usize = 1000;
    let net = TestNet::start().await;
    let (owner, mut listener) = net.listen("many").await;
    // A raw echo service: every stream stays open until the dialer is done with it.
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    let dialer = net.dialer();
    let target = std::sync::Arc::new(target("many", &owner));
    // Every task dials, round-trips a message, and then holds its stream open until all
    // 1,000 streams are alive at the same time.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::with_capacity(N);
    for i in 0..N {
        let (dialer, target, barrier) = (dialer.clone(), target.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = dialer.dial(&target).await.unwrap();
            let msg = format!("stream {i:04}");
            s.write_all(msg.as_bytes()).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg.as_bytes());
            barrier.wait().await;
            s
        }));
    }
    let mut alive = Vec::with_capacity(N);
    for t in tasks {
        alive.push(
            tokio::time::timeout(std::time::Duration::from_secs(60), t)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(alive.len(), N);
    assert_eq!(dialer.handshakes(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_over_wss_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert_path = dir.path().join("relay.crt");
    let key_path = dir.path().join("relay.key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let net = TestNet::start_with(|c| {
        c.listen.tls = Some(postern_config::TlsFiles {
            cert: cert_path.clone(),
            key: key_path.clone(),
        })
    })
    .await;
    let tls = postern_sdk::tls::client_config(&postern_sdk::tls::load_certs(&cert_path).unwrap())
        .unwrap();
    let url = postern_sdk::RelayUrl::parse(&format!("wss://127.0.0.1:{}", net.relay_addr.port()))
        .unwrap();

    let owner = postern_sdk::Identity::generate();
    let mut cfg = net.listener_config(&owner, "secure");
    cfg.relays = vec![url.clone()];
    cfg.client.tls = Some(tls.clone());
    let listener = postern_sdk::Listener::bind(cfg).await.unwrap();
    let origin = spawn_origin().await;
    tokio::spawn(postern_sdk::expose::serve(
        listener,
        postern_sdk::expose::Target::parse(&format!("http://{origin}"), false).unwrap(),
        Default::default(),
    ));

    let me = postern_sdk::Identity::generate();
    let grants = vec![net.grant(
        &me,
        "*",
        postern_sdk::protocol::permission::DIAL,
        std::time::Duration::from_secs(60),
    )];
    let mut dcfg = postern_sdk::DialerConfig::new(url.clone(), me.clone(), grants.clone());
    dcfg.client.tls = Some(tls);
    let dialer = postern_sdk::Dialer::new(dcfg);
    let mut client = http1_client(dialer.dial(&target("secure", &owner)).await.unwrap()).await;
    assert_eq!(
        body_bytes(send(&mut client, get("/hello")).await).await,
        "hello from origin"
    );

    // Without the private CA the relay's certificate is refused.
    let untrusting = postern_sdk::Dialer::new(postern_sdk::DialerConfig::new(url, me, grants));
    assert!(untrusting.dial(&target("secure", &owner)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_app_serves_a_lease_directly() {
    use axum::routing::get as axum_get;
    let net = TestNet::start().await;
    let (owner, listener) = net.listen("axum-app").await;
    let app = axum::Router::new().route(
        "/who",
        axum_get(
            |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<
                postern_sdk::PeerInfo,
            >| async move { format!("lease {}", peer.lease) },
        ),
    );
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<postern_sdk::PeerInfo>(),
        )
        .await
    });
    let dialer = net.dialer();
    let mut client = http1_client(dialer.dial(&target("axum-app", &owner)).await.unwrap()).await;
    let resp = send(&mut client, get("/who")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body_bytes(resp).await, "lease axum-app");
}

//! The gateway's bounds end to end: slow request heads and TLS handshakes, the connection
//! cap, oversized streamed bodies, an origin that is down, idle and shutting-down connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use postern_tests::gateway::{authed, GatewayFiles, TestGateway};
use postern_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TIGHT_HEADERS: &str = "[limits]\nrequest_header_timeout = \"1s\"\nkeepalive_timeout = \"1s\"\nmax_request_body_bytes = 1048576\n";

/// Writes `line` every 200 ms until the peer closes the connection; returns how many lines
/// went out. Panics if the peer is still reading after `max_lines`.
async fn trickle_until_closed(tcp: &mut TcpStream, line: &[u8], max_lines: usize) -> usize {
    for sent in 0..max_lines {
        if tcp.write_all(line).await.is_err() {
            return sent;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return sent,
            // A 408/400 on the way out is fine too; keep reading until the close.
            Ok(Ok(_)) => continue,
            Err(_) => {}
        }
    }
    panic!("the gateway was still reading a request head after {max_lines} slow lines");
}

/// Reads until the peer closes; panics after `within`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(tcp: &mut S, within: Duration) {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the gateway kept an idle or half-sent connection open");
}

/// Reads until what has arrived satisfies `done`, allowing 10 s per read; panics if the peer
/// closes first. Returns everything read.
async fn read_until<S: tokio::io::AsyncRead + Unpin>(
    io: &mut S,
    done: impl Fn(&str) -> bool,
) -> String {
    let mut got = Vec::new();
    while !done(&String::from_utf8_lossy(&got)) {
        let n = tokio::time::timeout(Duration::from_secs(10), io.read_buf(&mut got))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "closed before the response: {got:?}");
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_cut_and_slow_bodies_are_not() {
    let (_net, gw) = TestGateway::for_web_origin(TIGHT_HEADERS).await;

    // Slowloris: a head that never ends, one header line every 200 ms. With a 1 s deadline
    // the gateway must close within a few lines, not after Pingora's 60 s per-read timeout.
    let mut tcp = TcpStream::connect(gw.http).await.unwrap();
    tcp.write_all(b"GET /peer/web/hello HTTP/1.1\r\nHost: gw\r\n")
        .await
        .unwrap();
    let lines = trickle_until_closed(&mut tcp, b"X-Slow: 1\r\n", 100).await;
    assert!(lines < 100);

    // A connection that never sends a byte is closed as well.
    let mut silent = TcpStream::connect(gw.http).await.unwrap();
    closed_within(&mut silent, Duration::from_secs(20)).await;

    // The same over TLS.
    let mut tls = gw.tls_stream(&[b"http/1.1"]).await;
    tls.write_all(b"GET /peer/web/hello HTTP/1.1\r\nHost: gw\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if tls.write_all(b"X-Slow: 1\r\n").await.is_err() {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(200), tls.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                _ => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a slow TLS head was not cut");

    // After a complete request, the next head on the kept-alive connection is bounded too.
    let mut tcp = TcpStream::connect(gw.http).await.unwrap();
    let req = format!(
        "GET /peer/web/hello HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\n\r\n",
        gw.api_key
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let got = read_until(&mut tcp, |r| r.contains("hello from origin")).await;
    assert!(got.starts_with("HTTP/1.1 200"));
    tcp.write_all(b"GET /peer/web/hello HTTP/1.1\r\n")
        .await
        .unwrap();
    let lines = trickle_until_closed(&mut tcp, b"X-Slow: 1\r\n", 100).await;
    assert!(lines < 100);

    // A body sent slower than the header deadline is not cut: the head arrived in time.
    let mut tcp = TcpStream::connect(gw.http).await.unwrap();
    let head = format!(
        "POST /peer/web/count HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\nContent-Length: 8\r\nConnection: close\r\n\r\n",
        gw.api_key
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        tcp.write_all(b"x").await.unwrap();
    }
    assert!(started.elapsed() > Duration::from_secs(2));
    let mut resp = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut resp))
        .await
        .expect("response in time")
        .unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("\r\n\r\n8"), "{resp}");

    // And the gateway still serves.
    let mut h1 = gw.plain().await;
    let resp = send(
        &mut h1,
        authed(Method::GET, "/peer/web/hello", &gw.api_key, empty()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_over_the_limit_gets_413() {
    let net = TestNet::start().await;
    let origin = spawn_origin().await;
    let owner = net.expose("web", origin).await;
    let gw = TestGateway::start(&net, &[("web", &owner)], TIGHT_HEADERS).await;

    // Under the limit, chunked (no Content-Length): counted in full by the origin.
    let mut h1 = gw.h1().await;
    let resp = send(
        &mut h1,
        authed(
            Method::POST,
            "/peer/web/count",
            &gw.api_key,
            streaming_body(1_000_000),
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_bytes(resp).await, "1000000");

    // Over the limit, chunked: the size is only known while streaming; the origin waits for
    // the whole body, so the refusal is a clean 413 problem.
    let mut h1 = gw.h1().await;
    let resp = send(
        &mut h1,
        authed(
            Method::POST,
            "/peer/web/count",
            &gw.api_key,
            streaming_body(3_000_000),
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        resp.headers()[http::header::CONTENT_TYPE],
        "application/problem+json"
    );
    let body = body_bytes(resp).await;
    assert!(
        String::from_utf8_lossy(&body).contains("\"status\":413"),
        "{body:?}"
    );

    // Over the limit with a Content-Length: refused before any byte is forwarded.
    let mut h1 = gw.h1().await;
    let req = http::Request::builder()
        .method(Method::POST)
        .uri("/peer/web/count")
        .header(http::header::HOST, "localhost")
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", gw.api_key),
        )
        .header(http::header::CONTENT_LENGTH, "3000000")
        .body(streaming_body(3_000_000))
        .unwrap();
    let resp = send(&mut h1, req).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_is_down_gives_502() {
    let net = TestNet::start().await;
    // A port nothing listens on: bound, then closed.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let owner = net.expose("down", dead).await;
    let gw = TestGateway::start(&net, &[("down", &owner)], "").await;
    let mut h1 = gw.h1().await;
    for _ in 0..3 {
        let resp = send(
            &mut h1,
            authed(Method::GET, "/peer/down/hello", &gw.api_key, empty()),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        let body = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
        assert!(body.contains("\"status\":502"), "{body}");
        // The agent's problem names the request as the gateway's refusals do.
        assert!(body.contains(&format!("\"request_id\":\"{id}\"")), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_are_bounded_before_the_preface_and_when_idle() {
    let (_net, gw) = TestGateway::for_web_origin(TIGHT_HEADERS).await;

    // ALPN h2, then silence: Pingora's h2 handshake waits for the preface with no timeout of
    // its own; the header deadline closes it.
    let mut silent = gw.tls_stream(&[b"h2"]).await;
    assert_eq!(silent.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    closed_within(&mut silent, Duration::from_secs(20)).await;

    // Half a preface is cut by the same deadline.
    let mut half = gw.tls_stream(&[b"h2"]).await;
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    closed_within(&mut half, Duration::from_secs(20)).await;

    // A full preface and then nothing: the connection is up but has no stream; the h2 idle
    // timeout (the keep-alive time) closes it.
    let mut preface_only = gw.tls_stream(&[b"h2"]).await;
    preface_only
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    closed_within(&mut preface_only, Duration::from_secs(20)).await;

    // A real HTTP/2 client: one request works, and the idle connection is then closed.
    let tls = gw.tls_stream(&[b"h2"]).await;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = authed(
        Method::GET,
        "https://localhost/peer/web/hello",
        &gw.api_key,
        empty(),
    );
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"hello from origin");
    tokio::time::timeout(Duration::from_secs(20), conn)
        .await
        .expect("the gateway kept an idle HTTP/2 connection open")
        .unwrap()
        .ok();

    // The gateway still serves.
    let mut h2 = gw.h2().await;
    let resp = h2
        .send_request(authed(
            Method::GET,
            "https://localhost/peer/web/hello",
            &gw.api_key,
            empty(),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_close_on_shutdown_and_busy_ones_finish() {
    // Keep-alive far longer than the test: only the shutdown can close the idle connection.
    let (_net, gw) = TestGateway::for_web_origin("[limits]\nkeepalive_timeout = \"300s\"\n").await;

    // One request, then the connection sits idle between requests.
    let mut idle = gw.tls_stream(&[b"http/1.1"]).await;
    let req = format!(
        "GET /peer/web/hello HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\n\r\n",
        gw.api_key
    );
    idle.write_all(req.as_bytes()).await.unwrap();
    read_until(&mut idle, |r| r.contains("hello from origin")).await;

    // A slow upload in flight when the shutdown starts is still served to the end.
    let mut busy = TcpStream::connect(gw.http).await.unwrap();
    let head = format!(
        "POST /peer/web/count HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\nContent-Length: 4\r\n\r\nab",
        gw.api_key
    );
    busy.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    gw.begin_shutdown();
    closed_within(&mut idle, Duration::from_secs(10)).await;
    // The listeners have stopped, but the gateway waits for the upload before it exits: it
    // has not stopped half a second later (it would have, in milliseconds, without the wait).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!gw.has_stopped());

    busy.write_all(b"cd").await.unwrap();
    let resp = read_until(&mut busy, |r| r.ends_with("\r\n\r\n4")).await;
    assert!(resp.starts_with("HTTP/1.1 200"));
    drop(busy);
    for _ in 0..100 {
        if gw.has_stopped() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        gw.has_stopped(),
        "the gateway still waited after its last connection ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_are_bounded_by_the_header_deadline() {
    let (_net, gw) = TestGateway::for_web_origin(TIGHT_HEADERS).await;

    // Connected to the HTTPS port and silent: Pingora's TLS listener waits for a ClientHello
    // with no timeout; the gateway must not.
    let mut silent = TcpStream::connect(gw.https).await.unwrap();
    // Half a ClientHello: a handshake record announcing 512 bytes, then only five of them.
    let mut half = TcpStream::connect(gw.https).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03])
        .await
        .unwrap();
    closed_within(&mut silent, Duration::from_secs(20)).await;
    closed_within(&mut half, Duration::from_secs(20)).await;

    // A client that completes its handshake in time is served.
    let resp = gw
        .h1()
        .await
        .send_request(authed(Method::GET, "/peer/web/hello", &gw.api_key, empty()))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// What a new connection to `addr` gets for one request: nothing when the gateway closes it
/// unanswered.
async fn answer_on_a_new_connection(addr: std::net::SocketAddr, key: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /peer/web/hello HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    );
    // A connection closed at accept may refuse the write or the read: both mean no answer.
    let _ = tcp.write_all(req.as_bytes()).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "neither answered nor closed");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_at_accept() {
    // A header deadline far longer than the test: only the cap can close a connection early.
    let (_net, gw) = TestGateway::for_web_origin(
        "[limits]\nmax_connections = 2\nrequest_header_timeout = \"300s\"\n",
    )
    .await;

    // The start-up probes of both listeners are gone once their slots are back.
    for _ in 0..100 {
        if gw.runtime.connections.open() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gw.runtime.connections.open(), 0);

    // Two connections, one on each listener, hold both slots. Each is served once first: a
    // bare connect returns before the gateway has taken the connection from the accept queue.
    let mut tls = gw.h1().await;
    let mut plain = gw.plain().await;
    for client in [&mut tls, &mut plain] {
        let resp = send(
            client,
            authed(Method::GET, "/peer/web/hello", &gw.api_key, empty()),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK);
        body_bytes(resp).await;
    }

    // A third, on either listener, is closed without an answer (within 10 s, not 300).
    assert_eq!(gw.runtime.connections.open(), 2);
    assert_eq!(answer_on_a_new_connection(gw.http, &gw.api_key).await, "");
    let mut refused = TcpStream::connect(gw.https).await.unwrap();
    closed_within(&mut refused, Duration::from_secs(10)).await;

    // The connections inside the cap are still served.
    let resp = send(
        &mut tls,
        authed(Method::GET, "/peer/web/hello", &gw.api_key, empty()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);

    // Once one closes, its slot is free again.
    drop(plain);
    let mut attempts = 0;
    while !answer_on_a_new_connection(gw.http, &gw.api_key)
        .await
        .contains("hello from origin")
    {
        attempts += 1;
        assert!(
            attempts < 50,
            "the closed connection's slot was never given back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_binary_drains_on_sigterm_and_stops_at_once_on_a_second() {
    let net = TestNet::start().await;
    let origin = spawn_origin().await;
    let owner = net.expose("web", origin).await;
    let files = GatewayFiles::new(&net, &[("web", &owner)], "");

    // SIGTERM (what systemd and Kubernetes send) is a graceful shutdown: an upload in flight is
    // served to the end, and then the process exits cleanly.
    let (mut gw, mut busy) = sigterm_during_an_upload(&files).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        gw.0.try_wait().unwrap().is_none(),
        "exited with an upload in flight"
    );
    busy.write_all(b"cd").await.unwrap();
    let resp = read_until(&mut busy, |r| r.ends_with("\r\n\r\n4")).await;
    assert!(resp.starts_with("HTTP/1.1 200"));
    drop(busy);
    assert!(gw.exited_within(Duration::from_secs(10)).await.success());

    // A second stop signal does not wait for the upload or the grace period (30 s).
    let (mut gw, _busy) = sigterm_during_an_upload(&files).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.signal("-INT");
    gw.exited_within(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_address_in_use_is_a_clear_error_not_a_panic() {
    let net = TestNet::start().await;
    let files = GatewayFiles::new(&net, &[], "");
    // Someone else holds the HTTPS port (a plain listener: no SO_REUSEPORT to share it).
    let _taken = std::net::TcpListener::bind(files.https).unwrap();
    let child = std::process::Command::new(built_binary("postern-gateway"))
        .arg("--config")
        .arg(files.write_config())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut gw = KillOnDrop(child);
    // At once: Pingora's own bind would retry for seconds and then panic.
    let status = gw.exited_within(Duration::from_secs(5)).await;
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(gw.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        err.contains(&format!("cannot listen on {}", files.https)) && err.contains("in use"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// Runs the `postern-gateway` binary on `files`, starts an upload that stays in flight (half
/// its body sent), and sends the process SIGTERM.
async fn sigterm_during_an_upload(files: &GatewayFiles) -> (KillOnDrop, TcpStream) {
    let child = std::process::Command::new(built_binary("postern-gateway"))
        .arg("--config")
        .arg(files.write_config())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let gw = KillOnDrop(child);
    files.wait_for_listeners().await;
    let mut busy = TcpStream::connect(files.http).await.unwrap();
    let head = format!(
        "POST /peer/web/count HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\nContent-Length: 4\r\n\r\nab",
        files.api_key
    );
    busy.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.signal("-TERM");
    (gw, busy)
}

/// A child process, killed if the test ends before it exits.
struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .arg(sig)
            .arg(self.0.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; panics after `within`.
    async fn exited_within(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "still running after {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_keys_from_one_client_turn_into_429_with_retry_after() {
    let (_net, gw) =
        TestGateway::for_web_origin("[limits]\nfailed_auth_per_ip_per_minute = 3\n").await;
    let mut wrong = gw.api_key.clone();
    let last = if wrong.ends_with('A') { "B" } else { "A" };
    wrong.replace_range(wrong.len() - 1.., last);
    let mut c = gw.plain().await;
    for _ in 0..3 {
        let resp = send(
            &mut c,
            authed(Method::GET, "/peer/web/hello", &wrong, empty()),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let _ = body_bytes(resp).await;
    }
    // Over the quota: not even the right key is tried from this address for a while.
    for key in [&wrong, &gw.api_key] {
        let resp = send(&mut c, authed(Method::GET, "/peer/web/hello", key, empty())).await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=20).contains(&retry), "retry-after {retry}");
        let _ = body_bytes(resp).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_spellings_of_one_lease_name_are_a_config_error() {
    let net = TestNet::start().await;
    let owner = postern_sdk::Identity::generate();
    // "café" precomposed (NFC) and decomposed (NFD): one lease after normalization.
    let files = GatewayFiles::new(&net, &[("caf\u{e9}", &owner), ("cafe\u{301}", &owner)], "");
    let config = postern_config::parse_gateway(&files.toml, "test").unwrap();
    let err = postern_gateway::runtime::Runtime::start(config).unwrap_err();
    let err = err.to_string();
    assert!(
        err.contains("lease[1].name") && err.contains("NFC"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_over_max_header_bytes_are_refused_on_http1_and_http2() {
    let (_net, gw) = TestGateway::for_web_origin(
        "[limits]\nmax_header_bytes = 4096\nrequest_header_timeout = \"60s\"\n",
    )
    .await;
    let big = "b".repeat(6000);

    // Under the limit, head after head on one connection: the count starts again each time,
    // and a body sent along with its head is not counted.
    let mut c = gw.plain().await;
    for _ in 0..5 {
        let mut req = authed(
            Method::POST,
            "/peer/web/count",
            &gw.api_key,
            streaming_body(100_000),
        );
        req.headers_mut()
            .insert("x-filler", "f".repeat(3000).parse().unwrap());
        let resp = send(&mut c, req).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(body_bytes(resp).await, "100000");
    }

    // Over it, HTTP/1.1, whole in one write: 431.
    let mut tcp = TcpStream::connect(gw.http).await.unwrap();
    let head = format!(
        "GET /peer/web/hello HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nX-Big: {big}\r\n\r\n",
        gw.api_key
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 431"),
        "{}",
        &text[..text.len().min(200)]
    );

    // A head that never ends is cut once it passes the limit, not at Pingora's 1 MiB or at
    // the (here: one minute) header deadline.
    let mut tcp = TcpStream::connect(gw.http).await.unwrap();
    tcp.write_all(b"GET /peer/web/hello HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let line = format!("X-Fill: {}\r\n", "f".repeat(990));
    let sent = trickle_until_closed(&mut tcp, line.as_bytes(), 60).await;
    assert!(sent <= 6, "the gateway read {sent} KB of one request head");

    // HTTP/2: the decoded field list is bounded too.
    let mut h2 = gw.h2().await;
    let req = http::Request::get(format!(
        "https://localhost:{}/peer/web/hello",
        gw.https.port()
    ))
    .header("authorization", format!("Bearer {}", gw.api_key))
    .header("x-big", big.as_str())
    .body(empty())
    .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // The gateway still serves.
    let mut c = gw.plain().await;
    let resp = send(
        &mut c,
        authed(Method::GET, "/peer/web/hello", &gw.api_key, empty()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
}

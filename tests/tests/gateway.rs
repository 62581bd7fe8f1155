//! The gateway end to end: caller → gateway (TLS, Pingora) → relay → expose → origin.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::{Method, StatusCode};
use postern_tests::gateway::{authed, TestGateway};
use postern_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_post_through_the_gateway_over_http1_and_http2() {
    let (_net, gw) = TestGateway::for_web_origin("").await;

    let mut h1 = gw.h1().await;
    let resp = send(
        &mut h1,
        authed(Method::GET, "/peer/web/hello", &gw.api_key, empty()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(body_bytes(resp).await, "hello from origin");
    let resp = send(
        &mut h1,
        authed(
            Method::POST,
            "/peer/web/echo",
            &gw.api_key,
            streaming_body(100_000),
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(check_pattern_body(resp).await, 100_000);

    let mut h2 = gw.h2().await;
    let req = http::Request::builder()
        .method(Method::GET)
        .uri(format!(
            "https://localhost:{}/peer/web/hello",
            gw.https.port()
        ))
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", gw.api_key),
        )
        .body(empty())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_bytes(resp).await, "hello from origin");

    // Host routing: {lease}.{base_domain}, X-API-Key header.
    let mut h1 = gw.h1().await;
    let req = http::Request::get("/hello")
        .header(http::header::HOST, "web.gw.test")
        .header("x-api-key", gw.api_key.as_str())
        .body(empty())
        .unwrap();
    let resp = send(&mut h1, req).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_problem_documents() {
    let net = TestNet::start().await;
    let origin = spawn_origin().await;
    let owner = net.expose("web", origin).await;
    let _other = net.expose("other", origin).await;
    let (restricted, restricted_key) = postern_tests::gateway::api_key_toml("x", "\"other\"", "");
    let (expired, expired_key) =
        postern_tests::gateway::api_key_toml("x", "\"*\"", "expires_at = 1000");
    let (_down_owner, down_listener) = net.listen("down").await;
    drop(down_listener);
    let down_owner = postern_sdk::Identity::generate();
    let gw = TestGateway::start(
        &net,
        &[("web", &owner), ("down", &down_owner)],
        &format!("{restricted}\n{expired}"),
    )
    .await;
    let mut c = gw.plain().await;

    let no_key = http::Request::get("/peer/web/hello")
        .header("host", "localhost")
        .body(empty())
        .unwrap();
    let resp = send(&mut c, no_key).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    assert!(
        body.contains("\"status\":401") && body.contains("request_id"),
        "{body}"
    );

    let mut c = gw.plain().await;
    let resp = send(
        &mut c,
        authed(
            Method::GET,
            "/peer/web/hello",
            "pst_nosuchkey_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            empty(),
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let mut c = gw.plain().await;
    let resp = send(
        &mut c,
        authed(Method::GET, "/peer/web/hello", &restricted_key, empty()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    let mut c = gw.plain().await;
    let resp = send(
        &mut c,
        authed(Method::GET, "/peer/web/hello", &expired_key, empty()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Unknown lease: 404 for an authenticated caller, 401 for anyone else.
    let mut c = gw.plain().await;
    let resp = send(
        &mut c,
        authed(Method::GET, "/peer/nope/hello", &gw.api_key, empty()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let mut c = gw.plain().await;
    let anon = http::Request::get("/peer/nope/hello")
        .header("host", "localhost")
        .body(empty())
        .unwrap();
    assert_eq!(send(&mut c, anon).await.status(), StatusCode::UNAUTHORIZED);

    // Lease configured but its owner is offline: 502.
    let mut c = gw.plain().await;
    let resp = send(
        &mut c,
        authed(Method::GET, "/peer/down/hello", &gw.api_key, empty()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_keys_never_reach_argon2() {
    let (_net, gw) =
        TestGateway::for_web_origin("[limits]\nfailed_auth_per_ip_per_minute = 100000\n").await;
    let before = gw.runtime.verifier.argon2_verifications();
    let mut c = gw.plain().await;
    for i in 0..10_000u32 {
        let junk = if i % 2 == 0 {
            format!("pst_{:016x}_{}", rand::random::<u64>(), "B".repeat(40))
        } else {
            format!("garbage-{i}")
        };
        let resp = send(
            &mut c,
            authed(Method::GET, "/peer/web/hello", &junk, empty()),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let _ = body_bytes(resp).await;
        if i % 100 == 99 {
            c = gw.plain().await;
        }
    }
    assert_eq!(
        gw.runtime.verifier.argon2_verifications(),
        before,
        "no argon2 for unknown or malformed keys"
    );
    // A valid key costs one argon2 run, then the cache answers.
    for _ in 0..5 {
        let mut c = gw.plain().await;
        let resp = send(
            &mut c,
            authed(Method::GET, "/peer/web/hello", &gw.api_key, empty()),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    assert_eq!(gw.runtime.verifier.argon2_verifications(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ip_policy_and_malformed_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A key that may only be used from 10.0.0.0/8: loopback callers are refused.
    let (far, far_key) =
        postern_tests::gateway::api_key_toml("x", "\"*\"", "allow_ips = [\"10.0.0.0/8\"]");
    let (_net, gw) = TestGateway::for_web_origin(&far).await;

    let mut c = gw.plain().await;
    let resp = send(&mut c, get("/healthz")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut c = gw.plain().await;
    let resp = send(&mut c, get("/readyz")).await;
    assert_eq!(resp.status(), StatusCode::OK, "the relay is reachable");

    let mut c = gw.plain().await;
    let resp = send(
        &mut c,
        authed(Method::GET, "/peer/web/hello", &far_key, empty()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    // Raw bytes a real client would never send; each gets a 4xx or a closed connection.
    let huge_header = format!(
        "GET /peer/web/hello HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let cases: Vec<Vec<u8>> = vec![
        b"NOT A REQUEST LINE\r\n\r\n".to_vec(),
        b"GET /peer/\xff\xfe/hello HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        huge_header.into_bytes(),
        b"GET / HTTP/9.9\r\nHost: localhost\r\n\r\n".to_vec(),
    ];
    for raw in cases {
        let mut tcp = tokio::net::TcpStream::connect(gw.http).await.unwrap();
        let _ = tcp.write_all(&raw).await;
        // Read until a status line or the end of the connection, whichever comes first.
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        let answered = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while !out.windows(2).any(|w| w == b"\r\n") {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(
            answered.is_ok(),
            "the gateway must answer or close: {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(60)])
        );
        let text = String::from_utf8_lossy(&out);
        assert!(
            out.is_empty() || text.starts_with("HTTP/1.1 4"),
            "{}",
            &text[..text.len().min(200)]
        );
    }
    // The gateway is still serving.
    let mut c = gw.plain().await;
    let resp = send(
        &mut c,
        authed(Method::GET, "/peer/web/hello", &gw.api_key, empty()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
}

/// A TLS connection to `addr` with SNI `name`, trusting only `ca`.
async fn tls_to(
    addr: std::net::SocketAddr,
    name: &str,
    ca: &rustls::pki_types::CertificateDer<'static>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(postern_sdk::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap(),
            tcp,
        )
        .await
}

/// The certificate served for SNI `name`, if a client trusting only `ca` accepts it.
async fn served_certificate(
    addr: std::net::SocketAddr,
    name: &str,
    ca: &rustls::pki_types::CertificateDer<'static>,
) -> std::io::Result<Vec<u8>> {
    let tls = tls_to(addr, name, ca).await?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_between_two_certificates() {
    let net = TestNet::start().await;
    let origin = spawn_origin().await;
    let owner = net.expose("web", origin).await;
    let dir = tempfile::tempdir().unwrap();
    let second = rcgen::generate_simple_self_signed(vec!["api.example.test".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("api.crt"), dir.path().join("api.key"));
    std::fs::write(&cert, second.cert.pem()).unwrap();
    std::fs::write(&key, second.key_pair.serialize_pem()).unwrap();
    let extra = format!(
        "[[listen.tls]]\ncert = \"{}\"\nkey = \"{}\"\nserver_names = [\"api.example.test\"]\n",
        cert.display(),
        key.display()
    );
    let gw = TestGateway::start(&net, &[("web", &owner)], &extra).await;
    let second_der = second.cert.der().clone();

    // Each name gets its own certificate, which its client (trusting only that one) accepts.
    let got = served_certificate(gw.https, "api.example.test", &second_der)
        .await
        .unwrap();
    assert_eq!(got, second_der.to_vec());
    let got = served_certificate(gw.https, "localhost", &gw.ca)
        .await
        .unwrap();
    assert_eq!(got, gw.ca.to_vec());
    // A name the second certificate does not cover is not answered with it.
    assert!(served_certificate(gw.https, "localhost", &second_der)
        .await
        .is_err());

    // And a request over the second name goes through.
    let tls = tls_to(gw.https, "api.example.test", &second_der)
        .await
        .unwrap();
    let mut c = http1_client(tls).await;
    let resp = send(
        &mut c,
        authed(Method::GET, "/peer/web/hello", &gw.api_key, empty()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_fields_stop_at_the_gateway() {
    let (_net, gw) = TestGateway::for_web_origin("").await;

    let mut c = gw.h1().await;
    let mut req = authed(Method::GET, "/peer/web/headers", &gw.api_key, empty());
    let h = req.headers_mut();
    h.insert(
        http::header::CONNECTION,
        "keep-alive, X-Client-Hop".parse().unwrap(),
    );
    h.insert("x-client-hop", "1".parse().unwrap());
    h.insert("keep-alive", "timeout=5".parse().unwrap());
    h.insert("proxy-connection", "keep-alive".parse().unwrap());
    h.insert("x-client-kept", "1".parse().unwrap());
    let resp = send(&mut c, req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    let seen: Vec<&str> = seen.lines().collect();
    // Neither proxy on the way (gateway, agent) passes on a field about its own hop.
    for gone in [
        "connection",
        "x-client-hop",
        "keep-alive",
        "proxy-connection",
        "authorization",
    ] {
        assert!(!seen.contains(&gone), "{gone} reached the origin: {seen:?}");
    }
    for kept in ["x-client-kept", "x-forwarded-for", "x-request-id"] {
        assert!(
            seen.contains(&kept),
            "{kept} missing at the origin: {seen:?}"
        );
    }

    let resp = send(
        &mut c,
        authed(Method::GET, "/peer/web/hop", &gw.api_key, empty()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().contains_key("x-origin-kept"));
    assert!(!resp.headers().contains_key("x-origin-hop"));
    assert!(!resp.headers().contains_key("keep-alive"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_never_reaches_the_origin_however_it_is_spaced() {
    let (_net, gw) = TestGateway::for_web_origin("").await;
    let mut c = gw.h1().await;
    for value in [
        format!("Bearer {}", gw.api_key),
        format!("Bearer  {}", gw.api_key),
        format!("bearer\t{}", gw.api_key),
        format!("BEARER {} ", gw.api_key),
    ] {
        let req = http::Request::get("/peer/web/headers")
            .header("host", "localhost")
            .header("authorization", &value)
            .body(empty())
            .unwrap();
        let resp = send(&mut c, req).await;
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "{value:?} did not authenticate"
        );
        let seen = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
        assert!(
            !seen.lines().any(|l| l == "authorization"),
            "{value:?} was forwarded to the origin"
        );
    }
    // The origin's own credential, next to ours in x-api-key, does go on.
    let req = http::Request::get("/peer/web/headers")
        .header("host", "localhost")
        .header("x-api-key", &gw.api_key)
        .header("authorization", "Bearer origin-token")
        .body(empty())
        .unwrap();
    let resp = send(&mut c, req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    assert!(seen.lines().any(|l| l == "authorization"), "{seen}");
    assert!(!seen.lines().any(|l| l == "x-api-key"), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_callers_host_reaches_an_origin_that_keeps_it() {
    let net = TestNet::start().await;
    let origin = spawn_origin().await;
    // `postern expose --keep-host`: the origin sees the Host the caller used.
    let (owner, listener) = net.listen("kept").await;
    let target = postern_sdk::expose::Target::parse(&format!("http://{origin}"), true).unwrap();
    tokio::spawn(postern_sdk::expose::serve(
        listener,
        target,
        postern_sdk::expose::ExposeOptions::default(),
    ));
    let gw = TestGateway::start(&net, &[("kept", &owner)], "").await;
    let authority = format!("localhost:{}", gw.https.port());

    let mut h2 = gw.h2().await;
    let req = http::Request::get(format!("https://{authority}/peer/kept/hello"))
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", gw.api_key),
        )
        .body(empty())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-seen-host"], authority.as_str());

    let mut h1 = gw.h1().await;
    let resp = send(
        &mut h1,
        authed(Method::GET, "/peer/kept/hello", &gw.api_key, empty()),
    )
    .await;
    assert_eq!(resp.headers()["x-seen-host"], "localhost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_belong_to_the_gateways_own_names_and_follow_its_ip_policy() {
    let (_net, gw) = TestGateway::for_web_origin("").await;
    // On a lease host every path is the origin's: /healthz is authenticated and proxied.
    let mut c = gw.plain().await;
    let anon = http::Request::get("/healthz")
        .header("host", "web.gw.test")
        .body(empty())
        .unwrap();
    assert_eq!(send(&mut c, anon).await.status(), StatusCode::UNAUTHORIZED);
    let req = http::Request::get("/healthz")
        .header("host", "web.gw.test")
        .header("x-api-key", gw.api_key.as_str())
        .body(empty())
        .unwrap();
    let resp = send(&mut c, req).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(body_bytes(resp).await, "not found", "the origin answered");
    // On the gateway's own name it is the gateway's.
    let resp = send(&mut c, get("/healthz")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_bytes(resp).await, "ok\n");

    // A gateway closed to a network is closed to it entirely (fail closed).
    let (_net, gw) = TestGateway::for_web_origin("[ip]\ndeny = [\"127.0.0.0/8\"]\n").await;
    for path in ["/healthz", "/readyz"] {
        let mut c = gw.plain().await;
        assert_eq!(
            send(&mut c, get(path)).await.status(),
            StatusCode::FORBIDDEN
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_fields_are_the_gateways_not_the_clients() {
    let (_net, gw) = TestGateway::for_web_origin("").await;
    let mut c = gw.plain().await;
    for (name, at_origin) in [
        ("x-forwarded-for", "127.0.0.1"),
        ("x-forwarded-host", "localhost"),
        ("x-forwarded-proto", "http"),
        ("forwarded", ""),
        ("x-real-ip", ""),
        ("x-forwarded-port", ""),
        ("true-client-ip", ""),
    ] {
        let mut req = authed(
            Method::GET,
            &format!("/peer/web/header/{name}"),
            &gw.api_key,
            empty(),
        );
        let h = req.headers_mut();
        h.append("x-forwarded-for", "203.0.113.9".parse().unwrap());
        h.append("x-forwarded-for", "198.51.100.7, 10.0.0.1".parse().unwrap());
        h.insert("forwarded", "for=203.0.113.9".parse().unwrap());
        h.insert("x-real-ip", "203.0.113.9".parse().unwrap());
        h.insert("x-forwarded-host", "evil.example".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        h.insert("x-forwarded-port", "443".parse().unwrap());
        h.insert("true-client-ip", "203.0.113.9".parse().unwrap());
        let resp = send(&mut c, req).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(body_bytes(resp).await, at_origin, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_spellings_of_the_gateways_fields_do_not_reach_the_origin() {
    // CGI and WSGI origins read `X_Forwarded_For` as `X-Forwarded-For`.
    let (_net, gw) = TestGateway::for_web_origin("").await;
    let mut c = gw.plain().await;
    let mut req = authed(Method::GET, "/peer/web/headers", &gw.api_key, empty());
    let h = req.headers_mut();
    h.insert("x_forwarded_for", "203.0.113.9".parse().unwrap());
    h.insert("x-forwarded_host", "evil.example".parse().unwrap());
    h.insert("x_real_ip", "203.0.113.9".parse().unwrap());
    h.insert("x_request_id", "chosen-by-client".parse().unwrap());
    h.insert("x_api_key", gw.api_key.parse().unwrap());
    h.insert("x_origin_field", "kept".parse().unwrap());
    let resp = send(&mut c, req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    let names: Vec<&str> = seen.lines().collect();
    for gone in [
        "x_forwarded_for",
        "x-forwarded_host",
        "x_real_ip",
        "x_request_id",
        "x_api_key",
    ] {
        assert!(!names.contains(&gone), "{gone} reached the origin: {seen}");
    }
    assert!(names.contains(&"x_origin_field"), "{seen}");
    assert!(names.contains(&"x-forwarded-for"), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http11_request_without_host_is_a_bad_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_net, gw) = TestGateway::for_web_origin("").await;
    let exchange = |version: &'static str| {
        let key = gw.api_key.clone();
        let addr = gw.http;
        async move {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!(
                "GET /peer/web/hello {version}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
            );
            tcp.write_all(req.as_bytes()).await.unwrap();
            let mut resp = String::new();
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                tcp.read_to_string(&mut resp),
            )
            .await
            .expect("answer in time")
            .unwrap();
            resp
        }
    };
    let resp = exchange("HTTP/1.1").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("application/problem+json"), "{resp}");
    // HTTP/1.0 may leave it out.
    let resp = exchange("HTTP/1.0").await;
    assert!(resp.contains(" 200 "), "{resp}");
    assert!(resp.ends_with("hello from origin"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_offer_is_ignored_and_needs_no_write_scope() {
    let (reader, reader_key) =
        postern_tests::gateway::api_key_toml("r", "\"*\"", "scopes = [\"read\"]");
    let (_net, gw) = TestGateway::for_web_origin(&reader).await;
    // What `curl --http2 http://…` sends.
    let mut c = gw.plain().await;
    let mut req = authed(Method::GET, "/peer/web/headers", &reader_key, empty());
    let h = req.headers_mut();
    h.insert("connection", "Upgrade, HTTP2-Settings".parse().unwrap());
    h.insert("upgrade", "h2c".parse().unwrap());
    h.insert(
        "http2-settings",
        "AAMAAABkAARAAAAAAAIAAAAA".parse().unwrap(),
    );
    let resp = send(&mut c, req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    for gone in ["upgrade", "http2-settings", "connection"] {
        assert!(
            !seen.lines().any(|l| l == gone),
            "{gone} reached the origin: {seen}"
        );
    }
    // The connection is still an HTTP/1.1 one.
    let resp = send(
        &mut c,
        authed(Method::GET, "/peer/web/hello", &reader_key, empty()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_key_cannot_ask_for_a_write_in_any_spelling() {
    let (reader, reader_key) =
        postern_tests::gateway::api_key_toml("r", "\"*\"", "scopes = [\"read\"]");
    let (_net, gw) = TestGateway::for_web_origin(&reader).await;
    let mut c = gw.plain().await;
    let resp = send(
        &mut c,
        authed(Method::GET, "/peer/web/hello", &reader_key, empty()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let overrides = [
        ("x-http-method-override", "DELETE"),
        ("X-HTTP-Method", "put"),
        ("x-method-override", "PATCH"),
        ("X_HTTP_Method_Override", "DELETE"),
        ("x-http-method-override", "GET, DELETE"),
    ];
    for (name, value) in overrides {
        let mut req = authed(Method::GET, "/peer/web/hello", &reader_key, empty());
        req.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        let resp = send(&mut c, req).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{name}: {value}");
        let _ = body_bytes(resp).await;
    }
    for target in [
        "/peer/web/hello?_method=DELETE",
        "/peer/web/hello?a=1&_METHOD=put",
    ] {
        let resp = send(&mut c, authed(Method::GET, target, &reader_key, empty())).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{target}");
        let _ = body_bytes(resp).await;
    }
    // A read override stays a read; a write key may use overrides.
    let mut req = authed(Method::GET, "/peer/web/hello", &reader_key, empty());
    req.headers_mut()
        .insert("x-http-method-override", "HEAD".parse().unwrap());
    assert_eq!(send(&mut c, req).await.status(), StatusCode::OK);
    let mut req = authed(Method::GET, "/peer/web/hello", &gw.api_key, empty());
    req.headers_mut()
        .insert("x-http-method-override", "DELETE".parse().unwrap());
    assert_eq!(send(&mut c, req).await.status(), StatusCode::OK);
}

/// An origin that takes any number of header fields and answers with how many it got.
async fn field_counting_origin() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 1 << 20 {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let fields = text.split("\r\n\r\n").next().unwrap().lines().count() - 1;
                let body = fields.to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_gateway_accepts_the_agent_accepts_and_one_field_more_is_431() {
    let net = TestNet::start().await;
    let owner = net.expose("web", field_counting_origin().await).await;
    let gw = TestGateway::start(&net, &[("web", &owner)], "").await;
    let mut c = gw.plain().await;
    // `authed` sets Host and Authorization: with these, exactly the default 100 fields.
    let mut req = authed(Method::GET, "/peer/web/headers", &gw.api_key, empty());
    for i in 0..98 {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(format!("x-field-{i}").as_bytes()).unwrap(),
            "v".parse().unwrap(),
        );
    }
    let resp = send(&mut c, req).await;
    let status = resp.status();
    let text = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "the agent refused what the gateway let through: {text}"
    );
    // The 100 fields, and the few the gateway and the agent add on the way.
    let fields: usize = text.parse().unwrap();
    assert!((100..=110).contains(&fields), "{fields}");
    let mut req = authed(Method::GET, "/peer/web/headers", &gw.api_key, empty());
    for i in 0..99 {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(format!("x-field-{i}").as_bytes()).unwrap(),
            "v".parse().unwrap(),
        );
    }
    let resp = send(&mut c, req).await;
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

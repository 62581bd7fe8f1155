//! Hot reload of the gateway's config file, end to end: a rewritten file changes who may reach
//! which lease without a restart and without cutting open SSE streams or WebSockets; a broken
//! file (syntax, a bad value, a missing certificate) is refused, counted and changes nothing;
//! a rotated certificate reaches new handshakes while old connections keep theirs; settings
//! that need a restart keep their running values while the rest of the file applies; and
//! `postern-gateway check-config` tells a good file from a bad one, naming file, line and
//! field.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use postern_tests::gateway::{api_key_toml, authed, GatewayFiles, TestGateway};
use postern_tests::*;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::sync::{mpsc, Mutex};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;

type Body = BoxBody<Bytes, hyper::Error>;

/// Longest any single step (a request, an event, an echo) may take.
const STEP: Duration = Duration::from_secs(10);
/// SSE events the origin produces before it ends the stream.
const SSE_EVENTS: u32 = 5;

/// Awaits `f` for at most [`STEP`]; a hang is a failure that says what hung.
async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {STEP:?}"))
}

/// An origin with `/ws` (a WebSocket echo), `/sse` (event n only once the test sent the n-th
/// permit on `release`) and `/hello`.
async fn streaming_origin(release: mpsc::UnboundedReceiver<()>) -> SocketAddr {
    let release = Arc::new(Mutex::new(release));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let release = Arc::clone(&release);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(req, Arc::clone(&release)));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

fn empty_body() -> Body {
    http_body_util::Empty::new().map_err(|n| match n {}).boxed()
}

async fn handle(
    mut req: Request<Incoming>,
    release: Arc<Mutex<mpsc::UnboundedReceiver<()>>>,
) -> Result<Response<Body>, Infallible> {
    match req.uri().path() {
        "/ws" => {
            let key = req.headers().get("sec-websocket-key").cloned().unwrap();
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() || ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            Ok(Response::builder()
                .status(101)
                .header("upgrade", "websocket")
                .header("connection", "Upgrade")
                .header("sec-websocket-accept", accept)
                .body(empty_body())
                .unwrap())
        }
        "/sse" => {
            let events = futures::stream::unfold((0u32, release), |(n, release)| async move {
                if n == SSE_EVENTS {
                    return None;
                }
                release.lock().await.recv().await?;
                let frame = Frame::data(Bytes::from(format!("id: {n}\ndata: event {n}\n\n")));
                Some((Ok::<_, hyper::Error>(frame), (n + 1, release)))
            });
            Ok(Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(BodyExt::boxed(StreamBody::new(events)))
                .unwrap())
        }
        _ => Ok(Response::new(
            http_body_util::Full::new(Bytes::from_static(b"hello from origin"))
                .map_err(|n| match n {})
                .boxed(),
        )),
    }
}

/// The status of `GET path` with `key` on a fresh plain connection (the body is read whole).
async fn status_of(gw: &TestGateway, key: &str, path: &str) -> StatusCode {
    within(&format!("GET {path}"), async {
        let mut c = gw.plain().await;
        let resp = send(&mut c, authed(Method::GET, path, key, empty())).await;
        let status = resp.status();
        let _ = body_bytes(resp).await;
        status
    })
    .await
}

/// Reads the SSE body until event `n` is in; fails if a later one came first.
async fn sse_event(body: &mut Incoming, text: &mut String, n: u32) {
    let want = format!("data: event {n}\n\n");
    while !text.contains(&want) {
        let frame = within(&format!("SSE event {n}"), body.frame())
            .await
            .unwrap_or_else(|| panic!("the SSE stream ended before event {n}: {text:?}"))
            .unwrap_or_else(|e| panic!("the SSE stream broke before event {n}: {e}; {text:?}"));
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    assert!(
        !text.contains(&format!("event {}", n + 1)),
        "an event arrived before it was produced: {text:?}"
    );
}

async fn ws_echo<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    within(&format!("WebSocket echo of {text:?}"), async {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = match ws.next().await {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => panic!("the WebSocket broke before echoing {text:?}: {e}"),
            None => panic!("the WebSocket closed before echoing {text:?}"),
        };
        assert_eq!(echoed, Message::text(text));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_acl_change_applies_without_restart_and_open_streams_keep_flowing() {
    let net = TestNet::start().await;
    let (release, permits) = mpsc::unbounded_channel();
    let web = net.expose("web", streaming_origin(permits).await).await;
    let other = net.expose("other", spawn_origin().await).await;
    let (scoped_toml, scoped) = api_key_toml("scoped", "\"web\"", "");
    let gw = TestGateway::start(&net, &[("web", &web), ("other", &other)], &scoped_toml).await;
    wait_for_config_watch("/proc/self", &gw.config_path).await;
    let on_web = gw.toml.clone();
    assert_eq!(on_web.matches("leases = [\"web\"]").count(), 1, "{on_web}");
    let on_other = on_web.replace("leases = [\"web\"]", "leases = [\"other\"]");

    assert_eq!(status_of(&gw, &scoped, "/peer/web/hello").await, 200);
    assert_eq!(status_of(&gw, &scoped, "/peer/other/hello").await, 403);

    // Opened before the reload, with the very key whose leases change: a keep-alive
    // connection, an SSE stream and a WebSocket.
    let mut kept = gw.plain().await;
    let resp = within(
        "keep-alive request",
        send(
            &mut kept,
            authed(Method::GET, "/peer/web/hello", &scoped, empty()),
        ),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let _ = body_bytes(resp).await;

    let mut sse_conn = gw.plain().await;
    release.send(()).unwrap();
    let resp = within(
        "SSE response head",
        send(
            &mut sse_conn,
            authed(Method::GET, "/peer/web/sse", &scoped, empty()),
        ),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut sse = resp.into_body();
    let mut sse_text = String::new();
    sse_event(&mut sse, &mut sse_text, 0).await;

    let tcp = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let mut req = format!("ws://localhost:{}/peer/web/ws", gw.http.port())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {scoped}").parse().unwrap());
    let (mut ws, resp) = within(
        "WebSocket upgrade",
        tokio_tungstenite::client_async(req, tcp),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 101);
    ws_echo(&mut ws, "before the reload").await;

    // The key may now use `other` only.
    assert!(
        gw.rewrite_config(&on_other).await,
        "the new ACL was refused"
    );
    assert_eq!(gw.runtime.snapshot().generation, 2);
    assert_eq!(status_of(&gw, &scoped, "/peer/web/hello").await, 403);
    assert_eq!(status_of(&gw, &scoped, "/peer/other/hello").await, 200);
    // A new request on a connection opened before the reload is decided by the new file.
    let resp = within(
        "keep-alive request after the reload",
        send(
            &mut kept,
            authed(Method::GET, "/peer/web/hello", &scoped, empty()),
        ),
    )
    .await;
    assert_eq!(resp.status(), 403, "an old connection kept the old ACL");
    let _ = body_bytes(resp).await;
    // The streams opened before go on.
    release.send(()).unwrap();
    sse_event(&mut sse, &mut sse_text, 1).await;
    ws_echo(&mut ws, "after the first reload").await;

    // And back.
    assert!(gw.rewrite_config(&on_web).await, "the old ACL was refused");
    assert_eq!(gw.runtime.snapshot().generation, 3);
    assert_eq!(status_of(&gw, &scoped, "/peer/web/hello").await, 200);
    assert_eq!(status_of(&gw, &scoped, "/peer/other/hello").await, 403);
    release.send(()).unwrap();
    sse_event(&mut sse, &mut sse_text, 2).await;
    ws_echo(&mut ws, "after the second reload").await;

    // Both end cleanly: the SSE stream with its last event, the WebSocket with a close.
    for n in 3..SSE_EVENTS {
        release.send(()).unwrap();
        sse_event(&mut sse, &mut sse_text, n).await;
    }
    let end = within("end of the SSE stream", sse.frame()).await;
    assert!(end.is_none(), "the SSE stream did not end cleanly: {end:?}");
    within("WebSocket close", ws.close(None)).await.unwrap();
    assert_eq!(
        metric_value(
            &gw.scrape().await,
            "postern_config_reloads_total{result=\"ok\"}"
        ),
        Some(2.0)
    );
}

/// The number in `series` of a scrape, 0 when absent.
async fn counter(gw: &TestGateway, series: &str) -> f64 {
    metric_value(&gw.scrape().await, series).unwrap_or(0.0)
}

const FAILED: &str = "postern_config_reloads_total{result=\"failed\"}";
const OK: &str = "postern_config_reloads_total{result=\"ok\"}";

/// The value of `name = "…"` on its first line in `toml`.
fn toml_path(toml: &str, name: &str) -> String {
    let prefix = format!("{name} = \"");
    toml.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str())?.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no `{name}` in\n{toml}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_is_counted_and_ignored_and_a_later_valid_one_applies() {
    let (_net, gw) = TestGateway::for_web_origin("").await;
    wait_for_config_watch("/proc/self", &gw.config_path).await;
    let cert = toml_path(&gw.toml, "cert");
    let missing = gw.config_path.with_file_name("no-such-cert.pem");
    let broken = [
        (
            "bad TOML syntax",
            format!("{}\n[limits\nmax_connections = 10\n", gw.toml),
        ),
        (
            "a bad value",
            format!("{}\n[limits]\nmax_connections = 0\n", gw.toml),
        ),
        (
            "a missing certificate file",
            gw.toml.replace(
                &format!("cert = \"{cert}\""),
                &format!("cert = \"{}\"", missing.display()),
            ),
        ),
    ];
    assert!(broken[2].1.contains("no-such-cert.pem"));
    let mut kept = gw.plain().await;
    for (what, text) in &broken {
        let failed = counter(&gw, FAILED).await;
        let ok = counter(&gw, OK).await;
        assert!(!gw.rewrite_config(text).await, "{what}: applied");
        assert_eq!(gw.runtime.snapshot().generation, 1, "{what}");
        // Counted once: a second trigger would count it twice.
        tokio::time::sleep(postern_gateway::reload::DEBOUNCE * 3).await;
        assert_eq!(counter(&gw, FAILED).await, failed + 1.0, "{what}");
        assert_eq!(counter(&gw, OK).await, ok, "{what}");
        // Still serving, on new connections, on old ones and over TLS.
        assert_eq!(status_of(&gw, &gw.api_key, "/peer/web/hello").await, 200);
        let resp = within(
            "keep-alive request",
            send(
                &mut kept,
                authed(Method::GET, "/peer/web/hello", &gw.api_key, empty()),
            ),
        )
        .await;
        assert_eq!(resp.status(), 200, "{what}");
        assert_eq!(body_bytes(resp).await, "hello from origin");
        let mut h1 = gw.h1().await;
        let resp = within(
            "HTTPS request",
            send(
                &mut h1,
                authed(Method::GET, "/peer/web/hello", &gw.api_key, empty()),
            ),
        )
        .await;
        assert_eq!(resp.status(), 200, "{what}");
    }
    assert_eq!(counter(&gw, FAILED).await, 3.0);

    // A valid file after them applies: a key it adds works at once.
    let (added, added_key) = api_key_toml("added", "\"web\"", "");
    assert_eq!(status_of(&gw, &added_key, "/peer/web/hello").await, 401);
    assert!(gw.rewrite_config(&format!("{}\n{added}", gw.toml)).await);
    assert_eq!(gw.runtime.snapshot().generation, 2);
    assert_eq!(status_of(&gw, &added_key, "/peer/web/hello").await, 200);
    assert_eq!(counter(&gw, OK).await, 1.0);
    assert_eq!(counter(&gw, FAILED).await, 3.0);
}

/// A self-signed certificate for 127.0.0.1 and localhost with a key of its own; returns its
/// DER and (cert PEM, key PEM).
fn self_signed() -> (CertificateDer<'static>, String, String) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    (
        cert.cert.der().clone(),
        cert.cert.pem(),
        cert.key_pair.serialize_pem(),
    )
}

/// A TLS client to the HTTPS listener that trusts every one of `roots`; returns the stream
/// (or the handshake error).
async fn tls_to(
    gw: &TestGateway,
    roots: &[&CertificateDer<'static>],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add((*root).clone()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(postern_sdk::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(gw.https).await.unwrap();
    within(
        "TLS handshake",
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
}

fn served_cert(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("a peer certificate")[0]
        .to_vec()
}

async fn hello_over(client: &mut hyper::client::conn::http1::SendRequest<Body>, key: &str) {
    let resp = within(
        "HTTPS request",
        send(client, authed(Method::GET, "/peer/web/hello", key, empty())),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body_bytes(resp).await, "hello from origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_reaches_new_handshakes_while_old_connections_keep_working() {
    let (_net, gw) = TestGateway::for_web_origin("").await;
    wait_for_config_watch("/proc/self", &gw.config_path).await;
    let original = gw.ca.clone();
    let (second, second_pem, second_key) = self_signed();
    let (third, third_pem, third_key) = self_signed();
    assert_ne!(original, second);
    assert_ne!(second, third);
    let all = [&original, &second, &third];

    let before = tls_to(&gw, &all).await.unwrap();
    assert_eq!(served_cert(&before), original.to_vec());
    let mut old = http1_client(before).await;
    hello_over(&mut old, &gw.api_key).await;

    // New files, and the config pointed at them.
    let dir = gw.config_path.parent().unwrap();
    let (cert_path, key_path) = (dir.join("rotated.crt"), dir.join("rotated.key"));
    std::fs::write(&cert_path, &second_pem).unwrap();
    std::fs::write(&key_path, &second_key).unwrap();
    let rotated = gw
        .toml
        .replace(
            &format!("cert = \"{}\"", toml_path(&gw.toml, "cert")),
            &format!("cert = \"{}\"", cert_path.display()),
        )
        .replace(
            &format!("key = \"{}\"", toml_path(&gw.toml, "key")),
            &format!("key = \"{}\"", key_path.display()),
        );
    assert_ne!(rotated, gw.toml);
    assert!(
        gw.rewrite_config(&rotated).await,
        "the rotation was refused"
    );

    let after = tls_to(&gw, &all).await.unwrap();
    assert_eq!(
        served_cert(&after),
        second.to_vec(),
        "a new handshake got the old certificate"
    );
    hello_over(&mut http1_client(after).await, &gw.api_key).await;
    // A client that trusts only the old certificate can no longer connect...
    assert!(
        tls_to(&gw, &[&original]).await.is_err(),
        "the old certificate is still served"
    );
    // ...while the connection made with it goes on.
    hello_over(&mut old, &gw.api_key).await;

    // Files overwritten in place under the same paths: a reload re-reads them.
    std::fs::write(&cert_path, &third_pem).unwrap();
    std::fs::write(&key_path, &third_key).unwrap();
    assert!(gw.rewrite_config(&rotated).await, "the same file again");
    let third_conn = tls_to(&gw, &all).await.unwrap();
    assert_eq!(served_cert(&third_conn), third.to_vec());
    hello_over(&mut http1_client(third_conn).await, &gw.api_key).await;
    hello_over(&mut old, &gw.api_key).await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_only_settings_keep_running_values_while_the_rest_of_the_file_applies() {
    let (_net, gw) = TestGateway::for_web_origin("").await;
    wait_for_config_watch("/proc/self", &gw.config_path).await;
    let moved = free_port();
    let (added, added_key) = api_key_toml("added", "\"web\"", "");
    let plain_listen = "http = \"127.0.0.1:0\"";
    assert_eq!(gw.toml.matches(plain_listen).count(), 1, "{}", gw.toml);
    let changed = format!(
        "{}\n[limits]\nmax_connections = 1\nmax_in_flight_per_lease = 7\n\n{added}",
        gw.toml
            .replace(plain_listen, &format!("http = \"127.0.0.1:{moved}\""))
    );
    assert!(gw.rewrite_config(&changed).await, "the file was refused");
    let snap = gw.runtime.snapshot();
    assert_eq!(snap.generation, 2);
    // Running values kept...
    assert_eq!(
        snap.config.listen.http,
        Some("127.0.0.1:0".parse().unwrap())
    );
    assert_eq!(snap.config.limits.max_connections, 10_000);
    // ...the rest applied.
    assert_eq!(snap.config.limits.max_in_flight_per_lease, 7);
    drop(snap);

    // The new key works, on the old port.
    assert_eq!(status_of(&gw, &added_key, "/peer/web/hello").await, 200);
    // Nothing listens on the new port.
    let moved_to = tokio::net::TcpStream::connect(("127.0.0.1", moved)).await;
    assert!(
        moved_to.is_err(),
        "the gateway opened a listener on the new port"
    );
    // max_connections = 1 did not apply: three connections are served at once.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = gw.plain().await;
        hello_over(&mut c, &added_key).await;
        held.push(c);
    }
    let mut h1 = gw.h1().await;
    hello_over(&mut h1, &gw.api_key).await;
    for c in &mut held {
        hello_over(c, &gw.api_key).await;
    }
}

/// Runs `cmd` to completion, for at most 60 s; returns (success, stdout, stderr).
fn run_bounded(cmd: &mut Command) -> (bool, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("postern-gateway starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_accepts_a_good_file_and_names_file_line_and_field_of_a_bad_one() {
    let net = TestNet::start().await;
    let owner = postern_sdk::Identity::generate();
    let files = GatewayFiles::new(&net, &[("web", &owner)], "");
    let good = files.write_config();
    let binary = built_binary("postern-gateway");

    let (ok, stdout, stderr) = tokio::task::spawn_blocking({
        let (binary, good) = (binary.clone(), good.clone());
        move || run_bounded(Command::new(binary).arg("check-config").arg(good))
    })
    .await
    .unwrap();
    assert!(ok, "a good file failed check-config\n{stdout}{stderr}");
    assert_eq!(stdout.trim(), format!("ok: {}", good.display()));

    // A bad value: file, line and field.
    let bad_value = format!("{}\n[limits]\nmax_connections = 0\n", files.toml);
    let line = bad_value
        .lines()
        .position(|l| l == "max_connections = 0")
        .unwrap()
        + 1;
    // A syntax error: file and line.
    let bad_syntax = format!("{}\n[limits\nmax_connections = 10\n", files.toml);
    let syntax_line = bad_syntax.lines().position(|l| l == "[limits").unwrap() + 1;
    // A certificate that is not there: the file it names.
    let missing = files.dir.path().join("no-such-cert.pem");
    let cert = toml_path(&files.toml, "cert");
    let bad_cert = files.toml.replace(
        &format!("cert = \"{cert}\""),
        &format!("cert = \"{}\"", missing.display()),
    );
    let cases = [
        (
            "bad-value.toml",
            bad_value,
            vec![format!(":{line}: "), "`limits.max_connections`".to_owned()],
        ),
        (
            "bad-syntax.toml",
            bad_syntax,
            vec![format!("line {syntax_line}")],
        ),
        (
            "bad-cert.toml",
            bad_cert,
            vec![missing.display().to_string()],
        ),
    ];
    for (name, text, wants) in cases {
        let path = files.dir.path().join(name);
        std::fs::write(&path, &text).unwrap();
        let (ok, stdout, stderr) = tokio::task::spawn_blocking({
            let (binary, path) = (binary.clone(), path.clone());
            move || run_bounded(Command::new(binary).arg("check-config").arg(path))
        })
        .await
        .unwrap();
        assert!(!ok, "{name} passed check-config\n{stdout}{stderr}");
        assert!(!stdout.contains("ok:"), "{name}: {stdout}");
        assert!(
            stderr.contains(&path.display().to_string()),
            "{name}: the error does not name the file\n{stderr}"
        );
        for want in wants {
            assert!(
                stderr.contains(&want),
                "{name}: the error does not say {want:?}\n{stderr}"
            );
        }
    }
}

//! `postern up` is the README's "run it" command: started as a real process, it must
//! print an API key, an `expose` line and a `curl` line that work.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use postern_sdk::expose::{self, ExposeOptions, Target};
use postern_sdk::{Identity, LeaseSpec, Listener, ListenerConfig, RelayUrl};
use rustls::pki_types::pem::PemObject;

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_prints_a_key_and_commands_that_work() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, https, http) = (free_addr(), free_addr(), free_addr());
    let mut child = Command::new(env!("CARGO_BIN_EXE_postern"))
        .arg("up")
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "--relay",
            &relay.to_string(),
            "--https",
            &https.to_string(),
            "--http",
            &http.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let _guard = Kill(child);
    let lines: Vec<String> = stdout
        .lines()
        .map_while(Result::ok)
        .take_while(|l| !l.contains("curl"))
        .collect();
    let text = lines.join("\n");
    let key = text
        .lines()
        .find_map(|l| {
            l.split("API key (shown once; only its hash is kept): ")
                .nth(1)
        })
        .unwrap_or_else(|| panic!("no API key in:\n{text}"))
        .trim()
        .to_owned();
    assert!(key.starts_with("pst_"), "{key}");
    assert!(
        text.contains("expose http://127.0.0.1:3000 --lease demo"),
        "{text}"
    );

    // A local service, exposed with the printed key and grant files.
    let origin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_addr = origin.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = origin.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        bytes::Bytes::from("hi from laptop"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let agent = Identity::load(&dir.path().join("agent.key")).unwrap();
    let grants = postern_sdk::grant::load_file(&dir.path().join("agent.grants")).unwrap();
    let relay_url = RelayUrl::parse(&format!("ws://{relay}")).unwrap();
    let mut listener = None;
    for _ in 0..200 {
        let cfg = ListenerConfig::new(
            relay_url.clone(),
            agent.clone(),
            grants.clone(),
            LeaseSpec::new("demo"),
        );
        if let Ok(l) = Listener::bind(cfg).await {
            listener = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let target = Target::parse(&format!("http://{origin_addr}"), false).unwrap();
    tokio::spawn(expose::serve(
        listener.expect("relay up"),
        target,
        ExposeOptions::default(),
    ));

    // The curl line: HTTPS with the generated certificate as CA, bearer API key.
    let ca = std::fs::read(dir.path().join("gateway.crt")).unwrap();
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(&ca).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(postern_sdk::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut status = 0;
    let mut body = bytes::Bytes::new();
    for _ in 0..100 {
        let Ok(tcp) = tokio::net::TcpStream::connect(https).await else {
            tokio::time::sleep(Duration::from_millis(25)).await;
            continue;
        };
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls.clone()))
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get("/peer/demo/")
            .header("host", "localhost")
            .header("authorization", format!("Bearer {key}"))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        status = resp.status().as_u16();
        body = resp.into_body().collect().await.unwrap().to_bytes();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, "hi from laptop");
}

/// `postern up` on the given addresses; waits (bounded) for it to exit and returns its
/// output.
fn run_up_until_exit(dir: &std::path::Path, https: std::net::SocketAddr) -> std::process::Output {
    let child = Command::new(env!("CARGO_BIN_EXE_postern"))
        .arg("up")
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--relay",
            &free_addr().to_string(),
            "--https",
            &https.to_string(),
            "--http",
            &free_addr().to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = Kill(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while guard.0.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "postern up still running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = std::process::Output {
        status: guard.0.try_wait().unwrap().unwrap(),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    use std::io::Read;
    guard
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut out.stdout)
        .unwrap();
    guard
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut out.stderr)
        .unwrap();
    out
}

#[test]
fn up_on_a_port_in_use_fails_before_showing_or_keeping_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let https = taken.local_addr().unwrap();
    let out = run_up_until_exit(dir.path(), https);
    assert!(!out.status.success());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stderr.contains(&format!("cannot listen on {https}")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stdout.contains("API key"), "{stdout}");
    // No key was shown, so none was kept: the next run makes (and shows) one.
    assert!(!dir.path().join("api-keys.toml").exists());
}

//! A real gateway for the tests: Pingora with TLS (a self-signed certificate the client
//! trusts) and a plain loopback listener, dialing leases through the test net's relay.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::rt::{TokioExecutor, TokioIo};
use postern_gateway::runtime::Runtime;
use postern_sdk::protocol::permission;
use postern_sdk::Identity;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::sync::watch;

use crate::TestNet;

type Body = BoxBody<Bytes, hyper::Error>;

/// A running gateway.
pub struct TestGateway {
    pub https: SocketAddr,
    pub http: SocketAddr,
    /// The Prometheus listener.
    pub metrics: SocketAddr,
    /// An API key allowed on every lease.
    pub api_key: String,
    pub runtime: Arc<Runtime>,
    pub ca: CertificateDer<'static>,
    /// The config file the gateway watches (listeners on port 0); rewrite it to reload.
    pub config_path: std::path::PathBuf,
    /// The text first written there.
    pub toml: String,
    /// The bootstrap admin token, when the gateway runs the control plane.
    pub admin_token: Option<String>,
    shutdown: watch::Sender<bool>,
    serving: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `[[api_key]]` entry; returns the TOML and the key to present.
pub fn api_key_toml(id: &str, leases: &str, extra: &str) -> (String, String) {
    let (key, key_id, phc) = postern_gateway::auth::generate(id.len()).unwrap();
    // `generate` picks its own id: use it.
    let _ = id;
    (
        format!(
            "[[api_key]]\nid = \"{key_id}\"\nhash = \"{phc}\"\nname = \"test\"\nleases = [{leases}]\n{extra}\n"
        ),
        key,
    )
}

/// A gateway's files and configuration: its identity key, dial grants, a self-signed
/// certificate, an API key allowed on every lease, and the TOML naming them, with two free
/// loopback ports for the listeners.
pub struct GatewayFiles {
    pub dir: tempfile::TempDir,
    pub toml: String,
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub api_key: String,
    pub ca: CertificateDer<'static>,
}

impl GatewayFiles {
    /// Files for a gateway serving `leases` (name, owner), with `extra_toml` appended.
    pub fn new(net: &TestNet, leases: &[(&str, &Identity)], extra_toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let me = Identity::generate();
        let key_file = dir.path().join("gateway.key");
        me.save(&key_file).unwrap();
        let grant_file = dir.path().join("dial.grants");
        std::fs::write(
            &grant_file,
            postern_sdk::grant::to_file_text(&[net.grant(
                &me,
                "*",
                permission::DIAL,
                std::time::Duration::from_secs(3600),
            )]),
        )
        .unwrap();
        let cert = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
        ])
        .unwrap();
        let cert_path = dir.path().join("gw.crt");
        let key_path = dir.path().join("gw.key");
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
        net.save_control_plane_key(&dir.path().join("control-plane.key"));
        let extra_toml = extra_toml.replace("@DIR@", &dir.path().display().to_string());
        let (api_toml, api_key) = api_key_toml("all", "\"*\"", "");
        let https: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut toml = format!(
            "relays = [\"ws://{relay}\"]\nidentity_key_file = \"{key}\"\ngrant_file = \"{grants}\"\nbase_domain = \"gw.test\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n[listen]\nhttps = \"{https}\"\nhttp = \"{http}\"\n\n[[listen.tls]]\ncert = \"{cert}\"\nkey = \"{tkey}\"\nserver_names = [\"localhost\"]\n\n{api_toml}\n{extra_toml}\n",
            relay = net.relay_addr,
            key = key_file.display(),
            grants = grant_file.display(),
            cert = cert_path.display(),
            tkey = key_path.display(),
        );
        for (name, owner) in leases {
            toml.push_str(&format!(
                "[[lease]]\nname = \"{name}\"\nowner_identity = \"{}\"\n\n",
                owner.public_base64()
            ));
        }
        Self {
            dir,
            toml,
            https,
            http,
            api_key,
            ca: cert.cert.der().clone(),
        }
    }

    /// The TOML written to a file, for the `postern-gateway` binary.
    pub fn write_config(&self) -> std::path::PathBuf {
        let path = self.dir.path().join("gateway.toml");
        std::fs::write(&path, &self.toml).unwrap();
        path
    }

    /// Waits (bounded) until both listeners accept connections.
    pub async fn wait_for_listeners(&self) {
        for addr in [self.https, self.http] {
            for _ in 0..500 {
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

impl TestGateway {
    /// The setup most gateway tests start from: a test net, an origin exposed there as lease
    /// `web`, and a gateway for it with `extra_toml`. The net is returned to keep it running.
    pub async fn for_web_origin(extra_toml: &str) -> (TestNet, Self) {
        let net = TestNet::start().await;
        let origin = crate::spawn_origin().await;
        let owner = net.expose("web", origin).await;
        let gw = Self::start(&net, &[("web", &owner)], extra_toml).await;
        (net, gw)
    }

    /// Starts a gateway serving `leases` (name, owner) with `extra_toml` appended.
    pub async fn start(net: &TestNet, leases: &[(&str, &Identity)], extra_toml: &str) -> Self {
        let files = GatewayFiles::new(net, leases, extra_toml);
        // In process, the listeners take ports the system picks: no race for a free port.
        let toml = files
            .toml
            .replace(
                &format!("https = \"{}\"", files.https),
                "https = \"127.0.0.1:0\"",
            )
            .replace(
                &format!("http = \"{}\"", files.http),
                "http = \"127.0.0.1:0\"",
            );
        let config_path = files.dir.path().join("gateway.toml");
        std::fs::write(&config_path, &toml).unwrap();
        let config =
            postern_config::load_gateway(&config_path).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let opened = postern_gateway::control::open_with_keys(&config.control)
            .await
            .unwrap_or_else(|e| panic!("control plane: {e}"));
        let runtime = Runtime::start_with_control(config, opened.control, opened.keys).unwrap();
        postern_gateway::control::follow(Arc::clone(&runtime));
        let gateway = postern_gateway::server::Gateway::bind(Arc::clone(&runtime)).unwrap();
        let admin_token = postern_gateway::control::bootstrap_token(&runtime)
            .await
            .unwrap();
        let (https, http) = (gateway.https_addr().unwrap(), gateway.http_addr().unwrap());
        let metrics = gateway.metrics_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        let serving = tokio::spawn(gateway.serve(rx));
        postern_gateway::reload::watch(Arc::clone(&runtime), config_path.clone()).unwrap();
        Self {
            https,
            http,
            metrics,
            api_key: files.api_key,
            runtime,
            ca: files.ca,
            config_path,
            toml,
            admin_token,
            shutdown: tx,
            serving,
            _dir: files.dir,
        }
    }

    /// A gateway running the control plane on `db_url` (keys refreshed every 200 ms when
    /// another process changes them), with `extra_toml` appended.
    pub async fn start_with_control(
        net: &TestNet,
        leases: &[(&str, &Identity)],
        db_url: &str,
        extra_toml: &str,
    ) -> Self {
        let control = format!(
            "[control]\ndatabase_url = \"{db_url}\"\nsigning_key_file = \"@DIR@/control-plane.key\"\nrefresh_interval = \"200ms\"\n\n{extra_toml}"
        );
        Self::start(net, leases, &control).await
    }

    /// Writes `toml` over the watched config file and waits (bounded) until the gateway has
    /// applied a new snapshot or counted a failed reload; returns whether it was applied.
    pub async fn rewrite_config(&self, toml: &str) -> bool {
        let generation = self.runtime.snapshot().generation;
        let failed = self.reloads_failed();
        // Written whole and renamed over, as editors and config managers do.
        let tmp = self.config_path.with_extension("toml.new");
        std::fs::write(&tmp, toml).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
        for _ in 0..500 {
            if self.runtime.snapshot().generation > generation {
                return true;
            }
            if self.reloads_failed() > failed {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the gateway neither applied nor refused the new config within 5 s");
    }

    fn reloads_failed(&self) -> f64 {
        crate::metric_value(
            &self.runtime.metrics.render(),
            "postern_config_reloads_total{result=\"failed\"}",
        )
        .unwrap_or(0.0)
    }

    /// The text of `GET /metrics` from the metrics listener.
    pub async fn scrape(&self) -> String {
        crate::scrape(self.metrics).await
    }

    /// Starts a graceful shutdown: the listeners stop and idle connections are closed.
    pub fn begin_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Whether `Gateway::serve` has returned (after a shutdown: the gateway would exit now).
    pub fn has_stopped(&self) -> bool {
        self.serving.is_finished()
    }

    fn tls_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(postern_sdk::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Arc::new(cfg)
    }

    /// A TLS connection to the HTTPS listener offering `alpn`.
    pub async fn tls_stream(
        &self,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        self.tls(alpn).await
    }

    async fn tls(&self, alpn: &[&[u8]]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect(self.https).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        tokio_rustls::TlsConnector::from(self.tls_config(alpn))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }

    /// An HTTPS HTTP/1.1 connection.
    pub async fn h1(&self) -> hyper::client::conn::http1::SendRequest<Body> {
        crate::http1_client(self.tls(&[b"http/1.1"]).await).await
    }

    /// An HTTPS HTTP/2 connection.
    pub async fn h2(&self) -> hyper::client::conn::http2::SendRequest<Body> {
        let tls = self.tls(&[b"h2"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        sender
    }

    /// A plain HTTP/1.1 connection to the loopback listener.
    pub async fn plain(&self) -> hyper::client::conn::http1::SendRequest<Body> {
        crate::http1_client(tokio::net::TcpStream::connect(self.http).await.unwrap()).await
    }
}

/// A request with the gateway API key in the Authorization header.
pub fn authed(method: http::Method, uri: &str, key: &str, body: Body) -> http::Request<Body> {
    http::Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::HOST, "localhost")
        .header(http::header::AUTHORIZATION, format!("Bearer {key}"))
        .body(body)
        .unwrap()
}

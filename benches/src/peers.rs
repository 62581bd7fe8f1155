//! The peers a user would run instead of Postern, as child processes of the gateway bench:
//! nginx terminating TLS with an API-key check, rathole's Noise tunnel, and the two chained
//! (nginx → rathole → origin: as many processes on the path as Postern's gateway → relay →
//! agent).
//!
//! * **nginx** (Debian's package, found on `PATH` or in `/usr/sbin`): one process
//!   (`daemon off; master_process off;`, so the bench's child is the process that serves, and
//!   its CPU is in its own `/proc/<pid>/stat`). Without a master process nginx runs one event
//!   loop whatever `worker_processes` says; the config says `worker_processes 1` to match.
//!   One worker rather than `auto` (2 here): on this 2-core box the bench client and the origin
//!   take about a core, and in the chain rathole's two processes share the same cores, so a
//!   second worker would buy no core of its own, only a second copy of nginx contending for
//!   them (and a master process to meter as well). TLS 1.3 with the same certificate as the
//!   gateway; `Authorization: Bearer <key>` checked with a `map` and `return 401` (the same
//!   request the bench sends Postern, so every TLS path gets the same bytes); `/peer/<lease>/`
//!   stripped like the gateway's path routing; keep-alive upstream connections (`keepalive 64`,
//!   HTTP/1.1, `Connection ""`, no request limit on them, as on the client side); responses
//!   buffered in memory only (`proxy_max_temp_file_size 0`: a download waits for the client
//!   rather than spilling to a temp file, like Postern's back-pressure); no access log.
//!   Everything it writes (pid, logs, temp paths) stays in the bench's directory, so it needs
//!   no root and touches no system path.
//! * **rathole** 0.5.0 with the `noise` transport (`Noise_NK_25519_ChaChaPoly_BLAKE2s`, its
//!   default; keys from `rathole --genkey`): installed by `benches/setup-peers.sh` into
//!   `$POSTERN_TOOLS_DIR/bin` (default `/var/tmp/postern-tools/bin`), a bench peer only, never
//!   a dependency. Its server's service port forwards to the origin through its client;
//!   TCP_NODELAY on both ends; `RUST_LOG=warn` (no log line per connection). Each process runs
//!   tokio's default worker count (one per core), like the gateway and the relay. rathole 0.5.0
//!   sets TCP_NODELAY on its control and data channels but never on the connections accepted on
//!   its service port (a service's `nodelay` applies to its data channels) nor on the client's
//!   connection to the origin: a response that its copy loop writes in several pieces on a
//!   kept-alive connection waits for the peer's delayed ACK, ~40 ms for 64 KiB. That is
//!   rathole as a user gets it, and the bench measures it as such.
//!
//! Every port is a free loopback port. Readiness: a listening port here; the bench then checks
//! each path with real requests before loading it ([`check_api_key`] for nginx).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use http_body_util::{BodyExt, Empty};
use hyper::header::HOST;
use hyper::{Request, StatusCode};

use crate::children::{free_port, wait_for_port, Children};
use crate::load::{exchange, GatewayRoute};

/// Where `benches/setup-peers.sh` installs rathole unless `POSTERN_TOOLS_DIR` says otherwise.
pub const DEFAULT_TOOLS_DIR: &str = "/var/tmp/postern-tools";

/// The nginx binary, if installed.
pub fn nginx_bin() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file())
}

/// Where rathole is looked for: `$POSTERN_TOOLS_DIR/bin/rathole` (default
/// [`DEFAULT_TOOLS_DIR`]).
pub fn rathole_path() -> PathBuf {
    std::env::var_os("POSTERN_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_TOOLS_DIR))
        .join("bin")
        .join("rathole")
}

/// The rathole binary, if installed.
pub fn rathole_bin() -> Option<PathBuf> {
    Some(rathole_path()).filter(|p| p.is_file())
}

/// The peers' binaries, each `None` when not installed.
pub struct PeerTools {
    pub nginx: Option<PathBuf>,
    pub rathole: Option<PathBuf>,
}

impl PeerTools {
    pub fn find() -> Self {
        Self {
            nginx: nginx_bin(),
            rathole: rathole_bin(),
        }
    }

    /// One line naming what is missing, which peers are skipped for it and how to install it;
    /// `None` when both are there.
    pub fn missing(&self) -> Option<String> {
        let skipped = match (&self.nginx, &self.rathole) {
            (Some(_), Some(_)) => return None,
            (None, Some(_)) => "nginx is not installed (not on PATH, not /usr/sbin/nginx): \
                                nginx-tls and chain skipped"
                .to_owned(),
            (Some(_), None) => format!(
                "rathole is not installed ({} missing): rathole-noise and chain skipped",
                rathole_path().display()
            ),
            (None, None) => format!(
                "nginx and rathole are not installed (nginx not on PATH, {} missing): \
                 nginx-tls, rathole-noise and chain skipped",
                rathole_path().display()
            ),
        };
        Some(format!(
            "peers: {skipped}; install them with `bash benches/setup-peers.sh` \
             (POSTERN_TOOLS_DIR picks rathole's folder, default {DEFAULT_TOOLS_DIR})"
        ))
    }
}

/// One nginx in front of `upstream`.
pub struct Nginx {
    pub pid: u32,
    pub addr: SocketAddr,
}

/// What an nginx instance is given: TLS files, the key it accepts, the lease prefix it strips.
pub struct NginxSpec<'a> {
    pub name: &'a str,
    pub upstream: SocketAddr,
    pub cert: &'a Path,
    pub cert_key: &'a Path,
    pub api_key: &'a str,
    pub lease: &'a str,
}

/// Starts nginx as the module docs describe; returns once its port listens.
pub fn start_nginx(bin: &Path, children: &Children, dir: &Path, spec: &NginxSpec<'_>) -> Nginx {
    let name = spec.name;
    let prefix = dir.join(name);
    std::fs::create_dir_all(prefix.join("tmp")).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let p = |f: &str| prefix.join(f).display().to_string();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {pid};\n\
         error_log {err} warn;\nevents {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n\
         client_body_temp_path {tmp}/body;\n  proxy_temp_path {tmp}/proxy;\n\
         fastcgi_temp_path {tmp}/fastcgi;\n  uwsgi_temp_path {tmp}/uwsgi;\n\
         scgi_temp_path {tmp}/scgi;\n\
         map_hash_bucket_size 256;\n  map $http_authorization $postern_key_ok {{ default 0; \"Bearer {key}\" 1; }}\n\
         upstream origin {{ server {upstream}; keepalive 64; keepalive_requests 1000000; }}\n\
         server {{\n    listen {addr} ssl;\n    ssl_certificate {cert};\n\
         ssl_certificate_key {cert_key};\n    ssl_protocols TLSv1.3;\n\
         keepalive_requests 1000000;\n\
         location /peer/{lease}/ {{\n      if ($postern_key_ok = 0) {{ return 401; }}\n\
         proxy_pass http://origin/;\n      proxy_http_version 1.1;\n\
         proxy_set_header Connection \"\";\n      proxy_max_temp_file_size 0;\n    }}\n  }}\n}}\n",
        pid = p("nginx.pid"),
        err = p("error.log"),
        tmp = p("tmp"),
        key = spec.api_key,
        upstream = spec.upstream,
        cert = spec.cert.display(),
        cert_key = spec.cert_key.display(),
        lease = spec.lease,
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let nginx = || {
        let mut cmd = Command::new(bin);
        cmd.arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(prefix.join("error.log"));
        cmd
    };
    // `nginx -t` first: a bad config is reported, not a bare exit status.
    let test = nginx()
        .arg("-t")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    assert!(
        test.status.success(),
        "{name}: nginx -t failed: {}",
        String::from_utf8_lossy(&test.stderr)
    );
    let log = prefix.join("stderr.log");
    let pid = children.spawn(
        name,
        nginx()
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    wait_for_port(addr, children, &log);
    Nginx { pid, addr }
}

/// A rathole server and client, the server's service port forwarding to the origin.
pub struct Rathole {
    pub server_pid: u32,
    pub client_pid: u32,
    /// The server's service port (plain TCP; what a caller connects to).
    pub service: SocketAddr,
}

/// A Noise keypair from `rathole --genkey`: (private, public), base64.
fn genkey(bin: &Path) -> (String, String) {
    let out = Command::new(bin)
        .arg("--genkey")
        .output()
        .unwrap_or_else(|e| panic!("rathole --genkey: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut value_after = |label: &str| {
        lines
            .find(|l| l.starts_with(label))
            .and_then(|_| lines.next())
            .unwrap_or_else(|| panic!("rathole --genkey printed no {label}: {text}"))
            .to_owned()
    };
    let private = value_after("Private Key");
    let public = value_after("Public Key");
    (private, public)
}

/// Starts the rathole pair in front of `origin`; returns once its service port listens (the
/// server binds it when the client's control channel is up).
pub fn start_rathole(bin: &Path, children: &Children, dir: &Path, origin: SocketAddr) -> Rathole {
    let prefix = dir.join("rathole");
    std::fs::create_dir_all(&prefix).unwrap();
    let (private, public) = genkey(bin);
    let control = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let service = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let token = "postern-bench-token";
    let server = format!(
        "[server]\nbind_addr = \"{control}\"\n\n[server.transport]\ntype = \"noise\"\n\n\
         [server.transport.tcp]\nnodelay = true\n\n\
         [server.transport.noise]\nlocal_private_key = \"{private}\"\n\n\
         [server.services.web]\ntoken = \"{token}\"\nbind_addr = \"{service}\"\nnodelay = true\n"
    );
    let client = format!(
        "[client]\nremote_addr = \"{control}\"\n\n[client.transport]\ntype = \"noise\"\n\n\
         [client.transport.tcp]\nnodelay = true\n\n\
         [client.transport.noise]\nremote_public_key = \"{public}\"\n\n\
         [client.services.web]\ntoken = \"{token}\"\nlocal_addr = \"{origin}\"\nnodelay = true\n"
    );
    let start = |role: &str, conf: String| {
        let conf_path = prefix.join(format!("{role}.toml"));
        std::fs::write(&conf_path, conf).unwrap();
        let log = prefix.join(format!("{role}.log"));
        let pid = children.spawn(
            &format!("rathole {role}"),
            Command::new(bin)
                .arg(format!("--{role}"))
                .arg(&conf_path)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap()),
        );
        (pid, log)
    };
    let (server_pid, server_log) = start("server", server);
    wait_for_port(control, children, &server_log);
    let (client_pid, _client_log) = start("client", client);
    // The service port opens once the client has logged in.
    wait_for_port(service, children, &server_log);
    Rathole {
        server_pid,
        client_pid,
        service,
    }
}

/// GET `path` through nginx three times on one keep-alive connection: with the key (must be 200), without any `Authorization` header and with a wrong key (both must be
/// 401). Returns `Err` saying what came back otherwise, so the bench fails before it loads a
/// proxy that does not check the key.
pub async fn check_api_key(route: &GatewayRoute, path: &str) -> Result<(), String> {
    let without = Request::get(format!("/peer/{}{path}", route.lease))
        .header(HOST, "localhost")
        .body(Empty::new().map_err(|n| match n {}).boxed())
        .map_err(|e| e.to_string())?;
    let wrong = format!("{}x", route.api_key);
    let cases = [
        (
            "with the key",
            route.get(path, &route.api_key),
            StatusCode::OK,
        ),
        ("without a key", without, StatusCode::UNAUTHORIZED),
        (
            "with a wrong key",
            route.get(path, &wrong),
            StatusCode::UNAUTHORIZED,
        ),
    ];
    let mut sender = route.connect().await;
    for (what, req, want) in cases {
        let (status, _) = exchange(&mut sender, req)
            .await
            .map_err(|e| format!("GET {path} {what}: {e}"))?;
        if status != want {
            return Err(format!(
                "GET {path} {what} through {} answered {status}, not {want}",
                route.addr
            ));
        }
    }
    Ok(())
}

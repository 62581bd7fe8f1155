//! A real MCP client through the gateway: the official MCP Python SDK (`mcp`) speaks Streamable
//! HTTP — JSON-RPC POSTs answered with SSE streams, a long-lived GET stream, an `Mcp-Session-Id`
//! header — to a FastMCP server behind `postern expose`, through the gateway over HTTPS.
//!
//! caller (tests/mcp/client.py) → gateway (TLS, API key) → relay → expose → tests/mcp/server.py
//!
//! Python: `POSTERN_TEST_PYTHON` if set (.ci/run sets it); otherwise a venv under the cargo target
//! directory, created and filled from tests/mcp/requirements.txt on first use. Without a Python
//! that can import `mcp` the test fails and says how to get one: it never skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postern_tests::gateway::TestGateway;
use postern_tests::TestNet;

const LEASE: &str = "mcp-demo";
/// One whole client session (initialize, list, three calls, close).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Python start-up and `import mcp` on a cold, busy machine.
const PYTHON_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Creating the venv and `pip install` from PyPI, first run only.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(900);
const ECHO: &str = "hello through postern";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_mcp_client_lists_and_calls_tools_through_the_gateway_with_an_api_key() {
    let started = Instant::now();
    let (python, version) = blocking(python_with_mcp).await;
    eprintln!("gateway_mcp: {} ({version})", python.display());
    let server = {
        let python = python.clone();
        blocking(move || McpServer::start(&python)).await
    };

    let net = TestNet::start().await;
    let owner = net.expose(LEASE, server.addr).await;
    let gw = TestGateway::start(&net, &[(LEASE, &owner)], "").await;
    let dir = tempfile::tempdir().expect("temp dir");
    // Python's ssl takes the DER certificate as it is (client.py tells PEM from DER).
    let ca = dir.path().join("gateway-ca.der");
    std::fs::write(&ca, gw.ca.as_ref()).expect("write the gateway CA");
    let url = format!("https://localhost:{}/peer/{LEASE}/mcp", gw.https.port());

    let run = run_client(&python, &server, &url, &ca, Key::Bearer(&gw.api_key)).await;
    assert!(
        run.ok(),
        "the MCP session through the gateway failed\n{run}"
    );
    assert_eq!(run.field("server"), Some(r#""postern-mcp-demo""#), "{run}");
    assert_eq!(
        run.field("tools"),
        Some(r#"["add","echo","seen_headers"]"#),
        "{run}"
    );
    assert_eq!(run.field("add"), Some(r#""42""#), "add(2, 40)\n{run}");
    assert_eq!(
        run.field("echo"),
        Some(format!("\"{ECHO}\"").as_str()),
        "{run}"
    );
    // What reached the service: the Host it accepts (expose rewrites it), and no gateway
    // credentials.
    let seen = format!(
        r#"{{"authorization":null,"host":"127.0.0.1:{}","x-api-key":null}}"#,
        server.addr.port()
    );
    assert_eq!(run.field("seen"), Some(seen.as_str()), "{run}");

    let run = run_client(&python, &server, &url, &ca, Key::Header(&gw.api_key)).await;
    assert!(run.ok(), "the same session with X-API-Key failed\n{run}");
    assert_eq!(run.field("add"), Some(r#""42""#), "{run}");

    // The key is what lets the client through: without one the gateway answers the very first
    // request (initialize) with 401 and the session never starts.
    let run = run_client(&python, &server, &url, &ca, Key::None).await;
    assert!(!run.ok(), "a client without an API key got through\n{run}");
    assert_eq!(run.field("statuses"), Some("[401]"), "{run}");
    assert_eq!(run.field("tools"), None, "{run}");

    eprintln!("gateway_mcp: done in {:.1?}", started.elapsed());
}

/// How the client presents the gateway API key.
enum Key<'a> {
    Bearer(&'a str),
    Header(&'a str),
    None,
}

/// One run of tests/mcp/client.py.
struct ClientRun {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    server_stderr: String,
}

impl ClientRun {
    fn ok(&self) -> bool {
        self.status.success()
    }

    /// The value of the client's `{"<key>":<value>}` output line, as compact JSON text.
    fn field(&self, key: &str) -> Option<&str> {
        let prefix = format!("{{\"{key}\":");
        self.stdout
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str())?.strip_suffix('}'))
    }
}

impl std::fmt::Display for ClientRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "client {}\n--- client stdout\n{}--- client stderr\n{}--- server stderr\n{}",
            self.status, self.stdout, self.stderr, self.server_stderr
        )
    }
}

async fn run_client(
    python: &Path,
    server: &McpServer,
    url: &str,
    ca: &Path,
    key: Key<'_>,
) -> ClientRun {
    let mut cmd = Command::new(python);
    cmd.arg(mcp_dir().join("client.py"))
        .args(["--url", url, "--echo", ECHO])
        .arg("--ca")
        .arg(ca)
        // Its own deadline first, so a hang still prints what happened so far.
        .args(["--timeout", &(CLIENT_TIMEOUT.as_secs() - 10).to_string()]);
    match key {
        Key::Bearer(k) => cmd.args(["--api-key", k]),
        Key::Header(k) => cmd.args(["--api-key", k, "--header", "x-api-key"]),
        Key::None => &mut cmd,
    };
    let out = blocking(move || run(&mut cmd, CLIENT_TIMEOUT))
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- server stderr\n{}", server.stderr()));
    ClientRun {
        status: out.status,
        stdout: out.stdout,
        stderr: out.stderr,
        server_stderr: server.stderr(),
    }
}

/// tests/mcp/server.py, killed when dropped.
struct McpServer {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl McpServer {
    /// Starts the server and waits for the `PORT <n>` line it prints once it listens.
    fn start(python: &Path) -> Self {
        let mut child = Command::new(python)
            .arg(mcp_dir().join("server.py"))
            // It exits when our end of its stdin closes, even if this process is killed.
            .arg("--exit-with-stdin")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {} tests/mcp/server.py: {e}", python.display())
            });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_reader = drain(
            child.stderr.take().expect("piped stderr"),
            Arc::clone(&stderr),
        );
        let lines = stdout_lines(child.stdout.take().expect("piped stdout"));
        let mut server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr,
        };
        let deadline = Instant::now() + PYTHON_START_TIMEOUT;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(wait) {
                Ok(line) => {
                    if let Some(port) = line.strip_prefix("PORT ") {
                        let port: u16 = port
                            .trim()
                            .parse()
                            .unwrap_or_else(|e| panic!("server.py printed {line:?}: {e}"));
                        server.addr.set_port(port);
                        return server;
                    }
                }
                Err(e) => {
                    // Stop it and read everything it said before saying why it failed.
                    let _ = server.child.kill();
                    let status = server.child.wait();
                    let _ = stderr_reader.join();
                    panic!(
                        "tests/mcp/server.py printed no `PORT <n>` line ({e}; {status:?})\n\
                         --- server stderr\n{}",
                        server.stderr()
                    )
                }
            }
        }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr buffer")).into_owned()
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python interpreter that can `import mcp` and the `mcp` version, or a panic saying how to
/// get one.
fn python_with_mcp() -> (PathBuf, String) {
    if let Some(python) = std::env::var_os("POSTERN_TEST_PYTHON") {
        // Relative paths mean relative to here; the commands below run elsewhere.
        let python = match Path::new(&python).components().count() {
            1 => PathBuf::from(python),
            _ => std::path::absolute(&python).expect("absolute POSTERN_TEST_PYTHON"),
        };
        match mcp_version(&python) {
            Ok(version) => return (python, version),
            Err(why) => panic!(
                "POSTERN_TEST_PYTHON={} cannot import mcp: {why}\n\
                 Install it with `{} -m pip install -r tests/mcp/requirements.txt`, or unset \
                 POSTERN_TEST_PYTHON and this test makes its own venv.",
                python.display(),
                python.display()
            ),
        }
    }
    let venv = venv_dir();
    let python = venv.join("bin").join("python");
    if let Ok(version) = mcp_version(&python) {
        return (python, version);
    }
    eprintln!(
        "gateway_mcp: installing the MCP Python SDK into {} (first run only)",
        venv.display()
    );
    let help = "Install python3 with venv and pip (Debian/Ubuntu: apt-get install -y python3 \
                python3-venv python3-pip), or set POSTERN_TEST_PYTHON to a Python that has the \
                packages in tests/mcp/requirements.txt.";
    let created = run(
        Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .current_dir(std::env::temp_dir()),
        INSTALL_TIMEOUT,
    );
    match created {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`python3 -m venv {}` failed ({})\n{}{}\n{help}",
            venv.display(),
            out.status,
            out.stdout,
            out.stderr
        ),
        Err(e) => panic!("{e}\n{help}"),
    }
    let installed = run(
        Command::new(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check", "-r"])
            .arg(mcp_dir().join("requirements.txt"))
            .current_dir(std::env::temp_dir()),
        INSTALL_TIMEOUT,
    );
    match installed {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "pip could not install tests/mcp/requirements.txt into {} ({})\n{}{}\n{help}",
            venv.display(),
            out.status,
            out.stdout,
            out.stderr
        ),
        Err(e) => panic!("{e}\n{help}"),
    }
    match mcp_version(&python) {
        Ok(version) => (python, version),
        Err(why) => panic!(
            "{} still cannot import mcp: {why}\n{help}",
            python.display()
        ),
    }
}

/// The installed `mcp` version, or why `python` cannot import the parts of it the scripts use.
fn mcp_version(python: &Path) -> Result<String, String> {
    let out = run(
        Command::new(python)
            .args([
                "-c",
                "import mcp.client.streamable_http, mcp.server.fastmcp, importlib.metadata as m; \
                 print('mcp', m.version('mcp'))",
            ])
            // Not tests/: there `import mcp` would find the tests/mcp folder.
            .current_dir(std::env::temp_dir()),
        PYTHON_START_TIMEOUT,
    )?;
    if out.status.success() {
        Ok(out.stdout.trim().to_owned())
    } else {
        let last = out
            .stderr
            .trim()
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned();
        Err(format!("{}: {last}", out.status))
    }
}

/// The venv this test makes for itself: in the cargo target directory (the test binary is
/// `<target>/<profile>/deps/<name>`), so `cargo clean` removes it; the temp dir otherwise.
fn venv_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(std::env::temp_dir)
        .join("postern-test-python")
}

fn mcp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp")
}

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion with a deadline; on timeout kills it and says what it printed.
fn run(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        drain(
            child.stdout.take().expect("piped stdout"),
            Arc::clone(&stdout),
        ),
        drain(
            child.stderr.take().expect("piped stderr"),
            Arc::clone(&stderr),
        ),
    ];
    let text = |buf: &Arc<Mutex<Vec<u8>>>| {
        String::from_utf8_lossy(&buf.lock().expect("output buffer")).into_owned()
    };
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                // Let the readers catch up (not join: a grandchild may still hold the pipes).
                std::thread::sleep(Duration::from_millis(200));
                return Err(format!(
                    "{what} did not finish within {timeout:?}\n--- stdout\n{}--- stderr\n{}",
                    text(&stdout),
                    text(&stderr)
                ));
            }
            Err(e) => return Err(format!("waiting for {what}: {e}")),
        }
    };
    for reader in readers {
        let _ = reader.join();
    }
    Ok(Output {
        status,
        stdout: text(&stdout),
        stderr: text(&stderr),
    })
}

/// Copies everything `from` yields into `into` on a thread of its own, so pipes never fill up.
fn drain(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n @ 1..) = from.read(&mut chunk) {
            into.lock()
                .expect("output buffer")
                .extend_from_slice(&chunk[..n]);
        }
    })
}

/// The lines of a child's stdout, read on a thread of its own until it closes.
fn stdout_lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Keep reading after the receiver is gone, so the child never blocks on a full pipe.
            let _ = tx.send(line);
        }
    });
    rx
}

/// Runs blocking work (child processes, pipes) off the async workers; a panic stays a panic.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("blocking task: {e}"),
        },
    }
}

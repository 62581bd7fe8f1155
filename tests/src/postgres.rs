//! A real PostgreSQL server for one test: a fresh cluster (`initdb`) in a temp dir, listening
//! on a free loopback port (and a Unix socket in that dir), trust auth for user `postern`,
//! stopped (fast shutdown) and deleted when the [`TestPostgres`] is dropped.
//!
//! PostgreSQL refuses to run as root; under root (CI) the cluster is made and run as the
//! `postgres` system user that Debian's package creates (`setpriv`). The binaries come from
//! `$POSTERN_PG_BIN` or Debian's `/usr/lib/postgresql/<version>/bin`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READY_WITHIN: Duration = Duration::from_secs(30);

/// A PostgreSQL server child process.
pub struct TestPostgres {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for TestPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPostgres")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .finish()
    }
}

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("POSTERN_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|p| p.join("initdb").exists());
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): \
             apt-get install postgresql (.ci/run does), or set POSTERN_PG_BIN"
        )
    })
}

fn is_root() -> bool {
    // The effective uid, without libc: /proc/self/status's "Uid:" line.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A command that runs `program` as the `postgres` user when we are root.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        // setpriv execs the program itself (no forked parent in between), so the child's pid
        // is the server's and signals reach it.
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            "--",
        ])
        .arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

impl TestPostgres {
    /// Starts a fresh server and waits until it accepts connections. Panics when it cannot.
    pub fn start() -> Self {
        let bin = bin_dir();
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(&bin) {
                Ok(pg) => return pg,
                Err(e) => last = e,
            }
        }
        panic!("PostgreSQL did not start: {last}");
    }

    fn try_start(bin: &Path) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("postern-pg-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let data = dir.path().join("data");
        if is_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .map_err(|e| format!("chown: {e}"))?;
            if !status.success() {
                return Err("chown of the temp dir to postgres failed".into());
            }
        }
        let out = as_server_user(&bin.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postern", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let port = free_port();
        let child = as_server_user(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=50"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("postgres: {e}"))?;
        let mut pg = Self { port, child, dir };
        let deadline = Instant::now() + READY_WITHIN;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = pg.child.try_wait() {
                return Err(format!("postgres exited: {status}"));
            }
            // The socket file appears once the server accepts; TCP confirms the port.
            let socket = pg.dir.path().join(format!(".s.PGSQL.{port}"));
            if socket.exists() && TcpStream::connect(("127.0.0.1", port)).is_ok() {
                std::thread::sleep(Duration::from_millis(100));
                return Ok(pg);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("postgres did not accept connections in time".into())
    }

    /// The URL of the server's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postern@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// The two stores every control-plane test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A database of either kind for one test: its URL, and what keeps it alive.
pub struct TestDb {
    pub url: String,
    pub kind: Db,
    _pg: Option<TestPostgres>,
    _dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb").field("kind", &self.kind).finish()
    }
}

impl TestDb {
    pub fn new(kind: Db) -> Self {
        match kind {
            Db::Sqlite => {
                let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
                let url = format!("sqlite://{}", dir.path().join("control.db").display());
                Self {
                    url,
                    kind,
                    _pg: None,
                    _dir: Some(dir),
                }
            }
            Db::Postgres => {
                let pg = TestPostgres::start();
                Self {
                    url: pg.url(),
                    kind,
                    _pg: Some(pg),
                    _dir: None,
                }
            }
        }
    }
}

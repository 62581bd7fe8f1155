//! A real `redis-server` on a free loopback port, for end-to-end tests of the shared rate limit.
//!
//! The server keeps nothing on disk (`--save "" --appendonly no`, working directory in a temp
//! dir) and is killed when the [`TestRedis`] is dropped. Readiness is checked over raw TCP (this
//! crate has no Redis client): the server must answer `INFO server` with *its own* process id,
//! so a server of another test that happens to hold the port is never mistaken for ours.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh server may take to answer.
const READY_WITHIN: Duration = Duration::from_secs(5);

/// A `redis-server` child process listening on `127.0.0.1:{port}`.
pub struct TestRedis {
    /// The loopback port the server listens on.
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for TestRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRedis")
            .field("port", &self.port)
            .field("pid", &self.child.id())
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl TestRedis {
    /// Starts a server on a free loopback port and waits (at most ~5 s) until it answers.
    ///
    /// Panics if `redis-server` is not installed or does not come up.
    pub fn start() -> Self {
        // Picking a free port and binding it later races with other tests; retry a few times.
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start_on(free_port()) {
                Ok(redis) => return redis,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// Starts a server on `port` (e.g. to restart one on the same port after [`stop`](Self::stop)).
    pub fn start_on(port: u16) -> Self {
        Self::try_start_on(port).unwrap_or_else(|e| panic!("redis-server did not start: {e}"))
    }

    fn try_start_on(port: u16) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}): install redis-server; .ci/run does")
            });
        let mut redis = Self { port, child, dir };
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(Some(status)) = redis.child.try_wait() {
                return Err(format!("redis-server on port {port} exited: {status}"));
            }
            if server_pid(port) == Some(redis.child.id()) {
                return Ok(redis);
            }
            if Instant::now() >= deadline {
                redis.stop();
                return Err(format!(
                    "redis-server on port {port} did not answer within {READY_WITHIN:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:{port}/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server and waits for it to exit (idempotent).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// The `process_id` the server on `127.0.0.1:port` reports in `INFO server`, if it answers
/// (used by the benches too: a server that merely holds the port is never taken for ours).
pub fn server_pid(port: u16) -> Option<u32> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header).ok()?;
    let len: usize = header.strip_prefix('$')?.trim_end().parse().ok()?;
    let mut body = vec![0u8; len.min(1 << 20)];
    reader.read_exact(&mut body).ok()?;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_stops_and_restarts_on_the_same_port() {
        let mut redis = TestRedis::start();
        let port = redis.port;
        assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}/"));
        assert!(server_pid(port).is_some());
        redis.stop();
        assert!(server_pid(port).is_none());
        let again = TestRedis::start_on(port);
        assert_eq!(server_pid(port), Some(again.child.id()));
    }
}

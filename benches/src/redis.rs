//! A real `redis-server` child on a free loopback port, for the gateway's Redis-backed rate
//! limits; the approach of `postern_tests::redis::TestRedis`, but started through
//! [`Children`] so that it is killed with the other children (exit, panic, Ctrl-C) and its pid
//! can be metered.
//!
//! The server keeps nothing on disk (`--save "" --appendonly no`, its directory under the
//! bench's temporary directory). Readiness is checked over raw TCP: the server must answer
//! `INFO server` with its own process id, so a server that happens to hold the port is never
//! mistaken for ours.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::children::{free_port, Children};
use postern_tests::redis::server_pid;

/// How long a fresh server may take to answer.
const READY_WITHIN: Duration = Duration::from_secs(5);

/// A running `redis-server` on `127.0.0.1:{port}`.
#[derive(Debug, Clone, Copy)]
pub struct Redis {
    pub port: u16,
    pub pid: u32,
}

impl Redis {
    /// `redis://127.0.0.1:{port}/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

/// Starts `redis-server` on a free loopback port (a few ports are tried: picking a free port
/// and binding it later races with other processes); `Err` says why not, e.g. that
/// `redis-server` is not installed.
pub fn start_redis(children: &Children, dir: &Path) -> Result<Redis, String> {
    Command::new("redis-server")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run redis-server: {e}"))?;
    let mut last = String::new();
    for _ in 0..5 {
        let port = free_port();
        let data = dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        let pid = children.spawn(
            "redis-server",
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&data)
                .current_dir(&data)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if server_pid(port) == Some(pid) {
                return Ok(Redis { port, pid });
            }
            if !children.is_running(pid) {
                last = format!("redis-server on port {port} exited");
                break;
            }
            if Instant::now() >= deadline {
                last =
                    format!("redis-server on port {port} did not answer within {READY_WITHIN:?}");
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        children.stop(pid);
    }
    Err(last)
}

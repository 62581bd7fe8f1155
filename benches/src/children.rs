//! The processes under test as children of the bench: finding the release binaries, starting
//! them, waiting for their ports, and killing them on exit, on panic and on Ctrl-C.
//!
//! Nothing here knows what the children are; `stack.rs` starts the relay and the agent.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Child processes, killed by [`Guard`]'s `Drop` or by the Ctrl-C handler.
#[derive(Clone, Default)]
pub struct Children(Arc<Mutex<Vec<(String, Child)>>>);

impl Children {
    /// Starts `cmd`; returns its pid.
    ///
    /// # Panics
    /// If the process cannot be started.
    pub fn spawn(&self, name: &str, cmd: &mut Command) -> u32 {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let pid = child.id();
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_owned(), child));
        pid
    }

    /// Panics if a child has already exited.
    pub fn check_alive(&self) {
        let mut kids = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (name, child) in kids.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{name} exited early ({status})");
            }
        }
    }

    /// Whether the child `pid` is still running (false once it exited or was stopped).
    pub fn is_running(&self, pid: u32) -> bool {
        let mut kids = self.0.lock().unwrap_or_else(|e| e.into_inner());
        kids.iter_mut()
            .find(|(_, c)| c.id() == pid)
            .is_some_and(|(_, c)| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the child `pid`, waits for it and forgets it (so that [`check_alive`] does not
    /// count it as exited early). Does nothing for a pid that is not one of these children.
    ///
    /// [`check_alive`]: Self::check_alive
    pub fn stop(&self, pid: u32) {
        let mut kids = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = kids.iter().position(|(_, c)| c.id() == pid) {
            let (_, mut child) = kids.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn kill_all(&self) {
        let mut kids = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (_, mut child) in kids.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// On Ctrl-C: kills the children, removes `dir` and exits with status 130.
    pub fn kill_on_ctrl_c(&self, rt: &tokio::runtime::Runtime, dir: &Path) {
        let children = self.clone();
        let dir = dir.to_path_buf();
        rt.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                children.kill_all();
                let _ = std::fs::remove_dir_all(&dir);
                eprintln!("interrupted; child processes killed");
                std::process::exit(130);
            }
        });
    }
}

/// Kills the children and removes the temporary directory, also while unwinding a panic.
pub struct Guard {
    pub children: Children,
    pub dir: PathBuf,
}

impl Guard {
    /// A fresh temporary directory for keys, configs and logs.
    pub fn new(children: Children) -> Self {
        Self {
            children,
            dir: temp_dir(),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.children.kill_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn temp_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir =
        std::env::temp_dir().join(format!("postern-bench-{}-{nanos:08x}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// Runs a CLI command to completion.
///
/// # Panics
/// If it cannot be run or fails.
pub fn run_cli(cli: &Path, args: &[&str]) {
    let out = Command::new(cli)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", cli.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        cli.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("binding 127.0.0.1:0: {e}"))
}

/// The last 20 lines of a log file, for a panic message.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Waits up to 15 s for something to listen on `addr`.
///
/// # Panics
/// If a child exits or nothing listens in time (with the tail of `log`).
pub fn wait_for_port(addr: SocketAddr, children: &Children, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        children.check_alive();
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listening on {addr}; log:\n{}", log_tail(log));
}

/// Binaries named `names` next to this bench executable (it lives in `<target>/release/deps/`),
/// in `$POSTERN_BIN_DIR`, or in `$CARGO_TARGET_DIR/release`: all from the first directory that
/// has them all. `Err` lists the directories searched.
pub fn locate_binaries(names: &[&str]) -> Result<Vec<PathBuf>, Vec<PathBuf>> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("POSTERN_BIN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(d) = exe.parent().and_then(Path::parent) {
            dirs.push(d.to_path_buf());
        }
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(PathBuf::from(t).join("release"));
    }
    for d in &dirs {
        let bins: Vec<PathBuf> = names.iter().map(|n| d.join(n)).collect();
        if bins.iter().all(|b| b.is_file()) {
            return Ok(bins);
        }
    }
    Err(dirs)
}

/// [`locate_binaries`], or a message saying what to build and exit status 2.
/// `bench` names the bench in the message; `build` is the cargo command that builds them.
pub fn binaries_or_exit(bench: &str, names: &[&str], build: &str) -> Vec<PathBuf> {
    match locate_binaries(names) {
        Ok(bins) => bins,
        Err(searched) => {
            let names = match names {
                [] => String::new(),
                [one] => format!("{one} binary was"),
                [init @ .., last] => format!("{} and {last} binaries were", init.join(", ")),
            };
            eprintln!(
                "{bench} bench: the {names} not found (looked in {}).\n\
                 Build them first, with the same target directory as the bench:\n\
                 \x20   {build}\n\
                 or point POSTERN_BIN_DIR at the directory that holds them.",
                searched
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            std::process::exit(2);
        }
    }
}

/// Prints a warning when a source file of `crates` (workspace folders) is newer than `binary`.
pub fn warn_if_stale(binary: &Path, crates: &[&str], build: &str) {
    if let Some(src) = newer_source_than(binary, crates) {
        println!(
            "  WARNING: {} is older than {}; rebuild with `{build}`",
            binary.display(),
            src.display()
        );
    }
}

/// Whether a source file of `crates` (workspace folders such as `sdk`, `relay`) is newer than
/// `binary`: the binary is then likely stale. Returns the newest such file.
pub fn newer_source_than(binary: &Path, crates: &[&str]) -> Option<PathBuf> {
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    let mut stack: Vec<PathBuf> = crates
        .iter()
        .flat_map(|c| [root.join(c).join("src"), root.join(c).join("Cargo.toml")])
        .collect();
    let mut visited = 0;
    while let Some(path) = stack.pop() {
        visited += 1;
        if visited > 10_000 {
            break;
        }
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
            }
        } else if let Ok(modified) = meta.modified() {
            if newest.as_ref().is_none_or(|(t, _)| modified > *t) {
                newest = Some((modified, path));
            }
        }
    }
    newest.filter(|(t, _)| *t > built).map(|(_, p)| p)
}

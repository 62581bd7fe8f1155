//! Helpers shared by the Postern benches (`benches/crypto.rs`, `benches/tunnel.rs`).
//!
//! Linux-only measurement helpers: per-thread CPU time and a process's resident set size, both
//! read from `/proc` (no `unsafe`, no extra dependencies).

use std::path::{Path, PathBuf};

/// CPU time this thread has used so far, in nanoseconds (`/proc/thread-self/schedstat`), or
/// `None` where that file does not exist. The kernel updates it at least once per tick, so time
/// spans of a few hundred milliseconds or more are needed for a precise difference.
pub fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resident set size (`VmRSS`) of process `pid`, in bytes.
pub fn vm_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The `postern-relay` and `postern` binaries next to this bench executable (it lives in
/// `<target>/release/deps/`), in `$POSTERN_BIN_DIR`, or in `$CARGO_TARGET_DIR/release`.
pub fn locate_binaries() -> Result<(PathBuf, PathBuf), Vec<PathBuf>> {
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
        let relay = d.join("postern-relay");
        let cli = d.join("postern");
        if relay.is_file() && cli.is_file() {
            return Ok((relay, cli));
        }
    }
    Err(dirs)
}

/// Whether a source file of the crates the binaries are built from (`sdk`, `relay`, `config`)
/// is newer than `binary`: the binaries are then likely stale. Returns the newest such file.
pub fn newer_source_than(binary: &Path) -> Option<PathBuf> {
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    let mut stack: Vec<PathBuf> = ["sdk", "relay", "config"]
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

/// The `p`-quantile (0..=1) of sorted samples, nearest-rank; 0 when empty.
pub fn quantile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 50);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&v, 1.0), 100);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn reads_own_rss() {
        assert!(vm_rss_bytes(std::process::id()).unwrap_or(0) > 0);
    }
}

//! Telling a program that its configuration file may have changed.
//!
//! [`ConfigWatcher`] merges two sources into one stream of [`ReloadTrigger`]s: filesystem
//! events for the file (via `notify`) and SIGHUP. It watches the file's **parent directory**,
//! not the file: editors save by writing a new file and renaming it over the old one, and a
//! Kubernetes ConfigMap swaps a `..data` symlink, and in both cases a watch on the old inode
//! would never fire again. Events are filtered to the file's name (and to the `..`-prefixed
//! names a ConfigMap uses), and a burst of them within the debounce interval becomes one
//! trigger.
//!
//! This module only says "look again". It never reads or parses the file and never decides
//! whether a change is valid — the caller re-reads and validates the whole file (see
//! [`crate::load_relay`]) and keeps its running configuration if that fails.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

/// Filesystem events waiting to be debounced. They carry no data, so a full queue loses
/// nothing: a trigger is already pending.
const QUEUE: usize = 16;

/// However long a burst goes on, a trigger comes at the latest this many debounce intervals
/// after its first event, so a file rewritten without pause is still reloaded.
const MAX_DEBOUNCE_ROUNDS: u32 = 8;

/// Why a reload was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadTrigger {
    /// The file, or the directory entry that points at it, changed.
    File,
    /// The process received SIGHUP.
    Signal,
}

/// Why a [`ConfigWatcher`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The path names no file (`/`, `..`, empty).
    #[error("{}: not a file path", path.display())]
    NotAFile { path: PathBuf },
    /// The filesystem watch could not be set up (no such directory, inotify limits).
    #[error("watching {}: {source}", path.display())]
    Notify {
        path: PathBuf,
        source: notify::Error,
    },
    /// The SIGHUP handler could not be installed (e.g. no tokio runtime with signals).
    #[error("installing the SIGHUP handler: {0}")]
    Signal(std::io::Error),
}

/// Watches one configuration file and SIGHUP; see the module documentation.
pub struct ConfigWatcher {
    // Held for its side effect: dropping it stops the watch and closes `events`.
    _watcher: RecommendedWatcher,
    events: mpsc::Receiver<()>,
    hangup: Signal,
    debounce: Duration,
}

impl std::fmt::Debug for ConfigWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigWatcher")
            .field("debounce", &self.debounce)
            .finish_non_exhaustive()
    }
}

impl ConfigWatcher {
    /// Starts watching `path`'s directory and SIGHUP. Must be called inside a tokio runtime.
    ///
    /// If `path` is a symlink, the directory of its target is watched too (an edit of the
    /// target then triggers as well).
    pub fn new(path: &Path, debounce: Duration) -> Result<Self, WatchError> {
        let not_a_file = || WatchError::NotAFile {
            path: path.to_path_buf(),
        };
        let name = path.file_name().ok_or_else(not_a_file)?.to_os_string();
        let dir = parent_dir(path);
        let mut watched = vec![(dir, name)];
        if let Ok(target) = std::fs::canonicalize(path) {
            if let Some(target_name) = target.file_name() {
                let target_dir = parent_dir(&target);
                let same_dir =
                    std::fs::canonicalize(&watched[0].0).ok().as_ref() == Some(&target_dir);
                if !same_dir || target_name != watched[0].1 {
                    watched.push((target_dir, target_name.to_os_string()));
                }
            }
        }
        let names: HashSet<OsString> = watched.iter().map(|(_, n)| n.clone()).collect();

        let hangup = signal(SignalKind::hangup()).map_err(WatchError::Signal)?;
        let (tx, events) = mpsc::channel(QUEUE);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = match &event {
                    Ok(event) => is_relevant(event, &names),
                    Err(e) => {
                        // An overflowed queue and the like: something may have changed unseen.
                        tracing::warn!(error = %e, "config watch error; treating it as a change");
                        true
                    }
                };
                if relevant {
                    // Full: a trigger is already pending. Closed: the watcher is being dropped.
                    let _ = tx.try_send(());
                }
            })
            .map_err(|source| WatchError::Notify {
                path: path.to_path_buf(),
                source,
            })?;
        let mut dirs = HashSet::new();
        for (dir, _) in &watched {
            if dirs.insert(dir.clone()) {
                watcher
                    .watch(dir, RecursiveMode::NonRecursive)
                    .map_err(|source| WatchError::Notify {
                        path: dir.clone(),
                        source,
                    })?;
            }
        }
        Ok(Self {
            _watcher: watcher,
            events,
            hangup,
            debounce,
        })
    }

    /// Waits for the next (debounced) trigger. Never returns `None` while the watcher lives
    /// unless the notify backend died; then returns `None`.
    pub async fn changed(&mut self) -> Option<ReloadTrigger> {
        tokio::select! {
            event = self.events.recv() => {
                event?;
            }
            _ = self.hangup.recv() => return Some(ReloadTrigger::Signal),
        }
        // Trailing-edge debounce: wait until `debounce` passes without another event, but not
        // longer than MAX_DEBOUNCE_ROUNDS intervals in all.
        let deadline = tokio::time::Instant::now() + self.debounce * MAX_DEBOUNCE_ROUNDS;
        loop {
            let quiet = tokio::time::sleep(self.debounce);
            tokio::select! {
                _ = quiet => return Some(ReloadTrigger::File),
                _ = tokio::time::sleep_until(deadline) => return Some(ReloadTrigger::File),
                event = self.events.recv() => {
                    // The backend died mid-burst: the change already seen still counts.
                    if event.is_none() {
                        return Some(ReloadTrigger::File);
                    }
                }
                _ = self.hangup.recv() => return Some(ReloadTrigger::Signal),
            }
        }
    }
}

/// The directory holding `path`; `.` for a bare file name.
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether `event` may mean the file changed: a mutation naming the file, or any entry whose
/// name starts with `..` (a ConfigMap's `..data` symlink and its timestamped directories).
/// Reads (access events) are ignored, so reloading never triggers itself.
fn is_relevant(event: &notify::Event, names: &HashSet<OsString>) -> bool {
    if matches!(event.kind, EventKind::Access(_)) {
        return false;
    }
    event.paths.iter().any(|p| {
        p.file_name()
            .is_some_and(|n| names.contains(n) || n.as_encoded_bytes().starts_with(b".."))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const DEBOUNCE: Duration = Duration::from_millis(150);
    /// Longer than any debounce and event delivery; short enough for a unit test.
    const QUIET: Duration = Duration::from_millis(600);

    async fn next(w: &mut ConfigWatcher) -> Option<ReloadTrigger> {
        tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .ok()
            .flatten()
    }

    async fn stays_quiet(w: &mut ConfigWatcher) -> bool {
        tokio::time::timeout(QUIET, w.changed()).await.is_err()
    }

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, "a = 1\n").unwrap();
        (dir, path)
    }

    #[tokio::test]
    async fn a_burst_of_writes_triggers_once() {
        let (_dir, path) = setup();
        let mut w = ConfigWatcher::new(&path, DEBOUNCE).unwrap();
        for i in 0..5 {
            std::fs::write(&path, format!("a = {i}\n")).unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(next(&mut w).await, Some(ReloadTrigger::File));
        assert!(stays_quiet(&mut w).await, "one burst, one trigger");
        std::fs::write(&path, "a = 9\n").unwrap();
        assert_eq!(next(&mut w).await, Some(ReloadTrigger::File));
    }

    #[tokio::test]
    async fn rename_over_the_file_triggers() {
        let (dir, path) = setup();
        let tmp = dir.path().join(".relay.toml.swp");
        std::fs::write(&tmp, "a = 2\n").unwrap();
        let mut w = ConfigWatcher::new(&path, DEBOUNCE).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(next(&mut w).await, Some(ReloadTrigger::File));
        // Still watched after the old inode is gone.
        std::fs::write(&path, "a = 3\n").unwrap();
        assert_eq!(next(&mut w).await, Some(ReloadTrigger::File));
    }

    #[tokio::test]
    async fn configmap_symlink_swap_triggers() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/relay.toml"), "a = 1\n").unwrap();
        std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/relay.toml", d.join("relay.toml")).unwrap();
        let mut w = ConfigWatcher::new(&d.join("relay.toml"), DEBOUNCE).unwrap();
        std::fs::create_dir(d.join("..v2")).unwrap();
        std::fs::write(d.join("..v2/relay.toml"), "a = 2\n").unwrap();
        std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        assert_eq!(next(&mut w).await, Some(ReloadTrigger::File));
    }

    #[tokio::test]
    async fn another_file_in_the_directory_does_not_trigger() {
        let (dir, path) = setup();
        let mut w = ConfigWatcher::new(&path, DEBOUNCE).unwrap();
        std::fs::write(dir.path().join("other.toml"), "b = 1\n").unwrap();
        std::fs::write(dir.path().join("relay.toml.bak"), "b = 1\n").unwrap();
        let _ = std::fs::read_to_string(&path).unwrap();
        assert!(stays_quiet(&mut w).await);
    }

    #[tokio::test]
    async fn a_path_without_a_file_name_is_refused() {
        assert!(matches!(
            ConfigWatcher::new(Path::new("/"), DEBOUNCE),
            Err(WatchError::NotAFile { .. })
        ));
        let missing = Path::new("/nonexistent-postern-dir/relay.toml");
        assert!(matches!(
            ConfigWatcher::new(missing, DEBOUNCE),
            Err(WatchError::Notify { .. })
        ));
    }
}

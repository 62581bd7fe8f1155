//! Hot reload: the config file is watched (`notify`, debounced, and `SIGHUP`, by
//! [`postern_config::ConfigWatcher`]); on each trigger the whole file is read, parsed and
//! validated, resolved into a new snapshot and swapped in ([`Runtime::reload`]).
//!
//! An invalid file — unreadable, bad TOML, a bad value, a certificate or key file that does not
//! load — keeps the running config: the error is logged at `error` with the file, line and
//! field, and `postern_config_reloads_total{result="failed"}` rises. Settings that need a
//! restart are logged at `warn` and keep their running values. Open connections, SSE streams
//! and WebSockets are untouched by a reload: they finish under the snapshot they started with.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use postern_config::ConfigWatcher;

use crate::runtime::{ReloadReport, Runtime};

/// Events closer together than this are one reload (editors write a file in several steps).
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// Why a reload was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] postern_config::ConfigError),
    #[error(transparent)]
    Resolve(#[from] crate::GatewayError),
}

/// Reads `path` and applies it; counts and logs the result either way.
pub fn reload_from(runtime: &Runtime, path: &Path) -> Result<ReloadReport, ReloadError> {
    let applied = postern_config::load_gateway(path)
        .map_err(ReloadError::from)
        .and_then(|config| runtime.reload(config).map_err(ReloadError::from));
    match &applied {
        Ok(report) => {
            if !report.needs_restart.is_empty() {
                tracing::warn!(
                    file = %path.display(),
                    settings = ?report.needs_restart,
                    "config reloaded, but these settings need a restart and keep their running values"
                );
            }
            tracing::info!(file = %path.display(), generation = report.generation, "config reloaded");
        }
        Err(e) => {
            runtime.count_failed_reload();
            tracing::error!(
                file = %path.display(),
                error = %e,
                "config reload failed; the running config stays in force"
            );
        }
    }
    applied
}

/// Starts watching `path` now (a change written after this returns is seen) and reloads on
/// every change, on a task of its own, until the watcher ends.
pub fn watch(
    runtime: Arc<Runtime>,
    path: PathBuf,
) -> Result<tokio::task::JoinHandle<()>, postern_config::WatchError> {
    let mut watcher = ConfigWatcher::new(&path, DEBOUNCE)?;
    Ok(tokio::spawn(async move {
        while let Some(trigger) = watcher.changed().await {
            tracing::debug!(?trigger, "config change");
            let _ = reload_from(&runtime, &path);
        }
        tracing::error!(file = %path.display(), "config watcher stopped: reload needs a restart");
    }))
}

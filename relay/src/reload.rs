//! Applying a new configuration to a running relay.
//!
//! A reload takes a whole [`RelayConfig`], validates it and resolves it into new
//! [`Settings`](crate::state::Settings) — limits, timeouts, `require_dial_grant`, trusted
//! control-plane keys — and swaps them in at once; nothing changes if any of that fails.
//! Settings bound to sockets (listen address, TLS files, the metrics listener) are compared
//! with the ones the relay started with and, if they differ, reported as needing a restart and
//! not applied. Every attempt counts in `postern_relay_config_reloads_total{result}` and is
//! logged: info when applied, warn for what needs a restart, error (with file, line and field)
//! when refused.
//!
//! What applies when: connection, lease, connect and per-lease stream limits, timeouts and
//! `require_dial_grant` apply from the next connection, registration or connect; the frame,
//! WebSocket message and per-session stream limits and the trusted keys apply to sessions that
//! start after the reload. Grants a live session already presented stay accepted until they
//! expire or the session reconnects, even if the key that signed them was removed.
//!
//! File events and SIGHUP come from [`postern_config::ConfigWatcher`]; this module never
//! parses text itself (that is `postern_config::load_relay`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use postern_config::{ConfigWatcher, RelayConfig, ReloadTrigger};

use crate::state::{RelayState, Settings};
use crate::RelayError;

/// A burst of file events within this interval is one reload.
pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(250);

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// Settings (TOML paths) that differ from the running relay's but need a restart; they
    /// were not applied.
    pub needs_restart: Vec<&'static str>,
}

/// Validates `config` and swaps in its reloadable part; see the module documentation.
pub(crate) fn apply(state: &RelayState, config: RelayConfig) -> Result<ReloadOutcome, RelayError> {
    let settings = match Settings::resolve(&config) {
        Ok(s) => s,
        Err(e) => return Err(refused(state, e)),
    };
    let keys = settings.trusted_keys.len();
    state.settings.store(Arc::new(settings));
    state.metrics.record_reload(true);
    let needs_restart = state.bound.restart_needed(&config);
    for setting in &needs_restart {
        tracing::warn!(
            setting,
            "config reload: this setting changed and needs a restart; still using the old value"
        );
    }
    tracing::info!(trusted_keys = keys, "config reloaded");
    Ok(ReloadOutcome { needs_restart })
}

/// Reads `path` again and applies it; a file that cannot be read, parsed or validated leaves
/// the running configuration in place.
pub(crate) fn apply_file(state: &RelayState, path: &Path) -> Result<ReloadOutcome, RelayError> {
    match postern_config::load_relay(path) {
        Ok(config) => apply(state, config),
        Err(e) => Err(refused(state, e.into())),
    }
}

fn refused(state: &RelayState, e: RelayError) -> RelayError {
    state.metrics.record_reload(false);
    tracing::error!(error = %e, "config reload refused; keeping the running configuration");
    e
}

/// Reloads `path` on each trigger of `watcher` until the relay shuts down.
pub(crate) async fn watch(state: Arc<RelayState>, mut watcher: ConfigWatcher, path: PathBuf) {
    loop {
        let trigger = tokio::select! {
            t = watcher.changed() => t,
            _ = state.shutdown.cancelled() => return,
        };
        let Some(trigger) = trigger else {
            tracing::error!(path = %path.display(), "config watch ended; reload needs a restart now");
            return;
        };
        let why = match trigger {
            ReloadTrigger::File => "file changed",
            ReloadTrigger::Signal => "SIGHUP",
        };
        tracing::info!(path = %path.display(), trigger = why, "reloading config");
        // Errors are counted and logged inside.
        let _ = apply_file(&state, &path);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use base64::{engine::general_purpose::STANDARD, Engine as _};

    use super::*;

    fn config(key: u8) -> RelayConfig {
        RelayConfig::with_control_plane_keys(vec![STANDARD.encode(key_bytes(key))])
    }

    /// A valid Ed25519 public key, different for each `seed`.
    fn key_bytes(seed: u8) -> [u8; 32] {
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
            .verifying_key()
            .to_bytes()
    }

    fn state(cfg: RelayConfig) -> RelayState {
        let settings = Settings::resolve(&cfg).unwrap();
        RelayState::new(cfg, settings).unwrap()
    }

    #[test]
    fn reload_swaps_keys_and_limits() {
        let s = state(config(1));
        let mut next = config(2);
        next.limits.max_sessions = 7;
        next.timeouts.connect = Duration::from_secs(3);
        next.require_dial_grant = false;
        let outcome = apply(&s, next).unwrap();
        assert!(outcome.needs_restart.is_empty());
        let now = s.settings();
        assert_eq!(now.limits.max_sessions, 7);
        assert_eq!(now.timeouts.connect, Duration::from_secs(3));
        assert!(!now.require_dial_grant);
        assert_eq!(now.trusted_keys.len(), 1);
        assert_eq!(now.trusted_keys[0].to_bytes(), key_bytes(2));
        assert_eq!(s.metrics.config_reloads(), (1, 0));
    }

    #[test]
    fn invalid_config_keeps_the_running_one() {
        let s = state(config(1));
        let mut bad = config(2);
        bad.limits.max_sessions = 0;
        let err = apply(&s, bad).unwrap_err();
        assert!(err.to_string().contains("limits.max_sessions"), "{err}");
        let now = s.settings();
        assert_eq!(now.limits.max_sessions, 10_000);
        assert_eq!(now.trusted_keys[0].to_bytes(), key_bytes(1));
        assert_eq!(s.metrics.config_reloads(), (0, 1));
    }

    #[test]
    fn listener_changes_are_reported_not_applied() {
        let s = state(config(1));
        let mut next = config(1);
        next.listen.addr = "127.0.0.1:7999".parse().unwrap();
        next.metrics.enabled = false;
        next.limits.max_leases = 5;
        let outcome = apply(&s, next).unwrap();
        assert_eq!(outcome.needs_restart, vec!["listen.addr", "metrics"]);
        assert_eq!(s.bound.listen.addr, config(1).listen.addr);
        assert_eq!(s.settings().limits.max_leases, 5, "the rest applies");
    }

    #[test]
    fn a_bad_file_is_refused_with_its_line() {
        let s = state(config(1));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        let key = STANDARD.encode(key_bytes(3));
        std::fs::write(
            &path,
            format!("[control_plane]\npublic_keys = [\"{key}\"]\n\n[limits]\nmax_leases = 0\n"),
        )
        .unwrap();
        let err = apply_file(&s, &path).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("{}:5:", path.display())) && text.contains("limits.max_leases"),
            "{text}"
        );
        assert_eq!(s.settings().trusted_keys[0].to_bytes(), key_bytes(1));
        std::fs::write(
            &path,
            format!("[control_plane]\npublic_keys = [\"{key}\"]\n"),
        )
        .unwrap();
        apply_file(&s, &path).unwrap();
        assert_eq!(s.settings().trusted_keys[0].to_bytes(), key_bytes(3));
        assert_eq!(s.metrics.config_reloads(), (1, 1));
    }
}

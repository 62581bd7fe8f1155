//! The runtime: what lives for the whole process and survives reloads — the dialer and its
//! E2EE sessions, the client connection slots, the key verifier and its cache, the rate
//! limiters, the breakers, the in-flight slots, the metrics, the certificate resolver — and
//! the current [`Snapshot`] behind an `ArcSwap`.
//!
//! [`Runtime::reload`] takes a whole validated config, builds a new snapshot from it (reading
//! keys and certificates), and only then swaps it in: a config that fails to resolve never
//! replaces the running one. Settings that only take effect at start (listen addresses, relay
//! and identity files, the metrics listener, the Redis backend, connection-level limits) are
//! compared, reported as needing a restart, and kept at their running values in the new
//! snapshot, so nothing is half-applied.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use postern_config::{ApiKeyConfig, GatewayConfig};
use postern_control::ControlPlane;
use postern_sdk::{ClientOptions, Dialer, DialerConfig, Identity, RelayUrl};

use crate::auth::KeyVerifier;
use crate::breaker::Breakers;
use crate::concurrency::LeaseConcurrency;
use crate::connections::ConnectionSlots;
use crate::metrics::Metrics;
use crate::ratelimit::{Limit, RateLimiter};
use crate::snapshot::{Bindings, Snapshot};
use crate::tls::CertResolver;
use crate::GatewayError;

/// The gateway's long-lived state.
#[derive(Debug)]
pub struct Runtime {
    snapshot: ArcSwap<Snapshot>,
    pub dialer: Dialer,
    pub connections: Arc<ConnectionSlots>,
    pub verifier: KeyVerifier,
    pub limiter: RateLimiter,
    pub breakers: Breakers,
    pub concurrency: LeaseConcurrency,
    pub metrics: Arc<Metrics>,
    /// What the HTTPS listener's handshakes read their certificate from.
    pub certs: Option<Arc<CertResolver>>,
    /// Reloads one at a time.
    reloading: Mutex<()>,
    /// Handshakes already counted into the metric (the dialer counts on its own).
    handshakes_seen: AtomicU64,
    /// The control plane, when `[control]` names a database.
    pub control: Option<Arc<ControlPlane>>,
    /// Its `/api/v1` router.
    pub control_router: Option<axum::Router>,
    /// The keys the control plane's store holds, served next to the file's.
    store_keys: Mutex<Arc<Vec<ApiKeyConfig>>>,
    /// The file's own `[[api_key]]`s, as last loaded (the snapshot's list also has the
    /// store's).
    file_keys: Mutex<Vec<ApiKeyConfig>>,
}

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    pub generation: u64,
    /// Settings that changed in the file but need a restart; their running values stay.
    pub needs_restart: Vec<&'static str>,
}

impl Runtime {
    /// Builds the runtime for a validated `config`: loads the identity key, grants, CA file,
    /// certificates and keys. Must run inside a tokio runtime (the dialer starts a task).
    pub fn start(config: GatewayConfig) -> Result<Arc<Self>, GatewayError> {
        Self::start_with_control(config, None, Vec::new())
    }

    /// As [`Runtime::start`], with the control plane opened from `[control]`
    /// ([`crate::control::open`]) and the keys its store holds now.
    pub fn start_with_control(
        mut config: GatewayConfig,
        control: Option<Arc<ControlPlane>>,
        store_keys: Vec<ApiKeyConfig>,
    ) -> Result<Arc<Self>, GatewayError> {
        let file_keys = config.api_keys.clone();
        merge_keys(&mut config.api_keys, &store_keys);
        let identity = Identity::load(&config.identity_key_file)
            .map_err(|e| GatewayError::Key(e.to_string()))?;
        let grants = postern_sdk::grant::load_file(&config.grant_file)
            .map_err(|e| GatewayError::Key(format!("{}: {e}", config.grant_file.display())))?;
        let relays = config
            .relays
            .iter()
            .map(|r| RelayUrl::parse(r).map_err(|e| GatewayError::Config(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let first = relays
            .first()
            .cloned()
            .ok_or_else(|| GatewayError::Config("relays: at least one is required".into()))?;
        let mut client = ClientOptions::default();
        if let Some(ca) = &config.ca_file {
            let certs =
                postern_sdk::tls::load_certs(ca).map_err(|e| GatewayError::Tls(e.to_string()))?;
            client.tls = Some(
                postern_sdk::tls::client_config(&certs)
                    .map_err(|e| GatewayError::Tls(e.to_string()))?,
            );
        }
        let metrics = Arc::new(Metrics::new());
        let mut dcfg = DialerConfig::new(first, identity, grants);
        dcfg.relays = relays;
        dcfg.client = client;
        dcfg.handshake_timeout = config.limits.upstream_connect_timeout;
        let limiter = RateLimiter::new(&config.rate_limit, Arc::clone(&metrics))
            .map_err(|e| GatewayError::Config(e.to_string()))?;
        let verifier = KeyVerifier::new(&config.limits, metrics.key_verifications.clone());
        let connections = ConnectionSlots::new(config.limits.max_connections, Arc::clone(&metrics));
        let breakers = Breakers::default();
        let concurrency = LeaseConcurrency::default();
        let snapshot = Snapshot::build(
            config,
            1,
            Bindings {
                metrics: &metrics,
                breakers: &breakers,
                concurrency: &concurrency,
            },
        )?;
        let certs = snapshot
            .certs
            .clone()
            .map(|set| Arc::new(CertResolver::new(set)));
        Ok(Arc::new(Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            dialer: Dialer::new(dcfg),
            connections,
            verifier,
            limiter,
            breakers,
            concurrency,
            metrics,
            certs,
            reloading: Mutex::new(()),
            handshakes_seen: AtomicU64::new(0),
            control_router: control.as_ref().map(ControlPlane::router),
            control,
            store_keys: Mutex::new(Arc::new(store_keys)),
            file_keys: Mutex::new(file_keys),
        }))
    }

    /// The snapshot in force; a request loads it once and keeps it.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swaps in `config` (validated by `postern_config`). On `Err` nothing changed; the
    /// failure is counted either way by the caller through [`Self::count_failed_reload`] or
    /// here on success.
    pub fn reload(&self, config: GatewayConfig) -> Result<ReloadReport, GatewayError> {
        let _one = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let report = self.rebuild(config)?;
        self.metrics.config_reloads.with_label_values(&["ok"]).inc();
        Ok(report)
    }

    /// Serves `keys` (the control plane's store's, all of them) from now on, next to the
    /// file's keys; a store key whose id a file key has is left out (the file wins).
    pub fn set_store_keys(&self, keys: Vec<ApiKeyConfig>) -> Result<u64, GatewayError> {
        let _one = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let previous = std::mem::replace(
            &mut *self
                .store_keys
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
            Arc::new(keys),
        );
        let mut config = (*self.snapshot().config).clone();
        config.api_keys = self
            .file_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match self.rebuild(config) {
            Ok(report) => Ok(report.generation),
            Err(e) => {
                *self
                    .store_keys
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = previous;
                Err(e)
            }
        }
    }

    /// Builds and swaps in a snapshot of `config` (file keys only) plus the store's keys.
    /// The caller holds `reloading`.
    fn rebuild(&self, mut config: GatewayConfig) -> Result<ReloadReport, GatewayError> {
        let running = self.snapshot();
        let needs_restart = keep_restart_only(&running.config, &mut config);
        let file_keys = config.api_keys.clone();
        let store_keys = Arc::clone(
            &self
                .store_keys
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        merge_keys(&mut config.api_keys, &store_keys);
        let generation = running.generation + 1;
        let snapshot = Snapshot::build(
            config,
            generation,
            Bindings {
                metrics: &self.metrics,
                breakers: &self.breakers,
                concurrency: &self.concurrency,
            },
        )?;
        // Everything resolved: from here on nothing can fail.
        self.verifier.configure(&snapshot.config.limits);
        self.verifier.retain(&snapshot.keys);
        self.limiter.retain(|limit, name| match limit {
            Limit::Key => snapshot.keys.contains(name),
            Limit::Lease => snapshot.leases.contains_key(name),
            Limit::Global | Limit::Ip => true,
        });
        self.breakers
            .retain(|lease| snapshot.leases.contains_key(lease));
        self.concurrency
            .retain(|lease| snapshot.leases.contains_key(lease));
        if let (Some(resolver), Some(certs)) = (&self.certs, &snapshot.certs) {
            resolver.store(Arc::clone(certs));
        }
        self.snapshot.store(Arc::new(snapshot));
        *self
            .file_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = file_keys;
        Ok(ReloadReport {
            generation,
            needs_restart,
        })
    }

    /// Counts a reload that did not happen (the file did not parse, validate or resolve).
    pub fn count_failed_reload(&self) {
        self.metrics
            .config_reloads
            .with_label_values(&["failed"])
            .inc();
    }

    /// Brings the metrics that mirror other counters up to date (before a scrape).
    pub fn refresh_metrics(&self) {
        let m = &self.metrics;
        m.tunnel_sessions
            .set(i64::try_from(self.dialer.session_count()).unwrap_or(i64::MAX));
        let done = self.dialer.handshakes();
        let seen = self.handshakes_seen.swap(done, Ordering::Relaxed);
        m.tunnel_handshakes.inc_by(done.saturating_sub(seen));
    }
}

/// Everything a config names, loaded and checked as a start would (identity key, grants, CA
/// file, certificates, keys, leases) without binding or dialing anything; for `check-config`.
pub fn check_offline(config: GatewayConfig) -> Result<(), GatewayError> {
    Identity::load(&config.identity_key_file).map_err(|e| GatewayError::Key(e.to_string()))?;
    postern_sdk::grant::load_file(&config.grant_file)
        .map_err(|e| GatewayError::Key(format!("{}: {e}", config.grant_file.display())))?;
    if let Some(ca) = &config.ca_file {
        postern_sdk::tls::load_certs(ca).map_err(|e| GatewayError::Tls(e.to_string()))?;
    }
    crate::auth::check_hashes(&config.api_keys).map_err(GatewayError::Key)?;
    let metrics = Metrics::new();
    Snapshot::build(
        config,
        1,
        Bindings {
            metrics: &metrics,
            breakers: &Breakers::default(),
            concurrency: &LeaseConcurrency::default(),
        },
    )
    .map(|_| ())
}

/// Compares the settings that only apply at start; where `new` differs from `running`, the
/// running value is put back into `new` and the setting is named in the result.
/// Appends the store's keys to the file's, leaving out any whose id the file already has.
fn merge_keys(keys: &mut Vec<ApiKeyConfig>, store: &[ApiKeyConfig]) {
    let file_ids: std::collections::HashSet<String> = keys.iter().map(|k| k.id.clone()).collect();
    for key in store {
        if file_ids.contains(&key.id) {
            tracing::warn!(key_id = %key.id, "a store key has the id of a file key: the file's is served");
        } else {
            keys.push(key.clone());
        }
    }
}

fn keep_restart_only(running: &GatewayConfig, new: &mut GatewayConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($($field:ident).+) => {
            if running.$($field).+ != new.$($field).+ {
                changed.push(stringify!($($field).+));
                new.$($field).+ = running.$($field).+.clone();
            }
        };
    }
    keep!(listen.http);
    keep!(listen.https);
    keep!(relays);
    keep!(identity_key_file);
    keep!(grant_file);
    keep!(ca_file);
    keep!(metrics);
    keep!(rate_limit.backend);
    keep!(rate_limit.redis_url);
    keep!(rate_limit.redis_timeout);
    keep!(rate_limit.redis_retry_interval);
    keep!(limits.max_connections);
    keep!(limits.client_read_buffer_bytes);
    // Both are also HTTP/2 settings of the listener, fixed when it is bound.
    keep!(limits.max_header_bytes);
    keep!(limits.keepalive_timeout);
    keep!(control);
    changed
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn config() -> GatewayConfig {
        postern_config::parse_gateway(
            "relays = [\"ws://127.0.0.1:1\"]\nidentity_key_file = \"k\"\ngrant_file = \"g\"\n\
             [listen]\nhttp = \"127.0.0.1:8080\"\n",
            "test",
        )
        .unwrap()
    }

    #[test]
    fn restart_only_settings_keep_their_running_values() {
        let running = config();
        let mut new = config();
        new.listen.http = Some("127.0.0.1:9999".parse().unwrap());
        new.limits.max_connections = 5;
        new.limits.max_in_flight_per_lease = 7;
        let changed = keep_restart_only(&running, &mut new);
        assert_eq!(changed, ["listen.http", "limits.max_connections"]);
        assert_eq!(new.listen.http, running.listen.http);
        assert_eq!(new.limits.max_connections, running.limits.max_connections);
        assert_eq!(new.limits.max_in_flight_per_lease, 7, "reloadable: applied");
    }
}

//! The resolved snapshot: everything the request path needs that comes from the config file,
//! resolved and checked once — the key table, every lease with its own timeouts, budget,
//! breaker and in-flight slots, the IP rules, limits and rate-limit settings, and the TLS
//! certificates.
//!
//! A snapshot is immutable. The runtime (the `runtime` module) holds the current one behind an
//! `ArcSwap`; each request loads it once into its context, so one request sees one config from
//! its head to its log line. A reload builds a whole new snapshot from a whole validated file
//! and swaps it in; building is the only place anything is parsed or read from disk (keys,
//! certificates), never the hot path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use postern_config::{BreakerConfig, GatewayConfig, Rate};
use postern_sdk::LeaseTarget;
use tokio::sync::Semaphore;

use crate::auth::KeyTable;
use crate::breaker::{Breaker, Breakers};
use crate::concurrency::LeaseConcurrency;
use crate::metrics::{LeaseMetrics, Metrics, OTHER_LEASE};
use crate::tls::CertSet;
use crate::GatewayError;

/// A lease as the request path sees it: where to dial, whom to expect, and its own policy.
#[derive(Debug)]
pub struct LeaseRoute {
    /// NFC-normalized name.
    pub name: String,
    pub target: LeaseTarget,
    /// The lease's budget: its own `rate_limit`, else `[rate_limit] per_lease`.
    pub rate: Option<Rate>,
    pub breaker_settings: BreakerConfig,
    pub breaker: Arc<Breaker>,
    pub connect_timeout: Duration,
    pub head_timeout: Duration,
    pub idle_timeout: Duration,
    pub in_flight: Arc<Semaphore>,
    pub metrics: Arc<LeaseMetrics>,
}

/// The long-lived parts a snapshot's leases are bound to (from the runtime).
#[derive(Debug, Clone, Copy)]
pub struct Bindings<'a> {
    pub metrics: &'a Metrics,
    pub breakers: &'a Breakers,
    pub concurrency: &'a LeaseConcurrency,
}

/// One resolved configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// 1 for the configuration the gateway started with, then one more per reload.
    pub generation: u64,
    pub config: Arc<GatewayConfig>,
    pub keys: KeyTable,
    pub leases: HashMap<String, Arc<LeaseRoute>>,
    /// The certificates of the HTTPS listener, if it is configured.
    pub certs: Option<Arc<CertSet>>,
    /// The series of requests for no lease served here.
    pub other_metrics: Arc<LeaseMetrics>,
}

impl Snapshot {
    /// Resolves a validated `config`: owner keys, certificates (read from disk and checked)
    /// and every lease's policy.
    pub fn build(
        config: GatewayConfig,
        generation: u64,
        bind: Bindings<'_>,
    ) -> Result<Self, GatewayError> {
        let certs = if config.listen.https.is_some() {
            Some(Arc::new(CertSet::load(&config.listen.tls)?))
        } else {
            None
        };
        let limits = &config.limits;
        // Everything that can fail first, so that a config that does not resolve never
        // touches the runtime's breakers or slots.
        let mut targets = HashMap::new();
        for (i, lease) in config.leases.iter().enumerate() {
            let name = postern_sdk::lease_name::normalize(&lease.name)
                .map_err(|e| GatewayError::Config(format!("lease[{i}].name: {e}")))?;
            let owner = postern_sdk::identity::parse_verifying_key(&lease.owner_identity)
                .map_err(|e| GatewayError::Config(format!("lease[{i}].owner_identity: {e}")))?;
            let mut target = LeaseTarget::new(name.clone(), owner);
            target.alpn = offered_alpn(&lease.alpn, config.upstream.protocol);
            // The config checks names as written; two spellings of one name (NFC and NFD)
            // are the same lease and would silently shadow each other here.
            if targets.insert(name, (lease, target)).is_some() {
                return Err(GatewayError::Config(format!(
                    "lease[{i}].name: the same lease name as an earlier [[lease]] \
                     (compared after Unicode NFC normalization)"
                )));
            }
        }
        let mut leases = HashMap::with_capacity(targets.len());
        for (name, (lease, target)) in targets {
            let breaker_settings = match &lease.breaker {
                Some(o) => config.breaker.with(o),
                None => config.breaker.clone(),
            };
            let metrics = bind.metrics.lease(&name);
            let max_in_flight = lease
                .max_in_flight
                .unwrap_or(limits.max_in_flight_per_lease);
            let route = LeaseRoute {
                breaker: bind.breakers.get(&name, &breaker_settings, &metrics),
                in_flight: bind.concurrency.slots(&name, max_in_flight),
                name: name.clone(),
                target,
                rate: lease.rate_limit.or(config.rate_limit.per_lease),
                breaker_settings,
                connect_timeout: lease
                    .connect_timeout
                    .unwrap_or(limits.upstream_connect_timeout),
                head_timeout: lease.head_timeout.unwrap_or(limits.upstream_head_timeout),
                idle_timeout: lease.idle_timeout.unwrap_or(limits.upstream_idle_timeout),
                metrics,
            };
            leases.insert(name, Arc::new(route));
        }
        Ok(Self {
            generation,
            keys: KeyTable::new(&config.api_keys),
            leases,
            certs,
            other_metrics: bind.metrics.lease(OTHER_LEASE),
            config: Arc::new(config),
        })
    }

    /// The lease named `name` (NFC), if this gateway serves it.
    pub fn lease(&self, name: &str) -> Option<&Arc<LeaseRoute>> {
        self.leases.get(name)
    }

    /// The series a request for `lease` is counted in.
    pub fn metrics_for<'a>(&'a self, lease: Option<&'a LeaseRoute>) -> &'a Arc<LeaseMetrics> {
        lease.map_or(&self.other_metrics, |l| &l.metrics)
    }
}

/// What the gateway offers in a lease's E2EE handshake: the lease's own `alpn`, else both
/// HTTP versions (HTTP/1.1 only with `[upstream] protocol = "http1"`), see
/// [`crate::upstream`].
fn offered_alpn(configured: &[String], protocol: postern_config::UpstreamProtocol) -> Vec<String> {
    if !configured.is_empty() {
        return configured.to_vec();
    }
    match protocol {
        postern_config::UpstreamProtocol::Auto => crate::upstream::OFFERED_ALPN
            .iter()
            .map(|a| a.to_string())
            .collect(),
        postern_config::UpstreamProtocol::Http1 => vec!["http/1.1".to_owned()],
    }
}

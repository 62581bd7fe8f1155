//! The gateway's Prometheus metrics: one registry of its own (not the process-global default),
//! every family named `postern_…`, rendered as text by [`Metrics::render`] for the metrics
//! listener (served by the `endpoints` module).
//!
//! Label cardinality is bounded by construction: the `lease` label is a lease name from the
//! running snapshot, or [`OTHER_LEASE`] for anything else (a name not in the config, no lease
//! at all); every other label takes values from a fixed set named in this module. A path, an
//! API key (or its id), a client IP or a header value is never a label.
//!
//! Per-lease series are resolved once per lease into a [`LeaseMetrics`] (the label lookup is a
//! hash and a lock; the hot path then only touches atomics), kept for the process's life so
//! that counters survive reloads. A lease removed by a reload keeps its series (their values
//! are history); leases added later get new ones, so the map is bounded by the leases ever
//! configured.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The `lease` label of requests for no lease the gateway serves.
pub const OTHER_LEASE: &str = "_other";

/// Buckets for request and upstream durations, seconds: 1 ms to 60 s.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets for one Redis decision, seconds: 100 µs to 250 ms.
const REDIS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

/// Every metric family of the gateway.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    connect_duration: HistogramVec,
    head_duration: HistogramVec,
    request_bytes: IntCounterVec,
    response_bytes: IntCounterVec,
    upgrades_active: IntGaugeVec,
    breaker_state: IntGaugeVec,
    breaker_transitions: IntCounterVec,
    breaker_rejections: IntCounterVec,
    in_flight: IntGaugeVec,
    overload_rejections: IntCounterVec,
    h2_connections: IntGaugeVec,
    h2_connections_opened: IntCounterVec,
    pub client_connections: IntGauge,
    pub connections_rejected: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub acl_denials: IntCounterVec,
    pub ratelimit_rejections: IntCounterVec,
    pub redis_fallback: IntGauge,
    pub redis_errors: IntCounter,
    pub redis_duration: Histogram,
    pub tunnel_sessions: IntGauge,
    pub tunnel_handshakes: IntCounter,
    pub config_reloads: IntCounterVec,
    pub key_verifications: IntCounter,
    leases: RwLock<HashMap<String, Arc<LeaseMetrics>>>,
}

/// One lease's series, resolved.
#[derive(Debug)]
pub struct LeaseMetrics {
    pub name: String,
    /// `postern_requests_total`, and its children by method and status class (both fixed
    /// sets), resolved on first use so that counting is one atomic add.
    requests: IntCounterVec,
    request_children: [[OnceLock<IntCounter>; STATUS_CLASSES.len()]; METHODS.len()],
    pub request_duration: Histogram,
    pub connect_duration: Histogram,
    pub head_duration: Histogram,
    pub request_bytes: IntCounter,
    pub response_bytes: IntCounter,
    pub upgrades_active: IntGauge,
    pub breaker_state: IntGauge,
    breaker_transitions: IntCounterVec,
    pub breaker_rejections: IntCounter,
    pub in_flight: IntGauge,
    pub overload_rejections: IntCounter,
    /// HTTP/2 connections to the lease open now, and opened so far.
    pub h2_connections: IntGauge,
    pub h2_connections_opened: IntCounter,
}

impl LeaseMetrics {
    /// Counts a finished request. `method` is folded into a fixed set.
    pub fn count_request(&self, method: &http::Method, status: u16) {
        let (m, c) = (method_index(method), status_class_index(status));
        self.request_children[m][c]
            .get_or_init(|| {
                self.requests
                    .with_label_values(&[&self.name, METHODS[m], STATUS_CLASSES[c]])
            })
            .inc();
    }

    /// Counts a breaker transition to `to` (`closed`, `open`, `half_open`).
    pub fn count_transition(&self, to: &'static str) {
        self.breaker_transitions
            .with_label_values(&[&self.name, to])
            .inc();
    }
}

/// The `method` label values; any method not listed is `OTHER`.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER",
];

/// The `status_class` label values; `none` is a request no response was sent for (the
/// client left first).
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

fn method_index(method: &http::Method) -> usize {
    use http::Method;
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

fn status_class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100) - 1,
        _ => 5,
    }
}

/// Registration can only fail for a duplicate or malformed name, which would be a bug here:
/// such a family is left out of the registry (and logged), never a crash.
fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: T) -> T {
    if let Err(e) = registry.register(Box::new(c.clone())) {
        tracing::error!(error = %e, "metric not registered");
    }
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    #[allow(clippy::unwrap_used)] // the names below are fixed and valid
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).unwrap(),
    )
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    #[allow(clippy::unwrap_used)] // the names below are fixed and valid
    register(r, IntGaugeVec::new(Opts::new(name, help), labels).unwrap())
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    #[allow(clippy::unwrap_used)] // fixed, valid name and sorted buckets
    register(r, HistogramVec::new(opts, labels).unwrap())
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    #[allow(clippy::unwrap_used)] // fixed, valid metric names: construction cannot fail
    pub fn new() -> Self {
        let r = Registry::new();
        let lease = &["lease"];
        let metrics = Self {
            requests: counter_vec(
                &r,
                "postern_requests_total",
                "Requests answered, by lease, method and status class.",
                &["lease", "method", "status_class"],
            ),
            request_duration: histogram_vec(
                &r,
                "postern_request_duration_seconds",
                "Time from the request head to the end of the response, by lease.",
                lease,
                DURATION_BUCKETS,
            ),
            connect_duration: histogram_vec(
                &r,
                "postern_upstream_connect_duration_seconds",
                "Time to open the upstream stream through the tunnel, by lease.",
                lease,
                DURATION_BUCKETS,
            ),
            head_duration: histogram_vec(
                &r,
                "postern_upstream_head_duration_seconds",
                "Time from the upstream connection to the response head, by lease.",
                lease,
                DURATION_BUCKETS,
            ),
            request_bytes: counter_vec(
                &r,
                "postern_request_bytes_total",
                "Request body bytes received from clients (WebSocket bytes included), by lease.",
                lease,
            ),
            response_bytes: counter_vec(
                &r,
                "postern_response_bytes_total",
                "Response body bytes sent to clients (WebSocket bytes included), by lease.",
                lease,
            ),
            upgrades_active: gauge_vec(
                &r,
                "postern_upgrades_active",
                "Upgraded connections (WebSocket) open now, by lease.",
                lease,
            ),
            breaker_state: gauge_vec(
                &r,
                "postern_breaker_state",
                "Circuit breaker state by lease: 0 closed, 1 open, 2 half-open.",
                lease,
            ),
            breaker_transitions: counter_vec(
                &r,
                "postern_breaker_transitions_total",
                "Circuit breaker transitions, by lease and new state.",
                &["lease", "to"],
            ),
            breaker_rejections: counter_vec(
                &r,
                "postern_breaker_rejections_total",
                "Requests refused (503) because the lease's breaker is open.",
                lease,
            ),
            in_flight: gauge_vec(
                &r,
                "postern_lease_in_flight",
                "Requests in flight to the lease now.",
                lease,
            ),
            overload_rejections: counter_vec(
                &r,
                "postern_lease_overload_rejections_total",
                "Requests refused (503) because the lease had max_in_flight requests too long.",
                lease,
            ),
            h2_connections: gauge_vec(
                &r,
                "postern_upstream_h2_connections",
                "HTTP/2 connections to the lease's agent open now.",
                lease,
            ),
            h2_connections_opened: counter_vec(
                &r,
                "postern_upstream_h2_connections_opened_total",
                "HTTP/2 connections to the lease's agent opened.",
                lease,
            ),
            client_connections: register(
                &r,
                IntGauge::new("postern_client_connections", "Client connections open now.")
                    .unwrap(),
            ),
            connections_rejected: counter_vec(
                &r,
                "postern_client_connections_rejected_total",
                "Client connections closed at accept, by reason (total_cap, per_ip_cap).",
                &["reason"],
            ),
            auth_failures: counter_vec(
                &r,
                "postern_auth_failures_total",
                "Requests not authenticated, by reason.",
                &["reason"],
            ),
            acl_denials: counter_vec(
                &r,
                "postern_acl_denials_total",
                "Authenticated requests refused (403), by reason (ip, lease, scope).",
                &["reason"],
            ),
            ratelimit_rejections: counter_vec(
                &r,
                "postern_ratelimit_rejections_total",
                "Requests refused (429) by a rate limit, by limit (global, key, lease, ip).",
                &["limit"],
            ),
            redis_fallback: register(
                &r,
                IntGauge::new(
                    "postern_ratelimit_redis_fallback",
                    "1 while rate limits are decided locally because Redis is unreachable.",
                )
                .unwrap(),
            ),
            redis_errors: register(
                &r,
                IntCounter::new(
                    "postern_ratelimit_redis_errors_total",
                    "Rate-limit decisions Redis failed or timed out on.",
                )
                .unwrap(),
            ),
            redis_duration: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "postern_ratelimit_redis_duration_seconds",
                        "Time of one rate-limit decision in Redis (one round trip).",
                    )
                    .buckets(REDIS_BUCKETS.to_vec()),
                )
                .unwrap(),
            ),
            tunnel_sessions: register(
                &r,
                IntGauge::new(
                    "postern_tunnel_sessions",
                    "E2EE sessions to leases open now (one per lease in use).",
                )
                .unwrap(),
            ),
            tunnel_handshakes: register(
                &r,
                IntCounter::new(
                    "postern_tunnel_handshakes_total",
                    "Noise handshakes the gateway completed with lease owners.",
                )
                .unwrap(),
            ),
            config_reloads: counter_vec(
                &r,
                "postern_config_reloads_total",
                "Configuration reloads, by result (ok, failed).",
                &["result"],
            ),
            key_verifications: register(
                &r,
                IntCounter::new(
                    "postern_key_verifications_total",
                    "argon2 key verifications run (cache misses).",
                )
                .unwrap(),
            ),
            leases: RwLock::new(HashMap::new()),
            registry: r,
        };
        for result in ["ok", "failed"] {
            metrics.config_reloads.with_label_values(&[result]);
        }
        metrics
    }

    /// The series of `lease` (a name from the snapshot, or [`OTHER_LEASE`]).
    pub fn lease(&self, lease: &str) -> Arc<LeaseMetrics> {
        if let Some(found) = self.leases.read().get(lease) {
            return Arc::clone(found);
        }
        let mut leases = self.leases.write();
        let made = leases.entry(lease.to_owned()).or_insert_with(|| {
            let l = &[lease];
            Arc::new(LeaseMetrics {
                name: lease.to_owned(),
                requests: self.requests.clone(),
                request_children: Default::default(),
                request_duration: self.request_duration.with_label_values(l),
                connect_duration: self.connect_duration.with_label_values(l),
                head_duration: self.head_duration.with_label_values(l),
                request_bytes: self.request_bytes.with_label_values(l),
                response_bytes: self.response_bytes.with_label_values(l),
                upgrades_active: self.upgrades_active.with_label_values(l),
                breaker_state: self.breaker_state.with_label_values(l),
                breaker_transitions: self.breaker_transitions.clone(),
                breaker_rejections: self.breaker_rejections.with_label_values(l),
                in_flight: self.in_flight.with_label_values(l),
                overload_rejections: self.overload_rejections.with_label_values(l),
                h2_connections: self.h2_connections.with_label_values(l),
                h2_connections_opened: self.h2_connections_opened.with_label_values(l),
            })
        });
        Arc::clone(made)
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics not rendered");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn lease_series_are_resolved_once_and_rendered() {
        let m = Metrics::new();
        let a = m.lease("web");
        let b = m.lease("web");
        assert!(Arc::ptr_eq(&a, &b));
        a.count_request(&http::Method::GET, 200);
        a.count_request(&http::Method::from_bytes(b"BREW").unwrap(), 503);
        let text = m.render();
        assert!(
            text.contains(
                "postern_requests_total{lease=\"web\",method=\"GET\",status_class=\"2xx\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("method=\"OTHER\",status_class=\"5xx\"} 1"),
            "{text}"
        );
        assert!(text.contains("postern_config_reloads_total{result=\"failed\"} 0"));
    }

    #[test]
    fn status_classes() {
        let class = |s| STATUS_CLASSES[status_class_index(s)];
        assert_eq!(class(0), "none");
        assert_eq!(class(101), "1xx");
        assert_eq!(class(429), "4xx");
        assert_eq!(class(599), "5xx");
        assert_eq!(class(600), "none");
    }
}

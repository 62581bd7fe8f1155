//! The relay's counters and its Prometheus endpoint.
//!
//! [`RelayMetrics`] owns a Prometheus registry of its own (never the process-global default,
//! so several relays, or a relay and a gateway, can share a process) and the few atomics that
//! `/healthz` and tests read directly. Metric names are a contract — a Grafana dashboard and
//! alert rules use them:
//!
//! | name | type | labels |
//! |---|---|---|
//! | `postern_relay_sessions` | gauge | active client sessions |
//! | `postern_relay_sessions_total` | counter | |
//! | `postern_relay_leases` | gauge | |
//! | `postern_relay_streams_active` | gauge | active splices |
//! | `postern_relay_streams_total` | counter | |
//! | `postern_relay_spliced_bytes_total` | counter | `direction` = `dialer_to_owner` \| `owner_to_dialer` |
//! | `postern_relay_refusals_total` | counter | `code` = the connect refusal, snake_case |
//! | `postern_relay_config_reloads_total` | counter | `result` = `ok` \| `failed` |
//!
//! Every label value comes from a fixed set known at compile time. The relay must never put a
//! lease name, key or address in a label: that would leak what it brokers to whoever scrapes it
//! and make the series count unbounded.
//!
//! [`serve`] answers `GET /metrics` on a listener of its own, with a bounded number of
//! connections and a header timeout; everything else is 404.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use postern_sdk::protocol::ConnectCode;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Scrapers served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 32;
/// Time a scraper has to send its request head, and to finish its connection.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Every refusal code a connect can end with, and its label value.
const REFUSALS: [ConnectCode; 8] = [
    ConnectCode::Unspecified,
    ConnectCode::NotFound,
    ConnectCode::Forbidden,
    ConnectCode::Busy,
    ConnectCode::Limit,
    ConnectCode::Unreachable,
    ConnectCode::Malformed,
    ConnectCode::ShuttingDown,
];

/// The `code` label of a refusal.
fn code_label(code: ConnectCode) -> &'static str {
    match code {
        ConnectCode::Unspecified => "unspecified",
        ConnectCode::Ok => "ok",
        ConnectCode::NotFound => "not_found",
        ConnectCode::Forbidden => "forbidden",
        ConnectCode::Busy => "busy",
        ConnectCode::Limit => "limit",
        ConnectCode::Unreachable => "unreachable",
        ConnectCode::Malformed => "malformed",
        ConnectCode::ShuttingDown => "shutting_down",
    }
}

/// The relay's counters; see the module documentation.
#[derive(Debug)]
pub struct RelayMetrics {
    /// Client sessions past the WebSocket upgrade (`postern_relay_sessions`).
    pub sessions_active: AtomicUsize,
    /// Spliced streams open now (`postern_relay_streams_active`).
    pub splices_active: AtomicUsize,
    registry: Registry,
    sessions: IntGauge,
    sessions_total: IntCounter,
    leases: IntGauge,
    streams_active: IntGauge,
    streams_total: IntCounter,
    pub(crate) dialer_to_owner: IntCounter,
    pub(crate) owner_to_dialer: IntCounter,
    refusals: IntCounterVec,
    reloads_ok: IntCounter,
    reloads_failed: IntCounter,
}

impl RelayMetrics {
    pub(crate) fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let sessions = gauge("postern_relay_sessions", "Active client sessions.")?;
        let leases = gauge("postern_relay_leases", "Registered leases.")?;
        let streams_active = gauge("postern_relay_streams_active", "Spliced streams open now.")?;
        let sessions_total =
            IntCounter::new("postern_relay_sessions_total", "Client sessions started.")?;
        registry.register(Box::new(sessions_total.clone()))?;
        let streams_total = IntCounter::new(
            "postern_relay_streams_total",
            "Streams spliced between a dialer and a lease owner.",
        )?;
        registry.register(Box::new(streams_total.clone()))?;
        let bytes = counter_vec(
            "postern_relay_spliced_bytes_total",
            "Ciphertext bytes copied through splices.",
            "direction",
        )?;
        let refusals = counter_vec(
            "postern_relay_refusals_total",
            "Connects refused, by code.",
            "code",
        )?;
        let reloads = counter_vec(
            "postern_relay_config_reloads_total",
            "Configuration reloads, by result.",
            "result",
        )?;
        // Create every series up front, so dashboards see zeros rather than gaps.
        for code in REFUSALS {
            refusals.with_label_values(&[code_label(code)]);
        }
        Ok(Self {
            sessions_active: AtomicUsize::new(0),
            splices_active: AtomicUsize::new(0),
            sessions,
            sessions_total,
            leases,
            streams_active,
            streams_total,
            dialer_to_owner: bytes.with_label_values(&["dialer_to_owner"]),
            owner_to_dialer: bytes.with_label_values(&["owner_to_dialer"]),
            refusals,
            reloads_ok: reloads.with_label_values(&["ok"]),
            reloads_failed: reloads.with_label_values(&["failed"]),
            registry,
        })
    }

    pub(crate) fn session_started(&self) {
        self.sessions_active.fetch_add(1, Ordering::Relaxed);
        self.sessions_total.inc();
    }

    pub(crate) fn session_ended(&self) {
        self.sessions_active.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn splice_started(&self) {
        self.splices_active.fetch_add(1, Ordering::Relaxed);
        self.streams_total.inc();
    }

    pub(crate) fn splice_ended(&self) {
        self.splices_active.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn record_refused(&self, code: ConnectCode) {
        self.refusals.with_label_values(&[code_label(code)]).inc();
    }

    pub(crate) fn record_reload(&self, ok: bool) {
        match ok {
            true => self.reloads_ok.inc(),
            false => self.reloads_failed.inc(),
        }
    }

    /// Client sessions started since the relay did.
    pub fn sessions_total(&self) -> u64 {
        self.sessions_total.get()
    }

    /// Bytes copied through splices, both directions.
    pub fn bytes_spliced(&self) -> u64 {
        self.dialer_to_owner.get() + self.owner_to_dialer.get()
    }

    /// Connects refused, whatever the code.
    pub fn connects_refused(&self) -> u64 {
        REFUSALS
            .iter()
            .map(|c| self.refusals.with_label_values(&[code_label(*c)]).get())
            .sum()
    }

    /// Reloads applied (`ok`) and refused (`failed`).
    pub fn config_reloads(&self) -> (u64, u64) {
        (self.reloads_ok.get(), self.reloads_failed.get())
    }

    /// The Prometheus text format of every metric; `leases` is the lease table's size now.
    pub(crate) fn render(&self, leases: usize) -> String {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.sessions
            .set(gauge(self.sessions_active.load(Ordering::Relaxed)));
        self.streams_active
            .set(gauge(self.splices_active.load(Ordering::Relaxed)));
        self.leases.set(gauge(leases));
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding metrics failed: {e}\n"))
    }
}

/// Serves `GET /metrics` with `render()` until `stop`.
pub(crate) async fn serve(
    listener: TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    stop: CancellationToken,
) {
    let slots = crate::slots::Slots::new();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let Some(slot) = slots.try_acquire(MAX_CONNECTIONS) else {
            tracing::debug!(%peer, "metrics connection limit reached; closing");
            continue;
        };
        let render = Arc::clone(&render);
        let stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let render = Arc::clone(&render);
                async move { Ok::<_, Infallible>(respond(&req, || render())) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                r = tokio::time::timeout(REQUEST_TIMEOUT * 6, conn) => {
                    if let Ok(Err(e)) = r {
                        tracing::debug!(%peer, error = %e, "metrics connection error");
                    }
                }
                _ = stop.cancelled() => {}
            }
        });
    }
}

fn respond<B>(req: &Request<B>, render: impl FnOnce() -> String) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, prometheus::TEXT_FORMAT, render()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn render_names_every_metric_and_no_free_form_label() {
        let m = RelayMetrics::new().unwrap();
        m.session_started();
        m.splice_started();
        m.dialer_to_owner.inc_by(10);
        m.owner_to_dialer.inc_by(5);
        m.record_refused(ConnectCode::NotFound);
        m.record_reload(true);
        m.record_reload(false);
        let text = m.render(3);
        for line in [
            "postern_relay_sessions 1",
            "postern_relay_sessions_total 1",
            "postern_relay_leases 3",
            "postern_relay_streams_active 1",
            "postern_relay_streams_total 1",
            "postern_relay_spliced_bytes_total{direction=\"dialer_to_owner\"} 10",
            "postern_relay_spliced_bytes_total{direction=\"owner_to_dialer\"} 5",
            "postern_relay_refusals_total{code=\"not_found\"} 1",
            "postern_relay_refusals_total{code=\"shutting_down\"} 0",
            "postern_relay_config_reloads_total{result=\"ok\"} 1",
            "postern_relay_config_reloads_total{result=\"failed\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert_eq!(m.bytes_spliced(), 15);
        assert_eq!(m.connects_refused(), 1);
        assert_eq!(m.config_reloads(), (1, 1));
        m.session_ended();
        assert!(m.render(0).contains("postern_relay_sessions 0"));
    }

    #[test]
    fn only_get_metrics_is_served() {
        let get = Request::get("/metrics").body(()).unwrap();
        let resp = respond(&get, || "x 1\n".into());
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/plain; version=0.0.4"
        );
        for req in [
            Request::get("/").body(()).unwrap(),
            Request::post("/metrics").body(()).unwrap(),
        ] {
            assert_eq!(
                respond(&req, || unreachable!()).status(),
                StatusCode::NOT_FOUND
            );
        }
    }
}

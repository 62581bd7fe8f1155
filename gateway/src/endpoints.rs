//! The gateway's own endpoints.
//!
//! * On the client listeners, on the gateway's own names only (on a lease host the whole path
//!   belongs to the origin, its `/healthz` included), behind the IP policy: `GET /healthz`
//!   (the process serves) and `GET /readyz` (a relay is reachable).
//! * On the metrics listener (`[metrics] listen`, loopback by default, a socket of its own so
//!   that scraping never shares limits or policy with client traffic): `GET /metrics`, the
//!   Prometheus text format of [`crate::metrics`], and `/healthz`. It serves at most
//!   [`METRICS_MAX_CONNECTIONS`] scrapers at once, each bounded in time.
//! * `/api/v1/…` on the client listeners, on the gateway's own names, when `[control]` is on:
//!   the control plane ([`crate::control::serve`]), with its own admin tokens; the gateway
//!   looks for no API key on these paths.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use pingora::proxy::Session;
use tokio::sync::{watch, Semaphore};

use crate::access_log::Outcome;
use crate::problem::{Problem, Refusal};
use crate::respond;
use crate::route;
use crate::runtime::Runtime;

/// An endpoint the gateway answers itself on its client listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Healthz,
    Readyz,
    /// The control plane's API.
    ControlApi,
}

/// Scrapers served at once by the metrics listener.
pub const METRICS_MAX_CONNECTIONS: usize = 16;
/// Longest a scrape connection may take to send its head or stay open.
const METRICS_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `/readyz` waits for a relay.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// The gateway's own endpoint at `path`, when `host` is one of the gateway's own names.
/// `control` says whether the control plane is mounted.
pub fn own(
    path: &str,
    host: Option<&str>,
    base_domain: Option<&str>,
    control: bool,
) -> Option<Endpoint> {
    if route::is_lease_host(host, base_domain) {
        return None;
    }
    match path {
        "/healthz" => Some(Endpoint::Healthz),
        "/readyz" => Some(Endpoint::Readyz),
        "/api/v1" => control.then_some(Endpoint::ControlApi),
        p if p.starts_with("/api/v1/") => control.then_some(Endpoint::ControlApi),
        _ => None,
    }
}

/// Answers `endpoint`; `Err` is the refusal to answer with instead (relay not ready).
pub async fn answer(
    session: &mut Session,
    runtime: &Runtime,
    endpoint: Endpoint,
    ip: std::net::IpAddr,
) -> Result<pingora::Result<()>, Refusal> {
    match endpoint {
        Endpoint::ControlApi => crate::control::serve(session, runtime, ip).await,
        Endpoint::Healthz => Ok(respond::plain(session, 200, "ok\n").await),
        Endpoint::Readyz => {
            // One relay connection attempt at a time (the dialer serializes them).
            match tokio::time::timeout(READY_TIMEOUT, runtime.dialer.check_relay()).await {
                Ok(Ok(())) => Ok(respond::plain(session, 200, "ready\n").await),
                _ => Err(Refusal::new(
                    Problem::ServiceUnavailable,
                    Outcome::Unavailable,
                )),
            }
        }
    }
}

/// Serves the metrics listener until `shutdown` turns true.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    runtime: Arc<Runtime>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(METRICS_MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _)) = accepted else {
            // Out of descriptors or similar: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            continue; // dropped: closed at once
        };
        let runtime = Arc::clone(&runtime);
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let runtime = Arc::clone(&runtime);
                async move { Ok::<_, Infallible>(metrics_response(&req, &runtime)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(METRICS_CONNECTION_TIMEOUT, conn).await;
        });
    }
}

fn metrics_response<B>(req: &Request<B>, runtime: &Runtime) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String, kind: &'static str| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(kind),
        );
        resp
    };
    match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/metrics") => {
            runtime.refresh_metrics();
            text(
                StatusCode::OK,
                runtime.metrics.render(),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }
        (&http::Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}

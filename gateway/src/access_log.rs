//! The access log: one `tracing` event per request, target `postern::access`, written as a
//! JSON line with `--log-format json` (the default of `postern-gateway`).
//!
//! Each event carries the request id, the key id (never the key: the secret half is not in
//! [`AccessRecord`] at all), the lease, method, path without its query (a query may carry
//! tokens of the origin's own), status, bytes in and out, total and upstream durations, the
//! client IP and an [`Outcome`]. Refusals that matter to security (unauthenticated, forbidden,
//! rate limited) are logged at `warn`, everything else at `info`; `RUST_LOG=postern::access=off`
//! turns the access log off.

use std::net::IpAddr;
use std::time::Duration;

/// What became of a request: a fixed vocabulary, the `outcome` field of the access log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Outcome {
    /// Proxied, and the lease answered (any status of its own).
    #[default]
    Ok,
    /// Answered by the gateway itself (`/healthz`, `/readyz`).
    Endpoint,
    BadRequest,
    Unauthenticated,
    Forbidden,
    NotFound,
    TooLarge,
    RateLimited,
    BreakerOpen,
    Overloaded,
    /// The gateway could not decide (key verification busy, relay not ready).
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
    /// The client went away before the response was complete.
    ClientClosed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Endpoint => "endpoint",
            Self::BadRequest => "bad_request",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::BreakerOpen => "breaker_open",
            Self::Overloaded => "overloaded",
            Self::Unavailable => "unavailable",
            Self::UpstreamError => "upstream_error",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::ClientClosed => "client_closed",
        }
    }

    /// Whether the outcome is a security event (logged at `warn`).
    pub fn is_security_event(self) -> bool {
        matches!(
            self,
            Self::Unauthenticated | Self::Forbidden | Self::RateLimited
        )
    }

    /// Whether the upstream failed in a way the lease's circuit breaker counts.
    pub fn is_upstream_failure(self) -> bool {
        matches!(self, Self::UpstreamError | Self::UpstreamTimeout)
    }
}

/// One line of the access log.
#[derive(Debug)]
pub struct AccessRecord<'a> {
    pub request_id: &'a str,
    pub key_id: Option<&'a str>,
    pub lease: Option<&'a str>,
    pub method: &'a str,
    /// The request path as the client sent it, without the query.
    pub path: &'a str,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub total: Duration,
    /// From the upstream connection to the end of the response, when there was one.
    pub upstream: Option<Duration>,
    pub client_ip: Option<IpAddr>,
    pub outcome: Outcome,
    /// The gateway-side error, when there was one (never from the client's input verbatim).
    pub error: Option<&'a str>,
}

/// Writes the record.
pub fn emit(r: &AccessRecord<'_>) {
    let total_ms = r.total.as_secs_f64() * 1000.0;
    let upstream_ms = r.upstream.map(|d| d.as_secs_f64() * 1000.0);
    macro_rules! event {
        ($level:expr) => {
            tracing::event!(
                target: "postern::access",
                $level,
                request_id = r.request_id,
                key_id = r.key_id,
                lease = r.lease,
                method = r.method,
                path = r.path,
                status = r.status,
                bytes_in = r.bytes_in,
                bytes_out = r.bytes_out,
                total_ms,
                upstream_ms,
                client_ip = r.client_ip.map(|ip| ip.to_canonical().to_string()),
                outcome = r.outcome.as_str(),
                error = r.error,
                "request"
            )
        };
    }
    if r.outcome.is_security_event() {
        event!(tracing::Level::WARN);
    } else {
        event!(tracing::Level::INFO);
    }
}

/// The path of a request target without its query.
pub fn path_only(path_and_query: &str) -> &str {
    path_and_query
        .split_once('?')
        .map_or(path_and_query, |(path, _)| path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_never_reaches_the_log() {
        assert_eq!(path_only("/peer/web/a?token=secret"), "/peer/web/a");
        assert_eq!(path_only("/peer/web/a"), "/peer/web/a");
    }

    #[test]
    fn security_outcomes() {
        assert!(Outcome::RateLimited.is_security_event());
        assert!(!Outcome::Ok.is_security_event());
        assert!(Outcome::UpstreamTimeout.is_upstream_failure());
        assert!(!Outcome::BreakerOpen.is_upstream_failure());
    }
}

//! The access log: one `tracing` event per request, target `postern::access`, written as a
//! JSON line with `--log-format json` (the default of `postern-gateway`).
//!
//! Each event carries the request id, the key id (never the key: the secret half is not in
//! [`AccessRecord`] at all), the lease, method, path without its query (a query may carry
//! tokens of the origin's own), status, bytes in and out, total and upstream durations, the
//! client IP and an [`Outcome`]. Refusals that matter to security (unauthenticated, forbidden,
//! rate limited) are logged at `warn`, everything else at `info`; `RUST_LOG=postern::access=off`
//! turns the access log off.
//!
//! In JSON mode the binary writes these lines with [`AccessLayer`], a `tracing` layer that
//! formats the fixed fields of an access event straight into one JSON line (the same shape as
//! `tracing_subscriber`'s JSON formatter: `timestamp`, `level`, `fields`, `target`) and hands it
//! to the [`LogSink`]. The generic JSON formatter cost about 10 µs of CPU per request in the
//! gateway bench, a fifth of the gateway's whole cost per request; this costs a fraction.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

use crate::log_sink::LogSink;

/// The target of access-log events.
pub const TARGET: &str = "postern::access";

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
                target: TARGET,
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

/// Writes access-log events (target [`TARGET`]) as JSON lines to a [`LogSink`]; other events
/// are left to the other layers (which must not print these: see [`is_access`]).
#[derive(Debug)]
pub struct AccessLayer {
    sink: LogSink,
}

impl AccessLayer {
    pub fn new(sink: LogSink) -> Self {
        Self { sink }
    }
}

/// Whether an event is an access-log event (for the filter of the other layers).
pub fn is_access(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.target() == TARGET
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AccessLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let metadata = event.metadata();
        if !is_access(metadata) {
            return;
        }
        let mut line = String::with_capacity(512);
        line.push_str("{\"timestamp\":\"");
        let _ = write!(
            line,
            "{}",
            humantime::format_rfc3339_micros(SystemTime::now())
        );
        let _ = write!(line, "\",\"level\":\"{}\",\"fields\":{{", metadata.level());
        let mut fields = JsonFields {
            out: &mut line,
            first: true,
        };
        event.record(&mut fields);
        line.push_str("},\"target\":\"");
        line.push_str(TARGET);
        line.push_str("\"}\n");
        self.sink.push_line(line.as_bytes());
    }
}

/// Writes each field of an event as `"name":value`.
struct JsonFields<'a> {
    out: &'a mut String,
    first: bool,
}

impl JsonFields<'_> {
    fn key(&mut self, field: &Field) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        push_json_string(self.out, field.name());
        self.out.push(':');
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_json_string(self.out, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.out, "{value}");
        } else {
            self.out.push_str("null");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.key(field);
        push_json_string(self.out, &format!("{value:?}"));
    }
}

/// Appends `s` as a JSON string literal (RFC 8259 escaping).
pub fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The path of a request target without its query.
pub fn path_only(path_and_query: &str) -> &str {
    path_and_query
        .split_once('?')
        .map_or(path_and_query, |(path, _)| path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    use crate::log_sink::tests::Captured;

    #[test]
    fn an_access_event_is_one_json_line_with_every_field() {
        use tracing_subscriber::prelude::*;
        let out = Captured::default();
        let sink = LogSink::to(out.clone()).unwrap();
        let subscriber = tracing_subscriber::registry().with(AccessLayer::new(sink.clone()));
        tracing::subscriber::with_default(subscriber, || {
            emit(&AccessRecord {
                request_id: "r\"1",
                key_id: Some("abcd1234"),
                lease: None,
                method: "GET",
                path: "/peer/web/a\nb",
                status: 200,
                bytes_in: 1,
                bytes_out: 2,
                total: Duration::from_micros(1500),
                upstream: None,
                client_ip: Some("::ffff:127.0.0.1".parse().unwrap()),
                outcome: Outcome::Ok,
                error: None,
            });
            tracing::info!("not an access event");
        });
        std::thread::sleep(crate::log_sink::FLUSH_EVERY * 4);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["target"], TARGET);
        assert_eq!(v["level"], "INFO");
        let f = &v["fields"];
        assert_eq!(f["message"], "request");
        assert_eq!(f["request_id"], "r\"1");
        assert_eq!(f["key_id"], "abcd1234");
        assert!(f.get("lease").is_none());
        assert_eq!(f["path"], "/peer/web/a\nb");
        assert_eq!(f["status"], 200);
        assert_eq!(f["total_ms"], 1.5);
        assert_eq!(f["client_ip"], "127.0.0.1");
        assert_eq!(f["outcome"], "ok");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }

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

//! Error responses: RFC 9457 `application/problem+json`, one fixed meaning per status.
//!
//! Every refusal the gateway produces itself is a [`Problem`]. Its `type` URI, title and detail
//! are fixed strings: a problem never carries internal details (lease owners, relay addresses,
//! error chains, key ids). The request id is the one thing that varies, so an operator can find
//! the log line behind a response.
//!
//! | status | meaning |
//! |---|---|
//! | 400 | the request itself is malformed (e.g. an unparseable request target) |
//! | 401 | no key, a malformed key, an unknown key id, a wrong secret, or an expired key |
//! | 403 | the client IP is refused, or a valid key is not allowed this lease or method (scope) |
//! | 404 | no such lease, or no valid lease name; told only to authenticated callers (else 401) |
//! | 413 | the request body is larger than `limits.max_request_body_bytes` |
//! | 431 | the request head is larger than `limits.max_header_bytes` |
//! | 429 | a rate limit or the per-IP failed-authentication limit; `Retry-After` says when |
//! | 502 | the lease is offline, the origin is down, or the tunnel failed |
//! | 503 | the gateway could not decide now (`service-unavailable`), the lease's circuit breaker is open (`circuit-open`, with `Retry-After`), or the lease has too many requests in flight (`lease-overloaded`) |
//! | 504 | the upstream did not answer in time |
//!
//! A policy that refuses a request returns a [`Refusal`]: the problem, what the access log
//! records as the outcome, and the extra fields of the answer (`RateLimit-*`).

use bytes::Bytes;

use crate::access_log::{push_json_string, Outcome};

/// A policy's refusal of a request: answered with `problem`, logged as `outcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub problem: Problem,
    pub outcome: Outcome,
    /// Extra response fields (e.g. `RateLimit-Policy`, `RateLimit`).
    pub headers: Vec<(&'static str, String)>,
}

impl Refusal {
    pub fn new(problem: Problem, outcome: Outcome) -> Self {
        Self {
            problem,
            outcome,
            headers: Vec::new(),
        }
    }
}

/// A refusal produced by the gateway, rendered as problem+json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    HeaderTooLarge,
    TooManyRequests { retry_after_secs: u64 },
    BadGateway,
    ServiceUnavailable,
    CircuitOpen { retry_after_secs: u64 },
    LeaseOverloaded,
    GatewayTimeout,
}

/// Prefix of every problem `type` URI.
const TYPE_BASE: &str = "https://postern.dev/problems/";

impl Problem {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::PayloadTooLarge => 413,
            Self::HeaderTooLarge => 431,
            Self::TooManyRequests { .. } => 429,
            Self::BadGateway => 502,
            Self::ServiceUnavailable | Self::CircuitOpen { .. } | Self::LeaseOverloaded => 503,
            Self::GatewayTimeout => 504,
        }
    }

    /// The last segment of the stable `type` URI.
    pub fn slug(&self) -> &'static str {
        match self {
            Self::BadRequest => "bad-request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "lease-not-found",
            Self::PayloadTooLarge => "payload-too-large",
            Self::HeaderTooLarge => "header-too-large",
            Self::TooManyRequests { .. } => "too-many-requests",
            Self::BadGateway => "bad-gateway",
            Self::ServiceUnavailable => "service-unavailable",
            Self::CircuitOpen { .. } => "circuit-open",
            Self::LeaseOverloaded => "lease-overloaded",
            Self::GatewayTimeout => "gateway-timeout",
        }
    }

    /// The stable `type` URI, `https://postern.dev/problems/<slug>`.
    pub fn type_uri(&self) -> String {
        format!("{TYPE_BASE}{}", self.slug())
    }

    pub fn title(&self) -> &'static str {
        match self {
            Self::BadRequest => "Bad Request",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "Not Found",
            Self::PayloadTooLarge => "Payload Too Large",
            Self::HeaderTooLarge => "Request Header Fields Too Large",
            Self::TooManyRequests { .. } => "Too Many Requests",
            Self::BadGateway => "Bad Gateway",
            Self::ServiceUnavailable | Self::CircuitOpen { .. } | Self::LeaseOverloaded => {
                "Service Unavailable"
            }
            Self::GatewayTimeout => "Gateway Timeout",
        }
    }

    /// A fixed, client-safe explanation.
    pub fn detail(&self) -> &'static str {
        match self {
            Self::BadRequest => "The request is malformed.",
            Self::Unauthorized => {
                "A valid API key is required (Authorization: Bearer or X-API-Key)."
            }
            Self::Forbidden => "This API key is not allowed to make this request.",
            Self::NotFound => "No lease with this name is known to the gateway.",
            Self::PayloadTooLarge => "The request body exceeds the gateway's limit.",
            Self::HeaderTooLarge => "The request head exceeds the gateway's limit.",
            Self::TooManyRequests { .. } => "Too many requests; retry after the indicated delay.",
            Self::BadGateway => "The lease is offline or its service did not respond correctly.",
            Self::ServiceUnavailable => "The gateway or the lease is temporarily unavailable.",
            Self::CircuitOpen { .. } => {
                "The lease's service is failing; the gateway is not sending it requests for now."
            }
            Self::LeaseOverloaded => "The lease has too many requests in flight; retry later.",
            Self::GatewayTimeout => "The lease's service did not respond in time.",
        }
    }

    /// The JSON body: `{"type","title","status","detail","request_id"}`.
    pub fn body(&self, request_id: &str) -> Bytes {
        let mut out = String::with_capacity(256 + request_id.len());
        out.push_str("{\"type\":");
        push_json_string(&mut out, &self.type_uri());
        out.push_str(",\"title\":");
        push_json_string(&mut out, self.title());
        out.push_str(&format!(",\"status\":{},\"detail\":", self.status()));
        push_json_string(&mut out, self.detail());
        out.push_str(",\"request_id\":");
        push_json_string(&mut out, request_id);
        out.push('}');
        Bytes::from(out)
    }

    /// Response headers to set besides `content-length`.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![("content-type", "application/problem+json".to_owned())];
        match self {
            Self::Unauthorized => headers.push(("www-authenticate", "Bearer".to_owned())),
            Self::TooManyRequests { retry_after_secs } | Self::CircuitOpen { retry_after_secs } => {
                headers.push(("retry-after", retry_after_secs.to_string()));
            }
            _ => {}
        }
        headers
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const ALL: [Problem; 12] = [
        Problem::BadRequest,
        Problem::Unauthorized,
        Problem::Forbidden,
        Problem::NotFound,
        Problem::PayloadTooLarge,
        Problem::HeaderTooLarge,
        Problem::TooManyRequests {
            retry_after_secs: 7,
        },
        Problem::BadGateway,
        Problem::ServiceUnavailable,
        Problem::CircuitOpen {
            retry_after_secs: 3,
        },
        Problem::LeaseOverloaded,
        Problem::GatewayTimeout,
    ];

    #[test]
    fn body_is_exact_problem_json() {
        let body = Problem::Forbidden.body("req-1");
        assert_eq!(
            body,
            "{\"type\":\"https://postern.dev/problems/forbidden\",\"title\":\"Forbidden\",\
             \"status\":403,\"detail\":\"This API key is not allowed to make this request.\",\
             \"request_id\":\"req-1\"}"
        );
    }

    #[test]
    fn request_id_is_escaped() {
        let body = Problem::NotFound.body("a\"b\\c\n\u{1}é");
        let text = std::str::from_utf8(&body).unwrap();
        assert!(
            text.ends_with(r#""request_id":"a\"b\\c\n\u0001é"}"#),
            "{text}"
        );
    }

    #[test]
    fn every_problem_has_distinct_stable_type_and_status() {
        let mut slugs: Vec<_> = ALL.iter().map(Problem::slug).collect();
        slugs.sort_unstable();
        slugs.dedup();
        assert_eq!(slugs.len(), ALL.len());
        for p in ALL {
            assert!(p.type_uri().starts_with("https://postern.dev/problems/"));
            assert!((400..600).contains(&p.status()));
            let body = p.body("id");
            let text = std::str::from_utf8(&body).unwrap();
            assert!(
                text.contains(&format!("\"status\":{}", p.status())),
                "{text}"
            );
        }
    }

    #[test]
    fn headers_carry_challenge_and_retry_after() {
        let ct = ("content-type", "application/problem+json".to_owned());
        assert_eq!(
            Problem::Unauthorized.headers(),
            vec![ct.clone(), ("www-authenticate", "Bearer".to_owned())]
        );
        let limited = Problem::TooManyRequests {
            retry_after_secs: 7,
        };
        assert_eq!(
            limited.headers(),
            vec![ct.clone(), ("retry-after", "7".into())]
        );
        assert_eq!(Problem::BadGateway.headers(), vec![ct]);
    }
}

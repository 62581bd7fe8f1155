//! Routing: which lease a request is for, and what path the origin sees.
//!
//! Two styles reach a lease:
//! * host routing, `{lease}.{base_domain}` (one label, domain compared case-insensitively, port
//!   ignored, label lowercased as DNS is case-insensitive) when `base_domain` is configured; the
//!   whole path and query go to the origin unchanged, so an origin may have its own `/peer/…`;
//! * path routing, `/peer/{lease}/rest?query` on any other host: the prefix is stripped and the
//!   origin sees `/rest?query`.
//!
//! Only the lease segment is percent-decoded, and strictly: a bad escape, an encoded `/`, a
//! control character or invalid UTF-8 refuses the request instead of being guessed at. The rest
//! of the path and the query are forwarded byte for byte, never decoded or re-encoded. The name
//! is then NFC-normalized and checked by `postern_sdk::lease_name`. Routing never looks up
//! whether the lease exists: that is decided after authentication (see `problem.rs`, 404).

use postern_sdk::lease_name::{normalize, LeaseNameError};

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// NFC-normalized lease name.
    pub lease: String,
    /// What the origin receives as path and query; always starts with `/`.
    pub upstream_path_and_query: String,
}

/// Why a request could not be routed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("the request names no lease")]
    NoLease,
    #[error("the lease segment is not strictly percent-encoded UTF-8")]
    BadEncoding,
    #[error(transparent)]
    BadName(#[from] LeaseNameError),
}

const PEER_PREFIX: &str = "/peer/";

/// Routes a request by its `Host` (or `:authority`) and its origin-form path and query.
pub fn route(
    path_and_query: &str,
    host: Option<&str>,
    base_domain: Option<&str>,
) -> Result<Route, RouteError> {
    if !path_and_query.starts_with('/') {
        return Err(RouteError::NoLease);
    }
    if let Some(label) = host.zip(base_domain).and_then(|(h, d)| lease_label(h, d)) {
        return Ok(Route {
            lease: normalize(&label)?,
            upstream_path_and_query: path_and_query.to_owned(),
        });
    }
    let rest = path_and_query
        .strip_prefix(PEER_PREFIX)
        .ok_or(RouteError::NoLease)?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (segment, tail) = rest.split_at(end);
    let lease = normalize(&percent_decode_segment(segment)?)?;
    let upstream_path_and_query = if tail.starts_with('/') {
        tail.to_owned()
    } else {
        format!("/{tail}")
    };
    Ok(Route {
        lease,
        upstream_path_and_query,
    })
}

/// Whether `host` names a lease by host routing (`{lease}.{base_domain}`): then every path on
/// it, `/healthz` included, belongs to that lease's origin.
pub fn is_lease_host(host: Option<&str>, base_domain: Option<&str>) -> bool {
    host.zip(base_domain)
        .is_some_and(|(h, d)| lease_label(h, d).is_some())
}

/// The single lowercased label in front of `.{base_domain}` in `host`, if there is one.
fn lease_label(host: &str, base_domain: &str) -> Option<String> {
    if host.starts_with('[') {
        return None; // an IPv6 literal
    }
    let host = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let base = base_domain.strip_suffix('.').unwrap_or(base_domain);
    let label = host
        .strip_suffix(&base.to_ascii_lowercase())?
        .strip_suffix('.')?;
    (!label.is_empty() && !label.contains('.')).then(|| label.to_owned())
}

/// Strict percent-decoding of one path segment.
fn percent_decode_segment(segment: &str) -> Result<String, RouteError> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(RouteError::BadEncoding)?;
            let decoded = std::str::from_utf8(hex)
                .ok()
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(RouteError::BadEncoding)?;
            i += 3;
            decoded
        } else {
            i += 1;
            bytes[i - 1]
        };
        if byte == b'/' || byte.is_ascii_control() {
            return Err(RouteError::BadEncoding);
        }
        out.push(byte);
    }
    String::from_utf8(out).map_err(|_| RouteError::BadEncoding)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn path(p: &str) -> Result<Route, RouteError> {
        route(p, Some("gw.example.com"), Some("gw.example.com"))
    }

    fn upstream(p: &str) -> (String, String) {
        let r = path(p).unwrap();
        (r.lease, r.upstream_path_and_query)
    }

    #[test]
    fn peer_prefix_is_stripped_and_query_kept_verbatim() {
        let s = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(
            upstream("/peer/my-mcp/a/b?x=1&y=%2F"),
            s("my-mcp", "/a/b?x=1&y=%2F")
        );
        assert_eq!(upstream("/peer/my-mcp"), s("my-mcp", "/"));
        assert_eq!(upstream("/peer/my-mcp/"), s("my-mcp", "/"));
        assert_eq!(upstream("/peer/my-mcp?q=%zz"), s("my-mcp", "/?q=%zz"));
        assert_eq!(upstream("/peer/a/%2e%2E/x%2Fy"), s("a", "/%2e%2E/x%2Fy"));
    }

    #[test]
    fn lease_segment_is_decoded_strictly_and_normalized() {
        assert_eq!(upstream("/peer/caf%C3%A9/x").0, "caf\u{e9}");
        assert_eq!(upstream("/peer/cafe%CC%81").0, "caf\u{e9}");
        assert_eq!(upstream("/peer/%6d%79/").0, "my");
        for bad in [
            "/peer/a%2Fb/x",
            "/peer/a%2f",
            "/peer/a%00b",
            "/peer/a%0Ab",
            "/peer/a%7F",
            "/peer/a%",
            "/peer/a%4",
            "/peer/a%zz",
            "/peer/a%+1",
            "/peer/%C3",
            "/peer/%FF%FE",
        ] {
            assert_eq!(path(bad), Err(RouteError::BadEncoding), "{bad}");
        }
        assert!(matches!(path("/peer/a%20b"), Err(RouteError::BadName(_))));
        assert!(matches!(path("/peer/..%2e"), Err(RouteError::BadName(_))));
        assert!(matches!(path("/peer//x"), Err(RouteError::BadName(_))));
    }

    #[test]
    fn without_a_lease_there_is_no_route() {
        for p in ["/", "/peer", "/peers/a", "*", "", "http://a/peer/b"] {
            assert_eq!(path(p), Err(RouteError::NoLease), "{p}");
        }
        assert_eq!(
            route("/x", None, Some("gw.example.com")),
            Err(RouteError::NoLease)
        );
        assert_eq!(
            route("/x", Some("a.gw.example.com"), None),
            Err(RouteError::NoLease)
        );
    }

    #[test]
    fn host_routing_takes_one_label_under_the_base_domain() {
        let base = Some("gw.example.com");
        let r = route("/peer/x/y?q", Some("My-MCP.GW.Example.com:8443"), base).unwrap();
        assert_eq!(r.lease, "my-mcp");
        assert_eq!(r.upstream_path_and_query, "/peer/x/y?q");
        assert_eq!(
            route("/", Some("a.gw.example.com."), base).unwrap().lease,
            "a"
        );
        for host in [
            "a.b.gw.example.com",
            ".gw.example.com",
            "agw.example.com",
            "[::1]:443",
        ] {
            assert_eq!(
                route("/x", Some(host), base),
                Err(RouteError::NoLease),
                "{host}"
            );
        }
        let r = route("/peer/p/z", Some("a.b.gw.example.com"), base).unwrap();
        assert_eq!(
            (r.lease.as_str(), r.upstream_path_and_query.as_str()),
            ("p", "/z")
        );
        assert!(matches!(
            route("/", Some("-a.gw.example.com"), base),
            Err(RouteError::BadName(_))
        ));
        assert!(is_lease_host(Some("a.gw.example.com:443"), base));
        for host in [Some("gw.example.com"), Some("a.b.gw.example.com"), None] {
            assert!(!is_lease_host(host, base), "{host:?}");
        }
        assert!(!is_lease_host(Some("a.gw.example.com"), None));
    }

    fn percent_encode_all(s: &str, upper: bool) -> String {
        s.bytes()
            .map(|b| {
                if upper {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect()
    }

    proptest! {
        #[test]
        fn route_never_panics(p in "\\PC*", host in proptest::option::of("\\PC*"),
                              base in proptest::option::of("[a-z.]{0,12}")) {
            let _ = route(&p, host.as_deref(), base.as_deref());
            let _ = route(&format!("/peer/{p}"), host.as_deref(), base.as_deref());
        }

        #[test]
        fn a_valid_lease_round_trips_through_percent_encoding(
            name in "[\\p{L}\\p{N}][\\p{L}\\p{N}._-]{0,12}[\\p{L}\\p{N}]",
            upper: bool,
            tail in "(/[a-z%0-9]{0,8}){0,3}(\\?[a-z=&%]{0,8})?",
        ) {
            let expected = normalize(&name);
            prop_assume!(expected.is_ok());
            let encoded = percent_encode_all(&name, upper);
            let r = route(&format!("/peer/{encoded}{tail}"), None, None).unwrap();
            prop_assert_eq!(r.lease, expected.unwrap());
            let want = if tail.starts_with('/') { tail.clone() } else { format!("/{tail}") };
            prop_assert_eq!(r.upstream_path_and_query, want);
        }
    }
}

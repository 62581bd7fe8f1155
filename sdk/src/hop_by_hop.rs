//! Hop-by-hop header fields (RFC 9110 §7.6.1): they describe one connection, so a proxy
//! removes them before forwarding, in both directions. Postern has two proxies on the path, the
//! gateway (caller → tunnel) and the agent in `expose` (tunnel → local service); both use this.
//!
//! Removed: every field named in `Connection`, and `Connection`, `Keep-Alive`,
//! `Proxy-Connection`, `TE` (except `TE: trailers`, below), `Trailer`, `Upgrade`. Kept on purpose: `Transfer-Encoding`, which
//! Pingora consumes and regenerates itself for each hop's framing, and — for a protocol
//! upgrade (WebSocket) — `Connection: upgrade` with `Upgrade`, which is the request to
//! upgrade the next hop as well.

use http::header::{HeaderMap, HeaderName, CONNECTION, TE, TRAILER, UPGRADE};

/// The fields that are always connection-specific.
const ALWAYS: [&str; 3] = ["keep-alive", "proxy-connection", "connection"];

/// The names of the hop-by-hop fields present in `headers`, lower case, without duplicates.
/// With `upgrading`, `Connection` and `Upgrade` stay (see the module docs).
pub fn fields(headers: &HeaderMap, upgrading: bool) -> Vec<HeaderName> {
    let mut out: Vec<HeaderName> = Vec::new();
    let mut add = |name: HeaderName| {
        if headers.contains_key(&name) && !out.contains(&name) {
            out.push(name);
        }
    };
    for value in headers.get_all(CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if upgrading && token.eq_ignore_ascii_case("upgrade") {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.to_ascii_lowercase().as_bytes()) {
                add(name);
            }
        }
    }
    for name in ALWAYS {
        if upgrading && name == "connection" {
            continue;
        }
        add(HeaderName::from_static(name));
    }
    // `TE: trailers` alone is end to end in practice: it says the client takes trailers
    // (gRPC needs it, and HTTP/2 allows no other TE value); origins send trailers only when
    // asked for them this way.
    let te_trailers_only = headers.get_all(TE).iter().count() == 1
        && headers
            .get(TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_trailers_only {
        add(TE);
    }
    add(TRAILER);
    if !upgrading {
        add(UPGRADE);
    }
    out
}

/// Removes the hop-by-hop fields from `headers` (see [`fields`]).
pub fn strip(headers: &mut HeaderMap, upgrading: bool) {
    for name in fields(headers, upgrading) {
        headers.remove(&name);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    fn names(v: Vec<HeaderName>) -> Vec<String> {
        let mut n: Vec<String> = v.iter().map(|h| h.as_str().to_owned()).collect();
        n.sort();
        n
    }

    #[test]
    fn connection_nominated_and_standard_fields_go() {
        let h = map(&[
            ("connection", "close, X-Secret"),
            ("connection", "keep-alive"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("upgrade", "h2c"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "1"),
        ]);
        assert_eq!(
            names(fields(&h, false)),
            [
                "connection",
                "keep-alive",
                "proxy-connection",
                "te",
                "upgrade",
                "x-secret"
            ]
        );
    }

    #[test]
    fn te_trailers_alone_stays_any_other_te_goes() {
        let only = map(&[("te", "trailers")]);
        assert!(fields(&only, false).is_empty());
        let other = map(&[("te", "trailers, deflate")]);
        assert_eq!(names(fields(&other, false)), ["te"]);
        let twice = map(&[("te", "trailers"), ("te", "gzip")]);
        assert_eq!(names(fields(&twice, false)), ["te"]);
        // Named in `Connection`, it is hop-by-hop whatever its value.
        let nominated = map(&[("connection", "te"), ("te", "trailers")]);
        assert_eq!(names(fields(&nominated, false)), ["connection", "te"]);
    }

    #[test]
    fn an_upgrade_keeps_connection_and_upgrade() {
        let h = map(&[
            ("connection", "Upgrade, X-Secret"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
        ]);
        assert_eq!(names(fields(&h, true)), ["x-secret"]);
    }

    #[test]
    fn strip_removes_every_field_named() {
        let mut h = map(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("x-kept", "1"),
        ]);
        strip(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn malformed_tokens_are_ignored() {
        let h = map(&[("connection", "bad name, ,x-ok"), ("x-ok", "1")]);
        assert_eq!(names(fields(&h, false)), ["connection", "x-ok"]);
    }
}

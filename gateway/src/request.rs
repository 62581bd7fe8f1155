//! What the gateway requires of a request head: before any policy looks at it
//! ([`check_head`]), a head within `limits.max_header_bytes` and `limits.max_header_count` and
//! `Host` on HTTP/1.1 (RFC 9112 §3.2), then the one rewrite done before policy, ignoring an
//! `Upgrade: h2c` offer; once the lease is known ([`check_declared_body`]), a `Content-Length`
//! within `limits.max_request_body_bytes`. Each refusal is a [`Refusal`]; nothing here looks
//! at keys or leases.

use pingora::http::RequestHeader;
use postern_config::GatewayLimits;

use crate::access_log::Outcome;
use crate::problem::{Problem, Refusal};

/// The head's size and field count, `Host`; then `Upgrade: h2c` is dropped.
pub fn check_head(head: &mut RequestHeader, limits: &GatewayLimits) -> Result<(), Refusal> {
    if head_size(head) > limits.max_header_bytes || head.headers.len() > limits.max_header_count {
        return Err(Refusal::new(Problem::HeaderTooLarge, Outcome::TooLarge));
    }
    if lacks_required_host(head) {
        return Err(Refusal::new(Problem::BadRequest, Outcome::BadRequest));
    }
    ignore_h2c_upgrade(head);
    Ok(())
}

/// A declared body over the limit is refused before anything is read (413).
pub fn check_declared_body(head: &RequestHeader, limits: &GatewayLimits) -> Result<(), Refusal> {
    let too_big = head
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limits.max_request_body_bytes);
    if too_big {
        return Err(Refusal::new(Problem::PayloadTooLarge, Outcome::TooLarge));
    }
    Ok(())
}

/// The host the request names: `Host`, or the authority of an absolute or HTTP/2 target.
pub fn host(head: &RequestHeader) -> Option<String> {
    head.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| head.uri.authority().map(|a| a.as_str()))
        .map(str::to_owned)
}

/// The size of a parsed request head as it is written in HTTP/1.1: request line, and each
/// field as `name: value\r\n`.
pub fn head_size(head: &RequestHeader) -> usize {
    let target = head.uri.authority().map_or(0, |a| a.as_str().len())
        + head.uri.path_and_query().map_or(1, |p| p.as_str().len());
    let line = head.method.as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    head.headers.iter().fold(line, |size, (name, value)| {
        size + name.as_str().len() + value.len() + ": \r\n".len()
    })
}

/// `Upgrade: h2c` (what `curl --http2` sends over plain HTTP) asks for HTTP/2 in place of
/// this HTTP/1.1 connection, which the gateway does not do; RFC 9110 §7.8 lets a server ignore
/// it, and so it does: the request stays a plain request (no tunnel, no write scope needed),
/// and `HTTP2-Settings` goes with the `Connection` list as any hop-by-hop field does.
fn ignore_h2c_upgrade(head: &mut RequestHeader) {
    let only_h2c = head
        .headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').all(|t| t.trim().eq_ignore_ascii_case("h2c")));
    if only_h2c {
        head.remove_header(&http::header::UPGRADE);
        head.remove_header("http2-settings");
    }
}

/// Whether an HTTP/1.1 request lacks the `Host` field that RFC 9112 §3.2 requires of it (the
/// server must answer 400). HTTP/1.0 may omit it; HTTP/2 carries `:authority` instead.
fn lacks_required_host(head: &RequestHeader) -> bool {
    head.version == http::Version::HTTP_11 && head.headers.get(http::header::HOST).is_none()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn head_size_is_the_size_of_the_head_as_http1_writes_it() {
        let mut head = RequestHeader::build("GET", b"/a/b?c=d", None).unwrap();
        head.insert_header("host", "example.test").unwrap();
        head.append_header("x-many", "1").unwrap();
        head.append_header("x-many", "22").unwrap();
        let written = "GET /a/b?c=d HTTP/1.1\r\nhost: example.test\r\nx-many: 1\r\nx-many: 22\r\n";
        assert_eq!(head_size(&head), written.len());
    }

    #[test]
    fn too_many_fields_is_431() {
        let limits = GatewayLimits {
            max_header_count: 3,
            ..GatewayLimits::default()
        };
        let mut head = RequestHeader::build("GET", b"/", None).unwrap();
        head.insert_header("host", "example.test").unwrap();
        for i in 0..2 {
            head.append_header("x-many", i.to_string()).unwrap();
        }
        check_head(&mut head, &limits).unwrap();
        head.append_header("x-many", "3").unwrap();
        let refusal = check_head(&mut head, &limits).unwrap_err();
        assert_eq!(refusal.problem, Problem::HeaderTooLarge);
    }

    #[test]
    fn only_an_h2c_upgrade_is_ignored() {
        let mut head = RequestHeader::build("GET", b"/", None).unwrap();
        head.insert_header("upgrade", "h2c").unwrap();
        head.insert_header("http2-settings", "AAMAAABkAAQAAP__")
            .unwrap();
        ignore_h2c_upgrade(&mut head);
        assert!(head.headers.get("upgrade").is_none());
        assert!(head.headers.get("http2-settings").is_none());
        for kept in ["websocket", "h2c, websocket"] {
            let mut head = RequestHeader::build("GET", b"/", None).unwrap();
            head.insert_header("upgrade", kept).unwrap();
            ignore_h2c_upgrade(&mut head);
            assert_eq!(head.headers["upgrade"], kept);
        }
    }

    #[test]
    fn http11_needs_a_host() {
        let mut head = RequestHeader::build("GET", b"/", None).unwrap();
        assert!(lacks_required_host(&head));
        head.insert_header("host", "example.com").unwrap();
        assert!(!lacks_required_host(&head));
        let mut old = RequestHeader::build("GET", b"/", None).unwrap();
        old.set_version(http::Version::HTTP_10);
        assert!(!lacks_required_host(&old));
        let mut h2 = RequestHeader::build("GET", b"/", None).unwrap();
        h2.set_version(http::Version::HTTP_2);
        assert!(!lacks_required_host(&h2));
    }
}

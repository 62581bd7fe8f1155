//! The request path, phase by phase: this `impl ProxyHttp` is the table of contents of a
//! request through the gateway.
//!
//! 0. `early_request_filter`: the head is complete, the slowloris deadline is lifted
//!    ([`crate::header_deadline`]); `logging` sets it again for the next request.
//! 1. `request_filter`: request id → head size → `Host` present (HTTP/1.1) → client IP policy
//!    → health endpoints (not on lease hosts) → authenticate (API key) → route (which lease) →
//!    authorize (lease ACL, scope, per-key IPs) → lease exists → body limit → `Host` kept for
//!    the origin.
//!    Any refusal is answered here with an RFC 9457 problem and the request ends.
//! 2. `upstream_peer`: a virtual peer whose connector opens an inner stream of the lease's
//!    E2EE session.
//! 3. `upstream_request_filter`: hop-by-hop fields out ([`postern_sdk::hop_by_hop`]), forwarding
//!    headers in; the caller's API key never leaves. The gateway is the edge, the first hop an
//!    origin can trust: forwarding fields a client sent (`Forwarded`, `X-Forwarded-*`,
//!    `X-Real-IP`, also spelled with `_`) are replaced, never extended, so an origin reading
//!    `X-Forwarded-For` gets the address the gateway saw, not one the client chose. A request
//!    that is not an upgrade asks the agent to close the inner stream after it.
//! 4. `response_filter`: hop-by-hop fields out; the request id goes back to the caller.
//! 5. `fail_to_proxy`: tunnel and origin failures become 502/504 problems.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};

use crate::connector::{TunnelConnector, UpgradeGate};
use crate::header_deadline::HeaderDeadlineStream;
use crate::problem::Problem;
use crate::state::GatewayState;
use crate::{acl, auth, route};
use postern_sdk::hop_by_hop;

/// Everything known about one request, filled in phase by phase.
#[derive(Debug, Default)]
pub struct RequestCtx {
    pub request_id: String,
    pub client_ip: Option<IpAddr>,
    pub lease: Option<String>,
    pub key_id: Option<String>,
    pub original_host: Option<String>,
    pub body_bytes: u64,
    /// For an upgrade request: opened when its body ends (cloudflare/pingora#946 workaround).
    pub upgrade_gate: Option<Arc<UpgradeGate>>,
    /// The request body has ended (seen by `request_body_filter`).
    pub body_ended: bool,
}

/// The gateway's proxy logic.
pub struct GatewayProxy {
    pub state: Arc<GatewayState>,
}

/// The field that names a request to the caller and to the origin.
const REQUEST_ID_FIELD: &str = "x-request-id";

fn request_id(session: &Session) -> String {
    session
        .req_header()
        .headers
        .get(REQUEST_ID_FIELD)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(new_request_id)
}

/// A fresh request id: 128 random bits in hex.
pub fn new_request_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Answers the request with a problem document and ends it.
async fn respond(
    session: &mut Session,
    ctx: &RequestCtx,
    problem: Problem,
) -> pingora::Result<bool> {
    let body = problem.body(&ctx.request_id);
    let mut resp = ResponseHeader::build(problem.status(), Some(4))?;
    for (name, value) in problem.headers() {
        resp.insert_header(name, value)?;
    }
    resp.insert_header(REQUEST_ID_FIELD, ctx.request_id.as_str())?;
    resp.set_content_length(body.len())?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(true)
}

async fn plain(session: &mut Session, status: u16, body: &'static str) -> pingora::Result<bool> {
    let mut resp = ResponseHeader::build(status, Some(2))?;
    resp.insert_header("content-type", "text/plain")?;
    resp.set_content_length(body.len())?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
        .await?;
    Ok(true)
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::default()
    }

    /// The head is in: the slowloris deadline no longer applies to this request.
    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        if let Some(stream) = session.stream().and_then(HeaderDeadlineStream::of) {
            stream.disarm();
            session.set_keepalive(Some(self.state.config.limits.keepalive_timeout.as_secs()));
        }
        Ok(())
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<bool> {
        let state = &self.state;
        ctx.request_id = request_id(session);
        ctx.client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        if head_size(session.req_header()) > state.config.limits.max_header_bytes {
            return respond(session, ctx, Problem::HeaderTooLarge).await;
        }
        if lacks_required_host(session.req_header()) {
            return respond(session, ctx, Problem::BadRequest).await;
        }
        ignore_h2c_upgrade(session.req_header_mut());
        let Some(ip) = ctx.client_ip else {
            return respond(session, ctx, Problem::Forbidden).await;
        };
        if !acl::ip_allowed(&state.config.ip, ip) {
            return respond(session, ctx, Problem::Forbidden).await;
        }
        let header = session.req_header();
        let host = header
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| header.uri.authority().map(|a| a.as_str()))
            .map(str::to_owned);
        let base_domain = state.config.base_domain.as_deref();
        // The gateway's own health endpoints, on its own names only: on a lease host the whole
        // path belongs to the origin (its `/healthz` included).
        if !route::is_lease_host(host.as_deref(), base_domain) {
            match header.uri.path() {
                "/healthz" => return plain(session, 200, "ok\n").await,
                "/readyz" => {
                    // One relay connection attempt at a time (the dialer serializes them).
                    let ready =
                        tokio::time::timeout(Duration::from_secs(5), state.dialer.check_relay());
                    return match ready.await {
                        Ok(Ok(())) => plain(session, 200, "ready\n").await,
                        _ => respond(session, ctx, Problem::ServiceUnavailable).await,
                    };
                }
                _ => {}
            }
        }

        // Authenticate before anything about leases is revealed (a client over its failure
        // quota is refused inside `verify`, unless its key is already verified).
        let presented = match auth::KeyStore::extract(&session.req_header().headers) {
            Ok(Some(key)) => key.to_owned(),
            Ok(None) | Err(_) => return respond(session, ctx, Problem::Unauthorized).await,
        };
        let now = postern_sdk::grant::unix_now();
        let key = match state.keys.verify(&presented, now, ip).await {
            Ok(key) => key,
            Err(e) => return respond(session, ctx, e.problem()).await,
        };
        ctx.key_id = Some(key.id.clone());

        let header = session.req_header();
        let path_and_query = header
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        let Ok(routed) = route::route(&path_and_query, host.as_deref(), base_domain) else {
            return respond(session, ctx, Problem::NotFound).await;
        };
        // The key's own rules before the lease table: a key for some leases learns nothing
        // about which other leases exist (403 for every name outside its globs).
        let access = acl::Access::of(&header.method, session.is_upgrade_req());
        if acl::authorize(&key, &routed.lease, access, ip, &state.config.ip).is_err() {
            return respond(session, ctx, Problem::Forbidden).await;
        }
        if !state.leases.contains_key(&routed.lease) {
            return respond(session, ctx, Problem::NotFound).await;
        }
        let too_big = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > state.config.limits.max_request_body_bytes);
        if too_big {
            let done = respond(session, ctx, Problem::PayloadTooLarge).await;
            self.linger(session).await;
            return done;
        }
        let uri = routed
            .upstream_path_and_query
            .parse::<http::Uri>()
            .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "upstream path", e))?;
        let upstream = session.req_header_mut();
        // An HTTP/2 request names its host only in `:authority`, which the origin-form URI
        // drops; the HTTP/1.1 request to the origin must carry it as `Host`.
        if !upstream.headers.contains_key(http::header::HOST) {
            if let Some(host) = &host {
                upstream.insert_header(http::header::HOST, host.as_str())?;
            }
        }
        upstream.set_uri(uri);
        ctx.original_host = host;
        ctx.lease = Some(routed.lease);
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        if end_of_stream {
            ctx.body_ended = true;
            if let Some(gate) = &ctx.upgrade_gate {
                gate.open();
            }
        }
        // After a protocol upgrade these are WebSocket bytes, bounded by idle time rather than
        // by the request body limit (Pingora passes them through this filter too).
        if let Some(chunk) = body.as_ref().filter(|_| !session.was_upgraded()) {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > self.state.config.limits.max_request_body_bytes {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body too large",
                ));
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        let lease = ctx
            .lease
            .as_deref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no lease routed"))?;
        let target = self
            .state
            .leases
            .get(lease)
            .cloned()
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(404), "unknown lease"))?;
        // A numeric placeholder address (HttpPeer::new resolves and unwraps); the lease goes
        // into the pool key so that two leases can never share an upstream connection.
        let mut peer = HttpPeer::new(
            std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            false,
            String::new(),
        );
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        lease.hash(&mut hasher);
        peer.group_key = hasher.finish();
        let limits = &self.state.config.limits;
        // Virtual streams are never reused by Pingora 0.9.1: close them at once.
        peer.options.idle_timeout = Some(Duration::ZERO);
        peer.options.total_connection_timeout = Some(limits.upstream_connect_timeout);
        // SSE and WebSocket are bounded by idle time, not total time.
        peer.options.read_timeout = Some(limits.upstream_idle_timeout);
        peer.options.write_timeout = Some(limits.upstream_idle_timeout);
        if session.is_upgrade_req() {
            let gate = Arc::new(UpgradeGate::default());
            if ctx.body_ended {
                gate.open();
            }
            ctx.upgrade_gate = Some(gate);
        }
        peer.options.custom_l4 = Some(Arc::new(TunnelConnector {
            dialer: self.state.dialer.clone(),
            target,
            upgrade_gate: ctx.upgrade_gate.clone(),
        }));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        let upgrade = session.is_upgrade_req();
        for name in hop_by_hop::fields(&upstream.headers, upgrade) {
            upstream.remove_header(&name);
        }
        if !upgrade {
            // The inner stream ends with this exchange (Pingora 0.9.1 cannot reuse it; see
            // `crate::connector`). Saying so lets Pingora shut it down at once instead of
            // parking it in its pool, where the next request's reuse check fails on it (a
            // `getpeername` and an idle-watch task per request, and "failed to acquire reusable
            // stream" errors in the log when two requests race for it).
            upstream.insert_header(http::header::CONNECTION, "close")?;
        }
        // The caller's credentials are for the gateway only: whatever `extract` would read as
        // a key does not go on.
        for name in auth::credential_fields(&upstream.headers) {
            upstream.remove_header(name);
        }
        let spoofable: Vec<http::HeaderName> = upstream
            .headers
            .keys()
            .filter(|name| {
                is_forwarding_field(name.as_str()) || is_underscore_spelling_of_ours(name.as_str())
            })
            .cloned()
            .collect();
        for name in spoofable {
            upstream.remove_header(&name);
        }
        if let Some(ip) = ctx.client_ip {
            upstream.insert_header("x-forwarded-for", ip.to_canonical().to_string())?;
        }
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        upstream.insert_header("x-forwarded-proto", if tls { "https" } else { "http" })?;
        if let Some(host) = &ctx.original_host {
            upstream.insert_header("x-forwarded-host", host.as_str())?;
        }
        upstream.insert_header(REQUEST_ID_FIELD, ctx.request_id.as_str())?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        let upgrading = upstream.status == http::StatusCode::SWITCHING_PROTOCOLS;
        for name in hop_by_hop::fields(&upstream.headers, upgrading) {
            upstream.remove_header(&name);
        }
        upstream.insert_header(REQUEST_ID_FIELD, ctx.request_id.as_str())?;
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let problem = match e.etype() {
            ErrorType::HTTPStatus(413) => Problem::PayloadTooLarge,
            ErrorType::HTTPStatus(404) => Problem::NotFound,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                Problem::GatewayTimeout
            }
            _ => match e.esource() {
                pingora::ErrorSource::Downstream => Problem::BadRequest,
                _ => Problem::BadGateway,
            },
        };
        let client_gone = *e.esource() == pingora::ErrorSource::Downstream;
        if client_gone {
            tracing::debug!(request_id = %ctx.request_id, error = %e, "client went away");
        } else {
            tracing::info!(request_id = %ctx.request_id, lease = ?ctx.lease, error = %e, "proxy failed");
        }
        // Once the response head is out (SSE, a long body), nothing can be answered any more:
        // the connection is closed and the status that went out is the one logged.
        if let Some(sent) = session.response_written().map(|r| r.status.as_u16()) {
            return FailToProxy {
                error_code: sent,
                can_reuse_downstream: false,
            };
        }
        let status = problem.status();
        let _ = respond(session, ctx, problem).await;
        if status == 413 {
            self.linger(session).await;
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    /// A client that closes its connection mid-stream (an MCP client ending its SSE stream, a
    /// browser navigating away) is routine, not a gateway error: logged at debug above.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, e: &Error) -> bool {
        *e.esource() == pingora::ErrorSource::Downstream
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        // A kept-alive connection must deliver the next head in full within the idle
        // allowance plus the header time.
        if let Some(stream) = session.stream().and_then(HeaderDeadlineStream::of) {
            let limits = &self.state.config.limits;
            stream.arm(
                limits
                    .keepalive_timeout
                    .saturating_add(limits.request_header_timeout),
            );
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        tracing::info!(
            request_id = %ctx.request_id,
            lease = ?ctx.lease,
            key = ?ctx.key_id,
            status,
            error = ?e.map(|e| e.to_string()),
            "request"
        );
    }
}

/// The size of a parsed request head as it is written in HTTP/1.1: request line, and each
/// field as `name: value\r\n`.
fn head_size(head: &RequestHeader) -> usize {
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

/// Whether a field tells an origin who the client is, how it connected or under which name;
/// only the gateway sets these (`X-Forwarded-*` and the usual client-address fields).
fn is_forwarding_field(name: &str) -> bool {
    name.starts_with("x-forwarded-")
        || matches!(
            name,
            "forwarded"
                | "x-real-ip"
                | "x-client-ip"
                | "true-client-ip"
                | "cf-connecting-ip"
                | "fastly-client-ip"
                | "x-cluster-client-ip"
                | "x-original-forwarded-for"
        )
}

/// Whether a field name with `_` is, read with `-` for `_`, one the gateway sets or keeps from
/// the origin: a forwarding field, `X-Request-Id` or the `X-API-Key` credential.
///
/// CGI, WSGI and PHP origins see `X-Forwarded-For` and `X_Forwarded_For` as one variable
/// (`HTTP_X_FORWARDED_FOR`), so a client could otherwise choose the address such an origin
/// trusts, or hand it an API key under a name the gateway does not strip. nginx drops every
/// name with `_` for the same reason (`underscores_in_headers off`); the gateway drops only
/// these, so an origin's own `_` fields still arrive.
fn is_underscore_spelling_of_ours(name: &str) -> bool {
    if !name.contains('_') {
        return false;
    }
    let dashed = name.replace('_', "-");
    is_forwarding_field(&dashed) || dashed == REQUEST_ID_FIELD || dashed == auth::API_KEY_FIELD
}

/// Whether an HTTP/1.1 request lacks the `Host` field that RFC 9112 §3.2 requires of it (the
/// server must answer 400). HTTP/1.0 may omit it; HTTP/2 carries `:authority` instead.
fn lacks_required_host(head: &RequestHeader) -> bool {
    head.version == http::Version::HTTP_11 && head.headers.get(http::header::HOST).is_none()
}

/// How long an early refusal keeps reading the rest of a request body.
const LINGER: Duration = Duration::from_secs(5);

impl GatewayProxy {
    /// Reads and discards the rest of the request body for a while after answering early
    /// (413): closing a socket with unread input makes the kernel send a reset, which can
    /// destroy the answer before the client reads it (nginx's "lingering close"). Bounded by
    /// time only, [`LINGER`], like nginx's `lingering_time`: reading and dropping is cheap,
    /// and a byte cap would reintroduce the reset for a client that is simply fast.
    async fn linger(&self, session: &mut Session) {
        let _ = tokio::time::timeout(LINGER, async {
            while let Ok(Some(_)) = session.read_request_body().await {}
        })
        .await;
    }
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
    fn forwarding_fields_are_recognised() {
        for name in [
            "x-forwarded-for",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "forwarded",
        ] {
            assert!(is_forwarding_field(name), "{name}");
        }
        for name in ["true-client-ip", "cf-connecting-ip", "x-real-ip"] {
            assert!(is_forwarding_field(name), "{name}");
        }
        for name in ["x-forwarded", "x-request-id", "authorization", "host"] {
            assert!(!is_forwarding_field(name), "{name}");
        }
    }

    #[test]
    fn underscore_spellings_of_gateway_fields_are_recognised() {
        for name in [
            "x_forwarded_for",
            "x-forwarded_for",
            "x_real_ip",
            "true_client_ip",
            "x_request_id",
            "x_api_key",
            "x-api_key",
        ] {
            assert!(is_underscore_spelling_of_ours(name), "{name}");
        }
        for name in ["x-forwarded-for", "x-api-key", "x_custom_field", "my_token"] {
            assert!(!is_underscore_spelling_of_ours(name), "{name}");
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

//! The request path, phase by phase: this `impl ProxyHttp` is the table of contents of a
//! request through the gateway. Each phase is a few lines that call one policy module and
//! record what happened in the request's context ([`RequestCtx`]).
//!
//! 0. `new_ctx`: the request loads the runtime's snapshot once; it sees that one config to
//!    its end, whatever a reload does meanwhile.
//! 1. `early_request_filter`: the head is complete, the slowloris deadline is lifted
//!    ([`crate::header_deadline`]); `logging` sets it again for the next request.
//! 2. `request_filter`: the policy chain, [`GatewayProxy::admit`], in this order:
//!    head checks ([`crate::request`]) → client IP ([`crate::acl`]) → the gateway's own
//!    endpoints ([`crate::endpoints`]) → authenticate ([`crate::auth`]; a request without a
//!    valid key also spends the per-IP budget, [`crate::ratelimit`]) → route
//!    ([`crate::route`]) → authorize (the key's IPs, leases and scopes, [`crate::acl`]) → the
//!    lease exists → declared body size → rate limits ([`crate::ratelimit`]) → circuit
//!    breaker ([`crate::breaker`]) → in-flight slot ([`crate::concurrency`]). Each step
//!    either passes or returns a [`Refusal`], answered here as an RFC 9457 problem.
//! 3. `upstream_peer`: a virtual peer whose connector opens an inner stream of the lease's
//!    E2EE session ([`crate::connector`]), with the lease's own timeouts.
//! 4. `upstream_request_filter`: the head the origin sees ([`crate::forwarding`]).
//! 5. `upstream_response_filter` / `response_filter`: timing, hop-by-hop fields out, the
//!    request id back to the caller.
//! 6. `fail_to_proxy`: tunnel and origin failures become 502/504 problems.
//! 7. `logging`: the breaker learns the result, the metrics count the request
//!    ([`crate::metrics`]), and the access log writes its line ([`crate::access_log`]).

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use postern_sdk::hop_by_hop;

use crate::access_log::{self, AccessRecord, Outcome};
use crate::auth::{ApiKey, AuthError, KeyTable};
use crate::breaker::Admission;
use crate::concurrency::{self, InFlight};
use crate::connector::{TunnelConnector, UpgradeGate};
use crate::endpoints;
use crate::forwarding;
use crate::header_deadline::HeaderDeadlineStream;
use crate::problem::{Problem, Refusal};
use crate::ratelimit::Budgets;
use crate::respond::{self, REQUEST_ID_FIELD};
use crate::runtime::Runtime;
use crate::snapshot::{LeaseRoute, Snapshot};
use crate::upstream::LeaseConnector;
use crate::{acl, request, route};

/// Everything known about one request, filled in phase by phase.
#[derive(Debug)]
pub struct RequestCtx {
    /// The config this request is decided by, loaded once.
    pub snapshot: Arc<Snapshot>,
    pub started: Instant,
    pub request_id: String,
    pub client_ip: Option<IpAddr>,
    /// The client's path without its query, for the access log.
    pub path: String,
    pub key: Option<Arc<ApiKey>>,
    /// The lease, looked up once (a reload cannot turn an authorized request into a 404).
    pub lease: Option<Arc<LeaseRoute>>,
    pub original_host: Option<String>,
    /// Request body bytes (not after an upgrade), against `max_request_body_bytes`.
    pub body_bytes: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// For an upgrade request: opened when its body ends (cloudflare/pingora#946 workaround).
    pub upgrade_gate: Option<Arc<UpgradeGate>>,
    /// The request body has ended (seen by `request_body_filter`).
    pub body_ended: bool,
    pub outcome: Outcome,
    /// Leave from the lease's breaker, told the result in `logging`.
    pub admission: Option<Admission>,
    pub in_flight: Option<InFlight>,
    pub upstream_started: Option<Instant>,
    pub connected_at: Option<Instant>,
    pub head_at: Option<Instant>,
    pub upstream_status: Option<u16>,
    /// Set by the connector when the response head did not come in time.
    pub head_timed_out: Arc<AtomicBool>,
    /// The request rides the lease's HTTP/2 connection ([`crate::upstream`]), which enforces
    /// the request body limit itself.
    pub upstream_h2: bool,
    /// Holds `postern_upgrades_active` up while an upgraded connection is open.
    pub upgraded: Option<UpgradeGuard>,
}

/// Counts one open upgraded connection until dropped.
#[derive(Debug)]
pub struct UpgradeGuard(prometheus::IntGauge);

impl Drop for UpgradeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What the policy chain decided for a request that was not refused.
enum Admitted {
    /// Go on to the lease.
    Proxy,
    /// The gateway answered it itself.
    Answered,
}

/// The gateway's proxy logic.
pub struct GatewayProxy {
    pub runtime: Arc<Runtime>,
    /// The leases' HTTP/2 connections (also Pingora's custom upstream connector).
    pub upstreams: LeaseConnector,
}

fn request_id(session: &Session) -> String {
    session
        .req_header()
        .headers
        .get(REQUEST_ID_FIELD)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(respond::new_request_id)
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx {
            snapshot: self.runtime.snapshot(),
            started: Instant::now(),
            request_id: String::new(),
            client_ip: None,
            path: String::new(),
            key: None,
            lease: None,
            original_host: None,
            body_bytes: 0,
            bytes_in: 0,
            bytes_out: 0,
            upgrade_gate: None,
            body_ended: false,
            outcome: Outcome::Ok,
            admission: None,
            in_flight: None,
            upstream_started: None,
            connected_at: None,
            head_at: None,
            upstream_status: None,
            head_timed_out: Arc::new(AtomicBool::new(false)),
            upstream_h2: false,
            upgraded: None,
        }
    }

    /// The head is in: the slowloris deadline no longer applies to this request.
    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        ctx.started = Instant::now();
        if let Some(stream) = session.stream().and_then(HeaderDeadlineStream::of) {
            stream.disarm();
            let keepalive = ctx.snapshot.config.limits.keepalive_timeout;
            session.set_keepalive(Some(keepalive.as_secs()));
        }
        Ok(())
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<bool> {
        ctx.request_id = request_id(session);
        ctx.client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let target = session.req_header().uri.path_and_query();
        ctx.path = access_log::path_only(target.map_or("/", |p| p.as_str())).to_owned();
        match self.admit(session, ctx).await {
            Ok(Admitted::Proxy) => Ok(false),
            Ok(Admitted::Answered) => Ok(true),
            Err(refusal) => {
                ctx.outcome = refusal.outcome;
                respond::problem(session, &ctx.request_id, &refusal).await?;
                if refusal.problem == Problem::PayloadTooLarge {
                    linger(session).await;
                }
                Ok(true)
            }
        }
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
        let Some(chunk) = body.as_ref() else {
            return Ok(());
        };
        ctx.bytes_in += chunk.len() as u64;
        // After a protocol upgrade these are WebSocket bytes, bounded by idle time rather than
        // by the request body limit (Pingora passes them through this filter too).
        if !session.was_upgraded() {
            ctx.body_bytes += chunk.len() as u64;
            // On HTTP/2 the stream to the lease refuses the chunk itself and resets, so that
            // the lease never waits for the rest (an error here would never reach it).
            if !ctx.upstream_h2
                && ctx.body_bytes > ctx.snapshot.config.limits.max_request_body_bytes
            {
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
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no lease routed"))?;
        ctx.upstream_started = Some(Instant::now());
        let protocol = ctx.snapshot.config.upstream.protocol;
        if !session.is_upgrade_req() && self.upstreams.serves_h2(&lease, protocol) {
            ctx.upstream_h2 = true;
            let mut peer = LeaseConnector::peer(&lease);
            // Should the lease's session turn out to speak HTTP/1 only, the first request
            // rides an inner stream of its own, which Pingora must close, not pool.
            peer.options.idle_timeout = Some(Duration::ZERO);
            peer.options.read_timeout = Some(lease.idle_timeout);
            peer.options.write_timeout = Some(lease.idle_timeout);
            return Ok(Box::new(peer));
        }
        // HTTP/1 on an inner stream of its own. A numeric placeholder address (HttpPeer::new resolves and unwraps); the lease goes
        // into the pool key so that two leases can never share an upstream connection.
        let mut peer = HttpPeer::new(
            std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            false,
            String::new(),
        );
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        lease.name.hash(&mut hasher);
        peer.group_key = hasher.finish();
        // Virtual streams are never reused by Pingora 0.9.1: close them at once.
        peer.options.idle_timeout = Some(Duration::ZERO);
        peer.options.total_connection_timeout = Some(lease.connect_timeout);
        // SSE and WebSocket are bounded by idle time, not total time.
        peer.options.read_timeout = Some(lease.idle_timeout);
        peer.options.write_timeout = Some(lease.idle_timeout);
        if session.is_upgrade_req() {
            let gate = Arc::new(UpgradeGate::default());
            if ctx.body_ended {
                gate.open();
            }
            ctx.upgrade_gate = Some(gate);
        }
        peer.options.custom_l4 = Some(Arc::new(TunnelConnector {
            dialer: self.runtime.dialer.clone(),
            target: lease.target.clone(),
            upgrade_gate: ctx.upgrade_gate.clone(),
            head_timeout: lease.head_timeout,
            head_timed_out: Arc::clone(&ctx.head_timed_out),
        }));
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&Digest>,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        ctx.connected_at = Some(Instant::now());
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        let client = forwarding::Client {
            ip: ctx.client_ip,
            tls: session.digest().is_some_and(|d| d.ssl_digest.is_some()),
            host: ctx.original_host.as_deref(),
            request_id: &ctx.request_id,
        };
        forwarding::rewrite(upstream, session.is_upgrade_req(), client)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        ctx.head_at = Some(Instant::now());
        ctx.upstream_status = Some(upstream.status.as_u16());
        if upstream.status == http::StatusCode::SWITCHING_PROTOCOLS {
            if let Some(lease) = &ctx.lease {
                lease.metrics.upgrades_active.inc();
                ctx.upgraded = Some(UpgradeGuard(lease.metrics.upgrades_active.clone()));
            }
        }
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

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<Option<Duration>> {
        if let Some(chunk) = body {
            ctx.bytes_out += chunk.len() as u64;
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let head_timed_out = ctx.head_timed_out.load(Ordering::Acquire) || head_clock_ran_out(e);
        let too_large = ctx.body_bytes > ctx.snapshot.config.limits.max_request_body_bytes;
        let (problem, outcome) = match e.etype() {
            ErrorType::HTTPStatus(413) => (Problem::PayloadTooLarge, Outcome::TooLarge),
            _ if too_large => (Problem::PayloadTooLarge, Outcome::TooLarge),
            _ if head_timed_out => (Problem::GatewayTimeout, Outcome::UpstreamTimeout),
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                (Problem::GatewayTimeout, Outcome::UpstreamTimeout)
            }
            _ => match e.esource() {
                pingora::ErrorSource::Downstream => (Problem::BadRequest, Outcome::ClientClosed),
                _ => (Problem::BadGateway, Outcome::UpstreamError),
            },
        };
        let client_gone = *e.esource() == pingora::ErrorSource::Downstream;
        if client_gone {
            tracing::debug!(request_id = %ctx.request_id, error = %e, "client went away");
        } else {
            let lease = ctx.lease.as_ref().map(|l| l.name.as_str());
            tracing::info!(request_id = %ctx.request_id, lease, error = %e, "proxy failed");
        }
        // Once the response head is out (SSE, a long body), nothing can be answered any more:
        // the connection is closed and the status that went out is the one logged. The lease
        // did answer, so its breaker is not told of a failure.
        if let Some(sent) = session.response_written().map(|r| r.status.as_u16()) {
            if client_gone {
                ctx.outcome = Outcome::ClientClosed;
            }
            return FailToProxy {
                error_code: sent,
                can_reuse_downstream: false,
            };
        }
        ctx.outcome = outcome;
        let status = problem.status();
        let _ = respond::problem(session, &ctx.request_id, &Refusal::new(problem, outcome)).await;
        if status == 413 {
            linger(session).await;
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
        let limits = &ctx.snapshot.config.limits;
        // A kept-alive connection must deliver the next head in full within the idle
        // allowance plus the header time.
        if let Some(stream) = session.stream().and_then(HeaderDeadlineStream::of) {
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
        // The agent answers 502/504 itself when the origin is down or too slow.
        if ctx.outcome == Outcome::Ok && matches!(ctx.upstream_status, Some(502 | 504)) {
            ctx.outcome = Outcome::UpstreamError;
        }
        if ctx.outcome == Outcome::Ok && status == 0 && e.is_some() {
            ctx.outcome = Outcome::ClientClosed;
        }
        if let Some(admission) = ctx.admission.take() {
            match ctx.outcome {
                Outcome::Ok => admission.record(false),
                o if o.is_upstream_failure() => admission.record(true),
                _ => drop(admission),
            }
        }
        ctx.in_flight = None;
        let now = Instant::now();
        let metrics = ctx.snapshot.metrics_for(ctx.lease.as_deref());
        let method = &session.req_header().method;
        metrics.count_request(method, status);
        metrics
            .request_duration
            .observe(now.duration_since(ctx.started).as_secs_f64());
        if let (Some(start), Some(connected)) = (ctx.upstream_started, ctx.connected_at) {
            metrics
                .connect_duration
                .observe(connected.duration_since(start).as_secs_f64());
            if let Some(head) = ctx.head_at {
                metrics
                    .head_duration
                    .observe(head.duration_since(connected).as_secs_f64());
            }
        }
        metrics.request_bytes.inc_by(ctx.bytes_in);
        metrics.response_bytes.inc_by(ctx.bytes_out);
        let error = e.map(|e| e.to_string());
        access_log::emit(&AccessRecord {
            request_id: &ctx.request_id,
            key_id: ctx.key.as_ref().map(|k| k.id.as_str()),
            lease: ctx.lease.as_ref().map(|l| l.name.as_str()),
            method: method.as_str(),
            path: &ctx.path,
            status,
            bytes_in: ctx.bytes_in,
            bytes_out: ctx.bytes_out,
            total: now.duration_since(ctx.started),
            upstream: ctx.upstream_started.map(|s| now.duration_since(s)),
            client_ip: ctx.client_ip,
            outcome: ctx.outcome,
            error: error.as_deref(),
        });
    }
}

impl GatewayProxy {
    /// The policy chain (the module docs give the order and why).
    async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Admitted, Refusal> {
        let snap = Arc::clone(&ctx.snapshot);
        let config = &snap.config;
        request::check_head(session.req_header_mut(), &config.limits)?;
        let ip = self.client_allowed(ctx.client_ip, config)?;
        let host = request::host(session.req_header());
        let base_domain = config.base_domain.as_deref();
        let control = self.runtime.control_router.is_some();
        if let Some(endpoint) = endpoints::own(&ctx.path, host.as_deref(), base_domain, control) {
            ctx.outcome = Outcome::Endpoint;
            // A failed write means the client is gone: nothing more to answer.
            let _written = endpoints::answer(session, &self.runtime, endpoint, ip).await?;
            return Ok(Admitted::Answered);
        }
        let key = self.authenticate(session.req_header(), ip, &snap).await?;
        ctx.key = Some(Arc::clone(&key));

        let header = session.req_header();
        let target = header.uri.path_and_query().map_or("/", |p| p.as_str());
        let routed = route::route(target, host.as_deref(), base_domain)
            .map_err(|_| Refusal::new(Problem::NotFound, Outcome::NotFound))?;
        // The key's own rules before the lease table: a key for some leases learns nothing
        // about which other leases exist (403 for every name outside its globs).
        let access = acl::Access::of_request(
            &header.method,
            &header.headers,
            header.uri.query(),
            session.is_upgrade_req(),
        );
        acl::authorize(&key, &routed.lease, access, ip, &config.ip)
            .map_err(|denied| self.denied(denied))?;
        let lease = snap
            .lease(&routed.lease)
            .cloned()
            .ok_or_else(|| Refusal::new(Problem::NotFound, Outcome::NotFound))?;
        ctx.lease = Some(Arc::clone(&lease));
        request::check_declared_body(session.req_header(), &config.limits)?;

        let key_rate = key.rate_limit.or(config.rate_limit.per_key);
        let budgets = Budgets {
            key: key_rate.map(|rate| (key.id.as_str(), rate)),
            lease: lease.rate.map(|rate| (lease.name.as_str(), rate)),
            global: config.rate_limit.global,
        };
        self.runtime.limiter.check(budgets).await?;
        ctx.admission = Some(lease.breaker.admit()?);
        let wait = config.limits.in_flight_queue_timeout;
        ctx.in_flight = Some(concurrency::acquire(&lease.in_flight, wait, &lease.metrics).await?);

        let uri = routed
            .upstream_path_and_query
            .parse::<http::Uri>()
            .map_err(|_| Refusal::new(Problem::BadRequest, Outcome::BadRequest))?;
        let upstream = session.req_header_mut();
        // An HTTP/2 request names its host only in `:authority`, which the origin-form URI
        // drops; the HTTP/1.1 request to the origin must carry it as `Host`.
        if !upstream.headers.contains_key(http::header::HOST) {
            if let Some(host) = &host {
                upstream
                    .insert_header(http::header::HOST, host.as_str())
                    .map_err(|_| Refusal::new(Problem::BadRequest, Outcome::BadRequest))?;
            }
        }
        upstream.set_uri(uri);
        ctx.original_host = host;
        Ok(Admitted::Proxy)
    }

    /// The global IP policy, before anything else is looked at.
    fn client_allowed(
        &self,
        ip: Option<IpAddr>,
        config: &postern_config::GatewayConfig,
    ) -> Result<IpAddr, Refusal> {
        match ip {
            Some(ip) if acl::ip_allowed(&config.ip, ip) => Ok(ip),
            _ => Err(self.denied(acl::Denied::Ip)),
        }
    }

    fn denied(&self, denied: acl::Denied) -> Refusal {
        let reason = match denied {
            acl::Denied::Ip => "ip",
            acl::Denied::Lease => "lease",
            acl::Denied::Scope => "scope",
        };
        self.runtime
            .metrics
            .acl_denials
            .with_label_values(&[reason])
            .inc();
        Refusal::new(Problem::Forbidden, Outcome::Forbidden)
    }

    /// The presented key, verified; a request without a valid key also spends its client's
    /// per-IP budget (429 once it is spent, else 401).
    async fn authenticate(
        &self,
        head: &RequestHeader,
        ip: IpAddr,
        snap: &Snapshot,
    ) -> Result<Arc<ApiKey>, Refusal> {
        let verified = match KeyTable::extract(&head.headers) {
            Ok(Some(presented)) => {
                let now = postern_sdk::grant::unix_now();
                self.runtime
                    .verifier
                    .verify(&snap.keys, presented, now, ip)
                    .await
            }
            Ok(None) => Err(AuthError::Missing),
            Err(e) => Err(e),
        };
        let e = match verified {
            Ok(key) => return Ok(key),
            Err(e) => e,
        };
        self.runtime
            .metrics
            .auth_failures
            .with_label_values(&[e.reason()])
            .inc();
        let outcome = match e {
            AuthError::TooManyFailures { .. } => Outcome::RateLimited,
            AuthError::Busy | AuthError::Internal => Outcome::Unavailable,
            _ => Outcome::Unauthenticated,
        };
        if outcome == Outcome::Unauthenticated {
            let bucket = crate::client_ip::bucket(ip);
            self.runtime
                .limiter
                .check_ip(bucket, snap.config.rate_limit.per_ip)
                .await?;
        }
        Err(Refusal::new(e.problem(), outcome))
    }
}

/// Whether `e` comes from an HTTP/1 inner stream's head clock (its `TimedOut` read, see
/// [`crate::connector`]), whichever request's flag it set.
fn head_clock_ran_out(e: &Error) -> bool {
    e.root_cause()
        .downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
}

/// How long an early refusal keeps reading the rest of a request body.
const LINGER: Duration = Duration::from_secs(5);

/// Reads and discards the rest of the request body for a while after answering early (413):
/// closing a socket with unread input makes the kernel send a reset, which can destroy the
/// answer before the client reads it (nginx's "lingering close"). Bounded by time only,
/// [`LINGER`], like nginx's `lingering_time`: reading and dropping is cheap, and a byte cap
/// would reintroduce the reset for a client that is simply fast.
async fn linger(session: &mut Session) {
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(Some(_)) = session.read_request_body().await {}
    })
    .await;
}

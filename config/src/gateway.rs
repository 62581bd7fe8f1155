//! Configuration of the gateway (`postern-gateway`): where it listens, which relays it dials
//! through, which leases it fronts, which API keys may reach them and from where.
//!
//! API keys are stored only as argon2id PHC strings; the secret half of a key never appears in
//! this file. Checking a key against its hash is the gateway's job (`gateway/src/auth.rs`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::check::{all_nonzero, all_positive, check_relay_client, ensure, key32};
use crate::ConfigError;

/// RFC 7301: a protocol id is 1..=255 bytes.
const MAX_ALPN_BYTES: usize = 255;
/// The wire limit on lease names (`postern_sdk::protocol::MAX_LEASE_NAME_BYTES`).
const MAX_LEASE_NAME_BYTES: usize = 63;
/// Length bounds of the `<id>` part of `pst_<id>_<secret>`.
const KEY_ID_CHARS: std::ops::RangeInclusive<usize> = 8..=32;

/// The whole gateway configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    #[serde(default)]
    pub listen: GatewayListen,
    /// Enables host routing, `{lease}.{base_domain}`; path routing (`/peer/{lease}/`) always works.
    #[serde(default)]
    pub base_domain: Option<String>,
    /// `ws://` or `wss://` relay URLs; the gateway fails over between them.
    #[serde(default)]
    pub relays: Vec<String>,
    /// The gateway's Ed25519 identity key (it is the dialer).
    pub identity_key_file: PathBuf,
    /// The DIAL grant signed by the control plane.
    pub grant_file: PathBuf,
    /// Extra PEM roots for `wss://` relays; the web PKI roots when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `[[lease]]` tables: the leases this gateway fronts.
    #[serde(default, rename = "lease")]
    pub leases: Vec<GatewayLease>,
    /// `[[api_key]]` tables.
    #[serde(default, rename = "api_key")]
    pub api_keys: Vec<ApiKeyConfig>,
    /// Global client-IP policy, applied before any key's own lists.
    #[serde(default)]
    pub ip: IpPolicy,
    #[serde(default)]
    pub limits: GatewayLimits,
    /// `[rate_limit]`: request budgets (global, per key, per lease, per client IP).
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// `[breaker]`: the per-lease circuit breaker's defaults.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// `[metrics]`: the Prometheus listener.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[upstream]`: how requests travel to the leases' agents.
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// `[control]`: the control plane at `/api/v1` and the keys it serves.
    #[serde(default)]
    pub control: ControlConfig,
}

/// `[control]`: the control plane (`/api/v1` on the gateway's own host names) and its store.
/// Off unless `database_url` is set; with it, the keys the control plane holds are served
/// next to the file's `[[api_key]]`s. Every field takes effect at start only.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// `sqlite:///path/control.db` (created if missing) or `postgres://user@host/db`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// The control plane's Ed25519 key (the one that signs grants): it signs the audit
    /// log's checkpoints. Required with `database_url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_key_file: Option<PathBuf>,
    /// Longest a change made through another gateway (sharing PostgreSQL) takes to reach
    /// this one: the store is checked for key changes this often. Changes made through this
    /// gateway apply at once.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Accept the bootstrap admin token.
    pub keep_bootstrap_token: bool,
    /// Admin API requests per second per client address (bursts of twice that).
    pub admin_requests_per_second: u32,
    /// Audit events waiting to be written; past it, data-path events are dropped and counted.
    pub audit_queue: usize,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            database_url: None,
            signing_key_file: None,
            refresh_interval: Duration::from_secs(5),
            keep_bootstrap_token: true,
            admin_requests_per_second: 50,
            audit_queue: 4096,
        }
    }
}

impl ControlConfig {
    /// Whether the control plane runs.
    pub fn enabled(&self) -> bool {
        self.database_url.is_some()
    }

    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if let Some(url) = &self.database_url {
            ensure(
                url.starts_with("sqlite://")
                    || url.starts_with("postgres://")
                    || url.starts_with("postgresql://"),
                &format!("{at}.database_url"),
                "must start with sqlite:// or postgres://",
            )?;
            ensure(
                self.signing_key_file.is_some(),
                &format!("{at}.signing_key_file"),
                "is required with database_url",
            )?;
        }
        ensure(
            (Duration::from_millis(100)..=Duration::from_secs(3600))
                .contains(&self.refresh_interval),
            &format!("{at}.refresh_interval"),
            "must be 100ms to 1h",
        )?;
        ensure(
            (1..=100_000).contains(&self.admin_requests_per_second),
            &format!("{at}.admin_requests_per_second"),
            "must be 1 to 100000",
        )?;
        ensure(
            (16..=1_000_000).contains(&self.audit_queue),
            &format!("{at}.audit_queue"),
            "must be 16 to 1000000",
        )
    }
}

/// How the gateway speaks HTTP to a lease's agent, inside the lease's E2EE session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/2 when the lease serves it (the handshake agrees on `h2`; the `expose` agent
    /// does), HTTP/1.1 otherwise.
    #[default]
    Auto,
    /// Always HTTP/1.1, one inner stream per request.
    Http1,
}

/// `[upstream]`: the gateway's HTTP/2 connections to the leases. Each lease's requests ride
/// HTTP/2 connections carried on inner streams of its E2EE session, one HTTP/2 stream per
/// request; a second connection opens only when the first has no free stream.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    pub protocol: UpstreamProtocol,
    /// Concurrent requests on one HTTP/2 connection (the agent may advertise fewer).
    pub max_streams_per_connection: usize,
    /// HTTP/2 connections to one lease at once.
    pub max_connections_per_lease: usize,
    /// HTTP/2 receive window of one response, bytes: the most a response can have in flight
    /// from the agent before the client reads it (a slow client's memory bound), and with the
    /// session's round trip the throughput bound of one response.
    pub stream_window_bytes: u32,
    /// HTTP/2 receive window of one connection, bytes: what all its responses together may
    /// have in flight. Larger than one stream's, so that a few slow clients cannot stall the
    /// others on the connection.
    pub connection_window_bytes: u32,
    /// An HTTP/2 connection without a request for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            protocol: UpstreamProtocol::Auto,
            max_streams_per_connection: 256,
            max_connections_per_lease: 4,
            stream_window_bytes: 2 * 1024 * 1024,
            connection_window_bytes: 16 * 1024 * 1024,
            idle_timeout: Duration::from_secs(90),
        }
    }
}

/// RFC 9113 §6.9.1: the largest flow-control window.
const MAX_H2_WINDOW: u32 = (1 << 31) - 1;
/// RFC 9113 §6.5.2: the default window, also the smallest one worth configuring.
const MIN_H2_WINDOW: u32 = 65_535;

impl UpstreamConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        ensure(
            (1..=10_000).contains(&self.max_streams_per_connection),
            &format!("{at}.max_streams_per_connection"),
            "must be 1 to 10000",
        )?;
        ensure(
            (1..=64).contains(&self.max_connections_per_lease),
            &format!("{at}.max_connections_per_lease"),
            "must be 1 to 64",
        )?;
        for (name, value) in [
            ("stream_window_bytes", self.stream_window_bytes),
            ("connection_window_bytes", self.connection_window_bytes),
        ] {
            ensure(
                (MIN_H2_WINDOW..=MAX_H2_WINDOW).contains(&value),
                &format!("{at}.{name}"),
                "must be 65535 to 2147483647",
            )?;
        }
        ensure(
            self.connection_window_bytes >= self.stream_window_bytes,
            &format!("{at}.connection_window_bytes"),
            "must be at least stream_window_bytes",
        )?;
        ensure(
            !self.idle_timeout.is_zero(),
            &format!("{at}.idle_timeout"),
            "must be greater than 0",
        )
    }
}

/// A request budget: `requests` per `per`, with bursts of up to `burst` (GCRA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub requests: u32,
    #[serde(with = "humantime_serde")]
    pub per: Duration,
    /// Requests that may arrive at once; `requests` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl Rate {
    /// The burst size (at least 1).
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests).max(1)
    }

    /// The GCRA emission interval: the time one request's budget takes to come back.
    pub fn emission(&self) -> Duration {
        self.per / self.requests.max(1)
    }

    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        ensure(
            self.requests > 0,
            &format!("{at}.requests"),
            "must be greater than 0",
        )?;
        ensure(
            !self.per.is_zero() && self.per <= Duration::from_secs(24 * 3600),
            &format!("{at}.per"),
            "must be between 1ns and 24h",
        )?;
        ensure(
            !self.emission().is_zero(),
            &format!("{at}.per"),
            "is too short for this many requests",
        )?;
        ensure(
            self.burst.is_none_or(|b| b > 0),
            &format!("{at}.burst"),
            "must be greater than 0",
        )
    }
}

/// Where rate-limit decisions are made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitBackend {
    /// In this process: each gateway has its own budget.
    #[default]
    Local,
    /// In Redis: every gateway on one Redis shares one budget; while Redis is unreachable,
    /// each gateway decides locally with the same rates.
    Redis,
}

/// `[rate_limit]`. Every budget is optional; none is set by default.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub backend: RateLimitBackend,
    /// `redis://host:port/db` (or `rediss://`); required with `backend = "redis"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// Longest a decision waits for Redis before deciding locally.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// After a Redis failure, how long decisions stay local before Redis is tried again.
    #[serde(with = "humantime_serde")]
    pub redis_retry_interval: Duration,
    /// All requests through this gateway (or, with Redis, all gateways).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global: Option<Rate>,
    /// Each API key; `[[api_key]] rate_limit` overrides it for one key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_key: Option<Rate>,
    /// Each lease; `[[lease]] rate_limit` overrides it for one lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_lease: Option<Rate>,
    /// Each client IP (IPv6: each /64), for requests without a valid key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_ip: Option<Rate>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            backend: RateLimitBackend::Local,
            redis_url: None,
            redis_timeout: Duration::from_millis(50),
            redis_retry_interval: Duration::from_secs(1),
            global: None,
            per_key: None,
            per_lease: None,
            per_ip: None,
        }
    }
}

impl RateLimitConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.backend == RateLimitBackend::Redis {
            let url = self.redis_url.as_deref().unwrap_or_default();
            ensure(
                url.starts_with("redis://") || url.starts_with("rediss://"),
                &format!("{at}.redis_url"),
                "backend = \"redis\" needs a redis:// or rediss:// URL",
            )?;
        }
        all_nonzero(
            at,
            &[
                ("redis_timeout", self.redis_timeout),
                ("redis_retry_interval", self.redis_retry_interval),
            ],
        )?;
        let rates = [
            ("global", &self.global),
            ("per_key", &self.per_key),
            ("per_lease", &self.per_lease),
            ("per_ip", &self.per_ip),
        ];
        for (name, rate) in rates {
            if let Some(rate) = rate {
                rate.validate(&format!("{at}.{name}"))?;
            }
        }
        Ok(())
    }
}

/// `[breaker]`: when a lease's circuit opens, and how it closes again.
///
/// Closed: requests flow; the breaker opens after `consecutive_failures` failures in a row, or
/// when at least `min_requests` requests in the last `window` failed at `failure_ratio` or
/// more. Open: requests are refused (503) for `open_for`, without touching the tunnel.
/// Half-open: up to `half_open_probes` requests go through; a success closes the breaker, a
/// failure opens it again. Failures are tunnel connect errors, upstream timeouts, and the
/// agent's origin-down answers (502, 504).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    pub enabled: bool,
    pub consecutive_failures: u32,
    pub failure_ratio: f64,
    pub min_requests: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            consecutive_failures: 5,
            failure_ratio: 0.5,
            min_requests: 20,
            window: Duration::from_secs(30),
            open_for: Duration::from_secs(10),
            half_open_probes: 1,
        }
    }
}

impl BreakerConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        ensure(
            self.consecutive_failures > 0,
            &format!("{at}.consecutive_failures"),
            "must be greater than 0",
        )?;
        ensure(
            self.failure_ratio > 0.0 && self.failure_ratio <= 1.0,
            &format!("{at}.failure_ratio"),
            "must be in (0, 1]",
        )?;
        ensure(
            self.min_requests > 0,
            &format!("{at}.min_requests"),
            "must be greater than 0",
        )?;
        ensure(
            self.half_open_probes > 0,
            &format!("{at}.half_open_probes"),
            "must be greater than 0",
        )?;
        all_nonzero(at, &[("window", self.window), ("open_for", self.open_for)])
    }

    /// These settings with a lease's overrides applied.
    pub fn with(&self, o: &BreakerOverride) -> Self {
        Self {
            enabled: o.enabled.unwrap_or(self.enabled),
            consecutive_failures: o.consecutive_failures.unwrap_or(self.consecutive_failures),
            failure_ratio: o.failure_ratio.unwrap_or(self.failure_ratio),
            min_requests: o.min_requests.unwrap_or(self.min_requests),
            window: o.window.unwrap_or(self.window),
            open_for: o.open_for.unwrap_or(self.open_for),
            half_open_probes: o.half_open_probes.unwrap_or(self.half_open_probes),
        }
    }
}

/// `[lease.breaker]`: a lease's own breaker settings; what is omitted comes from `[breaker]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u32>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub open_for: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub half_open_probes: Option<u32>,
}

/// `[metrics]`: Prometheus text format at `GET /metrics` on a listener of its own.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Loopback by default; absent (`listen` removed) or an empty table keeps the default.
    /// Set `enabled = false` for no listener.
    pub listen: SocketAddr,
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            enabled: true,
        }
    }
}

/// The downstream listeners.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayListen {
    /// TLS listener (HTTP/1.1 and HTTP/2); needs at least one `[[listen.tls]]`.
    pub https: Option<SocketAddr>,
    /// Plain HTTP listener; loopback addresses only.
    pub http: Option<SocketAddr>,
    /// Certificates, chosen by SNI.
    pub tls: Vec<TlsCert>,
}

/// A PEM certificate chain, its key, and the SNI names it serves.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// DNS names, `*.example.com` allowed. Empty: the default certificate (at most one).
    #[serde(default)]
    pub server_names: Vec<String>,
}

/// A lease the gateway fronts and the identity that owns it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayLease {
    pub name: String,
    /// Standard-base64 Ed25519 public key (32 bytes): the control plane's record of the owner.
    pub owner_identity: String,
    #[serde(default)]
    pub alpn: Vec<String>,
    /// This lease's budget, in place of `[rate_limit] per_lease`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Rate>,
    /// This lease's breaker settings over `[breaker]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerOverride>,
    /// In place of `limits.upstream_connect_timeout`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect_timeout: Option<Duration>,
    /// In place of `limits.upstream_head_timeout`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub head_timeout: Option<Duration>,
    /// In place of `limits.upstream_idle_timeout`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    /// In place of `limits.max_in_flight_per_lease`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
}

impl GatewayLease {
    /// The decoded owner key. Call after validation.
    pub fn owner_identity_bytes(&self) -> Option<[u8; 32]> {
        key32("", &self.owner_identity).ok()
    }
}

/// What a key may do to the requests it authorizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `GET`, `HEAD` and `OPTIONS` only.
    Read,
    /// Every method.
    Write,
}

/// One API key, `pst_<id>_<secret>`, stored by id with an argon2id hash of the whole key.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The `<id>` part: 8 to 32 characters of `[a-z0-9]`, unique.
    pub id: String,
    /// argon2id PHC string (`$argon2id$v=19$…`) of the full key.
    pub hash: String,
    /// A human label for logs and audits.
    pub name: String,
    /// Lease name globs (`*` matches any run of characters).
    pub leases: Vec<String>,
    #[serde(default = "write_scope")]
    pub scopes: Vec<Scope>,
    /// Unix seconds after which the key is refused.
    #[serde(default)]
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub allow_ips: Vec<IpNet>,
    #[serde(default)]
    pub deny_ips: Vec<IpNet>,
    /// This key's budget, in place of `[rate_limit] per_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Rate>,
}

fn write_scope() -> Vec<Scope> {
    vec![Scope::Write]
}

/// CIDR allow and deny lists. Deny wins; an empty allow list allows every address.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IpPolicy {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

/// Caps and timeouts; each bounds memory or work a client can cause.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayLimits {
    /// Client connections open at once, across the HTTP and HTTPS listeners; one over this is
    /// closed at accept, before its TLS handshake.
    pub max_connections: usize,
    pub max_request_body_bytes: u64,
    /// Most bytes a request head may take (request line and fields; for HTTP/2 the decoded
    /// field list); larger heads get 431 or a closed connection.
    pub max_header_bytes: usize,
    /// How long a verified key stays cached (skipping argon2) after its last use.
    #[serde(with = "humantime_serde")]
    pub key_cache_ttl: Duration,
    pub key_cache_max_entries: usize,
    /// How long a request may wait for another request's argon2 check of the same key id
    /// before it is answered 503.
    #[serde(with = "humantime_serde")]
    pub key_verify_timeout: Duration,
    /// Failed key attempts per client IP (IPv6: per /64) per minute, then 429. A key's first
    /// use (an argon2 run, once per `key_cache_ttl`) spends one too.
    pub failed_auth_per_ip_per_minute: u32,
    #[serde(with = "humantime_serde")]
    pub upstream_connect_timeout: Duration,
    /// SSE and WebSocket are bounded by idle time, not total time.
    #[serde(with = "humantime_serde")]
    pub upstream_idle_timeout: Duration,
    /// Time a client has to send a complete request head (slowloris bound): from accepting
    /// the connection for the first request (on HTTPS this covers the TLS handshake too), from the end of the previous request plus
    /// `keepalive_timeout` for the next ones.
    #[serde(with = "humantime_serde")]
    pub request_header_timeout: Duration,
    /// How long an HTTP/1.1 connection may sit idle between requests.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// User-space read buffer in front of each client socket, bytes (0: none). rustls and the
    /// HTTP/1 parser buffer on their own; Pingora's default of 64 KiB would cost that much
    /// memory per idle keep-alive client.
    pub client_read_buffer_bytes: usize,
    /// On shutdown, how long open client connections have to finish (SSE and WebSocket
    /// streams included) before the gateway exits; idle keep-alive connections close at once.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Client connections open at once from one IP (IPv6: one /64); more are closed at accept.
    pub max_connections_per_ip: usize,
    /// Most fields a request head may carry (431 past it). The agent allows this many plus
    /// the few the gateway adds, so that what the gateway accepts the agent accepts too.
    pub max_header_count: usize,
    /// argon2 key checks running at once, across all keys (each takes about 19 MiB while it
    /// runs): the ceiling on the memory that wrong-secret guesses can make the gateway use.
    pub max_concurrent_key_checks: usize,
    /// Time from the request's last byte sent to the lease until the first byte of its
    /// response head, then 504.
    #[serde(with = "humantime_serde")]
    pub upstream_head_timeout: Duration,
    /// Requests in flight to one lease at once (streams included).
    pub max_in_flight_per_lease: usize,
    /// How long a request waits for one of those slots, then 503.
    #[serde(with = "humantime_serde")]
    pub in_flight_queue_timeout: Duration,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_request_body_bytes: 64 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            key_cache_ttl: Duration::from_secs(300),
            key_cache_max_entries: 10_000,
            key_verify_timeout: Duration::from_secs(5),
            failed_auth_per_ip_per_minute: 30,
            upstream_connect_timeout: Duration::from_secs(10),
            upstream_idle_timeout: Duration::from_secs(60),
            request_header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            client_read_buffer_bytes: 0,
            shutdown_grace: Duration::from_secs(30),
            max_connections_per_ip: 256,
            max_header_count: 100,
            max_concurrent_key_checks: 2,
            upstream_head_timeout: Duration::from_secs(30),
            max_in_flight_per_lease: 1_000,
            in_flight_queue_timeout: Duration::from_secs(1),
        }
    }
}

/// Reads, parses and validates a gateway configuration file.
pub fn load_gateway(path: &Path) -> Result<GatewayConfig, ConfigError> {
    parse_gateway(&crate::load::read(path)?, &path.display().to_string())
}

/// Parses and validates gateway configuration text; `origin` names it in errors.
pub fn parse_gateway(text: &str, origin: &str) -> Result<GatewayConfig, ConfigError> {
    crate::load::parse_validated(text, origin, GatewayConfig::validate)
}

impl GatewayConfig {
    /// Checks the whole configuration; returns the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen.validate("listen")?;
        if let Some(domain) = &self.base_domain {
            ensure(dns_name(domain, false), "base_domain", "must be a DNS name")?;
        }
        check_relay_client(&self.relays, &self.identity_key_file, &self.grant_file)?;
        let mut names = HashSet::new();
        for (i, lease) in self.leases.iter().enumerate() {
            let at = format!("lease[{i}]");
            lease.validate(&at)?;
            ensure(
                names.insert(&lease.name),
                &format!("{at}.name"),
                "duplicate lease name",
            )?;
        }
        let mut ids = HashSet::new();
        for (i, key) in self.api_keys.iter().enumerate() {
            let at = format!("api_key[{i}]");
            key.validate(&at)?;
            ensure(ids.insert(&key.id), &format!("{at}.id"), "duplicate key id")?;
        }
        self.limits.validate("limits")?;
        self.rate_limit.validate("rate_limit")?;
        self.breaker.validate("breaker")?;
        self.upstream.validate("upstream")?;
        self.control.validate("control")?;
        for (i, lease) in self.leases.iter().enumerate() {
            let at = format!("lease[{i}]");
            if let Some(rate) = &lease.rate_limit {
                rate.validate(&format!("{at}.rate_limit"))?;
            }
            if let Some(o) = &lease.breaker {
                self.breaker.with(o).validate(&format!("{at}.breaker"))?;
            }
            let timeouts = [
                ("connect_timeout", lease.connect_timeout),
                ("head_timeout", lease.head_timeout),
                ("idle_timeout", lease.idle_timeout),
            ];
            for (name, value) in timeouts {
                ensure(
                    value.is_none_or(|d| !d.is_zero()),
                    &format!("{at}.{name}"),
                    "must be greater than 0",
                )?;
            }
            ensure(
                lease.max_in_flight.is_none_or(|n| n > 0),
                &format!("{at}.max_in_flight"),
                "must be greater than 0",
            )?;
        }
        for (i, key) in self.api_keys.iter().enumerate() {
            if let Some(rate) = &key.rate_limit {
                rate.validate(&format!("api_key[{i}].rate_limit"))?;
            }
        }
        Ok(())
    }
}

impl GatewayListen {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        ensure(
            self.https.is_some() || self.http.is_some(),
            at,
            "set https, http or both",
        )?;
        if let Some(addr) = self.http {
            let loopback = addr.ip().is_loopback();
            ensure(
                loopback,
                &format!("{at}.http"),
                "must be a loopback address",
            )?;
        }
        if self.https.is_some() {
            ensure(
                !self.tls.is_empty(),
                &format!("{at}.tls"),
                "https needs at least one [[listen.tls]]",
            )?;
        }
        let (mut names, mut defaults) = (HashSet::new(), 0);
        for (i, tls) in self.tls.iter().enumerate() {
            let field = |name: &str| format!("{at}.tls[{i}].{name}");
            ensure(!tls.cert.as_os_str().is_empty(), &field("cert"), "is empty")?;
            ensure(!tls.key.as_os_str().is_empty(), &field("key"), "is empty")?;
            if tls.server_names.is_empty() {
                defaults += 1;
                let ok = defaults == 1;
                ensure(ok, &field("server_names"), "only one default certificate")?;
            }
            for (j, name) in tls.server_names.iter().enumerate() {
                let f = field(&format!("server_names[{j}]"));
                ensure(dns_name(name, true), &f, "must be a DNS name")?;
                ensure(names.insert(name.to_ascii_lowercase()), &f, "duplicate")?;
            }
        }
        Ok(())
    }
}

impl GatewayLease {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let field = |name: &str| format!("{at}.{name}");
        let len = self.name.len();
        ensure(
            len > 0 && len <= MAX_LEASE_NAME_BYTES,
            &field("name"),
            "must be 1 to 63 bytes",
        )?;
        let bad = |c: char| c.is_whitespace() || c.is_control() || c == '/';
        ensure(
            !self.name.contains(bad),
            &field("name"),
            "must not contain whitespace, control characters or '/'",
        )?;
        key32(&field("owner_identity"), &self.owner_identity)?;
        for (i, proto) in self.alpn.iter().enumerate() {
            let ok = !proto.is_empty() && proto.len() <= MAX_ALPN_BYTES;
            ensure(ok, &field(&format!("alpn[{i}]")), "must be 1 to 255 bytes")?;
        }
        Ok(())
    }
}

impl ApiKeyConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let field = |name: &str| format!("{at}.{name}");
        let id_ok = KEY_ID_CHARS.contains(&self.id.len())
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        ensure(
            id_ok,
            &field("id"),
            "must be 8 to 32 characters of [a-z0-9]",
        )?;
        ensure(
            argon2id_phc(&self.hash),
            &field("hash"),
            "must be an argon2id PHC string ($argon2id$v=19$m=..,t=..,p=..$salt$hash)",
        )?;
        ensure(!self.name.trim().is_empty(), &field("name"), "is empty")?;
        ensure(
            !self.leases.is_empty(),
            &field("leases"),
            "at least one lease pattern is required",
        )?;
        for (i, pattern) in self.leases.iter().enumerate() {
            let ok = !pattern.is_empty()
                && pattern.len() <= MAX_LEASE_NAME_BYTES
                && !pattern.contains(|c: char| c.is_whitespace() || c.is_control() || c == '/');
            let reason = "must be a lease name or glob (1 to 63 bytes, no whitespace or '/')";
            ensure(ok, &field(&format!("leases[{i}]")), reason)?;
        }
        ensure(
            !self.scopes.is_empty(),
            &field("scopes"),
            "at least one scope is required",
        )
    }
}

/// Most header fields Pingora 0.9's HTTP/1 parser reads in one head.
const MAX_PARSED_HEADER_FIELDS: usize = 256;

impl GatewayLimits {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        ensure(
            self.max_header_count <= MAX_PARSED_HEADER_FIELDS,
            &format!("{at}.max_header_count"),
            "must be at most 256 (the HTTP/1 parser's own bound)",
        )?;
        all_positive(
            at,
            &[
                ("max_connections", self.max_connections),
                ("max_header_bytes", self.max_header_bytes),
                ("key_cache_max_entries", self.key_cache_max_entries),
                ("max_connections_per_ip", self.max_connections_per_ip),
                ("max_header_count", self.max_header_count),
                ("max_concurrent_key_checks", self.max_concurrent_key_checks),
                ("max_in_flight_per_lease", self.max_in_flight_per_lease),
            ],
        )?;
        ensure(
            self.max_request_body_bytes > 0,
            &format!("{at}.max_request_body_bytes"),
            "must be greater than 0",
        )?;
        ensure(
            self.failed_auth_per_ip_per_minute > 0,
            &format!("{at}.failed_auth_per_ip_per_minute"),
            "must be greater than 0",
        )?;
        all_nonzero(
            at,
            &[
                ("key_cache_ttl", self.key_cache_ttl),
                ("key_verify_timeout", self.key_verify_timeout),
                ("upstream_connect_timeout", self.upstream_connect_timeout),
                ("upstream_idle_timeout", self.upstream_idle_timeout),
                ("request_header_timeout", self.request_header_timeout),
                ("shutdown_grace", self.shutdown_grace),
                ("keepalive_timeout", self.keepalive_timeout),
                ("upstream_head_timeout", self.upstream_head_timeout),
                ("in_flight_queue_timeout", self.in_flight_queue_timeout),
            ],
        )
    }
}

/// The shape of an argon2id PHC string: `$argon2id$v=19$m=<n>,t=<n>,p=<n>$<salt>$<hash>`,
/// salt and hash in unpadded standard base64. Whether argon2 accepts the values is for the gateway.
fn argon2id_phc(phc: &str) -> bool {
    let b64 = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    };
    let params_ok = |s: &str| {
        let mut names = s.split(',').map(|kv| match kv.split_once('=') {
            Some((k, v)) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => k,
            _ => "",
        });
        names.by_ref().take(3).eq(["m", "t", "p"]) && names.next().is_none()
    };
    match phc.split('$').collect::<Vec<_>>()[..] {
        ["", "argon2id", "v=19", params, salt, hash] => params_ok(params) && b64(salt) && b64(hash),
        _ => false,
    }
}

/// Dot-separated labels of `[A-Za-z0-9-]`, 1..=63 bytes each, not starting or ending with '-';
/// with `wildcard`, the first label may be `*`.
fn dns_name(name: &str, wildcard: bool) -> bool {
    let name = match name.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        _ => name,
    };
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use base64::{engine::general_purpose::STANDARD, Engine as _};

    use super::*;

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

    /// A valid gateway file (plain loopback listener) with `extra` appended.
    fn parse(extra: &str) -> Result<GatewayConfig, ConfigError> {
        let text = format!(
            "relays = [\"wss://relay.example.com/v1/tunnel\"]\n\
             identity_key_file = \"id.key\"\ngrant_file = \"dial.tok\"\n\
             [listen]\nhttp = \"127.0.0.1:8080\"\n{extra}\n"
        );
        parse_gateway(&text, "gateway.toml")
    }

    fn field(extra: &str) -> String {
        match parse(extra) {
            Err(e @ (ConfigError::Invalid { .. } | ConfigError::InvalidAt { .. })) => {
                e.field().unwrap_or_default().to_owned()
            }
            other => panic!("expected Invalid for {extra:?}, got {other:?}"),
        }
    }

    fn api_key(body: &str) -> String {
        format!("[[api_key]]\nhash = \"{HASH}\"\nname = \"ci\"\nleases = [\"*\"]\n{body}")
    }

    #[test]
    fn defaults() {
        let cfg = parse("").unwrap();
        let limits = &cfg.limits;
        assert_eq!(*limits, GatewayLimits::default());
        assert_eq!(limits.max_connections, 10_000);
        assert_eq!(limits.max_request_body_bytes, 64 * 1024 * 1024);
        assert_eq!(limits.max_header_bytes, 64 * 1024);
        assert_eq!(limits.key_cache_ttl, Duration::from_secs(300));
        assert_eq!(limits.key_cache_max_entries, 10_000);
        assert_eq!(limits.failed_auth_per_ip_per_minute, 30);
        assert_eq!(limits.upstream_idle_timeout, Duration::from_secs(60));
        assert_eq!(limits.shutdown_grace, Duration::from_secs(30));
        assert!(cfg.base_domain.is_none() && cfg.leases.is_empty() && cfg.api_keys.is_empty());
        assert_eq!(cfg.ip, IpPolicy::default());
    }

    #[test]
    fn keys_leases_and_ip_lists_parse() {
        let owner = STANDARD.encode([5u8; 32]);
        let cfg = parse(&format!(
            "[ip]\ndeny = [\"10.0.0.0/8\"]\n\
             [[lease]]\nname = \"my-mcp\"\nowner_identity = \"{owner}\"\nalpn = [\"h2\"]\n{}",
            api_key(
                "id = \"abcd1234\"\nscopes = [\"read\"]\nexpires_at = 1700000000\n\
                 allow_ips = [\"192.168.0.0/16\", \"::1/128\"]"
            )
        ))
        .unwrap();
        assert_eq!(cfg.ip.deny, vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]);
        assert_eq!(cfg.leases[0].owner_identity_bytes(), Some([5u8; 32]));
        let key = &cfg.api_keys[0];
        assert_eq!(key.scopes, vec![Scope::Read]);
        assert_eq!(key.expires_at, Some(1_700_000_000));
        assert_eq!(key.allow_ips.len(), 2);
        let default_scope = parse(&api_key("id = \"abcd1234\"")).unwrap();
        assert_eq!(default_scope.api_keys[0].scopes, vec![Scope::Write]);
    }

    #[test]
    fn each_rule_names_its_field() {
        let owner = STANDARD.encode([5u8; 32]);
        let lease = |body: &str| format!("[[lease]]\nowner_identity = \"{owner}\"\n{body}");
        let cases = [
            (
                "[limits]\nkey_cache_ttl = \"0s\"",
                "limits.key_cache_ttl".to_owned(),
            ),
            (
                "[limits]\nfailed_auth_per_ip_per_minute = 0",
                "limits.failed_auth_per_ip_per_minute".into(),
            ),
            (
                "[limits]\nmax_header_bytes = 0",
                "limits.max_header_bytes".into(),
            ),
            (
                "[limits]\nmax_connections = 0",
                "limits.max_connections".into(),
            ),
            (
                "[upstream]\nmax_streams_per_connection = 0",
                "upstream.max_streams_per_connection".into(),
            ),
            (
                "[upstream]\nmax_connections_per_lease = 65",
                "upstream.max_connections_per_lease".into(),
            ),
            (
                "[upstream]\nstream_window_bytes = 1024",
                "upstream.stream_window_bytes".into(),
            ),
            (
                "[upstream]\nstream_window_bytes = 4194304\nconnection_window_bytes = 2097152",
                "upstream.connection_window_bytes".into(),
            ),
            (
                "[upstream]\nidle_timeout = \"0s\"",
                "upstream.idle_timeout".into(),
            ),
            (
                "[[listen.tls]]\ncert = \"\"\nkey = \"k\"",
                "listen.tls[0].cert".into(),
            ),
            (
                "[[listen.tls]]\ncert = \"c\"\nkey = \"k\"\nserver_names = [\"a..b\"]",
                "listen.tls[0].server_names[0]".into(),
            ),
            (
                &["[[listen.tls]]\ncert = \"c\"\nkey = \"k\""; 2].join("\n"),
                "listen.tls[1].server_names".into(),
            ),
            (&lease("name = \"a b\""), "lease[0].name".into()),
            (
                &lease("name = \"a\"\nalpn = [\"\"]"),
                "lease[0].alpn[0]".into(),
            ),
            (
                "[[lease]]\nname = \"a\"\nowner_identity = \"AAAA\"",
                "lease[0].owner_identity".into(),
            ),
            (
                &format!("{}\n{}", lease("name = \"a\""), lease("name = \"a\"")),
                "lease[1].name".into(),
            ),
            (&api_key("id = \"short\""), "api_key[0].id".into()),
            (&api_key("id = \"UPPERCASE1\""), "api_key[0].id".into()),
            (
                &format!(
                    "{}\n{}",
                    api_key("id = \"abcd1234\""),
                    api_key("id = \"abcd1234\"")
                ),
                "api_key[1].id".into(),
            ),
            (
                &api_key("id = \"abcd1234\"\nscopes = []"),
                "api_key[0].scopes".into(),
            ),
        ];
        for (extra, expected) in cases {
            assert_eq!(field(extra), expected, "{extra}");
        }
        let mut cfg = parse(&api_key("id = \"abcd1234\"")).unwrap();
        for domain in ["-bad.example", "a..b", "gw.example.com:443", ""] {
            cfg.base_domain = Some(domain.into());
            assert_eq!(cfg.validate().unwrap_err().field(), Some("base_domain"));
        }
        cfg.base_domain = Some("GW.example.com".into());
        cfg.validate().unwrap();
        for bad in [
            "$argon2i$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA",
            "$argon2id$v=19$m=8,t=1$c2FsdA$aGFzaA",
            "$argon2id$v=19$m=8,t=1,p=1,x=2$c2FsdA$aGFzaA",
            "$argon2id$v=19$m=8,t=one,p=1$c2FsdA$aGFzaA",
            "$argon2id$v=19$m=8,t=1,p=1$$aGFzaA",
            "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFz=aA",
            "$argon2id$nope",
        ] {
            cfg.api_keys[0].hash = bad.into();
            let err = cfg.validate().unwrap_err();
            assert_eq!(err.field(), Some("api_key[0].hash"), "{bad}");
        }
        cfg.api_keys[0].hash = HASH.into();
        cfg.api_keys[0].leases.clear();
        assert_eq!(
            cfg.validate().unwrap_err().field(),
            Some("api_key[0].leases")
        );
        cfg.api_keys[0].leases = vec!["a/b".into()];
        assert_eq!(
            cfg.validate().unwrap_err().field(),
            Some("api_key[0].leases[0]")
        );
    }

    #[test]
    fn listeners_are_checked() {
        let mut cfg = parse("").unwrap();
        cfg.listen.http = Some("0.0.0.0:8080".parse().unwrap());
        assert_eq!(cfg.validate().unwrap_err().field(), Some("listen.http"));
        cfg.listen.http = Some("[::1]:8080".parse().unwrap());
        cfg.validate().unwrap();
        cfg.listen.https = Some("0.0.0.0:443".parse().unwrap());
        assert_eq!(cfg.validate().unwrap_err().field(), Some("listen.tls"));
        cfg.listen.tls.push(TlsCert {
            cert: "c.pem".into(),
            key: "k.pem".into(),
            server_names: vec!["*.gw.example.com".into(), "gw.example.com".into()],
        });
        cfg.validate().unwrap();
        cfg.listen.tls[0].server_names.push("GW.example.com".into());
        let err = cfg.validate().unwrap_err();
        assert_eq!(err.field(), Some("listen.tls[0].server_names[2]"));
        cfg.listen = GatewayListen::default();
        assert_eq!(cfg.validate().unwrap_err().field(), Some("listen"));
    }

    #[test]
    fn relay_urls_are_checked() {
        let mut cfg = parse("").unwrap();
        for bad in ["http://relay", "wss://", "ws://h:99999"] {
            cfg.relays = vec![bad.to_owned()];
            assert_eq!(
                cfg.validate().unwrap_err().field(),
                Some("relays[0]"),
                "{bad}"
            );
        }
        cfg.relays = vec!["wss://a".into(), "wss://a".into()];
        assert_eq!(cfg.validate().unwrap_err().field(), Some("relays[1]"));
        cfg.relays.clear();
        assert_eq!(cfg.validate().unwrap_err().field(), Some("relays"));
    }

    #[test]
    fn unknown_fields_and_bad_values_rejected() {
        for extra in [
            "bogus = 1",
            "[limits]\nmax_body = 5",
            "[ip]\nallow = [\"not-a-cidr\"]",
            &api_key("id = \"abcd1234\"\nscopes = [\"admin\"]"),
            &api_key("id = \"abcd1234\"\nsecret = \"x\""),
        ] {
            assert!(
                matches!(parse(extra), Err(ConfigError::Parse { .. })),
                "{extra}"
            );
        }
    }

    #[test]
    fn example_parses_and_round_trips() {
        let cfg = parse_gateway(include_str!("../examples/gateway.toml"), "gateway.toml").unwrap();
        assert_eq!(cfg.api_keys.len(), 2);
        assert_eq!(cfg.base_domain.as_deref(), Some("gw.example.com"));
        let text = toml::to_string(&cfg).unwrap();
        assert_eq!(parse_gateway(&text, "again").unwrap(), cfg);
    }

    #[test]
    fn loads_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, include_str!("../examples/gateway.toml")).unwrap();
        assert_eq!(load_gateway(&path).unwrap().leases[0].name, "my-mcp");
        let missing = dir.path().join("nope.toml");
        assert!(matches!(
            load_gateway(&missing),
            Err(ConfigError::Io { .. })
        ));
    }
}

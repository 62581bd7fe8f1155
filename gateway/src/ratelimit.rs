//! Rate limits: request budgets per API key, per lease, for the whole gateway, and per client
//! IP for traffic without a valid key. GCRA throughout: [`governor`] in process, or one Lua
//! script in Redis ([`redis`]) so that several gateways share one budget.
//!
//! * A budget is a [`Rate`]: `requests` per `per`, bursts of `burst`. Per-key and per-lease
//!   overrides come from the key's or the lease's own `rate_limit`; the snapshot resolves which
//!   rate applies, this module only keeps the limiters (they survive reloads; a limiter whose
//!   rate changed is replaced, starting with a full burst).
//! * The order of a decision is key → lease → global, most specific first. In process, a
//!   refusal by a later limit has already spent a unit of the earlier ones; in Redis the
//!   script checks all of them and charges none unless all allow.
//! * A refusal is a [`Refusal`]: 429 problem+json with `Retry-After` and the IETF
//!   `RateLimit-Policy` / `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers: `q` the
//!   quota, `w` its window in seconds, `r` what is left, `t` seconds until it is whole again).
//! * **Redis unreachable or slow**: a decision waits at most `rate_limit.redis_timeout`; then
//!   it is made by the in-process limiters with the same rates (each gateway then enforces the
//!   whole budget on its own: fail-open to local limits, never to "unlimited"). The switch is
//!   logged once and shown by `postern_ratelimit_redis_fallback`; Redis is tried again after
//!   `rate_limit.redis_retry_interval`, and the first success switches back (logged once).
//!
//! This module never sees a key's secret: limiters are keyed by key id, lease name and the
//! client's IP bucket, none of which is ever a metric label.

mod redis;

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{DefaultKeyedRateLimiter, Quota};
use parking_lot::{Mutex, RwLock};
use postern_config::{Rate, RateLimitBackend, RateLimitConfig};

use crate::access_log::Outcome;
use crate::metrics::Metrics;
use crate::problem::{Problem, Refusal};

use self::redis::{RedisDecision, RedisLimit, RedisLimiter};

type DirectLimiter =
    governor::RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// The in-process limiters of one kind (keys, leases, or the one global), by name, with the
/// rate each was made for. Looked up by `&str`: a decision allocates nothing.
type NamedLimiters = HashMap<String, (Rate, Arc<DirectLimiter>)>;

/// Where the limiters of `limit` are kept in [`RateLimiter::named`].
fn slot(limit: Limit) -> usize {
    match limit {
        Limit::Key => 0,
        Limit::Lease => 1,
        Limit::Global | Limit::Ip => 2,
    }
}

/// Which budget a decision is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    Global,
    Key,
    Lease,
    Ip,
}

impl Limit {
    /// The metric label and the `RateLimit-Policy` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::Key => "key",
            Self::Lease => "lease",
            Self::Ip => "ip",
        }
    }
}

/// The budgets one request is checked against; `None` where no rate is configured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Budgets<'a> {
    /// Key id and its rate.
    pub key: Option<(&'a str, Rate)>,
    /// Lease name and its rate.
    pub lease: Option<(&'a str, Rate)>,
    pub global: Option<Rate>,
}

/// Every limiter of the gateway; lives in the runtime, across reloads.
pub struct RateLimiter {
    /// Keys, leases, global ([`slot`]).
    named: [RwLock<NamedLimiters>; 3],
    ip: RwLock<Option<(Rate, Arc<DefaultKeyedRateLimiter<IpAddr>>)>>,
    ip_checks: AtomicU64,
    redis: Option<RedisBackend>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field(
                "limiters",
                &self.named.iter().map(|n| n.read().len()).sum::<usize>(),
            )
            .field("redis", &self.redis.is_some())
            .finish_non_exhaustive()
    }
}

/// IP checks between two clean-ups of the per-IP limiter's idle entries.
const IP_HOUSEKEEPING_EVERY: u64 = 4096;

/// Redis, with the state of the fallback to local limiting.
struct RedisBackend {
    limiter: RedisLimiter,
    retry_interval: Duration,
    /// While set and in the future, decisions are local without asking Redis.
    down_until: Mutex<Option<Instant>>,
    falling_back: AtomicBool,
}

/// Why the rate-limit settings could not be used.
#[derive(Debug, thiserror::Error)]
#[error("rate_limit.redis_url: {0}")]
pub struct RateLimitSetupError(String);

impl RateLimiter {
    /// The limiters for `config`; with the Redis backend, a client that connects in the
    /// background (Redis need not be up yet).
    pub fn new(
        config: &RateLimitConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RateLimitSetupError> {
        let redis = match (config.backend, &config.redis_url) {
            (RateLimitBackend::Redis, Some(url)) => Some(RedisBackend {
                limiter: RedisLimiter::new(url, config.redis_timeout)
                    .map_err(|e| RateLimitSetupError(e.to_string()))?,
                retry_interval: config.redis_retry_interval,
                down_until: Mutex::new(None),
                falling_back: AtomicBool::new(false),
            }),
            (RateLimitBackend::Redis, None) => {
                return Err(RateLimitSetupError(
                    "backend = \"redis\" needs a URL".into(),
                ))
            }
            (RateLimitBackend::Local, _) => None,
        };
        Ok(Self {
            named: Default::default(),
            ip: RwLock::new(None),
            ip_checks: AtomicU64::new(0),
            redis,
            metrics,
        })
    }

    /// Checks (and, when allowed, charges) the budgets of one request.
    pub async fn check(&self, budgets: Budgets<'_>) -> Result<(), Refusal> {
        let all = [
            budgets.key.map(|(id, r)| (Limit::Key, id, r)),
            budgets.lease.map(|(name, r)| (Limit::Lease, name, r)),
            budgets.global.map(|r| (Limit::Global, "all", r)),
        ];
        if all.iter().all(Option::is_none) {
            return Ok(());
        }
        let limits = all.iter().flatten();
        if self.redis.is_some() {
            let limits: Vec<(Limit, &str, Rate)> = limits.clone().copied().collect();
            if let Some(decided) = self.check_redis(&limits).await {
                return decided;
            }
        }
        for (limit, name, rate) in limits {
            let limiter = self.named_limiter(*limit, name, *rate);
            if let Err(not_until) = limiter.check() {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return Err(self.refuse(*limit, *rate, wait, wait_until_whole(*rate, 0)));
            }
        }
        Ok(())
    }

    /// Checks the per-IP budget of a request without a valid key (`bucket`: the client's
    /// address, IPv6 by /64). `Ok` when no per-IP rate is configured.
    pub async fn check_ip(&self, bucket: IpAddr, rate: Option<Rate>) -> Result<(), Refusal> {
        let Some(rate) = rate else { return Ok(()) };
        let key = bucket.to_string();
        if let Some(decided) = self.check_redis(&[(Limit::Ip, &key, rate)]).await {
            return decided;
        }
        let limiter = self.ip_limiter(rate);
        if self.ip_checks.fetch_add(1, Ordering::Relaxed) % IP_HOUSEKEEPING_EVERY == 0 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        match limiter.check_key(&bucket) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(self.refuse(Limit::Ip, rate, wait, wait_until_whole(rate, 0)))
            }
        }
    }

    /// The decision from Redis, or `None` to decide locally (no Redis, or Redis failing).
    async fn check_redis(&self, limits: &[(Limit, &str, Rate)]) -> Option<Result<(), Refusal>> {
        let backend = self.redis.as_ref()?;
        if backend
            .down_until
            .lock()
            .is_some_and(|until| Instant::now() < until)
        {
            return None;
        }
        let request: Vec<RedisLimit> = limits
            .iter()
            .map(|(limit, name, rate)| RedisLimit {
                key: format!("postern:rl:{}:{name}", limit.as_str()),
                emission: rate.emission(),
                burst: rate.burst(),
            })
            .collect();
        let started = Instant::now();
        let decided = backend.limiter.check(&request).await;
        self.metrics
            .redis_duration
            .observe(started.elapsed().as_secs_f64());
        match decided {
            Ok(decision) => {
                *backend.down_until.lock() = None;
                if backend.falling_back.swap(false, Ordering::Relaxed) {
                    self.metrics.redis_fallback.set(0);
                    tracing::warn!("rate limits: Redis answers again; budgets are shared again");
                }
                Some(match decision {
                    RedisDecision::Allowed { .. } => Ok(()),
                    RedisDecision::Denied {
                        limit,
                        retry_after,
                        reset,
                    } => {
                        let (which, _, rate) = limits.get(limit).copied()?;
                        Err(self.refuse(which, rate, retry_after, reset))
                    }
                })
            }
            Err(e) => {
                self.metrics.redis_errors.inc();
                *backend.down_until.lock() = Some(Instant::now() + backend.retry_interval);
                if !backend.falling_back.swap(true, Ordering::Relaxed) {
                    self.metrics.redis_fallback.set(1);
                    tracing::error!(
                        error = %e,
                        retry_in = ?backend.retry_interval,
                        "rate limits: Redis unreachable; deciding locally with the same rates \
                         (each gateway enforces the whole budget alone until Redis is back)"
                    );
                }
                None
            }
        }
    }

    fn named_limiter(&self, limit: Limit, name: &str, rate: Rate) -> Arc<DirectLimiter> {
        let named = &self.named[slot(limit)];
        if let Some((r, limiter)) = named.read().get(name) {
            if *r == rate {
                return Arc::clone(limiter);
            }
        }
        let mut named = named.write();
        let entry = named
            .entry(name.to_owned())
            .or_insert_with(|| (rate, Arc::new(direct(rate))));
        if entry.0 != rate {
            *entry = (rate, Arc::new(direct(rate)));
        }
        Arc::clone(&entry.1)
    }

    fn ip_limiter(&self, rate: Rate) -> Arc<DefaultKeyedRateLimiter<IpAddr>> {
        if let Some((r, limiter)) = self.ip.read().as_ref() {
            if *r == rate {
                return Arc::clone(limiter);
            }
        }
        let mut ip = self.ip.write();
        match ip.as_ref() {
            Some((r, limiter)) if *r == rate => Arc::clone(limiter),
            _ => {
                let limiter = Arc::new(governor::RateLimiter::keyed(quota(rate)));
                *ip = Some((rate, Arc::clone(&limiter)));
                limiter
            }
        }
    }

    /// Forgets the limiters of keys and leases no longer configured (after a reload).
    pub fn retain(&self, keep: impl Fn(Limit, &str) -> bool) {
        for limit in [Limit::Key, Limit::Lease, Limit::Global] {
            self.named[slot(limit)]
                .write()
                .retain(|name, _| keep(limit, name));
        }
    }

    fn refuse(&self, limit: Limit, rate: Rate, retry_after: Duration, reset: Duration) -> Refusal {
        self.metrics
            .ratelimit_rejections
            .with_label_values(&[limit.as_str()])
            .inc();
        let retry_after_secs = ceil_secs(retry_after).max(1);
        let mut refusal = Refusal::new(
            Problem::TooManyRequests { retry_after_secs },
            Outcome::RateLimited,
        );
        refusal.headers = rate_limit_fields(limit, rate, 0, reset.max(retry_after));
        refusal
    }
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers) for `limit`.
pub fn rate_limit_fields(
    limit: Limit,
    rate: Rate,
    remaining: u32,
    reset: Duration,
) -> Vec<(&'static str, String)> {
    let name = limit.as_str();
    vec![
        (
            "ratelimit-policy",
            format!(
                "\"{name}\";q={};w={}",
                rate.requests,
                ceil_secs(rate.per).max(1)
            ),
        ),
        (
            "ratelimit",
            format!("\"{name}\";r={remaining};t={}", ceil_secs(reset)),
        ),
    ]
}

/// How long a limiter with `remaining` of its burst left takes to be whole again.
fn wait_until_whole(rate: Rate, remaining: u32) -> Duration {
    rate.emission() * rate.burst().saturating_sub(remaining)
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn quota(rate: Rate) -> Quota {
    let burst = NonZeroU32::new(rate.burst()).unwrap_or(NonZeroU32::MIN);
    // `Rate::validate` keeps the emission interval above zero; `with_period` is `None` only
    // for zero.
    Quota::with_period(rate.emission())
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst)
}

fn direct(rate: Rate) -> DirectLimiter {
    governor::RateLimiter::direct(quota(rate)).with_middleware::<StateInformationMiddleware>()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn rate(requests: u32, per_ms: u64, burst: Option<u32>) -> Rate {
        Rate {
            requests,
            per: Duration::from_millis(per_ms),
            burst,
        }
    }

    fn limiter() -> RateLimiter {
        RateLimiter::new(&RateLimitConfig::default(), Arc::new(Metrics::new())).unwrap()
    }

    #[tokio::test]
    async fn a_key_gets_its_burst_then_429_with_fields() {
        let rl = limiter();
        let budgets = Budgets {
            key: Some(("abcd1234", rate(3, 60_000, None))),
            ..Budgets::default()
        };
        for _ in 0..3 {
            rl.check(budgets).await.unwrap();
        }
        let refusal = rl.check(budgets).await.unwrap_err();
        assert_eq!(refusal.problem.status(), 429);
        assert_eq!(refusal.outcome, Outcome::RateLimited);
        let fields: HashMap<_, _> = refusal.headers.iter().cloned().collect();
        assert_eq!(fields["ratelimit-policy"], "\"key\";q=3;w=60");
        assert!(
            fields["ratelimit"].starts_with("\"key\";r=0;t="),
            "{fields:?}"
        );
        let Problem::TooManyRequests { retry_after_secs } = refusal.problem else {
            panic!()
        };
        assert!((19..=21).contains(&retry_after_secs), "{retry_after_secs}");
        // Another key has a budget of its own.
        let other = Budgets {
            key: Some(("other123", rate(3, 60_000, None))),
            ..Budgets::default()
        };
        rl.check(other).await.unwrap();
    }

    #[tokio::test]
    async fn budgets_recover_after_the_emission_interval() {
        let rl = limiter();
        let budgets = Budgets {
            lease: Some(("web", rate(10, 1_000, Some(1)))),
            ..Budgets::default()
        };
        rl.check(budgets).await.unwrap();
        assert!(rl.check(budgets).await.is_err());
        tokio::time::sleep(Duration::from_millis(120)).await;
        rl.check(budgets).await.unwrap();
    }

    #[tokio::test]
    async fn a_changed_rate_replaces_the_limiter() {
        let rl = limiter();
        let one = Budgets {
            global: Some(rate(1, 60_000, None)),
            ..Budgets::default()
        };
        rl.check(one).await.unwrap();
        assert!(rl.check(one).await.is_err());
        let two = Budgets {
            global: Some(rate(2, 60_000, None)),
            ..Budgets::default()
        };
        rl.check(two).await.unwrap();
    }

    #[tokio::test]
    async fn the_ip_budget_is_per_bucket() {
        let rl = limiter();
        let r = Some(rate(2, 60_000, None));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        rl.check_ip(a, r).await.unwrap();
        rl.check_ip(a, r).await.unwrap();
        let refused = rl.check_ip(a, r).await.unwrap_err();
        assert!(refused.headers[0].1.starts_with("\"ip\""));
        rl.check_ip(b, r).await.unwrap();
        rl.check_ip(a, None).await.unwrap();
    }

    #[tokio::test]
    async fn rejections_are_counted_by_limit() {
        let metrics = Arc::new(Metrics::new());
        let rl = RateLimiter::new(&RateLimitConfig::default(), Arc::clone(&metrics)).unwrap();
        let budgets = Budgets {
            global: Some(rate(1, 60_000, None)),
            ..Budgets::default()
        };
        rl.check(budgets).await.unwrap();
        let _ = rl.check(budgets).await;
        assert!(metrics
            .render()
            .contains("postern_ratelimit_rejections_total{limit=\"global\"} 1"));
    }
}

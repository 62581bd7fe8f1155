//! API keys: who is calling.
//!
//! A key is `pst_<id>_<secret>` (the format is `postern_control::keys`): `id` is 8–32
//! characters of `[a-z0-9]` and names the record, `secret` is 32–64 characters of
//! `[A-Za-z0-9]`. The configuration (and the control plane's store) keeps only an argon2id
//! hash of the whole key. argon2 is deliberately slow, so this module must never let a client turn
//! requests into argon2 work at will:
//! * a malformed key, or a well-formed key whose id is unknown, is refused before argon2 (the id
//!   is an O(1) map lookup; ids are identifiers, not secrets);
//! * a key that passed argon2 is remembered as the SHA-256 of the whole key, per id, until it
//!   goes unused for `key_cache_ttl`; later requests compare digests in constant time and skip
//!   argon2;
//! * concurrent first uses of one id wait for a single argon2 run (at most once per key per
//!   cache lifetime);
//! * failed attempts are limited per client IP (IPv6 per /64) with a GCRA quota; past it the
//!   caller answers 429 without trying the key. An attempt that needs argon2 spends its unit of
//!   the quota *before* argon2 runs, taken atomically by the limiter: a burst of concurrent
//!   guesses cannot all pass the check first and be counted afterwards;
//! * a request waits at most `limits.key_verify_timeout` for another request's argon2 run of
//!   the same key id, then answers 503: a queue of guesses at one id cannot hold legitimate
//!   callers of that key indefinitely.
//!
//! * at most `limits.max_concurrent_key_checks` argon2 runs happen at once across all keys
//!   (each holds about 19 MiB while it runs), so guesses cannot grow the gateway's memory
//!   past a stated ceiling; a run waits for a slot at most `key_verify_timeout` (then 503).
//!
//! The keys themselves ([`KeyTable`]) belong to the snapshot and are rebuilt on reload; the
//! cache, the quota and the argon2 slots ([`KeyVerifier`]) belong to the runtime. A cache entry
//! is tied to the stored hash it was verified against, so a rotated secret misses at once.
//!
//! The secret is never logged: both types have hand-written `Debug`s, and errors name no key.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use argon2::password_hash::PasswordHash;
use argon2::{Argon2, PasswordVerifier};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::HeaderMap;
use ipnet::IpNet;
use postern_config::{ApiKeyConfig, GatewayLimits, Rate, Scope};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::client_ip;
use crate::problem::Problem;

use postern_control::keys::{ID_CHARS, PREFIX, SECRET_CHARS};
/// Failures between two clean-ups of the per-IP state.
const HOUSEKEEPING_EVERY: u64 = 1024;
/// Most client IPs held in the blocked list at once.
const MAX_BLOCKED_IPS: usize = 65_536;

/// A resolved, verified key: everything the ACL needs, nothing secret.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    /// Lease name globs.
    pub leases: Vec<String>,
    pub scopes: Vec<Scope>,
    pub allow_ips: Vec<IpNet>,
    pub deny_ips: Vec<IpNet>,
    /// Unix seconds.
    pub expires_at: Option<u64>,
    /// This key's own budget, in place of `[rate_limit] per_key`.
    pub rate_limit: Option<Rate>,
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no API key")]
    Missing,
    #[error("Authorization and X-API-Key carry different keys")]
    ConflictingHeaders,
    #[error("malformed API key")]
    Malformed,
    #[error("unknown API key id")]
    UnknownKey,
    #[error("API key expired")]
    Expired,
    #[error("wrong API key secret")]
    WrongSecret,
    #[error("too many failed attempts from this address")]
    TooManyFailures { retry_after: Duration },
    #[error("key verification is busy; try again")]
    Busy,
    #[error("key verification failed internally")]
    Internal,
}

impl AuthError {
    /// The `reason` label of `postern_auth_failures_total` (a fixed set).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::ConflictingHeaders => "conflicting",
            Self::Malformed => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::Expired => "expired",
            Self::WrongSecret => "wrong_secret",
            Self::TooManyFailures { .. } => "too_many_failures",
            Self::Busy => "busy",
            Self::Internal => "internal",
        }
    }

    /// The response: 401 for every key problem, 429 when rate limited, 503 when the gateway
    /// could not decide (not the caller's fault, and not counted against it).
    pub fn problem(&self) -> Problem {
        match self {
            Self::TooManyFailures { retry_after } => Problem::TooManyRequests {
                retry_after_secs: retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0),
            },
            Self::Internal | Self::Busy => Problem::ServiceUnavailable,
            _ => Problem::Unauthorized,
        }
    }
}

pub use postern_control::keys::generate;

/// The field that carries an API key when `Authorization` does not.
pub const API_KEY_FIELD: &str = "x-api-key";

/// The fields that carry the gateway credential, to be removed before a request goes to the
/// origin: `X-API-Key` always, `Authorization` when it holds a Postern key (an origin's own
/// `Authorization` stays).
pub fn credential_fields(headers: &HeaderMap) -> impl Iterator<Item = &'static str> {
    let ours = authorization_is_ours(headers);
    std::iter::once(API_KEY_FIELD).chain(ours.then_some("authorization"))
}

/// Whether any `Authorization` field carries a Postern API key (`Bearer pst_…`, parsed as
/// [`KeyTable::extract`] parses it).
fn authorization_is_ours(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .any(|v| v.to_str().ok().and_then(bearer_key).is_some())
}

/// The token of an `Authorization: Bearer pst_…` value: the scheme case-insensitive, spaces
/// or tabs around and between the two.
fn bearer_key(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && token.starts_with(PREFIX)).then_some(token)
}

/// Splits `pst_<id>_<secret>` and checks both alphabets and lengths; no secret comparison.
fn parse_key(presented: &str) -> Option<&str> {
    let (id, secret) = presented.strip_prefix(PREFIX)?.split_once('_')?;
    let id_ok = ID_CHARS.contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let secret_ok =
        SECRET_CHARS.contains(&secret.len()) && secret.bytes().all(|b| b.is_ascii_alphanumeric());
    (id_ok && secret_ok).then_some(id)
}

struct StoredKey {
    key: Arc<ApiKey>,
    phc: Arc<str>,
    /// Held while argon2 runs for this id, so concurrent misses share one run.
    verifying: tokio::sync::Mutex<()>,
}

/// The configured keys by id, as resolved into one snapshot: what a key may do and its hash.
/// Rebuilt on every reload; the verifier's cache is checked against the hash found here.
#[derive(Default)]
pub struct KeyTable {
    keys: HashMap<String, StoredKey>,
}

impl std::fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyTable")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl KeyTable {
    /// Resolves the configured keys (validated by `postern_config`). A hash argon2 still cannot
    /// parse is logged, and that key is refused without argon2 work.
    pub fn new(configs: &[ApiKeyConfig]) -> Self {
        let mut keys = HashMap::with_capacity(configs.len());
        for c in configs {
            if PasswordHash::new(&c.hash).is_err() {
                tracing::warn!(key_id = %c.id, "api_key hash is not a PHC string; key disabled");
                continue;
            }
            let key = ApiKey {
                id: c.id.clone(),
                name: c.name.clone(),
                leases: c.leases.clone(),
                scopes: c.scopes.clone(),
                allow_ips: c.allow_ips.clone(),
                deny_ips: c.deny_ips.clone(),
                expires_at: c.expires_at,
                rate_limit: c.rate_limit,
            };
            let stored = StoredKey {
                key: Arc::new(key),
                phc: c.hash.as_str().into(),
                verifying: tokio::sync::Mutex::new(()),
            };
            keys.insert(c.id.clone(), stored);
        }
        Self { keys }
    }

    /// Whether a key with this id is configured.
    pub fn contains(&self, id: &str) -> bool {
        self.keys.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The presented key from `Authorization: Bearer pst_…` or `X-API-Key`, if any.
    ///
    /// A non-Bearer `Authorization`, or a Bearer token that is not a `pst_` key, belongs to the
    /// origin and is ignored. Repeated headers, non-ASCII values, or two different keys are errors.
    pub fn extract(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
        let single = |name: &str| -> Result<Option<&str>, AuthError> {
            let mut values = headers.get_all(name).iter();
            match (values.next(), values.next()) {
                (None, _) => Ok(None),
                (Some(v), None) => v
                    .to_str()
                    .map(|s| Some(s.trim()))
                    .map_err(|_| AuthError::Malformed),
                (Some(_), Some(_)) => Err(AuthError::Malformed),
            }
        };
        let bearer = single(http::header::AUTHORIZATION.as_str())?.and_then(bearer_key);
        match (bearer, single(API_KEY_FIELD)?) {
            (Some(a), Some(b)) if a != b => Err(AuthError::ConflictingHeaders),
            (a, b) => Ok(a.or(b)),
        }
    }
}

/// Whether argon2 can read every configured hash (a key whose hash it cannot read is disabled
/// at load, which `check-config` must tell before it happens).
pub fn check_hashes(configs: &[ApiKeyConfig]) -> Result<(), String> {
    for (i, c) in configs.iter().enumerate() {
        PasswordHash::new(&c.hash)
            .map_err(|e| format!("api_key[{i}].hash: argon2 cannot read it: {e}"))?;
    }
    Ok(())
}

struct CacheEntry {
    digest: [u8; 32],
    /// The stored hash the key was verified against: once a reload changes it (a rotated
    /// secret), the entry no longer counts.
    phc: Arc<str>,
    last_used: Instant,
}

/// The verifier's settings, from `[limits]`; replaced whole on reload.
#[derive(Debug, Clone, PartialEq)]
struct VerifierSettings {
    cache_ttl: Duration,
    /// Longest wait for another request's argon2 run of the same key id, or for an argon2 slot.
    verify_timeout: Duration,
    cache_max: usize,
    failures_per_minute: u32,
    concurrent_checks: usize,
}

impl VerifierSettings {
    fn of(limits: &GatewayLimits) -> Self {
        Self {
            cache_ttl: limits.key_cache_ttl,
            verify_timeout: limits.key_verify_timeout,
            cache_max: limits.key_cache_max_entries.max(1),
            failures_per_minute: limits.failed_auth_per_ip_per_minute,
            concurrent_checks: limits
                .max_concurrent_key_checks
                .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
        }
    }
}

/// What survives reloads of the key table: the verified-key cache, the per-IP failure
/// limiter, the argon2 slots and the argon2 counter.
pub struct KeyVerifier {
    settings: RwLock<VerifierSettings>,
    cache: Mutex<HashMap<String, CacheEntry>>,
    argon2_verifications: prometheus::IntCounter,
    /// At most `limits.max_concurrent_key_checks` argon2 runs at once, across all keys: each
    /// takes about 19 MiB while it runs, so this is the ceiling on what guesses can make the
    /// gateway allocate (and the allocator keeps).
    argon2_slots: RwLock<Arc<tokio::sync::Semaphore>>,
    failures: RwLock<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    failures_seen: AtomicU64,
}

impl std::fmt::Debug for KeyVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVerifier")
            .field("argon2_verifications", &self.argon2_verifications())
            .finish_non_exhaustive()
    }
}

fn failure_limiter(per_minute: u32) -> Arc<DefaultKeyedRateLimiter<IpAddr>> {
    let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
    Arc::new(RateLimiter::keyed(Quota::per_minute(per_minute)))
}

impl KeyVerifier {
    /// `argon2_runs` counts every argon2 verification (a metric).
    pub fn new(limits: &GatewayLimits, argon2_runs: prometheus::IntCounter) -> Self {
        let settings = VerifierSettings::of(limits);
        Self {
            cache: Mutex::new(HashMap::new()),
            argon2_verifications: argon2_runs,
            argon2_slots: RwLock::new(Arc::new(tokio::sync::Semaphore::new(
                settings.concurrent_checks,
            ))),
            failures: RwLock::new(failure_limiter(settings.failures_per_minute)),
            blocked: Mutex::new(HashMap::new()),
            failures_seen: AtomicU64::new(0),
            settings: RwLock::new(settings),
        }
    }

    /// Applies reloaded `[limits]`. A changed failure quota starts with every client's quota
    /// whole; a changed argon2 slot count applies to runs that start from now on.
    pub fn configure(&self, limits: &GatewayLimits) {
        let new = VerifierSettings::of(limits);
        let mut settings = self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if settings.failures_per_minute != new.failures_per_minute {
            *self
                .failures
                .write()
                .unwrap_or_else(PoisonError::into_inner) = failure_limiter(new.failures_per_minute);
            self.blocked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }
        if settings.concurrent_checks != new.concurrent_checks {
            *self
                .argon2_slots
                .write()
                .unwrap_or_else(PoisonError::into_inner) =
                Arc::new(tokio::sync::Semaphore::new(new.concurrent_checks));
        }
        *settings = new;
    }

    fn settings(&self) -> VerifierSettings {
        self.settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many times argon2 has run since this verifier was built.
    pub fn argon2_verifications(&self) -> u64 {
        self.argon2_verifications.get()
    }

    /// Checks a key presented by a client at `ip` against `table`; `now_unix` decides expiry.
    ///
    /// Every failure counts against `ip`'s quota (see the module docs); a client over it gets
    /// [`AuthError::TooManyFailures`] for any key not already verified. A key in the cache is
    /// accepted even then: presenting it guesses nothing, and a client sharing an address (a
    /// NAT) with someone guessing keys keeps working.
    pub async fn verify(
        &self,
        table: &KeyTable,
        presented: &str,
        now_unix: u64,
        ip: IpAddr,
    ) -> Result<Arc<ApiKey>, AuthError> {
        let settings = self.settings();
        let id = parse_key(presented);
        let stored = id.and_then(|id| Some((id, table.keys.get(id)?)));
        let live = stored.filter(|(_, s)| s.key.expires_at.is_none_or(|at| now_unix < at));
        let digest: Option<[u8; 32]> = live.map(|_| Sha256::digest(presented.as_bytes()).into());
        if let (Some((id, stored)), Some(digest)) = (live, &digest) {
            if self.cached(id, &stored.phc, digest, &settings) {
                return Ok(stored.key.clone());
            }
        }
        self.check_ip_allowed_to_try(ip)?;
        let refuse = |e: AuthError| {
            self.record_failure(ip);
            Err(e)
        };
        let Some((id, stored)) = stored else {
            let unknown = id.is_some();
            return refuse(if unknown {
                AuthError::UnknownKey
            } else {
                AuthError::Malformed
            });
        };
        let Some(digest) = digest else {
            return refuse(AuthError::Expired);
        };
        let _one_run = tokio::time::timeout(settings.verify_timeout, stored.verifying.lock())
            .await
            .map_err(|_| AuthError::Busy)?;
        if self.cached(id, &stored.phc, &digest, &settings) {
            return Ok(stored.key.clone());
        }
        // The attempt is paid for before argon2 runs; a wrong secret is then already counted.
        self.charge(ip)?;
        let slots = self
            .argon2_slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let _slot = tokio::time::timeout(settings.verify_timeout, slots.acquire_owned())
            .await
            .map_err(|_| AuthError::Busy)?
            .map_err(|_| AuthError::Internal)?;
        self.argon2_verifications.inc();
        let (phc, candidate) = (stored.phc.clone(), presented.to_owned());
        let verified = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&phc).is_ok_and(|h| {
                Argon2::default()
                    .verify_password(candidate.as_bytes(), &h)
                    .is_ok()
            })
        })
        .await
        .map_err(|_| AuthError::Internal)?;
        if !verified {
            return Err(AuthError::WrongSecret);
        }
        self.remember(id, &stored.phc, digest, &settings);
        Ok(stored.key.clone())
    }

    /// Whether `digest` is the verified key of `id` under its stored hash `phc`; a hit keeps
    /// the entry another `key_cache_ttl` (a key in use never goes back to argon2, so never
    /// queues behind guesses).
    fn cached(&self, id: &str, phc: &str, digest: &[u8; 32], s: &VerifierSettings) -> bool {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = cache.get_mut(id) else {
            return false;
        };
        let hit = entry.last_used.elapsed() < s.cache_ttl
            && *entry.phc == *phc
            && bool::from(entry.digest.ct_eq(digest));
        if hit {
            entry.last_used = Instant::now();
        }
        hit
    }

    fn remember(&self, id: &str, phc: &Arc<str>, digest: [u8; 32], s: &VerifierSettings) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= s.cache_max && !cache.contains_key(id) {
            cache.retain(|_, e| e.last_used.elapsed() < s.cache_ttl);
            if cache.len() >= s.cache_max {
                let oldest = cache
                    .iter()
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    cache.remove(&oldest);
                }
            }
        }
        let last_used = Instant::now();
        let phc = Arc::clone(phc);
        cache.insert(
            id.to_owned(),
            CacheEntry {
                digest,
                phc,
                last_used,
            },
        );
    }

    /// Forgets cached keys whose id `table` no longer has (after a reload).
    pub fn retain(&self, table: &KeyTable) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|id, _| table.contains(id));
    }

    /// `Err` while `ip` is over its failed-attempt quota; try no key from it until then.
    fn check_ip_allowed_to_try(&self, ip: IpAddr) -> Result<(), AuthError> {
        let bucket = client_ip::bucket(ip);
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        match blocked
            .get(&bucket)
            .map(|until| until.saturating_duration_since(Instant::now()))
        {
            Some(retry_after) if !retry_after.is_zero() => {
                Err(AuthError::TooManyFailures { retry_after })
            }
            Some(_) => {
                blocked.remove(&bucket);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts a failed attempt from `ip`; past the quota, `ip` is blocked until a cell frees up.
    fn record_failure(&self, ip: IpAddr) {
        let _ = self.charge(ip);
    }

    /// Spends one attempt of `ip`'s quota, atomically; `Err` (and `ip` blocked) when none is
    /// left. The limiter is the authority: the blocked list only answers early, so when it is
    /// full (a very wide attack) clients missing from it are still refused here.
    fn charge(&self, ip: IpAddr) -> Result<(), AuthError> {
        let bucket = client_ip::bucket(ip);
        let failures = self
            .failures
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let charged = failures.check_key(&bucket).map_err(|not_until| {
            let retry_after =
                not_until.wait_time_from(governor::clock::Clock::now(failures.clock()));
            let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
            if blocked.len() >= MAX_BLOCKED_IPS {
                let now = Instant::now();
                blocked.retain(|_, until| *until > now);
            }
            if blocked.len() < MAX_BLOCKED_IPS {
                blocked.insert(bucket, Instant::now() + retry_after);
            }
            AuthError::TooManyFailures { retry_after }
        });
        if self.failures_seen.fetch_add(1, Ordering::Relaxed) % HOUSEKEEPING_EVERY == 0 {
            failures.retain_recent();
            failures.shrink_to_fit();
        }
        charged
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::OnceLock;

    use argon2::password_hash::{PasswordHasher, SaltString};
    use http::HeaderValue;
    use rand::distributions::{Alphanumeric, DistString};
    use rand::Rng;

    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// One generated key, shared: each argon2 hash costs real time.
    fn sample() -> &'static (String, String, String) {
        static KEY: OnceLock<(String, String, String)> = OnceLock::new();
        KEY.get_or_init(|| generate(12).unwrap())
    }

    fn config(id: &str, phc: &str) -> ApiKeyConfig {
        ApiKeyConfig {
            id: id.into(),
            hash: phc.into(),
            name: "test".into(),
            leases: vec!["*".into()],
            scopes: vec![Scope::Write],
            expires_at: None,
            allow_ips: vec![],
            deny_ips: vec![],
            rate_limit: None,
        }
    }

    /// A key table and its verifier, as the runtime holds them.
    struct KeyStore {
        keys: KeyTable,
        verifier: KeyVerifier,
    }

    impl std::fmt::Debug for KeyStore {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?} {:?}", self.keys, self.verifier)
        }
    }

    impl KeyStore {
        fn new(configs: &[ApiKeyConfig], limits: &GatewayLimits) -> Self {
            let counter = prometheus::IntCounter::new("argon2", "runs").unwrap();
            Self {
                keys: KeyTable::new(configs),
                verifier: KeyVerifier::new(limits, counter),
            }
        }

        async fn verify(
            &self,
            presented: &str,
            now: u64,
            ip: IpAddr,
        ) -> Result<Arc<ApiKey>, AuthError> {
            self.verifier.verify(&self.keys, presented, now, ip).await
        }

        fn argon2_verifications(&self) -> u64 {
            self.verifier.argon2_verifications()
        }

        fn extract(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
            KeyTable::extract(headers)
        }
    }

    fn store_with(limits: GatewayLimits, expires_at: Option<u64>) -> KeyStore {
        let (_, id, phc) = sample();
        let mut c = config(id, phc);
        c.expires_at = expires_at;
        KeyStore::new(&[c], &limits)
    }

    fn store() -> KeyStore {
        store_with(GatewayLimits::default(), None)
    }

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let (key, id, phc) = sample();
        assert_eq!(parse_key(key), Some(id.as_str()));
        assert_eq!(id.len(), 12);
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert_eq!(generate(1).unwrap().1.len(), 8);
    }

    #[tokio::test]
    async fn generated_key_verifies_and_wrong_secret_fails() {
        let (key, id, _) = sample();
        let store = store();
        assert_eq!(store.verify(key, 0, LOOPBACK).await.unwrap().id, *id);
        let mut wrong = key.clone();
        let last = if wrong.ends_with('A') { "B" } else { "A" };
        wrong.replace_range(wrong.len() - 1.., last);
        assert_eq!(
            store.verify(&wrong, 0, LOOPBACK).await,
            Err(AuthError::WrongSecret)
        );
        assert_eq!(store.argon2_verifications(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn argon2_runs_once_per_key_per_cache_lifetime() {
        let store = Arc::new(store());
        let key = &sample().0;
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (store, key) = (store.clone(), key.clone());
                tokio::spawn(async move { store.verify(&key, 0, LOOPBACK).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        store.verify(key, 0, LOOPBACK).await.unwrap();
        assert_eq!(store.argon2_verifications(), 1);
    }

    #[tokio::test]
    async fn cache_entries_expire_and_are_bounded() {
        let short = GatewayLimits {
            key_cache_ttl: Duration::from_millis(1),
            ..GatewayLimits::default()
        };
        let store = store_with(short, None);
        let key = &sample().0;
        store.verify(key, 0, LOOPBACK).await.unwrap();
        std::thread::sleep(Duration::from_millis(5));
        store.verify(key, 0, LOOPBACK).await.unwrap();
        assert_eq!(store.argon2_verifications(), 2);

        let (_, id, phc) = sample();
        let one = GatewayLimits {
            key_cache_max_entries: 1,
            ..GatewayLimits::default()
        };
        let store = KeyStore::new(&[config(id, phc), config("otherkey1", phc)], &one);
        store.verify(key, 0, LOOPBACK).await.unwrap();
        let settings = store.verifier.settings();
        store
            .verifier
            .remember("otherkey1", &Arc::from(phc.as_str()), [0; 32], &settings);
        assert_eq!(store.verifier.cache.lock().unwrap().len(), 1);
        store.verify(key, 0, LOOPBACK).await.unwrap();
        assert_eq!(store.argon2_verifications(), 2);
    }

    #[tokio::test]
    async fn ten_thousand_bad_keys_cost_no_argon2() {
        let unlimited = GatewayLimits {
            failed_auth_per_ip_per_minute: u32::MAX,
            ..GatewayLimits::default()
        };
        let store = store_with(unlimited, None);
        let (_, id, _) = sample();
        let mut rng = rand::thread_rng();
        for i in 0..10_000 {
            let secret = Alphanumeric.sample_string(&mut rng, 40);
            let unknown_id: String = Alphanumeric.sample_string(&mut rng, 12).to_lowercase();
            let presented = match i % 4 {
                0 => {
                    let len = rng.gen_range(0..120);
                    Alphanumeric.sample_string(&mut rng, len)
                }
                1 => format!("pst_{unknown_id}_{secret}"),
                2 => format!("pst_{id}_{}", &secret[..rng.gen_range(0..32)]),
                _ => format!("pst_{id}_{secret}!"),
            };
            let refused = store.verify(&presented, 0, LOOPBACK).await.unwrap_err();
            assert_ne!(
                refused.problem(),
                Problem::ServiceUnavailable,
                "{presented}"
            );
            assert!(!matches!(refused, AuthError::TooManyFailures { .. }));
        }
        assert_eq!(store.argon2_verifications(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_guesses_cannot_outrun_the_failure_quota() {
        let limits = GatewayLimits {
            failed_auth_per_ip_per_minute: 3,
            ..GatewayLimits::default()
        };
        let store = Arc::new(store_with(limits, None));
        let mut wrong = sample().0.clone();
        let last = if wrong.ends_with('A') { "B" } else { "A" };
        wrong.replace_range(wrong.len() - 1.., last);
        // All of them pass the early check before any argon2 run has finished.
        let guesses: Vec<_> = (0..16)
            .map(|_| {
                let (store, wrong) = (store.clone(), wrong.clone());
                tokio::spawn(async move { store.verify(&wrong, 0, LOOPBACK).await })
            })
            .collect();
        let mut limited = 0;
        for guess in guesses {
            match guess.await.unwrap() {
                Err(AuthError::WrongSecret) => {}
                Err(AuthError::TooManyFailures { .. }) => limited += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            store.argon2_verifications(),
            3,
            "one argon2 run per unit of quota"
        );
        assert_eq!(limited, 13);
        // The right key from that client now waits too.
        assert!(matches!(
            store.verify(&sample().0, 0, LOOPBACK).await,
            Err(AuthError::TooManyFailures { .. })
        ));
        // Another client is not affected.
        let other: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(store.verify(&sample().0, 0, other).await.is_ok());
        // Once verified, the key works from the blocked address too (it guesses nothing), and
        // a guess from there still does not.
        assert!(store.verify(&sample().0, 0, LOOPBACK).await.is_ok());
        assert!(matches!(
            store.verify(&wrong, 0, LOOPBACK).await,
            Err(AuthError::TooManyFailures { .. })
        ));
        assert_eq!(store.argon2_verifications(), 4);
    }

    #[tokio::test]
    async fn a_queue_behind_one_key_is_answered_busy_not_held() {
        let limits = GatewayLimits {
            key_verify_timeout: Duration::from_millis(20),
            ..GatewayLimits::default()
        };
        let store = store_with(limits, None);
        let (key, id, _) = sample();
        let held = store.keys.keys[id.as_str()].verifying.lock().await;
        let got = store.verify(key, 0, LOOPBACK).await;
        assert_eq!(got, Err(AuthError::Busy));
        assert_eq!(AuthError::Busy.problem(), Problem::ServiceUnavailable);
        assert_eq!(AuthError::Internal.problem(), Problem::ServiceUnavailable);
        drop(held);
        assert!(store.verify(key, 0, LOOPBACK).await.is_ok());
        assert_eq!(store.argon2_verifications(), 1);
    }

    #[tokio::test]
    async fn expired_key_is_refused_without_argon2() {
        let store = store_with(GatewayLimits::default(), Some(1_000));
        let key = &sample().0;
        assert_eq!(
            store.verify(key, 1_000, LOOPBACK).await,
            Err(AuthError::Expired)
        );
        assert_eq!(store.argon2_verifications(), 0);
        assert!(store.verify(key, 999, LOOPBACK).await.is_ok());
    }

    #[tokio::test]
    async fn a_rotated_secret_misses_the_cache_at_once() {
        let (key, id, phc) = sample();
        let store = store();
        store.verify(key, 0, LOOPBACK).await.unwrap();
        // The same id with a new secret: the old key was verified against the old hash, so
        // the reloaded table refuses it (argon2 runs against the new hash) and the new key works.
        let secret = Alphanumeric.sample_string(&mut rand::thread_rng(), 40);
        let new_key = format!("pst_{id}_{secret}");
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let new_phc = Argon2::default()
            .hash_password(new_key.as_bytes(), &salt)
            .unwrap()
            .to_string();
        assert_ne!(new_phc, *phc);
        let rotated = KeyTable::new(&[config(id, &new_phc)]);
        let before = store.argon2_verifications();
        assert_eq!(
            store.verifier.verify(&rotated, key, 0, LOOPBACK).await,
            Err(AuthError::WrongSecret)
        );
        assert_eq!(store.argon2_verifications(), before + 1);
        assert!(store
            .verifier
            .verify(&rotated, &new_key, 0, LOOPBACK)
            .await
            .is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn argon2_runs_wait_for_one_of_a_few_slots() {
        let limits = GatewayLimits {
            max_concurrent_key_checks: 1,
            key_verify_timeout: Duration::from_millis(30),
            failed_auth_per_ip_per_minute: u32::MAX,
            ..GatewayLimits::default()
        };
        let (_, id, phc) = sample();
        let store = KeyStore::new(&[config(id, phc)], &limits);
        let slots = store.verifier.argon2_slots.read().unwrap().clone();
        let held = slots.acquire_owned().await.unwrap();
        assert_eq!(
            store.verify(&sample().0, 0, LOOPBACK).await,
            Err(AuthError::Busy),
            "no slot within key_verify_timeout"
        );
        assert_eq!(store.argon2_verifications(), 0);
        drop(held);
        assert!(store.verify(&sample().0, 0, LOOPBACK).await.is_ok());
    }

    #[test]
    fn malformed_keys_are_recognized() {
        let secret = "a".repeat(32);
        assert_eq!(
            parse_key(&format!("pst_abcd1234_{secret}")),
            Some("abcd1234")
        );
        for bad in [
            format!("pst_abc1234_{secret}"),
            format!("pst_ABCD1234_{secret}"),
            format!("pst_{}_{secret}", "a".repeat(33)),
            format!("pst_abcd1234_{}", "a".repeat(31)),
            format!("pst_abcd1234_{}", "a".repeat(65)),
            format!("pst_abcd1234_{secret}_x"),
            format!("key_abcd1234_{secret}"),
            format!("pst_abcd1234{secret}"),
        ] {
            assert_eq!(parse_key(&bad), None, "{bad}");
        }
    }

    #[test]
    fn header_extraction() {
        let key = "pst_abcd1234_".to_owned() + &"a".repeat(32);
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(*name, HeaderValue::from_str(value).unwrap());
            }
            map
        };
        let bearer = format!("Bearer {key}");
        let cases: Vec<(HeaderMap, Result<Option<&str>, AuthError>)> = vec![
            (headers(&[]), Ok(None)),
            (headers(&[("authorization", &bearer)]), Ok(Some(&key))),
            (
                headers(&[("authorization", &format!("bearer  {key} "))]),
                Ok(Some(&key)),
            ),
            (headers(&[("x-api-key", &key)]), Ok(Some(&key))),
            (
                headers(&[("authorization", &bearer), ("x-api-key", &key)]),
                Ok(Some(&key)),
            ),
            (
                headers(&[("authorization", "Basic dXNlcjpwdw==")]),
                Ok(None),
            ),
            (
                headers(&[
                    ("authorization", "Bearer origin-token"),
                    ("x-api-key", &key),
                ]),
                Ok(Some(&key)),
            ),
            (
                headers(&[("authorization", &bearer), ("x-api-key", "pst_other")]),
                Err(AuthError::ConflictingHeaders),
            ),
            (
                headers(&[("x-api-key", &key), ("x-api-key", &key)]),
                Err(AuthError::Malformed),
            ),
        ];
        for (map, expected) in cases {
            assert_eq!(KeyStore::extract(&map), expected, "{map:?}");
        }
        let mut map = HeaderMap::new();
        map.insert("x-api-key", HeaderValue::from_bytes(b"\xe9").unwrap());
        assert_eq!(KeyStore::extract(&map), Err(AuthError::Malformed));
    }

    #[test]
    fn credentials_are_stripped_but_origin_auth_kept() {
        let fields = |map: &HeaderMap| credential_fields(map).collect::<Vec<_>>();
        let mut map = HeaderMap::new();
        map.insert("x-api-key", HeaderValue::from_static("pst_x"));
        map.insert("authorization", HeaderValue::from_static("Bearer pst_x"));
        assert_eq!(fields(&map), ["x-api-key", "authorization"]);
        for spaced in [
            "Bearer  pst_abcd1234_x",
            "bearer\tpst_abcd1234_x",
            " Bearer pst_a_b ",
        ] {
            map.insert("authorization", HeaderValue::from_str(spaced).unwrap());
            assert!(authorization_is_ours(&map), "{spaced:?}");
            assert_eq!(fields(&map), ["x-api-key", "authorization"], "{spaced:?}");
        }
        map.insert("authorization", HeaderValue::from_static("Bearer origin"));
        assert_eq!(fields(&map), ["x-api-key"]);
    }

    #[test]
    fn failed_attempts_are_limited_per_client() {
        let limits = GatewayLimits {
            failed_auth_per_ip_per_minute: 3,
            ..GatewayLimits::default()
        };
        let store = store_with(limits, None);
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let neighbour: IpAddr = "2001:db8::ffff".parse().unwrap();
        for _ in 0..3 {
            store.verifier.check_ip_allowed_to_try(ip).unwrap();
            store.verifier.record_failure(ip);
        }
        store.verifier.check_ip_allowed_to_try(ip).unwrap();
        store.verifier.record_failure(neighbour); // same /64: over quota now
        let Err(AuthError::TooManyFailures { retry_after }) =
            store.verifier.check_ip_allowed_to_try(ip)
        else {
            panic!("expected TooManyFailures");
        };
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(20));
        let problem = AuthError::TooManyFailures { retry_after }.problem();
        assert!(matches!(
            problem,
            Problem::TooManyRequests {
                retry_after_secs: 1..=20
            }
        ));
        store
            .verifier
            .check_ip_allowed_to_try("2001:db9::1".parse().unwrap())
            .unwrap();
        store
            .verifier
            .check_ip_allowed_to_try("192.0.2.1".parse().unwrap())
            .unwrap();
    }

    #[test]
    fn errors_map_to_401_and_secrets_stay_out_of_debug() {
        for e in [
            AuthError::Malformed,
            AuthError::UnknownKey,
            AuthError::Expired,
            AuthError::WrongSecret,
        ] {
            assert_eq!(e.problem(), Problem::Unauthorized);
        }
        let store = store();
        let (key, _, phc) = sample();
        let shown = format!("{store:?}");
        assert!(
            !shown.contains(key.as_str()) && !shown.contains(phc.as_str()),
            "{shown}"
        );
        let bad = KeyStore::new(
            &[config("abcd1234", "not a phc")],
            &GatewayLimits::default(),
        );
        assert!(
            bad.keys.is_empty(),
            "a hash argon2 cannot parse never verifies"
        );
    }
}

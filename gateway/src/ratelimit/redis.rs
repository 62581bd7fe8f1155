//! A Redis-backed GCRA rate limiter, so that several gateways share one budget.
//!
//! # Algorithm
//!
//! Every limit is a GCRA (generic cell rate algorithm) bucket described by an *emission
//! interval* `T` (one request per `T`; rate 100/s ⇒ `T` = 10 ms) and a *burst* `b` (how many
//! requests may arrive at once, ≥ 1). Redis stores one number per key: the TAT (theoretical
//! arrival time), in microseconds since the Unix epoch by the **Redis server's** clock. With
//! `tau = T * (b - 1)` and `now` from `redis.call('TIME')`:
//!
//! ```text
//! tat      = max(stored TAT or now, now)
//! allowed  = tat - now <= tau              (equivalently: new_tat - now <= tau + T)
//! new_tat  = tat + T                       (stored only if the request is allowed)
//! remaining after charging = floor((tau - (new_tat - now - T)) / T), clamped to >= 0
//! reset    = new_tat - now                 (time until the bucket is full again)
//! retry_after (when denied) = tat - tau - now
//! ```
//!
//! Keys are written with `SET key new_tat PX ceil(reset in ms)` (at least 1 ms), so an idle
//! bucket's key disappears exactly when it would read as "full" anyway.
//!
//! # Contract
//!
//! * **One round trip per decision.** [`RedisLimiter::check`] sends one `EVALSHA` of one Lua
//!   script (falling back to `SCRIPT LOAD` + `EVALSHA` once on `NOSCRIPT`, e.g. after a Redis
//!   restart or failover; `redis::Script` does this). The script checks *all* limits of the
//!   decision atomically and charges all of them only if every one allows; a denied decision
//!   charges nothing. A key that appears twice in one decision is charged twice.
//! * **Redis server time.** `now` comes from `TIME` inside the script, so gateways with skewed
//!   clocks agree on every bucket.
//! * **Bounded.** Every decision, connecting included, is wrapped in the limiter's `timeout`;
//!   a decision never blocks a request longer than that. Past the timeout the caller gets
//!   [`RedisLimitError::Timeout`] (the script may still have run and charged on the server);
//!   a refused or dropped connection is [`RedisLimitError::Connect`], usually within
//!   microseconds.
//! * **Never panics on a reply.** Anything the script or the server returns that is not the
//!   expected shape is a [`RedisLimitError::BadReply`].
//! * **No secrets in keys.** Keys are built by the caller from key ids, lease names and IP
//!   buckets (never from an API key or other secret), prefixed `postern:rl:`. The
//!   [`Debug`] impl of [`RedisLimiter`] shows host, port and database, never the URL's
//!   username or password.
//!
//! # Connection handling and back-off
//!
//! [`RedisLimiter::new`] only parses the URL; it never connects, so it cannot fail or block
//! when Redis is down at start. The `redis::aio::ConnectionManager` is created by the first
//! decision (inside that decision's timeout; concurrent decisions wait for the same attempt),
//! and re-created by a later decision if creation failed. Once it exists it reconnects by
//! itself after the connection drops: a decision that finds the connection broken fails and
//! triggers one reconnect attempt (no retries with back-off inside the manager, so nothing
//! outlives the timeout by much), and later decisions succeed once Redis answers again.
//!
//! While Redis is down every decision therefore costs up to one connection attempt (a refused
//! connect is fast; an unreachable host costs the whole timeout). Not hammering a dead Redis is
//! the **caller's** concern: after an error it should skip Redis for a back-off interval and
//! limit locally. The manager and its internal tasks live on the Tokio runtime of the first
//! decision.
//!
//! Redis Cluster: all keys of one decision must hash to the same slot (use a `{hash tag}`),
//! since one script touches them all.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisError, Script, Value};
use tokio::sync::OnceCell;

/// One limit to check within a decision.
#[derive(Debug, Clone)]
pub struct RedisLimit {
    /// The Redis key, e.g. "postern:rl:key:abcd1234"; built by the caller.
    pub key: String,
    /// GCRA emission interval: one request per `emission` (e.g. rate 100/s => 10 ms).
    /// Sent in whole microseconds, at least 1 µs (a zero interval is treated as 1 µs).
    pub emission: Duration,
    /// Burst: how many requests may arrive at once (>= 1; 0 is treated as 1).
    pub burst: u32,
}

/// The outcome of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisDecision {
    /// Every limit allowed the request; all were charged. `remaining` and `reset` are for the
    /// tightest limit (fewest remaining): requests left in the burst and time until full.
    Allowed {
        /// Requests still allowed right now by the tightest limit.
        remaining: u32,
        /// Time until the tightest limit's bucket is full again.
        reset: Duration,
    },
    /// Limit at index `limit` (into the slice passed) refused; NOTHING was charged.
    ///
    /// When several limits refuse, `limit` is the one that frees up last (largest
    /// `retry_after`; the lowest index on a tie), so retrying earlier is certainly useless.
    Denied {
        /// Index into the `limits` slice of the refusing limit.
        limit: usize,
        /// Time until that limit would allow one request.
        retry_after: Duration,
        /// Time until that limit's bucket is full again.
        reset: Duration,
    },
}

/// Why a decision could not be made. The caller falls back to local limiting.
#[derive(Debug, thiserror::Error)]
pub enum RedisLimitError {
    /// The decision (connecting included) did not finish within the limiter's timeout.
    #[error("redis rate-limit decision timed out")]
    Timeout,
    /// Redis answered with an error (e.g. the script failed on a key of the wrong type), or
    /// the command failed in some other way.
    #[error("redis rate-limit command failed: {0}")]
    Redis(#[source] RedisError),
    /// The script's reply was not of the expected shape.
    #[error("unexpected reply from redis rate-limit script: {0}")]
    BadReply(String),
    /// The connection to Redis could not be established, was refused or dropped (Redis down or
    /// restarting), or the URL was invalid.
    #[error("redis connection: {0}")]
    Connect(#[source] RedisError),
}

/// Largest emission interval sent to Redis (~12.7 days), so the script's arithmetic stays
/// exact in Lua's doubles.
const MAX_EMISSION_US: u64 = 1 << 40;
/// Largest `tau` sent to Redis (~35 years); `now + tau + emission` stays below 2^53.
const MAX_TAU_US: u64 = 1 << 50;

/// KEYS[i] = limit key; ARGV[2i-1] = emission (µs), ARGV[2i] = tau (µs).
/// Reply: {1, remaining, reset_us} or {0, index (1-based), retry_after_us, reset_us}.
const SCRIPT: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local pending = {}
local best_rem, best_reset = nil, 0
local denied, denied_retry, denied_reset = 0, -1, 0
for i = 1, n do
  local key = KEYS[i]
  local emission = tonumber(ARGV[2 * i - 1])
  local tau = tonumber(ARGV[2 * i])
  local tat = pending[key]
  if tat == nil then
    tat = tonumber(redis.call('GET', key))
  end
  if tat == nil or tat < now then tat = now end
  if tat - now > tau then
    local retry = tat - tau - now
    if retry > denied_retry then
      denied, denied_retry, denied_reset = i, retry, tat - now
    end
  else
    local new_tat = tat + emission
    pending[key] = new_tat
    local rem = math.floor((tau - (new_tat - now - emission)) / emission)
    if rem < 0 then rem = 0 end
    local reset = new_tat - now
    if best_rem == nil or rem < best_rem or (rem == best_rem and reset > best_reset) then
      best_rem, best_reset = rem, reset
    end
  end
end
if denied > 0 then
  return {0, denied, denied_retry, denied_reset}
end
local written = {}
for i = 1, n do
  local key = KEYS[i]
  if not written[key] then
    written[key] = true
    local new_tat = pending[key]
    local px = math.ceil((new_tat - now) / 1000)
    if px < 1 then px = 1 end
    redis.call('SET', key, string.format('%.0f', new_tat), 'PX', string.format('%.0f', px))
  end
end
return {1, best_rem, best_reset}
"#;

/// A Redis-backed GCRA limiter shared by several gateways. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct RedisLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// `host:port/db`, for Debug and logs: no username or password.
    target: String,
    timeout: Duration,
    manager: OnceCell<ConnectionManager>,
    script: Script,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("target", &self.inner.target)
            .field("timeout", &self.inner.timeout)
            .field("connected", &self.inner.manager.initialized())
            .finish()
    }
}

impl RedisLimiter {
    /// Parses the URL and starts a `redis::aio::ConnectionManager` in the background; must not
    /// fail or block if Redis is down at start (the first decisions then return errors and the
    /// caller falls back to local limiting). `timeout` bounds every decision (connect included).
    ///
    /// "In the background" means lazily: nothing connects here (this need not run inside a
    /// Tokio runtime); the first [`check`](Self::check) creates the manager. An invalid URL is
    /// [`RedisLimitError::Connect`] (the error never contains the URL).
    pub fn new(url: &str, timeout: Duration) -> Result<Self, RedisLimitError> {
        let client = Client::open(url).map_err(RedisLimitError::Connect)?;
        let info = client.get_connection_info();
        let target = format!("{}/{}", info.addr, info.redis.db);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                target,
                timeout,
                manager: OnceCell::new(),
                script: Script::new(SCRIPT),
            }),
        })
    }

    /// One decision: ONE round trip (EVALSHA of one Lua script, falling back to EVAL/load on
    /// NOSCRIPT — `redis::Script` does this), checking all `limits` atomically against Redis
    /// server time (`redis.call('TIME')`, so gateways with skewed clocks agree), charging all of
    /// them only if all allow. Bounded by `timeout`.
    ///
    /// An empty `limits` is allowed without asking Redis (`remaining: u32::MAX`, `reset: 0`).
    pub async fn check(&self, limits: &[RedisLimit]) -> Result<RedisDecision, RedisLimitError> {
        if limits.is_empty() {
            return Ok(RedisDecision::Allowed {
                remaining: u32::MAX,
                reset: Duration::ZERO,
            });
        }
        match tokio::time::timeout(self.inner.timeout, self.check_unbounded(limits)).await {
            Ok(result) => result,
            Err(_) => Err(RedisLimitError::Timeout),
        }
    }

    async fn check_unbounded(
        &self,
        limits: &[RedisLimit],
    ) -> Result<RedisDecision, RedisLimitError> {
        let mut conn = self.manager().await?.clone();
        let mut invocation = self.inner.script.prepare_invoke();
        for limit in limits {
            let (emission, tau) = gcra_params(limit);
            invocation.key(limit.key.as_str()).arg(emission).arg(tau);
        }
        let reply: Value = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| classify(e, RedisLimitError::Redis))?;
        parse_reply(&reply, limits.len())
    }

    async fn manager(&self) -> Result<&ConnectionManager, RedisLimitError> {
        let inner = &*self.inner;
        inner
            .manager
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(inner.timeout)
                    .set_response_timeout(inner.timeout)
                    .set_number_of_retries(0);
                let manager = ConnectionManager::new_with_config(inner.client.clone(), config)
                    .await
                    .map_err(|e| classify(e, RedisLimitError::Connect))?;
                tracing::debug!(target = %inner.target, "connected to redis for rate limiting");
                Ok(manager)
            })
            .await
    }
}

/// Timeouts of the connection (connect or response, both set to the decision's timeout) are
/// [`RedisLimitError::Timeout`] like the decision's own; refused or dropped connections are
/// [`RedisLimitError::Connect`]; anything else is `other`.
fn classify(e: RedisError, other: fn(RedisError) -> RedisLimitError) -> RedisLimitError {
    if e.is_timeout() {
        RedisLimitError::Timeout
    } else if e.is_connection_refusal() || e.is_connection_dropped() {
        RedisLimitError::Connect(e)
    } else {
        other(e)
    }
}

/// `(emission_us, tau_us)` for one limit, clamped so the script's arithmetic stays exact.
fn gcra_params(limit: &RedisLimit) -> (u64, u64) {
    let emission = u64::try_from(limit.emission.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_EMISSION_US);
    let tau = emission
        .saturating_mul(u64::from(limit.burst.max(1) - 1))
        .min(MAX_TAU_US);
    (emission, tau)
}

fn parse_reply(reply: &Value, n: usize) -> Result<RedisDecision, RedisLimitError> {
    let items = match reply {
        Value::Array(items) => items,
        other => {
            return Err(RedisLimitError::BadReply(format!(
                "not an array: {other:?}"
            )))
        }
    };
    let mut ints = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::Int(i) => ints.push(*i),
            other => {
                return Err(RedisLimitError::BadReply(format!(
                    "not an integer: {other:?}"
                )))
            }
        }
    }
    let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    match ints.as_slice() {
        [1, remaining, reset] => Ok(RedisDecision::Allowed {
            remaining: u32::try_from((*remaining).max(0)).unwrap_or(u32::MAX),
            reset: micros(*reset),
        }),
        [0, index, retry_after, reset] => {
            let limit = usize::try_from(*index)
                .ok()
                .filter(|i| (1..=n).contains(i))
                .ok_or_else(|| {
                    RedisLimitError::BadReply(format!("limit index {index} out of 1..={n}"))
                })?;
            Ok(RedisDecision::Denied {
                limit: limit - 1,
                retry_after: micros(*retry_after),
                reset: micros(*reset),
            })
        }
        other => Err(RedisLimitError::BadReply(format!(
            "unexpected reply {other:?}"
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    /// A redis-server of our own on a free loopback port (like `postern_tests::redis`, which
    /// this crate cannot depend on).
    struct Server {
        port: u16,
        child: Child,
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    impl Server {
        fn start() -> Self {
            // A free port can be taken by another test before redis binds it: retry.
            let mut last = String::new();
            for _ in 0..5 {
                match Self::try_start_on(free_port()) {
                    Ok(s) => return s,
                    Err(e) => last = e,
                }
            }
            panic!("redis-server did not start: {last}");
        }

        fn start_on(port: u16) -> Self {
            Self::try_start_on(port).unwrap_or_else(|e| panic!("redis-server did not start: {e}"))
        }

        fn try_start_on(port: u16) -> Result<Self, String> {
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run redis-server ({e}): install redis-server; .ci/run does")
                });
            let mut server = Self { port, child };
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(Some(status)) = server.child.try_wait() {
                    return Err(format!("redis-server on port {port} exited: {status}"));
                }
                // Ours, not another test's server that holds the port.
                if server_pid(port) == Some(server.child.id()) {
                    return Ok(server);
                }
                if Instant::now() >= deadline {
                    server.stop();
                    return Err(format!("redis-server on port {port} did not answer in 5 s"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/", self.port)
        }

        fn stop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop();
        }
    }

    /// The `process_id` the server on `port` reports in `INFO server`, over raw TCP.
    fn server_pid(port: u16) -> Option<u32> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .ok()?;
        stream.write_all(b"INFO server\r\n").ok()?;
        let mut reader = BufReader::new(stream);
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let len: usize = header.strip_prefix('$')?.trim_end().parse().ok()?;
        let mut body = vec![0u8; len.min(1 << 20)];
        reader.read_exact(&mut body).ok()?;
        String::from_utf8_lossy(&body)
            .lines()
            .find_map(|line| line.strip_prefix("process_id:"))
            .and_then(|pid| pid.trim().parse().ok())
    }

    const TIMEOUT: Duration = Duration::from_millis(500);

    fn limit(key: &str, emission_ms: u64, burst: u32) -> RedisLimit {
        RedisLimit {
            key: key.to_owned(),
            emission: Duration::from_millis(emission_ms),
            burst,
        }
    }

    fn allowed(d: &RedisDecision) -> Option<u32> {
        match d {
            RedisDecision::Allowed { remaining, .. } => Some(*remaining),
            RedisDecision::Denied { .. } => None,
        }
    }

    #[test]
    fn params_are_clamped() {
        assert_eq!(gcra_params(&limit("k", 100, 3)), (100_000, 200_000));
        assert_eq!(gcra_params(&limit("k", 100, 1)), (100_000, 0));
        assert_eq!(gcra_params(&limit("k", 100, 0)), (100_000, 0));
        assert_eq!(gcra_params(&limit("k", 0, 5)), (1, 4));
        let huge = RedisLimit {
            key: "k".into(),
            emission: Duration::MAX,
            burst: u32::MAX,
        };
        assert_eq!(gcra_params(&huge), (MAX_EMISSION_US, MAX_TAU_US));
    }

    #[test]
    fn bad_replies_are_errors_not_panics() {
        let bad = [
            Value::Nil,
            Value::Int(1),
            Value::Array(vec![]),
            Value::Array(vec![Value::Int(1), Value::Int(2)]),
            Value::Array(vec![Value::Int(2), Value::Int(2), Value::Int(3)]),
            Value::Array(vec![Value::Int(1), Value::Nil, Value::Int(3)]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(0),
                Value::Int(1),
                Value::Int(1),
            ]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(3),
                Value::Int(1),
                Value::Int(1),
            ]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(-1),
                Value::Int(1),
                Value::Int(1),
            ]),
        ];
        for v in &bad {
            assert!(
                matches!(parse_reply(v, 2), Err(RedisLimitError::BadReply(_))),
                "{v:?}"
            );
        }
        let odd = Value::Array(vec![Value::Int(1), Value::Int(-5), Value::Int(-7)]);
        assert_eq!(
            parse_reply(&odd, 1).unwrap(),
            RedisDecision::Allowed {
                remaining: 0,
                reset: Duration::ZERO
            }
        );
    }

    #[test]
    fn debug_hides_password() {
        let l = RedisLimiter::new("redis://user:s3cret@127.0.0.1:6390/2", TIMEOUT).unwrap();
        let dbg = format!("{l:?}");
        assert!(!dbg.contains("s3cret") && !dbg.contains("user"), "{dbg}");
        assert!(dbg.contains("127.0.0.1:6390/2"), "{dbg}");
        let err = RedisLimiter::new("http://user:s3cret@x/", TIMEOUT).unwrap_err();
        assert!(!format!("{err} {err:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn empty_decision_needs_no_redis() {
        let l = RedisLimiter::new("redis://127.0.0.1:1/", TIMEOUT).unwrap();
        assert!(matches!(
            l.check(&[]).await.unwrap(),
            RedisDecision::Allowed { .. }
        ));
    }

    #[tokio::test]
    async fn gcra_burst_then_deny_then_recover() {
        let server = Server::start();
        let l = RedisLimiter::new(&server.url(), TIMEOUT).unwrap();
        let limits = [limit("postern:rl:test:burst", 100, 3)];
        let start = Instant::now();
        for expected in [2, 1, 0] {
            match l.check(&limits).await.unwrap() {
                RedisDecision::Allowed { remaining, reset } => {
                    assert_eq!(remaining, expected);
                    // reset = new_tat - now: (3 - expected) * 100 ms minus the time elapsed.
                    let full = Duration::from_millis(100 * u64::from(3 - expected));
                    assert!(
                        reset <= full && reset + start.elapsed() >= full,
                        "{reset:?}"
                    );
                }
                d => panic!("expected allowed, got {d:?}"),
            }
        }
        let retry_after = match l.check(&limits).await.unwrap() {
            RedisDecision::Denied {
                limit,
                retry_after,
                reset,
            } => {
                assert_eq!(limit, 0);
                let elapsed = start.elapsed();
                assert!(retry_after <= Duration::from_millis(100), "{retry_after:?}");
                assert!(retry_after + elapsed >= Duration::from_millis(100));
                assert!(
                    reset <= Duration::from_millis(300)
                        && reset + elapsed >= Duration::from_millis(300)
                );
                retry_after
            }
            d => panic!("expected denied, got {d:?}"),
        };
        // Denied again right away: the denial charged nothing, so retry_after did not grow.
        match l.check(&limits).await.unwrap() {
            RedisDecision::Denied { retry_after: r, .. } => assert!(r <= retry_after),
            d => panic!("expected denied, got {d:?}"),
        }
        tokio::time::sleep(retry_after).await;
        assert_eq!(allowed(&l.check(&limits).await.unwrap()), Some(0));
        assert!(allowed(&l.check(&limits).await.unwrap()).is_none());
    }

    #[tokio::test]
    async fn key_expires_when_bucket_is_full() {
        let server = Server::start();
        let l = RedisLimiter::new(&server.url(), TIMEOUT).unwrap();
        let limits = [limit("postern:rl:test:expiry", 20, 2)];
        assert_eq!(allowed(&l.check(&limits).await.unwrap()), Some(1));
        assert_eq!(allowed(&l.check(&limits).await.unwrap()), Some(0));
        let mut conn = l.manager().await.unwrap().clone();
        let pttl: i64 = ::redis::cmd("PTTL")
            .arg("postern:rl:test:expiry")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((1..=40).contains(&pttl), "pttl {pttl}");
        tokio::time::sleep(Duration::from_millis(60)).await;
        let exists: i64 = ::redis::cmd("EXISTS")
            .arg("postern:rl:test:expiry")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(exists, 0);
        assert_eq!(allowed(&l.check(&limits).await.unwrap()), Some(1));
    }

    #[tokio::test]
    async fn denied_decision_charges_nothing() {
        let server = Server::start();
        let l = RedisLimiter::new(&server.url(), TIMEOUT).unwrap();
        let wide = limit("postern:rl:test:wide", 100, 10);
        let narrow = limit("postern:rl:test:narrow", 10_000, 1);
        // Use up the narrow limit alone.
        assert_eq!(
            allowed(&l.check(std::slice::from_ref(&narrow)).await.unwrap()),
            Some(0)
        );
        // Both together: the narrow one refuses, so the wide one is not charged either.
        for _ in 0..5 {
            match l.check(&[wide.clone(), narrow.clone()]).await.unwrap() {
                RedisDecision::Denied {
                    limit, retry_after, ..
                } => {
                    assert_eq!(limit, 1);
                    assert!(retry_after > Duration::from_millis(9_000));
                }
                d => panic!("expected denied, got {d:?}"),
            }
        }
        // The wide limit is untouched: its first charge leaves 9.
        assert_eq!(
            allowed(&l.check(std::slice::from_ref(&wide)).await.unwrap()),
            Some(9)
        );
    }

    #[tokio::test]
    async fn allowed_reports_tightest_and_charges_all() {
        let server = Server::start();
        let l = RedisLimiter::new(&server.url(), TIMEOUT).unwrap();
        let a = limit("postern:rl:test:a", 100, 5);
        let b = limit("postern:rl:test:b", 100, 3);
        assert_eq!(
            allowed(&l.check(&[a.clone(), b.clone()]).await.unwrap()),
            Some(2)
        );
        assert_eq!(
            allowed(&l.check(std::slice::from_ref(&a)).await.unwrap()),
            Some(3)
        );
        assert_eq!(
            allowed(&l.check(std::slice::from_ref(&b)).await.unwrap()),
            Some(1)
        );
        // The same key twice in one decision is charged twice.
        let c = limit("postern:rl:test:c", 100, 3);
        assert_eq!(
            allowed(&l.check(&[c.clone(), c.clone()]).await.unwrap()),
            Some(1)
        );
        match l.check(&[c.clone(), c.clone()]).await.unwrap() {
            RedisDecision::Denied { limit, .. } => assert_eq!(limit, 1),
            d => panic!("expected denied, got {d:?}"),
        }
        assert_eq!(allowed(&l.check(&[c]).await.unwrap()), Some(0));
    }

    #[tokio::test]
    async fn survives_script_flush() {
        let server = Server::start();
        let l = RedisLimiter::new(&server.url(), TIMEOUT).unwrap();
        let limits = [limit("postern:rl:test:flush", 100, 3)];
        assert_eq!(allowed(&l.check(&limits).await.unwrap()), Some(2));
        let mut conn = l.manager().await.unwrap().clone();
        let _: () = ::redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(allowed(&l.check(&limits).await.unwrap()), Some(1));
    }

    #[tokio::test]
    async fn wrong_type_key_is_an_error() {
        let server = Server::start();
        let l = RedisLimiter::new(&server.url(), TIMEOUT).unwrap();
        let mut conn = l.manager().await.unwrap().clone();
        let _: () = ::redis::cmd("HSET")
            .arg("postern:rl:test:hash")
            .arg("f")
            .arg("v")
            .query_async(&mut conn)
            .await
            .unwrap();
        let err = l
            .check(&[limit("postern:rl:test:hash", 100, 3)])
            .await
            .unwrap_err();
        assert!(matches!(err, RedisLimitError::Redis(_)), "{err:?}");
    }

    #[tokio::test]
    async fn redis_down_at_start_then_up() {
        let port = free_port();
        let l = RedisLimiter::new(&format!("redis://127.0.0.1:{port}/"), TIMEOUT).unwrap();
        let limits = [limit("postern:rl:test:late", 100, 3)];
        let t = Instant::now();
        let err = l.check(&limits).await.unwrap_err();
        assert!(t.elapsed() < TIMEOUT + Duration::from_millis(100));
        assert!(
            matches!(err, RedisLimitError::Connect(_) | RedisLimitError::Timeout),
            "{err:?}"
        );
        let _server = Server::start_on(port);
        assert_eq!(allowed(&l.check(&limits).await.unwrap()), Some(2));
    }

    #[tokio::test]
    async fn redis_restart_errors_within_timeout_then_recovers() {
        let mut server = Server::start();
        let port = server.port;
        let l = RedisLimiter::new(&server.url(), TIMEOUT).unwrap();
        let limits = [limit("postern:rl:test:restart", 1, 1000)];
        assert!(allowed(&l.check(&limits).await.unwrap()).is_some());
        server.stop();
        // A few decisions while Redis is down: each fails, within the timeout.
        for _ in 0..3 {
            let t = Instant::now();
            let r = l.check(&limits).await;
            let took = t.elapsed();
            eprintln!("redis down: {:?} after {took:?}", r.as_ref().err());
            assert!(matches!(r, Err(RedisLimitError::Connect(_))), "{r:?}");
            assert!(took < TIMEOUT + Duration::from_millis(100), "{took:?}");
        }
        let _server = Server::start_on(port);
        let t = Instant::now();
        loop {
            match l.check(&limits).await {
                Ok(d) => {
                    assert!(allowed(&d).is_some());
                    break;
                }
                Err(e) => {
                    assert!(t.elapsed() < Duration::from_secs(5), "no recovery: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        eprintln!("recovered {:?} after restart", t.elapsed());
    }

    #[tokio::test]
    async fn hung_redis_times_out_then_recovers() {
        let server = Server::start();
        let l = RedisLimiter::new(&server.url(), TIMEOUT).unwrap();
        let limits = [limit("postern:rl:test:hung", 1, 1000)];
        assert!(allowed(&l.check(&limits).await.unwrap()).is_some());
        let signal = |sig: &str| {
            let status = Command::new("kill")
                .args([sig, &server.child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        };
        signal("-STOP");
        let t = Instant::now();
        let r = l.check(&limits).await;
        let took = t.elapsed();
        signal("-CONT");
        eprintln!("redis hung: {:?} after {took:?}", r.as_ref().err());
        assert!(matches!(r, Err(RedisLimitError::Timeout)), "{r:?}");
        assert!(
            took >= TIMEOUT && took < TIMEOUT + Duration::from_millis(100),
            "{took:?}"
        );
        let t = Instant::now();
        while l.check(&limits).await.is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "no recovery after SIGCONT"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn decision_latency() {
        let server = Server::start();
        let l = RedisLimiter::new(&server.url(), TIMEOUT).unwrap();
        let limits = [
            limit("postern:rl:test:lat:global", 1, 1_000_000),
            limit("postern:rl:test:lat:key", 1, 1_000_000),
            limit("postern:rl:test:lat:lease", 1, 1_000_000),
        ];
        l.check(&limits).await.unwrap();
        let mut samples = Vec::with_capacity(2000);
        for _ in 0..2000 {
            let t = Instant::now();
            l.check(&limits).await.unwrap();
            samples.push(t.elapsed());
        }
        samples.sort();
        let p50 = samples[samples.len() / 2];
        let p99 = samples[samples.len() * 99 / 100];
        eprintln!("decision latency over 3 limits: p50 {p50:?} p99 {p99:?}");
        assert!(p99 < TIMEOUT);
    }
}

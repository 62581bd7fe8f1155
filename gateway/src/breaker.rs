//! The circuit breaker, one per lease: when a lease's service keeps failing, stop sending it
//! requests for a while, answer them at once, and probe before trusting it again.
//!
//! * **Closed** (requests flow): opens after `consecutive_failures` failures in a row, or when
//!   at least `min_requests` requests finished in the last `window` and `failure_ratio` of
//!   them failed. The window is ten buckets of `window / 10`, so it rolls in steps.
//! * **Open**: every request is refused with 503 problem+json (`circuit-open`) and
//!   `Retry-After`, before any tunnel work. After `open_for` the next request finds it
//!   half-open.
//! * **Half-open**: up to `half_open_probes` requests go through at once; the others are
//!   refused as when open. A probe's success closes the breaker (counts start again), a
//!   failure opens it for another `open_for`.
//!
//! A failure is what the request path reports as one ([`Admission::record`]): a tunnel connect
//! error, an upstream timeout, or the agent's 502/504 (the origin is down). A client that goes
//! away is neither a success nor a failure. A disabled breaker admits everything and records
//! nothing.
//!
//! Breakers live in the runtime (state survives reloads); a reload that changes a lease's
//! settings applies them to its breaker from its next decision on. Each state change is a log
//! event (warn when opening) and moves `postern_breaker_state{lease}`; every refusal counts in
//! `postern_breaker_rejections_total{lease}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use postern_config::BreakerConfig;

use crate::access_log::Outcome;
use crate::metrics::LeaseMetrics;
use crate::problem::{Problem, Refusal};

/// Buckets of the rolling window.
const BUCKETS: usize = 10;

/// The breakers of every lease.
#[derive(Debug, Default)]
pub struct Breakers {
    by_lease: RwLock<HashMap<String, Arc<Breaker>>>,
}

impl Breakers {
    /// The breaker of `lease`, made on first use, with `settings` (from the snapshot) in force.
    pub fn get(
        &self,
        lease: &str,
        settings: &BreakerConfig,
        metrics: &Arc<LeaseMetrics>,
    ) -> Arc<Breaker> {
        if let Some(found) = self.by_lease.read().get(lease) {
            found.configure(settings);
            return Arc::clone(found);
        }
        let mut map = self.by_lease.write();
        let breaker = map.entry(lease.to_owned()).or_insert_with(|| {
            Arc::new(Breaker {
                state: Mutex::new(State::new(settings.clone())),
                metrics: Arc::clone(metrics),
            })
        });
        breaker.configure(settings);
        Arc::clone(breaker)
    }

    /// Forgets the breakers of leases no longer served (after a reload).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.by_lease.write().retain(|lease, _| keep(lease));
    }
}

/// One lease's breaker.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    metrics: Arc<LeaseMetrics>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probes: u32 },
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open { .. } => "open",
            Self::HalfOpen { .. } => "half_open",
        }
    }

    fn gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open { .. } => 1,
            Self::HalfOpen { .. } => 2,
        }
    }
}

#[derive(Debug)]
struct State {
    settings: BreakerConfig,
    phase: Phase,
    consecutive_failures: u32,
    window: Window,
}

impl State {
    fn new(settings: BreakerConfig) -> Self {
        Self {
            window: Window::new(settings.window),
            settings,
            phase: Phase::Closed,
            consecutive_failures: 0,
        }
    }
}

/// Finished requests and failures over the last `window`, in [`BUCKETS`] steps.
#[derive(Debug)]
struct Window {
    start: Instant,
    bucket: Duration,
    /// (bucket number since `start`, requests, failures)
    slots: [(u64, u32, u32); BUCKETS],
}

impl Window {
    fn new(window: Duration) -> Self {
        Self {
            start: Instant::now(),
            bucket: (window / BUCKETS as u32).max(Duration::from_millis(1)),
            slots: [(u64::MAX, 0, 0); BUCKETS],
        }
    }

    fn now_bucket(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        u64::try_from(elapsed / self.bucket.as_nanos().max(1)).unwrap_or(u64::MAX - 1)
    }

    fn record(&mut self, now: Instant, failed: bool) {
        let n = self.now_bucket(now);
        let slot = &mut self.slots[(n % BUCKETS as u64) as usize];
        if slot.0 != n {
            *slot = (n, 0, 0);
        }
        slot.1 += 1;
        slot.2 += u32::from(failed);
    }

    /// (requests, failures) in the window ending now.
    fn totals(&self, now: Instant) -> (u32, u32) {
        let n = self.now_bucket(now);
        self.slots
            .iter()
            .filter(|(b, _, _)| *b != u64::MAX && *b <= n && n - *b < BUCKETS as u64)
            .fold((0, 0), |(r, f), (_, req, fail)| (r + req, f + fail))
    }
}

/// Leave to send one request through a breaker; report how it went with [`Self::record`].
/// Dropped unrecorded (the client went away), it counts as neither success nor failure.
#[derive(Debug)]
pub struct Admission {
    breaker: Option<Arc<Breaker>>,
    probe: bool,
}

impl Admission {
    /// An admission that records nothing (no breaker applies).
    pub fn none() -> Self {
        Self {
            breaker: None,
            probe: false,
        }
    }

    /// Records the request's result.
    pub fn record(mut self, failed: bool) {
        if let Some(breaker) = self.breaker.take() {
            breaker.record(failed, self.probe);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(breaker) = self.breaker.take() {
            if self.probe {
                breaker.release_probe();
            }
        }
    }
}

impl Breaker {
    fn configure(&self, settings: &BreakerConfig) {
        let mut state = self.state.lock();
        if state.settings != *settings {
            if state.settings.window != settings.window {
                state.window = Window::new(settings.window);
            }
            state.settings = settings.clone();
        }
    }

    /// Whether a request may go to the lease now; a refusal is the 503 to answer with.
    pub fn admit(self: &Arc<Self>) -> Result<Admission, Refusal> {
        let mut state = self.state.lock();
        if !state.settings.enabled {
            return Ok(Admission::none());
        }
        let now = Instant::now();
        let probe = match state.phase {
            Phase::Closed => false,
            Phase::Open { until } if now < until => {
                return Err(self.refuse(until - now));
            }
            Phase::Open { .. } => {
                self.transition(&mut state, Phase::HalfOpen { probes: 1 });
                true
            }
            Phase::HalfOpen { probes } if probes < state.settings.half_open_probes => {
                state.phase = Phase::HalfOpen { probes: probes + 1 };
                true
            }
            Phase::HalfOpen { .. } => return Err(self.refuse(Duration::from_secs(1))),
        };
        Ok(Admission {
            breaker: Some(Arc::clone(self)),
            probe,
        })
    }

    fn refuse(&self, retry_after: Duration) -> Refusal {
        self.metrics.breaker_rejections.inc();
        let retry_after_secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        Refusal::new(
            Problem::CircuitOpen {
                retry_after_secs: retry_after_secs.max(1),
            },
            Outcome::BreakerOpen,
        )
    }

    fn record(&self, failed: bool, probe: bool) {
        let mut state = self.state.lock();
        let now = Instant::now();
        if probe {
            if let Phase::HalfOpen { probes } = state.phase {
                state.phase = Phase::HalfOpen {
                    probes: probes.saturating_sub(1),
                };
            }
        }
        state.window.record(now, failed);
        if !failed {
            state.consecutive_failures = 0;
            if matches!(state.phase, Phase::HalfOpen { .. }) {
                state.window = Window::new(state.settings.window);
                self.transition(&mut state, Phase::Closed);
            }
            return;
        }
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        let open = Phase::Open {
            until: now + state.settings.open_for,
        };
        match state.phase {
            Phase::HalfOpen { .. } => self.transition(&mut state, open),
            Phase::Closed => {
                let (requests, failures) = state.window.totals(now);
                let s = &state.settings;
                let by_count = state.consecutive_failures >= s.consecutive_failures;
                let by_ratio = requests >= s.min_requests
                    && f64::from(failures) >= s.failure_ratio * f64::from(requests);
                if by_count || by_ratio {
                    self.transition(&mut state, open);
                }
            }
            // A request admitted before the breaker opened: already open.
            Phase::Open { .. } => {}
        }
    }

    fn release_probe(&self) {
        let mut state = self.state.lock();
        if let Phase::HalfOpen { probes } = state.phase {
            state.phase = Phase::HalfOpen {
                probes: probes.saturating_sub(1),
            };
        }
    }

    fn transition(&self, state: &mut State, to: Phase) {
        let from = state.phase;
        state.phase = to;
        self.metrics.breaker_state.set(to.gauge());
        self.metrics.count_transition(to.name());
        let lease = self.metrics.name.as_str();
        match to {
            Phase::Open { .. } => tracing::warn!(
                lease,
                from = from.name(),
                consecutive_failures = state.consecutive_failures,
                open_for = ?state.settings.open_for,
                "circuit breaker opened: requests to this lease are refused (503) for now"
            ),
            _ => tracing::info!(lease, from = from.name(), to = to.name(), "circuit breaker"),
        }
        if to == Phase::Closed {
            state.consecutive_failures = 0;
        }
    }

    /// The state's name (`closed`, `open`, `half_open`), for tests and logs.
    pub fn state_name(&self) -> &'static str {
        self.state.lock().phase.name()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn settings() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            min_requests: 10,
            failure_ratio: 0.5,
            open_for: Duration::from_millis(100),
            half_open_probes: 1,
            ..BreakerConfig::default()
        }
    }

    fn breaker(s: &BreakerConfig) -> (Arc<Breaker>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let breakers = Breakers::default();
        (breakers.get("web", s, &metrics.lease("web")), metrics)
    }

    #[test]
    fn opens_after_consecutive_failures_and_refuses_fast() {
        let (b, metrics) = breaker(&settings());
        for _ in 0..3 {
            b.admit().unwrap().record(true);
        }
        assert_eq!(b.state_name(), "open");
        let refusal = b.admit().unwrap_err();
        assert_eq!(refusal.problem.status(), 503);
        assert_eq!(refusal.outcome, Outcome::BreakerOpen);
        let text = metrics.render();
        assert!(
            text.contains("postern_breaker_state{lease=\"web\"} 1"),
            "{text}"
        );
        assert!(text.contains("postern_breaker_rejections_total{lease=\"web\"} 1"));
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let (b, _) = breaker(&settings());
        for _ in 0..5 {
            b.admit().unwrap().record(true);
            b.admit().unwrap().record(false);
        }
        assert_eq!(b.state_name(), "closed");
    }

    #[test]
    fn opens_on_the_error_ratio_over_the_window() {
        let s = BreakerConfig {
            consecutive_failures: 100,
            ..settings()
        };
        let (b, _) = breaker(&s);
        for i in 0..9 {
            b.admit().unwrap().record(i % 2 == 0);
        }
        assert_eq!(b.state_name(), "closed", "below min_requests");
        b.admit().unwrap().record(true);
        assert_eq!(b.state_name(), "open");
    }

    #[test]
    fn half_open_admits_bounded_probes_then_closes_on_success() {
        let (b, _) = breaker(&settings());
        for _ in 0..3 {
            b.admit().unwrap().record(true);
        }
        std::thread::sleep(Duration::from_millis(120));
        let probe = b.admit().unwrap();
        assert_eq!(b.state_name(), "half_open");
        assert!(b.admit().is_err(), "one probe at a time");
        probe.record(false);
        assert_eq!(b.state_name(), "closed");
        b.admit().unwrap().record(false);
    }

    #[test]
    fn a_failed_probe_opens_again_and_an_abandoned_one_frees_its_slot() {
        let (b, _) = breaker(&settings());
        for _ in 0..3 {
            b.admit().unwrap().record(true);
        }
        std::thread::sleep(Duration::from_millis(120));
        drop(b.admit().unwrap());
        assert_eq!(b.state_name(), "half_open");
        b.admit().unwrap().record(true);
        assert_eq!(b.state_name(), "open");
    }

    #[test]
    fn disabled_admits_everything() {
        let s = BreakerConfig {
            enabled: false,
            ..settings()
        };
        let (b, _) = breaker(&s);
        for _ in 0..10 {
            b.admit().unwrap().record(true);
        }
        assert_eq!(b.state_name(), "closed");
    }
}

//! Exponential backoff with full jitter for reconnects: the n-th wait is uniform in
//! `[initial, min(max, initial * 2^n)]`, so a fleet of agents does not reconnect in lockstep
//! after a relay restart.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The next wait; grows with every call until [`Backoff::reset`].
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let lo = self.initial.as_millis() as u64;
        let hi = (ceiling.as_millis() as u64).max(lo);
        Duration::from_millis(rand::thread_rng().gen_range(lo..=hi))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_bounds_and_grow() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(100));
        for _ in 0..30 {
            let d = b.next_delay();
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_secs(2));
        }
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}

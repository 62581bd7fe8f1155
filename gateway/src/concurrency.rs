//! Requests in flight per lease: at most `max_in_flight` at once (SSE and WebSocket streams
//! included, for as long as they are open); one more waits up to `in_flight_queue_timeout` for
//! a slot, then is refused with 503 (`lease-overloaded`). A lease whose limit a reload changes
//! gets a new set of slots: requests already holding one of the old slots finish on it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use prometheus::{IntCounter, IntGauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::access_log::Outcome;
use crate::metrics::LeaseMetrics;
use crate::problem::{Problem, Refusal};

/// The in-flight slots of every lease.
#[derive(Debug, Default)]
pub struct LeaseConcurrency {
    by_lease: RwLock<HashMap<String, (usize, Arc<Semaphore>)>>,
}

/// One request's slot; given back when dropped (the request's context ends).
#[derive(Debug)]
pub struct InFlight {
    _permit: OwnedSemaphorePermit,
    gauge: IntGauge,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl LeaseConcurrency {
    /// The slots of `lease` (at most `max` in flight), made on first use; resolved once per
    /// snapshot.
    pub fn slots(&self, lease: &str, max: usize) -> Arc<Semaphore> {
        let max = max.min(Semaphore::MAX_PERMITS);
        if let Some((m, slots)) = self.by_lease.read().get(lease) {
            if *m == max {
                return Arc::clone(slots);
            }
        }
        let mut map = self.by_lease.write();
        let entry = map
            .entry(lease.to_owned())
            .or_insert_with(|| (max, Arc::new(Semaphore::new(max))));
        if entry.0 != max {
            *entry = (max, Arc::new(Semaphore::new(max)));
        }
        Arc::clone(&entry.1)
    }

    /// Forgets the slots of leases no longer served (after a reload).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.by_lease.write().retain(|lease, _| keep(lease));
    }
}

/// Takes one of `slots`, waiting at most `wait`.
pub async fn acquire(
    slots: &Arc<Semaphore>,
    wait: Duration,
    metrics: &LeaseMetrics,
) -> Result<InFlight, Refusal> {
    let permit = match Arc::clone(slots).try_acquire_owned() {
        Ok(permit) => Ok(permit),
        Err(_) => match tokio::time::timeout(wait, Arc::clone(slots).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(()),
        },
    };
    match permit {
        Ok(permit) => {
            metrics.in_flight.inc();
            Ok(InFlight {
                _permit: permit,
                gauge: metrics.in_flight.clone(),
            })
        }
        Err(()) => {
            count(&metrics.overload_rejections);
            Err(Refusal::new(Problem::LeaseOverloaded, Outcome::Overloaded))
        }
    }
}

fn count(counter: &IntCounter) {
    counter.inc();
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[tokio::test]
    async fn the_n_plus_first_waits_then_is_refused() {
        let metrics = Metrics::new();
        let lease = metrics.lease("web");
        let c = LeaseConcurrency::default();
        let wait = Duration::from_millis(50);
        let slots = c.slots("web", 2);
        let a = acquire(&slots, wait, &lease).await.unwrap();
        let _b = acquire(&slots, wait, &lease).await.unwrap();
        let refused = acquire(&slots, wait, &lease).await.unwrap_err();
        assert_eq!(refused.problem.status(), 503);
        assert_eq!(refused.outcome, Outcome::Overloaded);
        assert!(metrics
            .render()
            .contains("postern_lease_in_flight{lease=\"web\"} 2"));
        // A slot given back within the wait is taken.
        let waiting = acquire(&slots, Duration::from_secs(5), &lease);
        drop(a);
        waiting.await.unwrap();
    }
}

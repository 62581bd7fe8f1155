//! Counted slots under a limit that a config reload may change: connections, connects in
//! flight, streams per lease.
//!
//! A `tokio::sync::Semaphore` fixes its size when it is made; here the limit is passed at each
//! acquire (read from the current settings snapshot), so raising it takes effect at once and
//! lowering it refuses new work until enough holders are gone. It never waits: a full count is
//! a refusal, never a queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How many slots are held; see the module documentation.
#[derive(Debug, Default)]
pub struct Slots {
    held: AtomicUsize,
}

/// One held slot; released on drop.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
}

impl Slots {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Takes a slot if fewer than `max` are held.
    pub fn try_acquire(self: &Arc<Self>, max: usize) -> Option<Slot> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot {
            slots: Arc::clone(self),
        })
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.held.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_read_at_each_acquire() {
        let slots = Slots::new();
        let a = slots.try_acquire(2);
        let b = slots.try_acquire(2);
        assert!(a.is_some() && b.is_some());
        assert!(slots.try_acquire(2).is_none(), "full");
        let c = slots.try_acquire(3);
        assert!(c.is_some(), "a raised limit applies at once");
        assert!(slots.try_acquire(1).is_none(), "a lowered one refuses");
        drop((a, b, c));
        assert_eq!(slots.held(), 0);
        assert!(slots.try_acquire(1).is_some());
    }
}

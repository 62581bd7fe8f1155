//! Client connection slots: at most `limits.max_connections` client connections open at once
//! across the listeners, and at most `limits.max_connections_per_ip` from one client (IPv6:
//! one /64, [`crate::client_ip`]). A connection over either cap is closed at accept, before any
//! TLS work, so a flood from one address costs a socket and a refusal each and leaves room
//! for everyone else.
//!
//! The per-IP map holds an entry only while that client has a connection open, so it is
//! bounded by the total cap.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// Why a connection was closed at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    TotalCap,
    PerIpCap,
}

impl Rejected {
    fn label(self) -> &'static str {
        match self {
            Self::TotalCap => "total_cap",
            Self::PerIpCap => "per_ip_cap",
        }
    }
}

/// The connection slots of the whole gateway.
#[derive(Debug)]
pub struct ConnectionSlots {
    total: Arc<Semaphore>,
    max_total: usize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    metrics: Arc<Metrics>,
}

/// One open client connection's slot; given back when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    bucket: Option<IpAddr>,
    slots: Arc<ConnectionSlots>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.slots.metrics.client_connections.dec();
        if let Some(bucket) = self.bucket {
            let mut per_ip = self.slots.per_ip.lock();
            if let Some(n) = per_ip.get_mut(&bucket) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&bucket);
                }
            }
        }
    }
}

impl ConnectionSlots {
    pub fn new(max_total: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        let max_total = max_total.min(Semaphore::MAX_PERMITS);
        Arc::new(Self {
            total: Arc::new(Semaphore::new(max_total)),
            max_total,
            per_ip: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// A slot for a new connection from `ip`, if both caps leave room.
    pub fn try_acquire(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        per_ip_cap: usize,
    ) -> Result<ConnectionSlot, Rejected> {
        let result = self.acquire(ip, per_ip_cap);
        match &result {
            Ok(_) => self.metrics.client_connections.inc(),
            Err(reason) => self
                .metrics
                .connections_rejected
                .with_label_values(&[reason.label()])
                .inc(),
        }
        result
    }

    fn acquire(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        per_ip_cap: usize,
    ) -> Result<ConnectionSlot, Rejected> {
        let permit = Arc::clone(&self.total)
            .try_acquire_owned()
            .map_err(|_| Rejected::TotalCap)?;
        let bucket = ip.map(crate::client_ip::bucket);
        if let Some(bucket) = bucket {
            let mut per_ip = self.per_ip.lock();
            let n = per_ip.entry(bucket).or_insert(0);
            if *n >= per_ip_cap {
                if *n == 0 {
                    per_ip.remove(&bucket);
                }
                return Err(Rejected::PerIpCap);
            }
            *n += 1;
        }
        Ok(ConnectionSlot {
            _permit: permit,
            bucket,
            slots: Arc::clone(self),
        })
    }

    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.max_total
            .saturating_sub(self.total.available_permits())
    }

    /// Waits until every connection has ended, at most `grace`; `false` if some remain.
    pub async fn drained(&self, grace: Duration) -> bool {
        // A cap beyond u32::MAX permits, which `acquire_many` takes, cannot be drained
        // exactly; it is not a real configuration.
        let all = u32::try_from(self.max_total).unwrap_or(u32::MAX);
        tokio::time::timeout(grace, self.total.acquire_many(all))
            .await
            .is_ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn one_address_is_capped_while_another_is_served() {
        let metrics = Arc::new(Metrics::new());
        let slots = ConnectionSlots::new(10, Arc::clone(&metrics));
        let a1 = slots.try_acquire(ip("192.0.2.1"), 2).unwrap();
        let _a2 = slots.try_acquire(ip("192.0.2.1"), 2).unwrap();
        assert_eq!(
            slots.try_acquire(ip("192.0.2.1"), 2).unwrap_err(),
            Rejected::PerIpCap
        );
        let _b = slots.try_acquire(ip("192.0.2.2"), 2).unwrap();
        assert_eq!(slots.open(), 3);
        drop(a1);
        let _a3 = slots.try_acquire(ip("192.0.2.1"), 2).unwrap();
        let text = metrics.render();
        assert!(text.contains("postern_client_connections 3"), "{text}");
        assert!(text.contains("reason=\"per_ip_cap\"} 1"), "{text}");
    }

    #[test]
    fn the_total_cap_holds_and_entries_go_away() {
        let slots = ConnectionSlots::new(1, Arc::new(Metrics::new()));
        let a = slots.try_acquire(ip("192.0.2.1"), 5).unwrap();
        assert_eq!(
            slots.try_acquire(ip("192.0.2.9"), 5).unwrap_err(),
            Rejected::TotalCap
        );
        drop(a);
        assert!(slots.per_ip.lock().is_empty());
        assert_eq!(slots.open(), 0);
    }
}

//! State shared by every session of one relay: validated config, trusted control-plane keys,
//! the lease table, global limits, counters and the shutdown signals.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use postern_config::RelayConfig;
use postern_sdk::protocol::ConnectCode;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::lease::{LeaseLimits, LeaseTable};

/// Counters for `/healthz` and logs.
#[derive(Debug, Default)]
pub struct RelayMetrics {
    pub sessions_active: AtomicUsize,
    pub sessions_total: AtomicU64,
    pub splices_active: AtomicUsize,
    pub bytes_spliced: AtomicU64,
    pub connects_refused: AtomicU64,
}

impl RelayMetrics {
    pub(crate) fn record_spliced(&self, up: u64, down: u64) {
        self.bytes_spliced.fetch_add(up + down, Ordering::Relaxed);
    }

    pub(crate) fn record_refused(&self, _code: ConnectCode) {
        self.connects_refused.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub(crate) struct RelayState {
    pub config: RelayConfig,
    pub trusted_keys: Vec<VerifyingKey>,
    pub leases: LeaseTable,
    pub sessions: Arc<Semaphore>,
    pub pending_connects: Arc<Semaphore>,
    pub metrics: RelayMetrics,
    /// Stop accepting; refuse new registrations and connects; let splices drain.
    pub shutdown: CancellationToken,
    /// Drop everything still running.
    pub hard_stop: CancellationToken,
    pub tasks: TaskTracker,
    next_session: AtomicU64,
}

impl RelayState {
    pub fn new(config: RelayConfig, trusted_keys: Vec<VerifyingKey>) -> Self {
        let l = &config.limits;
        let t = &config.timeouts;
        let leases = LeaseTable::new(LeaseLimits {
            max_leases: l.max_leases,
            max_leases_per_session: l.max_leases_per_session,
            max_streams_per_lease: l.max_streams_per_lease,
            ttl_default: t.lease_ttl_default,
            ttl_max: t.lease_ttl_max,
        });
        Self {
            sessions: Arc::new(Semaphore::new(l.max_sessions)),
            pending_connects: Arc::new(Semaphore::new(l.max_pending_connects)),
            leases,
            trusted_keys,
            metrics: RelayMetrics::default(),
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            next_session: AtomicU64::new(1),
            config,
        }
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    pub fn max_frame(&self) -> usize {
        self.config.limits.max_frame_bytes as usize
    }
}

//! State shared by every session of one relay: the configuration it was started with, the
//! reloadable [`Settings`] snapshot, the lease table, global slot counts, counters and the
//! shutdown signals.
//!
//! Reload swaps the whole [`Settings`] at once (limits, timeouts, `require_dial_grant`,
//! trusted control-plane keys), built and checked before the swap; the hot path loads an `Arc`
//! of it and never parses. What a running relay cannot change — its listeners and TLS material
//! — stays as bound, and a reload that changes it says so instead of applying it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ed25519_dalek::VerifyingKey;
use postern_config::{RelayConfig, RelayLimits, RelayTimeouts};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::lease::{LeaseLimits, LeaseTable};
use crate::metrics::RelayMetrics;
use crate::slots::Slots;
use crate::RelayError;

/// The part of the configuration a reload replaces, resolved into the values the hot path
/// uses.
#[derive(Debug)]
pub(crate) struct Settings {
    pub limits: RelayLimits,
    pub timeouts: RelayTimeouts,
    pub require_dial_grant: bool,
    pub trusted_keys: Vec<VerifyingKey>,
}

impl Settings {
    /// Validates `config` and decodes its control-plane keys.
    pub fn resolve(config: &RelayConfig) -> Result<Self, RelayError> {
        config.validate()?;
        let trusted_keys = config
            .control_plane
            .public_key_bytes()
            .iter()
            .map(|b| VerifyingKey::from_bytes(b).map_err(|e| RelayError::Key(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            limits: config.limits.clone(),
            timeouts: config.timeouts.clone(),
            require_dial_grant: config.require_dial_grant,
            trusted_keys,
        })
    }

    pub fn lease_limits(&self) -> LeaseLimits {
        LeaseLimits {
            max_leases: self.limits.max_leases,
            max_leases_per_session: self.limits.max_leases_per_session,
            ttl_default: self.timeouts.lease_ttl_default,
            ttl_max: self.timeouts.lease_ttl_max,
        }
    }

    pub fn max_frame(&self) -> usize {
        self.limits.max_frame_bytes as usize
    }
}

#[derive(Debug)]
pub(crate) struct RelayState {
    /// The configuration the relay was bound with; its listener, TLS and metrics settings are
    /// the ones in force until a restart.
    pub bound: RelayConfig,
    pub settings: ArcSwap<Settings>,
    pub leases: LeaseTable,
    /// Connections, against `limits.max_sessions`.
    pub sessions: Arc<Slots>,
    /// Connects waiting for a lease owner, against `limits.max_pending_connects`.
    pub pending_connects: Arc<Slots>,
    pub metrics: RelayMetrics,
    /// Stop accepting; refuse new registrations and connects; let splices drain.
    pub shutdown: CancellationToken,
    /// Drop everything still running.
    pub hard_stop: CancellationToken,
    pub tasks: TaskTracker,
    next_session: AtomicU64,
}

impl RelayState {
    pub fn new(bound: RelayConfig, settings: Settings) -> Result<Self, RelayError> {
        Ok(Self {
            settings: ArcSwap::from_pointee(settings),
            leases: LeaseTable::new(),
            sessions: Slots::new(),
            pending_connects: Slots::new(),
            metrics: RelayMetrics::new().map_err(|e| RelayError::Metrics(e.to_string()))?,
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            next_session: AtomicU64::new(1),
            bound,
        })
    }

    /// The settings in force now.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }
}

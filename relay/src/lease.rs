//! The lease table: which session owns which lease name, until when, under which identity.
//!
//! Rules the table enforces:
//! * A live lease belongs to one identity key. Another identity registering the same name is
//!   refused (`LeaseTaken`) until the lease expires or is released; the same identity
//!   registering again (a reconnect, or a second gateway process during an upgrade) takes it
//!   over, and the newest session gets new connects.
//! * Every lease expires: TTL from the request, capped by config and by the grant's expiry.
//!   Renewal extends it; a session that goes away takes its leases with it.
//! * Counts are bounded globally and per session. The bounds are passed in at each
//!   registration (from the settings snapshot), so a config reload applies to the next one.
//!
//! The relay never learns anything about a lease beyond what is stored here: name, keys,
//! ALPN, metadata and timing.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postern_sdk::mux::MuxHandle;
use postern_sdk::protocol::ErrorCode;

use crate::slots::Slots;

/// Identifies one client session on this relay.
pub type SessionId = u64;

/// What a registered lease offers to dialers.
#[derive(Debug)]
pub struct Lease {
    pub name: String,
    pub identity_key: [u8; 32],
    pub session: SessionId,
    pub owner: MuxHandle,
    pub e2ee_static_key: Vec<u8>,
    pub static_key_signature: Vec<u8>,
    pub alpn: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub expires_at: Instant,
    /// The TTL granted at registration; each renewal extends the lease by it.
    pub ttl: Duration,
    /// Latest moment renewals may push `expires_at` to (the grant's expiry).
    pub hard_expiry: Instant,
    /// Spliced streams currently open to this lease (against `limits.max_streams_per_lease`).
    pub streams: Arc<Slots>,
}

/// A refusal with its wire code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LeaseError {
    pub code: ErrorCode,
    pub message: String,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> LeaseError {
    LeaseError {
        code,
        message: message.into(),
    }
}

/// Bounds of the table.
#[derive(Debug, Clone, Copy)]
pub struct LeaseLimits {
    pub max_leases: usize,
    pub max_leases_per_session: usize,
    pub ttl_default: Duration,
    pub ttl_max: Duration,
}

/// A registration request after the session layer has checked grants and signatures.
#[derive(Debug)]
pub struct NewLease {
    pub name: String,
    pub identity_key: [u8; 32],
    pub session: SessionId,
    pub owner: MuxHandle,
    pub e2ee_static_key: Vec<u8>,
    pub static_key_signature: Vec<u8>,
    pub alpn: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub ttl: Option<Duration>,
    pub grant_expiry: Instant,
}

/// What a dialer needs to reach a lease.
#[derive(Debug, Clone)]
pub struct Route {
    pub owner: MuxHandle,
    pub e2ee_static_key: Vec<u8>,
    pub static_key_signature: Vec<u8>,
    pub streams: Arc<Slots>,
}

#[derive(Debug, Default)]
struct Inner {
    leases: HashMap<String, Lease>,
    per_session: HashMap<SessionId, usize>,
}

impl Inner {
    fn remove(&mut self, name: &str) -> Option<Lease> {
        let lease = self.leases.remove(name)?;
        if let Some(n) = self.per_session.get_mut(&lease.session) {
            *n -= 1;
            if *n == 0 {
                self.per_session.remove(&lease.session);
            }
        }
        Some(lease)
    }
}

/// The relay's lease table.
#[derive(Debug, Default)]
pub struct LeaseTable {
    inner: Mutex<Inner>,
}

impl LeaseTable {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters more than losing the relay, so recover the guard.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers (or takes over) a lease within `limits`; returns its expiry.
    pub fn register(
        &self,
        req: NewLease,
        limits: &LeaseLimits,
        now: Instant,
    ) -> Result<Instant, LeaseError> {
        let ttl = req.ttl.unwrap_or(limits.ttl_default).min(limits.ttl_max);
        let expires_at = (now + ttl).min(req.grant_expiry);
        if expires_at <= now {
            return Err(refuse(ErrorCode::GrantExpired, "grant expired"));
        }
        let mut inner = self.lock();
        let mut replaces_own = false;
        if let Some(existing) = inner.leases.get(&req.name) {
            let live = existing.expires_at > now && !existing.owner.is_closed();
            if live && existing.identity_key != req.identity_key {
                return Err(refuse(
                    ErrorCode::LeaseTaken,
                    format!("lease {:?} is held by another identity", req.name),
                ));
            }
            replaces_own = existing.session == req.session;
        }
        if !replaces_own {
            let mine = inner.per_session.get(&req.session).copied().unwrap_or(0);
            if mine >= limits.max_leases_per_session {
                return Err(refuse(ErrorCode::Limit, "too many leases on this session"));
            }
            if !inner.leases.contains_key(&req.name) && inner.leases.len() >= limits.max_leases {
                return Err(refuse(ErrorCode::Limit, "relay lease limit reached"));
            }
        }
        // Keep the stream counter across a takeover so its limit stays meaningful.
        let streams = inner
            .remove(&req.name)
            .map(|old| old.streams)
            .unwrap_or_default();
        *inner.per_session.entry(req.session).or_default() += 1;
        inner.leases.insert(
            req.name.clone(),
            Lease {
                name: req.name,
                identity_key: req.identity_key,
                session: req.session,
                owner: req.owner,
                e2ee_static_key: req.e2ee_static_key,
                static_key_signature: req.static_key_signature,
                alpn: req.alpn,
                metadata: req.metadata,
                expires_at,
                ttl,
                hard_expiry: req.grant_expiry,
                streams,
            },
        );
        Ok(expires_at)
    }

    /// Extends a lease this session holds by its registered TTL.
    pub fn renew(
        &self,
        name: &str,
        session: SessionId,
        now: Instant,
    ) -> Result<Instant, LeaseError> {
        let mut inner = self.lock();
        let lease = inner
            .leases
            .get_mut(name)
            .filter(|l| l.session == session && l.expires_at > now)
            .ok_or_else(|| refuse(ErrorCode::NotFound, format!("no lease {name:?} here")))?;
        if lease.hard_expiry <= now {
            return Err(refuse(ErrorCode::GrantExpired, "grant expired"));
        }
        lease.expires_at = (now + lease.ttl).min(lease.hard_expiry);
        Ok(lease.expires_at)
    }

    /// Releases a lease this session holds.
    pub fn deregister(&self, name: &str, session: SessionId) -> Result<(), LeaseError> {
        let mut inner = self.lock();
        match inner.leases.get(name) {
            Some(l) if l.session == session => {
                inner.remove(name);
                Ok(())
            }
            _ => Err(refuse(
                ErrorCode::NotFound,
                format!("no lease {name:?} here"),
            )),
        }
    }

    /// Finds a live lease for a dialer.
    pub fn route(&self, name: &str, now: Instant) -> Option<Route> {
        let inner = self.lock();
        let lease = inner.leases.get(name)?;
        if lease.expires_at <= now || lease.owner.is_closed() {
            return None;
        }
        Some(Route {
            owner: lease.owner.clone(),
            e2ee_static_key: lease.e2ee_static_key.clone(),
            static_key_signature: lease.static_key_signature.clone(),
            streams: Arc::clone(&lease.streams),
        })
    }

    /// Drops every lease of a session that ended.
    pub fn remove_session(&self, session: SessionId) {
        let mut inner = self.lock();
        if inner.per_session.remove(&session).is_none() {
            return;
        }
        inner.leases.retain(|_, l| l.session != session);
    }

    /// Drops expired leases and leases whose owner is gone; returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut inner = self.lock();
        let dead: Vec<String> = inner
            .leases
            .values()
            .filter(|l| l.expires_at <= now || l.owner.is_closed())
            .map(|l| l.name.clone())
            .collect();
        for name in &dead {
            inner.remove(name);
        }
        dead.len()
    }

    pub fn len(&self) -> usize {
        self.lock().leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use postern_sdk::mux::{self, MuxConfig, Side};

    fn handle() -> MuxHandle {
        let (a, b) = tokio::io::duplex(1024);
        std::mem::forget(b);
        mux::spawn(a, Side::Server, MuxConfig::default()).0
    }

    const LIMITS: LeaseLimits = LeaseLimits {
        max_leases: 3,
        max_leases_per_session: 2,
        ttl_default: Duration::from_secs(60),
        ttl_max: Duration::from_secs(600),
    };

    /// A table whose `register` always applies [`LIMITS`].
    struct Table(LeaseTable);

    impl std::ops::Deref for Table {
        type Target = LeaseTable;
        fn deref(&self) -> &LeaseTable {
            &self.0
        }
    }

    impl Table {
        fn register(&self, req: NewLease, now: Instant) -> Result<Instant, LeaseError> {
            self.0.register(req, &LIMITS, now)
        }
    }

    fn table() -> Table {
        Table(LeaseTable::new())
    }

    fn req(name: &str, identity: u8, session: SessionId, owner: &MuxHandle) -> NewLease {
        NewLease {
            name: name.into(),
            identity_key: [identity; 32],
            session,
            owner: owner.clone(),
            e2ee_static_key: vec![1; 32],
            static_key_signature: vec![2; 64],
            alpn: vec![],
            metadata: BTreeMap::new(),
            ttl: None,
            grant_expiry: Instant::now() + Duration::from_secs(3600),
        }
    }

    #[tokio::test]
    async fn another_identity_cannot_take_a_live_lease() {
        let t = table();
        let (h1, h2) = (handle(), handle());
        let now = Instant::now();
        t.register(req("svc", 1, 1, &h1), now).unwrap();
        let err = t.register(req("svc", 2, 2, &h2), now).unwrap_err();
        assert_eq!(err.code, ErrorCode::LeaseTaken);
        // The same identity from a new session takes it over.
        t.register(req("svc", 1, 3, &h2), now).unwrap();
        assert_eq!(t.len(), 1);
        // After expiry anyone with a grant may take the name.
        let later = now + Duration::from_secs(61);
        t.register(req("svc", 2, 2, &h2), later).unwrap();
    }

    #[tokio::test]
    async fn ttl_is_capped_by_grant_and_config() {
        let t = table();
        let h = handle();
        let now = Instant::now();
        let mut r = req("svc", 1, 1, &h);
        r.ttl = Some(Duration::from_secs(10_000));
        r.grant_expiry = now + Duration::from_secs(5);
        assert_eq!(t.register(r, now).unwrap(), now + Duration::from_secs(5));
        let mut r = req("svc2", 1, 1, &h);
        r.ttl = Some(Duration::from_secs(10_000));
        assert_eq!(t.register(r, now).unwrap(), now + Duration::from_secs(600));
    }

    #[tokio::test]
    async fn limits_and_session_cleanup() {
        let t = table();
        let (h1, h2) = (handle(), handle());
        let now = Instant::now();
        t.register(req("a", 1, 1, &h1), now).unwrap();
        t.register(req("b", 1, 1, &h1), now).unwrap();
        assert_eq!(
            t.register(req("c", 1, 1, &h1), now).unwrap_err().code,
            ErrorCode::Limit
        );
        t.register(req("c", 2, 2, &h2), now).unwrap();
        assert_eq!(
            t.register(req("d", 2, 2, &h2), now).unwrap_err().code,
            ErrorCode::Limit,
            "global cap"
        );
        t.remove_session(1);
        assert_eq!(t.len(), 1);
        assert!(t.route("a", now).is_none());
        assert!(t.route("c", now).is_some());
    }

    #[tokio::test]
    async fn limits_are_those_passed_at_registration() {
        let t = LeaseTable::new();
        let h = handle();
        let now = Instant::now();
        let one = LeaseLimits {
            max_leases: 1,
            ..LIMITS
        };
        t.register(req("a", 1, 1, &h), &one, now).unwrap();
        let refused = t.register(req("b", 1, 1, &h), &one, now).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Limit);
        t.register(req("b", 1, 1, &h), &LIMITS, now).unwrap();
    }

    #[tokio::test]
    async fn renew_extends_and_sweep_expires() {
        let t = table();
        let h = handle();
        let now = Instant::now();
        t.register(req("a", 1, 1, &h), now).unwrap();
        let later = now + Duration::from_secs(50);
        let exp = t.renew("a", 1, later).unwrap();
        assert_eq!(exp, later + Duration::from_secs(60));
        assert!(t.renew("a", 9, later).is_err(), "only the owner renews");
        assert_eq!(t.sweep(later + Duration::from_secs(61)), 1);
        assert!(t.is_empty());
    }
}

//! The dialer's side (the gateway, or any client): reach a lease through a relay over E2EE.
//!
//! **One handshake per lease, not per request.** The dialer keeps one E2EE session per lease —
//! one relay connect, one Noise IK handshake as initiator — and runs a second yamux inside the
//! encrypted channel. [`Dialer::dial`] opens a new inner stream in that session: no relay round
//! trip, no handshake, a few microseconds. A session that fails is re-established on the next
//! dial; one without open streams for `idle_timeout` is closed.
//!
//! The responder's key is pinned: the caller names the lease owner's Ed25519 identity key (from
//! the control plane's grant), and the E2EE static key the relay reports is used only if that
//! identity signed it for this lease.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use tokio::sync::Mutex;

use crate::e2ee::{self, E2eeError};
use crate::identity::Identity;
use crate::lease_name;
use crate::mux::{self, MuxConfig, MuxError, MuxHandle, MuxStream, Side};
use crate::protocol::SignedGrant;
use crate::relay_client::{ClientError, ClientOptions, RelaySession, RelayUrl};

/// Where to dial and whom to expect there.
#[derive(Debug, Clone)]
pub struct LeaseTarget {
    pub lease: String,
    /// The lease owner's identity key as granted by the control plane.
    pub owner_identity: VerifyingKey,
    /// ALPN protocols to offer, in preference order.
    pub alpn: Vec<String>,
}

impl LeaseTarget {
    pub fn new(lease: impl Into<String>, owner_identity: VerifyingKey) -> Self {
        Self {
            lease: lease.into(),
            owner_identity,
            alpn: Vec::new(),
        }
    }
}

/// Dialer settings.
#[derive(Debug, Clone)]
pub struct DialerConfig {
    pub relays: Vec<RelayUrl>,
    pub identity: Identity,
    /// Grants with DIAL permission for the leases this dialer reaches.
    pub grants: Vec<SignedGrant>,
    pub client: ClientOptions,
    pub handshake_timeout: Duration,
    /// Close a lease's E2EE session after this long without open streams.
    pub idle_timeout: Duration,
    /// Concurrent inner streams per lease session.
    pub max_inner_streams: usize,
    /// Lease sessions kept at once.
    pub max_sessions: usize,
}

impl DialerConfig {
    pub fn new(relay: RelayUrl, identity: Identity, grants: Vec<SignedGrant>) -> Self {
        Self {
            relays: vec![relay],
            identity,
            grants,
            client: ClientOptions::default(),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_inner_streams: 4096,
            max_sessions: 1024,
        }
    }
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("invalid lease name: {0}")]
    LeaseName(#[from] lease_name::LeaseNameError),
    #[error(transparent)]
    Relay(#[from] ClientError),
    #[error("e2ee: {0}")]
    Handshake(#[from] E2eeError),
    #[error("session: {0}")]
    Mux(#[from] MuxError),
    #[error("no relay reachable")]
    NoRelay,
    #[error("too many lease sessions open ({0})")]
    TooManySessions(usize),
}

struct LeaseSession {
    mux: MuxHandle,
    /// The protocol the handshake agreed on for this session's streams.
    alpn: Option<Arc<str>>,
    last_used: StdMutex<Instant>,
}

#[derive(Default)]
struct Slot {
    session: Mutex<Option<Arc<LeaseSession>>>,
}

struct Inner {
    cfg: DialerConfig,
    relay: Mutex<Option<Arc<RelaySession>>>,
    slots: StdMutex<HashMap<String, Arc<Slot>>>,
    handshakes: std::sync::atomic::AtomicU64,
}

/// Dials leases; cheap to clone, one per process is enough.
#[derive(Clone)]
pub struct Dialer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("relays", &self.inner.cfg.relays)
            .finish_non_exhaustive()
    }
}

impl Dialer {
    pub fn new(cfg: DialerConfig) -> Self {
        let inner = Arc::new(Inner {
            cfg,
            relay: Mutex::new(None),
            slots: StdMutex::new(HashMap::new()),
            handshakes: Default::default(),
        });
        tokio::spawn(reap_idle(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// Opens a new stream to `target`'s service, end-to-end encrypted.
    pub async fn dial(&self, target: &LeaseTarget) -> Result<MuxStream, DialError> {
        self.dial_negotiated(target).await.map(|(stream, _)| stream)
    }

    /// Like [`Dialer::dial`], with the protocol that the lease session's handshake agreed on
    /// (from `target.alpn`; `None` when neither side named one).
    pub async fn dial_negotiated(
        &self,
        target: &LeaseTarget,
    ) -> Result<(MuxStream, Option<Arc<str>>), DialError> {
        let name = lease_name::normalize(&target.lease)?;
        let slot = self.slot(&name)?;
        // Fast path: a live session; the lock is held only to clone its handle.
        let existing = slot.session.lock().await.clone();
        if let Some(s) = existing.filter(|s| !s.mux.is_closed()) {
            match s.mux.open().await {
                Ok(stream) => {
                    touch(&s);
                    return Ok((stream, s.alpn.clone()));
                }
                Err(e @ MuxError::TooManyStreams(_)) => return Err(e.into()),
                Err(_) => {} // the session died under us: establish a new one
            }
        }
        let mut guard = slot.session.lock().await;
        // Someone else may have re-established it while we waited for the lock.
        if let Some(s) = guard.as_ref().filter(|s| !s.mux.is_closed()) {
            let s = Arc::clone(s);
            drop(guard);
            let stream = s.mux.open().await?;
            touch(&s);
            return Ok((stream, s.alpn.clone()));
        }
        let session = Arc::new(self.establish(&name, target).await?);
        *guard = Some(Arc::clone(&session));
        drop(guard);
        let stream = session.mux.open().await?;
        touch(&session);
        Ok((stream, session.alpn.clone()))
    }

    /// Whether a relay is reachable (connecting to one if there is no live session).
    pub async fn check_relay(&self) -> Result<(), DialError> {
        self.relay().await.map(|_| ())
    }

    /// Full Noise handshakes done so far (for tests and metrics).
    pub fn handshakes(&self) -> u64 {
        self.inner
            .handshakes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Lease sessions open now: slots holding a live session (a slot whose dial failed, or
    /// whose session has closed, is not one). A slot being established at this moment is
    /// not counted.
    pub fn session_count(&self) -> usize {
        let slots: Vec<Arc<Slot>> = match self.inner.slots.lock() {
            Ok(slots) => slots.values().cloned().collect(),
            Err(_) => return 0,
        };
        slots
            .iter()
            .filter(|slot| {
                slot.session
                    .try_lock()
                    .is_ok_and(|s| s.as_ref().is_some_and(|s| !s.mux.is_closed()))
            })
            .count()
    }

    fn slot(&self, name: &str) -> Result<Arc<Slot>, DialError> {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slots.get(name) {
            return Ok(Arc::clone(s));
        }
        if slots.len() >= self.inner.cfg.max_sessions {
            return Err(DialError::TooManySessions(self.inner.cfg.max_sessions));
        }
        let slot = Arc::new(Slot::default());
        slots.insert(name.to_owned(), Arc::clone(&slot));
        Ok(slot)
    }

    async fn relay(&self) -> Result<Arc<RelaySession>, DialError> {
        let mut guard = self.inner.relay.lock().await;
        if let Some(r) = guard.as_ref().filter(|r| !r.is_closed()) {
            return Ok(Arc::clone(r));
        }
        let cfg = &self.inner.cfg;
        let mut last = None;
        for url in &cfg.relays {
            match RelaySession::connect(url, &cfg.identity, &cfg.grants, cfg.client.clone()).await {
                // Streams the relay opens towards a dialer are never expected: drop the queue.
                Ok((session, _inbound)) => {
                    let session = Arc::new(session);
                    *guard = Some(Arc::clone(&session));
                    return Ok(session);
                }
                Err(e) => {
                    tracing::warn!(relay = %url, error = %e, "relay unreachable");
                    last = Some(e);
                }
            }
        }
        Err(last.map(DialError::from).unwrap_or(DialError::NoRelay))
    }

    async fn establish(&self, name: &str, target: &LeaseTarget) -> Result<LeaseSession, DialError> {
        let cfg = &self.inner.cfg;
        let relay = self.relay().await?;
        let alpn = target.alpn.first().cloned().unwrap_or_default();
        let (stream, static_key) = relay
            .connect_lease(name, &alpn, &target.owner_identity)
            .await?;
        let (secure, info) = e2ee::initiate(
            stream,
            cfg.identity.e2ee_keypair(),
            &static_key,
            name,
            &target.alpn,
            cfg.handshake_timeout,
        )
        .await?;
        self.inner
            .handshakes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (mux, _inbound) = mux::spawn(
            secure,
            Side::Client,
            MuxConfig {
                max_streams: cfg.max_inner_streams,
                max_pending_accepts: 1,
                read_after_close: false,
                ..MuxConfig::default()
            },
        );
        tracing::debug!(lease = %name, "e2ee session established");
        Ok(LeaseSession {
            mux,
            alpn: info.alpn.map(Arc::from),
            last_used: StdMutex::new(Instant::now()),
        })
    }
}

fn touch(s: &LeaseSession) {
    if let Ok(mut t) = s.last_used.lock() {
        *t = Instant::now();
    }
}

/// Closes lease sessions that have had no open stream for the idle timeout.
async fn reap_idle(inner: std::sync::Weak<Inner>) {
    loop {
        let period = match inner.upgrade() {
            Some(i) => (i.cfg.idle_timeout / 4).max(Duration::from_millis(100)),
            None => return,
        };
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        let idle = inner.cfg.idle_timeout;
        let slots: Vec<(String, Arc<Slot>)> = inner
            .slots
            .lock()
            .map(|s| s.iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect())
            .unwrap_or_default();
        for (name, slot) in slots {
            let Ok(mut guard) = slot.session.try_lock() else {
                continue;
            };
            let expired = match guard.as_ref() {
                None => true,
                Some(s) => {
                    s.mux.is_closed()
                        || (s.mux.open_streams() == 0
                            && s.last_used
                                .lock()
                                .map(|t| t.elapsed() >= idle)
                                .unwrap_or(true))
                }
            };
            if expired {
                *guard = None;
                drop(guard);
                if let Ok(mut slots) = inner.slots.lock() {
                    slots.remove(&name);
                }
                tracing::debug!(lease = %name, "idle e2ee session closed");
            }
        }
    }
}

//! The lease owner's side: register leases on one or more relays and accept decrypted streams.
//!
//! For every relay a supervisor task connects, authenticates with the identity key and grants,
//! registers every lease, renews them at a third of their TTL, and on any failure reconnects
//! with backoff and jitter, restoring the leases. Each stream the relay splices to us carries
//! one dialer's E2EE session: we answer its Noise handshake as responder, then accept the inner
//! streams the dialer opens inside it. [`Listener::accept`] hands those out: plain
//! `AsyncRead + AsyncWrite` streams for hyper, axum or raw TCP forwarding.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use x25519_dalek::PublicKey;

use crate::backoff::Backoff;
use crate::e2ee::{self, ResponderPolicy};
use crate::frame::read_frame;
use crate::identity::Identity;
use crate::lease_name;
use crate::mux::{self, MuxConfig, MuxInbound, MuxStream, Side};
use crate::protocol::{relay_frame, RegisterLease, RelayFrame, SignedGrant};
use crate::relay_client::{ClientError, ClientOptions, RelaySession, RelayUrl};

/// A decrypted stream from a dialer.
pub type PosternStream = MuxStream;

/// One lease to hold.
#[derive(Debug, Clone)]
pub struct LeaseSpec {
    pub name: String,
    /// The protocols the service on this lease speaks inside the tunnel, in preference order;
    /// the E2EE handshake picks from what the dialer offers by this order. Empty: whatever the
    /// dialer asks first (the gateway asks `http/1.1` first, then `h2`). A service that serves
    /// HTTP/2 as well (hyper-util's `auto` builder, the `expose` agent) lists `h2` first, and
    /// the gateway then carries all its requests on one HTTP/2 connection.
    pub alpn: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub ttl: Duration,
}

impl LeaseSpec {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            alpn: Vec::new(),
            metadata: BTreeMap::new(),
            ttl: Duration::from_secs(60),
        }
    }
}

/// Everything a listener needs.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub relays: Vec<RelayUrl>,
    pub identity: Identity,
    pub grants: Vec<SignedGrant>,
    pub leases: Vec<LeaseSpec>,
    pub client: ClientOptions,
    /// Initiator (dialer) static keys allowed in; `None` admits any dialer the relay lets
    /// through (the relay itself requires a DIAL grant by default).
    pub allowed_dialers: Option<HashSet<[u8; 32]>>,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub handshake_timeout: Duration,
    /// Concurrent E2EE sessions (one per dialer per lease).
    pub max_sessions: usize,
    /// Inner streams per E2EE session.
    pub max_inner_streams: usize,
    /// Decrypted streams waiting for `accept` before new ones are refused.
    pub max_pending_accepts: usize,
    /// Close a dialer's E2EE session after this long without any open stream (the dialer
    /// re-establishes it on demand). Longer than the dialer's own idle timeout (5 min by
    /// default), so that normally the dialer, which knows when it is done, closes first.
    pub idle_session_timeout: Duration,
}

impl ListenerConfig {
    pub fn new(
        relay: RelayUrl,
        identity: Identity,
        grants: Vec<SignedGrant>,
        lease: LeaseSpec,
    ) -> Self {
        Self {
            relays: vec![relay],
            identity,
            grants,
            leases: vec![lease],
            client: ClientOptions::default(),
            allowed_dialers: None,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_sessions: 1024,
            max_inner_streams: 4096,
            max_pending_accepts: 1024,
            idle_session_timeout: Duration::from_secs(600),
        }
    }
}

/// Where a listener stands with one relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerStatus {
    Connecting {
        relay: String,
    },
    Online {
        relay: String,
        leases: Vec<String>,
    },
    Retrying {
        relay: String,
        error: String,
        retry_in: Duration,
    },
    Stopped,
}

/// Who is on the other end of an accepted stream.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub lease: String,
    /// The dialer's authenticated static key (the gateway's identity).
    pub dialer_key: PublicKey,
    pub alpn: Option<String>,
}

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("invalid lease name {name:?}: {source}")]
    LeaseName {
        name: String,
        source: lease_name::LeaseNameError,
    },
    #[error("no relay configured")]
    NoRelay,
    #[error("no lease configured")]
    NoLease,
    #[error(transparent)]
    Relay(#[from] ClientError),
}

/// Accepts decrypted streams for the configured leases.
#[derive(Debug)]
pub struct Listener {
    rx: mpsc::Receiver<(PosternStream, PeerInfo)>,
    status: watch::Receiver<ListenerStatus>,
    stop: CancellationToken,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Shared {
    cfg: ListenerConfig,
    policy: ResponderPolicy,
    sessions: Arc<Semaphore>,
    tx: mpsc::Sender<(PosternStream, PeerInfo)>,
    stop: CancellationToken,
}

impl Listener {
    /// Starts holding the leases. Returns once they are registered on the first relay, or with
    /// the first attempt's error; afterwards it reconnects on its own.
    pub async fn bind(mut cfg: ListenerConfig) -> Result<Self, ListenError> {
        if cfg.relays.is_empty() {
            return Err(ListenError::NoRelay);
        }
        if cfg.leases.is_empty() {
            return Err(ListenError::NoLease);
        }
        for lease in &mut cfg.leases {
            lease.name =
                lease_name::normalize(&lease.name).map_err(|source| ListenError::LeaseName {
                    name: lease.name.clone(),
                    source,
                })?;
        }
        let (tx, rx) = mpsc::channel(cfg.max_pending_accepts.max(1));
        let stop = CancellationToken::new();
        let policy = ResponderPolicy::new(cfg.allowed_dialers.clone(), Vec::new());
        let shared = Arc::new(Shared {
            sessions: Arc::new(Semaphore::new(cfg.max_sessions.max(1))),
            policy,
            tx,
            stop: stop.clone(),
            cfg,
        });
        // The first relay is connected here so that a bad grant or an unreachable relay is
        // reported to the caller instead of being retried silently.
        let first = shared.cfg.relays[0].clone();
        let (status_tx, status_rx) = watch::channel(ListenerStatus::Connecting {
            relay: first.to_string(),
        });
        let (session, inbound) = connect_and_register(&shared, &first).await?;
        let _ = status_tx.send(online(&shared, &first));
        tokio::spawn(supervise(
            Arc::clone(&shared),
            first,
            Some((session, inbound)),
            status_tx,
        ));
        for relay in shared.cfg.relays.iter().skip(1) {
            let (tx, _) = watch::channel(ListenerStatus::Connecting {
                relay: relay.to_string(),
            });
            tokio::spawn(supervise(Arc::clone(&shared), relay.clone(), None, tx));
        }
        Ok(Self {
            rx,
            status: status_rx,
            stop,
        })
    }

    /// The next decrypted stream from a dialer.
    pub async fn accept(&mut self) -> std::io::Result<(PosternStream, PeerInfo)> {
        self.rx.recv().await.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotConnected, "listener stopped")
        })
    }

    /// Status of the connection to the first relay, for display.
    pub fn status(&self) -> watch::Receiver<ListenerStatus> {
        self.status.clone()
    }

    /// Deregisters the leases (best effort) and stops.
    pub fn close(&self) {
        self.stop.cancel();
    }
}

/// `axum::serve(listener, app)` serves a lease. Accepting never fails while the listener runs;
/// if it stops, `accept` waits forever (axum's contract has no way to say "done").
#[cfg(feature = "axum")]
impl axum::serve::Listener for Listener {
    type Io = PosternStream;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "a lease has no local address",
        ))
    }
}

/// `ConnectInfo<PeerInfo>` in handlers: which lease, which dialer key.
#[cfg(feature = "axum")]
impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Listener>>
    for PeerInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, Listener>) -> Self {
        stream.remote_addr().clone()
    }
}

fn online(shared: &Shared, relay: &RelayUrl) -> ListenerStatus {
    ListenerStatus::Online {
        relay: relay.to_string(),
        leases: shared.cfg.leases.iter().map(|l| l.name.clone()).collect(),
    }
}

async fn connect_and_register(
    shared: &Shared,
    relay: &RelayUrl,
) -> Result<(RelaySession, MuxInbound), ClientError> {
    let cfg = &shared.cfg;
    let (session, inbound) =
        RelaySession::connect(relay, &cfg.identity, &cfg.grants, cfg.client.clone()).await?;
    for lease in &cfg.leases {
        let register = RegisterLease {
            name: lease.name.clone(),
            e2ee_static_key: cfg.identity.e2ee_keypair().public().as_bytes().to_vec(),
            static_key_signature: cfg
                .identity
                .sign_static_key(&lease.name)
                .to_bytes()
                .to_vec(),
            alpn: lease.alpn.clone(),
            metadata: lease.metadata.clone(),
            ttl_secs: lease.ttl.as_secs().clamp(1, u64::from(u32::MAX)) as u32,
        };
        session.register(register).await?;
    }
    Ok((session, inbound))
}

async fn supervise(
    shared: Arc<Shared>,
    relay: RelayUrl,
    mut connected: Option<(RelaySession, MuxInbound)>,
    status: watch::Sender<ListenerStatus>,
) {
    let cfg = &shared.cfg;
    let mut backoff = Backoff::new(cfg.initial_backoff, cfg.max_backoff);
    loop {
        let attempt = match connected.take() {
            Some(c) => Ok(c),
            None => {
                let _ = status.send(ListenerStatus::Connecting {
                    relay: relay.to_string(),
                });
                tokio::select! {
                    r = connect_and_register(&shared, &relay) => r,
                    _ = shared.stop.cancelled() => break,
                }
            }
        };
        match attempt {
            Ok((session, inbound)) => {
                backoff.reset();
                let _ = status.send(online(&shared, &relay));
                tracing::info!(relay = %relay, "leases online");
                let why = serve(&shared, &session, inbound).await;
                if shared.stop.is_cancelled() {
                    for lease in &cfg.leases {
                        let _ = session.deregister(&lease.name).await;
                    }
                    break;
                }
                tracing::warn!(relay = %relay, reason = %why, "relay session lost; reconnecting");
            }
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(relay = %relay, error = %e, retry_in = ?wait, "relay connect failed");
                let _ = status.send(ListenerStatus::Retrying {
                    relay: relay.to_string(),
                    error: e.to_string(),
                    retry_in: wait,
                });
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shared.stop.cancelled() => break,
                }
                continue;
            }
        }
        // A short pause even after a session that worked, so a flapping relay is not hammered.
        let wait = backoff.next_delay();
        let _ = status.send(ListenerStatus::Retrying {
            relay: relay.to_string(),
            error: "relay session lost".into(),
            retry_in: wait,
        });
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.stop.cancelled() => break,
        }
    }
    let _ = status.send(ListenerStatus::Stopped);
}

/// Serves one relay session until it fails; returns why.
async fn serve(shared: &Arc<Shared>, session: &RelaySession, mut inbound: MuxInbound) -> String {
    let renew_every = shared
        .cfg
        .leases
        .iter()
        .map(|l| l.ttl)
        .min()
        .unwrap_or(Duration::from_secs(60))
        / 3;
    let mut renew = tokio::time::interval(renew_every.max(Duration::from_millis(500)));
    renew.tick().await;
    loop {
        tokio::select! {
            stream = inbound.accept() => {
                let Some(stream) = stream else { return "session closed".into() };
                let Ok(permit) = Arc::clone(&shared.sessions).try_acquire_owned() else {
                    tracing::warn!("e2ee session limit reached; refusing a dialer");
                    continue;
                };
                let shared = Arc::clone(shared);
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = serve_dialer(&shared, stream).await {
                        tracing::info!(error = %e, "dialer refused");
                    }
                });
            }
            _ = renew.tick() => {
                for lease in &shared.cfg.leases {
                    if let Err(e) = session.renew(&lease.name).await {
                        return format!("renewing {}: {e}", lease.name);
                    }
                }
            }
            _ = session.closed() => return "session closed".into(),
            _ = shared.stop.cancelled() => return "stopped".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum DialerError {
    #[error("bad incoming header: {0}")]
    Header(String),
    #[error(transparent)]
    Handshake(#[from] e2ee::E2eeError),
}

/// Answers one dialer's handshake and feeds its inner streams to `accept`.
async fn serve_dialer(shared: &Shared, mut stream: MuxStream) -> Result<(), DialerError> {
    let cfg = &shared.cfg;
    let header = tokio::time::timeout(
        cfg.handshake_timeout,
        read_frame::<RelayFrame, _>(&mut stream, cfg.client.max_frame_bytes),
    )
    .await
    .map_err(|_| DialerError::Header("timed out".into()))?
    .map_err(|e| DialerError::Header(e.to_string()))?;
    let incoming = match header.msg {
        Some(relay_frame::Msg::Incoming(i)) => i,
        _ => return Err(DialerError::Header("expected incoming".into())),
    };
    let Some(lease) = cfg.leases.iter().find(|l| l.name == incoming.lease) else {
        return Err(DialerError::Header(format!(
            "not our lease: {:?}",
            incoming.lease
        )));
    };
    let (secure, info) = e2ee::respond_serving(
        stream,
        cfg.identity.e2ee_keypair(),
        &lease.name,
        &lease.alpn,
        &shared.policy,
        cfg.handshake_timeout,
    )
    .await?;
    let (_handle, mut inner) = mux::spawn(
        secure,
        Side::Server,
        MuxConfig {
            max_streams: cfg.max_inner_streams,
            max_pending_accepts: cfg.max_pending_accepts,
            read_after_close: false,
            ..MuxConfig::default()
        },
    );
    let peer = PeerInfo {
        lease: lease.name.clone(),
        dialer_key: info.peer_static_key,
        alpn: info.alpn,
    };
    let idle = cfg.idle_session_timeout;
    let mut check = tokio::time::interval((idle / 4).max(Duration::from_millis(50)));
    let mut last_active = tokio::time::Instant::now();
    loop {
        tokio::select! {
            s = inner.accept() => {
                let Some(s) = s else { return Ok(()) };
                last_active = tokio::time::Instant::now();
                // A full accept queue refuses (resets) the stream rather than stalling others.
                if shared.tx.try_send((s, peer.clone())).is_err() {
                    tracing::warn!(lease = %peer.lease, "accept queue full; stream refused");
                }
            }
            _ = check.tick() => {
                if inner.live_streams() > 0 {
                    last_active = tokio::time::Instant::now();
                } else if last_active.elapsed() >= idle {
                    tracing::debug!(lease = %peer.lease, "idle e2ee session closed");
                    return Ok(());
                }
            }
            _ = shared.stop.cancelled() => return Ok(()),
        }
    }
}

//! End-to-end encryption between a dialer (Noise initiator, e.g. the gateway) and a lease owner
//! (responder): the handshake over a byte stream, plus the policy around it.
//!
//! * The prologue binds the protocol version and the lease name, so a handshake meant for one
//!   lease cannot be answered as another.
//! * Both handshake payloads carry a timestamp; one more than [`CLOCK_SKEW`] away from local
//!   time is refused as stale. The responder also remembers every initiator ephemeral key it
//!   saw within the window ([`ReplayCache`]) and refuses a repeat: a replayed first message
//!   never gets an answer.
//! * The responder may restrict which initiator static keys it accepts (the gateway's key).
//! * Handshake messages are framed like records: u16 length, then the Noise message.
//!
//! After the handshake the stream is a [`SecureStream`]. The relay in between only ever sees
//! these handshake messages and ciphertext.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use x25519_dalek::PublicKey;

use crate::noise::{Initiator, NoiseError, Responder, StaticKeypair};
use crate::protocol::{HandshakePayload, MAX_ALPN_BYTES, MAX_ALPN_ENTRIES};
use crate::record::SecureStream;

/// Largest acceptable distance between a peer's handshake timestamp and local time.
pub const CLOCK_SKEW: Duration = Duration::from_secs(30);
/// Largest handshake message accepted (payloads are tiny).
const MAX_HANDSHAKE_MESSAGE: usize = 2048;

/// Why a handshake failed. Every variant closes the stream.
#[derive(Debug, thiserror::Error)]
pub enum E2eeError {
    #[error("handshake: {0}")]
    Noise(#[from] NoiseError),
    #[error("handshake message malformed")]
    Malformed,
    #[error("handshake timestamp is {0:?} away from local time (stale or replayed)")]
    Stale(Duration),
    #[error("handshake replayed")]
    Replay,
    #[error("initiator key is not allowed to dial this lease")]
    InitiatorNotAllowed,
    #[error("no common ALPN protocol")]
    NoAlpn,
    #[error("handshake timed out")]
    Timeout,
    #[error("i/o during handshake: {0}")]
    Io(#[from] std::io::Error),
}

/// What each side knows about the other once the handshake is done.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The peer's authenticated static key.
    pub peer_static_key: PublicKey,
    /// The ALPN protocol agreed on, if any.
    pub alpn: Option<String>,
    pub handshake_hash: [u8; 32],
}

/// Noise prologue for a lease: protocol version and the NFC lease name.
pub fn prologue(lease: &str) -> Vec<u8> {
    [b"postern/1\0".as_slice(), lease.as_bytes()].concat()
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn check_timestamp(ts_ms: u64) -> Result<(), E2eeError> {
    let skew = Duration::from_millis(unix_millis().abs_diff(ts_ms));
    if skew > CLOCK_SKEW {
        return Err(E2eeError::Stale(skew));
    }
    Ok(())
}

fn decode_payload(bytes: &[u8]) -> Result<HandshakePayload, E2eeError> {
    let p = HandshakePayload::decode(bytes).map_err(|_| E2eeError::Malformed)?;
    if p.alpn.len() > MAX_ALPN_ENTRIES || p.alpn.iter().any(|a| a.len() > MAX_ALPN_BYTES) {
        return Err(E2eeError::Malformed);
    }
    Ok(p)
}

async fn write_message<T: AsyncWrite + Unpin>(io: &mut T, msg: &[u8]) -> Result<(), E2eeError> {
    let len = u16::try_from(msg.len()).map_err(|_| E2eeError::Malformed)?;
    let mut buf = Vec::with_capacity(2 + msg.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(msg);
    io.write_all(&buf).await?;
    io.flush().await?;
    Ok(())
}

async fn read_message<T: AsyncRead + Unpin>(io: &mut T) -> Result<Vec<u8>, E2eeError> {
    let len = io.read_u16().await? as usize;
    if len > MAX_HANDSHAKE_MESSAGE {
        return Err(E2eeError::Malformed);
    }
    let mut msg = vec![0u8; len];
    io.read_exact(&mut msg).await?;
    Ok(msg)
}

/// Runs the initiator side: `remote` is the responder's static key as pinned by the caller
/// (verified against the control plane's grant, never taken from the relay's word).
pub async fn initiate<T>(
    mut io: T,
    local: &StaticKeypair,
    remote: &PublicKey,
    lease: &str,
    alpn: &[String],
    timeout: Duration,
) -> Result<(SecureStream<T>, SessionInfo), E2eeError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut hs = Initiator::new(local, *remote, &prologue(lease));
    let payload = HandshakePayload {
        timestamp_unix_ms: unix_millis(),
        alpn: alpn.to_vec(),
    };
    let m1 = hs.write_message(&payload.encode_to_vec())?;
    let exchange = async {
        write_message(&mut io, &m1).await?;
        read_message(&mut io).await
    };
    let m2 = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| E2eeError::Timeout)??;
    let (payload, split) = hs.read_message(&m2)?;
    let payload = decode_payload(&payload)?;
    check_timestamp(payload.timestamp_unix_ms)?;
    let chosen = payload.alpn.into_iter().next();
    if let Some(a) = &chosen {
        if !alpn.is_empty() && !alpn.contains(a) {
            return Err(E2eeError::NoAlpn);
        }
    }
    let info = SessionInfo {
        peer_static_key: *remote,
        alpn: chosen,
        handshake_hash: split.handshake_hash,
    };
    Ok((SecureStream::new(io, split), info))
}

/// Who may dial, and what the responder speaks.
#[derive(Debug)]
pub struct ResponderPolicy {
    /// Initiator static keys allowed to dial; `None` accepts any authenticated initiator.
    pub allowed_initiators: Option<HashSet<[u8; 32]>>,
    /// ALPN protocols served, in preference order; empty accepts whatever the initiator asks.
    pub alpn: Vec<String>,
    pub replay: ReplayCache,
}

impl ResponderPolicy {
    pub fn new(allowed_initiators: Option<HashSet<[u8; 32]>>, alpn: Vec<String>) -> Self {
        Self {
            allowed_initiators,
            alpn,
            replay: ReplayCache::new(100_000),
        }
    }
}

/// The protocol a responder serving `served` (its preference order) picks from what the
/// initiator `offered`. The responder's preference decides, as a TLS server that sets its own
/// preference does: an initiator lists everything it can speak, and the side that knows the
/// service picks. A responder that states nothing takes the initiator's first choice.
fn choose_alpn(served: &[String], offered: &[String]) -> Result<Option<String>, E2eeError> {
    if offered.is_empty() {
        return Ok(served.first().cloned());
    }
    if served.is_empty() {
        return Ok(offered.first().cloned());
    }
    served
        .iter()
        .find(|a| offered.contains(a))
        .cloned()
        .map(Some)
        .ok_or(E2eeError::NoAlpn)
}

/// Runs the responder side for `lease`, serving the policy's ALPN protocols.
pub async fn respond<T>(
    io: T,
    local: &StaticKeypair,
    lease: &str,
    policy: &ResponderPolicy,
    timeout: Duration,
) -> Result<(SecureStream<T>, SessionInfo), E2eeError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    respond_serving(io, local, lease, &policy.alpn, policy, timeout).await
}

/// Runs the responder side for `lease`, which serves the ALPN protocols `served` (in
/// preference order; empty: whatever the initiator asks first).
pub async fn respond_serving<T>(
    mut io: T,
    local: &StaticKeypair,
    lease: &str,
    served: &[String],
    policy: &ResponderPolicy,
    timeout: Duration,
) -> Result<(SecureStream<T>, SessionInfo), E2eeError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let m1 = tokio::time::timeout(timeout, read_message(&mut io))
        .await
        .map_err(|_| E2eeError::Timeout)??;
    let mut hs = Responder::new(local, &prologue(lease));
    let hello = hs.read_message(&m1)?;
    let payload = decode_payload(&hello.payload)?;
    check_timestamp(payload.timestamp_unix_ms)?;
    if let Some(allowed) = &policy.allowed_initiators {
        if !allowed.contains(hello.static_key.as_bytes()) {
            return Err(E2eeError::InitiatorNotAllowed);
        }
    }
    if !policy.replay.insert_fresh(hello.ephemeral_key) {
        return Err(E2eeError::Replay);
    }
    let alpn = choose_alpn(served, &payload.alpn)?;
    let answer = HandshakePayload {
        timestamp_unix_ms: unix_millis(),
        alpn: alpn.iter().cloned().collect(),
    };
    let (m2, split) = hs.write_message(&answer.encode_to_vec())?;
    tokio::time::timeout(timeout, write_message(&mut io, &m2))
        .await
        .map_err(|_| E2eeError::Timeout)??;
    let info = SessionInfo {
        peer_static_key: hello.static_key,
        alpn,
        handshake_hash: split.handshake_hash,
    };
    Ok((SecureStream::new(io, split), info))
}

/// Initiator ephemeral keys seen within the timestamp window. Bounded: when full of entries
/// that are all still inside the window, new handshakes are refused (fail closed) rather than
/// forgetting keys that could still be replayed.
#[derive(Debug)]
pub struct ReplayCache {
    max: usize,
    ttl: Duration,
    inner: Mutex<ReplayInner>,
}

#[derive(Debug, Default)]
struct ReplayInner {
    seen: HashMap<[u8; 32], Instant>,
    order: VecDeque<([u8; 32], Instant)>,
}

impl ReplayCache {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            // A message is accepted for CLOCK_SKEW either side of now, so remember it twice that.
            ttl: CLOCK_SKEW * 2,
            inner: Mutex::new(ReplayInner::default()),
        }
    }

    /// Records `key`; false if it was seen within the window (or the cache is full).
    pub fn insert_fresh(&self, key: [u8; 32]) -> bool {
        let now = Instant::now();
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        while let Some(&(old, at)) = inner.order.front() {
            if now.duration_since(at) < self.ttl {
                break;
            }
            inner.order.pop_front();
            inner.seen.remove(&old);
        }
        if inner.seen.contains_key(&key) || inner.seen.len() >= self.max {
            return false;
        }
        inner.seen.insert(key, now);
        inner.order.push_back((key, now));
        true
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.seen.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    async fn run(
        lease_i: &str,
        lease_r: &str,
        policy: &ResponderPolicy,
        responder_key: &StaticKeypair,
        pinned: &PublicKey,
    ) -> (
        Result<SessionInfo, E2eeError>,
        Result<SessionInfo, E2eeError>,
    ) {
        let (a, b) = tokio::io::duplex(4096);
        let initiator_key = StaticKeypair::generate();
        let t = Duration::from_secs(2);
        let alpn = ["h2".to_string()];
        let (ri, rr) = tokio::join!(
            initiate(a, &initiator_key, pinned, lease_i, &alpn, t),
            respond(b, responder_key, lease_r, policy, t)
        );
        (ri.map(|(_, i)| i), rr.map(|(_, i)| i))
    }

    #[tokio::test]
    async fn handshake_agrees_on_hash_and_alpn() {
        let rk = StaticKeypair::generate();
        let policy = ResponderPolicy::new(None, vec!["http/1.1".into(), "h2".into()]);
        let (i, r) = run("svc", "svc", &policy, &rk, &rk.public()).await;
        let (i, r) = (i.unwrap(), r.unwrap());
        assert_eq!(i.handshake_hash, r.handshake_hash);
        assert_eq!(i.alpn.as_deref(), Some("h2"));
        assert_eq!(policy.replay.len(), 1);
    }

    #[test]
    fn the_responders_preference_decides() {
        let v = |s: &[&str]| s.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let gateway = v(&["http/1.1", "h2"]);
        let pick = |served: &[&str]| choose_alpn(&v(served), &gateway).unwrap();
        assert_eq!(pick(&["h2", "http/1.1"]).as_deref(), Some("h2"));
        assert_eq!(pick(&["http/1.1"]).as_deref(), Some("http/1.1"));
        assert_eq!(
            pick(&[]).as_deref(),
            Some("http/1.1"),
            "no preference: the offer's first"
        );
        assert!(matches!(
            choose_alpn(&v(&["grpc"]), &gateway),
            Err(E2eeError::NoAlpn)
        ));
        assert_eq!(
            choose_alpn(&v(&["h2"]), &[]).unwrap().as_deref(),
            Some("h2")
        );
    }

    #[tokio::test]
    async fn wrong_pinned_key_fails() {
        let rk = StaticKeypair::generate();
        let other = StaticKeypair::generate();
        let policy = ResponderPolicy::new(None, vec![]);
        let (i, r) = run("svc", "svc", &policy, &rk, &other.public()).await;
        assert!(i.is_err());
        assert!(matches!(r, Err(E2eeError::Noise(NoiseError::Decrypt))));
    }

    #[tokio::test]
    async fn lease_name_is_bound_by_the_prologue() {
        let rk = StaticKeypair::generate();
        let policy = ResponderPolicy::new(None, vec![]);
        let (i, r) = run("svc-a", "svc-b", &policy, &rk, &rk.public()).await;
        assert!(i.is_err());
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn unlisted_initiator_is_refused() {
        let rk = StaticKeypair::generate();
        let policy = ResponderPolicy::new(Some(HashSet::from([[9u8; 32]])), vec![]);
        let (_, r) = run("svc", "svc", &policy, &rk, &rk.public()).await;
        assert!(matches!(r, Err(E2eeError::InitiatorNotAllowed)));
    }

    #[test]
    fn replay_cache_refuses_repeats_and_is_bounded() {
        let cache = ReplayCache::new(2);
        assert!(cache.insert_fresh([1; 32]));
        assert!(!cache.insert_fresh([1; 32]));
        assert!(cache.insert_fresh([2; 32]));
        assert!(!cache.insert_fresh([3; 32]), "full cache fails closed");
    }
}

//! The Noise IK handshake (`Noise_IK_25519_ChaChaPoly_SHA256`) as a plain state machine.
//!
//! No I/O and no policy here: [`Initiator`] and [`Responder`] turn handshake messages into
//! bytes and back, and [`Split`] yields the two transport [`CipherState`]s. The responder's
//! static key is known to the initiator in advance (IK), so the very first message is already
//! encrypted to it and authenticates the initiator's static key. Timestamps, replay refusal and
//! ALPN live one layer up in `e2ee`.
//!
//! Built from curve25519-dalek (through [`crate::dh`], which also caches static-static DH
//! results per peer), `chacha20poly1305`, `hkdf` and `sha2`; interoperability with the
//! independent `snow` implementation is tested in both roles.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use hkdf::Hkdf;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use x25519_dalek::PublicKey;
use zeroize::{Zeroize, Zeroizing};

use crate::dh::{self, CachedPeer, PeerCache, PeerPoint, Point, Secret};

/// The full Noise protocol name; exactly 32 bytes, so it is also the initial hash.
pub const PROTOCOL_NAME: &[u8; 32] = b"Noise_IK_25519_ChaChaPoly_SHA256";
/// Length of a DH public key.
pub const DH_LEN: usize = 32;
/// Length of the AEAD tag.
pub const TAG_LEN: usize = 16;
/// Largest Noise message (and so the largest record) on the wire.
pub const MAX_MESSAGE_LEN: usize = 65_535;

/// What can go wrong in the handshake or transport crypto.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoiseError {
    #[error("handshake message too short")]
    Truncated,
    #[error("message too long")]
    TooLong,
    #[error("decryption failed (wrong key or tampered data)")]
    Decrypt,
    #[error("non-contributory Diffie-Hellman result (low-order point)")]
    WeakKey,
    #[error("nonce space exhausted")]
    NonceExhausted,
}

/// An X25519 static key pair, with a bounded cache of per-peer DH state shared by its clones
/// (see [`crate::dh`]): a handshake with a peer seen before skips the static-static DH.
#[derive(Clone)]
pub struct StaticKeypair {
    secret: Secret,
    public: PublicKey,
    peers: PeerCache,
}

impl std::fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKeypair")
            .field("public", &self.public.as_bytes())
            .finish_non_exhaustive()
    }
}

impl StaticKeypair {
    pub fn generate() -> Self {
        Self::from_secret(random_secret())
    }

    pub fn from_secret_bytes(bytes: [u8; 32]) -> Self {
        Self::from_secret(Zeroizing::new(bytes))
    }

    fn from_secret(secret: Secret) -> Self {
        let public = PublicKey::from(dh::public_key(&secret));
        Self {
            secret,
            public,
            peers: PeerCache::new(dh::DEFAULT_PEER_CACHE),
        }
    }

    /// Remember DH state for at most `capacity` peers (0: none; every handshake then pays
    /// the static-static DH).
    pub fn with_peer_cache(mut self, capacity: usize) -> Self {
        self.peers = PeerCache::new(capacity);
        self
    }

    fn peer(&self, public: &PublicKey) -> Result<CachedPeer, NoiseError> {
        Ok(self.peers.get(&self.secret, *public.as_bytes())?)
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.secret.clone()
    }
}

fn random_secret() -> Secret {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::RngCore::fill_bytes(&mut OsRng, bytes.as_mut());
    bytes
}

impl From<dh::NonContributory> for NoiseError {
    fn from(_: dh::NonContributory) -> Self {
        Self::WeakKey
    }
}

fn nonce(n: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&n.to_le_bytes());
    Nonce::from(bytes)
}

/// One direction of an encrypted channel: a key and a counter nonce.
pub struct CipherState {
    cipher: ChaCha20Poly1305,
    n: u64,
}

impl std::fmt::Debug for CipherState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CipherState")
            .field("n", &self.n)
            .finish_non_exhaustive()
    }
}

impl CipherState {
    fn new(mut key: [u8; 32]) -> Self {
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&key));
        key.zeroize();
        Self { cipher, n: 0 }
    }

    /// The next nonce this state will use.
    pub fn nonce(&self) -> u64 {
        self.n
    }

    fn next_nonce(&mut self) -> Result<Nonce, NoiseError> {
        // 2^64-1 is reserved by Noise for rekeying.
        if self.n == u64::MAX {
            return Err(NoiseError::NonceExhausted);
        }
        let n = nonce(self.n);
        self.n += 1;
        Ok(n)
    }

    /// Encrypts `buf` in place and returns the tag to append.
    pub fn encrypt_in_place(&mut self, ad: &[u8], buf: &mut [u8]) -> Result<Tag, NoiseError> {
        let nonce = self.next_nonce()?;
        self.cipher
            .encrypt_in_place_detached(&nonce, ad, buf)
            .map_err(|_| NoiseError::TooLong)
    }

    /// Decrypts `buf` (ciphertext followed by the tag) in place; returns the plaintext length.
    /// On failure the buffer content is unspecified and must not be used.
    pub fn decrypt_in_place(&mut self, ad: &[u8], buf: &mut [u8]) -> Result<usize, NoiseError> {
        let Some(pt_len) = buf.len().checked_sub(TAG_LEN) else {
            return Err(NoiseError::Truncated);
        };
        let nonce = self.next_nonce()?;
        let (pt, tag) = buf.split_at_mut(pt_len);
        self.cipher
            .decrypt_in_place_detached(&nonce, ad, pt, Tag::from_slice(tag))
            .map_err(|_| NoiseError::Decrypt)?;
        Ok(pt_len)
    }

    fn encrypt_to_vec(&mut self, ad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        out.extend_from_slice(plaintext);
        let tag = self.encrypt_in_place(ad, &mut out)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    fn decrypt_to_vec(&mut self, ad: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let mut buf = ciphertext.to_vec();
        let n = self.decrypt_in_place(ad, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Noise `REKEY()`: the new key is the first 32 bytes of encrypting 32 zero bytes under
    /// nonce 2^64-1. The counter keeps running.
    pub fn rekey(&mut self) {
        let mut zeros = [0u8; 32];
        // Cannot fail: 32 bytes are far below the cipher's length limit.
        let _ = self
            .cipher
            .encrypt_in_place_detached(&nonce(u64::MAX), &[], &mut zeros);
        *self = Self {
            n: self.n,
            ..Self::new(zeros)
        };
        zeros.zeroize();
    }
}

/// Noise `SymmetricState`: chaining key, handshake hash and the current handshake cipher.
struct SymmetricState {
    ck: Zeroizing<[u8; 32]>,
    h: [u8; 32],
    cipher: Option<CipherState>,
}

impl SymmetricState {
    fn new(prologue: &[u8]) -> Self {
        let mut s = Self {
            ck: Zeroizing::new(*PROTOCOL_NAME),
            h: *PROTOCOL_NAME,
            cipher: None,
        };
        s.mix_hash(prologue);
        s
    }

    fn mix_hash(&mut self, data: &[u8]) {
        let mut hasher = Sha256::new();
        hasher.update(self.h);
        hasher.update(data);
        self.h = hasher.finalize().into();
    }

    fn hkdf2(&self, ikm: &[u8]) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
        let mut okm = Zeroizing::new([0u8; 64]);
        // Noise's HKDF is RFC 5869 extract-then-expand with the chaining key as salt and an
        // empty info; 64 bytes is always a valid output length for SHA-256.
        let _ = Hkdf::<Sha256>::new(Some(self.ck.as_ref()), ikm).expand(&[], okm.as_mut());
        let mut a = Zeroizing::new([0u8; 32]);
        let mut b = Zeroizing::new([0u8; 32]);
        a.copy_from_slice(&okm[..32]);
        b.copy_from_slice(&okm[32..]);
        (a, b)
    }

    fn mix_key(&mut self, ikm: &[u8]) {
        let (ck, k) = self.hkdf2(ikm);
        self.ck = ck;
        self.cipher = Some(CipherState::new(*k));
    }

    fn encrypt_and_hash(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let out = match self.cipher.as_mut() {
            Some(c) => c.encrypt_to_vec(&self.h, plaintext)?,
            None => plaintext.to_vec(),
        };
        self.mix_hash(&out);
        Ok(out)
    }

    fn decrypt_and_hash(&mut self, ciphertext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let out = match self.cipher.as_mut() {
            Some(c) => c.decrypt_to_vec(&self.h, ciphertext)?,
            None => ciphertext.to_vec(),
        };
        self.mix_hash(ciphertext);
        Ok(out)
    }

    fn split(&self) -> (CipherState, CipherState) {
        let (k1, k2) = self.hkdf2(&[]);
        (CipherState::new(*k1), CipherState::new(*k2))
    }
}

/// Transport keys after a completed handshake.
#[derive(Debug)]
pub struct Split {
    pub send: CipherState,
    pub recv: CipherState,
    /// The final handshake hash: a unique, authenticated id of this session.
    pub handshake_hash: [u8; 32],
}

fn take<'a>(msg: &mut &'a [u8], n: usize) -> Result<&'a [u8], NoiseError> {
    if msg.len() < n {
        return Err(NoiseError::Truncated);
    }
    let (head, tail) = msg.split_at(n);
    *msg = tail;
    Ok(head)
}

fn public_key(bytes: &[u8]) -> Result<[u8; 32], NoiseError> {
    bytes.try_into().map_err(|_| NoiseError::Truncated)
}

/// The initiator's side: `-> e, es, s, ss` then `<- e, ee, se`.
pub struct Initiator {
    sym: SymmetricState,
    s: StaticKeypair,
    e: Secret,
    rs: PublicKey,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("noise::Initiator")
    }
}

impl Initiator {
    /// `rs` is the responder's static key, known (pinned) in advance.
    pub fn new(s: &StaticKeypair, rs: PublicKey, prologue: &[u8]) -> Self {
        let mut sym = SymmetricState::new(prologue);
        sym.mix_hash(rs.as_bytes());
        Self {
            sym,
            s: s.clone(),
            e: random_secret(),
            rs,
        }
    }

    /// First message, carrying `payload` encrypted to the responder.
    pub fn write_message(&mut self, payload: &[u8]) -> Result<Vec<u8>, NoiseError> {
        if payload.len() + DH_LEN * 2 + TAG_LEN * 2 > MAX_MESSAGE_LEN {
            return Err(NoiseError::TooLong);
        }
        let rs = self.s.peer(&self.rs)?;
        let [e_pub, es] =
            dh::x25519_all([(&self.e, Point::Base), (&self.e, Point::Peer(&rs.point))])?;
        let mut out = Vec::with_capacity(DH_LEN * 2 + TAG_LEN * 2 + payload.len());
        out.extend_from_slice(e_pub.as_ref());
        self.sym.mix_hash(e_pub.as_ref());
        self.sym.mix_key(es.as_ref());
        out.extend(self.sym.encrypt_and_hash(self.s.public.as_bytes())?);
        self.sym.mix_key(rs.ss.as_ref());
        out.extend(self.sym.encrypt_and_hash(payload)?);
        Ok(out)
    }

    /// Reads the responder's answer; returns its payload and the transport keys.
    pub fn read_message(mut self, msg: &[u8]) -> Result<(Vec<u8>, Split), NoiseError> {
        let mut rest = msg;
        let re = PeerPoint::new(public_key(take(&mut rest, DH_LEN)?)?);
        self.sym.mix_hash(re.as_bytes());
        let [ee, se] = dh::x25519_all([
            (&self.e, Point::Peer(&re)),
            (&self.s.secret, Point::Peer(&re)),
        ])?;
        self.sym.mix_key(ee.as_ref());
        self.sym.mix_key(se.as_ref());
        let payload = self.sym.decrypt_and_hash(rest)?;
        let (c1, c2) = self.sym.split();
        Ok((
            payload,
            Split {
                send: c1,
                recv: c2,
                handshake_hash: self.sym.h,
            },
        ))
    }
}

/// What the responder learns from the first message.
#[derive(Debug, Clone)]
pub struct InitiatorHello {
    /// The initiator's authenticated static key.
    pub static_key: PublicKey,
    /// The initiator's ephemeral key: unique per handshake, the key for replay detection.
    pub ephemeral_key: [u8; 32],
    pub payload: Vec<u8>,
}

/// The responder's side.
pub struct Responder {
    sym: SymmetricState,
    s: StaticKeypair,
    re: Option<PeerPoint>,
    rs: Option<CachedPeer>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("noise::Responder")
    }
}

impl Responder {
    pub fn new(s: &StaticKeypair, prologue: &[u8]) -> Self {
        let mut sym = SymmetricState::new(prologue);
        sym.mix_hash(s.public.as_bytes());
        Self {
            sym,
            s: s.clone(),
            re: None,
            rs: None,
        }
    }

    /// Reads the initiator's first message.
    pub fn read_message(&mut self, msg: &[u8]) -> Result<InitiatorHello, NoiseError> {
        if msg.len() > MAX_MESSAGE_LEN {
            return Err(NoiseError::TooLong);
        }
        let mut rest = msg;
        let re = PeerPoint::new(public_key(take(&mut rest, DH_LEN)?)?);
        self.sym.mix_hash(re.as_bytes());
        self.sym.mix_key(re.dh(&self.s.secret)?.as_ref());
        let static_key = PublicKey::from(public_key(
            &self
                .sym
                .decrypt_and_hash(take(&mut rest, DH_LEN + TAG_LEN)?)?,
        )?);
        let rs = self.s.peer(&static_key)?;
        self.sym.mix_key(rs.ss.as_ref());
        let payload = self.sym.decrypt_and_hash(rest)?;
        let ephemeral_key = *re.as_bytes();
        self.re = Some(re);
        self.rs = Some(rs);
        Ok(InitiatorHello {
            static_key,
            ephemeral_key,
            payload,
        })
    }

    /// Answers with `payload`; returns the message and the transport keys.
    pub fn write_message(mut self, payload: &[u8]) -> Result<(Vec<u8>, Split), NoiseError> {
        let (Some(re), Some(rs)) = (self.re.take(), self.rs.take()) else {
            return Err(NoiseError::Truncated);
        };
        if payload.len() + DH_LEN + TAG_LEN > MAX_MESSAGE_LEN {
            return Err(NoiseError::TooLong);
        }
        let e = random_secret();
        let [e_pub, ee, se] = dh::x25519_all([
            (&e, Point::Base),
            (&e, Point::Peer(&re)),
            (&e, Point::Peer(&rs.point)),
        ])?;
        let mut out = Vec::with_capacity(DH_LEN + TAG_LEN + payload.len());
        out.extend_from_slice(e_pub.as_ref());
        self.sym.mix_hash(e_pub.as_ref());
        self.sym.mix_key(ee.as_ref());
        self.sym.mix_key(se.as_ref());
        out.extend(self.sym.encrypt_and_hash(payload)?);
        let (c1, c2) = self.sym.split();
        Ok((
            out,
            Split {
                send: c2,
                recv: c1,
                handshake_hash: self.sym.h,
            },
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn handshake(prologue_i: &[u8], prologue_r: &[u8]) -> Result<(Split, Split), NoiseError> {
        let is = StaticKeypair::generate();
        let rs = StaticKeypair::generate();
        let mut i = Initiator::new(&is, rs.public(), prologue_i);
        let mut r = Responder::new(&rs, prologue_r);
        let m1 = i.write_message(b"hello")?;
        let hello = r.read_message(&m1)?;
        assert_eq!(hello.static_key.as_bytes(), is.public().as_bytes());
        assert_eq!(hello.payload, b"hello");
        let (m2, rsplit) = r.write_message(b"welcome")?;
        let (payload, isplit) = i.read_message(&m2)?;
        assert_eq!(payload, b"welcome");
        Ok((isplit, rsplit))
    }

    #[test]
    fn handshake_yields_matching_transport_keys() {
        let (mut i, mut r) = handshake(b"p", b"p").unwrap();
        assert_eq!(i.handshake_hash, r.handshake_hash);
        let mut buf = b"secret".to_vec();
        let tag = i.send.encrypt_in_place(&[], &mut buf).unwrap();
        buf.extend_from_slice(&tag);
        let n = r.recv.decrypt_in_place(&[], &mut buf).unwrap();
        assert_eq!(&buf[..n], b"secret");
    }

    #[test]
    fn prologue_mismatch_fails_the_handshake() {
        assert_eq!(
            handshake(b"lease-a", b"lease-b").unwrap_err(),
            NoiseError::Decrypt
        );
    }

    #[test]
    fn wrong_responder_key_is_refused() {
        let is = StaticKeypair::generate();
        let real = StaticKeypair::generate();
        let impostor = StaticKeypair::generate();
        let mut i = Initiator::new(&is, real.public(), b"");
        let mut r = Responder::new(&impostor, b"");
        let m1 = i.write_message(b"").unwrap();
        assert_eq!(r.read_message(&m1).unwrap_err(), NoiseError::Decrypt);
    }

    #[test]
    fn rekey_keeps_both_sides_in_step() {
        let (mut i, mut r) = handshake(b"", b"").unwrap();
        i.send.rekey();
        r.recv.rekey();
        let mut buf = b"after rekey".to_vec();
        let tag = i.send.encrypt_in_place(&[], &mut buf).unwrap();
        buf.extend_from_slice(&tag);
        assert!(r.recv.decrypt_in_place(&[], &mut buf).is_ok());
    }

    #[test]
    fn garbage_first_messages_are_errors_not_panics() {
        let rs = StaticKeypair::generate();
        for len in [0usize, 1, 31, 32, 33, 79, 80, 95, 96, 200] {
            let mut r = Responder::new(&rs, b"");
            assert!(r.read_message(&vec![7u8; len]).is_err());
        }
    }
}

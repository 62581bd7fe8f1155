//! X25519 for the Noise handshake, at a third to a half of the cost of the Montgomery ladder,
//! and a bounded cache of static-static results.
//!
//! x25519-dalek computes X25519 with the Montgomery ladder on curve25519-dalek's serial field
//! arithmetic: ~42 µs per operation on the 2-core CI machine, and an IK handshake does four
//! variable-base operations and one fixed-base per side. The same value — the u-coordinate of
//! `[clamp(k)]P` — is computed here by mapping `P` to the birationally equivalent Edwards curve
//! and using curve25519-dalek's variable-base multiplication, which picks a vector backend at
//! run time: AVX-512 IFMA where the CPU has it (~13 µs; the workspace's `.cargo/config.toml`
//! compiles that backend in), else AVX2 (~23 µs). A point with no Edwards counterpart (on the
//! quadratic twist, or `u = -1`) goes through the ladder, so the result is RFC 7748's for every
//! input; the tests compare both against x25519-dalek. Either path is constant-time in the
//! secret scalar; the branch depends only on the public point.
//!
//! Three more savings:
//! * a peer point converted once serves every DH with it (`ee` and `se` share the peer's
//!   ephemeral);
//! * [`x25519_all`] maps several Edwards results back to Montgomery form with one field
//!   inversion between them instead of one each;
//! * [`PeerCache`] keeps, per remote static key, its converted point and the static-static
//!   result `ss`, which is the same for every handshake between the same two static keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::montgomery::MontgomeryPoint;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// A DH result that is all zeros: the peer's point has small order, so the result carries no
/// secret (Noise requires refusing it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("non-contributory Diffie-Hellman result (low-order point)")]
pub struct NonContributory;

/// An X25519 secret scalar (clamped at use, as RFC 7748 specifies).
pub type Secret = Zeroizing<[u8; 32]>;

/// The public key for `secret`: `X25519(secret, 9)` through the precomputed base-point table.
pub fn public_key(secret: &Secret) -> [u8; 32] {
    MontgomeryPoint::mul_base_clamped(**secret).to_bytes()
}

/// A peer's public key, converted once for any number of DH operations with it.
#[derive(Clone)]
pub struct PeerPoint {
    u: MontgomeryPoint,
    edwards: Option<EdwardsPoint>,
}

impl PeerPoint {
    pub fn new(public: [u8; 32]) -> Self {
        let u = MontgomeryPoint(public);
        // Either sign gives the same u-coordinate after multiplication: [k](-P) = -[k]P.
        let edwards = u.to_edwards(0);
        Self { u, edwards }
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.u.0
    }

    /// `X25519(secret, self)`, refusing the all-zero result.
    pub fn dh(&self, secret: &Secret) -> Result<Secret, NonContributory> {
        let [shared] = x25519_all([(secret, Point::Peer(self))])?;
        Ok(shared)
    }
}

/// The point a scalar multiplies: the base point (which gives a public key) or a peer's
/// point (which gives a DH result).
#[derive(Clone, Copy)]
pub enum Point<'a> {
    Base,
    Peer(&'a PeerPoint),
}

/// `X25519(secret, point)` for each pair, refusing an all-zero result.
///
/// Mapping an Edwards result back to its Montgomery u-coordinate costs a field inversion
/// (~3 µs); the results here share one (curve25519-dalek's batch conversion), so a handshake
/// step that needs three results — an ephemeral public key and two DH with it — pays for
/// one inversion instead of three.
pub fn x25519_all<const N: usize>(
    ops: [(&Secret, Point<'_>); N],
) -> Result<[Secret; N], NonContributory> {
    let mut out: [Secret; N] = std::array::from_fn(|_| Zeroizing::new([0u8; 32]));
    let mut edwards = Zeroizing::new(Vec::with_capacity(N));
    let mut on_edwards = [false; N];
    for ((secret, point), (slot, on_edwards)) in ops.iter().zip(out.iter_mut().zip(&mut on_edwards))
    {
        match point {
            Point::Base => edwards.push(EdwardsPoint::mul_base_clamped(***secret)),
            Point::Peer(PeerPoint {
                edwards: Some(p), ..
            }) => edwards.push(p.mul_clamped(***secret)),
            Point::Peer(PeerPoint { u, edwards: None }) => {
                **slot = u.mul_clamped(***secret).to_bytes();
                continue;
            }
        }
        *on_edwards = true;
    }
    let converted = Zeroizing::new(EdwardsPoint::to_montgomery_batch(&edwards));
    let slots = out.iter_mut().zip(on_edwards).filter(|(_, e)| *e);
    for ((slot, _), u) in slots.zip(converted.iter()) {
        **slot = u.to_bytes();
    }
    if out.iter().any(|r| bool::from(r.ct_eq(&[0u8; 32]))) {
        return Err(NonContributory);
    }
    Ok(out)
}

/// Default number of remote static keys whose DH state a key pair remembers.
pub const DEFAULT_PEER_CACHE: usize = 1024;

/// What is remembered per remote static key.
#[derive(Clone)]
pub struct CachedPeer {
    pub point: PeerPoint,
    /// `X25519(own static, peer static)`.
    pub ss: Secret,
}

/// Remembers, per remote static key, its converted point and the static-static DH result.
/// Bounded: when full, an arbitrary entry makes room (a flood of new keys costs a returning
/// peer one extra DH, never memory). Shared by the clones of one key pair.
#[derive(Clone)]
pub struct PeerCache {
    capacity: usize,
    entries: Arc<Mutex<HashMap<[u8; 32], CachedPeer>>>,
}

impl PeerCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Arc::default(),
        }
    }

    /// The cached state for `peer`, computing (and remembering) it on a miss.
    pub fn get(&self, own: &Secret, peer: [u8; 32]) -> Result<CachedPeer, NonContributory> {
        if let Some(hit) = self.lock().get(&peer) {
            return Ok(hit.clone());
        }
        let point = PeerPoint::new(peer);
        let ss = point.dh(own)?;
        let entry = CachedPeer { point, ss };
        if self.capacity > 0 {
            let mut entries = self.lock();
            if entries.len() >= self.capacity && !entries.contains_key(&peer) {
                if let Some(victim) = entries.keys().next().copied() {
                    entries.remove(&victim);
                }
            }
            entries.insert(peer, entry.clone());
        }
        Ok(entry)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], CachedPeer>> {
        // A panic while holding the lock cannot leave the map inconsistent (every update is a
        // single insert or remove), so a poisoned lock is still usable.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use rand::RngCore;
    use x25519_dalek::{PublicKey, StaticSecret};

    fn reference(k: [u8; 32], u: [u8; 32]) -> [u8; 32] {
        StaticSecret::from(k)
            .diffie_hellman(&PublicKey::from(u))
            .to_bytes()
    }

    fn ours(k: [u8; 32], u: [u8; 32]) -> [u8; 32] {
        match PeerPoint::new(u).dh(&Zeroizing::new(k)) {
            Ok(s) => *s,
            Err(NonContributory) => [0; 32],
        }
    }

    #[test]
    fn rfc7748_vectors() {
        let hex = |s: &str| -> [u8; 32] {
            let v: Vec<u8> = (0..32)
                .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            v.try_into().unwrap()
        };
        // RFC 7748 §5.2, first two vectors.
        assert_eq!(
            ours(
                hex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"),
                hex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
            ),
            hex("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")
        );
        assert_eq!(
            ours(
                hex("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d"),
                hex("e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493")
            ),
            hex("95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957")
        );
        // RFC 7748 §6.1 key agreement.
        let alice = hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        assert_eq!(
            public_key(&Zeroizing::new(alice)),
            hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
    }

    #[test]
    fn matches_x25519_dalek_on_random_and_special_points() {
        let mut rng = rand::rngs::OsRng;
        let mut specials: Vec<[u8; 32]> = vec![[0; 32], [0xff; 32]];
        let mut one = [0u8; 32];
        one[0] = 1;
        specials.push(one);
        // p - 1 (u = -1 has no Edwards counterpart), p, p + 1 (non-canonical encodings).
        let mut p_minus_1 = [0xffu8; 32];
        p_minus_1[0] = 0xec;
        p_minus_1[31] = 0x7f;
        specials.push(p_minus_1);
        let mut p = p_minus_1;
        p[0] = 0xed;
        specials.push(p);
        let mut p_plus_1 = p_minus_1;
        p_plus_1[0] = 0xee;
        specials.push(p_plus_1);
        for _ in 0..300 {
            let mut k = [0u8; 32];
            rng.fill_bytes(&mut k);
            // Random bytes: about half are points of the curve, half of its twist.
            let mut u = [0u8; 32];
            rng.fill_bytes(&mut u);
            assert_eq!(ours(k, u), reference(k, u), "u = {u:?}");
            for s in &specials {
                assert_eq!(ours(k, *s), reference(k, *s), "u = {s:?}");
            }
            let honest = public_key(&Zeroizing::new(u));
            assert_eq!(ours(k, honest), reference(k, honest));
        }
    }

    #[test]
    fn a_batch_matches_one_at_a_time_for_every_kind_of_point() {
        let mut rng = rand::rngs::OsRng;
        for _ in 0..100 {
            let mut k = Zeroizing::new([0u8; 32]);
            rng.fill_bytes(k.as_mut());
            let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
            rng.fill_bytes(&mut a);
            rng.fill_bytes(&mut b);
            // Random bytes land on the curve or on its twist (the ladder path) about equally.
            let (pa, pb) = (PeerPoint::new(a), PeerPoint::new(b));
            let [public, da, db] = x25519_all([
                (&k, Point::Base),
                (&k, Point::Peer(&pa)),
                (&k, Point::Peer(&pb)),
            ])
            .unwrap();
            assert_eq!(*public, public_key(&k));
            assert_eq!(*da, reference(*k, a));
            assert_eq!(*db, reference(*k, b));
        }
        let k = Zeroizing::new([7u8; 32]);
        let honest = PeerPoint::new(public_key(&Zeroizing::new([9u8; 32])));
        let low_order = PeerPoint::new([0; 32]);
        assert_eq!(
            x25519_all([(&k, Point::Peer(&honest)), (&k, Point::Peer(&low_order))]).err(),
            Some(NonContributory)
        );
    }

    #[test]
    fn low_order_points_are_refused() {
        let k = Zeroizing::new([7u8; 32]);
        assert_eq!(PeerPoint::new([0; 32]).dh(&k).err(), Some(NonContributory));
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(PeerPoint::new(one).dh(&k).err(), Some(NonContributory));
    }

    #[test]
    fn cache_is_bounded_and_returns_the_same_result() {
        let own = Zeroizing::new([5u8; 32]);
        let cache = PeerCache::new(4);
        let peer = public_key(&Zeroizing::new([9u8; 32]));
        let first = cache.get(&own, peer).unwrap();
        assert_eq!(*first.ss, reference(*own, peer));
        for i in 0..20u8 {
            let other = public_key(&Zeroizing::new([i; 32]));
            cache.get(&own, other).unwrap();
            assert!(cache.len() <= 4);
        }
        assert_eq!(*cache.get(&own, peer).unwrap().ss, *first.ss);
        assert!(cache.get(&own, [0; 32]).is_err());
        assert!(PeerCache::new(0).get(&own, peer).is_ok());
        assert!(PeerCache::new(0).is_empty());
    }
}

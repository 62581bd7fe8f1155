//! Our Noise IK implementation talks to `snow`, an independent implementation, in both roles:
//! handshake, transport messages both ways, and rekeying.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use postern_sdk::noise::{Initiator, Responder, Split, StaticKeypair, TAG_LEN};

const PATTERN: &str = "Noise_IK_25519_ChaChaPoly_SHA256";
const PROLOGUE: &[u8] = b"postern/1\0interop";

fn seal(split: &mut Split, plaintext: &[u8]) -> Vec<u8> {
    let mut buf = plaintext.to_vec();
    let tag = split.send.encrypt_in_place(&[], &mut buf).unwrap();
    buf.extend_from_slice(&tag);
    buf
}

fn open(split: &mut Split, ciphertext: &[u8]) -> Vec<u8> {
    let mut buf = ciphertext.to_vec();
    let n = split.recv.decrypt_in_place(&[], &mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn our_initiator_with_snow_responder() {
    let ours = StaticKeypair::generate();
    let theirs = snow::Builder::new(PATTERN.parse().unwrap())
        .generate_keypair()
        .unwrap();
    let their_public =
        x25519_dalek::PublicKey::from(<[u8; 32]>::try_from(&theirs.public[..]).unwrap());

    let mut responder = snow::Builder::new(PATTERN.parse().unwrap())
        .local_private_key(&theirs.private)
        .prologue(PROLOGUE)
        .build_responder()
        .unwrap();
    let mut initiator = Initiator::new(&ours, their_public, PROLOGUE);

    let m1 = initiator.write_message(b"from postern").unwrap();
    let mut buf = vec![0u8; 65535];
    let n = responder.read_message(&m1, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"from postern");
    assert_eq!(
        responder.get_remote_static().unwrap(),
        ours.public().as_bytes()
    );

    let n = responder.write_message(b"from snow", &mut buf).unwrap();
    let (payload, mut split) = initiator.read_message(&buf[..n]).unwrap();
    assert_eq!(payload, b"from snow");
    assert_eq!(responder.get_handshake_hash(), &split.handshake_hash[..]);
    let mut transport = responder.into_transport_mode().unwrap();

    for i in 0..3u8 {
        let ct = seal(&mut split, &[i; 100]);
        assert_eq!(ct.len(), 100 + TAG_LEN);
        let n = transport.read_message(&ct, &mut buf).unwrap();
        assert_eq!(&buf[..n], &[i; 100]);
        let n = transport.write_message(&[i; 7], &mut buf).unwrap();
        assert_eq!(open(&mut split, &buf[..n]), vec![i; 7]);
    }

    split.send.rekey();
    transport.rekey_incoming();
    let ct = seal(&mut split, b"after rekey");
    let n = transport.read_message(&ct, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"after rekey");
}

#[test]
fn snow_initiator_with_our_responder() {
    let ours = StaticKeypair::generate();
    let theirs = snow::Builder::new(PATTERN.parse().unwrap())
        .generate_keypair()
        .unwrap();

    let mut initiator = snow::Builder::new(PATTERN.parse().unwrap())
        .local_private_key(&theirs.private)
        .remote_public_key(ours.public().as_bytes())
        .prologue(PROLOGUE)
        .build_initiator()
        .unwrap();
    let mut responder = Responder::new(&ours, PROLOGUE);

    let mut buf = vec![0u8; 65535];
    let n = initiator.write_message(b"from snow", &mut buf).unwrap();
    let hello = responder.read_message(&buf[..n]).unwrap();
    assert_eq!(hello.payload, b"from snow");
    assert_eq!(&hello.static_key.as_bytes()[..], &theirs.public[..]);

    let (m2, mut split) = responder.write_message(b"from postern").unwrap();
    let n = initiator.read_message(&m2, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"from postern");
    assert_eq!(initiator.get_handshake_hash(), &split.handshake_hash[..]);
    let mut transport = initiator.into_transport_mode().unwrap();

    let n = transport.write_message(b"request", &mut buf).unwrap();
    assert_eq!(open(&mut split, &buf[..n]), b"request");
    let ct = seal(&mut split, b"response");
    let n = transport.read_message(&ct, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"response");

    transport.rekey_outgoing();
    split.recv.rekey();
    let n = transport.write_message(b"rekeyed", &mut buf).unwrap();
    assert_eq!(open(&mut split, &buf[..n]), b"rekeyed");
}

#[test]
fn snow_refuses_our_handshake_under_a_different_prologue() {
    let ours = StaticKeypair::generate();
    let theirs = snow::Builder::new(PATTERN.parse().unwrap())
        .generate_keypair()
        .unwrap();
    let their_public =
        x25519_dalek::PublicKey::from(<[u8; 32]>::try_from(&theirs.public[..]).unwrap());
    let mut responder = snow::Builder::new(PATTERN.parse().unwrap())
        .local_private_key(&theirs.private)
        .prologue(b"postern/1\0other-lease")
        .build_responder()
        .unwrap();
    let mut initiator = Initiator::new(&ours, their_public, PROLOGUE);
    let m1 = initiator.write_message(b"x").unwrap();
    let mut buf = vec![0u8; 1024];
    assert!(responder.read_message(&m1, &mut buf).is_err());
}

//! The E2EE record layer reading attacker-controlled ciphertext.
//!
//! Raw mode (every input): a `SecureStream` whose transport carries the input and then ends
//! must fail (bad record, or truncation without close_notify) and hand out no plaintext.
//! Structured mode (first byte even): the rest of the input (after a 2-byte bit selector) is
//! sealed as one genuine record plus close_notify with the peer's send `CipherState`. If the
//! first byte is a multiple of 4 the wire is delivered intact and must read back exactly;
//! otherwise one bit of the first record (length prefix included), chosen by the selector, is
//! flipped and the read must fail without yielding a single byte.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use postern_sdk::noise::{CipherState, Initiator, Responder, Split, StaticKeypair, TAG_LEN};
use postern_sdk::record::{SecureStream, MAX_RECORD_PLAINTEXT};
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

const PROLOGUE: &[u8] = b"postern/1\0fuzz";

struct Fixture {
    initiator: StaticKeypair,
    responder: StaticKeypair,
    rt: Runtime,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        initiator: StaticKeypair::from_secret_bytes([2; 32]),
        responder: StaticKeypair::from_secret_bytes([1; 32]),
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime"),
    })
}

/// A real in-process handshake: (initiator split, responder split).
fn splits(f: &Fixture) -> (Split, Split) {
    let mut i = Initiator::new(&f.initiator, f.responder.public(), PROLOGUE);
    let mut r = Responder::new(&f.responder, PROLOGUE);
    r.read_message(&i.write_message(b"").expect("m1"))
        .expect("read m1");
    let (m2, rs) = r.write_message(b"").expect("m2");
    let (_, is) = i.read_message(&m2).expect("read m2");
    (is, rs)
}

fn seal(send: &mut CipherState, plaintext: &[u8], wire: &mut Vec<u8>) {
    wire.extend_from_slice(&((plaintext.len() + TAG_LEN) as u16).to_be_bytes());
    let start = wire.len();
    wire.extend_from_slice(plaintext);
    let tag = send
        .encrypt_in_place(&[], &mut wire[start..])
        .expect("seal");
    wire.extend_from_slice(&tag);
}

/// Feeds `wire` to a `SecureStream` (then ends the transport) and reads to the end.
async fn read_all(wire: &[u8], split: Split) -> (std::io::Result<usize>, Vec<u8>) {
    let (mut peer, io) = duplex(wire.len() + 64);
    peer.write_all(wire).await.expect("prefill");
    peer.shutdown().await.expect("close");
    let mut stream = SecureStream::new(io, split);
    let mut out = Vec::new();
    let res = stream.read_to_end(&mut out).await;
    (res, out)
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    f.rt.block_on(async {
        let (_, rsplit) = splits(f);
        let (res, out) = read_all(data, rsplit).await;
        assert!(res.is_err(), "forged stream accepted");
        assert!(out.is_empty(), "forged stream yielded {} bytes", out.len());

        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        if mode % 2 != 0 {
            return;
        }
        let (selector, plaintext) = match rest {
            [a, b, pt @ ..] => (u16::from_be_bytes([*a, *b]) as usize, pt),
            _ => (0, rest),
        };
        let plaintext = &plaintext[..plaintext.len().min(MAX_RECORD_PLAINTEXT)];
        let (mut isplit, rsplit) = splits(f);
        let mut wire = Vec::new();
        seal(&mut isplit.send, plaintext, &mut wire);
        let first_len = wire.len();
        seal(&mut isplit.send, &[], &mut wire);

        if mode % 4 == 0 {
            let (res, out) = read_all(&wire, rsplit).await;
            assert_eq!(res.expect("genuine records refused"), plaintext.len());
            assert_eq!(out, plaintext);
        } else {
            let bit = selector % (first_len * 8);
            wire[bit / 8] ^= 1 << (bit % 8);
            let (res, out) = read_all(&wire, rsplit).await;
            assert!(res.is_err(), "tampered record accepted (bit {bit})");
            assert!(
                out.is_empty(),
                "tampered record yielded {} bytes (bit {bit})",
                out.len()
            );
        }
    });
});

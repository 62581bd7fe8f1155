//! The Noise IK handshake and the e2ee handshake driver, fed attacker-controlled bytes.
//!
//! Raw mode (every input): `Responder::read_message`, `Initiator::read_message` after a real
//! first message, and `e2ee::respond` over a stream that carries the input and then ends —
//! all must return errors (none of them can be forged without the keys), never panic or hang.
//! Structured mode: a *valid* first message (fixed initiator key) whose payload is fuzz bytes
//! (first byte even) or a fresh `HandshakePayload` with fuzz ALPN strings (odd); `respond`
//! then exercises payload decoding, timestamp and ALPN policy, and whenever it succeeds the
//! initiator must accept its answer with the same handshake hash.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use postern_sdk::e2ee::{prologue, respond, ResponderPolicy};
use postern_sdk::noise::{Initiator, Responder, StaticKeypair};
use postern_sdk::protocol::HandshakePayload;
use prost::Message;
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

const LEASE: &str = "fuzz";
const TIMEOUT: Duration = Duration::from_millis(100);

struct Keys {
    responder: StaticKeypair,
    initiator: StaticKeypair,
    rt: Runtime,
}

fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| Keys {
        responder: StaticKeypair::from_secret_bytes([1; 32]),
        initiator: StaticKeypair::from_secret_bytes([2; 32]),
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime"),
    })
}

fn framed(msg: &[u8]) -> Vec<u8> {
    let len = u16::try_from(msg.len()).expect("message fits u16");
    [&len.to_be_bytes()[..], msg].concat()
}

fuzz_target!(|data: &[u8]| {
    let k = keys();
    let prologue = prologue(LEASE);
    assert_eq!(prologue, b"postern/1\0fuzz");

    assert!(Responder::new(&k.responder, &prologue)
        .read_message(data)
        .is_err());

    let mut init = Initiator::new(&k.initiator, k.responder.public(), &prologue);
    init.write_message(b"").expect("first message");
    assert!(init.read_message(data).is_err());

    k.rt.block_on(async {
        // Raw: the input is the whole stream from the initiator.
        let (mut peer, io) = duplex(data.len() + 4096);
        peer.write_all(data).await.expect("prefill");
        peer.shutdown().await.expect("close");
        let policy = ResponderPolicy::new(None, vec![]);
        assert!(respond(io, &k.responder, LEASE, &policy, TIMEOUT)
            .await
            .is_err());

        // Structured: an authentic first message carrying a fuzz-chosen payload.
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        let payload = if mode % 2 == 0 {
            rest.to_vec()
        } else {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            HandshakePayload {
                timestamp_unix_ms: now.as_millis() as u64,
                alpn: rest
                    .split(|&b| b == b',')
                    .map(|a| String::from_utf8_lossy(a).into())
                    .collect(),
            }
            .encode_to_vec()
        };
        let mut init = Initiator::new(&k.initiator, k.responder.public(), &prologue);
        let Ok(m1) = init.write_message(&payload) else {
            return;
        };
        let (mut peer, io) = duplex(m1.len() + 4096);
        peer.write_all(&framed(&m1)).await.expect("prefill");
        let policy = ResponderPolicy::new(None, vec!["h2".into(), "http/1.1".into()]);
        let Ok((stream, info)) = respond(io, &k.responder, LEASE, &policy, TIMEOUT).await else {
            return;
        };
        assert_eq!(info.peer_static_key, k.initiator.public());
        assert!(
            info.alpn.as_ref().is_some_and(|a| policy.alpn.contains(a)),
            "{:?}",
            info.alpn
        );
        let len = peer.read_u16().await.expect("answer length") as usize;
        let mut m2 = vec![0; len];
        peer.read_exact(&mut m2).await.expect("answer");
        let (answer, split) = init
            .read_message(&m2)
            .expect("initiator rejects a valid answer");
        assert_eq!(split.handshake_hash, *stream.handshake_hash());
        let answer = HandshakePayload::decode(answer.as_slice()).expect("answer payload");
        assert_eq!(answer.alpn.first(), info.alpn.as_ref());
    });
});

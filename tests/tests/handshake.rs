//! The E2EE handshake through a real relay: replayed and stale first messages get no answer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use postern_sdk::e2ee::prologue;
use postern_sdk::noise::{Initiator, StaticKeypair};
use postern_sdk::protocol::{permission, HandshakePayload};
use postern_sdk::relay_client::{ClientOptions, RelaySession};
use postern_sdk::Identity;
use postern_tests::*;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A dialer-side relay session with a DIAL grant, for hand-made handshakes.
async fn raw_dialer(net: &TestNet) -> RelaySession {
    let me = Identity::generate();
    let grants = vec![net.grant(&me, "*", permission::DIAL, Duration::from_secs(60))];
    RelaySession::connect(&net.relay_url(), &me, &grants, ClientOptions::default())
        .await
        .unwrap()
        .0
}

fn first_message(
    responder: &x25519_dalek::PublicKey,
    lease: &str,
    timestamp_ms: u64,
) -> (Initiator, Vec<u8>) {
    let mut hs = Initiator::new(&StaticKeypair::generate(), *responder, &prologue(lease));
    let payload = HandshakePayload {
        timestamp_unix_ms: timestamp_ms,
        alpn: vec![],
    };
    let msg = hs.write_message(&payload.encode_to_vec()).unwrap();
    (hs, msg)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Sends a framed handshake message; returns the answer, or None if the stream just closed.
async fn exchange(stream: &mut postern_sdk::mux::MuxStream, msg: &[u8]) -> Option<Vec<u8>> {
    stream
        .write_all(&(msg.len() as u16).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(msg).await.unwrap();
    stream.flush().await.unwrap();
    let read = async {
        let len = stream.read_u16().await.ok()? as usize;
        let mut answer = vec![0u8; len];
        stream.read_exact(&mut answer).await.ok()?;
        Some(answer)
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("no hang")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_first_message_is_refused() {
    let net = TestNet::start().await;
    let (owner, mut listener) = net.listen("svc").await;
    tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    let relay = raw_dialer(&net).await;

    let (mut s1, key) = relay
        .connect_lease("svc", "", &owner.verifying_key())
        .await
        .unwrap();
    let (hs, m1) = first_message(&key, "svc", now_ms());
    let m2 = exchange(&mut s1, &m1)
        .await
        .expect("a fresh handshake is answered");
    assert!(hs.read_message(&m2).is_ok());

    // An eavesdropper (the relay, say) replays the same first message on a new stream.
    let (mut s2, _) = relay
        .connect_lease("svc", "", &owner.verifying_key())
        .await
        .unwrap();
    assert!(
        exchange(&mut s2, &m1).await.is_none(),
        "replay must get no answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_first_message_is_refused() {
    let net = TestNet::start().await;
    let (owner, mut listener) = net.listen("svc").await;
    tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    let relay = raw_dialer(&net).await;

    for skew_ms in [-120_000i64, 120_000] {
        let (mut s, key) = relay
            .connect_lease("svc", "", &owner.verifying_key())
            .await
            .unwrap();
        let ts = (now_ms() as i64 + skew_ms) as u64;
        let (_hs, m1) = first_message(&key, "svc", ts);
        assert!(
            exchange(&mut s, &m1).await.is_none(),
            "skew {skew_ms} ms must be refused"
        );
    }
    // Within the window it works.
    let (mut s, key) = relay
        .connect_lease("svc", "", &owner.verifying_key())
        .await
        .unwrap();
    let (_hs, m1) = first_message(&key, "svc", now_ms() - 5_000);
    assert!(exchange(&mut s, &m1).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_for_another_lease_name_is_refused() {
    let net = TestNet::start().await;
    let (owner, mut listener) = net.listen("svc").await;
    tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    let relay = raw_dialer(&net).await;
    let (mut s, key) = relay
        .connect_lease("svc", "", &owner.verifying_key())
        .await
        .unwrap();
    // Right key, but the prologue names another lease: the responder cannot decrypt it.
    let (_hs, m1) = first_message(&key, "other", now_ms());
    assert!(exchange(&mut s, &m1).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_admits_only_allowed_dialers() {
    let net = TestNet::start().await;
    let owner = Identity::generate();
    let allowed = Identity::generate();
    let mut cfg = net.listener_config(&owner, "svc");
    cfg.allowed_dialers = Some([*allowed.e2ee_keypair().public().as_bytes()].into());
    let mut listener = postern_sdk::Listener::bind(cfg).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"welcome").await;
                let _ = s.shutdown().await;
            });
        }
    });

    // A stranger with a valid DIAL grant gets through the relay but not the handshake.
    let stranger = net.dialer();
    let err = stranger.dial(&target("svc", &owner)).await.unwrap_err();
    assert!(matches!(err, postern_sdk::DialError::Handshake(_)), "{err}");

    let grants = vec![net.grant(&allowed, "*", permission::DIAL, Duration::from_secs(60))];
    let friend = postern_sdk::Dialer::new(postern_sdk::DialerConfig::new(
        net.relay_url(),
        allowed,
        grants,
    ));
    let mut s = friend.dial(&target("svc", &owner)).await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"welcome");
}

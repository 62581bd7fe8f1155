//! What the relay can see: only ciphertext. And what a meddling relay can do: nothing that
//! yields data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use postern_sdk::{Dialer, DialerConfig, Identity, Listener, RelayUrl};
use postern_tests::tap::{Tamper, Tap};
use postern_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MARKER: &[u8] = b"POSTERN-PLAINTEXT-MARKER-7f3a9c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_never_sees_plaintext_in_either_direction() {
    let net = TestNet::start().await;
    // Taps in front of the relay: one on the agent's connection, one on the dialer's.
    let (agent_tap, agent_addr) = Tap::start(net.relay_addr).await;
    let (dialer_tap, dialer_addr) = Tap::start(net.relay_addr).await;

    let owner = Identity::generate();
    let mut cfg = net.listener_config(&owner, "secret-svc");
    cfg.relays = vec![RelayUrl::parse(&format!("ws://{agent_addr}")).unwrap()];
    let mut listener = Listener::bind(cfg).await.unwrap();
    // The service answers every request with the marker, so it flows back too.
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = vec![0u8; MARKER.len() * 100];
                s.read_exact(&mut got).await.unwrap();
                assert!(got.windows(MARKER.len()).any(|w| w == MARKER));
                for _ in 0..100 {
                    s.write_all(MARKER).await.unwrap();
                }
                s.shutdown().await.unwrap();
            });
        }
    });

    let me = Identity::generate();
    let grants = vec![net.grant(
        &me,
        "*",
        postern_sdk::protocol::permission::DIAL,
        std::time::Duration::from_secs(60),
    )];
    let dialer = Dialer::new(DialerConfig::new(
        RelayUrl::parse(&format!("ws://{dialer_addr}")).unwrap(),
        me,
        grants,
    ));
    for _ in 0..3 {
        let mut s = dialer.dial(&target("secret-svc", &owner)).await.unwrap();
        for _ in 0..100 {
            s.write_all(MARKER).await.unwrap();
        }
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        assert_eq!(back.len(), MARKER.len() * 100);
        assert!(back.windows(MARKER.len()).any(|w| w == MARKER));
    }

    // The taps work: they carried the traffic and see what the relay is meant to see.
    assert!(agent_tap.len() > MARKER.len() * 600);
    assert!(dialer_tap.len() > MARKER.len() * 600);
    assert!(
        agent_tap.contains(b"secret-svc"),
        "the lease name is visible by design"
    );
    assert!(dialer_tap.contains(b"secret-svc"));
    // ...and never the plaintext, in any direction.
    assert!(
        !agent_tap.contains(MARKER),
        "plaintext on the agent <-> relay wire"
    );
    assert!(
        !dialer_tap.contains(MARKER),
        "plaintext on the dialer <-> relay wire"
    );
    assert!(!agent_tap.contains(&MARKER[..12]));
    assert!(!dialer_tap.contains(&MARKER[..12]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_ciphertext_bit_closes_the_stream_without_yielding_data() {
    let net = TestNet::start().await;
    let (tamper, tamper_addr) = Tamper::start(net.relay_addr).await;
    let owner = Identity::generate();
    let mut cfg = net.listener_config(&owner, "svc");
    cfg.relays = vec![RelayUrl::parse(&format!("ws://{tamper_addr}")).unwrap()];
    let mut listener = Listener::bind(cfg).await.unwrap();

    let dialer = net.dialer();
    let mut s = dialer.dial(&target("svc", &owner)).await.unwrap();
    s.write_all(b"hello").await.unwrap();
    s.flush().await.unwrap();
    let (mut inner, _) = listener.accept().await.unwrap();
    let mut buf = [0u8; 5];
    inner.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");

    // Now the relay side flips one bit in the next message carrying our data.
    tamper.arm();
    s.write_all(&[0x5a; 4096]).await.unwrap();
    s.flush().await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    let err = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), inner.read(&mut chunk))
            .await
            .expect("the tampered stream must end, not hang")
        {
            Ok(0) => panic!("a tampered session must not look like a clean end of stream"),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(tamper.flipped(), 1);
    assert!(
        got.is_empty(),
        "{} bytes of tampered data were delivered",
        got.len()
    );
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted, "{err}");
}

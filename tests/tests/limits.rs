//! Every count has a limit, and hitting it gives a clear answer instead of a hang or a crash.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use postern_sdk::dialer::DialError;
use postern_sdk::listener::ListenError;
use postern_sdk::protocol::{permission, ConnectCode, ErrorCode};
use postern_sdk::relay_client::{ClientError, ClientOptions, RelaySession};
use postern_sdk::{Dialer, DialerConfig, Identity, LeaseSpec, Listener};
use postern_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn echo_lease(net: &TestNet, lease: &str) -> Identity {
    let (owner, mut listener) = net.listen(lease).await;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    owner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_stream_limit_answers_busy() {
    let net = TestNet::start_with(|c| c.limits.max_streams_per_lease = 1).await;
    let owner = echo_lease(&net, "svc").await;
    // Each dialer holds one E2EE session = one spliced relay stream.
    let first = net.dialer();
    let _s = first.dial(&target("svc", &owner)).await.unwrap();
    match net.dialer().dial(&target("svc", &owner)).await {
        Err(DialError::Relay(ClientError::Connect { code, .. })) => {
            assert_eq!(code, ConnectCode::Busy)
        }
        other => panic!("expected busy, got {other:?}"),
    }
    // Inner streams of the existing session are not relay streams: they are not limited here.
    for _ in 0..10 {
        first.dial(&target("svc", &owner)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_connection_limit_refuses_extra_clients() {
    let net = TestNet::start_with(|c| c.limits.max_sessions = 2).await;
    let me = Identity::generate();
    let grants = vec![net.grant(&me, "*", permission::DIAL, Duration::from_secs(60))];
    let opts = ClientOptions {
        connect_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    let a = RelaySession::connect(&net.relay_url(), &me, &grants, opts.clone())
        .await
        .unwrap();
    let _b = RelaySession::connect(&net.relay_url(), &me, &grants, opts.clone())
        .await
        .unwrap();
    assert!(
        RelaySession::connect(&net.relay_url(), &me, &grants, opts.clone())
            .await
            .is_err()
    );
    // A slot frees up when a client leaves (the close travels through both yamux sessions and
    // the WebSocket close handshake; allow for a loaded machine).
    drop(a);
    let mut ok = false;
    for _ in 0..500 {
        if RelaySession::connect(&net.relay_url(), &me, &grants, opts.clone())
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "a freed connection slot must be reusable");
}

#[tokio::test]
async fn leases_per_session_limit() {
    let net = TestNet::start_with(|c| c.limits.max_leases_per_session = 1).await;
    let owner = Identity::generate();
    let mut cfg = net.listener_config(&owner, "*");
    cfg.leases = vec![LeaseSpec::new("one"), LeaseSpec::new("two")];
    match Listener::bind(cfg).await {
        Err(ListenError::Relay(ClientError::Relay { code, .. })) => {
            assert_eq!(code, ErrorCode::Limit)
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialer_closes_idle_sessions_and_reopens_on_demand() {
    let net = TestNet::start().await;
    let owner = echo_lease(&net, "svc").await;
    let me = Identity::generate();
    let grants = vec![net.grant(&me, "*", permission::DIAL, Duration::from_secs(60))];
    let mut cfg = DialerConfig::new(net.relay_url(), me, grants);
    cfg.idle_timeout = Duration::from_millis(200);
    let dialer = Dialer::new(cfg);

    let mut s = dialer.dial(&target("svc", &owner)).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    // An open stream keeps the session, however long it is quiet.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(dialer.session_count(), 1);
    drop(s);
    let mut closed = false;
    for _ in 0..100 {
        if dialer.session_count() == 0 {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "an idle session must be closed");
    let mut s = dialer.dial(&target("svc", &owner)).await.unwrap();
    s.write_all(b"y").await.unwrap();
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"y");
    assert_eq!(dialer.handshakes(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialer_reestablishes_a_session_after_the_owner_restarts() {
    let net = TestNet::start().await;
    let owner = Identity::generate();
    let cfg = net.listener_config(&owner, "svc");
    let listener = Listener::bind(cfg.clone()).await.unwrap();
    let dialer = net.dialer();
    let serve = |mut listener: Listener| {
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = s.write_all(b"hi").await;
                    let _ = s.shutdown().await;
                });
            }
        })
    };
    let task = serve(listener);
    let mut s = dialer.dial(&target("svc", &owner)).await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hi");

    // The service restarts: its E2EE sessions die with it.
    task.abort();
    let _ = task.await;
    let mut listener = None;
    for _ in 0..100 {
        match Listener::bind(cfg.clone()).await {
            Ok(l) => {
                listener = Some(l);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let _task = serve(listener.expect("the owner re-registers its lease"));
    let mut last = None;
    for _ in 0..100 {
        match dialer.dial(&target("svc", &owner)).await {
            Ok(mut s) => {
                let mut got = Vec::new();
                if s.read_to_end(&mut got).await.is_ok() && got == b"hi" {
                    assert!(dialer.handshakes() >= 2);
                    return;
                }
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no new session after the owner restarted: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_closes_idle_e2ee_sessions_and_the_dialer_recovers() {
    let net = TestNet::start().await;
    let owner = Identity::generate();
    let mut cfg = net.listener_config(&owner, "svc");
    cfg.idle_session_timeout = Duration::from_millis(200);
    let mut listener = Listener::bind(cfg).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"hi").await;
                let _ = s.shutdown().await;
            });
        }
    });
    let dialer = net.dialer();
    for round in 0..2 {
        let mut got = Vec::new();
        let mut ok = false;
        // The first dial after the owner dropped the session may race its close.
        for _ in 0..50 {
            got.clear();
            if let Ok(mut s) = dialer.dial(&target("svc", &owner)).await {
                if s.read_to_end(&mut got).await.is_ok() && got == b"hi" {
                    ok = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ok, "round {round}");
        // Wait for the owner's side to find the session idle and the relay splice to end.
        let mut spliced = true;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if net
                .relay
                .metrics()
                .splices_active
                .load(std::sync::atomic::Ordering::Relaxed)
                == 0
            {
                spliced = false;
                break;
            }
        }
        assert!(!spliced, "idle session not closed in round {round}");
    }
    assert!(dialer.handshakes() >= 2);
}

//! Lease ownership and grants, end to end against a real relay.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use postern_sdk::dialer::DialError;
use postern_sdk::listener::ListenError;
use postern_sdk::protocol::{permission, ConnectCode, ErrorCode};
use postern_sdk::relay_client::ClientError;
use postern_sdk::{Dialer, DialerConfig, Identity, Listener};
use postern_tests::*;

fn relay_code(err: ListenError) -> ErrorCode {
    match err {
        ListenError::Relay(ClientError::Relay { code, .. }) => code,
        other => panic!("expected a relay refusal, got {other}"),
    }
}

#[tokio::test]
async fn second_identity_cannot_hijack_a_live_lease() {
    let net = TestNet::start().await;
    let (_owner, _held) = net.listen("mine").await;
    let thief = Identity::generate();
    // The thief even holds a valid grant for the name: ownership of a live lease still wins.
    let err = Listener::bind(net.listener_config(&thief, "mine"))
        .await
        .unwrap_err();
    assert_eq!(relay_code(err), ErrorCode::LeaseTaken);
}

#[tokio::test]
async fn expired_grant_is_refused() {
    let net = TestNet::start().await;
    let owner = Identity::generate();
    let mut cfg = net.listener_config(&owner, "svc");
    cfg.grants = vec![net.grant(&owner, "svc", permission::LISTEN, Duration::ZERO)];
    let err = Listener::bind(cfg).await.unwrap_err();
    assert_eq!(relay_code(err), ErrorCode::GrantExpired);
}

#[tokio::test]
async fn forged_grant_is_refused() {
    let net = TestNet::start().await;
    let owner = Identity::generate();
    let forger = Identity::generate();
    let mut cfg = net.listener_config(&owner, "svc");
    cfg.grants = vec![postern_sdk::grant::mint(
        &forger,
        &postern_sdk::protocol::LeaseGrant {
            workspace: "test".into(),
            lease_pattern: "*".into(),
            identity_key: owner.verifying_key().to_bytes().to_vec(),
            issued_at_unix: 0,
            expires_at_unix: postern_sdk::grant::unix_now() + 3600,
            permissions: permission::LISTEN,
        },
    )];
    let err = Listener::bind(cfg).await.unwrap_err();
    assert_eq!(relay_code(err), ErrorCode::GrantInvalid);
}

#[tokio::test]
async fn someone_elses_grant_is_refused() {
    let net = TestNet::start().await;
    let owner = Identity::generate();
    let other = Identity::generate();
    let mut cfg = net.listener_config(&owner, "svc");
    cfg.grants = vec![net.grant(&other, "svc", permission::LISTEN, Duration::from_secs(60))];
    let err = Listener::bind(cfg).await.unwrap_err();
    assert_eq!(relay_code(err), ErrorCode::GrantInvalid);
}

#[tokio::test]
async fn grant_must_cover_the_lease_name() {
    let net = TestNet::start().await;
    let owner = Identity::generate();
    let mut cfg = net.listener_config(&owner, "svc");
    cfg.grants = vec![net.grant(
        &owner,
        "other-*",
        permission::LISTEN,
        Duration::from_secs(60),
    )];
    let err = Listener::bind(cfg).await.unwrap_err();
    assert_eq!(relay_code(err), ErrorCode::Forbidden);
}

#[tokio::test]
async fn dialing_needs_a_dial_grant_and_a_live_lease() {
    let net = TestNet::start().await;
    let (owner, _l) = net.listen("svc").await;
    // A listen-only grant does not allow dialing.
    let me = Identity::generate();
    let grants = vec![net.grant(&me, "*", permission::LISTEN, Duration::from_secs(60))];
    let dialer = Dialer::new(DialerConfig::new(net.relay_url(), me, grants));
    match dialer.dial(&target("svc", &owner)).await {
        Err(DialError::Relay(ClientError::Connect { code, .. })) => {
            assert_eq!(code, ConnectCode::Forbidden)
        }
        other => panic!("expected forbidden, got {other:?}"),
    }
    // Unknown lease.
    match net.dialer().dial(&target("nobody-home", &owner)).await {
        Err(DialError::Relay(ClientError::Connect { code, .. })) => {
            assert_eq!(code, ConnectCode::NotFound)
        }
        other => panic!("expected not found, got {other:?}"),
    }
}

#[tokio::test]
async fn dialer_refuses_a_key_not_signed_by_the_granted_identity() {
    let net = TestNet::start().await;
    let (_owner, _l) = net.listen("svc").await;
    let impostor = Identity::generate();
    // The dialer was told (by the control plane) that `impostor` owns the lease; the relay's
    // answer carries the real owner's key and signature, which must not be trusted.
    match net.dialer().dial(&target("svc", &impostor)).await {
        Err(DialError::Relay(ClientError::KeyMismatch(lease))) => assert_eq!(lease, "svc"),
        other => panic!("expected a key mismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn released_lease_is_gone_and_can_be_taken() {
    let net = TestNet::start().await;
    let (owner, listener) = net.listen("svc").await;
    listener.close();
    drop(listener);
    // Deregistration is asynchronous; wait for the table to empty.
    for _ in 0..200 {
        if net.relay.lease_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(net.relay.lease_count(), 0);
    let _ = owner;
    let (_new_owner, _l) = net.listen("svc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_is_reachable_again_after_relay_restart() {
    let net = TestNet::start().await;
    let origin = spawn_origin().await;
    let owner = net.expose("phoenix", origin).await;
    let dialer = net.dialer();
    let resp = http1_client(dialer.dial(&target("phoenix", &owner)).await.unwrap())
        .await
        .send_request(get("/hello"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let net = net.restart_relay().await;
    assert_eq!(net.relay.lease_count(), 0, "a fresh relay knows no leases");

    // Neither side is told anything: the agent reconnects and re-registers by itself, the
    // dialer re-establishes its relay session and E2EE session on the next dial.
    //
    // A dial made before the dialer has read the old relay's reset may still open a stream on
    // the cached E2EE session (opening a stream costs no round trip), and the request on it
    // then fails. That is the crash itself, not a failure to recover, so it is retried too.
    let mut last_err = None;
    for _ in 0..200 {
        match dialer.dial(&target("phoenix", &owner)).await {
            Ok(stream) => match http1_client(stream).await.send_request(get("/hello")).await {
                Ok(resp) => {
                    assert_eq!(resp.status(), 200);
                    assert_eq!(body_bytes(resp).await, "hello from origin");
                    return;
                }
                Err(e) => last_err = Some(format!("request: {e}")),
            },
            Err(e) => last_err = Some(format!("dial: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("lease never came back: {last_err:?}");
}

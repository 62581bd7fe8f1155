//! The relay's operations surface from the outside: the Prometheus listener, reload through
//! the handle, and many relays in one process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use postern_config::RelayConfig;
use postern_relay::Relay;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

fn config() -> RelayConfig {
    let mut cfg = RelayConfig::with_control_plane_keys(vec![KEY.into()]);
    cfg.listen.addr = "127.0.0.1:0".parse().unwrap();
    cfg
}

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn many_relays_serve_metrics_on_their_own_ports() {
    let mut handles = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let relay = Relay::bind(config()).await.unwrap();
        handles.push(relay.handle().unwrap());
        tasks.push(tokio::spawn(relay.run()));
    }
    let addrs: std::collections::HashSet<_> =
        handles.iter().map(|h| h.metrics_addr().unwrap()).collect();
    assert_eq!(addrs.len(), 3);
    let addr = handles[0].metrics_addr().unwrap();
    let resp = get(addr, "/metrics").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{resp}"
    );
    for name in [
        "postern_relay_sessions ",
        "postern_relay_sessions_total ",
        "postern_relay_leases ",
        "postern_relay_streams_active ",
        "postern_relay_streams_total ",
        "postern_relay_spliced_bytes_total{direction=\"dialer_to_owner\"}",
        "postern_relay_refusals_total{code=\"forbidden\"}",
        "postern_relay_config_reloads_total{result=\"ok\"}",
    ] {
        assert!(resp.contains(name), "{name} missing:\n{resp}");
    }
    assert!(get(addr, "/").await.starts_with("HTTP/1.1 404"));
    for h in &handles {
        h.shutdown();
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn metrics_can_be_disabled_and_a_taken_port_is_an_error() {
    let mut cfg = config();
    cfg.metrics.enabled = false;
    let relay = Relay::bind(cfg).await.unwrap();
    assert_eq!(relay.handle().unwrap().metrics_addr(), None);

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = config();
    cfg.metrics.listen = taken.local_addr().unwrap();
    let err = Relay::bind(cfg).await.unwrap_err();
    assert!(
        matches!(err, postern_relay::RelayError::Bind { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn reload_through_the_handle_counts_and_reports() {
    let relay = Relay::bind(config()).await.unwrap();
    let handle = relay.handle().unwrap();
    let mut next = config();
    next.limits.max_sessions = 1;
    next.metrics.enabled = false;
    let outcome = handle.reload(next).unwrap();
    assert_eq!(outcome.needs_restart, vec!["metrics"]);
    let mut bad = config();
    bad.control_plane.public_keys = vec!["not base64".into()];
    assert!(handle.reload(bad).is_err());
    let text = handle.render_metrics();
    assert!(
        text.contains("postern_relay_config_reloads_total{result=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("postern_relay_config_reloads_total{result=\"failed\"} 1"),
        "{text}"
    );
    assert!(
        handle.metrics_addr().is_some(),
        "the listener stays until a restart"
    );
}

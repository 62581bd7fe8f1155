//! The relay's listener: TCP (+ rustls) → HTTP/1.1 (hyper) serving `/healthz` and upgrading
//! `/v1/tunnel` to a WebSocket that carries one yamux session.
//!
//! Connections are bounded by `limits.max_sessions`; request headers must arrive within the
//! hello timeout (slowloris); graceful shutdown stops accepting, refuses new work and waits up
//! to `timeouts.shutdown_grace` for spliced streams to drain before dropping the rest. Limits
//! and timeouts are read from the settings snapshot at each accept, so a reload applies to the
//! next connection. The Prometheus endpoint is not here: it has a listener of its own
//! (`metrics`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use postern_config::TlsFiles;
use postern_sdk::relay_client::{tune_socket, ws_config, TUNNEL_PATH};
use postern_sdk::websocket::WsByteStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::state::RelayState;
use crate::{session, RelayError};

/// Loads and checks a PEM certificate chain and key, with errors that name the file.
pub fn load_tls(files: &TlsFiles) -> Result<TlsAcceptor, RelayError> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls_err(&files.cert, e))?;
    if certs.is_empty() {
        return Err(RelayError::Tls(format!(
            "{}: no certificates found",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| tls_err(&files.key, e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(postern_sdk::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| RelayError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| RelayError::Tls(format!("{}: {e}", files.cert.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn tls_err(path: &Path, e: impl std::fmt::Display) -> RelayError {
    RelayError::Tls(format!("{}: {e}", path.display()))
}

pub(crate) async fn accept_loop(
    state: Arc<RelayState>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = state.shutdown.cancelled() => return,
        };
        let max_sessions = state.settings.load().limits.max_sessions;
        let Some(slot) = state.sessions.try_acquire(max_sessions) else {
            tracing::warn!(%peer, "connection limit reached; closing");
            continue;
        };
        tune_socket(&tcp);
        let state2 = Arc::clone(&state);
        let tls = tls.clone();
        state
            .tasks
            .spawn(serve_connection(state2, tcp, peer, tls, Arc::new(slot)));
    }
}

/// A connection's slot of `limits.max_sessions`: held by the HTTP connection and, after an
/// upgrade, by the tunnel session, until both are gone.
type Slot = Arc<crate::slots::Slot>;

async fn serve_connection(
    state: Arc<RelayState>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    slot: Slot,
) {
    let hello = state.settings.load().timeouts.hello;
    match tls {
        Some(acceptor) => match tokio::time::timeout(hello, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => serve_http(state, TokioIo::new(stream), peer, slot).await,
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "tls handshake failed"),
            Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
        },
        None => serve_http(state, TokioIo::new(tcp), peer, slot).await,
    }
}

async fn serve_http<I>(state: Arc<RelayState>, io: I, peer: SocketAddr, slot: Slot)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let hello = state.settings.load().timeouts.hello;
    let service_state = Arc::clone(&state);
    let service = hyper::service::service_fn(move |req| {
        let state = Arc::clone(&service_state);
        let slot = Arc::clone(&slot);
        async move { Ok::<_, Infallible>(route(state, req, peer, slot)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(hello)
        .max_buf_size(64 * 1024)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::select! {
        r = conn => if let Err(e) = r {
            tracing::debug!(%peer, error = %e, "http connection error");
        },
        _ = state.hard_stop.cancelled() => {}
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp
}

fn route(
    state: Arc<RelayState>,
    req: Request<Incoming>,
    peer: SocketAddr,
    slot: Slot,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => health(&state),
        TUNNEL_PATH => upgrade(state, req, peer, slot),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn health(state: &RelayState) -> Response<Full<Bytes>> {
    let m = &state.metrics;
    let (status, word) = if state.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
    } else {
        (StatusCode::OK, "ok")
    };
    let body = format!(
        "{{\"status\":\"{word}\",\"sessions\":{},\"leases\":{},\"splices\":{},\"bytes_spliced\":{}}}\n",
        m.sessions_active.load(Ordering::Relaxed),
        state.leases.len(),
        m.splices_active.load(Ordering::Relaxed),
        m.bytes_spliced(),
    );
    let mut resp = text(status, body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn upgrade(
    state: Arc<RelayState>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    slot: Slot,
) -> Response<Full<Bytes>> {
    if state.shutdown.is_cancelled() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    let headers = req.headers();
    let is_ws = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13");
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).filter(|_| is_ws) else {
        return text(StatusCode::BAD_REQUEST, "websocket upgrade required\n");
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let max_ws = state.settings.load().limits.max_ws_message_bytes;
    let state2 = Arc::clone(&state);
    state.tasks.spawn(async move {
        let _slot = slot;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(ws_config(max_ws)),
        )
        .await;
        state2.metrics.session_started();
        session::run(Arc::clone(&state2), WsByteStream::new(ws), peer).await;
        state2.metrics.session_ended();
    });
    let mut resp = text(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let h = resp.headers_mut();
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

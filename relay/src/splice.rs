//! Connect-and-splice: a client asks for a lease on a new stream; the relay opens a stream into
//! the lease owner's session and copies bytes between the two until either side ends.
//!
//! The relay never decrypts: what it copies is the dialer's Noise handshake and records, which
//! it has no key for. It answers with a result code (not found, forbidden, busy, limit,
//! unreachable) before anything is spliced. Every wait is bounded: the connect request, the
//! open towards the owner, and the number of connects in flight.

use std::sync::Arc;

use postern_sdk::frame::{read_frame, write_frame};
use postern_sdk::lease_name;
use postern_sdk::mux::MuxStream;
use postern_sdk::protocol::{
    client_frame, permission, relay_frame, ClientFrame, ConnectCode, ConnectResult, Incoming,
    RelayFrame,
};
use tokio::io::AsyncWriteExt;

use crate::session::Client;
use crate::state::RelayState;

/// Buffer size for each direction of a splice.
const SPLICE_BUFFER: usize = 32 * 1024;

pub(crate) async fn handle_connect(
    state: Arc<RelayState>,
    client: Arc<Client>,
    mut stream: MuxStream,
) {
    let max = state.max_frame();
    let connect_timeout = state.config.timeouts.connect;
    let request = match tokio::time::timeout(
        connect_timeout,
        read_frame::<ClientFrame, _>(&mut stream, max),
    )
    .await
    {
        Ok(Ok(ClientFrame {
            msg: Some(client_frame::Msg::Connect(c)),
        })) => c,
        Ok(Ok(_)) => {
            return refuse(&state, stream, ConnectCode::Malformed, "expected connect").await;
        }
        Ok(Err(e)) => {
            return refuse(&state, stream, ConnectCode::Malformed, &e.to_string()).await;
        }
        Err(_) => return,
    };
    if state.shutdown.is_cancelled() {
        return refuse(
            &state,
            stream,
            ConnectCode::ShuttingDown,
            "relay is shutting down",
        )
        .await;
    }
    let Ok(name) = lease_name::normalize(&request.lease) else {
        return refuse(&state, stream, ConnectCode::NotFound, "no such lease").await;
    };
    if state.config.require_dial_grant && client.grant_for(&name, permission::DIAL).is_none() {
        return refuse(
            &state,
            stream,
            ConnectCode::Forbidden,
            "no grant to dial this lease",
        )
        .await;
    }
    let Some(route) = state.leases.route(&name, std::time::Instant::now()) else {
        return refuse(&state, stream, ConnectCode::NotFound, "no such lease").await;
    };
    let Ok(_pending) = Arc::clone(&state.pending_connects).try_acquire_owned() else {
        return refuse(
            &state,
            stream,
            ConnectCode::Limit,
            "relay connect limit reached",
        )
        .await;
    };
    let Ok(_slot) = Arc::clone(&route.streams).try_acquire_owned() else {
        return refuse(
            &state,
            stream,
            ConnectCode::Busy,
            "lease stream limit reached",
        )
        .await;
    };
    let open = async {
        let mut owner = route.owner.open().await.ok()?;
        let incoming = RelayFrame::new(relay_frame::Msg::Incoming(Incoming {
            lease: name.clone(),
            alpn: request.alpn.clone(),
        }));
        write_frame(&mut owner, &incoming, max).await.ok()?;
        Some(owner)
    };
    let Ok(Some(mut owner)) = tokio::time::timeout(connect_timeout, open).await else {
        return refuse(
            &state,
            stream,
            ConnectCode::Unreachable,
            "lease owner unreachable",
        )
        .await;
    };
    drop(_pending);
    let ok = RelayFrame::new(relay_frame::Msg::ConnectResult(ConnectResult {
        code: ConnectCode::Ok as i32,
        message: String::new(),
        e2ee_static_key: route.e2ee_static_key,
        static_key_signature: route.static_key_signature,
    }));
    if write_frame(&mut stream, &ok, max).await.is_err() {
        return;
    }
    state
        .metrics
        .splices_active
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let result = tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut owner, SPLICE_BUFFER, SPLICE_BUFFER) => r.ok(),
        _ = state.hard_stop.cancelled() => None,
    };
    state
        .metrics
        .splices_active
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    if let Some((up, down)) = result {
        state.metrics.record_spliced(up, down);
    }
    tracing::debug!(lease = %name, "splice ended");
}

async fn refuse(state: &RelayState, mut stream: MuxStream, code: ConnectCode, message: &str) {
    state.metrics.record_refused(code);
    let frame = RelayFrame::connect_refused(code, message);
    let _ = write_frame(&mut stream, &frame, state.max_frame()).await;
    let _ = stream.shutdown().await;
}

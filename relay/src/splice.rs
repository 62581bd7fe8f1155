//! Connect-and-splice: a client asks for a lease on a new stream; the relay opens a stream into
//! the lease owner's session and copies bytes between the two until either side ends.
//!
//! The relay never decrypts: what it copies is the dialer's Noise handshake and records, which
//! it has no key for. It answers with a result code (not found, forbidden, busy, limit,
//! unreachable) before anything is spliced. Every wait is bounded: the connect request, the
//! open towards the owner, and the number of connects in flight.
//!
//! Limits and timeouts come from the settings snapshot current when the connect arrives, so a
//! reload applies to the next connect. Bytes are counted as they flow (a spliced stream can
//! carry a lease's whole E2EE session for hours), by direction only: nothing about the lease
//! goes into a metric.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use postern_sdk::frame::{read_frame, write_frame};
use postern_sdk::lease_name;
use postern_sdk::mux::MuxStream;
use postern_sdk::protocol::{
    client_frame, permission, relay_frame, ClientFrame, ConnectCode, ConnectResult, Incoming,
    RelayFrame,
};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::client::Client;
use crate::state::RelayState;

/// Buffer size for each direction of a splice.
const SPLICE_BUFFER: usize = 32 * 1024;

pub(crate) async fn handle_connect(
    state: Arc<RelayState>,
    client: Arc<Client>,
    mut stream: MuxStream,
) {
    let max = client.max_frame;
    let settings = state.settings();
    let connect_timeout = settings.timeouts.connect;
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
            return refuse(
                &state,
                stream,
                max,
                ConnectCode::Malformed,
                "expected connect",
            )
            .await;
        }
        Ok(Err(e)) => {
            return refuse(&state, stream, max, ConnectCode::Malformed, &e.to_string()).await;
        }
        Err(_) => return,
    };
    if state.shutdown.is_cancelled() {
        return refuse(
            &state,
            stream,
            max,
            ConnectCode::ShuttingDown,
            "relay is shutting down",
        )
        .await;
    }
    let Ok(name) = lease_name::normalize(&request.lease) else {
        return refuse(&state, stream, max, ConnectCode::NotFound, "no such lease").await;
    };
    if settings.require_dial_grant && client.grant_for(&name, permission::DIAL).is_none() {
        return refuse(
            &state,
            stream,
            max,
            ConnectCode::Forbidden,
            "no grant to dial this lease",
        )
        .await;
    }
    let Some(route) = state.leases.route(&name, std::time::Instant::now()) else {
        return refuse(&state, stream, max, ConnectCode::NotFound, "no such lease").await;
    };
    let limits = &settings.limits;
    let Some(pending) = state
        .pending_connects
        .try_acquire(limits.max_pending_connects)
    else {
        return refuse(
            &state,
            stream,
            max,
            ConnectCode::Limit,
            "relay connect limit reached",
        )
        .await;
    };
    let Some(_slot) = route.streams.try_acquire(limits.max_streams_per_lease) else {
        return refuse(
            &state,
            stream,
            max,
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
    let Ok(Some(owner)) = tokio::time::timeout(connect_timeout, open).await else {
        return refuse(
            &state,
            stream,
            max,
            ConnectCode::Unreachable,
            "lease owner unreachable",
        )
        .await;
    };
    drop(pending);
    let ok = RelayFrame::new(relay_frame::Msg::ConnectResult(ConnectResult {
        code: ConnectCode::Ok as i32,
        message: String::new(),
        e2ee_static_key: route.e2ee_static_key,
        static_key_signature: route.static_key_signature,
    }));
    if write_frame(&mut stream, &ok, max).await.is_err() {
        return;
    }
    let metrics = &state.metrics;
    metrics.splice_started();
    let mut dialer = Counted::new(stream, metrics.dialer_to_owner.clone());
    let mut owner = Counted::new(owner, metrics.owner_to_dialer.clone());
    tokio::select! {
        _ = tokio::io::copy_bidirectional_with_sizes(&mut dialer, &mut owner, SPLICE_BUFFER, SPLICE_BUFFER) => {}
        _ = state.hard_stop.cancelled() => {}
    }
    metrics.splice_ended();
    tracing::debug!(lease = %name, "splice ended");
}

async fn refuse(
    state: &RelayState,
    mut stream: MuxStream,
    max_frame: usize,
    code: ConnectCode,
    message: &str,
) {
    state.metrics.record_refused(code);
    let frame = RelayFrame::connect_refused(code, message);
    let _ = write_frame(&mut stream, &frame, max_frame).await;
    let _ = stream.shutdown().await;
}

/// A stream that adds every byte read from it to a counter: reading from the dialer's stream
/// is the dialer-to-owner direction, and the other way round.
struct Counted<S> {
    inner: S,
    read: IntCounter,
}

impl<S> Counted<S> {
    fn new(inner: S, read: IntCounter) -> Self {
        Self { inner, read }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.read.inc_by(n as u64);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn counted_counts_what_is_read_not_written() {
        let (a, mut b) = tokio::io::duplex(64);
        let read = IntCounter::new("r", "r").unwrap();
        let mut counted = Counted::new(a, read.clone());
        b.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        counted.read_exact(&mut buf).await.unwrap();
        counted.write_all(b"ignored").await.unwrap();
        assert_eq!(read.get(), 5);
    }
}

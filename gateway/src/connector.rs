//! The upstream seam: Pingora's custom L4 connector, backed by the SDK's [`Dialer`].
//!
//! Every upstream connection Pingora asks for becomes a new inner stream of the per-lease E2EE
//! session — no relay round trip and no handshake once the session is up. Pingora 0.9.1 never
//! reuses a virtual upstream stream (cloudflare/pingora#883: its reuse check calls
//! `getpeername(-1)`), so the peer's idle timeout is zero and the stream closes when the
//! request is done; this is why a new upstream connection has to be this cheap.
//!
//! The responder is pinned: [`LeaseTarget::owner_identity`] comes from the gateway's config
//! (the control plane's record), never from the relay.
//!
//! [`UpgradeGate`] works around cloudflare/pingora#946 (open, unfixed in 0.9.1): Pingora tears
//! an HTTP/1 upgrade down right after the `101` when it reads the `101` before it has handled
//! the upgrade request's own (empty) end of body — a race between the two halves of its proxy
//! loop that a loaded machine hits (seen in CI). For an upgrade request the connector's
//! stream holds back every byte from upstream until the request body's end has been handed to
//! the upstream half (`request_body_filter` with `end_of_stream`), and then one read longer, so
//! that the body's end is always consumed before the `101` can be read.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::{Error, ErrorType};
use postern_sdk::mux::MuxStream;
use postern_sdk::{Dialer, LeaseTarget};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Holds upstream bytes back until the upgrade request's body has ended (see the module docs).
#[derive(Debug, Default)]
pub struct UpgradeGate {
    open: AtomicBool,
    waker: futures::task::AtomicWaker,
}

impl UpgradeGate {
    /// The request body has ended: upstream bytes may flow (after one more read attempt).
    pub fn open(&self) {
        self.open.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// An inner E2EE stream as Pingora's virtual socket.
#[derive(Debug)]
struct TunnelSocket {
    stream: MuxStream,
    /// For an upgrade request: the gate, and whether a read has been deferred since it opened.
    gate: Option<(Arc<UpgradeGate>, bool)>,
}

impl AsyncRead for TunnelSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some((gate, deferred)) = &mut self.gate {
            gate.waker.register(cx.waker());
            if !gate.open.load(Ordering::Acquire) {
                return Poll::Pending;
            }
            if !*deferred {
                // The body's end was queued in the same poll that opened the gate: give the
                // upstream half one turn to consume it before the response can be read.
                *deferred = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.gate = None;
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl VirtualSocket for TunnelSocket {
    /// Pingora sets TCP_NODELAY/keepalive on every upstream; the real sockets underneath (to
    /// the relay) already have both, so there is nothing to do — and an error would fail the
    /// connect.
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> io::Result<()> {
        Ok(())
    }
}

/// Connects Pingora to one lease.
#[derive(Debug)]
pub struct TunnelConnector {
    pub dialer: Dialer,
    pub target: LeaseTarget,
    /// Set for an upgrade request.
    pub upgrade_gate: Option<Arc<UpgradeGate>>,
}

#[async_trait]
impl L4Connect for TunnelConnector {
    async fn connect(&self, _addr: &SocketAddr) -> pingora::Result<Stream> {
        let stream = self.dialer.dial(&self.target).await.map_err(|e| {
            Error::because(
                ErrorType::ConnectError,
                format!("dialing lease {}", self.target.lease),
                e,
            )
        })?;
        Ok(Stream::from(VirtualSocketStream::new(Box::new(
            TunnelSocket {
                stream,
                gate: self.upgrade_gate.clone().map(|g| (g, false)),
            },
        ))))
    }
}

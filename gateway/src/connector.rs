//! Inner streams of a lease's E2EE session as Pingora sockets, and the HTTP/1 upstream seam:
//! Pingora's custom L4 connector, backed by the SDK's [`Dialer`].
//!
//! Most requests ride the lease's HTTP/2 connection ([`crate::upstream`]), whose socket is a
//! [`plain_stream`]. What stays on HTTP/1 — WebSocket upgrades, and every request to a lease
//! that does not serve `h2` — gets a new inner stream of the per-lease E2EE session per
//! request ([`TunnelConnector`], [`http1_stream`]): no relay round trip and no handshake once
//! the session is up. Pingora 0.9.1 never reuses a virtual upstream stream
//! (cloudflare/pingora#883: its reuse check calls `getpeername(-1)`), so the peer's idle
//! timeout is zero and the stream closes when the request is done.
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
//!
//! [`HeadClock`] is the lease's head timeout (`limits.upstream_head_timeout`, or the lease's
//! `head_timeout`): Pingora has only per-read timeouts, which bound idle time, not the wait for
//! a response head. The socket fails its read with `TimedOut` once `head_timeout` has passed
//! since the last byte written upstream without a byte of the response arriving, and flags the
//! request so that it is answered 504. From the first response byte on only idle time bounds
//! the stream (SSE and WebSocket are never cut by total time).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::{Error, ErrorType};
use postern_sdk::mux::MuxStream;
use postern_sdk::{Dialer, LeaseTarget};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

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

/// The wait for a response head, restarted by every write upstream; see the module docs.
#[derive(Debug)]
struct HeadClock {
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    /// Set when the head did not come in time (read by the request path: 504).
    timed_out: Arc<AtomicBool>,
}

/// An inner E2EE stream as Pingora's virtual socket.
#[derive(Debug)]
struct TunnelSocket {
    stream: MuxStream,
    /// For an upgrade request: the gate, and whether a read has been deferred since it opened.
    gate: Option<(Arc<UpgradeGate>, bool)>,
    /// Until the first response byte.
    head: Option<HeadClock>,
}

impl TunnelSocket {
    fn poll_stream_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        let Some(clock) = &mut self.head else {
            return read;
        };
        match read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.head = None;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => match clock.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    clock.timed_out.store(true, Ordering::Release);
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no response head from the lease within its head timeout",
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
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
        self.poll_stream_read(cx, buf)
    }
}

impl AsyncWrite for TunnelSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let (Some(clock), Poll::Ready(Ok(n))) = (&mut self.head, &written) {
            if *n > 0 {
                let deadline = Instant::now() + clock.timeout;
                clock.timer.as_mut().reset(deadline);
            }
        }
        written
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
    /// The longest wait for the response head after the last byte sent.
    pub head_timeout: Duration,
    /// Set by the socket when the head timeout passed.
    pub head_timed_out: Arc<AtomicBool>,
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
        let head = (self.head_timeout, Arc::clone(&self.head_timed_out));
        Ok(http1_stream(stream, self.upgrade_gate.clone(), head))
    }
}

/// An inner stream as the socket of one HTTP/1 exchange: with an upgrade request's gate, and
/// the head clock (`head.0`; `head.1` is set when it runs out).
pub fn http1_stream(
    stream: MuxStream,
    gate: Option<Arc<UpgradeGate>>,
    head: (Duration, Arc<AtomicBool>),
) -> Stream {
    let (timeout, timed_out) = head;
    Stream::from(VirtualSocketStream::new(Box::new(TunnelSocket {
        stream,
        gate: gate.map(|g| (g, false)),
        head: Some(HeadClock {
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
            timed_out,
        }),
    })))
}

/// An inner stream as the socket of a long-lived connection (an HTTP/2 connection to the
/// lease): no gate and no head clock; its requests keep their own.
pub fn plain_stream(stream: MuxStream) -> Stream {
    Stream::from(VirtualSocketStream::new(Box::new(TunnelSocket {
        stream,
        gate: None,
        head: None,
    })))
}

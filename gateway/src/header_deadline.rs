//! The slowloris bound: an HTTP/1 request head must be complete within a deadline.
//!
//! Pingora bounds each *read* while it waits for a request head (60 s), not the head as a
//! whole, so a client trickling one byte a minute could hold a connection forever. Pingora
//! offers no hook before the head is read, so the bound lives one layer down: every accepted
//! connection is wrapped in a [`HeaderDeadlineStream`], whose reads fail with `TimedOut` once
//! its deadline passes, and the deadline is moved by the request path:
//!
//! * on accept: `request_header_timeout` from then — the TLS handshake, if any (bounded in
//!   [`crate::downstream`]), and the first head must both be complete by then.
//!   For HTTP/2 the bound covers the connection preface: the deadline lifts itself once the
//!   client's 24-byte preface has been read (Pingora's h2 handshake has no timeout of its own),
//!   and an idle HTTP/2 connection is then closed by Pingora's `h2_idle_timeout`;
//! * when a head has been read (`early_request_filter`): disarmed, so bodies, SSE and
//!   WebSocket streams are never cut by it;
//! * when a request ends (`logging`): `keepalive_timeout + request_header_timeout` from now —
//!   a kept-alive connection may sit idle for the keep-alive time and must then deliver the
//!   next head in full.
//!
//! [`crate::downstream`] does the wrapping for every accepted connection and, for HTTP/1,
//! waits for each head's first byte ([`HeaderDeadlineStream::wait_for_head`]) before Pingora
//! builds a session for it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, UniqueID, UniqueIDType,
    ALPN,
};
use pingora::protocols::{Stream, TimingDigest};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// A downstream connection whose reads fail once its header deadline has passed.
#[derive(Debug)]
pub struct HeaderDeadlineStream {
    inner: Stream,
    /// When the stream was wrapped; deadlines are stored as nanoseconds after it.
    base: Instant,
    /// The deadline in nanoseconds after `base` (at least 1), or 0 when disarmed.
    deadline: AtomicU64,
    /// The timer for the deadline last seen by a read, and that deadline.
    timer: Option<(u64, Pin<Box<Sleep>>)>,
    /// HTTP/2: preface bytes still to be read before the deadline lifts itself.
    h2_preface_left: usize,
    /// HTTP/1: the next head's first byte, read by [`Self::wait_for_head`] and handed out by
    /// the next read.
    first_byte: Option<u8>,
}

/// Length of the HTTP/2 client connection preface (RFC 9113 §3.4).
const H2_PREFACE_LEN: usize = 24;

impl HeaderDeadlineStream {
    pub fn new(inner: Stream) -> Self {
        Self {
            inner,
            base: Instant::now(),
            deadline: AtomicU64::new(0),
            timer: None,
            h2_preface_left: 0,
            first_byte: None,
        }
    }

    /// An HTTP/2 connection: armed until its connection preface has been read.
    pub fn for_h2(inner: Stream, after: Duration) -> Self {
        let s = Self {
            h2_preface_left: H2_PREFACE_LEN,
            ..Self::new(inner)
        };
        s.arm(after);
        s
    }

    /// Reads fail once `after` has passed from now (until disarmed or moved).
    pub fn arm(&self, after: Duration) {
        let at = self.base.elapsed().saturating_add(after);
        let nanos = u64::try_from(at.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.deadline.store(nanos, Ordering::Release);
    }

    pub fn disarm(&self) {
        self.deadline.store(0, Ordering::Release);
    }

    /// Waits until the next request head's first byte has arrived (it stays to be read);
    /// `false` when the client closed the connection. Bounded by the armed deadline.
    pub async fn wait_for_head(&mut self) -> io::Result<bool> {
        if self.first_byte.is_some() {
            return Ok(true);
        }
        let mut byte = [0u8; 1];
        let n = tokio::io::AsyncReadExt::read(self, &mut byte).await?;
        if n == 0 {
            return Ok(false);
        }
        self.first_byte = Some(byte[0]);
        Ok(true)
    }

    /// The wrapper under a downstream session's stream, if it is one.
    pub fn of(stream: &Stream) -> Option<&Self> {
        stream.as_any().downcast_ref::<Self>()
    }

    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline.load(Ordering::Acquire);
        if deadline == 0 {
            self.timer = None;
            return Poll::Pending;
        }
        let at = self.base + Duration::from_nanos(deadline);
        match &mut self.timer {
            Some((seen, sleep)) if *seen == deadline => sleep.as_mut().poll(cx),
            Some((seen, sleep)) => {
                *seen = deadline;
                sleep.as_mut().reset(at.into());
                sleep.as_mut().poll(cx)
            }
            None => {
                let mut sleep = Box::pin(tokio::time::sleep_until(at.into()));
                let ready = sleep.as_mut().poll(cx);
                self.timer = Some((deadline, sleep));
                ready
            }
        }
    }
}

impl AsyncRead for HeaderDeadlineStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.poll_deadline(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request headers not complete before the deadline",
            )));
        }
        if let Some(byte) = self.first_byte {
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            buf.put_slice(&[byte]);
            self.first_byte = None;
            // Whatever else has arrived comes along; an error will show on the next read.
            let _ = Pin::new(&mut self.inner).poll_read(cx, buf);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.h2_preface_left > 0 {
            let read = buf.filled().len() - before;
            self.h2_preface_left = self.h2_preface_left.saturating_sub(read);
            if self.h2_preface_left == 0 {
                self.disarm();
            }
        }
        result
    }
}

impl AsyncWrite for HeaderDeadlineStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// Everything Pingora asks of a connection is the wrapped connection's answer.

#[async_trait]
impl Shutdown for HeaderDeadlineStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for HeaderDeadlineStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeaderDeadlineStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeaderDeadlineStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeaderDeadlineStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for HeaderDeadlineStream {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for HeaderDeadlineStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

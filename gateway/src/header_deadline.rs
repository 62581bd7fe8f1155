//! The slowloris bound: an HTTP/1 request head must be complete within a deadline.
//!
//! Pingora bounds each *read* while it waits for a request head (60 s), not the head as a
//! whole, so a client trickling one byte a minute could hold a connection forever. Pingora
//! offers no hook before the head is read, so the bound lives one layer down: every accepted
//! connection is wrapped in a [`HeaderDeadlineStream`], whose reads fail with `TimedOut` once
//! its deadline passes, and the deadline is moved by the request path:
//!
//! * on accept: `request_header_timeout` from now — the first head must be complete by then.
//!   For HTTP/2 the bound covers the connection preface: the deadline lifts itself once the
//!   client's 24-byte preface has been read (Pingora's h2 handshake has no timeout of its own),
//!   and an idle HTTP/2 connection is then closed by Pingora's `h2_idle_timeout`;
//! * when a head has been read (`early_request_filter`): disarmed, so bodies, SSE and
//!   WebSocket streams are never cut by it;
//! * when a request ends (`logging`): `keepalive_timeout + request_header_timeout` from now —
//!   a kept-alive connection may sit idle for the keep-alive time and must then deliver the
//!   next head in full.
//!
//! [`HeaderDeadlineApp`] does the wrapping around Pingora's HTTP application. For HTTP/1 it
//! also runs the keep-alive loop that Pingora would run, with one difference: between two
//! requests it waits for the first byte of the next head itself, and only then builds
//! Pingora's session and request future. An idle keep-alive connection so holds the socket,
//! TLS state and this small wait — not Pingora's ~12 KiB of per-request session and future —
//! which is most of the memory an idle client costs. (Pipelining, which would need the
//! carried-over bytes, is never enabled in this gateway.)

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, UniqueID, UniqueIDType,
    ALPN,
};
use pingora::protocols::{Stream, TimingDigest};
use pingora::server::ShutdownWatch;
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
    fn for_h2(inner: Stream, after: Duration) -> Self {
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

/// Wraps each accepted connection of `A` in a [`HeaderDeadlineStream`] armed for the first
/// request head.
pub struct HeaderDeadlineApp<A> {
    inner: Arc<A>,
    header_timeout: Duration,
}

impl<A> HeaderDeadlineApp<A> {
    pub fn new(inner: A, header_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(inner),
            header_timeout,
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for HeaderDeadlineApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // The connection is served on a task of its own, and Pingora's accept task ends here.
        // That task's future is sized for the TLS handshake it began with (~8 KiB, held inline)
        // and would stay allocated for as long as the connection is open, idle or not. The
        // new task holds only what serving needs. Nothing in Pingora waits on its accept task:
        // shutdown reaches this task through `shutdown`, as it reached the accept task.
        let app = Arc::clone(self);
        let shutdown = shutdown.clone();
        tokio::spawn(async move { app.serve(session, &shutdown).await });
        None
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> HeaderDeadlineApp<A> {
    /// Serves one accepted connection to its end.
    async fn serve(&self, session: Stream, shutdown: &ShutdownWatch) {
        if matches!(session.selected_alpn_proto(), Some(ALPN::H2)) {
            let wrapped = HeaderDeadlineStream::for_h2(session, self.header_timeout);
            // HTTP/2 hands back no stream for reuse: the connection ends with this call.
            self.inner.process_new(Box::new(wrapped), shutdown).await;
            return;
        }
        let wrapped = HeaderDeadlineStream::new(session);
        wrapped.arm(self.header_timeout);
        self.serve_http1(Box::new(wrapped), shutdown).await;
    }

    /// Pingora's HTTP/1 keep-alive loop (`ServerApp for HttpServerApp`), waiting for each head's
    /// first byte before a session is built (module docs).
    async fn serve_http1(&self, mut stream: Box<HeaderDeadlineStream>, shutdown: &ShutdownWatch) {
        let mut persistent: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            let mut closing = shutdown.clone();
            // An idle connection is closed when the server starts shutting down.
            let arrived = tokio::select! {
                biased;
                arrived = stream.wait_for_head() => arrived,
                Ok(()) = closing.changed() => return,
            };
            if !matches!(arrived, Ok(true)) {
                return;
            }
            let mut session = ServerSession::new_http1(stream);
            if first {
                let shutting_down = *shutdown.borrow();
                session.set_keepalive((!shutting_down).then_some(PINGORA_KEEPALIVE_SECS));
                session.set_keepalive_reuses_remaining(
                    self.inner
                        .server_options()
                        .and_then(|o| o.keepalive_request_limit),
                );
                first = false;
            } else if let Some(settings) = persistent.take() {
                settings.apply_to_session(&mut session);
            }
            let Some(reused) = self.inner.process_new_http(session, shutdown).await else {
                return;
            };
            let (next, settings) = reused.consume();
            // Always ours: Pingora hands back the stream it was given.
            let Ok(next) = next.into_any().downcast::<HeaderDeadlineStream>() else {
                return;
            };
            stream = next;
            persistent = settings;
        }
    }
}

/// The per-read keep-alive timeout Pingora sets on a new HTTP/1 session; the gateway's own
/// keep-alive bound is the header deadline, set again when each request ends.
const PINGORA_KEEPALIVE_SECS: u64 = 60;

//! The slowloris bound: an HTTP/1 request head must be complete within a deadline, and
//! within `limits.max_header_bytes`.
//!
//! Pingora bounds each *read* while it waits for a request head (60 s), not the head as a
//! whole, so a client trickling one byte a minute could hold a connection forever. Pingora
//! offers no hook before the head is read, so the bound lives one layer down: every accepted
//! connection is wrapped in a [`HeaderDeadlineStream`], whose reads fail with `TimedOut` once
//! its deadline passes, and the deadline is moved by the request path:
//!
//! * on accept: `request_header_timeout` from then — the TLS handshake, if any (bounded in
//!   the `downstream` module), and the first head must both be complete by then.
//!   For HTTP/2 the bound covers the connection preface: the deadline lifts itself once the
//!   client's 24-byte preface has been read (Pingora's h2 handshake has no timeout of its own),
//!   and an idle HTTP/2 connection is then closed by Pingora's `h2_idle_timeout`;
//! * when a head has been read (`early_request_filter`): disarmed, so bodies, SSE and
//!   WebSocket streams are never cut by it;
//! * when a request ends (`logging`): `keepalive_timeout + request_header_timeout` from now —
//!   a kept-alive connection may sit idle for the keep-alive time and must then deliver the
//!   next head in full.
//!
//! The `downstream` module does the wrapping for every accepted connection and, for HTTP/1,
//! reads each head whole ([`HeaderDeadlineStream::wait_for_head`]) before Pingora builds a
//! session for it; the next reads hand the buffered bytes to Pingora. A head that misses its
//! deadline or its size bound, or whose client goes away halfway, therefore ends here, logged
//! at debug: Pingora logs every head it fails to read at `error`, which would let any client
//! without a key fill the gateway's error log.
//!
//! The size bound works the same way (Pingora's own is a fixed 1 MiB): the bytes read from a
//! head's first byte until the head is complete (`disarm`) are counted, and once they reach
//! the limit the next read fails, after writing a 431 problem, best effort (once, if the
//! socket takes it at once). A head that arrives whole in one read is measured once parsed
//! (the `request` module, 431). HTTP/2 heads are bounded by the h2 `max_header_list_size`
//! setting.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Buf, BufMut, BytesMut};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, UniqueID, UniqueIDType,
    ALPN,
};
use pingora::protocols::{Stream, TimingDigest};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::problem::Problem;

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
    /// HTTP/1: the next request's head (and whatever followed it in the same reads), read by
    /// [`Self::wait_for_head`] and handed out by the next reads; empty (no allocation) otherwise.
    head: BytesMut,
    /// Most bytes a request head may take (`usize::MAX`: no bound here).
    head_limit: usize,
    /// Bytes read since the current head's first byte, while `counting`.
    head_bytes: usize,
    /// A head is being read: from its first byte until `disarm`.
    counting: AtomicBool,
    /// The 431 for an oversized head has been written.
    refused: bool,
}

/// Length of the HTTP/2 client connection preface (RFC 9113 §3.4).
const H2_PREFACE_LEN: usize = 24;

/// How much more room [`HeaderDeadlineStream::wait_for_head`] makes for each read of a head.
const HEAD_READ_SIZE: usize = 1024;

/// Finds the end of an HTTP/1 request head, a byte at a time, each byte looked at once: the
/// first empty line (`\r\n` or a bare `\n`, as Pingora's parser accepts) after the request
/// line. Empty lines before the request line are skipped (RFC 9112 §2.2).
#[derive(Debug, Default)]
struct HeadScan {
    /// Bytes of the buffer already looked at.
    seen: usize,
    /// A byte other than CR or LF has been seen: the request line has begun.
    started: bool,
    /// The last byte ended a line (possibly followed by one CR).
    at_line_start: bool,
    /// A CR right after a line's end.
    cr_after_line: bool,
}

impl HeadScan {
    /// Looks at the bytes of `buf` after those already seen; whether the head is complete.
    fn feed(&mut self, buf: &[u8]) -> bool {
        while let Some(&b) = buf.get(self.seen) {
            self.seen += 1;
            if !self.started {
                self.started = !matches!(b, b'\r' | b'\n');
                continue;
            }
            match b {
                b'\n' if self.at_line_start => return true,
                b'\n' => {
                    self.at_line_start = true;
                    self.cr_after_line = false;
                }
                b'\r' if self.at_line_start && !self.cr_after_line => self.cr_after_line = true,
                _ => {
                    self.at_line_start = false;
                    self.cr_after_line = false;
                }
            }
        }
        false
    }
}

impl HeaderDeadlineStream {
    /// An HTTP/1 connection whose request heads may take at most `head_limit` bytes.
    pub fn new(inner: Stream, head_limit: usize) -> Self {
        Self {
            inner,
            base: Instant::now(),
            deadline: AtomicU64::new(0),
            timer: None,
            h2_preface_left: 0,
            head: BytesMut::new(),
            head_limit,
            head_bytes: 0,
            counting: AtomicBool::new(false),
            refused: false,
        }
    }

    /// An HTTP/2 connection: armed until its connection preface has been read.
    pub fn for_h2(inner: Stream, after: Duration) -> Self {
        let s = Self {
            h2_preface_left: H2_PREFACE_LEN,
            ..Self::new(inner, usize::MAX)
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

    /// The head is complete: neither its deadline nor its size bound applies any more.
    pub fn disarm(&self) {
        self.deadline.store(0, Ordering::Release);
        self.counting.store(false, Ordering::Release);
    }

    /// Reads the next request head whole (it stays to be read); `false` when the client closed
    /// the connection before sending anything. Bounded by the armed deadline and by the head
    /// size limit (a 431 is written first, see the module docs); a client that closes halfway is
    /// an `UnexpectedEof` error.
    ///
    /// Assumes Pingora holds no bytes of the next request when it hands a connection back:
    /// true while its HTTP/1 pipelining stays off (the default; with it on, a pipelined head
    /// would wait here for bytes that were already read). Pipelined requests are therefore
    /// answered one per connection: Pingora closes a connection once it has read past the end
    /// of a request, and the client sends the rest again on a new one (RFC 9112 §9.3.2).
    pub async fn wait_for_head(&mut self) -> io::Result<bool> {
        use tokio::io::AsyncReadExt as _;
        if !self.head.is_empty() {
            return Ok(true);
        }
        self.head_bytes = 0;
        self.counting.store(true, Ordering::Release);
        // A one-byte read while idle: an idle keep-alive connection holds no buffer.
        let mut byte = [0u8; 1];
        if self.read(&mut byte).await? == 0 {
            return Ok(false);
        }
        let mut head = BytesMut::with_capacity(HEAD_READ_SIZE);
        head.put_u8(byte[0]);
        let mut scan = HeadScan::default();
        while !scan.feed(&head) {
            head.reserve(HEAD_READ_SIZE);
            if self.read_buf(&mut head).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "client closed the connection in the middle of a request head",
                ));
            }
        }
        self.head = head;
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
        if !self.head.is_empty() {
            // A head read whole by `wait_for_head`, already counted and within its deadline.
            let n = buf.remaining().min(self.head.len());
            buf.put_slice(&self.head[..n]);
            self.head.advance(n);
            if self.head.is_empty() {
                self.head = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        if self.poll_deadline(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request headers not complete before the deadline",
            )));
        }
        let counting = self.counting.load(Ordering::Acquire);
        if counting && self.head_bytes >= self.head_limit {
            if !self.refused {
                self.refused = true;
                let refusal = head_too_large_response();
                let _ = Pin::new(&mut self.inner).poll_write(cx, &refusal);
                let _ = Pin::new(&mut self.inner).poll_flush(cx);
            }
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head larger than limits.max_header_bytes",
            )));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if counting {
            self.head_bytes = self.head_bytes.saturating_add(read);
        }
        if self.h2_preface_left > 0 {
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

/// A complete HTTP/1.1 431 response with its problem document, closing the connection.
fn head_too_large_response() -> Vec<u8> {
    let problem = Problem::HeaderTooLarge;
    let id = crate::respond::new_request_id();
    let body = problem.body(&id);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nconnection: close\r\ncontent-length: {}\r\nx-request-id: {id}\r\n",
        problem.status(),
        problem.title(),
        body.len()
    );
    for (name, value) in problem.headers() {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&body);
    out
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
        if !self.head.is_empty() {
            let n = buf.len().min(self.head.len());
            buf[..n].copy_from_slice(&self.head[..n]);
            return Ok(true);
        }
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `input` holds a complete head, fed whole and fed a byte at a time.
    fn complete(input: &[u8]) -> bool {
        let whole = HeadScan::default().feed(input);
        let mut scan = HeadScan::default();
        let bytewise = (1..=input.len()).any(|n| scan.feed(&input[..n]));
        assert_eq!(whole, bytewise, "{:?}", String::from_utf8_lossy(input));
        whole
    }

    #[test]
    fn a_head_ends_at_its_first_empty_line() {
        assert!(complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"));
        assert!(complete(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(complete(b"GET / HTTP/1.1\nHost: a\n\n"));
        assert!(complete(b"GET / HTTP/1.1\r\nHost: a\n\r\n"));
        assert!(complete(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    }

    #[test]
    fn an_unfinished_head_is_not_complete() {
        assert!(!complete(b""));
        assert!(!complete(b"\r\n\r\n\n"));
        assert!(!complete(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(!complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r"));
        assert!(!complete(b"GET / HTTP/1.1\r\nHost: a\rb\r\n"));
        assert!(!complete(b"GET / HTTP/1.1\r\nX: \r\r\n"));
    }

    #[test]
    fn each_byte_is_looked_at_once() {
        let mut scan = HeadScan::default();
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        assert!(!scan.feed(&head));
        assert_eq!(scan.seen, head.len());
        head.extend_from_slice(b"\r\n");
        assert!(scan.feed(&head));
    }
}
